using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Cria.Tests.Training;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Inference;

/// <summary>
/// SwiftKV (SingleInputKV and AcrossKV): the forward pass against a double-precision reference of the SwiftKV block,
/// prompt rows that ask for no logits stopping below layer L without changing any logits, the KV cache's shared layers,
/// the original model run from the same file, the least-squares builder, and refusals.
/// </summary>
public class SwiftKvTests(ITestOutputHelper output)
{
    const int Vocab = 384;

    static RandomModelSpec Spec => new()
    {
        Dim = 64, Layers = 5, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = Vocab, ContextLength = 256, Seed = 77,
    };

    static readonly object FilesLock = new();
    static readonly Dictionary<string, string> Files = new();

    /// <summary>A random llama model with random SwiftKV tensors from layer <paramref name="L"/> on, AcrossKV group
    /// <paramref name="g"/> (made once per key).</summary>
    static string SwiftFile(int L, int g)
    {
        lock (FilesLock)
        {
            string key = $"swiftkv-{L}-{g}";
            if (Files.TryGetValue(key, out var path)) return path;
            path = TestPaths.TempFile(key + ".gguf");
            WithSwiftKv(LogitsAgreementTests.ModelFile("swiftkv-base", Spec), path, L, g, seed: 100 + 10 * L + g);
            return Files[key] = path;
        }
    }

