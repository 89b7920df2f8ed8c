using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Cria.Tensors;

/// <summary>
/// Reference quantizers, following ggml-quants.c <c>quantize_row_*_ref</c> step by step (same float expression
/// order, same <c>nearest_int</c>, same search grids and iteration counts) so that the bytes match ggml's.
/// Block layouts are documented in <see cref="Dequantize"/>.
/// </summary>
public static partial class Quantize
{
    private const float GroupMaxEps = 1e-15f;
    private const int QK = GgmlTypeInfo.QK_K;

    /// <summary>Encodes <paramref name="src"/> (length a multiple of the block size) as <paramref name="type"/> into <paramref name="dst"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int n = src.Length;
        Dequantize.CheckRow(type, dst.Length, n, nameof(dst));
        switch (type)
        {
            case GgmlType.F32:
                for (int i = 0; i < n; i++) BinaryPrimitives.WriteSingleLittleEndian(dst.Slice(4 * i), src[i]);
                return;
            case GgmlType.F16:
                for (int i = 0; i < n; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice(2 * i), Fp16.FromSingle(src[i]));
                return;
            case GgmlType.BF16:
                for (int i = 0; i < n; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst.Slice(2 * i), Bf16.FromSingle(src[i]));
                return;
        }
        int qk = GgmlTypeInfo.BlockSize(type), bs = GgmlTypeInfo.BlockBytes(type);
        for (int i = 0; i < n / qk; i++)
        {
            ReadOnlySpan<float> x = src.Slice(i * qk, qk);
            Span<byte> y = dst.Slice(i * bs, bs);
            switch (type)
            {
                case GgmlType.Q4_0: Q4_0(x, y); break;
                case GgmlType.Q4_1: Q4_1(x, y); break;
                case GgmlType.Q5_0: Q5_0(x, y); break;
                case GgmlType.Q5_1: Q5_1(x, y); break;
                case GgmlType.Q8_0: Q8_0(x, y); break;
                case GgmlType.Q8_1: Q8_1(x, y); break;
                case GgmlType.Q2_K: Q2_K(x, y); break;
                case GgmlType.Q3_K: Q3_K(x, y); break;
                case GgmlType.Q4_K: Q4_K(x, y); break;
                case GgmlType.Q5_K: Q5_K(x, y); break;
                case GgmlType.Q6_K: Q6_K(x, y); break;
                case GgmlType.Q8_K: Q8_K(x, y); break;
                case GgmlType.IQ4_NL or GgmlType.IQ4_XS: IQ4(x, y, default, ImpWeighting.Ggml, qk); break;
                case var t when GgmlTypeInfo.IsLattice(t): LatticeBlock(t, x, y, default, ImpWeighting.Ggml); break;
                default: throw new ArgumentException($"quantization to {type} is not supported", nameof(type));
            }
        }
    }

    /// <summary>
    /// ggml's nearest_int: adding 1.5*2^23 puts the integer in the low mantissa bits, so the FPU's
    /// round-to-nearest-even does the rounding. Valid for |x| &lt;= 2^22.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int NearestInt(float fval)
    {
        float val = fval + 12582912f;
        int i = BitConverter.SingleToInt32Bits(val);
        return (i & 0x007FFFFF) - 0x00400000;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PutHalf(Span<byte> y, int offset, float v) => BinaryPrimitives.WriteUInt16LittleEndian(y.Slice(offset), Fp16.FromSingle(v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float RoundHalf(Span<byte> y, int offset) => Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(y.Slice(offset)));

    // ---------------------------------------------------------------- 32-element blocks

    private static void Q4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f, max = 0f;
        for (int j = 0; j < 32; j++)
        {
            float v = x[j];
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        for (int j = 0; j < 16; j++)
        {
            float x0 = x[j] * id, x1 = x[16 + j] * id;
            int xi0 = Math.Min(15, (int)(sbyte)(int)(x0 + 8.5f));
            int xi1 = Math.Min(15, (int)(sbyte)(int)(x1 + 8.5f));
            y[2 + j] = (byte)(xi0 | (xi1 << 4));
        }
    }

    private static void Q4_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        for (int j = 0; j < 32; j++)
        {
            float v = x[j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        float d = (max - min) / ((1 << 4) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        PutHalf(y, 2, min);
        for (int j = 0; j < 16; j++)
        {
            float x0 = (x[j] - min) * id, x1 = (x[16 + j] - min) * id;
            int xi0 = Math.Min(15, (int)(sbyte)(int)(x0 + 0.5f));
            int xi1 = Math.Min(15, (int)(sbyte)(int)(x1 + 0.5f));
            y[4 + j] = (byte)(xi0 | (xi1 << 4));
        }
    }

    private static void Q5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f, max = 0f;
        for (int j = 0; j < 32; j++)
        {
            float v = x[j];
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        }
        float d = max / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            float x0 = x[j] * id, x1 = x[16 + j] * id;
            int xi0 = Math.Min(31, (int)(sbyte)(int)(x0 + 16.5f));
            int xi1 = Math.Min(31, (int)(sbyte)(int)(x1 + 16.5f));
            y[6 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= (((uint)xi0 & 0x10u) >> 4) << j;
            qh |= (((uint)xi1 & 0x10u) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(2), qh);
    }

    private static void Q5_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        for (int j = 0; j < 32; j++)
        {
            float v = x[j];
            if (v < min) min = v;
            if (v > max) max = v;
        }
        float d = (max - min) / ((1 << 5) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        PutHalf(y, 2, min);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            float x0 = (x[j] - min) * id, x1 = (x[16 + j] - min) * id;
            int xi0 = (byte)(int)(x0 + 0.5f);
            int xi1 = (byte)(int)(x1 + 0.5f);
            y[8 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= (((uint)xi0 & 0x10u) >> 4) << j;
            qh |= (((uint)xi1 & 0x10u) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(4), qh);
    }

    private static void Q8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / ((1 << 7) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        for (int j = 0; j < 32; j++) y[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
    }

    private static void Q8_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0f;
        for (int j = 0; j < 32; j++) amax = MathF.Max(amax, MathF.Abs(x[j]));
        float d = amax / ((1 << 7) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, 0, d);
        int sum = 0;
        for (int j = 0; j < 16; j++)
        {
            sbyte q0 = (sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
            sbyte q1 = (sbyte)MathF.Round(x[16 + j] * id, MidpointRounding.AwayFromZero);
            y[4 + j] = (byte)q0;
            y[4 + 16 + j] = (byte)q1;
            sum += q0 + q1;
        }
        PutHalf(y, 2, sum * d);
    }

    // ---------------------------------------------------------------- K-quant helpers (ggml-quants.c)

    /// <summary>make_qx_quants: symmetric quantization to [-nmax, nmax-1] with a 19-point scale search (rmse_type 1, no weights).</summary>
    internal static float MakeQxQuants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, int rmseType, ReadOnlySpan<float> qw)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; i++) L[i] = 0;
            return 0f;
        }
        float iscale = -nmax / max;
        if (rmseType == 0)
        {
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * x[i]);
                L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
            }
            return 1 / iscale;
        }
        bool returnEarly = false;
        if (rmseType < 0) { rmseType = -rmseType; returnEarly = true; }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Max(-nmax, Math.Min(nmax - 1, l));
            L[i] = (sbyte)(l + nmax);
            float w = Weight(x, qw, i, rmseType);
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        if (returnEarly) return suml2 > 0 ? 0.5f * (scale + 1 / iscale) : 1 / iscale;
        float best = scale * sumlx;
        if (Lanes == SearchLanes.Lanes256) return MakeQxSearchVector<Lanes256>(n, nmax, x, L, rmseType, qw, max, scale, best);
        if (Lanes == SearchLanes.Lanes128) return MakeQxSearchVector<Lanes128>(n, nmax, x, L, rmseType, qw, max, scale, best);
        for (int itry = -9; itry <= 9; itry++)
        {
            if (itry == 0) continue;
            iscale = -(nmax + 0.1f * itry) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * x[i]);
                l = Math.Max(-nmax, Math.Min(nmax - 1, l));
                float w = Weight(x, qw, i, rmseType);
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                {
                    int l = NearestInt(iscale * x[i]);
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Weight(ReadOnlySpan<float> x, ReadOnlySpan<float> qw, int i, int rmseType)
    {
        if (!qw.IsEmpty) return qw[i];
        return rmseType switch
        {
            1 => x[i] * x[i],
            2 => 1,
            3 => MathF.Abs(x[i]),
            _ => MathF.Sqrt(MathF.Abs(x[i])),
        };
    }

    /// <summary>make_q3_quants: symmetric [-nmax, nmax-1] with up to 5 rounds of coordinate descent (do_rmse).</summary>
    internal static float MakeQ3Quants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, bool doRmse)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < GroupMaxEps)
        {
            for (int i = 0; i < n; i++) L[i] = 0;
            return 0f;
        }
        float iscale = -nmax / max;
        if (doRmse)
        {
            float sumlx = 0, suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * x[i]);
                l = Math.Max(-nmax, Math.Min(nmax - 1, l));
                L[i] = (sbyte)l;
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            for (int itry = 0; itry < 5; itry++)
            {
                int nChanged = 0;
                for (int i = 0; i < n; i++)
                {
                    float w = x[i] * x[i];
                    float slx = sumlx - w * x[i] * L[i];
                    if (slx > 0)
                    {
                        float sl2 = suml2 - w * L[i] * L[i];
                        int newL = NearestInt(x[i] * sl2 / slx);
                        newL = Math.Max(-nmax, Math.Min(nmax - 1, newL));
                        if (newL != L[i])
                        {
                            slx += w * x[i] * newL;
                            sl2 += w * newL * newL;
                            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2)
                            {
                                L[i] = (sbyte)newL; sumlx = slx; suml2 = sl2;
                                nChanged++;
                            }
                        }
                    }
                }
                if (nChanged == 0) break;
            }
            for (int i = 0; i < n; i++) L[i] = (sbyte)(L[i] + nmax);
            return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
        }
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Max(-nmax, Math.Min(nmax - 1, l));
            L[i] = (sbyte)(l + nmax);
        }
        return 1 / iscale;
    }

    /// <summary>
    /// make_qkx2_quants: asymmetric [0, nmax] quantization x ≈ scale*L - theMin, searching nstep+1 candidate
    /// scales and solving weighted least squares for (scale, min) at each.
    /// </summary>
    internal static float MakeQkx2Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L,
        out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            for (int i = 0; i < n; i++) L[i] = 0;
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            bestError += weights[i] * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        if (Lanes == SearchLanes.Lanes256)
            return MakeQkx2QuantsVector<Lanes256>(n, nmax, x, weights, L, min, max, sumW, sumX, scale, bestError, out theMin, rmin, rdelta, nstep, useMad);
        if (Lanes == SearchLanes.Lanes128)
            return MakeQkx2QuantsVector<Lanes128>(n, nmax, x, weights, L, min, max, sumW, sumX, scale, bestError, out theMin, rmin, rdelta, nstep, useMad);
        for (int istep = 0; istep <= nstep; istep++)
        {
            iscale = (rmin + rdelta * istep + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * (x[i] - min));
                l = Math.Max(0, Math.Min(nmax, l));
                Laux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    for (int i = 0; i < n; i++) L[i] = Laux[i];
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    // ---------------------------------------------------------------- K-quants (256-element super-blocks)

    private static void Q2_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[QK];
        Span<byte> Laux = stackalloc byte[16];
        Span<float> weights = stackalloc float[16];
        Span<float> mins = stackalloc float[QK / 16];
        Span<float> scales = stackalloc float[QK / 16];
        const float q4scale = 15f;
        Span<byte> ysc = y.Slice(0, 16);

        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < QK / 16; j++)
        {
            for (int l = 0; l < 16; l++) weights[l] = MathF.Abs(x[16 * j + l]);
            scales[j] = MakeQkx2Quants(16, 3, x.Slice(16 * j), weights, L.Slice(16 * j), out mins[j], Laux, -0.5f, 0.1f, 15, true);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        if (maxScale > 0)
        {
            float iscale = q4scale / maxScale;
            for (int j = 0; j < QK / 16; j++) ysc[j] = (byte)NearestInt(iscale * scales[j]);
            PutHalf(y, 80, maxScale / q4scale);
        }
        else
        {
            ysc.Clear();
            PutHalf(y, 80, 0f);
        }
        if (maxMin > 0)
        {
            float iscale = q4scale / maxMin;
            for (int j = 0; j < QK / 16; j++) ysc[j] |= (byte)(NearestInt(iscale * mins[j]) << 4);
            PutHalf(y, 82, maxMin / q4scale);
        }
        else
        {
            PutHalf(y, 82, 0f);
        }
        float dAll = RoundHalf(y, 80), dMin = RoundHalf(y, 82);
        for (int j = 0; j < QK / 16; j++)
        {
            float d = dAll * (ysc[j] & 0xF);
            if (d == 0) continue;
            float dm = dMin * (ysc[j] >> 4);
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
            }
        }
        Pack2Bit(L, y.Slice(16, 64));
    }

    // qs[32h + l] = L[128h + l] | L[128h + l + 32] << 2 | L[.. + 64] << 4 | L[.. + 96] << 6 (Q2_K and Q3_K).
    private static void Pack2Bit(ReadOnlySpan<byte> L, Span<byte> qs)
    {
        for (int j = 0; j < QK; j += 128)
            for (int l = 0; l < 32; l++)
                qs[j / 4 + l] = (byte)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
    }

    private static void Q3_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[QK];
        Span<float> scales = stackalloc float[QK / 16];
        Span<byte> ysc = y.Slice(96, 12);

        float maxScale = 0, amax = 0;
        for (int j = 0; j < QK / 16; j++)
        {
            scales[j] = MakeQ3Quants(16, 4, x.Slice(16 * j), L.Slice(16 * j), true);
            float scale = MathF.Abs(scales[j]);
            if (scale > amax) { amax = scale; maxScale = scales[j]; }
        }

        ysc.Clear();
        if (maxScale != 0)
        {
            float iscale = -32f / maxScale;
            for (int j = 0; j < QK / 16; j++)
            {
                int l = (sbyte)NearestInt(iscale * scales[j]);
                l = Math.Max(-32, Math.Min(31, l)) + 32;
                if (j < 8) ysc[j] = (byte)(l & 0xF);
                else ysc[j - 8] |= (byte)((l & 0xF) << 4);
                l >>= 4;
                ysc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
            }
            PutHalf(y, 108, 1 / iscale);
        }
        else
        {
            PutHalf(y, 108, 0f);
        }

        float dAll = RoundHalf(y, 108);
        Span<int> sc = stackalloc int[16];
        Dequantize.Q3KScales(ysc, sc);
        for (int j = 0; j < QK / 16; j++)
        {
            float d = dAll * sc[j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                l = Math.Max(-4, Math.Min(3, l));
                L[16 * j + ii] = (sbyte)(l + 4);
            }
        }

        // High bit of element j goes to bit (j / 32) of hmask[j % 32].
        Span<byte> hmask = y.Slice(0, 32);
        hmask.Clear();
        int m = 0;
        int hm = 1;
        for (int j = 0; j < QK; j++)
        {
            if (L[j] > 3)
            {
                hmask[m] |= (byte)hm;
                L[j] -= 4;
            }
            if (++m == QK / 8) { m = 0; hm <<= 1; }
        }
        Pack2Bit(System.Runtime.InteropServices.MemoryMarshal.AsBytes(L), y.Slice(32, 64));
    }

    // Packs 8 (scale, min) 6-bit pairs into the 12-byte K4 layout read by get_scale_min_k4.
    private static void PackScaleMinK4(int j, int ls, int lm, Span<byte> s)
    {
        if (j < 4)
        {
            s[j] = (byte)ls;
            s[j + 4] = (byte)lm;
        }
        else
        {
            s[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
            s[j - 4] |= (byte)((ls >> 4) << 6);
            s[j] |= (byte)((lm >> 4) << 6);
        }
    }

    // Shared by Q4_K (nmax 15) and Q5_K (nmax 31): per-32 asymmetric scales, 6-bit scale/min codes, requantize.
    private static void QuantizeK4Scales(ReadOnlySpan<float> x, Span<byte> y, Span<byte> L, int nmax, float rmin, int nstep)
    {
        Span<byte> Laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[QK / 32];
        Span<float> scales = stackalloc float[QK / 32];
        float maxScale = 0, maxMin = 0;
        for (int j = 0; j < QK / 32; j++)
        {
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += x[32 * j + l] * x[32 * j + l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(x[32 * j + l]);
            scales[j] = MakeQkx2Quants(32, nmax, x.Slice(32 * j), weights, L.Slice(32 * j), out mins[j], Laux, rmin, 0.1f, nstep, false);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        Span<byte> s = y.Slice(4, 12);
        for (int j = 0; j < QK / 32; j++)
        {
            int ls = Math.Min(63, (int)(byte)NearestInt(invScale * scales[j]));
            int lm = Math.Min(63, (int)(byte)NearestInt(invMin * mins[j]));
            PackScaleMinK4(j, ls, lm, s);
        }
        PutHalf(y, 0, maxScale / 63f);
        PutHalf(y, 2, maxMin / 63f);

        float dAll = RoundHalf(y, 0), dMin = RoundHalf(y, 2);
        for (int j = 0; j < QK / 32; j++)
        {
            Dequantize.ScaleMinK4(j, s, out int sc, out int m);
            float d = dAll * sc;
            if (d == 0) continue;
            float dm = dMin * m;
            for (int ii = 0; ii < 32; ii++)
            {
                int l = NearestInt((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, l));
            }
        }
    }

    private static void Q4_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[QK];
        QuantizeK4Scales(x, y, L, 15, -1f, 20);
        Span<byte> q = y.Slice(16, 128);
        for (int j = 0, o = 0; j < QK; j += 64, o += 32)
            for (int l = 0; l < 32; l++) q[o + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
    }

    private static void Q5_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<byte> L = stackalloc byte[QK];
        QuantizeK4Scales(x, y, L, 31, -0.5f, 15);
        Span<byte> qh = y.Slice(16, 32);
        Span<byte> ql = y.Slice(48, 128);
        qh.Clear();
        int m1 = 1, m2 = 2;
        for (int n = 0, o = 0; n < QK; n += 64, o += 32)
        {
            for (int j = 0; j < 32; j++)
            {
                int l1 = L[n + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= (byte)m1; }
                int l2 = L[n + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= (byte)m2; }
                ql[o + j] = (byte)(l1 | (l2 << 4));
            }
            m1 <<= 2; m2 <<= 2;
        }
    }

    private static void Q6_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[QK];
        Span<float> scales = stackalloc float[QK / 16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < QK / 16; ib++)
        {
            float scale = MakeQxQuants(16, 32, x.Slice(16 * ib), L.Slice(16 * ib), 1, default);
            scales[ib] = scale;
            float absScale = MathF.Abs(scale);
            if (absScale > maxAbsScale) { maxAbsScale = absScale; maxScale = scale; }
        }
        if (maxAbsScale < GroupMaxEps)
        {
            y.Clear();
            PutHalf(y, 208, 0f);
            return;
        }
        float iscale = -128f / maxScale;
        PutHalf(y, 208, 1 / iscale);
        Span<byte> ysc = y.Slice(192, 16);
        for (int ib = 0; ib < QK / 16; ib++) ysc[ib] = (byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[ib]));

        float dAll = RoundHalf(y, 208);
        for (int j = 0; j < QK / 16; j++)
        {
            float d = dAll * (sbyte)ysc[j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                l = Math.Max(-32, Math.Min(31, l));
                L[16 * j + ii] = (sbyte)(l + 32);
            }
        }

        for (int j = 0; j < QK; j += 128)
        {
            int ql = j / 2, qh = 128 + j / 4;
            for (int l = 0; l < 32; l++)
            {
                int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                y[ql + l] = (byte)(q1 | (q3 << 4));
                y[ql + l + 32] = (byte)(q2 | (q4 << 4));
                y[qh + l] = (byte)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }

    private static void Q8_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        float max = 0, amax = 0;
        for (int j = 0; j < QK; j++)
        {
            float ax = MathF.Abs(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (amax == 0)
        {
            // ggml zeroes d and qs only; bsums are left as they were. We zero them too (deterministic output).
            y.Clear();
            return;
        }
        float iscale = -127f / max;
        for (int j = 0; j < QK; j++) y[4 + j] = (byte)(sbyte)Math.Min(127, NearestInt(iscale * x[j]));
        for (int j = 0; j < QK / 16; j++)
        {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += (sbyte)y[4 + j * 16 + ii];
            BinaryPrimitives.WriteInt16LittleEndian(y.Slice(4 + QK + 2 * j), (short)sum);
        }
        BinaryPrimitives.WriteSingleLittleEndian(y, 1 / iscale);
    }
}
