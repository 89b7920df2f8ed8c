using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>
/// LoRAM ("Train Small, Infer Large", Zhang et al. 2025): train a LoRA adapter on a pruned copy of the model, then
/// recover it to the full model's shapes and use it there. This is the structured variant: whole feed-forward neurons
/// are removed, the same number in every layer (GGUF's feed_forward_length is one number). A neuron i is row i of
/// ffn_gate and ffn_up and column i of ffn_down, so recovery zero-fills the adapter's rows of ffn_gate/ffn_up
/// <c>lora_b</c> and columns of ffn_down <c>lora_a</c> at the pruned neurons; the attention adapters are unchanged.
/// The pruned neurons' own weights in the full model are untouched: the adapter simply does not move them.
/// </summary>
public static class Loram
{
    /// <summary>Metadata of a pruned file: the full model's feed_forward_length, and the kept neurons (ascending) of
    /// every layer, layer after layer.</summary>
    public const string FullFfnKey = "cria.loram.full_ffn", KeptKey = "cria.loram.kept";

    /// <summary>
    /// Writes <paramref name="output"/>: <paramref name="input"/> (F32/F16/BF16 weights) with only the
    /// <paramref name="keep"/> share of each layer's feed-forward neurons, those of the largest
    /// ‖gate_i‖·‖up_i‖·‖down_:,i‖ (a magnitude score; LoRAM's paper also reports random pruning working). Matrices are
    /// written F32. Returns the kept neurons per layer.
    /// </summary>
    public static int[][] Prune(string input, string output, double keep, bool force = false)
    {
        if (!(keep > 0 && keep <= 1)) throw new CriaException($"prune: the share of neurons kept must be in (0, 1], got {keep}");
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        using var f = GgufFile.Open(input);
        var c = Models.ModelConfig.FromGguf(f);
        if (c.IsMoe) throw new CriaException($"prune: {input} is a mixture-of-experts model; LoRAM pruning here removes dense feed-forward neurons");
        if (c.Architecture != "llama") throw new CriaException($"prune: {input} is a '{c.Architecture}' model; the pruned model is trained by the trainer, which trains llama models");
        if (f.Has(KeptKey)) throw new CriaException($"prune: {input} is already pruned; prune the full model");
        int ff = c.FfnDim, dim = c.Dim, n = Math.Max(1, (int)Math.Round(ff * keep));
        var kept = new int[c.LayerCount][];
        var mats = new Dictionary<string, float[]>(StringComparer.Ordinal);
        for (int l = 0; l < c.LayerCount; l++)
        {
            string p = $"blk.{l}.";
            var gate = Read(f, p + "ffn_gate.weight", ff, dim);   // [ff, dim]
            var up = Read(f, p + "ffn_up.weight", ff, dim);       // [ff, dim]
            var down = Read(f, p + "ffn_down.weight", dim, ff);   // [dim, ff]
            var score = new double[ff];
            for (int i = 0; i < ff; i++)
            {
                double g = 0, u = 0, d = 0;
                for (int j = 0; j < dim; j++) { g += (double)gate[i * dim + j] * gate[i * dim + j]; u += (double)up[i * dim + j] * up[i * dim + j]; }
                for (int o = 0; o < dim; o++) d += (double)down[o * ff + i] * down[o * ff + i];
                score[i] = Math.Sqrt(g * u * d);
            }
            kept[l] = Enumerable.Range(0, ff).OrderByDescending(i => score[i]).ThenBy(i => i).Take(n).Order().ToArray();
            var g2 = new float[n * dim]; var u2 = new float[n * dim]; var d2 = new float[dim * n];
            for (int k = 0; k < n; k++)
            {
                int i = kept[l][k];
                Array.Copy(gate, i * dim, g2, k * dim, dim);
                Array.Copy(up, i * dim, u2, k * dim, dim);
                for (int o = 0; o < dim; o++) d2[o * n + k] = down[o * ff + i];
            }
            mats[p + "ffn_gate.weight"] = g2; mats[p + "ffn_up.weight"] = u2; mats[p + "ffn_down.weight"] = d2;
        }
        var w = new GgufWriter().CopyMetadataFrom(f);
        w.Set("llama.feed_forward_length", (uint)n);
        w.Set(FullFfnKey, (uint)ff);
        w.Set(KeptKey, kept.SelectMany(k => k).ToArray());
        foreach (var t in f.Tensors)
        {
            if (mats.TryGetValue(t.Name, out var v))
            {
                long[] shape = t.Name.EndsWith("ffn_down.weight", StringComparison.Ordinal) ? [n, dim] : [dim, n];
                w.AddTensor(t.Name, shape, v);
            }
            else if (t.Shape.Length >= 2 && t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
                throw new CriaException($"prune: tensor '{t.Name}' of {input} is {t.Type}; prune an F32, F16 or BF16 model (LoRA trains on those)");
            else w.AddTensor(t.Name, t.Shape.ToArray(), t.Type, f.TensorData(t).ToArray());
        }
        w.Write(output);
        return kept;
    }

    static float[] Read(GgufFile f, string name, int rows, int cols)
    {
        var t = f.GetTensor(name);
        if (t.Shape.Length != 2 || t.Shape[0] != cols || t.Shape[1] != rows)
            throw new ModelFormatException(f.Path, $"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{cols}, {rows}]");
        if (t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
            throw new CriaException($"prune: tensor '{name}' of {f.Path} is {t.Type}; prune an F32, F16 or BF16 model (LoRA trains on those)");
        var v = new float[(long)rows * cols];
        long rowBytes = GgmlTypeInfo.RowBytes(t.Type, cols);
        var data = f.TensorData(t);
        for (int r = 0; r < rows; r++) Dequantize.Row(t.Type, data.Slice((int)(r * rowBytes), (int)rowBytes), v.AsSpan(r * cols, cols));
        return v;
    }

    /// <summary>
    /// Writes <paramref name="output"/>: the adapter <paramref name="adapter"/>, trained on the pruned model
    /// <paramref name="pruned"/>, recovered to the full model's shapes (zero rows of ffn_gate/ffn_up lora_b and zero
    /// columns of ffn_down lora_a at the pruned neurons). The result is an ordinary adapter GGUF for the full model.
    /// </summary>
    public static void Recover(string adapter, string pruned, string output, bool force = false)
    {
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        using var pf = GgufFile.Open(pruned);
        if (!pf.Has(KeptKey) || !pf.Has(FullFfnKey)) throw new CriaException($"recover: {pruned} is not a pruned model (no {KeptKey} metadata; make it with `cria prune`)");
        int full = pf.Get<int>(FullFfnKey), n = pf.Get<int>("llama.feed_forward_length"), layers = pf.Get<int>("llama.block_count");
        var flat = pf.Get<int[]>(KeptKey);
        if (flat.Length != (long)n * layers) throw new CriaException($"recover: {pruned} lists {flat.Length} kept neurons for {layers} layers × {n}");
        for (int i = 0; i < flat.Length; i++)
            if ((uint)flat[i] >= (uint)full || (i % n > 0 && flat[i] <= flat[i - 1]))
                throw new CriaException($"recover: {pruned}: kept neuron {flat[i]} (entry {i}) is out of order or outside 0..{full - 1}");
        using var af = GgufFile.Open(adapter);
        if (af.Get<string>("general.type", "") != "adapter") throw new CriaException($"recover: {adapter} is not an adapter GGUF (general.type is not 'adapter')");
        var w = new GgufWriter().CopyMetadataFrom(af);
        foreach (var t in af.Tensors)
        {
            if (t.Type != GgmlType.F32 || t.Shape.Length != 2) throw new CriaException($"recover: {adapter}: tensor '{t.Name}' must be a 2-D F32 matrix");
            var v = MemoryMarshal.Cast<byte, float>(af.TensorData(t)).ToArray();
            long cols = t.Shape[0], rows = t.Shape[1];          // GGUF ne = {cols, rows}: lora_a [r rows, in], lora_b [out rows, r]
            int layer = Quantization.QuantMix.LayerOf(t.Name);
            bool gateOrUpB = t.Name.EndsWith("ffn_gate.weight.lora_b", StringComparison.Ordinal) || t.Name.EndsWith("ffn_up.weight.lora_b", StringComparison.Ordinal);
            bool downA = t.Name.EndsWith("ffn_down.weight.lora_a", StringComparison.Ordinal);
            if ((gateOrUpB || downA) && (uint)layer >= (uint)layers) throw new CriaException($"recover: {adapter}: tensor '{t.Name}' is outside the pruned model's {layers} layers");
            var keep = (gateOrUpB || downA) ? flat.AsSpan(layer * n, n) : default;
            if (gateOrUpB)
            {
                if (rows != n) throw new CriaException($"recover: {adapter}: '{t.Name}' has {rows} rows; the pruned model's ffn has {n}");
                var x = new float[full * cols];                 // [full, r]: row keep[k] ← row k
                for (int k = 0; k < n; k++) Array.Copy(v, k * cols, x, keep[k] * cols, cols);
                w.AddTensor(t.Name, [cols, full], x);
            }
            else if (downA)
            {
                if (cols != n) throw new CriaException($"recover: {adapter}: '{t.Name}' has {cols} columns; the pruned model's ffn has {n}");
                var x = new float[rows * full];                 // [r, full]: column keep[k] ← column k
                for (int r = 0; r < rows; r++)
                    for (int k = 0; k < n; k++) x[r * full + keep[k]] = v[r * cols + k];
                w.AddTensor(t.Name, [full, rows], x);
            }
            else w.AddTensor(t.Name, [cols, rows], v);
        }
        w.Write(output);
    }
}
