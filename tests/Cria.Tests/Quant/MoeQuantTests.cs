using Cria.Formats;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Quant;

/// <summary>Calibrated quantization of mixture-of-experts files: the imatrix keeps one importance vector per expert
/// in llama.cpp's layout (n_expert × cols under the stacked tensor's name), the quantizer hands each expert its own
/// slice, and the calibration methods that do not handle experts refuse clearly.</summary>
public sealed class MoeQuantTests
{
    static string Model(string key, int experts, int used)
    {
        var p = TestPaths.TempFile($"moeq-{key}.gguf");
        if (!File.Exists(p))
            RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 256, VocabSize = 512, Experts = experts, ExpertsUsed = used, Seed = 90 + experts + used });
        return p;
    }

    static string Text()
    {
        var r = new Random(5);
        string[] words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "llama", "model"];
        return string.Join(' ', Enumerable.Range(0, 2000).Select(_ => words[r.Next(words.Length)]));
    }

    [Fact]
    public void Imatrix_has_one_slice_per_expert_in_llama_cpp_layout()
    {
        // Every expert used by every token: each expert's slice is the mean x² of all rows, i.e. the router's vector.
        using (var all = LlamaModel.Open(Model("all", 4, 4)))
        {
            var m = Imatrix.Collect(all, Text(), 64, 4, 2);
            var router = m.Values["blk.1.ffn_gate_inp.weight"];
            foreach (var name in new[] { "blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight" })
            {
                var v = m.Values[name];
                Assert.Equal(4 * 256, v.Length);
                for (int e = 0; e < 4; e++)
                    for (int j = 0; j < 256; j++)
                        Assert.True(Math.Abs(v[e * 256 + j] - router[j]) <= 1e-5f * Math.Max(1f, router[j]), $"{name} expert {e} column {j}");
            }
            Assert.Equal(4 * 256, m.Values["blk.1.ffn_down_exps.weight"].Length);
            Assert.DoesNotContain(m.Values.Keys, k => k.Contains(':'));
        }
        // One expert per token: the experts see different rows, so their slices differ.
        using var top1 = LlamaModel.Open(Model("top1", 4, 1));
        var t = Imatrix.Collect(top1, Text(), 64, 4, 2).Values["blk.0.ffn_up_exps.weight"];
        Assert.False(t.AsSpan(0, 256).SequenceEqual(t.AsSpan(256, 256)));
        Assert.All(t, x => Assert.True(float.IsFinite(x) && x > 0));
    }

    [Fact]
    public void Each_expert_is_quantized_with_its_own_importances()
    {
        var src = Model("top1", 4, 1);
        Imatrix im;
        using (var model = LlamaModel.Open(src)) im = Imatrix.Collect(model, Text(), 64, 4, 2);
        var outPath = TestPaths.TempFile("moeq-imatrix-q4_k_m.gguf");
        File.Delete(outPath);
        ModelQuantizer.Run(src, outPath, new QuantizeOptions { FileType = LlamaFileType.Q4_K_M, Imatrix = im.Values, ImatrixCandidates = CalibratedCandidates.Ggml, ImatrixUnbiasedRowScale = false, Threads = 2 });
        using var fin = GgufFile.Open(src);
        using var fout = GgufFile.Open(outPath);
        const string name = "blk.0.ffn_up_exps.weight";
        var tin = fin.GetTensor(name); var tout = fout.GetTensor(name);
        Assert.Equal(GgmlType.F32, fout.GetTensor("blk.0.ffn_gate_inp.weight").Type);
        int cols = 256, rows = 256;
        var all = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(fin.TensorData(tin)).ToArray();
        long rowBytes = GgmlTypeInfo.RowBytes(tout.Type, cols);
        var bytes = fout.TensorData(tout);
        for (int e = 0; e < 4; e++)
        {
            var values = all.AsSpan(e * rows * cols, rows * cols).ToArray();
            var own = ModelQuantizer.QuantizeMatrix(tout.Type, values, cols, rows, im.Values[name].AsSpan(e * cols, cols).ToArray(), 2, default, CalibratedCandidates.Ggml);
            Assert.True(bytes.Slice((int)(e * rows * rowBytes), (int)(rows * rowBytes)).SequenceEqual(own), $"expert {e}");
            if (e > 0)
            {
                var other = ModelQuantizer.QuantizeMatrix(tout.Type, values, cols, rows, im.Values[name].AsSpan(0, cols).ToArray(), 2, default, CalibratedCandidates.Ggml);
                Assert.False(other.AsSpan().SequenceEqual(own), $"expert {e}: expert 0's importances give the same bytes, so the test shows nothing");
            }
        }
    }

    [Fact]
    public void Awq_gptq_and_training_refuse_a_mixture_of_experts()
    {
        var src = Model("top1", 4, 1);
        var q = new QuantizeOptions { FileType = LlamaFileType.Q4_K_M };
        Assert.Contains("mixture-of-experts", Assert.Throws<CriaException>(() => Awq.Compute(src, Text(), q, new AwqOptions())).Message);
        Assert.Contains("mixture-of-experts", Assert.Throws<CriaException>(() => Gptq.Collect(src, Text(), new GptqOptions())).Message);
        Assert.Contains("mixture-of-experts", Assert.Throws<CriaException>(() => GgufImport.Read(src)).Message);
    }
}
