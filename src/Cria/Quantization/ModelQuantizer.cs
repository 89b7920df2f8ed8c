using System.Diagnostics;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Quantization;

/// <summary>Settings of <see cref="ModelQuantizer.Run"/> (llama_model_quantize_params).</summary>
public sealed record QuantizeOptions
{
    public LlamaFileType FileType { get; init; } = LlamaFileType.Q4_K_M;
    /// <summary>Worker threads over rows (0 = all cores).</summary>
    public int Threads { get; init; }
    /// <summary>Per tensor name, the importance of each input column (mean squared activation); see <see cref="Imatrix"/>.</summary>
    public IReadOnlyDictionary<string, float[]>? Imatrix { get; init; }
    /// <summary>With an imatrix, the encodings each block chooses among by activation-weighted error
    /// (<see cref="Quantize.RowCalibrated"/>); <see cref="CalibratedCandidates.Ggml"/> alone is llama-quantize --imatrix.</summary>
    public CalibratedCandidates ImatrixCandidates { get; init; } = CalibratedCandidates.Default;
    /// <summary>With an imatrix, multiply each row's scales by one factor so that the importance-weighted regression
    /// coefficient of the quantized row on the original is 1 (<see cref="Quantize.UnbiasRowScale"/>); false keeps the
    /// fitted scales (with <see cref="CalibratedCandidates.Ggml"/> alone: llama-quantize --imatrix's bytes).</summary>
    public bool ImatrixUnbiasedRowScale { get; init; } = true;
    /// <summary>Per tensor name, the GPTQ factor of its input's calibration Gram matrix (<see cref="Gptq.Collect"/>): those
    /// tensors are quantized with <see cref="Quantize.RowGptq"/> (error feedback) instead of round-to-nearest; the
    /// per-tensor types stay the mix's.</summary>
    public IReadOnlyDictionary<string, GptqFactor>? Gptq { get; init; }
    /// <summary>Per tensor name, an importance for every weight ([rows, cols], e.g. the diagonal Fisher of
    /// <see cref="Quantization.Fisher.Collect"/>): each row is quantized with its own row of importances as the
    /// weights of the rounding error (<see cref="Quantize.RowCalibrated"/>, <see cref="FisherCandidates"/>). The
    /// per-tensor types stay the plain mix's.</summary>
    public IReadOnlyDictionary<string, float[]>? Fisher { get; init; }
    /// <summary>With <see cref="Fisher"/>, the encodings each block chooses among.</summary>
    public CalibratedCandidates FisherCandidates { get; init; } = CalibratedCandidates.Default;
    /// <summary>With <see cref="Gptq"/>, how each block's scales are chosen from the updated weights.</summary>
    public GptqScales GptqScales { get; init; } = GptqScales.Reference;
    /// <summary>Every quantized tensor gets the file type's base type (llama-quantize --pure).</summary>
    public bool Pure { get; init; }
    /// <summary>Quantize output.weight too (llama.cpp's default); false keeps it as it is in the input.</summary>
    public bool QuantizeOutput { get; init; } = true;
    /// <summary>Accept already-quantized input tensors (dequantized, then quantized again).</summary>
    public bool AllowRequantize { get; init; }
    /// <summary>Replace a tensor's values before quantization (AWQ's scaled weights and norms); null = the file's values.</summary>
    public Func<string, float[]?>? Override { get; init; }
    /// <summary>Called after each tensor with (tensors done, tensor count, bytes of input done, total input bytes, name).</summary>
    public Action<int, int, long, long, string>? Progress { get; init; }
    /// <summary>Replace an existing output file.</summary>
    public bool Force { get; init; }
}

/// <summary>What one tensor became.</summary>
public readonly record struct QuantizedTensor(string Name, GgmlType From, GgmlType To, long BytesIn, long BytesOut);

public sealed record QuantizeReport(IReadOnlyList<QuantizedTensor> Tensors, long BytesIn, long BytesOut, long WeightCount, double Seconds, int Fallbacks)
{
    /// <summary>Bits per weight over the quantizable tensors and all others (what llama.cpp reports as model size × 8 / parameters).</summary>
    public double BitsPerWeight => WeightCount > 0 ? BytesOut * 8.0 / WeightCount : 0;
}

