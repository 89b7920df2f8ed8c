using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// The portable tier: one-row dot kernels on 128-bit vectors through .NET's cross-platform Vector128 API, for machines
// without AVX2 — ARM64 (NEON: Apple silicon, Graviton, Ampere) and x86 before Haswell, which otherwise run the scalar
// reference. The JIT compiles the same code to SSE on x86 and to NEON on ARM64. Activations are ggml's (block_q8_0,
// block_q8_K), as the scalar kernels read them. Integer block sums are exact (the scalar kernels' integers); only the
// float accumulation order differs, so each kernel equals DotScalar up to float rounding of the sum.
//
// The one step that is not portable is int16 × int16 → int32 with neighbours added: x86 has pmaddwd
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
        && type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    /// <summary>One portable dot product of a weight row with ggml's activations for it (<see cref="PortableRows"/>).</summary>
    internal static unsafe float DotPortable(GgmlType type, byte* w, byte* a, int n) => Sse2.IsSupported
        ? DotPortable<SsePairs>(type, w, a, n)
        : DotPortable<WidePairs>(type, w, a, n);

    internal static unsafe float DotPortable<T>(GgmlType type, byte* w, byte* a, int n) where T : IPairMul => type switch
    {
        GgmlType.Q8_0 => DotQ80Portable<T>(w, a, n / 32),
        GgmlType.Q4_0 => DotQ40Portable<T>(w, a, n / 32),
        GgmlType.Q4_K => DotK4Portable<T>(w, a, n / 256, five: false),
        GgmlType.Q5_K => DotK4Portable<T>(w, a, n / 256, five: true),
        GgmlType.Q6_K => DotQ6KPortable<T>(w, a, n / 256),
        _ => throw new ArgumentException($"no portable kernel for {type}", nameof(type)),
    };

    /// <summary>Σ w·a over sixteen int8 pairs, in four int32 lanes (exact for any int8 values).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<int> Dot16<T>(Vector128<sbyte> w, Vector128<sbyte> a) where T : IPairMul
    {
        var (w0, w1) = Vector128.Widen(w);
        var (a0, a1) = Vector128.Widen(a);
        return T.MulAdd(w0, a0) + T.MulAdd(w1, a1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<sbyte> Load16(byte* p) => Vector128.Load((sbyte*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float Half(byte* p) => Fp16.ToSingle(*(ushort*)p);

    /// <summary>Q8_0 × Q8_0 (ggml_vec_dot_q8_0_q8_0): per block (d | qs[32]) the exact Σ q_w·q_a, times d_w·d_a into
    /// four float lanes.</summary>
    internal static unsafe float DotQ80Portable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        var acc = Vector128<float>.Zero; // [4] block sums' partial lanes, scaled
        for (int ib = 0; ib < nb; ib++, x += 34, y += 34)
        {
            var s = Dot16<T>(Load16(x + 2), Load16(y + 2)) + Dot16<T>(Load16(x + 18), Load16(y + 18));
            acc += Vector128.ConvertToSingle(s) * Vector128.Create(Half(x) * Half(y));
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q4_0 × Q8_0 (ggml_vec_dot_q4_0_q8_0): block (d | qs[16]), element j the low nibble of qs[j] and j + 16
    /// the high one, each minus 8.</summary>
    internal static unsafe float DotQ40Portable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        var acc = Vector128<float>.Zero;
        var low = Vector128.Create((byte)0x0F);
        var eight = Vector128.Create((sbyte)8);
        for (int ib = 0; ib < nb; ib++, x += 18, y += 34)
        {
            var q = Vector128.Load(x + 2);
            var lo = (q & low).AsSByte() - eight;
            var hi = (q >> 4).AsSByte() - eight;
            var s = Dot16<T>(lo, Load16(y + 2)) + Dot16<T>(hi, Load16(y + 18));
            acc += Vector128.ConvertToSingle(s) * Vector128.Create(Half(x) * Half(y));
        }
        return Vector128.Sum(acc);
    }

    /// <summary>Q4_K / Q5_K × Q8_K (ggml_vec_dot_q4_K_q8_K, _q5_K_): per super-block d·d8·Σ_j sc_j Σ q·a − dmin·d8·Σ_j
    /// m_j·(bsums of sub-block j), the sub-block sums exact in int32 lanes and scaled by their 6-bit sc_j there.
    /// Layout: d, dmin (f16) | scales[12] | (Q5_K: qh[32]) | qs[128]; 32 bytes of qs hold sub-blocks 2c (low nibbles)
    /// and 2c + 1 (high); Q5_K's fifth bit of value l in sub-block j is bit j of qh[l].</summary>
    internal static unsafe float DotK4Portable<T>(byte* x, byte* y, int nb, bool five) where T : IPairMul
    {
        int bs = five ? 176 : 144, qsOff = five ? 48 : 16;
        var acc = Vector128<float>.Zero;
        float minSum = 0;
        var low = Vector128.Create((byte)0x0F);
        var sixteen = Vector128.Create((byte)16);
        Span<int> sc = stackalloc int[8], mn = stackalloc int[8];
        for (int i = 0; i < nb; i++, x += bs, y += 292)
        {
            var scales = new ReadOnlySpan<byte>(x + 4, 12);
            for (int j = 0; j < 8; j++) Dequantize.ScaleMinK4(j, scales, out sc[j], out mn[j]);
            short* bsums = (short*)(y + 260);
            int mins = 0;
            for (int j = 0; j < 8; j++) mins += mn[j] * (bsums[2 * j] + bsums[2 * j + 1]);
            var isum = Vector128<int>.Zero; // [4] Σ_j sc_j · (sub-block j's sum), partial lanes
            for (int c = 0; c < 4; c++)
            {
                var q0 = Vector128.Load(x + qsOff + 32 * c);
                var q1 = Vector128.Load(x + qsOff + 32 * c + 16);
                Vector128<byte> lo0 = q0 & low, lo1 = q1 & low, hi0 = q0 >> 4, hi1 = q1 >> 4;
                if (five)
                {
                    var h0 = Vector128.Load(x + 16);
                    var h1 = Vector128.Load(x + 32);
                    byte m0 = (byte)(1 << (2 * c)), m1 = (byte)(2 << (2 * c));
                    lo0 |= Vector128.Equals(h0 & Vector128.Create(m0), Vector128.Create(m0)) & sixteen;
                    lo1 |= Vector128.Equals(h1 & Vector128.Create(m0), Vector128.Create(m0)) & sixteen;
                    hi0 |= Vector128.Equals(h0 & Vector128.Create(m1), Vector128.Create(m1)) & sixteen;
                    hi1 |= Vector128.Equals(h1 & Vector128.Create(m1), Vector128.Create(m1)) & sixteen;
                }
                byte* a = y + 4 + 64 * c;
                var sLo = Dot16<T>(lo0.AsSByte(), Load16(a)) + Dot16<T>(lo1.AsSByte(), Load16(a + 16));
                var sHi = Dot16<T>(hi0.AsSByte(), Load16(a + 32)) + Dot16<T>(hi1.AsSByte(), Load16(a + 48));
                isum += sLo * sc[2 * c] + sHi * sc[2 * c + 1];
            }
            float d8 = *(float*)y;
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x) * d8);
            minSum += Half(x + 2) * d8 * mins;
        }
        return Vector128.Sum(acc) - minSum;
    }

    /// <summary>Q6_K × Q8_K (ggml_vec_dot_q6_K_q8_K): layout ql[128] | qh[64] | scales[16] (int8) | d (f16). In half h
    /// (128 values), value 32k + l (k = 0..3, l = 0..31) is the low (k even) or high (k odd) nibble of ql[64h + l +
    /// 32·(k mod 2)] with bits 2k, 2k + 1 of qh[32h + l] above it, minus 32; values 16s … 16s + 15 take scales[s].</summary>
    internal static unsafe float DotQ6KPortable<T>(byte* x, byte* y, int nb) where T : IPairMul
    {
        var acc = Vector128<float>.Zero;
        var low = Vector128.Create((byte)0x0F);
        var three = Vector128.Create((byte)3);
        var offset = Vector128.Create((sbyte)32);
        for (int i = 0; i < nb; i++, x += 210, y += 292)
        {
            sbyte* scales = (sbyte*)(x + 192);
            var isum = Vector128<int>.Zero;
            for (int h = 0; h < 2; h++)
                for (int l = 0; l < 32; l += 16)
                {
                    var l0 = Vector128.Load(x + 64 * h + l);
                    var l1 = Vector128.Load(x + 64 * h + 32 + l);
                    var qh = Vector128.Load(x + 128 + 32 * h + l);
                    var v0 = ((l0 & low) | ((qh & three) << 4)).AsSByte() - offset;
                    var v1 = ((l1 & low) | (((qh >> 2) & three) << 4)).AsSByte() - offset;
                    var v2 = ((l0 >> 4) | (((qh >> 4) & three) << 4)).AsSByte() - offset;
                    var v3 = ((l1 >> 4) | ((qh >> 6) << 4)).AsSByte() - offset;
                    byte* a = y + 4 + 128 * h + l;
                    int s = 8 * h + l / 16; // scale of values 128h + l …: s, then s + 2k for quarter k
                    isum += Dot16<T>(v0, Load16(a)) * scales[s] + Dot16<T>(v1, Load16(a + 32)) * scales[s + 2]
                          + Dot16<T>(v2, Load16(a + 64)) * scales[s + 4] + Dot16<T>(v3, Load16(a + 96)) * scales[s + 6];
                }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(Half(x + 208) * *(float*)y);
        }
        return Vector128.Sum(acc);
    }
}
