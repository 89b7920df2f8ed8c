using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Cria.Kernels;

namespace Cria.Training;

/// <summary>
/// The operations of a Llama block in F32, each forward directly followed by its backward (llm.c style). Tensors are
/// row-major pointers; every function works on rows [r0, r1) so callers can split rows across workers. Backward
/// functions accumulate (<c>+=</c>) into gradients unless they say otherwise.
/// </summary>
public static unsafe class Layers
{
    // ---------------------------------------------------------------- dropout
    /// <summary>
    /// Inverted dropout over elements [i0, i1): element i is kept when number i of the counter-based stream keyed
    /// <paramref name="key"/> (<see cref="TrainingRng.At"/>), as a fraction of 2⁶⁴, is at least p. Forward: y = x/(1 − p)
    /// where kept, else 0. Backward (<paramref name="accumulate"/>, x the gradient of the dropped tensor): y += the
    /// same. The mask is recomputed, never stored.
    /// </summary>
    public static void Dropout(float* y, float* x, ulong key, float p, long i0, long i1, bool accumulate)
    {
        ulong threshold = (ulong)Math.Min(p * 18446744073709551616.0, ulong.MaxValue);
        float keep = 1f / (1f - p);
        long i = i0;
        if (Vector256.IsHardwareAccelerated)
        {
            // Four draws at once: the same SplitMix64 finaliser on 64-bit lanes, the kept lanes' all-ones masks
            // narrowed to 32 bits to select the floats.
            var lane = Vector256.Create(1UL, 2UL, 3UL, 4UL);
            var golden = Vector256.Create(0x9E3779B97F4A7C15UL);
            var vkey = Vector256.Create(key);
            var vth = Vector256.Create(threshold);
            var vkeep = Vector128.Create(keep);
            for (; i + 4 <= i1; i += 4)
            {
                var z = vkey + (Vector256.Create((ulong)i) + lane) * golden;
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
                z ^= z >> 31;
                var ge = Vector256.GreaterThanOrEqual(z, vth);
                var kept = Vector128.Narrow(ge.GetLower(), ge.GetUpper()).AsSingle();
                var v = Vector128.Load(x + i) * vkeep & kept;
                if (accumulate) v += Vector128.Load(y + i);
                v.Store(y + i);
            }
        }
        for (; i < i1; i++)
        {
            float v = TrainingRng.At(key, i) >= threshold ? x[i] * keep : 0f;
            if (accumulate) y[i] += v; else y[i] = v;
        }
    }

    // ---------------------------------------------------------------- RMSNorm
    /// <summary>y = x · rstd · w, rstd = 1/sqrt(mean(x²) + eps) — the same arithmetic as <see cref="Ops.RmsNorm"/>.</summary>
    public static void RmsNormForward(float* y, float* rstd, float* x, float* w, int d, float eps, int r0, int r1)
    {
        for (int r = r0; r < r1; r++)
        {
            float* xr = x + (long)r * d, yr = y + (long)r * d;
            double sum = 0;
            for (int i = 0; i < d; i++) sum += (double)(xr[i] * xr[i]);
            float mean = (float)(sum / d);
            float s = 1.0f / MathF.Sqrt(mean + eps);
            rstd[r] = s;
            for (int i = 0; i < d; i++) yr[i] = xr[i] * s * w[i];
        }
    }

    /// <summary>
    /// Inverts <c>y_i = x_i·s·w_i</c>: dx_i += s·w_i·dy_i − s³/d · x_i · Σ_j dy_j·w_j·x_j; dw_i += dy_i·x_i·s.
    /// dw is shared by all rows, so callers run this on one thread (it is O(rows·d)).
    /// </summary>
    public static void RmsNormBackward(float* dx, float* dw, float* dy, float* x, float* w, float* rstd, int d, int r0, int r1)
    {
        for (int r = r0; r < r1; r++)
        {
            float* xr = x + (long)r * d, dyr = dy + (long)r * d, dxr = dx + (long)r * d;
            float s = rstd[r];
            float dot = 0;
            for (int i = 0; i < d; i++) dot += dyr[i] * w[i] * xr[i];
            float c = s * s * s / d * dot;
            for (int i = 0; i < d; i++)
            {
                dxr[i] += s * w[i] * dyr[i] - c * xr[i];
                dw[i] += dyr[i] * xr[i] * s;
            }
        }
    }

