using System.Buffers;
using System.Numerics;

namespace Cria.Tensors;

/// <summary>How <see cref="Quantize.RowGptq"/> chooses each block's scales (and mins) from the error-updated weights.</summary>
public enum GptqScales
{
    /// <summary>ggml's reference quantizer (<c>quantize_row_*_ref</c>) on the updated block.</summary>
    Reference,
    /// <summary>ggml's importance-weighted <c>*_impl</c> quantizer on the updated block, with diag(H) as importance.</summary>
    Weighted,
}

/// <summary>
/// What GPTQ needs from one input Gram matrix H = Σ_t x_t x_tᵀ (shared by every matrix that reads the same input):
/// the upper Cholesky factor U of (H + λI)⁻¹, λ = <c>damp</c> × mean diag(H) (Frantar et al. 2022). Row i of U is
/// how the rounding error of column i is pushed onto the columns after it.
/// </summary>
public sealed class GptqFactor
{
    /// <summary>Input columns (the weight row length).</summary>
    public int Cols { get; }
    /// <summary>[cols, cols] row-major upper-triangular U with Uᵀ U = (H + λI)⁻¹.</summary>
    internal readonly float[] U;
    /// <summary>[cols] diag(H) (dead columns 1), the importance for <see cref="GptqScales.Weighted"/>.</summary>
    internal readonly float[] Diag;

    GptqFactor(int cols, float[] u, float[] diag) { Cols = cols; U = u; Diag = diag; }

    /// <summary>Factors <paramref name="gram"/> ([cols, cols], symmetric, e.g. the mean of x xᵀ over the calibration
    /// tokens). Columns that never saw a non-zero input get H_ii = 1 (GPTQ's dead columns); then λ = damp · mean diag
    /// is added. Throws <see cref="CriaException"/> when H + λI is not positive definite (NaN or a broken Gram).</summary>
    public static GptqFactor FromGram(ReadOnlySpan<float> gram, int cols, double damp = 0.01)
    {
        if (cols <= 0 || gram.Length != (long)cols * cols) throw new CriaException($"GPTQ: a Gram matrix of {gram.Length} values is not {cols} × {cols}");
        if (!(damp > 0)) throw new CriaException($"GPTQ: dampening must be positive, got {damp}");
        int n = cols;
        for (int i = 0; i < gram.Length; i++)
            if (!float.IsFinite(gram[i])) throw new CriaException($"GPTQ: the Gram matrix has a non-finite value at ({i / n}, {i % n}); it is not positive definite");
        var h = new double[n * n];                           // [n, n] H, then its lower Cholesky factor L
        var diag = new float[n];
        double mean = 0;
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < n; j++) h[i * n + j] = gram[i * n + j];
            if (!(h[i * n + i] > 0)) { h[i * n + i] = 1; for (int j = 0; j < n; j++) if (j != i) { h[i * n + j] = 0; h[j * n + i] = 0; } }
        }
        for (int i = 0; i < n; i++) { mean += h[i * n + i]; diag[i] = (float)h[i * n + i]; }
        double lambda = damp * mean / n;
        for (int i = 0; i < n; i++) h[i * n + i] += lambda;

        if (!CholeskyLower(h, n)) throw new CriaException("GPTQ: the damped Gram matrix is not positive definite (NaN or inconsistent calibration statistics)");
        // X = L⁻¹ (lower), stored transposed: xt[j, k] = X[k, j], so (L⁻ᵀ L⁻¹)[i, j] = Σ_k X[k,i] X[k,j] reads rows.
        var xt = new double[n * n];                          // [n, n]
        for (int j = 0; j < n; j++)
        {
            xt[j * n + j] = 1 / h[j * n + j];
            for (int i = j + 1; i < n; i++)
            {
                double s = 0;
                for (int k = j; k < i; k++) s += h[i * n + k] * xt[j * n + k];
                xt[j * n + i] = -s / h[i * n + i];
            }
        }
        var hinv = new double[n * n];                        // [n, n] (H + λI)⁻¹
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int k = i; k < n; k++) s += xt[i * n + k] * xt[j * n + k];
                hinv[i * n + j] = s; hinv[j * n + i] = s;
            }
        if (!CholeskyLower(hinv, n)) throw new CriaException("GPTQ: the inverse Gram matrix is not positive definite (ill-conditioned calibration statistics; raise the dampening)");
        var u = new float[n * n];                            // U = Lᵀ of chol(H⁻¹)
        for (int i = 0; i < n; i++)
            for (int j = i; j < n; j++) u[i * n + j] = (float)hinv[j * n + i];
        return new GptqFactor(n, u, diag);
    }

    /// <summary>In-place lower Cholesky a = L Lᵀ (the upper triangle is left as it was); false when not positive definite.</summary>
    internal static bool CholeskyLower(double[] a, int n)
    {
        for (int j = 0; j < n; j++)
        {
            double s = a[j * n + j];
            for (int k = 0; k < j; k++) s -= a[j * n + k] * a[j * n + k];
            if (!(s > 0)) return false;
            double d = Math.Sqrt(s);
            a[j * n + j] = d;
            for (int i = j + 1; i < n; i++)
            {
                double t = a[i * n + j];
                for (int k = 0; k < j; k++) t -= a[i * n + k] * a[j * n + k];
                a[i * n + j] = t / d;
            }
        }
        return true;
    }
}

