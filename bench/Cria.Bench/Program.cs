using System.Diagnostics;
using System.Globalization;
using Cria.Bench;
using Cria.Cli;

// Side-by-side runner: Cria and llama.cpp (LLamaSharp 0.30.0) on the same GGUF, same thread count, alternating.
//
//   dotnet run --project bench/Cria.Bench -c Release -- --model FILE [--threads 2] [--rounds 3] [--reps 5]
//        [--pp 512] [--tg 128] [--depth 0] [--llama-mmap] [--llama-avx avx2] [--no-rss] [--probe] [--summary FILE.tsv]
//
// --llama-avx noavx|avx|avx2|avx512: which of LLamaSharp's llama.cpp builds to load (default: the one it picks for this
// CPU). To compare the AVX2 code paths of both engines on an AVX-512 machine, run with DOTNET_EnableAVX512=0
// DOTNET_EnableAVXVNNI=0 (Cria's ISA) and --llama-avx avx2 (neither build of llama.cpp here uses VNNI).
//
// --depth D: both tests start with D tokens already in the KV cache (llama-bench's -d), filled untimed.
//
// Speed: both engines live in this one process and take turns: round r runs one engine's pp reps then its tg reps,
// then the other's; who goes first swaps every round, so slow phases of this shared machine hit both alike.
// (Alternating at every repetition instead was tried in session 9 and dropped: llama.cpp's decode runs that came right
// after a Cria run read slower than after its own — Q8_0 tg128 −15–25 %, and still −8 % against Cria's −2 % after the
// idle-pool fix — which would have inflated the ratio; docs/benchmarks.md, "Session 9".) --probe prints the machine's read bandwidth (ReadProbe) before each turn.
// Memory: VmHWM is per process, so with both engines loaded it cannot tell them apart. After the timed rounds the
// runner starts itself once per engine (--engine cria|llama): each child loads one engine, runs one tg then one pp,
// and reports its own peak RSS (after load, after tg, after pp).

var ci = CultureInfo.InvariantCulture;
CultureInfo.DefaultThreadCurrentCulture = ci;
CultureInfo.CurrentCulture = ci;
if (args.Length > 0 && args[0] == "quant-table") return QuantTable.Run(args[1..]);
if (args.Length > 0 && args[0] == "quant-time") return QuantTable.Time(args[1..]);
if (args.Length > 0 && args[0] == "lattice-time") return GgmlQuantize.Time(args[1..]);
if (args.Length > 0 && args[0] == "lattice-micro") return GgmlQuantize.Micro(args[1..]);
if (args.Length > 0 && args[0] == "quant-svg") return QuantTable.SvgFromTsv(args[1..]);
if (args.Length > 0 && args[0] == "imatrix-probe") return ImatrixProbe.Run(args[1..]);
if (args.Length > 0 && args[0] == "outlier-model") return OutlierModel.Run(args[1..]);
if (args.Length > 0 && args[0] == "imatrix-placebo") return ImatrixProbe.Placebo(args[1..]);
if (args.Length > 0 && args[0] == "kernel-micro") return KernelMicro.Run(args[1..]);
if (args.Length > 0 && args[0] == "attn-micro") return AttnMicro.Run(args[1..]);
if (args.Length > 0 && args[0] == "gemm-micro") return GemmMicro.Run(args[1..]);
if (args.Length > 0 && args[0] == "idle-cpu") return IdleCpu.Run(args[1..]);
if (args.Length > 0 && args[0] == "quant-micro") return ImatrixProbe.Micro(args[1..]);
if (args.Length > 0 && args[0] == "spec") return SpecBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "best-of") return await BestOfBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "grammar") return GrammarBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "sampling") return SamplingBench.Run(args[1..]);
if (args.Length > 0 && args[0] == "ggml-quantize") return GgmlQuantize.Run(args[1..]);

