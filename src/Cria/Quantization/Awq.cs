using System.Numerics;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Quantization;

/// <summary>Settings of <see cref="Awq.Compute"/>.</summary>
public sealed record AwqOptions : CalibrationOptions
{
    /// <summary>The exponents α tried for s = mean|x|^α (0 = no scaling, so the search can only improve on round-to-nearest).</summary>
    public float[] AlphaGrid { get; init; } = [0f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1f];
}

/// <summary>What the search chose for one group of matrices sharing an RMSNorm.</summary>
public readonly record struct AwqGroup(string Norm, float Alpha, double ErrorPlain, double ErrorScaled);

public sealed class AwqResult
{
    /// <summary>Replacement values per tensor name (scaled norms and matrices), for <see cref="QuantizeOptions.Override"/>.</summary>
    public Dictionary<string, float[]> Overrides { get; } = new(StringComparer.Ordinal);
    /// <summary>The imatrix with the scaled matrices' entries divided by s² (their inputs are x / s), when one was given.</summary>
    public Dictionary<string, float[]>? Imatrix { get; set; }
    public List<AwqGroup> Groups { get; } = new();
}

/// <summary>
/// Activation-aware weight scaling in the spirit of AWQ (Lin et al. 2023): the input channels that carry large
/// activations matter most, so before quantizing, each input column j of the matrices that read an RMSNorm's output
/// (attn_q/k/v after attn_norm, ffn_gate/up after ffn_norm) is multiplied by s_j = mean|x_j|^α (normalised by
/// √(max s · min s)) and the norm weight is divided by s_j — the float model computes exactly the same function, but
/// the quantization grid now spends its precision on the important channels. α is grid-searched per group to minimise
/// the output error of the quantized matrices on the calibration activations,
/// Σ_rows ‖(Ŵ − W) x‖² = Σ_o d_oᵀ G d_o with G = Σ x xᵀ collected once; α = 0 is plain round-to-nearest, so the
/// chosen scaling is never worse on the calibration data. The output file stays a plain llama GGUF. (AWQ also scales
/// v→o and up→down; those have no norm to fold into and are left alone here.)
/// </summary>
public static class Awq
{
    static readonly string[] AttnMats = ["attn_q", "attn_k", "attn_v"];
    static readonly string[] FfnMats = ["ffn_gate", "ffn_up"];

    /// <summary>Calibration statistics: per layer, G = Σ x xᵀ and Σ|x| of the attn_norm and ffn_norm outputs.</summary>
    public sealed class Stats
    {
        internal readonly Dictionary<string, (float[] Gram, double[] AbsSum, long Count)> Gram;
        internal Stats(Dictionary<string, (float[] Gram, double[] AbsSum, long Count)> g) => Gram = g;
        public int Chunks { get; init; }
    }

    /// <summary>Runs the calibration text (chunks of <see cref="AwqOptions.ContextSize"/>, BOS first) through the model.</summary>
    public static Stats Collect(LlamaModel model, string calibrationText, AwqOptions a)
    {
        var obs = new GramObserver(model.Config.Dim);
        int n = Calibration.Run(model, calibrationText, a, obs);
        return new Stats(obs.Gram) { Chunks = n };
    }

    public static AwqResult Compute(string modelPath, string calibrationText, QuantizeOptions q, AwqOptions a, Action<string>? log = null)
    {
        using var model = LlamaModel.Open(modelPath);
        var stats = Collect(model, calibrationText, a);
        log?.Invoke($"awq: {stats.Chunks} calibration chunks of {a.ContextSize} tokens");
        return Search(model, stats, q, a, log);
    }

