using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cria.Kernels;

/// <summary>
/// The 32-value legacy types — Q4_0, Q4_1, Q5_0, Q5_1 — eight weight rows at a time (AVX2), for
/// <see cref="RowKernels"/>. A block is d (F16), for Q4_1/Q5_1 a min m (F16), for Q5_0/Q5_1 32 fifth bits qh, then
/// qs[16]: element j is the low nibble of qs[j] (plus bit j of qh · 16), element j + 16 the high nibble (plus bit
/// j + 16). Values: Q4_0 q − 8, Q5_0 q − 16, Q4_1 / Q5_1 d·q + m.
///
/// A one-row kernel spends most of its instructions per 32 weights on widening, the sign trick, a horizontal
/// reduction and the scale. Eight rows at once share all of that: the nibbles of rows k and k + 4 sit in one 256-bit
/// register, so an unsigned <c>vpmaddubsw</c> against the activation block's halves gives both rows' products; three
/// <c>vphaddd</c> leave row k's block sum in lane k; the −8 / −16 offset is one subtraction of 8·Σa / 16·Σa (the
/// activation's, shared by every row); the min term is one FMA of the eight m against s = d_a·Σa; the eight scales are
/// one vector; one FMA per block carries eight rows.
///
/// Activations (<see cref="RowKernels.ActivationRowBytes"/> for these types): Q8_0's split layout — [nb] float scales
/// (the F16-rounded d), [nb, 32] int8 quants — then [nb] int32 Σ quants and [nb] float s (ggml's block_q8_1 s: the F16
/// rounding of Σ quants · d).
///
/// Every row's result is fixed by that row alone: per block the exact integer Σ q·a (offset included), then
/// acc = fma(float(Σ), d_w·d_a, acc) (and for a min, acc = fma(m, s, acc)) in block order — the scalar reference's
/// order (ggml's sumf += sumi·d_w·d_a + m·s) with fewer roundings. A group of fewer than eight rows repeats its last row
/// in the unused lanes, so the decode, prefill and one-row paths give the same bits for any grouping of rows.
/// </summary>
public static partial class VecDot
{
    /// <summary>What the eight-row kernels need of a legacy block type (constants, so each instantiation keeps only
    /// its own steps).</summary>
    internal interface ILegacyBlock
    {
        /// <summary>Bytes of one block.</summary>
        static abstract int Bytes { get; }
        /// <summary>Offset of qs[16] in the block.</summary>
        static abstract int Qs { get; }
        /// <summary>Offset of the F16 min m, or 0 for none (Q4_0, Q5_0).</summary>
        static abstract int Min { get; }
        /// <summary>Offset of the 32 fifth bits qh, or 0 for none (Q4_0, Q4_1).</summary>
        static abstract int HighBits { get; }
        /// <summary>log2 of the value offset for types without a min: Q4_0 3 (q − 8), Q5_0 4 (q − 16).</summary>
        static abstract int OffsetShift { get; }
    }

    internal readonly struct Q40Block : ILegacyBlock
    {
        public static int Bytes => 18; public static int Qs => 2; public static int Min => 0; public static int HighBits => 0; public static int OffsetShift => 3;
    }

    internal readonly struct Q41Block : ILegacyBlock
    {
        public static int Bytes => 20; public static int Qs => 4; public static int Min => 2; public static int HighBits => 0; public static int OffsetShift => 0;
    }

    internal readonly struct Q50Block : ILegacyBlock
    {
        public static int Bytes => 22; public static int Qs => 6; public static int Min => 0; public static int HighBits => 2; public static int OffsetShift => 4;
    }

    internal readonly struct Q51Block : ILegacyBlock
    {
        public static int Bytes => 24; public static int Qs => 8; public static int Min => 2; public static int HighBits => 4; public static int OffsetShift => 0;
    }

