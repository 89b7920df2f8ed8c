using Cria.Inference;
using Cria.Serving;
using Xunit;

namespace Cria.Tests.Serving;

/// <summary>The scheduler as pure bookkeeping: a real block pool (one float per token), no model. A step is "run" by
/// appending each chunk's tokens to the cache, as <see cref="InferenceContext.Decode"/> would.</summary>
public class SchedulerTests
{
    static KvCache Pool(int tokens, int blockSize = 4) => new(kvDim: 1, layers: 1, capacityTokens: tokens, blockSize);

    // Distinct ids get distinct tokens (no accidental prefix-cache hits) unless tokenBase says otherwise.
    static SequenceState Seq(int id, int promptLength, int maxNew = 4, int? tokenBase = null) =>
        new(id, Enumerable.Range(tokenBase ?? id * 1000, promptLength).Select(t => 3 + t % 300).ToArray(), maxNew);

    /// <summary>Runs a step: appends chunk tokens to the pool, completes it, samples token 7 for rows with logits and
    /// finishes sequences that reached their max.</summary>
    static SchedulerOutput Step(Scheduler s, KvCache pool)
    {
        var o = s.Schedule();
        foreach (var c in o.Chunks)
        {
            Assert.Equal(c.Start, pool.Length(c.Sequence.Id)); // a chunk continues the sequence's cache exactly
            pool.Append(c.Sequence.Id, c.Count);
        }
        s.Complete(o);
        foreach (var c in o.Chunks) pool.PublishFullBlocks(c.Sequence.Id, c.Sequence.TokenSpan);
        foreach (var c in o.Chunks)
        {
            if (!c.WantsLogits) continue;
            c.Sequence.Append(7);
            if (c.Sequence.Generated >= c.Sequence.MaxNewTokens) s.Finish(c.Sequence);
        }
        return o;
    }

