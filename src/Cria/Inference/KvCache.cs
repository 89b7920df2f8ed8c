using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Inference;

/// <summary>
/// The key/value cache of every layer for many sequences, stored in fixed-size blocks taken from one pool
/// (vLLM's paged attention layout). Each sequence owns a block table; the k-th cached token of a sequence (its slot k)
/// lives in cell <c>table[k / BlockSize] * BlockSize + k % BlockSize</c>. Without eviction slot = position; eviction
/// (<see cref="DropBlocks"/>) removes whole blocks from the table, and <see cref="BlockPositions"/> keeps the original
/// position of each block's first token. Rows append at the end, and <see cref="Truncate"/> / <see cref="Remove"/>
/// give blocks back to the pool.
/// <para>
/// Storage (<see cref="KvFormat"/>): F32, F16, Q8_0 (per cell), or KIVI: keys quantized per channel over the G
/// tokens of a block (block size = G, scale and min per block and channel), values per token in groups of channels;
/// each sequence also keeps a ring of its most recent tokens in F16 (R + <c>ringSlack</c> positions), from which the
/// attention kernel reads the tokens that KIVI's residual window holds in full precision.
/// </para>
/// <para>
/// Prefix caching (vLLM's automatic prefix caching): a full block can be published under the hash of its token chain
/// (<see cref="PublishFullBlocks"/>); a new sequence whose prompt starts with the same chain takes those blocks by
/// reference (<see cref="AttachPrefix"/>) instead of recomputing them. Blocks are reference-counted; a published block
/// whose count drops to zero stays cached but counts as free, and is evicted (least recently used first) only when the
/// pool needs it. Only full blocks are ever shared, and a sequence never writes into a shared block: when
/// <see cref="Truncate"/> leaves a sequence ending inside a shared block, its next append copies that block first
/// (copy-on-write). KIVI caches take no prefix hits: a shared block holds only quantized data, while the new
/// sequence's residual window needs its tokens in full precision, so a hit would change the logits.
/// </para>
/// <para>
/// Hybrid attention (LongGen, <see cref="ModelConfig.WindowLayers"/>): the pool holds only the full-attention layers.
/// Each sequence keeps its windowed layers in a small private pool of its own (<see cref="WindowRingBlocks"/> blocks,
/// allocated with the sequence and reused after it), with a second block table: the sink blocks, then the blocks that
/// a query from <see cref="WindowSlack"/> positions back can still see. <see cref="TrimWindows"/> drops the others
/// after every forward step, so a sequence's windowed layers hold a bounded number of tokens however long it runs.
/// Such caches take no prefix hits (a shared block would lack the windowed layers).
/// </para>
/// </summary>
public sealed class KvCache : IKvBlockPool
{
    public const int DefaultBlockSize = 16;

    readonly byte[][] _k;        // [layer][cell * KeyRowBytes]    F32/F16: [cell][kvHead][hd]; Q8_0: [cell][kvDim/32 blocks of 34 B]; KIVI: [cell][kvDim codes]
    readonly byte[][] _v;        // [layer][cell * ValueRowBytes]  F32/F16/Q8_0 as keys; KIVI: [cell][kvDim codes]
    readonly ushort[][] _kParams; // KIVI: [layer][block][kvHead][3 + headDim]: F16 (d, dm, mlo), then (scale code | min code << 8) per channel of a key group
    readonly ushort[][] _vParams; // KIVI: [layer][cell * valueGroups * 2] (F16 scale, F16 min) per channel group of a value
    readonly Stack<ushort[][]> _rings = new();  // KIVI: free residual rings, [2 * layer (+1 for V)][slot * kvDim] F16
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
    internal sealed class Sequence(int maxBlocks)
    {
        public readonly List<int> Blocks = new(maxBlocks);
        public readonly List<int> BlockPos = new(maxBlocks);  // [block index] position of the block's first token
        public int Length;                                    // next position (all positions ever appended)
        public int Dropped;                                   // positions removed by eviction (whole blocks)
        public int Slots => Length - Dropped;
        public readonly List<ulong> Hashes = new(maxBlocks); // chain hash of each leading block already published (or taken from the cache)
        public int Published => Hashes.Count;
        public ulong LastHash => Hashes.Count == 0 ? 0 : Hashes[^1];
        public ushort[][]? Ring;                              // KIVI residual ring
        public float[]? Scores;                               // [slot] retention scores (eviction), lazily sized to the capacity
        // Hybrid attention: the windowed layers' private pool and block table (null without windowed layers).
        public WindowStore? Window;
    }

