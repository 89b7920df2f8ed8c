using System.Diagnostics;
using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>What to generate and how to pick tokens.</summary>
public sealed record GenerationOptions
{
    public int MaxTokens { get; init; } = 128;
    public SamplerOptions Sampler { get; init; } = new();
    /// <summary>Prepend BOS when the vocabulary asks for it (tokenizer.ggml.add_bos_token).</summary>
    public bool AddBos { get; init; } = true;
    /// <summary>Let special-token text in the prompt (e.g. "&lt;s&gt;") become special tokens.</summary>
    public bool ParseSpecial { get; init; }
    /// <summary>Stop at an end-of-generation token (EOS, EOT…).</summary>
    public bool StopAtEndOfGeneration { get; init; } = true;
    /// <summary>Constrain the continuation to a sentence of this grammar (GBNF or a JSON schema's; see
    /// <see cref="Serving.Grammar"/>): generation stops ("grammar") when nothing may follow. Not with a drafter or
    /// beacons.</summary>
    public Serving.Grammar? Grammar { get; init; }
}

/// <summary>Timings of the last generation, as llama.cpp reports them.</summary>
public sealed record GenerationStats(int PromptTokens, TimeSpan PromptTime, int GeneratedTokens, TimeSpan GenerationTime, string StopReason)
{
    /// <summary>Speculative decoding: tokens drafted, drafts the target kept; and the target's forward steps after the prompt (plain decoding: one per token after the first).</summary>
    public int DraftedTokens { get; init; }
    public int AcceptedTokens { get; init; }
    public int TargetSteps { get; init; }
    public double AcceptanceRate => AcceptedTokens / Math.Max(1.0, DraftedTokens);

    public double PromptTokensPerSecond => PromptTokens / Math.Max(PromptTime.TotalSeconds, 1e-9);
    public double GenerationTokensPerSecond => GeneratedTokens / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>
/// Text in, text out for one sequence: tokenizes the prompt, prefills it as one batch, then samples and decodes
/// token by token, yielding text as soon as it forms whole UTF-8 characters. With a <see cref="Drafter"/> each step
/// is speculative: the drafter proposes tokens, the target scores the last token and all drafts in one batch, and
/// <see cref="Speculative.AcceptOrResample"/> keeps a prefix of them plus one token of its own — the output has the
/// distribution of plain sampling (the same tokens when greedy) in fewer target steps.
/// </summary>
public sealed class Generator(InferenceContext context, Tokenizer tokenizer)
{
    public InferenceContext Context { get; } = context;
    public Tokenizer Tokenizer { get; } = tokenizer;
    public GenerationStats? LastStats { get; private set; }
    /// <summary>Speculative decoding's drafter (prompt lookup or a draft model); null decodes one token per step.</summary>
    public IDrafter? Drafter { get; set; }
    Serving.TokenTries? _tries;   // the vocabulary's byte tries, built on the first grammar generation and kept
    SamplerVocabulary? _vocabulary; // what DRY reads (its breakers are processed once and kept)

    Sampler NewSampler(SamplerOptions o) =>
        new(Context.Config.VocabSize, o, o.DryOn ? _vocabulary ??= new SamplerVocabulary(Tokenizer, Context.Cache.Capacity) : null);
    /// <summary>Activation Beacon: the sequence streams through a <see cref="BeaconStream"/> at this condensing ratio
    /// (0 = the file's), so prompt and generation may run past the context; null decodes as a plain sequence.</summary>
    public int? BeaconRatio { get; set; }

    /// <summary>Streams the continuation of <paramref name="prompt"/>. The sequence's cache is cleared first.</summary>
    public IEnumerable<string> Generate(string prompt, GenerationOptions options, int sequenceId = 0, CancellationToken cancel = default)
    {
        var tokens = Tokenizer.Encode(prompt, options.AddBos && Tokenizer.AddBos, options.ParseSpecial);
        return Generate(tokens, options, sequenceId, cancel);
    }

    public IEnumerable<string> Generate(int[] promptTokens, GenerationOptions options, int sequenceId = 0, CancellationToken cancel = default)
    {
        var tokens = GenerateTokens(promptTokens, options, sequenceId, cancel);
        return Text(promptTokens, tokens);
    }

