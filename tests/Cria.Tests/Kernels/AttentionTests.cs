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
}
