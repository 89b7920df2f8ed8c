using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;
using NativeLora = LLama.Native.LoraAdapter;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Oracle;

/// <summary>
/// OLMo 2 GGUF files (arch <c>olmo2</c>: no pre-norms, RMS norms over the whole q and k projections before RoPE,
/// post-norms of the attention and feed-forward outputs, NEOX RoPE): the same logits as llama.cpp at every position
/// and the same greedy continuation, a row's logits independent of its batch, LoRA adapters as llama.cpp applies
/// them, malformed files refused, and the tools that assume llama's block refusing clearly.
/// </summary>
public class Olmo2Tests(ITestOutputHelper output)
{
    static RandomModelSpec Spec(GgmlType type, int kvHeads = 2) => new()
    {
        Dim = 256, Layers = 3, Heads = 8, KvHeads = kvHeads, FfnDim = 512, VocabSize = 512,
        WeightType = type, Seed = 41 + (int)type + kvHeads, Architecture = "olmo2",
    };

    static int[] Prompt(int n, int seed) => LogitsAgreementTests.Prompt(n, 512, seed);

    static float MaxDiff(float[][] a, float[][] b)
    {
        float worst = 0;
        for (int p = 0; p < a.Length; p++)
            for (int i = 0; i < a[p].Length; i++) worst = Math.Max(worst, Math.Abs(a[p][i] - b[p][i]));
        return worst;
    }

    [Theory]
    [InlineData(GgmlType.F32, 2)]   // GQA, 4 query heads per KV head
    [InlineData(GgmlType.F32, 8)]   // multi-head, as the released OLMo 2 models
    [InlineData(GgmlType.F16, 2)]
    [InlineData(GgmlType.Q8_0, 2)]
    [InlineData(GgmlType.Q4_K, 2)]
    public void Logits_and_greedy_tokens_agree_with_llama_cpp(GgmlType type, int kvHeads)
    {
        var path = LogitsAgreementTests.ModelFile($"olmo2-{type}-{kvHeads}", Spec(type, kvHeads));
        OracleChecks.AgreesWithLlamaCpp(output, path, type, Prompt(40, 5), $"olmo2 {type}, {kvHeads} KV heads", c => Assert.True(c.IsOlmo2));
    }

    /// <summary>OLMoE (arch <c>olmoe</c>): llama's pre-norms, the QK-norm, NEOX RoPE and a mixture whose chosen
    /// weights are not renormalised. Renormalising them (Mixtral's rule) fails every case.</summary>
    [Theory]
    [InlineData(GgmlType.F32, 8, 2)]
    [InlineData(GgmlType.F32, 16, 4)]
    [InlineData(GgmlType.F32, 16, 8)]  // OLMoE-1B-7B's 8 per token: the one-row decode step runs two gate/up jobs
    [InlineData(GgmlType.Q8_0, 8, 2)]
    [InlineData(GgmlType.Q4_K, 8, 2)]
    public void Olmoe_logits_and_greedy_tokens_agree_with_llama_cpp(GgmlType type, int experts, int used)
    {
        var spec = Spec(type, 8) with { Architecture = "olmoe", Experts = experts, ExpertsUsed = used, FfnDim = 256 };
        var path = LogitsAgreementTests.ModelFile($"olmoe-{type}-{experts}-{used}", spec);
        OracleChecks.AgreesWithLlamaCpp(output, path, type, Prompt(40, 5), $"olmoe {type}, {used} of {experts} experts", c => Assert.True(c.IsOlmoe && c.QkNorm && !c.MoeRenormalize), routed: true);
    }

    /// <summary>Three sequences decoded together give every row the logits it gets alone, bit for bit, over a prompt
    /// step and eight one-token steps.</summary>
    [Fact]
    public void A_rows_logits_do_not_depend_on_its_batch()
    {
        var path = LogitsAgreementTests.ModelFile("olmo2-F32-2", Spec(GgmlType.F32));
        OracleChecks.RowsMatchAlone(path, seed => Prompt(20, seed));
    }

    /// <summary>The same for OLMoE with 8 of 16 experts per token, where a one-row step splits the experts' gate/up
    /// products over two matrix jobs: still the grouped route's logits, bit for bit.</summary>
    [Fact]
    public void An_olmoe_rows_logits_do_not_depend_on_its_batch()
    {
        var path = LogitsAgreementTests.ModelFile("olmoe-F32-16-8", Spec(GgmlType.F32, 8) with { Architecture = "olmoe", Experts = 16, ExpertsUsed = 8, FfnDim = 256 });
        OracleChecks.RowsMatchAlone(path, seed => Prompt(20, seed));
    }

