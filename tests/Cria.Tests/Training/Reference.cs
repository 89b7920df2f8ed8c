using Cria.Kernels;
using Cria.Training;

namespace Cria.Tests.Training;

/// <summary>Double-precision reference of every training op and of the whole Llama forward + mean cross-entropy.</summary>
static class Reference
{
    public static double[] RmsNorm(double[] x, double[] w, int d, double eps)
    {
        var y = new double[x.Length];
        for (int r = 0; r < x.Length / d; r++)
        {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += x[r * d + i] * x[r * d + i];
            double s = 1 / Math.Sqrt(ss / d + eps);
            for (int i = 0; i < d; i++) y[r * d + i] = x[r * d + i] * s * w[i];
        }
        return y;
    }

    /// <summary>y[n, o] = Σ_i x[n, i] · W[o, i] (W at offset wOff of a flat array).</summary>
    public static double[] MatMulNT(double[] x, int rows, int inDim, double[] w, long wOff, int outDim)
    {
        var y = new double[rows * outDim];
        for (int n = 0; n < rows; n++)
            for (int o = 0; o < outDim; o++)
            {
                double s = 0;
                for (int i = 0; i < inDim; i++) s += x[n * inDim + i] * w[wOff + (long)o * inDim + i];
                y[n * outDim + o] = s;
            }
        return y;
    }

    public static float[] RopeTable(int seqLen, int hd, float ropeBase)
    {
        var t = new float[seqLen * hd];
        for (int p = 0; p < seqLen; p++) Ops.RopeCache(p, hd, ropeBase, 1f, null, t.AsSpan(p * hd, hd));
        return t;
    }

    public static double[] Rope(double[] x, int heads, int hd, int seqLen, float[] table)
    {
        var y = (double[])x.Clone();
        int width = heads * hd;
        for (int r = 0; r < x.Length / width; r++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < hd; i += 2)
                {
                    double c = table[(r % seqLen) * hd + i], s = table[(r % seqLen) * hd + i + 1];
                    int j = r * width + h * hd + i;
                    y[j] = x[j] * c - x[j + 1] * s;
                    y[j + 1] = x[j] * s + x[j + 1] * c;
                }
        return y;
    }

