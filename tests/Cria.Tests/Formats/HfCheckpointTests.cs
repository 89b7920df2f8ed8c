using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Formats;

/// <summary>
/// Hugging Face checkpoints: a random-weight Llama folder (config.json, tokenizer.json, tokenizer_config.json, two
/// BF16 safetensors shards with an index) written here gives the same logits run directly, converted by Cria, and
/// through llama.cpp after conversion — and those logits match an independent double-precision forward pass written
/// the Hugging Face way (rotate-half RoPE on the unpermuted q/k weights), which is what checks the Q/K permutation.
/// </summary>
public sealed class HfCheckpointTests(ITestOutputHelper output)
{
    const int Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, Ffn = 128, Vocab = 384, Hd = Dim / Heads;
    const float Eps = 1e-5f, Theta = 10000f;
    static readonly int[] Tokens = [1, 300, 17, 250, 99, 5, 333, 120, 64, 200, 7, 381, 42, 260, 3, 150];

    sealed record HfModel(string Dir, Dictionary<string, float[]> W);

    static float Bf16Round(float x) => Bf16.ToSingle(Bf16.FromSingle(x));

    /// <summary>Writes the folder; <paramref name="edit"/> may change config.json, <paramref name="dtype"/> the storage.</summary>
    static HfModel WriteFolder(string name, string dtype = "BF16", Action<JsonObject>? edit = null, int seed = 11, int experts = 0, int used = 0, bool olmo2 = false, bool olmoe = false, int kvHeads = KvHeads)
    {
        string dir = TestPaths.TempFile(name);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        var rng = new Random(seed);
        var w = new Dictionary<string, float[]>(StringComparer.Ordinal);
        float[] M(int rows, int cols, float std)
        {
            var v = new float[rows * cols];
            float a = std * MathF.Sqrt(3f);
            for (int i = 0; i < v.Length; i++) v[i] = (float)(rng.NextDouble() * 2 - 1) * a;
            return v;
        }
        float[] N(int n) { var v = new float[n]; for (int i = 0; i < n; i++) v[i] = 0.8f + 0.4f * (float)rng.NextDouble(); return v; }
        float s = 1f / MathF.Sqrt(Dim);
        var shards = new List<(string File, List<(string, string, long[], byte[])> T)> { ("model-00001-of-00002.safetensors", new()), ("model-00002-of-00002.safetensors", new()) };
        void Add(int shard, string n, float[] v, params long[] shape)
        {
            if (dtype == "BF16") for (int i = 0; i < v.Length; i++) v[i] = Bf16Round(v[i]);
            else if (dtype == "F16") for (int i = 0; i < v.Length; i++) v[i] = Fp16.ToSingle(Fp16.FromSingle(v[i]));
            w[n] = v;
            shards[shard].T.Add((n, dtype, shape, SafetensorsWriter.Encode(v, dtype)));
        }
        Add(0, "model.embed_tokens.weight", M(Vocab, Dim, 2 * s), Vocab, Dim);
        for (int l = 0; l < Layers; l++)
        {
            int sh = l == 0 ? 0 : 1;
            string p = $"model.layers.{l}.";
            if (!olmo2) Add(sh, p + "input_layernorm.weight", N(Dim), Dim);
            Add(sh, p + "self_attn.q_proj.weight", M(Heads * Hd, Dim, 3 * s), Heads * Hd, Dim);
            Add(sh, p + "self_attn.k_proj.weight", M(kvHeads * Hd, Dim, 3 * s), kvHeads * Hd, Dim);
            Add(sh, p + "self_attn.v_proj.weight", M(kvHeads * Hd, Dim, s), kvHeads * Hd, Dim);
            Add(sh, p + "self_attn.o_proj.weight", M(Dim, Heads * Hd, s), Dim, Heads * Hd);
            Add(sh, p + "post_attention_layernorm.weight", N(Dim), Dim);
            if (olmo2 || olmoe)
            {
                // OLMo 2 and OLMoE: QK-norm weights over the whole projections; OLMo 2 also norms the feed-forward output.
                Add(sh, p + "self_attn.q_norm.weight", N(Heads * Hd), Heads * Hd);
                Add(sh, p + "self_attn.k_norm.weight", N(kvHeads * Hd), kvHeads * Hd);
                if (olmo2) Add(sh, p + "post_feedforward_layernorm.weight", N(Dim), Dim);
            }
            if (olmoe)
            {
                // OLMoE: a router mlp.gate and experts mlp.experts.E.{gate,up,down}_proj.
                Add(sh, p + "mlp.gate.weight", M(experts, Dim, 2 * s), experts, Dim);
                for (int e = 0; e < experts; e++)
                {
                    string x = p + $"mlp.experts.{e}.";
                    Add(sh, x + "gate_proj.weight", M(Ffn, Dim, s), Ffn, Dim);
                    Add(sh, x + "up_proj.weight", M(Ffn, Dim, s), Ffn, Dim);
                    Add(sh, x + "down_proj.weight", M(Dim, Ffn, 1f / MathF.Sqrt(Ffn)), Dim, Ffn);
                }
                continue;
            }
            if (experts > 0)
            {
                // Mixtral: a router and experts.E.{w1 = gate, w3 = up, w2 = down}.
                Add(sh, p + "block_sparse_moe.gate.weight", M(experts, Dim, 2 * s), experts, Dim);
                for (int e = 0; e < experts; e++)
                {
                    string x = p + $"block_sparse_moe.experts.{e}.";
                    Add(sh, x + "w1.weight", M(Ffn, Dim, s), Ffn, Dim);
                    Add(sh, x + "w2.weight", M(Dim, Ffn, 1f / MathF.Sqrt(Ffn)), Dim, Ffn);
                    Add(sh, x + "w3.weight", M(Ffn, Dim, s), Ffn, Dim);
                }
                continue;
            }
            Add(sh, p + "mlp.gate_proj.weight", M(Ffn, Dim, s), Ffn, Dim);
            Add(sh, p + "mlp.up_proj.weight", M(Ffn, Dim, s), Ffn, Dim);
            Add(sh, p + "mlp.down_proj.weight", M(Dim, Ffn, 1f / MathF.Sqrt(Ffn)), Dim, Ffn);
        }
        Add(1, "model.norm.weight", N(Dim), Dim);
        Add(1, "lm_head.weight", M(Vocab, Dim, 2 * s), Vocab, Dim);
        var map = new JsonObject();
        foreach (var (file, ts) in shards)
        {
            SafetensorsWriter.Write(Path.Combine(dir, file), ts, new Dictionary<string, string> { ["format"] = "pt" });
            foreach (var t in ts) map[t.Item1] = file;
        }
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = 0 }, ["weight_map"] = map }.ToJsonString());

        var cfg = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"), ["model_type"] = "llama", ["hidden_size"] = Dim, ["intermediate_size"] = Ffn,
            ["num_hidden_layers"] = Layers, ["num_attention_heads"] = Heads, ["num_key_value_heads"] = kvHeads, ["rms_norm_eps"] = Eps,
            ["rope_theta"] = Theta, ["max_position_embeddings"] = 256, ["vocab_size"] = Vocab, ["tie_word_embeddings"] = false,
            ["torch_dtype"] = dtype == "BF16" ? "bfloat16" : "float16", ["bos_token_id"] = 1, ["eos_token_id"] = 2,
        };
        if (experts > 0)
        {
            cfg["architectures"] = new JsonArray("MixtralForCausalLM"); cfg["model_type"] = "mixtral";
            cfg["num_local_experts"] = experts; cfg["num_experts_per_tok"] = used; cfg["sliding_window"] = null;
        }
        if (olmo2) { cfg["architectures"] = new JsonArray("Olmo2ForCausalLM"); cfg["model_type"] = "olmo2"; cfg["attention_bias"] = false; }
        if (olmoe)
        {
            cfg["architectures"] = new JsonArray("OlmoeForCausalLM"); cfg["model_type"] = "olmoe"; cfg["attention_bias"] = false;
            cfg["num_experts"] = experts; cfg["num_experts_per_tok"] = used; cfg["norm_topk_prob"] = false; cfg["clip_qkv"] = null;
            cfg.Remove("num_local_experts"); cfg.Remove("sliding_window");
        }
        edit?.Invoke(cfg);
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
        WriteTokenizer(dir);
        return new HfModel(dir, w);
    }

    /// <summary>RandomModel's synthetic SentencePiece vocabulary as a Llama-2-style tokenizer.json (BPE, byte fallback,
    /// merges that build every piece from its prefix and last character).</summary>
    internal static void WriteTokenizer(string dir)
    {
        var (tokens, _, types) = RandomModel.Vocabulary(Vocab);
        var vocab = new JsonObject();
        var merges = new JsonArray();
        var ids = new Dictionary<string, int>();
        for (int i = 0; i < tokens.Length; i++) { vocab[tokens[i]] = i; ids[tokens[i]] = i; }
        for (int i = 0; i < tokens.Length; i++)
        {
            var t = tokens[i];
            if (types[i] != 1 || t.Length < 2 || t.StartsWith("<extra_", StringComparison.Ordinal)) continue;
            string a = t[..^1], b = t[^1..];
            if (ids.ContainsKey(a) && ids.ContainsKey(b)) merges.Add($"{a} {b}");
        }
        var added = new JsonArray();
        foreach (var (id, text) in new[] { (0, "<unk>"), (1, "<s>"), (2, "</s>") })
            added.Add(new JsonObject { ["id"] = id, ["content"] = text, ["special"] = true });
        var tok = new JsonObject
        {
            ["version"] = "1.0", ["added_tokens"] = added,
            ["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(
                new JsonObject { ["type"] = "Prepend", ["prepend"] = "\u2581" },
                new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "\u2581" }) },
            ["model"] = new JsonObject { ["type"] = "BPE", ["byte_fallback"] = true, ["unk_token"] = "<unk>", ["vocab"] = vocab, ["merges"] = merges },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tok.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new JsonObject
        {
            ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["unk_token"] = "<unk>", ["add_bos_token"] = true, ["add_eos_token"] = false,
            ["chat_template"] = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}",
        }.ToJsonString());
    }

    /// <summary>The Hugging Face forward pass in double precision: rotate-half RoPE on the stored q/k rows; for Mixtral
    /// (<paramref name="used"/> of <paramref name="experts"/>), MixtralSparseMoeBlock: softmax over the router logits,
    /// the top <paramref name="used"/> renormalised, Σ w_e · w2_e(SiLU(w1_e x) ⊙ w3_e x). For OLMo 2
    /// (Olmo2DecoderLayer): no input norm; q_norm / k_norm over the whole q and k projections before RoPE; x += RMSNorm(attn)
    /// with post_attention_layernorm, then x += RMSNorm(mlp(x)) with post_feedforward_layernorm.</summary>
    static double[][] ReferenceLogits(Dictionary<string, float[]> w, int[] tokens, int experts = 0, int used = 0, bool olmo2 = false, bool olmoe = false, int kvHeads = KvHeads)
    {
        int T = tokens.Length, qd = Heads * Hd, kd = kvHeads * Hd;
        double[] RmsNorm(double[] x, float[] g)
        {
            double ss = 0; foreach (var v in x) ss += v * v;
            double r = 1 / Math.Sqrt(ss / x.Length + Eps);
            var y = new double[x.Length]; for (int i = 0; i < x.Length; i++) y[i] = x[i] * r * g[i];
            return y;
        }
        double[] Mv(float[] m, int rows, double[] x)
        {
            var y = new double[rows];
            for (int o = 0; o < rows; o++) { double acc = 0; for (int j = 0; j < x.Length; j++) acc += m[o * x.Length + j] * x[j]; y[o] = acc; }
            return y;
        }
        void RotateHalf(double[] v, int heads, int pos)
        {
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < Hd / 2; i++)
                {
                    double th = pos * Math.Pow(Theta, -2.0 * i / Hd), c = Math.Cos(th), sn = Math.Sin(th);
                    double a = v[h * Hd + i], b = v[h * Hd + i + Hd / 2];
                    v[h * Hd + i] = a * c - b * sn;
                    v[h * Hd + i + Hd / 2] = b * c + a * sn;
                }
        }
        var x = new double[T][];
        for (int t = 0; t < T; t++) { x[t] = new double[Dim]; for (int j = 0; j < Dim; j++) x[t][j] = w["model.embed_tokens.weight"][tokens[t] * Dim + j]; }
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            var K = new double[T][]; var V = new double[T][]; var Q = new double[T][];
            for (int t = 0; t < T; t++)
            {
                var h = olmo2 ? x[t] : RmsNorm(x[t], w[p + "input_layernorm.weight"]);
                Q[t] = Mv(w[p + "self_attn.q_proj.weight"], qd, h); K[t] = Mv(w[p + "self_attn.k_proj.weight"], kd, h); V[t] = Mv(w[p + "self_attn.v_proj.weight"], kd, h);
                if (olmo2 || olmoe) { Q[t] = RmsNorm(Q[t], w[p + "self_attn.q_norm.weight"]); K[t] = RmsNorm(K[t], w[p + "self_attn.k_norm.weight"]); }
                RotateHalf(Q[t], Heads, t); RotateHalf(K[t], kvHeads, t);
            }
            for (int t = 0; t < T; t++)
            {
                var att = new double[qd];
                for (int h = 0; h < Heads; h++)
                {
                    int kh = h / (Heads / kvHeads);
                    var sc = new double[t + 1];
                    double max = double.NegativeInfinity;
                    for (int u = 0; u <= t; u++) { double d = 0; for (int i = 0; i < Hd; i++) d += Q[t][h * Hd + i] * K[u][kh * Hd + i]; sc[u] = d / Math.Sqrt(Hd); max = Math.Max(max, sc[u]); }
                    double sum = 0; for (int u = 0; u <= t; u++) { sc[u] = Math.Exp(sc[u] - max); sum += sc[u]; }
                    for (int u = 0; u <= t; u++) for (int i = 0; i < Hd; i++) att[h * Hd + i] += sc[u] / sum * V[u][kh * Hd + i];
                }
                var o = Mv(w[p + "self_attn.o_proj.weight"], Dim, att);
                if (olmo2) o = RmsNorm(o, w[p + "post_attention_layernorm.weight"]);
                for (int j = 0; j < Dim; j++) x[t][j] += o[j];
                var h2 = olmo2 ? (double[])x[t].Clone() : RmsNorm(x[t], w[p + "post_attention_layernorm.weight"]);
                double[] Ffn_(string gate, string up_, string down)
                {
                    var g = Mv(w[gate], Ffn, h2); var up = Mv(w[up_], Ffn, h2);
                    for (int i = 0; i < Ffn; i++) g[i] = g[i] / (1 + Math.Exp(-g[i])) * up[i];
                    return Mv(w[down], Dim, g);
                }
                if (experts == 0)
                {
                    var d2 = Ffn_(p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight", p + "mlp.down_proj.weight");
                    if (olmo2) d2 = RmsNorm(d2, w[p + "post_feedforward_layernorm.weight"]);
                    for (int j = 0; j < Dim; j++) x[t][j] += d2[j];
                }
                else
                {
                    var logits = Mv(w[p + (olmoe ? "mlp.gate.weight" : "block_sparse_moe.gate.weight")], experts, h2);
                    double mx = logits.Max();
                    var prob = logits.Select(v => Math.Exp(v - mx)).ToArray();
                    double z = prob.Sum();
                    var top = Enumerable.Range(0, experts).OrderByDescending(e => prob[e]).Take(used).ToArray();
                    double kept = olmoe ? 1 : top.Sum(e => prob[e] / z); // OlmoeSparseMoeBlock: norm_topk_prob = false
                    foreach (int e in top)
                    {
                        string q = p + (olmoe ? $"mlp.experts.{e}." : $"block_sparse_moe.experts.{e}.");
                        var d2 = olmoe ? Ffn_(q + "gate_proj.weight", q + "up_proj.weight", q + "down_proj.weight") : Ffn_(q + "w1.weight", q + "w3.weight", q + "w2.weight");
                        for (int j = 0; j < Dim; j++) x[t][j] += prob[e] / z / kept * d2[j];
                    }
                }
            }
        }
        var res = new double[T][];
        for (int t = 0; t < T; t++) res[t] = Mv(w["lm_head.weight"], Vocab, RmsNorm(x[t], w["model.norm.weight"]));
        return res;
    }

    static double MaxDiff(double[][] a, float[][] b)
    {
        double m = 0;
        for (int t = 0; t < a.Length; t++) for (int i = 0; i < a[t].Length; i++) m = Math.Max(m, Math.Abs(a[t][i] - b[t][i]));
        return m;
    }

    static double MaxDiff(float[][] a, float[][] b) => MaxDiff(a.Select(r => r.Select(v => (double)v).ToArray()).ToArray(), b);

    [Fact]
    public void Direct_converted_and_llama_cpp_logits_agree_with_the_Hugging_Face_forward_pass()
    {
        var hf = WriteFolder("hf-bf16");
        var reference = ReferenceLogits(hf.W, Tokens);
        string f32 = TestPaths.TempFile("hf-f32.gguf"), bf16 = TestPaths.TempFile("hf-bf16.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir))
        {
            Assert.Equal(GgmlType.BF16, ck.SourceType);
            ck.WriteGguf(f32, GgmlType.F32);
            ck.WriteGguf(bf16, GgmlType.BF16);
        }
        float[][] criaF32, criaBf16, direct, cppF32, cppBf16;
        using (var r = new CriaRunner(f32, 64)) criaF32 = r.AllLogits(Tokens);
        using (var r = new CriaRunner(bf16, 64)) criaBf16 = r.AllLogits(Tokens);
        using (var r = new CriaRunner(hf.Dir, 64)) direct = r.AllLogits(Tokens);
        using (var c = new LlamaCpp(f32, 64)) cppF32 = c.AllLogits(Tokens);
        using (var c = new LlamaCpp(bf16, 64)) cppBf16 = c.AllLogits(Tokens);

        double eF32 = MaxDiff(reference, criaF32), eCpp = MaxDiff(reference, cppF32), eDirect = MaxDiff(direct, criaBf16);
        double eBf16 = MaxDiff(reference, direct), eCppBf16 = MaxDiff(criaBf16, cppBf16);
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        output.WriteLine($"logits up to ±{scale:F2} over {Tokens.Length} positions; max |Δ|: Cria F32 vs HF reference {eF32:E2}, llama.cpp F32 vs reference {eCpp:E2}, " +
                         $"direct (BF16) vs converted BF16 {eDirect:E2}, direct vs reference {eBf16:E2}, llama.cpp BF16 vs Cria BF16 {eCppBf16:E2}");
        Assert.True(eF32 < 1e-4, $"Cria on the F32 conversion differs from the Hugging Face forward pass by {eF32}");
        Assert.True(eCpp < 1e-4, $"llama.cpp on the F32 conversion differs from the Hugging Face forward pass by {eCpp}");
        Assert.Equal(0, eDirect); // the direct route is the BF16 conversion, bit for bit
        // BF16 weights multiply activations rounded to BF16 (8-bit mantissa), in Cria as in llama.cpp (which agrees with Cria to ~5e-7 here).
        Assert.True(eBf16 < 0.5, $"the direct (BF16 activations) route differs from the reference by {eBf16}");
        Assert.True(eCppBf16 < 8e-2, $"llama.cpp and Cria differ on the BF16 conversion by {eCppBf16}");
    }

    /// <summary>A random OLMo 2 folder (BF16 shards): converted to an olmo2 GGUF without the q/k permutation, it gives
    /// the double-precision Olmo2 forward pass in Cria and in llama.cpp, and the direct route is the conversion bit for
    /// bit. Permuting q/k as for llama, or running it with llama's interleaved RoPE, fails the first two.</summary>
    [Fact]
    public void An_olmo2_checkpoint_converts_to_llama_cpps_olmo2_layout_with_the_same_logits()
    {
        var hf = WriteFolder("hf-olmo2", seed: 17, olmo2: true);
        var reference = ReferenceLogits(hf.W, Tokens, olmo2: true);
        string f32 = TestPaths.TempFile("hf-olmo2-f32.gguf"), bf16 = TestPaths.TempFile("hf-olmo2-bf16.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir))
        {
            Assert.Equal("olmo2", ck.Architecture);
            ck.WriteGguf(f32, GgmlType.F32);
            ck.WriteGguf(bf16, GgmlType.BF16);
        }
        using (var f = GgufFile.Open(f32))
        {
            Assert.Equal("olmo2", f.Get<string>("general.architecture"));
            Assert.Equal((uint)Heads, f.Get<uint>("olmo2.attention.head_count"));
            Assert.Equal(new long[] { KvHeads * Hd }, f.GetTensor("blk.1.attn_k_norm.weight").Shape);
            Assert.Equal(GgmlType.F32, f.GetTensor("blk.0.post_ffw_norm.weight").Type);
            Assert.False(f.TryGetTensor("blk.0.attn_norm.weight", out _));
            Assert.False(f.TryGetTensor("blk.0.ffn_norm.weight", out _));
        }
        float[][] criaF32, criaBf16, direct, cppF32, cppBf16;
        using (var r = new CriaRunner(f32, 64)) { Assert.True(r.Model.Config.IsOlmo2); criaF32 = r.AllLogits(Tokens); }
        using (var r = new CriaRunner(bf16, 64)) criaBf16 = r.AllLogits(Tokens);
        using (var r = new CriaRunner(hf.Dir, 64)) direct = r.AllLogits(Tokens);
        using (var c = new LlamaCpp(f32, 64)) cppF32 = c.AllLogits(Tokens);
        using (var c = new LlamaCpp(bf16, 64)) cppBf16 = c.AllLogits(Tokens);
        double eF32 = MaxDiff(reference, criaF32), eCpp = MaxDiff(reference, cppF32), eDirect = MaxDiff(direct, criaBf16), eCppBf16 = MaxDiff(criaBf16, cppBf16);
        double scale = reference.SelectMany(r => r).Max(Math.Abs);
        output.WriteLine($"OLMo 2: logits up to ±{scale:F2}; max |Δ| Cria F32 vs HF reference {eF32:E2}, llama.cpp F32 vs reference {eCpp:E2}, direct vs converted BF16 {eDirect:E2}, llama.cpp BF16 vs Cria BF16 {eCppBf16:E2}");
        Assert.True(eF32 < 1e-4, $"Cria on the F32 conversion differs from the Hugging Face forward pass by {eF32}");
        Assert.True(eCpp < 1e-4, $"llama.cpp on the F32 conversion differs from the Hugging Face forward pass by {eCpp}");
        Assert.Equal(0, eDirect);
        Assert.True(eCppBf16 < 8e-2, $"llama.cpp and Cria differ on the BF16 conversion by {eCppBf16}");
    }

    /// <summary>A random OLMoE folder (4 experts, 2 per token, not renormalised; BF16 shards): converted to an olmoe
    /// GGUF, it gives the double-precision OlmoeForCausalLM forward in Cria and in llama.cpp, and direct = converted.</summary>
    [Fact]
    public void An_olmoe_checkpoint_converts_to_llama_cpps_olmoe_layout_with_the_same_logits()
    {
        var hf = WriteFolder("hf-olmoe", seed: 19, experts: 4, used: 2, olmoe: true, kvHeads: Heads);
        var reference = ReferenceLogits(hf.W, Tokens, 4, 2, olmoe: true, kvHeads: Heads);
        string f32 = TestPaths.TempFile("hf-olmoe-f32.gguf"), bf16 = TestPaths.TempFile("hf-olmoe-bf16.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir))
        {
            Assert.Equal(("olmoe", 4, 2), (ck.Architecture, ck.Experts, ck.ExpertsUsed));
            ck.WriteGguf(f32, GgmlType.F32);
            ck.WriteGguf(bf16, GgmlType.BF16);
        }
        using (var f = GgufFile.Open(bf16))
        {
            Assert.Equal(GgmlType.F32, f.GetTensor("blk.0.ffn_gate_inp.weight").Type);
            Assert.Equal(new long[] { Dim, Ffn, 4 }, f.GetTensor("blk.1.ffn_up_exps.weight").Shape);
            Assert.True(f.TryGetTensor("blk.0.attn_norm.weight", out _) && f.TryGetTensor("blk.0.attn_k_norm.weight", out _));
        }
        float[][] criaF32, criaBf16, direct, cppF32;
        using (var r = new CriaRunner(f32, 64)) { Assert.True(r.Model.Config.IsOlmoe); criaF32 = r.AllLogits(Tokens); }
        using (var r = new CriaRunner(bf16, 64)) criaBf16 = r.AllLogits(Tokens);
        using (var r = new CriaRunner(hf.Dir, 64)) direct = r.AllLogits(Tokens);
        using (var c = new LlamaCpp(f32, 64)) cppF32 = c.AllLogits(Tokens);
        double eF32 = MaxDiff(reference, criaF32), eCpp = MaxDiff(reference, cppF32), eDirect = MaxDiff(direct, criaBf16);
        output.WriteLine($"OLMoE: max |Δ| Cria F32 vs HF reference {eF32:E2}, llama.cpp F32 vs reference {eCpp:E2}, direct vs converted BF16 {eDirect:E2}");
        Assert.True(eF32 < 1e-4, $"Cria on the F32 conversion differs from the Hugging Face forward pass by {eF32}");
        Assert.True(eCpp < 1e-4, $"llama.cpp on the F32 conversion differs from the Hugging Face forward pass by {eCpp}");
        Assert.Equal(0, eDirect);

        var renorm = WriteFolder("hf-olmoe-renorm", experts: 4, used: 2, olmoe: true, kvHeads: Heads, edit: c => c["norm_topk_prob"] = true);
        Assert.Contains("norm_topk_prob", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(renorm.Dir).Dispose()).Message);
        var gqa = WriteFolder("hf-olmoe-gqa", experts: 4, used: 2, olmoe: true);
        Assert.Contains("num_key_value_heads", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(gqa.Dir).Dispose()).Message);
    }

    /// <summary>A random Mixtral folder (4 experts, 2 per token, BF16 shards): run directly, converted by Cria (F32 and
    /// BF16) and through llama.cpp after conversion, against the double-precision Hugging Face forward pass.</summary>
    [Fact]
    public void A_mixtral_checkpoint_converts_to_llama_cpps_expert_layout_with_the_same_logits()
    {
        var hf = WriteFolder("hf-mixtral", experts: 4, used: 2, seed: 13);
        var reference = ReferenceLogits(hf.W, Tokens, 4, 2);
        string f32 = TestPaths.TempFile("hf-mixtral-f32.gguf"), bf16 = TestPaths.TempFile("hf-mixtral-bf16.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir))
        {
            Assert.Equal((4, 2), (ck.Experts, ck.ExpertsUsed));
            ck.WriteGguf(f32, GgmlType.F32);
            ck.WriteGguf(bf16, GgmlType.BF16);
        }
        using (var f = GgufFile.Open(bf16))
        {
            Assert.Equal(GgmlType.F32, f.GetTensor("blk.0.ffn_gate_inp.weight").Type);
            Assert.Equal(new long[] { Dim, Ffn, 4 }, f.GetTensor("blk.1.ffn_up_exps.weight").Shape);
            Assert.Equal(new long[] { Ffn, Dim, 4 }, f.GetTensor("blk.1.ffn_down_exps.weight").Shape);
            Assert.False(f.TryGetTensor("blk.0.ffn_gate.weight", out _));
        }
        float[][] criaF32, criaBf16, direct, cppF32, cppBf16;
        using (var r = new CriaRunner(f32, 64)) { Assert.Equal(4, r.Model.Config.ExpertCount); criaF32 = r.AllLogits(Tokens); }
        using (var r = new CriaRunner(bf16, 64)) criaBf16 = r.AllLogits(Tokens);
        using (var r = new CriaRunner(hf.Dir, 64)) direct = r.AllLogits(Tokens);
        using (var c = new LlamaCpp(f32, 64)) cppF32 = c.AllLogits(Tokens);
        using (var c = new LlamaCpp(bf16, 64)) cppBf16 = c.AllLogits(Tokens);
        double eF32 = MaxDiff(reference, criaF32), eCpp = MaxDiff(reference, cppF32), eDirect = MaxDiff(direct, criaBf16), eCppBf16 = MaxDiff(criaBf16, cppBf16);
        output.WriteLine($"Mixtral: max |Δ| Cria F32 vs HF reference {eF32:E2}, llama.cpp F32 vs reference {eCpp:E2}, direct vs converted BF16 {eDirect:E2}, llama.cpp BF16 vs Cria BF16 {eCppBf16:E2}");
        Assert.True(eF32 < 1e-4, $"Cria on the F32 conversion differs from the Hugging Face forward pass by {eF32}");
        Assert.True(eCpp < 1e-4, $"llama.cpp on the F32 conversion differs from the Hugging Face forward pass by {eCpp}");
        Assert.Equal(0, eDirect);
        Assert.True(eCppBf16 < 8e-2, $"llama.cpp and Cria differ on the BF16 conversion by {eCppBf16}");
    }

    /// <summary>
    /// A PEFT LoRA adapter folder (random A and B on all seven projections of both layers, r = 4, lora_alpha = 8),
    /// converted by <see cref="PeftAdapter.Convert"/> and applied to the converted base, gives — in Cria and in
    /// llama.cpp — the Hugging Face forward pass of the base with W + (α/r)·B·A merged in Hugging Face's own layout. So
    /// the names, the scale and the RoPE row permutation of q_proj's and k_proj's lora_B are right.
    /// </summary>
    [Fact]
    public void A_peft_adapter_converts_to_the_logits_of_its_merged_weights()
    {
        var hf = WriteFolder("hf-peft-base", dtype: "F32");
        string peft = TestPaths.TempFile("hf-peft-adapter");
        if (Directory.Exists(peft)) Directory.Delete(peft, true);
        Directory.CreateDirectory(peft);
        const int r = 4; const float alpha = 8f, s = alpha / r;
        var rng = new Random(9);
        var merged = hf.W.ToDictionary(kv => kv.Key, kv => (float[])kv.Value.Clone());
        var tensors = new List<(string, string, long[], byte[])>();
        (string Group, string Proj, int Out, int In)[] projs =
        [
            ("self_attn", "q_proj", Heads * Hd, Dim), ("self_attn", "k_proj", KvHeads * Hd, Dim), ("self_attn", "v_proj", KvHeads * Hd, Dim),
            ("self_attn", "o_proj", Dim, Heads * Hd), ("mlp", "gate_proj", Ffn, Dim), ("mlp", "up_proj", Ffn, Dim), ("mlp", "down_proj", Dim, Ffn),
        ];
        for (int l = 0; l < Layers; l++)
            foreach (var (group, proj, rows, cols) in projs)
            {
                var a = Enumerable.Range(0, r * cols).Select(_ => (float)(rng.NextDouble() * 2 - 1) / MathF.Sqrt(cols)).ToArray();
                var b = Enumerable.Range(0, rows * r).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.2f).ToArray();
                string prefix = $"base_model.model.model.layers.{l}.{group}.{proj}.";
                tensors.Add((prefix + "lora_A.weight", "F32", [r, cols], SafetensorsWriter.Encode(a, "F32")));
                tensors.Add((prefix + "lora_B.weight", "F32", [rows, r], SafetensorsWriter.Encode(b, "F32")));
                var w = merged[$"model.layers.{l}.{group}.{proj}.weight"];
                for (int o = 0; o < rows; o++)
                    for (int i = 0; i < cols; i++)
                    {
                        double d = 0;
                        for (int j = 0; j < r; j++) d += (double)b[o * r + j] * a[j * cols + i];
                        w[o * cols + i] += (float)(s * d);
                    }
            }
        SafetensorsWriter.Write(Path.Combine(peft, "adapter_model.safetensors"), tensors);
        File.WriteAllText(Path.Combine(peft, "adapter_config.json"), new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = r, ["lora_alpha"] = alpha, ["bias"] = "none", ["task_type"] = "CAUSAL_LM",
            ["target_modules"] = new JsonArray("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        }.ToJsonString());

        string baseGguf = TestPaths.TempFile("hf-peft-base.gguf"), adapter = TestPaths.TempFile("hf-peft-adapter.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir)) ck.WriteGguf(baseGguf, GgmlType.F32);
        Assert.Equal(Layers * 7, PeftAdapter.Convert(peft, baseGguf, adapter, force: true));
        var reference = ReferenceLogits(merged, Tokens);
        var basis = ReferenceLogits(hf.W, Tokens);
        float[][] cria, cpp;
        using (var c = new CriaRunner(baseGguf, 64, lora: adapter)) cria = c.AllLogits(Tokens);
        using (var c = new LlamaCpp(baseGguf, 64))
        {
            var h = c.Weights.NativeHandle.LoadLoraFromFile(adapter);
            Span<(LLama.Native.LoraAdapter, float)> set = [(h, 1f)];
            c.Context.NativeHandle.SetLoraAdapters(set);
            cpp = c.AllLogits(Tokens);
        }
        double eCria = MaxDiff(reference, cria), eCpp = MaxDiff(reference, cpp), moved = MaxDiff(reference, basis.Select(x => x.Select(v => (float)v).ToArray()).ToArray());
        output.WriteLine($"PEFT adapter moves the logits by up to {moved:F3}; max |Δ| from the merged Hugging Face forward: Cria {eCria:E2}, llama.cpp {eCpp:E2}");
        Assert.True(moved > 0.05, $"the adapter changes the logits by only {moved}");
        Assert.True(eCria < 1e-4, $"Cria with the converted PEFT adapter differs from the merged forward by {eCria}");
        Assert.True(eCpp < 1e-4, $"llama.cpp with the converted PEFT adapter differs from the merged forward by {eCpp}");

        // a folder without adapter_config.json, a tensor that is not a projection's A/B, an existing output
        Assert.Contains("adapter_config.json", Assert.Throws<CriaException>(() => PeftAdapter.Convert(hf.Dir, baseGguf, adapter, force: true)).Message);
        Assert.Contains("exists", Assert.Throws<CriaException>(() => PeftAdapter.Convert(peft, baseGguf, adapter)).Message);
        SafetensorsWriter.Write(Path.Combine(peft, "adapter_model.safetensors"),
            [("base_model.model.lm_head.lora_A.weight", "F32", [r, Dim], SafetensorsWriter.Encode(new float[r * Dim], "F32"))]);
        Assert.Contains("not a LoRA A/B matrix", Assert.Throws<CriaException>(() => PeftAdapter.Convert(peft, baseGguf, adapter, force: true)).Message);
    }

    [Fact]
    public void Tokenizer_json_maps_to_the_same_tokenizer_as_the_gguf_vocabulary()
    {
        var hf = WriteFolder("hf-tok");
        string conv = TestPaths.TempFile("hf-tok.gguf"), synth = TestPaths.TempFile("hf-tok-synthetic.gguf");
        using (var ck = HfCheckpoint.Open(hf.Dir)) ck.WriteGguf(conv, GgmlType.F32);
        RandomModel.Write(synth, new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = Vocab });
        using var a = LlamaModel.Open(conv);
        using var b = LlamaModel.Open(synth);
        Assert.Equal(b.File.Get<string[]>("tokenizer.ggml.tokens"), a.File.Get<string[]>("tokenizer.ggml.tokens"));
        Assert.Equal(b.File.Get<int[]>("tokenizer.ggml.token_type"), a.File.Get<int[]>("tokenizer.ggml.token_type"));
        Assert.Equal("llama", a.File.Get<string>("tokenizer.ggml.model"));
        Assert.StartsWith("{% for m in messages %}", a.File.Get<string>("tokenizer.chat_template"));
        foreach (var text in new[] { "hello world", "the quick brown fox jumps over the lazy dog", "Once upon a time, a little girl named Lily!", "naïve café 😀" })
            Assert.Equal(b.Tokenizer.Encode(text, addBos: true), a.Tokenizer.Encode(text, addBos: true));
    }

    [Fact]
    public void Q_and_k_rows_are_permuted_as_llama_cpp_does()
    {
        // 2 heads of 4: HF rows [h0: 0 1 | 2 3, h1: 4 5 | 6 7] → GGUF [0 2 1 3 4 6 5 7]
        var w = Enumerable.Range(0, 8).Select(i => (float)i).ToArray();
        Assert.Equal([0f, 2, 1, 3, 4, 6, 5, 7], HfCheckpoint.PermuteForRope(w, 8, 1, 2));
    }

    // ---------------------------------------------------------------- bad input

    static string WriteRaw(string name, string header, int dataBytes, ulong? headerLength = null)
    {
        string p = TestPaths.TempFile(name);
        var h = Encoding.UTF8.GetBytes(header);
        using var fs = File.Create(p);
        fs.Write(BitConverter.GetBytes(headerLength ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
        return p;
    }

    [Theory]
    [InlineData("lies-end", """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[16,64]}}""", 32, "run past the end")]
    [InlineData("lies-size", """{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}""", 16, "data_offsets span 16")]
    [InlineData("overlap", """{"a":{"dtype":"F16","shape":[8],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[8],"data_offsets":[8,24]}}""", 24, "overlap")]
    [InlineData("backwards", """{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}""", 16, "end before they begin")]
    [InlineData("dtype", """{"a":{"dtype":"Q7","shape":[4],"data_offsets":[0,4]}}""", 4, "unknown dtype 'Q7'")]
    [InlineData("json", """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]""", 16, "not valid JSON")]
    [InlineData("negative", """{"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}""", 16, "bad shape dimension")]
    public void Malformed_safetensors_headers_are_refused(string name, string header, int dataBytes, string expected)
    {
        var p = WriteRaw($"bad-{name}.safetensors", header, dataBytes);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(p).Dispose());
        output.WriteLine(e.Message);
        Assert.Contains(expected, e.Message);
        Assert.Contains(p, e.Message);
    }

    [Fact]
    public void A_header_length_larger_than_the_file_is_refused()
    {
        var p = WriteRaw("bad-hlen.safetensors", "{}", 0, headerLength: 1UL << 40);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(p).Dispose());
        Assert.Contains("does not fit", e.Message);
    }

    [Fact]
    public void Unsupported_dtype_config_mismatch_and_missing_shards_are_reported()
    {
        // One tensor stored as I16 (a valid header, a dtype Cria does not read as weights).
        var hf = WriteFolder("hf-bad-dtype");
        string shard = Path.Combine(hf.Dir, "model-00002-of-00002.safetensors");
        using (var sf = SafetensorsFile.Open(shard))
        {
            var ts = sf.Tensors.Select(t => (t.Name, t.Name == "model.norm.weight" ? "I16" : t.DType, t.Shape, sf.TensorData(t).ToArray())).ToList();
            sf.Dispose();
            SafetensorsWriter.Write(shard + ".new", ts);
        }
        File.Move(shard + ".new", shard, overwrite: true);
        var e1 = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(hf.Dir).Dispose());
        Assert.Contains("dtype I16 is not supported", e1.Message);

        var bad = WriteFolder("hf-bad-config", edit: c => c["hidden_size"] = 96);
        var e2 = Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(bad.Dir).Dispose());
        output.WriteLine(e2.Message);
        Assert.Contains("config.json implies", e2.Message);

        var other = WriteFolder("hf-bad-arch", edit: c => { c["model_type"] = "qwen2"; c["architectures"] = new JsonArray("Qwen2ForCausalLM"); });
        Assert.Contains("not supported", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(other.Dir).Dispose()).Message);
        // Mixtral: the expert counts must be given and agree with the tensors.
        var noCount = WriteFolder("hf-moe-no-count", edit: c => { c["model_type"] = "mixtral"; c["architectures"] = new JsonArray("MixtralForCausalLM"); });
        Assert.Contains("num_local_experts", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(noCount.Dir).Dispose()).Message);
        var denseTensors = WriteFolder("hf-moe-dense-tensors", edit: c => { c["model_type"] = "mixtral"; c["num_local_experts"] = 4; c["num_experts_per_tok"] = 2; });
        Assert.Contains("block_sparse_moe.gate.weight", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(denseTensors.Dir).Dispose()).Message);
        var tooMany = WriteFolder("hf-moe-too-many", experts: 4, used: 2, edit: c => c["num_experts_per_tok"] = 5);
        Assert.Contains("num_experts_per_tok 5", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(tooMany.Dir).Dispose()).Message);
        var fewer = WriteFolder("hf-moe-fewer", experts: 4, used: 2, edit: c => c["num_local_experts"] = 5);
        Assert.Contains("config.json implies [5, 64]", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(fewer.Dir).Dispose()).Message);
        // OLMo 2: a Llama folder labelled olmo2 lacks the QK-norms; biases and a head size that is not hidden/heads are refused.
        var olmoLabel = WriteFolder("hf-olmo2-llama-tensors", edit: c => { c["model_type"] = "olmo2"; c["architectures"] = new JsonArray("Olmo2ForCausalLM"); });
        Assert.Contains("self_attn.q_norm.weight' is missing", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(olmoLabel.Dir).Dispose()).Message);
        var olmoBias = WriteFolder("hf-olmo2-bias", olmo2: true, edit: c => c["attention_bias"] = true);
        Assert.Contains("attention_bias", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(olmoBias.Dir).Dispose()).Message);
        var olmoHead = WriteFolder("hf-olmo2-head-dim", olmo2: true, edit: c => c["head_dim"] = 8);
        Assert.Contains("hidden_size", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(olmoHead.Dir).Dispose()).Message);

        var gone = WriteFolder("hf-missing-shard");
        File.Delete(Path.Combine(gone.Dir, "model-00002-of-00002.safetensors"));
        Assert.Contains("file not found", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(gone.Dir).Dispose()).Message);

        var layers = WriteFolder("hf-bad-layers", edit: c => c["num_hidden_layers"] = 3);
        Assert.Contains("model.layers.2.input_layernorm.weight' is missing", Assert.Throws<ModelFormatException>(() => HfCheckpoint.Open(layers.Dir).Dispose()).Message);
    }
}

