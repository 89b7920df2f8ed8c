using System.Globalization;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;

namespace Cria.Bench;

/// <summary>
/// Best-of-N and adaptive sampling measured (docs/adapt.md, "Best-of-N"):
///   Cria.Bench best-of --model POLICY --selector DIR --judge DIR [--prompts FILE] [--count 40] [-N 16] [-n 32]
///        [--temp 0.8] [--threads 2] [--ctx 64]
/// DIR holds a train-reward adapter.gguf and head.gguf on POLICY. For each prompt (the first half of every 10th verse
/// of FILE with ≥ 10 words), N samples (seed 1000·p + i) are drawn once and scored by the selector, by the judge (a
/// reward model the selection never saw) and by the policy's log p. Prints, per k, the mean scores of best-of-k (the
/// selector's argmax among the first k samples), and for adaptive sampling (rounds of 1, 2, 4 … up to N, stopping
/// once a sample reaches the threshold: exactly what BestOfN.RunAsync draws) the mean samples drawn and scores, at
/// thresholds given as quantiles of the selector's single-sample scores.
/// </summary>
static class BestOfBench
{
    public static async Task<int> Run(string[] args)
    {
        string? model = null, selector = null, judge = null;
        string prompts = "data/valid.txt";
        int count = 40, N = 16, n = 32, threads = 2, T = 64;
        float temp = 0.8f;
        var ci = CultureInfo.InvariantCulture;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--model": model = Next(); break;
                case "--selector": selector = Next(); break;
                case "--judge": judge = Next(); break;
                case "--prompts": prompts = Next(); break;
                case "--count": count = int.Parse(Next(), ci); break;
                case "-N": N = int.Parse(Next(), ci); break;
                case "-n": n = int.Parse(Next(), ci); break;
                case "--temp": temp = float.Parse(Next(), ci); break;
                case "--threads": threads = int.Parse(Next(), ci); break;
                case "--ctx": T = int.Parse(Next(), ci); break;
                default: Console.Error.WriteLine($"unknown argument {a}"); return 2;
            }
        }
        if (model == null || selector == null || judge == null) { Console.Error.WriteLine("--model, --selector and --judge are required"); return 2; }
        using var m = LlamaModel.Open(model);
        var tok = m.Tokenizer;
        var verses = File.ReadLines(prompts).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).Where(w => w.Length >= 10)
            .Where((_, i) => i % 10 == 0).Take(count).Select(w => string.Join(' ', w[..(w.Length / 2)])).ToArray();

        (InferenceContext Ctx, ClassifierOptions Head, float[] W) Load(string dir)
        {
            var (head, w) = ClassifierOptions.ReadHead(Path.Combine(dir, "head.gguf"), m.Config.Dim);
            var ctx = new InferenceContext(m, new ContextOptions { ContextSize = T, Threads = threads, Loras = [(LoraAdapter.Load(Path.Combine(dir, "adapter.gguf"), m), 1f)] });
            return (ctx, head, w);
        }
        var sel = Load(selector);
        var jud = Load(judge);
        using var selCtx = sel.Ctx;
        using var judCtx = jud.Ctx;
        var selScorer = new RewardModelScorer(sel.Ctx, sel.Head, sel.W, T);
        var judScorer = new RewardModelScorer(jud.Ctx, jud.Head, jud.W, T);
        using var lpCtx = new InferenceContext(m, new ContextOptions { ContextSize = Math.Min(m.Config.ContextLength, 256), Threads = threads });
        var lpScorer = new LogProbScorer(lpCtx);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = N * (n + 64), Threads = threads });
        using var engine = new Engine(ctx, tok, new EngineOptions { Scheduler = new SchedulerOptions { MaxSequences = N } });

        // scores[p][i] = (selector, judge, log p per token) of sample i of prompt p
        var scores = new List<(double S, double J, double L)[]>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int p = 0; p < verses.Length; p++)
        {
            var prompt = tok.Encode(verses[p], addBos: true);
            var req = new GenerationRequest
            {
                Prompt = prompt, MaxTokens = n, IgnoreEog = true,
                Sampler = new SamplerOptions { Temperature = temp, TopK = 40, TopP = 0.95f, MinP = 0f, Seed = (ulong)(1000 * p) },
            };
            var r = await BestOfN.RunAsync(engine, req, selScorer, new BestOfNOptions { Samples = N });
            scores.Add(r.Samples.Select(s => (s.Score, judScorer.Score(prompt, s.Tokens), lpScorer.Score(prompt, s.Tokens) / s.Tokens.Length)).ToArray());
        }
        Console.WriteLine($"{verses.Length} prompts × {N} samples of {n} tokens (temperature {temp.ToString(ci)}, top-k 40, top-p 0.95) in {sw.Elapsed.TotalSeconds:F0} s; " +
            $"selector {Path.GetFileName(Path.GetFullPath(selector))}, judge {Path.GetFileName(Path.GetFullPath(judge))}");
        Console.WriteLine();
        Console.WriteLine("| samples k | selector reward of best-of-k | judge reward | log p per token |");
        Console.WriteLine("|---:|---:|---:|---:|");
        int Best(IReadOnlyList<(double S, double J, double L)> s, int k) { int b = 0; for (int i = 1; i < k; i++) if (s[i].S > s[b].S) b = i; return b; }
        foreach (int k in new[] { 1, 2, 4, 8, 16 }.Where(k => k <= N))
        {
            var chosen = scores.Select(s => s[Best(s, k)]).ToArray();
            Console.WriteLine(string.Create(ci, $"| {k} | {chosen.Average(c => c.S):F3} | {chosen.Average(c => c.J):F3} | {chosen.Average(c => c.L):F3} |"));
        }
        double gainS = scores.Average(s => s[Best(s, N)].S) - scores.Average(s => s[0].S);
        double gainJ = scores.Average(s => s[Best(s, N)].J) - scores.Average(s => s[0].J);
        Console.WriteLine();
        Console.WriteLine($"| adaptive: threshold (quantile of single-sample selector rewards) | mean samples drawn | selector reward | share of best-of-{N}'s selector gain | judge reward | share of its judge gain |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        var singles = scores.SelectMany(s => s).Select(x => x.S).OrderBy(x => x).ToArray();
        foreach (double q in new[] { 0.5, 0.75, 0.9, 0.95 })
        {
            double t = singles[(int)Math.Min(singles.Length - 1, Math.Round(q * (singles.Length - 1)))];
            double drawn = 0, sumS = 0, sumJ = 0;
            foreach (var s in scores)
            {
                // Rounds of 1, 2, 4 …: the same prefix of samples BestOfN.RunAsync would draw with this threshold.
                int taken = 0, round = 1;
                while (taken < N) { taken = Math.Min(N, taken + round); round *= 2; if (s.Take(taken).Max(x => x.S) >= t) break; }
                int b = Best(s, taken);
                drawn += taken; sumS += s[b].S; sumJ += s[b].J;
            }
            int P = scores.Count;
            Console.WriteLine(string.Create(ci, $"| {t:F3} ({q:P0}) | {drawn / P:F2} | {sumS / P:F3} | {(sumS / P - scores.Average(s => s[0].S)) / gainS:P0} | {sumJ / P:F3} | {(sumJ / P - scores.Average(s => s[0].J)) / gainJ:P0} |"));
        }
        return 0;
    }
}
