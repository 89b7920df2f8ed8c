using System.Buffers.Binary;

namespace Cria.Tensors;

/// <summary>
/// The importance-weighted quantizers: ggml-quants.c's <c>quantize_row_*_impl</c> with <c>quant_weights</c> (an
/// importance matrix: per input column, the mean of the squared activations it multiplies). ggml runs these only when
/// quant_weights is given; without it <c>quantize_q4_K</c> &amp; co. call the <c>*_ref</c> quantizers (<see cref="Row(GgmlType, ReadOnlySpan{float}, Span{byte})"/>),
/// which is what llama-quantize does when no imatrix is passed. Same float expression order as ggml.
/// </summary>
public static partial class Quantize
{
    /// <summary>
    /// Encodes one row with importance weights <paramref name="quantWeights"/> (length = row length, or empty for the
    /// reference path). F32/F16/BF16/Q8_0 ignore the weights, as ggml does.
    /// </summary>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, ReadOnlySpan<float> quantWeights) =>
        RowWeighted(type, src, dst, quantWeights, ImpWeighting.Ggml);

    /// <summary>The <c>*_impl</c> quantizers with the search weights made from the importance as <paramref name="mode"/> says.</summary>
    internal static void RowWeighted(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, ReadOnlySpan<float> quantWeights, ImpWeighting mode)
    {
        if (quantWeights.IsEmpty || type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q8_K)
        {
            Row(type, src, dst);
            return;
        }
        int n = src.Length;
        if (quantWeights.Length != n) throw new ArgumentException($"quant_weights has {quantWeights.Length} values for a row of {n}", nameof(quantWeights));
        Dequantize.CheckRow(type, dst.Length, n, nameof(dst));
        int qk = GgmlTypeInfo.BlockSize(type), bs = GgmlTypeInfo.BlockBytes(type);
        if (type is GgmlType.IQ4_NL or GgmlType.IQ4_XS)
        {
            // quantize_iq4_nl / quantize_iq4_xs: σ² over each (super-)block, not the row.
            for (int i = 0; i < n / qk; i++) IQ4(src.Slice(i * qk, qk), dst.Slice(i * bs, bs), quantWeights.Slice(i * qk, qk), mode, qk);
            return;
        }
        if (GgmlTypeInfo.IsLattice(type))
        {
            for (int i = 0; i < n / qk; i++) LatticeBlock(type, src.Slice(i * qk, qk), dst.Slice(i * bs, bs), quantWeights.Slice(i * qk, qk), mode);
            return;
        }
        if (qk == 32)
        {
            // Q4_0/Q4_1/Q5_0/Q5_1: sigma2 over the whole row (quantize_row_q4_0_impl etc.).
            float sumX2 = 0;
            for (int j = 0; j < n; j++) sumX2 += src[j] * src[j];
            float sigma2 = sumX2 / n;
            Span<float> weight = stackalloc float[32];
            for (int ib = 0; ib < n / 32; ib++)
            {
                var xb = src.Slice(32 * ib, 32);
                var qw = quantWeights.Slice(32 * ib, 32);
                SearchWeights(qw, xb, sigma2, mode, weight);
                var y = dst.Slice(ib * bs, bs);
                switch (type)
                {
                    case GgmlType.Q4_0: Q4_0Impl(xb, y, weight); break;
                    case GgmlType.Q4_1: Q4_1Impl(xb, y, weight); break;
                    case GgmlType.Q5_0: Q5_0Impl(xb, y, weight); break;
                    case GgmlType.Q5_1: Q5_1Impl(xb, y, weight); break;
                    default: throw new ArgumentException($"weighted quantization to {type} is not supported", nameof(type));
                }
            }
            return;
        }
        for (int i = 0; i < n / qk; i++)
        {
            var x = src.Slice(i * qk, qk);
            var qw = quantWeights.Slice(i * qk, qk);
            var y = dst.Slice(i * bs, bs);
            switch (type)
            {
                case GgmlType.Q2_K: Q2_KImpl(x, y, qw, mode); break;
                case GgmlType.Q3_K: Q3_KImpl(x, y, qw, mode); break;
                case GgmlType.Q4_K: Q4_KImpl(x, y, qw, 15, mode); break;
                case GgmlType.Q5_K: Q4_KImpl(x, y, qw, 31, mode); break;
                case GgmlType.Q6_K: Q6_KImpl(x, y, qw); break;
                default: throw new ArgumentException($"weighted quantization to {type} is not supported", nameof(type));
            }
        }
    }

    // ---------------------------------------------------------------- 32-element blocks with weights

