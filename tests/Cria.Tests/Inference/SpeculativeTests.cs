using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Inference;

/// <summary>
/// Speculative decoding: greedy output token for token equal to plain decoding, the verification rule's output
/// distributed as the target's (one position, and whole generations against the exact target distribution), prompt
/// lookup's matching, and the refusals.
/// </summary>
public class SpeculativeTests
{
    static int[] Greedy(Generator gen, int[] prompt, int n, float repeatPenalty = 1f) =>
        gen.GenerateTokens(prompt, new GenerationOptions
        {
            MaxTokens = n, StopAtEndOfGeneration = false,
            Sampler = SamplerOptions.Greedy with { RepeatPenalty = repeatPenalty },
        }).ToArray();

    public static TheoryData<string, float> Drafters => new()
    {
        { "lookup", 1f }, { "draft", 1f }, { "lookup", 1.3f }, { "draft", 1.3f },
    };

    [Theory]
    [MemberData(nameof(Drafters))]
    public void Greedy_speculative_decoding_gives_the_tokens_of_plain_decoding(string drafter, float repeatPenalty)
    {
        // The bundled model and its draft sibling; 220 tokens fill most of the 256-token context, so drafts are also cut
        // short by the context's end. With a repetition penalty each verified position must see the drafts before it.
        using var target = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var ctx = new InferenceContext(target, new ContextOptions { ContextSize = 256, Threads = 2 });
        var prompt = target.Tokenizer.Encode("And God said unto Noah, Make thee an ark", addBos: true);
        var plain = Greedy(new Generator(ctx, target.Tokenizer), prompt, 220, repeatPenalty);

        using var draftModel = LlamaModel.Open(TestPaths.Bundled("draft.gguf"));
        using var draftCtx = new InferenceContext(draftModel, new ContextOptions { ContextSize = 256, Threads = 1 });
        var gen = new Generator(ctx, target.Tokenizer)
        {
            Drafter = drafter == "lookup"
                ? new PromptLookupDrafter()
                : new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = 6, DraftPMin = 0.3f }),
        };
        var spec = Greedy(gen, prompt, 220, repeatPenalty);
        Assert.Equal(plain, spec);
        var s = gen.LastStats!;
        // Drafts were kept (fewer with the penalty, which discourages the repeats lookup proposes).
        Assert.True(s.AcceptedTokens > (repeatPenalty == 1f ? 10 : 2), $"{drafter}: only {s.AcceptedTokens} of {s.DraftedTokens} drafts kept");
        Assert.Equal(219, s.TargetSteps + s.AcceptedTokens); // every step makes one token of its own, every kept draft one more
        Assert.True(ctx.Cache.Length(0) <= prompt.Length + 220);

        // A second generation on the same objects (the draft cache keeps what still agrees) gives the same tokens.
        Assert.Equal(plain, Greedy(gen, prompt, 220, repeatPenalty));
    }

    [Theory]
    [InlineData(KvCacheType.Kivi2)]
    [InlineData(KvCacheType.Q8_0)]
    public void Rolling_back_a_quantized_cache_keeps_greedy_tokens_exact(KvCacheType type)
    {
        // KIVI with a 32-token residual quantizes a group every 32 positions, so verification steps append across group
        // boundaries and rejected drafts are cut from the ring; Q8_0 rows are cut from quantized blocks.
        using var target = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var kv = new KvFormat { Type = type, KiviResidual = 32 };
        using var ctx = new InferenceContext(target, new ContextOptions { ContextSize = 256, Threads = 2, Kv = kv });
        var prompt = target.Tokenizer.Encode("And it came to pass, when men began to multiply on the face of the earth", addBos: true);
        var plain = Greedy(new Generator(ctx, target.Tokenizer), prompt, 220);
        var gen = new Generator(ctx, target.Tokenizer) { Drafter = new PromptLookupDrafter() };
        Assert.Equal(plain, Greedy(gen, prompt, 220));
        Assert.True(gen.LastStats!.AcceptedTokens > 20 && gen.LastStats.AcceptedTokens < gen.LastStats.DraftedTokens,
            $"{gen.LastStats.AcceptedTokens} of {gen.LastStats.DraftedTokens} drafts kept"); // both verdicts happened
    }

    [Fact]
    public void The_verification_rule_keeps_the_target_distribution()
    {
        // One position of speculative sampling, 200 000 times per case: the draft token is drawn from q, the rule keeps it
        // or draws a replacement; the tokens that come out must follow p (chi-square at p-value 1e-6, so a correct rule
        // fails one run in a million; seeds are fixed, so it is the same run every time). Always keeping the draft would
        // follow q, about χ² = 10⁴ here.
        var rng = new Random(5);
        const int V = 12, N = 200_000;
        float[] Dist(params float[] w) { float s = w.Sum(); return w.Select(x => x / s).ToArray(); }
        float[] Random(double zeroFraction) =>
            Dist(Enumerable.Range(0, V).Select(_ => rng.NextDouble() < zeroFraction ? 0f : (float)rng.NextDouble()).ToArray());
        var cases = new List<(float[] P, float[]? Q)>
        {
            (Random(0), Random(0)),
            (Random(0.5), Random(0.3)),     // supports overlap in part (top-k-cut target and draft)
            (Random(0.2), null),            // deterministic draft (prompt lookup): q one-hot at the drawn token
            (Random(0), Random(0.8)),
        };
        var sampler = new Sampler(V, new SamplerOptions { Seed = 11 });
        foreach (var (p, q) in cases)
        {
            var counts = new long[V];
            var draftWeights = q ?? Random(0); // where a deterministic drafter's token comes from does not matter
            for (int i = 0; i < N; i++)
            {
                int x = Speculative.SampleDense(draftWeights, rng.NextDouble(), 1.0);
                Speculative.AcceptOrResample(p, q ?? [], x, sampler, out int t);
                counts[t]++;
            }
            double chi = 0; int cells = 0;
            for (int j = 0; j < V; j++)
            {
                if (p[j] == 0) { Assert.Equal(0, counts[j]); continue; }
                double e = (double)N * p[j];
                chi += (counts[j] - e) * (counts[j] - e) / e;
                cells++;
            }
            Assert.True(chi < ChiSquare.Critical(cells - 1), $"χ² = {chi:F1} over {cells} cells");
        }
    }

    [Fact]
    public void Greedy_verification_takes_the_target_argmax_and_draws_nothing()
    {
        float[] p = [0, 0, 1, 0];
        var s = new Sampler(4, new SamplerOptions { Seed = 3 });
        var before = new Sampler(4, new SamplerOptions { Seed = 3 }).NextUniform();
        Assert.True(Speculative.AcceptOrResample(p, [], 2, s, out int t)); Assert.Equal(2, t);
        Assert.False(Speculative.AcceptOrResample(p, [], 1, s, out t)); Assert.Equal(2, t);
        Assert.False(Speculative.AcceptOrResample(p, [0.1f, 0.6f, 0.2f, 0.1f], 1, s, out t)); Assert.Equal(2, t);
        Assert.Equal(before, s.NextUniform()); // the RNG stream is untouched
    }

    [Theory]
    [InlineData("itself")]
    [InlineData("q4_0 copy")]
    [InlineData("other")]
    public void Sampled_speculative_generations_follow_the_target_distribution(string draftKind)
    {
        // Whole generations of four tokens: one sampled from the prompt's logits, then a speculative step with two drafts
        // from a draft model (the target itself, a Q4_0 copy of it, or an unrelated random model). The joint
        // frequencies of the first three (the two drafted positions' verdicts included) over 12 000 generations must
        // match the target's exact distribution, enumerated with plain forward passes through the same sampler chain
        // (top-k 4, temperature 1).
        var spec = new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, Seed = 31 };
        var tp = LogitsAgreementTests.ModelFile("spec-target", spec);
        var dp = draftKind switch
        {
            "itself" => tp,
            "q4_0 copy" => LogitsAgreementTests.ModelFile("spec-draft-q4_0", spec with { WeightType = Cria.Tensors.GgmlType.Q4_0 }), // the same weights, rounded
            _ => LogitsAgreementTests.ModelFile("spec-draft-other", spec with { Seed = 32 }),
        };
        using var target = LlamaModel.Open(tp);
        using var draft = LlamaModel.Open(dp);
        var sampling = new SamplerOptions { Temperature = 1f, TopK = 4, TopP = 1f, MinP = 0f };
        int[] prompt = [1, 100, 200];

        // Exact joint distribution of (t1, t2, t3).
        using var refCtx = new InferenceContext(target, new ContextOptions { ContextSize = 16, Threads = 1 });
        var exact = new Dictionary<(int, int, int), double>();
        var dist = new float[300];
        float[] Next(int[] seq)
        {
            refCtx.Cache.Remove(0);
            var b = new Batch(); b.AddSequence(seq, 0, 0); refCtx.Decode(b);
            new Sampler(300, sampling).Distribution(refCtx.Logits(b.Count - 1), dist);
            return (float[])dist.Clone();
        }
        var p1 = Next(prompt);
        for (int a = 0; a < 300; a++)
        {
            if (p1[a] == 0) continue;
            var p2 = Next([.. prompt, a]);
            for (int c = 0; c < 300; c++)
            {
                if (p2[c] == 0) continue;
                var p3 = Next([.. prompt, a, c]);
                for (int e = 0; e < 300; e++) if (p3[e] > 0) exact[(a, c, e)] = (double)p1[a] * p2[c] * p3[e];
            }
        }

        using var ctx = new InferenceContext(target, new ContextOptions { ContextSize = 16, Threads = 1 });
        using var draftCtx = new InferenceContext(draft, new ContextOptions { ContextSize = 16, Threads = 1 });
        var gen = new Generator(ctx, target.Tokenizer) { Drafter = new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = 2, DraftPMin = 0 }) };
        const int N = 12_000;
        var counts = new Dictionary<(int, int, int), int>();
        int drafted = 0, kept = 0;
        for (int i = 0; i < N; i++)
        {
            var t = gen.GenerateTokens(prompt, new GenerationOptions { MaxTokens = 4, StopAtEndOfGeneration = false, Sampler = sampling with { Seed = (ulong)i } }).ToArray();
            Assert.Equal(4, t.Length);
            var key = (t[0], t[1], t[2]);
            Assert.True(exact.ContainsKey(key), $"({key}) has probability 0");
            counts[key] = counts.GetValueOrDefault(key) + 1;
            drafted += gen.LastStats!.DraftedTokens; kept += gen.LastStats.AcceptedTokens;
        }
        // The target itself as draft: every draft kept (2 per generation). The Q4_0 copy: both verdicts, often (60 % kept
        // when written). The unrelated model: nearly every draft replaced from the residual.
        if (draftKind == "itself") { Assert.Equal(2 * N, drafted); Assert.Equal(drafted, kept); }
        else if (draftKind == "q4_0 copy") Assert.InRange(kept, drafted / 5, drafted * 4 / 5);
        else Assert.True(kept < drafted / 10, $"{kept} of {drafted} kept");

        // Cells expected fewer than 5 times are pooled into one.
        ChiSquare.AssertFollows(exact, counts, N);
    }

    [Fact]
    public void Prompt_lookup_proposes_what_followed_the_latest_match()
    {
        var d = new PromptLookupDrafter(new SpeculativeOptions { DraftMax = 4, NgramMax = 3, NgramMin = 1 });
        var buf = new int[8];
        // "5 6 7" occurs twice before the end; the later one is followed by 9 9 1 2 …
        int[] h = [1, 5, 6, 7, 8, 8, 5, 6, 7, 9, 9, 1, 2, 3, 4, 5, 6, 7];
        Assert.Equal(4, d.Draft(h, buf));
        Assert.Equal([9, 9, 1, 2], buf[..4]);
        // No 3-gram or 2-gram match; the last token, 3, occurred at index 1.
        int[] h2 = [1, 3, 8, 2, 5, 3];
        Assert.Equal(4, d.Draft(h2, buf));
        Assert.Equal([8, 2, 5, 3], buf[..4]);
        // A 2-gram match with fewer tokens after it than asked; no match at all; room for one token only.
        Assert.Equal(3, d.Draft([4, 7, 1, 4, 7], buf));
        Assert.Equal([1, 4, 7], buf[..3]);
        Assert.Equal(1, d.Draft([4, 7, 1, 4, 7], buf.AsSpan(0, 1)));
        Assert.Equal(0, d.Draft([1, 2, 3, 4], buf));
        Assert.Equal(0, d.Draft([1], buf));
    }

    [Fact]
    public void The_draft_budget_follows_what_the_target_keeps()
    {
        var b = new DraftBudget(10, adaptive: true);
        Assert.Equal(10, b.Window);
        b.Verified(10, 3); Assert.Equal(9, b.Window);          // not all kept: one fewer
        b.Verified(9, 9); Assert.Equal(10, b.Window);          // all kept: two more, up to the maximum
        for (int i = 0; i < 20; i++) b.Verified(5, 1);
        Assert.Equal(1, b.Window);                             // at least one
        Assert.True(b.Drafts());
        // None kept: pause 1, then 2, 4 … 16 steps; a kept draft ends the pauses.
        foreach (int pause in new[] { 1, 2, 4, 8, 16, 16 })
        {
            b.Verified(1, 0);
            for (int i = 0; i < pause; i++) Assert.False(b.Drafts());
            Assert.True(b.Drafts());
        }
        b.Verified(1, 1); b.Verified(3, 0);
        Assert.False(b.Drafts()); Assert.True(b.Drafts());     // back to a pause of one
        // An empty draft: no pause for prompt lookup (a miss costs nothing), a pause for a draft model (it ran a step).
        b.Verified(1, 1); b.Verified(0, 0);
        Assert.True(b.Drafts());
        b.Verified(0, 0, emptyCosts: true);
        Assert.False(b.Drafts()); Assert.True(b.Drafts());
        var fixedBudget = new DraftBudget(10, adaptive: false);
        fixedBudget.Verified(10, 0);
        Assert.Equal(10, fixedBudget.Window); Assert.True(fixedBudget.Drafts());
    }

    [Fact]
    public void Bad_combinations_are_refused()
    {
        using var target = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var passkey = LlamaModel.Open(TestPaths.Bundled("passkey.gguf"));
        if (passkey.Config.VocabSize != target.Config.VocabSize || passkey.Tokenizer.TokenText(300) != target.Tokenizer.TokenText(300))
            Assert.Throws<CriaException>(() => ModelDrafter.CheckCompatible(target, passkey));
        var other = LogitsAgreementTests.ModelFile("spec-other-vocab", new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300 });
        using var small = LlamaModel.Open(other);
        var e = Assert.Throws<CriaException>(() => ModelDrafter.CheckCompatible(target, small));
        Assert.Contains("vocabulary", e.Message);
        using var draft = LlamaModel.Open(TestPaths.Bundled("draft.gguf"));
        ModelDrafter.CheckCompatible(target, draft);

        using var evicting = new InferenceContext(target, new ContextOptions
        {
            ContextSize = 256, Threads = 1, Eviction = new KvEvictionOptions { Type = KvEvictionType.Sinks, Budget = 64 },
        });
        var gen = new Generator(evicting, target.Tokenizer) { Drafter = new PromptLookupDrafter() };
        Assert.Throws<CriaException>(() => gen.GenerateTokens([1, 50], new GenerationOptions()));
        // A KIVI cache takes back at most its micro-batch beyond the residual: more drafts than that are refused.
        using var kivi = new InferenceContext(target, new ContextOptions
        {
            ContextSize = 256, Threads = 1, MicroBatch = 8, Kv = new KvFormat { Type = KvCacheType.Kivi2, KiviGroup = 16, KiviResidual = 32 },
        });
        Assert.Equal(8, kivi.Cache.MaxRollback);
        var kiviGen = new Generator(kivi, target.Tokenizer) { Drafter = new PromptLookupDrafter() };
        Assert.Contains("KIVI", Assert.Throws<CriaException>(() => kiviGen.GenerateTokens([1, 50], new GenerationOptions())).Message);
        Assert.Throws<CriaException>(() => new PromptLookupDrafter(new SpeculativeOptions { NgramMin = 3, NgramMax = 2 }));
        Assert.Throws<CriaException>(() => new SpeculativeOptions { DraftMax = 0 }.Validate());
        Assert.Throws<CriaException>(() => new SpeculativeOptions { DraftPMin = 1.5f }.Validate());
    }
}
