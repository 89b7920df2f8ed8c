using System.Runtime.InteropServices;
using System.Text;

namespace Cria.Training;

/// <summary>Optimisation settings of a training run.</summary>
public sealed record TrainingOptions
{
    public int BatchSize { get; init; } = 8;
    /// <summary>Micro-batches whose gradients are summed before one optimizer step.</summary>
    public int GradAccumulation { get; init; } = 1;
    public int Steps { get; init; } = 1000;
    public int WarmupSteps { get; init; } = 100;
    public float LearningRate { get; init; } = 1e-3f;
    /// <summary>The cosine schedule ends at LearningRate · MinLrRatio.</summary>
    public float MinLrRatio { get; init; } = 0.1f;
    public float WeightDecay { get; init; } = 0.1f;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    public float Epsilon { get; init; } = 1e-8f;
    /// <summary>Clip the global gradient norm to this (0 = off).</summary>
    public float GradClip { get; init; } = 1.0f;
    public ulong Seed { get; init; } = 1234;
    public int Threads { get; init; } = 2;
    /// <summary>LongLoRA's S2-Attn group size for language-model training (<see cref="LlamaTrainingModel.S2Group"/>);
    /// 0 = full attention.</summary>
    public int S2Group { get; init; }

    /// <summary>Throws a <see cref="CriaException"/> naming the first bad setting.</summary>
    public void Validate()
    {
        if (BatchSize <= 0 || GradAccumulation <= 0 || Steps <= 0 || WarmupSteps < 0 || Threads <= 0)
            throw new CriaException($"batch size ({BatchSize}), gradient accumulation ({GradAccumulation}), steps ({Steps}) and threads ({Threads}) must be positive, warm-up ({WarmupSteps}) ≥ 0");
        if (!(LearningRate > 0) || !float.IsFinite(LearningRate)) throw new CriaException($"learning rate must be positive, got {LearningRate}");
        if (!(MinLrRatio >= 0 && MinLrRatio <= 1)) throw new CriaException($"min-lr ratio must be in [0, 1], got {MinLrRatio}");
        if (!(WeightDecay >= 0) || !(GradClip >= 0)) throw new CriaException($"weight decay ({WeightDecay}) and gradient clip ({GradClip}) must be ≥ 0");
        if (!(Beta1 >= 0 && Beta1 < 1) || !(Beta2 >= 0 && Beta2 < 1)) throw new CriaException($"AdamW betas must be in [0, 1), got {Beta1}, {Beta2}");
    }

    /// <summary>Linear warm-up to the peak, then cosine decay to LearningRate · MinLrRatio at <see cref="Steps"/>.</summary>
    public float LearningRateAt(int step)
    {
        if (step < WarmupSteps) return LearningRate * (step + 1) / WarmupSteps;
        float progress = Steps <= WarmupSteps ? 1f : Math.Min(1f, (float)(step - WarmupSteps) / (Steps - WarmupSteps));
        float min = LearningRate * MinLrRatio;
        return min + 0.5f * (LearningRate - min) * (1f + MathF.Cos(MathF.PI * progress));
    }
}

public readonly record struct StepResult(int Step, float Loss, float GradNorm, float LearningRate, long TokensSeen);

/// <summary>
/// The training loop: samples micro-batches from a token stream (each sequence starts with BOS, like a
/// llama-perplexity chunk), accumulates gradients, clips their global norm, and applies AdamW (weight decay on
/// matrices only). Everything random comes from one <see cref="TrainingRng"/> whose state is checkpointed, so a
/// resumed run continues bit-exactly.
/// </summary>
public sealed partial class Trainer : IDisposable
{
    public LlamaTrainingModel Model { get; }
    public TrainingOptions Options { get; }
    public int Step { get; private set; }
    public long TokensSeen { get; private set; }
    readonly float[] _m, _v;
    readonly int[] _data;
    readonly int _bos;
    TrainingRng _rng;

    /// <summary>A synthetic training document (tokens without BOS, at most maxTokens) drawn with the trainer's RNG.</summary>
    public delegate SyntheticDocument DocumentSource(ref TrainingRng rng, int maxTokens);

