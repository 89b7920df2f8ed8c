using System.Text;
using Cria.Formats;
using Cria.Tokenization;

namespace Cria.Training;

/// <summary>
/// A SentencePiece-style vocabulary for <c>tokenizer.ggml.model = "llama"</c>: &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256
/// byte tokens <c>&lt;0xXX&gt;</c> (byte fallback, so any text round-trips), the characters of the corpus, then BPE
/// merges in the order they were learned, each scored −(merge index) so that Cria's and llama.cpp's SPM tokenizers,
/// which merge the highest-scoring pair first, apply them in training order.
/// </summary>
public sealed record TokenizerVocabulary(string[] Tokens, float[] Scores, int[] Types)
{
    public const int Unknown = 0, Bos = 1, Eos = 2;

    public int Count => Tokens.Length;

    /// <summary>Adds the <c>tokenizer.ggml.*</c> metadata of this vocabulary.</summary>
    public void WriteTo(GgufWriter w)
    {
        w.Set("tokenizer.ggml.model", "llama");
        w.Set("tokenizer.ggml.tokens", Tokens);
        w.Set("tokenizer.ggml.scores", Scores);
        w.Set("tokenizer.ggml.token_type", Types);
        w.Set("tokenizer.ggml.bos_token_id", (uint)Bos);
        w.Set("tokenizer.ggml.eos_token_id", (uint)Eos);
        w.Set("tokenizer.ggml.unknown_token_id", (uint)Unknown);
        w.Set("tokenizer.ggml.add_bos_token", true);
        w.Set("tokenizer.ggml.add_eos_token", false);
    }

    /// <summary>Writes a GGUF file holding only this vocabulary (no tensors), atomically.</summary>
    public void Save(string path)
    {
        var w = new GgufWriter();
        w.Set("general.name", "cria-tokenizer");
        WriteTo(w);
        w.Write(path);
    }

    public static TokenizerVocabulary Load(string path)
    {
        using var f = GgufFile.Open(path);
        if (f.Get<string>("tokenizer.ggml.model", "") != "llama" || !f.Metadata.TryGetValue("tokenizer.ggml.tokens", out var t) || t is not string[] tokens
            || !f.Metadata.TryGetValue("tokenizer.ggml.scores", out var s) || s is not float[] scores
            || !f.Metadata.TryGetValue("tokenizer.ggml.token_type", out var ty) || ty is not int[] types
            || scores.Length != tokens.Length || types.Length != tokens.Length)
            throw new CriaException($"{path} does not hold a SentencePiece (llama) vocabulary with tokens, scores and token types");
        return new TokenizerVocabulary(tokens, scores, types);
    }

    /// <summary>The SPM tokenizer of this vocabulary (through a vocabulary-only GGUF, exactly as a model file loads it).</summary>
    public Tokenizer CreateTokenizer()
    {
        string tmp = Path.Combine(Path.GetTempPath(), $"cria-vocab-{Environment.ProcessId}-{Guid.NewGuid():N}.gguf");
        Save(tmp);
        try { return Tokenizer.FromGguf(tmp); }
        finally { File.Delete(tmp); }
    }

    /// <summary>FNV-1a over the tokens, so a checkpoint can tell whether it was trained with this vocabulary.</summary>
    public ulong Hash()
    {
        ulong h = 14695981039346656037UL;
        foreach (var tok in Tokens)
        {
            foreach (char c in tok) { h ^= c; h *= 1099511628211UL; }
            h ^= 0xFF; h *= 1099511628211UL;
        }
        return h;
    }
}

/// <summary>
/// Learns a <see cref="TokenizerVocabulary"/> with SentencePiece-style BPE: text is split into words as the SPM
/// encoder sees it (spaces become "▁" and start a word; a space is prefixed to the text), the alphabet is the
/// characters covering 99.95 % of the text (the rest fall back to bytes), and the most frequent adjacent pair of
/// symbols inside words is merged until the vocabulary is full. Deterministic: ties go to the ordinally smaller piece.
/// </summary>
public static class TokenizerTrainer
{
    const char Escape = '\u2581';

    public static TokenizerVocabulary Train(string text, int vocabSize, int maxPieceLength = 16, double characterCoverage = 0.9995)
    {
        if (vocabSize < 300) throw new CriaException($"vocabulary size must be at least 300 (3 specials + 256 bytes + characters), got {vocabSize}");
        if (string.IsNullOrEmpty(text)) throw new CriaException("cannot train a tokenizer on empty text");

        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { 2, 3, 3 };
        for (int b = 0; b < 256; b++) { tokens.Add($"<0x{b:X2}>"); types.Add(6); }
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < tokens.Count; i++) ids[tokens[i]] = i;

        // 1. words as the SPM encoder sees them, with counts
        string norm = (" " + text).Replace(' ', Escape);
        var charCounts = new Dictionary<string, long>(StringComparer.Ordinal);
        var words = new Dictionary<string, long>(StringComparer.Ordinal);
        int start = 0;
        void EndWord(int end)
        {
            if (end > start) { var w = norm[start..end]; words[w] = words.GetValueOrDefault(w) + 1; }
        }
        for (int i = 0; i < norm.Length;)
        {
            int len = char.IsHighSurrogate(norm[i]) && i + 1 < norm.Length && char.IsLowSurrogate(norm[i + 1]) ? 2 : 1;
            char c = norm[i];
            if (c == Escape) { EndWord(i); start = i; }
            else if (c < 0x20 || char.IsSurrogate(c) && len == 1) { EndWord(i); start = i + len; i += len; continue; }
            var ch = norm.Substring(i, len);
            charCounts[ch] = charCounts.GetValueOrDefault(ch) + 1;
            i += len;
        }
        EndWord(norm.Length);