    [Fact]
    public void DraftsShareTheRowsLeftByDecodesAndNeverTakeBlocksFromAnyone()
    {
        var pool = Pool(256);
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8, DraftRowLimit = 16 });
        var a = Seq(1, 3, maxNew: 100); var b = Seq(2, 3, maxNew: 100); var c = Seq(3, 3, maxNew: 100);
        s.Add(a); s.Add(b); s.Add(c);
        Step(s, pool);
        a.SetDrafts([.. Enumerable.Range(50, 10)]); b.SetDrafts([60, 61]); c.SetDrafts([.. Enumerable.Range(70, 10)]);

        // 16 rows − 3 decodes = 13 for drafts: water-filling gives every sequence min(drafts, 5) = 5 + 2 + 5 = 12, and the
        // one row left goes to the oldest that wanted more.
        var o = s.Schedule();
        Assert.Equal([(7, 6), (3, 2), (6, 5)], o.Chunks.Select(ch => (ch.Count, ch.Drafts)));
        Assert.Equal((16, 3, 13), (o.TokenCount, o.DecodeCount, o.DraftCount));
        Assert.All(o.Chunks, ch => Assert.True(ch.WantsLogits && ch.IsDecode));
        Assert.Equal([a.Tokens[3], 50, 51, 52, 53, 54, 55], Enumerable.Range(0, 7).Select(o.Chunks[0].Token));
        foreach (var ch in o.Chunks) pool.Append(ch.Sequence.Id, ch.Count);
        s.Complete(o);
        Assert.Equal(4, a.Computed); // the step's own token only, until the verdicts are in
        Assert.Equal(10, pool.Length(1));

        // a keeps 2 drafts (then a token of its own), b none, c all five (then a bonus token).
        a.Append(50); a.Append(51); a.Append(9);
        s.KeepDrafts(o.Chunks[0], 2);
        b.Append(9);
        s.KeepDrafts(o.Chunks[1], 0);
        for (int t = 70; t < 75; t++) c.Append(t);
        c.Append(9);
        s.KeepDrafts(o.Chunks[2], 5);
        Assert.Equal((6, 4, 9), (a.Computed, b.Computed, c.Computed));
        Assert.Equal((6, 4, 9), (pool.Length(1), pool.Length(2), pool.Length(3))); // rejected drafts' K/V are gone
        Assert.True(a.IsDecoding && b.IsDecoding && c.IsDecoding);
        Assert.Equal(0, a.DraftCount);
        Assert.Throws<InvalidOperationException>(() => s.KeepDrafts(o.Chunks[1], 3)); // more than were drafted

        // Drafts that would need a new block ride only in free blocks: with every block taken, none ride, and nobody is
        // preempted for them.
        var pool2 = Pool(64, blockSize: 4); // 16 blocks
        var full = new Scheduler(pool2, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 });
        var x = Seq(4, 31, maxNew: 100); var y = Seq(5, 31, maxNew: 100);
        full.Add(x); full.Add(y);
        Step(full, pool2); // 31 + 31 tokens in 16 blocks; each decode row fills its last slot
        x.SetDrafts([1, 2, 3]); y.SetDrafts([1, 2, 3]);
        o = full.Schedule();
        Assert.Equal((0, 2, 0), (pool2.FreeBlocks, o.DecodeCount, o.DraftCount));
        Assert.Empty(o.Preempted);

        // Nor do drafts take a block a later decode row needs: x's drafts would take the one free block, which y's
        // decode row needs, and y would be preempted for them.
        var pool5 = Pool(36, blockSize: 4); // 9 blocks
        var sch5 = new Scheduler(pool5, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 });
        var x5 = Seq(10, 15, maxNew: 100); var y5 = Seq(11, 16, maxNew: 100);
        sch5.Add(x5); sch5.Add(y5);
        Step(sch5, pool5); // x: 15 tokens in 4 blocks (its decode row fills the last slot), y: 16 (its decode row needs a fifth)
        x5.SetDrafts([1, 2, 3]);
        o = sch5.Schedule();
        Assert.Equal((1, 2, 0), (pool5.FreeBlocks, o.DecodeCount, o.DraftCount));
        Assert.Empty(o.Preempted);

        // The token budget bounds drafts too: 5 tokens for 3 decodes leave 2 drafts, one each for the two oldest.
        var pool3 = Pool(256);
        var tight = new Scheduler(pool3, new SchedulerOptions { TokenBudget = 5 });
        var seqs = new[] { Seq(6, 1, maxNew: 100), Seq(7, 1, maxNew: 100), Seq(8, 1, maxNew: 100) };
        foreach (var q in seqs) tight.Add(q);
        Step(tight, pool3);
        foreach (var q in seqs) q.SetDrafts([1, 2, 3]);
        o = tight.Schedule();
        Assert.Equal([1, 1, 0], o.Chunks.Select(ch => ch.Drafts));
        Assert.Equal(5, o.TokenCount);

        // A row limit of 0 turns drafting off.
        var pool4 = Pool(256);
        var off = new Scheduler(pool4, new SchedulerOptions { DraftRowLimit = 0 });
        var z = Seq(9, 2, maxNew: 100);
        off.Add(z);
        Step(off, pool4);
        z.SetDrafts([1, 2, 3]);
        Assert.Equal(0, off.Schedule().DraftCount);
    }

    [Fact]
    public void DecodesFirstThenPrefillChunksFillTheBudget()
    {
        var pool = Pool(256);
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 16, MaxSequences = 8 });
        var a = Seq(1, 5, maxNew: 100); var b = Seq(2, 6, maxNew: 100);
        s.Add(a); s.Add(b);
        var first = Step(s, pool);
        Assert.Equal(11, first.TokenCount); // both prompts whole: 5 + 6 ≤ 16
        Assert.True(a.IsDecoding && b.IsDecoding);

        var longPrompt = Seq(3, 40, maxNew: 100);
        s.Add(longPrompt);
        var o = Step(s, pool);
        // Two decodes first, then a 14-token chunk of the long prompt fills the budget.
        Assert.Equal(3, o.Chunks.Count);
        Assert.True(o.Chunks[0].IsDecode && o.Chunks[1].IsDecode);
        Assert.Equal((longPrompt, 0, 14), (o.Chunks[2].Sequence, o.Chunks[2].Start, o.Chunks[2].Count));
        Assert.False(o.Chunks[2].WantsLogits);
        Assert.Equal(16, o.TokenCount);
        Assert.Equal(2, o.DecodeCount);

        o = Step(s, pool);
        Assert.Equal((14, 14), (o.Chunks[2].Start, o.Chunks[2].Count));
        o = Step(s, pool);
        Assert.Equal((28, 12), (o.Chunks[2].Start, o.Chunks[2].Count));
        Assert.True(o.Chunks[2].WantsLogits); // the last chunk yields the first token
        Assert.Equal(41, longPrompt.Total);
        o = Step(s, pool);
        Assert.Equal(3, o.DecodeCount);
    }

    [Fact]
    public void WithoutChunkingPromptsRunWholeAndStallBehindNothing()
    {
        var pool = Pool(512);
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 16, MaxSequences = 8, ChunkedPrefill = false });
        var a = Seq(1, 4, maxNew: 100);
        s.Add(a);
        Step(s, pool);
        var big = Seq(2, 40, maxNew: 100); var small = Seq(3, 3, maxNew: 100);
        s.Add(big); s.Add(small);
        var o = Step(s, pool);
        // The decode, then the whole 40-token prompt (over the budget: it is this step's first prefill); the small
        // prompt waits for the next step rather than overtaking.
        Assert.Equal(2, o.Chunks.Count);
        Assert.Equal((big, 0, 40), (o.Chunks[1].Sequence, o.Chunks[1].Start, o.Chunks[1].Count));
        Assert.Equal(SequenceStatus.Waiting, small.Status);
        o = Step(s, pool);
        Assert.Equal(3, o.Chunks.Count);
        Assert.Equal((small, 0, 3), (o.Chunks[2].Sequence, o.Chunks[2].Start, o.Chunks[2].Count));
    }

    [Fact]
    public void MaxSequencesAndFcfsAdmission()
    {
        var pool = Pool(1024);
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 64, MaxSequences = 2 });
        var seqs = Enumerable.Range(1, 5).Select(i => Seq(i, 3, maxNew: 2)).ToArray();
        foreach (var q in seqs) s.Add(q);
        var o = Step(s, pool);
        Assert.Equal([seqs[0], seqs[1]], o.Chunks.Select(c => c.Sequence));
        Assert.Equal(3, s.WaitingCount);
        Step(s, pool); // both decode their second token and finish
        Assert.Equal(0, s.RunningCount);
        o = Step(s, pool);
        Assert.Equal([seqs[2], seqs[3]], o.Chunks.Select(c => c.Sequence));
        while (s.HasWork) Step(s, pool);
        Assert.All(seqs, q => Assert.Equal(SequenceStatus.Finished, q.Status));
        Assert.Equal(pool.BlockCount, pool.FreeBlocks);
    }

    [Fact]
    public void AdmissionWaitsWhenTheWholePromptDoesNotFitAndDoesNotOvertake()
    {
        var pool = Pool(32); // 8 blocks of 4
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 });
        var a = Seq(1, 20, maxNew: 100); // 5 blocks
        var b = Seq(2, 16, maxNew: 3);    // 4 blocks: does not fit next to a
        var c = Seq(3, 2, maxNew: 3);     // would fit, but must not overtake b
        s.Add(a); s.Add(b); s.Add(c);
        var o = Step(s, pool);
        Assert.Single(o.Chunks);
        Assert.Equal(SequenceStatus.Waiting, b.Status);
        Assert.Equal(SequenceStatus.Waiting, c.Status);
    }

    [Fact]
    public void RunningOutOfBlocksPreemptsTheNewestAndRecomputesIt()
    {
        var pool = Pool(24); // 6 blocks of 4
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 });
        var a = Seq(1, 7, maxNew: 12, tokenBase: 0);
        var b = Seq(2, 7, maxNew: 12, tokenBase: 50);
        s.Add(a); s.Add(b);
        Step(s, pool); // 2 + 2 blocks
        int steps = 0;
        bool preempted = false;
        while (s.HasWork && steps++ < 200)
        {
            var o = Step(s, pool);
            if (o.Preempted.Count > 0)
            {
                preempted = true;
                Assert.Equal([b], o.Preempted);                 // the newest goes
                Assert.Equal(0, b.Computed);
                Assert.Equal(b, s.Waiting.First());             // back to the front of the queue
                Assert.DoesNotContain(o.Chunks, c => c.Sequence == b);
                Assert.False(pool.Contains(b.Id));              // its blocks are back in the pool
            }
            Assert.True(pool.UsedBlocks <= pool.BlockCount);
        }
        Assert.True(preempted);
        Assert.Equal(1, b.Preemptions);
        Assert.Equal(SequenceStatus.Finished, a.Status);
        Assert.Equal(SequenceStatus.Finished, b.Status);
        Assert.Equal(12, b.Generated);                          // recomputed, then went on where it was
        Assert.Equal(pool.BlockCount, pool.FreeBlocks);
    }

    [Fact]
    public void PrefixCacheHitsSkipComputedBlocks()
    {
        var pool = Pool(256);
        var s = new Scheduler(pool, new SchedulerOptions { TokenBudget = 64, MaxSequences = 8 });
        var a = Seq(1, 18, maxNew: 1, tokenBase: 0);
        s.Add(a);
        Step(s, pool);
        Assert.Equal(SequenceStatus.Finished, a.Status);
        Assert.Equal(4, pool.CachedBlocks); // 4 full blocks of 4 stay cached after a leaves
        Assert.Equal(pool.BlockCount, pool.FreeBlocks); // …but count as free

        var b = Seq(2, 18, maxNew: 1, tokenBase: 0); // same 18 tokens
        s.Add(b);
        var o = Step(s, pool);
        Assert.Equal(16, b.CachedPromptTokens);
        Assert.Equal((16, 2), (o.Chunks[0].Start, o.Chunks[0].Count));

        var c = new SequenceState(3, a.Tokens.Take(9).Concat([399, 398, 397]).ToArray(), 1); // shares 2 blocks
        s.Add(c);
        o = Step(s, pool);
        Assert.Equal(8, c.CachedPromptTokens);
        Assert.Equal((8, 4), (o.Chunks[0].Start, o.Chunks[0].Count));

        var off = new Scheduler(pool, new SchedulerOptions { PrefixCaching = false });
        var d = Seq(4, 18, maxNew: 1, tokenBase: 0);
        off.Add(d);
        Assert.Equal((0, 18), (off.Schedule().Chunks[0].Start, d.Remaining));
    }
}

