using System.Text;
using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>
/// What the samplers that read text need from a model, shared by all its samplers: the tokenizer, the context length
/// that DRY's window −1 means, and DRY's sequence breakers processed against the vocabulary (once per distinct list;
/// the last <see cref="MaxCached"/> lists are kept).
/// </summary>
public sealed class SamplerVocabulary(Tokenizer tokenizer, int contextLength)
{
    public const int MaxCached = 16;
    public Tokenizer Tokenizer { get; } = tokenizer;
    public int ContextLength { get; } = contextLength > 0 ? contextLength : throw new CriaException($"context length must be positive, got {contextLength}");
    readonly Dictionary<string, DryBreakers> _cache = new();
    readonly Queue<string> _order = new();

    public DryBreakers Breakers(IReadOnlyList<string> breakers)
    {
        var key = string.Join("\0", breakers);
        lock (_cache)
        {
            if (_cache.TryGetValue(key, out var b)) return b;
            b = DryBreakers.Build(Tokenizer, breakers);
            if (_order.Count == MaxCached) _cache.Remove(_order.Dequeue());
            _cache[key] = b;
            _order.Enqueue(key);
            return b;
        }
    }
}

/// <summary>
/// DRY's sequence breakers as token sequences (koboldcpp's, as llama.cpp processes them): for each token whose text
/// contains a breaker, an empty tail (the token breaks on its own); for each token whose text ends with the start of a
/// breaker, the tokens of the rest of the breaker (at most 20), which must follow it.
/// </summary>
public sealed class DryBreakers
{
    const int MaxTail = 20;
    readonly Dictionary<int, List<int[]>> _tails = new(); // head token → tails
    readonly HashSet<int> _single = new();                // heads with an empty tail

    public int HeadCount => _tails.Count;

    /// <summary>The tails of the breakers that begin with this token, or null.</summary>
    public List<int[]>? Tails(int head) => _tails.GetValueOrDefault(head);

    /// <summary>True when the token breaks a repetition on its own (DRY never penalises it).</summary>
    public bool IsSingleTokenBreaker(int token) => _single.Contains(token);

    public static DryBreakers Build(Tokenizer tok, IReadOnlyList<string> breakers)
    {
        var d = new DryBreakers();
        var words = new byte[tok.VocabSize][];
        for (int id = 0; id < tok.VocabSize; id++) words[id] = tok.DetokenizeBytes([id], removeSpecial: false, renderSpecial: true);
        var tailCache = new Dictionary<string, int[]>();
        foreach (var breaker in breakers)
        {
            var s = Encoding.UTF8.GetBytes(breaker);
            if (s.Length == 0) continue;
            if (s.Length > SamplerOptions.MaxDryBreakerBytes) s = s[..SamplerOptions.MaxDryBreakerBytes];
            for (int id = 0; id < words.Length; id++)
            {
                var w = words[id].AsSpan();
                if (w.IndexOf(s) >= 0) { d.Add(id, []); continue; }
                // every place where the word ends with a prefix of the breaker: the rest of the breaker follows
                for (int pos = w.IndexOf(s[0]); pos >= 0; pos = NextIndex(w, s[0], pos + 1))
                {
                    int i = 1;
                    bool match = true;
                    for (; i < s.Length && i + pos < w.Length; i++)
                        if (w[pos + i] != s[i]) { match = false; break; }
                    if (!match) continue;
                    var rest = Encoding.UTF8.GetString(s, i, s.Length - i);
                    if (!tailCache.TryGetValue(rest, out var tail))
                    {
                        tail = tok.Encode(rest, addBos: false);
                        if (tail.Length > MaxTail) tail = tail[..MaxTail];
                        tailCache[rest] = tail;
                    }
                    d.Add(id, tail);
                }
            }
        }
        return d;
    }

    static int NextIndex(ReadOnlySpan<byte> w, byte b, int from)
    {
        if (from >= w.Length) return -1;
        int i = w[from..].IndexOf(b);
        return i < 0 ? -1 : from + i;
    }

    void Add(int head, int[] tail)
    {
        if (!_tails.TryGetValue(head, out var list)) _tails[head] = list = new List<int[]>();
        foreach (var t in list) if (t.AsSpan().SequenceEqual(tail)) return;
        list.Add(tail);
        if (tail.Length == 0) _single.Add(head);
    }
}