    /// <summary>One sequence's windowed layers: K and V storage of <see cref="WindowRingBlocks"/> blocks per windowed
    /// layer, its free blocks, and its block table (slot = position − Dropped, as the main table).</summary>
    internal sealed class WindowStore(int blocks, byte[][] k, byte[][] v)
    {
        public readonly byte[][] K = k, V = v;                   // [layer][cell * rowBytes]; empty for full-attention layers
        public readonly Stack<int> Free = new(blocks);
        public readonly List<int> Blocks = new(blocks);
        public readonly List<int> BlockPos = new(blocks);
        public int Dropped;

        public void Reset()
        {
            Blocks.Clear(); BlockPos.Clear(); Free.Clear(); Dropped = 0;
            for (int b = blocks - 1; b >= 0; b--) Free.Push(b);
        }
    }

    public KvFormat Format { get; }
    public int BlockSize { get; }
    public int BlockCount { get; }
    public int KvDim { get; }
    public int HeadDim { get; }
    public int LayerCount { get; }
    /// <summary>Bytes of one cell's keys / values in the block pool (KIVI key scales are per block, not here).</summary>
    public int KeyRowBytes { get; }
    public int ValueRowBytes { get; }
    /// <summary>KIVI: channels per value group; tokens of the residual ring.</summary>
    public int ValueGroup { get; }
    /// <summary>KIVI: ushorts of key parameters per block (per KV head: <see cref="Kivi.KeySuperParams"/> F16
    /// super-parameters and one 8 + 8-bit code pair per channel).</summary>
    public int KeyParamsPerBlock { get; }
    public int RingLength { get; }
    /// <summary>Most positions <see cref="Truncate"/> can take back from a sequence at once: a KIVI cache keeps only
    /// its ring's slack beyond the residual in F16 (speculative decoding must not draft more); a hybrid one keeps the
    /// window of a query <see cref="WindowSlack"/> positions back; others, any.</summary>
    public int MaxRollback => Format.IsKivi ? RingLength - Format.KiviResidual : _windowed != null ? WindowSlack : int.MaxValue;

    readonly bool[]? _windowed;                  // [layer] windowed (hybrid attention); null: every layer in the pool
    readonly Stack<WindowStore> _windowStores = new();
    readonly int _window, _windowSinks;
    /// <summary>Positions a hybrid cache's windowed layers keep beyond the window (how far a sequence may be truncated
    /// back: speculative drafts).</summary>
    public const int WindowSlack = 64;
    /// <summary>Blocks of each sequence's windowed-layer pool: the sink blocks, the window and its slack, and the most
    /// rows one forward step appends (<c>ringSlack</c>), each rounded up.</summary>
    public int WindowRingBlocks { get; }
    /// <summary>Layers held in the pool (all but the windowed ones).</summary>
    public int PooledLayerCount { get; }
    public bool HasWindowedLayers => _windowed != null;
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

    public KvCache(ModelConfig config, int capacityTokens, int blockSize = DefaultBlockSize, KvFormat? format = null, int ringSlack = 512)
        : this(config.KvDim, config.KvLayerCount, capacityTokens, blockSize, format, config.HeadDim, ringSlack,
               config.WindowLayers, config.Window, config.WindowSinks) { }

