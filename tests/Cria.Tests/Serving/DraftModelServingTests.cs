using Cria.Inference;
using Cria.Models;
using Cria.Server;
using Cria.Serving;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// Speculative decoding in the serving engine with a draft model (<see cref="EngineOptions.DraftContext"/>): greedy
/// requests return the tokens of plain decoding, the draft context gives every block back, sampled requests follow the
/// target's exact distribution (the drafts' own distributions enter the acceptance rule), and the HTTP server answers
/// as without.
/// </summary>
public class DraftModelServingTests
{
    // p-min 0: the bundled draft model is rarely 75 % sure of the target's text (llama.cpp's default cut drafts almost
    // nothing here), and these tests are about what happens to drafts
    static readonly SpeculativeOptions Draft = new() { DraftMax = 8, DraftPMin = 0 };

    static GenerationRequest Greedy(int[] prompt, int max) => new()
    {
        Prompt = prompt, MaxTokens = max, IgnoreEog = true, TopLogprobs = 2, Sampler = SamplerOptions.Greedy,
    };

    [Theory]
    [InlineData("draft.gguf")]
    [InlineData("default.gguf")] // the target drafting for itself: every greedy draft is the target's own choice
    public async Task Greedy_requests_return_the_tokens_of_plain_decoding_and_the_draft_context_gives_its_blocks_back(string draftFile)
    {
        string[] texts = ["And God said unto Noah, Make thee an ark", "In the beginning God created", "And it came to pass", "The LORD is my shepherd", "And Jacob said"];
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var dm = LlamaModel.Open(TestPaths.Bundled(draftFile));
        var sched = new SchedulerOptions { TokenBudget = 64 };
        using var c0 = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, MicroBatch = 64 });
        using var c1 = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, MicroBatch = 64 });
        using var dc = new InferenceContext(dm, new ContextOptions { ContextSize = 1024, Threads = 2 });
        using var plain = new Engine(c0, m.Tokenizer, new EngineOptions { Scheduler = sched });
        using var spec = new Engine(c1, m.Tokenizer, new EngineOptions { Scheduler = sched, Speculative = Draft, DraftContext = dc });
        var reqs = texts.Select((t, i) => Greedy(m.Tokenizer.Encode(t, addBos: true), 50 + 17 * i)).ToArray();
        var want = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(plain, r))));
        var got = await Task.WhenAll(reqs.Select(r => Task.Run(() => EngineTests.Run(spec, r))));
        for (int i = 0; i < reqs.Length; i++)
        {
            Assert.True(want[i].Tokens.SequenceEqual(got[i].Tokens), $"{texts[i]}: tokens differ");
            Assert.Equal(want[i].Logprobs, got[i].Logprobs);
            Assert.Equal(want[i].Text, got[i].Text);
        }
        long tokens = got.Sum(g => g.Tokens.Length);
        Assert.Equal(tokens, spec.GenerationTokensTotal);
        Assert.True(spec.SpecDraftTokensTotal > tokens / 4, $"drafted {spec.SpecDraftTokensTotal} for {tokens} tokens");
        if (draftFile == "default.gguf")
            Assert.True(spec.SpecAcceptedTokensTotal >= spec.SpecDraftTokensTotal * 95 / 100, $"kept {spec.SpecAcceptedTokensTotal} of {spec.SpecDraftTokensTotal} of its own drafts");
        else
            Assert.True(spec.SpecAcceptedTokensTotal > spec.SpecDraftTokensTotal / 4 && spec.SpecAcceptedTokensTotal < spec.SpecDraftTokensTotal,
                $"kept {spec.SpecAcceptedTokensTotal} of {spec.SpecDraftTokensTotal}");
        Assert.Equal(dc.Cache.BlockCount, dc.Cache.FreeBlocks); // every finished request's draft sequence is gone
    }

    [Fact]
    public void Drafting_together_gives_each_drafter_what_drafting_alone_gives()
    {
        // Three greedy drafters with different histories in one draft context, in lockstep, against each drafting alone in
        // a context of its own; then again after their histories moved on (the caches are cut back and caught up), with
        // one drafter's room 0 and one stopped by p-min. Then sampled drafters: each draft has probability > 0 under the
        // distribution the drafter reports for it.
        using var dm = LlamaModel.Open(TestPaths.Bundled("draft.gguf"));
        var tok = dm.Tokenizer;
        int[][] histories =
        [
            tok.Encode("And God said unto Noah", addBos: true), tok.Encode("In the beginning God created the heaven", addBos: true),
            tok.Encode("The LORD is my shepherd; I shall not", addBos: true),
        ];
        var opts = new SpeculativeOptions { DraftMax = 6, DraftPMin = 0 };
        using var shared = new InferenceContext(dm, new ContextOptions { ContextSize = 512, Threads = 2 });
        var together = histories.Select((_, i) => new ModelDrafter(shared, opts, 10 + i)).ToList();
        foreach (var d in together) d.Begin(SamplerOptions.Greedy);
        var tokens = new int[3 * 6]; var counts = new int[3]; var scratch = new int[6];
        var batch = new Batch(16);
        int[] Alone(int[] history, int room)
        {
            using var c = new InferenceContext(dm, new ContextOptions { ContextSize = 512, Threads = 2 });
            var d = new ModelDrafter(c, opts);
            d.Begin(SamplerOptions.Greedy);
            var t = new int[room];
            return t[..d.Draft(history, t)];
        }
        for (int round = 0; round < 2; round++)
        {
            int[] room = round == 0 ? [6, 4, 6] : [6, 0, 3];
            ModelDrafter.DraftTogether(shared, batch, together, i => histories[i], room, tokens, counts, scratch);
            for (int i = 0; i < 3; i++)
            {
                var want = room[i] == 0 ? [] : Alone(histories[i], room[i]);
                Assert.Equal(want, tokens.AsSpan(i * 6, counts[i]).ToArray());
            }
            // the histories move on: the first keeps two of its drafts and adds a token of its own, the others one each
            histories[0] = [.. histories[0], .. tokens.AsSpan(0, 2), 5];
            histories[1] = [.. histories[1], 7];
            histories[2] = [.. histories[2], tokens[12]];
        }
        var picky = new ModelDrafter(shared, opts with { DraftPMin = 1f }, 20);
        picky.Begin(SamplerOptions.Greedy);
        ModelDrafter.DraftTogether(shared, batch, [picky], _ => histories[0], [6], tokens, counts, scratch);
        Assert.Equal(0, counts[0]); // no token is certain

        var sampled = histories.Select((_, i) => new ModelDrafter(shared, opts, 30 + i)).ToList();
        for (int i = 0; i < 3; i++) sampled[i].Begin(new SamplerOptions { Temperature = 1f, TopK = 8, Seed = (ulong)i });
        ModelDrafter.DraftTogether(shared, batch, sampled, i => histories[i], [6, 6, 6], tokens, counts, scratch);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(6, counts[i]);
            for (int j = 0; j < 6; j++) Assert.True(sampled[i].DraftDistribution(j)[tokens[i * 6 + j]] > 0);
        }
        foreach (var d in together.Concat(sampled).Append(picky)) d.Reset();
        Assert.Equal(shared.Cache.BlockCount, shared.Cache.FreeBlocks);
    }

    [Fact]
    public async Task Sampled_requests_follow_the_target_distribution()
    {
        // As SpeculativeServingTests' lookup case: requests of 4 tokens at temperature 1, top-k 4; the draft model draws
        // two drafts after the first token from its own distribution q, so the rule min(1, p/q) and the residual
        // max(0, p − q) decide tokens 2 and 3. Over 3 000 requests the frequencies of (t1, t2, t3) must match the exact
        // distribution enumerated with plain forward passes (chi-square at p-value 1e-6). (Treating a sampled draft as
        // deterministic — q one-hot — would keep the distribution exact too, at a lower acceptance rate: q buys speed.)
        var sampling = new SamplerOptions { Temperature = 1f, TopK = 4, TopP = 1f, MinP = 0f };
        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var draft = LlamaModel.Open(TestPaths.Bundled("draft.gguf"));
        var prompt = model.Tokenizer.Encode("And God said unto Noah, Make thee an ark of gopher wood", addBos: true);
        var exact = SpeculativeServingTests.ExactFirstThree(model, prompt, sampling);

        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 4096, Threads = 2, MicroBatch = 64 });
        using var dctx = new InferenceContext(draft, new ContextOptions { ContextSize = 4096, Threads = 2 });
        using var e = new Engine(ctx, model.Tokenizer, new EngineOptions
        {
            Scheduler = new SchedulerOptions { TokenBudget = 512, MaxSequences = 64, DraftRowLimit = 512 },
            Speculative = new SpeculativeOptions { DraftMax = 8, DraftPMin = 0, Adaptive = false }, DraftContext = dctx,
        });
        const int N = 3_000;
        var counts = await SpeculativeServingTests.SampleFirstThree(e, prompt, sampling, N, exact);
        Assert.InRange(e.SpecDraftTokensTotal, N, 3L * N);
        Assert.InRange(e.SpecAcceptedTokensTotal, e.SpecDraftTokensTotal / 10, e.SpecDraftTokensTotal * 9 / 10);
        Cria.Tests.Inference.ChiSquare.AssertFollows(exact, counts, N);
    }

    [Fact]
    public async Task The_http_server_with_a_draft_model_answers_as_without_and_bad_settings_are_refused()
    {
        Task<(string Text, double Kept, double Drafted)> Ask(string? draft) => SpeculativeServingTests.AskServer(new ServerOptions
        {
            ModelPath = TestPaths.Bundled("default.gguf"), ModelName = "cria-draft", Port = 0, ContextSize = 1024, Threads = 2,
            DraftModelPath = draft,
            Engine = new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 }, Speculative = draft == null ? null : Draft },
        }, 80);
        var plain = await Ask(null);
        var drafted = await Ask(TestPaths.Bundled("draft.gguf"));
        Assert.Equal(plain.Text, drafted.Text);
        Assert.True(drafted.Kept > 10 && drafted.Kept < drafted.Drafted, $"kept {drafted.Kept} of {drafted.Drafted}");

        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 1 });
        using var dctx = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 1 });
        Assert.Contains("speculative", Assert.Throws<CriaException>(() => new Engine(ctx, model.Tokenizer, new EngineOptions { DraftContext = dctx })).Message);
        Assert.Contains("RAPID", Assert.Throws<CriaException>(() => new Engine(ctx, model.Tokenizer, new EngineOptions { Speculative = Draft with { Margin = 0.5f }, DraftContext = dctx })).Message);
        var other = Oracle.LogitsAgreementTests.ModelFile("draft-other-vocab", new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300 });
        using var small = LlamaModel.Open(other);
        using var sctx = new InferenceContext(small, new ContextOptions { ContextSize = 256, Threads = 1 });
        Assert.Contains("vocabulary", Assert.Throws<CriaException>(() => new Engine(ctx, model.Tokenizer, new EngineOptions { Speculative = Draft, DraftContext = sctx })).Message);
    }
}
