using Cria.Inference;

namespace Cria.Serving;

/// <summary>Settings of the <see cref="Scheduler"/> (vLLM's max_num_batched_tokens / max_num_seqs / enable_chunked_prefill).</summary>
public sealed record SchedulerOptions
{
    /// <summary>Tokens per engine step, shared by decodes and prefill chunks (SARATHI's chunk size).</summary>
    public int TokenBudget { get; init; } = 256;
    /// <summary>Sequences running at once.</summary>
    public int MaxSequences { get; init; } = 32;
    /// <summary>Split prompts into chunks that fill the budget left by decodes. Off: whole prompts only (a prompt larger
    /// than the remaining budget still runs whole when it is the first prefill of its step, so it is never starved).</summary>
    public bool ChunkedPrefill { get; init; } = true;
    /// <summary>Look new prompts up in the KV cache's prefix cache.</summary>
    public bool PrefixCaching { get; init; } = true;
    /// <summary>Speculative decoding: draft tokens are scheduled only while a step's decode rows and drafts together
    /// stay within this many rows. 16 is the most rows the decode kernels take; a larger step runs the prefill kernels,
    /// where every row costs about what a prompt token does, and drafts that are mostly rejected then slow everyone
    /// (docs/serving.md, "Speculative decoding").</summary>
    public int DraftRowLimit { get; init; } = 16;

    public void Validate()
    {
        if (TokenBudget < 1) throw new ArgumentOutOfRangeException(nameof(TokenBudget), TokenBudget, "token budget must be ≥ 1");
        if (MaxSequences < 1) throw new ArgumentOutOfRangeException(nameof(MaxSequences), MaxSequences, "max sequences must be ≥ 1");
        if (DraftRowLimit < 0) throw new ArgumentOutOfRangeException(nameof(DraftRowLimit), DraftRowLimit, "the draft row limit must be ≥ 0");
    }
}

public enum SequenceStatus { Waiting, Running, Finished }

/// <summary>
/// The scheduler's view of one request: its tokens (prompt, then generated ones) and how many of them are in the KV
/// cache. The tokens from <see cref="Computed"/> to <see cref="Total"/> still have to run through the model; the
/// step that reaches <see cref="Total"/> yields the logits of the next token.
/// </summary>
public sealed class SequenceState(int id, IReadOnlyList<int> prompt, int maxNewTokens)
{
    readonly List<int> _tokens = new(prompt);

    /// <summary>Sequence id in the KV cache.</summary>
    public int Id { get; } = id;
    public int PromptLength { get; } = prompt.Count;
    public int MaxNewTokens { get; } = maxNewTokens;
    public IReadOnlyList<int> Tokens => _tokens;
    public int Total => _tokens.Count;
    /// <summary>Tokens whose K/V are in the cache.</summary>
    public int Computed { get; internal set; }
    public int Remaining => Total - Computed;
    public int Generated => Total - PromptLength;
    /// <summary>Prefill done: only the last sampled token is left to feed (one decode row).</summary>
    public bool IsDecoding => Remaining == 1 && Generated > 0;
    public SequenceStatus Status { get; internal set; } = SequenceStatus.Waiting;
    /// <summary>Times this request was preempted (its KV dropped, to be recomputed).</summary>
    public int Preemptions { get; internal set; }
    /// <summary>Prompt tokens found in the prefix cache at the last admission.</summary>
    public int CachedPromptTokens { get; internal set; }
    /// <summary>Caller data (the engine's request).</summary>
    public object? Tag { get; init; }

    /// <summary>Appends a sampled token (its K/V is computed by the next step).</summary>
    public void Append(int token) => _tokens.Add(token);

    /// <summary>Speculative decoding: tokens proposed to follow <see cref="Tokens"/>, which the next decode step
    /// verifies (drafts[0 .. DraftCount)); the scheduler may take fewer of them. Not part of the sequence until kept.</summary>
    public int DraftCount { get; private set; }
    int[] _drafts = [];
    public ReadOnlySpan<int> Drafts => _drafts.AsSpan(0, DraftCount);

    /// <summary>Sets the drafts for the next step (empty: none).</summary>
    public void SetDrafts(ReadOnlySpan<int> drafts)
    {
        if (_drafts.Length < drafts.Length) _drafts = new int[Math.Max(drafts.Length, 16)];
        drafts.CopyTo(_drafts);
        DraftCount = drafts.Length;
    }
    public ReadOnlySpan<int> TokenSpan => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_tokens);
}

