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
    /// ([cols, cols], row-major): the calibration Gram matrix GPTQ and AWQ collect.</summary>
    public static void AddGram(float[] gram, float[] xs, int rows, int cols, int threads) =>
        AddOuterProducts(gram, xs, cols, xs, cols, rows, threads);

    /// <summary>C += Σ_r y_r x_rᵀ for the rows of <paramref name="ys"/> ([rows, m]) and <paramref name="xs"/> ([rows, n])
    /// into <paramref name="acc"/> ([m, n], row-major): the Gram matrix (y = x), or SwiftKV's cross-covariance of targets
    /// and inputs. Row i of C per task; zero y values skipped.</summary>
    public static void AddOuterProducts(float[] acc, float[] ys, int m, float[] xs, int n, int rows, int threads)
    {
        Parallel.For(0, m, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) }, i =>
        {
            var ci = acc.AsSpan(i * n, n);
            for (int r = 0; r < rows; r++)
            {
                float yi = ys[r * m + i];
                if (yi == 0) continue;
                var xr = xs.AsSpan(r * n, n);
                var vyi = new System.Numerics.Vector<float>(yi);
                int j = 0;
                for (; j <= n - System.Numerics.Vector<float>.Count; j += System.Numerics.Vector<float>.Count)
                    (new System.Numerics.Vector<float>(ci.Slice(j)) + vyi * new System.Numerics.Vector<float>(xr.Slice(j))).CopyTo(ci.Slice(j));
                for (; j < n; j++) ci[j] += yi * xr[j];
            }
        });
    }
}
