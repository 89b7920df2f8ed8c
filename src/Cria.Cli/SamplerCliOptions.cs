using System.CommandLine;
using System.Globalization;
using Cria.Inference;

namespace Cria.Cli;

/// <summary>
/// The sampler chain's options, with llama-cli's names, shared by generate and serve (each with its own defaults:
/// llama.cpp's for generate, OpenAI's for serve): <c>--temp</c>, <c>--top-k</c>, <c>--top-p</c>, <c>--min-p</c>, the
/// penalties, <c>--typical</c>, <c>--top-nsigma</c>, <c>--xtc-probability/--xtc-threshold</c>, <c>--dry-*</c>,
/// <c>--dynatemp-range/--dynatemp-exp</c>, <c>--mirostat/--mirostat-lr/--mirostat-ent</c>, <c>--min-keep</c> and
/// <c>--logit-bias/-l TOKEN(+|-)BIAS</c>.
/// </summary>
sealed class SamplerCliOptions(SamplerOptions defaults, string what)
{
    readonly Option<float> _temp = new("--temp") { Description = $"{what}temperature (0 = greedy)", DefaultValueFactory = _ => defaults.Temperature };
    readonly Option<int> _topK = new("--top-k") { Description = $"{what}top-k (0 = off)", DefaultValueFactory = _ => defaults.TopK };
    readonly Option<float> _topP = new("--top-p") { Description = $"{what}top-p (1 = off)", DefaultValueFactory = _ => defaults.TopP };
    readonly Option<float> _minP = new("--min-p") { Description = $"{what}min-p (0 = off)", DefaultValueFactory = _ => defaults.MinP };
    readonly Option<float> _repeat = new("--repeat-penalty") { Description = $"{what}repetition penalty (1 = off)", DefaultValueFactory = _ => defaults.RepeatPenalty };
    readonly Option<int> _lastN = new("--repeat-last-n") { Description = "tokens the penalties look back over", DefaultValueFactory = _ => defaults.PenaltyLastN };
    readonly Option<float> _freq = new("--frequency-penalty") { Description = $"{what}frequency penalty" };
    readonly Option<float> _pres = new("--presence-penalty") { Description = $"{what}presence penalty" };
    readonly Option<float> _typical = new("--typical") { Description = "locally typical sampling, p (1 = off)", DefaultValueFactory = _ => 1f };
    readonly Option<float> _topNSigma = new("--top-nsigma") { Description = "top-nσ: keep logits within n standard deviations of the largest (≤ 0 = off)", DefaultValueFactory = _ => -1f };
    readonly Option<float> _xtcP = new("--xtc-probability") { Description = "XTC: chance per token of removing the top choices (0 = off)" };
    readonly Option<float> _xtcT = new("--xtc-threshold") { Description = "XTC: tokens at or above this probability are the top choices (> 0.5 = off)", DefaultValueFactory = _ => 0.1f };
    readonly Option<float> _dryMult = new("--dry-multiplier") { Description = "DRY: penalty multiplier for extending a repetition (0 = off)" };
    readonly Option<float> _dryBase = new("--dry-base") { Description = "DRY: penalty base", DefaultValueFactory = _ => 1.75f };
    readonly Option<int> _dryAllowed = new("--dry-allowed-length") { Description = "DRY: repetitions this long go unpenalised", DefaultValueFactory = _ => 2 };
    readonly Option<int> _dryLastN = new("--dry-penalty-last-n") { Description = "DRY: tokens looked back over (-1 = the context, 0 = off)", DefaultValueFactory = _ => -1 };
    readonly Option<string[]> _dryBreakers = new("--dry-sequence-breaker") { Description = "DRY: a sequence breaker (repeatable; replaces the defaults \\n : \" *; 'none' for none)" };
    readonly Option<float> _dynRange = new("--dynatemp-range") { Description = "dynamic temperature: range around --temp (0 = off)" };
    readonly Option<float> _dynExp = new("--dynatemp-exp") { Description = "dynamic temperature: exponent", DefaultValueFactory = _ => 1f };
    readonly Option<int> _mirostat = new("--mirostat") { Description = "mirostat version 1 or 2 in place of top-k … XTC (0 = off)" };
    readonly Option<float> _mirostatEta = new("--mirostat-lr") { Description = "mirostat learning rate η", DefaultValueFactory = _ => 0.1f };
    readonly Option<float> _mirostatTau = new("--mirostat-ent") { Description = "mirostat target entropy τ (bits)", DefaultValueFactory = _ => 5f };
    readonly Option<int> _minKeep = new("--min-keep") { Description = "fewest candidates top-p, min-p, typical and XTC leave" };
    readonly Option<string[]> _logitBias = new("--logit-bias", "-l") { Description = "add a bias to a token's logit: TOKEN(+|-)BIAS, e.g. 15043+1 or 15043-inf (repeatable)" };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { _temp, _topK, _topP, _minP, _repeat, _lastN, _freq, _pres, _typical, _topNSigma, _xtcP, _xtcT, _dryMult, _dryBase, _dryAllowed, _dryLastN, _dryBreakers, _dynRange, _dynExp, _mirostat, _mirostatEta, _mirostatTau, _minKeep, _logitBias })
            cmd.Options.Add(o);
    }

    /// <summary>The options given (and the defaults for the rest), validated; the seed is the caller's.</summary>
    public SamplerOptions Read(ParseResult r)
    {
        var breakers = r.GetValue(_dryBreakers);
        var s = defaults with
        {
            Temperature = r.GetValue(_temp), TopK = r.GetValue(_topK), TopP = r.GetValue(_topP), MinP = r.GetValue(_minP),
            RepeatPenalty = r.GetValue(_repeat), PenaltyLastN = r.GetValue(_lastN),
            FrequencyPenalty = r.GetValue(_freq), PresencePenalty = r.GetValue(_pres),
            TypicalP = r.GetValue(_typical), TopNSigma = r.GetValue(_topNSigma),
            XtcProbability = r.GetValue(_xtcP), XtcThreshold = r.GetValue(_xtcT),
            DryMultiplier = r.GetValue(_dryMult), DryBase = r.GetValue(_dryBase), DryAllowedLength = r.GetValue(_dryAllowed), DryPenaltyLastN = r.GetValue(_dryLastN),
            DrySequenceBreakers = breakers is { Length: > 0 } ? (breakers is ["none"] ? [] : breakers.Select(Unescape).ToArray()) : SamplerOptions.DefaultDryBreakers,
            DynatempRange = r.GetValue(_dynRange), DynatempExponent = r.GetValue(_dynExp),
            Mirostat = r.GetValue(_mirostat), MirostatEta = r.GetValue(_mirostatEta), MirostatTau = r.GetValue(_mirostatTau),
            MinKeep = r.GetValue(_minKeep),
            LogitBias = r.GetValue(_logitBias) is { Length: > 0 } lb ? ParseLogitBias(lb) : null,
        };
        s.Validate();
        return s;
    }

    /// <summary>llama-cli's <c>-l</c> entries: TOKEN followed by a signed bias (a number or inf).</summary>
    public static Dictionary<int, float> ParseLogitBias(IEnumerable<string> entries)
    {
        var bias = new Dictionary<int, float>();
        foreach (var e in entries)
        {
            int sign = e.IndexOfAny(['+', '-'], 1);
            if (sign < 1 || !int.TryParse(e.AsSpan(0, sign), NumberStyles.None, CultureInfo.InvariantCulture, out int id)
                || !TryBias(e[sign..], out float b))
                throw new CriaException($"--logit-bias takes TOKEN(+|-)BIAS, e.g. 15043+1 or 15043-inf; got \"{e}\"");
            bias[id] = b;
        }
        return bias;
    }

    static bool TryBias(string s, out float b)
    {
        if (s is "-inf" or "+inf") { b = s[0] == '-' ? float.NegativeInfinity : float.PositiveInfinity; return true; }
        return float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out b) && float.IsFinite(b);
    }

    static string Unescape(string s) => s.Replace("\\n", "\n").Replace("\\t", "\t");
}
