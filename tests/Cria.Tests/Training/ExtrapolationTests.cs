using Cria.Formats;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>
/// ExPO (<see cref="Extrapolation"/>): every tensor is θ_to + α(θ_to − θ_from) in θ_to's type, metadata and unchanged
/// tensors are θ_to's, a LoRA adapter at scale 1 + α is the extrapolation of its merge at scale 1, and bad input is
/// refused without leaving a file behind.
/// </summary>
public class ExtrapolationTests
{
    static float[] Floats(GgufFile f, string name)
    {
        var t = f.GetTensor(name);
        var v = new float[t.ElementCount];
        Dequantize.Row(t.Type, f.TensorData(t), v);
        return v;
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    public void Every_tensor_is_theta_to_plus_alpha_times_the_difference(GgmlType type)
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, WeightType = type, Seed = 41 };
        string from = LogitsAgreementTests.ModelFile($"expo-from-{type}", spec);
        string to = LogitsAgreementTests.ModelFile($"expo-to-{type}", spec with { Seed = 42 });
        string outPath = TestPaths.TempFile($"expo-out-{type}.gguf");
        Extrapolation.Extrapolate(from, to, 0.5f, outPath, force: true);
        using var a = GgufFile.Open(from);
        using var b = GgufFile.Open(to);
        using var o = GgufFile.Open(outPath);
        Assert.Equal(b.Tensors.Select(t => (t.Name, t.Type, string.Join(",", t.Shape))), o.Tensors.Select(t => (t.Name, t.Type, string.Join(",", t.Shape))));
        Assert.Equal(b.Metadata.Keys.OrderBy(k => k), o.Metadata.Keys.OrderBy(k => k));
        Assert.Equal(b.Metadata["general.architecture"], o.Metadata["general.architecture"]);
        int checkedTensors = 0;
        foreach (var t in b.Tensors)
        {
            var x = Floats(b, t.Name); var y = Floats(a, t.Name); var z = Floats(o, t.Name);
            bool changed = false;
            for (int i = 0; i < x.Length; i++)
            {
                float want = x[i] + 0.5f * (x[i] - y[i]);
                // F16: the exact value rounded once (half a unit in the last place).
                float tol = t.Type == GgmlType.F16 ? MathF.Abs(want) * 4.9e-4f + 3e-8f : MathF.Abs(want) * 1e-6f + 1e-9f;
                Assert.True(MathF.Abs(z[i] - want) <= tol, $"{t.Name}[{i}]: {z[i]} vs {want}");
                changed |= x[i] != y[i];
            }
            if (changed) checkedTensors++;
        }
        Assert.True(checkedTensors >= 10, $"only {checkedTensors} tensors differ between the two files");

