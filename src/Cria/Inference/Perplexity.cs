using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>Result of <see cref="Perplexity.Compute"/>.</summary>
public readonly record struct PerplexityResult(double Value, double MeanNll, int Chunks, int ScoredTokens, int ContextSize);

/// <summary>
/// Result of <see cref="Perplexity.CompareTo"/>: a model against a base model (typically its unquantized source) on
/// the same chunks, as llama-perplexity's <c>--kl-divergence</c> reports it. KLD is KL(base ‖ model) per scored token
/// in nats; unlike a perplexity difference it has no first-order term in the model's error (it is zero, with zero
/// gradient, at model = base), so it measures how far quantization moved the model, not whether the move happened to
/// fit this text better or worse. Standard errors are those of the mean over scored tokens.
/// </summary>
public readonly record struct KlDivergenceResult(PerplexityResult Model, PerplexityResult Base, double MeanKld, double KldStdErr,
    double SameTopFraction, double MeanNllDiff, double NllDiffStdErr)
{
    /// <summary>ln(PPL(model) / PPL(base)) = mean NLL difference; its relative change in percent.</summary>
    public double PplChangePercent => (Math.Exp(MeanNllDiff) - 1) * 100;
    /// <summary>One standard error of <see cref="PplChangePercent"/> (delta method on the paired NLL differences).</summary>
    public double PplChangeStdErrPercent => Math.Exp(MeanNllDiff) * NllDiffStdErr * 100;
}

/// <summary>
/// Perplexity the way llama-perplexity computes it: the whole text is tokenized once (with BOS when the vocabulary
/// adds one), cut into non-overlapping chunks of the context size, the first token of each chunk is replaced by BOS,
/// and only the second half of each chunk is scored (positions ctx/2 … ctx−2 predicting the next token), so every
/// scored token sees at least ctx/2 tokens of context.
/// </summary>
public static class Perplexity
{
    /// <summary>The chunks llama-perplexity evaluates: tokens[i·ctx … (i+1)·ctx) with the first replaced by BOS.</summary>
    public static List<int[]> Chunks(int[] tokens, int ctx, int bos, bool addBos)
    {
        if (ctx < 4) throw new CriaException($"context size must be at least 4, got {ctx}");
        int n = tokens.Length / ctx;
        if (n < 1) throw new CriaException($"the text has {tokens.Length} tokens; perplexity needs at least one chunk of {ctx} (use a smaller -c)");
        var chunks = new List<int[]>(n);
        for (int i = 0; i < n; i++)
        {
            var c = tokens.AsSpan(i * ctx, ctx).ToArray();
            if (addBos) c[0] = bos;
            chunks.Add(c);
        }
        return chunks;
    }

    /// <summary>First scored position of a chunk (llama-perplexity's <c>first = n_ctx / 2</c>).</summary>
    public static int FirstScored(int ctx) => ctx / 2;

    /// <summary>The text's chunks (at most <paramref name="maxChunks"/>), checked to fit every context.</summary>
    static List<int[]> TextChunks(Tokenizer tokenizer, string text, int ctx, int maxChunks, params InferenceContext[] contexts)
    {
        foreach (var c in contexts)
            if (c.Cache.Capacity < ctx) throw new CriaException($"the inference context holds {c.Cache.Capacity} tokens, less than the chunk size {ctx}");
        var chunks = Chunks(tokenizer.Encode(text, addBos: true), ctx, tokenizer.Bos, tokenizer.AddBos);
        if (chunks.Count > maxChunks) chunks.RemoveRange(maxChunks, chunks.Count - maxChunks);
        return chunks;
    }

    /// <summary>One chunk from an empty cache, logits kept for the scored positions (first … ctx−2).</summary>
    static void Run(InferenceContext context, Batch batch, int[] chunk)
    {
        int ctx = chunk.Length, first = FirstScored(ctx);
        batch.Clear();
        for (int p = 0; p < ctx; p++) batch.Add(chunk[p], p, 0, p >= first && p < ctx - 1);
        context.Cache.Clear();
        context.Decode(batch);
    }

    /// <summary>−log softmax(logits)[target], in double.</summary>
    public static double Nll(ReadOnlySpan<float> logits, int target) => LogSumExp(logits) - logits[target];

    /// <summary>
    /// KL(p ‖ q) in nats between the softmax distributions of two logit rows of one vocabulary:
    /// Σ_v p_v (log p_v − log q_v), each log-softmax taken in double with its own maximum subtracted.
    /// </summary>
    public static double KlDivergence(ReadOnlySpan<float> baseLogits, ReadOnlySpan<float> logits)
    {
        if (baseLogits.Length != logits.Length) throw new CriaException($"KL divergence needs logits of one vocabulary: {baseLogits.Length} vs {logits.Length}");
        double lp = LogSumExp(baseLogits), lq = LogSumExp(logits), kl = 0;
        for (int v = 0; v < logits.Length; v++)
        {
            double logP = baseLogits[v] - lp;
            kl += Math.Exp(logP) * (logP - (logits[v] - lq));
        }
        return Math.Max(kl, 0);
    }

