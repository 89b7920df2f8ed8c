using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// IQ1_S and IQ1_M: every kernel (AVX-512 where the machine has it and AVX2, one activation row and four) gives
/// DotScalar's bits. The integer sums are exact in all of them, and the AVX-512 kernels read the grid as bytes
/// 8·g + 10 and take the offset back out through the Q8_K block sums, which must cancel to the last unit.
/// </summary>
public unsafe class IQ1KernelTests
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
    public void Every_kernel_gives_the_scalar_kernels_bits(GgmlType type)
    {
        var rng = new Random(23 + (int)type);
        var w = Quant.IQuantOracleTests.RandomBlocks(type, Blocks, 31 + (int)type);
        var a = Activations(rng);
        var expected = new float[Rows];
        for (int r = 0; r < Rows; r++) expected[r] = VecDot.DotScalar(type, w, a.AsSpan(r * RowBytes, RowBytes), N);
        Assert.Contains(expected, v => v != 0);

        var one = new List<(string, One)>();
        var four = new List<(string, Four)>();
        if (type == GgmlType.IQ1_S)
        {
            one.Add(("AVX2", VecDot.DotIQ1SAvx2)); four.Add(("AVX2 ×4", VecDot.DotIQ1SAvx2X4));
            if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotIQ1SAvx512)); four.Add(("AVX-512 ×4", VecDot.DotIQ1SAvx512X4)); }
        }
        else
        {
            one.Add(("AVX2", VecDot.DotIQ1MAvx2)); four.Add(("AVX2 ×4", VecDot.DotIQ1MAvx2X4));
            if (Avx512BW.IsSupported) { one.Add(("AVX-512", VecDot.DotIQ1MAvx512)); four.Add(("AVX-512 ×4", VecDot.DotIQ1MAvx512X4)); }
        }
        fixed (byte* pw = w) fixed (byte* pa = a)
        {
            foreach (var (name, k) in one)
                for (int r = 0; r < Rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(expected[r]) == BitConverter.SingleToInt32Bits(k(pw, pa + r * RowBytes, Blocks)),
                        $"{type} {name} row {r}: {k(pw, pa + r * RowBytes, Blocks):R}, scalar {expected[r]:R}");
            foreach (var (name, k) in four)
            {
                var got = new float[2 * Rows];
                fixed (float* pg = got) k(pw, pa, RowBytes, Blocks, pg, 2);
                for (int r = 0; r < Rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(expected[r]) == BitConverter.SingleToInt32Bits(got[2 * r]),
                        $"{type} {name} row {r}: {got[2 * r]:R}, scalar {expected[r]:R}");
            }
        }
    }
}
