using System.CommandLine;
using Cria.Inference;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria generate [MODEL] -p TEXT -n N [--temp T] [--seed S] [-t THREADS] [-c CTX]</c>, as llama-cli.</summary>
static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Arity = ArgumentArity.ZeroOrOne, Description = "GGUF model file or Hugging Face checkpoint folder (default: the bundled model)" };
        var prompt = new Option<string>("--prompt", "-p") { Description = "prompt text", DefaultValueFactory = _ => "Once upon a time" };
        var file = new Option<string?>("--file", "-f") { Description = "read the prompt from this file (instead of -p)" };
        var n = new Option<int>("--n-predict", "-n") { Description = "number of tokens to generate", DefaultValueFactory = _ => 128 };
        var seed = new Option<ulong?>("--seed", "-s") { Description = "RNG seed (default: random)" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "context size in tokens (default: 4096 or the model's, whichever is smaller)" };
        var special = new Option<bool>("--special") { Description = "parse special-token text in the prompt" };
        var draftModel = new Option<string?>("--model-draft", "-md") { Description = "speculative decoding with this draft model (same tokenizer)" };
        var lookup = new Option<bool>("--lookup") { Description = "speculative decoding with prompt-lookup drafts (n-grams of the prompt and output; no draft model)" };
        var draftMax = new Option<int>("--draft-max") { Description = "most tokens drafted per step (default 15 with a draft model, 10 with --lookup)" };
        var draftPMin = new Option<float>("--draft-p-min") { Description = "the draft model stops drafting below this confidence", DefaultValueFactory = _ => 0.75f };
        var draftFixed = new Option<bool>("--draft-fixed") { Description = "draft up to --draft-max every step (default: adapt to how many drafts the target keeps)" };
        var ngram = new Option<int>("--lookup-ngram") { Description = "longest n-gram prompt lookup matches", DefaultValueFactory = _ => 3 };
        var clamp = new Option<string[]>("--clamp") { Description = "hold feed-forward neuron N of layer L at value V at every position: L:N=V (repeatable; see `cria neurons`)", AllowMultipleArgumentsPerToken = false };
        var grammar = new Option<string?>("--grammar") { Description = "constrain the continuation to this GBNF grammar (llama.cpp's format; start rule 'root')" };
        var grammarFile = new Option<string?>("--grammar-file") { Description = "--grammar read from a file" };
        var jsonSchema = new Option<string?>("--json-schema", "-j") { Description = "constrain the continuation to a JSON document of this schema" };
        var jsonSchemaFile = new Option<string?>("--json-schema-file") { Description = "--json-schema read from a file" };
        var cmd = new Command("generate", "generate text from a prompt (streams as it goes)")
        {
            model, prompt, file, n, seed, threads, ctx, special, draftModel, lookup, draftMax, draftPMin, ngram, draftFixed, clamp,
            grammar, grammarFile, jsonSchema, jsonSchemaFile,
        };
        var kv = new KvCliOptions();
        var lora = new LoraCliOptions();
        var rapid = new RapidCliOptions();
        var samplers = new SamplerCliOptions(new SamplerOptions(), ""); // llama.cpp's defaults
        samplers.AddTo(cmd);
        lora.AddTo(cmd);
        kv.AddTo(cmd);
        rapid.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var constraint = Constraint(r.GetValue(grammar), r.GetValue(grammarFile), r.GetValue(jsonSchema), r.GetValue(jsonSchemaFile));
            var path = DefaultModel.Resolve(r.GetValue(model));
            using var m = LlamaModel.Open(path);
            int ctxSize = r.GetValue(ctx);
            if (ctxSize < 0) throw new CriaException($"context size must be positive, got {ctxSize}");
            if (ctxSize == 0) ctxSize = Math.Min(4096, m.Config.ContextLength);
            int nPredict = r.GetValue(n);
            if (nPredict < 0) throw new CriaException($"-n must be ≥ 0, got {nPredict}");
            using var context = new InferenceContext(m, kv.Apply(r, new ContextOptions
            {
                ContextSize = ctxSize, Threads = r.GetValue(threads), Loras = LoraCliOptions.Load(lora.Adapters(r), m),
                NeuronClamps = (r.GetValue(clamp) ?? []).Select(Interpretability.NeuronClamp.Parse).ToArray(),
            }));
            var sampler = samplers.Read(r) with { Seed = r.GetValue(seed) ?? (ulong)Random.Shared.NextInt64() };
            var gen = new Generator(context, m.Tokenizer) { BeaconRatio = kv.BeaconRatio(r, m.Config) };
            if (m.Config.HasBeacons) Console.Error.WriteLine(KvCliOptions.DescribeBeacons(m.Config, gen.BeaconRatio));
            var draftPath = r.GetValue(draftModel);
            if (draftPath != null && r.GetValue(lookup)) throw new CriaException("give either --model-draft or --lookup, not both");
            int dMax = r.GetValue(draftMax);
            if (dMax < 0) throw new CriaException($"--draft-max must be ≥ 1, got {dMax}");
            bool useRapid = rapid.Enabled(r);
            if (useRapid && r.GetValue(lookup)) throw new CriaException("give either --rapid or --lookup, not both");
            var filePath = r.GetValue(file);
            if (filePath != null && r.GetResult(prompt) is { Implicit: false }) throw new CriaException("give either --prompt or --file, not both");
            if (filePath != null && !File.Exists(filePath)) throw new CriaException($"prompt file not found: {filePath}");
            var text = filePath != null ? File.ReadAllText(filePath) : r.GetValue(prompt) ?? "";
            var promptTokens = m.Tokenizer.Encode(text, m.Tokenizer.AddBos, r.GetValue(special));
            using var dm = draftPath == null ? null : LlamaModel.Open(draftPath);
            var drafterModel = dm ?? (useRapid ? m : null); // RAPID without a draft model: self-speculation
            using var draftContext = drafterModel == null ? null : new InferenceContext(drafterModel, new ContextOptions
            {
                ContextSize = useRapid ? Math.Min(context.Cache.Capacity, rapid.DraftContext(r, nPredict)) : context.Cache.Capacity,
                Threads = r.GetValue(threads),
            });
            string draftName = "prompt lookup";
            if (drafterModel != null)
            {
                if (dm != null) ModelDrafter.CheckCompatible(m, dm);
                var drafter = new ModelDrafter(draftContext!, new SpeculativeOptions
                {
                    DraftMax = dMax == 0 ? 15 : dMax, DraftPMin = r.GetValue(draftPMin), Adaptive = !r.GetValue(draftFixed),
                    Margin = useRapid ? rapid.Margin(r) : 0,
                });
                draftName = "draft " + (dm != null ? Path.GetFileName(draftPath) : "the model itself");
                if (useRapid)
                {
                    var draftPrompt = RagRetriever.DraftPrompt(promptTokens, m.Tokenizer, rapid.Rag(r), out var chunks);
                    drafter.Prompt = new DraftPrompt(draftPrompt, promptTokens.Length);
                    draftName = $"RAPID, {draftName} reading {draftPrompt.Length} of {promptTokens.Length} prompt tokens ({chunks.Count} chunks), η {rapid.Margin(r)}";
                }
                gen.Drafter = drafter;
            }
            else if (r.GetValue(lookup))
                gen.Drafter = new PromptLookupDrafter(SpeculativeOptions.Lookup with { DraftMax = dMax == 0 ? 10 : dMax, NgramMax = r.GetValue(ngram), Adaptive = !r.GetValue(draftFixed) });
            if (gen.Drafter != null && !sampler.Deterministic) throw new CriaException("XTC and mirostat do not work with speculative decoding (their distribution changes with every draw)");
            Console.Out.Write(text);
            Console.Out.Flush();
            foreach (var piece in gen.Generate(promptTokens, new GenerationOptions { MaxTokens = nPredict, Sampler = sampler, ParseSpecial = r.GetValue(special), Grammar = constraint }))
            {
                Console.Out.Write(piece);
                Console.Out.Flush();
            }
            Console.Out.WriteLine();
            var s = gen.LastStats!;
            Console.Error.WriteLine();
            Console.Error.WriteLine($"model: {Path.GetFileName(path)} ({m.Config.LayerCount} layers, dim {m.Config.Dim}), {context.Threads} threads, ctx {context.Cache.Capacity}, {KvCliOptions.Describe(context)}");
            Console.Error.WriteLine($"prompt: {s.PromptTokens} tokens in {s.PromptTime.TotalMilliseconds:F1} ms, {s.PromptTokensPerSecond:F2} tokens/s");
            Console.Error.WriteLine($"generation: {s.GeneratedTokens} tokens in {s.GenerationTime.TotalMilliseconds:F1} ms, {s.GenerationTokensPerSecond:F2} tokens/s (stop: {s.StopReason})");
            if (gen.Drafter != null)
                Console.Error.WriteLine($"speculative ({draftName}): drafted {s.DraftedTokens}, accepted {s.AcceptedTokens} ({100 * s.AcceptanceRate:F1} %), {s.TargetSteps} target steps after the prompt");
            return 0;
        });
        return cmd;
    }

    /// <summary>The output constraint of --grammar, --grammar-file, --json-schema or --json-schema-file (at most one).</summary>
    static Serving.Grammar? Constraint(string? gbnf, string? gbnfFile, string? schema, string? schemaFile)
    {
        var given = new[] { gbnf, gbnfFile, schema, schemaFile }.Count(x => x != null);
        if (given > 1) throw new CriaException("give one of --grammar, --grammar-file, --json-schema and --json-schema-file");
        string Read(string f) => File.Exists(f) ? File.ReadAllText(f) : throw new CriaException($"file not found: {f}");
        if (gbnf != null || gbnfFile != null) return Serving.Grammar.Parse(gbnf ?? Read(gbnfFile!));
        if (schema == null && schemaFile == null) return null;
        string text = schema ?? Read(schemaFile!);
        System.Text.Json.JsonElement element;
        try { element = System.Text.Json.JsonDocument.Parse(text).RootElement.Clone(); }
        catch (System.Text.Json.JsonException e) { throw new CriaException($"the JSON schema is not valid JSON: {e.Message}"); }
        return Serving.JsonSchemaGrammar.Compile(element);
    }
}
