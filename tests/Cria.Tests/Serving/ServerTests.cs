using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Cria.Server;
using Cria.Serving;
using Cria.Tokenization;
using Microsoft.Extensions.AI;
using OpenAI;
using OpenAI.Chat;
using Xunit;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Cria.Tests.Serving;

/// <summary>One real server on a free loopback port, with an API key, shared by the tests of a class.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    public const string Key = "test-key-123";
    public CriaServer Server { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Server = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), ModelName = "cria-test", Port = 0, ApiKey = Key, ContextSize = 4096, Threads = 2,
            Engine = new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 128, MaxSequences = 32 } },
        });
        await Server.Loaded;
        Http = new HttpClient { BaseAddress = Server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", Key);
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
    }

    public OpenAIClient OpenAi(string key = Key) =>
        new(new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(Server.BaseAddress, "v1/") });

    public async Task<(HttpStatusCode, JsonElement)> Post(string path, string json)
    {
        using var r = await Http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        var body = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, JsonDocument.Parse(body).RootElement.Clone());
    }
}

public class ServerTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    static readonly List<OpenAI.Chat.ChatMessage> Hello = [new SystemChatMessage("You are terse."), new UserChatMessage("hello there, llama")];

    [Fact]
    public async Task OpenAiClientChatStreamingAndNotAgree()
    {
        var chat = f.OpenAi().GetChatClient("cria-test");
        var opts = new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0, Seed = 5 };
        ChatCompletion c = (await chat.CompleteChatAsync(Hello, opts)).Value;
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, c.FinishReason);
        Assert.Equal(12, c.Usage.OutputTokenCount);
        Assert.True(c.Usage.InputTokenCount > 10);
        Assert.Equal("cria-test", c.Model);
        Assert.False(string.IsNullOrEmpty(c.Content[0].Text));

        var sb = new StringBuilder();
        OpenAI.Chat.ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        int updates = 0;
        await foreach (var u in chat.CompleteChatStreamingAsync(Hello, opts))
        {
            updates++;
            foreach (var part in u.ContentUpdate) sb.Append(part.Text);
            finish ??= u.FinishReason;
            usage ??= u.Usage;
        }
        Assert.Equal(c.Content[0].Text, sb.ToString());
        Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, finish);
        Assert.True(updates >= 3);
        Assert.NotNull(usage); // the OpenAI client asks for stream_options.include_usage
        Assert.Equal(12, usage!.OutputTokenCount);

        // The same conversation through the in-process IChatClient gives the same text (same template, same engine).
        var s = f.Server.Engine!;
        var inProc = new CriaChatClient(s, new ChatTemplate(ChatTemplate.Format.ChatML), "cria-test");
        var r = await inProc.GetResponseAsync([new AiChatMessage(ChatRole.System, "You are terse."), new AiChatMessage(ChatRole.User, "hello there, llama")],
            new ChatOptions { MaxOutputTokens = 12, Temperature = 0 });
        Assert.Equal(c.Content[0].Text, r.Text);
        Assert.Equal(12, r.Usage!.OutputTokenCount);
        var streamed = new StringBuilder();
        await foreach (var u in inProc.GetStreamingResponseAsync([new AiChatMessage(ChatRole.System, "You are terse."), new AiChatMessage(ChatRole.User, "hello there, llama")],
            new ChatOptions { MaxOutputTokens = 12, Temperature = 0 }))
            streamed.Append(u.Text);
        Assert.Equal(r.Text, streamed.ToString());
    }

    [Fact]
    public async Task MicrosoftExtensionsAiOverHttpStreamingAndNot()
    {
        IChatClient ai = f.OpenAi().GetChatClient("cria-test").AsIChatClient();
        var opts = new ChatOptions { MaxOutputTokens = 10, Temperature = 0, StopSequences = ["\u0001"] };
        var r = await ai.GetResponseAsync("once upon a time", opts);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.Length, r.FinishReason);
        Assert.Equal(10, r.Usage!.OutputTokenCount);
        var sb = new StringBuilder();
        await foreach (var u in ai.GetStreamingResponseAsync("once upon a time", opts)) sb.Append(u.Text);
        Assert.Equal(r.Text, sb.ToString());

        // Seeded sampling repeats; another seed differs.
        var sampled = new ChatOptions { MaxOutputTokens = 16, Temperature = 1.5f, Seed = 77 };
        var a = await ai.GetResponseAsync("the quick brown fox", sampled);
        var b = await ai.GetResponseAsync("the quick brown fox", sampled);
        var c = await ai.GetResponseAsync("the quick brown fox", new ChatOptions { MaxOutputTokens = 16, Temperature = 1.5f, Seed = 78 });
        Assert.Equal(a.Text, b.Text);
        Assert.NotEqual(a.Text, c.Text);
    }

    [Fact]
    public async Task EmbeddingsOverHttpAndInProcessAgree()
    {
        var engine = f.Server.Engine!;
        var local = new CriaEmbeddingGenerator(engine, "cria-test");
        var expected = await local.GenerateAsync(["the quick brown fox", "hello world"]);
        Assert.Equal(2, expected.Count);
        Assert.Equal(64, expected[0].Vector.Length);
        Assert.NotEqual(expected[0].Vector.ToArray(), expected[1].Vector.ToArray());

        // The official client asks for base64; Microsoft.Extensions.AI over it, too.
        var client = f.OpenAi().GetEmbeddingClient("cria-test");
        var one = (await client.GenerateEmbeddingAsync("the quick brown fox")).Value;
        Assert.Equal(expected[0].Vector.ToArray(), one.ToFloats().ToArray());
        IEmbeddingGenerator<string, Embedding<float>> gen = client.AsIEmbeddingGenerator();
        var both = await gen.GenerateAsync(["the quick brown fox", "hello world"]);
        Assert.Equal(expected[1].Vector.ToArray(), both[1].Vector.ToArray());

        // Plain JSON floats round-trip exactly too.
        var (st, j) = await f.Post("/v1/embeddings", """{"input":["hello world"],"encoding_format":"float"}""");
        Assert.Equal(HttpStatusCode.OK, st);
        Assert.Equal(expected[1].Vector.ToArray(), j.GetProperty("data")[0].GetProperty("embedding").EnumerateArray().Select(e => e.GetSingle()).ToArray());
        Assert.Equal(engine.Tokenizer.Encode("hello world", engine.Tokenizer.AddBos).Length, j.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        var (bad, _) = await f.Post("/v1/embeddings", """{"input":[[]]}""");
        Assert.Equal(HttpStatusCode.BadRequest, bad);
    }

    [Fact]
    public async Task CompletionsWithLogprobsNAndStopStrings()
    {
        var (st, j) = await f.Post("/v1/completions", """{"model":"cria-test","prompt":"the little girl","max_tokens":6,"temperature":0,"logprobs":3,"n":2,"ignore_eos":true}""");
        Assert.Equal(HttpStatusCode.OK, st);
        Assert.Equal("text_completion", j.GetProperty("object").GetString());
        var ch = j.GetProperty("choices");
        Assert.Equal(2, ch.GetArrayLength());
        Assert.Equal(ch[0].GetProperty("text").GetString(), ch[1].GetProperty("text").GetString()); // greedy: n copies agree
        var lp = ch[0].GetProperty("logprobs");
        Assert.Equal(6, lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.Equal(3, lp.GetProperty("top_logprobs")[0].EnumerateObject().Count());
        // Greedy: the chosen token is the most likely one.
        float chosen = lp.GetProperty("token_logprobs")[0].GetSingle();
        Assert.Equal(lp.GetProperty("top_logprobs")[0].EnumerateObject().Max(p => p.Value.GetSingle()), chosen);
        Assert.Equal(12, j.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        string text = ch[0].GetProperty("text").GetString()!;
        Assert.True(text.Length >= 4, text);
        string stop = text.Substring(2, 2);
        var (_, s) = await f.Post("/v1/completions", $$"""{"prompt":"the little girl","max_tokens":6,"temperature":0,"stop":{{JsonSerializer.Serialize(stop)}},"ignore_eos":true}""");
        Assert.Equal(text[..text.IndexOf(stop, StringComparison.Ordinal)], s.GetProperty("choices")[0].GetProperty("text").GetString());
        Assert.Equal("stop", s.GetProperty("choices")[0].GetProperty("finish_reason").GetString());

        // Chat logprobs in the OpenAI shape.
        var (_, c) = await f.Post("/v1/chat/completions", """{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_completion_tokens":3,"logprobs":true,"top_logprobs":2}""");
        var content = c.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content");
        Assert.Equal(3, content.GetArrayLength());
        Assert.Equal(2, content[0].GetProperty("top_logprobs").GetArrayLength());
        Assert.True(content[0].GetProperty("logprob").GetSingle() <= 0);
    }

    [Fact]
    public async Task TokenizeDetokenizeModelsHealthMetrics()
    {
        var (st, t) = await f.Post("/tokenize", """{"content":"hello world"}""");
        Assert.Equal(HttpStatusCode.OK, st);
        var ids = t.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(1, ids[0]); // BOS
        var (_, d) = await f.Post("/detokenize", JsonSerializer.Serialize(new { tokens = ids }));
        Assert.Equal("hello world", d.GetProperty("content").GetString()!.Trim());

        var models = JsonDocument.Parse(await f.Http.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal("cria-test", models.GetProperty("data")[0].GetProperty("id").GetString());
        using var noKey = new HttpClient { BaseAddress = f.Server.BaseAddress };
        Assert.Equal(HttpStatusCode.OK, (await noKey.GetAsync("/health")).StatusCode); // /health needs no key

        await f.Post("/v1/completions", """{"prompt":"a b c","max_tokens":2}""");
        var metrics = await f.Http.GetStringAsync("/metrics");
        foreach (var name in new[] { "cria_num_requests_running", "cria_num_requests_waiting", "cria_kv_cache_usage_perc", "cria_prefix_cache_hits_total",
                     "cria_prompt_tokens_total", "cria_generation_tokens_total", "cria_time_to_first_token_seconds_bucket",
                     "cria_inter_token_latency_seconds_bucket", "cria_e2e_request_latency_seconds_bucket", "cria_request_success_total",
                     "cria_request_queue_time_seconds_bucket" })
            Assert.Contains(name + "{", metrics);
        var gen = metrics.Split('\n').First(l => l.StartsWith("cria_generation_tokens_total{", StringComparison.Ordinal));
        Assert.True(double.Parse(gen.Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture) >= 2);
    }

    [Theory]
    [InlineData("/v1/chat/completions", "{bad json", 400, null)]
    [InlineData("/v1/chat/completions", """{"messages":"hi"}""", 400, "messages")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}""", 400, "temperature")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":-5}""", 400, "max_tokens")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"n":1000}""", 400, "n")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"max_tokens":100000}""", 400, "max_tokens")]
    [InlineData("/v1/chat/completions", """{"messages":[{"role":"wizard","content":"hi"}]}""", 400, "messages")]
    [InlineData("/v1/completions", """{"prompt":[1,2,99999]}""", 400, "prompt")]
    [InlineData("/v1/completions", """{"prompt":"x","stop":7}""", 400, "stop")]
    [InlineData("/v1/completions", """{"prompt":"x","top_p":0}""", 400, "top_p")]
    [InlineData("/v1/completions", """{"max_tokens":3}""", 400, "prompt")]
    [InlineData("/v1/nothing", "{}", 404, null)]
    public async Task BadRequestsGetOpenAiErrors(string path, string body, int status, string? param)
    {
        var (st, j) = await f.Post(path, body);
        Assert.Equal(status, (int)st);
        var e = j.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(e.GetProperty("message").GetString()));
        Assert.False(string.IsNullOrEmpty(e.GetProperty("type").GetString()));
        if (param != null) Assert.Equal(param, e.GetProperty("param").GetString());
    }

    [Fact]
    public async Task PromptLongerThanTheContextAndBadKeysAreRefused()
    {
        var longPrompt = string.Join(' ', Enumerable.Repeat("hello world", 800));
        var (st, j) = await f.Post("/v1/completions", JsonSerializer.Serialize(new { prompt = longPrompt, max_tokens = 4 }));
        Assert.Equal(HttpStatusCode.BadRequest, st);
        Assert.Equal("context_length_exceeded", j.GetProperty("error").GetProperty("code").GetString());

        var bad = f.OpenAi("wrong-key").GetChatClient("cria-test");
        var ex = await Assert.ThrowsAsync<ClientResultException>(() => bad.CompleteChatAsync(Hello));
        Assert.Equal(401, ex.Status);
        using var noKey = new HttpClient { BaseAddress = f.Server.BaseAddress };
        Assert.Equal(HttpStatusCode.Unauthorized, (await noKey.GetAsync("/v1/models")).StatusCode);

        // An oversized body is refused from its Content-Length (with Expect: 100-continue the client never sends it).
        // The client waits up to 30 s for the server's answer before it sends the body: with the default 1 s, a busy
        // machine let it start sending, and the server's close after its 413 broke the pipe mid-body (seen once in CI).
        using var patient = new HttpClient(new SocketsHttpHandler { Expect100ContinueTimeout = TimeSpan.FromSeconds(30) })
            { BaseAddress = f.Server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        patient.DefaultRequestHeaders.Authorization = f.Http.DefaultRequestHeaders.Authorization;
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent("{\"prompt\":\"" + new string('a', 5 << 20) + "\"}") };
        req.Headers.ExpectContinue = true;
        using var big = await patient.SendAsync(req);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, big.StatusCode);
        Assert.Contains("larger than", await big.Content.ReadAsStringAsync());
    }
}

