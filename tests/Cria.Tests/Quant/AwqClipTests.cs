using Cria.Quantization;
using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>AWQ's weight clipping search (<see cref="Awq.Clip"/>).</summary>
public sealed class AwqClipTests(ITestOutputHelper output)
{
    static readonly GgmlType[] Types = [GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q6_K];
    static readonly float[] Grid = [1f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f, 0.65f, 0.6f, 0.55f, 0.5f];

    static float Gauss(Random r) => (float)(Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble()));

    /// <summary>[rows, cols] Gaussian weights; the even rows get one outlier (12× the spread) at a random column.</summary>
    static float[] WeightsWithOutliers(int rows, int cols, int seed)
    {
        var r = new Random(seed);
        var w = new float[rows * cols];
        for (int i = 0; i < w.Length; i++) w[i] = 0.02f * Gauss(r);
        for (int o = 0; o < rows; o += 2) w[o * cols + r.Next(cols)] = 0.24f * (r.Next(2) == 0 ? 1 : -1);
        return w;
    }

    /// <summary>Σ x xᵀ ([cols, cols]) of correlated inputs with uneven channel scales.</summary>
    static float[] Gram(int cols, int tokens, int seed)
    {
        var r = new Random(seed);
        var scale = new float[cols];
        for (int j = 0; j < cols; j++) scale[j] = 0.3f + 2f * (float)r.NextDouble();
        var g = new double[cols * cols];
        var x = new float[cols];
        for (int t = 0; t < tokens; t++)
        {
            float common = Gauss(r), prev = 0;
            for (int j = 0; j < cols; j++)
            {
                prev = 0.7f * prev + 0.7f * Gauss(r);
                x[j] = scale[j] * (prev + 0.5f * common);
            }
            for (int i = 0; i < cols; i++)
                for (int j = 0; j < cols; j++) g[i * cols + j] += x[i] * x[j];
        }
        return g.Select(v => (float)v).ToArray();
    }

    /// <summary>Per row, dᵀGd of the row quantized from <paramref name="values"/> against the original weights <paramref name="w"/>.</summary>
    static double[] RowErrors(GgmlType t, float[] values, float[] w, int rows, int cols, float[] gram, float[]? importance)
    {
        var q = ModelQuantizer.QuantizeMatrix(t, values, cols, rows, importance, 1);
        int rb = (int)GgmlTypeInfo.RowBytes(t, cols);
        return Enumerable.Range(0, rows).Select(o => Gptq.OutputError(t, q.AsSpan(o * rb, rb), w.AsSpan(o * cols, cols), 1, cols, gram)).ToArray();
    }

    [Fact]
    public void Clipping_never_raises_a_rows_output_error_and_lowers_it_on_rows_with_an_outlier()
    {
        const int rows = 16, cols = 256;
        var w = WeightsWithOutliers(rows, cols, 5);
        var gram = Gram(cols, 400, 6);
        var importance = Enumerable.Range(0, cols).Select(j => gram[j * cols + j] / 400).ToArray();
        foreach (var t in Types)
            foreach (var imp in new[] { null, importance })
            {
                var clipped = Awq.Clip(t, w, rows, cols, gram, imp, Grid, 32, 2, CalibratedCandidates.Default, out double before, out double after, out int groups);
                var e0 = RowErrors(t, w, w, rows, cols, gram, imp);
                var e1 = RowErrors(t, clipped, w, rows, cols, gram, imp);
                double outlier0 = 0, outlier1 = 0;
                for (int o = 0; o < rows; o++)
                {
                    Assert.True(e1[o] <= e0[o] * (1 + 1e-9), $"{t}{(imp != null ? " imatrix" : "")} row {o}: clipping raised dᵀGd {e0[o]} → {e1[o]}");
                    if (o % 2 == 0) { outlier0 += e0[o]; outlier1 += e1[o]; }
                }
                // Clipping only shrinks weights toward zero, never past the group's r·max.
                for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(clipped[i]) <= Math.Abs(w[i]) && Math.Sign(clipped[i]) * Math.Sign(w[i]) >= 0);
                Assert.Equal(e0.Sum(), before, e0.Sum() * 1e-4);
                Assert.Equal(e1.Sum(), after, e1.Sum() * 1e-4);
                output.WriteLine($"{t,-5}{(imp != null ? " imatrix" : "        ")}: {groups,3} groups clipped, dᵀGd {e0.Sum():E3} → {e1.Sum():E3} ({e1.Sum() / e0.Sum():P1}); outlier rows {outlier1 / outlier0:P1}");
                Assert.True(outlier1 < 0.97 * outlier0, $"{t}: clipping lowered the outlier rows' error only to {outlier1 / outlier0:P1}");
            }
    }

    [Fact]
    public void A_grid_of_one_leaves_the_weights_and_bad_settings_are_refused()
    {
        const int rows = 4, cols = 256;
        var w = WeightsWithOutliers(rows, cols, 7);
        var gram = Gram(cols, 100, 8);
        var same = Awq.Clip(GgmlType.Q4_K, w, rows, cols, gram, null, [1f], 32, 1, CalibratedCandidates.Default, out double b, out double a, out int n);
        Assert.Equal(w, same);
        Assert.Equal(b, a);
        Assert.Equal(0, n);

        Assert.Throws<CriaException>(() => Awq.Clip(GgmlType.Q4_0, w, rows, cols, gram, null, Grid, 24, 1, CalibratedCandidates.Default, out _, out _, out _));
        Assert.Throws<CriaException>(() => Awq.Clip(GgmlType.Q4_0, w, rows, cols, gram, null, [1f, 1.5f], 32, 1, CalibratedCandidates.Default, out _, out _, out _));
        Assert.Throws<CriaException>(() => Awq.Clip(GgmlType.Q4_0, w, rows, cols, gram.AsSpan(0, 100).ToArray(), null, Grid, 32, 1, CalibratedCandidates.Default, out _, out _, out _));
        Assert.Throws<CriaException>(() => Awq.Clip(GgmlType.F16, w, rows, cols, gram, null, Grid, 32, 1, CalibratedCandidates.Default, out _, out _, out _));
    }
}
