using System.Diagnostics;
using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Quantization;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// <c>Cria.Bench ggml-quantize IN OUT --type iq2_xxs|iq2_xs|iq2_s|iq3_xxs|iq3_s|iq1_s|iq1_m [--imatrix FILE] [--threads 2]</c>:
/// writes a GGUF in a type Cria reads but does not write, with ggml's own row quantizer (<c>ggml_quantize_chunk</c>,
/// loaded by LLamaSharp), for side-by-side runs and the quality table. Every <c>blk.*</c> matrix takes the type, under
/// the imatrix's importances (llama.cpp's legacy .dat, as <c>cria imatrix</c> writes it); without one, IQ3 types as
/// llama-quantize makes them and IQ2/IQ1 under unit importances (their quantizers need some); the token embedding becomes Q4_K and the output head Q5_K (Cria's quantizers),
/// as llama.cpp's low-bit mixes give them more bits. Not llama.cpp's per-tensor mix rules. Bench-only: the product
/// never calls llama.cpp.
/// </summary>
static unsafe class GgmlQuantize
{
    public static int Run(string[] args)
    {
        if (args.Length < 2) { Console.Error.WriteLine("usage: ggml-quantize IN OUT --type T [--imatrix FILE] [--threads N]"); return 2; }
        string src = args[0], dst = args[1];
        GgmlType type = GgmlType.IQ2_XXS;
        string? imatrix = null;
        int threads = 2;
        for (int i = 2; i < args.Length; i++)
            switch (args[i])
            {
                case "--type": type = Enum.Parse<GgmlType>(args[++i], ignoreCase: true); break;
                case "--imatrix": imatrix = args[++i]; break;
                case "--threads": threads = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        var sw = Stopwatch.StartNew();
        File(src, dst, type, imatrix == null ? null : Imatrix.Load(imatrix).Values, threads, progress: true);
        Console.WriteLine($"\nwrote {dst} ({new FileInfo(dst).Length / (1 << 20)} MiB) in {sw.Elapsed.TotalSeconds:F1} s");
        return 0;
    }

    /// <summary>llama_ftype of the llama.cpp mix named after the type (general.file_type).</summary>
    public static uint FileType(GgmlType type) => type switch
    {
        GgmlType.IQ2_XXS => 19, GgmlType.IQ2_XS => 20, GgmlType.IQ3_XXS => 23, GgmlType.IQ1_S => 24, GgmlType.IQ3_S => 26,
        GgmlType.IQ2_S => 28, GgmlType.IQ1_M => 31,
        _ => throw new ArgumentException($"{type}: ggml-quantize writes the lattice i-quants (IQ2_XXS … IQ1_M)"),
    };

    public static void File(string src, string dst, GgmlType type, IReadOnlyDictionary<string, float[]>? imatrix, int threads, bool progress = false)
    {
        uint ftype = FileType(type);
        var chunk = (delegate* unmanaged<int, float*, byte*, long, long, long, float*, nuint>)NativeLibrary.GetExport(LlamaEngine.LoadedLibrary("libggml-base.so"), "ggml_quantize_chunk");
        using var f = GgufFile.Open(src);
        var w = new GgufWriter().CopyMetadataFrom(f);
        w.Set("general.file_type", ftype);
        foreach (var t in f.Tensors)
        {
            bool layer = t.Name.StartsWith("blk.", StringComparison.Ordinal) && t.Shape.Length >= 2 && t.RowLength % 256 == 0
                && !t.Name.Contains("ffn_gate_inp", StringComparison.Ordinal);
            GgmlType to = layer ? type : t.Name == "token_embd.weight" ? GgmlType.Q4_K : t.Name == "output.weight" ? GgmlType.Q5_K : t.Type;
            if (to == t.Type) { w.AddTensor(t.Name, t.Shape, t.Type, f.TensorData(t).ToArray()); continue; }
            int n = (int)t.RowLength;
            long rows = t.RowCount, rowBytes = GgmlTypeInfo.RowBytes(to, n);
            var x = new float[t.ElementCount];
            Dequantize.Row(t.Type, f.TensorData(t), x);
            var q = new byte[rows * rowBytes];
            if (layer)
            {
                // without an imatrix: IQ3 types as llama-quantize runs them (no importances: ggml weighs by x²); the IQ2
                // and IQ1 quantizers need importances (llama-quantize refuses them), so those get unit importances
                float[]? imp;
                if (imatrix != null && imatrix.TryGetValue(t.Name, out var v))
                {
                    if (v.Length != n) throw new InvalidOperationException($"imatrix entry {t.Name} has {v.Length} values, the rows {n}");
                    imp = v;
                }
                else if (to is GgmlType.IQ3_XXS or GgmlType.IQ3_S) imp = null;
                else { imp = new float[n]; Array.Fill(imp, 1f); }
                long per = (rows + threads - 1) / threads;
                Parallel.For(0, threads, k =>
                {
                    long r0 = k * per, r1 = Math.Min(rows, r0 + per);
                    if (r1 <= r0) return;
                    fixed (float* xp = x) fixed (byte* qp = q) fixed (float* ip = imp)
                        chunk((int)to, xp, qp, r0 * n, r1 - r0, n, imp == null ? null : ip);
                });
            }
            else Quantize.Row(to, x, q);
            w.AddTensor(t.Name, t.Shape, to, q);
            if (progress) Console.Error.Write($"\r{t.Name} → {to}        ");
        }
        w.Write(dst);
    }
}