/// <summary>
/// llama-quantize in C#: reads a GGUF model, chooses each tensor's type as <c>llama_tensor_get_type</c> does
/// (<see cref="QuantMix"/>), quantizes rows in parallel with the same quantizers as ggml (reference path, or the
/// importance-weighted <c>*_impl</c> path when an imatrix is given) and writes the GGUF atomically (temp file + rename):
/// an existing output is refused unless <see cref="QuantizeOptions.Force"/>, and an interrupted run leaves no file
/// under the output name. Metadata is copied with <c>general.quantization_version = 2</c> and <c>general.file_type</c>
/// set, tensors are written in llama.cpp's order.
/// </summary>
public static class ModelQuantizer
{
    public static QuantizeReport Run(string input, string output, QuantizeOptions o, CancellationToken cancel = default)
    {
        if (!o.Force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        if (Path.GetFullPath(input) == Path.GetFullPath(output)) throw new CriaException($"{output}: input and output are the same file");
        var sw = Stopwatch.StartNew();
        using var f = GgufFile.Open(input);
        var plan = PlanTypes(f, o, out int fallbacks);
        int threads = o.Threads > 0 ? o.Threads : Environment.ProcessorCount;
        Kernels.WorkerPool.CheckThreads(threads);

        var w = new GgufWriter();
        w.CopyMetadataFrom(f);
        // gguf_set_val_* on an existing key moves it to the end, so these two end the metadata as in llama.cpp's files.
        w.Remove("general.quantization_version").Remove("general.file_type");
        w.Set("general.quantization_version", 2u);
        w.Set("general.file_type", (uint)o.FileType);

        // Refused before anything is written: an already-quantized input that nothing replaces, and a tensor larger than
        // the one .NET array each tensor's values and output bytes pass through (QuantizeTensor, GgufWriter).
        foreach (var (t, newType) in plan)
        {
            if (newType != t.Type && IsBlockType(t.Type) && !o.AllowRequantize && o.Override?.Invoke(t.Name) == null)
                throw new CriaException($"{input}: tensor '{t.Name}' is already {t.Type}; requantizing is disabled (use --allow-requantize)");
            long outBytes = GgmlTypeInfo.RowBytes(newType, t.RowLength) * t.RowCount;
            if (t.ElementCount > Array.MaxLength || outBytes > Array.MaxLength || t.ByteSize > Array.MaxLength)
                throw new CriaException($"{input}: tensor '{t.Name}' ({t.RowCount} rows × {t.RowLength}, {t.Type} → {newType}) is too large to quantize: " +
                    $"its values or bytes pass through one array of at most {Array.MaxLength:N0} elements");
        }

        // Each tensor is quantized when the writer reaches it (GgufWriter streams produced tensors in order), so the
        // output is never held whole in memory: one tensor's F32 values and its quantized bytes at a time.
        var report = new List<QuantizedTensor>(plan.Count);
        long totalIn = plan.Sum(p => p.Tensor.ByteSize), doneIn = 0, bytesOut = 0, weights = 0;
        float[] values = [];   // [elements] the current tensor as F32, reused
        byte[] outBuf = [];    // [bytes] the current tensor's output, reused: the writer has written it before the next is made
        for (int ti = 0; ti < plan.Count; ti++)
        {
            var (t, newType) = plan[ti];
            int index = ti;
            w.AddTensor(t.Name, t.Shape, newType, () =>
            {
                cancel.ThrowIfCancellationRequested();
                var data = QuantizeTensor(f, t, newType, o, threads, ref values, ref outBuf, cancel);
                report.Add(new QuantizedTensor(t.Name, t.Type, newType, t.ByteSize, data.Length));
                bytesOut += data.Length;
                weights += t.ElementCount;
                doneIn += t.ByteSize;
                o.Progress?.Invoke(index + 1, plan.Count, doneIn, totalIn, t.Name);
                return data;
            });
        }
        cancel.ThrowIfCancellationRequested();
        w.Write(output);
        return new QuantizeReport(report, totalIn, bytesOut, weights, sw.Elapsed.TotalSeconds, fallbacks);
    }

    /// <summary>One tensor's bytes in <paramref name="newType"/>: copied when the type stays and nothing replaces it,
    /// else read as F32 (into <paramref name="values"/>, reused across tensors) and quantized by the path the options
    /// choose (per-weight Fisher importances, GPTQ, or round-to-nearest with or without an imatrix).</summary>
    static ReadOnlyMemory<byte> QuantizeTensor(GgufFile f, GgufTensorInfo t, GgmlType newType, QuantizeOptions o, int threads, ref float[] values, ref byte[] output, CancellationToken cancel)
    {
        float[]? over = o.Override?.Invoke(t.Name);
        long outBytes = GgmlTypeInfo.RowBytes(newType, t.RowLength) * t.RowCount;
        if (output.Length < outBytes) output = new byte[outBytes];
        var dst = output;
        if (newType == t.Type && over == null)
        {
            f.TensorData(t).CopyTo(dst);
            return new ReadOnlyMemory<byte>(dst, 0, (int)outBytes);
        }
        long n = t.ElementCount;
        float[] src;
        if (over != null)
        {
            if (over.Length != n) throw new CriaException($"tensor '{t.Name}': replacement has {over.Length} values, expected {n}");
            src = over;
        }
        else
        {
            if (values.Length < n) values = new float[n];
            DequantizeMatrix(f, t, values, threads);
            src = values;
        }
        float[]? qw = null;
        // A stacked expert tensor {cols, rows, experts} has one importance vector per expert, one after the other
        // (QuantizeMatrixInto hands each block of rows its own).
        long experts = t.Shape.Length == 3 ? t.Shape[2] : 1;
        if (o.Imatrix != null && IsBlockType(newType) && o.Imatrix.TryGetValue(t.Name, out var im))
        {
            if (im.Length != t.RowLength * experts)
            {
                if (t.Name != "token_embd.weight")
                    throw new CriaException($"imatrix size {im.Length} is different from tensor size {t.RowLength * experts} for {t.Name}");
            }
            else qw = im;
        }
        if (o.Fisher != null && IsBlockType(newType) && o.Fisher.TryGetValue(t.Name, out var fisher))
        {
            if (fisher.Length != t.ElementCount) throw new CriaException($"Fisher importances have {fisher.Length} values for tensor '{t.Name}' of {t.ElementCount}");
            QuantizeMatrixInto(dst, newType, src, (int)t.RowLength, (int)t.RowCount, null, threads, cancel, o.FisherCandidates, RowImportance(fisher), false);
            return new ReadOnlyMemory<byte>(dst, 0, (int)outBytes);
        }
        if (o.Gptq != null && Quantize.GptqSupports(newType) && o.Gptq.TryGetValue(t.Name, out var gf))
        {
            if (gf.Cols != t.RowLength) throw new CriaException($"GPTQ statistics have {gf.Cols} input columns for tensor '{t.Name}' with rows of {t.RowLength}");
            QuantizeMatrixGptqInto(dst, newType, src, (int)t.RowLength, (int)t.RowCount, gf, o.GptqScales, threads, cancel);
            return new ReadOnlyMemory<byte>(dst, 0, (int)outBytes);
        }
        QuantizeMatrixInto(dst, newType, src, (int)t.RowLength, (int)t.RowCount, qw, threads, cancel, o.ImatrixCandidates, null, qw != null && o.ImatrixUnbiasedRowScale);
        return new ReadOnlyMemory<byte>(dst, 0, (int)outBytes);
    }

    /// <summary>Every tensor of <paramref name="f"/> in llama.cpp's order with the type llama-quantize gives it
    /// (its own type when it is not quantized).</summary>
    public static List<(GgufTensorInfo Tensor, GgmlType To)> PlanTypes(GgufFile f, QuantizeOptions o, out int fallbacks)
    {
        var tensors = f.Tensors.ToList();
        tensors.Sort((a, b) => QuantMix.TensorOrder(a.Name, b.Name));
        string a = f.Get<string>("general.architecture", "llama") + "."; // llama.*, olmo2.*
        int nLayer = f.Get<int>(a + "block_count", 0), nHead = f.Get<int>(a + "attention.head_count", 1);
        int nHeadKv = f.Get<int>(a + "attention.head_count_kv", nHead);
        int nAttnWv = tensors.Count(t => t.Name.Contains("attn_v.weight", StringComparison.Ordinal) || t.Name.Contains("attn_qkv.weight", StringComparison.Ordinal));
        bool hasOutput = tensors.Any(t => t.Name == "output.weight");
        var mix = new QuantMix(o.FileType, nLayer, nHead, nHeadKv, nAttnWv, hasOutput, o.Imatrix != null, f.Get<int>(a + "expert_count", 0));
        var plan = new List<(GgufTensorInfo, GgmlType)>(tensors.Count);
        foreach (var t in tensors)
        {
            var newType = t.Type;
            if (QuantMix.IsQuantizable(t.Name, t.Shape.Length, o.QuantizeOutput))
            {
                newType = mix.DefaultType;
                if (!o.Pure && IsBlockType(mix.DefaultType)) newType = mix.TypeFor(t.Name, t.RowLength);
                else if (t.RowLength % GgmlTypeInfo.BlockSize(newType) != 0)
                    throw new CriaException($"tensor '{t.Name}': rows of {t.RowLength} elements cannot be stored as {newType}");
            }
            if (newType != t.Type && QuantMix.RequiresImatrix(t.Name, newType, o.FileType)
                && o.Imatrix?.ContainsKey(t.Name) != true && o.Fisher?.ContainsKey(t.Name) != true)
                throw new CriaException($"this quantization requires an importance matrix: tensor '{t.Name}' would be {newType}, which llama-quantize " +
                    $"writes only with one (make one with `cria imatrix MODEL TEXT -o FILE`, then pass --imatrix FILE)");
            plan.Add((t, newType));
        }
        fallbacks = mix.Fallbacks;
        return plan;
    }

    /// <summary>The tensor's values as F32 into <paramref name="dst"/>, rows split over the workers.</summary>
    static unsafe void DequantizeMatrix(GgufFile f, GgufTensorInfo t, float[] dst, int threads)
    {
        int cols = (int)t.RowLength, rows = (int)t.RowCount;
        int rowBytes = (int)GgmlTypeInfo.RowBytes(t.Type, cols);
        byte* p = f.TensorPointer(t);
        Parallel.For(0, Math.Max(1, threads), new ParallelOptions { MaxDegreeOfParallelism = threads }, w =>
        {
            int r0 = (int)((long)rows * w / threads), r1 = (int)((long)rows * (w + 1) / threads);
            for (int r = r0; r < r1; r++)
                Dequantize.Row(t.Type, new ReadOnlySpan<byte>(p + (long)r * rowBytes, rowBytes), dst.AsSpan(r * cols, cols));
        });
    }

    /// <summary>Per-weight importances as quantizer weights: a weight the calibration never moved (F = 0, e.g. a dead
    /// input) keeps a small weight, 10⁻⁶ of the tensor's mean, so that no block is left with all-zero weights.</summary>
    static float[] RowImportance(float[] f)
    {
        double mean = 0;
        foreach (float v in f) mean += v;
        mean /= Math.Max(1, f.Length);
        float floor = (float)(mean * 1e-6);
        if (!(floor > 0)) floor = float.Epsilon;
        var w = new float[f.Length];
        for (int i = 0; i < f.Length; i++) w[i] = Math.Max(f[i], floor);
        return w;
    }

    static bool IsBlockType(GgmlType t) => t is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16);

