namespace Cria.Inference;

/// <summary>
/// Speculative decoding settings. Defaults: for a draft model llama.cpp's <c>--draft-p-min 0.75</c> and 15 drafts
/// (llama.cpp drafts 16; here a step of 16 rows is the largest the decode kernels take: 17 rows go to the prefill
/// kernels and cost 6–7 single steps on TinyLlama F16/BF16/Q8_0 where 16 cost about 3–5, docs/speculative.md); for
/// prompt lookup, n-grams of 3 down to 1 tokens (the OpenVINO sample's 3; Hugging Face's PromptLookupCandidateGenerator
/// stops at 2) and at most 10 tokens copied (Hugging Face's num_output_tokens).
/// </summary>
public sealed record SpeculativeOptions
{
    /// <summary>Most tokens drafted per step.</summary>
    public int DraftMax { get; init; } = 15;
    /// <summary>A draft model stops drafting when its most likely next token (softmax of its logits) is less likely than this.</summary>
    public float DraftPMin { get; init; } = 0.75f;
    /// <summary>Prompt lookup: the longest n-gram searched for; shorter ones are tried down to <see cref="NgramMin"/>.</summary>
    public int NgramMax { get; init; } = 3;
    public int NgramMin { get; init; } = 1;
    /// <summary>Adapt the number drafted to how many the target keeps (Generator's DraftBudget): two more after a step
    /// that kept all, one fewer otherwise, and a pause of 1, 2, 4 … 16 steps after a step that kept none (or, for a
    /// draft model, drafted none).</summary>
    public bool Adaptive { get; init; } = true;
    /// <summary>RAPID's η (<c>speculative_margin</c>): verify against the target's distribution nudged toward the draft
    /// model's, p̂ ∝ p·exp(η(q − p)) (<see cref="Rapid.Nudge"/>); 0 verifies against p itself. RAPID's runs use 10 when
    /// the drafter is the target itself reading a retrieved context, 20–50 for a larger drafter.</summary>
    public float Margin { get; init; }
    /// <summary>RAPID's plausibility cut: the nudge applies where q ≥ α·max q.</summary>
    public float MarginAlpha { get; init; } = Rapid.DefaultAlpha;

    public static SpeculativeOptions Lookup => new() { DraftMax = 10 };

    public void Validate()
    {
        if (DraftMax < 1) throw new CriaException($"draft max must be ≥ 1, got {DraftMax}");
        if (!(DraftPMin >= 0 && DraftPMin <= 1)) throw new CriaException($"draft p-min must be in [0, 1], got {DraftPMin}");
        if (NgramMin < 1 || NgramMax < NgramMin) throw new CriaException($"n-gram sizes must satisfy 1 ≤ min ≤ max, got {NgramMin}..{NgramMax}");
        if (!(Margin >= 0 && float.IsFinite(Margin))) throw new CriaException($"RAPID margin η must be a finite number ≥ 0, got {Margin}");
        if (!(MarginAlpha >= 0 && MarginAlpha <= 1)) throw new CriaException($"RAPID's plausibility cut α must be in [0, 1], got {MarginAlpha}");
    }
}

/// <summary>
/// Proposes tokens for the target model to verify in one batch. A drafter sees the whole committed history (prompt
/// and generated tokens, the newest not yet in the target's cache) and returns the distribution each drafted token
/// was drawn from, so the verifier can keep the target's distribution exact.
/// </summary>
public interface IDrafter
{
    /// <summary>The drafter's settings (<see cref="SpeculativeOptions.DraftMax"/> sizes the verifier's buffers).</summary>
    SpeculativeOptions Options { get; }

    /// <summary>Whether drafting runs a model (a draft that comes back empty still cost a forward step).</summary>
    bool RunsModel { get; }

    /// <summary>Called at the start of each generation with the target's sampler settings.</summary>
    void Begin(SamplerOptions target);

    /// <summary>Writes up to <c>tokens.Length</c> tokens that might follow <paramref name="history"/>; returns how many.</summary>
    int Draft(ReadOnlySpan<int> history, Span<int> tokens);

    /// <summary>The dense distribution [vocab] drafted token <paramref name="i"/> was drawn from, or empty when the
    /// draft was deterministic (q one-hot at the token).</summary>
    ReadOnlySpan<float> DraftDistribution(int i);

