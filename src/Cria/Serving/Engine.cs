using System.Collections.Concurrent;
using System.Diagnostics;
using System.Threading.Channels;
using Cria.Inference;
using Cria.Tokenization;

namespace Cria.Serving;

/// <summary>Settings of an <see cref="Engine"/>.</summary>
public sealed record EngineOptions
{
    public SchedulerOptions Scheduler { get; init; } = new();
    /// <summary>Requests allowed to wait for admission; more are refused with <see cref="EngineOverloadedException"/>.</summary>
    public int MaxWaiting { get; init; } = 256;
    /// <summary>Speculative decoding with prompt-lookup drafts (vLLM's "ngram" method); null: off. Each decoding
    /// request's drafts ride in its decode step within the token budget; <see cref="Inference.Speculative.AcceptOrResample"/>
    /// keeps the output distribution exact (greedy requests return the same tokens as without).</summary>
    public SpeculativeOptions? Speculative { get; init; }
    /// <summary>A draft model's context (vLLM's draft-model method, llama.cpp's <c>--model-draft</c>): with
    /// <see cref="Speculative"/> set, each request drafts with this model — one sequence of its own in this context,
    /// kept in step with the request's tokens (<see cref="ModelDrafter"/>) — instead of prompt lookup. Used only on the
    /// engine thread; its owner disposes it after the engine.</summary>
    public InferenceContext? DraftContext { get; init; }
    /// <summary>Tests: the engine takes no step until this task completes (requests are accepted, or refused, meanwhile).</summary>
    internal Task? StepGate { get; init; }
}

/// <summary>One generation request to the <see cref="Engine"/>.</summary>
public sealed record GenerationRequest
{
    public required int[] Prompt { get; init; }
    public int MaxTokens { get; init; } = 256;
    public SamplerOptions Sampler { get; init; } = new();
    /// <summary>Stop strings: generation ends before the first occurrence; the stop string itself is not returned.</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];
    public bool IgnoreEog { get; init; }
    /// <summary>Log-probabilities to return per token: -1 none, 0 the chosen token's, n also the n most likely.</summary>
    public int TopLogprobs { get; init; } = -1;
    /// <summary>Constrain the output to one JSON object (response_format json_object): tokens that would break it are
    /// masked before sampling, and the request stops when the object closes.</summary>
    public bool JsonObject { get; init; }
    /// <summary>Constrain the output to a sentence of this grammar (GBNF, or a JSON schema through
    /// <see cref="JsonSchemaGrammar"/>): tokens that would leave it are masked, end-of-generation is allowed only where
    /// the grammar may end, and the request stops when nothing may follow.</summary>
    public Grammar? Grammar { get; init; }
    /// <summary>The output continues text already shown (the prompt ends inside a response, as when best-of-N continues
    /// a pruned sample): its first token keeps the leading space a response's start drops (tokenizers with a space
    /// prefix).</summary>
    public bool ContinuesText { get; init; }
}

public readonly record struct TokenLogprob(int Token, float Logprob);

/// <summary>
/// One event of a request's stream. A token event carries the sampled token and the text it released (possibly
/// empty: bytes of an unfinished character, or text held back because it might start a stop string). The last event
/// has <see cref="FinishReason"/> set ("stop" or "length") and may carry the final text.
/// </summary>
public sealed record EngineOutput(int Token, string Text, float Logprob, TokenLogprob[]? TopLogprobs, string? FinishReason = null)
{
    public bool IsToken => Token >= 0;
}

/// <summary>Timings and counts of a finished request (what /metrics observes).</summary>
public sealed record RequestStats(
    int PromptTokens, int CachedPromptTokens, int GeneratedTokens, string FinishReason,
    double QueueSeconds, double TimeToFirstTokenSeconds, double EndToEndSeconds, IReadOnlyList<double> InterTokenSeconds, int Preemptions);

/// <summary>The engine's queue is full (the server answers 429 with Retry-After).</summary>
public sealed class EngineOverloadedException(string message) : CriaException(message);

/// <summary>A request the engine cannot take (prompt too long, bad settings): the server answers 400.</summary>
public sealed class InvalidRequestException(string message) : CriaException(message);

