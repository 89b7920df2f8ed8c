using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// Both AVX-512 families of Q8_0 × Q8_0 kernels, called directly so that each is tested whichever one the machine
/// dispatches (RowKernelTests goes through the dispatch): the int16 kernels (vpmaddwd; AVX-512 without AVX-VNNI) and
/// the AVX-VNNI ones (vpdpbusd on quants + 128, RowKernels.Q80Vnni.cs). Within a family every path — tiles of B
/// activation rows over ranges of weight rows, one row, two rows at once — gives the bits of the one-row decode kernel,
/// and that agrees with the scalar reference (VecDot.DotScalar, ggml's Q8_0 × Q8_0) to float rounding.
/// </summary>
public unsafe class Q80KernelTests
{
    public static IEnumerable<object[]> Families() => new[] { new object[] { "int16" }, new object[] { "vnni" } };

    /// <summary>The VNNI activation layout: per pair of blocks [64] quants + 128 | [16] floats, each block's F16 d over
    /// its eight lanes; an odd last block's partner is empty (quants 0, stored as 128; d 0).</summary>
    internal static void AssertVnniLayout(byte[] reference, byte[] vnni, int nb)
    {
        for (int i = 0; i < (nb + 1) / 2 * 2; i++)
        {
            int pair = i / 2 * 128, half = i & 1;
            uint d = i < nb ? BitConverter.SingleToUInt32Bits(Fp16.ToSingle(BitConverter.ToUInt16(reference, i * 34))) : 0;
            for (int l = 0; l < 8; l++) Assert.Equal(d, BitConverter.ToUInt32(vnni, pair + 64 + 4 * (8 * half + l)));
            for (int j = 0; j < 32; j++)
                Assert.True((i < nb ? (sbyte)reference[i * 34 + 2 + j] : 0) + 128 == vnni[pair + 32 * half + j], $"block {i} value {j}");
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void Every_path_has_the_bits_of_the_one_row_kernel_and_agrees_with_the_scalar_reference(string family)
    {
        bool vnni = family == "vnni";
        if (!Avx512BW.IsSupported || vnni && !AvxVnni.IsSupported) return; // this machine cannot run the family
        var rng = new Random(vnni ? 7 : 8);
        const int rows = 7;
        // 2 and 3 blocks (one pair; a pair and an odd block), 73 (odd, VNNI parts of 10 pairs end in 7), 88, 176 (TinyLlama's FFN)
        foreach (int n in new[] { 64, 96, 2336, 2816, 5632 })
        {
            int nb = n / 32, rb = nb * 34;
            var w = new byte[rb * rows];
            for (int r = 0; r < rows; r++)
            {
                var wf = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                Quantize.Row(GgmlType.Q8_0, wf, w.AsSpan(r * rb, rb));
            }
            // quants the quantizer never writes but a file may hold: −128 and 127 (row 0), and a whole block of −128 (row 1)
            for (int k = 0; k < 40; k++) w[2 + rng.Next(nb) * 34 + rng.Next(32)] = k % 2 == 0 ? (byte)0x80 : (byte)127;
            for (int j = 0; j < 32; j++) w[rb + 2 + (nb - 1) * 34 + j] = 0x80;
            int fb = vnni ? RowKernels.Q80VnniRowBytes(n) : nb * 68;
            foreach (int B in new[] { 1, 2, 3, 4, 5, 16, 17, 37 })
            {
                var reference = new byte[B * rb]; // ggml's Q8_0 activation blocks
                var act = new byte[B * fb];
                for (int b = 0; b < B; b++)
                {
                    var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
                    if (b == 1) x[rng.Next(n)] = -40f; // a block whose largest quant is −127
                    VecDot.QuantizeActivations(GgmlType.Q8_0, x, reference.AsSpan(b * rb, rb));
                    if (vnni) RowKernels.QuantizeQ80Vnni(x, act.AsSpan(b * fb, fb));
                    else RowKernels.QuantizeQ80Widened(x, act.AsSpan(b * fb, fb));
                }
                var alone = new float[B * rows];   // [B, rows] the one-row decode kernel
                var blocked = new float[B * rows]; // RunBlock's kernel over the ranges [0, 3) and [3, rows)
                var tile = new float[B];
                fixed (byte* pw = w) fixed (byte* pa = act) fixed (float* pb = blocked) fixed (float* pt = tile)
                {
                    for (int b = 0; b < B; b++)
                        for (int r = 0; r < rows; r++)
                        {
                            alone[b * rows + r] = vnni ? RowKernels.Q80Vnni1(pw + r * rb, pa + b * fb, nb) : RowKernels.Q801(pw + r * rb, pa + b * fb, nb);
                            float expected = VecDot.DotScalar(GgmlType.Q8_0, w.AsSpan(r * rb, rb), reference.AsSpan(b * rb, rb), n);
                            double mag = 0;
                            for (int i = 0; i < n; i++)
                                mag += Math.Abs(Fp16.ToSingle(BitConverter.ToUInt16(w, r * rb + i / 32 * 34)) * (sbyte)w[r * rb + i / 32 * 34 + 2 + i % 32]
                                    * (double)Fp16.ToSingle(BitConverter.ToUInt16(reference, b * rb + i / 32 * 34)) * (sbyte)reference[b * rb + i / 32 * 34 + 2 + i % 32]);
                            Assert.True(Math.Abs(alone[b * rows + r] - expected) <= 1e-5 * mag + 1e-6, $"{family} n={n} b={b} row {r}: {alone[b * rows + r]} vs scalar {expected} (Σ|wx| {mag})");
                        }
                    if (vnni) { RowKernels.Q80VnniBlock(pw, rb, 0, 3, pa, fb, B, n, pb, rows); RowKernels.Q80VnniBlock(pw, rb, 3, rows, pa, fb, B, n, pb, rows); }
                    else { RowKernels.Q80Block(pw, rb, 0, 3, pa, fb, B, n, pb, rows); RowKernels.Q80Block(pw, rb, 3, rows, pa, fb, B, n, pb, rows); }
                    for (int r = 0; r < rows; r++)
                    {
                        if (vnni) RowKernels.Q80VnniTile(pw + r * rb, pa, fb, B, nb, pt, 1);
                        else
                        {
                            var (decQ, decD) = RowKernels.Q80Buffers(n);
                            RowKernels.Q80Tile(pw + r * rb, pa, fb, B, nb, pt, 1, (short*)decQ, (float*)decD);
                        }
                        for (int b = 0; b < B; b++)
                        {
                            Assert.True(alone[b * rows + r].Equals(blocked[b * rows + r]), $"{family} n={n} B={B} b={b} row {r}: blocked {blocked[b * rows + r]} vs alone {alone[b * rows + r]}");
                            Assert.True(alone[b * rows + r].Equals(tile[b]), $"{family} n={n} B={B} b={b} row {r}: tile {tile[b]} vs alone {alone[b * rows + r]}");
                        }
                        // two rows at once (decode's paired kernel), each with its own bits
                        float ya, yb;
                        if (vnni) RowKernels.Q80Vnni1Pair(pw + r * rb, pw + (rows - 1 - r) * rb, pa, nb, out ya, out yb);
                        else RowKernels.Q801Pair(pw + r * rb, pw + (rows - 1 - r) * rb, pa, nb, out ya, out yb);
                        Assert.True(alone[r].Equals(ya) && alone[rows - 1 - r].Equals(yb), $"{family} n={n} pair ({r}, {rows - 1 - r}): {ya}, {yb} vs {alone[r]}, {alone[rows - 1 - r]}");
                    }
                }
            }
        }
    }
}
