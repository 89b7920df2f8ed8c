using Cria.Formats;
using Cria.Kernels;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>Settings of <see cref="SwiftKv.Build"/>.</summary>
public sealed record SwiftKvOptions : CalibrationOptions
{
    public SwiftKvOptions() => MaxChunks = 64;
    /// <summary>L (ArcticTraining's <c>num_key_value_layers</c>): layers L and above take their K/V from layer L's input.</summary>
    public int KvLayers { get; init; }
    /// <summary>AcrossKV group (<c>key_value_group_size</c>): consecutive SwiftKV layers sharing one KV cache layer.</summary>
    public int GroupSize { get; init; } = 1;
    /// <summary>Fit the K/V projections to the original model's keys and values on calibration text (least squares);
    /// false copies each owner layer's own attn_k / attn_v, the paper's initialisation before distillation.</summary>
    public bool Fit { get; init; } = true;
    /// <summary>Ridge term λ = Damp × mean diag(HᵀH) of the least-squares fit.</summary>
    public double Damp { get; init; } = 0.01;
}

/// <summary>Settings of <see cref="SwiftKv.Distill"/>: SwiftKV's knowledge-preserving distillation (τ = 2 in the paper).</summary>
public sealed record SwiftKvDistillOptions
{
    public int Steps { get; init; } = 300;
    public int BatchSize { get; init; } = 8;
    public int SeqLen { get; init; } = 128;
    public float LearningRate { get; init; } = 1e-3f;
    public int WarmupSteps { get; init; } = 20;
    public float Temperature { get; init; } = 2f;
    public int Threads { get; init; } = 2;
    public ulong Seed { get; init; } = 1234;
}

/// <summary>What <see cref="SwiftKv.Build"/> did: calibration tokens, and per fitted owner layer the relative error
/// ‖Ŷ − Y‖² / ‖Y‖² of its keys and values on the calibration text (empty without a fit).</summary>
public sealed record SwiftKvReport(long Tokens, IReadOnlyList<(int Layer, double KeyError, double ValueError)> Fits);

