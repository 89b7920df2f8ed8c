using System.Buffers.Binary;
using Cria.Tensors;

namespace Cria.Kernels;

// The lattice i-quants (IQ2_XXS … IQ1_M) against Q8_K activations: scalar references in the order of ggml's
// ggml_vec_dot_iq*_q8_K_generic. Integer sums per 32 (or 16) values times the odd integer scale 2s + 1; the float
// factor (1/8 for IQ2, 1/4 for IQ3_XXS) is applied once at the end, as ggml does.
public static partial class VecDot
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
}
