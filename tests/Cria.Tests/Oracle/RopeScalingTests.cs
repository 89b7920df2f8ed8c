using Cria.Inference;
using Cria.Kernels;
using Cria.Models;
using LLama;
using LLama.Common;
using LLama.Native;
using Xunit;
using Xunit.Abstractions;
using NativeRopeScaling = LLama.Native.RopeScalingType;

namespace Cria.Tests.Oracle;

/// <summary>
/// Issue 6: RoPE scaling beyond the training context against llama.cpp — YaRN (ggml's ramp over the correction dims
/// and its mscale) and linear, set from the command-line overrides and from GGUF metadata. Tolerance 2e-4 on
/// logits of about ±10 (observed 6e-5 for YaRN, 3e-5 for linear; cos/sin of large angles in float
/// differ by an ulp or two between libm and .NET).
/// </summary>
public class RopeScalingTests(ITestOutputHelper output)
{
    const int TrainCtx = 64, Positions = 200;

    static RandomModelSpec Spec(IReadOnlyList<(string, object)>? meta = null) => new()
    {
        Dim = 128, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 256, VocabSize = 300, ContextLength = TrainCtx, Seed = 77,
        ExtraMetadata = meta,
    };

    float MaxDiff(string path, ContextOptions cria, Action<ModelParams> cpp)
    {
        LlamaCpp.EnsureLoaded();
        var rng = new Random(3);
        var tokens = Enumerable.Range(0, Positions).Select(i => i == 0 ? 1 : rng.Next(3, 300)).ToArray();
        using var m = LlamaModel.Open(path);
        using var ctx = new InferenceContext(m, cria with { ContextSize = 256, MicroBatch = 256, Threads = 2, Kv = KvFormat.F32 });
        var b = new Batch(Positions);
        for (int i = 0; i < Positions; i++) b.Add(tokens[i], i, 0, true);
        ctx.Decode(b);

        var p = new ModelParams(path)
        {
            ContextSize = 256, GpuLayerCount = 0, Threads = 2, BatchThreads = 2, BatchSize = 256, UBatchSize = 256,
            LoadMode = LLamaLoadMode.MemoryMap, TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
        };
        cpp(p);
        using var w = LLamaWeights.LoadFromFile(p);
        using var lc = w.CreateContext(p);
        var lb = new LLamaBatch();
        for (int i = 0; i < Positions; i++) lb.Add((LLamaToken)tokens[i], i, LLamaSeqId.Zero, true);
        Assert.Equal(DecodeResult.Ok, lc.Decode(lb));
        float max = 0;
        for (int i = 0; i < Positions; i++)
        {
            var a = ctx.Logits(i); var e = lc.NativeHandle.GetLogitsIth(i);
            for (int j = 0; j < a.Length; j++) max = Math.Max(max, Math.Abs(a[j] - e[j]));
        }
        output.WriteLine($"{Path.GetFileName(path)}: max |Δ logit| over {Positions} positions (trained context {TrainCtx}) = {max:E2} ({ctx.Config.RopeScaling}, freq scale {ctx.Config.RopeFreqScale})");
        return max;
    }

    [Fact]
    public void YarnFromTheCommandLineMatchesLlamaCpp()
    {
        var path = LogitsAgreementTests.ModelFile("rope-plain", Spec());
        float d = MaxDiff(path, new ContextOptions { Rope = new RopeOverrides { Scaling = Models.RopeScalingType.Yarn, Scale = 4, YarnOrigCtx = TrainCtx } },
            p => { p.YarnScalingType = NativeRopeScaling.Yarn; p.RopeFrequencyScale = 0.25f; p.YarnOriginalContext = TrainCtx; });
        Assert.True(d < 2e-4f, $"max |Δ| {d}");
    }

    [Fact]
    public void YarnFromGgufMetadataMatchesLlamaCpp()
    {
        var path = LogitsAgreementTests.ModelFile("rope-yarn-meta", Spec([
            ("llama.rope.scaling.type", "yarn"), ("llama.rope.scaling.factor", 4f), ("llama.rope.scaling.original_context_length", (uint)TrainCtx)]));
        float d = MaxDiff(path, new ContextOptions(), _ => { });
        Assert.True(d < 2e-4f, $"max |Δ| {d}");
    }

    [Fact]
    public void LinearAndNtkBaseOverridesMatchLlamaCpp()
    {
        var path = LogitsAgreementTests.ModelFile("rope-plain", Spec());
        float d = MaxDiff(path, new ContextOptions { Rope = new RopeOverrides { Scaling = Models.RopeScalingType.Linear, Scale = 2, FreqBase = 40000 } },
            p => { p.YarnScalingType = NativeRopeScaling.Linear; p.RopeFrequencyScale = 0.5f; p.RopeFrequencyBase = 40000; });
        Assert.True(d < 2e-4f, $"max |Δ| {d}");
    }

    [Fact]
    public void YarnCacheReducesToPlainRopeWithoutExtrapolationAndFollowsGgmlCorrDims()
    {
        var a = new float[32]; var b = new float[32];
        Ops.RopeCache(300, 32, 10000f, 0.25f, null, a);
        Ops.RopeCache(300, 32, 10000f, 0.25f, null, 0f, 1f, 3f, 9f, b);
        Assert.Equal(a, b);
        // ggml_rope_yarn_corr_dims(32, 64, 10000, 32, 1): floor(32·ln(64/(32·2π))/(2·ln 10000)) … ceil(32·ln(64/(1·2π))/(2·ln 10000)), clamped.
        var (low, high) = ModelConfig.YarnCorrDims(32, 64, 10000f, 32f, 1f);
        Assert.Equal(0f, low);
        Assert.Equal(MathF.Ceiling(32 * MathF.Log(64 / (2 * MathF.PI)) / (2 * MathF.Log(10000f))), high);
    }
}
