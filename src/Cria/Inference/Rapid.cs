using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>
/// RAPID (Chen et al. 2025, "Long-Context Inference with Retrieval-Augmented Speculative Decoding"): the drafter reads
/// a short retrieved context (the chunks of the long prompt most relevant to its end, then that end) instead of the
/// whole prompt, and the target's distribution is nudged toward the drafter's. With p the target's distribution and q
/// the drafter's at the same position, one gradient step of size η on the target's logits toward q (the gradient of
/// KL(q ‖ softmax(z)) with respect to z is p − q) gives
/// <code>p̂ ∝ p · exp(η · (q − p))</code>
/// restricted, as RAPID's code does, to the tokens the drafter finds plausible (q ≥ α · max q; elsewhere p is left as
/// it is). Speculative sampling then verifies drafts against p̂ instead of p, so the text comes out distributed as p̂:
/// the target's reading of the whole context, pulled toward what the retrieved passage says.
/// </summary>
public static class Rapid
{
    /// <summary>RAPID's code default for the plausibility cut (<c>spec_alpha</c>).</summary>
    public const float DefaultAlpha = 0.1f;

    /// <summary>
    /// p̂ = norm(p · exp(η · m · (q − p))) with m = [q ≥ α · max q], written into <paramref name="pHat"/>. Tokens with
    /// p = 0 (cut by the target's top-k/top-p/min-p) stay at 0. Scalar and allocation-free: one pass per vocabulary.
    /// </summary>
    public static void Nudge(ReadOnlySpan<float> p, ReadOnlySpan<float> q, float eta, float alpha, Span<float> pHat)
    {
        if (p.Length != q.Length || pHat.Length != p.Length)
            throw new ArgumentException($"p, q and p̂ must have one length, got {p.Length}, {q.Length}, {pHat.Length}");
        float qMax = 0;
        foreach (var v in q) if (v > qMax) qMax = v;
        float cut = alpha * qMax;
        // Work in the log domain relative to the largest shift, so that exp never overflows for large η.
        float maxShift = float.NegativeInfinity;
        for (int j = 0; j < p.Length; j++)
        {
            if (p[j] <= 0) continue;
            float s = q[j] >= cut ? eta * (q[j] - p[j]) : 0f;
            if (s > maxShift) maxShift = s;
        }
        double sum = 0;
        for (int j = 0; j < p.Length; j++)
        {
            if (p[j] <= 0) { pHat[j] = 0; continue; }
            float s = q[j] >= cut ? eta * (q[j] - p[j]) : 0f;
            float v = p[j] * MathF.Exp(s - maxShift);
            pHat[j] = v;
            sum += v;
        }
        if (!(sum > 0)) { p.CopyTo(pHat); return; }
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < pHat.Length; j++) pHat[j] *= inv;
    }
}

/// <summary>How RAPID's drafter prompt is retrieved from a long prompt.</summary>
public sealed record RagOptions
{
    /// <summary>Tokens per chunk of the long prompt (a chunk ends early at a sentence end in its second half).</summary>
    public int ChunkTokens { get; init; } = 64;
    /// <summary>Most tokens of retrieved chunks in the drafter's prompt (RAPID retrieves ⌈8192 / 512⌉ chunks of 512).</summary>
    public int BudgetTokens { get; init; } = 256;
    /// <summary>The prompt's last tokens are the query: they are searched for and end the drafter's prompt.</summary>
    public int QueryTokens { get; init; } = 32;
    /// <summary>BM25's term-frequency saturation and length normalisation (Robertson's usual 1.2 and 0.75).</summary>
    public double K1 { get; init; } = 1.2;
    public double B { get; init; } = 0.75;

    public void Validate()
    {
        if (ChunkTokens < 1) throw new CriaException($"RAG chunk size must be ≥ 1 token, got {ChunkTokens}");
        if (BudgetTokens < ChunkTokens) throw new CriaException($"RAG budget ({BudgetTokens} tokens) must hold at least one chunk ({ChunkTokens} tokens)");
        if (QueryTokens < 1) throw new CriaException($"RAG query must be ≥ 1 token, got {QueryTokens}");
        if (!(K1 >= 0) || !(B >= 0 && B <= 1)) throw new CriaException($"BM25 needs k1 ≥ 0 and 0 ≤ b ≤ 1, got {K1}, {B}");
    }
}

/// <summary>One chunk of a long prompt: where it starts and how many tokens it has, and its BM25 score.</summary>
public readonly record struct RagChunk(int Start, int Length, double Score);

/// <summary>
/// The retrieval half of RAPID, lexical: the long prompt is cut into chunks of about <see cref="RagOptions.ChunkTokens"/>
/// tokens, each is scored by BM25 (Okapi, over token ids) against the query, and the best chunks that fit the budget
/// are kept in document order, as RAPID's <c>get_rag_context</c> sorts its hits by position. RAPID retrieves with
/// BGE-M3 embeddings plus BM25's top 5; an embedding model is not part of Cria, so BM25 alone is used.
/// </summary>
public static class RagRetriever
{
    /// <summary>
    /// The drafter's prompt for <paramref name="prompt"/>: its leading control tokens (BOS), the retrieved chunks of
    /// the rest in document order, then the query (the last <see cref="RagOptions.QueryTokens"/> tokens). A prompt
    /// whose context already fits the budget is returned whole.
    /// </summary>
    public static int[] DraftPrompt(int[] prompt, Tokenizer tokenizer, RagOptions options) =>
        DraftPrompt(prompt, tokenizer, options, out _);

