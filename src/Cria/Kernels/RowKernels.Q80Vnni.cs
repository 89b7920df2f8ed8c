using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// ---- Q8_0 × Q8_0 with AVX-VNNI (AVX-512 machines that also have the VEX vpdpbusd: Intel Sapphire Rapids and later,
// AMD Zen 4 and later) -----------------------------------------------------------------------------------------------
// The int16 kernels (Q80Step4, 16 int32 lanes per block from vpmaddwd) spend four vector operations per block and
// activation row on floats — convert, scale product, two multiply-adds — against one on integers; prefill ran at
// 31 GMAC/s where Q4_K, which scales in integers, ran at 69 (gemm-micro, one thread, Sapphire Rapids). Here a block is
// eight int32 lanes, each the exact Σ of four products, from one 256-bit vpdpbusd; two blocks fill one 512-bit vector,
// so the float work (convert, scale product, multiply-add) is per 64 values instead of per 32.
//
// vpdpbusd multiplies unsigned by signed bytes, so the activation quants are stored as q + 128 (1…255) and each weight
// block carries its correction −128·Σ w over the same four bytes as every lane: lane = Σ (q + 128)·w − 128·Σ w = Σ q·w,
// exactly. .NET 10 has no 512-bit vpdpbusd (AVX512-VNNI), hence the 256-bit halves.
//
// The lanes differ from the int16 kernels' (four products each instead of two), so these kernels have their own bits;
// prefill (tiles), decode (one row, two rows) all run the same per-lane operations in the same order and agree bit for
// bit. Machines with AVX-512 but without AVX-VNNI keep the int16 kernels.

public static unsafe partial class RowKernels
{
    /// <summary>Whether Q8_0 weights run through the AVX-VNNI kernels of this file (else the int16 AVX-512 kernels, or
    /// the AVX2 ones).</summary>
    internal static bool Q80Vnni => Avx512BW.IsSupported && AvxVnni.IsSupported;

    /// <summary>Bytes of one Q8_0 activation row in the VNNI layout: per pair of blocks (64 values) 128 B,
    /// [64] quants + 128 as bytes | [16] floats, the pair's two F16-rounded scales, each repeated over its eight lanes.
    /// An odd last block is paired with an empty one (quants 0, stored as 128; scale 0).</summary>
    internal static int Q80VnniRowBytes(int n) => (n / 32 + 1) / 2 * 128;

    /// <summary>Q8_0 activations pairs per part of a tile row (<see cref="Q80VnniBlock"/>): a part of a 16-row tile,
    /// 128 B per pair and row, stays within 40 KiB of L1d.</summary>
    const int Q80VnniPartPairs = 20480 / (Q80TileRows * 128);

    /// <summary>
    /// One activation row into the layout of <see cref="Q80VnniRowBytes"/>: per block the values of the scalar
    /// reference (ggml's quantize_row_q8_0_ref: d = amax / 127, q = round-half-away-from-zero(x / d), d stored as F16),
    /// computed as <see cref="QuantizeQ80Widened"/> computes them.
    /// </summary>
    [SkipLocalsInit]
    internal static void QuantizeQ80Vnni(ReadOnlySpan<float> x, Span<byte> dst)
    {
        int nb = x.Length / 32;
        fixed (float* px = x) fixed (byte* py = dst)
        {
            for (int i = 0; i < nb; i++)
            {
                byte* pair = py + i / 2 * 128;
                int half = i & 1;
                var x0 = Vector512.Load(px + i * 32);
                var x1 = Vector512.Load(px + i * 32 + 16);
                var m8 = Vector512.Max(Vector512.Abs(x0), Vector512.Abs(x1));
                var m4 = Vector256.Max(m8.GetLower(), m8.GetUpper());
                var m2 = Vector128.Max(m4.GetLower(), m4.GetUpper());
                float amax = MathF.Max(MathF.Max(m2[0], m2[1]), MathF.Max(m2[2], m2[3]));
                float d = amax / 127f;
                float id = d != 0 ? 1.0f / d : 0.0f;
                var vid = Vector512.Create(id);
                var bias = Vector512.Create(128);
                Avx512F.ConvertToVector128Byte((RoundAwayFromZero(x0 * vid) + bias).AsUInt32()).Store(pair + 32 * half);
                Avx512F.ConvertToVector128Byte((RoundAwayFromZero(x1 * vid) + bias).AsUInt32()).Store(pair + 32 * half + 16);
                Vector256.Create(Fp16.Round(d)).Store((float*)(pair + 64) + 8 * half);
            }
            if ((nb & 1) != 0) // the empty block beside an odd last one
            {
                byte* pair = py + nb / 2 * 128;
                Vector256.Create((byte)128).Store(pair + 32);
                Vector256<float>.Zero.Store((float*)(pair + 64) + 8);
            }
        }
    }