public class ServerLifecycleTests
{
    [Fact]
    public async Task HealthIs503WhileLoadingThen200()
    {
        var gate = new TaskCompletionSource();
        await using var server = await CriaServer.StartAsync(new ServerOptions { ModelPath = EngineTests.ModelPath(), Port = 0, Threads = 1, ContextSize = 256, LoadGate = gate.Task });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var r = await http.GetAsync("/health");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, r.StatusCode);
        Assert.Contains("loading", await r.Content.ReadAsStringAsync());
        var c = await http.PostAsync("/v1/completions", new StringContent("""{"prompt":"hi"}"""));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, c.StatusCode);
        Assert.True(c.Headers.RetryAfter != null);
        gate.SetResult();
        await server.Loaded;
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);
    }

    [Fact]
    public async Task AFullQueueAnswers429WithRetryAfter()
    {
        // The engine is held (StepGate) while five requests arrive: two wait, three are refused at once — whatever the
        // timing of the sends (the version that raced long prompts against the engine failed once on a busy machine).
        var gate = new TaskCompletionSource();
        await using var server = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, Threads = 1, ContextSize = 256,
            Engine = new EngineOptions { MaxWaiting = 2, StepGate = gate.Task },
        });
        await server.Loaded;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        const string body = "{\"prompt\":[3,4,5,6,7,8],\"max_tokens\":1}";
        var pending = Enumerable.Range(0, 5).Select(_ => http.PostAsync("/v1/completions", new StringContent(body))).ToList();
        var busy = new List<HttpResponseMessage>();
        while (busy.Count < 3)
        {
            var done = await Task.WhenAny(pending).WaitAsync(TimeSpan.FromSeconds(60));
            pending.Remove(done);
            var r = await done;
            Assert.Equal(HttpStatusCode.TooManyRequests, r.StatusCode);
            busy.Add(r);
        }
        gate.SetResult();
        foreach (var r in await Task.WhenAll(pending)) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.NotNull(busy[0].Headers.RetryAfter);
        Assert.Equal("rate_limit_error", JsonDocument.Parse(await busy[0].Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("type").GetString());
    }

    [Fact]
    public void ChatTemplatesAreRecognisedAndRendered()
    {
        const string llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
        const string llama2 = "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}{% endif %}{% endfor %}";
        const string mistral = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% endif %}{% endfor %}";
        const string chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        Assert.Equal(ChatTemplate.Format.Llama3, ChatTemplate.Detect(llama3));
        Assert.Equal(ChatTemplate.Format.Llama2, ChatTemplate.Detect(llama2));
        Assert.Equal(ChatTemplate.Format.Mistral, ChatTemplate.Detect(mistral));
        Assert.Equal(ChatTemplate.Format.ChatML, ChatTemplate.Detect(chatml));
        Assert.Equal(ChatTemplate.Format.ChatML, ChatTemplate.Detect(null));

        ChatTurn[] conv = [new("system", "Be brief."), new("user", "Hi"), new("assistant", "Hello!"), new("user", "Bye")];
        Assert.Equal("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>" +
                     "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>" +
                     "<|start_header_id|>assistant<|end_header_id|>\n\n", new ChatTemplate(ChatTemplate.Format.Llama3).Render(conv));
        Assert.Equal("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]", new ChatTemplate(ChatTemplate.Format.Llama2).Render(conv));
        Assert.Equal("[INST] Be brief.\n\nHi [/INST]Hello!</s>[INST] Bye [/INST]", new ChatTemplate(ChatTemplate.Format.Mistral).Render(conv));
        Assert.Equal("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
                     "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n", new ChatTemplate(ChatTemplate.Format.ChatML).Render(conv));
    }
}

