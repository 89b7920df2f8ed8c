using System.Diagnostics;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Cli;

/// <summary>
/// llama-bench's two tests on Cria: pp = one P-token batch (logits for the last row only), tg = N single-token decodes,
/// each starting from a cache that holds the depth's D tokens (llama-bench's -d; none by default). Tokens are
/// synthetic (fixed seed); no tokenization, no sampling.
/// Shared by <c>cria bench</c> and the side-by-side runner in <c>bench/Cria.Bench</c> (linked there).
/// </summary>
public sealed class CriaBenchEngine : IDisposable
{
    public LlamaModel Model { get; }
    public InferenceContext Context { get; }
    readonly Batch _batch;
    readonly int[] _promptTokens;
    readonly int[] _genTokens;

    readonly int _depth;
    readonly int[] _depthTokens;

    /// <summary><paramref name="depth"/>: tokens already in the cache when pp and tg start (llama-bench's -d);
    /// <paramref name="configure"/> adds KV-cache and RoPE settings.</summary>
    public CriaBenchEngine(string path, int threads, int promptTokens, int genTokens, int seed = 42, int depth = 0,
                           Func<ContextOptions, ContextOptions>? configure = null)
    {
        Model = LlamaModel.Open(BenchInfo.ResolvePath(path));
        int ctx = Math.Max(1, depth + Math.Max(promptTokens, genTokens));
        int ub = promptTokens > 0 ? promptTokens : 512;
        var options = new ContextOptions { ContextSize = ctx, Threads = threads, MicroBatch = ub };
        Context = new InferenceContext(Model, configure != null ? configure(options) : options);
        _batch = new Batch(Math.Max(ub, 1));
        _depth = depth;
        _depthTokens = SyntheticTokens(Model.Config.VocabSize, depth, seed + 2);
        _promptTokens = SyntheticTokens(Model.Config.VocabSize, promptTokens, seed);
        _genTokens = SyntheticTokens(Model.Config.VocabSize, genTokens, seed + 1);
    }

    /// <summary>Random token ids in [0, vocab) from a fixed seed (llama-bench uses <c>std::rand() % n_vocab</c>).</summary>
    public static int[] SyntheticTokens(int vocab, int n, int seed)
    {
        var r = new Random(seed);
        var t = new int[n];
        for (int i = 0; i < n; i++) t[i] = r.Next(vocab);
        return t;
    }

    /// <summary>Prompt processing: one batch of all prompt tokens, logits for the last row. Returns seconds.</summary>
    public double RunPrompt()
    {
        FillDepth();
        _batch.Clear();
        _batch.AddSequence(_promptTokens, _depth, 0, logitsForLast: true);
        long t0 = Stopwatch.GetTimestamp();
        Context.Decode(_batch);
        long t1 = Stopwatch.GetTimestamp();
        return Stopwatch.GetElapsedTime(t0, t1).TotalSeconds;
    }

    /// <summary>Text generation: N single-token decodes after the depth, logits each step. Returns seconds.</summary>
    public double RunGenerate()
    {
        FillDepth();
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < _genTokens.Length; i++)
        {
            _batch.Clear();
            _batch.Add(_genTokens[i], _depth + i, 0, true);
            Context.Decode(_batch);
        }
        long t1 = Stopwatch.GetTimestamp();
        return Stopwatch.GetElapsedTime(t0, t1).TotalSeconds;
    }

    /// <summary>Leaves exactly the depth's tokens in the cache (untimed): the prefix a previous test left is kept and
    /// cut back to the depth; otherwise (first run, eviction kept fewer, or a cache that cannot go back that far — a
    /// hybrid model's windows, KIVI's ring) it is prefilled in micro-batches.</summary>
    void FillDepth()
    {
        int length = Context.Cache.Length(0);
        if (_depth == 0) Context.Cache.Clear();
        else if (length >= _depth && length - _depth <= Context.Cache.MaxRollback) Context.Cache.Truncate(0, _depth);
        else
        {
            Context.Cache.Clear();
            for (int i = 0; i < _depth; i += Context.MicroBatch)
            {
                _batch.Clear();
                int n = Math.Min(Context.MicroBatch, _depth - i);
                _batch.AddSequence(_depthTokens.AsSpan(i, n), i, 0, logitsForLast: i + n == _depth);
                Context.Decode(_batch);
            }
        }
    }

    /// <summary>A llama-bench-like description: "llama 1.1B Q4_K_M"-ish, from the file's metadata.</summary>
    public string TypeName => BenchInfo.FileTypeName(Model);

    public void Dispose()
    {
        Context.Dispose();
        Model.Dispose();
    }
}

