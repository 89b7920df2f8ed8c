using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Tests.Tokenization;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

public sealed class TrainingTests(ITestOutputHelper output)
{
    internal const string Text =
        "The little llama walked up the green hill. The little llama saw the sun rise over the hill.\n" +
        "On the hill the llama found a quiet pond, and the llama drank from the pond.\n" +
        "Then the little llama walked down the hill again, happy and warm in the morning sun.\n" +
        "Every day the llama walks up the hill, drinks from the pond and watches the sun.\n";

    static readonly Lazy<TokenizerVocabulary> SmallVocab = new(() => TokenizerTrainer.Train(string.Concat(Enumerable.Repeat(Text, 4)), 320));

    static (LlamaShape Shape, int[] Tokens, int Bos) TinySetup(bool tied = false)
    {
        var vocab = SmallVocab.Value;
        var tok = vocab.CreateTokenizer();
        var tokens = tok.Encode(string.Concat(Enumerable.Repeat(Text, 8)), addBos: false);
        var shape = new LlamaShape { VocabSize = vocab.Count, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 32, TiedEmbeddings = tied };
        return (shape, tokens, tok.Bos);
    }

    static readonly TrainingOptions TinyOptions = new() { BatchSize = 4, Steps = 300, WarmupSteps = 20, LearningRate = 3e-3f, Seed = 7, Threads = 2 };

    [Fact]
    public void A_few_hundred_steps_drive_the_loss_down_deterministically()
    {
        var (shape, tokens, bos) = TinySetup();
        float[] Run(int steps)
        {
            using var t = new Trainer(shape, TinyOptions, tokens, bos);
            var losses = new float[steps];
            for (int i = 0; i < losses.Length; i++) losses[i] = t.TrainStep().Loss;
            return losses;
        }
        var a = Run(TinyOptions.Steps);
        var b = Run(60);
        Assert.Equal(a[..60], b); // same seed → bit-identical run
        float first = a.Take(5).Average(), last = a.TakeLast(20).Average();
        output.WriteLine($"vocab {shape.VocabSize} (ln V = {Math.Log(shape.VocabSize):F3}); mean loss of steps 1–5: {first:F4}, of steps 281–300: {last:F4}");
        Assert.InRange(first, 5.0f, 6.5f);
        Assert.True(last < 0.5f, $"loss after 300 steps is {last:F4}, expected < 0.5");
    }