/// <summary>A submitted request: read its events from <see cref="Events"/>.</summary>
public sealed class EngineRequest
{
    internal EngineRequest(int id, GenerationRequest r, Sampler sampler, StreamingDecoder decoder)
    {
        Id = id; Request = r; Sampler = sampler; Decoder = decoder;
        var ch = Channel.CreateUnbounded<EngineOutput>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        Writer = ch.Writer; Events = ch.Reader;
    }

    public int Id { get; }
    public GenerationRequest Request { get; }
    public ChannelReader<EngineOutput> Events { get; }
    /// <summary>Set when the request ends (after its last event).</summary>
    public RequestStats? Stats { get; internal set; }

    internal readonly ChannelWriter<EngineOutput> Writer;
    internal readonly Sampler Sampler;
    internal readonly StreamingDecoder Decoder;
    internal SequenceState Sequence = null!;
    internal CancellationTokenRegistration Registration;
    internal string Held = "";            // text held back: it may be the start of a stop string
    internal long Arrival, Scheduled, FirstToken, LastToken;
    internal readonly List<double> Itl = new();
    internal OutputConstraint? Constraint; // json_object or a grammar
    internal float[]? Masked;
    internal DraftBudget Drafting;        // speculative decoding: how many to draft next
    internal ModelDrafter? ModelDrafter;  // a draft model's drafter for this request (its sequence id = the request's id)
    internal bool Done;
}

/// <summary>
/// The serving loop: one thread runs the <see cref="Scheduler"/>'s plan as ONE <see cref="InferenceContext.Decode"/>
/// per step (decodes and prefill chunks of many requests in one batch), samples each request with its own
/// <see cref="Sampler"/>, and streams tokens to a channel per request. Submission and cancellation are thread-safe;
/// everything else happens on the engine thread. A cancelled request leaves at the next step boundary and its KV
/// blocks go back to the pool then.
/// </summary>
public sealed class Engine : IDisposable
{
    readonly InferenceContext _ctx;
    readonly Scheduler _scheduler;
    readonly ConcurrentQueue<EngineRequest> _incoming = new();
    readonly ConcurrentQueue<EngineRequest> _cancelled = new();
    readonly ConcurrentQueue<EmbeddingJob> _embedIncoming = new();
    readonly List<EmbeddingJob> _embedPending = new();
    const int EmbeddingSequenceId = int.MaxValue - 1; // outside the ids handed to requests

    sealed record EmbeddingJob(int[] Tokens, TaskCompletionSource<float[]> Result, CancellationToken Cancel);
    readonly ManualResetEventSlim _signal = new(false);
    readonly Thread _thread;
    readonly Batch _batch;
    readonly SpeculativeOptions? _spec;   // speculative decoding on: drafts by prompt lookup or by a draft model
    readonly PromptLookupDrafter? _drafter;
    readonly InferenceContext? _draftCtx;
    int _modelDraftShare;                 // most tokens a draft model drafts per request for the next step
    // A step's model drafting, done for all its requests together (ModelDrafter.DraftTogether):
    readonly List<EngineRequest> _drafting = new();
    readonly List<ModelDrafter> _drafters = new();
    int[] _draftRoom = [], _draftCounts = [], _draftScratch = [], _draftTokens = [];
    readonly Batch _draftBatch = new(64);
    readonly ModelDrafter.HistoryOf _historyOf;
    readonly int[] _draftBuffer;           // [DraftMax] drafts of one request, before they go to its sequence
    readonly float[] _p;                   // [vocab] a request's sampling distribution at one draft row
    volatile bool _stopping;
    int _nextId;
    int _queued;   // submitted, not yet admitted or finished (for the waiting limit)

    public EngineOptions Options { get; }
    public InferenceContext Context => _ctx;
    public Tokenizer Tokenizer { get; }
    readonly TokenTries _tries;          // the vocabulary's byte tries, built on the first grammar request
    readonly SamplerVocabulary _vocabulary; // what DRY reads: the tokenizer, the context, processed breakers
    public KvCache Cache => _ctx.Cache;
    /// <summary>Longest sequence (prompt + generated) one request may reach.</summary>
    public int MaxSequenceLength { get; }

