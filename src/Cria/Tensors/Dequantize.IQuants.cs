using System.Buffers.Binary;
using System.Numerics;

namespace Cria.Tensors;

// The lattice i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M): super-blocks of 256 values in groups of
// eight (IQ2, IQ1) or four (IQ3) that are one point of a fixed grid (IQuantGrids), with signs and a scale per 32 or 16
// values. Layouts follow ggml-common.h, the arithmetic ggml-quants.c's dequantize_row_iq* (same float order, so the
// values are ggml's bit for bit).
public static partial class Dequantize
{
    /// <summary>ksigns_iq2xs: seven sign bits and an eighth that makes their count even (ggml stores the 128 bytes;
    /// this is the rule they follow).</summary>
    internal static int KSigns(int i) => i | (BitOperations.PopCount((uint)i) & 1) << 7;

    /// <summary>IQ1_S and IQ1_M shift every grid value by ±IQ1S_DELTA (IQ1M_DELTA is the same 0.125).</summary>
    internal const float IQ1Delta = 0.125f;

    static byte GridByte(ulong point, int j) => (byte)(point >> (8 * j));

    /// <summary>Eight values dl · grid · sign (IQ2): byte j of the point, negated where bit j of the signs is set.</summary>
    static void Grid8(float dl, ulong grid, int signs, Span<float> y)
    {
        for (int j = 0; j < 8; j++) y[j] = dl * GridByte(grid, j) * ((signs >> j & 1) != 0 ? -1f : 1f);
    }

    /// <summary>Eight values from two four-value IQ3 points, as <see cref="Grid8"/>.</summary>
    static void Grid4x2(float db, uint g1, uint g2, int signs, Span<float> y) => Grid8(db, g1 | (ulong)g2 << 32, signs, y);

