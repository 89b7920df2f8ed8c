using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

// The lattice i-quants (IQ2_XXS … IQ1_M) against Q8_K activations: scalar references in the order of ggml's
// ggml_vec_dot_iq*_q8_K_generic. Integer sums per 32 (or 16) values times the odd integer scale 2s + 1; the float
// factor (1/8 for IQ2, 1/4 for IQ3_XXS) is applied once at the end, as ggml does.
public static unsafe partial class VecDot
{
    static int Q8(ReadOnlySpan<byte> y, int i) => (sbyte)y[4 + i];

    // Σ grid·q8·sign over eight values.
    static int Grid8Dot(ulong grid, int signs, ReadOnlySpan<byte> y, int at)
    {
        int sum = 0;
        for (int j = 0; j < 8; j++) sum += (byte)(grid >> 8 * j) * Q8(y, at + j) * ((signs >> j & 1) != 0 ? -1 : 1);
        return sum;
    }

    // IQ2_XXS (d | qs[32] u16) x Q8_K.
    private static float ScalarIQ2_XXS(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 66, 66), y = a.Slice(i * 292, 292);
            float d = H(x, 0) * Q8KScale(y);
            int bsum = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                uint aux1 = BinaryPrimitives.ReadUInt32LittleEndian(x.Slice(6 + 8 * ib));
                int ls = (int)(2 * (aux1 >> 28) + 1), sumi = 0;
                for (int l = 0; l < 4; l++)
                    sumi += Grid8Dot(IQuantGrids.IQ2XXSGrid[x[2 + 8 * ib + l]], Dequantize.KSigns((int)(aux1 >> 7 * l) & 127), y, 32 * ib + 8 * l);
                bsum += sumi * ls;
            }
            sumf += d * bsum;
        }
        return 0.125f * sumf;
    }

    // IQ2_XS (d | qs[32] u16 | scales[8]) x Q8_K.
    private static float ScalarIQ2_XS(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 74, 74), y = a.Slice(i * 292, 292);
            float d = H(x, 0) * Q8KScale(y);
            int bsum = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                int ls1 = 2 * (x[66 + ib] & 0xF) + 1, ls2 = 2 * (x[66 + ib] >> 4) + 1;
                for (int half = 0; half < 2; half++)
                {
                    int sumi = 0;
                    for (int l = 2 * half; l < 2 * half + 2; l++)
                    {
                        int q = BinaryPrimitives.ReadUInt16LittleEndian(x.Slice(2 + 2 * (4 * ib + l)));
                        sumi += Grid8Dot(IQuantGrids.IQ2XSGrid[q & 511], Dequantize.KSigns(q >> 9), y, 32 * ib + 8 * l);
                    }
                    bsum += sumi * (half == 0 ? ls1 : ls2);
                }
            }
            sumf += d * bsum;
        }
        return 0.125f * sumf;
    }

    // IQ2_S (d | qs[32] | signs[32] | qh[8] | scales[8]) x Q8_K.
    private static float ScalarIQ2_S(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 82, 82), y = a.Slice(i * 292, 292);
            float d = H(x, 0) * Q8KScale(y);
            int bsum = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                int ls1 = 1 + 2 * (x[74 + ib] & 0xF), ls2 = 1 + 2 * (x[74 + ib] >> 4);
                int sumi1 = 0, sumi2 = 0;
                for (int l = 0; l < 4; l++)
                {
                    ulong grid = IQuantGrids.IQ2SGrid[x[2 + 4 * ib + l] | (x[66 + ib] << (8 - 2 * l) & 0x300)];
                    int s = Grid8Dot(grid, x[34 + 4 * ib + l], y, 32 * ib + 8 * l);
                    if (l < 2) sumi1 += s; else sumi2 += s;
                }
                bsum += ls1 * sumi1 + ls2 * sumi2;
            }
            sumf += d * bsum;
        }
        return 0.125f * sumf;
    }

    // IQ3_XXS (d | qs[64] | scales_and_signs[8] u32) x Q8_K.
    private static float ScalarIQ3_XXS(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 98, 98), y = a.Slice(i * 292, 292);
            float d = H(x, 0) * Q8KScale(y);
            int bsum = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                uint aux = BinaryPrimitives.ReadUInt32LittleEndian(x.Slice(66 + 4 * ib));
                int ls = (int)(2 * (aux >> 28) + 1), sumi = 0;
                for (int l = 0; l < 4; l++)
                {
                    ulong grid = IQuantGrids.IQ3XXSGrid[x[2 + 8 * ib + 2 * l]] | (ulong)IQuantGrids.IQ3XXSGrid[x[3 + 8 * ib + 2 * l]] << 32;
                    sumi += Grid8Dot(grid, Dequantize.KSigns((int)(aux >> 7 * l) & 127), y, 32 * ib + 8 * l);
                }
                bsum += sumi * ls;
            }
            sumf += d * bsum;
        }
        return 0.25f * sumf;
    }

    // IQ3_S (d | qs[64] | qh[8] | signs[32] | scales[4]) x Q8_K.
    private static float ScalarIQ3_S(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 110, 110), y = a.Slice(i * 292, 292);
            float d = H(x, 0) * Q8KScale(y);
            int bsum = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                int sc = x[106 + ib / 2], ls = 2 * ((ib & 1) == 0 ? sc & 0xF : sc >> 4) + 1, qh = x[66 + ib], sumi = 0;
                for (int l = 0; l < 4; l++)
                {
                    ulong grid = IQuantGrids.IQ3SGrid[x[2 + 8 * ib + 2 * l] | (qh << (8 - 2 * l) & 256)]
                        | (ulong)IQuantGrids.IQ3SGrid[x[3 + 8 * ib + 2 * l] | (qh << (7 - 2 * l) & 256)] << 32;
                    sumi += Grid8Dot(grid, x[74 + 4 * ib + l], y, 32 * ib + 8 * l);
                }
                bsum += sumi * ls;
            }
            sumf += d * bsum;
        }
        return sumf;
    }

    // IQ1_S (d | qs[32] | qh[8] u16) x Q8_K: Σ ls·(grid·q8) plus the delta times the Q8_K block sums.
    private static float ScalarIQ1_S(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 50, 50), y = a.Slice(i * 292, 292);
            int sumi = 0, sumi1 = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                int qh = BinaryPrimitives.ReadUInt16LittleEndian(x.Slice(34 + 2 * ib));
                int ls = 2 * ((qh >> 12) & 7) + 1, delta = (qh & 0x8000) != 0 ? -1 : 1, lsum = 0;
                for (int l = 0; l < 4; l++)
                {
                    ulong grid = IQuantGrids.IQ1SGrid[x[2 + 4 * ib + l] | (((qh >> 3 * l) & 7) << 8)];
                    for (int j = 0; j < 8; j++) lsum += Q8(y, 32 * ib + 8 * l + j) * (sbyte)(byte)(grid >> 8 * j);
                }
                sumi += ls * lsum;
                sumi1 += ls * delta * (BSum(y, 2 * ib) + BSum(y, 2 * ib + 1));
            }
            sumf += H(x, 0) * Q8KScale(y) * (sumi + Dequantize.IQ1Delta * sumi1);
        }
        return sumf;
    }

    // IQ1_M (qs[32] | qh[16] | scales[8]) x Q8_K: the delta's sign per eight values, so the q8 sums are taken here.
    private static float ScalarIQ1_M(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 56, 56), y = a.Slice(i * 292, 292);
            int sumi1 = 0, sumi2 = 0;
            for (int ib = 0; ib < 8; ib++)
            {
                int s10 = 0, s11 = 0, s20 = 0, s21 = 0;
                for (int l = 0; l < 4; l++)
                {
                    int qh = x[32 + 2 * ib + l / 2];
                    int delta = (qh & (l % 2 == 0 ? 0x08 : 0x80)) != 0 ? -1 : 1;
                    ulong grid = IQuantGrids.IQ1SGrid[x[4 * ib + l] | ((qh << (8 - 4 * (l % 2))) & 0x700)];
                    int lsum1 = 0, lsum2 = 0;
                    for (int j = 0; j < 8; j++)
                    {
                        lsum1 += Q8(y, 32 * ib + 8 * l + j) * (sbyte)(byte)(grid >> 8 * j);
                        lsum2 += Q8(y, 32 * ib + 8 * l + j);
                    }
                    if (l < 2) { s10 += lsum1; s20 += lsum2 * delta; } else { s11 += lsum1; s21 += lsum2 * delta; }
                }
                int ls1 = 2 * Dequantize.IQ1MSubScale(x, 2 * ib) + 1, ls2 = 2 * Dequantize.IQ1MSubScale(x, 2 * ib + 1) + 1;
                sumi1 += s10 * ls1 + s11 * ls2;
                sumi2 += s20 * ls1 + s21 * ls2;
            }
            sumf += Dequantize.IQ1MScale(x) * Q8KScale(y) * (sumi1 + Dequantize.IQ1Delta * sumi2);
        }
        return sumf;
    }

    // ------------------------------------------------------------------ AVX2 kernels (one row, ggml's Q8_K layout)
    //
    // (With AVX-512BW, IQ1_S, IQ1_M, IQ2_S and IQ3_S run the kernels of VecDot.IQuants.Avx512.cs instead.)
    // Every type: per 32 values the grid points are gathered into one 256-bit vector (unsigned magnitudes for IQ2/IQ3,
    // signed −1/0/1 for IQ1), the signs are applied to the activations (vpsignb), vpmaddubsw multiplies the 32 pairs
    // and vpmaddwd applies the integer scale 2s + 1. Integer sums are the scalar kernels' exactly; the float sum runs
    // per lane, so results equal DotScalar up to float rounding. Q8_K quants lie in −127..127, so a sign flip never
    // overflows, and 43·127·2 and 62·127·2 fit vpmaddubsw's int16.

    /// <summary>The eight signs of each 7-bit sign set (<see cref="Dequantize.KSigns"/>) as ±1 bytes (ggml's
    /// keven_signs_q2xs): one load per eight values.</summary>
    internal static ReadOnlySpan<ulong> KSignsPM =>
    [
        0x0101010101010101, 0xff010101010101ff, 0xff0101010101ff01, 0x010101010101ffff,
        0xff01010101ff0101, 0x0101010101ff01ff, 0x0101010101ffff01, 0xff01010101ffffff,
        0xff010101ff010101, 0x01010101ff0101ff, 0x01010101ff01ff01, 0xff010101ff01ffff,
        0x01010101ffff0101, 0xff010101ffff01ff, 0xff010101ffffff01, 0x01010101ffffffff,
        0xff0101ff01010101, 0x010101ff010101ff, 0x010101ff0101ff01, 0xff0101ff0101ffff,
        0x010101ff01ff0101, 0xff0101ff01ff01ff, 0xff0101ff01ffff01, 0x010101ff01ffffff,
        0x010101ffff010101, 0xff0101ffff0101ff, 0xff0101ffff01ff01, 0x010101ffff01ffff,
        0xff0101ffffff0101, 0x010101ffffff01ff, 0x010101ffffffff01, 0xff0101ffffffffff,
        0xff01ff0101010101, 0x0101ff01010101ff, 0x0101ff010101ff01, 0xff01ff010101ffff,
        0x0101ff0101ff0101, 0xff01ff0101ff01ff, 0xff01ff0101ffff01, 0x0101ff0101ffffff,
        0x0101ff01ff010101, 0xff01ff01ff0101ff, 0xff01ff01ff01ff01, 0x0101ff01ff01ffff,
        0xff01ff01ffff0101, 0x0101ff01ffff01ff, 0x0101ff01ffffff01, 0xff01ff01ffffffff,
        0x0101ffff01010101, 0xff01ffff010101ff, 0xff01ffff0101ff01, 0x0101ffff0101ffff,
        0xff01ffff01ff0101, 0x0101ffff01ff01ff, 0x0101ffff01ffff01, 0xff01ffff01ffffff,
        0xff01ffffff010101, 0x0101ffffff0101ff, 0x0101ffffff01ff01, 0xff01ffffff01ffff,
        0x0101ffffffff0101, 0xff01ffffffff01ff, 0xff01ffffffffff01, 0x0101ffffffffffff,
        0xffff010101010101, 0x01ff0101010101ff, 0x01ff01010101ff01, 0xffff01010101ffff,
        0x01ff010101ff0101, 0xffff010101ff01ff, 0xffff010101ffff01, 0x01ff010101ffffff,
        0x01ff0101ff010101, 0xffff0101ff0101ff, 0xffff0101ff01ff01, 0x01ff0101ff01ffff,
        0xffff0101ffff0101, 0x01ff0101ffff01ff, 0x01ff0101ffffff01, 0xffff0101ffffffff,
        0x01ff01ff01010101, 0xffff01ff010101ff, 0xffff01ff0101ff01, 0x01ff01ff0101ffff,
        0xffff01ff01ff0101, 0x01ff01ff01ff01ff, 0x01ff01ff01ffff01, 0xffff01ff01ffffff,
        0xffff01ffff010101, 0x01ff01ffff0101ff, 0x01ff01ffff01ff01, 0xffff01ffff01ffff,
        0x01ff01ffffff0101, 0xffff01ffffff01ff, 0xffff01ffffffff01, 0x01ff01ffffffffff,
        0x01ffff0101010101, 0xffffff01010101ff, 0xffffff010101ff01, 0x01ffff010101ffff,
        0xffffff0101ff0101, 0x01ffff0101ff01ff, 0x01ffff0101ffff01, 0xffffff0101ffffff,
        0xffffff01ff010101, 0x01ffff01ff0101ff, 0x01ffff01ff01ff01, 0xffffff01ff01ffff,
        0x01ffff01ffff0101, 0xffffff01ffff01ff, 0xffffff01ffffff01, 0x01ffff01ffffffff,
        0xffffffff01010101, 0x01ffffff010101ff, 0x01ffffff0101ff01, 0xffffffff0101ffff,
        0x01ffffff01ff0101, 0xffffffff01ff01ff, 0xffffffff01ffff01, 0x01ffffff01ffffff,
        0x01ffffffff010101, 0xffffffffff0101ff, 0xffffffffff01ff01, 0x01ffffffff01ffff,
        0xffffffffffff0101, 0x01ffffffffff01ff, 0x01ffffffffffff01, 0xffffffffffffffff,
    ];

    /// <summary>Four 7-bit sign sets (bits 0..27 of <paramref name="packed"/>) as ±1 bytes, eight per set.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> SignsPM4(uint packed)
    {
        ulong* t = Table(KSignsPM);
        return Vector256.Create(t[packed & 127], t[packed >> 7 & 127], t[packed >> 14 & 127], t[packed >> 21 & 127]).AsSByte();
    }

    /// <summary>A pointer to a constant table (data in the assembly image, which never moves), so that unsigned
    /// indices address it without sign extension.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static T* Table<T>(ReadOnlySpan<T> table) where T : unmanaged => (T*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(table));

    /// <summary>Bytes 8k..8k+7 of the result are ±1 from the bits of byte k of <paramref name="bits"/> (bit set: −1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> SignsFromBits(uint bits)
    {
        var spread = Avx2.Shuffle(Vector256.Create(bits).AsByte(),
            Vector256.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, (byte)3));
        var mask = Vector256.Create(0x8040201008040201UL).AsByte();
        return (Vector256.Equals(spread & mask, mask).AsSByte() | Vector256<sbyte>.One);
    }

    /// <summary>Σ over 32 values of grid·sign·q8, as eight int32 lanes after vpmaddwd by <paramref name="scales"/>
    /// (int16 per pair of products: one scale per 32 values, or the low lane's 16 values and the high lane's).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> GridDot(Vector256<byte> grid, Vector256<sbyte> signs, byte* q8, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(grid, Avx2.Sign(Vector256.Load((sbyte*)q8), signs)), scales);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> Scales2(int lo, int hi) => Vector256.Create(Vector128.Create((short)lo), Vector128.Create((short)hi));

    /// <summary>An IQ2 or IQ3 type as its kernels read it: per 32 values the grid magnitudes, the signs and the int16
    /// scales 2s + 1; the float factor ggml applies at the end (1/8 for IQ2, 1/4 for IQ3_XXS, 1 for IQ3_S).</summary>
    internal interface ILatticeBlock
    {
        static abstract int Bytes { get; }
        static abstract float Factor { get; }
        static abstract void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales);
    }

    internal struct IQ2XXSBlock : ILatticeBlock
    {
        public static int Bytes => 66;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales)
        {
            ulong* g = Table(IQuantGrids.IQ2XXSGrid);
            byte* q = x + 2 + 8 * ib;
            uint a1 = *(uint*)(q + 4);
            grid = Vector256.Create(g[q[0]], g[q[1]], g[q[2]], g[q[3]]).AsByte();
            signs = SignsPM4(a1);
            scales = Vector256.Create((short)(2 * (a1 >> 28) + 1));
        }
    }

    internal struct IQ2XSBlock : ILatticeBlock
    {
        public static int Bytes => 74;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales)
        {
            ulong* g = Table(IQuantGrids.IQ2XSGrid), ks = Table(KSignsPM);
            ushort* q = (ushort*)(x + 2) + 4 * ib;
            grid = Vector256.Create(g[q[0] & 511u], g[q[1] & 511u], g[q[2] & 511u], g[q[3] & 511u]).AsByte();
            signs = Vector256.Create(ks[(uint)q[0] >> 9], ks[(uint)q[1] >> 9], ks[(uint)q[2] >> 9], ks[(uint)q[3] >> 9]).AsSByte();
            int sc = x[66 + ib];
            scales = Scales2(2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1);
        }
    }

    internal struct IQ2SBlock : ILatticeBlock
    {
        public static int Bytes => 82;
        public static float Factor => 0.125f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales)
        {
            ulong* g = Table(IQuantGrids.IQ2SGrid);
            // index k = qs[k] | (bits 2k, 2k+1 of qh) << 8, four at once, then through memory (as IQ3_S)
            var idx = Sse41.ConvertToVector128Int32(x + 2 + 4 * ib).AsUInt32()
                | (Avx2.ShiftLeftLogicalVariable(Vector128.Create((uint)x[66 + ib]), Vector128.Create(8u, 6, 4, 2)) & Vector128.Create(0x300u));
            uint* k = (uint*)&idx;
            grid = Vector256.Create(g[k[0]], g[k[1]], g[k[2]], g[k[3]]).AsByte();
            signs = SignsFromBits(*(uint*)(x + 34 + 4 * ib));
            int sc = x[74 + ib];
            scales = Scales2(2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1);
        }
    }

    internal struct IQ3XXSBlock : ILatticeBlock
    {
        public static int Bytes => 98;
        public static float Factor => 0.25f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales)
        {
            uint* g = Table(IQuantGrids.IQ3XXSGrid);
            byte* qs = x + 2 + 8 * ib;
            uint aux = *(uint*)(x + 66 + 4 * ib);
            grid = Vector256.Create(g[qs[0]], g[qs[1]], g[qs[2]], g[qs[3]], g[qs[4]], g[qs[5]], g[qs[6]], g[qs[7]]).AsByte();
            signs = SignsPM4(aux);
            scales = Vector256.Create((short)(2 * (aux >> 28) + 1));
        }
    }

    internal struct IQ3SBlock : ILatticeBlock
    {
        public static int Bytes => 110;
        public static float Factor => 1f;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static void Load(byte* x, int ib, out Vector256<byte> grid, out Vector256<sbyte> signs, out Vector256<short> scales)
        {
            // index k = qs[k] | (bit k of qh) << 8
            var high = Avx2.ShiftLeftLogicalVariable(Vector256.Create((uint)x[66 + ib]), Vector256.Create(8u, 7, 6, 5, 4, 3, 2, 1)) & Vector256.Create(256u);
            var idx = Avx2.ConvertToVector256Int32(x + 2 + 8 * ib) | high.AsInt32();
            uint* k = (uint*)&idx; // the indices through memory, as ggml does (vpgatherdd is slower)
            uint* g = Table(IQuantGrids.IQ3SGrid);
            grid = Vector256.Create(g[k[0]], g[k[1]], g[k[2]], g[k[3]], g[k[4]], g[k[5]], g[k[6]], g[k[7]]).AsByte();
            signs = SignsFromBits(*(uint*)(x + 74 + 4 * ib));
            int sc = x[106 + ib / 2];
            scales = Vector256.Create((short)(2 * (sc >> 4 * (ib & 1) & 0xF) + 1));
        }
    }

    /// <summary>One IQ2/IQ3 row against one Q8_K activation row.</summary>
    internal static float DotLatticeAvx2<T>(byte* x, byte* y, int nb) where T : struct, ILatticeBlock
    {
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                T.Load(x, ib, out var grid, out var signs, out var scales);
                sumi += GridDot(grid, signs, y + 4 + 32 * ib, scales);
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return T.Factor * Vector256.Sum(acc);
    }

    /// <summary>One IQ2/IQ3 row against four Q8_K activation rows (<paramref name="yStride"/> bytes apart), the grid
    /// points and signs gathered once for the four; each result has the bits of <see cref="DotLatticeAvx2{T}"/>.</summary>
    internal static void DotLatticeAvx2X4<T>(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride) where T : struct, ILatticeBlock
    {
        Vector256<float> acc0 = default, acc1 = default, acc2 = default, acc3 = default;
        for (int i = 0; i < nb; i++, x += T.Bytes, y += 292)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            for (int ib = 0; ib < 8; ib++)
            {
                T.Load(x, ib, out var grid, out var signs, out var scales);
                byte* q = y + 4 + 32 * ib;
                s0 += GridDot(grid, signs, q, scales);
                s1 += GridDot(grid, signs, q + yStride, scales);
                s2 += GridDot(grid, signs, q + 2 * yStride, scales);
                s3 += GridDot(grid, signs, q + 3 * yStride, scales);
            }
            float dx = Fp16.ToSingle(*(ushort*)x);
            acc0 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)y), Vector256.ConvertToSingle(s0), acc0);
            acc1 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + yStride)), Vector256.ConvertToSingle(s1), acc1);
            acc2 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + 2 * yStride)), Vector256.ConvertToSingle(s2), acc2);
            acc3 = Fma.MultiplyAdd(Vector256.Create(dx * *(float*)(y + 3 * yStride)), Vector256.ConvertToSingle(s3), acc3);
        }
        dst[0] = T.Factor * Vector256.Sum(acc0);
        dst[dstStride] = T.Factor * Vector256.Sum(acc1);
        dst[2 * dstStride] = T.Factor * Vector256.Sum(acc2);
        dst[3 * dstStride] = T.Factor * Vector256.Sum(acc3);
    }

    /// <summary>Σ over 32 values of grid·q8 for the signed IQ1 grid points (−1, 0, 1): vpmaddubsw of |grid| with q8
    /// carrying the grid's sign, then vpmaddwd by <paramref name="scales"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> SignedGridDot(Vector256<sbyte> grid, byte* q8, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(grid), Avx2.Sign(Vector256.Load((sbyte*)q8), grid)), scales);

    /// <summary>IQ1_S's 32-value group <paramref name="ib"/>: the grid points (−1, 0, 1), the scale 2s + 1 and the
    /// delta's sign (bit 15, branch-free).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> IQ1SLoad(byte* x, int ib, ulong* grid, out int ls, out int deltaSign)
    {
        byte* qs = x + 2 + 4 * ib;
        uint qh = ((ushort*)(x + 34))[ib];
        ls = (int)(2 * ((qh >> 12) & 7) + 1);
        deltaSign = 1 - (int)(qh >> 14 & 2);
        return Vector256.Create(grid[qs[0] | (qh << 8 & 0x700)], grid[qs[1] | (qh << 5 & 0x700)],
            grid[qs[2] | (qh << 2 & 0x700)], grid[qs[3] | (qh >> 1 & 0x700)]).AsSByte();
    }

    internal static float DotIQ1SAvx2(byte* x, byte* y, int nb)
    {
        ulong* grid = Table(IQuantGrids.IQ1SGrid);
        float sumf = 0;
        for (int i = 0; i < nb; i++, x += 50, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            int sumi1 = 0;
            short* bsums = (short*)(y + 260);
            for (int ib = 0; ib < 8; ib++)
            {
                var g = IQ1SLoad(x, ib, grid, out int ls, out int delta);
                sumi += SignedGridDot(g, y + 4 + 32 * ib, Vector256.Create((short)ls));
                sumi1 += ls * delta * (bsums[2 * ib] + bsums[2 * ib + 1]);
            }
            sumf += Fp16.ToSingle(*(ushort*)x) * *(float*)y * (Vector256.Sum(sumi) + Dequantize.IQ1Delta * sumi1);
        }
        return sumf;
    }

    /// <summary>One IQ1_S row against four activation rows, each with the bits of <see cref="DotIQ1SAvx2"/>.</summary>
    internal static void DotIQ1SAvx2X4(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride)
    {
        ulong* grid = Table(IQuantGrids.IQ1SGrid);
        float f0 = 0, f1 = 0, f2 = 0, f3 = 0;
        for (int i = 0; i < nb; i++, x += 50, y += 292)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            int d0 = 0, d1 = 0, d2 = 0, d3 = 0;
            short* b = (short*)(y + 260);
            int bs = yStride / 2;
            for (int ib = 0; ib < 8; ib++)
            {
                var g = IQ1SLoad(x, ib, grid, out int ls, out int delta);
                var scale = Vector256.Create((short)ls);
                byte* q = y + 4 + 32 * ib;
                s0 += SignedGridDot(g, q, scale);
                s1 += SignedGridDot(g, q + yStride, scale);
                s2 += SignedGridDot(g, q + 2 * yStride, scale);
                s3 += SignedGridDot(g, q + 3 * yStride, scale);
                int k = ls * delta, j = 2 * ib;
                d0 += k * (b[j] + b[j + 1]);
                d1 += k * (b[bs + j] + b[bs + j + 1]);
                d2 += k * (b[2 * bs + j] + b[2 * bs + j + 1]);
                d3 += k * (b[3 * bs + j] + b[3 * bs + j + 1]);
            }
            float dx = Fp16.ToSingle(*(ushort*)x);
            f0 += dx * *(float*)y * (Vector256.Sum(s0) + Dequantize.IQ1Delta * d0);
            f1 += dx * *(float*)(y + yStride) * (Vector256.Sum(s1) + Dequantize.IQ1Delta * d1);
            f2 += dx * *(float*)(y + 2 * yStride) * (Vector256.Sum(s2) + Dequantize.IQ1Delta * d2);
            f3 += dx * *(float*)(y + 3 * yStride) * (Vector256.Sum(s3) + Dequantize.IQ1Delta * d3);
        }
        dst[0] = f0; dst[dstStride] = f1; dst[2 * dstStride] = f2; dst[3 * dstStride] = f3;
    }

    /// <summary>Eight bytes of −1 if bit 0 of <paramref name="bit"/> is set, else of +1 (branch-free: the bits are data).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static long DeltaBytes(int bit) => 0x0101010101010101L ^ (-(long)(bit & 1) & unchecked((long)0xFEFEFEFEFEFEFEFEUL));

    /// <summary>IQ1_M's 32-value group <paramref name="ib"/>: the grid points, the delta's sign per eight values as ±1
    /// bytes (bit 3 of each qh nibble) and the two 16-value scales 2s + 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> IQ1MLoad(byte* x, int ib, ulong* grid, out Vector256<sbyte> deltaBytes, out Vector256<short> scales)
    {
        byte* qs = x + 4 * ib;
        uint qh0 = x[32 + 2 * ib], qh1 = x[33 + 2 * ib];
        deltaBytes = Vector256.Create(DeltaBytes((int)qh0 >> 3), DeltaBytes((int)qh0 >> 7), DeltaBytes((int)qh1 >> 3), DeltaBytes((int)qh1 >> 7)).AsSByte();
        int s = ((ushort*)(x + 48))[ib / 2] >> (6 * (ib % 2));
        scales = Scales2(2 * (s & 7) + 1, 2 * (s >> 3 & 7) + 1);
        return Vector256.Create(grid[qs[0] | (qh0 << 8 & 0x700)], grid[qs[1] | (qh0 << 4 & 0x700)],
            grid[qs[2] | (qh1 << 8 & 0x700)], grid[qs[3] | (qh1 << 4 & 0x700)]).AsSByte();
    }

    internal static float DotIQ1MAvx2(byte* x, byte* y, int nb)
    {
        ulong* grid = Table(IQuantGrids.IQ1SGrid);
        float sumf = 0;
        for (int i = 0; i < nb; i++, x += 56, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi1 = default, sumi2 = default;
            for (int ib = 0; ib < 8; ib++)
            {
                var g = IQ1MLoad(x, ib, grid, out var deltaBytes, out var scales);
                sumi1 += SignedGridDot(g, y + 4 + 32 * ib, scales);
                sumi2 += SignedGridDot(deltaBytes, y + 4 + 32 * ib, scales);
            }
            sumf += Dequantize.IQ1MScale(new ReadOnlySpan<byte>(x, 56)) * *(float*)y * (Vector256.Sum(sumi1) + Dequantize.IQ1Delta * Vector256.Sum(sumi2));
        }
        return sumf;
    }

    /// <summary>One IQ1_M row against four activation rows, each with the bits of <see cref="DotIQ1MAvx2"/>.</summary>
    internal static void DotIQ1MAvx2X4(byte* x, byte* y, int yStride, int nb, float* dst, int dstStride)
    {
        ulong* grid = Table(IQuantGrids.IQ1SGrid);
        float f0 = 0, f1 = 0, f2 = 0, f3 = 0;
        for (int i = 0; i < nb; i++, x += 56, y += 292)
        {
            Vector256<int> a0 = default, a1 = default, a2 = default, a3 = default, e0 = default, e1 = default, e2 = default, e3 = default;
            for (int ib = 0; ib < 8; ib++)
            {
                var g = IQ1MLoad(x, ib, grid, out var deltaBytes, out var scales);
                byte* q = y + 4 + 32 * ib;
                a0 += SignedGridDot(g, q, scales); e0 += SignedGridDot(deltaBytes, q, scales);
                a1 += SignedGridDot(g, q + yStride, scales); e1 += SignedGridDot(deltaBytes, q + yStride, scales);
                a2 += SignedGridDot(g, q + 2 * yStride, scales); e2 += SignedGridDot(deltaBytes, q + 2 * yStride, scales);
                a3 += SignedGridDot(g, q + 3 * yStride, scales); e3 += SignedGridDot(deltaBytes, q + 3 * yStride, scales);
            }
            float d = Dequantize.IQ1MScale(new ReadOnlySpan<byte>(x, 56));
            f0 += d * *(float*)y * (Vector256.Sum(a0) + Dequantize.IQ1Delta * Vector256.Sum(e0));
            f1 += d * *(float*)(y + yStride) * (Vector256.Sum(a1) + Dequantize.IQ1Delta * Vector256.Sum(e1));
            f2 += d * *(float*)(y + 2 * yStride) * (Vector256.Sum(a2) + Dequantize.IQ1Delta * Vector256.Sum(e2));
            f3 += d * *(float*)(y + 3 * yStride) * (Vector256.Sum(a3) + Dequantize.IQ1Delta * Vector256.Sum(e3));
        }
        dst[0] = f0; dst[dstStride] = f1; dst[2 * dstStride] = f2; dst[3 * dstStride] = f3;
    }
}