/// <summary>A model file whose <c>tokenizer.chat_template</c> is a ChatML template (Qwen2's, which adds a default
/// system prompt that the built-in ChatML renderer does not): /v1/chat/completions and the in-process IChatClient
/// render that template; a conversation the template rejects is a 400 naming the template's message.</summary>
public class ServerChatTemplateTests
{
    const string Qwen2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    const string Mixtral = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    static string Model(string key, string template) => Cria.Tests.Oracle.LogitsAgreementTests.ModelFile(key, new Cria.Models.RandomModelSpec
    {
        Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 400, ContextLength = 1024, Seed = 7,
        ExtraMetadata = [("tokenizer.chat_template", template)],
    });

    static async Task<JsonElement> Post(HttpClient http, string path, string json)
    {
        using var r = await http.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        return JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.Clone();
    }

    [Fact]
    public async Task TheGgufChatMLTemplateIsWhatTheServerRenders()
    {
        await using var server = await CriaServer.StartAsync(new ServerOptions { ModelPath = Model("serving-qwen2-template", Qwen2), Port = 0, Threads = 1, ContextSize = 512 });
        await server.Loaded;
        Assert.NotNull(server.Template!.Jinja);
        Assert.Equal("the model's Jinja chat template", server.Template.Description);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };

        const string expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n";
        var builtin = new ChatTemplate(ChatTemplate.Format.ChatML).Render([new("user", "hello there")]);
        Assert.Equal(expected, server.Template.Render([new("user", "hello there")]));
        Assert.NotEqual(expected, builtin);

