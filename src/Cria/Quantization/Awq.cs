using Cria.Kernels;
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
    /// <summary>AWQ's weight clipping search (llm-awq auto_clip) on every matrix AWQ quantizes, after the scaling.</summary>
    public bool Clip { get; init; }
    /// <summary>The clipping ratios r tried per group (|w| clamped to r · the group's max|w|); 1 = no clipping and is
    /// always tried first, so the search can only lower the calibration output error.</summary>
    public float[] ClipGrid { get; init; } = [1f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f, 0.65f, 0.6f, 0.55f, 0.5f];
    /// <summary>Values per clipping group along a row (each group gets its own ratio); must divide the block size of
    /// the types quantized (32 fits every ggml block type).</summary>
    public int ClipGroup { get; init; } = 32;
    /// <summary>Positions at the start of each calibration chunk left out of the statistics (the BOS position's
    /// activations are outliers that no scored token has).</summary>
    public int SkipPositions { get; init; }
    /// <summary>λ = ClipDamp × mean diag(G) added to G's diagonal for the clipping search (a plain weight-error penalty,
    /// as GPTQ's dampening); 0 = the calibration output error alone.</summary>
    public double ClipDamp { get; init; }
    /// <summary>Also AWQ's two scale points inside the block: attn_v rows ÷ s, attn_output columns × s (one s per KV
    /// channel, shared by the query heads reading it), and ffn_up rows ÷ s, ffn_down columns × s.</summary>
    public bool ScaleInner { get; init; }
    /// <summary>The matrices of each block the clipping search runs on: all seven by default. llm-awq leaves attn_q and
    /// attn_k out (their errors meet in the q·k product); on the bundled model that loses the whole Q2_K gain
    /// (docs/quantization.md).</summary>
    public string[] ClipTensors { get; init; } = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
    /// <summary>false: each clipping group's error is measured on its own (G's diagonal blocks, llm-awq's per-group
    /// objective); true: with the cross terms to the rest of the row.</summary>
    public bool ClipCrossTerms { get; init; } = true;
}

/// <summary>What the clipping search did to one matrix: calibration output error Σ dᵀGd before and after, and how many
/// groups took a ratio below 1.</summary>
public readonly record struct AwqClip(string Tensor, double ErrorPlain, double ErrorClipped, int GroupsClipped, int Groups);

/// <summary>What the search chose for one group of matrices sharing an RMSNorm.</summary>
public readonly record struct AwqGroup(string Norm, float Alpha, double ErrorPlain, double ErrorScaled);

public sealed class AwqResult
{
    /// <summary>Replacement values per tensor name (scaled norms and matrices), for <see cref="QuantizeOptions.Override"/>.</summary>
    public Dictionary<string, float[]> Overrides { get; } = new(StringComparer.Ordinal);
    /// <summary>The imatrix with the scaled matrices' entries divided by s² (their inputs are x / s), when one was given.</summary>
    public Dictionary<string, float[]>? Imatrix { get; set; }
    public List<AwqGroup> Groups { get; } = new();
    public List<AwqClip> Clips { get; } = new();
    /// <summary>Per scaled matrix, the factor s of each input column ([cols]): the matrix now reads x / s.</summary>
    public Dictionary<string, float[]> ColumnScales { get; } = new(StringComparer.Ordinal);
}

