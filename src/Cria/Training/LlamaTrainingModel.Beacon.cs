using System.Runtime.InteropServices;

namespace Cria.Training;

// Activation Beacon in the trainer (see BeaconPlan for the layout of rows, positions and keys). The rows of a
// micro-batch are B extended sequences of one plan: raw tokens run the base model as usual; beacon rows take the beacon
// embedding and the beacon attention projections (BP), and share the norms and the feed-forward; padding rows attend
// to themselves. Attention runs over each sequence's key space: its own rows, then a copy of every beacon's key and
// value, the key rotated by the beacon's memory position. The base is frozen: only BP gets gradients (BG).
public sealed unsafe partial class LlamaTrainingModel
{
    public BeaconLayout? Beacon { get; }
    public float[] BeaconParameters { get; } = [];
    public float[] BeaconGradients { get; } = [];
    /// <summary>The plan the rows follow (<see cref="SetBeaconPlan"/>).</summary>
    public BeaconPlan? Plan { get; private set; }

    readonly float* BP, BG;                // beacon parameters and gradients (Beacon.Count)
    readonly int* _bpos;                   // [T] rotary position of each row of a sequence
    readonly int* _branges;                // [T, 6] key-space ranges of each row
    readonly int* _brows;                  // [B·M] rows (b·T + row) of the micro-batch's beacons
    int _beacons;                          // M of the current plan
    readonly float*[] _kx = [], _vx = [];  // [layer][B, Tk, KV] key space: the rows' keys (rotated) and values, then the memory copies
    readonly float* _dkx, _dvx;            // [B, Tk, KV] their gradients
    readonly float* _bx, _by, _bdq, _bdk, _bdv; // [B·M, D], [B·M, D], [B·M, QD], [B·M, KV], [B·M, KV] beacon rows gathered
    readonly float* _bf, _bf2;             // [B·M, F] × 2 beacon rows of the feed-forward (with the "mlp" beacon parameters)

    int KeySpace => Plan?.KeySpace ?? 0;

    /// <summary>Sets the plan of the next micro-batches (its capacity must be this model's T): positions, key ranges
    /// and the beacon rows. The caller fills Tokens, Targets and LossWeights row by row (beacon and padding rows weigh 0).</summary>
    public void SetBeaconPlan(BeaconPlan plan)
    {
        if (Beacon == null) throw new InvalidOperationException("this model was not made for Activation Beacon");
        if (plan.Rows != SeqLen) throw new CriaException($"a beacon plan of {plan.Rows} rows; the model holds {SeqLen}");
        Plan = plan;
        plan.Position.CopyTo(new Span<int>(_bpos, SeqLen));
        plan.Ranges.CopyTo(new Span<int>(_branges, SeqLen * 6));
        _beacons = plan.Beacons;
        for (int b = 0; b < BatchSize; b++)
            for (int i = 0; i < _beacons; i++) _brows[b * _beacons + i] = b * SeqLen + plan.BeaconRows[i];
    }

    // ---------------------------------------------------------------- forward and backward, side by side
    /// <summary>x0 of beacon rows = the beacon embedding.</summary>
    void BeaconEmbed()
    {
        int D = Shape.Dim;
        for (int i = 0; i < BatchSize * _beacons; i++)
            new ReadOnlySpan<float>(BP + Beacon!.Embed, D).CopyTo(new Span<float>(_xIn[0] + (long)_brows[i] * D, D));
    }

    /// <summary>dEmbed += Σ dx0 over beacon rows.</summary>
    void BeaconEmbedBackward()
    {
        for (int i = 0; i < BatchSize * _beacons; i++) Layers.Axpy(1f, _dres + (long)_brows[i] * Shape.Dim, BG + Beacon!.Embed, Shape.Dim);
    }

    /// <summary>q, k, v of beacon rows from the beacon projections (replacing the base's).</summary>
    void BeaconQkv(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, KV = Shape.KvDim;
        if (NB == 0) return;
        Gather(_bx, _xn1[l], D);
        MatMulNT(_bx, BP + Beacon!.Wq[l], _by, NB, D, D); Scatter(_q[l], _by, D);
        MatMulNT(_bx, BP + Beacon.Wk[l], _by, NB, KV, D); Scatter(_k[l], _by, KV);
        MatMulNT(_bx, BP + Beacon.Wv[l], _by, NB, KV, D); Scatter(_v[l], _by, KV);
    }

    /// <summary>Backward of <see cref="BeaconQkv"/>, before the base's: takes the beacon rows' dq, dk, dv out of the
    /// base's products (zeroed there) and returns them for <see cref="BeaconQkvBackwardInput"/>.</summary>
    void BeaconQkvBackward(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, KV = Shape.KvDim;
        if (NB == 0) return;
        Gather(_bdq, _dq, D, clear: true); Gather(_bdk, _dk, KV, clear: true); Gather(_bdv, _dv, KV, clear: true);
        Gather(_bx, _xn1[l], D);
        MatMulTN(_bdq, _bx, BG + Beacon!.Wq[l], D, D, NB);
        MatMulTN(_bdk, _bx, BG + Beacon.Wk[l], KV, D, NB);
        MatMulTN(_bdv, _bx, BG + Beacon.Wv[l], KV, D, NB);
    }

