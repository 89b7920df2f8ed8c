using Cria.Formats;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Tests.Oracle;
using LLama;
using LLama.Native;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>
/// <c>cria quantize</c> against llama.cpp's own quantizer (llama_model_quantize through LLamaSharp) on the same F32
/// file: every tensor's chosen type and every byte must be equal, for the plain types and the K-quant mixes.
/// </summary>
public sealed class QuantizerOracleTests(ITestOutputHelper output)
{
    static readonly Lazy<string> Source = new(() =>
    {
        // 8 layers so that the mixes' layer rules (use_more_bits, n/8, n/16, the first attn_v) all pick something.
        var p = TestPaths.TempFile("quant-src-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 77 });
        return p;
    });

    // Rows of 320 are not a multiple of 256: the K types take llama.cpp's fallbacks.
    static readonly Lazy<string> OddSource = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-odd-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 4, KvHeads = 4, FfnDim = 320, VocabSize = 512, Seed = 78 });
        return p;
    });

    // F16 input with TinyLlama's 22 layers (the shape the timing in docs/quantization.md uses).
    static readonly Lazy<string> F16Source = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-f16-22.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 22, Heads = 8, KvHeads = 1, FfnDim = 256, VocabSize = 512, Seed = 79, WeightType = GgmlType.F16 });
        return p;
    });

    // Mixtral's 8 experts (llama.cpp's n_expert == 8 rules: attn_v/attn_k Q8_0, attn_output Q5_K) and 4 (none of them);
    // the router stays F32, the stacked expert tensors take their names' rules.
    static readonly Lazy<string> MoeSource = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-moe8-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 2, FfnDim = 256, VocabSize = 512, Experts = 8, ExpertsUsed = 2, Seed = 80 });
        return p;
    });
    static readonly Lazy<string> Moe4Source = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-moe4-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 256, VocabSize = 512, Experts = 4, ExpertsUsed = 2, Seed = 81 });
        return p;
    });

    // OLMo 2 (arch olmo2): the same matrix names, and four more norms per layer that stay F32.
    static readonly Lazy<string> Olmo2Source = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-olmo2-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 83, Architecture = "olmo2" });
        return p;
    });

    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q3_K_M")]
    [InlineData("Q2_K")]
    [InlineData("Q8_0")]
    public void Olmo2_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(Olmo2Source.Value, typeName, "olmo2");

    // OLMoE (arch olmoe) with 8 experts: the n_expert == 8 rules read from olmoe.expert_count.
    static readonly Lazy<string> OlmoeSource = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-olmoe-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 8, FfnDim = 256, VocabSize = 512, Experts = 8, ExpertsUsed = 2, Seed = 84, Architecture = "olmoe" });
        return p;
    });

    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q2_K")]
    public void Olmoe_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(OlmoeSource.Value, typeName, "olmoe");

    public static TheoryData<string> FileTypes() => new()
    {
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
        // the lattice mixes llama.cpp writes without an importance matrix (the others: LatticeMixTests)
        "IQ3_S", "IQ3_M",
    };

    static LLamaFtype ToLlama(LlamaFileType t) => (LLamaFtype)(int)t;

    void CompareWithLlamaCpp(string src, string typeName, string tag)
    {
        LlamaCpp.EnsureLoaded();
        var ftype = QuantMix.Parse(typeName);
        string cria = TestPaths.TempFile($"{tag}-{typeName}-cria.gguf"), llama = TestPaths.TempFile($"{tag}-{typeName}-llama.gguf");
        File.Delete(cria); File.Delete(llama);
        var report = ModelQuantizer.Run(src, cria, new QuantizeOptions { FileType = ftype, Threads = 2 });
        Assert.True(LLamaQuantizer.Quantize(src, llama, ToLlama(ftype), 2, true, true), "llama.cpp's quantizer failed");

        using var a = GgufFile.Open(cria);
        using var b = GgufFile.Open(llama);
        Assert.Equal(b.Tensors.Select(t => t.Name), a.Tensors.Select(t => t.Name)); // same order too
        Assert.Equal(b.Get<uint>("general.file_type"), a.Get<uint>("general.file_type"));
        int differing = 0;
        var types = new SortedDictionary<string, int>();
        foreach (var tb in b.Tensors)
        {
            var ta = a.GetTensor(tb.Name);
            Assert.True(tb.Type == ta.Type, $"{typeName}: {tb.Name} is {ta.Type} in Cria, {tb.Type} in llama.cpp");
            Assert.Equal(tb.Shape, ta.Shape);
            if (!a.TensorData(ta).SequenceEqual(b.TensorData(tb))) differing++;
            types[tb.Type.ToString()] = types.GetValueOrDefault(tb.Type.ToString()) + 1;
        }
        output.WriteLine($"{typeName}: {b.Tensors.Count} tensors ({string.Join(", ", types.Select(kv => $"{kv.Value}×{kv.Key}"))}), {report.BitsPerWeight:F3} bpw, {differing} differ in bytes");
        Assert.Equal(0, differing);
        Assert.True(File.ReadAllBytes(cria).AsSpan().SequenceEqual(File.ReadAllBytes(llama)), "the files differ outside the tensor data");
    }

    [Theory]
    [MemberData(nameof(FileTypes))]
    public void Same_types_and_bytes_as_llama_cpp(string typeName) => CompareWithLlamaCpp(Source.Value, typeName, "even");

    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q3_K_M")]
    [InlineData("IQ3_M")]
    public void F16_input_with_22_layers_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(F16Source.Value, typeName, "f16");

    [Theory]
    [MemberData(nameof(FileTypes))]
    public void Mixture_of_experts_with_8_experts_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(MoeSource.Value, typeName, "moe8");

    static readonly Lazy<string> MoeSplitSource = new(() =>
    {
        var p = TestPaths.TempFile("quant-src-moe8-split-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 2, FfnDim = 256, VocabSize = 512, Experts = 8, ExpertsUsed = 2, Seed = 82, SplitExperts = true });
        return p;
    });

    /// <summary>Older files with one ffn_down per expert: the layer rules read the layer from the name, as llama.cpp's.</summary>
    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q3_K_M")]
    public void Mixture_of_experts_with_separate_expert_tensors_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(MoeSplitSource.Value, typeName, "moe8split");

    [Theory]
    [InlineData("Q4_K_M")]
    [InlineData("Q2_K")]
    public void Mixture_of_experts_with_4_experts_matches_llama_cpp(string typeName) => CompareWithLlamaCpp(Moe4Source.Value, typeName, "moe4");

    [Theory]
    [InlineData("Q4_K_M")] // Q4_K rows of 320 → Q5_0, Q6_K → Q8_0
    [InlineData("Q5_K_S")] // Q5_K → Q5_1
    [InlineData("Q6_K")]
    [InlineData("Q2_K")]   // Q3_K → Q4_0
    [InlineData("Q3_K_S")]
    [InlineData("IQ4_XS")] // IQ4_XS → IQ4_NL
    [InlineData("IQ3_M")]  // IQ3_S → IQ4_NL
    public void Fallback_types_for_rows_not_a_multiple_of_256_match_llama_cpp(string typeName) => CompareWithLlamaCpp(OddSource.Value, typeName, "odd");
}
