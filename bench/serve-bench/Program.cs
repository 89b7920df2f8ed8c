// serve-bench: the serving engine under mixed load, in process (no HTTP), on a random-weight model.
//
//  A. SARATHI mix: C chat streams (short prompt, 48 generated tokens, closed loop: each stream sends its next request
//     when the last ends) while long prompts (L tokens, 4 generated) arrive every P seconds. Reported per setting:
//     chat time-to-first-token and inter-token latency (median, P99), long-prompt TTFT, generated tokens/s, and all
//     tokens (prompt + generated) per second. Run with chunked prefill on and off at the same token budget.
//  B. Decode throughput: 16 concurrent greedy streams vs 1 (short prompts, 128 tokens each).
//  C. (--spec yes, or --spec-only yes for C alone) Speculative decoding with prompt lookup against plain decoding:
//     1, 4 and 16 streams of KJV-verse prompts (the bundled model's language; use --model models/default.gguf),
//     greedy and sampled, alternating plain and lookup engines R times; end-to-end generated tokens/s, medians.
//     With --spec-draft FILE (e.g. models/draft.gguf) the drafts come from that draft model instead (at most 8 a
//     step, --spec-p-min P: llama.cpp's confidence cut, default 0.75).
//
// usage: serve-bench [--model FILE.gguf] [--threads N] [--budget TOKENS] [--long L] [--concurrency 4,8,16]
//                    [--duration SECONDS] [--repeat R] [--decode-only yes] [--spec yes|--spec-only yes]
//                    [--spec-tokens 128] [--spec-streams 1,4,16] [--spec-draft FILE --spec-p-min P] [--out FILE.md]
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Tensors;

var opts = Args.Parse(args);
string model = opts.Get("--model", "");
if (model.Length == 0)
{
    model = Path.Combine(Path.GetTempPath(), "cria-serve-bench-small-q8.gguf");
    if (!File.Exists(model))
        RandomModel.Write(model, new RandomModelSpec { Dim = 512, Layers = 8, Heads = 8, KvHeads = 4, FfnDim = 1536, VocabSize = 4096, ContextLength = 4096, WeightType = GgmlType.Q8_0, Name = "bench-small-q8", Seed = 5 });
}
int threads = int.Parse(opts.Get("--threads", "0"), CultureInfo.InvariantCulture);
int budget = int.Parse(opts.Get("--budget", "256"), CultureInfo.InvariantCulture);
int longLen = int.Parse(opts.Get("--long", "1536"), CultureInfo.InvariantCulture);
double duration = double.Parse(opts.Get("--duration", "20"), CultureInfo.InvariantCulture);
int[] levels = opts.Get("--concurrency", "4,16").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
bool decodeOnly = opts.Get("--decode-only", "no") == "yes";
int repeats = int.Parse(opts.Get("--repeat", "1"), CultureInfo.InvariantCulture);
string? outFile = opts.Get("--out", "") is { Length: > 0 } o ? o : null;
bool specOnly = opts.Get("--spec-only", "no") == "yes", spec = specOnly || opts.Get("--spec", "no") == "yes";
int specTokens = int.Parse(opts.Get("--spec-tokens", "128"), CultureInfo.InvariantCulture);
int[] specStreams = opts.Get("--spec-streams", "1,4,16").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();

using var m = LlamaModel.Open(model);
using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 16384, Threads = threads, MicroBatch = Math.Max(budget, 64) });
string specDraft = opts.Get("--spec-draft", "");
float specPMin = float.Parse(opts.Get("--spec-p-min", "0.75"), CultureInfo.InvariantCulture);
using var draftModel = specDraft.Length > 0 ? LlamaModel.Open(specDraft) : null;
using var draftCtx = draftModel == null ? null : new InferenceContext(draftModel, new ContextOptions { ContextSize = 16384, Threads = threads });
string drafter = draftModel == null ? "lookup" : "draft model";
var report = new StringBuilder();
void Line(string s) { Console.WriteLine(s); report.AppendLine(s); }

