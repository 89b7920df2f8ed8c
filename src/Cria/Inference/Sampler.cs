using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cria.Inference;

/// <summary>
/// Sampling settings, with llama.cpp's defaults (common_params_sampling). Temperature ≤ 0 means greedy: the argmax of
/// the logits after the logit bias, the penalties and DRY. Every "off" value below is llama.cpp's.
/// </summary>
public sealed record SamplerOptions
{
    public float Temperature { get; init; } = 0.8f;
    public int TopK { get; init; } = 40;            // 0 = off
    public float TopP { get; init; } = 0.95f;       // 1 = off
    public float MinP { get; init; } = 0.05f;       // 0 = off
    public float RepeatPenalty { get; init; } = 1.0f; // 1 = off
    public float FrequencyPenalty { get; init; }
    public float PresencePenalty { get; init; }
    public int PenaltyLastN { get; init; } = 64;    // how many recent tokens the penalties look at
    public ulong Seed { get; init; } = 0xC71A;

    /// <summary>Added to a token's logit before anything else (OpenAI's logit_bias; −∞ bans the token).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }
    /// <summary>Locally typical sampling (Meister et al. 2022): keep the tokens whose surprise is closest to the
    /// entropy, up to this much probability. 1 = off.</summary>
    public float TypicalP { get; init; } = 1f;
    /// <summary>Top-nσ (Tang et al. 2024): keep the tokens whose logit is within n standard deviations of the largest.
    /// ≤ 0 = off.</summary>
    public float TopNSigma { get; init; } = -1f;
    /// <summary>XTC, "exclude top choices": with this probability per token, drop every token at or above
    /// <see cref="XtcThreshold"/> except the least likely of them. 0 = off.</summary>
    public float XtcProbability { get; init; }
    public float XtcThreshold { get; init; } = 0.1f;  // > 0.5 = off
    /// <summary>DRY, "don't repeat yourself": a token that would extend a repetition of n ≥ <see cref="DryAllowedLength"/>
    /// tokens of the context loses multiplier·base^(n − allowed) from its logit. 0 = off.</summary>
    public float DryMultiplier { get; init; }
    public float DryBase { get; init; } = 1.75f;
    public int DryAllowedLength { get; init; } = 2;
    public int DryPenaltyLastN { get; init; } = -1;   // tokens DRY looks back over; −1 = the whole context, 0 = off
    /// <summary>Text that ends a repetition for DRY: a repeat never reaches back past one.</summary>
    public IReadOnlyList<string> DrySequenceBreakers { get; init; } = DefaultDryBreakers;
    public static readonly IReadOnlyList<string> DefaultDryBreakers = ["\n", ":", "\"", "*"];
    /// <summary>Dynamic temperature (entropy-based): the temperature ranges over [T − range, T + range] with the
    /// normalised entropy of the candidates raised to <see cref="DynatempExponent"/>. 0 = off.</summary>
    public float DynatempRange { get; init; }
    public float DynatempExponent { get; init; } = 1f;
    /// <summary>Mirostat (Basu et al. 2021), version 1 or 2, in place of top-k … XTC: the truncation adapts so that
    /// the surprise of the chosen tokens tracks τ (<see cref="MirostatTau"/>) at learning rate η. 0 = off.</summary>
    public int Mirostat { get; init; }
    public float MirostatTau { get; init; } = 5f;
    public float MirostatEta { get; init; } = 0.1f;
    /// <summary>The fewest candidates top-p, min-p, typical and XTC leave (0: at least one).</summary>
    public int MinKeep { get; init; }

    public const int MaxDryBreakers = 32;
    public const int MaxDryBreakerBytes = 40; // llama.cpp truncates longer ones

    public static SamplerOptions Greedy => new() { Temperature = 0 };

    /// <summary>True when a token's distribution depends on nothing but the logits and the tokens so far, so that
    /// speculative decoding can verify drafts against it: not with XTC (a coin per token) or mirostat (its state moves
    /// with each draw).</summary>
    public bool Deterministic => !(XtcProbability > 0 && XtcThreshold <= 0.5f) && Mirostat == 0;

    public bool DryOn => DryMultiplier != 0 && DryPenaltyLastN != 0;

