using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// ------------------------------------------------------------------ AVX-512 kernels for IQ1_S and IQ1_M
// (the AVX2 kernels and the scalar references of every lattice type are in VecDot.IQuants.cs)
//
// The AVX2 kernels (VecDot.IQuants.cs) spend most of their instructions finding grid points: per point, the index
// pieced together from qs and qh in general registers, then the load. Here the 32 indices of a super-block are
// computed in one vector and stored, one super-block ahead (read back at once, they wait on the store: 2.0 against
// 3.3 GB/s), so a point costs the load of its index and the load of its eight bytes, and two 32-value groups fill one
// 512-bit vector.
//
// AVX-512 has no vpsignb, so the points come from a table of unsigned bytes 8·g + 10 (g ∈ {−1, 0, 1} → 2, 10, 18),
// which vpmaddubsw takes as they are; what the offset adds comes back out through the Q8_K block sums S:
//   IQ1_S (δ = ±1 per 32 values):  Σ ls·Σ(8g + δ)·q8 = Σ ls·Σ(8g + 10)·q8 + Σ ls·(δ − 10)·S32
//   IQ1_M (δ = ±1 per 8 values):   the byte is made 8g + 9 + δ, so Σ ls·Σ(8g + δ)·q8 = Σ ls·Σ(8g + 9 + δ)·q8 − 9·Σ ls·S16
// Both take the scales per 16 values and add the block sums times per-16 multipliers; one generic kernel runs both.
// That integer T is 8·sumi + sumi1 of the scalar kernels, exactly, and below 2^24, so T / 8 = sumi + sumi1 / 8 in float
// too: each block adds the bits the scalar kernel adds, and the result equals DotScalar's bit for bit.
public static unsafe partial class VecDot
{
    /// <summary>IQuantGrids.IQ1SGrid with every byte g ∈ {−1, 0, 1} stored as 8·g + 10 (2048 points × 8 bytes),
    /// allocated once and never freed, so the kernels index it without a bounds check or a pin.</summary>
    static class IQ1GridX8
    {
        internal static readonly ulong* Points = Build();

        static ulong* Build()
        {
            var grid = IQuantGrids.IQ1SGrid;
            var p = (ulong*)NativeMemory.AlignedAlloc((nuint)(grid.Length * sizeof(ulong)), 64);
            for (int i = 0; i < grid.Length; i++)
            {
                ulong v = 0;
                for (int j = 0; j < 8; j++) v |= (ulong)(byte)(8 * (sbyte)(byte)(grid[i] >> 8 * j) + 10) << 8 * j;
                p[i] = v;
            }
            return p;
        }
    }

