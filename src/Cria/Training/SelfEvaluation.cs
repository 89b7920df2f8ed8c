using Cria.Inference;
using Cria.Tokenization;

namespace Cria.Training;

/// <summary>
/// The follow-up question of capability-aware self-evaluation (Manvi et al. 2024, techniques.md §11), tokenized: after
/// a response the model is asked <see cref="DefaultQuestion"/>, and the probability of its next token being the "No"
/// answer rather than the "Yes" one estimates P(this response wins or ties against a fresh sample).
/// </summary>
/// <param name="Question">the question's tokens, appended after the response</param>
/// <param name="Yes">the first token of the "Yes" answer after the question</param>
/// <param name="No">the first token of the "No" answer after the question</param>
public sealed record SelfEvalFormat(int[] Question, int Yes, int No)
{
    /// <summary>The paper's question, on lines of its own after the response.</summary>
    public const string DefaultQuestion = "\n\nWould you do better if you started over? (“Yes.” or “No.”)\n";

    public static SelfEvalFormat Create(Tokenizer tokenizer, string question = DefaultQuestion, string yes = "Yes", string no = "No")
    {
        var q = tokenizer.Encode(question, addBos: false);
        if (q.Length == 0) throw new CriaException("the self-evaluation question is empty");
        // The answer's first token as it follows the question in running text (a space-prefix tokenizer would give the
        // answer alone a leading "▁"); the answer alone when it merges with the question's end.
        int First(string answer)
        {
            if (answer.Length == 0) throw new CriaException("a self-evaluation answer is empty");
            var t = tokenizer.Encode(question + answer, addBos: false);
            if (t.Length > q.Length && t.AsSpan(0, q.Length).SequenceEqual(q)) return t[q.Length];
            return tokenizer.Encode(answer, addBos: false)[0];
        }
        int y = First(yes), n = First(no);
        if (y == n) throw new CriaException($"the answers \"{yes}\" and \"{no}\" begin with the same token ({y}); the model could not tell them apart");
        return new SelfEvalFormat(q, y, n);
    }

    /// <summary>prompt + response + question, the response cut at its end so the whole holds at most
    /// <paramref name="maxTokens"/> tokens (training and scoring cut the same way). The prompt and the question are never cut.</summary>
    public int[] Context(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response, int maxTokens)
    {
        int keep = Math.Min(response.Length, maxTokens - prompt.Length - Question.Length);
        if (keep < 0) throw new CriaException($"a prompt of {prompt.Length} tokens and the question's {Question.Length} do not fit in {maxTokens}");
        var c = new int[prompt.Length + keep + Question.Length];
        prompt.CopyTo(c);
        response[..keep].CopyTo(c.AsSpan(prompt.Length));
        Question.CopyTo(c, prompt.Length + keep);
        return c;
    }

    /// <summary>P(No) from the logits after the question, normalised over the two answers: σ(z_No − z_Yes). (The
    /// paper reads the raw P("No"); a trained model puts nearly all its mass on the two answers, an untrained one does
    /// not, and the normalised value keeps a threshold meaningful for both.)</summary>
    public double PNo(ReadOnlySpan<float> logits) => 1 / (1 + Math.Exp(logits[Yes] - (double)logits[No]));
}

/// <summary>
/// One prompt's on-policy samples and their rewards: self-evaluation's training data. A sample's label against
/// another of the same prompt is "No" (starting over would not do better) when its reward is at least the other's —
/// a win or a tie — and "Yes" when it loses, so the mean label of sample i is its win-or-tie rate
/// (<see cref="WinOrTieRate"/>), the probability P(No) is trained to estimate (<see cref="Trainer.SelfEvalStep"/>).
/// </summary>
/// <param name="Prompt">the prompt's tokens, without BOS</param>
/// <param name="Responses">the sampled responses' tokens</param>
/// <param name="Rewards">each response's reward (any scorer: a reward model in the paper)</param>
public sealed record SelfEvalGroup(int[] Prompt, int[][] Responses, float[] Rewards)
{
    public void Validate()
    {
        if (Responses.Length < 2) throw new CriaException("a self-evaluation group needs at least two responses to compare");
        if (Rewards.Length != Responses.Length) throw new CriaException($"a self-evaluation group has {Responses.Length} responses and {Rewards.Length} rewards");
        foreach (float r in Rewards) if (!float.IsFinite(r)) throw new CriaException($"a self-evaluation reward is not a finite number ({r})");
    }