    /// <summary>Optional synthetic documents mixed into the batches: a row is, with probability
    /// <see cref="DocumentFraction"/>, BOS + one document, continued by corpus text from a random offset when the document
    /// is shorter than the row. Null (the default) leaves the sampling, and its RNG stream, as without it.</summary>
    public DocumentSource? Documents { get; init; }
    public double DocumentFraction { get; init; }
    /// <summary>Loss weight of a document's answer targets (<see cref="SyntheticDocument.AnswerStart"/>, …); every other
    /// target weighs 1. The step's gradient is the weighted mean, so a weight W gives the answer W times the pull of a
    /// filler token (Mohtashami &amp; Jaggi's answer is 6 tokens of a few hundred).</summary>
    public float AnswerWeight { get; init; } = 1f;
    /// <summary>Fraction of rows that are repeated random sequences (<see cref="RepeatRows"/>): the first period masked
    /// out, every later token predictable only by copying (the induction-head signal). 0 (the default) draws nothing.</summary>
    public double RepeatFraction { get; init; }
    /// <summary>The tokens repeat rows are drawn from (required when <see cref="RepeatFraction"/> &gt; 0).</summary>
    public int[]? RepeatAlphabet { get; init; }

    /// <param name="parameters">An imported model's parameters (<see cref="GgufImport.Imported.Parameters"/>) for the
    /// model to adopt and train in place instead of a copy (<see cref="SetParameters"/>); the random numbers of the
    /// initialisation are drawn all the same. Null: freshly initialised parameters.</param>
    public Trainer(LlamaShape shape, TrainingOptions options, int[] trainTokens, int bos, int? seqLen = null, LoraOptions? lora = null,
        ClassifierOptions? classifier = null, (int KvLayers, int Group)? swiftKv = null, FrozenBase? frozenBase = null,
        float[]? parameters = null)
    {
        Options = options;
        options.Validate();
        int T = seqLen ?? shape.ContextLength;
        // An empty corpus makes a trainer for preference steps only (PreferenceStep brings its own pairs).
        if (trainTokens.Length > 0 && trainTokens.Length < T + 1) throw new CriaException($"the corpus has {trainTokens.Length} tokens, fewer than one sequence of {T + 1}");
        Model = new LlamaTrainingModel(shape, options.BatchSize, T, options.Threads, lora, classifier, swiftKv, frozenBase, parameters) { S2Group = options.S2Group };
        _data = trainTokens;
        _bos = bos;
        _m = new float[TrainedCount];
        _v = new float[TrainedCount];
        _rng = new TrainingRng(options.Seed);
        Model.Initialize(ref _rng);
        Model.Lora?.Initialize(Model.LoraParameters, ref _rng);
    }

    // What the optimizer updates: the model's parameters, or with LoRA only the adapters', or in SwiftKV distillation
    // only the SwiftKV projections.
    float[] TrainedParameters => Model.Lora != null ? Model.LoraParameters : Model.SwiftKv != null ? Model.SwiftKvParameters : Model.Parameters;
    float[] TrainedGradients => Model.Lora != null ? Model.LoraGradients : Model.SwiftKv != null ? Model.SwiftKvGradients : Model.Gradients;
    ParameterTensor[] TrainedTensors => Model.Lora?.Tensors ?? Model.SwiftKv?.Tensors ?? Model.Layout.Tensors;
    long TrainedCount => Model.Lora?.Count ?? Model.SwiftKv?.Count ?? Model.Layout.Count;
    string ShapeText => Describe(Model.Shape, Model.Lora?.Options, Model.Frozen);

    /// <summary>What a checkpoint records as the model it trains: the shape, the LoRA settings when only adapters train,
    /// and how a compressed frozen base is stored (its parameters then lack the projections).</summary>
    public static string Describe(LlamaShape shape, LoraOptions? lora, FrozenBase? frozen = null) =>
        (lora is { } l ? FormattableString.Invariant($"{shape} lora r={l.Rank} alpha={l.Alpha} targets={l.Targets}{(l.RsLora ? " rslora" : "")}") : shape.ToString())
        + (frozen != null ? $" base {frozen.Kind}" : "");

