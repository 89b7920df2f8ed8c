using System.CommandLine;
using Cria.Inference;
using Cria.Models;
using Cria.Serving;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// The response scorers of best-of and train-self-eval: a trained reward model (<c>--reward-adapter</c> +
/// <c>--reward-head</c>), the contrastive reward (<c>--reward-weak</c>), the policy's log p (<c>--reward-logprob</c>),
/// and, where the command offers it, the policy's own self-evaluation (<c>--self-eval</c>: train-self-eval's adapter).
/// </summary>
sealed class ScorerCliOptions
{
    readonly Option<string?> _adapter = new("--reward-adapter") { Description = "the reward model's adapter (train-reward's adapter.gguf)" };
    readonly Option<string?> _head = new("--reward-head") { Description = "the reward model's head (train-reward's head.gguf)" };
    readonly Option<string?> _base = new("--reward-model") { Description = "the reward model's base (default: MODEL)" };
    readonly Option<int> _ctx = new("--reward-ctx") { Description = "tokens the reward head, or the self-evaluation, reads (its training --ctx)", DefaultValueFactory = _ => 128 };
    readonly Option<string?> _weak = new("--reward-weak") { Description = "score with the contrastive reward log p_MODEL − log p_WEAK (CDR) instead of a head" };
    readonly Option<bool> _logprob = new("--reward-logprob") { Description = "score with log p_MODEL(response|prompt)" };
    readonly Option<string?> _words = new("--reward-words") { Description = "a rule reward: how many times the response contains any of these comma-separated words (whole words, case-sensitive)" };
    readonly Option<string?>? _selfEval;

    public ScorerCliOptions(bool selfEval)
    {
        if (selfEval) _selfEval = new("--self-eval") { Description = "score with MODEL's own P(\"No\") to \"Would you do better if you started over?\" under this train-self-eval adapter" };
    }

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { _adapter, _head, _base, _ctx, _weak, _logprob, _words }) cmd.Options.Add(o);
        if (_selfEval != null) cmd.Options.Add(_selfEval);
    }

    string Choices => "--reward-head (with --reward-adapter), --reward-weak, --reward-logprob, --reward-words" + (_selfEval != null ? " or --self-eval" : "");

    /// <summary>The scorer the command line names, over <paramref name="policy"/> (read from <paramref name="policyPath"/>);
    /// contexts and models it opens go into <paramref name="owned"/>. <paramref name="longest"/> bounds prompt + response.</summary>
    public IResponseScorer Build(ParseResult r, LlamaModel policy, string policyPath, int longest, int threads, List<IDisposable> owned)
    {
        string? head = r.GetValue(_head), weak = r.GetValue(_weak), self = _selfEval != null ? r.GetValue(_selfEval) : null, words = r.GetValue(_words);
        bool lp = r.GetValue(_logprob);
        if ((head != null ? 1 : 0) + (weak != null ? 1 : 0) + (lp ? 1 : 0) + (self != null ? 1 : 0) + (words != null ? 1 : 0) != 1) throw new CriaException($"give one scorer: {Choices}");
        if (words != null) return new WordCountScorer(policy.Tokenizer, words.Split(','));
        if (head != null && r.GetValue(_adapter) == null) throw new CriaException("--reward-head needs its --reward-adapter");
        int T = r.GetValue(_ctx);
        if (head != null)
        {
            var rm = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(_base) ?? policyPath));
            owned.Add(rm);
            var (ho, weights) = ClassifierOptions.ReadHead(head, rm.Config.Dim);
            if (!ho.IsReward || ho.Bidirectional) throw new CriaException($"{head} is not a causal reward head");
            if (T < 2 || T > rm.Config.ContextLength) throw new CriaException($"--reward-ctx {T} must be in 2..{rm.Config.ContextLength}");
            var rc = new InferenceContext(rm, new ContextOptions { ContextSize = T, Threads = threads, Loras = [(LoraAdapter.Load(r.GetValue(_adapter)!, rm), 1f)] });
            owned.Add(rc);
            return new RewardModelScorer(rc, ho, weights, T);
        }
        if (self != null)
        {
            if (T < 3 || T > policy.Config.ContextLength) throw new CriaException($"--reward-ctx {T} must be in 3..{policy.Config.ContextLength}");
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