/// <summary>
/// Activation-aware weight scaling in the spirit of AWQ (Lin et al. 2023): the input channels that carry large
/// activations matter most, so before quantizing, each input column j of the matrices that read an RMSNorm's output
/// (attn_q/k/v after attn_norm, ffn_gate/up after ffn_norm) is multiplied by s_j = mean|x_j|^α (normalised by
/// √(max s · min s)) and the norm weight is divided by s_j — the float model computes exactly the same function, but
/// the quantization grid now spends its precision on the important channels. α is grid-searched per group to minimise
/// the output error of the quantized matrices on the calibration activations,
/// Σ_rows ‖(Ŵ − W) x‖² = Σ_o d_oᵀ G d_o with G = Σ x xᵀ collected once; α = 0 is plain round-to-nearest, so the
/// chosen scaling is never worse on the calibration data. The output file stays a plain llama GGUF.
/// With <see cref="AwqOptions.ScaleInner"/>, AWQ's two other scale points (attn_v → attn_output, ffn_up → ffn_down,
/// <see cref="ScalePair"/>); with <see cref="AwqOptions.Clip"/>, AWQ's weight clipping search after the scalings
/// (<see cref="Clip"/>).
/// </summary>
public static class Awq
{
    static readonly string[] AttnMats = ["attn_q", "attn_k", "attn_v"];
    static readonly string[] FfnMats = ["ffn_gate", "ffn_up"];
    /// <summary>The matrices whose inputs the calibration pass records (attn_k/v share attn_q's, ffn_up ffn_gate's).</summary>
    static readonly string[] ObservedMats = ["attn_q", "ffn_gate", "attn_output", "ffn_down"];

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
        if (model.Config.IsMoe) throw new CriaException("AWQ: mixture-of-experts models are not supported (use --imatrix, which collects each expert's importances)");
        if (model.Config.IsOlmo2) throw new CriaException("AWQ: an olmo2 model has no pre-norms to fold the scales into (use --imatrix or --gptq)");
        if (a.SkipPositions < 0 || a.SkipPositions >= a.ContextSize) throw new CriaException($"AWQ: cannot skip {a.SkipPositions} positions of chunks of {a.ContextSize}");
        var obs = new GramObserver(model.Config.Dim, a.SkipPositions);
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

