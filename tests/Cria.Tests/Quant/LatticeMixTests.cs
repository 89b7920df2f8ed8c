using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Inference;
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
/// <c>cria quantize</c> in llama.cpp's lattice mixes (IQ3_M … IQ1_S) and Q2_K_S. The mixes llama.cpp writes without an
/// importance matrix (IQ3_S, IQ3_M) are compared file to file in <see cref="QuantizerOracleTests"/>. The others need
/// one, which LLamaSharp's quantize API cannot pass: both refuse them without one, and with one Cria's file holds, tensor
/// by tensor, the bytes of ggml's own quantizer given the same importances, and llama.cpp runs it with Cria's logits.
/// </summary>
public sealed class LatticeMixTests(ITestOutputHelper output)
{
    static readonly Lazy<string> Source = new(() =>
    {
        var p = TestPaths.TempFile("lattice-mix-src-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 8, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 91 });
        return p;
    });

    public static TheoryData<string> NeedImatrix() => new() { "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S", "Q2_K_S" };

    [Theory]
    [MemberData(nameof(NeedImatrix))]
    public void Without_an_imatrix_both_refuse(string typeName)
    {
        LlamaCpp.EnsureLoaded();
        var ftype = QuantMix.Parse(typeName);
        string cria = TestPaths.TempFile($"lattice-refuse-{typeName}-cria.gguf"), llama = TestPaths.TempFile($"lattice-refuse-{typeName}-llama.gguf");
        File.Delete(cria); File.Delete(llama);
        Assert.False(LLamaQuantizer.Quantize(Source.Value, llama, (LLamaFtype)(int)ftype, 2, true, true), $"llama.cpp wrote {typeName} without an imatrix");
        var e = Assert.Throws<CriaException>(() => ModelQuantizer.Run(Source.Value, cria, new QuantizeOptions { FileType = ftype, Threads = 2 }));
        output.WriteLine($"{typeName}: {e.Message}");
        Assert.Contains("importance matrix", e.Message);
        Assert.False(File.Exists(cria), "a refused quantization left a file");
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(cria)!, Path.GetFileName(cria) + "*"));
    }

    /// <summary>A random importance per input column of every block matrix and the output head (what an imatrix file holds).</summary>
    static Dictionary<string, float[]> RandomImatrix(GgufFile f, int seed)
    {
        var rng = new Random(seed);
        var im = new Dictionary<string, float[]>();
        foreach (var t in f.Tensors)
            if (t.Shape.Length == 2 && (t.Name.StartsWith("blk.", StringComparison.Ordinal) || t.Name == "output.weight"))
            {
                var v = new float[t.RowLength];
                for (int j = 0; j < v.Length; j++) v[j] = MathF.Exp((float)(rng.NextDouble() * 6 - 3));
                im[t.Name] = v;
            }
        return im;
    }

    public static TheoryData<string, string> WithImatrix() => new()
    {
        // the per-tensor types llama-quant.cpp's rules give this 8-layer, GQA-4 model: "name=type" for a few tensors
        { "IQ2_XXS", "token_embd.weight=Q2_K output.weight=Q5_K blk.0.attn_v.weight=Q4_K blk.0.ffn_down.weight=Q2_K blk.1.ffn_down.weight=IQ2_XXS blk.3.attn_output.weight=IQ2_XXS blk.3.attn_q.weight=IQ2_XXS" },
        { "IQ2_XS", "token_embd.weight=Q2_K output.weight=Q5_K blk.0.ffn_down.weight=Q2_K blk.5.ffn_gate.weight=IQ2_XS" },
        { "IQ2_S", "token_embd.weight=IQ3_S output.weight=Q5_K blk.0.ffn_down.weight=IQ3_S blk.2.attn_output.weight=IQ3_S blk.2.ffn_up.weight=IQ2_XS" },
        { "IQ2_M", "token_embd.weight=IQ3_S blk.0.ffn_down.weight=IQ3_S blk.7.ffn_down.weight=IQ2_S blk.4.attn_k.weight=IQ2_S" },
        { "IQ1_S", "token_embd.weight=Q2_K output.weight=Q5_K blk.0.ffn_down.weight=Q2_K blk.6.attn_output.weight=IQ2_XXS blk.6.ffn_up.weight=IQ1_S" },
        { "IQ1_M", "token_embd.weight=Q2_K blk.6.attn_output.weight=IQ2_XXS blk.6.ffn_gate.weight=IQ1_M" },
        { "IQ3_XXS", "token_embd.weight=IQ3_S output.weight=Q5_K blk.0.attn_v.weight=Q4_K blk.0.attn_q.weight=IQ2_S blk.0.attn_k.weight=IQ2_S blk.0.attn_output.weight=IQ3_S blk.0.ffn_down.weight=IQ3_XXS" },
        { "IQ3_XS", "token_embd.weight=IQ3_S output.weight=Q6_K blk.0.attn_q.weight=IQ3_XXS blk.0.ffn_gate.weight=IQ3_S blk.1.ffn_gate.weight=IQ3_XXS blk.6.ffn_up.weight=IQ3_XXS blk.7.ffn_up.weight=IQ3_S blk.0.attn_v.weight=Q4_K" },
        { "Q2_K_S", "output.weight=Q6_K blk.0.ffn_down.weight=Q4_K blk.1.ffn_down.weight=Q2_K blk.0.attn_v.weight=Q4_K" },
    };

    [Theory]
    [MemberData(nameof(WithImatrix))]
    public void With_an_imatrix_every_tensor_is_ggmls_bytes_and_llama_cpp_runs_the_file(string typeName, string someTypes)
    {
        var ftype = QuantMix.Parse(typeName);
        string path = TestPaths.TempFile($"lattice-mix-{typeName}.gguf");
        File.Delete(path);
        Dictionary<string, float[]> imatrix;
        using (var src = GgufFile.Open(Source.Value)) imatrix = RandomImatrix(src, 5 + (int)ftype);
        // Ggml alone: the bytes llama-quantize --imatrix writes
        ModelQuantizer.Run(Source.Value, path, new QuantizeOptions { FileType = ftype, Threads = 2, Imatrix = imatrix, ImatrixCandidates = CalibratedCandidates.Ggml, ImatrixUnbiasedRowScale = false });

        using (var src = GgufFile.Open(Source.Value))
        using (var q = GgufFile.Open(path))
        {
            foreach (var pair in someTypes.Split(' '))
            {
                var (name, type) = (pair.Split('=')[0], Enum.Parse<GgmlType>(pair.Split('=')[1]));
                Assert.True(q.GetTensor(name).Type == type, $"{typeName}: {name} is {q.GetTensor(name).Type}, llama.cpp's rules give {type}");
            }
            var types = new SortedDictionary<string, int>();
            foreach (var t in q.Tensors)
            {
                types[t.Type.ToString()] = types.GetValueOrDefault(t.Type.ToString()) + 1;
                if (t.Type == GgmlType.F32) continue;
                float[] values = MemoryMarshal.Cast<byte, float>(src.TensorData(src.GetTensor(t.Name))).ToArray();
                byte[] expected = GgmlQuantizer.Quantize(t.Type, values, (int)t.RowLength, imatrix.GetValueOrDefault(t.Name));
                Assert.True(q.TensorData(t).SequenceEqual(expected), $"{typeName}: {t.Name} ({t.Type}) differs from ggml_quantize_chunk's bytes");
            }
            output.WriteLine($"{typeName}: {string.Join(", ", types.Select(kv => $"{kv.Value}×{kv.Key}"))}, every quantized tensor ggml's bytes");
        }

        // llama.cpp loads Cria's file and computes what Cria computes: 16 one-token sequences (no attention mixing, so an
        // activation that rounds the other way cannot spread through the KV cache) agree to 1e-4 in at least 12.
        var (exact, worst, argmax) = OracleChecks.SingleTokenAgreement(path);
        output.WriteLine($"{typeName}: llama.cpp runs Cria's file: {exact}/16 single-token sequences within 1e-4 (max |Δ| {worst:E2}), argmax {argmax}/16");
        Assert.True(exact >= 12, $"{typeName}: only {exact}/16 single-token sequences agree with llama.cpp to 1e-4");
        Assert.True(argmax >= 15, $"{typeName}: argmax differs in {16 - argmax} of 16");
    }
}
