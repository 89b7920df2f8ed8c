using System.Text;
using Cria.Formats;
using Cria.Tokenization.Jinja;

namespace Cria.Tokenization;

/// <summary>One chat turn: role (system, user, assistant, tool) and its text; an assistant turn may carry the tool
/// calls it made, a tool turn the id of the call it answers.</summary>
public sealed record ChatTurn(string Role, string Content)
{
    public IReadOnlyList<ChatToolCall>? ToolCalls { get; init; }
    public string? ToolCallId { get; init; }
}

/// <summary>A function call in a conversation: OpenAI's id, the function's name and its arguments as JSON text.</summary>
public sealed record ChatToolCall(string Id, string Name, string Arguments);

/// <summary>
/// Turns a conversation into prompt text. When the model file has a <c>tokenizer.chat_template</c> (a Jinja
/// template), it is rendered by Cria's Jinja interpreter (<see cref="Cria.Tokenization.Jinja.JinjaTemplate"/>) as transformers does
/// (trim_blocks, lstrip_blocks; <c>messages</c>, <c>add_generation_prompt</c>, <c>bos_token</c>, <c>eos_token</c>,
/// <c>tools</c> = none, <c>raise_exception</c>, <c>strftime_now</c>). Like llama.cpp, a template that drops or rejects
/// a system message gets it merged into the first user message. When the file has no template, or its template does
/// not parse or fails on a plain conversation, a built-in C# renderer of the family recognised by markers is used (as llama.cpp without
/// <c>--jinja</c>): Llama 2, Llama 3, Mistral, else ChatML; <see cref="Description"/> says which and why.
/// The rendered text never starts with the BOS token when the tokenizer adds one itself: tokenize it with the
/// model's add-BOS rule and with special tokens parsed.
/// </summary>
public sealed class ChatTemplate
{
    public enum Format { ChatML, Llama2, Llama3, Mistral }

    /// <summary>The built-in family (the renderer used when <see cref="Jinja"/> is null).</summary>
    public Format Kind { get; }
    /// <summary>"jinja" when the model's template is rendered, else the built-in family's name.</summary>
    public string Name => Jinja != null ? "jinja" : BuiltinName;
    string BuiltinName => Kind switch { Format.ChatML => "chatml", Format.Llama2 => "llama2", Format.Llama3 => "llama3", _ => "mistral" };
    /// <summary>The template text of the model file, when it had one.</summary>
    public string? Source { get; }
    /// <summary>The parsed model template, when it is the one rendered.</summary>
    public JinjaTemplate? Jinja { get; }
    /// <summary>Why the built-in renderer is used although the model has a template (its parse error, or the error
    /// it raises on a plain user/assistant conversation), else null.</summary>
    public string? FallbackReason { get; }
    /// <summary>Whether the template renders system messages itself (probed as llama.cpp does); when not, system
    /// text is merged into the next user message.</summary>
    public bool SupportsSystemRole { get; } = true;
    /// <summary>One line for logs: which renderer is used and why.</summary>
    public string Description => Jinja != null
        ? "the model's Jinja chat template" + (SupportsSystemRole ? "" : " (system messages merged into the first user message)")
        : Source == null ? $"built-in {BuiltinName} (the model has no chat template)"
        : $"built-in {BuiltinName} (the model's chat template could not be used: {FallbackReason})";

    readonly string _bos, _eos;
    readonly bool _stripBos;

    /// <summary>A built-in renderer.</summary>
    public ChatTemplate(Format kind, string? source = null, string eosText = "</s>")
    {
        Kind = kind; Source = source; _eos = eosText; _bos = "";
    }

    ChatTemplate(Format kind, string source, JinjaTemplate? jinja, string? fallbackReason, string bos, string eos, bool stripBos)
    {
        Kind = kind; Source = source; Jinja = jinja; FallbackReason = fallbackReason; _bos = bos; _eos = eos; _stripBos = stripBos;
        if (jinja != null) SupportsSystemRole = ProbeSystemRole();
    }

