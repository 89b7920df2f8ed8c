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
/// constraint (JSON, or a JSON schema's documents).
/// </summary>
public sealed class CriaChatClient(Engine engine, ChatTemplate template, string modelId) : IChatClient
{
    public Engine Engine { get; } = engine;
    public ChatTemplate Template { get; } = template;
    public ChatClientMetadata Metadata { get; } = new("cria", null, modelId);

    GenerationRequest Build(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var turns = messages.Select(m => new ChatTurn(m.Role.Value, m.Text)).ToList();
        var tok = Engine.Tokenizer;
        var prompt = tok.Encode(Template.Render(turns), tok.AddBos, parseSpecial: true);
        var o = options;
        int room = Engine.MaxSequenceLength - prompt.Length;
        if (room <= 0) throw new InvalidRequestException($"the conversation has {prompt.Length} tokens but the context holds {Engine.MaxSequenceLength}");
        return new GenerationRequest
        {
            Prompt = prompt,
            MaxTokens = Math.Min(o?.MaxOutputTokens ?? room, room),
            Stop = o?.StopSequences?.ToArray() ?? [],
            // ChatResponseFormat.Json: one JSON object; ForJsonSchema(schema): a document of the schema
            JsonObject = o?.ResponseFormat is ChatResponseFormatJson { Schema: null },
            Grammar = o?.ResponseFormat is ChatResponseFormatJson { Schema: { } schema } ? JsonSchemaGrammar.Compile(schema) : null,
            Sampler = new SamplerOptions
            {
                Temperature = o?.Temperature ?? 1f,
                TopP = o?.TopP ?? 1f,
                TopK = o?.TopK ?? 0,
                MinP = 0,
                FrequencyPenalty = o?.FrequencyPenalty ?? 0,
                PresencePenalty = o?.PresencePenalty ?? 0,
                Seed = o?.Seed is long s ? unchecked((ulong)s) : (ulong)Random.Shared.NextInt64(),
            },
        };
    }

    static ChatFinishReason? Reason(string? r) => r switch
    {
        "stop" => ChatFinishReason.Stop,
        "length" => ChatFinishReason.Length,
        null => null,
        _ => new ChatFinishReason(r),
    };

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var req = Build(messages, options);
        var text = new StringBuilder();
        string? finish = null;
        int count = 0;
        await foreach (var e in Engine.GenerateAsync(req, cancellationToken))
        {
            if (e.IsToken) count++;
            text.Append(e.Text);
            finish ??= e.FinishReason;
        }
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text.ToString()))
        {
            ModelId = Metadata.DefaultModelId,
            FinishReason = Reason(finish),
            CreatedAt = DateTimeOffset.UtcNow,
            ResponseId = "chatcmpl-" + Guid.NewGuid().ToString("N"),
            Usage = new UsageDetails { InputTokenCount = req.Prompt.Length, OutputTokenCount = count, TotalTokenCount = req.Prompt.Length + count },
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var req = Build(messages, options);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        int count = 0;
        await foreach (var e in Engine.GenerateAsync(req, cancellationToken))
        {
            if (e.IsToken) count++;
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