    /// <summary>GPTQ for a whole matrix: <see cref="Quantize.RowGptq"/> per row (rows are independent and share the
    /// factor), rows split over the workers as in <see cref="QuantizeMatrix"/>.</summary>
    public static byte[] QuantizeMatrixGptq(GgmlType type, float[] values, int cols, int rows, GptqFactor factor, GptqScales scales, int threads, CancellationToken cancel = default)
    {
        var dst = new byte[GgmlTypeInfo.RowBytes(type, cols) * rows];
        QuantizeMatrixGptqInto(dst, type, values, cols, rows, factor, scales, threads, cancel);
        return dst;
    }

    /// <summary><see cref="QuantizeMatrixGptq"/> into the first rows × row-bytes of <paramref name="dst"/>.</summary>
    static void QuantizeMatrixGptqInto(byte[] dst, GgmlType type, float[] values, int cols, int rows, GptqFactor factor, GptqScales scales, int threads, CancellationToken cancel)
    {
        int rowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        Parallel.For(0, rows, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, threads), CancellationToken = cancel },
            r => Quantize.RowGptq(type, values.AsSpan(r * cols, cols), dst.AsSpan(r * rowBytes, rowBytes), factor, scales));
    }

    /// <summary>Quantizes rows × cols values (row-major) to <paramref name="type"/>, rows split over <paramref name="threads"/> workers
    /// in chunks of at least 16384 values (llama.cpp's chunking); every row's bytes depend on that row alone. With
    /// <paramref name="quantWeights"/>, each block takes the best of <paramref name="candidates"/> (<see cref="Quantize.RowCalibrated"/>).</summary>
    public static byte[] QuantizeMatrix(GgmlType type, float[] values, int cols, int rows, float[]? quantWeights, int threads, CancellationToken cancel = default,
        CalibratedCandidates candidates = CalibratedCandidates.Default, float[]? rowWeights = null)
    {
        var dst = new byte[GgmlTypeInfo.RowBytes(type, cols) * rows];
        QuantizeMatrixInto(dst, type, values, cols, rows, quantWeights, threads, cancel, candidates, rowWeights, false);
        return dst;
    }

    /// <summary><see cref="QuantizeMatrix"/> into the first rows × row-bytes of <paramref name="dst"/>.</summary>
    static void QuantizeMatrixInto(byte[] dst, GgmlType type, float[] values, int cols, int rows, float[]? quantWeights, int threads, CancellationToken cancel,
        CalibratedCandidates candidates, float[]? rowWeights, bool unbiasedRowScale)
    {
        if (rowWeights != null && rowWeights.Length != (long)rows * cols) throw new ArgumentException($"{rowWeights.Length} row weights for {rows} × {cols} values", nameof(rowWeights));
        // quantWeights may hold one vector of cols per equal block of rows (a stacked expert tensor: one per expert).
        int slices = quantWeights == null ? 1 : quantWeights.Length / cols;
        if (quantWeights != null && (quantWeights.Length != (long)slices * cols || slices < 1 || rows % slices != 0))
            throw new ArgumentException($"{quantWeights.Length} importances for {rows} rows of {cols}", nameof(quantWeights));
        int rowsPerSlice = rows / slices;
        int rowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        int rowsPerChunk = Math.Max(1, (32 * 512 + cols - 1) / cols);
        int chunks = (rows + rowsPerChunk - 1) / rowsPerChunk;
        int next = -1;
        void Work()
        {
            int c;
            while ((c = Interlocked.Increment(ref next)) < chunks)
            {
                if (cancel.IsCancellationRequested) return;
                int r0 = c * rowsPerChunk, r1 = Math.Min(rows, r0 + rowsPerChunk);
                for (int r = r0; r < r1; r++)
                    Quantize.RowCalibrated(type, values.AsSpan(r * cols, cols), dst.AsSpan(r * rowBytes, rowBytes),
                        rowWeights != null ? new ReadOnlySpan<float>(rowWeights, r * cols, cols)
                        : quantWeights != null ? new ReadOnlySpan<float>(quantWeights, r / rowsPerSlice * cols, cols) : default, candidates, unbiasedRowScale);
            }
        }
        int nt = Math.Max(1, Math.Min(threads, chunks));
        if (nt == 1) Work();
        else
        {
            var workers = new Thread[nt - 1];
            for (int i = 0; i < workers.Length; i++) { workers[i] = new Thread(Work) { IsBackground = true }; workers[i].Start(); }
            Work();
            foreach (var t in workers) t.Join();
        }
        cancel.ThrowIfCancellationRequested();
    }
}
