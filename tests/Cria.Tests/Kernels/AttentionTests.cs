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
        var keys = Enumerable.Range(0, cells * c.KvDim).Select(_ => R()).ToArray();
        var values = Enumerable.Range(0, cells * c.KvDim).Select(_ => R()).ToArray();
        var q = Enumerable.Range(0, c.QDim).Select(_ => R() * 3).ToArray();
        var output = new float[c.QDim];
        var scratch = new float[c.GroupSize * (AttentionJob.TileSize + hd)];
        for (int g = 0; g < kvHeads; g++)
            AttentionJob.Attend(c, table, bs, length, g, q, keys, values, output, scratch);

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
