using System.Text.Json;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>
/// A Hugging Face Llama checkpoint folder: <c>config.json</c>, <c>tokenizer.json</c> (+ <c>tokenizer_config.json</c>
/// with the chat template) and one <c>model.safetensors</c> or shards listed in <c>model.safetensors.index.json</c>
/// (F32/F16/BF16). <see cref="WriteGguf"/> lays it out as llama.cpp's convert_hf_to_gguf.py does: tensor names mapped
/// to llama.cpp's, 2-D weights in the output type and norms in F32, and the rows of q_proj/k_proj permuted from
/// Hugging Face's rotate-half RoPE order (each head's first half of dimensions, then its second) to the interleaved
/// pairs GGUF's RoPE expects. Running a folder directly goes through the same conversion once, into a temporary
/// GGUF file that is memory-mapped and then unlinked (<see cref="LlamaModel.Open"/>). A Mixtral checkpoint
/// (<c>MixtralForCausalLM</c>: <c>num_local_experts</c>, <c>num_experts_per_tok</c>, <c>block_sparse_moe.gate</c> and
/// <c>experts.E.w1/w2/w3</c>) becomes llama.cpp's mixture-of-experts layout: the router as <c>ffn_gate_inp</c> in F32,
/// each projection's experts stacked into one 3-D tensor (w1 → ffn_gate_exps, w3 → ffn_up_exps, w2 → ffn_down_exps).
/// An OLMo 2 checkpoint (<c>Olmo2ForCausalLM</c>) becomes an <c>olmo2</c> GGUF: q_norm / k_norm → attn_q_norm /
/// attn_k_norm, post_attention_layernorm → post_attention_norm, post_feedforward_layernorm → post_ffw_norm, and no
/// q/k permutation (llama.cpp runs olmo2 with NEOX RoPE, Hugging Face's own layout). An OLMoE checkpoint
/// (<c>OlmoeForCausalLM</c>) becomes an <c>olmoe</c> GGUF: llama's norms plus q_norm / k_norm, the router
/// <c>mlp.gate</c> and the experts <c>mlp.experts.E.{gate,up,down}_proj</c> stacked, no permutation. A SwiftKV checkpoint
/// (ArcticTraining's <c>LlamaSwiftKVForCausalLM</c>, <c>model_type</c> llama_swiftkv with <c>swiftkv</c> true,
/// <c>num_key_value_layers</c> L and <c>key_value_group_size</c>) becomes a SwiftKV llama GGUF (docs/swiftkv.md):
/// model.norm_swiftkv → swiftkv_norm, self_attn.{q,k,v}_proj_swiftkv → attn_{q,k,v}_swiftkv (q and k permuted like
/// q_proj/k_proj); the upper layers' original q/k/v_proj are kept when the checkpoint has them.
/// </summary>
public sealed class HfCheckpoint : IDisposable
{
    public string Directory { get; }
    public string ConfigPath { get; }
    /// <summary>The GGUF architecture the checkpoint converts to: "llama" (Llama, Mixtral) or "olmo2".</summary>
    public string Architecture { get; private init; } = "llama";
    bool Olmo2 => Architecture == "olmo2";
    bool Olmoe => Architecture == "olmoe";
    public int Dim { get; private init; }
    public int Layers { get; private init; }
    public int Heads { get; private init; }
    public int KvHeads { get; private init; }
    public int HeadDim { get; private init; }
    public int FfnDim { get; private init; }
    /// <summary>Mixtral: experts per layer (0 for a dense Llama checkpoint) and experts per token.</summary>
    public int Experts { get; private init; }
    public int ExpertsUsed { get; private init; }
    public int VocabSize { get; private init; }
    public int ContextLength { get; private init; }
    public float RmsEps { get; private init; }
    public float RopeTheta { get; private init; }
    /// <summary>SwiftKV: the first layer whose K/V come from norm_swiftkv's output (0 = not SwiftKV), and the AcrossKV group.</summary>
    public int SwiftKvLayers { get; private init; }
    public int SwiftKvGroup { get; private init; } = 1;
    public bool TiedEmbeddings { get; private init; }
    public JsonElement? RopeScaling { get; private init; }
    readonly List<SafetensorsFile> _files = new();
    readonly Dictionary<string, (SafetensorsFile File, SafetensorsTensor Tensor)> _tensors = new(StringComparer.Ordinal);
    JsonDocument? _config;

