using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Cria.Bench;

/// <summary>
/// `--probe`: before each engine turn the runner reads (a) Cria's mapped weight file and (b) an anonymous 1 GiB buffer in
/// 2 MiB pages, with a plain 2-thread Vector512 sum, and prints both rates. If a slow Cria turn comes with a slow read of
/// the weights but not of the fresh buffer, the weights' pages are the cause (their placement or backing); if both
/// read slowly, the machine's bandwidth moved. The read is <see cref="KernelMicro.ReadSum"/>, kernel-micro's plain read.
/// </summary>
sealed unsafe class ReadProbe : IDisposable
{
    static float Sink;
    readonly byte* _buf;
    readonly long _bytes = 1L << 30;

    public ReadProbe()
    {
        _buf = (byte*)NativeMemory.AlignedAlloc((nuint)_bytes, 2 << 20);
        if (OperatingSystem.IsLinux()) KernelMicro.Madvise((nint)_buf, (nuint)_bytes, 14); // MADV_HUGEPAGE
        Parallel.For(0, 64, c => new Span<byte>(_buf + _bytes * c / 64, (int)(_bytes / 64)).Fill((byte)c));
    }

    public string Measure(byte* weights, long weightBytes, int threads)
    {
        double w = Rate(weights, weightBytes & ~255L, threads), a = Rate(_buf, _bytes, threads);
        return $"probe: weights {w:F1} GB/s, fresh buffer {a:F1} GB/s";
    }

    static double Rate(byte* p, long n, int threads)
    {
        double best = double.MaxValue;
        for (int pass = 0; pass < 3; pass++)
        {
            long t0 = Stopwatch.GetTimestamp();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                long s = n * t / threads & ~255L, e = n * (t + 1) / threads & ~255L; // n is a multiple of 256
                Sink = KernelMicro.ReadSum(p + s, e - s); // the sink keeps the loads alive
            });
            best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
        }
        return n / best / 1e9;
    }

    public void Dispose() => NativeMemory.AlignedFree(_buf);
}
