using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// LS-LLaMA / LS-unLLaMA classifiers: the loss and every adapter and head gradient against central differences of a
/// double-precision reference (merged LoRA weights, pooling over each sequence's tokens, causal or bidirectional
/// attention over them); padding that can never be read; the causal last-token classifier equal to the generation
/// engine's final hidden state under the same adapter; a learnable task learned; files and refusals.
/// </summary>
public sealed class ClassifierTests(ITestOutputHelper output)
{
    const double H = 1e-6;
    internal static readonly LlamaShape Shape = new() { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };

    internal static void Fill(LlamaTrainingModel m, Random rng)
    {
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        foreach (var t in m.Lora!.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.4);
    }

    /// <summary>A model for a gradient check: <see cref="Shape"/>, <paramref name="B"/> rows of <paramref name="T"/>,
    /// LoRA rank 3 (α 5) on every projection plus the head, parameters from <see cref="Fill"/>, random tokens (returned)
    /// and <paramref name="lengths"/> in place.</summary>
    internal static LlamaTrainingModel GradientModel(ClassifierOptions head, int B, int T, int[] lengths, int seed, out int[] tokens)
    {
        var m = new LlamaTrainingModel(Shape, B, T, 2, new LoraOptions { Rank = 3, Alpha = 5f, Targets = LoraTarget.All }, head);
        var rng = new Random(seed);
        Fill(m, rng);
        tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(Shape.VocabSize)).ToArray();
        tokens.CopyTo(m.Tokens); lengths.CopyTo(m.SequenceLengths);
        return m;
    }

    /// <summary>Class logits [B, T, C] of the reference forward at every position: the head on each final hidden state.</summary>
    internal static double[] ReferenceTokenLogits(LlamaTrainingModel m, double[] p, double[] ad, int[] tokens, int[] lengths)
    {
        var c = m.Classifier!;
        int N = m.BatchSize * m.SeqLen, D = m.Shape.Dim, C = c.Labels.Length;
        var h = Reference.Hidden(m.Layout, Reference.MergeLora(m.Layout, m.Lora!, p, ad), tokens, m.BatchSize, m.SeqLen, c.Bidirectional ? lengths : null);
        var z = new double[N * C];
        for (int row = 0; row < N; row++)
            for (int j = 0; j < C; j++)
            {
                double s = 0;
                for (int i = 0; i < D; i++) s += h[row * D + i] * ad[m.Lora!.Head + j * D + i];
                z[row * C + j] = s;
            }
        return z;
    }

    /// <summary>Pooled class logits [B, C] of the reference forward.</summary>
    internal static double[] ReferencePooled(LlamaTrainingModel m, double[] p, double[] ad, int[] tokens, int[] lengths)
    {
        var c = m.Classifier!;
        int B = m.BatchSize, T = m.SeqLen, C = c.Labels.Length;
        var z = ReferenceTokenLogits(m, p, ad, tokens, lengths);
        var pooled = new double[B * C];
        for (int b = 0; b < B; b++)
        {
            int n = lengths[b];
            for (int j = 0; j < C; j++)
            {
                if (c.Pooling == ClassifierPooling.Max)
                {
                    double best = double.NegativeInfinity;
                    for (int t = 0; t < n; t++) best = Math.Max(best, z[(b * T + t) * C + j]);
                    pooled[b * C + j] = best;
                    continue;
                }
                for (int t = 0; t < T; t++)
                {
                    double w = c.Pooling == ClassifierPooling.Last ? (t == n - 1 ? 1 : 0) : (t < n ? 1.0 / n : 0);
                    if (w != 0) pooled[b * C + j] += w * z[(b * T + t) * C + j];
                }
            }
        }
        return pooled;
    }

    /// <summary>The worst, over the adapter and head tensors, of ‖analytic − numeric‖ / ‖numeric‖ for the gradient in
    /// <see cref="LlamaTrainingModel.LoraGradients"/>, the numeric one by central differences (step H) of
    /// <paramref name="loss"/>, which reads the adapter and head values from <paramref name="a"/>.</summary>
    internal static double WorstLoraGradientError(LlamaTrainingModel m, double[] a, Func<double> loss)
    {
        double worst = 0;
        foreach (var t in m.Lora!.Tensors)
        {
            double d = 0, n = 0;
            for (int i = 0; i < t.Count; i++)
            {
                long j = t.Offset + i;
                double keep = a[j];
                a[j] = keep + H; double lp = loss();
                a[j] = keep - H; double lm = loss();
                a[j] = keep;
                double num = (lp - lm) / (2 * H);
                d += Math.Pow(m.LoraGradients[j] - num, 2); n += num * num;
            }
            worst = Math.Max(worst, Math.Sqrt(d) / Math.Max(Math.Sqrt(n), 1e-30));
        }
        return worst;
    }

    static double ReferenceLoss(LlamaTrainingModel m, double[] p, double[] ad, int[] tokens, int[] lengths, int[] labels) =>
        Reference.CrossEntropy(ReferencePooled(m, p, ad, tokens, lengths), labels, m.Classifier!.Labels.Length);

    [Theory]
    [InlineData("last")]
    [InlineData("mean")]
    [InlineData("bi-mean")]
    [InlineData("bi-last")]
    [InlineData("max")]
    [InlineData("bi-max")]
    public void Loss_and_gradients_agree_with_finite_differences(string mode)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var clf = new ClassifierOptions { Labels = ["a", "b", "c"], Pooling = pooling, Bidirectional = bi };
        int B = 3, T = 6;
        int[] lengths = [6, 4, 2], labels = [2, 0, 1];
        using var m = GradientModel(clf, B, T, lengths, seed: 31, out var tokens);
        m.ZeroGradients();
        var (lossSum, _) = m.ClassifierForwardBackward(labels, 1f / B);
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var a = m.LoraParameters.Select(v => (double)v).ToArray();
        double refLoss = ReferenceLoss(m, p, a, tokens, lengths, labels);
        output.WriteLine($"{mode}: loss {lossSum / B:F6}, reference {refLoss:F6}");
        Assert.True(Math.Abs(lossSum / B - refLoss) < 1e-5, $"loss {lossSum / B} vs reference {refLoss}");
        double worst = WorstLoraGradientError(m, a, () => ReferenceLoss(m, p, a, tokens, lengths, labels));
        output.WriteLine($"{mode}: worst relative gradient error over {m.Lora!.Tensors.Length} tensors (adapters and head) {worst:E2}");
        Assert.True(worst < 1e-4, $"relative gradient error {worst}");
    }

    /// <summary>What follows a sequence's last token is never read: the pooled logits do not change, bit for bit, when
    /// the padding tokens change, and equal (to rounding) those of a model whose rows are exactly the sequence long.</summary>
    [Theory]
    [InlineData("bi-mean")]
    [InlineData("last")]
    public void Padding_is_never_read(string mode)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var clf = new ClassifierOptions { Labels = ["a", "b"], Pooling = pooling, Bidirectional = bi };
        var lora = new LoraOptions { Rank = 2, Alpha = 4f };
        var rng = new Random(5);
        var seq = Enumerable.Range(0, 5).Select(_ => rng.Next(Shape.VocabSize)).ToArray();
        float[] Pooled(int T, int padToken)
        {
            using var m = new LlamaTrainingModel(Shape, 1, T, 2, lora, clf);
            Fill(m, new Random(9));
            m.Tokens.Fill(padToken);
            seq.CopyTo(m.Tokens);
            m.SequenceLengths[0] = seq.Length;
            m.Forward();
            return m.ClassLogits(0).ToArray();
        }
        var a = Pooled(8, 0); var b = Pooled(8, 17); var exact = Pooled(5, 0);
        Assert.Equal(a, b);
        for (int j = 0; j < a.Length; j++) Assert.True(Math.Abs(a[j] - exact[j]) < 1e-5, $"label {j}: padded {a[j]} vs exact {exact[j]}");
    }

    /// <summary>A causal classifier run through the generation engine (<see cref="Classifier.Logits"/>: the adapter
    /// applied at run time, the kept final hidden states pooled, then the head) gives the training forward's pooled
    /// logits; a bidirectional one is refused there.</summary>
    [Theory]
    [InlineData("last")]
    [InlineData("mean")]
    [InlineData("max")]
    public void The_generation_engine_gives_the_training_forwards_class_logits(string mode)
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 384, Seed = 12 };
        var path = LogitsAgreementTests.ModelFile("clf-base", spec);
        var imported = GgufImport.Read(path);
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var clf = new ClassifierOptions { Labels = ["x", "y", "z"], Pooling = pooling, Bidirectional = bi };
        var lora = new LoraOptions { Rank = 4, Alpha = 8f };
        int T = 10;
        using var m = new LlamaTrainingModel(imported.Shape with { ContextLength = T }, 1, T, 2, lora, clf);
        imported.Parameters.CopyTo(m.Parameters, 0);
        var rng = new Random(3);
        for (int i = 0; i < m.LoraParameters.Length; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.2);
        var tokens = new[] { 1, 40, 77, 300, 12, 5, 250 };
        m.Tokens.Fill(2);
        tokens.CopyTo(m.Tokens);
        m.SequenceLengths[0] = tokens.Length;
        m.Forward();
        var z = m.ClassLogits(0).ToArray();

        string adapter = TestPaths.TempFile($"clf-adapter-{mode}.gguf");
        m.Lora!.Write(adapter, m.LoraParameters);
        var head = m.LoraParameters.AsSpan((int)m.Lora.Head, 3 * spec.Dim).ToArray();
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Kv = KvFormat.F32, Loras = [(LoraAdapter.Load(adapter, model), 1f)] });
        var e = Classifier.Logits(ctx, tokens, clf, head);
        double worst = e.Select((v, j) => Math.Abs(v - z[j])).Max();
        output.WriteLine($"{mode}: training forward vs engine: max |Δ| {worst:E2} (logits {string.Join(", ", z.Select(v => v.ToString("F3")))})");
        Assert.True(worst < 1e-4, $"max |Δ| {worst}");
        Assert.Equal(0, ctx.Cache.Length(0)); // the sequence is cleared
        Assert.Contains("causal", Assert.Throws<CriaException>(() => Classifier.Logits(ctx, tokens, clf with { Bidirectional = true }, head)).Message);
    }

    /// <summary>A task only the whole sequence answers — does token 7 occur anywhere? — is learned from 400 random
    /// sequences by adapters and a head on a random backbone: held-out accuracy ≥ 90 % (chance 50 %) in both the
    /// causal last-token and the bidirectional mean modes.</summary>
    [Theory]
    [InlineData("last")]
    [InlineData("bi-mean")]
    public void A_learnable_task_is_learned(string mode)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var shape = new LlamaShape { VocabSize = 32, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 16 };
        var rng = new Random(2);
        LabelledExample Example()
        {
            int n = rng.Next(4, 15);
            var t = Enumerable.Range(0, n).Select(_ => 3 + rng.Next(28)).Where(x => x != 7).ToArray();
            bool has = rng.Next(2) == 1;
            if (has) t[rng.Next(t.Length)] = 7;
            return new LabelledExample(t, has ? 1 : 0);
        }
        var train = Enumerable.Range(0, 400).Select(_ => Example()).ToList();
        var held = Enumerable.Range(0, 200).Select(_ => Example()).ToList();
        // lr 5e-3: at 1e-2 the last-token mode sat on a plateau for some seeds and float orders (82–100 % over seeds
        // 1–6 with and without AVX2); at 5e-3 it reached 98–100 % in every one of those runs (bi-mean 98.5–100 %).
        var options = new TrainingOptions { BatchSize = 8, Steps = 300, WarmupSteps = 20, LearningRate = 5e-3f, WeightDecay = 0, Threads = 2, Seed = 4 };
        using var trainer = new Trainer(shape, options, [], 1, seqLen: 16, lora: new LoraOptions { Rank = 4, Alpha = 8f },
            classifier: new ClassifierOptions { Labels = ["no", "yes"], Pooling = pooling, Bidirectional = bi });
        double Accuracy() { var (pred, _) = trainer.ClassifierEvaluate(held, 0); return pred.Where((p, i) => p == held[i].Label).Count() / (double)held.Count; }
        double before = Accuracy();
        while (trainer.Step < options.Steps) trainer.ClassifierStep(train, 0);
        double after = Accuracy();
        output.WriteLine($"{mode}: held-out accuracy {before:P1} → {after:P1}");
        Assert.True(after >= 0.9, $"{mode}: accuracy {after:P1} after training");
    }

    /// <summary>The head file round-trips its labels, mode and weights; bad options and files are refused by name.</summary>
    [Fact]
    public void Head_files_round_trip_and_bad_input_is_refused()
    {
        var clf = new ClassifierOptions { Labels = ["neg", "pos", "mixed"], Pooling = ClassifierPooling.Mean, Bidirectional = true };
        var lay = new LoraLayout(Shape, new LoraOptions { Rank = 2 }, 3);
        var p = new float[lay.Count];
        for (int i = 0; i < p.Length; i++) p[i] = i * 0.001f;
        string head = TestPaths.TempFile("clf-head.gguf"), adapter = TestPaths.TempFile("clf-head-adapter.gguf");
        clf.WriteHead(head, lay, p);
        lay.Write(adapter, p);
        var (back, w) = ClassifierOptions.ReadHead(head, Shape.Dim);
        Assert.Equal(clf.Labels, back.Labels);
        Assert.Equal("bi-mean", back.ModeName);
        Assert.Equal(p.AsSpan((int)lay.Head, 3 * Shape.Dim).ToArray(), w);

        // The adapter, read back through the inference reader (LoraAdapter.Load checks it against a model), gives a
        // training layout with its rank and targets and the same parameters.
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 384, Seed = 12 };
        var basePath = LogitsAgreementTests.ModelFile("clf-base", spec);
        using var model = LlamaModel.Open(basePath);
        var shape = GgufImport.Read(basePath).Shape;
        var lay2 = new LoraLayout(shape, new LoraOptions { Rank = 2, Alpha = 3f, Targets = LoraTarget.AttnQ | LoraTarget.AttnV | LoraTarget.FfnDown }, 3);
        var p2 = new float[lay2.Count];
        for (int i = 0; i < p2.Length; i++) p2[i] = i * 1e-4f;
        string adapter2 = TestPaths.TempFile("clf-head-adapter2.gguf");
        lay2.Write(adapter2, p2);
        var loaded = LoraAdapter.Load(adapter2, model);
        var opts = LoraLayout.OptionsOf(loaded);
        Assert.Equal((2, 3f, LoraTarget.AttnQ | LoraTarget.AttnV | LoraTarget.FfnDown), (opts.Rank, opts.Alpha, opts.Targets));
        var q = new float[lay2.Count];
        new LoraLayout(shape, opts, 3).Load(loaded, q);
        for (int i = 0; i < lay2.Tensors.Length - 1; i++)
            Assert.Equal(p2.AsSpan((int)lay2.Tensors[i].Offset, (int)lay2.Tensors[i].Count).ToArray(), q.AsSpan((int)lay2.Tensors[i].Offset, (int)lay2.Tensors[i].Count).ToArray());
        Assert.Contains("no rank-2 adapter for blk.0.attn_k.weight", Assert.Throws<CriaException>(() =>
            new LoraLayout(shape, opts with { Targets = LoraTarget.All }, 3).Load(loaded, new float[new LoraLayout(shape, opts with { Targets = LoraTarget.All }, 3).Count])).Message);

        Assert.Contains("cls.output.weight must be F32 [17, 3]", Assert.Throws<CriaException>(() => ClassifierOptions.ReadHead(head, Shape.Dim + 1)).Message);
        Assert.Contains("not a classifier head", Assert.Throws<CriaException>(() => ClassifierOptions.ReadHead(adapter, Shape.Dim)).Message);
        Assert.Contains("unknown classifier mode", Assert.Throws<CriaException>(() => ClassifierOptions.ParseMode("min")).Message);
        Assert.Contains("2..4096 labels", Assert.Throws<CriaException>(() => new ClassifierOptions { Labels = ["only"] }.Validate()).Message);
        Assert.Contains("distinct", Assert.Throws<CriaException>(() => new ClassifierOptions { Labels = ["a", "a"] }.Validate()).Message);
        Assert.Contains("give a LoRA rank", Assert.Throws<CriaException>(() => new LlamaTrainingModel(Shape, 1, 4, 1, null, clf)).Message);
        using var m = new LlamaTrainingModel(Shape, 2, 4, 1, new LoraOptions { Rank = 2 }, clf);
        Assert.Contains("outside 0..2", Assert.Throws<CriaException>(() => m.ClassifierForwardBackward([0, 3], 1f)).Message);
        m.SequenceLengths[1] = 0;
        Assert.Contains("length 0", Assert.Throws<CriaException>(() => m.ClassifierForwardBackward([0, 1], 1f)).Message);
        Assert.Throws<InvalidOperationException>(() => m.ForwardBackward(1f)); // a classifier has no language-model head
    }
}