    /// <summary>The format a Jinja chat template is written for (ChatML when none is recognised or none given).</summary>
    public static Format Detect(string? jinja)
    {
        if (string.IsNullOrEmpty(jinja)) return Format.ChatML;
        if (jinja.Contains("<|im_start|>")) return Format.ChatML;
        if (jinja.Contains("<|start_header_id|>") && jinja.Contains("<|end_header_id|>")) return Format.Llama3;
        if (jinja.Contains("[INST]"))
            return jinja.Contains("<<SYS>>") ? Format.Llama2 : Format.Mistral;
        return Format.ChatML;
    }

    /// <summary>A chat template rendered from Jinja source; when the source does not parse, or the template fails on
    /// a plain user/assistant conversation, the built-in renderer of its detected family (see <see cref="FallbackReason"/>). <paramref name="stripBos"/>: remove a leading
    /// <paramref name="bosText"/> from the output (set it when the tokenizer adds BOS itself).</summary>
    public static ChatTemplate FromJinja(string source, string bosText, string eosText, bool stripBos = false, JinjaOptions? options = null)
    {
        JinjaTemplate t;
        try { t = JinjaTemplate.Parse(source, options); }
        catch (TemplateException e)
        {
            return new ChatTemplate(Detect(source), source, null, e.Message, bosText, eosText, stripBos);
        }
        var ct = new ChatTemplate(Detect(source), source, t, null, bosText, eosText, stripBos);
        // A template that cannot render the plainest conversation (it uses something the interpreter lacks, or
        // insists on inputs Cria does not pass) is of no use: fall back at load time rather than fail every request.
        try
        {
            ct.Render([new("user", "Hello")]);
            ct.Render([new("user", "Hello"), new("assistant", "Hi"), new("user", "Bye")], addGenerationPrompt: false);
        }
        catch (TemplateException e)
        {
            return new ChatTemplate(ct.Kind, source, null, "it fails on a plain user/assistant conversation: " + e.Message, bosText, eosText, stripBos);
        }
        return ct;
    }

    /// <summary>The template of a model file: its <c>tokenizer.chat_template</c> rendered with the tokenizer's BOS
    /// and EOS text, else (absent or unparsable) the built-in renderer of its family, else ChatML.</summary>
    public static ChatTemplate FromGguf(GgufFile f, Tokenizer tokenizer)
    {
        f.TryGet("tokenizer.chat_template", out string? jinja);
        string eos = tokenizer.Eos >= 0 && tokenizer.Eos < tokenizer.VocabSize ? tokenizer.TokenText(tokenizer.Eos) : "</s>";
        string bos = tokenizer.Bos >= 0 && tokenizer.Bos < tokenizer.VocabSize ? tokenizer.TokenText(tokenizer.Bos) : "";
        if (string.IsNullOrEmpty(jinja)) return new ChatTemplate(Detect(jinja), null, eos);
        return FromJinja(jinja, bos, eos, stripBos: tokenizer.AddBos);
    }

    bool ProbeSystemRole()
    {
        const string needle = "<System Needle>";
        try
        {
            return RenderJinja([new("system", needle), new("user", "<User Needle>")], false, polyfill: false).Contains(needle, StringComparison.Ordinal);
        }
        catch (TemplateException) { return false; }
    }

    /// <summary>Whether the model's own template renders tool definitions (it reads <c>tools</c>): then tools are
    /// given to it, else <see cref="Serving.ToolCalling"/> describes them in the system message.</summary>
    public bool RendersTools => Jinja != null && Source != null && Source.Contains("tools", StringComparison.Ordinal);

