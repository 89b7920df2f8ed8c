using Cria.Formats;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>LoRAM: a pruned model is the full model with the removed neurons silenced; an adapter trained on the
/// pruned model, recovered by zero-filling, gives the full model (with those neurons silenced) exactly the pruned
/// model's adapted logits — so the recovery puts every row and column back where it belongs.</summary>
public sealed class LoramTests
{
    const int Dim = 64, Ffn = 96, Layers = 2, Vocab = 400;
    static readonly int[] Tokens = [1, 40, 300, 17, 250, 99, 5, 333, 120, 64, 200, 7];

    static string Full() => LogitsAgreementTests.ModelFile("loram-full", new RandomModelSpec
    {
        Dim = Dim, Layers = Layers, Heads = 4, KvHeads = 2, FfnDim = Ffn, VocabSize = Vocab, Seed = 31,
    });

    /// <summary>The full model with every neuron not in <paramref name="kept"/> silenced (its ffn_up row zeroed).</summary>
    static string Silenced(string full, int[][] kept, string name)
    {
        var dst = TestPaths.TempFile(name);
        using var f = GgufFile.Open(full);
        var w = new GgufWriter().CopyMetadataFrom(f);
        foreach (var t in f.Tensors)
        {
            var v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(t)).ToArray();
            int l = Cria.Quantization.QuantMix.LayerOf(t.Name);
            if (t.Name.EndsWith("ffn_up.weight"))
                for (int i = 0; i < Ffn; i++)
                    if (Array.BinarySearch(kept[l], i) < 0) Array.Clear(v, i * Dim, Dim);
            w.AddTensor(t.Name, t.Shape.ToArray(), v);
        }
        w.Write(dst);
        return dst;
    }

    static float MaxDiff(float[][] a, float[][] b)
    {
        float m = 0;
        for (int p = 0; p < a.Length; p++) for (int i = 0; i < a[p].Length; i++) m = Math.Max(m, Math.Abs(a[p][i] - b[p][i]));
        return m;
    }

    [Fact]
    public void A_pruned_model_is_the_full_model_with_the_removed_neurons_silenced()
    {
        var full = Full();
        var pruned = TestPaths.TempFile("loram-pruned-60.gguf");
        var kept = Loram.Prune(full, pruned, 0.6, force: true);
        Assert.All(kept, k => { Assert.Equal(58, k.Length); Assert.True(k.SequenceEqual(k.Order().Distinct())); });
        float[][] a, b;
        using (var r = new CriaRunner(pruned, 64)) { Assert.Equal(58, r.Model.Config.FfnDim); a = r.AllLogits(Tokens); }
        using (var r = new CriaRunner(Silenced(full, kept, "loram-silenced-60.gguf"), 64)) b = r.AllLogits(Tokens);
        Assert.True(MaxDiff(a, b) < 1e-5f, $"max |Δ logit| {MaxDiff(a, b)}");
        // The neurons kept are the largest by ‖gate‖·‖up‖·‖down‖: silencing the kept ones instead changes much more.
        var complement = kept.Select(k => Enumerable.Range(0, Ffn).Except(k).ToArray()).ToArray();
        float[][] c, d;
        using (var r = new CriaRunner(full, 64)) c = r.AllLogits(Tokens);
        using (var r = new CriaRunner(Silenced(full, complement, "loram-silenced-complement.gguf"), 64)) d = r.AllLogits(Tokens);
        Assert.True(MaxDiff(c, a) < MaxDiff(c, d), $"pruning moved the logits by {MaxDiff(c, a)}, removing the kept neurons instead by {MaxDiff(c, d)}");

        var all = TestPaths.TempFile("loram-pruned-100.gguf");
        Loram.Prune(full, all, 1.0, force: true);
        using (var r = new CriaRunner(all, 64)) Assert.True(r.AllLogits(Tokens).Zip(c).All(p => p.First.SequenceEqual(p.Second)), "keeping every neuron must change nothing");
    }

    [Fact]
    public void A_recovered_adapter_gives_the_full_model_the_pruned_models_adapted_logits()
    {
        var full = Full();
        var pruned = TestPaths.TempFile("loram-pruned-50.gguf");
        var kept = Loram.Prune(full, pruned, 0.5, force: true);
        int n = kept[0].Length;
        var shape = new LlamaShape { VocabSize = Vocab, Dim = Dim, Layers = Layers, Heads = 4, KvHeads = 2, FfnDim = n, ContextLength = 256 };
        var lay = new LoraLayout(shape, new LoraOptions { Rank = 4 });
        var p = new float[lay.Count];
        var rng = new Random(8);
        for (int i = 0; i < p.Length; i++) p[i] = (float)(rng.NextDouble() - 0.5) * 0.3f;
        string adapter = TestPaths.TempFile("loram-adapter-pruned.gguf"), recovered = TestPaths.TempFile("loram-adapter-full.gguf");
        lay.Write(adapter, p);
        Loram.Recover(adapter, pruned, recovered, force: true);
        using (var f = GgufFile.Open(recovered))
        {
            Assert.Equal(new long[] { 4, Ffn }, f.GetTensor("blk.1.ffn_up.weight.lora_b").Shape);
            Assert.Equal(new long[] { Ffn, 4 }, f.GetTensor("blk.1.ffn_down.weight.lora_a").Shape);
            Assert.Equal(new long[] { Dim, 4 }, f.GetTensor("blk.1.attn_q.weight.lora_a").Shape);
        }
        float[][] onPruned, onFull, fullPlain;
        using (var r = new CriaRunner(pruned, 64, lora: adapter)) onPruned = r.AllLogits(Tokens);
        using (var r = new CriaRunner(Silenced(full, kept, "loram-silenced-50.gguf"), 64, lora: recovered)) onFull = r.AllLogits(Tokens);
        using (var r = new CriaRunner(full, 64, lora: recovered)) fullPlain = r.AllLogits(Tokens);
        Assert.True(MaxDiff(onPruned, onFull) < 1e-5f, $"max |Δ logit| {MaxDiff(onPruned, onFull)}");
        Assert.True(MaxDiff(onFull, fullPlain) > 1e-3f); // the full model's own pruned neurons still count there
    }

    [Fact]
    public void Bad_settings_and_files_are_refused()
    {
        var full = Full();
        foreach (var keep in new[] { 0.0, -0.5, 1.5, double.NaN })
            Assert.Throws<CriaException>(() => Loram.Prune(full, TestPaths.TempFile("loram-bad.gguf"), keep, force: true));
        var existing = TestPaths.TempFile("loram-exists.gguf");
        File.WriteAllText(existing, "x");
        Assert.Contains("exists", Assert.Throws<CriaException>(() => Loram.Prune(full, existing, 0.5)).Message);
        var q8 = LogitsAgreementTests.ModelFile("loram-q8", new RandomModelSpec { Dim = Dim, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = Ffn, VocabSize = Vocab, WeightType = GgmlType.Q8_0 });
        Assert.Throws<CriaException>(() => Loram.Prune(q8, TestPaths.TempFile("loram-q8-p.gguf"), 0.5, force: true));
        var moe = LogitsAgreementTests.ModelFile("loram-moe", new RandomModelSpec { Dim = Dim, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = Ffn, VocabSize = Vocab, Experts = 4 });
        Assert.Contains("mixture-of-experts", Assert.Throws<CriaException>(() => Loram.Prune(moe, TestPaths.TempFile("loram-moe-p.gguf"), 0.5, force: true)).Message);

        // Recovery needs a pruned model, and an adapter of its shapes.
        var pruned = TestPaths.TempFile("loram-pruned-bad.gguf");
        Loram.Prune(full, pruned, 0.5, force: true);
        Assert.Throws<CriaException>(() => Loram.Prune(pruned, TestPaths.TempFile("loram-twice.gguf"), 0.5, force: true));
        var wrong = TestPaths.TempFile("loram-adapter-wrong.gguf");
        new LoraLayout(new LlamaShape { VocabSize = Vocab, Dim = Dim, Layers = Layers, Heads = 4, KvHeads = 2, FfnDim = Ffn, ContextLength = 256 }, new LoraOptions { Rank = 2 })
            .Write(wrong, new float[new LoraLayout(new LlamaShape { VocabSize = Vocab, Dim = Dim, Layers = Layers, Heads = 4, KvHeads = 2, FfnDim = Ffn, ContextLength = 256 }, new LoraOptions { Rank = 2 }).Count]);
        Assert.Contains("pruned model's ffn", Assert.Throws<CriaException>(() => Loram.Recover(wrong, pruned, TestPaths.TempFile("loram-r1.gguf"), force: true)).Message);
        Assert.Contains("not a pruned model", Assert.Throws<CriaException>(() => Loram.Recover(wrong, full, TestPaths.TempFile("loram-r2.gguf"), force: true)).Message);
        Assert.Contains("not an adapter", Assert.Throws<CriaException>(() => Loram.Recover(full, pruned, TestPaths.TempFile("loram-r3.gguf"), force: true)).Message);
    }
}