    // Gauges and counters read by /metrics (written on the engine thread).
    public int RunningCount => Volatile.Read(ref _running);
    public int WaitingCount => Volatile.Read(ref _waiting);
    public long PromptTokensTotal => Interlocked.Read(ref _promptTokens);
    public long GenerationTokensTotal => Interlocked.Read(ref _generationTokens);
    public long StepsTotal => Interlocked.Read(ref _steps);
    public long PreemptionsTotal => _scheduler.TotalPreemptions;
    /// <summary>Speculative decoding: decode steps that verified drafts, draft tokens verified, drafts kept
    /// (vLLM's spec_decode_num_drafts / num_draft_tokens / num_accepted_tokens).</summary>
    public long SpecDraftsTotal => Interlocked.Read(ref _specDrafts);
    public long SpecDraftTokensTotal => Interlocked.Read(ref _specDraftTokens);
    public long SpecAcceptedTokensTotal => Interlocked.Read(ref _specAccepted);
    public double KvUsage => 1.0 - (double)_ctx.Cache.FreeBlocks / _ctx.Cache.BlockCount;
    int _running, _waiting;
    long _promptTokens, _generationTokens, _steps, _specDrafts, _specDraftTokens, _specAccepted;

    /// <summary>Raised on the engine thread when a request ends (any reason).</summary>
    public event Action<RequestStats>? RequestFinished;
    /// <summary>Raised on the engine thread after each step: (tokens in the batch, decode rows, seconds).</summary>
    public event Action<int, int, double>? StepCompleted;

    public Engine(InferenceContext context, Tokenizer tokenizer, EngineOptions? options = null)
    {
        _ctx = context;
        Tokenizer = tokenizer;
        _tries = new TokenTries(tokenizer);
        Options = options ?? new EngineOptions();
        _scheduler = new Scheduler(context.Cache, Options.Scheduler);
        MaxSequenceLength = Math.Min(context.Config.ContextLength, context.Cache.Capacity);
        _vocabulary = new SamplerVocabulary(tokenizer, MaxSequenceLength);
        _batch = new Batch(Math.Max(Options.Scheduler.TokenBudget, 16));
        if (Options.DraftContext != null && Options.Speculative == null)
            throw new CriaException("a draft model needs speculative decoding settings (EngineOptions.Speculative)");
        if (Options.Speculative is { } spec)
        {
            spec.Validate();
            if (context.Evicts) throw new CriaException("speculative decoding does not work with KV eviction (its scores would count rejected drafts)");
            if (spec.DraftMax > context.Cache.MaxRollback)
                throw new CriaException($"this KV cache (KIVI, or a hybrid model's windows) can take back at most {context.Cache.MaxRollback} positions at once; draft max {spec.DraftMax} is more");
            _spec = spec;
            if (Options.DraftContext is { } draft)
            {
                ModelDrafter.CheckCompatible(context.Model, draft.Model);
                if (draft.Evicts) throw new CriaException("the draft model's context must not evict KV blocks");
                if (spec.Margin > 0) throw new CriaException("the server's draft model does not run RAPID (a margin needs a drafter prompt per request)");
                _draftCtx = draft;
            }
            else _drafter = new PromptLookupDrafter(spec);
        }
        _draftBuffer = new int[_spec?.DraftMax ?? 0];
        _historyOf = i => _drafting[i].Sequence.TokenSpan;
        _p = _spec == null ? [] : new float[context.Config.VocabSize];
        _thread = new Thread(Loop) { IsBackground = true, Name = "cria-engine" };
        _thread.Start();
    }

    /// <summary>Queues a request; its events arrive on <see cref="EngineRequest.Events"/>. Cancelling
    /// <paramref name="cancel"/> ends the request (its channel completes with <see cref="OperationCanceledException"/>).</summary>
    public EngineRequest Submit(GenerationRequest request, CancellationToken cancel = default)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (request.Prompt.Length == 0) throw new InvalidRequestException("the prompt is empty (no tokens)");
        if (request.Prompt.Length >= MaxSequenceLength)
            throw new InvalidRequestException($"the prompt has {request.Prompt.Length} tokens but this server's context holds {MaxSequenceLength}; shorten the prompt");
        if (request.MaxTokens < 0) throw new InvalidRequestException($"max_tokens must be ≥ 0, got {request.MaxTokens}");
        foreach (var t in request.Prompt)
            if ((uint)t >= (uint)_ctx.Config.VocabSize) throw new InvalidRequestException($"token {t} is outside the vocabulary (0..{_ctx.Config.VocabSize - 1})");
        try { request.Sampler.Validate(_ctx.Config.VocabSize); } catch (CriaException e) { throw new InvalidRequestException(e.Message); }
        if (request.JsonObject && request.Grammar != null) throw new InvalidRequestException("a request takes json_object or a grammar, not both");
        OutputConstraint? constraint = null;
        if (request.JsonObject) constraint = new JsonObjectConstraint(Tokenizer);
        else if (request.Grammar is { } g)
        {
            try { constraint = new GrammarConstraint(_tries, g.Start()); }
            catch (GrammarException e) { throw new InvalidRequestException(e.Message); }
        }
        Sampler sampler;
        try { sampler = new Sampler(_ctx.Config.VocabSize, request.Sampler, request.Sampler.DryOn ? _vocabulary : null); }
        catch (CriaException e) { throw new InvalidRequestException(e.Message); }
        if (Interlocked.Increment(ref _queued) > Options.MaxWaiting)
        {
            Interlocked.Decrement(ref _queued);
            throw new EngineOverloadedException($"the server is busy: {Options.MaxWaiting} requests are already waiting");
        }