    /// <summary>RAPID (<see cref="SpeculativeOptions.Margin"/> &gt; 0): the drafter's full distribution at position
    /// <paramref name="i"/> of the last draft (i = 0 … drafted count; position drafted count is the one after the last
    /// draft), which nudges the target's there; empty where the drafter has none.</summary>
    ReadOnlySpan<float> GuideDistribution(int i) => default;
}

/// <summary>RAPID: tokens a drafter reads in place of the first <paramref name="Replaces"/> tokens of the history.</summary>
public sealed record DraftPrompt(int[] Tokens, int Replaces);

/// <summary>The verification rule of speculative sampling.</summary>
public static class Speculative
{
    /// <summary>
    /// One position of speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the draft token
    /// <paramref name="x"/>, drawn from <paramref name="q"/>, is kept with probability min(1, p(x)/q(x)); otherwise a
    /// replacement is drawn from norm(max(0, p − q)). Either way the token that comes out is distributed exactly as
    /// <paramref name="p"/>. An empty <paramref name="q"/> is a deterministic draft (one-hot at x): x is kept with
    /// probability p(x), the replacement comes from p without x. Uniform draws come from <paramref name="rng"/>'s
    /// stream; a kept draft with p(x) ≥ q(x), and a replacement from a single-point residual (always so for a greedy p),
    /// use none.
    /// </summary>
    public static bool AcceptOrResample(ReadOnlySpan<float> p, ReadOnlySpan<float> q, int x, Sampler rng, out int token)
    {
        bool oneHot = q.IsEmpty;
        float px = p[x], qx = oneHot ? 1f : q[x];
        token = x;
        if (px >= qx) return true;                                  // min(1, p/q) = 1
        if (px > 0 && rng.NextUniform() * qx < px) return true;     // u < p/q
        // Rejected: draw from the residual max(0, p − q), normalised. A single-point residual (a greedy target) is
        // taken without a draw.
        double total = 0;
        int support = 0;
        for (int j = 0; j < p.Length; j++)
        {
            float r = Residual(p, q, x, j, oneHot);
            if (r > 0) { total += r; support++; token = j; }
        }
        if (support == 1) return false;
        if (!(total > 0)) { token = SampleDense(p, rng.NextUniform(), 1.0); return false; } // p = q up to rounding
        token = SampleResidual(p, q, x, oneHot, rng.NextUniform() * total);
        return false;
    }

    static int SampleResidual(ReadOnlySpan<float> p, ReadOnlySpan<float> q, int x, bool oneHot, double u)
    {
        double acc = 0;
        int last = -1;
        for (int j = 0; j < p.Length; j++)
        {
            float r = Residual(p, q, x, j, oneHot);
            if (r <= 0) continue;
            acc += r; last = j;
            if (u < acc) return j;
        }
        return last;
    }

    static float Residual(ReadOnlySpan<float> p, ReadOnlySpan<float> q, int x, int j, bool oneHot) =>
        oneHot ? (j == x ? 0f : p[j]) : MathF.Max(0f, p[j] - q[j]);

    /// <summary>Inverse-CDF draw from a dense distribution summing to <paramref name="total"/>.</summary>
    public static int SampleDense(ReadOnlySpan<float> p, double u, double total)
    {
        double target = u * total, acc = 0;
        int last = 0;
        for (int j = 0; j < p.Length; j++)
        {
            if (p[j] <= 0) continue;
            acc += p[j]; last = j;
            if (target < acc) return j;
        }
        return last;
    }

    /// <summary>The largest softmax probability of a row of logits (temperature 1): a draft's confidence.</summary>
    public static float MaxProbability(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        double sum = 0;
        foreach (var l in logits) sum += MathF.Exp(l - max);
        return (float)(1.0 / sum);
    }
}

/// <summary>
/// Prompt-lookup drafting (Saxena 2023; Hugging Face's PromptLookupCandidateGenerator): find the latest earlier
/// occurrence of the history's last n tokens (n from <see cref="SpeculativeOptions.NgramMax"/> down to
/// <see cref="SpeculativeOptions.NgramMin"/>) and propose the tokens that followed it. No model runs; the draft is
/// deterministic. Hugging Face takes the first occurrence; the latest is kept here because generated text that
/// repeats itself repeats its most recent form.
/// </summary>
public sealed class PromptLookupDrafter(SpeculativeOptions? options = null) : IDrafter
{
    readonly SpeculativeOptions _o = Validated(options ?? SpeculativeOptions.Lookup);

    static SpeculativeOptions Validated(SpeculativeOptions o) { o.Validate(); return o; }

