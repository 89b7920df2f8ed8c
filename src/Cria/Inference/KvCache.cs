using Cria.Models;

namespace Cria.Inference;

/// <summary>
/// The key/value cache of every layer for many sequences, stored in fixed-size blocks taken from one pool
/// (vLLM's paged attention layout). Each sequence owns a block table; the token at position p of a sequence lives in
/// cell <c>table[p / BlockSize] * BlockSize + p % BlockSize</c>. Positions of a sequence are always 0..Length-1:
/// rows append at the end, and <see cref="Truncate"/> / <see cref="Remove"/> give blocks back to the pool.
/// Values are stored as F32 (exact against llama.cpp's F32 cache).
/// <para>
/// Prefix caching (vLLM's automatic prefix caching): a full block can be published under the hash of its token chain
/// (<see cref="PublishFullBlocks"/>); a new sequence whose prompt starts with the same chain takes those blocks by
/// reference (<see cref="AttachPrefix"/>) instead of recomputing them. Blocks are reference-counted; a published block
/// whose count drops to zero stays cached but counts as free, and is evicted (least recently used first) only when the
/// pool needs it. Only full blocks are ever shared, and a sequence never writes into a shared block: when
/// <see cref="Truncate"/> leaves a sequence ending inside a shared block, its next append copies that block first
/// (copy-on-write).
/// </para>
/// </summary>
public sealed class KvCache : IKvBlockPool
{
    public const int DefaultBlockSize = 16;

    readonly float[][] _k; // [layer][cell * kvDim + kvHead * headDim + i]
    readonly float[][] _v; // same layout as _k
    readonly Stack<int> _free;
    readonly Dictionary<int, Sequence> _seqs = new();
    readonly int[] _refs;                       // [block] sequences holding the block
    readonly ulong[] _hash;                     // [block] chain hash when published
    readonly int[]?[] _blockTokens;             // [block] the tokens of a published block (checked on lookup)
    readonly Dictionary<ulong, int> _cached = new();      // chain hash -> published block
    readonly LinkedList<int> _evictable = new();          // published blocks with no reference, least recently used first
    readonly LinkedListNode<int>?[] _evictNode;

    // Lists are sized for the largest possible sequence up front, so that growing a sequence during decode never
    // allocates (zero allocations per token).
    sealed class Sequence(int maxBlocks)
    {
        public readonly List<int> Blocks = new(maxBlocks);
        public int Length;
        public readonly List<ulong> Hashes = new(maxBlocks); // chain hash of each leading block already published (or taken from the cache)
        public int Published => Hashes.Count;
        public ulong LastHash => Hashes.Count == 0 ? 0 : Hashes[^1];
    }

    public int BlockSize { get; }
    public int BlockCount { get; }
    public int KvDim { get; }
    public int LayerCount { get; }
    /// <summary>Total token capacity over all sequences (llama.cpp's n_ctx).</summary>
    public int Capacity => BlockCount * BlockSize;
    /// <summary>Blocks a new allocation can take: never used, or cached with no reference (evictable).</summary>
    public int FreeBlocks => _free.Count + _evictable.Count;
    public int UsedBlocks => BlockCount - FreeBlocks;
    /// <summary>Published blocks currently held in the prefix cache (referenced or not).</summary>
    public int CachedBlocks => _cached.Count;
    public IEnumerable<int> SequenceIds => _seqs.Keys;
    /// <summary>Prompt tokens looked up in the prefix cache / found there (vLLM's prefix_cache_queries / hits).</summary>
    public long PrefixQueryTokens { get; private set; }
    public long PrefixHitTokens { get; private set; }

    public KvCache(ModelConfig config, int capacityTokens, int blockSize = DefaultBlockSize)
        : this(config.KvDim, config.LayerCount, capacityTokens, blockSize) { }