    /// <summary>Per layer, for the types <paramref name="q"/> gives each matrix: grid-searches α per norm group, then (with
    /// <see cref="AwqOptions.ScaleInner"/>) per v→o and up→down pair, then (with <see cref="AwqOptions.Clip"/>) the
    /// clipping ratios of every chosen matrix against the Gram matrix of its scaled input.</summary>
    public static AwqResult Search(LlamaModel model, Stats stats, QuantizeOptions q, AwqOptions a, Action<string>? log = null)
    {
        var f = model.File;
        var plan = ModelQuantizer.PlanTypes(f, q, out _).ToDictionary(p => p.Tensor.Name, p => p.To, StringComparer.Ordinal);
        int threads = a.Threads > 0 ? a.Threads : Environment.ProcessorCount;
        int dim = model.Config.Dim;

        var result = new AwqResult();
        if (q.Imatrix != null) result.Imatrix = new Dictionary<string, float[]>(q.Imatrix, StringComparer.Ordinal);
        var cfg = model.Config;
        string[] blockMats = [.. AttnMats, "attn_output", .. FfnMats, "ffn_down"];
        if (a.Clip && a.ClipTensors.FirstOrDefault(t => !blockMats.Contains(t)) is { } unknown)
            throw new CriaException($"AWQ clipping: unknown matrix '{unknown}' (one of {string.Join(", ", blockMats)})");
        for (int l = 0; l < cfg.LayerCount; l++)
        {
            string p = $"blk.{l}.";
            var clipGram = new Dictionary<string, float[]>(StringComparer.Ordinal);   // matrix → Gram of its (scaled) input
            foreach (var (norm, mats, observed) in new[] { ("attn_norm", AttnMats, "attn_q"), ("ffn_norm", FfnMats, "ffn_gate") })
            {
                if (!stats.Gram.TryGetValue(p + observed + ".weight", out var g)) continue;
                var (gram, absSum, count) = g;
                var meanAbs = new float[dim];
                for (int j = 0; j < dim; j++) meanAbs[j] = (float)(absSum[j] / Math.Max(1, count));
                var names = mats.Select(m => p + m + ".weight").ToArray();
                var weights = names.Select(n => ReadMatrix(f, n)).ToArray();
                var types = names.Select(n => plan[n]).ToArray();
                if (types.All(t => !IsBlockType(t))) continue;

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
                bool scaled = bestAlpha != 0 && bestS != null;
                if (scaled)
                {
                    var normW = ReadMatrix(f, p + norm + ".weight").Data;
                    for (int j = 0; j < dim; j++) normW[j] /= bestS![j];
                    result.Overrides[p + norm + ".weight"] = normW;
                    for (int m = 0; m < names.Length; m++)
                    {
                        result.Overrides[names[m]] = ScaleColumns(weights[m].Data, weights[m].Rows, dim, bestS!);
                        result.ColumnScales[names[m]] = bestS!;
                        if (result.Imatrix != null && result.Imatrix.ContainsKey(names[m])) result.Imatrix[names[m]] = ImatrixFor(q.Imatrix, names[m], bestS!)!;
                    }
                }
                // The scaled matrices read x / s, so their Gram matrix is S⁻¹ G S⁻¹.
                var gs = scaled ? UnscaleGram(gram, dim, bestS!) : gram;
                foreach (var n in names) clipGram[n] = gs;
            }
            foreach (var (producer, consumer) in new[] { ("attn_v", "attn_output"), ("ffn_up", "ffn_down") })
            {
                string cName = p + consumer + ".weight";
                if (!stats.Gram.TryGetValue(cName, out var g)) continue;
                int cols = g.AbsSum.Length;
                float[]? s = null;
                if (a.ScaleInner)
                {
                    // Consumer column → producer row: attn_output's column (head h, d) reads attn_v's row (h / GQA group, d).
                    var channelOf = new int[cols];                   // [cols]
                    if (consumer == "attn_output")
                    {
                        int hd = cfg.HeadDim;
                        if (cols != cfg.HeadCount * hd || f.GetTensor(p + producer + ".weight").RowCount != cfg.KvHeadCount * hd)
                            throw new CriaException($"AWQ: {cName} has {cols} input columns and {p + producer}.weight {f.GetTensor(p + producer + ".weight").RowCount} rows; expected {cfg.HeadCount}×{hd} and {cfg.KvHeadCount}×{hd}");
                        for (int c = 0; c < cols; c++) channelOf[c] = c / hd / cfg.GroupSize * hd + c % hd;
                    }
                    else
                    {
                        if (f.GetTensor(p + producer + ".weight").RowCount != cols) throw new CriaException($"AWQ: {p + producer}.weight has {f.GetTensor(p + producer + ".weight").RowCount} rows for {cols} input columns of {cName}");
                        for (int c = 0; c < cols; c++) channelOf[c] = c;
                    }
                    s = ScalePair(f, p + producer + ".weight", cName, channelOf, g, plan, q, a, threads, result, log);
                }
                clipGram[cName] = s != null ? UnscaleGram(g.Gram, cols, s) : g.Gram;
            }
            if (!a.Clip) continue;
            foreach (var m in blockMats)
            {
                if (!a.ClipTensors.Contains(m)) continue;
                string name = p + m + ".weight";
                if (!clipGram.TryGetValue(name, out var gs) || !plan.TryGetValue(name, out var type) || !IsBlockType(type)) continue;
                var (data, rows) = CurrentMatrix(f, result, name);
                int cols = data.Length / rows;
                if ((long)cols * cols != gs.Length) throw new CriaException($"AWQ: the Gram matrix of '{name}' has {gs.Length} values for rows of {cols}");
                result.Overrides[name] = ClipMatrix(name, data, rows, cols, type, gs, result.Imatrix?.GetValueOrDefault(name), a, threads, q.ImatrixCandidates, result, log);
            }
        }
        return result;
    }

