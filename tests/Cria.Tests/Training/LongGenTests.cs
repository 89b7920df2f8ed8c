using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Tests.Oracle;
using Cria.Tests.Serving;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// LongGen's hybrid attention (Ge et al. 2024): windowed layers (sinks + a sliding window) beside full-attention ones,
/// trained, written to GGUF and run by inference with the windowed layers in each sequence's bounded window pool.
/// </summary>
public sealed class LongGenTests(ITestOutputHelper output)
{
    const int T = 160, Window = 8, Sinks = 4;

    static readonly Lazy<TokenizerVocabulary> Vocab = new(() => TokenizerTrainer.Train(string.Concat(Enumerable.Repeat(TrainingTests.Text, 4)), 320));

    /// <summary>3 layers, LongGen's layout: 0 and 2 windowed (sinks 4 + window 8), 1 full; trained briefly at T = 160,
    /// then one sequence forward and the model written. Returns the trainer's logits of every position too.</summary>
    static (string Path, int[] Sequence, float[][] Logits, LlamaShape Shape) TrainedHybrid(string name)
    {
        var vocab = Vocab.Value;
        var tok = vocab.CreateTokenizer();
        var tokens = tok.Encode(string.Concat(Enumerable.Repeat(TrainingTests.Text, 12)), addBos: false);
        var shape = new LlamaShape
        {
            VocabSize = vocab.Count, Dim = 32, Layers = 3, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = T,
            WindowLayers = ModelConfig.LongGenLayers(3), Window = Window, WindowSinks = Sinks,
        };
        Assert.Equal([true, false, true], shape.WindowLayers);
        using var t = new Trainer(shape, new TrainingOptions { BatchSize = 1, Steps = 20, WarmupSteps = 2, LearningRate = 3e-3f, Seed = 3, Threads = 2 }, tokens, tok.Bos);
        for (int i = 0; i < 20; i++) t.TrainStep();
        var m = t.Model;
        Trainer.FillSequence(m.Tokens, m.Targets, tokens, 7, tok.Bos);
        m.Forward();
        string path = TestPaths.TempFile(name);
        GgufExport.Write(path, m.Layout, m.Parameters, vocab);
        return (path, m.Tokens.ToArray(), Enumerable.Range(0, T).Select(p => m.LogitsRow(p).ToArray()).ToArray(), shape);
    }

    static double MaxDiff(float[] a, float[] b) => a.Zip(b).Max(x => Math.Abs(x.First - x.Second));
    static double Rms(float[] a, float[] b) => Math.Sqrt(a.Zip(b).Average(x => (double)(x.First - x.Second) * (x.First - x.Second)));

