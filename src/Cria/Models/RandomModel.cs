using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>Shape and storage of a random-weight Llama model (for tests, benchmarks and the built-in demo).</summary>
public sealed record RandomModelSpec
{
    public int Dim { get; init; } = 256;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int FfnDim { get; init; } = 768;
    /// <summary>Mixtral-style mixture of experts: experts per layer (0 = dense feed-forward) and experts per token.
    /// Each expert has <see cref="FfnDim"/> hidden units; the router (<c>ffn_gate_inp</c>) is F32, as llama.cpp's
    /// converter writes it.</summary>
    public int Experts { get; init; }
    public int ExpertsUsed { get; init; } = 2;
    /// <summary>Write each expert as its own 2-D tensor (<c>blk.N.ffn_gate.E.weight</c>), as files from before llama.cpp
    /// stacked them did; the values are those of the stacked layout with the same seed.</summary>
    public bool SplitExperts { get; init; }
    /// <summary>Vocabulary size: the synthetic SPM vocabulary (specials, 256 byte tokens, word pieces) padded or cut to this.</summary>
    public int VocabSize { get; init; } = 1024;
    public int ContextLength { get; init; } = 2048;
    public float RopeBase { get; init; } = 10000f;
    public float RmsEps { get; init; } = 1e-5f;
    /// <summary>Type of the 2-D weight matrices (norms stay F32).</summary>
    public GgmlType WeightType { get; init; } = GgmlType.F32;
    /// <summary>Type of the token embedding table (defaults to <see cref="WeightType"/>).</summary>
    public GgmlType? EmbeddingType { get; init; }
    /// <summary>Type of the output head (defaults to <see cref="WeightType"/>).</summary>
    public GgmlType? OutputType { get; init; }
    public bool TiedEmbeddings { get; init; }
    /// <summary>llama.cpp's K-quant "medium" mix on top of <see cref="WeightType"/> (Q4_K or Q5_K): output, and attn_v /
    /// ffn_down of the layers llama.cpp's use_more_bits picks, become Q6_K (what Q4_K_M / Q5_K_M files contain).</summary>
    public bool MediumMix { get; init; }
    /// <summary>Write Llama 3.1-style <c>rope_freqs.weight</c> (llama3 rope scaling, factor 8, original context 8192).</summary>
    public bool Llama3RopeScaling { get; init; }
    public float LinearRopeScale { get; init; }
    public int Seed { get; init; } = 1234;
    /// <summary>Head dimension when it is not Dim / Heads (written as attention.key_length / value_length).</summary>
    public int HeadDim { get; init; }
    /// <summary>Tokenizer metadata to write instead of the synthetic SPM vocabulary (its token count must equal VocabSize).</summary>
    public IReadOnlyList<(string Key, object Value)>? TokenizerMetadata { get; init; }
    /// <summary>Extra metadata (e.g. a real family's keys) written as given.</summary>
    public IReadOnlyList<(string Key, object Value)>? ExtraMetadata { get; init; }
    public string Name { get; init; } = "cria-random";
    /// <summary>"llama", or "olmo2": OLMo 2's block (no pre-norms; attn_q_norm / attn_k_norm over the whole
    /// projections, post_attention_norm and post_ffw_norm on the sub-layer outputs) and NEOX RoPE.</summary>
    public string Architecture { get; init; } = "llama";
}

/// <summary>
/// Writes GGUF files of Llama models with random weights and a small synthetic SentencePiece vocabulary
/// (&lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;, the 256 byte tokens, then word pieces with every prefix present so that SPM
/// merges reach whole words). Speed does not depend on weight values, and llama.cpp loads these files.
/// </summary>
public static class RandomModel
{
    static readonly string[] Words =
    [
        "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "and", "of", "to", "in", "is",
        "that", "it", "was", "for", "on", "are", "with", "as", "his", "they", "be", "at", "one", "have", "this", "from",
        "or", "had", "by", "word", "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when",
        "up", "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way",
        "about", "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make", "thing", "see",
        "him", "two", "has", "look", "more", "day", "could", "go", "come", "did", "number", "sound", "no", "most",
        "people", "my", "water", "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "llama",
        "model", "token", "cria", "once", "upon", "a", "story", "little", "girl", "named", "lily", "happy", "sun",
    ];

