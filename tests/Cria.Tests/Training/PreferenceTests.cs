using Cria.Models;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>Preference optimisation (DPO, SimPO, REFUEL's regression): the loss's gradient through the model against central differences of a
/// double-precision reference; training on synthetic preferences raises the chosen-over-rejected margin.</summary>
public sealed class PreferenceTests(ITestOutputHelper output)
{
    const double H = 1e-6;

    static double LogProb(double[] logits, int row, int target, int V)
    {
        double max = double.NegativeInfinity;
        for (int i = 0; i < V; i++) max = Math.Max(max, logits[row * V + i]);
        double sum = 0;
        for (int i = 0; i < V; i++) sum += Math.Exp(logits[row * V + i] - max);
        return logits[row * V + target] - max - Math.Log(sum);
    }

    [Theory]
    [InlineData(PreferenceLoss.Dpo)]
    [InlineData(PreferenceLoss.SimPo)]
    [InlineData(PreferenceLoss.Refuel)]
    public void Preference_loss_gradients_match_finite_differences(PreferenceLoss kind)
    {
        var shape = new LlamaShape { VocabSize = 30, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        int B = 4, T = 7, V = shape.VocabSize;
        var o = kind switch
        {
            PreferenceLoss.Dpo => new PreferenceOptions { Loss = kind, Beta = 0.7f },
            PreferenceLoss.Refuel => new PreferenceOptions { Loss = kind, Beta = 1.5f },  // η
            _ => new PreferenceOptions { Loss = kind, Beta = 2f, Gamma = 0.3f },
        };
        double[] gaps = [0.8, -1.3];                                                  // REFUEL's Q̂(y) − Q̂(y′) per pair
        using var m = new LlamaTrainingModel(shape, B, T, 2);
        var rng = new Random(31);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(V)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(_ => rng.Next(V)).ToArray();
        // rows 2i (chosen) and 2i+1 (rejected): the first 2 targets are the prompt, then responses of 5 and 3 targets
        var mask = new bool[B * T];
        int[] len = [5, 3, 4, 5];
        for (int b = 0; b < B; b++) for (int t = 2; t < 2 + len[b]; t++) mask[b * T + t] = true;
        double[] reference = [-9.1, -7.7, -8.4, -10.2];
        tokens.CopyTo(m.Tokens); targets.CopyTo(m.Targets);

        double Loss(double[] p, bool setWeights)
        {
            double[] lp = new double[B];
            if (p.Length == 0)
            {
                m.Forward();
                for (int n = 0; n < B * T; n++) if (mask[n]) lp[n / T] -= m.TargetNll(n);
            }
            else
            {
                var logits = Reference.Logits(m.Layout, p, tokens, B, T);
                for (int n = 0; n < B * T; n++) if (mask[n]) lp[n / T] += LogProb(logits, n, targets[n], V);
            }
            double total = 0;
            for (int i = 0; i < B / 2; i++)
            {
                var (l, dw, dl, _) = o.PairLoss(lp[2 * i], lp[2 * i + 1], reference[2 * i], reference[2 * i + 1], len[2 * i], len[2 * i + 1], gaps[i]);
                total += l / (B / 2);
                if (setWeights)
                    for (int t = 0; t < T; t++)
                    {
                        m.LossWeights[2 * i * T + t] = mask[2 * i * T + t] ? (float)-dw : 0f;
                        m.LossWeights[(2 * i + 1) * T + t] = mask[(2 * i + 1) * T + t] ? (float)-dl : 0f;
                    }
            }
            return total;
        }

        m.ZeroGradients();
        double loss = Loss([], setWeights: true);
        m.BackwardWeighted(1f / (B / 2));
        var p0 = m.Parameters.Select(v => (double)v).ToArray();
        double refLoss = Loss(p0, false);
        // float32 forward against the double reference: 1e-5, or 1e-6 of the loss where it is larger (REFUEL's squared
        // errors reach ~61, where the 4-lane portable sums are 2.5e-5 off)
        Assert.True(Math.Abs(loss - refLoss) < Math.Max(1e-5, 1e-6 * Math.Abs(refLoss)), $"loss {loss} vs reference {refLoss}");
        double worst = 0;
        foreach (var t in m.Layout.Tensors)
        {
            var analytic = m.Gradients.AsSpan((int)t.Offset, (int)t.Count).ToArray();
            double d = 0, n = 0;
            for (int i = 0; i < t.Count; i++)
            {
                long j = t.Offset + i;
                double keep = p0[j];
                p0[j] = keep + H; double lp = Loss(p0, false);
                p0[j] = keep - H; double lm = Loss(p0, false);
                p0[j] = keep;
                double num = (lp - lm) / (2 * H);
                d += Math.Pow(analytic[i] - num, 2); n += num * num;
            }
            double err = Math.Sqrt(d) / Math.Max(Math.Sqrt(n), 1e-30);
            worst = Math.Max(worst, err);
        }
        output.WriteLine($"{kind}: loss {loss:F6}, worst tensor relative error {worst:E2}");
        Assert.True(worst < 1e-4, $"{kind}: relative error {worst:E2}");
    }

    /// <summary>Synthetic preferences on the bundled model with LoRA: after a few dozen steps every training pair's
    /// margin is positive and larger than at the start, deterministically; a held-out pair of the same kind follows.</summary>
    [Theory]
    [InlineData(PreferenceLoss.Dpo)]
    [InlineData(PreferenceLoss.SimPo)]
    public void Training_on_preferences_raises_the_margin(PreferenceLoss kind)
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        using var lm = LlamaModel.Open(TestPaths.Bundled());
        int[] E(string s) => lm.Tokenizer.Encode(s, addBos: false);
        string[] subjects = ["the king", "the people", "the priest", "the son of man", "the children of Israel", "the prophet", "the servant", "the woman"];
        var pairs = subjects.Select(s => new PreferencePair(E($"And {s}"), E(" went up into the mountain to pray."), E(" went down into the valley to sleep."))).ToList();
        var heldOut = new List<PreferencePair> { new(E("And the disciples"), E(" went up into the mountain to pray."), E(" went down into the valley to sleep.")) };
        var o = PreferenceOptions.Default(kind);
        (double[] Before, double[] After, double[] HeldBefore, double[] HeldAfter, float[] Losses) Run()
        {
            var opts = new TrainingOptions { BatchSize = 8, Steps = 12, WarmupSteps = 3, LearningRate = kind == PreferenceLoss.Dpo ? 3e-3f : 1e-3f, WeightDecay = 0, Threads = 2, Seed = 3 };
            using var tr = new Trainer(im.Shape, opts, [], 1, seqLen: 24, lora: new LoraOptions { Rank = 8, Alpha = 16 });
            tr.SetParameters(im.Parameters);
            var reference = tr.SequenceLogProbs(pairs);
            var heldRef = tr.SequenceLogProbs(heldOut);
            var losses = new List<float>();
            for (int s = 0; s < opts.Steps; s++) losses.Add(tr.PreferenceStep(pairs, reference, o).Loss);
            return (reference, tr.SequenceLogProbs(pairs), heldRef, tr.SequenceLogProbs(heldOut), losses.ToArray());
        }
        var a = Run();
        var b = Run();
        Assert.Equal(a.Losses, b.Losses);
        double Margin(double[] lp, int i, double[] refLp, IReadOnlyList<PreferencePair> ps) =>
            o.PairLoss(lp[2 * i], lp[2 * i + 1], refLp[2 * i], refLp[2 * i + 1], ps[i].Chosen.Length, ps[i].Rejected.Length).Margin;
        double startMean = Enumerable.Range(0, pairs.Count).Average(i => Margin(a.Before, i, a.Before, pairs));
        var end = Enumerable.Range(0, pairs.Count).Select(i => Margin(a.After, i, a.Before, pairs)).ToArray();
        double heldStart = Margin(a.HeldBefore, 0, a.HeldBefore, heldOut), heldEnd = Margin(a.HeldAfter, 0, a.HeldBefore, heldOut);
        output.WriteLine($"{kind}: loss {a.Losses[0]:F3} → {a.Losses[^1]:F3}; margin {startMean:F3} → min {end.Min():F3}, mean {end.Average():F3}; held-out pair {heldStart:F3} → {heldEnd:F3}");
        Assert.True(end.Min() > 0 && end.Min() > startMean + 0.5 * o.Beta, $"margins after training: {string.Join(", ", end)} (start {startMean})");
        Assert.True(a.Losses[^1] < 0.5 * a.Losses[0], $"loss {a.Losses[0]} → {a.Losses[^1]}");
        Assert.True(heldEnd > heldStart, $"held-out margin {heldStart} → {heldEnd}");
    }
}