    /// <summary>The KV position shift (<c>--kv-shift</c>) re-rotates cached keys with <see cref="ModelConfig.Rope"/>: in
    /// either layout, a key rotated for position p and then by Δ is the key rotated for p + Δ.</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("olmo2")]
    public void A_rotated_key_shifts_to_a_new_position_in_its_rope_layout(string arch)
    {
        var c = new ModelConfig { Architecture = arch, HeadDim = 16, RopeDim = 16, RopeFreqBase = 10000f, ContextLength = 4096, HeadCount = 2, KvHeadCount = 2, Dim = 32 };
        var rng = new Random(4);
        var x = Enumerable.Range(0, 32).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        float[] cs = new float[16], rot = new float[16];
        var shifted = (float[])x.Clone();
        c.RopeCache(37, cs); c.Rope(shifted, 2, cs);
        c.RopeRotation(250, rot); c.Rope(shifted, 2, rot);
        var direct = (float[])x.Clone();
        c.RopeCache(287, cs); c.Rope(direct, 2, cs);
        for (int i = 0; i < 32; i++) Assert.True(Math.Abs(shifted[i] - direct[i]) < 1e-4, $"{arch} dim {i}: {shifted[i]} vs {direct[i]}");
        // The layouts differ: NEOX pairs (i, i + 8), the llama layout (2i, 2i + 1).
        var other = c with { Architecture = arch == "llama" ? "olmo2" : "llama" };
        var y = (float[])x.Clone();
        other.Rope(y, 2, cs);
        Assert.True(y.Zip(direct).Max(p => Math.Abs(p.First - p.Second)) > 1e-2);
    }

