using Cria.Tensors;

namespace Cria.Quantization;

/// <summary>llama.cpp's <c>llama_ftype</c>: what <c>general.file_type</c> holds and what llama-quantize is asked for.</summary>
public enum LlamaFileType
{
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 7, Q5_0 = 8, Q5_1 = 9,
    Q2_K = 10, Q3_K_S = 11, Q3_K_M = 12, Q3_K_L = 13, Q4_K_S = 14, Q4_K_M = 15, Q5_K_S = 16, Q5_K_M = 17, Q6_K = 18,
    IQ2_XXS = 19, IQ2_XS = 20, Q2_K_S = 21, IQ3_XS = 22, IQ3_XXS = 23, IQ1_S = 24, IQ4_NL = 25, IQ3_S = 26, IQ3_M = 27,
    IQ2_S = 28, IQ2_M = 29, IQ4_XS = 30, IQ1_M = 31, BF16 = 32,
}

/// <summary>
/// Per-tensor type choice of llama.cpp's <c>llama_tensor_get_type</c> (src/llama-quant.cpp) for the Llama architecture:
/// the K-quant mixes give attn_v, ffn_down, attn_output and the output head more bits, by layer position, and fall
/// back to a 32-block type when a row length is not a multiple of 256. A model with exactly 8 experts (Mixtral) gets
/// llama.cpp's extra rules: attn_v and attn_k in Q8_0, attn_output in Q5_K for the 2–4-bit K mixes; the stacked expert
/// tensors (<c>ffn_*_exps</c>) take the dense rules of their names, by layer. The counters
/// (<c>i_attention_wv</c>, <c>i_ffn_down</c>) advance in llama.cpp's tensor order (<see cref="TensorOrder"/>), so the
/// tensors must be asked about in that order.
/// </summary>
public sealed class QuantMix
{
    public LlamaFileType FileType { get; }
    public GgmlType DefaultType { get; }
    readonly int _nLayer, _nAttentionWv, _gqa, _nExpert;
    readonly bool _hasOutput, _hasImatrix, _is70B;
    int _iAttentionWv, _iFfnDown, _iFfnGate, _iFfnUp;
    /// <summary>Tensors that took a fallback type because their rows do not fit the block size.</summary>
    public int Fallbacks { get; private set; }

    public QuantMix(LlamaFileType ftype, int nLayer, int nHead, int nHeadKv, int nAttentionWv, bool hasOutput, bool hasImatrix, int nExpert = 0)
    {
        _nExpert = nExpert;
        FileType = ftype;
        DefaultType = DefaultTypeOf(ftype);
        _nLayer = nLayer; _nAttentionWv = nAttentionWv; _gqa = nHead / Math.Max(1, nHeadKv);
        _hasOutput = hasOutput; _hasImatrix = hasImatrix;
        _is70B = nLayer == 80; // llama.cpp's LLM_TYPE_70B for the llama architecture
    }

    public static GgmlType DefaultTypeOf(LlamaFileType f) => f switch
    {
        LlamaFileType.F32 => GgmlType.F32, LlamaFileType.F16 => GgmlType.F16, LlamaFileType.BF16 => GgmlType.BF16,
        LlamaFileType.Q4_0 => GgmlType.Q4_0, LlamaFileType.Q4_1 => GgmlType.Q4_1, LlamaFileType.Q5_0 => GgmlType.Q5_0,
        LlamaFileType.Q5_1 => GgmlType.Q5_1, LlamaFileType.Q8_0 => GgmlType.Q8_0, LlamaFileType.Q2_K or LlamaFileType.Q2_K_S => GgmlType.Q2_K,
        LlamaFileType.Q3_K_S or LlamaFileType.Q3_K_M or LlamaFileType.Q3_K_L => GgmlType.Q3_K,
        LlamaFileType.Q4_K_S or LlamaFileType.Q4_K_M => GgmlType.Q4_K,
        LlamaFileType.Q5_K_S or LlamaFileType.Q5_K_M => GgmlType.Q5_K,
        LlamaFileType.Q6_K => GgmlType.Q6_K,
        LlamaFileType.IQ4_NL => GgmlType.IQ4_NL, LlamaFileType.IQ4_XS => GgmlType.IQ4_XS,
        LlamaFileType.IQ2_XXS => GgmlType.IQ2_XXS, LlamaFileType.IQ2_XS or LlamaFileType.IQ2_S => GgmlType.IQ2_XS,
        LlamaFileType.IQ2_M => GgmlType.IQ2_S, LlamaFileType.IQ3_XXS => GgmlType.IQ3_XXS,
        LlamaFileType.IQ3_XS or LlamaFileType.IQ3_S or LlamaFileType.IQ3_M => GgmlType.IQ3_S,
        LlamaFileType.IQ1_S => GgmlType.IQ1_S, LlamaFileType.IQ1_M => GgmlType.IQ1_M,
        _ => throw new ArgumentOutOfRangeException(nameof(f), f, "unsupported file type"),
    };

