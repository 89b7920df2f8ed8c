using System.Diagnostics;
using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Quantization;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// <c>Cria.Bench ggml-quantize IN OUT --type iq2_xxs|iq2_xs|iq2_s|iq3_xxs|iq3_s|iq1_s|iq1_m [--imatrix FILE] [--threads 2] [--cria]</c>:
/// writes a GGUF in a lattice type with ggml's own row quantizer (<c>ggml_quantize_chunk</c>,
/// loaded by LLamaSharp), for side-by-side runs and the quality table. Every <c>blk.*</c> matrix takes the type, under
/// the imatrix's importances (llama.cpp's legacy .dat, as <c>cria imatrix</c> writes it); without one, IQ3 types as
/// llama-quantize makes them and IQ2/IQ1 under unit importances (their quantizers need some); the token embedding becomes Q4_K and the output head Q5_K (Cria's quantizers),
/// as llama.cpp's low-bit mixes give them more bits. Not llama.cpp's per-tensor mix rules. Bench-only: the product
/// never calls llama.cpp. --cria: the same file from Cria's row quantizers (ggml's bytes; session 33 timed Cria's at 0.27–0.89 of ggml's time).
/// </summary>
static unsafe class GgmlQuantize
{
    public static int Run(string[] args)
    {
        if (args.Length < 2) { Console.Error.WriteLine("usage: ggml-quantize IN OUT --type T [--imatrix FILE] [--threads N] [--cria]"); return 2; }
        string src = args[0], dst = args[1];
        GgmlType type = GgmlType.IQ2_XXS;
        string? imatrix = null;
        int threads = 2;
        bool cria = false;
        for (int i = 2; i < args.Length; i++)
            switch (args[i])
            {
                case "--type": type = Enum.Parse<GgmlType>(args[++i], ignoreCase: true); break;
                case "--imatrix": imatrix = args[++i]; break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--cria": cria = true; break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        var sw = Stopwatch.StartNew();
        File(src, dst, type, imatrix == null ? null : Imatrix.Load(imatrix).Values, threads, progress: true, cria: cria);
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

    /// <summary><c>lattice-time IN --types iq2_xxs,… [--imatrix FILE] [--threads 2] [--runs 2]</c>: the file <see cref="File"/>
    /// writes, once with ggml's row quantizer and once with Cria's (<see cref="ModelQuantizer.QuantizeMatrix"/>, ggml's
    /// candidate only, as llama-quantize --imatrix), same threads, alternating who goes first; medians, ratio, and whether
    /// the two files are identical. Writes IN's directory/lattice-time-{ggml,cria}.gguf and deletes them.</summary>
    public static int Time(string[] args)
    {
        string src = args[0];
        string? imatrix = null;
        int threads = 2, runs = 2;
        var types = new List<GgmlType> { GgmlType.IQ2_XXS };
        for (int i = 1; i < args.Length; i++)
            switch (args[i])
            {
                case "--types": types = args[++i].Split(',').Select(t => Enum.Parse<GgmlType>(t, ignoreCase: true)).ToList(); break;
                case "--imatrix": imatrix = args[++i]; break;
                case "--threads": threads = int.Parse(args[++i]); break;
                case "--runs": runs = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        var im = imatrix == null ? null : Imatrix.Load(imatrix).Values;
        string dir = Path.GetDirectoryName(Path.GetFullPath(src))!;
        string og = Path.Combine(dir, "lattice-time-ggml.gguf"), oc = Path.Combine(dir, "lattice-time-cria.gguf");
        Console.WriteLine($"lattice-time: {src}, {threads} threads, {runs} runs each, alternating; imatrix {imatrix ?? "none"}; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        foreach (var type in types)
        {
            var tg = new List<double>(); var tc = new List<double>();
            bool same = true;
            for (int r = 0; r < runs; r++)
                for (int k = 0; k < 2; k++)
                {
                    bool cria = (k == 0) == (r % 2 == 0);
                    var sw = Stopwatch.StartNew();
                    File(src, cria ? oc : og, type, im, threads, cria: cria);
                    (cria ? tc : tg).Add(sw.Elapsed.TotalSeconds);
                    Console.WriteLine($"  {type} round {r + 1}: {(cria ? "Cria" : "ggml")} {sw.Elapsed.TotalSeconds:F1} s");
                    if (k == 1) same &= System.IO.File.ReadAllBytes(og).AsSpan().SequenceEqual(System.IO.File.ReadAllBytes(oc));
                }
            double mc = tc.Order().ElementAt(tc.Count / 2), mg = tg.Order().ElementAt(tg.Count / 2);
            if (tc.Count % 2 == 0) { mc = (tc.Order().ElementAt(tc.Count / 2 - 1) + mc) / 2; mg = (tg.Order().ElementAt(tg.Count / 2 - 1) + mg) / 2; }
            Console.WriteLine($"{type}: median Cria {mc:F1} s, ggml {mg:F1} s, ratio Cria/ggml {mc / mg:F2}; outputs identical: {same}");
        }
        System.IO.File.Delete(og); System.IO.File.Delete(oc);
        return 0;
    }

    /// <summary><c>lattice-micro [--types …] [--rows 256] [--reps 3]</c>: one thread, the same Gaussian rows of 2048 under the
    /// same random importances (none for the IQ3 types) through ggml's <c>ggml_quantize_chunk</c> and Cria's
    /// <c>Quantize.Row</c>, alternating, best of the reps in M values/s; and whether the bytes agree.</summary>
    public static int Micro(string[] args)
    {
        var types = new List<GgmlType> { GgmlType.IQ2_XXS, GgmlType.IQ2_XS, GgmlType.IQ2_S, GgmlType.IQ3_XXS, GgmlType.IQ3_S, GgmlType.IQ1_S, GgmlType.IQ1_M };
        int rows = 256, reps = 3;
        const int n = 2048;
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--types": types = args[++i].Split(',').Select(t => Enum.Parse<GgmlType>(t, ignoreCase: true)).ToList(); break;
                case "--rows": rows = int.Parse(args[++i]); break;
                case "--reps": reps = int.Parse(args[++i]); break;
                default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
            }
        var chunk = (delegate* unmanaged<int, float*, byte*, long, long, long, float*, nuint>)NativeLibrary.GetExport(LlamaEngine.LoadedLibrary("libggml-base.so"), "ggml_quantize_chunk");
        var rng = new Random(1);
        var x = new float[rows * n];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) * 0.02);
        var imp = new float[n];
        for (int j = 0; j < n; j++) imp[j] = MathF.Exp((float)(rng.NextDouble() * 4 - 2));
        Console.WriteLine($"lattice-micro: {rows} rows × {n}, one thread, best of {reps}; {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        foreach (var type in types)
        {
            float[]? w = type is GgmlType.IQ3_XXS or GgmlType.IQ3_S ? null : imp;
            long rb = GgmlTypeInfo.RowBytes(type, n);
            var qg = new byte[rb * rows]; var qc = new byte[rb * rows];
            fixed (float* xp = x) fixed (byte* qp = qg) fixed (float* ip = w) chunk((int)type, xp, qp, 0, 1, n, w == null ? null : ip); // tables
            Quantize.Row(type, x.AsSpan(0, n), qc.AsSpan(0, (int)rb), w);
            double bestG = double.MaxValue, bestC = double.MaxValue;
            for (int r = 0; r < reps; r++)
            {
                var sw = Stopwatch.StartNew();
                fixed (float* xp = x) fixed (byte* qp = qg) fixed (float* ip = w) chunk((int)type, xp, qp, 0, rows, n, w == null ? null : ip);
                bestG = Math.Min(bestG, sw.Elapsed.TotalSeconds);
                sw.Restart();
                for (int row = 0; row < rows; row++) Quantize.Row(type, x.AsSpan(row * n, n), qc.AsSpan((int)(row * rb), (int)rb), w);
                bestC = Math.Min(bestC, sw.Elapsed.TotalSeconds);
            }
            double mv = rows * (double)n / 1e6;
            Console.WriteLine($"{type,-8} Cria {mv / bestC,6:F2} M values/s   ggml {mv / bestG,6:F2} M values/s   ratio {bestG / bestC:F2}   bytes {(qg.AsSpan().SequenceEqual(qc) ? "identical" : "DIFFER")}");
        }
        return 0;
    }

    public static void File(string src, string dst, GgmlType type, IReadOnlyDictionary<string, float[]>? imatrix, int threads, bool progress = false, bool cria = false)
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
            byte[] q;
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
                if (cria) q = ModelQuantizer.QuantizeMatrix(to, x, n, (int)rows, imp, threads, candidates: CalibratedCandidates.Ggml);
                else
                {
                    var qg = q = new byte[rows * rowBytes];
                    long per = (rows + threads - 1) / threads;
                    Parallel.For(0, threads, k =>
                    {
                        long r0 = k * per, r1 = Math.Min(rows, r0 + per);
                        if (r1 <= r0) return;
                        fixed (float* xp = x) fixed (byte* qp = qg) fixed (float* ip = imp)
                            chunk((int)to, xp, qp, r0 * n, r1 - r0, n, imp == null ? null : ip);
                    });
                }
            }
            else Quantize.Row(to, x, q = new byte[rows * rowBytes]);
            w.AddTensor(t.Name, t.Shape, to, q);
            if (progress) Console.Error.Write($"\r{t.Name} → {to}        ");
        }
        w.Write(dst);
    }
}
