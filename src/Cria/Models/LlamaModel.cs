using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;
using Cria.Tokenization;

namespace Cria.Models;

/// <summary>The weights of one transformer block, viewed in place.</summary>
public sealed class LlamaLayer
{
    /// <summary>Pre-norm of the attention input (llama); null in OLMo 2, whose blocks norm outputs instead.</summary>
    public float[]? AttnNorm { get; init; }           // [dim]
    public required WeightMatrix Wq { get; init; }    // [qDim rows, dim cols]
    public required WeightMatrix Wk { get; init; }    // [kvDim, dim]
    public required WeightMatrix Wv { get; init; }    // [kvDim, dim]
    public required WeightMatrix Wo { get; init; }    // [dim, qDim]
    /// <summary>Pre-norm of the feed-forward input (llama); null in OLMo 2.</summary>
    public float[]? FfnNorm { get; init; }            // [dim]
    // QK-norm over the whole projections before RoPE (ModelConfig.QkNorm: OLMo 2, OLMoE), and OLMo 2's post-norms of
    // the attention and feed-forward outputs before their residual adds (attn_q_norm, attn_k_norm, post_attention_norm,
    // post_ffw_norm); null otherwise.
    public float[]? QNorm { get; init; }              // [qDim]
    public float[]? KNorm { get; init; }              // [kvDim]
    public float[]? PostAttnNorm { get; init; }       // [dim]
    public float[]? PostFfnNorm { get; init; }        // [dim]
    // Dense feed-forward (unset when Experts is set).
    public WeightMatrix WGate { get; init; }          // [ff, dim]
    public WeightMatrix WUp { get; init; }            // [ff, dim]
    public WeightMatrix WDown { get; init; }          // [dim, ff]
    /// <summary>The mixture-of-experts feed-forward of a Mixtral-style model; null for a dense block.</summary>
    public MoeExperts? Experts { get; init; }
    // SwiftKV layers (ModelConfig.SwiftKvLayers and above): the query projection used instead of Wq, and, in the first
    // layer of each AcrossKV group, the key/value projections of the single input swiftkv_norm(x_L); null otherwise.
    public WeightMatrix? WqSwift { get; init; }       // [qDim, dim]   attn_q_swiftkv
    public WeightMatrix? WkSwift { get; init; }       // [kvDim, dim]  attn_k_swiftkv
    public WeightMatrix? WvSwift { get; init; }       // [kvDim, dim]  attn_v_swiftkv
    /// <summary>Activation Beacon: the beacon tokens' attention projections (<c>attn_q/k/v/output_beacon</c>); null without.</summary>
    public BeaconAttention? Beacon { get; init; }

    /// <summary>The block's matrix products in the order of <see cref="ProjectionNames"/>: seven for a dense block,
    /// the four attention ones for a mixture-of-experts block (what LoRA adapters can target).</summary>
    public WeightMatrix[] Projections => Experts == null ? [Wq, Wk, Wv, Wo, WGate, WUp, WDown] : [Wq, Wk, Wv, Wo];

    /// <summary>Every matrix the block multiplies by: the projections, and a mixture's router and experts.</summary>
    public IEnumerable<WeightMatrix> Matrices => (Experts == null ? Projections
        : Projections.Concat([Experts.Router]).Concat(Experts.Gate).Concat(Experts.Up).Concat(Experts.Down))
        .Concat(new[] { WqSwift, WkSwift, WvSwift }.Where(w => w != null).Select(w => w!.Value))
        .Concat(Beacon is { } b ? new WeightMatrix?[] { b.Wq, b.Wk, b.Wv, b.Wo, b.Up, b.Down }.Where(w => w != null).Select(w => w!.Value) : []);

    /// <summary>GGUF names of the projections (<c>blk.N.NAME.weight</c>): what LoRA adapters can target.</summary>
    public static readonly string[] ProjectionNames = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
}

/// <summary>Activation Beacon's projections of one layer, used by beacon rows in place of the layer's own: attention, and
/// with the "mlp" beacon parameters the feed-forward's up and down (the gate is shared).</summary>
public sealed record BeaconAttention(WeightMatrix Wq, WeightMatrix Wk, WeightMatrix Wv, WeightMatrix Wo, WeightMatrix? Up = null, WeightMatrix? Down = null);

