using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Serving;

/// <summary>
/// Structured outputs (response_format json_schema): the schema's grammar accepts its documents and refuses the rest,
/// unsupported keywords are refused by name, and constrained generation — in the engine, through the server and
/// through IChatClient — writes only documents that an independent validator (below, written from the JSON Schema
/// specification, sharing nothing with the converter) finds valid. As in llama.cpp, a document may be followed by a
/// little whitespace (every value's rule ends with <c>space</c>), so a whole document is "end", not "complete".
/// </summary>
public sealed class JsonSchemaTests(ITestOutputHelper output)
{
    internal const string Person = """
        {
          "type": "object",
          "properties": {
            "name": { "type": "string", "minLength": 1, "maxLength": 8 },
            "age": { "type": "integer" },
            "tags": { "type": "array", "items": { "enum": ["a", "b", "ü"] }, "maxItems": 2 },
            "ok": { "type": ["boolean", "null"] },
            "score": { "type": "number" },
            "kind": { "const": "person" },
            "next": { "anyOf": [ { "$ref": "#/$defs/node" }, { "type": "null" } ] }
          },
          "required": ["name", "age", "kind"],
          "$defs": {
            "node": { "type": "object", "properties": { "v": { "type": "integer" }, "next": { "anyOf": [ { "$ref": "#/$defs/node" }, { "type": "null" } ] } }, "required": ["v", "next"] }
          }
        }
        """;

    static JsonElement Parse(string json) => JsonDocument.Parse(json).RootElement.Clone();

    /// <summary>Validates <paramref name="doc"/> against the keywords the tests use, or says why not.</summary>
    internal static string? Invalid(JsonElement doc, JsonElement schema, JsonElement root, string path = "$")
    {
        if (schema.TryGetProperty("$ref", out var r))
            return Invalid(doc, root.GetProperty("$defs").GetProperty(r.GetString()!.Split('/')[^1]), root, path);
        if (schema.TryGetProperty("anyOf", out var any))
            return any.EnumerateArray().Any(s => Invalid(doc, s, root, path) == null) ? null : $"{path}: matches no anyOf branch";
        if (schema.TryGetProperty("const", out var c))
            return JsonElement.DeepEquals(doc, c) ? null : $"{path}: not the const";
        if (schema.TryGetProperty("enum", out var e))
            return e.EnumerateArray().Any(x => JsonElement.DeepEquals(doc, x)) ? null : $"{path}: not in the enum";
        if (schema.TryGetProperty("type", out var t))
        {
            var types = t.ValueKind == JsonValueKind.Array ? t.EnumerateArray().Select(x => x.GetString()!).ToArray() : [t.GetString()!];
            bool typed = types.Any(ty => ty switch
            {
                "object" => doc.ValueKind == JsonValueKind.Object,
                "array" => doc.ValueKind == JsonValueKind.Array,
                "string" => doc.ValueKind == JsonValueKind.String,
                "number" => doc.ValueKind == JsonValueKind.Number,
                "integer" => doc.ValueKind == JsonValueKind.Number && !doc.GetRawText().Contains('.') && !doc.GetRawText().Contains('e', StringComparison.OrdinalIgnoreCase),
                "boolean" => doc.ValueKind is JsonValueKind.True or JsonValueKind.False,
                "null" => doc.ValueKind == JsonValueKind.Null,
                _ => false,
            });
            if (!typed) return $"{path}: not of type {string.Join("|", types)}";
        }
        if (doc.ValueKind == JsonValueKind.Number)
        {
            double x = doc.GetDouble();
            if (schema.TryGetProperty("minimum", out var mn) && x < mn.GetDouble()) return $"{path}: below minimum";
            if (schema.TryGetProperty("maximum", out var mx) && x > mx.GetDouble()) return $"{path}: above maximum";
            if (schema.TryGetProperty("exclusiveMinimum", out var emn) && x <= emn.GetDouble()) return $"{path}: not above exclusiveMinimum";
            if (schema.TryGetProperty("exclusiveMaximum", out var emx) && x >= emx.GetDouble()) return $"{path}: not below exclusiveMaximum";
        }
        if (doc.ValueKind == JsonValueKind.String)
        {
            int n = doc.GetString()!.EnumerateRunes().Count();
            if (schema.TryGetProperty("minLength", out var min) && n < min.GetInt32()) return $"{path}: shorter than minLength";
            if (schema.TryGetProperty("maxLength", out var max) && n > max.GetInt32()) return $"{path}: longer than maxLength";
        }
        if (doc.ValueKind == JsonValueKind.Array)
        {
            int n = doc.GetArrayLength();
            if (schema.TryGetProperty("minItems", out var min) && n < min.GetInt32()) return $"{path}: fewer than minItems";
            if (schema.TryGetProperty("maxItems", out var max) && n > max.GetInt32()) return $"{path}: more than maxItems";
            if (schema.TryGetProperty("items", out var items))
                foreach (var (x, i) in doc.EnumerateArray().Select((x, i) => (x, i)))
                    if (Invalid(x, items, root, $"{path}[{i}]") is { } why) return why;
        }
        if (doc.ValueKind == JsonValueKind.Object && schema.TryGetProperty("properties", out var props))
        {
            var names = doc.EnumerateObject().Select(p => p.Name).ToList();
            if (names.Distinct().Count() != names.Count) return $"{path}: a property twice";
            foreach (var req in schema.TryGetProperty("required", out var rq) ? rq.EnumerateArray().Select(x => x.GetString()!) : [])
                if (!names.Contains(req)) return $"{path}: '{req}' is missing";
            foreach (var p in doc.EnumerateObject())
            {
                if (!props.TryGetProperty(p.Name, out var ps)) return $"{path}: '{p.Name}' is not a property of the schema";
                if (Invalid(p.Value, ps, root, $"{path}.{p.Name}") is { } why) return why;
            }
        }
        return null;
    }

