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

    /// <summary>G += Σ_r x_r x_rᵀ for the rows of <paramref name="xs"/> ([rows, cols]) into <paramref name="gram"/>
    /// ([cols, cols], row-major): the calibration Gram matrix GPTQ and AWQ collect. Row i of G per task; zero inputs
    /// skipped.</summary>
    public static void AddGram(float[] gram, float[] xs, int rows, int cols, int threads)
    {
        Parallel.For(0, cols, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, i =>
        {
            var gi = gram.AsSpan(i * cols, cols);
            for (int r = 0; r < rows; r++)
            {
                float xi = xs[r * cols + i];
                if (xi == 0) continue;
                var xr = xs.AsSpan(r * cols, cols);
                var vxi = new System.Numerics.Vector<float>(xi);
                int j = 0;
                for (; j <= cols - System.Numerics.Vector<float>.Count; j += System.Numerics.Vector<float>.Count)
                    (new System.Numerics.Vector<float>(gi.Slice(j)) + vxi * new System.Numerics.Vector<float>(xr.Slice(j))).CopyTo(gi.Slice(j));
                for (; j < cols; j++) gi[j] += xi * xr[j];
            }
        });
    }
}
