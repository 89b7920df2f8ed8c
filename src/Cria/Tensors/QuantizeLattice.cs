using System.Buffers.Binary;
using System.Runtime.Intrinsics;

namespace Cria.Tensors;

// The lattice i-quants' quantizers: ggml-quants.c's quantize_row_iq2_xxs_impl, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq1_s
// and iq1_m, step by step in the same float order, so the bytes are ggml's (RowQuantizerOracleTests). Each super-block
// of 256 is encoded on its own. Every scheme works on |x| with the signs kept apart (IQ2_XXS/IQ2_XS/IQ3_XXS flip the
// least important value of an odd group of 8, so the sign count is even and 7 bits carry it), searches a sub-block
// scale over a fixed set of trial scales — each rounds |x|/scale to levels, moves an off-grid group of levels to the
// listed grid point (LatticeTable) with the least weighted error, and keeps the scale with the best weighted fit —
// then refits, and stores each sub-block scale in 4 (IQ1: 3) bits under one F16 super-scale. The weights: x² without
// an importance matrix, importance·√(σ² + x²) with one (σ² the super-block's mean square, doubled except for IQ2_XXS
// and IQ2_XS). IQ2_XXS, IQ2_XS and IQ1_S need an importance matrix, as in ggml.
public static partial class Quantize
{
    const float GroupMaxEpsIQ3XXS = 1e-8f, GroupMaxEpsIQ2S = 1e-8f, GroupMaxEpsIQ1M = 1e-7f, GroupMaxEpsIQ1S = 1e-12f;
    const float IQ1Delta = 0.125f;

    /// <summary>Whether ggml's quantizer of <paramref name="type"/> needs quant_weights (an importance matrix).</summary>
    public static bool NeedsImportance(GgmlType type) => type is GgmlType.IQ2_XXS or GgmlType.IQ2_XS or GgmlType.IQ1_S;

    /// <summary>One super-block of a lattice type: <paramref name="qw"/> is its 256 importances, or empty.</summary>
    static void LatticeBlock(GgmlType type, ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode)
    {
        if (qw.IsEmpty && NeedsImportance(type))
            throw new ArgumentException($"{type} is quantized only with an importance matrix (ggml asserts quant_weights)", nameof(qw));
        switch (type)
        {
            case GgmlType.IQ2_XXS: IQ2XXSBlock(x, y, qw, mode); break;
            case GgmlType.IQ2_XS: IQ2SBlock(x, y, qw, mode, xs: true); break;
            case GgmlType.IQ2_S: IQ2SBlock(x, y, qw, mode, xs: false); break;
            case GgmlType.IQ3_XXS: IQ3Block(x, y, qw, mode, xxs: true); break;
            case GgmlType.IQ3_S: IQ3Block(x, y, qw, mode, xxs: false); break;
            case GgmlType.IQ1_S: IQ1SBlock(x, y, qw, mode); break;
            case GgmlType.IQ1_M: IQ1MBlock(x, y, qw, mode); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a lattice type");
        }
    }

    /// <summary>Σ x² over the super-block, summed in order.</summary>
    static float SumSquares(ReadOnlySpan<float> x)
    {
        float s = 0;
        for (int i = 0; i < x.Length; i++) s += x[i] * x[i];
        return s;
    }

    /// <summary>The search weights of one sub-block: importance·√(σ² + x²) (ggml), the importance alone, or
    /// <paramref name="plainSigma2"/> + x² without an importance (0 but for IQ2_S's σ²/4).</summary>
    static void LatticeWeights(ReadOnlySpan<float> xb, ReadOnlySpan<float> qw, float sigma2, ImpWeighting mode, Span<float> weight, float plainSigma2)
    {
        if (qw.IsEmpty) for (int i = 0; i < xb.Length; i++) weight[i] = plainSigma2 + xb[i] * xb[i];
        else if (mode == ImpWeighting.Ggml) for (int i = 0; i < xb.Length; i++) weight[i] = qw[i] * MathF.Sqrt(sigma2 + xb[i] * xb[i]);
        else qw.CopyTo(weight);
    }

    /// <summary>|x| of a group of 8 and its sign bits; with <paramref name="evenSigns"/> the value of least w·x² in an odd
    /// group keeps its sign flipped in |x| instead, so the group's sign count is even (7 stored bits).</summary>
    static byte GroupSigns(ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, Span<float> xval, bool evenSigns)
    {
        int nflip = 0;
        byte s = 0;
        for (int i = 0; i < 8; i++)
        {
            if (xb[i] >= 0) xval[i] = xb[i];
            else { xval[i] = -xb[i]; nflip++; s |= (byte)(1 << i); }
        }
        if (evenSigns && nflip % 2 != 0)
        {
            int imin = 0;
            float min = weight[0] * xb[0] * xb[0];
            for (int i = 1; i < 8; i++)
            {
                float ax = weight[i] * xb[i] * xb[i];
                if (ax < min) { min = ax; imin = i; }
            }
            xval[imin] = -xval[imin];
            s ^= (byte)(1 << imin);
        }
        return evenSigns ? (byte)(s & 127) : s;
    }

