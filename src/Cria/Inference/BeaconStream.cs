namespace Cria.Inference;

/// <summary>
/// One sequence of an Activation Beacon model (<see cref="Models.ModelConfig.HasBeacons"/>) run window by window
/// through an <see cref="InferenceContext"/> — what <see cref="Training.BeaconPlan"/> lays out for the trainer, here as the
/// cache holds it. The cache keeps the memory (the beacons of every condensed window, positions 0…M−1) and the raw
/// tokens of the current window (positions M…). When a window of W raw tokens is full and another token comes, the
/// window is condensed: k = W/α beacon rows at positions M + W + j, each seeing the memory, the first (j+1)·α raw tokens
/// (the rest is a hole in its keys) and the beacons up to itself, run with the beacon embedding and projections; then
/// their keys and values move to positions M…M+k−1 (keys rotated back by W) and the raw tokens are dropped
/// (<see cref="KvCache.MoveRows"/>). Positions therefore stay below M + W + k, whatever the length of the text, and
/// the cache holds M + W + k tokens at most.
/// <para>Condensing waits for the next token, so the logits of the last token fed stay readable from the context.</para>
/// </summary>
public sealed class BeaconStream
{
    readonly InferenceContext _ctx;
    readonly Batch _batch, _beacons;
    public int SequenceId { get; }
    public int Window { get; }
    public int Ratio { get; }
    /// <summary>Beacons in the cache (the memory), at positions 0…Memory−1.</summary>
    public int Memory { get; private set; }
    /// <summary>Raw tokens of the current window in the cache, after the memory.</summary>
    public int Raw { get; private set; }
    /// <summary>The cache position the next raw token takes.</summary>
    public int NextPosition => Memory + Raw;

    /// <param name="ratio">α, the condensing ratio (0: the file's <c>beacon.ratio</c>); it must divide the window.</param>
    public BeaconStream(InferenceContext ctx, int sequenceId, int ratio = 0)
    {
        var c = ctx.Config;
        if (!c.HasBeacons) throw new CriaException($"{c.Name}: the model has no Activation Beacon tensors (train them with `cria train-beacon`)");
        if (ctx.Cache.Format.IsKivi || ctx.Cache.HasWindowedLayers || ctx.Evicts)
            throw new CriaException("Activation Beacon condenses the cache itself: it runs on a plain F32, F16 or Q8_0 cache, without KIVI, sliding windows or eviction");
        if (ctx.Cache.Contains(sequenceId)) throw new CriaException($"sequence {sequenceId} already has tokens in the cache");
        Ratio = ratio == 0 ? c.BeaconRatio : ratio;
        Window = c.BeaconWindow;
        if (Ratio < 1 || Window % Ratio != 0) throw new CriaException($"condensing ratio {Ratio} must divide the beacon window {Window}");
        if (ctx.Cache.Capacity < Window + Window / Ratio)
            throw new CriaException($"the context holds {ctx.Cache.Capacity} tokens; Activation Beacon needs a window and its beacons, {Window + Window / Ratio} (raise -c)");
        _ctx = ctx; SequenceId = sequenceId;
        _batch = new Batch(Math.Min(Window, ctx.MicroBatch));
        _beacons = new Batch(Window / Ratio);
    }

    /// <summary>Feeds raw tokens. <paramref name="onLogits"/>, when given, receives (index in <paramref name="tokens"/>,
    /// logits) of every token from index <paramref name="logitsFrom"/> on; otherwise only the last token's logits are
    /// computed, readable with <see cref="InferenceContext.Logits"/>(<see cref="LastRow"/>) until the next call.</summary>
    public void Feed(ReadOnlySpan<int> tokens, Action<int, ReadOnlySpan<float>>? onLogits = null, int logitsFrom = 0)
    {
        int i = 0;
        while (i < tokens.Length)
        {
            if (Raw == Window) Condense();
            int n = Math.Min(Math.Min(tokens.Length - i, Window - Raw), _ctx.MicroBatch);
            _batch.Clear();
            for (int j = 0; j < n; j++) _batch.Add(tokens[i + j], NextPosition + j, SequenceId, onLogits != null ? i + j >= logitsFrom : i + j == tokens.Length - 1);
            _ctx.Decode(_batch);
            if (onLogits != null)
                for (int j = Math.Max(0, logitsFrom - i); j < n; j++) onLogits(i + j, _ctx.Logits(j));
            LastRow = n - 1;
            Raw += n; i += n;
        }
    }

    /// <summary>The batch row of the last token fed, for <see cref="InferenceContext.Logits"/>.</summary>
    public int LastRow { get; private set; }

    /// <summary>Condenses the full current window into its beacons (see the class).</summary>
    void Condense()
    {
        int k = Window / Ratio, m = Memory;
        _beacons.Clear();
        for (int j = 0; j < k; j++) _beacons.AddBeacon(m + Window + j, SequenceId, m + (j + 1) * Ratio, m + Window);
        _ctx.Decode(_beacons);
        _ctx.Cache.MoveRows(_ctx.Config, SequenceId, m + Window, m, k);
        Memory += k; Raw = 0;
    }
}
