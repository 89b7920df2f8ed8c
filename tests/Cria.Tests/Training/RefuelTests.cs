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
/// REFUEL (multi-turn RLHF): the regression loss against its formula (its gradient through the model is in
/// <see cref="PreferenceTests"/>); the dialogue game — roll-in shared by both branches, the fork at the drawn turn,
/// roll-outs to the end, Q̂ the scorer's reward of the whole dialogue, reproducible seeds; and iterations that raise
/// a reward on held-out openings.
/// </summary>
public sealed class RefuelTests(ITestOutputHelper output)
{
    /// <summary>A reward anyone can recompute: how many of the dialogue's tokens after the opening are in a set.</summary>
    sealed class TokenSetScorer(Func<int, bool> inSet) : IResponseScorer
    {
        public int Calls;
        public double Score(ReadOnlySpan<int> prompt, ReadOnlySpan<int> response)
        {
            Calls++;
            int n = 0;
            foreach (int t in response) if (inSet(t)) n++;
            return n;
        }
    }

    [Fact]
    public void The_loss_is_the_squared_error_of_the_log_ratio_difference_against_eta_times_the_reward_gap()
    {
        var o = new PreferenceOptions { Loss = PreferenceLoss.Refuel, Beta = 2f };
        // Δ = (−3 − −4) − (−5 − −4.5) = 1.5; e = Δ − η·gap = 1.5 − 2·0.5 = 0.5
        var (loss, dw, dl, margin) = o.PairLoss(-3, -5, -4, -4.5, 7, 9, gap: 0.5);
        Assert.Equal(0.25, loss, 12);
        Assert.Equal(1.0, dw, 12);
        Assert.Equal(-1.0, dl, 12);
        Assert.Equal(1.5, margin, 12);
        // the two responses are in no order: swapping them and the gap's sign gives the same loss
        Assert.Equal(loss, o.PairLoss(-5, -3, -4.5, -4, 9, 7, gap: -0.5).Loss, 12);
        Assert.Equal(1f, PreferenceOptions.Default(PreferenceLoss.Refuel).Beta);
        Assert.True(PreferenceOptions.Default(PreferenceLoss.Refuel).NeedsReference);
    }

