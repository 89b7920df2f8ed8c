using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// The portable 128-bit kernels (VecDot.Portable.cs), which machines without AVX2 run — ARM64 among them — against the
/// scalar reference (ggml's generic kernels). Both int16 pair policies run on this machine: pmaddwd (x86) and the
/// widening multiply (ARM64's path), so CI covers the code an ARM64 machine runs.
/// </summary>
public unsafe class PortableKernelTests
{
    public static TheoryData<GgmlType> Types => new() { GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS,
        GgmlType.IQ2_XXS, GgmlType.IQ2_XS, GgmlType.IQ2_S, GgmlType.IQ3_XXS, GgmlType.IQ3_S, GgmlType.IQ1_S, GgmlType.IQ1_M };

    /// <summary>The portable kernel on ggml's activation row (a, ao), widened into the portable layout first.</summary>
    static float Portable<T>(GgmlType type, byte[] w, int wo, byte[] a, int ao, int n) where T : VecDot.IPairMul
    {
        var act = VecDot.ActivationType(type);
        var p = new byte[VecDot.PortableActivationBytes(type, n)];
        VecDot.WidenPortable(act, a.AsSpan(ao, (int)GgmlTypeInfo.RowBytes(act, n)), p, n);
        fixed (byte* pw = w) fixed (byte* pp = p) return VecDot.DotPortable<T>(type, pw + wo, pp, n);
    }

    static IEnumerable<Func<GgmlType, byte[], int, byte[], int, int, float>> Policies()
    {
        yield return Portable<VecDot.WidePairs>;
        if (Sse2.IsSupported) yield return Portable<VecDot.SsePairs>;
    }

