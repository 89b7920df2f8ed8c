using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Cria.Tokenization;

namespace Cria.Serving;

/// <summary>A function the model may call: OpenAI's <c>tools</c> entry (name, description, JSON schema of the
/// arguments; no schema means any object).</summary>
public sealed record ToolDefinition(string Name, string? Description, JsonElement? Parameters)
{
    /// <summary>The <c>{"type": "function", "function": {...}}</c> entry a chat template reads.</summary>
    public JsonElement ToJson()
    {
        var f = new JsonObject { ["name"] = Name };
        if (Description != null) f["description"] = Description;
        f["parameters"] = Parameters is { } p ? JsonNode.Parse(p.GetRawText()) : new JsonObject { ["type"] = "object" };
        return JsonSerializer.SerializeToElement(new JsonObject { ["type"] = "function", ["function"] = f });
    }
}

/// <summary>OpenAI's <c>tool_choice</c>: none, auto (the model decides), required (some tool), or one named tool.</summary>
public sealed record ToolChoice(ToolChoice.Kind Mode, string? Name = null)
{
    public enum Kind { None, Auto, Required, Named }
    public static readonly ToolChoice Auto = new(Kind.Auto);
}

/// <summary>
/// Function calling on one data path: the tools go into the prompt, a grammar (when the call is required, or the
/// format needs one) constrains the output to a call whose arguments follow the tool's JSON schema, and the text is
/// parsed back into calls. The format follows the model's chat template, as vLLM's tool parsers and llama.cpp's
/// chat formats do:
/// <list type="bullet">
/// <item><b>Llama 3.x JSON</b> (a template that reads <c>tools</c> and uses Llama 3's headers): the template renders
/// the tools; a call is <c>{"name": …, "parameters": {…}}</c> (vLLM's llama3_json).</item>
/// <item><b>Hermes</b> (a template that reads <c>tools</c> and writes <c>&lt;tool_call&gt;</c>: Qwen 2.5, Hermes):
/// <c>&lt;tool_call&gt;{"name": …, "arguments": {…}}&lt;/tool_call&gt;</c>, text around it is content.</item>
/// <item><b>Generic</b> (any other template, the built-in renderers included; llama.cpp's generic format): the tools are
/// described in the system message and the reply is always one JSON object, <c>{"tool_call": {"name": …,
/// "arguments": {…}}}</c> or <c>{"response": "…"}</c>, constrained by a grammar even under tool_choice auto.</item>
/// </list>
/// Under auto the Llama 3 and Hermes outputs are free text, parsed afterwards: a reply that is not a well-formed call
/// to a known tool is content.
/// </summary>
public static class ToolCalling
{
    public enum Format { Llama3Json, Hermes, Generic }

    public static Format FormatOf(ChatTemplate template)
    {
        if (!template.RendersTools) return Format.Generic;
        string src = template.Source!;
        if (src.Contains("<tool_call>", StringComparison.Ordinal)) return Format.Hermes;
        if (src.Contains("<|start_header_id|>", StringComparison.Ordinal)) return Format.Llama3Json;
        return Format.Generic;
    }

    /// <summary>The prompt: the template with the tools (Llama 3, Hermes), or (generic) the tools described in the
    /// system message and earlier calls written as the JSON replies the model gives.</summary>
    public static string Render(ChatTemplate template, IReadOnlyList<ChatTurn> turns, IReadOnlyList<ToolDefinition> tools, Format format)
    {
        if (format != Format.Generic) return template.Render(turns, [.. tools.Select(t => t.ToJson())]);
        var sb = new StringBuilder("You can call these tools:\n");
        foreach (var t in tools) sb.Append(JsonSerializer.Serialize(t.ToJson().GetProperty("function"))).Append('\n');
        sb.Append("Reply with one JSON object: {\"tool_call\": {\"name\": TOOL, \"arguments\": {ARGUMENTS}}} to call a tool, or {\"response\": \"TEXT\"} to answer.");
        var list = new List<ChatTurn>();
        int sys = turns.Count > 0 && turns[0].Role == "system" ? 1 : 0;
        list.Add(new ChatTurn("system", sys == 1 ? turns[0].Content + "\n\n" + sb : sb.ToString()));
        foreach (var t in turns.Skip(sys))
        {
            if (t.ToolCalls is { Count: > 0 } calls)
                list.Add(new ChatTurn("assistant", string.Join("\n", calls.Select(c => $"{{\"tool_call\": {{\"name\": {JsonSerializer.Serialize(c.Name)}, \"arguments\": {c.Arguments}}}}}"))));
            else if (t.Role == "tool")
            {
                // The result names the function it answers (its call's id is a random string the model need not see).
                string? name = turns.SelectMany(x => x.ToolCalls ?? []).FirstOrDefault(c => c.Id == t.ToolCallId)?.Name;
                list.Add(new ChatTurn("tool", $"{{\"tool_response\": {{\"name\": {JsonSerializer.Serialize(name ?? "")}, \"content\": {JsonSerializer.Serialize(t.Content)}}}}}"));
            }
            else if (t.Role == "assistant")
                list.Add(new ChatTurn("assistant", $"{{\"response\": {JsonSerializer.Serialize(t.Content)}}}"));
            else list.Add(t);
        }
        return template.Render(list);
    }

