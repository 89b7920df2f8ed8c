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
    public sealed record Imported(LlamaShape Shape, TokenizerVocabulary Vocabulary, float[] Parameters);

    /// <summary>Loads <paramref name="path"/>; throws a <see cref="CriaException"/> naming what does not fit the trainer,
    /// its message starting with <paramref name="caller"/> (the option that asked for it).
    /// <paramref name="swiftKv"/>: accept a SwiftKV model (<c>cria swiftkv</c>) and read its original tensors (SwiftKV
    /// distillation); otherwise it is refused.</summary>
    public static Imported Read(string path, string caller = "--init", bool swiftKv = false)
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
        shape.Validate();
        if (f.Has("llama.rope.dimension_count") && U("llama.rope.dimension_count") != shape.HeadDim)
            throw new CriaException($"{caller}: {path} rotates {U("llama.rope.dimension_count")} of {shape.HeadDim} head dimensions; the trainer rotates all");
        if (f.Has("llama.rope.scaling.type") && f.Get<string>("llama.rope.scaling.type") is not ("none" or "linear"))
            throw new CriaException($"{caller}: {path} has RoPE scaling ({f.Get<string>("llama.rope.scaling.type")}); the trainer applies linear scaling only");
        var layout = new ParameterLayout(shape);
        var p = new float[layout.Count];
        foreach (var t in layout.Tensors)
        {
            if (!f.TryGetTensor(t.Name, out var info)) throw new CriaException($"{caller}: {path} lacks tensor {t.Name}");
            if (info.ElementCount != t.Count || info.RowLength != t.Cols)
                throw new CriaException($"{caller}: tensor {info} of {path} does not have the shape [{t.Cols}, {t.Rows}] its metadata implies");
            var dst = p.AsSpan((int)t.Offset, (int)t.Count);
            var src = f.TensorData(info);
            switch (info.Type)
            {
                case GgmlType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
                case GgmlType.F16:
                    var h = MemoryMarshal.Cast<byte, Half>(src);
                    for (int i = 0; i < dst.Length; i++) dst[i] = (float)h[i];
                    break;
                default: throw new CriaException($"{caller}: tensor {info} of {path} is {info.Type}; only F32 and F16 weights can be trained from");
            }
        }
        int expected = layout.Tensors.Length + (isSwift ? f.Tensors.Count(t => t.Name.Contains("swiftkv", StringComparison.Ordinal)) : 0);
        if (f.Tensors.Count != expected)
            throw new CriaException($"{caller}: {path} has {f.Tensors.Count} tensors, a llama model of this shape has {expected} (unknown extra tensors)");
        return new Imported(shape, vocab, p);
    }
}
