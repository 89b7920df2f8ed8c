using System.CommandLine;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria swiftkv IN OUT --layers L [--group G] (--calib FILE | --no-fit)</c>: a SwiftKV model (docs/swiftkv.md).</summary>
static class SwiftKvCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "llama GGUF model (the unquantized one; quantize the result)" };
        var output = new Argument<string>("output") { Description = "SwiftKV GGUF to write (holds the original tensors too)" };
        var layers = new Option<int>("--layers", "-L") { Description = "L: layers L and above take K/V from layer L's input (default: half the layers)" };
        var group = new Option<int>("--group") { Description = "AcrossKV: consecutive SwiftKV layers sharing one KV cache layer", DefaultValueFactory = _ => 1 };
        var calib = new Option<string?>("--calib") { Description = "calibration text to fit the K/V projections on (least squares)" };
        var noFit = new Option<bool>("--no-fit") { Description = "copy each layer's own attn_k / attn_v instead of fitting (the paper's initialisation)" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "calibration chunk length in tokens", DefaultValueFactory = _ => 128 };
        var chunks = new Option<int>("--chunks") { Description = "at most this many calibration chunks", DefaultValueFactory = _ => 64 };
        var damp = new Option<double>("--damp") { Description = "ridge term as a fraction of the mean diagonal of HᵀH", DefaultValueFactory = _ => 0.01 };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var force = new Option<bool>("--force") { Description = "replace the output file if it exists" };
        var cmd = new Command("swiftkv", "SwiftKV (SingleInputKV, AcrossKV): later layers take their keys and values from one earlier input, so prompt tokens skip them")
        {
            input, output, layers, group, calib, noFit, ctx, chunks, damp, threads, force,
        };
        cmd.SetAction(r =>
        {
            string inPath = DefaultModel.Resolve(r.GetValue(input));
            int L = r.GetValue(layers);
            if (L == 0) { using var f = Cria.Formats.GgufFile.Open(inPath); L = f.Get<int>(f.Get<string>("general.architecture", "llama") + ".block_count", 0) / 2; }
            bool fit = !r.GetValue(noFit);
            string? calibPath = r.GetValue(calib);
            if (fit && calibPath == null) throw new CriaException("swiftkv: give --calib FILE to fit the projections, or --no-fit");
            if (!fit && calibPath != null) throw new CriaException("swiftkv: --no-fit and --calib exclude each other");
            var o = new SwiftKvOptions
            {
                KvLayers = L, GroupSize = r.GetValue(group), Fit = fit, Damp = r.GetValue(damp),
                ContextSize = r.GetValue(ctx), MaxChunks = r.GetValue(chunks), Threads = r.GetValue(threads),
            };
            var report = SwiftKv.Build(inPath, r.GetValue(output)!, calibPath == null ? null : TokenizerTrainer.ReadCorpus(calibPath), o,
                s => Console.Error.WriteLine(s), r.GetValue(force));
            Console.Out.WriteLine($"wrote {r.GetValue(output)}: SwiftKV from layer {L}, group {o.GroupSize}" +
                (fit ? $", K/V fitted on {report.Tokens} tokens (mean relative error keys {report.Fits.Average(x => x.KeyError):F4}, values {report.Fits.Average(x => x.ValueError):F4})" : ", K/V copied (not fitted)"));
            return 0;
        });
        return cmd;
    }
}