/// <summary>
/// Turns a llama model into a SwiftKV model (Qiao et al. 2024, "SwiftKV: fast prefill-optimized inference with
/// knowledge-preserving model transformation"; ArcticTraining's <c>LlamaSwiftKVModel</c>). From layer L on, every
/// layer's keys and values come from one input, h = swiftkv_norm(x_L), the residual stream entering layer L, so a prompt
/// row that asks for no logits stops after layer L − 1 (<see cref="InferenceContext"/>): prefill skips (n − L)/n of the
/// layers' work except the K/V projections. With AcrossKV (group g) only every g-th later layer owns projections and
/// the others read its cache layer.
/// <para>
/// The paper initialises the new projections from the originals and restores quality by distilling them end to end (KL
/// to the original model at temperature 2): <see cref="Distill"/>. <see cref="Build"/> makes the model, with the
/// projections copied (the paper's initialisation) or fitted layer by layer by least squares, a better start:
/// W_k = argmin Σ_t ‖W h_t − k_t‖² + λ‖W‖², where
/// k_t is the original model's key (before RoPE) of token t at that layer (for an AcrossKV group, its first layer's:
/// fitting the group's mean key instead was worse than copying on the bundled model, docs/swiftkv.md), the same for
/// values. Queries keep each layer's attn_q. The output file holds the original tensors too,
/// so <c>--swiftkv off</c> runs the original model from it.
/// </para>
/// </summary>
public static class SwiftKv
{
    public static SwiftKvReport Build(string input, string output, string? calibrationText, SwiftKvOptions o, Action<string>? log = null, bool force = false)
    {
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        using var model = LlamaModel.Open(input);
        var c = model.Config;
        int L = o.KvLayers, g = o.GroupSize, n = c.LayerCount;
        if (c.Architecture != "llama") throw new CriaException($"swiftkv: {input} is {c.Architecture}; SwiftKV is built for the llama architecture");
        if (c.IsSwiftKv) throw new CriaException($"swiftkv: {input} is already a SwiftKV model (kv_layers {c.SwiftKvLayers})");
        if (L < 1 || L >= n) throw new CriaException($"swiftkv: --layers {L} must be in 1..{n - 1} (the model has {n} layers)");
        if (g < 1 || g > n - L) throw new CriaException($"swiftkv: --group {g} must be in 1..{n - L} (layers {L}..{n - 1} are SwiftKV layers)");
        if (o.Fit && string.IsNullOrWhiteSpace(calibrationText)) throw new CriaException("swiftkv: fitting needs calibration text (--calib FILE), or use --no-fit");
        if (!(o.Damp > 0)) throw new CriaException($"swiftkv: dampening must be positive, got {o.Damp}");

        var f = model.File;
        string arch = c.Architecture;
        var fitted = new Dictionary<string, float[]>(StringComparer.Ordinal); // owner layer's attn_k/v_swiftkv [kvDim, dim]
        var fits = new List<(int, double, double)>();
        long tokens = 0;
        if (o.Fit)
        {
            var collector = new Collector(model, L, g, o.Threads > 0 ? o.Threads : Environment.ProcessorCount);
            int chunks = Calibration.Run(model, calibrationText!, o, collector);
            if (chunks == 0 || collector.Tokens == 0) throw new CriaException("swiftkv: the calibration text gives no chunk (it is too short for the context size)");
            tokens = collector.Tokens;
            log?.Invoke($"swiftkv: {chunks} calibration chunks, {tokens} tokens");
            var (chol, lambda) = DampedCholesky(collector.Gram, c.Dim, o.Damp);
            for (int owner = L, i = 0; owner < n; owner += g, i++)
            {
                var (wk, ek) = Solve(chol, lambda, collector.CrossK[i], collector.TargetK[i], c.KvDim, c.Dim);
                var (wv, ev) = Solve(chol, lambda, collector.CrossV[i], collector.TargetV[i], c.KvDim, c.Dim);
                fitted[$"blk.{owner}.attn_k_swiftkv.weight"] = wk;
                fitted[$"blk.{owner}.attn_v_swiftkv.weight"] = wv;
                fits.Add((owner, ek, ev));
                log?.Invoke($"swiftkv: layer {owner}: relative error of the fitted keys {ek:F4}, values {ev:F4}");
            }
        }

        var w = new GgufWriter().CopyMetadataFrom(f);
        w.Set(arch + ".swiftkv.kv_layers", (uint)L);
        w.Set(arch + ".swiftkv.group_size", (uint)g);
        foreach (var t in f.Tensors) Copy(w, f, t.Name, t.Name);
        Copy(w, f, $"blk.{L}.attn_norm.weight", "swiftkv_norm.weight");
        for (int l = L; l < n; l++)
        {
            Copy(w, f, $"blk.{l}.attn_q.weight", $"blk.{l}.attn_q_swiftkv.weight");
            if ((l - L) % g != 0) continue;
            foreach (var kv in new[] { "k", "v" })
            {
                string name = $"blk.{l}.attn_{kv}_swiftkv.weight";
                if (!fitted.TryGetValue(name, out var m)) { Copy(w, f, $"blk.{l}.attn_{kv}.weight", name); continue; }
                var src = f.GetTensor($"blk.{l}.attn_{kv}.weight");
                // F32 stays F32; anything else is written as F16 (quantize the SwiftKV file afterwards for a low-bit model).
                if (src.Type == GgmlType.F32) w.AddTensor(name, [c.Dim, c.KvDim], m);
                else w.AddTensor(name, [c.Dim, c.KvDim], GgmlType.F16, () => ModelQuantizer.QuantizeMatrix(GgmlType.F16, m, c.Dim, c.KvDim, null, o.Threads > 0 ? o.Threads : Environment.ProcessorCount));
            }
        }
        w.Write(output);
        return new SwiftKvReport(tokens, fits);
    }

