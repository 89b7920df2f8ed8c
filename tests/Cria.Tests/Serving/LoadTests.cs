using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Cria.Server;
using Cria.Serving;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Serving;

/// <summary>
/// A bounded load test on loopback: 64 concurrent streaming clients, some cancelling mid-stream, some sending invalid
/// requests, in two waves. Every valid request must end with a well-formed stream (role chunk, content chunks, one
/// finish chunk, a usage chunk, [DONE]) of exactly its max_tokens; invalid ones get a 400 error object; afterwards
/// every KV block is back in the pool and managed memory has not grown between the waves.
/// </summary>
/// <summary>The load test measures the whole process's managed heap, so it runs alone, after the parallel tests.</summary>
[CollectionDefinition("Serial load test", DisableParallelization = true)]
public sealed class SerialLoadTestCollection;

[Collection("Serial load test")]
public class LoadTests(ITestOutputHelper output)
{
    enum Kind { Valid, Cancel, Invalid }

    static readonly string[] Words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "llama", "story", "little", "girl", "sun", "water"];

    [Fact]
    public async Task SixtyFourStreamingClientsWithCancellationsAndInvalidRequests()
    {
        var sw = Stopwatch.StartNew();
        await using var server = await CriaServer.StartAsync(new ServerOptions
        {
            ModelPath = EngineTests.ModelPath(), Port = 0, ContextSize = 4096, Threads = 2,
            Engine = new EngineOptions { Scheduler = new SchedulerOptions { TokenBudget = 128, MaxSequences = 32 } },
        });
        await server.Loaded;
        var engine = server.Engine!;
        using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };

        long[] memory = new long[2];
        for (int wave = 0; wave < 2; wave++)
        {
            var results = await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Task.Run(() => Client(http, wave * 100 + i))));
            int valid = results.Count(r => r == Kind.Valid), cancelled = results.Count(r => r == Kind.Cancel), invalid = results.Count(r => r == Kind.Invalid);
            Assert.Equal(64, valid + cancelled + invalid);
            Assert.True(valid >= 40 && cancelled >= 4 && invalid >= 4, $"{valid} valid, {cancelled} cancelled, {invalid} invalid");

            // Cancellations reach the engine asynchronously (the client's disconnect): wait until it is idle.
            var until = Stopwatch.StartNew();
            while ((engine.RunningCount > 0 || engine.WaitingCount > 0 || engine.Cache.FreeBlocks != engine.Cache.BlockCount) && until.Elapsed < TimeSpan.FromSeconds(10))
                await Task.Delay(20);
            Assert.True(engine.RunningCount == 0, $"still running: {string.Join(", ", engine.DebugRunning())}");
            Assert.Equal(0, engine.WaitingCount);
            Assert.Equal(engine.Cache.BlockCount, engine.Cache.FreeBlocks);
            Assert.Empty(engine.Cache.SequenceIds);

            GC.Collect(); GC.WaitForPendingFinalizers(); GC.Collect();
            memory[wave] = GC.GetTotalMemory(true);
            output.WriteLine($"wave {wave}: {valid} valid, {cancelled} cancelled, {invalid} invalid; managed heap {memory[wave] / 1e6:F1} MB; {sw.Elapsed.TotalSeconds:F1} s");
        }
        Assert.True(memory[1] < memory[0] + (16 << 20), $"managed memory grew from {memory[0]} to {memory[1]} bytes");
        var metrics = await http.GetStringAsync("/metrics");
        // Every request that reached the engine is accounted for exactly once, as "length" or "cancelled" (a tiny
        // model can finish a cancelled request's tokens before the disconnect arrives; EngineTests covers the cancel
        // path itself).
        double finished = metrics.Split('\n').Where(l => l.StartsWith("cria_request_success_total{", StringComparison.Ordinal))
            .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(2 * 64 - 2 * 8, (int)finished);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(120), $"load test took {sw.Elapsed}"); // a hang guard, not a speed claim
    }

    static async Task<Kind> Client(HttpClient http, int seed)
    {
        var rng = new Random(seed);
        var kind = (seed % 8) switch { 7 => Kind.Invalid, 3 => Kind.Cancel, _ => Kind.Valid };
        if (kind == Kind.Invalid)
        {
            string body = (seed / 8 % 3) switch
            {
                0 => "{\"messages\": [",
                1 => """{"messages":[{"role":"user","content":"hi"}],"max_tokens":"many"}""",
                _ => """{"messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":-1}""",
            };
            using var bad = await http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
            var err = JsonDocument.Parse(await bad.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.Equal("invalid_request_error", err.GetProperty("type").GetString());
            return kind;
        }

        int maxTokens = kind == Kind.Cancel ? 800 : rng.Next(8, 33); // cancelled ones cannot finish before the cancel (fast kernels did 400 first)
        string prompt = string.Join(' ', Enumerable.Range(0, rng.Next(1, 60)).Select(_ => Words[rng.Next(Words.Length)]));
        var json = JsonSerializer.Serialize(new
        {
            model = "m", messages = new[] { new { role = "user", content = prompt } }, max_tokens = maxTokens, stream = true,
            stream_options = new { include_usage = true }, ignore_eos = true, temperature = rng.NextDouble(), seed = seed,
        });
        using var cts = new CancellationTokenSource();
        int cancelAfter = kind == Kind.Cancel ? rng.Next(1, 6) : int.MaxValue;
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(json, Encoding.UTF8, "application/json") };
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        Assert.Equal(HttpStatusCode.OK, resp.StatusCode);
        Assert.Equal("text/event-stream", resp.Content.Headers.ContentType!.MediaType);
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync(cts.Token));
        int events = 0, finishes = 0, contentChunks = 0;
        bool done = false, role = false;
        int? usage = null;
        string? id = null;
        try
        {
            while (await reader.ReadLineAsync(cts.Token) is { } line)
            {
                if (line.Length == 0) continue;
                Assert.StartsWith("data: ", line);
                Assert.False(done, "data after [DONE]");
                var payload = line[6..];
                if (payload == "[DONE]") { done = true; continue; }
                var o = JsonDocument.Parse(payload).RootElement;
                Assert.False(o.TryGetProperty("error", out _), payload);
                Assert.Equal("chat.completion.chunk", o.GetProperty("object").GetString());
                id ??= o.GetProperty("id").GetString();
                Assert.Equal(id, o.GetProperty("id").GetString());
                var choices = o.GetProperty("choices");
                if (choices.GetArrayLength() == 0)
                {
                    Assert.Equal(1, finishes); // usage comes after the finish chunk
                    usage = o.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
                    continue;
                }
                var c = choices[0];
                var delta = c.GetProperty("delta");
                if (delta.TryGetProperty("role", out _)) { Assert.Equal(0, events); role = true; }
                if (delta.TryGetProperty("content", out var t) && t.GetString()!.Length > 0) { Assert.Equal(0, finishes); contentChunks++; }
                if (c.GetProperty("finish_reason").ValueKind == JsonValueKind.String) { finishes++; Assert.Equal("length", c.GetProperty("finish_reason").GetString()); }
                if (++events >= cancelAfter) { cts.Cancel(); return kind; }
            }
        }
        catch (OperationCanceledException) when (kind == Kind.Cancel) { return kind; }
        if (kind == Kind.Cancel) kind = Kind.Valid; // the stream ended before it was cancelled: it must be complete
        Assert.True(done && role, "stream ended without [DONE] or role");
        Assert.Equal(1, finishes);
        Assert.Equal(maxTokens, usage);
        Assert.True(contentChunks > 0);
        return kind;
    }
}
