using System.Diagnostics;
using Cria.Inference;
using Cria.Models;

namespace Cria.Bench;

/// <summary>
/// Speculative decoding side by side with plain decoding, in one process, the same prompt, alternating:
///   Cria.Bench spec --model TARGET [--draft DRAFT] [--prompt TEXT] [-n 200] [--threads 2] [--rounds 5] [--ctx N]
///        [--draft-max 15] [--draft-p-min 0.75] [--lookup-max 10] [--lookup-ngram 3] [--temp 0] [--step-costs]
///        [--prompt-file FILE] [--rapid η,η…] [--rag-budget 256] [--rag-chunk 64] [--rag-query 32]
/// Each round runs every mode once (plain, prompt lookup, draft model if given), the order rotating by round, after
/// one untimed warm-up round. Prints per mode the median generation tokens/s, its ratio to plain decoding's median,
/// the drafts kept and the target steps; with --temp 0 it checks that every mode produced the same tokens.
/// --rapid adds RAPID modes, one per η: the target itself (and the draft model, if given) drafting from the chunks of
/// the prompt retrieved for its last --rag-query tokens (a long prompt: --prompt-file).
/// --step-costs first prints the time of one forward step of B rows after the prompt (B = 1 … 17, medians of 15):
/// what a verification of B − 1 drafts costs against one decode step (with --rounds 0, only that).
/// </summary>
static class SpecBench
{
    public static int Run(string[] args)
    {
        string? model = null, draft = null;
        string prompt = "And it came to pass, when men began to multiply on the face of the earth, and daughters were born unto them,";
        int n = 200, threads = 2, rounds = 5, ctxSize = 0, draftMax = 15, lookupMax = 10, ngram = 3;
        float pMin = 0.75f, temp = 0f;
        bool stepCosts = false;
        float[] etas = [];
        var rag = new RagOptions();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--model": model = Next(); break;
                case "--draft": draft = Next(); break;
                case "--prompt": prompt = Next(); break;
                case "-n": n = int.Parse(Next()); break;
                case "--threads": threads = int.Parse(Next()); break;
                case "--rounds": rounds = int.Parse(Next()); break;
                case "--ctx": ctxSize = int.Parse(Next()); break;
                case "--draft-max": draftMax = int.Parse(Next()); break;
                case "--draft-p-min": pMin = float.Parse(Next()); break;
                case "--lookup-max": lookupMax = int.Parse(Next()); break;
                case "--lookup-ngram": ngram = int.Parse(Next()); break;
                case "--temp": temp = float.Parse(Next()); break;
                case "--step-costs": stepCosts = true; break;
                case "--prompt-file": prompt = File.ReadAllText(Next()); break;
                case "--rapid": etas = Next().Split(',').Select(x => float.Parse(x, System.Globalization.CultureInfo.InvariantCulture)).ToArray(); break;
                case "--rag-budget": rag = rag with { BudgetTokens = int.Parse(Next()) }; break;
                case "--rag-chunk": rag = rag with { ChunkTokens = int.Parse(Next()) }; break;
                case "--rag-query": rag = rag with { QueryTokens = int.Parse(Next()) }; break;
                default: Console.Error.WriteLine($"unknown argument {a}"); return 2;
            }
        }
        if (model == null) { Console.Error.WriteLine("--model is required"); return 2; }
        using var target = LlamaModel.Open(model);
        if (ctxSize == 0) ctxSize = Math.Min(4096, target.Config.ContextLength);
        using var ctx = new InferenceContext(target, new ContextOptions { ContextSize = ctxSize, Threads = threads });
        var promptTokens = target.Tokenizer.Encode(prompt, addBos: true);
        if (promptTokens.Length + n > ctxSize) n = ctxSize - promptTokens.Length;
        Console.WriteLine($"target {Path.GetFileName(model)} ({target.Config.LayerCount} layers, dim {target.Config.Dim}), {threads} threads, ctx {ctxSize}, prompt {promptTokens.Length} tokens, {n} generated, temp {temp}");
        if (stepCosts) StepCosts(ctx, promptTokens);
        if (rounds == 0) return 0; // --rounds 0: the step costs only

        using var draftModel = draft == null ? null : LlamaModel.Open(draft);
        using var draftCtx = draftModel == null ? null : new InferenceContext(draftModel, new ContextOptions { ContextSize = ctxSize, Threads = threads });
        if (draftModel != null) ModelDrafter.CheckCompatible(target, draftModel);
        var modes = new List<(string Name, IDrafter? Drafter)>
        {
            ("plain", null),
            ($"lookup (max {lookupMax}, n-gram {ngram})", new PromptLookupDrafter(new SpeculativeOptions { DraftMax = lookupMax, NgramMax = ngram })),
        };
        if (draftCtx != null)
            modes.Add(($"draft {Path.GetFileName(draft)} (max {draftMax}, p-min {pMin})", new ModelDrafter(draftCtx, new SpeculativeOptions { DraftMax = draftMax, DraftPMin = pMin })));
        // RAPID: drafters reading the retrieved chunks, in contexts of their own sized for them.
        var rapidContexts = new List<InferenceContext>();
        if (etas.Length > 0)
        {
            var ragPrompt = new DraftPrompt(RagRetriever.DraftPrompt(promptTokens, target.Tokenizer, rag), promptTokens.Length);
            Console.WriteLine($"RAPID drafters read {ragPrompt.Tokens.Length} tokens ({rag.BudgetTokens}-token budget of {rag.ChunkTokens}-token chunks, query the last {rag.QueryTokens})");
            foreach (var (name, m) in new[] { ("itself", target), (Path.GetFileName(draft ?? ""), draftModel) })
            {
                if (m == null) continue;
                foreach (float eta in etas)
                {
                    var c = new InferenceContext(m, new ContextOptions { ContextSize = ragPrompt.Tokens.Length + n + 16, Threads = threads });
                    rapidContexts.Add(c);
                    modes.Add(($"RAPID, drafter {name} (η {eta}, max {draftMax}, p-min {pMin})",
                        new ModelDrafter(c, new SpeculativeOptions { DraftMax = draftMax, DraftPMin = pMin, Margin = eta }) { Prompt = ragPrompt }));
                }
            }
        }

        var gen = new Generator(ctx, target.Tokenizer);
        var options = new GenerationOptions { MaxTokens = n, StopAtEndOfGeneration = false, Sampler = new SamplerOptions { Temperature = temp, Seed = 7 } };
        var rates = modes.Select(_ => new List<double>()).ToArray();
        var last = new GenerationStats[modes.Count];
        var tokens = new int[modes.Count][];
        for (int round = -1; round < rounds; round++)
            for (int k = 0; k < modes.Count; k++)
            {
                int m = (k + Math.Max(round, 0)) % modes.Count;
                gen.Drafter = modes[m].Drafter;
                tokens[m] = gen.GenerateTokens(promptTokens, options).ToArray();
                last[m] = gen.LastStats!;
                if (round >= 0) rates[m].Add(last[m].GenerationTokensPerSecond);
            }
        double plain = Median(rates[0]);
        Console.WriteLine();
        Console.WriteLine("| mode | tokens/s (median) | per round | ÷ plain | drafts kept | target steps |");
        Console.WriteLine("|---|---:|---|---:|---|---:|");
        for (int m = 0; m < modes.Count; m++)
        {
            var s = last[m];
            string kept = m == 0 ? "—" : $"{s.AcceptedTokens} of {s.DraftedTokens} ({100 * s.AcceptanceRate:F0} %)";
            Console.WriteLine($"| {modes[m].Name} | {Median(rates[m]):F1} | {string.Join(" / ", rates[m].Select(r => r.ToString("F0")))} | {Median(rates[m]) / plain:F2}× | {kept} | {(m == 0 ? s.GeneratedTokens - 1 : s.TargetSteps)} |");
        }
        if (temp <= 0)
            for (int m = 1; m < modes.Count; m++)
                if (modes[m].Drafter?.Options.Margin == 0 && !tokens[m].SequenceEqual(tokens[0])) // RAPID's η > 0 changes the text
                    Console.WriteLine($"WARNING: {modes[m].Name} gave other tokens than plain greedy decoding");
        foreach (var c in rapidContexts) c.Dispose();
        return 0;
    }

    static void StepCosts(InferenceContext ctx, int[] prompt)
    {
        var b = new Batch(32);
        var rng = new Random(1);
        int vocab = ctx.Config.VocabSize;
        double one = 0;
        Console.WriteLine("| rows in the step | ms (median of 15) | ÷ one row |");
        Console.WriteLine("|---:|---:|---:|");
        foreach (int rows in new[] { 1, 2, 3, 4, 5, 6, 8, 11, 17 })
        {
            var times = new List<double>();
            for (int rep = -1; rep < 15; rep++)
            {
                ctx.Cache.Remove(0);
                b.Clear(); b.AddSequence(prompt, 0, 0, logitsForLast: false);
                ctx.Decode(b);
                b.Clear();
                for (int i = 0; i < rows; i++) b.Add(rng.Next(3, vocab), prompt.Length + i, 0, true);
                var sw = Stopwatch.StartNew();
                ctx.Decode(b);
                if (rep >= 0) times.Add(sw.Elapsed.TotalMilliseconds);
            }
            double med = Median(times);
            if (rows == 1) one = med;
            Console.WriteLine($"| {rows} | {med:F2} | {med / one:F2} |");
        }
        ctx.Cache.Remove(0);
        Console.WriteLine();
    }

    static double Median(List<double> v)
    {
        var s = v.OrderBy(x => x).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
