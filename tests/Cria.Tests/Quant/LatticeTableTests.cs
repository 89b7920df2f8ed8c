using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary>
/// The lattice quantizers' search tables (<see cref="LatticeTable"/>) and their vector neighbour searches. The tables are
/// ggml's kmap/kneighbors (RowQuantizerOracleTests checks the bytes they lead to); here: every grid point maps to
/// itself, every listed neighbour of an off-grid key lies at one of the n smallest distances, and the eight-lane
/// searches (in every width this machine has) choose the scalar references' point for every key, at random values,
/// weights and scales.
/// </summary>
[Collection("VectorSearch")]
public sealed class LatticeTableTests(ITestOutputHelper output)
{
    public static TheoryData<GgmlType> Types() => [GgmlType.IQ2_XXS, GgmlType.IQ2_XS, GgmlType.IQ2_S, GgmlType.IQ3_XXS, GgmlType.IQ3_S, GgmlType.IQ1_S];

    [Theory]
    [MemberData(nameof(Types))]
    public unsafe void Vector_neighbour_search_picks_the_scalar_references_point(GgmlType type)
    {
        var t = LatticeTable.For(type);
        int dim = t.Dim, keys = 0, listed = 0, longest = 0;
        var rng = new Random((int)type);
        var x = new float[dim]; var w = new float[dim];
        var la = new sbyte[dim]; var lb = new sbyte[dim];
        float[] xp = [-1 + 0.125f, 0.125f, 1 + 0.125f];
        for (int key = 0; key < t.Map.Length; key++)
        {
            int m = t.Map[key];
            if (m >= 0)
            {
                Assert.True(t.Key(Levels(t, m)) == key, $"{type}: grid point {m} does not map back to its key");
                continue;
            }
            if (m == int.MinValue) continue;
            keys++;
            int start = -m - 1, count = t.Neighbours[start];
            listed += count; longest = Math.Max(longest, count);
            // the listed points are those at the NearestDistances smallest distances from the key's point
            var d2 = new int[t.GridSize];
            for (int g = 0; g < t.GridSize; g++)
                for (int i = 0; i < dim; i++) { int d = t.Points[g * dim + i] - (2 * ((key >> (t.Bits * i)) & ((1 << t.Bits) - 1)) + 1); d2[g] += d * d; }
            var nearest = d2.Distinct().Order().Take(t.NearestDistances).ToHashSet();
            var expected = Enumerable.Range(0, t.GridSize).Where(g => nearest.Contains(d2[g])).OrderBy(g => d2[g]).ThenBy(g => g);
            Assert.Equal(expected, t.Neighbours.AsSpan(start + 1, count).ToArray().Select(v => (int)v));
            for (int trial = 0; trial < 2; trial++)
            {
                for (int i = 0; i < dim; i++) { x[i] = (float)rng.NextDouble() * 6; w[i] = trial == 1 && i == 0 ? 0 : (float)rng.NextDouble(); }
                float scale = 0.5f + (float)rng.NextDouble();
                foreach (var lanes in QuantizeSearchTests.VectorLanes())
                {
                    int a = t.BestNeighbour(key, x, w, scale, la), b = 0;
                    QuantizeSearchTests.With(lanes, () => { fixed (float* xq = x) fixed (float* wq = w) fixed (sbyte* lq = lb) b = t.BestNeighbourFast(key, xq, wq, scale, lq); });
                    Assert.True(a == b && la.AsSpan().SequenceEqual(lb), $"{type} key {key}, {lanes}: scalar picks {a}, vector {b}");
                    if (dim != 8) continue;
                    a = t.BestNeighbourIQ1Scalar(key, x, w, scale, xp, la);
                    QuantizeSearchTests.With(lanes, () => { fixed (float* xq = x) fixed (float* wq = w) fixed (sbyte* lq = lb) b = t.BestNeighbourIQ1(key, xq, wq, scale, xp[0], xp[1], xp[2], lq); });
                    Assert.True(a == b && la.AsSpan().SequenceEqual(lb), $"{type} key {key}, {lanes}: scalar IQ1 search picks {a}, vector {b}");
                }
            }
        }
        output.WriteLine($"{type}: {t.GridSize} points, {keys} off-grid keys, {listed / (double)keys:F1} neighbours listed on average, at most {longest}");
    }

    static sbyte[] Levels(LatticeTable t, int g) => Enumerable.Range(0, t.Dim).Select(i => (sbyte)((t.Points[g * t.Dim + i] - 1) / 2)).ToArray();
}
