using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cria.Kernels;

/// <summary>
/// Q4_0 weights eight rows at a time (AVX2), for <see cref="RowKernels"/>. A Q4_0 block is 18 bytes (d F16 | qs[16];
/// element j is the low nibble of qs[j], element j + 16 its high nibble, value q − 8), so a one-row kernel spends most
/// of its instructions per 32 weights on widening, the sign trick, a horizontal reduction and the scale. Eight rows at
/// once share all of that: the nibbles of rows k and k + 4 sit in one 256-bit register, so an unsigned
/// <c>vpmaddubsw</c> against the activation block's halves gives both rows' products; three <c>vphaddd</c> leave
/// row k's block sum in lane k; the −8 offset is one subtraction of 8·Σa (the activation's, shared by every row); the
/// eight scales are one vector; one FMA per block carries eight rows.
///
/// Activations (<see cref="RowKernels.ActivationRowBytes"/> for Q4_0): Q8_0's split layout — [nb] float scales (the
/// F16-rounded d), [nb, 32] int8 quants — followed by [nb] int32 8·Σ quants.
///
/// Every row's result is fixed by that row alone: per block the exact integer Σ (q − 8)·a, then
/// acc = fma(float(Σ), d_w·d_a, acc) in block order — the scalar reference's order (ggml's sumf += sumi·d_w·d_a) with
/// one rounding fewer. A group of fewer than eight rows repeats its last row in the unused lanes, so the decode,
/// prefill and one-row paths give the same bits for any grouping of rows.
/// </summary>
public static partial class VecDot
{
    /// <summary>Bytes of one Q4_0 weight block.</summary>
    const int Q40Bytes = 18;

