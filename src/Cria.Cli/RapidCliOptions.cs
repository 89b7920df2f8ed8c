using System.CommandLine;
using Cria.Inference;
using Cria.Models;

namespace Cria.Cli;

/// <summary>
/// RAPID's options, shared by generate and passkey: <c>--rapid</c> (speculative decoding whose drafter reads only the
/// chunks of the prompt retrieved for its end: the target model itself, or <c>--model-draft</c>), <c>--rapid-margin</c>
/// (η of the nudged target distribution), and the retrieval's <c>--rag-chunk</c>, <c>--rag-budget</c>, <c>--rag-query</c>.
/// </summary>
sealed class RapidCliOptions
{
    readonly Option<bool> _rapid = new("--rapid") { Description = "RAPID: speculative decoding with a drafter that reads the retrieved chunks of the prompt (the model itself, or --model-draft)" };
    readonly Option<float> _margin = new("--rapid-margin") { Description = "RAPID's η: the target's distribution is nudged toward the drafter's, p·exp(η(q − p)); 0 keeps the target's", DefaultValueFactory = _ => 10f };
    readonly Option<int> _chunk = new("--rag-chunk") { Description = "RAPID retrieval: tokens per chunk of the prompt", DefaultValueFactory = _ => 64 };
    readonly Option<int> _budget = new("--rag-budget") { Description = "RAPID retrieval: most tokens of retrieved chunks the drafter reads", DefaultValueFactory = _ => 256 };
    readonly Option<int> _query = new("--rag-query") { Description = "RAPID retrieval: the prompt's last N tokens are the query (searched for, and read by the drafter after the chunks)", DefaultValueFactory = _ => 32 };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { _rapid, _margin, _chunk, _budget, _query }) cmd.Options.Add(o);
    }

    public bool Enabled(ParseResult r) => r.GetValue(_rapid);
    public float Margin(ParseResult r) => r.GetValue(_margin);

    public RagOptions Rag(ParseResult r)
    {
        var o = new RagOptions { ChunkTokens = r.GetValue(_chunk), BudgetTokens = r.GetValue(_budget), QueryTokens = r.GetValue(_query) };
        o.Validate();
        return o;
    }

    /// <summary>Context tokens the drafter needs: its prompt (BOS, retrieved chunks, query) and what is generated.</summary>
    public int DraftContext(ParseResult r, int generated)
    {
        var o = Rag(r);
        return o.BudgetTokens + o.QueryTokens + generated + 16;
    }
}
