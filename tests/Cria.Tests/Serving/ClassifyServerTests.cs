using System.Net;
using System.Text;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Server;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>
/// /classify (vLLM's classification route): with a train-classifier adapter and head, each text's probabilities are
/// the softmax of the class logits the engine gives in-process for BOS + the text cut to the classifier's context, and
/// its label the most likely; without a classifier a 404, and bad input a 400, in OpenAI's error shape; a head the
/// engine cannot run is refused when the server loads. /pooling does the same for a train-reward head: the engine's
/// reward of each text.
/// </summary>
public class ClassifyServerTests
{
    static (string Adapter, string Head, ClassifierOptions Options) WriteClassifier(string name, ClassifierOptions clf)
    {
        var imported = GgufImport.Read(EngineTests.ModelPath());
        using var m = new LlamaTrainingModel(imported.Shape with { ContextLength = 16 }, 1, 16, 2, new LoraOptions { Rank = 4, Alpha = 8f }, clf);
        imported.Parameters.CopyTo(m.Parameters, 0);
        var rng = new Random(6);
        for (int i = 0; i < m.LoraParameters.Length; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.3);
        string adapter = TestPaths.TempFile($"{name}-adapter.gguf"), head = TestPaths.TempFile($"{name}-head.gguf");
        m.Lora!.Write(adapter, m.LoraParameters);
        clf.WriteHead(head, m.Lora, m.LoraParameters);
        return (adapter, head, clf);
    }

    static async Task<(HttpStatusCode Status, JsonElement Body)> Post(HttpClient http, string path, string body)
    {
        using var r = await http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
        return (r.StatusCode, JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.Clone());
    }

    /// <summary>Two texts, the second longer than the head's context of 12 tokens.</summary>
    static readonly string[] Texts = ["the little girl", "a dog ran over the hill and far away into the night where nobody saw it"];

