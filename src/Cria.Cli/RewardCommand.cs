using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Cria.Inference;
using Cria.Serving;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// Reward models: <c>cria train-reward</c> trains LoRA adapters and a one-output head on preference pairs (Bradley–Terry,
/// Scaled BT) or ratings (regression); <c>cria reward</c> scores texts or pairs with such a model, or with the
/// training-free contrastive reward of a strong and a weak model (CDR: log π_strong(y|x) − log π_weak(y|x)).
/// </summary>
static class RewardCommand
{
    /// <summary>One JSONL record: a pair {"prompt", "chosen", "rejected"[, "magnitude"][, "margin"]} or a rating
    /// {"prompt", "response", "score"}, tokenized as prompt then response (no BOS, as DPO's pairs).</summary>
    public sealed record Record(int[] Prompt, int[]? Chosen, int[]? Rejected, float? Magnitude, float Margin, int[]? Response, float? Score)
    {
        public bool IsPair => Chosen != null;
    }

    public static List<Record> Read(string path, Cria.Tokenization.Tokenizer tok)
    {
        var list = new List<Record>();
        foreach (var (line, e) in Cria.Formats.JsonLines.Objects(path))
        {
            string? Str(string name, bool required)
            {
                if (!e.TryGetProperty(name, out var v)) return required ? throw new CriaException($"{path}:{line}: needs a string \"{name}\"") : null;
                if (v.ValueKind != JsonValueKind.String) throw new CriaException($"{path}:{line}: \"{name}\" must be a string");
                return v.GetString();
            }
            float? Num(string name)
            {
                if (!e.TryGetProperty(name, out var v)) return null;
                if (v.ValueKind != JsonValueKind.Number || !float.IsFinite(v.GetSingle())) throw new CriaException($"{path}:{line}: \"{name}\" must be a finite number");
                return v.GetSingle();
            }
            int[] Enc(string s) => tok.Encode(s, addBos: false);
            var prompt = Enc(Str("prompt", true)!);
            if (e.TryGetProperty("chosen", out _))
            {
                string chosen = Str("chosen", true)!, rejected = Str("rejected", true)!;
                if (chosen.Length == 0 || rejected.Length == 0) throw new CriaException($"{path}:{line}: an empty response");
                float? magnitude = Num("magnitude");
                if (magnitude is <= 0) throw new CriaException($"{path}:{line}: \"magnitude\" must be > 0");
                list.Add(new Record(prompt, Enc(chosen), Enc(rejected), magnitude, Num("margin") ?? 0f, null, null));
            }
            else
            {
                string response = Str("response", true) ?? throw new CriaException($"{path}:{line}: needs \"chosen\"/\"rejected\" or \"response\"/\"score\"");
                if (response.Length == 0) throw new CriaException($"{path}:{line}: an empty response");
                float score = Num("score") ?? throw new CriaException($"{path}:{line}: a rated response needs a number \"score\"");
                list.Add(new Record(prompt, null, null, null, 0f, Enc(response), score));
            }
        }
        if (list.Count == 0) throw new CriaException($"{path} holds no records");
        return list;
    }

    static int[] Concat(int[] a, int[] b) => [.. a, .. b];

    /// <summary>Pair accuracy (reward of chosen &gt; rejected), mean reward margin, and accuracy per magnitude when the
    /// pairs carry one.</summary>
    static string PairReport(IReadOnlyList<Record> pairs, ReadOnlySpan<float> chosen, ReadOnlySpan<float> rejected)
    {
        int right = 0; double margin = 0;
        var byMagnitude = new SortedDictionary<float, (int Right, int N)>();
        for (int i = 0; i < pairs.Count; i++)
        {
            bool ok = chosen[i] > rejected[i];
            if (ok) right++;
            margin += chosen[i] - rejected[i];
            if (pairs[i].Magnitude is { } m) { var (r, n) = byMagnitude.GetValueOrDefault(m); byMagnitude[m] = (r + (ok ? 1 : 0), n + 1); }
        }
        string s = string.Create(CultureInfo.InvariantCulture, $"pair accuracy {right / (double)pairs.Count:P1} ({right} of {pairs.Count}), mean margin {margin / pairs.Count:F3}");
        if (byMagnitude.Count > 1)
            s += "; by magnitude: " + string.Join(", ", byMagnitude.Select(kv => string.Create(CultureInfo.InvariantCulture, $"{kv.Key:G} {kv.Value.Right / (double)kv.Value.N:P1} of {kv.Value.N}")));
        return s;
    }

