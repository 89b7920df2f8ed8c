namespace Cria.Inference;

/// <summary>Which tokens a bounded KV cache keeps (--kv-evict).</summary>
public enum KvEvictionType
{
    None,
    /// <summary>StreamingLLM (Xiao et al. 2023): the first tokens (attention sinks) and a window of the most recent.</summary>
    Sinks,
    /// <summary>H2O (Zhang et al. 2023): heavy hitters by attention accumulated over every query so far, plus a recent window.</summary>
    H2O,
    /// <summary>SnapKV (Li et al. 2024): tokens the last W queries (the observation window) attend to, pooled over
    /// neighbours, chosen at the end of each prefill chunk (and each decode step) as Locret does for chunked prefill.</summary>
    SnapKV,
    /// <summary>Locret (Huang et al. 2024): each token's importance predicted when it is written by trained retaining
    /// heads (<see cref="RetainingHeads"/>, <c>cria train-locret</c>), plus a recent window (Locret's stabilizers).</summary>
    Locret,
}

/// <summary>Eviction settings: policy, token budget per sequence, sink count, window sizes.</summary>
public sealed record KvEvictionOptions
{
    public KvEvictionType Type { get; init; }
    /// <summary>Most tokens a sequence keeps in the cache after each forward step (--kv-budget).</summary>
    public int Budget { get; init; }
    /// <summary>Attention sinks kept forever (StreamingLLM uses 4; rounded up to whole blocks).</summary>
    public int SinkTokens { get; init; } = 4;
    /// <summary>SnapKV observation window (queries whose attention scores the prefix; SnapKV's default 32).</summary>
    public int ObservationWindow { get; init; } = 32;
    /// <summary>StreamingLLM's position re-assignment (--kv-shift): after eviction, rotary positions are positions in the
    /// cache (sinks 0…, then the kept tokens in order) rather than in the text, so no query–key distance exceeds the
    /// cache's length however long the stream runs. Off: every token keeps its text position.</summary>
    public bool ShiftPositions { get; init; }
    /// <summary>SnapKV pooling kernel (average pooling of the window's attention over neighbouring tokens; default 5).</summary>
    public int PoolKernel { get; init; } = 5;
    /// <summary>Locret's retaining heads (--kv-heads FILE), needed by <see cref="KvEvictionType.Locret"/>.</summary>
    public RetainingHeads? Heads { get; init; }
    /// <summary>Locret's stabilizers: the most recent tokens, kept whatever their predicted scores (the paper keeps
    /// 2,500 of a 6,000 budget; here two 16-token blocks by default, as SnapKV's window).</summary>
    public int Stabilizers { get; init; } = 32;

    public static readonly KvEvictionOptions None = new();

    public static KvEvictionType Parse(string s) => s.ToLowerInvariant() switch
    {
        "none" => KvEvictionType.None,
        "sinks" or "streamingllm" => KvEvictionType.Sinks,
        "h2o" => KvEvictionType.H2O,
        "snapkv" => KvEvictionType.SnapKV,
        "locret" => KvEvictionType.Locret,
        _ => throw new CriaException($"unknown eviction policy '{s}' (none, sinks, h2o, snapkv, locret)"),
    };
}

/// <summary>
/// Scores the blocks of a sequence for retention — the plug-in point for a policy (H2O's accumulated attention,
/// SnapKV's window, or Locret's trained retaining heads, which write each token's predicted importance into the same slot
/// array when the token is written). Higher means keep.
/// </summary>
public interface IKvRetentionScorer
{
    /// <summary>Whether the attention kernel must hand this scorer softmax probabilities (costs a second pass over K).</summary>
    bool NeedsAttention { get; }
    /// <summary>Whether the row <paramref name="rowsAfter"/> rows before the sequence's last row of this step contributes.</summary>
    bool Observes(int rowsAfter);
    /// <summary>Whether a sequence's slot scores are cleared at the start of every step (a fresh observation window).</summary>
    bool FreshEachStep { get; }
    /// <summary>Block scores from the per-slot scores (length = slots) and each block's first position.</summary>
    void ScoreBlocks(ReadOnlySpan<float> slotScores, ReadOnlySpan<int> blockPositions, int blockSize, Span<float> blockScores);
}

