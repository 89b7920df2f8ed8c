using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// The portable tier: one-row dot kernels on 128-bit vectors through .NET's cross-platform Vector128 API, for machines
// without AVX2 — ARM64 (NEON: Apple silicon, Graviton, Ampere) and x86 before Haswell, which otherwise run the scalar
// reference. The JIT compiles the same code to SSE on x86 and to NEON on ARM64. Integer sums are exact (the scalar
// kernels' integers); only the float accumulation order differs, so each kernel equals DotScalar up to float rounding.
//
// Activations are widened to int16 once per matmul (PreparePortable), each run of sixteen quants stored as its eight
// even-indexed then its eight odd-indexed values. A weight register read as eight 16-bit lanes then holds the even
// element of each byte pair in its low byte and the odd one in its high byte, so masks and shifts give the weights
// in the activations' order without any shuffle, and products of small weights add up in int16.
//
// The one step that is not portable is int16 · int16 → int32 with neighbours added: x86 has pmaddwd
// (Sse2.MultiplyAddAdjacent); elsewhere both halves are widened and multiplied in int32 (IPairMul). Both run here,
// so both are tested on x86.
public static partial class VecDot
{
    /// <summary>Eight int16 products added into four int32 lanes (which products share a lane is the policy's; a dot
    /// product only needs the lanes' total).</summary>
    internal interface IPairMul
    {
        static abstract Vector128<int> MulAdd(Vector128<short> a, Vector128<short> b);
    }

