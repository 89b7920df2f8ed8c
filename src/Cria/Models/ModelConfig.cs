using Cria.Formats;

namespace Cria.Models;

/// <summary>How RoPE frequencies are stretched for longer contexts (llama.cpp's rope_scaling_type).</summary>
public enum RopeScalingType { None, Linear, Yarn, Llama3 }

/// <summary>
/// Hyper-parameters of a Llama-family model, read from <c>llama.*</c> GGUF metadata the way llama.cpp reads them.
/// </summary>
public sealed record ModelConfig
{
    public string Architecture { get; init; } = "llama";
    /// <summary>OLMo 2's block (GGUF arch <c>olmo2</c>): no pre-norms; RMS norms on the whole q and k projections
    /// (QK-norm) before RoPE, and on the attention and feed-forward outputs before each residual add; NEOX RoPE.</summary>
    public bool IsOlmo2 => Architecture == "olmo2";
    /// <summary>OLMoE (GGUF arch <c>olmoe</c>): llama's pre-norm block with OLMo's QK-norm and NEOX RoPE, and a mixture
    /// of experts whose chosen weights are the softmax probabilities as they are (not renormalised).</summary>
    public bool IsOlmoe => Architecture == "olmoe";
    /// <summary>RMS norms over the whole q and k projections before RoPE (<c>attn_q_norm</c>, <c>attn_k_norm</c>).</summary>
    public bool QkNorm => IsOlmo2 || IsOlmoe;
    /// <summary>RoPE rotates (x[i], x[i + nRot/2]) — llama.cpp's LLAMA_ROPE_TYPE_NEOX, Hugging Face's rotate-half — rather
    /// than adjacent pairs (x[2i], x[2i + 1]), LLAMA_ROPE_TYPE_NORM, which llama GGUFs use after the converter's
    /// Q/K row permutation.</summary>
    public bool RopeNeox => IsOlmo2 || IsOlmoe;
    /// <summary>Whether a mixture's chosen expert weights are renormalised to sum to 1 (Mixtral: yes; OLMoE: no,
    /// Hugging Face's <c>norm_topk_prob = false</c>).</summary>
    public bool MoeRenormalize => !IsOlmoe;
    public string Name { get; init; } = "";
    public int ContextLength { get; init; }      // n_ctx_train
    public int Dim { get; init; }                // n_embd
    public int LayerCount { get; init; }         // n_layer
    public int HeadCount { get; init; }          // n_head
    public int KvHeadCount { get; init; }        // n_head_kv (GQA when < n_head)
    public int HeadDim { get; init; }            // n_embd_head_k (= n_embd / n_head unless key_length says otherwise)
    public int FfnDim { get; init; }             // n_ff (of each expert in a mixture-of-experts model)
    /// <summary>Experts per feed-forward layer (llama.cpp's n_expert, <c>llama.expert_count</c>); 0 = a dense model.</summary>
    public int ExpertCount { get; init; }
    /// <summary>Experts each token is routed to (n_expert_used, <c>llama.expert_used_count</c>; Mixtral: 2 of 8).</summary>
    public int ExpertUsedCount { get; init; }
    /// <summary>Whether the feed-forward layers are Mixtral-style mixtures of experts.</summary>
    public bool IsMoe => ExpertCount > 0;
    public int VocabSize { get; init; }
    public float RmsNormEps { get; init; } = 1e-5f;
    public float RopeFreqBase { get; init; } = 10000f;
    public int RopeDim { get; init; }            // n_rot: leading dims of each head that RoPE rotates
    public RopeScalingType RopeScaling { get; init; } = RopeScalingType.None;
    /// <summary>freq_scale = 1 / scaling factor (1 = no scaling).</summary>
    public float RopeFreqScale { get; init; } = 1f;
    public int RopeOriginalContext { get; init; }
    /// <summary>Per-pair frequency divisors (Llama 3.1/3.2 <c>rope_freqs.weight</c>); null when absent.</summary>
    public float[]? RopeFreqFactors { get; init; }

    /// <summary>YaRN (llama.cpp's cparams): ramp weight (−1 = 1 for YaRN, else 0), attention factor, β_fast, β_slow.</summary>
    public float YarnExtFactor { get; init; } = -1f;
    public float YarnAttnFactor { get; init; } = 1f;
    public float YarnBetaFast { get; init; } = 32f;
    public float YarnBetaSlow { get; init; } = 1f;