    private static void Q4_0Impl(ReadOnlySpan<float> xb, Span<byte> y, ReadOnlySpan<float> weight)
    {
        Span<sbyte> L = stackalloc sbyte[32];
        float d = MakeQxQuants(32, 8, xb, L, 1, weight);
        PutHalf(y, 0, d);
        for (int j = 0; j < 16; j++) y[2 + j] = (byte)((byte)L[j] | ((byte)L[j + 16] << 4));
    }

    private static void Q5_0Impl(ReadOnlySpan<float> xb, Span<byte> y, ReadOnlySpan<float> weight)
    {
        Span<sbyte> L = stackalloc sbyte[32];
        float d = MakeQxQuants(32, 16, xb, L, 1, weight);
        PutHalf(y, 0, d);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            uint xi0 = (byte)L[j], xi1 = (byte)L[j + 16];
            y[6 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(2), qh);
    }

    private static void Q4_1Impl(ReadOnlySpan<float> xb, Span<byte> y, ReadOnlySpan<float> weight)
    {
        Span<byte> L = stackalloc byte[32], Laux = stackalloc byte[32];
        float d = MakeQkx3Quants(32, 15, xb, weight, L, out float min, Laux, -0.9f, 0.05f, 36, false);
        PutHalf(y, 0, d);
        PutHalf(y, 2, -min);
        for (int j = 0; j < 16; j++) y[4 + j] = (byte)(L[j] | (L[j + 16] << 4));
    }

    private static void Q5_1Impl(ReadOnlySpan<float> xb, Span<byte> y, ReadOnlySpan<float> weight)
    {
        Span<byte> L = stackalloc byte[32], Laux = stackalloc byte[32];
        float d = MakeQkx3Quants(32, 31, xb, weight, L, out float min, Laux, -0.9f, 0.05f, 36, false);
        PutHalf(y, 0, d);
        PutHalf(y, 2, -min);
        uint qh = 0;
        for (int j = 0; j < 16; j++)
        {
            uint xi0 = L[j], xi1 = L[j + 16];
            y[8 + j] = (byte)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
            qh |= ((xi0 & 0x10u) >> 4) << j;
            qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(4), qh);
    }

    // ---------------------------------------------------------------- weighted helpers (ggml-quants.c)