string? model = null, summary = null, engineOnly = null;
int threads = 2, rounds = 3, reps = 5, pp = 512, tg = 128, depth = 0;
bool mmap = false, rss = true, probe = false;
for (int i = 0; i < args.Length; i++)
{
    string a = args[i];
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
    switch (a)
    {
        case "--model": case "-m": model = Next(); break;
        case "--threads": case "-t": threads = int.Parse(Next(), ci); break;
        case "--rounds": rounds = int.Parse(Next(), ci); break;
        case "--reps": case "-r": reps = int.Parse(Next(), ci); break;
        case "--pp": case "-p": pp = int.Parse(Next(), ci); break;
        case "--tg": case "-n": tg = int.Parse(Next(), ci); break;
        case "--depth": case "-d": depth = int.Parse(Next(), ci); break;
        case "--llama-mmap": mmap = true; break;
        case "--llama-avx":
            LlamaEngine.ForceAvx = LlamaEngine.ParseAvx(Next());
            break;
        case "--no-rss": rss = false; break;
        case "--probe": probe = true; break;
        case "--summary": summary = Next(); break;
        case "--engine": engineOnly = Next(); break;
        case "--help": case "-h":
            Console.WriteLine("usage: Cria.Bench --model FILE [--threads 2] [--rounds 3] [--reps 5] [--pp 512] [--tg 128] [--depth 0] [--llama-mmap] [--llama-avx noavx|avx|avx2|avx512] [--no-rss] [--probe] [--summary FILE.tsv] [--engine cria|llama]");
            return 0;
        default: Console.Error.WriteLine($"unknown argument '{a}' (try --help)"); return 2;
    }
}
if (model == null) { Console.Error.WriteLine("--model FILE is required"); return 2; }
if (!File.Exists(model)) { Console.Error.WriteLine($"no such file: {model}"); return 2; }
model = BenchInfo.ResolvePath(model);
if (threads < 1 || rounds < 1 || reps < 1 || pp < 1 || tg < 1) { Console.Error.WriteLine("threads, rounds, reps, pp and tg must be ≥ 1"); return 2; }
if (depth < 0) { Console.Error.WriteLine("depth must be ≥ 0"); return 2; }
string at = depth > 0 ? $" @ d{depth}" : "";

if (engineOnly != null) return ChildMain(engineOnly);

// ---------------- header ----------------
var o = Console.Out;
o.WriteLine($"Cria vs llama.cpp — {Path.GetFileName(model)}, {threads} threads, pp{pp} / tg{tg}{at}, {rounds} rounds × {reps} reps, llama.cpp load mode {(mmap ? "mmap" : "none")}");
o.WriteLine($"machine: {CpuName()}, {Environment.ProcessorCount} logical CPUs, {TotalMemGiB():F1} GiB; .NET {Environment.Version}; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; load avg {LoadAvg()}");

long t0 = Stopwatch.GetTimestamp();
var cria = new CriaBenchEngine(model, threads, pp, tg, depth: depth);
double criaLoad = Stopwatch.GetElapsedTime(t0).TotalSeconds;
t0 = Stopwatch.GetTimestamp();
var llama = new LlamaEngine(model, threads, pp, tg, mmap, cria.Model.Config.VocabSize, depth: depth);
double llamaLoad = Stopwatch.GetElapsedTime(t0).TotalSeconds;
string type = cria.TypeName;
long fileBytes = cria.Model.File.FileSize, wbpt = cria.Model.WeightBytesPerToken;
long kvBytes = (long)(cria.Context.Cache.BytesPerToken * (depth + Math.Max(pp, tg)));
o.WriteLine($"model: {type}, {BenchInfo.ParamsText(cria.Model)} params, file {fileBytes / 1e6:F1} MB, weight bytes per token {wbpt / 1e6:F1} MB");
o.WriteLine($"load: Cria {criaLoad:F2} s, llama.cpp {llamaLoad:F2} s ({llama.Description}); llama.cpp settings: {LlamaSettings()}");
o.WriteLine($"instruction sets: Cria {CriaIsa()}; llama.cpp build {LlamaEngine.LoadedBuild()}");

// One warm-up run of each test per engine (JIT tiering, page faults, llama.cpp's first-decode setup); each turn below
// starts with one more untimed tg run.
cria.RunPrompt(); cria.RunGenerate();
llama.RunPrompt(); llama.RunGenerate();

