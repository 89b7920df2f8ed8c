using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Inference;

/// <summary>
/// RAPID (retrieval-augmented speculative decoding): the nudged distribution p̂ against its formula, BM25 retrieval
/// against a hand computation, the drafter's replaced prompt, greedy generations token for token against a reference
/// that runs target and drafter separately, sampled generations distributed as p̂ (chi-square), and the refusals.
/// </summary>
public class RapidTests
{
    [Fact]
    public void Nudge_multiplies_p_by_exp_eta_q_minus_p_on_the_tokens_the_drafter_finds_plausible()
    {
        float[] p = [0.5f, 0.3f, 0.2f, 0f, 0f];
        float[] q = [0.1f, 0.6f, 0.01f, 0.29f, 0f];
        var hat = new float[5];
        Rapid.Nudge(p, q, 2f, 0.1f, hat);
        // Plausible: q ≥ 0.1·0.6 = 0.06, so tokens 0, 1, 3; token 2 keeps its p; token 3 has p = 0 and stays 0.
        double[] w = [0.5 * Math.Exp(2 * (0.1 - 0.5)), 0.3 * Math.Exp(2 * (0.6 - 0.3)), 0.2, 0, 0];
        double sum = w.Sum();
        for (int j = 0; j < 5; j++) Assert.Equal(w[j] / sum, hat[j], 1e-6);
        Assert.True(hat[1] > hat[0]); // the drafter's favourite overtook the target's

        // α = 1: only the drafter's mode is nudged; η = 0: p itself.
        Rapid.Nudge(p, q, 2f, 1f, hat);
        w = [0.5, 0.3 * Math.Exp(2 * (0.6 - 0.3)), 0.2, 0, 0]; sum = w.Sum();
        for (int j = 0; j < 5; j++) Assert.Equal(w[j] / sum, hat[j], 1e-6);
        Rapid.Nudge(p, q, 0f, 0.1f, hat);
        Assert.Equal(p, hat);

        // A huge η does not overflow: all mass on the largest q − p among tokens the target allows.
        Rapid.Nudge(p, q, 1e4f, 0.1f, hat);
        Assert.All(hat, v => Assert.True(float.IsFinite(v)));
        Assert.Equal(1f, hat[1], 1e-6);
    }

