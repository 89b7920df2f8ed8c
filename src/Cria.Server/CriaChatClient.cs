using System.Runtime.CompilerServices;
using System.Text;
using Cria.Inference;
using Cria.Serving;
using Cria.Tokenization;
using Microsoft.Extensions.AI;

namespace Cria.Server;

/// <summary>
/// <see cref="IChatClient"/> over an in-process <see cref="Engine"/>: .NET code (and Semantic Kernel) talks to Cria
/// without HTTP, with the same scheduler, chat template and sampling as the server. ChatOptions map to the sampler
/// (temperature, top-p, top-k, penalties, seed, stop sequences, max output tokens), and the response format to an output
/// constraint (JSON, or a JSON schema's documents); ChatOptions.Tools and ToolMode to function calling
/// (<see cref="ToolCalling"/>): replies carry <see cref="FunctionCallContent"/>, and <see cref="FunctionResultContent"/>
/// in the conversation becomes tool turns, so FunctionInvokingChatClient can run the loop.
/// </summary>
public sealed class CriaChatClient(Engine engine, ChatTemplate template, string modelId) : IChatClient
{
    public Engine Engine { get; } = engine;
    public ChatTemplate Template { get; } = template;
    public ChatClientMetadata Metadata { get; } = new("cria", null, modelId);

    /// <summary>The conversation as chat turns: function calls (<see cref="FunctionCallContent"/>) on the assistant's
    /// turn, each function result (<see cref="FunctionResultContent"/>) a tool turn of its own.</summary>
    internal static List<ChatTurn> Turns(IEnumerable<ChatMessage> messages)
    {
        var turns = new List<ChatTurn>();
        foreach (var m in messages)
        {
            var results = m.Contents.OfType<FunctionResultContent>().ToList();
            foreach (var r in results)
                turns.Add(new ChatTurn("tool", r.Result as string ?? System.Text.Json.JsonSerializer.Serialize(r.Result)) { ToolCallId = r.CallId });
            var calls = m.Contents.OfType<FunctionCallContent>()
                .Select(c => new ChatToolCall(c.CallId, c.Name, System.Text.Json.JsonSerializer.Serialize(c.Arguments ?? new Dictionary<string, object?>()))).ToList();
            if (results.Count == 0 || m.Text.Length > 0 || calls.Count > 0)
                turns.Add(new ChatTurn(m.Role.Value, m.Text) { ToolCalls = calls.Count > 0 ? calls : null });
        }
        return turns;
    }

    sealed record Tools(List<ToolDefinition> Definitions, ToolCalling.Format Format);

    (GenerationRequest, Tools?) Build(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var turns = Turns(messages);
        var tok = Engine.Tokenizer;
        var o = options;
        var defs = o?.Tools?.OfType<AIFunctionDeclaration>().Select(f => new ToolDefinition(f.Name, f.Description, f.JsonSchema)).ToList() ?? [];
        var choice = o?.ToolMode switch
        {
            NoneChatToolMode => new ToolChoice(ToolChoice.Kind.None),
            RequiredChatToolMode { RequiredFunctionName: { } name } => new ToolChoice(ToolChoice.Kind.Named, name),
            RequiredChatToolMode => new ToolChoice(ToolChoice.Kind.Required),
            _ => ToolChoice.Auto,
        };
        Tools? tools = null;
        Grammar? toolGrammar = null;
        string text;
        if (defs.Count > 0 && choice.Mode != ToolChoice.Kind.None)
        {
            if (o?.ResponseFormat is ChatResponseFormatJson) throw new InvalidRequestException("tools cannot be combined with a JSON response format");
            tools = new Tools(defs, ToolCalling.FormatOf(Template));
            text = ToolCalling.Render(Template, turns, defs, tools.Format);
            toolGrammar = ToolCalling.Constraint(defs, choice, tools.Format);
        }
        else text = Template.Render(turns);
        var prompt = tok.Encode(text, tok.AddBos, parseSpecial: true);
        int room = Engine.MaxSequenceLength - prompt.Length;
        if (room <= 0) throw new InvalidRequestException($"the conversation has {prompt.Length} tokens but the context holds {Engine.MaxSequenceLength}");
        return (new GenerationRequest
        {
            Prompt = prompt,
            MaxTokens = Math.Min(o?.MaxOutputTokens ?? room, room),
            Stop = o?.StopSequences?.ToArray() ?? [],
            // ChatResponseFormat.Json: one JSON object; ForJsonSchema(schema): a document of the schema
            JsonObject = o?.ResponseFormat is ChatResponseFormatJson { Schema: null },
            Grammar = toolGrammar ?? (o?.ResponseFormat is ChatResponseFormatJson { Schema: { } schema } ? JsonSchemaGrammar.Compile(schema) : null),
            Sampler = ExtraSampling(new SamplerOptions
            {
                Temperature = o?.Temperature ?? 1f,
                TopP = o?.TopP ?? 1f,
                TopK = o?.TopK ?? 0,
                MinP = 0,
                FrequencyPenalty = o?.FrequencyPenalty ?? 0,
                PresencePenalty = o?.PresencePenalty ?? 0,
                Seed = o?.Seed is long s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64(),
            }, o, tok),
        }, tools);
    }