    public static int[] DraftPrompt(int[] prompt, Tokenizer tokenizer, RagOptions options, out IReadOnlyList<RagChunk> kept)
    {
        options.Validate();
        int lead = 0;
        while (lead < prompt.Length && tokenizer.IsControl(prompt[lead])) lead++;
        int queryStart = Math.Max(lead, prompt.Length - options.QueryTokens);
        int contextLength = queryStart - lead;
        if (contextLength <= options.BudgetTokens) { kept = [new RagChunk(lead, contextLength, 0)]; return (int[])prompt.Clone(); }
        var context = prompt.AsSpan(lead, contextLength);
        var chunks = Chunks(context, tokenizer, options.ChunkTokens);
        var scores = Bm25(context, chunks, prompt.AsSpan(queryStart), tokenizer, options.K1, options.B);
        // Best first (earlier chunk first on ties), as many as fit; then back in document order.
        var order = Enumerable.Range(0, chunks.Count).OrderByDescending(i => scores[i]).ThenBy(i => i).ToList();
        var pick = new List<RagChunk>();
        int used = 0;
        foreach (int i in order)
        {
            if (used + chunks[i].Length > options.BudgetTokens) continue;
            pick.Add(chunks[i] with { Start = lead + chunks[i].Start, Score = scores[i] });
            used += chunks[i].Length;
        }
        pick.Sort((a, b) => a.Start.CompareTo(b.Start));
        kept = pick;
        var result = new int[lead + used + (prompt.Length - queryStart)];
        prompt.AsSpan(0, lead).CopyTo(result);
        int at = lead;
        foreach (var c in pick) { prompt.AsSpan(c.Start, c.Length).CopyTo(result.AsSpan(at)); at += c.Length; }
        prompt.AsSpan(queryStart).CopyTo(result.AsSpan(at));
        return result;
    }

    /// <summary>Consecutive chunks covering <paramref name="context"/>: each at most <paramref name="size"/> tokens,
    /// ending after the last sentence end (a token whose text ends in '.', '!', '?' or a newline) in its second half
    /// when there is one (RAPID's splitter prefers paragraph, line and sentence breaks the same way).</summary>
    public static List<RagChunk> Chunks(ReadOnlySpan<int> context, Tokenizer tokenizer, int size)
    {
        var chunks = new List<RagChunk>();
        int start = 0;
        while (start < context.Length)
        {
            int end = Math.Min(context.Length, start + size);
            if (end < context.Length)
                for (int j = end - 1; j >= start + size / 2; j--)
                    if (EndsSentence(tokenizer, context[j])) { end = j + 1; break; }
            chunks.Add(new RagChunk(start, end - start, 0));
            start = end;
        }
        return chunks;
    }

    static bool EndsSentence(Tokenizer tokenizer, int token)
    {
        if (tokenizer.IsControl(token)) return false;
        var t = tokenizer.TokenText(token).TrimEnd();
        return (t.Length > 0 && t[^1] is '.' or '!' or '?') || tokenizer.TokenText(token).EndsWith('\n');
    }

    /// <summary>
    /// Okapi BM25 of each chunk for the query, terms being token ids (control tokens ignored):
    /// Σ over query terms t of idf(t) · f·(k1 + 1) / (f + k1·(1 − b + b·|chunk| / avg|chunk|)), with f the count of t
    /// in the chunk and idf(t) = ln(1 + (N − n_t + 0.5) / (n_t + 0.5)) over the N chunks, n_t of which hold t.
    /// A query term repeated counts once per occurrence (as rank_bm25 does).
    /// </summary>
    public static double[] Bm25(ReadOnlySpan<int> context, IReadOnlyList<RagChunk> chunks, ReadOnlySpan<int> query, Tokenizer tokenizer, double k1, double b)
    {
        int n = chunks.Count;
        var tf = new Dictionary<int, int>[n];
        var df = new Dictionary<int, int>();
        double avg = 0;
        for (int i = 0; i < n; i++)
        {
            tf[i] = new Dictionary<int, int>();
            foreach (int t in context.Slice(chunks[i].Start, chunks[i].Length))
                tf[i][t] = tf[i].GetValueOrDefault(t) + 1;
            foreach (int t in tf[i].Keys) df[t] = df.GetValueOrDefault(t) + 1;
            avg += chunks[i].Length;
        }
        avg /= Math.Max(1, n);
        var scores = new double[n];
        foreach (int t in query)
        {
            if (tokenizer.IsControl(t) || !df.TryGetValue(t, out int nt)) continue;
            double idf = Math.Log(1 + (n - nt + 0.5) / (nt + 0.5));
            for (int i = 0; i < n; i++)
            {
                if (!tf[i].TryGetValue(t, out int f)) continue;
                scores[i] += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * chunks[i].Length / avg));
            }
        }
        return scores;
    }
}
