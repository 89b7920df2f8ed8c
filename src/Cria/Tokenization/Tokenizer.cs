using System.Text;
using Cria.Formats;

namespace Cria.Tokenization;

/// <summary>GGUF token types (<c>tokenizer.ggml.token_type</c>).</summary>
public enum TokenType
{
    Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
}

/// <summary>Per-token attribute bits, as llama.cpp keeps them (a token can gain Control when its text marks it as one).</summary>
[Flags]
public enum TokenAttributes
{
    Undefined = 0, Unknown = 1 << 0, Unused = 1 << 1, Normal = 1 << 2, Control = 1 << 3, UserDefined = 1 << 4, Byte = 1 << 5,
}

/// <summary>
/// A tokenizer built from GGUF metadata that reproduces llama.cpp's <c>llama_tokenize</c> / <c>llama_token_to_piece</c> /
/// <c>llama_detokenize</c> exactly. Two algorithms: <see cref="SpmTokenizer"/> (<c>tokenizer.ggml.model = "llama"</c>,
/// SentencePiece-style score-driven merges with <c>&lt;0xXX&gt;</c> byte fallback) and <see cref="BpeTokenizer"/>
/// (<c>"gpt2"</c>, byte-level BPE with a pre-tokenizer chosen by <c>tokenizer.ggml.pre</c>).
/// Instances are immutable and thread-safe. Token ids out of range given to the decoding methods throw
/// <see cref="ArgumentOutOfRangeException"/>.
/// </summary>
public abstract class Tokenizer
{
    public const int NoToken = -1;

    private protected readonly string[] _text;
    private protected readonly float[] _scores;
    private protected readonly TokenAttributes[] _attr;
    private protected readonly Dictionary<string, int> _ids;
    private protected readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _idsBySpan;
    readonly byte[][] _pieces;          // token_to_piece with special=true, built once
    readonly int[] _specials;           // control / user-defined / unknown tokens, longest text first
    readonly HashSet<int> _eog = new();

    /// <summary>The file the tokenizer came from (for error messages).</summary>
    public string SourcePath { get; }
    /// <summary><c>tokenizer.ggml.model</c>: "llama" or "gpt2".</summary>
    public string Model { get; }
    /// <summary><c>tokenizer.ggml.pre</c> ("default" when absent).</summary>
    public string PreTokenizer { get; }
    public int VocabSize => _text.Length;
    public int Bos { get; }
    public int Eos { get; }
    /// <summary>End-of-turn token (<c>tokenizer.ggml.eot_token_id</c>, or found by text such as <c>&lt;|eot_id|&gt;</c>); -1 if none.</summary>
    public int Eot { get; }
    public int Unknown { get; }
    public int Padding { get; }
    /// <summary>Whether <see cref="Encode"/> with addBos=true prepends BOS (<c>add_bos_token</c>).</summary>
    public bool AddBos { get; }
    /// <summary>Whether <see cref="Encode"/> with addBos=true appends EOS (<c>add_eos_token</c>).</summary>
    public bool AddEos { get; }
    /// <summary>SPM: a space is put before the text (and before text that follows a special token). Decoding strips it again.</summary>
    public bool AddSpacePrefix { get; }
    /// <summary>llama.cpp's <c>clean_spaces</c>: <see cref="Detokenize"/> removes spaces before punctuation and contractions.</summary>
    public bool CleanSpaces { get; }
    /// <summary>All end-of-generation tokens (EOS, EOT, EOM, and tokens llama.cpp recognises by text).</summary>
    public IReadOnlyCollection<int> EndOfGenerationTokens => _eog;

    internal readonly struct Settings
    {
        public required string Path { get; init; }
        public required string Model { get; init; }
        public required string Pre { get; init; }
        public required string[] Tokens { get; init; }
        public required float[] Scores { get; init; }
        public required TokenType[] Types { get; init; }
        public required GgufFile File { get; init; }
    }

