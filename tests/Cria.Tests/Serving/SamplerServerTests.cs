using System.Net;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// The samplers through the server: OpenAI's logit_bias (and llama.cpp's array form with <c>false</c>), llama.cpp's
/// sampling fields reaching the sampler, bad values as OpenAI 400s; and requests whose distribution moves with each
/// draw (XTC, mirostat) never draft.
/// </summary>
public class SamplerServerTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    async Task<string> Complete(string extra, int max = 1)
    {
        var (st, j) = await f.Post("/v1/completions", $$"""{"prompt":"the little girl","max_tokens":{{max}},"ignore_eos":true{{extra}}}""");
        Assert.True(st == HttpStatusCode.OK, j.ToString());
        return j.GetProperty("choices")[0].GetProperty("text").GetString()!;
    }

    async Task<string> Detokenize(int id)
    {
        var (_, d) = await f.Post("/detokenize", JsonSerializer.Serialize(new { tokens = new[] { id } }));
        return d.GetProperty("content").GetString()!;
    }

    [Fact]
    public async Task Logit_bias_forces_and_bans_tokens()
    {
        var (_, t) = await f.Post("/tokenize", """{"content":"hello world","add_special":false}""");
        var ids = t.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        int x = ids[0], y = ids[^1];
        Assert.NotEqual(x, y);
        Assert.NotEqual("", (await Detokenize(x)).Trim());
        Assert.NotEqual("", (await Detokenize(y)).Trim());
        // +100 on a token makes it the greedy choice; then llama.cpp's array form bans it with false
        string forced = await Complete($$""","temperature":0,"logit_bias":{"{{x}}":100}""");
        Assert.Equal((await Detokenize(x)).Trim(), forced.Trim());
        string banned = await Complete($$""","temperature":0,"logit_bias":[[{{x}},false],[{{y}},100]]""");
        Assert.Equal((await Detokenize(y)).Trim(), banned.Trim());
        // llama.cpp's text form: the bias goes to every token of the text (tokenized without BOS)
        var (_, th) = await f.Post("/tokenize", """{"content":"hello","add_special":false}""");
        var helloTokens = th.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        string first = (await Complete(""","temperature":0,"logit_bias":[["hello",100]]""")).Trim();
        var pieces = new List<string>();
        foreach (int h in helloTokens) pieces.Add((await Detokenize(h)).Trim());
        Assert.Contains(first, pieces);
        string notHello = await Complete($$""","temperature":0,"logit_bias":[["hello",false],[{{y}},100]]""");
        Assert.Equal((await Detokenize(y)).Trim(), notHello.Trim());
        // sampled at temperature 2 with everything else banned but two tokens: only those two come out
        var two = $$"""{"{{x}}":100,"{{y}}":100}""";
        for (int seed = 0; seed < 6; seed++)
        {
            var s = (await Complete($$""","temperature":2,"seed":{{seed}},"logit_bias":{{two}}""")).Trim();
            Assert.Contains(s, new[] { (await Detokenize(x)).Trim(), (await Detokenize(y)).Trim() });
        }
    }

    [Fact]
    public async Task Llama_cpp_sampling_fields_reach_the_sampler()
    {
        string greedy = await Complete(""","temperature":0""", 8);
        // mirostat 2 with τ = 0 and η = 0 keeps μ at 0: only a token of probability 1 (after its own cut: the most
        // likely) survives, so sampling at temperature 1 gives the greedy text; the same for top-nσ at a tiny n.
        Assert.Equal(greedy, await Complete(""","temperature":1,"seed":3,"mirostat":2,"mirostat_tau":0,"mirostat_eta":0""", 8));
        Assert.Equal(greedy, await Complete(""","temperature":1.5,"seed":4,"top_n_sigma":0.000001""", 8));
        // the same requests without those fields sample something else (seeded, so the check cannot flake)
        Assert.NotEqual(greedy, await Complete(""","temperature":1.5,"seed":4""", 8));
        // the rest are accepted, and DRY with its breakers runs
        await Complete(""","temperature":0.9,"seed":5,"typical_p":0.9,"xtc_probability":0.5,"xtc_threshold":0.1,"dynatemp_range":0.3,"dynatemp_exponent":1.5,"min_keep":2,"repeat_last_n":32,"repeat_penalty":1.1,"dry_multiplier":0.8,"dry_base":1.75,"dry_allowed_length":2,"dry_penalty_last_n":-1,"dry_sequence_breakers":["\n","."]""", 8);
    }

    [Theory]
    [InlineData(""","typical_p":1.5""", "typical_p")]
    [InlineData(""","mirostat":3""", "mirostat")]
    [InlineData(""","xtc_probability":-1""", "xtc_probability")]
    [InlineData(""","dry_base":0.5""", "dry_base")]
    [InlineData(""","dry_sequence_breakers":[]""", "dry_sequence_breakers")]
    [InlineData(""","dry_sequence_breakers":["a",""]""", "dry_sequence_breakers")]
    [InlineData(""","logit_bias":{"abc":1}""", "logit_bias")]
    [InlineData(""","logit_bias":{"5":200}""", "logit_bias")]
    [InlineData(""","logit_bias":{"5":"x"}""", "logit_bias")]
    [InlineData(""","logit_bias":[[5]]""", "logit_bias")]
    [InlineData(""","logit_bias":[["",1]]""", "logit_bias")]
    [InlineData(""","logit_bias":7""", "logit_bias")]
    [InlineData(""","logit_bias":{"99999999":1}""", null)] // outside the vocabulary: the engine's 400
    public async Task Bad_sampling_fields_are_400s(string extra, string? param)
    {
        var (st, j) = await f.Post("/v1/completions", $$"""{"prompt":"x","max_tokens":2{{extra}}}""");
        Assert.Equal(HttpStatusCode.BadRequest, st);
        var e = j.GetProperty("error");
        if (param != null) Assert.Equal(param, e.GetProperty("param").GetString());
        else Assert.Contains("logit_bias", e.GetProperty("message").GetString());
    }

    /// <summary>In process, ChatOptions.AdditionalProperties carry the same fields (read by the same code).</summary>
    [Fact]
    public async Task The_in_process_client_takes_them_from_additional_properties()
    {
        var client = new Cria.Server.CriaChatClient(f.Server.Engine!, new Cria.Tokenization.ChatTemplate(Cria.Tokenization.ChatTemplate.Format.ChatML), "cria-test");
        List<Microsoft.Extensions.AI.ChatMessage> hi = [new(Microsoft.Extensions.AI.ChatRole.User, "hello there, llama")];
        var greedy = await client.GetResponseAsync(hi, new Microsoft.Extensions.AI.ChatOptions { MaxOutputTokens = 8, Temperature = 0 });
        Microsoft.Extensions.AI.ChatOptions Sampled(Microsoft.Extensions.AI.AdditionalPropertiesDictionary? extra) =>
            new() { MaxOutputTokens = 8, Temperature = 1.5f, Seed = 4, AdditionalProperties = extra };
        var mirostat = await client.GetResponseAsync(hi, Sampled(new() { ["mirostat"] = 2, ["mirostat_tau"] = 0f, ["mirostat_eta"] = 0f }));
        Assert.Equal(greedy.Text, mirostat.Text);
        Assert.NotEqual(greedy.Text, (await client.GetResponseAsync(hi, Sampled(null))).Text);
        // a logit bias as a dictionary of token ids
        int x = f.Server.Engine!.Tokenizer.Encode("hello", addBos: false)[0];
        var forced = await client.GetResponseAsync(hi, Sampled(new() { ["logit_bias"] = new Dictionary<int, float> { [x] = 100f } }));
        Assert.StartsWith(f.Server.Engine!.Tokenizer.Decode([x]).Trim(), forced.Text.Trim());
        await Assert.ThrowsAsync<InvalidRequestException>(() => client.GetResponseAsync(hi, Sampled(new() { ["typical_p"] = 3f })));
    }

    /// <summary>With prompt lookup on, a greedy request drafts; the same request with XTC or mirostat does not (its
    /// distribution changes with each draw, so drafts could not be verified against it).</summary>
    [Fact]
    public async Task Xtc_and_mirostat_requests_do_not_draft()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 512, Threads = 2 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Speculative = SpeculativeOptions.Lookup });
        var prompt = m.Tokenizer.Encode("And God said unto Noah, And God said unto Noah, And God said unto", true);
        GenerationRequest R(SamplerOptions s) => new() { Prompt = prompt, MaxTokens = 24, IgnoreEog = true, Sampler = s };
        await EngineTests.Run(e, R(SamplerOptions.Greedy));
        long drafted = e.SpecDraftTokensTotal;
        Assert.True(drafted > 0, "the greedy request should draft");
        await EngineTests.Run(e, R(new SamplerOptions { XtcProbability = 0.5f, Seed = 1 }));
        await EngineTests.Run(e, R(new SamplerOptions { Mirostat = 2, Seed = 1 }));
        Assert.Equal(drafted, e.SpecDraftTokensTotal);
        await EngineTests.Run(e, R(new SamplerOptions { Temperature = 0, DryMultiplier = 0.8f }));
        Assert.True(e.SpecDraftTokensTotal > drafted, "DRY is deterministic: it drafts");
    }
}