    /// <summary>
    /// AWQ's scale points without a norm to fold into: <paramref name="consumer"/>'s input column c is multiplied by
    /// s_{channelOf[c]} and <paramref name="producer"/>'s output row k divided by s_k, which the float model cannot see
    /// (attention output is linear in v; SwiGLU's up branch is linear). s = (mean|x| per channel)^α with α searched to
    /// minimise the consumer's quantized output error on the calibration inputs; the producer's rows are scaled whole,
    /// which its row-wise quantization follows. Returns the consumer's column scales, or null when α = 0 wins.
    /// </summary>
    static float[]? ScalePair(GgufFile f, string producer, string consumer, int[] channelOf, (float[] Gram, double[] AbsSum, long Count) g,
        Dictionary<string, GgmlType> plan, QuantizeOptions q, AwqOptions a, int threads, AwqResult result, Action<string>? log)
    {
        var type = plan[consumer];
        if (!IsBlockType(type)) return null;
        int cols = channelOf.Length, channels = channelOf.Max() + 1;
        var sum = new double[channels];                      // [channels] Σ mean|x| over the columns reading each channel
        var users = new int[channels];                       // [channels]
        for (int c = 0; c < cols; c++) { sum[channelOf[c]] += g.AbsSum[c] / Math.Max(1, g.Count); users[channelOf[c]]++; }
        var meanAbs = new float[channels];                   // [channels]
        for (int k = 0; k < channels; k++) meanAbs[k] = (float)(sum[k] / Math.Max(1, users[k]));
        var (w, rows) = CurrentMatrix(f, result, consumer);
        float bestAlpha = 0; double bestErr = double.PositiveInfinity, plainErr = 0;
        float[]? bestS = null, bestCols = null;
        foreach (float alpha in a.AlphaGrid)
        {
            var s = Scales(meanAbs, alpha);
            var sc = new float[cols];                        // [cols] s per consumer column
            for (int c = 0; c < cols; c++) sc[c] = s[channelOf[c]];
            double err = OutputError(w, rows, cols, sc, type, ImatrixFor(q.Imatrix, consumer, sc), g.Gram, threads, q.ImatrixCandidates);
            if (alpha == 0) plainErr = err;
            if (err < bestErr) { bestErr = err; bestAlpha = alpha; bestS = s; bestCols = sc; }
        }
        string label = $"{producer[..producer.LastIndexOf('.')]}→{consumer.Split('.')[2]}";
        result.Groups.Add(new AwqGroup(label, bestAlpha, plainErr, bestErr));
        log?.Invoke($"awq: {label,-16} α = {bestAlpha:F1}  output error {plainErr:E3} → {bestErr:E3} ({(plainErr > 0 ? bestErr / plainErr : 1):P1})");
        if (bestAlpha == 0 || bestS == null || bestCols == null) return null;
        result.Overrides[consumer] = ScaleColumns(w, rows, cols, bestCols);
        result.ColumnScales[consumer] = bestCols;
        if (result.Imatrix != null && result.Imatrix.ContainsKey(consumer)) result.Imatrix[consumer] = ImatrixFor(q.Imatrix, consumer, bestCols)!;
        var (pw, prows) = CurrentMatrix(f, result, producer);
        pw = (float[])pw.Clone(); // the rows are divided in place below
        int pcols = pw.Length / prows;
        for (int k = 0; k < prows; k++)
            for (int j = 0; j < pcols; j++) pw[k * pcols + j] /= bestS[k];
        result.Overrides[producer] = pw;
        return bestCols;
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

    static bool IsBlockType(GgmlType t) => t is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16);

