using Cria.Training;

namespace Cria.Tests.Training;

/// <summary>
/// Activation Beacon as the paper runs it, in double and one window at a time (no key space, no padding, nothing shared
/// with the trainer's <see cref="BeaconPlan"/>): a memory of beacon keys and values per layer, each key rotated by its
/// place in the memory; every window's raw tokens read the memory and themselves causally; its beacons (own embedding,
/// own attention projections) read the memory, the first (j+1)·α raw tokens and the beacons up to themselves; then the
/// beacons join the memory and the raw tokens are dropped.
/// </summary>
static class BeaconReference
{
    /// <summary>Logits [T, V] of the raw tokens of one sequence.</summary>
    public static double[] Logits(ParameterLayout lay, double[] p, BeaconLayout bl, double[] bp, int[] tokens, int window, int[] ratios)
    {
        var s = lay.Shape;
        int T = tokens.Length, D = s.Dim, KV = s.KvDim, F = s.FfnDim, hd = s.HeadDim, V = s.VocabSize, L = s.Layers;
        var memK = Enumerable.Range(0, L).Select(_ => new List<double[]>()).ToArray(); // [layer][i] key of beacon i (rotated by i)
        var memV = Enumerable.Range(0, L).Select(_ => new List<double[]>()).ToArray();
        var logits = new double[T * V];
        for (int c = 0, first = 0; first < T; c++, first += window)
        {
            int n = Math.Min(window, T - first), a = ratios[c], k = a == 0 ? 0 : window / a, rows = n + k, M = memK[0].Count;
            bool Beacon(int i) => i >= n;
            int Pos(int i) => i < n ? M + i : M + window + (i - n);
            bool Sees(int i, int j) => i < n ? j < n && j <= i                                  // raw: causal over raw
                                             : j < n ? j < (i - n + 1) * a : j <= i;            // beacon: step-expansion, then beacons ≤ itself
            var x = new double[rows * D];
            for (int i = 0; i < rows; i++)
                for (int d = 0; d < D; d++) x[i * D + d] = Beacon(i) ? bp[bl.Embed + d] : p[lay.TokenEmbedding + (long)tokens[first + i] * D + d];
            var keysPre = new double[L][];
            var values = new double[L][];
            for (int l = 0; l < L; l++)
            {
                var o = lay.Blocks[l];
                var xn = Reference.RmsNorm(x, p.AsSpan((int)o.AttnNorm, D).ToArray(), D, s.RmsEps);
                double[] Project(double[] src, long baseW, long beaconW, int outDim, int inDim)
                {
                    var y = new double[rows * outDim];
                    for (int i = 0; i < rows; i++)
                    {
                        var w = Beacon(i) ? bp : p; long off = Beacon(i) ? beaconW : baseW;
                        for (int r = 0; r < outDim; r++)
                        {
                            double acc = 0;
                            for (int j = 0; j < inDim; j++) acc += src[i * inDim + j] * w[off + (long)r * inDim + j];
                            y[i * outDim + r] = acc;
                        }
                    }
                    return y;
                }
                var q = Project(xn, o.Wq, bl.Wq[l], D, D);
                var kk = Project(xn, o.Wk, bl.Wk[l], KV, D);
                var v = Project(xn, o.Wv, bl.Wv[l], KV, D);
                keysPre[l] = (double[])kk.Clone(); values[l] = v;
                for (int i = 0; i < rows; i++) { Rotate(q, i * D, s.Heads, hd, Pos(i), s.RopeBase); Rotate(kk, i * KV, s.KvHeads, hd, Pos(i), s.RopeBase); }
                int group = s.Heads / s.KvHeads;
                var att = new double[rows * D];
                for (int i = 0; i < rows; i++)
                    for (int h = 0; h < s.Heads; h++)
                    {
                        int g = h / group;
                        var keys = new List<(double[] K, int KOff, double[] V, int VOff)>();
                        for (int m = 0; m < M; m++) keys.Add((memK[l][m], g * hd, memV[l][m], g * hd));
                        for (int j = 0; j < rows; j++) if (Sees(i, j)) keys.Add((kk, j * KV + g * hd, v, j * KV + g * hd));
                        var sc = keys.Select(e => { double z = 0; for (int d = 0; d < hd; d++) z += q[i * D + h * hd + d] * e.K[e.KOff + d]; return z / Math.Sqrt(hd); }).ToArray();
                        double max = sc.Max(), sum = sc.Sum(z => Math.Exp(z - max));
                        for (int e = 0; e < keys.Count; e++)
                        {
                            double pr = Math.Exp(sc[e] - max) / sum;
                            for (int d = 0; d < hd; d++) att[i * D + h * hd + d] += pr * keys[e].V[keys[e].VOff + d];
                        }
                    }
                var ao = Project(att, o.Wo, bl.Wo[l], D, D);
                for (int i = 0; i < x.Length; i++) x[i] += ao[i];
                xn = Reference.RmsNorm(x, p.AsSpan((int)o.FfnNorm, D).ToArray(), D, s.RmsEps);
                // The feed-forward: shared, or with the "mlp" beacon parameters the beacons' own up and down (gate shared).
                var up = bl.Up != null ? Project(xn, o.WUp, bl.Up[l], F, D) : Reference.MatMulNT(xn, rows, D, p, o.WUp, F);
                var hh = Reference.SwiGlu(Reference.MatMulNT(xn, rows, D, p, o.WGate, F), up);
                var dn = bl.Down != null ? Project(hh, o.WDown, bl.Down[l], D, F) : Reference.MatMulNT(hh, rows, F, p, o.WDown, D);
                for (int i = 0; i < x.Length; i++) x[i] += dn[i];
            }
            var xf = Reference.RmsNorm(x, p.AsSpan((int)lay.OutputNorm, D).ToArray(), D, s.RmsEps);
            var z = Reference.MatMulNT(xf, rows, D, p, lay.Output, V);
            Array.Copy(z, 0, logits, first * V, n * V);
            // The window's beacons join the memory, their keys rotated by their place in it; the raw tokens are gone.
            for (int l = 0; l < L; l++)
                for (int j = 0; j < k; j++)
                {
                    var key = keysPre[l].AsSpan((n + j) * KV, KV).ToArray();
                    Rotate(key, 0, s.KvHeads, hd, M + j, s.RopeBase);
                    memK[l].Add(key); memV[l].Add(values[l].AsSpan((n + j) * KV, KV).ToArray());
                }
        }
        return logits;
    }

    /// <summary>RoPE of adjacent pairs at position <paramref name="pos"/>, angles in double.</summary>
    static void Rotate(double[] x, int off, int heads, int hd, int pos, float theta)
    {
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < hd; i += 2)
            {
                double ang = pos * Math.Pow(theta, -(double)i / hd), c = Math.Cos(ang), sn = Math.Sin(ang);
                int j = off + h * hd + i;
                double x0 = x[j], x1 = x[j + 1];
                x[j] = x0 * c - x1 * sn; x[j + 1] = x0 * sn + x1 * c;
            }
    }

    /// <summary>Mean cross-entropy of the raw tokens after the first window against their targets.</summary>
    public static double Loss(double[] logits, int[] targets, int window, int V)
    {
        double total = 0; int n = 0;
        for (int t = window; t < targets.Length; t++)
        {
            double max = double.NegativeInfinity;
            for (int i = 0; i < V; i++) max = Math.Max(max, logits[t * V + i]);
            double sum = 0;
            for (int i = 0; i < V; i++) sum += Math.Exp(logits[t * V + i] - max);
            total += Math.Log(sum) + max - logits[t * V + targets[t]]; n++;
        }
        return total / n;
    }
}
