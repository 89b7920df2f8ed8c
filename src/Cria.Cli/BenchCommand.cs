using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Cria.Inference;

namespace Cria.Cli;

/// <summary>
/// <c>cria bench MODEL [-p 512] [-n 128] [-r 5] [-t THREADS] [--json]</c>: llama-bench's pp and tg tests on Cria.
/// One warm-up run per test, then R timed repetitions; tokens/s reported as mean ± sample sd.
/// </summary>
static class BenchCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "GGUF model file" };
        var prompt = new Option<int>("--n-prompt", "-p") { Description = "prompt tokens of the pp test (0 = skip)", DefaultValueFactory = _ => 512 };
        var gen = new Option<int>("--n-gen", "-n") { Description = "generated tokens of the tg test (0 = skip)", DefaultValueFactory = _ => 128 };
        var reps = new Option<int>("--repetitions", "-r") { Description = "timed repetitions of each test", DefaultValueFactory = _ => 5 };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (0 = all cores)", DefaultValueFactory = _ => 0 };
        var json = new Option<bool>("--json") { Description = "also write one JSON object per test to stdout (after the table)" };
        var depth = new Option<int>("--n-depth", "-d") { Description = "tokens already in the KV cache when the pp and tg tests start (llama-bench -d)" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "KV cache tokens (default: max(p, d) + n; with --kv-evict a budget-sized cache suffices)" };
        var ubatch = new Option<int>("--ubatch-size", "-ub") { Description = "rows per forward step when filling the depth (default: p, else 512)" };
        var cmd = new Command("bench", "measure prompt processing (pp) and generation (tg) speed, llama-bench style") { model, prompt, gen, reps, threads, json, depth, ctx, ubatch };
        var kv = new KvCliOptions();
        kv.AddTo(cmd);
        cmd.SetAction(r =>
        {
            ContextOptions Configure(ContextOptions o, string? type) => kv.Apply(r, o with
            {
                ContextSize = r.GetValue(ctx) > 0 ? r.GetValue(ctx) : o.ContextSize,
                MicroBatch = r.GetValue(ubatch) > 0 ? r.GetValue(ubatch) : o.MicroBatch,
            }, type);
            var types = kv.TypeList(r);
            if (types.Length > 1)
                return CompareKvTypes(r.GetValue(model)!, types, r.GetValue(gen), r.GetValue(reps), r.GetValue(threads), r.GetValue(depth), Configure);
            return Run(r.GetValue(model)!, r.GetValue(prompt), r.GetValue(gen), r.GetValue(reps), r.GetValue(threads), r.GetValue(json),
                       r.GetValue(depth), o => Configure(o, null));
        });
        return cmd;
    }

    /// <summary>tg at a depth for several KV types in one process, repetitions interleaved (type A, B, …, A, B, …) so
    /// that a busy machine's drift hits every type alike; prints mean and median tokens/s per type.</summary>
    static int CompareKvTypes(string path, string[] types, int n, int reps, int threads, int depth,
                              Func<ContextOptions, string?, ContextOptions> configure)
    {
        if (n < 1) throw new CriaException("need -n ≥ 1");
        if (threads <= 0) threads = Environment.ProcessorCount;
        var ci = CultureInfo.InvariantCulture;
        var engines = types.Select(t => new CriaBenchEngine(path, threads, 0, n, depth: depth, configure: o => configure(o, t))).ToArray();
        try
        {
            foreach (var e in engines) e.RunGenerate(); // fills the depth once, warm-up
            var tps = types.Select(_ => new List<double>()).ToArray();
            for (int i = 0; i < reps; i++)
                for (int k = 0; k < engines.Length; k++) tps[k].Add(n / engines[k].RunGenerate());
            for (int k = 0; k < engines.Length; k++)
                Console.Out.WriteLine(string.Create(ci, $"tg{n} @ d{depth} {types[k],-6} {KvCliOptions.Describe(engines[k].Context)}: mean {BenchInfo.Mean(tps[k]):F2} ± {BenchInfo.StdDev(tps[k]):F2}, median {BenchInfo.Median(tps[k]):F2} tok/s"));
        }
        finally
        {
            foreach (var e in engines) e.Dispose();
        }
        return 0;
    }

    sealed record TestResult(string Name, int NPrompt, int NGen, double[] Seconds, double[] TokensPerSecond);

    static int Run(string path, int p, int n, int reps, int threads, bool json, int depth = 0, Func<Cria.Inference.ContextOptions, Cria.Inference.ContextOptions>? configure = null)
    {
        if (p < 0 || n < 0 || (p == 0 && n == 0)) throw new CriaException("need -p > 0 or -n > 0");
        if (reps < 1) throw new CriaException("need -r ≥ 1");
        if (threads <= 0) threads = Environment.ProcessorCount;
        var ci = CultureInfo.InvariantCulture;
        long loadStart = System.Diagnostics.Stopwatch.GetTimestamp();
        using var e = new CriaBenchEngine(path, threads, p, n, depth: depth, configure: configure);
        double loadS = System.Diagnostics.Stopwatch.GetElapsedTime(loadStart).TotalSeconds;
        var m = e.Model;
        long fileBytes = m.File.FileSize;
        long wbpt = m.WeightBytesPerToken;

        var o = Console.Out;
        o.WriteLine(string.Create(ci, $"model: {path} ({fileBytes / 1048576.0:F2} MiB, {BenchInfo.ParamsText(m)} params, {e.TypeName}), load {loadS:F2} s"));
        o.WriteLine(string.Create(ci, $"weight bytes per token: {wbpt:N0} ({wbpt / 1e6:F1} MB); {KvCliOptions.Describe(e.Context)}, context {e.Context.Cache.Capacity}"));
        o.WriteLine();
        o.WriteLine($"| {"model",-30} | {"size",10} | {"params",10} | {"backend",-10} | {"threads",7} | {"test",13} | {"t/s",20} |");
        o.WriteLine($"| {new string('-', 30)} | {new string('-', 9)}: | {new string('-', 9)}: | {new string('-', 10)} | {new string('-', 6)}: | {new string('-', 12)}: | {new string('-', 19)}: |");

        var results = new List<TestResult>();
        string desc = $"{m.Config.Architecture} {BenchInfo.ParamsText(m).Replace(" ", "")} {e.TypeName}";
        if (desc.Length > 30) desc = desc[..30];
        void Test(string name, int np, int ng, Func<double> run, int tokens)
        {
            run(); // warm-up
            var secs = new double[reps];
            for (int i = 0; i < reps; i++) secs[i] = run();
            var tps = secs.Select(s => tokens / s).ToArray();
            var res = new TestResult(name, np, ng, secs, tps);
            results.Add(res);
            string ts = string.Create(ci, $"{BenchInfo.Mean(tps):F2} ± {BenchInfo.StdDev(tps):F2}");
            o.WriteLine(string.Create(ci, $"| {desc,-30} | {fileBytes / 1048576.0,6:F2} MiB | {BenchInfo.ParamsText(m),10} | {"Cria CPU",-10} | {threads,7} | {name,13} | {ts,20} |"));
        }
        if (p > 0) Test(depth > 0 ? $"pp{p} @ d{depth}" : $"pp{p}", p, 0, e.RunPrompt, p);
        if (n > 0) Test(depth > 0 ? $"tg{n} @ d{depth}" : $"tg{n}", 0, n, e.RunGenerate, n);
        o.WriteLine();
        o.WriteLine($"peak RSS: {BenchInfo.MiB(BenchInfo.PeakRssBytes())}; KV blocks in use {e.Context.Cache.UsedBlocks} of {e.Context.Cache.BlockCount} ({e.Context.Cache.Slots(0)} tokens held, next position {e.Context.Cache.Length(0)})");
        if (n > 0)
        {
            var tg = results[^1];
            double gbps = wbpt * BenchInfo.Mean(tg.TokensPerSecond) / 1e9;
            o.WriteLine(string.Create(ci, $"effective weight read rate during tg{n}: {gbps:F1} GB/s"));
        }
        long huge = m.File.HugePageBytes;
        if (huge >= 0) o.WriteLine(string.Create(ci, $"file mapped in 2 MiB pages: {huge / 1048576.0:F0} of {fileBytes / 1048576.0:F0} MiB"));

        if (json)
        {
            foreach (var r in results)
            {
                var obj = new Dictionary<string, object?>
                {
                    ["engine"] = "cria", ["model_filename"] = path, ["model_type"] = desc, ["model_size"] = fileBytes,
                    ["model_n_params"] = BenchInfo.ParamCount(m), ["weight_bytes_per_token"] = wbpt, ["n_threads"] = threads,
                    ["n_prompt"] = r.NPrompt, ["n_gen"] = r.NGen, ["n_depth"] = depth, ["kv_type"] = e.Context.Cache.Format.ToString(), ["test"] = r.Name, ["repetitions"] = reps,
                    ["avg_ns"] = (long)(BenchInfo.Mean(r.Seconds) * 1e9), ["stddev_ns"] = (long)(BenchInfo.StdDev(r.Seconds) * 1e9),
                    ["avg_ts"] = BenchInfo.Mean(r.TokensPerSecond), ["stddev_ts"] = BenchInfo.StdDev(r.TokensPerSecond),
                    ["median_ts"] = BenchInfo.Median(r.TokensPerSecond),
                    ["samples_ns"] = r.Seconds.Select(s => (long)(s * 1e9)).ToArray(), ["samples_ts"] = r.TokensPerSecond,
                    ["peak_rss_bytes"] = BenchInfo.PeakRssBytes(),
                };
                o.WriteLine(JsonSerializer.Serialize(obj));
            }
        }
        return 0;
    }
}