    IEnumerable<string> Text(int[] promptTokens, IEnumerable<int> tokens)
    {
        var decoder = new StreamingDecoder(Tokenizer);
        // The prompt is already on screen: the first generated token's space separates it from the prompt (llama-cli).
        if (promptTokens.Any(t => !Tokenizer.IsControl(t))) decoder.ContinueText();
        foreach (var t in tokens)
        {
            var text = decoder.Add(t);
            if (text.Length > 0) yield return text;
        }
        var tail = decoder.Flush();
        if (tail.Length > 0) yield return tail;
    }

    /// <summary>Streams the generated token ids (an end-of-generation token that stops it is not yielded).</summary>
    public IEnumerable<int> GenerateTokens(int[] promptTokens, GenerationOptions options, int sequenceId = 0, CancellationToken cancel = default)
    {
        if (promptTokens.Length == 0) throw new CriaException("the prompt is empty (no tokens); give some text or enable BOS");
        if (options.MaxTokens < 0) throw new CriaException($"max tokens must be ≥ 0, got {options.MaxTokens}");
        var ctx = Context;
        if (Drafter != null && ctx.Evicts) throw new CriaException("speculative decoding does not work with KV eviction");
        if (Drafter != null && Drafter.Options.DraftMax > ctx.Cache.MaxRollback)
            throw new CriaException($"this KV cache (KIVI, or a hybrid model's windows) can take back at most {ctx.Cache.MaxRollback} positions at once; draft max {Drafter.Options.DraftMax} is more");
        if (Drafter != null && !options.Sampler.Deterministic)
            throw new CriaException("XTC and mirostat do not work with speculative decoding (their distribution changes with every draw)");
        if (options.Grammar != null && (Drafter != null || BeaconRatio != null))
            throw new CriaException("a grammar is not supported with speculative decoding or Activation Beacon");
        ctx.Cache.Remove(sequenceId);
        if (BeaconRatio is { } ratio)
        {
            if (Drafter != null) throw new CriaException("speculative decoding does not work with Activation Beacon (drafts cannot be taken back from condensed windows)");
            return RunBeacons(promptTokens, options, new BeaconStream(ctx, sequenceId, ratio), cancel);
        }
        if (promptTokens.Length >= ctx.Cache.Capacity)
            throw new CriaException($"the prompt has {promptTokens.Length} tokens but the context holds {ctx.Cache.Capacity}; raise the context size (-c)");
        return Run(promptTokens, options, sequenceId, cancel);
    }

    /// <summary>Generation through a beacon stream: one token per step; it stops at "context" only when the memory of
    /// condensed windows no longer fits the cache.</summary>
    IEnumerable<int> RunBeacons(int[] promptTokens, GenerationOptions options, BeaconStream stream, CancellationToken cancel)
    {
        var ctx = Context;
        var sampler = NewSampler(options.Sampler);
        foreach (var t in promptTokens) sampler.Accept(t);
        int peak = stream.Window + stream.Window / stream.Ratio; // a full window and its beacons on top of the memory: the most a step needs
        var sw = Stopwatch.StartNew();
        stream.Feed(promptTokens);
        var promptTime = sw.Elapsed;
        sw.Restart();
        int generated = 0;
        string stop = "length";
        var one = new int[1];
        while (generated < options.MaxTokens)
        {
            cancel.ThrowIfCancellationRequested();
            int t = sampler.Sample(ctx.Logits(stream.LastRow));
            sampler.Accept(t);
            generated++;
            if (options.StopAtEndOfGeneration && Tokenizer.IsEog(t)) { stop = "eog"; break; }
            yield return t;
            if (generated == options.MaxTokens) break;
            if (stream.Memory + peak > ctx.Cache.Capacity) { stop = "context"; break; }
            one[0] = t;
            stream.Feed(one);
        }
        LastStats = new GenerationStats(promptTokens.Length, promptTime, generated, sw.Elapsed, stop);
    }