    /// <summary>Eight grid points (64 bytes) from eight stored indices.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Points8(ulong* grid, ushort* idx) => Vector512.Create(
        grid[idx[0]], grid[idx[1]], grid[idx[2]], grid[idx[3]], grid[idx[4]], grid[idx[5]], grid[idx[6]], grid[idx[7]]).AsByte();

    /// <summary>Lane k of a 32-lane word permutation: k / 4 (the qh word of each IQ1_S point).</summary>
    static Vector512<short> Quarter
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector512.Create((short)0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    }

    /// <summary>IQ1_S: the 32 grid indices qs[k] | (qh[k/4] >> 3·(k%4) &amp; 7) &lt;&lt; 8 into <paramref name="idx"/>.
    /// Block: d f16 | qs[32] | qh[8] u16 (bits 0–11: the points' high index bits, 12–14: the scale, 15: δ's sign).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void IQ1SIndices(byte* x, ushort* idx)
    {
        var qh = Vector128.Load((ushort*)(x + 34)).ToVector256Unsafe().ToVector512Unsafe();
        var qs = Avx512BW.ConvertToVector512UInt16(Vector256.Load(x + 2));
        var shift = Vector512.Create((ushort)0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9);
        var hi = Avx512BW.ShiftRightLogicalVariable(Avx512BW.PermuteVar32x16(qh.AsInt16(), Quarter).AsUInt16(), shift);
        (qs | ((hi << 8) & Vector512.Create((ushort)0x700))).Store(idx);
    }

    /// <summary>IQ1_S or IQ1_M as the AVX-512 kernels read it.</summary>
    internal interface IIQ1Block
    {
        static abstract int Bytes { get; }
        /// <summary>The block's 32 grid indices into <paramref name="idx"/> (run a block ahead).</summary>
        static abstract void Indices(byte* x, ushort* idx);
        /// <summary>The scales 2s + 1 per 16 values (lanes 0–15); the Q8_K block-sum multipliers, one per 16 values,
        /// that take the table's offset back out (and add IQ1_S's delta); the super-block scale.</summary>
        static abstract Vector512<short> Scales(byte* x, out Vector256<short> sumMul, out float d);
        /// <summary>Values 64p … 64p + 63 as unsigned bytes: 8·g + 10 (IQ1_S), 8·g + 9 + δ (IQ1_M).</summary>
        static abstract Vector512<byte> Points(ulong* grid, ushort* idx, byte* x, int p);
    }

    internal struct IQ1SWide : IIQ1Block
    {
        public static int Bytes => 50;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Indices(byte* x, ushort* idx) => IQ1SIndices(x, idx);

        /// <summary>Scale 2s + 1 and δ per 32 values from bits 12–15 of qh; multipliers ls·(δ − 10).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x, out Vector256<short> sumMul, out float d)
        {
            var qh = Vector128.Load((ushort*)(x + 34));
            var l = (((qh >> 12) & Vector128.Create((ushort)7)) * 2 + Vector128<ushort>.One).AsInt16();
            var m = l * ((qh.AsInt16() >> 15) * 2 - Vector128.Create((short)9)); // δ − 10 = −9 or −11
            sumMul = Vector256.Create(Sse2.UnpackLow(m, m), Sse2.UnpackHigh(m, m));
            d = Fp16.ToSingle(*(ushort*)x);
            return Vector256.Create(Sse2.UnpackLow(l, l), Sse2.UnpackHigh(l, l)).ToVector512Unsafe();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(ulong* grid, ushort* idx, byte* x, int p) => Points8(grid, idx + 8 * p);
    }

    internal struct IQ1MWide : IIQ1Block
    {
        public static int Bytes => 56;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Indices(byte* x, ushort* idx) => IQ1MIndices(x, idx);

        /// <summary>Multipliers −9·ls: the bytes carry 9 + δ.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x, out Vector256<short> sumMul, out float d)
        {
            var ls = IQ1MScales(x, out d);
            sumMul = ls.GetLower() * -9;
            return ls;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(ulong* grid, ushort* idx, byte* x, int p) => IQ1MPoints8(grid, idx, x, p);
    }

    /// <summary>IQ1_M: the 32 grid indices qs[k] | (qh[k/2] &lt;&lt; (k even ? 8 : 4)) &amp; 0x700 into <paramref name="idx"/>.
    /// Block: qs[32] | qh[16] (a nibble per 8 values: three high index bits, then δ's sign) | scales[8] (4 u16: twelve
    /// bits of 3-bit scales per 16 values, and a nibble of the f16 super-block scale).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void IQ1MIndices(byte* x, ushort* idx)
    {
        var qs = Avx512BW.ConvertToVector512UInt16(Vector256.Load(x));
        var qh = Avx2.ConvertToVector256Int16(Vector128.Load(x + 32)).ToVector512Unsafe();
        var half = Vector512.Create((short)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        var shift = Vector512.Create((ushort)8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4, 8, 4);
        var hi = Avx512BW.ShiftLeftLogicalVariable(Avx512BW.PermuteVar32x16(qh, half).AsUInt16(), shift);
        (qs | (hi & Vector512.Create((ushort)0x700))).Store(idx);
    }

    /// <summary>IQ1_M's sixteen scales 2s + 1, one per 16 values (lanes 0–15), and the f16 super-block scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> IQ1MScales(byte* x, out float d)
    {
        ushort* sc = (ushort*)(x + 48);
        d = Fp16.ToSingle((ushort)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000)));
        var s = Vector128.CreateScalarUnsafe(*(ulong*)sc).AsInt16().ToVector256Unsafe().ToVector512Unsafe();
        var shift = Vector512.Create((ushort)0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9, 0, 3, 6, 9);
        var v = Avx512BW.ShiftRightLogicalVariable(Avx512BW.PermuteVar32x16(s, Quarter).AsUInt16(), shift);
        var s3 = v & Vector512.Create((ushort)7);
        return (s3 + s3 + Vector512<ushort>.One).AsInt16();
    }

    /// <summary>IQ1_M's points 8p … 8p + 7 (values 64p … 64p + 63) as bytes 8·g + 9 + δ: the table's 8·g + 10, less 2
    /// where δ's sign bit is set (bit 3 of the qh byte for the first 8 of its 16 values, bit 7 for the second).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> IQ1MPoints8(ulong* grid, ushort* idx, byte* x, int p)
    {
        var lane = Vector512.Create((byte)0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3);
        var qh = Avx512BW.Shuffle(Vector512.Create(*(uint*)(x + 32 + 4 * p)).AsByte(), lane);
        var bit = qh & Vector512.Create(0x0808080808080808UL, 0x8080808080808080UL, 0x0808080808080808UL, 0x8080808080808080UL,
            0x0808080808080808UL, 0x8080808080808080UL, 0x0808080808080808UL, 0x8080808080808080UL).AsByte();
        return Points8(grid, idx + 8 * p) - Vector512.Min(bit, Vector512.Create((byte)2));
    }

    /// <summary>Word permutation giving each eight lanes of a maddubs result (16 values) its scale: 4p + k/8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> PairQuarters(int p) =>
        Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3) + Vector512.Create((short)(4 * p));

    /// <summary>Values 64p … 64p + 63 against <paramref name="q8"/>: Σ ls·byte·q8 in sixteen int32 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> IQ1Pair<T>(ulong* grid, ushort* idx, byte* x, Vector512<short> ls, byte* q8, int p) where T : struct, IIQ1Block =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(T.Points(grid, idx, x, p), Vector512.Load((sbyte*)(q8 + 64 * p))),
            Avx512BW.PermuteVar32x16(ls, PairQuarters(p)));

    /// <summary>One IQ1_S or IQ1_M row against one Q8_K row (ggml's layout): bit for bit <see cref="ScalarIQ1_S"/> /
    /// <see cref="ScalarIQ1_M"/>.</summary>
    [SkipLocalsInit]
    internal static float DotIQ1Avx512<T>(byte* x, byte* y, int nb) where T : struct, IIQ1Block
    {
        ulong* grid = IQ1GridX8.Points;
        Vector512<ushort> indices0, indices1; // the grid indices of this super-block and the next
        ushort* idx = (ushort*)&indices0, next = (ushort*)&indices1;
        float sumf = 0;
        if (nb > 0) T.Indices(x, idx);
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            if (i + 1 < nb) T.Indices(x + T.Bytes, next);
            var ls = T.Scales(x, out var sumMul, out float d);
            byte* q = y + 4;
            var acc = (IQ1Pair<T>(grid, idx, x, ls, q, 0) + IQ1Pair<T>(grid, idx, x, ls, q, 1)) + (IQ1Pair<T>(grid, idx, x, ls, q, 2) + IQ1Pair<T>(grid, idx, x, ls, q, 3));
            var t = acc.GetLower() + acc.GetUpper() + Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(y + 260)), sumMul);
            sumf += d * *(float*)y * (Vector256.Sum(t) * 0.125f);
            ushort* swap = idx; idx = next; next = swap;
        }
        return sumf;
    }

    /// <summary>One IQ1_S or IQ1_M row against four activation rows, each with the bits of <see cref="DotIQ1Avx512{T}"/>.</summary>
    [SkipLocalsInit]
    internal static void DotIQ1Avx512X4<T>(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride) where T : struct, IIQ1Block
    {
        ulong* grid = IQ1GridX8.Points;
        Vector512<ushort> indices0, indices1;
        ushort* idx = (ushort*)&indices0, next = (ushort*)&indices1;
        float f0 = 0, f1 = 0, f2 = 0, f3 = 0;
        if (nb > 0) T.Indices(x, idx);
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            if (i + 1 < nb) T.Indices(x + T.Bytes, next);
            var ls = T.Scales(x, out var sumMul, out float d);
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int p = 0; p < 4; p++)
            {
                var g = T.Points(grid, idx, x, p);
                var sc = Avx512BW.PermuteVar32x16(ls, PairQuarters(p));
                byte* q = y + 4 + 64 * p;
                a0 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, Vector512.Load((sbyte*)q)), sc);
                a1 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, Vector512.Load((sbyte*)(q + yStride))), sc);
                a2 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, Vector512.Load((sbyte*)(q + 2 * yStride))), sc);
                a3 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, Vector512.Load((sbyte*)(q + 3 * yStride))), sc);
            }
            short* b = (short*)(y + 260);
            int bs = yStride / 2;
            f0 += d * *(float*)y * (Vector256.Sum(a0.GetLower() + a0.GetUpper() + Avx2.MultiplyAddAdjacent(Vector256.Load(b), sumMul)) * 0.125f);
            f1 += d * *(float*)(y + yStride) * (Vector256.Sum(a1.GetLower() + a1.GetUpper() + Avx2.MultiplyAddAdjacent(Vector256.Load(b + bs), sumMul)) * 0.125f);
            f2 += d * *(float*)(y + 2 * yStride) * (Vector256.Sum(a2.GetLower() + a2.GetUpper() + Avx2.MultiplyAddAdjacent(Vector256.Load(b + 2 * bs), sumMul)) * 0.125f);
            f3 += d * *(float*)(y + 3 * yStride) * (Vector256.Sum(a3.GetLower() + a3.GetUpper() + Avx2.MultiplyAddAdjacent(Vector256.Load(b + 3 * bs), sumMul)) * 0.125f);
            ushort* swap = idx; idx = next; next = swap;
        }
        dst[0] = f0; dst[dstStride] = f1; dst[2 * dstStride] = f2; dst[3 * dstStride] = f3;
    }
}

