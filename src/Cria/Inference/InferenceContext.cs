using System.Runtime.CompilerServices;
using Cria.Kernels;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Inference;

/// <summary>Settings of an <see cref="InferenceContext"/> (llama.cpp's context params).</summary>
public sealed record ContextOptions
{
    /// <summary>KV cache capacity in tokens over all sequences (n_ctx). 0 = the model's training context.</summary>
    public int ContextSize { get; init; }
    /// <summary>Rows processed per internal forward step (n_ubatch); larger batches are split.</summary>
    public int MicroBatch { get; init; } = 512;
    /// <summary>Worker threads (0 = all cores).</summary>
    public int Threads { get; init; }
    public int KvBlockSize { get; init; } = KvCache.DefaultBlockSize;
    /// <summary>KV storage format (F16 by default, as llama.cpp; the oracle tests ask for F32).</summary>
    public KvFormat Kv { get; init; } = KvFormat.F16;
    /// <summary>KV eviction policy and budget (none by default).</summary>
    public KvEvictionOptions Eviction { get; init; } = KvEvictionOptions.None;
    /// <summary>RoPE scaling overrides (CLI --rope-scaling, --rope-scale, --rope-freq-base, --yarn-orig-ctx).</summary>
    public RopeOverrides? Rope { get; init; }
    /// <summary>LongGen's hybrid attention imposed on (or, with window 0, lifted from) the model (CLI --attn-window).</summary>
    public AttentionWindowOverride? AttentionWindow { get; init; }
    /// <summary>LoRA adapters applied at run time beside the base weights, each with its user scale (llama.cpp's
    /// <c>--lora</c> = scale 1, <c>--lora-scaled FILE S</c>).</summary>
    public IReadOnlyList<(LoraAdapter Adapter, float Scale)> Loras { get; init; } = [];
    /// <summary>Feed-forward neurons held at fixed values at every position (<see cref="Interpretability.NeuronClamp"/>;
    /// CLI <c>--clamp L:N=V</c>).</summary>
    public IReadOnlyList<Interpretability.NeuronClamp> NeuronClamps { get; init; } = [];
    /// <summary>Whether a SwiftKV model (<see cref="ModelConfig.SwiftKvLayers"/>) runs as SwiftKV (default) or as the
    /// original model its file also holds (CLI <c>--swiftkv off</c>: the teacher, for comparisons).</summary>
    public bool SwiftKv { get; init; } = true;
}

/// <summary>Receives the activations a weight matrix is about to multiply: <paramref name="x"/> is [rows, cols] row-major.</summary>
public interface IMatMulObserver
{
    void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols);
}

/// <summary>Rewrites a matrix product's input in place before the product runs — simulated activation quantization
/// (<see cref="Quantization.ActivationQuantizer"/>). Products that share an input (fused q/k/v, gate/up) see it once,
/// under the first product's weight name.</summary>
public interface IActivationTransform
{
    void Apply(string weightName, Span<float> x, int rows, int cols);
}

/// <summary>Receives each layer's query, key and value projections right after they are computed, before any QK-norm
/// and RoPE: <paramref name="q"/> is [rows, qDim], <paramref name="k"/> and <paramref name="v"/> [rows, kvDim] (what
/// Locret's retaining heads read; <c>cria train-locret</c> collects them).</summary>
public interface IQkvObserver
{
    void Observe(int layer, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows);
}

/// <summary>A batch row breaks the rules of <see cref="Batch"/> (bad token, position or sequence order).</summary>
public sealed class InvalidBatchException(string message) : CriaException(message);

/// <summary>
/// Runs the model: one <see cref="Decode"/> call over a <see cref="Batch"/> against a multi-sequence
/// <see cref="KvCache"/>, then <see cref="Logits"/> for the rows that asked for them. All activation buffers are
/// allocated here once, sized for a micro-batch; a decode step allocates nothing.
/// </summary>
public sealed class InferenceContext : IDisposable
{
    public LlamaModel Model { get; }
    public ModelConfig Config { get; }
    public KvCache Cache { get; }
    public int MicroBatch { get; }
    public int Threads => _pool.Count;

    readonly WorkerPool _pool;
    readonly MatMulJob _matmul = new();
    readonly PrepareActivationsJob _prepare = new();
    readonly AttentionJob _attention;

    // Activations for one micro-batch of B rows (row-major, row b at b * width).
    readonly float[] _x;      // [B, dim]   residual stream
    readonly float[] _xn;     // [B, dim]   normed input of a sub-layer
    readonly float[] _q;      // [B, qDim]
    readonly float[] _k;      // [B, kvDim]
    readonly float[] _v;      // [B, kvDim]
    readonly float[] _att;    // [B, qDim]  attention output
    readonly float[] _gate;   // [B, ff]
    readonly float[] _up;     // [B, ff]
    readonly float[] _tmp;    // [B, dim]
    readonly float[] _rope;   // [B, nRot]  cos/sin per row
    readonly MoeBuffers? _moe; // mixture-of-experts routing and gather/scatter buffers (null for a dense model)
    readonly byte[] _act;     // pinned arena of activations in the weights' row-kernel layouts, [B, rowBytes(actType, cols)]
                              // per distinct (input, weight type) of one matrix job, each on a 64-byte boundary
    readonly Product[] _products = new Product[MatMulJob.MaxParts]; // the matrix products of the job being run
    readonly int[] _cells;    // [B] KV cell of each row
    readonly Batch? _tail;    // SwiftKV: the rows that go on above layer SwiftKvLayers (those that asked for logits)
    readonly KvEvictor? _evictor;
    readonly RetainingHeads? _heads; // Locret: scores every row's token as it is written (null for other policies)
    readonly float[] _headIn = [];   // [B, qDim + 2·kvDim]  the rows' q | k | v, the heads' input
    readonly float[] _headZ = [];    // [B, hidden]  fc1 output, then silu of it
    float[] _probs = [];      // [B, kvHeads, slots] attention probabilities for eviction scores (only with a scoring policy)
    int _probStride;
    float[] _logits = [];     // [nOutputs, vocab]
    int[] _outputIndex = [];  // batch row -> logits row, -1 when none
    int _outputs;
    // LoRA: base weight name → its adapters (A [r, in], B [out, r], s), null without adapters.
    readonly Dictionary<string, (LoraAdapter.Pair Pair, float S)[]>? _lora;
    readonly LoraJob? _loraJob;
    readonly (int Neuron, float Value)[][]? _clamps; // [layer] neurons held at a value (null without clamps)