    public void Validate()
    {
        if (float.IsNaN(Temperature)) throw new CriaException("temperature is NaN");
        if (TopK < 0) throw new CriaException($"top_k must be ≥ 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new CriaException($"top_p must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw new CriaException($"min_p must be in [0, 1], got {MinP}");
        if (!(RepeatPenalty > 0)) throw new CriaException($"repeat penalty must be > 0, got {RepeatPenalty}");
        if (PenaltyLastN < 0) throw new CriaException($"penalty window must be ≥ 0, got {PenaltyLastN}");
        if (!float.IsFinite(FrequencyPenalty) || !float.IsFinite(PresencePenalty)) throw new CriaException("penalties must be finite");
        if (!(TypicalP >= 0 && TypicalP <= 1)) throw new CriaException($"typical_p must be in [0, 1], got {TypicalP}");
        if (!float.IsFinite(TopNSigma)) throw new CriaException($"top_n_sigma must be finite, got {TopNSigma}");
        if (!(XtcProbability >= 0 && XtcProbability <= 1)) throw new CriaException($"xtc_probability must be in [0, 1], got {XtcProbability}");
        if (!(XtcThreshold >= 0 && XtcThreshold <= 1)) throw new CriaException($"xtc_threshold must be in [0, 1], got {XtcThreshold}");
        if (!(DryMultiplier >= 0 && float.IsFinite(DryMultiplier))) throw new CriaException($"dry_multiplier must be ≥ 0, got {DryMultiplier}");
        if (!(DryBase >= 1 && float.IsFinite(DryBase))) throw new CriaException($"dry_base must be ≥ 1, got {DryBase}");
        if (DryAllowedLength < 0) throw new CriaException($"dry_allowed_length must be ≥ 0, got {DryAllowedLength}");
        if (DryPenaltyLastN < -1) throw new CriaException($"dry_penalty_last_n must be ≥ -1, got {DryPenaltyLastN}");
        if (DrySequenceBreakers is null) throw new CriaException("dry_sequence_breakers is null");
        if (DrySequenceBreakers.Count > MaxDryBreakers) throw new CriaException($"at most {MaxDryBreakers} DRY sequence breakers, got {DrySequenceBreakers.Count}");
        foreach (var b in DrySequenceBreakers)
            if (string.IsNullOrEmpty(b)) throw new CriaException("a DRY sequence breaker is empty");
        if (!(DynatempRange >= 0 && float.IsFinite(DynatempRange))) throw new CriaException($"dynatemp_range must be ≥ 0, got {DynatempRange}");
        if (!(DynatempExponent >= 0 && float.IsFinite(DynatempExponent))) throw new CriaException($"dynatemp_exponent must be ≥ 0, got {DynatempExponent}");
        if (Mirostat is < 0 or > 2) throw new CriaException($"mirostat must be 0, 1 or 2, got {Mirostat}");
        if (!(MirostatTau >= 0 && float.IsFinite(MirostatTau))) throw new CriaException($"mirostat_tau must be ≥ 0, got {MirostatTau}");
        if (!(MirostatEta >= 0 && float.IsFinite(MirostatEta))) throw new CriaException($"mirostat_eta must be ≥ 0, got {MirostatEta}");
        if (MinKeep < 0) throw new CriaException($"min_keep must be ≥ 0, got {MinKeep}");
        if (LogitBias != null)
            foreach (var (id, bias) in LogitBias)
            {
                if (id < 0) throw new CriaException($"logit_bias: token {id} is negative");
                if (float.IsNaN(bias) || float.IsPositiveInfinity(bias)) throw new CriaException($"logit_bias of token {id} must be a number or −∞, got {bias}");
            }
    }

    /// <summary><see cref="Validate()"/>, and every logit_bias token inside a vocabulary of this size.</summary>
    public void Validate(int vocabSize)
    {
        Validate();
        if (LogitBias != null)
            foreach (var id in LogitBias.Keys)
                if (id >= vocabSize) throw new CriaException($"logit_bias: token {id} is outside the vocabulary (0..{vocabSize - 1})");
    }
}

/// <summary>
/// llama.cpp's sampler chain (common_sampler with its default order), one sequence's worth:
/// logit bias → penalties → DRY → top-nσ → top-k → typical → top-p → min-p → XTC → temperature (or dynamic
/// temperature) → pick; or, with mirostat, logit bias → penalties → DRY → temperature → mirostat → pick.
/// It remembers the recent tokens (penalties, DRY), mirostat's μ, and owns a seeded RNG, so a given seed repeats
/// exactly. All buffers are allocated once; sampling a token allocates nothing.
/// </summary>
/// <remarks>Where Cria departs from llama.cpp, on purpose: under mirostat llama.cpp's common chain drops the penalties and
/// DRY (Cria keeps them: they are logit changes the user asked for); typical sampling skips tokens of probability 0 in
/// the entropy (llama.cpp's 0·log 0 makes it NaN); a greedy sampler takes the argmax after the logit changes without
/// running the truncations (llama.cpp's temperature 0 runs them, which only matters for typical and XTC, the two that
/// can drop the most likely token).</remarks>
public sealed class Sampler
{
    readonly SamplerOptions _o;
    readonly int _vocab;
    readonly float[] _logits;       // [vocab] working copy
    readonly int[] _ids;            // [vocab] candidate ids, _ids[0..n)
    readonly float[] _p;            // [vocab] candidate probabilities, _p[i] for _ids[i]
    // Scratch, [vocab] each, allocated on first need (the default chain and temperature alone need at most one):
    float[]? _keys;                 // the radix sort's keys (as uint); typical's scores
    int[]? _order;                  // typical's candidate order; the radix sort's second id buffer
    uint[]? _radixKeys;             // the radix sort's second key buffer; the draw search's bucket members
    float[] Keys => _keys ??= new float[_vocab];
    int[] OrderBuffer => _order ??= new int[_vocab];
    uint[] RadixKeys => _radixKeys ??= new uint[_vocab];
    readonly int[] _recent;         // ring buffer of the last PenaltyLastN accepted tokens
    readonly int[] _counts;         // [vocab] occurrences within the ring
    int _recentCount, _recentHead;
    readonly int[] _biasIds;        // [bias entries] logit bias, as arrays
    readonly float[] _biasValues;
    readonly Dry? _dry;
    float _mu;                      // mirostat's target surprise bound, starts at 2τ
    int _lastN;                     // candidates of the last distribution (mirostat's update reads them)
    bool _sorted;                   // whether they are sorted (most likely first)
    bool _identity;                 // whether they are the whole vocabulary in id order (then _ids is not written)
    float _wholeMin, _wholeMax;     // with _identity: the least finite and the largest logit
    ulong _s0, _s1, _s2, _s3;       // xoshiro256** state