    /// <summary>The start of every IQ2/IQ3 sub-block: √weight for the neighbour searches, |x| and the sign bytes of each
    /// group of 8. Returns max |x| (after IQ2_XXS/IQ2_XS/IQ3_XXS's parity flip, as ggml takes it).</summary>
    static float SubBlockSigns(ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, Span<float> xval, Span<float> waux, Span<byte> signs, bool evenSigns)
    {
        int n = xb.Length;
        for (int i = 0; i < n; i++) waux[i] = MathF.Sqrt(weight[i]);
        for (int k = 0; k < n / 8; k++) signs[k] = GroupSigns(xb.Slice(8 * k, 8), weight.Slice(8 * k, 8), xval.Slice(8 * k, 8), evenSigns);
        float max = xval[0];
        for (int i = 1; i < n; i++) max = MathF.Max(max, xval[i]);
        return max;
    }

    /// <summary>Levels of <paramref name="xval"/> at inverse scale <paramref name="id"/>, clamped to [0, kMaxQ − 1],
    /// group by group moved onto the grid (the nearest listed point for <paramref name="scale"/>). Records whether each
    /// group was on the grid already (<paramref name="onlyOffGrid"/>: redoes only the groups flagged off it).</summary>
    static unsafe void LatticeLevels(LatticeTable t, ReadOnlySpan<float> xval, ReadOnlySpan<float> waux, float id, float scale, int kMaxQ,
        Span<sbyte> L, Span<bool> onGrid, bool onlyOffGrid = false)
    {
        int dim = t.Dim, bits = t.Bits, groups = xval.Length / dim;
        fixed (float* xp = xval) fixed (float* wp = waux) fixed (sbyte* lp = L) fixed (int* map = t.Map)
            for (int k = 0; k < groups; k++)
            {
                if (onlyOffGrid && onGrid[k]) continue;
                float* xk = xp + dim * k;
                sbyte* lk = lp + dim * k;
                int key = 0;
                for (int i = 0; i < dim; i++)
                {
                    int l = NearestInt(0.5f * (id * xk[i] - 1));
                    l = l < 0 ? 0 : l > kMaxQ - 1 ? kMaxQ - 1 : l;
                    lk[i] = (sbyte)l;
                    key |= l << (bits * i);
                }
                bool on = map[key] >= 0;
                if (!onlyOffGrid) onGrid[k] = on;
                if (!on) t.BestNeighbourFast(key, xk, wp + dim * k, scale, lk);
            }
    }

    /// <summary>Σ w·x·q and Σ w·q² with q = 2L + 1.</summary>
    static unsafe void LatticeFit(ReadOnlySpan<float> xval, ReadOnlySpan<float> weight, ReadOnlySpan<sbyte> L, out float sumqx, out float sumq2)
    {
        float qx = 0, q2 = 0;
        int n = xval.Length;
        fixed (float* xp = xval) fixed (float* wp = weight) fixed (sbyte* lp = L)
            for (int i = 0; i < n; i++)
            {
                float w = wp[i];
                float q = 2 * lp[i] + 1;
                qx += w * xp[i] * q;
                q2 += w * q * q;
            }
        sumqx = qx; sumq2 = q2;
    }

    /// <summary>The trial scales id = (2·kMaxQ − 1 + is·step)/<paramref name="div"/>, is ∈ [−isMax, isMax]: the levels
    /// (and on-grid flags) of the best weighted fit go to <paramref name="L"/>, its least-squares scale is returned
    /// (<paramref name="scale"/> when none fits).</summary>
    static float LatticeScaleSearch(LatticeTable t, ReadOnlySpan<float> xval, ReadOnlySpan<float> weight, ReadOnlySpan<float> waux,
        int kMaxQ, int isMax, float step, float div, float scale, Span<sbyte> L, Span<bool> onGrid)
    {
        int n = xval.Length, groups = n / t.Dim;
        Span<sbyte> Laux = stackalloc sbyte[n];
        Span<bool> onGridAux = stackalloc bool[groups];
        float best = 0;
        for (int s = -isMax; s <= isMax; s++)
        {
            float id = (2 * kMaxQ - 1 + s * step) / div;
            float thisScale = 1 / id;
            LatticeLevels(t, xval, waux, id, thisScale, kMaxQ, Laux, onGridAux);
            LatticeFit(xval, weight, Laux, out float sumqx, out float sumq2);
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
            {
                scale = sumqx / sumq2; best = scale * sumqx;
                Laux.CopyTo(L);
                onGridAux.CopyTo(onGrid);
            }
        }
        return scale;
    }

