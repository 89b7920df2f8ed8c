using Cria.Inference;
using Cria.Models;
using Cria.Tensors;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Oracle;

/// <summary>
/// Cria against llama.cpp on random-weight GGUF files written by Cria's writer: logits at every position within a
/// per-type tolerance, and identical 32-token greedy continuations (a flip is allowed only where llama.cpp's top two
/// logits are closer than the tolerance; the run then continues from llama.cpp's token).
/// </summary>
public class LogitsAgreementTests(ITestOutputHelper output)
{
    /// <summary>
    /// Max |Δlogit| allowed per weight type for logits up to ±10 (scaled up for larger logits).
    /// F32: both engines compute in float; only SIMD summation order differs (observed ≤ 1.5e-5).
    /// F16 / BF16 and block types: Cria rounds activations exactly as ggml does (to F16, BF16, Q8_0, Q8_1 or Q8_K
    /// blocks), so most positions agree to ~1e-6. Where an activation sits on a rounding boundary, float summation
    /// order decides which way it rounds ("a flip"), and that position's logits move by up to one activation
    /// quantization step, and the flip carries on through the KV cache: observed ≤ 0.17 for block types, 0.04 for BF16,
    /// 0.005 for F16. <see cref="SingleTokenLogitsAreExactUpToRareFlips"/> shows the emulation itself is exact.
    /// </summary>
    public static float Tolerance(GgmlType t) => t switch
    {
        GgmlType.F32 => 1e-4f,
        GgmlType.F16 => 1e-2f,
        GgmlType.BF16 => 8e-2f,
        _ => 0.25f,
    };


    static readonly Dictionary<string, string> Files = new();
    static readonly object FilesLock = new();

    public static string ModelFile(string key, RandomModelSpec spec)
    {
        lock (FilesLock)
        {
            if (!Files.TryGetValue(key, out var path))
            {
                path = TestPaths.TempFile(key + ".gguf");
                if (GgmlTypeInfo.IsLattice(spec.WeightType))
                {
                    // The lattice types: an F32 model quantized by ggml itself, so reading is checked apart from Cria's writer.
                    string f32 = TestPaths.TempFile(key + "-f32.gguf");
                    RandomModel.Write(f32, spec with { WeightType = GgmlType.F32 });
                    GgmlQuantizer.QuantizeFile(f32, path, spec.WeightType, spec.Seed);
                    File.Delete(f32);
                }
                else RandomModel.Write(path, spec);
                Files[key] = path;
            }
            return path;
        }
    }

    public static IEnumerable<object[]> Cases()
    {
        yield return ["f32-gqa-untied", GgmlType.F32, false, false];
        yield return ["f32-gqa-tied", GgmlType.F32, true, false];
        yield return ["f32-llama3-rope", GgmlType.F32, false, true];
        yield return ["f16", GgmlType.F16, false, false];
        yield return ["bf16", GgmlType.BF16, false, false];
        yield return ["q8_0", GgmlType.Q8_0, false, false];
        yield return ["q4_0", GgmlType.Q4_0, false, false];
        yield return ["q4_1", GgmlType.Q4_1, false, false];
        yield return ["q5_0", GgmlType.Q5_0, false, false];
        yield return ["q5_1", GgmlType.Q5_1, false, false];
        yield return ["q2_k", GgmlType.Q2_K, false, false];
        yield return ["q3_k", GgmlType.Q3_K, false, false];
        yield return ["q4_k", GgmlType.Q4_K, false, false];
        yield return ["q5_k", GgmlType.Q5_K, false, false];
        yield return ["q6_k", GgmlType.Q6_K, true, false];
        yield return ["iq4_nl", GgmlType.IQ4_NL, false, false];
        yield return ["iq4_xs", GgmlType.IQ4_XS, true, false];
        // Quantized by ggml (GgmlQuantizer.QuantizeFile): every matrix, the embedding and the output head included.
        yield return ["iq2_xxs", GgmlType.IQ2_XXS, false, false];
        yield return ["iq2_xs", GgmlType.IQ2_XS, false, false];
        yield return ["iq2_s", GgmlType.IQ2_S, true, false];
        yield return ["iq3_xxs", GgmlType.IQ3_XXS, false, false];
        yield return ["iq3_s", GgmlType.IQ3_S, false, false];
        yield return ["iq1_s", GgmlType.IQ1_S, false, false];
        yield return ["iq1_m", GgmlType.IQ1_M, false, false];
    }

    static RandomModelSpec Spec(GgmlType type, bool tied, bool llama3) => new()
    {
        // K-quants need rows that are multiples of 256.
        Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 512, VocabSize = 512,
        WeightType = type, TiedEmbeddings = tied, Llama3RopeScaling = llama3, Seed = 7 + (int)type,
        RopeBase = llama3 ? 500000f : 10000f,
    };

