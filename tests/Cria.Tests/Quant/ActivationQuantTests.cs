using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>
/// Simulated activation quantization (COMET's FMPQ and uniform A4/A8): a row's blocks against a hand computation of
/// symmetric b-bit rounding in the layout's channel order; the FMPQ layout puts the planted outlier channels into the
/// high-precision blocks; on the bundled model the KL divergence from the unquantized activations orders A8 &lt; FMPQ &lt;
/// A4, and the output head's input is left alone.
/// </summary>
public sealed class ActivationQuantTests(ITestOutputHelper output)
{
    /// <summary>Symmetric rounding of one block, written out: s = max|x| / (2^(b−1) − 1), x̂ = round(x / s)·s.</summary>
    static float[] Reference(float[] block, int bits)
    {
        double amax = block.Max(v => Math.Abs((double)v));
        int qmax = (1 << (bits - 1)) - 1;
        float s = (float)(amax / qmax);
        return block.Select(v => MathF.Round(v / s) * s).ToArray();
    }

    [Fact]
    public void A_row_is_rounded_block_by_block_in_the_layout_order_with_the_blocks_bits()
    {
        var o = new ActivationQuantOptions { Mode = ActivationQuantMode.Mixed, Bits = 4, OutlierBits = 8, Block = 4 };
        float[] x = [0.5f, -1.0f, 0.25f, 9.0f, 0.1f, -0.3f, 0.7f, 0.05f, 0.33f, -0.61f];
        // channels 3 and 6 first (the high block, with 1 and 0), then 2 4 5 7, then 8 9 (a short last block)
        var layout = new ActivationQuantizer.Layout([3, 6, 1, 0, 2, 4, 5, 7, 8, 9], [true, false, false], OutlierChannels: 2);
        var row = x.ToArray();
        ActivationQuantizer.QuantizeRow(row, layout, o);
        var expect = new float[x.Length];
        int[][] blocks = [[3, 6, 1, 0], [2, 4, 5, 7], [8, 9]];
        for (int b = 0; b < blocks.Length; b++)
        {
            var q = Reference(blocks[b].Select(c => x[c]).ToArray(), b == 0 ? 8 : 4);
            for (int i = 0; i < blocks[b].Length; i++) expect[blocks[b][i]] = q[i];
        }
        Assert.Equal(expect, row);
        Assert.Equal(9.0f, row[3]);                                     // a block's largest value is exact
        Assert.NotEqual(x[4], row[4]);                                  // 0.1 in a 4-bit block of max 0.7 is not

        // A high block need not lead (the layout without the permutation); a zero block stays zero.
        row = x.ToArray();
        ActivationQuantizer.QuantizeRow(row, layout with { High = [false, true, false] }, o);
        for (int b = 0; b < blocks.Length; b++)
        {
            var q = Reference(blocks[b].Select(c => x[c]).ToArray(), b == 1 ? 8 : 4);
            for (int i = 0; i < blocks[b].Length; i++) Assert.Equal(q[i], row[blocks[b][i]]);
        }
        var zeros = new float[4];
        ActivationQuantizer.QuantizeRow(zeros, ActivationQuantizer.Layout.Plain(4, 4), o);
        Assert.All(zeros, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void The_fmpq_layout_puts_the_outlier_channels_into_the_high_precision_blocks()
    {
        var o = new ActivationQuantOptions { Mode = ActivationQuantMode.Mixed, Block = 8, OutlierRatio = 4 };
        var rng = new Random(3);
        var absMax = Enumerable.Range(0, 32).Select(_ => 1f + (float)rng.NextDouble()).ToArray();
        absMax[17] = 40; absMax[5] = 12; absMax[29] = 6.5f;
        var l = ActivationQuantizer.MakeLayout(absMax, o);
        Assert.Equal(3, l.OutlierChannels);
        Assert.Equal(1, l.HighBlocks);
        Assert.Equal([17, 5, 29], l.Order[..3]);
        Assert.Equal(Enumerable.Range(0, 32), l.Order.Order());         // a permutation
        var rest = l.Order[8..];
        Assert.Equal(rest.Order(), rest);                               // the others keep their channel order
        Assert.True(l.Order[3..8].All(c => rest.All(r => absMax[c] >= absMax[r])), "the high block is filled with the next largest channels");

        // Without the permutation: channel order, and the blocks holding 5, 17 and 29 (0, 2, 3) are the high ones.
        var inPlace = ActivationQuantizer.MakeLayout(absMax, o with { Mode = ActivationQuantMode.MixedInPlace });
        Assert.Equal(Enumerable.Range(0, 32), inPlace.Order);
        Assert.Equal([true, false, true, true], inPlace.High);
        Assert.Equal(3, inPlace.OutlierChannels);

        absMax[17] = absMax[5] = absMax[29] = 1.5f;
        Assert.Equal(0, ActivationQuantizer.MakeLayout(absMax, o).HighBlocks);
        var uniform = ActivationQuantizer.MakeLayout(absMax, o with { Mode = ActivationQuantMode.Uniform });
        Assert.Equal(Enumerable.Range(0, 32), uniform.Order);
        Assert.Throws<CriaException>(() => (o with { OutlierBits = 3 }).Validate());
        Assert.Throws<CriaException>(() => (o with { OutlierRatio = 1 }).Validate());
    }

    [Fact]
    public void On_the_bundled_model_fmpq_lies_between_a8_and_a4()
    {
        string path = TestPaths.Bundled("default.gguf");
        string Text(string name) => File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Texts", name));
        using var m = LlamaModel.Open(path);
        using var reference = new InferenceContext(m, new ContextOptions { ContextSize = 128, Threads = 2 });
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 128, Threads = 2 });
        string eval = Text("kjv-valid.txt");
        double Kld(ActivationQuantizer? q)
        {
            ctx.ActivationTransform = q;
            return Perplexity.CompareTo(reference, ctx, m.Tokenizer, eval, 128, maxChunks: 12).MeanKld;
        }
        var fmpq = ActivationQuantizer.Calibrate(m, Text("kjv-train.txt"), 128, 16, 2, new ActivationQuantOptions());
        Assert.All(fmpq.Layouts.Keys, k => Assert.StartsWith("blk.", k));
        Assert.True(fmpq.HighPrecisionFraction is > 0 and < 0.5, $"INT8 share {fmpq.HighPrecisionFraction}");
        Assert.Equal(4 + 4 * fmpq.HighPrecisionFraction + 16.0 / 128, fmpq.BitsPerValue, 12);   // codes and an F16 scale per block
        var inPlace = ActivationQuantizer.Calibrate(m, Text("kjv-train.txt"), 128, 16, 2, new ActivationQuantOptions { Mode = ActivationQuantMode.MixedInPlace });
        Assert.True(fmpq.HighPrecisionFraction < inPlace.HighPrecisionFraction, $"the permutation should need fewer INT8 channels: {fmpq.HighPrecisionFraction} vs {inPlace.HighPrecisionFraction}");
        double none = Kld(null);
        double a8 = Kld(ActivationQuantizer.Uniform(m, new ActivationQuantOptions { Mode = ActivationQuantMode.Uniform, Bits = 8 }));
        double mixed = Kld(fmpq);
        double a4 = Kld(ActivationQuantizer.Uniform(m, new ActivationQuantOptions { Mode = ActivationQuantMode.Uniform, Bits = 4 }));
        output.WriteLine($"KLD: none {none:E2}, A8 {a8:E3}, FMPQ {mixed:E3} ({fmpq.BitsPerValue:F2} bits), A4 {a4:E3}");
        Assert.Equal(0, none, 9);
        Assert.True(a8 < mixed && mixed < a4, $"A8 {a8}, FMPQ {mixed}, A4 {a4}");
    }
}
