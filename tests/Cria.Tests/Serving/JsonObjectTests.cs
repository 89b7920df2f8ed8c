using System.Text;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>response_format json_object: the grammar accepts exactly the prefixes of a JSON object (checked against
/// System.Text.Json), and constrained generation only ever emits such prefixes.</summary>
public class JsonObjectTests
{
    static bool IsJsonObject(string s)
    {
        try { return JsonDocument.Parse(s).RootElement.ValueKind == JsonValueKind.Object; }
        catch (JsonException) { return false; }
    }

    static bool AcceptsAll(string s, out bool complete)
    {
        var g = new JsonObjectGrammar();
        bool ok = g.Accept(Encoding.UTF8.GetBytes(s));
        complete = ok && g.IsComplete;
        return ok;
    }

    [Theory]
    [InlineData("{}")]
    [InlineData(" \n{ \"a\" : 1 }")]
    [InlineData("{\"a\":[1,-2.5e+3,0,0.25,true,false,null,\"x\\\"y\\u00e9\\n\"],\"b\":{\"c\":{}},\"d\":[]}")]
    [InlineData("{\"ключ\":\"значение 🦙\"}")]
    public void ValidObjectsAreAcceptedPrefixByPrefixAndCompleteOnlyAtTheEnd(string json)
    {
        Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(json).RootElement.ValueKind); // the oracle agrees it is valid
        var bytes = Encoding.UTF8.GetBytes(json);
        var g = new JsonObjectGrammar();
        for (int i = 0; i < bytes.Length; i++)
        {
            Assert.False(g.IsComplete);
            Assert.True(g.Accept(bytes[i]), $"rejected byte {i} of {json}");
        }
        Assert.True(g.IsComplete);
        Assert.False(g.Accept((byte)' ')); // nothing may follow
    }

    [Theory]
    [InlineData("[1]")]
    [InlineData("\"a\"")]
    [InlineData("{\"a\" 1}")]
    [InlineData("{\"a\":01}")]
    [InlineData("{\"a\":tru e}")]
    [InlineData("{,}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{\"a\":\"\\x\"}")]
    [InlineData("{\"a\":\"\u0001\"}")]
    [InlineData("{\"a\":-}")]
    [InlineData("{\"a\":1.}")]
    [InlineData("{\"a\":1e}")]
    [InlineData("{\"a\":[1}")]
    [InlineData("{1:2}")]
    public void InvalidTextIsRejected(string json)
    {
        Assert.False(IsJsonObject(json)); // the oracle agrees it is not a JSON object
        Assert.False(AcceptsAll(json, out _));
    }

    /// <summary><paramref name="n"/> runs of a request at once: the first greedy, the others sampled at temperature 1
    /// with seeds 1, 2, … (nothing truncated).</summary>
    internal static Task<EngineTests.Result[]> Runs(Engine e, GenerationRequest r, int n) =>
        Task.WhenAll(Enumerable.Range(0, n).Select(i => EngineTests.Run(e, r with
        {
            Sampler = i == 0 ? SamplerOptions.Greedy : new SamplerOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = (ulong)i },
        })));

    [Fact]
    public async Task ConstrainedGenerationEmitsOnlyJsonObjectPrefixes()
    {
        using var m = LlamaModel.Open(EngineTests.ModelPath());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 2048, Threads = 2 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 } });
        var prompt = m.Tokenizer.Encode("reply in json:", true);
        var runs = await Runs(e, new GenerationRequest { Prompt = prompt, MaxTokens = 60, JsonObject = true }, 6);
        var free = await EngineTests.Run(e, new GenerationRequest { Prompt = prompt, MaxTokens = 60, Sampler = SamplerOptions.Greedy });
        Assert.False(AcceptsAll(free.Text, out _)); // unconstrained, the random model does not write JSON
        foreach (var r in runs)
        {
            Assert.StartsWith("{", r.Text.TrimStart());
            Assert.True(AcceptsAll(r.Text, out bool complete), r.Text);
            // Independent check: System.Text.Json reads the text as a (partial) JSON document without error.
            var reader = new Utf8JsonReader(Encoding.UTF8.GetBytes(r.Text), isFinalBlock: false, state: default);
            while (reader.Read()) { }
            if (r.Finish == "stop") { Assert.True(complete); Assert.Equal(JsonValueKind.Object, JsonDocument.Parse(r.Text).RootElement.ValueKind); }
            else Assert.Equal(60, r.Tokens.Length);
        }
    }
}
