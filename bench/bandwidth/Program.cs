using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

// Machine limits for the roofline in docs/benchmarks.md.
//   dotnet run --project bench/bandwidth -c Release [-- --gib 1 --runs 10 --threads 1,2 --huge]
// --huge: the buffer is 2 MiB-aligned and marked MADV_HUGEPAGE (Linux), so it sits in 2 MiB pages under THP "madvise".
// Read bandwidth: every thread sums its contiguous slice of one 1 GiB buffer with Vector512 (Vector256 where AVX-512
// is missing), 8 independent accumulators; one run = all threads released together, timed until the last finishes;
// best (and mean) of N runs, GB = 1e9 bytes. FP32 peak: each thread runs 12 independent chains of vector FMAs in
// registers; FLOP = 2 × lanes × chains × iterations.

CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
long gib = 1; int runs = 10; int[] threadCounts = [1, 2]; bool huge = false;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--gib": gib = long.Parse(args[++i]); break;
        case "--runs": runs = int.Parse(args[++i]); break;
        case "--threads": threadCounts = args[++i].Split(',').Select(int.Parse).ToArray(); break;
        case "--huge": huge = true; break;
        default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
    }
}

string isa = Vector512.IsHardwareAccelerated ? "Vector512" : Vector256.IsHardwareAccelerated ? "Vector256" : "Vector128";
Console.WriteLine($"machine: {Environment.ProcessorCount} logical CPUs, {isa}, .NET {Environment.Version}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, load avg {LoadAvg()}");

long bytes = gib << 30;
unsafe
{
    var buf = (float*)NativeMemory.AlignedAlloc((nuint)bytes, huge ? (nuint)(2 << 20) : 4096);
    if (huge && OperatingSystem.IsLinux()) Console.WriteLine($"madvise(MADV_HUGEPAGE) = {Madvise((nint)buf, (nuint)bytes, 14)}");
    try
    {
        // Touch every page (and make the sum non-trivial) with all threads, so pages are resident before timing.
        long n = bytes / sizeof(float);
        Parallel.For(0, 64, c => { long s = n * c / 64, e = n * (c + 1) / 64; for (long j = s; j < e; j++) buf[j] = (j & 1023) * 1e-3f; });
        foreach (int t in threadCounts)
        {
            var (best, mean) = Measure(t, runs, () => RunRead(buf, n, t));
            Console.WriteLine($"read bandwidth, {t} thread{(t > 1 ? "s" : "")}: best {bytes / best / 1e9:F1} GB/s, mean {bytes / mean / 1e9:F1} GB/s ({gib} GiB buffer{(huge ? " in 2 MiB pages" : "")}, {isa} sum, best of {runs})");
        }
    }
    finally { NativeMemory.AlignedFree(buf); }
}

const long FmaIters = 20_000_000;
foreach (int t in threadCounts)
{
    int lanes = Vector512.IsHardwareAccelerated ? 16 : 8;
    double flop = 2.0 * lanes * 12 * FmaIters * t;
    var (best, mean) = Measure(t, Math.Max(3, runs / 2), () => RunFma(t));
    Console.WriteLine($"fp32 FMA peak, {t} thread{(t > 1 ? "s" : "")}: best {flop / best / 1e9:F1} GFLOP/s, mean {flop / mean / 1e9:F1} GFLOP/s ({isa} FMA, 12 chains in registers)");
}
return 0;

[DllImport("libc", EntryPoint = "madvise")] static extern int Madvise(nint addr, nuint length, int advice);

static (double Best, double Mean) Measure(int threads, int runs, Func<double> run)
{
    run(); // warm-up (JIT, thread start)
    double best = double.MaxValue, sum = 0;
    for (int r = 0; r < runs; r++) { double s = run(); best = Math.Min(best, s); sum += s; }
    return (best, sum / runs);
}

static unsafe double RunRead(float* buf, long n, int threads)
{
    float sink = 0;
    return RunThreads(threads, w =>
    {
        long s = n * w / threads, e = n * (w + 1) / threads;
        float r = SumSlice(buf + s, e - s);
        lock (Lock) sink += r;
    });
}

static double RunFma(int threads) => RunThreads(threads, _ => { if (FmaChains(FmaIters) == 12345.678f) Console.Write(""); });