    string RenderJinja(IReadOnlyList<ChatTurn> turns, bool addGenerationPrompt, bool polyfill, IReadOnlyList<System.Text.Json.JsonElement>? tools = null)
    {
        var messages = new List<object?>();
        string pending = "";
        foreach (var m in turns)
        {
            string role = m.Role, content = m.Content;
            if (polyfill)
            {
                // llama.cpp's polyfill: system text waits for the next user message, joined with a newline.
                if (role == "system") { pending = pending.Length == 0 ? content : pending + "\n" + content; continue; }
                if (pending.Length > 0)
                {
                    if (role == "user") content = pending + (content.Length == 0 ? "" : "\n" + content);
                    else messages.Add(Message("user", pending));
                    pending = "";
                }
            }
            var message = Message(role, content);
            // As transformers and vLLM give them to templates: arguments as a mapping, the call id beside a tool result.
            if (m.ToolCalls is { Count: > 0 } calls)
                message["tool_calls"] = calls.Select(c => (object?)new OrderedDictionary<string, object?>
                {
                    ["id"] = c.Id, ["type"] = "function",
                    ["function"] = new OrderedDictionary<string, object?> { ["name"] = c.Name, ["arguments"] = JsonArguments(c.Arguments) },
                }).ToList();
            if (m.ToolCallId != null) message["tool_call_id"] = m.ToolCallId;
            messages.Add(message);
        }
        if (pending.Length > 0) messages.Add(Message("user", pending));
        var vars = new Dictionary<string, object?>
        {
            ["messages"] = messages,
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = _bos,
            ["eos_token"] = _eos,
            ["tools"] = tools == null ? null : tools.Select(t => JinjaValue.FromJson(t)).ToList(),
        };
        var text = Jinja!.Render(vars);
        if (_stripBos && _bos.Length > 0 && text.StartsWith(_bos, StringComparison.Ordinal)) text = text[_bos.Length..];
        return text;
    }

    static OrderedDictionary<string, object?> Message(string role, string content) => new() { ["role"] = role, ["content"] = content };

    static object? JsonArguments(string json)
    {
        try { return JinjaValue.FromJson(System.Text.Json.JsonDocument.Parse(json).RootElement.Clone()); }
        catch (System.Text.Json.JsonException) { return json; }
    }

    /// <summary>Renders the conversation; with <paramref name="addGenerationPrompt"/> the text ends where the
    /// assistant's reply begins.</summary>
    /// <exception cref="TemplateException">The model's template failed while rendering (e.g. it called
    /// <c>raise_exception</c> because the roles do not alternate).</exception>
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true) => Render(messages, null, addGenerationPrompt);

    /// <summary>Renders the conversation with tool definitions (OpenAI's <c>tools</c> entries) given to a template that
    /// reads them (<see cref="RendersTools"/>); other templates ignore them.</summary>
    public string Render(IReadOnlyList<ChatTurn> messages, IReadOnlyList<System.Text.Json.JsonElement>? tools, bool addGenerationPrompt = true)
    {
        if (Jinja != null) return RenderJinja(messages, addGenerationPrompt, polyfill: !SupportsSystemRole, tools);
        var sb = new StringBuilder();
        switch (Kind)
        {
            case Format.ChatML:
                foreach (var m in messages) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
                if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
                break;
            case Format.Llama3:
                foreach (var m in messages)
                    sb.Append("<|start_header_id|>").Append(m.Role).Append("<|end_header_id|>\n\n").Append(m.Content.Trim()).Append("<|eot_id|>");
                if (addGenerationPrompt) sb.Append("<|start_header_id|>assistant<|end_header_id|>\n\n");
                break;
            case Format.Llama2:
            case Format.Mistral:
                RenderInst(sb, messages);
                break;
        }
        return sb.ToString();
    }

    // Llama 2: [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]
    // Mistral (v0.1-v0.3 instruct): [INST] {user} [/INST]{assistant}</s>[INST] {user} [/INST]; a system prompt is put
    // in front of the first user turn, as the Mistral templates that accept one do.
    void RenderInst(StringBuilder sb, IReadOnlyList<ChatTurn> messages)
    {
        bool llama2 = Kind == Format.Llama2;
        string? system = null;
        bool first = true;
        foreach (var m in messages)
        {
            switch (m.Role)
            {
                case "system":
                    system = system == null ? m.Content : system + "\n\n" + m.Content;
                    break;
                case "assistant":
                    sb.Append(llama2 ? " " + m.Content.Trim() + " " + _eos : m.Content.Trim() + _eos);
                    break;
                default: // user, tool
                    if (!first && llama2) sb.Append("<s>");
                    sb.Append("[INST] ");
                    if (system != null)
                    {
                        sb.Append(llama2 ? "<<SYS>>\n" + system.Trim() + "\n<</SYS>>\n\n" : system.Trim() + "\n\n");
                        system = null;
                    }
                    sb.Append(m.Content.Trim()).Append(" [/INST]");
                    first = false;
                    break;
            }
        }
    }
}
