using Cria.Formats;
using Cria.Tokenization;
using Xunit;

namespace Cria.Tests.Tokenization;

public sealed class BadMetadataTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "cria-badtok-" + Guid.NewGuid().ToString("N")[..8]);

    public BadMetadataTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    static GgufWriter Spm() => new GgufWriter()
        .Set("general.architecture", "llama")
        .Set("tokenizer.ggml.model", "llama")
        .Set("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", "▁a", "a" })
        .Set("tokenizer.ggml.scores", new[] { 0f, 0f, 0f, -1f, -2f })
        .Set("tokenizer.ggml.token_type", new[] { 2, 3, 3, 1, 1 });

    static GgufWriter Bpe() => new GgufWriter()
        .Set("general.architecture", "llama")
        .Set("tokenizer.ggml.model", "gpt2")
        .Set("tokenizer.ggml.pre", "llama-bpe")
        .Set("tokenizer.ggml.tokens", new[] { "a", "b", "ab", "<|begin_of_text|>" })
        .Set("tokenizer.ggml.token_type", new[] { 1, 1, 1, 3 })
        .Set("tokenizer.ggml.merges", new[] { "a b" })
        .Set("tokenizer.ggml.bos_token_id", 3u);

    ModelFormatException Fails(GgufWriter w, string expectedInMessage)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N")[..8] + ".gguf");
        w.Write(path);
        using var f = GgufFile.Open(path);
        var e = Assert.Throws<ModelFormatException>(() => Tokenizer.FromGguf(f));
        Assert.Contains(path, e.Message);
        Assert.Contains(expectedInMessage, e.Message);
        return e;
    }

    Tokenizer Loads(GgufWriter w)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N")[..8] + ".gguf");
        w.Write(path);
        return Tokenizer.FromGguf(path);
    }

    [Fact] public void Valid_files_load() { Assert.IsType<SpmTokenizer>(Loads(Spm())); Assert.IsType<BpeTokenizer>(Loads(Bpe())); }
    [Fact] public void Missing_tokens() => Fails(Spm().Remove("tokenizer.ggml.tokens"), "tokenizer.ggml.tokens");
    [Fact] public void Tokens_not_strings() => Fails(Spm().Set("tokenizer.ggml.tokens", new[] { 1, 2, 3 }), "tokenizer.ggml.tokens");
    [Fact] public void Missing_model() => Fails(Spm().Remove("tokenizer.ggml.model"), "tokenizer.ggml.model");
    [Fact] public void Scores_length_mismatch() => Fails(Spm().Set("tokenizer.ggml.scores", new[] { 0f, 0f }), "scores");
    [Fact] public void Scores_wrong_type() => Fails(Spm().Set("tokenizer.ggml.scores", new[] { "x", "y", "z", "w", "v" }), "scores");
    [Fact] public void Token_types_length_mismatch() => Fails(Spm().Set("tokenizer.ggml.token_type", new[] { 1 }), "token_type");
    [Fact] public void Unknown_model_type() => Fails(Spm().Set("tokenizer.ggml.model", "wordpiece-x"), "wordpiece-x");
    [Fact] public void Bos_out_of_range() => Fails(Spm().Set("tokenizer.ggml.bos_token_id", 5u), "bos_token_id");
    [Fact] public void Eos_out_of_range() => Fails(Spm().Set("tokenizer.ggml.eos_token_id", 1000u), "eos_token_id");
    [Fact] public void Eot_out_of_range() => Fails(Bpe().Set("tokenizer.ggml.eot_token_id", 99u), "eot_token_id");
    [Fact] public void Padding_out_of_range() => Fails(Spm().Set("tokenizer.ggml.padding_token_id", -3), "padding_token_id");
    [Fact] public void Duplicate_token() => Fails(Spm().Set("tokenizer.ggml.tokens", new[] { "<unk>", "<s>", "</s>", "a", "a" }), "duplicate");
    [Fact] public void Bpe_without_merges() => Fails(Bpe().Remove("tokenizer.ggml.merges"), "merges");
    [Fact] public void Bpe_unknown_pre_tokenizer() => Fails(Bpe().Set("tokenizer.ggml.pre", "no-such-pre"), "no-such-pre");
    [Fact] public void Add_bos_without_bos() => Fails(Bpe().Set("tokenizer.ggml.pre", "default").Remove("tokenizer.ggml.bos_token_id").Set("tokenizer.ggml.add_bos_token", true), "bos");
}
