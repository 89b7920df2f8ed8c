using Cria.Inference;
using Cria.Kernels;

namespace Cria.Training;

/// <summary>
/// A preference pair for a reward model, tokenized without BOS: prompt + chosen response, prompt + rejected response.
/// <see cref="Magnitude"/> weighs the pair's Bradley–Terry loss (HelpSteer2-Preference's Scaled BT: how strongly the
/// chosen one is preferred, 1 for plain BT); <see cref="Margin"/> is subtracted from the reward difference inside it
/// (TRL RewardTrainer's "margin").
/// </summary>
public sealed record RewardPair(int[] Chosen, int[] Rejected, float Magnitude = 1f, float Margin = 0f);

/// <summary>A rated text for a regression reward model (prompt + response, without BOS) and its rating.</summary>
public sealed record RatedText(int[] Tokens, float Score);

public readonly record struct RewardStepResult(int Step, float Loss, float Accuracy, float GradNorm, float LearningRate);

/// <summary>
/// Reward models and rewards without training. A reward model is a classifier (<see cref="ClassifierOptions"/>) with
/// one output, trained on preference pairs (Bradley–Terry, Scaled BT) or on ratings (regression) with the trainer's
/// LoRA + head machinery; it runs through the generation engine like a causal classifier (<see cref="Score"/>). The
/// contrastive reward (<see cref="Contrastive"/>, CDR / Dr.SoW) needs no training: log π_strong(y|x) − log π_weak(y|x).
/// </summary>
public static class RewardModel
{
    /// <summary>The reward of BOS + <paramref name="tokens"/> under a trained reward head (causal modes), through the
    /// generation engine: any base type, the adapter applied by the context.</summary>
    public static float Score(InferenceContext ctx, ReadOnlySpan<int> tokens, ClassifierOptions head, ReadOnlySpan<float> weights, int sequence = 0)
    {
        if (!head.IsReward) throw new CriaException("this head is a classifier (labels), not a reward model");
        return Classifier.Logits(ctx, tokens, head, weights, sequence)[0];
    }

    /// <summary>
    /// Σ log p(response | prompt) under the context's model: <paramref name="prompt"/> (BOS first, at least one token)
    /// and <paramref name="response"/> run as one sequence, and each response token's log-softmax is read from the
    /// row before it. Uses and then clears sequence <paramref name="sequence"/>.
    /// </summary>
    public static double ResponseLogProb(InferenceContext ctx, ReadOnlySpan<int> prompt, ReadOnlySpan<int> response, int sequence = 0)
    {
        if (prompt.Length == 0) throw new CriaException("the prompt needs at least one token (BOS)");
        if (response.Length == 0) throw new CriaException("the response is empty");
        int n = prompt.Length + response.Length;
        if (n > ctx.Cache.Capacity) throw new CriaException($"prompt and response have {n} tokens; the context holds {ctx.Cache.Capacity}");
        ctx.Cache.Remove(sequence);
        var batch = new Batch(n);
        for (int i = 0; i < n; i++)
            batch.Add(i < prompt.Length ? prompt[i] : response[i - prompt.Length], i, sequence, i >= prompt.Length - 1 && i < n - 1);
        try
        {
            ctx.Decode(batch);
            double sum = 0;
            for (int j = 0; j < response.Length; j++)
            {
                var logits = ctx.Logits(prompt.Length - 1 + j);
                sum += logits[response[j]] - Ops.LogSumExp(logits);
            }
            return sum;
        }
        finally { ctx.Cache.Remove(sequence); }
    }

    /// <summary>
    /// The contrastive reward of CDR / Dr.SoW ("customized" when the strong model's prompt carries criteria and
    /// examples): r(x, y) = log π_strong(y|x) − log π_weak(y|x), with the strong model the better-aligned one (e.g. a
    /// DPO or instruction-tuned model over its SFT or base model). No training; the two models share a vocabulary.
    /// </summary>
    public static double Contrastive(InferenceContext strong, InferenceContext weak, ReadOnlySpan<int> prompt, ReadOnlySpan<int> response) =>
        ResponseLogProb(strong, prompt, response) - ResponseLogProb(weak, prompt, response);
}