    // ---------------------------------------------------------------- RoPE
    /// <summary>
    /// Rotates adjacent pairs (x[2i], x[2i+1]) of each head's first nRot dims, as <see cref="Ops.RopeNorm"/>
    /// (llama.cpp's LLAMA_ROPE_TYPE_NORM). Row r sits at position r mod seqLen, or with <paramref name="positions"/> [seqLen]
    /// at positions[r mod seqLen]; cosSin is [seqLen, nRot]. (A packed
    /// document keeps its positions in the sequence: attention inside it sees only differences of positions.)
    /// </summary>
    public static void RopeForward(float* x, int heads, int headDim, float* cosSin, int nRot, int seqLen, int r0, int r1, int* positions = null)
    {
        int width = heads * headDim;
        for (int r = r0; r < r1; r++)
        {
            float* cs = cosSin + (long)(positions != null ? positions[r % seqLen] : r % seqLen) * nRot;
            for (int h = 0; h < heads; h++)
            {
                float* v = x + (long)r * width + h * headDim;
                for (int i = 0; i < nRot; i += 2)
                {
                    float c = cs[i], s = cs[i + 1], x0 = v[i], x1 = v[i + 1];
                    v[i] = x0 * c - x1 * s;
                    v[i + 1] = x0 * s + x1 * c;
                }
            }
        }
    }

    /// <summary>The rotation is orthogonal, so its backward rotates the gradient by −θ (in place).</summary>
    public static void RopeBackward(float* dx, int heads, int headDim, float* cosSin, int nRot, int seqLen, int r0, int r1, int* positions = null)
    {
        int width = heads * headDim;
        for (int r = r0; r < r1; r++)
        {
            float* cs = cosSin + (long)(positions != null ? positions[r % seqLen] : r % seqLen) * nRot;
            for (int h = 0; h < heads; h++)
            {
                float* v = dx + (long)r * width + h * headDim;
                for (int i = 0; i < nRot; i += 2)
                {
                    float c = cs[i], s = cs[i + 1], g0 = v[i], g1 = v[i + 1];
                    v[i] = g0 * c + g1 * s;
                    v[i + 1] = -g0 * s + g1 * c;
                }
            }
        }
    }

    // ---------------------------------------------------------------- SwiGLU
    /// <summary>h = silu(g) · u, silu(x) = x / (1 + e^−x), as <see cref="Ops.SwiGlu"/>.</summary>
    public static void SwiGluForward(float* h, float* g, float* u, long i0, long i1)
    {
        for (long i = i0; i < i1; i++)
        {
            float x = g[i];
            h[i] = x / (1.0f + MathF.Exp(-x)) * u[i];
        }
    }

    /// <summary>dg = dh·u·σ(g)·(1 + g·(1 − σ(g))), du = dh·silu(g) (overwrites dg and du).</summary>
    public static void SwiGluBackward(float* dg, float* du, float* dh, float* g, float* u, long i0, long i1)
    {
        for (long i = i0; i < i1; i++)
        {
            float x = g[i];
            float sig = 1.0f / (1.0f + MathF.Exp(-x));
            dg[i] = dh[i] * u[i] * sig * (1.0f + x * (1.0f - sig));
            du[i] = dh[i] * x * sig;
        }
    }

    // ---------------------------------------------------------------- causal attention (GQA)
    /// <summary>kt[d·T + t] = k[row0 + t, kvHead·hd + d]: one KV head of one sequence, transposed so that the scores of a
    /// query against all keys are hd contiguous axpys instead of T short dot products.</summary>
    static void TransposeHead(float* kt, float* k, long row0, int seqLen, int kw, int kvHead, int hd)
    {
        for (int t = 0; t < seqLen; t++)
        {
            float* src = k + (row0 + t) * kw + kvHead * hd;
            for (int d = 0; d < hd; d++) kt[(long)d * seqLen + t] = src[d];
        }
    }

    /// <summary>k[row0 + t, kvHead·hd + d] += kt[d·T + t]: adds a transposed head gradient back into its rows.</summary>
    static void AddTransposedHead(float* k, float* kt, long row0, int seqLen, int kw, int kvHead, int hd)
    {
        for (int t = 0; t < seqLen; t++)
        {
            float* dst = k + (row0 + t) * kw + kvHead * hd;
            for (int d = 0; d < hd; d++) dst[d] += kt[(long)d * seqLen + t];
        }
    }

