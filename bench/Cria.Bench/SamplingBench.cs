using System.Diagnostics;
using Cria.Inference;
using Cria.Models;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Bench;

/// <summary>
/// The sampler chain's own cost per token, side by side with llama.cpp's samplers, on one vocabulary:
///   Cria.Bench sampling (--model FILE | --hf-tokenizer DIR) [--steps 200] [--rounds 5]
/// For each setting, the same rows of logits (seeded, Zipf-like: a shuffled rank^−1.1 with noise) are sampled in
/// turn, and each sampled token is accepted (penalties, DRY and mirostat keep state): Cria's <see cref="Sampler"/>
/// (Sample + Accept) against the chain llama.cpp's common_sampler_init builds for the same settings, ending with its
/// dist sampler (llama_sampler_apply on a fresh candidate array + llama_sampler_accept, through LLamaSharp 0.30.0).
/// Every setting runs twice on both before any is timed (JIT tiering); then engines alternate each round after a
/// warm-up round; prints the median microseconds per token and the ratio.
/// No model is run: this is the sampler alone.
/// </summary>
static class SamplingBench
{
    static readonly (string Name, SamplerOptions Options)[] Settings =
    [
        ("llama.cpp defaults", new SamplerOptions()),
        ("temperature only", new SamplerOptions { TopK = 0, TopP = 1, MinP = 0, Temperature = 1 }), // OpenAI's defaults
        ("top-p 0.95 (no top-k)", new SamplerOptions { TopK = 0, MinP = 0 }),
        ("min-p 0.05 (no top-k)", new SamplerOptions { TopK = 0, TopP = 1 }),
        ("typical 0.9", new SamplerOptions { TypicalP = 0.9f }),
        ("top-nσ 1", new SamplerOptions { TopNSigma = 1f }),
        ("XTC 0.5 / 0.1", new SamplerOptions { XtcProbability = 0.5f }),
        ("DRY 0.8 + penalties", new SamplerOptions { DryMultiplier = 0.8f, RepeatPenalty = 1.1f }),
        ("dynatemp 0.5", new SamplerOptions { DynatempRange = 0.5f }),
        ("mirostat 2", new SamplerOptions { Mirostat = 2 }),
        ("mirostat 1", new SamplerOptions { Mirostat = 1 }),
    ];

    public static int Run(string[] args)
    {
        var (model, steps, rounds) = GrammarBench.VocabularyArgs(args, steps: 200);
        using var m = LlamaModel.Open(model);
        int V = m.Tokenizer.VocabSize;
        var vocabulary = new SamplerVocabulary(m.Tokenizer, 4096);
        var rng = new Random(3);
        var rows = new float[16][];
        for (int r = 0; r < rows.Length; r++)
        {
            var rank = Enumerable.Range(1, V).OrderBy(_ => rng.Next()).ToArray();
            rows[r] = rank.Select(k => -1.1f * MathF.Log(k) + (float)(rng.NextDouble() * 0.5)).ToArray();
        }
        LlamaEngine.EnsureLoaded();
        using var weights = LLamaWeights.LoadFromFile(new ModelParams(model) { ContextSize = 64, GpuLayerCount = 0 });
        Console.WriteLine($"{Path.GetFileName(model)}: vocabulary {V:N0}, {steps} tokens per run, {rounds} rounds");
        Console.WriteLine($"{"setting",-24} {"Cria µs/token",14} {"llama.cpp µs/token",19} {"llama.cpp / Cria",17}");
        var data = new LLamaTokenData[V];
        for (int pass = 0; pass < 2; pass++)
            foreach (var (_, o) in Settings) // warm-up: every setting twice, so the JIT's tiering is done before timing
            {
                TimeCria(o, V, vocabulary, rows, steps);
                TimeLlama(o, V, weights, rows, steps, data);
            }
        foreach (var (name, o) in Settings)
        {
            var cria = new List<double>();
            var llama = new List<double>();
            for (int r = 0; r < rounds + 1; r++)
                for (int order = 0; order < 2; order++)
                {
                    bool criaTurn = (order + r) % 2 == 0;
                    double ms = criaTurn ? TimeCria(o, V, vocabulary, rows, steps) : TimeLlama(o, V, weights, rows, steps, data);
                    if (r > 0) (criaTurn ? cria : llama).Add(ms * 1000 / steps);
                }
            double mc = GrammarBench.Median(cria), ml = GrammarBench.Median(llama);
            Console.WriteLine($"{name,-24} {mc,14:F1} {ml,19:F1} {ml / mc,17:F2}");
        }
        return 0;
    }

    static double TimeCria(SamplerOptions o, int vocab, SamplerVocabulary v, float[][] rows, int steps)
    {
        var s = new Sampler(vocab, o with { Seed = 1 }, v);
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) s.Accept(s.Sample(rows[i % rows.Length]));
        return sw.Elapsed.TotalMilliseconds;
    }

    /// <summary>The chain common_sampler_init builds, with its dist sampler last.</summary>
    static double TimeLlama(SamplerOptions o, int vocab, LLamaWeights weights, float[][] rows, int steps, LLamaTokenData[] data)
    {
        using var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        if (o.Mirostat != 0)
        {
            chain.AddTemperature(o.Temperature);
            if (o.Mirostat == 1) chain.AddMirostat1Sampler(vocab, 1, o.MirostatTau, o.MirostatEta, 100);
            else chain.AddMirostat2Sampler(1, o.MirostatTau, o.MirostatEta);
        }
        else
        {
            chain.AddPenalties(o.PenaltyLastN, o.RepeatPenalty, o.FrequencyPenalty, o.PresencePenalty);
            if (o.DryOn) chain.AddDry(weights.NativeHandle, o.DrySequenceBreakers.ToArray(), o.DryMultiplier, o.DryBase, o.DryAllowedLength, o.DryPenaltyLastN);
            chain.AddTopNSigma(o.TopNSigma);
            chain.AddTopK(o.TopK);
            chain.AddTypical(o.TypicalP, o.MinKeep);
            chain.AddTopP(o.TopP, o.MinKeep);
            chain.AddMinP(o.MinP, o.MinKeep);
            chain.AddXTC(o.XtcProbability, o.XtcThreshold, o.MinKeep, 1);
            chain.AddDynamicTemperature(o.Temperature, o.DynatempRange, o.DynatempExponent);
            chain.AddDistributionSampler(1);
        }
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            var arr = LLamaTokenDataArray.Create(rows[i % rows.Length], data);
            int token;
            using (LLamaTokenDataArrayNative.Create(arr, out var native))
            {
                chain.Apply(ref native);
                token = (int)native.Data[(int)native.Selected].ID;
            }
            chain.Accept((LLamaToken)token);
        }
        return sw.Elapsed.TotalMilliseconds;
    }
}