    [Fact]
    public void A_training_step_allocates_nothing()
    {
        var (shape, tokens, bos) = TinySetup();
        using var t = new Trainer(shape, TinyOptions with { GradAccumulation = 2, Threads = 1 }, tokens, bos);
        for (int i = 0; i < 3; i++) t.TrainStep();
        // Steady state: the least of three windows of 5 steps. (Once, in a CI run with every test class sharing the 2
        // cores, a window saw 1160 bytes per step that this test alone never shows — warm-up work such as the runtime's
        // tiered re-compilation landing late; a step that allocates does so in every window.)
        long allocated = long.MaxValue;
        for (int w = 0; w < 3 && allocated > 0; w++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 5; i++) t.TrainStep();
            allocated = Math.Min(allocated, GC.GetAllocatedBytesForCurrentThread() - before);
        }
        output.WriteLine($"{allocated} bytes allocated over 5 steps");
        Assert.Equal(0, allocated); // forward, backward, clipping and AdamW on preallocated buffers
    }

    [Fact]
    public void Checkpoint_resume_is_bit_exact()
    {
        var (shape, tokens, bos) = TinySetup();
        var opts = TinyOptions with { Steps = 40 };
        string ckpt = TestPaths.TempFile("resume.ckpt");
        float[] straightLosses = new float[20];
        float[] straight;
        using (var t = new Trainer(shape, opts, tokens, bos))
        {
            for (int i = 0; i < 20; i++) t.TrainStep();
            t.SaveCheckpoint(ckpt, 42);
            for (int i = 0; i < 20; i++) straightLosses[i] = t.TrainStep().Loss;
            straight = t.Model.Parameters.ToArray();
        }
        using (var t = new Trainer(shape, opts with { Seed = 999 }, tokens, bos)) // the seed is restored from the checkpoint
        {
            t.LoadCheckpoint(ckpt, 42);
            Assert.Equal(20, t.Step);
            for (int i = 0; i < 20; i++) Assert.Equal(straightLosses[i], t.TrainStep().Loss);
            Assert.Equal(straight, t.Model.Parameters);
        }
        // another model's checkpoint, another tokenizer, or a truncated file: a clear error, nothing loaded
        using (var other = new Trainer(shape with { Dim = 48, Heads = 4 }, opts, tokens, bos))
            Assert.Contains("another model", Assert.Throws<CriaException>(() => other.LoadCheckpoint(ckpt, 42)).Message);
        using (var same = new Trainer(shape, opts, tokens, bos))
        {
            Assert.Contains("another tokenizer", Assert.Throws<CriaException>(() => same.LoadCheckpoint(ckpt, 43)).Message);
            var bytes = File.ReadAllBytes(ckpt);
            File.WriteAllBytes(ckpt + ".cut", bytes[..(bytes.Length / 2)]);
            Assert.Contains("truncated", Assert.Throws<CriaException>(() => same.LoadCheckpoint(ckpt + ".cut", 42)).Message);
        }
    }

    [Fact]
    public void Bad_shapes_and_corpora_are_refused_with_clear_errors()
    {
        Assert.Contains("not divisible by heads", Assert.Throws<CriaException>(() => new LlamaShape { Dim = 100, Heads = 8 }.Validate()).Message);
        Assert.Contains("kv heads", Assert.Throws<CriaException>(() => new LlamaShape { Dim = 96, Heads = 6, KvHeads = 4 }.Validate()).Message);
        Assert.Contains("learning rate", Assert.Throws<CriaException>(() => new TrainingOptions { LearningRate = 0 }.Validate()).Message);
        Assert.Contains("batch size", Assert.Throws<CriaException>(() => new TrainingOptions { BatchSize = 0 }.Validate()).Message);
        string empty = TestPaths.TempFile("empty.txt"); File.WriteAllText(empty, "");
        Assert.Contains("empty", Assert.Throws<CriaException>(() => TokenizerTrainer.ReadCorpus(empty)).Message);
        string bad = TestPaths.TempFile("latin1.txt"); File.WriteAllBytes(bad, [0x48, 0x69, 0xE9, 0x21]);
        Assert.Contains("UTF-8", Assert.Throws<CriaException>(() => TokenizerTrainer.ReadCorpus(bad)).Message);
        Assert.Contains("does not exist", Assert.Throws<CriaException>(() => TokenizerTrainer.ReadCorpus(TestPaths.TempFile("missing.txt"))).Message);
    }

    /// <summary>The exported GGUF runs unchanged in Cria's inference and in llama.cpp, with the training forward's logits.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Exported_model_gives_the_training_logits_in_Cria_and_llama_cpp(bool tied)
    {
        var (shape, tokens, bos) = TinySetup(tied);
        using var t = new Trainer(shape, TinyOptions with { BatchSize = 1 }, tokens, bos);
        for (int i = 0; i < 30; i++) t.TrainStep();
        var m = t.Model;
        Trainer.FillSequence(m.Tokens, m.Targets, tokens, 5, bos);
        m.Forward();
        string path = TestPaths.TempFile($"exported-{tied}.gguf");
        GgufExport.Write(path, m.Layout, m.Parameters, SmallVocab.Value);
        var seq = m.Tokens.ToArray();
        double worstCria = 0, worstCpp = 0;
        using (var cria = new CriaRunner(path, 64))
        {
            Assert.Equal(tied, cria.Model.TiedEmbeddings);
            var logits = cria.AllLogits(seq);
            for (int p = 0; p < seq.Length; p++)
                for (int v = 0; v < shape.VocabSize; v++) worstCria = Math.Max(worstCria, Math.Abs(logits[p][v] - m.LogitsRow(p)[v]));
        }
        using (var cpp = new LlamaCpp(path, 64))
        {
            var logits = cpp.AllLogits(seq);
            for (int p = 0; p < seq.Length; p++)
                for (int v = 0; v < shape.VocabSize; v++) worstCpp = Math.Max(worstCpp, Math.Abs(logits[p][v] - m.LogitsRow(p)[v]));
        }
        output.WriteLine($"max |Δ logit| over {seq.Length} positions × {shape.VocabSize}: Cria inference {worstCria:E2}, llama.cpp {worstCpp:E2}");
        Assert.True(worstCria < 1e-4, $"Cria inference differs by {worstCria}");
        Assert.True(worstCpp < 1e-4, $"llama.cpp differs by {worstCpp}");

        // F16 export: both engines load it and stay close to the F32 training logits
        string f16 = TestPaths.TempFile($"exported-{tied}-f16.gguf");
        GgufExport.Write(f16, m.Layout, m.Parameters, SmallVocab.Value, Cria.Tensors.GgmlType.F16);
        double worst16 = 0;
        using (var cria = new CriaRunner(f16, 64))
        using (var cpp = new LlamaCpp(f16, 64))
        {
            var a = cria.AllLogits(seq); var b = cpp.AllLogits(seq);
            for (int p = 0; p < seq.Length; p++)
                for (int v = 0; v < shape.VocabSize; v++)
                {
                    worst16 = Math.Max(worst16, Math.Abs(a[p][v] - m.LogitsRow(p)[v]));
                    Assert.True(Math.Abs(a[p][v] - b[p][v]) < 1e-2, $"F16: Cria and llama.cpp differ at {p},{v}");
                }
        }
        output.WriteLine($"F16 export: max |Δ logit| vs the F32 training forward {worst16:E2}");
        Assert.True(worst16 < 5e-2);
    }

    /// <summary>A trainer that adopts an imported array (what <c>cria train --init</c> does, to hold one copy of the
    /// model) trains exactly as one given a copy, full training and LoRA alike, and trains that array in place.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Adopted_parameters_train_as_copied_ones(bool lora)
    {
        var (shape, tokens, bos) = TinySetup();
        var init = new float[new ParameterLayout(shape).Count];
        var g = new TrainingRng(3);
        for (int i = 0; i < init.Length; i++) init[i] = g.NextGaussian() * 0.05f;
        var options = TinyOptions with { Steps = 4 };
        var loraOptions = lora ? new LoraOptions { Rank = 2, Alpha = 4 } : null;
        float[] Run(Trainer t) => Enumerable.Range(0, options.Steps).Select(_ => t.TrainStep().Loss).ToArray();

        using var copied = new Trainer(shape, options, tokens, bos, lora: loraOptions);
        copied.SetParameters(init);
        var adoptedArray = init.ToArray();
        using var adopted = new Trainer(shape, options, tokens, bos, lora: loraOptions, parameters: adoptedArray);
        Assert.Same(adoptedArray, adopted.Model.Parameters);
        Assert.Equal(init, adoptedArray); // the initialisation drew its numbers without writing them
        Assert.Equal(copied.Model.LoraParameters, adopted.Model.LoraParameters);
        Assert.Equal(Run(copied), Run(adopted));
        Assert.Equal(copied.Model.Parameters, adoptedArray);
        Assert.Equal(copied.Model.LoraParameters, adopted.Model.LoraParameters);
        if (!lora) Assert.NotEqual(init, adoptedArray); // full training moved the adopted array itself
        Assert.Contains("parameters given", Assert.Throws<CriaException>(() => { using var t = new Trainer(shape, options, tokens, bos, parameters: new float[3]); }).Message);
    }
}

