using System.Text.Json;
using Cria.Tokenization;

namespace Cria.Models;

/// <summary>
/// Maps a Hugging Face <c>tokenizer.json</c> (+ <c>tokenizer_config.json</c>) to GGUF <c>tokenizer.ggml.*</c>
/// metadata, as llama.cpp's converter writes it:
/// <list type="bullet">
/// <item>BPE with <c>byte_fallback</c> (Llama 1/2, SentencePiece-style) → <c>model = "llama"</c>: tokens in id order,
/// token types (normal 1, unknown 2, control 3, user-defined 4, byte 6), scores. tokenizer.json carries no scores, so a
/// token made by merge number k gets score −k (lower rank merges first, which is what BPE does; llama.cpp's
/// LlamaHfVocab writes −1000 for all).</item>
/// <item>byte-level BPE (Llama 3) → <c>model = "gpt2"</c>: tokens, types, <c>merges</c> as "a b" strings, and
/// <c>pre = "llama-bpe"</c> when the pre-tokenizer is Llama 3's regex (else "gpt2").</item>
/// </list>
/// Special ids come from tokenizer_config.json's bos/eos/unk/pad tokens, <c>add_bos_token</c> from it or from the
/// post-processor template, and <c>chat_template</c> becomes <c>tokenizer.chat_template</c>.
/// </summary>
public static class HfTokenizer
{
    const string Llama3Pattern = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

