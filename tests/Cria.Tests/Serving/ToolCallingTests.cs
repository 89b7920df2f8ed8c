using System.Net;
using System.Text.Json;
using Cria.Server;
using Cria.Serving;
using Cria.Tests.Tokenization;
using Cria.Tokenization;
using Microsoft.Extensions.AI;
using OpenAI.Chat;
using Xunit;
using Xunit.Abstractions;
using AiChatMessage = Microsoft.Extensions.AI.ChatMessage;

namespace Cria.Tests.Serving;

/// <summary>
/// Function calling: tools rendered by the model's template (Llama 3.1's own) or described in the system message
/// (generic), calls constrained to the tool's JSON schema when required, parsed back into OpenAI's tool_calls and
/// Microsoft.Extensions.AI's FunctionCallContent — over HTTP with the official OpenAI client and in process.
/// </summary>
public sealed class ToolCallingTests(ServerFixture f, ITestOutputHelper output) : IClassFixture<ServerFixture>
{
    const string WeatherSchema = """{"type":"object","properties":{"city":{"type":"string","maxLength":12},"unit":{"enum":["c","f"]}},"required":["city","unit"]}""";
    const string AddSchema = """{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}""";

    static readonly ToolDefinition[] Defs =
    [
        new("get_weather", "The weather in a city", JsonDocument.Parse(WeatherSchema).RootElement.Clone()),
        new("add", "Adds two integers", JsonDocument.Parse(AddSchema).RootElement.Clone()),
    ];

    static ChatTemplate Llama31 => ChatTemplateTests.Cases.Value.First(c => c.Key.StartsWith("Llama 3.1 instruct")).Value is var c
        ? ChatTemplate.FromJinja(c.Template, c.Bos, c.Eos) : null!;

    /// <summary>A short template of Llama 3's shape that reads tools (the real 3.1 template's long preamble does not fit
    /// the random serving model's context in its small vocabulary).</summary>
    static ChatTemplate Llama3Short => ChatTemplate.FromJinja(
        "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n{% for t in tools %}{{ t.function.name }} {% endfor %}<|eot_id|>{% endif %}" +
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}<|start_header_id|>assistant<|end_header_id|>\n\n", "", "");

    static string? Invalid(string json, ToolDefinition tool)
    {
        var schema = tool.Parameters!.Value;
        return JsonSchemaTests.Invalid(JsonDocument.Parse(json).RootElement, schema, schema);
    }

    [Fact]
    public void Each_template_gets_its_format()
    {
        Assert.Equal(ToolCalling.Format.Llama3Json, ToolCalling.FormatOf(Llama31));
        Assert.Equal(ToolCalling.Format.Hermes, ToolCalling.FormatOf(ChatTemplate.FromJinja(
            "{% if tools %}{% for t in tools %}{{ t | tojson }}{% endfor %}Use <tool_call></tool_call>.{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}", "", "")));
        Assert.Equal(ToolCalling.Format.Generic, ToolCalling.FormatOf(new ChatTemplate(ChatTemplate.Format.ChatML)));
        Assert.Equal(ToolCalling.Format.Generic, ToolCalling.FormatOf(ChatTemplate.FromJinja(ChatTemplateTests.Cases.Value.First(c => c.Key.StartsWith("ChatML")).Value.Template, "", "")));
    }

    /// <summary>Llama 3.1's own template renders the tools, an earlier call (arguments as a mapping: the template
    /// writes them with tojson) and its result (the ipython role), as transformers would.</summary>
    [Fact]
    public void Llama_3_1_renders_tools_calls_and_results()
    {
        ChatTurn[] turns =
        [
            new("user", "Weather in Paris?"),
            new("assistant", "") { ToolCalls = [new Cria.Tokenization.ChatToolCall("call_1", "get_weather", """{"city": "Paris", "unit": "c"}""")] },
            new("tool", "18 degrees") { ToolCallId = "call_1" },
        ];
        string text = ToolCalling.Render(Llama31, turns, Defs, ToolCalling.Format.Llama3Json);
        output.WriteLine(text);
        Assert.Contains("Given the following functions, please respond with a JSON for a function call", text);
        Assert.Contains("\"name\": \"get_weather\"", text);                 // tojson(indent=4) of the tool
        Assert.Contains("Weather in Paris?<|eot_id|>", text);
        Assert.Contains("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"c\"}}<|eot_id|>", text);
        // The template writes a result that "is iterable" with tojson, and in Jinja a string is iterable: quoted.
        Assert.Contains("<|start_header_id|>ipython<|end_header_id|>\n\n\"18 degrees\"<|eot_id|>", text);
        Assert.Contains("\"maxLength\": 12\n", text); // JSON integers stay integers
        Assert.EndsWith("<|start_header_id|>assistant<|end_header_id|>\n\n", text);
    }

