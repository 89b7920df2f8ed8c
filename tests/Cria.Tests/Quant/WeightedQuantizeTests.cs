using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>The importance-weighted quantizers (ggml's *_impl paths): the error they minimise, Σ w (x − x̂)², is lower
/// than the reference quantizer's on the same rows, and the output decodes to values near the input.</summary>
public sealed class WeightedQuantizeTests(ITestOutputHelper output)
{
    public static TheoryData<GgmlType> Types() => new()
    {
        GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
        GgmlType.IQ4_NL, GgmlType.IQ4_XS,
    };

    [Theory]
    [MemberData(nameof(Types))]
    public void Weighted_error_is_lower_than_the_reference_quantizers(GgmlType t)
    {
        var rng = new Random(5);
        const int n = 1024, rows = 64;
        double refErr = 0, impErr = 0;
        for (int r = 0; r < rows; r++)
        {
            var x = QuantTestUtil.Gaussian(rng, n);
            var qw = new float[n];                      // [n] importance, heavy-tailed like real activations
            for (int j = 0; j < n; j++) qw[j] = MathF.Exp(2f * QuantTestUtil.Gaussian(rng, 1)[0]);
            var a = QuantTestUtil.Dequant(t, QuantTestUtil.Quant(t, x), n);
            var b = new byte[GgmlTypeInfo.RowBytes(t, n)];
            Quantize.Row(t, x, b, qw);
            var c = QuantTestUtil.Dequant(t, b, n);
            for (int j = 0; j < n; j++)
            {
                refErr += qw[j] * (x[j] - a[j]) * (x[j] - a[j]);
                impErr += qw[j] * (x[j] - c[j]) * (x[j] - c[j]);
            }
        }
        output.WriteLine($"{t}: weighted error reference {refErr / rows:F2}, weighted {impErr / rows:F2} ({impErr / refErr:P1})");
        Assert.True(impErr < 0.97 * refErr, $"{t}: weighted quantization error {impErr:F2} is not below the reference's {refErr:F2}");
    }

    [Fact]
    public void Empty_weights_take_the_reference_path_and_a_wrong_length_is_refused()
    {
        var x = QuantTestUtil.Gaussian(new Random(1), 256);
        var b = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q4_K, 256)];
        Quantize.Row(GgmlType.Q4_K, x, b, ReadOnlySpan<float>.Empty);
        Assert.Equal(QuantTestUtil.Quant(GgmlType.Q4_K, x), b);
        Assert.Throws<ArgumentException>(() => Quantize.Row(GgmlType.Q4_K, x, b, new float[255]));
    }
}

/// <summary>The calibrated chooser (<see cref="Quantize.RowCalibrated"/>): per block the candidate with the smallest
/// activation-weighted error, so the row is never worse on that error than any single candidate.</summary>
public sealed class CalibratedChooserTests(ITestOutputHelper output)
{
    public static TheoryData<GgmlType> Types() => WeightedQuantizeTests.Types();

