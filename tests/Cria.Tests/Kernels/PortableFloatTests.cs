using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// The portable float tier (RowKernels.Portable.cs, the 128-bit paths of Ops and attention's softmax), which machines
/// without AVX2 run — ARM64 among them. Both multiply-add policies run on this machine (fused, as ARM64's fmla and x86's
/// FMA; split, as x86 without FMA), so CI covers the code either kind of machine runs.
/// </summary>
public unsafe class PortableFloatTests
{
    public static TheoryData<GgmlType> Types => new() { GgmlType.F32, GgmlType.F16, GgmlType.BF16 };

    /// <summary>Rows of the type, and the float each stored value means.</summary>
    static (byte[] Bytes, float[] Values) Rows(GgmlType type, float[] values)
    {
        int es = type == GgmlType.F32 ? 4 : 2;
        var bytes = new byte[values.Length * es];
        var exact = new float[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            switch (type)
            {
                case GgmlType.F32: BitConverter.TryWriteBytes(bytes.AsSpan(4 * i), values[i]); exact[i] = values[i]; break;
                case GgmlType.F16: { ushort h = Fp16.FromSingle(values[i]); BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), h); exact[i] = Fp16.ToSingle(h); break; }
                default: { ushort b = Bf16.FromSingle(values[i]); BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), b); exact[i] = Bf16.ToSingle(b); break; }
            }
        }
        return (bytes, exact);
    }

    static float[] Random(Random rng, int count, float scale = 1) => Enumerable.Range(0, count).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();

    static float Dot<TMac>(GgmlType type, byte[] w, int wo, float[] x, int xo, int n) where TMac : IMulAdd
    {
        fixed (byte* pw = w) fixed (float* px = x) return RowKernels.DotPortableFloat<TMac>(type, pw + wo, px + xo, n);
    }

    /// <summary>Random rows (n = 259: 64 vector steps and a tail of three): each policy within 1e-5 of Σ|w·x| of the exact
    /// (double) dot product of the stored values.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void Agrees_with_the_exact_dot_product(GgmlType type)
    {
        const int n = 259, rows = 5;
        var rng = new Random(3);
        var (w, wv) = Rows(type, Random(rng, rows * n, 2));
        var x = Random(rng, n, 3);
        int rb = w.Length / rows;
        for (int r = 0; r < rows; r++)
        {
            double exact = 0, mag = 0;
            for (int i = 0; i < n; i++) { exact += (double)wv[r * n + i] * x[i]; mag += Math.Abs((double)wv[r * n + i] * x[i]); }
            foreach (float got in new[] { Dot<FusedMulAdd>(type, w, r * rb, x, 0, n), Dot<SplitMulAdd>(type, w, r * rb, x, 0, n) })
                Assert.True(Math.Abs(got - exact) <= 1e-5 * mag, $"{type} row {r}: {got} vs {exact}");
        }
    }

    /// <summary>Small integers (exact in F16 and BF16; every partial sum an integer below 2^24): both policies give the
    /// integer sum exactly, and the F16/BF16 widening reads every value right.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void Equals_the_integer_sum_on_integers(GgmlType type)
    {
        const int n = 130;
        var rng = new Random(5);
        var (w, wv) = Rows(type, Enumerable.Range(0, n).Select(_ => (float)rng.Next(-16, 17)).ToArray());
        var x = Enumerable.Range(0, n).Select(_ => (float)rng.Next(-100, 101)).ToArray();
        float expected = 0;
        for (int i = 0; i < n; i++) expected += wv[i] * x[i];
        Assert.Equal(expected, Dot<FusedMulAdd>(type, w, 0, x, 0, n));
        Assert.Equal(expected, Dot<SplitMulAdd>(type, w, 0, x, 0, n));
    }

    /// <summary>Decode (four rows at a time, 11 rows so the last group has three; F16 also with its halves read scaled
    /// down) and prefill (3 × 3 tiles over 12-row tiles of activations, B = 14, rows [1, 11)) give each pair the bits of
    /// the one-pair kernel, under both policies.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void Decode_and_prefill_give_the_bits_of_one_pair(GgmlType type)
    {
        Check<FusedMulAdd>(type);
        Check<SplitMulAdd>(type);

        static void Check<TMac>(GgmlType type) where TMac : IMulAdd
        {
            const int n = 67, rows = 11, B = 14, r0 = 1;
            var rng = new Random(9);
            var (w, _) = Rows(type, Random(rng, rows * n));
            var x = Random(rng, B * n);
            int rb = w.Length / rows;
            var decode = new float[rows];
            var prefill = new float[B * rows];
            fixed (byte* pw = w) fixed (float* px = x) fixed (float* pd = decode) fixed (float* pp = prefill)
            {
                RowKernels.RunRowsPortable<TMac>(type, pw, rb, 0, rows, px, n, pd);
                RowKernels.FloatBlockPortable<TMac>(type, pw, rb, r0, rows, (byte*)px, n * 4, B, n, pp, rows);
            }
            if (type == GgmlType.F16)
            {
                // a finite F16 matrix decodes with its halves read scaled down by 2^-112, against x · 2^112 at x + n
                var x2 = x.Take(n).Concat(x.Take(n).Select(v => v * 5.192297e33f)).ToArray();
                var scaled = new float[rows];
                fixed (byte* pw = w) fixed (float* px = x2) fixed (float* ps = scaled)
                    RowKernels.RunRowsPortable<TMac>(type, pw, rb, 0, rows, px, n, ps, finiteF16: true);
                Assert.Equal(decode, scaled);
            }
            for (int r = 0; r < rows; r++)
            {
                Assert.Equal(Dot<TMac>(type, w, r * rb, x, 0, n), decode[r]);
                for (int b = 0; b < B && r >= r0; b++)
                    Assert.Equal(Dot<TMac>(type, w, r * rb, x, b * n, n), prefill[b * rows + r]);
            }
        }
    }

    /// <summary>Every one of the 65536 halves widens (four lanes at a time) to <see cref="Fp16.ToSingle"/>'s float:
    /// subnormals, signed zeros, infinities; a NaN stays a NaN.</summary>
    [Fact]
    public void Halves_widen_exactly()
    {
        var h = new ushort[65536];
        for (int i = 0; i < h.Length; i++) h[i] = (ushort)i;
        fixed (ushort* p = h)
            for (int i = 0; i < h.Length; i += 4)
            {
                var v = RowKernels.LoadHalves4(p + i);
                for (int k = 0; k < 4; k++)
                {
                    float want = Fp16.ToSingle(h[i + k]);
                    if (float.IsNaN(want)) Assert.True(float.IsNaN(v[k]), $"half 0x{i + k:X4}");
                    else Assert.Equal(BitConverter.SingleToInt32Bits(want), BitConverter.SingleToInt32Bits(v[k]));
                }
            }
    }

    /// <summary>An F16 row holding an infinity gives ±∞ (or NaN, with ∞ − ∞), as the widened reference does, in decode
    /// and prefill alike.</summary>
    [Fact]
    public void Infinite_halves_reach_the_result()
    {
        const int n = 12;
        var (w, wv) = Rows(GgmlType.F16, Enumerable.Range(0, 2 * n).Select(i => i == 5 ? float.PositiveInfinity : i == n + 2 ? float.NegativeInfinity : i == n + 9 ? float.PositiveInfinity : 1f).ToArray());
        var x = Enumerable.Repeat(1f, n).ToArray();
        var y = new float[2];
        fixed (byte* pw = w) fixed (float* px = x) fixed (float* py = y) RowKernels.RunRowsPortable<SplitMulAdd>(GgmlType.F16, pw, 2 * n, 0, 2, px, n, py);
        Assert.Equal(float.PositiveInfinity, y[0]);
        Assert.True(float.IsNaN(y[1]));
        Assert.Equal(float.PositiveInfinity, wv[5]);
    }

    /// <summary>e^x on four lanes equals its scalar twin bit for bit under both policies (so a value's e^x does not
    /// depend on whether it fell in a vector or the tail), the fused twin is <see cref="Ops.ExpScalar(float)"/> (the AVX2
    /// kernel's reference), and both are within 2 ulp of e^x over [−87, 88]; −∞ and below −88 give 0, NaN gives NaN.</summary>
    [Fact]
    public void Exp_lanes_equal_the_scalar_twin()
    {
        var rng = new Random(1);
        var xs = new List<float> { 0f, -0f, 1f, -1f, 88f, 88.7f, -87.3f, -88f, -100f, 100f, float.NegativeInfinity, float.NaN, 0.5f * MathF.Log(2), 1.5f * MathF.Log(2) };
        for (int i = 0; i < 4000; i++) xs.Add((float)(rng.NextDouble() * 175 - 87));
        while (xs.Count % 4 != 0) xs.Add(0.25f);
        Check<FusedMulAdd>();
        Check<SplitMulAdd>();

        void Check<TMac>() where TMac : IMulAdd
        {
            for (int i = 0; i < xs.Count; i += 4)
            {
                var v = Ops.Exp<TMac>(Vector128.Create(xs[i], xs[i + 1], xs[i + 2], xs[i + 3]));
                for (int k = 0; k < 4; k++)
                {
                    float x = xs[i + k], s = Ops.ExpScalar<TMac>(x);
                    if (float.IsNaN(x)) { Assert.True(float.IsNaN(v[k]) && float.IsNaN(s)); continue; }
                    Assert.Equal(BitConverter.SingleToInt32Bits(s), BitConverter.SingleToInt32Bits(v[k]));
                    if (typeof(TMac) == typeof(FusedMulAdd)) Assert.Equal(Ops.ExpScalar(x), s);
                    if (x < -88f) Assert.Equal(0f, s);
                    else if (x >= -87f && x <= 88f)
                    {
                        float e = (float)Math.Exp(x);
                        Assert.True(Math.Abs(s - e) <= 2 * MathF.BitIncrement(e) - 2 * e, $"{typeof(TMac).Name} e^{x}: {s} vs {e}");
                    }
                }
            }
        }
    }

    /// <summary>Ops' portable dot product and y += a·x against double references; on integers, exact.</summary>
    [Fact]
    public void Ops_dot_and_axpy_agree_with_references()
    {
        var rng = new Random(2);
        foreach (int n in new[] { 4, 7, 8, 33, 256 })
        {
            var a = Random(rng, n); var b = Random(rng, n);
            double exact = 0, mag = 0;
            for (int i = 0; i < n; i++) { exact += (double)a[i] * b[i]; mag += Math.Abs((double)a[i] * b[i]); }
            Assert.True(Math.Abs(Ops.DotPortable<FusedMulAdd>(a, b) - exact) <= 1e-6 * mag);
            Assert.True(Math.Abs(Ops.DotPortable<SplitMulAdd>(a, b) - exact) <= 1e-6 * mag);

            var ints = Enumerable.Range(0, n).Select(_ => (float)rng.Next(-50, 51)).ToArray();
            var y0 = Enumerable.Range(0, n).Select(_ => (float)rng.Next(-50, 51)).ToArray();
            var yf = (float[])y0.Clone(); var ys = (float[])y0.Clone();
            Ops.AxpyPortable<FusedMulAdd>(3f, ints, yf);
            Ops.AxpyPortable<SplitMulAdd>(3f, ints, ys);
            for (int i = 0; i < n; i++) { Assert.Equal(y0[i] + 3f * ints[i], yf[i]); Assert.Equal(y0[i] + 3f * ints[i], ys[i]); }
            float want = 0;
            for (int i = 0; i < n; i++) want += ints[i] * y0[i];
            Assert.Equal(want, Ops.DotPortable<SplitMulAdd>(ints, y0));
        }
    }

    /// <summary>Training's GEMM tiles on 128-bit vectors: the 4 × 4 dot-product tile (C = A·Bᵀ; k = 37, a tail of one)
    /// within 1e-5 of Σ|a·b| of the double sums under both policies; the 4 × 8 accumulate tile (C += A·B, A read
    /// transposed through its strides) likewise, and fused it has the bits of the AVX2 4 × 32 tile's first eight columns,
    /// since every element is its own chain over p.</summary>
    [Fact]
    public void Training_gemm_tiles_agree_with_references()
    {
        const int k = 37;
        var rng = new Random(4);
        var a = Random(rng, 4 * k); var b = Random(rng, 4 * k);
        Tiles<FusedMulAdd>();
        Tiles<SplitMulAdd>();

        void Tiles<TMac>() where TMac : IMulAdd
        {
            var c = new float[4 * 4];
            fixed (float* pa = a) fixed (float* pb = b) fixed (float* pc = c) Cria.Training.Gemm.Dot4x4Portable<TMac>(pa, pb, k, pc, 4);
            for (int r = 0; r < 4; r++)
                for (int s = 0; s < 4; s++)
                {
                    double exact = 0, mag = 0;
                    for (int p = 0; p < k; p++) { exact += (double)a[r * k + p] * b[s * k + p]; mag += Math.Abs((double)a[r * k + p] * b[s * k + p]); }
                    Assert.True(Math.Abs(c[r * 4 + s] - exact) <= 1e-5 * mag, $"{typeof(TMac).Name} NT [{r},{s}]: {c[r * 4 + s]} vs {exact}");
                }

            // NN accumulate: A is [k, 4] read as Aᵀ (sr = 1, sp = 4), B is [k, 32], C [4, 32] starts at c0.
            var at = Random(rng, k * 4); var bn = Random(rng, k * 32); var c0 = Random(rng, 4 * 32);
            var portable = (float[])c0.Clone();
            fixed (float* pa = at) fixed (float* pb = bn) fixed (float* pc = portable)
                for (int j = 0; j < 32; j += 8) Cria.Training.Gemm.Axpy4x8Portable<TMac>(pa, 1, 4, k, pb + j, 32, pc + j, 32);
            for (int r = 0; r < 4; r++)
                for (int j = 0; j < 32; j++)
                {
                    double exact = c0[r * 32 + j], mag = Math.Abs(exact);
                    for (int p = 0; p < k; p++) { exact += (double)at[p * 4 + r] * bn[p * 32 + j]; mag += Math.Abs((double)at[p * 4 + r] * bn[p * 32 + j]); }
                    Assert.True(Math.Abs(portable[r * 32 + j] - exact) <= 1e-5 * mag, $"{typeof(TMac).Name} NN [{r},{j}]");
                }
            if (typeof(TMac) == typeof(FusedMulAdd) && Avx2.IsSupported && Fma.IsSupported)
            {
                var wide = (float[])c0.Clone();
                fixed (float* pa = at) fixed (float* pb = bn) fixed (float* pc = wide) Cria.Training.Gemm.Axpy4x32(pa, 1, 4, k, pb, 32, pc, 32);
                Assert.Equal(wide, portable);
            }
        }
    }

    /// <summary>The tier runs where it should: on this machine only with AVX2 off (CI runs with AVX2, so the suite's
    /// other tests exercise the 256/512-bit kernels, and these the portable ones directly).</summary>
    [Fact]
    public void The_tier_is_chosen_only_without_256_bit_vectors()
    {
        Assert.Equal(Vector128.IsHardwareAccelerated && !Vector256.IsHardwareAccelerated, RowKernels.PortableFloat(GgmlType.F32));
        Assert.False(RowKernels.PortableFloat(GgmlType.Q4_K));
        if (Avx2.IsSupported) Assert.False(RowKernels.PortableFloat(GgmlType.F16));
    }
}