public sealed partial class Trainer
{
    /// <summary>One optimizer step of a Bradley–Terry reward model: GradAccumulation micro-batches of BatchSize / 2
    /// pairs drawn with the trainer's RNG (chosen in even rows, rejected in odd ones), the mean pair loss, clipping and
    /// AdamW on the adapters and the head.</summary>
    public RewardStepResult RewardPairStep(IReadOnlyList<RewardPair> pairs, int pad)
    {
        var m = Model;
        if (m.Classifier?.Objective != ClassifierObjective.BradleyTerry) throw new InvalidOperationException("the trainer was not made for a pairwise reward model");
        if (pairs.Count == 0) throw new CriaException("no preference pairs");
        int P = m.BatchSize / 2, accum = Options.GradAccumulation;
        Span<float> magnitude = stackalloc float[P], margin = stackalloc float[P];
        m.ZeroGradients();
        double loss = 0; int correct = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            for (int i = 0; i < P; i++)
            {
                var p = pairs[_rng.Next(pairs.Count)];
                FillClassifierRow(2 * i, p.Chosen, pad);
                FillClassifierRow(2 * i + 1, p.Rejected, pad);
                magnitude[i] = p.Magnitude; margin[i] = p.Margin;
            }
            var (l, c) = m.PairwiseRewardForwardBackward(magnitude, margin, 1f / (P * accum));
            loss += l; correct += c;
        }
        var (norm, lr) = OptimizerStep();
        return new RewardStepResult(Step, (float)(loss / (P * accum)), (float)correct / (P * accum), norm, lr);
    }

    /// <summary>One optimizer step of a regression reward model: GradAccumulation micro-batches of BatchSize rated
    /// texts, the mean of ½(r − y)²; the accuracy reported is the fraction within 0.5 of the rating.</summary>
    public RewardStepResult RewardRegressionStep(IReadOnlyList<RatedText> texts, int pad)
    {
        var m = Model;
        if (m.Classifier?.Objective != ClassifierObjective.Regression) throw new InvalidOperationException("the trainer was not made for a regression reward model");
        if (texts.Count == 0) throw new CriaException("no rated texts");
        int B = m.BatchSize, accum = Options.GradAccumulation;
        Span<float> scores = stackalloc float[B];
        m.ZeroGradients();
        double loss = 0; int close = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            for (int b = 0; b < B; b++)
            {
                var t = texts[_rng.Next(texts.Count)];
                FillClassifierRow(b, t.Tokens, pad);
                scores[b] = t.Score;
            }
            loss += m.RegressionRewardForwardBackward(scores, 1f / (B * accum));
            for (int b = 0; b < B; b++) if (Math.Abs(m.ClassLogits(b)[0] - scores[b]) < 0.5f) close++;
        }
        var (norm, lr) = OptimizerStep();
        return new RewardStepResult(Step, (float)(loss / (B * accum)), (float)close / (B * accum), norm, lr);
    }

    /// <summary>The reward of every text (BOS + tokens, cut to the row), BatchSize at a time, with the trainer's forward
    /// (bidirectional heads too). No gradient is kept.</summary>
    public float[] Rewards(IReadOnlyList<int[]> texts, int pad)
    {
        var m = Model;
        if (m.Classifier is not { IsReward: true }) throw new InvalidOperationException("the trainer was not made for a reward model");
        int B = m.BatchSize;
        var r = new float[texts.Count];
        for (int start = 0; start < texts.Count; start += B)
        {
            for (int b = 0; b < B; b++) FillClassifierRow(b, texts[start + b < texts.Count ? start + b : 0], pad);
            m.Forward();
            for (int b = 0; b < B && start + b < texts.Count; b++) r[start + b] = m.ClassLogits(b)[0];
        }
        return r;
    }
}
