using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Cria.Kernels;

namespace Cria.Training;

/// <summary>
/// A Llama model in F32 with a training forward and backward over a micro-batch of B sequences of T tokens
/// (every sequence starts at position 0). Parameters and gradients are flat pinned buffers laid out by
/// <see cref="ParameterLayout"/>; every activation the backward needs is kept in buffers allocated once here, so a
/// step allocates nothing. Matrix products run on a <see cref="WorkerPool"/> through <see cref="Gemm"/>.
/// </summary>
public sealed unsafe partial class LlamaTrainingModel : IDisposable
{
    public LlamaShape Shape { get; }
    public ParameterLayout Layout { get; }
    public int BatchSize { get; }
    public int SeqLen { get; }
    /// <summary>Rows per micro-batch (B·T).</summary>
    public int Rows { get; }
    public float[] Parameters { get; }
    /// <summary>Gradients of <see cref="Parameters"/>; empty when the base is frozen (LoRA, SwiftKV distillation), whose
    /// weights get none.</summary>
    public float[] Gradients { get; }
    public int Threads => _pool.Count;
    /// <summary>With LoRA: the adapters' layout, parameters and gradients. The base parameters are then frozen: the
    /// backward computes no gradient for the weight matrices (norms and embeddings still get theirs, unused).</summary>
    public LoraLayout? Lora { get; }
    public float[] LoraParameters { get; } = [];
    public float[] LoraGradients { get; } = [];
    /// <summary>A sequence classifier (LS-LLaMA): a head on the final hidden states, trained with the adapters
    /// (<see cref="ClassifierForwardBackward"/>); null for a language model.</summary>
    public ClassifierOptions? Classifier { get; }
    /// <summary>SwiftKV distillation: the new projections' layout, parameters and gradients (the base is then frozen);
    /// null otherwise. <see cref="SwiftKvOn"/> chooses between the SwiftKV forward (the student) and the original (the
    /// teacher) over the same base weights.</summary>
    public SwiftKvLayout? SwiftKv { get; }
    public float[] SwiftKvParameters { get; } = [];
    public float[] SwiftKvGradients { get; } = [];
    /// <summary>QLoRA: the base's block projections kept compressed outside <see cref="Parameters"/> (then
    /// a layout without them), each dequantized into one scratch matrix before the product that
    /// reads it; null when they are F32 parameters.</summary>
    public FrozenBase? Frozen { get; }
    /// <summary>Whether <see cref="Forward"/> runs the SwiftKV wiring (default, with <see cref="SwiftKv"/> set) or the original model.</summary>
    public bool SwiftKvOn { get; set; }

    readonly List<Array> _keepAlive = new();
    GCHandle _parametersHandle;        // pins adopted parameters (see the constructor's parameters)
    bool Adopted => _parametersHandle.IsAllocated;
    readonly WorkerPool _pool;
    readonly Gemm _gemm;
    readonly ForJob _for = new();
    readonly ForJob.Body _attnForward, _attnBackward, _crossEntropy, _rmsForward, _rope, _swiGluForward, _swiGluBackward, _dropout;
    float* _a0, _a1, _a2, _a3, _a4; // arguments of the row-parallel element-wise bodies
    bool _ropeBackward;
    ulong _dropKey; int _dropCols; bool _dropAccumulate; // arguments of the dropout body
    readonly float* P, G;              // G is null when the base is frozen
    readonly float* _normGrad;         // [D] frozen base: where the norms' weight gradients go (computed beside dx, never read)
    readonly float* LP, LG;            // LoRA parameters and gradients (Lora.Count), when Lora is set
    readonly float* SP, SG;            // SwiftKV parameters and gradients (SwiftKv.Count), when SwiftKv is set
    readonly float* _hs, _rstdS;       // [N, D], [N]   SwiftKV: h = swiftkv_norm(x_L), the one K/V input of layers ≥ L
    readonly float*[] _dKs = [], _dVs = []; // [owner][N, KV] gradients of an AcrossKV group's shared keys (before RoPE) and values
    readonly float* _teacher;          // [N, V]        SwiftKV distillation: the original model's logits
    readonly float* _w;                // [max out, in] QLoRA: the frozen matrix the next product reads, dequantized
    FrozenMatrix? _dequant;            //               the matrix _dequantBody decodes
    readonly ForJob.Body? _dequantBody;
    readonly float*[] _loraT = [];     // [layer · 7 + target][N, r]  (α/r)·x·Aᵀ, kept for the backward
    readonly float*[] _loraBt = [];    // [layer · 7 + target][r, out] Bᵀ, so every adapter product runs long rows (see LoraForward)
    readonly float* _loraDt, _loraDbt; // [N, r], [r, max out]        scratch of the adapter backward
    readonly float* _loraX;            // [N, max in]  LoRA dropout: the dropped input, then (backward) its gradient
    readonly int* _tokens, _targets;  // [N]
    readonly int* _seqLens;           // [B] tokens of each sequence before its padding (T unless set)
    readonly int* _segStarts;         // [N] packed sequences: the first position of each row's document (0: one document per sequence)
    int* _groupLower, _groupUpper;    // [T], [T] S2-Attn: each position's group start for the lower and upper half of the heads (null when off)
    readonly float* _classLogits;     // [N, C]        per-token class logits, then their gradient (classifier)
    readonly float* _pooled;          // [B, C]        pooled class logits (classifier)
    readonly float* _ropeTable;       // [T, nRot]
    // Activations kept for backward, per layer l (N = B·T rows).
    readonly float*[] _xIn;           // [L+1][N, D]   residual stream entering layer l (l = L: the final one)
    readonly float*[] _xn1, _rstd1;   // [N, D], [N]   attention RMSNorm
    readonly float*[] _q, _k, _v;     // [N, QD], [N, KVD], [N, KVD] (q and k after RoPE)
    readonly float*[] _probs;         // [B, H, T, T]  attention probabilities
    readonly float*[] _att;           // [N, QD]       attention output before Wo
    readonly float*[] _xMid;          // [N, D]        residual after attention
    readonly float*[] _xn2, _rstd2;   // [N, D], [N]   FFN RMSNorm
    readonly float*[] _g, _u, _h;     // [N, F]        gate, up, silu(gate)·up
    readonly float* _xnf, _rstdf;     // [N, D], [N]   final norm
    readonly float* _logits;          // [N, V]        logits, then their gradient
    readonly float* _losses;          // [N]
    readonly float* _lossWeights;     // [N], 1 unless the trainer weights or masks targets
    readonly int* _targets2;          // [N] a second target of a row (soft targets over two tokens)
    readonly float* _lossWeights2;    // [N], 0 unless a row has a second target
    // Gradient scratch.
    readonly float* _dres, _dxn, _dq, _dk, _dv, _datt, _dh, _dg, _du, _attScratch;
    /// <summary>Seconds spent per part (matmul, attention, cross-entropy, other, dequantizing a frozen base) since
    /// construction; for benchmarks.</summary>
    public double[] ProfileSeconds { get; } = new double[5];
    long _mark = System.Diagnostics.Stopwatch.GetTimestamp();
    void Mark(int part)
    {
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        ProfileSeconds[part] += (now - _mark) / (double)System.Diagnostics.Stopwatch.Frequency;
        _mark = now;
    }

    // The three products of training (see Gemm), timed for ProfileSeconds.
    void MatMulNT(float* a, float* b, float* c, int m, int n, int k) { Mark(3); _gemm.MatMulNT(a, b, c, m, n, k); Mark(0); }
    void MatMulNN(float* a, float* b, float* c, int m, int n, int k) { Mark(3); _gemm.MatMulNNAccumulate(a, b, c, m, n, k); Mark(0); }
    void MatMulTN(float* a, float* b, float* c, int m, int n, int k) { Mark(3); _gemm.MatMulTNAccumulate(a, b, c, m, n, k); Mark(0); }

    // Arguments of the parallel bodies for the current layer.
    int _layer;
    float _gradScale;