    /// <summary>The fraction of the other responses that response <paramref name="i"/> beats or ties.</summary>
    public double WinOrTieRate(int i)
    {
        int w = 0;
        for (int j = 0; j < Rewards.Length; j++) if (j != i && Rewards[i] >= Rewards[j]) w++;
        return (double)w / (Rewards.Length - 1);
    }
}

public readonly record struct SelfEvalStepResult(int Step, float Loss, float MeanError, float MeanPNo, float GradNorm, float LearningRate);

/// <summary>Capability-aware self-evaluation at inference: P(No) of a prompt and response through a context (the
/// policy with the self-evaluation adapter applied).</summary>
public static class SelfEvaluation
{
    /// <summary>
    /// P(No | prompt, response): <paramref name="prompt"/> (BOS first) + response + question as one sequence, one
    /// logit row read after the question (<see cref="SelfEvalFormat.PNo"/>). The response is cut so the sequence holds
    /// at most <paramref name="maxTokens"/> tokens (<see cref="SelfEvalFormat.Context"/>): an adapter trained with rows
    /// of T tokens saw at most T − 1 (<see cref="Trainer.SelfEvalStep"/>). Uses and then clears sequence
    /// <paramref name="sequence"/>.
    /// </summary>
    public static double PNo(InferenceContext ctx, SelfEvalFormat format, ReadOnlySpan<int> prompt, ReadOnlySpan<int> response, int maxTokens, int sequence = 0)
    {
        if (prompt.Length == 0) throw new CriaException("the prompt needs at least one token (BOS)");
        if (maxTokens > ctx.Cache.Capacity) throw new CriaException($"self-evaluation of {maxTokens} tokens needs a context that holds them; it holds {ctx.Cache.Capacity}");
        var tokens = format.Context(prompt, response, maxTokens);
        ctx.Cache.Remove(sequence);
        var batch = new Batch(tokens.Length);
        for (int i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, sequence, i == tokens.Length - 1);
        try
        {
            ctx.Decode(batch);
            return format.PNo(ctx.Logits(tokens.Length - 1));
        }
        finally { ctx.Cache.Remove(sequence); }
    }
}