    /// <summary>Rows [0, rows) (rows ≤ 8, row k at w + k·rowBytes) against one activation row x:
    /// y[k] = dot(row k, x). The decode kernel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotRows8Avx2<T>(byte* w, long rowBytes, int rows, byte* x, int nb, float* y) where T : ILegacyBlock
    {
        Rows8(w, rowBytes, rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3, out byte* w4, out byte* w5, out byte* w6, out byte* w7);
        float* ad = (float*)x;                     // [nb] activation scales
        byte* aq = x + 4 * nb;                      // [nb, 32] activation quants
        int* asum = (int*)(x + 36 * nb);            // [nb] Σ quants
        float* s = (float*)(x + 40 * nb);           // [nb] s = F16(d·Σ quants)
        var acc = Vector256<float>.Zero;            // lane k: row k
        byte* next = w + 8 * rowBytes;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * T.Bytes;
            // the next group's eight rows (contiguous after this group's), 8 · Bytes per block of this one
            byte* pf = next + 8 * o;
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128);
            if (T.Bytes > 20) Sse.Prefetch0(pf + 192);
            Unpack<T>(w0 + o, w4 + o, out var l04, out var h04);
            Unpack<T>(w1 + o, w5 + o, out var l15, out var h15);
            Unpack<T>(w2 + o, w6 + o, out var l26, out var h26);
            Unpack<T>(w3 + o, w7 + o, out var l37, out var h37);
            var alo = Avx2.BroadcastVector128ToVector256(aq + 32 * ib).AsSByte();      // a[0..16) twice
            var ahi = Avx2.BroadcastVector128ToVector256(aq + 32 * ib + 16).AsSByte(); // a[16..32) twice
            var sums = BlockSums(l04, h04, l15, h15, l26, h26, l37, h37, alo, ahi);
            if (T.Min == 0) sums -= Vector256.Create(asum[ib] << T.OffsetShift);
            var d = Scales8(w0 + o, w1 + o, w2 + o, w3 + o, w4 + o, w5 + o, w6 + o, w7 + o);
            acc = Fma.MultiplyAdd(Vector256.ConvertToSingle(sums), d * Vector256.Create(ad[ib] * Pow2To112), acc);
            if (T.Min != 0)
                acc = Fma.MultiplyAdd(Scales8(w0 + o + T.Min, w1 + o + T.Min, w2 + o + T.Min, w3 + o + T.Min, w4 + o + T.Min,
                    w5 + o + T.Min, w6 + o + T.Min, w7 + o + T.Min), Vector256.Create(s[ib] * Pow2To112), acc);
        }
        Store(acc, rows, y);
    }

    /// <summary>Rows [0, rows) (rows ≤ 8) against B ≤ <see cref="RowKernels.Tile"/> activation rows (x + b·xStride):
    /// y[b·yStride + k] = dot(row k, x_b), each the bits of the decode kernel. The nibbles and scales of a block are
    /// unpacked once for all B rows; <paramref name="acc"/> holds B accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotRows8Avx2<T>(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc) where T : ILegacyBlock
    {
        Rows8(w, rowBytes, rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3, out byte* w4, out byte* w5, out byte* w6, out byte* w7);
        for (int b = 0; b < B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * T.Bytes;
            byte* pf = next + 8 * o; // as in the decode kernel: the next group, for the first tile
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128);
            if (T.Bytes > 20) Sse.Prefetch0(pf + 192);
            Unpack<T>(w0 + o, w4 + o, out var l04, out var h04);
            Unpack<T>(w1 + o, w5 + o, out var l15, out var h15);
            Unpack<T>(w2 + o, w6 + o, out var l26, out var h26);
            Unpack<T>(w3 + o, w7 + o, out var l37, out var h37);
            var d = Scales8(w0 + o, w1 + o, w2 + o, w3 + o, w4 + o, w5 + o, w6 + o, w7 + o);
            var m = T.Min == 0 ? default : Scales8(w0 + o + T.Min, w1 + o + T.Min, w2 + o + T.Min, w3 + o + T.Min,
                w4 + o + T.Min, w5 + o + T.Min, w6 + o + T.Min, w7 + o + T.Min);
            byte* xb = x;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                byte* aq = xb + 4 * nb + 32 * ib;
                var alo = Avx2.BroadcastVector128ToVector256(aq).AsSByte();
                var ahi = Avx2.BroadcastVector128ToVector256(aq + 16).AsSByte();
                var sums = BlockSums(l04, h04, l15, h15, l26, h26, l37, h37, alo, ahi);
                if (T.Min == 0) sums -= Vector256.Create(((int*)(xb + 36 * nb))[ib] << T.OffsetShift);
                var a = Fma.MultiplyAdd(Vector256.ConvertToSingle(sums), d * Vector256.Create(((float*)xb)[ib] * Pow2To112), acc[b]);
                if (T.Min != 0) a = Fma.MultiplyAdd(m, Vector256.Create(((float*)(xb + 40 * nb))[ib] * Pow2To112), a);
                acc[b] = a;
            }
        }
        for (int b = 0; b < B; b++) Store(acc[b], rows, y + (long)b * yStride);
    }

    const float Pow2To112 = 5.192297e33f;

    /// <summary>The eight row pointers of a group of <paramref name="rows"/> (1–8): rows past the last repeat it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Rows8(byte* w, long rowBytes, int rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3,
        out byte* w4, out byte* w5, out byte* w6, out byte* w7)
    {
        int last = rows - 1;
        w0 = w;
        w1 = w + Math.Min(1, last) * rowBytes; w2 = w + Math.Min(2, last) * rowBytes; w3 = w + Math.Min(3, last) * rowBytes;
        w4 = w + Math.Min(4, last) * rowBytes; w5 = w + Math.Min(5, last) * rowBytes; w6 = w + Math.Min(6, last) * rowBytes;
        w7 = w + Math.Min(7, last) * rowBytes;
    }

    /// <summary>Blocks a (row k) and b (row k + 4) as unsigned values: lo = [a's elements 0–15 | b's 0–15], hi = [a's
    /// 16–31 | b's 16–31], each 0–15 (Q4) or 0–31 (Q5, the fifth bit from qh as 16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Unpack<T>(byte* a, byte* b, out Vector256<byte> lo, out Vector256<byte> hi) where T : ILegacyBlock
    {
        var v = Vector256.Create(Vector128.Load(a + T.Qs), Vector128.Load(b + T.Qs));
        var m4 = Vector256.Create((byte)0x0F);
        lo = v & m4;
        hi = Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & m4;
        if (T.HighBits != 0)
        {
            uint qa = *(uint*)(a + T.HighBits), qb = *(uint*)(b + T.HighBits);
            var b16 = Vector256.Create((byte)0x10);
            lo |= BitsToBytes32((qa & 0xFFFF) | (qb << 16)) & b16;
            hi |= BitsToBytes32((qa >> 16) | (qb & 0xFFFF0000)) & b16;
        }
    }

    /// <summary>Lane k (row k): Σ_j q_j·a_j over one block, q unsigned (the offset is the caller's). Pair register
    /// (k, k + 4) holds rows k and k + 4; low halves meet a[0..16), high ones a[16..32). Each <c>vpmaddubsw</c> pair sum
    /// is at most 2·31·127 in size, the two halves' sum 4·31·127 &lt; 2^15: no saturation.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> BlockSums(Vector256<byte> l04, Vector256<byte> h04, Vector256<byte> l15, Vector256<byte> h15,
        Vector256<byte> l26, Vector256<byte> h26, Vector256<byte> l37, Vector256<byte> h37, Vector256<sbyte> alo, Vector256<sbyte> ahi)
    {
        // [r0 ×4 | r4 ×4] etc. → hadd → [r0 ×2, r1 ×2 | r4 ×2, r5 ×2] → hadd → [r0, r1, r2, r3 | r4, r5, r6, r7]
        var p01 = Avx2.HorizontalAdd(PairDot(l04, h04, alo, ahi), PairDot(l15, h15, alo, ahi));
        var p23 = Avx2.HorizontalAdd(PairDot(l26, h26, alo, ahi), PairDot(l37, h37, alo, ahi));
        return Avx2.HorizontalAdd(p01, p23);
    }

    /// <summary>Two rows' values (lo, hi) against an activation block's halves: 8 int32 partial sums, 4 per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> PairDot(Vector256<byte> lo, Vector256<byte> hi, Vector256<sbyte> alo, Vector256<sbyte> ahi)
    {
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, lo, alo), hi, ahi);
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(lo, alo) + Avx2.MultiplyAddAdjacent(hi, ahi), Vector256<short>.One);
    }

    /// <summary>Eight F16 values (one at each pointer) × 2^-112 as floats, exact (sign-extended, shifted left by 13,
    /// masked: <see cref="RowKernels.HalfToSingle(Vector512{int})"/>'s steps), lane k from pointer k. Infinities and NaNs
    /// come out finite: a block scale is never one in a file ggml wrote.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> Scales8(byte* b0, byte* b1, byte* b2, byte* b3, byte* b4, byte* b5, byte* b6, byte* b7)
    {
        var h = Vector128.Create(*(short*)b0, *(short*)b1, *(short*)b2, *(short*)b3, *(short*)b4, *(short*)b5, *(short*)b6, *(short*)b7);
        return ((Avx2.ConvertToVector256Int32(h) << 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();
    }

    /// <summary>Lanes [0, rows) of v to y.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Store(Vector256<float> v, int rows, float* y)
    {
        if (rows == 8) { v.Store(y); return; }
        for (int k = 0; k < rows; k++) y[k] = v.GetElement(k);
    }
}