    /// <summary>round-half-away-from-zero, exactly: t = trunc(v) and v − t are exact in float, so
    /// q = t + sign(v)·[|v − t| ≥ ½] (the rounding of <see cref="QuantizeQ80Widened"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> RoundAwayFromZero(Vector512<float> v)
    {
        var t = Avx512F.RoundScale(v, 0x0B); // truncate toward zero
        var up = Vector512.GreaterThanOrEqual(Vector512.Abs(v - t), Vector512.Create(0.5f));
        var signedOne = Vector512.Create(1f).AsInt32() | (v.AsInt32() & Vector512.Create(int.MinValue));
        return Avx512F.ConvertToVector512Int32WithTruncation(t + (signedOne & up.AsInt32()).AsSingle());
    }

    /// <summary>Two Q8_0 weight blocks unpacked for the tiles: their quants, their corrections −128·Σ w (per four
    /// bytes, the lanes of vpdpbusd) and their scales, each over its eight lanes. An odd last block is paired with an
    /// empty one (all zero).</summary>
    internal struct Q80VnniPair
    {
        public Vector256<sbyte> W0, W1;  // [2][32] quants
        public Vector256<int> C0, C1;    // [2][8] −128·(w4j + w4j+1 + w4j+2 + w4j+3)
        public Vector512<float> D;       // [16] d0 ×8 | d1 ×8
    }

    [ThreadStatic] static Q80VnniPair[]? _q80VnniDecoded; // [nb / 2] one decoded Q8_0 row

    /// <summary>−128·Σ of each four weight bytes: vpdpbusd of 128s against the quants, negated.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Q80Correction(Vector256<sbyte> w) => Vector256<int>.Zero - AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create((byte)128), w);

    /// <summary>One pair of blocks of one activation row (at <paramref name="xp"/>) against a pair of weight blocks:
    /// acc += (d_w · d_x) · (float)lane, per lane. The only arithmetic these kernels do: decode and prefill call it with
    /// the same operands in the same order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Q80VnniStep(byte* xp, Vector256<sbyte> w0, Vector256<sbyte> w1, Vector256<int> c0, Vector256<int> c1, Vector512<float> d, Vector512<float> acc)
    {
        var l0 = AvxVnni.MultiplyWideningAndAdd(c0, Vector256.Load(xp), w0);
        var l1 = AvxVnni.MultiplyWideningAndAdd(c1, Vector256.Load(xp + 32), w1);
        // (Vector512.Create(l0, l1) went through a stack slot, a store and reload per step)
        return Vector512.FusedMultiplyAdd(Vector512.ConvertToSingle(Avx512F.InsertVector256(l0.ToVector512Unsafe(), l1, 1)), d * Vector512.Load((float*)(xp + 64)), acc);
    }

