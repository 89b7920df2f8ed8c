using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>The diagonal Fisher (<see cref="Fisher"/>) and quantization weighted by it (<see cref="QuantizeOptions.Fisher"/>).</summary>
public sealed class FisherTests(ITestOutputHelper output)
{
    const string Text = "the quick brown fox jumps over the lazy dog. once upon a time a little girl named lily was happy. ";

    static string SmallModel(string name)
    {
        string path = TestPaths.TempFile(name);
        RandomModel.Write(path, new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, ContextLength = 64, Seed = 17 });
        return path;
    }

    /// <summary>Σ over the chunk's positions of −log p(next token), by the inference engine, in double.</summary>
    static double ChunkLoss(CriaRunner r, int[] chunk)
    {
        var logits = r.AllLogits(chunk[..^1]);
        double loss = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            double max = logits[i].Max(), sum = 0;
            foreach (float v in logits[i]) sum += Math.Exp(v - max);
            loss += max + Math.Log(sum) - logits[i][chunk[i + 1]];
        }
        return loss;
    }

    /// <summary>A copy of <paramref name="src"/> with one F32 weight changed by <paramref name="delta"/>.</summary>
    static void WritePerturbed(string src, string dst, string tensor, long index, float delta)
    {
        using var f = GgufFile.Open(src);
        var w = new GgufWriter().CopyMetadataFrom(f);
        foreach (var t in f.Tensors)
        {
            var data = f.TensorData(t).ToArray();
            if (t.Name == tensor) MemoryMarshal.Cast<byte, float>(data.AsSpan())[(int)index] += delta;
            w.AddTensor(t.Name, t.Shape, t.Type, data);
        }
        w.Write(dst);
    }

    [Fact]
    public void Fisher_is_the_sum_over_chunks_of_squared_loss_gradients_as_finite_differences_of_the_inference_engine_give()
    {
        string model = SmallModel("fisher-f32.gguf");
        string text = string.Concat(Enumerable.Repeat(Text, 4));
        var o = new FisherOptions { ContextSize = 16, MaxChunks = 3, Threads = 2 };
        var fisher = Fisher.Collect(model, text, o, out int used);
        Assert.Equal(3, used);
        Assert.Equal(14, fisher.Count); // 7 matrices per block, 2 blocks; no token_embd / output
        Assert.Equal(128 * 64, fisher["blk.1.ffn_down.weight"].Length);

        List<int[]> chunks;
        using (var m = LlamaModel.Open(model))
            chunks = Perplexity.Chunks(m.Tokenizer.Encode(text, addBos: true), o.ContextSize, m.Tokenizer.Bos, m.Tokenizer.AddBos).Take(3).ToList();

        const float h = 2e-3f;
        string plus = TestPaths.TempFile("fisher-plus.gguf"), minus = TestPaths.TempFile("fisher-minus.gguf");
        foreach (string name in new[] { "blk.0.attn_q.weight", "blk.0.attn_v.weight", "blk.1.ffn_down.weight", "blk.1.ffn_gate.weight" })
        {
            var f = fisher[name];
            Assert.All(f, v => Assert.True(v >= 0 && float.IsFinite(v)));
            // The weight with the largest Fisher value, and one at the median (a typical weight).
            var order = Enumerable.Range(0, f.Length).OrderBy(i => f[i]).ToArray();
            foreach (int idx in new[] { order[^1], order[order.Length / 2] })
            {
                WritePerturbed(model, plus, name, idx, h);
                WritePerturbed(model, minus, name, idx, -h);
                double fd = 0;
                using (var rp = new CriaRunner(plus, 64))
                using (var rm = new CriaRunner(minus, 64))
                    foreach (var c in chunks)
                    {
                        double g = (ChunkLoss(rp, c) - ChunkLoss(rm, c)) / (2 * h);
                        fd += g * g;
                    }
                double a = Math.Sqrt(f[idx]), b = Math.Sqrt(fd);
                output.WriteLine($"{name}[{idx}]: √F {a:E4}, √(Σ finite-difference²) {b:E4}");
                Assert.True(Math.Abs(a - b) <= 0.01 * Math.Max(a, b) + 1e-3, $"{name}[{idx}]: √F = {a}, finite differences give {b}");
            }
        }
    }

    [Fact]
    public void Fisher_weights_steer_each_rows_rounding_and_keep_the_plain_types()
    {
        // A matrix where a few weights per row carry most of the loss: the Fisher-weighted error Σ F (w − ŵ)² is never
        // above plain rounding's (the chooser keeps the reference block where it is better) and clearly below it.
        int rows = 8, cols = 512;
        var r = new Random(3);
        var w = new float[rows * cols];
        var f = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) { w[i] = (float)(r.NextDouble() * 2 - 1); f[i] = r.Next(16) == 0 ? 1000f : 1f; }
        foreach (var type in new[] { GgmlType.Q4_0, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q6_K })
        {
            var plain = ModelQuantizer.QuantizeMatrix(type, w, cols, rows, null, 1);
            var weighted = ModelQuantizer.QuantizeMatrix(type, w, cols, rows, null, 1, rowWeights: f);
            double Err(byte[] q)
            {
                int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
                var d = new float[cols];
                double e = 0;
                for (int row = 0; row < rows; row++)
                {
                    Dequantize.Row(type, q.AsSpan(row * rowBytes, rowBytes), d);
                    for (int j = 0; j < cols; j++) e += f[row * cols + j] * Math.Pow(w[row * cols + j] - d[j], 2);
                }
                return e;
            }
            double ep = Err(plain), ef = Err(weighted);
            output.WriteLine($"{type}: Fisher-weighted error plain {ep:E3}, weighted {ef:E3} ({ef / ep:P1})");
            Assert.True(ef < 0.8 * ep, $"{type}: {ef} against plain {ep}");
        }
        Assert.Throws<ArgumentException>(() => ModelQuantizer.QuantizeMatrix(GgmlType.Q4_0, w, cols, rows, null, 1, rowWeights: new float[10]));

        // Through the model quantizer: the same tensor types as plain quantization (no imatrix type rules), different bytes.
        string model = SmallModel("fisher-model.gguf");
        var fisher = Fisher.Collect(model, string.Concat(Enumerable.Repeat(Text, 4)), new FisherOptions { ContextSize = 16, MaxChunks = 3, Threads = 2 }, out _);
        var q = new QuantizeOptions { FileType = LlamaFileType.Q4_0, Threads = 2, Force = true };
        string a = TestPaths.TempFile("fisher-plain-q4_0.gguf"), b = TestPaths.TempFile("fisher-q4_0.gguf");
        var ra = ModelQuantizer.Run(model, a, q);
        var rb = ModelQuantizer.Run(model, b, q with { Fisher = fisher });
        Assert.Equal(ra.Tensors.Select(t => (t.Name, t.To)), rb.Tensors.Select(t => (t.Name, t.To)));
        using var fa = GgufFile.Open(a);
        using var fb = GgufFile.Open(b);
        Assert.False(fa.TensorData(fa.GetTensor("blk.0.ffn_up.weight")).SequenceEqual(fb.TensorData(fb.GetTensor("blk.0.ffn_up.weight"))));
        Assert.True(fa.TensorData(fa.GetTensor("output.weight")).SequenceEqual(fb.TensorData(fb.GetTensor("output.weight"))));

        // A quantized input cannot give gradients: refused, naming the option and the type.
        var qe = Assert.Throws<CriaException>(() => Fisher.Collect(a, string.Concat(Enumerable.Repeat(Text, 4)), new FisherOptions { ContextSize = 16, MaxChunks = 1 }, out _));
        Assert.StartsWith("--fisher:", qe.Message);
        Assert.Contains("Q4_0", qe.Message);

        // A wrong-sized importance is refused, naming the tensor.
        var bad = new Dictionary<string, float[]>(fisher) { ["blk.0.attn_k.weight"] = new float[5] };
        var e = Assert.Throws<CriaException>(() => ModelQuantizer.Run(model, b, q with { Fisher = bad }));
        Assert.Contains("blk.0.attn_k.weight", e.Message);
    }
}