/// <summary>Starts the threads, releases them together, returns seconds until the last one ends.</summary>
static double RunThreads(int threads, Action<int> body)
{
    using var ready = new CountdownEvent(threads);
    using var go = new ManualResetEventSlim(false);
    var ts = new Thread[threads];
    for (int w = 0; w < threads; w++)
    {
        int id = w;
        ts[w] = new Thread(() => { ready.Signal(); go.Wait(); body(id); }) { IsBackground = true };
        ts[w].Start();
    }
    ready.Wait();
    long t0 = Stopwatch.GetTimestamp();
    go.Set();
    foreach (var th in ts) th.Join();
    return Stopwatch.GetElapsedTime(t0).TotalSeconds;
}

[MethodImpl(MethodImplOptions.AggressiveOptimization)]
static unsafe float SumSlice(float* p, long n)
{
    if (Vector512.IsHardwareAccelerated)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        long i = 0;
        for (; i + 128 <= n; i += 128)
        {
            a0 += Vector512.LoadAligned(p + i); a1 += Vector512.LoadAligned(p + i + 16);
            a2 += Vector512.LoadAligned(p + i + 32); a3 += Vector512.LoadAligned(p + i + 48);
            a4 += Vector512.LoadAligned(p + i + 64); a5 += Vector512.LoadAligned(p + i + 80);
            a6 += Vector512.LoadAligned(p + i + 96); a7 += Vector512.LoadAligned(p + i + 112);
        }
        float s = Vector512.Sum(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)));
        for (; i < n; i++) s += p[i];
        return s;
    }
    else
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        long i = 0;
        for (; i + 64 <= n; i += 64)
        {
            a0 += Vector256.Load(p + i); a1 += Vector256.Load(p + i + 8);
            a2 += Vector256.Load(p + i + 16); a3 += Vector256.Load(p + i + 24);
            a4 += Vector256.Load(p + i + 32); a5 += Vector256.Load(p + i + 40);
            a6 += Vector256.Load(p + i + 48); a7 += Vector256.Load(p + i + 56);
        }
        float s = Vector256.Sum(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)));
        for (; i < n; i++) s += p[i];
        return s;
    }
}

[MethodImpl(MethodImplOptions.AggressiveOptimization)]
static float FmaChains(long iters)
{
    if (Vector512.IsHardwareAccelerated)
    {
        var m = Vector512.Create(0.999999f); var c = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = a0 + c, a2 = a1 + c, a3 = a2 + c, a4 = a3 + c, a5 = a4 + c,
            a6 = a5 + c, a7 = a6 + c, a8 = a7 + c, a9 = a8 + c, a10 = a9 + c, a11 = a10 + c;
        for (long i = 0; i < iters; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, m, c); a1 = Vector512.FusedMultiplyAdd(a1, m, c);
            a2 = Vector512.FusedMultiplyAdd(a2, m, c); a3 = Vector512.FusedMultiplyAdd(a3, m, c);
            a4 = Vector512.FusedMultiplyAdd(a4, m, c); a5 = Vector512.FusedMultiplyAdd(a5, m, c);
            a6 = Vector512.FusedMultiplyAdd(a6, m, c); a7 = Vector512.FusedMultiplyAdd(a7, m, c);
            a8 = Vector512.FusedMultiplyAdd(a8, m, c); a9 = Vector512.FusedMultiplyAdd(a9, m, c);
            a10 = Vector512.FusedMultiplyAdd(a10, m, c); a11 = Vector512.FusedMultiplyAdd(a11, m, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
    else
    {
        var m = Vector256.Create(0.999999f); var c = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = a0 + c, a2 = a1 + c, a3 = a2 + c, a4 = a3 + c, a5 = a4 + c,
            a6 = a5 + c, a7 = a6 + c, a8 = a7 + c, a9 = a8 + c, a10 = a9 + c, a11 = a10 + c;
        for (long i = 0; i < iters; i++)
        {
            a0 = Vector256.FusedMultiplyAdd(a0, m, c); a1 = Vector256.FusedMultiplyAdd(a1, m, c);
            a2 = Vector256.FusedMultiplyAdd(a2, m, c); a3 = Vector256.FusedMultiplyAdd(a3, m, c);
            a4 = Vector256.FusedMultiplyAdd(a4, m, c); a5 = Vector256.FusedMultiplyAdd(a5, m, c);
            a6 = Vector256.FusedMultiplyAdd(a6, m, c); a7 = Vector256.FusedMultiplyAdd(a7, m, c);
            a8 = Vector256.FusedMultiplyAdd(a8, m, c); a9 = Vector256.FusedMultiplyAdd(a9, m, c);
            a10 = Vector256.FusedMultiplyAdd(a10, m, c); a11 = Vector256.FusedMultiplyAdd(a11, m, c);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }
}

static string LoadAvg()
{
    try { return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
    catch (IOException) { return "n/a"; }
}

static partial class Program
{
    static readonly object Lock = new();
}