    /// <summary>The RoPE cos/sin pairs of position <paramref name="pos"/>, as llama.cpp builds them for this config
    /// (linear: θ·freq_scale; YaRN: ramp between interpolated and extrapolated θ over the correction dims, with mscale;
    /// llama3 and rope_freqs: per-pair divisors).</summary>
    public void RopeCache(int pos, Span<float> cosSin)
    {
        float freqScale = RopeScaling == RopeScalingType.None ? 1f : RopeFreqScale;
        float ext = YarnExtFactor >= 0 ? YarnExtFactor : RopeScaling == RopeScalingType.Yarn ? 1f : 0f;
        float low = 0, high = 0;
        if (ext != 0) (low, high) = YarnCorrDims(RopeDim, RopeOriginalContext > 0 ? RopeOriginalContext : ContextLength, RopeFreqBase, YarnBetaFast, YarnBetaSlow);
        Kernels.Ops.RopeCache(pos, RopeDim, RopeFreqBase, freqScale, RopeFreqFactors, ext, YarnAttnFactor, low, high, cosSin);
    }

    /// <summary>
    /// cos/sin of a pure rotation by <paramref name="delta"/> positions ([nRot] pairs): <see cref="RopeCache"/>'s angles
    /// with its magnitude (YaRN's mscale) divided out, so a key already rotated for position p becomes the key of
    /// position p + delta (θ is linear in the position for every scaling type).
    /// </summary>
    public void RopeRotation(int delta, Span<float> cosSin)
    {
        RopeCache(delta, cosSin);
        for (int i = 0; i < cosSin.Length; i += 2)
        {
            float m = MathF.Sqrt(cosSin[i] * cosSin[i] + cosSin[i + 1] * cosSin[i + 1]);
            cosSin[i] /= m; cosSin[i + 1] /= m;
        }
    }

    /// <summary>ggml_rope_yarn_corr_dims: the rotary dims where wavelengths cross β_fast and β_slow rotations over the
    /// original context, floored / ceiled and clamped to [0, nDims − 1].</summary>
    public static (float Low, float High) YarnCorrDims(int nDims, int nCtxOrig, float freqBase, float betaFast, float betaSlow)
    {
        static float Dim(int nDims, int nCtxOrig, float nRot, float b) => nDims * MathF.Log(nCtxOrig / (nRot * 2 * MathF.PI)) / (2 * MathF.Log(b));
        float start = MathF.Floor(Dim(nDims, nCtxOrig, betaFast, freqBase));
        float end = MathF.Ceiling(Dim(nDims, nCtxOrig, betaSlow, freqBase));
        return (MathF.Max(0, start), MathF.Min(nDims - 1, end));
    }

    /// <summary>SwiftKV (Qiao et al. 2024, SingleInputKV): layers from this index on take their keys and values from
    /// one input, the residual stream entering it normed by <c>swiftkv_norm</c>, through their own
    /// <c>attn_k_swiftkv</c> / <c>attn_v_swiftkv</c>, and their queries from <c>attn_q_swiftkv</c>; prompt rows that
    /// ask for no logits stop below it. 0 = off (<c>{arch}.swiftkv.kv_layers</c>).</summary>
    public int SwiftKvLayers { get; init; }
    /// <summary>AcrossKV: consecutive SwiftKV layers sharing one KV cache layer (the first of each group owns the
    /// projections; <c>{arch}.swiftkv.group_size</c>, 1 = no sharing).</summary>
    public int SwiftKvGroup { get; init; } = 1;
    public bool IsSwiftKv => SwiftKvLayers > 0;
    /// <summary>KV cache layers: one per layer below <see cref="SwiftKvLayers"/>, one per group of
    /// <see cref="SwiftKvGroup"/> above.</summary>
    public int KvLayerCount => IsSwiftKv ? SwiftKvLayers + (LayerCount - SwiftKvLayers + SwiftKvGroup - 1) / SwiftKvGroup : LayerCount;
    /// <summary>The KV cache layer that model layer <paramref name="layer"/> writes and reads.</summary>
    public int KvLayer(int layer) => !IsSwiftKv || layer < SwiftKvLayers ? layer : SwiftKvLayers + (layer - SwiftKvLayers) / SwiftKvGroup;
    /// <summary>Whether SwiftKV layer <paramref name="layer"/> owns K/V projections (the first of its AcrossKV group).</summary>
    public bool OwnsSwiftKv(int layer) => IsSwiftKv && layer >= SwiftKvLayers && (layer - SwiftKvLayers) % SwiftKvGroup == 0;

