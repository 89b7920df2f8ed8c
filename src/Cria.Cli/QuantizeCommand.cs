using System.CommandLine;
using Cria.Quantization;
using Cria.Tensors;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria quantize IN OUT --type T [--imatrix FILE] [--awq CALIB.txt [--awq-inner] [--awq-clip] | --gptq CALIB.txt | --fisher CALIB.txt] [-t N] [--pure] [--force]</c>, as llama-quantize.</summary>
static class QuantizeCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "GGUF model to quantize (F32/F16/BF16)" };
        var output = new Argument<string>("output") { Description = "GGUF file to write (refused if it exists, unless --force)" };
        var type = new Option<string>("--type") { Description = "q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q2_k_s q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs iq3_m iq3_s iq3_xs iq3_xxs iq2_m iq2_s iq2_xs iq2_xxs iq1_m iq1_s f16 bf16 f32 (q3_k/q4_k/q5_k = the _m mixes; q2_k_s, iq3_xs, iq3_xxs, iq2_* and iq1_* need --imatrix, as in llama-quantize)", DefaultValueFactory = _ => "q4_k_m" };
        var imatrix = new Option<string?>("--imatrix") { Description = "importance matrix (legacy .dat from `cria imatrix` or llama-imatrix)" };
        var cands = new Option<string>("--imatrix-candidates") { Description = "with --imatrix, the encodings each block chooses among by activation-weighted error: ref,ggml,imp (ggml alone with --imatrix-row-scale fitted = llama-quantize --imatrix)", DefaultValueFactory = _ => "ref,ggml" };
        var rowScale = new Option<string>("--imatrix-row-scale") { Description = "with --imatrix: unbiased (each row's scales × one factor so the importance-weighted regression of the quantized row on the original is 1; removes the shrinkage of least-squares-fitted scales) or fitted (the scales as the quantizers fit them)", DefaultValueFactory = _ => "unbiased" };
        var includeW = new Option<string[]>("--include-weights") { Description = "with --imatrix, use it only for the tensors whose name contains this (repeatable; llama-quantize's option)", DefaultValueFactory = _ => [] };
        var excludeW = new Option<string[]>("--exclude-weights") { Description = "with --imatrix, do not use it for the tensors whose name contains this, e.g. attn_q (repeatable; llama-quantize's option)", DefaultValueFactory = _ => [] };
        var awq = new Option<string?>("--awq") { Description = "calibration text for activation-aware scaling folded into the RMSNorm weights" };
        var awqChunks = new Option<int>("--awq-chunks") { Description = "calibration chunks for --awq", DefaultValueFactory = _ => 32 };
        var awqCtx = new Option<int>("--awq-ctx") { Description = "calibration chunk length for --awq", DefaultValueFactory = _ => 128 };
        var awqClip = new Option<bool>("--awq-clip") { Description = "with --awq, also AWQ's weight clipping search: per group of 32 weights along each row, clamp to r·max|w| (r = 1, 0.95 … 0.5) where that lowers the calibration output error (every quantized blk.* matrix)" };
        var awqSkip = new Option<int>("--awq-skip") { Description = "with --awq, leave the first N positions of each calibration chunk out of the statistics (BOS outliers; did not help on the bundled model)", DefaultValueFactory = _ => 0 };
        var awqClipDamp = new Option<double>("--awq-clip-damp") { Description = "with --awq-clip, add this fraction of G's mean diagonal to G (weight-error penalty; did not help on the bundled model)", DefaultValueFactory = _ => 0 };
        var awqClipLocal = new Option<bool>("--awq-clip-local") { Description = "with --awq-clip, measure each group's error on its own (llm-awq's per-group objective, no cross terms; did not help on the bundled model)" };
        var awqInner = new Option<bool>("--awq-inner") { Description = "with --awq, also AWQ's v→o and up→down scalings (attn_v/ffn_up rows ÷ s, attn_output/ffn_down columns × s)" };
        var awqClipTensors = new Option<string>("--awq-clip-tensors") { Description = "with --awq-clip, the matrices of each block to clip (llm-awq leaves out attn_q,attn_k)", DefaultValueFactory = _ => "attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down" };
        var awqClipGrid = new Option<string>("--awq-clip-grid") { Description = "with --awq-clip, the clipping ratios tried (1 = no clipping is always included)", DefaultValueFactory = _ => "1,0.95,0.9,0.85,0.8,0.75,0.7,0.65,0.6,0.55,0.5" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var pure = new Option<bool>("--pure") { Description = "every tensor gets the base type (no K-quant mix)" };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var requant = new Option<bool>("--allow-requantize") { Description = "accept already-quantized input tensors" };
        var gptq = new Option<string?>("--gptq") { Description = "calibration text for GPTQ: rounding errors pushed onto the later columns with the inputs' Gram matrix (same types and block format)" };
        var gptqChunks = new Option<int>("--gptq-chunks") { Description = "calibration chunks for --gptq", DefaultValueFactory = _ => 64 };
        var gptqCtx = new Option<int>("--gptq-ctx") { Description = "calibration chunk length for --gptq", DefaultValueFactory = _ => 128 };
        var gptqDamp = new Option<double>("--gptq-damp") { Description = "dampening added to the Gram matrix, as a fraction of its mean diagonal", DefaultValueFactory = _ => 0.01 };
        var gptqScales = new Option<string>("--gptq-scales") { Description = "how GPTQ picks block scales from the updated weights: ref (ggml's reference quantizer) or weighted (ggml's imatrix search with diag H)", DefaultValueFactory = _ => "ref" };
        var fisher = new Option<string?>("--fisher") { Description = "calibration text for the diagonal Fisher information (squared loss gradients, per weight; needs an F32/F16 input and three F32 copies of the model in memory): each weight's rounding error weighted by it" };
        var fisherChunks = new Option<int>("--fisher-chunks") { Description = "calibration chunks for --fisher", DefaultValueFactory = _ => 64 };
        var fisherCtx = new Option<int>("--fisher-ctx") { Description = "calibration chunk length for --fisher", DefaultValueFactory = _ => 128 };
        var fisherCands = new Option<string>("--fisher-candidates") { Description = "with --fisher, the encodings each block chooses among by Fisher-weighted error (ref, ggml, imp)", DefaultValueFactory = _ => "ref,ggml" };
        var cmd = new Command("quantize", "quantize a GGUF model to a llama.cpp type or mix (written atomically)")
        {
            input, output, type, imatrix, cands, rowScale, includeW, excludeW, awq, awqChunks, awqCtx, awqInner, awqClip, awqClipTensors, awqClipGrid, awqClipDamp, awqClipLocal, awqSkip, gptq, gptqChunks, gptqCtx, gptqDamp, gptqScales, fisher, fisherChunks, fisherCtx, fisherCands, threads, pure, force, requant,
        };
        cmd.SetAction(r =>
        {
            string inPath = r.GetValue(input)!, outPath = r.GetValue(output)!;
            if (!r.GetValue(force) && File.Exists(outPath)) throw new CriaException($"{outPath}: the output file exists (use --force to replace it)");
            if ((r.GetValue(awqClip) || r.GetValue(awqInner)) && r.GetValue(awq) == null) throw new CriaException("--awq-clip and --awq-inner need --awq CALIB.txt (the calibration text)");
            if (r.GetValue(gptq) != null && r.GetValue(awqClip))
                throw new CriaException("--gptq cannot be combined with --awq-clip (GPTQ would fit the clipped weights, not the model's)");
            if (r.GetValue(fisher) != null && (r.GetValue(gptq) != null || r.GetValue(awq) != null))
                throw new CriaException("--fisher cannot be combined with --gptq or --awq (each decides the rounding its own way)");
            var o = new QuantizeOptions
            {
                FileType = QuantMix.Parse(r.GetValue(type)!), Threads = r.GetValue(threads), Pure = r.GetValue(pure),
                Force = r.GetValue(force), AllowRequantize = r.GetValue(requant),
            };
            if (r.GetValue(imatrix) is { } imPath)
            {
                var im = Imatrix.Load(imPath);
                Console.Error.WriteLine($"imatrix: {im.Values.Count} entries from {imPath} ({im.Chunks} chunks of '{im.Dataset}')");
                bool unbiased = r.GetValue(rowScale)!.ToLowerInvariant() switch
                {
                    "unbiased" => true,
                    "fitted" => false,
                    var v => throw new CriaException($"--imatrix-row-scale: unknown value '{v}' (unbiased, fitted)"),
                };
                var selected = Imatrix.SelectWeights(im.Values, r.GetValue(includeW)!, r.GetValue(excludeW)!);
                if (selected.Count < im.Values.Count) Console.Error.WriteLine($"imatrix: {selected.Count} of {im.Values.Count} entries used (--include-weights / --exclude-weights)");
                // As llama-quantize: an imatrix with no entry left is no imatrix (no has_imatrix type rules either).
                if (selected.Count > 0) o = o with { Imatrix = selected, ImatrixCandidates = ParseCandidates(r.GetValue(cands)!), ImatrixUnbiasedRowScale = unbiased };
            }
            IReadOnlyDictionary<string, float[]>? awqScales = null;
            if (r.GetValue(awq) is { } calib)
            {
                var res = Awq.Compute(inPath, TokenizerTrainer.ReadCorpus(calib), o,
                    new AwqOptions { MaxChunks = r.GetValue(awqChunks), ContextSize = r.GetValue(awqCtx), Threads = r.GetValue(threads), Clip = r.GetValue(awqClip), SkipPositions = r.GetValue(awqSkip), ClipDamp = r.GetValue(awqClipDamp), ClipCrossTerms = !r.GetValue(awqClipLocal), ScaleInner = r.GetValue(awqInner), ClipTensors = r.GetValue(awqClipTensors)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries), ClipGrid = ParseGrid(r.GetValue(awqClipGrid)!) }, Console.Error.WriteLine);
                var over = res.Overrides;
                o = o with { Override = n => over.GetValueOrDefault(n), Imatrix = res.Imatrix ?? o.Imatrix };
                awqScales = res.ColumnScales;
            }
            if (r.GetValue(gptq) is { } gcalib)
            {
                var scales = r.GetValue(gptqScales)!.ToLowerInvariant() switch
                {
                    "ref" or "reference" => GptqScales.Reference,
                    "weighted" => GptqScales.Weighted,
                    var v => throw new CriaException($"--gptq-scales: unknown value '{v}' (ref, weighted)"),
                };
                var factors = Gptq.Collect(inPath, TokenizerTrainer.ReadCorpus(gcalib),
                    new GptqOptions { MaxChunks = r.GetValue(gptqChunks), ContextSize = r.GetValue(gptqCtx), Threads = r.GetValue(threads), Damp = r.GetValue(gptqDamp) },
                    Console.Error.WriteLine, awqScales);
                o = o with { Gptq = factors, GptqScales = scales };
            }
            if (r.GetValue(fisher) is { } fcalib)
            {
                var fo = new FisherOptions { MaxChunks = r.GetValue(fisherChunks), ContextSize = r.GetValue(fisherCtx), Threads = r.GetValue(threads) };
                var sw = System.Diagnostics.Stopwatch.StartNew();
                var f = Fisher.Collect(inPath, TokenizerTrainer.ReadCorpus(fcalib), fo, out int used);
                Console.Error.WriteLine($"fisher: {f.Count} matrices from {used} chunks of {fo.ContextSize} tokens in {sw.Elapsed.TotalSeconds:F1} s");
                o = o with { Fisher = f, FisherCandidates = ParseCandidates(r.GetValue(fisherCands)!) };
            }
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            try
            {
                var progress = new ProgressLine();
                var rep = ModelQuantizer.Run(inPath, outPath, o with
                {
                    Progress = (i, n, done, total, name) => progress.Show($"[{i,4}/{n}] {100.0 * done / total,5:F1}%  {name}"),
                }, cts.Token);
                progress.Done();
                var counts = rep.Tensors.GroupBy(t => t.To).OrderBy(g => g.Key).Select(g => $"{g.Count()}×{g.Key}");
                Console.Error.WriteLine($"{rep.Tensors.Count} tensors ({string.Join(", ", counts)}){(rep.Fallbacks > 0 ? $", {rep.Fallbacks} fallbacks" : "")}");
                Console.Out.WriteLine($"wrote {outPath}: {rep.BytesIn / 1048576.0:F2} MiB → {rep.BytesOut / 1048576.0:F2} MiB, {rep.BitsPerWeight:F3} bits per weight, {rep.Seconds:F2} s");
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine("\ninterrupted: nothing written");
                return 130;
            }
            finally { Console.CancelKeyPress -= onCancel; }
            return 0;
        });
        return cmd;
    }

    static float[] ParseGrid(string s)
    {
        var g = new List<float> { 1f };
        foreach (var p in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!float.TryParse(p, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float r) || !(r > 0 && r <= 1))
                throw new CriaException($"--awq-clip-grid: '{p}' is not a ratio in (0, 1]");
            if (!g.Contains(r)) g.Add(r);
        }
        return [.. g];
    }

    static CalibratedCandidates ParseCandidates(string s)
    {
        CalibratedCandidates c = 0;
        foreach (var p in s.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            c |= p.ToLowerInvariant() switch
            {
                "ref" or "reference" => CalibratedCandidates.Reference,
                "ggml" => CalibratedCandidates.Ggml,
                "imp" or "importance" => CalibratedCandidates.Importance,
                _ => throw new CriaException($"--imatrix-candidates: unknown candidate '{p}' (ref, ggml, imp)"),
            };
        if (c == 0) throw new CriaException("--imatrix-candidates: no candidate given (ref, ggml, imp)");
        return c;
    }
}

/// <summary>One self-overwriting progress line on stderr (plain lines when stderr is redirected).</summary>
sealed class ProgressLine
{
    readonly bool _tty = !Console.IsErrorRedirected;
    DateTime _last = DateTime.MinValue;
    public void Show(string s)
    {
        var now = DateTime.UtcNow;
        if (_tty) Console.Error.Write("\r" + s.PadRight(Math.Min(100, Math.Max(s.Length, 79))));
        else if ((now - _last).TotalSeconds >= 2) { Console.Error.WriteLine(s); _last = now; }
    }
    public void Done() { if (_tty) Console.Error.WriteLine(); }
}