    public LlamaTrainingModel(LlamaShape shape, int batchSize, int seqLen, int threads, LoraOptions? lora = null, ClassifierOptions? classifier = null,
        (int KvLayers, int Group)? swiftKv = null, FrozenBase? frozenBase = null, float[]? parameters = null, BeaconPlan? beacon = null, bool beaconMlp = false)
    {
        if (beacon != null && (lora != null || classifier != null || swiftKv != null || frozenBase != null))
            throw new CriaException("Activation Beacon trains the beacon parameters alone over an F32 base (no LoRA, classifier, SwiftKV or compressed base)");
        if (beacon != null && beacon.Rows != seqLen) throw new CriaException($"the beacon plan has {beacon.Rows} rows, the model {seqLen}");
        if (swiftKv != null && (lora != null || classifier != null)) throw new CriaException("SwiftKV distillation trains the SwiftKV projections alone (no LoRA, no classifier)");
        if (frozenBase != null && (lora == null || swiftKv != null)) throw new CriaException("a compressed frozen base (QLoRA) is for LoRA training: give a LoRA rank");
        shape.Validate();
        if (classifier != null && lora == null) throw new CriaException("a classifier trains LoRA adapters and its head; give a LoRA rank");
        classifier?.Validate();
        Classifier = classifier;
        if (batchSize <= 0 || seqLen <= 0) throw new CriaException($"batch size and sequence length must be positive, got {batchSize} and {seqLen}");
        if (seqLen > shape.ContextLength && beacon == null) throw new CriaException($"sequence length {seqLen} exceeds the model's context length {shape.ContextLength}");
        Shape = shape;
        Layout = new ParameterLayout(shape, frozenMatrices: frozenBase != null);
        frozenBase?.CheckFits(shape);
        if (parameters != null && parameters.Length != Layout.Count) throw new CriaException($"{parameters.Length} parameters given, the model has {Layout.Count}");
        Frozen = frozenBase;
        BatchSize = batchSize; SeqLen = seqLen;
        int N = Rows = batchSize * seqLen;
        _pool = new WorkerPool(Math.Max(1, threads));
        _gemm = new Gemm(_pool);
        if (parameters != null)
        {
            // Adopt the caller's array (an imported model's) instead of copying it: one model's worth of memory less.
            _parametersHandle = GCHandle.Alloc(parameters, GCHandleType.Pinned);
            P = (float*)_parametersHandle.AddrOfPinnedObject();
            Parameters = parameters;
        }
        else Parameters = Pinned<float>(Layout.Count, out P);
        if (lora != null || swiftKv != null || beacon != null) { Gradients = []; _normGrad = Floats(shape.Dim); }
        else Gradients = Pinned<float>(Layout.Count, out G);
        Pinned<int>(N, out _tokens); Pinned<int>(N, out _targets); Pinned<int>(N, out _targets2);
        Pinned<int>(batchSize, out _seqLens); new Span<int>(_seqLens, batchSize).Fill(seqLen);
        Pinned<int>(N, out _segStarts);
        int C = classifier?.Labels.Length ?? 0;
        _classLogits = Floats((long)N * C); _pooled = Floats((long)batchSize * C);
        int D = shape.Dim, QD = shape.Dim, KV = shape.KvDim, F = shape.FfnDim, L = shape.Layers, V = shape.VocabSize, H = shape.Heads;
        int hd = shape.HeadDim;
        Pinned<float>((long)seqLen * hd, out _ropeTable);
        for (int t = 0; t < seqLen; t++)
            Ops.RopeCache(t, hd, shape.RopeBase, 1f / shape.RopeScale, null, new Span<float>(_ropeTable + (long)t * hd, hd)); // position interpolation when RopeScale > 1
        _xIn = new float*[L + 1]; _xn1 = new float*[L]; _rstd1 = new float*[L]; _q = new float*[L]; _k = new float*[L]; _v = new float*[L];
        _probs = new float*[L]; _att = new float*[L]; _xMid = new float*[L]; _xn2 = new float*[L]; _rstd2 = new float*[L];
        _g = new float*[L]; _u = new float*[L]; _h = new float*[L];
        for (int l = 0; l <= L; l++) _xIn[l] = Floats((long)N * D);
        for (int l = 0; l < L; l++)
        {
            _xn1[l] = Floats((long)N * D); _rstd1[l] = Floats(N);
            _q[l] = Floats((long)N * QD); _k[l] = Floats((long)N * KV); _v[l] = Floats((long)N * KV);
            if (beacon == null) _probs[l] = Floats((long)batchSize * H * seqLen * seqLen);
            _att[l] = Floats((long)N * QD); _xMid[l] = Floats((long)N * D);
            _xn2[l] = Floats((long)N * D); _rstd2[l] = Floats(N);
            _g[l] = Floats((long)N * F); _u[l] = Floats((long)N * F); _h[l] = Floats((long)N * F);
        }
        _xnf = Floats((long)N * D); _rstdf = Floats(N);
        _logits = Floats(classifier != null ? 1 : (long)N * V); _losses = Floats(N); // a classifier has no LM head
        _lossWeights = Floats(N); new Span<float>(_lossWeights, N).Fill(1f);
        _lossWeights2 = Floats(N);
        _dres = Floats((long)N * D); _dxn = Floats((long)N * D); _dq = Floats((long)N * QD); _dk = Floats((long)N * KV); _dv = Floats((long)N * KV);
        _datt = Floats((long)N * QD); _dh = Floats((long)N * F); _dg = Floats((long)N * F); _du = Floats((long)N * F);
        _attScratch = Floats((long)_pool.Count * (4 * hd + 1) * (beacon?.KeySpace ?? seqLen));
        if (lora != null)
        {
            Lora = new LoraLayout(shape, lora, C);
            LoraParameters = Pinned<float>(Lora.Count, out LP);
            LoraGradients = Pinned<float>(Lora.Count, out LG);
            _loraT = new float*[Lora.Pairs.Length];
            _loraBt = new float*[Lora.Pairs.Length];
            for (int i = 0; i < _loraT.Length; i++)
                if (Lora.Pairs[i] is { } q) { _loraT[i] = Floats((long)N * lora.Rank); _loraBt[i] = Floats((long)lora.Rank * q.Out); }
            _loraDt = Floats((long)N * lora.Rank);
            _loraDbt = Floats((long)lora.Rank * Math.Max(D, F));
            if (lora.Dropout > 0) _loraX = Floats((long)N * Math.Max(D, F));
        }
        if (swiftKv is var (kvLayers, group))
        {
            SwiftKv = new SwiftKvLayout(shape, kvLayers, group);
            SwiftKvParameters = Pinned<float>(SwiftKv.Count, out SP);
            SwiftKvGradients = Pinned<float>(SwiftKv.Count, out SG);
            SwiftKvOn = true;
            _hs = Floats((long)N * D); _rstdS = Floats(N);
            _dKs = new float*[SwiftKv.Owners]; _dVs = new float*[SwiftKv.Owners];
            for (int o = 0; o < SwiftKv.Owners; o++) { _dKs[o] = Floats((long)N * KV); _dVs[o] = Floats((long)N * KV); }
            _teacher = Floats((long)N * V);
            // An AcrossKV group's layers attend to its owner's keys and values: one buffer each.
            for (int l = kvLayers; l < L; l++)
            {
                int owner = kvLayers + SwiftKv.OwnerOf(l) * group;
                _k[l] = _k[owner]; _v[l] = _v[owner];
            }
        }
        if (beacon != null)
        {
            Beacon = new BeaconLayout(shape, beaconMlp);
            BeaconParameters = Pinned<float>(Beacon.Count, out BP);
            BeaconGradients = Pinned<float>(Beacon.Count, out BG);
            Plan = beacon;
            Pinned<int>(seqLen, out _bpos); Pinned<int>(seqLen * 6, out _branges);
            int nb = batchSize * beacon.MaxBeacons, Tk = beacon.KeySpace;
            Pinned<int>(nb, out _brows);
            _kx = new float*[L]; _vx = new float*[L];
            for (int l = 0; l < L; l++) { _kx[l] = Floats((long)batchSize * Tk * KV); _vx[l] = Floats((long)batchSize * Tk * KV); }
            _dkx = Floats((long)batchSize * Tk * KV); _dvx = Floats((long)batchSize * Tk * KV);
            _bx = Floats((long)nb * D); _by = Floats((long)nb * D); _bdq = Floats((long)nb * QD); _bdk = Floats((long)nb * KV); _bdv = Floats((long)nb * KV);
            if (beaconMlp) { _bf = Floats((long)nb * F); _bf2 = Floats((long)nb * F); }
            for (int l = 0; l < L; l++) _probs[l] = Floats((long)batchSize * H * seqLen * Tk);
            SetBeaconPlan(beacon);
        }
        if (frozenBase != null)
        {
            _w = Floats(frozenBase.Matrices.Max(m => (long)m.Rows * m.Cols));
            _dequantBody = (r0, r1, _) => _dequant!.DequantizeRows(r0, r1, _w);
        }
        _attnForward = beacon != null ? BeaconAttentionForwardBody : AttentionForwardBody;
        _attnBackward = beacon != null ? BeaconAttentionBackwardBody : AttentionBackwardBody;
        _crossEntropy = CrossEntropyBody;
        _rmsForward = (r0, r1, _) => Layers.RmsNormForward(_a0, _a1, _a2, _a3, Shape.Dim, Shape.RmsEps, r0, r1);
        _rope = RopeBody;
        _swiGluForward = (r0, r1, _) => Layers.SwiGluForward(_a0, _a1, _a2, (long)r0 * Shape.FfnDim, (long)r1 * Shape.FfnDim);
        _swiGluBackward = (r0, r1, _) => Layers.SwiGluBackward(_a0, _a1, _a2, _a3, _a4, (long)r0 * Shape.FfnDim, (long)r1 * Shape.FfnDim);
        _dropout = DropoutBody;
    }

