using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Safety;

namespace Cria.Cli;

/// <summary><c>cria guard MODEL --turn TEXT [--turn TEXT …] [--template llama3|llama1] [--categories FILE]</c>: classifies
/// the last turn of a conversation with a Llama Guard model (<see cref="LlamaGuard"/>).</summary>
static class GuardCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "a Llama Guard GGUF (Llama Guard 3 for --template llama3)" };
        var turns = new Option<string[]>("--turn") { Description = "a conversation turn, in order: user, assistant, user, … (repeat); the last one is classified", Required = true };
        var template = new Option<string>("--template") { Description = "llama3 (Llama Guard 3's chat template, S1–S14) or llama1 (the [INST] template of Llama Guard 1, with --categories)", DefaultValueFactory = _ => "llama3" };
        var categories = new Option<string?>("--categories") { Description = "JSON array of {\"code\", \"name\", \"description\"}: the policy (required for llama1; replaces S1–S14 for llama3)" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var cmd = new Command("guard", "classify the last turn of a conversation as safe or unsafe with a Llama Guard model") { model, turns, template, categories, threads };
        cmd.SetAction(r =>
        {
            var t = r.GetValue(turns) ?? [];
            GuardCategory[]? cats = null;
            if (r.GetValue(categories) is { } file)
            {
                try { cats = JsonSerializer.Deserialize<GuardCategory[]>(File.ReadAllText(file), new JsonSerializerOptions { PropertyNameCaseInsensitive = true }); }
                catch (JsonException e) { throw new CriaException($"--categories {file}: not a JSON array of {{code, name, description}}: {e.Message}"); }
                if (cats == null || cats.Length == 0 || cats.Any(c => string.IsNullOrWhiteSpace(c.Code) || string.IsNullOrWhiteSpace(c.Name)))
                    throw new CriaException($"--categories {file}: every category needs a code and a name");
            }
            string prompt = r.GetValue(template) switch
            {
                "llama3" => LlamaGuard.Prompt3(t, cats),
                "llama1" => LlamaGuard.Prompt1(t, cats ?? throw new CriaException("--template llama1 needs --categories (the policy with descriptions)")),
                var x => throw new CriaException($"--template '{x}': llama3 or llama1"),
            };
            using var m = LlamaModel.Open(r.GetValue(model)!);
            using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = Math.Min(m.Config.ContextLength, 8192), Threads = r.GetValue(threads) });
            var v = LlamaGuard.Classify(ctx, m.Tokenizer, prompt);
            Console.WriteLine(v.Unsafe ? "unsafe" + (v.Categories.Count > 0 ? " " + string.Join(",", v.Categories) : "") : "safe");
            Console.WriteLine($"P(unsafe) = {v.UnsafeProbability.ToString("F4", CultureInfo.InvariantCulture)} (role {LlamaGuard.RoleOf(t)}{(v.Valid ? "" : "; the model's answer was not in the expected format: " + JsonSerializer.Serialize(v.Output) + ", so the verdict is P(unsafe) ≥ 0.5")})");
            return 0;
        });
        return cmd;
    }
}