    public InferenceContext(LlamaModel model, ContextOptions? options = null)
    {
        options ??= new ContextOptions();
        Model = model;
        var c = Config = options.Rope is { } rope ? rope.Apply(model.Config) : model.Config;
        if (options.AttentionWindow is { } window) c = Config = window.Apply(c);
        if (!options.SwiftKv && c.IsSwiftKv)
        {
            if (!model.HasOriginalAttention)
                throw new CriaException($"{model.File.Path} holds no original attention projections for layers {c.SwiftKvLayers} and above: it runs only as SwiftKV");
            c = Config = c with { SwiftKvLayers = 0, SwiftKvGroup = 1 };
        }
        int ctx = options.ContextSize > 0 ? options.ContextSize : c.ContextLength;
        MicroBatch = Math.Max(1, options.MicroBatch);
        Cache = new KvCache(c, ctx, options.KvBlockSize, options.Kv, MicroBatch);
        if (c.HasWindowedLayers && options.Eviction.Type != KvEvictionType.None)
            throw new CriaException($"{model.File.Path} runs with windowed layers (hybrid attention), which already keep a bounded window; --kv-evict is not supported with them");
        _evictor = KvEvictor.Create(options.Eviction);
        if (options.Eviction.Type == KvEvictionType.Locret)
        {
            _heads = options.Eviction.Heads!;
            _heads.CheckFits(c);
            _headIn = new float[MicroBatch * _heads.In]; _headZ = new float[MicroBatch * _heads.Hidden];
        }
        int threads = options.Threads > 0 ? options.Threads : Environment.ProcessorCount;
        _pool = new WorkerPool(threads);
        int b = MicroBatch;
        _x = new float[b * c.Dim]; _xn = new float[b * c.Dim]; _tmp = new float[b * c.Dim];
        _q = new float[b * c.QDim]; _att = new float[b * c.QDim];
        _k = new float[b * c.KvDim]; _v = new float[b * c.KvDim];
        _gate = new float[b * c.FfnDim]; _up = new float[b * c.FfnDim];
        _rope = new float[b * c.RopeDim];
        if (c.IsMoe) _moe = new MoeBuffers(b, c);
        int extra = 0, extraRowBytes = 0;
        foreach (var L in model.Layers)
        {
            var groups = L.Experts is { } ex
                ? [[L.Wq, L.Wk, L.Wv], .. Enumerable.Range(0, ex.Count).Select(e => new[] { ex.Gate[e], ex.Up[e] })]
                : new[] { new[] { L.Wq, L.Wk, L.Wv }, new[] { L.WGate, L.WUp } };
            foreach (var group in groups)
            {
                var types = group.Select(w => w.Type).Distinct().ToArray();
                extra = Math.Max(extra, types.Length - 1);
                foreach (var t in types) extraRowBytes = Math.Max(extraRowBytes, RowKernels.ActivationRowBytes(t, c.Dim));
            }
        }
        // The largest row any matrix's activation layout needs (RowKernels.ActivationRowBytes: F16 weights read two
        // float copies, F32 one). A job holds B rows of it, plus B rows for each other weight type of a fused Q/K/V or
        // gate/up; a one-row job (a mixture's chosen experts) up to MaxParts rows; 64 bytes per part for alignment.
        int rowBytes = RowKernels.ActivationRowBytes(model.Output.Type, model.Output.Cols);
        foreach (var L in model.Layers)
            foreach (var w in L.Matrices)
                rowBytes = Math.Max(rowBytes, RowKernels.ActivationRowBytes(w.Type, w.Cols));
        if (_heads != null) rowBytes = Math.Max(rowBytes, RowKernels.ActivationRowBytes(GgmlType.F32, _heads.In));
        _act = GC.AllocateArray<byte>(checked(Math.Max(b, MatMulJob.MaxParts) * rowBytes + extra * b * extraRowBytes + (MatMulJob.MaxParts + 1) * 64), pinned: true);
        _cells = new int[b];
        if (c.IsSwiftKv) _tail = new Batch(b);
        _attention = new AttentionJob(c, Cache, threads, options.Eviction.ShiftPositions);
        if (options.NeuronClamps.Count > 0)
        {
            if (c.IsMoe) throw new CriaException("neuron clamps: a mixture-of-experts model has one set of neurons per expert; clamp dense models");
            foreach (var k in options.NeuronClamps)
                if ((uint)k.Layer >= (uint)c.LayerCount || (uint)k.Neuron >= (uint)c.FfnDim || !float.IsFinite(k.Value))
                    throw new CriaException($"neuron clamp {k.Layer}:{k.Neuron}={k.Value}: need a layer in 0..{c.LayerCount - 1}, a neuron in 0..{c.FfnDim - 1} and a finite value");
            _clamps = Enumerable.Range(0, c.LayerCount)
                .Select(l => options.NeuronClamps.Where(k => k.Layer == l).Select(k => (k.Neuron, k.Value)).ToArray()).ToArray();
        }
        if (options.Loras.Count > 0)
        {
            var shapes = new Dictionary<string, (int Rows, int Cols)>();
            foreach (var L in model.Layers)
                foreach (var w in L.Projections) shapes[w.Name] = (w.Rows, w.Cols);
            var lists = new Dictionary<string, List<(LoraAdapter.Pair, float)>>();
            int maxRank = 0;
            foreach (var (adapter, scale) in options.Loras)
            {
                if (!float.IsFinite(scale)) throw new CriaException($"LoRA adapter {adapter.Path}: scale {scale} is not a finite number");
                foreach (var p in adapter.Pairs.Values)
                {
                    if (c.IsSwiftKv && Enumerable.Range(c.SwiftKvLayers, c.LayerCount - c.SwiftKvLayers)
                            .Any(l => p.BaseName is var n && (n == $"blk.{l}.attn_q.weight" || n == $"blk.{l}.attn_k.weight" || n == $"blk.{l}.attn_v.weight")))
                        throw new CriaException($"LoRA adapter {adapter.Path}: {p.BaseName} is replaced by SwiftKV's projections in this model (run it with SwiftKV off, or adapt layers below {c.SwiftKvLayers})");
                    if (!shapes.TryGetValue(p.BaseName, out var sh) || sh != (p.Out, p.In))
                        throw new CriaException($"LoRA adapter {adapter.Path}: {p.BaseName} [{p.In} → {p.Out}] does not match this model");
                    if (!lists.TryGetValue(p.BaseName, out var list)) lists[p.BaseName] = list = new();
                    list.Add((p, adapter.ScaleOf(p, scale)));
                    maxRank = Math.Max(maxRank, p.Rank);
                }
            }
            _lora = lists.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray());
            _loraJob = new LoraJob(maxRank, threads);
        }
    }

    /// <summary>y[b, :] += s · B·(A·x[b, :]) for every adapter of <paramref name="w"/>, rows shared by the workers
    /// (<see cref="LoraJob"/>): r·(in + out) multiply-adds per row, next to in·out for the base matrix.</summary>
    unsafe void ApplyLora(in WeightMatrix w, ReadOnlySpan<float> x, int B, Span<float> y)
    {
        if (!_lora!.TryGetValue(w.Name, out var adapters)) return;
        fixed (float* px = x) fixed (float* py = y)
            foreach (var (p, s) in adapters)
            {
                _loraJob!.Set(p, s, px, py, B);
                if (B < 4) _loraJob.Execute(0, 1); // decode: not worth a dispatch
                else _pool.Run(_loraJob);
            }
    }

    /// <summary>Logits of batch row <paramref name="batchRow"/> from the last <see cref="Decode"/> (row must have asked).</summary>
    public ReadOnlySpan<float> Logits(int batchRow)
    {
        if ((uint)batchRow >= (uint)_outputIndex.Length || _outputIndex[batchRow] < 0)
            throw new ArgumentOutOfRangeException(nameof(batchRow), batchRow, "this batch row did not ask for logits");
        return _logits.AsSpan(_outputIndex[batchRow] * Config.VocabSize, Config.VocabSize);
    }

    /// <summary>
    /// Runs one forward step over every row of <paramref name="batch"/>: appends each row's K/V to its sequence in the
    /// cache, attends causally over that sequence, and computes logits for rows that want them. The batch is checked
    /// in full before any state changes.
    /// </summary>
    public void Decode(Batch batch)
    {
        int n = batch.Count;
        if (n == 0) throw new InvalidBatchException("batch is empty");
        Validate(batch);
        PrepareOutputs(batch);
        int outRow = 0;
        for (int start = 0; start < n; start += MicroBatch)
        {
            int count = Math.Min(MicroBatch, n - start);
            ForwardMicroBatch(batch, start, count, ref outRow);
        }
    }

    readonly Dictionary<int, int> _nextPosition = new(); // sequence → next expected position, during Validate

    void Validate(Batch batch)
    {
        var tokens = batch.Tokens; var pos = batch.Positions; var seqs = batch.Sequences;
        if (batch.Beacons && !Config.HasBeacons) throw new InvalidBatchException("a batch of beacon rows needs a model with Activation Beacon tensors");
        var next = _nextPosition;
        next.Clear();
        for (int i = 0; i < batch.Count; i++)
        {
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
                throw new InvalidBatchException($"batch row {i}: token {tokens[i]} is outside the vocabulary (0..{Config.VocabSize - 1})");
            if (seqs[i] < 0) throw new InvalidBatchException($"batch row {i}: sequence id {seqs[i]} is negative");
            if (!next.TryGetValue(seqs[i], out int expected)) expected = Cache.Length(seqs[i]);
            if (pos[i] != expected)
                throw new InvalidBatchException($"batch row {i}: sequence {seqs[i]} continues at position {expected}, got {pos[i]}");
            next[seqs[i]] = expected + 1;
        }
        int blocksNeeded = 0;
        foreach (var (seq, end) in next) blocksNeeded += Cache.BlocksNeeded(seq, end - Cache.Length(seq));
        if (blocksNeeded > Cache.FreeBlocks)
            throw new KvCacheFullException($"KV cache is full: the batch needs {blocksNeeded} blocks of {Cache.BlockSize} tokens, {Cache.FreeBlocks} are free (context size {Cache.Capacity})");
    }

    /// <summary>Sees the input of every matrix product (imatrix collection, AWQ calibration); null — the normal path — costs one test per product.</summary>
    public IMatMulObserver? Observer { get; set; }

    /// <summary>Sees every layer's q/k/v projections before RoPE (retaining-head training); null costs one test per layer.</summary>
    public IQkvObserver? QkvObserver { get; set; }

    /// <summary>Rewrites the input of every matrix product of the blocks before it runs (simulated activation
    /// quantization); null — the normal path — costs one test per step of products.</summary>
    public IActivationTransform? ActivationTransform { get; set; }

    /// <summary>Rows that stopped below the SwiftKV layers since this context was made (prompt rows asking for no logits).</summary>
    internal long RowsStoppedAtSwiftKv { get; private set; }

    /// <summary>Whether this context evicts KV blocks (<see cref="ContextOptions.Eviction"/>).</summary>
    public bool Evicts => _evictor != null;

    /// <summary>When set, <see cref="Decode"/> also keeps every row's final hidden state (after the output norm), read
    /// with <see cref="Embedding"/> — what embedding endpoints pool.</summary>
    public bool KeepEmbeddings { get; set; }
    float[] _embd = [];

    /// <summary>The final hidden state of batch row <paramref name="batchRow"/> from the last <see cref="Decode"/> run
    /// with <see cref="KeepEmbeddings"/> set.</summary>
    public ReadOnlySpan<float> Embedding(int batchRow) => _embd.AsSpan(batchRow * Config.Dim, Config.Dim);

    void PrepareOutputs(Batch batch)
    {
        if (KeepEmbeddings && _embd.Length < (long)batch.Count * Config.Dim) _embd = new float[(long)batch.Count * Config.Dim];
        int n = batch.Count, outputs = 0;
        if (_outputIndex.Length < n) _outputIndex = new int[Math.Max(n, MicroBatch)];
        var want = batch.WantLogits;
        for (int i = 0; i < n; i++) _outputIndex[i] = want[i] ? outputs++ : -1;
        for (int i = n; i < _outputIndex.Length; i++) _outputIndex[i] = -1;
        long need = (long)outputs * Config.VocabSize;
        if (_logits.Length < need) _logits = new float[need];
        _outputs = outputs;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    void ForwardMicroBatch(Batch batch, int start, int B, ref int outRow)
    {
        var c = Config;
        var m = Model;
        int dim = c.Dim, qDim = c.QDim, kvDim = c.KvDim, ff = c.FfnDim, nRot = c.RopeDim;
        var tokens = batch.Tokens; var pos = batch.Positions; var seqs = batch.Sequences;

        _evictor?.BeginStep(Cache, batch, start, B);
        int rows = B;                     // the micro-batch's rows; B becomes the rows still going up after SwiftKV's cut
        Batch at = batch; int atStart = start; // where attention reads the rows' sequences and positions
        // Embedding rows and the per-row RoPE table; reserve a KV cell for each row.
        for (int b = 0; b < B; b++)
        {
            int r = start + b;
            if (batch.Beacons) m.BeaconEmbedding.AsSpan().CopyTo(_x.AsSpan(b * dim, dim)); // Activation Beacon: the beacon token
            else Dequantize.Row(m.TokenEmbedding.Type, m.TokenEmbedding.Row(tokens[r]), _x.AsSpan(b * dim, dim));
            c.RopeCache(pos[r], _rope.AsSpan(b * nRot, nRot));
            Cache.Append(seqs[r], 1);
            _cells[b] = Cache.Cell(seqs[r], pos[r]);
        }

        for (int l = 0; l < c.LayerCount; l++)
        {
            if (c.IsSwiftKv && l == c.SwiftKvLayers)
            {
                int left = SwiftKvInputs(batch, start, B);
                if (left != B) { B = left; at = _tail!; atStart = 0; }
                if (B == 0) break;
            }
            var L = m.Layers[l];
            // ---- attention ----
            var h = SubLayerInput(L.AttnNorm, B);
            if (c.IsSwiftKv && l >= c.SwiftKvLayers)
            {
                MatMul(L.WqSwift!.Value, h, B, _q); // keys and values are in the cache already (SwiftKvInputs)
                for (int b = 0; b < B; b++) c.Rope(_q.AsSpan(b * qDim, qDim), c.HeadCount, _rope.AsSpan(b * nRot, nRot));
            }
            else
            {
                if (batch.Beacons) MatMuls(h, B, 3, L.Beacon!.Wq, _q, L.Beacon.Wk, _k, L.Beacon.Wv, _v);
                else MatMuls(h, B, 3, L.Wq, _q, L.Wk, _k, L.Wv, _v);
                QkvObserver?.Observe(l, _q.AsSpan(0, B * qDim), _k.AsSpan(0, B * kvDim), _v.AsSpan(0, B * kvDim), B);
                if (_heads != null) ScoreRetention(l, batch, start, B);
                for (int b = 0; b < B; b++)
                {
                    var cs = _rope.AsSpan(b * nRot, nRot);
                    var q = _q.AsSpan(b * qDim, qDim); var k = _k.AsSpan(b * kvDim, kvDim);
                    if (L.QNorm != null) { Ops.RmsNorm(q, L.QNorm, c.RmsNormEps, q); Ops.RmsNorm(k, L.KNorm, c.RmsNormEps, k); } // OLMo 2's QK-norm
                    c.Rope(q, c.HeadCount, cs);
                    c.Rope(k, c.KvHeadCount, cs);
                    Cache.Store(l, seqs[start + b], pos[start + b], _cells[b], _k.AsSpan(b * kvDim, kvDim), _v.AsSpan(b * kvDim, kvDim));
                }
            }
            bool scoring = _evictor is { NeedsAttention: true };
            if (scoring) EnsureProbs();
            _attention.Prepare(c.KvLayer(l), _q, _att, at, atStart, B, scoring ? _probs : null, _probStride);
            _pool.Run(_attention);
            if (scoring) _evictor!.Accumulate(Cache, at, atStart, B, _probs, _probStride, c.KvHeadCount);
            MatMul(batch.Beacons ? L.Beacon!.Wo : L.Wo, _att, B, _tmp);
            PostNorm(L.PostAttnNorm, B);
            Ops.Add(_tmp.AsSpan(0, B * dim), _x.AsSpan(0, B * dim));

            // ---- feed-forward (SwiGLU) ----
            h = SubLayerInput(L.FfnNorm, B);
            if (L.Experts is { } experts) MixtureOfExperts(experts, h, B);
            else
            {
                var beaconFfn = batch.Beacons ? L.Beacon!.Up : null; // Activation Beacon's "mlp" parameters, when the file has them
                MatMuls(h, B, 2, L.WGate, _gate, beaconFfn ?? L.WUp, _up, default, default);
                for (int b = 0; b < B; b++) Ops.SwiGlu(_gate.AsSpan(b * ff, ff), _up.AsSpan(b * ff, ff));
                if (_clamps != null)
                    foreach (var (n, v) in _clamps[l])
                        for (int b = 0; b < B; b++) _gate[b * ff + n] = v;
                MatMul(beaconFfn != null ? L.Beacon!.Down!.Value : L.WDown, _gate, B, _tmp);
            }
            PostNorm(L.PostFfnNorm, B);
            Ops.Add(_tmp.AsSpan(0, B * dim), _x.AsSpan(0, B * dim));
        }

        // Eviction, chunk by chunk (Locret): every sequence of this micro-batch over its budget drops blocks.
        if (_evictor != null) _evictor.Evict(Cache, batch, start, rows);
        // Hybrid attention: the windowed layers let go of what no later query can see.
        Cache.TrimWindows(batch.Sequences.Slice(start, rows));

        // Final hidden states (after the output norm) of every row, for embeddings.
        if (KeepEmbeddings)
            for (int b = 0; b < B; b++)
                Ops.RmsNorm(_x.AsSpan(b * dim, dim), m.OutputNorm, c.RmsNormEps, _embd.AsSpan((start + b) * dim, dim));

        // ---- output head, only for rows that asked (after SwiftKV's cut, every row left) ----
        int nOut = 0;
        for (int b = 0; b < B; b++)
        {
            if (at == batch && _outputIndex[start + b] < 0) continue;
            Ops.RmsNorm(_x.AsSpan(b * dim, dim), m.OutputNorm, c.RmsNormEps, _xn.AsSpan(nOut * dim, dim));
            nOut++;
        }
        if (nOut > 0)
        {
            MatMul(m.Output, _xn, nOut, _logits.AsSpan(outRow * c.VocabSize).Slice(0, nOut * c.VocabSize));
            outRow += nOut;
        }
    }

    /// <summary>Locret: each row's retention score is the largest retaining-head output (a z-score) over the layers and
    /// KV heads seen so far, written into its slot of the sequence's score array (slot = position − tokens evicted).
    /// fc1 runs as one product over the micro-batch's rows through the F32 row kernels on the workers
    /// (<see cref="RetainingHeads.Score"/> is the row-at-a-time reference).</summary>
    unsafe void ScoreRetention(int layer, Batch batch, int start, int B)
    {
        var c = Config; var heads = _heads!;
        int qDim = c.QDim, kvDim = c.KvDim, n = heads.In, H = heads.Hidden, G = heads.KvHeads;
        for (int b = 0; b < B; b++)
        {
            var x = _headIn.AsSpan(b * n, n);
            _q.AsSpan(b * qDim, qDim).CopyTo(x);
            _k.AsSpan(b * kvDim, kvDim).CopyTo(x[qDim..]);
            _v.AsSpan(b * kvDim, kvDim).CopyTo(x[(qDim + kvDim)..]);
        }
        fixed (float* px = _headIn) fixed (float* pz = _headZ)
        {
            _products[0] = new Product(heads.Fc1[layer], px, pz);         // Z [B, H] = X · W1ᵀ
            RunProducts(1, B, hooks: false);
        }
        var w2 = heads.W2[layer];
        var pos = batch.Positions; var seqs = batch.Sequences;
        for (int b = 0; b < B; b++)
        {
            var z = _headZ.AsSpan(b * H, H);
            for (int j = 0; j < H; j++) z[j] /= 1f + MathF.Exp(-z[j]); // silu
            float best = float.NegativeInfinity;
            for (int g = 0; g < G; g++) best = Math.Max(best, Ops.Dot(w2.AsSpan(g * H, H), z));
            int seq = seqs[start + b], slot = pos[start + b] - Cache.GetSequence(seq).Dropped;
            var scores = Cache.Scores(seq);
            scores[slot] = layer == 0 ? best : Math.Max(scores[slot], best);
        }
    }

    /// <summary>
    /// SwiftKV at layer L = SwiftKvLayers: h = swiftkv_norm(x) for the B rows, then the keys and values of every later
    /// KV cache layer from h (each AcrossKV group's first layer's attn_k_swiftkv / attn_v_swiftkv), rotated and stored.
    /// Then the rows that asked for no logits stop: the rest move to the front of _x and _rope, and into _tail. Returns
    /// the rows left — all of them when something reads every row's upper layers (an observer, embeddings, attention
    /// scores for eviction).
    /// </summary>
    int SwiftKvInputs(Batch batch, int start, int B)
    {
        var c = Config; var m = Model;
        int dim = c.Dim, kvDim = c.KvDim, nRot = c.RopeDim;
        var pos = batch.Positions; var seqs = batch.Sequences;
        for (int b = 0; b < B; b++) Ops.RmsNorm(_x.AsSpan(b * dim, dim), m.SwiftKvNorm!, c.RmsNormEps, _xn.AsSpan(b * dim, dim)); // [B, dim] h
        for (int l = c.SwiftKvLayers; l < c.LayerCount; l += c.SwiftKvGroup)
        {
            var L = m.Layers[l];
            MatMuls(_xn, B, 2, L.WkSwift!.Value, _k, L.WvSwift!.Value, _v, default, default);
            for (int b = 0; b < B; b++)
            {
                var k = _k.AsSpan(b * kvDim, kvDim);
                c.Rope(k, c.KvHeadCount, _rope.AsSpan(b * nRot, nRot));
                Cache.Store(c.KvLayer(l), seqs[start + b], pos[start + b], _cells[b], k, _v.AsSpan(b * kvDim, kvDim));
            }
        }
        if (Observer != null || KeepEmbeddings || _evictor is { NeedsAttention: true }) return B;
        var tail = _tail!;
        tail.Clear();
        var tokens = batch.Tokens;
        for (int b = 0; b < B; b++)
        {
            if (_outputIndex[start + b] < 0) continue;
            int n = tail.Count;
            if (n != b)
            {
                _x.AsSpan(b * dim, dim).CopyTo(_x.AsSpan(n * dim, dim));
                _rope.AsSpan(b * nRot, nRot).CopyTo(_rope.AsSpan(n * nRot, nRot));
            }
            tail.Add(tokens[start + b], pos[start + b], seqs[start + b], true);
        }
        RowsStoppedAtSwiftKv += B - tail.Count;
        return tail.Count;
    }

    /// <summary>The sub-layer input [B, dim]: _xn[b, :] = RMSNorm(x[b, :]) ⊙ w with a pre-norm (llama), or the
    /// residual stream _x itself without one (OLMo 2).</summary>
    float[] SubLayerInput(float[]? w, int B)
    {
        if (w == null) return _x;
        int dim = Config.Dim;
        for (int b = 0; b < B; b++) Ops.RmsNorm(_x.AsSpan(b * dim, dim), w, Config.RmsNormEps, _xn.AsSpan(b * dim, dim));
        return _xn;
    }

    /// <summary>_tmp[b, :] = RMSNorm(_tmp[b, :]) ⊙ w, the sub-layer output before its residual add, with a post-norm
    /// (OLMo 2); nothing without.</summary>
    void PostNorm(float[]? w, int B)
    {
        if (w == null) return;
        int dim = Config.Dim;
        for (int b = 0; b < B; b++) { var t = _tmp.AsSpan(b * dim, dim); Ops.RmsNorm(t, w, Config.RmsNormEps, t); }
    }

    /// <summary>
    /// _tmp[b, :] = the mixture-of-experts output for the normed rows x[b, :] (llama.cpp's build_moe_ffn for the
    /// llama architecture): route every row, then run each expert once over the rows routed to it (gathered into
    /// contiguous rows, so an expert's weights stream once per step however many rows chose it), and sum each row's
    /// weighted expert outputs in the order of its choice (most probable first), as ggml adds them.
    /// </summary>
    void MixtureOfExperts(MoeExperts E, float[] x, int B)
    {
        var c = Config; var mb = _moe!;
        int dim = c.Dim, ff = c.FfnDim, k = c.ExpertUsedCount, nE = E.Count;
        MatMul(E.Router, x, B, mb.RouterLogits);                                         // [B, nExpert]
        for (int b = 0; b < B; b++)
            MoeExperts.Route(mb.RouterLogits.AsSpan(b * nE, nE), mb.Chosen.AsSpan(b * k, k), mb.Weights.AsSpan(b * k, k), c.MoeRenormalize);
        if (B == 1) { OneRowExperts(E, x); return; }
        // Counting sort of the (row, slot) choices by expert: slots of expert e are Order[Start[e] .. Start[e + 1]).
        Array.Clear(mb.Start, 0, nE + 1);
        for (int i = 0; i < B * k; i++) mb.Start[mb.Chosen[i] + 1]++;
        for (int e = 0; e < nE; e++) mb.Start[e + 1] += mb.Start[e];
        mb.Start.AsSpan(0, nE).CopyTo(mb.Fill);
        for (int i = 0; i < B * k; i++) mb.Order[mb.Fill[mb.Chosen[i]]++] = i;
        for (int e = 0; e < nE; e++)
        {
            int first = mb.Start[e], n = mb.Start[e + 1] - first;
            if (n == 0) continue;
            for (int j = 0; j < n; j++)                                                   // gather: Input[j] = x[row of slot]
                x.AsSpan(mb.Order[first + j] / k * dim, dim).CopyTo(mb.Input.AsSpan(j * dim, dim));
            MatMuls(mb.Input, n, 2, E.Gate[e], _gate, E.Up[e], _up, default, default);
            for (int j = 0; j < n; j++) Ops.SwiGlu(_gate.AsSpan(j * ff, ff), _up.AsSpan(j * ff, ff));
            MatMul(E.Down[e], _gate, n, mb.Output);                                       // [n, dim]
            for (int j = 0; j < n; j++)                                                   // scatter, weighted: slot i of row b
            {
                int slot = mb.Order[first + j];
                Ops.Scale(mb.Output.AsSpan(j * dim, dim), mb.Weights[slot], mb.PerSlot.AsSpan(slot * dim, dim));
            }
        }
        for (int b = 0; b < B; b++)
        {
            var y = _tmp.AsSpan(b * dim, dim);
            mb.PerSlot.AsSpan(b * k * dim, dim).CopyTo(y);
            for (int j = 1; j < k; j++) Ops.Add(mb.PerSlot.AsSpan((b * k + j) * dim, dim), y);
        }
    }

    /// <summary>
    /// The decode step of one row: its k experts' gate/up products as jobs of up to <see cref="MatMulJob.MaxParts"/>
    /// matrices reading the same activation row, then their down products as jobs of up to MaxParts matrices, each
    /// reading its own expert's hidden row — for Mixtral's 2 of 8, two dispatches per layer as for a dense layer
    /// instead of 2k; for OLMoE's 8 of 64, three instead of 16. Each output's arithmetic is the same as in
    /// <see cref="MixtureOfExperts"/>'s grouped path (a row's kernel depends only on the row), so the result is too.
    /// </summary>
    unsafe void OneRowExperts(MoeExperts E, float[] input)
    {
        var c = Config; var mb = _moe!;
        int dim = c.Dim, ff = c.FfnDim, k = c.ExpertUsedCount, parts = MatMulJob.MaxParts;
        fixed (float* x = input) fixed (float* g = mb.OneRowGate) fixed (float* u = mb.OneRowUp) fixed (float* y = mb.PerSlot)
        {
            for (int j0 = 0; j0 < k; j0 += parts / 2)
            {
                int n = Math.Min(parts / 2, k - j0);
                for (int j = 0; j < n; j++)
                {
                    int e = mb.Chosen[j0 + j];
                    _products[2 * j] = new Product(E.Gate[e], x, g + (j0 + j) * ff);
                    _products[2 * j + 1] = new Product(E.Up[e], x, u + (j0 + j) * ff);
                }
                RunProducts(2 * n, 1);
            }
            for (int j = 0; j < k; j++) Ops.SwiGlu(mb.OneRowGate.AsSpan(j * ff, ff), mb.OneRowUp.AsSpan(j * ff, ff)); // [ff] SiLU(gate)·up of expert j
            for (int j0 = 0; j0 < k; j0 += parts)
            {
                int n = Math.Min(parts, k - j0);
                for (int j = 0; j < n; j++) _products[j] = new Product(E.Down[mb.Chosen[j0 + j]], g + (j0 + j) * ff, y + (j0 + j) * dim);
                RunProducts(n, 1);
            }
        }
        var o = _tmp.AsSpan(0, dim);
        for (int j = 0; j < k; j++)
        {
            var slot = mb.PerSlot.AsSpan(j * dim, dim);
            Ops.Scale(slot, mb.Weights[j], slot);
            if (j == 0) slot.CopyTo(o); else Ops.Add(slot, o);
        }
    }

    void EnsureProbs()
    {
        int stride = Cache.Capacity + Cache.BlockSize;
        long need = (long)MicroBatch * Config.KvHeadCount * stride;
        if (_probs.Length < need) { _probs = new float[need]; _probStride = stride; }
    }

    /// <summary>y[b, :] = W · x[b, :] for B rows: activations are converted once to the format the weight's row kernel reads.</summary>
    void MatMul(in WeightMatrix w, float[] x, int B, Span<float> y) => MatMul(w, x.AsSpan(), B, y);

    void MatMul(in WeightMatrix w, ReadOnlySpan<float> x, int B, Span<float> y) =>
        MatMuls(x, B, 1, w, y, default, default, default, default);

    /// <summary>y_p[b, :] = W_p · x[b, :] for two or three matrices with the same input (Q/K/V, gate/up) as one job.</summary>
    unsafe void MatMuls(ReadOnlySpan<float> x, int B, int parts, in WeightMatrix w0, Span<float> y0,
        in WeightMatrix w1, Span<float> y1, in WeightMatrix w2, Span<float> y2)
    {
        fixed (float* px = x) fixed (float* p0 = y0) fixed (float* p1 = y1) fixed (float* p2 = y2)
        {
            _products[0] = new Product(w0, px, p0);
            if (parts > 1) _products[1] = new Product(w1, px, p1);
            if (parts > 2) _products[2] = new Product(w2, px, p2);
            RunProducts(parts, B);
        }
    }

    /// <summary>
    /// Runs _products[0 .. count) over B rows as one job: the workers share one dispatch. Each distinct (input, weight
    /// type) is converted once into the layout the weight's row kernel reads, in the activation arena; the observer
    /// sees every product's input, and LoRA adapters are applied after (none of these for the retaining heads' product,
    /// <paramref name="hooks"/> false). Inputs and outputs must stay pinned.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    unsafe void RunProducts(int count, int B, bool hooks = true)
    {
        var products = _products.AsSpan(0, count);
        if (hooks && ActivationTransform is { } transform)
            for (int i = 0; i < count; i++)
            {
                ref var p = ref products[i];
                int j = 0;
                while (j < i && products[j].X != p.X) j++;
                if (j == i) transform.Apply(p.W.Name, new Span<float>(p.X, B * p.W.Cols), B, p.W.Cols);
            }
        if (hooks && Observer is { } observer)
            foreach (ref var p in products) observer.Observe(p.W.Name, new ReadOnlySpan<float>(p.X, B * p.W.Cols), B, p.W.Cols);
        byte* arena = ActArena(), next = arena;
        _matmul.Clear();
        for (int i = 0; i < count; i++)
        {
            ref var p = ref products[i];
            int j = 0;
            while (j < i && (products[j].X != p.X || products[j].W.Type != p.W.Type)) j++;
            if (j == i)
            {
                p.ActRowBytes = RowKernels.ActivationRowBytes(p.W.Type, p.W.Cols);
                p.Act = next;
                next = (byte*)(((nint)(next + (long)B * p.ActRowBytes) + 63) & ~(nint)63);
                if (next > arena + _act.Length - 64) throw new InvalidOperationException("activation arena overflow"); // sized in the constructor
                PrepareActivations(p.W.Type, p.X, p.W.Cols, B, p.Act, p.ActRowBytes);
            }
            else { p.Act = products[j].Act; p.ActRowBytes = products[j].ActRowBytes; }
            _matmul.Add(p.W, p.Act, p.ActRowBytes, B, p.Y);
        }
        _matmul.Split(_pool.Count);
        _pool.Run(_matmul);
        _matmul.Clear();
        if (hooks && _lora != null)
            foreach (ref var p in products)
                ApplyLora(p.W, new ReadOnlySpan<float>(p.X, B * p.W.Cols), B, new Span<float>(p.Y, B * p.W.Rows));
    }

    /// <summary>The arena's first 64-byte boundary: rows whose size is a multiple of 64 then start on cache lines
    /// (512-bit loads that straddle two lines cost ~1.5× in the float kernels).</summary>
    unsafe byte* ActArena()
    {
        nint p = (nint)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_act));
        return (byte*)((p + 63) & ~(nint)63);
    }

    /// <summary>Converts B rows of x into the layout <paramref name="type"/>'s row kernel reads, at <paramref name="dst"/>.</summary>
    unsafe void PrepareActivations(GgmlType type, float* x, int cols, int B, byte* dst, int actBytes)
    {
        if (B < 4 || _pool.Count == 1)
            for (int b = 0; b < B; b++)
                RowKernels.PrepareActivations(type, new ReadOnlySpan<float>(x + (long)b * cols, cols), new Span<byte>(dst + (long)b * actBytes, actBytes));
        else
        {
            _prepare.Set(type, x, cols, B, dst, actBytes);
            _pool.Run(_prepare);
        }
    }

    /// <summary>One matrix product of a job: y[b, :] = W · x[b, :] for the job's B rows (x [B, W.Cols], y [B, W.Rows]);
    /// Act / ActRowBytes: where its activations were converted.</summary>
    unsafe struct Product(in WeightMatrix w, float* x, float* y)
    {
        public readonly WeightMatrix W = w;
        public readonly float* X = x, Y = y;
        public byte* Act;
        public int ActRowBytes;
    }

    public void Dispose() => _pool.Dispose();
}

