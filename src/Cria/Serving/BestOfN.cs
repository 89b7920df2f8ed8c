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

/// <summary>
/// Best-of-N settings. Without a <see cref="Threshold"/>, all <see cref="Samples"/> are drawn at once and the best
/// scored is returned. With one, sampling is adaptive (capability-aware self-evaluation's "sample more?" loop, Manvi
/// et al. 2024, with any scorer): rounds of 1, 2, 4 … samples (at most <see cref="Samples"/> in all) until the best
/// so far scores at least the threshold.
/// </summary>
public sealed record BestOfNOptions
{
    public int Samples { get; init; } = 4;
    public double? Threshold { get; init; }

    public void Validate()
    {
        if (Samples < 1 || Samples > 256) throw new CriaException($"best-of-N needs 1..256 samples, got {Samples}");
        if (Threshold is { } t && !double.IsFinite(t)) throw new CriaException($"the best-of-N threshold must be a finite number, got {t}");
    }
}

/// <summary>One sampled response: its tokens, text, finish reason and score.</summary>
public sealed record ScoredSample(int[] Tokens, string Text, string FinishReason, double Score);

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

    static async Task<(int[], string, string)> Collect(Engine engine, GenerationRequest r, CancellationToken cancel)
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