    public static Command Train()
    {
        var init = new Option<string?>("--init") { Description = "the F32/F16 llama GGUF to adapt (default: the bundled model)" };
        var train = new Option<string>("--train") { Description = "JSONL: pairs {\"prompt\", \"chosen\", \"rejected\"[, \"magnitude\"][, \"margin\"]} for bt / scaled-bt, ratings {\"prompt\", \"response\", \"score\"} for regression", Required = true };
        var valid = new Option<string?>("--valid") { Description = "held-out pairs (same format): pair accuracy at every evaluation" };
        var loss = new Option<string>("--loss") { Description = "bt (Bradley–Terry), scaled-bt (weighted by each pair's \"magnitude\": HelpSteer2-Preference) or regression (on \"score\")", DefaultValueFactory = _ => "bt" };
        var mode = new Option<string>("--mode") { Description = "pooling of the head: last (the usual reward model), mean, bi-mean, bi-last", DefaultValueFactory = _ => "last" };
        var outDir = new Option<string>("--out", "-o") { Description = "output directory: adapter.gguf (llama.cpp's --lora format) and head.gguf", DefaultValueFactory = _ => "out/reward" };
        var ctx = new Option<int>("--ctx") { Description = "tokens per text (BOS + prompt + response, cut)", DefaultValueFactory = _ => 128 };
        var training = new AdapterTrainingCliOptions(steps: 500, batch: 8, warmup: 50, rank: 8, alpha: 16f, batchDescription: "texts per micro-batch (pairs: half as many pairs)");
        var cmd = new Command("train-reward", "train a reward model: LoRA adapters and a one-output head on the final hidden states, from preference pairs (Bradley–Terry, Scaled BT) or ratings (regression)")
        { init, train, valid, loss, mode, outDir, ctx };
        training.AddTo(cmd);
        cmd.SetAction(r =>
        {
            string lossName = r.GetValue(loss)!.ToLowerInvariant();
            var objective = lossName switch
            {
                "bt" or "scaled-bt" => ClassifierObjective.BradleyTerry,
                "regression" => ClassifierObjective.Regression,
                _ => throw new CriaException($"unknown --loss '{lossName}' (bt, scaled-bt, regression)"),
            };
            var (pooling, bidirectional) = ClassifierOptions.ParseMode(r.GetValue(mode)!);
            var options = training.Training(r);
            if (objective == ClassifierObjective.BradleyTerry && options.BatchSize % 2 != 0) throw new CriaException($"--batch {options.BatchSize}: pairs need an even batch (chosen and rejected)");
            var lora = training.Lora(r);
            int T = r.GetValue(ctx), every = training.EvalEvery(r);
            var imported = training.Base(r, DefaultModel.Resolve(r.GetValue(init)));
            if (T < 2 || T > imported.Shape.ContextLength) throw new CriaException($"--ctx {T} must be in 2..{imported.Shape.ContextLength}");
            var tok = imported.Vocabulary.CreateTokenizer();
            var records = Read(r.GetValue(train)!, tok);
            var heldRecords = r.GetValue(valid) is { } v ? Read(v, tok) : null;
            if (heldRecords != null && heldRecords.Any(x => !x.IsPair)) throw new CriaException("--valid must hold pairs (chosen, rejected): the evaluation is pair accuracy");
            List<RewardPair> pairs = [];
            List<RatedText> rated = [];
            if (objective == ClassifierObjective.BradleyTerry)
            {
                if (records.Any(x => !x.IsPair)) throw new CriaException($"--loss {lossName} trains on pairs (chosen, rejected); the file holds ratings (use --loss regression)");
                if (lossName == "scaled-bt" && records.Any(x => x.Magnitude == null)) throw new CriaException("--loss scaled-bt needs a \"magnitude\" in every pair");
                pairs = records.Select(x => new RewardPair(Concat(x.Prompt, x.Chosen!), Concat(x.Prompt, x.Rejected!), lossName == "scaled-bt" ? x.Magnitude!.Value : 1f, x.Margin)).ToList();
            }
            else
            {
                if (records.Any(x => x.IsPair)) throw new CriaException("--loss regression trains on ratings (response, score); the file holds pairs");
                rated = records.Select(x => new RatedText(Concat(x.Prompt, x.Response!), x.Score!.Value)).ToList();
            }
            var head = ClassifierOptions.Reward(objective, pooling, bidirectional);
            string dir = r.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            var log = Console.Error;
            using var trainer = new Trainer(imported.Shape, options, [], tok.Bos, seqLen: T, lora: lora, classifier: head, frozenBase: imported.Frozen, parameters: imported.Parameters);
            int pad = tok.Eos >= 0 ? tok.Eos : 0;
            log.WriteLine($"{lossName} reward model ({head.ModeName}): {(pairs.Count > 0 ? $"{pairs.Count} pairs" : $"{rated.Count} rated texts")}" +
                $"{(heldRecords != null ? $", {heldRecords.Count} held-out pairs" : "")}; {T} tokens per text");
            AdapterLog.Write(log, trainer, ", and the head");
            string Held()
            {
                if (heldRecords == null) return "";
                var rw = trainer.Rewards([.. heldRecords.Select(x => Concat(x.Prompt, x.Chosen!)), .. heldRecords.Select(x => Concat(x.Prompt, x.Rejected!))], pad);
                return "  held-out " + PairReport(heldRecords, rw.AsSpan(0, heldRecords.Count), rw.AsSpan(heldRecords.Count));
            }
            var sw = Stopwatch.StartNew();
            StepLoop.Run(trainer, options.Steps, every, () =>
            {
                var res = objective == ClassifierObjective.BradleyTerry ? trainer.RewardPairStep(pairs, pad) : trainer.RewardRegressionStep(rated, pad);
                return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  {(pairs.Count > 0 ? "pairs ordered" : "within 0.5")} {res.Accuracy:P0}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
            }, Held);
            ClassifyCommand.WriteOutputs(trainer, head, dir, "cria-reward", sw.Elapsed);
            return 0;
        });
        return cmd;
    }

