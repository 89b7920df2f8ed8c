using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>
/// A LoRA adapter in llama.cpp's GGUF layout (general.type = "adapter", adapter.type = "lora",
/// <c>adapter.lora.alpha</c>; tensors <c>NAME.lora_a</c> with ggml shape [in, r] and <c>NAME.lora_b</c> [r, out] for
/// a base weight NAME), read into F32 once. Applied at run time beside the base matrix, as llama.cpp does:
/// y = W·x + s·B·(A·x) with s = scale·α/r (scale alone when α is 0), so a quantized base stays as it is.
/// Only the seven projections of a Llama block can be adapted (what Cria's trainer writes and PEFT's usual targets).
/// </summary>
public sealed class LoraAdapter
{
    /// <summary>One adapted matrix: A [Rank, In] and B [Out, Rank], row-major F32 as in the file.</summary>
    public sealed record Pair(string BaseName, float[] A, float[] B, int Rank, int In, int Out)
    {
        /// <summary>Bᵀ [Rank, Out]: the B product runs as Rank row updates of length Out.</summary>
        public float[] BT { get; } = Transpose(B, Out, Rank);
    }

    static float[] Transpose(float[] b, int rows, int cols)
    {
        var t = new float[b.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) t[(long)c * rows + r] = b[(long)r * cols + c];
        return t;
    }

    public string Path { get; }
    public float Alpha { get; }
    public IReadOnlyDictionary<string, Pair> Pairs { get; }

    LoraAdapter(string path, float alpha, Dictionary<string, Pair> pairs) { Path = path; Alpha = alpha; Pairs = pairs; }

    /// <summary>s = scale·α/r (llama.cpp: the user's scale times alpha over the rank, or the user's scale when α = 0).</summary>
    public float ScaleOf(Pair p, float scale) => Alpha != 0 ? scale * Alpha / p.Rank : scale;