    /// <summary>
    /// For one sequence b and one KV head: every query head of its group attends causally over positions 0..t, or,
    /// with <paramref name="keys"/> &gt; 0, bidirectionally over positions 0..keys − 1 (LS-unLLaMA's unmasked attention;
    /// keys = the sequence's length, so padding after it is never attended). Causal attention may start later than 0
    /// (<see cref="FirstKey"/>): in a packed sequence (<paramref name="segStart"/> [T]: each position's document's first
    /// position) query t attends over its own document only, and with LongLoRA's S2-Attn (<paramref name="groupLower"/>,
    /// <paramref name="groupUpper"/> [T]: the first position of t's group for the lower and the upper half of the query
    /// heads, whose groups are shifted against each other) over its group only; with both, over the later start.
    /// With a <paramref name="window"/> W &gt; 0 (LongGen's windowed layers) causal query t attends to two ranges of
    /// keys: the first <paramref name="sinks"/> positions from that start s0 (attention sinks) and the window
    /// (t − W, t] (<see cref="KeyRanges"/>). The keys between keep probability 0 in <paramref name="probs"/>, and
    /// neither pass touches them.
    /// q [B·T, nHead·hd], k/v [B·T, nKv·hd], probs [B, nHead, T, T] (saved for backward), out [B·T, nHead·hd].
    /// K and V of the head are transposed first, so scores and outputs are hd long vector ops over positions.
    /// scratch holds 2·hd·T floats.
    /// </summary>
    public static void AttentionForward(float* outp, float* probs, float* q, float* k, float* v,
        int b, int kvHead, int seqLen, int nHead, int nKv, int hd, float* scratch, int keys = 0, int* segStart = null,
        int* groupLower = null, int* groupUpper = null, int window = 0, int sinks = 0)
    {
        int group = nHead / nKv, qw = nHead * hd, kw = nKv * hd;
        float scale = 1.0f / MathF.Sqrt(hd);
        long row0 = (long)b * seqLen;
        float* kt = scratch, vt = scratch + (long)hd * seqLen;
        TransposeHead(kt, k, row0, seqLen, kw, kvHead, hd);
        TransposeHead(vt, v, row0, seqLen, kw, kvHead, hd);
        int* rg = stackalloc int[4];
        for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
        {
            int* groups = 2 * h >= nHead ? groupUpper : groupLower;
            for (int t = 0; t < seqLen; t++)
            {
                KeysOf(rg, t, keys, segStart, groups, window, sinks);
                RowForward(q + (row0 + t) * qw + h * hd, probs + (((long)b * nHead + h) * seqLen + t) * seqLen,
                    outp + (row0 + t) * qw + h * hd, kt, vt, seqLen, hd, scale, rg, 2);
            }
        }
    }

    /// <summary>
    /// Backward of <see cref="AttentionForward"/> for one (sequence, KV head): dP = dO·vᵀ, dS = P ⊙ (dP − Σ P·dP),
    /// dq = scale·dS·k (overwritten), dk += scale·dSᵀ·q, dv += Pᵀ·dO. The group's query heads all write to one
    /// KV head, so one worker owns a (sequence, KV head) pair; dK and dV are accumulated transposed (hd long vector
    /// ops over positions) and added back at the end. scratch holds (4·hd + 1)·T floats. <paramref name="keys"/> as in
    /// the forward, and the documents and groups too.
    /// </summary>
    public static void AttentionBackward(float* dq, float* dk, float* dv, float* dout, float* probs, float* q, float* k, float* v,
        int b, int kvHead, int seqLen, int nHead, int nKv, int hd, float* scratch, int keys = 0, int* segStart = null,
        int* groupLower = null, int* groupUpper = null, int window = 0, int sinks = 0)
    {
        int group = nHead / nKv, qw = nHead * hd, kw = nKv * hd;
        float scale = 1.0f / MathF.Sqrt(hd);
        long row0 = (long)b * seqLen, plane = (long)hd * seqLen;
        float* kt = scratch, vt = scratch + plane, dkt = scratch + 2 * plane, dvt = scratch + 3 * plane, ds = scratch + 4 * plane;
        TransposeHead(kt, k, row0, seqLen, kw, kvHead, hd);
        TransposeHead(vt, v, row0, seqLen, kw, kvHead, hd);
        new Span<float>(dkt, (int)(2 * plane)).Clear();
        int* rg = stackalloc int[4];
        for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
        {
            int* groups = 2 * h >= nHead ? groupUpper : groupLower;
            for (int t = 0; t < seqLen; t++)
            {
                KeysOf(rg, t, keys, segStart, groups, window, sinks); // as the forward
                long at = (row0 + t) * qw + h * hd;
                RowBackward(dq + at, dout + at, q + at, probs + (((long)b * nHead + h) * seqLen + t) * seqLen,
                    kt, vt, dkt, dvt, ds, seqLen, hd, scale, rg, 2);
            }
        }
        AddTransposedHead(dk, dkt, row0, seqLen, kw, kvHead, hd);
        AddTransposedHead(dv, dvt, row0, seqLen, kw, kvHead, hd);
    }

