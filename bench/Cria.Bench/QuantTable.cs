using System.Diagnostics;
using System.Globalization;
using System.Text;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tensors;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Bench;

/// <summary>
/// <c>Cria.Bench quant-table</c>: every llama.cpp file type, quantized by Cria plain (round-to-nearest, the reference
/// quantizers), with an importance matrix, with AWQ (scalings into the norms, v→o / up→down, clipping search) and with
/// GPTQ, all calibrated on --train; perplexity on --valid by Cria and by llama.cpp on each file, and Cria's KL
/// divergence from the unquantized model on the same chunks (with the paired perplexity change's standard error);
/// plus llama.cpp's own quantizer on the plain files (bytes compared). Writes a TSV, markdown tables and an SVG plot
/// (bits per weight vs perplexity). scripts/quant-table.sh passes a disjoint split of data/valid.txt.
/// <c>Cria.Bench quant-time</c>: Cria vs llama.cpp quantizing one F16 model to Q4_K_M, alternating, median.
/// </summary>
static class QuantTable
{
    static readonly string[] Types = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"];

    sealed record Row(string Type, string Variant, double Bpw, double PplCria, double PplLlama, string Note,
        double Kld = double.NaN, double KldSe = double.NaN, double SameTop = double.NaN, double ChangeSe = double.NaN);

