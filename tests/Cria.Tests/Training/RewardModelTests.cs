using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Reward models on the classifier machinery (one-output head, LoRA backbone): the Bradley–Terry (plain, Scaled BT with
/// magnitudes, TRL's margin) and regression losses and every adapter and head gradient against central differences of
/// the double-precision reference; learnable preferences learned by all three; the engine's reward equal to the
/// training forward's through the written files; the contrastive (CDR) reward against per-token forward passes; and
/// the refusals.
/// </summary>
public sealed class RewardModelTests(ITestOutputHelper output)
{
    static double Softplus(double x) => Math.Log(1 + Math.Exp(x));

    [Theory]
    [InlineData("bt", "last")]
    [InlineData("scaled-bt", "mean")]
    [InlineData("bt", "bi-mean")]
    [InlineData("regression", "last")]
    [InlineData("regression", "bi-last")]
    public void Loss_and_gradients_agree_with_finite_differences(string loss, string mode)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var objective = loss == "regression" ? ClassifierObjective.Regression : ClassifierObjective.BradleyTerry;
        var head = ClassifierOptions.Reward(objective, pooling, bi);
        int B = 4, T = 6;
        int[] lengths = [6, 4, 2, 5];
        using var m = ClassifierTests.GradientModel(head, B, T, lengths, seed: 41, out var tokens);
        // Two pairs (rows 0/1 and 2/3); Scaled BT weighs them 3 and 1 and the second has a margin. Four ratings.
        float[] magnitude = loss == "scaled-bt" ? [3f, 1f] : [1f, 1f], margin = loss == "scaled-bt" ? [0f, 0.7f] : [0f, 0f];
        float[] scores = [2f, -1f, 0.5f, 3f];

        double Loss(double[] pooled) => objective == ClassifierObjective.Regression
            ? Enumerable.Range(0, B).Sum(b => 0.5 * Math.Pow(pooled[b] - scores[b], 2)) / B
            : Enumerable.Range(0, B / 2).Sum(i => magnitude[i] * Softplus(-(pooled[2 * i] - pooled[2 * i + 1] - margin[i]))) / (B / 2);

        m.ZeroGradients();
        double sum = objective == ClassifierObjective.Regression
            ? m.RegressionRewardForwardBackward(scores, 1f / B)
            : m.PairwiseRewardForwardBackward(magnitude, margin, 1f / (B / 2)).Loss;
        double mean = sum / (objective == ClassifierObjective.Regression ? B : B / 2);
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var a = m.LoraParameters.Select(v => (double)v).ToArray();
        double RefLoss() => Loss(ClassifierTests.ReferencePooled(m, p, a, tokens, lengths));
        double refLoss = RefLoss();
        output.WriteLine($"{loss} {mode}: loss {mean:F6}, reference {refLoss:F6}");
        Assert.True(Math.Abs(mean - refLoss) < 1e-5 * Math.Max(1, Math.Abs(refLoss)), $"loss {mean} vs reference {refLoss}");
        double worst = ClassifierTests.WorstLoraGradientError(m, a, RefLoss);
        output.WriteLine($"{loss} {mode}: worst relative gradient error over {m.Lora!.Tensors.Length} tensors (adapters and head) {worst:E2}");
        Assert.True(worst < 1e-4, $"relative gradient error {worst}");
    }

    /// <summary>
    /// A preference only the whole text answers: the more 7s a sequence holds (0–3), the better. Trained on 400 random
    /// sequences from pairs (BT on pairs of different counts; Scaled BT weighing each by the count difference) or from
    /// the counts as ratings (regression), the reward must order ≥ 85 % of held-out pairs (chance 50 %).
    /// </summary>
    [Theory]
    [InlineData("bt")]
    [InlineData("scaled-bt")]
    [InlineData("regression")]
    public void A_learnable_preference_is_learned(string loss)
    {
        var shape = new LlamaShape { VocabSize = 32, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 16 };
        var rng = new Random(5);
        (int[] Tokens, int Sevens) Text()
        {
            int n = rng.Next(6, 15), k = rng.Next(4);
            var t = Enumerable.Range(0, n).Select(_ => 3 + rng.Next(28)).Where(x => x != 7).ToArray();
            foreach (int i in Enumerable.Range(0, t.Length).OrderBy(_ => rng.Next()).Take(k)) t[i] = 7;
            return (t, t.Count(x => x == 7));
        }
        (RewardPair Pair, int Gap) Pair()
        {
            while (true)
            {
                var (x, kx) = Text(); var (y, ky) = Text();
                if (kx == ky) continue;
                return kx > ky ? (new RewardPair(x, y), kx - ky) : (new RewardPair(y, x), ky - kx);
            }
        }
        var objective = loss == "regression" ? ClassifierObjective.Regression : ClassifierObjective.BradleyTerry;
        var train = Enumerable.Range(0, 400).Select(_ => Pair()).Select(p => loss == "scaled-bt" ? p.Pair with { Magnitude = p.Gap } : p.Pair).ToList();
        var rated = Enumerable.Range(0, 800).Select(_ => Text()).Select(t => new RatedText(t.Tokens, t.Sevens)).ToList();
        var held = Enumerable.Range(0, 200).Select(_ => Pair().Pair).ToList();
        var options = new TrainingOptions { BatchSize = 8, Steps = 300, WarmupSteps = 20, LearningRate = 1e-2f, WeightDecay = 0, Threads = 2, Seed = 4 };
        using var trainer = new Trainer(shape, options, [], 1, seqLen: 16, lora: new LoraOptions { Rank = 4, Alpha = 8f },
            classifier: ClassifierOptions.Reward(objective));
        double Accuracy()
        {
            var r = trainer.Rewards([.. held.Select(h => h.Chosen), .. held.Select(h => h.Rejected)], 0);
            return Enumerable.Range(0, held.Count).Count(i => r[i] > r[held.Count + i]) / (double)held.Count;
        }
        double before = Accuracy();
        while (trainer.Step < options.Steps)
            if (objective == ClassifierObjective.Regression) trainer.RewardRegressionStep(rated, 0); else trainer.RewardPairStep(train, 0);
        double after = Accuracy();
        output.WriteLine($"{loss}: held-out pair accuracy {before:P1} → {after:P1}");
        Assert.True(after >= 0.85, $"{loss}: accuracy {after:P1} after training");
    }

    [Fact]
    public void The_engine_scores_what_the_training_forward_scores_through_the_written_files()
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 384, Seed = 12 };
        var path = LogitsAgreementTests.ModelFile("clf-base", spec);
        var imported = GgufImport.Read(path);
        var head = ClassifierOptions.Reward(ClassifierObjective.BradleyTerry);
        int T = 10;
        var options = new TrainingOptions { BatchSize = 2, Steps = 1, WarmupSteps = 0, Threads = 2 };
        using var trainer = new Trainer(imported.Shape with { ContextLength = T }, options, [], 1, seqLen: T, lora: new LoraOptions { Rank = 4, Alpha = 8f }, classifier: head);
        trainer.SetParameters(imported.Parameters);
        var m = trainer.Model;
        var rng = new Random(3);
        for (int i = 0; i < m.LoraParameters.Length; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.2);
        int[] a = [40, 77, 300, 12, 5, 250], b = [9, 9, 100];
        var want = trainer.Rewards([a, b], 2);

        string adapterPath = TestPaths.TempFile("reward-adapter.gguf"), headPath = TestPaths.TempFile("reward-head.gguf");
        File.Delete(headPath);
        m.Lora!.Write(adapterPath, m.LoraParameters);
        head.WriteHead(headPath, m.Lora, m.LoraParameters);
        var (read, weights) = ClassifierOptions.ReadHead(headPath, spec.Dim);
        Assert.Equal((ClassifierObjective.BradleyTerry, true, 1), (read.Objective, read.IsReward, read.Labels.Length));
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Kv = KvFormat.F32, Loras = [(LoraAdapter.Load(adapterPath, model), 1f)] });
        float ra = RewardModel.Score(ctx, [1, .. a], read, weights), rb = RewardModel.Score(ctx, [1, .. b], read, weights);
        output.WriteLine($"trainer {want[0]:F5} {want[1]:F5}, engine {ra:F5} {rb:F5}");
        Assert.True(Math.Abs(ra - want[0]) < 1e-4 && Math.Abs(rb - want[1]) < 1e-4, $"engine {ra}, {rb} vs trainer {want[0]}, {want[1]}");
        Assert.NotEqual(ra, rb);
        // A labels head is not a reward model.
        var labels = new ClassifierOptions { Labels = ["x", "y"] };
        Assert.Throws<CriaException>(() => RewardModel.Score(ctx, [1, .. a], labels, new float[2 * spec.Dim]));
    }

    [Fact]
    public void The_contrastive_reward_is_the_difference_of_response_log_probabilities()
    {
        // Σ log p(y | x) over the response, checked against one forward pass per response token (the prefix alone, the
        // last row's log-softmax at the next token); CDR = strong − weak, 0 for a model against itself.
        var strongPath = LogitsAgreementTests.ModelFile("cdr-strong", new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, Seed = 21 });
        var weakPath = LogitsAgreementTests.ModelFile("cdr-weak", new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, Seed = 22 });
        using var strong = LlamaModel.Open(strongPath);
        using var weak = LlamaModel.Open(weakPath);
        using var sc = new InferenceContext(strong, new ContextOptions { ContextSize = 64, Threads = 2, Kv = KvFormat.F32 });
        using var wc = new InferenceContext(weak, new ContextOptions { ContextSize = 64, Threads = 2, Kv = KvFormat.F32 });
        int[] prompt = [1, 50, 60, 70], response = [80, 90, 5, 200, 17];
        double Manual(InferenceContext c)
        {
            double s = 0;
            for (int j = 0; j < response.Length; j++)
            {
                int[] prefix = [.. prompt, .. response[..j]];
                c.Cache.Remove(3);
                var batch = new Batch(prefix.Length);
                batch.AddSequence(prefix, 0, 3);
                c.Decode(batch);
                var l = c.Logits(batch.Count - 1);
                s += l[response[j]] - Cria.Kernels.Ops.LogSumExp(l);
            }
            c.Cache.Remove(3);
            return s;
        }
        double ls = RewardModel.ResponseLogProb(sc, prompt, response), lw = RewardModel.ResponseLogProb(wc, prompt, response);
        output.WriteLine($"log p strong {ls:F6} (manual {Manual(sc):F6}), weak {lw:F6} (manual {Manual(wc):F6})");
        Assert.Equal(Manual(sc), ls, 4);
        Assert.Equal(Manual(wc), lw, 4);
        Assert.True(ls < 0 && lw < 0);
        Assert.Equal(ls - lw, RewardModel.Contrastive(sc, wc, prompt, response), 10);
        Assert.Equal(0, RewardModel.Contrastive(sc, sc, prompt, response));
        Assert.Equal(0, sc.Cache.Length(0));
        Assert.Throws<CriaException>(() => RewardModel.ResponseLogProb(sc, prompt, []));
        Assert.Throws<CriaException>(() => RewardModel.ResponseLogProb(sc, [], response));
        Assert.Throws<CriaException>(() => RewardModel.ResponseLogProb(sc, prompt, new int[70]));
    }

    [Fact]
    public void Bad_reward_settings_are_refused()
    {
        Assert.Throws<CriaException>(() => new ClassifierOptions { Labels = ["a", "b"], Objective = ClassifierObjective.BradleyTerry }.Validate());
        Assert.Throws<CriaException>(() => new ClassifierOptions { Labels = ["a"] }.Validate());
        Assert.Throws<CriaException>(() => ClassifierOptions.ParseObjective("ranking"));
        ClassifierOptions.Reward(ClassifierObjective.Regression).Validate();
        using var odd = new LlamaTrainingModel(ClassifierTests.Shape, 3, 6, 1, new LoraOptions { Rank = 2, Alpha = 4f }, ClassifierOptions.Reward(ClassifierObjective.BradleyTerry));
        Assert.Throws<CriaException>(() => odd.PairwiseRewardForwardBackward([1f], [0f], 1f));
        Assert.Throws<InvalidOperationException>(() => odd.RegressionRewardForwardBackward([1f, 2f, 3f], 1f));
        Assert.Throws<InvalidOperationException>(() => odd.ClassifierForwardBackward([0, 0, 0], 1f));
    }
}