    /// <summary>G'_ij = G_ij / (s_i s_j): the Gram matrix of the inputs x / s that the column-scaled matrices read.</summary>
    public static float[] UnscaleGram(float[] gram, int n, float[] s)
    {
        var r = new float[gram.Length];                     // [n, n]
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) r[i * n + j] = gram[i * n + j] / (s[i] * s[j]);
        return r;
    }

    static float[] ClipMatrix(string name, float[] w, int rows, int cols, GgmlType type, float[] gram, float[]? importance, AwqOptions a, int threads,
        CalibratedCandidates candidates, AwqResult result, Action<string>? log)
    {
        if (a.ClipDamp < 0 || !double.IsFinite(a.ClipDamp)) throw new CriaException($"AWQ clipping: dampening must be ≥ 0, got {a.ClipDamp}");
        if (a.ClipDamp > 0 || !a.ClipCrossTerms)
        {
            int group = Math.Min(a.ClipGroup, GgmlTypeInfo.BlockSize(type));
            double mean = 0;
            for (int i = 0; i < cols; i++) mean += gram[i * cols + i];
            float lambda = (float)(a.ClipDamp * mean / cols);
            var g = new float[gram.Length];                  // [cols, cols]
            for (int i = 0; i < cols; i++)
                for (int j = 0; j < cols; j++)
                    if (a.ClipCrossTerms || i / group == j / group) g[i * cols + j] = gram[i * cols + j] + (i == j ? lambda : 0);
            gram = g;
        }
        var clipped = Clip(type, w, rows, cols, gram, importance, a.ClipGrid, a.ClipGroup, threads, candidates, out double before, out double after, out int groups);
        int total = rows * (cols / Math.Min(a.ClipGroup, GgmlTypeInfo.BlockSize(type)));
        result.Clips.Add(new AwqClip(name, before, after, groups, total));
        log?.Invoke($"awq: clip {name,-24} {type,-5} {groups,6}/{total} groups clipped  output error {before:E3} → {after:E3} ({(before > 0 ? after / before : 1):P1})");
        return clipped;
    }

    /// <summary>
    /// AWQ's weight clipping search (llm-awq <c>auto_clip</c>) for one matrix quantized to <paramref name="type"/>:
    /// along each row, every group of <paramref name="group"/> values may be clamped to ±r·max|w_group| for a ratio r of
    /// <paramref name="grid"/> before quantization (a large weight then costs less of its block's range, at the price
    /// of its own error). The ratio is chosen to minimise the row's calibration output error dᵀGd, d = Q(clip(w)) − w,
    /// G = Σ x xᵀ of the matrix input ([cols, cols]), with the cross terms to the rest of the row exact: groups are
    /// visited once in order (coordinate descent from r = 1), each trial re-encodes only its ggml block, and G·d is kept
    /// up to date. A row whose final full-row encoding is not better than unclipped is left unclipped, so the result
    /// never has a larger error than round-to-nearest on the calibration data. Returns the values to hand to the
    /// quantizer (the matrix with clipped groups); <paramref name="importance"/> and <paramref name="candidates"/> are
    /// the imatrix path's (<see cref="Quantize.RowCalibrated"/>), null for the reference quantizer.
    /// </summary>
    public static float[] Clip(GgmlType type, float[] w, int rows, int cols, float[] gram, float[]? importance, float[] grid, int group, int threads,
        CalibratedCandidates candidates, out double errorPlain, out double errorClipped, out int groupsClipped)
    {
        if (!IsBlockType(type)) throw new CriaException($"AWQ clipping: {type} is not a block type");
        int qk = GgmlTypeInfo.BlockSize(type), bs = GgmlTypeInfo.BlockBytes(type);
        if (group <= 0) throw new CriaException($"AWQ clipping: the group size must be positive, got {group}");
        group = Math.Min(group, qk);
        if (qk % group != 0) throw new CriaException($"AWQ clipping: groups of {group} do not divide {type}'s blocks of {qk}");
        if (cols % qk != 0) throw new CriaException($"AWQ clipping: rows of {cols} are not whole {type} blocks of {qk}");
        if (w.Length != (long)rows * cols) throw new CriaException($"AWQ clipping: {w.Length} weights for {rows} × {cols}");
        if (gram.Length != (long)cols * cols) throw new CriaException($"AWQ clipping: Gram matrix of {gram.Length} values for {cols} input columns");
        if (importance != null && importance.Length != cols) throw new CriaException($"AWQ clipping: importance of {importance.Length} values for {cols} input columns");
        if (grid.Length == 0 || grid.Any(r => !(r > 0 && r <= 1))) throw new CriaException("AWQ clipping: every ratio of the grid must be in (0, 1]");
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var result = (float[])w.Clone();                     // [rows, cols]
        double plain = 0, after = 0;
        int clippedTotal = 0;
        object gate = new();
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads) },
            () => new ClipScratch(cols, qk, rowBytes, bs),
            (o, _, st) =>
            {
                var wo = w.AsSpan(o * cols, cols);
                var cur = st.Cur; wo.CopyTo(cur);
                ReadOnlySpan<float> imp = importance;
                double e0 = RowError(type, cur, wo, gram, imp, candidates, st, true);
                int n = 0;
                for (int b0 = 0; b0 < cols; b0 += qk)
                {
                    var impB = imp.IsEmpty ? imp : imp.Slice(b0, qk);
                    var deqB = st.Deq.AsSpan(b0, qk);
                    for (int g0 = b0; g0 < b0 + qk; g0 += group)
                    {
                        float mx = 0;
                        for (int j = g0; j < g0 + group; j++) mx = MathF.Max(mx, MathF.Abs(wo[j]));
                        if (mx == 0) continue;
                        double best = 0; float bestR = 1;
                        foreach (float r in grid)
                        {
                            if (r >= 1) continue;
                            cur.AsSpan(b0, qk).CopyTo(st.Tmp);
                            float c = r * mx;
                            for (int j = g0; j < g0 + group; j++) st.Tmp[j - b0] = Math.Clamp(wo[j], -c, c);
                            Quantize.RowCalibrated(type, st.Tmp, st.BlockQ, impB, candidates);
                            Dequantize.Row(type, st.BlockQ, st.Nd);
                            double delta = 0;
                            for (int i = 0; i < qk; i++) st.Delta[i] = st.Nd[i] - deqB[i];
                            for (int i = 0; i < qk; i++)
                            {
                                float di = st.Delta[i];
                                if (di == 0) continue;
                                delta += di * (2.0 * st.Gd[b0 + i] + Ops.Dot(gram.AsSpan((b0 + i) * cols + b0, qk), st.Delta));
                            }
                            if (delta < best) { best = delta; bestR = r; st.Nd.CopyTo(st.BestNd, 0); }
                        }
                        if (bestR >= 1) continue;
                        float cb = bestR * mx;
                        for (int j = g0; j < g0 + group; j++) cur[j] = Math.Clamp(wo[j], -cb, cb);
                        for (int i = 0; i < qk; i++)
                        {
                            float di = st.BestNd[i] - deqB[i];
                            if (di == 0) continue;
                            deqB[i] = st.BestNd[i];
                            var gi = gram.AsSpan((b0 + i) * cols, cols);   // row b0+i of G = its column (G is symmetric)
                            for (int k = 0; k < cols; k++) st.Gd[k] += di * gi[k];
                        }
                        n++;
                    }
                }
                double e1 = e0;
                if (n > 0)
                {
                    // Exact check with the full-row encoding (ggml's legacy *_impl quantizers use the whole row's σ²).
                    e1 = RowError(type, cur, wo, gram, imp, candidates, st, false);
                    if (!(e1 < e0)) { wo.CopyTo(cur); e1 = e0; n = 0; }
                }
                cur.CopyTo(result.AsSpan(o * cols, cols));
                st.Plain += e0; st.After += e1; st.Clipped += n;
                return st;
            },
            st => { lock (gate) { plain += st.Plain; after += st.After; clippedTotal += st.Clipped; } });
        errorPlain = plain; errorClipped = after; groupsClipped = clippedTotal;
        return result;
    }

    /// <summary>dᵀGd of one row encoded from <paramref name="values"/>, d = decoded − <paramref name="w"/>; with
    /// <paramref name="keep"/>, leaves the decoded row in Deq and G·d in Gd for the search.</summary>
    static double RowError(GgmlType type, float[] values, ReadOnlySpan<float> w, float[] gram, ReadOnlySpan<float> importance, CalibratedCandidates candidates, ClipScratch st, bool keep)
    {
        int cols = w.Length;
        Quantize.RowCalibrated(type, values, st.RowQ, importance, candidates);
        var deq = keep ? st.Deq : st.Nd2;
        Dequantize.Row(type, st.RowQ, deq);
        var d = st.D;
        for (int j = 0; j < cols; j++) d[j] = deq[j] - w[j];
        double e = 0;
        for (int i = 0; i < cols; i++)
        {
            float gdi = Ops.Dot(gram.AsSpan(i * cols, cols), d);
            if (keep) st.Gd[i] = gdi;
            e += d[i] * (double)gdi;
        }
        return e;
    }

    sealed class ClipScratch(int cols, int qk, int rowBytes, int blockBytes)
    {
        public readonly float[] Cur = new float[cols];      // [cols] values handed to the quantizer
        public readonly float[] Deq = new float[cols];      // [cols] decoded current row
        public readonly float[] Nd2 = new float[cols];      // [cols] decoded row for the final check
        public readonly float[] D = new float[cols];        // [cols] decoded − original
        public readonly float[] Gd = new float[cols];       // [cols] G·d of the current row
        public readonly float[] Tmp = new float[qk];        // [qk] one block's trial values
        public readonly float[] Nd = new float[qk];         // [qk] trial block decoded
        public readonly float[] BestNd = new float[qk];     // [qk] best trial decoded
        public readonly float[] Delta = new float[qk];      // [qk] trial − current decoded block
        public readonly byte[] RowQ = new byte[rowBytes];
        public readonly byte[] BlockQ = new byte[blockBytes];
        public double Plain, After;
        public int Clipped;
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
            return (d, acc + Ops.QuadraticForm(gram, d)); // dᵀ G d
        }, st => { lock (gate) total += st.Item2; });
        return total;
    }

    /// <summary>A matrix as the earlier AWQ steps left it: their rescaled copy if there is one, else the file's.</summary>
    static (float[] Data, int Rows) CurrentMatrix(GgufFile f, AwqResult result, string name) =>
        result.Overrides.TryGetValue(name, out var ov) ? (ov, (int)f.GetTensor(name).RowCount) : ReadMatrix(f, name);

    static (float[] Data, int Rows) ReadMatrix(GgufFile f, string name) => (f.ReadF32(name), (int)f.GetTensor(name).RowCount); // [rows, cols]

    /// <summary>Accumulates G = Σ x xᵀ ([cols, cols]) and Σ|x| ([cols]) per layer of the inputs of attn_q and ffn_gate
    /// (the norm outputs that attn_k/v and ffn_up read too), attn_output and ffn_down.</summary>
    sealed class GramObserver(int modelDim, int skip) : IMatMulObserver
    {
        public readonly Dictionary<string, (float[] Gram, double[] AbsSum, long Count)> Gram = new(StringComparer.Ordinal);

        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!weightName.StartsWith("blk.", StringComparison.Ordinal) || !ObservedMats.Any(m => weightName.EndsWith("." + m + ".weight", StringComparison.Ordinal))) return;
            if ((weightName.EndsWith(".attn_q.weight", StringComparison.Ordinal) || weightName.EndsWith(".ffn_gate.weight", StringComparison.Ordinal)) && cols != modelDim) return;
            int dim = cols;
            if (!Gram.TryGetValue(weightName, out var g)) g = (new float[dim * dim], new double[dim], 0);
            if (g.Gram.Length != dim * dim) throw new CriaException($"AWQ: '{weightName}' was observed with {cols} input columns and earlier with another width");
            var (gram, abs, count) = g;
            if (skip >= rows) return;
            x = x.Slice(skip * dim);
            rows -= skip;
            var xs = x.Slice(0, rows * dim).ToArray();        // [rows, dim]
            Calibration.AddGram(gram, xs, rows, dim, Environment.ProcessorCount);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < dim; j++) abs[j] += MathF.Abs(xs[r * dim + j]);
            Gram[weightName] = (gram, abs, count + rows);
        }
    }
}