/// <summary>One piece of a step: <see cref="Count"/> tokens of a sequence from position <see cref="Start"/>. The last
/// <see cref="Drafts"/> of them are the sequence's first draft tokens (speculative decoding), placed after its last
/// token: a decode row followed by Drafts rows, every one of which asks for logits.</summary>
public readonly record struct ScheduledChunk(SequenceState Sequence, int Start, int Count, int Drafts = 0)
{
    /// <summary>The chunk reaches the sequence's last token (when scheduled), so its logits give the next token.</summary>
    public bool WantsLogits { get; } = Start + Count - Drafts == Sequence.Total;
    public bool IsDecode { get; } = Count - Drafts == 1 && Start >= Sequence.PromptLength;

    /// <summary>The token of row <paramref name="i"/> (0 ≤ i &lt; Count): the sequence's own tokens, then its drafts.</summary>
    public int Token(int i) => i < Count - Drafts ? Sequence.Tokens[Start + i] : Sequence.Drafts[i - (Count - Drafts)];
}

/// <summary>What to run in one step: decodes first, then prefill chunks, in batch order.</summary>
public sealed class SchedulerOutput
{
    public List<ScheduledChunk> Chunks { get; } = new();
    /// <summary>Requests preempted while building this step (now at the front of the waiting queue).</summary>
    public List<SequenceState> Preempted { get; } = new();
    public int TokenCount { get; internal set; }
    public int DecodeCount { get; internal set; }
    /// <summary>Draft tokens this step verifies (speculative decoding), included in <see cref="TokenCount"/>.</summary>
    public int DraftCount { get; internal set; }
    public bool IsEmpty => Chunks.Count == 0;
}

/// <summary>
/// Continuous batching with stall-free chunked prefill (Sarathi-Serve; vLLM's V1 scheduler with chunked prefill).
/// Pure bookkeeping: it never runs the model. Each <see cref="Schedule"/> builds one step under a token budget:
/// (1) one decode token for every running sequence whose prefill is done, (2) prefill chunks of running sequences
/// filling the budget left, (3) FCFS admission of waiting requests while sequences, budget and KV blocks allow.
/// When the KV pool cannot hold a step's tokens, the newest running request is preempted by recompute: its blocks are
/// freed and it goes back to the front of the waiting queue, to be prefilled again (prompt and generated tokens).
/// The caller runs the step, then calls <see cref="Complete"/>, appends sampled tokens, and <see cref="Finish"/>es
/// requests that are done.
/// </summary>
public sealed class Scheduler
{
    readonly IKvBlockPool _pool;
    readonly List<SequenceState> _running = new();      // admission order (oldest first)
    readonly LinkedList<SequenceState> _waiting = new(); // FCFS; preempted requests go back to the front

    public SchedulerOptions Options { get; }
    public IReadOnlyList<SequenceState> Running => _running;
    public IEnumerable<SequenceState> Waiting => _waiting;
    public int RunningCount => _running.Count;
    public int WaitingCount => _waiting.Count;
    public bool HasWork => _running.Count > 0 || _waiting.Count > 0;
    public long TotalPreemptions { get; private set; }

    public Scheduler(IKvBlockPool pool, SchedulerOptions? options = null)
    {
        _pool = pool;
        Options = options ?? new SchedulerOptions();
        Options.Validate();
    }

    /// <summary>Queues a request (FCFS). Its prompt must fit the KV pool on its own.</summary>
    public void Add(SequenceState seq)
    {
        if (seq.Status != SequenceStatus.Waiting || seq.Computed != 0) throw new InvalidOperationException("only new requests can be added");
        if (seq.Total == 0) throw new ArgumentException("a request needs at least one token");
        if (BlocksFor(seq.Total) > _pool.BlockCount)
            throw new ArgumentException($"the request's {seq.Total} tokens need more KV blocks than the pool has ({_pool.BlockCount} of {_pool.BlockSize})");
        _waiting.AddLast(seq);
    }

