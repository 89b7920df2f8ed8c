using System.Text;

namespace Cria.Tokenization;

/// <summary>
/// SentencePiece-style tokenizer (<c>tokenizer.ggml.model = "llama"</c>), as llama.cpp's llm_tokenizer_spm_session:
/// spaces become "▁", the text is split into code points, and the adjacent pair whose concatenation is the vocabulary
/// token with the highest score is merged (leftmost on ties) until no pair is a token. Symbols that are not tokens
/// fall back to their UTF-8 bytes as <c>&lt;0xXX&gt;</c> tokens. O(n log n) with a priority queue.
/// </summary>
public sealed class SpmTokenizer : Tokenizer
{
    const char Escape = '\u2581'; // ▁
    readonly int[] _byteTokens = new int[256];

    internal SpmTokenizer(in Settings s) : base(s, isBpe: false)
    {
        for (int b = 0; b < 256; b++)
        {
            // llama_vocab::byte_to_token: "<0xXX>", else the byte itself as a one-character token.
            _byteTokens[b] = _ids.TryGetValue($"<0x{b:X2}>", out int id) ? id
                : b < 0x80 && _ids.TryGetValue(((char)b).ToString(), out id) ? id : NoToken;
        }
        BuildPieceCache();
    }

    private protected override void EncodeFragments(string text, List<Fragment> fragments, bool addSpecial, List<int> output)
    {
        bool prevSpecial = true; // a space goes before the first text and before text that follows a special token
        if (addSpecial && AddBos) output.Add(Bos);
        var sb = new StringBuilder();
        foreach (var fr in fragments)
        {
            if (fr.Token >= 0) { output.Add(fr.Token); prevSpecial = true; continue; }
            sb.Clear();
            if (AddSpacePrefix && prevSpecial) sb.Append(' ');
            sb.Append(text, fr.Start, fr.Length);
            sb.Replace(' ', Escape);
            Tokenize(sb.ToString(), output);
            prevSpecial = false;
        }
        if (addSpecial && AddEos) output.Add(Eos);
    }

    struct Symbol { public int Start, Len, Prev, Next; }

    sealed class BigramOrder : IComparer<(float Score, int Left)>
    {
        public static readonly BigramOrder Instance = new();
        // Highest score first; leftmost first on equal scores (llm_bigram_spm::comparator).
        public int Compare((float Score, int Left) a, (float Score, int Left) b) =>
            a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left);
    }

    void Tokenize(string text, List<int> output)
    {
        if (text.Length == 0) return;
        var sym = new List<Symbol>(text.Length);
        for (int i = 0; i < text.Length;)
        {
            int len = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
            sym.Add(new Symbol { Start = i, Len = len, Prev = sym.Count - 1, Next = i + len == text.Length ? -1 : sym.Count + 1 });
            i += len;
        }
        var symbols = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(sym).ToArray();
        var queue = new PriorityQueue<(int Left, int Right, int Size), (float, int)>(symbols.Length, BigramOrder.Instance);

        void TryAdd(int left, int right)
        {
            if (left == -1 || right == -1) return;
            int size = symbols[left].Len + symbols[right].Len;
            if (!_idsBySpan.TryGetValue(text.AsSpan(symbols[left].Start, size), out int tok)) return;
            queue.Enqueue((left, right, size), (_scores[tok], left));
        }

        for (int i = 1; i < symbols.Length; i++) TryAdd(i - 1, i);
        while (queue.TryDequeue(out var bg, out _))
        {
            ref var l = ref symbols[bg.Left];
            ref var r = ref symbols[bg.Right];
            if (l.Len == 0 || r.Len == 0 || l.Len + r.Len != bg.Size) continue; // stale
            l.Len += r.Len;
            r.Len = 0;
            l.Next = r.Next;
            if (r.Next >= 0) symbols[r.Next].Prev = bg.Left;
            TryAdd(l.Prev, bg.Left);
            TryAdd(bg.Left, l.Next);
        }

        Span<byte> utf8 = stackalloc byte[8];
        for (int i = 0; i != -1; i = symbols[i].Next)
        {
            var s = text.AsSpan(symbols[i].Start, symbols[i].Len);
            if (_idsBySpan.TryGetValue(s, out int tok)) { output.Add(tok); continue; }
            int n = Encoding.UTF8.GetBytes(s, utf8);
            for (int j = 0; j < n; j++)
            {
                int bt = _byteTokens[utf8[j]];
                if (bt == NoToken)
                {
                    if (Unknown == NoToken)
                        throw new CriaException($"{SourcePath}: byte 0x{utf8[j]:X2} has no <0x{utf8[j]:X2}> token and the vocabulary has no unknown token");
                    bt = Unknown;
                }
                output.Add(bt);
            }
        }
    }

    private protected override byte[] ComputePiece(int id)
    {
        var a = _attr[id];
        if ((a & (TokenAttributes.Unknown | TokenAttributes.Control | TokenAttributes.UserDefined)) != 0)
            return Encoding.UTF8.GetBytes(_text[id]);
        if ((a & TokenAttributes.Normal) != 0) return Encoding.UTF8.GetBytes(_text[id].Replace(Escape, ' '));
        if ((a & TokenAttributes.Byte) != 0) return [ParseByteToken(_text[id])];
        return [];
    }

    /// <summary>llama.cpp's token_to_byte: the two hex digits at text[3..5] of "&lt;0xXX&gt;" (strtol: stops at the first non-hex).</summary>
    internal static byte ParseByteToken(string text)
    {
        int v = 0;
        for (int i = 3; i < Math.Min(5, text.Length); i++)
        {
            int d = HexValue(text[i]);
            if (d < 0) break;
            v = v * 16 + d;
        }
        return (byte)v;
    }

    static int HexValue(char c) => c is >= '0' and <= '9' ? c - '0' : c is >= 'a' and <= 'f' ? c - 'a' + 10 : c is >= 'A' and <= 'F' ? c - 'A' + 10 : -1;
}