    /// <summary>Reads an adapter and checks it against <paramref name="model"/>: architecture, names, shapes, types.
    /// Anything that does not fit is a <see cref="CriaException"/> naming the file and the tensor.</summary>
    public static LoraAdapter Load(string path, LlamaModel model)
    {
        if (!File.Exists(path)) throw new CriaException($"LoRA adapter {path} does not exist");
        using var f = GgufFile.Open(path);
        string type = f.Get("general.type", "");
        if (type != "adapter" || f.Get("adapter.type", "") != "lora")
            throw new CriaException($"{path} is not a LoRA adapter (general.type '{type}', adapter.type '{f.Get("adapter.type", "")}')");
        string arch = f.Get("general.architecture", "");
        if (arch != model.Config.Architecture) throw new CriaException($"LoRA adapter {path} is for a '{arch}' model, not {model.Config.Architecture}");
        float alpha = f.Has("adapter.lora.alpha") ? f.Get<float>("adapter.lora.alpha") : 0f;
        if (!float.IsFinite(alpha)) throw new CriaException($"LoRA adapter {path}: adapter.lora.alpha is {alpha}");
        var byName = new Dictionary<string, WeightMatrix>();
        foreach (var L in model.Layers)
            foreach (var w in L.Projections) byName[w.Name] = w;
        var pairs = new Dictionary<string, Pair>();
        foreach (var t in f.Tensors)
        {
            string name = t.Name;
            bool isA = name.EndsWith(".lora_a", StringComparison.Ordinal), isB = name.EndsWith(".lora_b", StringComparison.Ordinal);
            if (!isA && !isB) throw new CriaException($"LoRA adapter {path}: tensor {name} is neither a lora_a nor a lora_b");
            string baseName = name[..^7];
            if (!isA) { if (!f.TryGetTensor(baseName + ".lora_a", out _)) throw new CriaException($"LoRA adapter {path}: {name} has no {baseName}.lora_a"); continue; }
            if (!f.TryGetTensor(baseName + ".lora_b", out var tb)) throw new CriaException($"LoRA adapter {path}: {name} has no {baseName}.lora_b");
            if (!byName.TryGetValue(baseName, out var w))
                throw new CriaException($"LoRA adapter {path}: {baseName} is not one of the model's adaptable projections ({string.Join(", ", model.Config.IsMoe ? LlamaLayer.ProjectionNames[..4] : LlamaLayer.ProjectionNames)} of blk.0…{model.Layers.Count - 1}{(model.Config.IsMoe ? "; a mixture of experts' feed-forward takes no adapters" : "")})");
            if (t.Shape.Length != 2 || tb.Shape.Length != 2) throw new CriaException($"LoRA adapter {path}: {baseName}'s lora_a and lora_b must be 2-D");
            long inA = t.Shape[0], rank = t.Shape[1], rankB = tb.Shape[0], outB = tb.Shape[1];
            if (inA != w.Cols || outB != w.Rows || rank != rankB || rank < 1 || rank > 65536)
                throw new CriaException($"LoRA adapter {path}: {baseName} lora_a is [{inA}, {rank}] and lora_b [{rankB}, {outB}]; the model's {baseName} needs [{w.Cols}, r] and [r, {w.Rows}]");
            pairs[baseName] = new Pair(baseName, ReadF32(f, t, path), ReadF32(f, tb, path), (int)rank, w.Cols, w.Rows);
        }
        if (pairs.Count == 0) throw new CriaException($"LoRA adapter {path} has no tensors");
        return new LoraAdapter(path, alpha, pairs);
    }

    /// <summary>
    /// Writes <paramref name="basePath"/> with the adapters merged in (llama.cpp's <c>llama-export-lora</c>):
    /// W' = W + Σ s·B·A for every adapted projection, in the base tensor's own type (F32, F16 or BF16; a block-quantized
    /// projection is refused — merge into a float model, then quantize); every other tensor and all metadata are copied
    /// unchanged. Atomic; an existing output is refused unless <paramref name="force"/>.
    /// </summary>
    public static void Merge(string basePath, IReadOnlyList<(LoraAdapter Adapter, float Scale)> adapters, string output, bool force = false)
    {
        if (adapters.Count == 0) throw new CriaException("no LoRA adapter to merge");
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        if (System.IO.Path.GetFullPath(basePath) == System.IO.Path.GetFullPath(output)) throw new CriaException($"{output}: input and output are the same file");
        using var f = GgufFile.Open(basePath);
        var byName = new Dictionary<string, List<(Pair Pair, float S)>>();
        foreach (var (adapter, scale) in adapters)
            foreach (var p in adapter.Pairs.Values)
            {
                if (!byName.TryGetValue(p.BaseName, out var list)) byName[p.BaseName] = list = new();
                list.Add((p, adapter.ScaleOf(p, scale)));
            }
        var w = new GgufWriter();
        w.CopyMetadataFrom(f);
        foreach (var t in f.Tensors)
        {
            if (!byName.TryGetValue(t.Name, out var list)) { var info = t; w.AddTensor(t.Name, t.Shape, t.Type, () => f.TensorData(info).ToArray()); continue; }
            if (t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
                throw new CriaException($"{basePath}: {t.Name} is {t.Type}; merge adapters into an F32, F16 or BF16 model, then quantize the result");
            var tensor = t;
            w.AddTensor(t.Name, t.Shape, t.Type, () =>
            {
                int rows = (int)tensor.RowCount, cols = (int)tensor.RowLength;
                long rowBytes = GgmlTypeInfo.RowBytes(tensor.Type, cols);
                var src = f.TensorData(tensor);
                var bytes = new byte[src.Length];
                var row = new float[cols];
                for (int o = 0; o < rows; o++)
                {
                    Dequantize.Row(tensor.Type, src.Slice((int)(o * rowBytes), (int)rowBytes), row);
                    foreach (var (p, s) in list)
                        for (int j = 0; j < p.Rank; j++)
                        {
                            float c = s * p.B[(long)o * p.Rank + j];
                            var a = p.A.AsSpan(j * cols, cols);
                            for (int i = 0; i < cols; i++) row[i] += c * a[i];
                        }
                    Quantize.Row(tensor.Type, row, bytes.AsSpan((int)(o * rowBytes), (int)rowBytes));
                }
                return bytes;
            });
        }
        w.Write(output);
    }

    static float[] ReadF32(GgufFile f, GgufTensorInfo t, string path)
    {
        var src = f.TensorData(t);
        var dst = new float[t.ElementCount];
        switch (t.Type)
        {
            case GgmlType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
            case GgmlType.F16 or GgmlType.BF16: Dequantize.Row(t.Type, src, dst); break;
            default: throw new CriaException($"LoRA adapter {path}: {t.Name} is {t.Type}; adapters are read in F32, F16 or BF16");
        }
        foreach (float v in dst) if (!float.IsFinite(v)) throw new CriaException($"LoRA adapter {path}: {t.Name} holds a non-finite value");
        return dst;
    }
}
