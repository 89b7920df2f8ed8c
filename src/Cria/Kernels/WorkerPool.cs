using System.Runtime.CompilerServices;

namespace Cria.Kernels;

/// <summary>A unit of parallel work: <see cref="Execute"/> is called once per worker with that worker's index.
/// Jobs are plain objects that the forward pass allocates once and reuses, so dispatch allocates nothing.</summary>
public abstract class ParallelJob
{
    public abstract void Execute(int worker, int workerCount);

    /// <summary>
    /// True when <see cref="Execute"/> takes its work from a shared counter until none is left, so that any subset
    /// of the workers — the caller alone, if need be — completes the job. The pool then does not wait for workers
    /// that have not started when the caller runs out of work: on a busy machine a descheduled worker would
    /// otherwise stall every step until the OS runs it again.
    /// </summary>
    public virtual bool SharesWorkDynamically => false;
}

/// <summary>
/// A persistent pool of worker threads for the forward pass. <see cref="Run"/> hands one job to every worker
/// (the calling thread is worker 0) and returns when all are done. Workers spin briefly between jobs (a decode step
/// dispatches hundreds of small jobs) and then sleep on a semaphore. Nothing is allocated per dispatch.
/// </summary>
public sealed class WorkerPool : IDisposable
{
    readonly Thread[] _threads;
    readonly SemaphoreSlim[] _wake;
    readonly int _count;
    ParallelJob? _job;
    volatile int _generation;
    int _pending;
    volatile bool _disposed;
    readonly ManualResetEventSlim _done = new(false);

    public int Count => _count;

    /// <summary>The most threads a pool (or the quantizer) starts: ggml's GGML_MAX_N_THREADS. A larger request is a typo
    /// rather than a machine, and each thread reserves a stack.</summary>
    public const int MaxThreads = 512;

    /// <summary>Throws <see cref="CriaException"/> when <paramref name="threads"/> is above <see cref="MaxThreads"/>.</summary>
    public static void CheckThreads(int threads)
    {
        if (threads > MaxThreads) throw new CriaException($"{threads} threads requested; at most {MaxThreads}");
    }

    public WorkerPool(int threads)
    {
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads), threads, "need at least one thread");
        CheckThreads(threads);
        _count = threads;
        _threads = new Thread[threads - 1];
        _wake = new SemaphoreSlim[threads - 1];
        _sleeping = new int[threads - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            _wake[i] = new SemaphoreSlim(0);
            int idx = i + 1;
            _threads[i] = new Thread(() => WorkerLoop(idx)) { IsBackground = true, Name = $"cria-worker-{idx}" };
            _threads[i].Start();
        }
    }

    /// <summary>Runs <paramref name="job"/> on every worker and waits for all of them.</summary>
    public void Run(ParallelJob job)
    {
        if (_count == 1) { job.Execute(0, 1); return; }
        // Publish under a sequence lock: an odd generation means "being written"; workers take a job only when they
        // read the same even generation before and after reading it.
        Interlocked.Increment(ref _generation);
        _job = job;
        Volatile.Write(ref _closed, 0);
        Volatile.Write(ref _pending, _count - 1);
        Interlocked.Increment(ref _generation);
        for (int i = 0; i < _wake.Length; i++) if (Volatile.Read(ref _sleeping[i]) != 0) _wake[i].Release();
        Exception? error = null;
        try { job.Execute(0, _count); }
        catch (Exception e) { error = e; }
        var spin = new SpinWait();
        if (job.SharesWorkDynamically)
        {
            // No work is left: close the job to latecomers, then wait only for workers already inside it.
            Interlocked.Exchange(ref _closed, 1);
            while (Volatile.Read(ref _inFlight) != 0) spin.SpinOnce(-1);
        }
        else
        {
            // Every worker owns part of the work: wait for all of them.
            while (Volatile.Read(ref _pending) != 0)
            {
                if (spin.Count > 200) Thread.Sleep(0);
                else spin.SpinOnce(-1);
            }
        }
        _job = null;
        if (error != null) throw error;
        if (_workerError != null) { var e = _workerError; _workerError = null; throw new AggregateException(e); }
    }

    int _closed, _inFlight;

    readonly int[] _sleeping;
    Exception? _workerError;

    void WorkerLoop(int idx)
    {
        int seen = 0;
        while (true)
        {
            // Spin for a while waiting for the next generation, then sleep until woken. The wait's timeout only guards
            // the hand-off; it does not start another spin (that cost an idle pool ~4 % of a core: 2000 spins every 50 ms).
            var spin = new SpinWait();
            while (_generation == seen && !_disposed)
            {
                if (spin.Count > 2000)
                {
                    Interlocked.Exchange(ref _sleeping[idx - 1], 1); // full fence: the flag is visible before we re-check
                    if (_generation == seen && !_disposed) _wake[idx - 1].Wait(50);
                    Volatile.Write(ref _sleeping[idx - 1], 0);
                }
                else spin.SpinOnce(-1);
            }
            if (_disposed) return;
            int gen = _generation;
            if ((gen & 1) != 0) { Thread.SpinWait(1); continue; }   // being published
            var job = _job;
            if (_generation != gen) continue;     // changed while we read it: look again
            seen = gen;
            if (job == null) continue;
            if (job.SharesWorkDynamically)
            {
                // Join only while the job is open and still current (Dekker-style: our increment and the caller's
                // close are both full fences, so the caller sees us or we see it closed).
                Interlocked.Increment(ref _inFlight);
                if (Volatile.Read(ref _closed) == 0 && _generation == gen)
                {
                    try { job.Execute(idx, _count); }
                    catch (Exception e) { _workerError = e; }
                }
                Interlocked.Decrement(ref _inFlight);
            }
            else
            {
                try { job.Execute(idx, _count); }
                catch (Exception e) { _workerError = e; }
                Interlocked.Decrement(ref _pending);
            }
        }
    }

    public void Dispose()
    {
        _disposed = true;
        foreach (var w in _wake) w.Release();
        foreach (var t in _threads) t.Join();
        foreach (var w in _wake) w.Dispose();
        _done.Dispose();
    }

    /// <summary>Splits [0, n) into contiguous ranges; worker w takes range w.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (int Start, int End) Split(int n, int worker, int workers)
    {
        int per = n / workers, rem = n % workers;
        int start = worker * per + Math.Min(worker, rem);
        return (start, start + per + (worker < rem ? 1 : 0));
    }
}
