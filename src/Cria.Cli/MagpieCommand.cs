using System.CommandLine;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Tokenization;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria magpie [MODEL] -n N -o OUT.jsonl</c>: instruction data synthesized by an aligned chat model from its
/// own pre-query template (<see cref="Magpie"/>), one {"instruction", "response"} object per line.</summary>
static class MagpieCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Description = "an instruction-tuned chat model (its GGUF chat template is used; default: the bundled model)", Arity = ArgumentArity.ZeroOrOne };
        var count = new Option<int>("--count", "-n") { Description = "records to write", DefaultValueFactory = _ => 100 };
        var output = new Option<string>("--output", "-o") { Description = "JSONL file, written when the run ends (atomically)", Required = true };
        var system = new Option<string?>("--system") { Description = "a system turn before the user header (steers the topic)" };
        var maxInstruction = new Option<int>("--max-instruction") { Description = "instruction token limit (longer ones are dropped as unfinished)", DefaultValueFactory = _ => 256 };
        var maxResponse = new Option<int>("--max-response") { Description = "response token limit (longer ones are dropped)", DefaultValueFactory = _ => 512 };
        var temp = new Option<float>("--temp") { Description = "instruction sampling temperature (responses are greedy)", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong>("--seed") { DefaultValueFactory = _ => 1234UL };
        var ctxSize = new Option<int>("--ctx-size", "-c") { Description = "context size (default: the model's, at most 4096)" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var cmd = new Command("magpie", "synthesize instruction/response pairs from a chat model's pre-query template (Magpie)")
        { model, count, output, system, maxInstruction, maxResponse, temp, seed, ctxSize, threads, force };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            if (File.Exists(outPath) && !r.GetValue(force)) throw new CriaException($"{outPath}: the output file exists (use --force to replace it)");
            var o = new MagpieOptions
            {
                Count = r.GetValue(count), System = r.GetValue(system), MaxInstructionTokens = r.GetValue(maxInstruction), MaxResponseTokens = r.GetValue(maxResponse),
                InstructionSampler = new SamplerOptions { Temperature = r.GetValue(temp), TopK = 0, TopP = 1f, MinP = 0f, Seed = r.GetValue(seed) },
            };
            o.Validate();
            using var m = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(model)));
            var template = ChatTemplate.FromGguf(m.File, m.Tokenizer);
            var (pre, _) = Magpie.Split(template, o.System);
            Console.Error.WriteLine($"pre-query template ({template.Name}): {JsonSerializer.Serialize(pre)}");
            int ctx = r.GetValue(ctxSize) > 0 ? r.GetValue(ctxSize) : Math.Min(m.Config.ContextLength, 4096);
            using var context = new InferenceContext(m, new ContextOptions { ContextSize = ctx, Threads = r.GetValue(threads) });
            var g = new Generator(context, m.Tokenizer);
            string tmp = outPath + ".tmp-" + Environment.ProcessId;
            MagpieReport report;
            try
            {
                using (var w = new StreamWriter(tmp))
                    report = Magpie.Run(g, template, o, rec =>
                    {
                        w.WriteLine(JsonSerializer.Serialize(new { instruction = rec.Instruction, response = rec.Response }));
                        Console.Error.WriteLine($"[{rec.InstructionTokens} + {rec.ResponseTokens} tokens] {Short(rec.Instruction)}");
                    });
                File.Move(tmp, outPath, overwrite: true);
            }
            finally { if (File.Exists(tmp)) File.Delete(tmp); }
            Console.Out.WriteLine($"wrote {report.Written} records to {outPath} from {report.Attempts} sampled instructions " +
                $"(dropped: {report.Empty} empty, {report.Unfinished} unfinished, {report.Duplicates} duplicates, {report.UnfinishedResponses} with unfinished responses)");
            return 0;
        });
        return cmd;
    }

    static string Short(string s) => (s.Length > 100 ? s[..100] + "…" : s).Replace('\n', ' ');
}
