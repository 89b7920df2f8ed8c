using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Activation Beacon (Zhang et al. 2024) in the engine: a model file with beacon tensors runs window by window through
/// <see cref="BeaconStream"/> — the memory of condensed beacons in the KV cache, raw tokens dropped — with the logits of
/// the streaming double reference (<see cref="BeaconReference"/>, the same one the trainer's gradients are checked
/// against in <see cref="GradientCheckTests.ActivationBeacon"/>).
/// </summary>
public sealed class BeaconTests(ITestOutputHelper output)
{
    const int W = 16, Ratio = 4, T = 100;

    static readonly Lazy<TokenizerVocabulary> Vocab = new(() => TokenizerTrainer.Train(string.Concat(Enumerable.Repeat(TrainingTests.Text, 4)), 320));

    /// <summary>A 2-layer GQA model with random base and beacon parameters, written with window 16 and ratio 4.</summary>
    internal static (string Path, ParameterLayout Layout, double[] P, BeaconLayout Beacon, double[] Bp, int[] Tokens) BeaconModel(string name, bool mlp = false)
    {
        var vocab = Vocab.Value;
        var shape = new LlamaShape { VocabSize = vocab.Count, Dim = 32, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 64, ContextLength = 64 };
        var plan = new BeaconPlan(T, W, Ratios(T));
        using var m = new LlamaTrainingModel(shape, 1, plan.Rows, 1, beacon: plan, beaconMlp: mlp);
        var rng = new TrainingRng(7);
        m.Initialize(ref rng);
        var r = new Random(11);
        foreach (var t in m.Layout.Tensors.Where(t => t.IsMatrix))
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.Parameters[i] = (float)((r.NextDouble() * 2 - 1) * 0.3);
        foreach (var t in m.Beacon!.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.BeaconParameters[i] = (float)((r.NextDouble() * 2 - 1) * 0.3);
        string path = TestPaths.TempFile(name);
        GgufExport.Write(path, m.Layout, m.Parameters, vocab, extraMetadata: new Dictionary<string, object>
        {
            [BeaconTraining.WindowKey] = (uint)W, [BeaconTraining.RatioKey] = (uint)Ratio,
        }, extraTensors: (m.Beacon.Tensors, m.BeaconParameters));
        var tokens = vocab.CreateTokenizer().Encode(string.Concat(Enumerable.Repeat(TrainingTests.Text, 4)), addBos: true).Take(T).ToArray();
        Assert.Equal(T, tokens.Length);
        return (path, m.Layout, m.Parameters.Select(x => (double)x).ToArray(), m.Beacon, m.BeaconParameters.Select(x => (double)x).ToArray(), tokens);
    }

    /// <summary>The streaming engine's ratios for a text of n tokens: every window but the last condensed at 4.</summary>
    static int[] Ratios(int n)
    {
        int windows = (n + W - 1) / W;
        return Enumerable.Range(0, windows).Select(c => c < windows - 1 ? Ratio : 0).ToArray();
    }

    static double MaxDiff(ReadOnlySpan<float> a, double[] b, int off)
    {
        double d = 0;
        for (int i = 0; i < a.Length; i++) d = Math.Max(d, Math.Abs(a[i] - b[off + i]));
        return d;
    }

    /// <summary>
    /// 100 tokens in windows of 16 at ratio 4: six windows condensed to four beacons each. The engine's logits of every
    /// token equal the reference's whether the text comes at once, in micro-batches of 5 or token by token; the cache
    /// then holds the 24 beacons and the last window's 4 raw tokens. With an F16 cache the logits move by the cache's
    /// rounding only. Without the beacons (the same file read as a plain model) the logits after the first window are
    /// another model's.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)] // with the beacons' own up and down projections
    public void Beacon_model_runs_window_by_window_with_the_reference_logits(bool mlp)
    {
        var (path, layout, p, bl, bp, tokens) = BeaconModel(mlp ? "beacon-mlp.gguf" : "beacon.gguf", mlp);
        int V = layout.Shape.VocabSize;
        var reference = BeaconReference.Logits(layout, p, bl, bp, tokens, W, Ratios(T));
        using var model = LlamaModel.Open(path);
        Assert.True(model.Config.HasBeacons);
        Assert.Equal(mlp, model.Layers[0].Beacon!.Up != null);
        Assert.Equal((W, Ratio), (model.Config.BeaconWindow, model.Config.BeaconRatio));
        double Run(KvFormat kv, int microBatch, int step)
        {
            using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 2, Kv = kv, MicroBatch = microBatch });
            var stream = new BeaconStream(ctx, 3);
            double worst = 0;
            for (int i = 0; i < T; i += step)
            {
                int at = i;
                stream.Feed(tokens.AsSpan(i, Math.Min(step, T - i)), (j, z) => worst = Math.Max(worst, MaxDiff(z, reference, (at + j) * V)));
            }
            Assert.Equal(6 * W / Ratio, stream.Memory);
            Assert.Equal(T - 6 * W, stream.Raw);
            Assert.Equal(stream.Memory + stream.Raw, ctx.Cache.Length(3));
            return worst;
        }
        double all = Run(KvFormat.F32, 512, T), chunks = Run(KvFormat.F32, 5, T), single = Run(KvFormat.F32, 512, 1), half = Run(KvFormat.F16, 512, T);
        output.WriteLine($"max |Δ| against the reference: at once {all:E2}, micro-batches of 5 {chunks:E2}, token by token {single:E2}; F16 cache {half:E2}");
        Assert.True(Math.Max(all, Math.Max(chunks, single)) < 1e-4, "the engine's logits differ from the reference");
        Assert.True(half < 0.05, $"an F16 cache moves the logits by {half:E2}");