        // 2. alphabet: most frequent characters up to the coverage
        long totalChars = charCounts.Values.Sum();
        var alphabet = charCounts.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        int maxChars = (vocabSize - tokens.Count) / 2;
        long covered = 0;
        var symbolText = new List<string>();              // symbol id → text
        var symbolIds = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (ch, count) in alphabet)
        {
            if (symbolText.Count >= maxChars || (double)covered / totalChars >= characterCoverage && symbolText.Count > 0) break;
            covered += count;
            symbolIds[ch] = symbolText.Count;
            symbolText.Add(ch);
        }
        if (!symbolIds.ContainsKey(Escape.ToString()) && symbolText.Count < maxChars) { symbolIds[Escape.ToString()] = symbolText.Count; symbolText.Add(Escape.ToString()); }
        int charsEnd = symbolText.Count;

        // 3. words as symbol sequences (characters outside the alphabet split words: they become byte tokens)
        var wordSyms = new List<int[]>();
        var wordCounts = new List<long>();
        var buf = new List<int>();
        foreach (var (w, count) in words.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            buf.Clear();
            for (int i = 0; i < w.Length;)
            {
                int len = char.IsHighSurrogate(w[i]) && i + 1 < w.Length && char.IsLowSurrogate(w[i + 1]) ? 2 : 1;
                if (symbolIds.TryGetValue(w.Substring(i, len), out int id)) buf.Add(id);
                else { Flush(); }
                i += len;
            }
            Flush();
            void Flush()
            {
                if (buf.Count >= 2) { wordSyms.Add(buf.ToArray()); wordCounts.Add(count); }
                buf.Clear();
            }
        }

        // 4. pair counts, then merges
        var pairs = new Dictionary<long, long>();
        static long Key(int a, int b) => (long)a << 32 | (uint)b;
        void CountWord(int[] s, int len, long c)
        {
            for (int i = 0; i + 1 < len; i++)
            {
                long k = Key(s[i], s[i + 1]);
                long v = pairs.GetValueOrDefault(k) + c;
                if (v == 0) pairs.Remove(k); else pairs[k] = v;
            }
        }
        var lengths = new int[wordSyms.Count];
        for (int w = 0; w < wordSyms.Count; w++) { lengths[w] = wordSyms[w].Length; CountWord(wordSyms[w], lengths[w], wordCounts[w]); }

        var mergeTexts = new List<string>();
        while (tokens.Count + charsEnd + mergeTexts.Count < vocabSize)
        {
            long bestKey = -1, bestCount = 0; string? bestText = null;
            foreach (var (k, c) in pairs)
            {
                if (c < bestCount || c < 1) continue;
                int a = (int)(k >> 32), b = (int)(k & 0xFFFFFFFF);
                if (symbolText[a].Length + symbolText[b].Length > maxPieceLength) continue;
                if (c == bestCount)
                {
                    string t = symbolText[a] + symbolText[b];
                    if (string.CompareOrdinal(t, bestText) >= 0) continue;
                    bestText = t;
                }
                else bestText = symbolText[a] + symbolText[b];
                bestKey = k; bestCount = c;
            }
            if (bestKey < 0) break;
            int left = (int)(bestKey >> 32), right = (int)(bestKey & 0xFFFFFFFF);
            string merged = bestText!;
            if (!symbolIds.TryGetValue(merged, out int newId))
            {
                newId = symbolText.Count;
                symbolIds[merged] = newId;
                symbolText.Add(merged);
                mergeTexts.Add(merged);
            }
            for (int w = 0; w < wordSyms.Count; w++)
            {
                var s = wordSyms[w]; int len = lengths[w];
                bool has = false;
                for (int i = 0; i + 1 < len; i++) if (s[i] == left && s[i + 1] == right) { has = true; break; }
                if (!has) continue;
                CountWord(s, len, -wordCounts[w]);
                int o = 0;
                for (int i = 0; i < len; i++)
                {
                    if (i + 1 < len && s[i] == left && s[i + 1] == right) { s[o++] = newId; i++; }
                    else s[o++] = s[i];
                }
                lengths[w] = o;
                CountWord(s, o, wordCounts[w]);
            }
            pairs.Remove(bestKey);
        }

        // 5. the vocabulary: merges first in learned order (scores −1, −2, …), then the characters
        var scores = new List<float> { 0, 0, 0 };
        for (int b = 0; b < 256; b++) scores.Add(0);
        for (int i = 0; i < charsEnd; i++) { tokens.Add(symbolText[i]); types.Add(1); scores.Add(-(mergeTexts.Count + 1 + i)); }
        for (int i = 0; i < mergeTexts.Count; i++) { tokens.Add(mergeTexts[i]); types.Add(1); scores.Add(-(i + 1)); }
        return new TokenizerVocabulary(tokens.ToArray(), scores.ToArray(), types.ToArray());
    }

    /// <summary>Reads a corpus file as strict UTF-8, with a clear error for missing, empty or non-UTF-8 files.</summary>
    public static string ReadCorpus(string path)
    {
        if (!File.Exists(path)) throw new CriaException($"corpus file {path} does not exist");
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length == 0) throw new CriaException($"corpus file {path} is empty");
        try
        {
            var text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes);
            if (text.Length > 0 && text[0] == '\uFEFF') text = text[1..];
            if (string.IsNullOrWhiteSpace(text)) throw new CriaException($"corpus file {path} holds only whitespace");
            return text;
        }
        catch (DecoderFallbackException ex) { throw new CriaException($"corpus file {path} is not valid UTF-8 ({ex.Message})"); }
    }
}
