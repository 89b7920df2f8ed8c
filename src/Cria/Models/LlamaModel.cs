using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;
using Cria.Tokenization;

namespace Cria.Models;

/// <summary>The weights of one transformer block, viewed in place.</summary>
public sealed class LlamaLayer
{
    public required float[] AttnNorm { get; init; }   // [dim]
    public required WeightMatrix Wq { get; init; }    // [qDim rows, dim cols]
    public required WeightMatrix Wk { get; init; }    // [kvDim, dim]
    public required WeightMatrix Wv { get; init; }    // [kvDim, dim]
    public required WeightMatrix Wo { get; init; }    // [dim, qDim]
    public required float[] FfnNorm { get; init; }    // [dim]
    public required WeightMatrix WGate { get; init; } // [ff, dim]
    public required WeightMatrix WUp { get; init; }   // [ff, dim]
    public required WeightMatrix WDown { get; init; } // [dim, ff]

    /// <summary>The block's seven matrix products, in the order of <see cref="ProjectionNames"/>.</summary>
    public WeightMatrix[] Projections => [Wq, Wk, Wv, Wo, WGate, WUp, WDown];

    /// <summary>GGUF names of the projections (<c>blk.N.NAME.weight</c>): what LoRA adapters can target.</summary>
    public static readonly string[] ProjectionNames = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
}

/// <summary>
/// A Llama-family model opened from a GGUF file: hyper-parameters plus weight views into the memory map (no copy
/// of any matrix; only the small norm vectors are read into arrays). Tensor names and shapes follow llama.cpp.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    public GgufFile File { get; }
    public ModelConfig Config { get; }
    public WeightMatrix TokenEmbedding { get; }  // [vocab rows, dim cols]
    public float[] OutputNorm { get; }           // [dim]
    /// <summary>The output head; the token embedding when the file has no <c>output.weight</c> (tied embeddings).</summary>
    public WeightMatrix Output { get; }          // [vocab, dim]
    public bool TiedEmbeddings { get; }
    public IReadOnlyList<LlamaLayer> Layers { get; }
    /// <summary>The tokenizer described by the file's <c>tokenizer.ggml.*</c> metadata.</summary>
    public Tokenizer Tokenizer { get; }

    LlamaModel(GgufFile f)
    {
        File = f;
        var c = Config = ModelConfig.FromGguf(f);
        TokenEmbedding = WeightMatrix.Bind(f, "token_embd.weight", c.Dim, c.VocabSize);
        OutputNorm = Vector(f, "output_norm.weight", c.Dim);
        if (f.TryGetTensor("output.weight", out _)) Output = WeightMatrix.Bind(f, "output.weight", c.Dim, c.VocabSize);
        else { Output = TokenEmbedding; TiedEmbeddings = true; }
        var layers = new LlamaLayer[c.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"blk.{i}.";
            layers[i] = new LlamaLayer
            {
                AttnNorm = Vector(f, p + "attn_norm.weight", c.Dim),
                Wq = WeightMatrix.Bind(f, p + "attn_q.weight", c.Dim, c.QDim),
                Wk = WeightMatrix.Bind(f, p + "attn_k.weight", c.Dim, c.KvDim),
                Wv = WeightMatrix.Bind(f, p + "attn_v.weight", c.Dim, c.KvDim),
                Wo = WeightMatrix.Bind(f, p + "attn_output.weight", c.QDim, c.Dim),
                FfnNorm = Vector(f, p + "ffn_norm.weight", c.Dim),
                WGate = WeightMatrix.Bind(f, p + "ffn_gate.weight", c.Dim, c.FfnDim),
                WUp = WeightMatrix.Bind(f, p + "ffn_up.weight", c.Dim, c.FfnDim),
                WDown = WeightMatrix.Bind(f, p + "ffn_down.weight", c.FfnDim, c.Dim),
            };
        }
        Layers = layers;
        Tokenizer = Tokenizer.FromGguf(f);
        if (Tokenizer.VocabSize != c.VocabSize)
            throw new ModelFormatException(f.Path, $"the tokenizer has {Tokenizer.VocabSize} tokens but the model's vocabulary is {c.VocabSize}");
    }

    /// <summary>Opens a GGUF model, or a Hugging Face checkpoint folder (converted once into a temporary GGUF in the
    /// checkpoint's dtype, mapped, then unlinked; see <see cref="HfCheckpoint"/>). Throws <see cref="ModelFormatException"/>
    /// for any malformed or unsupported file.</summary>
    public static LlamaModel Open(string path)
    {
        if (HfCheckpoint.IsCheckpoint(path))
        {
            string tmp = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"cria-hf-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
            using (var ck = HfCheckpoint.Open(path)) ck.WriteGguf(tmp, ck.SourceType);
            try { return Open(tmp); }
            finally { try { System.IO.File.Delete(tmp); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } }
        }
        var f = GgufFile.Open(path);
        try
        {
            var model = new LlamaModel(f);
            f.MakeResident(); // weights resident, in 2 MiB pages where the OS allows: decode streams all of them per token
            return model;
        }
        catch { f.Dispose(); throw; }
    }

    /// <summary>Bytes of weights read to produce one token (every matrix except the embedding table, of which one row).</summary>
    public long WeightBytesPerToken
    {
        get
        {
            long b = Output.ByteSize + TokenEmbedding.RowBytes;
            foreach (var l in Layers) b += l.Wq.ByteSize + l.Wk.ByteSize + l.Wv.ByteSize + l.Wo.ByteSize + l.WGate.ByteSize + l.WUp.ByteSize + l.WDown.ByteSize;
            return b;
        }
    }

    static float[] Vector(GgufFile f, string name, int n)
    {
        var t = f.GetTensor(name);
        if (t.ElementCount != n || t.Shape.Length != 1)
            throw new ModelFormatException(f.Path, $"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{n}]");
        if (t.Type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
            throw new ModelFormatException(f.Path, $"tensor '{name}' has type {t.Type}; norm weights must be F32, F16 or BF16");
        var v = new float[n];
        Dequantize.Row(t.Type, f.TensorData(t), v);
        return v;
    }

    public void Dispose() => File.Dispose();
}
