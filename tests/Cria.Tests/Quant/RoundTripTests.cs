using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

public class RoundTripTests
{
    /// <summary>
    /// Per-block bound on |x - dequant(quant(x))| for the round-to-nearest formats, in terms of the block's own values.
    /// The small extra terms cover the fp16 rounding of d (2^-11 relative, times at most 127 steps) and of m.
    /// </summary>
    private static double BlockBound(GgmlType t, ReadOnlySpan<float> x)
    {
        float amax = 0, min = float.MaxValue, max = -float.MaxValue;
        foreach (float v in x) { amax = MathF.Max(amax, MathF.Abs(v)); min = MathF.Min(min, v); max = MathF.Max(max, v); }
        return t switch
        {
            GgmlType.Q8_0 or GgmlType.Q8_1 => 0.5 * amax / 127 + amax * 1e-3,       // half a step + fp16(d) error
            GgmlType.Q8_K => 0.5 * amax / 127 * (1 + 1e-6),                            // d kept in f32
            GgmlType.Q4_0 => amax / 8 * 1.01,   // max maps to -8, the far side clamps at +7: up to one whole step
            GgmlType.Q5_0 => amax / 16 * 1.01,
            GgmlType.Q4_1 => 0.5 * (max - min) / 15 + (max - min) * 1e-2 / 15 + Math.Abs(min) * 1e-3,
            GgmlType.Q5_1 => 0.5 * (max - min) / 31 + (max - min) * 1e-2 / 31 + Math.Abs(min) * 1e-3,
            _ => throw new ArgumentException(t.ToString()),
        };
    }

    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q8_1)]
    [InlineData(GgmlType.Q8_K)]
    public void Round_to_nearest_formats_stay_within_a_step(GgmlType t)
    {
        var rng = new Random(42 + (int)t);
        int qk = GgmlTypeInfo.BlockSize(t);
        float[] x = QuantTestUtil.Gaussian(rng, qk * 40);
        for (int i = 0; i < qk; i++) x[i] = 0; // one all-zero block
        for (int i = qk; i < 2 * qk; i++) x[i] += 3; // one block well away from zero (exercises the min of *_1)
        float[] y = QuantTestUtil.Dequant(t, QuantTestUtil.Quant(t, x), x.Length);
        for (int b = 0; b < x.Length / qk; b++)
        {
            double bound = BlockBound(t, x.AsSpan(b * qk, qk));
            for (int i = b * qk; i < (b + 1) * qk; i++)
                Assert.True(Math.Abs(x[i] - y[i]) <= bound + 1e-30, $"{t} element {i}: {x[i]} -> {y[i]}, bound {bound}");
        }
        for (int i = 0; i < qk; i++) Assert.Equal(0f, y[i]);
    }

    /// <summary>
    /// K-quants: relative RMS error over N(0,1) rows. Bounds are ~1.15x what these reference
    /// quantizers achieve on this data (Q2_K 0.295, Q3_K 0.152, Q4_K 0.072, Q5_K 0.035, Q6_K 0.018, Q8_0 0.0054); a broken bit layout gives errors of order 1.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q2_K, 0.33)]
    [InlineData(GgmlType.Q3_K, 0.18)]
    [InlineData(GgmlType.Q4_K, 0.085)]
    [InlineData(GgmlType.Q5_K, 0.042)]
    [InlineData(GgmlType.Q6_K, 0.021)]
    [InlineData(GgmlType.Q8_0, 0.0062)]
    [InlineData(GgmlType.F16, 0.00025)]
    [InlineData(GgmlType.BF16, 0.002)]
    public void Relative_rms_error_is_bounded(GgmlType t, double bound)
    {
        var rng = new Random(7 + (int)t);
        float[] x = QuantTestUtil.Gaussian(rng, 256 * 16);
        float[] y = QuantTestUtil.Dequant(t, QuantTestUtil.Quant(t, x), x.Length);
        double se = 0, s = 0;
        for (int i = 0; i < x.Length; i++) { se += (x[i] - y[i]) * (double)(x[i] - y[i]); s += x[i] * (double)x[i]; }
        double rel = Math.Sqrt(se / s);
        Assert.True(rel < bound, $"{t}: relative rms error {rel:G4} >= {bound}");
        Assert.True(rel > 0 || t == GgmlType.F32, "a lossy format reproduced Gaussian data exactly");
    }

    [Theory]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    public void K_quants_handle_zero_constant_and_outlier_blocks(GgmlType t)
    {
        var rng = new Random(3);
        var x = new float[256 * 3];
        for (int i = 256; i < 512; i++) x[i] = 0.75f;                      // constant block
        float[] g = QuantTestUtil.Gaussian(rng, 256);
        g[17] = 40f;                                                       // outlier
        g.CopyTo(x, 512);
        float[] y = QuantTestUtil.Dequant(t, QuantTestUtil.Quant(t, x), x.Length);
        for (int i = 0; i < 256; i++) Assert.Equal(0f, y[i]);
        for (int i = 256; i < 512; i++) Assert.True(Math.Abs(y[i] - 0.75f) < 0.2f, $"{t} constant block: {y[i]}");
        Assert.True(Math.Abs(y[512 + 17] - 40f) < 40f * 0.15f, $"{t} outlier: {y[512 + 17]}");
        foreach (float v in y) Assert.True(float.IsFinite(v));
    }

    [Fact]
    public void Plain_types_round_trip()
    {
        float[] x = QuantTestUtil.Gaussian(new Random(5), 100);
        Assert.Equal(x, QuantTestUtil.Dequant(GgmlType.F32, QuantTestUtil.Quant(GgmlType.F32, x), 100));
        float[] h = QuantTestUtil.Dequant(GgmlType.F16, QuantTestUtil.Quant(GgmlType.F16, x), 100);
        for (int i = 0; i < x.Length; i++) Assert.Equal((float)(Half)x[i], h[i]);
        float[] b = QuantTestUtil.Dequant(GgmlType.BF16, QuantTestUtil.Quant(GgmlType.BF16, x), 100);
        for (int i = 0; i < x.Length; i++) Assert.True(Math.Abs(x[i] - b[i]) <= Math.Abs(x[i]) / 256);
    }

    [Fact]
    public void Q8_K_block_sums_match_quants()
    {
        float[] x = QuantTestUtil.Gaussian(new Random(9), 512);
        byte[] q = QuantTestUtil.Quant(GgmlType.Q8_K, x);
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 16; j++)
            {
                int s = 0;
                for (int i = 0; i < 16; i++) s += (sbyte)q[b * 292 + 4 + 16 * j + i];
                Assert.Equal(s, BitConverter.ToInt16(q, b * 292 + 260 + 2 * j));
            }
    }

    [Fact]
    public void NearestInt_rounds_half_to_even()
    {
        Assert.Equal(2, Quantize.NearestInt(2.5f));
        Assert.Equal(4, Quantize.NearestInt(3.5f));
        Assert.Equal(-2, Quantize.NearestInt(-2.5f));
        Assert.Equal(-3, Quantize.NearestInt(-2.6f));
        Assert.Equal(0, Quantize.NearestInt(0.49999997f));
    }
}