    /// <summary>
    /// The trained hybrid model's logits in Cria's inference equal the trainer's (an independent implementation of the
    /// masks), whether the 160 positions come as one prefill, in micro-batches of 5 rows, or one token at a time; the
    /// windowed layers then hold a bounded window (blocks in the middle dropped) and the pool only the full layer.
    /// llama.cpp reads the file as a plain llama model (it ignores the window keys): it agrees while every key is
    /// still inside the window, and not after.
    /// </summary>
    [Fact]
    public void Hybrid_model_runs_with_the_training_logits_and_a_bounded_window()
    {
        var (path, seq, logits, shape) = TrainedHybrid("longgen.gguf");
        var cfg = LlamaModel.Open(path).Config;
        Assert.Equal(shape.WindowLayers, cfg.WindowLayers);
        Assert.Equal((Window, Sinks), (cfg.Window, cfg.WindowSinks));
        Assert.Equal(shape.WindowLayers, GgufImport.Read(path).Shape.WindowLayers); // --init keeps the layout

        double prefill, chunked = 0, stepwise = 0;
        using (var cria = new CriaRunner(path, T))
        {
            var all = cria.AllLogits(seq);
            prefill = Enumerable.Range(0, T).Max(p => MaxDiff(all[p], logits[p]));
        }
        using (var model = LlamaModel.Open(path))
        using (var ctx = new InferenceContext(model, new ContextOptions { ContextSize = T, Threads = 2, Kv = KvFormat.F32, MicroBatch = 5 }))
        {
            var batch = new Batch(T);
            for (int i = 0; i < T; i++) batch.Add(seq[i], i, 0, true);
            ctx.Decode(batch);
            for (int p = 0; p < T; p++) chunked = Math.Max(chunked, MaxDiff(ctx.Logits(p).ToArray(), logits[p]));
            var w = ctx.Cache.GetSequence(0).Window!;
            output.WriteLine($"after {T} positions the windowed layers hold {w.Blocks.Count} blocks of {ctx.Cache.WindowRingBlocks} (positions {string.Join(",", w.BlockPos.ToArray())}); {w.Dropped} dropped");
            Assert.True(w.Dropped > 0, "the windowed layers dropped nothing");
            Assert.Equal(0, w.BlockPos[0]); // the sink block stays
            Assert.Equal(1, ctx.Cache.PooledLayerCount);
            Assert.Equal(2.0 * 16 * 4, ctx.Cache.BytesPerToken); // the one full layer: K and V, F32, kvDim 16

            ctx.Cache.Clear();
            var one = new Batch(1);
            for (int p = 0; p < T; p++)
            {
                one.Clear(); one.Add(seq[p], p, 0, true);
                ctx.Decode(one);
                stepwise = Math.Max(stepwise, MaxDiff(ctx.Logits(0).ToArray(), logits[p]));
            }
            Assert.True(ctx.Cache.GetSequence(0).Window!.Blocks.Count <= ctx.Cache.WindowRingBlocks);
        }
        output.WriteLine($"max |Δ logit| against the trainer: prefill {prefill:E2}, micro-batches of 5 {chunked:E2}, one token at a time {stepwise:E2}");
        Assert.True(prefill < 1e-4 && chunked < 1e-4 && stepwise < 1e-4);

        using var cpp = new LlamaCpp(path, T);
        var cl = cpp.AllLogits(seq);
        double inside = Enumerable.Range(0, Window).Max(p => MaxDiff(cl[p], logits[p]));
        double beyond = Enumerable.Range(Window + 8, T - Window - 8).Max(p => MaxDiff(cl[p], logits[p]));
        output.WriteLine($"llama.cpp (full attention everywhere): positions < {Window} {inside:E2}, later {beyond:E2}");
        Assert.True(inside < 1e-4);
        Assert.True(beyond > 1e-2, "the windowed layers' masks change nothing after the window");
    }