    static float[] Importance(Random rng, int n)
    {
        var qw = new float[n];                          // [n] heavy-tailed, a few dead columns
        for (int j = 0; j < n; j++) qw[j] = j % 97 == 5 ? 0f : MathF.Exp(2f * QuantTestUtil.Gaussian(rng, 1)[0]);
        return qw;
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void The_chosen_row_never_has_a_larger_weighted_error_than_a_candidate(GgmlType t)
    {
        var rng = new Random(11);
        const int n = 512;
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t, n), qk = GgmlTypeInfo.BlockSize(t), bs = GgmlTypeInfo.BlockBytes(t);
        double sumPlain = 0, sumGgml = 0, sumBest = 0;
        for (int r = 0; r < 48; r++)
        {
            var x = QuantTestUtil.Gaussian(rng, n, 0.05f);
            if (r % 8 == 0) x[r] *= 30;                 // an outlier weight now and then
            var qw = Importance(rng, n);
            var plain = new byte[rowBytes]; var ggml = new byte[rowBytes]; var imp = new byte[rowBytes]; var best = new byte[rowBytes];
            Quantize.Row(t, x, plain);
            Quantize.Row(t, x, ggml, qw);
            Quantize.RowCalibrated(t, x, imp, qw, CalibratedCandidates.Importance);
            Quantize.RowCalibrated(t, x, best, qw, CalibratedCandidates.All);
            var dflt = new byte[rowBytes];
            Quantize.RowCalibrated(t, x, dflt, qw);
            double ed = Quantize.WeightedError(t, x, dflt, qw);
            double ep = Quantize.WeightedError(t, x, plain, qw), eg = Quantize.WeightedError(t, x, ggml, qw);
            double ei = Quantize.WeightedError(t, x, imp, qw), eb = Quantize.WeightedError(t, x, best, qw);
            Assert.True(eb <= ep * (1 + 1e-12) && eb <= eg * (1 + 1e-12) && eb <= ei * (1 + 1e-12),
                $"{t} row {r}: chosen error {eb} above a candidate's (plain {ep}, ggml {eg}, importance {ei})");
            Assert.True(ed <= ep * (1 + 1e-12) && ed <= eg * (1 + 1e-12), $"{t} row {r}: default choice's error {ed} above plain {ep} or ggml {eg}");
            // Block by block too: every block of the chosen row is one of the candidates' blocks.
            for (int b = 0; b < n / qk; b++)
            {
                var blk = best.AsSpan(b * bs, bs);
                Assert.True(blk.SequenceEqual(plain.AsSpan(b * bs, bs)) || blk.SequenceEqual(ggml.AsSpan(b * bs, bs)) || blk.SequenceEqual(imp.AsSpan(b * bs, bs)),
                    $"{t} row {r} block {b} is none of the candidates");
            }
            sumPlain += ep; sumGgml += eg; sumBest += eb;
        }
        output.WriteLine($"{t}: weighted error plain {sumPlain:E3}, ggml imatrix {sumGgml:E3}, chosen {sumBest:E3} ({sumBest / sumPlain:P1} of plain)");
        Assert.True(sumBest < sumPlain, $"{t}: the chooser did not lower the weighted error ({sumBest} vs {sumPlain})");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void A_single_candidate_gives_that_quantizers_bytes(GgmlType t)
    {
        var rng = new Random(12);
        const int n = 512;
        var x = QuantTestUtil.Gaussian(rng, n);
        var qw = Importance(rng, n);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t, n);
        var a = new byte[rowBytes]; var b = new byte[rowBytes];
        Quantize.RowCalibrated(t, x, a, qw, CalibratedCandidates.Reference);
        Assert.Equal(QuantTestUtil.Quant(t, x), a);
        Quantize.RowCalibrated(t, x, a, qw, CalibratedCandidates.Ggml);
        Quantize.Row(t, x, b, qw);
        Assert.Equal(b, a);
    }