    private protected Tokenizer(in Settings s, bool isBpe)
    {
        SourcePath = s.Path; Model = s.Model; PreTokenizer = s.Pre;
        int n = s.Tokens.Length;
        _text = new string[n];
        _scores = s.Scores;
        _attr = new TokenAttributes[n];
        _ids = new Dictionary<string, int>(n, StringComparer.Ordinal);
        for (int i = 0; i < n; i++)
        {
            string w = s.Tokens[i].Length == 0 ? $"[EMPTY_{i}]" : s.Tokens[i];
            if (!_ids.TryAdd(w, i))
                throw new ModelFormatException(s.Path, $"duplicate token in vocabulary: '{w}' has ids {_ids[w]} and {i}");
            _text[i] = w;
            _attr[i] = s.Types[i] switch
            {
                TokenType.Unknown => TokenAttributes.Unknown,
                TokenType.Unused => TokenAttributes.Unused,
                TokenType.Normal => TokenAttributes.Normal,
                TokenType.Control => TokenAttributes.Control,
                TokenType.UserDefined => TokenAttributes.UserDefined,
                TokenType.Byte => TokenAttributes.Byte,
                _ => TokenAttributes.Undefined,
            };
        }
        _idsBySpan = _ids.GetAlternateLookup<ReadOnlySpan<char>>();

        var f = s.File;
        // Defaults per model type, then the keys (llama.cpp llama_vocab::impl::load).
        int bos, eos, unk, pad;
        bool addBos, addEos, addSpace, clean;
        if (!isBpe) { bos = 1; eos = 2; unk = 0; pad = NoToken; addBos = true; addEos = false; addSpace = true; clean = false; }
        else
        {
            bos = 11; eos = 11; unk = NoToken; pad = NoToken; addSpace = false; clean = true; addEos = false;
            addBos = IsLlama3Pre(s.Pre);
        }
        addSpace = f.Get("tokenizer.ggml.add_space_prefix", addSpace);
        if (bos >= n) bos = NoToken;
        if (eos >= n) eos = NoToken;
        if (unk >= n) unk = NoToken;
        bos = SpecialId(f, "tokenizer.ggml.bos_token_id", bos, n);
        eos = SpecialId(f, "tokenizer.ggml.eos_token_id", eos, n);
        int eot = SpecialId(f, "tokenizer.ggml.eot_token_id", NoToken, n);
        int eom = SpecialId(f, "tokenizer.ggml.eom_token_id", NoToken, n);
        unk = SpecialId(f, "tokenizer.ggml.unknown_token_id", unk, n);
        SpecialId(f, "tokenizer.ggml.seperator_token_id", NoToken, n);
        pad = SpecialId(f, "tokenizer.ggml.padding_token_id", pad, n);
        int fimPad = SpecialId(f, "tokenizer.ggml.fim_pad_token_id", NoToken, n);
        int fimRep = SpecialId(f, "tokenizer.ggml.fim_rep_token_id", NoToken, n);
        int fimSep = SpecialId(f, "tokenizer.ggml.fim_sep_token_id", NoToken, n);
        addBos = f.Get("tokenizer.ggml.add_bos_token", addBos);
        addEos = f.Get("tokenizer.ggml.add_eos_token", addEos);
        if (addBos && bos == NoToken) throw new ModelFormatException(s.Path, "tokenizer.ggml.add_bos_token is true, but tokenizer.ggml.bos_token_id is not set");
        if (addEos && eos == NoToken) throw new ModelFormatException(s.Path, "tokenizer.ggml.add_eos_token is true, but tokenizer.ggml.eos_token_id is not set");

        // Special tokens found by their text (llama.cpp does this because converters do not always write the ids).
        // It walks an unordered map, so when several texts match, which one becomes EOT is unspecified; we take the
        // lowest id. The end-of-generation set, which is what matters, does not depend on that choice.
        if (eot == NoToken) eot = FindByText(EotTexts);
        if (eom == NoToken) eom = FindByText(["<|eom_id|>"]);
        if (fimPad == NoToken) fimPad = FindByText(["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"]);
        if (fimRep == NoToken) fimRep = FindByText(["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"]);
        if (fimSep == NoToken) fimSep = FindByText(["<|file_sep|>"]);
        foreach (int id in new[] { eot, eom, fimPad, fimRep, fimSep }) MarkControl(id);
        foreach (int id in new[] { fimPad, fimRep, fimSep }) if (id != NoToken) _eog.Add(id);
        foreach (var t in EogTexts)
            if (_ids.TryGetValue(t, out int id)) { _eog.Add(id); MarkControl(id); }
        foreach (var t in new[] { "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>" })
            if (_ids.TryGetValue(t, out int id)) _attr[id] = TokenAttributes.UserDefined;
        foreach (int id in new[] { eos, eot, eom }) if (id != NoToken) _eog.Add(id);
        // gpt-oss / solar-open: "<|end|>" is not end-of-generation when "<|return|>"+"<|call|>" or "<|calls|>"+"<|flush|>" exist.
        bool Has(string t) => _ids.TryGetValue(t, out int i) && _eog.Contains(i);
        if (Has("<|end|>") && ((Has("<|return|>") && (Has("<|call|>") || Has("<|calls|>"))) || ((Has("<|call|>") || Has("<|calls|>")) && Has("<|flush|>"))))
        {
            int endId = _ids["<|end|>"];
            _eog.Remove(endId); _attr[endId] = TokenAttributes.UserDefined;
        }
        if (Has("<|tool_response>") && Has("</s>"))
        {
            int sId = _ids["</s>"];
            _eog.Remove(sId); _attr[sId] = TokenAttributes.Normal;
        }

        Bos = bos; Eos = eos; Eot = eot; Unknown = unk; Padding = pad;
        AddBos = addBos; AddEos = addEos; AddSpacePrefix = addSpace; CleanSpaces = clean;

        // Special-token cache: longest UTF-8 text first (llama.cpp's std::sort is not stable; ties cannot overlap a
        // longer match, and we break them by id so results are deterministic).
        var specials = new List<int>();
        for (int i = 0; i < n; i++)
            if ((_attr[i] & (TokenAttributes.Control | TokenAttributes.UserDefined | TokenAttributes.Unknown)) != 0) specials.Add(i);
        var lengths = specials.ToDictionary(i => i, i => Encoding.UTF8.GetByteCount(_text[i]));
        specials.Sort((a, b) => lengths[a] != lengths[b] ? lengths[b].CompareTo(lengths[a]) : a.CompareTo(b));
        _specials = specials.ToArray();

        _pieces = new byte[n][];
    }