    /// <summary>Speculative decoding truncates: going back up to <see cref="KvCache.WindowSlack"/> positions and decoding
    /// again gives the same logits (the windowed layers kept what those queries see); going back further is refused.
    /// Two sequences decoding together give each one's own logits.</summary>
    [Fact]
    public void Truncation_and_several_sequences_keep_the_window_right()
    {
        var (path, seq, logits, _) = TrainedHybrid("longgen-truncate.gguf");
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 2 * T, Threads = 2, Kv = KvFormat.F32, MicroBatch = 8 });
        var batch = new Batch(2 * T);
        for (int i = 0; i < T - 20; i++) batch.Add(seq[i], i, 0, false);
        ctx.Decode(batch);
        int back = KvCache.WindowSlack;
        ctx.Cache.Truncate(0, T - 20 - back);
        batch.Clear();
        for (int i = T - 20 - back; i < T; i++) batch.Add(seq[i], i, 0, true);
        ctx.Decode(batch);
        double worst = 0;
        for (int i = 0; i < batch.Count; i++) worst = Math.Max(worst, MaxDiff(ctx.Logits(i).ToArray(), logits[T - 20 - back + i]));
        Assert.True(worst < 1e-4, $"after truncating {back} positions the logits differ by {worst}");
        var e = Assert.Throws<CriaException>(() => ctx.Cache.Truncate(0, T - back - 1));
        Assert.Contains("at most", e.Message);

        // Two sequences interleaved, one token of each per step: sequence 1 starts 30 positions later.
        ctx.Cache.Clear();
        double both = 0;
        var two = new Batch(2);
        for (int p = 0; p < T; p++)
        {
            two.Clear();
            two.Add(seq[p], p, 0, true);
            if (p >= 30) two.Add(seq[p - 30], p - 30, 1, true);
            ctx.Decode(two);
            both = Math.Max(both, MaxDiff(ctx.Logits(0).ToArray(), logits[p]));
            if (p >= 30) both = Math.Max(both, MaxDiff(ctx.Logits(1).ToArray(), logits[p - 30]));
        }
        Assert.True(both < 1e-4, $"two sequences: {both}");
    }

    /// <summary>The same windows imposed at run time (<see cref="AttentionWindowOverride"/>, CLI --attn-window) give the
    /// logits of a file that declares them; window 0 lifts a file's windows (full attention, the plain file's logits).</summary>
    [Fact]
    public void Windows_imposed_at_run_time_equal_windows_in_the_file()
    {
        var spec = new RandomModelSpec { Dim = 128, Layers = 3, Heads = 4, KvHeads = 2, FfnDim = 96, VocabSize = 320, ContextLength = 128, Seed = 9 }; // head dim 32 (Q8_0 KV)
        string plain = TestPaths.TempFile("lg-plain.gguf"), hybrid = TestPaths.TempFile("lg-hybrid.gguf");
        RandomModel.Write(plain, spec);
        RandomModel.Write(hybrid, spec with { ExtraMetadata = [("llama.attention.sliding_window", 8u), ("llama.attention.sliding_window_sinks", 4u), ("llama.attention.sliding_window_pattern", new[] { true, false, true })] });
        var rng = new Random(5);
        var seq = Enumerable.Range(0, 100).Select(_ => rng.Next(3, 320)).ToArray();
        float[][] Run(string path, AttentionWindowOverride? o, KvCacheType kv = KvCacheType.F32)
        {
            using var model = LlamaModel.Open(path);
            using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 128, Threads = 2, Kv = new KvFormat { Type = kv }, MicroBatch = 32, AttentionWindow = o });
            var batch = new Batch(seq.Length);
            for (int i = 0; i < seq.Length; i++) batch.Add(seq[i], i, 0, true);
            ctx.Decode(batch);
            return Enumerable.Range(0, seq.Length).Select(i => ctx.Logits(i).ToArray()).ToArray();
        }
        var file = Run(hybrid, null);
        var imposed = Run(plain, new AttentionWindowOverride(8, 4, "0,2"));
        var full = Run(plain, null);
        var lifted = Run(hybrid, new AttentionWindowOverride(0));
        Assert.True(Enumerable.Range(0, seq.Length).Max(p => MaxDiff(file[p], imposed[p])) == 0, "imposed windows differ from the file's");
        Assert.True(Enumerable.Range(0, seq.Length).Max(p => MaxDiff(full[p], lifted[p])) == 0, "lifted windows differ from full attention");
        Assert.True(Enumerable.Range(0, seq.Length).Max(p => MaxDiff(full[p], file[p])) > 1e-3, "the windows change nothing");
        Assert.True(Enumerable.Range(0, 8).Max(p => MaxDiff(full[p], file[p])) == 0, "positions inside the window must not change");
        // The window pools store F16 and Q8_0 too: the hybrid model moves from its F32-cache logits by what the
        // format's rounding moves the full-attention model (the window pool read back wrong would move it far more).
        foreach (var kv in new[] { KvCacheType.F16, KvCacheType.Q8_0 })
        {
            var hq = Run(hybrid, null, kv); var fq = Run(plain, null, kv);
            double dh = Enumerable.Range(0, seq.Length).Average(p => Rms(hq[p], file[p]));
            double df = Enumerable.Range(0, seq.Length).Average(p => Rms(fq[p], full[p]));
            output.WriteLine($"{kv} KV against F32, RMS Δ logit: hybrid {dh:E2}, full attention {df:E2}");
            Assert.True(dh > 0 && dh < 2 * df, $"{kv}: hybrid {dh} against full attention {df}");
        }
    }

    /// <summary>The server on a hybrid model (layer 0 windowed, 4 sinks + 16): sixteen greedy requests together return
    /// what each returns alone (chunked prefill, continuous batching; prefix caching asked for but, by design, not
    /// taken), and every block and window pool comes back.</summary>
    [Fact]
    public async Task Served_together_hybrid_requests_return_what_each_returns_alone()
    {
        using var m = LlamaModel.Open(EngineTests.ModelPath());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 2048, Threads = 2, MicroBatch = 64, AttentionWindow = new AttentionWindowOverride(16, 4, "0") });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 48, MaxSequences = 16, PrefixCaching = true } });
        var rng = new Random(3);
        var reqs = Enumerable.Range(0, 16).Select(i => new GenerationRequest
        {
            Prompt = Enumerable.Range(0, rng.Next(2, 120)).Select(j => j == 0 ? 1 : rng.Next(3, 400)).ToArray(),
            MaxTokens = rng.Next(10, 40), Sampler = SamplerOptions.Greedy, IgnoreEog = true,
        }).ToArray();
        var alone = new List<EngineTests.Result>();
        foreach (var r in reqs) alone.Add(await EngineTests.Run(e, r));
        var together = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(e, r))));
        for (int i = 0; i < reqs.Length; i++)
        {
            Assert.Equal(alone[i].Tokens, together[i].Tokens);
            Assert.Equal(alone[i].Logprobs, together[i].Logprobs);
        }
        Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        Assert.Equal(0, c.Cache.PrefixHitTokens);
    }

    /// <summary>A hybrid draft model whose history changes further back than its windows can take back (65+ positions)
    /// starts its sequence again and drafts what a fresh drafter drafts.</summary>
    [Fact]
    public void A_hybrid_draft_model_follows_a_history_that_changes_far_back()
    {
        using var model = LlamaModel.Open(EngineTests.ModelPath());
        ContextOptions Options() => new() { ContextSize = 512, Threads = 2, Kv = KvFormat.F32, MicroBatch = 64, AttentionWindow = new AttentionWindowOverride(16, 4, "0") };
        var rng = new Random(8);
        var a = Enumerable.Range(0, 200).Select(i => i == 0 ? 1 : rng.Next(3, 400)).ToArray();
        var b = a.Take(50).Concat(Enumerable.Range(0, 150).Select(_ => rng.Next(3, 400))).ToArray();
        var o = new SpeculativeOptions { DraftMax = 6, DraftPMin = 0 };
        using var ctx = new InferenceContext(model, Options());
        var drafter = new ModelDrafter(ctx, o);
        drafter.Begin(SamplerOptions.Greedy);
        var drafts = new int[6];
        Assert.Equal(6, drafter.Draft(a, drafts));
        int n = drafter.Draft(b, drafts); // 150+ positions back: more than the windows keep
        using var fresh = new InferenceContext(model, Options());
        var expected = new int[6];
        var f = new ModelDrafter(fresh, o);
        f.Begin(SamplerOptions.Greedy);
        Assert.Equal(f.Draft(b, expected), n);
        Assert.Equal(expected, drafts);
    }

    /// <summary>Files that say the layout wrongly, and what the windowed layers do not run with, are refused clearly.</summary>
    [Fact]
    public void Bad_layouts_and_unsupported_combinations_are_refused()
    {
        string Write(string name, params (string, object)[] extra)
        {
            string p = TestPaths.TempFile(name);
            RandomModel.Write(p, new RandomModelSpec { Dim = 64, Layers = 3, Heads = 4, KvHeads = 2, FfnDim = 96, VocabSize = 320, ContextLength = 64, ExtraMetadata = extra });
            return p;
        }
        var wrongCount = Write("lg-count.gguf", ("llama.attention.sliding_window", 8u), ("llama.attention.sliding_window_pattern", new[] { true, false }));
        Assert.Contains("one bool per layer", Assert.Throws<ModelFormatException>(() => LlamaModel.Open(wrongCount)).Message);
        var noWindow = Write("lg-zero.gguf", ("llama.attention.sliding_window", 0u), ("llama.attention.sliding_window_pattern", new[] { true, false, true }));
        Assert.Contains("window ≥ 1", Assert.Throws<ModelFormatException>(() => LlamaModel.Open(noWindow)).Message);
        // sliding_window alone (some Mistral conversions) is ignored, as llama.cpp ignores it for llama
        var alone = Write("lg-alone.gguf", ("llama.attention.sliding_window", 8u));
        using (var m = LlamaModel.Open(alone)) Assert.False(m.Config.HasWindowedLayers);

        var good = Write("lg-good.gguf", ("llama.attention.sliding_window", 8u), ("llama.attention.sliding_window_sinks", 4u), ("llama.attention.sliding_window_pattern", new[] { true, false, true }));
        using var model = LlamaModel.Open(good);
        Assert.Contains("KIVI", Assert.Throws<CriaException>(() => new InferenceContext(model, new ContextOptions { Kv = new KvFormat { Type = KvCacheType.Kivi2 } })).Message);
        Assert.Contains("--kv-evict", Assert.Throws<CriaException>(() =>
            new InferenceContext(model, new ContextOptions { Eviction = new KvEvictionOptions { Type = KvEvictionType.Sinks, Budget = 32 } })).Message);
        Assert.Contains("no layer", Assert.Throws<CriaException>(() => ModelConfig.ParseWindowLayers("", 3)).Message);
        Assert.Contains("not a layer", Assert.Throws<CriaException>(() => ModelConfig.ParseWindowLayers("0,3", 3)).Message);
        Assert.Equal([true, true, false, false, true, true], ModelConfig.ParseWindowLayers("longgen", 6));
    }
}