    /// <summary>Removes a request from the queues (finished, cancelled or failed) and frees its KV blocks at once.</summary>
    public void Finish(SequenceState seq)
    {
        if (seq.Status == SequenceStatus.Finished) return;
        if (seq.Status == SequenceStatus.Running) _running.Remove(seq);
        else _waiting.Remove(seq);
        _pool.Remove(seq.Id);
        seq.Status = SequenceStatus.Finished;
    }

    int BlocksFor(int tokens) => (tokens + _pool.BlockSize - 1) / _pool.BlockSize;

    /// <summary>Builds the next step. The KV pool is not changed except by preemption and prefix-cache attachment.</summary>
    public SchedulerOutput Schedule()
    {
        var o = new SchedulerOutput();
        var reserved = new Dictionary<SequenceState, int>(); // blocks this step will take, per sequence
        int reservedTotal = 0;
        int budget = Options.TokenBudget;
        int FreeLeft() => _pool.FreeBlocks - reservedTotal;

        // Makes room for `need` more blocks by preempting the newest running requests; false when `self` went.
        bool MakeRoom(SequenceState self, int need)
        {
            while (need > FreeLeft())
            {
                var victim = _running[^1];
                Preempt(victim, o, reserved, ref reservedTotal, ref budget);
                if (victim == self) return false;
            }
            return true;
        }

        // (1) decodes, oldest first. Draft tokens (speculative decoding) ride along only in the rows left after one for
        // every decode (within the budget and the draft row limit), shared out evenly, and only in blocks that no
        // decode row of this step needs: drafts never cause a preemption.
        int level = DraftLevel(Math.Min(budget, Options.DraftRowLimit), out int spare);
        int decodeBlocks = 0; // blocks the decode rows not yet placed will take
        foreach (var s in _running) if (s.IsDecoding) decodeBlocks += _pool.BlocksNeeded(s.Id, 1);
        for (int i = 0; i < _running.Count && budget > 0; i++)
        {
            var s = _running[i];
            if (!s.IsDecoding) continue;
            int drafts = Math.Min(s.DraftCount, level + (s.DraftCount > level && spare > 0 ? 1 : 0)); // rows ≤ budget by DraftLevel
            if (drafts > level) spare--;
            int one = _pool.BlocksNeeded(s.Id, 1), need = _pool.BlocksNeeded(s.Id, 1 + drafts);
            if (drafts > 0 && need - one > FreeLeft() - decodeBlocks) { drafts = 0; need = one; }
            decodeBlocks -= one;
            if (!MakeRoom(s, need)) break;
            Reserve(s, need, reserved, ref reservedTotal);
            o.Chunks.Add(new ScheduledChunk(s, s.Computed, 1 + drafts, drafts));
            o.DecodeCount++;
            o.DraftCount += drafts;
            budget -= 1 + drafts;
        }

        // (2) prefill chunks of running requests.
        bool prefillPlanned = false;
        for (int i = 0; i < _running.Count && budget > 0; i++)
        {
            var s = _running[i];
            if (s.IsDecoding || s.Remaining == 0) continue;
            int n = PrefillTokens(s, budget, prefillPlanned);
            if (n == 0) continue;
            int need = _pool.BlocksNeeded(s.Id, n);
            if (!MakeRoom(s, need)) break;
            Reserve(s, need, reserved, ref reservedTotal);
            o.Chunks.Add(new ScheduledChunk(s, s.Computed, n));
            budget -= Math.Min(budget, n);
            prefillPlanned = true;
        }

        // (3) admission, FCFS: stop at the first request that does not fit (no overtaking).
        while (_waiting.First is { } node && _running.Count < Options.MaxSequences && budget > 0)
        {
            var s = node.Value;
            if (s.Computed == 0 && Options.PrefixCaching && !IsInCache(s)) s.CachedPromptTokens = _pool.AttachPrefix(s.Id, s.TokenSpan);
            s.Computed = _pool.Length(s.Id);
            int n = PrefillTokens(s, budget, prefillPlanned);
            // Admit only when the whole rest of the prompt fits the free blocks now (SARATHI's can_allocate),
            // so admitted prefills are not preempted halfway by the next chunk.
            if (n == 0 || _pool.BlocksNeeded(s.Id, s.Remaining) > FreeLeft())
            {
                if (s.Computed > 0) { _pool.Remove(s.Id); s.Computed = 0; s.CachedPromptTokens = 0; }
                break;
            }
            _waiting.RemoveFirst();
            s.Status = SequenceStatus.Running;
            _running.Add(s);
            Reserve(s, _pool.BlocksNeeded(s.Id, n), reserved, ref reservedTotal);
            o.Chunks.Add(new ScheduledChunk(s, s.Computed, n));
            budget -= Math.Min(budget, n);
            prefillPlanned = true;
        }

        foreach (var c in o.Chunks) o.TokenCount += c.Count;
        return o;
    }