/// <summary>Reference counts, prefix sharing, copy-on-write and eviction of the paged cache.</summary>
public class KvCachePrefixTests
{
    [Fact]
    public void SharedBlocksAreCountedCopiedOnWriteAndEvictedLru()
    {
        var kv = new KvCache(kvDim: 2, layers: 1, capacityTokens: 32, blockSize: 4); // 8 blocks
        int[] tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        kv.Append(1, 10);
        // Mark the cells so a copy can be recognised.
        for (int p = 0; p < 10; p++) kv.Keys(0)[kv.Cell(1, p) * 2] = 100 + p;
        kv.PublishFullBlocks(1, tokens);
        Assert.Equal(2, kv.CachedBlocks);

        Assert.Equal(8, kv.AttachPrefix(2, tokens));                  // both full blocks, by reference
        Assert.Equal(kv.BlockTable(1).Take(2), kv.BlockTable(2));
        Assert.Equal(2, kv.ReferenceCount(kv.BlockTable(2)[0]));
        Assert.Equal(0, kv.AttachPrefix(3, [1, 2, 3, 4]));             // at least one token is left to compute
        Assert.Equal(4, kv.AttachPrefix(4, [1, 2, 3, 4, 5]));

        // Truncating into a shared block, then appending, copies it instead of writing into it.
        kv.Truncate(2, 6);
        int shared = kv.BlockTable(2)[1];
        Assert.Equal(1, kv.BlocksNeeded(2, 1));                        // the copy-on-write of its last block
        kv.Append(2, 1);
        Assert.NotEqual(shared, kv.BlockTable(2)[1]);
        Assert.Equal(1, kv.ReferenceCount(shared));
        Assert.Equal(104f, kv.Keys(0)[kv.Cell(2, 4) * 2]);              // contents were copied
        Assert.Equal(105f, kv.Keys(0)[kv.Cell(1, 5) * 2]);

        kv.Remove(1); kv.Remove(2); kv.Remove(4);
        Assert.Equal(8, kv.FreeBlocks);                                // cached blocks count as free
        Assert.Equal(2, kv.CachedBlocks);
        kv.Append(5, 32);                                             // needs every block: evicts the cached ones
        Assert.Equal(0, kv.CachedBlocks);
        Assert.Equal(0, kv.AttachPrefix(6, tokens));
        kv.Remove(5);
        Assert.Equal(8, kv.FreeBlocks);
        Assert.Equal(4 + 8, kv.PrefixHitTokens);
    }
}