/// <summary>StreamingLLM: newer blocks score higher, so with the sinks pinned the most recent window survives.</summary>
public sealed class RecencyScorer : IKvRetentionScorer
{
    public bool NeedsAttention => false;
    public bool FreshEachStep => false;
    public bool Observes(int rowsAfter) => false;
    public void ScoreBlocks(ReadOnlySpan<float> slotScores, ReadOnlySpan<int> blockPositions, int blockSize, Span<float> blockScores)
    {
        for (int i = 0; i < blockPositions.Length; i++) blockScores[i] = blockPositions[i];
    }
}

/// <summary>H2O: a block's score is the attention its tokens have received, summed over every query, head and layer.</summary>
public sealed class HeavyHitterScorer : IKvRetentionScorer
{
    public bool NeedsAttention => true;
    public bool FreshEachStep => false;
    public bool Observes(int rowsAfter) => true;
    public void ScoreBlocks(ReadOnlySpan<float> slotScores, ReadOnlySpan<int> blockPositions, int blockSize, Span<float> blockScores)
    {
        for (int i = 0; i < blockPositions.Length; i++)
        {
            float s = 0;
            for (int j = i * blockSize; j < Math.Min(slotScores.Length, (i + 1) * blockSize); j++) s += slotScores[j];
            blockScores[i] = s;
        }
    }
}

/// <summary>SnapKV: attention of the last W queries of the step, average-pooled over a kernel of neighbouring tokens,
/// summed per block.</summary>
public sealed class ObservationWindowScorer(int window, int kernel) : IKvRetentionScorer
{
    public bool NeedsAttention => true;
    public bool FreshEachStep => true;
    public bool Observes(int rowsAfter) => rowsAfter < window;
    public void ScoreBlocks(ReadOnlySpan<float> slotScores, ReadOnlySpan<int> blockPositions, int blockSize, Span<float> blockScores)
    {
        int n = slotScores.Length, half = kernel / 2;
        for (int i = 0; i < blockPositions.Length; i++)
        {
            float s = 0;
            for (int j = i * blockSize; j < Math.Min(n, (i + 1) * blockSize); j++)
            {
                float pooled = 0;
                for (int d = -half; d <= half; d++) if ((uint)(j + d) < (uint)n) pooled += slotScores[j + d];
                s += pooled / kernel; // avg_pool1d with zero padding, as SnapKV
            }
            blockScores[i] = s;
        }
    }
}

/// <summary>
/// Applies a policy to the paged cache after every forward micro-batch: a sequence holding more than the budget keeps
/// its sink block(s), its recent window, and the best-scoring remaining blocks, and drops the rest — whole blocks, so
/// eviction composes with paging, KIVI key groups and prefix sharing without moving any data. Kept tokens keep their
/// original positions (RoPE was applied when they were written), as H2O and SnapKV do; StreamingLLM's re-assignment of
/// positions within the cache is not done, so a stream longer than the training context runs at positions the model
/// never saw unless RoPE scaling stretches them.
/// </summary>
public sealed class KvEvictor
{
    readonly KvEvictionOptions _o;
    readonly IKvRetentionScorer _scorer;
    readonly int _recentTokens;
    float[] _blockScores = [];
    bool[] _keep = [];
    int[] _order = [];
    readonly Dictionary<int, int> _lastRow = new(); // sequence → its last row in the current micro-batch

    public KvEvictor(KvEvictionOptions o, IKvRetentionScorer scorer, int recentTokens)
    {
        if (o.Budget < 1) throw new CriaException($"KV eviction needs a positive --kv-budget, got {o.Budget}");
        _o = o; _scorer = scorer; _recentTokens = recentTokens;
    }

