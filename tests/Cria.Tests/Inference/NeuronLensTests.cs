using Cria.Formats;
using Cria.Inference;
using Cria.Interpretability;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Inference;

/// <summary>Decoding feed-forward neurons through the output head, and clamping them: the decoding is the head applied
/// to the final-normed weight vector (checked in double precision, per view); a clamp at 0 is the model with that
/// neuron's up row zeroed, bit for bit; a clamp follows its neuron when neurons are renumbered; bad clamps are refused.</summary>
public sealed class NeuronLensTests
{
    static RandomModelSpec Spec(GgmlType type, int seed = 21) => new()
    {
        Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 96, VocabSize = 400, Seed = seed, WeightType = type,
    };

    static float[] Row(in WeightMatrix w, int r)
    {
        var v = new float[w.Cols];
        Dequantize.Row(w.Type, w.Row(r), v);
        return v;
    }

    [Theory]
    [InlineData(GgmlType.F32, NeuronView.Up)]
    [InlineData(GgmlType.F32, NeuronView.Gate)]
    [InlineData(GgmlType.F32, NeuronView.Down)]
    [InlineData(GgmlType.Q8_0, NeuronView.Down)]
    public void Decoding_is_the_output_head_applied_to_the_final_normed_weight_vector(GgmlType type, NeuronView view)
    {
        using var m = LlamaModel.Open(LogitsAgreementTests.ModelFile($"neurons-{type}", Spec(type)));
        var c = m.Config;
        var readings = NeuronLens.Decode(m, view, topK: 6, threads: 2);
        Assert.Equal(c.LayerCount * c.FfnDim, readings.Count);
        foreach (var (layer, neuron) in new[] { (0, 0), (0, 37), (1, 95), (1, 50) })
        {
            var L = m.Layers[layer];
            var v = new double[c.Dim];
            for (int j = 0; j < c.Dim; j++)
                v[j] = view switch { NeuronView.Up => Row(L.WUp, neuron)[j], NeuronView.Gate => Row(L.WGate, neuron)[j], _ => Row(L.WDown, j)[neuron] };
            double rms = Math.Sqrt(v.Sum(x => x * x) / c.Dim + c.RmsNormEps);
            var logits = new double[c.VocabSize];
            for (int t = 0; t < c.VocabSize; t++)
            {
                var h = Row(m.Output, t);
                for (int j = 0; j < c.Dim; j++) logits[t] += h[j] * (v[j] / rms * m.OutputNorm[j]);
            }
            double max = logits.Max(), z = logits.Sum(x => Math.Exp(x - max));
            var order = Enumerable.Range(0, c.VocabSize).OrderByDescending(t => logits[t]).ThenBy(t => t).Take(6).ToArray();
            var r = readings.Single(x => x.Layer == layer && x.Neuron == neuron);
            Assert.Equal(order, r.Tokens);
            for (int j = 0; j < 6; j++)
                Assert.True(Math.Abs(r.Probs[j] - Math.Exp(logits[order[j]] - max) / z) <= 1e-5 * Math.Max(1e-3, r.Probs[j]) + 1e-7, $"{view} {layer}:{neuron} rank {j}");
        }
    }

    [Fact]
    public void Top_k_reading_is_sorted_with_ties_to_the_lower_id()
    {
        float[] logits = [1f, 3f, 2f, 3f, -1f, 2f];
        var r = NeuronLens.Read(0, 0, logits, 4);
        Assert.Equal(new[] { 1, 3, 2, 5 }, r.Tokens);
        Assert.True(r.Probs[0] == r.Probs[1] && r.Probs[1] > r.Probs[2]);
    }

