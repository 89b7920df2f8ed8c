using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>The pass-key training options: per-target loss weights (<c>--passkey-answer-weight</c>) and repeated random
/// rows (<c>--repeat-fraction</c>).</summary>
public sealed unsafe class PasskeyTrainingTests
{
    /// <summary>The weighted cross-entropy kernel against the hand formula: row r's logit gradient is
    /// scale · w_r · (softmax − onehot), its loss is unweighted; weight 0 leaves exact zeros.</summary>
    [Fact]
    public void Weighted_cross_entropy_is_the_hand_computation()
    {
        const int V = 5, R = 3;
        float[] logits = [0.1f, -1.2f, 2.0f, 0.3f, 0.0f, 1.5f, 1.5f, -0.5f, 0.2f, 3.0f, -2.0f, 0.7f, 0.1f, 0.1f, 1.1f];
        int[] targets = [2, 4, 0];
        float[] w = [2f, 0f, 0.5f];
        var expect = new double[V * R]; var expectLoss = new double[R];
        for (int r = 0; r < R; r++)
        {
            double sum = 0;
            for (int i = 0; i < V; i++) sum += Math.Exp(logits[r * V + i]);
            expectLoss[r] = Math.Log(sum) - logits[r * V + targets[r]];
            for (int i = 0; i < V; i++) expect[r * V + i] = 0.25 * w[r] * (Math.Exp(logits[r * V + i]) / sum - (i == targets[r] ? 1 : 0));
        }
        var losses = new float[R];
        fixed (float* pl = logits, pw = w, ploss = losses) fixed (int* pt = targets)
            Layers.CrossEntropyForwardBackward(pl, pt, ploss, V, 0.25f, 0, R, pw);
        for (int i = 0; i < V * R; i++) Assert.True(Math.Abs(logits[i] - expect[i]) < 1e-6, $"gradient {i}: {logits[i]} vs {expect[i]}");
        for (int i = V; i < 2 * V; i++) Assert.Equal(0f, logits[i]);
        for (int r = 0; r < R; r++) Assert.True(Math.Abs(losses[r] - expectLoss[r]) < 1e-5);
    }