        // The prompt the engine received has exactly the tokens of the template's rendering.
        var tok = await Post(http, "/tokenize", JsonSerializer.Serialize(new { content = expected }));
        int expectedTokens = tok.GetProperty("count").GetInt32();
        var builtinTokens = (await Post(http, "/tokenize", JsonSerializer.Serialize(new { content = builtin }))).GetProperty("count").GetInt32();
        Assert.NotEqual(expectedTokens, builtinTokens);
        var chat = await Post(http, "/v1/chat/completions", """{"messages":[{"role":"user","content":"hello there"}],"max_tokens":1,"temperature":0}""");
        Assert.Equal(expectedTokens, chat.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        // The in-process IChatClient goes through the same template.
        var client = new CriaChatClient(server.Engine!, server.Template, "qwen2-test");
        var r = await client.GetResponseAsync([new AiChatMessage(ChatRole.User, "hello there")], new ChatOptions { MaxOutputTokens = 1, Temperature = 0 });
        Assert.Equal(expectedTokens, (int)r.Usage!.InputTokenCount!.Value);
    }

    [Fact]
    public async Task AConversationTheTemplateRejectsIsA400()
    {
        await using var server = await CriaServer.StartAsync(new ServerOptions { ModelPath = Model("serving-mixtral-template", Mixtral), Port = 0, Threads = 1, ContextSize = 256 });
        await server.Loaded;
        Assert.False(server.Template!.SupportsSystemRole);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var bad = await http.PostAsync("/v1/chat/completions", new StringContent("""{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}],"max_tokens":1}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("Conversation roles must alternate", await bad.Content.ReadAsStringAsync());
        // A system message is merged into the first user turn instead of being rejected.
        using var ok = await http.PostAsync("/v1/chat/completions", new StringContent("""{"messages":[{"role":"system","content":"s"},{"role":"user","content":"a"}],"max_tokens":1}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }
}
