using System.Globalization;

namespace Cria.Tokenization;

/// <summary>
/// Splits text into words before byte-level BPE, as llama.cpp's unicode_regex_split does for the supported
/// <c>tokenizer.ggml.pre</c> values. The Llama 3 and GPT-2 patterns are hand-written scanners over code points (ports of
/// llama.cpp's unicode_regex_split_custom_llama3 / _gpt2), not .NET Regex: .NET's \p{L} does not see letters outside
/// the BMP and its \s differs at the edges. Code point classes come from .NET's Unicode tables; the whitespace set is
/// llama.cpp's.
/// </summary>
internal static class WordSplitter
{
    internal enum Kind { Llama3, Gpt2, Default }

    internal static Kind? KindOf(string pre) => pre switch
    {
        "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral" or "midm-2.0" or "lfm2" or "jina-v5-nano"
            or "dbrx" or "smaug-bpe" => Kind.Llama3,
        "gpt-2" or "phi-2" or "jina-es" or "jina-de" or "gigachat" or "jina-v2-es" or "jina-v2-de" or "a.x-4.0" or "mellum"
            or "modern-bert" or "mpt" or "olmo" or "jais" or "exaone4" => Kind.Gpt2,
        "default" => Kind.Default,
        _ => null,
    };

    [Flags]
    enum Cat : byte { None = 0, Letter = 1, Number = 2, Whitespace = 4, Punctuation = 8, Other = 16 }

    static bool IsWhitespace(int c) => c is (>= 0x09 and <= 0x0D) or 0x20 or 0x85 or 0xA0 or 0x1680 or (>= 0x2000 and <= 0x200A)
        or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000;

    static Cat Classify(int c)
    {
        if (IsWhitespace(c)) return Cat.Whitespace;
        switch (CharUnicodeInfo.GetUnicodeCategory(c))
        {
            case UnicodeCategory.UppercaseLetter: case UnicodeCategory.LowercaseLetter: case UnicodeCategory.TitlecaseLetter:
            case UnicodeCategory.ModifierLetter: case UnicodeCategory.OtherLetter:
                return Cat.Letter;
            case UnicodeCategory.DecimalDigitNumber: case UnicodeCategory.LetterNumber: case UnicodeCategory.OtherNumber:
                return Cat.Number;
            case UnicodeCategory.ConnectorPunctuation: case UnicodeCategory.DashPunctuation: case UnicodeCategory.OpenPunctuation:
            case UnicodeCategory.ClosePunctuation: case UnicodeCategory.InitialQuotePunctuation: case UnicodeCategory.FinalQuotePunctuation:
            case UnicodeCategory.OtherPunctuation:
                return Cat.Punctuation;
            default:
                return Cat.Other;
        }
    }