    /// <summary>make_qkx3_quants: make_qkx2_quants with weights defaulting to x² and a finer, wider scale search.</summary>
    internal static float MakeQkx3Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L,
        out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep, bool useMad)
    {
        bool hasW = !weights.IsEmpty;
        float min = x[0], max = x[0];
        float sumW = hasW ? weights[0] : x[0] * x[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = hasW ? weights[i] : x[i] * x[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max <= min)
        {
            for (int i = 0; i < n; i++) L[i] = 0;
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestMad = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = useMad ? MathF.Abs(diff) : diff * diff;
            float w = hasW ? weights[i] : x[i] * x[i];
            bestMad += w * diff;
        }
        if (nstep < 1)
        {
            theMin = -min;
            return scale;
        }
        if (Lanes != SearchLanes.Scalar)
        {
            // From here on make_qkx3_quants is make_qkx2_quants' search step for step: its eight-lane form.
            Span<float> w8 = stackalloc float[n]; // the weights (x² where none are given, as ggml)
            for (int i = 0; i < n; i++) w8[i] = hasW ? weights[i] : x[i] * x[i];
            return Lanes == SearchLanes.Lanes256
                ? MakeQkx2QuantsVector<Lanes256>(n, nmax, x, w8, L, min, max, sumW, sumX, scale, bestMad, out theMin, rmin, rdelta, nstep, useMad)
                : MakeQkx2QuantsVector<Lanes128>(n, nmax, x, w8, L, min, max, sumW, sumX, scale, bestMad, out theMin, rmin, rdelta, nstep, useMad);
        }
        for (int istep = 0; istep <= nstep; istep++)
        {
            iscale = (rmin + rdelta * istep + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * (x[i] - min));
                l = Math.Max(0, Math.Min(nmax, l));
                Laux[i] = (byte)l;
                float w = hasW ? weights[i] : x[i] * x[i];
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
                float mad = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = useMad ? MathF.Abs(diff) : diff * diff;
                    float w = hasW ? weights[i] : x[i] * x[i];
                    mad += w * diff;
                }
                if (mad < bestMad)
                {
                    for (int i = 0; i < n; i++) L[i] = Laux[i];
                    bestMad = mad;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    /// <summary>make_qp_quants: non-negative values (the sub-block scales) to [0, nmax] with a weighted scale search
    /// and 5 rounds of coordinate descent.</summary>
    internal static float MakeQpQuants(int n, int nmax, ReadOnlySpan<float> x, Span<byte> L, ReadOnlySpan<float> quantWeights)
    {
        float max = 0;
        for (int i = 0; i < n; i++) max = MathF.Max(max, x[i]);
        if (max == 0)
        {
            for (int i = 0; i < n; i++) L[i] = 0;
            return 0f;
        }
        float iscale = nmax / max;
        for (int i = 0; i < n; i++) L[i] = (byte)NearestInt(iscale * x[i]);
        float scale = 1 / iscale;
        float bestMse = 0;
        for (int i = 0; i < n; i++)
        {
            float diff = x[i] - scale * L[i];
            float w = quantWeights[i];
            bestMse += w * diff * diff;
        }
        for (int istep = -4; istep <= 4; istep++)
        {
            if (istep == 0) continue;
            float iscaleIs = (0.1f * istep + nmax) / max;
            float scaleIs = 1 / iscaleIs;
            float mse = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscaleIs * x[i]);
                l = Math.Min(nmax, l);
                float diff = x[i] - scaleIs * l;
                float w = quantWeights[i];
                mse += w * diff * diff;
            }
            if (mse < bestMse)
            {
                bestMse = mse;
                iscale = iscaleIs;
            }
        }
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Min(nmax, l);
            L[i] = (byte)l;
            float w = quantWeights[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        for (int itry = 0; itry < 5; itry++)
        {
            int nChanged = 0;
            for (int i = 0; i < n; i++)
            {
                float w = quantWeights[i];
                float slx = sumlx - w * x[i] * L[i];
                float sl2 = suml2 - w * L[i] * L[i];
                if (slx > 0 && sl2 > 0)
                {
                    int newL = NearestInt(x[i] * sl2 / slx);
                    newL = Math.Min(nmax, newL);
                    if (newL != L[i])
                    {
                        slx += w * x[i] * newL;
                        sl2 += w * newL * newL;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2)
                        {
                            L[i] = (byte)newL; sumlx = slx; suml2 = sl2;
                            nChanged++;
                        }
                    }
                }
            }
            if (nChanged == 0) break;
        }
        return sumlx / suml2;
    }

    /// <summary>The weights a block's scale search minimises Σ w·(x − x̂)² with: ggml's importance × √(σ² + x²), or the
    /// importance alone (<see cref="ImpWeighting"/>). w[j] for j &lt; qw.Length.</summary>
    private static void SearchWeights(ReadOnlySpan<float> qw, ReadOnlySpan<float> x, float sigma2, ImpWeighting mode, Span<float> w)
    {
        if (mode == ImpWeighting.Ggml) for (int j = 0; j < qw.Length; j++) w[j] = qw[j] * MathF.Sqrt(sigma2 + x[j] * x[j]);
        else qw.CopyTo(w);
    }

    // ---------------------------------------------------------------- K-quants with weights

    private static void Q2_KImpl(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qwBlock, ImpWeighting mode)
    {
        Span<byte> L = stackalloc byte[QK];
        Span<byte> Laux = stackalloc byte[16];
        Span<float> mins = stackalloc float[QK / 16];     // [16] per sub-block min
        Span<float> scales = stackalloc float[QK / 16];   // [16] per sub-block scale
        Span<float> sw = stackalloc float[QK / 16];       // [16] per sub-block weight sum
        Span<float> weight = stackalloc float[16];
        Span<byte> Ls = stackalloc byte[QK / 16], Lm = stackalloc byte[QK / 16];

        sw.Clear();
        float sumx2 = 0;
        for (int j = 0; j < QK; j++) sumx2 += x[j] * x[j];
        float sigma2 = sumx2 / QK;
        for (int j = 0; j < QK / 16; j++)
        {
            var qw = qwBlock.Slice(16 * j, 16);
            SearchWeights(qw, x.Slice(16 * j, 16), sigma2, mode, weight);
            for (int l = 0; l < QK / 16; l++) sw[j] += weight[l];
            scales[j] = MakeQkx3Quants(16, 3, x.Slice(16 * j), weight, L.Slice(16 * j), out mins[j], Laux, -0.9f, 0.05f, 36, false);
        }
        float dm = MakeQpQuants(QK / 16, 15, scales, Ls, sw);
        float mm = MakeQpQuants(QK / 16, 15, mins, Lm, sw);
        PutHalf(y, 80, dm);
        PutHalf(y, 82, mm);
        dm = RoundHalf(y, 80);
        mm = RoundHalf(y, 82);
        Span<byte> ysc = y.Slice(0, 16);
        for (int j = 0; j < QK / 16; j++) ysc[j] = (byte)(Ls[j] | (Lm[j] << 4));
        for (int j = 0; j < QK / 16; j++)
        {
            float d = dm * (ysc[j] & 0xF);
            if (d == 0) continue;
            float m = mm * (ysc[j] >> 4);
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt((x[16 * j + ii] + m) / d);
                L[16 * j + ii] = (byte)Math.Max(0, Math.Min(3, l));
            }
        }
        Pack2Bit(L, y.Slice(16, 64));
    }

    private static void Q3_KImpl(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qwBlock, ImpWeighting mode)
    {
        Span<sbyte> L = stackalloc sbyte[QK];
        Span<float> scales = stackalloc float[QK / 16];   // [16]
        Span<float> weight = stackalloc float[16];
        Span<float> sw = stackalloc float[QK / 16];       // [16]
        Span<sbyte> Ls = stackalloc sbyte[QK / 16];

        float sumx2 = 0;
        for (int j = 0; j < QK; j++) sumx2 += x[j] * x[j];
        float sigma2 = 2 * sumx2 / QK;
        for (int j = 0; j < QK / 16; j++)
        {
            var qw = qwBlock.Slice(16 * j, 16);
            SearchWeights(qw, x.Slice(16 * j, 16), sigma2, mode, weight);
            float sumw = 0;
            for (int l = 0; l < 16; l++) sumw += weight[l];
            sw[j] = sumw;
            scales[j] = MakeQxQuants(16, 4, x.Slice(16 * j), L.Slice(16 * j), 1, weight);
        }
        Span<byte> ysc = y.Slice(96, 12);
        ysc.Clear();
        float dBlock = MakeQxQuants(QK / 16, 32, scales, Ls, 1, sw);
        for (int j = 0; j < QK / 16; j++)
        {
            int l = Ls[j];
            if (j < 8) ysc[j] = (byte)(l & 0xF);
            else ysc[j - 8] |= (byte)((l & 0xF) << 4);
            l >>= 4;
            ysc[j % 4 + 8] |= (byte)(l << (2 * (j / 4)));
        }
        PutHalf(y, 108, dBlock);

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
        Span<byte> hmask = y.Slice(0, 32);
        hmask.Clear();
        int m = 0, hm = 1;
        for (int j = 0; j < QK; j++)
        {
            if (L[j] > 3) { hmask[m] |= (byte)hm; L[j] -= 4; }
            if (++m == QK / 8) { m = 0; hm <<= 1; }
        }
        Pack2Bit(System.Runtime.InteropServices.MemoryMarshal.AsBytes(L), y.Slice(32, 64));
    }

    // Q4_K (nmax 15) and Q5_K (nmax 31) share everything up to the bit packing.
    private static void Q4_KImpl(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qwBlock, int nmax, ImpWeighting mode)
    {
        Span<byte> L = stackalloc byte[QK];
        Span<byte> Laux = stackalloc byte[32];
        Span<byte> Ls = stackalloc byte[QK / 32], Lm = stackalloc byte[QK / 32];
        Span<float> weights = stackalloc float[32];
        Span<float> sw = stackalloc float[QK / 32];       // [8]
        Span<float> mins = stackalloc float[QK / 32];     // [8]
        Span<float> scales = stackalloc float[QK / 32];   // [8]

        float sumX2 = 0;
        for (int l = 0; l < QK; l++) sumX2 += x[l] * x[l];
        float sigma2 = 2 * sumX2 / QK;
        for (int j = 0; j < QK / 32; j++)
        {
            var qw = qwBlock.Slice(32 * j, 32);
            SearchWeights(qw, x.Slice(32 * j, 32), sigma2, mode, weights);
            float sumw = 0;
            for (int l = 0; l < 32; l++) sumw += weights[l];
            sw[j] = sumw;
            scales[j] = MakeQkx3Quants(32, nmax, x.Slice(32 * j), weights, L.Slice(32 * j), out mins[j], Laux, -0.9f, 0.05f, 36, false);
        }
        float dBlock = MakeQpQuants(QK / 32, 63, scales, Ls, sw);
        float mBlock = MakeQpQuants(QK / 32, 63, mins, Lm, sw);
        Span<byte> s = y.Slice(4, 12);
        s.Clear();
        for (int j = 0; j < QK / 32; j++) PackScaleMinK4(j, Math.Min(63, (int)Ls[j]), Math.Min(63, (int)Lm[j]), s);
        PutHalf(y, 0, dBlock);
        PutHalf(y, 2, mBlock);

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
        if (nmax == 15)
        {
            Span<byte> q = y.Slice(16, 128);
            for (int j = 0, o = 0; j < QK; j += 64, o += 32)
                for (int l = 0; l < 32; l++) q[o + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
            return;
        }
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

    private static void Q6_KImpl(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qwBlock)
    {
        Span<sbyte> L = stackalloc sbyte[QK];
        Span<float> scales = stackalloc float[QK / 16];   // [16]
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < QK / 16; ib++)
        {
            float scale = MakeQxQuants(16, 32, x.Slice(16 * ib), L.Slice(16 * ib), 1, qwBlock.Slice(16 * ib, 16));
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
}
