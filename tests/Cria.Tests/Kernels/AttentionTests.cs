using Cria.Inference;
using Cria.Kernels;
using Cria.Models;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>The fused, tiled, online-softmax attention against its double-precision scalar reference.</summary>
public class AttentionTests
{
    [Theory]
    [InlineData(64, 8, 2, 150)]  // the 512-bit K-row path, three tiles, last one partial
    [InlineData(32, 4, 4, 70)]   // generic dot path, MHA
    [InlineData(64, 4, 1, 1)]    // a single position
    public void FusedAttentionMatchesScalarReference(int hd, int heads, int kvHeads, int length)
    {
        var c = new ModelConfig { HeadDim = hd, HeadCount = heads, KvHeadCount = kvHeads, Dim = hd * heads };
        const int bs = 16;
        int blocks = (length + bs - 1) / bs;
        var table = Enumerable.Range(0, blocks).Select(b => (b * 7 + 3) % blocks + blocks).ToArray(); // scattered cells
        var rng = new Random(length);
        float R() => (float)(rng.NextDouble() * 2 - 1);
        int cells = 2 * blocks * bs;
        var cache = new KvCache(c.KvDim, 1, cells, bs, KvFormat.F32, hd);
        var keys = cache.Keys(0).ToArray();
        for (int i = 0; i < keys.Length; i++) keys[i] = R();
        keys.CopyTo(cache.Keys(0));
        var values = Enumerable.Range(0, cells * c.KvDim).Select(_ => R()).ToArray();
        values.CopyTo(cache.Values(0));
        var blockPos = Enumerable.Range(0, blocks).Select(b => b * bs).ToArray();
        var kv = new AttentionJob.KvLayer(cache, 0);
        var q = Enumerable.Range(0, c.QDim).Select(_ => R() * 3).ToArray();
        var output = new float[c.QDim];
        var scratch = new float[AttentionJob.ScratchLength(c)];
        for (int g = 0; g < kvHeads; g++)
            AttentionJob.Attend(c, kv, table, blockPos, null, length, length - 1, g, q, output, scratch, default);

        var expected = new float[hd];
        for (int h = 0; h < heads; h++)
        {
            int g = h / c.GroupSize;
            float[] Row(float[] a, int t) => a.AsSpan((table[t / bs] * bs + t % bs) * c.KvDim + g * hd, hd).ToArray();
            AttentionJob.AttendScalar(q.AsSpan(h * hd, hd), t => Row(keys, t), t => Row(values, t), length, expected);
            for (int i = 0; i < hd; i++)
                Assert.True(Math.Abs(expected[i] - output[h * hd + i]) <= 1e-5f, $"head {h} dim {i}: {output[h * hd + i]} vs {expected[i]}");
        }
    }

    /// <summary>
    /// StreamingLLM position re-assignment: after blocks are evicted, attention with <c>dropped</c> set must equal
    /// attention over the kept tokens re-rotated at their cache slots, with the query at its slot (the definition),
    /// although the cache still holds keys rotated by their text positions. Without the shift it must differ.
    /// </summary>
    [Theory]
    [InlineData(false, new[] { true, false, false, true, true, true, true })]  // sinks + recent window: one Δ for the sink block
    [InlineData(false, new[] { true, false, true, false, true, true, true })]  // H2O-like holes: two different Δ
    [InlineData(true, new[] { true, false, false, false, true, true, true })]  // YaRN (its mscale must not be applied twice)
    public void ShiftedAttentionEqualsAttentionAtCacheSlots(bool yarn, bool[] keep)
    {
        const int hd = 32, heads = 4, kvHeads = 2, bs = 16, length = 100; // 7 blocks, the last holding 4 tokens
        var c = new ModelConfig
        {
            HeadDim = hd, HeadCount = heads, KvHeadCount = kvHeads, Dim = hd * heads, RopeDim = hd, ContextLength = 64,
            RopeScaling = yarn ? RopeScalingType.Yarn : RopeScalingType.None, RopeFreqScale = yarn ? 0.25f : 1f,
        };
        var rng = new Random(keep.Count(k => k) * 31 + (yarn ? 1 : 0));
        float R() => (float)(rng.NextDouble() * 2 - 1);
        var cache = new KvCache(c.KvDim, 1, 256, bs, KvFormat.F32, hd);
        cache.Append(0, length);
        var rawK = new float[length][]; var rawV = new float[length][];
        var cs = new float[hd];
        for (int t = 0; t < length; t++)
        {
            rawK[t] = Enumerable.Range(0, c.KvDim).Select(_ => R()).ToArray();
            rawV[t] = Enumerable.Range(0, c.KvDim).Select(_ => R()).ToArray();
            var k = (float[])rawK[t].Clone();
            c.RopeCache(t, cs);
            Ops.RopeNorm(k, kvHeads, hd, cs);
            int cell = cache.Cell(0, t);
            k.CopyTo(cache.Keys(0).Slice(cell * c.KvDim, c.KvDim));
            rawV[t].CopyTo(cache.Values(0).Slice(cell * c.KvDim, c.KvDim));
        }
        var kept = Enumerable.Range(0, length).Where(t => keep[t / bs]).ToArray(); // text positions, in slot order
        cache.DropBlocks(0, keep);
        var s = cache.GetSequence(0);
        Assert.Equal(kept.Length, s.Slots);
        int p = length - 1, slotQ = kept.Length - 1;
        var qRaw = Enumerable.Range(0, c.QDim).Select(_ => R() * 3).ToArray();
        var q = (float[])qRaw.Clone();
        c.RopeCache(p, cs);
        Ops.RopeNorm(q, heads, hd, cs);
        var kv = new AttentionJob.KvLayer(cache, 0);
        var scratch = new float[AttentionJob.ScratchLength(c)];
        var shifted = new float[c.QDim];
        var plain = new float[c.QDim];
        var table = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var blockPos = cache.BlockPositions(0).ToArray();
        for (int g = 0; g < kvHeads; g++)
        {
            AttentionJob.Attend(c, kv, table, blockPos, null, s.Slots, p, g, q, shifted, scratch, default, s.Dropped);
            AttentionJob.Attend(c, kv, table, blockPos, null, s.Slots, p, g, q, plain, scratch, default);
        }

        // The definition: every kept key rotated at its slot, the query at its slot.
        var qRef = (float[])qRaw.Clone();
        c.RopeCache(slotQ, cs);
        Ops.RopeNorm(qRef, heads, hd, cs);
        var kRef = kept.Select((t, slot) => { var k = (float[])rawK[t].Clone(); var r = new float[hd]; c.RopeCache(slot, r); Ops.RopeNorm(k, kvHeads, hd, r); return k; }).ToArray();
        var expected = new float[hd];
        double plainDiff = 0;
        for (int h = 0; h < heads; h++)
        {
            int g = h / c.GroupSize;
            AttentionJob.AttendScalar(qRef.AsSpan(h * hd, hd), j => kRef[j].AsSpan(g * hd, hd).ToArray(), j => rawV[kept[j]].AsSpan(g * hd, hd).ToArray(), kept.Length, expected);
            for (int i = 0; i < hd; i++)
            {
                Assert.True(Math.Abs(expected[i] - shifted[h * hd + i]) <= 2e-5f, $"head {h} dim {i}: {shifted[h * hd + i]} vs {expected[i]}");
                plainDiff = Math.Max(plainDiff, Math.Abs(expected[i] - plain[h * hd + i]));
            }
        }
        Assert.True(plainDiff > 1e-3, $"without the shift the output should differ from the slot-position attention (max diff {plainDiff})");
    }
}
