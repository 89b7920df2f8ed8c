using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

public class VecDotTests
{
    public static IEnumerable<object[]> Cases()
    {
        foreach (GgmlType t in QuantTestUtil.WeightTypes)
        {
            int qk = GgmlTypeInfo.BlockSize(t);
            int[] sizes = qk == 1 ? [1, 3, 7, 15, 16, 17, 31, 33, 64, 100, 255, 1000, 1023, 4096 + 13] : [qk, 3 * qk, 7 * qk, 33 * qk];
            foreach (int n in sizes) yield return [t, n];
        }
    }

    private static (byte[] w, byte[] a, float[] wd, float[] ad) Make(GgmlType t, int n, int seed)
    {
        var rng = new Random(seed);
        float[] wx = QuantTestUtil.Gaussian(rng, n, 0.05f);
        float[] ax = QuantTestUtil.Gaussian(rng, n, 2f);
        GgmlType at = VecDot.ActivationType(t);
        byte[] w = QuantTestUtil.Quant(t, wx);
        var a = new byte[GgmlTypeInfo.RowBytes(at, n)];
        VecDot.QuantizeActivations(at, ax, a);
        return (w, a, QuantTestUtil.Dequant(t, w, n), QuantTestUtil.Dequant(at, a, n));
    }

    // Scale for relative tolerances: Σ|w_i a_i|, which bounds any reordering error of the sum (plain |Σ| can cancel to ~0).
    private static double AbsDot(float[] wd, float[] ad)
    {
        double s = 0;
        for (int i = 0; i < wd.Length; i++) s += Math.Abs((double)wd[i] * ad[i]);
        return s;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fast_path_matches_scalar_reference(GgmlType t, int n)
    {
        var (w, a, wd, ad) = Make(t, n, 1000 + n + (int)t);
        float fast = VecDot.Dot(t, w, a, n);
        float scalar = VecDot.DotScalar(t, w, a, n);
        double tol = 1e-5 * AbsDot(wd, ad);
        Assert.True(Math.Abs(fast - scalar) <= tol, $"{t} n={n}: fast {fast} scalar {scalar} tol {tol}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Dot_equals_dequantized_dot(GgmlType t, int n)
    {
        var (w, a, wd, ad) = Make(t, n, 2000 + n + (int)t);
        double expected = 0;
        for (int i = 0; i < n; i++) expected += (double)wd[i] * ad[i];
        // Q8_1 stores its block sum s = d*Σq as fp16, which ggml uses for the m*s term: allow that rounding (2^-11).
        double rel = t is GgmlType.Q4_1 or GgmlType.Q5_1 ? 1e-3 : 1e-4;
        double tol = rel * AbsDot(wd, ad);
        float fast = VecDot.Dot(t, w, a, n), scalar = VecDot.DotScalar(t, w, a, n);
        Assert.True(Math.Abs(fast - expected) <= tol, $"{t} n={n}: Dot {fast} expected {expected} tol {tol}");
        Assert.True(Math.Abs(scalar - expected) <= tol, $"{t} n={n}: DotScalar {scalar} expected {expected} tol {tol}");
    }

    [Fact]
    public void Activation_types_follow_ggml()
    {
        Assert.Equal(GgmlType.F32, VecDot.ActivationType(GgmlType.F32));
        Assert.Equal(GgmlType.F16, VecDot.ActivationType(GgmlType.F16));
        Assert.Equal(GgmlType.BF16, VecDot.ActivationType(GgmlType.BF16));
        foreach (var t in new[] { GgmlType.Q4_0, GgmlType.Q5_0, GgmlType.Q8_0 }) Assert.Equal(GgmlType.Q8_0, VecDot.ActivationType(t));
        foreach (var t in new[] { GgmlType.Q4_1, GgmlType.Q5_1 }) Assert.Equal(GgmlType.Q8_1, VecDot.ActivationType(t));
        foreach (var t in new[] { GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K })
            Assert.Equal(GgmlType.Q8_K, VecDot.ActivationType(t));
    }

    [Fact]
    public void Extreme_weight_quants_are_exact_in_the_integer_part()
    {
        // Q8_0 weights of -128 (possible in files) against +-127 activations: the fast path must not saturate.
        const int n = 64;
        var w = new byte[2 * 34];
        var a = new byte[2 * 34];
        for (int b = 0; b < 2; b++)
        {
            w[b * 34] = 0x00; w[b * 34 + 1] = 0x3C; // d = 1
            a[b * 34] = 0x00; a[b * 34 + 1] = 0x3C;
            for (int j = 0; j < 32; j++) { w[b * 34 + 2 + j] = 0x80; a[b * 34 + 2 + j] = (byte)(sbyte)(j % 2 == 0 ? 127 : -127); }
        }
        Assert.Equal(0f, VecDot.DotScalar(GgmlType.Q8_0, w, a, n));
        Assert.Equal(0f, VecDot.Dot(GgmlType.Q8_0, w, a, n));
        for (int b = 0; b < 2; b++) for (int j = 0; j < 32; j++) a[b * 34 + 2 + j] = 127;
        Assert.Equal(-128f * 127 * 64, VecDot.DotScalar(GgmlType.Q8_0, w, a, n));
        Assert.Equal(-128f * 127 * 64, VecDot.Dot(GgmlType.Q8_0, w, a, n));
    }
}
