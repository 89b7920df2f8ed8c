using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// IQ4_XS weight rows for <see cref="RowKernels"/> (decode, pairs of rows, four activation rows): activations in the
/// <b>pair layout</b> of <see cref="PermuteQ8KForIQ4XS"/>, ggml's block_q8_K (292 B: d f32 | qs[256] | bsums[16] i16)
/// with each 64 quants of sub-blocks (2p, 2p + 1) reordered to (2p: 0–15, 2p+1: 0–15, 2p: 16–31, 2p+1: 16–31). Then one
/// 32-byte load of weight indices qs[32p…] splits into its low nibbles (both sub-blocks' values 0–15) and high nibbles
/// (16–31), each matching 32 activation bytes: two sub-blocks per step, not one.
/// <para>With AVX-VNNI a level is looked up as level + 128 (an unsigned byte) and multiplied by vpdpbusd, and the
/// excess 128·Σq of each sub-block is taken off once per super-block from the Q8_K block sums (the sign trick would
/// need two more instructions per vector). Without VNNI the sign trick multiplies. Either way the integers are exact,
/// so the dot equals <see cref="VecDot.DotScalar"/>'s up to the float summation order; the lanes hold other partial
/// sums than <see cref="VecDot.Dot"/>'s kernel, so their bits differ from it, while every RowKernels path (one row,
/// pairs, four rows) runs <see cref="IQ4XSPairStep"/> and gives the same bits.</para>
/// <para>Two families: on AVX2 machines the <b>lane family</b> above (eight float lanes per row, prefill four activation
/// rows per weight row); on AVX-512 machines (<see cref="Rows16"/>) the <b>exact family</b> — the same integers summed
/// to the super-block's exact isum, one float chain per row — whose prefill runs sixteen weight rows in lanes
/// (<see cref="DotIQ4XSRows16Avx512"/>).</para>
/// </summary>
public static partial class VecDot
{
    /// <summary>Reorders each Q8_K block's quants (292 B blocks, qs at 4) into the pair layout: in every 64-byte group the
    /// middle two 16-byte pieces swap. The block sums stay those of the original order (16 consecutive quants each).</summary>
    internal static unsafe void PermuteQ8KForIQ4XS(byte* y, int nb)
    {
        for (int k = 0; k < nb; k++)
            for (int p = 0; p < 4; p++)
            {
                byte* g = y + k * 292 + 4 + 64 * p;
                var a1 = Vector128.Load(g + 16);
                var b0 = Vector128.Load(g + 32);
                b0.Store(g + 16);
                a1.Store(g + 32);
            }
    }

    /// <summary>Which multiply the IQ4_XS row kernels use: AVX-VNNI's vpdpbusd on levels + 128 (<see cref="HasVnni"/>, what
    /// the machine has) or the sign trick (<see cref="NoVnni"/>). A constant per instantiation, so each keeps one branch.</summary>
    internal interface IVnniChoice { static abstract bool Use { get; } }
    internal readonly struct HasVnni : IVnniChoice { public static bool Use => AvxVnni.IsSupported; }
    internal readonly struct NoVnni : IVnniChoice { public static bool Use => false; }