        foreach (var t in request.Prompt) sampler.Accept(t);
        var decoder = new StreamingDecoder(Tokenizer);
        if (request.ContinuesText) decoder.ContinueText();
        var r = new EngineRequest(Interlocked.Increment(ref _nextId), request, sampler, decoder)
        {
            Arrival = Stopwatch.GetTimestamp(),
            Drafting = new DraftBudget(_draftBuffer.Length, _spec?.Adaptive ?? false),
        };
        if (_draftCtx != null)
        {
            // its own sampler follows the request's settings and seed; its sequence in the draft context is the request id
            r.ModelDrafter = new ModelDrafter(_draftCtx, _spec, r.Id);
            r.ModelDrafter.Begin(request.Sampler);
        }
        r.Sequence = new SequenceState(r.Id, request.Prompt, request.MaxTokens) { Tag = r };
        r.Constraint = constraint;
        _incoming.Enqueue(r);
        if (cancel.CanBeCanceled)
            r.Registration = cancel.Register(static o => { var (e, q) = ((Engine, EngineRequest))o!; e.Cancel(q); }, (this, r));
        _signal.Set();
        return r;
    }

    /// <summary>
    /// The embedding of a token sequence: the mean over its tokens of the final hidden state (after the output norm),
    /// L2-normalised (llama.cpp's mean pooling). It runs on the engine thread between steps, as its own forward pass
    /// on a temporary sequence, and leaves no KV blocks behind.
    /// </summary>
    public Task<float[]> EmbedAsync(int[] tokens, CancellationToken cancel = default)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (tokens.Length == 0) throw new InvalidRequestException("the input is empty (no tokens)");
        if (tokens.Length > MaxSequenceLength)
            throw new InvalidRequestException($"the input has {tokens.Length} tokens but this server's context holds {MaxSequenceLength}; shorten the input");
        foreach (var t in tokens)
            if ((uint)t >= (uint)_ctx.Config.VocabSize) throw new InvalidRequestException($"token {t} is outside the vocabulary (0..{_ctx.Config.VocabSize - 1})");
        var job = new EmbeddingJob(tokens, new TaskCompletionSource<float[]>(TaskCreationOptions.RunContinuationsAsynchronously), cancel);
        _embedIncoming.Enqueue(job);
        _signal.Set();
        return job.Result.Task;
    }

    void RunEmbeddings()
    {
        while (_embedIncoming.TryDequeue(out var j)) _embedPending.Add(j);
        for (int i = 0; i < _embedPending.Count; i++)
        {
            var j = _embedPending[i];
            if (j.Cancel.IsCancellationRequested) { j.Result.TrySetCanceled(j.Cancel); _embedPending.RemoveAt(i--); continue; }
            if (_ctx.Cache.BlocksNeeded(EmbeddingSequenceId, j.Tokens.Length) > _ctx.Cache.FreeBlocks) continue; // after a few steps
            _embedPending.RemoveAt(i--);
            float[]? v = null;
            Exception? error = null;
            try
            {
                _batch.Clear();
                _batch.AddSequence(j.Tokens, 0, EmbeddingSequenceId);
                _ctx.KeepEmbeddings = true;
                _ctx.Decode(_batch);
                int dim = _ctx.Config.Dim;
                var sum = new double[dim];
                for (int r = 0; r < j.Tokens.Length; r++)
                {
                    var e = _ctx.Embedding(r);
                    for (int d = 0; d < dim; d++) sum[d] += e[d];
                }
                double norm = Math.Sqrt(sum.Sum(x => x * x));
                v = new float[dim];
                for (int d = 0; d < dim; d++) v[d] = (float)(sum[d] / (norm > 0 ? norm : 1));
                Interlocked.Add(ref _promptTokens, j.Tokens.Length);
            }
            catch (Exception e) { error = e; }
            finally
            {
                _ctx.KeepEmbeddings = false;
                _ctx.Cache.Remove(EmbeddingSequenceId);
            }
            // Completed only after the blocks are back, so a caller never sees them in use.
            if (v != null) j.Result.TrySetResult(v); else j.Result.TrySetException(error!);
        }
    }

    /// <summary>Ends a request early; its KV blocks are freed at the next step boundary.</summary>
    public void Cancel(EngineRequest r)
    {
        _cancelled.Enqueue(r);
        _signal.Set();
    }

    /// <summary>Submits and reads the whole stream.</summary>
    public async IAsyncEnumerable<EngineOutput> GenerateAsync(GenerationRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel = default)
    {
        var r = Submit(request, cancel);
        try
        {
            await foreach (var e in r.Events.ReadAllAsync(CancellationToken.None)) yield return e;
        }
        finally { if (!r.Done) Cancel(r); }
    }

    void Loop()
    {
        if (Options.StepGate is { } gate)
            while (!gate.IsCompleted && !_stopping) gate.Wait(50);
        while (true)
        {
            _signal.Reset();
            Drain();
            if (_stopping) break;
            RunEmbeddings();
            if (!_scheduler.HasWork)
            {
                if (_embedPending.Count > 0) _signal.Wait(5); else _signal.Wait();
                continue;
            }
            var step = _scheduler.Schedule();
            Volatile.Write(ref _running, _scheduler.RunningCount);
            Volatile.Write(ref _waiting, _scheduler.WaitingCount);
            if (step.IsEmpty) { _signal.Wait(5); continue; } // nothing fits now (cannot happen with a sane pool)
            RunStep(step);
        }
        // Shutting down: end whatever is left.
        while (_embedIncoming.TryDequeue(out var ej)) _embedPending.Add(ej);
        foreach (var ej in _embedPending) ej.Result.TrySetException(new ObjectDisposedException(nameof(Engine)));
        foreach (var s in _scheduler.Running.Concat(_scheduler.Waiting).ToArray()) Abort((EngineRequest)s.Tag!, new ObjectDisposedException(nameof(Engine)));
    }

    void Drain()
    {
        while (_incoming.TryDequeue(out var r))
        {
            if (r.Done) continue;
            _scheduler.Add(r.Sequence);
        }
        while (_cancelled.TryDequeue(out var r))
            if (!r.Done) Abort(r, new OperationCanceledException("the request was cancelled"));
        Volatile.Write(ref _running, _scheduler.RunningCount);
        Volatile.Write(ref _waiting, _scheduler.WaitingCount);
    }

    void RunStep(SchedulerOutput step)
    {
        long t0 = Stopwatch.GetTimestamp();
        _batch.Clear();
        var rows = new int[step.Chunks.Count]; // the row whose logits give a chunk's next token (its first draft row's verifier)
        for (int i = 0; i < step.Chunks.Count; i++)
        {
            var c = step.Chunks[i];
            int last = c.Count - c.Drafts - 1; // the chunk's last own token; the draft rows follow it
            for (int j = 0; j < c.Count; j++)
            {
                int row = _batch.Add(c.Token(j), c.Start + j, c.Sequence.Id, c.WantsLogits && j >= last);
                if (j == last) rows[i] = row;
            }
        }
        try { _ctx.Decode(_batch); }
        catch (Exception e)
        {
            foreach (var c in step.Chunks) Abort((EngineRequest)c.Sequence.Tag!, e);
            return;
        }
        _scheduler.Complete(step);
        long now = Stopwatch.GetTimestamp();
        int prompt = 0;
        foreach (var c in step.Chunks)
        {
            var req = (EngineRequest)c.Sequence.Tag!;
            if (req.Scheduled == 0) req.Scheduled = t0; // first time in a batch: the end of its queueing
            // Publish before sampling: a request that finishes now still leaves its blocks to the prefix cache.
            _ctx.Cache.PublishFullBlocks(c.Sequence.Id, c.Sequence.TokenSpan);
            if (c.Start < c.Sequence.PromptLength) prompt += Math.Min(c.Start + c.Count, c.Sequence.PromptLength) - c.Start;
        }
        if (_draftCtx != null)
        {
            // A draft model costs a forward pass per drafted token: draft no more than an even share of the rows the
            // next step leaves for drafts (the scheduler's water-filling would cut the rest).
            int running = Math.Max(1, _scheduler.RunningCount);
            int left = Math.Min(Options.Scheduler.TokenBudget, Options.Scheduler.DraftRowLimit) - running;
            _modelDraftShare = left <= 0 ? 0 : (left + running - 1) / running;
        }
        for (int i = 0; i < step.Chunks.Count; i++)
        {
            var c = step.Chunks[i];
            var req = (EngineRequest)c.Sequence.Tag!;
            if (c.Drafts > 0) Verify(req, c, rows[i], now);
            else if (c.WantsLogits) Emit(req, _ctx.Logits(rows[i]), now);
            else continue;
            if (!req.Done && _spec != null) Propose(req);
        }
        if (_drafting.Count > 0) DraftWithModel();
        Interlocked.Add(ref _promptTokens, prompt);
        Interlocked.Increment(ref _steps);
        Volatile.Write(ref _running, _scheduler.RunningCount);
        Volatile.Write(ref _waiting, _scheduler.WaitingCount);
        StepCompleted?.Invoke(step.TokenCount, step.DecodeCount, Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    /// <summary>Samples the next token of a request from its logits and streams it out.</summary>
    void Emit(EngineRequest r, ReadOnlySpan<float> logits, long now)
    {
        if (r.Sequence.Generated >= r.Request.MaxTokens) { Finish(r, "length", now); return; } // max_tokens = 0: prompt only
        int token;
        if (r.Constraint != null)
        {
            token = SampleConstrained(r, logits);
            if (token < 0) { Finish(r, "stop", now); return; } // no token can continue the output
        }
        else token = r.Sampler.Sample(logits);
        Commit(r, token, logits, now);
    }

    /// <summary>
    /// Speculative decoding's verification of one request's step (as <see cref="Generator"/> does it): row
    /// <paramref name="row0"/> + j holds the logits for draft j's position (row0: the decode token's row), and
    /// row0 + k those after the last draft.
    /// Each draft is kept with the target's probability of it (a prompt-lookup draft is deterministic); the first one
    /// rejected is replaced by a token from the rest of the distribution, and if all are kept a bonus token is sampled
    /// from the last row. Kept drafts keep their K/V; the rejected ones' K/V are dropped.
    /// </summary>
    void Verify(EngineRequest r, ScheduledChunk c, int row0, long now)
    {
        var seq = c.Sequence;
        int k = c.Drafts, kept = 0;
        Interlocked.Increment(ref _specDrafts);
        Interlocked.Add(ref _specDraftTokens, k);
        for (int j = 0; ; j++)
        {
            var logits = _ctx.Logits(row0 + j);
            int token;
            bool ok = false;
            if (j < k)
            {
                r.Sampler.Distribution(logits, _p);
                // a draft model's sampled draft was drawn from q; a greedy or lookup draft is deterministic (q empty)
                var q = r.ModelDrafter is { } md ? md.DraftDistribution(j) : default;
                ok = Speculative.AcceptOrResample(_p, q, seq.Drafts[j], r.Sampler, out token);
            }
            else token = r.Sampler.Sample(logits); // every draft kept: one more token from the last row
            if (!ok)
            {
                r.Drafting.Verified(k, kept);
                _scheduler.KeepDrafts(c, kept);
            }
            else { kept++; Interlocked.Increment(ref _specAccepted); }
            if (!Commit(r, token, logits, now) || !ok) return;
        }
    }

    /// <summary>Drafts the tokens a decoding request's next step verifies — prompt lookup over its prompt and output,
    /// or the draft model continuing them — at most what its max_tokens and the context leave after the step's own
    /// token (and, for a draft model, at most its share of the next step's draft rows). A full draft context drops the
    /// request's draft sequence and drafts nothing this step.</summary>
    void Propose(EngineRequest r)
    {
        var seq = r.Sequence;
        int room = Math.Min(Math.Min(r.Request.MaxTokens - seq.Generated, MaxSequenceLength - seq.Total) - 1, r.Drafting.Window);
        if (r.ModelDrafter != null) room = Math.Min(room, _modelDraftShare);
        int k = 0;
        if (r.Constraint == null && r.Request.Sampler.Deterministic && room > 0 && r.Drafting.Drafts())
        {
            if (r.ModelDrafter is { } md)
            {
                // drafted with the step's other model drafts, after every request's verification (DraftWithModel)
                if (_draftRoom.Length <= _drafting.Count) Array.Resize(ref _draftRoom, 2 * _drafting.Count + 8);
                _draftRoom[_drafting.Count] = room;
                _drafting.Add(r); _drafters.Add(md);
                return;
            }
            k = _drafter!.Draft(seq.TokenSpan, _draftBuffer.AsSpan(0, room));
        }
        seq.SetDrafts(_draftBuffer.AsSpan(0, k));
    }

    /// <summary>The step's model drafts, for every request that asked, in lockstep through the draft context: one
    /// batch of catch-up rows, then one batch per draft position (<see cref="ModelDrafter.DraftTogether"/>).</summary>
    void DraftWithModel()
    {
        int n = _drafting.Count, stride = _spec!.DraftMax;
        if (_draftCounts.Length < n) { _draftCounts = new int[2 * n]; _draftScratch = new int[4 * n]; _draftTokens = new int[2 * n * stride]; }
        ModelDrafter.DraftTogether(_draftCtx!, _draftBatch, _drafters, _historyOf, _draftRoom.AsSpan(0, n), _draftTokens, _draftCounts, _draftScratch);
        for (int i = 0; i < n; i++)
        {
            var r = _drafting[i];
            r.Sequence.SetDrafts(_draftTokens.AsSpan(i * stride, _draftCounts[i]));
            // a draft model that declined (p-min) still cost its forward steps: the adaptive budget pauses it
            if (_draftCounts[i] == 0) r.Drafting.Verified(0, 0, emptyCosts: true);
        }
        _drafting.Clear(); _drafters.Clear();
    }

    /// <summary>Appends a chosen token to a request and streams it out; false when that ended the request.</summary>
    bool Commit(EngineRequest r, int token, ReadOnlySpan<float> logits, long now)
    {
        var req = r.Request;
        var seq = r.Sequence;
        r.Sampler.Accept(token);
        seq.Append(token);
        Interlocked.Increment(ref _generationTokens);
        if (seq.Generated == 1) { r.FirstToken = now; Interlocked.Decrement(ref _queued); }
        else if (now != r.LastToken) r.Itl.Add(Stopwatch.GetElapsedTime(r.LastToken, now).TotalSeconds); // one per step, as vLLM: kept drafts arrive with their step's token
        r.LastToken = now;

        float lp = 0; TokenLogprob[]? top = null;
        if (req.TopLogprobs >= 0) (lp, top) = Logprobs(logits, token, req.TopLogprobs);

        if (!req.IgnoreEog && Tokenizer.IsEog(token))
        {
            r.Writer.TryWrite(new EngineOutput(token, "", lp, top));
            Finish(r, "stop", now);
            return false;
        }
        string text = r.Decoder.Add(token);
        if (req.Stop.Count > 0)
        {
            string all = r.Held + text;
            int cut = FirstStop(all, req.Stop);
            if (cut >= 0)
            {
                r.Held = "";
                r.Writer.TryWrite(new EngineOutput(token, all[..cut], lp, top));
                Finish(r, "stop", now, flushText: false);
                return false;
            }
            int hold = HoldBack(all, req.Stop);
            r.Held = all[(all.Length - hold)..];
            text = all[..(all.Length - hold)];
        }
        r.Writer.TryWrite(new EngineOutput(token, text, lp, top));
        if (r.Constraint?.IsComplete == true) { Finish(r, "stop", now); return false; }
        if (seq.Generated >= req.MaxTokens || seq.Total >= MaxSequenceLength) { Finish(r, "length", now); return false; }
        return true;
    }

    /// <summary>Samples among the tokens the request's constraint allows next; -1 when none is (or the grammar is too
    /// ambiguous to follow: <see cref="GrammarState.MaxStacks"/>).</summary>
    int SampleConstrained(EngineRequest r, ReadOnlySpan<float> logits)
    {
        var masked = r.Masked ??= new float[logits.Length];
        // The first token's leading space is dropped by the streaming decoder: judge the bytes that are emitted.
        int lstrip = r.Sequence.Generated == 0 && Tokenizer.AddSpacePrefix && !r.Request.ContinuesText ? 1 : 0;
        try
        {
            if (!r.Constraint!.Mask(logits, masked, lstrip)) return -1;
            int token = r.Sampler.Sample(masked);
            r.Constraint.Accept(token, lstrip);
            return token;
        }
        catch (GrammarException) { return -1; }
    }

    (float, TokenLogprob[]?) Logprobs(ReadOnlySpan<float> logits, int token, int topN)
    {
        float max = float.NegativeInfinity;
        foreach (var l in logits) if (l > max) max = l;
        double sum = 0;
        foreach (var l in logits) sum += Math.Exp(l - max);
        float lse = max + (float)Math.Log(sum);
        float chosen = logits[token] - lse;
        if (topN == 0) return (chosen, null);
        topN = Math.Min(topN, logits.Length);
        var top = new TokenLogprob[topN];
        int n = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i] - lse;
            if (n < topN) { top[n++] = new TokenLogprob(i, v); }
            else if (v > top[n - 1].Logprob) top[n - 1] = new TokenLogprob(i, v);
            else continue;
            for (int j = n - 1; j > 0 && top[j].Logprob > top[j - 1].Logprob; j--) (top[j], top[j - 1]) = (top[j - 1], top[j]);
        }
        return (chosen, top);
    }

    static int FirstStop(string text, IReadOnlyList<string> stops)
    {
        int best = -1;
        foreach (var s in stops)
        {
            if (s.Length == 0) continue;
            int i = text.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best;
    }

    /// <summary>Length of the longest suffix of <paramref name="text"/> that is a proper prefix of a stop string.</summary>
    static int HoldBack(string text, IReadOnlyList<string> stops)
    {
        int hold = 0;
        foreach (var s in stops)
            for (int k = Math.Min(s.Length - 1, text.Length); k > hold; k--)
                if (text.AsSpan(text.Length - k).SequenceEqual(s.AsSpan(0, k))) { hold = k; break; }
        return hold;
    }

    void Finish(EngineRequest r, string reason, long now, bool flushText = true)
    {
        string tail = flushText ? r.Held + r.Decoder.Flush() : "";
        r.Held = "";
        r.Writer.TryWrite(new EngineOutput(-1, tail, 0, null, reason));
        End(r, reason, null, now);
    }

    void Abort(EngineRequest r, Exception e) => End(r, e is OperationCanceledException ? "cancelled" : "error", e, Stopwatch.GetTimestamp());

    void End(EngineRequest r, string reason, Exception? error, long now)
    {
        if (r.Done) return;
        r.Done = true;
        if (r.Sequence.Generated == 0) Interlocked.Decrement(ref _queued);
        _scheduler.Finish(r.Sequence);
        r.ModelDrafter?.Reset(); // its draft sequence's blocks go back to the draft context
        r.Registration.Dispose();
        var s = r.Sequence;
        double Sec(long a, long b) => a == 0 || b == 0 ? 0 : Stopwatch.GetElapsedTime(a, b).TotalSeconds;
        r.Stats = new RequestStats(s.PromptLength, s.CachedPromptTokens, s.Generated, reason,
            Sec(r.Arrival, r.Scheduled), Sec(r.Arrival, r.FirstToken), Sec(r.Arrival, now), r.Itl, s.Preemptions);
        r.Writer.TryComplete(error);
        try { RequestFinished?.Invoke(r.Stats); } catch { /* an observer's failure must not stop the engine */ }
    }

    /// <summary>A racy snapshot of the running requests (diagnostics).</summary>
    public string[] DebugRunning() => _scheduler.Running.ToArray().Select(s => $"#{s.Id} {s.Generated}/{s.MaxNewTokens} tokens, done={((EngineRequest)s.Tag!).Done}").ToArray();

    /// <summary>Stops the loop: requests still queued or running end with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        foreach (var r in _incoming) Cancel(r);
        _signal.Set();
        _thread.Join();
        _signal.Dispose();
    }
}
