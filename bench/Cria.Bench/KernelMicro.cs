using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Cria.Kernels;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// One decode matrix–vector kernel on one thread, rows in L2 or streamed from memory: the kernel's own speed apart
/// from the model and the pool.
///   Cria.Bench kernel-micro [--type q4_k] [--cols 2048] [--l2-rows 128] [--mem-mib 512] [--reps 9]
///                           [--threads 1] [--chunk-kib 0[,1024,...]] [--pair] [--checked]
/// Prints GB/s of weights read (median of reps) for the in-L2 case (same rows again and again) and the
/// streamed case (a buffer larger than the caches in 2 MiB pages, read once per rep), next to a plain read of the same
/// bytes. With --threads T the rows are shared by T threads: chunk 0 = one contiguous half (third, …) each, otherwise
/// chunks of that many KiB from a shared counter; the modes alternate within each rep. --pair: rows r and r + rows/2 of each
/// thread's share (chunk 0) through the paired kernel. --checked (F16): the kernels with the per-step infinity check, which the model
/// runs only for a matrix that holds an infinity or NaN.
/// </summary>
static unsafe class KernelMicro
{
    [DllImport("libc", EntryPoint = "madvise")] internal static extern int Madvise(nint addr, nuint length, int advice);

    static float Sink;

    static void RandomLatticeRow(GgmlType type, Random rng, Span<byte> row)
    {
        rng.NextBytes(row);
        int bs = GgmlTypeInfo.BlockBytes(type);
        for (int b = 0; b < row.Length; b += bs)
        {
            if (type == GgmlType.IQ1_M) { row[b + 55] &= 0x8F; continue; } // the scale's f16 exponent below 8: small, finite
            ushort h = Fp16.FromSingle(0.01f * (float)(rng.NextDouble() - 0.5));
            row[b] = (byte)h; row[b + 1] = (byte)(h >> 8);
        }
    }

    static double Gaussian(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    /// <summary>Σ of n bytes read as floats (n a multiple of 256): four 64-byte loads per step, no arithmetic to speak of.</summary>
    internal static float ReadSum(byte* p, long n)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (long i = 0; i < n; i += 256)
        {
            a0 += Vector512.Load((float*)(p + i)); a1 += Vector512.Load((float*)(p + i + 64));
            a2 += Vector512.Load((float*)(p + i + 128)); a3 += Vector512.Load((float*)(p + i + 192));
        }
        return Vector512.Sum((a0 + a1) + (a2 + a3));
    }