public sealed class TokenizerTrainerTests(ITestOutputHelper output)
{
    static readonly string[] Texts =
    [
        "Hello world", " leading space", "double  spaces and\ttabs\nand new\nlines\n\n", "naïve café résumé – “quotes”",
        "日本語のテキストと中文", "emoji 🦙🎉 and 👩‍👩‍👧 family", "mixed: ñ, ß, Ω, ЖЖ, عربى, हिन्दी", "The little llama walked up the green hill.",
        "trailing space ", "   ", "a", "\u0001 control \u007f", "UPPER lower 12345 !@#$%^&*()",
    ];

    [Fact]
    public void Any_text_round_trips_and_llama_cpp_tokenizes_it_the_same()
    {
        var vocab = TokenizerTrainer.Train(string.Concat(Enumerable.Repeat(TrainingTests.Text, 4)) + "naïve café 日本", 400);
        Assert.Equal(400, vocab.Count);
        Assert.Equal(vocab.Count, vocab.Tokens.Distinct().Count());
        var tok = vocab.CreateTokenizer();
        string path = TestPaths.TempFile("trained-vocab-model.gguf");
        var shape = new LlamaShape { VocabSize = vocab.Count, Dim = 16, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 32, ContextLength = 64 };
        var layout = new ParameterLayout(shape);
        GgufExport.Write(path, layout, new float[layout.Count], vocab);
        using var cpp = new LlamaOracle(path);
        int total = 0;
        foreach (var text in Texts)
        {
            var ids = tok.Encode(text, addBos: true);
            total += ids.Length;
            Assert.Equal(text, tok.Decode(ids.Skip(1))); // Decode drops the space the encoder prefixed, as llama.cpp does
            Assert.Equal(cpp.Tokenize(text, true, false), ids);
        }
        var common = tok.Encode("The little llama walked up the hill", addBos: false);
        output.WriteLine($"{Texts.Length} texts, {total} tokens; 'The little llama walked up the hill' → {common.Length} tokens: {string.Join(" | ", common.Select(tok.TokenText))}");
        Assert.True(common.Length <= 8, "frequent words should be single tokens");
    }
}
