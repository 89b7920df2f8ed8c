using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>Result of <see cref="Perplexity.Compute"/>.</summary>
public readonly record struct PerplexityResult(double Value, double MeanNll, int Chunks, int ScoredTokens, int ContextSize);

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

    /// <summary>−log softmax(logits)[target], in double.</summary>
    public static double Nll(ReadOnlySpan<float> logits, int target)
    {
        float max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        double sum = 0;
        foreach (var l in logits) sum += Math.Exp(l - max);
        return Math.Log(sum) - (logits[target] - max);
    }

    /// <summary>Runs every chunk through <paramref name="context"/> and returns the perplexity.</summary>
    public static PerplexityResult Compute(InferenceContext context, Tokenizer tokenizer, string text, int ctx, Action<int, int, double>? progress = null,
        int maxChunks = int.MaxValue)
    {
        var tokens = tokenizer.Encode(text, addBos: true);
        var chunks = Chunks(tokens, ctx, tokenizer.Bos, tokenizer.AddBos);
        if (chunks.Count > maxChunks) chunks.RemoveRange(maxChunks, chunks.Count - maxChunks);
        if (context.Cache.Capacity < ctx) throw new CriaException($"the inference context holds {context.Cache.Capacity} tokens, less than the chunk size {ctx}");
        int first = FirstScored(ctx);
        var batch = new Batch(ctx);
        double nll = 0;
        int count = 0;
        for (int i = 0; i < chunks.Count; i++)
        {
            var c = chunks[i];
            context.Cache.Clear();
            batch.Clear();
            for (int p = 0; p < ctx; p++) batch.Add(c[p], p, 0, p >= first && p < ctx - 1);
            context.Decode(batch);
            for (int p = first; p < ctx - 1; p++) { nll += Nll(context.Logits(p), c[p + 1]); count++; }
            progress?.Invoke(i + 1, chunks.Count, Math.Exp(nll / count));
        }
        return new PerplexityResult(Math.Exp(nll / count), nll / count, chunks.Count, count, ctx);
    }
}
