using Cria.Inference;
using Cria.Models;
using Xunit;

namespace Cria.Tests.KvCompression;

/// <summary>Issue 6: eviction policies on the paged cache — a budget at least the sequence length changes nothing, and a
/// long stream runs in a constant number of blocks.</summary>
public class EvictionTests
{
    public static IEnumerable<object[]> Policies() =>
        new[] { KvEvictionType.Sinks, KvEvictionType.H2O, KvEvictionType.SnapKV, KvEvictionType.Locret }.Select(p => new object[] { p });

    static float[][] Stream(InferenceContext ctx, int[] tokens, int chunk)
    {
        var all = new List<float[]>();
        var b = new Batch(chunk);
        for (int i = 0; i < tokens.Length; i += chunk)
        {
            b.Clear();
            for (int j = i; j < Math.Min(tokens.Length, i + chunk); j++) b.Add(tokens[j], j, 0, true);
            ctx.Decode(b);
            for (int j = 0; j < b.Count; j++) all.Add(ctx.Logits(j).ToArray());
        }
        return all.ToArray();
    }

    [Theory]
    [MemberData(nameof(Policies))]
    public void ABudgetAtLeastTheSequenceLengthChangesNothing(KvEvictionType policy)
    {
        using var m = LlamaModel.Open(KvFormatTests.Model());
        var tokens = KvFormatTests.Tokens(100, 8);
        float[][] Logits(KvEvictionOptions e)
        {
            using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2, MicroBatch = 16, Eviction = e });
            return Stream(ctx, tokens, 16).Concat(Stream2(ctx, tokens.Length)).ToArray();
        }
        var none = Logits(KvEvictionOptions.None);
        var evict = Logits(new KvEvictionOptions
        {
            Type = policy, Budget = 112, Heads = policy == KvEvictionType.Locret ? RetainingHeads.Create(m.Config, 16, 5) : null,
        });
        Assert.Equal(none.Length, evict.Length);
        for (int i = 0; i < none.Length; i++) Assert.Equal(none[i], evict[i]);
    }

    /// <summary>A few single-token decodes after the prompt (positions len … len+9, still within the budget).</summary>
    static IEnumerable<float[]> Stream2(InferenceContext ctx, int start)
    {
        var b = new Batch(1);
        for (int p = start; p < start + 10; p++)
        {
            b.Clear();
            b.Add(5 + p % 7, p, 0, true);
            ctx.Decode(b);
            yield return ctx.Logits(0).ToArray();
        }
    }

    [Theory]
    [InlineData(KvEvictionType.Sinks, KvCacheType.F16)]
    [InlineData(KvEvictionType.H2O, KvCacheType.F16)]
    [InlineData(KvEvictionType.SnapKV, KvCacheType.Kivi2)]
    [InlineData(KvEvictionType.Sinks, KvCacheType.Kivi4)]
    [InlineData(KvEvictionType.Locret, KvCacheType.Kivi2)] // random retaining heads: the scores rank blocks, not recency
    public void ALongStreamRunsInAConstantNumberOfBlocks(KvEvictionType policy, KvCacheType type)
    {
        using var m = LlamaModel.Open(KvFormatTests.Model());
        const int budget = 64, n = 1200;
        using var ctx = new InferenceContext(m, new ContextOptions
        {
            ContextSize = 160, Threads = 2, MicroBatch = 16,
            Kv = new KvFormat { Type = type, KiviGroup = 16, KiviResidual = 32 },
            Eviction = new KvEvictionOptions
            {
                Type = policy, Budget = budget,
                Heads = policy == KvEvictionType.Locret ? RetainingHeads.Create(m.Config, 16, 5) : null,
            },
        });
        var tokens = KvFormatTests.Tokens(n, 9);
        var b = new Batch(16);
        int maxBlocks = 0;
        for (int i = 0; i < n;)
        {
            int c = i < 200 ? 16 : 1; // a chunked prefill, then single-token decodes
            b.Clear();
            for (int j = i; j < Math.Min(n, i + c); j++) b.Add(tokens[j], j, 0, j == i + c - 1);
            ctx.Decode(b);
            i += b.Count;
            Assert.True(ctx.Cache.Slots(0) <= budget, $"after position {i}: {ctx.Cache.Slots(0)} tokens held");
            maxBlocks = Math.Max(maxBlocks, ctx.Cache.UsedBlocks);
            Assert.True(float.IsFinite(ctx.Logits(b.Count - 1)[0]));
        }
        Assert.Equal(n, ctx.Cache.Length(0));
        Assert.True(maxBlocks <= budget / ctx.Cache.BlockSize, $"max blocks {maxBlocks}");
        // The sink block (positions 0…) is still there; the newest tokens are still there.
        var pos = ctx.Cache.BlockPositions(0);
        Assert.Equal(0, pos[0]);
        Assert.Equal(n - 1 - (n - 1) % ctx.Cache.BlockSize, pos[^1]);
    }
}

/// <summary>The long-context probe builds what it says and scores within [0, 1].</summary>
public class PasskeyProbeTests
{
    [Theory]
    [InlineData(PasskeyTask.Passkey)]
    [InlineData(PasskeyTask.Copy)]
    public void ProbePlacesTheNeedleAtTheDepthAndScores(PasskeyTask task)
    {
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2, MicroBatch = 64 });
        var probe = new PasskeyProbe(ctx, m.Tokenizer);
        var (early, a1) = probe.Build(task, 200, 0.0, new Random(1));
        var (late, a2) = probe.Build(task, 200, 1.0, new Random(1));
        Assert.InRange(early.Length + a1.Length, 190, 200);
        Assert.Equal(early.Length, late.Length);
        Assert.Equal(a1, a2);
        // The needle's first token sits right after BOS at depth 0 and near the end at depth 1.
        int needleTok = early[1];
        Assert.NotEqual(early[1], late[1]);
        Assert.Contains(needleTok, late.Skip(early.Length / 2));
        var res = probe.Run(task, [128], [0.5], trials: 2);
        Assert.InRange(res[0].TokenAccuracy, 0, 1);
        Assert.Equal(0, ctx.Cache.UsedBlocks);
    }
}
