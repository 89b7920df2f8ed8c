using System.Text;
using Cria.Inference;
using Cria.Models;
using Cria.Tests.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Oracle;

/// <summary>
/// Files laid out like the real families — TinyLlama, Llama 2, Llama 3, 3.1, 3.2 and Mistral 7B v0.1 — with their
/// real tokenizers (Llama 2's SentencePiece vocabulary, Llama 3's 128K byte-level BPE), their head/GQA ratios, RoPE
/// bases, Llama 3.1 rope_freqs, Llama 3.2's tied embeddings and explicit key_length, and Mistral's extra metadata,
/// scaled down to a few hundred hidden units. Each must load in Cria, tokenize a prompt as llama.cpp does, give the
/// same logits at every position (F32, 1e-4) and the same 16-token greedy continuation.
/// </summary>
public class ModelFamilyTests(ITestOutputHelper output)
{
    static readonly Lazy<List<(string, object)>> Llama2Tok = new(() => GgufTokenizerBuilder.Llama2Tokenizer(Fixtures.TokenizerJson("llama2")));
    static readonly Lazy<List<(string, object)>> Llama3Tok = new(() => GgufTokenizerBuilder.Llama3Tokenizer(Fixtures.TokenizerJson("llama3")));

    /// <summary>The random model of a family (its file written once per test run), e.g. "llama3" with the real
    /// Llama 3 vocabulary.</summary>
    internal static string FamilyModel(string family) =>
        LogitsAgreementTests.ModelFile("family-" + family, Family(family) with { Name = family, Seed = family.Length * 7 });

    static int Vocab(List<(string Key, object Value)> kv) => ((string[])kv.First(e => e.Key == "tokenizer.ggml.tokens").Value).Length;

    static RandomModelSpec Family(string name) => name switch
    {
        "tinyllama" => new() { Dim = 256, Heads = 8, KvHeads = 1, FfnDim = 704, Layers = 2, RopeBase = 10000f, TokenizerMetadata = Llama2Tok.Value, VocabSize = Vocab(Llama2Tok.Value) },
        "llama2" => new() { Dim = 256, Heads = 4, KvHeads = 4, FfnDim = 688, Layers = 2, RopeBase = 10000f, TokenizerMetadata = Llama2Tok.Value, VocabSize = Vocab(Llama2Tok.Value) },
        "llama3" => new() { Dim = 128, Heads = 4, KvHeads = 1, FfnDim = 448, Layers = 2, RopeBase = 500000f, TokenizerMetadata = Llama3Tok.Value, VocabSize = Vocab(Llama3Tok.Value) },
        "llama3.1" => new() { Dim = 128, Heads = 4, KvHeads = 1, FfnDim = 448, Layers = 2, RopeBase = 500000f, Llama3RopeScaling = true, ContextLength = 131072, TokenizerMetadata = Llama3Tok.Value, VocabSize = Vocab(Llama3Tok.Value) },
        "llama3.2" => new() { Dim = 128, Heads = 4, KvHeads = 1, HeadDim = 48, FfnDim = 512, Layers = 2, RopeBase = 500000f, Llama3RopeScaling = true, TiedEmbeddings = true, ContextLength = 131072, TokenizerMetadata = Llama3Tok.Value, VocabSize = Vocab(Llama3Tok.Value) },
        "mistral" => new() { Dim = 256, Heads = 8, KvHeads = 2, FfnDim = 896, Layers = 2, RopeBase = 10000f, ContextLength = 32768, TokenizerMetadata = Llama2Tok.Value, VocabSize = Vocab(Llama2Tok.Value), ExtraMetadata = [("llama.attention.sliding_window", 4096u)] },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [InlineData("tinyllama")]
    [InlineData("llama2")]
    [InlineData("llama3")]
    [InlineData("llama3.1")]
    [InlineData("llama3.2")]
    [InlineData("mistral")]
    public void FamilyLoadsTokenizesAndAgreesWithLlamaCpp(string family)
    {
        var path = FamilyModel(family);
        using var cpp = new LlamaCpp(path);
        using var cria = new CriaRunner(path);
        const string text = "Once upon a time, the quick brown fox 🦊 jumped over 12 lazy dogs — très vite!";
        var mine = cria.Model.Tokenizer.Encode(text, addBos: true);
        var theirs = cpp.Weights.Tokenize(text, true, false, Encoding.UTF8).Select(t => (int)t).ToArray();
        Assert.Equal(theirs, mine);

        var a = cpp.AllLogits(mine);
        var b = cria.AllLogits(mine);
        float worst = 0;
        for (int p = 0; p < mine.Length; p++)
            for (int i = 0; i < a[p].Length; i++) worst = Math.Max(worst, Math.Abs(a[p][i] - b[p][i]));
        output.WriteLine($"{family}: {mine.Length} prompt tokens, vocab {cria.Model.Config.VocabSize}, max |Δ logit| {worst:E2}");
        Assert.True(worst <= 1e-4f, $"{family}: max |Δ logit| {worst}");

        var la = a[^1]; var lb = b[^1];
        for (int step = 0; step < 16; step++)
        {
            int ta = Sampler.ArgMax(la);
            Assert.Equal(ta, Sampler.ArgMax(lb));
            la = cpp.Next(ta, mine.Length + step);
            lb = cria.Next(ta, mine.Length + step);
        }
    }
}
