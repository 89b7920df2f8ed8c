using Cria.Kernels;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Quantization;

/// <summary>Settings of <see cref="Gptq.Collect"/>.</summary>
public sealed record GptqOptions : CalibrationOptions
{
    public GptqOptions() => MaxChunks = 64;
    /// <summary>λ = Damp × mean diag(H) added to H before inverting (GPTQ's default 1 %).</summary>
    public double Damp { get; init; } = 0.01;
}

/// <summary>
/// The calibration side of GPTQ (Frantar et al. 2022): runs calibration text through the model and collects, for every
/// input of a <c>blk.*</c> matrix product, the Gram matrix H = Σ_t x_t x_tᵀ / T over all calibration tokens (the full
/// matrix whose diagonal is the imatrix), then factors it once (<see cref="GptqFactor"/>). Matrices that read the same
/// input share one factor: attn_q/k/v (attn_norm output), ffn_gate/up (ffn_norm output); attn_output and ffn_down have
/// their own. <see cref="QuantizeOptions.Gptq"/> then quantizes each row with <see cref="Quantize.RowGptq"/>.
/// </summary>
public static class Gptq
{
    /// <summary>Per tensor name, the mean Gram matrix of its input ([cols, cols]); shared arrays for shared inputs.</summary>
    public static Dictionary<string, float[]> CollectGram(LlamaModel model, string calibrationText, GptqOptions o, out int chunks)
    {
        if (model.Config.IsMoe) throw new CriaException("GPTQ: mixture-of-experts models are not supported (use --imatrix, which collects each expert's importances)");
        var obs = new GramObserver(o.Threads > 0 ? o.Threads : Environment.ProcessorCount);
        chunks = Calibration.Run(model, calibrationText, o, obs);
        if (chunks == 0) throw new CriaException("GPTQ: the calibration text gives no chunk (it is too short for the context size)");
        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var (name, (g, count)) in obs.Gram)
        {
            float inv = 1f / Math.Max(1, count);
            for (int i = 0; i < g.Length; i++) g[i] *= inv;
        }
        foreach (var (name, source) in obs.Alias)
            if (obs.Gram.TryGetValue(source, out var g)) result[name] = g.Gram;
        return result;
    }

    /// <summary>Runs the calibration and factors every distinct Gram matrix: per tensor name, its <see cref="GptqFactor"/>.
    /// <paramref name="columnScales"/>: per tensor whose input columns were multiplied by s (AWQ), s — its Gram matrix
    /// becomes S⁻¹HS⁻¹, the Gram matrix of the inputs x / s it reads.</summary>
    public static Dictionary<string, GptqFactor> Collect(string modelPath, string calibrationText, GptqOptions o, Action<string>? log = null,
        IReadOnlyDictionary<string, float[]>? columnScales = null)
    {
        if (!(o.Damp > 0)) throw new CriaException($"GPTQ: dampening must be positive, got {o.Damp}");
        if (o.ContextSize <= 0 || o.MaxChunks <= 0) throw new CriaException($"GPTQ: calibration needs a positive chunk length and count, got {o.ContextSize} × {o.MaxChunks}");
        using var model = LlamaModel.Open(modelPath);
        var gram = CollectGram(model, calibrationText, o, out int chunks);
        if (columnScales != null)
        {
            // Tensors sharing an input and its scales keep sharing one (rescaled) Gram array, so they share a factor.
            var rescaled = new Dictionary<(float[], float[]), float[]>();
            foreach (var (name, s) in columnScales.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            {
                if (!gram.TryGetValue(name, out var g)) continue;
                if ((long)s.Length * s.Length != g.Length) throw new CriaException($"GPTQ: AWQ scales of '{name}' have {s.Length} columns for a Gram matrix of {g.Length} values");
                if (!rescaled.TryGetValue((g, s), out var r)) rescaled[(g, s)] = r = Awq.UnscaleGram(g, s.Length, s);
                gram[name] = r;
            }
        }
        log?.Invoke($"gptq: {chunks} calibration chunks of {o.ContextSize} tokens, {gram.Values.Distinct().Count()} input Gram matrices");
        return Factor(gram, o.Damp);
    }

    /// <summary>Factors each distinct Gram array once (tensors sharing an array share the factor).</summary>
    public static Dictionary<string, GptqFactor> Factor(IReadOnlyDictionary<string, float[]> gram, double damp = 0.01)
    {
        var byArray = new Dictionary<float[], GptqFactor>(ReferenceEqualityComparer.Instance);
        var result = new Dictionary<string, GptqFactor>(StringComparer.Ordinal);
        foreach (var (name, g) in gram.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            if (!byArray.TryGetValue(g, out var f))
            {
                int cols = (int)Math.Round(Math.Sqrt(g.Length));
                if ((long)cols * cols != g.Length) throw new CriaException($"GPTQ: the Gram matrix of '{name}' has {g.Length} values, not a square");
                try { f = GptqFactor.FromGram(g, cols, damp); }
                catch (CriaException e) { throw new CriaException($"{e.Message} (tensor '{name}')", e); }
                byArray[g] = f;
            }
            result[name] = f;
        }
        return result;
    }

    /// <summary>Σ_rows dᵀ H d with d = ŵ − w for one quantized matrix: its summed squared output error over the
    /// calibration tokens (per token when H is the mean Gram matrix).</summary>
    public static double OutputError(GgmlType type, ReadOnlySpan<byte> q, ReadOnlySpan<float> w, int rows, int cols, ReadOnlySpan<float> gram)
    {
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var d = new float[cols];                             // [cols] one row's error
        double total = 0;
        for (int o = 0; o < rows; o++)
        {
            Dequantize.Row(type, q.Slice(o * rowBytes, rowBytes), d);
            for (int j = 0; j < cols; j++) d[j] -= w[o * cols + j];
            total += Ops.QuadraticForm(gram.Slice(0, cols * cols), d);
        }
        return total;
    }

    /// <summary>Accumulates Σ x xᵀ ([cols, cols]) and the token count per distinct matrix input. attn_k/attn_v read
    /// attn_q's input and ffn_up reads ffn_gate's (the observer reports them with the same x), so those are aliased,
    /// not summed again.</summary>
    sealed class GramObserver(int threads) : IMatMulObserver
    {
        public readonly Dictionary<string, (float[] Gram, long Count)> Gram = new(StringComparer.Ordinal);
        /// <summary>Tensor name → the tensor whose Gram it uses.</summary>
        public readonly Dictionary<string, string> Alias = new(StringComparer.Ordinal);

        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!weightName.StartsWith("blk.", StringComparison.Ordinal)) return;
            string source = weightName;
            foreach (var (shared, owner) in Shared)
                if (weightName.EndsWith(shared, StringComparison.Ordinal)) { source = weightName[..^shared.Length] + owner; break; }
            Alias[weightName] = source;
            if (source != weightName) return;
            if (!Gram.TryGetValue(source, out var g)) g = (new float[cols * cols], 0);
            if (g.Gram.Length != cols * cols) throw new CriaException($"GPTQ: '{weightName}' was observed with {cols} input columns and earlier with another width");
            var gram = g.Gram;                               // [cols, cols]
            var xs = x.Slice(0, rows * cols).ToArray();      // [rows, cols]
            Calibration.AddGram(gram, xs, rows, cols, threads);
            Gram[source] = (gram, g.Count + rows);
        }

        static readonly (string, string)[] Shared = [(".attn_k.weight", ".attn_q.weight"), (".attn_v.weight", ".attn_q.weight"), (".ffn_up.weight", ".ffn_gate.weight")];
    }
}
