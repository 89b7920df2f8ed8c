using System.Net;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Tokenization;
using Cria.Training;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Cria.Server;

/// <summary>Settings of <c>cria serve</c>.</summary>
public sealed record ServerOptions
{
    public required string ModelPath { get; init; }
    /// <summary>Name reported by /v1/models (default: the file name without extension).</summary>
    public string? ModelName { get; init; }
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 picks a free one (see <see cref="CriaServer.BaseAddress"/>).</summary>
    public int Port { get; init; } = 8080;
    /// <summary>When set, every route except /health needs <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }
    /// <summary>KV-cache tokens over all sequences (0 = min(8192, the model's context)).</summary>
    public int ContextSize { get; init; }
    public int Threads { get; init; }
    public EngineOptions Engine { get; init; } = new();
    /// <summary>KV cache format, eviction and RoPE overrides (--kv-type, --kv-evict/--kv-budget, --rope-*).</summary>
    public KvFormat Kv { get; init; } = KvFormat.F16;
    public KvEvictionOptions Eviction { get; init; } = KvEvictionOptions.None;
    public RopeOverrides? Rope { get; init; }
    /// <summary>LoRA adapters (path, user scale) applied at run time (llama-server's --lora / --lora-scaled).</summary>
    public IReadOnlyList<(string Path, float Scale)> Loras { get; init; } = [];
    /// <summary>How /v1/completions' best_of ranks its samples: null ranks by mean log-probability per token (OpenAI's
    /// rule); a train-self-eval adapter ranks by the model's own P("No") (capability-aware self-evaluation).</summary>
    public string? SelfEvalAdapter { get; init; }
    /// <summary>Tokens the self-evaluation reads (its training --ctx).</summary>
    public int SelfEvalContext { get; init; } = 128;
    /// <summary>A sequence classifier for /classify (vLLM's classification route): train-classifier's adapter and head,
    /// a causal mode (last, mean or max: the engine's attention is causal); or a reward model (train-reward's adapter
    /// and head, causal) for /pooling (vLLM's route for reward models).</summary>
    public string? ClassifierAdapter { get; init; }
    public string? ClassifierHead { get; init; }
    /// <summary>Tokens a classified text is cut to (BOS + text; its training --ctx).</summary>
    public int ClassifierContext { get; init; } = 64;
    /// <summary>A draft model for speculative decoding (llama.cpp's <c>--model-draft</c>; same tokenizer): each request
    /// drafts with it instead of prompt lookup. Needs <see cref="EngineOptions.Speculative"/>.</summary>
    public string? DraftModelPath { get; init; }
    public long MaxBodyBytes { get; init; } = 4 << 20;
    /// <summary>Write request logs to the console.</summary>
    public bool Verbose { get; init; }
    /// <summary>What a request samples with where it sets nothing (<c>cria serve</c>'s sampling flags): by default
    /// OpenAI's (<see cref="OpenAiRequest.OpenAiDefaults"/>). Its seed is not used: a request without one gets a
    /// random seed.</summary>
    public SamplerOptions Sampling { get; init; } = OpenAiRequest.OpenAiDefaults;
    /// <summary>Test seam: loading waits for this task (to observe /health during loading).</summary>
    internal Task? LoadGate { get; init; }
}