    /// <summary>The synthetic vocabulary: (piece, score, token type) in id order.</summary>
    public static (string[] Tokens, float[] Scores, int[] Types) Vocabulary(int size)
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { 2, 3, 3 };
        for (int b = 0; b < 256; b++) { tokens.Add($"<0x{b:X2}>"); types.Add(6); }
        var seen = new HashSet<string>(tokens);
        void Piece(string s) { if (seen.Add(s)) { tokens.Add(s); types.Add(1); } }
        Piece("\u2581");
        foreach (char ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()") Piece(ch.ToString());
        foreach (var w in Words)
        {
            var sp = "\u2581" + w;
            for (int i = 2; i <= sp.Length; i++) Piece(sp[..i]);
            for (int i = 2; i <= w.Length; i++) Piece(w[..i]);
        }
        for (int i = 0; tokens.Count < size; i++) Piece($"<extra_{i}>");
        if (tokens.Count > size) { tokens.RemoveRange(size, tokens.Count - size); types.RemoveRange(size, types.Count - size); }
        var scores = new float[tokens.Count];
        for (int i = 0; i < scores.Length; i++) scores[i] = types[i] == 1 ? -i : 0f;
        return (tokens.ToArray(), scores, types.ToArray());
    }

    public static void Write(string path, RandomModelSpec s)
    {
        if ((s.HeadDim == 0 && s.Dim % s.Heads != 0) || s.Heads % s.KvHeads != 0) throw new ArgumentException("dim must divide by heads, heads by kv heads");
        if (s.VocabSize < 300) throw new ArgumentException("vocabulary must hold at least 300 tokens");
        if (s.Experts < 0 || (s.Experts > 0 && (s.ExpertsUsed < 1 || s.ExpertsUsed > s.Experts))) throw new ArgumentException("experts used must be in 1..experts");
        bool olmo2 = s.Architecture == "olmo2", olmoe = s.Architecture == "olmoe";
        if (!olmo2 && !olmoe && s.Architecture != "llama") throw new ArgumentException($"architecture '{s.Architecture}': llama, olmo2 or olmoe");
        if (olmo2 && (s.Experts > 0 || (s.HeadDim > 0 && s.HeadDim * s.Heads != s.Dim))) throw new ArgumentException("olmo2: dense, with heads × head dim = dim");
        if (olmoe && (s.Experts == 0 || s.KvHeads != s.Heads || (s.HeadDim > 0 && s.HeadDim * s.Heads != s.Dim))) throw new ArgumentException("olmoe: experts, kv heads = heads, heads × head dim = dim");
        int hd = s.HeadDim > 0 ? s.HeadDim : s.Dim / s.Heads;
        int qDim = s.Heads * hd;
        var w = new GgufWriter();
        string a = s.Architecture + ".";
        w.Set("general.architecture", s.Architecture);
        w.Set("general.name", s.Name);
        w.Set(a + "context_length", (uint)s.ContextLength);
        w.Set(a + "embedding_length", (uint)s.Dim);
        w.Set(a + "block_count", (uint)s.Layers);
        w.Set(a + "feed_forward_length", (uint)s.FfnDim);
        w.Set(a + "attention.head_count", (uint)s.Heads);
        w.Set(a + "attention.head_count_kv", (uint)s.KvHeads);
        w.Set(a + "rope.dimension_count", (uint)hd);
        if (s.HeadDim > 0) { w.Set(a + "attention.key_length", (uint)hd); w.Set(a + "attention.value_length", (uint)hd); }
        w.Set(a + "attention.layer_norm_rms_epsilon", s.RmsEps);
        w.Set(a + "rope.freq_base", s.RopeBase);
        w.Set(a + "vocab_size", (uint)s.VocabSize);
        if (s.Experts > 0) { w.Set(a + "expert_count", (uint)s.Experts); w.Set(a + "expert_used_count", (uint)s.ExpertsUsed); }
        if (s.LinearRopeScale > 0)
        {
            w.Set(a + "rope.scaling.type", "linear");
            w.Set(a + "rope.scaling.factor", s.LinearRopeScale);
        }
        w.Set("general.file_type", (uint)FileType(s.WeightType));
        if (s.TokenizerMetadata != null)
            foreach (var (k, v) in s.TokenizerMetadata) w.Set(k, v);
        else
        {
            var (tokens, scores, types) = Vocabulary(s.VocabSize);
            w.Set("tokenizer.ggml.model", "llama");
            w.Set("tokenizer.ggml.tokens", tokens);
            w.Set("tokenizer.ggml.scores", scores);
            w.Set("tokenizer.ggml.token_type", types);
            w.Set("tokenizer.ggml.bos_token_id", 1u);
            w.Set("tokenizer.ggml.eos_token_id", 2u);
            w.Set("tokenizer.ggml.unknown_token_id", 0u);
            w.Set("tokenizer.ggml.add_bos_token", true);
            w.Set("tokenizer.ggml.add_eos_token", false);
        }
        if (s.ExtraMetadata != null)
            foreach (var (k, v) in s.ExtraMetadata) w.Set(k, v);

        var rng = new Random(s.Seed);
        float std = 1f / MathF.Sqrt(s.Dim);
        var embType = s.EmbeddingType ?? s.WeightType;
        // Small enough that tied-embedding logits stay O(1..10), like the untied head.
        w.AddTensor("token_embd.weight", [s.Dim, s.VocabSize], embType, Matrix(rng, s.VocabSize, s.Dim, std * 2, embType));
        w.AddTensor("output_norm.weight", [s.Dim], Norm(rng, s.Dim));
        var outType = s.OutputType ?? (s.MediumMix ? GgmlType.Q6_K : s.WeightType);
        if (!s.TiedEmbeddings) w.AddTensor("output.weight", [s.Dim, s.VocabSize], outType, Matrix(rng, s.VocabSize, s.Dim, std * 2, outType));
        if (s.Llama3RopeScaling) w.AddTensor("rope_freqs.weight", [hd / 2], Llama3FreqFactors(hd, s.RopeBase, 8f, 1f, 4f, 8192));
        for (int l = 0; l < s.Layers; l++)
        {
            string p = $"blk.{l}.";
            var t = s.WeightType;
            var moreBits = s.MediumMix && UseMoreBits(l, s.Layers) ? GgmlType.Q6_K : t;
            if (!olmo2) w.AddTensor(p + "attn_norm.weight", [s.Dim], Norm(rng, s.Dim));
            w.AddTensor(p + "attn_q.weight", [s.Dim, qDim], t, Matrix(rng, qDim, s.Dim, std * 2, t));
            w.AddTensor(p + "attn_k.weight", [s.Dim, s.KvHeads * hd], t, Matrix(rng, s.KvHeads * hd, s.Dim, std * 2, t));
            w.AddTensor(p + "attn_v.weight", [s.Dim, s.KvHeads * hd], moreBits, Matrix(rng, s.KvHeads * hd, s.Dim, std, moreBits));
            w.AddTensor(p + "attn_output.weight", [qDim, s.Dim], t, Matrix(rng, s.Dim, qDim, std, t));
            if (olmo2 || olmoe)
            {
                w.AddTensor(p + "attn_q_norm.weight", [qDim], Norm(rng, qDim));
                w.AddTensor(p + "attn_k_norm.weight", [s.KvHeads * hd], Norm(rng, s.KvHeads * hd));
            }
            if (olmo2)
            {
                w.AddTensor(p + "post_attention_norm.weight", [s.Dim], Norm(rng, s.Dim));
                w.AddTensor(p + "post_ffw_norm.weight", [s.Dim], Norm(rng, s.Dim));
            }
            else w.AddTensor(p + "ffn_norm.weight", [s.Dim], Norm(rng, s.Dim));
            if (s.Experts > 0)
            {
                // Router logits of standard deviation ≈ 2 over unit-RMS inputs: clear but not one-hot choices.
                int n = s.Experts;
                w.AddTensor(p + "ffn_gate_inp.weight", [s.Dim, n], GgmlType.F32, Matrix(rng, n, s.Dim, std * 2, GgmlType.F32));
                void Experts(string name, int rows, int cols, GgmlType type, byte[] stacked)
                {
                    if (!s.SplitExperts) { w.AddTensor(p + name + "_exps.weight", [cols, rows, n], type, stacked); return; }
                    long bytes = GgmlTypeInfo.RowBytes(type, cols) * rows;
                    for (int e = 0; e < n; e++) w.AddTensor($"{p}{name}.{e}.weight", [cols, rows], type, stacked.AsMemory((int)(e * bytes), (int)bytes));
                }
                Experts("ffn_gate", s.FfnDim, s.Dim, t, Matrix(rng, s.FfnDim * n, s.Dim, std, t));
                Experts("ffn_up", s.FfnDim, s.Dim, t, Matrix(rng, s.FfnDim * n, s.Dim, std, t));
                Experts("ffn_down", s.Dim, s.FfnDim, moreBits, Matrix(rng, s.Dim * n, s.FfnDim, 1f / MathF.Sqrt(s.FfnDim), moreBits));
                continue;
            }
            w.AddTensor(p + "ffn_gate.weight", [s.Dim, s.FfnDim], t, Matrix(rng, s.FfnDim, s.Dim, std, t));
            w.AddTensor(p + "ffn_up.weight", [s.Dim, s.FfnDim], t, Matrix(rng, s.FfnDim, s.Dim, std, t));
            w.AddTensor(p + "ffn_down.weight", [s.FfnDim, s.Dim], moreBits, Matrix(rng, s.Dim, s.FfnDim, 1f / MathF.Sqrt(s.FfnDim), moreBits));
        }
        w.Write(path);
    }