using var readProbe = probe ? new ReadProbe() : null;
var samples = new Dictionary<(string Engine, string Test), List<double>>();
foreach (var e in new[] { "cria", "llama" }) foreach (var t in new[] { "pp", "tg" }) samples[(e, t)] = new();
var roundMedians = new List<(string Engine, double Pp, double Tg)>();
void Measure(string engine)
{
    Func<double> runPp = engine == "cria" ? cria.RunPrompt : llama.RunPrompt;
    Func<double> runTg = engine == "cria" ? cria.RunGenerate : llama.RunGenerate;
    var ppR = new List<double>(); var tgR = new List<double>();
    // An untimed tg run first, at every turn: on this VM a DAMON "pageout" scheme evicts file pages left untouched
    // for 60 s, so during the other engine's turn Cria's weights (a file mapping) can be paged out while llama.cpp's
    // (an anonymous copy) stay; the warm-up faults them back for both alike before anything is timed.
    // Cria's turn also starts as a fresh Cria load would: if that eviction left the weights' page cache in small
    // folios, MakeResident re-reads the file so that it is mapped in 2 MiB pages again (untimed; what `cria` does at
    // every model load, see MappedFileHints). The turn's line reports how much of the file it found so.
    string pages = "";
    if (readProbe != null) unsafe { o.WriteLine($"  {readProbe.Measure(cria.Model.File.BasePointer, cria.Model.File.FileSize, threads)}"); }
    if (engine == "cria")
    {
        long before = cria.Model.File.HugePageBytes, after = cria.Model.File.MakeResident();
        if (after >= 0) pages = $"   2 MiB-mapped: {before >> 20} → {after >> 20} MiB";
    }
    runTg();
    for (int i = 0; i < reps; i++) ppR.Add(pp / runPp());
    for (int i = 0; i < reps; i++) tgR.Add(tg / runTg());
    samples[(engine, "pp")].AddRange(ppR); samples[(engine, "tg")].AddRange(tgR);
    roundMedians.Add((engine, BenchInfo.Median(ppR), BenchInfo.Median(tgR)));
    o.WriteLine($"  {Name(engine),-9} pp{pp} {Fmt(ppR)}   tg{tg} {Fmt(tgR)}{pages}");
    if (readProbe != null) o.WriteLine($"    tg reps: {string.Join(", ", tgR.Select(x => x.ToString("F2", ci)))}");
}
for (int r = 0; r < rounds; r++)
{
    o.WriteLine($"round {r + 1}/{rounds} (load avg {LoadAvg()})");
    var order = r % 2 == 0 ? new[] { "cria", "llama" } : new[] { "llama", "cria" };
    foreach (var e in order) Measure(e);
}
long sharedPeak = BenchInfo.PeakRssBytes();
cria.Dispose();
llama.Dispose();

// ---------------- peak RSS of each engine alone (child processes) ----------------
var peak = new Dictionary<string, string>();
if (rss)
    foreach (var e in new[] { "cria", "llama" })
        peak[e] = RunChild(e) ?? "n/a";