    public static List<(string Key, object Value)> Convert(string dir, int vocabSize)
    {
        string path = Path.Combine(dir, "tokenizer.json");
        if (!File.Exists(path)) throw new ModelFormatException(path, "not found (the tokenizer of a Hugging Face checkpoint)");
        using var doc = Parse(path);
        var root = doc.RootElement;
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "missing 'model'");
        string type = model.TryGetProperty("type", out var ty) ? ty.GetString() ?? "" : "";
        if (type != "BPE") throw new ModelFormatException(path, $"tokenizer model type '{type}' is not supported (BPE)");
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "missing model.vocab");

        var tokens = new string?[vocabSize];
        foreach (var p in vocab.EnumerateObject())
        {
            int id = p.Value.GetInt32();
            if ((uint)id >= (uint)vocabSize) throw new ModelFormatException(path, $"token '{p.Name}' has id {id}, outside config.json's vocab_size {vocabSize}");
            tokens[id] = p.Name;
        }
        var special = new HashSet<int>();
        var userDefined = new HashSet<int>();
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var a in added.EnumerateArray())
            {
                int id = a.GetProperty("id").GetInt32();
                if ((uint)id >= (uint)vocabSize) throw new ModelFormatException(path, $"added token id {id} is outside config.json's vocab_size {vocabSize}");
                tokens[id] = a.GetProperty("content").GetString();
                if (a.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True) special.Add(id); else userDefined.Add(id);
            }
        var merges = new List<string>();
        if (model.TryGetProperty("merges", out var mg) && mg.ValueKind == JsonValueKind.Array)
            foreach (var m in mg.EnumerateArray())
                merges.Add(m.ValueKind == JsonValueKind.Array ? m[0].GetString() + " " + m[1].GetString() : m.GetString()!);

        var cfg = ReadConfig(Path.Combine(dir, "tokenizer_config.json"));
        int IdOf(string? text) { if (text == null) return -1; int i = Array.IndexOf(tokens, text); return i; }
        string? unkText = model.TryGetProperty("unk_token", out var ut) && ut.ValueKind == JsonValueKind.String ? ut.GetString() : cfg.Unk;
        int unk = IdOf(unkText);
        bool spm = (model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True) || Array.IndexOf(tokens, "<0x00>") >= 0;

        var kv = new List<(string, object)>();
        var outTokens = new string[vocabSize];
        var types = new int[vocabSize];
        for (int i = 0; i < vocabSize; i++)
        {
            if (tokens[i] == null) { outTokens[i] = $"[PAD{i}]"; types[i] = (int)TokenType.UserDefined; continue; }
            outTokens[i] = tokens[i]!;
            types[i] = i == unk ? (int)TokenType.Unknown
                : special.Contains(i) ? (int)TokenType.Control
                : userDefined.Contains(i) ? (int)TokenType.UserDefined
                : spm && IsByteToken(tokens[i]!) ? (int)TokenType.Byte
                : (int)TokenType.Normal;
        }
        if (spm)
        {
            var scores = new float[vocabSize];
            var rank = new Dictionary<string, int>(StringComparer.Ordinal);
            for (int k = 0; k < merges.Count; k++)
            {
                int sp = merges[k].IndexOf(' ');
                if (sp <= 0) throw new ModelFormatException(path, $"merge {k} '{merges[k]}' is not 'a b'");
                rank.TryAdd(string.Concat(merges[k].AsSpan(0, sp), merges[k].AsSpan(sp + 1)), k);
            }
            for (int i = 0; i < vocabSize; i++)
                scores[i] = types[i] == (int)TokenType.Normal && rank.TryGetValue(outTokens[i], out int k) ? -k : types[i] == (int)TokenType.UserDefined && tokens[i] == null ? -1000f : 0f;
            kv.Add(("tokenizer.ggml.model", "llama"));
            kv.Add(("tokenizer.ggml.pre", "default"));
            kv.Add(("tokenizer.ggml.tokens", outTokens));
            kv.Add(("tokenizer.ggml.scores", scores));
            kv.Add(("tokenizer.ggml.token_type", types));
            kv.Add(("tokenizer.ggml.add_space_prefix", AddsSpacePrefix(root)));
        }
        else
        {
            string pre = "gpt2";
            if (root.TryGetProperty("pre_tokenizer", out var pt) && Regexes(pt).Contains(Llama3Pattern)) pre = "llama-bpe";
            kv.Add(("tokenizer.ggml.model", "gpt2"));
            kv.Add(("tokenizer.ggml.pre", pre));
            kv.Add(("tokenizer.ggml.tokens", outTokens));
            kv.Add(("tokenizer.ggml.token_type", types));
            kv.Add(("tokenizer.ggml.merges", merges.ToArray()));
        }
        int bos = IdOf(cfg.Bos), eos = IdOf(cfg.Eos), pad = IdOf(cfg.Pad);
        if (bos >= 0) kv.Add(("tokenizer.ggml.bos_token_id", (uint)bos));
        if (eos >= 0) kv.Add(("tokenizer.ggml.eos_token_id", (uint)eos));
        if (unk >= 0) kv.Add(("tokenizer.ggml.unknown_token_id", (uint)unk));
        if (pad >= 0) kv.Add(("tokenizer.ggml.padding_token_id", (uint)pad));
        bool addBos = cfg.AddBos ?? (root.TryGetProperty("post_processor", out var pp) && cfg.Bos != null && PostProcessorAdds(pp, cfg.Bos)) || (spm && cfg.AddBos == null && bos >= 0);
        kv.Add(("tokenizer.ggml.add_bos_token", addBos && bos >= 0));
        kv.Add(("tokenizer.ggml.add_eos_token", cfg.AddEos ?? false));
        if (cfg.ChatTemplate != null) kv.Add(("tokenizer.chat_template", cfg.ChatTemplate));
        return kv;
    }

    /// <summary>Every "Regex" string inside a pre-tokenizer description (Split patterns, nested in Sequence).</summary>
    static List<string> Regexes(JsonElement e)
    {
        var r = new List<string>();
        void Walk(JsonElement x)
        {
            if (x.ValueKind == JsonValueKind.Object)
                foreach (var p in x.EnumerateObject())
                {
                    if (p.Name == "Regex" && p.Value.ValueKind == JsonValueKind.String) r.Add(p.Value.GetString()!);
                    else Walk(p.Value);
                }
            else if (x.ValueKind == JsonValueKind.Array) foreach (var c in x.EnumerateArray()) Walk(c);
        }
        Walk(e);
        return r;
    }

    static bool IsByteToken(string t) => t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>';

    static bool AddsSpacePrefix(JsonElement root)
    {
        string norm = root.TryGetProperty("normalizer", out var n) ? n.GetRawText() : "";
        string pre = root.TryGetProperty("pre_tokenizer", out var p) ? p.GetRawText() : "";
        if (norm.Contains("\"Prepend\"", StringComparison.Ordinal)) return true;
        if (pre.Contains("\"Metaspace\"", StringComparison.Ordinal))
            return !pre.Contains("\"never\"", StringComparison.Ordinal) && !pre.Contains("\"add_prefix_space\":false", StringComparison.Ordinal);
        return false;
    }

    static bool PostProcessorAdds(JsonElement pp, string bos)
    {
        if (!pp.TryGetProperty("single", out var single) || single.ValueKind != JsonValueKind.Array) return pp.GetRawText().Contains(JsonSerializer.Serialize(bos), StringComparison.Ordinal) && pp.GetRawText().Contains("TemplateProcessing", StringComparison.Ordinal);
        foreach (var e in single.EnumerateArray())
            if (e.TryGetProperty("SpecialToken", out var st) && st.TryGetProperty("id", out var id) && id.GetString() == bos) return true;
        return false;
    }

    sealed record Config(string? Bos, string? Eos, string? Unk, string? Pad, bool? AddBos, bool? AddEos, string? ChatTemplate);

    static Config ReadConfig(string path)
    {
        if (!File.Exists(path)) return new Config(null, null, null, null, null, null, null);
        using var doc = Parse(path);
        var r = doc.RootElement;
        string? Tok(string k) => !r.TryGetProperty(k, out var v) ? null : v.ValueKind == JsonValueKind.String ? v.GetString()
            : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) ? c.GetString() : null;
        bool? Bool(string k) => r.TryGetProperty(k, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
        string? template = null;
        if (r.TryGetProperty("chat_template", out var ct))
        {
            if (ct.ValueKind == JsonValueKind.String) template = ct.GetString();
            else if (ct.ValueKind == JsonValueKind.Array)
                foreach (var t in ct.EnumerateArray())
                    if (t.TryGetProperty("name", out var nm) && nm.GetString() == "default") template = t.GetProperty("template").GetString();
        }
        return new Config(Tok("bos_token"), Tok("eos_token"), Tok("unk_token"), Tok("pad_token"), Bool("add_bos_token"), Bool("add_eos_token"), template);
    }

    static JsonDocument Parse(string path)
    {
        try { return JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new ModelFormatException(path, "not valid JSON: " + e.Message, e); }
    }
}