    /// <summary>The IQ4 levels + 128 as unsigned bytes (1 … 241), in both 128-bit lanes (VNNI path).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> IQ4LevelTableU8() => Vector256.Create(
        (byte)1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241,
        1, 24, 45, 63, 79, 93, 106, 118, 129, 141, 153, 166, 181, 197, 217, 241);

    /// <summary>
    /// One IQ4_XS super-block x (136 B) against one pair-layout Q8_K block y: acc + d·d8 · Σ_ib (ls_ib − 32)·Σ level·q.
    /// Per step p the lanes 0–3 hold sub-block 2p's partial sums and 4–7 sub-block 2p + 1's, scaled by their own ls.
    /// Integers stay below 2^25 in every lane (4 steps · 32 · 2 · 4 · 241 · 127).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> IQ4XSPairStep<TVnni>(byte* x, byte* y, ref float f16) where TVnni : IVnniChoice
        => Vector256.ConvertToSingle(IQ4XSSumi<TVnni>(x, y)) * Vector256.Create(Unsafe.Add(ref f16, *(ushort*)x) * *(float*)y);

    /// <summary><see cref="IQ4XSPairStep"/>'s integers: eight int32 lanes, exact, whose sum is the super-block's
    /// isum = Σ_ib (ls_ib − 32)·Σ level·q.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> IQ4XSSumi<TVnni>(byte* x, byte* y) where TVnni : IVnniChoice
    {
        var lsv = IQ4XSScales(x);
        // written out step by step with constant permutes: as a loop over p the JIT built each step's permute index with
        // eight vpinsrd and kept the loop (kernel-micro --type iq4_xs --pair: 8–12 GB/s in L2, Q4_K's kernel 32)
        var sumi = IQ4XSPair<TVnni>(x + 8, y + 4, lsv, Vector256.Create(0, 0, 0, 0, 1, 1, 1, 1));
        sumi += IQ4XSPair<TVnni>(x + 40, y + 68, lsv, Vector256.Create(2, 2, 2, 2, 3, 3, 3, 3));
        sumi += IQ4XSPair<TVnni>(x + 72, y + 132, lsv, Vector256.Create(4, 4, 4, 4, 5, 5, 5, 5));
        sumi += IQ4XSPair<TVnni>(x + 104, y + 196, lsv, Vector256.Create(6, 6, 6, 6, 7, 7, 7, 7));
        if (TVnni.Use)
        {
            // lane ib: ls_ib · (bsum 2ib + bsum 2ib+1) = ls_ib · Σq of sub-block ib; 128 times that was added above
            var lsTwice = ScaleTwice(lsv);
            sumi -= Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y + 260)), lsTwice) << 7;
        }
        return sumi;
    }

    /// <summary>Step p of <see cref="IQ4XSPairStep"/>: 32 bytes of weight indices (sub-blocks 2p, 2p + 1) against 64
    /// activation bytes, lanes 0–3 scaled by ls_2p and 4–7 by ls_2p+1 (<paramref name="pick"/> selects them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> IQ4XSPair<TVnni>(byte* qs, byte* a, Vector256<int> lsv, Vector256<int> pick) where TVnni : IVnniChoice
    {
        var m4 = Vector256.Create((byte)0x0F);
        var v = Vector256.Load(qs);
        var lo = v & m4;
        var hi = Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & m4;
        var table = IQ4LevelTableFor<TVnni>();
        return IQ4XSLevelsDot<TVnni>(Avx2.Shuffle(table, lo), Avx2.Shuffle(table, hi), a) * Avx2.PermuteVar8x32(lsv, pick);
    }

    /// <summary>Each int32 lane's value (|v| &lt; 2^15) in both of its int16 halves, for <c>vpmaddwd</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> ScaleTwice(Vector256<int> v) => (v << 16 | (v & Vector256.Create(0xFFFF))).AsInt16();

    /// <summary>An IQ4_XS super-block's eight 6-bit scales − 32 as int32 lanes: low four bits from scales_l (4·ib), high
    /// two from scales_h (2·ib).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> IQ4XSScales(byte* x) =>
        ((Avx2.ShiftRightLogicalVariable(Vector256.Create(*(uint*)(x + 4)), Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28)) & Vector256.Create(0xFu))
         | ((Avx2.ShiftRightLogicalVariable(Vector256.Create((uint)*(ushort*)(x + 2)), Vector256.Create(0u, 2, 4, 6, 8, 10, 12, 14)) & Vector256.Create(3u)) << 4)).AsInt32()
        - Vector256.Create(32);

    /// <summary>The level table a multiply variant looks indices up in: levels + 128 as unsigned bytes (VNNI) or the
    /// signed levels (sign trick).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> IQ4LevelTableFor<TVnni>() where TVnni : IVnniChoice => TVnni.Use ? IQ4LevelTableU8() : IQ4LevelTable().AsByte();

    /// <summary>Two sub-blocks' levels (lo: their values 0–15, hi: 16–31, from <see cref="IQ4LevelTableFor{TVnni}"/>)
    /// against the 64 activation bytes at a: vpdpbusd on levels + 128 (the excess taken off by the caller from the block
    /// sums), or the sign trick; eight int32 lanes, exact.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> IQ4XSLevelsDot<TVnni>(Vector256<byte> lo, Vector256<byte> hi, byte* a) where TVnni : IVnniChoice
    {
        var qa = Vector256.Load((sbyte*)a);
        var qb = Vector256.Load((sbyte*)(a + 32));
        return TVnni.Use
            ? AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, lo, qa), hi, qb)
            : DotI8I8(lo.AsSByte(), qa) + DotI8I8(hi.AsSByte(), qb);
    }

    /// <summary>One IQ4_XS row against one pair-layout activation row (<see cref="RowKernels"/>' decode).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotIQ4XSRow(byte* x, byte* y, int nb) => DotIQ4XSRow<HasVnni>(x, y, nb);

    /// <summary><see cref="DotIQ4XSRow(byte*, byte*, int)"/> with the VNNI choice made by the caller (tests run the
    /// sign-trick branch on a VNNI machine too).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotIQ4XSRow<TVnni>(byte* x, byte* y, int nb) where TVnni : IVnniChoice
    {
        Vector256<float> acc = default;
        ref float f16 = ref Fp16.TableStart;
        for (int i = 0; i < nb; i++)
        {
            PrefetchIQ4XS(x + i * 136);
            acc += IQ4XSPairStep<TVnni>(x + i * 136, y + i * 292, ref f16);
        }
        return Vector256.Sum(acc);
    }

    /// <summary><see cref="DotIQ4XSRow"/> on two weight rows far apart (two memory streams, which one core reads faster
    /// than one) against the same activations; each result has the one-row kernel's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static unsafe void DotIQ4XSRowPair(byte* xa, byte* xb, byte* y, int nb, out float ya, out float yb)
        => DotIQ4XSRowPair<HasVnni>(xa, xb, y, nb, out ya, out yb);

    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static unsafe void DotIQ4XSRowPair<TVnni>(byte* xa, byte* xb, byte* y, int nb, out float ya, out float yb) where TVnni : IVnniChoice
    {
        Vector256<float> accA = default, accB = default;
        ref float f16 = ref Fp16.TableStart;
        for (int i = 0; i < nb; i++)
        {
            PrefetchIQ4XS(xa + i * 136);
            PrefetchIQ4XS(xb + i * 136);
            accA += IQ4XSPairStep<TVnni>(xa + i * 136, y + i * 292, ref f16);
            accB += IQ4XSPairStep<TVnni>(xb + i * 136, y + i * 292, ref f16);
        }
        ya = Vector256.Sum(accA);
        yb = Vector256.Sum(accB);
    }

    // ---- the exact family (AVX-512 machines, VecDot.Rows16): per super-block the exact isum (IQ4XSSumi's lanes summed),
    // then one float chain per row, S = fma(isum, d·d8, S) — the arithmetic of the sixteen-row prefill kernel
    // (DotIQ4XSRows16Avx512, rows in lanes), so decode and prefill give the same bits. (The lane family above keeps
    // eight float lanes per row: AVX2 machines, where prefill runs four activation rows per weight row.)

    /// <summary>One IQ4_XS row against one pair-layout activation row, the exact family: two super-blocks per step, their
    /// lanes folded together (<see cref="SumPair"/>), each meeting the chain in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotIQ4XSRowExact<TVnni>(byte* x, byte* y, int nb) where TVnni : IVnniChoice
    {
        float acc = 0;
        ref float f16 = ref Fp16.TableStart;
        int i = 0;
        for (; i + 2 <= nb; i += 2, x += 272, y += 584)
        {
            PrefetchIQ4XS(x); PrefetchIQ4XS(x + 136);
            var f = SumPair(IQ4XSSumi<TVnni>(x, y), IQ4XSSumi<TVnni>(x + 136, y + 292));
            acc = MathF.FusedMultiplyAdd(f.ToScalar(), Unsafe.Add(ref f16, *(ushort*)x) * *(float*)y, acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(1), Unsafe.Add(ref f16, *(ushort*)(x + 136)) * *(float*)(y + 292), acc);
        }
        if (i < nb)
        {
            var si = IQ4XSSumi<TVnni>(x, y);
            acc = MathF.FusedMultiplyAdd(SumPair(si, si).ToScalar(), Unsafe.Add(ref f16, *(ushort*)x) * *(float*)y, acc);
        }
        return acc;
    }

    /// <summary><see cref="DotIQ4XSRowExact{TVnni}"/> on two weight rows far apart, their folds shared; each result has
    /// the one-row kernel's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static unsafe void DotIQ4XSRowPairExact<TVnni>(byte* xa, byte* xb, byte* y, int nb, out float ya, out float yb) where TVnni : IVnniChoice
    {
        var acc = Vector128<float>.Zero; // [S of row a, S of row b, ·, ·]
        ref float f16 = ref Fp16.TableStart;
        for (int i = 0; i < nb; i++, xa += 136, xb += 136, y += 292)
        {
            PrefetchIQ4XS(xa); PrefetchIQ4XS(xb);
            var f = SumPair(IQ4XSSumi<TVnni>(xa, y), IQ4XSSumi<TVnni>(xb, y));
            acc = Fma.MultiplyAdd(f, Vector128.Create(Unsafe.Add(ref f16, *(ushort*)xa), Unsafe.Add(ref f16, *(ushort*)xb), 0f, 0f) * Vector128.Create(*(float*)y), acc);
        }
        ya = acc.ToScalar();
        yb = acc.GetElement(1);
    }

    /// <summary>
    /// IQ4_XS rows [0, rows) (rows ≤ 16; 136 B: d | scales_h | scales_l[4] | qs[128]) against B ≤
    /// <see cref="RowKernels.Rows16Tile"/> activation rows in the pair layout (<see cref="PermuteQ8KForIQ4XS"/>), rows in
    /// lanes as <see cref="DotQ4KRows16Avx512{T}"/>. Per sub-block its 16 bytes of qs are transposed (four registers of
    /// four bytes per lane), each nibble becomes its level by one table shuffle, and the signed·signed product is
    /// |level| · (a with the level's sign): <c>vpmaddubsw</c> (pairs at most 2·127·127, so each is widened at once by
    /// <c>vpmaddwd</c> against the sub-block's scale ls − 32). Per row the arithmetic is the exact family's
    /// (<see cref="DotIQ4XSRowExact{TVnni}"/>): the exact isum of each super-block, then S = fma(isum, d8·d, S).
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotIQ4XSRows16Avx512(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector512<float>* acc, Vector512<int>* isum)
    {
        Group16(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7,
            out byte* p8, out byte* p9, out byte* p10, out byte* p11, out byte* p12, out byte* p13, out byte* p14, out byte* p15, out var offLo, out var offHi);
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        byte* next = w + 16 * rowBytes;
        var m4 = Vector512.Create((byte)0x0F);
        var table = Vector512.Create(IQ4LevelTable(), IQ4LevelTable()); // the sixteen levels in every 128-bit lane
        var pick01 = Vector512.Create(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
        var pick23 = pick01 + Vector512.Create(2);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 136;
            byte* pf = next + 16 * o; // the next group's sixteen rows: 16 · 136 B per super-block
            for (int l = 0; l < 16 * 136; l += 64) Sse.Prefetch0(pf + l);
            var head = Gather16(w + o, offLo, offHi);                                  // d | scales_h
            var scalesL = Gather16(w + o + 4, offLo, offHi);                           // scales_l[4]
            var d = RowKernels.HalfToSingle(Avx512F.ShiftRightArithmetic(Avx512F.ShiftLeftLogical(head, 16), 16));
            var scalesH = Vector512.ShiftRightLogical(head, 16);
            for (int b = 0; b < B; b++) isum[b] = Vector512<int>.Zero;
            for (int ib = 0; ib < 8; ib++)
            {
                var ls = ((Vector512.ShiftRightLogical(scalesL, 4 * ib) & Vector512.Create(0xF))
                          | Vector512.ShiftLeft(Vector512.ShiftRightLogical(scalesH, 2 * ib) & Vector512.Create(3), 4)) - Vector512.Create(32);
                var scale2 = ((ls & Vector512.Create(0xFFFF)) | Vector512.ShiftLeft(ls, 16)).AsInt16();
                int q = o + 8 + 16 * ib;
                Transpose16(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, p8 + q, p9 + q, p10 + q, p11 + q,
                    p12 + q, p13 + q, p14 + q, p15 + q, pick01, pick23, out var t0, out var t1, out var t2, out var t3);
                // levels of values 4t … 4t+3 (low nibbles) and 16 + 4t … (high nibbles): their magnitudes and signs
                Levels(t0.AsByte() & m4, table, out var u0, out var n0); Levels(t1.AsByte() & m4, table, out var u1, out var n1);
                Levels(t2.AsByte() & m4, table, out var u2, out var n2); Levels(t3.AsByte() & m4, table, out var u3, out var n3);
                Levels(Vector512.ShiftRightLogical(t0.AsUInt16(), 4).AsByte() & m4, table, out var u4, out var n4);
                Levels(Vector512.ShiftRightLogical(t1.AsUInt16(), 4).AsByte() & m4, table, out var u5, out var n5);
                Levels(Vector512.ShiftRightLogical(t2.AsUInt16(), 4).AsByte() & m4, table, out var u6, out var n6);
                Levels(Vector512.ShiftRightLogical(t3.AsUInt16(), 4).AsByte() & m4, table, out var u7, out var n7);
                // sub-block ib's activations in the pair layout: values 0–15 at 4 + 64·(ib / 2) + 16·(ib % 2), 16–31 32 bytes on
                byte* xa = x + (long)sb * 292 + 4 + 64 * (ib >> 1) + 16 * (ib & 1);
                for (int b = 0; b < B; b++, xa += xStride)
                {
                    int* a = (int*)xa;
                    var s = (SignedStep(u0, n0, a[0], scale2) + SignedStep(u1, n1, a[1], scale2))
                          + (SignedStep(u2, n2, a[2], scale2) + SignedStep(u3, n3, a[3], scale2));
                    s += (SignedStep(u4, n4, a[8], scale2) + SignedStep(u5, n5, a[9], scale2))
                       + (SignedStep(u6, n6, a[10], scale2) + SignedStep(u7, n7, a[11], scale2));
                    isum[b] += s;
                }
            }
            byte* xd = x + (long)sb * 292;
            for (int b = 0; b < B; b++, xd += xStride)
                acc[b] = Avx512F.FusedMultiplyAdd(Vector512.ConvertToSingle(isum[b]), Vector512.Create(*(float*)xd) * d, acc[b]);
        }
        Store16(acc, B, rows, y, yStride);
    }

    /// <summary>IQ4 levels of 4-bit indices (one shuffle of the table in every 128-bit lane) as magnitudes and sign masks
    /// (0xFF where the level is negative).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Levels(Vector512<byte> idx, Vector512<sbyte> table, out Vector512<byte> magnitude, out Vector512<sbyte> negative)
    {
        var level = Avx512BW.Shuffle(table, idx.AsSByte());
        magnitude = Avx512BW.Abs(level);
        negative = Vector512.LessThan(level, Vector512<sbyte>.Zero);
    }

    /// <summary>Four values of the sixteen rows against four activation bytes (broadcast): |level|·(±a), the sign the
    /// level's ((a ^ n) − n negates where n is all ones), pairs added by <c>vpmaddubsw</c> and widened with the scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> SignedStep(Vector512<byte> magnitude, Vector512<sbyte> negative, int a4, Vector512<short> scale2)
    {
        var a = Vector512.Create(a4).AsSByte();
        return Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(magnitude, (a ^ negative) - negative), scale2);
    }

    /// <summary><see cref="DotIQ4XSRow"/> for one weight row against four activation rows <paramref name="yStride"/>
    /// bytes apart (prefill): each super-block's scales and levels are decoded once for the four rows, and each row's
    /// integers and float steps are <see cref="IQ4XSPairStep"/>'s, so each result has the one-row kernel's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotIQ4XSRowX4(byte* x, byte* y, int yStride, int nb, float* outp, int outStride)
        => DotIQ4XSRowX4<HasVnni>(x, y, yStride, nb, outp, outStride);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotIQ4XSRowX4<TVnni>(byte* x, byte* y, int yStride, int nb, float* outp, int outStride) where TVnni : IVnniChoice
    {
        byte* y1 = y + yStride, y2 = y1 + yStride, y3 = y2 + yStride;
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
        ref float f16 = ref Fp16.TableStart;
        for (int i = 0; i < nb; i++)
        {
            byte* xb = x + i * 136;
            int yo = i * 292;
            var lsv = IQ4XSScales(xb);
            // one sub-block pair at a time, its levels shared by the four rows: all eight pairs' levels decoded first (the
            // kernel before) do not fit AVX2's sixteen ymm registers beside the accumulators and scales, and spilled
            // (gemm-micro --type iq4_xs, AVX-512 off: 19 → 50 G multiply-adds/s without VNNI, 36 → 60 with it)
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            IQ4XSPairX4<TVnni>(xb + 8, yo + 4, lsv, Vector256.Create(0, 0, 0, 0, 1, 1, 1, 1), y, y1, y2, y3, ref s0, ref s1, ref s2, ref s3);
            IQ4XSPairX4<TVnni>(xb + 40, yo + 68, lsv, Vector256.Create(2, 2, 2, 2, 3, 3, 3, 3), y, y1, y2, y3, ref s0, ref s1, ref s2, ref s3);
            IQ4XSPairX4<TVnni>(xb + 72, yo + 132, lsv, Vector256.Create(4, 4, 4, 4, 5, 5, 5, 5), y, y1, y2, y3, ref s0, ref s1, ref s2, ref s3);
            IQ4XSPairX4<TVnni>(xb + 104, yo + 196, lsv, Vector256.Create(6, 6, 6, 6, 7, 7, 7, 7), y, y1, y2, y3, ref s0, ref s1, ref s2, ref s3);
            if (TVnni.Use)
            {
                var lsTwice = ScaleTwice(lsv);
                s0 -= Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y + yo + 260)), lsTwice) << 7;
                s1 -= Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y1 + yo + 260)), lsTwice) << 7;
                s2 -= Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y2 + yo + 260)), lsTwice) << 7;
                s3 -= Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y3 + yo + 260)), lsTwice) << 7;
            }
            float d = Unsafe.Add(ref f16, *(ushort*)xb);
            c0 += Vector256.ConvertToSingle(s0) * Vector256.Create(d * *(float*)(y + yo));
            c1 += Vector256.ConvertToSingle(s1) * Vector256.Create(d * *(float*)(y1 + yo));
            c2 += Vector256.ConvertToSingle(s2) * Vector256.Create(d * *(float*)(y2 + yo));
            c3 += Vector256.ConvertToSingle(s3) * Vector256.Create(d * *(float*)(y3 + yo));
        }
        outp[0] = Vector256.Sum(c0);
        outp[outStride] = Vector256.Sum(c1);
        outp[2L * outStride] = Vector256.Sum(c2);
        outp[3L * outStride] = Vector256.Sum(c3);
    }

    /// <summary>Step p of <see cref="IQ4XSPair{TVnni}"/> for four activation rows (byte offset a in each): the pair's
    /// levels (and without VNNI their magnitudes) made once; each row's lanes get <see cref="IQ4XSPair{TVnni}"/>'s integers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void IQ4XSPairX4<TVnni>(byte* qs, int a, Vector256<int> lsv, Vector256<int> pick, byte* y0, byte* y1, byte* y2, byte* y3,
        ref Vector256<int> s0, ref Vector256<int> s1, ref Vector256<int> s2, ref Vector256<int> s3) where TVnni : IVnniChoice
    {
        var m4 = Vector256.Create((byte)0x0F);
        var v = Vector256.Load(qs);
        var table = IQ4LevelTableFor<TVnni>();
        var lo = Avx2.Shuffle(table, v & m4);
        var hi = Avx2.Shuffle(table, Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & m4);
        var ls = Avx2.PermuteVar8x32(lsv, pick);
        if (TVnni.Use)
        {
            s0 += IQ4XSLevelsDot<TVnni>(lo, hi, y0 + a) * ls;
            s1 += IQ4XSLevelsDot<TVnni>(lo, hi, y1 + a) * ls;
            s2 += IQ4XSLevelsDot<TVnni>(lo, hi, y2 + a) * ls;
            s3 += IQ4XSLevelsDot<TVnni>(lo, hi, y3 + a) * ls;
            return;
        }
        // the sign trick (DotI8I8) with the magnitudes taken once
        Vector256<sbyte> l = lo.AsSByte(), h = hi.AsSByte();
        Vector256<byte> ul = Avx2.Abs(l), uh = Avx2.Abs(h);
        s0 += (DotU8I8(Vector256<int>.Zero, ul, Avx2.Sign(Vector256.Load((sbyte*)(y0 + a)), l)) + DotU8I8(Vector256<int>.Zero, uh, Avx2.Sign(Vector256.Load((sbyte*)(y0 + a + 32)), h))) * ls;
        s1 += (DotU8I8(Vector256<int>.Zero, ul, Avx2.Sign(Vector256.Load((sbyte*)(y1 + a)), l)) + DotU8I8(Vector256<int>.Zero, uh, Avx2.Sign(Vector256.Load((sbyte*)(y1 + a + 32)), h))) * ls;
        s2 += (DotU8I8(Vector256<int>.Zero, ul, Avx2.Sign(Vector256.Load((sbyte*)(y2 + a)), l)) + DotU8I8(Vector256<int>.Zero, uh, Avx2.Sign(Vector256.Load((sbyte*)(y2 + a + 32)), h))) * ls;
        s3 += (DotU8I8(Vector256<int>.Zero, ul, Avx2.Sign(Vector256.Load((sbyte*)(y3 + a)), l)) + DotU8I8(Vector256<int>.Zero, uh, Avx2.Sign(Vector256.Load((sbyte*)(y3 + a + 32)), h))) * ls;
    }
}