    static string Judge(Grammar g, string text)
    {
        var s = g.Start();
        if (!s.Accept(Encoding.UTF8.GetBytes(text))) return "reject";
        return s.IsComplete ? "complete" : s.CanEnd ? "end" : "prefix";
    }

    [Theory]
    [InlineData("""{"name":"Al","age":3,"kind":"person"}""", "end")]
    [InlineData("{ \"name\": \"Zoë\", \"age\": -30,\n   \"tags\": [\"ü\",\"a\"], \"ok\": null, \"score\": 1.5e-3, \"kind\": \"person\",\n   \"next\": {\"v\": 1, \"next\": {\"v\": 22, \"next\": null}} }", "end")]
    [InlineData("""{"name":"Al","age":3,"ok":true,"kind":"person"}""", "end")]
    [InlineData("""{"name":"Al","age":3,"kind":"pers""", "prefix")]
    [InlineData("""{"name":"Al","kind":"person"}""", "reject")]               // age is required
    [InlineData("""{"name":"","age":3,"kind":"person"}""", "reject")]         // minLength 1
    [InlineData("""{"name":"abcdefghi","age":3,"kind":"person"}""", "reject")] // maxLength 8
    [InlineData("""{"name":"Al","age":3.5,"kind":"person"}""", "reject")]     // an integer
    [InlineData("""{"name":"Al","age":3,"tags":["a","b","a"],"kind":"person"}""", "reject")] // maxItems 2
    [InlineData("""{"name":"Al","age":3,"tags":["c"],"kind":"person"}""", "reject")]         // not in the enum
    [InlineData("""{"name":"Al","age":3,"kind":"robot"}""", "reject")]        // const
    [InlineData("""{"name":"Al","age":3,"kind":"person","extra":1}""", "reject")] // no additional properties
    [InlineData("""{"name":"Al","age":03,"kind":"person"}""", "reject")]      // JSON numbers have no leading zeros
    [InlineData("""{"name":"Al","age":3,"kind":"person","next":{"v":1}}""", "reject")] // node.next is required
    [InlineData("""{"name":"A\u00e9\n","age":3,"kind":"person"}""", "end")]        // escapes in strings
    public void Documents_of_the_schema_are_accepted_and_others_refused(string json, string expected)
    {
        var schema = Parse(Person);
        var g = JsonSchemaGrammar.Compile(schema);
        Assert.Equal(expected, Judge(g, json));
        if (expected == "end") Assert.Null(Invalid(Parse(json), schema, schema)); // the validator agrees
        if (expected == "reject" && IsJson(json)) Assert.NotNull(Invalid(Parse(json), schema, schema));
    }

