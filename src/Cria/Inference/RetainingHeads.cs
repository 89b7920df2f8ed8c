using Cria.Kernels;
using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Inference;

/// <summary>
/// Locret's retaining heads (Huang et al. 2024; techniques.md §3): one small MLP per layer,
/// R(x) = W2·silu(W1·x), reading x = concat(q, k, v) right after the layer's projections (before RoPE), with one
/// output per KV head — the token's predicted causal importance score (CIS): how strongly later queries will attend
/// to it. Trained by <c>cria train-locret</c> (<see cref="Training.Locret"/>) on labels standardised per layer and KV head,
/// so every output is a z-score and outputs of different layers and heads compare. The engine (<c>--kv-evict locret</c>)
/// scores each token once, when it is written, as the largest z-score over layers and KV heads
/// (<see cref="RetainingHeadScorer"/>): a token one head of one layer will need is kept.
/// </summary>
public sealed unsafe class RetainingHeads
{
    public const string FileType = "locret";
    public int Layers { get; }
    public int QDim { get; }
    public int KvDim { get; }
    public int KvHeads { get; }
    public int Hidden { get; }
    /// <summary>Input width: q, k and v side by side.</summary>
    public int In => QDim + 2 * KvDim;
    public float[][] W1 { get; }         // [layer][Hidden, In]   fc1 (no bias)
    public float[][] W2 { get; }         // [layer][KvHeads, Hidden]   fc2 (no bias)
    /// <summary>W1 of each layer as a weight matrix over the pinned array (the training updates it in place).</summary>
    internal WeightMatrix[] Fc1 { get; }
    /// <summary>Mean and standard deviation of the raw labels (max pre-softmax score) per [layer, KV head], which the
    /// training standardised them with: raw ≈ mean + std · output.</summary>
    public float[] LabelMean { get; }    // [Layers * KvHeads]
    public float[] LabelStd { get; }     // [Layers * KvHeads]

    public RetainingHeads(int layers, int qDim, int kvDim, int kvHeads, int hidden)
    {
        if (layers < 1 || qDim < 1 || kvDim < 1 || kvHeads < 1 || hidden < 1)
            throw new CriaException($"retaining heads need positive sizes, got {layers} layers, q {qDim}, kv {kvDim}, {kvHeads} KV heads, hidden {hidden}");
        Layers = layers; QDim = qDim; KvDim = kvDim; KvHeads = kvHeads; Hidden = hidden;
        // pinned, so that the engine multiplies fc1 in place through its F32 row kernels (Fc1)
        W1 = Enumerable.Range(0, layers).Select(_ => GC.AllocateArray<float>(hidden * In, pinned: true)).ToArray();
        Fc1 = new WeightMatrix[layers];
        for (int l = 0; l < layers; l++)
            fixed (float* p = W1[l]) Fc1[l] = new WeightMatrix($"blk.{l}.locret_fc1.weight", GgmlType.F32, (byte*)p, hidden, In);
        W2 = Enumerable.Range(0, layers).Select(_ => new float[kvHeads * hidden]).ToArray();
        LabelMean = new float[layers * kvHeads];
        LabelStd = Enumerable.Repeat(1f, layers * kvHeads).ToArray();
    }

    /// <summary>Heads shaped for <paramref name="c"/>, initialised as torch.nn.Linear does (uniform ±1/√fan_in).</summary>
    public static RetainingHeads Create(ModelConfig c, int hidden, ulong seed)
    {
        CheckModel(c);
        var h = new RetainingHeads(c.LayerCount, c.QDim, c.KvDim, c.KvHeadCount, hidden);
        var rng = new Training.TrainingRng(seed);
        float a1 = 1f / MathF.Sqrt(h.In), a2 = 1f / MathF.Sqrt(hidden);
        for (int l = 0; l < h.Layers; l++)
        {
            foreach (ref float w in h.W1[l].AsSpan()) w = (float)(rng.NextDouble() * 2 - 1) * a1;
            foreach (ref float w in h.W2[l].AsSpan()) w = (float)(rng.NextDouble() * 2 - 1) * a2;
        }
        return h;
    }

    /// <summary>The models retaining heads apply to: attention computed from plain q/k/v projections in every layer.</summary>
    public static void CheckModel(ModelConfig c)
    {
        if (c.IsSwiftKv) throw new CriaException("retaining heads: a SwiftKV model's upper layers have no key/value projections of their own; use --swiftkv off");
        if (c.QkNorm) throw new CriaException($"retaining heads: {c.Architecture} normalises q and k before RoPE (QK-norm); retaining heads are built for llama-style attention");
    }

    /// <summary>Throws unless these heads were trained for a model of <paramref name="c"/>'s shape.</summary>
    public void CheckFits(ModelConfig c, string what = "retaining heads")
    {
        CheckModel(c);
        if (c.LayerCount != Layers || c.QDim != QDim || c.KvDim != KvDim || c.KvHeadCount != KvHeads)
            throw new CriaException($"{what} were trained for {Layers} layers, q {QDim}, k/v {KvDim} ({KvHeads} KV heads); this model has {c.LayerCount} layers, q {c.QDim}, k/v {c.KvDim} ({c.KvHeadCount} KV heads)");
    }