    /// <summary>Causal attention, or with <paramref name="keys"/> bidirectional over each sequence's first keys[b] positions;
    /// causal from <paramref name="firstKey"/>(h, t) on when given (packed documents, S2-Attn groups).</summary>
    public static double[] Attention(double[] q, double[] k, double[] v, int B, int T, int H, int KV, int hd, int[]? keys = null,
        Func<int, int, int>? firstKey = null, int window = 0, int sinks = 0)
    {
        // LongGen's windowed layers: query t sees keys t2 < sinks and t2 > t − window, written out as a plain condition.
        bool Sees(int t, int t2) => window == 0 || t2 < sinks || t2 > t - window;
        var o = new double[B * T * H * hd];
        int g = H / KV;
        double scale = 1 / Math.Sqrt(hd);
        var p = new double[T];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int t = 0; t < T; t++)
                {
                    int last = keys != null ? keys[b] - 1 : t, first = firstKey?.Invoke(h, t) ?? 0;
                    double max = double.NegativeInfinity;
                    for (int t2 = first; t2 <= last; t2++)
                    {
                        if (!Sees(t, t2)) continue;
                        double s = 0;
                        for (int i = 0; i < hd; i++) s += q[(b * T + t) * H * hd + h * hd + i] * k[(b * T + t2) * KV * hd + h / g * hd + i];
                        p[t2] = s * scale;
                        max = Math.Max(max, p[t2]);
                    }
                    double sum = 0;
                    for (int t2 = first; t2 <= last; t2++) { p[t2] = Sees(t, t2) ? Math.Exp(p[t2] - max) : 0; sum += p[t2]; }
                    for (int t2 = first; t2 <= last; t2++)
                        for (int i = 0; i < hd; i++) o[(b * T + t) * H * hd + h * hd + i] += p[t2] / sum * v[(b * T + t2) * KV * hd + h / g * hd + i];
                }
        return o;
    }

    public static double[] SwiGlu(double[] g, double[] u)
    {
        var h = new double[g.Length];
        for (int i = 0; i < g.Length; i++) h[i] = g[i] / (1 + Math.Exp(-g[i])) * u[i];
        return h;
    }

    public static double CrossEntropy(double[] logits, int[] targets, int V)
    {
        double total = 0;
        for (int r = 0; r < targets.Length; r++)
        {
            double max = double.NegativeInfinity;
            for (int i = 0; i < V; i++) max = Math.Max(max, logits[r * V + i]);
            double sum = 0;
            for (int i = 0; i < V; i++) sum += Math.Exp(logits[r * V + i] - max);
            total += Math.Log(sum) + max - logits[r * V + targets[r]];
        }
        return total / targets.Length;
    }

    static double[] Slice(double[] p, long off, int n) => p.AsSpan((int)off, n).ToArray();

    static double[] Add(double[] a, double[] b) { var c = new double[a.Length]; for (int i = 0; i < a.Length; i++) c[i] = a[i] + b[i]; return c; }

    /// <summary>The logits of the Llama forward over B sequences of T tokens, in double.</summary>
    public static double[] Logits(ParameterLayout lay, double[] p, int[] tokens, int B, int T) =>
        MatMulNT(Hidden(lay, p, tokens, B, T), B * T, lay.Shape.Dim, p, lay.Output, lay.Shape.VocabSize);

    /// <summary>The final-norm hidden states [B·T, D] in double; <paramref name="keys"/> as in <see cref="Attention"/>.
    /// With <paramref name="sk"/>: the SwiftKV model whose new tensors are in <paramref name="sp"/> — from layer L on,
    /// keys and values from h = swiftkv_norm(x_L) through each AcrossKV owner's projections, queries from attn_q_swiftkv.</summary>
    /// <para>With <paramref name="extra"/>: a term added to every block projection's output, extra(layer, target, x)
    /// [N, out] for the projection's input x [N, in], targets in LoRA's order (q, k, v, o, gate, up, down; null: none).</para>
    public static double[] Hidden(ParameterLayout lay, double[] p, int[] tokens, int B, int T, int[]? keys = null,
        SwiftKvLayout? sk = null, double[]? sp = null, Func<int, int, double[], double[]?>? extra = null)
    {
        var s = lay.Shape;
        int N = B * T, D = s.Dim, KV = s.KvDim, F = s.FfnDim, hd = s.HeadDim;
        var table = RopeTable(T, hd, s.RopeBase);
        var x = new double[N * D];
        for (int n = 0; n < N; n++) for (int i = 0; i < D; i++) x[n * D + i] = p[lay.TokenEmbedding + (long)tokens[n] * D + i];
        double[][] swiftK = [], swiftV = [];
        for (int l = 0; l < lay.Blocks.Length; l++)
        {
            var o = lay.Blocks[l];
            var xn = RmsNorm(x, Slice(p, o.AttnNorm, D), D, s.RmsEps);
            double[] q, k, v;
            if (sk != null && l >= sk.KvLayers)
            {
                if (l == sk.KvLayers)
                {
                    var hs = RmsNorm(x, Slice(sp!, sk.Norm, D), D, s.RmsEps);
                    swiftK = sk.Wk.Select(w => Rope(MatMulNT(hs, N, D, sp!, w, KV), s.KvHeads, hd, T, table)).ToArray();
                    swiftV = sk.Wv.Select(w => MatMulNT(hs, N, D, sp!, w, KV)).ToArray();
                }
                q = Rope(MatMulNT(xn, N, D, sp!, sk.Wq[l - sk.KvLayers], D), s.Heads, hd, T, table);
                k = swiftK[sk.OwnerOf(l)]; v = swiftV[sk.OwnerOf(l)];
            }
            else
            {
                q = Rope(Project(l, 0, xn, D, o.Wq, D), s.Heads, hd, T, table);
                k = Rope(Project(l, 1, xn, D, o.Wk, KV), s.KvHeads, hd, T, table);
                v = Project(l, 2, xn, D, o.Wv, KV);
            }
            var att = Attention(q, k, v, B, T, s.Heads, s.KvHeads, hd, keys, window: s.WindowOf(l), sinks: s.WindowSinks);
            x = Add(x, Project(l, 3, att, D, o.Wo, D));
            xn = RmsNorm(x, Slice(p, o.FfnNorm, D), D, s.RmsEps);
            var h = SwiGlu(Project(l, 4, xn, D, o.WGate, F), Project(l, 5, xn, D, o.WUp, F));
            x = Add(x, Project(l, 6, h, F, o.WDown, D));
        }
        return RmsNorm(x, Slice(p, lay.OutputNorm, D), D, s.RmsEps);

        double[] Project(int l, int target, double[] input, int inDim, long w, int outDim)
        {
            var y = MatMulNT(input, N, inDim, p, w, outDim);
            return extra?.Invoke(l, target, input) is { } e ? Add(y, e) : y;
        }
    }

    /// <summary>The base parameters <paramref name="p"/> with every adapter of <paramref name="lora"/> merged in double:
    /// W += (α/r)·B·A, adapters read from <paramref name="ad"/> (LoRA parameter layout).</summary>
    public static double[] MergeLora(ParameterLayout lay, LoraLayout lora, double[] p, double[] ad)
    {
        var merged = (double[])p.Clone();
        int r = lora.Options.Rank;
        foreach (var pair in lora.Pairs)
        {
            if (pair is not { } q) continue;
            var w = lay.Tensors.Single(t => t.Name == q.BaseName);
            for (int o = 0; o < q.Out; o++)
                for (int i = 0; i < q.In; i++)
                {
                    double d = 0;
                    for (int j = 0; j < r; j++) d += ad[q.B + (long)o * r + j] * ad[q.A + (long)j * q.In + i];
                    merged[w.Offset + (long)o * q.In + i] += lora.Options.Scale * d;
                }
        }
        return merged;
    }

    public static double Loss(ParameterLayout lay, double[] p, int[] tokens, int[] targets, int B, int T) =>
        CrossEntropy(Logits(lay, p, tokens, B, T), targets, lay.Shape.VocabSize);
}
