using System.CommandLine;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// The response scorers of best-of, train-self-eval and train-refuel: a trained reward model (<c>--reward-adapter</c> +
/// <c>--reward-head</c>), the contrastive reward (<c>--reward-weak</c>), the policy's log p (<c>--reward-logprob</c>),
/// a word-count rule (<c>--reward-words</c>), and, where the command offers it, the policy's own self-evaluation
/// (<c>--self-eval</c>: train-self-eval's adapter). A second set under another prefix (train-refuel's
/// <c>--judge-*</c>) names a second scorer.
/// </summary>
sealed class ScorerCliOptions
{
    readonly string _p;   // the options' prefix: "reward" (--reward-adapter …), or another for a second scorer ("judge")
    readonly Option<string?> _adapter, _head, _base, _weak, _words;
    readonly Option<int> _ctx;
    readonly Option<bool> _logprob;
    readonly Option<string?>? _selfEval;

    /// <summary>The options --PREFIX-adapter, --PREFIX-head, … (<paramref name="prefix"/> "reward" by default);
    /// <paramref name="what"/> names the scorer in their descriptions.</summary>
    public ScorerCliOptions(bool selfEval, string prefix = "reward", string what = "the reward")
    {
        _p = prefix;
        _adapter = new($"--{prefix}-adapter") { Description = $"{what}: a reward model's adapter (train-reward's adapter.gguf)" };
        _head = new($"--{prefix}-head") { Description = $"{what}: the reward model's head (train-reward's head.gguf)" };
        _base = new($"--{prefix}-model") { Description = $"{what}: the reward model's base (default: MODEL)" };
        _ctx = new($"--{prefix}-ctx") { Description = $"tokens {what}'s head, or the self-evaluation, reads (its training --ctx)", DefaultValueFactory = _ => 128 };
        _weak = new($"--{prefix}-weak") { Description = $"{what}: the contrastive reward log p_MODEL − log p_WEAK (CDR) instead of a head" };
        _logprob = new($"--{prefix}-logprob") { Description = $"{what}: log p_MODEL(response|prompt)" };
        _words = new($"--{prefix}-words") { Description = $"{what}: a rule, how many times the response contains any of these comma-separated words (whole words, case-sensitive)" };
        if (selfEval) _selfEval = new("--self-eval") { Description = "score with MODEL's own P(\"No\") to \"Would you do better if you started over?\" under this train-self-eval adapter" };
    }

    /// <summary>Whether any of the scorer's options was given (for an optional second scorer).</summary>
    public bool Given(ParseResult r) =>
        r.GetValue(_adapter) != null || r.GetValue(_head) != null || r.GetValue(_weak) != null || r.GetValue(_logprob) || r.GetValue(_words) != null
        || (_selfEval != null && r.GetValue(_selfEval) != null);

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { _adapter, _head, _base, _ctx, _weak, _logprob, _words }) cmd.Options.Add(o);
        if (_selfEval != null) cmd.Options.Add(_selfEval);
    }

    string Choices => $"--{_p}-head (with --{_p}-adapter), --{_p}-weak, --{_p}-logprob, --{_p}-words" + (_selfEval != null ? " or --self-eval" : "");

    /// <summary>The scorer the command line names, over <paramref name="policy"/> (read from <paramref name="policyPath"/>);
    /// contexts and models it opens go into <paramref name="owned"/>. <paramref name="longest"/> bounds prompt + response.</summary>
    public IResponseScorer Build(ParseResult r, LlamaModel policy, string policyPath, int longest, int threads, List<IDisposable> owned)
    {
        string? head = r.GetValue(_head), weak = r.GetValue(_weak), self = _selfEval != null ? r.GetValue(_selfEval) : null, words = r.GetValue(_words);
        bool lp = r.GetValue(_logprob);
        if ((head != null ? 1 : 0) + (weak != null ? 1 : 0) + (lp ? 1 : 0) + (self != null ? 1 : 0) + (words != null ? 1 : 0) != 1) throw new CriaException($"give one scorer: {Choices}");
        if (words != null) return new WordCountScorer(policy.Tokenizer, words.Split(','));
        if (head != null && r.GetValue(_adapter) == null) throw new CriaException($"--{_p}-head needs its --{_p}-adapter");
        int T = r.GetValue(_ctx);
        if (head != null)
        {
            var rm = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(_base) ?? policyPath));
            owned.Add(rm);
            var (ho, weights) = ClassifierOptions.ReadHead(head, rm.Config.Dim);
            if (!ho.IsReward || ho.Bidirectional) throw new CriaException($"{head} is not a causal reward head");
            if (T < 2 || T > rm.Config.ContextLength) throw new CriaException($"--{_p}-ctx {T} must be in 2..{rm.Config.ContextLength}");
            var rc = new InferenceContext(rm, new ContextOptions { ContextSize = T, Threads = threads, Loras = [(LoraAdapter.Load(r.GetValue(_adapter)!, rm), 1f)] });
            owned.Add(rc);
            return new RewardModelScorer(rc, ho, weights, T);
        }
        if (self != null)
        {
            if (T < 3 || T > policy.Config.ContextLength) throw new CriaException($"--{_p}-ctx {T} must be in 3..{policy.Config.ContextLength}");
            var sc = new InferenceContext(policy, new ContextOptions { ContextSize = T - 1, Threads = threads, Loras = [(LoraAdapter.Load(self, policy), 1f)] });
            owned.Add(sc);
            return new SelfEvalScorer(sc, SelfEvalFormat.Create(policy.Tokenizer), T - 1);
        }
        var strong = new InferenceContext(policy, new ContextOptions { ContextSize = longest, Threads = threads });
        owned.Add(strong);
        InferenceContext? wc = null;
        if (weak != null)
        {
            var w = LlamaModel.Open(weak);
            owned.Add(w);
            ModelDrafter.CheckCompatible(policy, w);
            wc = new InferenceContext(w, new ContextOptions { ContextSize = longest, Threads = threads });
            owned.Add(wc);
        }
        return new LogProbScorer(strong, wc);
    }
}
