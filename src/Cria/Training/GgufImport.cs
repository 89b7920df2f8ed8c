using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>
/// Reads a llama GGUF (as <see cref="GgufExport"/> writes it: F32 or F16 matrices, F32 norms) back into training
/// parameters, so <c>cria train --init</c> can fine-tune it: the shape from the file's metadata, the vocabulary from its
/// tokenizer metadata, and the weights into the training layout.
/// </summary>
public static class GgufImport
{
    /// <summary>The model read: <paramref name="Parameters"/> in <see cref="ParameterLayout"/>'s layout, which lacks the
    /// block projections when they are kept as <paramref name="Frozen"/> (a LoRA run's compressed base).</summary>
    public sealed record Imported(LlamaShape Shape, TokenizerVocabulary Vocabulary, float[] Parameters, FrozenBase? Frozen = null);

    /// <summary>Whether any tensor of <paramref name="path"/> is stored in a type other than F32 and F16 (Q4_K, BF16 …):
    /// the trainer can then train LoRA adapters on it (<see cref="BaseStorage.Keep"/>) but not the weights.</summary>
    public static bool HasQuantizedTensors(string path)
    {
        if (!File.Exists(path)) return false;
        using var f = GgufFile.Open(path);
        return f.Tensors.Any(t => t.Type is not (GgmlType.F32 or GgmlType.F16));
    }

    /// <summary>Loads a base for LoRA training (the adapters are what trains): a quantized file's projections stay in
    /// their types (<see cref="BaseStorage.Keep"/>); an F32/F16 file's become F32 parameters, or NF4 with
    /// <paramref name="nf4"/> (QLoRA).</summary>
    public static Imported ReadForAdapters(string path, string caller = "--init", bool nf4 = false) =>
        Read(path, caller, storage: nf4 ? BaseStorage.Nf4 : HasQuantizedTensors(path) ? BaseStorage.Keep : BaseStorage.F32);

