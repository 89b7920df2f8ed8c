using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// Row dot products weight·activation, following ggml's CPU design: every weight type has an activation type
/// (<c>ggml_type_traits_cpu.vec_dot_type</c>), the activation row is quantized to it once, and the dot works
/// block by block on integers, scaling once per block. <see cref="DotScalar"/> mirrors ggml's generic C code
/// (<c>ggml_vec_dot_*_generic</c>, <c>ggml_vec_dot_f32/f16/bf16</c> scalar paths) including its float accumulation
/// order; <see cref="Dot"/> takes SIMD paths that compute the same integer block sums and differ only in the order
/// (and FMA rounding) of the float accumulation.
/// </summary>
public static partial class VecDot
{
    /// <summary>Whether rows of this type can be multiplied (the weight types <see cref="ActivationType"/> knows).</summary>
    public static bool HasDotProduct(GgmlType weightType) => weightType is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 or GgmlType.Q4_1 or GgmlType.Q5_1
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_NL or GgmlType.IQ4_XS
        || GgmlTypeInfo.IsLattice(weightType);

    /// <summary>The type activations are quantized to before a dot with a row of <paramref name="weightType"/>.</summary>
    public static GgmlType ActivationType(GgmlType weightType) => weightType switch
    {
        GgmlType.F32 => GgmlType.F32,
        GgmlType.F16 => GgmlType.F16,
        GgmlType.BF16 => GgmlType.BF16,
        GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q8_0 or GgmlType.IQ4_NL => GgmlType.Q8_0,
        GgmlType.Q4_1 or GgmlType.Q5_1 => GgmlType.Q8_1,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS => GgmlType.Q8_K,
        var t when GgmlTypeInfo.IsLattice(t) => GgmlType.Q8_K,
        _ => throw new ArgumentException($"no dot product for weight type {weightType}", nameof(weightType)),
    };

