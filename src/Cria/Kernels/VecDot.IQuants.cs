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

    static float Q8d(ReadOnlySpan<byte> y) => BinaryPrimitives.ReadSingleLittleEndian(y);

    static int Q8BlockSum(ReadOnlySpan<byte> y, int j) => BinaryPrimitives.ReadInt16LittleEndian(y.Slice(260 + 2 * j));

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
            float d = H(x, 0) * Q8d(y);
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
            float d = H(x, 0) * Q8d(y);
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
            float d = H(x, 0) * Q8d(y);
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
            float d = H(x, 0) * Q8d(y);
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
            float d = H(x, 0) * Q8d(y);
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
                sumi1 += ls * delta * (Q8BlockSum(y, 2 * ib) + Q8BlockSum(y, 2 * ib + 1));
            }
            sumf += H(x, 0) * Q8d(y) * (sumi + Dequantize.IQ1Delta * sumi1);
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
            sumf += Dequantize.IQ1MScale(x) * Q8d(y) * (sumi1 + Dequantize.IQ1Delta * sumi2);
        }
        return sumf;
    }

    // ------------------------------------------------------------------ AVX2 kernels (one row, ggml's Q8_K layout)
    //
    // Every type: per 32 values the grid points are gathered into one 256-bit vector (unsigned magnitudes for IQ2/IQ3,
    // signed −1/0/1 for IQ1), the signs are applied to the activations (vpsignb), vpmaddubsw multiplies the 32 pairs
    // and vpmaddwd applies the integer scale 2s + 1. Integer sums are the scalar kernels' exactly; the float sum runs
    // per lane, so results equal DotScalar up to float rounding. Q8_K quants lie in −127..127, so a sign flip never
    // overflows, and 43·127·2 and 62·127·2 fit vpmaddubsw's int16.

    /// <summary><see cref="Dequantize.KSigns"/> as a table: the sign byte of a 7-bit sign set.</summary>
    internal static ReadOnlySpan<byte> KSignsTable =>
    [
        0, 129, 130, 3, 132, 5, 6, 135, 136, 9, 10, 139, 12, 141, 142, 15,
        144, 17, 18, 147, 20, 149, 150, 23, 24, 153, 154, 27, 156, 29, 30, 159,
        160, 33, 34, 163, 36, 165, 166, 39, 40, 169, 170, 43, 172, 45, 46, 175,
        48, 177, 178, 51, 180, 53, 54, 183, 184, 57, 58, 187, 60, 189, 190, 63,
        192, 65, 66, 195, 68, 197, 198, 71, 72, 201, 202, 75, 204, 77, 78, 207,
        80, 209, 210, 83, 212, 85, 86, 215, 216, 89, 90, 219, 92, 221, 222, 95,
        96, 225, 226, 99, 228, 101, 102, 231, 232, 105, 106, 235, 108, 237, 238, 111,
        240, 113, 114, 243, 116, 245, 246, 119, 120, 249, 250, 123, 252, 125, 126, 255,
    ];

    /// <summary>Bytes 8k..8k+7 of the result are ±1 from the bits of byte k of <paramref name="bits"/> (bit set: −1).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> SignsFromBits(uint bits)
    {
        var spread = Avx2.Shuffle(Vector256.Create(bits).AsByte(),
            Vector256.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, (byte)3));
        var mask = Vector256.Create(0x8040201008040201UL).AsByte();
        return (Vector256.Equals(spread & mask, mask).AsSByte() | Vector256<sbyte>.One);
    }

    /// <summary>Four 7-bit sign sets (bits 0..27 of <paramref name="packed"/>) as four sign bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static uint KSigns4(uint packed)
    {
        ref byte t = ref MemoryMarshal.GetReference(KSignsTable);
        return Unsafe.Add(ref t, (int)(packed & 127)) | (uint)Unsafe.Add(ref t, (int)(packed >> 7 & 127)) << 8
            | (uint)Unsafe.Add(ref t, (int)(packed >> 14 & 127)) << 16 | (uint)Unsafe.Add(ref t, (int)(packed >> 21 & 127)) << 24;
    }

    /// <summary>Σ over 32 values of grid·sign·q8, as eight int32 lanes after vpmaddwd by <paramref name="scales"/>
    /// (int16 per pair of products: one scale per 32 values, or the low lane's 16 values and the high lane's).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> GridDot(Vector256<byte> grid, Vector256<sbyte> signs, byte* q8, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(grid, Avx2.Sign(Vector256.Load((sbyte*)q8), signs)), scales);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> Scales2(int lo, int hi) => Vector256.Create(Vector128.Create((short)lo), Vector128.Create((short)hi));

    internal static float DotIQ2XXSAvx2(byte* x, byte* y, int nb)
    {
        ref ulong grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ2XXSGrid);
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += 66, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                uint a0 = *(uint*)(x + 2 + 8 * ib), a1 = *(uint*)(x + 6 + 8 * ib);
                var g = Vector256.Create(Unsafe.Add(ref grid, (int)(a0 & 0xFF)), Unsafe.Add(ref grid, (int)(a0 >> 8 & 0xFF)),
                    Unsafe.Add(ref grid, (int)(a0 >> 16 & 0xFF)), Unsafe.Add(ref grid, (int)(a0 >> 24))).AsByte();
                sumi += GridDot(g, SignsFromBits(KSigns4(a1)), y + 4 + 32 * ib, Vector256.Create((short)(2 * (a1 >> 28) + 1)));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return 0.125f * Vector256.Sum(acc);
    }

    internal static float DotIQ2XSAvx2(byte* x, byte* y, int nb)
    {
        ref ulong grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ2XSGrid);
        ref byte ks = ref MemoryMarshal.GetReference(KSignsTable);
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += 74, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                ushort* q = (ushort*)(x + 2) + 4 * ib;
                var g = Vector256.Create(Unsafe.Add(ref grid, q[0] & 511), Unsafe.Add(ref grid, q[1] & 511),
                    Unsafe.Add(ref grid, q[2] & 511), Unsafe.Add(ref grid, q[3] & 511)).AsByte();
                uint signs = Unsafe.Add(ref ks, q[0] >> 9) | (uint)Unsafe.Add(ref ks, q[1] >> 9) << 8
                    | (uint)Unsafe.Add(ref ks, q[2] >> 9) << 16 | (uint)Unsafe.Add(ref ks, q[3] >> 9) << 24;
                int sc = x[66 + ib];
                sumi += GridDot(g, SignsFromBits(signs), y + 4 + 32 * ib, Scales2(2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return 0.125f * Vector256.Sum(acc);
    }

    internal static float DotIQ2SAvx2(byte* x, byte* y, int nb)
    {
        ref ulong grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ2SGrid);
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += 82, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                byte* qs = x + 2 + 4 * ib;
                int qh = x[66 + ib];
                var g = Vector256.Create(Unsafe.Add(ref grid, qs[0] | (qh << 8 & 0x300)), Unsafe.Add(ref grid, qs[1] | (qh << 6 & 0x300)),
                    Unsafe.Add(ref grid, qs[2] | (qh << 4 & 0x300)), Unsafe.Add(ref grid, qs[3] | (qh << 2 & 0x300))).AsByte();
                int sc = x[74 + ib];
                sumi += GridDot(g, SignsFromBits(*(uint*)(x + 34 + 4 * ib)), y + 4 + 32 * ib, Scales2(2 * (sc & 0xF) + 1, 2 * (sc >> 4) + 1));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return 0.125f * Vector256.Sum(acc);
    }

    internal static float DotIQ3XXSAvx2(byte* x, byte* y, int nb)
    {
        ref uint grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ3XXSGrid);
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += 98, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                byte* qs = x + 2 + 8 * ib;
                uint aux = *(uint*)(x + 66 + 4 * ib);
                var g = Vector256.Create(Unsafe.Add(ref grid, qs[0]), Unsafe.Add(ref grid, qs[1]), Unsafe.Add(ref grid, qs[2]), Unsafe.Add(ref grid, qs[3]),
                    Unsafe.Add(ref grid, qs[4]), Unsafe.Add(ref grid, qs[5]), Unsafe.Add(ref grid, qs[6]), Unsafe.Add(ref grid, qs[7])).AsByte();
                sumi += GridDot(g, SignsFromBits(KSigns4(aux)), y + 4 + 32 * ib, Vector256.Create((short)(2 * (aux >> 28) + 1)));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return 0.25f * Vector256.Sum(acc);
    }

    internal static float DotIQ3SAvx2(byte* x, byte* y, int nb)
    {
        ref uint grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ3SGrid);
        Vector256<float> acc = default;
        for (int i = 0; i < nb; i++, x += 110, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            for (int ib = 0; ib < 8; ib++)
            {
                byte* qs = x + 2 + 8 * ib;
                int qh = x[66 + ib];
                var g = Vector256.Create(Unsafe.Add(ref grid, qs[0] | (qh << 8 & 256)), Unsafe.Add(ref grid, qs[1] | (qh << 7 & 256)),
                    Unsafe.Add(ref grid, qs[2] | (qh << 6 & 256)), Unsafe.Add(ref grid, qs[3] | (qh << 5 & 256)),
                    Unsafe.Add(ref grid, qs[4] | (qh << 4 & 256)), Unsafe.Add(ref grid, qs[5] | (qh << 3 & 256)),
                    Unsafe.Add(ref grid, qs[6] | (qh << 2 & 256)), Unsafe.Add(ref grid, qs[7] | (qh << 1 & 256))).AsByte();
                int sc = x[106 + ib / 2];
                int ls = 2 * ((ib & 1) == 0 ? sc & 0xF : sc >> 4) + 1;
                sumi += GridDot(g, SignsFromBits(*(uint*)(x + 74 + 4 * ib)), y + 4 + 32 * ib, Vector256.Create((short)ls));
            }
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(*(ushort*)x) * *(float*)y), Vector256.ConvertToSingle(sumi), acc);
        }
        return Vector256.Sum(acc);
    }

    /// <summary>Σ over 32 values of grid·q8 for the signed IQ1 grid points (−1, 0, 1): vpmaddubsw of |grid| with q8
    /// carrying the grid's sign, then vpmaddwd by <paramref name="scales"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> SignedGridDot(Vector256<sbyte> grid, byte* q8, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(grid), Avx2.Sign(Vector256.Load((sbyte*)q8), grid)), scales);

    internal static float DotIQ1SAvx2(byte* x, byte* y, int nb)
    {
        ref ulong grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ1SGrid);
        float sumf = 0;
        for (int i = 0; i < nb; i++, x += 50, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi = default;
            int sumi1 = 0;
            short* bsums = (short*)(y + 260);
            for (int ib = 0; ib < 8; ib++)
            {
                byte* qs = x + 2 + 4 * ib;
                int qh = *(ushort*)(x + 34 + 2 * ib);
                var g = Vector256.Create(Unsafe.Add(ref grid, qs[0] | (qh << 8 & 0x700)), Unsafe.Add(ref grid, qs[1] | (qh << 5 & 0x700)),
                    Unsafe.Add(ref grid, qs[2] | (qh << 2 & 0x700)), Unsafe.Add(ref grid, qs[3] | (qh >> 1 & 0x700))).AsSByte();
                int ls = 2 * ((qh >> 12) & 7) + 1;
                sumi += SignedGridDot(g, y + 4 + 32 * ib, Vector256.Create((short)ls));
                sumi1 += ls * ((qh & 0x8000) != 0 ? -1 : 1) * (bsums[2 * ib] + bsums[2 * ib + 1]);
            }
            sumf += Fp16.ToSingle(*(ushort*)x) * *(float*)y * (Vector256.Sum(sumi) + Dequantize.IQ1Delta * sumi1);
        }
        return sumf;
    }

    internal static float DotIQ1MAvx2(byte* x, byte* y, int nb)
    {
        ref ulong grid = ref MemoryMarshal.GetReference(IQuantGrids.IQ1SGrid);
        float sumf = 0;
        for (int i = 0; i < nb; i++, x += 56, y += 292)
        {
            Sse.Prefetch0(x + PrefetchAhead);
            Vector256<int> sumi1 = default, sumi2 = default;
            ushort* sc = (ushort*)(x + 48);
            for (int ib = 0; ib < 8; ib++)
            {
                byte* qs = x + 4 * ib;
                int qh0 = x[32 + 2 * ib], qh1 = x[33 + 2 * ib];
                var g = Vector256.Create(Unsafe.Add(ref grid, qs[0] | (qh0 << 8 & 0x700)), Unsafe.Add(ref grid, qs[1] | (qh0 << 4 & 0x700)),
                    Unsafe.Add(ref grid, qs[2] | (qh1 << 8 & 0x700)), Unsafe.Add(ref grid, qs[3] | (qh1 << 4 & 0x700))).AsSByte();
                // the delta's sign per eight values (bit 3 of each qh nibble) as ±1 bytes
                var deltaBytes = Vector256.Create((qh0 & 0x08) != 0 ? -1L : 0x0101010101010101L, (qh0 & 0x80) != 0 ? -1L : 0x0101010101010101L,
                    (qh1 & 0x08) != 0 ? -1L : 0x0101010101010101L, (qh1 & 0x80) != 0 ? -1L : 0x0101010101010101L).AsSByte();
                int s = sc[ib / 2] >> (6 * (ib % 2));
                var scales = Scales2(2 * (s & 7) + 1, 2 * (s >> 3 & 7) + 1);
                sumi1 += SignedGridDot(g, y + 4 + 32 * ib, scales);
                sumi2 += SignedGridDot(deltaBytes, y + 4 + 32 * ib, scales);
            }
            sumf += Dequantize.IQ1MScale(new ReadOnlySpan<byte>(x, 56)) * *(float*)y * (Vector256.Sum(sumi1) + Dequantize.IQ1Delta * Vector256.Sum(sumi2));
        }
        return sumf;
    }
}
