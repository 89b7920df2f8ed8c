using System.Buffers.Binary;

namespace Cria.Tensors;

/// <summary>
/// Scalar reference dequantization, one routine per ggml block format (ggml-quants.c <c>dequantize_row_*</c>).
/// Arithmetic is done in float in the same order ggml writes it, so results are bit-identical to ggml.
/// </summary>
public static partial class Dequantize
{
    /// <summary>Decodes <paramref name="dst"/>.Length elements of <paramref name="type"/> from <paramref name="src"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        int n = dst.Length;
        CheckRow(type, src.Length, n, nameof(src));
        int nb = n / GgmlTypeInfo.BlockSize(type);
        int bs = GgmlTypeInfo.BlockBytes(type);
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < n; i++) dst[i] = BinaryPrimitives.ReadSingleLittleEndian(src.Slice(4 * i));
                return;
            case GgmlType.F16:
                if (BitConverter.IsLittleEndian)
                {
                    var h = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(src.Slice(0, 2 * n));
                    dst = dst.Slice(0, h.Length);
                    for (int i = 0; i < h.Length; i++) dst[i] = Fp16.ToSingle(h[i]);
                }
                else
                    for (int i = 0; i < n; i++) dst[i] = Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src.Slice(2 * i)));
                return;
            case GgmlType.BF16:
                for (int i = 0; i < n; i++) dst[i] = Bf16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src.Slice(2 * i)));
                return;
        }
        for (int i = 0; i < nb; i++)
        {
            ReadOnlySpan<byte> b = src.Slice(i * bs, bs);
            Span<float> y = dst.Slice(i * GgmlTypeInfo.BlockSize(type), GgmlTypeInfo.BlockSize(type));
            switch (type)
            {
                case GgmlType.Q4_0: Q4_0(b, y); break;
                case GgmlType.Q4_1: Q4_1(b, y); break;
                case GgmlType.Q5_0: Q5_0(b, y); break;
                case GgmlType.Q5_1: Q5_1(b, y); break;
                case GgmlType.Q8_0: Q8_0(b, y); break;
                case GgmlType.Q8_1: Q8_1(b, y); break;
                case GgmlType.Q2_K: Q2_K(b, y); break;
                case GgmlType.Q3_K: Q3_K(b, y); break;
                case GgmlType.Q4_K: Q4_K(b, y); break;
                case GgmlType.Q5_K: Q5_K(b, y); break;
                case GgmlType.Q6_K: Q6_K(b, y); break;
                case GgmlType.Q8_K: Q8_K(b, y); break;
                case GgmlType.IQ4_NL: IQ4_NL(b, y); break;
                case GgmlType.IQ4_XS: IQ4_XS(b, y); break;
                case GgmlType.IQ2_XXS: IQ2_XXS(b, y); break;
                case GgmlType.IQ2_XS: IQ2_XS(b, y); break;
                case GgmlType.IQ2_S: IQ2_S(b, y); break;
                case GgmlType.IQ3_XXS: IQ3_XXS(b, y); break;
                case GgmlType.IQ3_S: IQ3_S(b, y); break;
                case GgmlType.IQ1_S: IQ1_S(b, y); break;
                case GgmlType.IQ1_M: IQ1_M(b, y); break;
                default: throw new ArgumentException($"dequantization of {type} is not supported", nameof(type));
            }
        }
    }

    internal static void CheckRow(GgmlType type, int bytes, int n, string paramName)
    {
        if (!GgmlTypeInfo.IsKnown(type)) throw new ArgumentException($"unknown ggml type {type}", nameof(type));
        int qk = GgmlTypeInfo.BlockSize(type);
        if (n % qk != 0) throw new ArgumentException($"{n} elements is not a multiple of the {type} block size {qk}");
        long need = GgmlTypeInfo.RowBytes(type, n);
        if (bytes < need) throw new ArgumentException($"{type} row of {n} elements needs {need} bytes, got {bytes}", paramName);
    }

    internal static float H(ReadOnlySpan<byte> b, int offset) => Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(offset)));

    // block_q4_0 (18 B): d f16 | qs[16]; element j in low nibble of qs[j], element j+16 in high nibble; value (q-8)*d.
    private static void Q4_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int j = 0; j < 16; j++)
        {
            int x0 = (b[2 + j] & 0x0F) - 8;
            int x1 = (b[2 + j] >> 4) - 8;
            y[j] = x0 * d;
            y[j + 16] = x1 * d;
        }
    }

    // block_q4_1 (20 B): d f16 | m f16 | qs[16]; value q*d + m.
    private static void Q4_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0), m = H(b, 2);
        for (int j = 0; j < 16; j++)
        {
            y[j] = (b[4 + j] & 0x0F) * d + m;
            y[j + 16] = (b[4 + j] >> 4) * d + m;
        }
    }

    // block_q5_0 (22 B): d f16 | qh u32 (bit j = 5th bit of element j) | qs[16]; value (q-16)*d.
    private static void Q5_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(2));
        for (int j = 0; j < 16; j++)
        {
            int xh0 = (int)(((qh >> j) << 4) & 0x10);
            int xh1 = (int)((qh >> (j + 12)) & 0x10);
            int x0 = ((b[6 + j] & 0x0F) | xh0) - 16;
            int x1 = ((b[6 + j] >> 4) | xh1) - 16;
            y[j] = x0 * d;
            y[j + 16] = x1 * d;
        }
    }

    // block_q5_1 (24 B): d f16 | m f16 | qh u32 | qs[16]; value q*d + m.
    private static void Q5_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0), m = H(b, 2);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(b.Slice(4));
        for (int j = 0; j < 16; j++)
        {
            int xh0 = (int)(((qh >> j) << 4) & 0x10);
            int xh1 = (int)((qh >> (j + 12)) & 0x10);
            int x0 = (b[8 + j] & 0x0F) | xh0;
            int x1 = (b[8 + j] >> 4) | xh1;
            y[j] = x0 * d + m;
            y[j + 16] = x1 * d + m;
        }
    }

    // block_q8_0 (34 B): d f16 | qs[32] int8.
    private static void Q8_0(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int j = 0; j < 32; j++) y[j] = (sbyte)b[2 + j] * d;
    }

    // block_q8_1 (36 B): d f16 | s f16 (= d * sum(qs)) | qs[32] int8. ggml has no dequantize_row_q8_1; s is not needed to decode.
    private static void Q8_1(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int j = 0; j < 32; j++) y[j] = (sbyte)b[4 + j] * d;
    }

    // block_q2_K (84 B): scales[16] (low nibble scale, high nibble min, per 16 elements) | qs[64] (2-bit, 4 per byte)
    // | d f16 | dmin f16. In each 128-element half, qs[l] bit pair `shift` holds element 32*(shift/2) + l.
    private static void Q2_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 80), min = H(b, 82);
        int o = 0, isc = 0;
        for (int n = 0; n < 256; n += 128)
        {
            int q = 16 + n / 4;
            for (int shift = 0; shift < 8; shift += 2)
            {
                byte sc = b[isc++];
                float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                for (int l = 0; l < 16; l++) y[o++] = dl * ((b[q + l] >> shift) & 3) - ml;
                sc = b[isc++];
                dl = d * (sc & 0xF); ml = min * (sc >> 4);
                for (int l = 0; l < 16; l++) y[o++] = dl * ((b[q + 16 + l] >> shift) & 3) - ml;
            }
        }
    }

    /// <summary>Unpacks the 16 signed 6-bit Q3_K scales (already minus 32) from their 12 packed bytes.</summary>
    internal static void Q3KScales(ReadOnlySpan<byte> s, Span<int> sc)
    {
        for (int j = 0; j < 16; j++)
        {
            int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
            int hi = (s[8 + (j & 3)] >> (2 * (j >> 2))) & 3;
            sc[j] = (lo | (hi << 4)) - 32;
        }
    }

    // block_q3_K (110 B): hmask[32] (high bit, cleared bit means -4) | qs[64] (low 2 bits, like Q2_K) | scales[12]
    // (16 x 6-bit, offset 32) | d f16. Element 32*k + l of a 128-half uses hmask bit (4*half + k) of hmask[l].
    private static void Q3_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float dAll = H(b, 108);
        Span<int> scales = stackalloc int[16];
        Q3KScales(b.Slice(96, 12), scales);
        int o = 0, isc = 0;
        int m = 1;
        for (int n = 0; n < 256; n += 128)
        {
            int q = 32 + n / 4;
            for (int shift = 0; shift < 8; shift += 2)
            {
                float dl = dAll * scales[isc++];
                for (int l = 0; l < 16; l++) y[o++] = dl * (((b[q + l] >> shift) & 3) - ((b[l] & m) != 0 ? 0 : 4));
                dl = dAll * scales[isc++];
                for (int l = 0; l < 16; l++) y[o++] = dl * (((b[q + 16 + l] >> shift) & 3) - ((b[16 + l] & m) != 0 ? 0 : 4));
                m <<= 1;
            }
        }
    }

    /// <summary>ggml's get_scale_min_k4: 8 pairs of 6-bit (scale, min) packed in 12 bytes (Q4_K, Q5_K).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal static void ScaleMinK4(int j, ReadOnlySpan<byte> q, out int d, out int m)
    {
        if (j < 4)
        {
            d = q[j] & 63;
            m = q[j + 4] & 63;
        }
        else
        {
            d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }

    // block_q4_K (144 B): d f16 | dmin f16 | scales[12] (8 x 6-bit scale + 8 x 6-bit min) | qs[128].
    // Chunk c (64 elements): qs[32c + l] low nibble = element 64c + l (sub-block 2c), high nibble = 64c + 32 + l.
    private static void Q4_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0), min = H(b, 2);
        ReadOnlySpan<byte> scales = b.Slice(4, 12);
        int o = 0;
        for (int c = 0; c < 4; c++)
        {
            ScaleMinK4(2 * c, scales, out int sc, out int m);
            float d1 = d * sc, m1 = min * m;
            ScaleMinK4(2 * c + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            int q = 16 + 32 * c;
            for (int l = 0; l < 32; l++) y[o++] = d1 * (b[q + l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) y[o++] = d2 * (b[q + l] >> 4) - m2;
        }
    }

    // block_q5_K (176 B): d | dmin | scales[12] | qh[32] | qs[128]. As Q4_K, plus a 5th bit: element 64c + l takes
    // bit 2c of qh[l], element 64c + 32 + l takes bit 2c+1.
    private static void Q5_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0), min = H(b, 2);
        ReadOnlySpan<byte> scales = b.Slice(4, 12);
        int o = 0;
        int u1 = 1, u2 = 2;
        for (int c = 0; c < 4; c++)
        {
            ScaleMinK4(2 * c, scales, out int sc, out int m);
            float d1 = d * sc, m1 = min * m;
            ScaleMinK4(2 * c + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            int q = 48 + 32 * c;
            for (int l = 0; l < 32; l++) y[o++] = d1 * ((b[q + l] & 0xF) + ((b[16 + l] & u1) != 0 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) y[o++] = d2 * ((b[q + l] >> 4) + ((b[16 + l] & u2) != 0 ? 16 : 0)) - m2;
            u1 <<= 2; u2 <<= 2;
        }
    }

    // block_q6_K (210 B): ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] int8 (per 16 elements) | d f16.
    // Half h (128 elements): ql[64h + l] low/high nibble = elements l / l+64, ql[64h + 32 + l] = l+32 / l+96;
    // qh[32h + l] bit pairs 0,2,4,6 = elements l, l+32, l+64, l+96. Value d * scale * (q - 32).
    private static void Q6_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 208);
        for (int h = 0; h < 2; h++)
        {
            int ql = 64 * h, qh = 128 + 32 * h, sc = 192 + 8 * h, o = 128 * h;
            for (int l = 0; l < 32; l++)
            {
                int isc = l / 16;
                int q1 = ((b[ql + l] & 0xF) | (((b[qh + l] >> 0) & 3) << 4)) - 32;
                int q2 = ((b[ql + l + 32] & 0xF) | (((b[qh + l] >> 2) & 3) << 4)) - 32;
                int q3 = ((b[ql + l] >> 4) | (((b[qh + l] >> 4) & 3) << 4)) - 32;
                int q4 = ((b[ql + l + 32] >> 4) | (((b[qh + l] >> 6) & 3) << 4)) - 32;
                y[o + l] = d * (sbyte)b[sc + isc] * q1;
                y[o + l + 32] = d * (sbyte)b[sc + isc + 2] * q2;
                y[o + l + 64] = d * (sbyte)b[sc + isc + 4] * q3;
                y[o + l + 96] = d * (sbyte)b[sc + isc + 6] * q4;
            }
        }
    }

    // block_q8_K (292 B): d f32 | qs[256] int8 | bsums[16] int16 (sum of each 16 quants).
    private static void Q8_K(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = BinaryPrimitives.ReadSingleLittleEndian(b);
        for (int j = 0; j < 256; j++) y[j] = d * (sbyte)b[4 + j];
    }

    /// <summary>kvalues_iq4nl: the 16 levels of IQ4_NL and IQ4_XS, a non-uniform grid denser near zero (ggml-common.h).</summary>
    internal static ReadOnlySpan<sbyte> IQ4Levels => [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

    // block_iq4_nl (18 B): d f16 | qs[16]; element j is the level of qs[j]'s low nibble, element j+16 of its high one; value d·level.
    private static void IQ4_NL(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int j = 0; j < 16; j++)
        {
            y[j] = d * IQ4Levels[b[2 + j] & 0xF];
            y[j + 16] = d * IQ4Levels[b[2 + j] >> 4];
        }
    }

    /// <summary>The 6-bit scale of IQ4_XS sub-block <paramref name="ib"/> (0..7), minus its offset 32: low four bits in
    /// scales_l[ib/2] (low nibble for even ib), high two in bits 2·ib of scales_h.</summary>
    internal static int IQ4XSScale(ReadOnlySpan<byte> b, int ib)
    {
        int h = BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(2));
        return (((b[4 + ib / 2] >> 4 * (ib % 2)) & 0xF) | (((h >> 2 * ib) & 3) << 4)) - 32;
    }

    // block_iq4_xs (136 B): d f16 | scales_h u16 | scales_l[4] | qs[128]; eight sub-blocks of 32, each laid out as IQ4_NL
    // (qs[16·ib..]) with the scale d·(ls − 32).
    private static void IQ4_XS(ReadOnlySpan<byte> b, Span<float> y)
    {
        float d = H(b, 0);
        for (int ib = 0; ib < 8; ib++)
        {
            float dl = d * IQ4XSScale(b, ib);
            var qs = b.Slice(8 + 16 * ib, 16);
            for (int j = 0; j < 16; j++)
            {
                y[32 * ib + j] = dl * IQ4Levels[qs[j] & 0xF];
                y[32 * ib + j + 16] = dl * IQ4Levels[qs[j] >> 4];
            }
        }
    }
}