Console.Error.WriteLine($"model {Path.GetFileName(model)}: dim {m.Config.Dim}, {m.Config.LayerCount} layers, ffn {m.Config.FfnDim}, vocab {m.Config.VocabSize}, " +
    $"{m.WeightBytesPerToken / 1e6:F1} MB of weights per token; {ctx.Threads} threads; {Environment.ProcessorCount} cores");

// Warm up the JIT (tiered compilation) so the first setting is not penalised.
using (var warm = new Engine(ctx, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = budget } }))
    await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Drain(warm, Req(Prompt(200, i), 16))));

Line($"Model: {Path.GetFileName(model)}, dim {m.Config.Dim}, {m.Config.LayerCount} layers, ffn {m.Config.FfnDim}, vocab {m.Config.VocabSize} " +
     $"({m.WeightBytesPerToken / 1e6:F1} MB of weights read per token); {ctx.Threads} threads on {Environment.ProcessorCount} cores; token budget {budget}/step.");
if (!specOnly)
{
    Line("");
    Line($"### A. Chat streams with {longLen}-token prompts arriving every {duration / 4:F1} s ({duration:F0} s per setting)");
    Line("");
    Line("| chat streams | chunked prefill | chat TTFT median / P99 (ms) | chat ITL median / P99 (ms) | max ITL (ms) | long-prompt TTFT median (ms) | generated tok/s | all tok/s | steps |");
    Line("|---:|:---:|---:|---:|---:|---:|---:|---:|---:|");
    // Settings alternate (on, off, then off, on for the next repeat) so that drift of a shared machine hits both alike.
    for (int rep = 0; rep < (decodeOnly ? 0 : repeats); rep++)
        foreach (int c in levels)
            foreach (bool chunked in rep % 2 == 0 ? new[] { true, false } : new[] { false, true })
            {
                var r = await Mix(c, chunked);
                Line($"| {c} | {(chunked ? "on" : "off")} | {r.TtftMed:F0} / {r.TtftP99:F0} | {r.ItlMed:F1} / {r.ItlP99:F1} | {r.ItlMax:F0} | {r.LongTtft:F0} | {r.GenTps:F1} | {r.AllTps:F0} | {r.Steps} |");
            }
}
if (!specOnly)
{
    Line("");
    Line("### B. Aggregate decode throughput (greedy, 16-token prompts, 128 tokens each)");
    Line("");
    Line("| streams | generated tok/s (decode phase) | per-stream tok/s | speed-up vs 1 |");
    Line("|---:|---:|---:|---:|");
    for (int rep = 0; rep < (decodeOnly ? repeats : 1); rep++)
    {
        double one = 0;
        foreach (int n in new[] { 1, 4, 16 })
        {
            double tps = await DecodeThroughput(n);
            if (n == 1) one = tps;
            Line($"| {n} | {tps:F1} | {tps / n:F1} | {tps / one:F2}× |");
        }
    }
}
if (spec)
{
    Line("");
    Line(draftModel == null
        ? $"### C. Speculative decoding with prompt lookup ({specTokens} tokens per stream, KJV-verse prompts, {repeats} alternating runs each)"
        : $"### C. Speculative decoding with the draft model {Path.GetFileName(specDraft)} (≤ 8 drafts, p-min {specPMin}; {specTokens} tokens per stream, KJV-verse prompts, {repeats} alternating runs each)");
    Line("");
    Line($"| streams | sampling | plain tok/s | {drafter} tok/s | {drafter} / plain | drafts kept | engine steps, plain / {drafter} |");
    Line("|---:|---|---:|---:|---:|---|---:|");
    foreach (int n in specStreams)
        foreach (bool sampled in new[] { false, true })
        {
            var plain = new List<SpecResult>();
            var look = new List<SpecResult>();
            for (int rep = 0; rep < repeats; rep++)
                foreach (bool on in rep % 2 == 0 ? new[] { false, true } : new[] { true, false })
                    (on ? look : plain).Add(await SpecRun(n, sampled, on));
            double pt = Median(plain.Select(x => x.Tps)), lt = Median(look.Select(x => x.Tps));
            long drafted = look.Sum(x => x.Drafted), kept = look.Sum(x => x.Kept);
            Line($"| {n} | {(sampled ? "temp 0.8, top-k 40, top-p 0.95" : "greedy")} | {pt:F1} | {lt:F1} | {lt / pt:F2}× | " +
                 $"{kept} of {drafted} ({100.0 * kept / Math.Max(1, drafted):F0} %) | {plain[0].Steps} / {look[0].Steps} |");
            Console.Error.WriteLine($"  runs: plain {string.Join(" ", plain.Select(x => x.Tps.ToString("F1", CultureInfo.InvariantCulture)))}; {drafter} {string.Join(" ", look.Select(x => x.Tps.ToString("F1", CultureInfo.InvariantCulture)))}");
        }
}
if (outFile != null) File.WriteAllText(outFile, report.ToString());
return 0;