    [Fact]
    public void Bm25_scores_chunks_as_okapi_and_retrieval_keeps_the_best_in_document_order()
    {
        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var tok = model.Tokenizer;
        // Token ids stand for terms; none of these is a control token or ends a sentence.
        int a = 500, b = 600, c = 700;
        Assert.All(new[] { a, b, c }, t => Assert.False(tok.IsControl(t)));
        int[] context = [a, b, a, c, c];
        var chunks = new List<RagChunk> { new(0, 2, 0), new(2, 3, 0) };
        var s = RagRetriever.Bm25(context, chunks, [c], tok, 1.2, 0.75);
        // idf(c) = ln(1 + (2 − 1 + 0.5)/(1 + 0.5)) = ln 2; chunk 2: f = 2, |d| = 3, avg 2.5.
        double expected = Math.Log(2) * 2 * 2.2 / (2 + 1.2 * (1 - 0.75 + 0.75 * 3 / 2.5));
        Assert.Equal(0, s[0]);
        Assert.Equal(expected, s[1], 1e-12);
        // A query term repeated counts twice; a term in every chunk (a) has a small positive idf.
        var s2 = RagRetriever.Bm25(context, chunks, [c, c, a], tok, 1.2, 0.75);
        double idfA = Math.Log(1 + 0.5 / 2.5);
        Assert.Equal(2 * expected + idfA * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 3 / 2.5)), s2[1], 1e-12);
        Assert.Equal(idfA * 2.2 / (1 + 1.2 * (1 - 0.75 + 0.75 * 2 / 2.5)), s2[0], 1e-12);

        // A pass-key prompt of 1 000 tokens: the drafter's prompt is BOS, the chunks holding the needle, then the query.
        var probe = new PasskeyProbe(null!, tok);
        var (prompt, answer) = probe.Build(PasskeyTask.Passkey, 1000, 0.3, new Random(4));
        var rag = new RagOptions { ChunkTokens = 32, BudgetTokens = 96, QueryTokens = 16 };
        var draft = RagRetriever.DraftPrompt(prompt, tok, rag, out var kept);
        Assert.Equal(prompt[0], draft[0]);
        Assert.True(tok.IsControl(draft[0]));
        Assert.Equal(prompt[^16..], draft[^16..]);
        Assert.True(kept.Sum(k => k.Length) <= 96);
        Assert.True(kept.Zip(kept.Skip(1)).All(x => x.First.Start + x.First.Length <= x.Second.Start)); // document order
        string text = tok.Decode(draft);
        string key = tok.Decode(answer).Trim();
        Assert.Contains($"The pass key is {key}. Remember it. {key} is the pass key.", text);
        Assert.True(draft.Length < 150, $"{draft.Length} tokens");
        // Chunks end at sentence ends when one falls in their second half.
        var all = RagRetriever.Chunks(prompt.AsSpan(1, prompt.Length - 17), tok, 32);
        Assert.Equal(prompt.Length - 17, all.Sum(x => x.Length));
        Assert.True(all.Count(x => tok.TokenText(prompt[1 + x.Start + x.Length - 1]).TrimEnd().EndsWith('.')) >= all.Count / 2);
        // A prompt whose context fits the budget is the drafter's prompt as it is.
        var shortPrompt = prompt[..60];
        Assert.Equal(shortPrompt, RagRetriever.DraftPrompt(shortPrompt, tok, rag));
    }

    static int[] Greedy(Generator gen, int[] prompt, int n) =>
        gen.GenerateTokens(prompt, new GenerationOptions { MaxTokens = n, StopAtEndOfGeneration = false, Sampler = SamplerOptions.Greedy }).ToArray();

    [Fact]
    public void Greedy_rapid_takes_the_mode_of_the_nudged_distribution_at_every_token()
    {
        // The bundled model is the target reading a 180-token prompt and, in its own context, the drafter reading a
        // different 40-token prompt. Reference: both run token by token; each token is argmax Nudge(softmax(z_target),
        // softmax(z_draft)). RAPID through the Generator must give exactly those tokens, whatever the drafts were.
        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var tok = model.Tokenizer;
        var prompt = tok.Encode(string.Concat(Enumerable.Repeat("And the LORD spake unto Moses, saying, Speak unto the children of Israel. ", 20)), addBos: true)[..180];
        var draftPrompt = tok.Encode("And David said unto Saul, Let no man's heart fail because of him; thy servant will go and fight", addBos: true);
        const float eta = 3f;
        const int N = 40;

        using var refTarget = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 2 });
        using var refDraft = new InferenceContext(model, new ContextOptions { ContextSize = 128, Threads = 1 });
        var expected = new List<int>();
        var p = new float[model.Config.VocabSize]; var q = new float[p.Length]; var hat = new float[p.Length];
        for (int i = 0; i < N; i++)
        {
            Softmax(Last(refTarget, [.. prompt, .. expected]), p);
            Softmax(Last(refDraft, [.. draftPrompt, .. expected]), q);
            Rapid.Nudge(p, q, eta, Rapid.DefaultAlpha, hat);
            expected.Add(Sampler.ArgMax(hat));
        }

        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 2 });
        using var draftCtx = new InferenceContext(model, new ContextOptions { ContextSize = 128, Threads = 1 });
        var drafter = new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = 5, DraftPMin = 0, Margin = eta })
        {
            Prompt = new DraftPrompt(draftPrompt, prompt.Length),
        };
        var gen = new Generator(ctx, tok) { Drafter = drafter };
        var got = Greedy(gen, prompt, N);
        Assert.Equal(expected, got);
        var s = gen.LastStats!;
        Assert.True(s.AcceptedTokens > 0 && s.AcceptedTokens < s.DraftedTokens, $"{s.AcceptedTokens} of {s.DraftedTokens} kept");

        // The nudge changed the text (plain decoding of the target differs), and η = 0 with the same drafter and prompt
        // is plain speculative decoding: the target's own greedy tokens.
        var plain = Greedy(new Generator(ctx, tok), prompt, N);
        Assert.NotEqual(plain, got);
        var exact = new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = 5, DraftPMin = 0.3f }) { Prompt = new DraftPrompt(draftPrompt, prompt.Length) };
        Assert.Equal(plain, Greedy(new Generator(ctx, tok) { Drafter = exact }, prompt, N));
    }

    static float[] Last(InferenceContext c, int[] tokens)
    {
        c.Cache.Remove(0);
        var b = new Batch(tokens.Length);
        b.AddSequence(tokens, 0, 0);
        c.Decode(b);
        return c.Logits(b.Count - 1).ToArray();
    }

    static void Softmax(ReadOnlySpan<float> z, Span<float> p)
    {
        float max = float.NegativeInfinity;
        foreach (var v in z) max = Math.Max(max, v);
        double sum = 0;
        for (int i = 0; i < z.Length; i++) { p[i] = MathF.Exp(z[i] - max); sum += p[i]; }
        for (int i = 0; i < z.Length; i++) p[i] = (float)(p[i] / sum);
    }

    [Fact]
    public void Sampled_rapid_generations_follow_the_nudged_distribution()
    {
        // A random target reads [1, 100, 200]; the same model drafts two tokens a step reading [1, 200] in their place
        // (the same last token, so the two top-4 sets overlap and the nudge has tokens to move). Over 12 000 generations of four tokens, the joint frequencies of the first three must match
        // Π p̂ = Π Nudge(p_target, q_draft) enumerated with plain forward passes through the same sampler chain (top-k 4,
        // temperature 1; the drafter's chain without penalties). The target's own distribution is far from it.
        var spec = new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 300, Seed = 31 };
        using var target = LlamaModel.Open(LogitsAgreementTests.ModelFile("spec-target", spec));
        var draft = target; // self-speculation, RAPID's main setting: the target reads another prompt
        var sampling = new SamplerOptions { Temperature = 1f, TopK = 4, TopP = 1f, MinP = 0f };
        const float eta = 20f;
        int[] prompt = [1, 100, 200], draftPrompt = [1, 200];

        using var refTarget = new InferenceContext(target, new ContextOptions { ContextSize = 16, Threads = 1 });
        using var refDraft = new InferenceContext(draft, new ContextOptions { ContextSize = 16, Threads = 1 });
        var pd = new float[300]; var qd = new float[300];
        float[] Next(int[] gen)
        {
            new Sampler(300, sampling).Distribution(Last(refTarget, [.. prompt, .. gen]), pd);
            new Sampler(300, sampling).Distribution(Last(refDraft, [.. draftPrompt, .. gen]), qd);
            var hat = new float[300];
            Rapid.Nudge(pd, qd, eta, Rapid.DefaultAlpha, hat);
            return hat;
        }
        var exact = new Dictionary<(int, int, int), double>();
        double plainMass = 0; // how far the target's own distribution is: Σ min(p, p̂) over first tokens
        var h1 = Next([]);
        new Sampler(300, sampling).Distribution(Last(refTarget, prompt), pd);
        for (int a = 0; a < 300; a++) plainMass += Math.Min(pd[a], h1[a]);
        Assert.True(plainMass < 0.9, $"p and p̂ overlap {plainMass:F3}: the test would not tell them apart");
        for (int a = 0; a < 300; a++)
        {
            if (h1[a] == 0) continue;
            var h2 = Next([a]);
            for (int c = 0; c < 300; c++)
            {
                if (h2[c] == 0) continue;
                var h3 = Next([a, c]);
                for (int e = 0; e < 300; e++) if (h3[e] > 0) exact[(a, c, e)] = (double)h1[a] * h2[c] * h3[e];
            }
        }

        using var ctx = new InferenceContext(target, new ContextOptions { ContextSize = 16, Threads = 1 });
        using var draftCtx = new InferenceContext(draft, new ContextOptions { ContextSize = 16, Threads = 1 });
        var drafter = new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = 2, DraftPMin = 0, Margin = eta })
        {
            Prompt = new DraftPrompt(draftPrompt, prompt.Length),
        };
        var gen = new Generator(ctx, target.Tokenizer) { Drafter = drafter };
        const int N = 12_000;
        var counts = new Dictionary<(int, int, int), int>();
        int drafted = 0, kept = 0;
        for (int i = 0; i < N; i++)
        {
            var t = gen.GenerateTokens(prompt, new GenerationOptions { MaxTokens = 4, StopAtEndOfGeneration = false, Sampler = sampling with { Seed = (ulong)i } }).ToArray();
            var key = (t[0], t[1], t[2]);
            Assert.True(exact.ContainsKey(key), $"({key}) has probability 0 under p̂");
            counts[key] = counts.GetValueOrDefault(key) + 1;
            drafted += gen.LastStats!.DraftedTokens; kept += gen.LastStats.AcceptedTokens;
        }
        Assert.InRange(kept, drafted / 10, drafted * 9 / 10); // both verdicts, often

        ChiSquare.AssertFollows(exact, counts, N);
    }

    [Fact]
    public void Bad_settings_are_refused()
    {
        Assert.Throws<CriaException>(() => new SpeculativeOptions { Margin = -1 }.Validate());
        Assert.Throws<CriaException>(() => new SpeculativeOptions { Margin = float.NaN }.Validate());
        Assert.Throws<CriaException>(() => new SpeculativeOptions { Margin = float.PositiveInfinity }.Validate());
        Assert.Throws<CriaException>(() => new SpeculativeOptions { MarginAlpha = 1.5f }.Validate());
        Assert.Throws<CriaException>(() => new RagOptions { ChunkTokens = 0 }.Validate());
        Assert.Throws<CriaException>(() => new RagOptions { ChunkTokens = 64, BudgetTokens = 32 }.Validate());
        Assert.Throws<CriaException>(() => new RagOptions { QueryTokens = 0 }.Validate());
        Assert.Throws<CriaException>(() => new RagOptions { B = 2 }.Validate());
        Assert.Throws<ArgumentException>(() => Rapid.Nudge(new float[3], new float[4], 1, 0.1f, new float[3]));
        using var model = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var c = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 1 });
        var probe = new PasskeyProbe(c, model.Tokenizer) { Mode = PasskeyMode.Rapid };
        Assert.Throws<CriaException>(() => probe.Run(PasskeyTask.Passkey, [48], [0.5], 1));
    }
}