    /// <summary>Quantized random rows and activations (random, and ±2 in runs so every activation quant is ±127):
    /// every policy within 1e-5 relative + 1e-3 of the scalar reference.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void Agrees_with_the_scalar_reference(GgmlType type)
    {
        const int n = 768, rows = 6, B = 3;
        var rng = new Random(11);
        int rb = (int)GgmlTypeInfo.RowBytes(type, n), ab = (int)GgmlTypeInfo.RowBytes(VecDot.ActivationType(type), n);
        var w = new byte[rows * rb];
        var importance = Enumerable.Repeat(1f, n).ToArray(); // the lattice types are quantized only with one, as in ggml
        for (int r = 0; r < rows; r++)
            Quantize.Row(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * (1 + r)).ToArray(), w.AsSpan(r * rb, rb), importance);
        var a = new byte[B * ab];
        for (int b = 0; b < B; b++)
        {
            var x = b == 0 ? Enumerable.Range(0, n).Select(j => (j / 7 % 2 == 0) ? 2f : -2f).ToArray()
                           : Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            VecDot.QuantizeActivations(VecDot.ActivationType(type), x, a.AsSpan(b * ab, ab));
        }
        foreach (var dot in Policies())
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < B; b++)
                {
                    float scalar = VecDot.DotScalar(type, w.AsSpan(r * rb, rb), a.AsSpan(b * ab, ab), n);
                    float got = dot(type, w, r * rb, a, b * ab, n);
                    Assert.True(Math.Abs(got - scalar) <= 1e-5f * Math.Abs(scalar) + 1e-3f, $"{type} row {r} b {b}: {got} vs scalar {scalar}");
                }
    }

    /// <summary>Every bit pattern of the quants (random bytes, Q8_0's −128 included), random scales, and unit block
    /// scales d = dmin = d8 = 1: every sum is an integer below 2^24, so the portable result must equal the scalar one
    /// exactly — a wrong lane, nibble, high bit or scale index cannot hide in rounding.</summary>
    [Theory]
    [MemberData(nameof(Types))]
    public void Equals_the_scalar_reference_on_unit_scales(GgmlType type)
    {
        const int n = 512, rows = 8;
        var rng = new Random(12);
        var act = VecDot.ActivationType(type);
        int rb = (int)GgmlTypeInfo.RowBytes(type, n), ab = (int)GgmlTypeInfo.RowBytes(act, n);
        var w = new byte[rows * rb];
        rng.NextBytes(w);
        int bs = GgmlTypeInfo.BlockBytes(type), nb = rb / bs;
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                var blk = w.AsSpan(r * rb + i * bs, bs);
                switch (type)
                {
                    case GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.IQ4_NL or GgmlType.IQ4_XS: BitConverter.TryWriteBytes(blk, Fp16.FromSingle(1f)); break;
                    case var t when GgmlTypeInfo.IsLattice(t) && t != GgmlType.IQ1_M: BitConverter.TryWriteBytes(blk, Fp16.FromSingle(1f)); break; // grid indices, signs, scales: every bit pattern
                    case GgmlType.IQ1_M: // d = 1 (0x3C00) spread over the top nibbles of the four scale words
                        blk[49] &= 0x0F; blk[51] &= 0x0F;
                        blk[53] = (byte)(blk[53] & 0x0F | 0xC0); blk[55] = (byte)(blk[55] & 0x0F | 0x30);
                        break;
                    case GgmlType.Q4_1 or GgmlType.Q5_1: // d = 1, m a small integer: every sum an integer
                        BitConverter.TryWriteBytes(blk, Fp16.FromSingle(1f));
                        BitConverter.TryWriteBytes(blk[2..], Fp16.FromSingle(rng.Next(-8, 9)));
                        break;
                    case GgmlType.Q4_K or GgmlType.Q5_K:
                        BitConverter.TryWriteBytes(blk, Fp16.FromSingle(1f));
                        BitConverter.TryWriteBytes(blk[2..], Fp16.FromSingle(1f));
                        for (int j = 4; j < 16; j++) blk[j] &= 0x0F; // scales and mins up to 15: the sums stay below 2^24
                        break;
                    case GgmlType.Q2_K: // scales and mins: every nibble
                        BitConverter.TryWriteBytes(blk[80..], Fp16.FromSingle(1f));
                        BitConverter.TryWriteBytes(blk[82..], Fp16.FromSingle(1f));
                        break;
                    case GgmlType.Q3_K: BitConverter.TryWriteBytes(blk[108..], Fp16.FromSingle(1f)); break; // scales: every 6-bit pattern
                    case GgmlType.Q6_K:
                        BitConverter.TryWriteBytes(blk[208..], Fp16.FromSingle(1f));
                        for (int s = 0; s < 16; s++) blk[192 + s] = (byte)(sbyte)rng.Next(-16, 17); // partial sums below 2^24
                        break;
                }
                if (r == 0) // all quants at the top: nibbles 15, Q5_K's 31, Q6_K's 63, Q8_0's 127 (small scales: the sum stays below 2^24)
                    switch (type)
                    {
                        case GgmlType.Q8_0: blk[2..].Fill(127); break;
                        case GgmlType.Q4_0: blk[2..].Fill(0xFF); break;
                        case GgmlType.Q5_0: blk[2..].Fill(0xFF); break; // every value 31 − 16
                        case GgmlType.Q4_1: blk[4..].Fill(0xFF); break;
                        case GgmlType.Q5_1: blk[4..].Fill(0xFF); break; // every value 31
                        case GgmlType.Q4_K or GgmlType.Q5_K: blk[4..16].Fill(0x01); blk[16..].Fill(0xFF); break;
                        case GgmlType.Q2_K: blk[..16].Fill(0xFF); blk[16..80].Fill(0xFF); break; // scale 15, min 15, quants 3
                        case GgmlType.Q3_K: blk[..108].Fill(0xFF); break; // high bits set, quants 3, scales 31
                        case GgmlType.IQ4_NL: blk[2..].Fill(0x00); break; // every level −127 (against −127: the largest products)
                        case GgmlType.IQ4_XS: blk[2..4].Fill(0xAA); blk[4..8].Fill(0x11); blk[8..].Fill(0x00); break; // scale 33 − 32 = 1, levels −127
                        case GgmlType.IQ1_S: blk[34..].Fill(0xFF); break;                 // high index bits, scale 15, delta −1
                        case GgmlType.IQ1_M: blk[32..48].Fill(0xFF); break;               // high index bits, deltas −1
                        case GgmlType.Q6_K:
                            blk[..192].Fill(0xFF);
                            for (int s = 0; s < 16; s++) blk[192 + s] = (byte)(sbyte)(s % 2 == 0 ? 3 : -2);
                            break;
                    }
                if (r == 1 && type == GgmlType.Q8_0) blk[2..].Fill(0x80); // −128
            }
        // activations: unit scale, quants in [−127, 127] (row 0 all −127), ggml's block sums
        var a = new byte[2 * ab];
        for (int b = 0; b < 2; b++)
        {
            var ar = a.AsSpan(b * ab, ab);
            if (act == GgmlType.Q8_0)
                for (int i = 0; i < n / 32; i++)
                {
                    BitConverter.TryWriteBytes(ar[(34 * i)..], Fp16.FromSingle(1f));
                    for (int j = 0; j < 32; j++) ar[34 * i + 2 + j] = (byte)(sbyte)(b == 0 ? -127 : rng.Next(-127, 128));
                }
            else if (act == GgmlType.Q8_1) // d = 1 | s = F16(Σ quants) | quants
                for (int i = 0; i < n / 32; i++)
                {
                    int sum = 0;
                    for (int j = 0; j < 32; j++) { int q = b == 0 ? -127 : rng.Next(-127, 128); ar[36 * i + 4 + j] = (byte)(sbyte)q; sum += q; }
                    BitConverter.TryWriteBytes(ar[(36 * i)..], Fp16.FromSingle(1f));
                    BitConverter.TryWriteBytes(ar[(36 * i + 2)..], Fp16.FromSingle(sum));
                }
            else
                for (int i = 0; i < n / 256; i++)
                {
                    var blk = ar.Slice(292 * i, 292);
                    BitConverter.TryWriteBytes(blk, 1f);
                    for (int j = 0; j < 256; j++) blk[4 + j] = (byte)(sbyte)(b == 0 ? -127 : rng.Next(-127, 128));
                    for (int g = 0; g < 16; g++)
                    {
                        int s = 0;
                        for (int j = 0; j < 16; j++) s += (sbyte)blk[4 + 16 * g + j];
                        BitConverter.TryWriteBytes(blk[(260 + 2 * g)..], (short)s);
                    }
                }
        }
        foreach (var dot in Policies())
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < 2; b++)
                {
                    float scalar = VecDot.DotScalar(type, w.AsSpan(r * rb, rb), a.AsSpan(b * ab, ab), n);
                    Assert.True(Math.Abs(scalar) < 1 << 24, $"{type} row {r}: {scalar} is not exact in float");
                    Assert.Equal(scalar, dot(type, w, r * rb, a, b * ab, n));
                }
    }
    /// <summary>RunPortable (Q6_K and the lattice types: groups of four activation rows against one weight row, its
    /// values assembled once per group): every output the bits of that row alone, for 1, 3, 4 and 6 rows (groups of
    /// 4 + 2), the strides kept.</summary>
    [Theory]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.IQ2_XXS)]
    [InlineData(GgmlType.IQ2_XS)]
    [InlineData(GgmlType.IQ2_S)]
    [InlineData(GgmlType.IQ3_XXS)]
    [InlineData(GgmlType.IQ3_S)]
    [InlineData(GgmlType.IQ1_S)]
    [InlineData(GgmlType.IQ1_M)]
    public void Grouped_rows_give_the_bits_of_each_row_alone(GgmlType type)
    {
        const int n = 512;
        var rng = new Random(13);
        int rb = (int)GgmlTypeInfo.RowBytes(type, n), pb = VecDot.PortableActivationBytes(type, n);
        var w = new byte[rb];
        Quantize.Row(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), w, Enumerable.Repeat(1f, n).ToArray());
        var act = new byte[6 * pb];
        for (int b = 0; b < 6; b++)
            VecDot.PreparePortable(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray(), act.AsSpan(b * pb, pb));
        foreach (int B in new[] { 1, 3, 4, 6 })
        {
            var y = new float[2 * B];
            fixed (byte* pw = w) fixed (byte* pa = act) fixed (float* py = y)
            {
                VecDot.RunPortable(type, pw, pa, pb, B, n, py, 2);
                for (int b = 0; b < B; b++)
                {
                    float alone = VecDot.DotPortable(type, pw, pa + b * pb, n);
                    Assert.True(alone.Equals(y[2 * b]), $"{type} B={B} row {b}: {y[2 * b]} vs alone {alone}");
                    Assert.Equal(0f, y[2 * b + 1]); // the stride is kept
                }
            }
        }
    }
}