/// <summary>
/// DRY ("don't repeat yourself", p-e-w's sampler, as llama.cpp ports it from koboldcpp). For the last N tokens of the
/// context it finds, with the Z-algorithm run backwards, how long a suffix of the context each earlier position ends
/// (capped at the nearest sequence breaker); a token that would continue a repeat of n ≥ allowed tokens loses
/// multiplier·base^(n − allowed) from its logit. Buffers are sized once; applying it allocates nothing.
/// </summary>
sealed class Dry
{
    readonly SamplerOptions _o;
    readonly DryBreakers _breakers;
    readonly int _window;         // tokens looked back over
    readonly int[] _ring;         // [window] the last tokens, oldest first from _head
    int _count, _head;
    readonly int[] _repeat;       // [window] repeat length ending at each position (dry_repeat_count)
    readonly int[] _maxRepeat;    // [vocab] longest repeat each token would extend; −1 = none
    readonly int[] _touched;      // [window] tokens whose _maxRepeat is set
    int _touchedCount;

    public Dry(SamplerOptions o, SamplerVocabulary v)
    {
        _o = o;
        _breakers = v.Breakers(o.DrySequenceBreakers);
        _window = Math.Min(o.DryPenaltyLastN == -1 ? v.ContextLength : o.DryPenaltyLastN, v.ContextLength);
        _ring = new int[_window];
        _repeat = new int[_window];
        _touched = new int[_window];
        _maxRepeat = new int[v.Tokenizer.VocabSize];
        Array.Fill(_maxRepeat, -1);
    }

    public void Accept(int token)
    {
        if (_count < _window) _ring[(_head + _count++) % _window] = token;
        else { _ring[_head] = token; _head = (_head + 1) % _window; }
    }

    public void Reset() { _count = 0; _head = 0; }

    /// <summary>The token i positions from the end (0: the newest).</summary>
    int Back(int i) => _ring[(_head + _count - 1 - i) % _window];

    public void Apply(Span<float> l)
    {
        int n = _count; // min(tokens seen, window): the ring holds at most the window
        int allowed = _o.DryAllowedLength;
        if (n <= allowed) return;

        // 1. The newest sequence breaker limits how far back a repeat may reach.
        int repLimit = n;
        for (int i = 0; i < n; i++)
        {
            var tails = _breakers.Tails(Back(i));
            if (tails == null) continue;
            int longest = -1;
            foreach (var tail in tails)
            {
                int len = tail.Length;
                if (len <= longest || len > i) continue;
                bool match = true;
                for (int k = 0; k < len && match; k++) match = tail[k] == Back(i - k - 1);
                if (match) longest = len;
            }
            if (longest >= 0) { repLimit = i - longest; break; }
        }
        if (repLimit < allowed) return;

        // 2. Z-algorithm on the reversed context: _repeat[last − k] = how many tokens ending k back equal the newest ones.
        var rep = _repeat.AsSpan(0, n);
        rep.Clear();
        int last = n - 1, lt = 0, rt = 0;
        for (int k = 1; k < n; k++)
        {
            if (k > rt)
            {
                int len = 0;
                while (len + k < n && Back(len) == Back(len + k)) len++;
                rep[last - k] = Math.Min(len, repLimit);
                if (len > 0) { lt = k; rt = k + len - 1; }
            }
            else
            {
                int p = k - lt, right = rt - k + 1;
                if (rep[last - p] < right) rep[last - k] = Math.Min(rep[last - p], repLimit);
                else
                {
                    int i = rt + 1;
                    while (i < n && Back(i) == Back(i - k)) i++;
                    rep[last - k] = Math.Min(i - k, repLimit);
                    lt = k; rt = i - 1;
                }
            }
        }

        // 3. The token after each repeat would extend it: keep the longest repeat per such token.
        for (int i = 0; i < n - 1; i++)
        {
            int len = rep[i];
            if (len < allowed) continue;
            int token = Back(n - 2 - i);
            if (_maxRepeat[token] < 0) _touched[_touchedCount++] = token;
            if (_maxRepeat[token] < len) _maxRepeat[token] = len;
        }

        // 4. The penalty, its exponent capped so that base^exponent stays a float.
        int maxExponent = _o.DryBase > 1.000001f ? (int)(88.7228391f / MathF.Log(_o.DryBase)) : 0;
        for (int j = 0; j < _touchedCount; j++)
        {
            int token = _touched[j];
            if (!_breakers.IsSingleTokenBreaker(token))
            {
                int exponent = _maxRepeat[token] - allowed;
                if (maxExponent > 0 && exponent > maxExponent) exponent = maxExponent;
                l[token] -= (float)(_o.DryMultiplier * Math.Pow(_o.DryBase, exponent));
            }
            _maxRepeat[token] = -1;
        }
        _touchedCount = 0;
    }
}