    public SamplerOptions Options => _o;

    /// <summary>A sampler over a vocabulary of <paramref name="vocabSize"/> tokens. DRY reads text, so it needs
    /// <paramref name="vocabulary"/> (the model's tokenizer and context length).</summary>
    public Sampler(int vocabSize, SamplerOptions? options = null, SamplerVocabulary? vocabulary = null)
    {
        _o = options ?? new SamplerOptions();
        _o.Validate(vocabSize);
        _vocab = vocabSize;
        _logits = new float[vocabSize]; _ids = new int[vocabSize]; _p = new float[vocabSize];
        _recent = new int[Math.Max(1, _o.PenaltyLastN)];
        _counts = new int[vocabSize];
        _biasIds = _o.LogitBias?.Keys.ToArray() ?? [];
        _biasValues = _o.LogitBias?.Values.ToArray() ?? [];
        if (_o.DryOn)
        {
            if (vocabulary == null) throw new CriaException("DRY needs the model's vocabulary (its sequence breakers are text)");
            if (vocabulary.Tokenizer.VocabSize != vocabSize) throw new CriaException($"the vocabulary has {vocabulary.Tokenizer.VocabSize} tokens, the sampler {vocabSize}");
            _dry = new Dry(_o, vocabulary);
        }
        Reseed(_o.Seed);
        _mu = 2 * _o.MirostatTau;
    }

    public void Reseed(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    /// <summary>Records a token as generated (or part of the prompt) for the penalties and DRY.</summary>
    public void Accept(int token)
    {
        _dry?.Accept(token);
        if (_o.PenaltyLastN == 0) return;
        if (_recentCount == _recent.Length)
        {
            _counts[_recent[_recentHead]]--;
            _recent[_recentHead] = token;
            _recentHead = (_recentHead + 1) % _recent.Length;
        }
        else { _recent[(_recentHead + _recentCount) % _recent.Length] = token; _recentCount++; }
        _counts[token]++;
    }

    public void Reset()
    {
        Array.Clear(_counts); _recentCount = 0; _recentHead = 0;
        _dry?.Reset();
        _mu = 2 * _o.MirostatTau;
        Reseed(_o.Seed);
    }

    /// <summary>Mirostat's current bound μ on the surprise (bits) of a candidate.</summary>
    public float MirostatMu => _mu;

    /// <summary>Picks the next token from a row of logits.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        int n = Candidates(logits);
        if (_o.Temperature <= 0) return _ids[0];
        double r = NextDouble(), acc = 0;
        int pick = n - 1;
        if (!_sorted) pick = PickInSortedOrder(n, r);
        else for (int i = 0; i < n; i++) { acc += _p[i]; if (r < acc) { pick = i; break; } }
        if (_o.Mirostat != 0) Learn(_p[pick]);
        return _identity ? pick : _ids[pick];
    }

    /// <summary>
    /// Tells mirostat which token was taken from the last distribution (<see cref="Distribution"/>), when the caller
    /// drew it: μ moves by η·(τ − its surprise). <see cref="Sample"/> does this itself. Nothing happens without mirostat.
    /// </summary>
    public void Chosen(int token)
    {
        if (_o.Mirostat == 0 || _o.Temperature <= 0) return;
        for (int i = 0; i < _lastN; i++)
            if (_ids[i] == token) { Learn(_p[i]); return; }
        throw new ArgumentException($"token {token} is not a candidate of the last distribution", nameof(token));
    }

    void Learn(float p) => _mu -= _o.MirostatEta * (-MathF.Log2(p) - _o.MirostatTau);

    /// <summary>
    /// The distribution <see cref="Sample"/> draws from, written densely into <paramref name="probs"/> [vocab] (zero
    /// outside the candidates; one-hot when greedy). Speculative decoding verifies drafts against it.
    /// </summary>
    public void Distribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        if (probs.Length != _vocab) throw new ArgumentException($"expected {_vocab} probabilities, got {probs.Length}");
        int n = Candidates(logits);
        if (_identity) { _p.AsSpan(0, n).CopyTo(probs); return; }
        probs.Clear();
        for (int i = 0; i < n; i++) probs[_ids[i]] = _p[i];
    }