    static LlamaTrainingModel TinyModel(int B, int T, int seed)
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        var m = new LlamaTrainingModel(shape, B, T, 1);
        var rng = new Random(seed);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        return m;
    }

    /// <summary>A whole model with masked and up-weighted targets: the reported loss is Σ w·ce / Σ w over the reference
    /// forward's per-row losses, the gradients match finite differences of that weighted loss, and the targets of rows
    /// with weight 0 do not move any gradient (changing them changes nothing, bit for bit).</summary>
    [Fact]
    public void Weighted_loss_gradients_match_finite_differences_and_masked_targets_are_ignored()
    {
        const int B = 2, T = 6;
        using var m = TinyModel(B, T, 23);
        var rng = new Random(5);
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(40)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(_ => rng.Next(40)).ToArray();
        float[] w = [0, 0, 1, 1, 20, 1, 0, 1, 0, 3, 1, 0];
        tokens.CopyTo(m.Tokens); targets.CopyTo(m.Targets); w.CopyTo(m.LossWeights);
        m.ZeroGradients();
        float wsum = w.Sum();
        float loss = m.ForwardBackward(1f / wsum);
        var grad = m.Gradients.ToArray();
        var p = m.Parameters.Select(v => (double)v).ToArray();
        double WeightedLoss(double[] pp)
        {
            var logits = Reference.Logits(m.Layout, pp, tokens, B, T);
            double s = 0;
            for (int r = 0; r < B * T; r++)
            {
                if (w[r] == 0) continue;
                double max = double.NegativeInfinity, sum = 0;
                for (int i = 0; i < 40; i++) max = Math.Max(max, logits[r * 40 + i]);
                for (int i = 0; i < 40; i++) sum += Math.Exp(logits[r * 40 + i] - max);
                s += w[r] * (Math.Log(sum) + max - logits[r * 40 + targets[r]]);
            }
            return s / wsum;
        }
        Assert.True(Math.Abs(loss - WeightedLoss(p)) < 1e-5, $"loss {loss} vs reference {WeightedLoss(p)}");
        const double H = 1e-4;
        double worst = 0;
        foreach (var t in m.Layout.Tensors)
        {
            double num2 = 0, diff2 = 0;
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
            {
                double keep = p[i];
                p[i] = keep + H; double lp = WeightedLoss(p);
                p[i] = keep - H; double lm = WeightedLoss(p);
                p[i] = keep;
                double numeric = (lp - lm) / (2 * H);
                num2 += numeric * numeric; diff2 += (numeric - grad[i]) * (numeric - grad[i]);
            }
            worst = Math.Max(worst, Math.Sqrt(diff2 / Math.Max(1e-30, num2)));
        }
        Assert.True(worst < 1e-4, $"worst relative gradient error {worst:E2}");

        // other targets where the weight is 0: the same gradients and loss, bit for bit
        var moved = (int[])targets.Clone();
        for (int r = 0; r < B * T; r++) if (w[r] == 0) moved[r] = (moved[r] + 7) % 40;
        moved.CopyTo(m.Targets); w.CopyTo(m.LossWeights);
        m.ZeroGradients();
        Assert.Equal(loss, m.ForwardBackward(1f / wsum));
        Assert.Equal(grad, m.Gradients.ToArray());
    }

    /// <summary>All weights 1 is the plain mean: the same loss and gradients as before weights existed (scale 1/rows).</summary>
    [Fact]
    public void Unit_weights_are_the_plain_mean()
    {
        const int B = 2, T = 6;
        using var m = TinyModel(B, T, 31);
        var rng = new Random(9);
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(40)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(_ => rng.Next(40)).ToArray();
        tokens.CopyTo(m.Tokens); targets.CopyTo(m.Targets);
        Assert.All(m.LossWeights.ToArray(), x => Assert.Equal(1f, x));
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / (B * T));
        double refLoss = Reference.Loss(m.Layout, m.Parameters.Select(v => (double)v).ToArray(), tokens, targets, B, T);
        Assert.True(Math.Abs(loss - refLoss) < 1e-5);
    }

    /// <summary>A repeat row: BOS, then a random period of L ∈ [8, T/2] alphabet tokens repeated; the targets shifted
    /// by one; weight 0 on the first L + 1 targets (unpredictable), 1 after (each the token after the previous
    /// occurrence of its input); the same seed gives the same row.</summary>
    [Fact]
    public void Repeat_rows_have_the_claimed_structure_and_follow_the_seed()
    {
        const int T = 64;
        int[] alphabet = Enumerable.Range(100, 300).ToArray();
        var periods = new HashSet<int>();
        var rng = new TrainingRng(77);
        for (int k = 0; k < 200; k++)
        {
            var tokens = new int[T]; var targets = new int[T]; var w = new float[T];
            RepeatRows.Fill(tokens, targets, w, ref rng, 1, alphabet);
            int L = Array.IndexOf(w, 1f) - 1;
            Assert.InRange(L, RepeatRows.MinPeriod, T / 2);
            periods.Add(L);
            Assert.All(w.Take(L + 1), x => Assert.Equal(0f, x));
            Assert.All(w.Skip(L + 1), x => Assert.Equal(1f, x));
            Assert.Equal(1, tokens[0]);
            Assert.Equal(targets[..^1], tokens[1..]);
            Assert.All(targets, t => Assert.Contains(t, alphabet));
            for (int i = L; i < T; i++) Assert.Equal(targets[i - L], targets[i]);
            // every weighted target is the token that followed the previous occurrence of the current input token
            for (int i = L + 1; i < T; i++)
            {
                int prev = Array.LastIndexOf(tokens, tokens[i], i - 1);
                if (prev >= 0 && prev < L + 1 && tokens.Take(L + 1).Count(t => t == tokens[i]) == 1) Assert.Equal(targets[prev], targets[i]);
            }
        }
        Assert.True(periods.Count > 10, $"only {periods.Count} distinct periods");
        var a = new TrainingRng(5); var b = new TrainingRng(5); var c = new TrainingRng(6);
        int[] ta = new int[T], tb = new int[T], tc = new int[T], x = new int[T]; float[] wx = new float[T];
        RepeatRows.Fill(x, ta, wx, ref a, 1, alphabet);
        RepeatRows.Fill(x, tb, wx, ref b, 1, alphabet);
        RepeatRows.Fill(x, tc, wx, ref c, 1, alphabet);
        Assert.Equal(ta, tb);
        Assert.NotEqual(ta, tc);
        Assert.Throws<CriaException>(() => RepeatRows.Fill(new int[12], new int[12], new float[12], ref a, 1, alphabet));
        Assert.Throws<CriaException>(() => RepeatRows.Fill(x, ta, wx, ref a, 1, [3]));
    }

    /// <summary>The alphabet: the corpus's distinct tokens plus the extra (digit) tokens at about a tenth of the draws.</summary>
    [Fact]
    public void Repeat_alphabet_adds_the_digits_at_about_a_tenth()
    {
        int[] corpus = Enumerable.Range(0, 5000).Select(i => 20 + i * 13 % 900).ToArray();
        int[] digits = Enumerable.Range(3, 10).ToArray();
        var alpha = RepeatRows.Alphabet(corpus, digits);
        Assert.Equal(900, alpha.Distinct().Count(t => t >= 20));
        double share = alpha.Count(t => t < 20) / (double)alpha.Length;
        Assert.InRange(share, 0.07, 0.13);
        Assert.Equal(900, RepeatRows.Alphabet(corpus, [25, 30]).Length); // extras already in the corpus add nothing
    }

    /// <summary>The trainer's batches: document rows weight their answer span by AnswerWeight and nothing else; repeat rows
    /// mask their first period; the mix follows the fractions; the same seed gives the same batches and losses.</summary>
    [Fact]
    public void Trainer_rows_carry_the_weights_and_the_mix_follows_the_seed()
    {
        var shape = new LlamaShape { VocabSize = 64, Dim = 16, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 32, ContextLength = 32 };
        int[] corpus = Enumerable.Range(0, 2000).Select(i => 3 + i * 7 % 50).ToArray();
        int[] alphabet = Enumerable.Range(10, 40).ToArray();
        var opts = new TrainingOptions { BatchSize = 40, Steps = 4, WarmupSteps = 1, Threads = 1, Seed = 3 };
        Trainer Make() => new(shape, opts, corpus, 1)
        {
            Documents = (ref TrainingRng g, int max) => new SyntheticDocument([60, 61, 62, 63, 60, 61], 2, 3),
            DocumentFraction = 0.4, AnswerWeight = 7f, RepeatFraction = 0.3, RepeatAlphabet = alphabet,
        };
        using var tr = Make();
        tr.FillBatch();
        int docs = 0, repeats = 0, plain = 0;
        for (int b = 0; b < 40; b++)
        {
            var tok = tr.Model.Tokens.Slice(b * 32, 32).ToArray();
            var w = tr.Model.LossWeights.Slice(b * 32, 32).ToArray();
            if (tok[1] == 60)
            {
                docs++;
                Assert.Equal(new float[] { 1, 1, 7, 7, 7 }, w.Take(5));
                Assert.All(w.Skip(5), x => Assert.Equal(1f, x));
            }
            else if (w[0] == 0)
            {
                repeats++;
                Assert.All(tok.Skip(1), t => Assert.Contains(t, alphabet));
            }
            else { plain++; Assert.All(w, x => Assert.Equal(1f, x)); }
        }
        Assert.Equal(40, docs + repeats + plain);
        Assert.InRange(docs, 8, 26); Assert.InRange(repeats, 4, 22); Assert.InRange(plain, 4, 22);
        using var t1 = Make(); using var t2 = Make();
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(t1.TrainStep().Loss, t2.TrainStep().Loss);
            Assert.Equal(t1.Model.Tokens.ToArray(), t2.Model.Tokens.ToArray());
            Assert.Equal(t1.Model.LossWeights.ToArray(), t2.Model.LossWeights.ToArray());
        }
    }
}