    /// <summary>LongGen's hybrid attention (Ge et al. 2024, "A Little Goes a Long Way"): the layers marked here attend
    /// only to the first <see cref="WindowSinks"/> positions of the sequence (attention sinks) and the last
    /// <see cref="Window"/> positions up to the query (a sliding window); the others attend to everything. Null = every
    /// layer attends to everything. GGUF: <c>{arch}.attention.sliding_window</c> (W),
    /// <c>{arch}.attention.sliding_window_pattern</c> (one bool per layer, true = windowed) and Cria's
    /// <c>{arch}.attention.sliding_window_sinks</c> (S).</summary>
    public bool[]? WindowLayers { get; init; }
    /// <summary>The sinks Cria's commands give windowed layers unless told otherwise: one KV block (StreamingLLM keeps 4).</summary>
    public const int DefaultWindowSinks = 16;
    public int Window { get; init; }
    public int WindowSinks { get; init; }
    public bool HasWindowedLayers => WindowLayers != null;

    /// <summary>Activation Beacon (Zhang et al. 2024): the text runs in windows of <see cref="BeaconWindow"/> raw tokens;
    /// each full window is condensed into W/α beacon tokens (their own embedding and attention projections,
    /// <c>*_beacon.weight</c>) whose keys and values replace the window's in the cache (<see cref="Inference.BeaconStream"/>).
    /// GGUF: Cria's <c>{arch}.beacon.window</c> and <c>{arch}.beacon.ratio</c> (α unless told otherwise). 0 = none.</summary>
    public int BeaconWindow { get; init; }
    public int BeaconRatio { get; init; }
    public bool HasBeacons => BeaconWindow > 0;
    /// <summary>Whether layer <paramref name="layer"/> attends through the sink + window mask.</summary>
    public bool IsWindowed(int layer) => WindowLayers != null && WindowLayers[layer];
    /// <summary>Whether a query at position <paramref name="queryPos"/> of a windowed layer sees the key at position
    /// <paramref name="keyPos"/> (≤ queryPos): a sink, or inside the window.</summary>
    public bool WindowSees(int queryPos, int keyPos) => keyPos < WindowSinks || keyPos > queryPos - Window;
    /// <summary>Whether a query at <paramref name="queryPos"/> sees any key whose position lies in [lo, hi].</summary>
    public bool WindowSeesAny(int queryPos, int lo, int hi) => lo < WindowSinks || hi > queryPos - Window;
    /// <summary>Whether it sees every position in [lo, hi] (the masked gap [S, queryPos − W] misses the range).</summary>
    public bool WindowSeesAll(int queryPos, int lo, int hi) => hi < WindowSinks || lo > queryPos - Window || queryPos - Window < WindowSinks;

    /// <summary>LongGen's layout: the middle third of the layers ([L/3, L − L/3)) keep full attention, the bottom and
    /// top thirds are windowed (6 layers: 0, 1, 4, 5 windowed; 32: 0–9 and 22–31).</summary>
    public static bool[] LongGenLayers(int layers)
    {
        var w = new bool[layers];
        for (int l = 0; l < layers; l++) w[l] = l < layers / 3 || l >= layers - layers / 3;
        return w;
    }

