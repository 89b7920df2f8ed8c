using System.CommandLine;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria swiftkv IN OUT --layers L [--group G] (--calib FILE | --no-fit)</c>: a SwiftKV model; <c>cria swiftkv
/// SWIFT OUT --distill FILE [--steps N]</c>: distil one (docs/swiftkv.md).</summary>
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
        var distill = new Option<string?>("--distill") { Description = "distil the SwiftKV model INPUT on this text (KL to its original model; only the SwiftKV tensors train)" };
        var steps = new Option<int>("--steps") { Description = "distillation steps", DefaultValueFactory = _ => 300 };
        var lr = new Option<float>("--lr") { Description = "distillation learning rate (AdamW, cosine decay)", DefaultValueFactory = _ => 1e-3f };
        var batch = new Option<int>("--batch") { Description = "distillation sequences per step", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq") { Description = "distillation sequence length", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temperature") { Description = "distillation temperature τ (loss τ²·KL)", DefaultValueFactory = _ => 2f };
        var cmd = new Command("swiftkv", "SwiftKV (SingleInputKV, AcrossKV): later layers take their keys and values from one earlier input, so prompt tokens skip them")
        {
            input, output, layers, group, calib, noFit, ctx, chunks, damp, threads, force, distill, steps, lr, batch, seq, temperature,
        };
        cmd.SetAction(r =>
        {
            string inPath = DefaultModel.Resolve(r.GetValue(input));
            if (r.GetValue(distill) is { } distillPath)
            {
                if (r.GetValue(layers) != 0 || r.GetValue(calib) != null || r.GetValue(noFit))
                    throw new CriaException("swiftkv --distill trains an existing SwiftKV model: --layers, --calib and --no-fit belong to building one");
                var d = new SwiftKvDistillOptions
                {
                    Steps = r.GetValue(steps), LearningRate = r.GetValue(lr), BatchSize = r.GetValue(batch), SeqLen = r.GetValue(seq),
                    Temperature = r.GetValue(temperature), Threads = r.GetValue(threads) > 0 ? r.GetValue(threads) : Environment.ProcessorCount,
                };
                var progress = new ProgressLine();
                var log = SwiftKv.Distill(inPath, r.GetValue(output)!, TokenizerTrainer.ReadCorpus(distillPath), d,
                    s => progress.Show($"step {s.Step}/{d.Steps}  τ²·KL {s.Loss:F4}  lr {s.LearningRate:E2}"), r.GetValue(force));
                progress.Done();
                int k = Math.Clamp(log.Count / 2, 1, 10);
                Console.Out.WriteLine($"wrote {r.GetValue(output)}: distilled {d.Steps} steps, τ²·KL {log.Take(k).Average(x => x.Loss):F4} (first {k}) → {log.TakeLast(k).Average(x => x.Loss):F4} (last {k})");
                return 0;
            }
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