    /// <summary>Pair j of a Q8_0 weight row as <see cref="Q80VnniStep"/> takes it, straight from the row (decode).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Q80VnniLoad(byte* w, int nb, int j, out Vector256<sbyte> w0, out Vector256<sbyte> w1, out Vector256<int> c0, out Vector256<int> c1, out Vector512<float> d)
    {
        byte* blk = w + j * 68;
        w0 = Vector256.Load((sbyte*)blk + 2);
        c0 = Q80Correction(w0);
        float d0 = Fp16.ToSingle(*(ushort*)blk);
        if (2 * j + 1 < nb)
        {
            w1 = Vector256.Load((sbyte*)blk + 36);
            c1 = Q80Correction(w1);
            d = Avx512F.InsertVector256(Vector512.Create(d0), Vector256.Create(Fp16.ToSingle(*(ushort*)(blk + 34))), 1); // not Vector512.Create(lo, hi): a stack slot
        }
        else
        {
            w1 = default; c1 = default;
            d = Avx512F.InsertVector256(Vector512.Create(d0), Vector256<float>.Zero, 1);
        }
    }

    /// <summary>One Q8_0 weight row against one activation row (decode), prefetched ahead as <see cref="Q801"/>.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q80Vnni1(byte* w, byte* x, int nb)
    {
        var acc = Vector512<float>.Zero;
        int pairs = (nb + 1) / 2;
        for (int j = 0; j < pairs; j++)
        {
            byte* blk = w + j * 68;
            Sse.Prefetch0(blk + PrefetchDistance);
            Sse.Prefetch0(blk + PrefetchDistance + 64);
            Q80VnniLoad(w, nb, j, out var w0, out var w1, out var c0, out var c1, out var d);
            acc = Q80VnniStep(x + j * 128, w0, w1, c0, c1, d, acc);
        }
        return Sum(acc);
    }

    /// <summary><see cref="Q80Vnni1"/> on two rows at once (two streams for one core), each with its bits.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static void Q80Vnni1Pair(byte* wa, byte* wb, byte* x, int nb, out float ya, out float yb)
    {
        Vector512<float> accA = default, accB = default;
        int pairs = (nb + 1) / 2;
        for (int j = 0; j < pairs; j++)
        {
            Sse.Prefetch0(wa + j * 68 + PrefetchDistance); Sse.Prefetch0(wa + j * 68 + PrefetchDistance + 64);
            Sse.Prefetch0(wb + j * 68 + PrefetchDistance); Sse.Prefetch0(wb + j * 68 + PrefetchDistance + 64);
            Q80VnniLoad(wa, nb, j, out var a0, out var a1, out var ac0, out var ac1, out var ad);
            accA = Q80VnniStep(x + j * 128, a0, a1, ac0, ac1, ad, accA);
            Q80VnniLoad(wb, nb, j, out var b0, out var b1, out var bc0, out var bc1, out var bd);
            accB = Q80VnniStep(x + j * 128, b0, b1, bc0, bc1, bd, accB);
        }
        ya = Sum(accA);
        yb = Sum(accB);
    }