    /// <summary>A server on the test model with this adapter and head, read with a context of 12 tokens, loaded.</summary>
    static async Task<CriaServer> Serve(string adapter, string head)
    {
        var server = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 512, Threads = 2, ClassifierAdapter = adapter, ClassifierHead = head, ClassifierContext = 12,
        });
        await server.Loaded;
        return server;
    }

    /// <summary>The in-process engine the server's answers are checked against: the test model, the head's weights, and a
    /// context of 12 tokens with the adapter applied.</summary>
    static (LlamaModel, float[], InferenceContext) InProcess(string adapter, string head)
    {
        var m = LlamaModel.Open(EngineTests.ModelPath());
        var (_, weights) = ClassifierOptions.ReadHead(head, m.Config.Dim);
        return (m, weights, new InferenceContext(m, new ContextOptions { ContextSize = 12, Threads = 2, Loras = [(LoraAdapter.Load(adapter, m), 1f)] }));
    }

    [Fact]
    public async Task Classify_returns_the_engines_class_probabilities()
    {
        var (adapter, head, clf) = WriteClassifier("server-clf", new ClassifierOptions { Labels = ["joy", "grief", "awe"], Pooling = ClassifierPooling.Mean });
        await using var server = await Serve(adapter, head);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        string[] texts = Texts;
        var (st, j) = await Post(http, "/classify", JsonSerializer.Serialize(new { input = texts }));
        Assert.True(st == HttpStatusCode.OK, j.ToString());

        var (m, weights, ctx) = InProcess(adapter, head);
        using var _m = m; using var _ctx = ctx;
        var data = j.GetProperty("data");
        Assert.Equal(2, data.GetArrayLength());
        int tokens = 0;
        for (int i = 0; i < texts.Length; i++)
        {
            var e = new LabelledExample(m.Tokenizer.Encode(texts[i], addBos: false), 0);
            var ids = new int[Math.Min(12, e.Tokens.Length + 1)];
            e.CopyTo(ids, m.Tokenizer.Bos);
            tokens += ids.Length;
            var z = Classifier.Logits(ctx, ids, clf, weights);
            var p = z.Select(v => Math.Exp(v - z.Max())).ToArray();
            double sum = p.Sum();
            var got = data[i].GetProperty("probs").EnumerateArray().Select(x => x.GetDouble()).ToArray();
            Assert.Equal(3, got.Length);
            for (int k = 0; k < 3; k++) Assert.Equal(p[k] / sum, got[k], 6);
            Assert.Equal(clf.Labels[Sampler.ArgMax(z)], data[i].GetProperty("label").GetString());
            Assert.Equal(i, data[i].GetProperty("index").GetInt32());
            Assert.Equal(3, data[i].GetProperty("num_classes").GetInt32());
        }
        Assert.True(UncutLength(m, texts[1]) > 12, "the second text should be cut to the context");
        Assert.Equal(tokens, j.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal("list", j.GetProperty("object").GetString());

        // One string is one text; bad input is a 400 naming "input".
        var (st1, one) = await Post(http, "/classify", """{"input":"the little girl"}""");
        Assert.Equal(HttpStatusCode.OK, st1);
        Assert.Equal(data[0].GetProperty("probs").ToString(), one.GetProperty("data")[0].GetProperty("probs").ToString());
        foreach (var bad in new[] { "{}", """{"input":[]}""", """{"input":[1,2]}""", """{"input":7}""" })
        {
            var (sb, eb) = await Post(http, "/classify", bad);
            Assert.Equal(HttpStatusCode.BadRequest, sb);
            Assert.Equal("input", eb.GetProperty("error").GetProperty("param").GetString());
        }
    }

    [Fact]
    public async Task Pooling_returns_the_reward_models_rewards()
    {
        var (adapter, head, clf) = WriteClassifier("server-rm", ClassifierOptions.Reward(ClassifierObjective.BradleyTerry, ClassifierPooling.Last));
        await using var server = await Serve(adapter, head);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        string[] texts = Texts;
        var (st, j) = await Post(http, "/pooling", JsonSerializer.Serialize(new { input = texts, model = "x" }));
        Assert.True(st == HttpStatusCode.OK, j.ToString());

        var (m, weights, ctx) = InProcess(adapter, head);
        using var _m = m; using var _ctx = ctx;
        var data = j.GetProperty("data");
        Assert.Equal(2, data.GetArrayLength());
        var rewards = new double[2];
        for (int i = 0; i < texts.Length; i++)
        {
            var tokens = m.Tokenizer.Encode(texts[i], addBos: false);
            int[] ids = [m.Tokenizer.Bos, .. tokens.Take(11)];
            rewards[i] = RewardModel.Score(ctx, ids, clf, weights);
            Assert.Equal(i, data[i].GetProperty("index").GetInt32());
            Assert.Equal("pooling", data[i].GetProperty("object").GetString());
            var got = data[i].GetProperty("data");
            Assert.Equal(1, got.GetArrayLength());
            Assert.Equal(rewards[i], got[0].GetDouble(), 6);
        }
        Assert.NotEqual(rewards[0], rewards[1], 3);
        Assert.True(UncutLength(m, texts[1]) > 12, "the second text should be cut to the context");

        foreach (var bad in new[] { "{}", """{"input":[]}""", """{"input":[1,2]}""" })
        {
            var (sb, eb) = await Post(http, "/pooling", bad);
            Assert.Equal(HttpStatusCode.BadRequest, sb);
            Assert.Equal("input", eb.GetProperty("error").GetProperty("param").GetString());
        }
        // The other route is not this server's: a reward model is no classifier.
        var (sc, ec) = await Post(http, "/classify", """{"input":"x"}""");
        Assert.Equal(HttpStatusCode.NotFound, sc);
        Assert.Contains("no classifier", ec.GetProperty("error").GetProperty("message").GetString());
    }

    static int UncutLength(LlamaModel m, string text) => m.Tokenizer.Encode(text, addBos: false).Length + 1;

    [Fact]
    public async Task Without_a_classifier_classify_is_a_404_and_an_engine_it_cannot_run_is_refused()
    {
        await using (var plain = await CriaServer.StartAsync(new ServerOptions { ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 256, Threads = 1 }))
        {
            await plain.Loaded;
            using var http = new HttpClient { BaseAddress = plain.BaseAddress };
            var (st, j) = await Post(http, "/classify", """{"input":"x"}""");
            Assert.Equal(HttpStatusCode.NotFound, st);
            Assert.Contains("no classifier", j.GetProperty("error").GetProperty("message").GetString());
            var (sp, jp) = await Post(http, "/pooling", """{"input":"x"}""");
            Assert.Equal(HttpStatusCode.NotFound, sp);
            Assert.Contains("no reward model", jp.GetProperty("error").GetProperty("message").GetString());
        }
        var (adapter, head, _) = WriteClassifier("server-clf-bi", new ClassifierOptions { Labels = ["a", "b"], Pooling = ClassifierPooling.Mean, Bidirectional = true });
        await using var bi = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 256, Threads = 1, ClassifierAdapter = adapter, ClassifierHead = head,
        });
        var e = await Assert.ThrowsAnyAsync<Exception>(() => bi.Loaded);
        Assert.Contains("causal", e.Message);
    }
}