    /// <summary>Parses llama-quantize's type names (case-insensitive): q4_k_m, Q8_0, … ; q3_k / q4_k / q5_k mean the _M mixes, as there.</summary>
    public static LlamaFileType Parse(string s) => s.ToUpperInvariant() switch
    {
        "F32" => LlamaFileType.F32, "F16" => LlamaFileType.F16, "BF16" => LlamaFileType.BF16,
        "Q4_0" => LlamaFileType.Q4_0, "Q4_1" => LlamaFileType.Q4_1, "Q5_0" => LlamaFileType.Q5_0, "Q5_1" => LlamaFileType.Q5_1,
        "Q8_0" => LlamaFileType.Q8_0, "Q2_K" => LlamaFileType.Q2_K,
        "Q3_K_S" => LlamaFileType.Q3_K_S, "Q3_K" or "Q3_K_M" => LlamaFileType.Q3_K_M, "Q3_K_L" => LlamaFileType.Q3_K_L,
        "Q4_K_S" => LlamaFileType.Q4_K_S, "Q4_K" or "Q4_K_M" => LlamaFileType.Q4_K_M,
        "Q5_K_S" => LlamaFileType.Q5_K_S, "Q5_K" or "Q5_K_M" => LlamaFileType.Q5_K_M, "Q6_K" => LlamaFileType.Q6_K,
        "IQ4_NL" => LlamaFileType.IQ4_NL, "IQ4_XS" => LlamaFileType.IQ4_XS,
        "IQ2_XXS" => LlamaFileType.IQ2_XXS, "IQ2_XS" => LlamaFileType.IQ2_XS, "IQ2_S" => LlamaFileType.IQ2_S, "IQ2_M" => LlamaFileType.IQ2_M,
        "IQ3_XXS" => LlamaFileType.IQ3_XXS, "IQ3_XS" => LlamaFileType.IQ3_XS, "IQ3_S" => LlamaFileType.IQ3_S, "IQ3_M" => LlamaFileType.IQ3_M,
        "IQ1_S" => LlamaFileType.IQ1_S, "IQ1_M" => LlamaFileType.IQ1_M, "Q2_K_S" => LlamaFileType.Q2_K_S,
        _ => throw new CriaException($"unknown quantization type '{s}' (q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q2_k_s q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k iq4_nl iq4_xs iq3_m iq3_s iq3_xs iq3_xxs iq2_m iq2_s iq2_xs iq2_xxs iq1_m iq1_s f16 bf16 f32)"),
    };

    /// <summary>Whether llama-quantize quantizes this tensor at all: 2-D and 3-D (stacked experts) weights, not norms,
    /// not a mixture's router (<c>ffn_gate_inp</c>), not the output head unless asked.</summary>
    public static bool IsQuantizable(string name, int nDims, bool quantizeOutput) =>
        name.EndsWith("weight", StringComparison.Ordinal) && nDims >= 2 && !name.Contains("_norm.weight", StringComparison.Ordinal)
        && !name.Contains("ffn_gate_inp.weight", StringComparison.Ordinal) && (quantizeOutput || name != "output.weight");

