using System.Text;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Tests.Oracle;

/// <summary>
/// llama.cpp (through LLamaSharp 0.30.0) set up as a correctness oracle: F32 KV cache, flash attention off,
/// 2 threads, memory-mapped load (see shared/research/llamacpp-oracle.md).
/// </summary>
public sealed class LlamaCpp : IDisposable
{
    static readonly object InitLock = new();
    static bool _initialised;
    public static readonly StringBuilder Log = new();

    public LLamaWeights Weights { get; }
    public LLamaContext Context { get; }
    public int VocabSize { get; }

    /// <summary>Configures logging and loads the native library once per process; every test that touches
    /// LLamaSharp calls this first (configuration is only possible before the first native call).</summary>
    public static void EnsureLoaded()
    {
        lock (InitLock)
        {
            if (_initialised) return;
            NativeLibraryConfig.All.WithLogCallback((lvl, msg) => { lock (Log) { if (Log.Length < 1_000_000) Log.Append(msg); } });
            NativeApi.llama_empty_call();
            _initialised = true;
        }
    }

    public LlamaCpp(string path, int contextSize = 256)
    {
        EnsureLoaded();
        var p = new ModelParams(path)
        {
            ContextSize = (uint)contextSize, GpuLayerCount = 0, Threads = 2, BatchThreads = 2,
            BatchSize = (uint)contextSize, UBatchSize = (uint)contextSize,
            LoadMode = LLamaLoadMode.MemoryMap,
            TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32,
            FlashAttention = false,
        };
        Weights = LLamaWeights.LoadFromFile(p);
        Context = Weights.CreateContext(p);
        VocabSize = Weights.Vocab.Count;
    }

    /// <summary>Logits at every position of one sequence decoded as a single batch from an empty cache.</summary>
    public float[][] AllLogits(IReadOnlyList<int> tokens)
    {
        Context.NativeHandle.MemoryClear();
        var batch = new LLamaBatch();
        for (int i = 0; i < tokens.Count; i++) batch.Add((LLamaToken)tokens[i], i, LLamaSeqId.Zero, true);
        if (Context.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
        var res = new float[tokens.Count][];
        for (int i = 0; i < tokens.Count; i++) res[i] = Context.NativeHandle.GetLogitsIth(i).ToArray();
        return res;
    }

    /// <summary>Logits at every position of one sequence decoded one token at a time from an empty cache (which then
    /// holds the sequence, as after <see cref="AllLogits"/>).</summary>
    public float[][] SequentialLogits(IReadOnlyList<int> tokens)
    {
        Context.NativeHandle.MemoryClear();
        var res = new float[tokens.Count][];
        for (int i = 0; i < tokens.Count; i++) res[i] = Next(tokens[i], i);
        return res;
    }

    /// <summary>Decodes one more token at <paramref name="pos"/> and returns its logits.</summary>
    public float[] Next(int token, int pos)
    {
        var batch = new LLamaBatch();
        batch.Add((LLamaToken)token, pos, LLamaSeqId.Zero, true);
        if (Context.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
        return Context.NativeHandle.GetLogitsIth(0).ToArray();
    }

    public void Dispose()
    {
        Context.Dispose();
        Weights.Dispose();
    }
}
