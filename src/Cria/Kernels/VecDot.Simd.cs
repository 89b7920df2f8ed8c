using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// SIMD paths. Integer block sums are exact (same integers as the scalar kernels); only the float accumulation
// order differs (per-lane float accumulators, FMA), so Dot == DotScalar up to float rounding of the sum.
// Quantized kernels use 256-bit AVX2 with AVX-VNNI (vpdpbusd) when present; .NET 10 exposes no 512-bit VNNI for
// Zen 5, and a 32-element block is exactly one 256-bit register. Without AVX2 they fall back to the scalar kernels.
public static partial class VecDot
{
    /// <summary>Fast dot product; equals <see cref="DotScalar"/> up to float summation order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public static float Dot(GgmlType weightType, ReadOnlySpan<byte> weightRow, ReadOnlySpan<byte> activationRow, int n)
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
        if (Avx2.IsSupported)
        {
            switch (weightType)
            {
                case GgmlType.Q8_0: return DotQ8_0(ref w, ref a, n / 32);
                case GgmlType.Q4_0: return DotQ4_0(ref w, ref a, n / 32);
                case GgmlType.Q4_K: return DotQ4_K(ref w, ref a, n / 256);
                case GgmlType.Q5_K: return DotQ5_K(ref w, ref a, n / 256);
                case GgmlType.Q6_K: return DotQ6_K(ref w, ref a, n / 256);
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HalfAt(ref byte p, int offset) => Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(ref Unsafe.Add(ref p, offset)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Load256(ref byte p, int offset) => Vector256.LoadUnsafe(ref p, (nuint)offset);

    // ------------------------------------------------------------------ 32-element blocks x Q8_0

    // Q8_0 (34 B: d f16 | qs[32] int8) x Q8_0: per block 8 int32 lanes, converted and FMA'd with d_x·d_y.
    private static float DotQ8_0(ref byte w, ref byte a, int nb)
    {
        Vector256<float> acc0 = default, acc1 = default;
        int ib = 0;
        for (; ib + 2 <= nb; ib += 2)
        {
            int o0 = ib * 34, o1 = o0 + 34;
            Vector256<int> p0 = DotI8I8(Load256(ref w, o0 + 2).AsSByte(), Load256(ref a, o0 + 2).AsSByte());
            Vector256<int> p1 = DotI8I8(Load256(ref w, o1 + 2).AsSByte(), Load256(ref a, o1 + 2).AsSByte());
            acc0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(p0), Vector256.Create(HalfAt(ref w, o0) * HalfAt(ref a, o0)), acc0);
            acc1 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(p1), Vector256.Create(HalfAt(ref w, o1) * HalfAt(ref a, o1)), acc1);
        }
        for (; ib < nb; ib++)
        {
            int o = ib * 34;
            Vector256<int> p = DotI8I8(Load256(ref w, o + 2).AsSByte(), Load256(ref a, o + 2).AsSByte());
            acc0 = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(p), Vector256.Create(HalfAt(ref w, o) * HalfAt(ref a, o)), acc0);
        }
        return Vector256.Sum(acc0 + acc1);
    }

    // Q4_0 (18 B: d f16 | qs[16], element j = low nibble of qs[j], j+16 = high nibble, value q-8) x Q8_0 (34 B).
    private static float DotQ4_0(ref byte w, ref byte a, int nb)
    {
        Vector256<float> acc = default;
        Vector128<byte> m4 = Vector128.Create((byte)0x0F);
        Vector256<sbyte> eight = Vector256.Create((sbyte)8);
        for (int ib = 0; ib < nb; ib++)
        {
            int ow = ib * 18, oa = ib * 34;
            Vector128<byte> q = Vector128.LoadUnsafe(ref w, (nuint)(ow + 2));
            Vector256<sbyte> x = Vector256.Create(q & m4, Vector128.ShiftRightLogical(q, 4) & m4).AsSByte() - eight;
            Vector256<int> p = DotI8I8(x, Load256(ref a, oa + 2).AsSByte());
            acc = Vector256.FusedMultiplyAdd(Vector256.ConvertToSingle(p), Vector256.Create(HalfAt(ref w, ow) * HalfAt(ref a, oa)), acc);
        }
        return Vector256.Sum(acc);
    }

    // ------------------------------------------------------------------ K-quants x Q8_K (292 B: d f32 | qs[256] | bsums[16] i16)

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Q8KD(ref byte y) => Unsafe.ReadUnaligned<float>(ref y);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int Q8KBSum(ref byte y, int j) => Unsafe.ReadUnaligned<short>(ref Unsafe.Add(ref y, 260 + 2 * j));

    // Unpacks the 8 six-bit scales and mins of a Q4_K/Q5_K block (get_scale_min_k4).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScalesMinsK4(ref byte s, Span<int> sc, Span<int> mn)
    {
        for (int j = 0; j < 4; j++)
        {
            sc[j] = Unsafe.Add(ref s, j) & 63;
            mn[j] = Unsafe.Add(ref s, j + 4) & 63;
        }
        for (int j = 4; j < 8; j++)
        {
            sc[j] = (Unsafe.Add(ref s, j + 4) & 0xF) | ((Unsafe.Add(ref s, j - 4) >> 6) << 4);
            mn[j] = (Unsafe.Add(ref s, j + 4) >> 4) | ((Unsafe.Add(ref s, j) >> 6) << 4);
        }
    }

    // Q4_K (144 B: d | dmin | scales[12] | qs[128]); chunk c: qs[32c..] low nibbles = sub-block 2c, high = 2c+1.
    // Σ = d·Σ_j sc_j Σ q·y − dmin·Σ_j m_(j/2) bsum_j ; the integer parts are exact.
    private static float DotQ4_K(ref byte w, ref byte a, int nb) => DotK4(ref w, ref a, nb, five: false);