    public static bool IsCheckpoint(string path) => System.IO.Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, "config.json"));

    HfCheckpoint(string dir)
    {
        Directory = dir;
        ConfigPath = System.IO.Path.Combine(dir, "config.json");
    }

    public static HfCheckpoint Open(string dir)
    {
        var ck = OpenConfig(dir);
        try { ck.OpenTensors(); ck.Validate(); return ck; }
        catch { ck.Dispose(); throw; }
    }

    static HfCheckpoint OpenConfig(string dir)
    {
        string cfgPath = System.IO.Path.Combine(dir, "config.json");
        if (!File.Exists(cfgPath)) throw new ModelFormatException(cfgPath, "not found (a Hugging Face checkpoint folder needs config.json)");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(cfgPath)); }
        catch (JsonException ex) { throw new ModelFormatException(cfgPath, "not valid JSON: " + ex.Message, ex); }
        var c = doc.RootElement;
        string modelType = Str(c, "model_type") ?? "";
        bool Arch(string n) => c.TryGetProperty("architectures", out var arch) && arch.ValueKind == JsonValueKind.Array
            && arch.EnumerateArray().Any(a => a.ValueKind == JsonValueKind.String && a.GetString() == n);
        bool mixtral = modelType == "mixtral" || Arch("MixtralForCausalLM");
        bool olmo2 = modelType == "olmo2" || Arch("Olmo2ForCausalLM");
        bool olmoe = modelType == "olmoe" || Arch("OlmoeForCausalLM");
        bool swiftArch = modelType == "llama_swiftkv" || Arch("LlamaSwiftKVForCausalLM");
        bool llama = mixtral || swiftArch || modelType == "llama" || Arch("LlamaForCausalLM");
        if (!llama && !olmo2 && !olmoe) throw new ModelFormatException(cfgPath, $"model_type '{modelType}' is not supported (model_type \"llama\" / LlamaForCausalLM, \"mixtral\" / MixtralForCausalLM, \"olmo2\" / Olmo2ForCausalLM or \"olmoe\" / OlmoeForCausalLM)");
        if ((olmo2 || olmoe) && c.TryGetProperty("attention_bias", out var ab) && ab.ValueKind == JsonValueKind.True)
            throw new ModelFormatException(cfgPath, $"{modelType} with attention_bias is not supported (the released models have none)");
        if (olmoe && c.TryGetProperty("norm_topk_prob", out var nt) && nt.ValueKind == JsonValueKind.True)
            throw new ModelFormatException(cfgPath, "olmoe with norm_topk_prob = true is not supported (llama.cpp's olmoe keeps the chosen probabilities as they are)");
        if (olmoe && c.TryGetProperty("clip_qkv", out var cq) && cq.ValueKind == JsonValueKind.Number)
            throw new ModelFormatException(cfgPath, "olmoe with clip_qkv is not supported (llama.cpp's olmoe does not clip)");
        int experts = mixtral ? Int(cfgPath, c, "num_local_experts") : olmoe ? Int(cfgPath, c, "num_experts") : 0;
        int used = mixtral || olmoe ? Int(cfgPath, c, "num_experts_per_tok") : 0;
        if (used > experts || experts > ModelConfig.MaxExperts)
            throw new ModelFormatException(cfgPath, $"num_experts_per_tok {used} with num_local_experts {experts}: need used ≤ experts ≤ {ModelConfig.MaxExperts}");
        int dim = Int(cfgPath, c, "hidden_size"), heads = Int(cfgPath, c, "num_attention_heads");
        int kv = c.TryGetProperty("num_key_value_heads", out _) ? Int(cfgPath, c, "num_key_value_heads") : heads;
        int headDim = c.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number ? hd.GetInt32() : dim / heads;
        if (heads % kv != 0) throw new ModelFormatException(cfgPath, $"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}");
        if (headDim <= 0 || headDim % 2 != 0) throw new ModelFormatException(cfgPath, $"head dimension {headDim} must be positive and even");
        if ((olmo2 || olmoe) && headDim * heads != dim) throw new ModelFormatException(cfgPath, $"{(olmo2 ? "olmo2" : "olmoe")} needs num_attention_heads × head dim = hidden_size, got {heads} × {headDim} ≠ {dim}");
        if (olmoe && kv != heads) throw new ModelFormatException(cfgPath, $"olmoe needs num_key_value_heads = num_attention_heads (its k norm spans hidden_size), got {kv} of {heads}");
        RopeScalingCheck(cfgPath, c);
        int layers = Int(cfgPath, c, "num_hidden_layers"), swiftKv = 0, swiftGroup = 1;
        // LlamaSwiftKVConfig: swiftkv (default false: the original model), num_key_value_layers (default all layers),
        // key_value_group_size (default 1).
        if (swiftArch && c.TryGetProperty("swiftkv", out var sw) && sw.ValueKind == JsonValueKind.True)
        {
            swiftKv = c.TryGetProperty("num_key_value_layers", out var nk) && nk.ValueKind == JsonValueKind.Number ? Int(cfgPath, c, "num_key_value_layers") : layers;
            swiftGroup = c.TryGetProperty("key_value_group_size", out var kg) && kg.ValueKind == JsonValueKind.Number ? Int(cfgPath, c, "key_value_group_size") : 1;
            if (swiftKv > layers || swiftGroup > Math.Max(1, layers - swiftKv))
                throw new ModelFormatException(cfgPath, $"num_key_value_layers {swiftKv} with key_value_group_size {swiftGroup} does not fit num_hidden_layers {layers}");
            if (experts > 0) throw new ModelFormatException(cfgPath, "SwiftKV with a mixture of experts is not supported");
            if (swiftKv == layers) swiftKv = 0; // every layer keeps its own K/V: the original model
        }
        return new HfCheckpoint(dir)
        {
            SwiftKvLayers = swiftKv, SwiftKvGroup = swiftKv > 0 ? swiftGroup : 1,
            _config = doc,
            Architecture = olmo2 ? "olmo2" : olmoe ? "olmoe" : "llama",
            Dim = dim, Heads = heads, KvHeads = kv, HeadDim = headDim, Experts = experts, ExpertsUsed = used,
            Layers = layers, FfnDim = Int(cfgPath, c, "intermediate_size"), VocabSize = Int(cfgPath, c, "vocab_size"),
            ContextLength = c.TryGetProperty("max_position_embeddings", out var mp) && mp.ValueKind == JsonValueKind.Number ? mp.GetInt32() : 2048,
            // Absent: the transformers config classes' defaults (LlamaConfig 1e-6, Olmo2Config and OlmoeConfig 1e-5).
            RmsEps = c.TryGetProperty("rms_norm_eps", out var e) && e.ValueKind == JsonValueKind.Number ? e.GetSingle() : olmo2 || olmoe ? 1e-5f : 1e-6f,
            RopeTheta = c.TryGetProperty("rope_theta", out var rt) && rt.ValueKind == JsonValueKind.Number ? rt.GetSingle() : 10000f,
            TiedEmbeddings = c.TryGetProperty("tie_word_embeddings", out var tw) && tw.ValueKind == JsonValueKind.True,
            RopeScaling = c.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs.Clone() : null,
        };
    }

    static void RopeScalingCheck(string path, JsonElement c)
    {
        if (!c.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind != JsonValueKind.Object) return;
        string t = Str(rs, "rope_type") ?? Str(rs, "type") ?? "";
        if (t is not ("llama3" or "linear" or "default"))
            throw new ModelFormatException(path, $"rope_scaling type '{t}' is not supported (llama3, linear)");
    }

    static string? Str(JsonElement e, string k) => e.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    static int Int(string path, JsonElement e, string k)
    {
        if (!e.TryGetProperty(k, out var v) || v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int x))
            throw new ModelFormatException(path, $"missing or non-integer '{k}'");
        if (x <= 0) throw new ModelFormatException(path, $"'{k}' must be positive, got {x}");
        return x;
    }

    void OpenTensors()
    {
        string index = System.IO.Path.Combine(Directory, "model.safetensors.index.json");
        var files = new List<string>();
        var expected = new Dictionary<string, string>(StringComparer.Ordinal);
        if (File.Exists(index))
        {
            JsonDocument doc;
            try { doc = JsonDocument.Parse(File.ReadAllBytes(index)); }
            catch (JsonException e) { throw new ModelFormatException(index, "not valid JSON: " + e.Message, e); }
            using (doc)
            {
                if (!doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                    throw new ModelFormatException(index, "missing weight_map");
                foreach (var p in wm.EnumerateObject())
                {
                    string f = p.Value.GetString() ?? throw new ModelFormatException(index, $"weight_map['{p.Name}'] is not a file name");
                    if (f.Contains('/') || f.Contains('\\') || f.Contains("..")) throw new ModelFormatException(index, $"weight_map['{p.Name}'] = '{f}' is not a plain file name");
                    expected[p.Name] = f;
                    if (!files.Contains(f)) files.Add(f);
                }
            }
        }
        else if (File.Exists(System.IO.Path.Combine(Directory, "model.safetensors"))) files.Add("model.safetensors");
        else
        {
            files.AddRange(System.IO.Directory.GetFiles(Directory, "*.safetensors").Select(System.IO.Path.GetFileName).Order(StringComparer.Ordinal)!);
            if (files.Count == 0) throw new ModelFormatException(Directory, "no model.safetensors, model.safetensors.index.json or *.safetensors");
        }
        foreach (var name in files)
        {
            var sf = SafetensorsFile.Open(System.IO.Path.Combine(Directory, name));
            _files.Add(sf);
            foreach (var t in sf.Tensors)
            {
                if (_tensors.ContainsKey(t.Name)) throw new ModelFormatException(sf.Path, $"tensor '{t.Name}' is also in {_tensors[t.Name].File.Path}");
                if (expected.Count > 0 && expected.TryGetValue(t.Name, out var want) && want != name)
                    throw new ModelFormatException(sf.Path, $"tensor '{t.Name}' is here but the index puts it in {want}");
                _tensors[t.Name] = (sf, t);
            }
        }
        foreach (var (n, f) in expected)
            if (!_tensors.ContainsKey(n)) throw new ModelFormatException(System.IO.Path.Combine(Directory, f), $"tensor '{n}' listed in the index is missing");
    }

    /// <summary>The Hugging Face tensor name of each GGUF tensor, and the shape config.json implies ([out, in] for matrices).</summary>
    public IEnumerable<(string Hf, string Gguf, long[] Shape)> TensorMap()
    {
        yield return ("model.embed_tokens.weight", "token_embd.weight", [VocabSize, Dim]);
        yield return ("model.norm.weight", "output_norm.weight", [Dim]);
        if (SwiftKvLayers > 0) yield return ("model.norm_swiftkv.weight", "swiftkv_norm.weight", [Dim]);
        if (!TiedEmbeddings || _tensors.ContainsKey("lm_head.weight")) yield return ("lm_head.weight", "output.weight", [VocabSize, Dim]);
        int q = Heads * HeadDim, kv = KvHeads * HeadDim;
        for (int l = 0; l < Layers; l++)
        {
            string h = $"model.layers.{l}.", g = $"blk.{l}.";
            if (!Olmo2) yield return (h + "input_layernorm.weight", g + "attn_norm.weight", [Dim]);
            bool upper = SwiftKvLayers > 0 && l >= SwiftKvLayers;
            if (!upper || _tensors.ContainsKey(h + "self_attn.q_proj.weight")) // SwiftKV's upper layers need not keep them
            {
                yield return (h + "self_attn.q_proj.weight", g + "attn_q.weight", [q, Dim]);
                yield return (h + "self_attn.k_proj.weight", g + "attn_k.weight", [kv, Dim]);
                yield return (h + "self_attn.v_proj.weight", g + "attn_v.weight", [kv, Dim]);
            }
            if (upper)
            {
                yield return (h + "self_attn.q_proj_swiftkv.weight", g + "attn_q_swiftkv.weight", [q, Dim]);
                if ((l - SwiftKvLayers) % SwiftKvGroup == 0)
                {
                    yield return (h + "self_attn.k_proj_swiftkv.weight", g + "attn_k_swiftkv.weight", [kv, Dim]);
                    yield return (h + "self_attn.v_proj_swiftkv.weight", g + "attn_v_swiftkv.weight", [kv, Dim]);
                }
            }
            yield return (h + "self_attn.o_proj.weight", g + "attn_output.weight", [Dim, q]);
            if (Olmo2 || Olmoe)
            {
                yield return (h + "self_attn.q_norm.weight", g + "attn_q_norm.weight", [q]);
                yield return (h + "self_attn.k_norm.weight", g + "attn_k_norm.weight", [kv]);
            }
            if (Olmo2)
            {
                yield return (h + "post_attention_layernorm.weight", g + "post_attention_norm.weight", [Dim]);
                yield return (h + "post_feedforward_layernorm.weight", g + "post_ffw_norm.weight", [Dim]);
            }
            else yield return (h + "post_attention_layernorm.weight", g + "ffn_norm.weight", [Dim]);
            if (Experts > 0)
            {
                yield return (h + (Olmoe ? "mlp.gate.weight" : "block_sparse_moe.gate.weight"), g + "ffn_gate_inp.weight", [Experts, Dim]);
                continue;
            }
            yield return (h + "mlp.gate_proj.weight", g + "ffn_gate.weight", [FfnDim, Dim]);
            yield return (h + "mlp.up_proj.weight", g + "ffn_up.weight", [FfnDim, Dim]);
            yield return (h + "mlp.down_proj.weight", g + "ffn_down.weight", [Dim, FfnDim]);
        }
    }

    /// <summary>Mixtral and OLMoE: each stacked GGUF expert tensor, the Hugging Face tensors of its experts in order, and
    /// the shape config.json implies for each ([out, in]).</summary>
    public IEnumerable<(string Gguf, string[] Hf, long[] Shape)> ExpertMap()
    {
        if (Experts == 0) yield break;
        // Mixtral: block_sparse_moe.experts.E.w1/w3/w2; OLMoE: mlp.experts.E.gate_proj/up_proj/down_proj.
        string prefix = Olmoe ? "mlp.experts" : "block_sparse_moe.experts";
        var names = Olmoe ? new[] { "gate_proj", "up_proj", "down_proj" } : ["w1", "w3", "w2"];
        for (int l = 0; l < Layers; l++)
            foreach (var (w, gguf, shape) in new[] { (names[0], "ffn_gate_exps", new long[] { FfnDim, Dim }), (names[1], "ffn_up_exps", [FfnDim, Dim]), (names[2], "ffn_down_exps", [Dim, FfnDim]) })
                yield return ($"blk.{l}.{gguf}.weight", Enumerable.Range(0, Experts).Select(e => $"model.layers.{l}.{prefix}.{e}.{w}.weight").ToArray(), shape);
    }

    void Validate()
    {
        foreach (var (hf, _, shape) in TensorMap().Concat(ExpertMap().SelectMany(m => m.Hf.Select(h => (h, m.Gguf, m.Shape)))))
        {
            if (!_tensors.TryGetValue(hf, out var e))
                throw new ModelFormatException(ConfigPath, $"tensor '{hf}' is missing from the safetensors files");
            if (!e.Tensor.Shape.SequenceEqual(shape))
                throw new ModelFormatException(e.File.Path, $"tensor '{hf}' has shape [{string.Join(", ", e.Tensor.Shape)}] but config.json implies [{string.Join(", ", shape)}]");
            if (!SafetensorsFile.IsSupported(e.Tensor.DType))
                throw new ModelFormatException(e.File.Path, $"tensor '{hf}': dtype {e.Tensor.DType} is not supported (F32, F16, BF16 are)");
        }
    }

    /// <summary>The checkpoint's dtype (of the embedding table): F32, F16 or BF16.</summary>
    public GgmlType SourceType => _tensors["model.embed_tokens.weight"].Tensor.DType switch { "F16" => GgmlType.F16, "BF16" => GgmlType.BF16, _ => GgmlType.F32 };

    /// <summary>
    /// llama.cpp's LlamaModel.permute: rows of each head [h, 2, hd/2] → [h, hd/2, 2], i.e. GGUF row h·hd + 2i + j is
    /// Hugging Face row h·hd + j·hd/2 + i. Turns rotate-half pairs (i, i + hd/2) into adjacent pairs (2i, 2i + 1).
    /// </summary>
    public static float[] PermuteForRope(float[] w, int rows, int cols, int heads)
    {
        int hd = rows / heads, half = hd / 2;
        var r = new float[w.Length];                        // [rows, cols]
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    Array.Copy(w, (long)(h * hd + j * half + i) * cols, r, (long)(h * hd + 2 * i + j) * cols, cols);
        return r;
    }

    /// <summary>Writes the checkpoint as a llama or olmo2 GGUF (atomically). <paramref name="type"/>: F32, F16, BF16 or Q8_0 for the
    /// 2-D weights; norms stay F32.</summary>
    public void WriteGguf(string path, GgmlType type, string? name = null)
    {
        if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q8_0))
            throw new CriaException($"conversion writes f32, f16, bf16 or q8_0, not {type} (use `cria quantize` afterwards)");
        var w = new GgufWriter();
        w.Set("general.architecture", Architecture);
        string a = Architecture + ".";
        w.Set("general.name", name ?? System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(Directory))));
        w.Set(a + "block_count", (uint)Layers);
        w.Set(a + "context_length", (uint)ContextLength);
        w.Set(a + "embedding_length", (uint)Dim);
        w.Set(a + "feed_forward_length", (uint)FfnDim);
        w.Set(a + "attention.head_count", (uint)Heads);
        w.Set(a + "attention.head_count_kv", (uint)KvHeads);
        w.Set(a + "rope.freq_base", RopeTheta);
        w.Set(a + "attention.layer_norm_rms_epsilon", RmsEps);
        if (HeadDim != Dim / Heads) { w.Set(a + "attention.key_length", (uint)HeadDim); w.Set(a + "attention.value_length", (uint)HeadDim); }
        w.Set("general.file_type", (uint)RandomModel.FileType(type));
        w.Set(a + "vocab_size", (uint)VocabSize);
        w.Set(a + "rope.dimension_count", (uint)HeadDim);
        if (Experts > 0) { w.Set(a + "expert_count", (uint)Experts); w.Set(a + "expert_used_count", (uint)ExpertsUsed); }
        if (SwiftKvLayers > 0) { w.Set(a + "swiftkv.kv_layers", (uint)SwiftKvLayers); w.Set(a + "swiftkv.group_size", (uint)SwiftKvGroup); }
        float[]? ropeFreqs = null;
        if (RopeScaling is { } rs)
        {
            string t = Str(rs, "rope_type") ?? Str(rs, "type") ?? "";
            float factor = rs.TryGetProperty("factor", out var fv) && fv.ValueKind == JsonValueKind.Number ? fv.GetSingle() : 1f;
            if (t == "linear") { w.Set(a + "rope.scaling.type", "linear"); w.Set(a + "rope.scaling.factor", factor); }
            else if (t == "llama3")
            {
                float lo = rs.TryGetProperty("low_freq_factor", out var l) ? l.GetSingle() : 1f, hi = rs.TryGetProperty("high_freq_factor", out var h) ? h.GetSingle() : 4f;
                int orig = rs.TryGetProperty("original_max_position_embeddings", out var o) ? o.GetInt32() : 8192;
                ropeFreqs = RandomModel.Llama3FreqFactors(HeadDim, RopeTheta, factor, lo, hi, orig);
            }
        }
        foreach (var (k, v) in HfTokenizer.Convert(Directory, VocabSize)) w.Set(k, v);

        if (ropeFreqs != null) w.AddTensor("rope_freqs.weight", [ropeFreqs.Length], ropeFreqs);
        // Each tensor is read, permuted and converted when the writer reaches it: one tensor in memory at a time.
        foreach (var (hf, gguf, shape) in TensorMap())
        {
            // 1-D tensors and a mixture's router are F32, as llama.cpp's converter writes them.
            var tt = shape.Length == 1 || gguf.EndsWith("ffn_gate_inp.weight", StringComparison.Ordinal) ? GgmlType.F32
                : type == GgmlType.Q8_0 && shape[1] % 32 != 0 ? GgmlType.F16 : type;
            long[] ggufShape = shape.Length == 1 ? [shape[0]] : [shape[1], shape[0]];
            w.AddTensor(gguf, ggufShape, tt, () => Converted(hf, shape, tt));
        }
        foreach (var (gguf, hfs, shape) in ExpertMap())
        {
            var tt = type == GgmlType.Q8_0 && shape[1] % 32 != 0 ? GgmlType.F16 : type;
            w.AddTensor(gguf, [shape[1], shape[0], hfs.Length], tt, () =>
            {
                // Experts one after the other: expert e's rows follow expert e − 1's (GGUF ne = {in, out, experts}).
                long bytes = GgmlTypeInfo.RowBytes(tt, shape[1]) * shape[0];
                var stacked = new byte[checked(bytes * hfs.Length)];
                for (int e = 0; e < hfs.Length; e++) Converted(hfs[e], shape, tt).CopyTo(stacked, e * bytes);
                return stacked;
            });
        }
        w.Write(path);
    }

    /// <summary>One checkpoint tensor as GGUF bytes of <paramref name="type"/>: q/k rows permuted for GGUF's RoPE
    /// (llama; not olmo2), 1-D tensors F32.</summary>
    byte[] Converted(string hf, long[] shape, GgmlType type)
    {
        var (file, t) = _tensors[hf];
        var v = file.ReadF32(t);
        if (Olmo2 || Olmoe) { } // NEOX RoPE: Hugging Face's row order as it is
        else if (hf.EndsWith("q_proj.weight", StringComparison.Ordinal) || hf.EndsWith("q_proj_swiftkv.weight", StringComparison.Ordinal))
            v = PermuteForRope(v, (int)shape[0], (int)shape[1], Heads);
        else if (hf.EndsWith("k_proj.weight", StringComparison.Ordinal) || hf.EndsWith("k_proj_swiftkv.weight", StringComparison.Ordinal))
            v = PermuteForRope(v, (int)shape[0], (int)shape[1], KvHeads);
        if (shape.Length == 1) return System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan()).ToArray();
        return Quantization.ModelQuantizer.QuantizeMatrix(type, v, (int)shape[1], (int)shape[0], null, Environment.ProcessorCount);
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _config?.Dispose();
    }
}
