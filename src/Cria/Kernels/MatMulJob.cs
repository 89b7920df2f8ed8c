using Cria.Models;

namespace Cria.Kernels;

/// <summary>
/// y[b, r] = dot(W row r, activation row b) for all rows of a weight matrix and all B activation rows, split across
/// workers by chunks of output rows taken from a shared counter. A chunk's weight rows stay in cache while every
/// activation row passes over them. Each output is one <see cref="VecDot.Dot"/>, so results do not depend on B or on
/// the thread count.
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
            // Aim for about 32 KiB of weights per chunk, but at least 16 chunks so that workers balance.
            int byBytes = Math.Max(1, 32768 / Math.Max(1, w.RowBytes));
            _chunk = Math.Clamp(Math.Min(byBytes, w.Rows / 16), 1, 256);
        }
    }

    public override void Execute(int worker, int workerCount)
    {
        var w = _w;
        int rows = w.Rows, chunk = _chunk, B = _batch, ab = _actRowBytes, n = w.Cols;
        var type = w.Type;
        while (true)
        {
            int start = Interlocked.Add(ref _next, chunk) - chunk;
            if (start >= rows) return;
            int end = Math.Min(rows, start + chunk);
            for (int b = 0; b < B; b++)
            {
                var x = new ReadOnlySpan<byte>(_act, b * ab, ab);
                float* y = _out + (long)b * rows;
                for (int r = start; r < end; r++) y[r] = VecDot.Dot(type, w.Row(r), x, n);
            }
        }
    }
}
