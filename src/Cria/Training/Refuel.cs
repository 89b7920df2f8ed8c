using Cria.Inference;
using Cria.Serving;

namespace Cria.Training;

/// <summary>
/// The dialogue game of REFUEL (Gao et al. 2024, "Regressing the Relative Future: Efficient Policy Optimization for
/// Multi-turn RLHF"): a dialogue opens with a user turn, then the policy and a user simulator take turns, the policy
/// first and last — <see cref="Turns"/> policy turns of <see cref="ResponseTokens"/> tokens and Turns − 1 user turns of
/// <see cref="UserTokens"/> — and the whole dialogue gets one reward at the end. Turns have fixed lengths (end-of-text
/// is not sampled), so every dialogue has the same shape.
/// </summary>
public sealed record RefuelOptions
{
    /// <summary>Which turns the reward reads: all of them (the paper's whole-dialogue reward), only the policy's, or
    /// only the user's — a reward the policy can earn only through what it makes the user say next.</summary>
    public RefuelScored Scored { get; init; } = RefuelScored.All;
    /// <summary>H: the policy's turns in a dialogue (1 is single-turn REBEL).</summary>
    public int Turns { get; init; } = 2;
    public int ResponseTokens { get; init; } = 24;
    public int UserTokens { get; init; } = 16;
    /// <summary>Sampling temperature of the policy and the user (no top-k/top-p/min-p: the samples are π_t's own,
    /// whose log-probabilities the loss uses).</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Tokens of a dialogue after its opening.</summary>
    public int DialogueTokens => Turns * ResponseTokens + (Turns - 1) * UserTokens;

    public void Validate()
    {
        if (Turns < 1 || Turns > 16) throw new CriaException($"a REFUEL dialogue needs 1..16 policy turns, got {Turns}");
        if (ResponseTokens < 1) throw new CriaException($"policy turns need at least one token, got {ResponseTokens}");
        if (Turns > 1 && UserTokens < 1) throw new CriaException($"user turns need at least one token, got {UserTokens}");
        if (!(Temperature > 0) || !float.IsFinite(Temperature)) throw new CriaException($"the sampling temperature must be a positive number, got {Temperature}");
        if (Scored == RefuelScored.User && Turns < 2) throw new CriaException("a reward on the user's turns needs at least two policy turns (one user turn)");
    }
}

/// <summary>The turns of a dialogue its reward reads (<see cref="RefuelOptions.Scored"/>).</summary>
public enum RefuelScored { All, Policy, User }

/// <summary>A played dialogue: its opening (the first user turn, without BOS), the turns after it (policy, user,
/// policy, …) and the reward of the whole.</summary>
public sealed record Dialogue(int[] Opening, int[][] Turns, double Reward)
{
    /// <summary>Everything after the opening, in order.</summary>
    public int[] After => Turns.SelectMany(t => t).ToArray();
    /// <summary>The policy's turns (0, 2, 4, …) or the user's (1, 3, …), concatenated.</summary>
    public int[] Of(bool policy) => Of(Turns, policy ? RefuelScored.Policy : RefuelScored.User);

    /// <summary>The turns <paramref name="scored"/> names, concatenated.</summary>
    public static int[] Of(IEnumerable<int[]> turns, RefuelScored scored) =>
        turns.Where((_, i) => scored == RefuelScored.All || i % 2 == (scored == RefuelScored.Policy ? 0 : 1)).SelectMany(t => t).ToArray();
}

/// <summary>One round of REFUEL data: a pair per opening, and the two dialogues each pair came from
/// ([2i] gave <see cref="PreferencePair.Chosen"/>, [2i + 1] <see cref="PreferencePair.Rejected"/>).</summary>
public sealed record RefuelRound(IReadOnlyList<PreferencePair> Pairs, IReadOnlyList<Dialogue> Dialogues, int[] ForkTurns)
{
    public double MeanReward => Dialogues.Average(d => d.Reward);
}

