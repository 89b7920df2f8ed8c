using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Cria.Inference;
using Cria.Serving;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// <c>cria train-self-eval</c>: capability-aware self-evaluation (Manvi et al. 2024). For each training prompt the
/// policy draws N samples, a scorer (a reward model in the paper) rates them, and a LoRA adapter on the policy learns to
/// answer "No" to "Would you do better if you started over?" after a sample that wins or ties against another, "Yes"
/// after one that loses. best-of --self-eval then scores with the policy's own P(No).
/// </summary>
static class SelfEvalCommand
{
    /// <summary>A groups file: JSONL {"prompt", "responses": [...], "rewards": [...]}, tokenized without BOS.</summary>
    public static List<SelfEvalGroup> ReadGroups(string path, Cria.Tokenization.Tokenizer tok)
    {
        var list = new List<SelfEvalGroup>();
        foreach (var (line, e) in Cria.Formats.JsonLines.Objects(path))
        {
            string prompt = e.TryGetProperty("prompt", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString()! : throw new CriaException($"{path}:{line}: needs a string \"prompt\"");
            if (!e.TryGetProperty("responses", out var rs) || rs.ValueKind != JsonValueKind.Array) throw new CriaException($"{path}:{line}: needs an array \"responses\"");
            if (!e.TryGetProperty("rewards", out var ws) || ws.ValueKind != JsonValueKind.Array) throw new CriaException($"{path}:{line}: needs an array \"rewards\"");
            var responses = rs.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? tok.Encode(x.GetString()!, addBos: false) : throw new CriaException($"{path}:{line}: a response is not a string")).ToArray();
            var rewards = ws.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.Number ? x.GetSingle() : throw new CriaException($"{path}:{line}: a reward is not a number")).ToArray();
            if (responses.Any(x => x.Length == 0)) throw new CriaException($"{path}:{line}: an empty response");
            var g = new SelfEvalGroup(tok.Encode(prompt, addBos: false), responses, rewards);
            try { g.Validate(); } catch (CriaException ex) { throw new CriaException($"{path}:{line}: {ex.Message}"); }
            list.Add(g);
        }
        if (list.Count == 0) throw new CriaException($"{path} holds no groups");
        return list;
    }

    public static Command Train()
    {
        var init = new Option<string?>("--init") { Description = "the policy: an F32/F16 llama GGUF (default: the bundled model)" };
        var prompts = new Option<string?>("--prompts") { Description = "training prompts, one per line: the policy samples -N responses to each and the scorer rates them" };
        var groupsIn = new Option<string?>("--groups") { Description = "instead of --prompts: JSONL {\"prompt\", \"responses\": [...], \"rewards\": [...]} (e.g. an earlier run's groups.jsonl)" };
        var samples = new Option<int>("--samples", "-N") { Description = "responses sampled per prompt", DefaultValueFactory = _ => 8 };
        var n = new Option<int>("--n-predict", "-n") { Description = "tokens per response", DefaultValueFactory = _ => 32 };
        var temp = new Option<float>("--temp") { DefaultValueFactory = _ => 0.8f };
        var partial = new Option<double>("--partial-fraction") { Description = "fraction of training responses cut to a random prefix (with the whole response's target), so P(No) also scores partial samples (best-of --prune-after)", DefaultValueFactory = _ => 0 };
        var holdout = new Option<double>("--holdout") { Description = "fraction of the groups held out: calibration and ordering at every evaluation", DefaultValueFactory = _ => 0.1 };
        var outDir = new Option<string>("--out", "-o") { Description = "output directory: adapter.gguf (llama.cpp's --lora format) and groups.jsonl", DefaultValueFactory = _ => "out/self-eval" };
        var ctx = new Option<int>("--ctx") { Description = "tokens per row (BOS + prompt + response, cut, + question + answer); give best-of the same --reward-ctx", DefaultValueFactory = _ => 128 };
        var training = new AdapterTrainingCliOptions(steps: 300, batch: 8, warmup: 20, rank: 8, alpha: 16f, batchDescription: "responses per micro-batch");
        var scoring = new ScorerCliOptions(selfEval: false);
        var cmd = new Command("train-self-eval", "train a model to evaluate its own samples (capability-aware self-evaluation): sample, rate with a reward, and teach a LoRA adapter P(\"No\") to \"Would you do better if you started over?\"")
        { init, prompts, groupsIn, samples, n, temp, partial, holdout, outDir, ctx };
        training.AddTo(cmd);
        scoring.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            string modelPath = DefaultModel.Resolve(r.GetValue(init));
            string? promptsPath = r.GetValue(prompts), groupsPath = r.GetValue(groupsIn);
            if ((promptsPath == null) == (groupsPath == null)) throw new CriaException("give --prompts (sample and rate) or --groups (rated samples)");
            var options = training.Training(r);
            var lora = training.Lora(r);
            double held = r.GetValue(holdout), partialFraction = r.GetValue(partial);
            if (!(partialFraction >= 0 && partialFraction <= 1)) throw new CriaException($"--partial-fraction must be in [0, 1], got {partialFraction}");
            if (!(held >= 0 && held < 1)) throw new CriaException($"--holdout must be in [0, 1), got {held}");
            int T = r.GetValue(ctx), N = r.GetValue(samples), tokens = r.GetValue(n), threadCount = options.Threads;
            var imported = training.Base(r, modelPath, "self-evaluation training");
            if (T < 8 || T > imported.Shape.ContextLength) throw new CriaException($"--ctx {T} must be in 8..{imported.Shape.ContextLength}");
            var tok = imported.Vocabulary.CreateTokenizer();
            var format = SelfEvalFormat.Create(tok);
            string dir = r.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            var log = Console.Error;
            var sw = Stopwatch.StartNew();

            List<SelfEvalGroup> groups;
            if (groupsPath != null) groups = ReadGroups(groupsPath, tok);
            else
            {
                if (N < 2 || N > 64) throw new CriaException($"-N must be in 2..64 (samples are compared with each other), got {N}");
                if (tokens < 1) throw new CriaException($"-n must be ≥ 1, got {tokens}");
                if (!File.Exists(promptsPath)) throw new CriaException($"{promptsPath} does not exist");
                var lines = File.ReadLines(promptsPath!).Where(l => !string.IsNullOrWhiteSpace(l)).ToArray();
                if (lines.Length == 0) throw new CriaException($"{promptsPath} holds no prompts");
                groups = await Sample(r, scoring, modelPath, lines, N, tokens, r.GetValue(temp), options.Seed, threadCount, Path.Combine(dir, "groups.jsonl"), ct);
                log.WriteLine($"sampled and rated {groups.Count} × {N} responses in {sw.Elapsed.TotalSeconds:F0} s: {Path.Combine(dir, "groups.jsonl")}");
            }
            int nHeld = (int)Math.Round(held * groups.Count);
            var train = groups.Take(groups.Count - nHeld).ToList();
            var valid = groups.Skip(groups.Count - nHeld).ToList();
            if (train.Count == 0) throw new CriaException("no groups left to train on after the hold-out");

            using var trainer = new Trainer(imported.Shape, options, [], tok.Bos, seqLen: T, lora: lora, frozenBase: imported.Frozen, parameters: imported.Parameters);
            log.WriteLine($"self-evaluation: {train.Count} groups ({train.Sum(g => g.Responses.Length)} responses){(valid.Count > 0 ? $", {valid.Count} held out" : "")}; {T} tokens per row");
            AdapterLog.Write(log, trainer);
            string Held() => valid.Count == 0 ? "" : "  held-out " + Report(valid, trainer.SelfEvalPNo(Flatten(valid), format));
            int every = training.EvalEvery(r);
            sw.Restart();
            StepLoop.Run(trainer, options.Steps, every, () =>
            {
                var res = trainer.SelfEvalStep(train, format, partialFraction);
                return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  |P(No) − win-or-tie rate| {res.MeanError:F3}  mean P(No) {res.MeanPNo:F3}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
            }, Held);
            string adapterPath = Path.Combine(dir, "adapter.gguf");
            trainer.Model.Lora!.Write(adapterPath, trainer.Model.LoraParameters, "cria-self-eval");
            Console.Out.WriteLine($"done: {trainer.Step} steps in {sw.Elapsed.TotalSeconds:F0} s; adapter {adapterPath} (best-of --self-eval {adapterPath} --reward-ctx {T})");
            return 0;
        });
        return cmd;
    }

    static List<(int[], int[])> Flatten(IEnumerable<SelfEvalGroup> groups) => groups.SelectMany(g => g.Responses.Select(x => (g.Prompt, x))).ToList();

    /// <summary>Held-out quality of P(No): its Brier score against each response's win-or-tie rate (next to the score of
    /// always answering the mean rate), and the fraction of same-prompt pairs with different rewards that P(No) orders
    /// as the rewards do.</summary>
    public static string Report(IReadOnlyList<SelfEvalGroup> groups, IReadOnlyList<double> pNo)
    {
        double brier = 0, baseline = 0; int k = 0, ordered = 0, pairs = 0;
        var rates = groups.SelectMany(g => Enumerable.Range(0, g.Responses.Length).Select(g.WinOrTieRate)).ToArray();
        double mean = rates.Average();
        foreach (var g in groups)
        {
            int first = k;
            for (int i = 0; i < g.Responses.Length; i++, k++) { brier += Math.Pow(pNo[k] - rates[k], 2); baseline += Math.Pow(mean - rates[k], 2); }
            for (int i = 0; i < g.Responses.Length; i++)
                for (int j = i + 1; j < g.Responses.Length; j++)
                    if (g.Rewards[i] != g.Rewards[j])
                    {
                        pairs++;
                        if ((g.Rewards[i] > g.Rewards[j]) == (pNo[first + i] > pNo[first + j])) ordered++;
                    }
        }
        return string.Create(CultureInfo.InvariantCulture, $"Brier {brier / k:F4} (constant {baseline / k:F4})  pairs ordered {(pairs > 0 ? (double)ordered / pairs : 0):P1}  mean P(No) {pNo.Average():F3}");
    }

    /// <summary>N samples of each prompt through the serving engine (sample i of prompt p: seed + 1000·p + i), rated by
    /// the command line's scorer; the groups are written to <paramref name="outPath"/> as they come.</summary>
    static async Task<List<SelfEvalGroup>> Sample(ParseResult r, ScorerCliOptions scoring, string modelPath, string[] prompts, int N, int tokens, float temp, ulong seed, int threads, string outPath, CancellationToken ct)
    {
        using var m = Cria.Models.LlamaModel.Open(modelPath);
        var tok = m.Tokenizer;
        // BOS + prompt, as the trainer's rows begin (whether or not the model's tokenizer adds BOS itself)
        var encoded = prompts.Select(p => (int[])[tok.Bos, .. tok.Encode(p, addBos: false)]).ToArray();
        int perSample = Math.Min(m.Config.ContextLength, encoded.Max(p => p.Length) + tokens + 1);
        if (encoded.Max(p => p.Length) + 1 >= perSample) throw new CriaException($"a prompt leaves no room for a response in the model's context of {m.Config.ContextLength}");
        int concurrent = Math.Min(N, 32);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = perSample * concurrent, Threads = threads });
        using var engine = new Engine(ctx, tok, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = concurrent } });
        var owned = new List<IDisposable>();
        var groups = new List<SelfEvalGroup>();
        string tmp = outPath + ".tmp";
        try
        {
            var scorer = scoring.Build(r, m, modelPath, perSample, threads, owned);
            using (var w = new StreamWriter(tmp))
                for (int p = 0; p < prompts.Length; p++)
                {
                    var request = new GenerationRequest
                    {
                        Prompt = encoded[p], MaxTokens = Math.Min(tokens, perSample - encoded[p].Length - 1),
                        Sampler = new SamplerOptions { Temperature = temp, TopK = 40, TopP = 0.95f, Seed = unchecked(seed + 1000UL * (ulong)p) },
                    };
                    var result = await BestOfN.RunAsync(engine, request, scorer, new BestOfNOptions { Samples = N }, ct);
                    var kept = result.Samples.Where(s => s.Tokens.Length > 0).ToArray();
                    if (kept.Length < 2) continue;
                    groups.Add(new SelfEvalGroup(encoded[p][1..], kept.Select(s => s.Tokens).ToArray(), kept.Select(s => (float)s.Score).ToArray()));
                    w.WriteLine(JsonSerializer.Serialize(new { prompt = prompts[p], responses = kept.Select(s => s.Text), rewards = kept.Select(s => s.Score) }));
                }
            File.Move(tmp, outPath, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
            for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
        }
        if (groups.Count == 0) throw new CriaException("no prompt gave two non-empty responses");
        return groups;
    }
}
