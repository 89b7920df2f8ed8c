using System.Text;

namespace Cria.Tokenization;

/// <summary>
/// Byte-level BPE (<c>tokenizer.ggml.model = "gpt2"</c>), as llama.cpp's llm_tokenizer_bpe_session: the text is split into
/// words by the pre-tokenizer, each word's UTF-8 bytes are mapped to GPT-2's printable byte characters, and within a
/// word the adjacent pair with the lowest merge rank (leftmost on ties) is merged until no pair has a rank. With
/// <c>ignore_merges</c> (the Llama 3 pre-tokenizer) a word that is itself a token is emitted whole. O(n log n) per word.
/// </summary>
public sealed class BpeTokenizer : Tokenizer
{
    readonly WordSplitter.Kind _pre;
    readonly bool _ignoreMerges;
    // Strings that can take part in a merge get a small integer id; a merge is then an (id, id) -> (rank, id) lookup.
    readonly Dictionary<string, int> _intern = new(StringComparer.Ordinal);
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _internBySpan;
    readonly Dictionary<long, (int Rank, int Result)> _merges;
    readonly int[] _internToToken;

    /// <summary>GPT-2 bytes_to_unicode: byte → printable character, and back.</summary>
    internal static readonly char[] ByteToChar = BuildByteToChar();
    static readonly Dictionary<char, byte> CharToByte = BuildCharToByte();

    internal BpeTokenizer(in Settings s, string[] merges) : base(s, isBpe: true)
    {
        _pre = WordSplitter.KindOf(s.Pre) ?? throw new ModelFormatException(s.Path,
            $"unsupported pre-tokenizer '{s.Pre}' (tokenizer.ggml.pre; supported: llama-bpe/llama3, gpt-2 family, default)");
        _ignoreMerges = IsLlama3Pre(s.Pre);
        _internBySpan = _intern.GetAlternateLookup<ReadOnlySpan<char>>();
        _merges = new Dictionary<long, (int, int)>(merges.Length);
        for (int i = 0; i < merges.Length; i++)
        {
            string m = merges[i];
            int sp = m.Length > 1 ? m.IndexOf(' ', 1) : -1;
            string a = sp < 0 ? "" : m[..sp], b = sp < 0 ? "" : m[(sp + 1)..];
            long key = ((long)Intern(a) << 32) | (uint)Intern(b);
            _merges.TryAdd(key, (i, Intern(a + b))); // llama.cpp emplaces: the first (lowest) rank of a duplicate wins
        }
        _internToToken = new int[_intern.Count];
        foreach (var (str, id) in _intern) _internToToken[id] = _ids.TryGetValue(str, out int t) ? t : NoToken;
        BuildPieceCache();
    }

    int Intern(string s)
    {
        if (!_intern.TryGetValue(s, out int id)) { id = _intern.Count; _intern.Add(s, id); }
        return id;
    }

    private protected override void EncodeFragments(string text, List<Fragment> fragments, bool addSpecial, List<int> output)
    {
        if (addSpecial && AddBos) output.Add(Bos);
        foreach (var fr in fragments)
        {
            if (fr.Token >= 0) output.Add(fr.Token);
            else TokenizeText(text.Substring(fr.Start, fr.Length), output);
        }
        if (addSpecial && AddEos) output.Add(Eos);
    }

    struct Symbol { public int Start, Len, Prev, Next, Id; }

    sealed class BigramOrder : IComparer<(int Rank, int Left)>
    {
        public static readonly BigramOrder Instance = new();
        public int Compare((int Rank, int Left) a, (int Rank, int Left) b) => a.Rank != b.Rank ? a.Rank.CompareTo(b.Rank) : a.Left.CompareTo(b.Left);
    }