/// <summary><c>cria serve</c>'s sampling flags: what a request samples with where it sets nothing.</summary>
public class ServerSamplingDefaultsTests
{
    [Fact]
    public async Task A_request_that_sets_nothing_samples_with_the_servers_defaults()
    {
        // mirostat 2 with τ = η = 0 by default: a request at temperature 1 gives the greedy text, unless it turns
        // mirostat off itself
        await using var server = await Cria.Server.CriaServer.StartAsync(new Cria.Server.ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 512, Threads = 2,
            Sampling = Cria.Server.OpenAiRequest.OpenAiDefaults with { Mirostat = 2, MirostatTau = 0, MirostatEta = 0 },
        });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        async Task<string> Text(string extra)
        {
            using var r = await http.PostAsync("/v1/completions", new StringContent($$"""{"prompt":"the little girl","max_tokens":8,"ignore_eos":true{{extra}}}""", System.Text.Encoding.UTF8, "application/json"));
            var j = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
            Assert.True(r.IsSuccessStatusCode, j.ToString());
            return j.GetProperty("choices")[0].GetProperty("text").GetString()!;
        }
        string greedy = await Text(""","temperature":0""");
        Assert.Equal(greedy, await Text(""","seed":4"""));
        Assert.NotEqual(greedy, await Text(""","seed":4,"mirostat":0,"temperature":1.5"""));
    }

    [Fact]
    public async Task Bad_defaults_fail_the_start_or_the_load()
    {
        var bad = new Cria.Server.ServerOptions { ModelPath = EngineTests.ModelPath(), Port = 0, Sampling = new SamplerOptions { Mirostat = 5 } };
        await Assert.ThrowsAsync<CriaException>(() => Cria.Server.CriaServer.StartAsync(bad));
        // a default logit bias outside the vocabulary: the load fails, and /health says so
        await using var server = await Cria.Server.CriaServer.StartAsync(new Cria.Server.ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 256, Threads = 2,
            Sampling = Cria.Server.OpenAiRequest.OpenAiDefaults with { LogitBias = new Dictionary<int, float> { [99_999_999] = 1f } },
        });
        await Assert.ThrowsAnyAsync<Exception>(() => server.Loaded);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await http.GetAsync("/health")).StatusCode);
    }
}
