using Cria.Inference;
using Cria.Models;

namespace Cria.Quantization;

/// <summary>Calibration text settings shared by AWQ and GPTQ: chunk length, chunk count, threads (0 = all cores).</summary>
public abstract record CalibrationOptions
{
    /// <summary>Calibration chunk length in tokens.</summary>
    public int ContextSize { get; init; } = 128;
    /// <summary>At most this many calibration chunks.</summary>
    public int MaxChunks { get; init; } = 32;
    public int Threads { get; init; }
}

/// <summary>The calibration pass shared by <c>cria imatrix</c> and AWQ: the text in chunks of <c>ctx</c> tokens (BOS
/// first, as llama-imatrix), each chunk one forward step from an empty cache, with an observer on every matrix product.</summary>
public static class Calibration
{
    /// <summary>Runs up to <paramref name="maxChunks"/> chunks through <paramref name="model"/> with
    /// <paramref name="observer"/> attached; <paramref name="afterChunk"/>(done, total) after each. Returns the chunk count.</summary>
    public static int Run(LlamaModel model, string text, int ctx, int maxChunks, int threads, IMatMulObserver observer,
        Action<int, int>? afterChunk = null)
    {
        var tok = model.Tokenizer;
        var chunks = Perplexity.Chunks(tok.Encode(text, addBos: true), ctx, tok.Bos, tok.AddBos);
        if (chunks.Count > maxChunks) chunks.RemoveRange(maxChunks, chunks.Count - maxChunks);
        using var context = new InferenceContext(model, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads });
        context.Observer = observer;
        var batch = new Batch(ctx);
        for (int i = 0; i < chunks.Count; i++)
        {
            context.Cache.Clear();
            batch.Clear();
            var c = chunks[i];
            for (int p = 0; p < c.Length; p++) batch.Add(c[p], p, 0, p == c.Length - 1);
            context.Decode(batch);
            afterChunk?.Invoke(i + 1, chunks.Count);
        }
        return chunks.Count;
    }

    /// <summary><see cref="Run(LlamaModel, string, int, int, int, IMatMulObserver, Action{int, int}?)"/> with the
    /// settings of <paramref name="o"/>.</summary>
    public static int Run(LlamaModel model, string text, CalibrationOptions o, IMatMulObserver observer) =>
        Run(model, text, o.ContextSize, o.MaxChunks, o.Threads > 0 ? o.Threads : Environment.ProcessorCount, observer);
}
