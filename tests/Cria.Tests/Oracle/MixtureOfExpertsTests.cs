using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Oracle;

/// <summary>
/// Mixtral-style mixture-of-experts models (llama architecture with <c>llama.expert_count</c>, a router
/// <c>ffn_gate_inp</c> and stacked expert tensors <c>ffn_{gate,up,down}_exps</c>): the same logits as llama.cpp at every
/// position and the same greedy continuation; experts that are all copies of one feed-forward give that dense model's
/// logits (the kept probabilities are renormalised); a row's result does not depend on what else is in its batch;
/// malformed files are refused.
/// </summary>
public class MixtureOfExpertsTests(ITestOutputHelper output)
{
    static RandomModelSpec Spec(GgmlType type, int experts, int used) => new()
    {
        Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 256, VocabSize = 512,
        Experts = experts, ExpertsUsed = used, WeightType = type, Seed = 31 + (int)type + experts,
    };

    static int[] Prompt(int n, int seed) => LogitsAgreementTests.Prompt(n, 512, seed);

    [Theory]
    [InlineData(GgmlType.F32, 8, 2)]   // Mixtral's routing: 2 of 8
    [InlineData(GgmlType.F32, 4, 1)]   // one expert per token (Switch-style top-1)
    [InlineData(GgmlType.F16, 4, 2)]
    [InlineData(GgmlType.Q8_0, 4, 2)]
    [InlineData(GgmlType.Q4_K, 8, 2)]
    [InlineData(GgmlType.IQ4_XS, 8, 2)]
    [InlineData(GgmlType.IQ4_NL, 4, 2)]
    [InlineData(GgmlType.IQ3_S, 8, 2)]   // quantized by ggml (GgmlQuantizer.QuantizeFile)
    [InlineData(GgmlType.IQ2_XS, 4, 2)]
    [InlineData(GgmlType.IQ3_XXS, 4, 2)]
    public void Logits_and_greedy_tokens_agree_with_llama_cpp(GgmlType type, int experts, int used)
    {
        var path = LogitsAgreementTests.ModelFile($"moe-{type}-{experts}-{used}", Spec(type, experts, used));
        OracleChecks.AgreesWithLlamaCpp(output, path, type, Prompt(40, 5), $"{type}, {used} of {experts} experts", c => Assert.Equal(experts, c.ExpertCount), routed: true);
    }

    /// <summary>A dense F32 model, and the same model whose feed-forward is n copies of its own behind a random
    /// router: whatever the router picks, the kept weights sum to 1, so the logits are the dense model's. Without the
    /// renormalisation they would be scaled by the kept probability mass (about k/n).</summary>
    [Fact]
    public void Experts_that_are_copies_of_one_feed_forward_give_the_dense_model()
    {
        var dense = LogitsAgreementTests.ModelFile("moe-dense-base", Spec(GgmlType.F32, 0, 2));
        var moe = TestPaths.TempFile("moe-copies.gguf");
        const int n = 4;
        using (var f = GgufFile.Open(dense))
        {
            var w = new GgufWriter().CopyMetadataFrom(f);
            w.Set("llama.expert_count", (uint)n).Set("llama.expert_used_count", 2u);
            var rng = new Random(3);
            foreach (var t in f.Tensors)
            {
                var bytes = f.TensorData(t).ToArray();
                string name = t.Name;
                if (name.EndsWith(".ffn_gate.weight") || name.EndsWith(".ffn_up.weight") || name.EndsWith(".ffn_down.weight"))
                {
                    var stacked = new byte[bytes.Length * n];
                    for (int e = 0; e < n; e++) bytes.CopyTo(stacked, e * bytes.Length);
                    w.AddTensor(name.Replace(".weight", "_exps.weight"), [t.Shape[0], t.Shape[1], n], t.Type, stacked);
                    if (name.EndsWith(".ffn_gate.weight"))
                    {
                        var router = new float[n * t.Shape[0]];
                        for (int i = 0; i < router.Length; i++) router[i] = (float)(rng.NextDouble() * 2 - 1) * 0.2f;
                        w.AddTensor(name.Replace("ffn_gate", "ffn_gate_inp"), [t.Shape[0], n], router);
                    }
                }
                else w.AddTensor(name, t.Shape.ToArray(), t.Type, bytes);
            }
            w.Write(moe);
        }
        var tokens = Prompt(24, 9);
        float[][] a, b;
        using (var r = new CriaRunner(dense)) a = r.AllLogits(tokens);
        using (var r = new CriaRunner(moe)) { Assert.True(r.Model.Config.IsMoe); b = r.AllLogits(tokens); }
        float worst = 0, maxAbs = 0;
        for (int p = 0; p < tokens.Length; p++)
            for (int i = 0; i < a[p].Length; i++) { worst = Math.Max(worst, Math.Abs(a[p][i] - b[p][i])); maxAbs = Math.Max(maxAbs, Math.Abs(a[p][i])); }
        output.WriteLine($"dense vs {n} copied experts: max |Δ logit| {worst:E2} (max |logit| {maxAbs:F2})");
        Assert.True(worst <= 1e-4f, $"max |Δ logit| {worst}");
    }

