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

    /// <summary>Sorts the tokens' byte strings, then builds each node from the contiguous run of strings that share
    /// its prefix: no per-node dictionaries (128 256 Llama 3 tokens in well under a second).</summary>
    public TokenTrie(Tokenizer tokenizer, int lstrip)
    {
        var entries = new List<(byte[] Bytes, int Token)>(tokenizer.VocabSize);
        for (int v = 0; v < tokenizer.VocabSize; v++)
        {
            var bytes = tokenizer.TokenBytes(v, false, lstrip);
            if (bytes.Length == 0 || bytes[0] == 0) continue; // as llama.cpp: no text, or a NUL byte (C strings end there)
            entries.Add((bytes.ToArray(), v));
        }
        entries.Sort((a, b) => a.Bytes.AsSpan().SequenceCompareTo(b.Bytes));
        Root = Build(entries, 0, entries.Count, 0);
    }

    /// <summary>The node for entries [lo, hi), which share their first <paramref name="depth"/> bytes.</summary>
    static Node Build(List<(byte[] Bytes, int Token)> e, int lo, int hi, int depth)
    {
        int i = lo;
        var tokens = new List<int>();
        while (i < hi && e[i].Bytes.Length == depth) tokens.Add(e[i++].Token); // shorter strings sort first
        var keys = new List<byte>();
        var children = new List<Node>();
        while (i < hi)
        {
            byte b = e[i].Bytes[depth];
            int j = i + 1;
            while (j < hi && e[j].Bytes[depth] == b) j++;
            keys.Add(b);
            children.Add(Build(e, i, j, depth + 1));
            i = j;
        }
        return new Node { Keys = [.. keys], Children = [.. children], Tokens = [.. tokens] };
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
