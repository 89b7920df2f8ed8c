using System.CommandLine;
using System.Diagnostics;
using System.Runtime.Intrinsics;
using Cria.Kernels;
using Cria.Models;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// <c>cria bench-train</c>: the machine's measured FP32 FMA peak (registers only, every thread), the training GEMMs
/// on a model's shapes, and whole training steps — the numbers in docs/benchmarks.md.
/// </summary>
static class BenchTrainCommand
{
    public static Command Create()
    {
        var dim = new Option<int>("--dim") { DefaultValueFactory = _ => 256 };
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 6 };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 8 };
        var kvHeads = new Option<int>("--kv-heads") { DefaultValueFactory = _ => 2 };
        var ffn = new Option<int>("--ffn") { DefaultValueFactory = _ => 768 };
        var vocab = new Option<int>("--vocab-size") { DefaultValueFactory = _ => 4096 };
        var ctx = new Option<int>("--ctx") { DefaultValueFactory = _ => 256 };
        var batch = new Option<int>("--batch", "-b") { DefaultValueFactory = _ => 8 };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 5 };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var window = new Option<int>("--attn-window") { Description = "LongGen's hybrid attention: the bottom and top thirds of the layers see 16 sinks and the last W positions (0 = full attention)" };
        var cmd = new Command("bench-train", "measure FP32 peak, training GEMM throughput and training tokens/s")
        { dim, layers, heads, kvHeads, ffn, vocab, ctx, batch, steps, threads, window };
        cmd.SetAction(r =>
        {
            int t = r.GetValue(threads);
            var shape = new LlamaShape
            {
                VocabSize = r.GetValue(vocab), Dim = r.GetValue(dim), Layers = r.GetValue(layers), Heads = r.GetValue(heads),
                KvHeads = r.GetValue(kvHeads), FfnDim = r.GetValue(ffn), ContextLength = r.GetValue(ctx),
            };
            if (r.GetValue(window) > 0) shape = shape with { Window = r.GetValue(window), WindowSinks = ModelConfig.DefaultWindowSinks, WindowLayers = ModelConfig.LongGenLayers(shape.Layers) };
            double peak = PeakGflops(t);
            Console.WriteLine($"FP32 {(Vector256.IsHardwareAccelerated ? "FMA" : PeakJob.Fused ? "fused multiply-add" : "multiply + add")} peak ({(Vector256.IsHardwareAccelerated ? "Vector256" : "Vector128")}, {t} threads, registers only): {peak:F1} GFLOP/s");
            int N = r.GetValue(batch) * shape.ContextLength;
            using var pool = new WorkerPool(t);
            var gemm = new Gemm(pool);
            foreach (var (name, m, n, k) in new[] { ("forward  x·Wᵀ  (ffn up)", N, shape.FfnDim, shape.Dim), ("backward dy·W  (ffn up)", N, shape.Dim, shape.FfnDim),
                         ("backward dyᵀ·x (ffn up)", shape.FfnDim, shape.Dim, N), ("forward  head", N, shape.VocabSize, shape.Dim),
                         ("backward head dx", N, shape.Dim, shape.VocabSize), ("backward head dW", shape.VocabSize, shape.Dim, N) })
            {
                double g = GemmGflops(gemm, name.Contains("dyᵀ") || name.Contains("dW") ? 2 : name.Contains("backward") ? 1 : 0, m, n, k);
                Console.WriteLine($"  {name,-26} {m}×{n}×{k}: {g:F1} GFLOP/s ({g / peak:P0} of peak)");
            }
            var corpus = new int[200_000];
            var rng = new TrainingRng(1);
            for (int i = 0; i < corpus.Length; i++) corpus[i] = 3 + rng.Next(shape.VocabSize - 3);
            using var trainer = new Trainer(shape, new TrainingOptions { BatchSize = r.GetValue(batch), Steps = 1000, Threads = t }, corpus, 1);
            trainer.TrainStep();
            Array.Clear(trainer.Model.ProfileSeconds);
            var sw = Stopwatch.StartNew();
            int s = r.GetValue(steps);
            for (int i = 0; i < s; i++) trainer.TrainStep();
            double sec = sw.Elapsed.TotalSeconds;
            double tokens = (double)s * trainer.Model.Rows;
            long p = trainer.Model.Layout.ParameterCount;
            // 6·P per token for the matrix products (2 forward, 4 backward) + causal attention (QKᵀ and PV: 2·2·keys·dim per
            // layer, ×3; keys = T/2 on average, fewer in a windowed layer: min(t + 1, sinks + window) for query t)
            int T = shape.ContextLength;
            double keys = Enumerable.Range(0, shape.Layers).Sum(l => shape.WindowOf(l) == 0 ? T / 2.0
                : Enumerable.Range(0, T).Average(t => (double)Math.Min(t + 1, shape.WindowSinks + shape.WindowOf(l))));
            double flopsPerToken = 6.0 * p + 3.0 * 2 * 2 * keys * shape.Dim;
            double gflops = tokens * flopsPerToken / sec / 1e9;
            Console.WriteLine($"training {shape}, {p:N0} parameters, batch {r.GetValue(batch)}×{shape.ContextLength}: {tokens / sec:F0} tokens/s, " +
                $"{sec / s * 1000:F0} ms/step, {gflops:F1} GFLOP/s = {gflops / peak:P0} of the measured peak");
            var prof = trainer.Model.ProfileSeconds;
            Console.WriteLine($"  per step: matmul {prof[0] / s * 1000:F0} ms, attention {prof[1] / s * 1000:F0} ms, cross-entropy {prof[2] / s * 1000:F0} ms, " +
                $"other model ops {prof[3] / s * 1000:F0} ms, optimizer and data {(sec - prof.Sum()) / s * 1000:F0} ms");
            return 0;
        });
        return cmd;
    }

    static unsafe double GemmGflops(Gemm gemm, int kind, int m, int n, int k)
    {
        var a = new float[(long)m * k]; var b = new float[(long)k * n]; var c = new float[(long)m * n];
        var rng = new Random(1);
        for (int i = 0; i < a.Length; i++) a[i] = (float)rng.NextDouble();
        for (int i = 0; i < b.Length; i++) b[i] = (float)rng.NextDouble();
        fixed (float* pa = a, pb = b, pc = c)
        {
            var sw = new Stopwatch();
            int reps = -1;
            while (sw.Elapsed.TotalSeconds < 1.0)
            {
                if (kind == 0) gemm.MatMulNT(pa, pb, pc, m, n, k);
                else if (kind == 1) gemm.MatMulNNAccumulate(pa, pb, pc, m, n, k);
                else gemm.MatMulTNAccumulate(pa, pb, pc, m, n, k);
                if (++reps == 0) sw.Start(); // the first run warms up
            }
            return 2.0 * m * n * k * reps / sw.Elapsed.TotalSeconds / 1e9;
        }
    }

    sealed class PeakJob : ParallelJob
    {
        public long Iterations;
        public float Sink;
        /// <summary>Without 256-bit vectors (ARM64, x86 without AVX2): 4-lane chains, fused where the hardware fuses
        /// (what the portable training kernels run), else a multiply then an add.</summary>
        internal static bool Fused => System.Runtime.Intrinsics.X86.Fma.IsSupported || System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported;

        public override void Execute(int worker, int workerCount)
        {
            if (!Vector256.IsHardwareAccelerated) { Execute128(worker); return; }
            var a0 = Vector256.Create(1f + worker); var a1 = a0 + Vector256<float>.One; var a2 = a1 + Vector256<float>.One; var a3 = a2 + Vector256<float>.One;
            var a4 = a3 + Vector256<float>.One; var a5 = a4 + Vector256<float>.One; var a6 = a5 + Vector256<float>.One; var a7 = a6 + Vector256<float>.One;
            var x = Vector256.Create(0.999999f); var y = Vector256.Create(1e-7f);
            for (long i = 0; i < Iterations; i++)
            {
                a0 = Vector256.FusedMultiplyAdd(a0, x, y); a1 = Vector256.FusedMultiplyAdd(a1, x, y); a2 = Vector256.FusedMultiplyAdd(a2, x, y); a3 = Vector256.FusedMultiplyAdd(a3, x, y);
                a4 = Vector256.FusedMultiplyAdd(a4, x, y); a5 = Vector256.FusedMultiplyAdd(a5, x, y); a6 = Vector256.FusedMultiplyAdd(a6, x, y); a7 = Vector256.FusedMultiplyAdd(a7, x, y);
            }
            float s = Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7);
            lock (this) Sink += s;
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // full opts from the start: the OSR version of the loop spilled its chains
        void Execute128(int worker)
        {
            var a0 = Vector128.Create(1f + worker); var a1 = a0 + Vector128<float>.One; var a2 = a1 + Vector128<float>.One; var a3 = a2 + Vector128<float>.One;
            var a4 = a3 + Vector128<float>.One; var a5 = a4 + Vector128<float>.One; var a6 = a5 + Vector128<float>.One; var a7 = a6 + Vector128<float>.One;
            var x = Vector128.Create(0.999999f); var y = Vector128.Create(1e-7f);
            if (Fused)
                for (long i = 0; i < Iterations; i++)
                {
                    a0 = Vector128.FusedMultiplyAdd(a0, x, y); a1 = Vector128.FusedMultiplyAdd(a1, x, y); a2 = Vector128.FusedMultiplyAdd(a2, x, y); a3 = Vector128.FusedMultiplyAdd(a3, x, y);
                    a4 = Vector128.FusedMultiplyAdd(a4, x, y); a5 = Vector128.FusedMultiplyAdd(a5, x, y); a6 = Vector128.FusedMultiplyAdd(a6, x, y); a7 = Vector128.FusedMultiplyAdd(a7, x, y);
                }
            else
            {
                // a multiply then a dependent add: twice the latency of one FMA, so twelve chains, and twelve-eighths the FLOPs
                var a8 = a7 + Vector128<float>.One; var a9 = a8 + Vector128<float>.One; var a10 = a9 + Vector128<float>.One; var a11 = a10 + Vector128<float>.One;
                for (long i = 0; i < Iterations; i++)
                {
                    a0 = a0 * x + y; a1 = a1 * x + y; a2 = a2 * x + y; a3 = a3 * x + y;
                    a4 = a4 * x + y; a5 = a5 * x + y; a6 = a6 * x + y; a7 = a7 * x + y;
                    a8 = a8 * x + y; a9 = a9 * x + y; a10 = a10 * x + y; a11 = a11 * x + y;
                }
                a0 += a8 + a9 + a10 + a11;
            }
            float s = Vector128.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7);
            lock (this) Sink += s;
        }
    }

    /// <summary>8 independent FMA chains per thread (enough to cover FMA latency; 12 for a multiply then an add), 2 FLOP
    /// per lane per step.</summary>
    static double PeakGflops(int threads)
    {
        using var pool = new WorkerPool(threads);
        var job = new PeakJob { Iterations = 1_000_000 };
        pool.Run(job);
        job.Iterations = 50_000_000;
        var sw = Stopwatch.StartNew();
        pool.Run(job);
        int lanes = Vector256.IsHardwareAccelerated ? 8 : 4, chains = Vector256.IsHardwareAccelerated || PeakJob.Fused ? 8 : 12;
        return 2.0 * chains * lanes * job.Iterations * threads / sw.Elapsed.TotalSeconds / 1e9;
    }
}