    /// <summary>dxn1 of beacon rows += dq·Wq_b + dk·Wk_b + dv·Wv_b (after the base's products, which saw zeros there).</summary>
    void BeaconQkvBackwardInput(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, KV = Shape.KvDim;
        if (NB == 0) return;
        Clear(_by, (long)NB * D);
        MatMulNN(_bdq, BP + Beacon!.Wq[l], _by, NB, D, D);
        MatMulNN(_bdk, BP + Beacon.Wk[l], _by, NB, D, KV);
        MatMulNN(_bdv, BP + Beacon.Wv[l], _by, NB, D, KV);
        ScatterAdd(_dxn, _by, D);
    }

    /// <summary>y = x·Wᵀ on the beacon rows (x [N, inW], y [N, outW], W a beacon matrix [outW, inW]), replacing the
    /// base's product there; xb and yb hold the gathered rows.</summary>
    void BeaconProduct(float* x, int inW, long w, float* y, int outW, float* xb, float* yb)
    {
        int NB = BatchSize * _beacons;
        if (NB == 0) return;
        Gather(xb, x, inW);
        MatMulNT(xb, BP + w, yb, NB, outW, inW);
        Scatter(y, yb, outW);
    }

    /// <summary>The attention output of beacon rows through the beacon Wo (replacing the base's product in xMid).</summary>
    void BeaconOutput(int l) => BeaconProduct(_att[l], Shape.Dim, Beacon!.Wo[l], _xMid[l], Shape.Dim, _bx, _by);

    /// <summary>Backward of <see cref="BeaconOutput"/>: datt of beacon rows = dxMid·Wo_b, dWo_b += dxMidᵀ·att.</summary>
    void BeaconOutputBackward(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim;
        if (NB == 0) return;
        Gather(_bdq, _dres, D);
        Gather(_bx, _att[l], D);
        MatMulTN(_bdq, _bx, BG + Beacon!.Wo[l], D, D, NB);
        Clear(_by, (long)NB * D);
        MatMulNN(_bdq, BP + Beacon.Wo[l], _by, NB, D, D);
        Scatter(_datt, _by, D);
    }

    /// <summary>The "mlp" beacon parameters: u of beacon rows from the beacon up projection (the gate is shared).</summary>
    void BeaconUp(int l) => BeaconProduct(_xn2[l], Shape.Dim, Beacon!.Up![l], _u[l], Shape.FfnDim, _bx, _bf);

    /// <summary>Backward of <see cref="BeaconUp"/>, after the SwiGLU's: takes the beacon rows' du out of the base's product
    /// (zeroed there), dUp_b += duᵀ·xn2.</summary>
    void BeaconUpBackward(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, F = Shape.FfnDim;
        if (NB == 0) return;
        Gather(_bf2, _du, F, clear: true);
        Gather(_bx, _xn2[l], D);
        MatMulTN(_bf2, _bx, BG + Beacon!.Up![l], F, D, NB);
    }

    /// <summary>dxn2 of beacon rows += du·Up_b (after the base's products, which saw zeros there).</summary>
    void BeaconUpBackwardInput(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, F = Shape.FfnDim;
        if (NB == 0) return;
        Clear(_by, (long)NB * D);
        MatMulNN(_bf2, BP + Beacon!.Up![l], _by, NB, D, F);
        ScatterAdd(_dxn, _by, D);
    }

    /// <summary>The feed-forward output of beacon rows through the beacon down projection (replacing the base's).</summary>
    void BeaconDown(int l) => BeaconProduct(_h[l], Shape.FfnDim, Beacon!.Down![l], _xIn[l + 1], Shape.Dim, _bf, _by);

    /// <summary>Backward of <see cref="BeaconDown"/>: dh of beacon rows = dOut·Down_b, dDown_b += dOutᵀ·h.</summary>
    void BeaconDownBackward(int l)
    {
        int NB = BatchSize * _beacons, D = Shape.Dim, F = Shape.FfnDim;
        if (NB == 0) return;
        Gather(_bdq, _dres, D);
        Gather(_bf, _h[l], F);
        MatMulTN(_bdq, _bf, BG + Beacon!.Down![l], D, F, NB);
        Clear(_bf2, (long)NB * F);
        MatMulNN(_bdq, BP + Beacon.Down[l], _bf2, NB, F, D);
        Scatter(_dh, _bf2, F);
    }

