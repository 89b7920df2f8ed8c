using System.Globalization;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;

namespace Cria.Bench;

/// <summary>
/// Best-of-N and adaptive sampling measured (docs/adapt.md, "Best-of-N"):
///   Cria.Bench best-of --model POLICY --selector DIR --judge DIR [--prompts FILE] [--count 40] [-N 16] [-n 32]
///        [--temp 0.8] [--threads 2] [--ctx 64] [--self-eval ADAPTER --self-eval-ctx 96]
/// DIR holds a train-reward adapter.gguf and head.gguf on POLICY. For each prompt (the first half of every 10th verse
/// of FILE with ≥ 10 words), N samples (seed 1000·p + i) are drawn once and scored by the selector, by the judge (a
/// reward model the selection never saw) and by the policy's log p. Prints, per k, the mean scores of best-of-k (the
/// selector's argmax among the first k samples), and for adaptive sampling (rounds of 1, 2, 4 … up to N, stopping
/// once a sample reaches the threshold: exactly what BestOfN.RunAsync draws) the mean samples drawn and scores, at
/// thresholds given as quantiles of the selector's single-sample scores.
/// With --self-eval (a train-self-eval adapter on POLICY, trained with labels from the selector), every sample is also
/// scored by the policy's own P(No), whole and cut after 8 and 16 tokens, and three more tables compare it with the
/// selector: best-of-k and adaptive sampling by P(No), its calibration against each sample's win-or-tie rate among the
/// prompt's samples, and early pruning (all samples scored after K tokens, the best M continued: here the same
/// samples' full texts, the continuation a fresh draw from the same distribution would give).
/// </summary>
static class BestOfBench
{
    public static async Task<int> Run(string[] args)
    {
        string? model = null, selector = null, judge = null, selfEval = null;
        int selfCtx = 96;
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
                case "--self-eval": selfEval = Next(); break;
                case "--self-eval-ctx": selfCtx = int.Parse(Next(), ci); break;
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

        using var selfCtxt = selfEval != null ? new InferenceContext(m, new ContextOptions { ContextSize = selfCtx - 1, Threads = threads, Loras = [(LoraAdapter.Load(selfEval, m), 1f)] }) : null;
        var selfScorer = selfCtxt != null ? new SelfEvalScorer(selfCtxt, SelfEvalFormat.Create(tok), selfCtx - 1) : null;
        int[] cuts = [8, 16];
        // scores[p][i] = (selector, judge, log p per token) of sample i of prompt p
        var scores = new List<(double S, double J, double L)[]>();
        // self[p][i] = (P(No) of the whole sample, P(No) and selector reward of its first cuts[c] tokens)
        var self = new List<(double Full, double[] PartNo, double[] PartS)[]>();
        var samplesOf = new List<int[][]>();
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
            if (selfScorer != null)
                self.Add(r.Samples.Select(s => (selfScorer.Score(prompt, s.Tokens),
                    cuts.Select(c => selfScorer.Score(prompt, s.Tokens.AsSpan(0, Math.Min(c, s.Tokens.Length)))).ToArray(),
                    cuts.Select(c => selScorer.Score(prompt, s.Tokens.AsSpan(0, Math.Min(c, s.Tokens.Length)))).ToArray())).ToArray());
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
        if (selfScorer != null) SelfEvalTables(scores, self, cuts, N, n);
        return 0;
    }

