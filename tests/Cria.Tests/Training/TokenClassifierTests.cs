using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Token classification (LS-unLLaMA's token task, e.g. NER): the loss and every adapter and head gradient against
/// central differences of the double-precision reference (the head at every scored position, causal or bidirectional
/// attention); a tag that depends on the next token learned by the bidirectional model and not by the causal one;
/// words tagged on their first token; files and refusals.
/// </summary>
public sealed class TokenClassifierTests(ITestOutputHelper output)
{
    static LlamaShape Shape => ClassifierTests.Shape;

    /// <summary>Mean cross-entropy over scored positions of the reference's per-token logits.</summary>
    static double ReferenceLoss(LlamaTrainingModel m, double[] p, double[] ad, int[] tokens, int[] lengths, int[] tags)
    {
        int B = m.BatchSize, T = m.SeqLen, C = m.Classifier!.Labels.Length;
        var z = ClassifierTests.ReferenceTokenLogits(m, p, ad, tokens, lengths);
        double loss = 0; int scored = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < lengths[b]; t++)
            {
                int row = b * T + t, tag = tags[row];
                if (tag < 0) continue;
                var zr = z.AsSpan(row * C, C);
                double max = double.NegativeInfinity, sum = 0;
                foreach (var v in zr) max = Math.Max(max, v);
                foreach (var v in zr) sum += Math.Exp(v - max);
                loss += max + Math.Log(sum) - zr[tag]; scored++;
            }
        return loss / scored;
    }

    [Theory]
    [InlineData("token")]
    [InlineData("bi-token")]
    public void Loss_and_gradients_agree_with_finite_differences(string mode)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var clf = new ClassifierOptions { Labels = ["O", "B", "I"], Pooling = pooling, Bidirectional = bi };
        int B = 3, T = 6;
        int[] lengths = [6, 4, 2];
        // −1: BOS, a later sub-token, padding (positions past a sequence's length carry tags that must be ignored).
        int[] tags = [-1, 0, 1, 2, -1, 0, /**/ -1, 2, 2, 1, 0, 1, /**/ -1, 1, 0, 2, 2, 2];
        using var m = ClassifierTests.GradientModel(clf, B, T, lengths, seed: 31, out var tokens);
        int scored = 0;
        for (int b = 0; b < B; b++) for (int t = 0; t < lengths[b]; t++) if (tags[b * T + t] >= 0) scored++;
        m.ZeroGradients();
        var (lossSum, _, counted) = m.TokenClassifierForwardBackward(tags, 1f / scored);
        Assert.Equal(scored, counted);
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var a = m.LoraParameters.Select(v => (double)v).ToArray();
        double refLoss = ReferenceLoss(m, p, a, tokens, lengths, tags);
        output.WriteLine($"{mode}: loss {lossSum / scored:F6}, reference {refLoss:F6}");
        Assert.True(Math.Abs(lossSum / scored - refLoss) < 1e-5, $"loss {lossSum / scored} vs reference {refLoss}");
        double worst = ClassifierTests.WorstLoraGradientError(m, a, () => ReferenceLoss(m, p, a, tokens, lengths, tags));
        output.WriteLine($"{mode}: worst relative gradient error over {m.Lora!.Tensors.Length} tensors (adapters and head) {worst:E2}");
        Assert.True(worst < 1e-4, $"relative gradient error {worst}");
    }

    /// <summary>Each position is tagged by the class of the token after it (tokens drawn independently): only a model
    /// that sees the next token can do better than chance. The bidirectional model learns it (≥ 80 % of held-out
    /// tokens); the causal one stays near chance (≤ 65 %). A tag of the token itself is learned by both (≥ 90 %). At the
    /// learning rate of 1e-2 first used, the bidirectional run sat on its plateau for some seeds (58.8–100 % over seeds
    /// 1–6 with and without AVX2, 65 % with AVX2 for seed 1); at 5e-3 it gave 82.5–100 % there, the causal 47.6–52.0 %.</summary>
    [Theory]
    [InlineData("bi-token", true, 0.8, 1.0)]
    [InlineData("token", true, 0.0, 0.65)]
    [InlineData("token", false, 0.9, 1.0)]
    public void A_tag_that_depends_on_the_next_token_needs_bidirectional_attention(string mode, bool next, double min, double max)
    {
        var (pooling, bi) = ClassifierOptions.ParseMode(mode);
        var shape = new LlamaShape { VocabSize = 32, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 16 };
        var rng = new Random(2);
        TaggedExample Example()
        {
            int n = rng.Next(4, 15);
            var t = Enumerable.Range(0, n).Select(_ => 3 + rng.Next(28)).ToArray();
            var tags = new int[n];
            for (int i = 0; i < n; i++) tags[i] = next ? (i + 1 < n ? (t[i + 1] < 17 ? 1 : 0) : -1) : (t[i] < 17 ? 1 : 0);
            return new TaggedExample(t, tags);
        }
        var train = Enumerable.Range(0, 400).Select(_ => Example()).ToList();
        var held = Enumerable.Range(0, 200).Select(_ => Example()).ToList();
        var options = new TrainingOptions { BatchSize = 8, Steps = 300, WarmupSteps = 20, LearningRate = 5e-3f, WeightDecay = 0, Threads = 2, Seed = 4 };
        using var trainer = new Trainer(shape, options, [], 1, seqLen: 16, lora: new LoraOptions { Rank = 4, Alpha = 8f },
            classifier: new ClassifierOptions { Labels = ["low", "high"], Pooling = pooling, Bidirectional = bi });
        double Accuracy()
        {
            var (pred, _) = trainer.TokenClassifierEvaluate(held, 0);
            int right = 0, n = 0;
            for (int e = 0; e < held.Count; e++)
                for (int i = 0; i < held[e].Tags.Length; i++)
                {
                    if (held[e].Tags[i] < 0) continue;
                    n++; if (pred[e][i] == held[e].Tags[i]) right++;
                }
            return right / (double)n;
        }
        double before = Accuracy();
        while (trainer.Step < options.Steps) trainer.TokenClassifierStep(train, 0);
        double after = Accuracy();
        output.WriteLine($"{mode}, tag of the {(next ? "next" : "same")} token: held-out token accuracy {before:P1} → {after:P1}");
        Assert.InRange(after, min, max);
    }

    /// <summary>A causal token classifier through the generation engine (<see cref="Classifier.TokenLogits"/>: the
    /// adapter at run time, every position's kept final hidden state times the head) gives the training forward's
    /// logits at every position; a bidirectional one and a pooled head are refused there.</summary>
    [Fact]
    public void The_generation_engine_gives_the_training_forwards_token_logits()
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 384, Seed = 12 };
        var path = LogitsAgreementTests.ModelFile("clf-base", spec);
        var imported = GgufImport.Read(path);
        var clf = new ClassifierOptions { Labels = ["O", "B", "I"], Pooling = ClassifierPooling.Token };
        int T = 10;
        using var m = new LlamaTrainingModel(imported.Shape with { ContextLength = T }, 1, T, 2, new LoraOptions { Rank = 4, Alpha = 8f }, clf);
        imported.Parameters.CopyTo(m.Parameters, 0);
        var rng = new Random(3);
        for (int i = 0; i < m.LoraParameters.Length; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.2);
        var tokens = new[] { 1, 40, 77, 300, 12, 5, 250 };
        m.Tokens.Fill(2);
        tokens.CopyTo(m.Tokens);
        m.SequenceLengths[0] = tokens.Length;
        m.Forward();

        string adapter = TestPaths.TempFile("tagger-adapter.gguf");
        m.Lora!.Write(adapter, m.LoraParameters);
        var head = m.LoraParameters.AsSpan((int)m.Lora.Head, 3 * spec.Dim).ToArray();
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions
        {
            ContextSize = 64, Kv = KvFormat.F32, Loras = [(LoraAdapter.Load(adapter, model), 1f)],
        });
        var e = Classifier.TokenLogits(ctx, tokens, clf, head);
        double worst = 0;
        for (int t = 0; t < tokens.Length; t++)
        {
            var z = m.TokenClassLogits(0, t);
            for (int j = 0; j < 3; j++) worst = Math.Max(worst, Math.Abs(e[t * 3 + j] - z[j]));
        }
        output.WriteLine($"training forward vs engine, every position: max |Δ| {worst:E2}");
        Assert.True(worst < 1e-4, $"max |Δ| {worst}");
        Assert.Equal(0, ctx.Cache.Length(0));
        Assert.Contains("causal", Assert.Throws<CriaException>(() => Classifier.TokenLogits(ctx, tokens, clf with { Bidirectional = true }, head)).Message);
        Assert.Contains("pools", Assert.Throws<CriaException>(() => Classifier.TokenLogits(ctx, tokens, clf with { Pooling = ClassifierPooling.Last }, head)).Message);
        Assert.Contains("Classifier.TokenLogits", Assert.Throws<CriaException>(() => Classifier.Logits(ctx, tokens, clf, head)).Message);
    }

    /// <summary>Entity-level scores as seqeval's README example gives them (F1 0.50), entity spans under BIO and IOB1,
    /// and word-level scores counted by hand.</summary>
    [Fact]
    public void Entity_and_word_scores_count_what_conlleval_counts()
    {
        string[][] gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]];
        string[][] pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]];
        var s = TagScores.EntityScores(gold, pred);
        Assert.Equal((1, 2, 2), (s.TruePositives, s.Predicted, s.Gold));
        Assert.Equal(0.5, s.F1, 12);
        Assert.Equal([(0, 2, "PER"), (3, 4, "LOC")], TagScores.Entities(["I-PER", "I-PER", "O", "I-LOC"]));   // IOB1: I- opens
        Assert.Equal([(0, 1, "PER"), (1, 2, "LOC")], TagScores.Entities(["B-PER", "I-LOC"]));                  // a type change opens
        Assert.Equal([(0, 1, "PER"), (1, 3, "PER")], TagScores.Entities(["B-PER", "B-PER", "I-PER"]));         // B- opens
        Assert.Empty(TagScores.Entities(["O", "O"]));
        Assert.True(TagScores.IsBio(["O", "B-PER", "I-PER"]));
        Assert.False(TagScores.IsBio(["O", "SPEAKER"]));
        // Words: outside = 0; gold [0 1 2 0], predicted [0 1 1 1] → 2 of 4 right; tagged words: tp 1, predicted 3, gold 2.
        var (acc, words, w) = TagScores.WordScores([[0, 1, 2, 0]], [[0, 1, 1, 1]], 0);
        Assert.Equal((0.5, 4), (acc, words));
        Assert.Equal((1, 3, 2), (w.TruePositives, w.Predicted, w.Gold));
        Assert.Equal(2 * (1 / 3.0) * 0.5 / (1 / 3.0 + 0.5), w.F1, 12);
        Assert.Throws<ArgumentException>(() => TagScores.EntityScores(gold, pred[..1]));
    }

    [Fact]
    public void Words_are_tagged_on_their_first_token_and_bad_input_is_refused()
    {
        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var tok = model.Tokenizer;
        string[] words = ["And", "Nebuchadnezzar", "said"];
        var e = TaggedExample.FromWords(tok, words, [0, 1, 0]);
        Assert.Equal(tok.Encode("And Nebuchadnezzar said", addBos: false), e.Tokens);
        Assert.Equal([0, 1, 0], e.Tags); // the bundled tokenizer has each of these words as one token
        var split = TaggedExample.FromWords(tok, ["And", "Zaphnathpaaneah", "said"], [0, 1, 0]);
        Assert.Equal(tok.Encode("And Zaphnathpaaneah said", addBos: false), split.Tokens);
        int name = tok.Encode("And Zaphnathpaaneah", addBos: false).Length - 1;
        Assert.True(name > 1, "the name should take several tokens");
        Assert.Equal([0, 1, .. Enumerable.Repeat(-1, name - 1), 0], split.Tags);
        Assert.Equal(3, split.Tags.Count(t => t >= 0)); // one scored token per word
        Assert.Throws<ArgumentException>(() => TaggedExample.FromWords(tok, words, [0, 1]));

        var clf = new ClassifierOptions { Labels = ["O", "X"], Pooling = ClassifierPooling.Token };
        Assert.Equal("token", clf.ModeName);
        Assert.Equal((ClassifierPooling.Token, true), ClassifierOptions.ParseMode("bi-token"));
        Assert.Throws<CriaException>(() => ClassifierOptions.Reward(ClassifierObjective.BradleyTerry, ClassifierPooling.Token).Validate());
        using var m = new LlamaTrainingModel(Shape, 1, 4, 1, new LoraOptions { Rank = 2, Alpha = 4f }, clf);
        Assert.Throws<CriaException>(() => m.TokenClassifierForwardBackward([-1, 0, 2, 0], 1f)); // tag 2 of 2 labels
        Assert.Throws<ArgumentException>(() => m.TokenClassifierForwardBackward([-1, 0], 1f));
        Assert.Throws<InvalidOperationException>(() => m.ClassifierForwardBackward([0], 1f)); // pooled training of a token head
        using var pooled = new LlamaTrainingModel(Shape, 1, 4, 1, new LoraOptions { Rank = 2, Alpha = 4f }, clf with { Pooling = ClassifierPooling.Last });
        Assert.Throws<InvalidOperationException>(() => pooled.TokenClassifierForwardBackward([-1, 0, 1, 0], 1f));
    }
}