// ------------------------------------------------------------------ AVX-512 kernels for the IQ2 and IQ3 types
//
// The same shape as IQ1's: a super-block's grid indices computed in vectors and stored a block ahead, points gathered
// 64 values at a time. These grids hold magnitudes (unsigned, as vpmaddubsw wants them) and one sign bit per value,
// which is applied to the activations: the 64 bits of a pair of groups spread to bytes (vpshufb, test), then q ^ m − m.
// The integer sums fold to the AVX2 kernels' eight lanes (lane j: values 4j … 4j + 3 of every 32), and the float sum
// runs per lane as there (and in ggml's AVX2 kernels), so results equal DotLatticeAvx2's bit for bit. (Adding each
// block whole, as the scalar kernel does, moved Cria further from llama.cpp: in IQuantMixTests' IQ3_M prompt a Q8_K
// rounding flip came at position 2 instead of 11, and the logits differed by 0.52 instead of 0.46.)
public static unsafe partial class VecDot
{
    /// <summary>What a super-block's <see cref="ISignedLattice.Prepare"/> computes: grid indices (64 for IQ3_S, 32 for
    /// IQ2_S) or sign bytes (32 for IQ2_XXS and IQ3_XXS), or both (IQ2_XS).</summary>
    struct LatticeIndices { public fixed ushort V[64]; }