        // α = 0 is θ_to byte for byte; α = −1 is θ_from (up to rounding).
        Extrapolation.Extrapolate(from, to, 0f, outPath, force: true);
        using (var o0 = GgufFile.Open(outPath))
            foreach (var t in b.Tensors) Assert.True(b.TensorData(t).SequenceEqual(o0.TensorData(o0.GetTensor(t.Name))), t.Name);
        Extrapolation.Extrapolate(from, to, -1f, outPath, force: true);
        using (var o1 = GgufFile.Open(outPath))
            foreach (var t in a.Tensors)
            {
                var y = Floats(a, t.Name); var z = Floats(o1, t.Name);
                for (int i = 0; i < y.Length; i++) Assert.True(MathF.Abs(z[i] - y[i]) <= MathF.Abs(y[i]) * 1e-3f + 1e-6f, $"{t.Name}[{i}]: {z[i]} vs {y[i]}");
            }
    }

    [Fact]
    public void A_lora_adapter_at_scale_1_plus_alpha_is_the_extrapolation_of_its_merge()
    {
        // θ_from = the bundled model, θ_to = it with a LoRA adapter merged at scale 1: extrapolating by α = 0.6 must give
        // the adapter merged at scale 1.6, tensor by tensor; tensors no adapter touches (the embeddings) stay as they are.
        var (adapter, _, _) = LoraTests.RandomAdapter("expo-lora", new LoraOptions { Rank = 4, Alpha = 8, Targets = LoraTarget.All });
        string m1 = TestPaths.TempFile("expo-lora-1.gguf"), m16 = TestPaths.TempFile("expo-lora-1.6.gguf"), expo = TestPaths.TempFile("expo-lora-expo.gguf");
        using (var m = LlamaModel.Open(TestPaths.Bundled()))
        {
            LoraAdapter.Merge(TestPaths.Bundled(), [(LoraAdapter.Load(adapter, m), 1f)], m1, force: true);
            LoraAdapter.Merge(TestPaths.Bundled(), [(LoraAdapter.Load(adapter, m), 1.6f)], m16, force: true);
        }
        Extrapolation.Extrapolate(TestPaths.Bundled(), m1, 0.6f, expo, force: true);
        using var want = GgufFile.Open(m16);
        using var got = GgufFile.Open(expo);
        using var basis = GgufFile.Open(TestPaths.Bundled());
        double worst = 0;
        foreach (var t in want.Tensors)
        {
            var w = Floats(want, t.Name); var g = Floats(got, t.Name);
            for (int i = 0; i < w.Length; i++) worst = Math.Max(worst, Math.Abs(w[i] - g[i]));
        }
        Assert.True(worst < 1e-5, $"max |Δ| {worst}");
        Assert.True(basis.TensorData(basis.GetTensor("token_embd.weight")).SequenceEqual(got.TensorData(got.GetTensor("token_embd.weight"))));
        Assert.False(want.TensorData(want.GetTensor("blk.0.ffn_down.weight")).SequenceEqual(basis.TensorData(basis.GetTensor("blk.0.ffn_down.weight"))));
    }

    [Fact]
    public void Bad_input_is_refused_and_leaves_no_file()
    {
        var spec = new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, Seed = 41 };
        string from = LogitsAgreementTests.ModelFile("expo-from-F32", spec with { WeightType = GgmlType.F32 });
        string to = LogitsAgreementTests.ModelFile("expo-to-F32", spec with { WeightType = GgmlType.F32, Seed = 42 });
        string other = LogitsAgreementTests.ModelFile("expo-other-shape", spec with { FfnDim = 192 });
        string deeper = LogitsAgreementTests.ModelFile("expo-other-depth", spec with { Layers = 3 });
        string q8 = LogitsAgreementTests.ModelFile("expo-q8", spec with { WeightType = GgmlType.Q8_0, Seed = 43 });
        string q8b = LogitsAgreementTests.ModelFile("expo-q8b", spec with { WeightType = GgmlType.Q8_0, Seed = 44 });
        string dir = Path.Combine(Path.GetTempPath(), "cria-expo-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        string outPath = Path.Combine(dir, "out.gguf");
        try
        {
            Assert.Contains("ffn", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(from, other, 0.5f, outPath)).Message);
            Assert.Contains("has no tensor", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(from, deeper, 0.5f, outPath)).Message);
            Assert.Contains("has no tensor", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(deeper, from, 0.5f, outPath)).Message);
            Assert.Contains("then quantize", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(q8, q8b, 0.5f, outPath)).Message);
            Assert.Contains("finite", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(from, to, float.NaN, outPath)).Message);
            Assert.Contains("same file", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(from, to, 0.5f, to, force: true)).Message);
            // A step that overflows F16 fails while writing: neither the output nor a temporary file is left.
            string fromH = LogitsAgreementTests.ModelFile("expo-from-F16", spec with { WeightType = GgmlType.F16 });
            string toH = LogitsAgreementTests.ModelFile("expo-to-F16", spec with { WeightType = GgmlType.F16, Seed = 42 });
            Assert.Contains("F16's range", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(fromH, toH, 1e7f, outPath)).Message);
            Assert.Empty(Directory.GetFiles(dir));
            Extrapolation.Extrapolate(from, to, 0.5f, outPath);
            Assert.Contains("exists", Assert.Throws<CriaException>(() => Extrapolation.Extrapolate(from, to, 0.5f, outPath)).Message);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