    /// <summary>The keys of causal (or bidirectional) query t as two ranges [rg0, rg1) [rg2, rg3): the sinks and the
    /// window of <see cref="KeyRanges"/>, from the first key of its document and S2-Attn group; bidirectional: [0, keys).</summary>
    static void KeysOf(int* rg, int t, int keys, int* segStart, int* groups, int window, int sinks)
    {
        int n = keys > 0 ? keys : t + 1, s0 = keys > 0 ? 0 : FirstKey(segStart, groups, t);
        var (e0, w0) = KeyRanges(s0, t, keys > 0 ? 0 : window, sinks);
        rg[0] = s0; rg[1] = e0; rg[2] = w0; rg[3] = n;
    }

    /// <summary>
    /// One query row of one head over <paramref name="count"/> key ranges [rg[2i], rg[2i+1]) of a transposed K and V
    /// (kt, vt [hd, tk]): scores into <paramref name="p"/> [tk] (0 outside the ranges), softmax there, o = P·V. Both
    /// attention kernels of the trainer run their rows through it.
    /// </summary>
    static void RowForward(float* qt, float* p, float* o, float* kt, float* vt, int tk, int hd, float scale, int* rg, int count)
    {
        new Span<float>(p, tk).Clear();
        float max = float.NegativeInfinity;
        for (int i = 0; i < 2 * count; i += 2)
        {
            int s0 = rg[i], m = rg[i + 1] - s0;
            for (int d = 0; d < hd; d++) Axpy(qt[d] * scale, kt + (long)d * tk + s0, p + s0, m);
            for (int j = s0; j < s0 + m; j++) if (p[j] > max) max = p[j];
        }
        float sum = 0;
        for (int i = 0; i < 2 * count; i += 2)
            for (int j = rg[i]; j < rg[i + 1]; j++) { float e = MathF.Exp(p[j] - max); p[j] = e; sum += e; }
        float inv = 1.0f / sum;
        for (int i = 0; i < 2 * count; i += 2)
            for (int j = rg[i]; j < rg[i + 1]; j++) p[j] *= inv;
        for (int d = 0; d < hd; d++)
        {
            float acc = 0;
            for (int i = 0; i < 2 * count; i += 2) acc += Gemm.Dot(p + rg[i], vt + (long)d * tk + rg[i], rg[i + 1] - rg[i]);
            o[d] = acc;
        }
    }

    /// <summary>Backward of <see cref="RowForward"/>: dP = dO·vᵀ, dS = P ⊙ (dP − Σ P·dP), dq = scale·dS·k (overwritten),
    /// dKᵀ += scale·q ⊗ dS and dVᵀ += dO ⊗ P (transposed, [hd, tk]); ds is [tk] scratch.</summary>
    static void RowBackward(float* dqt, float* dot, float* qt, float* p, float* kt, float* vt, float* dkt, float* dvt, float* ds,
        int tk, int hd, float scale, int* rg, int count)
    {
        float sum = 0;
        for (int i = 0; i < 2 * count; i += 2)
        {
            int s0 = rg[i], m = rg[i + 1] - s0;
            new Span<float>(ds + s0, m).Clear();
            for (int d = 0; d < hd; d++)
            {
                Axpy(dot[d], vt + (long)d * tk + s0, ds + s0, m);  // dP
                Axpy(dot[d], p + s0, dvt + (long)d * tk + s0, m); // dVᵀ += dO ⊗ P
            }
            sum += Gemm.Dot(p + s0, ds + s0, m);
        }
        for (int i = 0; i < 2 * count; i += 2)
            for (int j = rg[i]; j < rg[i + 1]; j++) ds[j] = p[j] * (ds[j] - sum) * scale;
        for (int d = 0; d < hd; d++)
        {
            float acc = 0;
            for (int i = 0; i < 2 * count; i += 2)
            {
                int s0 = rg[i], m = rg[i + 1] - s0;
                acc += Gemm.Dot(ds + s0, kt + (long)d * tk + s0, m);
                Axpy(qt[d], ds + s0, dkt + (long)d * tk + s0, m); // dKᵀ += q ⊗ dS
            }
            dqt[d] = acc;
        }
    }