    /// <summary>An IQ2 or IQ3 type as the AVX-512 kernels read it.</summary>
    internal interface ISignedLattice
    {
        static abstract int Bytes { get; }
        static abstract float Factor { get; }
        /// <summary>The block's sign bits, one per value in value order: in the block (IQ2_S, IQ3_S), or where
        /// <see cref="Prepare"/> left them (the types with 7-bit sign sets).</summary>
        static abstract byte* Signs(byte* x, ushort* idx);
        /// <summary>Whatever the block needs computed before its points are read, into <paramref name="idx"/>: the
        /// grid indices of the types that split them over two fields, the sign bytes of the 7-bit-set types. The kernels
        /// run it a block ahead: read back at once, stored data waits on the store (IQ1_S 2.0 against 3.3 GB/s).</summary>
        static abstract void Prepare(byte* x, ushort* idx);
        /// <summary>The grid magnitudes of values 64p … 64p + 63.</summary>
        static abstract Vector512<byte> Points(byte* x, ushort* idx, int p);
        /// <summary>The scales 2s + 1, one per 16 values, in lanes 0–15.</summary>
        static abstract Vector512<short> Scales(byte* x);
    }

    /// <summary>The 32 sign bytes of eight 7-bit-set words (bits 7l … 7l + 6 of group g's word: the signs of values
    /// 32g + 8l … + 7, the eighth bit their parity) into <paramref name="dst"/>; the permutations pick each group's
    /// word four times.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void SignSets(Vector512<uint> words, Vector512<uint> groups0To3, Vector512<uint> groups4To7, byte* dst)
    {
        var shift = Vector512.Create(0u, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21, 0, 7, 14, 21);
        var lo = Avx512F.ShiftRightLogicalVariable(Avx512F.PermuteVar16x32(words, groups0To3), shift) & Vector512.Create(127u);
        var hi = Avx512F.ShiftRightLogicalVariable(Avx512F.PermuteVar16x32(words, groups4To7), shift) & Vector512.Create(127u);
        Avx512F.ConvertToVector128Byte(lo | Parity7(lo) << 7).Store(dst);
        Avx512F.ConvertToVector128Byte(hi | Parity7(hi) << 7).Store(dst + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<uint> Parity7(Vector512<uint> s)
    {
        var p = s ^ (s >> 4);
        p ^= p >> 2;
        return (p ^ (p >> 1)) & Vector512<uint>.One;
    }

    // block_iq2_xxs (66 B): d f16 | per 32 values: four grid index bytes and a word with four 7-bit sign sets and the
    // scale's nibble.
    internal struct IQ2XXSWide : ISignedLattice
    {
        public static int Bytes => 66;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static byte* Signs(byte* x, ushort* idx) => (byte*)idx;

        // group g's word is word 2g + 1 of the 64 bytes after d
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Prepare(byte* x, ushort* idx) => SignSets(Vector512.Load((uint*)(x + 2)),
            Vector512.Create(1u, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7), Vector512.Create(9u, 9, 9, 9, 11, 11, 11, 11, 13, 13, 13, 13, 15, 15, 15, 15), (byte*)idx);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(byte* x, ushort* idx, int p)
        {
            ulong* g = Table(IQuantGrids.IQ2XXSGrid);
            byte* q = x + 2 + 16 * p;
            return Vector512.Create(g[q[0]], g[q[1]], g[q[2]], g[q[3]], g[q[8]], g[q[9]], g[q[10]], g[q[11]]).AsByte();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x)
        {
            // lane h: word 2·(h/2) + 1 of the 64 bytes
            var s = Avx512F.PermuteVar16x32(Vector512.Load((uint*)(x + 2)), Vector512.Create(1u, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15)) >> 28;
            return Avx512F.ConvertToVector256UInt16(s + s + Vector512<uint>.One).AsInt16().ToVector512Unsafe();
        }
    }

    // block_iq3_xxs (98 B): d f16 | qs[64] (a grid index per 4 values) | eight words (four 7-bit sign sets and the
    // scale's nibble per 32 values).
    internal struct IQ3XXSWide : ISignedLattice
    {
        public static int Bytes => 98;
        public static float Factor => 0.25f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static byte* Signs(byte* x, ushort* idx) => (byte*)idx;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Prepare(byte* x, ushort* idx) =>
            SignSets(Vector256.Load((uint*)(x + 66)).ToVector512Unsafe(), Vector512.Create(0u, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
                Vector512.Create(4u, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7), (byte*)idx);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(byte* x, ushort* idx, int p)
        {
            uint* g = Table(IQuantGrids.IQ3XXSGrid);
            byte* q = x + 2 + 16 * p;
            return Vector512.Create(g[q[0]], g[q[1]], g[q[2]], g[q[3]], g[q[4]], g[q[5]], g[q[6]], g[q[7]],
                g[q[8]], g[q[9]], g[q[10]], g[q[11]], g[q[12]], g[q[13]], g[q[14]], g[q[15]]).AsByte();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x)
        {
            var s = Avx512F.PermuteVar16x32(Vector256.Load((uint*)(x + 66)).ToVector512Unsafe(), Vector512.Create(0u, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7)) >> 28;
            return Avx512F.ConvertToVector256UInt16(s + s + Vector512<uint>.One).AsInt16().ToVector512Unsafe();
        }
    }

    // block_iq2_xs (74 B): d f16 | qs[32] u16 (a 9-bit grid index and a 7-bit sign set per point) | scales[8] (a nibble
    // per 16 values). The eighth sign of a set is its parity (the rule of ksigns_iq2xs), so the sign bytes are computed
    // in one vector and stored beside the indices.
    internal struct IQ2XSWide : ISignedLattice
    {
        public static int Bytes => 74;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static byte* Signs(byte* x, ushort* idx) => (byte*)(idx + 32);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Prepare(byte* x, ushort* idx)
        {
            var q = Vector512.Load((ushort*)(x + 2));
            (q & Vector512.Create((ushort)511)).Store(idx);
            var s = q >> 9;
            var parity = s ^ (s >> 4);
            parity ^= parity >> 2;
            parity ^= parity >> 1;
            Avx512BW.ConvertToVector256Byte(s | ((parity & Vector512<ushort>.One) << 7)).Store((byte*)(idx + 32));
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(byte* x, ushort* idx, int p)
        {
            ulong* g = Table(IQuantGrids.IQ2XSGrid);
            idx += 8 * p;
            return Vector512.Create(g[idx[0]], g[idx[1]], g[idx[2]], g[idx[3]], g[idx[4]], g[idx[5]], g[idx[6]], g[idx[7]]).AsByte();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x) => IQ2SWide.Scales(x - 8); // the same nibbles, 8 bytes earlier
    }

    // block_iq2_s (82 B): d f16 | qs[32] index bytes | signs[32] | qh[8] (2 high index bits per point) | scales[8]
    // (a nibble per 16 values).
    internal struct IQ2SWide : ISignedLattice
    {
        public static int Bytes => 82;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static byte* Signs(byte* x, ushort* idx) => x + 34;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Prepare(byte* x, ushort* idx)
        {
            var qs = Avx512BW.ConvertToVector512UInt16(Vector256.Load(x + 2));
            var qh = Sse41.ConvertToVector128Int16(x + 66).ToVector256Unsafe().ToVector512Unsafe();
            var shift = Vector512.Create((ushort)8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2, 8, 6, 4, 2);
            var hi = Avx512BW.ShiftLeftLogicalVariable(Avx512BW.PermuteVar32x16(qh, Quarter).AsUInt16(), shift);
            (qs | (hi & Vector512.Create((ushort)0x300))).Store(idx);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(byte* x, ushort* idx, int p)
        {
            ulong* g = Table(IQuantGrids.IQ2SGrid);
            idx += 8 * p;
            return Vector512.Create(g[idx[0]], g[idx[1]], g[idx[2]], g[idx[3]], g[idx[4]], g[idx[5]], g[idx[6]], g[idx[7]]).AsByte();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x)
        {
            // lane h: nibble h of scales[] (low nibble first)
            var b = Avx512BW.PermuteVar32x16(Sse41.ConvertToVector128Int16(x + 74).ToVector256Unsafe().ToVector512Unsafe(), Vector512.Create(
                (short)0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)).AsUInt16();
            var s = Avx512BW.ShiftRightLogicalVariable(b, Vector512.Create((ushort)0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
                & Vector512.Create((ushort)0xF);
            return (s + s + Vector512<ushort>.One).AsInt16();
        }
    }

    // block_iq3_s (110 B): d f16 | qs[64] index bytes | qh[8] (the ninth index bit per point) | signs[32] | scales[4]
    // (a nibble per 32 values).
    internal struct IQ3SWide : ISignedLattice
    {
        public static int Bytes => 110;
        public static float Factor => 1f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static byte* Signs(byte* x, ushort* idx) => x + 74;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Prepare(byte* x, ushort* idx)
        {
            var qh = Sse41.ConvertToVector128Int16(x + 66).ToVector256Unsafe().ToVector512Unsafe();
            var eighth = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
            var shift = Vector512.Create((ushort)8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1, 8, 7, 6, 5, 4, 3, 2, 1);
            var bit = Vector512.Create((ushort)0x100);
            var lo = Avx512BW.ShiftLeftLogicalVariable(Avx512BW.PermuteVar32x16(qh, eighth).AsUInt16(), shift) & bit;
            var hi = Avx512BW.ShiftLeftLogicalVariable(Avx512BW.PermuteVar32x16(qh, eighth + Vector512.Create((short)4)).AsUInt16(), shift) & bit;
            (Avx512BW.ConvertToVector512UInt16(Vector256.Load(x + 2)) | lo).Store(idx);
            (Avx512BW.ConvertToVector512UInt16(Vector256.Load(x + 34)) | hi).Store(idx + 32);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<byte> Points(byte* x, ushort* idx, int p)
        {
            uint* g = Table(IQuantGrids.IQ3SGrid);
            idx += 16 * p;
            return Vector512.Create(g[idx[0]], g[idx[1]], g[idx[2]], g[idx[3]], g[idx[4]], g[idx[5]], g[idx[6]], g[idx[7]],
                g[idx[8]], g[idx[9]], g[idx[10]], g[idx[11]], g[idx[12]], g[idx[13]], g[idx[14]], g[idx[15]]).AsByte();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<short> Scales(byte* x)
        {
            // lane h: the nibble of group h/2, scales[h/4] low for even groups (four bytes: the block ends there)
            var b = Avx512BW.PermuteVar32x16(Sse41.ConvertToVector128Int16(Vector128.CreateScalarUnsafe(*(uint*)(x + 106)).AsByte()).ToVector256Unsafe().ToVector512Unsafe(), Quarter).AsUInt16();
            var s = Avx512BW.ShiftRightLogicalVariable(b, Vector512.Create((ushort)0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
                & Vector512.Create((ushort)0xF);
            return (s + s + Vector512<ushort>.One).AsInt16();
        }
    }

    /// <summary>Activations 64p … 64p + 63 with the weights' signs applied: bit j of the eight sign bytes negates value j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<sbyte> SignedQ8(byte* signs, byte* q8, int p)
    {
        var spread = Avx512BW.Shuffle(Vector512.Create(*(ulong*)(signs + 8 * p)).AsByte(), Vector512.Create(
            (byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
            4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7));
        var bit = Vector512.Create(0x8040201008040201UL).AsByte();
        var m = Vector512.Equals(spread & bit, bit).AsSByte();
        return (Vector512.Load((sbyte*)(q8 + 64 * p)) ^ m) - m;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> SignedPair<T>(ushort* idx, byte* x, Vector512<short> ls, byte* q8, int p) where T : struct, ISignedLattice =>
        Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(T.Points(x, idx, p), SignedQ8(T.Signs(x, idx), q8, p)), Avx512BW.PermuteVar32x16(ls, PairQuarters(p)));

    /// <summary>One IQ2 or IQ3 row against one Q8_K row: bit for bit <see cref="DotLatticeAvx2{T}"/>.</summary>
    [SkipLocalsInit]
    internal static float DotSignedLatticeAvx512<T>(byte* x, byte* y, int nb) where T : struct, ISignedLattice
    {
        LatticeIndices b0, b1; // this super-block's grid indices and the next one's (stored a block ahead)
        ushort* idx = b0.V, next = b1.V;
        Vector256<float> accf = default;
        if (nb > 0) T.Prepare(x, idx);
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            if (i + 1 < nb) T.Prepare(x + T.Bytes, next);
            var ls = T.Scales(x);
            byte* q = y + 4;
            var acc = (SignedPair<T>(idx, x, ls, q, 0) + SignedPair<T>(idx, x, ls, q, 1)) + (SignedPair<T>(idx, x, ls, q, 2) + SignedPair<T>(idx, x, ls, q, 3));
            accf = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(acc.GetLower() + acc.GetUpper()), accf);
            ushort* swap = idx; idx = next; next = swap;
        }
        return T.Factor * Vector256.Sum(accf);
    }

    /// <summary>One IQ2 or IQ3 row against four activation rows, each with the bits of <see cref="DotSignedLatticeAvx512{T}"/>.</summary>
    [SkipLocalsInit]
    internal static void DotSignedLatticeAvx512X4<T>(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride) where T : struct, ISignedLattice
    {
        LatticeIndices b0, b1;
        ushort* idx = b0.V, next = b1.V;
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default;
        if (nb > 0) T.Prepare(x, idx);
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            if (i + 1 < nb) T.Prepare(x + T.Bytes, next);
            var ls = T.Scales(x);
            Vector512<int> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int p = 0; p < 4; p++)
            {
                var g = T.Points(x, idx, p);
                var sc = Avx512BW.PermuteVar32x16(ls, PairQuarters(p));
                byte* q = y + 4, s = T.Signs(x, idx);
                a0 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, SignedQ8(s, q, p)), sc);
                a1 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, SignedQ8(s, q + yStride, p)), sc);
                a2 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, SignedQ8(s, q + 2 * yStride, p)), sc);
                a3 += Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(g, SignedQ8(s, q + 3 * yStride, p)), sc);
            }
            float dx = Fp16.ToSingle(*(ushort*)x);
            f0 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)y), Vector256.ConvertToSingle(a0.GetLower() + a0.GetUpper()), f0);
            f1 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + yStride)), Vector256.ConvertToSingle(a1.GetLower() + a1.GetUpper()), f1);
            f2 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + 2 * yStride)), Vector256.ConvertToSingle(a2.GetLower() + a2.GetUpper()), f2);
            f3 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + 3 * yStride)), Vector256.ConvertToSingle(a3.GetLower() + a3.GetUpper()), f3);
            ushort* swap = idx; idx = next; next = swap;
        }
        dst[0] = T.Factor * Vector256.Sum(f0); dst[dstStride] = T.Factor * Vector256.Sum(f1);
        dst[2 * dstStride] = T.Factor * Vector256.Sum(f2); dst[3 * dstStride] = T.Factor * Vector256.Sum(f3);
    }
}
