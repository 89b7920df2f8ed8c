using System.Runtime.InteropServices;
using Cria.Tensors;

namespace Cria.Tests.Oracle;

/// <summary>
/// ggml's own row quantizer, <c>ggml_quantize_chunk</c>, called in the libggml-base that LLamaSharp loaded: the function
/// llama-quantize runs for every tensor, with or without an importance matrix. LLamaSharp's quantize API cannot pass
/// an imatrix; this can, so the weighted (<c>*_impl</c>) quantizers are compared byte for byte too.
/// </summary>
public static unsafe class GgmlQuantizer
{
    static readonly Lazy<nint> Chunk = new(() =>
    {
        LlamaCpp.EnsureLoaded();
        // The library LLamaSharp picked for this CPU (avx512/avx2/… folder) is already mapped; take that one.
        string? path = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 6 && f[5].EndsWith("/libggml-base.so", StringComparison.Ordinal)).Select(f => f[5]).FirstOrDefault();
        if (path == null) throw new InvalidOperationException("libggml-base.so is not loaded after LLamaSharp's initialisation");
        return NativeLibrary.GetExport(NativeLibrary.Load(path), "ggml_quantize_chunk");
    });

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
}
