using System.Diagnostics;
using System.Runtime.InteropServices;
using Cria.Kernels;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// One decode matrix–vector kernel on one thread, rows in L2 or streamed from memory: the kernel's own speed apart
/// from the model and the pool.
///   Cria.Bench kernel-micro [--type q4_k] [--cols 2048] [--l2-rows 128] [--mem-mib 512] [--reps 9]
/// Prints GB/s of weights read (median of reps) for the in-L2 case (same rows again and again) and the
/// streamed case (a buffer larger than the caches, read once per rep).
/// </summary>
static unsafe class KernelMicro
{
    public static int Run(string[] args)
    {
        var type = GgmlType.Q4_K; int cols = 2048, l2Rows = 128, memMiB = 512, reps = 9;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--type": type = Enum.Parse<GgmlType>(args[++i], true); break;
                case "--cols": cols = int.Parse(args[++i]); break;
                case "--l2-rows": l2Rows = int.Parse(args[++i]); break;
                case "--mem-mib": memMiB = int.Parse(args[++i]); break;
                case "--reps": reps = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        int memRows = (int)((long)memMiB * 1024 * 1024 / rowBytes);
        var rng = new Random(1);
        var src = new float[cols];
        byte* w = (byte*)NativeMemory.AlignedAlloc((nuint)((long)memRows * rowBytes), 64);
        for (int r = 0; r < memRows; r++)
        {
            if (r < 64) for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
            Quantize.Row(type, src, new Span<byte>(w + (long)r * rowBytes, rowBytes));
        }
        for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
        int xBytes = RowKernels.ActivationRowBytes(type, cols);
        var xb = new byte[xBytes];
        RowKernels.PrepareActivations(type, src, xb);
        var y = new float[memRows];
        fixed (byte* x = xb) fixed (float* yp = y)
        {
            foreach (var (name, rows, inner) in new[] { ("L2", l2Rows, Math.Max(1, memRows / l2Rows)), ("memory", memRows, 1) })
            {
                var gbs = new List<double>();
                for (int rep = 0; rep < reps + 1; rep++)
                {
                    var sw = Stopwatch.StartNew();
                    for (int k = 0; k < inner; k++) RowKernels.RunRows(type, w, rowBytes, 0, rows, x, xBytes, cols, yp);
                    double s = sw.Elapsed.TotalSeconds;
                    if (rep > 0) gbs.Add((double)rows * rowBytes * inner / s / 1e9);
                }
                gbs.Sort();
                Console.WriteLine($"{type} {cols} cols, {name,-6} ({rows} rows × {inner}): median {gbs[gbs.Count / 2]:F1} GB/s  (min {gbs[0]:F1}, max {gbs[^1]:F1})  y[1]={y[1]:G6}");
            }
        }
        NativeMemory.AlignedFree(w);
        return 0;
    }
}
