using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Cria.Tensors;

namespace Cria.Kernels;

// The portable tier's lattice i-quants (IQ2_XXS … IQ1_M) against Q8_K activations in the portable layout (quants
// widened to int16, each run of sixteen as its eight even-indexed then its eight odd-indexed values). Every type comes
// down to one shape: per sixteen values, sixteen signed weight bytes and an odd integer scale 2s + 1.
//
// * IQ2/IQ3: the grid points' magnitudes (8 bytes per point for the E8 grids, 4 for the D4 grids), negated where the
//   sign bit is set: (g ^ m) − m with m = 0 or −1 per byte.
// * IQ1: the grid values g ∈ {−1, 0, 1} and the delta's sign δ = ±1 become 8g + δ, so Σ (8g + δ)·q8 =
//   8·Σ g·q8 + δ·Σ q8, ggml's two sums in one; the 1/8 goes into the float factor.
//
// Sixteen bytes read as eight int16 lanes hold the even-indexed value in the low byte and the odd one in the high
// byte, the activations' order: no shuffle. Integer sums are exact; only the float accumulation order differs from
// DotScalar's.
public static partial class VecDot
{
    /// <summary>A lattice type as the portable kernel reads it: its block bytes, its float factor (ggml's 1/8 for IQ2,
    /// 1/4 for IQ3_XXS, 1 for IQ3_S; 1/8 for IQ1's 8g + δ), the super-block scale, and per 32 values the signed weights
    /// of values 0–15 and 16–31 with the scale of each half.</summary>
    internal unsafe interface ILatticePortable
    {
        static abstract int Bytes { get; }
        static abstract float Factor { get; }
        /// <summary>The super-block scale: the F16 at the block's start (every type but IQ1_M).</summary>
        static virtual float Scale(byte* x) => Half(x);
        static abstract void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi);
    }

    /// <summary>One lattice row against one activation row in the portable layout.</summary>
    internal static unsafe float DotLatticePortable<TPairs, TBlock>(byte* x, byte* y, int nb) where TPairs : IPairMul where TBlock : ILatticePortable
    {
        float* d8 = (float*)y;
        short* a = (short*)(y + PortableQ8KHead * nb); // [nb, 256] widened quants
        var acc = Vector128<float>.Zero;
        for (int i = 0; i < nb; i++, x += TBlock.Bytes, a += 256)
        {
            var isum = Vector128<int>.Zero; // [4] partial lanes; at most 8·32·62·127·31 (IQ3), 8·32·9·127·15 (IQ1)
            for (int ib = 0; ib < 8; ib++)
            {
                TBlock.Load(x, ib, out var lo, out var hi, out int lsLo, out int lsHi);
                isum += SignedBytesDot<TPairs>(lo, a + 32 * ib) * Vector128.Create(lsLo)
                      + SignedBytesDot<TPairs>(hi, a + 32 * ib + 16) * Vector128.Create(lsHi);
            }
            acc += Vector128.ConvertToSingle(isum) * Vector128.Create(TBlock.Scale(x) * d8[i]);
        }
        return TBlock.Factor * Vector128.Sum(acc);
    }

    /// <summary><see cref="DotLatticePortable{TPairs, TBlock}"/> for up to <see cref="PortableRowGroup"/> activation rows at
    /// once (prefill): each sub-block's grid points are gathered and signed once for all of them; each output the bits of
    /// that row alone (the same integers, the same float steps).</summary>
    internal static unsafe void DotLatticePortableRows<TPairs, TBlock>(byte* x, byte* y, int yStride, int B, int nb, float* dst, int dstStride)
        where TPairs : IPairMul where TBlock : ILatticePortable
    {
        var acc = stackalloc Vector128<float>[B]; // [B] partial lanes of Σ isum·d·d8
        var isum = stackalloc Vector128<int>[B];  // [B] this super-block's Σ_ib ls·(Σ w·a)
        for (int b = 0; b < B; b++) acc[b] = Vector128<float>.Zero;
        long head = PortableQ8KHead * nb;
        for (int i = 0; i < nb; i++, x += TBlock.Bytes)
        {
            for (int b = 0; b < B; b++) isum[b] = Vector128<int>.Zero;
            for (int ib = 0; ib < 8; ib++)
            {
                TBlock.Load(x, ib, out var lo, out var hi, out int lsLo, out int lsHi);
                var vLo = Vector128.Create(lsLo);
                var vHi = Vector128.Create(lsHi);
                for (int b = 0; b < B; b++)
                {
                    short* a = (short*)(y + (long)b * yStride + head) + 256 * i + 32 * ib;
                    isum[b] += SignedBytesDot<TPairs>(lo, a) * vLo + SignedBytesDot<TPairs>(hi, a + 16) * vHi;
                }
            }
            float d = TBlock.Scale(x);
            for (int b = 0; b < B; b++)
                acc[b] += Vector128.ConvertToSingle(isum[b]) * Vector128.Create(d * ((float*)(y + (long)b * yStride))[i]);
        }
        for (int b = 0; b < B; b++) dst[(long)b * dstStride] = TBlock.Factor * Vector128.Sum(acc[b]);
    }

    /// <summary>A lattice matrix row against B activation rows: one row by the register-only decode kernel, more in
    /// groups of <see cref="PortableRowGroup"/> (the same bits).</summary>
    static unsafe void RunLatticePortable<TPairs, TBlock>(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride)
        where TPairs : IPairMul where TBlock : ILatticePortable
    {
        if (B == 1) { y[0] = DotLatticePortable<TPairs, TBlock>(w, x, nb); return; }
        for (int b = 0; b < B; b += PortableRowGroup)
            DotLatticePortableRows<TPairs, TBlock>(w, x + (long)b * xStride, xStride, Math.Min(PortableRowGroup, B - b), nb, y + (long)b * yStride, yStride);
    }

    /// <summary>One lattice row against one activation row (<see cref="DotPortable{T}"/>'s lattice types).</summary>
    static unsafe float DotLatticePortable<T>(GgmlType type, byte* w, byte* a, int nb) where T : IPairMul
    {
        float y;
        RunLatticePortable<T>(type, w, a, 0, 1, nb, &y, 0);
        return y;
    }

    /// <summary>The lattice types' one map from type to block struct.</summary>
    static unsafe void RunLatticePortable<T>(GgmlType type, byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride) where T : IPairMul
    {
        switch (type)
        {
            case GgmlType.IQ2_XXS: RunLatticePortable<T, IQ2XXSPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ2_XS: RunLatticePortable<T, IQ2XSPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ2_S: RunLatticePortable<T, IQ2SPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ3_XXS: RunLatticePortable<T, IQ3XXSPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ3_S: RunLatticePortable<T, IQ3SPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ1_S: RunLatticePortable<T, IQ1SPortable>(w, x, xStride, B, nb, y, yStride); break;
            case GgmlType.IQ1_M: RunLatticePortable<T, IQ1MPortable>(w, x, xStride, B, nb, y, yStride); break;
            default: throw new ArgumentException($"{type} is not a lattice type", nameof(type));
        }
    }

    /// <summary>Σ w·a over sixteen values: the signed bytes <paramref name="w"/> in order, the activations as one run of
    /// the portable layout (eight even-indexed, then eight odd-indexed int16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<int> SignedBytesDot<T>(Vector128<sbyte> w, short* a) where T : IPairMul
    {
        var pairs = w.AsInt16();
        return T.MulAdd((pairs << 8) >> 8, Load8(a)) + T.MulAdd(pairs >> 8, Load8(a + 8));
    }

    /// <summary>Grid magnitudes negated where <paramref name="negative"/> is all ones: (g ^ m) − m.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<sbyte> Negate(Vector128<sbyte> g, Vector128<sbyte> negative) => (g ^ negative) - negative;

    /// <summary>Two of ggml's 7-bit sign sets (<see cref="Dequantize.KSigns"/>, through the ±1 table
    /// <see cref="KSignsPM"/>) as byte masks, all ones where negative.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector128<sbyte> SignMasks(uint s0, uint s1)
    {
        ulong* t = Table(KSignsPM);
        return Vector128.LessThan(Vector128.Create(t[s0], t[s1]).AsSByte(), Vector128<sbyte>.Zero);
    }

    /// <summary>Sixteen explicit sign bits (bytes <paramref name="b0"/>, <paramref name="b1"/>: bit j of b0 for value j,
    /// of b1 for value 8 + j) as byte masks, all ones where set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<sbyte> BitMasks(uint b0, uint b1)
    {
        var bit = Vector128.Create(0x8040201008040201UL).AsSByte();
        var spread = Vector128.Create(b0 * 0x0101010101010101UL, b1 * 0x0101010101010101UL).AsSByte();
        return Vector128.Equals(spread & bit, bit);
    }

    /// <summary>IQ2_XXS (d | qs[32] u16): per 32 values four grid bytes, then 4 × 7 sign bits and the scale in bits 28–31.</summary>
    internal readonly struct IQ2XXSPortable : ILatticePortable
    {
        public static int Bytes => 66;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            ulong* g = Table(IQuantGrids.IQ2XXSGrid);
            byte* q = x + 2 + 8 * ib;
            uint s = *(uint*)(q + 4);
            lo = Negate(Vector128.Create(g[q[0]], g[q[1]]).AsSByte(), SignMasks(s & 127, s >> 7 & 127));
            hi = Negate(Vector128.Create(g[q[2]], g[q[3]]).AsSByte(), SignMasks(s >> 14 & 127, s >> 21 & 127));
            lsLo = lsHi = (int)(2 * (s >> 28) + 1);
        }
    }

    /// <summary>IQ2_XS's and IQ2_S's scales of two sixteens from one byte: 2·(low nibble) + 1, 2·(high nibble) + 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void NibbleScales(int sc, out int lsLo, out int lsHi)
    {
        lsLo = 2 * (sc & 0xF) + 1;
        lsHi = 2 * (sc >> 4) + 1;
    }

    /// <summary>IQ2_XS (d | qs[32] u16 | scales[8]): per eight values a 9-bit grid index and 7 sign bits; a 4-bit scale
    /// per sixteen values.</summary>
    internal readonly struct IQ2XSPortable : ILatticePortable
    {
        public static int Bytes => 74;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            ulong* g = Table(IQuantGrids.IQ2XSGrid);
            ushort* q = (ushort*)(x + 2) + 4 * ib;
            lo = Negate(Vector128.Create(g[q[0] & 511u], g[q[1] & 511u]).AsSByte(), SignMasks((uint)q[0] >> 9, (uint)q[1] >> 9));
            hi = Negate(Vector128.Create(g[q[2] & 511u], g[q[3] & 511u]).AsSByte(), SignMasks((uint)q[2] >> 9, (uint)q[3] >> 9));
            NibbleScales(x[66 + ib], out lsLo, out lsHi);
        }
    }

    /// <summary>IQ2_S (d | qs[32] | signs[32] | qh[8] | scales[8]): grid index qs[k] with two high bits from qh, a sign
    /// byte per eight values, a 4-bit scale per sixteen.</summary>
    internal readonly struct IQ2SPortable : ILatticePortable
    {
        public static int Bytes => 82;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            ulong* g = Table(IQuantGrids.IQ2SGrid);
            byte* q = x + 2 + 4 * ib, s = x + 34 + 4 * ib;
            uint qh = x[66 + ib];
            lo = Negate(Vector128.Create(g[q[0] | (qh << 8 & 0x300)], g[q[1] | (qh << 6 & 0x300)]).AsSByte(), BitMasks(s[0], s[1]));
            hi = Negate(Vector128.Create(g[q[2] | (qh << 4 & 0x300)], g[q[3] | (qh << 2 & 0x300)]).AsSByte(), BitMasks(s[2], s[3]));
            NibbleScales(x[74 + ib], out lsLo, out lsHi);
        }
    }

    /// <summary>IQ3_XXS (d | qs[64] | scales_and_signs[8] u32): per 32 values eight 4-value grid points, 4 × 7 sign bits
    /// and the scale in bits 28–31.</summary>
    internal readonly struct IQ3XXSPortable : ILatticePortable
    {
        public static int Bytes => 98;
        public static float Factor => 0.25f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            uint* g = Table(IQuantGrids.IQ3XXSGrid);
            byte* q = x + 2 + 8 * ib;
            uint s = *(uint*)(x + 66 + 4 * ib);
            lo = Negate(Vector128.Create(g[q[0]], g[q[1]], g[q[2]], g[q[3]]).AsSByte(), SignMasks(s & 127, s >> 7 & 127));
            hi = Negate(Vector128.Create(g[q[4]], g[q[5]], g[q[6]], g[q[7]]).AsSByte(), SignMasks(s >> 14 & 127, s >> 21 & 127));
            lsLo = lsHi = (int)(2 * (s >> 28) + 1);
        }
    }

    /// <summary>IQ3_S (d | qs[64] | qh[8] | signs[32] | scales[4]): grid index qs[k] with bit k of qh above it, a sign
    /// byte per eight values, a 4-bit scale per 32.</summary>
    internal readonly struct IQ3SPortable : ILatticePortable
    {
        public static int Bytes => 110;
        public static float Factor => 1f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            uint* g = Table(IQuantGrids.IQ3SGrid);
            byte* q = x + 2 + 8 * ib, s = x + 74 + 4 * ib;
            uint qh = x[66 + ib];
            lo = Negate(Vector128.Create(g[q[0] | (qh << 8 & 256)], g[q[1] | (qh << 7 & 256)], g[q[2] | (qh << 6 & 256)], g[q[3] | (qh << 5 & 256)]).AsSByte(), BitMasks(s[0], s[1]));
            hi = Negate(Vector128.Create(g[q[4] | (qh << 4 & 256)], g[q[5] | (qh << 3 & 256)], g[q[6] | (qh << 2 & 256)], g[q[7] | (qh << 1 & 256)]).AsSByte(), BitMasks(s[2], s[3]));
            lsLo = lsHi = 2 * (x[106 + ib / 2] >> 4 * (ib & 1) & 0xF) + 1;
        }
    }

    /// <summary>8g + δ for two IQ1 grid points (values −1, 0, 1) and their deltas' signs (±1 bytes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<sbyte> IQ1Values(ulong g0, ulong g1, ulong delta0, ulong delta1)
    {
        var g = Vector128.Create(g0, g1).AsSByte();
        var g8 = g + g;
        g8 += g8;
        g8 += g8;
        return g8 + Vector128.Create(delta0, delta1).AsSByte();
    }

    const ulong DeltaUp = 0x0101010101010101UL, DeltaDown = 0xFFFFFFFFFFFFFFFFUL; // eight bytes of +1, of −1

    /// <summary>IQ1_S (d | qs[32] | qh[8] u16): per eight values an 11-bit grid index (qs, three bits of qh); per 32 a
    /// 3-bit scale and the delta's sign (qh bit 15).</summary>
    internal readonly struct IQ1SPortable : ILatticePortable
    {
        public static int Bytes => 50;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            ulong* g = Table(IQuantGrids.IQ1SGrid);
            byte* q = x + 2 + 4 * ib;
            uint qh = *(ushort*)(x + 34 + 2 * ib);
            ulong delta = (qh & 0x8000) != 0 ? DeltaDown : DeltaUp;
            lo = IQ1Values(g[q[0] | (qh << 8 & 0x700)], g[q[1] | (qh << 5 & 0x700)], delta, delta);
            hi = IQ1Values(g[q[2] | (qh << 2 & 0x700)], g[q[3] | (qh >> 1 & 0x700)], delta, delta);
            lsLo = lsHi = (int)(2 * (qh >> 12 & 7) + 1);
        }
    }

    /// <summary>IQ1_M (qs[32] | qh[16] | scales[8]): per eight values an 11-bit grid index (qs, a nibble of qh whose top
    /// bit is the delta's sign); a 3-bit scale per sixteen values; the F16 super-block scale spread over the scales'
    /// top nibbles.</summary>
    internal readonly struct IQ1MPortable : ILatticePortable
    {
        public static int Bytes => 56;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe float Scale(byte* x) => Dequantize.IQ1MScale(new ReadOnlySpan<byte>(x, 56));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static unsafe void Load(byte* x, int ib, out Vector128<sbyte> lo, out Vector128<sbyte> hi, out int lsLo, out int lsHi)
        {
            ulong* g = Table(IQuantGrids.IQ1SGrid);
            byte* q = x + 4 * ib;
            uint h0 = x[32 + 2 * ib], h1 = x[33 + 2 * ib];
            lo = IQ1Values(g[q[0] | (h0 << 8 & 0x700)], g[q[1] | (h0 << 4 & 0x700)], (h0 & 0x08) != 0 ? DeltaDown : DeltaUp, (h0 & 0x80) != 0 ? DeltaDown : DeltaUp);
            hi = IQ1Values(g[q[2] | (h1 << 8 & 0x700)], g[q[3] | (h1 << 4 & 0x700)], (h1 & 0x08) != 0 ? DeltaDown : DeltaUp, (h1 & 0x80) != 0 ? DeltaDown : DeltaUp);
            uint sc = (uint)*(ushort*)(x + 48 + 2 * (ib / 2)) >> 6 * (ib % 2);
            lsLo = (int)(2 * (sc & 7) + 1);
            lsHi = (int)(2 * (sc >> 3 & 7) + 1);
        }
    }
}
