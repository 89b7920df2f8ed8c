using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cria.Kernels;

/// <summary>
/// Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K and (with AVX-VNNI) Q8_0 prefill on AVX-512: sixteen weight rows at a time, one row
/// per 32-bit lane, for <see cref="RowKernels.RunBlock"/>, in tiles of <see cref="RowKernels.Rows16Tile"/> activation rows.
///
/// The eight-row AVX2 kernel (<see cref="DotRows8Avx2{T}(byte*, long, int, byte*, int, int, int, float*, int, Vector256{float}*)"/>)
/// holds two rows per register, each row's block spread over four lanes, and pays three <c>vphaddd</c> per block and
/// activation row to bring a row's sum into one lane. Here the sixteen rows' blocks are transposed once per block and
/// tile: register V_s (s = 0…7) holds, in lane k, row k's four values 4s…4s+3 (unsigned nibbles, plus 16 for a set
/// fifth bit; values 0–15 are the low nibbles of qs[0..16), 16–31 the high ones). Against each activation row, V_s meets the activation's four bytes
/// 4s…4s+3 broadcast to every lane, so one <c>vpmaddubsw</c> gives sixteen rows' partial sums in int16 pairs; the
/// eight steps of a block are added in int16 (each step is at most 2·15·128 = 3840 in size, eight 30720 &lt; 2^15: no
/// saturation; five-bit values four steps at a time) and <c>vpmaddwd</c> by ones leaves row k's block sum in lane k.
/// No horizontal sums.
///
/// For the 32-value types the arithmetic per row is the eight-row kernel's, so the results are its bits (and decode,
/// which runs that kernel, agrees with prefill bit for bit): per block the exact integer Σ q·a (offset included), then
/// acc = fma(float(Σ), d_w·d_a, acc) and for a min acc = fma(m, s, acc), in block order, with d_w·d_a formed as
/// (d_w·2^-112)·(d_a·2^112) exactly as there. Q2_K and Q3_K (sub-blocks of 16 values, four steps each) follow their
/// AVX2 decode kernels, which end every super-block with its exact integers and scalar FMAs for this reason. Q8_0
/// (signed bytes, <see cref="DotQ80Rows16Avx512"/>) goes through <c>vpdpbusd</c> instead of <c>vpmaddubsw</c> and keeps
/// its decode kernel's eight accumulators per row.
/// </summary>
public static partial class VecDot
{
    /// <summary>Whether the kernels of this file run the prefill of Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K and Q4_K: AVX-512BW (and
    /// the AVX2 + FMA that the decode kernels, whose bits they give, need).</summary>
    internal static bool Rows16 => Avx512BW.IsSupported && Vector512.IsHardwareAccelerated && Avx2.IsSupported && Fma.IsSupported;

