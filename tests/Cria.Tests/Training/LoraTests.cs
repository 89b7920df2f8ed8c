using Cria.Formats;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Training;
using NativeLora = LLama.Native.LoraAdapter;
using LoraAdapter = Cria.Models.LoraAdapter;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>LoRA adapters: the trainer's forward, Cria's run-time application of the written adapter file and llama.cpp's
/// (<c>--lora</c>, through LLamaSharp) give the same logits on the bundled model; training lowers the loss; bad adapters
/// are refused.</summary>
public sealed class LoraTests(ITestOutputHelper output)
{
    static int[] Text(LlamaModel m, int n)
    {
        var text = "In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ";
        return m.Tokenizer.Encode(string.Concat(Enumerable.Repeat(text, 6)), addBos: false).Take(n).ToArray();
    }

    /// <summary>Writes an adapter with random A and B (B ≠ 0, so it changes the model) for the bundled model and
    /// returns the training model's logits of one sequence with it.</summary>
    internal static (string Path, int[] Tokens, float[][] Logits) RandomAdapter(string name, LoraOptions o, float bScale = 0.05f)
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        using var m = new LlamaTrainingModel(im.Shape, 1, 48, 2, o);
        im.Parameters.CopyTo(m.Parameters.AsSpan());
        RandomAdapters(m, 5, bScale);
        using (var lm = LlamaModel.Open(TestPaths.Bundled()))
        {
            var toks = Text(lm, 47);
            m.Tokens[0] = 1;
            toks.CopyTo(m.Tokens[1..]);
        }
        m.Forward();
        string path = TestPaths.TempFile(name + ".gguf");
        m.Lora!.Write(path, m.LoraParameters);
        return (path, m.Tokens.ToArray(), Enumerable.Range(0, 48).Select(p => m.LogitsRow(p).ToArray()).ToArray());
    }

    /// <summary>Random A (U(±1/√in)) and B (U(±bScale), not zero, so the adapters change the model).</summary>
    internal static void RandomAdapters(LlamaTrainingModel m, int seed, float bScale = 0.05f)
    {
        var rng = new Random(seed);
        foreach (var t in m.Lora!.Tensors)
        {
            float s = t.Name.EndsWith("lora_a") ? 1f / MathF.Sqrt(t.Cols) : bScale;
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.LoraParameters[i] = (float)(rng.NextDouble() * 2 - 1) * s;
        }
    }

    internal static double MaxDiff(float[][] a, float[][] b)
    {
        double worst = 0;
        for (int p = 0; p < a.Length; p++)
            for (int v = 0; v < a[p].Length; v++) worst = Math.Max(worst, Math.Abs(a[p][v] - b[p][v]));
        return worst;
    }

    /// <summary>An adapter the trainer writes gives the trainer's logits in Cria and in llama.cpp; an rsLoRA adapter
    /// (scale α/√r, written as alpha α·√r) too.</summary>
    [Theory]
    [InlineData("all", 8, 16f, false)]
    [InlineData("q,v", 4, 4f, false)]
    [InlineData("q,v,down", 16, 8f, true)]
    public void Trainer_cria_and_llama_cpp_agree_on_an_adapter(string targets, int rank, float alpha, bool rsLora)
    {
        var o = new LoraOptions { Rank = rank, Alpha = alpha, Targets = LoraOptions.ParseTargets(targets), RsLora = rsLora };
        var (path, tokens, trained) = RandomAdapter($"lora-{targets.Replace(',', '-')}-{rank}{(rsLora ? "-rs" : "")}", o);
        using (var f = GgufFile.Open(path))
            Assert.Equal(rsLora ? alpha * MathF.Sqrt(rank) : alpha, f.Get<float>("adapter.lora.alpha"), 5);
        using var plain = new CriaRunner(TestPaths.Bundled(), 64);
        var basis = plain.AllLogits(tokens);
        using var cria = new CriaRunner(TestPaths.Bundled(), 64, lora: path);
        var adapted = cria.AllLogits(tokens);
        double vsTrainer = MaxDiff(adapted, trained), vsBase = MaxDiff(adapted, basis);

        LlamaCpp.EnsureLoaded();
        using var ll = new LlamaCpp(TestPaths.Bundled(), 64);
        var adapter = ll.Weights.NativeHandle.LoadLoraFromFile(path);
        Span<(NativeLora, float)> set = [(adapter, 1f)];
        ll.Context.NativeHandle.SetLoraAdapters(set);
        var reference = ll.AllLogits(tokens);
        double vsLlama = MaxDiff(adapted, reference);
        output.WriteLine($"{targets} r={rank} α={alpha}{(rsLora ? " rsLoRA" : "")}: max |Δ logit| Cria vs trainer {vsTrainer:E2}, vs llama.cpp {vsLlama:E2}; the adapter moves logits by up to {vsBase:F3}");
        Assert.True(vsBase > 0.05, $"the adapter changes the logits by only {vsBase}");
        Assert.True(vsTrainer < 1e-4, $"Cria with the adapter differs from the trainer's forward by {vsTrainer}");
        Assert.True(vsLlama < 1e-4, $"Cria with the adapter differs from llama.cpp by {vsLlama}");

        // user scale 0.5 in both engines (llama.cpp's --lora-scaled)
        using var half = new CriaRunner(TestPaths.Bundled(), 64, lora: path, loraScale: 0.5f);
        Span<(NativeLora, float)> halfSet = [(adapter, 0.5f)];
        ll.Context.NativeHandle.SetLoraAdapters(halfSet);
        double vsLlamaHalf = MaxDiff(half.AllLogits(tokens), ll.AllLogits(tokens));
        output.WriteLine($"scale 0.5: vs llama.cpp {vsLlamaHalf:E2}");
        Assert.True(vsLlamaHalf < 1e-4, $"scale 0.5: Cria differs from llama.cpp by {vsLlamaHalf}");
    }

    /// <summary>llama-export-lora's merge: the bundled (F32) model with an adapter merged into its weights gives the
    /// logits of the base with the adapter applied at run time; an existing output and a quantized base are refused.</summary>
    [Fact]
    public void Merged_adapter_gives_the_logits_of_the_adapter_at_run_time()
    {
        var (path, tokens, _) = RandomAdapter("lora-merge", new LoraOptions { Rank = 8, Alpha = 16, Targets = LoraTarget.All });
        using var withAdapter = new CriaRunner(TestPaths.Bundled(), 64, lora: path, loraScale: 0.75f);
        var expected = withAdapter.AllLogits(tokens);
        string merged = TestPaths.TempFile("lora-merged.gguf");
        using (var m = LlamaModel.Open(TestPaths.Bundled()))
            LoraAdapter.Merge(TestPaths.Bundled(), [(LoraAdapter.Load(path, m), 0.75f)], merged, force: true);
        using var cria = new CriaRunner(merged, 64);
        double diff = MaxDiff(cria.AllLogits(tokens), expected);
        output.WriteLine($"merged vs run-time adapter: max |Δ logit| {diff:E2}");
        Assert.True(diff < 1e-4, $"merged model differs from the run-time adapter by {diff}");
        using (var a = Cria.Formats.GgufFile.Open(TestPaths.Bundled()))
        using (var b = Cria.Formats.GgufFile.Open(merged))
        {
            Assert.Equal(a.Tensors.Select(t => (t.Name, t.Type)), b.Tensors.Select(t => (t.Name, t.Type)));
            Assert.True(a.TensorData(a.GetTensor("token_embd.weight")).SequenceEqual(b.TensorData(b.GetTensor("token_embd.weight"))));
            Assert.False(a.TensorData(a.GetTensor("blk.0.attn_q.weight")).SequenceEqual(b.TensorData(b.GetTensor("blk.0.attn_q.weight"))));
        }
        using (var m = LlamaModel.Open(TestPaths.Bundled()))
            Assert.Contains("exists", Assert.Throws<CriaException>(() => LoraAdapter.Merge(TestPaths.Bundled(), [(LoraAdapter.Load(path, m), 1f)], merged)).Message);
        string q8 = TestPaths.TempFile("lora-base-q8_0.gguf");
        Cria.Quantization.ModelQuantizer.Run(TestPaths.Bundled(), q8, new Cria.Quantization.QuantizeOptions { FileType = Cria.Quantization.LlamaFileType.Q8_0, Force = true });
        using (var m = LlamaModel.Open(q8))
            Assert.Contains("then quantize", Assert.Throws<CriaException>(() => LoraAdapter.Merge(q8, [(LoraAdapter.Load(path, m), 1f)], TestPaths.TempFile("lora-merged-q8.gguf"), force: true)).Message);
    }

    /// <summary>A few hundred LoRA steps on one short text drive its loss well down, deterministically, and leave the
    /// base weights untouched.</summary>
    [Fact]
    public void Lora_training_lowers_the_loss_and_keeps_the_base()
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        int[] data;
        using (var lm = LlamaModel.Open(TestPaths.Bundled()))
            data = lm.Tokenizer.Encode("Zebra quartz jukebox: the vexed wizard flung my quick box. " + "Seven jolly pixies vow to bake fizzy quince jam. ", addBos: false);
        var opts = new TrainingOptions { BatchSize = 4, Steps = 40, WarmupSteps = 5, LearningRate = 3e-3f, WeightDecay = 0f, Threads = 2, Seed = 7 };
        float[] Run()
        {
            var corpus = Enumerable.Repeat(data, 40).SelectMany(x => x).ToArray();
            using var tr = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: new LoraOptions { Rank = 8, Alpha = 16 });
            tr.SetParameters(im.Parameters);
            var losses = new List<float>();
            for (int s = 0; s < opts.Steps; s++) losses.Add(tr.TrainStep().Loss);
            Assert.True(tr.Model.Parameters.AsSpan().SequenceEqual(im.Parameters), "the base weights moved");
            return losses.ToArray();
        }
        var a = Run();
        var b = Run();
        Assert.Equal(a, b);
        float first = a.Take(3).Average(), last = a.TakeLast(5).Average();
        output.WriteLine($"loss {first:F3} → {last:F3} in {a.Length} LoRA steps");
        Assert.True(last < 0.5f * first, $"loss went from {first} to {last}");
    }

    [Fact]
    public void Bad_adapters_are_refused_with_the_reason()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled());
        Assert.Contains("does not exist", Assert.Throws<CriaException>(() => LoraAdapter.Load(TestPaths.TempFile("no-such-lora.gguf"), m)).Message);
        Assert.Contains("not a LoRA adapter", Assert.Throws<CriaException>(() => LoraAdapter.Load(TestPaths.Bundled(), m)).Message);
        // an adapter for another shape (the draft model's dim is not the default model's)
        var draft = GgufImport.Read(TestPaths.Bundled("draft.gguf"));
        var lay = new LoraLayout(draft.Shape, new LoraOptions { Rank = 2, Targets = LoraTarget.AttnQ });
        string other = TestPaths.TempFile("lora-other-shape.gguf");
        lay.Write(other, new float[lay.Count]);
        Assert.Contains("needs", Assert.Throws<CriaException>(() => LoraAdapter.Load(other, m)).Message);
        // a lora_a without its lora_b, and a tensor that is not a projection
        var w = new GgufWriter();
        w.Set("general.architecture", "llama"); w.Set("general.type", "adapter"); w.Set("adapter.type", "lora"); w.Set("adapter.lora.alpha", 4f);
        w.AddTensor("blk.0.attn_q.weight.lora_a", [256, 2], new float[512]);
        string lone = TestPaths.TempFile("lora-lone-a.gguf");
        w.Write(lone);
        Assert.Contains("has no blk.0.attn_q.weight.lora_b", Assert.Throws<CriaException>(() => LoraAdapter.Load(lone, m)).Message);
        var w2 = new GgufWriter();
        w2.Set("general.architecture", "llama"); w2.Set("general.type", "adapter"); w2.Set("adapter.type", "lora");
        w2.AddTensor("output.weight.lora_a", [256, 2], new float[512]);
        w2.AddTensor("output.weight.lora_b", [2, 4096], new float[8192]);
        string head = TestPaths.TempFile("lora-head.gguf");
        w2.Write(head);
        Assert.Contains("not one of the model's adaptable projections", Assert.Throws<CriaException>(() => LoraAdapter.Load(head, m)).Message);
        Assert.Throws<CriaException>(() => new LoraOptions { Rank = 0 }.Validate());
        foreach (float p in new[] { 1f, -0.1f, float.NaN })
            Assert.Contains("dropout", Assert.Throws<CriaException>(() => new LoraOptions { Dropout = p }.Validate()).Message);
        Assert.Throws<CriaException>(() => LoraOptions.ParseTargets("q,wrong"));
    }
}
