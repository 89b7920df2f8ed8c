using Cria.Models;

namespace Cria.Training;

/// <summary>The shape of a Llama model to train (what GGUF's <c>llama.*</c> keys will say).</summary>
public sealed record LlamaShape
{
    public int VocabSize { get; init; } = 4096;
    public int Dim { get; init; } = 256;
    public int Layers { get; init; } = 4;
    public int Heads { get; init; } = 8;
    public int KvHeads { get; init; } = 2;
    public int FfnDim { get; init; } = 768;
    /// <summary>Training sequence length, written as the model's context length.</summary>
    public int ContextLength { get; init; } = 256;
    public float RopeBase { get; init; } = 10000f;
    /// <summary>Linear RoPE scaling (position interpolation, Chen et al. 2023; LongLoRA's setting): positions are
    /// divided by this factor, so a context this many times longer rotates as the original did. 1 = none. Written as
    /// <c>llama.rope.scaling.type = linear</c>, which inference applies.</summary>
    public float RopeScale { get; init; } = 1f;
    public float RmsEps { get; init; } = 1e-5f;
    /// <summary>Output head shares the token embedding (no <c>output.weight</c>).</summary>
    public bool TiedEmbeddings { get; init; }

    /// <summary>LongGen's hybrid attention (<see cref="ModelConfig.WindowLayers"/>): the layers marked true attend to
    /// the first <see cref="WindowSinks"/> positions and the last <see cref="Window"/> ones only. Null = full attention
    /// everywhere.</summary>
    public bool[]? WindowLayers { get; init; }
    public int Window { get; init; }
    public int WindowSinks { get; init; }

    /// <summary>Layer <paramref name="layer"/>'s window (0 = full attention).</summary>
    public int WindowOf(int layer) => WindowLayers != null && WindowLayers[layer] ? Window : 0;

    public int HeadDim => Dim / Heads;
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Throws a <see cref="CriaException"/> saying what is wrong with the shape.</summary>
    public void Validate()
    {
        void Positive(int v, string name) { if (v <= 0) throw new CriaException($"{name} must be positive, got {v}"); }
        Positive(VocabSize, "vocabulary size"); Positive(Dim, "dim"); Positive(Layers, "layers"); Positive(Heads, "heads");
        Positive(KvHeads, "kv heads"); Positive(FfnDim, "ffn dim"); Positive(ContextLength, "context length");
        if (Dim % Heads != 0) throw new CriaException($"dim {Dim} is not divisible by heads {Heads}");
        if (Heads % KvHeads != 0) throw new CriaException($"heads {Heads} is not divisible by kv heads {KvHeads}");
        if (HeadDim % 2 != 0) throw new CriaException($"head dimension {HeadDim} (dim / heads) must be even for RoPE");
        if (!(RmsEps > 0) || !(RopeBase > 1)) throw new CriaException($"bad rms epsilon {RmsEps} or rope base {RopeBase}");
        if (!(RopeScale >= 1) || !float.IsFinite(RopeScale)) throw new CriaException($"the RoPE scale (position interpolation factor) must be a number ≥ 1, got {RopeScale}");
        if (WindowLayers != null && (WindowLayers.Length != Layers || Window < 1 || WindowSinks < 0))
            throw new CriaException($"hybrid attention needs one flag per layer ({Layers}, got {WindowLayers.Length}), a window ≥ 1 (got {Window}) and sinks ≥ 0 (got {WindowSinks})");
    }

    /// <summary>The <see cref="ModelConfig"/> that Cria's inference reads back from the exported file.</summary>
    public ModelConfig ToModelConfig() => new()
    {
        ContextLength = ContextLength, Dim = Dim, LayerCount = Layers, HeadCount = Heads, KvHeadCount = KvHeads,
        HeadDim = HeadDim, FfnDim = FfnDim, VocabSize = VocabSize, RmsNormEps = RmsEps, RopeFreqBase = RopeBase, RopeDim = HeadDim,
        RopeScaling = RopeScale > 1 ? RopeScalingType.Linear : RopeScalingType.None, RopeFreqScale = 1f / RopeScale,
        WindowLayers = WindowLayers, Window = WindowLayers != null ? Window : 0, WindowSinks = WindowLayers != null ? WindowSinks : 0,
    };