    /// <summary>Copies <paramref name="src"/> and adds SwiftKV metadata and random swiftkv_norm / attn_q_swiftkv /
    /// attn_k_swiftkv / attn_v_swiftkv tensors (F32), independent of <see cref="SwiftKv.Build"/>.</summary>
    static void WithSwiftKv(string src, string dst, int L, int g, int seed, Action<GgufWriter>? tamper = null, bool skipOwnerK = false)
    {
        using var f = GgufFile.Open(src);
        var c = ModelConfig.FromGguf(f);
        var rng = new Random(seed);
        float[] Rand(int n, float scale, float offset = 0) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = offset + scale * (float)(rng.NextDouble() * 2 - 1); return a; }
        var w = new GgufWriter().CopyMetadataFrom(f);
        w.Set(c.Architecture + ".swiftkv.kv_layers", (uint)L).Set(c.Architecture + ".swiftkv.group_size", (uint)g);
        foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Shape.ToArray(), t.Type, f.TensorData(t).ToArray());
        w.AddTensor("swiftkv_norm.weight", [c.Dim], Rand(c.Dim, 0.3f, 1f));
        float s = 1 / MathF.Sqrt(c.Dim);
        for (int l = L; l < c.LayerCount; l++)
        {
            w.AddTensor($"blk.{l}.attn_q_swiftkv.weight", [c.Dim, c.QDim], Rand(c.Dim * c.QDim, s));
            if ((l - L) % g != 0) continue;
            if (!skipOwnerK) w.AddTensor($"blk.{l}.attn_k_swiftkv.weight", [c.Dim, c.KvDim], Rand(c.Dim * c.KvDim, s));
            w.AddTensor($"blk.{l}.attn_v_swiftkv.weight", [c.Dim, c.KvDim], Rand(c.Dim * c.KvDim, s));
        }
        tamper?.Invoke(w);
        w.Write(dst);
    }

    static double[] Dense(WeightMatrix w)
    {
        var row = new float[w.Cols];
        var d = new double[w.Rows * w.Cols];
        for (int r = 0; r < w.Rows; r++)
        {
            Dequantize.Row(w.Type, w.Row(r), row);
            for (int i = 0; i < w.Cols; i++) d[r * w.Cols + i] = row[i];
        }
        return d;
    }

    static double[] Dbl(float[] v) => v.Select(x => (double)x).ToArray();

    /// <summary>The SwiftKV forward in double, every position to the top: layers below L as llama; at L, h =
    /// swiftkv_norm(x); layer l ≥ L attends with q = RoPE(attn_q_swiftkv · attn_norm(x)) to the keys RoPE(attn_k_swiftkv ·
    /// h) and values attn_v_swiftkv · h of its group's first layer. Returns logits [T, vocab].</summary>
    static double[] ReferenceLogits(LlamaModel m, int[] tokens)
    {
        var c = m.Config;
        int T = tokens.Length, D = c.Dim, Q = c.QDim, KV = c.KvDim, F = c.FfnDim, hd = c.HeadDim;
        var table = Reference.RopeTable(T, hd, c.RopeFreqBase);
        var emb = Dense(m.TokenEmbedding);
        var x = new double[T * D];
        for (int t = 0; t < T; t++) Array.Copy(emb, tokens[t] * D, x, t * D, D);
        double[]? k = null, v = null, h = null;
        for (int l = 0; l < c.LayerCount; l++)
        {
            var L = m.Layers[l];
            bool swift = c.IsSwiftKv && l >= c.SwiftKvLayers;
            if (l == c.SwiftKvLayers && swift) h = Reference.RmsNorm(x, Dbl(m.SwiftKvNorm!), D, c.RmsNormEps); // [T, D] the one K/V input
            if (swift && c.OwnsSwiftKv(l))
            {
                k = Reference.Rope(Reference.MatMulNT(h!, T, D, Dense(L.WkSwift!.Value), 0, KV), c.KvHeadCount, hd, T, table);
                v = Reference.MatMulNT(h!, T, D, Dense(L.WvSwift!.Value), 0, KV);
            }
            var xn = Reference.RmsNorm(x, Dbl(L.AttnNorm!), D, c.RmsNormEps);
            var q = Reference.Rope(Reference.MatMulNT(xn, T, D, Dense(swift ? L.WqSwift!.Value : L.Wq), 0, Q), c.HeadCount, hd, T, table);
            if (!swift)
            {
                k = Reference.Rope(Reference.MatMulNT(xn, T, D, Dense(L.Wk), 0, KV), c.KvHeadCount, hd, T, table);
                v = Reference.MatMulNT(xn, T, D, Dense(L.Wv), 0, KV);
            }
            var att = Reference.Attention(q, k!, v!, 1, T, c.HeadCount, c.KvHeadCount, hd);
            x = Add(x, Reference.MatMulNT(att, T, Q, Dense(L.Wo), 0, D));
            xn = Reference.RmsNorm(x, Dbl(L.FfnNorm!), D, c.RmsNormEps);
            var act = Reference.SwiGlu(Reference.MatMulNT(xn, T, D, Dense(L.WGate), 0, F), Reference.MatMulNT(xn, T, D, Dense(L.WUp), 0, F));
            x = Add(x, Reference.MatMulNT(act, T, F, Dense(L.WDown), 0, D));
        }
        var hid = Reference.RmsNorm(x, Dbl(m.OutputNorm), D, c.RmsNormEps);
        return Reference.MatMulNT(hid, T, D, Dense(m.Output), 0, c.VocabSize);
    }

    static double[] Add(double[] a, double[] b) { var r = new double[a.Length]; for (int i = 0; i < a.Length; i++) r[i] = a[i] + b[i]; return r; }

    static int[] Prompt(int n, int seed) => LogitsAgreementTests.Prompt(n, Vocab, seed);

    /// <summary>Checked-in KJV text (tests/Cria.Tests/Texts): the bundled model's training text and held-out chapters.</summary>
    static string Text(string name) => File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Texts", name));

    /// <summary>Every position's logits (all rows asking, so all run to the top) and a prompt's last logits (the other
    /// rows stopping at L) against the double reference; the same for the original model with SwiftKV off.</summary>
    [Theory]
    [InlineData(2, 1)]
    [InlineData(1, 1)]
    [InlineData(4, 1)]
    [InlineData(2, 2)]  // AcrossKV: layers 2–3 share one cache layer, 4 its own
    [InlineData(1, 4)]
    public void Logits_match_a_double_precision_SwiftKV_forward(int L, int g)
    {
        using var m = LlamaModel.Open(SwiftFile(L, g));
        Assert.Equal((L, g), (m.Config.SwiftKvLayers, m.Config.SwiftKvGroup));
        var tokens = Prompt(24, 3);
        var want = ReferenceLogits(m, tokens);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 64, Kv = KvFormat.F32, Threads = 2 });
        Assert.Equal(L + (5 - L + g - 1) / g, ctx.Cache.LayerCount);
        var batch = new Batch(32);
        for (int i = 0; i < tokens.Length; i++) batch.Add(tokens[i], i, 0, true);
        ctx.Decode(batch);
        double worst = 0;
        for (int t = 0; t < tokens.Length; t++)
            for (int i = 0; i < Vocab; i++) worst = Math.Max(worst, Math.Abs(ctx.Logits(t)[i] - want[t * Vocab + i]));
        output.WriteLine($"L={L} g={g}: max |Δ logit| {worst:E2} over {tokens.Length} positions");
        Assert.True(worst < 1e-4, $"max |Δ logit| {worst}");
        var all = ctx.Logits(tokens.Length - 1).ToArray();
        Assert.Equal(0, ctx.RowsStoppedAtSwiftKv);

        ctx.Cache.Clear();
        batch.Clear();
        batch.AddSequence(tokens, 0, 0, logitsForLast: true);
        ctx.Decode(batch);
        Assert.Equal(tokens.Length - 1, ctx.RowsStoppedAtSwiftKv);
        Assert.True(ctx.Logits(tokens.Length - 1).SequenceEqual(all), "the last row's logits change when the others stop at L");

        // --swiftkv off: the file's original model, the same logits as the file without SwiftKV, bit for bit.
        using var original = LlamaModel.Open(LogitsAgreementTests.ModelFile("swiftkv-base", Spec));
        using var off = new InferenceContext(m, new ContextOptions { ContextSize = 64, Threads = 2, SwiftKv = false });
        using var plain = new InferenceContext(original, new ContextOptions { ContextSize = 64, Threads = 2 });
        off.Decode(batch); plain.Decode(batch);
        Assert.False(off.Config.IsSwiftKv);
        Assert.Equal(5, off.Cache.LayerCount);
        Assert.True(off.Logits(tokens.Length - 1).SequenceEqual(plain.Logits(tokens.Length - 1)));
        Assert.False(ctx.Logits(tokens.Length - 1).SequenceEqual(plain.Logits(tokens.Length - 1)));
    }

    /// <summary>Three sequences' prompts in one batch, logits for each last row only (the rest stop at L, so the rows
    /// going up come from three sequences), then eight decode steps together: every logit equals that of the sequence
    /// decoded alone with every row asking, bit for bit.</summary>
    [Theory]
    [InlineData(2, 1)]
    [InlineData(2, 2)]
    public void Rows_that_stop_at_L_change_no_logits_in_a_mixed_batch(int L, int g)
    {
        using var m = LlamaModel.Open(SwiftFile(L, g));
        using var together = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2 });
        using var alone = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2 });
        var prompts = new[] { Prompt(17, 1), Prompt(9, 2), Prompt(20, 3) };
        var batch = new Batch(64);
        var last = new int[3];
        for (int i = 0; i < 20; i++)                            // interleaved rows of the three sequences
            for (int s = 0; s < 3; s++)
                if (i < prompts[s].Length) { int row = batch.Add(prompts[s][i], i, s, i == prompts[s].Length - 1); if (i == prompts[s].Length - 1) last[s] = row; }
        together.Decode(batch);
        Assert.Equal(17 + 9 + 20 - 3, together.RowsStoppedAtSwiftKv);
        var next = new int[3];
        var aloneLogits = new List<float[]>[3];
        for (int s = 0; s < 3; s++)
        {
            alone.Cache.Clear();
            var one = new Batch(32);
            for (int i = 0; i < prompts[s].Length; i++) one.Add(prompts[s][i], i, 0, true);
            alone.Decode(one);
            Assert.True(alone.Logits(prompts[s].Length - 1).SequenceEqual(together.Logits(last[s])), $"sequence {s}'s prompt");
            next[s] = Sampler.ArgMax(together.Logits(last[s]));
            // this sequence's greedy continuation alone, one token per step
            aloneLogits[s] = new();
            int tok = next[s];
            for (int step = 0; step < 8; step++)
            {
                var b1 = new Batch(1);
                b1.Add(tok, prompts[s].Length + step, 0, true);
                alone.Decode(b1);
                aloneLogits[s].Add(alone.Logits(0).ToArray());
                tok = Sampler.ArgMax(alone.Logits(0));
            }
        }
        for (int step = 0; step < 8; step++)
        {
            batch.Clear();
            for (int s = 0; s < 3; s++) batch.Add(next[s], prompts[s].Length + step, s, true);
            together.Decode(batch);
            for (int s = 0; s < 3; s++)
            {
                Assert.True(together.Logits(s).SequenceEqual(aloneLogits[s][step]), $"sequence {s}, decode step {step}");
                next[s] = Sampler.ArgMax(together.Logits(s));
            }
        }
    }

    /// <summary>The builder on the bundled model: layer L's own keys are an exact linear map of h, so the fit finds
    /// attn_k itself; fitted projections give a lower held-out perplexity than copied ones, and the file runs the
    /// original model with SwiftKV off.</summary>
    [Fact]
    public void The_least_squares_builder_recovers_an_exact_map_and_beats_copied_projections()
    {
        string model = TestPaths.Bundled("default.gguf");
        string train = Text("kjv-train.txt"), valid = Text("kjv-valid.txt");
        string fitted = TestPaths.TempFile("swiftkv-fit.gguf"), copied = TestPaths.TempFile("swiftkv-copy.gguf");
        var o = new SwiftKvOptions { KvLayers = 3, MaxChunks = 24, Threads = 2 };
        var report = SwiftKv.Build(model, fitted, train, o, force: true);
        SwiftKv.Build(model, copied, null, o with { Fit = false }, force: true);
        Assert.Equal(24 * 128, report.Tokens);
        Assert.Equal([3, 4, 5], report.Fits.Select(x => x.Layer));
        Assert.True(report.Fits[0].KeyError < 1e-3 && report.Fits[0].ValueError < 1e-3, $"layer 3: {report.Fits[0]}");
        Assert.True(report.Fits[1].KeyError > 1e-3, "layer 4's keys are not a linear map of layer 3's input");

        // With almost no ridge term the fit of the exact map is the map itself.
        string exact = TestPaths.TempFile("swiftkv-fit-exact.gguf");
        SwiftKv.Build(model, exact, train, o with { Damp = 1e-7 }, force: true);
        using (var f = LlamaModel.Open(exact))
        {
            var wk = Dense(f.Layers[3].WkSwift!.Value); var orig = Dense(f.Layers[3].Wk);
            double num = 0, den = 0;
            for (int i = 0; i < wk.Length; i++) { num += (wk[i] - orig[i]) * (wk[i] - orig[i]); den += orig[i] * orig[i]; }
            output.WriteLine($"layer 3 fitted attn_k_swiftkv vs attn_k: relative difference {Math.Sqrt(num / den):E2}");
            Assert.True(Math.Sqrt(num / den) < 1e-3);
            Assert.True(Dense(f.Layers[4].WqSwift!.Value).SequenceEqual(Dense(f.Layers[4].Wq)), "queries keep attn_q");
        }
        double Ppl(string path, bool swift = true)
        {
            using var m = LlamaModel.Open(path);
            using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 128, Threads = 2, SwiftKv = swift });
            return Perplexity.Compute(ctx, m.Tokenizer, valid, 128).Value;
        }
        double pBase = Ppl(model), pFit = Ppl(fitted), pCopy = Ppl(copied), pOff = Ppl(fitted, swift: false);
        output.WriteLine($"held-out perplexity: original {pBase:F3}, SwiftKV L=3 fitted {pFit:F3}, copied {pCopy:F3}, fitted file with SwiftKV off {pOff:F3}");
        Assert.Equal(pBase, pOff);
        Assert.True(pFit < pCopy, $"fitted {pFit} vs copied {pCopy}");
        Assert.True(pFit > pBase, "SwiftKV with 3 of 6 layers fitted, not distilled, is not free");
    }

    /// <summary>Distillation (KL to the original model at τ = 2, only the SwiftKV tensors training) on the bundled model:
    /// 20 steps from copied projections lower the held-out KL to the original; every other tensor of the file is
    /// unchanged, byte for byte.</summary>
    [Fact]
    public void Distillation_lowers_the_held_out_KL_and_touches_only_the_SwiftKV_tensors()
    {
        string model = TestPaths.Bundled("default.gguf");
        string train = Text("kjv-train.txt"), valid = Text("kjv-valid.txt");
        string copied = TestPaths.TempFile("swiftkv-kd-init.gguf"), distilled = TestPaths.TempFile("swiftkv-kd.gguf");
        SwiftKv.Build(model, copied, null, new SwiftKvOptions { KvLayers = 3, Fit = false }, force: true);
        var steps = SwiftKv.Distill(copied, distilled, train, new SwiftKvDistillOptions { Steps = 20, BatchSize = 4, SeqLen = 64, WarmupSteps = 2, Threads = 2 }, force: true);
        Assert.Equal(20, steps.Count);
        double Kld(string path)
        {
            using var original = LlamaModel.Open(model);
            using var m = LlamaModel.Open(path);
            using var b = new InferenceContext(original, new ContextOptions { ContextSize = 128, Threads = 2 });
            using var c = new InferenceContext(m, new ContextOptions { ContextSize = 128, Threads = 2 });
            return Perplexity.CompareTo(b, c, m.Tokenizer, valid, 128).MeanKld;
        }
        double before = Kld(copied), after = Kld(distilled);
        output.WriteLine($"held-out KL(original ‖ SwiftKV L=3): copied {before:F4}, after 20 distillation steps {after:F4}; training τ²·KL {steps[0].Loss:F4} → {steps[^1].Loss:F4}");
        Assert.True(after < 0.9 * before, $"{after} vs {before}");
        using var fi = GgufFile.Open(copied);
        using var fo = GgufFile.Open(distilled);
        Assert.Equal(fi.Tensors.Select(t => t.Name), fo.Tensors.Select(t => t.Name));
        foreach (var t in fi.Tensors)
        {
            bool same = fi.TensorData(t).SequenceEqual(fo.TensorData(fo.GetTensor(t.Name)));
            Assert.True(same != t.Name.Contains("swiftkv"), $"{t.Name}: {(same ? "unchanged" : "changed")}");
        }
    }

    /// <summary>Writes a SwiftKV GGUF (F32) as an ArcticTraining checkpoint folder (<c>LlamaSwiftKVForCausalLM</c>): Hugging
    /// Face names, q/k and q/k_swiftkv rows back in rotate-half order, the upper layers' original q/k/v_proj only when
    /// <paramref name="originals"/>.</summary>
    static string WriteSwiftKvCheckpoint(string gguf, string name, bool originals)
    {
        string dir = TestPaths.TempFile(name);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(dir);
        using var f = GgufFile.Open(gguf);
        var c = ModelConfig.FromGguf(f);
        var tensors = new List<(string, string, long[], byte[])>();
        foreach (var t in f.Tensors)
        {
            var v = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(t)).ToArray();
            string g = t.Name;
            string? hf = g switch
            {
                "token_embd.weight" => "model.embed_tokens.weight",
                "output_norm.weight" => "model.norm.weight",
                "output.weight" => "lm_head.weight",
                "swiftkv_norm.weight" => "model.norm_swiftkv.weight",
                _ => null,
            };
            if (hf == null)
            {
                int layer = int.Parse(g.Split('.')[1]);
                string part = g.Split('.')[2];
                if (!originals && layer >= c.SwiftKvLayers && part is "attn_q" or "attn_k" or "attn_v") continue;
                hf = $"model.layers.{layer}." + part switch
                {
                    "attn_norm" => "input_layernorm", "ffn_norm" => "post_attention_layernorm",
                    "attn_q" => "self_attn.q_proj", "attn_k" => "self_attn.k_proj", "attn_v" => "self_attn.v_proj", "attn_output" => "self_attn.o_proj",
                    "attn_q_swiftkv" => "self_attn.q_proj_swiftkv", "attn_k_swiftkv" => "self_attn.k_proj_swiftkv", "attn_v_swiftkv" => "self_attn.v_proj_swiftkv",
                    "ffn_gate" => "mlp.gate_proj", "ffn_up" => "mlp.up_proj", "ffn_down" => "mlp.down_proj",
                    _ => throw new InvalidOperationException(g),
                } + ".weight";
                int heads = part is "attn_q" or "attn_q_swiftkv" ? c.HeadCount : part is "attn_k" or "attn_k_swiftkv" ? c.KvHeadCount : 0;
                if (heads > 0)
                {
                    // GGUF row h·hd + 2i + j is Hugging Face row h·hd + j·hd/2 + i (HfCheckpoint.PermuteForRope).
                    int cols = (int)t.Shape[0], rows = (int)t.Shape[1], hd = rows / heads;
                    var u = new float[v.Length];
                    for (int h = 0; h < heads; h++)
                        for (int i = 0; i < hd / 2; i++)
                            for (int j = 0; j < 2; j++)
                                Array.Copy(v, (h * hd + 2 * i + j) * cols, u, (h * hd + j * hd / 2 + i) * cols, cols);
                    v = u;
                }
            }
            long[] shape = t.Shape.Length == 1 ? [t.Shape[0]] : [t.Shape[1], t.Shape[0]];
            tensors.Add((hf, "F32", shape, SafetensorsWriter.Encode(v, "F32")));
        }
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var cfg = new System.Text.Json.Nodes.JsonObject
        {
            ["architectures"] = new System.Text.Json.Nodes.JsonArray("LlamaSwiftKVForCausalLM"), ["model_type"] = "llama_swiftkv",
            ["hidden_size"] = c.Dim, ["intermediate_size"] = c.FfnDim, ["num_hidden_layers"] = c.LayerCount,
            ["num_attention_heads"] = c.HeadCount, ["num_key_value_heads"] = c.KvHeadCount, ["rms_norm_eps"] = c.RmsNormEps,
            ["rope_theta"] = c.RopeFreqBase, ["max_position_embeddings"] = c.ContextLength, ["vocab_size"] = c.VocabSize,
            ["tie_word_embeddings"] = false, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
            ["swiftkv"] = true, ["num_key_value_layers"] = c.SwiftKvLayers, ["key_value_group_size"] = c.SwiftKvGroup,
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
        Formats.HfCheckpointTests.WriteTokenizer(dir);
        return dir;
    }

    /// <summary>An ArcticTraining-style checkpoint folder, run directly (converted on the fly), gives the GGUF's logits
    /// bit for bit; without the upper layers' original projections it runs as SwiftKV only, and says so.</summary>
    [Theory]
    [InlineData(2, 1, true)]
    [InlineData(2, 2, false)]
    [InlineData(1, 4, false)]
    public void A_Hugging_Face_SwiftKV_checkpoint_gives_the_GGUFs_logits(int L, int g, bool originals)
    {
        string gguf = SwiftFile(L, g);
        string dir = WriteSwiftKvCheckpoint(gguf, $"hf-swiftkv-{L}-{g}-{originals}", originals);
        using var direct = LlamaModel.Open(dir);
        using var m = LlamaModel.Open(gguf);
        Assert.Equal((L, g), (direct.Config.SwiftKvLayers, direct.Config.SwiftKvGroup));
        Assert.Equal(originals, direct.HasOriginalAttention);
        var tokens = Prompt(20, 4);
        float[][] All(LlamaModel model, bool swift)
        {
            using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 2, SwiftKv = swift });
            var b = new Batch(32);
            for (int i = 0; i < tokens.Length; i++) b.Add(tokens[i], i, 0, true);
            ctx.Decode(b);
            return Enumerable.Range(0, tokens.Length).Select(i => ctx.Logits(i).ToArray()).ToArray();
        }
        var want = All(m, true); var got = All(direct, true);
        for (int i = 0; i < tokens.Length; i++) Assert.True(want[i].SequenceEqual(got[i]), $"position {i}");
        if (originals)
        {
            var off = All(direct, false); var offWant = All(m, false);
            for (int i = 0; i < tokens.Length; i++) Assert.True(offWant[i].SequenceEqual(off[i]), $"SwiftKV off, position {i}");
        }
        else
        {
            var e = Assert.Throws<CriaException>(() => new InferenceContext(direct, new ContextOptions { ContextSize = 64, SwiftKv = false }));
            Assert.Contains("runs only as SwiftKV", e.Message);
        }
    }

    /// <summary>Checkpoint configs that do not fit are refused; one without the teacher's projections cannot be distilled.</summary>
    [Fact]
    public void Bad_SwiftKV_checkpoints_are_refused()
    {
        string dir = WriteSwiftKvCheckpoint(SwiftFile(2, 2), "hf-swiftkv-bad", originals: false);
        string cfg = Path.Combine(dir, "config.json"), good = File.ReadAllText(cfg);
        foreach (var (edit, expect) in new[] { ("\"num_key_value_layers\":2", "\"num_key_value_layers\":7"), ("\"key_value_group_size\":2", "\"key_value_group_size\":4") })
        {
            Assert.Contains(edit, good);
            File.WriteAllText(cfg, good.Replace(edit, expect));
            Assert.Contains("does not fit num_hidden_layers 5", Assert.Throws<ModelFormatException>(() => LlamaModel.Open(dir).Dispose()).Message);
        }
        File.WriteAllText(cfg, good);
        string gguf = TestPaths.TempFile("hf-swiftkv-bad.gguf");
        using (var ck = HfCheckpoint.Open(dir)) ck.WriteGguf(gguf, GgmlType.F32);
        var e = Assert.Throws<CriaException>(() => SwiftKv.Distill(gguf, TestPaths.TempFile("never.gguf"), "text", new SwiftKvDistillOptions()));
        Assert.Contains("lacks the original attention projections", e.Message);
    }

    [Fact]
    public void Malformed_SwiftKV_files_are_refused()
    {
        string src = LogitsAgreementTests.ModelFile("swiftkv-base", Spec);
        void Refused(string name, string expect, int L, int g, bool skipOwnerK = false, string arch = "llama")
        {
            string path = TestPaths.TempFile($"swiftkv-bad-{name}.gguf");
            string from = arch == "llama" ? src : LogitsAgreementTests.ModelFile("swiftkv-olmo2", Spec with { Architecture = arch });
            WithSwiftKv(from, path, Math.Clamp(L, 1, 4), Math.Clamp(g, 1, 4), 5, w => w.Set(arch + ".swiftkv.kv_layers", (uint)L).Set(arch + ".swiftkv.group_size", (uint)g), skipOwnerK);
            var e = Assert.Throws<ModelFormatException>(() => LlamaModel.Open(path).Dispose());
            Assert.Contains(expect, e.Message);
        }
        Refused("L-eq-n", "kv_layers 5", 5, 1);
        Refused("L-0-group", "group_size 0", 2, 0);
        Refused("group-too-big", "group_size 4", 2, 4);
        Refused("no-k", "attn_k_swiftkv", 2, 1, skipOwnerK: true);
        Refused("olmo2", "llama architecture", 2, 1, arch: "olmo2");
    }

    [Fact]
    public void Builder_and_context_refuse_what_they_cannot_do()
    {
        string src = LogitsAgreementTests.ModelFile("swiftkv-base", Spec), out1 = TestPaths.TempFile("swiftkv-refused.gguf");
        File.Delete(out1);
        var o = new SwiftKvOptions { KvLayers = 2, Fit = false };
        Assert.Contains("--layers 5", Assert.Throws<CriaException>(() => SwiftKv.Build(src, out1, null, o with { KvLayers = 5 })).Message);
        Assert.Contains("--group 4", Assert.Throws<CriaException>(() => SwiftKv.Build(src, out1, null, o with { GroupSize = 4 })).Message);
        Assert.Contains("calibration text", Assert.Throws<CriaException>(() => SwiftKv.Build(src, out1, null, o with { Fit = true })).Message);
        Assert.Contains("already a SwiftKV model", Assert.Throws<CriaException>(() => SwiftKv.Build(SwiftFile(2, 1), out1, null, o)).Message);
        Assert.False(File.Exists(out1));
        Assert.Contains("exists", Assert.Throws<CriaException>(() => SwiftKv.Build(src, SwiftFile(2, 1), null, o)).Message);
        string olmo = LogitsAgreementTests.ModelFile("swiftkv-olmo2", Spec with { Architecture = "olmo2" });
        Assert.Contains("llama architecture", Assert.Throws<CriaException>(() => SwiftKv.Build(olmo, out1, null, o)).Message);

        // Distillation needs a SwiftKV model with float SwiftKV tensors; the trainer refuses SwiftKV files.
        var d = new SwiftKvDistillOptions { Steps = 1, BatchSize = 1, SeqLen = 16 };
        string text = string.Join(' ', Enumerable.Repeat("the quick brown fox", 200));
        Assert.Contains("not a SwiftKV model", Assert.Throws<CriaException>(() => SwiftKv.Distill(src, out1, text, d)).Message);
        string q8 = TestPaths.TempFile("swiftkv-q8-refused.gguf");
        Quantization.ModelQuantizer.Run(SwiftFile(2, 1), q8, new Quantization.QuantizeOptions { FileType = Quantization.LlamaFileType.Q8_0, Force = true });
        Assert.Contains("Q8_0", Assert.Throws<CriaException>(() => SwiftKv.Distill(q8, out1, text, d)).Message);
        Assert.Contains("is a SwiftKV model", Assert.Throws<CriaException>(() => GgufImport.Read(SwiftFile(2, 1))).Message);
        Assert.False(File.Exists(out1));

        // A LoRA adapter on a layer whose queries SwiftKV replaces would silently not apply: refused.
        using var m = LlamaModel.Open(SwiftFile(2, 1));
        string adapter = TestPaths.TempFile("swiftkv-lora.gguf");
        var layout = new LoraLayout(GgufImport.Read(src).Shape, new LoraOptions { Rank = 2, Targets = LoraTarget.AttnQ });
        layout.Write(adapter, new float[layout.Count]);
        var a = LoraAdapter.Load(adapter, m);
        var e = Assert.Throws<CriaException>(() => new InferenceContext(m, new ContextOptions { ContextSize = 32, Loras = [(a, 1f)] }));
        Assert.Contains("blk.2.attn_q.weight", e.Message);
        using var ok = new InferenceContext(m, new ContextOptions { ContextSize = 32, Loras = [(a, 1f)], SwiftKv = false });
    }

    /// <summary>The quantizer takes a SwiftKV file (the new matrices get the mix's base type) and the result still runs
    /// as SwiftKV, as close to the double forward over its dequantized weights as the base model's Q8_0 file is to its own.</summary>
    [Fact]
    public void A_quantized_SwiftKV_file_runs()
    {
        string q8 = TestPaths.TempFile("swiftkv-q8.gguf");
        Quantization.ModelQuantizer.Run(SwiftFile(2, 1), q8, new Quantization.QuantizeOptions { FileType = Quantization.LlamaFileType.Q8_0, Force = true });
        using var f32 = LlamaModel.Open(SwiftFile(2, 1));
        using var m = LlamaModel.Open(q8);
        Assert.True(m.Config.IsSwiftKv);
        Assert.Equal(GgmlType.Q8_0, m.Layers[3].WkSwift!.Value.Type);
        var tokens = Prompt(16, 9);
        float[] Last(LlamaModel model)
        {
            using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 32, Threads = 2 });
            var b = new Batch(16);
            b.AddSequence(tokens, 0, 0);
            ctx.Decode(b);
            return ctx.Logits(15).ToArray();
        }
        var want = ReferenceLogits(m, tokens);   // the double forward over the Q8_0 weights as dequantized
        var got = Last(m);
        double worst = Enumerable.Range(0, Vocab).Max(i => Math.Abs(got[i] - want[15 * Vocab + i]));
        output.WriteLine($"Q8_0 SwiftKV vs its double reference: max |Δ logit| {worst:E2} (vs the F32 file: {Last(f32).Zip(got, (x, y) => Math.Abs(x - y)).Max():E2})");
        string plainQ8 = TestPaths.TempFile("swiftkv-base-q8.gguf");
        Quantization.ModelQuantizer.Run(LogitsAgreementTests.ModelFile("swiftkv-base", Spec), plainQ8, new Quantization.QuantizeOptions { FileType = Quantization.LlamaFileType.Q8_0, Force = true });
        using var pq = LlamaModel.Open(plainQ8);
        var wantPlain = ReferenceLogits(pq, tokens); var gotPlain = Last(pq);
        double plain = Enumerable.Range(0, Vocab).Max(i => Math.Abs(gotPlain[i] - wantPlain[15 * Vocab + i]));
        output.WriteLine($"the base model's Q8_0 file vs its double reference: {plain:E2}");
        // Q8_0 activations cost both the same order of error on this model's large logits (0.1–0.4).
        Assert.True(worst < Math.Max(0.05, 1.5 * plain), $"{worst} vs {plain}");
    }
}