    /// <summary>A cache of <paramref name="layers"/> layers of <paramref name="kvDim"/> values per token (F32 unless
    /// <paramref name="format"/> says otherwise). For KIVI the block size is the group size G, and
    /// <paramref name="ringSlack"/> is the most rows of one sequence a forward step appends (its micro-batch).
    /// <paramref name="windowLayers"/> ([layers]): the layers kept per sequence in a window of <paramref name="window"/>
    /// positions after <paramref name="windowSinks"/> sinks, outside the pool.</summary>
    public KvCache(int kvDim, int layers, int capacityTokens, int blockSize = DefaultBlockSize, KvFormat? format = null, int headDim = 0, int ringSlack = 512,
                   bool[]? windowLayers = null, int window = 0, int windowSinks = 0)
    {
        if (capacityTokens < 1) throw new ArgumentOutOfRangeException(nameof(capacityTokens), capacityTokens, "context size must be positive");
        if (blockSize < 1) throw new ArgumentOutOfRangeException(nameof(blockSize));
        Format = format ?? KvFormat.F32;
        HeadDim = headDim > 0 ? headDim : kvDim;
        int bits = Format.KiviBits;
        if (Format.IsKivi)
        {
            int g = Format.KiviGroup, r = Format.KiviResidual;
            if (g < 8 || g % 8 != 0) throw new CriaException($"KIVI group size {g} must be a positive multiple of 8");
            if (r < g || r % g != 0) throw new CriaException($"KIVI residual length {r} must be a positive multiple of the group size {g}");
            blockSize = g;
            ValueGroup = Math.Min(g, HeadDim);
            if (HeadDim % ValueGroup != 0) throw new CriaException($"KIVI value group {ValueGroup} must divide the head dimension {HeadDim}");
            RingLength = r + Math.Max(1, ringSlack);
        }
        if (Format.Type == KvCacheType.Q8_0 && HeadDim % 32 != 0) throw new CriaException($"q8_0 KV cache needs a head dimension that is a multiple of 32, got {HeadDim}");
        BlockSize = blockSize;
        BlockCount = (capacityTokens + blockSize - 1) / blockSize;
        KvDim = kvDim;
        LayerCount = layers;
        KeyRowBytes = Format.Type switch
        {
            KvCacheType.F32 => kvDim * 4,
            KvCacheType.F16 => kvDim * 2,
            KvCacheType.Q8_0 => kvDim / 32 * 34,
            _ => kvDim * bits / 8,
        };
        ValueRowBytes = KeyRowBytes;
        KeyParamsPerBlock = Format.IsKivi ? kvDim + kvDim / HeadDim * Kivi.KeySuperParams : 0;
        long bytes = (long)BlockCount * blockSize * KeyRowBytes;
        if (bytes > Array.MaxLength) throw new CriaException($"KV cache of {capacityTokens} tokens x {KvDim} is too large for one layer buffer");
        if (windowLayers != null && windowLayers.Contains(true))
        {
            if (windowLayers.Length != layers || window < 1 || windowSinks < 0) throw new CriaException($"hybrid attention: {windowLayers.Length} layer flags for {layers} layers, window {window}, sinks {windowSinks}");
            if (Format.IsKivi) throw new CriaException("KIVI caches do not support hybrid (windowed) attention yet: use --kv-type f16, q8_0 or f32");
            _windowed = (bool[])windowLayers.Clone();
            _window = window; _windowSinks = windowSinks;
            WindowRingBlocks = (windowSinks + blockSize - 1) / blockSize + (window + WindowSlack + blockSize - 1) / blockSize
                             + (Math.Max(1, ringSlack) + blockSize - 1) / blockSize + 2;
        }
        _k = new byte[LayerCount][];
        _v = new byte[LayerCount][];
        for (int l = 0; l < LayerCount; l++)
        {
            bool pooled = _windowed == null || !_windowed[l];
            _k[l] = pooled ? new byte[bytes] : []; _v[l] = pooled ? new byte[bytes] : [];
            if (pooled) PooledLayerCount++;
        }
        _kParams = new ushort[Format.IsKivi ? LayerCount : 0][];
        _vParams = new ushort[Format.IsKivi ? LayerCount : 0][];
        for (int l = 0; l < _kParams.Length; l++)
        {
            _kParams[l] = new ushort[(long)BlockCount * KeyParamsPerBlock];
            _vParams[l] = new ushort[(long)BlockCount * blockSize * (kvDim / ValueGroup) * 2];
        }
        _free = new Stack<int>(BlockCount);
        for (int b = BlockCount - 1; b >= 0; b--) _free.Push(b);
        _refs = new int[BlockCount];
        _hash = new ulong[BlockCount];
        _blockTokens = new int[BlockCount][];
        _evictNode = new LinkedListNode<int>[BlockCount];
    }

    /// <summary>Bytes per token in the block pool, all layers, K and V (KIVI: codes, value scales and the key
    /// parameters of a block spread over its G tokens; the F16 residual ring is counted by <see cref="RingBytesPerSequence"/>).</summary>
    public double BytesPerToken => Format.IsKivi
        ? LayerCount * (2.0 * KeyRowBytes + KeyParamsPerBlock * 2.0 / BlockSize + KvDim / ValueGroup * 4.0)
        : 2.0 * PooledLayerCount * KeyRowBytes;