    /// <summary>Grid-searches α per norm group for the types <paramref name="q"/> gives each matrix.</summary>
    public static AwqResult Search(LlamaModel model, Stats stats, QuantizeOptions q, AwqOptions a, Action<string>? log = null)
    {
        var f = model.File;
        var plan = ModelQuantizer.PlanTypes(f, q, out _).ToDictionary(p => p.Tensor.Name, p => p.To, StringComparer.Ordinal);
        int threads = a.Threads > 0 ? a.Threads : Environment.ProcessorCount;
        int dim = model.Config.Dim;

        var result = new AwqResult();
        if (q.Imatrix != null) result.Imatrix = new Dictionary<string, float[]>(q.Imatrix, StringComparer.Ordinal);
        for (int l = 0; l < model.Config.LayerCount; l++)
        {
            foreach (var (norm, mats, observed) in new[] { ("attn_norm", AttnMats, "attn_q"), ("ffn_norm", FfnMats, "ffn_gate") })
            {
                string p = $"blk.{l}.";
                if (!stats.Gram.TryGetValue(p + observed + ".weight", out var g)) continue;
                var (gram, absSum, count) = g;
                var meanAbs = new float[dim];
                for (int j = 0; j < dim; j++) meanAbs[j] = (float)(absSum[j] / Math.Max(1, count));
                var names = mats.Select(m => p + m + ".weight").ToArray();
                var weights = names.Select(n => ReadMatrix(f, n)).ToArray();
                var types = names.Select(n => plan[n]).ToArray();
                if (types.All(t => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)) continue;

                float bestAlpha = 0; double bestErr = double.PositiveInfinity, plainErr = 0;
                float[]? bestS = null;
                foreach (float alpha in a.AlphaGrid)
                {
                    var s = Scales(meanAbs, alpha);
                    double err = 0;
                    for (int m = 0; m < names.Length; m++)
                        err += OutputError(weights[m].Data, weights[m].Rows, dim, s, types[m], ImatrixFor(q.Imatrix, names[m], s), gram, threads, q.ImatrixCandidates);
                    if (alpha == 0) plainErr = err;
                    if (err < bestErr) { bestErr = err; bestAlpha = alpha; bestS = s; }
                }
                result.Groups.Add(new AwqGroup(p + norm + ".weight", bestAlpha, plainErr, bestErr));
                log?.Invoke($"awq: {p + norm,-16} α = {bestAlpha:F1}  output error {plainErr:E3} → {bestErr:E3} ({(plainErr > 0 ? bestErr / plainErr : 1):P1})");
                if (bestAlpha == 0 || bestS == null) continue;
                var normW = ReadVector(f, p + norm + ".weight");
                for (int j = 0; j < dim; j++) normW[j] /= bestS[j];
                result.Overrides[p + norm + ".weight"] = normW;
                for (int m = 0; m < names.Length; m++)
                {
                    result.Overrides[names[m]] = ScaleColumns(weights[m].Data, weights[m].Rows, dim, bestS);
                    if (result.Imatrix != null && result.Imatrix.TryGetValue(names[m], out var im)) result.Imatrix[names[m]] = ImatrixFor(q.Imatrix, names[m], bestS)!;
                }
            }
        }
        return result;
    }

    /// <summary>s_j = mean|x_j|^α, normalised so that max·min = 1 (AWQ's s / √(s.max · s.min)).</summary>
    public static float[] Scales(float[] meanAbs, float alpha)
    {
        int n = meanAbs.Length;
        var s = new float[n];
        if (alpha == 0) { Array.Fill(s, 1f); return s; }
        float max = 0, min = float.MaxValue;
        for (int j = 0; j < n; j++)
        {
            s[j] = MathF.Pow(MathF.Max(meanAbs[j], 1e-6f), alpha);
            max = MathF.Max(max, s[j]); min = MathF.Min(min, s[j]);
        }
        float norm = MathF.Sqrt(max * min);
        for (int j = 0; j < n; j++) s[j] /= norm;
        return s;
    }

    static float[]? ImatrixFor(IReadOnlyDictionary<string, float[]>? im, string name, float[] s)
    {
        if (im == null || !im.TryGetValue(name, out var v) || v.Length != s.Length) return null;
        var r = new float[v.Length];
        for (int j = 0; j < r.Length; j++) r[j] = v[j] / (s[j] * s[j]);
        return r;
    }