    /// <summary>Pairs [j0, j1) of one Q8_0 weight row against B activation rows, continuing the accumulators acc[0..B)
    /// (started from zero when j0 = 0): the pairs are decoded once into <paramref name="dec"/>, then activation rows
    /// run four at a time with their accumulators in registers. Per row b the steps are those of
    /// <see cref="Q80Vnni1"/>, one per pair in order, so results depend neither on B nor on the parts.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Q80VnniTilePart(byte* w, byte* x, int xStride, int B, int nb, int j0, int j1, Vector512<float>* acc, Q80VnniPair* dec)
    {
        for (int j = j0; j < j1; j++)
        {
            Q80VnniLoad(w, nb, j, out var w0, out var w1, out var c0, out var c1, out var d);
            dec[j].W0 = w0; dec[j].W1 = w1; dec[j].C0 = c0; dec[j].C1 = c1; dec[j].D = d;
        }
        bool first = j0 == 0;
        int b = 0;
        for (; b + 4 <= B; b += 4)
        {
            byte* xa = x + (long)b * xStride, xb = xa + xStride, xc = xb + xStride, xd = xc + xStride;
            Vector512<float> accA = first ? default : acc[b], accB = first ? default : acc[b + 1];
            Vector512<float> accC = first ? default : acc[b + 2], accD = first ? default : acc[b + 3];
            for (int j = j0; j < j1; j++)
            {
                Q80VnniPair* p = dec + j;
                var w0 = p->W0; var w1 = p->W1; var c0 = p->C0; var c1 = p->C1; var d = p->D;
                int off = j * 128;
                accA = Q80VnniStep(xa + off, w0, w1, c0, c1, d, accA);
                accB = Q80VnniStep(xb + off, w0, w1, c0, c1, d, accB);
                accC = Q80VnniStep(xc + off, w0, w1, c0, c1, d, accC);
                accD = Q80VnniStep(xd + off, w0, w1, c0, c1, d, accD);
            }
            acc[b] = accA; acc[b + 1] = accB; acc[b + 2] = accC; acc[b + 3] = accD;
        }
        for (; b < B; b++)
        {
            byte* xa = x + (long)b * xStride;
            Vector512<float> a = first ? default : acc[b];
            for (int j = j0; j < j1; j++)
                a = Q80VnniStep(xa + j * 128, dec[j].W0, dec[j].W1, dec[j].C0, dec[j].C1, dec[j].D, a);
            acc[b] = a;
        }
    }

    /// <summary>One Q8_0 weight row against B activation rows (<see cref="Run"/>).</summary>
    internal static void Q80VnniTile(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride)
    {
        var acc = (Vector512<float>*)Scratch(ref _q80Acc, (long)B * 16);
        int pairs = (nb + 1) / 2;
        Q80VnniTilePart(w, x, xStride, B, nb, 0, pairs, acc, Scratch(ref _q80VnniDecoded, pairs));
        for (int b = 0; b < B; b++) y[(long)b * yStride] = Sum(acc[b]);
    }

    /// <summary>
    /// Rows [r0, r1) of a Q8_0 matrix against B activation rows (<see cref="RunBlock"/>), blocked as
    /// <see cref="Q80Block"/>: tiles of <see cref="Q80TileRows"/> activation rows, each row in parts of
    /// <see cref="Q80VnniPartPairs"/> pairs of blocks (one part of a tile stays in L1d while every weight row of the chunk
    /// runs over it), accumulators carried between parts.
    /// </summary>
    internal static void Q80VnniBlock(byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        int nb = n / 32, pairs = (nb + 1) / 2;
        var dec = Scratch(ref _q80VnniDecoded, pairs);
        var acc = (Vector512<float>*)Scratch(ref _q80Acc, (long)(r1 - r0) * Q80TileRows * 16); // [rows, tile] accumulators
        float* sums = Scratch(ref _tileSums, (long)(r1 - r0) * Q80TileRows);                 // [rows, tile] results
        for (int b0 = 0; b0 < B; b0 += Q80TileRows)
        {
            int tb = Math.Min(Q80TileRows, B - b0);
            byte* xt = x + (long)b0 * xStride;
            for (int j0 = 0; j0 < pairs; j0 += Q80VnniPartPairs)
            {
                int j1 = Math.Min(pairs, j0 + Q80VnniPartPairs);
                for (int r = r0; r < r1; r++)
                    Q80VnniTilePart(w + (long)r * rowBytes, xt, xStride, tb, nb, j0, j1, acc + (r - r0) * Q80TileRows, dec);
            }
            for (int r = r0; r < r1; r++) Sums16(acc + (r - r0) * Q80TileRows, 1).Store(sums + (r - r0) * Q80TileRows);
            StoreTile(sums, Q80TileRows, r0, r1, tb, y + (long)b0 * yStride, yStride);
        }
    }
}
