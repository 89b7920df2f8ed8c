using Xunit;

namespace Cria.Tests.Inference;

/// <summary>Pearson's chi-square of sampled counts against exact probabilities (the sampling tests of speculative
/// decoding, RAPID and the server).</summary>
static class ChiSquare
{
    /// <summary>The chi-square value exceeded with probability 1e-6 (Wilson–Hilferty; z = 4.753), so a correct sampler
    /// fails one run in a million; seeds are fixed, so it is the same run every time.</summary>
    public static double Critical(int df)
    {
        double a = 2.0 / (9 * df);
        return df * Math.Pow(1 - a + 4.753 * Math.Sqrt(a), 3);
    }

    /// <summary>Asserts that <paramref name="counts"/> over <paramref name="n"/> draws follow <paramref name="exact"/>:
    /// χ² over the cells, those expected fewer than 5 times pooled into one, below <see cref="Critical"/>.</summary>
    public static void AssertFollows<TKey>(IReadOnlyDictionary<TKey, double> exact, IReadOnlyDictionary<TKey, int> counts, int n) where TKey : notnull
    {
        double chi = 0, poolE = 0, poolO = 0;
        int cells = 0;
        foreach (var (key, pr) in exact)
        {
            double e = n * pr, o = counts.GetValueOrDefault(key);
            if (e < 5) { poolE += e; poolO += o; continue; }
            chi += (o - e) * (o - e) / e; cells++;
        }
        if (poolE > 0) { chi += (poolO - poolE) * (poolO - poolE) / poolE; cells++; }
        double critical = Critical(cells - 1);
        Assert.True(chi < critical, $"χ² = {chi:F1} over {cells} cells (critical {critical:F1})");
    }
}
