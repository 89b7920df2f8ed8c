using System.Text;
using Cria.Formats;
using Cria.Tokenization;
using Xunit;

namespace Cria.Tests.Tokenization;

/// <summary>A small SPM vocabulary: &lt;unk&gt; &lt;s&gt; &lt;/s&gt;, the 256 byte tokens, and a few pieces with every
/// intermediate prefix (SPM only merges through pieces that exist).</summary>
public sealed class SmallSpmVocab() : VocabFixture(Build, "small-spm")
{
    public static readonly string[] Pieces =
    [
        "▁", "t", "h", "e", "c", "a", "s", "▁t", "▁th", "▁the", "at", "▁c", "▁ca", "▁cat", "he", "▁a", "▁s", "es", "ca",
        "▁▁", "▁▁▁▁", "x", "<", ">", "<s", "é", "▁é",
    ];

    public static GgufWriter BuildWriter()
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { GgufTokenizerBuilder.TokenUnknown, GgufTokenizerBuilder.TokenControl, GgufTokenizerBuilder.TokenControl };
        for (int b = 0; b < 256; b++) { tokens.Add($"<0x{b:X2}>"); types.Add(GgufTokenizerBuilder.TokenByte); }
        tokens.AddRange(Pieces);
        types.AddRange(Pieces.Select(_ => GgufTokenizerBuilder.TokenNormal));
        var scores = tokens.Select((t, i) => types[i] == GgufTokenizerBuilder.TokenNormal ? -(float)i : 0f).ToArray();
        scores[tokens.IndexOf("▁▁")] = -1000; // a low-scoring piece, so merge order is by score and not by id
        return GgufTokenizerBuilder.TinyLlama(tokens.Count)
            .Set("tokenizer.ggml.model", "llama")
            .Set("tokenizer.ggml.tokens", tokens.ToArray())
            .Set("tokenizer.ggml.scores", scores)
            .Set("tokenizer.ggml.token_type", types.ToArray())
            .Set("tokenizer.ggml.bos_token_id", 1u)
            .Set("tokenizer.ggml.eos_token_id", 2u)
            .Set("tokenizer.ggml.unknown_token_id", 0u);
    }

    static GgufWriter Build() => BuildWriter();
}

public sealed class SyntheticSpmTests(SmallSpmVocab f) : IClassFixture<SmallSpmVocab>
{
    static readonly string[] Texts =
    [
        "the cat", "é", "café", "日本", "the 日本 cat é", "  the", "the  ", "    ", "x", "<s>the</s>", "<s", "cheese",
        "the\ncat", "\t\té", "😀", "", " ", "ééé", "<s><s></s>",
    ];

    [Fact]
    public void Encode_matches_llama_cpp()
    {
        foreach (string t in Texts)
            foreach (bool bos in new[] { true, false })
                foreach (bool special in new[] { false, true })
                    Assert.True(f.Llama.Tokenize(t, bos, special).SequenceEqual(f.Cria.Encode(t, bos, special)),
                        $"{RealVocabOracleTests<SmallSpmVocab>.Escape(t)} bos={bos} special={special}: llama.cpp [{string.Join(",", f.Llama.Tokenize(t, bos, special))}] cria [{string.Join(",", f.Cria.Encode(t, bos, special))}]");
    }

