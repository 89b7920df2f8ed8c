using Cria.Models;

namespace Cria.Inference;

/// <summary>
/// The key/value cache of every layer for many sequences, stored in fixed-size blocks taken from one pool
/// (vLLM's paged attention layout). Each sequence owns a block table; the token at position p of a sequence lives in
/// cell <c>table[p / BlockSize] * BlockSize + p % BlockSize</c>. Positions of a sequence are always 0..Length-1:
/// rows append at the end, and <see cref="Truncate"/> / <see cref="Remove"/> give blocks back to the pool.
/// Values are stored as F32 (exact against llama.cpp's F32 cache).
/// </summary>
public sealed class KvCache
{
    public const int DefaultBlockSize = 16;

    readonly float[][] _k; // [layer][cell * kvDim + kvHead * headDim + i]
    readonly float[][] _v; // same layout as _k
    readonly Stack<int> _free;
    readonly Dictionary<int, Sequence> _seqs = new();

    sealed class Sequence
    {
        public readonly List<int> Blocks = new();
        public int Length;
    }

    public int BlockSize { get; }
    public int BlockCount { get; }
    public int KvDim { get; }
    public int LayerCount { get; }
    /// <summary>Total token capacity over all sequences (llama.cpp's n_ctx).</summary>
    public int Capacity => BlockCount * BlockSize;
    public int FreeBlocks => _free.Count;
    public int UsedBlocks => BlockCount - _free.Count;
    public IEnumerable<int> SequenceIds => _seqs.Keys;

    public KvCache(ModelConfig config, int capacityTokens, int blockSize = DefaultBlockSize)
    {
        if (capacityTokens < 1) throw new ArgumentOutOfRangeException(nameof(capacityTokens), capacityTokens, "context size must be positive");
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize));
        BlockSize = blockSize;
        BlockCount = (capacityTokens + blockSize - 1) / blockSize;
        KvDim = config.KvDim;
        LayerCount = config.LayerCount;
        long floats = (long)BlockCount * blockSize * KvDim;
        if (floats > Array.MaxLength) throw new CriaException($"KV cache of {capacityTokens} tokens x {KvDim} is too large for one layer buffer");
        _k = new float[LayerCount][];
        _v = new float[LayerCount][];
        for (int l = 0; l < LayerCount; l++) { _k[l] = new float[floats]; _v[l] = new float[floats]; }
        _free = new Stack<int>(BlockCount);
        for (int b = BlockCount - 1; b >= 0; b--) _free.Push(b);
    }

    public long BytesPerToken => 2L * LayerCount * KvDim * sizeof(float);

    public int Length(int sequenceId) => _seqs.TryGetValue(sequenceId, out var s) ? s.Length : 0;

    public bool Contains(int sequenceId) => _seqs.ContainsKey(sequenceId);

    /// <summary>Blocks needed to grow a sequence by <paramref name="tokens"/>.</summary>
    public int BlocksNeeded(int sequenceId, int tokens)
    {
        int len = Length(sequenceId);
        int have = _seqs.TryGetValue(sequenceId, out var s) ? s.Blocks.Count : 0;
        int need = (len + tokens + BlockSize - 1) / BlockSize;
        return Math.Max(0, need - have);
    }

    /// <summary>Reserves cells for <paramref name="tokens"/> more positions of a sequence (creating it if new) and
    /// returns the first new position. Throws <see cref="KvCacheFullException"/> when the pool is exhausted.</summary>
    internal int Append(int sequenceId, int tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) { s = new Sequence(); _seqs.Add(sequenceId, s); }
        int need = BlocksNeeded(sequenceId, tokens);
        if (need > _free.Count)
            throw new KvCacheFullException($"KV cache is full: sequence {sequenceId} needs {need} more blocks of {BlockSize} tokens, {_free.Count} free (context size {Capacity})");
        for (int i = 0; i < need; i++) s.Blocks.Add(_free.Pop());
        int start = s.Length;
        s.Length += tokens;
        return start;
    }

    /// <summary>The cell index holding position <paramref name="pos"/> of a sequence.</summary>
    public int Cell(int sequenceId, int pos)
    {
        var s = _seqs[sequenceId];
        return s.Blocks[pos / BlockSize] * BlockSize + pos % BlockSize;
    }

    /// <summary>The block table of a sequence (block indices in position order).</summary>
    public IReadOnlyList<int> BlockTable(int sequenceId) => _seqs[sequenceId].Blocks;

    /// <summary>The block table as a span (valid until the sequence grows or shrinks).</summary>
    internal ReadOnlySpan<int> BlockTableSpan(int sequenceId) => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_seqs[sequenceId].Blocks);

    public Span<float> Keys(int layer) => _k[layer];
    public Span<float> Values(int layer) => _v[layer];
    internal float[] KeyArray(int layer) => _k[layer];
    internal float[] ValueArray(int layer) => _v[layer];

    /// <summary>Drops every position ≥ <paramref name="length"/> of a sequence (llama_memory_seq_rm(seq, length, -1)).</summary>
    public void Truncate(int sequenceId, int length)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) return;
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length));
        if (length >= s.Length) return;
        s.Length = length;
        int keep = (length + BlockSize - 1) / BlockSize;
        for (int i = s.Blocks.Count - 1; i >= keep; i--) { _free.Push(s.Blocks[i]); s.Blocks.RemoveAt(i); }
        if (length == 0) _seqs.Remove(sequenceId);
    }

    /// <summary>Removes a sequence and returns all its blocks to the pool.</summary>
    public void Remove(int sequenceId) => Truncate(sequenceId, 0);

    public void Clear()
    {
        foreach (var id in _seqs.Keys.ToArray()) Remove(id);
    }
}

/// <summary>The KV cache has no free block for the requested tokens.</summary>
public sealed class KvCacheFullException(string message) : CriaException(message);