    public static Command Score()
    {
        var model = new Argument<string?>("model") { Description = "the reward model's base (or a quantization of it, causal heads), or the strong model with --weak (default: the bundled model)", Arity = ArgumentArity.ZeroOrOne };
        var adapter = new Option<string?>("--adapter") { Description = "the reward model's LoRA adapter (train-reward's adapter.gguf)" };
        var head = new Option<string?>("--head") { Description = "the reward model's head (train-reward's head.gguf)" };
        var weak = new Option<string?>("--weak") { Description = "contrastive reward (CDR) instead of a trained head: log p_MODEL(response|prompt) − log p_WEAK(response|prompt)" };
        var logprob = new Option<bool>("--logprob") { Description = "the model's own log p(response|prompt) as the reward (the part of CDR without the weak model)" };
        var lora = new Option<string?>("--lora") { Description = "with --weak or --logprob: a LoRA adapter applied to MODEL (e.g. a DPO adapter: CDR's aligned model over its base given as --weak)" };
        var pairsFile = new Option<string?>("--pairs") { Description = "JSONL pairs {\"prompt\", \"chosen\", \"rejected\"[, \"magnitude\"]}: pair accuracy" };
        var prompt = new Option<string>("--prompt", "-p") { Description = "the prompt of --response", DefaultValueFactory = _ => "" };
        var response = new Option<string[]>("--response", "-r") { Description = "a response to score (repeatable)", AllowMultipleArgumentsPerToken = false };
        var ctx = new Option<int>("--ctx") { Description = "tokens per text for a head (BOS + prompt + response, cut, as in training)", DefaultValueFactory = _ => 128 };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var cmd = new Command("reward", "score responses with a reward model (train-reward's adapter and head) or the contrastive reward of two models (CDR)")
        { model, adapter, head, weak, logprob, lora, pairsFile, prompt, response, ctx, threads };
        cmd.SetAction(r =>
        {
            string modelPath = DefaultModel.Resolve(r.GetValue(model));
            string? weakPath = r.GetValue(weak), headPath = r.GetValue(head), adapterPath = r.GetValue(adapter);
            bool lp = r.GetValue(logprob);
            if ((weakPath != null ? 1 : 0) + (headPath != null ? 1 : 0) + (lp ? 1 : 0) != 1)
                throw new CriaException("give one of --head (with --adapter) for a trained reward model, --weak for the contrastive reward, or --logprob");
            if (headPath != null && adapterPath == null) throw new CriaException("--head needs the --adapter it was trained with");
            if (headPath != null && r.GetValue(lora) != null) throw new CriaException("--lora applies to --weak and --logprob; a reward head brings its own --adapter");
            using var m = Cria.Models.LlamaModel.Open(modelPath);
            var tok = m.Tokenizer;
            var responses = r.GetValue(response) ?? [];
            string? pairsPath = r.GetValue(pairsFile);
            if (responses.Length == 0 && pairsPath == null) throw new CriaException("give --pairs or --response");
            var records = pairsPath != null ? Read(pairsPath, tok) : null;
            if (records != null && records.Any(x => !x.IsPair)) throw new CriaException($"{pairsPath}: --pairs needs pairs (chosen, rejected)");
            int[] promptTokens = tok.Encode(r.GetValue(prompt)!, addBos: false);
            // The texts to score, as (prompt, response) token pairs: every pair's chosen then every pair's rejected.
            var items = records != null
                ? [.. records.Select(x => (x.Prompt, x.Chosen!)), .. records.Select(x => (x.Prompt, x.Rejected!))]
                : responses.Select(s => (promptTokens, tok.Encode(s, addBos: false))).ToList();
            int threadCount = r.GetValue(threads);
            float[] scores;
            if (weakPath != null || lp)
            {
                using var w = weakPath != null ? Cria.Models.LlamaModel.Open(weakPath) : null;
                if (w != null) ModelDrafter.CheckCompatible(m, w);
                int longest = items.Max(x => x.Item1.Length + x.Item2.Length + 1);
                var strongLoras = r.GetValue(lora) is { } lp2 ? [(Cria.Models.LoraAdapter.Load(lp2, m), 1f)] : Array.Empty<(Cria.Models.LoraAdapter, float)>();
                using var sc = new InferenceContext(m, new ContextOptions { ContextSize = longest, Threads = threadCount, Loras = strongLoras });
                using var wc = w != null ? new InferenceContext(w, new ContextOptions { ContextSize = longest, Threads = threadCount }) : null;
                scores = items.Select(x => (float)(wc != null
                    ? RewardModel.Contrastive(sc, wc, [tok.Bos, .. x.Item1], x.Item2)
                    : RewardModel.ResponseLogProb(sc, [tok.Bos, .. x.Item1], x.Item2))).ToArray();
            }
            else
            {
                var (o, weights) = ClassifierOptions.ReadHead(headPath!, m.Config.Dim);
                if (!o.IsReward) throw new CriaException($"{headPath} is a classifier head (labels); use cria classify");
                int T = r.GetValue(ctx);
                if (T < 2 || T > m.Config.ContextLength) throw new CriaException($"--ctx {T} must be in 2..{m.Config.ContextLength}");
                var adapterFile = Cria.Models.LoraAdapter.Load(adapterPath!, m);
                var texts = items.Select(x => Concat(x.Item1, x.Item2)).ToList();
                if (!o.Bidirectional)
                {
                    using var context = new InferenceContext(m, new ContextOptions { ContextSize = T, Threads = threadCount, Loras = [(adapterFile, 1f)] });
                    scores = texts.Select(t =>
                    {
                        var ids = new int[Math.Min(T, t.Length + 1)];
                        new LabelledExample(t, 0).CopyTo(ids, tok.Bos);
                        return RewardModel.Score(context, ids, o, weights);
                    }).ToArray();
                }
                else
                {
                    using var trainer = ClassifyCommand.ForwardTrainer(modelPath, "reward", adapterFile, o, weights, T, texts.Count, threadCount, tok.Bos);
                    scores = trainer.Rewards(texts, tok.Eos >= 0 ? tok.Eos : 0);
                }
            }
            string strongName = Path.GetFileName(modelPath) + (r.GetValue(lora) is { } la ? " + " + Path.GetFileName(la) : "");
            string kind = weakPath != null ? $"contrastive ({strongName} − {Path.GetFileName(weakPath)})" : lp ? $"log p ({strongName})" : "reward model";
            if (records != null)
                Console.Out.WriteLine($"{kind}: " + PairReport(records, scores.AsSpan(0, records.Count), scores.AsSpan(records.Count)));
            else
                for (int i = 0; i < responses.Length; i++) Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{scores[i]:F4}\t{responses[i]}"));
            return 0;
        });
        return cmd;
    }