    /// <summary>Writes <paramref name="src"/> again with <paramref name="edit"/>(name, values) applied to F32 tensors.</summary>
    static string Edited(string src, string name, Action<string, float[]> edit)
    {
        var dst = TestPaths.TempFile(name);
        using var f = GgufFile.Open(src);
        var w = new GgufWriter().CopyMetadataFrom(f);
        foreach (var t in f.Tensors)
        {
            var v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(t)).ToArray();
            edit(t.Name, v);
            w.AddTensor(t.Name, t.Shape.ToArray(), v);
        }
        w.Write(dst);
        return dst;
    }

    static float[][] Logits(string path, IReadOnlyList<NeuronClamp> clamps, int[] tokens)
    {
        using var m = LlamaModel.Open(path);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 64, Threads = 2, Kv = KvFormat.F32, NeuronClamps = clamps });
        var b = new Batch(tokens.Length);
        for (int i = 0; i < tokens.Length; i++) b.Add(tokens[i], i, 0, true);
        ctx.Decode(b);
        return Enumerable.Range(0, tokens.Length).Select(i => ctx.Logits(i).ToArray()).ToArray();
    }

    static readonly int[] Tokens = [1, 40, 300, 17, 250, 99, 5, 333, 120, 64, 200, 7];

    [Fact]
    public void A_clamp_at_zero_is_the_model_with_the_neurons_up_row_zeroed()
    {
        var src = LogitsAgreementTests.ModelFile("neurons-F32", Spec(GgmlType.F32));
        const int layer = 1, neuron = 41, dim = 64;
        var zeroed = Edited(src, "neurons-zeroed.gguf", (n, v) => { if (n == $"blk.{layer}.ffn_up.weight") Array.Clear(v, neuron * dim, dim); });
        var clamped = Logits(src, [new NeuronClamp(layer, neuron, 0f)], Tokens);
        var edited = Logits(zeroed, [], Tokens);
        var plain = Logits(src, [], Tokens);
        for (int p = 0; p < Tokens.Length; p++) Assert.True(clamped[p].SequenceEqual(edited[p]), $"position {p}");
        Assert.False(clamped[^1].SequenceEqual(plain[^1]));
    }

    /// <summary>Neurons 3 and 70 of layer 0 swapped (gate and up rows, down columns): clamping 70 in the swapped model is
    /// clamping 3 in the original. Only the order of the down projection's sum changes, hence 1e-5 and not bit for bit.</summary>
    [Fact]
    public void A_clamp_follows_its_neuron_when_neurons_are_renumbered()
    {
        var src = LogitsAgreementTests.ModelFile("neurons-F32", Spec(GgmlType.F32));
        const int a = 3, b = 70, dim = 64, ff = 96;
        var swapped = Edited(src, "neurons-swapped.gguf", (n, v) =>
        {
            if (n is "blk.0.ffn_up.weight" or "blk.0.ffn_gate.weight")
                for (int j = 0; j < dim; j++) (v[a * dim + j], v[b * dim + j]) = (v[b * dim + j], v[a * dim + j]);
            else if (n == "blk.0.ffn_down.weight")
                for (int o = 0; o < dim; o++) (v[o * ff + a], v[o * ff + b]) = (v[o * ff + b], v[o * ff + a]);
        });
        var x = Logits(src, [new NeuronClamp(0, a, 7.5f)], Tokens);
        var y = Logits(swapped, [new NeuronClamp(0, b, 7.5f)], Tokens);
        var other = Logits(swapped, [new NeuronClamp(0, a, 7.5f)], Tokens);
        float worst = 0, moved = 0;
        for (int p = 0; p < Tokens.Length; p++)
            for (int i = 0; i < x[p].Length; i++) { worst = Math.Max(worst, Math.Abs(x[p][i] - y[p][i])); moved = Math.Max(moved, Math.Abs(x[p][i] - other[p][i])); }
        Assert.True(worst < 1e-5f, $"max |Δ logit| {worst}");
        Assert.True(moved > 1e-2f, $"clamping the other neuron should differ, max |Δ| {moved}");
    }

    /// <summary>A last-layer neuron clamped at a huge value makes the residual stream its down column (RMSNorm is scale
    /// invariant), so the next-token distribution becomes that column's decoding: the probe and the decoding agree.</summary>
    [Fact]
    public void A_last_layer_neuron_clamped_high_turns_the_output_into_its_decoding()
    {
        using var m = LlamaModel.Open(LogitsAgreementTests.ModelFile("neurons-F32", Spec(GgmlType.F32)));
        var down = NeuronLens.Decode(m, NeuronView.Down, 1, [1], threads: 2);
        var n = down.MaxBy(r => r.TopProb)!;
        var prompts = new[] { Tokens, Tokens[..5], Tokens[3..] };
        var target = new HashSet<int> { n.TopToken };
        double plain = NeuronLens.MeanProbability(m, [], prompts, target, 2);
        double clamped = NeuronLens.MeanProbability(m, [new NeuronClamp(1, n.Neuron, 1e5f)], prompts, target, 2);
        Assert.True(Math.Abs(clamped - n.TopProb) < 1e-3, $"clamped P {clamped} against the decoding's {n.TopProb} (unclamped {plain})");
        Assert.True(plain < n.TopProb / 2);
        Assert.Throws<CriaException>(() => NeuronLens.MeanProbability(m, [], prompts, new HashSet<int> { 400 }, 1));
    }

    [Fact]
    public void Bad_clamps_and_models_are_refused()
    {
        using var m = LlamaModel.Open(LogitsAgreementTests.ModelFile("neurons-F32", Spec(GgmlType.F32)));
        foreach (var k in new[] { new NeuronClamp(2, 0, 1f), new NeuronClamp(0, 96, 1f), new NeuronClamp(-1, 0, 1f), new NeuronClamp(0, 0, float.NaN) })
            Assert.Throws<CriaException>(() => new InferenceContext(m, new ContextOptions { ContextSize = 16, Threads = 1, NeuronClamps = [k] }).Dispose());
        Assert.Equal(new NeuronClamp(3, 512, -2.5f), NeuronClamp.Parse("3:512=-2.5"));
        foreach (var s in new[] { "3:512", "3=1", "a:1=2", ":1=2", "1:=2", "1:2=x" })
            Assert.Throws<CriaException>(() => NeuronClamp.Parse(s));
        Assert.Throws<CriaException>(() => NeuronLens.Decode(m, NeuronView.Up, layers: [5]));
        using var moe = LlamaModel.Open(LogitsAgreementTests.ModelFile("neurons-moe", Spec(GgmlType.F32) with { Experts = 4 }));
        Assert.Throws<CriaException>(() => NeuronLens.Decode(moe, NeuronView.Up));
        Assert.Throws<CriaException>(() => new InferenceContext(moe, new ContextOptions { ContextSize = 16, NeuronClamps = [new NeuronClamp(0, 0, 1f)] }).Dispose());
    }

    [Fact]
    public void Same_top_token_share_is_one_against_itself_and_small_against_another_model()
    {
        using var a = LlamaModel.Open(LogitsAgreementTests.ModelFile("neurons-F32", Spec(GgmlType.F32)));
        using var b = LlamaModel.Open(LogitsAgreementTests.ModelFile("neurons-F32-other", Spec(GgmlType.F32, seed: 99)));
        var ra = NeuronLens.Decode(a, NeuronView.Up, 1, threads: 2);
        Assert.Equal(1.0, NeuronLens.SameTopToken(ra, NeuronLens.Decode(a, NeuronView.Up, 1, threads: 2)));
        Assert.True(NeuronLens.SameTopToken(ra, NeuronLens.Decode(b, NeuronView.Up, 1, threads: 2)) < 0.1);
    }
}