    /// <summary>A LoRA adapter written for an olmo2 model (llama.cpp checks that the adapter's architecture is the
    /// model's) gives the logits llama.cpp gives with it; a llama adapter of the same shapes is refused.</summary>
    [Fact]
    public void Lora_adapters_apply_as_in_llama_cpp()
    {
        var path = LogitsAgreementTests.ModelFile("olmo2-F32-2", Spec(GgmlType.F32));
        ModelConfig c;
        using (var m = LlamaModel.Open(path)) c = m.Config;
        var shape = new Cria.Training.LlamaShape { VocabSize = c.VocabSize, Dim = c.Dim, Layers = c.LayerCount, Heads = c.HeadCount, KvHeads = c.KvHeadCount, FfnDim = c.FfnDim, ContextLength = 256 };
        var lay = new Cria.Training.LoraLayout(shape, new Cria.Training.LoraOptions { Rank = 4, Alpha = 8, Targets = Cria.Training.LoraTarget.All });
        var p = new float[lay.Count];
        var rng = new Random(5);
        for (int i = 0; i < p.Length; i++) p[i] = (float)(rng.NextDouble() - 0.5) * 0.2f;
        string llamaAdapter = TestPaths.TempFile("olmo2-lora-llama.gguf"), olmoAdapter = TestPaths.TempFile("olmo2-lora.gguf");
        lay.Write(llamaAdapter, p);
        using (var f = GgufFile.Open(llamaAdapter))
        {
            var w = new GgufWriter().CopyMetadataFrom(f).Set("general.architecture", "olmo2");
            foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Shape.ToArray(), t.Type, f.TensorData(t).ToArray());
            w.Write(olmoAdapter);
        }
        var tokens = Prompt(24, 6);
        float[][] plain, adapted, reference;
        using (var r = new CriaRunner(path)) plain = r.AllLogits(tokens);
        using (var r = new CriaRunner(path, lora: olmoAdapter)) adapted = r.AllLogits(tokens);
        using (var ll = new LlamaCpp(path))
        {
            var h = ll.Weights.NativeHandle.LoadLoraFromFile(olmoAdapter);
            Span<(NativeLora, float)> set = [(h, 1f)];
            ll.Context.NativeHandle.SetLoraAdapters(set);
            reference = ll.AllLogits(tokens);
        }
        float moved = MaxDiff(plain, adapted), vsCpp = MaxDiff(adapted, reference);
        output.WriteLine($"olmo2 LoRA r=4 on all projections: moves logits by up to {moved:F3}; Cria vs llama.cpp {vsCpp:E2}");
        Assert.True(moved > 0.05, $"the adapter moves the logits by only {moved}");
        Assert.True(vsCpp < 1e-4, $"Cria with the adapter differs from llama.cpp by {vsCpp}");
        var e = Assert.Throws<CriaException>(() => new CriaRunner(path, lora: llamaAdapter).Dispose());
        Assert.Contains("'llama' model, not olmo2", e.Message);
    }

    /// <summary>Files that claim olmo2 but lack a QK-norm, carry one of the wrong size, rotate only part of each head,
    /// or use OLMo 3's sliding window are refused with <see cref="ModelFormatException"/> naming what is wrong.</summary>
    [Fact]
    public void Malformed_olmo2_files_are_refused()
    {
        var good = LogitsAgreementTests.ModelFile("olmo2-F32-2", Spec(GgmlType.F32));
        string Edit(string name, Action<GgufWriter> meta, Func<string, long[], (string Name, long[] Shape)?> tensor)
        {
            string outPath = TestPaths.TempFile(name + ".gguf");
            using var f = GgufFile.Open(good);
            var w = new GgufWriter().CopyMetadataFrom(f);
            meta(w);
            foreach (var t in f.Tensors)
            {
                if (tensor(t.Name, t.Shape.ToArray()) is not { } nt) continue;
                var data = f.TensorData(t).ToArray();
                long n = nt.Shape.Aggregate(1L, (a, b) => a * b);
                w.AddTensor(nt.Name, nt.Shape, t.Type, data.AsMemory(0, (int)Math.Min(data.Length, n * 4)));
            }
            w.Write(outPath);
            return outPath;
        }
        string Refused(string file)
        {
            var e = Assert.Throws<ModelFormatException>(() => LlamaModel.Open(file).Dispose());
            output.WriteLine(e.Message);
            return e.Message;
        }
        Assert.Contains("blk.1.attn_q_norm.weight", Refused(Edit("olmo2-no-qnorm", _ => { }, (n, s) => n == "blk.1.attn_q_norm.weight" ? null : (n, s))));
        Assert.Contains("blk.0.attn_k_norm.weight", Refused(Edit("olmo2-short-knorm", _ => { }, (n, s) => n == "blk.0.attn_k_norm.weight" ? (n, [s[0] / 2]) : (n, s))));
        Assert.Contains("rope.dimension_count", Refused(Edit("olmo2-partial-rope", w => w.Set("olmo2.rope.dimension_count", 16u), (n, s) => (n, s))));
        Assert.Contains("sliding-window", Refused(Edit("olmo2-swa", w => w.Set("olmo2.attention.sliding_window", 4096u), (n, s) => (n, s))));
        // A llama file relabelled olmo2 lacks the QK-norms.
        var llama = LogitsAgreementTests.ModelFile("olmo2-llama-base", Spec(GgmlType.F32) with { Architecture = "llama" });
        string relabelled = TestPaths.TempFile("olmo2-relabelled.gguf");
        using (var f = GgufFile.Open(llama))
        {
            var w = new GgufWriter();
            foreach (var (k, v) in f.Metadata) w.Set(k.StartsWith("llama.") ? "olmo2." + k[6..] : k, v);
            w.Set("general.architecture", "olmo2");
            foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Shape.ToArray(), t.Type, f.TensorData(t).ToArray());
            w.Write(relabelled);
        }
        Assert.Contains("attn_q_norm", Refused(relabelled));

        // OLMoE: its k norm spans the embedding, so KV heads must equal heads; it needs experts; olmo2 may not have them.
        var olmoe = LogitsAgreementTests.ModelFile("olmoe-F32-8-2", Spec(GgmlType.F32, 8) with { Architecture = "olmoe", Experts = 8, ExpertsUsed = 2, FfnDim = 256 });
        string EditOlmoe(string name, Action<GgufWriter> meta, Func<string, bool> keep)
        {
            string outPath = TestPaths.TempFile(name + ".gguf");
            using var f = GgufFile.Open(olmoe);
            var w = new GgufWriter().CopyMetadataFrom(f);
            meta(w);
            foreach (var t in f.Tensors) if (keep(t.Name)) w.AddTensor(t.Name, t.Shape.ToArray(), t.Type, f.TensorData(t).ToArray());
            w.Write(outPath);
            return outPath;
        }
        Assert.Contains("head_count_kv must equal head_count", Refused(EditOlmoe("olmoe-gqa", w => w.Set("olmoe.attention.head_count_kv", 4u), _ => true)));
        Assert.Contains("olmoe needs expert_count", Refused(EditOlmoe("olmoe-dense", w => w.Set("olmoe.expert_count", 0u).Set("olmoe.expert_used_count", 0u), _ => true)));
        Assert.Contains("blk.1.attn_k_norm.weight", Refused(EditOlmoe("olmoe-no-knorm", _ => { }, n => n != "blk.1.attn_k_norm.weight")));
        Assert.Contains("dense architecture", Refused(Edit("olmo2-experts", w => w.Set("olmo2.expert_count", 4u).Set("olmo2.expert_used_count", 2u), (n, s) => (n, s))));
    }

    /// <summary>The tools built on llama's block refuse an olmo2 model by name: AWQ (it folds scales into pre-norms),
    /// the trainer and Fisher (they train llama), LoRAM pruning, and the down-column neuron view.</summary>
    [Fact]
    public void Tools_that_assume_llamas_block_refuse_olmo2()
    {
        var path = LogitsAgreementTests.ModelFile("olmo2-F32-2", Spec(GgmlType.F32));
        using var model = LlamaModel.Open(path);
        Assert.Contains("pre-norms", Assert.Throws<CriaException>(() => Cria.Quantization.Awq.Collect(model, "some text", new Cria.Quantization.AwqOptions())).Message);
        Assert.Contains("'olmo2' model", Assert.Throws<CriaException>(() => Cria.Training.GgufImport.Read(path)).Message);
        Assert.Contains("'olmo2' model", Assert.Throws<CriaException>(() => Cria.Training.Loram.Prune(path, TestPaths.TempFile("olmo2-pruned.gguf"), 0.5)).Message);
        Assert.Contains("--view up", Assert.Throws<CriaException>(() => Cria.Interpretability.NeuronLens.Vectors(model, 0, Cria.Interpretability.NeuronView.Down)).Message);
        Assert.Equal(model.Config.FfnDim * model.Config.Dim, Cria.Interpretability.NeuronLens.Vectors(model, 0, Cria.Interpretability.NeuronView.Up).Length);
    }
}
