using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// SIMD paths. Integer block sums are exact (same integers as the scalar kernels); only the float accumulation
// order differs (per-lane float accumulators, FMA), so Dot == DotScalar up to float rounding of the sum.
// Quantized kernels use 256-bit AVX2 with AVX-VNNI (vpdpbusd) when present; .NET 10 exposes no 512-bit VNNI for
// Zen 5, and a 32-element block is exactly one 256-bit register. Without AVX2 they fall back to the scalar kernels
// here; RowKernels runs the common types' portable 128-bit kernels instead (VecDot.Portable.cs: ARM64, older x86).
public static partial class VecDot
{
    /// <summary>Fast dot product; equals <see cref="DotScalar"/> up to float summation order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public static unsafe float Dot(GgmlType weightType, ReadOnlySpan<byte> weightRow, ReadOnlySpan<byte> activationRow, int n)
    {
        Check(weightType, weightRow.Length, activationRow.Length, n);
        ref byte w = ref MemoryMarshal.GetReference(weightRow);
        ref byte a = ref MemoryMarshal.GetReference(activationRow);
        switch (weightType)
        {
            case GgmlType.F32: return DotF32(ref w, ref a, n);
            case GgmlType.F16: return DotF16(ref w, ref a, n);
            case GgmlType.BF16: return DotBF16(ref w, ref a, n);
        }
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            switch (weightType)
            {
                case GgmlType.Q8_0: return DotQ8_0(ref w, ref a, n / 32);
                case GgmlType.Q4_0: fixed (byte* x = &w) fixed (byte* y = &a) return DotLegacyAvx2<Q40Block>(x, y, n / 32);
                case GgmlType.Q4_K: return DotQ4_K(ref w, ref a, n / 256);
                case GgmlType.Q5_K: return DotQ5_K(ref w, ref a, n / 256);
                case GgmlType.Q6_K: return DotQ6_K(ref w, ref a, n / 256);
                case GgmlType.Q4_1: fixed (byte* x = &w) fixed (byte* y = &a) return DotLegacyAvx2<Q41Block>(x, y, n / 32);
                case GgmlType.Q5_0: fixed (byte* x = &w) fixed (byte* y = &a) return DotLegacyAvx2<Q50Block>(x, y, n / 32);
                case GgmlType.Q5_1: fixed (byte* x = &w) fixed (byte* y = &a) return DotLegacyAvx2<Q51Block>(x, y, n / 32);
                case GgmlType.Q3_K: fixed (byte* x = &w) fixed (byte* y = &a) return DotQ3KAvx2(x, y, n / 256);
                case GgmlType.Q2_K: fixed (byte* x = &w) fixed (byte* y = &a) return DotQ2KAvx2(x, y, n / 256);
                case GgmlType.IQ4_NL: fixed (byte* x = &w) fixed (byte* y = &a) return DotIQ4NLAvx2(x, y, n / 32);
                case GgmlType.IQ4_XS: fixed (byte* x = &w) fixed (byte* y = &a) return DotIQ4XSAvx2(x, y, n / 256);
                case GgmlType.IQ2_XXS: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotSignedLatticeAvx512<IQ2XXSWide>(x, y, n / 256) : DotLatticeAvx2<IQ2XXSBlock>(x, y, n / 256);
                case GgmlType.IQ2_XS: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotSignedLatticeAvx512<IQ2XSWide>(x, y, n / 256) : DotLatticeAvx2<IQ2XSBlock>(x, y, n / 256);
                case GgmlType.IQ2_S: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotSignedLatticeAvx512<IQ2SWide>(x, y, n / 256) : DotLatticeAvx2<IQ2SBlock>(x, y, n / 256);
                case GgmlType.IQ3_XXS: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotSignedLatticeAvx512<IQ3XXSWide>(x, y, n / 256) : DotLatticeAvx2<IQ3XXSBlock>(x, y, n / 256);
                case GgmlType.IQ3_S: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotSignedLatticeAvx512<IQ3SWide>(x, y, n / 256) : DotLatticeAvx2<IQ3SBlock>(x, y, n / 256);
                case GgmlType.IQ1_S: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotIQ1Avx512<IQ1SWide>(x, y, n / 256) : DotIQ1SAvx2(x, y, n / 256);
                case GgmlType.IQ1_M: fixed (byte* x = &w) fixed (byte* y = &a) return Avx512BW.IsSupported ? DotIQ1Avx512<IQ1MWide>(x, y, n / 256) : DotIQ1MAvx2(x, y, n / 256);
            }
        }
        return DotScalar(weightType, weightRow, activationRow, n);
    }

    // ------------------------------------------------------------------ float rows

    // F32 x F32: 4 x 16-lane FMA accumulators, then 8/4-lane and scalar tails.
    private static float DotF32(ref byte wb, ref byte ab, int n)
    {
        ref float x = ref Unsafe.As<byte, float>(ref wb);
        ref float y = ref Unsafe.As<byte, float>(ref ab);
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 16)
        {
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 64 <= n; i += 64)
            {
                s0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref x, (nuint)i), Vector512.LoadUnsafe(ref y, (nuint)i), s0);
                s1 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref x, (nuint)i + 16), Vector512.LoadUnsafe(ref y, (nuint)i + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref x, (nuint)i + 32), Vector512.LoadUnsafe(ref y, (nuint)i + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref x, (nuint)i + 48), Vector512.LoadUnsafe(ref y, (nuint)i + 48), s3);
            }
            for (; i + 16 <= n; i += 16)
                s0 = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref x, (nuint)i), Vector512.LoadUnsafe(ref y, (nuint)i), s0);
            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            Vector256<float> s0 = default, s1 = default;
            for (; i + 16 <= n; i += 16)
            {
                s0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref x, (nuint)i), Vector256.LoadUnsafe(ref y, (nuint)i), s0);
                s1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref x, (nuint)i + 8), Vector256.LoadUnsafe(ref y, (nuint)i + 8), s1);
            }
            for (; i + 8 <= n; i += 8)
                s0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref x, (nuint)i), Vector256.LoadUnsafe(ref y, (nuint)i), s0);
            sum = Vector256.Sum(s0 + s1);
        }
        else if (Vector128.IsHardwareAccelerated && n >= 4)
        {
            Vector128<float> s0 = default;
            for (; i + 4 <= n; i += 4)
                s0 += Vector128.LoadUnsafe(ref x, (nuint)i) * Vector128.LoadUnsafe(ref y, (nuint)i);
            sum = Vector128.Sum(s0);
        }
        for (; i < n; i++) sum += Unsafe.Add(ref x, i) * Unsafe.Add(ref y, i);
        return sum;
    }

    private static readonly float ExpScale = BitConverter.UInt32BitsToSingle(0x07800000u); // 2^-112

    // 16 halves → floats: the same exact conversion the row kernels use (one implementation).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> HalfToSingle(Vector512<int> h) => RowKernels.HalfToSingle(h);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> HalfToSingle(Vector256<uint> h)
    {
        Vector256<uint> w = h << 16;
        Vector256<uint> sign = w & Vector256.Create(0x80000000u);
        Vector256<uint> twoW = w + w;
        Vector256<float> normalized = ((twoW >> 4) + Vector256.Create(0x70000000u)).AsSingle() * Vector256.Create(ExpScale);
        Vector256<float> denormalized = ((twoW >> 17) | Vector256.Create(0x3F000000u)).AsSingle() - Vector256.Create(0.5f);
        Vector256<uint> isDenormal = Vector256.LessThan(twoW, Vector256.Create(0x08000000u));
        return (sign | Vector256.ConditionalSelect(isDenormal, denormalized.AsUInt32(), normalized.AsUInt32())).AsSingle();
    }

    // F16 x F16: halves widened to f32 with the ggml bit trick; f16*f16 is exact in f32, so FMA == mul + add.
    private static float DotF16(ref byte wb, ref byte ab, int n)
    {
        ref ushort x = ref Unsafe.As<byte, ushort>(ref wb);
        ref ushort y = ref Unsafe.As<byte, ushort>(ref ab);
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> s0 = default, s1 = default;
            for (; i + 32 <= n; i += 32)
            {
                var (xl, xh) = Vector512.Widen(Vector512.LoadUnsafe(ref Unsafe.As<ushort, short>(ref x), (nuint)i)); // sign-extended
                var (yl, yh) = Vector512.Widen(Vector512.LoadUnsafe(ref Unsafe.As<ushort, short>(ref y), (nuint)i));
                s0 = Vector512.FusedMultiplyAdd(HalfToSingle(xl), HalfToSingle(yl), s0);
                s1 = Vector512.FusedMultiplyAdd(HalfToSingle(xh), HalfToSingle(yh), s1);
            }
            sum = Vector512.Sum(s0 + s1);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> s0 = default, s1 = default;
            for (; i + 16 <= n; i += 16)
            {
                var (xl, xh) = Vector256.Widen(Vector256.LoadUnsafe(ref x, (nuint)i));
                var (yl, yh) = Vector256.Widen(Vector256.LoadUnsafe(ref y, (nuint)i));
                s0 = Vector256.FusedMultiplyAdd(HalfToSingle(xl), HalfToSingle(yl), s0);
                s1 = Vector256.FusedMultiplyAdd(HalfToSingle(xh), HalfToSingle(yh), s1);
            }
            sum = Vector256.Sum(s0 + s1);
        }
        for (; i < n; i++) sum += Fp16.ToSingle(Unsafe.Add(ref x, i)) * Fp16.ToSingle(Unsafe.Add(ref y, i));
        return sum;
    }

    // BF16 x BF16: widen and shift left 16; products exact in f32.
    private static float DotBF16(ref byte wb, ref byte ab, int n)
    {
        ref ushort x = ref Unsafe.As<byte, ushort>(ref wb);
        ref ushort y = ref Unsafe.As<byte, ushort>(ref ab);
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 32)
        {
            Vector512<float> s0 = default, s1 = default;
            for (; i + 32 <= n; i += 32)
            {
                var (xl, xh) = Vector512.Widen(Vector512.LoadUnsafe(ref x, (nuint)i));
                var (yl, yh) = Vector512.Widen(Vector512.LoadUnsafe(ref y, (nuint)i));
                s0 = Vector512.FusedMultiplyAdd((xl << 16).AsSingle(), (yl << 16).AsSingle(), s0);
                s1 = Vector512.FusedMultiplyAdd((xh << 16).AsSingle(), (yh << 16).AsSingle(), s1);
            }
            sum = Vector512.Sum(s0 + s1);
        }
        else if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            Vector256<float> s0 = default, s1 = default;
            for (; i + 16 <= n; i += 16)
            {
                var (xl, xh) = Vector256.Widen(Vector256.LoadUnsafe(ref x, (nuint)i));
                var (yl, yh) = Vector256.Widen(Vector256.LoadUnsafe(ref y, (nuint)i));
                s0 = Vector256.FusedMultiplyAdd((xl << 16).AsSingle(), (yl << 16).AsSingle(), s0);
                s1 = Vector256.FusedMultiplyAdd((xh << 16).AsSingle(), (yh << 16).AsSingle(), s1);
            }
            sum = Vector256.Sum(s0 + s1);
        }
        for (; i < n; i++) sum += Bf16.ToSingle(Unsafe.Add(ref x, i)) * Bf16.ToSingle(Unsafe.Add(ref y, i));
        return sum;
    }

    // ------------------------------------------------------------------ integer helpers

    /// <summary>
    /// acc + Σ u·s over each group of 4 bytes (u unsigned, s signed). vpdpbusd with AVX-VNNI; otherwise
    /// vpmaddubsw + vpmaddwd, exact as long as 2·u·|s| fits int16 (u ≤ 128, |s| ≤ 127 holds for every caller).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotU8I8(Vector256<int> acc, Vector256<byte> u, Vector256<sbyte> s)
    {
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(acc, u, s);
        return acc + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256<short>.One);
    }

    /// <summary>Signed·signed via |x|·sign(y, x) (the ggml trick); y must not be -128 (Q8 activations never are).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> DotI8I8(Vector256<sbyte> x, Vector256<sbyte> y)
        => DotU8I8(Vector256<int>.Zero, Avx2.Abs(x), Avx2.Sign(y, x));

    // ------------------------------------------------------------------ 32-element blocks x Q8_0

    // Q8_0 (34 B: d f16 | qs[32] int8) x Q8_0: per block 8 int32 lanes, converted and FMA'd with d_x·d_y.
    private static unsafe float DotQ8_0(ref byte w, ref byte a, int nb)
    {
        fixed (byte* x = &w) fixed (byte* y = &a) return DotQ80Avx2(x, y, nb);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ80Avx2(byte* x, byte* y, int nb)
    {
        Vector256<float> acc0 = default, acc1 = default; // even and odd blocks
        int ib = 0;
        for (; ib + 2 <= nb; ib += 2)
        {
            int o0 = ib * 34, o1 = o0 + 34;
            Sse.Prefetch0(x + o0 + PrefetchAhead);
            Sse.Prefetch0(x + o0 + PrefetchAhead + 64);
            Q80Block(x + o0, y + o0, ref acc0);
            Q80Block(x + o1, y + o1, ref acc1);
        }
        for (; ib < nb; ib++) Q80Block(x + ib * 34, y + ib * 34, ref acc0);
        return Vector256.Sum(acc0 + acc1);
    }

    /// <summary>One Q8_0 block of weights (34 B at w) against one of activations (at a): <see cref="Q80BlockD"/> with
    /// the activation block's own half scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Q80Block(byte* w, byte* a, ref Vector256<float> acc)
        => Q80BlockD(w, (sbyte*)(a + 2), Fp16.ToSingle(*(ushort*)a), ref acc);

    /// <summary>One Q8_0 block of weights (34 B at w) against 32 int8 activations at aq with scale ad:
    /// acc += d_w·ad · Σ w·a as 8 lanes (|w| · sign(a, w), vpmaddubsw, vpmaddwd).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Q80BlockD(byte* w, sbyte* aq, float ad, ref Vector256<float> acc)
    {
        var q = Vector256.Load((sbyte*)(w + 2));
        var p = DotU8I8(Vector256<int>.Zero, Avx2.Abs(q), Avx2.Sign(Vector256.Load(aq), q));
        acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(p), Vector256.Create(Fp16.ToSingle(*(ushort*)w) * ad), acc);
    }

    /// <summary>The 32 nibbles of a 16-byte quant block as bytes: element j the low nibble of q[j], j + 16 its high nibble.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<byte> Nibbles32(byte* q)
    {
        var m4 = Vector128.Create((byte)0x0F);
        var v = Vector128.Load(q);
        return Vector256.Create(v & m4, Vector128.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & m4);
    }

    /// <summary>Bit j of a 32-bit qh as byte j: 0xFF where it is set, 0 where clear (ggml's bytes_from_bits_32).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<byte> BitsToBytes32(uint qh)
    {
        var spread = Avx2.Shuffle(Vector256.Create(qh).AsByte(), Vector256.Create(0ul, 0x0101010101010101ul, 0x0202020202020202ul, 0x0303030303030303ul).AsByte());
        return Vector256.Equals(spread | Vector256.Create(0x7fbfdfeff7fbfdfeul).AsByte(), Vector256<byte>.AllBitsSet);
    }

    /// <summary>
    /// The 32-value legacy types (<see cref="ILegacyBlock"/>: Q4_0, Q4_1, Q5_0, Q5_1) against ggml's activation blocks —
    /// Q8_0 (34 B: d | qs[32]) for Q4_0 / Q5_0, Q8_1 (36 B: d | s = d·Σq | qs[32]) for Q4_1 / Q5_1 — one row, for
    /// <see cref="Dot"/>: the values as bytes (nibbles, the fifth bit as 16 via ggml's bytes_from_bits_32); without a
    /// min, offset by −8 / −16 and multiplied with the sign trick; with one, unsigned, plus m_x·s_y per block.
    /// </summary>
    private static unsafe float DotLegacyAvx2<T>(byte* x0, byte* y0, int nb) where T : ILegacyBlock
    {
        int ab = T.Min == 0 ? 34 : 36; // activation block bytes; its 32 quants are the last
        Vector256<float> acc = default;
        float summs = 0;
        for (int ib = 0; ib < nb; ib++)
        {
            byte* x = x0 + ib * T.Bytes, y = y0 + ib * ab;
            var q = Nibbles32(x + T.Qs);
            if (T.HighBits != 0) q |= BitsToBytes32(*(uint*)(x + T.HighBits)) & Vector256.Create((byte)0x10);
            var av = Vector256.Load((sbyte*)(y + ab - 32));
            var p = T.Min == 0
                ? DotI8I8(q.AsSByte() - Vector256.Create((sbyte)(1 << T.OffsetShift)), av)
                : DotU8I8(Vector256<int>.Zero, q, av);
            acc = Fma.MultiplyAdd(Vector256.ConvertToSingle(p), Vector256.Create(Fp16.ToSingle(*(ushort*)x) * Fp16.ToSingle(*(ushort*)y)), acc);
            if (T.Min != 0) summs += Fp16.ToSingle(*(ushort*)(x + T.Min)) * Fp16.ToSingle(*(ushort*)(y + 2));
        }
        return Vector256.Sum(acc) + summs;
    }

    /// <summary>The 16 IQ4 levels (<see cref="Dequantize.IQ4Levels"/>) in both 128-bit lanes: vpshufb with 4-bit indices
    /// looks 32 of them up at once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<sbyte> IQ4LevelTable() => Vector256.Create(
        (sbyte)-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);

    /// <summary>
    /// IQ4_NL (18 B: d | qs[16]) x Q8_0 (34 B: d | qs[32]), one row: each block's 32 indices (<see cref="Nibbles32"/>)
    /// become levels by one table shuffle, multiplied with the activations by the sign trick (levels are never −128).
    /// </summary>
    internal static unsafe float DotIQ4NLAvx2(byte* x0, byte* y0, int nb)
    {
        var table = IQ4LevelTable();
        Vector256<float> acc = default;
        for (int ib = 0; ib < nb; ib++)
        {
            byte* x = x0 + ib * 18, y = y0 + ib * 34;
            var levels = Avx2.Shuffle(table, Nibbles32(x + 2).AsSByte());
            var p = DotI8I8(levels, Vector256.Load((sbyte*)(y + 2)));
            acc = Fma.MultiplyAdd(Vector256.ConvertToSingle(p), Vector256.Create(Fp16.ToSingle(*(ushort*)x) * Fp16.ToSingle(*(ushort*)y)), acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>
    /// IQ4_XS (136 B: d | scales_h | scales_l[4] | qs[128]) x Q8_K (292 B: d f32 | qs[256] | bsums), one row: each of
    /// the eight sub-blocks as IQ4_NL, its integer dot times its 6-bit scale − 32 summed in int32 lanes (at most
    /// 8 · 32 · 4 · 127² per lane), then one multiply–add by d·d8 per super-block.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotIQ4XSAvx2(byte* x0, byte* y0, int nb)
    {
        var table = IQ4LevelTable();
        Vector256<float> acc = default;
        for (int ibl = 0; ibl < nb; ibl++)
        {
            byte* x = x0 + ibl * 136;
            PrefetchIQ4XS(x);
            acc = IQ4XSStep(x, y0 + ibl * 292, table, acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>The three cache lines a 136-byte super-block 4 KiB ahead can touch: decode streams each weight once, and
    /// the hardware prefetcher alone falls behind a kernel this short (as for Q4_K, RowKernels.PrefetchDistance).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void PrefetchIQ4XS(byte* x)
    {
        Sse.Prefetch0(x + 4096);
        Sse.Prefetch0(x + 4096 + 64);
        Sse.Prefetch0(x + 4096 + 128);
    }

    /// <summary>One IQ4_XS super-block (x) against one Q8_K super-block (y): Σ over the eight sub-blocks of
    /// (ls − 32) · Σ level·q8 in int32 lanes, then acc + that · d · d8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<float> IQ4XSStep(byte* x, byte* y, Vector256<sbyte> table, Vector256<float> acc)
    {
        int h = *(ushort*)(x + 2);
        uint l = *(uint*)(x + 4);
        Vector256<int> sumi = default;
        for (int ib = 0; ib < 8; ib++)
        {
            int ls = (int)((l >> 4 * ib) & 0xF | (uint)((h >> 2 * ib) & 3) << 4) - 32;
            var levels = Avx2.Shuffle(table, Nibbles32(x + 8 + 16 * ib).AsSByte());
            sumi += DotI8I8(levels, Vector256.Load((sbyte*)(y + 4 + 32 * ib))) * Vector256.Create(ls);
        }
        return Fma.MultiplyAdd(Vector256.ConvertToSingle(sumi), Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), acc);
    }

    // ------------------------------------------------------------------ K-quants x Q8_K (292 B: d f32 | qs[256] | bsums[16] i16)

    // Q4_K (144 B: d | dmin | scales[12] | qs[128]); chunk c: qs[32c..] low nibbles = sub-block 2c, high = 2c+1.
    // Q5_K (176 B: d | dmin | scales[12] | qh[32] | qs[128]); as Q4_K, bit 2c / 2c+1 of qh[l] adds 16.
    // Σ = d·Σ_j sc_j Σ q·y − dmin·Σ_j m_(j/2) bsum_j ; the integer parts are exact.
    private static unsafe float DotQ4_K(ref byte w, ref byte a, int nb)
    {
        fixed (byte* x = &w) fixed (byte* y = &a) return DotK4Avx2<Q4KWeights>(x, y, nb);
    }

    private static unsafe float DotQ5_K(ref byte w, ref byte a, int nb)
    {
        fixed (byte* x = &w) fixed (byte* y = &a) return DotK4Avx2<Q5KWeights>(x, y, nb);
    }

    /// <summary>Bytes ahead of the current weight block that the AVX2 K-quant kernels prefetch: decode streams every
    /// weight from memory once, and the hardware prefetcher alone does not keep up with kernels this short (as
    /// <see cref="RowKernels"/>' AVX-512 kernels).</summary>
    const int PrefetchAhead = 4096;

    /// <summary>A super-block with Q4_K's 6-bit scales and mins at bytes 4–15 (Q4_K, Q5_K), read as 4 chunks of 64
    /// values: chunk c's low half is sub-block 2c, its high half 2c + 1, as unsigned bytes (0..15 or 0..31).</summary>
    internal interface IK4Block
    {
        /// <summary>Bytes of one super-block.</summary>
        static abstract int Bytes { get; }
        /// <summary>Whether values have a fifth bit (Q5_K: qh[32] at 16, bit j of byte l the 16 of value l of sub-block j).</summary>
        static abstract bool Fifth { get; }
        /// <summary>Chunk <paramref name="chunk"/>'s 32 + 32 values of the super-block at x.</summary>
        static abstract unsafe (Vector256<byte> Lo, Vector256<byte> Hi) Values(byte* x, [ConstantExpected] byte chunk);
    }

    internal readonly struct Q4KWeights : IK4Block
    {
        public static int Bytes => 144;
        public static bool Fifth => false;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe (Vector256<byte> Lo, Vector256<byte> Hi) Values(byte* x, [ConstantExpected] byte chunk)
        {
            var m4 = Vector256.Create((byte)0x0F);
            var bits = Vector256.Load(x + 16 + 32 * chunk);
            return (bits & m4, Vector256.ShiftRightLogical(bits.AsUInt16(), 4).AsByte() & m4);
        }
    }

    internal readonly struct Q5KWeights : IK4Block
    {
        public static int Bytes => 176;
        public static bool Fifth => true;
        /// <summary>Q4_K's nibbles (qs at 48) with bits 2c and 2c + 1 of qh (at 16) as their 16s. Values are 0..31, so
        /// vpmaddubsw's pair sums stay within int16 (2·31·128).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe (Vector256<byte> Lo, Vector256<byte> Hi) Values(byte* x, [ConstantExpected] byte chunk)
        {
            var m4 = Vector256.Create((byte)0x0F);
            var one = Vector256.Create((ushort)0x0101); // bit 0 of each byte: 16-bit shifts move no other bit there
            var qh = Vector256.Load(x + 16).AsUInt16();
            var bits = Vector256.Load(x + 48 + 32 * chunk);
            var lo = (bits & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, (byte)(2 * chunk)) & one, 4).AsByte();
            var hi = (Vector256.ShiftRightLogical(bits.AsUInt16(), 4).AsByte() & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, (byte)(2 * chunk + 1)) & one, 4).AsByte();
            return (lo, hi);
        }
    }

    /// <summary>
    /// Q4_K / Q5_K × Q8_K with AVX2, ggml's way (ggml_vec_dot_q4_K_q8_K): the 6-bit scales and mins unpacked as whole
    /// words to 8 + 8 int16 lanes; each chunk's low (sub-block 2j) and high (2j+1) values go through vpmaddubsw against
    /// the activations (int16 pair sums, ≤ 2·31·128), and vpmaddwd against the broadcast sub-block scale widens them to
    /// int32 — the scale costs no separate multiply. The min term is one vpmaddwd of the 8 mins against the 8 sub-block
    /// sums (pairs of bsums). The integers are those of the scalar kernel.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotK4Avx2<T>(byte* x, byte* y, int nb) where T : IK4Block
    {
        Vector256<float> acc = default;
        Vector128<float> accMin = default;
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Sse.Prefetch0(x + PrefetchAhead + 64);
            Sse.Prefetch0(x + PrefetchAhead + 128);
            K4Step<T>(x, y, ref acc, ref accMin);
        }
        return Vector256.Sum(acc) + Vector128.Sum(accMin);
    }


    /// <summary>One super-block (at x) against one Q8_K block (292 B at y): acc += d·Σ_j sc_j·(q·y)_j as 8 lanes,
    /// accMin += −dmin·m_j·bsum_j as 4 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void K4Step<T>(byte* x, byte* y, ref Vector256<float> acc, ref Vector128<float> accMin) where T : IK4Block
    {
        float yd = *(float*)y;
        float d = yd * Fp16.ToSingle(*(ushort*)x), dmin = -yd * Fp16.ToSingle(*(ushort*)(x + 2));
        var scalesMins = Q4KScalesMins(x); // [8 scales | 8 mins]
        var bsums = Vector256.Load((short*)(y + 260));
        var subSums = Ssse3.HorizontalAdd(bsums.GetLower(), bsums.GetUpper()); // [8] Σ activations per sub-block
        var minTerm = Sse2.MultiplyAddAdjacent(scalesMins.GetUpper(), subSums);
        accMin = Fma.MultiplyAdd(Vector128.Create(dmin), Vector128.ConvertToSingle(minTerm), accMin);
        var sc = scalesMins.GetLower().AsByte();
        var sumi = K4Sums<T>(x, (sbyte*)(y + 4), Vector256.Create(sc, sc));
        acc = Fma.MultiplyAdd(Vector256.Create(d), Vector256.ConvertToSingle(sumi), acc);
    }

    /// <summary>Chunk c of a super-block against its 64 activations: Σ per 8 int32 lanes of sc_2c·(lo·a) + sc_2c+1·(hi·a),
    /// the scales picked from <paramref name="scales"/> (8 int16 in each 128-bit half) by the shuffles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> K4Chunk<T>(byte* x, [ConstantExpected] byte chunk, sbyte* a8, Vector256<byte> scales, Vector256<byte> shufLo, Vector256<byte> shufHi)
        where T : IK4Block
    {
        var (lo, hi) = T.Values(x, chunk);
        var pLo = Avx2.MultiplyAddAdjacent(Avx2.Shuffle(scales, shufLo).AsInt16(), Avx2.MultiplyAddAdjacent(lo, Vector256.Load(a8)));
        var pHi = Avx2.MultiplyAddAdjacent(Avx2.Shuffle(scales, shufHi).AsInt16(), Avx2.MultiplyAddAdjacent(hi, Vector256.Load(a8 + 32)));
        return pLo + pHi;
    }

    /// <summary>Σ_j sc_j · (q·y) of one super-block (at x) against 256 int8 activations, as 8 int32 lanes; the four
    /// chunks written out so that the scale shuffles are constants.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> K4Sums<T>(byte* x, sbyte* a8, Vector256<byte> scales) where T : IK4Block
    {
        var sumi = K4Chunk<T>(x, 0, a8, scales, Vector256.Create((ushort)0x0100).AsByte(), Vector256.Create((ushort)0x0302).AsByte());
        sumi += K4Chunk<T>(x, 1, a8 + 64, scales, Vector256.Create((ushort)0x0504).AsByte(), Vector256.Create((ushort)0x0706).AsByte());
        sumi += K4Chunk<T>(x, 2, a8 + 128, scales, Vector256.Create((ushort)0x0908).AsByte(), Vector256.Create((ushort)0x0B0A).AsByte());
        sumi += K4Chunk<T>(x, 3, a8 + 192, scales, Vector256.Create((ushort)0x0D0C).AsByte(), Vector256.Create((ushort)0x0F0E).AsByte());
        return sumi;
    }

    /// <summary>A Q4_K / Q5_K super-block's 8 six-bit scales and 8 mins as int16 lanes: [scales 0–7 | mins 0–7].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<short> Q4KScalesMins(byte* x)
    {
        // in scalar registers: the decode kernels are bound by their vector operations (RowKernels.Q4KScalesAndMins, the
        // same in eight vector operations, made DotK4RowAvx2 8 % slower)
        uint u0 = *(uint*)(x + 4), u1 = *(uint*)(x + 8), u2 = *(uint*)(x + 12);
        uint sc03 = u0 & 0x3f3f3f3fu;
        uint sc47 = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
        uint mn03 = u1 & 0x3f3f3f3fu;
        uint mn47 = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
        return Avx2.ConvertToVector256Int16(Vector128.Create(sc03, sc47, mn03, mn47).AsByte());
    }

    /// <summary>
    /// Q4_K / Q5_K × Q8_K for <see cref="RowKernels"/> on AVX2 (decode, and a weight row alone): the activation blocks
    /// hold the 8 sums of 32 where ggml's bsums were (<see cref="RowKernels.PrepareQ8KForK4Avx2"/>). Per super-block the
    /// exact integers isum = Σ_j sc_j·Σ q·a (<see cref="K4Sums{T}"/>, its eight lanes summed) and imin = Σ_j m_j·Σ a_j,
    /// then two float chains S = fma(isum, d8·d, S), M = fma(imin, d8·dmin, M), and S − M: the arithmetic of
    /// the eight-row prefill kernel (<see cref="DotK4Rows8Avx2{T}"/>, rows in lanes), so decode and prefill give the same
    /// bits — and of the AVX-512 kernels (RowKernels.Q4K1). Two super-blocks per step share the horizontal sums
    /// (<see cref="K4Integers2"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotK4RowAvx2<T>(byte* x, byte* y, int nb) where T : IK4Block
    {
        var acc = Vector128<float>.Zero; // [S, –, M, –]
        ref float f16 = ref Fp16.TableStart; // Fp16.ToSingle, the table taken once
        int i = 0;
        for (; i + 2 <= nb; i += 2, x += 2 * T.Bytes, y += 2 * 292)
        {
            Sse.Prefetch0(x + PrefetchAhead); Sse.Prefetch0(x + PrefetchAhead + 64); Sse.Prefetch0(x + PrefetchAhead + 128);
            Sse.Prefetch0(x + PrefetchAhead + 192); Sse.Prefetch0(x + PrefetchAhead + 256);
            if (T.Bytes > 160) Sse.Prefetch0(x + PrefetchAhead + 320);
            var f = Vector128.ConvertToSingle(K4Integers2(K4Super<T>(x, y, out var minA), K4Super<T>(x + T.Bytes, y + 292, out var minB), minA, minB));
            acc = Fma.MultiplyAdd(f, K4Scales(x, y, ref f16), acc);
            acc = Fma.MultiplyAdd(Sse3.MoveHighAndDuplicate(f), K4Scales(x + T.Bytes, y + 292, ref f16), acc);
        }
        if (i < nb)
        {
            var sumi = K4Super<T>(x, y, out var min);
            acc = Fma.MultiplyAdd(Vector128.ConvertToSingle(K4Integers2(sumi, sumi, min, min)), K4Scales(x, y, ref f16), acc);
        }
        return acc.ToScalar() - acc.GetElement(2);
    }

    internal static unsafe float DotQ4KRowAvx2(byte* x, byte* y, int nb) => DotK4RowAvx2<Q4KWeights>(x, y, nb);
    internal static unsafe float DotQ5KRowAvx2(byte* x, byte* y, int nb) => DotK4RowAvx2<Q5KWeights>(x, y, nb);

    /// <summary>One super-block (at x) against one activation block (292 B at y, <see cref="RowKernels.PrepareQ8KForK4Avx2"/>):
    /// eight int32 lanes summing to isum, and in <paramref name="imin"/> four summing to imin = Σ_j m_j·(sum of 32)_j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> K4Super<T>(byte* x, byte* y, out Vector128<int> imin) where T : IK4Block
    {
        var scalesMins = Q4KScalesMins(x); // [8 scales | 8 mins]
        imin = Sse2.MultiplyAddAdjacent(scalesMins.GetUpper(), Vector128.Load((short*)(y + 260)));
        var sc = scalesMins.GetLower().AsByte();
        return K4Sums<T>(x, (sbyte*)(y + 4), Vector256.Create(sc, sc));
    }

    /// <summary>[d8·d, –, d8·dmin, –] of a super-block (at x) against its activation block (y).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector128<float> K4Scales(byte* x, byte* y, ref float f16) =>
        Vector128.Create(*(float*)y) * Vector128.Create(Unsafe.Add(ref f16, *(ushort*)x), 0, Unsafe.Add(ref f16, *(ushort*)(x + 2)), 0);

    /// <summary>The exact integers of two super-blocks A and B from their lanes (<see cref="K4Super{T}"/>):
    /// [isum_A, isum_B, imin_A, imin_B]. The imin lanes ride along in the second horizontal add: [mA0 mA1 mB0 mB1 | mA2
    /// mA3 mB2 mB3] pairs up to [mA01 mB01 | mA23 mB23], and the halves' sum finishes all four. Integer sums are exact
    /// in any order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> K4Integers2(Vector256<int> sumiA, Vector256<int> sumiB, Vector128<int> iminA, Vector128<int> iminB)
    {
        var h = Avx2.HorizontalAdd(sumiA, sumiB); // [A01 A23 B01 B23 | A45 A67 B45 B67]
        var m = Vector256.Create(Sse2.UnpackLow(iminA.AsInt64(), iminB.AsInt64()), Sse2.UnpackHigh(iminA.AsInt64(), iminB.AsInt64())).AsInt32();
        var t = Avx2.HorizontalAdd(h, m);         // [A0–3 B0–3 mA01 mB01 | A4–7 B4–7 mA23 mB23]
        return t.GetLower() + t.GetUpper();
    }

    // ---- Q3_K and Q2_K: 16 sub-blocks of 16 values --------------------------------------------------------------
    // Both hold their 2-bit parts as 64 bytes: byte l of chunk j (0, 1) has element 128j + 32s + l in bits 2s..2s+1
    // (s = 0..3), so one 32-byte load and a shift give 32 values of sub-blocks 8j + 2s (bytes 0–15) and 8j + 2s + 1
    // (bytes 16–31): a vpmaddwd against [scale 8j+2s ×8 | scale 8j+2s+1 ×8] scales each 128-bit half by its own.

    /// <summary>vpshufb patterns for pieces s = 0..3: int16 scale 2s of a half (8 int16 lanes, in both 128-bit lanes)
    /// to every lane of the low 128 bits, scale 2s + 1 to the high 128 bits.</summary>
    private static Vector256<byte> PairShuffle0 => Vector256.Create(Vector128.Create((ushort)0x0100), Vector128.Create((ushort)0x0302)).AsByte();
    private static Vector256<byte> PairShuffle1 => Vector256.Create(Vector128.Create((ushort)0x0504), Vector128.Create((ushort)0x0706)).AsByte();
    private static Vector256<byte> PairShuffle2 => Vector256.Create(Vector128.Create((ushort)0x0908), Vector128.Create((ushort)0x0B0A)).AsByte();
    private static Vector256<byte> PairShuffle3 => Vector256.Create(Vector128.Create((ushort)0x0D0C), Vector128.Create((ushort)0x0F0E)).AsByte();

    /// <summary>A Q3_K super-block's 16 six-bit scales minus 32, as int16 lanes [0–7 | 8–15] (ggml's kmask unpacking).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<short> Q3KScales(byte* x)
    {
        // words a0, a1, a2 of scales[12]; word t of the result: (a_{t%2} >> 4·(t/2)) & 0x0f0f0f0f | ((a2 >> 2t) & 0x03030303) << 4
        var a = Vector128.CreateScalar(*(ulong*)(x + 96)).AsUInt32().WithElement(2, *(uint*)(x + 104));
        var low = Avx2.ShiftRightLogicalVariable(Sse2.Shuffle(a, 0b01_00_01_00), Vector128.Create(0u, 0, 4, 4)) & Vector128.Create(0x0f0f0f0fu);
        var high = Avx2.ShiftRightLogicalVariable(Sse2.Shuffle(a, 0b10_10_10_10), Vector128.Create(0u, 2, 4, 6)) & Vector128.Create(0x03030303u);
        var s = (low | Vector128.ShiftLeft(high, 4)).AsSByte() - Vector128.Create((sbyte)32);
        return Avx2.ConvertToVector256Int16(s);
    }

    /// <summary>
    /// Q3_K × Q8_K with AVX2 (110 B: hmask[32] | qs[64] | scales[12] | d): per 32 values one vpmaddubsw of
    /// q' = q + 4·hbit ∈ [0, 7] (ggml_vec_dot_q3_K_q8_K takes two, of the 2-bit part and of the 4 where the bit is
    /// clear), vpmaddwd against the two sub-block scales, and per super-block the −4 of every value taken back as
    /// 4·Σ_j scale_j·bsum_j (one vpmaddwd against the Q8_K bsums). The integers are the scalar kernel's. Used by <see cref="Dot"/> on every AVX2 machine and by
    /// <see cref="RowKernels"/> for decode where there is no AVX-512 (<see cref="DotQ3KAvx512"/> there). Per super-block the exact integer isum = Σ_j scale_j·Σ q·a, then
    /// acc = fma(isum, d_a·d, acc): one float chain per row, so that the sixteen-row prefill kernel
    /// (<see cref="DotQ3KRows16Avx512"/>, rows in lanes) gives these bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ3KAvx2(byte* x, byte* y, int nb)
    {
        float acc = 0;
        for (int i = 0; i < nb; i++, x += 110, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Sse.Prefetch0(x + PrefetchAhead + 64);
            var one = new OneRow { A = (sbyte*)(y + 4) };
            Q3KSums(x, ref one);
            acc = MathF.FusedMultiplyAdd(SumPair(one.S, one.S).ToScalar(), *(float*)y * Fp16.ToSingle(*(ushort*)(x + 108)), acc);
        }
        return acc;
    }

    /// <summary>
    /// <see cref="DotQ3KAvx2"/> with 512-bit vectors (AVX-512BW), for decode on such machines. A value is q − 4·[hmask bit
    /// clear] = q' − 4 with q' = q + 4·[bit set] ∈ [0, 7], so per sub-block Σ (q' − 4)·a = Σ q'·a − 4·bsum (the Q8_K
    /// block's sums of sixteen): one vpmaddubsw per 64 values instead of DotQ3KAvx2's two, and the correction
    /// 4·Σ_j scale_j·bsum_j one vpmaddwd per super-block. qs (64 bytes) in one register as <see cref="DotQ2KAvx512"/>;
    /// hmask with its high nibbles moved down in the upper half, so that bit s of both halves belongs to piece s. Two
    /// super-blocks per step, reduced together. The isum of each super-block is exact, so the results are DotQ3KAvx2's
    /// bit for bit (and the sixteen-row prefill kernel's).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ3KAvx512(byte* x, byte* y, int nb)
    {
        float acc = 0;
        ref float f16 = ref Fp16.TableStart;
        var shuffles = Q2KShuffles512.Create();
        int i = 0;
        for (; i + 2 <= nb; i += 2, x += 220, y += 584)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Sse.Prefetch0(x + PrefetchAhead + 64);
            Sse.Prefetch0(x + PrefetchAhead + 128);
            Sse.Prefetch0(x + PrefetchAhead + 192);
            var f = SumPair(Q3KSuperBlock512(x, y, shuffles), Q3KSuperBlock512(x + 110, y + 292, shuffles));
            acc = MathF.FusedMultiplyAdd(f.ToScalar(), *(float*)y * Unsafe.Add(ref f16, *(ushort*)(x + 108)), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(1), *(float*)(y + 292) * Unsafe.Add(ref f16, *(ushort*)(x + 110 + 108)), acc);
        }
        if (i < nb)
        {
            var s = Q3KSuperBlock512(x, y, shuffles);
            acc = MathF.FusedMultiplyAdd(SumPair(s, s).ToScalar(), *(float*)y * Unsafe.Add(ref f16, *(ushort*)(x + 108)), acc);
        }
        return acc;
    }

    /// <summary>One Q3_K super-block (x) against one Q8_K block (y), 512 bits wide: eight int32 lanes whose sum is the
    /// exact isum = Σ_j scale_j·Σ (q' − 4)·a.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> Q3KSuperBlock512(byte* x, byte* y, in Q2KShuffles512 p)
    {
        var scales = Q3KScales(x);
        var corr = ScalesDotBsums(scales, y + 260); // Σ scale_j·bsum_j, in eight lanes
        var sc = Avx512F.PermuteVar8x64(scales.ToVector512Unsafe().AsInt64(), Vector512.Create(0L, 1, 0, 1, 2, 3, 2, 3)).AsByte();
        var qbits = Vector512.Load(x + 32).AsUInt16();
        var h = Vector256.Load(x).AsUInt16();
        var hm = Avx512F.InsertVector256(h.ToVector512Unsafe(), Vector256.ShiftRightLogical(h, 4), 1); // bit s: piece s in both halves
        sbyte* a = (sbyte*)(y + 4);
        var s = (Q3KPiece512(qbits, 0, Vector512.ShiftLeft(hm, 2), sc, p.S0, a) + Q3KPiece512(qbits, 2, Vector512.ShiftLeft(hm, 1), sc, p.S1, a + 32))
              + (Q3KPiece512(qbits, 4, hm, sc, p.S2, a + 64) + Q3KPiece512(qbits, 6, Vector512.ShiftRightLogical(hm, 1), sc, p.S3, a + 96));
        return (s.GetLower() + s.GetUpper()) - Vector256.ShiftLeft(corr, 2);
    }

    /// <summary>One shift of a Q3_K super-block's 512-bit qs, with the hmask bit of each value already at bit 2 of
    /// <paramref name="high"/>: q' = q | (high &amp; 4), against the activations at a and a + 128, scaled per sixteen.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<int> Q3KPiece512(Vector512<ushort> qbits, [ConstantExpected] byte shift, Vector512<ushort> high, Vector512<byte> sc,
        Vector512<byte> shuffle, sbyte* a)
    {
        var q = (Vector512.ShiftRightLogical(qbits, shift).AsByte() & Vector512.Create((byte)3)) | (high.AsByte() & Vector512.Create((byte)4));
        return Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q, ActivationHalves(a)), Avx512BW.Shuffle(sc, shuffle).AsInt16());
    }

    /// <summary>Where the Q3_K / Q2_K pieces' products go: the 8 int32 lanes of one activation row
    /// (<see cref="OneRow"/>; prefill has its own kernels, eight weight rows in lanes: VecDot.KRows8.cs).</summary>
    internal interface IPieceRows
    {
        /// <summary>Σ scale·(q·a) over 32 values, a at byte offset <paramref name="a"/> of each row's quants.</summary>
        void Add(Vector256<byte> q, Vector256<short> scale, int a);
        /// <summary>Subtracts 4·Σ_j scale_j·bsum_j (the Q8_K block's sums of sixteen, after its 256 quants): Q3_K's
        /// values are added as q' = q − 4 + 4·hbit ∈ [0, 7] and the −4 taken back here, once per super-block.</summary>
        void SubtractFourBsums(Vector256<short> scales);
    }

    internal unsafe struct OneRow : IPieceRows
    {
        public sbyte* A;          // [256] int8 quants
        public Vector256<int> S;  // sums

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Add(Vector256<byte> q, Vector256<short> scale, int a)
            => S += Avx2.MultiplyAddAdjacent(scale, Avx2.MultiplyAddAdjacent(q, Vector256.Load(A + a)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void SubtractFourBsums(Vector256<short> scales)
            => S -= Vector256.ShiftLeft(ScalesDotBsums(scales, (byte*)A + 256), 2);
    }

    /// <summary>Σ sc·(q·y) of one Q3_K super-block (at x) into <paramref name="rows"/>; the eight 32-value pieces
    /// written out, so that every shift and shuffle is a constant.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Q3KSums<TRows>(byte* x, ref TRows rows) where TRows : struct, IPieceRows
    {
        var scales = Q3KScales(x);
        var hmask = Vector256.Load(x);
        var lower = scales.GetLower();
        var sc = Vector256.Create(lower, lower).AsByte();
        var qbits = Vector256.Load(x + 32).AsUInt16();
        var s0 = PairShuffle0;
        var s1 = PairShuffle1;
        var s2 = PairShuffle2;
        var s3 = PairShuffle3;
        Q3KPiece(qbits, 0, hmask, 0, sc, s0, 0, ref rows);
        Q3KPiece(qbits, 2, hmask, 1, sc, s1, 32, ref rows);
        Q3KPiece(qbits, 4, hmask, 2, sc, s2, 64, ref rows);
        Q3KPiece(qbits, 6, hmask, 3, sc, s3, 96, ref rows);
        var upper = scales.GetUpper();
        sc = Vector256.Create(upper, upper).AsByte();
        qbits = Vector256.Load(x + 64).AsUInt16();
        Q3KPiece(qbits, 0, hmask, 4, sc, s0, 128, ref rows);
        Q3KPiece(qbits, 2, hmask, 5, sc, s1, 160, ref rows);
        Q3KPiece(qbits, 4, hmask, 6, sc, s2, 192, ref rows);
        Q3KPiece(qbits, 6, hmask, 7, sc, s3, 224, ref rows);
        rows.SubtractFourBsums(scales);
    }

    /// <summary>32 Q3_K values as q' = q + 4·hbit ∈ [0, 7] (2 bits at <paramref name="shift"/> of qbits, plus 4 where
    /// hmask bit <paramref name="bit"/> is set; the −4 of every value is <see cref="IPieceRows.SubtractFourBsums"/>'s)
    /// against 32 activations at offset a, scaled per 16 by the two sub-block scales the shuffle picks from sc.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Q3KPiece<TRows>(Vector256<ushort> qbits, [ConstantExpected] byte shift, Vector256<byte> hmask, [ConstantExpected] byte bit,
        Vector256<byte> sc, Vector256<byte> shuffle, int a, ref TRows rows) where TRows : struct, IPieceRows
    {
        var low = Vector256.ShiftRightLogical(qbits, shift).AsByte() & Vector256.Create((byte)3);
        var hm = hmask.AsUInt16();
        var high = (bit >= 2 ? Vector256.ShiftRightLogical(hm, (byte)(bit - 2)) : Vector256.ShiftLeft(hm, (byte)(2 - bit))).AsByte() & Vector256.Create((byte)4); // 4 or 0
        rows.Add(low | high, Avx2.Shuffle(sc, shuffle).AsInt16(), a);
    }

    /// <summary>
    /// Q2_K × Q8_K with AVX2, ggml's way (ggml_vec_dot_q2_K_q8_K; 84 B: scales[16] (low nibble scale, high nibble min) |
    /// qs[64] | d | dmin): per 32 values vpmaddubsw of the 2-bit values, vpmaddwd against the two sub-block scales; the
    /// min term one vpmaddwd of the 16 mins against the 16 bsums. The integers are the scalar kernel's.
    /// Per super-block, as ggml's scalar reference: the exact integers isum = Σ_j scale_j·Σ q·a and
    /// imin = Σ_j min_j·bsum_j, then acc = fma(isum, d_a·d, acc) and acc = fma(imin, −d_a·dmin, acc) — one float chain
    /// per row, so that the sixteen-row prefill kernel (<see cref="DotQ2KRows16Avx512"/>, rows in lanes) gives these bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ2KAvx2(byte* x, byte* y, int nb)
    {
        float acc = 0;
        for (int i = 0; i < nb; i++, x += 84, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Sse.Prefetch0(x + PrefetchAhead + 64);
            float yd = *(float*)y;
            var (scales, mins) = Q2KScalesMins(x);
            var minProd = Avx2.MultiplyAddAdjacent(mins, Vector256.Load((short*)(y + 260)));
            var one = new OneRow { A = (sbyte*)(y + 4) };
            Q2KSums(x, scales, ref one);
            acc = Q2KChain(SumPair(one.S, minProd), yd, x, acc);
        }
        return acc;
    }

    /// <summary>A Q2_K super-block's two float steps (ggml's): acc = fma(isum, d_a·d, acc), then fma(imin, −d_a·dmin, acc),
    /// with [isum, imin] the first two lanes of <paramref name="sm"/> and d, dmin at bytes 80 and 82 of the block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe float Q2KChain(Vector128<float> sm, float yd, byte* x, float acc)
    {
        acc = MathF.FusedMultiplyAdd(sm.ToScalar(), yd * Fp16.ToSingle(*(ushort*)(x + 80)), acc);
        return MathF.FusedMultiplyAdd(sm.GetElement(1), -yd * Fp16.ToSingle(*(ushort*)(x + 82)), acc);
    }

    /// <summary>
    /// <see cref="DotQ2KAvx2"/> with 512-bit vectors (AVX-512BW), for decode on such machines: qs (64 bytes) in one
    /// register, so each of the four shifts gives 64 values (elements 32s … 32s+31 and 128+32s …), against the two
    /// matching 32-byte runs of activations, and the scales [0–7, 0–7, 8–15, 8–15] picked in-lane as there. Two
    /// super-blocks per step, their four integers (isum, imin of each) reduced together (<see cref="SumQuad"/>); the
    /// integers are exact in any order, so isum, imin and the two FMAs per super-block in order — the results — are
    /// DotQ2KAvx2's, bit for bit (and so the sixteen-row prefill kernel's).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ2KAvx512(byte* x, byte* y, int nb)
    {
        float acc = 0;
        ref float f16 = ref Fp16.TableStart;
        var shuffles = Q2KShuffles512.Create();
        int i = 0;
        for (; i + 2 <= nb; i += 2, x += 168, y += 584)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Sse.Prefetch0(x + PrefetchAhead + 64);
            Sse.Prefetch0(x + PrefetchAhead + 128);
            var (sa, ma) = Q2KSuperBlock512(x, y, shuffles);
            var (sb, mb) = Q2KSuperBlock512(x + 84, y + 292, shuffles);
            var f = SumQuad(sa, ma, sb, mb); // [isum a, imin a, isum b, imin b]
            float ya = *(float*)y, yb = *(float*)(y + 292);
            acc = MathF.FusedMultiplyAdd(f.ToScalar(), ya * Unsafe.Add(ref f16, *(ushort*)(x + 80)), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(1), -ya * Unsafe.Add(ref f16, *(ushort*)(x + 82)), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(2), yb * Unsafe.Add(ref f16, *(ushort*)(x + 84 + 80)), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(3), -yb * Unsafe.Add(ref f16, *(ushort*)(x + 84 + 82)), acc);
        }
        if (i < nb)
        {
            var (s, m) = Q2KSuperBlock512(x, y, shuffles);
            acc = Q2KChain(SumPair(s, m), *(float*)y, x, acc);
        }
        return acc;
    }

    /// <summary>One Q2_K super-block (x) against one Q8_K block (y), 512 bits wide: eight int32 lanes whose sum is isum =
    /// Σ_j scale_j·Σ q·a, and eight whose sum is imin = Σ_j min_j·bsum_j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe (Vector256<int> Sum, Vector256<int> Min) Q2KSuperBlock512(byte* x, byte* y, in Q2KShuffles512 p)
    {
        var m3 = Vector512.Create((byte)3);
        var (scales, mins) = Q2KScalesMins(x);
        var minProd = Avx2.MultiplyAddAdjacent(mins, Vector256.Load((short*)(y + 260)));
        var sc = Avx512F.PermuteVar8x64(scales.ToVector512Unsafe().AsInt64(), Vector512.Create(0L, 1, 0, 1, 2, 3, 2, 3)).AsByte();
        var qbits = Vector512.Load(x + 16).AsUInt16();
        sbyte* a = (sbyte*)(y + 4);
        var s = (Q2KPiece512(qbits, 0, m3, sc, p.S0, a) + Q2KPiece512(qbits, 2, m3, sc, p.S1, a + 32))
              + (Q2KPiece512(qbits, 4, m3, sc, p.S2, a + 64) + Q2KPiece512(qbits, 6, m3, sc, p.S3, a + 96));
        return (s.GetLower() + s.GetUpper(), minProd);
    }

    /// <summary>One shift of a Q2_K super-block's 512-bit qs (values at bits shift, shift + 1 of each byte) against the
    /// activations at a (first half) and a + 128 (second half): sixteen int32 lanes of scale·(q·a).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<int> Q2KPiece512(Vector512<ushort> qbits, [ConstantExpected] byte shift, Vector512<byte> m3, Vector512<byte> sc,
        Vector512<byte> shuffle, sbyte* a)
    {
        var q = Vector512.ShiftRightLogical(qbits, shift).AsByte() & m3;
        return Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(q, ActivationHalves(a)), Avx512BW.Shuffle(sc, shuffle).AsInt16());
    }

    /// <summary><see cref="PairShuffle0"/> … <see cref="PairShuffle3"/> in both 256-bit halves, made once before a
    /// kernel's loop (built inside it, the JIT assembled them anew every piece).</summary>
    private readonly struct Q2KShuffles512
    {
        public readonly Vector512<byte> S0, S1, S2, S3;
        Q2KShuffles512(Vector512<byte> s0, Vector512<byte> s1, Vector512<byte> s2, Vector512<byte> s3) { S0 = s0; S1 = s1; S2 = s2; S3 = s3; }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Q2KShuffles512 Create() => new(Vector512.Create(PairShuffle0, PairShuffle0), Vector512.Create(PairShuffle1, PairShuffle1),
            Vector512.Create(PairShuffle2, PairShuffle2), Vector512.Create(PairShuffle3, PairShuffle3));
    }

    /// <summary>The 32 activations at a and the 32 at a + 128 in one register: a load, then the second half inserted from
    /// memory (no dependence on the register's previous contents, which Vector512.Create(lo, hi) compiled to).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector512<sbyte> ActivationHalves(sbyte* a)
        => Avx512F.InsertVector256(Vector256.Load(a).ToVector512Unsafe(), Vector256.Load(a + 128), 1);

    /// <summary>[Σ a, Σ b, Σ c, Σ d] as floats: four eight-lane integer sums reduced together (exact), then converted.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> SumQuad(Vector256<int> a, Vector256<int> b, Vector256<int> c, Vector256<int> d)
    {
        var v = Avx2.HorizontalAdd(Avx2.HorizontalAdd(a, b), Avx2.HorizontalAdd(c, d)); // [a0–3 b0–3 c0–3 d0–3 | a4–7 b4–7 c4–7 d4–7]
        return Vector128.ConvertToSingle(v.GetLower() + v.GetUpper());
    }

    /// <summary>[Σ a, Σ b, …] as floats: two eight-lane integer sums reduced together (exact), then converted — one
    /// reduction for a super-block's sums and mins (Q2_K), for two rows' sums (Q3_K, the pair kernels of Q6_K and IQ4_XS) or
    /// for two super-blocks of one row (their one-row kernels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> SumPair(Vector256<int> a, Vector256<int> b)
    {
        var v = Avx2.HorizontalAdd(a, b); // [a01 a23 b01 b23 | a45 a67 b45 b67]
        var w = v.GetLower() + v.GetUpper();
        return Vector128.ConvertToSingle(Ssse3.HorizontalAdd(w, w));
    }

    /// <summary>A Q2_K super-block's 16 four-bit scales and 16 mins as int16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe (Vector256<short> Scales, Vector256<short> Mins) Q2KScalesMins(byte* x)
    {
        var m4 = Vector128.Create((byte)0x0F);
        var both = Vector128.Load(x);
        return (Avx2.ConvertToVector256Int16(both & m4), Avx2.ConvertToVector256Int16(Vector128.ShiftRightLogical(both.AsUInt16(), 4).AsByte() & m4));
    }

    /// <summary>Σ sc · (q·y) of one Q2_K super-block into <paramref name="rows"/>; the eight pieces written out as
    /// <see cref="Q3KSums{TRows}"/>'s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Q2KSums<TRows>(byte* x, Vector256<short> scales, ref TRows rows) where TRows : struct, IPieceRows
    {
        var lower = scales.GetLower();
        var sc = Vector256.Create(lower, lower).AsByte();
        var qbits = Vector256.Load(x + 16).AsUInt16();
        var s0 = PairShuffle0;
        var s1 = PairShuffle1;
        var s2 = PairShuffle2;
        var s3 = PairShuffle3;
        Q2KPiece(qbits, 0, sc, s0, 0, ref rows);
        Q2KPiece(qbits, 2, sc, s1, 32, ref rows);
        Q2KPiece(qbits, 4, sc, s2, 64, ref rows);
        Q2KPiece(qbits, 6, sc, s3, 96, ref rows);
        var upper = scales.GetUpper();
        sc = Vector256.Create(upper, upper).AsByte();
        qbits = Vector256.Load(x + 48).AsUInt16();
        Q2KPiece(qbits, 0, sc, s0, 128, ref rows);
        Q2KPiece(qbits, 2, sc, s1, 160, ref rows);
        Q2KPiece(qbits, 4, sc, s2, 192, ref rows);
        Q2KPiece(qbits, 6, sc, s3, 224, ref rows);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Q2KPiece<TRows>(Vector256<ushort> qbits, [ConstantExpected] byte shift, Vector256<byte> sc, Vector256<byte> shuffle, int a, ref TRows rows)
        where TRows : struct, IPieceRows
        => rows.Add(Vector256.ShiftRightLogical(qbits, shift).AsByte() & Vector256.Create((byte)3), Avx2.Shuffle(sc, shuffle).AsInt16(), a);

    // Q6_K (210 B: ql[128] | qh[64] | scales[16] int8 | d). Half h: ql[64h + l] low/high nibble -> elements l / l+64,
    // ql[64h + 32 + l] -> l+32 / l+96, qh[32h + l] bit pairs 0,2,4,6 -> l, l+32, l+64, l+96; value q - 32.
    private static unsafe float DotQ6_K(ref byte w, ref byte a, int nb)
    {
        fixed (byte* x = &w) fixed (byte* y = &a) return DotQ6KAvx2(x, y, nb);
    }

    /// <summary>
    /// Q6_K × Q8_K with AVX2: 6-bit values q (0..63) built from ql nibbles and qh bit pairs, vpmaddubsw q·y (a pair at
    /// most 2·63·128, int16), then vpmaddwd against the two sub-block scales of each 32 values (sign-extended int8);
    /// the −32 offset once per super-block as 32·Σ_j scale_j·bsum_j against the Q8_K bsums (<see cref="Q6KOffset"/>;
    /// ggml_vec_dot_q6_K_q8_K subtracts a second vpmaddubsw of 32·y per 32 values). Per super-block the exact integer
    /// isum (the eight lanes summed, two super-blocks' at once), then one float chain S = fma(isum, d8·d, S): the
    /// arithmetic of the eight-row prefill kernel (<see cref="DotQ6KRows8Avx2"/>, rows in lanes) and of the AVX-512
    /// kernels (RowKernels.Q6K1), so all of them give the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ6KAvx2(byte* x, byte* y, int nb)
    {
        float acc = 0;
        ref float f16 = ref Fp16.TableStart; // Fp16.ToSingle, the table taken once
        int i = 0;
        for (; i + 2 <= nb; i += 2, x += 420, y += 584)
        {
            for (int l = 0; l < 448; l += 64) Sse.Prefetch0(x + PrefetchAhead + l);
            var h = Avx2.HorizontalAdd(Q6KSums(x, y), Q6KSums(x + 210, y + 292)); // [A01 A23 B01 B23 | A45 A67 B45 B67]
            var t = Avx2.HorizontalAdd(h, h);
            var f = Vector128.ConvertToSingle(t.GetLower() + t.GetUpper());   // [isum A, isum B, …]
            acc = MathF.FusedMultiplyAdd(f.ToScalar(), *(float*)y * Unsafe.Add(ref f16, *(ushort*)(x + 208)), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(1), *(float*)(y + 292) * Unsafe.Add(ref f16, *(ushort*)(x + 210 + 208)), acc);
        }
        if (i < nb)
        {
            var h = Avx2.HorizontalAdd(Q6KSums(x, y), Vector256<int>.Zero);
            var t = Avx2.HorizontalAdd(h, h);
            acc = MathF.FusedMultiplyAdd(Vector128.ConvertToSingle(t.GetLower() + t.GetUpper()).ToScalar(), *(float*)y * Unsafe.Add(ref f16, *(ushort*)(x + 208)), acc);
        }
        return acc;
    }

    /// <summary>One Q6_K super-block (210 B at x) against one Q8_K block (292 B at y): eight int32 lanes summing to the
    /// exact isum = Σ sc·(q − 32)·y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> Q6KSums(byte* x, byte* y)
    {
        var scales = Vector128.Load(x + 192);
        return Q6KHalf(x, y, scales, 0) + Q6KHalf(x, y, scales, 1) - Q6KOffset(scales, y);
    }

    /// <summary>Half h of <see cref="Q6KSums"/> (values 128h … 128h + 127), written out per half so that the scale
    /// shuffles are constants (a loop over h was left rolled when two super-blocks were inlined per step, and built
    /// them with multiplies).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> Q6KHalf(byte* x, byte* y, Vector128<byte> scales, [ConstantExpected] int h)
    {
        byte* ql = x + 64 * h, qh = x + 128 + 32 * h;
        sbyte* a8 = (sbyte*)(y + 4 + 128 * h);
        var bits1 = Vector256.Load(ql).AsUInt16();
        var bits2 = Vector256.Load(ql + 32).AsUInt16();
        var bitsH = Vector256.Load(qh).AsUInt16();
        var p0 = Avx2.MultiplyAddAdjacent(Q6KQuants(bits1, bitsH, 0, 0), Vector256.Load(a8));
        var p1 = Avx2.MultiplyAddAdjacent(Q6KQuants(bits2, bitsH, 0, 2), Vector256.Load(a8 + 32));
        var p2 = Avx2.MultiplyAddAdjacent(Q6KQuants(bits1, bitsH, 4, 4), Vector256.Load(a8 + 64));
        var p3 = Avx2.MultiplyAddAdjacent(Q6KQuants(bits2, bitsH, 4, 6), Vector256.Load(a8 + 96));
        int s = 8 * h;
        return (Avx2.MultiplyAddAdjacent(ScalePair16(scales, s), p0) + Avx2.MultiplyAddAdjacent(ScalePair16(scales, s + 2), p1))
             + (Avx2.MultiplyAddAdjacent(ScalePair16(scales, s + 4), p2) + Avx2.MultiplyAddAdjacent(ScalePair16(scales, s + 6), p3));
    }

    /// <summary>32·Σ_j scale_j·bsum_j of a Q6_K super-block (int8 scales) against a Q8_K block (bsums[16] int16 at
    /// byte 260), in eight int32 lanes (lane k: sub-blocks 2k and 2k + 1): the −32 of every value, taken once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> Q6KOffset(Vector128<byte> scales, byte* y)
        => Vector256.ShiftLeft(ScalesDotBsums(Avx2.ConvertToVector256Int16(scales.AsSByte()), y + 260), 5);

    /// <summary>Σ_j scale_j·bsum_j over a super-block's sixteen sub-blocks, in eight int32 lanes (lane k: sub-blocks 2k
    /// and 2k + 1): int16 scales against the Q8_K block's bsums[16] (int16) at <paramref name="bsums"/>. The offset terms
    /// of Q3_K (−4) and Q6_K (−32), taken once per super-block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe Vector256<int> ScalesDotBsums(Vector256<short> scales, byte* bsums)
        => Avx2.MultiplyAddAdjacent(scales, Vector256.Load((short*)bsums));

    /// <summary>32 six-bit quants (0..63) of a Q6_K half: the nibble of <paramref name="ql"/> at bit
    /// <paramref name="nibbleShift"/> (0 low, 4 high) with the qh bit pair at <paramref name="pairShift"/> as bits 4–5.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Q6KQuants(Vector256<ushort> ql, Vector256<ushort> qh, int nibbleShift, int pairShift)
        => (Vector256.ShiftRightLogical(ql, nibbleShift).AsByte() & Vector256.Create((byte)0x0F))
           | Vector256.ShiftLeft((Vector256.ShiftRightLogical(qh, pairShift).AsByte() & Vector256.Create((byte)0x03)).AsUInt16(), 4).AsByte();

    /// <summary>Int8 scales k and k+1 sign-extended to int16: lanes 0–7 = scales[k], 8–15 = scales[k+1].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<short> ScalePair16(Vector128<byte> scales, int k)
        => Avx2.ConvertToVector256Int16(Ssse3.Shuffle(scales, Vector128.Create((ulong)(0x0101010101010101ul * (ulong)k), 0x0101010101010101ul * (ulong)(k + 1)).AsByte()).AsSByte());

}