    /// <summary>Three sequences decoded together — a 20-token prompt, then one token each for 8 steps, so that experts
    /// get 0, 1 or many rows per step — give every row the logits it gets when decoded alone, bit for bit.</summary>
    [Fact]
    public void A_rows_logits_do_not_depend_on_its_batch()
    {
        var path = LogitsAgreementTests.ModelFile("moe-F32-8-2", Spec(GgmlType.F32, 8, 2));
        OracleChecks.RowsMatchAlone(path, seed => Prompt(20, seed));
    }

    /// <summary>Files from before llama.cpp stacked the experts (one 2-D tensor per expert, <c>blk.N.ffn_up.E.weight</c>)
    /// give exactly the logits of the stacked file with the same values. llama.cpp (LLamaSharp 0.30.0) no longer loads
    /// them ("missing tensor 'blk.0.ffn_down_exps.weight'"), so the stacked file is the reference here; its own
    /// agreement with llama.cpp is the test above.</summary>
    [Fact]
    public void Separate_expert_tensors_of_older_files_give_the_stacked_files_logits()
    {
        var stacked = LogitsAgreementTests.ModelFile("moe-Q8_0-4-2", Spec(GgmlType.Q8_0, 4, 2));
        var split = LogitsAgreementTests.ModelFile("moe-Q8_0-4-2-split", Spec(GgmlType.Q8_0, 4, 2) with { SplitExperts = true });
        var tokens = Prompt(24, 8);
        float[][] a, b;
        using (var r = new CriaRunner(stacked)) a = r.AllLogits(tokens);
        using (var r = new CriaRunner(split))
        {
            Assert.Equal("blk.0.ffn_up.3.weight", r.Model.Layers[0].Experts!.Up[3].Name);
            Assert.Equal(3 + 2 * (7 + 3 * 4), r.Model.File.Tensors.Count); // per layer 7 + 4 experts × 3 projections, no stacked tensor
            b = r.AllLogits(tokens);
        }
        for (int p = 0; p < tokens.Length; p++)
            Assert.True(a[p].SequenceEqual(b[p]), $"position {p}: the split file's logits differ from the stacked file's");
    }

    /// <summary>LoRA adapters on the attention projections apply to a mixture of experts (and move its logits); an
    /// adapter on the feed-forward projections is refused by name.</summary>
    [Fact]
    public void Attention_adapters_apply_and_feed_forward_adapters_are_refused()
    {
        var path = LogitsAgreementTests.ModelFile("moe-F32-4-2", Spec(GgmlType.F32, 4, 2));
        using var model = LlamaModel.Open(path);
        var c = model.Config;
        var shape = new Cria.Training.LlamaShape { VocabSize = c.VocabSize, Dim = c.Dim, Layers = c.LayerCount, Heads = c.HeadCount, KvHeads = c.KvHeadCount, FfnDim = c.FfnDim, ContextLength = 256 };
        string Adapter(string name, Cria.Training.LoraTarget targets)
        {
            var lay = new Cria.Training.LoraLayout(shape, new Cria.Training.LoraOptions { Rank = 4, Targets = targets });
            var p = new float[lay.Count];
            var rng = new Random(3);
            for (int i = 0; i < p.Length; i++) p[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
            string file = TestPaths.TempFile(name);
            lay.Write(file, p);
            return file;
        }
        var attention = Adapter("moe-lora-attn.gguf", Cria.Training.LoraTarget.Attention);
        var tokens = Prompt(12, 4);
        float[][] plain, adapted;
        using (var r = new CriaRunner(path)) plain = r.AllLogits(tokens);
        using (var r = new CriaRunner(path, lora: attention)) adapted = r.AllLogits(tokens);
        Assert.False(plain[^1].SequenceEqual(adapted[^1]));
        var ffn = Adapter("moe-lora-ffn.gguf", Cria.Training.LoraTarget.FfnUp);
        var e = Assert.Throws<CriaException>(() => Cria.Models.LoraAdapter.Load(ffn, model));
        Assert.Contains("feed-forward takes no adapters", e.Message);
    }

    [Fact]
    public void Malformed_mixture_of_experts_files_are_refused()
    {
        // More experts used than there are.
        var tooMany = TestPaths.TempFile("moe-bad-used.gguf");
        RandomModel.Write(tooMany, Spec(GgmlType.F32, 4, 2) with { ExtraMetadata = [("llama.expert_used_count", 5u)] });
        var e1 = Assert.Throws<ModelFormatException>(() => LlamaModel.Open(tooMany));
        Assert.Contains("expert_used_count 5", e1.Message);

        // Expert keys on a file whose feed-forward is dense: the router is missing.
        var noRouter = TestPaths.TempFile("moe-bad-router.gguf");
        RandomModel.Write(noRouter, Spec(GgmlType.F32, 0, 2) with { ExtraMetadata = [("llama.expert_count", 4u), ("llama.expert_used_count", 2u)] });
        var e2 = Assert.Throws<ModelFormatException>(() => LlamaModel.Open(noRouter));
        Assert.Contains("ffn_gate_inp", e2.Message);

        // A file that says 8 experts holding tensors of 4.
        var wrongCount = TestPaths.TempFile("moe-bad-count.gguf");
        RandomModel.Write(wrongCount, Spec(GgmlType.F32, 4, 2) with { ExtraMetadata = [("llama.expert_count", 8u)] });
        var e3 = Assert.Throws<ModelFormatException>(() => LlamaModel.Open(wrongCount));
        Assert.Contains("ffn_gate_inp", e3.Message);
    }
}