    void RmsNormForward(float* y, float* rstd, float* x, float* w)
    {
        _a0 = y; _a1 = rstd; _a2 = x; _a3 = w;
        _for.Run(_pool, Rows, 64, _rmsForward);
    }

    /// <summary>One work item per (sequence, KV head): the heads of a GQA group write the same dK/dV rows.</summary>
    void Attention(int layer, bool backward)
    {
        _layer = layer;
        Mark(3);
        _for.Run(_pool, BatchSize * Shape.KvHeads, 1, backward ? _attnBackward : _attnForward);
        Mark(1);
    }

    void SwiGlu(float* h, float* g, float* u)
    {
        _a0 = h; _a1 = g; _a2 = u;
        _for.Run(_pool, Rows, 32, _swiGluForward);
    }

    void SwiGluBackward(float* dg, float* du, float* dh, float* g, float* u)
    {
        _a0 = dg; _a1 = du; _a2 = dh; _a3 = g; _a4 = u;
        _for.Run(_pool, Rows, 32, _swiGluBackward);
    }

    void Rope(float* q, float* k, bool backward)
    {
        _a0 = q; _a1 = k; _ropeBackward = backward;
        _for.Run(_pool, Rows, 64, _rope);
    }

    void RopeBody(int r0, int r1, int worker)
    {
        var s = Shape; int hd = s.HeadDim;
        if (_ropeBackward)
        {
            if (_a0 != null) Layers.RopeBackward(_a0, s.Heads, hd, _ropeTable, hd, SeqLen, r0, r1, _bpos);
            if (_a1 != null) Layers.RopeBackward(_a1, s.KvHeads, hd, _ropeTable, hd, SeqLen, r0, r1, _bpos);
        }
        else
        {
            if (_a0 != null) Layers.RopeForward(_a0, s.Heads, hd, _ropeTable, hd, SeqLen, r0, r1, _bpos);
            if (_a1 != null) Layers.RopeForward(_a1, s.KvHeads, hd, _ropeTable, hd, SeqLen, r0, r1, _bpos);
        }
    }

    T[] Pinned<T>(long n, out T* ptr) where T : unmanaged
    {
        var a = GC.AllocateArray<T>(checked((int)Math.Max(1, n)), pinned: true);
        _keepAlive.Add(a);
        ptr = (T*)Marshal.UnsafeAddrOfPinnedArrayElement(a, 0);
        return a;
    }

    float* Floats(long n) { Pinned<float>(n, out var p); return p; }

    /// <summary>Tokens of each sequence before its padding, [B] (T after construction). Only a classifier reads it: a
    /// sequence's class logits pool over its first n positions, and bidirectional attention attends only to them.</summary>
    public Span<int> SequenceLengths => new(_seqLens, BatchSize);

    /// <summary>Packing several documents into one sequence ([N]; all 0 after construction): row b·T + t holds the
    /// position within sequence b where its document starts, and attention stays inside the document (keys
    /// start..t). RoPE scores depend only on the distance between query and key, so a packed document is computed as
    /// it would be alone at the start of a sequence (to float rounding). Causal attention only.</summary>
    public Span<int> SegmentStarts => new(_segStarts, BatchSize * SeqLen);

    /// <summary>
    /// LongLoRA's shifted sparse attention (S2-Attn) for training at long context: with group size G (LongLoRA: T/4),
    /// the lower half of the query heads attends inside groups [gG, (g+1)G), the upper half inside groups shifted by
    /// G/2 — [gG + G/2, (g+1)G + G/2), the first G/2 positions a group of their own — so information flows between
    /// neighbouring groups through the upper heads. Causal inside every group (LongLoRA's roll lets the first G/2
    /// tokens see the sequence's end; this does not). Inference uses full attention. 0 = off; G = T is full attention
    /// (LongLoRA shifts only when the group is shorter than the sequence). With packed documents
    /// (<see cref="SegmentStarts"/>) a query attends inside both its document and its group.
    /// </summary>
    public int S2Group
    {
        get => _s2Group;
        set
        {
            if (value != 0 && (value < 2 || value > SeqLen || value % 2 != 0))
                throw new CriaException($"S2-Attn needs an even group size in 2..{SeqLen}, got {value}");
            _s2Group = value;
            if (value == 0 || value == SeqLen) { _groupLower = _groupUpper = null; return; } // one group: full attention, as LongLoRA
            int G = value, half = G / 2;
            _s2Starts ??= Pinned<int>(2L * SeqLen, out _s2StartsPtr);
            _groupLower = _s2StartsPtr; _groupUpper = _s2StartsPtr + SeqLen;
            for (int t = 0; t < SeqLen; t++)
            {
                _groupLower[t] = t / G * G;
                _groupUpper[t] = t < half ? 0 : (t - half) / G * G + half;
            }
        }
    }
    int _s2Group;
    int[]? _s2Starts;  // pinned [2, T]: the lower heads' group starts, then the upper heads'
    int* _s2StartsPtr;

    /// <summary>S2-Attn's group start of every position for the lower (<paramref name="upper"/> false) or upper half of
    /// the query heads; empty when S2-Attn is off.</summary>
    public ReadOnlySpan<int> S2GroupStarts(bool upper) =>
        _groupLower == null ? default : new ReadOnlySpan<int>(upper ? _groupUpper : _groupLower, SeqLen);

    /// <summary>Class logits of position <paramref name="t"/> of sequence <paramref name="b"/> from the last
    /// <see cref="Forward"/> (a token classifier's per-token prediction).</summary>
    public ReadOnlySpan<float> TokenClassLogits(int b, int t) =>
        new(_classLogits + ((long)b * SeqLen + t) * Classifier!.Labels.Length, Classifier.Labels.Length);

    /// <summary>Pooled class logits of sequence <paramref name="b"/> from the last <see cref="Forward"/> (classifier).</summary>
    public ReadOnlySpan<float> ClassLogits(int b) => new(_pooled + (long)b * Classifier!.Labels.Length, Classifier.Labels.Length);

