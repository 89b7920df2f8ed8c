namespace Cria.Inference;

/// <summary>Sampling settings, with llama.cpp's defaults. Temperature ≤ 0 means greedy (argmax).</summary>
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

    public static SamplerOptions Greedy => new() { Temperature = 0 };

    public void Validate()
    {
        if (float.IsNaN(Temperature)) throw new CriaException("temperature is NaN");
        if (TopK < 0) throw new CriaException($"top_k must be ≥ 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new CriaException($"top_p must be in (0, 1], got {TopP}");
        if (!(MinP >= 0 && MinP <= 1)) throw new CriaException($"min_p must be in [0, 1], got {MinP}");
        if (!(RepeatPenalty > 0)) throw new CriaException($"repeat penalty must be > 0, got {RepeatPenalty}");
        if (PenaltyLastN < 0) throw new CriaException($"penalty window must be ≥ 0, got {PenaltyLastN}");
        if (!float.IsFinite(FrequencyPenalty) || !float.IsFinite(PresencePenalty)) throw new CriaException("penalties must be finite");
    }
}

/// <summary>
/// The sampler chain of llama.cpp's common defaults: penalties → top-k → top-p → min-p → temperature → pick.
/// One sampler serves one sequence: it remembers the recent tokens for the penalties and owns a seeded RNG, so a
/// given seed repeats exactly. All buffers are allocated once; sampling a token allocates nothing.
/// </summary>
public sealed class Sampler
{
    readonly SamplerOptions _o;
    readonly int _vocab;
    readonly float[] _logits;       // [vocab] working copy
    readonly int[] _ids;            // [vocab] candidate ids
    readonly float[] _p;            // [vocab] candidate probabilities
    readonly int[] _recent;         // ring buffer of the last PenaltyLastN accepted tokens
    readonly int[] _counts;         // [vocab] occurrences within the ring
    int _recentCount, _recentHead;
    ulong _s0, _s1, _s2, _s3;       // xoshiro256** state

    public SamplerOptions Options => _o;

    public Sampler(int vocabSize, SamplerOptions? options = null)
    {
        _o = options ?? new SamplerOptions();
        _o.Validate();
        _vocab = vocabSize;
        _logits = new float[vocabSize]; _ids = new int[vocabSize]; _p = new float[vocabSize];
        _recent = new int[Math.Max(1, _o.PenaltyLastN)];
        _counts = new int[vocabSize];
        Reseed(_o.Seed);
    }

    public void Reseed(ulong seed)
    {
        ulong x = seed;
        _s0 = SplitMix(ref x); _s1 = SplitMix(ref x); _s2 = SplitMix(ref x); _s3 = SplitMix(ref x);
    }

    /// <summary>Records a token as generated (or part of the prompt) for the penalties.</summary>
    public void Accept(int token)
    {
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
        Reseed(_o.Seed);
    }

    /// <summary>Picks the next token from a row of logits.</summary>
    public int Sample(ReadOnlySpan<float> logits)
    {
        int n = Candidates(logits);
        if (_o.Temperature <= 0) return _ids[0];
        double r = NextDouble(), acc = 0;
        for (int i = 0; i < n; i++) { acc += _p[i]; if (r < acc) return _ids[i]; }
        return _ids[n - 1];
    }

