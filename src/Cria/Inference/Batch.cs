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
        if (Beacons) throw new InvalidOperationException("a batch holds beacon rows or token rows, not both");
        return Append(token, position, sequenceId, wantLogits);
    }

    int Append(int token, int position, int sequenceId, bool wantLogits)
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

    public void Clear() { Count = 0; Beacons = false; }

    /// <summary>Activation Beacon: every row of this batch is a beacon token (<see cref="BeaconStream"/>), with the
    /// beacon embedding and attention projections, and each row skips the keys of <see cref="Holes"/>.</summary>
    public bool Beacons { get; private set; }
    int[] _holes = [];

    /// <summary>[row, 2] the key positions [start, end) each beacon row does not see (empty unless <see cref="Beacons"/>).</summary>
    public ReadOnlySpan<int> Holes => Beacons ? _holes.AsSpan(0, 2 * Count) : default;

    /// <summary>Appends a beacon row at <paramref name="position"/> that does not see keys at positions
    /// [<paramref name="holeStart"/>, <paramref name="holeEnd"/>); a batch holds beacon rows only.</summary>
    public int AddBeacon(int position, int sequenceId, int holeStart, int holeEnd)
    {
        if (Count > 0 && !Beacons) throw new InvalidOperationException("a batch holds beacon rows or token rows, not both");
        Beacons = true;
        int row = Append(0, position, sequenceId, false);
        if (_holes.Length < 2 * Count) Array.Resize(ref _holes, 2 * _tokens.Length);
        _holes[2 * row] = holeStart; _holes[2 * row + 1] = holeEnd;
        return row;
    }
}