    /// <summary>"longgen" (<see cref="LongGenLayers"/>), "all", or a comma-separated list of the windowed layers.</summary>
    public static bool[] ParseWindowLayers(string spec, int layers)
    {
        if (spec == "longgen") return LongGenLayers(layers);
        var w = new bool[layers];
        if (spec == "all") { Array.Fill(w, true); return w; }
        foreach (var part in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, out int l) || l < 0 || l >= layers)
                throw new CriaException($"window layers: '{part}' is not a layer of this model (0..{layers - 1}); give longgen, all, or a list such as 0,1,4,5");
            w[l] = true;
        }
        if (!w.Contains(true)) throw new CriaException($"window layers '{spec}' names no layer");
        return w;
    }

    /// <summary>Which layers are windowed, as "layers 0,1,4,5 windowed (sinks 16 + window 256)"; empty without.</summary>
    public string WindowDescription => WindowLayers == null ? "" :
        $"layers {string.Join(",", Enumerable.Range(0, LayerCount).Where(l => WindowLayers[l]))} windowed (sinks {WindowSinks} + window {Window})";

    public int QDim => HeadCount * HeadDim;
    public int KvDim => KvHeadCount * HeadDim;
    /// <summary>Query heads per KV head (GQA group size).</summary>
    public int GroupSize => HeadCount / KvHeadCount;

    public static readonly string[] SupportedArchitectures = ["llama", "olmo2", "olmoe"];

    /// <summary>Rotates each of <paramref name="heads"/> heads of <paramref name="x"/> ([heads, HeadDim]) by a
    /// <see cref="RopeCache"/> table, in this model's RoPE layout (<see cref="RopeNeox"/>).</summary>
    public void Rope(Span<float> x, int heads, ReadOnlySpan<float> cosSin)
    {
        if (RopeNeox) Kernels.Ops.RopeNeox(x, heads, HeadDim, cosSin);
        else Kernels.Ops.RopeNorm(x, heads, HeadDim, cosSin);
    }

    /// <summary>The most experts per layer a file may declare (llama.cpp's LLAMA_MAX_EXPERTS is 512 in recent builds).</summary>
    public const int MaxExperts = 512;

    /// <summary>Reads and validates the hyper-parameters. Throws <see cref="ModelFormatException"/> naming the file.</summary>
    public static ModelConfig FromGguf(GgufFile f)
    {
        string arch = f.Get<string>("general.architecture", "");
        if (arch.Length == 0) throw new ModelFormatException(f.Path, "missing metadata key 'general.architecture'");
        if (Array.IndexOf(SupportedArchitectures, arch) < 0)
            throw new ModelFormatException(f.Path, $"unknown or unsupported architecture '{arch}' (supported: {string.Join(", ", SupportedArchitectures)})");
        string p = arch + ".";
        int dim = Positive(f, p + "embedding_length", f.Get<int>(p + "embedding_length"));
        int nHead = Positive(f, p + "attention.head_count", f.Get<int>(p + "attention.head_count"));
        int nKv = Positive(f, p + "attention.head_count_kv", f.Get<int>(p + "attention.head_count_kv", nHead));
        int headDim = Positive(f, p + "attention.key_length", f.Get<int>(p + "attention.key_length", dim / nHead));
        int valueDim = f.Get<int>(p + "attention.value_length", headDim);
        if (valueDim != headDim) throw new ModelFormatException(f.Path, $"value_length {valueDim} != key_length {headDim} is not supported");
        if (nHead % nKv != 0) throw new ModelFormatException(f.Path, $"head_count {nHead} is not a multiple of head_count_kv {nKv}");
        if (headDim % 2 != 0) throw new ModelFormatException(f.Path, $"head dimension {headDim} must be even for RoPE");
        int nRot = f.Get<int>(p + "rope.dimension_count", headDim);
        if (nRot <= 0 || nRot > headDim || nRot % 2 != 0) throw new ModelFormatException(f.Path, $"rope.dimension_count {nRot} must be even and in 1..{headDim}");
        int layers = Positive(f, p + "block_count", f.Get<int>(p + "block_count"));
        int ff = Positive(f, p + "feed_forward_length", f.Get<int>(p + "feed_forward_length"));
        int vocab = f.Get<int>(p + "vocab_size", 0);
        if (vocab <= 0 && f.Metadata.TryGetValue("tokenizer.ggml.tokens", out var toks) && toks is string[] ts) vocab = ts.Length;
        if (vocab <= 0 && f.TryGetTensor("token_embd.weight", out var emb) && emb.Shape.Length == 2) vocab = (int)Math.Min(emb.Shape[1], int.MaxValue);
        if (vocab <= 0) throw new ModelFormatException(f.Path, "cannot determine the vocabulary size");
        if (layers > 4096 || dim > 1 << 17 || nHead > 4096 || ff > 1 << 20)
            throw new ModelFormatException(f.Path, $"implausible hyper-parameters (layers {layers}, dim {dim}, heads {nHead}, ffn {ff})");
        if (arch is "olmo2" or "olmoe" && (nRot != headDim || nHead * headDim != dim))
            throw new ModelFormatException(f.Path, $"{arch} needs rope.dimension_count = head dimension and head_count × head dimension = embedding_length (got {nRot}, {nHead} × {headDim}, {dim})");
        if (arch == "olmoe" && nKv != nHead)
            throw new ModelFormatException(f.Path, $"olmoe's k norm spans embedding_length, so head_count_kv must equal head_count (got {nKv} of {nHead})");
        if (arch == "olmo2" && f.Get<int>(p + "attention.sliding_window", 0) > 0)
            throw new ModelFormatException(f.Path, "olmo2 with sliding-window attention (OLMo 3) is not supported");
        int experts = f.Get<int>(p + "expert_count", 0), expertsUsed = f.Get<int>(p + "expert_used_count", 0);
        if (experts < 0 || experts > MaxExperts || (experts > 0 && (expertsUsed < 1 || expertsUsed > experts)) || (experts == 0 && expertsUsed != 0))
            throw new ModelFormatException(f.Path, $"expert_count {experts} with expert_used_count {expertsUsed}: a mixture of experts needs 1 ≤ used ≤ count ≤ {MaxExperts}, a dense model neither key");
        if (arch != "llama" && (arch == "olmoe") != (experts > 0))
            throw new ModelFormatException(f.Path, arch == "olmoe" ? "olmoe needs expert_count and expert_used_count" : $"{arch} is a dense architecture but the file has expert_count {experts}");

        int swiftKv = f.Get<int>(p + "swiftkv.kv_layers", 0), swiftGroup = f.Get<int>(p + "swiftkv.group_size", 1);
        if (swiftKv != 0 && (arch != "llama" || swiftKv < 1 || swiftKv >= layers || swiftGroup < 1 || swiftGroup > layers - swiftKv))
            throw new ModelFormatException(f.Path, $"swiftkv.kv_layers {swiftKv} with group_size {swiftGroup}: SwiftKV needs the llama architecture (got {arch}), 1 ≤ kv_layers < block_count {layers} and 1 ≤ group_size ≤ block_count − kv_layers");

        bool[]? windowLayers = null;
        int window = f.Get<int>(p + "attention.sliding_window", 0), sinks = f.Get<int>(p + "attention.sliding_window_sinks", 0);
        int beaconWindow = f.Get<int>(p + "beacon.window", 0), beaconRatio = f.Get<int>(p + "beacon.ratio", 0);
        if (beaconWindow != 0 && (beaconWindow < 2 || beaconRatio < 1 || beaconWindow % beaconRatio != 0 || arch != "llama" || swiftKv != 0))
            throw new ModelFormatException(f.Path, $"beacon window {beaconWindow} with ratio {beaconRatio}: Activation Beacon needs the llama architecture without SwiftKV, a window ≥ 2 and a ratio that divides it");
        if (f.Has(p + "attention.sliding_window_pattern"))
        {
            windowLayers = f.Get<bool[]>(p + "attention.sliding_window_pattern");
            if (windowLayers.Length != layers || window < 1 || sinks < 0 || arch != "llama" || swiftKv != 0)
                throw new ModelFormatException(f.Path, $"sliding_window_pattern of {windowLayers.Length} layers with sliding_window {window} and sinks {sinks}: hybrid attention needs the llama architecture without SwiftKV, one bool per layer ({layers}), a window ≥ 1 and sinks ≥ 0");
            if (!windowLayers.Contains(true)) windowLayers = null;
        }
        // sliding_window without a pattern (what some Mistral conversions carry) is ignored, as llama.cpp ignores it for llama.

        var scaling = RopeScalingType.None;
        float freqScale = 1f;
        string type = f.Get<string>(p + "rope.scaling.type", "none");
        float factor = f.Get<float>(p + "rope.scaling.factor", 0f);
        if (factor == 0f && f.Has(p + "rope.scale_linear")) { factor = f.Get<float>(p + "rope.scale_linear"); type = "linear"; }
        switch (type)
        {
            case "none": break;
            case "linear": scaling = RopeScalingType.Linear; break;
            case "yarn": scaling = RopeScalingType.Yarn; break;
            case "llama3": scaling = RopeScalingType.Llama3; break;
            default: throw new ModelFormatException(f.Path, $"unsupported rope scaling type '{type}'");
        }
        if (scaling != RopeScalingType.None && factor > 0) freqScale = 1f / factor;
        if (!float.IsFinite(freqScale) || freqScale <= 0) throw new ModelFormatException(f.Path, $"bad rope scaling factor {factor}");

        float[]? freqFactors = null;
        if (f.TryGetTensor("rope_freqs.weight", out var rf))
        {
            if (rf.Type != Tensors.GgmlType.F32 || rf.ElementCount != nRot / 2)
                throw new ModelFormatException(f.Path, $"rope_freqs.weight must be F32 with {nRot / 2} elements, got {rf.Type} with {rf.ElementCount}");
            freqFactors = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(rf)).ToArray();
        }

        float eps = f.Get<float>(p + "attention.layer_norm_rms_epsilon", 1e-5f);
        float baseFreq = f.Get<float>(p + "rope.freq_base", 10000f);
        if (scaling == RopeScalingType.Llama3)
        {
            // llama3 scales through per-pair divisors (rope_freqs), not θ; computed here when the tensor is absent.
            freqFactors ??= RandomModel.Llama3FreqFactors(nRot, baseFreq, factor > 0 ? factor : 8f, 1f, 4f,
                f.Get<int>(p + "rope.scaling.original_context_length", 8192));
            freqScale = 1f;
        }
        if (!(eps > 0) || !(baseFreq > 1)) throw new ModelFormatException(f.Path, $"bad rms epsilon {eps} or rope base {baseFreq}");
        int ctx = f.Get<int>(p + "context_length", 2048);
        return new ModelConfig
        {
            Architecture = arch,
            Name = f.Get<string>("general.name", ""),
            ContextLength = ctx > 0 ? ctx : 2048,
            Dim = dim,
            LayerCount = layers,
            HeadCount = nHead,
            KvHeadCount = nKv,
            HeadDim = headDim,
            FfnDim = ff,
            ExpertCount = experts,
            ExpertUsedCount = expertsUsed,
            SwiftKvLayers = swiftKv,
            SwiftKvGroup = swiftKv > 0 ? swiftGroup : 1,
            WindowLayers = windowLayers,
            Window = windowLayers != null ? window : 0,
            WindowSinks = windowLayers != null ? sinks : 0,
            BeaconWindow = beaconWindow,
            BeaconRatio = beaconWindow != 0 ? beaconRatio : 0,
            VocabSize = vocab,
            RmsNormEps = eps,
            RopeFreqBase = baseFreq,
            RopeDim = nRot,
            RopeScaling = scaling,
            RopeFreqScale = freqScale,
            RopeOriginalContext = f.Get<int>(p + "rope.scaling.original_context_length", ctx),
            RopeFreqFactors = freqFactors,
            YarnExtFactor = f.Get<float>(p + "rope.scaling.yarn_ext_factor", -1f),
            YarnAttnFactor = f.Get<float>(p + "rope.scaling.yarn_attn_factor", f.Get<float>(p + "rope.scaling.attn_factor", 1f)),
            YarnBetaFast = f.Get<float>(p + "rope.scaling.yarn_beta_fast", 32f),
            YarnBetaSlow = f.Get<float>(p + "rope.scaling.yarn_beta_slow", 1f),
        };
    }

    /// <summary>The llama3 per-pair divisors (Llama 3.1's rope_scaling: low_freq_factor 1, high_freq_factor 4) for a
    /// scaling factor and original context, when a model has no rope_freqs tensor.</summary>
    public float[] Llama3FreqFactors(float factor, int originalContext, float lowFreqFactor = 1f, float highFreqFactor = 4f)
        => RandomModel.Llama3FreqFactors(RopeDim, RopeFreqBase, factor, lowFreqFactor, highFreqFactor, originalContext);

    static int Positive(GgufFile f, string key, int v) =>
        v > 0 ? v : throw new ModelFormatException(f.Path, $"metadata '{key}' must be positive, got {v}");
}

