using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// Causal grouped-query attention of a micro-batch over the KV cache, fused: one work item is (batch row, KV head),
/// and it serves all query heads of that KV head's group, so each cached K and V row is read once per group rather
/// than once per query head. Positions are visited in tiles of <see cref="TileSize"/> with an online softmax
/// (running max and sum, FlashAttention-style rescaling), so no score row longer than a tile is kept, whatever the
/// context length. Each item's arithmetic depends only on its own row and sequence, never on the rest of the batch.
/// Reference: <see cref="AttendScalar"/>.
/// </summary>
internal sealed partial class AttentionJob : ParallelJob
{
    public const int TileSize = 64;

    readonly ModelConfig _c;
    readonly KvCache _cache;
    readonly bool _shiftPositions; // StreamingLLM position re-assignment after eviction (see Attend)
    readonly float[][] _scratch; // [worker][rows·group·TileSize scores | rows·group·headDim accumulators | TileSize·headDim K | TileSize·headDim V]
    int[] _itemRow = [], _itemRows = []; // [item group] first batch row (relative to start) and row count of each run of rows
    int _layer, _start, _rows, _next, _runs;
    float[] _q = [], _out = [];
    float[] _probs = [];         // [row, kvHead, slot] attention probabilities summed over the group's heads, when asked
    int _probStride;
    Batch? _batch;

    public AttentionJob(ModelConfig c, KvCache cache, int workers, bool shiftPositions = false)
    {
        _c = c; _cache = cache; _shiftPositions = shiftPositions;
        _scratch = new float[workers][];
        for (int i = 0; i < workers; i++) _scratch[i] = new float[ScratchLength(c)];
    }

    /// <summary>At most this many query rows of one sequence share each loaded K/V tile (prefill): the tile is
    /// dequantized (and its keys transposed) once for all of them instead of once per row. Runs are shortened, down to
    /// <see cref="MinRowsPerItem"/>, while a layer would have fewer than four items per worker. (TinyLlama's shape at
    /// depth 2048, one thread, `Cria.Bench attn-micro --runs 4,8,12,16`: 15.7, 17.7, 19.3, 20.4 GMAC/s.)</summary>
    public const int RowsPerItem = 16;
    const int MinRowsPerItem = 4;

    public static int ScratchLength(ModelConfig c) => RowsPerItem * c.GroupSize * (TileSize + c.HeadDim) + 3 * TileSize * c.HeadDim;

    /// <summary>Where the key tile's columns (<see cref="TransposeKeys"/>, [hd, TileSize]) start in a worker's scratch.</summary>
    static int KeyColumnsOffset(int group, int hd) => RowsPerItem * group * (TileSize + hd) + 2 * TileSize * hd;

    /// <summary>Scores run on the key tile's columns (<see cref="TileScoresColumns"/>) where 8-lane FMA and AVX's
    /// shuffles are there and the head dimension is a multiple of 8; otherwise on its rows (<see cref="TileScores"/>).</summary>
    internal static bool UsesKeyColumns(int hd) => Fma.IsSupported && Avx.IsSupported && hd % 8 == 0;