    /// <summary>Rows [0, rows) (rows ≤ 8, row k at w + k·rowBytes) against one activation row x:
    /// y[k] = dot(row k, x). The decode kernel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ40Rows8Avx2(byte* w, long rowBytes, int rows, byte* x, int nb, float* y)
    {
        Rows8(w, rowBytes, rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3, out byte* w4, out byte* w5, out byte* w6, out byte* w7);
        float* ad = (float*)x;                     // [nb]
        byte* aq = x + 4 * nb;                      // [nb, 32]
        int* as8 = (int*)(x + 36 * nb);             // [nb]
        var acc = Vector256<float>.Zero;            // lane k: row k
        byte* next = w + 8 * rowBytes;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * Q40Bytes;
            // the next group's eight rows (contiguous after this group's), 8 · 18 B per block of this one
            byte* pf = next + 8 * o;
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128);
            var v04 = Pair(w0 + o, w4 + o); var v15 = Pair(w1 + o, w5 + o);
            var v26 = Pair(w2 + o, w6 + o); var v37 = Pair(w3 + o, w7 + o);
            var alo = Avx2.BroadcastVector128ToVector256(aq + 32 * ib).AsSByte();      // a[0..16) twice
            var ahi = Avx2.BroadcastVector128ToVector256(aq + 32 * ib + 16).AsSByte(); // a[16..32) twice
            var m4 = Vector256.Create((byte)0x0F);
            var s = BlockSums(v04 & m4, Hi(v04), v15 & m4, Hi(v15), v26 & m4, Hi(v26), v37 & m4, Hi(v37), alo, ahi)
                    - Vector256.Create(as8[ib]);
            var d = Scales8(w0 + o, w1 + o, w2 + o, w3 + o, w4 + o, w5 + o, w6 + o, w7 + o);
            acc = Fma.MultiplyAdd(Vector256.ConvertToSingle(s), d * Vector256.Create(ad[ib] * Pow2To112), acc);
        }
        Store(acc, rows, y);
    }

    /// <summary>Rows [0, rows) (rows ≤ 8) against B ≤ <see cref="RowKernels.Tile"/> activation rows (x + b·xStride):
    /// y[b·yStride + k] = dot(row k, x_b), each the bits of <see cref="DotQ40Rows8Avx2"/>. The nibbles and scales of a
    /// block are unpacked once for all B rows; <paramref name="acc"/> holds B accumulators.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ40Rows8Avx2(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc)
    {
        Rows8(w, rowBytes, rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3, out byte* w4, out byte* w5, out byte* w6, out byte* w7);
        for (int b = 0; b < B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * Q40Bytes;
            byte* pf = next + 8 * o; // as in the decode kernel: the next group, for the first tile
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128);
            var m4 = Vector256.Create((byte)0x0F);
            var v04 = Pair(w0 + o, w4 + o); var v15 = Pair(w1 + o, w5 + o);
            var v26 = Pair(w2 + o, w6 + o); var v37 = Pair(w3 + o, w7 + o);
            Vector256<byte> l04 = v04 & m4, h04 = Hi(v04), l15 = v15 & m4, h15 = Hi(v15);
            Vector256<byte> l26 = v26 & m4, h26 = Hi(v26), l37 = v37 & m4, h37 = Hi(v37);
            var d = Scales8(w0 + o, w1 + o, w2 + o, w3 + o, w4 + o, w5 + o, w6 + o, w7 + o);
            byte* xb = x;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                byte* aq = xb + 4 * nb + 32 * ib;
                var alo = Avx2.BroadcastVector128ToVector256(aq).AsSByte();
                var ahi = Avx2.BroadcastVector128ToVector256(aq + 16).AsSByte();
                var s = BlockSums(l04, h04, l15, h15, l26, h26, l37, h37, alo, ahi) - Vector256.Create(((int*)(xb + 36 * nb))[ib]);
                acc[b] = Fma.MultiplyAdd(Vector256.ConvertToSingle(s), d * Vector256.Create(((float*)xb)[ib] * Pow2To112), acc[b]);
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

    /// <summary>The 16 nibble bytes of two blocks (at a and b, each d first): [qs of a | qs of b].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<byte> Pair(byte* a, byte* b) => Vector256.Create(Vector128.Load(a + 2), Vector128.Load(b + 2));

    /// <summary>High nibbles of each byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> Hi(Vector256<byte> v) => Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & Vector256.Create((byte)0x0F);

    /// <summary>Lane k (row k): Σ_j q_j·a_j over one block, q the unsigned nibbles 0–15 (the −8 is the caller's). Pair
    /// register (k, k + 4) holds rows k and k + 4; low nibbles meet a[0..16), high ones a[16..32). Each
    /// <c>vpmaddubsw</c> pair sum is at most 2·15·127 in size, their sum 4·15·127: no saturation.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> BlockSums(Vector256<byte> l04, Vector256<byte> h04, Vector256<byte> l15, Vector256<byte> h15,
        Vector256<byte> l26, Vector256<byte> h26, Vector256<byte> l37, Vector256<byte> h37, Vector256<sbyte> alo, Vector256<sbyte> ahi)
    {
        // [r0 ×4 | r4 ×4] etc. → hadd → [r0 ×2, r1 ×2 | r4 ×2, r5 ×2] → hadd → [r0, r1, r2, r3 | r4, r5, r6, r7]
        var p01 = Avx2.HorizontalAdd(PairDot(l04, h04, alo, ahi), PairDot(l15, h15, alo, ahi));
        var p23 = Avx2.HorizontalAdd(PairDot(l26, h26, alo, ahi), PairDot(l37, h37, alo, ahi));
        return Avx2.HorizontalAdd(p01, p23);
    }

    /// <summary>Two rows' nibbles (lo, hi) against an activation block's halves: 8 int32 partial sums, 4 per row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> PairDot(Vector256<byte> lo, Vector256<byte> hi, Vector256<sbyte> alo, Vector256<sbyte> ahi)
    {
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, lo, alo), hi, ahi);
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(lo, alo) + Avx2.MultiplyAddAdjacent(hi, ahi), Vector256<short>.One);
    }

    /// <summary>The eight blocks' F16 scales × 2^-112 as floats, exact (sign-extended, shifted left by 13, masked:
    /// <see cref="RowKernels.HalfToSingle(Vector512{int})"/>'s steps), lane k from block k.</summary>
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