    /// <summary>Token ids of the micro-batch, [B·T] (write before <see cref="Forward"/>).</summary>
    public Span<int> Tokens => new(_tokens, Rows);
    /// <summary>Next-token targets, [B·T].</summary>
    public Span<int> Targets => new(_targets, Rows);
    /// <summary>Per-target loss weights, [B·T], all 1 after construction: <see cref="ForwardBackward"/> scales each row's
    /// gradient by its weight and reports the weighted mean (0 masks a target out).</summary>
    public Span<float> LossWeights => new(_lossWeights, Rows);
    /// <summary>A second target per row and its weight, [B·T] each, the weights 0 after construction: a row whose
    /// second weight w2 is not 0 has the loss w·CE(target) + w2·CE(second target), a soft target over two tokens
    /// (self-evaluation's "No"/"Yes"), in <see cref="BackwardWeighted"/>. Whoever sets them clears them.</summary>
    public Span<int> SecondTargets => new(_targets2, Rows);
    public Span<float> SecondLossWeights => new(_lossWeights2, Rows);
    /// <summary>Logits of the last <see cref="Forward"/>, [B·T, V] (gradients after <see cref="Backward"/>).</summary>
    public ReadOnlySpan<float> Logits => new(_logits, checked(Rows * Shape.VocabSize));

    public ReadOnlySpan<float> LogitsRow(int row) => new(_logits + (long)row * Shape.VocabSize, Shape.VocabSize);

    /// <summary>Standard Llama initialisation: N(0, 0.02) matrices, residual projections scaled by 1/√(2L), unit norms.</summary>
    public void Initialize(ref TrainingRng rng)
    {
        float std = 0.02f, resid = std / MathF.Sqrt(2f * Shape.Layers);
        foreach (var t in Layout.AllTensors)
        {
            if (!t.IsMatrix)
            {
                if (t.Offset >= 0 && !Adopted) Parameters.AsSpan((int)t.Offset, (int)t.Count).Fill(1f);
                continue;
            }
            if (t.Offset < 0 || Adopted) // frozen, or adopted weights: draw the numbers all the same, so what follows (the adapters) starts as it would
            {
                for (long i = 0; i < t.Count; i++) rng.NextGaussian();
                continue;
            }
            var span = Parameters.AsSpan((int)t.Offset, (int)t.Count);
            float s = t.Name.EndsWith("attn_output.weight") || t.Name.EndsWith("ffn_down.weight") ? resid : std;
            for (int i = 0; i < span.Length; i++) span[i] = rng.NextGaussian() * s;
        }
    }

    public void ZeroGradients()
    {
        if (G != null) NativeMemory.Clear(G, (nuint)(Layout.Count * sizeof(float)));
        else NativeMemory.Clear(_normGrad, (nuint)(Shape.Dim * sizeof(float)));
        if (Lora != null) NativeMemory.Clear(LG, (nuint)(Lora.Count * sizeof(float)));
        if (SwiftKv != null) NativeMemory.Clear(SG, (nuint)(SwiftKv.Count * sizeof(float)));
        if (Beacon != null) NativeMemory.Clear(BG, (nuint)(Beacon.Count * sizeof(float)));
    }

    /// <summary>Where a norm's weight gradient goes: its gradient, or for a frozen base a scratch nobody reads.</summary>
    float* NormGrad(long offset) => G != null ? G + offset : _normGrad;

    /// <summary>Weight gradient dW += dyᵀ·x of a base matrix: skipped when the base is frozen (LoRA, SwiftKV distillation).</summary>
    void WeightGradient(float* dy, float* x, long w, int m, int n, int k)
    {
        if (G != null) MatMulTN(dy, x, G + w, m, n, k);
    }

    // ================================================================= LoRA, forward and backward side by side
    // The rank r is small (4–64): a product whose output has only r columns or whose sum runs over r would fall to
    // Gemm's scalar edges, so every adapter product is arranged with a long dimension in the vector lanes — B is used
    // transposed (Bᵀ [r, out], refreshed at each forward) and dB is formed as dBᵀ.
    /// <summary>
    /// The key of LoRA dropout's masks (<see cref="LoraOptions.Dropout"/>) for the next forward and the backward after
    /// it; null (the default): no dropout, as in evaluation. The trainer's steps set a fresh key per micro-batch and
    /// clear it after the step. Every adapter's mask is a function of the key alone, so the backward recomputes it.
    /// </summary>
    public ulong? LoraDropoutKey { get; set; }

    bool Dropping => LoraDropoutKey != null && Lora!.Options.Dropout > 0;

    /// <summary>y[N, out] += s·(x̃·Aᵀ)·Bᵀ for the adapter of (layer, target), if any, with x̃ = x or (dropout) x with its
    /// mask applied; keeps t = s·x̃·Aᵀ [N, r].</summary>
    void LoraForward(int layer, int target, float* x, float* y)
    {
        if (Lora?.Pairs[layer * 7 + target] is not { } q) return;
        int N = Rows, r = Lora.Options.Rank;
        float* t = _loraT[layer * 7 + target], bt = _loraBt[layer * 7 + target];
        if (Dropping) { Dropout(layer * 7 + target, _loraX, x, q.In, backward: false); x = _loraX; }
        MatMulNT(x, LP + q.A, t, N, r, q.In);
        Scale(t, Lora.Options.Scale, (long)N * r);
        Layers.Transpose(bt, LP + q.B, q.Out, r, 0, r);
        MatMulNN(t, bt, y, N, q.Out, r);
    }

    /// <summary>
    /// Backward of <see cref="LoraForward"/> given dy [N, out]: dB += dyᵀ·t (as dBᵀ += tᵀ·dy), dt = s·dy·B,
    /// dA += dtᵀ·x̃, dx += dt·A (dx accumulates, beside the base matrix's dy·W; with dropout through the same mask).
    /// </summary>
    void LoraBackward(int layer, int target, float* dy, float* x, float* dx)
    {
        if (Lora?.Pairs[layer * 7 + target] is not { } q) return;
        int N = Rows, r = Lora.Options.Rank;
        float* t = _loraT[layer * 7 + target], bt = _loraBt[layer * 7 + target];
        Clear(_loraDbt, (long)r * q.Out);
        MatMulTN(t, dy, _loraDbt, r, q.Out, N);
        float* gb = LG + q.B;
        for (int o = 0; o < q.Out; o++)
            for (int j = 0; j < r; j++) gb[(long)o * r + j] += _loraDbt[(long)j * q.Out + o];
        MatMulNT(dy, bt, _loraDt, N, r, q.Out);
        Scale(_loraDt, Lora.Options.Scale, (long)N * r);
        if (!Dropping)
        {
            MatMulTN(_loraDt, x, LG + q.A, r, q.In, N);
            MatMulNN(_loraDt, LP + q.A, dx, N, q.In, r);
            return;
        }
        Dropout(layer * 7 + target, _loraX, x, q.In, backward: false); // x̃ again, from the same key
        MatMulTN(_loraDt, _loraX, LG + q.A, r, q.In, N);
        Clear(_loraX, (long)N * q.In);
        MatMulNN(_loraDt, LP + q.A, _loraX, N, q.In, r);                 // dx̃
        Dropout(layer * 7 + target, dx, _loraX, q.In, backward: true);   // dx += dx̃ through the mask
    }

    /// <summary>Forward: y = dropout(x), [N, cols]; backward: y += dropout(x) (x the gradient of the dropped input).
    /// The mask of adapter <paramref name="pair"/> is drawn from <see cref="LoraDropoutKey"/> and the pair.</summary>
    void Dropout(int pair, float* y, float* x, int cols, bool backward)
    {
        _a0 = y; _a1 = x; _dropCols = cols; _dropAccumulate = backward;
        _dropKey = TrainingRng.At(LoraDropoutKey!.Value, pair);
        _for.Run(_pool, Rows, 16, _dropout);
    }

    void DropoutBody(int r0, int r1, int worker) =>
        Layers.Dropout(_a0, _a1, _dropKey, Lora!.Options.Dropout, (long)r0 * _dropCols, (long)r1 * _dropCols, accumulate: _dropAccumulate);