/// <summary>
/// REFUEL's on-policy data collection. For each opening a turn h is drawn uniformly from 1..H; the policy π_t (served
/// by <paramref name="policy"/>) and the user simulator (<paramref name="user"/>) play the dialogue up to turn h
/// (roll-in); there π_t draws two responses y, y′, and each branch is played to the end by π_t and the user (roll-out)
/// and scored as a whole by <paramref name="scorer"/>, the opening as its prompt and the turns
/// <see cref="RefuelOptions.Scored"/> names as its response: Q̂(s_h, y) = r(dialogue). A pair is
/// (s_h, y, y′, Q̂(s_h, y) − Q̂(s_h, y′)), s_h being the opening and the turns before h. The regression on these pairs is
/// <see cref="PreferenceLoss.Refuel"/>. Every request's seed is a function of <c>seed</c>, the opening's index, the
/// branch, the turn and the speaker, so a round is reproducible however the engines interleave it.
/// </summary>
public sealed class DialogueRollouts(Engine policy, Engine user, IResponseScorer scorer, RefuelOptions options)
{
    public RefuelOptions Options { get; } = options;

    sealed class Branch(int dialogue, int side, List<int> tokens, List<int[]> turns)
    {
        public readonly int Dialogue = dialogue, Side = side;
        public readonly List<int> Tokens = tokens;   // BOS + opening + turns so far
        public readonly List<int[]> Turns = turns;
        public int StateLength;                      // tokens before the forked turn (BOS included)
        public int[]? Response;                      // the forked turn's tokens
        public Branch Fork() => new(Dialogue, 1, [.. Tokens], [.. Turns]) { StateLength = StateLength };
    }

    /// <summary>One round of REFUEL data from <paramref name="openings"/> (token ids without BOS), the forked turns
    /// drawn with <paramref name="rng"/>.</summary>
    public async Task<RefuelRound> CollectAsync(IReadOnlyList<int[]> openings, Random rng, ulong seed, CancellationToken cancel = default)
    {
        var fork = openings.Select(_ => 1 + rng.Next(Options.Turns)).ToArray();
        var branches = await PlayAsync(openings, fork, seed, cancel);
        var dialogues = branches.Select(b => Score(openings[b.Dialogue], b)).ToArray();
        var pairs = new PreferencePair[openings.Count];
        for (int i = 0; i < openings.Count; i++)
        {
            var (a, b) = (branches[2 * i], branches[2 * i + 1]);
            pairs[i] = new PreferencePair(a.Tokens.GetRange(1, a.StateLength - 1).ToArray(), a.Response!, b.Response!, dialogues[2 * i].Reward - dialogues[2 * i + 1].Reward);
        }
        return new RefuelRound(pairs, dialogues, fork);
    }

    /// <summary>Plays one dialogue per opening with no fork and scores it (evaluation).</summary>
    public async Task<IReadOnlyList<Dialogue>> PlayAsync(IReadOnlyList<int[]> openings, ulong seed, CancellationToken cancel = default)
    {
        var branches = await PlayAsync(openings, new int[openings.Count], seed, cancel);
        return branches.Select(b => Score(openings[b.Dialogue], b)).ToArray();
    }

    Dialogue Score(int[] opening, Branch b)
    {
        var turns = b.Turns.ToArray();
        return new Dialogue(opening, turns, scorer.Score(b.Tokens.GetRange(0, 1 + opening.Length).ToArray(), Dialogue.Of(turns, Options.Scored)));
    }

    /// <summary>Plays every dialogue to the end, turn by turn, all branches of a turn at once; dialogue i forks into two
    /// branches at policy turn <paramref name="fork"/>[i] (0: never). The result is ordered by dialogue, then branch.</summary>
    async Task<List<Branch>> PlayAsync(IReadOnlyList<int[]> openings, int[] fork, ulong seed, CancellationToken cancel)
    {
        Options.Validate();
        if (openings.Count == 0) throw new CriaException("REFUEL needs at least one opening");
        int bos = policy.Tokenizer.Bos;
        int longest = 1 + openings.Max(o => o.Length) + Options.DialogueTokens;
        foreach (var e in new[] { policy, user })
            if (longest > e.MaxSequenceLength) throw new CriaException($"a dialogue of {longest} tokens (BOS, the longest opening and {Options.DialogueTokens} tokens of turns) does not fit the engine's {e.MaxSequenceLength}");
        if (openings.Any(o => o.Length == 0)) throw new CriaException("an opening is empty");
        var branches = openings.Select((o, i) => new Branch(i, 0, [bos, .. o], [])).ToList();
        for (int turn = 1; turn <= Options.Turns; turn++)
        {
            for (int k = branches.Count - 1; k >= 0; k--)
                if (fork[branches[k].Dialogue] == turn)
                {
                    branches[k].StateLength = branches[k].Tokens.Count;
                    branches.Insert(k + 1, branches[k].Fork());
                }
            await Speak(policy, branches, Options.ResponseTokens, turn, 0, seed, cancel);
            foreach (var b in branches) if (fork[b.Dialogue] == turn) b.Response = b.Turns[^1];
            if (turn < Options.Turns) await Speak(user, branches, Options.UserTokens, turn, 1, seed, cancel);
        }
        return branches;
    }

