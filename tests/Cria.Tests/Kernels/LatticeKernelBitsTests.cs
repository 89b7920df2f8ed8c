using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// The seven lattice types, one activation row and four. IQ1_S and IQ1_M: every kernel, AVX-512 and AVX2, gives
/// DotScalar's bits (the AVX-512 ones read the grid as bytes 8·g + 10 and take the offset back out through the Q8_K
/// block sums, which must cancel to the last unit). The IQ2 and IQ3 types: the AVX2 kernels (which run where AVX-512
/// is missing) sum floats per lane, as ggml's do, so they agree with the scalar kernel within 1e-5 of Σ|w·a|, and the
/// AVX-512 kernels give the AVX2 kernels' bits.
/// </summary>
public unsafe class LatticeKernelBitsTests
{
    const int Blocks = 48, N = Blocks * 256, Rows = 4, RowBytes = Blocks * 292;

    /// <summary>Q8_K rows (f32 d | qs[256] | bsums[16]) with quants over the whole −127..127 that Cria's quantizer
    /// gives, runs of ±127 included, and block sums that are the quants' sums.</summary>
    static byte[] Activations(Random rng)
    {
        var a = new byte[Rows * RowBytes];
        for (int b = 0; b < Rows * Blocks; b++)
        {
            var y = a.AsSpan(b * 292, 292);
            BitConverter.TryWriteBytes(y, (float)(rng.NextDouble() + 0.01) * MathF.Pow(2, rng.Next(-10, 3)));
            int mode = b % 4;
            for (int j = 0; j < 256; j++)
                y[4 + j] = (byte)(sbyte)(mode == 1 ? 127 : mode == 2 ? -127 : rng.Next(-127, 128));
            for (int k = 0; k < 16; k++)
            {
                int sum = 0;
                for (int j = 0; j < 16; j++) sum += (sbyte)y[4 + 16 * k + j];
                BitConverter.TryWriteBytes(y.Slice(260 + 2 * k), (short)sum);
            }
        }
        return a;
    }

    delegate float One(byte* x, byte* y, int nb);
    delegate void Four(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride);

    [Avx2Theory]
    [InlineData(GgmlType.IQ1_S)]
    [InlineData(GgmlType.IQ1_M)]
    [InlineData(GgmlType.IQ2_XXS)]
    [InlineData(GgmlType.IQ2_XS)]
    [InlineData(GgmlType.IQ3_XXS)]
    [InlineData(GgmlType.IQ2_S)]
    [InlineData(GgmlType.IQ3_S)]
    public void Each_kernel_gives_its_reference_bits(GgmlType type)
    {
        var rng = new Random(23 + (int)type);
        var w = Quant.IQuantOracleTests.RandomBlocks(type, Blocks, 31 + (int)type);
        var a = Activations(rng);
        var expected = new float[Rows];
        for (int r = 0; r < Rows; r++) expected[r] = VecDot.DotScalar(type, w, a.AsSpan(r * RowBytes, RowBytes), N);
        Assert.Contains(expected, v => v != 0);

        var (avx2, avx2X4, avx512, avx512X4) = Kernels(type);
        bool iq1 = type is GgmlType.IQ1_S or GgmlType.IQ1_M;
        // what the kernels below must equal bit for bit: for IQ1 the scalar kernel, for the others their AVX2 kernel
        var reference = iq1 ? expected : AssertAvx2Close(type, w, a, expected, avx2, avx2X4);
        var one = new List<(string, One)>();
        var four = new List<(string, Four)>();
        if (iq1) { one.Add(("AVX2", avx2)); four.Add(("AVX2 ×4", avx2X4)); }
        if (Avx512BW.IsSupported) { one.Add(("AVX-512", avx512)); four.Add(("AVX-512 ×4", avx512X4)); }
        fixed (byte* pw = w) fixed (byte* pa = a)
        {
            foreach (var (name, k) in one)
                for (int r = 0; r < Rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(reference[r]) == BitConverter.SingleToInt32Bits(k(pw, pa + r * RowBytes, Blocks)),
                        $"{type} {name} row {r}: {k(pw, pa + r * RowBytes, Blocks):R}, reference {reference[r]:R}");
            foreach (var (name, k) in four)
            {
                var got = new float[2 * Rows];
                fixed (float* pg = got) k(pw, pa, RowBytes, Blocks, pg, 2);
                for (int r = 0; r < Rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(reference[r]) == BitConverter.SingleToInt32Bits(got[2 * r]),
                        $"{type} {name} row {r}: {got[2 * r]:R}, reference {reference[r]:R}");
            }
        }
    }