public static partial class Quantize
{
    /// <summary>Whether <see cref="RowGptq"/> has an element layout for <paramref name="type"/>.</summary>
    public static bool GptqSupports(GgmlType type) => type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_NL or GgmlType.IQ4_XS;

    /// <summary>
    /// GPTQ (Frantar et al. 2022) for one weight row, in natural column order so that ggml's block scales still apply.
    /// At the start of each block (32 values, or a 256-value K super-block) the block's scales and mins are chosen from
    /// the current, error-updated weights by ggml's quantizer (<paramref name="scales"/>); then its columns are fixed one
    /// at a time — column i takes the nearest level of its (fixed) scale, and its error e_i = (w_i − ŵ_i) / U_ii is
    /// pushed onto every later column, w_k −= e_i U_ik — which minimises the output error Σ_t ((ŵ − w)·x_t)² greedily
    /// with the calibration Gram matrix behind <paramref name="f"/>. A column whose value no earlier column changed keeps
    /// the quantizer's own level, so with a diagonal H (no feedback) the bytes are exactly
    /// <see cref="Row(GgmlType, ReadOnlySpan{float}, Span{byte})"/>'s. The output is ordinary ggml blocks of
    /// <paramref name="type"/>. Types without a layout here take the plain reference path. IQ4_NL / IQ4_XS levels are
    /// not affine in the index: there a column takes the level nearest w_i / s_i, s_i its (sub-)block's scale.
    /// </summary>
    public static void RowGptq(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst, GptqFactor f, GptqScales scales = GptqScales.Reference)
    {
        int n = src.Length;
        if (f.Cols != n) throw new ArgumentException($"GPTQ factor has {f.Cols} columns for a row of {n}", nameof(f));
        if (!GptqSupports(type)) { Row(type, src, dst); return; }
        Dequantize.CheckRow(type, dst.Length, n, nameof(dst));
        int qk = GgmlTypeInfo.BlockSize(type), bs = GgmlTypeInfo.BlockBytes(type), levels = Levels(type);
        float[] w = ArrayPool<float>.Shared.Rent(n);         // [n] the row, updated by the error feedback
        Span<float> start = stackalloc float[QK];            // [qk] the block's values when its scales were chosen
        Span<float> deq = stackalloc float[QK];              // [qk] the quantizer's reconstruction
        Span<float> off = stackalloc float[QK];              // [qk] value of level 0
        Span<float> step = stackalloc float[QK];             // [qk] value(level 1) − value(level 0); IQ4: the scale
        bool iq4 = type is GgmlType.IQ4_NL or GgmlType.IQ4_XS;
        Span<byte> keep = stackalloc byte[bs];
        var u = f.U;
        try
        {
            src.CopyTo(w);
            for (int b = 0; b < n / qk; b++)
            {
                var xb = w.AsSpan(b * qk, qk);
                var blk = dst.Slice(b * bs, bs);
                if (scales == GptqScales.Weighted) RowWeighted(type, xb, blk, f.Diag.AsSpan(b * qk, qk), ImpWeighting.Ggml);
                else Row(type, xb, blk);
                xb.CopyTo(start);
                Dequantize.Row(type, blk, deq.Slice(0, qk));
                // Each level's value is affine in the level for a fixed scale: decode all-0 and all-1 blocks.
                blk.CopyTo(keep);
                for (int j = 0; j < qk; j++) SetLevel(type, blk, j, 0);
                Dequantize.Row(type, blk, off.Slice(0, qk));
                for (int j = 0; j < qk; j++) SetLevel(type, blk, j, iq4 ? IQ4One : 1);
                Dequantize.Row(type, blk, step.Slice(0, qk)); // IQ4: level +1, so the element's scale itself
                keep.CopyTo(blk);
                for (int j = 0; j < qk; j++)
                {
                    int i = b * qk + j;
                    float x = w[i], v = deq[j];
                    float a = step[j] - off[j];
                    if (iq4)
                    {
                        float s = step[j];
                        if (x != start[j] && s != 0 && float.IsFinite(x))
                        {
                            int q = BestIndexInt8(Dequantize.IQ4Levels, x / s);
                            SetLevel(type, blk, j, q);
                            v = s * Dequantize.IQ4Levels[q];
                        }
                    }
                    else if (x != start[j] && a != 0 && float.IsFinite(x))
                    {
                        int q = (int)MathF.Round((x - off[j]) / a);
                        q = Math.Clamp(q, 0, levels - 1);
                        SetLevel(type, blk, j, q);
                        v = off[j] + a * q;
                    }
                    float e = (x - v) / u[i * n + i];
                    if (e == 0 || i + 1 == n) continue;
                    Axpy(-e, u.AsSpan(i * n + i + 1, n - i - 1), w.AsSpan(i + 1, n - i - 1));
                }
            }
        }
        finally { ArrayPool<float>.Shared.Return(w); }
    }

