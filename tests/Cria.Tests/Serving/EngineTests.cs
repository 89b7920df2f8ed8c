using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>The engine loop on a tiny random-weight model: chunked prefill, prefix caching and batching change nothing
/// about what a request returns, bit for bit; cancellation returns blocks; stop strings and limits end streams.</summary>
public class EngineTests
{
    public static string ModelPath() => LogitsAgreementTests.ModelFile("serving-f32", new RandomModelSpec
    {
        Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 400, ContextLength = 1024, Seed = 7,
    });

    /// <summary>Quantized variants (K-quants need rows of 256): the batched row kernels must stay batch-invariant.</summary>
    /// <summary>With <paramref name="experts"/> &gt; 0, a mixture of experts (2 per token): rows of a step are regrouped
    /// by expert, and each must still get what it gets alone.</summary>
    public static string ModelPath(GgmlType type, int experts = 0) => type == GgmlType.F32 && experts == 0 ? ModelPath() : LogitsAgreementTests.ModelFile($"serving-{type}-{experts}", new RandomModelSpec
    {
        Dim = 256, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 256, VocabSize = 400, ContextLength = 1024, Seed = 7, WeightType = type, Experts = experts,
    });

    static int[] Prompt(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(i => i == 0 ? 1 : r.Next(3, 400)).ToArray();
    }

