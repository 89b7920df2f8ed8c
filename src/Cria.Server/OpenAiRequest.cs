using System.Text.Json;
using Cria.Inference;
using Cria.Serving;
using Cria.Tokenization;

namespace Cria.Server;

/// <summary>An error answered as OpenAI's <c>{"error": {message, type, param, code}}</c> with an HTTP status.</summary>
public sealed class ApiException(int status, string message, string? param = null, string type = "invalid_request_error", string? code = null)
    : Exception(message)
{
    public int Status { get; } = status;
    public string? Param { get; } = param;
    public string Type { get; } = type;
    public string? Code { get; } = code;
    public int? RetryAfterSeconds { get; init; }
}

/// <summary>The sampling and output settings shared by /v1/completions and /v1/chat/completions.</summary>
public sealed record OpenAiSampling
{
    public int? MaxTokens { get; init; }
    public required SamplerOptions Sampler { get; init; }
    public bool SeedGiven { get; init; }
    public string[] Stop { get; init; } = [];
    public int N { get; init; } = 1;
    /// <summary>Completions drawn server-side, of which the <see cref="N"/> best are returned (/v1/completions'
    /// best_of; ≥ N).</summary>
    public int BestOf { get; init; } = 1;
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    /// <summary>-1: no logprobs; 0: the chosen token's; k: also the k most likely.</summary>
    public int TopLogprobs { get; init; } = -1;
    public bool IgnoreEos { get; init; }
    /// <summary>response_format json_object: constrain the output to one JSON object.</summary>
    public bool JsonObject { get; init; }
    /// <summary>response_format json_schema (or llama.cpp's <c>json_schema</c> and <c>grammar</c> fields): constrain the
    /// output to the schema's documents or the GBNF grammar's sentences.</summary>
    public Grammar? Grammar { get; init; }
    public string? Model { get; init; }
}

/// <summary>Strict reading of request JSON: a known field of the wrong type or out of range is a 400, unknown fields
/// are ignored (clients send vendor extensions).</summary>
public static class OpenAiRequest
{
    public const int MaxN = 16;
    public const int MaxStops = 16;
    public const int MaxTopLogprobs = 20;