    /// <summary>Quantizes an activation row to <paramref name="actType"/> (F32 copy, F16/BF16 rounding, or the ggml Q8 reference quantizers).</summary>
    public static void QuantizeActivations(GgmlType actType, ReadOnlySpan<float> x, Span<byte> dst)
    {
        if (actType is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q8_K))
            throw new ArgumentException($"{actType} is not an activation type", nameof(actType));
        Quantize.Row(actType, x, dst);
    }

    private static void Check(GgmlType weightType, int wBytes, int aBytes, int n)
    {
        GgmlType act = ActivationType(weightType);
        int qk = GgmlTypeInfo.BlockSize(weightType);
        if (n < 0 || n % qk != 0) throw new ArgumentException($"n = {n} is not a multiple of the {weightType} block size {qk}", nameof(n));
        if (wBytes < GgmlTypeInfo.RowBytes(weightType, n)) throw new ArgumentException($"weight row too short for {n} {weightType} elements", "weightRow");
        if (aBytes < GgmlTypeInfo.RowBytes(act, n)) throw new ArgumentException($"activation row too short for {n} {act} elements", "activationRow");
    }

    /// <summary>Scalar reference: the value ggml's generic C kernel computes, in its order.</summary>
    public static float DotScalar(GgmlType weightType, ReadOnlySpan<byte> weightRow, ReadOnlySpan<byte> activationRow, int n)
    {
        Check(weightType, weightRow.Length, activationRow.Length, n);
        return weightType switch
        {
            GgmlType.F32 => ScalarF32(weightRow, activationRow, n),
            GgmlType.F16 => ScalarF16(weightRow, activationRow, n),
            GgmlType.BF16 => ScalarBF16(weightRow, activationRow, n),
            GgmlType.Q4_0 => ScalarQ4_0(weightRow, activationRow, n),
            GgmlType.Q4_1 => ScalarQ4_1(weightRow, activationRow, n),
            GgmlType.Q5_0 => ScalarQ5_0(weightRow, activationRow, n),
            GgmlType.Q5_1 => ScalarQ5_1(weightRow, activationRow, n),
            GgmlType.Q8_0 => ScalarQ8_0(weightRow, activationRow, n),
            GgmlType.Q2_K => ScalarQ2_K(weightRow, activationRow, n),
            GgmlType.Q3_K => ScalarQ3_K(weightRow, activationRow, n),
            GgmlType.Q4_K => ScalarQ4_K(weightRow, activationRow, n),
            GgmlType.Q5_K => ScalarQ5_K(weightRow, activationRow, n),
            GgmlType.Q6_K => ScalarQ6_K(weightRow, activationRow, n),
            GgmlType.IQ4_NL => ScalarIQ4_NL(weightRow, activationRow, n),
            GgmlType.IQ4_XS => ScalarIQ4_XS(weightRow, activationRow, n),
            GgmlType.IQ2_XXS => ScalarIQ2_XXS(weightRow, activationRow, n),
            GgmlType.IQ2_XS => ScalarIQ2_XS(weightRow, activationRow, n),
            GgmlType.IQ2_S => ScalarIQ2_S(weightRow, activationRow, n),
            GgmlType.IQ3_XXS => ScalarIQ3_XXS(weightRow, activationRow, n),
            GgmlType.IQ3_S => ScalarIQ3_S(weightRow, activationRow, n),
            GgmlType.IQ1_S => ScalarIQ1_S(weightRow, activationRow, n),
            GgmlType.IQ1_M => ScalarIQ1_M(weightRow, activationRow, n),
            _ => throw new ArgumentException($"no dot product for weight type {weightType}", nameof(weightType)),
        };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float H(ReadOnlySpan<byte> b, int offset) => Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b.Slice(offset)));

    // ggml's scalar path (no GGML_SIMD) accumulates f32 products in double (ggml_float); we do the same.
    private static float ScalarF32(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += BinaryPrimitives.ReadSingleLittleEndian(w.Slice(4 * i)) * BinaryPrimitives.ReadSingleLittleEndian(a.Slice(4 * i));
        return (float)sum;
    }

    // ggml_vec_dot_f16 scalar: product of the two halves in float, accumulated in double (ggml_float).
    private static float ScalarF16(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        double sum = 0;
        for (int i = 0; i < n; i++) sum += H(w, 2 * i) * H(a, 2 * i);
        return (float)sum;
    }

    // ggml_vec_dot_bf16 scalar tail: float product, double accumulation.
    private static float ScalarBF16(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        double sum = 0;
        for (int i = 0; i < n; i++)
            sum += Bf16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(w.Slice(2 * i))) * Bf16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(a.Slice(2 * i)));
        return (float)sum;
    }

    // Q4_0 (d | qs[16]: element j low nibble, j+16 high, value q-8) x Q8_0 (d | qs[32]).
    private static float ScalarQ4_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 18, 18), y = a.Slice(ib * 34, 34);
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < 16; j++)
            {
                int v0 = (x[2 + j] & 0x0F) - 8, v1 = (x[2 + j] >> 4) - 8;
                sumi0 += v0 * (sbyte)y[2 + j];
                sumi1 += v1 * (sbyte)y[2 + 16 + j];
            }
            int sumi = sumi0 + sumi1;
            sumf += sumi * H(x, 0) * H(y, 0);
        }
        return sumf;
    }

    // Q4_1 (d | m | qs[16]) x Q8_1 (d | s | qs[32]): d_x d_y Σ q_x q_y + m_x s_y.
    private static float ScalarQ4_1(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 20, 20), y = a.Slice(ib * 36, 36);
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < 16; j++)
            {
                sumi0 += (x[4 + j] & 0x0F) * (sbyte)y[4 + j];
                sumi1 += (x[4 + j] >> 4) * (sbyte)y[4 + 16 + j];
            }
            int sumi = sumi0 + sumi1;
            sumf += (H(x, 0) * H(y, 0)) * sumi + H(x, 2) * H(y, 2);
        }
        return sumf;
    }

    // Q5_0 (d | qh u32 | qs[16], value q-16) x Q8_0.
    private static float ScalarQ5_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 22, 22), y = a.Slice(ib * 34, 34);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x.Slice(2));
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < 16; j++)
            {
                int xh0 = (int)(((qh >> j) & 1) << 4), xh1 = (int)(((qh >> (j + 16)) & 1) << 4);
                int x0 = ((x[6 + j] & 0x0F) | xh0) - 16, x1 = ((x[6 + j] >> 4) | xh1) - 16;
                sumi0 += x0 * (sbyte)y[2 + j];
                sumi1 += x1 * (sbyte)y[2 + 16 + j];
            }
            int sumi = sumi0 + sumi1;
            sumf += (H(x, 0) * H(y, 0)) * sumi;
        }
        return sumf;
    }

    // Q5_1 (d | m | qh u32 | qs[16]) x Q8_1.
    private static float ScalarQ5_1(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 24, 24), y = a.Slice(ib * 36, 36);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x.Slice(4));
            int sumi0 = 0, sumi1 = 0;
            for (int j = 0; j < 16; j++)
            {
                int xh0 = (int)(((qh >> j) << 4) & 0x10), xh1 = (int)((qh >> (j + 12)) & 0x10);
                sumi0 += ((x[8 + j] & 0xF) | xh0) * (sbyte)y[4 + j];
                sumi1 += ((x[8 + j] >> 4) | xh1) * (sbyte)y[4 + 16 + j];
            }
            int sumi = sumi0 + sumi1;
            sumf += (H(x, 0) * H(y, 0)) * sumi + H(x, 2) * H(y, 2);
        }
        return sumf;
    }

    // Q8_0 x Q8_0: Σ_blocks sumi * (d_x d_y).
    private static float ScalarQ8_0(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 34, 34), y = a.Slice(ib * 34, 34);
            int sumi = 0;
            for (int j = 0; j < 32; j++) sumi += (sbyte)x[2 + j] * (sbyte)y[2 + j];
            sumf += sumi * (H(x, 0) * H(y, 0));
        }
        return sumf;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Q8KScale(ReadOnlySpan<byte> y) => BinaryPrimitives.ReadSingleLittleEndian(y);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int BSum(ReadOnlySpan<byte> y, int j) => BinaryPrimitives.ReadInt16LittleEndian(y.Slice(260 + 2 * j));

    // Q2_K (scales[16] | qs[64] | d | dmin) x Q8_K (d f32 | qs[256] | bsums[16]).
    private static float ScalarQ2_K(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 84, 84), y = a.Slice(i * 292, 292);
            int summs = 0;
            for (int j = 0; j < 16; j++) summs += BSum(y, j) * (x[j] >> 4);
            float dall = Q8KScale(y) * H(x, 80);
            float dmin = Q8KScale(y) * H(x, 82);
            int isum = 0, isc = 0, q8 = 4, q2 = 16;
            for (int k = 0; k < 2; k++)
            {
                for (int shift = 0; shift < 8; shift += 2)
                {
                    int d = x[isc++] & 0xF;
                    int isuml = 0;
                    for (int l = 0; l < 16; l++) isuml += (sbyte)y[q8 + l] * ((x[q2 + l] >> shift) & 3);
                    isum += d * isuml;
                    d = x[isc++] & 0xF;
                    isuml = 0;
                    for (int l = 16; l < 32; l++) isuml += (sbyte)y[q8 + l] * ((x[q2 + l] >> shift) & 3);
                    isum += d * isuml;
                    q8 += 32;
                }
                q2 += 32;
            }
            sumf += dall * isum - dmin * summs;
        }
        return sumf;
    }

    // Q3_K (hmask[32] | qs[64] | scales[12] | d) x Q8_K; ggml keeps 8 int32 lanes (index mod 8) and 8 float sums.
    private static float ScalarQ3_K(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        Span<sbyte> aux8 = stackalloc sbyte[256];
        Span<int> aux32 = stackalloc int[8];
        Span<float> sums = stackalloc float[8];
        Span<int> scales = stackalloc int[16];
        sums.Clear();
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 110, 110), y = a.Slice(i * 292, 292);
            int m = 1, o = 0;
            for (int j = 0; j < 256; j += 128)
            {
                int q3 = 32 + j / 4;
                for (int shift = 0; shift < 8; shift += 2)
                {
                    for (int l = 0; l < 32; l++) aux8[o + l] = (sbyte)(((x[q3 + l] >> shift) & 3) - ((x[l] & m) != 0 ? 0 : 4));
                    o += 32; m <<= 1;
                }
            }
            Dequantize.Q3KScales(x.Slice(96, 12), scales);
            aux32.Clear();
            for (int j = 0, e = 0; j < 16; j++)
                for (int h = 0; h < 2; h++, e += 8)
                    for (int l = 0; l < 8; l++) aux32[l] += scales[j] * ((sbyte)y[4 + e + l] * aux8[e + l]);
            float d = H(x, 108) * Q8KScale(y);
            for (int l = 0; l < 8; l++) sums[l] += d * aux32[l];
        }
        float sumf = 0;
        for (int l = 0; l < 8; l++) sumf += sums[l];
        return sumf;
    }

    // Q4_K / Q5_K x Q8_K share the ggml scalar structure; q holds the unpacked 0..15 / 0..31 quants.
    private static float ScalarK4(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n, bool five)
    {
        int bs = five ? 176 : 144, qsOff = five ? 48 : 16;
        Span<sbyte> aux8 = stackalloc sbyte[256];
        Span<int> aux32 = stackalloc int[8];
        Span<float> sums = stackalloc float[8];
        sums.Clear();
        float sumf = 0;
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * bs, bs), y = a.Slice(i * 292, 292);
            int m = 1;
            for (int c = 0; c < 4; c++)
            {
                int q4 = qsOff + 32 * c;
                for (int l = 0; l < 32; l++) aux8[64 * c + l] = (sbyte)((x[q4 + l] & 0xF) + (five && (x[16 + l] & m) != 0 ? 16 : 0));
                m <<= 1;
                for (int l = 0; l < 32; l++) aux8[64 * c + 32 + l] = (sbyte)((x[q4 + l] >> 4) + (five && (x[16 + l] & m) != 0 ? 16 : 0));
                m <<= 1;
            }
            ReadOnlySpan<byte> sc = x.Slice(4, 12);
            int sumi = 0;
            for (int j = 0; j < 16; j++)
            {
                Dequantize.ScaleMinK4(j / 2, sc, out _, out int mn);
                sumi += BSum(y, j) * mn;
            }
            aux32.Clear();
            for (int j = 0, e = 0; j < 8; j++)
            {
                Dequantize.ScaleMinK4(j, sc, out int scale, out _);
                for (int h = 0; h < 4; h++, e += 8)
                    for (int l = 0; l < 8; l++) aux32[l] += scale * ((sbyte)y[4 + e + l] * aux8[e + l]);
            }
            float d = H(x, 0) * Q8KScale(y);
            for (int l = 0; l < 8; l++) sums[l] += d * aux32[l];
            float dmin = H(x, 2) * Q8KScale(y);
            sumf -= dmin * sumi;
        }
        for (int l = 0; l < 8; l++) sumf += sums[l];
        return sumf;
    }

    private static float ScalarQ4_K(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n) => ScalarK4(w, a, n, five: false);

    private static float ScalarQ5_K(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n) => ScalarK4(w, a, n, five: true);

    // Q6_K (ql[128] | qh[64] | scales[16] int8 | d) x Q8_K.
    private static float ScalarQ6_K(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        Span<sbyte> aux8 = stackalloc sbyte[256];
        Span<int> aux32 = stackalloc int[8];
        Span<float> sums = stackalloc float[8];
        sums.Clear();
        for (int i = 0; i < n / 256; i++)
        {
            ReadOnlySpan<byte> x = w.Slice(i * 210, 210), y = a.Slice(i * 292, 292);
            for (int h = 0; h < 2; h++)
            {
                int ql = 64 * h, qh = 128 + 32 * h, o = 128 * h;
                for (int l = 0; l < 32; l++)
                {
                    aux8[o + l] = (sbyte)(((x[ql + l] & 0xF) | (((x[qh + l] >> 0) & 3) << 4)) - 32);
                    aux8[o + l + 32] = (sbyte)(((x[ql + l + 32] & 0xF) | (((x[qh + l] >> 2) & 3) << 4)) - 32);
                    aux8[o + l + 64] = (sbyte)(((x[ql + l] >> 4) | (((x[qh + l] >> 4) & 3) << 4)) - 32);
                    aux8[o + l + 96] = (sbyte)(((x[ql + l + 32] >> 4) | (((x[qh + l] >> 6) & 3) << 4)) - 32);
                }
            }
            aux32.Clear();
            for (int j = 0, e = 0; j < 16; j++)
            {
                int scale = (sbyte)x[192 + j];
                for (int h = 0; h < 2; h++, e += 8)
                    for (int l = 0; l < 8; l++) aux32[l] += scale * ((sbyte)y[4 + e + l] * aux8[e + l]);
            }
            float d = H(x, 208) * Q8KScale(y);
            for (int l = 0; l < 8; l++) sums[l] += d * aux32[l];
        }
        float sumf = 0;
        for (int l = 0; l < 8; l++) sumf += sums[l];
        return sumf;
    }

    // IQ4_NL (d | qs[16]: element j the level of the low nibble, j+16 of the high one) x Q8_0 (ggml_vec_dot_iq4_nl_q8_0).
    private static float ScalarIQ4_NL(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ib = 0; ib < n / 32; ib++)
        {
            ReadOnlySpan<byte> x = w.Slice(ib * 18, 18), y = a.Slice(ib * 34, 34);
            float d = H(y, 0) * H(x, 0);
            sumf += d * IQ4BlockDot(x.Slice(2, 16), y.Slice(2, 32));
        }
        return sumf;
    }

    // IQ4_XS (d | scales_h | scales_l[4] | qs[128]; sub-block ib as IQ4_NL with scale ls − 32) x Q8_K (d f32 | qs[256] | bsums)
    // (ggml_vec_dot_iq4_xs_q8_K): per sub-block, d·d8·(ls − 32)·Σ level·q8.
    private static float ScalarIQ4_XS(ReadOnlySpan<byte> w, ReadOnlySpan<byte> a, int n)
    {
        float sumf = 0;
        for (int ibl = 0; ibl < n / 256; ibl++)
        {
            ReadOnlySpan<byte> x = w.Slice(ibl * 136, 136), y = a.Slice(ibl * 292, 292);
            float d4d8 = H(x, 0) * BinaryPrimitives.ReadSingleLittleEndian(y);
            for (int ib = 0; ib < 8; ib++)
                sumf += d4d8 * Dequantize.IQ4XSScale(x, ib) * IQ4BlockDot(x.Slice(8 + 16 * ib, 16), y.Slice(4 + 32 * ib, 32));
        }
        return sumf;
    }

    // Σ level·q8 over one 32-value IQ4 block: qs[16] indices (element j in the low nibble of qs[j], j + 16 in the high
    // one) against 32 int8 activations; ggml sums the two halves apart, then adds them.
    private static int IQ4BlockDot(ReadOnlySpan<byte> qs, ReadOnlySpan<byte> q8)
    {
        ReadOnlySpan<sbyte> levels = Dequantize.IQ4Levels;
        int sumi1 = 0, sumi2 = 0;
        for (int j = 0; j < 16; j++)
        {
            sumi1 += (sbyte)q8[j] * levels[qs[j] & 0xF];
            sumi2 += (sbyte)q8[j + 16] * levels[qs[j] >> 4];
        }
        return sumi1 + sumi2;
    }
}