/// <summary>
/// Command-line RoPE overrides, named as llama.cpp names them: --rope-scaling none|linear|yarn|llama3, --rope-scale N
/// (context stretch factor; freq_scale = 1/N), --rope-freq-base B (NTK-aware scaling is a larger base),
/// --yarn-orig-ctx N, --yarn-ext-factor, --yarn-attn-factor, --yarn-beta-fast, --yarn-beta-slow.
/// </summary>
public sealed record RopeOverrides
{
    public RopeScalingType? Scaling { get; init; }
    public float Scale { get; init; }
    public float FreqBase { get; init; }
    public int YarnOrigCtx { get; init; }
    public float YarnExtFactor { get; init; } = -1f;
    public float YarnAttnFactor { get; init; } = -1f;
    public float YarnBetaFast { get; init; } = -1f;
    public float YarnBetaSlow { get; init; } = -1f;

    public static RopeScalingType ParseScaling(string s) => s.ToLowerInvariant() switch
    {
        "none" => RopeScalingType.None,
        "linear" => RopeScalingType.Linear,
        "yarn" => RopeScalingType.Yarn,
        "llama3" => RopeScalingType.Llama3,
        _ => throw new CriaException($"unknown rope scaling '{s}' (none, linear, yarn, llama3)"),
    };