    /// <summary>Stores the super-scale d = max/31 as F16 d·<paramref name="fudge"/> (ggml's fudge factors) and returns
    /// 1/d, under which each sub-block scale becomes the 4-bit l = nearest((scale/d − 1)/2) of <see cref="ScaleNibble"/>.</summary>
    static float SuperScale(Span<byte> y, float maxScale, float fudge)
    {
        float d = maxScale / 31;
        PutHalf(y, 0, d * fudge);
        return 1 / d;
    }

    static int ScaleNibble(float id, float scale) => Math.Max(0, Math.Min(15, NearestInt(0.5f * (id * scale - 1))));

    /// <summary>IQ2_XXS: 8 sub-blocks of 32, 4 groups of 8 on the 256-point E8 grid; layout d | 8 × (4 grid bytes,
    /// u32 of 4 × 7 sign bits and the 4-bit scale).</summary>
    static void IQ2XXSBlock(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode)
    {
        const int kMaxQ = 3;
        var t = LatticeTable.For(GgmlType.IQ2_XXS);
        Span<float> scales = stackalloc float[8];
        Span<float> weight = stackalloc float[32], xval = stackalloc float[32], waux = stackalloc float[32];
        Span<sbyte> L = stackalloc sbyte[32];
        Span<byte> Lqp = stackalloc byte[32];
        Span<bool> onGrid = stackalloc bool[8];
        Span<byte> blockSigns = stackalloc byte[4];
        Span<uint> q2 = stackalloc uint[16];
        y.Clear();
        float maxScale = 0;
        float sigma2 = SumSquares(x) / QK;
        for (int ib = 0; ib < 8; ib++)
        {
            var xb = x.Slice(32 * ib, 32);
            LatticeWeights(xb, qw.IsEmpty ? qw : qw.Slice(32 * ib, 32), sigma2, mode, weight, 0);
            float max = SubBlockSigns(xb, weight, xval, waux, blockSigns, evenSigns: true);
            if (max < GroupMaxEps) { scales[ib] = 0; continue; }
            float scale = MakeQpQuants(32, kMaxQ + 1, xval, Lqp, weight);
            float effMax = scale * kMaxQ;
            if (!(effMax > 0)) { scales[ib] = 0; continue; } // also NaN: make_qp_quants gives 0/0 for all-zero weights
            scale = LatticeScaleSearch(t, xval, weight, waux, kMaxQ, 6, 0.1f, effMax, scale, L, onGrid);
            if (scale > 0)
            {
                LatticeLevels(t, xval, waux, 1 / scale, scale, kMaxQ, L, onGrid);
                LatticeFit(xval, weight, L, out float sumqx, out float sumq2);
                if (sumq2 > 0) scale = sumqx / sumq2;
            }
            if (scale < 0)
            {
                scale = -scale;
                for (int k = 0; k < 4; k++) blockSigns[k] = (byte)(~blockSigns[k] & 127);
            }
            for (int k = 0; k < 4; k++)
            {
                int g = OnGrid(t, L.Slice(8 * k, 8));
                q2[2 * ib] |= (uint)g << (8 * k);
                q2[2 * ib + 1] |= (uint)blockSigns[k] << (7 * k);
            }
            scales[ib] = scale;
            maxScale = maxScale > scale ? maxScale : scale;
        }
        if (maxScale == 0) return;
        float idl = SuperScale(y, maxScale, 1f);
        for (int ib = 0; ib < 8; ib++) q2[2 * ib + 1] |= (uint)ScaleNibble(idl, scales[ib]) << 28;
        for (int i = 0; i < 16; i++) BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(2 + 4 * i), q2[i]);
    }

    /// <summary>
    /// One sub-block of IQ2_XS, IQ2_S, IQ3_XXS or IQ3_S, given its weights: |x| and the sign bytes, the scale search
    /// over the trials (2·kMaxQ − 1 + is·<paramref name="step"/>)/max, is ∈ [−isMax, isMax], then the refit — of the
    /// groups left off the grid, or (<paramref name="refitAll"/>, IQ3_S) of every group whenever the search did not end
    /// on the grid — and the signs flipped if the scale came out negative. False when max |x| is below
    /// <paramref name="eps"/> (the sub-block stays empty).
    /// </summary>
    static bool LatticeSubBlock(LatticeTable t, ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, Span<float> xval, Span<float> waux,
        Span<byte> signs, bool evenSigns, float eps, int kMaxQ, int isMax, float step, bool refitAll, Span<sbyte> L, Span<bool> onGrid, out float scale)
    {
        int n = xb.Length;
        float max = SubBlockSigns(xb, weight, xval, waux, signs, evenSigns);
        L.Clear();
        scale = 0;
        if (max < eps) return false;
        onGrid.Fill(!refitAll); // IQ3_S starts with every group "off the grid", so its refit always runs
        scale = LatticeScaleSearch(t, xval, weight, waux, kMaxQ, isMax, step, max, max / (2 * kMaxQ - 1), L, onGrid);
        bool anyOff = false;
        foreach (bool on in onGrid) anyOff |= !on;
        if (anyOff && scale > 0)
        {
            if (refitAll) onGrid.Clear();
            LatticeLevels(t, xval, waux, 1 / scale, scale, kMaxQ, L, onGrid, onlyOffGrid: true);
            LatticeFit(xval, weight, L, out float sumqx, out float sumq2);
            if (sumq2 > 0) scale = sumqx / sumq2;
        }
        if (scale < 0)
        {
            // "should never happen" (ggml): the scale is stored unsigned, so the signs flip instead
            scale = -scale;
            for (int k = 0; k < n / 8; k++) signs[k] = (byte)(evenSigns ? ~signs[k] & 127 : ~signs[k]);
        }
        return true;
    }

    /// <summary>IQ2_XS (<paramref name="xs"/>: 512-point grid, 7 sign bits beside a 9-bit index) and IQ2_S (1024 points,
    /// 8 sign bits and index high bits apart): 16 sub-blocks of 16, 2 groups of 8.</summary>
    static void IQ2SBlock(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode, bool xs)
    {
        const int kMaxQ = 3;
        var t = LatticeTable.For(xs ? GgmlType.IQ2_XS : GgmlType.IQ2_S);
        Span<float> scales = stackalloc float[16];
        Span<float> weight = stackalloc float[16], xval = stackalloc float[16], waux = stackalloc float[16];
        Span<sbyte> L = stackalloc sbyte[16];
        Span<bool> onGrid = stackalloc bool[2];
        Span<byte> blockSigns = stackalloc byte[2];
        y.Clear();
        float maxScale = 0;
        float sumx2 = SumSquares(x);
        float sigma2 = xs ? sumx2 / QK : 2 * sumx2 / QK;
        for (int ib = 0; ib < 16; ib++)
        {
            var xb = x.Slice(16 * ib, 16);
            LatticeWeights(xb, qw.IsEmpty ? qw : qw.Slice(16 * ib, 16), sigma2, mode, weight, 0.25f * sigma2);
            if (!LatticeSubBlock(t, xb, weight, xval, waux, blockSigns, evenSigns: xs, xs ? GroupMaxEps : GroupMaxEpsIQ2S, kMaxQ, 9, 0.1f,
                    refitAll: false, L, onGrid, out float scale)) { scales[ib] = 0; continue; }
            for (int k = 0; k < 2; k++)
            {
                int g = OnGrid(t, L.Slice(8 * k, 8));
                int i8 = 2 * ib + k;
                if (xs) BinaryPrimitives.WriteUInt16LittleEndian(y.Slice(2 + 2 * i8), (ushort)(g | blockSigns[k] << 9));
                else
                {
                    y[2 + i8] = (byte)g;
                    y[2 + 64 + i8 / 4] |= (byte)((g >> 8) << (2 * (i8 % 4)));
                    y[2 + 32 + i8] = blockSigns[k];
                }
            }
            scales[ib] = scale;
            maxScale = maxScale > scale ? maxScale : scale;
        }
        if (maxScale == 0)
        {
            if (xs) y.Slice(2, 64).Clear();
            return;
        }
        float id = SuperScale(y, maxScale, xs ? 1f : 0.9875f);
        int scalesAt = xs ? 2 + 64 : 2 + 64 + 8;
        for (int ib = 0; ib < 16; ib++) y[scalesAt + ib / 2] |= (byte)(ScaleNibble(id, scales[ib]) << (4 * (ib % 2)));
    }

    /// <summary>IQ3_XXS (<paramref name="xxs"/>: 256-point D4 grid, 7-bit signs and the scale in one u32 per sub-block) and
    /// IQ3_S (512 points, 8-bit signs and a 9th index bit apart): 8 sub-blocks of 32, 8 groups of 4.</summary>
    static void IQ3Block(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode, bool xxs)
    {
        const int kMaxQ = 8;
        var t = LatticeTable.For(xxs ? GgmlType.IQ3_XXS : GgmlType.IQ3_S);
        Span<float> scales = stackalloc float[8];
        Span<float> weight = stackalloc float[32], xval = stackalloc float[32], waux = stackalloc float[32];
        Span<sbyte> L = stackalloc sbyte[32];
        Span<bool> onGrid = stackalloc bool[8];
        Span<byte> blockSigns = stackalloc byte[4];
        y.Clear();
        float maxScale = 0;
        float sigma2 = 2 * SumSquares(x) / QK;
        for (int ib = 0; ib < 8; ib++)
        {
            var xb = x.Slice(32 * ib, 32);
            LatticeWeights(xb, qw.IsEmpty ? qw : qw.Slice(32 * ib, 32), sigma2, mode, weight, 0);
            // IQ3_S skips only an all-zero sub-block (ggml's `!max`): max < the smallest subnormal
            if (!LatticeSubBlock(t, xb, weight, xval, waux, blockSigns, evenSigns: xxs, xxs ? GroupMaxEpsIQ3XXS : float.Epsilon, kMaxQ,
                    xxs ? 15 : 9, 0.2f, refitAll: !xxs, L, onGrid, out float scale)) { scales[ib] = 0; continue; }
            for (int k = 0; k < 8; k++)
            {
                int g = OnGrid(t, L.Slice(4 * k, 4));
                y[2 + 8 * ib + k] = (byte)g;
                if (!xxs) y[2 + 64 + ib] |= (byte)((g >> 8) << k);
            }
            if (xxs)
            {
                uint ss = (uint)(blockSigns[0] | blockSigns[1] << 7 | blockSigns[2] << 14 | blockSigns[3] << 21);
                BinaryPrimitives.WriteUInt32LittleEndian(y.Slice(2 + 64 + 4 * ib), ss);
            }
            else for (int k = 0; k < 4; k++) y[2 + 64 + 8 + 4 * ib + k] = blockSigns[k];
            scales[ib] = scale;
            maxScale = maxScale > scale ? maxScale : scale;
        }
        if (maxScale == 0)
        {
            if (xxs) y.Slice(2).Clear();
            return;
        }
        float id = SuperScale(y, maxScale, xxs ? 1.0125f : 1.033f);
        for (int ib = 0; ib < 8; ib++)
        {
            int l = ScaleNibble(id, scales[ib]);
            if (xxs)
            {
                var at = y.Slice(2 + 64 + 4 * ib);
                BinaryPrimitives.WriteUInt32LittleEndian(at, BinaryPrimitives.ReadUInt32LittleEndian(at) | (uint)l << 28);
            }
            else y[2 + 64 + 8 + 32 + ib / 2] |= (byte)(l << (4 * (ib % 2)));
        }
    }

    /// <summary>The grid index of levels that must be a grid point.</summary>
    static int OnGrid(LatticeTable t, ReadOnlySpan<sbyte> L)
    {
        int g = t.Map[t.Key(L)];
        if (g < 0) throw new InvalidOperationException("lattice quantizer left a group off the grid");
        return g;
    }

    /// <summary>The values in ascending order with their positions, for the IQ1 split search (a stable insertion sort;
    /// ggml calls qsort, whose order among equal values is not specified).</summary>
    static void SortWithIndex(ReadOnlySpan<float> xb, Span<float> sorted, Span<int> idx)
    {
        for (int j = 0; j < xb.Length; j++)
        {
            float v = xb[j];
            int at = j;
            while (at > 0 && sorted[at - 1] > v) { sorted[at] = sorted[at - 1]; idx[at] = idx[at - 1]; at--; }
            sorted[at] = v; idx[at] = j;
        }
    }

    /// <summary>Grid indices of the sub-block's groups of 8 (group 0's level values <paramref name="xxFirst"/>, the
    /// others' <paramref name="xxRest"/>), off-grid groups moved to their best neighbour; refits the scale if any was moved.</summary>
    static unsafe float IQ1Groups(LatticeTable t, ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, float scale, Span<sbyte> L,
        Span<int> index, float[] xxFirst, float[] xxRest)
    {
        bool allOnGrid = true;
        fixed (float* xp = xb) fixed (float* wp = weight) fixed (sbyte* lp = L)
            for (int k = 0; k < xb.Length / 8; k++)
            {
                int key = t.Key(L.Slice(8 * k, 8));
                int g = t.Map[key];
                if (g < 0)
                {
                    allOnGrid = false;
                    var xx = k == 0 ? xxFirst : xxRest;
                    g = t.BestNeighbourIQ1(key, xp + 8 * k, wp + 8 * k, scale, xx[0], xx[1], xx[2], lp + 8 * k);
                }
                index[k] = g;
            }
        if (!allOnGrid)
        {
            float sumqx = 0, sumq2 = 0;
            for (int k = 0; k < xb.Length / 8; k++)
            {
                var xx = k == 0 ? xxFirst : xxRest;
                for (int j = 0; j < 8; j++)
                {
                    float w = weight[8 * k + j];
                    float q = xx[(t.Points[8 * index[k] + j] - 1) / 2];
                    sumqx += w * q * xb[8 * k + j];
                    sumq2 += w * q * q;
                }
            }
            if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
        }
        return scale;
    }

    static readonly float[] IQ1Plus = [-1 + IQ1Delta, IQ1Delta, 1 + IQ1Delta];
    static readonly float[] IQ1Minus = [-1 - IQ1Delta, -IQ1Delta, 1 - IQ1Delta];

    /// <summary>IQ1_S: 8 sub-blocks of 32 with levels {−1, 0, 1} shifted by ±1/8, 4 groups of 8 on the 2048-point grid.
    /// The split of the sorted values into three levels is searched exhaustively. Layout d | qs[32] (index low bytes)
    /// | qh u16[8] (3 high index bits per group, 3-bit scale, shift sign in bit 15).</summary>
    static void IQ1SBlock(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode)
    {
        const int bs = 32;
        var t = LatticeTable.For(GgmlType.IQ1_S);
        Span<float> scales = stackalloc float[8];
        Span<sbyte> shifts = stackalloc sbyte[8];
        Span<float> weight = stackalloc float[bs], sorted = stackalloc float[bs], sumx = stackalloc float[bs + 1], sumw = stackalloc float[bs + 1];
        Span<int> idx = stackalloc int[bs];
        Span<sbyte> L = stackalloc sbyte[bs];
        Span<int> index = stackalloc int[4];
        ReadOnlySpan<float> xp = IQ1Plus, xm = IQ1Minus;
        y.Clear();
        float maxScale = 0;
        float sigma2 = 2 * SumSquares(x) / QK;
        for (int ib = 0; ib < 8; ib++)
        {
            var xb = x.Slice(bs * ib, bs);
            LatticeWeights(xb, qw.Slice(bs * ib, bs), sigma2, mode, weight, 0);
            float max = MathF.Abs(xb[0]);
            for (int i = 1; i < bs; i++) max = MathF.Max(max, MathF.Abs(xb[i]));
            if (max < GroupMaxEpsIQ1S) { scales[ib] = 0; shifts[ib] = 1; continue; }
            SortWithIndex(xb, sorted, idx);
            sumx[0] = sumw[0] = 0;
            for (int j = 0; j < bs; j++)
            {
                int i = idx[j];
                sumx[j + 1] = sumx[j] + weight[i] * xb[i];
                sumw[j + 1] = sumw[j] + weight[i];
            }
            float bestScore = -float.MaxValue, scale = max;
            int besti1 = -1, besti2 = -1, bestShift = 0;
            for (int i1 = 0; i1 <= bs; i1++)
                for (int i2 = i1; i2 <= bs; i2++)
                {
                    float sumqx = (sumx[i1] - sumx[0]) * xp[0] + (sumx[i2] - sumx[i1]) * xp[1] + (sumx[bs] - sumx[i2]) * xp[2];
                    float sumq2 = (sumw[i1] - sumw[0]) * xp[0] * xp[0] + (sumw[i2] - sumw[i1]) * xp[1] * xp[1] + (sumw[bs] - sumw[i2]) * xp[2] * xp[2];
                    if (sumq2 > 0 && sumqx * sumqx > bestScore * sumq2)
                    {
                        scale = sumqx / sumq2; bestScore = scale * sumqx;
                        besti1 = i1; besti2 = i2; bestShift = 1;
                    }
                    sumqx = (sumx[i1] - sumx[0]) * xm[0] + (sumx[i2] - sumx[i1]) * xm[1] + (sumx[bs] - sumx[i2]) * xm[2];
                    sumq2 = (sumw[i1] - sumw[0]) * xm[0] * xm[0] + (sumw[i2] - sumw[i1]) * xm[1] * xm[1] + (sumw[bs] - sumw[i2]) * xm[2] * xm[2];
                    if (sumq2 > 0 && sumqx * sumqx > bestScore * sumq2)
                    {
                        scale = sumqx / sumq2; bestScore = scale * sumqx;
                        besti1 = i1; besti2 = i2; bestShift = -1;
                    }
                }
            if (besti1 < 0 || besti2 < 0 || bestShift == 0) { scales[ib] = 0; shifts[ib] = 1; continue; }
            for (int j = 0; j < besti1; j++) L[idx[j]] = 0;
            for (int j = besti1; j < besti2; j++) L[idx[j]] = 1;
            for (int j = besti2; j < bs; j++) L[idx[j]] = 2;
            if (scale < 0)
            {
                for (int j = 0; j < bs; j++) L[j] = (sbyte)(2 - L[j]);
                scale = -scale; bestShift = -bestShift;
            }
            var xx = bestShift == 1 ? IQ1Plus : IQ1Minus;
            scale = IQ1Groups(t, xb, weight, scale, L, index, xx, xx);
            int h = 0;
            for (int k = 0; k < 4; k++)
            {
                y[2 + 4 * ib + k] = (byte)index[k];
                h |= (index[k] >> 8) << (3 * k);
            }
            BinaryPrimitives.WriteUInt16LittleEndian(y.Slice(2 + 32 + 2 * ib), (ushort)h);
            scales[ib] = scale;
            shifts[ib] = (sbyte)bestShift;
            maxScale = maxScale > scale ? maxScale : scale;
        }
        if (maxScale == 0) return;
        float d = maxScale / 15;
        PutHalf(y, 0, d * 1.125f);
        float id = 1 / d;
        for (int ib = 0; ib < 8; ib++)
        {
            int l = Math.Max(0, Math.Min(7, NearestInt(0.5f * (id * scales[ib] - 1))));
            if (shifts[ib] == -1) l |= 8;
            var at = y.Slice(2 + 32 + 2 * ib);
            BinaryPrimitives.WriteUInt16LittleEndian(at, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(at) | l << 12));
        }
    }

    /// <summary>IQ1_M: 16 sub-blocks of 16, each half (group of 8) with its own shift sign; 3-bit scales, and the F16
    /// super-scale spread over the top nibbles of the four u16 scale words. Layout qs[32] | qh[16] (3 high index bits
    /// and the shift bit per group) | scales[8].</summary>
    static void IQ1MBlock(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode)
    {
        const int bs = 16;
        var t = LatticeTable.For(GgmlType.IQ1_M);
        Span<float> scales = stackalloc float[16];
        Span<sbyte> shifts = stackalloc sbyte[16];
        Span<float> weight = stackalloc float[bs], sorted = stackalloc float[bs];
        Span<int> idx = stackalloc int[bs];
        Span<sbyte> L = stackalloc sbyte[bs];
        Span<int> index = stackalloc int[2];
        Span<Vector128<float>> termX = stackalloc Vector128<float>[3 * bs], termQ = stackalloc Vector128<float>[3 * bs]; // [value j in sorted order × level]
        ReadOnlySpan<byte> masks = [0x00, 0x80, 0x08, 0x88];
        ReadOnlySpan<float> xp = IQ1Plus, xm = IQ1Minus;
        y.Clear();
        float maxScale = 0;
        float sigma2 = 2 * SumSquares(x) / QK;
        for (int ib = 0; ib < 16; ib++)
        {
            var xb = x.Slice(bs * ib, bs);
            LatticeWeights(xb, qw.IsEmpty ? qw : qw.Slice(bs * ib, bs), sigma2, mode, weight, 0);
            float max = MathF.Abs(xb[0]);
            for (int i = 1; i < bs; i++) max = MathF.Max(max, MathF.Abs(xb[i]));
            if (max < GroupMaxEpsIQ1M) { scales[ib] = 0; shifts[ib] = 0; continue; }
            SortWithIndex(xb, sorted, idx);
            float bestScore = -float.MaxValue, scale = max;
            int besti1 = -1, besti2 = -1, bestK = -1;
            // k: 0 (+, +), 1 (+, −), 2 (−, +), 3 (−, −): the shift signs of the two halves, one lane each. A split's
            // sums are accumulated value by value in sorted order, as ggml does (the order fixes the float rounding);
            // splits with the same first boundary share the sums of the values below it, and those with the same
            // second boundary the level-1 run, so each is computed once (the same additions in the same order).
            for (int j = 0; j < bs; j++)
            {
                int i = idx[j];
                for (int level = 0; level < 3; level++)
                {
                    float w = weight[i], pv = xp[level], mv = xm[level];
                    float px = w * pv * xb[i], mx = w * mv * xb[i], pp = w * pv * pv, mm = w * mv * mv;
                    // the first half takes x_p in patterns 0 and 1, the second half in patterns 0 and 2
                    termX[3 * j + level] = i < bs / 2 ? Vector128.Create(px, px, mx, mx) : Vector128.Create(px, mx, px, mx);
                    termQ[3 * j + level] = i < bs / 2 ? Vector128.Create(pp, pp, mm, mm) : Vector128.Create(pp, mm, pp, mm);
                }
            }
            var belowX = Vector128<float>.Zero; var belowQ = Vector128<float>.Zero;
            for (int i1 = 0; i1 <= bs; i1++)
            {
                var curX = belowX; var curQ = belowQ;
                for (int i2 = i1; i2 <= bs; i2++)
                {
                    var sx = curX; var s2 = curQ;
                    for (int j = i2; j < bs; j++) { sx += termX[3 * j + 2]; s2 += termQ[3 * j + 2]; }
                    for (int k = 0; k < 4; k++)
                    {
                        float qx = sx.GetElement(k), q2 = s2.GetElement(k);
                        if (q2 > 0 && qx * qx > bestScore * q2)
                        {
                            scale = qx / q2; bestScore = scale * qx;
                            besti1 = i1; besti2 = i2; bestK = k;
                        }
                    }
                    if (i2 < bs) { curX += termX[3 * i2 + 1]; curQ += termQ[3 * i2 + 1]; }
                }
                if (i1 < bs) { belowX += termX[3 * i1]; belowQ += termQ[3 * i1]; }
            }
            if (besti1 < 0 || besti2 < 0 || bestK < 0) { scales[ib] = 0; shifts[ib] = 0; continue; }
            for (int j = 0; j < besti1; j++) L[idx[j]] = 0;
            for (int j = besti1; j < besti2; j++) L[idx[j]] = 1;
            for (int j = besti2; j < bs; j++) L[idx[j]] = 2;
            if (scale < 0)
            {
                for (int j = 0; j < bs; j++) L[j] = (sbyte)(2 - L[j]);
                scale = -scale;
                bestK = 3 - bestK;
            }
            scale = IQ1Groups(t, xb, weight, scale, L, index, IQ1HalfLevels(bestK, 0), IQ1HalfLevels(bestK, 1));
            y[2 * ib] = (byte)index[0];
            y[2 * ib + 1] = (byte)index[1];
            y[32 + ib] = (byte)((index[0] >> 8) | ((index[1] >> 8) << 4));
            scales[ib] = scale;
            shifts[ib] = (sbyte)bestK;
            maxScale = maxScale > scale ? maxScale : scale;
        }
        if (maxScale == 0) return;
        Span<ushort> sc = stackalloc ushort[4];
        float d = maxScale / 15;
        float id = 1 / d;
        float sumqxF = 0, sumq2F = 0;
        for (int ib = 0; ib < 16; ib++)
        {
            int l = Math.Max(0, Math.Min(7, NearestInt(0.5f * (id * scales[ib] - 1))));
            sc[ib / 4] |= (ushort)(l << (3 * (ib % 4)));
            y[32 + ib] |= masks[shifts[ib]];
            var xb = x.Slice(bs * ib, bs);
            LatticeWeights(xb, qw.IsEmpty ? qw : qw.Slice(bs * ib, bs), sigma2, mode, weight, 0);
            for (int k = 0; k < 2; k++)
            {
                var xx = IQ1HalfLevels(shifts[ib], k);
                int g = y[2 * ib + k] + ((y[32 + ib] << (8 - 4 * k)) & 0x700);
                for (int j = 0; j < 8; j++)
                {
                    float w = weight[8 * k + j];
                    float q = xx[(t.Points[8 * g + j] - 1) / 2] * (2 * l + 1);
                    sumqxF += w * q * xb[8 * k + j];
                    sumq2F += w * q * q;
                }
            }
        }
        if (sumq2F > 0) d = sumqxF / sumq2F;
        ushort dh = Fp16.FromSingle(d * 1.1125f);
        sc[0] |= (ushort)((dh & 0x000f) << 12);
        sc[1] |= (ushort)((dh & 0x00f0) << 8);
        sc[2] |= (ushort)((dh & 0x0f00) << 4);
        sc[3] |= (ushort)(dh & 0xf000);
        for (int i = 0; i < 4; i++) BinaryPrimitives.WriteUInt16LittleEndian(y.Slice(48 + 2 * i), sc[i]);
    }

    /// <summary>The level values of half <paramref name="k"/> of an IQ1_M sub-block under shift pattern <paramref name="shift"/>.</summary>
    static float[] IQ1HalfLevels(int shift, int k) => (k == 0 ? shift < 2 : shift % 2 == 0) ? IQ1Plus : IQ1Minus;
}