    /// <summary>Rows [0, rows) (rows ≤ 16, row k at w + k·rowBytes) against B ≤ <see cref="RowKernels.Rows16Tile"/> activation
    /// rows (x + b·xStride, the legacy types' layout of <see cref="RowKernels.ActivationRowBytes"/>: [nb] float scales,
    /// [nb, 32] int8 quants, [nb] int32 Σ quants, [nb] float s): y[b·yStride + k] = dot(row k, x_b). A group of fewer
    /// than sixteen rows repeats its last row in the unused lanes. <paramref name="acc"/> holds B accumulators.
    /// Not for IQ4_NL: its levels (up to 241) would saturate vpmaddubsw's int16 pairs.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotRows16Avx512<T>(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc) where T : ILegacyBlock
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var m4 = Vector512.Create((byte)0x0F);
        var ones = Vector512<short>.One;
        // vpermt2d indices: from R_a (rows 0–3, dword 4r + t) and R_b (rows 4–7, dword 16 + 4r + t), lanes 0–7 take
        // dword t of rows 0–7 and lanes 8–15 dword t + 1
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int ib = 0; ib < nb; ib++)
        {
            int o = ib * T.Bytes;
            byte* pf = next + 16 * o; // the next group's sixteen rows, contiguous after this group's: 16 · Bytes per block
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128); Sse.Prefetch0(pf + 192); Sse.Prefetch0(pf + 256);
            if (T.Bytes > 20) Sse.Prefetch0(pf + 320);
            // Q_t: lane k = row k's qs[4t .. 4t+4); V_s: lane k = row k's values 4s … 4s+3 (V_t the low nibbles of Q_t,
            // V_t+4 the high ones)
            int q = o + T.Qs;
            Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var t0, out var t1, out var t2, out var t3);
            Vector512<byte> q0 = t0.AsByte(), q1 = t1.AsByte(), q2 = t2.AsByte(), q3 = t3.AsByte();
            Vector512<byte> v0 = q0 & m4, v1 = q1 & m4, v2 = q2 & m4, v3 = q3 & m4;
            Vector512<byte> v4 = Vector512.ShiftRightLogical(q0.AsUInt16(), 4).AsByte() & m4, v5 = Vector512.ShiftRightLogical(q1.AsUInt16(), 4).AsByte() & m4;
            Vector512<byte> v6 = Vector512.ShiftRightLogical(q2.AsUInt16(), 4).AsByte() & m4, v7 = Vector512.ShiftRightLogical(q3.AsUInt16(), 4).AsByte() & m4;
            if (T.HighBits != 0)
            {
                // value j's fifth bit is bit j of the row's qh: V_s takes bits 4s … 4s+3 as 16s
                var qh = Gather16(w + o + T.HighBits, offLo, offHi).AsByte();
                v0 |= FifthBits(qh, 0); v1 |= FifthBits(qh, 1); v2 |= FifthBits(qh, 2); v3 |= FifthBits(qh, 3);
                v4 |= FifthBits(qh, 4); v5 |= FifthBits(qh, 5); v6 |= FifthBits(qh, 6); v7 |= FifthBits(qh, 7);
            }
            // d_w · 2^-112 of each row, exact (the F16 bits in place: RowKernels.HalfToSingle's steps, as Scales8); m likewise
            var d = HalfBits(Gather16(w + o, offLo, offHi));
            var m = T.Min == 0 ? default : HalfBits(Gather16(w + o + T.Min, offLo, offHi));
            byte* xb = x;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                byte* aq = xb + 4 * nb + 32 * ib;
                Vector512<int> sums;
                var s = Avx512BW.MultiplyAddAdjacent(v0, Vector512.Create(*(int*)aq).AsSByte())
                      + Avx512BW.MultiplyAddAdjacent(v1, Vector512.Create(*(int*)(aq + 4)).AsSByte());
                s += Avx512BW.MultiplyAddAdjacent(v2, Vector512.Create(*(int*)(aq + 8)).AsSByte())
                   + Avx512BW.MultiplyAddAdjacent(v3, Vector512.Create(*(int*)(aq + 12)).AsSByte());
                var s2 = Avx512BW.MultiplyAddAdjacent(v4, Vector512.Create(*(int*)(aq + 16)).AsSByte())
                       + Avx512BW.MultiplyAddAdjacent(v5, Vector512.Create(*(int*)(aq + 20)).AsSByte());
                s2 += Avx512BW.MultiplyAddAdjacent(v6, Vector512.Create(*(int*)(aq + 24)).AsSByte())
                    + Avx512BW.MultiplyAddAdjacent(v7, Vector512.Create(*(int*)(aq + 28)).AsSByte());
                // four-bit values: the eight steps in int16 (at most 8 · 2·15·128 = 30720); five-bit: four (4 · 2·31·128 = 31744)
                if (T.HighBits == 0) sums = Avx512BW.MultiplyAddAdjacent(s + s2, ones);
                else sums = Avx512BW.MultiplyAddAdjacent(s, ones) + Avx512BW.MultiplyAddAdjacent(s2, ones);
                if (T.Min == 0) sums -= Vector512.Create(((int*)(xb + 36 * nb))[ib] << T.OffsetShift);
                var a = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(sums), d * Vector512.Create(((float*)xb)[ib] * Pow2To112), acc[b]);
                if (T.Min != 0) a = Avx512F.FusedMultiplyAdd(m, Vector512.Create(((float*)(xb + 40 * nb))[ib] * Pow2To112), a);
                acc[b] = a;
            }
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>Whether Q8_0 prefill runs <see cref="DotQ80Rows16Avx512"/>: <see cref="Rows16"/> and the 256-bit
    /// <c>vpdpbusd</c> of AVX-VNNI (.NET 10 has no 512-bit one). Q8_0 then belongs to the family of
    /// <see cref="DotQ80RowExactAvx2{TVnni}"/> (decode, one or two rows) on these machines too.</summary>
    internal static bool Q80Rows16 => Rows16 && AvxVnni.IsSupported;

    /// <summary>
    /// Q8_0 rows [0, rows) (rows ≤ 16; 34 B: d | qs[32] int8) against B ≤ <see cref="RowKernels.Rows16Tile"/> activation
    /// rows in the legacy types' layout ([nb] float d, [nb, 32] int8 quants, [nb] int32 Σ quants, …): y[b·yStride + k] =
    /// dot(row k, x_b), rows in lanes as <see cref="DotRows16Avx512{T}"/>. A block's 32 quants of the sixteen rows are
    /// transposed into eight registers (V_s, lane k = row k's quants 4s … 4s+3) and made unsigned, w + 128 (xor 0x80);
    /// against the activation's bytes 4s … 4s+3 broadcast, one 256-bit <c>vpdpbusd</c> per eight rows adds four exact
    /// products to each lane — no int16 step, whose pairs 2·255·127 would saturate — and starting each lane from
    /// −128·Σ a takes the offset back: Σ (w + 128)·a − 128·Σ a = Σ w·a, exact for every byte. Per row the arithmetic is
    /// <see cref="DotQ80RowExactAvx2{TVnni}"/>'s (decode): block ib into accumulator ib mod 8 of its activation row
    /// (<paramref name="acc"/> holds 8·B vectors), then <see cref="Sum8"/>'s tree; so decode and prefill agree bit for bit.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ80Rows16Avx512(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc)
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < 8 * B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var flip = Vector512.Create((byte)0x80);
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int ib = 0; ib < nb; ib++)
        {
            int o = ib * 34;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · 34 B per block
            for (int l = 0; l < 16 * 34; l += 64) Sse.Prefetch0(pf + l);
            int q = o + 2;
            Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var t0, out var t1, out var t2, out var t3);
            q += 16;
            Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var t4, out var t5, out var t6, out var t7);
            // V_s = w + 128, as bytes; lo: rows 0–7, hi: rows 8–15
            Vector512<byte> v0 = t0.AsByte() ^ flip, v1 = t1.AsByte() ^ flip, v2 = t2.AsByte() ^ flip, v3 = t3.AsByte() ^ flip;
            Vector512<byte> v4 = t4.AsByte() ^ flip, v5 = t5.AsByte() ^ flip, v6 = t6.AsByte() ^ flip, v7 = t7.AsByte() ^ flip;
            Vector256<byte> l0 = v0.GetLower(), l1 = v1.GetLower(), l2 = v2.GetLower(), l3 = v3.GetLower();
            Vector256<byte> l4 = v4.GetLower(), l5 = v5.GetLower(), l6 = v6.GetLower(), l7 = v7.GetLower();
            Vector256<byte> h0 = v0.GetUpper(), h1 = v1.GetUpper(), h2 = v2.GetUpper(), h3 = v3.GetUpper();
            Vector256<byte> h4 = v4.GetUpper(), h5 = v5.GetUpper(), h6 = v6.GetUpper(), h7 = v7.GetUpper();
            var d = HalfBits(Gather16(w + o, offLo, offHi)); // d_w · 2^-112 of each row, exact
            // activation row b: d at xd, quants at xq, Σ quants at xs (each xStride further per row); accumulator ib mod 8
            byte* xd = x + 4 * ib, xq = x + 4 * nb + 32 * ib, xs = x + 36 * nb + 4 * ib;
            Vector512<float>* a = acc + (ib & 7);
            for (int b = 0; b < B; b++, xd += xStride, xq += xStride, xs += xStride, a += 8)
            {
                var sums = Q80Lanes(l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7, (int*)xq, *(int*)xs);
                *a = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(sums), d * Vector512.Create(*(float*)xd * Pow2To112), *a);
            }
        }
        for (int b = 0; b < B; b++)
        {
            var a = acc + 8 * b;
            acc[b] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>One block of one activation row (quants at aq, their sum asum) against the sixteen rows' w + 128 (l_s:
    /// rows 0–7, h_s: rows 8–15): lane k = Σ w·a of row k, exact. Two chains per half (steps 0–3 from −128·Σ a, steps 4–7
    /// from 0), so that the dependent <c>vpdpbusd</c> are four deep.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<int> Q80Lanes(Vector256<byte> l0, Vector256<byte> l1, Vector256<byte> l2, Vector256<byte> l3,
        Vector256<byte> l4, Vector256<byte> l5, Vector256<byte> l6, Vector256<byte> l7, Vector256<byte> h0, Vector256<byte> h1,
        Vector256<byte> h2, Vector256<byte> h3, Vector256<byte> h4, Vector256<byte> h5, Vector256<byte> h6, Vector256<byte> h7,
        int* aq, int asum)
    {
        var c = Vector256.Create(-(asum << 7));
        Vector256<sbyte> a0 = Vector256.Create(aq[0]).AsSByte(), a1 = Vector256.Create(aq[1]).AsSByte();
        Vector256<sbyte> a2 = Vector256.Create(aq[2]).AsSByte(), a3 = Vector256.Create(aq[3]).AsSByte();
        Vector256<sbyte> a4 = Vector256.Create(aq[4]).AsSByte(), a5 = Vector256.Create(aq[5]).AsSByte();
        Vector256<sbyte> a6 = Vector256.Create(aq[6]).AsSByte(), a7 = Vector256.Create(aq[7]).AsSByte();
        var lo = AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(c, l0, a0), l1, a1), l2, a2), l3, a3)
               + AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, l4, a4), l5, a5), l6, a6), l7, a7);
        var hi = AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(c, h0, a0), h1, a1), h2, a2), h3, a3)
               + AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, h4, a4), h5, a5), h6, a6), h7, a7);
        return Avx512F.InsertVector256(lo.ToVector512Unsafe(), hi, 1);
    }

    /// <summary>
    /// Q2_K rows [0, rows) (rows ≤ 16) against B ≤ <see cref="RowKernels.Rows16Tile"/> Q8_K activation rows (ggml's block_q8_K:
    /// d f32 | qs[256] | bsums[16] int16): y[b·yStride + k] = dot(row k, x_b), rows in lanes as
    /// <see cref="DotRows16Avx512{T}"/>. A super-block's 64 qs bytes of the sixteen rows are transposed a quarter (16 B)
    /// at a time; sub-block j (values 16j … 16j+15: qs quarter 2·(j / 8) + j % 2, bits 2·((j / 2) % 4)) is four steps of
    /// four values, added in int16 (at most 4·2·3·128), then one <c>vpmaddwd</c> by the row's scale in both halves of
    /// its lane. Per row the arithmetic is <see cref="DotQ2KAvx2"/>'s: the exact isum and imin of each super-block, then
    /// acc = fma(isum, d_a·d, acc), acc = fma(imin, −d_a·dmin, acc).
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ2KRows16Avx512(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc, Vector512<int>* isum)
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var m2 = Vector512.Create((byte)3);
        var m4 = Vector512.Create(0x0F);
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 84;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · 84 B per super-block
            for (int l = 0; l < 16 * 84; l += 64) Sse.Prefetch0(pf + l);
            // scales[16] of the sixteen rows: sc_t, lane k = row k's scale bytes 4t … 4t+3 (low nibble scale, high min)
            Transpose16(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, p8 + o, p9 + o, p10 + o, p11 + o,
                p12 + o, p13 + o, p14 + o, p15 + o, pick01, pick23, out var sc0, out var sc1, out var sc2, out var sc3);
            var dd = Gather16(w + o + 80, offLo, offHi); // d | dmin
            var d = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(Avx512F.ShiftLeftLogical(dd, 16), 16));
            var dmin = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(dd, 16));
            for (int b = 0; b < B; b++) isum[b] = Vector512<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                int q = o + 16 + 16 * c;
                Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                    p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var q0, out var q1, out var q2, out var q3);
                for (int s = 0; s < 4; s++)
                {
                    int j = 8 * (c >> 1) + 2 * s + (c & 1); // the sub-block: values 16j … 16j+15
                    var v0 = Vector512.ShiftRightLogical(q0.AsUInt16(), 2 * s).AsByte() & m2;
                    var v1 = Vector512.ShiftRightLogical(q1.AsUInt16(), 2 * s).AsByte() & m2;
                    var v2 = Vector512.ShiftRightLogical(q2.AsUInt16(), 2 * s).AsByte() & m2;
                    var v3 = Vector512.ShiftRightLogical(q3.AsUInt16(), 2 * s).AsByte() & m2;
                    var sct = (j >> 2) switch { 0 => sc0, 1 => sc1, 2 => sc2, _ => sc3 };
                    var scale = Vector512.ShiftRightLogical(sct, 8 * (j & 3)) & m4;
                    var scale2 = (scale | Vector512.ShiftLeft(scale, 16)).AsInt16(); // the scale in both int16 halves
                    SubBlock(v0, v1, v2, v3, scale2, x + (long)sb * 292 + 4 + 16 * j, xStride, B, isum);
                }
            }
            // mins of sub-blocks 2p, 2p + 1 as the two int16 halves of each lane, against bsums 2p, 2p + 1
            var mn0 = MinPair(sc0, 0); var mn1 = MinPair(sc0, 16); var mn2 = MinPair(sc1, 0); var mn3 = MinPair(sc1, 16);
            var mn4 = MinPair(sc2, 0); var mn5 = MinPair(sc2, 16); var mn6 = MinPair(sc3, 0); var mn7 = MinPair(sc3, 16);
            byte* xa = x + (long)sb * 292;
            for (int b = 0; b < B; b++, xa += xStride)
            {
                var imin = BsumDot(mn0, mn1, mn2, mn3, mn4, mn5, mn6, mn7, (int*)(xa + 260));
                float yd = *(float*)xa;
                var a = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(isum[b]), Vector512.Create(yd) * d, acc[b]);
                acc[b] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(imin), Vector512.Create(-yd) * dmin, a);
            }
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>
    /// Q3_K rows [0, rows) (rows ≤ 16; 110 B: hmask[32] | qs[64] | scales[12] | d) against B ≤ <see cref="RowKernels.Rows16Tile"/>
    /// Q8_K activation rows, rows in lanes as <see cref="DotQ2KRows16Avx512"/>. A value is its two qs bits less 4 where its
    /// hmask bit is clear; the kernel multiplies u = value + 4 (0…7, unsigned for <c>vpmaddubsw</c>) and takes the 4s back
    /// with the activation's sub-block sums: Σ scale·Σ value·a = Σ scale·Σ u·a − 4·Σ scale·bsum. Per row the arithmetic is
    /// <see cref="DotQ3KAvx2"/>'s: the exact isum of each super-block, then acc = fma(isum, d_a·d, acc).
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ3KRows16Avx512(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc, Vector512<int>* isum)
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var m2 = Vector512.Create((byte)3);
        var one = Vector512.Create((byte)1);
        var k1 = Vector512.Create(0x03030303); var k2 = Vector512.Create(0x0F0F0F0F);
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 110;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · 110 B per super-block
            for (int l = 0; l < 16 * 110; l += 64) Sse.Prefetch0(pf + l);
            // scales[12] as ggml's three words a0, a1, a2 (read from byte 92: the 16 bytes end with the scales, not past them)
            int so = o + 92;
            Transpose16(p0 + so, p1 + so, p2 + so, p3 + so, p4 + so, p5 + so, p6 + so, p7 + so, p8 + so, p9 + so, p10 + so, p11 + so,
                p12 + so, p13 + so, p14 + so, p15 + so, pick01, pick23, out _, out var a0, out var a1, out var a2);
            // the sixteen 6-bit scales + 32, four per lane: sc_t holds scales 4t … 4t+3 (DotQ3KAvx2's Q3KScales, per lane)
            var sc0 = (a0 & k2) | Vector512.ShiftLeft(a2 & k1, 4);
            var sc1 = (a1 & k2) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a2, 2) & k1, 4);
            var sc2 = (Vector512.ShiftRightLogical(a0, 4) & k2) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a2, 4) & k1, 4);
            var sc3 = (Vector512.ShiftRightLogical(a1, 4) & k2) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a2, 6) & k1, 4);
            var d = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(Gather16(w + o + 106, offLo, offHi), 16)); // d is the high half of bytes 106–109
            Transpose16(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, p8 + o, p9 + o, p10 + o, p11 + o,
                p12 + o, p13 + o, p14 + o, p15 + o, pick01, pick23, out var h0, out var h1, out var h2, out var h3);
            int ho = o + 16;
            Transpose16(p0 + ho, p1 + ho, p2 + ho, p3 + ho, p4 + ho, p5 + ho, p6 + ho, p7 + ho, p8 + ho, p9 + ho, p10 + ho, p11 + ho,
                p12 + ho, p13 + ho, p14 + ho, p15 + ho, pick01, pick23, out var h4, out var h5, out var h6, out var h7);
            for (int b = 0; b < B; b++) isum[b] = Vector512<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                int q = o + 32 + 16 * c;
                Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                    p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var q0, out var q1, out var q2, out var q3);
                // values 16·(c & 1) + … of each 32-value piece: hmask bytes 0–15 (c even) or 16–31 (c odd)
                bool odd = (c & 1) != 0;
                Vector512<int> g0 = odd ? h4 : h0, g1 = odd ? h5 : h1, g2 = odd ? h6 : h2, g3 = odd ? h7 : h3;
                for (int s = 0; s < 4; s++)
                {
                    int j = 8 * (c >> 1) + 2 * s + (c & 1); // the sub-block: values 16j … 16j+15
                    int hb = 4 * (c >> 1) + s;             // their hmask bit
                    var u0 = (Vector512.ShiftRightLogical(q0.AsUInt16(), 2 * s).AsByte() & m2) | Vector512.ShiftLeft((Vector512.ShiftRightLogical(g0.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u1 = (Vector512.ShiftRightLogical(q1.AsUInt16(), 2 * s).AsByte() & m2) | Vector512.ShiftLeft((Vector512.ShiftRightLogical(g1.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u2 = (Vector512.ShiftRightLogical(q2.AsUInt16(), 2 * s).AsByte() & m2) | Vector512.ShiftLeft((Vector512.ShiftRightLogical(g2.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u3 = (Vector512.ShiftRightLogical(q3.AsUInt16(), 2 * s).AsByte() & m2) | Vector512.ShiftLeft((Vector512.ShiftRightLogical(g3.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var sct = (j >> 2) switch { 0 => sc0, 1 => sc1, 2 => sc2, _ => sc3 };
                    var scale = (Vector512.ShiftRightLogical(sct, 8 * (j & 3)) & Vector512.Create(0xFF)) - Vector512.Create(32);
                    var scale2 = ((scale & Vector512.Create(0xFFFF)) | Vector512.ShiftLeft(scale, 16)).AsInt16(); // signed, in both int16 halves
                    SubBlock(u0, u1, u2, u3, scale2, x + (long)sb * 292 + 4 + 16 * j, xStride, B, isum); // |Σ u·a| ≤ 4·2·7·128 per int16
                }
            }
            // the 4s taken back: 4·Σ_j scale_j·bsum_j, scales 2p and 2p + 1 as the two int16 halves of each lane
            var sp0 = ScalePair(sc0, 0); var sp1 = ScalePair(sc0, 16); var sp2 = ScalePair(sc1, 0); var sp3 = ScalePair(sc1, 16);
            var sp4 = ScalePair(sc2, 0); var sp5 = ScalePair(sc2, 16); var sp6 = ScalePair(sc3, 0); var sp7 = ScalePair(sc3, 16);
            byte* xa = x + (long)sb * 292;
            for (int b = 0; b < B; b++, xa += xStride)
            {
                var corr = BsumDot(sp0, sp1, sp2, sp3, sp4, sp5, sp6, sp7, (int*)(xa + 260));
                var total = isum[b] - Vector512.ShiftLeft(corr, 2);
                acc[b] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(total), Vector512.Create(*(float*)xa) * d, acc[b]);
            }
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>
    /// Q4_K rows [0, rows) (rows ≤ 16; 144 B: d | dmin | scales[12] | qs[128]; with <typeparamref name="T"/> =
    /// <see cref="RowKernels.Q5KLayout"/> Q5_K, 176 B, qh[32] before qs: each value's fifth bit, <see cref="Chunk{T}"/>) against B ≤ <see cref="RowKernels.Rows16Tile"/>
    /// Q8_K activation rows in the Q4_K kernels' layout (<see cref="RowKernels.Q8KStride"/> B per super-block: qs[256]
    /// permuted, the eight sums of 32 as int16 at <see cref="RowKernels.Q8KSums"/>, d8 at <see cref="RowKernels.Q8KScale"/>),
    /// rows in lanes as <see cref="DotQ2KRows16Avx512"/>. Chunk c of qs (32 bytes) is transposed in two quarters, eight
    /// registers of four bytes per lane; their low nibbles are sub-block 2c, their high nibbles sub-block 2c + 1, each
    /// eight steps of four values added in int16 (at most 8·2·15·128 = 30720), then one <c>vpmaddwd</c> by the row's
    /// scale. Per row the arithmetic is the decode kernel's (RowKernels.Q4K1): the exact isum and imin of each
    /// super-block, then S = fma(isum, d8·d, S), M = fma(imin, d8·dmin, M), and S − M. <paramref name="acc"/> holds 2·B
    /// vectors.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ4KRows16Avx512<T>(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc, Vector512<int>* isum) where T : RowKernels.IK45
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out _, out _);
        for (int b = 0; b < 2 * B; b++) acc[b] = Vector512<float>.Zero; // acc[2b] = S, acc[2b + 1] = M of activation row b
        byte* next = w + 16 * rowBytes;
        var m4 = Vector512.Create((byte)0x0F);
        var k6 = Vector512.Create(0x3F3F3F3F); var k4 = Vector512.Create(0x0F0F0F0F); var k2 = Vector512.Create(0x03030303);
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        var m16 = Vector512.Create((byte)0x10);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * T.Bytes;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · Bytes per super-block
            for (int l = 0; l < 16 * T.Bytes; l += 64) Sse.Prefetch0(pf + l);
            // d | dmin, and scales[12] as ggml's three words a0, a1, a2, of the sixteen rows
            Transpose16(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, p8 + o, p9 + o, p10 + o, p11 + o,
                p12 + o, p13 + o, p14 + o, p15 + o, pick01, pick23, out var dd, out var a0, out var a1, out var a2);
            var d = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(Avx512F.ShiftLeftLogical(dd, 16), 16));
            var dmin = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(dd, 16));
            // scales 0–3, 4–7 and mins 0–3, 4–7 of each row, a byte each (RowKernels.Q4KScalesAndMins, per lane)
            var sc03 = a0 & k6;
            var sc47 = (a2 & k4) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a0, 6) & k2, 4);
            var mn03 = a1 & k6;
            var mn47 = (Vector512.ShiftRightLogical(a2, 4) & k4) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(a1, 6) & k2, 4);
            // Q5_K: qh[32] of the sixteen rows (bit j of byte l: the 16 of value l of sub-block j)
            Vector512<int> f0 = default, f1 = default, f2 = default, f3 = default, f4 = default, f5 = default, f6 = default, f7 = default;
            if (T.Fifth)
            {
                int h = o + 16;
                Transpose16(p0 + h, p1 + h, p2 + h, p3 + h, p4 + h, p5 + h, p6 + h, p7 + h, p8 + h, p9 + h, p10 + h, p11 + h,
                    p12 + h, p13 + h, p14 + h, p15 + h, pick01, pick23, out f0, out f1, out f2, out f3);
                h += 16;
                Transpose16(p0 + h, p1 + h, p2 + h, p3 + h, p4 + h, p5 + h, p6 + h, p7 + h, p8 + h, p9 + h, p10 + h, p11 + h,
                    p12 + h, p13 + h, p14 + h, p15 + h, pick01, pick23, out f4, out f5, out f6, out f7);
            }
            for (int b = 0; b < B; b++) isum[b] = Vector512<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                int q = o + (T.Fifth ? 48 : 16) + 32 * c;
                Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                    p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var q0, out var q1, out var q2, out var q3);
                q += 16;
                Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                    p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var q4, out var q5, out var q6, out var q7);
                var sct = c < 2 ? sc03 : sc47;
                var sLo = Vector512.ShiftRightLogical(sct, 16 * (c & 1)) & Vector512.Create(0xFF);       // scale of sub-block 2c
                var sHi = Vector512.ShiftRightLogical(sct, 16 * (c & 1) + 8) & Vector512.Create(0xFF);   // of 2c + 1
                // sub-block j's activations in the permuted layout: 128·(j / 4) + 32·(0, 2, 1, 3)[j % 4]
                byte* xl = x + sb * RowKernels.Q8KStride + 128 * (c >> 1) + 32 * (c & 1);
                Chunk<T>(q0.AsByte(), q1.AsByte(), q2.AsByte(), q3.AsByte(), q4.AsByte(), q5.AsByte(), q6.AsByte(), q7.AsByte(),
                    f0.AsByte(), f1.AsByte(), f2.AsByte(), f3.AsByte(), f4.AsByte(), f5.AsByte(), f6.AsByte(), f7.AsByte(), 2 * c, m4, m16,
                    (sLo | Vector512.ShiftLeft(sLo, 16)).AsInt16(), (sHi | Vector512.ShiftLeft(sHi, 16)).AsInt16(), xl, xStride, B, isum);
            }
            // mins of sub-blocks 2p, 2p + 1 as the two int16 halves of each lane, against the sums of 32
            var mp0 = BytePair(mn03, 0); var mp1 = BytePair(mn03, 16); var mp2 = BytePair(mn47, 0); var mp3 = BytePair(mn47, 16);
            byte* xa = x + sb * RowKernels.Q8KStride;
            for (int b = 0; b < B; b++, xa += xStride)
            {
                int* bs = (int*)(xa + RowKernels.Q8KSums);
                var imin = (Avx512BW.MultiplyAddAdjacent(mp0, Vector512.Create(bs[0]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(mp1, Vector512.Create(bs[1]).AsInt16()))
                         + (Avx512BW.MultiplyAddAdjacent(mp2, Vector512.Create(bs[2]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(mp3, Vector512.Create(bs[3]).AsInt16()));
                var d8 = Vector512.Create(*(float*)(xa + RowKernels.Q8KScale));
                acc[2 * b] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(isum[b]), d8 * d, acc[2 * b]);
                acc[2 * b + 1] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(imin), d8 * dmin, acc[2 * b + 1]);
            }
        }
        for (int b = 0; b < B; b++) acc[b] = acc[2 * b] - acc[2 * b + 1];
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>
    /// Q6_K rows [0, rows) (rows ≤ 16; 210 B: ql[128] | qh[64] | scales[16] int8 | d f16) against B ≤
    /// <see cref="RowKernels.Rows16Tile"/> Q8_K activation rows in the Q6_K kernels' layout (<see cref="RowKernels.Q8KStride"/>
    /// B per super-block: qs[256] in order, the sixteen sums of 16 as int16 at <see cref="RowKernels.Q8KSums"/>, d8 at
    /// <see cref="RowKernels.Q8KScale"/>), rows in lanes as <see cref="DotQ4KRows16Avx512"/>. Per half h the 32-byte pieces
    /// ql[64h…] and ql[64h + 32…] and qh[32h…] are transposed (eight registers of four bytes per lane each); a low or high
    /// nibble with its two qh bits is q6 + 32 ∈ [0, 63], values 128h + 32k + l. Each sixteen values (four registers) meet
    /// the activations two steps at a time in int16 (at most 2·2·63·128 = 32256), then <c>vpmaddwd</c> by the row's
    /// scale. Per row the arithmetic is the decode kernel's (RowKernels.Q6K1): the exact isum = Σ_j scale_j·Σ q6u·q8 −
    /// 32·Σ_j scale_j·bsum_j of each super-block, then S = fma(isum, d8·d, S). <paramref name="acc"/> holds B vectors.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ6KRows16Avx512(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc, Vector512<int>* isum)
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var m4 = Vector512.Create((byte)0x0F);
        var m30 = Vector512.Create((byte)0x30);
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 210;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · 210 B per super-block
            for (int l = 0; l < 16 * 210; l += 64) Sse.Prefetch0(pf + l);
            // the sixteen int8 scales, four per lane (sc_t: scales 4t … 4t+3), and d (the high half of bytes 206–209)
            int so = o + 192;
            Transpose16(p0 + so, p1 + so, p2 + so, p3 + so, p4 + so, p5 + so, p6 + so, p7 + so, p8 + so, p9 + so, p10 + so, p11 + so,
                p12 + so, p13 + so, p14 + so, p15 + so, pick01, pick23, out var sc0, out var sc1, out var sc2, out var sc3);
            var d = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(Gather16(w + o + 206, offLo, offHi), 16));
            for (int b = 0; b < B; b++) isum[b] = Vector512<int>.Zero;
            byte* xs = x + (long)sb * RowKernels.Q8KStride;
            for (int h = 0; h < 2; h++)
            {
                int ql = o + 64 * h, qh = o + 128 + 32 * h;
                Transpose16(p0 + ql, p1 + ql, p2 + ql, p3 + ql, p4 + ql, p5 + ql, p6 + ql, p7 + ql, p8 + ql, p9 + ql, p10 + ql, p11 + ql,
                    p12 + ql, p13 + ql, p14 + ql, p15 + ql, pick01, pick23, out var a0, out var a1, out var a2, out var a3);
                ql += 16;
                Transpose16(p0 + ql, p1 + ql, p2 + ql, p3 + ql, p4 + ql, p5 + ql, p6 + ql, p7 + ql, p8 + ql, p9 + ql, p10 + ql, p11 + ql,
                    p12 + ql, p13 + ql, p14 + ql, p15 + ql, pick01, pick23, out var a4, out var a5, out var a6, out var a7);
                ql += 16;
                Transpose16(p0 + ql, p1 + ql, p2 + ql, p3 + ql, p4 + ql, p5 + ql, p6 + ql, p7 + ql, p8 + ql, p9 + ql, p10 + ql, p11 + ql,
                    p12 + ql, p13 + ql, p14 + ql, p15 + ql, pick01, pick23, out var c0, out var c1, out var c2, out var c3);
                ql += 16;
                Transpose16(p0 + ql, p1 + ql, p2 + ql, p3 + ql, p4 + ql, p5 + ql, p6 + ql, p7 + ql, p8 + ql, p9 + ql, p10 + ql, p11 + ql,
                    p12 + ql, p13 + ql, p14 + ql, p15 + ql, pick01, pick23, out var c4, out var c5, out var c6, out var c7);
                Transpose16(p0 + qh, p1 + qh, p2 + qh, p3 + qh, p4 + qh, p5 + qh, p6 + qh, p7 + qh, p8 + qh, p9 + qh, p10 + qh, p11 + qh,
                    p12 + qh, p13 + qh, p14 + qh, p15 + qh, pick01, pick23, out var g0, out var g1, out var g2, out var g3);
                qh += 16;
                Transpose16(p0 + qh, p1 + qh, p2 + qh, p3 + qh, p4 + qh, p5 + qh, p6 + qh, p7 + qh, p8 + qh, p9 + qh, p10 + qh, p11 + qh,
                    p12 + qh, p13 + qh, p14 + qh, p15 + qh, pick01, pick23, out var g4, out var g5, out var g6, out var g7);
                // k = 0 … 3: values 128h + 32k + l, low nibbles of ql[64h + l] (k = 0) or ql[64h + 32 + l] (k = 1), high
                // nibbles of those (k = 2, 3), each with bits 2k, 2k + 1 of qh[32h + l] as bits 4–5; registers 0–3 hold
                // l = 0–15 (scale 8h + 2k), 4–7 l = 16–31 (scale 8h + 2k + 1)
                for (int k = 0; k < 4; k++)
                {
                    var sct = (h, k >> 1) switch { (0, 0) => sc0, (0, _) => sc1, (1, 0) => sc2, _ => sc3 };
                    int j = 2 * (k & 1);                                      // scale 8h + 2k is byte 2(k & 1) of sct
                    byte* xl = xs + 128 * h + 32 * k;
                    Vector512<byte> u0, u1, u2, u3, u4, u5, u6, u7;
                    if (k == 0)
                    {
                        u0 = Lo6(a0, g0, m4, m30, 4); u1 = Lo6(a1, g1, m4, m30, 4); u2 = Lo6(a2, g2, m4, m30, 4); u3 = Lo6(a3, g3, m4, m30, 4);
                        u4 = Lo6(a4, g4, m4, m30, 4); u5 = Lo6(a5, g5, m4, m30, 4); u6 = Lo6(a6, g6, m4, m30, 4); u7 = Lo6(a7, g7, m4, m30, 4);
                    }
                    else if (k == 1)
                    {
                        u0 = Lo6(c0, g0, m4, m30, 2); u1 = Lo6(c1, g1, m4, m30, 2); u2 = Lo6(c2, g2, m4, m30, 2); u3 = Lo6(c3, g3, m4, m30, 2);
                        u4 = Lo6(c4, g4, m4, m30, 2); u5 = Lo6(c5, g5, m4, m30, 2); u6 = Lo6(c6, g6, m4, m30, 2); u7 = Lo6(c7, g7, m4, m30, 2);
                    }
                    else if (k == 2)
                    {
                        u0 = Hi6(a0, g0, m4, m30, 0); u1 = Hi6(a1, g1, m4, m30, 0); u2 = Hi6(a2, g2, m4, m30, 0); u3 = Hi6(a3, g3, m4, m30, 0);
                        u4 = Hi6(a4, g4, m4, m30, 0); u5 = Hi6(a5, g5, m4, m30, 0); u6 = Hi6(a6, g6, m4, m30, 0); u7 = Hi6(a7, g7, m4, m30, 0);
                    }
                    else
                    {
                        u0 = Hi6(c0, g0, m4, m30, 2); u1 = Hi6(c1, g1, m4, m30, 2); u2 = Hi6(c2, g2, m4, m30, 2); u3 = Hi6(c3, g3, m4, m30, 2);
                        u4 = Hi6(c4, g4, m4, m30, 2); u5 = Hi6(c5, g5, m4, m30, 2); u6 = Hi6(c6, g6, m4, m30, 2); u7 = Hi6(c7, g7, m4, m30, 2);
                    }
                    SubBlock6(u0, u1, u2, u3, SignedScale2(sct, 8 * j), xl, xStride, B, isum);
                    SubBlock6(u4, u5, u6, u7, SignedScale2(sct, 8 * j + 8), xl + 16, xStride, B, isum);
                }
            }
            // the 32s taken back: 32·Σ_j scale_j·bsum_j, scales 2p and 2p + 1 as the two int16 halves of each lane
            var sp0 = SignedBytePair(sc0, 0); var sp1 = SignedBytePair(sc0, 16); var sp2 = SignedBytePair(sc1, 0); var sp3 = SignedBytePair(sc1, 16);
            var sp4 = SignedBytePair(sc2, 0); var sp5 = SignedBytePair(sc2, 16); var sp6 = SignedBytePair(sc3, 0); var sp7 = SignedBytePair(sc3, 16);
            byte* xa = xs;
            for (int b = 0; b < B; b++, xa += xStride)
            {
                var corr = BsumDot(sp0, sp1, sp2, sp3, sp4, sp5, sp6, sp7, (int*)(xa + RowKernels.Q8KSums));
                var total = isum[b] - Vector512.ShiftLeft(corr, 5);
                acc[b] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(total), Vector512.Create(*(float*)(xa + RowKernels.Q8KScale)) * d, acc[b]);
            }
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>Q6_K values from low nibbles: (q &amp; 15) | bits 2k, 2k + 1 of the qh bytes moved to bits 4–5 by a left shift
    /// of <paramref name="up"/> (4 for k = 0, 2 for k = 1; bits crossing into the next byte are masked off).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Lo6(Vector512<int> q, Vector512<int> qh, Vector512<byte> m4, Vector512<byte> m30, [ConstantExpected] byte up)
        => (q.AsByte() & m4) | (Vector512.ShiftLeft(qh.AsUInt16(), up).AsByte() & m30);

    /// <summary>Q6_K values from high nibbles: (q &gt;&gt; 4) | bits 2k, 2k + 1 of qh moved to bits 4–5 by a right shift of
    /// <paramref name="down"/> (0 for k = 2, 2 for k = 3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Hi6(Vector512<int> q, Vector512<int> qh, Vector512<byte> m4, Vector512<byte> m30, [ConstantExpected] byte down)
        => (Vector512.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & m4) | (Vector512.ShiftRightLogical(qh.AsUInt16(), down).AsByte() & m30);

    /// <summary>The signed byte at bit <paramref name="shift"/> of each lane in both int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> SignedScale2(Vector512<int> v, int shift)
    {
        var s = Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(v, 24 - shift), 24);
        return ((s & Vector512.Create(0xFFFF)) | Vector512.ShiftLeft(s, 16)).AsInt16();
    }

    /// <summary>The signed bytes at bit <paramref name="shift"/> and shift + 8 of each lane as the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> SignedBytePair(Vector512<int> v, [ConstantExpected] int shift)
    {
        var lo = Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(v, 24 - shift), 24);
        var hi = Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(v, 16 - shift), 24);
        return ((lo & Vector512.Create(0xFFFF)) | Vector512.ShiftLeft(hi, 16)).AsInt16();
    }

    /// <summary>Sixteen Q6_K values of the sixteen rows (four steps of four, each ≤ 63) against B Q8_K activation rows (the
    /// values' activations at xb + b·xStride): isum[b] += scale · Σ v·a per lane, two steps added in int16 at a time.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void SubBlock6(Vector512<byte> v0, Vector512<byte> v1, Vector512<byte> v2, Vector512<byte> v3, Vector512<short> scale2,
        byte* xb, int xStride, int B, Vector512<int>* isum)
    {
        for (int b = 0; b < B; b++, xb += xStride)
        {
            var t01 = Avx512BW.MultiplyAddAdjacent(v0, Vector512.Create(*(int*)xb).AsSByte())
                    + Avx512BW.MultiplyAddAdjacent(v1, Vector512.Create(*(int*)(xb + 4)).AsSByte());
            var t23 = Avx512BW.MultiplyAddAdjacent(v2, Vector512.Create(*(int*)(xb + 8)).AsSByte())
                    + Avx512BW.MultiplyAddAdjacent(v3, Vector512.Create(*(int*)(xb + 12)).AsSByte());
            isum[b] += Avx512BW.MultiplyAddAdjacent(t01, scale2) + Avx512BW.MultiplyAddAdjacent(t23, scale2);
        }
    }

    /// <summary>One Q4_K chunk (32 bytes per row as q0 … q7, lane k = row k's bytes 4t … 4t+3) against B activation rows:
    /// the low nibbles (sub-block j) meet the 32 activations at xl, the high nibbles (j + 1) those at xl + 64; isum[b] +=
    /// sLo · Σ lo·a + sHi · Σ hi·a per lane. Q4_K adds each sub-block's eight steps of four values in int16 (at most
    /// 8·2·15·128 = 30720), then one <c>vpmaddwd</c> by the scale. Q5_K (<typeparamref name="T"/>.Fifth) gives each
    /// nibble its fifth bit as 16 (bit j of the transposed qh bytes h0 … h7 for the low nibbles, bit j + 1 for the high),
    /// values 0–31, so it adds four steps at a time (at most 4·2·31·128 = 31744), each four then one <c>vpmaddwd</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Chunk<T>(Vector512<byte> q0, Vector512<byte> q1, Vector512<byte> q2, Vector512<byte> q3, Vector512<byte> q4,
        Vector512<byte> q5, Vector512<byte> q6, Vector512<byte> q7, Vector512<byte> h0, Vector512<byte> h1, Vector512<byte> h2,
        Vector512<byte> h3, Vector512<byte> h4, Vector512<byte> h5, Vector512<byte> h6, Vector512<byte> h7, int j,
        Vector512<byte> m4, Vector512<byte> m16, Vector512<short> sLo, Vector512<short> sHi, byte* xl, int xStride, int B, Vector512<int>* isum)
        where T : RowKernels.IK45
    {
        var l0 = q0 & m4; var l1 = q1 & m4; var l2 = q2 & m4; var l3 = q3 & m4;
        var l4 = q4 & m4; var l5 = q5 & m4; var l6 = q6 & m4; var l7 = q7 & m4;
        var u0 = Vector512.ShiftRightLogical(q0.AsUInt16(), 4).AsByte() & m4; var u1 = Vector512.ShiftRightLogical(q1.AsUInt16(), 4).AsByte() & m4;
        var u2 = Vector512.ShiftRightLogical(q2.AsUInt16(), 4).AsByte() & m4; var u3 = Vector512.ShiftRightLogical(q3.AsUInt16(), 4).AsByte() & m4;
        var u4 = Vector512.ShiftRightLogical(q4.AsUInt16(), 4).AsByte() & m4; var u5 = Vector512.ShiftRightLogical(q5.AsUInt16(), 4).AsByte() & m4;
        var u6 = Vector512.ShiftRightLogical(q6.AsUInt16(), 4).AsByte() & m4; var u7 = Vector512.ShiftRightLogical(q7.AsUInt16(), 4).AsByte() & m4;
        if (T.Fifth)
        {
            l0 |= Fifth(h0, j, m16); l1 |= Fifth(h1, j, m16); l2 |= Fifth(h2, j, m16); l3 |= Fifth(h3, j, m16);
            l4 |= Fifth(h4, j, m16); l5 |= Fifth(h5, j, m16); l6 |= Fifth(h6, j, m16); l7 |= Fifth(h7, j, m16);
            u0 |= Fifth(h0, j + 1, m16); u1 |= Fifth(h1, j + 1, m16); u2 |= Fifth(h2, j + 1, m16); u3 |= Fifth(h3, j + 1, m16);
            u4 |= Fifth(h4, j + 1, m16); u5 |= Fifth(h5, j + 1, m16); u6 |= Fifth(h6, j + 1, m16); u7 |= Fifth(h7, j + 1, m16);
        }
        for (int b = 0; b < B; b++, xl += xStride)
        {
            int* a = (int*)xl;
            var ta = (Avx512BW.MultiplyAddAdjacent(l0, Vector512.Create(a[0]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(l1, Vector512.Create(a[1]).AsSByte()))
                   + (Avx512BW.MultiplyAddAdjacent(l2, Vector512.Create(a[2]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(l3, Vector512.Create(a[3]).AsSByte()));
            var tb = (Avx512BW.MultiplyAddAdjacent(l4, Vector512.Create(a[4]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(l5, Vector512.Create(a[5]).AsSByte()))
                   + (Avx512BW.MultiplyAddAdjacent(l6, Vector512.Create(a[6]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(l7, Vector512.Create(a[7]).AsSByte()));
            var tc = (Avx512BW.MultiplyAddAdjacent(u0, Vector512.Create(a[16]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(u1, Vector512.Create(a[17]).AsSByte()))
                   + (Avx512BW.MultiplyAddAdjacent(u2, Vector512.Create(a[18]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(u3, Vector512.Create(a[19]).AsSByte()));
            var td = (Avx512BW.MultiplyAddAdjacent(u4, Vector512.Create(a[20]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(u5, Vector512.Create(a[21]).AsSByte()))
                   + (Avx512BW.MultiplyAddAdjacent(u6, Vector512.Create(a[22]).AsSByte()) + Avx512BW.MultiplyAddAdjacent(u7, Vector512.Create(a[23]).AsSByte()));
            if (T.Fifth)
                isum[b] += (Avx512BW.MultiplyAddAdjacent(ta, sLo) + Avx512BW.MultiplyAddAdjacent(tb, sLo))
                         + (Avx512BW.MultiplyAddAdjacent(tc, sHi) + Avx512BW.MultiplyAddAdjacent(td, sHi));
            else
                isum[b] += Avx512BW.MultiplyAddAdjacent(ta + tb, sLo) + Avx512BW.MultiplyAddAdjacent(tc + td, sHi);
        }
    }

    /// <summary>Bit <paramref name="j"/> of every byte moved to bit 4 (16 where it is set, else 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Fifth(Vector512<byte> h, int j, Vector512<byte> m16) =>
        (j <= 4 ? Vector512.ShiftLeft(h.AsUInt16(), 4 - j) : Vector512.ShiftRightLogical(h.AsUInt16(), j - 4)).AsByte() & m16;

    /// <summary>Bytes at bit <paramref name="shift"/> and shift + 8 of each lane as the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> BytePair(Vector512<int> v, [ConstantExpected] int shift)
    {
        var s = Vector512.ShiftRightLogical(v, shift);
        return ((s & Vector512.Create(0xFF)) | Vector512.ShiftLeft(Vector512.ShiftRightLogical(s, 8) & Vector512.Create(0xFF), 16)).AsInt16();
    }

    /// <summary>Bytes at bit <paramref name="shift"/> and shift + 8 of each lane (two Q3_K scales + 32) less 32, as the
    /// lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> ScalePair(Vector512<int> sc, [ConstantExpected] int shift) => BytePair(sc, shift) - Vector512.Create((short)32);

    /// <summary>One K-quant sub-block (16 values, four steps of four) of the sixteen rows against B Q8_K activation rows
    /// (the sub-block's quants at xb + b·xStride): isum[b] += scale · Σ v·a per lane, the steps added in int16 first.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void SubBlock(Vector512<byte> v0, Vector512<byte> v1, Vector512<byte> v2, Vector512<byte> v3, Vector512<short> scale2,
        byte* xb, int xStride, int B, Vector512<int>* isum)
    {
        for (int b = 0; b < B; b++, xb += xStride)
        {
            var t = Avx512BW.MultiplyAddAdjacent(v0, Vector512.Create(*(int*)xb).AsSByte())
                  + Avx512BW.MultiplyAddAdjacent(v1, Vector512.Create(*(int*)(xb + 4)).AsSByte());
            t += Avx512BW.MultiplyAddAdjacent(v2, Vector512.Create(*(int*)(xb + 8)).AsSByte())
               + Avx512BW.MultiplyAddAdjacent(v3, Vector512.Create(*(int*)(xb + 12)).AsSByte());
            isum[b] += Avx512BW.MultiplyAddAdjacent(t, scale2);
        }
    }

    /// <summary>Σ_j c_j·bsum_j per lane: c_2p, c_2p+1 the int16 halves of <paramref name="c0"/> … <paramref name="c7"/>,
    /// bsums the activation's sixteen int16 sub-block sums (as eight words at <paramref name="bs"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<int> BsumDot(Vector512<short> c0, Vector512<short> c1, Vector512<short> c2, Vector512<short> c3,
        Vector512<short> c4, Vector512<short> c5, Vector512<short> c6, Vector512<short> c7, int* bs)
    {
        var r = (Avx512BW.MultiplyAddAdjacent(c0, Vector512.Create(bs[0]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(c1, Vector512.Create(bs[1]).AsInt16()))
              + (Avx512BW.MultiplyAddAdjacent(c2, Vector512.Create(bs[2]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(c3, Vector512.Create(bs[3]).AsInt16()));
        return r + (Avx512BW.MultiplyAddAdjacent(c4, Vector512.Create(bs[4]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(c5, Vector512.Create(bs[5]).AsInt16()))
                 + (Avx512BW.MultiplyAddAdjacent(c6, Vector512.Create(bs[6]).AsInt16()) + Avx512BW.MultiplyAddAdjacent(c7, Vector512.Create(bs[7]).AsInt16()));
    }

    /// <summary>The high nibbles of bytes at bit <paramref name="shift"/> and shift + 8 of each lane (two Q2_K mins) as
    /// the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> MinPair(Vector512<int> sc, [ConstantExpected] int shift)
    {
        var m = Vector512.ShiftRightLogical(sc, shift + 4) & Vector512.Create(0x0F0F); // [min lo | 0 | min hi | …] in bytes 0, 1
        return ((m & Vector512.Create(0x0F)) | Vector512.ShiftLeft(m & Vector512.Create(0x0F00), 8)).AsInt16();
    }

    /// <summary>16 bytes at each of sixteen pointers as four registers: register t, lane k = bytes 4t … 4t+3 at pointer k.
    /// Four rows per 64-byte register, then <c>vpermt2d</c> takes dwords t and t + 1 of eight rows, <c>vshufi64x2</c> joins
    /// rows 0–7 and 8–15.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Transpose16(byte* a0, byte* a1, byte* a2, byte* a3, byte* a4, byte* a5, byte* a6, byte* a7,
        byte* a8, byte* a9, byte* a10, byte* a11, byte* a12, byte* a13, byte* a14, byte* a15, Vector512<int> pick01, Vector512<int> pick23,
        out Vector512<int> t0, out Vector512<int> t1, out Vector512<int> t2, out Vector512<int> t3)
    {
        var r0 = Load4(a0, a1, a2, a3);
        var r1 = Load4(a4, a5, a6, a7);
        var r2 = Load4(a8, a9, a10, a11);
        var r3 = Load4(a12, a13, a14, a15);
        var x01 = Avx512F.PermuteVar16x32x2(r0, pick01, r1);
        var x23 = Avx512F.PermuteVar16x32x2(r0, pick23, r1);
        var y01 = Avx512F.PermuteVar16x32x2(r2, pick01, r3);
        var y23 = Avx512F.PermuteVar16x32x2(r2, pick23, r3);
        t0 = Avx512F.Shuffle4x128(x01, y01, 0x44);
        t1 = Avx512F.Shuffle4x128(x01, y01, 0xEE);
        t2 = Avx512F.Shuffle4x128(x23, y23, 0x44);
        t3 = Avx512F.Shuffle4x128(x23, y23, 0xEE);
    }

    /// <summary>The sixteen row pointers of a group of <paramref name="rows"/> (1–16; rows past the last repeat it) and their
    /// byte offsets from row 0, for the gathers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Group16(byte* w, long rowBytes, int rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4,
        out byte* p5, out byte* p6, out byte* p7, out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13,
        out byte* p14, out byte* p15, out Vector256<int> offLo, out Vector256<int> offHi)
    {
        Rows8(w, rowBytes, Math.Min(rows, 8), out p0, out p1, out p2, out p3, out p4, out p5, out p6, out p7);
        if (rows > 8) Rows8(w + 8 * rowBytes, rowBytes, rows - 8, out p8, out p9, out p10, out p11, out p12, out p13, out p14, out p15);
        else p8 = p9 = p10 = p11 = p12 = p13 = p14 = p15 = p7;
        offLo = Vector256.Create(0, (int)(p1 - w), (int)(p2 - w), (int)(p3 - w), (int)(p4 - w), (int)(p5 - w), (int)(p6 - w), (int)(p7 - w));
        offHi = Vector256.Create((int)(p8 - w), (int)(p9 - w), (int)(p10 - w), (int)(p11 - w), (int)(p12 - w), (int)(p13 - w), (int)(p14 - w), (int)(p15 - w));
    }

    /// <summary>Lanes [0, rows) of acc[b] to y[b·yStride …] for each of the B activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Store16(Vector512<float>* acc, int B, int rows, float* y, int yStride)
    {
        for (int b = 0; b < B; b++)
        {
            float* yb = y + (long)b * yStride;
            if (rows == 16) acc[b].Store(yb);
            else for (int k = 0; k < rows; k++) yb[k] = acc[b].GetElement(k);
        }
    }

    /// <summary>The 32-bit words at p + off[k] for the sixteen rows (two AVX2 gathers: .NET 10 has no 512-bit one).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<int> Gather16(byte* p, Vector256<int> offLo, Vector256<int> offHi) =>
        Vector512.Create(Avx2.GatherVector256((int*)p, offLo, 1), Avx2.GatherVector256((int*)p, offHi, 1));

    /// <summary>The F16 in the low half of each lane × 2^-112 as a float, exact (<see cref="Scales8"/>'s steps).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> HalfBits(Vector512<int> h) =>
        (Avx512F.ShiftRightArithmetic(Avx512F.ShiftLeftLogical(h, 16), 3) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>16 in byte j of lane k where bit 4s + j of lane k's qh is set: byte s / 2 of the lane repeated four
    /// times, tested against 1, 2, 4, 8 (s even) or 16, 32, 64, 128 (s odd).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> FifthBits(Vector512<byte> qh, int s)
    {
        var pick = Vector512.Create((uint)(s >> 1) * 0x01010101u) + Vector512.Create(0u, 0x04040404, 0x08080808, 0x0C0C0C0C, 0, 0x04040404, 0x08080808, 0x0C0C0C0C,
            0, 0x04040404, 0x08080808, 0x0C0C0C0C, 0, 0x04040404, 0x08080808, 0x0C0C0C0C);
        var bit = Vector512.Create(0x08040201u << (4 * (s & 1))).AsByte();
        return Vector512.Equals(Avx512BW.Shuffle(qh, pick.AsByte()) & bit, bit) & Vector512.Create((byte)0x10);
    }

    /// <summary>[16 bytes at a | at b | at c | at d] as sixteen int32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector512<int> Load4(byte* a, byte* b, byte* c, byte* d) =>
        Vector512.Create(Vector256.Create(Vector128.Load((int*)a), Vector128.Load((int*)b)), Vector256.Create(Vector128.Load((int*)c), Vector128.Load((int*)d)));
}
