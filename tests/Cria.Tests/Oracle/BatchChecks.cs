using Cria.Inference;
using Cria.Models;
using Xunit;

namespace Cria.Tests.Oracle;

static class BatchChecks
{
    /// <summary>Three sequences decoded together — 20-token prompts (<paramref name="prompt"/>(1…3)), then one token each
    /// for 8 steps — give every row the logits it gets when decoded alone, bit for bit.</summary>
    public static void RowsMatchAlone(string path, Func<int, int[]> prompt)
    {
        using var model = LlamaModel.Open(path);
        using var together = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 2 });
        using var alone = new InferenceContext(model, new ContextOptions { ContextSize = 256, Threads = 2 });
        var prompts = new[] { prompt(1), prompt(2), prompt(3) };
        var batch = new Batch(64);
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < 20; i++) batch.Add(prompts[s][i], i, s, true);
        together.Decode(batch);
        for (int s = 0; s < 3; s++)
        {
            alone.Cache.Clear();
            var one = new Batch(20);
            for (int i = 0; i < 20; i++) one.Add(prompts[s][i], i, 0, true);
            alone.Decode(one);
            for (int i = 0; i < 20; i++)
                Assert.True(alone.Logits(i).SequenceEqual(together.Logits(s * 20 + i)), $"sequence {s} position {i}");
        }
        // Decode steps: the three sequences' next tokens together, against sequence 2 alone (still in `alone`).
        var next = new[] { 7, 7, 7 };
        for (int step = 0; step < 8; step++)
        {
            batch.Clear();
            for (int s = 0; s < 3; s++) batch.Add(next[s], 20 + step, s, true);
            together.Decode(batch);
            var single = new Batch(1);
            single.Add(next[2], 20 + step, 0, true);
            alone.Decode(single);
            Assert.True(alone.Logits(0).SequenceEqual(together.Logits(2)), $"decode step {step}");
            for (int s = 0; s < 3; s++) next[s] = Sampler.ArgMax(together.Logits(s));
        }
    }
}
