using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// <c>cria train-refuel</c>: multi-turn RLHF by REFUEL (Gao et al. 2024). Each iteration the current policy π_t (the
/// base with the LoRA adapter trained so far) plays dialogues with a user simulator (the base model without the
/// adapter), two branches per opening from a uniformly drawn turn, each scored as a whole by the command line's scorer;
/// the adapter then regresses the branches' log-ratio difference onto η times their reward difference
/// (<see cref="PreferenceLoss.Refuel"/>) and becomes π_{t+1}.
/// </summary>
static class RefuelCommand
{
    public static Command Create()
    {
        var init = new Option<string?>("--init") { Description = "the policy's base: an F32/F16 llama GGUF (default: the bundled model); the user simulator is this model without the adapter" };
        var prompts = new Option<string>("--prompts") { Description = "dialogue openings (the first user turn), one per line", Required = true };
        var valid = new Option<string?>("--valid-prompts") { Description = "held-out openings: one dialogue each, same seeds every evaluation, mean reward reported" };
        var iterations = new Option<int>("--iterations") { Description = "rounds of play then regression", DefaultValueFactory = _ => 20 };
        var dialogues = new Option<int>("--dialogues") { Description = "openings played per iteration (two branches each)", DefaultValueFactory = _ => 32 };
        var epochs = new Option<int>("--epochs") { Description = "passes over an iteration's pairs", DefaultValueFactory = _ => 1 };
        var turns = new Option<int>("--turns") { Description = "H: the policy's turns per dialogue", DefaultValueFactory = _ => 2 };
        var response = new Option<int>("--response-tokens") { Description = "tokens per policy turn", DefaultValueFactory = _ => 24 };
        var userTokens = new Option<int>("--user-tokens") { Description = "tokens per user turn", DefaultValueFactory = _ => 16 };
        var eta = new Option<float>("--eta") { Description = "η: the log-ratio difference is regressed onto η × the reward difference", DefaultValueFactory = _ => 1f };
        var scored = new Option<string>("--reward-turns") { Description = "the turns the reward reads: all, policy, or user (earned only through what the policy makes the user say)", DefaultValueFactory = _ => "all" };
        var temp = new Option<float>("--temp") { Description = "sampling temperature of policy and user", DefaultValueFactory = _ => 1f };
        var outDir = new Option<string>("--out", "-o") { Description = "output directory: adapter.gguf (llama.cpp's --lora format) after every iteration, refuel.csv", DefaultValueFactory = _ => "out/refuel" };
        var training = new AdapterTrainingCliOptions(steps: 0, batch: 16, warmup: 5, rank: 8, alpha: 16f, batchDescription: "rows per micro-batch (two per pair)");
        var scoring = new ScorerCliOptions(selfEval: false);
        var judging = new ScorerCliOptions(selfEval: false, prefix: "judge", what: "a second reward for the held-out dialogues only (a judge the policy never trains on)");
        var cmd = new Command("train-refuel", "multi-turn RLHF (REFUEL): the policy plays dialogues with a user simulator, and a LoRA adapter regresses the relative future reward of two branches")
        { init, prompts, valid, iterations, dialogues, epochs, turns, response, userTokens, eta, scored, temp, outDir };
        training.AddTo(cmd);
        scoring.AddTo(cmd);
        judging.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            string modelPath = DefaultModel.Resolve(r.GetValue(init));
            var game = new RefuelOptions
            {
                Turns = r.GetValue(turns), ResponseTokens = r.GetValue(response), UserTokens = r.GetValue(userTokens), Temperature = r.GetValue(temp),
                Scored = r.GetValue(scored) switch
                {
                    "all" => RefuelScored.All, "policy" => RefuelScored.Policy, "user" => RefuelScored.User,
                    var x => throw new CriaException($"--reward-turns must be all, policy or user, got '{x}'"),
                },
            };
            game.Validate();
            int N = r.GetValue(iterations), B = r.GetValue(dialogues), E = r.GetValue(epochs);
            if (N < 1) throw new CriaException($"--iterations must be ≥ 1, got {N}");
            if (B < 1 || B > 256) throw new CriaException($"--dialogues must be in 1..256, got {B}");
            if (E < 1) throw new CriaException($"--epochs must be ≥ 1, got {E}");
            var loss = PreferenceOptions.Default(PreferenceLoss.Refuel) with { Beta = r.GetValue(eta) };
            loss.Validate();
            var probe = training.Training(r, steps: 1);
            if (probe.BatchSize % 2 != 0) throw new CriaException($"--batch must be even (two rows per pair), got {probe.BatchSize}");
            int perIteration = (B * E + probe.BatchSize / 2 - 1) / (probe.BatchSize / 2);
            var options = training.Training(r, steps: N * perIteration);
            var lora = training.Lora(r);

            var imported = training.Base(r, modelPath, "REFUEL training");
            using var model = LlamaModel.Open(modelPath);
            var tok = model.Tokenizer;
            var openings = ReadOpenings(r.GetValue(prompts)!, tok);
            var held = r.GetValue(valid) is { } vp ? ReadOpenings(vp, tok) : null;
            if (held is { Count: > 1000 }) throw new CriaException($"--valid-prompts holds {held.Count} openings; at most 1000 are played at each evaluation");
            int longest = 1 + openings.Concat(held ?? []).Max(o => o.Length) + game.DialogueTokens;
            if (longest > Math.Min(model.Config.ContextLength, imported.Shape.ContextLength))
                throw new CriaException($"a dialogue of {longest} tokens (BOS, the longest opening, {game.DialogueTokens} tokens of turns) exceeds the model's context of {model.Config.ContextLength}");
            string dir = r.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            var log = Console.Error;

            using var trainer = new Trainer(imported.Shape, options, [], tok.Bos, seqLen: longest, lora: lora, frozenBase: imported.Frozen, parameters: imported.Parameters);
            log.WriteLine($"REFUEL: {openings.Count} openings, {B} dialogues × 2 branches per iteration, {game.Turns} policy turns of {game.ResponseTokens} tokens, user turns of {game.UserTokens}; reward on {game.Scored.ToString().ToLowerInvariant()} turns; η {loss.Beta}; {perIteration} steps per iteration, {options.Steps} in all");
            AdapterLog.Write(log, trainer, frozen: "the base (and the user simulator) is frozen");

            int concurrent = Math.Min(2 * Math.Max(B, held?.Count ?? 0), 64);
            var owned = new List<IDisposable>();
            try
            {
                var scorer = scoring.Build(r, model, modelPath, longest, options.Threads, owned);
                var judge = judging.Given(r) ? judging.Build(r, model, modelPath, longest, options.Threads, owned) : null;
                if (judge != null && held == null) throw new CriaException("a --judge-* reward scores the held-out dialogues: give --valid-prompts");
                var userCtx = new InferenceContext(model, new ContextOptions { ContextSize = longest * concurrent, Threads = options.Threads });
                owned.Add(userCtx);
                var userEngine = new Engine(userCtx, tok, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = concurrent }, MaxWaiting = 1024 });
                owned.Add(userEngine);
                string adapterPath = Path.Combine(dir, "adapter.gguf");
                var rng = new Random(unchecked((int)options.Seed));
                var csv = new List<string> { "iteration,step,rollout_reward,loss,sign_align,grad_norm,held_reward,held_se,held_policy_words,held_user_words,judge_reward,judge_se,seconds" };
                var sw = Stopwatch.StartNew();

