using Cria.Inference;
using Cria.Training;

namespace Cria.Serving;

/// <summary>Scores a response to a prompt (higher is better): a reward model, a log-probability, or anything else.</summary>
public interface IResponseScorer
{
    /// <summary><paramref name="prompt"/> is the request's prompt as the engine ran it (BOS first when the model adds
    /// one); <paramref name="response"/> the generated tokens.</summary>
    double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response);
}

/// <summary>A trained reward model (<see cref="RewardModel.Score"/>) as a scorer: prompt + response, cut to the head's
/// context, through its own <see cref="InferenceContext"/> (the reward adapter applied there).</summary>
public sealed class RewardModelScorer(InferenceContext context, ClassifierOptions head, float[] weights, int maxTokens) : IResponseScorer
{
    readonly int[] _ids = new int[maxTokens];                     // [maxTokens] prompt + response, cut

    public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response)
    {
        int n = Math.Min(_ids.Length, prompt.Length + response.Length);
        int p = Math.Min(n, prompt.Length);
        prompt[..p].CopyTo(_ids);
        response[..(n - p)].CopyTo(_ids.AsSpan(p));
        return RewardModel.Score(context, _ids.AsSpan(0, n), head, weights);
    }
}

/// <summary>The training-free scorers: log π(y|x) of one model, or the contrastive reward log π_strong − log π_weak (CDR).</summary>
public sealed class LogProbScorer(InferenceContext strong, InferenceContext? weak = null) : IResponseScorer
{
    public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response) => weak == null
        ? RewardModel.ResponseLogProb(strong, prompt, response)
        : RewardModel.Contrastive(strong, weak, prompt, response);
}

/// <summary>Capability-aware self-evaluation as a scorer: P(No) to "Would you do better if you started over?" after
/// the response (<see cref="SelfEvaluation.PNo"/>), through a context of the policy with its self-evaluation adapter
/// (cria train-self-eval), the sequence cut to <paramref name="maxTokens"/> (T − 1 for an adapter trained on rows of T).
/// Scores are probabilities, so a threshold means "stop once a sample is likely to win or tie against another".</summary>
public sealed class SelfEvalScorer(InferenceContext context, SelfEvalFormat format, int maxTokens) : IResponseScorer
{
    public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response) => SelfEvaluation.PNo(context, format, prompt, response, maxTokens);
}

/// <summary>A rule reward (a verifiable one, for RL and tests): how many times the response's text contains any of
/// <paramref name="words"/> as a whole word (a maximal run of letters, digits and apostrophes; case-sensitive).</summary>
public sealed class WordCountScorer(Tokenization.Tokenizer tokenizer, IEnumerable<string> words) : IResponseScorer
{
    readonly HashSet<string> _words = words.Select(w => w.Trim()).Where(w => w.Length > 0).ToHashSet(StringComparer.Ordinal) is { Count: > 0 } set
        ? set : throw new CriaException("a word-count reward needs at least one word");

    public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response) => Count(tokenizer.Decode(response.ToArray()));

    public int Count(string text)
    {
        int n = 0;
        for (int i = 0; i < text.Length;)
        {
            if (!IsWordChar(text[i])) { i++; continue; }
            int start = i;
            while (i < text.Length && IsWordChar(text[i])) i++;
            if (_words.Contains(text[start..i])) n++;
        }
        return n;
    }

    static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '\'';
}

/// <summary>
/// Best-of-N settings. Without a <see cref="Threshold"/>, all <see cref="Samples"/> are drawn at once and the best
/// scored is returned. With one, sampling is adaptive (capability-aware self-evaluation's "sample more?" loop, Manvi
/// et al. 2024, with any scorer): rounds of 1, 2, 4 … samples (at most <see cref="Samples"/> in all) until the best
/// so far scores at least the threshold. With <see cref="PruneAfter"/>, partial samples are pruned early (the paper's
/// third use of its scorer): all <see cref="Samples"/> are drawn to <see cref="PruneAfter"/> tokens, scored, and only
/// the <see cref="Keep"/> best are continued to the full length.
/// </summary>
public sealed record BestOfNOptions
{
    public int Samples { get; init; } = 4;
    public double? Threshold { get; init; }
    /// <summary>Tokens every sample gets before the pruning (null: no pruning).</summary>
    public int? PruneAfter { get; init; }
    /// <summary>Samples continued after the pruning.</summary>
    public int Keep { get; init; } = 1;

    public void Validate()
    {
        if (Samples < 1 || Samples > 256) throw new CriaException($"best-of-N needs 1..256 samples, got {Samples}");
        if (Threshold is { } t && !double.IsFinite(t)) throw new CriaException($"the best-of-N threshold must be a finite number, got {t}");
        if (PruneAfter is { } k)
        {
            if (k < 1) throw new CriaException($"pruning needs at least one token per partial sample, got {k}");
            if (Keep < 1 || Keep > Samples) throw new CriaException($"pruning keeps 1..{Samples} samples, got {Keep}");
            if (Threshold != null) throw new CriaException("pruning and an adaptive threshold are two different schedules; give one");
        }
    }
}

/// <summary>One sampled response: its tokens, text, finish reason and score. A <see cref="Pruned"/> sample stopped at
/// the pruning point; its score is its partial response's.</summary>
public sealed record ScoredSample(int[] Tokens, string Text, string FinishReason, double Score, bool Pruned = false);