/// <summary>A Llama-3-style byte-level BPE tokenizer.json maps to a gpt2 GGUF vocabulary with merges and the llama-bpe pre-tokenizer.</summary>
public sealed class HfByteLevelTokenizerTests
{
    const string Llama3Pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    /// <summary>GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to U+0100 onwards.</summary>
    static string ByteChar(int b)
    {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        if (keep) return ((char)b).ToString();
        int n = 0;
        for (int x = 0; x < b; x++) if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255))) n++;
        return ((char)(256 + n)).ToString();
    }

    [Fact]
    public void Byte_level_bpe_becomes_a_gpt2_vocabulary_that_tokenizes_with_the_merges()
    {
        string dir = TestPaths.TempFile("hf-bytelevel");
        Directory.CreateDirectory(dir);
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteChar(b)] = b;
        string[] merged = ["he", "hel", "hell", "hello", "\u0120w", "\u0120wo", "\u0120wor", "\u0120worl", "\u0120world"];
        var merges = new JsonArray();
        for (int i = 0; i < merged.Length; i++)
        {
            vocab[merged[i]] = 256 + i;
            string m = merged[i];
            string a = m.Length == 2 ? m[..1] : merged[i - 1], c = m[^1..];
            merges.Add($"{a} {c}");
        }
        var added = new JsonArray(
            new JsonObject { ["id"] = 265, ["content"] = "<|begin_of_text|>", ["special"] = true },
            new JsonObject { ["id"] = 266, ["content"] = "<|end_of_text|>", ["special"] = true });
        for (int i = 267; i < 300; i++) added.Add(new JsonObject { ["id"] = i, ["content"] = $"<|reserved_special_token_{i - 267}|>", ["special"] = true });
        var tok = new JsonObject
        {
            ["added_tokens"] = added,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "Sequence", ["pretokenizers"] = new JsonArray(
                new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = Llama3Pattern }, ["behavior"] = "Isolated", ["invert"] = false },
                new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }) },
            ["post_processor"] = new JsonObject { ["type"] = "TemplateProcessing", ["single"] = new JsonArray(
                new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["type_id"] = 0 } },
                new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }) },
            ["model"] = new JsonObject { ["type"] = "BPE", ["byte_fallback"] = false, ["vocab"] = vocab, ["merges"] = merges },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), tok.ToJsonString());
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), new JsonObject { ["bos_token"] = "<|begin_of_text|>", ["eos_token"] = "<|end_of_text|>" }.ToJsonString());

        var kv = HfTokenizer.Convert(dir, 300);
        var d = kv.ToDictionary(e => e.Key, e => e.Value);
        Assert.Equal("gpt2", d["tokenizer.ggml.model"]);
        Assert.Equal("llama-bpe", d["tokenizer.ggml.pre"]);
        Assert.Equal(9, ((string[])d["tokenizer.ggml.merges"]).Length);
        Assert.Equal(265u, d["tokenizer.ggml.bos_token_id"]);
        Assert.Equal(true, d["tokenizer.ggml.add_bos_token"]); // from the post-processor template
        Assert.Equal(3, ((int[])d["tokenizer.ggml.token_type"])[265]);

        string gguf = TestPaths.TempFile("hf-bytelevel.gguf");
        RandomModel.Write(gguf, new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, TokenizerMetadata = kv });
        using var model = LlamaModel.Open(gguf);
        Assert.Equal([265, 259, 264], model.Tokenizer.Encode("hello world", addBos: true));
        Assert.Equal([265, 258, 72], model.Tokenizer.Encode("hellH", addBos: true)); // 'H' is byte 72
    }
}