    /// <summary>Projection <paramref name="target"/> (q, k, v, o, gate, up, down) of layer <paramref name="l"/> as F32
    /// [out, in]: in the parameters, or (QLoRA) dequantized into the scratch matrix, valid until the next call.</summary>
    float* W(int l, int target)
    {
        if (Frozen == null) return P + Layout.Blocks[l].Matrix(target);
        Mark(3);
        _dequant = Frozen.Matrices[l * 7 + target];
        _for.Run(_pool, _dequant.Rows, 16, _dequantBody!);
        Mark(4);
        return _w;
    }

    static void Scale(float* y, float a, long n)
    {
        for (long i = 0; i < n; i++) y[i] *= a;
    }

    // ================================================================= forward
    /// <summary>Runs the model over <see cref="Tokens"/> and leaves the logits in <see cref="Logits"/>.</summary>
    public void Forward() => Forward(0);

    /// <summary>The forward from layer <paramref name="first"/> on, over the activations a previous forward left below
    /// it (SwiftKV distillation: the student's layers below L are the teacher's).</summary>
    void Forward(int first)
    {
        var s = Shape;
        int N = Rows, D = s.Dim, QD = s.Dim, KV = s.KvDim, F = s.FfnDim, V = s.VocabSize;
        // token embedding
        CheckIds(_tokens, "token");
        if (Classifier != null) // lengths bound the pooling and the bidirectional attention's keys
            for (int b = 0; b < BatchSize; b++)
                if (_seqLens[b] < 1 || _seqLens[b] > SeqLen) throw new CriaException($"sequence {b} has length {_seqLens[b]}, outside 1..{SeqLen}");
        if (first == 0)
            for (int n = 0; n < N; n++)
                new ReadOnlySpan<float>(P + Layout.TokenEmbedding + (long)_tokens[n] * D, D).CopyTo(new Span<float>(_xIn[0] + (long)n * D, D));
        if (first == 0 && Beacon != null) BeaconEmbed();

        for (int l = first; l < s.Layers; l++)
        {
            var o = Layout.Blocks[l];
            float* x = _xIn[l];
            // ---- attention: xMid = x + Wo · attention(rope(Wq·n), rope(Wk·n), Wv·n), n = rmsnorm(x) ----
            RmsNormForward(_xn1[l], _rstd1[l], x, P + o.AttnNorm);
            if (SwiftKvOn && SwiftKv is { } sk && l >= sk.KvLayers)
            {
                // SwiftKV: at L, every later layer's keys and values from h = swiftkv_norm(x_L); queries from attn_q_swiftkv.
                if (l == sk.KvLayers)
                {
                    RmsNormForward(_hs, _rstdS, x, SP + sk.Norm);
                    for (int w = 0; w < sk.Owners; w++)
                    {
                        int owner = sk.KvLayers + w * sk.Group;
                        MatMulNT(_hs, SP + sk.Wk[w], _k[owner], N, KV, D);
                        MatMulNT(_hs, SP + sk.Wv[w], _v[owner], N, KV, D);
                        Rope(null, _k[owner], backward: false);
                    }
                }
                MatMulNT(_xn1[l], SP + sk.Wq[l - sk.KvLayers], _q[l], N, QD, D);
                Rope(_q[l], null, backward: false);
            }
            else
            {
                MatMulNT(_xn1[l], W(l, 0), _q[l], N, QD, D);
                MatMulNT(_xn1[l], W(l, 1), _k[l], N, KV, D);
                MatMulNT(_xn1[l], W(l, 2), _v[l], N, KV, D);
                LoraForward(l, 0, _xn1[l], _q[l]); LoraForward(l, 1, _xn1[l], _k[l]); LoraForward(l, 2, _xn1[l], _v[l]);
                if (Beacon != null) { BeaconQkv(l); BeaconMemoryKeys(l); }
                Rope(_q[l], _k[l], backward: false);
                if (Beacon != null) BeaconRowKeys(l);
            }
            Attention(l, backward: false);
            MatMulNT(_att[l], W(l, 3), _xMid[l], N, D, QD);
            LoraForward(l, 3, _att[l], _xMid[l]);
            if (Beacon != null) BeaconOutput(l);
            Add(_xMid[l], x, (long)N * D);
            // ---- feed-forward: xOut = xMid + Wdown · (silu(Wgate·n) ⊙ Wup·n), n = rmsnorm(xMid) ----
            RmsNormForward(_xn2[l], _rstd2[l], _xMid[l], P + o.FfnNorm);
            MatMulNT(_xn2[l], W(l, 4), _g[l], N, F, D);
            MatMulNT(_xn2[l], W(l, 5), _u[l], N, F, D);
            LoraForward(l, 4, _xn2[l], _g[l]); LoraForward(l, 5, _xn2[l], _u[l]);
            if (Beacon?.Up != null) BeaconUp(l);
            SwiGlu(_h[l], _g[l], _u[l]);
            MatMulNT(_h[l], W(l, 6), _xIn[l + 1], N, D, F);
            LoraForward(l, 6, _h[l], _xIn[l + 1]);
            if (Beacon?.Down != null) BeaconDown(l);
            Add(_xIn[l + 1], _xMid[l], (long)N * D);
        }
        RmsNormForward(_xnf, _rstdf, _xIn[s.Layers], P + Layout.OutputNorm);
        if (Classifier == null) { MatMulNT(_xnf, P + Layout.Output, _logits, N, V, D); return; }
        // ---- classifier: z = xnf · Headᵀ per token [N, C], pooled per sequence over its first n positions ----
        int C = Classifier.Labels.Length;
        MatMulNT(_xnf, LP + Lora!.Head, _classLogits, N, C, D);
        for (int b = 0; b < BatchSize; b++)
        {
            var pooled = new Span<float>(_pooled + (long)b * C, C);
            pooled.Clear();
            int n = _seqLens[b];
            if (Classifier.Pooling == ClassifierPooling.Max)
            {
                // LS-unLLaMA's max pooling: per class, the largest logit over the sequence's n positions.
                new ReadOnlySpan<float>(_classLogits + (long)b * SeqLen * C, C).CopyTo(pooled);
                for (int t = 1; t < n; t++)
                    for (int j = 0; j < C; j++) pooled[j] = MathF.Max(pooled[j], _classLogits[((long)b * SeqLen + t) * C + j]);
                continue;
            }
            for (int t = 0; t < SeqLen; t++)
            {
                float w = PoolWeight(t, n);
                if (w != 0) Layers.Axpy(w, _classLogits + ((long)b * SeqLen + t) * C, _pooled + (long)b * C, C);
            }
        }
    }

    /// <summary>Weight of position t in its sequence's pooled logits (n tokens before padding): LS-LLaMA's last token,
    /// or the mean over the n tokens.</summary>
    float PoolWeight(int t, int n) => Classifier!.Pooling switch
    {
        ClassifierPooling.Last => t == n - 1 ? 1f : 0f,
        ClassifierPooling.Mean => t < n ? 1f / n : 0f,
        _ => 0f, // a token classifier pools nothing
    };