    /// <summary>x86: pmaddwd, products of lanes 2i and 2i + 1 added into lane i.</summary>
    internal readonly struct SsePairs : IPairMul
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<int> MulAdd(Vector128<short> a, Vector128<short> b) => Sse2.MultiplyAddAdjacent(a, b);
    }

    /// <summary>Anywhere (ARM64's NEON): widen both to int32, products of lanes i and i + 4 added into lane i.</summary>
    internal readonly struct WidePairs : IPairMul
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<int> MulAdd(Vector128<short> a, Vector128<short> b)
        {
            var (a0, a1) = Vector128.Widen(a);
            var (b0, b1) = Vector128.Widen(b);
            return a0 * b0 + a1 * b1;
        }
    }

    /// <summary>Whether the portable kernels run for this weight type: 128-bit vectors but no AVX2 + FMA.</summary>
    internal static bool PortableRows(GgmlType type) =>
        Vector128.IsHardwareAccelerated && !(Avx2.IsSupported && Fma.IsSupported)
        && (type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K
            or GgmlType.IQ4_NL or GgmlType.IQ4_XS || GgmlTypeInfo.IsLattice(type));

    /// <summary>Bytes of one activation row in the portable layout. Q8_0, Q4_0, Q5_0, IQ4_NL (ggml's Q8_0 activations):
    /// [nb] F32 d (the F16-rounded scale ggml stores), then [n] int16 quants. Q4_1, Q5_1 (Q8_1): [nb] F32 d, [nb] F32 s
    /// (ggml's F16-rounded d·Σ quants), then [n] int16 quants. The K types (Q8_K): [nb] F32 d, [nb, 16] int16
    /// bsums (ggml's sums of sixteen quants), [nb, 8] int16 sums of 32, then [n] int16 quants. The quants in runs of
    /// sixteen: eight even-indexed, eight odd-indexed.</summary>
    internal static int PortableActivationBytes(GgmlType weightType, int n) => ActivationType(weightType) switch
    {
        GgmlType.Q8_K => n / 256 * PortableQ8KHead + 2 * n,
        GgmlType.Q8_1 => n / 32 * 8 + 2 * n,
        _ => n / 32 * 4 + 2 * n,
    };

    // The K types' row, in units of nb (super-blocks): the bsums start at 4·nb bytes, the sums of 32 at 36·nb, the
    // quants at 52·nb (PortableQ8KHead: F32 d, 16 bsums, 8 sums of 32 per super-block).
    const int PortableQ8KBsums = 4, PortableQ8KSums = PortableQ8KBsums + 32, PortableQ8KHead = PortableQ8KSums + 16;

    /// <summary>Quantizes one activation row as ggml does (Q8_0 or Q8_K blocks), then widens it into the portable
    /// layout (<see cref="PortableActivationBytes"/>).</summary>
    internal static unsafe void PreparePortable(GgmlType weightType, ReadOnlySpan<float> x, Span<byte> dst)
    {
        var act = ActivationType(weightType);
        int qk = act == GgmlType.Q8_K ? 256 : 32, bb = GgmlTypeInfo.BlockBytes(act), nb = x.Length / qk;
        Span<byte> block = stackalloc byte[bb];
        fixed (byte* p = dst)
            for (int i = 0; i < nb; i++)
            {
                Quantize.Row(act, x.Slice(i * qk, qk), block);
                fixed (byte* b = block) WidenBlock(act, b, p, i, nb);
            }
    }

    /// <summary>Widens ggml activation blocks (Q8_0 or Q8_K, <paramref name="n"/> values) into the portable layout.</summary>
    internal static unsafe void WidenPortable(GgmlType act, ReadOnlySpan<byte> ggml, Span<byte> dst, int n)
    {
        int qk = act == GgmlType.Q8_K ? 256 : 32, bb = GgmlTypeInfo.BlockBytes(act), nb = n / qk;
        fixed (byte* src = ggml) fixed (byte* p = dst)
            for (int i = 0; i < nb; i++) WidenBlock(act, src + (long)i * bb, p, i, nb);
    }

    static unsafe void WidenBlock(GgmlType act, byte* block, byte* dst, int i, int nb)
    {
        bool k = act == GgmlType.Q8_K, one = act == GgmlType.Q8_1;
        int qk = k ? 256 : 32;
        ((float*)dst)[i] = k ? *(float*)block : Half(block);
        if (one) ((float*)dst)[nb + i] = Half(block + 2); // s
        sbyte* q = (sbyte*)(block + (k || one ? 4 : 2));
        if (k)
        {
            short* bsums = (short*)(block + 260), b16 = (short*)(dst + nb * PortableQ8KBsums) + 16 * i, s32 = (short*)(dst + nb * PortableQ8KSums) + 8 * i;
            for (int j = 0; j < 16; j++) b16[j] = bsums[j];
            for (int j = 0; j < 8; j++) s32[j] = (short)(bsums[2 * j] + bsums[2 * j + 1]); // at most 32·127
        }
        short* w = (short*)(dst + nb * (k ? PortableQ8KHead : one ? 8 : 4)) + qk * i;
        for (int r = 0; r < qk; r += 16, w += 16)
            for (int j = 0; j < 8; j++)
            {
                w[j] = q[r + 2 * j];
                w[8 + j] = q[r + 2 * j + 1];
            }
    }

    /// <summary>Activation rows Q6_K's prefill kernel takes at once against one weight row (<see cref="DotQ6KPortableRows{T}"/>).</summary>
    internal const int PortableRowGroup = 4;

    /// <summary>One weight row against B activation rows (x + b·xStride, the portable layout) into y[b·yStride]: Q6_K
    /// and the lattice types in groups of <see cref="PortableRowGroup"/> (their values assembled once per group), the
    /// others row by row. (Q4_K
    /// grouped the same way spilled its eight weight registers on x86's sixteen and gained nothing there; unmeasured
    /// on ARM64's thirty-two.)</summary>
    internal static unsafe void RunPortable(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (Sse2.IsSupported) RunPortable<SsePairs>(type, w, x, xStride, B, n, y, yStride);
        else RunPortable<WidePairs>(type, w, x, xStride, B, n, y, yStride);
    }

    static unsafe void RunPortable<T>(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride) where T : IPairMul
    {
        if (type == GgmlType.Q6_K && B > 1)
        {
            for (int b = 0; b < B; b += PortableRowGroup)
                DotQ6KPortableRows<T>(w, x + (long)b * xStride, xStride, Math.Min(PortableRowGroup, B - b), n / 256, y + (long)b * yStride, yStride);
            return;
        }
        if (GgmlTypeInfo.IsLattice(type))
        {
            RunLatticePortable<T>(type, w, x, xStride, B, n / 256, y, yStride);
            return;
        }
        for (int b = 0; b < B; b++) y[(long)b * yStride] = DotPortable<T>(type, w, x + (long)b * xStride, n);
    }

    /// <summary>One portable dot product of a weight row with its activations in the portable layout.</summary>
    internal static unsafe float DotPortable(GgmlType type, byte* w, byte* a, int n) => Sse2.IsSupported
        ? DotPortable<SsePairs>(type, w, a, n)
        : DotPortable<WidePairs>(type, w, a, n);

    internal static unsafe float DotPortable<T>(GgmlType type, byte* w, byte* a, int n) where T : IPairMul => type switch
    {
        GgmlType.Q8_0 => DotQ80Portable<T>(w, a, n / 32),
        GgmlType.Q4_0 => DotQ40Portable<T>(w, a, n / 32),
        GgmlType.Q5_0 => DotQ50Portable<T>(w, a, n / 32),
        GgmlType.Q4_1 => DotQ41Portable<T>(w, a, n / 32, five: false),
        GgmlType.Q5_1 => DotQ41Portable<T>(w, a, n / 32, five: true),
        GgmlType.Q2_K => DotQ2KPortable<T>(w, a, n / 256),
        GgmlType.Q3_K => DotQ3KPortable<T>(w, a, n / 256),
        GgmlType.IQ4_NL => DotIQ4NLPortable<T>(w, a, n / 32),
        GgmlType.IQ4_XS => DotIQ4XSPortable<T>(w, a, n / 256),
        GgmlType.Q4_K => DotK4Portable<T>(w, a, n / 256, five: false),
        GgmlType.Q5_K => DotK4Portable<T>(w, a, n / 256, five: true),
        GgmlType.Q6_K => DotQ6KPortable<T>(w, a, n / 256),
        var t when GgmlTypeInfo.IsLattice(t) => DotLatticePortable<T>(t, w, a, n / 256),
        _ => throw new ArgumentException($"no portable kernel for {type}", nameof(type)),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<short> Load8(byte* p) => Vector128.Load((short*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<short> Load8(short* p) => Vector128.Load(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float Half(byte* p) => Fp16.ToSingle(*(ushort*)p);

    /// <summary>Q8_0 × Q8_0 (ggml_vec_dot_q8_0_q8_0): per block (d | qs[32]) the exact Σ q_w·q_a, times d_w·d_a into
    /// four float lanes. A weight lane's low byte (sign-extended by shifting up and back) is the even element, its
    /// high byte the odd one.</summary>
    internal static unsafe float DotQ80Portable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + 4 * nb); // [nb, 32] widened quants
        var acc = Vector128<float>.Zero; // [4] partial lanes of the scaled block sums
        for (int ib = 0; ib < nb; ib++, x += 34, a += 32)
        {
            var v0 = Load8(x + 2);
            var v1 = Load8(x + 18);
            var s = T.MulAdd((v0 << 8) >> 8, Load8(a)) + T.MulAdd(v0 >> 8, Load8(a + 8))
                  + T.MulAdd((v1 << 8) >> 8, Load8(a + 16)) + T.MulAdd(v1 >> 8, Load8(a + 24));
            acc += Vector128.ConvertToSingle(s) * Vector128.Create(Half(x) * d8[ib]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q4_0 × Q8_0 (ggml_vec_dot_q4_0_q8_0): block (d | qs[16]), element j the low nibble of qs[j] and j + 16
    /// the high one, each minus 8. Products are at most 8·127: a block's sixteen lanes add up in int16.</summary>
    internal static unsafe float DotQ40Portable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + 4 * nb);
        var acc = Vector128<float>.Zero;
        for (int ib = 0; ib < nb; ib++, x += 18, a += 32)
        {
            var s = NibbleProducts(Load8(x + 2), 0, five: false, 8, a);
            acc += Vector128.ConvertToSingle(T.MulAdd(s, Vector128<short>.One)) * Vector128.Create(Half(x) * d8[ib]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q5_0 × Q8_0 (ggml_vec_dot_q5_0_q8_0): block d | qh[4] | qs[16], element j the low nibble of qs[j]
    /// (j + 16: the high one) with bit j of qh above it, minus 16. Products at most 16·128: a block's sixteen lanes add
    /// up in int16, as Q4_0's.</summary>
    internal static unsafe float DotQ50Portable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + 4 * nb);
        var acc = Vector128<float>.Zero;
        for (int ib = 0; ib < nb; ib++, x += 22, a += 32)
        {
            var s = NibbleProducts(Load8(x + 6), *(uint*)(x + 2), five: true, 16, a);
            acc += Vector128.ConvertToSingle(T.MulAdd(s, Vector128<short>.One)) * Vector128.Create(Half(x) * d8[ib]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q4_1 / Q5_1 × Q8_1 (ggml_vec_dot_q4_1_q8_1, _q5_1_): block d | m | (Q5_1: qh[4]) | qs[16], values
    /// unsigned (Q5_1: with the fifth bit); per block d·d8·Σ q·a + m·s8 (s8 = the activations' d·Σ quants).</summary>
    internal static unsafe float DotQ41Portable<T>(byte* x, byte* y, int nb, bool five) where T : IPairMul
    {
        float* d8 = (float*)y, s8 = d8 + nb;
        short* a = (short*)(y + 8 * nb);
        var acc = Vector128<float>.Zero;
        float mins = 0;
        int bs = five ? 24 : 20;
        for (int ib = 0; ib < nb; ib++, x += bs, a += 32)
        {
            var s = five ? NibbleProducts(Load8(x + 8), *(uint*)(x + 4), five: true, 0, a)  // at most 4·31·128 a lane
                         : NibbleProducts(Load8(x + 4), 0, five: false, 0, a);
            acc += Vector128.ConvertToSingle(T.MulAdd(s, Vector128<short>.One)) * Vector128.Create(Half(x) * d8[ib]);
            mins += Half(x + 2) * s8[ib];
        }
        return Vector128.Sum(acc) + mins;
    }

    /// <summary>The legacy blocks' products in int16: v holds qs[16] (lane j: bytes 2j, 2j + 1 → elements 2j, 2j + 1 in
    /// the low nibbles, 16 + 2j, 17 + 2j in the high ones), each value with its fifth bit from qh when
    /// <paramref name="five"/>, minus <paramref name="offset"/>, times the activations of its 32 (a: the portable
    /// layout's even/odd runs); four products to a lane, at most 4·31·128.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<short> NibbleProducts(Vector128<short> v, uint qh, bool five, short offset, short* a)
    {
        var nibble = Vector128.Create((short)0x0F);
        Vector128<short> e0 = v & nibble, o0 = (v >> 8) & nibble, e1 = (v >> 4) & nibble, o1 = (v >> 12) & nibble;
        if (five)
        {
            FifthBits(qh, out var h0, out var h1, out var h2, out var h3);
            e0 |= h0; o0 |= h1; e1 |= h2; o1 |= h3;
        }
        if (offset != 0)
        {
            var k = Vector128.Create(offset);
            e0 -= k; o0 -= k; e1 -= k; o1 -= k;
        }
        return e0 * Load8(a) + o0 * Load8(a + 8) + e1 * Load8(a + 16) + o1 * Load8(a + 24);
    }

    /// <summary>A Q5 block's fifth bits (bit j of qh for element j) as 16 or 0 in the lanes of the activations' order:
    /// h0 lane j element 2j, h1 element 2j + 1, h2 element 16 + 2j, h3 element 17 + 2j. Each bit is tested against its
    /// own mask in a broadcast of qh's half (no per-lane shifts, which SSE lacks for 16-bit lanes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void FifthBits(uint qh, out Vector128<short> h0, out Vector128<short> h1, out Vector128<short> h2, out Vector128<short> h3)
    {
        var even = Vector128.Create((short)0x1, 0x4, 0x10, 0x40, 0x100, 0x400, 0x1000, 0x4000); // bit 2j of lane j
        var odd = even << 1;                                                                     // bit 2j + 1
        var sixteen = Vector128.Create((short)16);
        var lo = Vector128.Create((short)qh);
        var hi = Vector128.Create((short)(qh >> 16));
        h0 = Vector128.Equals(lo & even, even) & sixteen;
        h1 = Vector128.Equals(lo & odd, odd) & sixteen;
        h2 = Vector128.Equals(hi & even, even) & sixteen;
        h3 = Vector128.Equals(hi & odd, odd) & sixteen;
    }

    /// <summary>IQ4_NL × Q8_0 (ggml_vec_dot_iq4_nl_q8_0): block d (f16) | qs[16], element j the level of qs[j]'s low
    /// nibble, j + 16 of its high one (<see cref="IQ4Block{T}"/>).</summary>
    internal static unsafe float DotIQ4NLPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + 4 * nb); // [nb, 32] widened quants
        var acc = Vector128<float>.Zero;
        for (int ib = 0; ib < nb; ib++, x += 18, a += 32)
            acc += Vector128.ConvertToSingle(IQ4Block<T>(x + 2, a)) * Vector128.Create(Half(x) * d8[ib]);
        return Vector128.Sum(acc);
    }

    /// <summary>IQ4_XS × Q8_K (ggml_vec_dot_iq4_xs_q8_K): layout d (f16) | scales_h (u16) | scales_l[4] | qs[128]; sub-block
    /// ib (32 values) is an IQ4_NL block's qs at 8 + 16·ib with the 6-bit scale (low nibble of scales_l[ib / 2], bits
    /// 2ib, 2ib + 1 of scales_h above it) − 32.</summary>
    internal static unsafe float DotIQ4XSPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + PortableQ8KHead * nb); // [nb, 256] widened quants
        var acc = Vector128<float>.Zero;
        for (int i = 0; i < nb; i++, x += 136, a += 256)
        {
            int h = *(ushort*)(x + 2);
            var isum = Vector128<int>.Zero; // [4] partial lanes of Σ_ib ls_ib · (sub-block ib's sum), at most 8·32·32·127·128
            for (int ib = 0; ib < 8; ib++)
            {
                int ls = (((x[4 + ib / 2] >> 4 * (ib % 2)) & 0xF) | (((h >> 2 * ib) & 3) << 4)) - 32;
                isum += IQ4Block<T>(x + 8 + 16 * ib, a + 32 * ib) * Vector128.Create(ls);
            }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x) * d8[i]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Σ level·a over one 32-value IQ4 block (qs[16]: element j the low nibble of qs[j], j + 16 the high one)
    /// into four int32 lanes. The nibbles pick their levels with one byte shuffle each (<c>pshufb</c> on x86, <c>tbl</c>
    /// on ARM64), which leaves elements 0–15 and 16–31 each in byte order: as int16 lanes, the even element in the low
    /// byte and the odd one in the high byte, the activations' order. Products up to 127·128 go to int32 in pairs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<int> IQ4Block<T>(byte* qs, short* a) where T : IPairMul
    {
        var levels = Vector128.Create((sbyte)-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113); // kvalues_iq4nl
        var q = Vector128.Load(qs);
        var lo = Vector128.ShuffleNative(levels, (q & Vector128.Create((byte)0x0F)).AsSByte()).AsInt16(); // elements 0..15
        var hi = Vector128.ShuffleNative(levels, (q >>> 4).AsSByte()).AsInt16();                          // elements 16..31
        return T.MulAdd((lo << 8) >> 8, Load8(a)) + T.MulAdd(lo >> 8, Load8(a + 8))
             + T.MulAdd((hi << 8) >> 8, Load8(a + 16)) + T.MulAdd(hi >> 8, Load8(a + 24));
    }

    /// <summary>Q2_K × Q8_K (ggml_vec_dot_q2_K_q8_K): layout scales[16] (low nibble the scale, high the min) | qs[64] |
    /// d, dmin (f16). In half k (128 values), value 32s + 16h + l (s = 0..3, h, l = 0..15) is bits 2s, 2s + 1 of
    /// qs[32k + 16h + l], and takes scales[8k + 2s + h]. A sub-block's products (at most 3·127, two to a lane) add up in
    /// int16, then one pair-multiply by its scale carries them into int32; the mins go through the bsums.</summary>
    internal static unsafe float DotQ2KPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* bsums = (short*)(y + PortableQ8KBsums * nb); // [nb, 16]
        short* a = (short*)(y + PortableQ8KHead * nb);      // [nb, 256] widened quants
        var acc = Vector128<float>.Zero;
        var minAcc = Vector128<float>.Zero;
        var three = Vector128.Create((short)3);
        for (int i = 0; i < nb; i++, x += 84, a += 256, bsums += 16)
        {
            var (m0, m1) = Vector128.Widen(Vector128.Load(x) >>> 4); // [16] mins, unsigned bytes → int16
            var mins = T.MulAdd(m0.AsInt16(), Vector128.Load(bsums)) + T.MulAdd(m1.AsInt16(), Vector128.Load(bsums + 8));
            var isum = Vector128<int>.Zero; // [4] partial lanes of Σ_j sc_j · (sub-block j's sum)
            for (int k = 0; k < 2; k++)
                for (int h = 0; h < 2; h++)
                {
                    var v = Load8(x + 16 + 32 * k + 16 * h); // lane j: values 2j, 2j + 1 of four sub-blocks, two bits each
                    for (int s = 0; s < 4; s++)
                    {
                        short* q = a + 128 * k + 32 * s + 16 * h;
                        var p = ((v >> (2 * s)) & three) * Load8(q) + ((v >> (8 + 2 * s)) & three) * Load8(q + 8);
                        isum += T.MulAdd(p, Vector128.Create((short)(x[8 * k + 2 * s + h] & 0x0F)));
                    }
                }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x + 80) * d8[i]);
            minAcc += Vector128.ConvertToSingle(mins) * Vector128.Create(Half(x + 82) * d8[i]);
        }
        return Vector128.Sum(acc) - Vector128.Sum(minAcc);
    }

    /// <summary>Q3_K × Q8_K (ggml_vec_dot_q3_K_q8_K): layout hmask[32] | qs[64] | scales[12] (sixteen 6-bit scales,
    /// offset 32) | d (f16). In half k, value 32s + l (s = 0..3, l = 0..31) is bits 2s, 2s + 1 of qs[32k + l], minus 4
    /// where bit 4k + s of hmask[l] is clear; values 16j … 16j + 15 take scale j. The sums run on the unsigned values
    /// u = low bits | high bit · 4 (0..7, two products to a lane in int16) and the 4 comes off through the bsums:
    /// Σ sc_j·Σ (u − 4)·a = Σ sc_j·(Σ u·a − 4·bsum_j).</summary>
    [SkipLocalsInit]
    internal static unsafe float DotQ3KPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        float* d8 = (float*)y;
        short* bsums = (short*)(y + PortableQ8KBsums * nb); // [nb, 16]
        short* a = (short*)(y + PortableQ8KHead * nb);      // [nb, 256] widened quants
        sbyte* sc = stackalloc sbyte[16];                    // [16] this super-block's scales
        var acc = Vector128<float>.Zero;
        var three = Vector128.Create((short)3);
        var one = Vector128.Create((short)1);
        for (int i = 0; i < nb; i++, x += 110, a += 256, bsums += 16)
        {
            // ggml's scale unpacking (kmask1 = 0x03030303, kmask2 = 0x0F0F0F0F): low nibbles, then the two high bits
            uint a0 = *(uint*)(x + 96), a1 = *(uint*)(x + 100), t = *(uint*)(x + 104);
            var scales = Vector128.Create((a0 & 0x0F0F0F0Fu) | ((t & 0x03030303u) << 4), (a1 & 0x0F0F0F0Fu) | (((t >> 2) & 0x03030303u) << 4),
                ((a0 >> 4) & 0x0F0F0F0Fu) | (((t >> 4) & 0x03030303u) << 4), ((a1 >> 4) & 0x0F0F0F0Fu) | (((t >> 6) & 0x03030303u) << 4)).AsSByte()
                - Vector128.Create((sbyte)32);
            scales.Store(sc);
            var (sc0, sc1) = Vector128.Widen(scales);
            var isum = -4 * (T.MulAdd(sc0, Vector128.Load(bsums)) + T.MulAdd(sc1, Vector128.Load(bsums + 8)));
            for (int k = 0; k < 2; k++)
                for (int h = 0; h < 2; h++)
                {
                    var v = Load8(x + 32 + 32 * k + 16 * h); // lane j: values 16h + 2j, 16h + 2j + 1 of each quarter's 32
                    var hm = Load8(x + 16 * h);                // their hmask bytes
                    for (int s = 0; s < 4; s++)
                    {
                        var e = ((v >> (2 * s)) & three) | (((hm >> (4 * k + s)) & one) << 2);
                        var o = ((v >> (8 + 2 * s)) & three) | (((hm >> (8 + 4 * k + s)) & one) << 2);
                        short* q = a + 128 * k + 32 * s + 16 * h;
                        isum += T.MulAdd(e * Load8(q) + o * Load8(q + 8), Vector128.Create((short)sc[8 * k + 2 * s + h]));
                    }
                }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x + 108) * d8[i]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q4_K / Q5_K × Q8_K (ggml_vec_dot_q4_K_q8_K, _q5_K_): per super-block d·d8·Σ_j sc_j Σ q·a − dmin·d8·Σ_j
    /// m_j·(bsums of sub-block j). Layout: d, dmin (f16) | scales[12] | (Q5_K: qh[32]) | qs[128]; the 32 bytes
    /// qs[32c …] hold sub-blocks 2c (low nibbles) and 2c + 1 (high); Q5_K's fifth bit of value l of sub-block j is bit
    /// j of qh[l]. A sub-block's products (at most 31·127) add up in int16, four to a lane, then one pair-multiply by
    /// its 6-bit scale carries them into int32.</summary>
    internal static unsafe float DotK4Portable<T>(byte* x, byte* y, int nb, bool five) where T : IPairMul
    {
        int bs = five ? 176 : 144, qsOff = five ? 48 : 16;
        float* d8 = (float*)y;
        short* sums = (short*)(y + PortableQ8KSums * nb);   // [nb, 8] sums of 32
        short* a = (short*)(y + PortableQ8KHead * nb);      // [nb, 256] widened quants
        var acc = Vector128<float>.Zero;
        var minAcc = Vector128<float>.Zero;
        var nibble = Vector128.Create((short)0x0F);
        var one = Vector128.Create((short)1);
        for (int i = 0; i < nb; i++, x += bs, a += 256, sums += 8)
        {
            // ggml's get_scale_min_k4 four at a time (its kmask code): with a0, a1, a2 the words of scales[12]
            uint a0 = *(uint*)(x + 4), a1 = *(uint*)(x + 8), a2 = *(uint*)(x + 12);
            ulong sc = (a0 & 0x3F3F3F3Fu) | (ulong)((a2 & 0x0F0F0F0Fu) | (((a0 >> 6) & 0x03030303u) << 4)) << 32;
            uint mn03 = a1 & 0x3F3F3F3Fu, mn47 = ((a2 >> 4) & 0x0F0F0F0Fu) | (((a1 >> 6) & 0x03030303u) << 4);
            var mins = T.MulAdd(Vector128.WidenLower(Vector128.Create(mn03, mn47, 0, 0).AsByte()).AsInt16(), Vector128.Load(sums));
            var isum = Vector128<int>.Zero; // [4] partial lanes of Σ_j sc_j · (sub-block j's sum)
            for (int c = 0; c < 4; c++)
            {
                Vector128<short> lo = default, hi = default; // [8] int16 sums of sub-blocks 2c and 2c + 1
                for (int t = 0; t < 2; t++)
                {
                    var v = Load8(x + qsOff + 32 * c + 16 * t); // lane k: values 16t + 2k, 16t + 2k + 1 of both sub-blocks
                    Vector128<short> le = v & nibble, lo_ = (v >> 8) & nibble, he = (v >> 4) & nibble, ho = (v >> 12) & nibble;
                    if (five)
                    {
                        var h = Load8(x + 16 + 16 * t);
                        le |= ((h >> (2 * c)) & one) << 4;
                        lo_ |= ((h >> (2 * c + 8)) & one) << 4;
                        he |= ((h >> (2 * c + 1)) & one) << 4;
                        ho |= ((h >> (2 * c + 9)) & one) << 4;
                    }
                    short* al = a + 64 * c + 16 * t, ah = al + 32;
                    lo += le * Load8(al) + lo_ * Load8(al + 8);
                    hi += he * Load8(ah) + ho * Load8(ah + 8);
                }
                isum += T.MulAdd(lo, Vector128.Create((short)(byte)(sc >> (16 * c)))) + T.MulAdd(hi, Vector128.Create((short)(byte)(sc >> (16 * c + 8))));
            }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x) * d8[i]);
            minAcc += Vector128.ConvertToSingle(mins) * Vector128.Create(Half(x + 2) * d8[i]);
        }
        return Vector128.Sum(acc) - Vector128.Sum(minAcc);
    }

    /// <summary>Q6_K × Q8_K (ggml_vec_dot_q6_K_q8_K): layout ql[128] | qh[64] | scales[16] (int8) | d (f16). In half h
    /// (128 values), value 32k + l (k = 0..3, l = 0..31) is the low (k even) or high (k odd) nibble of ql[64h + l +
    /// 32·(k mod 2)] with bits 2k, 2k + 1 of qh[32h + l] above it, minus 32; values 16s … 16s + 15 take scales[s]. The
    /// sums run on the unsigned values (0..63, two products to a lane in int16) and the 32 comes off through the
    /// bsums: Σ sc_s·Σ (q − 32)·a = Σ sc_s·(Σ q·a − 32·bsum_s).</summary>
    internal static unsafe float DotQ6KPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        // decode: one row in registers (through DotQ6KPortableRows with one row, the per-row arrays cost ~15 % here)
        float* d8 = (float*)y;
        short* bsums = (short*)(y + PortableQ8KBsums * nb); // [nb, 16]
        short* a = (short*)(y + PortableQ8KHead * nb);      // [nb, 256] widened quants
        var acc = Vector128<float>.Zero;
        for (int i = 0; i < nb; i++, x += 210, a += 256, bsums += 16)
        {
            sbyte* scales = (sbyte*)(x + 192);
            var (sc0, sc1) = Vector128.Widen(Vector128.Load(scales));
            var isum = -32 * (T.MulAdd(sc0, Vector128.Load(bsums)) + T.MulAdd(sc1, Vector128.Load(bsums + 8)));
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 32; l += 16)
                {
                    Q6KValues(x, h, l, out var e0, out var o0, out var e1, out var o1, out var e2, out var o2, out var e3, out var o3);
                    short* q = a + 128 * h + l;
                    int s = 8 * h + l / 16;
                    isum += T.MulAdd(e0 * Load8(q) + o0 * Load8(q + 8), Vector128.Create((short)scales[s]))
                          + T.MulAdd(e1 * Load8(q + 32) + o1 * Load8(q + 40), Vector128.Create((short)scales[s + 2]))
                          + T.MulAdd(e2 * Load8(q + 64) + o2 * Load8(q + 72), Vector128.Create((short)scales[s + 4]))
                          + T.MulAdd(e3 * Load8(q + 96) + o3 * Load8(q + 104), Vector128.Create((short)scales[s + 6]));
                }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x + 208) * d8[i]);
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Values 128h + l … of a Q6_K super-block as int16, unsigned 0..63: quarter k's even-indexed (e) and
    /// odd-indexed (o) values of the sixteen from 32k + l (lane j: the byte pair 2j, 2j + 1 of ql and qh).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Q6KValues(byte* x, int h, int l, out Vector128<short> e0, out Vector128<short> o0, out Vector128<short> e1,
        out Vector128<short> o1, out Vector128<short> e2, out Vector128<short> o2, out Vector128<short> e3, out Vector128<short> o3)
    {
        var nibble = Vector128.Create((short)0x0F);
        var three = Vector128.Create((short)3);
        var l0 = Load8(x + 64 * h + l);
        var l1 = Load8(x + 64 * h + 32 + l);
        var qh = Load8(x + 128 + 32 * h + l);
        e0 = (l0 & nibble) | ((qh & three) << 4);
        o0 = ((l0 >> 8) & nibble) | (((qh >> 8) & three) << 4);
        e1 = (l1 & nibble) | (((qh >> 2) & three) << 4);
        o1 = ((l1 >> 8) & nibble) | (((qh >> 10) & three) << 4);
        e2 = ((l0 >> 4) & nibble) | (((qh >> 4) & three) << 4);
        o2 = ((l0 >> 12) & nibble) | (((qh >> 12) & three) << 4);
        e3 = ((l1 >> 4) & nibble) | (((qh >> 6) & three) << 4);
        o3 = ((l1 >> 12) & nibble) | (((qh >> 14) & three) << 4);
    }

    /// <summary><see cref="DotQ6KPortable{T}"/> for up to <see cref="PortableRowGroup"/> activation rows at once (prefill),
    /// each weight super-block's values assembled once for all of them; each output the bits of that row alone (the
    /// same integers, the same float steps).</summary>
    internal static unsafe void DotQ6KPortableRows<T>(byte* x, byte* y, int yStride, int B, int nb, float* dst, int dstStride) where T : IPairMul
    {
        var acc = stackalloc Vector128<float>[B]; // [B] partial lanes of Σ isum·d·d8
        var isum = stackalloc Vector128<int>[B];  // [B] this super-block's Σ_s sc_s·(Σ q·a − 32·bsum_s)
        for (int b = 0; b < B; b++) acc[b] = Vector128<float>.Zero;
        for (int i = 0; i < nb; i++, x += 210)
        {
            sbyte* scales = (sbyte*)(x + 192);
            var (sc0, sc1) = Vector128.Widen(Vector128.Load(scales));
            for (int b = 0; b < B; b++)
            {
                short* bsums = (short*)(y + (long)b * yStride + PortableQ8KBsums * nb) + 16 * i;
                isum[b] = -32 * (T.MulAdd(sc0, Vector128.Load(bsums)) + T.MulAdd(sc1, Vector128.Load(bsums + 8)));
            }
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 32; l += 16)
                {
                    Q6KValues(x, h, l, out var e0, out var o0, out var e1, out var o1, out var e2, out var o2, out var e3, out var o3);
                    int s = 8 * h + l / 16; // scale of values 128h + l …: s, then s + 2k for quarter k
                    var k0 = Vector128.Create((short)scales[s]);
                    var k1 = Vector128.Create((short)scales[s + 2]);
                    var k2 = Vector128.Create((short)scales[s + 4]);
                    var k3 = Vector128.Create((short)scales[s + 6]);
                    for (int b = 0; b < B; b++)
                    {
                        short* q = (short*)(y + (long)b * yStride + PortableQ8KHead * nb) + 256 * i + 128 * h + l;
                        // two products (at most 63·127) to a lane in int16
                        isum[b] += T.MulAdd(e0 * Load8(q) + o0 * Load8(q + 8), k0) + T.MulAdd(e1 * Load8(q + 32) + o1 * Load8(q + 40), k1)
                                 + T.MulAdd(e2 * Load8(q + 64) + o2 * Load8(q + 72), k2) + T.MulAdd(e3 * Load8(q + 96) + o3 * Load8(q + 104), k3);
                    }
                }
            float d = Half(x + 208);
            for (int b = 0; b < B; b++)
                acc[b] += Vector128.ConvertToSingle(isum[b]) * Vector128.Create(d * ((float*)(y + (long)b * yStride))[i]);
        }
        for (int b = 0; b < B; b++) dst[(long)b * dstStride] = Vector128.Sum(acc[b]);
    }
}
