using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.Inference;

/// <summary>The one forward entry point: prompt, single-token decode and multi-sequence batches give the same logits,
/// bit for bit; truncation and removal of sequences work.</summary>
public class BatchingTests
{
    static string Model() => LogitsAgreementTests.ModelFile("batching-f32", new RandomModelSpec
    {
        Dim = 128, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 256, VocabSize = 400, Seed = 99,
    });

    static int[] Tokens(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(i => i == 0 ? 1 : r.Next(3, 400)).ToArray();
    }

    [Fact]
    public void IncrementalDecodeEqualsWholePromptExactly()
    {
        using var m = LlamaModel.Open(Model());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 128, Threads = 2 });
        var t = Tokens(20, 1);
        var b = new Batch();
        for (int i = 0; i < t.Length; i++) b.Add(t[i], i, 0, true);
        ctx.Decode(b);
        var whole = Enumerable.Range(0, t.Length).Select(i => ctx.Logits(i).ToArray()).ToArray();

        ctx.Cache.Clear();
        for (int i = 0; i < t.Length; i++)
        {
            b.Clear();
            b.Add(t[i], i, 0, true);
            ctx.Decode(b);
            Assert.Equal(whole[i], ctx.Logits(0).ToArray());
        }
    }

    [Fact]
    public void MultiSequenceBatchEqualsEachSequenceAlone()
    {
        using var m = LlamaModel.Open(Model());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2, MicroBatch = 7 });
        var seqs = new[] { Tokens(9, 2), Tokens(13, 3), Tokens(5, 4) };
        var alone = new float[seqs.Length][];
        for (int s = 0; s < seqs.Length; s++)
        {
            ctx.Cache.Clear();
            var b1 = new Batch();
            b1.AddSequence(seqs[s], 0, 0);
            ctx.Decode(b1);
            alone[s] = ctx.Logits(b1.Count - 1).ToArray();
        }
        // All three prompts interleaved in one batch (split into micro-batches of 7 rows), with sequence ids 5, 6, 7.
        ctx.Cache.Clear();
        var b = new Batch();
        var last = new int[seqs.Length];
        int maxLen = seqs.Max(x => x.Length);
        for (int p = 0; p < maxLen; p++)
            for (int s = 0; s < seqs.Length; s++)
                if (p < seqs[s].Length) { int row = b.Add(seqs[s][p], p, 5 + s, p == seqs[s].Length - 1); if (p == seqs[s].Length - 1) last[s] = row; }
        ctx.Decode(b);
        for (int s = 0; s < seqs.Length; s++) Assert.Equal(alone[s], ctx.Logits(last[s]).ToArray());

        // One decode step for all three at once equals each continuing alone.
        b.Clear();
        for (int s = 0; s < seqs.Length; s++) b.Add(7 + s, seqs[s].Length, 5 + s, true);
        ctx.Decode(b);
        var together = Enumerable.Range(0, 3).Select(i => ctx.Logits(i).ToArray()).ToArray();
        for (int s = 0; s < seqs.Length; s++)
        {
            ctx.Cache.Clear();
            var b1 = new Batch();
            b1.AddSequence(seqs[s], 0, 0, logitsForLast: false);
            b1.Add(7 + s, seqs[s].Length, 0, true);
            ctx.Decode(b1);
            Assert.Equal(together[s], ctx.Logits(b1.Count - 1).ToArray());
        }
    }

    [Fact]
    public void TruncateAndRemoveGiveBlocksBackAndRedecodeMatches()
    {
        using var m = LlamaModel.Open(Model());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 64, Threads = 2, KvBlockSize = 4 });
        var t = Tokens(30, 5);
        var b = new Batch();
        b.AddSequence(t, 0, 3);
        ctx.Decode(b);
        Assert.Equal(30, ctx.Cache.Length(3));
        Assert.Equal(16 - 8, ctx.Cache.FreeBlocks);

        // Drop positions 17.. (as speculative decoding does on rejection), then decode a different continuation.
        ctx.Cache.Truncate(3, 17);
        Assert.Equal(17, ctx.Cache.Length(3));
        Assert.Equal(16 - 5, ctx.Cache.FreeBlocks);
        b.Clear();
        b.Add(42, 17, 3, true);
        ctx.Decode(b);
        var after = ctx.Logits(0).ToArray();

        ctx.Cache.Remove(3);
        Assert.Equal(16, ctx.Cache.FreeBlocks);
        b.Clear();
        b.AddSequence(t.AsSpan(0, 17), 0, 3, logitsForLast: false);
        b.Add(42, 17, 3, true);
        ctx.Decode(b);
        Assert.Equal(after, ctx.Logits(b.Count - 1).ToArray());
    }

    [Fact]
    public void BadBatchesAreRejectedBeforeAnyStateChanges()
    {
        using var m = LlamaModel.Open(Model());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 32, Threads = 1 });
        var b = new Batch();
        b.Add(1, 0, 0, true);
        b.Add(400, 1, 0, true); // token outside the vocabulary
        Assert.Throws<InvalidBatchException>(() => ctx.Decode(b));
        b.Clear(); b.Add(1, 1, 0, true); // a new sequence must start at position 0
        Assert.Throws<InvalidBatchException>(() => ctx.Decode(b));
        b.Clear(); b.Add(1, 0, 0, true); b.Add(2, 2, 0, true); // gap
        Assert.Throws<InvalidBatchException>(() => ctx.Decode(b));
        Assert.Equal(0, ctx.Cache.Length(0));
        b.Clear(); b.AddSequence(Tokens(33, 1), 0, 0); // more than the cache holds
        Assert.Throws<KvCacheFullException>(() => ctx.Decode(b));
        Assert.Equal(ctx.Cache.BlockCount, ctx.Cache.FreeBlocks);
        Assert.Throws<InvalidBatchException>(() => ctx.Decode(new Batch()));
    }
}
