using Cria.Inference;
using Cria.Models;

namespace Cria.Kernels;

/// <summary>
/// Causal grouped-query attention of a micro-batch over the KV cache. Work items are (row, query head) pairs taken
/// from a shared counter; each computes softmax(q·Kᵀ / √d) · V over positions 0..pos of its own sequence, reading
/// K/V cells through the sequence's block table. Every item's sums run in position order, whatever the batch.
/// </summary>
internal sealed class AttentionJob : ParallelJob
{
    readonly ModelConfig _c;
    readonly KvCache _cache;
    readonly float[][] _scores; // [worker][capacity]
    int _layer, _start, _rows, _next;
    float[] _q = [], _out = [];
    Batch? _batch;

    public AttentionJob(ModelConfig c, KvCache cache, int workers)
    {
        _c = c; _cache = cache;
        _scores = new float[workers][];
        for (int i = 0; i < workers; i++) _scores[i] = new float[cache.Capacity];
    }

    public void Prepare(int layer, float[] q, float[] output, Batch batch, int start, int rows)
    {
        _layer = layer; _q = q; _out = output; _batch = batch; _start = start; _rows = rows; _next = 0;
    }

    public override void Execute(int worker, int workerCount)
    {
        var c = _c;
        int hd = c.HeadDim, qDim = c.QDim, kvDim = c.KvDim, heads = c.HeadCount, group = c.GroupSize;
        float scale = 1.0f / MathF.Sqrt(hd);
        var keys = _cache.KeyArray(_layer); var values = _cache.ValueArray(_layer);
        var scores = _scores[worker];
        int bs = _cache.BlockSize;
        int items = _rows * heads;
        while (true)
        {
            int item = Interlocked.Increment(ref _next) - 1;
            if (item >= items) return;
            int b = item / heads, h = item % heads, g = h / group;
            int row = _start + b;
            int seq = _batch!.Sequences[row], pos = _batch.Positions[row];
            var table = _cache.BlockTableSpan(seq);
            var q = new ReadOnlySpan<float>(_q, b * qDim + h * hd, hd);

            float max = float.NegativeInfinity;
            for (int t = 0; t <= pos; t++)
            {
                int cell = table[t / bs] * bs + t % bs;
                float s = Ops.Dot(q, new ReadOnlySpan<float>(keys, cell * kvDim + g * hd, hd)) * scale;
                scores[t] = s;
                if (s > max) max = s;
            }
            double sum = 0;
            for (int t = 0; t <= pos; t++) { float e = MathF.Exp(scores[t] - max); scores[t] = e; sum += e; }
            float inv = (float)(1.0 / sum);
            var o = new Span<float>(_out, b * qDim + h * hd, hd);
            o.Clear();
            for (int t = 0; t <= pos; t++)
            {
                int cell = table[t / bs] * bs + t % bs;
                Ops.Axpy(scores[t] * inv, new ReadOnlySpan<float>(values, cell * kvDim + g * hd, hd), o);
            }
        }
    }
}
