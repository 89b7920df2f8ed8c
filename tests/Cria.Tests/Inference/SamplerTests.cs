using Cria.Inference;
using Xunit;

namespace Cria.Tests.Inference;

public class SamplerTests
{
    static float[] Logits(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 8 - 4)).ToArray();
    }

    [Fact]
    public void GreedyPicksArgmaxAndLowestIdOnTies()
    {
        var s = new Sampler(5, SamplerOptions.Greedy);
        Assert.Equal(2, s.Sample([0f, 1f, 3f, 3f, -1f]));
    }

    [Fact]
    public void SameSeedRepeatsDifferentSeedDiffers()
    {
        var l = Logits(1000, 1);
        var o = new SamplerOptions { Temperature = 1.5f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 42 };
        int[] Run(SamplerOptions opt) { var s = new Sampler(1000, opt); return Enumerable.Range(0, 50).Select(_ => s.Sample(l)).ToArray(); }
        Assert.Equal(Run(o), Run(o));
        Assert.NotEqual(Run(o), Run(o with { Seed = 43 }));
    }

    [Fact]
    public void TopKOneIsGreedyAndTopKRestrictsCandidates()
    {
        var l = Logits(500, 2);
        int best = Sampler.ArgMax(l);
        var s1 = new Sampler(500, new SamplerOptions { Temperature = 5f, TopK = 1, Seed = 1 });
        for (int i = 0; i < 20; i++) Assert.Equal(best, s1.Sample(l));
        var top5 = l.Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(5).Select(x => x.i).ToHashSet();
        var s5 = new Sampler(500, new SamplerOptions { Temperature = 5f, TopK = 5, TopP = 1f, MinP = 0f, Seed = 1 });
        var seen = new HashSet<int>();
        for (int i = 0; i < 300; i++) seen.Add(s5.Sample(l));
        Assert.Subset(top5, seen);
        Assert.True(seen.Count >= 4, "with temperature 5 most of the top 5 should appear");
    }

    [Fact]
    public void TopPAndMinPCutTheTail()
    {
        // probabilities ≈ 0.6, 0.3, 0.1·(rest): top-p 0.85 keeps the first two.
        float[] l = [MathF.Log(0.6f), MathF.Log(0.3f), MathF.Log(0.05f), MathF.Log(0.05f)];
        var sp = new Sampler(4, new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 0.85f, MinP = 0f, Seed = 3 });
        var seen = Enumerable.Range(0, 400).Select(_ => sp.Sample(l)).ToHashSet();
        Assert.Equal(new HashSet<int> { 0, 1 }, seen);
        // min-p 0.4: keep tokens with p ≥ 0.4 · 0.6 = 0.24 → ids 0 and 1.
        var sm = new Sampler(4, new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0.4f, Seed = 3 });
        Assert.Equal(new HashSet<int> { 0, 1 }, Enumerable.Range(0, 400).Select(_ => sm.Sample(l)).ToHashSet());
    }

    [Fact]
    public void SamplingFrequenciesFollowTheSoftmax()
    {
        float[] l = [0f, MathF.Log(3f)]; // p = 0.25, 0.75
        var s = new Sampler(2, new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 9 });
        int ones = Enumerable.Range(0, 20000).Count(_ => s.Sample(l) == 1);
        Assert.InRange(ones / 20000.0, 0.74, 0.76);
        // temperature 2 flattens: p1 = 3^0.5 / (1 + 3^0.5) ≈ 0.634
        var t = new Sampler(2, new SamplerOptions { Temperature = 2f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 9 });
        ones = Enumerable.Range(0, 20000).Count(_ => t.Sample(l) == 1);
        Assert.InRange(ones / 20000.0, 0.62, 0.65);
    }

    [Fact]
    public void PenaltiesFollowLlamaCppFormula()
    {
        float[] l = [2f, -2f, 1.9f, 0f];
        var s = new Sampler(4, new SamplerOptions { Temperature = 0f, RepeatPenalty = 2f, PenaltyLastN = 8 });
        s.Accept(0); // logit 2 → 1 (divided, positive)
        Assert.Equal(2, s.Sample(l));
        var f = new Sampler(4, new SamplerOptions { Temperature = 0f, FrequencyPenalty = 0.5f, PresencePenalty = 0.5f, PenaltyLastN = 8 });
        f.Accept(2); f.Accept(2); // 1.9 - 2·0.5 - 0.5 = 0.4
        f.Accept(0); // 2 - 0.5 - 0.5 = 1.0
        Assert.Equal(0, f.Sample(l));
        f.Accept(0); f.Accept(0); f.Accept(0); // id 0: 2 - 4·0.5 - 0.5 = -0.5 → id 2 (0.4) wins over id 3 (0)
        Assert.Equal(2, f.Sample(l));
        // The window forgets old tokens.
        var w = new Sampler(4, new SamplerOptions { Temperature = 0f, RepeatPenalty = 100f, PenaltyLastN = 2 });
        w.Accept(0); w.Accept(3); w.Accept(3);
        Assert.Equal(0, w.Sample(l));
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<CriaException>(() => new Sampler(4, new SamplerOptions { TopP = 0f }));
        Assert.Throws<CriaException>(() => new Sampler(4, new SamplerOptions { TopK = -1 }));
        Assert.Throws<CriaException>(() => new Sampler(4, new SamplerOptions { MinP = 2f }));
    }
}