                // π_t as an engine: the adapter written, then read back by the inference path (llama.cpp's --lora file)
                async Task<T> WithPolicy<T>(Func<DialogueRollouts, Task<T>> run)
                {
                    WriteAdapter(trainer, adapterPath);
                    using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = longest * concurrent, Threads = options.Threads, Loras = [(LoraAdapter.Load(adapterPath, model), 1f)] });
                    using var engine = new Engine(ctx, tok, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = concurrent }, MaxWaiting = 1024 });
                    return await run(new DialogueRollouts(engine, userEngine, scorer, game));
                }
                async Task<(string Text, double[] Cells)> Held()
                {
                    if (held == null) return ("", []);
                    var played = await WithPolicy(d => d.PlayAsync(held, options.Seed ^ 0x5EEDUL, ct));
                    var (mean, se) = MeanAndError(played.Select(d => d.Reward).ToArray());
                    string text = string.Create(CultureInfo.InvariantCulture, $"  held-out reward {mean:F3} ± {se:F3}");
                    double p = double.NaN, u = double.NaN, jm = double.NaN, js = double.NaN;
                    if (scorer is WordCountScorer words)
                    {
                        p = played.Average(d => words.Count(tok.Decode(d.Of(policy: true))));
                        u = played.Average(d => words.Count(tok.Decode(d.Of(policy: false))));
                        text += string.Create(CultureInfo.InvariantCulture, $" (words in policy turns {p:F3}, in user turns {u:F3})");
                    }
                    if (judge != null)
                    {
                        (jm, js) = MeanAndError(played.Select(d => judge.Score([tok.Bos, .. d.Opening], Dialogue.Of(d.Turns, game.Scored))).ToArray());
                        text += string.Create(CultureInfo.InvariantCulture, $"  judge {jm:F3} ± {js:F3}");
                    }
                    return (text, [mean, se, p, u, jm, js]);
                }
                string Cells(double[] c) => c.Length == 0 ? ",,,,," : string.Join(',', c.Select(x => double.IsNaN(x) ? "" : x.ToString("F4", CultureInfo.InvariantCulture)));

                var h0 = await Held();
                Console.Out.WriteLine($"iteration 0{h0.Text}");
                csv.Add($"0,0,,,,,{Cells(h0.Cells)},0");
                int every = training.EvalEvery(r);
                for (int it = 1; it <= N; it++)
                {
                    var batch = Enumerable.Range(0, B).Select(_ => openings[rng.Next(openings.Count)]).ToArray();
                    var step = await WithPolicy(d => Refuel.IterationAsync(trainer, d, batch, rng, options.Seed + (ulong)it * 0x100000001UL, perIteration, loss, ct));
                    var (round, l, align, g) = (step.Round, step.Loss, step.SignAgreement, step.GradNorm);
                    var h = it % every == 0 || it == N ? await Held() : ("", []);
                    Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"iteration {it}/{N}  rollout reward {round.MeanReward:F3}  loss {l:F4}  sign agreement {align:P0}  |g| {g:F2}  {sw.Elapsed.TotalSeconds:F0} s{h.Text}"));
                    csv.Add(string.Create(CultureInfo.InvariantCulture, $"{it},{trainer.Step},{round.MeanReward:F4},{l:F5},{align:F4},{g:F4},{Cells(h.Cells)},{sw.Elapsed.TotalSeconds:F1}"));
                    TextFiles.WriteLinesAtomically(Path.Combine(dir, "refuel.csv"), csv);
                }
                WriteAdapter(trainer, adapterPath);
                Console.Out.WriteLine($"done: {N} iterations, {trainer.Step} steps in {sw.Elapsed.TotalSeconds:F0} s; adapter {adapterPath}");
            }
            finally
            {
                for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            }
            return 0;
        });
        return cmd;
    }

    static (double Mean, double StdErr) MeanAndError(double[] x)
    {
        double mean = x.Average();
        return (mean, x.Length > 1 ? Math.Sqrt(x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1) / x.Length) : 0);
    }

    static void WriteAdapter(Trainer trainer, string path) => trainer.Model.Lora!.Write(path, trainer.Model.LoraParameters, "cria-refuel");

    static List<int[]> ReadOpenings(string path, Cria.Tokenization.Tokenizer tok)
    {
        if (!File.Exists(path)) throw new CriaException($"{path} does not exist");
        var list = File.ReadLines(path).Where(l => !string.IsNullOrWhiteSpace(l)).Select(l => tok.Encode(l, addBos: false)).Where(t => t.Length > 0).ToList();
        if (list.Count == 0) throw new CriaException($"{path} holds no openings");
        return list;
    }
}