/// <summary>Mixture-of-experts work buffers for a micro-batch of B rows routed to k of nExpert experts each.</summary>
sealed class MoeBuffers(int B, Models.ModelConfig c)
{
    public readonly float[] RouterLogits = new float[B * c.ExpertCount];       // [B, nExpert] router output, then probabilities
    public readonly int[] Chosen = new int[B * c.ExpertUsedCount];             // [B, k] experts chosen, most probable first
    public readonly float[] Weights = new float[B * c.ExpertUsedCount];        // [B, k] their renormalised probabilities
    public readonly int[] Start = new int[c.ExpertCount + 1];                  // [nExpert + 1] first slot of each expert in Order
    public readonly int[] Fill = new int[c.ExpertCount];                       // [nExpert] counting-sort cursors
    public readonly int[] Order = new int[B * c.ExpertUsedCount];              // [B·k] slots (b·k + j) grouped by expert
    public readonly float[] Input = new float[B * c.Dim];                      // [rows of one expert, dim] gathered normed input
    public readonly float[] Output = new float[B * c.Dim];                     // [rows of one expert, dim] its down projection
    public readonly float[] PerSlot = new float[B * c.ExpertUsedCount * c.Dim]; // [B, k, dim] weighted expert outputs
    // One-row decode (InferenceContext.OneRowExperts): the k experts' gate/up outputs, then their down inputs.
    public readonly float[] OneRowGate = new float[c.ExpertUsedCount * c.FfnDim]; // [k, ff] gate, then SiLU(gate)·up
    public readonly float[] OneRowUp = new float[c.ExpertUsedCount * c.FfnDim];   // [k, ff]
}

