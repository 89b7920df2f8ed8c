using System.Runtime.CompilerServices;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// y[b, r] = dot(W row r, activation row b) for all rows of up to three weight matrices that read the same input rows
/// (Q/K/V, gate/up) and all B activation rows. The matrices' rows form one sequence [W0 | W1 | W2] that the workers
/// share (one dispatch for all, and no idle tail between them); a chunk of rows never spans two matrices. A chunk runs
/// as one cache block (<see cref="RowKernels.RunBlock"/>: each weight row decoded once per tile of activation rows) or,
/// for one activation row, through the decode kernels (<see cref="RowKernels.RunRows"/>).
///
/// How the rows are shared depends on the batch. Prefill (B &gt; <see cref="RowKernels.Tile"/>): chunks of ~32 KiB of
/// weights from a shared counter, guided self-scheduling. Decode (B ≤ Tile): the weights stream from memory once per
/// step, and a stream that restarts every chunk is slower (one kernel on 2 threads, chunks handed out alternately: 1 MiB
/// 36.5 GB/s, 256 KiB 32.6, 64 KiB 23.1; `Cria.Bench kernel-micro --threads 2 --chunk-kib 0,1024,256,64`), so the
/// sequence is split by weight bytes into one contiguous range per worker (<see cref="Split"/>). Each worker streams its
/// own range front to back, then takes chunks from the back of the others' ranges until no row is left — which also
/// lets any subset of the workers (the caller alone, if need be) finish the job. For one activation row where every
/// matrix has a paired kernel (F16, Q4_K, Q6_K, Q8_0) each worker owns two ranges and walks both at once, one row of
/// each per <see cref="RowKernels.RunPair"/> call: a core reads two distant streams faster than one.
///
/// Each output's arithmetic is fixed by its own row, so results depend neither on B, on the thread count, on who ran
/// which row, nor on which matrices share the job.
/// </summary>
internal sealed unsafe class MatMulJob : ParallelJob
{
    public const int MaxParts = 8;

    readonly WeightMatrix[] _w = new WeightMatrix[MaxParts];
    readonly byte*[] _act = new byte*[MaxParts];   // part p: [B, actRowBytes[p]] activations in RowKernels' layout for W_p
    readonly int[] _actRowBytes = new int[MaxParts];
    readonly float*[] _out = new float*[MaxParts]; // part p: [B, W_p.Rows]
    readonly int[] _chunk = new int[MaxParts];
    readonly int[] _group = new int[MaxParts];     // part p's kernel runs rows in groups of this many (RowKernels.RowGroup)
    readonly int[] _end = new int[MaxParts];       // part p's rows are [_end[p-1], _end[p]) of the sequence
    int _parts, _batch, _next;

    // Decode: per range r, the rows not yet handed out, packed as front (low 32 bits) | back (high 32);
    // the owner takes chunks at the front, the others at the back, each by compare-and-swap of the whole word.
    long[] _ranges = new long[1];
    int _streams = 1; // ranges per worker: worker w owns ranges [w·streams, (w+1)·streams)
    bool _split;

    public void Clear() { _parts = 0; _next = 0; _split = false; }

    /// <summary>For decode batches (B ≤ <see cref="RowKernels.Tile"/>), divides the rows added so far into one
    /// contiguous range per worker, equal in weight bytes; call after the last <see cref="Add"/>, with the pool's size.
    /// Larger batches keep the shared counter.</summary>
    public void Split(int workers)
    {
        _split = false;
        if (_parts == 0 || _batch > RowKernels.Tile || workers < 1) return;
        // Decode of one row where every part has a paired kernel (F16, Q4_K, Q6_K, Q8_0, the legacy types' groups of
        // eight …): two ranges per worker, streamed side by side (RowKernels.RunPair, RunGroupPair): one core reads two
        // distant sequential streams faster than one (kernel-micro --type f16 --pair: 20.0–20.3 → 23.1–23.9 GB/s; Q4_0
        // tg64 on one thread 27–31 → 34–36 tok/s).
        _streams = _batch == 1 ? 2 : 1;
        for (int p = 0; p < _parts; p++) if (!RowKernels.HasPairedDecode(_w[p].Type, _w[p].Cols)) _streams = 1;
        int n = workers * _streams;
        if (_ranges.Length < n) _ranges = new long[n];
        long total = 0;
        for (int p = 0; p < _parts; p++) total += (long)_w[p].Rows * _w[p].RowBytes;
        int row = 0;
        for (int r = 0; r < n; r++)
        {
            int start = row;
            row = RowAtBytes(total * (r + 1) / n);
            _ranges[r] = Pack(start, r == n - 1 ? _end[_parts - 1] : row);
        }
        _split = true;
    }

