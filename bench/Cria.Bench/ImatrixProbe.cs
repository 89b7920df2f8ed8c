using System.Diagnostics;
using System.Globalization;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;

namespace Cria.Bench;

/// <summary>
/// <c>Cria.Bench imatrix-probe</c>: for each file type, quantizes models/default.gguf plain and with the imatrix under
/// several candidate sets (<see cref="CalibratedCandidates"/>), and prints Cria's perplexity on data/valid.txt and the
/// summed activation-weighted error Σ imatrix·(w − ŵ)² over the blk.* matrices (the proxy the calibrated path minimises).
/// Cria only (no llama.cpp), for quick comparisons; the table is quant-table's job.
/// </summary>
static class ImatrixProbe
{
    public static int Run(string[] args)
    {
        var ci = CultureInfo.InvariantCulture;
        string model = "models/default.gguf", train = "data/train.txt", valid = "data/valid.txt", outDir = "/tmp/cria-probe";
        int ctx = 128, chunks = 24, calibChunks = 64, threads = 2;
        string types = "Q2_K,Q3_K_S,Q3_K_M,Q3_K_L,Q4_0,Q4_1,Q4_K_S,Q4_K_M", variants = "plain,ggml,all";
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--model": model = Next(); break;
                case "--out": outDir = Next(); break;
                case "--chunks": chunks = int.Parse(Next(), ci); break;
                case "--calib-chunks": calibChunks = int.Parse(Next(), ci); break;
                case "--threads": threads = int.Parse(Next(), ci); break;
                case "--types": types = Next(); break;
                case "--variants": variants = Next(); break;
                default: Console.Error.WriteLine($"unknown argument '{a}'"); return 2;
            }
        }
        Directory.CreateDirectory(outDir);
        string imPath = Path.Combine(outDir, $"default-{calibChunks}.imatrix.dat");
        var sw = Stopwatch.StartNew();
        Imatrix im;
        if (File.Exists(imPath)) im = Imatrix.Load(imPath);
        else
        {
            using var m = LlamaModel.Open(model);
            im = Imatrix.Collect(m, File.ReadAllText(train), ctx, calibChunks, threads, Path.GetFileName(train));
            im.Save(imPath);
        }
        string validText = File.ReadAllText(valid), trainHead = File.ReadAllText(train)[..400000];
        Console.WriteLine($"imatrix {imPath}: {im.Values.Count} entries, {im.Chunks} chunks [{sw.Elapsed.TotalSeconds:F0} s]");
        foreach (var (k, v) in im.Values.OrderBy(kv => kv.Key).Where(kv => kv.Key.StartsWith("blk.0.") || kv.Key.StartsWith("blk.5.")))
            Console.WriteLine($"  {k}: max/mean importance {v.Max() / v.Average():F1}, top-1% share {v.OrderByDescending(z => z).Take(Math.Max(1, v.Length / 100)).Sum() / v.Sum():P0}");
        foreach (var tn in types.Split(','))
        {
            foreach (var v in variants.Split(','))
            {
                var opt = new QuantizeOptions { FileType = QuantMix.Parse(tn), Threads = threads, Force = true };
                var imv = im.Values;
                string cand = v;
                if (v.Contains(':'))
                {
                    // "ggml:attn_q|attn_k": the imatrix only for those tensor classes; "ggml:nobos": imatrix without position 0.
                    var parts = v.Split(':');
                    cand = parts[0];
                    if (parts[1] == "uniform") imv = im.Values.ToDictionary(kv => kv.Key, kv => kv.Value.Select(_ => 1f).ToArray());
                    else if (parts[1].StartsWith("shrink"))
                    {
                        float lam = float.Parse(parts[1][6..], CultureInfo.InvariantCulture);
                        imv = im.Values.ToDictionary(kv => kv.Key, kv => { float mean = kv.Value.Average(); return kv.Value.Select(z => z + lam * mean).ToArray(); });
                    }
                    else if (parts[1] == "nobos") imv = NoBos(model, File.ReadAllText(train), ctx, calibChunks, threads);
                    else
                    {
                        var keep = parts[1].Split('|');
                        imv = im.Values.Where(kv => keep.Any(k => kv.Key.Contains("." + k + ".", StringComparison.Ordinal))).ToDictionary(kv => kv.Key, kv => kv.Value);
                    }
                }
                bool awq = cand.StartsWith("awq");
                if (awq) cand = cand == "awq" ? "" : cand[4..];
                if (cand != "plain" && cand != "") opt = opt with { Imatrix = imv, ImatrixCandidates = Candidates(cand) };
                if (awq)
                {
                    using var m = LlamaModel.Open(model);
                    _awqStats ??= Awq.Collect(m, File.ReadAllText(train), new AwqOptions { ContextSize = ctx, MaxChunks = calibChunks, Threads = threads });
                    var res = Awq.Search(m, _awqStats, opt, new AwqOptions { ContextSize = ctx, Threads = threads });
                    opt = opt with { Override = n => res.Overrides.GetValueOrDefault(n), Imatrix = res.Imatrix ?? opt.Imatrix };
                }
                string path = Path.Combine(outDir, $"probe-{tn}-{v}.gguf");
                var rep = ModelQuantizer.Run(model, path, opt);
                double proxy = Proxy(model, path, im);
                if (Environment.GetEnvironmentVariable("PROBE_GRAM") == "1") GramReport(model, path, File.ReadAllText(train), ctx, Math.Min(calibChunks, 16), threads);
                double ppl;
                using (var m = LlamaModel.Open(path))
                using (var c = new InferenceContext(m, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads }))
                    ppl = Perplexity.Compute(c, m.Tokenizer, validText, ctx, maxChunks: chunks).Value;
                double pplTrain;
                using (var m = LlamaModel.Open(path))
                using (var c = new InferenceContext(m, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads }))
                    pplTrain = Perplexity.Compute(c, m.Tokenizer, trainHead, ctx, maxChunks: 32).Value;
                File.Delete(path);
                Console.WriteLine($"{tn,-7} {v,-14} {rep.BitsPerWeight:F3} bpw  ppl {ppl:F4}  train {pplTrain:F4}  proxy {proxy:E4}  [{sw.Elapsed.TotalSeconds:F0} s]");
            }
        }
        return 0;
    }

    /// <summary>Single-thread speed of Quantize.Row per type, scalar search and each vector width this machine has
    /// (Cria.Bench quant-micro).</summary>
    public static int Micro(string[] args)
    {
        const int cols = 2048, rows = 1024;
        var rng = new Random(1);
        var x = new float[cols * rows];
        for (int i = 0; i < x.Length; i++) x[i] = (float)((rng.NextDouble() - 0.5) * 0.1);
        var importance = new float[cols]; // an importance vector for the weighted (imatrix) quantizers: make_qkx3_quants & co.
        for (int i = 0; i < cols; i++) importance[i] = (float)Math.Exp(rng.NextDouble() * 2 - 1);
        foreach (var (t, weighted) in new[] { (GgmlType.Q4_K, false), (GgmlType.Q6_K, false), (GgmlType.Q5_K, false), (GgmlType.Q2_K, false),
                     (GgmlType.Q3_K, false), (GgmlType.Q4_0, false), (GgmlType.Q4_K, true), (GgmlType.Q2_K, true) })
        {
            var widths = new List<SearchLanes> { SearchLanes.Scalar };
            if (System.Runtime.Intrinsics.Vector128.IsHardwareAccelerated) widths.Add(SearchLanes.Lanes128);
            if (System.Runtime.Intrinsics.Vector256.IsHardwareAccelerated) widths.Add(SearchLanes.Lanes256);
            foreach (var lanes in widths)
            {
                Quantize.Lanes = lanes;
                int rb = (int)GgmlTypeInfo.RowBytes(t, cols);
                var dst = new byte[rb * rows];
                void Row(int r)
                {
                    if (weighted) Quantize.Row(t, x.AsSpan(r * cols, cols), dst.AsSpan(r * rb, rb), importance);
                    else Quantize.Row(t, x.AsSpan(r * cols, cols), dst.AsSpan(r * rb, rb));
                }
                for (int r = 0; r < 64; r++) Row(r);
                var sw = Stopwatch.StartNew();
                for (int r = 0; r < rows; r++) Row(r);
                Console.WriteLine($"{t}{(weighted ? " with an importance" : "")} {lanes}: {cols * (double)rows / sw.Elapsed.TotalSeconds / 1e6:F1} M values/s");
            }
        }
        var h = new byte[2 * x.Length];
        for (int i = 0; i < x.Length; i++) BitConverter.TryWriteBytes(h.AsSpan(2 * i), Fp16.FromSingle(x[i]));
        var sw2 = Stopwatch.StartNew();
        for (int r = 0; r < rows; r++) Dequantize.Row(GgmlType.F16, h.AsSpan(r * 2 * cols, 2 * cols), x.AsSpan(r * cols, cols));
        Console.WriteLine($"F16 → F32: {cols * (double)rows / sw2.Elapsed.TotalSeconds / 1e6:F1} M values/s");
        return 0;
    }

    static CalibratedCandidates Candidates(string v) => v switch
    {
        "ggml" => CalibratedCandidates.Ggml,
        "imp" => CalibratedCandidates.Importance,
        "all" => CalibratedCandidates.All,
        _ => v.Split('+').Select(p => p switch
        {
            "ref" => CalibratedCandidates.Reference,
            "ggml" => CalibratedCandidates.Ggml,
            "imp" => CalibratedCandidates.Importance,
            _ => throw new ArgumentException($"unknown candidate '{p}'"),
        }).Aggregate((a, b) => a | b),
    };

    static Dictionary<string, (double[] G, int Cols, long N)>? _gram;
    static void GramReport(string model, string quantized, string text, int ctx, int maxChunks, int threads)
    {
        if (_gram == null)
        {
            using var m = LlamaModel.Open(model);
            var obs = new GramObs();
            Calibration.Run(m, text, ctx, maxChunks, threads, obs);
            _gram = obs.G;
        }
        using var a = GgufFile.Open(model);
        using var b = GgufFile.Open(quantized);
        var byName = b.Tensors.ToDictionary(t => t.Name);
        var byClass = new SortedDictionary<string, (double full, double diag)>();
        foreach (var t in a.Tensors)
        {
            if (!_gram.TryGetValue(t.Name, out var g)) continue;
            var q = byName[t.Name];
            int cols = (int)t.RowLength, rows = (int)t.RowCount;
            var x = new float[cols]; var y = new float[cols]; var d = new double[cols];
            var da = a.TensorData(t); var db = b.TensorData(q);
            int ra = (int)GgmlTypeInfo.RowBytes(t.Type, cols), rb = (int)GgmlTypeInfo.RowBytes(q.Type, cols);
            double full = 0, diag = 0;
            for (int r = 0; r < rows; r++)
            {
                Dequantize.Row(t.Type, da.Slice(r * ra, ra), x);
                Dequantize.Row(q.Type, db.Slice(r * rb, rb), y);
                for (int j = 0; j < cols; j++) d[j] = y[j] - x[j];
                for (int i = 0; i < cols; i++)
                {
                    double s = 0;
                    for (int j = 0; j < cols; j++) s += g.G[i * cols + j] * d[j];
                    full += d[i] * s;
                    diag += d[i] * d[i] * g.G[i * cols + i];
                }
            }
            string cls = t.Name.Split('.')[2];
            var (f0, d0) = byClass.GetValueOrDefault(cls);
            byClass[cls] = (f0 + full / g.N, d0 + diag / g.N);
        }
        Console.WriteLine("   " + string.Join("  ", byClass.Select(kv => $"{kv.Key} full {kv.Value.full:E3} diag {kv.Value.diag:E3}")));
    }

    sealed class GramObs : IMatMulObserver
    {
        public readonly Dictionary<string, (double[] G, int Cols, long N)> G = new();
        public void Observe(string name, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!name.StartsWith("blk.", StringComparison.Ordinal)) return;
            if (!G.TryGetValue(name, out var s)) s = (new double[cols * cols], cols, 0);
            var g = s.G;
            for (int r = 0; r < rows; r++)
            {
                var row = x.Slice(r * cols, cols);
                for (int i = 0; i < cols; i++)
                {
                    double xi = row[i];
                    for (int j = 0; j < cols; j++) g[i * cols + j] += xi * row[j];
                }
            }
            G[name] = (g, cols, s.N + rows);
        }
    }

    static Dictionary<string, float[]>? _noBos;
    static Awq.Stats? _awqStats;
    static Dictionary<string, float[]> NoBos(string model, string text, int ctx, int maxChunks, int threads)
    {
        if (_noBos != null) return _noBos;
        using var m = LlamaModel.Open(model);
        var obs = new SkipFirst();
        Calibration.Run(m, text, ctx, maxChunks, threads, obs);
        _noBos = obs.Sum.ToDictionary(kv => kv.Key, kv => kv.Value.Select(v => (float)(v / obs.Count[kv.Key])).ToArray());
        foreach (var (k, v) in _noBos)
        {
            var all = _noBos[k];
            _ = all;
            break;
        }
        return _noBos;
    }

    sealed class SkipFirst : IMatMulObserver
    {
        public readonly Dictionary<string, double[]> Sum = new();
        public readonly Dictionary<string, long> Count = new();
        public void Observe(string name, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!name.StartsWith("blk.", StringComparison.Ordinal)) return;
            if (!Sum.TryGetValue(name, out var s)) { s = Sum[name] = new double[cols]; Count[name] = 0; }
            for (int r = 1; r < rows; r++)
                for (int j = 0; j < cols; j++) s[j] += (double)x[r * cols + j] * x[r * cols + j];
            Count[name] += rows - 1;
        }
    }

    /// <summary>Σ over blk.* matrices with an imatrix entry of Σ_rows Σ_j im_j (w − ŵ)².</summary>
    static double Proxy(string original, string quantized, Imatrix im)
    {
        using var a = GgufFile.Open(original);
        using var b = GgufFile.Open(quantized);
        var byName = b.Tensors.ToDictionary(t => t.Name);
        double total = 0;
        foreach (var t in a.Tensors)
        {
            if (!im.Values.TryGetValue(t.Name, out var w) || w.Length != t.RowLength) continue;
            var q = byName[t.Name];
            int cols = (int)t.RowLength, rows = (int)t.RowCount;
            var x = new float[cols];
            var da = a.TensorData(t); var db = b.TensorData(q);
            int ra = (int)GgmlTypeInfo.RowBytes(t.Type, cols), rb = (int)GgmlTypeInfo.RowBytes(q.Type, cols);
            for (int r = 0; r < rows; r++)
            {
                Dequantize.Row(t.Type, da.Slice(r * ra, ra), x);
                total += Quantize.WeightedError(q.Type, x, db.Slice(r * rb, rb), w);
            }
        }
        return total;
    }

    /// <summary>
    /// <c>Cria.Bench imatrix-placebo IN.dat OUT.dat --seed S</c>: the control for "does the activation information
    /// help": every tensor's importance vector with its columns shuffled at random (seed S; the same values, so the
    /// same spread, on the wrong columns), or, with seed 0, all ones (the weighted search with no activation
    /// information at all). A file quantized with it runs every step of the imatrix path but the information.
    /// </summary>
    public static int Placebo(string[] args)
    {
        if (args.Length != 4 || args[2] != "--seed" || !int.TryParse(args[3], NumberStyles.Integer, CultureInfo.InvariantCulture, out int seed) || seed < 0)
        {
            Console.Error.WriteLine("usage: imatrix-placebo IN.dat OUT.dat --seed S   (S > 0: columns shuffled; S = 0: all ones)");
            return 2;
        }
        var m = Imatrix.Load(args[0]);
        var rng = new Random(seed);
        foreach (var name in m.Values.Keys.Order(StringComparer.Ordinal).ToList())
        {
            var v = m.Values[name];                       // [cols] (an expert tensor: [n_expert · cols], shuffled whole)
            if (seed == 0) Array.Fill(v, 1f); else rng.Shuffle(v);
        }
        m.Save(args[1]);
        Console.Error.WriteLine($"wrote {args[1]}: {m.Values.Count} entries, {(seed == 0 ? "all ones" : $"columns shuffled, seed {seed}")}");
        return 0;
    }
}
