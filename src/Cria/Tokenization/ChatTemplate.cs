using System.Text;
using Cria.Formats;

namespace Cria.Tokenization;

/// <summary>One chat turn: role (system, user, assistant, tool) and its text.</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>
/// Turns a conversation into prompt text for the common chat formats. The GGUF's <c>tokenizer.chat_template</c> (a
/// Jinja template) is recognised by its markers and rendered by a built-in C# renderer of that format, as llama.cpp
/// does without <c>--jinja</c> (llm_chat_detect_template): the four families here cover Llama 2, Llama 3, Mistral
/// and ChatML models, and a template that is not recognised falls back to ChatML. The rendered text never holds the
/// BOS token: tokenize it with the model's add-BOS rule and with special tokens parsed.
/// </summary>
public sealed class ChatTemplate
{
    public enum Format { ChatML, Llama2, Llama3, Mistral }

    public Format Kind { get; }
    public string Name => Kind switch { Format.ChatML => "chatml", Format.Llama2 => "llama2", Format.Llama3 => "llama3", _ => "mistral" };
    /// <summary>The template text of the model file, when it had one.</summary>
    public string? Source { get; }
    readonly string _eos;

    public ChatTemplate(Format kind, string? source = null, string eosText = "</s>")
    {
        Kind = kind; Source = source; _eos = eosText;
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

    /// <summary>The template of a model file (its <c>tokenizer.chat_template</c>, else ChatML).</summary>
    public static ChatTemplate FromGguf(GgufFile f, Tokenizer tokenizer)
    {
        f.TryGet("tokenizer.chat_template", out string? jinja);
        string eos = tokenizer.Eos >= 0 && tokenizer.Eos < tokenizer.VocabSize ? tokenizer.TokenText(tokenizer.Eos) : "</s>";
        return new ChatTemplate(Detect(jinja), jinja, eos);
    }

    /// <summary>Renders the conversation; with <paramref name="addGenerationPrompt"/> the text ends where the
    /// assistant's reply begins.</summary>
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt = true)
    {
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
