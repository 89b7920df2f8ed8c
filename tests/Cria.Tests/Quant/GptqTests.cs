using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>GPTQ error feedback (<see cref="Quantize.RowGptq"/>, <see cref="Gptq"/>).</summary>
public sealed class GptqTests(ITestOutputHelper output)
{
    static readonly GgmlType[] Types = [GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS];

    static float Gauss(Random r) => (float)(Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()));

    /// <summary>[rows, cols] Gaussian weights with a few outliers.</summary>
    static float[] Weights(int rows, int cols, int seed)
    {
        var r = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = 0.02f * Gauss(r) * (r.Next(50) == 0 ? 4 : 1);
        return w;
    }

    /// <summary>Mean Gram matrix ([cols, cols]) of correlated inputs: x = channel scale ∘ (AR(1) chain + a shared factor).</summary>
    static float[] CorrelatedGram(int cols, int tokens, int seed)
    {
        var r = new Random(seed);
        var scale = new float[cols];
        for (int j = 0; j < cols; j++) scale[j] = 0.3f + 3f * (float)r.NextDouble() * (r.Next(16) == 0 ? 4 : 1);
        var g = new double[cols * cols];
        var x = new float[cols];
        for (int t = 0; t < tokens; t++)
        {
            float common = Gauss(r), prev = 0;
            for (int j = 0; j < cols; j++)
            {
                prev = 0.8f * prev + 0.6f * Gauss(r);
                x[j] = scale[j] * (prev + 0.7f * common);
            }
            for (int i = 0; i < cols; i++)
                for (int j = 0; j < cols; j++) g[i * cols + j] += x[i] * x[j];
        }
        return g.Select(v => (float)(v / tokens)).ToArray();
    }

    static byte[] Plain(GgmlType t, float[] w, int rows, int cols) => ModelQuantizer.QuantizeMatrix(t, w, cols, rows, null, 1);

    [Fact]
    public void A_diagonal_gram_gives_the_reference_quantizers_bytes()
    {
        // With no correlation between inputs U is diagonal, no error is fed forward, and every column keeps the level
        // ggml's quantizer gave it: GPTQ reduces exactly to round-to-nearest.
        const int cols = 512, rows = 24;
        var w = Weights(rows, cols, 3);
        var diag = new float[cols * cols];
        var r = new Random(4);
        for (int j = 0; j < cols; j++) diag[j * cols + j] = 0.1f + (float)r.NextDouble();
        foreach (var gram in new[] { diag, Identity(cols) })
        {
            var f = GptqFactor.FromGram(gram, cols);
            foreach (var t in Types)
                Assert.Equal(Plain(t, w, rows, cols), ModelQuantizer.QuantizeMatrixGptq(t, w, cols, rows, f, GptqScales.Reference, 1));
        }
    }

    static float[] Identity(int n)
    {
        var g = new float[n * n];
        for (int i = 0; i < n; i++) g[i * n + i] = 1;
        return g;
    }

    [Fact]
    public void Gptq_lowers_the_output_error_with_correlated_inputs_and_decodes()
    {
        const int cols = 512, rows = 32;
        var w = Weights(rows, cols, 7);
        var gram = CorrelatedGram(cols, 3000, 8);
        var f = GptqFactor.FromGram(gram, cols);
        foreach (var t in Types)
        {
            foreach (var scales in new[] { GptqScales.Reference, GptqScales.Weighted })
            {
                var plain = Plain(t, w, rows, cols);
                var q = ModelQuantizer.QuantizeMatrixGptq(t, w, cols, rows, f, scales, 2);
                double ePlain = Gptq.OutputError(t, plain, w, rows, cols, gram), eGptq = Gptq.OutputError(t, q, w, rows, cols, gram);
                // Decodes with Cria's Dequantize to values near the weights (unweighted error within 3× round-to-nearest's:
                // GPTQ trades per-weight error for output error).
                double mseP = 0, mseG = 0;
                var y = new float[cols];
                int rb = (int)GgmlTypeInfo.RowBytes(t, cols);
                for (int o = 0; o < rows; o++)
                {
                    Dequantize.Row(t, q.AsSpan(o * rb, rb), y);
                    for (int j = 0; j < cols; j++) { double d = y[j] - w[o * cols + j]; mseG += d * d; Assert.True(float.IsFinite(y[j])); }
                    Dequantize.Row(t, plain.AsSpan(o * rb, rb), y);
                    for (int j = 0; j < cols; j++) { double d = y[j] - w[o * cols + j]; mseP += d * d; }
                }
                output.WriteLine($"{t,-5} {scales,-9}: output error Σ dᵀHd plain {ePlain:E3} → GPTQ {eGptq:E3} ({eGptq / ePlain:P1}); weight MSE ×{mseG / mseP:F2}");
                Assert.True(eGptq < 0.8 * ePlain, $"{t} {scales}: GPTQ output error {eGptq:E3} not below 80 % of plain {ePlain:E3}");
                Assert.True(mseG < 3 * mseP, $"{t}: weight error {mseG:E3} vs plain {mseP:E3}");
            }
        }
    }

    [Fact]
    public void Each_level_lands_in_its_own_element()
    {
        // SetLevel writes element e's bits and nothing else, and the levels decode as an affine function of the level.
        var r = new Random(5);
        foreach (var t in Types)
        {
            int qk = GgmlTypeInfo.BlockSize(t), bs = GgmlTypeInfo.BlockBytes(t);
            var x = new float[qk];
            for (int j = 0; j < qk; j++) x[j] = Gauss(r);
            var blk = new byte[bs];
            Quantize.Row(t, x, blk);
            var before = new float[qk];
            var after = new float[qk];
            Dequantize.Row(t, blk, before);
            int levels = t switch { GgmlType.Q2_K => 4, GgmlType.Q3_K => 8, GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q5_K => 32, GgmlType.Q6_K => 64, _ => 16 };
            for (int e = 0; e < qk; e += 3)
            {
                var b = (byte[])blk.Clone();
                float prev = float.NaN;
                for (int q = 0; q < levels; q++)
                {
                    Quantize.SetLevel(t, b, e, q);
                    Dequantize.Row(t, b, after);
                    for (int j = 0; j < qk; j++) if (j != e) Assert.Equal(before[j], after[j]);
                    if (t is GgmlType.IQ4_NL or GgmlType.IQ4_XS) // non-linear levels: scale × level q
                    {
                        if (q > 0) Assert.Equal(after[e] / Dequantize.IQ4Levels[q] * Dequantize.IQ4Levels[q - 1], prev, Math.Abs(prev) * 1e-5f + 1e-6f);
                        prev = after[e];
                        continue;
                    }
                    if (q > 1) Assert.Equal(after[e] - prev, prev - PrevPrev(t, blk, e, q), Math.Abs(prev) * 1e-5f + 1e-6f);
                    prev = after[e];
                }
            }
        }
    }

    static float PrevPrev(GgmlType t, byte[] blk, int e, int q)
    {
        var b = (byte[])blk.Clone();
        Quantize.SetLevel(t, b, e, q - 2);
        var y = new float[GgmlTypeInfo.BlockSize(t)];
        Dequantize.Row(t, b, y);
        return y[e];
    }

    [Fact]
    public void Broken_gram_matrices_are_refused_with_a_clear_message()
    {
        var e = Assert.Throws<CriaException>(() => GptqFactor.FromGram(new float[10], 3));
        output.WriteLine(e.Message);
        var nan = Identity(4);
        nan[6] = float.NaN;
        e = Assert.Throws<CriaException>(() => GptqFactor.FromGram(nan, 4));
        output.WriteLine(e.Message);
        Assert.Contains("positive definite", e.Message);
        var indefinite = Identity(2);
        indefinite[1] = indefinite[2] = 3;                   // [[1, 3], [3, 1]] has eigenvalue −2
        e = Assert.Throws<CriaException>(() => GptqFactor.FromGram(indefinite, 2));
        output.WriteLine(e.Message);
        Assert.Throws<CriaException>(() => GptqFactor.FromGram(Identity(4), 4, damp: 0));
    }

    [Fact]
    public void Gptq_after_awq_scaling_uses_the_rescaled_gram_and_lowers_the_output_error()
    {
        string model = TestPaths.TempFile("gptq-awq-f32.gguf");
        RandomModel.Write(model, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 95 });
        string text = string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. once upon a time a little girl named lily was happy. ", 16));
        var q = new QuantizeOptions { FileType = LlamaFileType.Q2_K, Threads = 2, Force = true };
        var awq = Awq.Compute(model, text, q, new AwqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2, ScaleInner = true, AlphaGrid = [0.6f] });
        Assert.Equal(2 * 7, awq.ColumnScales.Count);
        var o = new GptqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2 };
        var rescaled = Gptq.Collect(model, text, o, null, awq.ColumnScales);
        Dictionary<string, float[]> gram;
        using (var m = LlamaModel.Open(model)) gram = Gptq.CollectGram(m, text, o, out _);
        var stale = Gptq.Factor(gram);                      // H of the unscaled inputs: wrong for the scaled matrices
        var qa = q with { Override = n => awq.Overrides.GetValueOrDefault(n) };
        string fa = TestPaths.TempFile("gptq-awq-only-q2k.gguf"), fg = TestPaths.TempFile("gptq-awq-q2k.gguf"), fs = TestPaths.TempFile("gptq-awq-stale-q2k.gguf");
        ModelQuantizer.Run(model, fa, qa);
        ModelQuantizer.Run(model, fg, qa with { Gptq = rescaled });
        ModelQuantizer.Run(model, fs, qa with { Gptq = stale });
        // Output error in the scaled space: the matrices the quantizer saw (W·S) and the Gram matrix of their inputs (S⁻¹HS⁻¹).
        double eAwq = 0, eGptq = 0, eStale = 0;
        using (var a = Cria.Formats.GgufFile.Open(fa))
        using (var b = Cria.Formats.GgufFile.Open(fg))
        using (var c = Cria.Formats.GgufFile.Open(fs))
            foreach (var (name, s) in awq.ColumnScales)
            {
                var t = a.GetTensor(name);
                var w = awq.Overrides[name];
                var g = Awq.UnscaleGram(gram[name], s.Length, s);
                eAwq += Gptq.OutputError(t.Type, a.TensorData(t), w, (int)t.RowCount, (int)t.RowLength, g);
                eGptq += Gptq.OutputError(t.Type, b.TensorData(b.GetTensor(name)), w, (int)t.RowCount, (int)t.RowLength, g);
                eStale += Gptq.OutputError(t.Type, c.TensorData(c.GetTensor(name)), w, (int)t.RowCount, (int)t.RowLength, g);
            }
        output.WriteLine($"Q2_K output error of the AWQ-scaled matrices: AWQ {eAwq:E3}, AWQ + GPTQ {eGptq:E3} ({eGptq / eAwq:P1}), GPTQ with the unscaled H {eStale:E3} ({eStale / eAwq:P1})");
        Assert.True(eGptq < 0.9 * eAwq);
        Assert.True(eGptq < eStale);
    }

    [Fact]
    public void Gptq_quantized_model_lowers_calibration_output_error_and_llama_cpp_runs_it()
    {
        string model = TestPaths.TempFile("gptq-f32.gguf");
        RandomModel.Write(model, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 93 });
        string text = string.Concat(Enumerable.Repeat("the quick brown fox jumps over the lazy dog. once upon a time a little girl named lily was happy. ", 16));
        var o = new GptqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2 };
        Dictionary<string, float[]> gram;
        using (var m = LlamaModel.Open(model)) gram = Gptq.CollectGram(m, text, o, out _);
        Assert.Equal(14, gram.Count);
        Assert.Same(gram["blk.0.attn_q.weight"], gram["blk.0.attn_v.weight"]);
        Assert.Same(gram["blk.1.ffn_gate.weight"], gram["blk.1.ffn_up.weight"]);
        Assert.Equal(512 * 512, gram["blk.0.ffn_down.weight"].Length);

        var factors = Gptq.Factor(gram);
        var q = new QuantizeOptions { FileType = LlamaFileType.Q2_K, Threads = 2, Force = true };
        string plain = TestPaths.TempFile("gptq-plain-q2k.gguf"), gptq = TestPaths.TempFile("gptq-q2k.gguf");
        var repPlain = ModelQuantizer.Run(model, plain, q);
        var repGptq = ModelQuantizer.Run(model, gptq, q with { Gptq = factors });
        // Same mix: every tensor has the type plain quantization gives it.
        Assert.Equal(repPlain.Tensors.Select(t => (t.Name, t.To)), repGptq.Tensors.Select(t => (t.Name, t.To)));

        double ePlain = 0, eGptq = 0;
        using (var f = Cria.Formats.GgufFile.Open(model))
        using (var a = Cria.Formats.GgufFile.Open(plain))
        using (var b = Cria.Formats.GgufFile.Open(gptq))
        {
            foreach (var (name, g) in gram)
            {
                var t = f.GetTensor(name);
                var w = new float[t.ElementCount];
                Dequantize.Row(t.Type, f.TensorData(t), w);
                var ta = a.GetTensor(name);
                ePlain += Gptq.OutputError(ta.Type, a.TensorData(ta), w, (int)t.RowCount, (int)t.RowLength, g);
                eGptq += Gptq.OutputError(ta.Type, b.TensorData(b.GetTensor(name)), w, (int)t.RowCount, (int)t.RowLength, g);
            }
        }
        output.WriteLine($"Q2_K calibration output error: plain {ePlain:E3}, GPTQ {eGptq:E3} ({eGptq / ePlain:P1})");
        Assert.True(eGptq < 0.9 * ePlain);

        int[] tokens = [1, 300, 17, 250, 99, 5, 333, 120, 64, 200, 7, 381];
        float[][] x, y;
        using (var r = new CriaRunner(gptq, 64)) x = r.AllLogits(tokens);
        using (var c = new LlamaCpp(gptq, 64)) y = c.AllLogits(tokens);
        double d = x.Zip(y).Max(p => p.First.Zip(p.Second).Max(v => Math.Abs(v.First - v.Second)));
        output.WriteLine($"Q2_K GPTQ: Cria vs llama.cpp max |Δ logit| {d:E2}");
        Assert.True(d < 0.25, $"Cria and llama.cpp differ by {d} on the GPTQ file");
    }
}