    void TokenizeText(string text, List<int> output)
    {
        int[] cpts = WordSplitter.CodePoints(text);
        var words = WordSplitter.Split(_pre, cpts);
        var sb = new StringBuilder();
        Span<byte> utf8 = stackalloc byte[4];
        var queue = new PriorityQueue<(int Left, int Right, int Size), (int, int)>(BigramOrder.Instance);
        var symbols = new List<Symbol>();
        int at = 0;
        foreach (int wlen in words)
        {
            // The word's bytes in GPT-2's byte alphabet: one char per byte.
            sb.Clear();
            for (int i = at; i < at + wlen; i++)
            {
                int n = new Rune(cpts[i]).EncodeToUtf8(utf8);
                for (int j = 0; j < n; j++) sb.Append(ByteToChar[utf8[j]]);
            }
            at += wlen;
            string word = sb.ToString();
            if (_ignoreMerges && _ids.TryGetValue(word, out int whole)) { output.Add(whole); continue; }

            symbols.Clear();
            queue.Clear();
            for (int i = 0; i < word.Length; i++)
                symbols.Add(new Symbol { Start = i, Len = 1, Prev = i - 1, Next = i + 1 == word.Length ? -1 : i + 1, Id = InternOf(word.AsSpan(i, 1)) });
            var sym = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols);

            for (int i = 1; i < sym.Length; i++) TryAdd(sym, queue, i - 1, i);
            while (queue.TryDequeue(out var bg, out _))
            {
                ref var l = ref sym[bg.Left];
                ref var r = ref sym[bg.Right];
                // Symbols only grow, so an unchanged total length means both sides are still the pair that was queued.
                if (l.Len == 0 || r.Len == 0 || l.Len + r.Len != bg.Size) continue;
                l.Id = _merges[((long)l.Id << 32) | (uint)r.Id].Result;
                l.Len += r.Len;
                r.Len = 0;
                l.Next = r.Next;
                if (r.Next >= 0) sym[r.Next].Prev = bg.Left;
                TryAdd(sym, queue, l.Prev, bg.Left);
                TryAdd(sym, queue, bg.Left, l.Next);
            }

            for (int i = 0; i != -1; i = sym[i].Next)
            {
                ref var s = ref sym[i];
                int tok = s.Id >= 0 ? _internToToken[s.Id] : NoToken;
                if (tok == NoToken && _ids.TryGetValue(word.Substring(s.Start, s.Len), out int t2)) tok = t2;
                if (tok != NoToken) { output.Add(tok); continue; }
                // Not a token: llama.cpp looks up each UTF-8 byte of the symbol text as a one-byte token and drops misses
                // (only ASCII bytes can match a token).
                foreach (char c in word.AsSpan(s.Start, s.Len))
                    if (c < 0x80 && _idsBySpan.TryGetValue(new ReadOnlySpan<char>(in c), out int bt)) output.Add(bt);
            }
        }
    }

    int InternOf(ReadOnlySpan<char> s) => _internBySpan.TryGetValue(s, out int id) ? id : -1;

    void TryAdd(Span<Symbol> sym, PriorityQueue<(int, int, int), (int, int)> queue, int left, int right)
    {
        if (left == -1 || right == -1) return;
        int a = sym[left].Id, b = sym[right].Id;
        if (a < 0 || b < 0 || !_merges.TryGetValue(((long)a << 32) | (uint)b, out var m)) return;
        queue.Enqueue((left, right, sym[left].Len + sym[right].Len), (m.Rank, left));
    }

    private protected override byte[] ComputePiece(int id)
    {
        var a = _attr[id];
        string text = _text[id];
        if ((a & (TokenAttributes.Unknown | TokenAttributes.Control | TokenAttributes.UserDefined)) != 0) return Encoding.UTF8.GetBytes(text);
        if ((a & TokenAttributes.Normal) != 0)
        {
            // llama_decode_text: each character back to its byte; a character outside the byte alphabet is written as
            // "[UNK_BYTE_0x<utf8 hex>" + the whole token text + "]", as llama.cpp does.
            var res = new List<byte>(text.Length);
            Span<byte> u = stackalloc byte[4];
            foreach (var rune in text.EnumerateRunes())
            {
                if (rune.Value < 0x10000 && CharToByte.TryGetValue((char)rune.Value, out byte b)) { res.Add(b); continue; }
                var sb = new StringBuilder("[UNK_BYTE_0x");
                int n = rune.EncodeToUtf8(u);
                for (int j = 0; j < n; j++) sb.Append(u[j].ToString("x2"));
                sb.Append(text).Append(']');
                res.AddRange(Encoding.UTF8.GetBytes(sb.ToString()));
            }
            return res.ToArray();
        }
        if ((a & TokenAttributes.Byte) != 0) return [SpmTokenizer.ParseByteToken(text)];
        return [];
    }

    static char[] BuildByteToChar()
    {
        var map = new char[256];
        var set = new bool[256];
        for (int c = 0x21; c <= 0x7E; c++) { map[c] = (char)c; set[c] = true; }
        for (int c = 0xA1; c <= 0xAC; c++) { map[c] = (char)c; set[c] = true; }
        for (int c = 0xAE; c <= 0xFF; c++) { map[c] = (char)c; set[c] = true; }
        int n = 0;
        for (int c = 0; c < 256; c++) if (!set[c]) map[c] = (char)(256 + n++);
        return map;
    }

    static Dictionary<char, byte> BuildCharToByte()
    {
        var d = new Dictionary<char, byte>(256);
        for (int b = 0; b < 256; b++) d[ByteToChar[b]] = (byte)b;
        return d;
    }
}
