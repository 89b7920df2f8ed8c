using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using LLama.Native;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Inference;

/// <summary>
/// llama.cpp's samplers as the oracle: the chain llama.cpp's common_sampler_init builds for the same settings
/// (logit bias, penalties, DRY, top-nσ, top-k, typical, top-p, min-p, XTC, temperature/dynamic temperature; or
/// temperature and mirostat), applied through LLamaSharp to the same logits, must leave the same candidates with the
/// same probabilities as Cria's <see cref="Sampler.Distribution"/>.
/// </summary>
public class SamplerOracleTests(ITestOutputHelper output)
{
    const int Vocab = 4096;
    const double Tolerance = 2e-6; // absolute, on probabilities (float softmaxes on both sides; dynamic temperature reaches ~8e-7)

    static float[] Logits(Random r, int n = Vocab, float spread = 8f)
    {
        var l = new float[n];
        for (int i = 0; i < n; i++) l[i] = (float)((r.NextDouble() - 0.5) * spread);
        // a few clear favourites, so that top-p, typical, XTC and mirostat have a head to cut
        for (int k = 0; k < 6; k++) l[r.Next(n)] += (float)(r.NextDouble() * 6 + 2);
        return l;
    }

    /// <summary>Logits of a Zipf-like distribution (p ∝ rank^−s, ranks shuffled, a little noise), the shape
    /// mirostat's estimate assumes.</summary>
    static float[] Zipf(Random r, float s, int n = Vocab)
    {
        var rank = Enumerable.Range(1, n).OrderBy(_ => r.Next()).ToArray();
        return rank.Select(k => -s * MathF.Log(k) + (float)(r.NextDouble() * 0.2)).ToArray();
    }

    /// <summary>The chain common_sampler_init builds for these settings, without the final pick.</summary>
    static SafeLLamaSamplerChainHandle LlamaChain(SamplerOptions o, int vocab, SafeLlamaModelHandle? model = null)
    {
        var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        if (o.LogitBias is { Count: > 0 } bias)
        {
            var b = bias.Select(kv => new LLamaLogitBias { Token = (LLamaToken)kv.Key, Bias = kv.Value }).ToArray();
            chain.AddLogitBias(vocab, b);
        }
        if (o.Mirostat != 0)
        {
            chain.AddTemperature(o.Temperature);
            if (o.Mirostat == 1) chain.AddMirostat1Sampler(vocab, 7, o.MirostatTau, o.MirostatEta, 100);
            else chain.AddMirostat2Sampler(7, o.MirostatTau, o.MirostatEta);
            return chain;
        }
        chain.AddPenalties(o.PenaltyLastN, o.RepeatPenalty, o.FrequencyPenalty, o.PresencePenalty);
        if (o.DryOn) chain.AddDry(model!, o.DrySequenceBreakers.ToArray(), o.DryMultiplier, o.DryBase, o.DryAllowedLength, o.DryPenaltyLastN);
        chain.AddTopNSigma(o.TopNSigma);
        chain.AddTopK(o.TopK);
        chain.AddTypical(o.TypicalP, o.MinKeep);
        chain.AddTopP(o.TopP, o.MinKeep);
        chain.AddMinP(o.MinP, o.MinKeep);
        chain.AddXTC(o.XtcProbability, o.XtcThreshold, o.MinKeep, 7);
        chain.AddDynamicTemperature(o.Temperature, o.DynatempRange, o.DynatempExponent);
        return chain;
    }