    public static int Run(string[] args)
    {
        var type = GgmlType.Q4_K; int cols = 2048, l2Rows = 128, memMiB = 512, reps = 9, threads = 1; int[] chunkList = [0]; double sigma = 0; bool pair = false, checkedF16 = false, ggml = false;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--type": type = Enum.Parse<GgmlType>(args[++i], true); break;
                case "--cols": cols = int.Parse(args[++i]); break;
                case "--l2-rows": l2Rows = int.Parse(args[++i]); break;
                case "--mem-mib": memMiB = int.Parse(args[++i]); break;
                case "--reps": reps = int.Parse(args[++i]); break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--pair": pair = true; break;
                case "--checked": checkedF16 = true; break;
                case "--ggml": ggml = true; break;
                case "--sigma": sigma = double.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--chunk-kib": chunkList = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                default: Console.Error.WriteLine($"unknown argument {args[i]}"); return 2;
            }
        if (pair && !RowKernels.HasPairedDecode(type, cols))
        {
            // RunPair would run another type's kernel over these bytes (the model never pairs such rows: MatMulJob asks first)
            Console.Error.WriteLine($"--pair: {type} has no paired decode kernel on this machine (its decode runs rows one by one)");
            return 2;
        }
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        int memRows = (int)((long)memMiB * 1024 * 1024 / rowBytes);
        var rng = new Random(1);
        var src = new float[cols];
        // 2 MiB-aligned and MADV_HUGEPAGE, as a model file is mapped (MappedFileHints)
        byte* w = (byte*)NativeMemory.AlignedAlloc((nuint)((long)memRows * rowBytes), 2 << 20);
        if (OperatingSystem.IsLinux()) Madvise((nint)w, (nuint)((long)memRows * rowBytes), 14);
        for (int r = 0; r < memRows; r++)
        {
            if (r < 64) for (int c = 0; c < cols; c++) src[c] = sigma > 0 ? (float)(sigma * Gaussian(rng)) : (float)(rng.NextDouble() - 0.5);
            var row = new Span<byte>(w + (long)r * rowBytes, rowBytes);
            if (GgmlTypeInfo.IsLattice(type))
                RandomLatticeRow(type, rng, row); // types Cria reads but does not write: random blocks with a small scale
            else Quantize.Row(type, src, row);
        }
        for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
        // F16: the kernels the model runs for a matrix without infinities (WeightMatrix.NonFiniteF16); --checked: the ones for a matrix with
        bool finite = !checkedF16 && type == GgmlType.F16 && !RowKernels.HasNonFiniteF16((ushort*)w, (long)memRows * cols);
        int xBytes = RowKernels.ActivationRowBytes(type, cols);
        // activations on a cache-line boundary, as InferenceContext places them (a straddling 64-byte load costs more)
        byte* x = (byte*)NativeMemory.AlignedAlloc((nuint)xBytes, 64);
        RowKernels.PrepareActivations(type, src, new Span<byte>(x, xBytes));
        var y = new float[memRows];
        // --ggml: ggml-cpu's own vec_dot for this type on the same rows (one thread), where Cria's activation row is
        // ggml's vec-dot type as it is (the lattice i-quants, Q8_K's standard layout)
        delegate* unmanaged<int, float*, nuint, byte*, nuint, byte*, nuint, int, void> ggmlDot = null;
        if (ggml)
        {
            if (threads != 1 || pair || xBytes != GgmlTypeInfo.RowBytes(VecDot.ActivationType(type), cols))
            { Console.Error.WriteLine("--ggml: one thread, no --pair, and a type whose activations Cria keeps in ggml's layout"); return 2; }
            nint h = LlamaEngine.LoadedLibrary("libggml-cpu.so");
            ((delegate* unmanaged<void>)NativeLibrary.GetExport(h, "ggml_cpu_init"))();
            byte* traits = ((delegate* unmanaged<int, byte*>)NativeLibrary.GetExport(h, "ggml_get_type_traits_cpu"))((int)type);
            ggmlDot = *(delegate* unmanaged<int, float*, nuint, byte*, nuint, byte*, nuint, int, void>*)(traits + 8);
            Console.WriteLine($"ggml-cpu's vec_dot for {type}");
        }
        fixed (float* yp = y)
        {
            foreach (var (name, rows, inner) in new[] { ("L2", l2Rows, Math.Max(1, memRows / l2Rows)), ("memory", memRows, 1) })
            {
                // modes (chunk sizes) alternate within each rep, so the machine's drift hits them alike
                var gbs = chunkList.Select(_ => new List<double>()).ToArray();
                for (int rep = 0; rep < reps + 1; rep++)
                    for (int m = 0; m < chunkList.Length; m++)
                    {
                        int chunkKiB = chunkList[m];
                        var sw = Stopwatch.StartNew();
                        if (threads == 1 && pair)
                        {
                            // rows r and r + rows/2 together: two streams (RowKernels.RunPair)
                            int h = rows / 2;
                            if (RowKernels.LegacyGroupPair(type)) // groups of eight rows (RowKernels.RunGroupPair), as MatMulJob pairs them
                                for (int k = 0; k < inner; k++)
                                    for (int r = 0; r + 8 <= h; r += 8)
                                        RowKernels.RunGroupPair(type, w + (long)r * rowBytes, w + (long)(r + h) * rowBytes, rowBytes, x, cols, yp + r, yp + r + h);
                            else
                                for (int k = 0; k < inner; k++)
                                    for (int r = 0; r < h; r++)
                                        RowKernels.RunPair(type, w + (long)r * rowBytes, w + (long)(r + h) * rowBytes, x, cols, out yp[r], out yp[r + h], finite);
                        }
                        else if (threads == 1 && ggmlDot != null)
                            for (int k = 0; k < inner; k++)
                                for (int r = 0; r < rows; r++) ggmlDot(cols, yp + r, 0, w + (long)r * rowBytes, 0, x, 0, 1);
                        else if (threads == 1)
                            for (int k = 0; k < inner; k++) RowKernels.RunRows(type, w, rowBytes, 0, rows, x, xBytes, cols, yp, finite);
                        else
                        {
                            byte* wp = w; byte* xp = x; float* ypp = yp; int rr = rows, inn = inner;
                            int chunkRows = Math.Max(1, chunkKiB * 1024 / rowBytes), next = 0;
                            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                            {
                                if (chunkKiB == 0) // each thread its own contiguous share of the rows
                                {
                                    var (r0, r1) = WorkerPool.Split(rr, t, threads);
                                    int h = (r1 - r0) / 2;
                                    for (int k = 0; k < inn; k++)
                                        if (pair) // the two halves of its share side by side, as MatMulJob runs decode
                                            for (int r = r0; r < r0 + h; r++)
                                                RowKernels.RunPair(type, wp + (long)r * rowBytes, wp + (long)(r + h) * rowBytes, xp, cols, out ypp[r], out ypp[r + h], finite);
                                        else RowKernels.RunRows(type, wp, rowBytes, r0, r1, xp, xBytes, cols, ypp, finite);
                                }
                                else // chunks from a shared counter, as MatMulJob hands them out
                                    for (int c; (c = Interlocked.Add(ref next, chunkRows) - chunkRows) < rr * inn;)
                                    {
                                        int r0 = c % rr, r1 = Math.Min(rr, r0 + chunkRows);
                                        RowKernels.RunRows(type, wp, rowBytes, r0, r1, xp, xBytes, cols, ypp, finite);
                                    }
                            });
                        }
                        double s = sw.Elapsed.TotalSeconds;
                        if (rep > 0) gbs[m].Add((double)rows * rowBytes * inner / s / 1e9);
                    }
                if (name == "memory")
                {
                    // the same bytes read by a plain sum on the same threads: the read bandwidth the kernel could reach
                    var sums = new List<double>();
                    long bytes = (long)rows * rowBytes;
                    for (int rep = 0; rep < reps + 1; rep++)
                    {
                        var sw = Stopwatch.StartNew();
                        byte* wp = w;
                        Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                        {
                            long a = bytes * t / threads / 256 * 256, b = bytes * (t + 1) / threads / 256 * 256;
                            Sink += ReadSum(wp + a, b - a);
                        });
                        if (rep > 0) sums.Add(bytes / sw.Elapsed.TotalSeconds / 1e9);
                    }
                    sums.Sort();
                    Console.WriteLine($"plain read of the same bytes ({threads} thread{(threads > 1 ? "s" : "")}): median {sums[sums.Count / 2]:F1} GB/s  (min {sums[0]:F1}, max {sums[^1]:F1})");
                }
                for (int m = 0; m < chunkList.Length; m++)
                {
                    var g = gbs[m]; g.Sort();
                    string mode = threads == 1 ? "" : chunkList[m] == 0 ? $", {threads} threads, halves" : $", {threads} threads, {chunkList[m]} KiB chunks";
                    Console.WriteLine($"{type} {cols} cols, {name,-6} ({rows} rows × {inner}{mode}): median {g[g.Count / 2]:F1} GB/s  (min {g[0]:F1}, max {g[^1]:F1})  y[1]={y[1]:G6}");
                }
            }
        }
        NativeMemory.AlignedFree(w);
        NativeMemory.AlignedFree(x);
        return 0;
    }
}