    /// <summary>
    /// Attention over explicit key ranges (Activation Beacon, <see cref="BeaconPlan"/>): for one sequence b and one KV
    /// head, query row t of Tq attends to the keys of three ranges [r0, r1) [r2, r3) [r4, r5) (<paramref name="ranges"/>
    /// [Tq, 6]) of a key space of Tk rows (kx, vx [B·Tk, nKv·hd]; for beacons, the sequence's own rows and then the
    /// memory copies). The same arithmetic as <see cref="AttentionForward"/> over a union of ranges; probabilities of keys
    /// outside them stay 0. probs [B, nHead, Tq, Tk]; scratch 2·hd·Tk floats.
    /// </summary>
    public static void RangeAttentionForward(float* outp, float* probs, float* q, float* kx, float* vx,
        int b, int kvHead, int tq, int tk, int nHead, int nKv, int hd, float* scratch, int* ranges)
    {
        int group = nHead / nKv, qw = nHead * hd, kw = nKv * hd;
        float scale = 1.0f / MathF.Sqrt(hd);
        float* kt = scratch, vt = scratch + (long)hd * tk;
        TransposeHead(kt, kx, (long)b * tk, tk, kw, kvHead, hd);
        TransposeHead(vt, vx, (long)b * tk, tk, kw, kvHead, hd);
        for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
            for (int t = 0; t < tq; t++)
            {
                long at = ((long)b * tq + t) * qw + h * hd;
                RowForward(q + at, probs + (((long)b * nHead + h) * tq + t) * tk, outp + at, kt, vt, tk, hd, scale, ranges + t * 6, 3);
            }
    }

    /// <summary>Backward of <see cref="RangeAttentionForward"/> (as <see cref="AttentionBackward"/>): dq overwritten,
    /// dkx and dvx ([B·Tk, nKv·hd]) accumulated. scratch (4·hd + 1)·Tk floats.</summary>
    public static void RangeAttentionBackward(float* dq, float* dkx, float* dvx, float* dout, float* probs, float* q, float* kx, float* vx,
        int b, int kvHead, int tq, int tk, int nHead, int nKv, int hd, float* scratch, int* ranges)
    {
        int group = nHead / nKv, qw = nHead * hd, kw = nKv * hd;
        float scale = 1.0f / MathF.Sqrt(hd);
        long plane = (long)hd * tk;
        float* kt = scratch, vt = scratch + plane, dkt = scratch + 2 * plane, dvt = scratch + 3 * plane, ds = scratch + 4 * plane;
        TransposeHead(kt, kx, (long)b * tk, tk, kw, kvHead, hd);
        TransposeHead(vt, vx, (long)b * tk, tk, kw, kvHead, hd);
        new Span<float>(dkt, (int)(2 * plane)).Clear();
        for (int h = kvHead * group; h < (kvHead + 1) * group; h++)
            for (int t = 0; t < tq; t++)
            {
                long at = ((long)b * tq + t) * qw + h * hd;
                RowBackward(dq + at, dout + at, q + at, probs + (((long)b * nHead + h) * tq + t) * tk,
                    kt, vt, dkt, dvt, ds, tk, hd, scale, ranges + t * 6, 3);
            }
        AddTransposedHead(dkx, dkt, (long)b * tk, tk, kw, kvHead, hd);
        AddTransposedHead(dvx, dvt, (long)b * tk, tk, kw, kvHead, hd);
    }

    /// <summary>The keys of query t in a windowed layer, as two ranges: sinks [s0, e0) and window [w0, t]. Without a
    /// window (or while the window still reaches the sinks) the first range is empty and the second is [s0, t].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (int E0, int W0) KeyRanges(int s0, int t, int window, int sinks)
    {
        int w0 = window > 0 ? Math.Max(s0, t - window + 1) : s0;
        if (w0 <= s0 + sinks) return (s0, s0);
        return (s0 + sinks, w0);
    }

    /// <summary>The first key causal query t attends to: the later of its document's start and its S2-Attn group's
    /// (either array null: 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int FirstKey(int* segStart, int* groups, int t) => Math.Max(segStart != null ? segStart[t] : 0, groups != null ? groups[t] : 0);

