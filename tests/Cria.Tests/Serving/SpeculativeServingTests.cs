using System.Net.Http.Json;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Server;
using Cria.Serving;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// Speculative decoding in the serving engine (prompt lookup, <see cref="EngineOptions.Speculative"/>): greedy
/// requests return the tokens, log-probabilities, text and finish reasons of plain decoding while drafts are kept;
/// the KV cache holds only kept tokens afterwards (prefix-cache hits on them give plain results; every block comes
/// back); preemption and KIVI caches change nothing; sampled requests follow the target's exact distribution.
/// </summary>
public class SpeculativeServingTests
{
    static readonly SpeculativeOptions Lookup = SpeculativeOptions.Lookup;

    static (LlamaModel, InferenceContext, Engine) Start(string path, SchedulerOptions s, SpeculativeOptions? spec, int ctx = 1024, KvFormat? kv = null)
    {
        var m = LlamaModel.Open(path);
        var c = new InferenceContext(m, new ContextOptions { ContextSize = ctx, Threads = 2, MicroBatch = 64, Kv = kv ?? KvFormat.F16 });
        return (m, c, new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = s, Speculative = spec }));
    }

    static GenerationRequest Greedy(int[] prompt, int max, float repeatPenalty = 1f, int top = -1, string[]? stop = null) => new()
    {
        Prompt = prompt, MaxTokens = max, IgnoreEog = true, TopLogprobs = top, Stop = stop ?? [],
        Sampler = SamplerOptions.Greedy with { RepeatPenalty = repeatPenalty },
    };

    static void AssertSame(EngineTests.Result plain, EngineTests.Result spec, string what)
    {
        Assert.True(plain.Tokens.SequenceEqual(spec.Tokens), $"{what}: tokens differ");
        Assert.Equal(plain.Logprobs, spec.Logprobs);
        Assert.Equal(plain.Top.SelectMany(x => x), spec.Top.SelectMany(x => x));
        Assert.Equal(plain.Text, spec.Text);
        Assert.Equal(plain.Finish, spec.Finish);
    }

    [Theory]
    [InlineData(1f, 64, 16)]  // the default row limit: 6 decode rows leave 10 for drafts, shared out
    [InlineData(1f, 64, 64)]
    [InlineData(1.3f, 64, 64)]
    [InlineData(1f, 8, 64)]   // a budget of 8 tokens a step for 6 requests: most drafts do not fit and are cut short
    public async Task Greedy_requests_return_the_tokens_and_logprobs_of_plain_decoding(float repeatPenalty, int budget, int rowLimit)
    {
        // The bundled model's greedy continuations repeat themselves, so lookup's drafts are kept often. Six requests at
        // once, each its own length; one with a stop string taken from the middle of its plain output.
        string[] texts =
        [
            "And God said unto Noah, Make thee an ark", "In the beginning God created", "And it came to pass",
            "The LORD is my shepherd", "Now these are the generations of the sons of Noah", "And Jacob said",
        ];
        var (m0, c0, plain) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = budget }, null, ctx: 1536);
        var (m1, c1, spec) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = budget, DraftRowLimit = rowLimit }, Lookup, ctx: 1536);
        using (m0) using (c0) using (plain) using (m1) using (c1) using (spec)
        {
            var reqs = texts.Select((t, i) => Greedy(m0.Tokenizer.Encode(t, addBos: true), 60 + 23 * i, repeatPenalty, top: 3)).ToArray();
            var first = await EngineTests.Run(plain, reqs[2]);
            string cut = first.Text.Substring(first.Text.Length / 2, 6);
            reqs[2] = reqs[2] with { Stop = [cut] };
            long plainSteps = plain.StepsTotal;

            var want = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(plain, r))));
            var got = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(spec, r))));
            for (int i = 0; i < reqs.Length; i++) AssertSame(want[i], got[i], texts[i]);
            Assert.Equal("stop", got[2].Finish);
            Assert.Equal(reqs[0].MaxTokens, got[0].Tokens.Length); // drafts never run past max_tokens

            long tokens = got.Sum(g => g.Tokens.Length);
            Assert.True(spec.SpecDraftTokensTotal > 0 && spec.SpecDraftsTotal > 0);
            Assert.True(spec.SpecAcceptedTokensTotal <= spec.SpecDraftTokensTotal);
            // The bundled model keeps about half of lookup's drafts without a penalty (docs/speculative.md); with one,
            // fewer; with the short budget most drafts are cut, so there are fewer to keep.
            Assert.True(spec.SpecAcceptedTokensTotal > (repeatPenalty == 1f && budget > 8 ? tokens / 6 : 5),
                $"kept {spec.SpecAcceptedTokensTotal} of {spec.SpecDraftTokensTotal} drafts for {tokens} tokens");
            Assert.Equal(tokens, spec.GenerationTokensTotal);
            Assert.True(spec.StepsTotal < plain.StepsTotal - plainSteps, $"speculative steps {spec.StepsTotal}, plain {plain.StepsTotal - plainSteps}");
            c1.Cache.ClearPrefixCache();
            Assert.Equal(c1.Cache.BlockCount, c1.Cache.FreeBlocks);
        }
    }

    [Fact]
    public async Task Prefix_cache_blocks_published_after_speculation_hold_only_kept_tokens()
    {
        // Request A runs speculatively (drafts written to the cache, some rejected), its blocks are published; B's prompt
        // is A's prompt and most of A's output, so B reuses those blocks. B must get plain decoding's result, and A's
        // blocks must hold the K/V of A's real tokens (a rejected draft's K/V left behind would change B's logprobs).
        var (m0, c0, plain) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = 64, PrefixCaching = false }, null, ctx: 1024);
        var (m1, c1, spec) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = 64 }, Lookup with { Adaptive = false }, ctx: 1024);
        using (m0) using (c0) using (plain) using (m1) using (c1) using (spec)
        {
            var a = Greedy(m0.Tokenizer.Encode("And the LORD spake unto Moses, saying", addBos: true), 150, top: 2);
            var ra = await EngineTests.Run(spec, a);
            AssertSame(await EngineTests.Run(plain, a), ra, "A");
            Assert.True(spec.SpecDraftTokensTotal > spec.SpecAcceptedTokensTotal, "some drafts must be rejected for this test to mean anything");
            // Inter-token latency is recorded once per step that streamed tokens (vLLM's per-iteration ITL): kept drafts
            // arrive with their step's own token, so a speculative request records fewer intervals than tokens.
            var again = spec.Submit(a);
            await foreach (var _ in again.Events.ReadAllAsync()) { }
            var stats = again.Stats!;
            Assert.Equal(150, stats.GeneratedTokens);
            Assert.InRange(stats.InterTokenSeconds.Count, 1, 148);
            var plainAgain = plain.Submit(a);
            await foreach (var _ in plainAgain.Events.ReadAllAsync()) { }
            Assert.Equal(149, plainAgain.Stats!.InterTokenSeconds.Count);

            var b = Greedy([.. a.Prompt, .. ra.Tokens.Take(130)], 60, top: 2);
            long hits = c1.Cache.PrefixHitTokens;
            var rb = await EngineTests.Run(spec, b);
            Assert.True(c1.Cache.PrefixHitTokens - hits >= 128, $"only {c1.Cache.PrefixHitTokens - hits} prompt tokens came from the cache");
            AssertSame(await EngineTests.Run(plain, b), rb, "B");
        }
    }

    public static TheoryData<KvCacheType> KvTypes => new() { KvCacheType.F16, KvCacheType.Q8_0, KvCacheType.Kivi2 };

    [Theory]
    [MemberData(nameof(KvTypes))]
    public async Task Preemption_and_quantized_caches_keep_greedy_tokens_exact(KvCacheType kv)
    {
        // 8 requests of the bundled model (~110 tokens each) in a 512-token pool: they cannot all stay resident, so
        // running requests with drafts are preempted and recomputed. KIVI with a 32-token residual makes rejected drafts
        // cross its quantization groups.
        var format = new KvFormat { Type = kv, KiviGroup = 16, KiviResidual = 32 };
        var (m0, c0, plain) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = 48, MaxSequences = 8, PrefixCaching = false }, null, ctx: 2048, format);
        var (m1, c1, spec) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = 48, MaxSequences = 8, PrefixCaching = false }, Lookup, ctx: 512, format);
        using (m0) using (c0) using (plain) using (m1) using (c1) using (spec)
        {
            string[] verses = ["And God said", "And the LORD said unto Moses", "Blessed is the man", "And he said unto them",
                "In the beginning", "Thus saith the LORD", "And it came to pass", "Then Jesus said"];
            var reqs = verses.Select((v, i) => Greedy(m0.Tokenizer.Encode(v, addBos: true), 90 + 3 * i)).ToArray();
            var want = new List<EngineTests.Result>();
            foreach (var r in reqs) want.Add(await EngineTests.Run(plain, r));
            var got = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(spec, r))));
            for (int i = 0; i < reqs.Length; i++) AssertSame(want[i], got[i], $"request {i}");
            Assert.True(spec.PreemptionsTotal > 0, "the pool was large enough: nothing was preempted");
            Assert.True(spec.SpecAcceptedTokensTotal > 20, $"kept {spec.SpecAcceptedTokensTotal} of {spec.SpecDraftTokensTotal}");
            Assert.Equal(c1.Cache.BlockCount, c1.Cache.FreeBlocks);
        }
    }

    [Fact]
    public async Task Sampled_requests_follow_the_target_distribution()
    {
        // Requests of 4 tokens from the bundled model, top-k 4 at temperature 1, after a prompt that repeats itself, so
        // that lookup finds most first tokens in it and drafts two tokens (all that max_tokens leaves) after them; the
        // two verdicts then decide tokens 2 and 3. Over 4 000 requests the frequencies of (t1, t2, t3) must match the
        // exact distribution enumerated with plain forward passes through the same sampler chain (chi-square at
        // p-value 1e-6).
        var sampling = new SamplerOptions { Temperature = 1f, TopK = 4, TopP = 1f, MinP = 0f };
        using var model = LlamaModel.Open(TestPaths.Bundled());
        // The prompt: a verse and the model's greedy continuation of it, which repeats itself.
        var prompt = model.Tokenizer.Encode("And God said unto Noah", addBos: true);
        using (var refCtx = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 1 }))
            for (int i = 0; i < 40; i++)
            {
                refCtx.Cache.Remove(0);
                var b = new Batch(prompt.Length); b.AddSequence(prompt, 0, 0); refCtx.Decode(b);
                prompt = [.. prompt, Sampler.ArgMax(refCtx.Logits(b.Count - 1))];
            }
        var exact = ExactFirstThree(model, prompt, sampling);

        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 4096, Threads = 2, MicroBatch = 64 });
        using var e = new Engine(ctx, model.Tokenizer, new EngineOptions
        {
            Scheduler = new SchedulerOptions { TokenBudget = 512, MaxSequences = 64, DraftRowLimit = 512 },
            Speculative = Lookup with { Adaptive = false },
        });
        const int N = 4_000;
        var counts = await SampleFirstThree(e, prompt, sampling, N, exact);
        // Two drafts after most first tokens, both verdicts common.
        Assert.InRange(e.SpecDraftTokensTotal, N / 2, 3L * N);
        Assert.InRange(e.SpecAcceptedTokensTotal, e.SpecDraftTokensTotal / 10, e.SpecDraftTokensTotal * 9 / 10);

        Cria.Tests.Inference.ChiSquare.AssertFollows(exact, counts, N);
    }

    /// <summary>The exact probability of every first three tokens after <paramref name="prompt"/> under
    /// <paramref name="sampling"/>'s chain, enumerated with plain forward passes.</summary>
    internal static Dictionary<(int, int, int), double> ExactFirstThree(LlamaModel model, int[] prompt, SamplerOptions sampling)
    {
        int vocab = model.Config.VocabSize;
        using var refCtx = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 1 });
        var dist = new float[vocab];
        float[] Next(int[] seq)
        {
            refCtx.Cache.Remove(0);
            var b = new Batch(seq.Length); b.AddSequence(seq, 0, 0); refCtx.Decode(b);
            new Sampler(vocab, sampling).Distribution(refCtx.Logits(b.Count - 1), dist);
            return (float[])dist.Clone();
        }
        static int[] Support(float[] p) => Enumerable.Range(0, p.Length).Where(j => p[j] > 0).ToArray();
        var p1 = Next(prompt);
        var exact = new Dictionary<(int, int, int), double>();
        foreach (int a in Support(p1))
        {
            var p2 = Next([.. prompt, a]);
            foreach (int b in Support(p2))
            {
                var p3 = Next([.. prompt, a, b]);
                foreach (int c in Support(p3)) exact[(a, b, c)] = (double)p1[a] * p2[b] * p3[c];
            }
        }
        return exact;
    }

    /// <summary>Counts of the first three tokens of <paramref name="n"/> four-token requests (seeds 0 … n − 1), 250 at a
    /// time; each must have probability &gt; 0 in <paramref name="exact"/>.</summary>
    internal static async Task<Dictionary<(int, int, int), int>> SampleFirstThree(Engine e, int[] prompt, SamplerOptions sampling, int n,
        Dictionary<(int, int, int), double> exact)
    {
        var counts = new Dictionary<(int, int, int), int>();
        for (int start = 0; start < n; start += 250)
        {
            var batch = await Task.WhenAll(Enumerable.Range(start, Math.Min(250, n - start)).Select(i => EngineTests.Run(e, new GenerationRequest
            {
                Prompt = prompt, MaxTokens = 4, IgnoreEog = true, Sampler = sampling with { Seed = (ulong)i },
            })));
            foreach (var r in batch)
            {
                Assert.Equal(4, r.Tokens.Length);
                var key = (r.Tokens[0], r.Tokens[1], r.Tokens[2]);
                Assert.True(exact.ContainsKey(key), $"({key}) has probability 0");
                counts[key] = counts.GetValueOrDefault(key) + 1;
            }
        }
        return counts;
    }

    [Fact]
    public async Task The_http_server_with_lookup_answers_as_without_and_counts_drafts_in_metrics()
    {
        Task<(string Text, double Kept, double Drafted)> Ask(SpeculativeOptions? spec) => AskServer(new ServerOptions
        {
            ModelPath = TestPaths.Bundled(), ModelName = "cria-spec", Port = 0, ContextSize = 1024, Threads = 2,
            Engine = new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 }, Speculative = spec },
        }, 100);
        var plain = await Ask(null);
        var lookup = await Ask(Lookup);
        Assert.Equal(plain.Text, lookup.Text);
        Assert.Equal((0.0, 0.0), (plain.Kept, plain.Drafted));
        Assert.True(lookup.Kept > 10 && lookup.Kept <= lookup.Drafted, $"kept {lookup.Kept} of {lookup.Drafted}");
    }

    /// <summary>Starts a server, asks <c>/v1/completions</c> for <paramref name="maxTokens"/> greedy tokens after "And God
    /// said unto Noah", and reads the speculative decoding counters of <c>/metrics</c>.</summary>
    internal static async Task<(string Text, double Kept, double Drafted)> AskServer(ServerOptions o, int maxTokens)
    {
        await using var server = await CriaServer.StartAsync(o);
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        using var r = await http.PostAsJsonAsync("/v1/completions", new { prompt = "And God said unto Noah", max_tokens = maxTokens, temperature = 0 });
        r.EnsureSuccessStatusCode();
        var body = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
        var metrics = await http.GetStringAsync("/metrics");
        double Counter(string name) => double.Parse(metrics.Split('\n').First(l => l.StartsWith(name + "{", StringComparison.Ordinal)).Split(' ')[1],
            System.Globalization.CultureInfo.InvariantCulture);
        return (body.GetProperty("choices")[0].GetProperty("text").GetString()!,
            Counter("cria_spec_decode_num_accepted_tokens_total"), Counter("cria_spec_decode_num_draft_tokens_total"));
    }

    [Fact]
    public async Task Json_requests_do_not_draft_and_bad_settings_are_refused()
    {
        var (m, c, e) = Start(TestPaths.Bundled(), new SchedulerOptions { TokenBudget = 64 }, Lookup, ctx: 512);
        using (m) using (c) using (e)
        {
            var r = await EngineTests.Run(e, new GenerationRequest
            {
                Prompt = m.Tokenizer.Encode("{\"a\": {\"a\": {\"a\": ", addBos: true), MaxTokens = 40, JsonObject = true,
                Sampler = SamplerOptions.Greedy,
            });
            Assert.NotEmpty(r.Tokens);
            Assert.Equal(0, e.SpecDraftTokensTotal);
        }
        using var model = LlamaModel.Open(TestPaths.Bundled());
        using var evicting = new InferenceContext(model, new ContextOptions
        {
            ContextSize = 256, Threads = 1, Eviction = new KvEvictionOptions { Type = KvEvictionType.Sinks, Budget = 64 },
        });
        var ex = Assert.Throws<CriaException>(() => new Engine(evicting, model.Tokenizer, new EngineOptions { Speculative = Lookup }));
        Assert.Contains("eviction", ex.Message);
        using var plain = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 1 });
        Assert.Throws<CriaException>(() => new Engine(plain, model.Tokenizer, new EngineOptions { Speculative = Lookup with { DraftMax = 0 } }));
        // A KIVI cache keeps MicroBatch positions beyond its residual to take back: more drafts than that are refused.
        using var kivi = new InferenceContext(model, new ContextOptions
        {
            ContextSize = 256, Threads = 1, MicroBatch = 8, Kv = new KvFormat { Type = KvCacheType.Kivi2, KiviGroup = 16, KiviResidual = 32 },
        });
        Assert.Contains("KIVI", Assert.Throws<CriaException>(() => new Engine(kivi, model.Tokenizer, new EngineOptions { Speculative = Lookup })).Message);
        new Engine(kivi, model.Tokenizer, new EngineOptions { Speculative = Lookup with { DraftMax = 8 } }).Dispose();
    }
}
