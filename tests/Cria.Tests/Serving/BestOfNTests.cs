using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// Best-of-N and adaptive sampling on the engine: sample i is exactly the request with seed + i run alone; the best
/// scored wins; adaptive rounds of 1, 2, 4 … draw a prefix of the same samples and stop at the first round that
/// reaches the threshold; the reward-model scorer scores what <see cref="RewardModel.Score"/> does.
/// </summary>
public class BestOfNTests
{
    /// <summary>A scorer anyone can recompute: the sum of the response's tokens mod 97, and how often it was called.</summary>
    sealed class SumScorer : IResponseScorer
    {
        public int Calls;
        public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response)
        {
            Calls++;
            long s = 0;
            foreach (int t in response) s += t;
            return s % 97;
        }
    }

    static GenerationRequest Request => new()
    {
        Prompt = [1, 20, 30, 40, 50], MaxTokens = 12, IgnoreEog = true,
        Sampler = new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 100 },
    };

    [Fact]
    public async Task The_best_of_the_samples_wins_and_each_sample_is_its_seeds_request_alone()
    {
        using var m = LlamaModel.Open(EngineTests.ModelPath());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, MicroBatch = 64 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 } });
        var scorer = new SumScorer();
        var result = await BestOfN.RunAsync(e, Request, scorer, new BestOfNOptions { Samples = 8 });
        Assert.Equal(8, result.Samples.Count);
        Assert.Equal(8, scorer.Calls);
        for (int i = 0; i < 8; i++)
        {
            var alone = await EngineTests.Run(e, Request with { Sampler = Request.Sampler with { Seed = 100 + (ulong)i } });
            Assert.Equal(alone.Tokens, result.Samples[i].Tokens);
            Assert.Equal(alone.Text, result.Samples[i].Text);
            Assert.Equal(alone.Tokens.Sum() % 97, result.Samples[i].Score);
        }
        Assert.True(result.Samples.Select(s => s.Score).Distinct().Count() > 1, "the samples should differ");
        double max = result.Samples.Max(s => s.Score);
        Assert.Equal(result.Samples.ToList().FindIndex(s => s.Score == max), result.Best);

        // Adaptive: a threshold the third sample reaches stops after rounds of 1 and 2 (3 samples, the first three).
        double t = result.Samples.Take(3).Max(s => s.Score);
        bool reachedInFirst = result.Samples[0].Score >= t;
        var adaptive = await BestOfN.RunAsync(e, Request, new SumScorer(), new BestOfNOptions { Samples = 8, Threshold = t });
        Assert.Equal(reachedInFirst ? 1 : 3, adaptive.Samples.Count);
        for (int i = 0; i < adaptive.Samples.Count; i++) Assert.Equal(result.Samples[i].Tokens, adaptive.Samples[i].Tokens);
        Assert.True(adaptive.Chosen.Score >= t);
        // A threshold nothing reaches draws all N, in rounds of 1, 2, 4 and the last 1.
        var never = await BestOfN.RunAsync(e, Request, new SumScorer(), new BestOfNOptions { Samples = 8, Threshold = 1000 });
        Assert.Equal(result.Samples.Select(s => s.Score), never.Samples.Select(s => s.Score));
        Assert.Equal(result.Best, never.Best);
        Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks); // every request gave its blocks back
    }

    [Fact]
    public async Task Early_pruning_continues_the_best_partial_samples_and_picks_among_them()
    {
        using var m = LlamaModel.Open(EngineTests.ModelPath());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, MicroBatch = 64 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 } });
        var scorer = new SumScorer();
        var result = await BestOfN.RunAsync(e, Request, scorer, new BestOfNOptions { Samples = 8, PruneAfter = 4, Keep = 3 });
        Assert.Equal(8, result.Samples.Count);
        Assert.Equal(8 + 3, scorer.Calls);                 // every partial sample, then the three continued ones
        var partial = new List<EngineTests.Result>();
        for (int i = 0; i < 8; i++)
            partial.Add(await EngineTests.Run(e, Request with { MaxTokens = 4, Sampler = Request.Sampler with { Seed = 100 + (ulong)i } }));
        // The kept samples are the three best partial ones by score (the first on ties).
        var kept = Enumerable.Range(0, 8).OrderByDescending(i => partial[i].Tokens.Sum() % 97).ThenBy(i => i).Take(3).ToHashSet();
        for (int i = 0; i < 8; i++)
        {
            var s = result.Samples[i];
            Assert.Equal(!kept.Contains(i), s.Pruned);
            Assert.Equal(partial[i].Tokens, s.Tokens.Take(4));
            if (s.Pruned) { Assert.Equal(4, s.Tokens.Length); Assert.Equal(partial[i].Text, s.Text); continue; }
            // a continued sample is the request again from prompt + partial, with the same seed, for the other 8 tokens
            var rest = await EngineTests.Run(e, Request with { Prompt = [.. Request.Prompt, .. partial[i].Tokens], MaxTokens = 8, Sampler = Request.Sampler with { Seed = 100 + (ulong)i } });
            Assert.Equal([.. partial[i].Tokens, .. rest.Tokens], s.Tokens);
            Assert.Equal(m.Tokenizer.Decode(s.Tokens), s.Text);   // one text, as if never interrupted
            Assert.Equal(partial[i].Text, s.Text[..partial[i].Text.Length]);
            Assert.Equal(s.Tokens.Sum() % 97, s.Score);
        }
        int best = kept.OrderByDescending(i => result.Samples[i].Score).ThenBy(i => i).First();
        Assert.Equal(best, result.Best);
        Assert.False(result.Chosen.Pruned);
        Assert.Equal(c.Cache.BlockCount, c.Cache.FreeBlocks);
        await Assert.ThrowsAsync<CriaException>(() => BestOfN.RunAsync(e, Request, scorer, new BestOfNOptions { Samples = 8, PruneAfter = 12, Keep = 3 }));
        await Assert.ThrowsAsync<CriaException>(() => BestOfN.RunAsync(e, Request with { JsonObject = true }, scorer, new BestOfNOptions { Samples = 8, PruneAfter = 4, Keep = 3 }));
        Assert.Throws<CriaException>(() => new BestOfNOptions { Samples = 8, PruneAfter = 0 }.Validate());
        Assert.Throws<CriaException>(() => new BestOfNOptions { Samples = 8, PruneAfter = 4, Keep = 9 }.Validate());
        Assert.Throws<CriaException>(() => new BestOfNOptions { Samples = 8, PruneAfter = 4, Keep = 0 }.Validate());
        Assert.Throws<CriaException>(() => new BestOfNOptions { Samples = 8, PruneAfter = 4, Threshold = 1 }.Validate());
    }

    /// <summary>The engine drops a response's first leading space (the tokenizer's space prefix, as llama.cpp); a
    /// continued sample's text keeps it where the continuation meets the partial text. The bundled model's tokenizer
    /// adds a space prefix, so its word tokens begin with one.</summary>
    [Fact]
    public async Task A_continued_sample_reads_as_one_text()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        Assert.True(m.Tokenizer.AddSpacePrefix);
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions());
        var request = new GenerationRequest
        {
            Prompt = m.Tokenizer.Encode("And God said, Let there be", addBos: true), MaxTokens = 10, IgnoreEog = true,
            Sampler = new SamplerOptions { Temperature = 0.8f, Seed = 3 },
        };
        var result = await BestOfN.RunAsync(e, request, new SumScorer(), new BestOfNOptions { Samples = 6, PruneAfter = 3, Keep = 6 });
        int spaced = 0;
        foreach (var s in result.Samples)
        {
            Assert.Equal(m.Tokenizer.Decode(s.Tokens), s.Text);
            if (m.Tokenizer.TokenBytes(s.Tokens[3]) is [(byte)' ', ..]) spaced++;
        }
        Assert.True(spaced > 0, "no continuation began with a word token; the test checks nothing");
    }

    [Fact]
    public void The_reward_model_scorer_scores_prompt_and_response_as_the_reward_model_does()
    {
        var path = EngineTests.ModelPath();
        using var m = LlamaModel.Open(path);
        var head = ClassifierOptions.Reward(ClassifierObjective.BradleyTerry);
        var rng = new Random(4);
        var weights = Enumerable.Range(0, m.Config.Dim).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 16, Threads = 1 });
        var scorer = new RewardModelScorer(ctx, head, weights, 16);
        int[] prompt = [1, 20, 30], response = [5, 6, 7, 8];
        Assert.Equal(RewardModel.Score(ctx, [1, 20, 30, 5, 6, 7, 8], head, weights), scorer.Score(prompt, response));
        var longResponse = Enumerable.Range(3, 30).ToArray(); // cut to the head's 16 tokens, as in training
        Assert.Equal(RewardModel.Score(ctx, [1, 20, 30, .. longResponse[..13]], head, weights), scorer.Score(prompt, longResponse));
        Assert.Throws<CriaException>(() => new BestOfNOptions { Samples = 0 }.Validate());
        Assert.Throws<CriaException>(() => new BestOfNOptions { Threshold = double.NaN }.Validate());
    }
}