    /// <summary>Which layers are windowed (<see cref="ModelConfig.WindowDescription"/>); empty without hybrid attention.</summary>
    public string WindowDescription => ToModelConfig().WindowDescription;

    public override string ToString() =>
        $"vocab {VocabSize}, dim {Dim}, layers {Layers}, heads {Heads}/{KvHeads}, ffn {FfnDim}, ctx {ContextLength}{(RopeScale > 1 ? $", RoPE linear ×{RopeScale}" : "")}{(WindowLayers != null ? ", " + WindowDescription : "")}{(TiedEmbeddings ? ", tied" : "")}";
}

/// <summary>One named tensor inside the flat parameter buffer. Matrices are [Rows, Cols] row-major (GGUF: ne = [Cols, Rows]).</summary>
public readonly record struct ParameterTensor(string Name, long Offset, int Rows, int Cols, bool IsMatrix)
{
    public long Count => (long)Rows * Cols;
}

/// <summary>Lays tensors out one after another in a flat array, each starting on a 16-float (64-byte) boundary: what
/// the plug-in layouts (LoRA, SwiftKV, Activation Beacon) are built with.</summary>
public sealed class TensorPacker
{
    readonly List<ParameterTensor> _tensors = new();
    /// <summary>Floats the array needs so far.</summary>
    public long Count { get; private set; }
    public ParameterTensor[] Tensors => _tensors.ToArray();

    /// <summary>Appends a [rows, cols] tensor; returns its offset.</summary>
    public long Add(string name, int rows, int cols, bool matrix)
    {
        long off = Count;
        _tensors.Add(new ParameterTensor(name, off, rows, cols, matrix));
        Count = (off + (long)rows * cols + 15) & ~15L;
        return off;
    }
}

/// <summary>
/// Where every tensor of a <see cref="LlamaShape"/> lives in one flat float buffer. Parameters, gradients and both
/// AdamW moments use this same layout, so zeroing, clipping and the optimizer are single loops.
/// </summary>
public sealed class ParameterLayout
{
    public LlamaShape Shape { get; }
    public ParameterTensor[] Tensors { get; }
    public long Count { get; }
    public long TokenEmbedding { get; }
    public long OutputNorm { get; }
    /// <summary>Offset of the output head (the token embedding when tied).</summary>
    public long Output { get; }
    public LayerOffsets[] Blocks { get; }
    /// <summary>Every tensor of the model in file order, the frozen projections (offset −1) included.</summary>
    public ParameterTensor[] AllTensors { get; }

    public readonly record struct LayerOffsets(long AttnNorm, long Wq, long Wk, long Wv, long Wo, long FfnNorm, long WGate, long WUp, long WDown)
    {
        /// <summary>Offset of projection <paramref name="target"/> in LoRA's order q, k, v, o, gate, up, down.</summary>
        public long Matrix(int target) => target switch
        {
            0 => Wq, 1 => Wk, 2 => Wv, 3 => Wo, 4 => WGate, 5 => WUp, 6 => WDown,
            _ => throw new ArgumentOutOfRangeException(nameof(target)),
        };
    }