    async Task Speak(Engine engine, List<Branch> branches, int tokens, int turn, int speaker, ulong seed, CancellationToken cancel)
    {
        var sampler = new SamplerOptions { Temperature = Options.Temperature, TopK = 0, TopP = 1, MinP = 0 };
        var said = await Task.WhenAll(branches.Select(b => BestOfN.Collect(engine, new GenerationRequest
        {
            Prompt = b.Tokens.ToArray(), MaxTokens = tokens, IgnoreEog = true,
            Sampler = sampler with { Seed = Mix(seed, b.Dialogue, b.Side, turn, speaker) },
        }, cancel)));
        for (int k = 0; k < branches.Count; k++)
        {
            var t = said[k].Item1;
            if (t.Length != tokens) throw new CriaException($"a {(speaker == 0 ? "policy" : "user")} turn stopped after {t.Length} of {tokens} tokens ({said[k].Item3})");
            branches[k].Tokens.AddRange(t);
            branches[k].Turns.Add(t);
        }
    }

    /// <summary>A request's seed: SplitMix64 of the round's seed and the request's place in the game. Before the fork
    /// both branches are one branch (side 0), so the roll-in is shared.</summary>
    static ulong Mix(ulong seed, int dialogue, int side, int turn, int speaker)
    {
        ulong z = seed + 0x9E3779B97F4A7C15UL * (ulong)(1 + (((long)dialogue * 2 + side) * 64 + turn) * 2 + speaker);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>What one REFUEL iteration did: its round of data, the mean loss over its optimizer steps, and the share of
/// the round's pairs with unequal rewards whose log-ratio difference under π_{t+1} has the reward gap's sign (the
/// REFUEL code's sign_align).</summary>
public sealed record RefuelIteration(RefuelRound Round, double Loss, double SignAgreement, double GradNorm);

public static class Refuel
{
    /// <summary>
    /// One iteration of REFUEL: <paramref name="rollouts"/> (whose policy engine serves the trainer's current
    /// parameters, π_t) plays a round from <paramref name="openings"/>; log π_t of both branches' responses is taken
    /// from the trainer before any update; then <paramref name="steps"/> optimizer steps of the regression
    /// (<see cref="PreferenceLoss.Refuel"/>, pairs drawn by the trainer) move the parameters to π_{t+1}, and the pairs
    /// are scored again under π_{t+1} for the sign agreement.
    /// </summary>
    public static async Task<RefuelIteration> IterationAsync(Trainer trainer, DialogueRollouts rollouts, IReadOnlyList<int[]> openings, Random rng, ulong seed, int steps, PreferenceOptions loss, CancellationToken cancel = default)
    {
        if (loss.Loss != PreferenceLoss.Refuel) throw new CriaException($"a REFUEL iteration needs the REFUEL loss, got {loss.Loss}");
        if (steps < 1) throw new CriaException($"a REFUEL iteration needs at least one step, got {steps}");
        var round = await rollouts.CollectAsync(openings, rng, seed, cancel);
        var reference = trainer.SequenceLogProbs(round.Pairs);
        double l = 0, g = 0;
        for (int s = 0; s < steps; s++)
        {
            var res = trainer.PreferenceStep(round.Pairs, reference, loss);
            l += res.Loss; g += res.GradNorm;
        }
        var after = trainer.SequenceLogProbs(round.Pairs);
        int signed = 0, agree = 0;
        for (int i = 0; i < round.Pairs.Count; i++)
        {
            double gap = round.Pairs[i].RewardGap;
            if (gap == 0) continue;
            signed++;
            if (loss.PairLoss(after[2 * i], after[2 * i + 1], reference[2 * i], reference[2 * i + 1], 0, 0, gap).Margin * gap > 0) agree++;
        }
        return new RefuelIteration(round, l / steps, agree / (double)Math.Max(1, signed), g / steps);
    }
}