static double Median(IEnumerable<double> xs)
{
    var a = xs.OrderBy(x => x).ToArray();
    return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
}

// n streams of KJV openings at once, each specTokens long; generated tokens over the wall time until the last ends.
async Task<SpecResult> SpecRun(int streams, bool sampled, bool lookup)
{
    string[] openings =
    [
        "And God said unto Noah", "In the beginning God created", "And it came to pass", "The LORD is my shepherd",
        "And the LORD spake unto Moses, saying", "Blessed is the man", "And Jacob said", "Thus saith the LORD",
        "Now these are the generations", "And he said unto them", "Then Jesus said", "And the word of the LORD came",
        "Hear, O Israel", "And Abraham said", "Praise ye the LORD", "And David said",
    ];
    ctx.Cache.Clear();
    ctx.Cache.ClearPrefixCache();
    draftCtx?.Cache.Clear();
    using var e = new Engine(ctx, m.Tokenizer, new EngineOptions
    {
        Scheduler = new SchedulerOptions { TokenBudget = budget, MaxSequences = 64, PrefixCaching = false },
        Speculative = !lookup ? null : draftCtx == null ? SpeculativeOptions.Lookup : new SpeculativeOptions { DraftMax = 8, DraftPMin = specPMin },
        DraftContext = lookup ? draftCtx : null,
    });
    var sw = Stopwatch.StartNew();
    var stats = await Task.WhenAll(Enumerable.Range(0, streams).Select(i => Drain(e, new GenerationRequest
    {
        Prompt = m.Tokenizer.Encode(openings[i % openings.Length], addBos: true), MaxTokens = specTokens, IgnoreEog = true,
        Sampler = sampled ? new SamplerOptions { Temperature = 0.8f, TopK = 40, TopP = 0.95f, Seed = (ulong)i } : SamplerOptions.Greedy,
    })));
    double wall = sw.Elapsed.TotalSeconds;
    return new SpecResult(stats.Sum(s => s.GeneratedTokens) / wall, e.StepsTotal, e.SpecDraftTokensTotal, e.SpecAcceptedTokensTotal);
}

int[] Prompt(int n, int seed)
{
    var r = new Random(seed);
    return Enumerable.Range(0, n).Select(i => i == 0 ? 1 : r.Next(3, m.Config.VocabSize)).ToArray();
}

static GenerationRequest Req(int[] prompt, int max) => new() { Prompt = prompt, MaxTokens = max, Sampler = SamplerOptions.Greedy, IgnoreEog = true };

static async Task<RequestStats> Drain(Engine e, GenerationRequest r)
{
    var q = e.Submit(r);
    await foreach (var _ in q.Events.ReadAllAsync()) { }
    return q.Stats!;
}

