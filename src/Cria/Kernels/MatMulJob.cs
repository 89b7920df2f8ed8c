using System.Runtime.CompilerServices;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// y[b, r] = dot(W row r, activation row b) for all rows of up to three weight matrices that read the same input rows
/// (Q/K/V, gate/up) and all B activation rows. The matrices' rows form one sequence [W0 | W1 | W2] that workers take
/// chunks of from a shared counter (one dispatch for all, and no idle tail between them); a chunk never spans two
/// matrices. A chunk runs as one cache block (<see cref="RowKernels.RunBlock"/>: each weight row decoded once per
/// tile of activation rows) or, for one activation row, through the prefetching decode kernels
/// (<see cref="RowKernels.RunRows"/>). Each output's arithmetic is fixed by its own row, so results depend neither on
/// B, on the thread count, nor on which matrices share the job.
/// </summary>
internal sealed unsafe class MatMulJob : ParallelJob
{
    public const int MaxParts = 3;

    readonly WeightMatrix[] _w = new WeightMatrix[MaxParts];
    readonly byte*[] _act = new byte*[MaxParts];   // part p: [B, actRowBytes[p]] activations in RowKernels' layout for W_p
    readonly int[] _actRowBytes = new int[MaxParts];
    readonly float*[] _out = new float*[MaxParts]; // part p: [B, W_p.Rows]
    readonly int[] _chunk = new int[MaxParts];
    readonly int[] _end = new int[MaxParts];       // part p's rows are [_end[p-1], _end[p]) of the sequence
    int _parts, _batch, _next;

    public void Clear() { _parts = 0; _next = 0; }

    /// <summary>Adds a matrix to the job; <paramref name="act"/> and <paramref name="output"/> must stay pinned until
    /// the job has run.</summary>
    public void Add(in WeightMatrix w, byte* act, int actRowBytes, int batchRows, float* output)
    {
        if (_parts == MaxParts) throw new InvalidOperationException("a matmul job holds at most three matrices");
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
        // Float weights run in blocks of 4 rows (RowKernels.FloatBlock), so a prefill chunk holds at least 8 of them.
        if (!decode && w.Type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16) byBytes = Math.Max(byBytes, 8);
        _chunk[p] = Math.Clamp(Math.Min(byBytes, w.Rows / (decode ? 8 : 16)), 1, decode ? int.MaxValue : 256);
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public override void Execute(int worker, int workerCount)
    {
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
            int end = Math.Min(_end[p], start + size);
            if (Interlocked.CompareExchange(ref _next, end, start) != start) continue;
            var w = _w[p];
            int first = p == 0 ? 0 : _end[p - 1];
            if (B == 1) RowKernels.RunRows(w.Type, w.Data, w.RowBytes, start - first, end - first, _act[p], _actRowBytes[p], w.Cols, _out[p]);
            else RowKernels.RunBlock(w.Type, w.Data, w.RowBytes, start - first, end - first, _act[p], _actRowBytes[p], B, w.Cols, _out[p], w.Rows);
        }
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