    // Q5_K (176 B: d | dmin | scales[12] | qh[32] | qs[128]); as Q4_K, bit 2c / 2c+1 of qh[l] adds 16.
    private static float DotQ5_K(ref byte w, ref byte a, int nb) => DotK4(ref w, ref a, nb, five: true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotK4(ref byte w, ref byte a, int nb, bool five)
    {
        int bs = five ? 176 : 144, qsOff = five ? 48 : 16;
        Span<int> sc = stackalloc int[8];
        Span<int> mn = stackalloc int[8];
        Vector256<byte> m4 = Vector256.Create((byte)0x0F);
        Vector256<byte> one = Vector256.Create((byte)1);
        float sumf = 0;
        for (int i = 0; i < nb; i++)
        {
            ref byte x = ref Unsafe.Add(ref w, i * bs);
            ref byte y = ref Unsafe.Add(ref a, i * 292);
            ScalesMinsK4(ref Unsafe.Add(ref x, 4), sc, mn);
            int summ = 0;
            for (int j = 0; j < 16; j++) summ += Q8KBSum(ref y, j) * mn[j >> 1];

            Vector256<byte> qh = five ? Load256(ref x, 16) : default;
            Vector256<int> acc = default;
            for (int c = 0; c < 4; c++)
            {
                Vector256<byte> q = Load256(ref x, qsOff + 32 * c);
                Vector256<byte> lo = q & m4;
                Vector256<byte> hi = Vector256.ShiftRightLogical(q, 4) & m4;
                if (five)
                {
                    lo |= Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2 * c) & one, 4);
                    hi |= Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2 * c + 1) & one, 4);
                }
                Vector256<int> p0 = DotU8I8(Vector256<int>.Zero, lo, Load256(ref y, 4 + 64 * c).AsSByte());
                Vector256<int> p1 = DotU8I8(Vector256<int>.Zero, hi, Load256(ref y, 4 + 64 * c + 32).AsSByte());
                acc += p0 * sc[2 * c] + p1 * sc[2 * c + 1];
            }
            int sumi = Vector256.Sum(acc);
            float yd = Q8KD(ref y);
            float d = HalfAt(ref x, 0) * yd, dmin = HalfAt(ref x, 2) * yd;
            sumf += d * sumi - dmin * summ;
        }
        return sumf;
    }

    // Q6_K (210 B: ql[128] | qh[64] | scales[16] int8 | d). Half h: ql[64h + l] low/high nibble -> elements l / l+64,
    // ql[64h + 32 + l] -> l+32 / l+96, qh[32h + l] bit pairs 0,2,4,6 -> l, l+32, l+64, l+96; value q - 32.
    // The -32 offset is folded out with the activation block sums: Σ sc·(q-32)·y = Σ sc·q·y − 32·Σ sc·bsum.
    private static float DotQ6_K(ref byte w, ref byte a, int nb)
    {
        Vector256<byte> m4 = Vector256.Create((byte)0x0F);
        Vector256<byte> m2 = Vector256.Create((byte)0x03);
        float sumf = 0;
        for (int i = 0; i < nb; i++)
        {
            ref byte x = ref Unsafe.Add(ref w, i * 210);
            ref byte y = ref Unsafe.Add(ref a, i * 292);
            ref sbyte sc = ref Unsafe.As<byte, sbyte>(ref Unsafe.Add(ref x, 192));
            int sumBias = 0;
            for (int j = 0; j < 16; j++) sumBias += Unsafe.Add(ref sc, j) * Q8KBSum(ref y, j);

            Vector256<int> acc = default;
            for (int h = 0; h < 2; h++)
            {
                Vector256<byte> ql0 = Load256(ref x, 64 * h), ql1 = Load256(ref x, 64 * h + 32), qh = Load256(ref x, 128 + 32 * h);
                Vector256<byte> v0 = (ql0 & m4) | Vector256.ShiftLeft(qh & m2, 4);
                Vector256<byte> v1 = (ql1 & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 2) & m2, 4);
                Vector256<byte> v2 = (Vector256.ShiftRightLogical(ql0, 4) & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 4) & m2, 4);
                Vector256<byte> v3 = (Vector256.ShiftRightLogical(ql1, 4) & m4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(qh, 6) & m2, 4);
                int yo = 4 + 128 * h, so = 8 * h;
                acc += DotU8I8(default, v0, Load256(ref y, yo).AsSByte()) * ScalePair(ref sc, so);
                acc += DotU8I8(default, v1, Load256(ref y, yo + 32).AsSByte()) * ScalePair(ref sc, so + 2);
                acc += DotU8I8(default, v2, Load256(ref y, yo + 64).AsSByte()) * ScalePair(ref sc, so + 4);
                acc += DotU8I8(default, v3, Load256(ref y, yo + 96).AsSByte()) * ScalePair(ref sc, so + 6);
            }
            int sumi = Vector256.Sum(acc) - 32 * sumBias;
            sumf += HalfAt(ref x, 208) * Q8KD(ref y) * sumi;
        }
        return sumf;
    }

    // Lanes 0-3 of a vpdpbusd result cover bytes 0-15 (one 16-element sub-block), lanes 4-7 bytes 16-31 (the next).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ScalePair(ref sbyte sc, int j)
        => Vector256.Create(Vector128.Create((int)Unsafe.Add(ref sc, j)), Vector128.Create((int)Unsafe.Add(ref sc, j + 1)));
}