    /// <summary>The first row of the sequence at or after <paramref name="bytes"/> of weights from its start.</summary>
    int RowAtBytes(long bytes)
    {
        for (int p = 0; p < _parts; p++)
        {
            long partBytes = (long)_w[p].Rows * _w[p].RowBytes;
            int first = p == 0 ? 0 : _end[p - 1];
            if (bytes < partBytes) return first + (int)((bytes + _w[p].RowBytes - 1) / _w[p].RowBytes);
            bytes -= partBytes;
        }
        return _end[_parts - 1];
    }

    static long Pack(int front, int back) => (uint)front | ((long)back << 32);

    /// <summary>Range r's rows [front, back) not yet handed out (tests).</summary>
    internal (int Front, int Back) Range(int r) => ((int)_ranges[r], (int)(_ranges[r] >> 32));

    /// <summary>Ranges of the decode split: workers × streams (tests).</summary>
    internal int RangeCount(int workers) => _split ? workers * _streams : 0;

    /// <summary>Adds a matrix to the job; <paramref name="act"/> and <paramref name="output"/> must stay pinned until
    /// the job has run.</summary>
    public void Add(in WeightMatrix w, byte* act, int actRowBytes, int batchRows, float* output)
    {
        if (_parts == MaxParts) throw new InvalidOperationException("a matmul job holds at most eight matrices");
        int p = _parts++;
        _w[p] = w; _act[p] = act; _actRowBytes[p] = actRowBytes; _out[p] = output; _batch = batchRows;
        _end[p] = (p == 0 ? 0 : _end[p - 1]) + w.Rows;
        // Decode steps (up to one tile of activation rows: the weights stream from memory once per step): up to
        // 1 MiB of weights per chunk, at least 8 chunks — long sequential runs keep the prefetchers ahead (TinyLlama
        // Q4_K_M, 2 threads: 1 row 36 -> 45-50 tok/s, 4 rows 58 -> 72, 16 rows 91 -> 104 with 256 KiB against 32 KiB
        // chunks; 1 MiB against 256 KiB, alternating tg64 runs: F16 13.4 -> 14.2, Q8_0 34.4 -> 36.0, Q4_K_M 48.8 -> 51).
        // Larger batches (prefill): about 32 KiB per chunk (one cache block), at least 16 chunks so workers balance.
        bool decode = batchRows <= RowKernels.Tile;
        int byBytes = Math.Max(1, (decode ? 1048576 : 32768) / Math.Max(1, w.RowBytes));
        // Float weights (RowKernels.FloatBlock / FloatBlock256): a chunk's rows are widened to F32 once and every tile
        // of activation rows runs over them, so the F32 activations — B × n × 4 bytes, 4 MiB for 512 rows of 2048,
        // more than L2 — stream in once per chunk. Chunks of about 512 KiB of widened rows (64 rows of 2048, 23 of
        // 5632; at least 8, two blocks of 4). Sapphire Rapids VM (2 MiB L2): F16 `gemm-micro`, one thread, 2048×2048
        // 27 GMAC/s in chunks of 8 rows (32 KiB of F16, before), 38 in 32, 40 in 64; 2048×5632 (ffn_down) 23 in 11
        // rows, 36 in 23; TinyLlama F16 pp512 (`cria bench`, 2 threads, alternating) 55–61 → 75–78 tok/s. Chunks of
        // 1 MiB read 2–4 % faster still there; not taken, as the AMD VMs have 1 MiB of L2 (512 KiB on Zen 3).
        if (!decode && w.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) byBytes = Math.Max(8, 524288 / Math.Max(1, w.Cols * 4));
        _chunk[p] = Math.Clamp(Math.Min(byBytes, w.Rows / (decode ? 8 : 16)), 1, decode ? int.MaxValue : 256);
        // Kernels that run rows in groups (on AVX2 the 32-value types: eight; on AVX-512 the prefill of the 32-value
        // types, Q2_K and Q3_K: sixteen, RowKernels.PrefillRowGroup) get chunks of whole groups.
        int g = decode ? RowKernels.RowGroup(w.Type) : RowKernels.PrefillRowGroup(w.Type);
        _group[p] = g;
        if (_chunk[p] > g) _chunk[p] = _chunk[p] / g * g;
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public override void Execute(int worker, int workerCount)
    {
        if (_split) { ExecuteRanges(worker, workerCount); return; }
        int B = _batch, total = _parts == 0 ? 0 : _end[_parts - 1];
        while (true)
        {
            int start = Volatile.Read(ref _next);
            if (start >= total) return;
            int p = 0;
            while (start >= _end[p]) p++;
            // Guided self-scheduling: full chunks while much is left, then smaller ones (down to chunk / 8) so that
            // the workers finish together instead of one waiting for the other's last full chunk.
            int chunk = _chunk[p];
            int size = Math.Max(Math.Max(1, chunk >> 3), Math.Min(chunk, (total - start) / (2 * workerCount)));
            size = (size + _group[p] - 1) / _group[p] * _group[p];
            int end = Math.Min(_end[p], start + size);
            if (Interlocked.CompareExchange(ref _next, end, start) != start) continue;
            RunChunk(p, start, end);
        }
    }

    /// <summary>Rows [start, end) of the sequence, all in part p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void RunChunk(int p, int start, int end)
    {
        var w = _w[p];
        int first = p == 0 ? 0 : _end[p - 1];
        if (_batch == 1) RowKernels.RunRows(w.Type, w.Data, w.RowBytes, start - first, end - first, _act[p], _actRowBytes[p], w.Cols, _out[p], !w.NonFiniteF16);
        else RowKernels.RunBlock(w.Type, w.Data, w.RowBytes, start - first, end - first, _act[p], _actRowBytes[p], _batch, w.Cols, _out[p], w.Rows, !w.NonFiniteF16);
    }

    /// <summary>Decode chunk: rows of about 256 KiB of weights (about 10 µs of streaming per core), the step in which
    /// owners advance and others take from the back. 64 KiB was slower: TinyLlama tg128, `cria bench -p 0 -n 128 -r 2`,
    /// alternating builds, F16 21.5 → 22.9 tok/s (10 pairs, 8 faster), Q4_K_M 72.3 → 74.7 (4 pairs, 3 faster); 1 MiB
    /// read the same as 256 KiB (F16, 4 pairs: 23.8 / 23.7) with a coarser tail.</summary>
    int ChunkRows(int p) => Math.Max(_group[p], 262144 / Math.Max(1, _w[p].RowBytes) / _group[p] * _group[p]);

    int PartOf(int row) { int p = 0; while (row >= _end[p]) p++; return p; }

    /// <summary>Decode: this worker's own range(s) front to back, then the others' ranges from their backs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void ExecuteRanges(int worker, int workers)
    {
        int own = worker * _streams;
        if (_streams == 2)
            while (true) // both own ranges side by side, row pairs through the paired kernel
            {
                bool a = TakeFront(own, out int pa, out int sa, out int ea);
                bool b = TakeFront(own + 1, out int pb, out int sb, out int eb);
                if (!a && !b) break;
                if (a && b) RunPaired(pa, sa, ea, pb, sb, eb);
                else if (a) RunChunk(pa, sa, ea);
                else RunChunk(pb, sb, eb);
            }
        else
            while (TakeFront(own, out int p, out int f, out int e)) RunChunk(p, f, e);
        int n = workers * _streams;
        for (int k = _streams; k < n; k++) // the others' ranges, from the back
        {
            int victim = (own + k) % n;
            while (TakeBack(victim, out int p, out int s, out int b)) RunChunk(p, s, b);
        }
    }

    /// <summary>Claims the next chunk at the front of range r (rows [s, e) of part p); false when it is empty.</summary>
    bool TakeFront(int r, out int p, out int s, out int e)
    {
        while (true)
        {
            long v = Volatile.Read(ref _ranges[r]);
            int f = (int)v, b = (int)(v >> 32);
            if (f >= b) { p = s = e = 0; return false; }
            p = PartOf(f);
            s = f;
            e = Math.Min(Math.Min(b, _end[p]), f + ChunkRows(p));
            if (Interlocked.CompareExchange(ref _ranges[r], Pack(e, b), v) == v) return true;
        }
    }

    /// <summary>Claims the last chunk of range r (rows [s, e) of part p); false when it is empty.</summary>
    bool TakeBack(int r, out int p, out int s, out int e)
    {
        while (true)
        {
            long v = Volatile.Read(ref _ranges[r]);
            int f = (int)v, b = (int)(v >> 32);
            if (f >= b) { p = s = e = 0; return false; }
            p = PartOf(b - 1);
            e = b;
            s = Math.Max(Math.Max(f, p == 0 ? 0 : _end[p - 1]), b - ChunkRows(p));
            if (Interlocked.CompareExchange(ref _ranges[r], Pack(f, s), v) == v) return true;
        }
    }

    /// <summary>Rows [sa, ea) of part pa and [sb, eb) of part pb (one activation row) two at a time, one from each
    /// chunk, through the paired kernel (<see cref="RowKernels.RunPair"/>) when both parts have the same type — for the
    /// legacy types eight rows from each at a time (<see cref="RowKernels.RunGroupPair"/>); a pair the kernel declines
    /// (an F16 infinity or NaN), and the longer chunk's rest, go through <see cref="RunChunk"/>.</summary>
    void RunPaired(int pa, int sa, int ea, int pb, int sb, int eb)
    {
        WeightMatrix wa = _w[pa], wb = _w[pb];
        if (wa.Type != wb.Type) { RunChunk(pa, sa, ea); RunChunk(pb, sb, eb); return; }
        int firstA = pa == 0 ? 0 : _end[pa - 1], firstB = pb == 0 ? 0 : _end[pb - 1];
        byte* x = _act[pa]; // same type, same input: the same activation layout as _act[pb]
        int k = 0, pairs = Math.Min(ea - sa, eb - sb);
        if (RowKernels.LegacyGroupPair(wa.Type) && wa.RowBytes == wb.RowBytes)
        {
            // eight-row groups, one from each chunk; the rest through RunChunk (its groups)
            for (; k + 8 <= pairs; k += 8)
            {
                int ra = sa + k - firstA, rb = sb + k - firstB;
                RowKernels.RunGroupPair(wa.Type, wa.Data + (long)ra * wa.RowBytes, wb.Data + (long)rb * wb.RowBytes, wa.RowBytes, x, wa.Cols,
                    _out[pa] + ra, _out[pb] + rb);
            }
            if (sa + k < ea) RunChunk(pa, sa + k, ea);
            if (sb + k < eb) RunChunk(pb, sb + k, eb);
            return;
        }
        bool finiteF16 = !wa.NonFiniteF16 && !wb.NonFiniteF16;
        for (; k < pairs; k++)
        {
            int ra = sa + k - firstA, rb = sb + k - firstB;
            if (!RowKernels.RunPair(wa.Type, wa.Data + (long)ra * wa.RowBytes, wb.Data + (long)rb * wb.RowBytes, x, wa.Cols,
                    out _out[pa][ra], out _out[pb][rb], finiteF16))
            { RunChunk(pa, sa + k, sa + k + 1); RunChunk(pb, sb + k, sb + k + 1); }
        }
        if (sa + k < ea) RunChunk(pa, sa + k, ea);
        if (sb + k < eb) RunChunk(pb, sb + k, eb);
    }
}

/// <summary>Converts B activation rows into the row kernels' input layout, rows split across workers.</summary>
internal sealed unsafe class PrepareActivationsJob : ParallelJob
{
    GgmlType _type;
    float* _x;          // [B, n]
    int _n, _batch, _rowBytes;
    byte* _dst;         // [B, rowBytes], pinned

    int _next;

    public void Set(GgmlType weightType, float* x, int n, int batchRows, byte* dst, int rowBytes)
    {
        _type = weightType; _x = x; _n = n; _batch = batchRows; _dst = dst; _rowBytes = rowBytes; _next = 0;
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public override void Execute(int worker, int workerCount)
    {
        while (true)
        {
            int b = Interlocked.Increment(ref _next) - 1;
            if (b >= _batch) return;
            RowKernels.PrepareActivations(_type, new ReadOnlySpan<float>(_x + (long)b * _n, _n), new Span<byte>(_dst + (long)b * _rowBytes, _rowBytes));
        }
    }
}