async Task<MixResult> Mix(int chats, bool chunked)
{
    ctx.Cache.Clear();
    ctx.Cache.ClearPrefixCache();
    using var e = new Engine(ctx, m.Tokenizer, new EngineOptions
    {
        Scheduler = new SchedulerOptions { TokenBudget = budget, MaxSequences = 64, ChunkedPrefill = chunked, PrefixCaching = false },
    });
    long steps0 = e.StepsTotal;
    var sw = Stopwatch.StartNew();
    var chat = new List<RequestStats>();
    var longs = new List<RequestStats>();
    long promptTokens = 0;
    int seed = 0;
    async Task ChatLoop(int id)
    {
        while (sw.Elapsed.TotalSeconds < duration)
        {
            var p = Prompt(32 + id % 8 * 4, 1000 * id + Interlocked.Increment(ref seed));
            var s = await Drain(e, Req(p, 48));
            lock (chat) { chat.Add(s); promptTokens += p.Length; }
        }
    }
    async Task Longs()
    {
        for (int k = 0; k < 4; k++)
        {
            double at = k * duration / 4 + duration / 8;
            var wait = at - sw.Elapsed.TotalSeconds;
            if (wait > 0) await Task.Delay(TimeSpan.FromSeconds(wait));
            var p = Prompt(longLen, 77 + k);
            var s = await Drain(e, Req(p, 4));
            lock (longs) { longs.Add(s); promptTokens += p.Length; }
        }
    }
    // Long prompts run concurrently with each other's wait; each is awaited so all four are measured.
    var tasks = Enumerable.Range(0, chats).Select(ChatLoop).Append(Longs()).ToArray();
    await Task.WhenAll(tasks);
    double wall = sw.Elapsed.TotalSeconds;
    var itl = chat.SelectMany(s => s.InterTokenSeconds).Select(x => x * 1000).OrderBy(x => x).ToArray();
    var ttft = chat.Select(s => s.TimeToFirstTokenSeconds * 1000).OrderBy(x => x).ToArray();
    long gen = chat.Sum(s => (long)s.GeneratedTokens) + longs.Sum(s => (long)s.GeneratedTokens);
    return new MixResult(Pct(ttft, 50), Pct(ttft, 99), Pct(itl, 50), Pct(itl, 99), itl.Length > 0 ? itl[^1] : 0,
        Pct(longs.Select(s => s.TimeToFirstTokenSeconds * 1000).OrderBy(x => x).ToArray(), 50),
        gen / wall, (gen + promptTokens) / wall, e.StepsTotal - steps0);
}

async Task<double> DecodeThroughput(int streams)
{
    ctx.Cache.Clear();
    ctx.Cache.ClearPrefixCache();
    using var e = new Engine(ctx, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = budget, MaxSequences = 64, PrefixCaching = false } });
    var stats = await Task.WhenAll(Enumerable.Range(0, streams).Select(i => Drain(e, Req(Prompt(16, 500 + i), 128))));
    // Aggregate decode rate: the sum of each stream's decode rate (its generated tokens after the first over the time
    // they took). All streams start together and decode side by side, so this is the engine's decode throughput.
    double rate = stats.Sum(s => s.InterTokenSeconds.Count / s.InterTokenSeconds.Sum());
    return rate;
}

static double Pct(double[] sorted, double p)
{
    if (sorted.Length == 0) return double.NaN;
    double rank = p / 100 * (sorted.Length - 1);
    int lo = (int)Math.Floor(rank), hi = (int)Math.Ceiling(rank);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
}

record SpecResult(double Tps, long Steps, long Drafted, long Kept);

record MixResult(double TtftMed, double TtftP99, double ItlMed, double ItlP99, double ItlMax, double LongTtft, double GenTps, double AllTps, long Steps);

sealed class Args
{
    readonly Dictionary<string, string> _v = new();
    public static Args Parse(string[] a)
    {
        var r = new Args();
        for (int i = 0; i + 1 < a.Length; i += 2) r._v[a[i]] = a[i + 1];
        return r;
    }
    public string Get(string k, string d) => _v.TryGetValue(k, out var v) ? v : d;
}