// ---------------- report ----------------
o.WriteLine();
o.WriteLine($"| engine    | model | type | threads | pp{pp} t/s median (min–max) | tg{tg} t/s median (min–max) | tg{tg} mean ± sd | peak RSS alone (after tg / after pp) |");
o.WriteLine("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |");
foreach (var e in new[] { "cria", "llama" })
{
    var p = samples[(e, "pp")]; var g = samples[(e, "tg")];
    o.WriteLine($"| {Name(e),-9} | {Path.GetFileName(model)} | {type} | {threads} | {Med(p)} | {Med(g)} | {BenchInfo.Mean(g):F2} ± {BenchInfo.StdDev(g):F2} | {peak.GetValueOrDefault(e, "not measured")} |");
}
double ppRatio = BenchInfo.Median(samples[("cria", "pp")]) / BenchInfo.Median(samples[("llama", "pp")]);
double tgRatio = BenchInfo.Median(samples[("cria", "tg")]) / BenchInfo.Median(samples[("llama", "tg")]);
o.WriteLine();
o.WriteLine($"samples per cell: {rounds * reps} ({rounds} rounds × {reps} reps); peak RSS of this process with both engines loaded: {BenchInfo.MiB(sharedPeak)}");
o.WriteLine($"RSS budget of the issue (file + KV cache of {depth + Math.Max(pp, tg)} tokens + 10%): {(fileBytes + kvBytes) * 1.1 / 1048576:F1} MiB");
double tgCria = BenchInfo.Median(samples[("cria", "tg")]), tgLlama = BenchInfo.Median(samples[("llama", "tg")]);
o.WriteLine($"effective weight read rate in tg{tg}: Cria {wbpt * tgCria / 1e9:F1} GB/s, llama.cpp {wbpt * tgLlama / 1e9:F1} GB/s");
o.WriteLine($"Cria / llama.cpp (medians){at}: pp{pp} {ppRatio:F2}, tg{tg} {tgRatio:F2}");
// Paired per round (the two engines' blocks of one round are adjacent in time): a check on load drifting between rounds.
var perRound = new List<string>();
for (int r = 0; r + 1 < roundMedians.Count; r += 2)
{
    var a = roundMedians[r].Engine == "cria" ? roundMedians[r] : roundMedians[r + 1];
    var b = roundMedians[r].Engine == "cria" ? roundMedians[r + 1] : roundMedians[r];
    perRound.Add($"r{r / 2 + 1} pp {a.Pp / b.Pp:F2} tg {a.Tg / b.Tg:F2}");
}
o.WriteLine($"per-round ratios (Cria round median / llama.cpp round median): {string.Join("; ", perRound)}");
if (summary != null)
{
    bool header = !File.Exists(summary);
    using var w = File.AppendText(summary);
    if (header) w.WriteLine("model\ttype\tthreads\tpp\ttg\tcria_pp\tllama_pp\tpp_ratio\tcria_tg\tllama_tg\ttg_ratio\tcria_rss\tllama_rss\twbpt_mb\tsamples");
    w.WriteLine(string.Join('\t', Path.GetFileName(model), type, threads, pp, tg,
        BenchInfo.Median(samples[("cria", "pp")]).ToString("F2", ci), BenchInfo.Median(samples[("llama", "pp")]).ToString("F2", ci), ppRatio.ToString("F2", ci),
        tgCria.ToString("F2", ci), tgLlama.ToString("F2", ci), tgRatio.ToString("F2", ci),
        peak.GetValueOrDefault("cria", "n/a"), peak.GetValueOrDefault("llama", "n/a"), (wbpt / 1e6).ToString("F1", ci), rounds * reps));
}
o.WriteLine($"ratio tg{tg}={tgRatio:F2} pp{pp}={ppRatio:F2}");
return 0;

// ---------------- helpers ----------------

int ChildMain(string engine)
{
    // One engine alone: load, one tg, one pp; peak RSS after each phase (speed is not measured here).
    long afterLoad, afterTg, afterPp;
    if (engine == "cria")
    {
        using var c = new CriaBenchEngine(model, threads, pp, tg, depth: depth);
        afterLoad = BenchInfo.PeakRssBytes();
        c.RunGenerate();
        afterTg = BenchInfo.PeakRssBytes();
        c.RunPrompt();
        afterPp = BenchInfo.PeakRssBytes();
    }
    else if (engine == "llama")
    {
        int vocab;
        using (var m = Cria.Models.LlamaModel.Open(model)) vocab = m.Config.VocabSize; // maps only; unmapped before llama.cpp loads
        using var l = new LlamaEngine(model, threads, pp, tg, mmap, vocab, depth: depth);
        afterLoad = BenchInfo.PeakRssBytes();
        l.RunGenerate();
        afterTg = BenchInfo.PeakRssBytes();
        l.RunPrompt();
        afterPp = BenchInfo.PeakRssBytes();
    }
    else { Console.Error.WriteLine($"--engine must be cria or llama, not '{engine}'"); return 2; }
    Console.WriteLine($"peak-rss engine={engine} load={afterLoad} tg={afterTg} pp={afterPp}");
    return 0;
}

