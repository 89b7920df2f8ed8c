using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>The importance-weighted quantizers (ggml's *_impl paths): the error they minimise, Σ w (x − x̂)², is lower
/// than the reference quantizer's on the same rows, and the output decodes to values near the input.</summary>
public sealed class WeightedQuantizeTests(ITestOutputHelper output)
{
    public static TheoryData<GgmlType> Types() => new()
    {
        GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K,
    };

    [Theory]
    [MemberData(nameof(Types))]
    public void Weighted_error_is_lower_than_the_reference_quantizers(GgmlType t)
    {
        var rng = new Random(5);
        const int n = 1024, rows = 64;
        double refErr = 0, impErr = 0;
        for (int r = 0; r < rows; r++)
        {
            var x = QuantTestUtil.Gaussian(rng, n);
            var qw = new float[n];                      // [n] importance, heavy-tailed like real activations
            for (int j = 0; j < n; j++) qw[j] = MathF.Exp(2f * QuantTestUtil.Gaussian(rng, 1)[0]);
            var a = QuantTestUtil.Dequant(t, QuantTestUtil.Quant(t, x), n);
            var b = new byte[GgmlTypeInfo.RowBytes(t, n)];
            Quantize.Row(t, x, b, qw);
            var c = QuantTestUtil.Dequant(t, b, n);
            for (int j = 0; j < n; j++)
            {
                refErr += qw[j] * (x[j] - a[j]) * (x[j] - a[j]);
                impErr += qw[j] * (x[j] - c[j]) * (x[j] - c[j]);
            }
        }
        output.WriteLine($"{t}: weighted error reference {refErr / rows:F2}, weighted {impErr / rows:F2} ({impErr / refErr:P1})");
        Assert.True(impErr < 0.97 * refErr, $"{t}: weighted quantization error {impErr:F2} is not below the reference's {refErr:F2}");
    }

    [Fact]
    public void Empty_weights_take_the_reference_path_and_a_wrong_length_is_refused()
    {
        var x = QuantTestUtil.Gaussian(new Random(1), 256);
        var b = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q4_K, 256)];
        Quantize.Row(GgmlType.Q4_K, x, b, ReadOnlySpan<float>.Empty);
        Assert.Equal(QuantTestUtil.Quant(GgmlType.Q4_K, x), b);
        Assert.Throws<ArgumentException>(() => Quantize.Row(GgmlType.Q4_K, x, b, new float[255]));
    }
}
