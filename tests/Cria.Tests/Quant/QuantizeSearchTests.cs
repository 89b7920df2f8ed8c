using System.Runtime.Intrinsics;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

/// <summary>The 8-lane scale searches give the scalar searches' bytes (which are ggml's), for the reference and the
/// importance-weighted quantizers, on rows that exercise every branch: Gaussian, all-positive, constant, zero, tiny; in
/// every width this machine has (one Vector256, and the two Vector128 of ARM64 and x86 without AVX2).</summary>
[Collection("VectorSearch")]
public sealed class QuantizeSearchTests
{
    public static TheoryData<GgmlType> Types() => new()
    {
        GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
        GgmlType.IQ4_NL, GgmlType.IQ4_XS,
    };

    static IEnumerable<float[]> Rows(int n)
    {
        var rng = new Random(17);
        for (int r = 0; r < 40; r++) yield return QuantTestUtil.Gaussian(rng, n, 0.02f + r * 0.05f);
        for (int r = 0; r < 10; r++) yield return QuantTestUtil.Gaussian(rng, n).Select(MathF.Abs).ToArray();
        for (int r = 0; r < 10; r++) yield return QuantTestUtil.Gaussian(rng, n).Select(v => -MathF.Abs(v) * 1e-3f).ToArray();
        var heavy = QuantTestUtil.Gaussian(rng, n);
        for (int j = 0; j < n; j += 37) heavy[j] *= 40;
        yield return heavy;
        yield return Enumerable.Repeat(0.25f, n).ToArray();
        yield return new float[n];
        var sparse = new float[n];
        sparse[3] = 1; sparse[n - 1] = -2;
        yield return sparse;
    }

    /// <summary>The vector widths this machine runs (Vector128 everywhere .NET vectorizes, Vector256 with AVX2).</summary>
    internal static IEnumerable<SearchLanes> VectorLanes()
    {
        if (Vector128.IsHardwareAccelerated) yield return SearchLanes.Lanes128;
        if (Vector256.IsHardwareAccelerated) yield return SearchLanes.Lanes256;
    }

    /// <summary>Runs <paramref name="body"/> with the searches in <paramref name="lanes"/>, then restores the machine's choice.</summary>
    internal static void With(SearchLanes lanes, Action body)
    {
        var was = Quantize.Lanes;
        try { Quantize.Lanes = lanes; body(); }
        finally { Quantize.Lanes = was; }
    }

    [Fact]
    public void The_machine_gets_its_widest_lanes() =>
        Assert.Equal(Vector256.IsHardwareAccelerated ? SearchLanes.Lanes256 : Vector128.IsHardwareAccelerated ? SearchLanes.Lanes128 : SearchLanes.Scalar, Quantize.Lanes);

    [Theory]
    [MemberData(nameof(Types))]
    public void Vector_search_gives_the_scalar_bytes(GgmlType t)
    {
        const int n = 512;
        var qw = QuantTestUtil.Gaussian(new Random(3), n).Select(v => MathF.Exp(2 * v)).ToArray();
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t, n);
        var lanes = VectorLanes().ToList();
        Assert.NotEmpty(lanes);
        foreach (var lane in lanes)
        {
            int rows = 0;
            foreach (var x in Rows(n))
            {
                var a = new byte[rowBytes]; var b = new byte[rowBytes]; var c = new byte[rowBytes]; var d = new byte[rowBytes];
                With(lane, () => { Quantize.Row(t, x, a); Quantize.Row(t, x, c, qw); });
                With(SearchLanes.Scalar, () => { Quantize.Row(t, x, b); Quantize.Row(t, x, d, qw); });
                Assert.True(a.AsSpan().SequenceEqual(b), $"{t} reference, {lane}, row {rows}: vector and scalar bytes differ");
                Assert.True(c.AsSpan().SequenceEqual(d), $"{t} weighted, {lane}, row {rows}: vector and scalar bytes differ");
                rows++;
            }
        }
    }
}

/// <summary>IQ4's level choice: ggml's best_index_int8 (binary search, a tie to the upper level) and the vector
/// paths that count midpoints instead (both widths), at every midpoint, one float step either side of it, and on a
/// dense sweep.</summary>
[Collection("VectorSearch")]
public sealed class IQ4LevelChoiceTests
{
    [Fact]
    public void Midpoints_go_up_and_the_vector_paths_agree_with_the_search()
    {
        ReadOnlySpan<sbyte> v = Dequantize.IQ4Levels;
        var xs = new List<float>();
        for (int k = 0; k < 15; k++)
        {
            float m = (v[k] + v[k + 1]) * 0.5f;
            Assert.Equal(k + 1, Quantize.BestIndexInt8(v, m));                       // a tie takes the upper level
            Assert.Equal(k, Quantize.BestIndexInt8(v, MathF.BitDecrement(m)));
            Assert.Equal(k + 1, Quantize.BestIndexInt8(v, MathF.BitIncrement(m)));
            Assert.Equal((float)v[k + 1], Level(m));
            Assert.Equal((float)v[k], Level(MathF.BitDecrement(m)));
            xs.Add(m); xs.Add(MathF.BitDecrement(m)); xs.Add(MathF.BitIncrement(m));
        }
        for (float x = -140; x <= 140; x += 0.125f) xs.Add(x);
        xs.AddRange([float.MinValue, -1e30f, 1e30f, float.MaxValue, 0f, -0f]);
        foreach (var lanes in QuantizeSearchTests.VectorLanes())
        {
            var L = new byte[xs.Count];
            QuantizeSearchTests.With(lanes, () => Quantize.IQ4Indices(xs.ToArray(), 1f, L));
            for (int i = 0; i < xs.Count; i++)
            {
                int want = Quantize.BestIndexInt8(v, xs[i]);
                Assert.True(want == L[i], $"x = {xs[i]:R}, {lanes}: best_index_int8 {want}, counted {L[i]}");
                Assert.Equal((float)v[want], Level(xs[i]));
            }
        }
    }

    /// <summary>IQ4Level in lane 5 of both widths (they must agree).</summary>
    static float Level(float x)
    {
        float a = Quantize.IQ4Level(Lanes128.Create(x))[5];
        if (Vector256.IsHardwareAccelerated) Assert.Equal(a, Quantize.IQ4Level(Lanes256.Create(x))[5]);
        return a;
    }
}
