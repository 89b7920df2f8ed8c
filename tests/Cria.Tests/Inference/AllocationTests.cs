using System.Reflection;
using Cria.Inference;
using Cria.Kernels;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Inference;

/// <summary>
/// Issue 4: zero GC allocations per generated token in steady state. After a warm-up (prompt plus single-token
/// decodes, so that JIT tiering and one-time buffers are done), N more decode steps of the same sequence must not
/// allocate a single byte on any thread — the pool's workers included, which is why the measure is
/// the calling thread's counter plus each pool worker's own counter (read on that worker), with the process-wide
/// <see cref="GC.GetTotalAllocatedBytes(bool)"/> (precise) reported beside it: the process-wide number also sees the
/// test host's threads, which allocate now and then on their own.
/// </summary>
[Collection(nameof(AllocationTestsCollection))]
public class AllocationTests
{
    const int Warmup = 72, Steps = 64; // measured positions 72..135 cross KV block boundaries (blocks of 16)

    static RandomModelSpec Spec(string key, GgmlType type, bool mix) => new()
    {
        Dim = 256, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 768, VocabSize = 1024, Seed = 7,
        WeightType = type, MediumMix = mix, Experts = key.Contains("moe") ? 8 : 0,
    };

    public static IEnumerable<object[]> Cases()
    {
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.F16, KvEvictionType.None];
        yield return ["alloc-q8_0", GgmlType.Q8_0, false, KvCacheType.F16, KvEvictionType.None];
        yield return ["alloc-q4_k_m", GgmlType.Q4_K, true, KvCacheType.F16, KvEvictionType.None];
        // Issue 6: every KV format, and eviction (blocks dropped during the measured steps).
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.F32, KvEvictionType.None];
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.Q8_0, KvEvictionType.None];
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.Kivi4, KvEvictionType.H2O];
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.Kivi2, KvEvictionType.SnapKV];
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.F16, KvEvictionType.Sinks];
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.F16, KvEvictionType.Locret];
        // A mixture of experts (2 of 8 per token).
        yield return ["alloc-moe-q4_k", GgmlType.Q4_K, false, KvCacheType.F16, KvEvictionType.None];
        // A LoRA adapter on all seven projections, applied at run time.
        yield return ["alloc-q4_k_m", GgmlType.Q4_K, true, KvCacheType.F16, KvEvictionType.None, true];
        // A SwiftKV model (layer 1 of 2 on, AcrossKV off): h, the upper layer's K/V from it, and its own queries.
        yield return ["alloc-q8_0", GgmlType.Q8_0, false, KvCacheType.F16, KvEvictionType.None, false, true];
        // LongGen's hybrid attention (layer 0 windowed: 4 sinks + 8): its window pool drops blocks during the measured steps.
        yield return ["alloc-f32", GgmlType.F32, false, KvCacheType.F16, KvEvictionType.None, false, false, true];
    }

    /// <summary>A random rank-8 adapter on every projection of <paramref name="model"/>.</summary>
    static LoraAdapter RandomAdapter(LlamaModel model)
    {
        var c = model.Config;
        var shape = new Cria.Training.LlamaShape { VocabSize = c.VocabSize, Dim = c.Dim, Layers = c.LayerCount, Heads = c.HeadCount, KvHeads = c.KvHeadCount, FfnDim = c.FfnDim, ContextLength = 256 };
        var lay = new Cria.Training.LoraLayout(shape, new Cria.Training.LoraOptions { Rank = 8 });
        var p = new float[lay.Count];
        var rng = new Random(3);
        for (int i = 0; i < p.Length; i++) p[i] = (float)(rng.NextDouble() - 0.5) * 0.05f;
        string path = TestPaths.TempFile("alloc-lora.gguf");
        lay.Write(path, p);
        return LoraAdapter.Load(path, model);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void DecodeStepsAllocateNothing(string key, GgmlType type, bool mix, KvCacheType kv, KvEvictionType evict, bool lora = false, bool swiftKv = false,
        bool hybrid = false)
    {
        string path = LogitsAgreementTests.ModelFile(key, Spec(key, type, mix));
        if (swiftKv)
        {
            string swift = TestPaths.TempFile(key + "-swiftkv.gguf");
            Cria.Training.SwiftKv.Build(path, swift, null, new Cria.Training.SwiftKvOptions { KvLayers = 1, Fit = false }, force: true);
            path = swift;
        }
        using var model = LlamaModel.Open(path);
        Assert.Equal(swiftKv, model.Config.IsSwiftKv);
        using var ctx = new InferenceContext(model, new ContextOptions
        {
            ContextSize = 256, Threads = 2, MicroBatch = 16,
            Kv = new KvFormat { Type = kv, KiviGroup = 16, KiviResidual = 32 },
            Eviction = evict == KvEvictionType.None ? KvEvictionOptions.None : new KvEvictionOptions
            {
                Type = evict, Budget = 64, ShiftPositions = evict != KvEvictionType.SnapKV, // shift: StreamingLLM positions (rotation tables on the stack)
                Heads = evict == KvEvictionType.Locret ? RetainingHeads.Create(model.Config, 32, 3) : null,
            },
            Loras = lora ? [(RandomAdapter(model), 1f)] : [],
            AttentionWindow = hybrid ? new AttentionWindowOverride(8, 4, "0") : null,
        });
        var rng = new Random(5);
        var tokens = new int[Warmup + Steps];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = rng.Next(model.Config.VocabSize);
        var batch = new Batch(16);
        var probe = ThreadProbe.For(ctx);

        // Warm-up: an 8-token prompt, then single-token decodes up to position Warmup - 1.
        batch.AddSequence(tokens.AsSpan(0, 8), 0, 0);
        ctx.Decode(batch);
        for (int p = 8; p < Warmup; p++) Step(ctx, batch, tokens[p], p);
        probe?.WarmWaitPaths();
        float sink = 0;

        int windowDropped = hybrid ? ctx.Cache.GetSequence(0).Window!.Dropped : 0;
        probe?.Sample(before: true);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        long beforeThread = GC.GetAllocatedBytesForCurrentThread();
        for (int p = Warmup; p < Warmup + Steps; p++)
        {
            Step(ctx, batch, tokens[p], p);
            sink += ctx.Logits(0)[0];
        }
        long thread = GC.GetAllocatedBytesForCurrentThread() - beforeThread;
        long total = GC.GetTotalAllocatedBytes(precise: true) - before;
        probe?.Sample(before: false);
        Assert.True(float.IsFinite(sink));
        if (hybrid) Assert.True(ctx.Cache.GetSequence(0).Window!.Dropped > windowDropped, "the window pool dropped no block during the measured steps");

        // Cria's threads: the caller plus the pool's workers, each read on its own thread. Without the probe (the pool
        // could not be found) fall back to the process-wide count, which also sees the test host's own threads.
        long cria = probe != null ? thread + probe.WorkerBytes : total;
        Assert.True(cria == 0,
            $"{Steps} decode steps (positions {Warmup}..{Warmup + Steps - 1}) allocated {cria:N0} bytes on Cria's threads " +
            $"({cria / (double)Steps:F1} per step): {thread:N0} on the calling thread" +
            (probe != null ? $", {probe.WorkerBytes:N0} on the pool's workers" : "") +
            $"; {total:N0} bytes process-wide (GC.GetTotalAllocatedBytes, includes the test host)");
    }

    /// <summary>Activation Beacon: single-token steps through a <see cref="BeaconStream"/> (windows of 16 condensed to 4
    /// beacons: four condensing steps, each a beacon batch and <see cref="KvCache.MoveRows"/>, fall in the measured steps)
    /// allocate nothing either.</summary>
    [Fact]
    public void BeaconStreamStepsAllocateNothing()
    {
        var (path, _, _, _, _, _) = Cria.Tests.Training.BeaconTests.BeaconModel("alloc-beacon.gguf");
        using var model = LlamaModel.Open(path);
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 2, MicroBatch = 16 });
        var stream = new BeaconStream(ctx, 0);
        var rng = new Random(5);
        var tokens = new int[Warmup + Steps];
        for (int i = 0; i < tokens.Length; i++) tokens[i] = rng.Next(model.Config.VocabSize);
        stream.Feed(tokens.AsSpan(0, 8));
        for (int p = 8; p < Warmup; p++) stream.Feed(tokens.AsSpan(p, 1));
        var probe = ThreadProbe.For(ctx);
        probe?.WarmWaitPaths();
        int memory = stream.Memory;
        float sink = 0;
        probe?.Sample(before: true);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        long beforeThread = GC.GetAllocatedBytesForCurrentThread();
        for (int p = Warmup; p < Warmup + Steps; p++)
        {
            stream.Feed(tokens.AsSpan(p, 1));
            sink += ctx.Logits(stream.LastRow)[0];
        }
        long thread = GC.GetAllocatedBytesForCurrentThread() - beforeThread;
        long total = GC.GetTotalAllocatedBytes(precise: true) - before;
        probe?.Sample(before: false);
        Assert.True(float.IsFinite(sink));
        Assert.Equal(memory + 4 * 4, stream.Memory);
        long cria = probe != null ? thread + probe.WorkerBytes : total;
        Assert.True(cria == 0, $"{Steps} beacon-stream steps allocated {cria:N0} bytes on Cria's threads ({thread:N0} on the calling thread)");
    }

    /// <summary>Reads <see cref="GC.GetAllocatedBytesForCurrentThread"/> on each worker of the context's pool, by running
    /// itself as a pool job (each worker executes a job exactly once). Null when the pool field is not found.</summary>
    sealed class ThreadProbe : ParallelJob
    {
        readonly WorkerPool _pool;
        readonly long[] _before, _after;
        enum Mode { Nothing, Before, After, Slow }
        Mode _mode;

        ThreadProbe(WorkerPool pool) { _pool = pool; _before = new long[pool.Count]; _after = new long[pool.Count]; }

        public static ThreadProbe? For(InferenceContext ctx)
        {
            var f = typeof(InferenceContext).GetFields(BindingFlags.NonPublic | BindingFlags.Instance)
                .FirstOrDefault(x => x.FieldType == typeof(WorkerPool));
            return f?.GetValue(ctx) is WorkerPool pool ? new ThreadProbe(pool) : null;
        }

        public void Sample(bool before) { _mode = before ? Mode.Before : Mode.After; _pool.Run(this); }

        /// <summary>Takes the pool's blocking paths once, so that their one-time lazy objects (the lock of a
        /// ManualResetEventSlim, the monitor of a SemaphoreSlim) exist before the measurement: the caller waits on slow
        /// workers, then the workers fall asleep and are woken again.</summary>
        public void WarmWaitPaths()
        {
            _mode = Mode.Slow; _pool.Run(this);
            Thread.Sleep(300);
            _mode = Mode.Nothing; _pool.Run(this);
            _pool.Run(this);
        }

        public override void Execute(int worker, int workerCount)
        {
            if (worker == 0) return; // the calling thread is measured directly
            if (_mode == Mode.Slow) Thread.Sleep(20);
            else if (_mode == Mode.Before) _before[worker] = GC.GetAllocatedBytesForCurrentThread();
            else if (_mode == Mode.After) _after[worker] = GC.GetAllocatedBytesForCurrentThread();
        }

        public long WorkerBytes
        {
            get { long s = 0; for (int i = 1; i < _before.Length; i++) s += _after[i] - _before[i]; return s; }
        }
    }

    static void Step(InferenceContext ctx, Batch batch, int token, int pos)
    {
        batch.Clear();
        batch.Add(token, pos, 0, true);
        ctx.Decode(batch);
    }
}

/// <summary>Allocation counts are process-wide: run these tests alone, after the parallel ones.</summary>
[CollectionDefinition(nameof(AllocationTestsCollection), DisableParallelization = true)]
public sealed class AllocationTestsCollection;