/// <summary>
/// The OpenAI-compatible HTTP server (Kestrel): /v1/chat/completions, /v1/completions (SSE streaming and not),
/// /v1/models, /tokenize, /detokenize, /health (503 while the model loads) and /metrics (Prometheus text). The model
/// loads in the background after the socket is bound.
/// </summary>
public sealed class CriaServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly ServerOptions _o;
    readonly byte[]? _keyHash;
    readonly Task _loading;
    volatile State? _state;
    volatile string? _loadError;

    /// <summary>Everything that exists once the model is loaded.</summary>
    /// <summary>/classify: the classifier's context (its adapter applied; requests take turns), its options and head
    /// [labels, dim], and the tokens a text is cut to.</summary>
    public sealed record ServedClassifier(InferenceContext Context, ClassifierOptions Options, float[] Head, int Tokens);

    public sealed class State(LlamaModel model, InferenceContext context, Engine engine, ChatTemplate template, ServerMetrics metrics, string name)
    {
        /// <summary>The best_of scorer when it is not log p (one context: requests take turns).</summary>
        public IResponseScorer? Scorer { get; init; }
        public InferenceContext? ScorerContext { get; init; }
        /// <summary>/classify's classifier, when the server has one.</summary>
        public ServedClassifier? Classifier { get; init; }
        /// <summary>The draft model and its context (speculative decoding with a draft model).</summary>
        public LlamaModel? DraftModel { get; init; }
        public InferenceContext? DraftContext { get; init; }
        public LlamaModel Model { get; } = model;
        public InferenceContext Context { get; } = context;
        public Engine Engine { get; } = engine;
        public ChatTemplate Template { get; } = template;
        public ServerMetrics Metrics { get; } = metrics;
        public string ModelName { get; } = name;
        public long Created { get; } = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    }

    public Uri BaseAddress { get; }
    public string ModelName { get; }
    /// <summary>Completes when the model is loaded (faults when loading failed).</summary>
    public Task Loaded => _loading;
    public Engine? Engine => _state?.Engine;
    /// <summary>The chat template /v1/chat/completions renders (null until the model is loaded).</summary>
    public ChatTemplate? Template => _state?.Template;

    CriaServer(WebApplication app, ServerOptions o, Uri address)
    {
        _app = app; _o = o; BaseAddress = address;
        ModelName = o.ModelName ?? Path.GetFileNameWithoutExtension(o.ModelPath);
        if (!string.IsNullOrEmpty(o.ApiKey)) _keyHash = SHA256.HashData(Encoding.UTF8.GetBytes(o.ApiKey));
        _loading = Task.Run(async () => { if (o.LoadGate != null) await o.LoadGate; Load(); });
    }

    void Load()
    {
        try
        {
            var model = LlamaModel.Open(_o.ModelPath);
            try { _o.Sampling.Validate(model.Config.VocabSize); } // a default logit bias names tokens of this vocabulary
            catch { model.Dispose(); throw; }
            int ctx = _o.ContextSize > 0 ? _o.ContextSize : Math.Min(8192, model.Config.ContextLength);
            var context = new InferenceContext(model, new ContextOptions
            {
                ContextSize = ctx, Threads = _o.Threads, MicroBatch = Math.Max(64, Math.Min(512, _o.Engine.Scheduler.TokenBudget)),
                Kv = _o.Kv, Eviction = _o.Eviction, Rope = _o.Rope,
                Loras = _o.Loras.Select(a => (LoraAdapter.Load(a.Path, model), a.Scale)).ToList(),
            });
            InferenceContext? scorerContext = null;
            IResponseScorer? scorer = null;
            if (_o.SelfEvalAdapter is { } se)
            {
                int T = _o.SelfEvalContext;
                if (T < 3 || T > model.Config.ContextLength) throw new CriaException($"the self-evaluation context {T} must be in 3..{model.Config.ContextLength}");
                scorerContext = new InferenceContext(model, new ContextOptions { ContextSize = T - 1, Threads = _o.Threads, Loras = [(LoraAdapter.Load(se, model), 1f)] });
                scorer = new SelfEvalScorer(scorerContext, SelfEvalFormat.Create(model.Tokenizer), T - 1);
            }
            ServedClassifier? classifier = null;
            if (_o.ClassifierHead != null || _o.ClassifierAdapter != null)
            {
                if (_o.ClassifierHead == null || _o.ClassifierAdapter == null) throw new CriaException("a classifier needs both its adapter and its head");
                var (clf, head) = ClassifierOptions.ReadHead(_o.ClassifierHead, model.Config.Dim);
                if (clf.Bidirectional || clf.PerToken)
                    throw new CriaException($"the server runs sequence classifiers and reward models in a causal mode (last, mean, max); {_o.ClassifierHead} is {clf.ModeName}");
                int T = _o.ClassifierContext;
                if (T < 2 || T > model.Config.ContextLength) throw new CriaException($"the classifier context {T} must be in 2..{model.Config.ContextLength}");
                classifier = new ServedClassifier(
                    new InferenceContext(model, new ContextOptions { ContextSize = T, Threads = _o.Threads, Loras = [(LoraAdapter.Load(_o.ClassifierAdapter, model), 1f)] }),
                    clf, head, T);
            }
            LlamaModel? draftModel = null;
            InferenceContext? draftContext = null;
            if (_o.DraftModelPath is { } dp)
            {
                if (_o.Engine.Speculative == null) throw new CriaException("a draft model needs speculative decoding settings");
                draftModel = LlamaModel.Open(dp);
                ModelDrafter.CheckCompatible(model, draftModel);
                // the same capacity as the target's pool: the running requests' draft sequences mirror their sequences
                draftContext = new InferenceContext(draftModel, new ContextOptions { ContextSize = ctx, Threads = _o.Threads, MicroBatch = 512 });
            }
            var engine = new Engine(context, model.Tokenizer, _o.Engine with { DraftContext = draftContext });
            var metrics = new ServerMetrics(ModelName);
            metrics.Attach(engine);
            _state = new State(model, context, engine, ChatTemplate.FromGguf(model.File, model.Tokenizer), metrics, ModelName) { Scorer = scorer, ScorerContext = scorerContext, Classifier = classifier, DraftModel = draftModel, DraftContext = draftContext };
        }
        catch (Exception e)
        {
            _loadError = e.Message;
            throw;
        }
    }

    /// <summary>Binds the socket, starts serving (/health answers 503 until the model is loaded) and returns.</summary>
    public static async Task<CriaServer> StartAsync(ServerOptions o, CancellationToken ct = default)
    {
        o.Sampling.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (o.Verbose) builder.Logging.AddConsole();
        builder.WebHost.UseKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = o.MaxBodyBytes;
            k.AddServerHeader = false;
            var ip = o.Host switch
            {
                "localhost" => IPAddress.Loopback,
                "0.0.0.0" or "*" => IPAddress.Any,
                _ => IPAddress.TryParse(o.Host, out var a) ? a : throw new CriaException($"--host must be an IP address (or localhost), got '{o.Host}'"),
            };
            k.Listen(ip, o.Port);
        });
        var app = builder.Build();
        CriaServer? server = null;
        app.Use(async (http, next) =>
        {
            try { await server!.Authorize(http, next); }
            catch (ApiException e) { await server!.Error(http, e); }
            catch (BadHttpRequestException e) { await server!.Error(http, new ApiException(e.StatusCode, e.Message)); }
            catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested) { }
            catch (EngineOverloadedException e) { await server!.Error(http, new ApiException(429, e.Message, type: "rate_limit_error") { RetryAfterSeconds = 1 }); }
            catch (InvalidRequestException e) { await server!.Error(http, new ApiException(400, e.Message)); }
            catch (Cria.Tokenization.Jinja.TemplateException e) when (e.Raised) { await server!.Error(http, new ApiException(400, e.Message, "messages")); }
            catch (Exception e) { await server!.Error(http, new ApiException(500, e.Message, type: "server_error")); }
        });
        app.MapGet("/health", (HttpContext h) => server!.Health(h));
        app.MapGet("/v1/models", (HttpContext h) => server!.Models(h));
        app.MapGet("/metrics", (HttpContext h) => server!.MetricsText(h));
        app.MapPost("/tokenize", (HttpContext h) => server!.Tokenize(h));
        app.MapPost("/detokenize", (HttpContext h) => server!.Detokenize(h));
        app.MapPost("/v1/completions", (HttpContext h) => server!.Completions(h, chat: false));
        app.MapPost("/v1/chat/completions", (HttpContext h) => server!.Completions(h, chat: true));
        app.MapPost("/v1/embeddings", (HttpContext h) => server!.Embeddings(h));
        app.MapPost("/classify", (HttpContext h) => server!.Classify(h));
        app.MapPost("/pooling", (HttpContext h) => server!.Pooling(h));
        app.MapFallback((HttpContext h) => throw new ApiException(404, $"no route {h.Request.Method} {h.Request.Path}", type: "not_found_error"));
        await app.StartAsync(ct);
        var addr = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        var uri = new Uri(addr.Replace("0.0.0.0", "127.0.0.1").Replace("[::]", "[::1]"));
        server = new CriaServer(app, o, uri);
        return server;
    }

    public Task WaitForShutdownAsync(CancellationToken ct = default) => _app.WaitForShutdownAsync(ct);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        try { await _loading; } catch { /* reported by /health */ }
        if (_state is { } s) { s.Engine.Dispose(); s.Context.Dispose(); s.ScorerContext?.Dispose(); s.Classifier?.Context.Dispose(); s.DraftContext?.Dispose(); s.DraftModel?.Dispose(); s.Model.Dispose(); }
    }

    // ---- plumbing -------------------------------------------------------------------------------------------------

    async Task Authorize(HttpContext http, RequestDelegate next)
    {
        if (_keyHash != null && http.Request.Path != "/health")
        {
            string auth = http.Request.Headers.Authorization.ToString();
            string given = auth.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) ? auth[7..].Trim() : "";
            // Compare fixed-length digests in constant time: neither the key's length nor its prefix leaks.
            if (!CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), _keyHash))
                throw new ApiException(401, "invalid or missing API key (send Authorization: Bearer KEY)", type: "authentication_error", code: "invalid_api_key");
        }
        await next(http);
    }

    State Ready()
    {
        if (_state is { } s) return s;
        if (_loadError != null) throw new ApiException(503, "the model failed to load: " + _loadError, type: "server_error");
        throw new ApiException(503, "the model is still loading", type: "server_error") { RetryAfterSeconds = 1 };
    }

    async Task Error(HttpContext http, ApiException e)
    {
        _state?.Metrics.HttpError(e.Status);
        if (http.Response.HasStarted) return;
        http.Response.StatusCode = e.Status;
        if (e.RetryAfterSeconds is int ra) http.Response.Headers.RetryAfter = ra.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var body = new JsonObject
        {
            ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = e.Type, ["param"] = e.Param, ["code"] = e.Code ?? (JsonNode?)e.Status },
        };
        await WriteJson(http, body);
    }

    static async Task WriteJson(HttpContext http, JsonNode body)
    {
        http.Response.ContentType = "application/json";
        await http.Response.WriteAsync(body.ToJsonString(), http.RequestAborted);
    }

    async Task<JsonElement> ReadBody(HttpContext http)
    {
        var limit = _o.MaxBodyBytes;
        if (http.Request.ContentLength > limit) throw new ApiException(413, $"the request body is larger than {limit} bytes");
        using var ms = new MemoryStream();
        var buf = new byte[16384];
        int n;
        while ((n = await http.Request.Body.ReadAsync(buf, http.RequestAborted)) > 0)
        {
            ms.Write(buf, 0, n);
            if (ms.Length > limit) throw new ApiException(413, $"the request body is larger than {limit} bytes");
        }
        return OpenAiRequest.ParseBody(ms.GetBuffer().AsSpan(0, (int)ms.Length));
    }

    // ---- routes ---------------------------------------------------------------------------------------------------

    async Task Health(HttpContext http)
    {
        if (_state == null)
        {
            http.Response.StatusCode = 503;
            await WriteJson(http, new JsonObject { ["status"] = _loadError == null ? "loading" : "error", ["error"] = _loadError });
            return;
        }
        await WriteJson(http, new JsonObject { ["status"] = "ok" });
    }

    async Task Models(HttpContext http)
    {
        var s = Ready();
        await WriteJson(http, new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(new JsonObject
            {
                ["id"] = s.ModelName, ["object"] = "model", ["created"] = s.Created, ["owned_by"] = "cria",
                ["max_model_len"] = s.Engine.MaxSequenceLength,
            }),
        });
    }

    async Task MetricsText(HttpContext http)
    {
        var s = Ready();
        http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await s.Metrics.WriteAsync(http.Response.Body, http.RequestAborted);
    }

    async Task Tokenize(HttpContext http)
    {
        var s = Ready();
        var o = await ReadBody(http);
        var content = OpenAiRequest.String(o, "content") ?? OpenAiRequest.String(o, "prompt") ?? throw new ApiException(400, "'content' is required", "content");
        bool addSpecial = OpenAiRequest.Bool(o, "add_special") ?? true;
        bool parseSpecial = OpenAiRequest.Bool(o, "parse_special") ?? true;
        bool pieces = OpenAiRequest.Bool(o, "with_pieces") ?? false;
        var tokens = s.Model.Tokenizer.Encode(content, addSpecial && s.Model.Tokenizer.AddBos, parseSpecial);
        var arr = new JsonArray();
        foreach (var t in tokens)
            arr.Add(pieces ? new JsonObject { ["id"] = t, ["piece"] = TokenText(s, t) } : JsonValue.Create(t));
        await WriteJson(http, new JsonObject { ["tokens"] = arr, ["count"] = tokens.Length, ["max_model_len"] = s.Engine.MaxSequenceLength });
    }

    async Task Detokenize(HttpContext http)
    {
        var s = Ready();
        var o = await ReadBody(http);
        var tokens = Tokens(o, "tokens", s);
        await WriteJson(http, new JsonObject { ["content"] = s.Model.Tokenizer.Detokenize(tokens) });
    }

    static int[] Tokens(JsonElement o, string name, State s)
    {
        if (!o.TryGetProperty(name, out var a) || a.ValueKind != JsonValueKind.Array) throw new ApiException(400, $"'{name}' must be an array of token ids", name);
        var tokens = new int[a.GetArrayLength()];
        int i = 0;
        foreach (var e in a.EnumerateArray())
        {
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int t)) throw new ApiException(400, $"'{name}' must be an array of token ids", name);
            if ((uint)t >= (uint)s.Model.Tokenizer.VocabSize) throw new ApiException(400, $"token {t} is outside the vocabulary (0..{s.Model.Tokenizer.VocabSize - 1})", name);
            tokens[i++] = t;
        }
        return tokens;
    }

    /// <summary>Maximum inputs in one /v1/embeddings request.</summary>
    public const int MaxEmbeddingInputs = 256;

    async Task Embeddings(HttpContext http)
    {
        var s = Ready();
        var o = await ReadBody(http);
        OpenAiRequest.String(o, "model");
        var format = OpenAiRequest.String(o, "encoding_format") ?? "float";
        if (format is not ("float" or "base64")) throw new ApiException(400, "'encoding_format' must be 'float' or 'base64'", "encoding_format");
        if (OpenAiRequest.Integer(o, "dimensions", 1, int.MaxValue) is long d && d != s.Model.Config.Dim)
            throw new ApiException(400, $"this model's embeddings have {s.Model.Config.Dim} dimensions, {d} were asked for", "dimensions");
        if (!o.TryGetProperty("input", out var input) || input.ValueKind == JsonValueKind.Null) throw new ApiException(400, "'input' is required", "input");
        var tok = s.Model.Tokenizer;
        var inputs = new List<int[]>();
        int[] TokenArray(JsonElement a) => a.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int t) ? t : throw new ApiException(400, "token inputs must be integers", "input")).ToArray();
        if (input.ValueKind == JsonValueKind.String) inputs.Add(tok.Encode(input.GetString()!, tok.AddBos));
        else if (input.ValueKind == JsonValueKind.Array && input.GetArrayLength() > 0 && input[0].ValueKind == JsonValueKind.Number) inputs.Add(TokenArray(input));
        else if (input.ValueKind == JsonValueKind.Array)
        {
            if (input.GetArrayLength() > MaxEmbeddingInputs) throw new ApiException(400, $"at most {MaxEmbeddingInputs} inputs per request", "input");
            foreach (var e in input.EnumerateArray())
                inputs.Add(e.ValueKind switch
                {
                    JsonValueKind.String => tok.Encode(e.GetString()!, tok.AddBos),
                    JsonValueKind.Array => TokenArray(e),
                    _ => throw new ApiException(400, "'input' must be a string, an array of strings, or token arrays", "input"),
                });
        }
        else throw new ApiException(400, "'input' must be a string, an array of strings, or token arrays", "input");
        if (inputs.Count == 0 || inputs.Any(t => t.Length == 0)) throw new ApiException(400, "'input' must not be empty", "input");
        var vectors = await Task.WhenAll(inputs.Select(t => s.Engine.EmbedAsync(t, http.RequestAborted)));
        var data = new JsonArray();
        for (int i = 0; i < vectors.Length; i++)
        {
            JsonNode emb = format == "base64"
                ? JsonValue.Create(Convert.ToBase64String(System.Runtime.InteropServices.MemoryMarshal.AsBytes(vectors[i].AsSpan())))
                : new JsonArray(vectors[i].Select(x => (JsonNode?)JsonValue.Create(x)).ToArray());
            data.Add(new JsonObject { ["object"] = "embedding", ["index"] = i, ["embedding"] = emb });
        }
        int n = inputs.Sum(t => t.Length);
        await WriteJson(http, new JsonObject
        {
            ["object"] = "list", ["data"] = data, ["model"] = s.ModelName,
            ["usage"] = new JsonObject { ["prompt_tokens"] = n, ["total_tokens"] = n },
        });
    }

    /// <summary>
    /// /classify (vLLM's route for classification models): {"input": text or [texts], "model"?} → for each text the
    /// label with the highest probability, the probabilities of every label (softmax of the head's logits) and the
    /// label count. The text is read as BOS + its tokens cut to the classifier's context, as train-classifier reads it.
    /// </summary>
    async Task Classify(HttpContext http)
    {
        var (s, (ctx, clf, head, _), ids) = await HeadRequest(http, reward: false);
        var logits = await Task.Run(() => { lock (ctx) return ids.Select(r => Classifier.Logits(ctx, r, clf, head)).ToArray(); }, http.RequestAborted);
        var data = new JsonArray();
        for (int i = 0; i < logits.Length; i++)
        {
            var z = logits[i];
            float max = z.Max();
            var p = z.Select(v => Math.Exp(v - max)).ToArray();
            double sum = p.Sum();
            int best = Sampler.ArgMax(z);
            data.Add(new JsonObject
            {
                ["index"] = i, ["label"] = clf.Labels[best],
                ["probs"] = new JsonArray(p.Select(v => (JsonNode?)JsonValue.Create(v / sum)).ToArray()),
                ["num_classes"] = clf.Labels.Length,
            });
        }
        await WriteList(http, s, "classify-", data, ids);
    }

    /// <summary>
    /// /pooling with a reward model (vLLM's route for reward models): {"input": text or [texts], "model"?} → for each
    /// text {"index", "object": "pooling", "data": [reward]}, the reward of BOS + the text cut to the head's context,
    /// as <c>cria reward</c> scores it (prompt and response written one after the other).
    /// </summary>
    async Task Pooling(HttpContext http)
    {
        var (s, (ctx, clf, head, _), ids) = await HeadRequest(http, reward: true);
        var rewards = await Task.Run(() => { lock (ctx) return ids.Select(r => RewardModel.Score(ctx, r, clf, head)).ToArray(); }, http.RequestAborted);
        var data = new JsonArray();
        for (int i = 0; i < rewards.Length; i++)
            data.Add(new JsonObject { ["index"] = i, ["object"] = "pooling", ["data"] = new JsonArray(JsonValue.Create(rewards[i])) });
        await WriteList(http, s, "pool-", data, ids);
    }

    /// <summary>The list envelope of /classify and /pooling: id, object, created, model, data and the usage of the
    /// token rows <paramref name="ids"/>.</summary>
    static Task WriteList(HttpContext http, State s, string idPrefix, JsonArray data, int[][] ids)
    {
        int n = ids.Sum(r => r.Length);
        return WriteJson(http, new JsonObject
        {
            ["id"] = idPrefix + Guid.NewGuid().ToString("N")[..24], ["object"] = "list", ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            ["model"] = s.ModelName, ["data"] = data,
            ["usage"] = new JsonObject { ["prompt_tokens"] = n, ["total_tokens"] = n },
        });
    }

    /// <summary>The checks /classify and /pooling share: the served head is of the route's kind (else a 404), the body
    /// has "input" as a string or 1..<see cref="MaxEmbeddingInputs"/> strings (else a 400 naming it). Each text's row
    /// is BOS + its tokens cut to the head's context, as train-classifier and train-reward read it.</summary>
    async Task<(State, ServedClassifier, int[][])> HeadRequest(HttpContext http, bool reward)
    {
        var s = Ready();
        if (s.Classifier is not { } served || served.Options.IsReward != reward)
            throw new ApiException(404, reward
                ? "this server has no reward model (start it with --classifier-adapter A --classifier-head H from train-reward)"
                : "this server has no classifier (start it with --classifier-adapter A --classifier-head H)", type: "not_found_error");
        var o = await ReadBody(http);
        OpenAiRequest.String(o, "model");
        if (!o.TryGetProperty("input", out var input) || input.ValueKind == JsonValueKind.Null) throw new ApiException(400, "'input' is required", "input");
        var texts = input.ValueKind switch
        {
            JsonValueKind.String => [input.GetString()!],
            JsonValueKind.Array when input.GetArrayLength() is > 0 and <= MaxEmbeddingInputs =>
                input.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new ApiException(400, "'input' must be a string or an array of strings", "input")).ToArray(),
            JsonValueKind.Array => throw new ApiException(400, $"'input' must hold 1 to {MaxEmbeddingInputs} texts", "input"),
            _ => throw new ApiException(400, "'input' must be a string or an array of strings", "input"),
        };
        var tok = s.Model.Tokenizer;
        return (s, served, texts.Select(t => Classifier.Input(tok.Encode(t, addBos: false), tok.Bos, served.Tokens)).ToArray());
    }


    static string TokenText(State s, int token) => Encoding.UTF8.GetString(s.Model.Tokenizer.TokenBytes(token, renderSpecial: true));

    async Task Completions(HttpContext http, bool chat)
    {
        var s = Ready();
        var o = await ReadBody(http);
        var tok = s.Model.Tokenizer;
        var p = OpenAiRequest.Sampling(o, chat, tok, _o.Sampling);
        int[] prompt;
        Grammar? grammar = p.Grammar;
        Tools? tools = null;
        if (chat)
        {
            var turns = OpenAiRequest.Messages(o);
            var (defs, choice) = OpenAiRequest.Tools(o);
            string text;
            if (defs.Count > 0 && choice.Mode != ToolChoice.Kind.None)
            {
                if (p.JsonObject || p.Grammar != null) throw new ApiException(400, "tools cannot be combined with response_format json_object/json_schema or a grammar", "tools");
                if (p.BestOf > p.N) throw new ApiException(400, "best_of cannot be combined with tools", "tools");
                tools = new Tools(defs, ToolCalling.FormatOf(s.Template));
                text = ToolCalling.Render(s.Template, turns, defs, tools.Format);
                try { grammar = ToolCalling.Constraint(defs, choice, tools.Format); }
                catch (GrammarException e) { throw new ApiException(400, e.Message, "tools"); }
            }
            else text = s.Template.Render(turns);
            prompt = tok.Encode(text, tok.AddBos, parseSpecial: true);
        }
        else
        {
            var (text, tokens) = OpenAiRequest.Prompt(o);
            if (tokens != null)
            {
                foreach (var t in tokens)
                    if ((uint)t >= (uint)tok.VocabSize) throw new ApiException(400, $"token {t} is outside the vocabulary (0..{tok.VocabSize - 1})", "prompt");
                prompt = tokens;
            }
            else prompt = tok.Encode(text!, tok.AddBos, parseSpecial: true);
        }
        if (prompt.Length == 0) throw new ApiException(400, "the prompt is empty", chat ? "messages" : "prompt");
        int ctx = s.Engine.MaxSequenceLength;
        if (prompt.Length >= ctx)
            throw new ApiException(400, $"This model's maximum context length is {ctx} tokens. However, your prompt has {prompt.Length} tokens. Please reduce the length of the prompt.", chat ? "messages" : "prompt", code: "context_length_exceeded");
        int maxTokens = p.MaxTokens ?? ctx - prompt.Length;
        if (prompt.Length + maxTokens > ctx)
            throw new ApiException(400, $"This model's maximum context length is {ctx} tokens. However, you requested {prompt.Length + maxTokens} tokens ({prompt.Length} in the prompt, {maxTokens} for the completion). Please reduce the length of the prompt or the completion.", "max_tokens", code: "context_length_exceeded");

        var requests = new EngineRequest[p.BestOf];
        var abort = CancellationTokenSource.CreateLinkedTokenSource(http.RequestAborted);
        try
        {
            for (int i = 0; i < p.BestOf; i++)
            {
                requests[i] = s.Engine.Submit(new GenerationRequest
                {
                    Prompt = prompt, MaxTokens = maxTokens,
                    Sampler = p.Sampler with { Seed = p.Sampler.Seed + (ulong)i },
                    Stop = p.Stop, IgnoreEog = p.IgnoreEos, JsonObject = p.JsonObject, Grammar = grammar,
                    // best_of ranks by log p: every token's logprob is needed, whether or not the client asked
                    TopLogprobs = p.BestOf > p.N ? Math.Max(0, p.TopLogprobs) : p.TopLogprobs,
                }, abort.Token);
            }
        }
        catch { abort.Cancel(); abort.Dispose(); throw; }

        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        try
        {
            if (p.Stream) await Stream(http, s, p, chat, id, created, prompt.Length, requests, tools);
            else await Whole(http, s, p, chat, id, created, prompt, requests, tools);
        }
        finally
        {
            abort.Cancel(); // a client that went away, or any failure, frees every choice's KV blocks
            abort.Dispose();
        }
    }

    sealed class Choice
    {
        public readonly StringBuilder Text = new();
        public readonly JsonArray ChatLogprobs = new();
        public readonly JsonArray Tokens = new(), TokenLogprobs = new(), TopLogprobs = new(), Offsets = new();
        public readonly List<int> Ids = new();
        public double LogprobSum;
        public int Count;
        public string? Finish;
    }

    void AddLogprobs(State s, Choice c, EngineOutput e, bool chat)
    {
        var text = TokenText(s, e.Token);
        if (chat)
        {
            var top = new JsonArray();
            foreach (var t in e.TopLogprobs ?? [])
            {
                var tt = TokenText(s, t.Token);
                top.Add(new JsonObject { ["token"] = tt, ["logprob"] = t.Logprob, ["bytes"] = Bytes(tt) });
            }
            c.ChatLogprobs.Add(new JsonObject { ["token"] = text, ["logprob"] = e.Logprob, ["bytes"] = Bytes(text), ["top_logprobs"] = top });
        }
        else
        {
            c.Offsets.Add(c.Text.Length);
            c.Tokens.Add(text);
            c.TokenLogprobs.Add(e.Logprob);
            var top = new JsonObject();
            foreach (var t in e.TopLogprobs ?? []) top[TokenText(s, t.Token)] = t.Logprob;
            c.TopLogprobs.Add(top);
        }
    }

    static JsonArray Bytes(string text) => new(Encoding.UTF8.GetBytes(text).Select(b => (JsonNode?)JsonValue.Create((int)b)).ToArray());

    JsonNode? LogprobsNode(Choice c, bool chat, OpenAiSampling p)
    {
        if (p.TopLogprobs < 0) return null;
        if (chat) return new JsonObject { ["content"] = c.ChatLogprobs.DeepClone() };
        return new JsonObject
        {
            ["tokens"] = c.Tokens.DeepClone(), ["token_logprobs"] = c.TokenLogprobs.DeepClone(),
            ["top_logprobs"] = c.TopLogprobs.DeepClone(), ["text_offset"] = c.Offsets.DeepClone(),
        };
    }

    /// <summary>A chat request's tools and the format its template gives their calls.</summary>
    sealed record Tools(List<ToolDefinition> Definitions, ToolCalling.Format Format)
    {
        /// <summary>The assistant message of a reply: content and, when it called tools, tool_calls; and its finish
        /// reason ("tool_calls" when a call ended the reply).</summary>
        public (JsonObject Message, string? Finish) Reply(string text, string? finish)
        {
            var (content, calls) = ToolCalling.Parse(text, Definitions, Format);
            var m = new JsonObject { ["role"] = "assistant", ["content"] = content };
            if (calls.Count > 0) m["tool_calls"] = Calls(calls, withIndex: false);
            return (m, ToolCalling.FinishReason(finish, calls.Count));
        }

        public static JsonArray Calls(List<ChatToolCall> calls, bool withIndex) => new(calls.Select((c, i) =>
        {
            var o = new JsonObject();
            if (withIndex) o["index"] = i;
            o["id"] = c.Id; o["type"] = "function";
            o["function"] = new JsonObject { ["name"] = c.Name, ["arguments"] = c.Arguments };
            return (JsonNode)o;
        }).ToArray());
    }

    async Task Whole(HttpContext http, State s, OpenAiSampling p, bool chat, string id, long created, int[] prompt, EngineRequest[] requests, Tools? tools)
    {
        var drawn = new Choice[requests.Length];
        for (int i = 0; i < requests.Length; i++)
        {
            var c = drawn[i] = new Choice();
            await foreach (var e in requests[i].Events.ReadAllAsync(http.RequestAborted))
            {
                if (e.IsToken) { c.Count++; c.Ids.Add(e.Token); c.LogprobSum += e.Logprob; if (p.TopLogprobs >= 0) AddLogprobs(s, c, e, chat); }
                c.Text.Append(e.Text);
                if (e.FinishReason != null) c.Finish = e.FinishReason;
            }
        }
        var choices = drawn.Length > p.N ? await Best(s, p.N, prompt, drawn) : drawn;
        int promptTokens = prompt.Length;
        var arr = new JsonArray();
        for (int i = 0; i < choices.Length; i++)
        {
            var c = choices[i];
            var (message, finish) = tools?.Reply(c.Text.ToString(), c.Finish) ?? (new JsonObject { ["role"] = "assistant", ["content"] = c.Text.ToString() }, c.Finish);
            arr.Add(chat
                ? new JsonObject
                {
                    ["index"] = i,
                    ["message"] = message,
                    ["logprobs"] = LogprobsNode(c, chat, p), ["finish_reason"] = finish,
                }
                : new JsonObject { ["index"] = i, ["text"] = c.Text.ToString(), ["logprobs"] = LogprobsNode(c, chat, p), ["finish_reason"] = c.Finish });
        }
        int completion = drawn.Sum(c => c.Count);   // every best_of sample was generated
        await WriteJson(http, new JsonObject
        {
            ["id"] = id, ["object"] = chat ? "chat.completion" : "text_completion", ["created"] = created, ["model"] = s.ModelName,
            ["choices"] = arr,
            ["usage"] = Usage(promptTokens, completion),
        });
    }

    /// <summary>best_of: the <paramref name="n"/> samples ranked highest, in rank order (the first drawn on ties) — by
    /// mean log-probability per token (OpenAI's rule; an empty completion ranks last), or by the server's scorer.</summary>
    static async Task<Choice[]> Best(State s, int n, int[] prompt, Choice[] drawn)
    {
        double[] score;
        if (s.Scorer is { } scorer)
            try
            {
                score = await Task.Run(() =>
                {
                    lock (scorer) return drawn.Select(c => scorer.Score(prompt, CollectionsMarshal.AsSpan(c.Ids))).ToArray();
                });
            }
            catch (CriaException e) { throw new ApiException(400, "best_of cannot rank these samples: " + e.Message, "best_of"); }
        else score = drawn.Select(c => c.Count > 0 ? c.LogprobSum / c.Count : double.NegativeInfinity).ToArray();
        return Enumerable.Range(0, drawn.Length).OrderByDescending(i => score[i]).ThenBy(i => i).Take(n).Select(i => drawn[i]).ToArray();
    }

    static JsonObject Usage(int prompt, int completion) =>
        new() { ["prompt_tokens"] = prompt, ["completion_tokens"] = completion, ["total_tokens"] = prompt + completion };

    /// <summary>Streams each choice's text as it comes. With tools, text that may belong to a call is held until the
    /// reply ends (<see cref="ToolReplyStream"/>) and the calls go out as one tool_calls delta.</summary>
    async Task Stream(HttpContext http, State s, OpenAiSampling p, bool chat, string id, long created, int promptTokens, EngineRequest[] requests, Tools? tools)
    {
        http.Response.ContentType = "text/event-stream";
        http.Response.Headers.CacheControl = "no-cache";
        http.Response.Headers["X-Accel-Buffering"] = "no";
        http.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        var gate = new SemaphoreSlim(1, 1);
        var ct = http.RequestAborted;
        string obj = chat ? "chat.completion.chunk" : "text_completion";

        async Task Send(JsonNode node)
        {
            await gate.WaitAsync(ct);
            try
            {
                await http.Response.WriteAsync("data: " + node.ToJsonString() + "\n\n", ct);
                await http.Response.Body.FlushAsync(ct);
            }
            finally { gate.Release(); }
        }

        JsonObject Chunk(int index, string? text, bool role, JsonNode? logprobs, string? finish)
        {
            JsonObject choice = chat
                ? new JsonObject
                {
                    ["index"] = index,
                    ["delta"] = role ? new JsonObject { ["role"] = "assistant", ["content"] = text ?? "" } : text == null ? new JsonObject() : new JsonObject { ["content"] = text },
                    ["logprobs"] = logprobs, ["finish_reason"] = finish,
                }
                : new JsonObject { ["index"] = index, ["text"] = text ?? "", ["logprobs"] = logprobs, ["finish_reason"] = finish };
            var o = new JsonObject { ["id"] = id, ["object"] = obj, ["created"] = created, ["model"] = s.ModelName, ["choices"] = new JsonArray(choice) };
            if (p.IncludeUsage) o["usage"] = null;
            return o;
        }

        int completion = 0;
        async Task Pump(int index, EngineRequest r)
        {
            if (chat) await Send(Chunk(index, "", role: true, null, null));
            var split = tools != null ? new ToolReplyStream(tools.Definitions, tools.Format) : null;
            await foreach (var e in r.Events.ReadAllAsync(ct))
            {
                if (split != null)
                {
                    if (e.IsToken) Interlocked.Increment(ref completion);
                    string now = split.Add(e.Text);
                    if (now.Length > 0) await Send(Chunk(index, now, false, null, null));
                    if (e.FinishReason == null) continue;
                    var (content, calls) = split.Finish();
                    if (content != null) await Send(Chunk(index, content, false, null, null));
                    if (calls.Count > 0)
                    {
                        var chunk = Chunk(index, null, false, null, null);
                        chunk["choices"]![0]!["delta"] = new JsonObject { ["tool_calls"] = Tools.Calls(calls, withIndex: true) };
                        await Send(chunk);
                    }
                    await Send(Chunk(index, null, false, null, ToolCalling.FinishReason(e.FinishReason, calls.Count)));
                    continue;
                }
                JsonNode? lp = null;
                if (e.IsToken)
                {
                    Interlocked.Increment(ref completion);
                    if (p.TopLogprobs >= 0)
                    {
                        var c = new Choice();
                        AddLogprobs(s, c, e, chat);
                        lp = LogprobsNode(c, chat, p);
                    }
                }
                if (e.FinishReason != null)
                {
                    if (e.Text.Length > 0) await Send(Chunk(index, e.Text, false, null, null));
                    await Send(Chunk(index, chat ? null : "", false, null, e.FinishReason));
                }
                else if (e.Text.Length > 0 || lp != null) await Send(Chunk(index, e.Text, false, lp, null));
            }
        }

        try
        {
            await Task.WhenAll(requests.Select((r, i) => Pump(i, r)));
        }
        catch (Exception e) when (e is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            // The response has started: report the failure in the stream itself, as OpenAI does.
            var err = new JsonObject { ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = "server_error", ["param"] = null, ["code"] = 500 } };
            await http.Response.WriteAsync("data: " + err.ToJsonString() + "\n\n", ct);
        }
        if (p.IncludeUsage)
            await Send(new JsonObject { ["id"] = id, ["object"] = obj, ["created"] = created, ["model"] = s.ModelName, ["choices"] = new JsonArray(), ["usage"] = Usage(promptTokens, completion) });
        await http.Response.WriteAsync("data: [DONE]\n\n", ct);
        await http.Response.Body.FlushAsync(ct);
    }
}