    /// <summary>Applies a chain; the candidates it leaves, with the softmax of their logits (and the token a picking
    /// sampler selected, or −1).</summary>
    static (Dictionary<int, double> P, int Selected) Apply(SafeLLamaSamplerChainHandle chain, float[] logits)
    {
        var arr = LLamaTokenDataArray.Create(logits);
        var p = new Dictionary<int, double>();
        int selected;
        using (LLamaTokenDataArrayNative.Create(arr, out var native))
        {
            chain.Apply(ref native);
            var data = native.Data;
            double max = double.NegativeInfinity;
            foreach (var d in data) if (!float.IsNegativeInfinity(d.Logit)) max = Math.Max(max, d.Logit);
            double sum = 0;
            foreach (var d in data) if (!float.IsNegativeInfinity(d.Logit)) sum += Math.Exp(d.Logit - max);
            foreach (var d in data) if (!float.IsNegativeInfinity(d.Logit)) p[(int)d.ID] = Math.Exp(d.Logit - max) / sum;
            selected = native.Selected >= 0 ? (int)data[(int)native.Selected].ID : -1;
        }
        return (p, selected);
    }

    void AssertSame(Dictionary<int, double> theirs, float[] ours, string what)
    {
        var mine = new Dictionary<int, double>();
        for (int i = 0; i < ours.Length; i++) if (ours[i] > 0) mine[i] = ours[i];
        var onlyOurs = mine.Keys.Except(theirs.Keys).ToList();
        var onlyTheirs = theirs.Keys.Except(mine.Keys).ToList();
        Assert.True(onlyOurs.Count == 0 && onlyTheirs.Count == 0,
            $"{what}: {mine.Count} candidates in Cria, {theirs.Count} in llama.cpp; only Cria: [{string.Join(", ", onlyOurs.Take(8))}], only llama.cpp: [{string.Join(", ", onlyTheirs.Take(8))}]");
        double worst = theirs.Max(kv => Math.Abs(kv.Value - mine[kv.Key]));
        Assert.True(worst <= Tolerance, $"{what}: probabilities differ by up to {worst:E2}");
    }

