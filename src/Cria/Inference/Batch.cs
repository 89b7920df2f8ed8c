namespace Cria.Inference;

/// <summary>
/// One forward step's input: rows of (token, position, sequence id, want logits) — llama.cpp's llama_batch.
/// A prompt, a single decode step, a chunk of a long prompt and decodes of many sequences are all batches.
/// Rows of one sequence must be in increasing position order and continue that sequence's cache.
/// </summary>
public sealed class Batch
{
    int[] _tokens, _positions, _sequences;
    bool[] _wantLogits;

    public Batch(int capacity = 512)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity));
        _tokens = new int[capacity]; _positions = new int[capacity]; _sequences = new int[capacity]; _wantLogits = new bool[capacity];
    }

    public int Count { get; private set; }
    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, Count);
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, Count);
    public ReadOnlySpan<int> Sequences => _sequences.AsSpan(0, Count);
    public ReadOnlySpan<bool> WantLogits => _wantLogits.AsSpan(0, Count);

    /// <summary>Appends a row; returns its index (the index to read its logits by).</summary>
    public int Add(int token, int position, int sequenceId, bool wantLogits)
    {
        if (Count == _tokens.Length)
        {
            int n = _tokens.Length * 2;
            Array.Resize(ref _tokens, n); Array.Resize(ref _positions, n); Array.Resize(ref _sequences, n); Array.Resize(ref _wantLogits, n);
        }
        _tokens[Count] = token; _positions[Count] = position; _sequences[Count] = sequenceId; _wantLogits[Count] = wantLogits;
        return Count++;
    }

    /// <summary>Adds a run of tokens of one sequence at consecutive positions; logits only for the last when asked.</summary>
    public void AddSequence(ReadOnlySpan<int> tokens, int startPosition, int sequenceId, bool logitsForLast = true)
    {
        for (int i = 0; i < tokens.Length; i++) Add(tokens[i], startPosition + i, sequenceId, logitsForLast && i == tokens.Length - 1);
    }

    public void Clear() => Count = 0;
}
