using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Server;
using Cria.Serving;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// /v1/completions' best_of: best_of samples drawn (sample i with seed + i, as n does), the n ranked highest returned in
/// rank order — by mean log-probability per token, OpenAI's rule, or by the model's own P("No") when the server has a
/// self-evaluation adapter — with every sample's tokens counted in usage; and its refusals.
/// </summary>
public class BestOfServerTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    const string Common = "\"prompt\":\"the little girl\",\"max_tokens\":8,\"temperature\":1,\"seed\":42,\"ignore_eos\":true";

    [Fact]
    public async Task BestOfReturnsTheNSamplesWithTheHighestMeanLogprob()
    {
        var (st, all) = await f.Post("/v1/completions", "{" + Common + ",\"n\":6,\"logprobs\":0}");
        Assert.Equal(HttpStatusCode.OK, st);
        var samples = all.GetProperty("choices").EnumerateArray().Select(c => (
            Text: c.GetProperty("text").GetString()!,
            Mean: c.GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Average(x => x.GetDouble()))).ToArray();
        Assert.True(samples.Select(s => s.Text).Distinct().Count() > 2, "the samples should differ");
        var want = Enumerable.Range(0, 6).OrderByDescending(i => samples[i].Mean).ThenBy(i => i).Take(2).ToArray();

        var (st2, best) = await f.Post("/v1/completions", "{" + Common + ",\"n\":2,\"best_of\":6}");
        Assert.Equal(HttpStatusCode.OK, st2);
        var ch = best.GetProperty("choices");
        Assert.Equal(2, ch.GetArrayLength());
        for (int k = 0; k < 2; k++)
        {
            Assert.Equal(k, ch[k].GetProperty("index").GetInt32());
            Assert.Equal(samples[want[k]].Text, ch[k].GetProperty("text").GetString());
            Assert.Equal(JsonValueKind.Null, ch[k].GetProperty("logprobs").ValueKind);   // not asked for
        }
        Assert.Equal(6 * 8, best.GetProperty("usage").GetProperty("completion_tokens").GetInt32());   // all six were generated

        // Asked for, the logprobs are the chosen sample's.
        var (_, withLp) = await f.Post("/v1/completions", "{" + Common + ",\"n\":1,\"best_of\":6,\"logprobs\":1}");
        var lp = withLp.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("token_logprobs").EnumerateArray().Average(x => x.GetDouble());
        Assert.Equal(samples[want[0]].Mean, lp, 5);
    }

    [Theory]
    [InlineData("{\"prompt\":\"x\",\"n\":3,\"best_of\":2}")]
    [InlineData("{\"prompt\":\"x\",\"best_of\":3,\"stream\":true}")]
    [InlineData("{\"prompt\":\"x\",\"best_of\":1000}")]
    [InlineData("{\"prompt\":\"x\",\"best_of\":\"many\"}")]
    public async Task BadBestOfIsA400(string body)
    {
        var (st, j) = await f.Post("/v1/completions", body);
        Assert.Equal(HttpStatusCode.BadRequest, st);
        Assert.Equal("best_of", j.GetProperty("error").GetProperty("param").GetString());
    }

    /// <summary>A server with a self-evaluation adapter ranks best_of's samples by P(No): the order an in-process engine
    /// (the same seeds give the same samples) and <see cref="SelfEvaluation.PNo"/> under that adapter give.</summary>
    [Fact]
    public async Task WithASelfEvaluationAdapterBestOfRanksByPNo()
    {
        string modelPath = EngineTests.ModelPath();
        var imported = GgufImport.Read(modelPath);
        using (var trainer = new Trainer(imported.Shape, new TrainingOptions { BatchSize = 2, Steps = 1, WarmupSteps = 0, Threads = 2 }, [], 1,
                   seqLen: 32, lora: new LoraOptions { Rank = 4, Alpha = 8f }))
        {
            var rng = new Random(8);
            for (int i = 0; i < trainer.Model.LoraParameters.Length; i++) trainer.Model.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.3);
            trainer.Model.Lora!.Write(TestPaths.TempFile("server-self-eval.gguf"), trainer.Model.LoraParameters);
        }
        string adapter = TestPaths.TempFile("server-self-eval.gguf");
        await using var server = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = modelPath, Port = 0, ContextSize = 1024, Threads = 2, SelfEvalAdapter = adapter, SelfEvalContext = 128,
        });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var r = await http.PostAsync("/v1/completions", new StringContent("{" + Common + ",\"n\":2,\"best_of\":5}", Encoding.UTF8, "application/json"));
        string body = await r.Content.ReadAsStringAsync();
        Assert.True(r.StatusCode == HttpStatusCode.OK, body);
        var got = JsonDocument.Parse(body).RootElement.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()).ToArray();

        using var m = LlamaModel.Open(modelPath);
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 512, Threads = 2 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions());
        using var sc = new InferenceContext(m, new ContextOptions { ContextSize = 127, Threads = 2, Loras = [(LoraAdapter.Load(adapter, m), 1f)] });
        var format = SelfEvalFormat.Create(m.Tokenizer);
        var prompt = m.Tokenizer.Encode("the little girl", m.Tokenizer.AddBos, parseSpecial: true);
        var drawn = new List<(string Text, double PNo, double Logp)>();
        for (int i = 0; i < 5; i++)
        {
            var s = await EngineTests.Run(e, new GenerationRequest
            {
                Prompt = prompt, MaxTokens = 8, IgnoreEog = true, TopLogprobs = 0, Sampler = new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 42 + (ulong)i },   // OpenAI's defaults, as the server reads them
            });
            drawn.Add((s.Text, SelfEvaluation.PNo(sc, format, prompt, s.Tokens, 127), s.Logprobs.Average()));
        }
        Assert.True(drawn.Select(d => d.PNo).Distinct().Count() == 5, "P(No) should tell the samples apart");
        var want = Enumerable.Range(0, 5).OrderByDescending(i => drawn[i].PNo).ThenBy(i => i).Take(2).Select(i => drawn[i].Text).ToArray();
        Assert.Equal(want, got);
        var byLogp = Enumerable.Range(0, 5).OrderByDescending(i => drawn[i].Logp).ThenBy(i => i).Take(2).Select(i => drawn[i].Text).ToArray();
        Assert.NotEqual(byLogp, want);   // so the server's answer tells the two rules apart

        // A prompt that leaves the question no room in the self-evaluation's 128 tokens is the client's to shorten: a 400.
        string longPrompt = string.Concat(Enumerable.Repeat("the little girl ", 8));
        Assert.True(prompt.Length * 8 + format.Question.Length > 127);
        using var tooLong = await http.PostAsync("/v1/completions", new StringContent($$"""{"prompt":"{{longPrompt}}","max_tokens":4,"n":1,"best_of":2}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, tooLong.StatusCode);
        Assert.Contains("best_of", await tooLong.Content.ReadAsStringAsync());
    }
}