    bool IsInCache(SequenceState s) => _pool.Length(s.Id) > 0;

    /// <summary>
    /// Shares <paramref name="rows"/> step rows among the decoding sequences: one each, then drafts by water-filling —
    /// every sequence may verify min(its drafts, level) drafts, the largest level that fits; <paramref name="extra"/>
    /// rows are left, one more each for the oldest sequences that drafted more than the level.
    /// </summary>
    int DraftLevel(int rows, out int extra)
    {
        int decoding = 0, most = 0;
        foreach (var s in _running)
            if (s.IsDecoding) { decoding++; most = Math.Max(most, s.DraftCount); }
        int spare = rows - decoding, level = 0;
        extra = 0;
        if (spare <= 0 || most == 0) return 0;
        int Used(int l) { int u = 0; foreach (var s in _running) if (s.IsDecoding) u += Math.Min(s.DraftCount, l); return u; }
        while (level < most && Used(level + 1) <= spare) level++;
        extra = spare - Used(level);
        return level;
    }

    int PrefillTokens(SequenceState s, int budget, bool prefillPlanned)
    {
        int rem = s.Remaining;
        if (Options.ChunkedPrefill) return Math.Min(rem, budget);
        return rem <= budget || !prefillPlanned ? rem : 0;
    }

    static void Reserve(SequenceState s, int blocks, Dictionary<SequenceState, int> reserved, ref int total)
    {
        reserved[s] = reserved.GetValueOrDefault(s) + blocks;
        total += blocks;
    }

    void Preempt(SequenceState s, SchedulerOutput o, Dictionary<SequenceState, int> reserved, ref int reservedTotal, ref int budget)
    {
        for (int i = o.Chunks.Count - 1; i >= 0; i--)
            if (o.Chunks[i].Sequence == s)
            {
                budget += o.Chunks[i].Count;
                if (o.Chunks[i].IsDecode) o.DecodeCount--;
                o.DraftCount -= o.Chunks[i].Drafts;
                o.Chunks.RemoveAt(i);
            }
        if (reserved.Remove(s, out int r)) reservedTotal -= r;
        _running.Remove(s);
        _pool.Remove(s.Id);
        s.Computed = 0;
        s.CachedPromptTokens = 0;
        s.SetDrafts([]);
        s.Status = SequenceStatus.Waiting;
        s.Preemptions++;
        TotalPreemptions++;
        _waiting.AddFirst(s);
        o.Preempted.Add(s);
    }

    /// <summary>Records that a step ran: every chunk's own tokens are now in the KV cache. Draft rows are in the
    /// cache too, until <see cref="KeepDrafts"/> says how many of them stay.</summary>
    public void Complete(SchedulerOutput step)
    {
        foreach (var c in step.Chunks)
        {
            if (c.Sequence.Status != SequenceStatus.Running) continue;
            c.Sequence.Computed = c.Start + c.Count - c.Drafts;
        }
    }

    /// <summary>
    /// After verifying a chunk's drafts: the first <paramref name="kept"/> drafts, now appended to the sequence's
    /// tokens, keep their K/V; the rejected drafts' K/V are dropped (llama.cpp's <c>llama_memory_seq_rm</c>), which
    /// returns blocks that only they used.
    /// </summary>
    public void KeepDrafts(ScheduledChunk c, int kept)
    {
        var s = c.Sequence;
        if (s.Status != SequenceStatus.Running) return;
        if ((uint)kept > (uint)c.Drafts || s.Total < c.Start + 1 + kept)
            throw new InvalidOperationException($"cannot keep {kept} of {c.Drafts} drafts");
        s.Computed = c.Start + 1 + kept;
        _pool.Truncate(s.Id, s.Computed);
        s.SetDrafts([]);
    }
}