/// <summary>Statistics and small helpers for the benchmarks.</summary>
public static class BenchInfo
{
    public static double Mean(IReadOnlyList<double> x) => x.Count == 0 ? double.NaN : x.Average();

    /// <summary>Sample standard deviation (n − 1), as llama-bench reports it.</summary>
    public static double StdDev(IReadOnlyList<double> x)
    {
        if (x.Count < 2) return 0;
        double m = Mean(x), s = 0;
        foreach (var v in x) s += (v - m) * (v - m);
        return Math.Sqrt(s / (x.Count - 1));
    }

    public static double Median(IReadOnlyList<double> x)
    {
        if (x.Count == 0) return double.NaN;
        var s = x.OrderBy(v => v).ToArray();
        int n = s.Length;
        return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    }

    /// <summary>llama.cpp's name of the file type (general.file_type), e.g. Q4_K_M; else the type of ffn_down.</summary>
    public static string FileTypeName(LlamaModel m)
    {
        if (m.File.Metadata.TryGetValue("general.file_type", out var v))
        {
            long ft = Convert.ToInt64(v, System.Globalization.CultureInfo.InvariantCulture);
            string? name = ft switch
            {
                0 => "F32", 1 => "F16", 2 => "Q4_0", 3 => "Q4_1", 7 => "Q8_0", 8 => "Q5_0", 9 => "Q5_1",
                10 => "Q2_K", 11 => "Q3_K_S", 12 => "Q3_K_M", 13 => "Q3_K_L", 14 => "Q4_K_S", 15 => "Q4_K_M",
                16 => "Q5_K_S", 17 => "Q5_K_M", 18 => "Q6_K", 19 => "IQ2_XXS", 20 => "IQ2_XS", 21 => "Q2_K_S", 22 => "IQ3_XS",
                23 => "IQ3_XXS", 24 => "IQ1_S", 25 => "IQ4_NL", 26 => "IQ3_S", 27 => "IQ3_M", 28 => "IQ2_S", 29 => "IQ2_M",
                30 => "IQ4_XS", 31 => "IQ1_M", 32 => "BF16", _ => null,
            };
            if (name != null) return name;
        }
        return m.Layers.Count == 0 ? "?" : (m.Layers[0].Experts is { } e ? e.Gate[0] : m.Layers[0].WGate).Type.ToString();
    }

    public static string ParamsText(LlamaModel m)
    {
        long p = 0;
        foreach (var t in m.File.Tensors) p += t.ElementCount;
        return p >= 1_000_000_000 ? $"{p / 1e9:F2} B" : $"{p / 1e6:F2} M";
    }

    public static long ParamCount(LlamaModel m)
    {
        long p = 0;
        foreach (var t in m.File.Tensors) p += t.ElementCount;
        return p;
    }

    /// <summary>Peak resident set size of this process (VmHWM), bytes; -1 where /proc is missing.</summary>
    public static long PeakRssBytes() => ProcStatus("VmHWM:");

    /// <summary>Current resident set size (VmRSS), bytes; -1 where /proc is missing.</summary>
    public static long RssBytes() => ProcStatus("VmRSS:");

    static long ProcStatus(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    var parts = line[key.Length..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
                }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return -1;
    }

    /// <summary>The file a path names, symbolic links followed (GgufFile sizes a symlink by the link itself).</summary>
    public static string ResolvePath(string path)
    {
        var full = Path.GetFullPath(path);
        return new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
    }

    public static string MiB(long bytes) => bytes < 0 ? "n/a" : $"{bytes / 1048576.0:F1} MiB";
}