    /// <summary>Hybrid attention: bytes of one sequence's windowed-layer pool (K and V); 0 otherwise.</summary>
    public long WindowBytesPerSequence => _windowed == null ? 0 : 2L * (LayerCount - PooledLayerCount) * WindowRingBlocks * BlockSize * KeyRowBytes;

    /// <summary>Whether layer <paramref name="layer"/> lives in the sequences' window pools.</summary>
    public bool IsWindowed(int layer) => _windowed != null && _windowed[layer];

    /// <summary>KIVI: bytes of one sequence's F16 residual ring (R + slack tokens, all layers, K and V); 0 otherwise.</summary>
    public long RingBytesPerSequence => Format.IsKivi ? 2L * LayerCount * RingLength * KvDim * 2 : 0;

    /// <summary>The next position of a sequence (positions 0..Length-1 have been appended, some maybe evicted).</summary>
    public int Length(int sequenceId) => _seqs.TryGetValue(sequenceId, out var s) ? s.Length : 0;

    /// <summary>Tokens of a sequence held in the cache (its length minus evicted positions).</summary>
    public int Slots(int sequenceId) => _seqs.TryGetValue(sequenceId, out var s) ? s.Slots : 0;

    public bool Contains(int sequenceId) => _seqs.ContainsKey(sequenceId);

    internal Sequence GetSequence(int sequenceId) => _seqs[sequenceId];

