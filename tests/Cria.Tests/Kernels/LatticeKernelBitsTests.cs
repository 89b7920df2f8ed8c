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

    [Theory]
    [InlineData(GgmlType.IQ1_S)]
    [InlineData(GgmlType.IQ1_M)]
    [InlineData(GgmlType.IQ2_XXS)]
    [InlineData(GgmlType.IQ2_XS)]
    [InlineData(GgmlType.IQ3_XXS)]
    [InlineData(GgmlType.IQ2_S)]
    [InlineData(GgmlType.IQ3_S)]
    public void The_kernels_give_the_scalar_kernels_bits(GgmlType type)
    {
        var rng = new Random(23 + (int)type);
        var w = Quant.IQuantOracleTests.RandomBlocks(type, Blocks, 31 + (int)type);
        var a = Activations(rng);
        var expected = new float[Rows];
        for (int r = 0; r < Rows; r++) expected[r] = VecDot.DotScalar(type, w, a.AsSpan(r * RowBytes, RowBytes), N);
        Assert.Contains(expected, v => v != 0);

        var reference = expected; // what the AVX-512 kernels must equal bit for bit: IQ1's the scalar kernel, the others AVX2's
        var one = new List<(string, One)>();
        var four = new List<(string, Four)>();
        switch (type)
        {
            case GgmlType.IQ1_S:
                one.Add(("AVX2", VecDot.DotIQ1SAvx2)); four.Add(("AVX2 ×4", VecDot.DotIQ1SAvx2X4));
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotIQ1SAvx512)); four.Add(("AVX-512 ×4", VecDot.DotIQ1SAvx512X4)); }
                break;
            case GgmlType.IQ1_M:
                one.Add(("AVX2", VecDot.DotIQ1MAvx2)); four.Add(("AVX2 ×4", VecDot.DotIQ1MAvx2X4));
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotIQ1MAvx512)); four.Add(("AVX-512 ×4", VecDot.DotIQ1MAvx512X4)); }
                break;
            case GgmlType.IQ2_XXS:
                reference = AssertAvx2Close(type, w, a, expected, VecDot.DotLatticeAvx2<VecDot.IQ2XXSBlock>, VecDot.DotLatticeAvx2X4<VecDot.IQ2XXSBlock>);
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotSignedLatticeAvx512<VecDot.IQ2XXSWide>)); four.Add(("AVX-512 ×4", VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2XXSWide>)); }
                break;
            case GgmlType.IQ3_XXS:
                reference = AssertAvx2Close(type, w, a, expected, VecDot.DotLatticeAvx2<VecDot.IQ3XXSBlock>, VecDot.DotLatticeAvx2X4<VecDot.IQ3XXSBlock>);
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotSignedLatticeAvx512<VecDot.IQ3XXSWide>)); four.Add(("AVX-512 ×4", VecDot.DotSignedLatticeAvx512X4<VecDot.IQ3XXSWide>)); }
                break;
            case GgmlType.IQ2_XS:
                reference = AssertAvx2Close(type, w, a, expected, VecDot.DotLatticeAvx2<VecDot.IQ2XSBlock>, VecDot.DotLatticeAvx2X4<VecDot.IQ2XSBlock>);
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotSignedLatticeAvx512<VecDot.IQ2XSWide>)); four.Add(("AVX-512 ×4", VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2XSWide>)); }
                break;
            case GgmlType.IQ2_S:
                reference = AssertAvx2Close(type, w, a, expected, VecDot.DotLatticeAvx2<VecDot.IQ2SBlock>, VecDot.DotLatticeAvx2X4<VecDot.IQ2SBlock>);
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotSignedLatticeAvx512<VecDot.IQ2SWide>)); four.Add(("AVX-512 ×4", VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2SWide>)); }
                break;
            default:
                reference = AssertAvx2Close(type, w, a, expected, VecDot.DotLatticeAvx2<VecDot.IQ3SBlock>, VecDot.DotLatticeAvx2X4<VecDot.IQ3SBlock>);
                if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotSignedLatticeAvx512<VecDot.IQ3SWide>)); four.Add(("AVX-512 ×4", VecDot.DotSignedLatticeAvx512X4<VecDot.IQ3SWide>)); }
                break;
        }
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
