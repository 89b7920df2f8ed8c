using Cria.Serving;
using Microsoft.Extensions.AI;

namespace Cria.Server;

/// <summary>
/// <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> over an in-process <see cref="Engine"/>: each text is
/// tokenized (with BOS when the model asks for it) and embedded by <see cref="Engine.EmbedAsync"/> (mean-pooled final
/// hidden states, L2-normalised), the same as the server's /v1/embeddings.
/// </summary>
public sealed class CriaEmbeddingGenerator(Engine engine, string modelId) : IEmbeddingGenerator<string, Embedding<float>>
{
    public Engine Engine { get; } = engine;
    public EmbeddingGeneratorMetadata Metadata { get; } = new("cria", null, modelId, engine.Context.Config.Dim);

    public async Task<GeneratedEmbeddings<Embedding<float>>> GenerateAsync(IEnumerable<string> values, EmbeddingGenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        if (options?.Dimensions is int d && d != Engine.Context.Config.Dim)
            throw new InvalidRequestException($"this model's embeddings have {Engine.Context.Config.Dim} dimensions, {d} were asked for");
        var tok = Engine.Tokenizer;
        var inputs = values.Select(v => tok.Encode(v, tok.AddBos, parseSpecial: false)).ToArray();
        var vectors = await Task.WhenAll(inputs.Select(t => Engine.EmbedAsync(t, cancellationToken)));
        var result = new GeneratedEmbeddings<Embedding<float>>(vectors.Select(v => new Embedding<float>(v) { ModelId = Metadata.DefaultModelId, CreatedAt = DateTimeOffset.UtcNow }))
        {
            Usage = new UsageDetails { InputTokenCount = inputs.Sum(t => t.Length), TotalTokenCount = inputs.Sum(t => t.Length) },
        };
        return result;
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey != null ? null :
        serviceType == typeof(EmbeddingGeneratorMetadata) ? Metadata :
        serviceType.IsInstanceOfType(this) ? this :
        serviceType == typeof(Engine) ? Engine : null;

    public void Dispose() { }
}