    IEnumerable<int> Run(int[] promptTokens, GenerationOptions options, int sequenceId, CancellationToken cancel)
    {
        var ctx = Context;
        var drafter = Drafter;
        var sampler = NewSampler(options.Sampler);
        foreach (var t in promptTokens) sampler.Accept(t);
        drafter?.Begin(options.Sampler);
        int maxDraft = drafter?.Options.DraftMax ?? 0;
        var batch = new Batch(Math.Max(promptTokens.Length, maxDraft + 1));
        var history = new int[promptTokens.Length + options.MaxTokens + 1]; // prompt + generated tokens
        promptTokens.CopyTo(history, 0);
        int hn = promptTokens.Length;
        var step = new int[maxDraft + 1];        // tokens one step produced
        var drafts = new int[maxDraft];
        var p = drafter == null ? [] : new float[ctx.Config.VocabSize]; // [vocab] target distribution at one position
        int drafted = 0, accepted = 0, steps = 0;
        var budget = new DraftBudget(maxDraft, drafter?.Options.Adaptive ?? false);
        var nudge = new RapidNudge(drafter?.Options, ctx.Config.VocabSize, options.Sampler.Temperature <= 0);
        // The continuation follows the prompt's text, so its first token keeps its leading space (lstrip 0).
        var constraint = options.Grammar is { } g ? new Serving.GrammarConstraint(_tries ??= new Serving.TokenTries(Tokenizer), g.Start()) : null;
        var masked = constraint != null ? new float[ctx.Config.VocabSize] : [];
        // The next token from a row's logits: sampled, or (grammar) sampled among the tokens it allows; −1 if none.
        int Pick(ReadOnlySpan<float> logits, Sampler sampler)
        {
            if (constraint == null) return sampler.Sample(logits);
            if (!constraint.Mask(logits, masked, lstrip: 0)) return -1;
            int t = sampler.Sample(masked);
            constraint.Accept(t, lstrip: 0);
            return t;
        }

        var sw = Stopwatch.StartNew();
        batch.AddSequence(promptTokens, 0, sequenceId);
        ctx.Decode(batch);
        var promptTime = sw.Elapsed;
        int pos = promptTokens.Length, generated = 0;
        string stop = "length";
        sw.Restart();
        int stepCount = 0;
        if (options.MaxTokens > 0)
        {
            if (nudge.On) drafter!.Draft(history.AsSpan(0, hn), []); // RAPID: the drafter's distribution after its prompt
            step[0] = nudge.On ? nudge.Sample(ctx.Logits(batch.Count - 1), 0, sampler, drafter!) : Pick(ctx.Logits(batch.Count - 1), sampler);
            if (step[0] >= 0) { sampler.Accept(step[0]); stepCount = 1; }
            else stop = "grammar";
        }
        while (stepCount > 0)
        {
            cancel.ThrowIfCancellationRequested();
            bool done = false;
            for (int i = 0; i < stepCount && !done; i++)
            {
                int t = step[i];
                history[hn++] = t;
                generated++;
                if (options.StopAtEndOfGeneration && Tokenizer.IsEog(t)) { stop = "eog"; done = true; break; }
                yield return t;
                if (generated == options.MaxTokens) done = true;
                if (constraint?.IsComplete == true) { stop = "grammar"; done = true; }
            }
            if (done) break;
            if (pos >= ctx.Cache.Capacity) { stop = "context"; break; }

            // One target step: the newest token at pos, then the drafts at pos+1… (drafts that could not be emitted
            // or would not fit in the context are not asked for).
            int room = Math.Min(Math.Min(ctx.Cache.Capacity - pos - 1, options.MaxTokens - generated - 1), budget.Window);
            bool asked = drafter != null && room > 0 && budget.Drafts();
            int k = asked ? drafter!.Draft(history.AsSpan(0, hn), drafts.AsSpan(0, room)) : 0;
            if (!asked && nudge.On) drafter!.Draft(history.AsSpan(0, hn), []); // RAPID nudges every token
            batch.Clear();
            batch.Add(step[stepCount - 1], pos, sequenceId, true);
            for (int j = 0; j < k; j++) batch.Add(drafts[j], pos + 1 + j, sequenceId, true);
            ctx.Decode(batch);
            steps++;
            drafted += k;
            int kept = 0;
            while (kept < k)
            {
                sampler.Distribution(ctx.Logits(kept), p);
                if (nudge.On) nudge.Apply(ctx.Logits(kept), kept, sampler, drafter!, p);
                bool ok = Speculative.AcceptOrResample(p, drafter!.DraftDistribution(kept), drafts[kept], sampler, out int t);
                step[kept] = t;
                sampler.Accept(t);
                if (!ok) break;
                kept++;
            }
            accepted += kept;
            if (asked) budget.Verified(k, kept, drafter!.RunsModel);
            if (kept == k)
            {
                // Every draft kept: one more token from the last row.
                step[k] = nudge.On ? nudge.Sample(ctx.Logits(k), k, sampler, drafter!) : Pick(ctx.Logits(k), sampler);
                if (step[k] < 0) { stop = "grammar"; break; }
                sampler.Accept(step[k]);
            }
            else ctx.Cache.Truncate(sequenceId, pos + 1 + kept); // drop the rejected drafts' K/V
            stepCount = kept + 1;
            pos += stepCount;
        }
        LastStats = new GenerationStats(promptTokens.Length, promptTime, generated, sw.Elapsed, stop)
        {
            DraftedTokens = drafted, AcceptedTokens = accepted, TargetSteps = steps,
        };
    }
}

/// <summary>
/// RAPID's p̂ in the verifier (<see cref="SpeculativeOptions.Margin"/> &gt; 0): at every position where the drafter
/// has a distribution q (<see cref="IDrafter.GuideDistribution"/>), the target's sampling distribution p becomes
/// p̂ ∝ p·exp(η(q − p)) (<see cref="Rapid.Nudge"/>); a greedy target takes the mode of the nudged softmax of its
/// logits at temperature 1. Positions without q keep p.
/// </summary>
internal readonly struct RapidNudge
{
    readonly float _eta, _alpha;
    readonly bool _greedy;
    readonly float[] _p, _soft, _hat; // [vocab] each

    public RapidNudge(SpeculativeOptions? o, int vocab, bool greedy)
    {
        _eta = o?.Margin ?? 0;
        _alpha = o?.MarginAlpha ?? 0;
        _greedy = greedy;
        bool on = _eta > 0;
        _p = on ? new float[vocab] : [];
        _soft = on ? new float[vocab] : [];
        _hat = on ? new float[vocab] : [];
    }

    public bool On => _eta > 0;

    /// <summary>Replaces <paramref name="p"/> (the sampler's distribution for <paramref name="logits"/>; not read when
    /// greedy) with p̂ when the drafter has a distribution at position <paramref name="i"/>.</summary>
    public void Apply(ReadOnlySpan<float> logits, int i, Sampler sampler, IDrafter drafter, Span<float> p)
    {
        var q = drafter.GuideDistribution(i);
        if (q.IsEmpty) return;
        if (_greedy)
        {
            sampler.SoftDistribution(logits, _soft);
            Rapid.Nudge(_soft, q, _eta, _alpha, _hat);
            p.Clear();
            p[Sampler.ArgMax(_hat)] = 1f;
        }
        else
        {
            Rapid.Nudge(p, q, _eta, _alpha, _hat);
            _hat.CopyTo(p);
        }
    }

    /// <summary>A token from p̂ at position <paramref name="i"/> (from p where the drafter has no distribution).</summary>
    public int Sample(ReadOnlySpan<float> logits, int i, Sampler sampler, IDrafter drafter)
    {
        if (drafter.GuideDistribution(i).IsEmpty) return sampler.Sample(logits);
        if (!_greedy) sampler.Distribution(logits, _p); // greedy: Apply writes p from the softmax itself
        Apply(logits, i, sampler, drafter, _p);
        return _greedy ? Sampler.ArgMax(_p) : Speculative.SampleDense(_p, sampler.NextUniform(), 1.0);
    }
}

/// <summary>
/// How many tokens to draft next (speculative decoding with <see cref="SpeculativeOptions.Adaptive"/>). The window
/// follows Hugging Face's heuristic for assisted generation — two more after a step that kept every draft, one fewer
/// otherwise (at least one) — and a step that kept none pauses drafting for 1, 2, 4 … 16 steps (reset by a kept draft),
/// so that drafts the target keeps rejecting (sampled text that does not repeat) stop costing batch rows, and a draft
/// model that keeps declining (<see cref="SpeculativeOptions.DraftPMin"/>) stops costing its forward steps. Without
/// adaptation every step drafts up to the maximum.
/// </summary>
internal struct DraftBudget(int max, bool adaptive)
{
    readonly int _max = max;
    readonly bool _adaptive = adaptive;
    int _window = max, _pause, _skip;

    public readonly int Window => _window;

    /// <summary>Whether this step drafts (false while paused).</summary>
    public bool Drafts()
    {
        if (_skip == 0) return true;
        _skip--;
        return false;
    }

    /// <summary>After a step that drafted <paramref name="drafted"/> tokens and kept <paramref name="kept"/>; an empty
    /// draft counts as a miss when drafting it cost a forward step (<paramref name="emptyCosts"/>: a draft model).</summary>
    public void Verified(int drafted, int kept, bool emptyCosts = false)
    {
        if (!_adaptive || (drafted == 0 && !emptyCosts)) return;
        if (drafted > 0) _window = kept == drafted ? Math.Min(_max, _window + 2) : Math.Max(1, _window - 1);
        if (kept > 0) _pause = 0;
        else { _pause = Math.Min(16, Math.Max(1, 2 * _pause)); _skip = _pause; }
    }
}