    public SpeculativeOptions Options => _o;
    public bool RunsModel => false;

    public void Begin(SamplerOptions target) { }

    public int Draft(ReadOnlySpan<int> history, Span<int> tokens)
    {
        int len = history.Length, max = Math.Min(tokens.Length, _o.DraftMax);
        if (max == 0) return 0;
        for (int n = Math.Min(_o.NgramMax, len - 1); n >= _o.NgramMin; n--)
        {
            var tail = history[(len - n)..];
            for (int j = len - n - 1; j >= 0; j--)
            {
                if (!history.Slice(j, n).SequenceEqual(tail)) continue;
                int from = j + n, k = Math.Min(max, len - from);
                history.Slice(from, k).CopyTo(tokens);
                return k;
            }
        }
        return 0;
    }

    public ReadOnlySpan<float> DraftDistribution(int i) => default;
}

/// <summary>
/// Drafting with a smaller model of the same vocabulary, in its own <see cref="InferenceContext"/>. Its cache keeps
/// the history it has seen; each call cuts it back to the part the history still agrees with (rejected drafts go) and
/// feeds the rest as one batch. Drafts are drawn from the draft model's distribution under the target's sampler
/// settings without penalties (greedy when the target is greedy), and drafting stops early when the draft model is
/// unsure (<see cref="SpeculativeOptions.DraftPMin"/>), as llama.cpp's common_speculative_gen_draft does.
/// <para>
/// RAPID: with a <see cref="Prompt"/> the drafter reads those tokens in place of the target's prompt (the retrieved
/// chunks and the query, <see cref="RagRetriever.DraftPrompt"/>), followed by everything generated since; with a
/// <see cref="SpeculativeOptions.Margin"/> it keeps its distribution at every drafted position and at the one after
/// the last draft (one more forward step when it drafted its maximum), for the verifier's p̂. Under a greedy target
/// that distribution is its softmax at temperature 1; the drafts themselves stay greedy.
/// </para>
/// </summary>
public sealed class ModelDrafter : IDrafter
{
    readonly InferenceContext _ctx;
    readonly SpeculativeOptions _o;
    readonly int _seq, _vocab;
    readonly int[] _fed;        // [capacity] the tokens in the draft cache, in order
    int _fedCount;
    readonly float[] _q;        // [DraftMax (+ 1 with RAPID), vocab] the drafter's distribution at each drafted position (and, with RAPID, the next)
    int _guideCount;            // RAPID: positions of the last draft whose distribution _q holds
    int[] _view = [];           // RAPID: [capacity] the drafter's history (its prompt, then the generated tokens)
    readonly Batch _batch;
    Sampler? _sampler;
    bool _greedy;

    public ModelDrafter(InferenceContext draft, SpeculativeOptions? options = null, int sequenceId = 0)
    {
        _o = options ?? new SpeculativeOptions();
        _o.Validate();
        _ctx = draft;
        _seq = sequenceId;
        _vocab = draft.Config.VocabSize;
        _fed = new int[draft.Cache.Capacity];
        _q = new float[(long)(_o.DraftMax + (_o.Margin > 0 ? 1 : 0)) * _vocab];
        _batch = new Batch(Math.Min(draft.Cache.Capacity, 512));
    }

    /// <summary>RAPID's drafter prompt: the drafter reads <see cref="DraftPrompt.Tokens"/> in place of the first
    /// <see cref="DraftPrompt.Replaces"/> tokens of the history (the target's prompt). Null: the history as it is.</summary>
    public DraftPrompt? Prompt
    {
        get => _prompt;
        set
        {
            // The view never needs more than the draft's context holds (a longer one is not drafted from).
            if (value != null && _view.Length < _ctx.Cache.Capacity) _view = new int[_ctx.Cache.Capacity];
            _prompt = value;
        }
    }
    DraftPrompt? _prompt;

    public InferenceContext Context => _ctx;
    public SpeculativeOptions Options => _o;
    public bool RunsModel => true;