    /// <summary>A cache of <paramref name="layers"/> layers of <paramref name="kvDim"/> floats per token.</summary>
    public KvCache(int kvDim, int layers, int capacityTokens, int blockSize = DefaultBlockSize)
    {
        if (capacityTokens < 1) throw new ArgumentOutOfRangeException(nameof(capacityTokens), capacityTokens, "context size must be positive");
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize));
        BlockSize = blockSize;
        BlockCount = (capacityTokens + blockSize - 1) / blockSize;
        KvDim = kvDim;
        LayerCount = layers;
        long floats = (long)BlockCount * blockSize * KvDim;
        if (floats > Array.MaxLength) throw new CriaException($"KV cache of {capacityTokens} tokens x {KvDim} is too large for one layer buffer");
        _k = new float[LayerCount][];
        _v = new float[LayerCount][];
        for (int l = 0; l < LayerCount; l++) { _k[l] = new float[floats]; _v[l] = new float[floats]; }
        _free = new Stack<int>(BlockCount);
        for (int b = BlockCount - 1; b >= 0; b--) _free.Push(b);
        _refs = new int[BlockCount];
        _hash = new ulong[BlockCount];
        _blockTokens = new int[BlockCount][];
        _evictNode = new LinkedListNode<int>[BlockCount];
    }

    public long BytesPerToken => 2L * LayerCount * KvDim * sizeof(float);

    public int Length(int sequenceId) => _seqs.TryGetValue(sequenceId, out var s) ? s.Length : 0;

    public bool Contains(int sequenceId) => _seqs.ContainsKey(sequenceId);

    /// <summary>Blocks needed to grow a sequence by <paramref name="tokens"/> (including a copy-on-write of a shared
    /// last block).</summary>
    public int BlocksNeeded(int sequenceId, int tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) return (tokens + BlockSize - 1) / BlockSize;
        int need = (s.Length + tokens + BlockSize - 1) / BlockSize;
        int extra = Math.Max(0, need - s.Blocks.Count);
        if (tokens > 0 && s.Length % BlockSize != 0 && _refs[s.Blocks[s.Length / BlockSize]] > 1) extra++;
        return extra;
    }

    /// <summary>Reserves cells for <paramref name="tokens"/> more positions of a sequence (creating it if new) and
    /// returns the first new position. Throws <see cref="KvCacheFullException"/> when the pool is exhausted.</summary>
    internal int Append(int sequenceId, int tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) { s = new Sequence(BlockCount); _seqs.Add(sequenceId, s); }
        int need = BlocksNeeded(sequenceId, tokens);
        if (need > FreeBlocks)
            throw new KvCacheFullException($"KV cache is full: sequence {sequenceId} needs {need} more blocks of {BlockSize} tokens, {FreeBlocks} free (context size {Capacity})");
        if (tokens > 0 && s.Length % BlockSize != 0)
        {
            int i = s.Length / BlockSize, shared = s.Blocks[i];
            if (_refs[shared] > 1) // copy-on-write: never write into a block another sequence reads
            {
                int copy = Allocate();
                for (int l = 0; l < LayerCount; l++)
                {
                    Array.Copy(_k[l], (long)shared * BlockSize * KvDim, _k[l], (long)copy * BlockSize * KvDim, (long)BlockSize * KvDim);
                    Array.Copy(_v[l], (long)shared * BlockSize * KvDim, _v[l], (long)copy * BlockSize * KvDim, (long)BlockSize * KvDim);
                }
                Release(shared);
                s.Blocks[i] = copy;
            }
        }
        int blocks = (s.Length + tokens + BlockSize - 1) / BlockSize;
        while (s.Blocks.Count < blocks) s.Blocks.Add(Allocate());
        int start = s.Length;
        s.Length += tokens;
        return start;
    }

    int Allocate()
    {
        int b;
        if (_free.Count > 0) b = _free.Pop();
        else
        {
            var node = _evictable.First ?? throw new KvCacheFullException("KV cache is full");
            b = node.Value;
            _evictable.RemoveFirst();
            _evictNode[b] = null;
            Unpublish(b);
        }
        _refs[b] = 1;
        return b;
    }

    void Release(int b)
    {
        if (--_refs[b] > 0) return;
        if (_blockTokens[b] != null) _evictNode[b] = _evictable.AddLast(b); // keep its contents for a later prefix hit
        else _free.Push(b);
    }

    void Unpublish(int b)
    {
        if (_blockTokens[b] == null) return;
        if (_cached.TryGetValue(_hash[b], out var c) && c == b) _cached.Remove(_hash[b]);
        _blockTokens[b] = null;
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

    /// <summary>Sequences holding a block (0 for a free or only-cached block).</summary>
    public int ReferenceCount(int block) => _refs[block];

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
        for (int i = s.Blocks.Count - 1; i >= keep; i--) { Release(s.Blocks[i]); s.Blocks.RemoveAt(i); }
        int fullKept = length / BlockSize;
        if (s.Published > fullKept)
        {
            // The block now partly kept will be written again: if only this sequence holds it, its published
            // contents are about to change, so take it out of the prefix cache (shared ones are copied on write).
            if (keep > fullKept && _refs[s.Blocks[fullKept]] == 1) Unpublish(s.Blocks[fullKept]);
            s.Hashes.RemoveRange(fullKept, s.Hashes.Count - fullKept);
        }
        if (length == 0) _seqs.Remove(sequenceId);
    }

    /// <summary>Removes a sequence and returns all its blocks to the pool.</summary>
    public void Remove(int sequenceId) => Truncate(sequenceId, 0);

    public void Clear()
    {
        foreach (var id in _seqs.Keys.ToArray()) Remove(id);
    }

    /// <summary>Empties the prefix cache: every unreferenced cached block goes back to the free list.</summary>
    public void ClearPrefixCache()
    {
        while (_evictable.First is { } n) { _evictable.RemoveFirst(); _evictNode[n.Value] = null; Unpublish(n.Value); _free.Push(n.Value); }
    }

    /// <summary>
    /// Starts a new sequence from the prefix cache: takes (by reference) the longest run of cached full blocks whose
    /// token chain equals the start of <paramref name="tokens"/>, leaving at least one token to compute (its logits
    /// are needed). Returns the number of tokens now in the cache for the sequence (a multiple of the block size).
    /// </summary>
    public int AttachPrefix(int sequenceId, ReadOnlySpan<int> tokens)
    {
        if (_seqs.ContainsKey(sequenceId)) throw new InvalidOperationException($"sequence {sequenceId} already has cache entries");
        int maxBlocks = Math.Max(0, (tokens.Length - 1) / BlockSize);
        PrefixQueryTokens += maxBlocks * BlockSize;
        ulong h = 0;
        Sequence? s = null;
        for (int i = 0; i < maxBlocks; i++)
        {
            var chunk = tokens.Slice(i * BlockSize, BlockSize);
            h = ChainHash(h, chunk);
            if (!_cached.TryGetValue(h, out int b) || !chunk.SequenceEqual(_blockTokens[b])) break;
            if (_refs[b] == 0 && _evictNode[b] is { } node) { _evictable.Remove(node); _evictNode[b] = null; }
            _refs[b]++;
            s ??= new Sequence(BlockCount);
            s.Blocks.Add(b);
            s.Length += BlockSize;
            s.Hashes.Add(h);
        }
        if (s == null) return 0;
        _seqs.Add(sequenceId, s);
        PrefixHitTokens += s.Length;
        return s.Length;
    }

    /// <summary>
    /// Publishes the sequence's full blocks not yet published into the prefix cache. <paramref name="tokens"/> are the
    /// sequence's tokens from position 0 (at least its cached length). A block whose chain is already cached under
    /// another block stays private.
    /// </summary>
    public void PublishFullBlocks(int sequenceId, ReadOnlySpan<int> tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) return;
        int full = Math.Min(s.Length, tokens.Length) / BlockSize;
        for (int i = s.Published; i < full; i++)
        {
            var chunk = tokens.Slice(i * BlockSize, BlockSize);
            ulong h = ChainHash(s.LastHash, chunk);
            int b = s.Blocks[i];
            if (_blockTokens[b] == null && !_cached.ContainsKey(h))
            {
                _hash[b] = h;
                _blockTokens[b] = chunk.ToArray();
                _cached.Add(h, b);
            }
            s.Hashes.Add(h);
        }
    }

    /// <summary>FNV-1a over the parent's hash and the block's tokens, then a final mix.</summary>
    static ulong ChainHash(ulong parent, ReadOnlySpan<int> tokens)
    {
        ulong h = 14695981039346656037UL ^ parent;
        h *= 1099511628211UL;
        foreach (int t in tokens) { h ^= (uint)t; h *= 1099511628211UL; }
        h ^= h >> 33; h *= 0xFF51AFD7ED558CCDUL; h ^= h >> 33;
        return h == 0 ? 1 : h;
    }
}

/// <summary>What the scheduler needs from a paged KV cache: block accounting, release and prefix lookup.</summary>
public interface IKvBlockPool
{
    int BlockSize { get; }
    int BlockCount { get; }
    int FreeBlocks { get; }
    int Length(int sequenceId);
    int BlocksNeeded(int sequenceId, int tokens);
    void Remove(int sequenceId);
    int AttachPrefix(int sequenceId, ReadOnlySpan<int> tokens);
}

/// <summary>The KV cache has no free block for the requested tokens.</summary>
public sealed class KvCacheFullException(string message) : CriaException(message);