    static float[] ScaleColumns(float[] w, int rows, int cols, float[] s)
    {
        var r = new float[w.Length];                        // [rows, cols]
        for (int o = 0; o < rows; o++)
            for (int j = 0; j < cols; j++) r[o * cols + j] = w[o * cols + j] * s[j];
        return r;
    }

    /// <summary>Σ_o d_oᵀ G d_o with d_o = Q(W∘s)_o / s − W_o: the summed squared output error over the calibration tokens.</summary>
    static double OutputError(float[] w, int rows, int cols, float[] s, GgmlType type, float[]? qw, float[] gram, int threads, CalibratedCandidates candidates)
    {
        var scaled = ScaleColumns(w, rows, cols, s);
        var q = ModelQuantizer.QuantizeMatrix(type, scaled, cols, rows, qw, threads, default, candidates);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        double total = 0;
        object gate = new();
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = threads }, () => (new float[cols], 0.0), (o, _, st) =>
        {
            var (d, acc) = st;
            Dequantize.Row(type, q.AsSpan(o * rowBytes, rowBytes), d);
            for (int j = 0; j < cols; j++) d[j] = d[j] / s[j] - w[o * cols + j];
            // dᵀ G d
            double e = 0;
            for (int i = 0; i < cols; i++) e += d[i] * Dot(gram.AsSpan(i * cols, cols), d);
            return (d, acc + e);
        }, st => { lock (gate) total += st.Item2; });
        return total;
    }

    static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, i = 0;
        var acc = Vector<float>.Zero;
        for (; i <= n - Vector<float>.Count; i += Vector<float>.Count) acc += new Vector<float>(a.Slice(i)) * new Vector<float>(b.Slice(i));
        float r = Vector.Sum(acc);
        for (; i < n; i++) r += a[i] * b[i];
        return r;
    }

    static (float[] Data, int Rows) ReadMatrix(GgufFile f, string name)
    {
        var t = f.GetTensor(name);
        var v = new float[t.ElementCount];                   // [rows, cols]
        Dequantize.Row(t.Type, f.TensorData(t), v);
        return (v, (int)t.RowCount);
    }

    static float[] ReadVector(GgufFile f, string name)
    {
        var t = f.GetTensor(name);
        var v = new float[t.ElementCount];
        Dequantize.Row(t.Type, f.TensorData(t), v);
        return v;
    }

    /// <summary>Accumulates G = Σ x xᵀ ([dim, dim]) and Σ|x| ([dim]) of the inputs of attn_q and ffn_gate per layer.</summary>
    sealed class GramObserver(int dim) : IMatMulObserver
    {
        public readonly Dictionary<string, (float[] Gram, double[] AbsSum, long Count)> Gram = new(StringComparer.Ordinal);

        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (cols != dim || !(weightName.EndsWith(".attn_q.weight", StringComparison.Ordinal) || weightName.EndsWith(".ffn_gate.weight", StringComparison.Ordinal))) return;
            if (!Gram.TryGetValue(weightName, out var g)) g = (new float[dim * dim], new double[dim], 0);
            var (gram, abs, count) = g;
            var xs = x.ToArray();                            // [rows, dim]
            Parallel.For(0, dim, i =>
            {
                var gi = gram.AsSpan(i * dim, dim);
                for (int r = 0; r < rows; r++)
                {
                    float xi = xs[r * dim + i];
                    if (xi == 0) continue;
                    var xr = xs.AsSpan(r * dim, dim);
                    var vxi = new Vector<float>(xi);
                    int j = 0;
                    for (; j <= dim - Vector<float>.Count; j += Vector<float>.Count)
                        (new Vector<float>(gi.Slice(j)) + vxi * new Vector<float>(xr.Slice(j))).CopyTo(gi.Slice(j));
                    for (; j < dim; j++) gi[j] += xi * xr[j];
                }
            });
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < dim; j++) abs[j] += MathF.Abs(xs[r * dim + j]);
            Gram[weightName] = (gram, abs, count + rows);
        }
    }
}