    /// <summary>llama.cpp's rule for which layers get more bits in the *_M mixes.</summary>
    public static bool UseMoreBits(int layer, int layers) => layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;

    /// <summary>Llama 3.1's rope frequency divisors (what convert_hf_to_gguf writes as rope_freqs.weight).</summary>
    public static float[] Llama3FreqFactors(int headDim, float ropeBase, float factor, float lowFreqFactor, float highFreqFactor, int originalContext)
    {
        var f = new float[headDim / 2];
        double lowWavelen = originalContext / lowFreqFactor, highWavelen = originalContext / highFreqFactor;
        for (int i = 0; i < f.Length; i++)
        {
            double freq = 1.0 / Math.Pow(ropeBase, 2.0 * i / headDim);
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highWavelen) f[i] = 1f;
            else if (wavelen > lowWavelen) f[i] = factor;
            else
            {
                double smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
                f[i] = (float)(1.0 / ((1 - smooth) / factor + smooth));
            }
        }
        return f;
    }

    static float[] Norm(Random rng, int n)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = 0.8f + 0.4f * (float)rng.NextDouble();
        return v;
    }

    /// <summary>rows × cols uniform random values with standard deviation ≈ std, stored in <paramref name="type"/>.
    /// Rows are generated from per-row seeds and quantized in parallel, so the bytes do not depend on the thread count.</summary>
    static byte[] Matrix(Random rng, int rows, int cols, float std, GgmlType type)
    {
        float a = std * MathF.Sqrt(3f);
        int seed = rng.Next();
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var data = new byte[rowBytes * rows];
        Parallel.For(0, rows, () => new float[cols], (r, _, row) =>
        {
            var rr = new Random(unchecked(seed * 31 + r * 1000003)); // not HashCode.Combine: it is randomized per process
            for (int c = 0; c < cols; c++) row[c] = (float)(rr.NextDouble() * 2 - 1) * a;
            Quantize.Row(type, row, data.AsSpan((int)(r * rowBytes), (int)rowBytes));
            return row;
        }, _ => { });
        return data;
    }

    /// <summary>llama.cpp's LLAMA_FTYPE for a file whose matrices are all of one type.</summary>
    public static int FileType(GgmlType t) => t switch
    {
        GgmlType.F32 => 0, GgmlType.F16 => 1, GgmlType.Q4_0 => 2, GgmlType.Q4_1 => 3, GgmlType.Q8_0 => 7,
        GgmlType.Q5_0 => 8, GgmlType.Q5_1 => 9, GgmlType.Q2_K => 10, GgmlType.Q3_K => 12, GgmlType.Q4_K => 15,
        GgmlType.Q5_K => 17, GgmlType.Q6_K => 18, GgmlType.IQ4_NL => 25, GgmlType.IQ4_XS => 30, GgmlType.BF16 => 32, _ => 0,
    };
}
