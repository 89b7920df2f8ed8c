using System.CommandLine;
using Cria.Inference;
using Cria.Models;

namespace Cria.Cli;

/// <summary>
/// The KV-cache, RoPE and SwiftKV options shared by generate, perplexity, serve, bench and passkey: --kv-type, --kivi-group,
/// --kivi-residual, --kv-evict, --kv-budget, and llama.cpp's --rope-scaling / --rope-scale / --rope-freq-base /
/// --yarn-orig-ctx / --yarn-ext-factor / --yarn-attn-factor / --yarn-beta-fast / --yarn-beta-slow, and --swiftkv on|off.
/// </summary>
sealed class KvCliOptions
{
    readonly Option<string> _type = new("--kv-type", "--cache-type") { Description = "KV cache storage: f16 (default), f32, q8_0, kivi4, kivi2", DefaultValueFactory = _ => "f16" };
    readonly Option<int> _group = new("--kivi-group") { Description = "KIVI group size G (tokens per key group, channels per value group)", DefaultValueFactory = _ => 32 };
    readonly Option<int> _residual = new("--kivi-residual") { Description = "KIVI residual length R (recent tokens kept in F16; a multiple of G)", DefaultValueFactory = _ => 128 };
    readonly Option<string> _evict = new("--kv-evict") { Description = "KV eviction: none (default), sinks (StreamingLLM), h2o, snapkv, locret (trained retaining heads, --kv-heads)", DefaultValueFactory = _ => "none" };
    readonly Option<int> _budget = new("--kv-budget") { Description = "tokens each sequence keeps in the KV cache with --kv-evict" };
    readonly Option<bool> _shift = new("--kv-shift") { Description = "with --kv-evict: rotary positions are positions in the cache, not the text (StreamingLLM's position re-assignment)" };
    readonly Option<string?> _heads = new("--kv-heads") { Description = "with --kv-evict locret: the retaining heads (cria train-locret)" };
    readonly Option<int> _stabilizers = new("--kv-recent") { Description = "with --kv-evict locret: the most recent tokens always kept (Locret's stabilizers)", DefaultValueFactory = _ => 32 };
    readonly Option<int> _sinks = new("--kv-sinks") { Description = "attention-sink tokens kept (rounded up to a block)", DefaultValueFactory = _ => 4 };
    readonly Option<string?> _ropeScaling = new("--rope-scaling") { Description = "RoPE scaling: none, linear, yarn, llama3 (default: from the model)" };
    readonly Option<float> _ropeScale = new("--rope-scale") { Description = "RoPE context scaling factor N (freq scale 1/N)" };
    readonly Option<float> _ropeBase = new("--rope-freq-base") { Description = "RoPE base frequency (NTK-aware scaling: a larger base)" };
    readonly Option<int> _yarnOrig = new("--yarn-orig-ctx") { Description = "YaRN: original training context (default: from the model)" };
    readonly Option<float> _yarnExt = new("--yarn-ext-factor") { Description = "YaRN extrapolation mix factor (default 1 with yarn)", DefaultValueFactory = _ => -1f };
    readonly Option<float> _yarnAttn = new("--yarn-attn-factor") { Description = "YaRN attention magnitude factor (default 1)", DefaultValueFactory = _ => -1f };
    readonly Option<float> _yarnFast = new("--yarn-beta-fast") { Description = "YaRN β_fast (default 32)", DefaultValueFactory = _ => -1f };
    readonly Option<string> _swiftKv = new("--swiftkv") { Description = "a SwiftKV model (cria swiftkv) runs as SwiftKV (on, default) or as the original model its file also holds (off)", DefaultValueFactory = _ => "on" };
    readonly Option<int?> _window = new("--attn-window") { Description = "LongGen's hybrid attention without training: the windowed layers (--attn-window-layers) see only the first --attn-window-sinks positions and the last W; 0 runs a model trained with windows with full attention (default: as the model says)" };
    readonly Option<int> _windowSinks = new("--attn-window-sinks") { Description = "with --attn-window: attention sinks (positions from the start every query sees)", DefaultValueFactory = _ => ModelConfig.DefaultWindowSinks };
    readonly Option<string> _windowLayers = new("--attn-window-layers") { Description = "with --attn-window: longgen (bottom and top thirds windowed), all, or a list such as 0,1,4,5", DefaultValueFactory = _ => "longgen" };
    readonly Option<int> _beaconRatio = new("--beacon-ratio") { Description = "an Activation Beacon model (cria train-beacon) condenses each window at this ratio α (default: the file's)" };
    readonly Option<bool> _noBeacons = new("--no-beacons") { Description = "run an Activation Beacon model as the plain model (full attention, no condensing)" };
    readonly Option<float> _yarnSlow = new("--yarn-beta-slow") { Description = "YaRN β_slow (default 1)", DefaultValueFactory = _ => -1f };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { _type, _group, _residual, _evict, _budget, _heads, _stabilizers, _sinks, _shift, _ropeScaling, _ropeScale, _ropeBase, _yarnOrig, _yarnExt, _yarnAttn, _yarnFast, _yarnSlow, _swiftKv, _window, _windowSinks, _windowLayers, _beaconRatio, _noBeacons })
            cmd.Options.Add(o);
    }

    /// <summary>The condensing ratio an Activation Beacon model runs at (0: its file's), or null to run it — or any other
    /// model — as a plain sequence.</summary>
    public int? BeaconRatio(ParseResult r, ModelConfig c)
    {
        int ratio = r.GetValue(_beaconRatio);
        if (ratio < 0) throw new CriaException($"--beacon-ratio must be positive, got {ratio}");
        if (!c.HasBeacons && (ratio != 0 || r.GetValue(_noBeacons))) throw new CriaException("--beacon-ratio and --no-beacons belong to an Activation Beacon model (cria train-beacon); this one has none");
        if (r.GetValue(_noBeacons)) return ratio != 0 ? throw new CriaException("give either --beacon-ratio or --no-beacons, not both") : null;
        return c.HasBeacons ? ratio : null;
    }

    /// <summary>What <see cref="BeaconRatio"/> chose, for the command's header line.</summary>
    public static string DescribeBeacons(ModelConfig c, int? ratio)
    {
        if (!c.HasBeacons) return "";
        if (ratio is not { } r) return "Activation Beacon off (plain model)";
        int a = r == 0 ? c.BeaconRatio : r;
        return $"Activation Beacon: windows of {c.BeaconWindow} tokens condensed to {c.BeaconWindow / a} beacons (α {a})";
    }

    /// <summary>The --kv-type values when a comma-separated list is given (bench compares them side by side).</summary>
    public string[] TypeList(ParseResult r) => (r.GetValue(_type) ?? "f16").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    public KvFormat Format(ParseResult r, string? type = null) => new()
    {
        Type = KvFormat.Parse(type ?? r.GetValue(_type) ?? "f16"),
        KiviGroup = r.GetValue(_group),
        KiviResidual = r.GetValue(_residual),
    };

    public KvEvictionOptions Eviction(ParseResult r)
    {
        var t = KvEvictionOptions.Parse(r.GetValue(_evict) ?? "none");
        if (t != KvEvictionType.None && r.GetValue(_budget) < 1) throw new CriaException("--kv-evict needs --kv-budget TOKENS");
        if (t == KvEvictionType.None && r.GetValue(_shift)) throw new CriaException("--kv-shift needs --kv-evict (without eviction every position is already its slot)");
        string? heads = r.GetValue(_heads);
        if (t == KvEvictionType.Locret && heads == null) throw new CriaException("--kv-evict locret needs --kv-heads FILE (retaining heads trained by cria train-locret)");
        if (t != KvEvictionType.Locret && heads != null) throw new CriaException("--kv-heads belongs to --kv-evict locret");
        if (r.GetValue(_stabilizers) < 0) throw new CriaException($"--kv-recent must be ≥ 0, got {r.GetValue(_stabilizers)}");
        return new KvEvictionOptions
        {
            Type = t, Budget = r.GetValue(_budget), SinkTokens = r.GetValue(_sinks), ShiftPositions = r.GetValue(_shift),
            Heads = heads == null ? null : RetainingHeads.Read(heads), Stabilizers = r.GetValue(_stabilizers),
        };
    }

    public RopeOverrides? Rope(ParseResult r)
    {
        var s = r.GetValue(_ropeScaling);
        var o = new RopeOverrides
        {
            Scaling = s is null ? null : RopeOverrides.ParseScaling(s),
            Scale = r.GetValue(_ropeScale), FreqBase = r.GetValue(_ropeBase), YarnOrigCtx = r.GetValue(_yarnOrig),
            YarnExtFactor = r.GetValue(_yarnExt), YarnAttnFactor = r.GetValue(_yarnAttn),
            YarnBetaFast = r.GetValue(_yarnFast), YarnBetaSlow = r.GetValue(_yarnSlow),
        };
        return o == new RopeOverrides() ? null : o;
    }

    /// <summary><paramref name="o"/> with this command line's KV format, eviction and RoPE overrides.</summary>
    public ContextOptions Apply(ParseResult r, ContextOptions o, string? type = null) =>
        o with { Kv = Format(r, type), Eviction = Eviction(r), Rope = Rope(r), SwiftKv = SwiftKv(r), AttentionWindow = Window(r) };

    AttentionWindowOverride? Window(ParseResult r)
    {
        if (r.GetValue(_window) is int w) return new AttentionWindowOverride(w, r.GetValue(_windowSinks), r.GetValue(_windowLayers)!);
        if (r.GetResult(_windowSinks) is { Implicit: false } || r.GetResult(_windowLayers) is { Implicit: false })
            throw new CriaException("--attn-window-sinks and --attn-window-layers need --attn-window");
        return null;
    }

    bool SwiftKv(ParseResult r) => r.GetValue(_swiftKv) switch
    {
        "on" => true,
        "off" => false,
        var v => throw new CriaException($"--swiftkv {v}: expected on or off"),
    };

    public static string Describe(InferenceContext c)
    {
        var cfg = c.Config;
        string rope = cfg.RopeScaling == RopeScalingType.None ? "" : $", rope {cfg.RopeScaling} (freq scale {cfg.RopeFreqScale:G4}, orig ctx {cfg.RopeOriginalContext})";
        string swift = cfg.IsSwiftKv ? $", SwiftKV from layer {cfg.SwiftKvLayers} of {cfg.LayerCount}" + (cfg.SwiftKvGroup > 1 ? $" (AcrossKV {cfg.SwiftKvGroup})" : "") : "";
        string window = cfg.HasWindowedLayers ? $" in the full-attention layers; {cfg.WindowDescription}: {c.Cache.WindowBytesPerSequence:N0} bytes per sequence" : "";
        return $"KV {c.Cache.Format}, {c.Cache.BytesPerToken:N1} bytes/token{window}{rope}{swift}";
    }
}
