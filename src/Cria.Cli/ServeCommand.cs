using System.CommandLine;
using Cria.Inference;
using Cria.Serving;
using Cria.Server;

namespace Cria.Cli;

/// <summary><c>cria serve [MODEL] [--host H] [--port P] [--api-key K]</c>: the OpenAI-compatible server.</summary>
static class ServeCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Arity = ArgumentArity.ZeroOrOne, Description = "GGUF model file (default: the bundled model)" };
        var host = new Option<string>("--host") { Description = "address to bind", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 = any free port)", DefaultValueFactory = _ => 8080 };
        var apiKey = new Option<string?>("--api-key") { Description = "require 'Authorization: Bearer KEY' (also $CRIA_API_KEY)" };
        var apiKeyFile = new Option<string?>("--api-key-file") { Description = "read the API key from a file" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "KV-cache tokens over all requests (default: min(8192, the model's context))" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var budget = new Option<int>("--token-budget") { Description = "tokens per engine step, shared by decodes and prefill chunks", DefaultValueFactory = _ => 256 };
        var maxSeqs = new Option<int>("--max-seqs") { Description = "requests running at once", DefaultValueFactory = _ => 32 };
        var noChunk = new Option<bool>("--no-chunked-prefill") { Description = "run whole prompts (for comparison)" };
        var noPrefix = new Option<bool>("--no-prefix-cache") { Description = "do not share KV blocks of common prompt prefixes" };
        var maxWaiting = new Option<int>("--max-waiting") { Description = "queued requests before answering 429", DefaultValueFactory = _ => 256 };
        var verbose = new Option<bool>("--verbose", "-v") { Description = "log requests" };
        var lookup = new Option<bool>("--lookup") { Description = "speculative decoding with prompt-lookup drafts (n-grams of each request's prompt and output)" };
        var draftModel = new Option<string?>("--model-draft", "-md") { Description = "speculative decoding with this draft model (same tokenizer): each request drafts with it" };
        var draftMax = new Option<int>("--draft-max") { Description = "most tokens drafted per request and step (default 10 with --lookup, 8 with a draft model)" };
        var draftPMin = new Option<float>("--draft-p-min") { Description = "a draft model stops drafting below this confidence", DefaultValueFactory = _ => 0.75f };
        var ngram = new Option<int>("--lookup-ngram") { Description = "longest n-gram prompt lookup matches", DefaultValueFactory = _ => 3 };
        var draftFixed = new Option<bool>("--draft-fixed") { Description = "draft up to --draft-max every step (default: adapt to how many drafts each request keeps)" };
        var draftRows = new Option<int>("--draft-rows") { Description = "drafts ride only while a step's decode rows and drafts stay within this many rows", DefaultValueFactory = _ => 16 };
        var selfEval = new Option<string?>("--self-eval") { Description = "rank /v1/completions' best_of samples by the model's own P(\"No\") under this train-self-eval adapter (default: mean log p per token, OpenAI's rule)" };
        var selfEvalCtx = new Option<int>("--self-eval-ctx") { Description = "tokens the self-evaluation reads (its training --ctx)", DefaultValueFactory = _ => 128 };
        var clfAdapter = new Option<string?>("--classifier-adapter") { Description = "serve POST /classify with this train-classifier adapter (causal modes: last, mean, max), or POST /pooling with a train-reward adapter" };
        var clfHead = new Option<string?>("--classifier-head") { Description = "the classifier's or reward model's head (train-classifier's or train-reward's head.gguf)" };
        var clfCtx = new Option<int>("--classifier-ctx") { Description = "tokens a classified or scored text is cut to (its training --ctx)", DefaultValueFactory = _ => 64 };
        var cmd = new Command("serve", "serve a model over an OpenAI-compatible HTTP API (continuous batching, chunked prefill)")
        {
            model, host, port, apiKey, apiKeyFile, ctx, threads, budget, maxSeqs, noChunk, noPrefix, maxWaiting, verbose,
            lookup, draftModel, draftMax, draftPMin, ngram, draftFixed, draftRows, selfEval, selfEvalCtx, clfAdapter, clfHead, clfCtx,
        };
        // what a request samples with where it sets nothing: OpenAI's defaults (temperature 1, no truncation)
        var samplers = new SamplerCliOptions(Cria.Server.OpenAiRequest.OpenAiDefaults, "requests' default ");
        samplers.AddTo(cmd);
        var kv = new KvCliOptions();
        kv.AddTo(cmd);
        var lora = new LoraCliOptions();
        lora.AddTo(cmd);
        cmd.SetAction(async (r, ct) =>
        {
            var path = DefaultModel.Resolve(r.GetValue(model));
            string? key = r.GetValue(apiKey);
            if (r.GetValue(apiKeyFile) is { } f) key = File.ReadAllText(f).Trim();
            key ??= Environment.GetEnvironmentVariable("CRIA_API_KEY");
            var options = new ServerOptions
            {
                ModelPath = path,
                Host = r.GetValue(host)!, Port = r.GetValue(port), ApiKey = string.IsNullOrEmpty(key) ? null : key,
                ContextSize = r.GetValue(ctx), Threads = r.GetValue(threads), Verbose = r.GetValue(verbose),
                DraftModelPath = r.GetValue(draftModel),
                Kv = kv.Format(r), Eviction = kv.Eviction(r), Rope = kv.Rope(r), Loras = lora.Adapters(r),
                SelfEvalAdapter = r.GetValue(selfEval), SelfEvalContext = r.GetValue(selfEvalCtx),
                ClassifierAdapter = r.GetValue(clfAdapter), ClassifierHead = r.GetValue(clfHead), ClassifierContext = r.GetValue(clfCtx),
                Sampling = samplers.Read(r),
                Engine = new EngineOptions
                {
                    MaxWaiting = r.GetValue(maxWaiting),
                    Scheduler = new SchedulerOptions
                    {
                        TokenBudget = r.GetValue(budget), MaxSequences = r.GetValue(maxSeqs),
                        ChunkedPrefill = !r.GetValue(noChunk), PrefixCaching = !r.GetValue(noPrefix),
                        DraftRowLimit = r.GetValue(draftRows),
                    },
                    Speculative = Speculative(r.GetValue(lookup), r.GetValue(draftModel), r.GetValue(draftMax), r.GetValue(ngram), r.GetValue(draftPMin), !r.GetValue(draftFixed)),
                },
            };
            options.Engine.Scheduler.Validate();
            options.Engine.Speculative?.Validate();
            CriaServer server;
            try { server = await CriaServer.StartAsync(options, ct); }
            catch (IOException ex)
            {
                Console.Error.WriteLine($"error: cannot listen on {options.Host}:{options.Port}: {ex.Message}");
                return 1;
            }
            await using var _ = server;
            Console.Error.WriteLine($"cria serve: listening on {server.BaseAddress} (model {Path.GetFileName(path)} loading…)");
            try
            {
                await server.Loaded;
                var e = server.Engine!;
                Console.Error.WriteLine($"cria serve: ready — {server.ModelName}, context {e.MaxSequenceLength} tokens, KV pool {e.Cache.Capacity} tokens, " +
                    $"budget {options.Engine.Scheduler.TokenBudget} tokens/step, chunked prefill {(options.Engine.Scheduler.ChunkedPrefill ? "on" : "off")}" +
                    (options.Engine.Speculative is { } sp
                        ? $", {(options.DraftModelPath is { } dp ? "draft model " + Path.GetFileName(dp) : "prompt lookup")} up to {sp.DraftMax} drafts (≤ {options.Engine.Scheduler.DraftRowLimit} rows a step)" : "") +
                    (options.SelfEvalAdapter != null ? $", best_of ranked by self-evaluation ({Path.GetFileName(options.SelfEvalAdapter)})" : "") +
                    (options.ClassifierHead != null ? $", /classify with {Path.GetFileName(options.ClassifierHead)}" : "") +
                    (options.ApiKey != null ? ", API key required" : ""));
                Console.Error.WriteLine($"cria serve: chat template: {server.Template!.Description}");
                if (e.Context.Config.HasBeacons)
                    Console.Error.WriteLine("cria serve: the model's Activation Beacon tensors are not used here (the scheduler runs plain sequences); generate, perplexity and passkey use them");
            }
            catch (Exception ex)
            {
                Console.Error.WriteLine("error: the model failed to load: " + ex.Message);
                return 1;
            }
            await server.WaitForShutdownAsync(ct);
            return 0;
        });
        return cmd;
    }

    /// <summary>Speculative decoding's settings: prompt lookup (--lookup) or a draft model (--model-draft), or off.</summary>
    static SpeculativeOptions? Speculative(bool lookup, string? draftModel, int draftMax, int ngram, float pMin, bool adaptive)
    {
        if (lookup && draftModel != null) throw new CriaException("give either --model-draft or --lookup, not both");
        if (draftMax < 0) throw new CriaException($"--draft-max must be ≥ 1, got {draftMax}");
        if (draftModel != null && !File.Exists(draftModel)) throw new CriaException($"draft model not found: {draftModel}");
        return lookup ? SpeculativeOptions.Lookup with { DraftMax = draftMax == 0 ? 10 : draftMax, NgramMax = ngram, Adaptive = adaptive }
            : draftModel != null ? new SpeculativeOptions { DraftMax = draftMax == 0 ? 8 : draftMax, DraftPMin = pMin, Adaptive = adaptive }
            : null;
    }
}
