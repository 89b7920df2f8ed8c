using Cria.Serving;
using Prometheus;

namespace Cria.Server;

/// <summary>
/// /metrics in Prometheus text, named after vLLM's V1 metrics with the prefix <c>cria_</c> (prometheus-net rejects the colon vLLM uses) and the label
/// <c>model_name</c> on every series (see research/anchors.md §1b). Gauges and engine counters are read at scrape
/// time; per-request histograms are observed when a request ends. One registry per server, so several servers can
/// live in one process (tests).
/// </summary>
public sealed class ServerMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();

    static readonly double[] TtftBuckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
    static readonly double[] ItlBuckets = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
    static readonly double[] E2eBuckets = [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
    static readonly double[] TokenBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

    readonly Gauge _running, _waiting, _kvUsage;
    readonly Counter _promptTokens, _generationTokens, _prefixQueries, _prefixHits, _preemptions, _steps;
    readonly Counter _specDrafts, _specDraftTokens, _specAccepted;
    readonly Counter _success;
    readonly Histogram _ttft, _itl, _e2e, _queue, _promptHist, _genHist;
    readonly Counter _httpErrors;
    readonly string _model;
    Engine? _engine;

    public ServerMetrics(string modelName)
    {
        _model = modelName;
        var f = Metrics.WithCustomRegistry(Registry).WithLabels(new Dictionary<string, string> { ["model_name"] = modelName });
        _running = f.CreateGauge("cria_num_requests_running", "Requests in the running batch (prefilling or decoding).");
        _waiting = f.CreateGauge("cria_num_requests_waiting", "Requests waiting for admission (including preempted ones).");
        _kvUsage = f.CreateGauge("cria_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).");
        _prefixQueries = f.CreateCounter("cria_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.");
        _prefixHits = f.CreateCounter("cria_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.");
        _promptTokens = f.CreateCounter("cria_prompt_tokens_total", "Prompt tokens computed (prefill, including recompute after preemption).");
        _generationTokens = f.CreateCounter("cria_generation_tokens_total", "Tokens generated.");
        _preemptions = f.CreateCounter("cria_num_preemptions_total", "Requests preempted (KV dropped, recomputed later).");
        _steps = f.CreateCounter("cria_engine_steps_total", "Engine steps (batched forward passes).");
        _specDrafts = f.CreateCounter("cria_spec_decode_num_drafts_total", "Speculative decoding: request steps that verified drafts.");
        _specDraftTokens = f.CreateCounter("cria_spec_decode_num_draft_tokens_total", "Speculative decoding: draft tokens verified.");
        _specAccepted = f.CreateCounter("cria_spec_decode_num_accepted_tokens_total", "Speculative decoding: draft tokens kept.");
        _success = f.CreateCounter("cria_request_success_total", "Finished requests by finish reason.", new CounterConfiguration { LabelNames = ["finished_reason"] });
        _httpErrors = f.CreateCounter("cria_http_errors_total", "Requests answered with an error status.", new CounterConfiguration { LabelNames = ["status"] });
        _ttft = f.CreateHistogram("cria_time_to_first_token_seconds", "Time from arrival to the first generated token.", new HistogramConfiguration { Buckets = TtftBuckets });
        _itl = f.CreateHistogram("cria_inter_token_latency_seconds", "Time between consecutive steps that generated tokens for a request (one token per step, or several with speculative decoding).", new HistogramConfiguration { Buckets = ItlBuckets });
        _e2e = f.CreateHistogram("cria_e2e_request_latency_seconds", "Time from arrival to the end of a request.", new HistogramConfiguration { Buckets = E2eBuckets });
        _queue = f.CreateHistogram("cria_request_queue_time_seconds", "Time from arrival to the request's first engine step.", new HistogramConfiguration { Buckets = TtftBuckets });
        _promptHist = f.CreateHistogram("cria_request_prompt_tokens", "Prompt tokens per request.", new HistogramConfiguration { Buckets = TokenBuckets });
        _genHist = f.CreateHistogram("cria_request_generation_tokens", "Generated tokens per request.", new HistogramConfiguration { Buckets = TokenBuckets });
        Registry.AddBeforeCollectCallback(Refresh);
    }

    public void Attach(Engine engine)
    {
        _engine = engine;
        engine.RequestFinished += Observe;
    }

    void Observe(RequestStats s)
    {
        _success.WithLabels(s.FinishReason).Inc();
        _promptHist.Observe(s.PromptTokens);
        _genHist.Observe(s.GeneratedTokens);
        _e2e.Observe(s.EndToEndSeconds);
        if (s.GeneratedTokens > 0) _ttft.Observe(s.TimeToFirstTokenSeconds);
        if (s.QueueSeconds > 0) _queue.Observe(s.QueueSeconds);
        foreach (var d in s.InterTokenSeconds) _itl.Observe(d);
    }

    public void HttpError(int status) => _httpErrors.WithLabels(status.ToString(System.Globalization.CultureInfo.InvariantCulture)).Inc();

    void Refresh()
    {
        var e = _engine;
        if (e == null) return;
        _running.Set(e.RunningCount);
        _waiting.Set(e.WaitingCount);
        _kvUsage.Set(e.KvUsage);
        _promptTokens.IncTo(e.PromptTokensTotal);
        _generationTokens.IncTo(e.GenerationTokensTotal);
        _preemptions.IncTo(e.PreemptionsTotal);
        _steps.IncTo(e.StepsTotal);
        _specDrafts.IncTo(e.SpecDraftsTotal);
        _specDraftTokens.IncTo(e.SpecDraftTokensTotal);
        _specAccepted.IncTo(e.SpecAcceptedTokensTotal);
        _prefixQueries.IncTo(e.Cache.PrefixQueryTokens);
        _prefixHits.IncTo(e.Cache.PrefixHitTokens);
    }

    public Task WriteAsync(Stream output, CancellationToken ct) => Registry.CollectAndExportAsTextAsync(output, ct);

    public override string ToString() => $"metrics for {_model}";
}
