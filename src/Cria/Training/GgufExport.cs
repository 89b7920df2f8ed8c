using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>Writes trained parameters as a llama GGUF file (what llama.cpp's converter writes for a Llama model).</summary>
public static class GgufExport
{
    /// <summary>
    /// Writes <paramref name="parameters"/> (laid out by <paramref name="layout"/>) with the vocabulary's tokenizer
    /// metadata. Matrices are stored as <paramref name="weightType"/> (F32 or F16); norms stay F32. Atomic.
    /// </summary>
    public static void Write(string path, ParameterLayout layout, ReadOnlySpan<float> parameters, TokenizerVocabulary vocab,
        GgmlType weightType = GgmlType.F32, string name = "cria", IReadOnlyDictionary<string, object>? extraMetadata = null,
        (ParameterTensor[] Tensors, float[] Values)? extraTensors = null)
    {
        if (weightType is not (GgmlType.F32 or GgmlType.F16)) throw new CriaException($"export supports F32 and F16 weights, not {weightType}");
        var s = layout.Shape;
        if (vocab.Count != s.VocabSize) throw new CriaException($"the vocabulary has {vocab.Count} tokens but the model's is {s.VocabSize}");
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("general.name", name);
        w.Set("llama.context_length", (uint)s.ContextLength);
        w.Set("llama.embedding_length", (uint)s.Dim);
        w.Set("llama.block_count", (uint)s.Layers);
        w.Set("llama.feed_forward_length", (uint)s.FfnDim);
        w.Set("llama.attention.head_count", (uint)s.Heads);
        w.Set("llama.attention.head_count_kv", (uint)s.KvHeads);
        w.Set("llama.rope.dimension_count", (uint)s.HeadDim);
        w.Set("llama.attention.layer_norm_rms_epsilon", s.RmsEps);
        w.Set("llama.rope.freq_base", s.RopeBase);
        if (s.RopeScale > 1) { w.Set("llama.rope.scaling.type", "linear"); w.Set("llama.rope.scaling.factor", s.RopeScale); }
        if (s.WindowLayers != null)
        {
            w.Set("llama.attention.sliding_window", (uint)s.Window);
            w.Set("llama.attention.sliding_window_sinks", (uint)s.WindowSinks);
            w.Set("llama.attention.sliding_window_pattern", s.WindowLayers);
        }
        w.Set("llama.vocab_size", (uint)s.VocabSize);
        w.Set("general.file_type", (uint)RandomModel.FileType(weightType));
        if (extraMetadata != null) foreach (var (k, v) in extraMetadata) w.Set(k, v);
        vocab.WriteTo(w);
        foreach (var t in layout.Tensors) Add(t, parameters.Slice((int)t.Offset, (int)t.Count));
        if (extraTensors is var (tensors, values)) // a plug-in's tensors (Activation Beacon's), laid out by their own layout
            foreach (var t in tensors) Add(t, values.AsSpan((int)t.Offset, (int)t.Count));
        w.Write(path);

        void Add(ParameterTensor t, ReadOnlySpan<float> data)
        {
            long[] shape = t.Rows == 1 && !t.IsMatrix ? [t.Cols] : [t.Cols, t.Rows];
            var type = t.IsMatrix ? weightType : GgmlType.F32;
            byte[] bytes;
            if (type == GgmlType.F32) bytes = MemoryMarshal.AsBytes(data).ToArray();
            else
            {
                long rowBytes = GgmlTypeInfo.RowBytes(type, t.Cols);
                bytes = new byte[rowBytes * t.Rows];
                for (int r = 0; r < t.Rows; r++)
                    Quantize.Row(type, data.Slice(r * t.Cols, t.Cols), bytes.AsSpan((int)(r * rowBytes), (int)rowBytes));
            }
            w.AddTensor(t.Name, shape, type, bytes);
        }
    }
}