    /// <summary>Second construction phase: subclasses build their tables first, then the piece cache is filled.</summary>
    private protected void BuildPieceCache()
    {
        for (int i = 0; i < _text.Length; i++) _pieces[i] = ComputePiece(i);
    }

    static int SpecialId(GgufFile f, string key, int fallback, int n)
    {
        if (!f.TryGet<long>(key, out long v)) return fallback;
        if (v < 0 || v >= n) throw new ModelFormatException(f.Path, $"{key} = {v} is outside the vocabulary (0..{n - 1})");
        return (int)v;
    }

    int FindByText(string[] texts)
    {
        int best = NoToken;
        foreach (var t in texts) if (_ids.TryGetValue(t, out int id) && (best == NoToken || id < best)) best = id;
        return best;
    }

    void MarkControl(int id) { if (id != NoToken) _attr[id] |= TokenAttributes.Control; }

    static readonly string[] EotTexts =
    [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
        "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ];

    static readonly string[] EogTexts =
    [
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>",
        "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
        "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    ];

    private protected static bool IsLlama3Pre(string pre) => pre is "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1"
        or "pixtral" or "midm-2.0" or "lfm2" or "jina-v5-nano";

    // ---- loading ------------------------------------------------------------------------------------------------------

    /// <summary>Builds the tokenizer a GGUF file describes. Bad or unsupported metadata throws <see cref="ModelFormatException"/>.</summary>
    public static Tokenizer FromGguf(GgufFile f)
    {
        string path = f.Path;
        if (!f.Metadata.TryGetValue("tokenizer.ggml.model", out var modelObj) || modelObj is not string model)
            throw new ModelFormatException(path, "missing or non-string tokenizer.ggml.model");
        string pre = f.Metadata.TryGetValue("tokenizer.ggml.pre", out var preObj) && preObj is string p && p.Length > 0 ? p : "default";
        if (!f.Metadata.TryGetValue("tokenizer.ggml.tokens", out var tokObj))
            throw new ModelFormatException(path, "cannot find tokenizer vocab (tokenizer.ggml.tokens)");
        if (tokObj is not string[] tokens) throw new ModelFormatException(path, "tokenizer.ggml.tokens is not an array of strings");
        if (tokens.Length == 0) throw new ModelFormatException(path, "tokenizer.ggml.tokens is empty");
        int n = tokens.Length;

        var scores = new float[n];
        if (f.Metadata.TryGetValue("tokenizer.ggml.scores", out var sc))
        {
            switch (sc)
            {
                case float[] fs when fs.Length >= n: Array.Copy(fs, scores, n); break;
                case int[] ints when ints.Length >= n: for (int i = 0; i < n; i++) scores[i] = ints[i]; break;
                case float[] or int[]:
                    throw new ModelFormatException(path, $"tokenizer.ggml.scores has {((Array)sc).Length} entries for {n} tokens");
                default: throw new ModelFormatException(path, $"tokenizer.ggml.scores has type {sc.GetType().Name}, expected float32 or int32 array");
            }
        }
        var types = new TokenType[n];
        Array.Fill(types, TokenType.Normal);
        if (f.Metadata.TryGetValue("tokenizer.ggml.token_type", out var tt))
        {
            if (tt is not int[] ti) throw new ModelFormatException(path, $"tokenizer.ggml.token_type has type {tt.GetType().Name}, expected int32 array");
            if (ti.Length < n) throw new ModelFormatException(path, $"tokenizer.ggml.token_type has {ti.Length} entries for {n} tokens");
            for (int i = 0; i < n; i++) types[i] = (TokenType)ti[i];
        }
        var s = new Settings { Path = path, Model = model, Pre = pre, Tokens = tokens, Scores = scores, Types = types, File = f };
        return model switch
        {
            "llama" => new SpmTokenizer(s),
            "gpt2" => new BpeTokenizer(s, ReadMerges(f)),
            _ => throw new ModelFormatException(path, $"unknown or unsupported tokenizer model '{model}' (supported: llama, gpt2)"),
        };
    }

    /// <summary>Opens a GGUF file and builds its tokenizer.</summary>
    public static Tokenizer FromGguf(string path)
    {
        using var f = GgufFile.Open(path);
        return FromGguf(f);
    }

    static string[] ReadMerges(GgufFile f)
    {
        if (!f.Metadata.TryGetValue("tokenizer.ggml.merges", out var m)) throw new ModelFormatException(f.Path, "cannot find tokenizer merges (tokenizer.ggml.merges)");
        return m as string[] ?? throw new ModelFormatException(f.Path, "tokenizer.ggml.merges is not an array of strings");
    }

    // ---- token facts --------------------------------------------------------------------------------------------------

    public string TokenText(int id) { CheckId(id); return _text[id]; }
    public float TokenScore(int id) { CheckId(id); return _scores[id]; }
    public TokenAttributes GetAttributes(int id) { CheckId(id); return _attr[id]; }
    public bool IsControl(int id) { CheckId(id); return (_attr[id] & TokenAttributes.Control) != 0; }
    /// <summary>True for tokens that end generation (llama.cpp's <c>llama_vocab_is_eog</c>); false for -1 and out-of-range ids.</summary>
    public bool IsEog(int id) => _eog.Contains(id);
    /// <summary>The id of a token with exactly this text, or -1.</summary>
    public int TokenId(string text) => _ids.TryGetValue(text, out int id) ? id : NoToken;

    private protected void CheckId(int id)
    {
        if ((uint)id >= (uint)_text.Length) throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary (0..{_text.Length - 1})");
    }

    // ---- encoding -----------------------------------------------------------------------------------------------------

    /// <summary>
    /// Tokenizes like llama.cpp's <c>llama_tokenize(text, add_special: addBos, parse_special)</c>: with addBos the model's
    /// BOS is prepended when it asks for one (<see cref="AddBos"/>) and EOS appended when it asks (<see cref="AddEos"/>).
    /// With parseSpecial, control tokens written in the text (e.g. "&lt;|eot_id|&gt;") become those tokens; user-defined
    /// tokens are always split out.
    /// </summary>
    public int[] Encode(string text, bool addBos = true, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ReplaceLoneSurrogates(text);
        var output = new List<int>(text.Length / 3 + 4);
        var fragments = Partition(text, parseSpecial);
        EncodeFragments(text, fragments, addBos, output);
        return output.ToArray();
    }

    /// <summary>A piece of input: either a special token (Token ≥ 0) or a span of raw text.</summary>
    private protected readonly record struct Fragment(int Token, int Start, int Length);

    private protected abstract void EncodeFragments(string text, List<Fragment> fragments, bool addSpecial, List<int> output);

    /// <summary>llama.cpp's tokenizer_st_partition: for each special token, longest first, split every raw fragment at
    /// each of its occurrences.</summary>
    List<Fragment> Partition(string text, bool parseSpecial)
    {
        var buf = new List<Fragment>();
        if (text.Length == 0) return buf;
        buf.Add(new Fragment(NoToken, 0, text.Length));
        var next = new List<Fragment>();
        foreach (int id in _specials)
        {
            if (!parseSpecial && (_attr[id] & (TokenAttributes.Control | TokenAttributes.Unknown)) != 0) continue;
            string tok = _text[id];
            bool any = false;
            foreach (var fr in buf)
                if (fr.Token < 0 && text.AsSpan(fr.Start, fr.Length).IndexOf(tok, StringComparison.Ordinal) >= 0) { any = true; break; }
            if (!any) continue;
            next.Clear();
            foreach (var fr in buf)
            {
                if (fr.Token >= 0) { next.Add(fr); continue; }
                int pos = fr.Start, end = fr.Start + fr.Length;
                while (pos < end)
                {
                    int m = text.AsSpan(pos, end - pos).IndexOf(tok, StringComparison.Ordinal);
                    if (m < 0) break;
                    m += pos;
                    if (m > pos) next.Add(new Fragment(NoToken, pos, m - pos));
                    next.Add(new Fragment(id, 0, 0));
                    pos = m + tok.Length;
                }
                if (pos < end) next.Add(new Fragment(NoToken, pos, end - pos));
            }
            (buf, next) = (next, buf);
        }
        return buf;
    }

    /// <summary>.NET strings can hold unpaired surrogates; llama.cpp sees the UTF-8 that Encoding.UTF8 makes of them (U+FFFD).</summary>
    static string ReplaceLoneSurrogates(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (!char.IsSurrogate(c)) continue;
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { i++; continue; }
            return Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(s));
        }
        return s;
    }