public sealed partial class Trainer
{
    /// <summary>
    /// One optimizer step of self-evaluation training: GradAccumulation micro-batches of BatchSize responses, each
    /// response i of a random group (drawn with the trainer's RNG) in a row BOS + prompt + response + question whose one
    /// target is a soft one over the two answers: the loss is p_i·CE(No) + (1 − p_i)·CE(Yes), p_i the response's
    /// win-or-tie rate (<see cref="LlamaTrainingModel.SecondTargets"/> carries "Yes"). That is the expectation, over the
    /// other samples j, of the paper's objective — one predefined token, "No" when reward i ≥ reward j (a win or a
    /// tie), "Yes" when it loses — computed exactly instead of drawing one j, which would leave each row's label a coin
    /// flip for a middling response. With <paramref name="partialFraction"/> &gt; 0, that fraction of the responses is
    /// cut to a uniformly drawn 1 … length − 1 tokens and keeps the whole response's target — the chance that
    /// continuing this prefix wins — so the adapter also learns to score partial samples, as early pruning asks.
    /// Reports the loss, the mean |P(No) − p_i| and the mean P(No), before the update.
    /// </summary>
    public SelfEvalStepResult SelfEvalStep(IReadOnlyList<SelfEvalGroup> groups, SelfEvalFormat format, double partialFraction = 0)
    {
        if (!(partialFraction >= 0 && partialFraction <= 1)) throw new CriaException($"the fraction of partial responses must be in [0, 1], got {partialFraction}");
        var m = Model;
        if (m.Classifier != null || m.SwiftKv != null) throw new InvalidOperationException("self-evaluation trains the language model's own head");
        if (groups.Count == 0) throw new CriaException("no self-evaluation groups");
        foreach (var g in groups) g.Validate();
        int B = m.BatchSize, T = m.SeqLen, V = m.Shape.VocabSize, accum = Options.GradAccumulation;
        if ((uint)format.Yes >= (uint)V || (uint)format.No >= (uint)V) throw new CriaException($"the answer tokens {format.Yes} and {format.No} must be in the vocabulary of {V}");
        Span<int> answerRow = stackalloc int[B];
        Span<double> rate = stackalloc double[B];
        m.ZeroGradients();
        double loss = 0, pSum = 0, error = 0;
        try
        {
            for (int a = 0; a < accum; a++)
            {
                DropoutMasks(a);
                for (int b = 0; b < B; b++)
                {
                    var g = groups[_rng.Next(groups.Count)];
                    int i = _rng.Next(g.Responses.Length);
                    rate[b] = g.WinOrTieRate(i);
                    var response = g.Responses[i].AsSpan();
                    if (partialFraction > 0 && response.Length > 1 && _rng.NextDouble() < partialFraction) response = response[..(1 + _rng.Next(response.Length - 1))];
                    var context = format.Context(g.Prompt, response, T - 2);   // BOS + context + answer fill at most T + 1
                    FillPairRow(b, context, [format.No]);
                    int row = answerRow[b] = b * T + context.Length;
                    m.LossWeights[row] = (float)rate[b];
                    m.SecondTargets[row] = format.Yes;
                    m.SecondLossWeights[row] = (float)(1 - rate[b]);
                }
                m.Forward();
                for (int b = 0; b < B; b++)
                {
                    var logits = m.LogitsRow(answerRow[b]);
                    double lse = Kernels.Ops.LogSumExp(logits), p = format.PNo(logits);
                    loss += rate[b] * (lse - logits[format.No]) + (1 - rate[b]) * (lse - logits[format.Yes]);
                    pSum += p;
                    error += Math.Abs(p - rate[b]);
                }
                m.BackwardWeighted(1f / (B * accum));
                m.SecondLossWeights.Clear();
            }
        }
        finally { m.SecondLossWeights.Clear(); }
        var (norm, lr) = OptimizerStep();
        int count = B * accum;
        return new SelfEvalStepResult(Step, (float)(loss / count), (float)(error / count), (float)(pSum / count), norm, lr);
    }

    /// <summary>P(No) of every (prompt, response) with the trainer's forward, BatchSize at a time (no gradient kept).</summary>
    public double[] SelfEvalPNo(IReadOnlyList<(int[] Prompt, int[] Response)> texts, SelfEvalFormat format)
    {
        var m = Model;
        int B = m.BatchSize, T = m.SeqLen;
        var result = new double[texts.Count];
        Span<int> answerRow = stackalloc int[B];
        for (int start = 0; start < texts.Count; start += B)
        {
            for (int b = 0; b < B; b++)
            {
                var (prompt, response) = texts[Math.Min(start + b, texts.Count - 1)];
                var context = format.Context(prompt, response, T - 2);
                FillPairRow(b, context, [format.No]);
                answerRow[b] = b * T + context.Length;
            }
            m.Forward();
            for (int b = 0; b < B && start + b < texts.Count; b++) result[start + b] = format.PNo(m.LogitsRow(answerRow[b]));
        }
        return result;
    }
}