/// <summary>
/// A Mixtral-style mixture-of-experts feed-forward (llama.cpp's <c>build_moe_ffn</c> for the llama architecture):
/// p = softmax(router · x) over the n_expert experts, the n_expert_used most probable are kept with their
/// probabilities renormalised to sum to 1 (OLMoE keeps them as they are), and y = Σ_e w_e · down_e(SiLU(gate_e · x) ⊙ up_e · x). Each expert is a
/// view into the layer's stacked 3-D tensor (GGUF ne = {cols, rows, n_expert}: expert e's rows follow expert e − 1's),
/// or, in older files, its own 2-D tensor (<c>blk.N.ffn_gate.E.weight</c>).
/// </summary>
public sealed class MoeExperts
{
    public required WeightMatrix Router { get; init; }  // [nExpert, dim]        ffn_gate_inp
    public required WeightMatrix[] Gate { get; init; }  // nExpert × [ff, dim]   ffn_gate_exps
    public required WeightMatrix[] Up { get; init; }    // nExpert × [ff, dim]   ffn_up_exps
    public required WeightMatrix[] Down { get; init; }  // nExpert × [dim, ff]   ffn_down_exps
    public int Count => Gate.Length;

    /// <summary>
    /// Routes one row: <paramref name="logits"/> [nExpert] (overwritten with the softmax probabilities, as ggml_soft_max
    /// computes them: exp(l − max), summed in double, scaled by 1/sum) → <paramref name="chosen"/> [k], the k most
    /// probable experts, most probable first (ties to the lower index), and <paramref name="weights"/> [k], their
    /// probabilities divided by their sum (as they are, without <paramref name="renormalize"/>).
    /// </summary>
    public static void Route(Span<float> logits, Span<int> chosen, Span<float> weights, bool renormalize = true)
    {
        float max = float.NegativeInfinity;
        foreach (float l in logits) max = MathF.Max(max, l);
        double sum = 0;
        for (int e = 0; e < logits.Length; e++) { float p = MathF.Exp(logits[e] - max); logits[e] = p; sum += p; }
        float inv = (float)(1.0 / sum);
        for (int e = 0; e < logits.Length; e++) logits[e] *= inv;
        double kept = 0;
        for (int j = 0; j < chosen.Length; j++)
        {
            int best = -1;
            for (int e = 0; e < logits.Length; e++)
                if ((best < 0 || logits[e] > logits[best]) && chosen[..j].IndexOf(e) < 0) best = e;
            chosen[j] = best;
            weights[j] = logits[best];
            kept += logits[best];
        }
        if (renormalize)
            for (int j = 0; j < weights.Length; j++) weights[j] /= (float)kept;
    }
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
    /// <summary>SwiftKV's norm of the residual stream entering layer <see cref="ModelConfig.SwiftKvLayers"/>, the one
    /// input of every later layer's keys and values (<c>swiftkv_norm.weight</c>); null without SwiftKV.</summary>
    public float[]? SwiftKvNorm { get; }         // [dim]
    /// <summary>Whether the file holds the original attn_q/k/v of every SwiftKV layer (what <c>cria swiftkv</c> writes),
    /// so the original model runs from it (<c>--swiftkv off</c>) and it can be distilled. A converted checkpoint may
    /// lack them; the layers' Wq/Wk/Wv then view the SwiftKV projections.</summary>
    public bool HasOriginalAttention { get; } = true;
    /// <summary>Activation Beacon: the beacon token's input embedding (<c>token_embd_beacon.weight</c>); null without.</summary>
    public float[]? BeaconEmbedding { get; }     // [dim]
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
        if (c.IsSwiftKv) SwiftKvNorm = Vector(f, "swiftkv_norm.weight", c.Dim);
        if (c.HasBeacons) BeaconEmbedding = Vector(f, "token_embd_beacon.weight", c.Dim);
        var layers = new LlamaLayer[c.LayerCount];
        for (int i = 0; i < layers.Length; i++)
        {
            string p = $"blk.{i}.";
            bool moe = c.IsMoe, olmo2 = c.IsOlmo2, qk = c.QkNorm, swift = c.IsSwiftKv && i >= c.SwiftKvLayers, owns = c.OwnsSwiftKv(i);
            bool original = !swift || f.TryGetTensor(p + "attn_q.weight", out _);
            if (!original) HasOriginalAttention = false;
            string kvFrom = swift && !original ? $"blk.{c.SwiftKvLayers + (i - c.SwiftKvLayers) / c.SwiftKvGroup * c.SwiftKvGroup}." : p;
            layers[i] = new LlamaLayer
            {
                AttnNorm = olmo2 ? null : Vector(f, p + "attn_norm.weight", c.Dim),
                Wq = WeightMatrix.Bind(f, p + (original ? "attn_q.weight" : "attn_q_swiftkv.weight"), c.Dim, c.QDim),
                Wk = WeightMatrix.Bind(f, kvFrom + (original ? "attn_k.weight" : "attn_k_swiftkv.weight"), c.Dim, c.KvDim),
                Wv = WeightMatrix.Bind(f, kvFrom + (original ? "attn_v.weight" : "attn_v_swiftkv.weight"), c.Dim, c.KvDim),
                Wo = WeightMatrix.Bind(f, p + "attn_output.weight", c.QDim, c.Dim),
                FfnNorm = olmo2 ? null : Vector(f, p + "ffn_norm.weight", c.Dim),
                QNorm = qk ? Vector(f, p + "attn_q_norm.weight", c.QDim) : null,
                KNorm = qk ? Vector(f, p + "attn_k_norm.weight", c.KvDim) : null,
                PostAttnNorm = olmo2 ? Vector(f, p + "post_attention_norm.weight", c.Dim) : null,
                PostFfnNorm = olmo2 ? Vector(f, p + "post_ffw_norm.weight", c.Dim) : null,
                WGate = moe ? default : WeightMatrix.Bind(f, p + "ffn_gate.weight", c.Dim, c.FfnDim),
                WUp = moe ? default : WeightMatrix.Bind(f, p + "ffn_up.weight", c.Dim, c.FfnDim),
                WDown = moe ? default : WeightMatrix.Bind(f, p + "ffn_down.weight", c.FfnDim, c.Dim),
                Experts = moe ? new MoeExperts
                {
                    Router = WeightMatrix.Bind(f, p + "ffn_gate_inp.weight", c.Dim, c.ExpertCount),
                    Gate = WeightMatrix.BindExperts(f, p + "ffn_gate", c.Dim, c.FfnDim, c.ExpertCount),
                    Up = WeightMatrix.BindExperts(f, p + "ffn_up", c.Dim, c.FfnDim, c.ExpertCount),
                    Down = WeightMatrix.BindExperts(f, p + "ffn_down", c.FfnDim, c.Dim, c.ExpertCount),
                } : null,
                WqSwift = swift ? WeightMatrix.Bind(f, p + "attn_q_swiftkv.weight", c.Dim, c.QDim) : null,
                WkSwift = owns ? WeightMatrix.Bind(f, p + "attn_k_swiftkv.weight", c.Dim, c.KvDim) : null,
                WvSwift = owns ? WeightMatrix.Bind(f, p + "attn_v_swiftkv.weight", c.Dim, c.KvDim) : null,
                Beacon = c.HasBeacons ? new BeaconAttention(
                    WeightMatrix.Bind(f, p + "attn_q_beacon.weight", c.Dim, c.QDim), WeightMatrix.Bind(f, p + "attn_k_beacon.weight", c.Dim, c.KvDim),
                    WeightMatrix.Bind(f, p + "attn_v_beacon.weight", c.Dim, c.KvDim), WeightMatrix.Bind(f, p + "attn_output_beacon.weight", c.QDim, c.Dim),
                    f.TryGetTensor(p + "ffn_up_beacon.weight", out _) ? WeightMatrix.Bind(f, p + "ffn_up_beacon.weight", c.Dim, c.FfnDim) : null,
                    f.TryGetTensor(p + "ffn_up_beacon.weight", out _) ? WeightMatrix.Bind(f, p + "ffn_down_beacon.weight", c.FfnDim, c.Dim) : null) : null, // up without down is refused
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

    /// <summary>Bytes of weights read to produce one token (every matrix except the embedding table, of which one row;
    /// of a mixture of experts, the router and n_expert_used of the n_expert experts).</summary>
    public long WeightBytesPerToken
    {
        get
        {
            long b = Output.ByteSize + TokenEmbedding.RowBytes;
            foreach (var l in Layers)
            {
                foreach (var w in l.Projections) b += w.ByteSize;
                if (l.Experts is { } e)
                {
                    long experts = 0;
                    for (int i = 0; i < e.Count; i++) experts += e.Gate[i].ByteSize + e.Up[i].ByteSize + e.Down[i].ByteSize;
                    b += e.Router.ByteSize + experts * Config.ExpertUsedCount / e.Count;
                }
            }
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