    /// <summary>Checks that a draft model can propose tokens for a target: the same vocabulary, token for token.</summary>
    public static void CheckCompatible(Models.LlamaModel target, Models.LlamaModel draft)
    {
        if (target.Config.VocabSize != draft.Config.VocabSize)
            throw new CriaException($"the draft model's vocabulary has {draft.Config.VocabSize} tokens, the target's {target.Config.VocabSize}; speculative decoding needs the same tokenizer");
        var a = target.Tokenizer; var b = draft.Tokenizer;
        if (a.VocabSize != b.VocabSize)
            throw new CriaException($"the draft model's tokenizer has {b.VocabSize} tokens, the target's {a.VocabSize}; speculative decoding needs the same tokenizer");
        for (int i = 0; i < a.VocabSize; i++)
            if (a.TokenText(i) != b.TokenText(i))
                throw new CriaException($"the draft model's token {i} is \"{b.TokenText(i)}\", the target's \"{a.TokenText(i)}\"; speculative decoding needs the same tokenizer");
    }

    public void Begin(SamplerOptions target)
    {
        _greedy = target.Temperature <= 0;
        _sampler = new Sampler(_vocab, target with
        {
            RepeatPenalty = 1f, FrequencyPenalty = 0f, PresencePenalty = 0f, PenaltyLastN = 0,
            DryMultiplier = 0f, XtcProbability = 0f, Mirostat = 0, // the draft's proposal: no history, no coin
            Seed = target.Seed ^ 0x5EC0DE5EC0DEUL,
        });
    }

    /// <summary>Forgets what the draft context holds for this drafter: removes its sequence (the next draft feeds the
    /// whole history again).</summary>
    public void Reset()
    {
        if (_ctx.Cache.Contains(_seq)) _ctx.Cache.Remove(_seq);
        _fedCount = 0;
        _guideCount = 0;
    }

    public int Draft(ReadOnlySpan<int> history, Span<int> tokens)
    {
        var sampler = _sampler ?? throw new InvalidOperationException("Begin was not called");
        _guideCount = 0;
        if (_prompt is { } dp)
        {
            if (history.Length < dp.Replaces) throw new InvalidOperationException($"the history ({history.Length} tokens) is shorter than the prompt the drafter replaces ({dp.Replaces})");
            int len = dp.Tokens.Length + history.Length - dp.Replaces;
            if (len > _view.Length) return 0; // the draft's context is full: no drafting
            dp.Tokens.CopyTo(_view, 0);
            history[dp.Replaces..].CopyTo(_view.AsSpan(dp.Tokens.Length));
            history = _view.AsSpan(0, len);
        }
        var cache = _ctx.Cache;
        int cap = cache.Capacity;
        if (history.Length > cap) return 0; // the draft's context is full: no drafting
        int max = Math.Min(Math.Min(tokens.Length, _o.DraftMax), cap - history.Length);

        bool guide = _o.Margin > 0;
        int n = 0;
        try
        {
            _batch.Clear();
            int row = CatchUp(history, _batch);
            _ctx.Decode(_batch);
            while (true)
            {
                var logits = _ctx.Logits(row);
                if (guide)
                {
                    // RAPID: the drafter's distribution here nudges the target's (a sampled draft is drawn from it too).
                    var g = _q.AsSpan(n * _vocab, _vocab);
                    if (_greedy) sampler.SoftDistribution(logits, g);
                    else sampler.Distribution(logits, g);
                    _guideCount = n + 1;
                }
                if (n == max) break;
                int x = Choose(logits, n, qReady: guide);
                if (x < 0) break;
                tokens[n++] = x;
                // Without RAPID the last draft is not fed: nothing needs the distribution after it.
                if (n == max && !guide) break;
                _batch.Clear();
                row = Feed(x, _batch);
                _ctx.Decode(_batch);
            }
        }
        catch (KvCacheFullException) { Reset(); throw; } // the rows just fed were not stored: start afresh next time
        return n;
    }

    /// <summary>Cuts the draft cache back to the part <paramref name="history"/> agrees with (at least one token is left
    /// to feed, for logits) and appends the rest to <paramref name="batch"/>; returns the row whose logits come next.</summary>
    int CatchUp(ReadOnlySpan<int> history, Batch batch)
    {
        int common = 0;
        while (common < _fedCount && common < history.Length && _fed[common] == history[common]) common++;
        if (common == history.Length) common--;
        // A cache that cannot take back that much (KIVI's ring, a hybrid model's windows) starts the sequence again.
        if (_ctx.Cache.Length(_seq) - common > _ctx.Cache.MaxRollback) common = 0;
        _ctx.Cache.Truncate(_seq, common);
        batch.AddSequence(history[common..], common, _seq);
        history[common..].CopyTo(_fed.AsSpan(common));
        _fedCount = history.Length;
        return batch.Count - 1;
    }