    /// <summary>Blocks needed to grow a sequence by <paramref name="tokens"/> (including a copy-on-write of a shared
    /// last block).</summary>
    public int BlocksNeeded(int sequenceId, int tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) return (tokens + BlockSize - 1) / BlockSize;
        int need = (s.Slots + tokens + BlockSize - 1) / BlockSize;
        int extra = Math.Max(0, need - s.Blocks.Count);
        if (tokens > 0 && s.Slots % BlockSize != 0 && _refs[s.Blocks[s.Slots / BlockSize]] > 1) extra++;
        return extra;
    }

    /// <summary>Reserves cells for <paramref name="tokens"/> more positions of a sequence (creating it if new) and
    /// returns the first new position. Throws <see cref="KvCacheFullException"/> when the pool is exhausted.</summary>
    internal int Append(int sequenceId, int tokens)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s))
        {
            s = new Sequence(BlockCount);
            if (Format.IsKivi) s.Ring = _rings.Count > 0 ? _rings.Pop() : NewRing();
            if (_windowed != null) { s.Window = _windowStores.Count > 0 ? _windowStores.Pop() : NewWindowStore(); s.Window.Reset(); }
            _seqs.Add(sequenceId, s);
        }
        int need = BlocksNeeded(sequenceId, tokens);
        if (need > FreeBlocks)
            throw new KvCacheFullException($"KV cache is full: sequence {sequenceId} needs {need} more blocks of {BlockSize} tokens, {FreeBlocks} free (context size {Capacity})");
        if (tokens > 0 && s.Slots % BlockSize != 0)
        {
            int i = s.Slots / BlockSize, shared = s.Blocks[i];
            if (_refs[shared] > 1) // copy-on-write: never write into a block another sequence reads
            {
                int copy = Allocate();
                CopyBlock(shared, copy);
                Release(shared);
                s.Blocks[i] = copy;
            }
        }
        int blocks = (s.Slots + tokens + BlockSize - 1) / BlockSize;
        while (s.Blocks.Count < blocks) { s.BlockPos.Add(s.Blocks.Count * BlockSize + s.Dropped); s.Blocks.Add(Allocate()); }
        if (s.Window is { } w)
        {
            int wBlocks = (s.Length - w.Dropped + tokens + BlockSize - 1) / BlockSize;
            while (w.Blocks.Count < wBlocks)
            {
                if (w.Free.Count == 0) throw new InvalidOperationException($"sequence {sequenceId}: the windowed layers' {WindowRingBlocks} blocks are all in use (a step appended more rows than the cache was sized for)");
                w.BlockPos.Add(w.Blocks.Count * BlockSize + w.Dropped); w.Blocks.Add(w.Free.Pop());
            }
        }
        int start = s.Length;
        s.Length += tokens;
        return start;
    }

    WindowStore NewWindowStore()
    {
        long bytes = (long)WindowRingBlocks * BlockSize * KeyRowBytes;
        var k = new byte[LayerCount][]; var v = new byte[LayerCount][];
        for (int l = 0; l < LayerCount; l++) { k[l] = _windowed![l] ? new byte[bytes] : []; v[l] = _windowed[l] ? new byte[bytes] : []; }
        return new WindowStore(WindowRingBlocks, k, v);
    }

    /// <summary>
    /// Hybrid attention, after a forward step: every listed sequence's windowed layers drop the blocks no later query
    /// can see — past the sinks, and wholly before the window of a query <see cref="WindowSlack"/> positions before its
    /// next one (so a truncation by up to that much still finds its window). The last block is always kept.
    /// </summary>
    internal void TrimWindows(ReadOnlySpan<int> sequences)
    {
        if (_windowed == null) return;
        for (int r = 0; r < sequences.Length; r++)
        {
            int id = sequences[r];
            if (r > 0 && sequences[r - 1] == id) continue; // a prefill's rows: once per run
            if (!_seqs.TryGetValue(id, out var s) || s.Window is not { } w) continue;
            int firstVisible = s.Length - WindowSlack - _window + 1; // the earliest window start of a query to come
            int n = w.Blocks.Count, kept = 0;
            for (int i = 0; i < n; i++)
            {
                int p0 = w.BlockPos[i];
                bool keep = i == n - 1 || p0 < _windowSinks || p0 + BlockSize > firstVisible;
                if (keep) { w.Blocks[kept] = w.Blocks[i]; w.BlockPos[kept] = p0; kept++; }
                else { w.Free.Push(w.Blocks[i]); w.Dropped += BlockSize; }
            }
            w.Blocks.RemoveRange(kept, n - kept);
            w.BlockPos.RemoveRange(kept, n - kept);
        }
    }

    ushort[][] NewRing()
    {
        var r = new ushort[2 * LayerCount][];
        for (int i = 0; i < r.Length; i++) r[i] = new ushort[(long)RingLength * KvDim];
        return r;
    }

    void CopyBlock(int from, int to)
    {
        int bs = BlockSize;
        for (int l = 0; l < LayerCount; l++)
        {
            if (IsWindowed(l)) continue; // not in the pool
            Array.Copy(_k[l], (long)from * bs * KeyRowBytes, _k[l], (long)to * bs * KeyRowBytes, (long)bs * KeyRowBytes);
            Array.Copy(_v[l], (long)from * bs * ValueRowBytes, _v[l], (long)to * bs * ValueRowBytes, (long)bs * ValueRowBytes);
            if (Format.IsKivi)
            {
                Array.Copy(_kParams[l], (long)from * KeyParamsPerBlock, _kParams[l], (long)to * KeyParamsPerBlock, KeyParamsPerBlock);
                int vp = bs * (KvDim / ValueGroup) * 2;
                Array.Copy(_vParams[l], (long)from * vp, _vParams[l], (long)to * vp, vp);
            }
        }
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

    /// <summary>The cell index holding position <paramref name="pos"/> of a sequence (a position after the last
    /// evicted block: the positions being appended).</summary>
    public int Cell(int sequenceId, int pos)
    {
        var s = _seqs[sequenceId];
        int slot = pos - s.Dropped;
        return s.Blocks[slot / BlockSize] * BlockSize + slot % BlockSize;
    }

    /// <summary>The block table of a sequence (block indices in position order).</summary>
    public IReadOnlyList<int> BlockTable(int sequenceId) => _seqs[sequenceId].Blocks;

    /// <summary>The block table as a span (valid until the sequence grows or shrinks).</summary>
    internal ReadOnlySpan<int> BlockTableSpan(int sequenceId) => CollectionsMarshal.AsSpan(_seqs[sequenceId].Blocks);

    /// <summary>Position of the first token of each block of the table.</summary>
    public ReadOnlySpan<int> BlockPositions(int sequenceId) => CollectionsMarshal.AsSpan(_seqs[sequenceId].BlockPos);

    /// <summary>Sequences holding a block (0 for a free or only-cached block).</summary>
    public int ReferenceCount(int block) => _refs[block];

    /// <summary>The F32 key / value storage of a layer (F32 caches only).</summary>
    public Span<float> Keys(int layer) => MemoryMarshal.Cast<byte, float>(F32Only(_k)[layer].AsSpan());
    public Span<float> Values(int layer) => MemoryMarshal.Cast<byte, float>(F32Only(_v)[layer].AsSpan());
    byte[][] F32Only(byte[][] a) => Format.Type == KvCacheType.F32 ? a : throw new InvalidOperationException($"the cache stores {Format}, not F32");

    internal byte[] KeyBytes(int layer) => _k[layer];
    internal byte[] ValueBytes(int layer) => _v[layer];
    internal ushort[] KeyParams(int layer) => _kParams[layer];
    internal ushort[] ValueParams(int layer) => _vParams[layer];

    /// <summary>
    /// Writes the (already rotated) key and value of position <paramref name="pos"/> of a sequence into its cell, in
    /// the cache's format. KIVI: both go to the F16 ring; the value is quantized now (per token), and the keys of a
    /// block are quantized per channel when its last token arrives (KIVI's per-channel groups of G tokens).
    /// </summary>
    internal void Store(int layer, int sequenceId, int pos, int cell, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        int kvDim = KvDim;
        byte[] kDst = _k[layer], vDst = _v[layer];
        if (IsWindowed(layer)) // the sequence's own pool, through its window table
        {
            var w = _seqs[sequenceId].Window!;
            int wSlot = pos - w.Dropped;
            cell = w.Blocks[wSlot / BlockSize] * BlockSize + wSlot % BlockSize;
            kDst = w.K[layer]; vDst = w.V[layer];
        }
        if (!Format.IsKivi)
        {
            EncodeRow(k, kDst.AsSpan(cell * KeyRowBytes, KeyRowBytes));
            EncodeRow(v, vDst.AsSpan(cell * ValueRowBytes, ValueRowBytes));
            return;
        }
        var s = _seqs[sequenceId];
        var ring = s.Ring!;
        int slot = pos % RingLength;
        var rk = ring[2 * layer].AsSpan(slot * kvDim, kvDim);
        var rv = ring[2 * layer + 1].AsSpan(slot * kvDim, kvDim);
        ToHalf(k, rk);
        ToHalf(v, rv);
        int bits = Format.KiviBits, vg = ValueGroup, groups = kvDim / vg;
        Span<float> x = stackalloc float[Math.Max(kvDim, BlockSize)];
        for (int i = 0; i < kvDim; i++) x[i] = Fp16.ToSingle(rv[i]);
        var vCodes = _v[layer].AsSpan(cell * ValueRowBytes, ValueRowBytes);
        var vp = _vParams[layer].AsSpan(cell * groups * 2, groups * 2);
        for (int q = 0; q < groups; q++)
        {
            var (scale, min) = Kivi.QuantizeGroup(x.Slice(q * vg), vg, 1, bits, vCodes.Slice(q * vg * bits / 8));
            vp[2 * q] = scale; vp[2 * q + 1] = min;
        }
        int bs = BlockSize;
        if (cell % bs != bs - 1) return;
        // The block is full: quantize its keys per channel over its G tokens (read back from the ring). Codes are
        // laid out per token like the values ([cell][channel]), so the kernel decodes a key row with the block's
        // per-channel scales; the quantization groups are still KIVI's (one channel over G tokens). The per-channel
        // scales and mins are 8-bit codes under F16 super-parameters per KV head (Kivi.FitKeyParams).
        int block = cell / bs, first = pos - (bs - 1), hd = HeadDim;
        var kr = ring[2 * layer];
        var kCodes = _k[layer].AsSpan(block * bs * KeyRowBytes, bs * KeyRowBytes);
        kCodes.Clear();
        Span<byte> groupCodes = stackalloc byte[bs * bits / 8 + 1];
        Span<float> mn = stackalloc float[hd], mx = stackalloc float[hd], kScale = stackalloc float[hd], kMin = stackalloc float[hd];
        for (int h = 0; h < kvDim / hd; h++)
        {
            for (int c = 0; c < hd; c++)
            {
                float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
                for (int t = 0; t < bs; t++) { float y = Fp16.ToSingle(kr[(first + t) % RingLength * kvDim + h * hd + c]); lo = MathF.Min(lo, y); hi = MathF.Max(hi, y); }
                mn[c] = lo; mx[c] = hi;
            }
            var kp = _kParams[layer].AsSpan(block * KeyParamsPerBlock + h * (Kivi.KeySuperParams + hd), Kivi.KeySuperParams + hd);
            Kivi.FitKeyParams(mn, mx, bits, kp);
            Kivi.DecodeKeyParams(kp, kScale, kMin);
            for (int c = 0; c < hd; c++)
            {
                int ch = h * hd + c;
                for (int t = 0; t < bs; t++) x[t] = Fp16.ToSingle(kr[(first + t) % RingLength * kvDim + ch]);
                Kivi.QuantizeWith(x, bs, 1, kScale[c], kMin[c], bits, groupCodes);
                int bit = ch * bits;
                for (int t = 0; t < bs; t++) kCodes[t * KeyRowBytes + (bit >> 3)] |= (byte)(Kivi.Code(groupCodes, t, bits) << (bit & 7));
            }
        }
    }

    /// <summary>One K or V row into an F32, F16 or Q8_0 cache row (not KIVI, whose rows are coded per group).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void EncodeRow(ReadOnlySpan<float> x, Span<byte> dst)
    {
        switch (Format.Type)
        {
            case KvCacheType.F32: x.CopyTo(MemoryMarshal.Cast<byte, float>(dst)); return;
            case KvCacheType.F16: ToHalf(x, MemoryMarshal.Cast<byte, ushort>(dst)); return;
            default: Quantize.Row(GgmlType.Q8_0, x, dst); return;
        }
    }

    /// <summary>The inverse of <see cref="EncodeRow"/>.</summary>
    void DecodeRow(ReadOnlySpan<byte> src, Span<float> x)
    {
        switch (Format.Type)
        {
            case KvCacheType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(x); return;
            case KvCacheType.F16: { var h = MemoryMarshal.Cast<byte, ushort>(src); for (int j = 0; j < x.Length; j++) x[j] = Fp16.ToSingle(h[j]); return; }
            default: Dequantize.Row(GgmlType.Q8_0, src, x); return;
        }
    }

    static void ToHalf(ReadOnlySpan<float> x, Span<ushort> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = Fp16.FromSingle(x[i]);
    }

    /// <summary>
    /// Activation Beacon's condensing step: moves the keys and values of positions [from, from + count) of a sequence to
    /// [to, to + count) (to &lt; from) and drops every position from to + count on — the window's raw tokens, replaced by
    /// its beacons. Keys are stored rotated by their position, so each moved key is rotated by to − from (RoPE angles
    /// add); F32 caches keep it to rounding, F16 and Q8_0 re-encode it. Full-attention F32/F16/Q8_0 caches only.
    /// </summary>
    public void MoveRows(ModelConfig c, int sequenceId, int from, int to, int count)
    {
        if (Format.IsKivi || _windowed != null) throw new CriaException("Activation Beacon needs a plain KV cache (F32, F16 or Q8_0, no KIVI, no sliding windows)");
        var s = _seqs[sequenceId];
        if (to < 0 || to >= from || from + count > s.Length || s.Dropped != 0) throw new ArgumentOutOfRangeException(nameof(from));
        if (s.Published > 0) throw new CriaException("a sequence whose blocks are shared as a prefix cannot condense its windows");
        Span<float> k = stackalloc float[KvDim], rotation = stackalloc float[c.RopeDim];
        c.RopeRotation(to - from, rotation);
        for (int layer = 0; layer < LayerCount; layer++)
            for (int i = 0; i < count; i++)
            {
                int src = Cell(sequenceId, from + i), dst = Cell(sequenceId, to + i);
                DecodeRow(_k[layer].AsSpan(src * KeyRowBytes, KeyRowBytes), k);
                c.Rope(k, KvDim / HeadDim, rotation);
                EncodeRow(k, _k[layer].AsSpan(dst * KeyRowBytes, KeyRowBytes));
                _v[layer].AsSpan(src * ValueRowBytes, ValueRowBytes).CopyTo(_v[layer].AsSpan(dst * ValueRowBytes, ValueRowBytes));
            }
        Truncate(sequenceId, to + count);
    }

    /// <summary>Drops every position ≥ <paramref name="length"/> of a sequence (llama_memory_seq_rm(seq, length, -1)).
    /// A KIVI sequence can lose at most ring-slack positions at once (its ring must still hold the window).</summary>
    public void Truncate(int sequenceId, int length)
    {
        if (!_seqs.TryGetValue(sequenceId, out var s)) return;
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length));
        if (length >= s.Length) return;
        if (length > 0 && s.Length - length > MaxRollback)
            throw new CriaException($"a {(Format.IsKivi ? "KIVI" : "hybrid-attention")} cache can drop at most {MaxRollback} positions at once ({s.Length - length} asked)");
        if (s.Window is { } w)
        {
            int wKeep = KeptBlocks(w.BlockPos, length, out int wSlots);
            w.Dropped = length - wSlots;
            for (int i = w.Blocks.Count - 1; i >= wKeep; i--) { w.Free.Push(w.Blocks[i]); w.Blocks.RemoveAt(i); w.BlockPos.RemoveAt(i); }
        }
        int keep = KeptBlocks(s.BlockPos, length, out int slots);
        s.Length = length;
        s.Dropped = length - slots;
        for (int i = s.Blocks.Count - 1; i >= keep; i--) { Release(s.Blocks[i]); s.Blocks.RemoveAt(i); s.BlockPos.RemoveAt(i); }
        int fullKept = slots / BlockSize;
        if (s.Published > fullKept)
        {
            // The block now partly kept will be written again: if only this sequence holds it, its published
            // contents are about to change, so take it out of the prefix cache (shared ones are copied on write).
            if (keep > fullKept && _refs[s.Blocks[fullKept]] == 1) Unpublish(s.Blocks[fullKept]);
            s.Hashes.RemoveRange(fullKept, s.Hashes.Count - fullKept);
        }
        if (length == 0 || slots == 0)
        {
            if (s.Ring != null) _rings.Push(s.Ring);
            if (s.Window != null) _windowStores.Push(s.Window);
            _seqs.Remove(sequenceId);
        }
    }

    /// <summary>Truncating a block table to <paramref name="length"/> positions: blocks starting at or after it go, the
    /// last kept block keeps its positions below it. Returns the blocks kept and, in <paramref name="slots"/>, the
    /// slots they hold.</summary>
    int KeptBlocks(List<int> blockPos, int length, out int slots)
    {
        int keep = blockPos.Count;
        while (keep > 0 && blockPos[keep - 1] >= length) keep--;
        slots = keep == 0 ? 0 : (keep - 1) * BlockSize + Math.Min(BlockSize, length - blockPos[keep - 1]);
        return keep;
    }

    /// <summary>
    /// Eviction: removes the blocks of a sequence whose <paramref name="keep"/> entry is false (only full blocks; the
    /// last block is always kept). The kept tokens keep their original positions (their keys were rotated by them),
    /// their retention scores move with them.
    /// </summary>
    public void DropBlocks(int sequenceId, ReadOnlySpan<bool> keep)
    {
        var s = _seqs[sequenceId];
        if (s.Window != null) throw new CriaException("KV eviction is not supported with hybrid (windowed) attention: its windowed layers already keep a bounded window");
        int n = s.Blocks.Count, bs = BlockSize, w = 0;
        var scores = s.Scores;
        for (int i = 0; i < n; i++)
        {
            if (keep[i] || i == n - 1)
            {
                if (w != i)
                {
                    s.Blocks[w] = s.Blocks[i]; s.BlockPos[w] = s.BlockPos[i];
                    if (scores != null) Array.Copy(scores, i * bs, scores, w * bs, bs);
                }
                w++;
            }
            else
            {
                Release(s.Blocks[i]);
                s.Dropped += bs;
                if (s.Hashes.Count > i) s.Hashes.RemoveRange(i, s.Hashes.Count - i);
            }
        }
        s.Blocks.RemoveRange(w, n - w);
        s.BlockPos.RemoveRange(w, n - w);
        if (scores != null) Array.Clear(scores, s.Slots, scores.Length - s.Slots);
    }

    /// <summary>Retention scores of a sequence's slots (accumulated attention for H2O, the observation window's
    /// attention for SnapKV), sized to the capacity on first use.</summary>
    internal float[] Scores(int sequenceId)
    {
        var s = _seqs[sequenceId];
        return s.Scores ??= new float[Capacity + BlockSize];
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
        if (Format.IsKivi || _windowed != null) return 0;
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
            s.BlockPos.Add(s.Length);
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
        if (!_seqs.TryGetValue(sequenceId, out var s) || s.Dropped > 0 || Format.IsKivi || _windowed != null) return;
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
    /// <summary>Drops a sequence's positions from <paramref name="length"/> on.</summary>
    void Truncate(int sequenceId, int length);
    int AttachPrefix(int sequenceId, ReadOnlySpan<int> tokens);
}

/// <summary>The KV cache has no free block for the requested tokens.</summary>
public sealed class KvCacheFullException(string message) : CriaException(message);