    static void Add(float* y, float* x, long n)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= n; i += 8) (Vector256.Load(y + i) + Vector256.Load(x + i)).Store(y + i);
        else
            for (; i + 4 <= n; i += 4) (Vector128.Load(y + i) + Vector128.Load(x + i)).Store(y + i);
        for (; i < n; i++) y[i] += x[i];
    }

    void AttentionForwardBody(int start, int end, int worker)
    {
        var s = Shape; int l = _layer;
        for (int item = start; item < end; item++)
            Layers.AttentionForward(_att[l], _probs[l], _q[l], _k[l], _v[l], item / s.KvHeads, item % s.KvHeads, SeqLen, s.Heads, s.KvHeads, s.HeadDim,
                _attScratch + (long)worker * (4 * s.HeadDim + 1) * SeqLen, Keys(item / s.KvHeads), _segStarts + (long)(item / s.KvHeads) * SeqLen, _groupLower, _groupUpper,
                s.WindowOf(l), s.WindowSinks);
    }

    // ================================================================= loss + backward
    /// <summary>
    /// Forward, cross-entropy against <see cref="Targets"/>, and backward: gradients are added to
    /// <see cref="Gradients"/> scaled by <paramref name="gradScale"/> (1 / rows of the whole optimizer step).
    /// Returns the mean loss of this micro-batch.
    /// </summary>
    public float ForwardBackward(float gradScale)
    {
        LanguageModelOnly();
        CheckIds(_targets, "target");
        Forward();
        _gradScale = gradScale;
        Mark(3);
        _for.Run(_pool, Rows, 16, _crossEntropy);
        Mark(2);
        double sum = 0, weights = 0;
        for (int n = 0; n < Rows; n++) { sum += _lossWeights[n] * _losses[n]; weights += _lossWeights[n]; }
        Backward();
        return weights > 0 ? (float)(sum / weights) : 0f;
    }

    /// <summary>−log p(target) of row <paramref name="row"/> under the last <see cref="Forward"/> (before a backward
    /// replaced the logits by their gradient).</summary>
    public float TargetNll(int row)
    {
        LanguageModelOnly();
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row));
        CheckIds(_targets, "target");
        return Layers.CrossEntropyLoss(_logits + (long)row * Shape.VocabSize, _targets[row], Shape.VocabSize);
    }

    /// <summary>
    /// Backward of a loss L given, after <see cref="Forward"/>, as its derivative with respect to each target's
    /// cross-entropy: <see cref="LossWeights"/>[n] = ∂L/∂CE_n (any sign; 0 for rows outside the loss), times
    /// <paramref name="gradScale"/>. Preference losses (DPO, SimPO) are sums of sequence log-probabilities, so their
    /// gradient reaches the model this way.
    /// </summary>
    public void BackwardWeighted(float gradScale)
    {
        LanguageModelOnly();
        CheckIds(_targets, "target");
        for (int n = 0; n < Rows; n++)
            if (_lossWeights2[n] != 0 && (uint)_targets2[n] >= (uint)Shape.VocabSize) throw new CriaException($"second target {_targets2[n]} at row {n} is outside the vocabulary of {Shape.VocabSize}");
        _gradScale = gradScale;
        Mark(3);
        _for.Run(_pool, Rows, 16, _crossEntropy);
        Mark(2);
        Backward();
    }

    /// <summary>
    /// SwiftKV distillation step on the micro-batch's tokens: the original model (SwiftKV off) gives the teacher's
    /// logits z_t, the SwiftKV forward the student's z_s, and the loss per row is τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ))
    /// (Hinton's temperature-scaled distillation; SwiftKV uses τ = 2). Its gradient, dz_s = τ·(softmax(z_s/τ) −
    /// softmax(z_t/τ)) times <paramref name="gradScale"/>, goes back through the SwiftKV projections. Returns the mean loss.
    /// </summary>
    public float DistillForwardBackward(float temperature, float gradScale)
    {
        var sk = SwiftKv ?? throw new InvalidOperationException("not a SwiftKV distillation model");
        if (!(temperature > 0)) throw new CriaException($"distillation temperature must be positive, got {temperature}");
        int N = Rows, V = Shape.VocabSize;
        SwiftKvOn = false;
        Forward();
        new ReadOnlySpan<float>(_logits, N * V).CopyTo(new Span<float>(_teacher, N * V));
        SwiftKvOn = true;
        Forward(sk.KvLayers); // below L the student is the teacher: its activations there are the ones just computed
        Mark(3);
        double total = 0;
        for (int n = 0; n < N; n++)
        {
            var zt = new Span<float>(_teacher + (long)n * V, V); var zs = new Span<float>(_logits + (long)n * V, V);
            total += Layers.DistillRow(zt, zs, temperature, gradScale);
        }
        Mark(2);
        Backward();
        return (float)(total / N);
    }

    void LanguageModelOnly()
    {
        if (Classifier != null) throw new InvalidOperationException("a classifier has no language-model head; use ClassifierForwardBackward");
    }

    /// <summary>Token ids index the embedding and the logits: one outside the vocabulary is refused, not read past.</summary>
    void CheckIds(int* ids, string what)
    {
        for (int n = 0; n < Rows; n++)
            if ((uint)ids[n] >= (uint)Shape.VocabSize) throw new CriaException($"{what} {ids[n]} at row {n} is outside the vocabulary of {Shape.VocabSize}");
    }

    /// <summary>Mean cross-entropy of the last forward against <see cref="Targets"/> (no gradient).</summary>
    public float Loss()
    {
        LanguageModelOnly();
        CheckIds(_targets, "target");
        double sum = 0;
        for (int n = 0; n < Rows; n++) sum += Layers.CrossEntropyLoss(_logits + (long)n * Shape.VocabSize, _targets[n], Shape.VocabSize);
        return (float)(sum / Rows);
    }

    void CrossEntropyBody(int start, int end, int worker) =>
        Layers.CrossEntropyForwardBackward(_logits, _targets, _losses, Shape.VocabSize, _gradScale, start, end, _lossWeights, _targets2, _lossWeights2);

    void Backward()
    {
        int N = Rows, D = Shape.Dim, V = Shape.VocabSize;
        // output head: logits = xnf · Woutᵀ (the logits buffer now holds dlogits)
        Clear(_dxn, (long)N * D);
        MatMulNN(_logits, P + Layout.Output, _dxn, N, D, V);
        WeightGradient(_logits, _xnf, Layout.Output, V, D, N);
        BackwardFromFinalNorm();
    }

    /// <summary>
    /// Classifier (LS-LLaMA) forward, loss and backward: per sequence b, CE(pooled logits, labels[b]) with pooled =
    /// Σ_t w_t·z_t (<see cref="PoolWeight"/>); dpooled = (softmax − onehot)·gradScale, then <see cref="BackwardFromPooled"/>.
    /// Returns the summed loss and the number of sequences whose largest pooled logit is their label.
    /// </summary>
    public (double Loss, int Correct) ClassifierForwardBackward(ReadOnlySpan<int> labels, float gradScale)
    {
        var c = Classifier ?? throw new InvalidOperationException("not a classifier");
        if (c.Objective != ClassifierObjective.Labels) throw new InvalidOperationException($"a {c.Objective} head is trained on rewards, not labels");
        if (c.PerToken) throw new InvalidOperationException($"classifier mode {c.ModeName} labels every token; use TokenClassifierForwardBackward");
        int C = c.Labels.Length, B = BatchSize;
        if (labels.Length != B) throw new ArgumentException($"{B} labels expected, got {labels.Length}");
        for (int b = 0; b < B; b++)
            if ((uint)labels[b] >= (uint)C) throw new CriaException($"label {labels[b]} of sequence {b} is outside 0..{C - 1}");
        Forward();
        Mark(3);
        double loss = 0; int correct = 0;
        var dp = DPooled();
        for (int b = 0; b < B; b++)
        {
            var z = new ReadOnlySpan<float>(_pooled + (long)b * C, C);
            double lse = Ops.LogSumExp(z);
            loss += lse - z[labels[b]];
            if (Inference.Sampler.ArgMax(z) == labels[b]) correct++;
            for (int j = 0; j < C; j++) dp[b * C + j] = (float)(Math.Exp(z[j] - lse) - (j == labels[b] ? 1 : 0)) * gradScale;
        }
        BackwardFromPooled(dp);
        return (loss, correct);
    }

    /// <summary>
    /// Token classifier (LS-unLLaMA's token task, e.g. NER): the head at every position, and the mean over scored
    /// positions of CE(z_t, tags[t]); tags[b·T + t] = −1 leaves a position unscored (BOS, a word's later sub-tokens,
    /// padding). dz_t = (softmax(z_t) − onehot)·gradScale, written over z in place, then the head's and the blocks'
    /// backward. Returns the summed loss, the positions whose largest logit is their tag, and the positions scored.
    /// </summary>
    public (double Loss, int Correct, int Scored) TokenClassifierForwardBackward(ReadOnlySpan<int> tags, float gradScale)
    {
        var c = Classifier ?? throw new InvalidOperationException("not a classifier");
        if (!c.PerToken) throw new InvalidOperationException($"classifier mode {c.ModeName} pools its tokens; use ClassifierForwardBackward");
        int C = c.Labels.Length, N = Rows;
        if (tags.Length != N) throw new ArgumentException($"{N} tags expected (one per position), got {tags.Length}");
        for (int i = 0; i < N; i++)
            if (tags[i] < -1 || tags[i] >= C) throw new CriaException($"tag {tags[i]} at position {i} is outside -1..{C - 1}");
        Forward();
        Mark(3);
        double loss = 0; int correct = 0, scored = 0;
        for (int i = 0; i < N; i++)
        {
            var z = new Span<float>(_classLogits + (long)i * C, C);
            if (tags[i] < 0 || i % SeqLen >= _seqLens[i / SeqLen]) { z.Clear(); continue; }
            double lse = Ops.LogSumExp(z);
            loss += lse - z[tags[i]];
            if (Inference.Sampler.ArgMax(z) == tags[i]) correct++;
            scored++;
            for (int j = 0; j < C; j++) z[j] = (float)(Math.Exp(z[j] - lse) - (j == tags[i] ? 1 : 0)) * gradScale;
        }
        BackwardFromClassLogitGrads();
        return (loss, correct, scored);
    }

    /// <summary>
    /// Reward model, Bradley–Terry (Ouyang et al. 2022; HelpSteer2-Preference's Scaled BT): rows 2i and 2i + 1 are pair
    /// i's chosen and rejected sequences, r = the pooled scalar head, and the pair's loss is
    /// m_i·softplus(−(r_c − r_r − margin_i)) = −m_i·log σ(r_c − r_r − margin_i) (m = 1, margin = 0: plain BT; m the
    /// preference magnitude: Scaled BT; a margin: TRL's RewardTrainer). dr_c = −m·σ(−(Δ − margin))·gradScale = −dr_r.
    /// Returns the summed loss and the number of pairs with r_c &gt; r_r.
    /// </summary>
    public (double Loss, int Correct) PairwiseRewardForwardBackward(ReadOnlySpan<float> magnitudes, ReadOnlySpan<float> margins, float gradScale)
    {
        var c = Classifier ?? throw new InvalidOperationException("not a classifier");
        if (c.Objective != ClassifierObjective.BradleyTerry) throw new InvalidOperationException($"a {c.Objective} head is not trained on pairs");
        int B = BatchSize, pairs = B / 2;
        if (B % 2 != 0) throw new CriaException($"pairwise reward training needs an even batch (chosen, rejected), got {B}");
        if (magnitudes.Length != pairs || margins.Length != pairs) throw new ArgumentException($"{pairs} magnitudes and margins expected");
        Forward();
        Mark(3);
        double loss = 0; int correct = 0;
        var dp = DPooled();
        for (int i = 0; i < pairs; i++)
        {
            double rc = _pooled[2 * i], rr = _pooled[2 * i + 1], z = rc - rr - margins[i];
            loss += magnitudes[i] * Softplus(-z);
            if (rc > rr) correct++;
            float g = (float)(-magnitudes[i] * Sigmoid(-z)) * gradScale;
            dp[2 * i] = g; dp[2 * i + 1] = -g;
        }
        BackwardFromPooled(dp);
        return (loss, correct);
    }

    /// <summary>Reward model, regression (HelpSteer2's rating regression): r_b = the pooled scalar head, loss
    /// ½(r_b − y_b)² per sequence, dr_b = (r_b − y_b)·gradScale. Returns the summed loss.</summary>
    public double RegressionRewardForwardBackward(ReadOnlySpan<float> scores, float gradScale)
    {
        var c = Classifier ?? throw new InvalidOperationException("not a classifier");
        if (c.Objective != ClassifierObjective.Regression) throw new InvalidOperationException($"a {c.Objective} head is not trained on ratings");
        int B = BatchSize;
        if (scores.Length != B) throw new ArgumentException($"{B} scores expected, got {scores.Length}");
        Forward();
        Mark(3);
        double loss = 0;
        var dp = DPooled();
        for (int b = 0; b < B; b++)
        {
            double d = _pooled[b] - scores[b];
            loss += 0.5 * d * d;
            dp[b] = (float)d * gradScale;
        }
        BackwardFromPooled(dp);
        return loss;
    }

    float[]? _dPooled;                                             // [B, C] dLoss/dpooled, reused across steps
    float[] DPooled() => _dPooled ??= new float[BatchSize * Classifier!.Labels.Length];

    static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));
    static double Softplus(double x) => x > 30 ? x : x < -30 ? Math.Exp(x) : Math.Log(1 + Math.Exp(x));

    /// <summary>The head's backward from dLoss/dpooled [B, C]: dz_t = w_t·dpooled (the pooling), dHead += dzᵀ·xnf,
    /// dxnf = dz·Head, then the blocks' backward as for a language model.</summary>
    void BackwardFromPooled(ReadOnlySpan<float> dPooled)
    {
        int C = Classifier!.Labels.Length, N = Rows, B = BatchSize;
        if (Classifier.Pooling == ClassifierPooling.Max) { BackwardFromMaxPooled(dPooled); return; }
        Clear(_classLogits, (long)N * C);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < SeqLen; t++)
            {
                float w = PoolWeight(t, _seqLens[b]);
                if (w == 0) continue;
                float* dz = _classLogits + ((long)b * SeqLen + t) * C;
                for (int j = 0; j < C; j++) dz[j] = w * dPooled[b * C + j];
            }
        BackwardFromClassLogitGrads();
    }

    /// <summary>Max pooling's backward: each class's gradient goes to the position that held its maximum (the first on
    /// ties), found again from the kept logits before they are overwritten with dz.</summary>
    void BackwardFromMaxPooled(ReadOnlySpan<float> dPooled)
    {
        int C = Classifier!.Labels.Length, N = Rows, B = BatchSize;
        var at = new int[B * C]; // [B, C] position of each class's maximum
        for (int b = 0; b < B; b++)
            for (int j = 0; j < C; j++)
            {
                int best = 0;
                for (int t = 1; t < _seqLens[b]; t++)
                    if (_classLogits[((long)b * SeqLen + t) * C + j] > _classLogits[((long)b * SeqLen + best) * C + j]) best = t;
                at[b * C + j] = best;
            }
        Clear(_classLogits, (long)N * C);
        for (int b = 0; b < B; b++)
            for (int j = 0; j < C; j++) _classLogits[((long)b * SeqLen + at[b * C + j]) * C + j] = dPooled[b * C + j];
        BackwardFromClassLogitGrads();
    }

    /// <summary>The head's backward from dLoss/dz [N, C] in _classLogits: dHead += dzᵀ·xnf, dxnf = dz·Head, then the
    /// blocks' backward.</summary>
    void BackwardFromClassLogitGrads()
    {
        int C = Classifier!.Labels.Length, N = Rows, D = Shape.Dim;
        Mark(2);
        Clear(_dxn, (long)N * D);
        MatMulNN(_classLogits, LP + Lora!.Head, _dxn, N, D, C);
        MatMulTN(_classLogits, _xnf, LG + Lora.Head, C, D, N);
        BackwardFromFinalNorm();
    }

    /// <summary>The backward below the head, given dxnf in _dxn: the final norm, every block, the embedding.</summary>
    void BackwardFromFinalNorm()
    {
        var s = Shape;
        int N = Rows, D = s.Dim, QD = s.Dim, KV = s.KvDim, F = s.FfnDim;
        if (SwiftKv != null && !SwiftKvOn)   // its upper layers share key buffers per AcrossKV group, so only the student's backward holds
            throw new InvalidOperationException("the original model of a SwiftKV distillation runs forward only (the teacher)");
        Clear(_dres, (long)N * D);
        Layers.RmsNormBackward(_dres, NormGrad(Layout.OutputNorm), _dxn, _xIn[s.Layers], P + Layout.OutputNorm, _rstdf, D, 0, N);
        if (SwiftKv != null)
            for (int j = 0; j < SwiftKv.Owners; j++) { Clear(_dKs[j], (long)N * s.KvDim); Clear(_dVs[j], (long)N * s.KvDim); }

        for (int l = s.Layers - 1; l >= 0; l--)
        {
            var o = Layout.Blocks[l];
            // xOut = xMid + h · Wdownᵀ
            Clear(_dh, (long)N * F);
            MatMulNN(_dres, W(l, 6), _dh, N, F, D);
            WeightGradient(_dres, _h[l], o.WDown, D, F, N);
            LoraBackward(l, 6, _dres, _h[l], _dh);
            if (Beacon?.Down != null) BeaconDownBackward(l);
            SwiGluBackward(_dg, _du, _dh, _g[l], _u[l]);
            if (Beacon?.Up != null) BeaconUpBackward(l);
            Clear(_dxn, (long)N * D);
            MatMulNN(_dg, W(l, 4), _dxn, N, D, F);
            MatMulNN(_du, W(l, 5), _dxn, N, D, F);
            WeightGradient(_dg, _xn2[l], o.WGate, F, D, N);
            WeightGradient(_du, _xn2[l], o.WUp, F, D, N);
            LoraBackward(l, 4, _dg, _xn2[l], _dxn); LoraBackward(l, 5, _du, _xn2[l], _dxn);
            if (Beacon?.Up != null) BeaconUpBackwardInput(l);
            Layers.RmsNormBackward(_dres, NormGrad(o.FfnNorm), _dxn, _xMid[l], P + o.FfnNorm, _rstd2[l], D, 0, N);
            // xMid = x + att · Woᵀ
            Clear(_datt, (long)N * QD);
            MatMulNN(_dres, W(l, 3), _datt, N, QD, D);
            WeightGradient(_dres, _att[l], o.Wo, D, QD, N);
            LoraBackward(l, 3, _dres, _att[l], _datt);
            if (Beacon != null) BeaconOutputBackward(l);
            Clear(_dk, (long)N * KV); Clear(_dv, (long)N * KV);
            if (Beacon != null) { Clear(_dkx, (long)BatchSize * KeySpace * KV); Clear(_dvx, (long)BatchSize * KeySpace * KV); }
            Attention(l, backward: true);
            if (Beacon != null) BeaconRowKeysBackward();
            Rope(_dq, _dk, backward: true);
            if (Beacon != null) { BeaconMemoryKeysBackward(); BeaconQkvBackward(l); }
            if (SwiftKvOn && SwiftKv is { } sk && l >= sk.KvLayers)
            {
                // q = RoPE(attn_q_swiftkv · xn1): dWq += dqᵀ·xn1, dxn1 = dq·Wq; the keys' and values' gradients gather
                // per owner and reach h at layer L, the last layer with trained parameters: the backward stops there.
                int w = sk.OwnerOf(l);
                Add(_dKs[w], _dk, (long)N * KV); Add(_dVs[w], _dv, (long)N * KV);
                Clear(_dxn, (long)N * D);
                MatMulNN(_dq, SP + sk.Wq[l - sk.KvLayers], _dxn, N, D, QD);
                MatMulTN(_dq, _xn1[l], SG + sk.Wq[l - sk.KvLayers], QD, D, N);
                Layers.RmsNormBackward(_dres, NormGrad(o.AttnNorm), _dxn, _xIn[l], P + o.AttnNorm, _rstd1[l], D, 0, N);
                if (l > sk.KvLayers) continue;
                Clear(_dxn, (long)N * D);                                   // dh
                for (int j = 0; j < sk.Owners; j++)
                {
                    MatMulNN(_dKs[j], SP + sk.Wk[j], _dxn, N, D, KV);
                    MatMulNN(_dVs[j], SP + sk.Wv[j], _dxn, N, D, KV);
                    MatMulTN(_dKs[j], _hs, SG + sk.Wk[j], KV, D, N);
                    MatMulTN(_dVs[j], _hs, SG + sk.Wv[j], KV, D, N);
                }
                Layers.RmsNormBackward(_dres, SG + sk.Norm, _dxn, _xIn[l], SP + sk.Norm, _rstdS, D, 0, N);
                return;
            }
            Clear(_dxn, (long)N * D);
            MatMulNN(_dq, W(l, 0), _dxn, N, D, QD);
            MatMulNN(_dk, W(l, 1), _dxn, N, D, KV);
            MatMulNN(_dv, W(l, 2), _dxn, N, D, KV);
            WeightGradient(_dq, _xn1[l], o.Wq, QD, D, N);
            WeightGradient(_dk, _xn1[l], o.Wk, KV, D, N);
            WeightGradient(_dv, _xn1[l], o.Wv, KV, D, N);
            LoraBackward(l, 0, _dq, _xn1[l], _dxn); LoraBackward(l, 1, _dk, _xn1[l], _dxn); LoraBackward(l, 2, _dv, _xn1[l], _dxn);
            if (Beacon != null) BeaconQkvBackwardInput(l);
            Layers.RmsNormBackward(_dres, NormGrad(o.AttnNorm), _dxn, _xIn[l], P + o.AttnNorm, _rstd1[l], D, 0, N);
        }
        // token embedding: x0[n] = E[token[n]] (nothing to do for a frozen base); the beacon rows' embedding
        if (Beacon != null) BeaconEmbedBackward();
        if (G != null)
            for (int n = 0; n < N; n++)
                Layers.Axpy(1f, _dres + (long)n * D, G + Layout.TokenEmbedding + (long)_tokens[n] * D, D);
    }

    void AttentionBackwardBody(int start, int end, int worker)
    {
        var s = Shape; int l = _layer;
        for (int item = start; item < end; item++)
            Layers.AttentionBackward(_dq, _dk, _dv, _datt, _probs[l], _q[l], _k[l], _v[l], item / s.KvHeads, item % s.KvHeads,
                SeqLen, s.Heads, s.KvHeads, s.HeadDim, _attScratch + (long)worker * (4 * s.HeadDim + 1) * SeqLen, Keys(item / s.KvHeads),
                _segStarts + (long)(item / s.KvHeads) * SeqLen, _groupLower, _groupUpper, s.WindowOf(l), s.WindowSinks);
    }

    /// <summary>The keys sequence b attends to: 0 = causal; a bidirectional classifier (LS-unLLaMA) attends to all of
    /// its tokens and none of its padding.</summary>
    int Keys(int b) => Classifier is { Bidirectional: true } ? _seqLens[b] : 0;

    static void Clear(float* p, long n) => NativeMemory.Clear(p, (nuint)(n * sizeof(float)));

    public void Dispose()
    {
        _pool.Dispose();
        if (_parametersHandle.IsAllocated) _parametersHandle.Free();
    }
}