    // ---------------------------------------------------------------- cross-entropy
    /// <summary>
    /// For each row: loss = logsumexp(logits) − logits[target]; the logits are replaced by their gradient
    /// (softmax − onehot) · gradScale. Returns nothing; losses[r] receives each row's loss.
    /// </summary>
    /// <param name="weights">optional per-row weights: row r's gradient is scaled by gradScale · weights[r]</param>
    /// <param name="targets2">optional second target of each row, with <paramref name="weights2"/>[r] its weight: the
    /// row's loss becomes weights[r]·CE(targets[r]) + weights2[r]·CE(targets2[r]) (a soft target over two tokens), its
    /// gradient (softmax·(w + w2) − w·onehot − w2·onehot2)·gradScale. losses[r] stays CE(targets[r]).</param>
    public static void CrossEntropyForwardBackward(float* logits, int* targets, float* losses, int vocab, float gradScale, int r0, int r1, float* weights = null,
        int* targets2 = null, float* weights2 = null)
    {
        for (int r = r0; r < r1; r++)
        {
            float* l = logits + (long)r * vocab;
            float max = float.NegativeInfinity;
            for (int i = 0; i < vocab; i++) if (l[i] > max) max = l[i];
            double sum = 0;
            for (int i = 0; i < vocab; i++) { float e = MathF.Exp(l[i] - max); l[i] = e; sum += e; }
            int t = targets[r];
            float invSum = (float)(1.0 / sum);
            losses[r] = (float)(Math.Log(sum) - Math.Log(l[t]));
            float scale = weights != null ? gradScale * weights[r] : gradScale;
            float scale2 = weights2 != null ? gradScale * weights2[r] : 0f;
            float g = (scale + scale2) * invSum;
            for (int i = 0; i < vocab; i++) l[i] *= g;
            l[t] -= scale;
            if (scale2 != 0f) l[targets2![r]] -= scale2;
        }
    }

    /// <summary>
    /// One row of temperature-scaled distillation: returns τ²·KL(p ‖ q) with p = softmax(<paramref name="teacher"/>/τ),
    /// q = softmax(<paramref name="student"/>/τ), and overwrites <paramref name="student"/> with its gradient times
    /// <paramref name="scale"/>: τ²·(q − p)/τ = τ·(q − p). The teacher row is left as softmax(z_t/τ).
    /// </summary>
    public static double DistillRow(Span<float> teacher, Span<float> student, float tau, float scale)
    {
        float inv = 1f / tau;
        Softmax(teacher, inv); Softmax(student, inv);
        double kl = 0;
        for (int i = 0; i < teacher.Length; i++)
        {
            double p = teacher[i], q = student[i];
            if (p > 0) kl += p * (Math.Log(p) - Math.Log(Math.Max(q, 1e-30)));
            student[i] = (float)(tau * (q - p) * scale);
        }
        return tau * tau * kl;

        // x ← softmax(x / τ) in place
        static void Softmax(Span<float> x, float invTau)
        {
            float max = float.NegativeInfinity;
            foreach (float v in x) max = MathF.Max(max, v);
            double sum = 0;
            for (int i = 0; i < x.Length; i++) { double e = Math.Exp((x[i] - max) * invTau); x[i] = (float)e; sum += e; }
            for (int i = 0; i < x.Length; i++) x[i] = (float)(x[i] / sum);
        }
    }

    /// <summary>Loss only (no gradient): for evaluation.</summary>
    public static float CrossEntropyLoss(float* logits, int target, int vocab)
    {
        float max = float.NegativeInfinity;
        for (int i = 0; i < vocab; i++) if (logits[i] > max) max = logits[i];
        double sum = 0;
        for (int i = 0; i < vocab; i++) sum += Math.Exp(logits[i] - max);
        return (float)(Math.Log(sum) - (logits[target] - max));
    }

    // ---------------------------------------------------------------- helpers
    /// <summary>y[0..n) += a · x[0..n) (<see cref="Ops.Axpy"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(float a, float* x, float* y, int n) => Ops.Axpy(a, new ReadOnlySpan<float>(x, n), new Span<float>(y, n));

    /// <summary>dst[c, r] = src[r, c] for a rows × cols matrix.</summary>
    public static void Transpose(float* dst, float* src, int rows, int cols, int c0, int c1)
    {
        for (int c = c0; c < c1; c++)
        {
            float* d = dst + (long)c * rows;
            for (int r = 0; r < rows; r++) d[r] = src[(long)r * cols + c];
        }
    }
}