    /// <summary>y += a·x.</summary>
    static void Axpy(float a, ReadOnlySpan<float> x, Span<float> y)
    {
        int n = x.Length, i = 0;
        var va = new Vector<float>(a);
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count) (new Vector<float>(y.Slice(i)) + va * new Vector<float>(x.Slice(i))).CopyTo(y.Slice(i));
        for (; i < n; i++) y[i] += a * x[i];
    }

    /// <summary>Number of levels per element (the unsigned range of the stored quant).</summary>
    static int Levels(GgmlType type) => type switch
    {
        GgmlType.Q2_K => 4,
        GgmlType.Q3_K => 8,
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q4_K => 16,
        GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q5_K => 32,
        GgmlType.Q6_K => 64,
        GgmlType.IQ4_NL or GgmlType.IQ4_XS => 16,
        _ => throw new ArgumentException($"no GPTQ layout for {type}", nameof(type)),
    };

    /// <summary>The IQ4 index whose level is +1 (<see cref="Dequantize.IQ4Levels"/>).</summary>
    const int IQ4One = 8;

    /// <summary>Stores level <paramref name="q"/> (0 … levels − 1) for element <paramref name="e"/> of one block, in the
    /// bit positions <see cref="Dequantize"/> documents for each layout.</summary>
    internal static void SetLevel(GgmlType type, Span<byte> b, int e, int q)
    {
        switch (type)
        {
            case GgmlType.Q4_0: Bits(b, 2 + (e & 15), e < 16 ? 0 : 4, 4, q); break;
            case GgmlType.Q4_1: Bits(b, 4 + (e & 15), e < 16 ? 0 : 4, 4, q); break;
            case GgmlType.Q5_0: Bits(b, 6 + (e & 15), e < 16 ? 0 : 4, 4, q & 15); Bits(b, 2 + (e >> 3), e & 7, 1, q >> 4); break;
            case GgmlType.Q5_1: Bits(b, 8 + (e & 15), e < 16 ? 0 : 4, 4, q & 15); Bits(b, 4 + (e >> 3), e & 7, 1, q >> 4); break;
            case GgmlType.Q2_K: Bits(b, 16 + 32 * (e >> 7) + (e & 31), 2 * ((e >> 5) & 3), 2, q); break;
            case GgmlType.Q3_K:
                Bits(b, 32 + 32 * (e >> 7) + (e & 31), 2 * ((e >> 5) & 3), 2, q & 3);
                Bits(b, e & 31, 4 * (e >> 7) + ((e >> 5) & 3), 1, q >> 2);
                break;
            case GgmlType.Q4_K: Bits(b, 16 + 32 * (e >> 6) + (e & 31), (e & 32) != 0 ? 4 : 0, 4, q); break;
            case GgmlType.Q5_K:
                Bits(b, 48 + 32 * (e >> 6) + (e & 31), (e & 32) != 0 ? 4 : 0, 4, q & 15);
                Bits(b, 16 + (e & 31), 2 * (e >> 6) + ((e >> 5) & 1), 1, q >> 4);
                break;
            case GgmlType.IQ4_NL: Bits(b, 2 + (e & 15), e < 16 ? 0 : 4, 4, q); break;
            case GgmlType.IQ4_XS: Bits(b, 8 + 16 * (e >> 5) + (e & 15), (e & 16) != 0 ? 4 : 0, 4, q); break;
            case GgmlType.Q6_K:
            {
                int h = e >> 7, g = (e >> 5) & 3, l = e & 31;
                Bits(b, 64 * h + l + 32 * (g & 1), 4 * (g >> 1), 4, q & 15);
                Bits(b, 128 + 32 * h + l, 2 * g, 2, q >> 4);
                break;
            }
            default: throw new ArgumentException($"no GPTQ layout for {type}", nameof(type));
        }
    }

    static void Bits(Span<byte> b, int index, int shift, int width, int value)
    {
        int mask = ((1 << width) - 1) << shift;
        b[index] = (byte)((b[index] & ~mask) | ((value << shift) & mask));
    }
}