    [Fact]
    public void The_word_count_reward_counts_whole_case_sensitive_words_of_the_decoded_response()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        var words = new WordCountScorer(m.Tokenizer, ["LORD", " God "]);
        Assert.Equal(3, words.Count("The LORD said, LORD! LORDS and lord; the LORD's God."));
        var response = m.Tokenizer.Encode(" and the LORD God said unto the LORD", addBos: false);
        Assert.Equal(3, words.Score([1], response));
        Assert.Throws<CriaException>(() => new WordCountScorer(m.Tokenizer, [" ", ""]));
    }

    /// <summary>An engine over the model at <paramref name="path"/>, with the adapters <paramref name="loras"/> makes.</summary>
    static (LlamaModel Model, InferenceContext Ctx, Engine Engine) Start(string path, Func<LlamaModel, IReadOnlyList<(LoraAdapter, float)>>? loras = null)
    {
        var m = LlamaModel.Open(path);
        var c = new InferenceContext(m, new ContextOptions { ContextSize = 4096, Threads = 2, MicroBatch = 64, Loras = loras?.Invoke(m) ?? [] });
        return (m, c, new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = 64 } }));
    }

    static int[][] Openings(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, 3 + r.Next(4)).Select(_ => r.Next(3, 400)).ToArray()).ToArray();
    }

    [Fact]
    public async Task A_round_forks_each_dialogue_at_its_drawn_turn_after_a_shared_roll_in_and_scores_the_whole_dialogue()
    {
        var (m, c, e) = Start(EngineTests.ModelPath());
        using var _m = m; using var _c = c; using var _e = e;
        var (um, uc, ue) = Start(EngineTests.ModelPath());
        using var _um = um; using var _uc = uc; using var _ue = ue;
        var game = new RefuelOptions { Turns = 3, ResponseTokens = 5, UserTokens = 4 };
        var scorer = new TokenSetScorer(t => t % 7 == 0);
        var rollouts = new DialogueRollouts(e, ue, scorer, game);
        var openings = Openings(12, 5);
        var round = await rollouts.CollectAsync(openings, new Random(3), 77);
        Assert.Equal(openings.Length, round.Pairs.Count);
        Assert.Equal(2 * openings.Length, round.Dialogues.Count);
        Assert.Equal(2 * openings.Length, scorer.Calls);
        Assert.True(round.ForkTurns.Distinct().Count() > 1, "forks should fall on different turns");
        int differ = 0;
        for (int i = 0; i < openings.Length; i++)
        {
            var (a, b, p, h) = (round.Dialogues[2 * i], round.Dialogues[2 * i + 1], round.Pairs[i], round.ForkTurns[i]);
            Assert.InRange(h, 1, game.Turns);
            foreach (var d in new[] { a, b })
            {
                Assert.Equal(openings[i], d.Opening);
                Assert.Equal(2 * game.Turns - 1, d.Turns.Length);
                Assert.Equal(game.DialogueTokens, d.After.Length);
                Assert.Equal(d.After.Count(t => t % 7 == 0), d.Reward);
            }
            // the roll-in (turns before h) is shared; the state is the opening and those turns
            for (int k = 0; k < 2 * (h - 1); k++) Assert.Equal(a.Turns[k], b.Turns[k]);
            Assert.Equal(openings[i].Concat(a.Turns.Take(2 * (h - 1)).SelectMany(t => t)), p.Prompt);
            // the pair's responses are the branches' turn h, and the gap is Q̂(y) − Q̂(y′) of the whole dialogues
            Assert.Equal(a.Turns[2 * (h - 1)], p.Chosen);
            Assert.Equal(b.Turns[2 * (h - 1)], p.Rejected);
            Assert.Equal(a.Reward - b.Reward, p.RewardGap);
            if (!a.Turns[2 * (h - 1)].SequenceEqual(b.Turns[2 * (h - 1)])) differ++;
        }
        Assert.True(differ >= openings.Length - 1, $"the two responses at the fork should differ ({differ} of {openings.Length})");

        // Reproducible, and branch 0 is the dialogue played without a fork from the same seed: the roll-out continues π_t's play.
        var again = await rollouts.CollectAsync(openings, new Random(3), 77);
        for (int i = 0; i < round.Dialogues.Count; i++) Assert.Equal(round.Dialogues[i].After, again.Dialogues[i].After);
        var plain = await rollouts.PlayAsync(openings, 77);
        for (int i = 0; i < openings.Length; i++) Assert.Equal(plain[i].After, round.Dialogues[2 * i].After);
        var other = await rollouts.PlayAsync(openings, 78);
        Assert.NotEqual(plain[0].After, other[0].After);

        // A reward on the user's turns (or the policy's) reads only those turns of the same dialogues.
        foreach (var (scored, policyTurns) in new[] { (RefuelScored.User, false), (RefuelScored.Policy, true) })
        {
            var only = await new DialogueRollouts(e, ue, scorer, game with { Scored = scored }).PlayAsync(openings, 77);
            for (int i = 0; i < openings.Length; i++)
            {
                Assert.Equal(plain[i].After, only[i].After);
                Assert.Equal(plain[i].Of(policyTurns).Count(t => t % 7 == 0), only[i].Reward);
            }
        }
        Assert.Throws<CriaException>(() => (game with { Turns = 1, Scored = RefuelScored.User }).Validate());

        // Refusals: a dialogue that does not fit the engine, an empty opening, a bad game.
        var tooLong = new DialogueRollouts(e, ue, scorer, game with { ResponseTokens = 2000 });
        Assert.Contains("does not fit", (await Assert.ThrowsAsync<CriaException>(() => tooLong.PlayAsync(openings, 1))).Message);
        Assert.Contains("empty", (await Assert.ThrowsAsync<CriaException>(() => rollouts.PlayAsync([[5, 6], []], 1))).Message);
        Assert.Throws<CriaException>(() => (game with { Turns = 0 }).Validate());
        Assert.Throws<CriaException>(() => (game with { Temperature = 0 }).Validate());
    }

    static int[][] VerseOpenings(LlamaModel m, string file, int count) =>
        File.ReadLines(Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Texts", file))
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(w => w.Length >= 8)
            .Take(count).Select(w => m.Tokenizer.Encode(string.Join(' ', w[..6]), addBos: false)).ToArray();

    /// <summary>
    /// REFUEL raises a reward on openings it never trained on: the bundled model plays 2-turn dialogues against
    /// itself (frozen) as the user, rewarded by how often the dialogue says "LORD" (<see cref="WordCountScorer"/>).
    /// π_t is served from the adapter file the trainer writes, as the CLI does.
    /// </summary>
    [Fact]
    public async Task Iterations_raise_the_reward_of_held_out_dialogues()
    {
        string path = TestPaths.Bundled("default.gguf");
        var im = GgufImport.Read(path);
        var (um, uc, ue) = Start(path);
        using var _um = um; using var _uc = uc; using var _ue = ue;
        var game = new RefuelOptions { Turns = 2, ResponseTokens = 12, UserTokens = 8 };
        var scorer = new WordCountScorer(um.Tokenizer, ["LORD"]);
        var train = VerseOpenings(um, "kjv-train.txt", 400);
        var held = VerseOpenings(um, "kjv-valid.txt", 48);
        var opts = new TrainingOptions { BatchSize = 16, Steps = 64, WarmupSteps = 2, LearningRate = 2e-3f, WeightDecay = 0, Threads = 2, Seed = 9 };
        using var trainer = new Trainer(im.Shape, opts, [], um.Tokenizer.Bos, seqLen: 1 + train.Concat(held).Max(o => o.Length) + game.DialogueTokens, lora: new LoraOptions { Rank = 8, Alpha = 16 });
        trainer.SetParameters(im.Parameters);
        string adapter = TestPaths.TempFile("refuel-test.gguf");
        var loss = PreferenceOptions.Default(PreferenceLoss.Refuel) with { Beta = 2f };
        async Task<T> WithPolicy<T>(Func<DialogueRollouts, Task<T>> run)
        {
            trainer.Model.Lora!.Write(adapter, trainer.Model.LoraParameters);
            var (m, c, e) = Start(path, m => [(LoraAdapter.Load(adapter, m), 1f)]);
            using (m) using (c) using (e) return await run(new DialogueRollouts(e, ue, scorer, game));
        }
        async Task<double> HeldReward() => (await WithPolicy(d => d.PlayAsync(held, 500))).Average(d => d.Reward);
        double before = await HeldReward();
        var rng = new Random(4);
        for (int it = 1; it <= 12; it++)
        {
            var batch = Enumerable.Range(0, 64).Select(_ => train[rng.Next(train.Length)]).ToArray();
            var step = await WithPolicy(d => Refuel.IterationAsync(trainer, d, batch, rng, (ulong)it, 8, loss));
            output.WriteLine($"iteration {it}: rollout reward {step.Round.MeanReward:F2}, loss {step.Loss:F3}, sign agreement {step.SignAgreement:P0}");
        }
        double after = await HeldReward();
        output.WriteLine($"held-out reward {before:F3} → {after:F3}");
        // An unchanged policy replays the same held-out dialogues (seed 500): exactly `before`. Over seeds 1–6 of the
        // training draws, AVX-512 and AVX2, twelve iterations gave 0.50 … 2.31 (eight gave 0.29 … 1.77), so the bound
        // is set below the least of them rather than at this seed's value.
        Assert.True(after > before + 0.3 && after > 3 * before, $"held-out reward {before:F3} → {after:F3}");
        File.Delete(adapter);
    }
}