string? RunChild(string engine)
{
    var psi = new ProcessStartInfo { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
    string self = Environment.ProcessPath!;
    psi.FileName = self;
    if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(LlamaEngine).Assembly.Location);
    foreach (var a in new[] { "--model", model!, "--threads", threads.ToString(ci), "--pp", pp.ToString(ci), "--tg", tg.ToString(ci), "--depth", depth.ToString(ci), "--engine", engine })
        psi.ArgumentList.Add(a);
    if (mmap) psi.ArgumentList.Add("--llama-mmap");
    if (LlamaEngine.ForceAvx is { } avx) { psi.ArgumentList.Add("--llama-avx"); psi.ArgumentList.Add(avx switch { LLama.Native.AvxLevel.None => "noavx", var v => v.ToString().ToLowerInvariant() }); }
    using var p = Process.Start(psi)!;
    var errTask = p.StandardError.ReadToEndAsync();
    string stdout = p.StandardOutput.ReadToEnd();
    p.WaitForExit();
    string err = errTask.Result;
    foreach (var line in stdout.Split('\n'))
        if (line.StartsWith("peak-rss ", StringComparison.Ordinal))
        {
            var kv = line.Split(' ').Skip(1).Select(s => s.Split('=')).ToDictionary(s => s[0], s => s[1]);
            long tgB = long.Parse(kv["tg"], ci), ppB = long.Parse(kv["pp"], ci);
            return $"{tgB / 1048576.0:F0} / {ppB / 1048576.0:F0} MiB";
        }
    Console.Error.WriteLine($"child {engine} failed (exit {p.ExitCode}): {err.Trim()}");
    return null;
}

string Fmt(List<double> x) => $"median {BenchInfo.Median(x),7:F2} (min {x.Min():F2}, max {x.Max():F2})";
string Med(List<double> x) => $"{BenchInfo.Median(x):F2} ({x.Min():F2}–{x.Max():F2})";
static string Name(string e) => e == "cria" ? "Cria" : "llama.cpp";

static string CpuName()
{
    try
    {
        foreach (var l in File.ReadLines("/proc/cpuinfo"))
            if (l.StartsWith("model name", StringComparison.Ordinal)) return l[(l.IndexOf(':') + 1)..].Trim();
    }
    catch (IOException) { }
    return System.Runtime.InteropServices.RuntimeInformation.OSArchitecture.ToString();
}

static string CriaIsa()
{
    var s = new List<string>();
    if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported) s.Add("AVX-512");
    if (System.Runtime.Intrinsics.X86.Avx512Vbmi.IsSupported) s.Add("VBMI");
    if (System.Runtime.Intrinsics.X86.Avx2.IsSupported) s.Add("AVX2");
    if (System.Runtime.Intrinsics.X86.AvxVnni.IsSupported) s.Add("AVX-VNNI");
    if (System.Runtime.Intrinsics.X86.Fma.IsSupported) s.Add("FMA");
    return s.Count == 0 ? "none of AVX2/AVX-512" : string.Join(" ", s);
}

static double TotalMemGiB() => GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / 1073741824.0;

static string LoadAvg()
{
    try { return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
    catch (IOException) { return "n/a"; }
}

static string LlamaSettings()
{
    string log;
    lock (LlamaEngine.Log) log = LlamaEngine.Log.ToString();
    var keys = new[] { "n_ctx ", "n_batch ", "n_ubatch ", "flash_attn ", "load_mode", "type_k" };
    var found = new List<string>();
    foreach (var raw in log.Split('\n'))
    {
        var line = raw.Trim();
        foreach (var k in keys)
        {
            int at = line.IndexOf(k, StringComparison.Ordinal);
            if (at < 0 || !line.Contains('=') || found.Count >= 12) continue;
            var s = line[at..].TrimEnd(')').Trim();
            s = string.Join(' ', s.Split(' ', StringSplitOptions.RemoveEmptyEntries));
            if (!found.Contains(s)) found.Add(s);
        }
    }
    return found.Count == 0 ? "(no log)" : string.Join(", ", found);
}
