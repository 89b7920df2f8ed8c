using Cria.Inference;
using Cria.Models;
using Cria.Quantization;
using Cria.Tests.Oracle;
using Cria.Tests.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Quant;

/// <summary><c>cria perplexity --kl-base</c>: KL(base ‖ model) and the paired perplexity change between two files.</summary>
public sealed class KlDivergenceTests(ITestOutputHelper output)
{
    [Fact]
    public void Kl_divergence_of_a_row_matches_the_definition_and_is_zero_for_equal_rows()
    {
        float[] p = [1.5f, -0.25f, 3f, 0f], q = [1f, 0.5f, 2.5f, -1f];
        double[] sp = Softmax(p), sq = Softmax(q);
        double expected = 0;
        for (int i = 0; i < p.Length; i++) expected += sp[i] * Math.Log(sp[i] / sq[i]);
        Assert.Equal(expected, Perplexity.KlDivergence(p, q), 12);
        Assert.Equal(0, Perplexity.KlDivergence(p, p), 12);
        // Adding a constant to every logit is the same distribution.
        Assert.Equal(0, Perplexity.KlDivergence(p, p.Select(x => x + 7f).ToArray()), 6);
        Assert.Throws<CriaException>(() => Perplexity.KlDivergence(p, q.AsSpan(0, 3)));
    }

    [Fact]
    public void Kl_divergence_of_a_quantized_model_agrees_with_llama_cpp_logits_and_is_zero_against_itself()
    {
        string model = TestPaths.Bundled("default.gguf");
        string validPath = Path.Combine(TestPaths.RepoRoot, "data", "valid.txt");
        string text = File.Exists(validPath) ? File.ReadAllText(validPath)[..20000] : string.Concat(Enumerable.Repeat(BundledModelTests.FallbackText, 4));
        string quant = Path.Combine(Path.GetTempPath(), $"cria-kld-{Guid.NewGuid():N}.gguf");
        const int ctx = 64, chunks = 6;
        try
        {
            ModelQuantizer.Run(model, quant, new QuantizeOptions { FileType = LlamaFileType.Q2_K, Threads = 2 });
            using var bm = LlamaModel.Open(model);
            using var qm = LlamaModel.Open(quant);
            using var bc = new InferenceContext(bm, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = 2 });
            using var qc = new InferenceContext(qm, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = 2 });
            var k = Perplexity.CompareTo(bc, qc, bm.Tokenizer, text, ctx, maxChunks: chunks);

            // The two perplexities are the ones Compute gives for each file alone.
            Assert.Equal(Perplexity.Compute(qc, qm.Tokenizer, text, ctx, maxChunks: chunks).Value, k.Model.Value, 10);
            Assert.Equal(Perplexity.Compute(bc, bm.Tokenizer, text, ctx, maxChunks: chunks).Value, k.Base.Value, 10);
            Assert.Equal(Math.Log(k.Model.Value / k.Base.Value), k.MeanNllDiff, 10);

            // The same statistics from llama.cpp's logits of the two files.
            var tokens = bm.Tokenizer.Encode(text, addBos: true);
            var list = Perplexity.Chunks(tokens, ctx, bm.Tokenizer.Bos, bm.Tokenizer.AddBos).Take(chunks).ToList();
            double kld = 0; int count = 0, same = 0;
            using (var cb = new LlamaCpp(model, ctx))
            using (var cq = new LlamaCpp(quant, ctx))
                foreach (var c in list)
                {
                    var lb = cb.AllLogits(c);
                    var lq = cq.AllLogits(c);
                    for (int p = Perplexity.FirstScored(ctx); p < ctx - 1; p++)
                    {
                        kld += Perplexity.KlDivergence(lb[p], lq[p]);
                        if (Array.IndexOf(lb[p], lb[p].Max()) == Array.IndexOf(lq[p], lq[p].Max())) same++;
                        count++;
                    }
                }
            kld /= count;
            output.WriteLine($"Q2_K vs F32, {count} tokens: Cria KLD {k.MeanKld:F6} ± {k.KldStdErr:F6}, llama.cpp logits {kld:F6}; same top {k.SameTopFraction:P2} vs {(double)same / count:P2}; ppl {k.Base.Value:F3} → {k.Model.Value:F3} ({k.PplChangePercent:+0.00;-0.00} % ± {k.PplChangeStdErrPercent:F2} %)");
            Assert.Equal(count, k.Model.ScoredTokens);
            Assert.True(k.MeanKld > 1e-3, $"Q2_K should move the model: KLD {k.MeanKld}");
            Assert.True(Math.Abs(k.MeanKld - kld) < 0.02 * kld, $"KLD {k.MeanKld} vs llama.cpp's logits {kld}");
            Assert.True(Math.Abs(k.SameTopFraction - (double)same / count) <= 0.02, "same-top rates differ");
            Assert.True(k.KldStdErr > 0 && k.KldStdErr < k.MeanKld);

            // A model against itself: no divergence, every top token the same, no perplexity change.
            var self = Perplexity.CompareTo(qc, qc, qm.Tokenizer, text, ctx, maxChunks: 2);
            Assert.Equal(0, self.MeanKld, 12);
            Assert.Equal(1.0, self.SameTopFraction);
            Assert.Equal(0, self.MeanNllDiff, 12);
        }
        finally { File.Delete(quant); }
    }

    static double[] Softmax(float[] x)
    {
        double max = x.Max(), sum = x.Sum(v => Math.Exp(v - max));
        return x.Select(v => Math.Exp(v - max) / sum).ToArray();
    }
}