    // ---- decoding -----------------------------------------------------------------------------------------------------

    private protected abstract byte[] ComputePiece(int id);

    /// <summary>
    /// The bytes llama.cpp's <c>llama_token_to_piece(token, lstrip: 0, special: renderSpecial)</c> gives: SPM "▁" becomes a
    /// space and <c>&lt;0xXX&gt;</c> the byte; byte-level BPE maps its characters back to bytes; control and unknown
    /// tokens are empty unless rendered. The returned array is shared: do not modify it.
    /// </summary>
    public byte[] TokenBytes(int id, bool renderSpecial = false)
    {
        CheckId(id);
        if (!renderSpecial && (_attr[id] & (TokenAttributes.Control | TokenAttributes.Unknown)) != 0) return [];
        return _pieces[id];
    }

    /// <summary>The piece with up to <paramref name="lstrip"/> leading spaces removed (llama.cpp's lstrip argument).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id, bool renderSpecial, int lstrip)
    {
        ReadOnlySpan<byte> p = TokenBytes(id, renderSpecial);
        for (int i = 0; i < lstrip && p.Length > 0 && p[0] == (byte)' '; i++) p = p[1..];
        return p;
    }

    /// <summary>
    /// Text of a token sequence as a stream of pieces would show it: the pieces of <see cref="TokenBytes"/> joined, with the
    /// leading space of the first token removed when <see cref="AddSpacePrefix"/> (llama.cpp's lstrip for the first
    /// piece), decoded as UTF-8 (invalid bytes become U+FFFD). Equals what a <see cref="StreamingDecoder"/> yields, and equals
    /// <see cref="Detokenize"/>(tokens, removeSpecial: false, renderSpecial) whenever <see cref="CleanSpaces"/> is false.
    /// </summary>
    public string Decode(IEnumerable<int> tokens, bool renderSpecial = false)
    {
        var d = new StreamingDecoder(this, renderSpecial);
        var sb = new StringBuilder();
        foreach (int t in tokens) sb.Append(d.Add(t));
        sb.Append(d.Flush());
        return sb.ToString();
    }

