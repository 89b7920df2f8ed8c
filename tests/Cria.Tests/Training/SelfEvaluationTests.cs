using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Capability-aware self-evaluation: the format (question, answers, the cut), P(No) of the engine equal to the
/// training forward's through the written adapter, the labels' semantics (a win or a tie is "No"), a learnable
/// self-evaluation learned and calibrated, and the refusals.
/// </summary>
public sealed class SelfEvaluationTests(ITestOutputHelper output)
{
    [Fact]
    public void The_format_asks_the_papers_question_and_cuts_only_the_response()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var tok = m.Tokenizer;
        var f = SelfEvalFormat.Create(tok);
        Assert.Equal(SelfEvalFormat.DefaultQuestion, tok.Decode(f.Question));
        Assert.Equal(tok.Encode(SelfEvalFormat.DefaultQuestion + "Yes.", addBos: false)[f.Question.Length], f.Yes);
        Assert.Equal(tok.Encode(SelfEvalFormat.DefaultQuestion + "No.", addBos: false)[f.Question.Length], f.No);
        Assert.StartsWith("N", tok.Decode([f.No]));
        Assert.StartsWith("Y", tok.Decode([f.Yes]));
        Assert.NotEqual(f.Yes, f.No);
        int q = f.Question.Length;
        int[] prompt = [1, 2], response = [3, 4, 5, 6];
        Assert.Equal([1, 2, 3, 4, 5, 6, .. f.Question], f.Context(prompt, response, 100));
        Assert.Equal([1, 2, 3, .. f.Question], f.Context(prompt, response, 3 + q));
        Assert.Equal([1, 2, .. f.Question], f.Context(prompt, response, 2 + q));
        Assert.Throws<CriaException>(() => f.Context(prompt, response, 1 + q));
        // P(No) is the softmax over the two answers.
        var logits = new float[m.Config.VocabSize];
        logits[f.No] = 2f; logits[f.Yes] = 1f; logits[0] = 50f;
        Assert.Equal(1 / (1 + Math.Exp(-1.0)), f.PNo(logits), 12);
        Assert.Throws<CriaException>(() => SelfEvalFormat.Create(tok, yes: "No", no: "No"));
        Assert.Throws<CriaException>(() => SelfEvalFormat.Create(tok, question: ""));
    }

    [Fact]
    public void The_engine_reads_the_P_No_the_training_forward_computes_through_the_written_adapter()
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 384, Seed = 12 };
        var path = LogitsAgreementTests.ModelFile("clf-base", spec);
        var imported = GgufImport.Read(path);
        var format = new SelfEvalFormat([300, 301, 302], Yes: 310, No: 311);
        int T = 12;
        var options = new TrainingOptions { BatchSize = 2, Steps = 1, WarmupSteps = 0, Threads = 2 };
        using var trainer = new Trainer(imported.Shape with { ContextLength = T }, options, [], 1, seqLen: T, lora: new LoraOptions { Rank = 4, Alpha = 8f });
        trainer.SetParameters(imported.Parameters);
        var m = trainer.Model;
        var rng = new Random(3);
        for (int i = 0; i < m.LoraParameters.Length; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.2);
        // the second response is cut: 3 prompt + 3 question tokens leave T − 2 − 6 = 4 of its 8
        int[] prompt = [40, 77], a = [300, 12, 5], b = [9, 9, 100, 4, 5, 6, 7, 8];
        var want = trainer.SelfEvalPNo([(prompt, a), ([.. prompt, 50], b)], format);

        string adapterPath = TestPaths.TempFile("self-eval-adapter.gguf");
        m.Lora!.Write(adapterPath, m.LoraParameters);
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Kv = KvFormat.F32, Loras = [(LoraAdapter.Load(adapterPath, model), 1f)] });
        double pa = SelfEvaluation.PNo(ctx, format, [1, .. prompt], a, T - 1), pb = SelfEvaluation.PNo(ctx, format, [1, .. prompt, 50], b, T - 1);
        output.WriteLine($"trainer {want[0]:F6} {want[1]:F6}, engine {pa:F6} {pb:F6}");
        Assert.True(Math.Abs(pa - want[0]) < 1e-5 && Math.Abs(pb - want[1]) < 1e-5, $"engine {pa}, {pb} vs trainer {want[0]}, {want[1]}");
        Assert.NotEqual(pa, pb);
        // Cut to the same length, the whole response and its first four tokens score the same.
        Assert.Equal(pb, SelfEvaluation.PNo(ctx, format, [1, .. prompt, 50], b[..4], T - 1), 12);
        Assert.Throws<CriaException>(() => SelfEvaluation.PNo(ctx, format, [1, .. prompt], a, 65));
        Assert.Throws<CriaException>(() => SelfEvaluation.PNo(ctx, format, [], a, T - 1));
    }

    // A tiny shape whose texts use tokens 3..30; the question is [33, 34], "Yes" 35, "No" 36.
    static readonly LlamaShape Tiny = new() { VocabSize = 40, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 16 };
    static readonly SelfEvalFormat TinyFormat = new([33, 34], Yes: 35, No: 36);

    /// <summary>A trainer of LoRA adapters on a random tiny base. The base's output norm gain is raised to 8: with the
    /// initial 0.02-scale output head and a gain of 1, no hidden state reaches logits more than about ±1 apart, so a
    /// frozen head could not put the answers' mass where the labels ask (a trained model's head can).</summary>
    static Trainer TinyTrainer(int steps, float lr)
    {
        var options = new TrainingOptions { BatchSize = 8, Steps = steps, WarmupSteps = 10, LearningRate = lr, WeightDecay = 0, Threads = 2, Seed = 4 };
        var trainer = new Trainer(Tiny, options, [], 1, seqLen: 16, lora: new LoraOptions { Rank = 4, Alpha = 8f });
        trainer.Model.Parameters.AsSpan((int)trainer.Model.Layout.OutputNorm, Tiny.Dim).Fill(8f);
        return trainer;
    }

    [Fact]
    public void A_win_or_a_tie_is_No_and_a_loss_is_Yes()
    {
        // Two responses per group: the better one wins against the other (target "No"), the worse loses ("Yes"), and
        // either of a tie ties ("No").
        int[] p = [3, 4], hi = [5, 6, 7], lo = [8, 9, 10], t1 = [11, 12], t2 = [13, 14];
        var groups = new List<SelfEvalGroup> { new(p, [hi, lo], [2f, 1f]), new(p, [t1, t2], [0.5f, 0.5f]) };
        Assert.Equal(1.0, groups[0].WinOrTieRate(0)); Assert.Equal(0.0, groups[0].WinOrTieRate(1)); Assert.Equal(1.0, groups[1].WinOrTieRate(1));
        using var trainer = TinyTrainer(100, 1e-2f);
        while (trainer.Step < trainer.Options.Steps) trainer.SelfEvalStep(groups, TinyFormat);
        var pNo = trainer.SelfEvalPNo([(p, hi), (p, lo), (p, t1), (p, t2)], TinyFormat);
        output.WriteLine($"P(No): winner {pNo[0]:F3}, loser {pNo[1]:F3}, ties {pNo[2]:F3} {pNo[3]:F3}");
        Assert.True(pNo[0] > 0.9 && pNo[1] < 0.1 && pNo[2] > 0.9 && pNo[3] > 0.9, string.Join(", ", pNo));
    }

    /// <summary>A row with a second target and weight has the gradient of w·CE(target) + w2·CE(second target): the same,
    /// parameter for parameter, as two rows of the same text with one target each.</summary>
    [Fact]
    public void A_soft_target_row_has_the_gradient_of_two_weighted_rows()
    {
        var lora = new LoraOptions { Rank = 3, Alpha = 6f };
        int T = 6;
        using var one = new LlamaTrainingModel(Tiny, 2, T, 2, lora);
        using var two = new LlamaTrainingModel(Tiny, 4, T, 2, lora);
        var rng = new TrainingRng(7);
        one.Initialize(ref rng);
        one.Lora!.Initialize(one.LoraParameters, ref rng);
        for (int i = 0; i < one.LoraParameters.Length; i++) one.LoraParameters[i] += 0.05f * rng.NextGaussian();   // B ≠ 0
        one.Parameters.CopyTo(two.Parameters, 0);
        one.LoraParameters.CopyTo(two.LoraParameters, 0);
        var r = new Random(3);
        var tokens = Enumerable.Range(0, 2 * T).Select(_ => r.Next(Tiny.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, 2 * T).Select(_ => r.Next(Tiny.VocabSize)).ToArray();
        var second = Enumerable.Range(0, 2 * T).Select(_ => r.Next(Tiny.VocabSize)).ToArray();
        var w = Enumerable.Range(0, 2 * T).Select(_ => (float)r.NextDouble()).ToArray();
        var w2 = Enumerable.Range(0, 2 * T).Select(i => i % 3 == 0 ? 0f : (float)r.NextDouble()).ToArray();
        tokens.CopyTo(one.Tokens); targets.CopyTo(one.Targets); w.CopyTo(one.LossWeights); second.CopyTo(one.SecondTargets); w2.CopyTo(one.SecondLossWeights);
        for (int s = 0; s < 2; s++)   // sequence s twice: first with the first targets, then with the second
        {
            tokens.AsSpan(s * T, T).CopyTo(two.Tokens[(2 * s * T)..]); tokens.AsSpan(s * T, T).CopyTo(two.Tokens[((2 * s + 1) * T)..]);
            targets.AsSpan(s * T, T).CopyTo(two.Targets[(2 * s * T)..]); second.AsSpan(s * T, T).CopyTo(two.Targets[((2 * s + 1) * T)..]);
            w.AsSpan(s * T, T).CopyTo(two.LossWeights[(2 * s * T)..]); w2.AsSpan(s * T, T).CopyTo(two.LossWeights[((2 * s + 1) * T)..]);
        }
        one.ZeroGradients(); one.Forward(); one.BackwardWeighted(0.5f);
        two.ZeroGradients(); two.Forward(); two.BackwardWeighted(0.5f);
        double d = 0, n = 0;
        for (int i = 0; i < one.LoraGradients.Length; i++) { d += Math.Pow(one.LoraGradients[i] - two.LoraGradients[i], 2); n += Math.Pow(two.LoraGradients[i], 2); }
        output.WriteLine($"relative difference of the adapter gradients {Math.Sqrt(d / n):E2} (norm {Math.Sqrt(n):E2})");
        Assert.True(n > 0 && Math.Sqrt(d / n) < 1e-5, $"relative difference {Math.Sqrt(d / n)}");
    }

    /// <summary>With every response cut to a random prefix, a prefix carries its whole response's target: the winner's
    /// first token alone trains toward "No", the loser's toward "Yes".</summary>
    [Fact]
    public void A_partial_response_carries_its_whole_responses_target()
    {
        int[] p = [3, 4], hi = [5, 6, 7, 8], lo = [9, 10, 11, 12];
        var groups = new List<SelfEvalGroup> { new(p, [hi, lo], [2f, 1f]) };
        using var trainer = TinyTrainer(100, 1e-2f);
        while (trainer.Step < trainer.Options.Steps) trainer.SelfEvalStep(groups, TinyFormat, partialFraction: 1);
        var pNo = trainer.SelfEvalPNo([(p, hi[..1]), (p, lo[..1]), (p, hi[..3]), (p, lo[..3])], TinyFormat);
        output.WriteLine($"P(No) of prefixes: winner {pNo[0]:F3} {pNo[2]:F3}, loser {pNo[1]:F3} {pNo[3]:F3}");
        Assert.True(pNo[0] > 0.9 && pNo[2] > 0.9 && pNo[1] < 0.1 && pNo[3] < 0.1, string.Join(", ", pNo));
        Assert.Throws<CriaException>(() => trainer.SelfEvalStep(groups, TinyFormat, partialFraction: 1.5));
    }

    /// <summary>
    /// "More sevens is better": groups of four responses with 0–3 sevens, rewarded by their count. After training, P(No)
    /// must order ≥ 85 % of held-out same-prompt pairs as their rewards (chance 50 %), and be calibrated: its Brier score
    /// against each response's win-or-tie rate must close ≥ 75 % of the gap between the constant predictor's and the best
    /// any function of the response can reach (the mean rate of responses with as many sevens).
    /// </summary>
    [Fact]
    public void A_learnable_self_evaluation_is_learned_and_calibrated()
    {
        var rng = new Random(5);
        SelfEvalGroup Group()
        {
            var prompt = Enumerable.Range(0, rng.Next(1, 4)).Select(_ => 3 + rng.Next(28)).ToArray();
            var responses = new int[4][];
            var rewards = new float[4];
            for (int r = 0; r < 4; r++)
            {
                int n = rng.Next(5, 10), k = rng.Next(4);
                var t = Enumerable.Range(0, n).Select(_ => 3 + rng.Next(28)).Where(x => x != 7).ToArray();
                foreach (int i in Enumerable.Range(0, t.Length).OrderBy(_ => rng.Next()).Take(k)) t[i] = 7;
                responses[r] = t; rewards[r] = t.Count(x => x == 7);
            }
            return new SelfEvalGroup(prompt, responses, rewards);
        }
        var train = Enumerable.Range(0, 300).Select(_ => Group()).ToList();
        var held = Enumerable.Range(0, 60).Select(_ => Group()).ToList();
        using var trainer = TinyTrainer(500, 1e-2f);
        // The best any P(No) that sees one response can do: the mean win-or-tie rate of training responses with as many sevens.
        var byCount = train.SelectMany(g => Enumerable.Range(0, 4).Select(i => (K: g.Rewards[i], Rate: g.WinOrTieRate(i))))
            .GroupBy(x => x.K).ToDictionary(x => x.Key, x => x.Average(y => y.Rate));
        double oracle = held.SelectMany(g => Enumerable.Range(0, 4).Select(i => Math.Pow(byCount[g.Rewards[i]] - g.WinOrTieRate(i), 2))).Average();
        (double Ordered, double Brier, double Constant) Measure()
        {
            var p = trainer.SelfEvalPNo(held.SelectMany(g => g.Responses.Select(x => (g.Prompt, x))).ToList(), TinyFormat);
            int ordered = 0, pairs = 0, k = 0;
            double brier = 0, constant = 0;
            var rates = held.SelectMany(g => Enumerable.Range(0, 4).Select(g.WinOrTieRate)).ToArray();
            double mean = rates.Average();
            foreach (var g in held)
            {
                for (int i = 0; i < 4; i++)
                {
                    brier += Math.Pow(p[k + i] - rates[k + i], 2); constant += Math.Pow(mean - rates[k + i], 2);
                    for (int j = i + 1; j < 4; j++)
                        if (g.Rewards[i] != g.Rewards[j]) { pairs++; if (g.Rewards[i] > g.Rewards[j] == p[k + i] > p[k + j]) ordered++; }
                }
                k += 4;
            }
            return ((double)ordered / pairs, brier / k, constant / k);
        }
        var before = Measure();
        double lastLoss = 0;
        while (trainer.Step < trainer.Options.Steps) lastLoss = trainer.SelfEvalStep(train, TinyFormat).Loss;
        var after = Measure();
        output.WriteLine($"held-out pairs ordered {before.Ordered:P1} → {after.Ordered:P1}; Brier {before.Brier:F4} → {after.Brier:F4} (constant {after.Constant:F4}, best possible {oracle:F4}); last loss {lastLoss:F3}");
        Assert.True(after.Ordered >= 0.85, $"ordered {after.Ordered:P1}");
        double closed = (after.Constant - after.Brier) / (after.Constant - oracle);
        Assert.True(closed >= 0.75, $"Brier {after.Brier} closes {closed:P0} of the gap from the constant's {after.Constant} to the best possible {oracle}");
    }

    [Fact]
    public void Bad_groups_and_trainers_are_refused()
    {
        Assert.Throws<CriaException>(() => new SelfEvalGroup([1], [[2]], [1f]).Validate());
        Assert.Throws<CriaException>(() => new SelfEvalGroup([1], [[2], [3]], [1f]).Validate());
        Assert.Throws<CriaException>(() => new SelfEvalGroup([1], [[2], [3]], [1f, float.NaN]).Validate());
        var options = new TrainingOptions { BatchSize = 2, Steps = 1, WarmupSteps = 0, Threads = 1 };
        using var trainer = new Trainer(Tiny, options, [], 1, seqLen: 8, lora: new LoraOptions { Rank = 2, Alpha = 2f });
        Assert.Throws<CriaException>(() => trainer.SelfEvalStep([], TinyFormat));
        Assert.Throws<CriaException>(() => trainer.SelfEvalStep([new SelfEvalGroup([3], [[9], [10]], [1f, 0f])], TinyFormat with { Yes = 40 }));
        Assert.Throws<CriaException>(() => trainer.SelfEvalStep([new SelfEvalGroup([3], [[9], [10]], [1f, 0f])], TinyFormat with { No = -1 }));
        Assert.True(trainer.Model.SecondLossWeights.ToArray().All(w => w == 0), "a refused step leaves no second weights behind");
        // a prompt and the question that leave no room in rows of 8 tokens
        Assert.Throws<CriaException>(() => trainer.SelfEvalStep([new SelfEvalGroup([3, 4, 5, 6, 8], [[9], [10]], [1f, 0f])], TinyFormat));
        using var reward = new Trainer(Tiny, options, [], 1, seqLen: 8, lora: new LoraOptions { Rank = 2, Alpha = 2f }, classifier: ClassifierOptions.Reward(ClassifierObjective.BradleyTerry));
        Assert.Throws<InvalidOperationException>(() => reward.SelfEvalStep([new SelfEvalGroup([3], [[9], [10]], [1f, 0f])], TinyFormat));
    }
}