        // The same text with full attention (no beacons): identical in the first window, different after it.
        using var plainCtx = new InferenceContext(model, new ContextOptions { ContextSize = 128, Threads = 2, Kv = KvFormat.F32 });
        var batch = new Batch(T);
        for (int i = 0; i < T; i++) batch.Add(tokens[i], i, 0, true);
        plainCtx.Decode(batch);
        Assert.True(MaxDiff(plainCtx.Logits(W - 1), reference, (W - 1) * V) < 1e-4);
        Assert.True(MaxDiff(plainCtx.Logits(T - 1), reference, (T - 1) * V) > 1e-2);
    }

    /// <summary>
    /// Perplexity with beacons scores llama-perplexity's positions (the second half of each chunk) on the stream: its
    /// mean NLL equals the one of the reference's logits. Greedy generation through the stream runs past the cache's
    /// 64 tokens (160 tokens in all: the memory grows by 4 per window of 16) and every token it emits is the argmax of
    /// the reference over the text so far.
    /// </summary>
    [Fact]
    public void Beacon_perplexity_and_generation_follow_the_reference()
    {
        var (path, layout, p, bl, bp, tokens) = BeaconModel("beacon-ppl.gguf");
        int V = layout.Shape.VocabSize;
        var reference = BeaconReference.Logits(layout, p, bl, bp, tokens, W, Ratios(T));
        using var model = LlamaModel.Open(path);
        var tok = model.Tokenizer;
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 2, Kv = KvFormat.F32 });
        string text = tok.Decode(tokens.Skip(1).ToArray());
        var chunk = Perplexity.Chunks(tok.Encode(text, addBos: true), T, tok.Bos, tok.AddBos)[0];
        Assert.Equal(tokens, chunk);
        var ppl = Perplexity.Compute(ctx, tok, text, T, maxChunks: 1, beaconRatio: 0);
        double nll = 0; int n = 0;
        for (int t = T / 2; t < T - 1; t++) { nll += Perplexity.Nll(reference.AsSpan(t * V, V).ToArray().Select(x => (float)x).ToArray(), tokens[t + 1]); n++; }
        output.WriteLine($"beacon perplexity {ppl.Value:F4}, reference {Math.Exp(nll / n):F4}");
        Assert.Equal(n, ppl.ScoredTokens);
        Assert.True(Math.Abs(ppl.MeanNll - nll / n) < 1e-5, $"mean NLL {ppl.MeanNll} vs reference {nll / n}");

        ctx.Cache.Clear();
        var gen = new Generator(ctx, tok) { BeaconRatio = Ratio };
        var prompt = tokens.Take(60).ToArray();
        var got = gen.GenerateTokens(prompt, new GenerationOptions { MaxTokens = 100, StopAtEndOfGeneration = false, Sampler = SamplerOptions.Greedy }).ToArray();
        Assert.Equal("length", gen.LastStats!.StopReason);
        Assert.Equal(100, got.Length);
        int[] all = [.. prompt, .. got];
        var z = BeaconReference.Logits(layout, p, bl, bp, all, W, Ratios(all.Length));
        for (int i = 0; i < got.Length; i++)
        {
            int at = prompt.Length - 1 + i, best = 0;
            for (int v = 1; v < V; v++) if (z[at * V + v] > z[at * V + best]) best = v;
            Assert.True(best == got[i], $"generated token {i} is {got[i]}, the reference's argmax {best}");
        }
    }

    /// <summary>Wrong uses are refused with our exceptions: a model without beacons, a ratio that does not divide the
    /// window, a context smaller than a window and its beacons, KIVI and eviction caches, a sequence already in the cache, beacon rows mixed with token rows or sent to a
    /// plain model, and a file whose beacon keys disagree.</summary>
    [Fact]
    public void Beacon_misuse_is_refused()
    {
        var (path, layout, _, _, _, tokens) = BeaconModel("beacon-refusals.gguf");
        using var model = LlamaModel.Open(path);
        using (var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 1 }))
        {
            Assert.Contains("must divide", Assert.Throws<CriaException>(() => new BeaconStream(ctx, 0, ratio: 3)).Message);
            using (var small = new InferenceContext(model, new ContextOptions { ContextSize = 16, Threads = 1 }))
                Assert.Contains("raise -c", Assert.Throws<CriaException>(() => new BeaconStream(small, 0)).Message);
            var b = new Batch(4);
            b.Add(tokens[0], 0, 0, true);
            ctx.Decode(b);
            Assert.Contains("already has tokens", Assert.Throws<CriaException>(() => new BeaconStream(ctx, 0)).Message);
            Assert.Throws<InvalidOperationException>(() => b.AddBeacon(1, 0, 0, 0));
        }
        using (var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 1, Kv = new KvFormat { Type = KvCacheType.Kivi2, KiviResidual = 32 } }))
            Assert.Contains("plain", Assert.Throws<CriaException>(() => new BeaconStream(ctx, 0)).Message);
        using (var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 1, Eviction = new KvEvictionOptions { Type = KvEvictionType.Sinks, Budget = 32 } }))
            Assert.Contains("plain", Assert.Throws<CriaException>(() => new BeaconStream(ctx, 0)).Message);

        string plainPath = TestPaths.TempFile("beacon-plain.gguf");
        GgufExport.Write(plainPath, layout, new float[layout.Count], Vocab.Value);
        using (var plain = LlamaModel.Open(plainPath))
        using (var ctx = new InferenceContext(plain, new ContextOptions { ContextSize = 64, Threads = 1 }))
        {
            Assert.Contains("no Activation Beacon", Assert.Throws<CriaException>(() => new BeaconStream(ctx, 0)).Message);
            var beacons = new Batch(2);
            beacons.AddBeacon(0, 0, 0, 0);
            Assert.Throws<InvalidBatchException>(() => ctx.Decode(beacons));
        }

        string bad = TestPaths.TempFile("beacon-bad.gguf");
        GgufExport.Write(bad, layout, new float[layout.Count], Vocab.Value, extraMetadata: new Dictionary<string, object>
        {
            [BeaconTraining.WindowKey] = (uint)W, [BeaconTraining.RatioKey] = 5u,
        });
        Assert.Throws<ModelFormatException>(() => LlamaModel.Open(bad));
    }
}