/// <summary>
/// One LoRA adapter's update of a matrix product, y[b, :] += s · B·(A·x[b, :]), rows claimed by the workers: per row
/// t = A·x (r dot products of length in), then y += (s·t_j)·Bᵀ[j, :] for j = 0 … r − 1 (r row updates of length out).
/// A row's arithmetic does not depend on which worker runs it.
/// </summary>
sealed unsafe class LoraJob(int maxRank, int workers) : ParallelJob
{
    readonly float[][] _t = Enumerable.Range(0, workers).Select(_ => new float[Math.Max(1, maxRank)]).ToArray(); // [worker][r]
    LoraAdapter.Pair? _p;
    float _s;
    float* _x, _y;
    int _rows, _next;

    public void Set(LoraAdapter.Pair p, float s, float* x, float* y, int rows) { _p = p; _s = s; _x = x; _y = y; _rows = rows; _next = 0; }

    public override bool SharesWorkDynamically => true;

    public override void Execute(int worker, int workerCount)
    {
        var p = _p!;
        int r = p.Rank, n = p.In, m = p.Out;
        var t = _t[worker].AsSpan(0, r);
        while (true)
        {
            int b = Interlocked.Increment(ref _next) - 1;
            if (b >= _rows) return;
            var xb = new ReadOnlySpan<float>(_x + (long)b * n, n);
            var yb = new Span<float>(_y + (long)b * m, m);
            for (int j = 0; j < r; j++) t[j] = Ops.Dot(p.A.AsSpan(j * n, n), xb) * _s;
            for (int j = 0; j < r; j++) Ops.Axpy(t[j], p.BT.AsSpan(j * m, m), yb);
        }
    }
}