    /// <summary>Code points of a string (unpaired surrogates become U+FFFD, as they do in llama.cpp's UTF-8).</summary>
    internal static int[] CodePoints(string s)
    {
        var r = new int[s.Length];
        int n = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { r[n++] = char.ConvertToUtf32(c, s[++i]); }
            else r[n++] = char.IsSurrogate(c) ? 0xFFFD : c;
        }
        return r.AsSpan(0, n).ToArray();
    }

    /// <summary>Word lengths (in code points) covering all of <paramref name="cpts"/>.</summary>
    internal static List<int> Split(Kind kind, int[] cpts)
    {
        var cats = new Cat[cpts.Length];
        for (int i = 0; i < cpts.Length; i++) cats[i] = Classify(cpts[i]);
        var whole = new List<int> { cpts.Length };
        if (cpts.Length == 0) return new List<int>();
        switch (kind)
        {
            case Kind.Llama3: return Llama3(cpts, cats, whole);
            case Kind.Gpt2: return Gpt2(cpts, cats, whole);
            default:
                // llama.cpp's default BPE pre-tokenizer: four patterns applied in turn, each refining the previous split.
                var o = Runs(cpts, whole, c => IsDefaultPunct(c, Classify(c)));  // [\p{P}\$\+<=>\^~\|]+
                o = Gpt2(cpts, cats, o);
                o = Runs(cpts, o, c => Classify(c) == Cat.Number);              // \p{N}+
                return DigitTriples(cpts, o);                                   // [0-9][0-9][0-9]
        }
    }

    // llama.cpp runs these through std::regex on a "collapsed" text: ASCII stays itself (so \p{P} means the ASCII
    // punctuation list), other code points become one byte per category.
    static bool IsDefaultPunct(int c, Cat cat)
    {
        if (c < 128) return c is (>= 0x21 and <= 0x23) or (>= 0x25 and <= 0x2A) or (>= 0x2C and <= 0x2F) or 0x3A or 0x3B or 0x3F or 0x40
            or (>= 0x5B and <= 0x5D) or 0x5F or 0x7B or 0x7D or '$' or '+' or '<' or '=' or '>' or '^' or '~' or '|';
        return cat == Cat.Punctuation;
    }

    /// <summary>std::regex_iterator split with "X+": maximal runs of matching code points and the gaps between them.</summary>
    static List<int> Runs(int[] cpts, List<int> offsets, Func<int, bool> match)
    {
        var res = new List<int>();
        int start = 0;
        foreach (int len in offsets)
        {
            int end = start + len, gap = start;
            for (int p = start; p < end;)
            {
                if (!match(cpts[p])) { p++; continue; }
                int q = p;
                while (q < end && match(cpts[q])) q++;
                if (p > gap) res.Add(p - gap);
                res.Add(q - p);
                gap = p = q;
            }
            if (gap < end) res.Add(end - gap);
            start = end;
        }
        return res;
    }

    static List<int> DigitTriples(int[] cpts, List<int> offsets)
    {
        static bool D(int c) => c is >= '0' and <= '9';
        var res = new List<int>();
        int start = 0;
        foreach (int len in offsets)
        {
            int end = start + len, gap = start;
            for (int p = start; p + 2 < end;)
            {
                if (D(cpts[p]) && D(cpts[p + 1]) && D(cpts[p + 2]))
                {
                    if (p > gap) res.Add(p - gap);
                    res.Add(3);
                    gap = p = p + 3;
                }
                else p++;
            }
            if (gap < end) res.Add(end - gap);
            start = end;
        }
        return res;
    }

    static int ToLowerAscii(int c) => c is >= 'A' and <= 'Z' ? c + 32 : c;

    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    static List<int> Llama3(int[] cpts, Cat[] cats, List<int> offsets)
    {
        var res = new List<int>(cpts.Length / 3 + 1);
        int start = 0;
        foreach (int len in offsets)
        {
            int ini = start, end = start + len;
            start = end;
            int Cpt(int p) => p >= ini && p < end ? cpts[p] : -1;
            Cat Flags(int p) => p >= ini && p < end ? cats[p] : Cat.None;
            int prevEnd = ini;
            int AddToken(int e) { int l = e - prevEnd; if (l > 0) res.Add(l); prevEnd = e; return l; }

            for (int pos = ini; pos < end;)
            {
                int cpt = Cpt(pos);
                Cat flags = Flags(pos);
                if (cpt == '\'' && pos + 1 < end)
                {
                    int n1 = ToLowerAscii(Cpt(pos + 1));
                    if (n1 is 's' or 't' or 'm' or 'd') { pos += AddToken(pos + 2); continue; }
                    if (pos + 2 < end)
                    {
                        int n2 = ToLowerAscii(Cpt(pos + 2));
                        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) { pos += AddToken(pos + 3); continue; }
                    }
                }
                if (!(cpt == '\r' || cpt == '\n' || flags == Cat.Number))
                {
                    if (flags == Cat.Letter || Flags(pos + 1) == Cat.Letter)
                    {
                        pos++;
                        while (Flags(pos) == Cat.Letter) pos++;
                        AddToken(pos);
                        continue;
                    }
                }
                if (flags == Cat.Number)
                {
                    int i0 = pos;
                    while (Flags(pos) == Cat.Number)
                        if (++pos - i0 >= 3) { AddToken(pos); i0 = pos; }
                    AddToken(pos);
                    continue;
                }
                Cat f2 = cpt == ' ' ? Flags(pos + 1) : flags;
                if (IsOther(f2) && flags != Cat.None)
                {
                    if (cpt == ' ') pos++;
                    while (IsOther(f2)) f2 = Flags(++pos);
                    int c2 = Cpt(pos);
                    while (c2 == '\r' || c2 == '\n') c2 = Cpt(++pos);
                    AddToken(pos);
                    continue;
                }
                int nws = 0, lastRn = 0;
                while (Flags(pos + nws) == Cat.Whitespace)
                {
                    int c2 = Cpt(pos + nws);
                    if (c2 == '\r' || c2 == '\n') lastRn = pos + nws + 1;
                    nws++;
                }
                if (lastRn > 0) { pos = lastRn; AddToken(pos); continue; }
                if (nws > 1 && Cpt(pos + nws) != -1) { pos += nws - 1; AddToken(pos); continue; }
                if (nws > 0) { pos += nws; AddToken(pos); continue; }
                AddToken(++pos);
            }
        }
        return res;
    }

    // [^\s\p{L}\p{N}] for a code point inside the text (Cat.None marks "outside the current word").
    static bool IsOther(Cat c) => c is Cat.Punctuation or Cat.Other;

    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
    static List<int> Gpt2(int[] cpts, Cat[] cats, List<int> offsets)
    {
        var res = new List<int>(cpts.Length / 3 + 1);
        int start = 0;
        foreach (int len in offsets)
        {
            int ini = start, end = start + len;
            start = end;
            int Cpt(int p) => p >= ini && p < end ? cpts[p] : -1;
            Cat Flags(int p) => p >= ini && p < end ? cats[p] : Cat.None;
            int prevEnd = ini;
            int AddToken(int e) { int l = e - prevEnd; if (l > 0) res.Add(l); prevEnd = e; return l; }

            for (int pos = ini; pos < end;)
            {
                int cpt = Cpt(pos);
                Cat flags = Flags(pos);
                if (cpt == '\'' && pos + 1 < end)
                {
                    int n1 = Cpt(pos + 1);
                    if (n1 is 's' or 't' or 'm' or 'd') { pos += AddToken(pos + 2); continue; }
                    if (pos + 2 < end)
                    {
                        int n2 = Cpt(pos + 2);
                        if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) { pos += AddToken(pos + 3); continue; }
                    }
                }
                Cat f2 = cpt == ' ' ? Flags(pos + 1) : flags;
                if (f2 == Cat.Letter)
                {
                    if (cpt == ' ') pos++;
                    while (f2 == Cat.Letter) f2 = Flags(++pos);
                    AddToken(pos);
                    continue;
                }
                if (f2 == Cat.Number)
                {
                    if (cpt == ' ') pos++;
                    while (f2 == Cat.Number) f2 = Flags(++pos);
                    AddToken(pos);
                    continue;
                }
                if (IsOther(f2))
                {
                    if (cpt == ' ') pos++;
                    while (IsOther(f2)) f2 = Flags(++pos);
                    AddToken(pos);
                    continue;
                }
                int nws = 0;
                while (Flags(pos + nws) == Cat.Whitespace) nws++;
                if (nws > 1 && Cpt(pos + nws) != -1) { pos += nws - 1; AddToken(pos); continue; }
                if (nws > 0) { pos += nws; AddToken(pos); continue; }
                AddToken(++pos);
            }
        }
        return res;
    }
}
