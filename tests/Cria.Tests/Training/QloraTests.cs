using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Cria.Training;
using NativeLora = LLama.Native.LoraAdapter;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>QLoRA: the NF4 codec with double quantization, and LoRA training on a frozen base kept compressed — NF4
/// (<c>train --qlora</c>) or the file's own GGUF type (a Q4_K_M base) — which must train exactly as on the base's
/// dequantized F32 weights, and whose adapter runs on the quantized file in Cria and llama.cpp.</summary>
public sealed class QloraTests(ITestOutputHelper output)
{
    static float[] Gaussian(int n, int seed) => Quant.QuantTestUtil.Gaussian(new Random(seed), n);

    [Fact]
    public void Nf4_codes_are_the_nearest_level_of_each_absmax_scaled_weight()
    {
        var x = Gaussian(64 * 5 + 17, 1); // a short last block
        x[3] = 9f;                        // an outlier: block 0's absmax
        x.AsSpan(128, 64).Clear();        // an all-zero block
        var q = Nf4Tensor.Quantize(x, doubleQuant: false);
        Assert.Equal(6, q.Absmax.Length);
        Assert.Equal((x.Length + 1) / 2, q.Codes.Length);
        var levels = Nf4Tensor.Levels.ToArray();
        Assert.Equal(16, levels.Length);
        Assert.Equal(-1f, levels[0]); Assert.Equal(0f, levels[7]); Assert.Equal(1f, levels[15]);
        var y = new float[x.Length];
        q.Dequantize(0, y);
        for (int i = 0; i < x.Length; i++)
        {
            int b = i / 64;
            float absmax = 0;
            for (int j = b * 64; j < Math.Min(x.Length, b * 64 + 64); j++) absmax = Math.Max(absmax, Math.Abs(x[j]));
            Assert.Equal(absmax, q.Absmax[b]);
            float v = absmax > 0 ? x[i] / absmax : 0;
            int best = 0; // brute force: the level nearest to x/absmax
            for (int c = 1; c < 16; c++) if (Math.Abs(levels[c] - v) < Math.Abs(levels[best] - v)) best = c;
            int code = (i & 1) == 0 ? q.Codes[i / 2] >> 4 : q.Codes[i / 2] & 15; // element 2i in the high nibble, as bitsandbytes
            Assert.True(best == code, $"element {i}: x/absmax = {v}, code {code}, nearest level {best}");
            Assert.Equal(levels[best] * absmax, y[i]);
        }
        Assert.Equal(9f, y[3]);                             // ±absmax is exact
        Assert.All(y.AsSpan(128, 64).ToArray(), v => Assert.Equal(0f, v));
        var part = new float[50]; // a range that starts mid-block and crosses blocks
        q.Dequantize(101, part);
        Assert.Equal(y.AsSpan(101, 50).ToArray(), part);
        Assert.Throws<CriaException>(() => Nf4Tensor.Quantize([1f, float.NaN], false));
    }

