using System.Buffers;

namespace Cria.Tensors;

/// <summary>How the <c>*_impl</c> quantizers turn an importance vector into the weights of their scale searches.</summary>
internal enum ImpWeighting
{
    /// <summary>ggml's: importance × √(σ² + x²) (Q6_K: the importance alone).</summary>
    Ggml,
    /// <summary>The importance alone: the diagonal of the input Gram matrix, what the output error Σ_t (Δw · x_t)² weighs
    /// each column's squared error by when the columns are uncorrelated.</summary>
    Importance,
}

/// <summary>The encodings <see cref="Quantize.RowCalibrated"/> chooses among, block by block.</summary>
[Flags]
public enum CalibratedCandidates
{
    /// <summary>ggml's reference quantizer (plain round-to-nearest with its own unweighted scale search).</summary>
    Reference = 1,
    /// <summary>ggml's importance-weighted <c>*_impl</c> quantizer, exactly as llama-quantize --imatrix runs it.</summary>
    Ggml = 2,
    /// <summary>The same search with the importance alone as weights (no √(σ² + x²) factor).</summary>
    Importance = 4,
    All = Reference | Ggml | Importance,
    /// <summary>What <c>cria quantize --imatrix</c> uses: never worse than either of ggml's quantizers on the
    /// activation-weighted error (the importance-only candidate lowers that error further but not perplexity; see
    /// docs/quantization.md).</summary>
    Default = Reference | Ggml,
}