    /// <summary>Before RoPE: the memory copies of the beacons' keys (rotated here by their memory positions 0…M−1)
    /// and values.</summary>
    void BeaconMemoryKeys(int l)
    {
        int T = SeqLen, Tk = KeySpace, KV = Shape.KvDim, hd = Shape.HeadDim;
        for (int b = 0; b < BatchSize; b++)
        {
            for (int i = 0; i < _beacons; i++)
            {
                long src = (long)_brows[b * _beacons + i] * KV, dst = ((long)b * Tk + T + i) * KV;
                new ReadOnlySpan<float>(_k[l] + src, KV).CopyTo(new Span<float>(_kx[l] + dst, KV));
                new ReadOnlySpan<float>(_v[l] + src, KV).CopyTo(new Span<float>(_vx[l] + dst, KV));
            }
            Layers.RopeForward(_kx[l] + ((long)b * Tk + T) * KV, Shape.KvHeads, hd, _ropeTable, hd, T, 0, _beacons);
        }
    }

    /// <summary>After RoPE: the rows' own keys and values into the key space.</summary>
    void BeaconRowKeys(int l)
    {
        int T = SeqLen, Tk = KeySpace, KV = Shape.KvDim;
        for (int b = 0; b < BatchSize; b++)
        {
            new ReadOnlySpan<float>(_k[l] + (long)b * T * KV, T * KV).CopyTo(new Span<float>(_kx[l] + (long)b * Tk * KV, T * KV));
            new ReadOnlySpan<float>(_v[l] + (long)b * T * KV, T * KV).CopyTo(new Span<float>(_vx[l] + (long)b * Tk * KV, T * KV));
        }
    }

    /// <summary>After the attention's backward: dk and dv of the rows from the key space's gradients (the memory
    /// values' gradients go to their beacons; the memory keys' wait for <see cref="BeaconMemoryKeysBackward"/>).</summary>
    void BeaconRowKeysBackward()
    {
        int T = SeqLen, Tk = KeySpace, KV = Shape.KvDim;
        for (int b = 0; b < BatchSize; b++)
        {
            Layers.Axpy(1f, _dkx + (long)b * Tk * KV, _dk + (long)b * T * KV, T * KV);
            Layers.Axpy(1f, _dvx + (long)b * Tk * KV, _dv + (long)b * T * KV, T * KV);
            for (int i = 0; i < _beacons; i++)
                Layers.Axpy(1f, _dvx + ((long)b * Tk + T + i) * KV, _dv + (long)_brows[b * _beacons + i] * KV, KV);
        }
    }

    /// <summary>After the rows' RoPE backward: the memory keys' gradients rotated back by their memory positions and
    /// added to their beacons' dk (both are now gradients of the key before RoPE).</summary>
    void BeaconMemoryKeysBackward()
    {
        int T = SeqLen, Tk = KeySpace, KV = Shape.KvDim, hd = Shape.HeadDim;
        for (int b = 0; b < BatchSize; b++)
        {
            float* mem = _dkx + ((long)b * Tk + T) * KV;
            Layers.RopeBackward(mem, Shape.KvHeads, hd, _ropeTable, hd, T, 0, _beacons);
            for (int i = 0; i < _beacons; i++) Layers.Axpy(1f, mem + (long)i * KV, _dk + (long)_brows[b * _beacons + i] * KV, KV);
        }
    }

    void BeaconAttentionForwardBody(int start, int end, int worker)
    {
        var s = Shape; int l = _layer;
        for (int item = start; item < end; item++)
            Layers.RangeAttentionForward(_att[l], _probs[l], _q[l], _kx[l], _vx[l], item / s.KvHeads, item % s.KvHeads, SeqLen, KeySpace,
                s.Heads, s.KvHeads, s.HeadDim, _attScratch + (long)worker * (4 * s.HeadDim + 1) * KeySpace, _branges);
    }

    void BeaconAttentionBackwardBody(int start, int end, int worker)
    {
        var s = Shape; int l = _layer;
        for (int item = start; item < end; item++)
            Layers.RangeAttentionBackward(_dq, _dkx, _dvx, _datt, _probs[l], _q[l], _kx[l], _vx[l], item / s.KvHeads, item % s.KvHeads,
                SeqLen, KeySpace, s.Heads, s.KvHeads, s.HeadDim, _attScratch + (long)worker * (4 * s.HeadDim + 1) * KeySpace, _branges);
    }

    // dst[i] = src[row of beacon i] ([B·M, width]); with clear, the source rows are zeroed after.
    void Gather(float* dst, float* src, int width, bool clear = false)
    {
        for (int i = 0; i < BatchSize * _beacons; i++)
        {
            var row = new Span<float>(src + (long)_brows[i] * width, width);
            row.CopyTo(new Span<float>(dst + (long)i * width, width));
            if (clear) row.Clear();
        }
    }

    void Scatter(float* dst, float* src, int width)
    {
        for (int i = 0; i < BatchSize * _beacons; i++)
            new ReadOnlySpan<float>(src + (long)i * width, width).CopyTo(new Span<float>(dst + (long)_brows[i] * width, width));
    }

    void ScatterAdd(float* dst, float* src, int width)
    {
        for (int i = 0; i < BatchSize * _beacons; i++) Layers.Axpy(1f, src + (long)i * width, dst + (long)_brows[i] * width, width);
    }
}