    /// <summary>log Σ exp(x), in double, with the maximum subtracted first.</summary>
    static double LogSumExp(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (var l in x) if (l > max) max = l;
        double sum = 0;
        foreach (var l in x) sum += Math.Exp(l - max);
        return max + Math.Log(sum);
    }

    static int ArgMax(ReadOnlySpan<float> x)
    {
        int best = 0;
        for (int i = 1; i < x.Length; i++) if (x[i] > x[best]) best = i;
        return best;
    }

    /// <summary>
    /// Runs every chunk through <paramref name="baseContext"/> and <paramref name="context"/> (two models of one
    /// tokenizer) and compares them token by token: both perplexities, KL(base ‖ model), how often the two agree on
    /// the most likely token, and the paired NLL difference with its standard error. Same chunks and scored
    /// positions as <see cref="Compute"/>.
    /// </summary>
    public static KlDivergenceResult CompareTo(InferenceContext baseContext, InferenceContext context, Tokenizer tokenizer, string text, int ctx,
        Action<int, int, double>? progress = null, int maxChunks = int.MaxValue)
    {
        var chunks = TextChunks(tokenizer, text, ctx, maxChunks, baseContext, context);
        int first = FirstScored(ctx);
        var batch = new Batch(ctx);
        double nll = 0, nllBase = 0, kld = 0, kld2 = 0, diff = 0, diff2 = 0;
        int count = 0, sameTop = 0;
        for (int i = 0; i < chunks.Count; i++)
        {
            var c = chunks[i];
            Run(baseContext, batch, c);
            Run(context, batch, c);
            for (int p = first; p < ctx - 1; p++)
            {
                var lb = baseContext.Logits(p);
                var lq = context.Logits(p);
                double a = Nll(lq, c[p + 1]), b = Nll(lb, c[p + 1]), k = KlDivergence(lb, lq);
                nll += a; nllBase += b;
                diff += a - b; diff2 += (a - b) * (a - b);
                kld += k; kld2 += k * k;
                if (ArgMax(lb) == ArgMax(lq)) sameTop++;
                count++;
            }
            progress?.Invoke(i + 1, chunks.Count, kld / count);
        }
        static double StdErr(double sum, double sum2, int n) => n > 1 ? Math.Sqrt(Math.Max(0, (sum2 - sum * sum / n) / (n - 1)) / n) : 0;
        return new KlDivergenceResult(
            new PerplexityResult(Math.Exp(nll / count), nll / count, chunks.Count, count, ctx),
            new PerplexityResult(Math.Exp(nllBase / count), nllBase / count, chunks.Count, count, ctx),
            kld / count, StdErr(kld, kld2, count), (double)sameTop / count, diff / count, StdErr(diff, diff2, count));
    }

    /// <summary>Runs every chunk through <paramref name="context"/> and returns the perplexity. With
    /// <paramref name="beaconRatio"/> (an Activation Beacon model; 0 = the file's ratio) each chunk streams through a
    /// <see cref="BeaconStream"/> instead, its windows condensed as they fill, and the same positions are scored.</summary>
    public static PerplexityResult Compute(InferenceContext context, Tokenizer tokenizer, string text, int ctx, Action<int, int, double>? progress = null,
        int maxChunks = int.MaxValue, int? beaconRatio = null)
    {
        var chunks = beaconRatio == null ? TextChunks(tokenizer, text, ctx, maxChunks, context) : TextChunks(tokenizer, text, ctx, maxChunks);
        int first = FirstScored(ctx);
        var batch = new Batch(ctx);
        double nll = 0;
        int count = 0;
        for (int i = 0; i < chunks.Count; i++)
        {
            var c = chunks[i];
            if (beaconRatio is { } ratio)
            {
                context.Cache.Clear();
                new BeaconStream(context, 0, ratio).Feed(c, (p, z) => { if (p < ctx - 1) { nll += Nll(z, c[p + 1]); count++; } }, first);
                progress?.Invoke(i + 1, chunks.Count, Math.Exp(nll / count));
                continue;
            }
            Run(context, batch, c);
            for (int p = first; p < ctx - 1; p++) { nll += Nll(context.Logits(p), c[p + 1]); count++; }
            progress?.Invoke(i + 1, chunks.Count, Math.Exp(nll / count));
        }
        return new PerplexityResult(Math.Exp(nll / count), nll / count, chunks.Count, count, ctx);
    }
}