public sealed record BestOfNResult(IReadOnlyList<ScoredSample> Samples, int Best)
{
    public ScoredSample Chosen => Samples[Best];
}

/// <summary>
/// Best-of-N and adaptive sampling on the serving engine: sample i is the request with seed + i, so the samples are
/// the same whether drawn at once or in rounds (a round's samples run concurrently in the engine's batch); each is
/// scored and the highest score wins (the first on ties).
/// </summary>
public static class BestOfN
{
    public static async Task<BestOfNResult> RunAsync(Engine engine, GenerationRequest request, IResponseScorer scorer, BestOfNOptions options, CancellationToken cancel = default)
    {
        options.Validate();
        if (options.PruneAfter != null) return await RunPrunedAsync(engine, request, scorer, options, cancel);
        var samples = new List<ScoredSample>();
        int best = -1, round = 1;
        ulong seed = request.Sampler.Seed;
        while (samples.Count < options.Samples)
        {
            int n = options.Threshold == null ? options.Samples : Math.Min(round, options.Samples - samples.Count);
            int first = samples.Count;
            var drawn = await Task.WhenAll(Enumerable.Range(first, n).Select(i =>
                Collect(engine, request with { Sampler = request.Sampler with { Seed = unchecked(seed + (ulong)i) } }, cancel)));
            foreach (var (tokens, text, finish) in drawn)
            {
                var s = new ScoredSample(tokens, text, finish, scorer.Score(request.Prompt, tokens));
                samples.Add(s);
                if (best < 0 || s.Score > samples[best].Score) best = samples.Count - 1;
            }
            if (options.Threshold is { } t && samples[best].Score >= t) break;
            round *= 2;
        }
        return new BestOfNResult(samples, best);
    }

    /// <summary>
    /// Early pruning: sample i (seed + i) runs to PruneAfter tokens; the Keep best partial samples by score (the
    /// first on ties) that stopped at that length are continued — the request again with prompt + partial tokens,
    /// the remaining tokens and the same seed — and scored whole; samples that ended before the pruning point are
    /// complete as they are. The best kept sample wins. A continued sample's random stream starts again at the pruning
    /// point (its seed again; the penalties see prompt and partial tokens, as the uninterrupted sample's do), and a stop
    /// string that straddles the point is not seen.
    /// </summary>
    static async Task<BestOfNResult> RunPrunedAsync(Engine engine, GenerationRequest request, IResponseScorer scorer, BestOfNOptions options, CancellationToken cancel)
    {
        int k = options.PruneAfter!.Value;
        if (k >= request.MaxTokens) throw new CriaException($"pruning after {k} tokens needs requests of more tokens, got max_tokens {request.MaxTokens}");
        if (request.JsonObject || request.Grammar != null) throw new CriaException("pruning cannot continue a json_object or grammar request (its grammar would start again at the pruning point)");
        ulong seed = request.Sampler.Seed;
        GenerationRequest Seeded(int i) => request with { Sampler = request.Sampler with { Seed = unchecked(seed + (ulong)i) } };
        var partial = await Task.WhenAll(Enumerable.Range(0, options.Samples).Select(i => Collect(engine, Seeded(i) with { MaxTokens = k }, cancel)));
        var scores = partial.Select(p => scorer.Score(request.Prompt, p.Item1)).ToArray();
        var order = Enumerable.Range(0, options.Samples).OrderByDescending(i => scores[i]).ThenBy(i => i).ToArray();
        var kept = order.Take(options.Keep).ToHashSet();
        var samples = new ScoredSample[options.Samples];
        var continued = await Task.WhenAll(kept.Where(i => partial[i].Item3 == "length").Select(async i =>
        {
            var (tokens, text, _) = partial[i];
            var (more, moreText, finish) = await Collect(engine,
                Seeded(i) with { Prompt = [.. request.Prompt, .. tokens], MaxTokens = request.MaxTokens - tokens.Length, ContinuesText = true }, cancel);
            return (i, Tokens: (int[])[.. tokens, .. more], Text: text + moreText, Finish: finish);
        }));
        for (int i = 0; i < options.Samples; i++)
        {
            var (tokens, text, finish) = partial[i];
            samples[i] = new ScoredSample(tokens, text, finish, scores[i], Pruned: !kept.Contains(i));
        }
        foreach (var c in continued) samples[c.i] = new ScoredSample(c.Tokens, c.Text, c.Finish, scorer.Score(request.Prompt, c.Tokens));
        int best = -1;
        for (int i = 0; i < samples.Length; i++)
            if (!samples[i].Pruned && (best < 0 || samples[i].Score > samples[best].Score)) best = i;
        return new BestOfNResult(samples, best);
    }

    /// <summary>Runs one request to the end: its tokens, text and finish reason.</summary>
    internal static async Task<(int[], string, string)> Collect(Engine engine, GenerationRequest r, CancellationToken cancel)
    {
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        string finish = "";
        await foreach (var o in engine.GenerateAsync(r, cancel))
        {
            if (o.IsToken) tokens.Add(o.Token);
            text.Append(o.Text);
            if (o.FinishReason != null) finish = o.FinishReason;
        }
        return (tokens.ToArray(), text.ToString(), finish);
    }
}
