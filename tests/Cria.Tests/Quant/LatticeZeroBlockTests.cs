using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>
/// A super-block with one all-zero sub-block of 32 (a pruned or never-trained stretch of a row). Every lattice type but
/// IQ3_S gives ggml's bytes. ggml's IQ3_S quantizer skips such a sub-block without moving its grid-index and sign
/// pointers (quantize_row_iq3_s_impl's `continue` comes before `qs += bs4; signs += bs8`), so the later sub-blocks'
/// indices and signs land one slot early and the last slot stays empty: its file decodes to noise. Cria writes each
/// sub-block in its own slot; the test pins that the difference is exactly that shift.
/// </summary>
public sealed class LatticeZeroBlockTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(GgmlType.IQ3_S)] [InlineData(GgmlType.IQ3_XXS)] [InlineData(GgmlType.IQ2_S)] [InlineData(GgmlType.IQ2_XS)]
    [InlineData(GgmlType.IQ2_XXS)] [InlineData(GgmlType.IQ1_S)] [InlineData(GgmlType.IQ1_M)]
    public void A_zero_sub_block_leaves_the_others_intact(GgmlType type)
    {
        var rng = new Random(3 + (int)type);
        var x = QuantTestUtil.Gaussian(rng, 512, 0.02f);
        var imp = new float[256];
        for (int j = 0; j < 256; j++) imp[j] = 0.5f + (float)rng.NextDouble();
        var plain = new float[512];
        x.CopyTo(plain, 0);
        Array.Clear(x, 64, 32); // sub-block 2 of super-block 0 is all zero; super-block 1 is the control
        double RelErr(float[] v, byte[] q, int from, int to)
        {
            var d = new float[512];
            Dequantize.Row(type, q, d);
            double e = 0, n = 0;
            for (int j = from; j < to; j++) { e += (v[j] - d[j]) * (v[j] - d[j]); n += v[j] * v[j]; }
            return e / n;
        }
        var cria = new byte[GgmlTypeInfo.RowBytes(type, 512)];
        Quantize.Row(type, x, cria, [.. imp, .. imp]);
        // Super-block 0 is encoded about as well as super-block 1 (the zero stretch decodes to the smallest grid
        // magnitude under the super-block's scale: these formats have no exact zero).
        double e0 = RelErr(x, cria, 0, 256), e1 = RelErr(x, cria, 256, 512);
        var ggml = GgmlQuantizer.Quantize(type, x, 512, [.. imp, .. imp]);
        output.WriteLine($"{type}: relative squared error {e0:E3} (super-block with a zero sub-block), {e1:E3} (control); ggml's bytes {(ggml.AsSpan().SequenceEqual(cria) ? "the same" : $"differ, relative error {RelErr(x, ggml, 0, 256):E3}")}");
        Assert.True(e0 < 1.5 * e1 && e1 < 0.35, $"{type}: relative error {e0} with a zero sub-block against {e1}");
        if (type != GgmlType.IQ3_S)
        {
            Assert.True(ggml.AsSpan().SequenceEqual(cria), $"{type}: bytes differ from ggml's");
            return;
        }
        // IQ3_S (d | qs[64] | qh[8] | signs[32] | scales[4]): equal but for super-block 0's qs and signs from sub-block 2 on,
        // which ggml wrote one slot early (slot 7 left zero); super-block 1 is equal.
        const int qs = 2, signs = 2 + 64 + 8, bs = 110;
        Assert.True(ggml.AsSpan(bs).SequenceEqual(cria.AsSpan(bs)), "IQ3_S: the control super-block differs");
        Assert.True(ggml.AsSpan(0, qs + 16).SequenceEqual(cria.AsSpan(0, qs + 16)), "IQ3_S: d or sub-blocks 0–1's indices differ");
        Assert.True(ggml.AsSpan(qs + 64, 8).SequenceEqual(cria.AsSpan(qs + 64, 8)), "IQ3_S: qh differs");
        Assert.True(ggml.AsSpan(signs + 32, 4).SequenceEqual(cria.AsSpan(signs + 32, 4)), "IQ3_S: scales differ");
        Assert.True(ggml.AsSpan(signs, 8).SequenceEqual(cria.AsSpan(signs, 8)), "IQ3_S: sub-blocks 0–1's signs differ");
        for (int ib = 3; ib < 8; ib++)
        {
            Assert.True(ggml.AsSpan(qs + 8 * (ib - 1), 8).SequenceEqual(cria.AsSpan(qs + 8 * ib, 8)), $"IQ3_S: sub-block {ib}'s indices are not ggml's, one slot on");
            Assert.True(ggml.AsSpan(signs + 4 * (ib - 1), 4).SequenceEqual(cria.AsSpan(signs + 4 * ib, 4)), $"IQ3_S: sub-block {ib}'s signs are not ggml's, one slot on");
        }
        Assert.True(ggml.AsSpan(qs + 56, 8).IndexOfAnyExcept((byte)0) < 0 && ggml.AsSpan(signs + 28, 4).IndexOfAnyExcept((byte)0) < 0, "IQ3_S: ggml's last slot is not empty");
    }
}
