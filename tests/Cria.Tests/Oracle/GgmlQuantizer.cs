using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Tests.Oracle;

/// <summary>
/// ggml's own row quantizer, <c>ggml_quantize_chunk</c>, called in the libggml-base that LLamaSharp loaded: the function
/// llama-quantize runs for every tensor, with or without an importance matrix. LLamaSharp's quantize API cannot pass
/// an imatrix; this can, so the weighted (<c>*_impl</c>) quantizers are compared byte for byte too.
/// </summary>
public static unsafe class GgmlQuantizer
{
    static readonly Lazy<nint> Base = new(() => Library("libggml-base.so"));
    static readonly Lazy<nint> Cpu = new(() => Library("libggml-cpu.so"));
    static readonly Lazy<nint> Chunk = new(() => NativeLibrary.GetExport(Base.Value, "ggml_quantize_chunk"));

    static nint Library(string file)
    {
        LlamaCpp.EnsureLoaded();
        // The library LLamaSharp picked for this CPU (avx512/avx2/… folder) is already mapped; take that one.
        string? path = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 6 && f[5].EndsWith("/" + file, StringComparison.Ordinal)).Select(f => f[5]).FirstOrDefault();
        if (path == null) throw new InvalidOperationException($"{file} is not loaded after LLamaSharp's initialisation");
        return NativeLibrary.Load(path);
    }

    /// <summary>ggml's own dequantizer of <paramref name="type"/> (the exported <c>dequantize_row_*</c> of libggml-base).</summary>
    public static float[] Dequantize(GgmlType type, byte[] src, int n)
    {
        if (src.Length < GgmlTypeInfo.RowBytes(type, n)) throw new ArgumentException("src is shorter than n values");
        var f = (delegate* unmanaged<byte*, float*, long, void>)NativeLibrary.GetExport(Base.Value, "dequantize_row_" + type.ToString().ToLowerInvariant());
        var y = new float[n];
        fixed (byte* s = src) fixed (float* d = y) f(s, d, n);
        return y;
    }

    /// <summary>ggml-cpu's dot product of a <paramref name="type"/> row with an activation row already in its vec-dot
    /// type (<c>ggml_get_type_traits_cpu(type)->vec_dot</c>, the SIMD kernel llama.cpp runs on this CPU).</summary>
    public static float VecDot(GgmlType type, byte[] weights, byte[] activations, int n)
    {
        ((delegate* unmanaged<void>)NativeLibrary.GetExport(Cpu.Value, "ggml_cpu_init"))();
        // struct ggml_type_traits_cpu { from_float; vec_dot; enum ggml_type vec_dot_type; int64_t nrows; }
        byte* traits = ((delegate* unmanaged<int, byte*>)NativeLibrary.GetExport(Cpu.Value, "ggml_get_type_traits_cpu"))((int)type);
        var vecDotType = (GgmlType)(*(int*)(traits + 16));
        if (vecDotType != Cria.Kernels.VecDot.ActivationType(type)) throw new InvalidOperationException($"ggml's vec_dot_type for {type} is {vecDotType}: the traits layout is not the expected one");
        var dot = *(delegate* unmanaged<int, float*, nuint, byte*, nuint, byte*, nuint, int, void>*)(traits + 8);
        float s;
        fixed (byte* x = weights) fixed (byte* y = activations) dot(n, &s, 0, x, 0, y, 0, 1);
        return s;
    }

    /// <summary>ggml_quantize_chunk(type, src, dst, 0, rows, n_per_row, imatrix): <paramref name="src"/> is rows × nPerRow
    /// values; <paramref name="imatrix"/> (nPerRow importances, or null) is shared by every row, as llama-quantize passes it.</summary>
    public static byte[] Quantize(GgmlType type, float[] src, int nPerRow, float[]? imatrix)
    {
        if (src.Length % nPerRow != 0) throw new ArgumentException("src is not a whole number of rows");
        long rows = src.Length / nPerRow;
        var dst = new byte[GgmlTypeInfo.RowBytes(type, nPerRow) * rows];
        var f = (delegate* unmanaged<int, float*, byte*, long, long, long, float*, nuint>)Chunk.Value;
        nuint written;
        fixed (float* s = src) fixed (byte* d = dst) fixed (float* q = imatrix)
            written = f((int)type, s, d, 0, rows, nPerRow, imatrix == null ? null : q);
        if ((long)written != dst.Length) throw new InvalidOperationException($"ggml wrote {written} bytes, expected {dst.Length}");
        return dst;
    }

    /// <summary>Rewrites an F32 GGUF with every matrix whose rows are a multiple of 256 (the router aside) quantized by ggml to
    /// <paramref name="type"/>, under a random per-column importance matrix (the lattice i-quants require one): files in
    /// the lattice types made by llama.cpp's own quantizer, independent of Cria's.</summary>
    public static void QuantizeFile(string f32Path, string outPath, GgmlType type, int seed)
    {
        using var src = GgufFile.Open(f32Path);
        var w = new GgufWriter().CopyMetadataFrom(src);
        var rng = new Random(seed);
        foreach (var t in src.Tensors)
        {
            byte[] data = src.TensorData(t).ToArray();
            // the router stays F32, as llama-quantize leaves it
            if (t.Shape.Length < 2 || t.Type != GgmlType.F32 || t.RowLength % 256 != 0 || t.Name.Contains("ffn_gate_inp")) { w.AddTensor(t.Name, t.Shape, t.Type, data); continue; }
            var imp = new float[t.RowLength];
            for (int j = 0; j < imp.Length; j++) imp[j] = MathF.Exp((float)(rng.NextDouble() * 4 - 2));
            w.AddTensor(t.Name, t.Shape, type, Quantize(type, MemoryMarshal.Cast<byte, float>(data).ToArray(), (int)t.RowLength, imp));
        }
        w.Write(outPath);
    }
}