    /// <summary>
    /// The softmax at temperature 1 of the logits after the logit bias, penalties and DRY, over the whole vocabulary
    /// (no truncation): the distribution whose mode a greedy sampler picks. RAPID nudges it when the target decodes
    /// greedily.
    /// </summary>
    public void SoftDistribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        if (logits.Length != _vocab || probs.Length != _vocab) throw new ArgumentException($"expected {_vocab} logits and probabilities, got {logits.Length}, {probs.Length}");
        var l = _logits.AsSpan();
        logits.CopyTo(l);
        ApplyLogitChanges(l);
        float max = float.NegativeInfinity;
        foreach (var v in l) if (v > max) max = v;
        double sum = 0;
        for (int i = 0; i < _vocab; i++) { float e = MathF.Exp(l[i] - max); probs[i] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < _vocab; i++) probs[i] *= inv;
    }

    /// <summary>The logits after the logit bias, penalties and DRY (what the truncations then read).</summary>
    internal void ChangedLogits(ReadOnlySpan<float> logits, Span<float> result)
    {
        logits.CopyTo(result);
        ApplyLogitChanges(result);
    }

    /// <summary>A uniform draw in [0, 1) from this sampler's RNG (the stream <see cref="Sample"/> uses).</summary>
    public double NextUniform() => NextDouble();

    /// <summary>
    /// Applies the chain up to the final softmax: the surviving candidates are <c>_ids[0..n)</c> with probabilities
    /// <c>_p[0..n)</c>; returns n (1 when greedy).
    /// </summary>
    int Candidates(ReadOnlySpan<float> logits)
    {
        if (logits.Length != _vocab) throw new ArgumentException($"expected {_vocab} logits, got {logits.Length}");
        var l = _logits.AsSpan();
        logits.CopyTo(l);
        ApplyLogitChanges(l);
        _identity = false;
        if (_o.Temperature <= 0) { _ids[0] = ArgMax(l); _p[0] = 1f; _sorted = true; return _lastN = 1; }

        if (_o.Mirostat != 0) return _lastN = MirostatCandidates();

        // The candidates start as the whole vocabulary, "dense" (_ids not yet written: the first filter reads the
        // logits directly). They are sorted (most likely first) only where a step needs the order: after top-k, for
        // top-p (its top 256 first, as llama.cpp), for XTC. A draw still takes them in that order (see Order).
        int n = _vocab;
        bool dense = true, sorted = false;
        if (_o.TopNSigma > 0) { n = TopNSigma(l); dense = false; }
        if (_o.TopK > 0 && _o.TopK < n)
        {
            n = dense ? SelectTopKDense(l, _o.TopK) : SelectTopK(l, n, _o.TopK);
            dense = false;
            SortByLogitDescending(n);
            sorted = true;
        }
        if (_o.TypicalP < 1f) { Materialize(ref dense, n); n = Typical(n); sorted = false; }
        if (_o.TopP < 1f) { Materialize(ref dense, n); n = TopP(l, n, ref sorted); }
        if (_o.MinP > 0f)
        {
            if (dense) n = MinPDense(l, ref dense);
            else n = MinP(l, n, sorted);
        }
        if (dense && !(_o.XtcProbability > 0f) && !(_o.DynatempRange > 0f))
        {
            // No filter ran: the whole vocabulary in id order, _ids left unwritten; a draw searches it in walk order.
            SoftmaxWhole(_o.Temperature);
            _sorted = false;
            _identity = true;
            return _lastN = n;
        }
        Materialize(ref dense, n);
        if (_o.XtcProbability > 0f) n = Xtc(n, sorted);
        Order(n, sorted);
        if (_o.DynatempRange > 0f) return _lastN = DynamicTemperature(n);
        Softmax(n, _o.Temperature);
        return _lastN = n;
    }

    /// <summary>
    /// Before the final softmax: up to 256 unsorted candidates are sorted, so that a draw walks them most likely first;
    /// more are left as they are and <see cref="Sample"/> finds the draw's token in that same order without sorting
    /// (<see cref="PickInSortedOrder"/>). Either way a seed picks the token it picked when every sampler sorted.
    /// </summary>
    void Order(int n, bool sorted)
    {
        _identity = false;
        if (!sorted && n <= 256) { SortByLogitDescending(n); sorted = true; }
        _sorted = sorted;
    }

    /// <summary>
    /// The candidate at cumulative probability r when the candidates are walked most likely first (equal logits:
    /// lower id first), found without sorting them: the candidates go into 1 024 buckets by logit (a monotone map, so
    /// the buckets are in walk order and equal logits share one), the bucket whose mass holds r is found, and only its
    /// members are sorted and walked. Past the total (rounding), the last candidate in that order, as a walk gives.
    /// </summary>
    int PickInSortedOrder(int n, double r)
    {
        const int Buckets = 1024;
        var l = _logits;
        var p = _p;
        float max = float.NegativeInfinity, min = float.PositiveInfinity;
        if (_identity) (min, max) = (_wholeMin, _wholeMax); // the whole vocabulary in id order: read it directly
        else
            for (int i = 0; i < n; i++)
            {
                float v = l[_ids[i]];
                if (v > max) max = v;
                if (v < min && v > float.NegativeInfinity) min = v;
            }
        float scale = max > min ? Buckets / (max - min) * 0.999f : 0f;
        // larger logit → lower bucket; −∞ → +∞ → the last bucket
        int Bucket(float logit) { float x = (max - logit) * scale; return x < Buckets - 1 ? (int)x : Buckets - 1; }
        Span<double> mass = stackalloc double[Buckets];
        mass.Clear();
        if (_identity) for (int i = 0; i < n; i++) mass[Bucket(l[i])] += p[i];
        else for (int i = 0; i < n; i++) mass[Bucket(l[_ids[i]])] += p[i];
        double acc = 0;
        int chosen = -1, last = 0;
        for (int b = 0; b < Buckets; b++)
        {
            if (mass[b] == 0) continue;
            last = b;
            if (r < acc + mass[b]) { chosen = b; break; }
            acc += mass[b];
        }
        if (chosen < 0) { chosen = last; acc -= mass[last]; } // r past the total: the last nonempty bucket
        var members = MemoryMarshal.Cast<uint, int>(RadixKeys.AsSpan(0, n));
        int count = 0;
        if (_identity) { for (int i = 0; i < n; i++) if (Bucket(l[i]) == chosen) members[count++] = i; }
        else for (int i = 0; i < n; i++) if (Bucket(l[_ids[i]]) == chosen) members[count++] = i;
        var rest = members[..count];
        SortInWalkOrder(rest);
        for (int j = 0; j < rest.Length; j++) { acc += _p[rest[j]]; if (r < acc) return rest[j]; }
        return rest[^1];
    }

    /// <summary>Whether candidate a comes after candidate b in walk order (larger logit first, then lower id).</summary>
    bool After(int a, int b)
    {
        int ia = _identity ? a : _ids[a], ib = _identity ? b : _ids[b];
        float la = _logits[ia], lb = _logits[ib];
        return la < lb || (la == lb && ia > ib);
    }

    /// <summary>Candidates (indexes into _ids) into walk order: insertion sort when few, else heapsort (no allocation).</summary>
    void SortInWalkOrder(Span<int> m)
    {
        if (m.Length <= 32)
        {
            for (int a = 1; a < m.Length; a++)
            {
                int x = m[a], b = a - 1;
                while (b >= 0 && After(m[b], x)) { m[b + 1] = m[b]; b--; }
                m[b + 1] = x;
            }
            return;
        }
        // a max-heap by walk order's "after" (the last in walk order at the root), then the root to the end
        for (int i = m.Length / 2 - 1; i >= 0; i--) Sift(m, i, m.Length);
        for (int end = m.Length - 1; end > 0; end--)
        {
            (m[0], m[end]) = (m[end], m[0]);
            Sift(m, 0, end);
        }
    }

    void Sift(Span<int> m, int i, int n)
    {
        while (true)
        {
            int a = 2 * i + 1, b = a + 1, top = i;
            if (a < n && After(m[a], m[top])) top = a;
            if (b < n && After(m[b], m[top])) top = b;
            if (top == i) return;
            (m[i], m[top]) = (m[top], m[i]);
            i = top;
        }
    }

    /// <summary>A logit's bits as a key that orders larger logits first (the radix sort's and select's key).</summary>
    static uint DescendingKey(float logit)
    {
        uint b = BitConverter.SingleToUInt32Bits(logit + 0f); // −0 + 0 = +0: the two zeros are one logit
        return (b & 0x8000_0000u) != 0 ? b : ~b & 0x7FFF_FFFFu;
    }

    /// <summary>Writes the dense candidates out: _ids[0..n) = 0..n−1.</summary>
    void Materialize(ref bool dense, int n)
    {
        if (!dense) return;
        for (int i = 0; i < n; i++) _ids[i] = i;
        dense = false;
    }

    /// <summary>
    /// The k largest logits of the whole vocabulary into _ids[0..k) (heap order), reading the logits directly: eight at
    /// a time are skipped unless one beats the heap's smallest, which after the first few thousand is rare.
    /// </summary>
    int SelectTopKDense(ReadOnlySpan<float> l, int k)
    {
        var heap = _ids.AsSpan(0, k);
        for (int i = 0; i < k; i++) heap[i] = i;
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(heap, l, i);
        float floor = l[heap[0]];
        int id = k, V = l.Length;
        // ids only grow, so an equal logit never displaces the root (the lower id wins ties): strictly greater only
        ref float l0 = ref MemoryMarshal.GetReference(l);
        for (; id + 8 <= V; id += 8)
        {
            if (!Vector256.GreaterThanAny(Vector256.LoadUnsafe(ref l0, (nuint)id), Vector256.Create(floor))) continue;
            for (int j = id; j < id + 8; j++)
                if (l[j] > floor) { heap[0] = j; SiftDown(heap, l, 0); floor = l[heap[0]]; }
        }
        for (; id < V; id++)
            if (l[id] > floor) { heap[0] = id; SiftDown(heap, l, 0); floor = l[heap[0]]; }
        return k;
    }

    /// <summary>Min-p over the whole vocabulary, reading the logits directly (the unsorted path of <see cref="MinP"/>).</summary>
    int MinPDense(ReadOnlySpan<float> l, ref bool dense)
    {
        float cut = FiniteRange(l).Max + MathF.Log(_o.MinP);
        // the ids at or above the cut, eight logits at a time skipped when none is (the usual case)
        int kept = 0, i = 0;
        ref float l0 = ref MemoryMarshal.GetReference(l);
        for (; i + 8 <= l.Length; i += 8)
        {
            if (!Vector256.GreaterThanOrEqualAny(Vector256.LoadUnsafe(ref l0, (nuint)i), Vector256.Create(cut))) continue;
            for (int j = i; j < i + 8; j++) if (l[j] >= cut) _ids[kept++] = j;
        }
        for (; i < l.Length; i++) if (l[i] >= cut) _ids[kept++] = i;
        if (kept < _o.MinKeep) { dense = true; Materialize(ref dense, l.Length); return MinP(l, l.Length, sorted: false); }
        dense = false;
        return kept;
    }

    /// <summary>The least finite logit (+∞ if none) and the largest (−∞ if all are), eight at a time; NaN logits are not
    /// expected.</summary>
    static (float Min, float Max) FiniteRange(ReadOnlySpan<float> l)
    {
        var lo = Vector256.Create(float.PositiveInfinity);
        var hi = Vector256.Create(float.NegativeInfinity);
        var minusInf = Vector256.Create(float.NegativeInfinity);
        int i = 0;
        ref float l0 = ref MemoryMarshal.GetReference(l);
        for (; i + 8 <= l.Length; i += 8)
        {
            var v = Vector256.LoadUnsafe(ref l0, (nuint)i);
            hi = Vector256.Max(hi, v);
            lo = Vector256.Min(lo, Vector256.ConditionalSelect(Vector256.Equals(v, minusInf), Vector256.Create(float.PositiveInfinity), v));
        }
        float min = float.PositiveInfinity, max = float.NegativeInfinity;
        for (int j = 0; j < 8; j++) { min = Math.Min(min, lo[j]); max = Math.Max(max, hi[j]); }
        for (; i < l.Length; i++)
        {
            max = Math.Max(max, l[i]);
            if (l[i] > float.NegativeInfinity) min = Math.Min(min, l[i]);
        }
        return (min, max);
    }

    /// <summary>
    /// Top-p: the most likely candidates until their probability reaches p (at least min_keep). Unsorted candidates
    /// beyond 1 024 have only their top 256 sorted first; the rest are sorted only if those do not reach p.
    /// </summary>
    int TopP(ReadOnlySpan<float> l, int n, ref bool sorted)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++) max = MathF.Max(max, l[_ids[i]]);
        double sum = 0;
        for (int i = 0; i < n; i++) sum += MathF.Exp(l[_ids[i]] - max);
        float inv = (float)(1.0 / sum);
        int prefix = n; // _ids[0..prefix) sorted
        if (!sorted)
        {
            prefix = n > 1024 ? 256 : n;
            if (prefix < n) SelectTopK(l, n, prefix);
            SortByLogitDescending(prefix);
        }
        float cum = 0;
        for (int i = 0; i < n; i++)
        {
            if (i == prefix) { SortByLogitDescending(n); prefix = n; } // the top 256 fell short of p
            cum += MathF.Exp(l[_ids[i]] - max) * inv;
            if (cum >= _o.TopP && i + 1 >= _o.MinKeep) { sorted = true; return i + 1; }
        }
        if (prefix < n) SortByLogitDescending(n);
        sorted = true;
        return n;
    }

    /// <summary>Min-p: the candidates with p ≥ min_p · p_max, tested on the logits as llama.cpp does (l ≥ l_max +
    /// log min_p); unsorted candidates are filtered in place, keeping their order, unless fewer than min_keep pass.</summary>
    int MinP(ReadOnlySpan<float> l, int n, bool sorted)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++) max = MathF.Max(max, l[_ids[i]]);
        float cut = max + MathF.Log(_o.MinP);
        if (!sorted)
        {
            int pass = 0;
            for (int i = 0; i < n; i++) if (l[_ids[i]] >= cut) pass++;
            if (pass >= Math.Max(1, _o.MinKeep))
            {
                int kept = 0;
                for (int i = 0; i < n; i++) if (l[_ids[i]] >= cut) _ids[kept++] = _ids[i];
                return kept;
            }
            SortByLogitDescending(n);
        }
        int keep = 1;
        while (keep < n && (l[_ids[keep]] >= cut || keep < _o.MinKeep)) keep++;
        return keep;
    }

    /// <summary>The logit changes that come before any truncation: logit bias, then the penalties, then DRY.</summary>
    void ApplyLogitChanges(Span<float> l)
    {
        for (int i = 0; i < _biasIds.Length; i++) l[_biasIds[i]] += _biasValues[i];
        ApplyPenalties(l);
        _dry?.Apply(l);
    }

    void ApplyPenalties(Span<float> l)
    {
        if (_recentCount == 0) return;
        bool rep = _o.RepeatPenalty != 1f, freq = _o.FrequencyPenalty != 0f, pres = _o.PresencePenalty != 0f;
        if (!rep && !freq && !pres) return;
        for (int i = 0; i < _recentCount; i++)
        {
            int t = _recent[(_recentHead + i) % _recent.Length];
            int c = _counts[t];
            if (c <= 0) continue;
            _counts[t] = -c; // mark visited so each distinct token is penalised once
            if (rep) l[t] = l[t] > 0 ? l[t] / _o.RepeatPenalty : l[t] * _o.RepeatPenalty;
            l[t] -= c * _o.FrequencyPenalty + _o.PresencePenalty;
        }
        for (int i = 0; i < _recentCount; i++)
        {
            int t = _recent[(_recentHead + i) % _recent.Length];
            if (_counts[t] < 0) _counts[t] = -_counts[t];
        }
    }

    /// <summary>Top-nσ: keeps the ids whose logit is at least max − n·σ, σ the standard deviation of the finite logits
    /// (float sums, as llama.cpp). llama.cpp sets the others to −∞; here they leave the candidates.</summary>
    int TopNSigma(ReadOnlySpan<float> l)
    {
        float max = float.NegativeInfinity, sum = 0;
        int valid = 0;
        foreach (float v in l)
        {
            if (float.IsNegativeInfinity(v)) continue;
            if (v > max) max = v;
            sum += v; valid++;
        }
        int kept = 0;
        if (valid == 0) { for (int i = 0; i < l.Length; i++) _ids[i] = i; return l.Length; }
        float mean = sum / valid, acc = 0;
        foreach (float v in l)
            if (!float.IsNegativeInfinity(v)) acc += (v - mean) * (v - mean);
        float cut = max - _o.TopNSigma * MathF.Sqrt(acc / valid);
        for (int i = 0; i < l.Length; i++) if (l[i] >= cut) _ids[kept++] = i;
        return kept;
    }

    /// <summary>
    /// Locally typical sampling, as llama.cpp: with p the softmax of the (sorted) candidates and H its entropy, order
    /// them by |−log p − H| and keep the shortest prefix of that order whose probability exceeds typical_p (and at
    /// least min_keep), in that order.
    /// </summary>
    int Typical(int n)
    {
        Softmax(n, 1f);
        float entropy = 0;
        for (int i = 0; i < n; i++) if (_p[i] > 0) entropy += -_p[i] * MathF.Log(_p[i]);
        var scores = Keys.AsSpan(0, n);
        var order = OrderBuffer.AsSpan(0, n);
        for (int i = 0; i < n; i++) { scores[i] = MathF.Abs(-MathF.Log(_p[i]) - entropy); order[i] = i; }
        scores.Sort(order);
        float cum = 0;
        int last = n;
        for (int i = 0; i < n; i++)
        {
            cum += _p[order[i]];
            if (cum > _o.TypicalP && (_o.MinKeep == 0 || i >= _o.MinKeep - 1)) { last = i + 1; break; }
        }
        for (int i = 0; i < last; i++) order[i] = _ids[order[i]];
        order[..last].CopyTo(_ids);
        return last;
    }

    /// <summary>
    /// XTC: with probability xtc_probability, and when two or more candidates reach xtc_threshold, drops all of those
    /// but the least likely (unless fewer than min_keep would be left). The coin is a draw from this sampler's RNG.
    /// </summary>
    int Xtc(int n, bool sorted)
    {
        if (_o.XtcThreshold > 0.5f || n < 2) return n;
        float chance = (float)NextDouble();
        if (chance > _o.XtcProbability) return n;
        if (!sorted) SortByLogitDescending(n);
        Softmax(n, 1f);
        int last = 0;
        for (int i = 0; i < n; i++) { if (_p[i] >= _o.XtcThreshold) last = i; else break; }
        if (n - last >= _o.MinKeep && last > 0)
        {
            _ids.AsSpan(last, n - last).CopyTo(_ids);
            n -= last;
        }
        return n;
    }

    /// <summary>
    /// Dynamic temperature (llama.cpp's temp-ext): T_dyn = max(0, T − r) + 2r·(H / log n)^exponent, H the entropy of
    /// the candidates at temperature 1; T_dyn = 0 keeps the most likely alone.
    /// </summary>
    int DynamicTemperature(int n)
    {
        if (n <= 1) { Softmax(n, 1f); return n; }
        float minT = MathF.Max(0f, _o.Temperature - _o.DynatempRange), maxT = _o.Temperature + _o.DynatempRange;
        float maxEntropy = -MathF.Log(1f / n);
        Softmax(n, 1f);
        float entropy = 0;
        for (int i = 0; i < n; i++) if (_p[i] > 0) entropy -= _p[i] * MathF.Log(_p[i]);
        float t = minT + (maxT - minT) * MathF.Pow(entropy / maxEntropy, _o.DynatempExponent);
        if (t <= 0) { MostLikelyFirst(n); _p[0] = 1f; return 1; }
        Softmax(n, t);
        return n;
    }

    /// <summary>
    /// Mirostat over the whole vocabulary at the temperature, sorted. Version 2 keeps the tokens whose surprise
    /// −log₂ p is at most μ (at least one). Version 1 estimates the Zipf exponent ŝ from the top 100 probabilities and
    /// keeps the top k = (ε̂·2^μ / (1 − V^−ε̂))^(1/ŝ), ε̂ = ŝ − 1. μ itself moves when a token is chosen.
    /// </summary>
    int MirostatCandidates()
    {
        var l = _logits;
        float t = _o.Temperature, max = float.NegativeInfinity;
        int n = _vocab;
        for (int i = 0; i < n; i++) max = MathF.Max(max, l[i]);
        max /= t;
        double sum = 0;
        for (int i = 0; i < n; i++) sum += MathF.Exp(l[i] / t - max);
        float inv = (float)(1.0 / sum);
        float P(int id) => MathF.Exp(l[id] / t - max) * inv; // the softmax Softmax(n, t) computes
        if (_o.Mirostat == 2)
        {
            // every candidate whose surprise is at most μ: llama.cpp's sorted prefix, without the sort
            float least = MathF.Pow(2, -_mu); // −log₂ p ≤ μ ⇔ p ≥ 2^−μ
            int kept = 0;
            for (int i = 0; i < n; i++) if (P(i) >= least) _ids[kept++] = i;
            if (kept == 0) { _ids[0] = ArgMax(l); kept = 1; }
            n = kept;
            Order(n, sorted: false);
        }
        else
        {
            const int m = 100;
            int top = Math.Min(m, n);
            for (int i = 0; i < n; i++) _ids[i] = i;
            SelectTopK(l, n, top);
            SortByLogitDescending(top);
            float sumTb = 0, sumTt = 0;
            for (int i = 0; i < m - 1 && i < n - 1; i++)
            {
                float ti = MathF.Log((i + 2f) / (i + 1f)), bi = MathF.Log(P(_ids[i]) / P(_ids[i + 1]));
                sumTb += ti * bi; sumTt += ti * ti;
            }
            float sHat = sumTb / sumTt, eps = sHat - 1;
            float k = MathF.Pow(eps * MathF.Pow(2, _mu) / (1 - MathF.Pow(_vocab, -eps)), 1 / sHat);
            int keep = !(k >= 1) ? 1 : k >= n ? n : (int)k;
            if (keep > top && keep < n) SelectTopK(l, n, keep);
            Order(keep, sorted: keep <= top);
            n = keep;
        }
        Softmax(n, t);
        return n;
    }

    /// <summary>Index of the largest logit; the lowest index wins ties (as llama.cpp's greedy sampler).</summary>
    public static int ArgMax(ReadOnlySpan<float> l)
    {
        int best = 0;
        float bv = l[0];
        for (int i = 1; i < l.Length; i++) if (l[i] > bv) { bv = l[i]; best = i; }
        return best;
    }

    /// <summary>Moves the k largest-logit ids of _ids[0..n) to _ids[0..k) (in heap order) with a min-heap; the others
    /// stay in _ids[k..n). Returns k.</summary>
    int SelectTopK(ReadOnlySpan<float> l, int n, int k)
    {
        var heap = _ids.AsSpan(0, k); // heap of ids by logit (min at root)
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(heap, l, i);
        for (int j = k; j < n; j++)
        {
            int id = _ids[j];
            if (Less(l, heap[0], id)) { _ids[j] = heap[0]; heap[0] = id; SiftDown(heap, l, 0); }
        }
        return k;
    }

    /// <summary>Swaps the most likely of _ids[0..n) to the front.</summary>
    void MostLikelyFirst(int n)
    {
        int best = 0;
        for (int i = 1; i < n; i++) if (Less(_logits, _ids[best], _ids[i])) best = i;
        (_ids[0], _ids[best]) = (_ids[best], _ids[0]);
    }

    static void SiftDown(Span<int> h, ReadOnlySpan<float> l, int i)
    {
        while (true)
        {
            int a = 2 * i + 1, b = a + 1, m = i;
            if (a < h.Length && Less(l, h[a], h[m])) m = a;
            if (b < h.Length && Less(l, h[b], h[m])) m = b;
            if (m == i) return;
            (h[i], h[m]) = (h[m], h[i]);
            i = m;
        }
    }

    // Heap order: smaller logit first; on equal logits the larger id is "smaller" so that low ids are kept.
    static bool Less(ReadOnlySpan<float> l, int x, int y) => l[x] < l[y] || (l[x] == l[y] && x > y);

    void SortByLogitDescending(int n)
    {
        // Insertion sort for small n (ties: lower id first), otherwise a radix sort (ties keep their order).
        var l = _logits;
        var ids = _ids.AsSpan(0, n);
        if (n <= 64)
        {
            for (int i = 1; i < n; i++)
            {
                int id = ids[i]; int j = i - 1;
                while (j >= 0 && (l[ids[j]] < l[id] || (l[ids[j]] == l[id] && ids[j] > id))) { ids[j + 1] = ids[j]; j--; }
                ids[j + 1] = id;
            }
            return;
        }
        RadixSortDescending(n);
    }

    /// <summary>
    /// Sorts _ids[0..n) by logit, largest first, with an LSD radix sort on the logits' bits made order-preserving
    /// (four passes of 8 bits; a pass in which every key has the same digit is skipped). Stable: equal logits keep
    /// their order.
    /// </summary>
    void RadixSortDescending(int n)
    {
        var keys = MemoryMarshal.Cast<float, uint>(Keys.AsSpan(0, n));
        var keys2 = RadixKeys.AsSpan(0, n);
        var ids = _ids.AsSpan(0, n);
        var ids2 = OrderBuffer.AsSpan(0, n);
        for (int i = 0; i < n; i++) keys[i] = DescendingKey(_logits[ids[i]]);
        Span<int> offsets = stackalloc int[256];
        bool swapped = false;
        for (int shift = 0; shift < 32; shift += 8)
        {
            offsets.Clear();
            for (int i = 0; i < n; i++) offsets[(int)(keys[i] >> shift) & 255]++;
            if (offsets[(int)(keys[0] >> shift) & 255] == n) continue; // one digit: nothing to move
            int at = 0;
            for (int d = 0; d < 256; d++) { int c = offsets[d]; offsets[d] = at; at += c; }
            for (int i = 0; i < n; i++)
            {
                int pos = offsets[(int)(keys[i] >> shift) & 255]++;
                keys2[pos] = keys[i];
                ids2[pos] = ids[i];
            }
            var tk = keys; keys = keys2; keys2 = tk;
            var ti = ids; ids = ids2; ids2 = ti;
            swapped = !swapped;
        }
        if (swapped) ids.CopyTo(_ids);
    }

    /// <summary>_p[0..n) = softmax of the candidates' logits at a temperature.</summary>
    void Softmax(int n, float temperature)
    {
        var l = _logits;
        float max = float.NegativeInfinity;
        for (int i = 0; i < n; i++) max = MathF.Max(max, l[_ids[i]]);
        max /= temperature;
        double sum = 0; // llama.cpp sums in float: over a whole vocabulary that costs it ~1e-5
        for (int i = 0; i < n; i++) { float e = MathF.Exp(l[_ids[i]] / temperature - max); _p[i] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++) _p[i] *= inv;
    }

    /// <summary><see cref="Softmax"/> over the whole vocabulary in id order (no filter ran), sixteen exps at a time
    /// (the attention kernels' vector exp).</summary>
    void SoftmaxWhole(float temperature)
    {
        var p = _p.AsSpan(0, _vocab);
        (_wholeMin, _wholeMax) = FiniteRange(_logits); // the draw search's bucket range too
        Kernels.Ops.Divide(_logits, temperature, p); // l / T as the filtered softmax and llama.cpp compute it
        Kernels.AttentionJob.ExpSubtractSum(p, _wholeMax / temperature);
        Kernels.Ops.Scale(p, (float)(1.0 / Kernels.Ops.SumDouble(p)), p); // summed in double, as Softmax does
    }

    static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    double NextDouble()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0; _s3 ^= _s1; _s1 ^= _s2; _s0 ^= _s3; _s2 ^= t; _s3 = ulong.RotateLeft(_s3, 45);
        return (result >> 11) * (1.0 / (1UL << 53));
    }
}
