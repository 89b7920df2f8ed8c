using System.Diagnostics;
using System.Text;
using Cria.Cli;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Bench;

/// <summary>
/// llama.cpp through LLamaSharp 0.30.0, set up the way llama-bench runs it: Threads = BatchThreads = T,
/// n_batch = n_ubatch = P, n_ctx = D + max(P, N), flash attention and KV type at the library defaults (auto / F16),
/// LoadMode None (the LLamaSharp default, measured faster than mmap here) unless mmap is asked for.
/// pp = one P-token batch, logits for the last row; tg = N single-token decodes, each followed by llama_synchronize;
/// both start from a cache holding the depth's D tokens (llama-bench -d; filled once, cut back to D before each run).
/// </summary>
sealed class LlamaEngine : IDisposable
{
    static readonly object InitLock = new();
    static bool _initialised;
    public static readonly StringBuilder Log = new();

    /// <summary>Which of LLamaSharp's llama.cpp builds to load (its runtimes/…/native/avx512, avx2, avx, noavx folders);
    /// null: the one LLamaSharp picks for this CPU. Set before the first native call (Cria.Bench --llama-avx).</summary>
    public static AvxLevel? ForceAvx { get; set; }

    /// <summary>The value of --llama-avx.</summary>
    public static AvxLevel ParseAvx(string v) => v switch
    {
        "noavx" or "none" => AvxLevel.None, "avx" => AvxLevel.Avx, "avx2" => AvxLevel.Avx2, "avx512" => AvxLevel.Avx512,
        _ => throw new ArgumentException($"--llama-avx takes noavx, avx, avx2 or avx512, not '{v}'"),
    };

    public LLamaWeights Weights { get; }
    public LLamaContext Context { get; }
    public string Description { get; }
    readonly LLamaBatch _batch = new();
    readonly int[] _prompt, _gen, _depthTokens;
    readonly int _depth, _ubatch;

    /// <summary>Routes llama.cpp's log into <see cref="Log"/> (must run before the first native call).</summary>
    public static void EnsureLoaded()
    {
        lock (InitLock)
        {
            if (_initialised) return;
            NativeLibraryConfig.All.WithLogCallback((lvl, msg) => { lock (Log) { if (Log.Length < 1_000_000) Log.Append(msg); } });
            if (ForceAvx is AvxLevel level) NativeLibraryConfig.All.WithAvx(level);
            NativeApi.llama_empty_call();
            _initialised = true;
        }
    }

    /// <summary>The native library of llama.cpp's build that LLamaSharp loaded for this CPU (avx512/avx2/… folder), for
    /// direct calls into ggml (its quantizer, its vec_dot): the path from /proc/self/maps, loaded again by name.</summary>
    public static nint LoadedLibrary(string file) =>
        System.Runtime.InteropServices.NativeLibrary.Load(LoadedPath(file)
            ?? throw new InvalidOperationException($"{file} is not loaded after LLamaSharp's initialisation"));

    /// <summary>The path of a native library of LLamaSharp's loaded llama.cpp build, from /proc/self/maps; null if none.</summary>
    static string? LoadedPath(string file)
    {
        EnsureLoaded();
        return File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 6 && f[5].EndsWith("/" + file, StringComparison.Ordinal)).Select(f => f[5]).FirstOrDefault();
    }

    /// <summary>The folder of the llama.cpp build in use (e.g. "avx2"), from the path of the loaded libggml-cpu.so.</summary>
    public static string LoadedBuild() =>
        LoadedPath("libggml-cpu.so") is { } path ? Path.GetFileName(Path.GetDirectoryName(path)!) : "unknown";

    public LlamaEngine(string path, int threads, int promptTokens, int genTokens, bool mmap, int vocab, int seed = 42, int depth = 0)
    {
        EnsureLoaded();
        var p = new ModelParams(path)
        {
            ContextSize = (uint)(depth + Math.Max(promptTokens, genTokens)), GpuLayerCount = 0,
            Threads = threads, BatchThreads = threads,
            BatchSize = (uint)promptTokens, UBatchSize = (uint)promptTokens,
            LoadMode = mmap ? LLamaLoadMode.MemoryMap : LLamaLoadMode.None,
        };
        Weights = LLamaWeights.LoadFromFile(p);
        Context = Weights.CreateContext(p);
        if (Context.GenerationThreads != threads || Context.BatchThreads != threads)
            throw new InvalidOperationException($"llama.cpp runs {Context.GenerationThreads}/{Context.BatchThreads} threads, asked for {threads}");
        Description = Weights.NativeHandle.Description;
        // The same synthetic tokens as the Cria side.
        _prompt = CriaBenchEngine.SyntheticTokens(vocab, promptTokens, seed);
        _gen = CriaBenchEngine.SyntheticTokens(vocab, genTokens, seed + 1);
        _depthTokens = CriaBenchEngine.SyntheticTokens(vocab, depth, seed + 2);
        _depth = depth;
        _ubatch = promptTokens;
    }

    /// <summary>Leaves exactly the depth's tokens in the cache (untimed), as <see cref="CriaBenchEngine"/> does.</summary>
    void FillDepth()
    {
        var h = Context.NativeHandle;
        if (_depth == 0) { h.MemoryClear(); return; }
        if (h.MemorySequenceMaxPosition(LLamaSeqId.Zero).Value >= _depth - 1)
        {
            h.MemorySequenceRemove(LLamaSeqId.Zero, (LLamaPos)_depth, (LLamaPos)(-1));
            if (h.MemorySequenceMaxPosition(LLamaSeqId.Zero).Value != _depth - 1)
                throw new InvalidOperationException("llama.cpp did not cut the cache back to the depth");
            return;
        }
        h.MemoryClear();
        for (int i = 0; i < _depth; i += _ubatch)
        {
            int n = Math.Min(_ubatch, _depth - i);
            _batch.Clear();
            for (int j = 0; j < n; j++) _batch.Add((LLamaToken)_depthTokens[i + j], i + j, LLamaSeqId.Zero, i + j == _depth - 1);
            if (Context.Decode(_batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
        }
        h.Synchronize();
    }

    public double RunPrompt()
    {
        FillDepth();
        _batch.Clear();
        for (int i = 0; i < _prompt.Length; i++) _batch.Add((LLamaToken)_prompt[i], _depth + i, LLamaSeqId.Zero, i == _prompt.Length - 1);
        long t0 = Stopwatch.GetTimestamp();
        if (Context.Decode(_batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
        Context.NativeHandle.Synchronize();
        return Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }

    public double RunGenerate()
    {
        FillDepth();
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < _gen.Length; i++)
        {
            _batch.Clear();
            _batch.Add((LLamaToken)_gen[i], _depth + i, LLamaSeqId.Zero, true);
            if (Context.Decode(_batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
            Context.NativeHandle.Synchronize();
        }
        return Stopwatch.GetElapsedTime(t0).TotalSeconds;
    }

    public void Dispose()
    {
        Context.Dispose();
        Weights.Dispose();
    }
}
