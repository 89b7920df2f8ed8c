using System.CommandLine;
using Cria.Models;
using Cria.Quantization;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria imatrix MODEL TEXTFILE -o FILE [-c CTX] [--chunks N]</c>, as llama-imatrix (legacy .dat output).</summary>
static class ImatrixCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "GGUF model (the unquantized one)" };
        var text = new Argument<string>("text") { Description = "calibration text file" };
        var output = new Option<string>("--output", "-o") { Description = "imatrix file to write (llama.cpp legacy .dat format)", DefaultValueFactory = _ => "imatrix.dat" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "chunk length in tokens", DefaultValueFactory = _ => 128 };
        var chunks = new Option<int>("--chunks") { Description = "at most this many chunks", DefaultValueFactory = _ => 64 };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var cmd = new Command("imatrix", "importance matrix (mean squared activation per input column of every matrix product) over calibration text")
        {
            model, text, output, ctx, chunks, threads,
        };
        cmd.SetAction(r =>
        {
            using var m = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(model)));
            string textPath = r.GetValue(text)!;
            var progress = new ProgressLine();
            var im = Imatrix.Collect(m, TokenizerTrainer.ReadCorpus(textPath), r.GetValue(ctx), r.GetValue(chunks), r.GetValue(threads),
                Path.GetFileName(textPath), (i, n) => progress.Show($"[{i}/{n}] chunks"));
            progress.Done();
            string outPath = r.GetValue(output)!;
            im.Save(outPath);
            Console.Out.WriteLine($"wrote {outPath}: {im.Values.Count} matrices, {im.Chunks} chunks of {r.GetValue(ctx)} tokens");
            Console.Out.WriteLine("how unequal each matrix's input channels are (over the layers; activation-aware quantization acts where these are large):");
            foreach (var line in Imatrix.SpreadSummary(im.Values)) Console.Out.WriteLine("  " + line);
            return 0;
        });
        return cmd;
    }
}