    /// <summary>
    /// llama.cpp's <c>llama_detokenize(tokens, remove_special, unparse_special)</c>, byte for byte: optionally drops a leading
    /// BOS and trailing EOS, strips the first piece's leading space (unless a BOS was removed), and, when
    /// <see cref="CleanSpaces"/>, removes the space before ? ! . , and before 's 'm 're 've and around a lone '.
    /// </summary>
    public byte[] DetokenizeBytes(IReadOnlyList<int> tokens, bool removeSpecial = false, bool renderSpecial = false)
    {
        int start = 0, count = tokens.Count;
        bool removeSpace = AddSpacePrefix;
        if (removeSpecial && AddBos && count > 0 && tokens[0] == Bos) { removeSpace = false; start++; count--; }
        if (removeSpecial && AddEos && count > 0 && tokens[start + count - 1] == Eos) count--;
        var text = new List<byte>();
        for (int i = start; i < start + count; i++)
        {
            foreach (byte b in TokenBytes(tokens[i], renderSpecial, removeSpace ? 1 : 0)) text.Add(b);
            removeSpace = false;
        }
        if (!CleanSpaces || text.Count == 0) return text.ToArray();
        var t = text.ToArray();
        int total = CleanPass1(t, t.Length);
        total = CleanPass2(t, total);
        total = CleanPass3(t, total);
        return t.AsSpan(0, total).ToArray();
    }