    /// <summary>A type's kernels: AVX2 one row and four, AVX-512 one row and four.</summary>
    static (One, Four, One, Four) Kernels(GgmlType type) => type switch
    {
        GgmlType.IQ1_S => (VecDot.DotIQ1SAvx2, VecDot.DotIQ1SAvx2X4, VecDot.DotIQ1Avx512<VecDot.IQ1SWide>, VecDot.DotIQ1Avx512X4<VecDot.IQ1SWide>),
        GgmlType.IQ1_M => (VecDot.DotIQ1MAvx2, VecDot.DotIQ1MAvx2X4, VecDot.DotIQ1Avx512<VecDot.IQ1MWide>, VecDot.DotIQ1Avx512X4<VecDot.IQ1MWide>),
        GgmlType.IQ2_XXS => Lattice<VecDot.IQ2XXSBlock, VecDot.IQ2XXSWide>(),
        GgmlType.IQ2_XS => Lattice<VecDot.IQ2XSBlock, VecDot.IQ2XSWide>(),
        GgmlType.IQ2_S => Lattice<VecDot.IQ2SBlock, VecDot.IQ2SWide>(),
        GgmlType.IQ3_XXS => Lattice<VecDot.IQ3XXSBlock, VecDot.IQ3XXSWide>(),
        GgmlType.IQ3_S => Lattice<VecDot.IQ3SBlock, VecDot.IQ3SWide>(),
        _ => throw new ArgumentOutOfRangeException(nameof(type)),
    };

    static (One, Four, One, Four) Lattice<TAvx2, TAvx512>() where TAvx2 : struct, VecDot.ILatticeBlock where TAvx512 : struct, VecDot.ISignedLattice =>
        (VecDot.DotLatticeAvx2<TAvx2>, VecDot.DotLatticeAvx2X4<TAvx2>, VecDot.DotSignedLatticeAvx512<TAvx512>, VecDot.DotSignedLatticeAvx512X4<TAvx512>);

    /// <summary>An AVX2 IQ2/IQ3 kernel: within 1e-5 of Σ|w·a| of the scalar kernel, four rows the bits of one; returns
    /// its results.</summary>
    static float[] AssertAvx2Close(GgmlType type, byte[] w, byte[] a, float[] expected, One k, Four k4)
    {
        var wd = new float[N];
        Dequantize.Row(type, w, wd);
        var got = new float[Rows];
        fixed (byte* pw = w) fixed (byte* pa = a) fixed (float* pg = got)
        {
            k4(pw, pa, RowBytes, Blocks, pg, 1);
            for (int r = 0; r < Rows; r++)
            {
                var ad = new float[N];
                Dequantize.Row(GgmlType.Q8_K, a.AsSpan(r * RowBytes, RowBytes), ad);
                double mag = 0;
                for (int i = 0; i < N; i++) mag += Math.Abs((double)wd[i] * ad[i]);
                float alone = k(pw, pa + r * RowBytes, Blocks);
                Assert.True(Math.Abs(alone - expected[r]) <= 1e-5 * mag, $"{type} AVX2 row {r}: {alone:R}, scalar {expected[r]:R}");
                Assert.Equal(alone, got[r]);
            }
        }
        return got;
    }
}