    /// <summary>One optimizer step over GradAccumulation micro-batches.</summary>
    public StepResult TrainStep()
    {
        var m = Model;
        int T = m.SeqLen, B = m.BatchSize, accum = Options.GradAccumulation;
        m.ZeroGradients();
        double loss = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            FillBatch();
            float weights = 0;
            foreach (float w in m.LossWeights) weights += w;
            loss += m.ForwardBackward(weights > 0 ? 1f / (weights * accum) : 0f);
        }
        var (norm, lr) = OptimizerStep();
        return new StepResult(Step, (float)(loss / accum), norm, lr, TokensSeen);
    }

    /// <summary>One SwiftKV distillation step (<see cref="LlamaTrainingModel.DistillForwardBackward"/>) over
    /// GradAccumulation micro-batches of corpus text; the loss reported is the mean τ²·KL per token.</summary>
    public StepResult DistillStep(float temperature)
    {
        var m = Model;
        if (m.SwiftKv == null) throw new InvalidOperationException("this trainer does not distil a SwiftKV model");
        int accum = Options.GradAccumulation;
        m.ZeroGradients();
        double loss = 0;
        for (int a = 0; a < accum; a++)
        {
            FillBatch();
            loss += m.DistillForwardBackward(temperature, 1f / (m.Rows * accum));
        }
        var (norm, lr) = OptimizerStep();
        return new StepResult(Step, (float)(loss / accum), norm, lr, TokensSeen);
    }

    /// <summary>With LoRA dropout (<see cref="LoraOptions.Dropout"/>), keys the masks of micro-batch
    /// <paramref name="micro"/> of this step: a function of the seed, the step and the micro-batch, so a resumed run
    /// draws the masks the uninterrupted one would have. Nothing without dropout.</summary>
    void DropoutMasks(int micro)
    {
        if (Model.Lora is { Options.Dropout: > 0 })
            Model.LoraDropoutKey = TrainingRng.At(Options.Seed ^ 0x4C6F526144726F70UL, ((long)Step << 16) + micro);
    }

    /// <summary>After the step's micro-batches: clips the summed gradients' global norm, applies AdamW at this step's
    /// learning rate and counts the step and its tokens. Returns the norm before clipping and the learning rate.</summary>
    (float Norm, float Lr) OptimizerStep()
    {
        Model.LoraDropoutKey = null; // the step's forwards are done: what runs between steps (evaluation) never drops
        float norm = GradientNorm();
        float clip = Options.GradClip > 0 && norm > Options.GradClip ? Options.GradClip / norm : 1f;
        float lr = Options.LearningRateAt(Step);
        AdamW(lr, clip);
        Step++;
        TokensSeen += (long)Model.Rows * Options.GradAccumulation;
        return (norm, lr);
    }

    /// <summary>Draws the next micro-batch into the model's tokens, targets and loss weights (all from the trainer's RNG).</summary>
    public void FillBatch()
    {
        if (_data.Length == 0) throw new CriaException("this trainer was made without a corpus: it takes preference steps only");
        var m = Model;
        int T = m.SeqLen, B = m.BatchSize;
        var tokens = m.Tokens; var targets = m.Targets; var weights = m.LossWeights;
        weights.Fill(1f);
        for (int b = 0; b < B; b++)
        {
            if (Documents != null || RepeatFraction > 0)
            {
                double u = _rng.NextDouble();
                if (u < RepeatFraction)
                {
                    RepeatRows.Fill(tokens.Slice(b * T, T), targets.Slice(b * T, T), weights.Slice(b * T, T), ref _rng, _bos,
                        RepeatAlphabet ?? throw new CriaException("repeat rows need an alphabet"));
                    continue;
                }
                if (Documents != null && u < RepeatFraction + DocumentFraction)
                {
                    var doc = Documents(ref _rng, T);
                    int at = _rng.Next(_data.Length - T + 1);
                    FillDocument(tokens.Slice(b * T, T), targets.Slice(b * T, T), doc.Tokens, _data, at, _bos);
                    int end = Math.Min(T, doc.AnswerStart + doc.AnswerLength);
                    if (doc.AnswerStart < end) weights.Slice(b * T + doc.AnswerStart, end - doc.AnswerStart).Fill(AnswerWeight);
                    continue;
                }
            }
            int off = _rng.Next(_data.Length - T + 1);
            FillSequence(tokens.Slice(b * T, T), targets.Slice(b * T, T), _data, off, _bos);
        }
    }

    /// <summary>tokens = [BOS, d[off], …, d[off+T−2]], targets = [d[off], …, d[off+T−1]].</summary>
    public static void FillSequence(Span<int> tokens, Span<int> targets, int[] data, int off, int bos)
    {
        int T = tokens.Length;
        tokens[0] = bos;
        data.AsSpan(off, T - 1).CopyTo(tokens[1..]);
        data.AsSpan(off, T).CopyTo(targets);
    }

    /// <summary>s = doc ++ data[off…] (doc cut to the row): tokens = [BOS, s[0], …, s[T−2]], targets = [s[0], …, s[T−1]].</summary>
    public static void FillDocument(Span<int> tokens, Span<int> targets, int[] doc, int[] data, int off, int bos)
    {
        int T = tokens.Length;
        int n = Math.Min(doc.Length, T);
        doc.AsSpan(0, n).CopyTo(targets);
        data.AsSpan(off, T - n).CopyTo(targets[n..]);
        tokens[0] = bos;
        targets[..^1].CopyTo(tokens[1..]);
    }

    /// <summary>Replaces the (freshly initialised) parameters with <paramref name="parameters"/>, e.g. an imported model's
    /// (<see cref="GgufImport"/>); only before the first step, so the AdamW moments are still zero.</summary>
    public void SetParameters(ReadOnlySpan<float> parameters)
    {
        if (Step != 0) throw new CriaException($"parameters can only be set before the first step (the trainer is at step {Step})");
        if (parameters.Length != Model.Layout.Count) throw new CriaException($"{parameters.Length} parameters given, the model has {Model.Layout.Count}");
        parameters.CopyTo(Model.Parameters);
    }

    float GradientNorm()
    {
        var g = TrainedGradients;
        double sum = 0;
        foreach (var t in TrainedTensors)
        {
            var s = g.AsSpan((int)t.Offset, (int)t.Count);
            double part = 0;
            for (int i = 0; i < s.Length; i++) part += (double)s[i] * s[i];
            sum += part;
        }
        return (float)Math.Sqrt(sum);
    }

    /// <summary>AdamW on every trained tensor: weight decay on matrices only.</summary>
    void AdamW(float lr, float gradScale)
    {
        var o = Options;
        var p = TrainedParameters; var g = TrainedGradients;
        foreach (var ten in TrainedTensors)
        {
            int at = (int)ten.Offset, n = (int)ten.Count;
            AdamWUpdate(p.AsSpan(at, n), g.AsSpan(at, n), _m.AsSpan(at, n), _v.AsSpan(at, n), Step + 1, lr, gradScale,
                ten.IsMatrix ? o.WeightDecay : 0f, o.Beta1, o.Beta2, o.Epsilon);
        }
    }

    /// <summary>
    /// One AdamW update (Loshchilov &amp; Hutter) of parameters <paramref name="p"/> at step <paramref name="t"/> (from 1):
    /// the gradient is <paramref name="g"/> · <paramref name="gradScale"/>, the moments <paramref name="m"/> and
    /// <paramref name="v"/> are bias-corrected, and the weight decay is decoupled: p −= lr·(m̂ / (√v̂ + ε) + decay·p).
    /// </summary>
    public static void AdamWUpdate(Span<float> p, ReadOnlySpan<float> g, Span<float> m, Span<float> v, int t, float lr, float gradScale,
        float decay, float b1, float b2, float eps)
    {
        float c1 = 1f / (1f - MathF.Pow(b1, t)), c2 = 1f / (1f - MathF.Pow(b2, t));
        for (int i = 0; i < p.Length; i++)
        {
            float gi = g[i] * gradScale;
            float mi = m[i] = b1 * m[i] + (1 - b1) * gi;
            float vi = v[i] = b2 * v[i] + (1 - b2) * gi * gi;
            p[i] -= lr * (mi * c1 / (MathF.Sqrt(vi * c2) + eps) + decay * p[i]);
        }
    }

    /// <summary>
    /// Mean cross-entropy over non-overlapping sequences of the model's length taken from <paramref name="tokens"/>
    /// (each starting with BOS), at most <paramref name="maxBatches"/> batches.
    /// </summary>
    public float Evaluate(int[] tokens, int maxBatches = int.MaxValue)
    {
        var m = Model;
        int T = m.SeqLen, B = m.BatchSize;
        int sequences = tokens.Length / T;
        int batches = Math.Min(maxBatches, sequences / B);
        if (batches == 0) throw new CriaException($"the evaluation text has {tokens.Length} tokens, fewer than one batch of {B} × {T}");
        double sum = 0;
        for (int bi = 0; bi < batches; bi++)
        {
            for (int b = 0; b < B; b++)
                FillSequence(m.Tokens.Slice(b * T, T), m.Targets.Slice(b * T, T), tokens, (bi * B + b) * T, _bos);
            m.Forward();
            sum += m.Loss();
        }
        return (float)(sum / batches);
    }

    // ================================================================= checkpoints
    const string Magic = "CRIACKP1";
    const int FloatsPerChunk = 1 << 26; // 256 MiB per write or read

    /// <summary>Writes parameters, AdamW moments, step, token count and RNG state atomically (temp file, then rename).</summary>
    public void SaveCheckpoint(string path, ulong tokenizerHash)
    {
        string full = Path.GetFullPath(path);
        string tmp = full + ".tmp-" + Environment.ProcessId;
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        using (var w = new BinaryWriter(fs, Encoding.UTF8, leaveOpen: true))
        {
            w.Write(Encoding.ASCII.GetBytes(Magic));
            w.Write(ShapeText);
            w.Write(tokenizerHash);
            w.Write(Step); w.Write(TokensSeen); w.Write(_rng.State);
            w.Write(Model.Layout.Count);
            foreach (var a in new[] { Model.Parameters, Model.LoraParameters, _m, _v })
                for (int i = 0; i < a.Length; i += FloatsPerChunk) // a span of more than 2 GiB of bytes does not exist
                    w.Write(MemoryMarshal.AsBytes(a.AsSpan(i, Math.Min(FloatsPerChunk, a.Length - i))));
            w.Flush();
            fs.Flush(flushToDisk: true);
        }
        File.Move(tmp, full, overwrite: true);
    }

    /// <summary>Describes a checkpoint without loading it: (shape description, tokenizer hash, step).</summary>
    public static (string Shape, ulong TokenizerHash, int Step) PeekCheckpoint(string path)
    {
        try
        {
            using var fs = File.OpenRead(path);
            using var r = new BinaryReader(fs, Encoding.UTF8);
            if (Encoding.ASCII.GetString(r.ReadBytes(Magic.Length)) != Magic) throw new CriaException($"{path} is not a Cria training checkpoint");
            return (r.ReadString(), r.ReadUInt64(), r.ReadInt32());
        }
        catch (EndOfStreamException) { throw new CriaException($"{path} is a truncated checkpoint"); }
    }

    /// <summary>Restores a checkpoint written by <see cref="SaveCheckpoint"/> for this same shape and tokenizer.</summary>
    public void LoadCheckpoint(string path, ulong tokenizerHash)
    {
        using var fs = File.OpenRead(path);
        using var r = new BinaryReader(fs, Encoding.UTF8);
        try
        {
            if (Encoding.ASCII.GetString(r.ReadBytes(Magic.Length)) != Magic) throw new CriaException($"{path} is not a Cria training checkpoint");
            string shape = r.ReadString();
            if (shape != ShapeText)
                throw new CriaException($"checkpoint {path} is from another model ({shape}); this run trains ({ShapeText})");
            if (r.ReadUInt64() != tokenizerHash) throw new CriaException($"checkpoint {path} was trained with another tokenizer");
            int step = r.ReadInt32(); long seen = r.ReadInt64(); ulong state = r.ReadUInt64();
            if (r.ReadInt64() != Model.Layout.Count) throw new CriaException($"checkpoint {path} has another parameter count");
            long need = (Model.Layout.Count + Model.LoraParameters.Length + 2 * TrainedCount) * sizeof(float);
            if (fs.Length - fs.Position != need) throw new CriaException($"checkpoint {path} is truncated or has extra bytes");
            foreach (var a in new[] { Model.Parameters, Model.LoraParameters, _m, _v })
                for (int i = 0; i < a.Length; i += FloatsPerChunk)
                    fs.ReadExactly(MemoryMarshal.AsBytes(a.AsSpan(i, Math.Min(FloatsPerChunk, a.Length - i))));
            Step = step; TokensSeen = seen; _rng.State = state;
        }
        catch (EndOfStreamException) { throw new CriaException($"{path} is a truncated checkpoint"); }
    }

    public void Dispose() => Model.Dispose();
}
