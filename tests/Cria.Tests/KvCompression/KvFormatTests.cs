using Cria.Inference;
using Cria.Kernels;
using Cria.Models;
using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;

namespace Cria.Tests.KvCompression;

/// <summary>Issue 6: the KV storage formats — KIVI packing and quantization, its streaming flush rules, the attention
/// kernel's tile dequantization against reference decoding, and exactness against F16 where KIVI keeps everything.</summary>
public class KvFormatTests
{
    internal static string Model() => LogitsAgreementTests.ModelFile("kv6-small", new RandomModelSpec
    {
        Dim = 128, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 256, VocabSize = 400, Seed = 61, ContextLength = 4096,
    });

    internal static int[] Tokens(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(i => i == 0 ? 1 : r.Next(3, 400)).ToArray();
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void KiviPackUnpackRoundTripsBitExactly(int bits)
    {
        var rng = new Random(bits);
        foreach (int n in new[] { 1, 7, 8, 32, 33, 128 })
        {
            var codes = Enumerable.Range(0, n).Select(_ => (byte)rng.Next(1 << bits)).ToArray();
            var packed = new byte[(n * bits + 7) / 8];
            Kivi.Pack(codes, bits, packed);
            var back = new byte[n];
            Kivi.Unpack(packed, bits, back);
            Assert.Equal(codes, back);
            // Packing is dense: every byte is used except the tail of the last.
            Assert.Equal((n * bits + 7) / 8, packed.Length);
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void KiviGroupQuantizationIsAsymmetricMinMaxWithF16Params(int bits)
    {
        var rng = new Random(5 + bits);
        var x = Enumerable.Range(0, 32).Select(_ => (float)(rng.NextDouble() * 6 - 2)).ToArray();
        var codes = new byte[32 * bits / 8];
        var (hs, hm) = Kivi.QuantizeGroup(x, 32, 1, bits, codes);
        float mn = x.Min(), mx = x.Max();
        Assert.Equal(Fp16.FromSingle(mn), hm);
        Assert.Equal(Fp16.FromSingle((mx - mn) / ((1 << bits) - 1)), hs);
        float s = Fp16.ToSingle(hs), m = Fp16.ToSingle(hm);
        var y = new float[32];
        Kivi.DequantizeGroup(codes, 32, bits, hs, hm, y);
        for (int i = 0; i < 32; i++)
        {
            int expect = Math.Clamp((int)MathF.Round((x[i] - m) / s), 0, (1 << bits) - 1);
            Assert.Equal(expect, Kivi.Code(codes, i, bits));
            Assert.True(Math.Abs(y[i] - x[i]) <= s / 2 + 1e-3f, $"element {i}: {y[i]} vs {x[i]} (scale {s})");
        }
    }

    /// <summary>Key scales and mins as 8-bit codes under F16 super-parameters: every channel's range stays covered
    /// (decoded min ≤ the channel's min, min + (2^b − 1)·scale ≥ its max), the scale grows by at most one code step d
    /// plus dm/(2^b − 1) over the exact KIVI scale, so each element is within half a step of its code; and outlier
    /// channels, negative and constant channels all round-trip.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void KeyParamsAreEightBitCodesThatCoverEachChannel(int bits)
    {
        var rng = new Random(11 + bits);
        int maxCode = (1 << bits) - 1;
        for (int trial = 0; trial < 50; trial++)
        {
            int hd = 32, G = 32;
            var x = new float[hd][];
            for (int c = 0; c < hd; c++)
            {
                float bias = c % 7 == 0 ? (float)(rng.NextDouble() * 40 - 20) : (float)(rng.NextDouble() * 2 - 1); // outlier channels
                float spread = c == 5 ? 0 : (float)(rng.NextDouble() * (c % 3 == 0 ? 8 : 0.5));                // one constant channel
                x[c] = Enumerable.Range(0, G).Select(_ => Fp16.Round(bias + (float)(rng.NextDouble() - 0.5) * spread)).ToArray();
            }
            var mn = x.Select(a => a.Min()).ToArray(); var mx = x.Select(a => a.Max()).ToArray();
            var p = new ushort[Kivi.KeySuperParams + hd];
            Kivi.FitKeyParams(mn, mx, bits, p);
            var scale = new float[hd]; var min = new float[hd];
            Kivi.DecodeKeyParams(p, scale, min);
            float d = Fp16.ToSingle(p[0]), dm = Fp16.ToSingle(p[1]);
            var codes = new byte[G * bits / 8];
            for (int c = 0; c < hd; c++)
            {
                Assert.True(min[c] <= mn[c], $"channel {c}: decoded min {min[c]} above the channel's min {mn[c]}");
                Assert.True(min[c] + maxCode * scale[c] >= mx[c] - 1e-6f * Math.Abs(mx[c]), $"channel {c}: range {min[c]} + {maxCode}·{scale[c]} below max {mx[c]}");
                float exact = (mx[c] - mn[c]) / maxCode;
                Assert.True(scale[c] <= exact + d + dm / maxCode + 1e-6f, $"channel {c}: scale {scale[c]} vs exact {exact} (d {d}, dm {dm})");
                Kivi.QuantizeWith(x[c], G, 1, scale[c], min[c], bits, codes);
                for (int t = 0; t < G; t++)
                {
                    float y = Kivi.Code(codes, t, bits) * scale[c] + min[c];
                    Assert.True(Math.Abs(y - x[c][t]) <= scale[c] / 2 * 1.0001f + 1e-6f, $"channel {c} token {t}: {y} vs {x[c][t]} (scale {scale[c]})");
                }
            }
        }
    }

    /// <summary>
    /// KIVI's reference cache (LlamaAttention_KIVI) as a state machine: after a prefill of L tokens the keys hold
    /// L − L mod R quantized and the rest full, the values max(0, L − R) quantized; each decode step appends the new token
    /// to both full-precision parts, attends, then flushes all R full keys once there are R of them, and the oldest full
    /// value once there are more than R. The tokens each decode step's attention reads quantized must be what
    /// <see cref="Kivi.QuantizedKeyEnd"/> / <see cref="Kivi.QuantizedValueEnd"/> say for that query position.
    /// </summary>
    [Theory]
    [InlineData(32, 0)]
    [InlineData(32, 5)]
    [InlineData(32, 32)]
    [InlineData(128, 300)]
    [InlineData(16, 47)]
    public void StreamingFlushRulesMatchTheKiviReference(int r, int prefill)
    {
        int kq = prefill - prefill % r, kFull = prefill % r;
        int vq = Math.Max(0, prefill - r), vFull = prefill - vq;
        for (int p = prefill; p < prefill + 5 * r + 3; p++)
        {
            if (p == 0) { kFull = 1; vFull = 1; } // the first token of an empty cache: a "prefill" of one
            else { kFull++; vFull++; }
            // attention of the query at position p reads kq quantized keys and vq quantized values
            Assert.Equal(kq, Kivi.QuantizedKeyEnd(p, r));
            Assert.Equal(vq, Kivi.QuantizedValueEnd(p, r));
            Assert.Equal(p + 1, kq + kFull);
            Assert.Equal(p + 1, vq + vFull);
            if (kFull == r) { kq += r; kFull = 0; }        // keys: flushed R at a time
            if (vFull > r) { vq++; vFull--; }               // values: one token at a time
        }
    }

    /// <summary>The attention kernel's tile loader returns, for every format, exactly the reference decoding of what was
    /// stored: F16 rounding, ggml's Q8_0 blocks, and for KIVI the F16 ring inside the residual window and the group
    /// dequantization (keys per channel over a block of G tokens, values per token over groups of channels) outside it.</summary>
    [Theory]
    [InlineData(KvCacheType.F16)]
    [InlineData(KvCacheType.Q8_0)]
    [InlineData(KvCacheType.Kivi4)]
    [InlineData(KvCacheType.Kivi2)]
    public void AttentionTilesAreTheReferenceDequantization(KvCacheType type)
    {
        const int hd = 32, kvHeads = 2, kvDim = hd * kvHeads, n = 150, G = 16, R = 32;
        var format = new KvFormat { Type = type, KiviGroup = G, KiviResidual = R };
        var cache = new KvCache(kvDim, 1, 512, 16, format, hd, ringSlack: 256);
        var rng = new Random((int)type);
        var k = new float[n][]; var v = new float[n][];
        for (int p = 0; p < n; p++)
        {
            k[p] = Enumerable.Range(0, kvDim).Select(i => (float)(rng.NextDouble() * 4 - 2 + (i % 5 == 0 ? 6 : 0))).ToArray(); // outlier channels, as KIVI observed in keys
            v[p] = Enumerable.Range(0, kvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            cache.Append(3, 1);
            cache.Store(0, 3, p, cache.Cell(3, p), k[p], v[p]);
        }
        var s = cache.GetSequence(3);
        var kv = new AttentionJob.KvLayer(cache, 0);
        int bits = format.KiviBits, vg = cache.ValueGroup;
        float H(float x) => Fp16.ToSingle(Fp16.FromSingle(x));
        float[] RefKey(int t, int p)
        {
            var y = new float[kvDim];
            switch (type)
            {
                case KvCacheType.F16: for (int i = 0; i < kvDim; i++) y[i] = H(k[t][i]); return y;
                case KvCacheType.Q8_0:
                    var q = new byte[kvDim / 32 * 34];
                    Quantize.Row(GgmlType.Q8_0, k[t], q);
                    Dequantize.Row(GgmlType.Q8_0, q, y);
                    return y;
            }
            if (t >= Kivi.QuantizedKeyEnd(p, R)) { for (int i = 0; i < kvDim; i++) y[i] = H(k[t][i]); return y; }
            // per channel over the G tokens of the block; the channels' scales and mins as 8-bit codes per KV head
            int g0 = t / G * G;
            for (int h = 0; h < kvHeads; h++)
            {
                var grp = Enumerable.Range(0, hd).Select(c => Enumerable.Range(g0, G).Select(u => H(k[u][h * hd + c])).ToArray()).ToArray();
                var prm = new ushort[Kivi.KeySuperParams + hd];
                Kivi.FitKeyParams(grp.Select(a => a.Min()).ToArray(), grp.Select(a => a.Max()).ToArray(), bits, prm);
                var sc = new float[hd]; var mn = new float[hd];
                Kivi.DecodeKeyParams(prm, sc, mn);
                for (int c = 0; c < hd; c++)
                {
                    int code = sc[c] > 0 ? Math.Clamp((int)MathF.Round((grp[c][t - g0] - mn[c]) * (1f / sc[c])), 0, (1 << bits) - 1) : 0;
                    y[h * hd + c] = code * sc[c] + mn[c];
                }
            }
            return y;
        }
        float[] RefValue(int t, int p)
        {
            var y = new float[kvDim];
            switch (type)
            {
                case KvCacheType.F16: for (int i = 0; i < kvDim; i++) y[i] = H(v[t][i]); return y;
                case KvCacheType.Q8_0:
                    var q = new byte[kvDim / 32 * 34];
                    Quantize.Row(GgmlType.Q8_0, v[t], q);
                    Dequantize.Row(GgmlType.Q8_0, q, y);
                    return y;
            }
            if (t >= Kivi.QuantizedValueEnd(p, R)) { for (int i = 0; i < kvDim; i++) y[i] = H(v[t][i]); return y; }
            var h = v[t].Select(H).ToArray();
            for (int q0 = 0; q0 < kvDim; q0 += vg)
            {
                var codes = new byte[vg * bits / 8];
                var (hs, hm) = Kivi.QuantizeGroup(h.AsSpan(q0), vg, 1, bits, codes);
                Kivi.DequantizeGroup(codes, vg, bits, hs, hm, y.AsSpan(q0));
            }
            return y;
        }
        var kTile = new float[AttentionJob.TileSize * hd]; var vTile = new float[AttentionJob.TileSize * hd];
        foreach (int p in new[] { 31, 32, 63, 64, 100, n - 1 })
            for (int g = 0; g < kvHeads; g++)
                for (int t0 = 0; t0 <= p; t0 += AttentionJob.TileSize)
                {
                    int len = Math.Min(AttentionJob.TileSize, p + 1 - t0);
                    AttentionJob.LoadTile(kv, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks), cache.BlockPositions(3), s.Ring, t0, len, g, hd, p, kTile, vTile);
                    for (int j = 0; j < len; j++)
                    {
                        int t = t0 + j;
                        Assert.Equal(RefKey(t, p).AsSpan(g * hd, hd).ToArray(), kTile.AsSpan(j * hd, hd).ToArray());
                        Assert.Equal(RefValue(t, p).AsSpan(g * hd, hd).ToArray(), vTile.AsSpan(j * hd, hd).ToArray());
                    }
                }
    }

    /// <summary>KIVI attention on the codes (scaled query and bias for keys, p·s weights and a min sum for values)
    /// gives the attention of the dequantized tiles to float rounding: 2 and 4 bits, groups of 4 and of 3 query heads
    /// (a last partial set of four), head dims 32, 64 and 128, blocks of 16 and 32 tokens, runs of codes that end mid-vector, queries before,
    /// at and after flushes; eviction's probabilities from the same scores sum to the group size.</summary>
    [Theory]
    [InlineData(KvCacheType.Kivi2, 4, 16, 32)]
    [InlineData(KvCacheType.Kivi2, 3, 32, 32)]
    [InlineData(KvCacheType.Kivi4, 4, 32, 32)]
    [InlineData(KvCacheType.Kivi4, 3, 16, 32)]
    [InlineData(KvCacheType.Kivi2, 8, 32, 64)]  // two sets of four heads; value groups of 32 in a 64-wide head
    [InlineData(KvCacheType.Kivi4, 5, 16, 128)] // a set of four and a lone head; several code words per row
    public void KiviAttentionOnCodesEqualsAttentionOnDequantizedTiles(KvCacheType type, int group, int G, int hd)
    {
        const int kvHeads = 2, n = 300, R = 64;
        int kvDim = hd * kvHeads;
        var c = new ModelConfig { HeadDim = hd, HeadCount = kvHeads * group, KvHeadCount = kvHeads, Dim = hd * kvHeads * group };
        var format = new KvFormat { Type = type, KiviGroup = G, KiviResidual = R };
        var cache = new KvCache(kvDim, 1, 512, 16, format, hd, ringSlack: 256);
        var rng = new Random(G * 10 + group);
        for (int p = 0; p < n; p++)
        {
            var k = Enumerable.Range(0, kvDim).Select(i => (float)(rng.NextDouble() * 4 - 2 + (i % 5 == 0 ? 6 : 0))).ToArray();
            var v = Enumerable.Range(0, kvDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            cache.Append(3, 1);
            cache.Store(0, 3, p, cache.Cell(3, p), k, v);
        }
        var s = cache.GetSequence(3);
        var kv = new AttentionJob.KvLayer(cache, 0);
        // The fused path runs wherever .NET has vectors (16 lanes with AVX-512, 8 with AVX2 + FMA, else 4).
        Assert.True(AttentionJob.KiviFused(kv, hd, -1), "KIVI attention on the codes needs 128-bit vectors");
        var table = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(s.Blocks).ToArray();
        var blockPos = cache.BlockPositions(3).ToArray();
        var scratch = new float[AttentionJob.ScratchLength(c)];
        var q = Enumerable.Range(0, c.QDim).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        foreach (int p in new[] { 5, 63, 64, 100, 129, 200, n - 1 })
            for (int g = 0; g < kvHeads; g++)
            {
                var fused = new float[c.QDim]; var tiles = new float[c.QDim];
                var max = new float[group]; var sum = new float[group];
                AttentionJob.AttendKivi(c, kv, table, blockPos, s.Ring!, p + 1, p, g, q, fused, scratch, max, sum);
                AttentionJob.AttendRows(c, kv, table, blockPos, s.Ring, 1, new[] { p + 1 }, p, g, q, tiles, scratch, new float[4 * group], new float[4 * group], -1);
                for (int i = g * group * hd; i < (g + 1) * group * hd; i++)
                    Assert.True(Math.Abs(fused[i] - tiles[i]) <= 2e-5f * (1 + Math.Abs(tiles[i])), $"p {p} g {g} i {i}: {fused[i]} vs {tiles[i]}");
                // The four-lane kernels (ARM64, x86 without AVX2) do each lane's multiply-adds in the same order: with
                // the hardware's fused multiply-add they give the wide kernels' bits.
                var narrow = new float[c.QDim];
                AttentionJob.AttendKivi(c, kv, table, blockPos, s.Ring!, p + 1, p, g, q, narrow, scratch, new float[group], new float[group], portable: true);
                for (int i = g * group * hd; i < (g + 1) * group * hd; i++)
                    if (System.Runtime.Intrinsics.X86.Fma.IsSupported) Assert.True(narrow[i].Equals(fused[i]), $"p {p} g {g} i {i}: four lanes {narrow[i]} vs {fused[i]}");
                    else Assert.True(Math.Abs(narrow[i] - tiles[i]) <= 2e-5f * (1 + Math.Abs(tiles[i])), $"p {p} g {g} i {i}: four lanes {narrow[i]} vs {tiles[i]}");
                // the eviction pass reads the fused scores again: probabilities over the slots sum to the group size
                var probs = new float[p + 1];
                AttentionJob.Attend(c, kv, table, blockPos, s.Ring, p + 1, p, g, q, new float[c.QDim], scratch, probs);
                Assert.Equal(group, probs.Sum(), 3);
            }
    }

    static float[][] Run(InferenceContext ctx, int[] prompt, int chunk, int decode)
    {
        var all = new List<float[]>();
        var b = new Batch(chunk);
        for (int i = 0; i < prompt.Length; i += chunk)
        {
            b.Clear();
            for (int j = i; j < Math.Min(prompt.Length, i + chunk); j++) b.Add(prompt[j], j, 0, true);
            ctx.Decode(b);
            for (int j = 0; j < b.Count; j++) all.Add(ctx.Logits(j).ToArray());
        }
        int pos = prompt.Length;
        for (int s = 0; s < decode; s++)
        {
            var last = all[^1];
            int next = Array.IndexOf(last, last.Max());
            b.Clear();
            b.Add(next, pos++, 0, true);
            ctx.Decode(b);
            all.Add(ctx.Logits(0).ToArray());
        }
        return all.ToArray();
    }

    [Theory]
    [InlineData(KvCacheType.Kivi2)]
    [InlineData(KvCacheType.Kivi4)]
    public void KiviWithAWindowCoveringTheSequenceReproducesF16Exactly(KvCacheType type)
    {
        using var m = LlamaModel.Open(Model());
        var prompt = Tokens(90, 3);
        float[][] Logits(KvFormat f)
        {
            using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 256, Threads = 2, MicroBatch = 32, Kv = f });
            return Run(ctx, prompt, 32, 30);
        }
        var f16 = Logits(KvFormat.F16);
        var kivi = Logits(new KvFormat { Type = type, KiviGroup = 32, KiviResidual = 128 }); // 120 tokens < R + 1
        Assert.Equal(f16.Length, kivi.Length);
        for (int i = 0; i < f16.Length; i++) Assert.Equal(f16[i], kivi[i]);

        // With a short window the quantized part is read and the prompt's logits move (random weights amplify it; the
        // quality effect on a trained model is measured in docs/kv-cache.md).
        var shortWindow = Logits(new KvFormat { Type = type, KiviGroup = 16, KiviResidual = 16 });
        double maxDiff = 0;
        for (int i = 0; i < prompt.Length; i++) for (int j = 0; j < f16[i].Length; j++) maxDiff = Math.Max(maxDiff, Math.Abs(f16[i][j] - shortWindow[i][j]));
        Assert.True(maxDiff > 0 && double.IsFinite(maxDiff), $"max |Δ logit| with R=16: {maxDiff}");
        for (int i = 0; i < 16; i++) Assert.Equal(f16[i], shortWindow[i]); // queries before position R read no quantized token
    }

    public static IEnumerable<object[]> AllTypes() =>
        Enum.GetValues<KvCacheType>().Select(t => new object[] { t });

    static KvFormat Small(KvCacheType t) => new() { Type = t, KiviGroup = 16, KiviResidual = 16 };

    /// <summary>Batch invariance for every KV type: a sequence's logits do not depend on which other sequences share its
    /// micro-batches, nor on how its prompt is cut into steps (KIVI's window is a per-row rule of the row's position).</summary>
    [Theory]
    [MemberData(nameof(AllTypes))]
    public void EveryKvTypeIsBatchInvariant(KvCacheType type)
    {
        using var m = LlamaModel.Open(Model());
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 512, Threads = 2, MicroBatch = 7, Kv = Small(type) });
        var seqs = new[] { Tokens(40, 2), Tokens(53, 3), Tokens(25, 4) };
        var alone = new float[seqs.Length][];
        for (int s = 0; s < seqs.Length; s++)
        {
            ctx.Cache.Clear();
            var b1 = new Batch();
            b1.AddSequence(seqs[s], 0, 0);
            ctx.Decode(b1);
            alone[s] = ctx.Logits(b1.Count - 1).ToArray();
        }
        ctx.Cache.Clear();
        var b = new Batch();
        var last = new int[seqs.Length];
        for (int p = 0; p < seqs.Max(x => x.Length); p++)
            for (int s = 0; s < seqs.Length; s++)
                if (p < seqs[s].Length) { int row = b.Add(seqs[s][p], p, 5 + s, p == seqs[s].Length - 1); if (p == seqs[s].Length - 1) last[s] = row; }
        ctx.Decode(b);
        for (int s = 0; s < seqs.Length; s++) Assert.Equal(alone[s], ctx.Logits(last[s]).ToArray());

        // Token-by-token decoding of the first sequence equals its whole-prompt logits.
        ctx.Cache.Clear();
        var one = new Batch();
        for (int p = 0; p < seqs[0].Length; p++)
        {
            one.Clear();
            one.Add(seqs[0][p], p, 0, true);
            ctx.Decode(one);
        }
        Assert.Equal(alone[0], ctx.Logits(0).ToArray());
    }

