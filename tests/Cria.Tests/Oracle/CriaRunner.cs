using Cria.Inference;
using Cria.Models;

namespace Cria.Tests.Oracle;

/// <summary>Cria's side of the oracle comparisons: same calls as <see cref="LlamaCpp"/>.</summary>
public sealed class CriaRunner : IDisposable
{
    public LlamaModel Model { get; }
    public InferenceContext Context { get; }

    public CriaRunner(string path, int contextSize = 256, int threads = 2, string? lora = null, float loraScale = 1f)
    {
        Model = LlamaModel.Open(path);
        var loras = lora == null ? [] : new[] { (LoraAdapter.Load(lora, Model), loraScale) };
        Context = new InferenceContext(Model, new ContextOptions { ContextSize = contextSize, Threads = threads, Kv = KvFormat.F32, Loras = loras }); // the oracle runs llama.cpp with an F32 KV cache
    }

    public float[][] AllLogits(IReadOnlyList<int> tokens)
    {
        Context.Cache.Clear();
        var batch = new Batch(tokens.Count);
        for (int i = 0; i < tokens.Count; i++) batch.Add(tokens[i], i, 0, true);
        Context.Decode(batch);
        var res = new float[tokens.Count][];
        for (int i = 0; i < tokens.Count; i++) res[i] = Context.Logits(i).ToArray();
        return res;
    }

    public float[] Next(int token, int pos, int seq = 0)
    {
        var batch = new Batch(1);
        batch.Add(token, pos, seq, true);
        Context.Decode(batch);
        return Context.Logits(0).ToArray();
    }

    public void Dispose()
    {
        Context.Dispose();
        Model.Dispose();
    }
}