    /// <summary>BOS, then n − 1 random non-special tokens below <paramref name="vocab"/>.</summary>
    internal static int[] Prompt(int n, int vocab, int seed)
    {
        var r = new Random(seed);
        var t = new int[n];
        t[0] = 1;
        for (int i = 1; i < n; i++) t[i] = r.Next(3, vocab);
        return t;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void LogitsAtEveryPositionAgree(string name, GgmlType type, bool tied, bool llama3)
    {
        var path = ModelFile(name, Spec(type, tied, llama3));
        var tokens = Prompt(48, 512, 11);
        using var cpp = new LlamaCpp(path);
        using var cria = new CriaRunner(path);
        var a = cpp.AllLogits(tokens);
        var b = cria.AllLogits(tokens);
        float worst = 0, maxAbs = 0;
        int argmaxAgree = 0;
        for (int p = 0; p < tokens.Length; p++)
        {
            Assert.Equal(a[p].Length, b[p].Length);
            for (int i = 0; i < a[p].Length; i++) { worst = Math.Max(worst, Math.Abs(a[p][i] - b[p][i])); maxAbs = Math.Max(maxAbs, Math.Abs(a[p][i])); }
            if (Sampler.ArgMax(a[p]) == Sampler.ArgMax(b[p])) argmaxAgree++;
            if (Environment.GetEnvironmentVariable("CRIA_DIAG") == "1") { float d = 0; for (int i = 0; i < a[p].Length; i++) d = Math.Max(d, Math.Abs(a[p][i] - b[p][i])); output.WriteLine($"pos {p}: {d:E2}"); }
        }
        // Tolerances are relative to the largest logit (tied-embedding models have logits up to ~30).
        float tol = Tolerance(type) * Math.Max(1f, maxAbs / 10f);
        int exact = 0;
        for (int p = 0; p < tokens.Length; p++)
        {
            float d = 0;
            for (int i = 0; i < a[p].Length; i++) d = Math.Max(d, Math.Abs(a[p][i] - b[p][i]));
            if (d <= 1e-4f * Math.Max(1f, maxAbs / 10f)) exact++;
        }
        output.WriteLine($"{name}: max |Δ| = {worst:E3} (tolerance {tol:E2}, max |logit| {maxAbs:F2}), {exact}/{tokens.Length} positions within 1e-4, argmax agrees at {argmaxAgree}/{tokens.Length}");
        Assert.True(argmaxAgree >= tokens.Length - 2, $"{name}: argmax differs at {tokens.Length - argmaxAgree} positions");
        Assert.True(worst <= tol, $"{name}: max |Δlogit| {worst} exceeds {tol}");

    }

    /// <summary>
    /// Activation rounding is emulated, not approximated: 16 one-token sequences (no attention mixing, so a rounding
    /// flip cannot spread) agree with llama.cpp to 1e-4 in at least 12 of 16 cases. Without emulating ggml's
    /// activation quantization every one of them would differ by ~1e-2.
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void SingleTokenLogitsAreExactUpToRareFlips(string name, GgmlType type, bool tied, bool llama3)
    {
        var (exact, worst, _) = OracleChecks.SingleTokenAgreement(ModelFile(name, Spec(type, tied, llama3)));
        output.WriteLine($"{name}: {exact}/16 single-token sequences within 1e-4 (max |Δ| {worst:E2})");
        if (type == GgmlType.F16)
            // F16 files differ by ~1 F16 ulp of the logits in ~half the cases (observed 7/16 exact, max 5e-3): llama.cpp
            // takes another route for some F16 products that we have not pinned down (README, "Agreement with llama.cpp").
            Assert.True(worst <= Tolerance(type), $"{name}: max |Δ| {worst} exceeds {Tolerance(type)}");
        else
            Assert.True(exact >= 12, $"{name}: only {exact}/16 single-token sequences agree with llama.cpp to 1e-4");
    }

    /// <summary>A prompt several attention tiles long (online softmax across tiles), decoded in micro-batches.</summary>
    [Fact]
    public void LongPromptAcrossAttentionTilesAgrees()
    {
        var path = ModelFile("f32-gqa-untied", Spec(GgmlType.F32, false, false));
        var tokens = Prompt(300, 512, 5);
        using var cpp = new LlamaCpp(path, contextSize: 512);
        using var cria = new CriaRunner(path, contextSize: 512);
        var a = cpp.AllLogits(tokens);
        var b = cria.AllLogits(tokens);
        float worst = 0;
        for (int p = 0; p < tokens.Length; p++)
            for (int i = 0; i < a[p].Length; i++) worst = Math.Max(worst, Math.Abs(a[p][i] - b[p][i]));
        output.WriteLine($"300-token prompt: max |Δ| = {worst:E3}");
        Assert.True(worst <= 1e-4f, $"max |Δlogit| {worst}");
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GreedyContinuationIsIdentical(string name, GgmlType type, bool tied, bool llama3)
    {
        var path = ModelFile(name, Spec(type, tied, llama3));
        var prompt = Prompt(8, 512, 3);
        using var cpp = new LlamaCpp(path);
        using var cria = new CriaRunner(path);
        float tol = Tolerance(type);
        var la = cpp.AllLogits(prompt)[^1];
        var lb = cria.AllLogits(prompt)[^1];
        int flips = 0;
        for (int step = 0; step < 32; step++)
        {
            int ta = Sampler.ArgMax(la), tb = Sampler.ArgMax(lb);
            if (ta != tb)
            {
                var sorted = la.OrderByDescending(x => x).ToArray();
                Assert.True(sorted[0] - sorted[1] < tol, $"{name} step {step}: llama.cpp picks {ta}, Cria {tb}, and llama.cpp's top-2 gap {sorted[0] - sorted[1]} ≥ {tol}");
                flips++;
            }
            int pos = prompt.Length + step;
            la = cpp.Next(ta, pos);
            lb = cria.Next(ta, pos);
        }
        output.WriteLine($"{name}: 32 greedy tokens, {flips} allowed flips");
    }
}