    [Fact]
    public void Double_quantization_stores_absmax_as_E4M3_in_groups_of_256_at_4_127_bits_per_weight()
    {
        // E4M3 (OCP "E4M3FN"): facts of the format.
        Assert.Equal(1f, Fp8E4M3.ToSingle(0x38)); Assert.Equal(448f, Fp8E4M3.ToSingle(0x7E)); Assert.True(float.IsNaN(Fp8E4M3.ToSingle(0x7F)));
        Assert.Equal(MathF.Pow(2, -6), Fp8E4M3.ToSingle(0x08)); Assert.Equal(MathF.Pow(2, -9), Fp8E4M3.ToSingle(0x01)); Assert.Equal(-1.125f, Fp8E4M3.ToSingle(0xB9));
        var rng = new Random(3);
        for (int k = 0; k < 2000; k++) // encoding = the nearest finite code (brute force), saturating at ±448
        {
            float v = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-12, 10)));
            byte c = Fp8E4M3.FromSingle(v);
            float best = float.MaxValue;
            for (int b = 0; b < 256; b++)
                if (!float.IsNaN(Fp8E4M3.ToSingle((byte)b))) best = Math.Min(best, Math.Abs(Fp8E4M3.ToSingle((byte)b) - Math.Clamp(v, -448f, 448f)));
            Assert.True(Math.Abs(Fp8E4M3.ToSingle(c) - Math.Clamp(v, -448f, 448f)) == best, $"{v} → code {c:X2} = {Fp8E4M3.ToSingle(c)}");
        }
        Assert.Equal(448f, Fp8E4M3.ToSingle(Fp8E4M3.FromSingle(1e6f)));

        int n = 64 * 256 * 3;
        var x = Gaussian(n, 2);
        for (int i = 0; i < n; i++) x[i] *= 0.5f + (i / 64 % 7) * 0.3f; // absmax varying from block to block
        var plain = Nf4Tensor.Quantize(x, doubleQuant: false);
        var dq = Nf4Tensor.Quantize(x, doubleQuant: true);
        Assert.Equal(plain.Codes, dq.Codes); // the 4-bit codes do not depend on how absmax is stored
        Assert.Equal(3, dq.GroupScales.Length);
        double offset = plain.Absmax.Average();
        Assert.Equal((float)offset, dq.AbsmaxOffset, 1e-5f);
        for (int b = 0; b < plain.Absmax.Length; b++)
        {
            float c = plain.Absmax[b] - dq.AbsmaxOffset, scale = dq.GroupScales[b / 256];
            Assert.Equal(Fp8E4M3.FromSingle(c / scale), dq.AbsmaxCodes[b]);
            // E4M3 keeps 3 mantissa bits: relative error ≤ 2⁻⁴, or the subnormal step near zero
            Assert.True(Math.Abs(dq.BlockAbsmax(b) - plain.Absmax[b]) <= Math.Max(Math.Abs(c) / 16, scale * MathF.Pow(2, -10)) * 1.0001 + 1e-6,
                $"block {b}: absmax {plain.Absmax[b]} decodes to {dq.BlockAbsmax(b)}");
        }
        double bits = 8.0 * dq.Bytes / n;
        output.WriteLine($"bits per weight: {8.0 * plain.Bytes / n:F4} without, {bits:F4} with double quantization");
        Assert.InRange(bits, 4.127, 4.128);
        Assert.Equal(4.5, 8.0 * plain.Bytes / n, 6);
    }

    /// <summary>The vectorized decoders of a frozen base give the scalar references' bits: Q4_K and Q6_K rows (blocks
    /// from real quantization, and with random code and scale bytes), and NF4 ranges that start and end inside blocks, with and without
    /// double quantization.</summary>
    [Fact]
    public void Vectorized_decoders_give_the_references_bits()
    {
        var x = Gaussian(256 * 24, 5);
        for (int i = 0; i < x.Length; i++) x[i] *= 1 + (i / 32 % 5);
        var q4k = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q4_K, x.Length)];
        Quantize.Row(GgmlType.Q4_K, x, q4k);
        var rng = new Random(6);
        for (int blk = 12; blk < 24; blk++) rng.NextBytes(q4k.AsSpan(blk * 144 + 4, 140)); // any scale/min bytes and codes
        var want = new float[x.Length];
        var got = new float[x.Length];
        Dequantize.Row(GgmlType.Q4_K, q4k, want);
        DequantizeVector.Row(GgmlType.Q4_K, q4k, got);
        Assert.Equal(want, got);
        var q6k = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q6_K, x.Length)];
        Quantize.Row(GgmlType.Q6_K, x, q6k);
        for (int blk = 12; blk < 24; blk++) rng.NextBytes(q6k.AsSpan(blk * 210, 208)); // any codes and scales
        Dequantize.Row(GgmlType.Q6_K, q6k, want);
        DequantizeVector.Row(GgmlType.Q6_K, q6k, got);
        Assert.Equal(want, got);
        foreach (bool dq in new[] { false, true })
        {
            var t = Nf4Tensor.Quantize(Gaussian(64 * 300 + 40, 7), dq);
            foreach (var (start, n) in new[] { (0L, (int)t.Count), (37L, 1000), (64L, 128), (64L * 299, 104) })
            {
                var a = new float[n];
                var b = new float[n];
                t.Dequantize(start, a);
                DequantizeVector.Nf4(t, start, b);
                Assert.Equal(a, b);
            }
        }
    }

    /// <summary>QLoRA's reason for NF4: for normally distributed weights, quantile levels lose less than evenly spaced
    /// 4-bit levels with the same block absmax (here, Q4_0-style d = absmax/7 rounding to −7…7, and −8…7).</summary>
    [Fact]
    public void Nf4_loses_less_than_evenly_spaced_4_bit_levels_on_normal_weights()
    {
        var x = Gaussian(64 * 4096, 4);
        var y = new float[x.Length];
        Nf4Tensor.Quantize(x, doubleQuant: false).Dequantize(0, y);
        double nf4 = 0, int4 = 0;
        for (int b = 0; b < x.Length / 64; b++)
        {
            float m = 0;
            for (int i = b * 64; i < b * 64 + 64; i++) m = Math.Max(m, Math.Abs(x[i]));
            for (int i = b * 64; i < b * 64 + 64; i++)
            {
                nf4 += (x[i] - y[i]) * (double)(x[i] - y[i]);
                float d = m / 7, r = MathF.Round(x[i] / d) * d;
                int4 += (x[i] - r) * (double)(x[i] - r);
            }
        }
        nf4 = Math.Sqrt(nf4 / x.Length); int4 = Math.Sqrt(int4 / x.Length);
        output.WriteLine($"RMS error on N(0,1): NF4 {nf4:F4}, evenly spaced 4-bit {int4:F4}");
        Assert.True(nf4 < 0.95 * int4, $"NF4 {nf4} vs int4 {int4}");
    }

    /// <summary>The full-layout F32 parameters of a frozen-base import: its parameters with the frozen projections
    /// dequantized into their places.</summary>
    static unsafe float[] Dequantized(GgufImport.Imported im)
    {
        var full = new ParameterLayout(im.Shape);
        var frozen = new ParameterLayout(im.Shape, frozenMatrices: true);
        var p = new float[full.Count];
        foreach (var t in frozen.Tensors)
            im.Parameters.AsSpan((int)t.Offset, (int)t.Count).CopyTo(p.AsSpan((int)full.Tensors.Single(f => f.Name == t.Name).Offset));
        fixed (float* pp = p)
            for (int l = 0; l < im.Shape.Layers; l++)
                for (int target = 0; target < 7; target++)
                {
                    var m = im.Frozen!.Matrices[l * 7 + target];
                    m.DequantizeRows(0, m.Rows, pp + full.Blocks[l].Matrix(target));
                }
        return p;
    }

    static int[] Tokens(int n)
    {
        using var lm = LlamaModel.Open(TestPaths.Bundled());
        const string text = "And God said, Let there be light: and there was light. And God saw the light, that it was good. ";
        return lm.Tokenizer.Encode(string.Concat(Enumerable.Repeat(text, 8)), addBos: false).Take(n).ToArray();
    }

    static void RandomAdapters(LlamaTrainingModel m, int seed) => LoraTests.RandomAdapters(m, seed);

    static (float Loss, float[] Grad) LossAndGradients(LlamaTrainingModel m, int[] toks)
    {
        m.Tokens[0] = 1;
        toks.AsSpan(0, m.Rows - 1).CopyTo(m.Tokens[1..]);
        toks.AsSpan(0, m.Rows).CopyTo(m.Targets);
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / m.Rows);
        return (loss, m.LoraGradients.ToArray());
    }

    static string QuantizedBundled(string type)
    {
        string path = TestPaths.TempFile($"qlora-base-{type}.gguf");
        if (!File.Exists(path))
            ModelQuantizer.Run(TestPaths.Bundled(), path, new QuantizeOptions { FileType = Enum.Parse<LlamaFileType>(type, ignoreCase: true), Force = true });
        return path;
    }

    /// <summary>The trainer on a compressed frozen base computes, bit for bit, the loss and adapter gradients of the
    /// same trainer on the base's dequantized weights held as F32 parameters — forward and backward read each frozen
    /// projection in its place — and that differs from the unquantized model.</summary>
    [Theory]
    [InlineData("q4_k_m")]
    [InlineData("nf4")]
    public void Lora_on_a_frozen_base_equals_lora_on_its_dequantized_weights(string kind)
    {
        var im = kind == "nf4" ? GgufImport.Read(TestPaths.Bundled(), storage: BaseStorage.Nf4) : GgufImport.Read(QuantizedBundled(kind), storage: BaseStorage.Keep);
        Assert.NotNull(im.Frozen);
        output.WriteLine($"{kind}: frozen projections {im.Frozen!.Kind}, {im.Frozen.BitsPerWeight:F3} bits per weight; parameters {im.Parameters.Length:N0} of {new ParameterLayout(im.Shape).Count:N0}");
        var lora = new LoraOptions { Rank = 4, Alpha = 8 };
        var toks = Tokens(64);
        using var frozen = new LlamaTrainingModel(im.Shape, 2, 32, 2, lora, frozenBase: im.Frozen);
        im.Parameters.CopyTo(frozen.Parameters.AsSpan());
        RandomAdapters(frozen, 9);
        var (lossF, gradF) = LossAndGradients(frozen, toks);

        using var reference = new LlamaTrainingModel(im.Shape, 2, 32, 2, lora);
        Dequantized(im).CopyTo(reference.Parameters.AsSpan());
        RandomAdapters(reference, 9);
        var (lossR, gradR) = LossAndGradients(reference, toks);
        Assert.Equal(lossR, lossF);
        Assert.Equal(gradR, gradF);
        Assert.Contains(gradF, g => g != 0);

        using var original = new LlamaTrainingModel(im.Shape, 2, 32, 2, lora);
        GgufImport.Read(TestPaths.Bundled()).Parameters.CopyTo(original.Parameters.AsSpan());
        RandomAdapters(original, 9);
        var (lossO, _) = LossAndGradients(original, toks);
        output.WriteLine($"loss: frozen {lossF:F6}, dequantized reference {lossR:F6}, unquantized model {lossO:F6}");
        Assert.True(Math.Abs(lossO - lossF) > 1e-4, $"the {kind} base gives the unquantized model's loss {lossO}");
    }

    /// <summary>An adapter for the Q4_K_M file: the trainer's forward on that file as a frozen base, and Cria's and
    /// llama.cpp's inference on the file with the adapter, agree — to the engines' 8-bit quantization of activations for
    /// the K-quant products, which the trainer (F32 activations) does not do, so in RMS: the engines are clearly
    /// closer to this trainer than to one on the unquantized weights, and the adapter's change of the logits is the
    /// trainer's.</summary>
    [Fact]
    public void An_adapter_on_a_quantized_base_gives_the_trainers_logits_in_cria_and_llama_cpp()
    {
        string q = QuantizedBundled("q4_k_m");
        var im = GgufImport.Read(q, storage: BaseStorage.Keep);
        var lora = new LoraOptions { Rank = 8, Alpha = 16 };
        var toks = Tokens(47);
        float[][] Trainer(LlamaTrainingModel m, float[] parameters, bool adapter)
        {
            parameters.CopyTo(m.Parameters.AsSpan());
            RandomAdapters(m, 5);
            if (!adapter) Array.Clear(m.LoraParameters);
            m.Tokens[0] = 1;
            toks.CopyTo(m.Tokens[1..]);
            m.Forward();
            return Enumerable.Range(0, 48).Select(p => m.LogitsRow(p).ToArray()).ToArray();
        }
        using var frozen = new LlamaTrainingModel(im.Shape, 1, 48, 2, lora, frozenBase: im.Frozen);
        var trainedBase = Trainer(frozen, im.Parameters, adapter: false);
        var trained = Trainer(frozen, im.Parameters, adapter: true);
        string adapter = TestPaths.TempFile("qlora-q4km-adapter.gguf");
        frozen.Lora!.Write(adapter, frozen.LoraParameters);
        float[][] unquantized;
        using (var f32 = new LlamaTrainingModel(im.Shape, 1, 48, 2, lora))
            unquantized = Trainer(f32, GgufImport.Read(TestPaths.Bundled()).Parameters, adapter: true);

        var tokens = frozen.Tokens.ToArray();
        using var plain = new CriaRunner(q, 64);
        var basis = plain.AllLogits(tokens);
        using var cria = new CriaRunner(q, 64, lora: adapter);
        var adapted = cria.AllLogits(tokens);
        LlamaCpp.EnsureLoaded();
        using var llBase = new LlamaCpp(q, 64);
        var llBasis = llBase.AllLogits(tokens);
        using var ll = new LlamaCpp(q, 64);
        var handle = ll.Weights.NativeHandle.LoadLoraFromFile(adapter);
        Span<(NativeLora, float)> set = [(handle, 1f)];
        ll.Context.NativeHandle.SetLoraAdapters(set);
        var reference = ll.AllLogits(tokens);

        float[][] Delta(float[][] x, float[][] y) => x.Select((r, p) => r.Select((v, i) => v - y[p][i]).ToArray()).ToArray();
        var change = Delta(trained, trainedBase);
        double moved = Rms(change, null), criaVsTrainer = Rms(adapted, trained), llamaVsTrainer = Rms(reference, trained),
            criaVsF32 = Rms(adapted, unquantized), llamaVsF32 = Rms(reference, unquantized), criaVsLlama = Rms(adapted, reference),
            criaChange = Rms(Delta(adapted, basis), change), llamaChange = Rms(Delta(reference, llBasis), change);
        output.WriteLine($"RMS logit difference: Cria vs trainer {criaVsTrainer:E2} (vs the unquantized trainer {criaVsF32:E2}), llama.cpp vs trainer {llamaVsTrainer:E2} ({llamaVsF32:E2}), Cria vs llama.cpp {criaVsLlama:E2}");
        output.WriteLine($"the adapter's change: RMS {moved:F4}, max {MaxDiff(change, basis.Select(r => new float[r.Length]).ToArray()):F3}; Cria's differs from the trainer's by {criaChange:E2}, llama.cpp's by {llamaChange:E2}");
        Assert.True(moved > 0.05, $"the adapter moves the logits by only {moved} RMS");
        Assert.True(criaVsTrainer < 0.4 * criaVsF32 && llamaVsTrainer < 0.4 * llamaVsF32,
            $"inference on the Q4_K_M file is not much closer to the Q4_K_M trainer ({criaVsTrainer}, {llamaVsTrainer}) than to the unquantized one ({criaVsF32}, {llamaVsF32})");
        Assert.True(criaChange < 0.2 * moved && llamaChange < 0.2 * moved, $"the adapter's change differs from the trainer's by {criaChange} (Cria), {llamaChange} (llama.cpp) of {moved}");
        Assert.True(criaVsLlama < 0.02, $"Cria differs from llama.cpp by {criaVsLlama} RMS");
    }

    static double Rms(float[][] a, float[][]? b)
    {
        double sum = 0; long n = 0;
        for (int p = 0; p < a.Length; p++)
            for (int v = 0; v < a[p].Length; v++) { double d = a[p][v] - (b?[p][v] ?? 0); sum += d * d; n++; }
        return Math.Sqrt(sum / n);
    }

    static double MaxDiff(float[][] a, float[][] b) => LoraTests.MaxDiff(a, b);

    /// <summary>QLoRA training lowers the loss, repeats exactly, starts its adapters as an F32 base's run does, and
    /// leaves the frozen base untouched; the trainer refuses what it cannot do with a compressed base.</summary>
    [Fact]
    public void Qlora_training_lowers_the_loss_and_keeps_the_base()
    {
        var im = GgufImport.Read(TestPaths.Bundled(), storage: BaseStorage.Nf4);
        var nf4 = (Nf4FrozenMatrix)im.Frozen!.Matrices[3];
        var codes = nf4.Tensor.Codes.ToArray();
        int[] data;
        using (var lm = LlamaModel.Open(TestPaths.Bundled()))
            data = lm.Tokenizer.Encode("Zebra quartz jukebox: the vexed wizard flung my quick box. Seven jolly pixies vow to bake fizzy quince jam. ", addBos: false);
        var corpus = Enumerable.Repeat(data, 40).SelectMany(x => x).ToArray();
        var opts = new TrainingOptions { BatchSize = 4, Steps = 30, WarmupSteps = 5, LearningRate = 3e-3f, WeightDecay = 0f, Threads = 2, Seed = 7 };
        var lora = new LoraOptions { Rank = 8, Alpha = 16 };
        float[] Run()
        {
            using var tr = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: lora, frozenBase: im.Frozen);
            using var f32 = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: lora);
            Assert.Equal(f32.Model.LoraParameters, tr.Model.LoraParameters); // same random numbers drawn before the adapters
            tr.SetParameters(im.Parameters);
            var losses = new List<float>();
            for (int s = 0; s < opts.Steps; s++) losses.Add(tr.TrainStep().Loss);
            Assert.True(tr.Model.Parameters.AsSpan().SequenceEqual(im.Parameters), "the F32 parameters moved");
            return losses.ToArray();
        }
        var a = Run();
        Assert.Equal(a, Run());
        // a checkpoint halfway resumes to the same losses; it names its base, so an F32-base run refuses it
        string ckpt = TestPaths.TempFile("qlora-checkpoint.bin");
        var resumed = new List<float>();
        using (var tr = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: lora, frozenBase: im.Frozen))
        {
            tr.SetParameters(im.Parameters);
            for (int s = 0; s < opts.Steps / 2; s++) resumed.Add(tr.TrainStep().Loss);
            tr.SaveCheckpoint(ckpt, 11);
        }
        using (var tr = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: lora, frozenBase: im.Frozen))
        {
            tr.LoadCheckpoint(ckpt, 11);
            while (tr.Step < opts.Steps) resumed.Add(tr.TrainStep().Loss);
        }
        Assert.Equal(a, resumed);
        Assert.Contains("NF4", Trainer.PeekCheckpoint(ckpt).Shape);
        using (var f32 = new Trainer(im.Shape, opts, corpus, 1, seqLen: 32, lora: lora))
            Assert.Contains("another model", Assert.Throws<CriaException>(() => f32.LoadCheckpoint(ckpt, 11)).Message);
        Assert.Equal(codes, nf4.Tensor.Codes);
        float first = a.Take(3).Average(), last = a.TakeLast(5).Average();
        output.WriteLine($"QLoRA loss {first:F3} → {last:F3} in {a.Length} steps");
        Assert.True(last < 0.5f * first, $"loss went from {first} to {last}");

        Assert.Contains("LoRA rank", Assert.Throws<CriaException>(() => new LlamaTrainingModel(im.Shape, 1, 8, 1, frozenBase: im.Frozen)).Message);
        string q = QuantizedBundled("q4_k_m");
        Assert.True(GgufImport.HasQuantizedTensors(q));
        Assert.False(GgufImport.HasQuantizedTensors(TestPaths.Bundled()));
        Assert.Contains("already Q4_K", Assert.Throws<CriaException>(() => GgufImport.Read(q, storage: BaseStorage.Nf4)).Message);
        Assert.Contains("--lora-rank", Assert.Throws<CriaException>(() => GgufImport.Read(q)).Message);
        var other = GgufImport.Read(TestPaths.Bundled("draft.gguf"), storage: BaseStorage.Nf4);
        Assert.Contains("frozen", Assert.Throws<CriaException>(() => new LlamaTrainingModel(im.Shape, 1, 8, 1, lora, frozenBase: other.Frozen)).Message);
    }
}
