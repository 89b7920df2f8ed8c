using System.CommandLine;
using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria perplexity [MODEL] TEXTFILE [-c CTX]</c>: perplexity as llama-perplexity computes it.</summary>
static class PerplexityCommand
{
    public static Command Create()
    {
        var files = new Argument<string[]>("files") { Arity = new ArgumentArity(1, 2), Description = "[MODEL] TEXTFILE (MODEL defaults to the bundled model)" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "chunk size in tokens (default: the model's context length)" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var ubatch = new Option<int>("--ubatch-size", "-ub") { Description = "rows per forward step (default: the chunk); with --kv-evict, eviction runs after each step (chunked prefill)" };
        var maxChunks = new Option<int>("--chunks") { Description = "evaluate at most this many chunks (default: all)" };
        var klBase = new Option<string>("--kl-base") { Description = "also run this base model (e.g. the unquantized source) on the same chunks and report KL(base ‖ model), same-top-token rate and the paired perplexity change with its standard error (llama-perplexity --kl-divergence)" };
        var actQuant = new Option<string?>("--act-quant") { Description = "simulate activation quantization of every block's matrix inputs: a4, a8 (uniform blocks), fmpq (COMET: outlier channels permuted into INT8 blocks, the rest INT4; needs --act-calib) or fmpq-inplace (no permutation: blocks holding an outlier are INT8)" };
        var actCalib = new Option<string?>("--act-calib") { Description = "calibration text for --act-quant fmpq (each channel's largest |x|)" };
        var actBlock = new Option<int>("--act-block") { Description = "channels per activation block (COMET: 128)", DefaultValueFactory = _ => 128 };
        var actRatio = new Option<float>("--act-outlier-ratio") { Description = "fmpq: a channel is an outlier when its calibration max |x| exceeds this many times the median channel's", DefaultValueFactory = _ => 4f };
        var cmd = new Command("perplexity", "perplexity of a text file: non-overlapping chunks, second half of each scored (as llama-perplexity)") { files, ctx, threads, ubatch, maxChunks, klBase, actQuant, actCalib, actBlock, actRatio };
        var kv = new KvCliOptions();
        var lora = new LoraCliOptions();
        lora.AddTo(cmd);
        kv.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var f = r.GetValue(files)!;
            string? modelArg = f.Length == 2 ? f[0] : null;
            string textPath = f[^1];
            string text = TokenizerTrainer.ReadCorpus(textPath);
            var path = DefaultModel.Resolve(modelArg);
            using var m = LlamaModel.Open(path);
            int c = r.GetValue(ctx);
            if (c < 0) throw new CriaException($"context size must be positive, got {c}");
            if (c == 0) c = m.Config.ContextLength;
            int ub = r.GetValue(ubatch) > 0 ? r.GetValue(ubatch) : c;
            using var context = new InferenceContext(m, kv.Apply(r, new ContextOptions { ContextSize = c, Threads = r.GetValue(threads), MicroBatch = ub, Loras = LoraCliOptions.Load(lora.Adapters(r), m) }));
            Console.Error.WriteLine(KvCliOptions.Describe(context));
            int? beacons = kv.BeaconRatio(r, m.Config);
            if (m.Config.HasBeacons) Console.Error.WriteLine(KvCliOptions.DescribeBeacons(m.Config, beacons));
            if (r.GetValue(actQuant) is { } aq)
            {
                var ao = aq switch
                {
                    "a4" => new ActivationQuantOptions { Mode = ActivationQuantMode.Uniform, Bits = 4 },
                    "a8" => new ActivationQuantOptions { Mode = ActivationQuantMode.Uniform, Bits = 8 },
                    "fmpq" => new ActivationQuantOptions { Mode = ActivationQuantMode.Mixed, Bits = 4, OutlierBits = 8 },
                    "fmpq-inplace" => new ActivationQuantOptions { Mode = ActivationQuantMode.MixedInPlace, Bits = 4, OutlierBits = 8 },
                    _ => throw new CriaException($"--act-quant must be a4, a8, fmpq or fmpq-inplace, got '{aq}'"),
                } with { Block = r.GetValue(actBlock), OutlierRatio = r.GetValue(actRatio) };
                ao.Validate();
                string? calib = r.GetValue(actCalib);
                if (ao.Mode != ActivationQuantMode.Uniform && calib == null) throw new CriaException($"--act-quant {aq} needs --act-calib TEXT (its outlier channels come from calibration)");
                var q = ao.Mode != ActivationQuantMode.Uniform
                    ? ActivationQuantizer.Calibrate(m, TokenizerTrainer.ReadCorpus(calib!), Math.Min(c, 128), 32, Math.Max(1, r.GetValue(threads) > 0 ? r.GetValue(threads) : Environment.ProcessorCount), ao)
                    : ActivationQuantizer.Uniform(m, ao);
                context.ActivationTransform = q;
                Console.Error.WriteLine($"activations: {aq}, blocks of {ao.Block} channels; {q.HighPrecisionFraction:P1} of channels in INT{ao.OutlierBits} blocks, {q.BitsPerValue:F2} bits per value (codes and F16 block scales)");
                if (ao.Mode != ActivationQuantMode.Uniform)
                    foreach (var (name, l) in q.Layouts.Where(kv => kv.Value.HighBlocks > 0).OrderBy(kv => kv.Key, StringComparer.Ordinal))
                        Console.Error.WriteLine($"  {name}: {l.OutlierChannels} outlier channels → {l.HighBlocks} INT{ao.OutlierBits} block(s) of {l.High.Length}");
            }
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Console.Error.WriteLine($"model: {path}; text: {textPath}; chunks of {c} tokens, scoring the second half of each");
            int chunkLimit = r.GetValue(maxChunks) > 0 ? r.GetValue(maxChunks) : int.MaxValue;
            if (r.GetValue(klBase) is { } basePath)
            {
                if (beacons != null) throw new CriaException("--kl-base compares plain models; give --no-beacons to compare an Activation Beacon model's base");
                using var bm = LlamaModel.Open(DefaultModel.Resolve(basePath));
                if (bm.Config.VocabSize != m.Config.VocabSize)
                    throw new CriaException($"--kl-base: {basePath} has a vocabulary of {bm.Config.VocabSize} tokens, {path} of {m.Config.VocabSize}; KL divergence needs one tokenizer");
                using var baseContext = new InferenceContext(bm, new ContextOptions { ContextSize = c, Threads = r.GetValue(threads), MicroBatch = ub });
                var k = Perplexity.CompareTo(baseContext, context, m.Tokenizer, text, c, (i, n, kld) =>
                {
                    if (i % 10 == 0 || i == n) Console.Error.WriteLine($"[{i}/{n}] running mean KLD {kld:F6}");
                }, chunkLimit);
                Console.Error.WriteLine($"{k.Model.Chunks} chunks, {k.Model.ScoredTokens} tokens scored, {sw.Elapsed.TotalSeconds:F1} s");
                Console.Out.WriteLine($"perplexity: {k.Model.Value:F4}");
                Console.Out.WriteLine($"base perplexity: {k.Base.Value:F4}");
                Console.Out.WriteLine($"perplexity change: {k.PplChangePercent:+0.000;-0.000;+0.000} % ± {k.PplChangeStdErrPercent:F3} %");
                Console.Out.WriteLine($"mean KLD: {k.MeanKld:F6} ± {k.KldStdErr:F6}");
                Console.Out.WriteLine($"same top token: {k.SameTopFraction * 100:F2} %");
                return 0;
            }
            var res = Perplexity.Compute(context, m.Tokenizer, text, c, (i, n, ppl) =>
            {
                if (i % 10 == 0 || i == n) Console.Error.WriteLine($"[{i}/{n}] running perplexity {ppl:F4}");
            }, chunkLimit, beacons);
            Console.Error.WriteLine($"{res.Chunks} chunks, {res.ScoredTokens} tokens scored, mean NLL {res.MeanNll:F4}, {sw.Elapsed.TotalSeconds:F1} s");
            Console.Out.WriteLine($"perplexity: {res.Value:F4}");
            return 0;
        });
        return cmd;
    }
}