    /// <summary>
    /// The distribution <see cref="Sample"/> draws from, written densely into <paramref name="probs"/> [vocab] (zero
    /// outside the candidates; one-hot when greedy). Speculative decoding verifies drafts against it.
    /// </summary>
    public void Distribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        if (probs.Length != _vocab) throw new ArgumentException($"expected {_vocab} probabilities, got {probs.Length}");
        int n = Candidates(logits);
        probs.Clear();
        for (int i = 0; i < n; i++) probs[_ids[i]] = _p[i];
    }

    /// <summary>
    /// The softmax at temperature 1 of the penalised logits, over the whole vocabulary (no top-k/top-p/min-p): the
    /// distribution whose mode a greedy sampler picks. RAPID nudges it when the target decodes greedily.
    /// </summary>
    public void SoftDistribution(ReadOnlySpan<float> logits, Span<float> probs)
    {
        if (logits.Length != _vocab || probs.Length != _vocab) throw new ArgumentException($"expected {_vocab} logits and probabilities, got {logits.Length}, {probs.Length}");
        var l = _logits.AsSpan();
        logits.CopyTo(l);
        ApplyPenalties(l);
        float max = float.NegativeInfinity;
        foreach (var v in l) if (v > max) max = v;
        double sum = 0;
        for (int i = 0; i < _vocab; i++) { float e = MathF.Exp(l[i] - max); probs[i] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < _vocab; i++) probs[i] *= inv;
    }

    /// <summary>A uniform draw in [0, 1) from this sampler's RNG (the stream <see cref="Sample"/> uses).</summary>
    public double NextUniform() => NextDouble();

    /// <summary>
    /// Applies the chain up to the final softmax: the surviving candidates are <c>_ids[0..n)</c> with probabilities
    /// <c>_p[0..n)</c>, most likely first; returns n (1 when greedy).
    /// </summary>
    int Candidates(ReadOnlySpan<float> logits)
    {
        if (logits.Length != _vocab) throw new ArgumentException($"expected {_vocab} logits, got {logits.Length}");
        var l = _logits.AsSpan();
        logits.CopyTo(l);
        ApplyPenalties(l);
        if (_o.Temperature <= 0) { _ids[0] = ArgMax(l); _p[0] = 1f; return 1; }

        // Candidates: all ids, or the top-k by logit.
        int n = _vocab;
        for (int i = 0; i < n; i++) _ids[i] = i;
        if (_o.TopK > 0 && _o.TopK < n) n = SelectTopK(l, _o.TopK);
        SortByLogitDescending(_logits, n);

        // Softmax of the un-tempered logits for top-p and min-p (llama.cpp applies temperature last).
        Softmax(_logits, n, 1f);
        if (_o.TopP < 1f)
        {
            double cum = 0;
            for (int i = 0; i < n; i++) { cum += _p[i]; if (cum >= _o.TopP) { n = i + 1; break; } }
        }
        if (_o.MinP > 0f)
        {
            float cut = _o.MinP * _p[0];
            int keep = 1;
            while (keep < n && _p[keep] >= cut) keep++;
            n = keep;
        }
        Softmax(_logits, n, _o.Temperature);
        return n;
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

    /// <summary>Index of the largest logit; the lowest index wins ties (as llama.cpp's greedy sampler).</summary>
    public static int ArgMax(ReadOnlySpan<float> l)
    {
        int best = 0;
        float bv = l[0];
        for (int i = 1; i < l.Length; i++) if (l[i] > bv) { bv = l[i]; best = i; }
        return best;
    }

    /// <summary>Moves the k largest-logit ids to _ids[0..k) with a min-heap; returns k.</summary>
    int SelectTopK(ReadOnlySpan<float> l, int k)
    {
        var heap = _ids.AsSpan(0, k); // heap of ids by logit (min at root); _ids[i]=i initially for i<k
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(heap, l, i);
        for (int id = k; id < _vocab; id++)
        {
            if (l[id] > l[heap[0]]) { heap[0] = id; SiftDown(heap, l, 0); }
        }
        return k;
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

    void SortByLogitDescending(float[] l, int n)
    {
        // Insertion sort for small n, otherwise a key sort on negated logits (stable order by id for ties).
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
        var keys = _p.AsSpan(0, n);
        for (int i = 0; i < n; i++) keys[i] = -l[ids[i]];
        keys.Sort(ids);
    }

    void Softmax(float[] l, int n, float temperature)
    {
        float max = l[_ids[0]] / temperature;
        double sum = 0;
        for (int i = 0; i < n; i++) { float e = MathF.Exp(l[_ids[i]] / temperature - max); _p[i] = e; sum += e; }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++) _p[i] *= inv;
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