    /// <summary><c>cria best-of</c>: N sampled responses scored by a reward, the best one printed; with --threshold,
    /// adaptive sampling (rounds of 1, 2, 4 … until a sample reaches the threshold); with --prune-after, early pruning of
    /// partial samples.</summary>
    public static Command BestOf()
    {
        var model = new Argument<string?>("model") { Description = "the model to sample from (default: the bundled model)", Arity = ArgumentArity.ZeroOrOne };
        var prompt = new Option<string>("--prompt", "-p") { Description = "prompt text", DefaultValueFactory = _ => "Once upon a time" };
        var n = new Option<int>("--n-predict", "-n") { Description = "tokens per sample", DefaultValueFactory = _ => 64 };
        var samples = new Option<int>("--samples", "-N") { Description = "most samples", DefaultValueFactory = _ => 4 };
        var threshold = new Option<double?>("--threshold") { Description = "adaptive: stop sampling once a sample scores at least this" };
        var pruneAfter = new Option<int?>("--prune-after") { Description = "early pruning: draw every sample to this many tokens, score them, continue only the --keep best" };
        var keep = new Option<int>("--keep") { Description = "samples continued after --prune-after", DefaultValueFactory = _ => 1 };
        var temp = new Option<float>("--temp") { DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { DefaultValueFactory = _ => 0.95f };
        var seed = new Option<ulong?>("--seed", "-s") { Description = "seed of sample 0 (sample i uses seed + i; default: random)" };
        var all = new Option<bool>("--all") { Description = "print every sample with its score" };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var scoring = new ScorerCliOptions(selfEval: true);
        var cmd = new Command("best-of", "sample N responses, score each (a trained reward model, CDR, log p or the model's self-evaluation), print the best; --threshold samples adaptively, --prune-after prunes partial samples")
        { model, prompt, n, samples, threshold, pruneAfter, keep, temp, topK, topP, seed, all, threads };
        scoring.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            var o = new BestOfNOptions { Samples = r.GetValue(samples), Threshold = r.GetValue(threshold), PruneAfter = r.GetValue(pruneAfter), Keep = r.GetValue(keep) };
            o.Validate();
            string modelPath = DefaultModel.Resolve(r.GetValue(model));
            int threadCount = r.GetValue(threads), tokens = r.GetValue(n);
            if (tokens < 1) throw new CriaException($"-n must be ≥ 1, got {tokens}");
            using var m = Cria.Models.LlamaModel.Open(modelPath);
            var promptTokens = m.Tokenizer.Encode(r.GetValue(prompt)!, addBos: true);
            int perSample = Math.Min(m.Config.ContextLength, promptTokens.Length + tokens + 1);
            using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = perSample * Math.Min(o.Samples, 32), Threads = threadCount });
            using var engine = new Engine(ctx, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = Math.Min(o.Samples, 32) } });
            var disposables = new List<IDisposable>();
            try
            {
                var scorer = scoring.Build(r, m, modelPath, perSample, threadCount, disposables);
                var request = new GenerationRequest
                {
                    Prompt = promptTokens, MaxTokens = Math.Min(tokens, perSample - promptTokens.Length - 1),
                    Sampler = new SamplerOptions
                    {
                        Temperature = r.GetValue(temp), TopK = r.GetValue(topK), TopP = r.GetValue(topP),
                        Seed = r.GetValue(seed) ?? (ulong)Random.Shared.NextInt64(),
                    },
                };
                var result = await BestOfN.RunAsync(engine, request, scorer, o, ct);
                if (r.GetValue(all))
                    for (int i = 0; i < result.Samples.Count; i++)
                    {
                        var s = result.Samples[i];
                        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{(i == result.Best ? "*" : s.Pruned ? "-" : " ")} {s.Score,10:F4}  {s.Text.Replace("\n", " ")}"));
                    }
                else Console.Out.WriteLine(result.Chosen.Text);
                string how = o.Threshold is { } t ? $" (adaptive, threshold {t:G}, at most {o.Samples})"
                    : o.PruneAfter is { } k ? $" ({o.Samples - o.Keep} pruned after {k} tokens)" : "";
                Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"best of {result.Samples.Count} sample(s){how}: sample {result.Best}, score {result.Chosen.Score:F4}"));
            }
            finally { for (int i = disposables.Count - 1; i >= 0; i--) disposables[i].Dispose(); }
            return 0;
        });
        return cmd;
    }
}