    /// <summary>Draft token <paramref name="n"/> from the drafter's logits: −1 when p-min ends the draft; the argmax when
    /// greedy; else a sample from q, the sampler's distribution (written to _q[n] here, or already there when
    /// <paramref name="qReady"/>: RAPID's guide).</summary>
    int Choose(ReadOnlySpan<float> logits, int n, bool qReady)
    {
        if (_o.DraftPMin > 0 && Speculative.MaxProbability(logits) < _o.DraftPMin) return -1;
        if (_greedy) return Sampler.ArgMax(logits);
        var q = _q.AsSpan(n * _vocab, _vocab);
        if (!qReady) _sampler!.Distribution(logits, q);
        return Speculative.SampleDense(q, _sampler!.NextUniform(), 1.0);
    }

    /// <summary>Appends draft token <paramref name="x"/> to <paramref name="batch"/> as the sequence's next row; returns it.</summary>
    int Feed(int x, Batch batch)
    {
        int row = batch.Add(x, _fedCount, _seq, true);
        _fed[_fedCount++] = x;
        return row;
    }

    public ReadOnlySpan<float> DraftDistribution(int i) => _greedy ? default : _q.AsSpan(i * _vocab, _vocab);

    public ReadOnlySpan<float> GuideDistribution(int i) => i < _guideCount ? _q.AsSpan(i * _vocab, _vocab) : default;

    /// <summary>The history of drafter <paramref name="i"/> of a <see cref="DraftTogether"/> call.</summary>
    public delegate ReadOnlySpan<int> HistoryOf(int i);

    /// <summary>
    /// Drafts for several drafters that share one draft context, in lockstep, as vLLM's draft-model proposer does: the
    /// catch-up rows of all of them (each cut back to what its history agrees with) go in one batch, then each draft
    /// position is one batch with a row for every drafter still drafting. Per drafter it follows <see cref="Draft"/>:
    /// at most <paramref name="room"/>[i] tokens into <paramref name="tokens"/>[i·DraftMax …], their count in
    /// <paramref name="counts"/>[i], its distributions for <see cref="DraftDistribution"/>; p-min ends a drafter early.
    /// RAPID is not run here. <paramref name="scratch"/> holds 2 ints per drafter. A full draft context resets every
    /// drafter of the call, and nothing is drafted.
    /// </summary>
    public static void DraftTogether(InferenceContext ctx, Batch batch, IReadOnlyList<ModelDrafter> drafters, HistoryOf history,
        ReadOnlySpan<int> room, Span<int> tokens, Span<int> counts, Span<int> scratch)
    {
        int n = drafters.Count;
        if (n == 0) return;
        int stride = drafters[0]._o.DraftMax, cap = ctx.Cache.Capacity;
        var rows = scratch[..n];        // each drafter's logits row in the last batch
        var max = scratch[n..(2 * n)];  // tokens each still may draft; 0 once it stopped
        batch.Clear();
        for (int i = 0; i < n; i++)
        {
            var d = drafters[i];
            if (d._ctx != ctx || d._prompt != null || d._o.Margin > 0 || d._o.DraftMax != stride)
                throw new InvalidOperationException("drafters drafting together share one context and settings, without RAPID");
            if (d._sampler == null) throw new InvalidOperationException("Begin was not called");
            d._guideCount = 0;
            counts[i] = 0; max[i] = 0; rows[i] = -1;
            var h = history(i);
            if (h.Length > cap) continue; // the draft's context is full: no drafting
            max[i] = Math.Max(0, Math.Min(Math.Min(room[i], stride), cap - h.Length));
            if (max[i] > 0) rows[i] = d.CatchUp(h, batch);
        }
        if (batch.Count == 0) return;
        try
        {
            ctx.Decode(batch);
            while (true)
            {
                batch.Clear();
                for (int i = 0; i < n; i++)
                {
                    if (max[i] == 0) continue;
                    var d = drafters[i];
                    int made = counts[i], x = d.Choose(ctx.Logits(rows[i]), made, qReady: false);
                    if (x < 0) { max[i] = 0; continue; }
                    tokens[i * stride + made] = x;
                    counts[i] = ++made;
                    if (made == max[i]) { max[i] = 0; continue; } // the last draft is not fed: nothing needs what follows it
                    rows[i] = d.Feed(x, batch);
                }
                if (batch.Count == 0) break;
                ctx.Decode(batch);
            }
        }
        catch (KvCacheFullException)
        {
            foreach (var d in drafters) d.Reset();
            counts[..n].Clear();
        }
    }
}