    /// <summary>Whether llama-quantize refuses to write tensor <paramref name="name"/> as <paramref name="type"/> in a
    /// <paramref name="ftype"/> file without an importance matrix: the 1–2-bit lattice types and IQ3_XXS (whose
    /// quantizers are not usable on plain round-to-nearest), and Q2_K inside a Q2_K_S file; never the token embedding
    /// or the output head (llama-quant.cpp's tensor_requires_imatrix).</summary>
    public static bool RequiresImatrix(string name, GgmlType type, LlamaFileType ftype) =>
        name is not ("token_embd.weight" or "output.weight") && (type switch
        {
            GgmlType.IQ3_XXS or GgmlType.IQ2_XXS or GgmlType.IQ2_XS or GgmlType.IQ2_S or GgmlType.IQ1_M or GgmlType.IQ1_S => true,
            GgmlType.Q2_K => ftype == LlamaFileType.Q2_K_S,
            _ => false,
        });

    static bool UseMoreBits(int i, int n) => i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;

    /// <summary>Block layer index of "blk.N.…" (-1 for the others), llama.cpp's weight_name_comparer key.</summary>
    public static int LayerOf(string name)
    {
        if (!name.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int end = name.IndexOf('.', 4);
        return end > 4 && int.TryParse(name.AsSpan(4, end - 4), out int l) ? l : -1;
    }

    /// <summary>llama.cpp's tensor order in llama-quantize (std::map with weight_name_comparer): by layer (non-block first), then by name (ordinal).</summary>
    public static int TensorOrder(string a, string b)
    {
        int la = LayerOf(a), lb = LayerOf(b);
        return la != lb ? la.CompareTo(lb) : string.CompareOrdinal(a, b);
    }

    /// <summary>The 1–2-bit lattice mixes, which take their own branch of llama_tensor_get_type.</summary>
    static bool IsVeryLowBit(LlamaFileType f) => f is LlamaFileType.IQ2_XXS or LlamaFileType.IQ2_XS or LlamaFileType.IQ1_S
        or LlamaFileType.IQ2_S or LlamaFileType.IQ2_M or LlamaFileType.IQ1_M;

    /// <summary>The type for tensor <paramref name="name"/> with rows of <paramref name="nx"/> elements. Call in <see cref="TensorOrder"/>.</summary>
    public GgmlType TypeFor(string name, long nx)
    {
        var ftype = FileType;
        var t = DefaultType;
        bool iq2s = ftype is LlamaFileType.IQ2_S or LlamaFileType.IQ2_M;
        if (name == "output.weight" || (!_hasOutput && name == "token_embd.weight"))
        {
            if (nx % GgmlTypeInfo.BlockSize(t) != 0) t = GgmlType.Q8_0;
            else if (IsVeryLowBit(ftype) || ftype == LlamaFileType.IQ3_XXS) t = GgmlType.Q5_K;
            else if (t != GgmlType.Q8_0) t = GgmlType.Q6_K;
        }
        else if (name == "token_embd.weight")
        {
            // only the IQ / TQ file types change the token embedding
            if (ftype is LlamaFileType.IQ2_XXS or LlamaFileType.IQ2_XS or LlamaFileType.IQ1_S or LlamaFileType.IQ1_M) t = GgmlType.Q2_K;
            else if (iq2s || ftype == LlamaFileType.IQ3_XXS) t = GgmlType.IQ3_S;
        }
        else if (IsVeryLowBit(ftype))
        {
            if (name.Contains("attn_v.weight", StringComparison.Ordinal))
            {
                t = _gqa >= 4 || _nExpert >= 4 ? GgmlType.Q4_K : iq2s ? GgmlType.IQ3_S : GgmlType.Q2_K;
                _iAttentionWv++;
            }
            else if (_nExpert == 8 && name.Contains("attn_k.weight", StringComparison.Ordinal)) t = GgmlType.Q4_K;
            else if (name.Contains("ffn_down", StringComparison.Ordinal))
            {
                if (_iFfnDown < _nLayer / 8) t = iq2s ? GgmlType.IQ3_S : GgmlType.Q2_K;
                _iFfnDown++;
            }
            else if (name.Contains("attn_output.weight", StringComparison.Ordinal))
            {
                if (_nExpert == 8) t = GgmlType.Q5_K;
                else if (ftype is LlamaFileType.IQ1_S or LlamaFileType.IQ1_M) t = GgmlType.IQ2_XXS;
                else if (iq2s) t = GgmlType.IQ3_S;
            }
        }
        else if (name.Contains("attn_v.weight", StringComparison.Ordinal))
        {
            if (ftype == LlamaFileType.Q2_K) t = _gqa >= 4 ? GgmlType.Q4_K : GgmlType.Q3_K;
            else if (ftype == LlamaFileType.Q2_K_S && _gqa >= 4) t = GgmlType.Q4_K;
            else if (ftype == LlamaFileType.IQ3_XXS) t = _gqa >= 4 ? GgmlType.Q4_K : !_hasImatrix ? GgmlType.IQ3_S : GgmlType.IQ3_XXS;
            else if (ftype is LlamaFileType.IQ3_XS or LlamaFileType.IQ3_S && _gqa >= 4) t = GgmlType.Q4_K;
            else if (ftype == LlamaFileType.IQ3_M) t = GgmlType.Q4_K;
            else if (ftype == LlamaFileType.Q3_K_M) t = _iAttentionWv < 2 ? GgmlType.Q5_K : GgmlType.Q4_K;
            else if (ftype == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
            else if (ftype is LlamaFileType.IQ4_NL or LlamaFileType.IQ4_XS && _gqa >= 4) t = GgmlType.Q5_K;
            else if ((ftype == LlamaFileType.Q4_K_M || ftype == LlamaFileType.Q5_K_M) && UseMoreBits(_iAttentionWv, _nAttentionWv)) t = GgmlType.Q6_K;
            else if (ftype == LlamaFileType.Q4_K_S && _iAttentionWv < 4) t = GgmlType.Q5_K;
            if (_is70B && (t == GgmlType.Q3_K || t == GgmlType.Q4_K)) t = GgmlType.Q5_K;
            if (_nExpert == 8) t = GgmlType.Q8_0; // llama.cpp: "bumping this to Q8_0 trades just ~128MB"
            _iAttentionWv++;
        }
        else if (name.Contains("attn_k.weight", StringComparison.Ordinal))
        {
            if (_nExpert == 8) t = GgmlType.Q8_0;
            else if (ftype == LlamaFileType.IQ3_XS) t = GgmlType.IQ3_XXS;
            else if (ftype == LlamaFileType.IQ3_XXS) t = GgmlType.IQ2_S;
        }
        else if (name.Contains("attn_q.weight", StringComparison.Ordinal))
        {
            if (ftype == LlamaFileType.IQ3_XS) t = GgmlType.IQ3_XXS;
            else if (ftype == LlamaFileType.IQ3_XXS) t = GgmlType.IQ2_S;
        }
        else if (name.Contains("ffn_down", StringComparison.Ordinal))
        {
            // With experts, llama.cpp reads the layer from the name (older files have one ffn_down per expert).
            int iLayer = _nExpert > 1 ? LayerOf(name) : _iFfnDown, nLayer = _nLayer;
            if (ftype == LlamaFileType.Q2_K) t = GgmlType.Q3_K;
            else if (ftype == LlamaFileType.Q2_K_S) { if (iLayer < nLayer / 8) t = GgmlType.Q4_K; }
            else if (ftype == LlamaFileType.IQ3_XXS && !_hasImatrix) t = iLayer < nLayer / 8 ? GgmlType.Q4_K : GgmlType.Q3_K;
            else if (ftype == LlamaFileType.Q3_K_M) t = iLayer < nLayer / 16 ? GgmlType.Q5_K : GgmlType.Q4_K; // arch != FALCON
            else if (ftype == LlamaFileType.IQ3_M && (iLayer < nLayer / 8 || (_nExpert == 8 && UseMoreBits(iLayer, nLayer)))) t = GgmlType.Q4_K;
            else if (ftype == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
            else if (ftype == LlamaFileType.Q4_K_M) { if (UseMoreBits(iLayer, nLayer)) t = GgmlType.Q6_K; }
            else if (iLayer < nLayer / 8 && ftype is LlamaFileType.IQ4_NL or LlamaFileType.IQ4_XS && !_hasImatrix) t = GgmlType.Q5_K;
            else if (ftype == LlamaFileType.Q5_K_M && UseMoreBits(iLayer, nLayer)) t = GgmlType.Q6_K;
            else if (ftype == LlamaFileType.Q4_K_S && iLayer < nLayer / 8) t = GgmlType.Q5_K;
            else if ((ftype == LlamaFileType.Q4_0 || ftype == LlamaFileType.Q5_0) && _hasImatrix && iLayer < nLayer / 8)
                t = ftype == LlamaFileType.Q4_0 ? GgmlType.Q4_1 : GgmlType.Q5_1;
            _iFfnDown++;
        }
        else if (name.Contains("attn_output.weight", StringComparison.Ordinal))
        {
            if (_nExpert == 8)
            {
                if (ftype is LlamaFileType.Q2_K or LlamaFileType.IQ3_XS or LlamaFileType.IQ3_XXS or LlamaFileType.Q3_K_S or LlamaFileType.Q3_K_M
                    or LlamaFileType.IQ4_NL or LlamaFileType.Q4_K_S or LlamaFileType.Q4_K_M or LlamaFileType.IQ3_S or LlamaFileType.IQ3_M or LlamaFileType.IQ4_XS)
                    t = GgmlType.Q5_K;
            }
            else if (ftype == LlamaFileType.Q2_K) t = GgmlType.Q3_K;
            else if (ftype == LlamaFileType.IQ3_XXS) t = GgmlType.IQ3_S;
            else if (ftype == LlamaFileType.Q3_K_M) t = GgmlType.Q4_K;
            else if (ftype == LlamaFileType.Q3_K_L) t = GgmlType.Q5_K;
            else if (ftype == LlamaFileType.IQ3_M) t = GgmlType.Q4_K;
        }
        else if (name.Contains("ffn_gate", StringComparison.Ordinal) || name.Contains("ffn_up", StringComparison.Ordinal))
        {
            // IQ3_XS keeps the middle three quarters of the gate and up projections in IQ3_XXS (layer counters per name)
            bool gate = name.Contains("ffn_gate", StringComparison.Ordinal);
            int iLayer = _nExpert > 1 ? LayerOf(name) : gate ? _iFfnGate : _iFfnUp;
            if (ftype == LlamaFileType.IQ3_XS && iLayer >= _nLayer / 8 && iLayer < 7 * _nLayer / 8) t = GgmlType.IQ3_XXS;
            if (gate) _iFfnGate++; else _iFfnUp++;
        }

        if (nx % GgmlTypeInfo.BlockSize(t) != 0)
        {
            // Q2_K/Q3_K → Q4_0, IQ4_XS and the lattice types → IQ4_NL, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; F16 if even that does not fit.
            // (What LLamaSharp 0.30's llama.cpp writes: QuantizerOracleTests. The llama-quant.cpp sources read
            // elsewhere send Q2_K/Q3_K to IQ4_NL too; this build does not.)
            t = t switch
            {
                GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
                var l when l == GgmlType.IQ4_XS || GgmlTypeInfo.IsLattice(l) => GgmlType.IQ4_NL,
                GgmlType.Q4_K => GgmlType.Q5_0,
                GgmlType.Q5_K => GgmlType.Q5_1,
                GgmlType.Q6_K => GgmlType.Q8_0,
                _ => throw new CriaException($"tensor '{name}': rows of {nx} elements cannot be stored as {t}"),
            };
            if (nx % GgmlTypeInfo.BlockSize(t) != 0) t = GgmlType.F16;
            Fallbacks++;
        }
        return t;
    }
}