    [Fact]
    public void BytesPerTokenCountCodesAndScales()
    {
        var c = new ModelConfig { HeadDim = 32, HeadCount = 8, KvHeadCount = 2, Dim = 256, LayerCount = 6 };
        double f16 = new KvCache(c, 256, format: KvFormat.F16).BytesPerToken;
        Assert.Equal(6 * 2 * 64 * 2, f16);
        Assert.Equal(6 * 2 * 64 / 32 * 34, new KvCache(c, 256, format: new KvFormat { Type = KvCacheType.Q8_0 }).BytesPerToken);
        // KIVI-2, G = 32: per layer and channel, 2 bits of K + 2 bits of V + (8-bit scale + 8-bit min) per 32 tokens
        // (K, plus 3 F16 super-parameters per KV head and block) and (F16 scale + min) per 32 channels (V).
        double kivi2 = new KvCache(c, 256, format: new KvFormat { Type = KvCacheType.Kivi2 }).BytesPerToken;
        Assert.Equal(6 * (2 * 64 * 2 / 8.0 + (64 * 2 + 2 * 3 * 2) / 32.0 + 2 * 4), kivi2);
        Assert.Equal(266.25, kivi2);
        Assert.Equal(6 * (2 * 64 * 4 / 8.0 + (64 * 2 + 2 * 3 * 2) / 32.0 + 2 * 4), new KvCache(c, 256, format: new KvFormat { Type = KvCacheType.Kivi4 }).BytesPerToken);
        // the target, F16 window of R = 128 tokens included: ≤ 0.2 × F16 at 8K context (from 4 802 tokens on)
        var window = new KvCache(c, 256, format: new KvFormat { Type = KvCacheType.Kivi2, KiviResidual = 128 });
        double At(int n) => (kivi2 * n + 128 * f16) / (n * f16);
        Assert.True(At(8192) <= 0.2, $"KIVI-2 at 8K with R = 128: {At(8192):F4} × F16");
        Assert.True(At(4802) <= 0.2 && At(4801) > 0.2, $"{At(4802)} {At(4801)}");
        Assert.Equal(128 * f16 + 512 * f16, window.RingBytesPerSequence); // the ring itself: R + micro-batch slack, F16
    }
}