/// <summary>Runs a body over [0, n) in chunks claimed from a shared counter (one object, reused: no allocation).</summary>
public sealed class ForJob : ParallelJob
{
    public delegate void Body(int start, int end, int worker);
    Body? _body;
    int _n, _chunk, _next;

    public void Run(WorkerPool pool, int n, int chunk, Body body)
    {
        _body = body; _n = n; _chunk = Math.Max(1, chunk); _next = 0;
        pool.Run(this);
        _body = null;
    }

    public override void Execute(int worker, int workerCount)
    {
        var body = _body!;
        while (true)
        {
            int start = Interlocked.Add(ref _next, _chunk) - _chunk;
            if (start >= _n) return;
            body(start, Math.Min(_n, start + _chunk), worker);
        }
    }
}

/// <summary>A small deterministic generator (SplitMix64) whose whole state is one ulong, so checkpoints can store it.</summary>
public struct TrainingRng(ulong seed)
{
    public ulong State = seed;

    public ulong NextULong() => Mix(State += 0x9E3779B97F4A7C15UL);

    /// <summary>Number <paramref name="i"/> (from 0) of the stream a generator seeded with <paramref name="seed"/>
    /// draws, without drawing the ones before it: a counter-based generator, for masks a backward recomputes.</summary>
    public static ulong At(ulong seed, long i) => Mix(seed + (ulong)(i + 1) * 0x9E3779B97F4A7C15UL);

    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, n).</summary>
    public int Next(int n) => (int)((NextULong() >> 33) % (ulong)n);

    public double NextDouble() => (NextULong() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Standard normal (Box–Muller).</summary>
    public float NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }
}
