using Cria.Tokenization;

namespace Cria.Serving;

/// <summary>
/// What a request's output must be — one JSON object (json_object), a sentence of a GBNF grammar, a JSON document of a
/// schema. Before each sampling the engine masks the tokens whose bytes the constraint rejects (their logits → −∞);
/// after it, feeds the chosen token's bytes. The bytes judged are the ones the streaming decoder emits:
/// <c>lstrip</c> 1 drops the leading space of a response's first token (tokenizers with a space prefix).
/// </summary>
internal abstract class OutputConstraint
{
    /// <summary>Nothing may follow: the request ends ("stop").</summary>
    public abstract bool IsComplete { get; }

    /// <summary>Copies <paramref name="logits"/> into <paramref name="masked"/> with every token that cannot come next at
    /// −∞; false when none can.</summary>
    public abstract bool Mask(ReadOnlySpan<float> logits, Span<float> masked, int lstrip);

    /// <summary>Feeds the chosen token (one <see cref="Mask"/> allowed).</summary>
    public abstract void Accept(int token, int lstrip);
}

/// <summary>json_object: <see cref="JsonObjectGrammar"/> tried on every token's bytes; end-of-generation tokens are
/// never allowed, the request ends when the object closes.</summary>
internal sealed class JsonObjectConstraint(Tokenizer tokenizer) : OutputConstraint
{
    readonly JsonObjectGrammar _state = new(), _scratch = new();

    public override bool IsComplete => _state.IsComplete;

    public override bool Mask(ReadOnlySpan<float> logits, Span<float> masked, int lstrip)
    {
        logits.CopyTo(masked);
        bool any = false;
        for (int v = 0; v < masked.Length; v++)
        {
            var bytes = tokenizer.TokenBytes(v, false, lstrip);
            _scratch.CopyFrom(_state);
            if (bytes.Length == 0 || !_scratch.Accept(bytes)) masked[v] = float.NegativeInfinity;
            else any = true;
        }
        return any;
    }

    public override void Accept(int token, int lstrip) => _state.Accept(tokenizer.TokenBytes(token, false, lstrip));
}

/// <summary>
/// A GBNF grammar (or a JSON schema compiled to one): the vocabulary's <see cref="TokenTrie"/> is walked with the
/// recogniser, so tokens that share a prefix share its work and a rejected prefix prunes every token below it.
/// End-of-generation tokens are allowed where the grammar may end; the request ends when nothing may follow.
/// </summary>
internal sealed class GrammarConstraint(TokenTries tries, GrammarState state) : OutputConstraint
{
    GrammarState _state = state;

    public override bool IsComplete => _state.IsComplete;

    public override bool Mask(ReadOnlySpan<float> logits, Span<float> masked, int lstrip)
    {
        masked.Fill(float.NegativeInfinity);
        var (stacks, cp, left) = _state.Snapshot;
        bool any = Walk(tries.For(lstrip).Root, 0, stacks, cp, left, logits, masked);
        if (_state.CanEnd)
            foreach (int t in tries.EndTokens) { masked[t] = logits[t]; any = true; }
        return any;
    }

    readonly List<List<GrammarState.Frame?>> _depthStacks = new(); // one reused stack list per trie depth

    bool Walk(TokenTrie.Node node, int depth, List<GrammarState.Frame?> stacks, int cp, int left, ReadOnlySpan<float> logits, Span<float> masked)
    {
        if (_depthStacks.Count == depth) _depthStacks.Add(new List<GrammarState.Frame?>());
        var into = _depthStacks[depth];
        bool any = false;
        for (int i = 0; i < node.Keys.Length; i++)
        {
            var (c, l) = (cp, left);
            if (_state.Step(stacks, ref c, ref l, node.Keys[i], into) is not { } next) continue;
            var child = node.Children[i];
            foreach (int t in child.Tokens) { masked[t] = logits[t]; any = true; }
            if (child.Keys.Length > 0) any |= Walk(child, depth + 1, next, c, l, logits, masked);
        }
        return any;
    }

    public override void Accept(int token, int lstrip)
    {
        if (tries.Tokenizer.IsEog(token)) return;
        _state.Accept(tries.Tokenizer.TokenBytes(token, false, lstrip));
    }
}

/// <summary>A byte trie of a vocabulary's tokens (the bytes each emits; tokens with none, or starting with a NUL byte,
/// are left out).</summary>
internal sealed class TokenTrie
{
    internal sealed class Node
    {
        public byte[] Keys = [];
        public Node[] Children = [];
        public int[] Tokens = [];   // the tokens whose bytes end here
    }

    public Node Root { get; }

    public TokenTrie(Tokenizer tokenizer, int lstrip)
    {
        var root = new Builder();
        for (int v = 0; v < tokenizer.VocabSize; v++)
        {
            var bytes = tokenizer.TokenBytes(v, false, lstrip);
            if (bytes.Length == 0 || bytes[0] == 0) continue; // as llama.cpp: no text, or a NUL byte (C strings end there)
            var n = root;
            foreach (byte b in bytes)
            {
                if (!n.Children.TryGetValue(b, out var c)) n.Children[b] = c = new Builder();
                n = c;
            }
            n.Tokens.Add(v);
        }
        Root = root.Freeze();
    }

    sealed class Builder
    {
        public readonly SortedDictionary<byte, Builder> Children = new();
        public readonly List<int> Tokens = new();

        public Node Freeze() => new()
        {
            Keys = [.. Children.Keys],
            Children = [.. Children.Values.Select(c => c.Freeze())],
            Tokens = [.. Tokens],
        };
    }
}

/// <summary>The two tries of a tokenizer (a response's first token judged without its leading space, and every other
/// token) and its end-of-generation tokens, built once per engine on the first grammar request.</summary>
internal sealed class TokenTries(Tokenizer tokenizer)
{
    readonly Lazy<TokenTrie> _plain = new(() => new TokenTrie(tokenizer, 0));
    readonly Lazy<TokenTrie> _stripped = new(() => new TokenTrie(tokenizer, 1));
    readonly Lazy<int[]> _end = new(() => [.. Enumerable.Range(0, tokenizer.VocabSize).Where(tokenizer.IsEog)]);

    public Tokenizer Tokenizer => tokenizer;
    public TokenTrie For(int lstrip) => lstrip == 0 ? _plain.Value : _stripped.Value;
    public int[] EndTokens => _end.Value;
}