public static partial class Quantize
{
    /// <summary>
    /// Calibrated quantization of one row: every candidate encoding of <paramref name="candidates"/> is made for the
    /// whole row, and each block (32 values, or a 256-value super-block; blocks are encoded independently) keeps the
    /// candidate with the smallest activation-weighted error Σ_j importance_j · (x_j − x̂_j)², the diagonal-Hessian
    /// proxy of the matrix product's output error. Ties keep the earlier candidate (reference, ggml, importance), so
    /// with <see cref="CalibratedCandidates.Ggml"/> alone the bytes are llama-quantize --imatrix's. Types that ignore
    /// quant_weights in ggml (F32/F16/BF16/Q8_*) and an empty importance take the reference path.
    /// </summary>
    /// <remarks>With <paramref name="unbiasedRowScale"/>, the chosen row's float scales are then multiplied by one factor
    /// (<see cref="UnbiasRowScale"/>).</remarks>
    public static void RowCalibrated(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, ReadOnlySpan<float> importance,
        CalibratedCandidates candidates = CalibratedCandidates.Default, bool unbiasedRowScale = false)
    {
        if (importance.IsEmpty || type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q8_K)
        {
            Row(type, src, dst);
            return;
        }
        int n = src.Length;
        if (importance.Length != n) throw new ArgumentException($"importance has {importance.Length} values for a row of {n}", nameof(importance));
        if ((candidates & CalibratedCandidates.All) == 0) throw new ArgumentException("no candidate encoding selected", nameof(candidates));
        // IQ2_XXS, IQ2_XS and IQ1_S have no quantizer without an importance (ggml asserts quant_weights)
        if (NeedsImportance(type)) candidates = (candidates & ~CalibratedCandidates.Reference) is var c && c != 0 ? c : CalibratedCandidates.Ggml;
        Dequantize.CheckRow(type, dst.Length, n, nameof(dst));
        int qk = GgmlTypeInfo.BlockSize(type), bs = GgmlTypeInfo.BlockBytes(type), nb = n / qk;
        int rowBytes = nb * bs;
        byte[] buf = ArrayPool<byte>.Shared.Rent(rowBytes);
        double[] best = ArrayPool<double>.Shared.Rent(nb);
        Span<float> deq = stackalloc float[GgmlTypeInfo.QK_K];
        try
        {
            bool first = true;
            foreach (var c in (ReadOnlySpan<CalibratedCandidates>)[CalibratedCandidates.Reference, CalibratedCandidates.Ggml, CalibratedCandidates.Importance])
            {
                if ((candidates & c) == 0) continue;
                Span<byte> enc = first ? dst.Slice(0, rowBytes) : buf.AsSpan(0, rowBytes);
                switch (c)
                {
                    case CalibratedCandidates.Reference: Row(type, src, enc); break;
                    case CalibratedCandidates.Ggml: RowWeighted(type, src, enc, importance, ImpWeighting.Ggml); break;
                    default: RowWeighted(type, src, enc, importance, ImpWeighting.Importance); break;
                }
                for (int b = 0; b < nb; b++)
                {
                    var block = enc.Slice(b * bs, bs);
                    double e = BlockError(type, src.Slice(b * qk, qk), block, importance.Slice(b * qk, qk), deq.Slice(0, qk));
                    if (first) best[b] = e;
                    else if (e < best[b])
                    {
                        best[b] = e;
                        block.CopyTo(dst.Slice(b * bs, bs));
                    }
                }
                first = false;
            }
            if (unbiasedRowScale) UnbiasRowScale(type, src, dst.Slice(0, rowBytes), importance);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buf);
            ArrayPool<double>.Shared.Return(best);
        }
    }

    /// <summary>Σ_j importance_j · (x_j − x̂_j)² of an encoded row <paramref name="q"/> of <paramref name="type"/>
    /// against the values <paramref name="x"/> it encodes (an empty importance counts every column as 1).</summary>
    public static double WeightedError(GgmlType type, ReadOnlySpan<float> x, ReadOnlySpan<byte> q, ReadOnlySpan<float> importance)
    {
        int n = x.Length;
        if (!importance.IsEmpty && importance.Length != n) throw new ArgumentException($"importance has {importance.Length} values for a row of {n}", nameof(importance));
        Dequantize.CheckRow(type, q.Length, n, nameof(q));
        var y = ArrayPool<float>.Shared.Rent(n);
        try
        {
            Dequantize.Row(type, q, y.AsSpan(0, n));
            double e = 0;
            for (int j = 0; j < n; j++)
            {
                double d = x[j] - y[j];
                e += (importance.IsEmpty ? 1.0 : importance[j]) * d * d;
            }
            return e;
        }
        finally { ArrayPool<float>.Shared.Return(y); }
    }

    /// <summary>
    /// Removes the shrinkage of a least-squares-fitted quantizer from an encoded row: every float scale (and min) of
    /// its blocks is multiplied by c = Σ_j imp_j·x_j² / Σ_j imp_j·x_j·x̂_j, so that the importance-weighted regression
    /// coefficient of the decoded row on the original, Σ imp·x·x̂ / Σ imp·x², becomes 1 (up to the F16 rounding of
    /// the scales). Why: a scale fitted by weighted least squares to rounded levels (ggml's <c>*_impl</c> searches)
    /// gives x̂ ≈ b·x + noise with b &lt; 1 (regression dilution: the levels carry the rounding noise), so a whole matrix's
    /// output shrinks coherently by b, every row alike — attn_q·attn_k scale the attention logits by b², and so on through
    /// the layers. On the bundled model the importance-weighted Q2_K encoding has b ≈ 0.957 on attn_q/k and ffn_gate/up
    /// (plain round-to-nearest 0.982); one factor per row costs a little squared error and removes that bias (see
    /// docs/quantization.md, "Unbiased row scale"). Types whose values are not linear in stored float fields (the
    /// lattice i-quants) and rows with c outside [0.7, 1.4] are left as they are.
    /// </summary>
    public static void UnbiasRowScale(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, ReadOnlySpan<float> importance)
    {
        // byte offsets of the F16 fields that every decoded value of a block is linear in (ggml-common.h layouts)
        ReadOnlySpan<int> fields = type switch
        {
            GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.IQ4_NL or GgmlType.IQ4_XS => [0],   // d
            GgmlType.Q4_1 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q5_K => [0, 2],      // d, m / dmin
            GgmlType.Q2_K => [80, 82],                                                         // after scales[16], qs[64]: d, dmin
            GgmlType.Q3_K => [108],                                                            // after hmask[32], qs[64], scales[12]: d
            GgmlType.Q6_K => [208],                                                            // after ql[128], qh[64], scales[16]: d
            _ => [],
        };
        if (fields.IsEmpty) return;
        int n = src.Length;
        if (!importance.IsEmpty && importance.Length != n) throw new ArgumentException($"importance has {importance.Length} values for a row of {n}", nameof(importance));
        Dequantize.CheckRow(type, dst.Length, n, nameof(dst));
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, n), bs = GgmlTypeInfo.BlockBytes(type);
        var y = ArrayPool<float>.Shared.Rent(n);   // [n] decoded row
        try
        {
            Dequantize.Row(type, dst[..rowBytes], y.AsSpan(0, n));
            double xx = 0, xy = 0;
            for (int j = 0; j < n; j++)
            {
                double w = importance.IsEmpty ? 1.0 : importance[j];
                xx += w * src[j] * src[j];
                xy += w * src[j] * y[j];
            }
            if (!(xx > 0 && xy > 0)) return;
            double c = xx / xy;
            if (!(c >= 0.7 && c <= 1.4)) return;
            for (int o = 0; o < rowBytes; o += bs)
                foreach (int f in fields)
                {
                    float v = RoundHalf(dst, o + f) * (float)c;
                    if (MathF.Abs(v) <= 65504f) PutHalf(dst, o + f, v);   // the F16 maximum: a scale that would overflow stays as it was
                }
        }
        finally { ArrayPool<float>.Shared.Return(y); }
    }

    static double BlockError(GgmlType type, ReadOnlySpan<float> x, ReadOnlySpan<byte> block, ReadOnlySpan<float> importance, Span<float> deq)
    {
        Dequantize.Row(type, block, deq);
        double e = 0;
        for (int j = 0; j < x.Length; j++)
        {
            double d = x[j] - deq[j];
            e += importance[j] * d * d;
        }
        return e;
    }
}