    static void SelfEvalTables(List<(double S, double J, double L)[]> scores, List<(double Full, double[] PartNo, double[] PartS)[]> self, int[] cuts, int N, int n)
    {
        var ci = CultureInfo.InvariantCulture;
        int P = scores.Count;
        int ArgMax(int count, Func<int, double> key) { int b = 0; for (int i = 1; i < count; i++) if (key(i) > key(b)) b = i; return b; }
        double judge1 = scores.Average(s => s[0].J);
        double gainSel = scores.Average(s => s[ArgMax(N, i => s[i].S)].J) - judge1;
        double gainSelf = Enumerable.Range(0, P).Average(p => scores[p][ArgMax(N, i => self[p][i].Full)].J) - judge1;
        Console.WriteLine();
        Console.WriteLine("| samples k | judge reward: best-of-k by the selector | by P(No) (self-evaluation) | mean P(No) of P(No)'s pick |");
        Console.WriteLine("|---:|---:|---:|---:|");
        foreach (int k in new[] { 1, 2, 4, 8, 16 }.Where(k => k <= N))
        {
            double bySel = scores.Average(s => s[ArgMax(k, i => s[i].S)].J);
            double bySelf = Enumerable.Range(0, P).Average(p => scores[p][ArgMax(k, i => self[p][i].Full)].J);
            double pno = Enumerable.Range(0, P).Average(p => self[p][ArgMax(k, i => self[p][i].Full)].Full);
            Console.WriteLine(string.Create(ci, $"| {k} | {bySel:F3} | {bySelf:F3} | {pno:F3} |"));
        }

        Console.WriteLine();
        Console.WriteLine($"| adaptive by P(No): threshold | mean samples drawn | judge reward | share of best-of-{N}'s judged gain (by P(No)) | (by the selector) |");
        Console.WriteLine("|---:|---:|---:|---:|---:|");
        foreach (double t in new[] { 0.5, 0.6, 0.7, 0.8, 0.9 })
        {
            double drawn = 0, sumJ = 0;
            for (int p = 0; p < P; p++)
            {
                int taken = 0, round = 1;
                while (taken < N) { taken = Math.Min(N, taken + round); round *= 2; if (self[p].Take(taken).Max(x => x.Full) >= t) break; }
                drawn += taken; sumJ += scores[p][ArgMax(taken, i => self[p][i].Full)].J;
            }
            Console.WriteLine(string.Create(ci, $"| {t:F1} | {drawn / P:F2} | {sumJ / P:F3} | {(sumJ / P - judge1) / gainSelf:P0} | {(sumJ / P - judge1) / gainSel:P0} |"));
        }

        // Calibration: P(No) against the sample's win-or-tie rate among the prompt's other samples, by the selector
        // (the reward the labels came from) and by the judge.
        Console.WriteLine();
        Console.WriteLine("| P(No) bin | samples | mean P(No) | win-or-tie rate by the selector (the labels' reward) | by the judge |");
        Console.WriteLine("|---|---:|---:|---:|---:|");
        var all = new List<(double PNo, double WinS, double WinJ)>();
        for (int p = 0; p < P; p++)
            for (int i = 0; i < N; i++)
            {
                int ws = 0, wj = 0;
                for (int j = 0; j < N; j++) if (j != i) { if (scores[p][i].S >= scores[p][j].S) ws++; if (scores[p][i].J >= scores[p][j].J) wj++; }
                all.Add((self[p][i].Full, ws / (double)(N - 1), wj / (double)(N - 1)));
            }
        for (int b = 0; b < 5; b++)
        {
            var bin = all.Where(x => x.PNo >= b * 0.2 && (x.PNo < (b + 1) * 0.2 || b == 4)).ToArray();
            if (bin.Length == 0) { Console.WriteLine($"| {b * 0.2:F1}–{(b + 1) * 0.2:F1} | 0 | | | |"); continue; }
            Console.WriteLine(string.Create(ci, $"| {b * 0.2:F1}–{(b + 1) * 0.2:F1} | {bin.Length} | {bin.Average(x => x.PNo):F3} | {bin.Average(x => x.WinS):F3} | {bin.Average(x => x.WinJ):F3} |"));
        }
        double brier = all.Average(x => Math.Pow(x.PNo - x.WinS, 2)), mean = all.Average(x => x.WinS), constant = all.Average(x => Math.Pow(mean - x.WinS, 2));
        Console.WriteLine(string.Create(ci, $"\nBrier score against the selector's win-or-tie rate {brier:F4} (a constant {mean:F3}: {constant:F4}); " +
            $"correlation of P(No) with the selector's reward {Correlation(all.Select(x => x.PNo).ToArray(), scores.SelectMany(s => s.Select(x => x.S)).ToArray()):F3}, with the judge's {Correlation(all.Select(x => x.PNo).ToArray(), scores.SelectMany(s => s.Select(x => x.J)).ToArray()):F3}"));

        // How often each signal orders two samples of a prompt as the selector does (pairs with different selector rewards).
        double Agree(Func<int, int, double> key)
        {
            int agree = 0, pairs = 0;
            for (int p = 0; p < P; p++)
                for (int i = 0; i < N; i++)
                    for (int j = i + 1; j < N; j++)
                        if (scores[p][i].S != scores[p][j].S) { pairs++; if (scores[p][i].S > scores[p][j].S == key(p, i) > key(p, j)) agree++; }
            return (double)agree / pairs;
        }
        Console.WriteLine(string.Create(ci, $"Same-prompt pairs ordered as the selector orders them: by P(No) {Agree((p, i) => self[p][i].Full):P1}, " +
            $"by P(No) after {cuts[0]} tokens {Agree((p, i) => self[p][i].PartNo[0]):P1}, after {cuts[1]} {Agree((p, i) => self[p][i].PartNo[1]):P1}; " +
            $"by the judge {Agree((p, i) => scores[p][i].J):P1}; by log p per token {Agree((p, i) => scores[p][i].L):P1}"));

        // Early pruning: every sample scored after K tokens, the best M continued and the best of those (by the full
        // score) chosen. Tokens generated per prompt: N·K + M·(n − K), against N·n for best-of-N.
        Console.WriteLine();
        Console.WriteLine($"| pruning: after K tokens, keep M | tokens generated (of best-of-{N}'s {N * n}) | judge reward, P(No) prunes and picks | share of best-of-{N}'s judged gain | selector prunes and picks | share |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        for (int c = 0; c < cuts.Length; c++)
            foreach (int M in new[] { 1, 2, 4 })
            {
                double jSelf = 0, jSel = 0;
                for (int p = 0; p < P; p++)
                {
                    var byNo = Enumerable.Range(0, N).OrderByDescending(i => self[p][i].PartNo[c]).ThenBy(i => i).Take(M).ToArray();
                    var byS = Enumerable.Range(0, N).OrderByDescending(i => self[p][i].PartS[c]).ThenBy(i => i).Take(M).ToArray();
                    jSelf += scores[p][byNo[ArgMax(M, i => self[p][byNo[i]].Full)]].J;
                    jSel += scores[p][byS[ArgMax(M, i => scores[p][byS[i]].S)]].J;
                }
                jSelf /= P; jSel /= P;
                Console.WriteLine(string.Create(ci, $"| {cuts[c]}, {M} | {N * cuts[c] + M * (n - cuts[c])} | {jSelf:F3} | {(jSelf - judge1) / gainSelf:P0} | {jSel:F3} | {(jSel - judge1) / gainSel:P0} |"));
            }
    }

    static double Correlation(double[] a, double[] b)
    {
        double ma = a.Average(), mb = b.Average(), sab = 0, saa = 0, sbb = 0;
        for (int i = 0; i < a.Length; i++) { sab += (a[i] - ma) * (b[i] - mb); saa += (a[i] - ma) * (a[i] - ma); sbb += (b[i] - mb) * (b[i] - mb); }
        return sab / Math.Sqrt(saa * sbb);
    }
}