    /// <summary>Loads <paramref name="path"/>; throws a <see cref="CriaException"/> naming what does not fit the trainer,
    /// its message starting with <paramref name="caller"/> (the option that asked for it).
    /// <paramref name="swiftKv"/>: accept a SwiftKV model (<c>cria swiftkv</c>) and read its original tensors (SwiftKV
    /// distillation); otherwise it is refused.
    /// <paramref name="storage"/>: how the block projections are held — F32 parameters (F32/F16 files only), the file's
    /// own type (any type), or NF4 (QLoRA; F32/F16/BF16 files); with the last two, the other tensors may be in any type
    /// too and are dequantized to F32.</summary>
    public static Imported Read(string path, string caller = "--init", bool swiftKv = false, BaseStorage storage = BaseStorage.F32)
    {
        if (!File.Exists(path)) throw new CriaException($"{caller}: {path} does not exist");
        var vocab = TokenizerVocabulary.Load(path);
        using var f = GgufFile.Open(path);
        string arch = f.Get<string>("general.architecture", "");
        if (arch != "llama") throw new CriaException($"{caller}: {path} is a '{arch}' model; the trainer trains llama models");
        if (f.Get<int>("llama.expert_count", 0) > 0)
            throw new CriaException($"{caller}: {path} is a mixture-of-experts model; the trainer trains dense llama models");
        bool isSwift = f.Has("llama.swiftkv.kv_layers");
        if (isSwift && !swiftKv) throw new CriaException($"{caller}: {path} is a SwiftKV model; train the original model (SwiftKV files are distilled with `cria swiftkv --distill`)");
        int U(string key)
        {
            if (!f.Has(key)) throw new CriaException($"{caller}: {path} lacks {key}");
            return (int)f.Get<uint>(key);
        }
        int dim = U("llama.embedding_length"), heads = U("llama.attention.head_count");
        var shape = new LlamaShape
        {
            VocabSize = vocab.Count, Dim = dim, Layers = U("llama.block_count"), Heads = heads,
            KvHeads = f.Has("llama.attention.head_count_kv") ? U("llama.attention.head_count_kv") : heads,
            FfnDim = U("llama.feed_forward_length"), ContextLength = U("llama.context_length"),
            RopeBase = f.Get("llama.rope.freq_base", 10000f), RmsEps = f.Get("llama.attention.layer_norm_rms_epsilon", 1e-5f),
            TiedEmbeddings = !f.TryGetTensor("output.weight", out _),
            RopeScale = f.Get("llama.rope.scaling.type", "none") == "linear" ? f.Get("llama.rope.scaling.factor", 1f) : 1f,
        };
        var config = Models.ModelConfig.FromGguf(f); // validates the hybrid-attention keys as inference reads them
        if (config.HasWindowedLayers)
            shape = shape with { WindowLayers = config.WindowLayers, Window = config.Window, WindowSinks = config.WindowSinks };
        shape.Validate();
        if (f.Has("llama.rope.dimension_count") && U("llama.rope.dimension_count") != shape.HeadDim)
            throw new CriaException($"{caller}: {path} rotates {U("llama.rope.dimension_count")} of {shape.HeadDim} head dimensions; the trainer rotates all");
        if (f.Has("llama.rope.scaling.type") && f.Get<string>("llama.rope.scaling.type") is not ("none" or "linear"))
            throw new CriaException($"{caller}: {path} has RoPE scaling ({f.Get<string>("llama.rope.scaling.type")}); the trainer applies linear scaling only");
        bool frozen = storage != BaseStorage.F32;
        var layout = new ParameterLayout(shape, frozenMatrices: frozen);
        var p = new float[layout.Count];
        var matrices = new FrozenMatrix[frozen ? shape.Layers * 7 : 0];
        float[]? decoded = null; // NF4: one F32 matrix at a time, reused (a model's worth of temporaries otherwise)
        foreach (var t in layout.AllTensors)
        {
            if (!f.TryGetTensor(t.Name, out var info)) throw new CriaException($"{caller}: {path} lacks tensor {t.Name}");
            if (info.ElementCount != t.Count || info.RowLength != t.Cols)
                throw new CriaException($"{caller}: tensor {info} of {path} does not have the shape [{t.Cols}, {t.Rows}] its metadata implies");
            var src = f.TensorData(info);
            if (t.Offset < 0)
            {
                matrices[ProjectionIndex(t.Name)] = storage == BaseStorage.Keep
                    ? new GgmlFrozenMatrix(info.Type, src, t.Rows, t.Cols)
                    : info.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
                        ? new Nf4FrozenMatrix(Nf4Tensor.Quantize(DecodeInto(ref decoded, info.Type, src, t.Count), doubleQuant: true), t.Rows, t.Cols)
                        : throw new CriaException($"{caller}: --qlora quantizes an F32/F16/BF16 base to NF4, and tensor {info} of {path} is already {info.Type}; train LoRA on it as it is (without --qlora)");
                continue;
            }
            var dst = p.AsSpan((int)t.Offset, (int)t.Count);
            switch (info.Type)
            {
                case GgmlType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
                case GgmlType.F16:
                    var h = MemoryMarshal.Cast<byte, Half>(src);
                    for (int i = 0; i < dst.Length; i++) dst[i] = (float)h[i];
                    break;
                case var other when frozen: Dequantize.Row(other, src, dst); break;
                default: throw new CriaException($"{caller}: tensor {info} of {path} is {info.Type}; only F32 and F16 weights can be trained from (LoRA adapters, --lora-rank, can be trained on a quantized base)");
            }
        }
        int expected = layout.AllTensors.Length + (isSwift ? f.Tensors.Count(t => t.Name.Contains("swiftkv", StringComparison.Ordinal)) : 0);
        if (f.Tensors.Count != expected)
            throw new CriaException($"{caller}: {path} has {f.Tensors.Count} tensors, a llama model of this shape has {expected} (unknown extra tensors)");
        return new Imported(shape, vocab, p, frozen ? new FrozenBase(shape, matrices) : null);
    }

    /// <summary>[layer · 7 + target] of a block projection's tensor name (blk.N.attn_q.weight …).</summary>
    static int ProjectionIndex(string name)
    {
        var parts = name.Split('.');
        return int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) * 7 + Array.IndexOf(Models.LlamaLayer.ProjectionNames, parts[2]);
    }

    static Span<float> DecodeInto(ref float[]? buffer, GgmlType type, ReadOnlySpan<byte> src, long count)
    {
        if (buffer == null || buffer.Length < count) buffer = new float[count];
        var x = buffer.AsSpan(0, (int)count);
        Dequantize.Row(type, src, x);
        return x;
    }

}