    /// <summary>The grammar of the reply, or null when it is free (auto with the Llama 3 or Hermes format).</summary>
    public static Grammar? Constraint(IReadOnlyList<ToolDefinition> tools, ToolChoice choice, Format format)
    {
        if (choice.Mode == ToolChoice.Kind.None) return null;
        var callable = choice.Mode == ToolChoice.Kind.Named ? tools.Where(t => t.Name == choice.Name).ToList() : tools.ToList();
        if (callable.Count == 0) throw new GrammarException($"tool_choice names '{choice.Name}', which is not among the tools");
        if (choice.Mode == ToolChoice.Kind.Auto && format != Format.Generic) return null;
        string args = format == Format.Llama3Json ? "parameters" : "arguments";
        var calls = new JsonArray(callable.Select(t => (JsonNode)new JsonObject
        {
            ["type"] = "object",
            ["properties"] = new JsonObject
            {
                ["name"] = new JsonObject { ["const"] = t.Name },
                [args] = t.Parameters is { } p ? JsonNode.Parse(p.GetRawText()) : new JsonObject { ["type"] = "object" },
            },
            ["required"] = new JsonArray("name", args),
        }).ToArray());
        JsonNode call = new JsonObject { ["anyOf"] = calls };
        JsonNode schema = format switch
        {
            Format.Generic => choice.Mode == ToolChoice.Kind.Auto
                ? new JsonObject { ["anyOf"] = new JsonArray(Wrap(call), new JsonObject
                  {
                      ["type"] = "object", ["properties"] = new JsonObject { ["response"] = new JsonObject { ["type"] = "string" } }, ["required"] = new JsonArray("response"),
                  }) }
                : Wrap(call),
            _ => call,
        };
        string gbnf = JsonSchemaGrammar.ToGbnf(JsonSerializer.SerializeToElement(schema));
        if (format == Format.Hermes) gbnf = "root ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"\n" + Regex.Replace(gbnf, "^root ::= ", "call ::= ", RegexOptions.Multiline);
        return Grammar.Parse(gbnf);

        static JsonObject Wrap(JsonNode call) => new()
        {
            ["type"] = "object", ["properties"] = new JsonObject { ["tool_call"] = call.DeepClone() }, ["required"] = new JsonArray("tool_call"),
        };
    }

    /// <summary>OpenAI's finish reason of a reply: "tool_calls" when it made calls and ended by itself ("stop"), else
    /// the engine's.</summary>
    public static string? FinishReason(string? finish, int calls) => calls > 0 && finish == "stop" ? "tool_calls" : finish;