    public ModelConfig Apply(ModelConfig c)
    {
        var type = Scaling ?? c.RopeScaling;
        float freqScale = Scale > 0 ? 1f / Scale : c.RopeFreqScale;
        int orig = YarnOrigCtx > 0 ? YarnOrigCtx : c.RopeOriginalContext > 0 ? c.RopeOriginalContext : c.ContextLength;
        var r = c with
        {
            RopeScaling = type,
            RopeFreqScale = type == RopeScalingType.None ? 1f : freqScale,
            RopeFreqBase = FreqBase > 0 ? FreqBase : c.RopeFreqBase,
            RopeOriginalContext = orig,
            // The context a scaled model is meant for (what the server admits by default): original × factor.
            ContextLength = type != RopeScalingType.None && Scale > 0 ? Math.Max(c.ContextLength, (int)(orig * Scale)) : c.ContextLength,
            YarnExtFactor = YarnExtFactor >= 0 ? YarnExtFactor : c.YarnExtFactor,
            YarnAttnFactor = YarnAttnFactor >= 0 ? YarnAttnFactor : c.YarnAttnFactor,
            YarnBetaFast = YarnBetaFast >= 0 ? YarnBetaFast : c.YarnBetaFast,
            YarnBetaSlow = YarnBetaSlow >= 0 ? YarnBetaSlow : c.YarnBetaSlow,
        };
        // llama3 without a rope_freqs tensor: the divisors come from the factor and original context; θ is not scaled.
        if (type == RopeScalingType.Llama3)
            r = r with { RopeFreqFactors = c.RopeFreqFactors ?? r.Llama3FreqFactors(Scale > 0 ? Scale : 1f / c.RopeFreqScale, orig), RopeFreqScale = 1f };
        return r;
    }
}

/// <summary>
/// Runs a model with LongGen's hybrid attention it was not trained with (training-free; CLI <c>--attn-window W</c>,
/// <c>--attn-window-sinks S</c>, <c>--attn-window-layers longgen|all|LIST</c>), or without the windows its file
/// declares (<c>--attn-window 0</c>).
/// </summary>
public sealed record AttentionWindowOverride(int Window, int Sinks = ModelConfig.DefaultWindowSinks, string Layers = "longgen")
{
    public ModelConfig Apply(ModelConfig c)
    {
        if (Window == 0) return c with { WindowLayers = null, Window = 0, WindowSinks = 0 };
        if (Window < 0 || Sinks < 0) throw new CriaException($"--attn-window {Window} --attn-window-sinks {Sinks}: both must be ≥ 0");
        if (c.Architecture != "llama" || c.IsSwiftKv) throw new CriaException($"hybrid attention runs llama models without SwiftKV (this one: {c.Architecture}{(c.IsSwiftKv ? ", SwiftKV" : "")})");
        return c with { WindowLayers = ModelConfig.ParseWindowLayers(Layers, c.LayerCount), Window = Window, WindowSinks = Sinks };
    }
}
