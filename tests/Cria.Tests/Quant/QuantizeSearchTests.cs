using System.Runtime.Intrinsics;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

/// <summary>The 8-lane scale searches give the scalar searches' bytes (which are ggml's), for the reference and the
/// importance-weighted quantizers, on rows that exercise every branch: Gaussian, all-positive, constant, zero, tiny.</summary>
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

    [Theory]
    [MemberData(nameof(Types))]
    public void Vector_search_gives_the_scalar_bytes(GgmlType t)
    {
        Assert.True(Quantize.VectorSearch || !System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated);
        const int n = 512;
        var qw = QuantTestUtil.Gaussian(new Random(3), n).Select(v => MathF.Exp(2 * v)).ToArray();
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t, n), rows = 0;
        foreach (var x in Rows(n))
        {
            var a = new byte[rowBytes]; var b = new byte[rowBytes]; var c = new byte[rowBytes]; var d = new byte[rowBytes];
            try
            {
                Quantize.VectorSearch = true;
                Quantize.Row(t, x, a);
                Quantize.Row(t, x, c, qw);
                Quantize.VectorSearch = false;
                Quantize.Row(t, x, b);
                Quantize.Row(t, x, d, qw);
            }
            finally { Quantize.VectorSearch = System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated; }
            Assert.True(a.AsSpan().SequenceEqual(b), $"{t} reference, row {rows}: vector and scalar bytes differ");
            Assert.True(c.AsSpan().SequenceEqual(d), $"{t} weighted, row {rows}: vector and scalar bytes differ");
            rows++;
        }
    }
}

/// <summary>IQ4's level choice: ggml's best_index_int8 (binary search, a tie to the upper level) and the vector
/// paths that count midpoints instead, at every midpoint, one float step either side of it, and on a dense sweep.</summary>
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
            Assert.Equal((float)v[k + 1], Quantize.IQ4Level(System.Runtime.Intrinsics.Vector256.Create(m)).GetElement(0));
            Assert.Equal((float)v[k], Quantize.IQ4Level(System.Runtime.Intrinsics.Vector256.Create(MathF.BitDecrement(m))).GetElement(0));
            xs.Add(m); xs.Add(MathF.BitDecrement(m)); xs.Add(MathF.BitIncrement(m));
        }
        for (float x = -140; x <= 140; x += 0.125f) xs.Add(x);
        xs.AddRange([float.MinValue, -1e30f, 1e30f, float.MaxValue, 0f, -0f]);
        var L = new byte[xs.Count];
        Quantize.IQ4Indices(xs.ToArray(), 1f, L);
        for (int i = 0; i < xs.Count; i++)
        {
            int want = Quantize.BestIndexInt8(v, xs[i]);
            Assert.True(want == L[i], $"x = {xs[i]:R}: best_index_int8 {want}, counted {L[i]}");
            Assert.Equal((float)v[want], Quantize.IQ4Level(System.Runtime.Intrinsics.Vector256.Create(xs[i])).GetElement(0));
        }
    }
}
