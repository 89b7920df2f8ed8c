using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Cria.Inference;
using Cria.Models;

namespace Cria.Kernels;

/// <summary>
/// Causal grouped-query attention of a micro-batch over the KV cache, fused: one work item is (batch row, KV head),
/// and it serves all query heads of that KV head's group, so each cached K and V row is read once per group rather
/// than once per query head. Positions are visited in tiles of <see cref="TileSize"/> with an online softmax
/// (running max and sum, FlashAttention-style rescaling), so no score row longer than a tile is kept, whatever the
/// context length. Each item's arithmetic depends only on its own row and sequence, never on the rest of the batch.
/// Reference: <see cref="AttendScalar"/>.
/// </summary>
internal sealed class AttentionJob : ParallelJob
{
    public const int TileSize = 64;

    readonly ModelConfig _c;
    readonly KvCache _cache;
    readonly float[][] _scratch; // [worker][group·TileSize scores + group·headDim accumulators]
    int _layer, _start, _rows, _next;
    float[] _q = [], _out = [];
    Batch? _batch;

    public AttentionJob(ModelConfig c, KvCache cache, int workers)
    {
        _c = c; _cache = cache;
        _scratch = new float[workers][];
        for (int i = 0; i < workers; i++) _scratch[i] = new float[c.GroupSize * (TileSize + c.HeadDim)];
    }

    public void Prepare(int layer, float[] q, float[] output, Batch batch, int start, int rows)
    {
        _layer = layer; _q = q; _out = output; _batch = batch; _start = start; _rows = rows; _next = 0;
    }

    public override bool SharesWorkDynamically => true;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public override void Execute(int worker, int workerCount)
    {
        var c = _c;
        int kvHeads = c.KvHeadCount;
        int items = _rows * kvHeads;
        var keys = _cache.KeyArray(_layer); var values = _cache.ValueArray(_layer);
        var scratch = _scratch[worker];
        while (true)
        {
            int item = Interlocked.Increment(ref _next) - 1;
            if (item >= items) return;
            int b = item / kvHeads, g = item % kvHeads;
            int row = _start + b;
            Attend(c, _cache.BlockTableSpan(_batch!.Sequences[row]), _cache.BlockSize, _batch.Positions[row] + 1, g,
                   _q.AsSpan(b * c.QDim), keys, values, _out.AsSpan(b * c.QDim), scratch);
        }
    }

    /// <summary>Attention of one row's query heads of KV group g over positions [0, length) of its sequence.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Attend(ModelConfig c, ReadOnlySpan<int> table, int bs, int length, int g,
                       ReadOnlySpan<float> qRow, float[] keys, float[] values, Span<float> outRow, float[] scratch)
    {
        int hd = c.HeadDim, group = c.GroupSize, kvDim = c.KvDim;
        float scale = 1.0f / MathF.Sqrt(hd);
        var scores = scratch.AsSpan(0, group * TileSize);               // [group, TileSize]
        var acc = scratch.AsSpan(group * TileSize, group * hd);         // [group, hd] un-normalised outputs
        acc.Clear();
        Span<float> max = stackalloc float[group];
        Span<float> sum = stackalloc float[group];
        max.Fill(float.NegativeInfinity);
        sum.Clear();
        int h0 = g * group;
        for (int t0 = 0; t0 < length; t0 += TileSize)
        {
            int n = Math.Min(TileSize, length - t0);
            // scores = q_h · k_t · scale for every query head of the group; K row read once per group.
            for (int j = 0; j < n; j++)
            {
                int t = t0 + j;
                int cell = table[t / bs] * bs + t % bs;
                var k = new ReadOnlySpan<float>(keys, cell * kvDim + g * hd, hd);
                if (hd == 64 && Vector512.IsHardwareAccelerated)
                {
                    // One K row (4 × 16 lanes) against every query head of the group.
                    ref float kr = ref MemoryMarshal.GetReference(k);
                    var k0 = Vector512.LoadUnsafe(ref kr); var k1 = Vector512.LoadUnsafe(ref kr, 16);
                    var k2 = Vector512.LoadUnsafe(ref kr, 32); var k3 = Vector512.LoadUnsafe(ref kr, 48);
                    for (int h = 0; h < group; h++)
                    {
                        ref float qr = ref MemoryMarshal.GetReference(qRow.Slice((h0 + h) * hd, hd));
                        var a = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref qr, 16), k1, Vector512.LoadUnsafe(ref qr) * k0);
                        var e = Vector512.FusedMultiplyAdd(Vector512.LoadUnsafe(ref qr, 48), k3, Vector512.LoadUnsafe(ref qr, 32) * k2);
                        scores[h * TileSize + j] = Vector512.Sum(a + e) * scale;
                    }
                }
                else
                    for (int h = 0; h < group; h++)
                        scores[h * TileSize + j] = Ops.Dot(qRow.Slice((h0 + h) * hd, hd), k) * scale;
            }
            // online softmax: new max, rescale what was accumulated, exponentiate the tile.
            for (int h = 0; h < group; h++)
            {
                var s = scores.Slice(h * TileSize, n);
                float m = max[h];
                for (int j = 0; j < n; j++) m = MathF.Max(m, s[j]);
                float correction = MathF.Exp(max[h] - m); // 0 on the first tile (max was -inf)
                float tileSum = ExpSubtractSum(s, m);
                sum[h] = sum[h] * correction + tileSum;
                max[h] = m;
                if (correction != 1f) Scale(acc.Slice(h * hd, hd), correction);
            }
            // acc_h += Σ_j p_hj · v_j; V row read once per group.
            for (int j = 0; j < n; j++)
            {
                int t = t0 + j;
                int cell = table[t / bs] * bs + t % bs;
                var v = new ReadOnlySpan<float>(values, cell * kvDim + g * hd, hd);
                for (int h = 0; h < group; h++) Ops.Axpy(scores[h * TileSize + j], v, acc.Slice(h * hd, hd));
            }
        }
        for (int h = 0; h < group; h++)
        {
            float inv = 1.0f / sum[h];
            var o = outRow.Slice((h0 + h) * hd, hd);
            var a = acc.Slice(h * hd, hd);
            for (int i = 0; i < hd; i++) o[i] = a[i] * inv;
        }
    }

    /// <summary>s[j] = e^(s[j] − m), returns Σ s[j]; 16 lanes at a time (Vector512.Exp), the tail in scalar.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float ExpSubtractSum(Span<float> s, float m)
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
        for (; j < s.Length; j++) { float e = MathF.Exp(s[j] - m); s[j] = e; sum += e; }
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Scale(Span<float> x, float a)
    {
        for (int i = 0; i < x.Length; i++) x[i] *= a;
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