    public static KvEvictor? Create(KvEvictionOptions o) => o.Type switch
    {
        KvEvictionType.None => null,
        KvEvictionType.Sinks => new KvEvictor(o, new RecencyScorer(), o.Budget),
        KvEvictionType.H2O => new KvEvictor(o, new HeavyHitterScorer(), o.Budget / 2),   // H2O's even split recent / heavy
        KvEvictionType.SnapKV => new KvEvictor(o, new ObservationWindowScorer(o.ObservationWindow, o.PoolKernel), o.ObservationWindow),
        KvEvictionType.Locret => o.Heads != null ? new KvEvictor(o, new RetainingHeadScorer(), o.Stabilizers)
            : throw new CriaException("--kv-evict locret needs retaining heads (--kv-heads FILE, trained by cria train-locret)"),
        _ => throw new ArgumentOutOfRangeException(nameof(o)),
    };

    public bool NeedsAttention => _scorer.NeedsAttention;

    internal void BeginStep(KvCache cache, Batch batch, int start, int rows)
    {
        _lastRow.Clear();
        var seqs = batch.Sequences;
        for (int b = 0; b < rows; b++) _lastRow[seqs[start + b]] = start + b;
        if (!_scorer.FreshEachStep || !_scorer.NeedsAttention) return;
        foreach (var seq in _lastRow.Keys)
            if (cache.Contains(seq)) Array.Clear(cache.Scores(seq));
    }

    /// <summary>Adds one layer's probabilities of the observed rows to their sequences' slot scores (serially, in row
    /// order, so scores do not depend on thread timing).</summary>
    internal void Accumulate(KvCache cache, Batch batch, int start, int rows, float[] probs, int stride, int kvHeads)
    {
        var seqs = batch.Sequences; var pos = batch.Positions;
        for (int b = 0; b < rows; b++)
        {
            int row = start + b, seq = seqs[row];
            if (!_scorer.Observes(_lastRow[seq] - row)) continue;
            var scores = cache.Scores(seq);
            int slots = pos[row] - cache.GetSequence(seq).Dropped + 1;
            for (int g = 0; g < kvHeads; g++)
            {
                var p = probs.AsSpan((b * kvHeads + g) * stride, slots);
                for (int j = 0; j < slots; j++) scores[j] += p[j];
            }
        }
    }

    internal void Evict(KvCache cache, Batch batch, int start, int rows)
    {
        foreach (var seq in _lastRow.Keys) EvictSequence(cache, seq);
    }

    /// <summary>Brings one sequence back within the budget (no-op when it holds no more than the budget).</summary>
    public void EvictSequence(KvCache cache, int seq)
    {
        int slots = cache.Slots(seq), bs = cache.BlockSize;
        if (slots <= _o.Budget) return;
        var s = cache.GetSequence(seq);
        int n = s.Blocks.Count;
        if (_keep.Length < n) { _keep = new bool[cache.BlockCount + 1]; _blockScores = new float[cache.BlockCount + 1]; _order = new int[cache.BlockCount + 1]; }
        var keep = _keep;
        Array.Clear(keep, 0, n);
        int keepBlocks = Math.Max(1, _o.Budget / bs), kept = 0;
        void Keep(int i) { if (!keep[i] && kept < keepBlocks) { keep[i] = true; kept++; } }
        Keep(n - 1); // the block being filled
        var blockPos = cache.BlockPositions(seq);
        for (int i = 0; i < n && blockPos[i] < _o.SinkTokens; i++) Keep(i);
        // The recent window, newest first.
        int recentStart = s.Length - _recentTokens;
        for (int i = n - 1; i >= 0 && blockPos[i] + bs > recentStart; i--) Keep(i);
        if (kept < keepBlocks)
        {
            var scores = _blockScores.AsSpan(0, n);
            _scorer.ScoreBlocks(s.Scores is { } sc ? sc.AsSpan(0, slots) : default, blockPos, bs, scores);
            var order = _order.AsSpan(0, n);
            for (int i = 0; i < n; i++) order[i] = i;
            // Highest score first; ties go to the newer block. (Insertion sort: a few hundred blocks at most per step.)
            for (int i = 1; i < n; i++)
            {
                int x = order[i], j = i - 1;
                while (j >= 0 && (scores[order[j]] < scores[x] || scores[order[j]] == scores[x] && order[j] < x)) { order[j + 1] = order[j]; j--; }
                order[j + 1] = x;
            }
            for (int i = 0; i < n && kept < keepBlocks; i++) Keep(order[i]);
        }
        cache.DropBlocks(seq, keep.AsSpan(0, n));
    }
}
