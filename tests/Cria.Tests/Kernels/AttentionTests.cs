using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Inference;
using Cria.Kernels;
using Cria.Models;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>The fused, tiled, online-softmax attention against its double-precision scalar reference.</summary>
public class AttentionTests
{
    [Theory]
    [InlineData(64, 8, 2, 150)]  // key columns with head pairs, three tiles, last one partial
    [InlineData(32, 4, 4, 70)]   // MHA: one head per group
    [InlineData(64, 4, 1, 1)]    // a single position
    [InlineData(24, 6, 2, 100)]  // group of 3: a head pair and a single head; hd not a multiple of 32 (single-head P·V)
    [InlineData(20, 4, 2, 40)]   // hd not a multiple of 8: scores on the key rows
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
    /// LongGen's windowed layers: each query row sees the sinks (positions &lt; S) and the positions in (p − W, p] only.
    /// Rows of a prefill run (<see cref="AttentionJob.AttendRows"/>, tiles skipped where no row looks) and a single
    /// decode row with eviction probabilities (<see cref="AttentionJob.Attend"/>) against the scalar reference over the
    /// visible keys; with evicted blocks (holes: positions from the block table) too. The masked keys get probability 0.
    /// </summary>
    [Theory]
    [InlineData(70, 20, false)]   // window and sinks ending inside tiles and blocks
    [InlineData(64, 16, false)]   // aligned to tiles and blocks
    [InlineData(70, 20, true)]    // blocks 4 … 9 evicted: the sinks, then a window that starts after the hole
    [InlineData(1, 0, false)]     // the query's own key only
    public void WindowedAttentionMatchesScalarReferenceOverVisibleKeys(int window, int sinks, bool holes)
    {
        const int hd = 32, heads = 4, kvHeads = 2, bs = 16, length = 330, rows = 16;
        var c = new ModelConfig { HeadDim = hd, HeadCount = heads, KvHeadCount = kvHeads, Dim = hd * heads, WindowLayers = [true], Window = window, WindowSinks = sinks };
        var rng = new Random(window * 7 + sinks + (holes ? 1 : 0));
        float R() => (float)(rng.NextDouble() * 2 - 1);
        var cache = new KvCache(c.KvDim, 1, 512, bs, KvFormat.F32, hd);
        cache.Append(0, length);
        var rawK = new float[length][]; var rawV = new float[length][];
        for (int t = 0; t < length; t++)
        {
            rawK[t] = Enumerable.Range(0, c.KvDim).Select(_ => R()).ToArray();
            rawV[t] = Enumerable.Range(0, c.KvDim).Select(_ => R()).ToArray();
            int cell = cache.Cell(0, t);
            rawK[t].CopyTo(cache.Keys(0).Slice(cell * c.KvDim, c.KvDim));
            rawV[t].CopyTo(cache.Values(0).Slice(cell * c.KvDim, c.KvDim));
        }
        if (holes) cache.DropBlocks(0, Enumerable.Range(0, (length + bs - 1) / bs).Select(b => b < 4 || b >= 10).ToArray());
        var s = cache.GetSequence(0);
        var kept = Enumerable.Range(0, length).Where(t => !holes || t / bs < 4 || t / bs >= 10).ToArray(); // text positions in slot order
        var table = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var blockPos = cache.BlockPositions(0).ToArray();
        var kv = new AttentionJob.KvLayer(cache, 0);
        var scratch = new float[AttentionJob.ScratchLength(c)];
        var q = Enumerable.Range(0, rows * c.QDim).Select(_ => R() * 3).ToArray();
        var output = new float[rows * c.QDim];
        var slots = Enumerable.Range(0, rows).Select(r => kept.Length - rows + 1 + r).ToArray();
        int pLast = length - 1;
        for (int g = 0; g < kvHeads; g++)
            AttentionJob.AttendRows(c, kv, table, blockPos, null, rows, slots, pLast, g, q, output, scratch, new float[rows * c.GroupSize], new float[rows * c.GroupSize], -1);
        var expected = new float[hd];
        for (int r = 0; r < rows; r++)
        {
            int pq = pLast - rows + 1 + r;
            var visible = kept.Take(slots[r]).Where(t => t < sinks || t > pq - window).ToArray();
            Assert.True(visible.Length < slots[r]); // the mask hides something from every row
            for (int h = 0; h < heads; h++)
            {
                int g = h / c.GroupSize;
                AttentionJob.AttendScalar(q.AsSpan(r * c.QDim + h * hd, hd), j => rawK[visible[j]].AsSpan(g * hd, hd).ToArray(),
                                          j => rawV[visible[j]].AsSpan(g * hd, hd).ToArray(), visible.Length, expected);
                for (int i = 0; i < hd; i++)
                    Assert.True(Math.Abs(expected[i] - output[r * c.QDim + h * hd + i]) <= 1e-5f, $"row {r} head {h} dim {i}: {output[r * c.QDim + h * hd + i]} vs {expected[i]}");
            }
        }
        // One decode row with the eviction policies' probabilities: the last row again, the same output; Σ over the
        // visible slots = the group's heads, 0 elsewhere.
        var one = new float[c.QDim];
        var probs = new float[kept.Length];
        for (int g = 0; g < kvHeads; g++)
        {
            AttentionJob.Attend(c, kv, table, blockPos, null, kept.Length, pLast, g, q.AsSpan((rows - 1) * c.QDim, c.QDim), one, scratch, probs);
            for (int j = 0; j < kept.Length; j++)
                if (!(kept[j] < sinks || kept[j] > pLast - window)) Assert.Equal(0f, probs[j]);
            Assert.True(Math.Abs(probs.Sum() - c.GroupSize) < 1e-4, $"probabilities sum to {probs.Sum()}");
        }
        for (int i = 0; i < c.QDim; i++) Assert.True(Math.Abs(one[i] - output[(rows - 1) * c.QDim + i]) <= 1e-6f);
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

    /// <summary>
    /// The softmax's e^x (AVX2 + FMA): every lane equals the scalar twin bit for bit, so a score gives the same
    /// probability in a vector or in a tile's scalar tail; both are within 2 ulp of e^x on [−87, 88] (measured on
    /// 200,000 points and the edges), 0 from −88 down, and NaN stays NaN.
    /// </summary>
    [Avx2Fact]
    public void Exp_lanes_equal_the_scalar_twin_and_stay_within_two_ulp()
    {
        Assert.True(Avx2.IsSupported && Fma.IsSupported, "this machine runs the AVX2 softmax; the test needs it");
        var rng = new Random(3);
        var xs = new List<float> { 0f, -0f, 1f, -1f, 0.5f, -87f, 88f, -87.33f, -87.5f, -88f, -88.5f, -1000f, float.NegativeInfinity,
                                   float.NaN, 1e-30f, -1e-30f, 0.34657359f, -0.34657359f, 0.6931472f, -0.6931472f };
        for (int i = 0; i < 200_000; i++) xs.Add((float)(rng.NextDouble() * 175 - 87));
        for (int i = 0; i < 20_000; i++) xs.Add((float)(-rng.NextDouble() * 20)); // the softmax's range: s − max ≤ 0
        while (xs.Count % 8 != 0) xs.Add(0f);
        var x = xs.ToArray();
        double worst = 0;
        for (int i = 0; i < x.Length; i += 8)
        {
            var v = Ops.Exp(Vector256.Create(x, i));
            for (int l = 0; l < 8; l++)
            {
                float xi = x[i + l], lane = v[l], scalar = Ops.ExpScalar(xi);
                Assert.True(BitConverter.SingleToInt32Bits(lane) == BitConverter.SingleToInt32Bits(scalar), $"e^{xi}: lane {lane:R}, scalar {scalar:R}");
                if (float.IsNaN(xi)) { Assert.True(float.IsNaN(lane)); continue; }
                if (xi <= -88f) { Assert.Equal(0f, lane); continue; }
                double exact = Math.Exp(xi), ulp = Math.Max(double.Epsilon, (double)MathF.BitIncrement((float)exact) - (float)exact);
                if (exact < 1.2e-38) continue; // below float's smallest normal the kernel may flush (−88 < x < −87.34)
                double err = Math.Abs(lane - exact) / ulp;
                worst = Math.Max(worst, err);
                Assert.True(err <= 2, $"e^{xi:R} = {exact:R}: kernel {lane:R}, {err:F2} ulp");
            }
        }
        Assert.True(worst > 0.3, $"largest error {worst:F2} ulp: the comparison should see rounding");
    }

    /// <summary>
    /// Scores from the key tile's columns: the 8 × 8 transposition puts every key where the column kernel reads it, and
    /// each score equals its scalar reference (one FMA chain over d) bit for bit, for every n of a tile, head pairs and
    /// a single head left over, and a key tile with stale rows past n.
    /// </summary>
    [Avx2Theory]
    [InlineData(64, 8)]
    [InlineData(32, 3)]
    [InlineData(8, 1)]
    public void Key_column_scores_equal_the_scalar_fma_chain(int hd, int group)
    {
        Assert.True(AttentionJob.UsesKeyColumns(hd), "this machine runs the key-column scores; the test needs it");
        const int T = AttentionJob.TileSize;
        var rng = new Random(hd * 10 + group);
        float R() => (float)(rng.NextDouble() * 2 - 1);
        int heads = 2 * group, h0 = group; // the second KV group's heads
        var q = Enumerable.Range(0, heads * hd).Select(_ => R() * 3).ToArray();
        var kTile = Enumerable.Range(0, T * hd).Select(_ => R()).ToArray(); // [T, hd]; rows past n are stale
        var kCols = new float[hd * T];
        var scores = new float[group * T];
        float scale = 1f / MathF.Sqrt(hd);
        foreach (int n in new[] { 1, 7, 8, 9, 31, 33, 57, T })
        {
            Array.Fill(kCols, float.NaN);
            Array.Fill(scores, float.NaN);
            AttentionJob.TransposeKeys(kTile, n, hd, kCols);
            int covered = (n + 7) / 8 * 8;
            for (int d = 0; d < hd; d++)
                for (int j = 0; j < covered; j++)
                    Assert.Equal(kTile[j * hd + d], kCols[d * T + j]);
            AttentionJob.TileScoresColumns(q, kCols, n, h0, group, hd, scale, scores);
            for (int h = 0; h < group; h++)
                for (int j = 0; j < n; j++)
                {
                    float expect = AttentionJob.ScoreColumnsScalar(q.AsSpan((h0 + h) * hd, hd), kTile.AsSpan(j * hd, hd), scale);
                    Assert.True(BitConverter.SingleToInt32Bits(expect) == BitConverter.SingleToInt32Bits(scores[h * T + j]),
                                $"n {n}, head {h}, key {j}: {scores[h * T + j]:R} vs {expect:R}");
                }
        }
    }

    /// <summary>An unshifted F16 cache goes straight into key columns (eight keys widened and transposed in registers):
    /// the same floats as the row tile transposed, and the same value rows, for tiles that cross scattered blocks and
    /// end mid-block.</summary>
    [Avx2Fact]
    public void F16_keys_loaded_straight_into_columns_equal_the_transposed_row_tile()
    {
        const int hd = 64, kvHeads = 2, bs = 16, T = AttentionJob.TileSize;
        Assert.True(AttentionJob.UsesKeyColumns(hd));
        var c = new ModelConfig { HeadDim = hd, HeadCount = 8, KvHeadCount = kvHeads, Dim = hd * 8 };
        const int length = 150;
        var cache = new KvCache(c.KvDim, 1, 320, bs, KvFormat.F16, hd);
        cache.Append(7, 40);                          // another sequence first, so sequence 0's blocks are not 0, 1, 2 …
        cache.Append(0, length);
        var rng = new Random(9);
        var row = new float[c.KvDim];
        var row2 = new float[c.KvDim];
        for (int t = 0; t < length; t++)
        {
            for (int j = 0; j < row.Length; j++) { row[j] = (float)(rng.NextDouble() * 8 - 4); row2[j] = (float)(rng.NextDouble() * 8 - 4); }
            cache.Store(0, 0, t, cache.Cell(0, t), row, row2);
        }
        var s = cache.GetSequence(0);
        var table = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var blockPos = cache.BlockPositions(0).ToArray();
        var kv = new AttentionJob.KvLayer(cache, 0);
        var kTile = new float[T * hd]; var vTile = new float[T * hd]; var kCols = new float[hd * T];
        var vDirect = new float[T * hd]; var kDirect = new float[hd * T];
        foreach (var (t0, n) in new[] { (0, T), (64, T), (128, 22), (128, 1), (64, 13) })
            for (int g = 0; g < kvHeads; g++)
            {
                AttentionJob.LoadTile(kv, table, blockPos, null, t0, n, g, hd, length - 1, kTile, vTile);
                AttentionJob.TransposeKeys(kTile, n, hd, kCols);
                AttentionJob.LoadF16Columns(kv, table, t0, n, g, hd, kDirect, vDirect);
                for (int d = 0; d < hd; d++)
                    for (int j = 0; j < n; j++)
                        Assert.Equal(kCols[d * T + j], kDirect[d * T + j]);
                Assert.Equal(vTile.AsSpan(0, n * hd).ToArray(), vDirect.AsSpan(0, n * hd).ToArray());
            }
    }

    /// <summary>A Q8_0 cache tile widens to exactly ggml's Q8_0 dequantization (d · q) of the stored rows.</summary>
    [Fact]
    public void Q8_0_tile_equals_the_dequantized_cache_rows()
    {
        const int hd = 64, kvHeads = 2, bs = 16, T = AttentionJob.TileSize, length = 90;
        var c = new ModelConfig { HeadDim = hd, HeadCount = 4, KvHeadCount = kvHeads, Dim = hd * 4 };
        var cache = new KvCache(c.KvDim, 1, 128, bs, new KvFormat { Type = KvCacheType.Q8_0 }, hd);
        cache.Append(0, length);
        var rng = new Random(4);
        var row = new float[c.KvDim];
        for (int t = 0; t < length; t++)
        {
            for (int j = 0; j < row.Length; j++) row[j] = (float)(rng.NextDouble() * 6 - 3);
            cache.Store(0, 0, t, cache.Cell(0, t), row, row);
        }
        var s = cache.GetSequence(0);
        var table = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var kv = new AttentionJob.KvLayer(cache, 0);
        var kTile = new float[T * hd]; var vTile = new float[T * hd];
        var expect = new float[c.KvDim];
        int rowBytes = c.KvDim / 32 * 34;
        for (int g = 0; g < kvHeads; g++)
        {
            AttentionJob.LoadTile(kv, table, cache.BlockPositions(0).ToArray(), null, 64, length - 64, g, hd, length - 1, kTile, vTile);
            for (int j = 0; j < length - 64; j++)
            {
                int cell = cache.Cell(0, 64 + j);
                Cria.Tensors.Dequantize.Row(Cria.Tensors.GgmlType.Q8_0, kv.K.AsSpan(cell * rowBytes, rowBytes), expect);
                Assert.Equal(expect.AsSpan(g * hd, hd).ToArray(), kTile.AsSpan(j * hd, hd).ToArray());
                Assert.Equal(expect.AsSpan(g * hd, hd).ToArray(), vTile.AsSpan(j * hd, hd).ToArray());
            }
        }
    }
}
