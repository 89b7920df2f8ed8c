using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>imatrix files, AWQ folding, and the quantizer's output-file safety.</summary>
public sealed class CalibratedQuantTests(ITestOutputHelper output)
{
    const string Calibration = "the quick brown fox jumps over the lazy dog. once upon a time a little girl named lily was happy in the sun. " +
                               "hello world, this is a story about a llama model and a token and a cria. ";

    static readonly Lazy<string> Model = new(() =>
    {
        var p = TestPaths.TempFile("calib-f32.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512, Seed = 91 });
        return p;
    });

    static string Text => string.Concat(Enumerable.Repeat(Calibration, 12));

    [Fact]
    public void Imatrix_collects_mean_squared_activations_and_round_trips_through_the_legacy_format()
    {
        using var m = LlamaModel.Open(Model.Value);
        var im = Imatrix.Collect(m, Text, 64, 4, 2, "calib.txt");
        Assert.Equal(4, im.Chunks);
        Assert.Equal(2 * 7, im.Values.Count); // q k v o gate up down per layer; no output head
        // q, k and v read the same normed input, gate and up too.
        Assert.Equal(im.Values["blk.1.attn_q.weight"], im.Values["blk.1.attn_v.weight"]);
        Assert.Equal(im.Values["blk.0.ffn_gate.weight"], im.Values["blk.0.ffn_up.weight"]);
        Assert.Equal(512, im.Values["blk.0.ffn_down.weight"].Length);
        Assert.All(im.Values.Values.SelectMany(v => v), v => Assert.True(v >= 0 && float.IsFinite(v)));

        var path = TestPaths.TempFile("calib.imatrix.dat");
        im.Save(path);
        var back = Imatrix.Load(path);
        Assert.Equal(4, back.Chunks);
        Assert.Equal("calib.txt", back.Dataset);
        foreach (var (k, v) in im.Values)
            for (int j = 0; j < v.Length; j++) Assert.Equal(v[j], back.Values[k][j], v[j] * 1e-6f + 1e-12f);

        var bytes = File.ReadAllBytes(path);
        var cut = TestPaths.TempFile("calib-cut.imatrix.dat");
        File.WriteAllBytes(cut, bytes.AsSpan(0, bytes.Length / 2).ToArray());
        var e = Assert.Throws<ModelFormatException>(() => Imatrix.Load(cut));
        output.WriteLine(e.Message);
        Assert.Contains(cut, e.Message);
    }

    [Fact]
    public void Channel_spread_is_the_coefficient_of_variation_and_the_largest_over_the_median()
    {
        var (cv, max) = Imatrix.ChannelSpread([1f, 2f, 3f, 10f]);     // mean 4, population s.d. √12.5, upper median 3
        Assert.Equal(Math.Sqrt(12.5) / 4, cv, 12);
        Assert.Equal(10.0 / 3, max, 12);
        Assert.Equal((0.0, 1.0), Imatrix.ChannelSpread([2f, 2f, 2f]));
        Assert.Equal((0.0, 1.0), Imatrix.ChannelSpread([0f, 0f]));
        Assert.Throws<CriaException>(() => Imatrix.ChannelSpread([]));
        var lines = Imatrix.SpreadSummary(new Dictionary<string, float[]>
        {
            ["blk.0.attn_q.weight"] = [1f, 1f, 1f, 1f], ["blk.1.attn_q.weight"] = [1f, 2f, 3f, 10f], ["blk.0.ffn_down.weight"] = [5f, 5f],
        }).ToList();
        Assert.Equal(2, lines.Count);
        Assert.StartsWith("attn_q.weight", lines[0]);
        Assert.Contains("CV 0.00–0.88, largest / median 1.0–3.3", lines[0]);
        Assert.Contains("ffn_down.weight", lines[1]);
    }

    [Fact]
    public void Excluded_weights_are_quantized_without_the_imatrix_as_llama_quantize_does()
    {
        using var m = LlamaModel.Open(Model.Value);
        var im = Imatrix.Collect(m, Text, 64, 4, 2);
        // llama-quantize's --exclude-weights / --include-weights: substring matches on the tensor name.
        var sel = Imatrix.SelectWeights(im.Values, [], ["attn_q", "ffn_down"]);
        Assert.Equal(2 * 5, sel.Count);
        Assert.DoesNotContain(sel.Keys, k => k.Contains("attn_q") || k.Contains("ffn_down"));
        Assert.Equal(["blk.1.attn_k.weight", "blk.1.attn_output.weight", "blk.1.attn_q.weight", "blk.1.attn_v.weight"],
            Imatrix.SelectWeights(im.Values, ["blk.1.attn"], []).Keys.Order(StringComparer.Ordinal));
        Assert.Throws<CriaException>(() => Imatrix.SelectWeights(im.Values, ["attn"], ["ffn"]));
        Assert.Throws<CriaException>(() => Imatrix.SelectWeights(im.Values, [""], []));

        // The left-out tensors get round-to-nearest's bytes, the others the full imatrix file's.
        var q = new QuantizeOptions { FileType = LlamaFileType.Q4_K_M, Threads = 2, Force = true };
        string plain = TestPaths.TempFile("select-plain.gguf"), full = TestPaths.TempFile("select-full.gguf"), part = TestPaths.TempFile("select-part.gguf");
        ModelQuantizer.Run(Model.Value, plain, q);
        ModelQuantizer.Run(Model.Value, full, q with { Imatrix = im.Values });
        ModelQuantizer.Run(Model.Value, part, q with { Imatrix = sel });
        using var fp = GgufFile.Open(plain);
        using var ff = GgufFile.Open(full);
        using var fs = GgufFile.Open(part);
        int changedByImatrix = 0;
        foreach (var t in fs.Tensors)
        {
            var tp = fp.Tensors.Single(x => x.Name == t.Name);
            var tf = ff.Tensors.Single(x => x.Name == t.Name);
            bool left = !sel.ContainsKey(t.Name);
            var expect = left ? fp.TensorData(tp) : ff.TensorData(tf);
            Assert.True(fs.TensorData(t).SequenceEqual(expect), $"{t.Name} ({(left ? "without" : "with")} the imatrix) differs from the {(left ? "plain" : "imatrix")} file");
            if (!left && !ff.TensorData(tf).SequenceEqual(fp.TensorData(tp))) changedByImatrix++;
        }
        Assert.True(changedByImatrix >= 8, $"the imatrix changed only {changedByImatrix} of the selected tensors");
    }

    [Fact]
    public void Awq_folding_keeps_the_float_model_and_lowers_the_output_error_and_llama_cpp_runs_the_result()
    {
        var q = new QuantizeOptions { FileType = LlamaFileType.Q3_K_S, Threads = 2 };
        var res = Awq.Compute(Model.Value, Text, q, new AwqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2 }, output.WriteLine);
        Assert.Equal(4, res.Groups.Count);
        Assert.All(res.Groups, g => Assert.True(g.ErrorScaled <= g.ErrorPlain));
        Assert.Contains(res.Groups, g => g.Alpha > 0 && g.ErrorScaled < 0.999 * g.ErrorPlain);

        // Folded into an F32 file the model computes the same function (scales cancel exactly up to rounding).
        int[] tokens = FoldTokens;
        float[][] a, b;
        double d = FoldedLogitChange(res.Overrides, "calib-awq-f32.gguf", out _);
        output.WriteLine($"AWQ-folded F32 vs original: max |Δ logit| {d:E2}");
        Assert.True(d < 1e-3, $"folding changed the float model's logits by {d}");

        // Quantized with imatrix and AWQ together, the file is a plain llama GGUF that llama.cpp runs like Cria.
        using var m = LlamaModel.Open(Model.Value);
        var im = Imatrix.Collect(m, Text, 64, 4, 2);
        var withIm = Awq.Compute(Model.Value, Text, q with { Imatrix = im.Values }, new AwqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2, Clip = true });
        // The clipping search ran on all 7 matrices of both layers and never raised a calibration output error.
        Assert.Equal(2 * 7, withIm.Clips.Count);
        Assert.All(withIm.Clips, c => Assert.True(c.ErrorClipped <= c.ErrorPlain, $"{c.Tensor}: {c.ErrorPlain} → {c.ErrorClipped}"));
        Assert.Contains(withIm.Clips, c => c.GroupsClipped > 0 && c.ErrorClipped < 0.99 * c.ErrorPlain);
        string quant = TestPaths.TempFile("calib-awq-im-q3ks.gguf");
        ModelQuantizer.Run(Model.Value, quant, q with { Force = true, Imatrix = withIm.Imatrix, Override = n => withIm.Overrides.GetValueOrDefault(n) });
        using (var r = new CriaRunner(quant, 64)) a = r.AllLogits(tokens);
        using (var c = new LlamaCpp(quant, 64)) b = c.AllLogits(tokens);
        d = a.Zip(b).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second)));
        output.WriteLine($"Q3_K_S imatrix+AWQ+clipping: Cria vs llama.cpp max |Δ logit| {d:E2}");
        Assert.True(d < 0.25, $"Cria and llama.cpp differ by {d} on the calibrated file");
    }

    static readonly int[] FoldTokens = [1, 300, 17, 250, 99, 5, 333, 120, 64, 200, 7, 381];

    /// <summary>Writes the model with AWQ's rescaled tensors folded into an F32 file and returns the largest logit
    /// change against the original over <see cref="FoldTokens"/> (<paramref name="original"/>: the original's logits).</summary>
    static double FoldedLogitChange(IReadOnlyDictionary<string, float[]> overrides, string fileName, out float[][] original)
    {
        string folded = TestPaths.TempFile(fileName);
        ModelQuantizer.Run(Model.Value, folded, new QuantizeOptions { FileType = LlamaFileType.F32, Force = true, Override = n => overrides.GetValueOrDefault(n) });
        float[][] a, b;
        using (var r = new CriaRunner(Model.Value, 64)) a = r.AllLogits(FoldTokens);
        using (var r = new CriaRunner(folded, 64)) b = r.AllLogits(FoldTokens);
        original = a;
        return a.Zip(b).Max(p => p.First.Zip(p.Second).Max(x => Math.Abs(x.First - x.Second)));
    }

    [Fact]
    public void Awq_v_to_o_and_up_to_down_scalings_keep_the_float_model_under_grouped_query_attention()
    {
        // 8 query heads read 2 KV heads: each attn_v row's s must scale the 4 attn_output columns that read it.
        var q = new QuantizeOptions { FileType = LlamaFileType.Q4_0, Threads = 2 };
        var forced = Awq.Compute(Model.Value, Text, q, new AwqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2, ScaleInner = true, AlphaGrid = [0.7f] });
        foreach (var m in new[] { "attn_v", "attn_output", "ffn_up", "ffn_down", "attn_norm", "ffn_norm" })
            Assert.True(forced.Overrides.ContainsKey($"blk.1.{m}.weight"), $"blk.1.{m}.weight was not rescaled");
        double d = FoldedLogitChange(forced.Overrides, "calib-awq-inner-f32.gguf", out var a);
        double scale = a.Max(row => row.Max(Math.Abs));
        output.WriteLine($"AWQ with v→o and up→down folded into F32 vs original: max |Δ logit| {d:E2} (max |logit| {scale:F2})");
        Assert.True(d < 1e-5 * Math.Max(1, scale), $"folding changed the float model's logits by {d}");

        // With the default grid (α = 0 included) every scale point is at most plain round-to-nearest's error.
        var res = Awq.Compute(Model.Value, Text, q, new AwqOptions { ContextSize = 64, MaxChunks = 4, Threads = 2, ScaleInner = true });
        Assert.Equal(2 * 4, res.Groups.Count);
        Assert.All(res.Groups, g => Assert.True(g.ErrorScaled <= g.ErrorPlain, $"{g.Norm}: {g.ErrorPlain} → {g.ErrorScaled}"));
        Assert.Contains(res.Groups, g => g.Norm.Contains("→attn_output") && g.ErrorScaled < g.ErrorPlain);
    }

    [Fact]
    public void An_existing_output_is_refused_and_a_cancelled_run_leaves_no_file()
    {
        string dir = Path.Combine(TestPaths.Scratch, "quant-safety");
        Directory.CreateDirectory(dir);
        string outPath = Path.Combine(dir, "out.gguf");
        File.WriteAllText(outPath, "precious");
        var e = Assert.Throws<CriaException>(() => ModelQuantizer.Run(Model.Value, outPath, new QuantizeOptions { FileType = LlamaFileType.Q4_0 }));
        Assert.Contains("exists", e.Message);
        Assert.Equal("precious", File.ReadAllText(outPath));

        File.Delete(outPath);
        using var cts = new CancellationTokenSource();
        Assert.ThrowsAny<OperationCanceledException>(() => ModelQuantizer.Run(Model.Value, outPath, new QuantizeOptions
        {
            FileType = LlamaFileType.Q4_K_M, Threads = 2,
            Progress = (i, n, _, _, _) => { if (i == n / 2) cts.Cancel(); },
        }, cts.Token));
        Assert.Empty(Directory.GetFiles(dir)); // no output, no temp file

        var rep = ModelQuantizer.Run(Model.Value, outPath, new QuantizeOptions { FileType = LlamaFileType.Q4_K_M, Threads = 2 });
        File.WriteAllText(outPath, "old");
        ModelQuantizer.Run(Model.Value, outPath, new QuantizeOptions { FileType = LlamaFileType.Q4_K_M, Threads = 2, Force = true });
        using var f = GgufFile.Open(outPath);
        Assert.Equal(rep.Tensors.Count, f.Tensors.Count);
        Assert.Single(Directory.GetFiles(dir));
    }

    [Fact]
    public void A_tensor_too_large_for_one_array_is_refused_before_anything_is_written()
    {
        // One tensor of 2^31 F16 values (4 GiB in a sparse file: nothing is read): more values than a .NET array holds.
        string dir = Path.Combine(TestPaths.Scratch, "quant-huge");
        Directory.CreateDirectory(dir);
        string input = Path.Combine(dir, "huge.gguf"), outPath = Path.Combine(dir, "out.gguf");
        File.Delete(outPath);
        using (var fs = new FileStream(input, FileMode.Create))
        {
            var w = new BinaryWriter(fs);
            void Str(string v) { w.Write((ulong)v.Length); w.Write(System.Text.Encoding.UTF8.GetBytes(v)); }
            w.Write(GgufFile.Magic); w.Write(3u); w.Write(1UL); w.Write(1UL);
            Str("general.architecture"); w.Write(8u); Str("llama");
            Str("blk.0.ffn_up.weight"); w.Write(2u); w.Write(65536UL); w.Write(32768UL); w.Write((uint)GgmlType.F16); w.Write(0UL);
            w.Flush();
            fs.SetLength((fs.Position + 31) / 32 * 32 + (1L << 32));
        }
        try
        {
            var e = Assert.Throws<CriaException>(() => ModelQuantizer.Run(input, outPath, new QuantizeOptions { FileType = LlamaFileType.Q8_0, Threads = 2 }));
            Assert.Contains("blk.0.ffn_up.weight", e.Message);
            Assert.Contains("too large", e.Message);
            Assert.Equal([input], Directory.GetFiles(dir)); // no output, no temp file
        }
        finally { File.Delete(input); }
    }

    [Fact]
    public void More_threads_than_ggml_allows_are_refused_before_any_start()
    {
        var e = Assert.Throws<CriaException>(() => new Cria.Kernels.WorkerPool(Cria.Kernels.WorkerPool.MaxThreads + 1));
        Assert.Contains("513 threads requested; at most 512", e.Message);
        string outPath = Path.Combine(TestPaths.Scratch, "threads-out.gguf");
        File.Delete(outPath);
        e = Assert.Throws<CriaException>(() => ModelQuantizer.Run(Model.Value, outPath, new QuantizeOptions { FileType = LlamaFileType.Q4_0, Threads = 100_000 }));
        Assert.Contains("100000 threads", e.Message);
        Assert.False(File.Exists(outPath));
    }
}