    /// <summary>The generic format: the tools described in the system message, an earlier call and its result written
    /// as the JSON turns the model gives and reads (the result by its function's name, not the call's random id).</summary>
    [Fact]
    public void Generic_format_renders_tools_calls_and_results()
    {
        ChatTurn[] turns =
        [
            new("system", "Be brief."),
            new("user", "2 + 3?"),
            new("assistant", "") { ToolCalls = [new Cria.Tokenization.ChatToolCall("call_9f3", "add", """{"a": 2, "b": 3}""")] },
            new("tool", "5") { ToolCallId = "call_9f3" },
        ];
        string text = ToolCalling.Render(new ChatTemplate(ChatTemplate.Format.ChatML), turns, Defs, ToolCalling.Format.Generic);
        output.WriteLine(text);
        Assert.StartsWith("<|im_start|>system\nBe brief.\n\nYou can call these tools:\n{\"name\":\"get_weather\"", text);
        Assert.Contains("<|im_start|>assistant\n{\"tool_call\": {\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}}<|im_end|>", text);
        Assert.Contains("<|im_start|>tool\n{\"tool_response\": {\"name\": \"add\", \"content\": \"5\"}}<|im_end|>", text);
        Assert.DoesNotContain("call_9f3", text);
    }

    [Theory]
    [InlineData(ToolCalling.Format.Llama3Json, """ {"name": "add", "parameters": {"a": 1, "b": 2}} """, null, "add", """{"a": 1, "b": 2}""")]
    [InlineData(ToolCalling.Format.Llama3Json, """{"name": "nope", "parameters": {}}""", """{"name": "nope", "parameters": {}}""", null, null)]
    [InlineData(ToolCalling.Format.Llama3Json, "It is sunny.", "It is sunny.", null, null)]
    [InlineData(ToolCalling.Format.Hermes, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"c\"}}\n</tool_call>", "Let me check.", "get_weather", """{"city": "Oslo", "unit": "c"}""")]
    [InlineData(ToolCalling.Format.Generic, """{"tool_call": {"name": "add", "arguments": {"a": 5, "b": 7}}}""", null, "add", """{"a": 5, "b": 7}""")]
    [InlineData(ToolCalling.Format.Generic, """{"response": "Hello!"}""", "Hello!", null, null)]
    [InlineData(ToolCalling.Format.Generic, "not json", "not json", null, null)]
    public void Replies_parse_into_content_and_calls(ToolCalling.Format format, string text, string? content, string? name, string? args)
    {
        var (c, calls) = ToolCalling.Parse(text, Defs, format);
        Assert.Equal(content, c);
        if (name == null) { Assert.Empty(calls); return; }
        var call = Assert.Single(calls);
        Assert.Equal(name, call.Name);
        Assert.Equal(JsonSerializer.Serialize(JsonDocument.Parse(args!).RootElement), JsonSerializer.Serialize(JsonDocument.Parse(call.Arguments).RootElement));
        Assert.StartsWith("call_", call.Id);
    }