    /// <summary>
    /// Distils a SwiftKV model (made by <see cref="Build"/>) as the paper does: the SwiftKV projections and swiftkv_norm
    /// train, everything else stays frozen, and the loss is τ²·KL between the original model's next-token distribution
    /// (the teacher, read from the same file) and the SwiftKV model's, at temperature τ, on random windows of
    /// <paramref name="text"/>. AdamW with warm-up and cosine decay, no weight decay. Writes <paramref name="output"/>:
    /// the input with its SwiftKV tensors replaced (F32, or F16 where the input's were not F32). Returns every step.
    /// </summary>
    public static IReadOnlyList<StepResult> Distill(string input, string output, string text, SwiftKvDistillOptions o, Action<StepResult>? log = null, bool force = false)
    {
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        using var model = LlamaModel.Open(input);
        var c = model.Config;
        if (!c.IsSwiftKv) throw new CriaException($"swiftkv --distill: {input} is not a SwiftKV model (build one first: cria swiftkv IN OUT --layers L)");
        if (!model.HasOriginalAttention) throw new CriaException($"swiftkv --distill: {input} lacks the original attention projections of layers {c.SwiftKvLayers} and above, the teacher's");
        var imported = GgufImport.Read(input, "swiftkv --distill", swiftKv: true);
        var tok = model.Tokenizer;
        int[] tokens = tok.Encode(text, addBos: false);
        if (o.SeqLen < 2 || o.SeqLen > c.ContextLength) throw new CriaException($"swiftkv --distill: sequence length {o.SeqLen} must be in 2..{c.ContextLength}");
        var options = new TrainingOptions
        {
            BatchSize = o.BatchSize, Steps = o.Steps, WarmupSteps = Math.Min(o.WarmupSteps, o.Steps), LearningRate = o.LearningRate,
            WeightDecay = 0f, Threads = o.Threads, Seed = o.Seed,
        };
        using var trainer = new Trainer(imported.Shape, options, tokens, tok.Bos, o.SeqLen, swiftKv: (c.SwiftKvLayers, c.SwiftKvGroup));
        trainer.SetParameters(imported.Parameters);
        var layout = trainer.Model.SwiftKv!;
        var f = model.File;
        foreach (var t in layout.Tensors)
        {
            var info = f.GetTensor(t.Name);
            if (info.ElementCount != t.Count) throw new ModelFormatException(input, $"tensor {info} does not have {t.Count} values");
            if (info.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
                throw new CriaException($"swiftkv --distill: {t.Name} of {input} is {info.Type}; distil an F32/F16 SwiftKV model, then quantize it");
            Dequantize.Row(info.Type, f.TensorData(info), trainer.Model.SwiftKvParameters.AsSpan((int)t.Offset, (int)t.Count));
        }
        var steps = new List<StepResult>();
        for (int i = 0; i < o.Steps; i++)
        {
            var r = trainer.DistillStep(o.Temperature);
            steps.Add(r);
            log?.Invoke(r);
        }
        var trained = layout.Tensors.ToDictionary(t => t.Name, t => t);
        var w = new GgufWriter().CopyMetadataFrom(f);
        w.Set("cria.swiftkv.distill", $"steps {o.Steps}, batch {o.BatchSize} × {o.SeqLen}, lr {o.LearningRate}, temperature {o.Temperature}");
        var p = trainer.Model.SwiftKvParameters;
        foreach (var info in f.Tensors)
        {
            if (!trained.TryGetValue(info.Name, out var t)) { Copy(w, f, info.Name, info.Name); continue; }
            var values = p.AsSpan((int)t.Offset, (int)t.Count).ToArray();
            if (info.Type == GgmlType.F32) w.AddTensor(info.Name, info.Shape.ToArray(), values);
            else w.AddTensor(info.Name, info.Shape.ToArray(), GgmlType.F16, () => ModelQuantizer.QuantizeMatrix(GgmlType.F16, values, t.Cols, t.Rows, null, o.Threads));
        }
        w.Write(output);
        return steps;
    }

    /// <summary>Adds tensor <paramref name="from"/> of <paramref name="f"/> under the name <paramref name="to"/>, its bytes
    /// copied from the map when the writer reaches it (one tensor in memory at a time).</summary>
    static void Copy(GgufWriter w, GgufFile f, string from, string to)
    {
        var t = f.GetTensor(from);
        w.AddTensor(to, t.Shape.ToArray(), t.Type, () => f.TensorData(t).ToArray());
    }

    /// <summary>The lower Cholesky factor of A + λI, λ = damp × mean diag(A) ([n, n] row-major, double), and λ.</summary>
    static (double[] Factor, double Lambda) DampedCholesky(float[] gram, int n, double damp)
    {
        var a = new double[n * n];
        double mean = 0;
        for (int i = 0; i < n; i++) mean += gram[i * n + i];
        mean /= n;
        double lambda = damp * (mean > 0 ? mean : 1);
        for (int i = 0; i < n * n; i++) a[i] = gram[i];
        for (int i = 0; i < n; i++) a[i * n + i] += lambda;
        if (!GptqFactor.CholeskyLower(a, n)) throw new CriaException("swiftkv: the damped Gram matrix of layer L's input is not positive definite (NaN in the calibration activations?)");
        return (a, lambda);
    }

    /// <summary>
    /// W [m, n] = B (A + λI)⁻¹ from the factor L of A + λI and B = Σ_t y_t h_tᵀ ([m, n]): each row w solves
    /// L Lᵀ w = b. Returns W and its relative error on the calibration tokens, Σ_t ‖W h_t − y_t‖² / Σ‖y‖²: with
    /// A = Σ h hᵀ and W (A + λI) = B that is (Σ‖y‖² − tr(W Bᵀ) − λ‖W‖²) / Σ‖y‖² (<paramref name="targetSquares"/> = Σ‖y‖²).
    /// </summary>
    static (float[] W, double Error) Solve(double[] chol, double lambda, float[] cross, double targetSquares, int m, int n)
    {
        var w = new float[m * n];
        double err = targetSquares;
        Parallel.For(0, m, () => (new double[n], 0.0), (r, _, state) =>
        {
            var (z, e) = state;
            for (int i = 0; i < n; i++)                          // L z = b
            {
                double s = cross[r * n + i];
                for (int k = 0; k < i; k++) s -= chol[i * n + k] * z[k];
                z[i] = s / chol[i * n + i];
            }
            for (int i = n - 1; i >= 0; i--)                     // Lᵀ w = z
            {
                double s = z[i];
                for (int k = i + 1; k < n; k++) s -= chol[k * n + i] * z[k];
                z[i] = s / chol[i * n + i];
            }
            double wb = 0, ww = 0;
            for (int i = 0; i < n; i++)
            {
                w[r * n + i] = (float)z[i];
                wb += z[i] * cross[r * n + i];
                ww += z[i] * z[i];
            }
            return (z, e - wb - lambda * ww);
        }, state => { lock (w) err += state.Item2; });
        return (w, targetSquares > 0 ? err / targetSquares : 0);
    }

    /// <summary>
    /// Collects, on the original model's calibration pass, A = Σ h hᵀ of layer L's normed input h (the input of
    /// blk.L.attn_q, = swiftkv_norm(x_L) with swiftkv_norm = blk.L.attn_norm) and, per owner layer j (the first of each
    /// AcrossKV group), B_k = Σ k hᵀ and B_v = Σ v hᵀ with k = attn_k_j · u_j, v = attn_v_j · u_j (u_j: layer j's normed
    /// input), and Σ‖k‖², Σ‖v‖².
    /// </summary>
    sealed class Collector : IMatMulObserver
    {
        readonly int _dim, _kvDim, _L, _g, _threads;
        readonly float[][] _wk, _wv;   // [owner] original attn_k / attn_v of the owner layer, [kvDim, dim]
        float[] _h = [], _u = [], _y = []; // [rows, dim] h of the current step; [rows, dim] an owner's input; [rows, kvDim] its keys or values
        public readonly float[] Gram;  // [dim, dim]
        public readonly float[][] CrossK, CrossV; // [owner] [kvDim, dim]
        public readonly double[] TargetK, TargetV;
        int _rows = -1;
        public long Tokens;

        public Collector(LlamaModel m, int L, int g, int threads)
        {
            var c = m.Config;
            _dim = c.Dim; _kvDim = c.KvDim; _L = L; _g = g; _threads = threads;
            int owners = (c.LayerCount - L + g - 1) / g;
            _wk = new float[owners][]; _wv = new float[owners][];
            for (int i = 0; i < owners; i++) { _wk[i] = Dense(m.Layers[L + i * g].Wk); _wv[i] = Dense(m.Layers[L + i * g].Wv); }
            Gram = new float[_dim * _dim];
            CrossK = new float[owners][]; CrossV = new float[owners][];
            for (int i = 0; i < owners; i++) { CrossK[i] = new float[_kvDim * _dim]; CrossV[i] = new float[_kvDim * _dim]; }
            TargetK = new double[owners]; TargetV = new double[owners];
        }

        static unsafe float[] Dense(WeightMatrix w)
        {
            var d = new float[(long)w.Rows * w.Cols];
            Dequantize.Row(w.Type, new ReadOnlySpan<byte>(w.Data, checked((int)w.ByteSize)), d); // rows are contiguous
            return d;
        }

        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!weightName.StartsWith("blk.", StringComparison.Ordinal) || !weightName.EndsWith(".attn_q.weight", StringComparison.Ordinal)) return;
            int layer = int.Parse(weightName.AsSpan(4, weightName.Length - 4 - ".attn_q.weight".Length));
            if (layer < _L) return;
            if (layer == _L)
            {
                if (_h.Length < rows * _dim) { _h = new float[rows * _dim]; _u = new float[rows * _dim]; _y = new float[rows * _kvDim]; }
                x.CopyTo(_h);
                Calibration.AddGram(Gram, _h, rows, _dim, _threads);
                Tokens += rows;
                _rows = rows;
            }
            if (rows != _rows) throw new InvalidOperationException("swiftkv: calibration rows changed between layers");
            if ((layer - _L) % _g != 0) return;
            int owner = (layer - _L) / _g;
            Project(_wk[owner], x, rows, _y);
            Calibration.AddOuterProducts(CrossK[owner], _y, _kvDim, _h, _dim, rows, _threads);
            TargetK[owner] += SumSquares(_y, rows * _kvDim);
            Project(_wv[owner], x, rows, _y);
            Calibration.AddOuterProducts(CrossV[owner], _y, _kvDim, _h, _dim, rows, _threads);
            TargetV[owner] += SumSquares(_y, rows * _kvDim);
        }

        static double SumSquares(float[] a, int n) { double s = 0; for (int i = 0; i < n; i++) s += (double)a[i] * a[i]; return s; }

        /// <summary>y[r, :] = W x[r, :] for W [kvDim, dim].</summary>
        void Project(float[] w, ReadOnlySpan<float> x, int rows, float[] y)
        {
            x.Slice(0, rows * _dim).CopyTo(_u);                   // a span cannot enter the parallel body
            int dim = _dim, kvDim = _kvDim; var xs = _u;
            Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = _threads }, r =>
            {
                var xr = xs.AsSpan(r * dim, dim);
                for (int o = 0; o < kvDim; o++) y[r * kvDim + o] = Ops.Dot(w.AsSpan(o * dim, dim), xr);
            });
        }
    }
}