    /// <summary>The reply as content and calls (ids "call_…" made here). A reply that does not parse as a call of a
    /// known tool is content, whole.</summary>
    public static (string? Content, List<ChatToolCall> Calls) Parse(string text, IReadOnlyList<ToolDefinition> tools, Format format)
    {
        var calls = new List<ChatToolCall>();
        bool Known(string? name) => name != null && tools.Any(t => t.Name == name);
        ChatToolCall? Call(JsonElement o, string argsKey)
        {
            if (o.ValueKind != JsonValueKind.Object || !o.TryGetProperty("name", out var n) || n.ValueKind != JsonValueKind.String || !Known(n.GetString())) return null;
            string args = o.TryGetProperty(argsKey, out var a) && a.ValueKind == JsonValueKind.Object ? a.GetRawText()
                : o.TryGetProperty("arguments", out var b) && b.ValueKind == JsonValueKind.Object ? b.GetRawText() : "{}";
            return new ChatToolCall("call_" + Guid.NewGuid().ToString("N")[..24], n.GetString()!, args);
        }
        static JsonElement? Json(string s)
        {
            try { return JsonDocument.Parse(s).RootElement.Clone(); }
            catch (JsonException) { return null; }
        }
        switch (format)
        {
            case Format.Llama3Json:
                if (Json(text.Trim()) is { } j && Call(j, "parameters") is { } c) return (null, [c]);
                return (text, calls);
            case Format.Hermes:
            {
                var rest = new StringBuilder();
                int at = 0;
                foreach (Match m in Regex.Matches(text, @"<tool_call>\s*(.*?)\s*</tool_call>", RegexOptions.Singleline))
                {
                    if (Json(m.Groups[1].Value) is not { } o || Call(o, "arguments") is not { } call) continue;
                    calls.Add(call);
                    rest.Append(text, at, m.Index - at);
                    at = m.Index + m.Length;
                }
                rest.Append(text, at, text.Length - at);
                string content = rest.ToString().Trim();
                return (calls.Count > 0 && content.Length == 0 ? null : calls.Count > 0 ? content : text, calls);
            }
            default:
                if (Json(text.Trim()) is { ValueKind: JsonValueKind.Object } g)
                {
                    if (g.TryGetProperty("tool_call", out var tc) && Call(tc, "arguments") is { } call) return (null, [call]);
                    if (g.TryGetProperty("response", out var r) && r.ValueKind == JsonValueKind.String) return (r.GetString(), calls);
                }
                return (text, calls);
        }
    }
}

/// <summary>
/// Streams a reply that may hold tool calls: text that cannot belong to a call goes out as content at once, the rest is
/// held until the reply ends and then parsed (<see cref="ToolCalling.Parse"/>). Llama 3 JSON: a reply whose first
/// non-space character is not '{' is content from then on. Hermes: content up to a <c>&lt;tool_call&gt;</c> (a trailing
/// piece that could begin one waits), the rest held. Generic: the reply is one JSON object, held whole.
/// </summary>
public sealed class ToolReplyStream(IReadOnlyList<ToolDefinition> tools, ToolCalling.Format format)
{
    const string Open = "<tool_call>";
    readonly StringBuilder _held = new();
    bool _free, _inCall;

    /// <summary>Feeds the next text of the reply; returns the content that can be sent now (possibly empty).</summary>
    public string Add(string text)
    {
        if (_free) return text;
        _held.Append(text);
        switch (format)
        {
            case ToolCalling.Format.Llama3Json:
            {
                string held = _held.ToString();
                string t = held.TrimStart();
                if (t.Length == 0 || t[0] == '{') return "";
                _free = true;
                _held.Clear();
                return held;
            }
            case ToolCalling.Format.Hermes:
            {
                if (_inCall) return "";
                string held = _held.ToString();
                int at = held.IndexOf(Open, StringComparison.Ordinal);
                int keep = at >= 0 ? held.Length - at : PartialOpen(held);
                _inCall = at >= 0;
                _held.Clear().Append(held, held.Length - keep, keep);
                return held[..^keep];
            }
            default:
                return "";
        }
    }

    /// <summary>How many trailing characters could be the start of "&lt;tool_call&gt;".</summary>
    static int PartialOpen(string s)
    {
        for (int n = Math.Min(Open.Length - 1, s.Length); n > 0; n--)
            if (s.EndsWith(Open[..n], StringComparison.Ordinal)) return n;
        return 0;
    }

    /// <summary>At the end of the reply: the content still to send (null if none) and the calls.</summary>
    public (string? Content, List<ChatToolCall> Calls) Finish()
    {
        string held = _held.ToString();
        _held.Clear();
        if (_free || held.Length == 0) return (null, []);
        if (format == ToolCalling.Format.Hermes && !_inCall) return (held, []);
        var (content, calls) = ToolCalling.Parse(held, tools, format);
        return (string.IsNullOrEmpty(content) ? null : content, calls);
    }
}
