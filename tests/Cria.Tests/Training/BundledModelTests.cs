using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>The bundled trained models: llama.cpp loads them, and perplexity from its logits matches Cria's.</summary>
public sealed class BundledModelTests(ITestOutputHelper output)
{
    /// <summary>Public-domain text (KJV, Psalm 23 and Ecclesiastes 3:1–8) used when data/valid.txt is not there.</summary>
    internal const string FallbackText =
        "The LORD is my shepherd; I shall not want. He maketh me to lie down in green pastures: he leadeth me beside the still waters. " +
        "He restoreth my soul: he leadeth me in the paths of righteousness for his name's sake. Yea, though I walk through the valley of the shadow of death, " +
        "I will fear no evil: for thou art with me; thy rod and thy staff they comfort me. Thou preparest a table before me in the presence of mine enemies: " +
        "thou anointest my head with oil; my cup runneth over. Surely goodness and mercy shall follow me all the days of my life: and I will dwell in the house of the LORD for ever.\n" +
        "To every thing there is a season, and a time to every purpose under the heaven: A time to be born, and a time to die; a time to plant, and a time to pluck up that which is planted; " +
        "A time to kill, and a time to heal; a time to break down, and a time to build up; A time to weep, and a time to laugh; a time to mourn, and a time to dance; " +
        "A time to cast away stones, and a time to gather stones together; a time to embrace, and a time to refrain from embracing; " +
        "A time to get, and a time to lose; a time to keep, and a time to cast away; A time to rend, and a time to sew; a time to keep silence, and a time to speak; " +
        "A time to love, and a time to hate; a time of war, and a time of peace.\n";

    [Theory]
    [InlineData("default.gguf", 128, 12)]
    [InlineData("draft.gguf", 128, 12)]
    [InlineData("passkey.gguf", 128, 12)]
    public void Llama_cpp_perplexity_agrees_with_Cria(string file, int ctx, int maxChunks)
    {
        string model = TestPaths.Bundled(file);
        Assert.True(File.Exists(model), $"{model} is missing");
        string validPath = Path.Combine(TestPaths.RepoRoot, "data", "valid.txt");
        string text = File.Exists(validPath) ? File.ReadAllText(validPath) : string.Concat(Enumerable.Repeat(FallbackText, 4));
        using var m = LlamaModel.Open(model);
        using var context = new InferenceContext(m, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = 2 });
        var cria = Perplexity.Compute(context, m.Tokenizer, text, ctx, maxChunks: maxChunks);

        var tokens = m.Tokenizer.Encode(text, addBos: true);
        var chunks = Perplexity.Chunks(tokens, ctx, m.Tokenizer.Bos, m.Tokenizer.AddBos).Take(maxChunks).ToList();
        using var cpp = new LlamaCpp(model, ctx);
        double nll = 0; int count = 0;
        foreach (var c in chunks)
        {
            var logits = cpp.AllLogits(c);
            for (int p = Perplexity.FirstScored(ctx); p < ctx - 1; p++) { nll += Perplexity.Nll(logits[p], c[p + 1]); count++; }
        }
        double llama = Math.Exp(nll / count);
        double rel = Math.Abs(llama - cria.Value) / llama;
        output.WriteLine($"{file} on {(File.Exists(validPath) ? "data/valid.txt" : "the fallback text")}: {chunks.Count} chunks of {ctx}, {count} tokens scored: Cria {cria.Value:F4}, llama.cpp {llama:F4}, relative difference {rel:E2}");
        Assert.Equal(count, cria.ScoredTokens);
        Assert.True(rel < 0.01, $"perplexities differ by {rel:P2}");
    }
}
