using System.CommandLine;
using Cria.Inference;
using Cria.Models;
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
        var cmd = new Command("perplexity", "perplexity of a text file: non-overlapping chunks, second half of each scored (as llama-perplexity)") { files, ctx, threads, ubatch, maxChunks, klBase };
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
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Console.Error.WriteLine($"model: {path}; text: {textPath}; chunks of {c} tokens, scoring the second half of each");
            int chunkLimit = r.GetValue(maxChunks) > 0 ? r.GetValue(maxChunks) : int.MaxValue;
            if (r.GetValue(klBase) is { } basePath)
            {
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
                Console.Out.WriteLine($"perplexity change: {k.PplChangePercent:+0.000;-0.000} % ± {k.PplChangeStdErrPercent:F3} %");
                Console.Out.WriteLine($"mean KLD: {k.MeanKld:F6} ± {k.KldStdErr:F6}");
                Console.Out.WriteLine($"same top token: {k.SameTopFraction * 100:F2} %");
                return 0;
            }
            var res = Perplexity.Compute(context, m.Tokenizer, text, c, (i, n, ppl) =>
            {
                if (i % 10 == 0 || i == n) Console.Error.WriteLine($"[{i}/{n}] running perplexity {ppl:F4}");
            }, chunkLimit);
            Console.Error.WriteLine($"{res.Chunks} chunks, {res.ScoredTokens} tokens scored, mean NLL {res.MeanNll:F4}, {sw.Elapsed.TotalSeconds:F1} s");
            Console.Out.WriteLine($"perplexity: {res.Value:F4}");
            return 0;
        });
        return cmd;
    }
}
