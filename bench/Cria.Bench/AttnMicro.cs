using System.Diagnostics;
using System.Runtime.InteropServices;
using Cria.Inference;
using Cria.Kernels;
using Cria.Models;

namespace Cria.Bench;

/// <summary>
/// The attention kernel on one thread, apart from the model and the pool: one layer of a cache filled with random
/// values, then the work items of a prefill micro-batch (runs of <see cref="AttentionJob.RowsPerItem"/> rows × KV
/// heads, as AttentionJob hands them out; --runs 4,8,16 alternates run lengths) or of one decode row, at a depth.
///   Cria.Bench attn-micro [--heads 32] [--kv-heads 4] [--head-dim 64] [--depth 2048] [--rows 512] [--kv-type f16] [--reps 5] [--runs R,…]
/// Prints multiply–adds per second (q·k and p·v; median of reps) and a checksum of the output (to check that a change
/// keeps the bits).
/// </summary>
static class AttnMicro
{
    public static int Run(string[] args)
    {
        int heads = 32, kvHeads = 4, hd = 64, depth = 2048, rows = 512, reps = 5;
        int[] runs = [AttentionJob.RowsPerItem];
        string kvType = "f16";
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--heads": heads = int.Parse(args[++i]); break;
                case "--kv-heads": kvHeads = int.Parse(args[++i]); break;
                case "--head-dim": hd = int.Parse(args[++i]); break;
                case "--depth": depth = int.Parse(args[++i]); break;
                case "--rows": rows = int.Parse(args[++i]); break;
                case "--kv-type": kvType = args[++i]; break;
                case "--reps": reps = int.Parse(args[++i]); break;
                case "--runs": runs = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        var c = new ModelConfig { HeadDim = hd, HeadCount = heads, KvHeadCount = kvHeads, Dim = hd * heads, RopeDim = hd };
        int length = depth + rows;
        var cache = new KvCache(c.KvDim, 1, length + 64, KvCache.DefaultBlockSize, new KvFormat { Type = KvFormat.Parse(kvType) }, hd);
        cache.Append(0, length);
        var rng = new Random(1);
        var row = new float[c.KvDim];
        for (int t = 0; t < length; t++)
        {
            for (int j = 0; j < row.Length; j++) row[j] = (float)(rng.NextDouble() * 2 - 1);
            cache.Store(0, 0, t, cache.Cell(0, t), row, row);
        }
        var s = cache.GetSequence(0);
        var table = CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var blockPos = cache.BlockPositions(0).ToArray();
        var kv = new AttentionJob.KvLayer(cache, 0);
        var q = new float[rows * c.QDim];
        for (int j = 0; j < q.Length; j++) q[j] = (float)(rng.NextDouble() * 2 - 1);
        var output = new float[rows * c.QDim];
        var scratch = new float[AttentionJob.ScratchLength(c)];
        int cap = AttentionJob.RowsPerItem;
        if (runs.Any(r => r < 1 || r > cap)) { Console.Error.WriteLine($"--runs: 1 … {cap}"); return 2; }
        Span<int> slots = stackalloc int[cap];
        Span<float> max = stackalloc float[cap * c.GroupSize], sum = stackalloc float[cap * c.GroupSize];
        double macs = 0;
        for (int r = 0; r < rows; r++) macs += 2.0 * heads * hd * (depth + r + 1);
        var rates = runs.Select(_ => new List<double>()).ToArray();
        for (int rep = 0; rep < reps + 1; rep++)
        for (int k = 0; k < runs.Length; k++)
        {
            int rpi = runs[k];
            var sw = Stopwatch.StartNew();
            for (int b = 0; b < rows; b += rpi)
            {
                int n = Math.Min(rpi, rows - b);
                for (int r = 0; r < n; r++) slots[r] = depth + b + r + 1;
                for (int g = 0; g < kvHeads; g++)
                    AttentionJob.AttendRows(c, kv, table, blockPos, null, n, slots, depth + b + n - 1, g,
                                            q.AsSpan(b * c.QDim, n * c.QDim), output.AsSpan(b * c.QDim, n * c.QDim), scratch, max, sum, -1);
            }
            double sec = sw.Elapsed.TotalSeconds;
            if (rep > 0) rates[k].Add(macs / sec / 1e9);
        }
        double check = 0;
        for (int j = 0; j < output.Length; j++) check += output[j] * (j % 7 + 1);
        for (int k = 0; k < runs.Length; k++)
        {
            var x = rates[k]; x.Sort();
            Console.WriteLine($"attention {kvType}, {heads}/{kvHeads} heads × {hd}, {rows} rows at depth {depth}, runs of {runs[k]}, 1 thread: " +
                              $"median {x[x.Count / 2]:F2} GMAC/s (min {x[0]:F2}, max {x[^1]:F2}), {macs / x[x.Count / 2] / 1e6:F0} ms");
        }
        Console.WriteLine($"check {check:G10} out[1]={output[1]:G9}");
        return 0;
    }
}