    /// <summary>Σ imp·x·x̂ / Σ imp·x²: the importance-weighted regression coefficient of the decoded row on the original.</summary>
    static double Regression(GgmlType t, float[] x, byte[] q, float[] qw)
    {
        var y = QuantTestUtil.Dequant(t, q, x.Length);
        double xy = 0, xx = 0;
        for (int j = 0; j < x.Length; j++) { xy += (double)qw[j] * x[j] * y[j]; xx += (double)qw[j] * x[j] * x[j]; }
        return xy / xx;
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void The_unbiased_row_scale_makes_the_weighted_regression_one_and_touches_only_the_float_scales(GgmlType t)
    {
        var rng = new Random(14);
        const int n = 1024;
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t, n), bs = GgmlTypeInfo.BlockBytes(t);
        // the F16 fields every value of a block is linear in (ggml-common.h): d, and m / dmin where the type has one
        int[] fields = t switch
        {
            GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 1, 2, 3],
            GgmlType.Q2_K => [80, 81, 82, 83],
            GgmlType.Q3_K => [108, 109],
            GgmlType.Q6_K => [208, 209],
            _ => [0, 1],
        };
        double sumFitted = 0, worst = 0;
        const int rows = 24;
        for (int r = 0; r < rows; r++)
        {
            var x = QuantTestUtil.Gaussian(rng, n, 0.05f);
            var qw = Importance(rng, n);
            var fitted = new byte[rowBytes]; var unbiased = new byte[rowBytes];
            Quantize.RowCalibrated(t, x, fitted, qw);
            Quantize.RowCalibrated(t, x, unbiased, qw, CalibratedCandidates.Default, unbiasedRowScale: true);
            for (int i = 0; i < rowBytes; i++)
                if (!fields.Contains(i % bs)) Assert.True(fitted[i] == unbiased[i], $"{t} row {r}: byte {i} (offset {i % bs} in its block) is not a float scale but changed");
            double bf = Regression(t, x, fitted, qw), bu = Regression(t, x, unbiased, qw);
            sumFitted += bf;
            worst = Math.Max(worst, Math.Abs(bu - 1));
            // one factor for the whole row: F16 rounding of each scale leaves at most ~2⁻¹¹ relative
            Assert.True(Math.Abs(bu - 1) < 1.5e-3, $"{t} row {r}: regression coefficient {bu} after the unbiased row scale (fitted {bf})");
        }
        output.WriteLine($"{t}: weighted regression coefficient, fitted scales {sumFitted / rows:F5} (mean), unbiased within {worst:E1} of 1");
        // The least-squares-fitted encodings shrink: below 1 on average at 2–4 bits.
        if (t is GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_0 or GgmlType.Q4_K) Assert.True(sumFitted / rows < 0.999, $"{t}: fitted coefficient {sumFitted / rows}");
    }

    [Fact]
    public void The_unbiased_row_scale_leaves_lattice_types_and_a_wrong_importance_is_refused()
    {
        var rng = new Random(15);
        var x = QuantTestUtil.Gaussian(rng, 512);
        var qw = Importance(rng, 512);
        var a = new byte[GgmlTypeInfo.RowBytes(GgmlType.IQ3_S, 512)]; var b = new byte[a.Length];
        Quantize.RowCalibrated(GgmlType.IQ3_S, x, a, qw);
        Quantize.RowCalibrated(GgmlType.IQ3_S, x, b, qw, CalibratedCandidates.Default, unbiasedRowScale: true);
        Assert.Equal(a, b);
        var q = QuantTestUtil.Quant(GgmlType.Q4_K, x);
        Assert.Throws<ArgumentException>(() => Quantize.UnbiasRowScale(GgmlType.Q4_K, x, q, new float[100]));
        Assert.Throws<ArgumentException>(() => Quantize.UnbiasRowScale(GgmlType.Q4_K, x, q.AsSpan(0, q.Length - 1), qw));
    }

    [Fact]
    public void Weighted_error_with_a_uniform_importance_is_the_squared_error()
    {
        var rng = new Random(13);
        var x = QuantTestUtil.Gaussian(rng, 256);
        var q = QuantTestUtil.Quant(GgmlType.Q3_K, x);
        var y = QuantTestUtil.Dequant(GgmlType.Q3_K, q, 256);
        double se = 0;
        for (int j = 0; j < 256; j++) se += (double)(x[j] - y[j]) * (x[j] - y[j]);
        Assert.True(se > 0);
        Assert.Equal(se, Quantize.WeightedError(GgmlType.Q3_K, x, q, Enumerable.Repeat(1f, 256).ToArray()), 1e-9);
        Assert.Equal(se, Quantize.WeightedError(GgmlType.Q3_K, x, q, ReadOnlySpan<float>.Empty), 1e-9);
        Assert.Equal(4 * se, Quantize.WeightedError(GgmlType.Q3_K, x, q, Enumerable.Repeat(4f, 256).ToArray()), 1e-9);
    }

    [Fact]
    public void Bad_arguments_are_refused()
    {
        var x = new float[256];
        var b = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q4_K, 256)];
        Assert.Throws<ArgumentException>(() => Quantize.RowCalibrated(GgmlType.Q4_K, x, b, new float[255]));
        Assert.Throws<ArgumentException>(() => Quantize.RowCalibrated(GgmlType.Q4_K, x, b, new float[256], 0));
        Assert.Throws<ArgumentException>(() => Quantize.RowCalibrated(GgmlType.Q4_K, x, new byte[10], new float[256]));
        Assert.Throws<ArgumentException>(() => Quantize.WeightedError(GgmlType.Q4_K, x, b, new float[3]));
        // Types ggml quantizes without weights: the importance is ignored, the bytes are the reference ones.
        var q8 = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q8_0, 256)];
        var xs = QuantTestUtil.Gaussian(new Random(2), 256);
        Quantize.RowCalibrated(GgmlType.Q8_0, xs, q8, Enumerable.Repeat(2f, 256).ToArray());
        Assert.Equal(QuantTestUtil.Quant(GgmlType.Q8_0, xs), q8);
    }
}