    /// <summary>
    /// Scores one row: <paramref name="scores"/>[g] = Σ_j W2[g, j] · silu(W1[j, :] · [q; k; v]) for layer
    /// <paramref name="layer"/>. <paramref name="hidden"/> is scratch of <see cref="Hidden"/> floats. The reference the
    /// training forward (a matrix product over a whole sequence) is checked against.
    /// </summary>
    public void Score(int layer, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> hidden, Span<float> scores)
    {
        var w1 = W1[layer]; var w2 = W2[layer];
        int n = In;
        for (int j = 0; j < Hidden; j++)
        {
            var row = w1.AsSpan(j * n, n);
            float z = Ops.Dot(row[..QDim], q) + Ops.Dot(row.Slice(QDim, KvDim), k) + Ops.Dot(row.Slice(QDim + KvDim, KvDim), v);
            hidden[j] = z / (1f + MathF.Exp(-z));
        }
        for (int g = 0; g < KvHeads; g++) scores[g] = Ops.Dot(w2.AsSpan(g * Hidden, Hidden), hidden[..Hidden]);
    }

    /// <summary>Writes the heads as a small GGUF, atomically: general.type = "locret", <c>blk.L.locret_fc1.weight</c>
    /// (ggml shape [In, Hidden]) and <c>blk.L.locret_fc2.weight</c> ([Hidden, KvHeads]), F32, and the label statistics.</summary>
    public void Write(string path, string? recipe = null)
    {
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("general.type", FileType);
        w.Set("locret.layer_count", (uint)Layers);
        w.Set("locret.q_dim", (uint)QDim);
        w.Set("locret.kv_dim", (uint)KvDim);
        w.Set("locret.kv_head_count", (uint)KvHeads);
        w.Set("locret.hidden", (uint)Hidden);
        w.Set("locret.label_mean", LabelMean.ToArray());
        w.Set("locret.label_std", LabelStd.ToArray());
        if (recipe != null) w.Set("locret.recipe", recipe);
        for (int l = 0; l < Layers; l++)
        {
            w.AddTensor($"blk.{l}.locret_fc1.weight", [In, Hidden], GgmlType.F32, MemoryMarshal.AsBytes(W1[l].AsSpan()).ToArray());
            w.AddTensor($"blk.{l}.locret_fc2.weight", [Hidden, KvHeads], GgmlType.F32, MemoryMarshal.AsBytes(W2[l].AsSpan()).ToArray());
        }
        w.Write(path);
    }

    /// <summary>Reads heads written by <see cref="Write"/>, checking every tensor's type and shape.</summary>
    public static RetainingHeads Read(string path)
    {
        if (!File.Exists(path)) throw new CriaException($"retaining heads {path} do not exist");
        using var f = GgufFile.Open(path);
        if (f.Get("general.type", "") != FileType) throw new CriaException($"{path} is not a retaining-head file (general.type '{f.Get("general.type", "")}', expected '{FileType}'; train one with cria train-locret)");
        int Int(string key) => f.Get<int>(key, 0) is var v and > 0 ? v : throw new CriaException($"{path}: {key} is missing or not positive");
        var h = new RetainingHeads(Int("locret.layer_count"), Int("locret.q_dim"), Int("locret.kv_dim"), Int("locret.kv_head_count"), Int("locret.hidden"));
        if (h.KvDim % h.KvHeads != 0 || h.QDim % (h.KvDim / h.KvHeads) != 0)
            throw new CriaException($"{path}: q {h.QDim} and k/v {h.KvDim} do not divide into {h.KvHeads} KV heads");
        var mean = f.Get<float[]>("locret.label_mean", []); var std = f.Get<float[]>("locret.label_std", []);
        if (mean.Length != h.LabelMean.Length || std.Length != h.LabelStd.Length)
            throw new CriaException($"{path}: label statistics need {h.LabelMean.Length} values, got {mean.Length} and {std.Length}");
        mean.CopyTo(h.LabelMean, 0); std.CopyTo(h.LabelStd, 0);
        for (int l = 0; l < h.Layers; l++)
        {
            Load(f, path, $"blk.{l}.locret_fc1.weight", h.In, h.Hidden, h.W1[l]);
            Load(f, path, $"blk.{l}.locret_fc2.weight", h.Hidden, h.KvHeads, h.W2[l]);
        }
        return h;
    }

    static void Load(GgufFile f, string path, string name, int cols, int rows, float[] into)
    {
        if (!f.TryGetTensor(name, out var t)) throw new CriaException($"{path}: tensor {name} is missing");
        if (t.Type != GgmlType.F32 || t.Shape.Length != 2 || t.Shape[0] != cols || t.Shape[1] != rows)
            throw new CriaException($"{path}: {name} must be F32 [{cols}, {rows}], got {t.Type} [{string.Join(", ", t.Shape)}]");
        var data = MemoryMarshal.Cast<byte, float>(f.TensorData(t));
        for (int i = 0; i < data.Length; i++)
            if (!float.IsFinite(data[i])) throw new CriaException($"{path}: {name} holds a value that is not a finite number");
        data.CopyTo(into);
    }
}

/// <summary>Locret with the paged cache: a token's retention score is written once, when its row runs
/// (<see cref="RetainingHeads"/>), and a block's is its best token's — a needle a few tokens long keeps its block.</summary>
public sealed class RetainingHeadScorer : IKvRetentionScorer
{
    public bool NeedsAttention => false;
    public bool FreshEachStep => false;
    public bool Observes(int rowsAfter) => false;
    public void ScoreBlocks(ReadOnlySpan<float> slotScores, ReadOnlySpan<int> blockPositions, int blockSize, Span<float> blockScores)
    {
        for (int i = 0; i < blockPositions.Length; i++)
        {
            float s = float.NegativeInfinity;
            for (int j = i * blockSize; j < Math.Min(slotScores.Length, (i + 1) * blockSize); j++) s = Math.Max(s, slotScores[j]);
            blockScores[i] = s;
        }
    }
}