    static readonly SamplerOptions Off = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, PenaltyLastN = 64 };

    public static TheoryData<string> Chains() =>
    [
        "top-k 40", "top-p 0.9", "min-p 0.1", "temperature 0.7", "top-k top-p min-p temperature (llama.cpp's defaults)",
        "typical 0.5", "typical 0.95 then top-p 0.8", "top-n-sigma 1", "top-n-sigma 2.5 then top-k 20",
        "XTC always, threshold 0.05", "XTC with min-keep 4000", "dynamic temperature 0.5", "dynamic temperature exponent 2, range over T",
        "logit bias", "penalties", "min-keep 5 with top-p 0.01", "everything",
    ];

    static SamplerOptions Settings(string name) => name switch
    {
        "top-k 40" => Off with { TopK = 40 },
        "top-p 0.9" => Off with { TopP = 0.9f },
        "min-p 0.1" => Off with { MinP = 0.1f },
        "temperature 0.7" => Off with { Temperature = 0.7f },
        "top-k top-p min-p temperature (llama.cpp's defaults)" => new SamplerOptions(),
        "typical 0.5" => Off with { TypicalP = 0.5f },
        "typical 0.95 then top-p 0.8" => Off with { TypicalP = 0.95f, TopP = 0.8f },
        "top-n-sigma 1" => Off with { TopNSigma = 1f },
        "top-n-sigma 2.5 then top-k 20" => Off with { TopNSigma = 2.5f, TopK = 20 },
        "XTC always, threshold 0.05" => Off with { XtcProbability = 1f, XtcThreshold = 0.05f, TopK = 300 },
        "XTC with min-keep 4000" => Off with { XtcProbability = 1f, XtcThreshold = 0.05f, MinKeep = 4000 },
        "dynamic temperature 0.5" => Off with { Temperature = 0.8f, DynatempRange = 0.5f, TopK = 100 },
        "dynamic temperature exponent 2, range over T" => Off with { Temperature = 0.5f, DynatempRange = 0.9f, DynatempExponent = 2f, TopP = 0.95f },
        "logit bias" => Off with { LogitBias = new Dictionary<int, float> { [3] = 9f, [17] = float.NegativeInfinity, [400] = -2.5f, [4095] = 30f } },
        "penalties" => Off with { RepeatPenalty = 1.3f, FrequencyPenalty = 0.4f, PresencePenalty = 0.2f, PenaltyLastN = 16, TopK = 50 },
        "min-keep 5 with top-p 0.01" => Off with { TopP = 0.01f, MinKeep = 5 },
        "everything" => new SamplerOptions
        {
            Temperature = 0.9f, TopK = 200, TopP = 0.97f, MinP = 0.01f, TypicalP = 0.98f, TopNSigma = 3f, RepeatPenalty = 1.1f,
            FrequencyPenalty = 0.1f, PenaltyLastN = 32, LogitBias = new Dictionary<int, float> { [5] = 4f }, XtcProbability = 1f,
            XtcThreshold = 0.02f, DynatempRange = 0.3f, MinKeep = 2,
        },
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Chains))]
    public void Candidates_and_probabilities_agree_with_llama_cpp(string name)
    {
        LlamaCpp.EnsureLoaded();
        var o = Settings(name);
        var rng = new Random(name.Length * 31 + 7);
        var ours = new Sampler(Vocab, o);
        using var chain = LlamaChain(o, Vocab);
        var probs = new float[Vocab];
        int sizes = 0;
        for (int step = 0; step < 12; step++)
        {
            var logits = Logits(rng);
            var (theirs, _) = Apply(chain, logits);
            ours.Distribution(logits, probs);
            AssertSame(theirs, probs, $"{name}, step {step}");
            sizes += theirs.Count;
            // both remember the same history (penalties); take one of the candidates
            int token = theirs.Keys.ElementAt(rng.Next(theirs.Count));
            chain.Accept((LLamaToken)token);
            ours.Accept(token);
        }
        output.WriteLine($"{name}: {sizes / 12.0:F1} candidates per step on average");
    }

    [Theory]
    [InlineData(1, 5f, 0.1f, 1f)]
    [InlineData(1, 3f, 0.3f, 0.8f)]
    [InlineData(2, 5f, 0.1f, 1f)]
    [InlineData(2, 2f, 0.5f, 0.7f)]
    public void Mirostat_follows_llama_cpp_token_by_token(int version, float tau, float eta, float temperature)
    {
        LlamaCpp.EnsureLoaded();
        var o = Off with { Mirostat = version, MirostatTau = tau, MirostatEta = eta, Temperature = temperature };
        var rng = new Random(version * 100 + (int)(tau * 10));
        var ours = new Sampler(Vocab, o);
        using var chain = LlamaChain(o, Vocab);
        var probs = new float[Vocab];
        var sizes = new List<int>();
        for (int step = 0; step < 40; step++)
        {
            var logits = Zipf(rng, 0.9f + step % 5 * 0.15f);
            var (theirs, selected) = Apply(chain, logits);
            ours.Distribution(logits, probs);
            AssertSame(theirs, probs, $"mirostat {version}, step {step} (μ {ours.MirostatMu:F3})");
            Assert.True(selected >= 0 && probs[selected] > 0);
            ours.Chosen(selected); // llama.cpp drew it with its own generator: μ learns from the same token
            sizes.Add(theirs.Count);
        }
        output.WriteLine($"mirostat {version} τ {tau} η {eta}: candidates per step {string.Join(" ", sizes)}; final μ {ours.MirostatMu:F3}");
        Assert.True(sizes.Distinct().Count() > 3, "the truncation should move with μ");
    }

    public static TheoryData<string, float, float, int, int, int> DrySettings() => new()
    {
        { "bundled", 0.8f, 1.75f, 2, -1, 0 },   // llama.cpp's suggested settings, whole context, default breakers
        { "bundled", 0.8f, 1.75f, 2, 64, 0 },   // a window shorter than the history
        { "bundled", 1.5f, 2.0f, 0, -1, 1 },    // allowed length 0, other breakers (multi-token ones)
        { "bundled", 0.5f, 1.1f, 4, 200, 2 },   // no breaker in the text
        { "llama3", 0.8f, 1.75f, 2, -1, 3 },    // byte-level BPE (no space prefix): multi-token breakers match
    };

    // ":the" — a tail is tokenized as llama.cpp does it, with SPM's space prefix, so ":" then " the" matches it.
    static readonly string[][] BreakerSets =
    [
        SamplerOptions.DefaultDryBreakers.ToArray(), ["the", " sat", "\n\n", "mat.", ":the"], ["zzzz"], ["\n", "the cat", ": the dog", "hat."],
    ];

    /// <summary>DRY on the bundled model's vocabulary: after each token of a history full of repeats, the logits Cria's
    /// DRY leaves equal those of llama.cpp's (its breakers processed from the same vocabulary).</summary>
    [Theory]
    [MemberData(nameof(DrySettings))]
    public void Dry_agrees_with_llama_cpp(string vocabulary, float multiplier, float @base, int allowed, int lastN, int breakers)
    {
        var path = vocabulary == "bundled" ? TestPaths.Bundled() : ModelFamilyTests.FamilyModel(vocabulary);
        using var m = LlamaModel.Open(path);
        using var ll = new LlamaCpp(path, 64);
        var tok = m.Tokenizer;
        int V = tok.VocabSize;
        var o = Off with
        {
            DryMultiplier = multiplier, DryBase = @base, DryAllowedLength = allowed, DryPenaltyLastN = lastN,
            DrySequenceBreakers = BreakerSets[breakers], PenaltyLastN = 0,
        };
        var ours = new Sampler(V, o, new SamplerVocabulary(tok, m.Config.ContextLength));
        using var chain = LlamaChain(o, V, ll.Weights.NativeHandle);
        var text = "The cat sat on the mat. The cat sat on the mat: the cat sat on the hat.\n\"The cat\" sat on the mat. "
                 + "Then the dog sat *on* the mat, and the cat sat on the mat. The cat sat on the";
        var history = tok.Encode(text, addBos: true).ToList();
        var rng = new Random(breakers * 10 + allowed);
        for (int i = 0; i < 60; i++) history.Add(history[rng.Next(history.Count)]); // noise
        history.AddRange(tok.Encode("the cat sat on the mat. The cat sat on", addBos: false));
        var baseLogits = Logits(rng, V, 4f);
        var changed = new float[V];
        int penalisedSteps = 0, penalisedTokens = 0;
        foreach (int t in history)
        {
            chain.Accept((LLamaToken)t);
            ours.Accept(t);
            var arr = LLamaTokenDataArray.Create(baseLogits);
            var theirs = new float[V];
            using (LLamaTokenDataArrayNative.Create(arr, out var native))
            {
                chain.Apply(ref native);
                foreach (var d in native.Data) theirs[(int)d.ID] = d.Logit;
            }
            ours.ChangedLogits(baseLogits, changed);
            int penalised = 0;
            for (int v = 0; v < V; v++)
            {
                Assert.True(Math.Abs(theirs[v] - changed[v]) <= 1e-4f * Math.Max(1f, Math.Abs(theirs[v])),
                    $"after {penalisedSteps} steps: token {v} ({tok.TokenText(v)}) llama.cpp {theirs[v]}, Cria {changed[v]} (unchanged {baseLogits[v]})");
                if (changed[v] != baseLogits[v]) penalised++;
            }
            if (penalised > 0) { penalisedSteps++; penalisedTokens += penalised; }
        }
        output.WriteLine($"{vocabulary}: DRY ×{multiplier} base {@base} allowed {allowed} last {lastN}, breakers [{string.Join(", ", BreakerSets[breakers].Select(b => b.Replace("\n", "\\n")))}]: "
                         + $"{history.Count} tokens, {penalisedSteps} steps with penalties, {penalisedTokens} penalised logits");
        Assert.True(penalisedSteps > 5, "the history repeats: DRY should penalise");
    }
}
