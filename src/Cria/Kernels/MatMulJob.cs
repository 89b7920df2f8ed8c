using System.Runtime.CompilerServices;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// y[b, r] = dot(W row r, activation row b) for all rows of a weight matrix and all B activation rows, split across
/// workers by chunks of weight rows (~32 KiB) taken from a shared counter. A chunk runs as one cache block
/// (<see cref="RowKernels.RunBlock"/>: each weight row decoded once per tile of activation rows) or, for one activation
/// row, through the prefetching decode kernels (<see cref="RowKernels.RunRows"/>). Each output's arithmetic is fixed by
/// its own row, so results depend neither on B nor on the thread count.
/// </summary>
internal sealed unsafe class MatMulJob : ParallelJob
{
    WeightMatrix _w;
    byte[] _act = [];   // [B, actRowBytes] activations in VecDot.ActivationType(W.Type)
    int _actRowBytes, _batch, _chunk;
    float* _out;        // [B, W.Rows]
    int _next;

    public void Prepare(in WeightMatrix w, byte[] act, int actRowBytes, int batchRows, float* output)
    {
        _w = w; _act = act; _actRowBytes = actRowBytes; _batch = batchRows; _out = output; _next = 0;
        if (w.Rows > 0)
        {
            // Batches: about 32 KiB of weights per chunk (one cache block), at least 16 chunks so that workers balance.
            // One activation row (decode streams the weights from memory): about 256 KiB, at least 8 chunks — long
            // sequential runs keep the prefetchers ahead; 32 KiB chunks measured ~25% slower at 2 threads.
            bool decode = batchRows == 1;
            int byBytes = Math.Max(1, (decode ? 262144 : 32768) / Math.Max(1, w.RowBytes));
            _chunk = Math.Clamp(Math.Min(byBytes, w.Rows / (decode ? 8 : 16)), 1, decode ? int.MaxValue : 256);
        }
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public override void Execute(int worker, int workerCount)
    {
        var w = _w;
        int rows = w.Rows, chunk = _chunk, B = _batch, n = w.Cols;
        fixed (byte* act = _act)
        {
            while (true)
            {
                // Guided self-scheduling: full chunks while much is left, then smaller ones (down to chunk / 8) so
                // that the workers finish together instead of one waiting for the other's last full chunk.
                int start = Volatile.Read(ref _next);
                if (start >= rows) return;
                int size = Math.Max(Math.Max(1, chunk >> 3), Math.Min(chunk, (rows - start) / (2 * workerCount)));
                if (Interlocked.CompareExchange(ref _next, start + size, start) != start) continue;
                int end = Math.Min(rows, start + size);
                if (B == 1) RowKernels.RunRows(w.Type, w.Data, w.RowBytes, start, end, act, _actRowBytes, n, _out);
                else RowKernels.RunBlock(w.Type, w.Data, w.RowBytes, start, end, act, _actRowBytes, B, n, _out, rows);
            }
        }
    }
}

/// <summary>Converts B activation rows into the row kernels' input layout, rows split across workers.</summary>
internal sealed unsafe class PrepareActivationsJob : ParallelJob
{
    GgmlType _type;
    float* _x;          // [B, n]
    int _n, _batch, _rowBytes;
    byte[] _dst = [];   // [B, rowBytes]

    int _next;

    public void Set(GgmlType weightType, float* x, int n, int batchRows, byte[] dst, int rowBytes)
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
            RowKernels.PrepareActivations(_type, new ReadOnlySpan<float>(_x + (long)b * _n, _n), _dst.AsSpan(b * _rowBytes, _rowBytes));
        }
    }
}