    public static JsonElement ParseBody(ReadOnlySpan<byte> body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body.ToArray(), new JsonDocumentOptions { MaxDepth = 64 });
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ApiException(400, "the request body must be a JSON object");
            return doc.RootElement.Clone();
        }
        catch (JsonException e) { throw new ApiException(400, "the request body is not valid JSON: " + e.Message); }
    }

    static bool Present(JsonElement o, string name, out JsonElement v) =>
        o.TryGetProperty(name, out v) && v.ValueKind != JsonValueKind.Null;

    public static string? String(JsonElement o, string name)
    {
        if (!Present(o, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.String) throw new ApiException(400, $"'{name}' must be a string", name);
        return v.GetString();
    }

    public static bool? Bool(JsonElement o, string name)
    {
        if (!Present(o, name, out var v)) return null;
        if (v.ValueKind is not (JsonValueKind.True or JsonValueKind.False)) throw new ApiException(400, $"'{name}' must be a boolean", name);
        return v.GetBoolean();
    }

    public static double? Number(JsonElement o, string name, double min, double max)
    {
        if (!Present(o, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double d) || !double.IsFinite(d))
            throw new ApiException(400, $"'{name}' must be a number", name);
        if (d < min || d > max) throw new ApiException(400, $"'{name}' must be between {min} and {max}, got {d}", name);
        return d;
    }

    public static long? Integer(JsonElement o, string name, long min, long max)
    {
        if (!Present(o, name, out var v)) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x))
            throw new ApiException(400, $"'{name}' must be an integer", name);
        if (x < min || x > max) throw new ApiException(400, $"'{name}' must be between {min} and {max}, got {x}", name);
        return x;
    }

    /// <summary>Reads the settings both generation endpoints share. Defaults follow OpenAI/vLLM (temperature 1, no
    /// top-k/top-p/min-p truncation, random seed).</summary>
    /// <summary>What a request that sets nothing samples with: OpenAI's and vLLM's defaults (temperature 1, no
    /// top-k/top-p/min-p truncation, no penalties); <c>cria serve</c>'s sampling flags replace them.</summary>
    public static readonly SamplerOptions OpenAiDefaults = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f };

    public static OpenAiSampling Sampling(JsonElement o, bool chat, Tokenizer? tokenizer = null, SamplerOptions? defaults = null)
    {
        var d = defaults ?? OpenAiDefaults;
        var model = String(o, "model");
        long? maxTokens = Integer(o, "max_completion_tokens", 0, int.MaxValue) ?? Integer(o, "max_tokens", 0, int.MaxValue);
        if (o.TryGetProperty("max_tokens", out var mt) && mt.ValueKind == JsonValueKind.Number && mt.TryGetInt64(out long neg) && neg < 0)
            throw new ApiException(400, "'max_tokens' must be ≥ 0", "max_tokens");
        float temperature = (float)(Number(o, "temperature", 0, 2) ?? d.Temperature);
        float topP = (float)(Number(o, "top_p", 0, 1) ?? d.TopP);
        if (topP <= 0) throw new ApiException(400, "'top_p' must be in (0, 1]", "top_p");
        long topK = Integer(o, "top_k", -1, int.MaxValue) ?? d.TopK;
        float freq = (float)(Number(o, "frequency_penalty", -2, 2) ?? d.FrequencyPenalty);
        float pres = (float)(Number(o, "presence_penalty", -2, 2) ?? d.PresencePenalty);
        long? seed = Integer(o, "seed", long.MinValue, long.MaxValue);
        int n = (int)(Integer(o, "n", 1, MaxN) ?? 1);
        bool stream = Bool(o, "stream") ?? false;
        // best_of (legacy completions): draw best_of, return the n best; OpenAI refuses it below n and with streaming.
        int bestOf = chat ? n : (int)(Integer(o, "best_of", 1, MaxN) ?? n);
        if (bestOf < n) throw new ApiException(400, $"'best_of' ({bestOf}) must be at least 'n' ({n})", "best_of");
        if (bestOf > n && stream) throw new ApiException(400, "'best_of' cannot be used with 'stream'", "best_of");
        bool includeUsage = false;
        if (Present(o, "stream_options", out var so))
        {
            if (so.ValueKind != JsonValueKind.Object) throw new ApiException(400, "'stream_options' must be an object", "stream_options");
            includeUsage = Bool(so, "include_usage") ?? false;
        }
        string[] stop = [];
        if (Present(o, "stop", out var st))
        {
            if (st.ValueKind == JsonValueKind.String) stop = [st.GetString()!];
            else if (st.ValueKind == JsonValueKind.Array)
            {
                if (st.GetArrayLength() > MaxStops) throw new ApiException(400, $"at most {MaxStops} stop strings", "stop");
                stop = st.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new ApiException(400, "'stop' must be a string or an array of strings", "stop")).ToArray();
            }
            else throw new ApiException(400, "'stop' must be a string or an array of strings", "stop");
            stop = stop.Where(s => s.Length > 0).ToArray();
        }
        int topLogprobs = -1;
        if (chat)
        {
            bool lp = Bool(o, "logprobs") ?? false;
            long? top = Integer(o, "top_logprobs", 0, MaxTopLogprobs);
            if (top != null && !lp) throw new ApiException(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs");
            if (lp) topLogprobs = (int)(top ?? 0);
        }
        else
        {
            long? lp = Integer(o, "logprobs", 0, MaxTopLogprobs);
            if (lp != null) topLogprobs = (int)lp;
        }
        bool jsonObject = false;
        var constraints = new List<string>();
        Grammar? grammar = null;
        if (Present(o, "response_format", out var rf))
        {
            if (rf.ValueKind != JsonValueKind.Object) throw new ApiException(400, "'response_format' must be an object", "response_format");
            var type = String(rf, "type");
            if (type == "json_object") { jsonObject = true; constraints.Add("response_format"); }
            else if (type == "json_schema")
            {
                if (!Present(rf, "json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
                    throw new ApiException(400, "response_format json_schema needs a 'json_schema' object", "response_format");
                if (!Present(js, "schema", out var schema)) throw new ApiException(400, "response_format json_schema needs 'json_schema.schema'", "response_format");
                grammar = Constraint(() => JsonSchemaGrammar.Compile(schema), "response_format");
                constraints.Add("response_format");
            }
            else if (type is not (null or "text"))
                throw new ApiException(400, $"response_format type '{type}' is not supported by this server (text, json_object and json_schema are)", "response_format");
        }
        // llama.cpp server's extensions: a JSON schema or a GBNF grammar beside the OpenAI fields
        if (Present(o, "json_schema", out var schemaField))
        {
            grammar = Constraint(() => JsonSchemaGrammar.Compile(schemaField), "json_schema");
            constraints.Add("json_schema");
        }
        if (String(o, "grammar") is { } gbnf)
        {
            grammar = Constraint(() => Grammar.Parse(gbnf), "grammar");
            constraints.Add("grammar");
        }
        if (constraints.Count > 1)
            throw new ApiException(400, $"give one output constraint, not {string.Join(" and ", constraints)}", constraints[1]);
        bool ignoreEos = Bool(o, "ignore_eos") ?? false;
        return new OpenAiSampling
        {
            Model = model,
            MaxTokens = (int?)maxTokens,
            Sampler = (d with
            {
                Temperature = temperature, TopP = topP, TopK = (int)Math.Max(0, topK),
                FrequencyPenalty = freq, PresencePenalty = pres,
                Seed = seed.HasValue ? unchecked((ulong)seed.Value) : (ulong)Random.Shared.NextInt64(),
            }).LlamaCppSampling(o, tokenizer),
            SeedGiven = seed.HasValue,
            Stop = stop, N = n, BestOf = bestOf, Stream = stream, IncludeUsage = includeUsage, TopLogprobs = topLogprobs, IgnoreEos = ignoreEos,
            JsonObject = jsonObject, Grammar = grammar,
        };
    }

    public const int MaxLogitBias = 1024;

    /// <summary>
    /// The sampling fields llama.cpp's server reads beyond OpenAI's, each as llama.cpp names it (min_p, typical_p,
    /// top_n_sigma, xtc_*, dry_*, dynatemp_*, mirostat*, min_keep, repeat_penalty — or vLLM's repetition_penalty —,
    /// repeat_last_n), and OpenAI's
    /// logit_bias, over <paramref name="s"/>: what a request body, or <c>ChatOptions.AdditionalProperties</c> in
    /// process, may add.
    /// </summary>
    public static SamplerOptions LlamaCppSampling(this SamplerOptions s, JsonElement o, Tokenizer? tokenizer = null)
    {
        float F(string name, double min, double max, float fallback) => (float)(Number(o, name, min, max) ?? fallback);
        int I(string name, long min, long max, int fallback) => (int)(Integer(o, name, min, max) ?? fallback);
        s = s with
        {
            MinP = F("min_p", 0, 1, s.MinP),
            RepeatPenalty = F("repetition_penalty", 0.01, 10, F("repeat_penalty", 0.01, 10, s.RepeatPenalty)), // vLLM's name first, then llama.cpp's
            TypicalP = F("typical_p", 0, 1, s.TypicalP),
            TopNSigma = F("top_n_sigma", -1000, 1000, s.TopNSigma),
            XtcProbability = F("xtc_probability", 0, 1, s.XtcProbability),
            XtcThreshold = F("xtc_threshold", 0, 1, s.XtcThreshold),
            DryMultiplier = F("dry_multiplier", 0, 1000, s.DryMultiplier),
            DryBase = F("dry_base", 1, 100, s.DryBase),
            DryAllowedLength = I("dry_allowed_length", 0, 1 << 20, s.DryAllowedLength),
            DryPenaltyLastN = I("dry_penalty_last_n", -1, 1 << 20, s.DryPenaltyLastN),
            DynatempRange = F("dynatemp_range", 0, 10, s.DynatempRange),
            DynatempExponent = F("dynatemp_exponent", 0, 100, s.DynatempExponent),
            Mirostat = I("mirostat", 0, 2, s.Mirostat),
            MirostatTau = F("mirostat_tau", 0, 100, s.MirostatTau),
            MirostatEta = F("mirostat_eta", 0, 10, s.MirostatEta),
            MinKeep = I("min_keep", 0, 1 << 20, s.MinKeep),
            PenaltyLastN = I("repeat_last_n", 0, 1 << 16, s.PenaltyLastN),
        };
        if (Present(o, "dry_sequence_breakers", out var br))
        {
            if (br.ValueKind != JsonValueKind.Array || br.GetArrayLength() == 0 || br.GetArrayLength() > SamplerOptions.MaxDryBreakers
                || br.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String || e.GetString()!.Length == 0))
                throw new ApiException(400, $"'dry_sequence_breakers' must be an array of 1 to {SamplerOptions.MaxDryBreakers} non-empty strings", "dry_sequence_breakers");
            s = s with { DrySequenceBreakers = br.EnumerateArray().Select(e => e.GetString()!).ToArray() };
        }
        if (Present(o, "logit_bias", out var lb)) s = s with { LogitBias = LogitBias(lb, tokenizer) };
        return s;
    }

    /// <summary>
    /// OpenAI's logit_bias, {"token id": bias} with biases in [−100, 100], or llama.cpp's [[token id or text, bias], …]
    /// (a text's bias goes to every token it is tokenized into, without BOS); in both, llama.cpp's <c>false</c> for a
    /// bias bans the token (−∞).
    /// </summary>
    static Dictionary<int, float> LogitBias(JsonElement lb, Tokenizer? tokenizer)
    {
        const string name = "logit_bias";
        var bias = new Dictionary<int, float>();
        void Add(int id, JsonElement v)
        {
            float b;
            if (v.ValueKind == JsonValueKind.False) b = float.NegativeInfinity;
            else if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d >= -100 && d <= 100) b = (float)d;
            else throw new ApiException(400, $"'{name}' of token {id} must be a number between -100 and 100 (or false to ban it)", name);
            if (bias.Count == MaxLogitBias && !bias.ContainsKey(id)) throw new ApiException(400, $"'{name}' takes at most {MaxLogitBias} tokens", name);
            bias[id] = b;
        }
        if (lb.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in lb.EnumerateObject())
            {
                if (!int.TryParse(p.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                    throw new ApiException(400, $"'{name}' keys must be token ids, got \"{(p.Name.Length > 40 ? p.Name[..40] + "…" : p.Name)}\"", name);
                Add(id, p.Value);
            }
        }
        else if (lb.ValueKind == JsonValueKind.Array)
        {
            foreach (var e in lb.EnumerateArray())
            {
                if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 2 && e[0].ValueKind == JsonValueKind.String && tokenizer != null)
                {
                    string text = e[0].GetString()!;
                    if (text.Length == 0 || text.Length > 1000) throw new ApiException(400, $"'{name}': a text must have 1 to 1000 characters", name);
                    foreach (int t in tokenizer.Encode(text, addBos: false)) Add(t, e[1]);
                    continue;
                }
                if (e.ValueKind != JsonValueKind.Array || e.GetArrayLength() != 2 || e[0].ValueKind != JsonValueKind.Number || !e[0].TryGetInt32(out int id) || id < 0)
                    throw new ApiException(400, $"'{name}' as an array holds [token id or text, bias] pairs", name);
                Add(id, e[1]);
            }
        }
        else throw new ApiException(400, $"'{name}' must be an object of token ids to biases", name);
        return bias;
    }

    static Grammar Constraint(Func<Grammar> compile, string param)
    {
        try { return compile(); }
        catch (GrammarException e) { throw new ApiException(400, e.Message, param); }
    }

    /// <summary>The messages of a chat request; content may be a string or an array of text parts.</summary>
    public static List<ChatTurn> Messages(JsonElement o)
    {
        if (!Present(o, "messages", out var ms) || ms.ValueKind != JsonValueKind.Array)
            throw new ApiException(400, "'messages' must be an array of messages", "messages");
        if (ms.GetArrayLength() == 0) throw new ApiException(400, "'messages' must not be empty", "messages");
        var list = new List<ChatTurn>();
        foreach (var m in ms.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) throw new ApiException(400, "each message must be an object", "messages");
            var role = String(m, "role") ?? throw new ApiException(400, "each message needs a 'role'", "messages");
            if (role == "developer") role = "system";
            if (role is not ("system" or "user" or "assistant" or "tool"))
                throw new ApiException(400, $"unknown message role '{role}'", "messages");
            string content = "";
            if (Present(m, "content", out var c))
            {
                if (c.ValueKind == JsonValueKind.String) content = c.GetString()!;
                else if (c.ValueKind == JsonValueKind.Array)
                {
                    var sb = new System.Text.StringBuilder();
                    foreach (var part in c.EnumerateArray())
                    {
                        if (part.ValueKind != JsonValueKind.Object) throw new ApiException(400, "content parts must be objects", "messages");
                        var type = String(part, "type");
                        if (type != "text") throw new ApiException(400, $"content part type '{type}' is not supported (text only)", "messages");
                        sb.Append(String(part, "text") ?? "");
                    }
                    content = sb.ToString();
                }
                else throw new ApiException(400, "message 'content' must be a string or an array of parts", "messages");
            }
            IReadOnlyList<ChatToolCall>? calls = null;
            if (role == "assistant" && Present(m, "tool_calls", out var tc))
            {
                if (tc.ValueKind != JsonValueKind.Array) throw new ApiException(400, "'tool_calls' must be an array", "messages");
                calls = tc.EnumerateArray().Select(c =>
                {
                    if (c.ValueKind != JsonValueKind.Object || !Present(c, "function", out var f) || f.ValueKind != JsonValueKind.Object)
                        throw new ApiException(400, "each tool call needs a 'function' object", "messages");
                    string name = String(f, "name") ?? throw new ApiException(400, "each tool call's function needs a 'name'", "messages");
                    string args = String(f, "arguments") ?? "{}";
                    try { JsonDocument.Parse(args).Dispose(); }
                    catch (JsonException) { throw new ApiException(400, $"the arguments of the call to '{name}' are not JSON", "messages"); }
                    return new ChatToolCall(String(c, "id") ?? "", name, args);
                }).ToList();
            }
            list.Add(new ChatTurn(role, content) { ToolCalls = calls, ToolCallId = role == "tool" ? String(m, "tool_call_id") : null });
        }
        return list;
    }

    /// <summary>A chat request's <c>tools</c> and <c>tool_choice</c> (auto when tools are given, none otherwise).</summary>
    public static (List<ToolDefinition> Tools, ToolChoice Choice) Tools(JsonElement o)
    {
        var tools = new List<ToolDefinition>();
        if (Present(o, "tools", out var ts))
        {
            if (ts.ValueKind != JsonValueKind.Array) throw new ApiException(400, "'tools' must be an array", "tools");
            if (ts.GetArrayLength() > MaxTools) throw new ApiException(400, $"at most {MaxTools} tools", "tools");
            foreach (var t in ts.EnumerateArray())
            {
                if (t.ValueKind != JsonValueKind.Object || String(t, "type") != "function" || !Present(t, "function", out var f) || f.ValueKind != JsonValueKind.Object)
                    throw new ApiException(400, "each tool must be {\"type\": \"function\", \"function\": {...}}", "tools");
                string name = String(f, "name") ?? throw new ApiException(400, "each function needs a 'name'", "tools");
                if (!System.Text.RegularExpressions.Regex.IsMatch(name, "^[a-zA-Z0-9_-]{1,64}$"))
                    throw new ApiException(400, $"function name '{name}' must be 1–64 letters, digits, '_' or '-'", "tools");
                if (tools.Any(x => x.Name == name)) throw new ApiException(400, $"two tools are named '{name}'", "tools");
                JsonElement? parameters = null;
                if (Present(f, "parameters", out var ps))
                {
                    if (ps.ValueKind != JsonValueKind.Object) throw new ApiException(400, $"the parameters of '{name}' must be a JSON schema object", "tools");
                    parameters = ps.Clone();
                }
                tools.Add(new ToolDefinition(name, String(f, "description"), parameters));
            }
        }
        var choice = tools.Count > 0 ? ToolChoice.Auto : new ToolChoice(ToolChoice.Kind.None);
        if (Present(o, "tool_choice", out var tc))
        {
            if (tc.ValueKind == JsonValueKind.String)
                choice = tc.GetString() switch
                {
                    "none" => new ToolChoice(ToolChoice.Kind.None),
                    "auto" => ToolChoice.Auto,
                    "required" => new ToolChoice(ToolChoice.Kind.Required),
                    var other => throw new ApiException(400, $"tool_choice '{other}' is not one of none, auto, required", "tool_choice"),
                };
            else if (tc.ValueKind == JsonValueKind.Object && Present(tc, "function", out var f) && f.ValueKind == JsonValueKind.Object && String(f, "name") is { } name)
                choice = new ToolChoice(ToolChoice.Kind.Named, name);
            else throw new ApiException(400, "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice");
            if (choice.Mode != ToolChoice.Kind.None && tools.Count == 0) throw new ApiException(400, "tool_choice needs tools", "tool_choice");
            if (choice.Mode == ToolChoice.Kind.Named && !tools.Any(t => t.Name == choice.Name))
                throw new ApiException(400, $"tool_choice names '{choice.Name}', which is not among the tools", "tool_choice");
        }
        return (tools, choice);
    }

    public const int MaxTools = 128;

    /// <summary>The prompt of a completion request: a string, an array of token ids, or a one-element array of either.</summary>
    public static (string? Text, int[]? Tokens) Prompt(JsonElement o)
    {
        if (!Present(o, "prompt", out var p)) throw new ApiException(400, "'prompt' is required", "prompt");
        if (p.ValueKind == JsonValueKind.String) return (p.GetString(), null);
        if (p.ValueKind == JsonValueKind.Array)
        {
            int len = p.GetArrayLength();
            if (len == 0) throw new ApiException(400, "'prompt' must not be empty", "prompt");
            var first = p[0];
            if (first.ValueKind == JsonValueKind.Number)
                return (null, p.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int t) ? t : throw new ApiException(400, "a token prompt must be an array of integers", "prompt")).ToArray());
            if (len > 1) throw new ApiException(400, "only one prompt per request is supported (use n for several choices)", "prompt");
            if (first.ValueKind == JsonValueKind.String) return (first.GetString(), null);
            if (first.ValueKind == JsonValueKind.Array) return (null, first.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int t) ? t : throw new ApiException(400, "a token prompt must be an array of integers", "prompt")).ToArray());
        }
        throw new ApiException(400, "'prompt' must be a string or an array of token ids", "prompt");
    }
}