    static bool IsJson(string s)
    {
        try { JsonDocument.Parse(s); return true; } catch (JsonException) { return false; }
    }

    [Theory]
    [InlineData("""{"type":"object"}""", """{"any":[1,{"x":null}]}""", "end")]
    [InlineData("""{"type":"object","additionalProperties":{"type":"integer"},"properties":{"a":{"type":"string"}}}""", """{"a":"x","b":1,"c":2}""", "end")]
    [InlineData("""{"type":"object","additionalProperties":{"type":"integer"},"properties":{"a":{"type":"string"}}}""", """{"a":"x","b":"y"}""", "reject")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"items":false}""", """[1, "a"]""", "end")]
    [InlineData("""{"type":"array","prefixItems":[{"type":"integer"},{"type":"string"}],"items":false}""", """[1, 2]""", "reject")]
    [InlineData("""{"type":"array","items":{"type":"integer"},"minItems":2}""", """[1, """, "prefix")]
    [InlineData("""{"type":"array","items":{"type":"integer"},"minItems":2}""", """[1]""", "reject")]
    [InlineData("""{"type":"array","items":{"type":"integer"},"minItems":2}""", """[1,2,3]""", "end")]
    [InlineData("""{"enum":["x", 1, null, {"k":[true]}]}""", """{"k":[true]}""", "end")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}}}""", """{"b":1,"c":2}""", "end")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}}}""", """{}""", "end")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}}}""", """{,"b":1}""", "reject")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}}}""", """{"a":1,}""", "reject")]
    [InlineData("true", "[\"anything\", 2]", "end")]
    [InlineData("""{"type":"string","format":"date"}""", "\"2024-02-29\"", "end")]
    [InlineData("""{"type":"string","format":"date"}""", "\"2024-13-01\"", "reject")]
    [InlineData("""{"type":"string","format":"date-time"}""", "\"2024-02-29T23:59:07.123Z\"", "end")]
    [InlineData("""{"type":"string","format":"date-time"}""", "\"2024-02-29 23:59:07Z\"", "reject")]
    [InlineData("""{"type":"string","format":"time"}""", "\"08:30:00+02:00\"", "end")]
    [InlineData("""{"type":"string","format":"time"}""", "\"24:00:00Z\"", "reject")]
    [InlineData("""{"type":"string","format":"uuid"}""", "\"123e4567-e89b-12d3-a456-426614174000\"", "end")]
    [InlineData("""{"type":"string","format":"uuid"}""", "\"123e4567e89b\"", "reject")]
    [InlineData("""{"type":"string","format":"email"}""", "\"not checked\"", "end")]
    public void Other_schemas(string schema, string json, string expected) =>
        Assert.Equal(expected, Judge(JsonSchemaGrammar.Compile(Parse(schema)), json));

    public static TheoryData<string> IntegerRanges() =>
    [
        """{"minimum":0}""", """{"minimum":1,"maximum":12}""", """{"minimum":-40,"maximum":-3}""", """{"minimum":-275,"maximum":1089}""",
        """{"maximum":-17}""", """{"maximum":250}""", """{"exclusiveMinimum":9.5,"exclusiveMaximum":1000}""", """{"exclusiveMinimum":-3,"exclusiveMaximum":4}""",
        """{"minimum":100,"maximum":100}""", """{"minimum":23,"maximum":57}""", """{"minimum":1999,"maximum":20001}""",
        """{"minimum":0,"maximum":0}""", """{"minimum":-999999999999999,"maximum":999999999999999}""", """{"minimum":3.2,"maximum":8.9}""",
    ];

    /// <summary>
    /// Integer bounds (minimum, maximum, exclusive ones) as a grammar of digit ranges: for numbers around every bound,
    /// zero, and random ones, the grammar accepts a number exactly when the independent validator does; leading zeros
    /// and "-0" are refused (JSON has no leading zeros; 0 is written "0").
    /// </summary>
    [Theory]
    [MemberData(nameof(IntegerRanges))]
    public void Integer_bounds_accept_exactly_the_integers_in_range(string bounds)
    {
        var schema = Parse(bounds.Insert(1, "\"type\":\"integer\","));
        var g = JsonSchemaGrammar.Compile(schema);
        var b = Parse(bounds);
        var edges = new List<long> { 0, 1, -1, 9, 10, 99, 100, -100, 999_999_999_999_999, -999_999_999_999_999 };
        foreach (var k in new[] { "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum" })
            if (b.TryGetProperty(k, out var v))
            {
                long x = (long)Math.Floor(v.GetDouble());
                for (long d = -11; d <= 11; d++) edges.Add(x + d);
                edges.Add(x * 10); edges.Add(x / 10); edges.Add(-x);
            }
        var r = new Random(bounds.Length);
        for (int i = 0; i < 300; i++) edges.Add((long)((r.NextDouble() - 0.5) * Math.Pow(10, r.Next(1, 8))));
        int accepted = 0;
        foreach (long n in edges.Distinct())
        {
            string text = n.ToString(CultureInfo.InvariantCulture);
            bool valid = Invalid(Parse(text), schema, schema) == null;
            string verdict = Judge(g, text);
            Assert.True(valid == verdict is "end" or "complete", $"{bounds}: {text} is {(valid ? "valid" : "invalid")} but the grammar says {verdict}");
            if (valid) accepted++;
        }
        Assert.True(accepted > 0);
        foreach (var bad in new[] { "-0", "007", "+5", "1.0" }) Assert.NotEqual("end", Judge(g, bad));
    }

    public static TheoryData<string, string> Patterns() => new()
    {
        { "^[a-z]+$", "abc" }, { "^\\d{3}-\\d{4}$", "555-0199" }, { "^(foo|bar)+baz?$", "barfooba" },
        { "^[A-Z][a-z]*( [A-Z][a-z]*)*$", "Ab Cd" }, { "ab+c", "xxabbbcyy" }, { "^a.c$", "a-c" }, { "^[^0-9]{2,3}$", "ab!" },
        { "^\\w+@\\w+\\.(com|org)$", "a_1@b2.org" }, { "x$", "abx" }, { "^(?:ab|cd){2}$", "abcd" }, { "^\\D\\S\\W$", "a1-" },
        { "^a\\.b?$", "a." }, { "^[a-c-]{0,4}z?$", "-a-z" }, { "^\\$[0-9]+(\\.[0-9]{2})?$", "$12.50" }, { "", "anything" },
    };

    /// <summary>
    /// A string's pattern as a grammar: for strings drawn from the pattern's own characters and others, the grammar
    /// accepts the JSON string exactly when .NET's ECMAScript regex engine matches the text (an independent oracle);
    /// every pattern has a matching example among them.
    /// </summary>
    [Theory]
    [MemberData(nameof(Patterns))]
    public void Patterns_accept_exactly_the_strings_the_regex_matches(string pattern, string example)
    {
        var schema = Parse(JsonSerializer.Serialize(new { type = "string", pattern }));
        var g = JsonSchemaGrammar.Compile(schema);
        var re = new System.Text.RegularExpressions.Regex(pattern, System.Text.RegularExpressions.RegexOptions.ECMAScript);
        string alphabet = new string(pattern.Where(c => c is not ('"' or '\\') && c >= ' ').Distinct().ToArray()) + "abxz09-_. !$A";
        var r = new Random(pattern.Length + 1);
        var texts = new List<string> { example, "" };
        for (int i = 0; i < 3000; i++)
            texts.Add(new string(Enumerable.Range(0, r.Next(0, 11)).Select(_ => alphabet[r.Next(alphabet.Length)]).ToArray()));
        int matched = 0;
        foreach (var text in texts.Distinct())
        {
            bool expected = re.IsMatch(text);
            string verdict = Judge(g, "\"" + text + "\"");
            Assert.True(expected == verdict is "end" or "complete", $"/{pattern}/ on \"{text}\": the regex says {expected}, the grammar {verdict}");
            if (expected) matched++;
        }
        Assert.True(re.IsMatch(example) && matched > 0);
    }

    [Fact]
    public void Pattern_text_is_written_as_json()
    {
        // a quote in the pattern is written escaped; \s may be written as a JSON escape; '.' never writes a quote
        var q = JsonSchemaGrammar.Compile(Parse("""{"type":"string","pattern":"^say \"hi\"$"}"""));
        Assert.Equal("end", Judge(q, "\"say \\\"hi\\\"\""));   // "say \"hi\""
        Assert.Equal("reject", Judge(q, "\"say \"hi\"\""));          // "say "hi""
        var w = JsonSchemaGrammar.Compile(Parse("""{"type":"string","pattern":"^a\\sb$"}"""));
        Assert.Equal("end", Judge(w, "\"a\\tb\""));                  // "a\tb"
        Assert.Equal("end", Judge(w, "\"a b\""));
        var dot = JsonSchemaGrammar.Compile(Parse("""{"type":"string","pattern":"^.$"}"""));
        Assert.Equal("reject", Judge(dot, "\"\"\""));                // """ — '.' never writes a raw quote
        Assert.Equal("end", Judge(dot, "\"é\""));
        var neg = JsonSchemaGrammar.Compile(Parse("""{"type":"string","pattern":"^[^a]$"}"""));
        Assert.Equal("reject", Judge(neg, "\"\"\""));                // a negated class never writes a raw quote,
        Assert.Equal("reject", Judge(neg, "\"\\\\\""));             // nor a lone backslash
        Assert.Equal("end", Judge(neg, "\"b\""));
        var emoji = JsonSchemaGrammar.Compile(Parse(JsonSerializer.Serialize(new { type = "string", pattern = "^é😀+$" })));
        Assert.Equal("end", Judge(emoji, "\"é😀😀\""));
        Assert.Equal("reject", Judge(emoji, "\"é\""));
    }

    [Theory]
    [InlineData("(?=a)b", "lookaround")]
    [InlineData("(a)\\1", "backreference")]
    [InlineData("\\bfoo", "word boundary")]
    [InlineData("a*?", "lazy")]
    [InlineData("[\"]", "quote, backslash or control")]
    [InlineData("[\\s]", "inside a class")]
    [InlineData("a{2,1}", "repetition")]
    [InlineData("a{99999999999}", "repetition")]
    [InlineData("a{1,99999999999}", "repetition")]
    [InlineData("^a^", "anchor")]
    [InlineData("(a", "unclosed group")]
    [InlineData("a)", "unmatched")]
    [InlineData("\\p{L}", "escape")]
    [InlineData("*a", "nothing to repeat")]
    public void Unsupported_patterns_are_refused_by_name(string pattern, string message)
    {
        var e = Assert.Throws<GrammarException>(() => JsonSchemaGrammar.Compile(Parse(JsonSerializer.Serialize(new { type = "string", pattern }))));
        Assert.Contains(message, e.Message);
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a+$","maxLength":3}""", "'pattern' with minLength/maxLength")]
    [InlineData("""{"type":"number","minimum":0}""", "'minimum' is supported with type integer only")]
    [InlineData("""{"type":["integer","number"],"maximum":0}""", "'maximum' is supported on integers only")]
    [InlineData("""{"minimum":0}""", "'minimum' is supported with type integer only")]
    [InlineData("""{"type":"integer","minimum":5,"exclusiveMaximum":5}""", "no integer lies in [5, 4]")]
    [InlineData("""{"type":"integer","maximum":1e16}""", "'maximum' must be within")]
    [InlineData("""{"type":"integer","maximum":"7"}""", "'maximum' must be a number")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"string","format":"email","uniqueItems":true}}}""", "at #/properties/a: 'uniqueItems' is not supported")]
    [InlineData("""{"$ref":"#/$defs/missing"}""", "names no definition")]
    [InlineData("""{"$ref":"other.json#/x"}""", "is not supported")]
    [InlineData("""{"type":"thing"}""", "unknown type 'thing'")]
    [InlineData("""{"type":"object","properties":{"a":{}},"required":["b"]}""", "required property 'b'")]
    [InlineData("""{"type":"array","minItems":3,"maxItems":2}""", "maxItems < minItems")]
    [InlineData("""{"type":"string","maxLength":-1}""", "'maxLength' must be an integer")]
    [InlineData("false", "admits no value")]
    [InlineData("3", "must be an object or a boolean")]
    public void Unsupported_schemas_are_refused_by_name(string schema, string message) =>
        Assert.Contains(message, Assert.Throws<GrammarException>(() => JsonSchemaGrammar.Compile(Parse(schema))).Message);

    /// <summary>The engine with a schema: greedy and sampled runs on the random serving model (which writes no JSON on
    /// its own) write only prefixes of the schema's documents, and every run that stops is a valid document.</summary>
    [Fact]
    public async Task Constrained_generation_writes_valid_documents()
    {
        var schema = Parse(Person);
        var grammar = JsonSchemaGrammar.Compile(schema);
        using var m = LlamaModel.Open(EngineTests.ModelPath());
        using var c = new InferenceContext(m, new ContextOptions { ContextSize = 2048, Threads = 2 });
        using var e = new Engine(c, m.Tokenizer, new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 64 } });
        var prompt = m.Tokenizer.Encode("a person:", true);
        var runs = await JsonObjectTests.Runs(e, new GenerationRequest { Prompt = prompt, MaxTokens = 300, Grammar = grammar }, 8);
        int stopped = 0;
        foreach (var r in runs)
        {
            output.WriteLine($"{r.Finish}, {r.Tokens.Length} tokens: {r.Text}");
            Assert.NotEqual("reject", Judge(grammar, r.Text));
            if (r.Finish != "stop") { Assert.Equal(300, r.Tokens.Length); continue; }
            stopped++;
            Assert.Null(Invalid(Parse(r.Text), schema, schema));
        }
        Assert.True(stopped >= 4, $"only {stopped} of 8 runs finished a document");
        // Without the grammar the random model writes no JSON.
        var free = await EngineTests.Run(e, new GenerationRequest { Prompt = prompt, MaxTokens = 40, Sampler = SamplerOptions.Greedy });
        Assert.Equal("reject", Judge(grammar, free.Text));
        // A GBNF grammar that may end early: end-of-generation is allowed once a sentence is complete.
        var digits = Grammar.Parse("root ::= [0-9]+");
        var d = await EngineTests.Run(e, new GenerationRequest { Prompt = prompt, MaxTokens = 30, Grammar = digits, Sampler = SamplerOptions.Greedy });
        Assert.Matches("^[0-9]+$", d.Text);
        Assert.Throws<InvalidRequestException>(() => e.Submit(new GenerationRequest { Prompt = prompt, Grammar = digits, JsonObject = true }));
    }
}

/// <summary>The server's structured outputs: response_format json_schema on chat completions, llama.cpp's grammar and
/// json_schema fields on completions, IChatClient's ChatResponseFormat.ForJsonSchema, and bad schemas as OpenAI errors.</summary>
public sealed class JsonSchemaServerTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    [Fact]
    public async Task Chat_completions_follow_the_schema()
    {
        var schema = JsonDocument.Parse(JsonSchemaTests.Person).RootElement;
        string body = JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = "describe a person" } }, max_tokens = 300, temperature = 0.8, seed = 3,
            response_format = new { type = "json_schema", json_schema = new { name = "person", strict = true, schema } },
        });
        var (st, j) = await f.Post("/v1/chat/completions", body);
        Assert.Equal(HttpStatusCode.OK, st);
        var choice = j.GetProperty("choices")[0];
        string content = choice.GetProperty("message").GetProperty("content").GetString()!;
        if (choice.GetProperty("finish_reason").GetString() == "stop")
            Assert.True(JsonSchemaTests.Invalid(JsonDocument.Parse(content).RootElement, schema, schema) == null, content);
        else Assert.StartsWith("{", content.TrimStart());

        var (st2, g) = await f.Post("/v1/completions", """{"prompt":"count:","max_tokens":12,"temperature":0,"grammar":"root ::= \"n=\" [1-9] [0-9]{0,3}"}""");
        Assert.Equal(HttpStatusCode.OK, st2);
        Assert.Matches("^n=[1-9][0-9]{0,3}$", g.GetProperty("choices")[0].GetProperty("text").GetString()!);
        Assert.Equal("stop", g.GetProperty("choices")[0].GetProperty("finish_reason").GetString());

        var (st3, s) = await f.Post("/v1/completions", """{"prompt":"yes or no:","max_tokens":12,"temperature":0,"json_schema":{"enum":["yes","no"]}}""");
        Assert.Equal(HttpStatusCode.OK, st3);
        Assert.Contains(s.GetProperty("choices")[0].GetProperty("text").GetString()!.Trim(), new[] { "\"yes\"", "\"no\"" });
    }

    [Fact]
    public async Task IChatClient_follows_a_schema()
    {
        var schema = JsonDocument.Parse("""{"type":"object","properties":{"answer":{"enum":["yes","no"]},"n":{"type":"integer"}},"required":["answer","n"]}""").RootElement;
        var client = new Cria.Server.CriaChatClient(f.Server.Engine!, new Cria.Tokenization.ChatTemplate(Cria.Tokenization.ChatTemplate.Format.ChatML), "cria-test");
        var r = await client.GetResponseAsync([new(Microsoft.Extensions.AI.ChatRole.User, "well?")], new Microsoft.Extensions.AI.ChatOptions
        {
            ResponseFormat = Microsoft.Extensions.AI.ChatResponseFormat.ForJsonSchema(schema, "answer"), MaxOutputTokens = 200, Temperature = 0,
        });
        if (r.FinishReason == Microsoft.Extensions.AI.ChatFinishReason.Stop)
            Assert.Null(JsonSchemaTests.Invalid(JsonDocument.Parse(r.Text).RootElement, schema, schema));
        else Assert.StartsWith("{", r.Text.TrimStart());
    }

    [Theory]
    [InlineData("""{"prompt":"x","grammar":"root ::= other"}""", "grammar")]
    [InlineData("""{"prompt":"x","grammar":7}""", "grammar")]
    [InlineData("""{"prompt":"x","response_format":{"type":"json_schema","json_schema":{"schema":{"type":"string","pattern":"(?=a)"}}}}""", "response_format")]
    [InlineData("""{"prompt":"x","response_format":{"type":"json_schema"}}""", "response_format")]
    [InlineData("""{"prompt":"x","json_schema":{"$ref":"#/$defs/none"}}""", "json_schema")]
    [InlineData("""{"prompt":"x","response_format":{"type":"json_object"},"grammar":"root ::= \"a\""}""", "grammar")]
    public async Task Bad_constraints_get_OpenAI_errors(string body, string param)
    {
        var (st, j) = await f.Post("/v1/completions", body);
        Assert.Equal(HttpStatusCode.BadRequest, st);
        var e = j.GetProperty("error");
        Assert.Equal(param, e.GetProperty("param").GetString());
        Assert.False(string.IsNullOrEmpty(e.GetProperty("message").GetString()));
    }
}