    /// <param name="frozenMatrices">The blocks' seven projections live outside the parameters (a LoRA run's
    /// <see cref="FrozenBase"/>): their offsets are then −1 and <see cref="Tensors"/> lacks them.</param>
    public ParameterLayout(LlamaShape s, bool frozenMatrices = false)
    {
        Shape = s;
        var list = new List<ParameterTensor>();
        var all = new List<ParameterTensor>();
        long at = 0;
        long Add(string name, int rows, int cols, bool matrix, bool projection = false)
        {
            if (projection && frozenMatrices) { all.Add(new ParameterTensor(name, -1, rows, cols, matrix)); return -1; }
            long off = at;
            list.Add(new ParameterTensor(name, off, rows, cols, matrix));
            all.Add(list[^1]);
            at += (long)rows * cols;
            at = (at + 15) & ~15L; // 64-byte alignment of every tensor
            return off;
        }
        int d = s.Dim, kv = s.KvDim, f = s.FfnDim;
        TokenEmbedding = Add("token_embd.weight", s.VocabSize, d, true);
        Blocks = new LayerOffsets[s.Layers];
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"blk.{l}.";
            Blocks[l] = new LayerOffsets(
                Add(p + "attn_norm.weight", 1, d, false),
                Add(p + "attn_q.weight", d, d, true, true),
                Add(p + "attn_k.weight", kv, d, true, true),
                Add(p + "attn_v.weight", kv, d, true, true),
                Add(p + "attn_output.weight", d, d, true, true),
                Add(p + "ffn_norm.weight", 1, d, false),
                Add(p + "ffn_gate.weight", f, d, true, true),
                Add(p + "ffn_up.weight", f, d, true, true),
                Add(p + "ffn_down.weight", d, f, true, true));
        }
        OutputNorm = Add("output_norm.weight", 1, d, false);
        Output = s.TiedEmbeddings ? TokenEmbedding : Add("output.weight", s.VocabSize, d, true);
        Tensors = list.ToArray();
        AllTensors = all.ToArray();
        Count = at;
    }

    /// <summary>Number of trained parameters (padding excluded).</summary>
    public long ParameterCount => Tensors.Sum(t => t.Count);
}

/// <summary>
/// The trainable tensors of SwiftKV distillation (<see cref="SwiftKv"/>), in one flat buffer: swiftkv_norm, then per
/// layer l ≥ L its attn_q_swiftkv, and per AcrossKV owner its attn_k_swiftkv / attn_v_swiftkv (GGUF names). Everything
/// else of the model is frozen.
/// </summary>
public sealed class SwiftKvLayout
{
    public int KvLayers { get; }
    public int Group { get; }
    public ParameterTensor[] Tensors { get; }
    public long Count { get; }
    public long Norm { get; }     // [D]
    public long[] Wq { get; }     // [layer − L] → [QD, D]
    public long[] Wk { get; }     // [owner] → [KV, D]
    public long[] Wv { get; }     // [owner] → [KV, D]
    public int Owners => Wk.Length;
    /// <summary>The owner (AcrossKV group) of layer <paramref name="layer"/> ≥ L.</summary>
    public int OwnerOf(int layer) => (layer - KvLayers) / Group;

    public SwiftKvLayout(LlamaShape s, int kvLayers, int group)
    {
        if (kvLayers < 1 || kvLayers >= s.Layers || group < 1 || group > s.Layers - kvLayers)
            throw new CriaException($"SwiftKV: kv_layers {kvLayers} with group {group} does not fit {s.Layers} layers");
        KvLayers = kvLayers; Group = group;
        var packer = new TensorPacker();
        var Add = packer.Add;
        Norm = Add("swiftkv_norm.weight", 1, s.Dim, false);
        Wq = new long[s.Layers - kvLayers];
        int owners = (s.Layers - kvLayers + group - 1) / group;
        Wk = new long[owners]; Wv = new long[owners];
        for (int l = kvLayers; l < s.Layers; l++)
        {
            Wq[l - kvLayers] = Add($"blk.{l}.attn_q_swiftkv.weight", s.Dim, s.Dim, true);
            if ((l - kvLayers) % group != 0) continue;
            Wk[OwnerOf(l)] = Add($"blk.{l}.attn_k_swiftkv.weight", s.KvDim, s.Dim, true);
            Wv[OwnerOf(l)] = Add($"blk.{l}.attn_v_swiftkv.weight", s.KvDim, s.Dim, true);
        }
        Tensors = packer.Tensors;
        Count = packer.Count;
    }
}