    [Fact]
    public void Byte_fallback_gives_utf8_byte_tokens()
    {
        int B(int b) => f.Cria.TokenId($"<0x{b:X2}>");
        // "日本" is not in the vocabulary: "▁" then the six UTF-8 bytes E6 97 A5 E6 9C AC.
        Assert.Equal([1, f.Cria.TokenId("▁"), B(0xE6), B(0x97), B(0xA5), B(0xE6), B(0x9C), B(0xAC)], f.Cria.Encode("日本"));
        // "é" is a piece here; "ç" is not: C3 A7.
        Assert.Equal([1, f.Cria.TokenId("▁ca"), B(0xC3), B(0xA7)], f.Cria.Encode("caç"));
        Assert.Equal([f.Cria.TokenId("▁é")], f.Cria.Encode("é", addBos: false));
        Assert.Equal([f.Cria.TokenId("▁the"), f.Cria.TokenId("▁cat")], f.Cria.Encode("the cat", addBos: false));
        // As in llama.cpp, only the very first piece loses its space: after a BOS the space stays.
        Assert.Equal("the cat", f.Cria.Decode(f.Cria.Encode("the cat", addBos: false)));
        Assert.Equal(" the cat", f.Cria.Decode(f.Cria.Encode("the cat")));
        Assert.Equal([0xE6], f.Cria.TokenBytes(B(0xE6)));
        Assert.Equal("日本 caç", f.Cria.Decode(f.Cria.Encode("日本 caç", addBos: false)));
    }

    [Fact]
    public void Pieces_and_detokenize_match_llama_cpp()
    {
        for (int id = 0; id < f.Cria.VocabSize; id++)
            foreach (bool special in new[] { false, true })
                Assert.Equal(f.Llama.Piece(id, special), f.Cria.TokenBytes(id, special));
        foreach (string t in Texts)
        {
            int[] toks = f.Cria.Encode(t, true, true);
            foreach (bool rm in new[] { false, true })
                foreach (bool un in new[] { false, true })
                    Assert.Equal(f.Llama.Detokenize(toks, rm, un), f.Cria.DetokenizeBytes(toks, rm, un));
        }
    }

    [Fact]
    public void Streaming_holds_partial_characters()
    {
        int B(int b) => f.Cria.TokenId($"<0x{b:X2}>");
        // 😀 = F0 9F 98 80, 日 = E6 97 A5, é = C3 A9, fed byte by byte.
        int[] toks = [B(0xF0), B(0x9F), B(0x98), B(0x80), B(0xE6), B(0x97), B(0xA5), f.Cria.TokenId("x"), B(0xC3), B(0xA9)];
        var d = new StreamingDecoder(f.Cria);
        var outs = toks.Select(d.Add).ToList();
        Assert.Equal(["", "", "", "😀", "", "", "日", "x", "", "é"], outs);
        Assert.Equal("", d.Flush());
        Assert.Equal(f.Cria.Decode(toks), string.Concat(outs));
        Assert.Equal(Encoding.UTF8.GetString(f.Llama.Detokenize(toks, false, false)), string.Concat(outs));

        // An invalid sequence becomes U+FFFD as soon as it can no longer complete, and a dangling start at the end on Flush.
        var d2 = new StreamingDecoder(f.Cria);
        Assert.Equal("", d2.Add(B(0xE6)));
        Assert.Equal("\uFFFDx", d2.Add(f.Cria.TokenId("x")));
        Assert.Equal("", d2.Add(B(0xF0)));
        Assert.Equal("\uFFFD", d2.Flush());
        Assert.Equal("\uFFFDx\uFFFD", f.Cria.Decode([B(0xE6), f.Cria.TokenId("x"), B(0xF0)]));

        // The first piece's space prefix is dropped, later ones kept; control tokens are silent unless rendered.
        var d3 = new StreamingDecoder(f.Cria);
        Assert.Equal("", d3.Add(1));
        Assert.Equal(" the", d3.Add(f.Cria.TokenId("▁the")));
        var d4 = new StreamingDecoder(f.Cria);
        Assert.Equal("the", d4.Add(f.Cria.TokenId("▁the")));
        Assert.Equal(" cat", d4.Add(f.Cria.TokenId("▁cat")));
        Assert.Equal("<s>", new StreamingDecoder(f.Cria, renderSpecial: true).Add(1));
    }

    [Fact]
    public void Eog_is_eos_for_spm()
    {
        Assert.True(f.Cria.IsEog(2));
        Assert.False(f.Cria.IsEog(1));
        for (int id = 0; id < f.Cria.VocabSize; id++) Assert.Equal(f.Llama.IsEog(id), f.Cria.IsEog(id));
    }
}
