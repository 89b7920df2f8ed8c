using System.Diagnostics;
using System.Runtime.InteropServices;
using Cria.Kernels;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// The prefill matrix–matrix kernel on one thread: one weight matrix against B activation rows, rows in the chunks
/// MatMulJob hands out (RowKernels.RunBlock per chunk), the kernel's own speed apart from the model and the pool.
///   Cria.Bench gemm-micro [--type q4_k] [--cols 2048] [--rows 2048] [--batch 512] [--chunk-kib 32] [--reps 7]
/// Prints multiply–adds per second (median of reps) and y[1] (to check that a change keeps the bits).
/// </summary>
static unsafe class GemmMicro
{
    public static int Run(string[] args)
    {
        var type = GgmlType.Q4_K; int cols = 2048, rows = 2048, batch = 512, chunkKiB = 32, reps = 7;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--type": type = Enum.Parse<GgmlType>(args[++i], true); break;
                case "--cols": cols = int.Parse(args[++i]); break;
                case "--rows": rows = int.Parse(args[++i]); break;
                case "--batch": batch = int.Parse(args[++i]); break;
                case "--chunk-kib": chunkKiB = int.Parse(args[++i]); break;
                case "--reps": reps = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var rng = new Random(1);
        var src = new float[cols];
        byte* w = (byte*)NativeMemory.AlignedAlloc((nuint)((long)rows * rowBytes), 64);
        for (int r = 0; r < rows; r++)
        {
            for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
            Quantize.Row(type, src, new Span<byte>(w + (long)r * rowBytes, rowBytes));
        }
        int xBytes = RowKernels.ActivationRowBytes(type, cols);
        byte* x = (byte*)NativeMemory.AlignedAlloc((nuint)((long)batch * xBytes), 64);
        for (int b = 0; b < batch; b++)
        {
            for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
            RowKernels.PrepareActivations(type, src, new Span<byte>(x + (long)b * xBytes, xBytes));
        }
        var y = new float[(long)batch * rows];
        int chunkRows = Math.Clamp(chunkKiB * 1024 / rowBytes, 1, 256);
        int group = RowKernels.PrefillRowGroup(type);
        chunkRows = (chunkRows + group - 1) / group * group; // whole groups of rows, as MatMulJob rounds its chunks
        var rates = new List<double>();
        fixed (float* yp = y)
            for (int rep = 0; rep < reps + 1; rep++)
            {
                var sw = Stopwatch.StartNew();
                for (int r0 = 0; r0 < rows; r0 += chunkRows)
                    RowKernels.RunBlock(type, w, rowBytes, r0, Math.Min(rows, r0 + chunkRows), x, xBytes, batch, cols, yp, rows, finiteF16: true); // random weights are finite
                double s = sw.Elapsed.TotalSeconds;
                if (rep > 0) rates.Add((double)rows * cols * batch / s / 1e9);
            }
        rates.Sort();
        Console.WriteLine($"{type} {rows}×{cols} against {batch} rows, chunks of {chunkRows} rows, 1 thread: median {rates[rates.Count / 2]:F1} GMAC/s  (min {rates[0]:F1}, max {rates[^1]:F1})  y[1]={y[1]:G9} y[last]={y[^1]:G9}");
        NativeMemory.AlignedFree(w);
        NativeMemory.AlignedFree(x);
        return 0;
    }
}