    public static int Run(string[] args)
    {
        var ci = CultureInfo.InvariantCulture;
        string model = "models/default.gguf", train = "data/train.txt", valid = "data/valid.txt", outDir = "bench/quant", docs = "docs";
        int ctx = 128, chunks = 40, calibChunks = 64, threads = 2;
        string? only = null, merge = null;
        string[] variants = ["plain", "imatrix", "awq", "gptq"];
        int awqChunks = 32;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--model": model = Next(); break;
                case "--train": train = Next(); break;
                case "--valid": valid = Next(); break;
                case "--out": outDir = Next(); break;
                case "--docs": docs = Next(); break;
                case "--ctx": ctx = int.Parse(Next(), ci); break;
                case "--chunks": chunks = int.Parse(Next(), ci); break;
                case "--calib-chunks": calibChunks = int.Parse(Next(), ci); break;
                case "--awq-chunks": awqChunks = int.Parse(Next(), ci); break;
                case "--threads": threads = int.Parse(Next(), ci); break;
                case "--types": only = Next(); break;
                case "--variants": variants = Next().Split(','); break;
                case "--merge": merge = Next(); break;
                default: Console.Error.WriteLine($"unknown argument '{a}'"); return 2;
            }
        }
        var types = only == null ? Types : only.Split(',');
        Directory.CreateDirectory(outDir);
        string trainText = File.ReadAllText(train), validText = File.ReadAllText(valid);
        var o = Console.Out;
        if (chunks <= 0) chunks = int.MaxValue;
        string scored = chunks == int.MaxValue ? "all chunks" : $"first {chunks} chunks";
        o.WriteLine($"quant-table: {model}, perplexity on {valid} (ctx {ctx}, {scored}), calibration on {train} (imatrix and GPTQ {calibChunks} chunks of {ctx}, AWQ {awqChunks}), {threads} threads, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");

        var sw = Stopwatch.StartNew();
        Imatrix im;
        Awq.Stats awqStats;
        // AWQ as `cria quantize --awq CALIB --awq-inner --awq-clip` (the CLI's defaults otherwise).
        var awqOpt = new AwqOptions { ContextSize = ctx, MaxChunks = awqChunks, Threads = threads, ScaleInner = true, Clip = true };
        using (var m = LlamaModel.Open(model))
        {
            im = Imatrix.Collect(m, trainText, ctx, calibChunks, threads, Path.GetFileName(train));
            im.Save(Path.Combine(outDir, "default.imatrix.dat"));
            awqStats = Awq.Collect(m, trainText, awqOpt);
        }
        // GPTQ's Gram matrices depend only on the model and the text: factored once for every type.
        var gptq = variants.Contains("gptq")
            ? Gptq.Collect(model, trainText, new GptqOptions { ContextSize = ctx, MaxChunks = calibChunks, Threads = threads })
            : null;
        o.WriteLine($"calibration: imatrix, AWQ and GPTQ statistics in {sw.Elapsed.TotalSeconds:F1} s");

        var rows = new List<Row>();
        using var baseModel = LlamaModel.Open(model);
        using var baseContext = new InferenceContext(baseModel, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads });
        double baseCria = Perplexity.Compute(baseContext, baseModel.Tokenizer, validText, ctx, maxChunks: chunks).Value;
        double baseLlama = LlamaPpl(model, validText, ctx, chunks, threads);
        using (var f = GgufFile.Open(model)) rows.Add(new Row("F32", "plain", Bpw(f), baseCria, baseLlama, ""));
        o.WriteLine($"F32: Cria {baseCria:F4}, llama.cpp {baseLlama:F4}");

        foreach (var tn in types)
        {
            if (Enum.TryParse<GgmlType>(tn, true, out var lattice) && GgmlTypeInfo.IsLattice(lattice))
            {
                // One lattice type in every blk.* matrix (GgmlQuantize.File's layout: embedding Q4_K, head Q5_K), written
                // by Cria's quantizer and compared with ggml's on the same tensors; plain = without an imatrix (IQ2/IQ1:
                // unit importances), imatrix = Cria's imatrix of the same calibration text; scored by both engines alike.
                // ("mix:IQ2_XXS" asks for llama.cpp's IQ2_XXS mix instead.)
                foreach (var variant in variants.Where(v => v is "plain" or "imatrix"))
                {
                    string lpath = Path.Combine(outDir, $"default-{tn}-{variant}.gguf"), gpath = lpath + ".ggml";
                    var imv = variant == "imatrix" ? im.Values : null;
                    GgmlQuantize.File(model, lpath, lattice, imv, threads, cria: true);
                    GgmlQuantize.File(model, gpath, lattice, imv, threads);
                    bool same = File.ReadAllBytes(lpath).AsSpan().SequenceEqual(File.ReadAllBytes(gpath));
                    File.Delete(gpath);
                    double bpw;
                    using (var lf = GgufFile.Open(lpath)) bpw = Bpw(lf);
                    var lk = CriaKld(baseContext, lpath, validText, ctx, chunks, threads);
                    double lc = lk.Model.Value, ll = LlamaPpl(lpath, validText, ctx, chunks, threads);
                    string note = same ? "identical file (ggml's quantizer)" : "DIFFERS from ggml's quantizer";
                    rows.Add(new Row(tn, variant, bpw, lc, ll, note, lk.MeanKld, lk.KldStdErr, lk.SameTopFraction, lk.PplChangeStdErrPercent));
                    o.WriteLine($"{tn,-7} {variant,-8} {bpw:F3} bpw  Cria {lc:F4}  llama.cpp {ll:F4}  KLD {lk.MeanKld:F6} ± {lk.KldStdErr:F6}  same top {lk.SameTopFraction:P2}  ({note})  [{sw.Elapsed.TotalMinutes:F1} min]");
                }
                continue;
            }
            var ftype = QuantMix.Parse(tn.StartsWith("mix:", StringComparison.OrdinalIgnoreCase) ? tn[4..] : tn);
            foreach (var variant in variants)
            {
                string path = Path.Combine(outDir, $"default-{tn}-{variant}.gguf");
                var opt = new QuantizeOptions { FileType = ftype, Threads = threads, Force = true };
                if (variant == "imatrix") opt = opt with { Imatrix = im.Values };
                if (variant == "awq+imatrix") opt = opt with { Imatrix = im.Values };
                if (variant.StartsWith("awq", StringComparison.Ordinal))
                {
                    using var m = LlamaModel.Open(model);
                    var res = Awq.Search(m, awqStats, opt, awqOpt);
                    opt = opt with { Override = n => res.Overrides.GetValueOrDefault(n), Imatrix = res.Imatrix ?? opt.Imatrix };
                }
                if (variant == "gptq") opt = opt with { Gptq = gptq };
                QuantizeReport rep;
                try { rep = ModelQuantizer.Run(model, path, opt); }
                catch (CriaException e) when (opt.Imatrix == null)
                {
                    o.WriteLine($"{tn,-7} {variant,-8} skipped: {e.Message}"); // the mixes llama-quantize writes only with an imatrix
                    continue;
                }
                string note = "";
                if (variant == "plain")
                {
                    string lp = Path.Combine(outDir, $"default-{tn}-llamacpp.gguf");
                    File.Delete(lp);
                    LlamaEngine.EnsureLoaded();
                    if (!LLamaQuantizer.Quantize(model, lp, (LLamaFtype)(int)ftype, threads, true, true)) throw new InvalidOperationException("llama.cpp quantize failed");
                    note = File.ReadAllBytes(lp).AsSpan().SequenceEqual(File.ReadAllBytes(path)) ? "llama.cpp's quantizer: identical file" : "llama.cpp's quantizer: DIFFERENT bytes";
                    File.Delete(lp);
                }
                var k = CriaKld(baseContext, path, validText, ctx, chunks, threads);
                double pc = k.Model.Value, pl = LlamaPpl(path, validText, ctx, chunks, threads);
                rows.Add(new Row(tn, variant, rep.BitsPerWeight, pc, pl, note, k.MeanKld, k.KldStdErr, k.SameTopFraction, k.PplChangeStdErrPercent));
                o.WriteLine($"{tn,-7} {variant,-8} {rep.BitsPerWeight:F3} bpw  Cria {pc:F4}  llama.cpp {pl:F4}  KLD {k.MeanKld:F6} ± {k.KldStdErr:F6}  same top {k.SameTopFraction:P2}  {note}  [{sw.Elapsed.TotalMinutes:F1} min]");
            }
        }

        if (merge != null)
        {
            // Rows of an earlier run (same model, chunks and calibration) for the type/variant pairs not run now.
            var fresh = rows.ToList();
            rows.AddRange(ReadTsv(merge).Where(m => !fresh.Any(r => r.Type == m.Type && r.Variant == m.Variant)));
            var order = new List<string> { "F32" }; order.AddRange(Types);
            rows = rows.OrderBy(r => order.IndexOf(r.Type) is int k && k >= 0 ? k : 99).ThenBy(r => Array.IndexOf(new[] { "plain", "imatrix", "awq", "gptq", "awq+imatrix" }, r.Variant)).ToList();
        }
        var tsv = new StringBuilder("type\tvariant\tbpw\tppl_cria\tppl_llamacpp\tnote\tkld\tkld_se\tsame_top\tppl_change_se_pct\n");
        foreach (var r in rows) tsv.Append(ci, $"{r.Type}\t{r.Variant}\t{r.Bpw:F4}\t{r.PplCria:F4}\t{r.PplLlama:F4}\t{r.Note}\t{r.Kld:F7}\t{r.KldSe:F7}\t{r.SameTop:F5}\t{r.ChangeSe:F4}\n");
        File.WriteAllText(Path.Combine(outDir, "quant-table.tsv"), tsv.ToString());
        // The plot shows every type: a run of some types (--types without --merge) leaves docs/quantization.svg alone.
        if (only == null || merge != null)
            File.WriteAllText(Path.Combine(docs, "quantization.svg"), Svg(rows, $"{model}, perplexity on {valid} (ctx {ctx}, {scored}), calibration on {train}"));
        o.WriteLine();
        string[] shown = ["plain", "imatrix", "awq", "gptq", "awq+imatrix"];
        var present = shown.Where(v => rows.Any(r => r.Variant == v)).ToList();
        string Name(string v) => v switch { "plain" => "plain", "imatrix" => "imatrix", "awq" => "AWQ", "gptq" => "GPTQ", _ => "AWQ+imatrix" };
        o.WriteLine("Perplexity (bold: below plain; Cria / llama.cpp on the same file):");
        o.WriteLine();
        o.WriteLine("| type | bits/weight | " + string.Join(" | ", present.Select(v => $"{Name(v)}: Cria | {Name(v)}: llama.cpp")) + " | llama.cpp's quantizer on plain |");
        o.WriteLine("|---|---|" + string.Concat(present.Select(_ => "---|---|")) + "---|");
        foreach (var g in rows.GroupBy(r => r.Type))
        {
            Row? P(string v) => g.FirstOrDefault(r => r.Variant == v);
            var plain = P("plain");
            string C(Row? r) => r == null ? "–" : r.Variant != "plain" && plain != null && r.PplCria < plain.PplCria ? $"**{r.PplCria.ToString("F3", ci)}**" : r.PplCria.ToString("F3", ci);
            string L(Row? r) => r == null ? "–" : r.PplLlama.ToString("F3", ci);
            string note = plain?.Note.Replace("llama.cpp's quantizer: ", "") ?? "";
            o.WriteLine($"| {g.Key} | {g.First().Bpw.ToString("F3", ci)} | " + string.Join(" | ", present.Select(v => $"{C(P(v))} | {L(P(v))}")) + $" | {note} |");
        }
        o.WriteLine();
        o.WriteLine("KL divergence from the unquantized model, ×10⁻³ nats per token ± standard error (bold: below plain), same-top-token rate, and one standard error of the paired perplexity change (Cria):");
        o.WriteLine();
        o.WriteLine("| type | " + string.Join(" | ", present.Select(v => $"{Name(v)}: KLD ×10⁻³")) + " | " + string.Join(" | ", present.Select(v => $"{Name(v)}: same top")) + " | s.e. of Δppl |");
        o.WriteLine("|---|" + string.Concat(present.Select(_ => "---|---|")) + "---|");
        foreach (var g in rows.Where(r => r.Type != "F32").GroupBy(r => r.Type))
        {
            Row? P(string v) => g.FirstOrDefault(r => r.Variant == v);
            var plain = P("plain");
            string K(Row? r) => r == null || double.IsNaN(r.Kld) ? "–" : (r.Variant != "plain" && plain != null && r.Kld < plain.Kld ? $"**{r.Kld * 1e3:F3}**" : $"{r.Kld * 1e3:F3}") + $" ± {r.KldSe * 1e3:F3}";
            string T(Row? r) => r == null || double.IsNaN(r.SameTop) ? "–" : $"{r.SameTop * 100:F2} %";
            o.WriteLine($"| {g.Key} | " + string.Join(" | ", present.Select(v => K(P(v)))) + " | " + string.Join(" | ", present.Select(v => T(P(v)))) + $" | {(plain == null ? "–" : $"{plain.ChangeSe:F3} %")} |");
        }
        o.WriteLine($"total {sw.Elapsed.TotalMinutes:F1} min");
        return 0;
    }

    static double Bpw(GgufFile f)
    {
        long bytes = 0, n = 0;
        foreach (var t in f.Tensors) { bytes += t.ByteSize; n += t.ElementCount; }
        return bytes * 8.0 / n;
    }

    static KlDivergenceResult CriaKld(InferenceContext baseContext, string path, string text, int ctx, int chunks, int threads)
    {
        using var m = LlamaModel.Open(path);
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads });
        return Perplexity.CompareTo(baseContext, c, m.Tokenizer, text, ctx, maxChunks: chunks);
    }

    /// <summary>llama.cpp's logits for the same chunks, scored the same way (as BundledModelTests).</summary>
    static double LlamaPpl(string path, string text, int ctx, int chunks, int threads)
    {
        int[] tokens; int bos; bool addBos;
        using (var m = LlamaModel.Open(path)) { tokens = m.Tokenizer.Encode(text, addBos: true); bos = m.Tokenizer.Bos; addBos = m.Tokenizer.AddBos; }
        var list = Perplexity.Chunks(tokens, ctx, bos, addBos).Take(chunks).ToList();
        LlamaEngine.EnsureLoaded();
        var p = new ModelParams(path)
        {
            ContextSize = (uint)ctx, GpuLayerCount = 0, Threads = threads, BatchThreads = threads, BatchSize = (uint)ctx, UBatchSize = (uint)ctx,
            LoadMode = LLamaLoadMode.MemoryMap, TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
        };
        using var w = LLamaWeights.LoadFromFile(p);
        using var context = w.CreateContext(p);
        double nll = 0; int count = 0;
        foreach (var c in list)
        {
            context.NativeHandle.MemoryClear();
            var batch = new LLamaBatch();
            for (int i = 0; i < c.Length; i++) batch.Add((LLamaToken)c[i], i, LLamaSeqId.Zero, i >= Perplexity.FirstScored(ctx));
            if (context.Decode(batch) != DecodeResult.Ok) throw new InvalidOperationException("llama.cpp decode failed");
            for (int i = Perplexity.FirstScored(ctx); i < ctx - 1; i++) { nll += Perplexity.Nll(context.NativeHandle.GetLogitsIth(i), c[i + 1]); count++; }
        }
        return Math.Exp(nll / count);
    }

    /// <summary>Bits per weight (x) vs perplexity (y, log scale), one series per variant, F32 as a dashed line.</summary>
    static string Svg(List<Row> rows, string subtitle)
    {
        var ci = CultureInfo.InvariantCulture;
        const int W = 760, H = 460, L = 70, R = 170, T = 50, B = 60;
        var q = rows.Where(r => r.Type != "F32").ToList();
        double baseline = rows.First(r => r.Type == "F32").PplCria;
        double xmin = 2.5, xmax = 9;
        double ymin = Math.Log(Math.Min(baseline, q.Min(r => r.PplCria)) * 0.98), ymax = Math.Log(q.Max(r => r.PplCria) * 1.05);
        double X(double b) => L + (b - xmin) / (xmax - xmin) * (W - L - R);
        double Y(double p) => T + (ymax - Math.Log(p)) / (ymax - ymin) * (H - T - B);
        var s = new StringBuilder();
        s.Append(ci, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        s.Append("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
        s.Append(ci, $"<text x=\"{L}\" y=\"22\" font-size=\"15\">Bits per weight vs perplexity (Cria)</text>\n<text x=\"{L}\" y=\"38\" fill=\"#555\">{subtitle}</text>\n");
        s.Append(ci, $"<line x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{H - B}\" stroke=\"black\"/>\n");
        for (int b = 3; b <= 9; b++)
            s.Append(ci, $"<line x1=\"{X(b):F1}\" y1=\"{H - B}\" x2=\"{X(b):F1}\" y2=\"{H - B + 5}\" stroke=\"black\"/><text x=\"{X(b):F1}\" y=\"{H - B + 18}\" text-anchor=\"middle\">{b}</text>\n");
        s.Append(ci, $"<text x=\"{(L + W - R) / 2}\" y=\"{H - 18}\" text-anchor=\"middle\">bits per weight (whole file)</text>\n");
        double lo = Math.Exp(ymin), hi = Math.Exp(ymax);
        double step = (hi - lo) > 40 ? 10 : (hi - lo) > 15 ? 5 : (hi - lo) > 6 ? 2 : 1;
        for (double p = Math.Ceiling(lo / step) * step; p <= hi; p += step)
            s.Append(ci, $"<line x1=\"{L - 5}\" y1=\"{Y(p):F1}\" x2=\"{W - R}\" y2=\"{Y(p):F1}\" stroke=\"#eee\"/><text x=\"{L - 8}\" y=\"{Y(p) + 4:F1}\" text-anchor=\"end\">{p:0.#}</text>\n");
        s.Append(ci, $"<text transform=\"translate(18 {(T + H - B) / 2}) rotate(-90)\" text-anchor=\"middle\">perplexity (log scale)</text>\n");
        s.Append(ci, $"<line x1=\"{L}\" y1=\"{Y(baseline):F1}\" x2=\"{W - R}\" y2=\"{Y(baseline):F1}\" stroke=\"#888\" stroke-dasharray=\"5 4\"/><text x=\"{W - R + 6}\" y=\"{Y(baseline) + 4:F1}\" fill=\"#555\">F32 {baseline:F2}</text>\n");
        var series = new[] { ("plain", "#d62728", "plain (round-to-nearest)"), ("imatrix", "#1f77b4", "imatrix"), ("awq", "#2ca02c", "AWQ"), ("gptq", "#ff7f0e", "GPTQ"), ("awq+imatrix", "#9467bd", "AWQ + imatrix") };
        int li = 0;
        foreach (var (v, color, label) in series)
        {
            var pts = q.Where(r => r.Variant == v).OrderBy(r => r.Bpw).ToList();
            if (pts.Count == 0) continue;
            s.Append(ci, $"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{string.Join(" ", pts.Select(r => string.Create(ci, $"{X(r.Bpw):F1},{Y(r.PplCria):F1}")))}\"/>\n");
            foreach (var r in pts)
                s.Append(ci, $"<circle cx=\"{X(r.Bpw):F1}\" cy=\"{Y(r.PplCria):F1}\" r=\"3\" fill=\"{color}\"><title>{r.Type} {v}: {r.Bpw:F3} bpw, ppl {r.PplCria:F3} (llama.cpp {r.PplLlama:F3})</title></circle>\n");
            s.Append(ci, $"<rect x=\"{W - R + 10}\" y=\"{T + 20 * li}\" width=\"12\" height=\"12\" fill=\"{color}\"/><text x=\"{W - R + 28}\" y=\"{T + 20 * li + 11}\">{label}</text>\n");
            li++;
        }
        foreach (var r in q.Where(r => r.Variant == "plain"))
            s.Append(ci, $"<text x=\"{X(r.Bpw) + 4:F1}\" y=\"{Y(r.PplCria) - 6:F1}\" font-size=\"9\" fill=\"#444\">{r.Type}</text>\n");
        s.Append("</svg>\n");
        return s.ToString();
    }

    /// <summary>Cria vs llama.cpp quantizing <paramref name="args"/>[0] to Q4_K_M, same threads, alternating, median.</summary>
    public static int Time(string[] args)
    {
        var ci = CultureInfo.InvariantCulture;
        string src = args.Length > 0 ? args[0] : "bench/models/tinyllama-f16.gguf";
        int threads = 2, runs = 3;
        var ftype = LlamaFileType.Q4_K_M;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--threads") threads = int.Parse(args[++i], ci);
            else if (args[i] == "--runs") runs = int.Parse(args[++i], ci);
            else if (args[i] == "--type") ftype = QuantMix.Parse(args[++i]);
            else if (args[i] == "--llama-avx") LlamaEngine.ForceAvx = LlamaEngine.ParseAvx(args[++i]);
        }
        string dir = Path.GetDirectoryName(Path.GetFullPath(src))!;
        string oc = Path.Combine(dir, "quant-time-cria.gguf"), ol = Path.Combine(dir, "quant-time-llama.gguf");
        LlamaEngine.EnsureLoaded();
        var tc = new List<double>(); var tl = new List<double>();
        Console.WriteLine($"quant-time: {src} → {ftype}, {threads} threads, {runs} runs each, alternating (who goes first swaps every round); {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine($"  Cria's searches: {Quantize.Lanes}; llama.cpp build: {LlamaEngine.ForceAvx?.ToString() ?? "LLamaSharp's choice"}");
        for (int r = 0; r < runs; r++)
        {
            for (int k = 0; k < 2; k++)
            {
                bool cria = (k == 0) == (r % 2 == 0);
                File.Delete(cria ? oc : ol);
                var sw = Stopwatch.StartNew();
                if (cria) ModelQuantizer.Run(src, oc, new QuantizeOptions { FileType = ftype, Threads = threads });
                else if (!LLamaQuantizer.Quantize(src, ol, (LLamaFtype)(int)ftype, threads, true, true)) throw new InvalidOperationException("llama.cpp quantize failed");
                double s = sw.Elapsed.TotalSeconds;
                (cria ? tc : tl).Add(s);
                Console.WriteLine($"round {r + 1}: {(cria ? "Cria     " : "llama.cpp")} {s:F1} s");
            }
            bool same = File.Exists(oc) && File.Exists(ol) && FilesEqual(oc, ol);
            if (r == 0 || !same) Console.WriteLine($"  outputs identical: {same}");
        }
        double mc = Median(tc), ml = Median(tl);
        Console.WriteLine($"median: Cria {mc:F1} s, llama.cpp {ml:F1} s, ratio Cria/llama.cpp {mc / ml:F2}");
        File.Delete(oc); File.Delete(ol);
        return 0;
    }

    /// <summary>quant-svg TSV [--docs DIR] [--subtitle TEXT]: the plot of a quant-table TSV (its own, or rows of several
    /// runs put together, as docs/quantization.tsv) written to DIR/quantization.svg.</summary>
    public static int SvgFromTsv(string[] args)
    {
        var ci = CultureInfo.InvariantCulture;
        string tsv = args[0], docs = "docs", subtitle = "models/default.gguf, perplexity on bench/quant/eval.txt (ctx 128, all chunks), calibration on bench/quant/calib.txt";
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--docs") docs = args[++i];
            else if (args[i] == "--subtitle") subtitle = args[++i];
        }
        var rows = ReadTsv(tsv).ToList();
        File.WriteAllText(Path.Combine(docs, "quantization.svg"), Svg(rows, subtitle));
        Console.WriteLine($"wrote {Path.Combine(docs, "quantization.svg")} from {rows.Count} rows of {tsv}");
        return 0;
    }

    /// <summary>The rows of a quant-table TSV (its header line skipped; empty cells NaN).</summary>
    static IEnumerable<Row> ReadTsv(string path)
    {
        var ci = CultureInfo.InvariantCulture;
        foreach (var line in File.ReadLines(path).Skip(1))
        {
            var c = line.Split('\t');
            if (c.Length < 5) continue;
            double D(int i) => c.Length > i && c[i].Length > 0 ? double.Parse(c[i], ci) : double.NaN;
            yield return new Row(c[0], c[1], D(2), D(3), D(4), c.Length > 5 ? c[5] : "", D(6), D(7), D(8), D(9));
        }
    }

    static bool FilesEqual(string a, string b)
    {
        using var fa = File.OpenRead(a); using var fb = File.OpenRead(b);
        if (fa.Length != fb.Length) return false;
        var ba = new byte[1 << 20]; var bb = new byte[1 << 20];
        int n;
        while ((n = fa.Read(ba)) > 0) { fb.ReadExactly(bb.AsSpan(0, n)); if (!ba.AsSpan(0, n).SequenceEqual(bb.AsSpan(0, n))) return false; }
        return true;
    }

    static double Median(List<double> v) { var s = v.OrderBy(x => x).ToList(); return s.Count % 2 == 1 ? s[s.Count / 2] : (s[s.Count / 2 - 1] + s[s.Count / 2]) / 2; }
}
