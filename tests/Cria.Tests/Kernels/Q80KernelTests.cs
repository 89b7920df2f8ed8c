using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// Both families of Q8_0 × Q8_0 kernels, called directly so that each is tested whichever one the machine dispatches
/// (RowKernelTests goes through the dispatch). The int16 kernels (vpmaddwd; AVX-512 without AVX-VNNI): every path —
/// tiles of B activation rows over ranges of weight rows, one row, two rows at once — gives the bits of the one-row
/// decode kernel, which agrees with the scalar reference (VecDot.DotScalar, ggml's Q8_0 × Q8_0) to float rounding. The
/// exact-per-block family (VecDot.DotQ80RowExactAvx2: AVX2 machines, and AVX-512 ones with AVX-VNNI, where the prefill is
/// VecDot.DotQ80Rows16Avx512) likewise, in the second test.
/// </summary>
public unsafe class Q80KernelTests
{
    [Fact]
    public void The_int16_family_gives_one_rows_bits_on_every_path_and_agrees_with_the_scalar_reference()
    {
        if (!Avx512BW.IsSupported) return; // this machine cannot run the family
        const string family = "int16";
        var rng = new Random(8);
        const int rows = 7;
        // 2 and 3 blocks, 73 and 88 (parts of 36 blocks end in single-block tails), 176 (TinyLlama's FFN)
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
            int fb = nb * 68;
            foreach (int B in new[] { 1, 2, 3, 4, 5, 16, 17, 37 })
            {
                var reference = new byte[B * rb]; // ggml's Q8_0 activation blocks
                var act = new byte[B * fb];
                for (int b = 0; b < B; b++)
                {
                    var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
                    if (b == 1) x[rng.Next(n)] = -40f; // a block whose largest quant is −127
                    VecDot.QuantizeActivations(GgmlType.Q8_0, x, reference.AsSpan(b * rb, rb));
                    RowKernels.QuantizeQ80Widened(x, act.AsSpan(b * fb, fb));
                }
                var alone = new float[B * rows];   // [B, rows] the one-row decode kernel
                var blocked = new float[B * rows]; // RunBlock's kernel over the ranges [0, 3) and [3, rows)
                var tile = new float[B];
                fixed (byte* pw = w) fixed (byte* pa = act) fixed (float* pb = blocked) fixed (float* pt = tile)
                {
                    for (int b = 0; b < B; b++)
                        for (int r = 0; r < rows; r++)
                        {
                            alone[b * rows + r] = RowKernels.Q801(pw + r * rb, pa + b * fb, nb);
                            float expected = VecDot.DotScalar(GgmlType.Q8_0, w.AsSpan(r * rb, rb), reference.AsSpan(b * rb, rb), n);
                            double mag = 0;
                            for (int i = 0; i < n; i++)
                                mag += Math.Abs(Fp16.ToSingle(BitConverter.ToUInt16(w, r * rb + i / 32 * 34)) * (sbyte)w[r * rb + i / 32 * 34 + 2 + i % 32]
                                    * (double)Fp16.ToSingle(BitConverter.ToUInt16(reference, b * rb + i / 32 * 34)) * (sbyte)reference[b * rb + i / 32 * 34 + 2 + i % 32]);
                            Assert.True(Math.Abs(alone[b * rows + r] - expected) <= 1e-5 * mag + 1e-6, $"{family} n={n} b={b} row {r}: {alone[b * rows + r]} vs scalar {expected} (Σ|wx| {mag})");
                        }
                    RowKernels.Q80Block(pw, rb, 0, 3, pa, fb, B, n, pb, rows); RowKernels.Q80Block(pw, rb, 3, rows, pa, fb, B, n, pb, rows);
                    for (int r = 0; r < rows; r++)
                    {
                        var (decQ, decD) = RowKernels.Q80Buffers(n);
                        RowKernels.Q80Tile(pw + r * rb, pa, fb, B, nb, pt, 1, (short*)decQ, (float*)decD);
                        for (int b = 0; b < B; b++)
                        {
                            Assert.True(alone[b * rows + r].Equals(blocked[b * rows + r]), $"{family} n={n} B={B} b={b} row {r}: blocked {blocked[b * rows + r]} vs alone {alone[b * rows + r]}");
                            Assert.True(alone[b * rows + r].Equals(tile[b]), $"{family} n={n} B={B} b={b} row {r}: tile {tile[b]} vs alone {alone[b * rows + r]}");
                        }
                        // two rows at once (decode's paired kernel), each with its own bits
                        float ya, yb;
                        RowKernels.Q801Pair(pw + r * rb, pw + (rows - 1 - r) * rb, pa, nb, out ya, out yb);
                        Assert.True(alone[r].Equals(ya) && alone[rows - 1 - r].Equals(yb), $"{family} n={n} pair ({r}, {rows - 1 - r}): {ya}, {yb} vs {alone[r]}, {alone[rows - 1 - r]}");
                    }
                }
            }
        }
    }
    /// <summary>The exact-per-block family: decode (one row, two distant rows), the AVX2 eight-row prefill and, where the
    /// machine has it, the AVX-512 sixteen-row prefill (rows in lanes, w + 128 against the activation bytes through
    /// vpdpbusd, −128·Σ a taken back) all give the bits of the one-row kernel, which agrees with the scalar reference.
    /// Weights include −128 (w + 128 = 0) and whole blocks of it, activations a block of ±127 against ±127/−128
    /// weights (each lane's four products at their largest).</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void The_exact_family_gives_one_rows_bits_on_every_path_and_agrees_with_the_scalar_reference(bool vnni)
    {
        if (!Avx2.IsSupported || !Fma.IsSupported || vnni && !AvxVnni.IsSupported) return; // no such kernels on this machine
        if (vnni) Exact<VecDot.HasVnni>(); else Exact<VecDot.NoVnni>();
    }

    /// <summary>The exact family with (<see cref="VecDot.HasVnni"/>) or without AVX-VNNI's integer sums; the sixteen-row
    /// prefill always uses them, and runs in the first case only.</summary>
    static void Exact<TVnni>() where TVnni : VecDot.IVnniChoice
    {
        bool sixteen = VecDot.Q80Rows16 && TVnni.Use;
        var rng = new Random(9);
        const int rows = 21; // groups of 16 from rows 0 and 3: full and partial groups, both halves of the 16 lanes
        var acc8 = stackalloc System.Runtime.Intrinsics.Vector256<float>[8 * RowKernels.Tile];
        var acc16 = new System.Runtime.Intrinsics.Vector512<float>[8 * RowKernels.Rows16Tile];
        foreach (int n in new[] { 32, 96, 2336, 5632 })
        {
            int nb = n / 32, rb = nb * 34, fb = nb * 44;
            var w = new byte[rb * rows];
            for (int r = 0; r < rows; r++)
            {
                var wf = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                Quantize.Row(GgmlType.Q8_0, wf, w.AsSpan(r * rb, rb));
            }
            for (int k = 0; k < 40; k++) w[2 + rng.Next(nb) * 34 + rng.Next(32)] = k % 2 == 0 ? (byte)0x80 : (byte)127;
            for (int j = 0; j < 32; j++) w[rb + 2 + (nb - 1) * 34 + j] = 0x80;            // row 1: a block of −128
            for (int j = 0; j < 32; j++) w[9 * rb + 2 + j] = j % 2 == 0 ? (byte)0x80 : (byte)0x81; // row 9 (lane 9 of a group): −128, −127
            foreach (int B in new[] { 1, 3, 16, 17, 37, 67 })
            {
                var reference = new byte[B * rb];
                var act = new byte[B * fb];
                for (int b = 0; b < B; b++)
                {
                    var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
                    if (b == 1) for (int j = 0; j < 32; j++) x[j] = j % 3 == 0 ? -5f : 5f; // quants ±127
                    VecDot.QuantizeActivations(GgmlType.Q8_0, x, reference.AsSpan(b * rb, rb));
                    RowKernels.QuantizeQ80Avx2(x, act.AsSpan(b * fb, fb), split: true, sums: true);
                }
                var alone = new float[B * rows];
                var rows8 = new float[B * rows];
                var rows16 = new float[B * rows];
                fixed (byte* pw = w) fixed (byte* pa = act) fixed (float* p8 = rows8) fixed (float* p16 = rows16) fixed (System.Runtime.Intrinsics.Vector512<float>* pacc16 = acc16)
                {
                    for (int b = 0; b < B; b++)
                        for (int r = 0; r < rows; r++)
                        {
                            alone[b * rows + r] = VecDot.DotQ80RowExactAvx2<TVnni>(pw + r * rb, pa + b * fb, nb);
                            float expected = VecDot.DotScalar(GgmlType.Q8_0, w.AsSpan(r * rb, rb), reference.AsSpan(b * rb, rb), n);
                            double mag = 0;
                            for (int i = 0; i < n; i++)
                                mag += Math.Abs(Fp16.ToSingle(BitConverter.ToUInt16(w, r * rb + i / 32 * 34)) * (sbyte)w[r * rb + i / 32 * 34 + 2 + i % 32]
                                    * (double)Fp16.ToSingle(BitConverter.ToUInt16(reference, b * rb + i / 32 * 34)) * (sbyte)reference[b * rb + i / 32 * 34 + 2 + i % 32]);
                            Assert.True(Math.Abs(alone[b * rows + r] - expected) <= 1e-5 * mag + 1e-6, $"n={n} b={b} row {r}: {alone[b * rows + r]} vs scalar {expected} (Σ|wx| {mag})");
                        }
                    // the ranges [0, 3) and [3, rows), tiles of activation rows as RunBlock hands them out
                    foreach (var (r0, r1) in new[] { (0, 3), (3, rows) })
                    {
                        for (int b0 = 0; b0 < B; b0 += RowKernels.Tile)
                            for (int r = r0; r < r1; r += 8)
                                VecDot.DotQ80Rows8Avx2<TVnni>(pw + r * rb, rb, Math.Min(8, r1 - r), pa + b0 * fb, fb, Math.Min(RowKernels.Tile, B - b0), nb, p8 + b0 * rows + r, rows, acc8);
                        if (sixteen)
                            for (int b0 = 0; b0 < B; b0 += RowKernels.Rows16Tile)
                                for (int r = r0; r < r1; r += 16)
                                    VecDot.DotQ80Rows16Avx512(pw + r * rb, rb, Math.Min(16, r1 - r), pa + b0 * fb, fb, Math.Min(RowKernels.Rows16Tile, B - b0), nb, p16 + b0 * rows + r, rows, pacc16);
                    }
                    for (int b = 0; b < B; b++)
                        for (int r = 0; r < rows; r++)
                        {
                            Assert.True(alone[b * rows + r].Equals(rows8[b * rows + r]), $"n={n} B={B} b={b} row {r}: eight-row {rows8[b * rows + r]} vs alone {alone[b * rows + r]}");
                            if (sixteen)
                                Assert.True(alone[b * rows + r].Equals(rows16[b * rows + r]), $"n={n} B={B} b={b} row {r}: sixteen-row {rows16[b * rows + r]} vs alone {alone[b * rows + r]}");
                        }
                    for (int r = 0; r < rows; r++)
                    {
                        VecDot.DotQ80RowExactAvx2Pair<TVnni>(pw + r * rb, pw + (rows - 1 - r) * rb, pa, nb, out float ya, out float yb);
                        Assert.True(alone[r].Equals(ya) && alone[rows - 1 - r].Equals(yb), $"n={n} pair ({r}, {rows - 1 - r}): {ya}, {yb} vs {alone[r]}, {alone[rows - 1 - r]}");
                    }
                }
            }
        }
    }
}
