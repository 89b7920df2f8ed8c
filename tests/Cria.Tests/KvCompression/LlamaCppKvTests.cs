using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using LLama;
using LLama.Common;
using LLama.Native;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.KvCompression;

/// <summary>
/// Issue 6: perplexity of the bundled model with a quantized KV cache in Cria and in llama.cpp (TypeK = TypeV, as
/// llama-perplexity -ctk/-ctv; llama.cpp needs flash attention for a quantized V cache, so both of its runs use it).
/// The two engines quantize K/V to the same ggml blocks but llama.cpp's flash-attention path also rounds Q to the K
/// type's vec-dot type, so agreement is to ~0.1 %, not bit-exact.
/// </summary>
public class LlamaCppKvTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData(KvCacheType.F16, GGMLType.GGML_TYPE_F16)]
    [InlineData(KvCacheType.Q8_0, GGMLType.GGML_TYPE_Q8_0)]
    public void QuantizedKvPerplexityAgreesWithLlamaCpp(KvCacheType cria, GGMLType cpp)
    {
        // 4 chunks keep the suite fast (llama.cpp's flash-attention Q8_0 path is slow here); CRIA_KV_CHUNKS=12 for the doc.
        const int ctx = 128;
        int maxChunks = int.TryParse(Environment.GetEnvironmentVariable("CRIA_KV_CHUNKS"), out var n) ? n : 4;
        string model = TestPaths.Bundled("default.gguf");
        string validPath = Path.Combine(TestPaths.RepoRoot, "data", "valid.txt");
        string text = File.Exists(validPath) ? File.ReadAllText(validPath) : string.Concat(Enumerable.Repeat(Training.BundledModelTests.FallbackText, 4));
        using var m = LlamaModel.Open(model);
        using var context = new InferenceContext(m, new ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = 2, Kv = new KvFormat { Type = cria } });
        var mine = Perplexity.Compute(context, m.Tokenizer, text, ctx, maxChunks: maxChunks);

        LlamaCpp.EnsureLoaded();
        var p = new ModelParams(model)
        {
            ContextSize = ctx, GpuLayerCount = 0, Threads = 2, BatchThreads = 2, BatchSize = ctx, UBatchSize = ctx,
            LoadMode = LLamaLoadMode.MemoryMap, TypeK = cpp, TypeV = cpp, FlashAttention = true,
        };
        using var w = LLamaWeights.LoadFromFile(p);
        using var lc = w.CreateContext(p);
        var tokens = m.Tokenizer.Encode(text, addBos: true);
        var chunks = Perplexity.Chunks(tokens, ctx, m.Tokenizer.Bos, m.Tokenizer.AddBos).Take(maxChunks).ToList();
        double nll = 0; int count = 0;
        foreach (var c in chunks)
        {
            lc.NativeHandle.MemoryClear();
            var b = new LLamaBatch();
            for (int i = 0; i < c.Length; i++) b.Add((LLamaToken)c[i], i, LLamaSeqId.Zero, true);
            Assert.Equal(DecodeResult.Ok, lc.Decode(b));
            for (int i = Perplexity.FirstScored(ctx); i < ctx - 1; i++) { nll += Perplexity.Nll(lc.NativeHandle.GetLogitsIth(i), c[i + 1]); count++; }
        }
        double theirs = Math.Exp(nll / count), rel = Math.Abs(theirs - mine.Value) / theirs;
        output.WriteLine($"KV {cria}: {chunks.Count} chunks of {ctx}: Cria {mine.Value:F4}, llama.cpp (type_k = type_v = {cpp}, flash attention) {theirs:F4}, relative difference {rel:E2}");
        Assert.True(rel < 0.005, $"perplexities differ by {rel:P2}");
    }
}
