using Cria.Tensors;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>
/// Cria's row quantizers against ggml's own (<c>ggml_quantize_chunk</c>, the call llama-quantize makes per tensor) on
/// the same values, byte for byte: the reference path (no importance matrix) and the importance-weighted
/// <c>*_impl</c> path that <c>llama-quantize --imatrix</c> runs, which LLamaSharp's file-level quantize API cannot
/// reach. The rows hold Gaussian values with outliers, an all-zero block, a constant block and a block of tiny values.
/// </summary>
public sealed class RowQuantizerOracleTests(ITestOutputHelper output)
{
    public static TheoryData<GgmlType, bool> Cases()
    {
        var d = new TheoryData<GgmlType, bool>();
        foreach (var t in new[] { GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.Q8_0, GgmlType.Q2_K, GgmlType.Q3_K,
                     GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS })
        {
            d.Add(t, false);
            d.Add(t, true);
        }
        // the lattice i-quants; IQ2_XXS, IQ2_XS and IQ1_S only with an importance matrix (ggml asserts one)
        foreach (var t in IQuantOracleTests.Lattice)
        {
            if (!Quantize.NeedsImportance(t)) d.Add(t, false);
            d.Add(t, true);
        }
        return d;
    }

    const int Rows = 24, Cols = 1024;

    static readonly float[] IQ4Midpoints = [-115.5f, -93.5f, -74f, -57f, -42f, -28.5f, -16f, -4.5f, 7f, 19f, 31.5f, 45.5f, 61f, 79f, 101f];

    static (float[] values, float[] importance) Data(int seed)
    {
        var rng = new Random(seed);
        var x = new float[Rows * Cols];
        for (int r = 0; r < Rows; r++)
        {
            var row = QuantTestUtil.Gaussian(rng, Cols, 0.02f + 0.01f * (r % 5));
            for (int k = 0; k < 6; k++) row[rng.Next(Cols)] *= 12; // outliers
            if (r % 6 == 1) Array.Clear(row, 256, 256);                 // a whole super-block of zeros
            if (r % 6 == 2) Array.Fill(row, -0.03f, 512, 32);           // a constant block
            if (r % 6 == 3) for (int j = 768; j < 1024; j++) row[j] *= 1e-6f; // tiny values
            if (r % 6 == 4)
                // IQ4 ties: with max 1 the trial inverse scale −128 maps −m/128 exactly onto the midpoint m between two
                // levels, where best_index_int8 takes the upper level
                for (int j = 0; j < 256; j++) row[j] = j % 32 == 0 ? 1f : -IQ4Midpoints[(j + r) % 15] / 128f;
            row.CopyTo(x, r * Cols);
        }
        var imp = new float[Cols];
        for (int j = 0; j < Cols; j++) imp[j] = MathF.Exp((float)(rng.NextDouble() * 6 - 3)); // importances over 2.5 decades
        Array.Clear(imp, 96, 40); // columns never activated: a whole 32-block of zero importance (0/0 scales in ggml too)
        return (x, imp);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Rows_are_byte_identical_to_ggml_quantize_chunk(GgmlType type, bool withImatrix)
    {
        var (x, imp) = Data(1000 + (int)type);
        var expected = GgmlQuantizer.Quantize(type, x, Cols, withImatrix ? imp : null);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, Cols), bs = GgmlTypeInfo.BlockBytes(type);
        var actual = new byte[expected.Length];
        for (int r = 0; r < Rows; r++)
        {
            var src = x.AsSpan(r * Cols, Cols);
            var dst = actual.AsSpan(r * rowBytes, rowBytes);
            if (withImatrix) Quantize.Row(type, src, dst, imp);
            else Quantize.Row(type, src, dst);
        }
        int blocks = expected.Length / bs, differing = 0, first = -1;
        for (int b = 0; b < blocks; b++)
            if (!actual.AsSpan(b * bs, bs).SequenceEqual(expected.AsSpan(b * bs, bs)))
            {
                differing++;
                if (first < 0) first = b;
            }
        output.WriteLine($"{type} {(withImatrix ? "with" : "without")} imatrix: {differing} of {blocks} blocks differ" + (first >= 0 ? $" (first: block {first}, Cria {Convert.ToHexString(actual, first * bs, bs)}, ggml {Convert.ToHexString(expected, first * bs, bs)})" : ""));
        Assert.Equal(0, differing);
    }
}