    // block_iq2_xxs (66 B): d | qs[32] (u16). Each 32 values: two u32, the first four grid indices (bytes), the second
    // four 7-bit sign sets and a 4-bit scale on top. Value = d·(0.5 + s)/4 · grid · sign.
    private static void IQ2_XXS(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            uint aux1 = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(6 + 8 * ib));
            float db = d * (0.5f + (aux1 >> 28)) * 0.25f;
            for (int l = 0; l < 4; l++)
            {
                ulong grid = IQuantGrids.IQ2XXSGrid[b[2 + 8 * ib + l]];
                int signs = KSigns((int)(aux1 >> 7 * l) & 127);
                Grid8(db, grid, signs, y.Slice(32 * ib + 8 * l, 8));
            }
        }
    }

    // block_iq2_xs (74 B): d | qs[32] (u16: 9-bit grid index, 7-bit sign set) | scales[8] (a nibble per 16 values).
    private static void IQ2_XS(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            float db0 = d * (0.5f + (b[66 + ib] & 0xF)) * 0.25f, db1 = d * (0.5f + (b[66 + ib] >> 4)) * 0.25f;
            for (int l = 0; l < 4; l++)
            {
                int q = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(2 + 2 * (4 * ib + l)));
                ulong grid = IQuantGrids.IQ2XSGrid[q & 511];
                int signs = KSigns(q >> 9);
                float dl = l < 2 ? db0 : db1;
                Grid8(dl, grid, signs, y.Slice(32 * ib + 8 * l, 8));
            }
        }
    }

    // block_iq2_s (82 B): d | qs[64] (32 low index bytes, then 32 sign bytes) | qh[8] (two high index bits per group)
    // | scales[8].
    private static void IQ2_S(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            float db0 = d * (0.5f + (b[74 + ib] & 0xF)) * 0.25f, db1 = d * (0.5f + (b[74 + ib] >> 4)) * 0.25f;
            for (int l = 0; l < 4; l++)
            {
                ulong grid = IQuantGrids.IQ2SGrid[b[2 + 4 * ib + l] | (b[66 + ib] << (8 - 2 * l) & 0x300)];
                int signs = b[34 + 4 * ib + l];
                float dl = l < 2 ? db0 : db1;
                Grid8(dl, grid, signs, y.Slice(32 * ib + 8 * l, 8));
            }
        }
    }

    // block_iq3_xxs (98 B): d | qs[64] (a grid index per four values) | scales_and_signs[8] (u32: four 7-bit sign sets,
    // a 4-bit scale). Value = d·(0.5 + s)/2 · grid · sign.
    private static void IQ3_XXS(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            uint aux = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(66 + 4 * ib));
            float db = d * (0.5f + (aux >> 28)) * 0.5f;
            for (int l = 0; l < 4; l++)
            {
                int signs = KSigns((int)(aux >> 7 * l) & 127);
                uint g1 = IQuantGrids.IQ3XXSGrid[b[2 + 8 * ib + 2 * l]], g2 = IQuantGrids.IQ3XXSGrid[b[3 + 8 * ib + 2 * l]];
                Grid4x2(db, g1, g2, signs, y.Slice(32 * ib + 8 * l, 8));
            }
        }
    }

    // block_iq3_s (110 B): d | qs[64] | qh[8] (the ninth index bit of each of a group's eight indices) | signs[32] |
    // scales[4] (a nibble per 32 values). Value = d·(1 + 2s) · grid · sign.
    private static void IQ3_S(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            int sc = b[106 + ib / 2];
            float db = d * (1 + 2 * ((ib & 1) == 0 ? sc & 0xF : sc >> 4));
            int qh = b[66 + ib];
            for (int l = 0; l < 4; l++)
            {
                uint g1 = IQuantGrids.IQ3SGrid[b[2 + 8 * ib + 2 * l] | (qh << (8 - 2 * l) & 256)];
                uint g2 = IQuantGrids.IQ3SGrid[b[3 + 8 * ib + 2 * l] | (qh << (7 - 2 * l) & 256)];
                int signs = b[74 + 4 * ib + l];
                Grid4x2(db, g1, g2, signs, y.Slice(32 * ib + 8 * l, 8));
            }
        }
    }

    // block_iq1_s (50 B): d | qs[32] (low index bytes) | qh[8] (u16: three high bits per group, a 3-bit scale in bits
    // 12..14, the delta's sign in bit 15). Value = d·(2s + 1) · (grid ± 0.125).
    private static void IQ1_S(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            int qh = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(34 + 2 * ib));
            float dl = d * (2 * ((qh >> 12) & 7) + 1);
            float delta = (qh & 0x8000) != 0 ? -IQ1Delta : IQ1Delta;
            for (int l = 0; l < 4; l++)
            {
                ulong grid = IQuantGrids.IQ1SGrid[b[2 + 4 * ib + l] | (((qh >> 3 * l) & 7) << 8)];
                for (int j = 0; j < 8; j++) y[32 * ib + 8 * l + j] = dl * ((sbyte)GridByte(grid, j) + delta);
            }
        }
    }

    /// <summary>The super-block scale of an IQ1_M block: an f16 whose four nibbles are the top nibbles of the four u16
    /// scale words (iq1m_scale_t).</summary>
    internal static float IQ1MScale(ReadOnlySpan<byte> b)
    {
        int s0 = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(48)), s1 = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(50));
        int s2 = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(52)), s3 = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(54));
        return Fp16.ToSingle((ushort)((s0 >> 12) | ((s1 >> 8) & 0x00F0) | ((s2 >> 4) & 0x0F00) | (s3 & 0xF000)));
    }

    /// <summary>The 3-bit scale of IQ1_M's 16-value half-group <paramref name="h"/> (0..15), before 2s + 1.</summary>
    internal static int IQ1MSubScale(ReadOnlySpan<byte> b, int h)
    {
        int ib = h / 2, sc = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(48 + 2 * (ib / 2)));
        return (sc >> (6 * (ib % 2) + 3 * (h % 2))) & 7;
    }

    // block_iq1_m (56 B): qs[32] | qh[16] (per group of 8: three high index bits and the delta's sign, a nibble each) |
    // scales[8] (3-bit scales per 16 values; the f16 super-block scale in the top nibbles). No d field.
    private static void IQ1_M(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = IQ1MScale(b);
        for (int ib = 0; ib < 8; ib++)
        {
            float dl1 = d * (2 * IQ1MSubScale(b, 2 * ib) + 1), dl2 = d * (2 * IQ1MSubScale(b, 2 * ib + 1) + 1);
            for (int l = 0; l < 4; l++)
            {
                int qh = b[32 + 2 * ib + l / 2];
                int idx = b[4 * ib + l] | ((qh << (l % 2 == 0 ? 8 : 4)) & 0x700);
                float delta = (qh & (l % 2 == 0 ? 0x08 : 0x80)) != 0 ? -IQ1Delta : IQ1Delta;
                ulong grid = IQuantGrids.IQ1SGrid[idx];
                float dl = l < 2 ? dl1 : dl2;
                for (int j = 0; j < 8; j++) y[32 * ib + 8 * l + j] = dl * ((sbyte)GridByte(grid, j) + delta);
            }
        }
    }
}