    /// <summary>
    /// ChatOptions.AdditionalProperties as the JSON object the server would read its llama.cpp sampling fields from
    /// (e.g. ["min_p"] = 0.05f, ["mirostat"] = 2, ["logit_bias"] = new Dictionary&lt;int, float&gt; { [42] = -100 }).
    /// </summary>
    static SamplerOptions ExtraSampling(SamplerOptions s, ChatOptions? o, Tokenizer tokenizer)
    {
        if (o?.AdditionalProperties is not { Count: > 0 } extra) return s;
        try { return s.LlamaCppSampling(System.Text.Json.JsonSerializer.SerializeToElement(extra), tokenizer); }
        catch (ApiException e) { throw new InvalidRequestException("ChatOptions.AdditionalProperties: " + e.Message); }
        catch (Exception e) when (e is NotSupportedException or System.Text.Json.JsonException)
        { throw new InvalidRequestException("ChatOptions.AdditionalProperties: " + e.Message); }
    }

    /// <summary>The reply as a message: text, and (with tools) the function calls it made.</summary>
    static (ChatMessage Message, ChatFinishReason? Finish) Reply(string text, string? finish, Tools? tools)
    {
        if (tools == null) return (new ChatMessage(ChatRole.Assistant, text), Reason(finish));
        var (content, calls) = ToolCalling.Parse(text, tools.Definitions, tools.Format);
        var m = new ChatMessage(ChatRole.Assistant, content ?? "");
        if (content == null) m.Contents.Clear();
        foreach (var c in calls)
        {
            var args = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, object?>>(c.Arguments);
            m.Contents.Add(new FunctionCallContent(c.Id, c.Name, args));
        }
        return (m, Reason(ToolCalling.FinishReason(finish, calls.Count)));
    }

    static ChatFinishReason? Reason(string? r) => r switch
    {
        "stop" => ChatFinishReason.Stop,
        "length" => ChatFinishReason.Length,
        "tool_calls" => ChatFinishReason.ToolCalls,
        null => null,
        _ => new ChatFinishReason(r),
    };

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (req, tools) = Build(messages, options);
        var text = new StringBuilder();
        string? finish = null;
        int count = 0;
        await foreach (var e in Engine.GenerateAsync(req, cancellationToken))
        {
            if (e.IsToken) count++;
            text.Append(e.Text);
            finish ??= e.FinishReason;
        }
        var (message, reason) = Reply(text.ToString(), finish, tools);
        return new ChatResponse(message)
        {
            ModelId = Metadata.DefaultModelId,
            FinishReason = reason,
            CreatedAt = DateTimeOffset.UtcNow,
            ResponseId = "chatcmpl-" + Guid.NewGuid().ToString("N"),
            Usage = new UsageDetails { InputTokenCount = req.Prompt.Length, OutputTokenCount = count, TotalTokenCount = req.Prompt.Length + count },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (req, tools) = Build(messages, options);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        int count = 0;
        // With tools, text that may belong to a call is held until the reply ends (ToolReplyStream).
        var split = tools != null ? new ToolReplyStream(tools.Definitions, tools.Format) : null;
        await foreach (var e in Engine.GenerateAsync(req, cancellationToken))
        {
            if (e.IsToken) count++;
            if (split != null)
            {
                string now = split.Add(e.Text);
                if (e.FinishReason == null)
                {
                    if (now.Length > 0) yield return new ChatResponseUpdate(ChatRole.Assistant, now) { ResponseId = id, ModelId = Metadata.DefaultModelId };
                    continue;
                }
                var (content, calls) = split.Finish();
                string text = now + content;
                var last = new ChatResponseUpdate(ChatRole.Assistant, text.Length > 0 ? text : null)
                {
                    ResponseId = id, ModelId = Metadata.DefaultModelId,
                    FinishReason = Reason(ToolCalling.FinishReason(e.FinishReason, calls.Count)),
                };
                foreach (var c in calls)
                    last.Contents.Add(new FunctionCallContent(c.Id, c.Name, System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, object?>>(c.Arguments)));
                last.Contents.Add(new UsageContent(new UsageDetails { InputTokenCount = req.Prompt.Length, OutputTokenCount = count, TotalTokenCount = req.Prompt.Length + count }));
                yield return last;
                continue;
            }
            if (e.Text.Length == 0 && e.FinishReason == null) continue;
            var u = new ChatResponseUpdate(ChatRole.Assistant, e.Text) { ResponseId = id, ModelId = Metadata.DefaultModelId, FinishReason = Reason(e.FinishReason) };
            if (e.FinishReason != null)
                u.Contents.Add(new UsageContent(new UsageDetails { InputTokenCount = req.Prompt.Length, OutputTokenCount = count, TotalTokenCount = req.Prompt.Length + count }));
            yield return u;
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey != null ? null :
        serviceType == typeof(ChatClientMetadata) ? Metadata :
        serviceType.IsInstanceOfType(this) ? this :
        serviceType == typeof(Engine) ? Engine : null;

    public void Dispose() { }
}