    /// <summary>tool_choice required or named, on the random serving model (which writes no JSON by itself), in each
    /// of the three formats: every reply parses into a call of an allowed tool whose arguments satisfy its schema.</summary>
    [Theory]
    [InlineData(ToolCalling.Format.Llama3Json, null)]
    [InlineData(ToolCalling.Format.Hermes, null)]
    [InlineData(ToolCalling.Format.Generic, null)]
    [InlineData(ToolCalling.Format.Llama3Json, "add")]
    [InlineData(ToolCalling.Format.Generic, "get_weather")]
    public async Task Required_calls_follow_the_schema(ToolCalling.Format format, string? named)
    {
        var choice = named == null ? new ToolChoice(ToolChoice.Kind.Required) : new ToolChoice(ToolChoice.Kind.Named, named);
        var grammar = ToolCalling.Constraint(Defs, choice, format)!;
        var e = f.Server.Engine!;
        var prompt = e.Tokenizer.Encode("call a tool:", true);
        int calls = 0;
        for (ulong seed = 1; seed <= 4; seed++)
        {
            var r = await EngineTests.Run(e, new GenerationRequest
            {
                Prompt = prompt, MaxTokens = 200, Grammar = grammar,
                Sampler = new Cria.Inference.SamplerOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0, Seed = seed },
            });
            output.WriteLine($"{r.Finish}: {r.Text}");
            if (r.Finish != "stop") continue;
            var (content, parsed) = ToolCalling.Parse(r.Text, Defs, format);
            var call = Assert.Single(parsed);
            if (named != null) Assert.Equal(named, call.Name);
            Assert.Null(Invalid(call.Arguments, Defs.First(d => d.Name == call.Name)));
            calls++;
        }
        Assert.True(calls >= 2, $"only {calls} of 4 replies finished a call within 200 tokens");
        Assert.Contains("not among the tools", Assert.Throws<GrammarException>(() => ToolCalling.Constraint(Defs, new ToolChoice(ToolChoice.Kind.Named, "missing"), format)).Message);
        Assert.Null(ToolCalling.Constraint(Defs, new ToolChoice(ToolChoice.Kind.None), format));
    }

    /// <summary>The official OpenAI client over HTTP: tools and tool_choice go out, tool_calls come back (streamed and
    /// not), arguments that satisfy the schema; then Microsoft.Extensions.AI over the same client runs one round of
    /// the loop — the call, its result sent back as a tool message, and a reply with tools turned off.</summary>
    [Fact]
    public async Task OpenAI_client_gets_tool_calls()
    {
        var client = f.OpenAi().GetChatClient("cria-test");
        var weather = ChatTool.CreateFunctionTool("get_weather", "The weather in a city", BinaryData.FromString(WeatherSchema));
        var add = ChatTool.CreateFunctionTool("add", "Adds two integers", BinaryData.FromString(AddSchema));
        var opts = new ChatCompletionOptions { Tools = { weather, add }, ToolChoice = ChatToolChoice.CreateFunctionChoice("get_weather"), MaxOutputTokenCount = 200, Temperature = 0.7f, Seed = 5 };
        var done = (await client.CompleteChatAsync([new UserChatMessage("Weather in Oslo?")], opts)).Value;
        output.WriteLine($"{done.FinishReason}: {string.Join(" ", done.ToolCalls.Select(c => c.FunctionName + c.FunctionArguments))}");
        if (done.FinishReason == OpenAI.Chat.ChatFinishReason.ToolCalls)
        {
            var call = Assert.Single(done.ToolCalls);
            Assert.Equal("get_weather", call.FunctionName);
            Assert.Null(Invalid(call.FunctionArguments.ToString(), Defs[0]));
            Assert.StartsWith("call_", call.Id);
        }
        else Assert.Equal(OpenAI.Chat.ChatFinishReason.Length, done.FinishReason);

        var streamedCalls = new List<StreamingChatToolCallUpdate>();
        OpenAI.Chat.ChatFinishReason? finish = null;
        await foreach (var u in client.CompleteChatStreamingAsync([new UserChatMessage("Weather in Oslo?")], opts))
        {
            streamedCalls.AddRange(u.ToolCallUpdates);
            finish ??= u.FinishReason;
        }
        Assert.Equal(done.FinishReason, finish);
        if (finish == OpenAI.Chat.ChatFinishReason.ToolCalls)
        {
            var update = Assert.Single(streamedCalls);
            Assert.Equal("get_weather", update.FunctionName);
            Assert.Null(Invalid(update.FunctionArgumentsUpdate.ToString(), Defs[0]));
        }

        // Microsoft.Extensions.AI over HTTP: a real function, one round of the loop by hand.
        IChatClient ai = f.OpenAi().GetChatClient("cria-test").AsIChatClient();
        var fn = AIFunctionFactory.Create((long a, long b) => a + b, "add", "Adds two integers"); // the schema allows 16-digit integers
        var history = new List<AiChatMessage> { new(ChatRole.User, "What is 2 + 3?") };
        ChatResponse first = null!;
        FunctionCallContent? fc = null;
        for (int seed = 1; seed <= 6 && fc == null; seed++) // the random model may run out of tokens inside the call
        {
            first = await ai.GetResponseAsync(history, new ChatOptions { Tools = [fn], ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 300, Temperature = 0.5f, Seed = seed });
            fc = first.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().FirstOrDefault();
            output.WriteLine($"{first.FinishReason}: {fc?.Name}({string.Join(", ", fc?.Arguments?.Select(kv => $"{kv.Key}={kv.Value}") ?? [])})");
        }
        Assert.NotNull(fc);
        Assert.Equal(Microsoft.Extensions.AI.ChatFinishReason.ToolCalls, first.FinishReason);
        Assert.Equal("add", fc.Name);
        var result = await fn.InvokeAsync(new AIFunctionArguments(fc.Arguments));
        history.AddRange(first.Messages);
        history.Add(new AiChatMessage(ChatRole.Tool, [new FunctionResultContent(fc.CallId, result)]));
        var second = await ai.GetResponseAsync(history, new ChatOptions { Tools = [fn], ToolMode = ChatToolMode.None, MaxOutputTokens = 8, Temperature = 0 });
        Assert.Empty(second.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
        Assert.NotNull(second.FinishReason); // a reply (its text may be empty: the random model may end at once)
        Assert.InRange(second.Usage!.OutputTokenCount ?? 0, 1, 8);
    }

    /// <summary>In process: CriaChatClient with a Llama 3 template and a required function returns
    /// FunctionCallContent whose arguments satisfy the schema.</summary>
    [Fact]
    public async Task IChatClient_in_process_returns_function_calls()
    {
        var client = new CriaChatClient(f.Server.Engine!, Llama3Short, "cria-test");
        Assert.Equal(ToolCalling.Format.Llama3Json, ToolCalling.FormatOf(client.Template));
        var decl = AIFunctionFactory.CreateDeclaration("get_weather", "The weather in a city", JsonDocument.Parse(WeatherSchema).RootElement);
        int calls = 0;
        for (int seed = 1; seed <= 3; seed++)
        {
            var r = await client.GetResponseAsync([new AiChatMessage(ChatRole.User, "Weather in Rome?")],
                new ChatOptions { Tools = [decl], ToolMode = ChatToolMode.RequireSpecific("get_weather"), MaxOutputTokens = 200, Temperature = 1, Seed = seed });
            if (r.FinishReason != Microsoft.Extensions.AI.ChatFinishReason.ToolCalls) continue;
            var fc = Assert.Single(r.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
            Assert.Equal("get_weather", fc.Name);
            Assert.Null(Invalid(JsonSerializer.Serialize(fc.Arguments), Defs[0]));
            calls++;
            // The call and its result go back in: a tool turn, then a plain reply with tools off.
            List<AiChatMessage> history = [new(ChatRole.User, "Weather in Rome?"), .. r.Messages, new(ChatRole.Tool, [new FunctionResultContent(fc.CallId, "sunny, 24")])];
            var turns = CriaChatClient.Turns(history);
            Assert.Equal(["user", "assistant", "tool"], turns.Select(t => t.Role));
            Assert.Equal(fc.CallId, Assert.Single(turns[1].ToolCalls!).Id);
            Assert.Equal(("sunny, 24", fc.CallId), (turns[2].Content, turns[2].ToolCallId));
            var next = await client.GetResponseAsync(history, new ChatOptions { Tools = [decl], ToolMode = ChatToolMode.None, MaxOutputTokens = 6, Temperature = 0 });
            Assert.Empty(next.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
            Assert.InRange(next.Usage!.OutputTokenCount ?? 0, 1, 6);
        }
        Assert.True(calls >= 2, $"only {calls} of 3 replies finished a call");
    }

    /// <summary>Streaming a reply that may be a call: content that cannot belong to one goes out at once, the rest is
    /// held and parsed at the end; what comes out equals the parse of the whole reply.</summary>
    [Theory]
    [InlineData(ToolCalling.Format.Llama3Json, new[] { "  ", "Hello", " world" }, new[] { "", "  Hello", " world" }, null, null)]
    [InlineData(ToolCalling.Format.Llama3Json, new[] { " {\"name\": \"add\",", " \"parameters\": {\"a\": 1, \"b\": 2}}" }, new[] { "", "" }, null, "add")]
    [InlineData(ToolCalling.Format.Llama3Json, new[] { "{not", " a call}" }, new[] { "", "" }, "{not a call}", null)]
    [InlineData(ToolCalling.Format.Hermes, new[] { "Let me <tool", "_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>" }, new[] { "Let me ", "" }, null, "add")]
    [InlineData(ToolCalling.Format.Hermes, new[] { "a <", " b", "<tool_" }, new[] { "a ", "< b", "" }, "<tool_", null)]
    [InlineData(ToolCalling.Format.Generic, new[] { "{\"response\": ", "\"hi\"}" }, new[] { "", "" }, "hi", null)]
    public void Streamed_replies_release_content_early(ToolCalling.Format format, string[] chunks, string[] released, string? rest, string? call)
    {
        var stream = new ToolReplyStream(Defs, format);
        Assert.Equal(released, chunks.Select(stream.Add).ToArray());
        var (content, calls) = stream.Finish();
        Assert.Equal(rest, content);
        Assert.Equal(call, calls.SingleOrDefault()?.Name);
        // the same as parsing the whole reply
        var (whole, wholeCalls) = ToolCalling.Parse(string.Concat(chunks), Defs, format);
        Assert.Equal(whole?.Trim() ?? "", (string.Concat(released) + content).Trim());
        Assert.Equal(wholeCalls.Select(c => c.Name + c.Arguments), calls.Select(c => c.Name + c.Arguments));
    }

    /// <summary>In process, tool_choice auto with a Llama 3 template: a reply that is not a call streams as content,
    /// in many updates, with the text the non-streaming reply has.</summary>
    [Fact]
    public async Task Auto_replies_stream_as_content()
    {
        var client = new CriaChatClient(f.Server.Engine!, Llama3Short, "cria-test");
        var decl = AIFunctionDeclarationOf("get_weather", WeatherSchema);
        var opts = new ChatOptions { Tools = [decl], ToolMode = ChatToolMode.Auto, MaxOutputTokens = 12, Temperature = 0 };
        var whole = await client.GetResponseAsync([new AiChatMessage(ChatRole.User, "hello")], opts);
        Assert.DoesNotContain('{', whole.Text.TrimStart()[..1]); // greedy on the random model: not a call
        var text = new System.Text.StringBuilder();
        int updates = 0;
        await foreach (var u in client.GetStreamingResponseAsync([new AiChatMessage(ChatRole.User, "hello")], opts))
        {
            if (u.Text.Length > 0) updates++;
            text.Append(u.Text);
        }
        Assert.Equal(whole.Text, text.ToString());
        Assert.True(updates >= 3, $"{updates} updates with text");
    }

    static AIFunctionDeclaration AIFunctionDeclarationOf(string name, string schema) =>
        AIFunctionFactory.CreateDeclaration(name, null, JsonDocument.Parse(schema).RootElement);

    [Theory]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"bad name"}}]}""", "tools")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"code"}]}""", "tools")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"a"}}]}""", "tools")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a","parameters":{"type":"string","pattern":"\\bx"}}}]}""", "tools")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a"}}],"tool_choice":{"type":"function","function":{"name":"b"}}}""", "tool_choice")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tool_choice":"required"}""", "tool_choice")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a"}}],"tool_choice":"sometimes"}""", "tool_choice")]
    [InlineData("""{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function","function":{"name":"a"}}],"response_format":{"type":"json_object"}}""", "tools")]
    [InlineData("""{"messages":[{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"a","arguments":"{oops"}}]}]}""", "messages")]
    public async Task Bad_tools_get_OpenAI_errors(string body, string param)
    {
        var (st, j) = await f.Post("/v1/chat/completions", body);
        Assert.Equal(HttpStatusCode.BadRequest, st);
        Assert.Equal(param, j.GetProperty("error").GetProperty("param").GetString());
    }
}