    static (LlamaModel, InferenceContext, Engine) Start(SchedulerOptions s, int ctx = 1024, GgmlType type = GgmlType.F32, KvFormat? kv = null, int experts = 0)
    {
        var m = LlamaModel.Open(ModelPath(type, experts));
        var c = new InferenceContext(m, new ContextOptions { ContextSize = ctx, Threads = 2, MicroBatch = 64, Kv = kv ?? KvFormat.F16 });
        return (m, c, new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = s }));
    }

    public record Result(int[] Tokens, float[] Logprobs, TokenLogprob[][] Top, string Text, string Finish);

    public static async Task<Result> Run(Engine e, GenerationRequest r, CancellationToken ct = default)
    {
        var tokens = new List<int>(); var lps = new List<float>(); var tops = new List<TokenLogprob[]>();
        var text = new System.Text.StringBuilder(); string finish = "";
        await foreach (var o in e.GenerateAsync(r, ct))
        {
            if (o.IsToken) { tokens.Add(o.Token); lps.Add(o.Logprob); if (o.TopLogprobs != null) tops.Add(o.TopLogprobs); }
            text.Append(o.Text);
            if (o.FinishReason != null) finish = o.FinishReason;
        }
        return new Result(tokens.ToArray(), lps.ToArray(), tops.ToArray(), text.ToString(), finish);
    }

    static GenerationRequest Greedy(int[] prompt, int max, int top = -1) =>
        new() { Prompt = prompt, MaxTokens = max, Sampler = SamplerOptions.Greedy, IgnoreEog = true, TopLogprobs = top };

    [Fact]
    public void ChunkedPrefillGivesTheSameLogitsAsWholePrompt()
    {
        using var m = LlamaModel.Open(ModelPath());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2, MicroBatch = 64 });
        var p = Prompt(61, 3);
        var b = new Batch();
        for (int i = 0; i < p.Length; i++) b.Add(p[i], i, 0, true);
        ctx.Decode(b);
        var whole = Enumerable.Range(0, p.Length).Select(i => ctx.Logits(i).ToArray()).ToArray();
        foreach (int chunk in new[] { 1, 7, 16, 32 })
        {
            ctx.Cache.Clear();
            for (int start = 0; start < p.Length; start += chunk)
            {
                b.Clear();
                // Another sequence rides along in the same batch, as a decode would.
                b.Add(p[start % p.Length], ctx.Cache.Length(9), 9, false);
                int n = Math.Min(chunk, p.Length - start);
                for (int i = start; i < start + n; i++) b.Add(p[i], i, 0, true);
                ctx.Decode(b);
                for (int i = 0; i < n; i++) Assert.Equal(whole[start + i], ctx.Logits(1 + i).ToArray());
            }
        }
    }

    [Fact]
    public async Task ChunkedAndWholePrefillInTheEngineReturnIdenticalTokensAndLogprobs()
    {
        var p = Prompt(150, 4);
        var (m1, c1, chunked) = Start(new SchedulerOptions { TokenBudget = 16, PrefixCaching = false });
        var (m2, c2, whole) = Start(new SchedulerOptions { TokenBudget = 512, ChunkedPrefill = false, PrefixCaching = false });
        using (m1) using (c1) using (chunked) using (m2) using (c2) using (whole)
        {
            var a = await Run(chunked, Greedy(p, 12, top: 5));
            var b = await Run(whole, Greedy(p, 12, top: 5));
            Assert.Equal(12, a.Tokens.Length);
            Assert.Equal(b.Tokens, a.Tokens);
            Assert.Equal(b.Logprobs, a.Logprobs);
            Assert.Equal(b.Top.SelectMany(x => x), a.Top.SelectMany(x => x));
            Assert.True(chunked.StepsTotal > whole.StepsTotal + 5); // it really ran in chunks
        }
    }

    [Fact]
    public async Task PrefixCacheHitsGiveTheSameOutputAsMisses()
    {
        var (m, c, e) = Start(new SchedulerOptions { TokenBudget = 64 });
        using (m) using (c) using (e)
        {
            var system = Prompt(70, 5);
            var p1 = system.Concat(Prompt(9, 6).Skip(1)).ToArray();
            var p2 = system.Concat(Prompt(13, 7).Skip(1)).ToArray();
            var miss1 = await Run(e, Greedy(p1, 10, top: 3));
            long hits0 = c.Cache.PrefixHitTokens;
            var hit1 = await Run(e, Greedy(p1, 10, top: 3));      // same prompt: 64 of 78 tokens from the cache
            var hit2 = await Run(e, Greedy(p2, 10, top: 3));      // shares the 64-token system prefix
            Assert.Equal(64 + 64, c.Cache.PrefixHitTokens - hits0);
            Assert.Equal(miss1.Tokens, hit1.Tokens);
            Assert.Equal(miss1.Logprobs, hit1.Logprobs);

            c.Cache.ClearPrefixCache();
            var miss2 = await Run(e, Greedy(p2, 10, top: 3));
            Assert.Equal(miss2.Tokens, hit2.Tokens);
            Assert.Equal(miss2.Logprobs, hit2.Logprobs);
            Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        }
    }

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q4_K, 8)]
    public async Task ThirtyTwoConcurrentGreedyRequestsReturnWhatEachReturnsAlone(GgmlType type, int experts = 0)
    {
        var (m, c, e) = Start(new SchedulerOptions { TokenBudget = 64, MaxSequences = 32, PrefixCaching = false }, ctx: 2048, type, experts: experts);
        using (m) using (c) using (e)
        {
            var rng = new Random(11);
            var reqs = Enumerable.Range(0, 32).Select(i => Greedy(Prompt(rng.Next(2, 90), 100 + i), rng.Next(4, 20), top: 2)).ToArray();
            var alone = new List<Result>();
            foreach (var r in reqs) alone.Add(await Run(e, r));
            long stepsAlone = e.StepsTotal;
            var together = await Task.WhenAll(reqs.Select(r => Task.Run(() => Run(e, r))));
            for (int i = 0; i < reqs.Length; i++)
            {
                Assert.Equal(reqs[i].MaxTokens, together[i].Tokens.Length);
                Assert.Equal(alone[i].Tokens, together[i].Tokens);
                Assert.Equal(alone[i].Logprobs, together[i].Logprobs);
                Assert.Equal(alone[i].Text, together[i].Text);
            }
            Assert.True(e.StepsTotal - stepsAlone < stepsAlone / 3, $"batched run took {e.StepsTotal - stepsAlone} steps vs {stepsAlone} alone");
            Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        }
    }

    /// <summary>Issue 6: batch invariance in the server for every KV format (KIVI with a short window so the quantized
    /// part is read), with chunked prefill and prefix caching on (KIVI takes no prefix hits, by design).</summary>
    [Theory]
    [InlineData(KvCacheType.F32)]
    [InlineData(KvCacheType.F16)]
    [InlineData(KvCacheType.Q8_0)]
    [InlineData(KvCacheType.Kivi4)]
    [InlineData(KvCacheType.Kivi2)]
    public async Task ConcurrentRequestsReturnWhatEachReturnsAloneForEveryKvType(KvCacheType kv)
    {
        var format = new KvFormat { Type = kv, KiviGroup = 16, KiviResidual = 32 };
        var (m, c, e) = Start(new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 }, ctx: 2048, GgmlType.Q8_0, format); // head dim 64
        using (m) using (c) using (e)
        {
            var rng = new Random(12);
            var system = Prompt(40, 9);
            var reqs = Enumerable.Range(0, 8).Select(i => Greedy(system.Concat(Prompt(rng.Next(2, 60), 300 + i).Skip(1)).ToArray(), rng.Next(4, 16), top: 2)).ToArray();
            var alone = new List<Result>();
            foreach (var r in reqs) alone.Add(await Run(e, r));
            var together = await Task.WhenAll(reqs.Select(r => Task.Run(() => Run(e, r))));
            for (int i = 0; i < reqs.Length; i++)
            {
                Assert.Equal(alone[i].Tokens, together[i].Tokens);
                Assert.Equal(alone[i].Logprobs, together[i].Logprobs);
            }
            if (format.IsKivi) Assert.Equal(0, c.Cache.PrefixHitTokens);
            else Assert.True(c.Cache.PrefixHitTokens > 0);
            c.Cache.ClearPrefixCache();
            Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        }
    }

    [Fact]
    public async Task PreemptionUnderAShortPoolStillReturnsTheSameTokens()
    {
        // 8 requests of ~40 tokens + 24 generated in a 256-token pool: they cannot all stay resident.
        var (m, c, e) = Start(new SchedulerOptions { TokenBudget = 32, MaxSequences = 8, PrefixCaching = false }, ctx: 256);
        using (m) using (c) using (e)
        {
            var reqs = Enumerable.Range(0, 8).Select(i => Greedy(Prompt(36 + i, 200 + i), 24)).ToArray();
            var alone = new List<Result>();
            foreach (var r in reqs) alone.Add(await Run(e, r));
            long pre = e.PreemptionsTotal;
            var together = await Task.WhenAll(reqs.Select(r => Task.Run(() => Run(e, r))));
            Assert.True(e.PreemptionsTotal > pre);
            for (int i = 0; i < reqs.Length; i++) Assert.Equal(alone[i].Tokens, together[i].Tokens);
            Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        }
    }

    [Fact]
    public async Task EmbeddingsAreMeanPooledFinalHiddenStatesAndIgnoreOtherTraffic()
    {
        var p = Prompt(37, 12);
        float[] expected;
        using (var m = LlamaModel.Open(ModelPath()))
        using (var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2 }) { KeepEmbeddings = true })
        {
            var b = new Batch();
            for (int i = 0; i < p.Length; i++) b.Add(p[i], i, 0, true);
            ctx.Decode(b);
            // The kept state is what the output head reads: logits = W_out · state (F32 weights; summation order differs).
            var w = new float[m.Config.Dim];
            foreach (int row in new[] { 0, 17, 36 })
                foreach (int v in new[] { 0, 5, 123, 399 })
                {
                    Dequantize.Row(m.Output.Type, m.Output.Row(v), w);
                    float dot = 0;
                    var e = ctx.Embedding(row);
                    for (int d = 0; d < w.Length; d++) dot += w[d] * e[d];
                    Assert.Equal(ctx.Logits(row)[v], dot, 1e-3f);
                }
            var sum = new double[m.Config.Dim];
            for (int r = 0; r < p.Length; r++) for (int d = 0; d < sum.Length; d++) sum[d] += ctx.Embedding(r)[d];
            double norm = Math.Sqrt(sum.Sum(x => x * x));
            expected = sum.Select(x => (float)(x / norm)).ToArray();
        }

        var (m2, c2, e2) = Start(new SchedulerOptions { TokenBudget = 32 });
        using (m2) using (c2) using (e2)
        {
            var alone = await e2.EmbedAsync(p);
            Assert.Equal(expected, alone);
            Assert.Equal(1.0, Math.Sqrt(alone.Sum(x => (double)x * x)), 5);
            // While eight streams generate, the embedding is the same bit for bit and leaves no blocks behind.
            var streams = Enumerable.Range(0, 8).Select(i => Task.Run(() => Run(e2, Greedy(Prompt(20 + i, 300 + i), 30)))).ToArray();
            var busy = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => e2.EmbedAsync(p)));
            await Task.WhenAll(streams);
            Assert.All(busy, v => Assert.Equal(alone, v));
            Assert.NotEqual(alone, await e2.EmbedAsync(Prompt(37, 13)));
            Assert.Equal(c2.Cache.BlockCount, c2.Cache.FreeBlocks);
            await Assert.ThrowsAsync<InvalidRequestException>(() => e2.EmbedAsync([]));
        }
    }

    [Fact]
    public async Task AFullQueueRefusesNewRequests()
    {
        var m = LlamaModel.Open(ModelPath());
        var c = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, MicroBatch = 64 });
        using (m) using (c)
        using (var e = new Engine(c, m.Tokenizer, new EngineOptions { MaxWaiting = 2, Scheduler = new SchedulerOptions { TokenBudget = 8 } }))
        {
            // Two 300-token prompts take ~75 steps of 8 tokens before their first token; a third is refused meanwhile.
            var a = e.Submit(Greedy(Prompt(300, 1), 2));
            var b = e.Submit(Greedy(Prompt(300, 2), 2));
            Assert.Throws<EngineOverloadedException>(() => e.Submit(Greedy(Prompt(5, 3), 2)));
            await foreach (var _ in a.Events.ReadAllAsync()) { }
            await foreach (var _ in b.Events.ReadAllAsync()) { }
            var ok = await Run(e, Greedy(Prompt(5, 3), 2)); // room again once they have started generating
            Assert.Equal(2, ok.Tokens.Length);
        }
    }

    [Fact]
    public async Task CancellationFreesBlocksAndStopStringsAndLimitsEndStreams()
    {
        var (m, c, e) = Start(new SchedulerOptions { TokenBudget = 64 });
        using (m) using (c) using (e)
        {
            // Cancel a long request after its first token: the stream ends with OperationCanceledException and the
            // blocks are back (free or only cached) once the engine has seen it.
            using var cts = new CancellationTokenSource();
            var r = e.Submit(Greedy(Prompt(40, 8), 500), cts.Token);
            await r.Events.ReadAsync();
            Assert.True(c.Cache.UsedBlocks > 0);
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => { await foreach (var _ in r.Events.ReadAllAsync()) { } });
            Assert.Equal("cancelled", r.Stats!.FinishReason);
            Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);

            var full = await Run(e, Greedy(Prompt(12, 9), 40));
            Assert.Equal("length", full.Finish);
            Assert.Equal(40, full.Tokens.Length);
            Assert.True(full.Text.Length > 10);
            string stop = full.Text.Substring(full.Text.Length / 2, 3);
            int at = full.Text.IndexOf(stop, StringComparison.Ordinal);
            var stopped = await Run(e, Greedy(Prompt(12, 9), 40) with { Stop = [stop, "\u0001never"] });
            Assert.Equal("stop", stopped.Finish);
            Assert.Equal(full.Text[..at], stopped.Text);

            var zero = await Run(e, Greedy(Prompt(12, 9), 0));
            Assert.Empty(zero.Tokens);
            Assert.Equal("length", zero.Finish);

            Assert.Throws<InvalidRequestException>(() => e.Submit(Greedy(Prompt(1024, 1), 4)));
            Assert.Throws<InvalidRequestException>(() => e.Submit(Greedy([], 4)));
            Assert.Throws<InvalidRequestException>(() => e.Submit(Greedy([1, 400], 4)));

            // A seeded sample repeats.
            var sampled = new GenerationRequest { Prompt = Prompt(12, 9), MaxTokens = 16, Sampler = new SamplerOptions { Temperature = 1.5f, TopK = 0, TopP = 1, MinP = 0, Seed = 42 }, IgnoreEog = true };
            var s1 = await Run(e, sampled);
            var s2 = await Run(e, sampled);
            var s3 = await Run(e, sampled with { Sampler = sampled.Sampler with { Seed = 43 } });
            Assert.Equal(s1.Tokens, s2.Tokens);
            Assert.NotEqual(s1.Tokens, s3.Tokens);
        }
    }
}
