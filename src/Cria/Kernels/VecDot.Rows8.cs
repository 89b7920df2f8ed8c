using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// The 32-value legacy types — Q4_0, Q4_1, Q5_0, Q5_1, and IQ4_NL with AVX-VNNI — eight weight rows at a time (AVX2), for
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
        /// <summary>log2 of the value offset for types without a min: Q4_0 3 (q − 8), Q5_0 4 (q − 16), IQ4_NL 7
        /// (level + 128 − 128).</summary>
        static abstract int OffsetShift { get; }
        /// <summary>IQ4_NL: the nibbles index the IQ4 levels, looked up as level + 128 (1 … 241, unsigned bytes). Only
        /// with AVX-VNNI: vpmaddubsw would saturate on 2 · 241 · 127.</summary>
        static abstract bool Levels { get; }
    }

    internal readonly struct Q40Block : ILegacyBlock
    {
        public static int Bytes => 18; public static int Qs => 2; public static int Min => 0; public static int HighBits => 0; public static int OffsetShift => 3; public static bool Levels => false;
    }

    internal readonly struct Q41Block : ILegacyBlock
    {
        public static int Bytes => 20; public static int Qs => 4; public static int Min => 2; public static int HighBits => 0; public static int OffsetShift => 0; public static bool Levels => false;
    }

    internal readonly struct Q50Block : ILegacyBlock
    {
        public static int Bytes => 22; public static int Qs => 6; public static int Min => 0; public static int HighBits => 2; public static int OffsetShift => 4; public static bool Levels => false;
    }

    internal readonly struct Q51Block : ILegacyBlock
    {
        public static int Bytes => 24; public static int Qs => 8; public static int Min => 2; public static int HighBits => 4; public static int OffsetShift => 0; public static bool Levels => false;
    }

    internal readonly struct IQ4NLBlock : ILegacyBlock
    {
        public static int Bytes => 18; public static int Qs => 2; public static int Min => 0; public static int HighBits => 0; public static int OffsetShift => 7; public static bool Levels => true;
    }

    /// <summary>Rows [0, rows) (rows ≤ 8, row k at w + k·rowBytes) against one activation row x:
    /// y[k] = dot(row k, x). The decode kernel: the batched kernel with one activation row (the same speed as a copy
    /// with its accumulator in a register, in alternating runs).</summary>
    internal static unsafe void DotRows8Avx2<T>(byte* w, long rowBytes, int rows, byte* x, int nb, float* y) where T : ILegacyBlock
    {
        Vector256<float> acc;
        DotRows8Avx2<T>(w, rowBytes, rows, x, 0, 1, nb, y, 0, &acc);
    }

    /// <summary>Rows [0, rows) (rows ≤ 8) against B ≤ <see cref="RowKernels.Tile"/> activation rows (x + b·xStride):
    /// y[b·yStride + k] = dot(row k, x_b). The nibbles and scales of a block are unpacked once for all B rows;
    /// <paramref name="acc"/> holds B accumulators. Decode and prefill both run this.</summary>
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
            // the next group's eight rows (contiguous after this group's), 8 · Bytes per block of this one: decode streams
            // every group from memory once, prefill its first tile
            byte* pf = next + 8 * o;
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
                acc[b] = BlockStep<T>(l04, h04, l15, h15, l26, h26, l37, h37, d, m, xb, nb, ib, acc[b]);
        }
        for (int b = 0; b < B; b++) Store(acc[b], rows, y + (long)b * yStride);
    }

    const float Pow2To112 = 5.192297e33f;

    /// <summary>Two groups of rows far apart against one activation row (decode, <see cref="RowKernels.RunGroupPair"/>):
    /// at <paramref name="wa"/> and <paramref name="wb"/> either eight rows <paramref name="step"/> bytes apart each
    /// (step = the row size) or one row each (step = 0), block by block, so that one core reads two sequential streams at
    /// once (as the paired kernels of the other types). Each group's operations are those of
    /// <see cref="DotRows8Avx2{T}(byte*, long, int, byte*, int, float*)"/>, so each row gets its bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static unsafe void DotRows8PairAvx2<T>(byte* wa, byte* wb, long step, byte* x, int nb, float* ya, float* yb) where T : ILegacyBlock
    {
        long s3 = 3 * step;
        Vector256<float> accA = default, accB = default;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * T.Bytes;
            // each group's next eight rows, 8 · Bytes per block of this one (as DotRows8Avx2)
            byte* pa = wa + 8 * step + 8 * o, pb = wb + 8 * step + 8 * o;
            Sse.Prefetch0(pa); Sse.Prefetch0(pa + 64); Sse.Prefetch0(pa + 128);
            Sse.Prefetch0(pb); Sse.Prefetch0(pb + 64); Sse.Prefetch0(pb + 128);
            if (T.Bytes > 20) { Sse.Prefetch0(pa + 192); Sse.Prefetch0(pb + 192); }
            accA = DecodeStep<T>(wa + o, step, s3, x, nb, ib, accA);
            accB = DecodeStep<T>(wb + o, step, s3, x, nb, ib, accB);
        }
        Store(accA, step == 0 ? 1 : 8, ya);
        Store(accB, step == 0 ? 1 : 8, yb);
    }

    /// <summary>Block ib of eight rows (row k at p + k·step) against one activation row: the batched kernel's steps for
    /// B = 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> DecodeStep<T>(byte* p, long step, long s3, byte* x, int nb, int ib, Vector256<float> acc) where T : ILegacyBlock
    {
        // the block's unpacking written out here as in DotRows8Avx2: through a shared helper with out parameters
        // kernel-micro --pair read 12 % slower in L2 (26.7–28.6 against 29.2–33.3 GB/s, six pairs)
        byte* p4 = p + 4 * step;
        Unpack<T>(p, p4, out var l04, out var h04);
        Unpack<T>(p + step, p4 + step, out var l15, out var h15);
        Unpack<T>(p + 2 * step, p4 + 2 * step, out var l26, out var h26);
        Unpack<T>(p + s3, p4 + s3, out var l37, out var h37);
        var d = Scales8(p, p + step, p + 2 * step, p + s3, p4, p4 + step, p4 + 2 * step, p4 + s3);
        var m = T.Min == 0 ? default : Scales8(p + T.Min, p + step + T.Min, p + 2 * step + T.Min, p + s3 + T.Min,
            p4 + T.Min, p4 + step + T.Min, p4 + 2 * step + T.Min, p4 + s3 + T.Min);
        return BlockStep<T>(l04, h04, l15, h15, l26, h26, l37, h37, d, m, x, nb, ib, acc);
    }

    /// <summary>An unpacked block of eight rows against block ib of one activation row xb: the exact integer sums (offset
    /// included), then acc = fma(Σ, d_w·d_a, acc) and for a min acc = fma(m, s, acc).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> BlockStep<T>(Vector256<byte> l04, Vector256<byte> h04, Vector256<byte> l15, Vector256<byte> h15,
        Vector256<byte> l26, Vector256<byte> h26, Vector256<byte> l37, Vector256<byte> h37, Vector256<float> d, Vector256<float> m,
        byte* xb, int nb, int ib, Vector256<float> acc) where T : ILegacyBlock
    {
        byte* aq = xb + 4 * nb + 32 * ib;
        var alo = Avx2.BroadcastVector128ToVector256(aq).AsSByte();
        var ahi = Avx2.BroadcastVector128ToVector256(aq + 16).AsSByte();
        var sums = BlockSums(l04, h04, l15, h15, l26, h26, l37, h37, alo, ahi);
        if (T.Min == 0) sums -= Vector256.Create(((int*)(xb + 36 * nb))[ib] << T.OffsetShift);
        var a = Fma.MultiplyAdd(Vector256.ConvertToSingle(sums), d * Vector256.Create(((float*)xb)[ib] * Pow2To112), acc);
        if (T.Min != 0) a = Fma.MultiplyAdd(m, Vector256.Create(((float*)(xb + 40 * nb))[ib] * Pow2To112), a);
        return a;
    }

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
        if (T.Levels)
        {
            lo = Avx2.Shuffle(IQ4LevelTableU8(), lo);
            hi = Avx2.Shuffle(IQ4LevelTableU8(), hi);
        }
        if (T.HighBits != 0)
        {
            // [a's qh ×4 | b's qh ×4]; byte i of each lane takes qh byte i / 8 (lo: bytes 0, 1; hi: bytes 2, 3), then
            // ggml's bytes_from_bits_32 test of bit i % 8
            var qh = Vector256.Create(Avx2.BroadcastScalarToVector128((uint*)(a + T.HighBits)), Avx2.BroadcastScalarToVector128((uint*)(b + T.HighBits))).AsByte();
            var bit = Vector256.Create(0x7fbfdfeff7fbfdfeul).AsByte();
            var b16 = Vector256.Create((byte)0x10);
            lo |= Vector256.Equals(Avx2.Shuffle(qh, Vector256.Create(0x0000000000000000ul, 0x0101010101010101ul, 0x0000000000000000ul, 0x0101010101010101ul).AsByte()) | bit, Vector256<byte>.AllBitsSet) & b16;
            hi |= Vector256.Equals(Avx2.Shuffle(qh, Vector256.Create(0x0202020202020202ul, 0x0303030303030303ul, 0x0202020202020202ul, 0x0303030303030303ul).AsByte()) | bit, Vector256<byte>.AllBitsSet) & b16;
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

/// <summary>
/// Q8_0 with exact block sums: decode (one row, or two distant rows) and the eight-row AVX2 prefill here, the
/// sixteen-row AVX-512 prefill in VecDot.Rows16.cs (<see cref="DotQ80Rows16Avx512"/>), on the legacy types' activation
/// layout ([nb] float d, [nb, 32] int8 quants, [nb] int32 Σ quants, [nb] float s).
///
/// The arithmetic, which every path gives bit for bit (so decode, prefill and any grouping of rows agree): per block j
/// the exact integer Σ_j w·a and the scale product dd_j = (d_w·2^-112)·(d_a·2^112) (both scalings exact, so it is
/// d_w·d_a); eight float accumulators, block j going to accumulator j mod 8 in block order,
/// A_(j mod 8) = fma(float(Σ_j), dd_j, A_(j mod 8)); the result ((A0 + A1) + (A2 + A3)) + ((A4 + A5) + (A6 + A7))
/// (<see cref="Sum8"/>). Decode thus carries eight blocks in one vector FMA, with no scalar chain (a single accumulator,
/// eight dependent scalar FMAs per eight blocks, decoded TinyLlama Q8_0 at 0.65× the speed of the AVX-VNNI kernels it
/// replaced, `kernel-micro --pair`), and the rows-in-lanes prefill keeps eight accumulators per activation row.
///
/// Integer sums: with AVX-VNNI (w + 128)·a through <c>vpdpbusd</c>, 128·Σ a taken back (exact for every byte); without,
/// |w| against sign(a, w) (a is never −128).
/// </summary>
public static partial class VecDot
{
    /// <summary>One Q8_0 row against one activation row (decode), in the arithmetic above.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe float DotQ80RowExactAvx2<TVnni>(byte* w, byte* x, int nb) where TVnni : IVnniChoice
    {
        float* ad = (float*)x;
        sbyte* aq = (sbyte*)(x + 4 * nb);
        int* asum = (int*)(x + 36 * nb);
        var acc = Vector256<float>.Zero; // [8] A_0 … A_7
        int ib = 0;
        for (; ib + 8 <= nb; ib += 8)
        {
            byte* wb = w + ib * 34;
            for (int k = 0; k < 5; k++) Sse.Prefetch0(wb + PrefetchAhead + 64 * k);
            acc = Fma.MultiplyAdd(Vector256.ConvertToSingle(Q80Sums8<TVnni>(wb, aq + 32 * ib, asum + ib)), Q80Scales8(wb, ad + ib), acc);
        }
        if (ib < nb) acc = Q80Tail<TVnni>(w, aq, ad, ib, nb, acc);
        return Sum8(acc);
    }

    /// <summary><see cref="DotQ80RowExactAvx2{TVnni}"/> of two weight rows (far apart: two streams for one core) against one
    /// activation row, each activation vector loaded once for both; each result has the single-row kernel's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static unsafe void DotQ80RowExactAvx2Pair<TVnni>(byte* wa, byte* wb, byte* x, int nb, out float ya, out float yb) where TVnni : IVnniChoice
    {
        float* ad = (float*)x;
        sbyte* aq = (sbyte*)(x + 4 * nb);
        int* asum = (int*)(x + 36 * nb);
        Vector256<float> accA = default, accB = default;
        int ib = 0;
        for (; ib + 8 <= nb; ib += 8)
        {
            byte* pa = wa + ib * 34, pb = wb + ib * 34;
            for (int k = 0; k < 5; k++) { Sse.Prefetch0(pa + PrefetchAhead + 64 * k); Sse.Prefetch0(pb + PrefetchAhead + 64 * k); }
            Vector256<int> sa, sb;
            if (TVnni.Use) Q80Sums8Pair(pa, pb, aq + 32 * ib, asum + ib, out sa, out sb);
            else { sa = Q80Sums8<TVnni>(pa, aq + 32 * ib, asum + ib); sb = Q80Sums8<TVnni>(pb, aq + 32 * ib, asum + ib); }
            accA = Fma.MultiplyAdd(Vector256.ConvertToSingle(sa), Q80Scales8(pa, ad + ib), accA);
            accB = Fma.MultiplyAdd(Vector256.ConvertToSingle(sb), Q80Scales8(pb, ad + ib), accB);
        }
        if (ib < nb) { accA = Q80Tail<TVnni>(wa, aq, ad, ib, nb, accA); accB = Q80Tail<TVnni>(wb, aq, ad, ib, nb, accB); }
        ya = Sum8(accA); yb = Sum8(accB);
    }

    /// <summary>The exact sums of eight blocks of one row (at w) against the activations at a: [Σ_0 … Σ_7].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> Q80Sums8<TVnni>(byte* w, sbyte* a, int* asum) where TVnni : IVnniChoice
    {
        if (TVnni.Use)
        {
            // (w + 128)·a through vpdpbusd, the 128·Σ a of each block taken back once for all eight
            var p01 = Avx2.HorizontalAdd(Q80OffsetLanes(w, Vector256.Load(a)), Q80OffsetLanes(w + 34, Vector256.Load(a + 32)));
            var p23 = Avx2.HorizontalAdd(Q80OffsetLanes(w + 68, Vector256.Load(a + 64)), Q80OffsetLanes(w + 102, Vector256.Load(a + 96)));
            var p45 = Avx2.HorizontalAdd(Q80OffsetLanes(w + 136, Vector256.Load(a + 128)), Q80OffsetLanes(w + 170, Vector256.Load(a + 160)));
            var p67 = Avx2.HorizontalAdd(Q80OffsetLanes(w + 204, Vector256.Load(a + 192)), Q80OffsetLanes(w + 238, Vector256.Load(a + 224)));
            return Reduce8(p01, p23, p45, p67) - (Vector256.Load(asum) << 7);
        }
        var q01 = Avx2.HorizontalAdd(Q80BlockLanes<TVnni>(w, a), Q80BlockLanes<TVnni>(w + 34, a + 32));
        var q23 = Avx2.HorizontalAdd(Q80BlockLanes<TVnni>(w + 68, a + 64), Q80BlockLanes<TVnni>(w + 102, a + 96));
        var q45 = Avx2.HorizontalAdd(Q80BlockLanes<TVnni>(w + 136, a + 128), Q80BlockLanes<TVnni>(w + 170, a + 160));
        var q67 = Avx2.HorizontalAdd(Q80BlockLanes<TVnni>(w + 204, a + 192), Q80BlockLanes<TVnni>(w + 238, a + 224));
        return Reduce8(q01, q23, q45, q67);
    }

    /// <summary><see cref="Q80Sums8"/> of two rows against the same activations (AVX-VNNI), each activation vector
    /// loaded once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Q80Sums8Pair(byte* wa, byte* wb, sbyte* a, int* asum, out Vector256<int> sa, out Vector256<int> sb)
    {
        Vector256<sbyte> a0 = Vector256.Load(a), a1 = Vector256.Load(a + 32), a2 = Vector256.Load(a + 64), a3 = Vector256.Load(a + 96);
        var pa01 = Avx2.HorizontalAdd(Q80OffsetLanes(wa, a0), Q80OffsetLanes(wa + 34, a1));
        var pb01 = Avx2.HorizontalAdd(Q80OffsetLanes(wb, a0), Q80OffsetLanes(wb + 34, a1));
        var pa23 = Avx2.HorizontalAdd(Q80OffsetLanes(wa + 68, a2), Q80OffsetLanes(wa + 102, a3));
        var pb23 = Avx2.HorizontalAdd(Q80OffsetLanes(wb + 68, a2), Q80OffsetLanes(wb + 102, a3));
        a0 = Vector256.Load(a + 128); a1 = Vector256.Load(a + 160); a2 = Vector256.Load(a + 192); a3 = Vector256.Load(a + 224);
        var pa45 = Avx2.HorizontalAdd(Q80OffsetLanes(wa + 136, a0), Q80OffsetLanes(wa + 170, a1));
        var pb45 = Avx2.HorizontalAdd(Q80OffsetLanes(wb + 136, a0), Q80OffsetLanes(wb + 170, a1));
        var pa67 = Avx2.HorizontalAdd(Q80OffsetLanes(wa + 204, a2), Q80OffsetLanes(wa + 238, a3));
        var pb67 = Avx2.HorizontalAdd(Q80OffsetLanes(wb + 204, a2), Q80OffsetLanes(wb + 238, a3));
        var corr = Vector256.Load(asum) << 7;
        sa = Reduce8(pa01, pa23, pa45, pa67) - corr;
        sb = Reduce8(pb01, pb23, pb45, pb67) - corr;
    }

    /// <summary>Eight blocks' lanes after one <c>vphaddd</c> level (p01 = hadd(block 0, block 1), …) to [Σ_0 … Σ_7].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Reduce8(Vector256<int> p01, Vector256<int> p23, Vector256<int> p45, Vector256<int> p67)
    {
        var q0123 = Avx2.HorizontalAdd(p01, p23); // [b0..b3 low lanes | b0..b3 high lanes]
        var q4567 = Avx2.HorizontalAdd(p45, p67);
        return Avx2.Permute2x128(q0123, q4567, 0x20) + Avx2.Permute2x128(q0123, q4567, 0x31);
    }

    /// <summary>dd_j = (d_w,j·2^-112)·(d_a,j·2^112) of eight blocks (weights at w, activation scales at ad).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> Q80Scales8(byte* w, float* ad) =>
        Scales8(w, w + 34, w + 68, w + 102, w + 136, w + 170, w + 204, w + 238) * (Vector256.Load(ad) * Vector256.Create(Pow2To112));

    /// <summary>Blocks [ib, nb) (fewer than eight) of one row into their accumulators, j into A_(j mod 8): each a scalar
    /// FMA with the operands of the vector steps.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    static unsafe Vector256<float> Q80Tail<TVnni>(byte* w, sbyte* aq, float* ad, int ib, int nb, Vector256<float> acc) where TVnni : IVnniChoice
    {
        float* t = stackalloc float[8];
        acc.Store(t);
        for (int j = ib; j < nb; j++)
        {
            byte* blk = w + j * 34;
            float dw = BitConverter.Int32BitsToSingle(((int)*(short*)blk << 13) & unchecked((int)0x8FFFE000)); // Scales8's steps
            t[j & 7] = MathF.FusedMultiplyAdd(Vector256.Sum(Q80BlockLanes<TVnni>(blk, aq + 32 * j)), dw * (ad[j] * Pow2To112), t[j & 7]);
        }
        return Vector256.Load(t);
    }

    /// <summary>((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)): the end of every Q8_0 dot product of this family.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Sum8(Vector256<float> v)
    {
        v += Avx.Permute(v, 0xB1);            // v2k + v2k+1 in lanes 2k, 2k+1
        v += Avx.Permute(v, 0x4E);            // each half: (v0 + v1) + (v2 + v3)
        return (v.GetLower() + v.GetUpper()).ToScalar();
    }

    /// <summary>One Q8_0 block (34 B at w) as w + 128 against its 32 int8 activations through <c>vpdpbusd</c>: 8 int32
    /// partial sums of Σ (w + 128)·a (AVX-VNNI; the caller takes 128·Σ a back).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> Q80OffsetLanes(byte* w, Vector256<sbyte> a) =>
        AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Load(w + 2) ^ Vector256.Create((byte)0x80), a);

    /// <summary>One Q8_0 block (34 B at w) against 32 int8 activations: 8 int32 partial sums, |w| against sign(a, w).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> Q80BlockLanes<TVnni>(byte* w, sbyte* a) where TVnni : IVnniChoice
    {
        var q = Vector256.Load((sbyte*)(w + 2));
        Vector256<byte> u = Avx2.Abs(q).AsByte();
        var sa = Avx2.Sign(Vector256.Load(a), q);
        if (TVnni.Use) return AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, sa);
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, sa), Vector256<short>.One);
    }

    /// <summary>Rows [0, rows) (rows ≤ 8) against B ≤ <see cref="RowKernels.Tile"/> activation rows (x + b·xStride),
    /// each the bits of <see cref="DotQ80RowExactAvx2{TVnni}"/>: rows k and k + 4 share a register per block half, each half
    /// |w| against sign(a, w) (through <c>vpmaddubsw</c>, at most 2·128·127 per int16 lane, widened before the halves
    /// are added; or <c>vpdpbusd</c>), three <c>vphaddd</c> leave row k's block sum in lane k; one FMA per block carries
    /// eight rows into accumulator ib mod 8 of each activation row. <paramref name="acc"/> holds 8·B vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ80Rows8Avx2<TVnni>(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc) where TVnni : IVnniChoice
    {
        Rows8(w, rowBytes, rows, out byte* w0, out byte* w1, out byte* w2, out byte* w3, out byte* w4, out byte* w5, out byte* w6, out byte* w7);
        for (int b = 0; b < 8 * B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        for (int ib = 0; ib < nb; ib++)
        {
            long o = (long)ib * 34;
            byte* pf = next + 8 * o;
            Sse.Prefetch0(pf); Sse.Prefetch0(pf + 64); Sse.Prefetch0(pf + 128); Sse.Prefetch0(pf + 192); Sse.Prefetch0(pf + 256);
            // [row k half | row k + 4 half] for the first (lo) and second (hi) 16 values of the block
            var lo04 = Halves(w0 + o + 2, w4 + o + 2); var hi04 = Halves(w0 + o + 18, w4 + o + 18);
            var lo15 = Halves(w1 + o + 2, w5 + o + 2); var hi15 = Halves(w1 + o + 18, w5 + o + 18);
            var lo26 = Halves(w2 + o + 2, w6 + o + 2); var hi26 = Halves(w2 + o + 18, w6 + o + 18);
            var lo37 = Halves(w3 + o + 2, w7 + o + 2); var hi37 = Halves(w3 + o + 18, w7 + o + 18);
            Vector256<byte> ulo04 = Avx2.Abs(lo04), uhi04 = Avx2.Abs(hi04), ulo15 = Avx2.Abs(lo15), uhi15 = Avx2.Abs(hi15);
            Vector256<byte> ulo26 = Avx2.Abs(lo26), uhi26 = Avx2.Abs(hi26), ulo37 = Avx2.Abs(lo37), uhi37 = Avx2.Abs(hi37);
            var d = Scales8(w0 + o, w1 + o, w2 + o, w3 + o, w4 + o, w5 + o, w6 + o, w7 + o);
            byte* xb = x;
            Vector256<float>* a = acc + (ib & 7);
            for (int b = 0; b < B; b++, xb += xStride, a += 8)
            {
                byte* aq = xb + 4 * nb + 32 * ib;
                var alo = Avx2.BroadcastVector128ToVector256(aq).AsSByte();
                var ahi = Avx2.BroadcastVector128ToVector256(aq + 16).AsSByte();
                var sums = Avx2.HorizontalAdd(
                    Avx2.HorizontalAdd(Q80PairDot<TVnni>(lo04, ulo04, hi04, uhi04, alo, ahi), Q80PairDot<TVnni>(lo15, ulo15, hi15, uhi15, alo, ahi)),
                    Avx2.HorizontalAdd(Q80PairDot<TVnni>(lo26, ulo26, hi26, uhi26, alo, ahi), Q80PairDot<TVnni>(lo37, ulo37, hi37, uhi37, alo, ahi)));
                *a = Fma.MultiplyAdd(Vector256.ConvertToSingle(sums), d * Vector256.Create(((float*)xb)[ib] * Pow2To112), *a);
            }
        }
        for (int b = 0; b < B; b++)
        {
            var a = acc + 8 * b;
            Store(((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])), rows, y + (long)b * yStride);
        }
    }

    /// <summary>[16 bytes at a | 16 bytes at b] as int8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<sbyte> Halves(byte* a, byte* b) => Vector256.Create(Vector128.Load((sbyte*)a), Vector128.Load((sbyte*)b));

    /// <summary>Two rows' int8 values (lo: elements 0–15 of each, hi: 16–31; ulo, uhi their absolute values) against
    /// the activation halves, the sign trick per half (|w| · sign(a, w)); the halves are widened to int32 before they
    /// are added (each may reach 2·128·127 per int16 lane).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Q80PairDot<TVnni>(Vector256<sbyte> lo, Vector256<byte> ulo, Vector256<sbyte> hi, Vector256<byte> uhi, Vector256<sbyte> alo, Vector256<sbyte> ahi) where TVnni : IVnniChoice
    {
        if (TVnni.Use) return AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, ulo, Avx2.Sign(alo, lo)), uhi, Avx2.Sign(ahi, hi));
        return Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(ulo, Avx2.Sign(alo, lo)), Vector256<short>.One)
             + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(uhi, Avx2.Sign(ahi, hi)), Vector256<short>.One);
    }
}