    /// <summary><see cref="DetokenizeBytes"/> as a string (invalid UTF-8 becomes U+FFFD).</summary>
    public string Detokenize(IReadOnlyList<int> tokens, bool removeSpecial = false, bool renderSpecial = false) =>
        Encoding.UTF8.GetString(DetokenizeBytes(tokens, removeSpecial, renderSpecial));

    // The three in-place passes of llama_detokenize's clean_spaces, kept as llama.cpp writes them.
    static int CleanPass1(byte[] t, int n)
    {
        int total = 1;
        for (int i = 1; i < n; i++)
        {
            byte x = t[i];
            if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) total--;
            t[total++] = x;
        }
        return total;
    }

    static int CleanPass2(byte[] t, int n)
    {
        int total = 1;
        for (int i = 1; i < n; i++)
        {
            byte x = t[i];
            if (x == '\'' && i + 1 < n && t[i - 1] == ' ' && t[i + 1] == ' ') { total--; t[++i] = 0; }
            t[total++] = x;
        }
        return total;
    }

    static int CleanPass3(byte[] t, int n)
    {
        int total = 1;
        for (int i = 1; i < n; i++)
        {
            byte x = t[i];
            if (t[i - 1] == ' ' && x == '\'' && i + 1 < n)
            {
                byte x1 = t[i + 1];
                if (x1 == 's' || x1 == 'm') total--;
                else if (i + 2 < n)
                {
                    byte x2 = t[i + 2];
                    if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) total--;
                }
            }
            t[total++] = x;
        }
        return total;
    }
}