    /// <summary>Sets up one layer's attention for rows [start, start + rows) of the batch. With
    /// <paramref name="probs"/> (length ≥ rows · kvHeads · <paramref name="probStride"/>) each item also writes its
    /// softmax probabilities (summed over the group's query heads) per slot — what eviction policies score.</summary>
    public void Prepare(int layer, float[] q, float[] output, Batch batch, int start, int rows, float[]? probs = null, int probStride = 0)
    {
        _layer = layer; _q = q; _out = output; _batch = batch; _start = start; _rows = rows; _next = 0;
        _probs = probs ?? []; _probStride = probStride;
        // Runs of up to RowsPerItem consecutive rows of one sequence at consecutive positions share tiles. KIVI reads a
        // different mix of ring and quantized rows for each query position, and eviction scoring reads each row's
        // probabilities in a second pass: those run one row per item.
        int maxRun = _cache.Format.IsKivi || probs != null ? 1
                   : Math.Clamp(rows * _c.KvHeadCount / (4 * _scratch.Length), MinRowsPerItem, RowsPerItem);
        if (_itemRow.Length < rows) { _itemRow = new int[rows]; _itemRows = new int[rows]; }
        _runs = 0;
        for (int b = 0; b < rows;)
        {
            int n = 1, seq = batch.Sequences[start + b], pos = batch.Positions[start + b];
            while (n < maxRun && b + n < rows && batch.Sequences[start + b + n] == seq && batch.Positions[start + b + n] == pos + n) n++;
            _itemRow[_runs] = b; _itemRows[_runs] = n; _runs++;
            b += n;
        }
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public override void Execute(int worker, int workerCount)
    {
        var c = _c;
        int kvHeads = c.KvHeadCount;
        int items = _runs * kvHeads;
        var scratch = _scratch[worker];
        var kv = new KvLayer(_cache, _layer);
        Span<int> slots = stackalloc int[RowsPerItem];
        Span<float> max = stackalloc float[RowsPerItem * c.GroupSize], sum = stackalloc float[RowsPerItem * c.GroupSize]; // [rows, group] softmax state
        while (true)
        {
            int item = Interlocked.Increment(ref _next) - 1;
            if (item >= items) return;
            int run = item / kvHeads, g = item % kvHeads;
            int b = _itemRow[run], n = _itemRows[run];
            int row = _start + b;
            var s = _cache.GetSequence(_batch!.Sequences[row]);
            int p = _batch.Positions[row];
            int dropped = _shiftPositions ? s.Dropped : -1;
            // A windowed layer of a hybrid model reads the sequence's own window pool through its window table.
            var w = s.Window;
            bool own = w != null && _cache.IsWindowed(_layer);
            var kvSeq = own ? new KvLayer(_cache, _layer, w!) : kv;
            var table = CollectionsMarshal.AsSpan(own ? w!.Blocks : s.Blocks);
            var blockPos = CollectionsMarshal.AsSpan(own ? w!.BlockPos : s.BlockPos);
            int gone = own ? w!.Dropped : s.Dropped;
            if (n == 1)
            {
                var probs = _probs.Length == 0 ? Span<float>.Empty : _probs.AsSpan((b * kvHeads + g) * _probStride, _probStride);
                var hole = _batch.Holes;
                Attend(c, kvSeq, table, blockPos, s.Ring, p - gone + 1, p, g,
                       _q.AsSpan(b * c.QDim), _out.AsSpan(b * c.QDim), scratch, probs, dropped, hole.IsEmpty ? default : hole.Slice(2 * row, 2));
                continue;
            }
            for (int r = 0; r < n; r++) slots[r] = p + r - gone + 1;
            var holes = _batch.Holes;
            AttendRows(c, kvSeq, table, blockPos, s.Ring, n, slots, p + n - 1, g,
                       _q.AsSpan(b * c.QDim, n * c.QDim), _out.AsSpan(b * c.QDim, n * c.QDim), scratch, max, sum, dropped,
                       holes.IsEmpty ? default : holes.Slice(2 * row, 2 * n));
        }
    }

    /// <summary>One layer of the cache as the kernel reads it: storage arrays and format constants.</summary>
    internal readonly struct KvLayer(KvCache cache, int layer, KvCache.WindowStore? window = null)
    {
        public readonly KvCacheType Type = cache.Format.Type;
        public readonly byte[] K = window?.K[layer] ?? cache.KeyBytes(layer), V = window?.V[layer] ?? cache.ValueBytes(layer);
        public readonly ushort[]? KParams = cache.Format.IsKivi ? cache.KeyParams(layer) : null;
        public readonly ushort[]? VParams = cache.Format.IsKivi ? cache.ValueParams(layer) : null;
        public readonly int Layer = layer, BlockSize = cache.BlockSize, KvDim = cache.KvDim, RowBytes = cache.KeyRowBytes;
        public readonly int Bits = cache.Format.KiviBits, Residual = cache.Format.KiviResidual, RingLength = cache.RingLength;
        public readonly int ValueGroup = cache.ValueGroup, KeyParamsPerBlock = cache.KeyParamsPerBlock;
    }

    /// <summary>
    /// Attention of one row's query heads of KV group g over the first <paramref name="slots"/> cached tokens of its
    /// sequence (the row at position <paramref name="p"/> is the last). Each tile of K and V rows is dequantized into
    /// scratch from the cache's format (KIVI: the residual window from the F16 ring), then the same float arithmetic runs
    /// for every format. <paramref name="probs"/>, when not empty, receives Σ_h softmax_h per slot.
    /// <para>
    /// Position re-assignment (StreamingLLM, <paramref name="dropped"/> ≥ 0 = the positions the sequence has evicted):
    /// rotary positions are slots in the cache, not positions in the text. Keys are stored rotated by their text
    /// position, and RoPE scores depend only on the query–key distance, so instead of re-rotating the cache after every
    /// eviction (llama.cpp's K-shift, which re-quantizes quantized caches), each loaded key tile is rotated on the fly
    /// by Δ = dropped − (positions dropped before its block) = (p − slot_q) − (pos_k − slot_k): the distance the query
    /// sees becomes slot_q − slot_k. Blocks after every evicted one (the recent window) have Δ = 0 and cost nothing;
    /// with sinks only the sink blocks are rotated.
    /// </para>
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Attend(ModelConfig c, in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][]? ring,
                                int slots, int p, int g, ReadOnlySpan<float> qRow, Span<float> outRow, float[] scratch, Span<float> probs,
                                int dropped = -1, ReadOnlySpan<int> holes = default)
    {
        int hd = c.HeadDim, group = c.GroupSize;
        Span<float> max = stackalloc float[group];
        Span<float> sum = stackalloc float[group];
        Span<int> slotsOne = stackalloc int[1];
        slotsOne[0] = slots;
        bool windowed = c.IsWindowed(kv.Layer);
        bool fused = ring != null && !windowed && KiviFused(kv, hd, dropped);
        if (fused) AttendKivi(c, kv, table, blockPos, ring!, slots, p, g, qRow, outRow, scratch, max, sum);
        else AttendRows(c, kv, table, blockPos, ring, 1, slotsOne, p, g, qRow, outRow, scratch, max, sum, dropped, holes);
        if (probs.IsEmpty) return;
        if (!holes.IsEmpty) throw new InvalidOperationException("attention probabilities are not kept for beacon rows");
        float scale = 1.0f / MathF.Sqrt(hd);
        var scores = scratch.AsSpan(0, group * TileSize);
        var kTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd), TileSize * hd);
        var vTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd) + TileSize * hd, TileSize * hd);
        Span<float> rotation = stackalloc float[dropped > 0 ? c.RopeDim : 0];
        Span<float> qScaled = stackalloc float[fused ? group * hd + group : 0];
        var kCols = scratch.AsSpan(KeyColumnsOffset(group, hd), hd * TileSize);
        bool columns = UsesKeyColumns(hd);
        int rotationDelta = 0, h0 = g * group;
        // Second pass for eviction scores: the final probabilities of every slot, summed over the group's heads.
        for (int t0 = 0; t0 < slots; t0 += TileSize)
        {
            int n = Math.Min(TileSize, slots - t0);
            if (fused) KiviTileScores(kv, table, blockPos, ring!, t0, n, g, hd, group, p, qRow, scale, scores, kTile, qScaled, kCols);
            else
            {
                LoadTileForScores(c, kv, table, blockPos, ring, t0, n, g, p, dropped, columns, kTile, vTile, kCols, rotation, ref rotationDelta);
                if (columns) TileScoresColumns(qRow, kCols, n, h0, group, hd, scale, scores);
                else TileScores(qRow, kTile, n, h0, group, hd, scale, scores);
            }
            for (int j = 0; j < n; j++)
            {
                if (windowed && !c.WindowSees(p, SlotPosition(blockPos, kv.BlockSize, t0 + j))) { probs[t0 + j] = 0; continue; }
                float pr = 0;
                for (int h = 0; h < group; h++) pr += SoftmaxExp(scores[h * TileSize + j] - max[h]) / sum[h];
                probs[t0 + j] = pr;
            }
        }
    }

    /// <summary>
    /// <paramref name="rows"/> consecutive query rows of one sequence (positions pLast − rows + 1 … pLast; row r sees
    /// slots[r] cached tokens) against KV group g: each K/V tile is loaded (and shifted) once and every row that reaches
    /// it runs its own scores, online softmax and P·V on it. Per row the operations are exactly those of a single-row
    /// call (the tile holds the same values for the slots the row reads), so results do not depend on the grouping.
    /// <paramref name="max"/> / <paramref name="sum"/> ([rows, group]) return the softmax state. Not for KIVI with
    /// more than one row: which KIVI rows come from the F16 ring depends on the query position.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AttendRows(ModelConfig c, in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][]? ring,
                                    int rows, ReadOnlySpan<int> slots, int pLast, int g, ReadOnlySpan<float> q, Span<float> output,
                                    float[] scratch, Span<float> max, Span<float> sum, int dropped, ReadOnlySpan<int> holes = default)
    {
        int hd = c.HeadDim, group = c.GroupSize, qDim = c.QDim;
        float scale = 1.0f / MathF.Sqrt(hd);
        var scoresAll = scratch.AsSpan(0, rows * group * TileSize);                                  // [rows, group, TileSize]
        var accAll = scratch.AsSpan(RowsPerItem * group * TileSize, rows * group * hd);               // [rows, group, hd] un-normalised outputs
        var kTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd), TileSize * hd);             // [TileSize, hd]
        var vTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd) + TileSize * hd, TileSize * hd); // [TileSize, hd]
        var kCols = scratch.AsSpan(KeyColumnsOffset(group, hd), hd * TileSize);                       // [hd, TileSize] kTile transposed
        bool columns = UsesKeyColumns(hd);
        accAll.Clear();
        max.Slice(0, rows * group).Fill(float.NegativeInfinity);
        sum.Slice(0, rows * group).Clear();
        Span<float> rotation = stackalloc float[dropped > 0 ? c.RopeDim : 0]; // [nRot] cos/sin of the current shift
        int rotationDelta = 0;
        int h0 = g * group, maxSlots = 0;
        for (int r = 0; r < rows; r++) maxSlots = Math.Max(maxSlots, slots[r]);
        // LongGen's windowed layers: a row at position pq sees the sinks (positions < S) and positions > pq − W. Tiles
        // that no row of the run sees are not loaded; inside a tile the keys a row does not see score −∞ (e^−∞ = 0).
        bool windowed = c.IsWindowed(kv.Layer);
        int bs = kv.BlockSize, pFirst = pLast - rows + 1;
        for (int t0 = 0; t0 < maxSlots; t0 += TileSize)
        {
            int nAll = Math.Min(TileSize, maxSlots - t0);
            if (windowed && !c.WindowSeesAny(pFirst, SlotPosition(blockPos, bs, t0), SlotPosition(blockPos, bs, t0 + nAll - 1))) continue;
            LoadTileForScores(c, kv, table, blockPos, ring, t0, nAll, g, pLast, dropped, columns, kTile, vTile, kCols, rotation, ref rotationDelta);
            for (int r = 0; r < rows; r++)
            {
                if (slots[r] <= t0) continue;
                int n = Math.Min(TileSize, slots[r] - t0);
                int pq = pFirst + r, lo = 0, hi = 0;
                if (windowed)
                {
                    lo = SlotPosition(blockPos, bs, t0); hi = SlotPosition(blockPos, bs, t0 + n - 1);
                    if (!c.WindowSeesAny(pq, lo, hi)) continue;
                }
                // Activation Beacon: a beacon row does not see the raw tokens at positions [hole0, hole1) (their keys
                // score −∞); a tile wholly inside is skipped.
                int hole0 = holes.IsEmpty ? 0 : holes[2 * r], hole1 = holes.IsEmpty ? 0 : holes[2 * r + 1];
                if (hole0 < hole1 && SlotPosition(blockPos, bs, t0) >= hole0 && SlotPosition(blockPos, bs, t0 + n - 1) < hole1) continue;
                var scores = scoresAll.Slice(r * group * TileSize, group * TileSize);
                var acc = accAll.Slice(r * group * hd, group * hd);
                if (columns) TileScoresColumns(q.Slice(r * qDim, qDim), kCols, n, h0, group, hd, scale, scores);
                else TileScores(q.Slice(r * qDim, qDim), kTile, n, h0, group, hd, scale, scores);
                if (windowed && !c.WindowSeesAll(pq, lo, hi))
                    for (int j = 0; j < n; j++)
                        if (!c.WindowSees(pq, SlotPosition(blockPos, bs, t0 + j)))
                            for (int h = 0; h < group; h++) scores[h * TileSize + j] = float.NegativeInfinity;
                if (hole0 < hole1)
                    for (int j = 0; j < n; j++)
                    {
                        int pk = SlotPosition(blockPos, bs, t0 + j);
                        if (pk >= hole0 && pk < hole1)
                            for (int h = 0; h < group; h++) scores[h * TileSize + j] = float.NegativeInfinity;
                    }
                // online softmax: new max, rescale what was accumulated, exponentiate the tile.
                for (int h = 0; h < group; h++)
                {
                    var sc = scores.Slice(h * TileSize, n);
                    float m = max[r * group + h];
                    m = MathF.Max(m, MaxOf(sc));
                    float correction = MathF.Exp(max[r * group + h] - m); // 0 on the first tile (max was -inf)
                    float tileSum = ExpSubtractSum(sc, m);
                    sum[r * group + h] = sum[r * group + h] * correction + tileSum;
                    max[r * group + h] = m;
                    if (correction != 1f) Scale(acc.Slice(h * hd, hd), correction);
                }
                AccumulateValues(scores, vTile, n, group, hd, acc);
            }
        }
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < group; h++)
            {
                float inv = 1.0f / sum[r * group + h];
                var o = output.Slice(r * qDim + (h0 + h) * hd, hd);
                var a = accAll.Slice((r * group + h) * hd, hd);
                for (int i = 0; i < hd; i++) o[i] = a[i] * inv;
            }
    }

    /// <summary>The text position of the token in a sequence's cache slot (its block's first position + the offset).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int SlotPosition(ReadOnlySpan<int> blockPos, int bs, int slot) => blockPos[slot / bs] + slot % bs;

    /// <summary>Rotates the key rows of slots [t0, t0 + n) in kTile ([n, hd]) by their block's Δ (see <see cref="Attend"/>);
    /// <paramref name="rotation"/> holds the cos/sin of <paramref name="rotationDelta"/> and is recomputed when Δ changes.</summary>
    static void ShiftKeys(ModelConfig c, ReadOnlySpan<int> blockPos, int bs, int dropped, int t0, int n, Span<float> kTile,
                          Span<float> rotation, ref int rotationDelta)
    {
        int hd = c.HeadDim;
        for (int j = 0; j < n;)
        {
            int slot = t0 + j, bi = slot / bs, run = Math.Min(bs - slot % bs, n - j);
            int delta = dropped - (blockPos[bi] - bi * bs);
            if (delta != 0)
            {
                if (delta != rotationDelta) { c.RopeRotation(delta, rotation); rotationDelta = delta; }
                for (int r = 0; r < run; r++) c.Rope(kTile.Slice((j + r) * hd, hd), 1, rotation);
            }
            j += run;
        }
    }

    /// <summary>
    /// acc_h += Σ_j p_hj · v_j for the group's heads. With 512-bit vectors and hd a multiple of 16, each head's
    /// accumulator stays in registers (up to 64 lanes at a time) over the tile's rows; per element the FMAs run over j in
    /// the same order as the reference loop (<see cref="Ops.Axpy"/> per row and head), so the result is the same.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void AccumulateValues(ReadOnlySpan<float> scores, ReadOnlySpan<float> vTile, int n, int group, int hd, Span<float> acc)
    {
        if (!Vector512.IsHardwareAccelerated && Vector256.IsHardwareAccelerated && hd % 8 == 0)
        {
            AccumulateValues256(scores, vTile, n, group, hd, acc);
            return;
        }
        if (!Vector512.IsHardwareAccelerated || hd % 16 != 0)
        {
            for (int j = 0; j < n; j++)
            {
                var v = vTile.Slice(j * hd, hd);
                for (int h = 0; h < group; h++) Ops.Axpy(scores[h * TileSize + j], v, acc.Slice(h * hd, hd));
            }
            return;
        }
        ref float vr = ref MemoryMarshal.GetReference(vTile);
        for (int h = 0; h < group; h++)
        {
            ref float ar = ref MemoryMarshal.GetReference(acc.Slice(h * hd, hd));
            ref float sr = ref MemoryMarshal.GetReference(scores.Slice(h * TileSize, n));
            int c = 0;
            for (; c + 64 <= hd; c += 64)
            {
                var a0 = Vector512.LoadUnsafe(ref ar, (nuint)c); var a1 = Vector512.LoadUnsafe(ref ar, (nuint)c + 16);
                var a2 = Vector512.LoadUnsafe(ref ar, (nuint)c + 32); var a3 = Vector512.LoadUnsafe(ref ar, (nuint)c + 48);
                for (int j = 0; j < n; j++)
                {
                    var pj = Vector512.Create(Unsafe.Add(ref sr, j));
                    nuint o = (nuint)(j * hd + c);
                    a0 = Vector512.FusedMultiplyAdd(pj, Vector512.LoadUnsafe(ref vr, o), a0);
                    a1 = Vector512.FusedMultiplyAdd(pj, Vector512.LoadUnsafe(ref vr, o + 16), a1);
                    a2 = Vector512.FusedMultiplyAdd(pj, Vector512.LoadUnsafe(ref vr, o + 32), a2);
                    a3 = Vector512.FusedMultiplyAdd(pj, Vector512.LoadUnsafe(ref vr, o + 48), a3);
                }
                a0.StoreUnsafe(ref ar, (nuint)c); a1.StoreUnsafe(ref ar, (nuint)c + 16);
                a2.StoreUnsafe(ref ar, (nuint)c + 32); a3.StoreUnsafe(ref ar, (nuint)c + 48);
            }
            for (; c < hd; c += 16)
            {
                var a = Vector512.LoadUnsafe(ref ar, (nuint)c);
                for (int j = 0; j < n; j++)
                    a = Vector512.FusedMultiplyAdd(Vector512.Create(Unsafe.Add(ref sr, j)), Vector512.LoadUnsafe(ref vr, (nuint)(j * hd + c)), a);
                a.StoreUnsafe(ref ar, (nuint)c);
            }
        }
    }

    /// <summary><see cref="AccumulateValues"/> with 256-bit vectors (no AVX-512): two heads' accumulators in registers,
    /// 32 lanes of each at a time, over the tile's rows (each V load feeds both heads' FMAs); per element the reference
    /// loop's FMAs in its order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void AccumulateValues256(ReadOnlySpan<float> scores, ReadOnlySpan<float> vTile, int n, int group, int hd, Span<float> acc)
    {
        ref float vr = ref MemoryMarshal.GetReference(vTile);
        int h = 0;
        if (hd % 32 == 0)
            for (; h + 2 <= group; h += 2)
            {
                ref float ar = ref MemoryMarshal.GetReference(acc.Slice(h * hd, 2 * hd));
                ref float br = ref Unsafe.Add(ref ar, hd);
                ref float sr = ref MemoryMarshal.GetReference(scores.Slice(h * TileSize, TileSize + n));
                ref float tr = ref Unsafe.Add(ref sr, TileSize);
                for (int c = 0; c < hd; c += 32)
                {
                    var a0 = Vector256.LoadUnsafe(ref ar, (nuint)c); var a1 = Vector256.LoadUnsafe(ref ar, (nuint)c + 8);
                    var a2 = Vector256.LoadUnsafe(ref ar, (nuint)c + 16); var a3 = Vector256.LoadUnsafe(ref ar, (nuint)c + 24);
                    var b0 = Vector256.LoadUnsafe(ref br, (nuint)c); var b1 = Vector256.LoadUnsafe(ref br, (nuint)c + 8);
                    var b2 = Vector256.LoadUnsafe(ref br, (nuint)c + 16); var b3 = Vector256.LoadUnsafe(ref br, (nuint)c + 24);
                    for (int j = 0; j < n; j++)
                    {
                        ref float v = ref Unsafe.Add(ref vr, j * hd + c);
                        var v0 = Vector256.LoadUnsafe(ref v); var v1 = Vector256.LoadUnsafe(ref v, 8);
                        var v2 = Vector256.LoadUnsafe(ref v, 16); var v3 = Vector256.LoadUnsafe(ref v, 24);
                        var pa = Vector256.Create(Unsafe.Add(ref sr, j)); var pb = Vector256.Create(Unsafe.Add(ref tr, j));
                        a0 = Vector256.FusedMultiplyAdd(pa, v0, a0); a1 = Vector256.FusedMultiplyAdd(pa, v1, a1);
                        a2 = Vector256.FusedMultiplyAdd(pa, v2, a2); a3 = Vector256.FusedMultiplyAdd(pa, v3, a3);
                        b0 = Vector256.FusedMultiplyAdd(pb, v0, b0); b1 = Vector256.FusedMultiplyAdd(pb, v1, b1);
                        b2 = Vector256.FusedMultiplyAdd(pb, v2, b2); b3 = Vector256.FusedMultiplyAdd(pb, v3, b3);
                    }
                    a0.StoreUnsafe(ref ar, (nuint)c); a1.StoreUnsafe(ref ar, (nuint)c + 8);
                    a2.StoreUnsafe(ref ar, (nuint)c + 16); a3.StoreUnsafe(ref ar, (nuint)c + 24);
                    b0.StoreUnsafe(ref br, (nuint)c); b1.StoreUnsafe(ref br, (nuint)c + 8);
                    b2.StoreUnsafe(ref br, (nuint)c + 16); b3.StoreUnsafe(ref br, (nuint)c + 24);
                }
            }
        for (; h < group; h++)
        {
            ref float ar = ref MemoryMarshal.GetReference(acc.Slice(h * hd, hd));
            ref float sr = ref MemoryMarshal.GetReference(scores.Slice(h * TileSize, n));
            int c = 0;
            for (; c + 32 <= hd; c += 32)
            {
                var a0 = Vector256.LoadUnsafe(ref ar, (nuint)c); var a1 = Vector256.LoadUnsafe(ref ar, (nuint)c + 8);
                var a2 = Vector256.LoadUnsafe(ref ar, (nuint)c + 16); var a3 = Vector256.LoadUnsafe(ref ar, (nuint)c + 24);
                for (int j = 0; j < n; j++)
                {
                    var pj = Vector256.Create(Unsafe.Add(ref sr, j));
                    nuint o = (nuint)(j * hd + c);
                    a0 = Vector256.FusedMultiplyAdd(pj, Vector256.LoadUnsafe(ref vr, o), a0);
                    a1 = Vector256.FusedMultiplyAdd(pj, Vector256.LoadUnsafe(ref vr, o + 8), a1);
                    a2 = Vector256.FusedMultiplyAdd(pj, Vector256.LoadUnsafe(ref vr, o + 16), a2);
                    a3 = Vector256.FusedMultiplyAdd(pj, Vector256.LoadUnsafe(ref vr, o + 24), a3);
                }
                a0.StoreUnsafe(ref ar, (nuint)c); a1.StoreUnsafe(ref ar, (nuint)c + 8);
                a2.StoreUnsafe(ref ar, (nuint)c + 16); a3.StoreUnsafe(ref ar, (nuint)c + 24);
            }
            for (; c < hd; c += 8)
            {
                var a = Vector256.LoadUnsafe(ref ar, (nuint)c);
                for (int j = 0; j < n; j++)
                    a = Vector256.FusedMultiplyAdd(Vector256.Create(Unsafe.Add(ref sr, j)), Vector256.LoadUnsafe(ref vr, (nuint)(j * hd + c)), a);
                a.StoreUnsafe(ref ar, (nuint)c);
            }
        }
    }

    /// <summary>
    /// kCols[d, j] = kTile[j, d] for the tile's first ⌈n/8⌉·8 keys ([n, hd] → [hd, TileSize]), in 8 × 8 blocks (AVX
    /// unpacks, shuffles and lane permutes). Key rows past n in the last block are whatever the tile holds there; the
    /// scores they give are never read.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void TransposeKeys(ReadOnlySpan<float> kTile, int n, int hd, Span<float> kCols)
    {
        ref float src = ref MemoryMarshal.GetReference(kTile);
        ref float dst = ref MemoryMarshal.GetReference(kCols);
        for (int j = 0; j < n; j += 8)
            for (int d = 0; d < hd; d += 8)
            {
                ref float s0 = ref Unsafe.Add(ref src, j * hd + d);
                var r0 = Vector256.LoadUnsafe(ref s0); var r1 = Vector256.LoadUnsafe(ref s0, (nuint)hd);
                var r2 = Vector256.LoadUnsafe(ref s0, (nuint)(2 * hd)); var r3 = Vector256.LoadUnsafe(ref s0, (nuint)(3 * hd));
                var r4 = Vector256.LoadUnsafe(ref s0, (nuint)(4 * hd)); var r5 = Vector256.LoadUnsafe(ref s0, (nuint)(5 * hd));
                var r6 = Vector256.LoadUnsafe(ref s0, (nuint)(6 * hd)); var r7 = Vector256.LoadUnsafe(ref s0, (nuint)(7 * hd));
                StoreTransposed(r0, r1, r2, r3, r4, r5, r6, r7, ref Unsafe.Add(ref dst, d * TileSize + j));
            }
    }

    /// <summary>Stores the 8 × 8 block whose rows are r0…r7 transposed: column i of the block goes to
    /// dst[i · TileSize …]. AVX unpacks (pairs), shuffles (quads) and lane permutes (halves).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void StoreTransposed(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
                                Vector256<float> r4, Vector256<float> r5, Vector256<float> r6, Vector256<float> r7, ref float dst)
    {
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Permute2x128(u0, u4, 0x20).StoreUnsafe(ref dst);
        Avx.Permute2x128(u1, u5, 0x20).StoreUnsafe(ref dst, TileSize);
        Avx.Permute2x128(u2, u6, 0x20).StoreUnsafe(ref dst, 2 * TileSize);
        Avx.Permute2x128(u3, u7, 0x20).StoreUnsafe(ref dst, 3 * TileSize);
        Avx.Permute2x128(u0, u4, 0x31).StoreUnsafe(ref dst, 4 * TileSize);
        Avx.Permute2x128(u1, u5, 0x31).StoreUnsafe(ref dst, 5 * TileSize);
        Avx.Permute2x128(u2, u6, 0x31).StoreUnsafe(ref dst, 6 * TileSize);
        Avx.Permute2x128(u3, u7, 0x31).StoreUnsafe(ref dst, 7 * TileSize);
    }

    /// <summary>
    /// F16 cache, no position shift: slots [t0, t0 + n) of KV head g straight into the key columns (kCols [hd,
    /// TileSize]: eight keys' halves widened and transposed in registers, so the keys never pass through a row tile)
    /// and the value rows (vTile [n, hd]). The last group of eight repeats the last key past n. Same floats as
    /// <see cref="LoadTile"/> then <see cref="TransposeKeys"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void LoadF16Columns(in KvLayer kv, ReadOnlySpan<int> table, int t0, int n, int g, int hd, Span<float> kCols, Span<float> vTile)
    {
        int bs = kv.BlockSize, rb = kv.RowBytes, off = g * hd * 2;
        ushort** kp = stackalloc ushort*[8];
        fixed (byte* k = kv.K) fixed (byte* v = kv.V) fixed (float* kc = kCols) fixed (float* vt = vTile)
            for (int j = 0; j < n; j += 8)
            {
                for (int i = 0; i < 8; i++)
                {
                    int slot = t0 + Math.Min(j + i, n - 1);
                    long at = (long)(table[slot / bs] * bs + slot % bs) * rb + off;
                    kp[i] = (ushort*)(k + at);
                    if (j + i >= n) continue;
                    ushort* vr = (ushort*)(v + at);
                    float* vd = vt + (j + i) * hd;
                    for (int d = 0; d < hd; d += 8) RowKernels.LoadHalves8(vr + d).Store(vd + d);
                }
                for (int d = 0; d < hd; d += 8)
                    StoreTransposed(RowKernels.LoadHalves8(kp[0] + d), RowKernels.LoadHalves8(kp[1] + d), RowKernels.LoadHalves8(kp[2] + d),
                                    RowKernels.LoadHalves8(kp[3] + d), RowKernels.LoadHalves8(kp[4] + d), RowKernels.LoadHalves8(kp[5] + d),
                                    RowKernels.LoadHalves8(kp[6] + d), RowKernels.LoadHalves8(kp[7] + d), ref kc[d * TileSize + j]);
            }
    }

    /// <summary>One tile's keys and values as the score kernel reads them: rows (then shifted, then transposed when
    /// <paramref name="columns"/>), or for an unshifted F16 cache straight into columns.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void LoadTileForScores(ModelConfig c, in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][]? ring,
                                  int t0, int n, int g, int p, int dropped, bool columns, Span<float> kTile, Span<float> vTile,
                                  Span<float> kCols, Span<float> rotation, ref int rotationDelta)
    {
        int hd = c.HeadDim;
        if (columns && dropped <= 0 && kv.Type == KvCacheType.F16 && Avx2.IsSupported)
        {
            LoadF16Columns(kv, table, t0, n, g, hd, kCols, vTile);
            return;
        }
        LoadTile(kv, table, blockPos, ring, t0, n, g, hd, p, kTile, vTile);
        if (dropped > 0) ShiftKeys(c, blockPos, kv.BlockSize, dropped, t0, n, kTile, rotation, ref rotationDelta);
        if (columns) TransposeKeys(kTile, n, hd, kCols);
    }

    /// <summary>
    /// scores[h, j] = (q_h · k_j) · scale for the group's heads from the key tile's columns (kCols [hd, TileSize]):
    /// 8 keys per vector lane-wise, each score one FMA chain over d = 0, 1, …, hd − 1 in order (the scalar reference is
    /// <see cref="ScoreColumnsScalar"/>). Two heads × 32 keys at a time: per d two broadcasts and four loads feed eight
    /// FMAs, and no horizontal sums. Lanes past n are computed and left unread.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void TileScoresColumns(ReadOnlySpan<float> qRow, ReadOnlySpan<float> kCols, int n, int h0, int group, int hd, float scale, Span<float> scores)
    {
        ref float kc = ref MemoryMarshal.GetReference(kCols);
        ref float sc = ref MemoryMarshal.GetReference(scores);
        var vs = Vector256.Create(scale);
        int h = 0;
        for (; h + 2 <= group; h += 2)
        {
            ref float qa = ref MemoryMarshal.GetReference(qRow.Slice((h0 + h) * hd, hd));
            ref float qb = ref MemoryMarshal.GetReference(qRow.Slice((h0 + h + 1) * hd, hd));
            ref float sa = ref Unsafe.Add(ref sc, h * TileSize);
            ref float sb = ref Unsafe.Add(ref sc, (h + 1) * TileSize);
            int j = 0;
            for (; j + 24 < n; j += 32)
            {
                var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero; var a2 = Vector256<float>.Zero; var a3 = Vector256<float>.Zero;
                var b0 = Vector256<float>.Zero; var b1 = Vector256<float>.Zero; var b2 = Vector256<float>.Zero; var b3 = Vector256<float>.Zero;
                for (int d = 0; d < hd; d++)
                {
                    ref float k = ref Unsafe.Add(ref kc, d * TileSize + j);
                    var k0 = Vector256.LoadUnsafe(ref k); var k1 = Vector256.LoadUnsafe(ref k, 8);
                    var k2 = Vector256.LoadUnsafe(ref k, 16); var k3 = Vector256.LoadUnsafe(ref k, 24);
                    var x = Vector256.Create(Unsafe.Add(ref qa, d)); var y = Vector256.Create(Unsafe.Add(ref qb, d));
                    a0 = Vector256.FusedMultiplyAdd(x, k0, a0); a1 = Vector256.FusedMultiplyAdd(x, k1, a1);
                    a2 = Vector256.FusedMultiplyAdd(x, k2, a2); a3 = Vector256.FusedMultiplyAdd(x, k3, a3);
                    b0 = Vector256.FusedMultiplyAdd(y, k0, b0); b1 = Vector256.FusedMultiplyAdd(y, k1, b1);
                    b2 = Vector256.FusedMultiplyAdd(y, k2, b2); b3 = Vector256.FusedMultiplyAdd(y, k3, b3);
                }
                (a0 * vs).StoreUnsafe(ref sa, (nuint)j); (a1 * vs).StoreUnsafe(ref sa, (nuint)j + 8);
                (a2 * vs).StoreUnsafe(ref sa, (nuint)j + 16); (a3 * vs).StoreUnsafe(ref sa, (nuint)j + 24);
                (b0 * vs).StoreUnsafe(ref sb, (nuint)j); (b1 * vs).StoreUnsafe(ref sb, (nuint)j + 8);
                (b2 * vs).StoreUnsafe(ref sb, (nuint)j + 16); (b3 * vs).StoreUnsafe(ref sb, (nuint)j + 24);
            }
            for (; j < n; j += 8)
            {
                var a = Vector256<float>.Zero; var b = Vector256<float>.Zero;
                for (int d = 0; d < hd; d++)
                {
                    var k = Vector256.LoadUnsafe(ref kc, (nuint)(d * TileSize + j));
                    a = Vector256.FusedMultiplyAdd(Vector256.Create(Unsafe.Add(ref qa, d)), k, a);
                    b = Vector256.FusedMultiplyAdd(Vector256.Create(Unsafe.Add(ref qb, d)), k, b);
                }
                (a * vs).StoreUnsafe(ref sa, (nuint)j); (b * vs).StoreUnsafe(ref sb, (nuint)j);
            }
        }
        for (; h < group; h++)
        {
            ref float qa = ref MemoryMarshal.GetReference(qRow.Slice((h0 + h) * hd, hd));
            ref float sa = ref Unsafe.Add(ref sc, h * TileSize);
            for (int j = 0; j < n; j += 8)
            {
                var a = Vector256<float>.Zero;
                for (int d = 0; d < hd; d++)
                    a = Vector256.FusedMultiplyAdd(Vector256.Create(Unsafe.Add(ref qa, d)), Vector256.LoadUnsafe(ref kc, (nuint)(d * TileSize + j)), a);
                (a * vs).StoreUnsafe(ref sa, (nuint)j);
            }
        }
    }

    /// <summary>Scalar reference for <see cref="TileScoresColumns"/>: one score, an FMA chain over d in order.</summary>
    internal static float ScoreColumnsScalar(ReadOnlySpan<float> q, ReadOnlySpan<float> k, float scale)
    {
        float s = 0;
        for (int d = 0; d < q.Length; d++) s = MathF.FusedMultiplyAdd(q[d], k[d], s);
        return s * scale;
    }

    /// <summary>scores[h, j] = q_h · k_j · scale for every query head of the group from the key rows: where
    /// <see cref="UsesKeyColumns"/> is false (no AVX/FMA, or a head dimension not a multiple of 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void TileScores(ReadOnlySpan<float> qRow, ReadOnlySpan<float> kTile, int n, int h0, int group, int hd, float scale, Span<float> scores)
    {
        for (int j = 0; j < n; j++)
        {
            var k = kTile.Slice(j * hd, hd);
            for (int h = 0; h < group; h++)
                scores[h * TileSize + j] = Ops.Dot(qRow.Slice((h0 + h) * hd, hd), k) * scale;
        }
    }

    /// <summary>
    /// Dequantizes slots [t0, t0 + n) of KV head g into kTile / vTile ([n, hd] floats), a run of slots of one block at
    /// a time. KIVI: for the query at position p, keys at positions ≥ <see cref="Kivi.QuantizedKeyEnd"/> and values at
    /// positions ≥ <see cref="Kivi.QuantizedValueEnd"/> are KIVI's full-precision residual and come from the F16 ring.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void LoadTile(in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][]? ring,
                                  int t0, int n, int g, int hd, int p, Span<float> kTile, Span<float> vTile)
    {
        int bs = kv.BlockSize, kvDim = kv.KvDim, rb = kv.RowBytes, off = g * hd;
        for (int j = 0; j < n;)
        {
            int slot = t0 + j, bi = slot / bs, r0 = slot % bs, run = Math.Min(bs - r0, n - j);
            int cell0 = table[bi] * bs + r0;
            switch (kv.Type)
            {
                case KvCacheType.F32:
                    for (int r = 0; r < run; r++)
                    {
                        int at = (cell0 + r) * rb + off * 4;
                        MemoryMarshal.Cast<byte, float>(kv.K.AsSpan(at, hd * 4)).CopyTo(kTile.Slice((j + r) * hd, hd));
                        MemoryMarshal.Cast<byte, float>(kv.V.AsSpan(at, hd * 4)).CopyTo(vTile.Slice((j + r) * hd, hd));
                    }
                    break;
                case KvCacheType.F16:
                    for (int r = 0; r < run; r++)
                    {
                        int at = (cell0 + r) * rb + off * 2;
                        HalfToSingle(MemoryMarshal.Cast<byte, ushort>(kv.K.AsSpan(at, hd * 2)), kTile.Slice((j + r) * hd, hd));
                        HalfToSingle(MemoryMarshal.Cast<byte, ushort>(kv.V.AsSpan(at, hd * 2)), vTile.Slice((j + r) * hd, hd));
                    }
                    break;
                case KvCacheType.Q8_0:
                    for (int r = 0; r < run; r++)
                    {
                        int at = (cell0 + r) * rb + off / 32 * 34;
                        Q8_0ToSingle(kv.K.AsSpan(at, hd / 32 * 34), kTile.Slice((j + r) * hd, hd));
                        Q8_0ToSingle(kv.V.AsSpan(at, hd / 32 * 34), vTile.Slice((j + r) * hd, hd));
                    }
                    break;
                default:
                    LoadKiviRun(kv, table[bi], r0, run, blockPos[bi] + r0, g, hd, p, ring!, kTile.Slice(j * hd, run * hd), vTile.Slice(j * hd, run * hd));
                    break;
            }
            j += run;
        }
    }

    /// <summary>KIVI: tokens [r0, r0 + run) of cache block <paramref name="block"/> (positions pos0…) into [run, hd] tiles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void LoadKiviRun(in KvLayer kv, int block, int r0, int run, int pos0, int g, int hd, int p, ushort[][] ring, Span<float> kTile, Span<float> vTile)
    {
        int bs = kv.BlockSize, kvDim = kv.KvDim, bits = kv.Bits, off = g * hd;
        int kEnd = Kivi.QuantizedKeyEnd(p, kv.Residual), vEnd = Kivi.QuantizedValueEnd(p, kv.Residual);
        var ringK = ring[2 * kv.Layer]; var ringV = ring[2 * kv.Layer + 1];
        // Keys: the block's per-channel scales and mins once, then each quantized token's row of codes; tokens in the
        // residual window from the ring.
        int quantK = Math.Clamp(kEnd - pos0, 0, run);
        if (quantK > 0)
        {
            Span<float> scale = stackalloc float[hd];
            Span<float> min = stackalloc float[hd];
            Kivi.DecodeKeyParams(kv.KParams!.AsSpan(block * kv.KeyParamsPerBlock + g * (Kivi.KeySuperParams + hd), Kivi.KeySuperParams + hd), scale, min);
            for (int r = 0; r < quantK; r++)
                Kivi.DequantizeRow(kv.K.AsSpan((block * bs + r0 + r) * kv.RowBytes + off * bits / 8, hd * bits / 8), bits, scale, min, kTile.Slice(r * hd, hd));
        }
        for (int r = quantK; r < run; r++)
            HalfToSingle(ringK.AsSpan((pos0 + r) % kv.RingLength * kvDim + off, hd), kTile.Slice(r * hd, hd));
        // Values: per token, groups of channels.
        int vg = kv.ValueGroup, groups = kvDim / vg;
        for (int r = 0; r < run; r++)
        {
            var dst = vTile.Slice(r * hd, hd);
            if (pos0 + r >= vEnd) { HalfToSingle(ringV.AsSpan((pos0 + r) % kv.RingLength * kvDim + off, hd), dst); continue; }
            int cell = block * bs + r0 + r;
            var codes = kv.V.AsSpan(cell * kv.RowBytes, kv.RowBytes);
            var vp = kv.VParams!.AsSpan(cell * groups * 2, groups * 2);
            for (int i = 0; i < hd; i += vg)
            {
                int q = (off + i) / vg;
                Kivi.DequantizeRow(codes.Slice((off + i) * bits / 8, vg * bits / 8), bits, Fp16.ToSingle(vp[2 * q]), Fp16.ToSingle(vp[2 * q + 1]), dst.Slice(i, vg));
            }
        }
    }

    /// <summary>F16 cache row → floats: 16 at a time with <see cref="RowKernels.LoadHalves"/> (exact, the same bits
    /// as <see cref="Fp16.ToSingle"/>), the tail through the table.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void HalfToSingle(ReadOnlySpan<ushort> h, Span<float> y)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && y.Length >= 16)
            fixed (ushort* ph = h) fixed (float* py = y)
                for (; i + 16 <= y.Length; i += 16) RowKernels.LoadHalves(ph + i).Store(py + i);
        else if (Avx2.IsSupported && y.Length >= 8)
            fixed (ushort* ph = h) fixed (float* py = y)
                for (; i + 8 <= y.Length; i += 8) RowKernels.LoadHalves8(ph + i).Store(py + i);
        else if (Vector128.IsHardwareAccelerated && y.Length >= 4)
            fixed (ushort* ph = h) fixed (float* py = y)
                for (; i + 4 <= y.Length; i += 4) RowKernels.LoadHalves4(ph + i).Store(py + i);
        for (; i < y.Length; i++) y[i] = Fp16.ToSingle(h[i]);
    }

    /// <summary>Q8_0 cache row → floats, y = d · q per block of 32; with AVX2 eight quants at a time, else with 128-bit
    /// vectors four (sign-extended, converted exactly, one multiply: the scalar loop's value).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Q8_0ToSingle(ReadOnlySpan<byte> blocks, Span<float> y)
    {
        if (Avx2.IsSupported && y.Length % 32 == 0)
        {
            fixed (byte* q = blocks) fixed (float* yp = y)
                for (int b = 0; b < y.Length / 32; b++)
                {
                    var vd = Vector256.Create(Fp16.ToSingle(*(ushort*)(q + b * 34)));
                    sbyte* qs = (sbyte*)(q + b * 34 + 2);
                    for (int i = 0; i < 32; i += 8)
                        (Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(qs + i)) * vd).Store(yp + b * 32 + i);
                }
            return;
        }
        if (Vector128.IsHardwareAccelerated && y.Length % 32 == 0)
        {
            // the portable tier: sixteen quants sign-extended to int16, then four at a time to int32 and float (exact)
            fixed (byte* q = blocks) fixed (float* yp = y)
                for (int b = 0; b < y.Length / 32; b++)
                {
                    var vd = Vector128.Create(Fp16.ToSingle(*(ushort*)(q + b * 34)));
                    sbyte* qs = (sbyte*)(q + b * 34 + 2);
                    for (int i = 0; i < 32; i += 16)
                    {
                        var (lo, hi) = Vector128.Widen(Vector128.Load(qs + i));
                        var (a, c) = Vector128.Widen(lo);
                        var (e, f) = Vector128.Widen(hi);
                        float* o = yp + b * 32 + i;
                        (Vector128.ConvertToSingle(a) * vd).Store(o); (Vector128.ConvertToSingle(c) * vd).Store(o + 4);
                        (Vector128.ConvertToSingle(e) * vd).Store(o + 8); (Vector128.ConvertToSingle(f) * vd).Store(o + 12);
                    }
                }
            return;
        }
        for (int b = 0; b < y.Length / 32; b++)
        {
            var blk = blocks.Slice(b * 34, 34);
            float d = Fp16.ToSingle((ushort)(blk[0] | blk[1] << 8));
            for (int i = 0; i < 32; i++) y[b * 32 + i] = d * (sbyte)blk[2 + i];
        }
    }

    /// <summary>e^x as <see cref="ExpSubtractSum"/>'s scalar tail computes it (the eviction scores' second pass).</summary>
    static float SoftmaxExp(float x) =>
        !Vector512.IsHardwareAccelerated && Avx2.IsSupported && Fma.IsSupported ? Ops.ExpScalar(x)
        : MulAdd.Portable ? (MulAdd.Fused ? Ops.ExpScalar<FusedMulAdd>(x) : Ops.ExpScalar<SplitMulAdd>(x))
        : MathF.Exp(x);

    /// <summary>s[j] = e^(s[j] − m), returns Σ s[j]; 16 lanes at a time (Vector512.Exp), the tail in scalar.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float ExpSubtractSum(Span<float> s, float m)
    {
        int j = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var vm = Vector512.Create(m);
            var acc = Vector512<float>.Zero;
            ref float r = ref MemoryMarshal.GetReference(s);
            for (; j + 16 <= s.Length; j += 16)
            {
                var e = Vector512.Exp(Vector512.LoadUnsafe(ref r, (nuint)j) - vm);
                e.StoreUnsafe(ref r, (nuint)j);
                acc += e;
            }
            sum = Vector512.Sum(acc);
        }
        else if (Avx2.IsSupported && Fma.IsSupported)
        {
            // Ops.Exp (float, inlined) rather than Vector256.Exp (a call, in double); the tail takes its scalar twin.
            var vm = Vector256.Create(m);
            var acc = Vector256<float>.Zero;
            ref float r = ref MemoryMarshal.GetReference(s);
            for (; j + 8 <= s.Length; j += 8)
            {
                var e = Ops.Exp(Vector256.LoadUnsafe(ref r, (nuint)j) - vm);
                e.StoreUnsafe(ref r, (nuint)j);
                acc += e;
            }
            sum = Vector256.Sum(acc);
            for (; j < s.Length; j++) { float e = Ops.ExpScalar(s[j] - m); s[j] = e; sum += e; }
            return sum;
        }
        else if (MulAdd.Portable)
            return MulAdd.Fused ? ExpSubtractSumPortable<FusedMulAdd>(s, m) : ExpSubtractSumPortable<SplitMulAdd>(s, m);
        for (; j < s.Length; j++) { float e = MathF.Exp(s[j] - m); s[j] = e; sum += e; }
        return sum;
    }

    /// <summary><see cref="ExpSubtractSum"/> on 128-bit vectors: <see cref="Ops.Exp{TMac}(Vector128{float})"/>, and its
    /// scalar twin for the tail.</summary>
    static float ExpSubtractSumPortable<TMac>(Span<float> s, float m) where TMac : IMulAdd
    {
        int j = 0;
        var vm = Vector128.Create(m);
        var acc = Vector128<float>.Zero;
        ref float r = ref MemoryMarshal.GetReference(s);
        for (; j + 4 <= s.Length; j += 4)
        {
            var e = Ops.Exp<TMac>(Vector128.LoadUnsafe(ref r, (nuint)j) - vm);
            e.StoreUnsafe(ref r, (nuint)j);
            acc += e;
        }
        float sum = Vector128.Sum(acc);
        for (; j < s.Length; j++) { float e = Ops.ExpScalar<TMac>(s[j] - m); s[j] = e; sum += e; }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Scale(Span<float> x, float a)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            ref float r = ref MemoryMarshal.GetReference(x);
            var va = Vector512.Create(a);
            for (; i + 16 <= x.Length; i += 16) (Vector512.LoadUnsafe(ref r, (nuint)i) * va).StoreUnsafe(ref r, (nuint)i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            ref float r = ref MemoryMarshal.GetReference(x);
            var va = Vector256.Create(a);
            for (; i + 8 <= x.Length; i += 8) (Vector256.LoadUnsafe(ref r, (nuint)i) * va).StoreUnsafe(ref r, (nuint)i);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float r = ref MemoryMarshal.GetReference(x);
            var va = Vector128.Create(a);
            for (; i + 4 <= x.Length; i += 4) (Vector128.LoadUnsafe(ref r, (nuint)i) * va).StoreUnsafe(ref r, (nuint)i);
        }
        for (; i < x.Length; i++) x[i] *= a;
    }

    /// <summary>The largest of s (−∞ when empty; NaN if any is NaN): a maximum does not depend on the order it is taken in.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float MaxOf(ReadOnlySpan<float> s)
    {
        float m = float.NegativeInfinity;
        int j = 0;
        if (Vector512.IsHardwareAccelerated && s.Length >= 16)
        {
            ref float r = ref MemoryMarshal.GetReference(s);
            var v = Vector512.LoadUnsafe(ref r);
            for (j = 16; j + 16 <= s.Length; j += 16) v = Vector512.Max(v, Vector512.LoadUnsafe(ref r, (nuint)j));
            var v8 = Vector256.Max(v.GetLower(), v.GetUpper());
            var v4 = Vector128.Max(v8.GetLower(), v8.GetUpper());
            m = MathF.Max(MathF.Max(v4[0], v4[1]), MathF.Max(v4[2], v4[3]));
        }
        else if (Vector256.IsHardwareAccelerated && s.Length >= 8)
        {
            ref float r = ref MemoryMarshal.GetReference(s);
            var v = Vector256.LoadUnsafe(ref r);
            for (j = 8; j + 8 <= s.Length; j += 8) v = Vector256.Max(v, Vector256.LoadUnsafe(ref r, (nuint)j));
            var v4 = Vector128.Max(v.GetLower(), v.GetUpper());
            m = MathF.Max(MathF.Max(v4[0], v4[1]), MathF.Max(v4[2], v4[3]));
        }
        else if (Vector128.IsHardwareAccelerated && s.Length >= 4)
        {
            ref float r = ref MemoryMarshal.GetReference(s);
            var v4 = Vector128.LoadUnsafe(ref r);
            for (j = 4; j + 4 <= s.Length; j += 4) v4 = Vector128.Max(v4, Vector128.LoadUnsafe(ref r, (nuint)j));
            m = MathF.Max(MathF.Max(v4[0], v4[1]), MathF.Max(v4[2], v4[3]));
        }
        for (; j < s.Length; j++) m = MathF.Max(m, s[j]);
        return m;
    }

    /// <summary>Scalar reference: softmax(q·Kᵀ/√d)·V over positions [0, length) with a full score row, in double.</summary>
    internal static void AttendScalar(ReadOnlySpan<float> q, Func<int, float[]> key, Func<int, float[]> value, int length, Span<float> output)
    {
        int hd = q.Length;
        var s = new double[length];
        double max = double.NegativeInfinity;
        for (int t = 0; t < length; t++)
        {
            var k = key(t);
            double d = 0;
            for (int i = 0; i < hd; i++) d += (double)q[i] * k[i];
            s[t] = d / Math.Sqrt(hd);
            max = Math.Max(max, s[t]);
        }
        double z = 0;
        for (int t = 0; t < length; t++) { s[t] = Math.Exp(s[t] - max); z += s[t]; }
        for (int i = 0; i < hd; i++)
        {
            double o = 0;
            for (int t = 0; t < length; t++) o += s[t] * value(t)[i];
            output[i] = (float)(o / z);
        }
    }
}
