namespace Cria.Training;

/// <summary>
/// Activation Beacon's trainable plug-in (Zhang et al. 2024, "Soaring from 4K to 400K: Extending LLM's Context with
/// Activation Beacon"): per layer, the beacon tokens' own attention projections (attn_q/k/v/output_beacon, initialised
/// from the base's), and one embedding row for the beacon token. The base model stays frozen; the feed-forward and the
/// norms are shared.
/// </summary>
public sealed class BeaconLayout
{
    public ParameterTensor[] Tensors { get; }
    public long Count { get; }
    public long Embed { get; }    // [D] the beacon token's input embedding
    public long[] Wq { get; }     // [layer] → [QD, D]
    public long[] Wk { get; }     // [layer] → [KV, D]
    public long[] Wv { get; }     // [layer] → [KV, D]
    public long[] Wo { get; }     // [layer] → [D, QD]
    /// <summary>With the paper's "mlp" beacon parameters: the beacons' own up and down projections (the gate is shared);
    /// null otherwise.</summary>
    public long[]? Up { get; }    // [layer] → [F, D]
    public long[]? Down { get; }  // [layer] → [D, F]

    public const string EmbedName = "token_embd_beacon.weight";
    public static string Name(int layer, int target) => $"blk.{layer}.{Targets[target]}_beacon.weight";
    static readonly string[] Targets = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_down"];

    public BeaconLayout(LlamaShape s, bool mlp = false)
    {
        var packer = new TensorPacker();
        var Add = packer.Add;
        Embed = Add(EmbedName, 1, s.Dim, false);
        Wq = new long[s.Layers]; Wk = new long[s.Layers]; Wv = new long[s.Layers]; Wo = new long[s.Layers];
        for (int l = 0; l < s.Layers; l++)
        {
            Wq[l] = Add(Name(l, 0), s.Dim, s.Dim, true);
            Wk[l] = Add(Name(l, 1), s.KvDim, s.Dim, true);
            Wv[l] = Add(Name(l, 2), s.KvDim, s.Dim, true);
            Wo[l] = Add(Name(l, 3), s.Dim, s.Dim, true);
        }
        if (mlp)
        {
            Up = new long[s.Layers]; Down = new long[s.Layers];
            for (int l = 0; l < s.Layers; l++) { Up[l] = Add(Name(l, 4), s.FfnDim, s.Dim, true); Down[l] = Add(Name(l, 5), s.Dim, s.FfnDim, true); }
        }
        Tensors = packer.Tensors;
        Count = packer.Count;
    }

    /// <summary>The paper's initialisation: each beacon projection a copy of the base's, and the beacon embedding the
    /// BOS token's.</summary>
    public void InitializeFrom(ParameterLayout layout, ReadOnlySpan<float> baseParameters, Span<float> beacon, int bos)
    {
        int D = layout.Shape.Dim;
        baseParameters.Slice((int)(layout.TokenEmbedding + (long)bos * D), D).CopyTo(beacon.Slice((int)Embed, D));
        int KV = layout.Shape.KvDim;
        for (int l = 0; l < Wq.Length; l++)
        {
            var o = layout.Blocks[l];
            baseParameters.Slice((int)o.Wq, D * D).CopyTo(beacon.Slice((int)Wq[l], D * D));
            baseParameters.Slice((int)o.Wk, KV * D).CopyTo(beacon.Slice((int)Wk[l], KV * D));
            baseParameters.Slice((int)o.Wv, KV * D).CopyTo(beacon.Slice((int)Wv[l], KV * D));
            baseParameters.Slice((int)o.Wo, D * D).CopyTo(beacon.Slice((int)Wo[l], D * D));
            if (Up == null) continue;
            int F = layout.Shape.FfnDim;
            baseParameters.Slice((int)o.WUp, F * D).CopyTo(beacon.Slice((int)Up[l], F * D));
            baseParameters.Slice((int)o.WDown, D * F).CopyTo(beacon.Slice((int)Down![l], D * F));
        }
    }
}

/// <summary>
/// How a text of T raw tokens runs with Activation Beacon, as rows of one extended sequence (the layout the trainer
/// computes at once, and the streaming engine step by step). The text is cut into windows of W raw tokens; every full
/// window except the last is followed by k = W/α beacon rows (α its condensing ratio). While window c is processed, its
/// rows attend to the memory — the beacons of windows 0…c−1, whose keys and values are all that is kept of them — and
/// to the window itself:
/// <list type="bullet">
/// <item>raw token r of the window: memory + raw tokens 0…r (causal);</item>
/// <item>beacon j (0-based): memory + raw tokens 0…(j+1)α−1 ("step-expansion") + beacons 0…j.</item>
/// </list>
/// Positions are places in that attended sequence, as the engine's cache holds it: memory beacon i at i, raw token r of
/// window c at M_c + r, beacon j at M_c + W + j (M_c = beacons before window c). So a memory beacon's key is rotated by
/// its memory position when later windows read it, not by the position it had while its own window ran.
/// <para>
/// Keys live in a key space of <see cref="Rows"/> + <see cref="MaxBeacons"/> rows per sequence: rows 0…Rows−1 are the
/// extended sequence's own (rotated by <see cref="Position"/>), row Rows + i the memory copy of beacon i (rotated by i).
/// Each row's keys are three ranges of that space (<see cref="Ranges"/>): the memory, then one or two runs of its window.
/// Rows past <see cref="UsedRows"/> are padding (a plan with larger ratios has fewer rows than the capacity): each
/// attends to itself only and weighs nothing.
/// </para>
/// </summary>
public sealed class BeaconPlan
{
    public const int Pad = int.MinValue;
    public int Window { get; }
    public int RawTokens { get; }
    /// <summary>Capacity: rows of the extended sequence including padding.</summary>
    public int Rows { get; }
    public int MaxBeacons => Rows - RawTokens;
    public int KeySpace => Rows + MaxBeacons;
    public int UsedRows { get; }
    public int Beacons { get; }
    /// <summary>[windows] condensing ratio of each window (0: no beacons, as the last window).</summary>
    public int[] Ratios { get; }
    /// <summary>[Rows] raw token index (≥ 0), beacon i as −1 − i, or <see cref="Pad"/>.</summary>
    public int[] Kind { get; }
    /// <summary>[Rows] rotary position of each row.</summary>
    public int[] Position { get; }
    /// <summary>[Rows, 6] key-space ranges [r0, r1) [r2, r3) [r4, r5) of each row.</summary>
    public int[] Ranges { get; }
    /// <summary>[Beacons] the row of beacon i.</summary>
    public int[] BeaconRows { get; }

    /// <summary>Rows needed for T raw tokens when every window but the last condenses at ratio <paramref name="minRatio"/>.</summary>
    public static int RowsFor(int rawTokens, int window, int minRatio)
    {
        int windows = (rawTokens + window - 1) / window;
        return rawTokens + (windows - 1) * (window / minRatio);
    }

    public BeaconPlan(int rawTokens, int window, ReadOnlySpan<int> ratios, int rows = 0)
    {
        if (window < 1 || rawTokens < 1) throw new CriaException($"beacon plan: window {window} and text length {rawTokens} must be positive");
        int windows = (rawTokens + window - 1) / window;
        if (ratios.Length != windows) throw new CriaException($"beacon plan: {ratios.Length} ratios for {windows} windows");
        Window = window; RawTokens = rawTokens;
        Ratios = ratios.ToArray();
        int beacons = 0;
        for (int c = 0; c < windows; c++)
        {
            int a = Ratios[c];
            bool full = (c + 1) * window <= rawTokens;
            if (a == 0) continue;
            if (c == windows - 1 || !full) throw new CriaException($"beacon plan: window {c} cannot condense (only full windows before the last do)");
            if (a < 1 || window % a != 0) throw new CriaException($"beacon plan: condensing ratio {a} must divide the window {window}");
            beacons += window / a;
        }
        UsedRows = rawTokens + beacons;
        Rows = rows == 0 ? UsedRows : rows;
        if (Rows < UsedRows) throw new CriaException($"beacon plan: {UsedRows} rows do not fit a capacity of {Rows}");
        Beacons = beacons;
        Kind = new int[Rows]; Position = new int[Rows]; Ranges = new int[Rows * 6]; BeaconRows = new int[beacons];
        int row = 0, memory = 0;
        for (int c = 0; c < windows; c++)
        {
            int first = c * window, n = Math.Min(window, rawTokens - first), start = row;
            int mem0 = Rows, mem1 = Rows + memory; // the memory's keys: copies of beacons 0…memory−1
            for (int r = 0; r < n; r++, row++)
            {
                Kind[row] = first + r;
                Position[row] = memory + r;
                Set(row, mem0, mem1, start, row + 1, 0, 0);
            }
            int a = Ratios[c];
            if (a == 0) continue;
            int k = window / a, b0 = row;
            for (int j = 0; j < k; j++, row++)
            {
                BeaconRows[memory + j] = row;
                Kind[row] = -1 - (memory + j);
                Position[row] = memory + window + j;
                Set(row, mem0, mem1, start, start + (j + 1) * a, b0, row + 1);
            }
            memory += k;
        }
        for (; row < Rows; row++) { Kind[row] = Pad; Set(row, row, row + 1, 0, 0, 0, 0); }
    }

    void Set(int row, int a0, int a1, int b0, int b1, int c0, int c1)
    {
        var r = Ranges.AsSpan(row * 6, 6);
        r[0] = a0; r[1] = a1; r[2] = b0; r[3] = b1; r[4] = c0; r[5] = c1;
    }
}

/// <summary>Settings of <see cref="BeaconTrainer"/>.</summary>
public sealed record BeaconOptions
{
    /// <summary>W: raw tokens per window (the paper's beacon window).</summary>
    public int Window { get; init; } = 128;
    /// <summary>Condensing ratios α drawn per window during training (the paper samples from {2, 4, 8, 16, 32, …}).</summary>
    public int[] Ratios { get; init; } = [4, 8, 16];
    /// <summary>Raw tokens per training sequence (several windows: the later ones learn to read the earlier ones' beacons).</summary>
    public int SeqLen { get; init; } = 1024;
    /// <summary>Fraction of sequences that are synthetic pass-key documents (<see cref="PasskeyDocuments"/>, continued by
    /// corpus text): the needle sits in an early window and the answer must come through the beacons.</summary>
    public double PasskeyFraction { get; init; }
    /// <summary>Loss weight of a pass-key document's answer tokens.</summary>
    public float AnswerWeight { get; init; } = 1f;
    /// <summary>Shortest pass-key document in tokens.</summary>
    public int PasskeyMinLength { get; init; } = 256;
    /// <summary>The paper's "mlp" beacon parameters: beacons also get their own up and down projections.</summary>
    public bool Mlp { get; init; }

    public void Validate()
    {
        if (Window < 2) throw new CriaException($"beacon window {Window} must be at least 2");
        if (Ratios.Length == 0) throw new CriaException("give at least one condensing ratio");
        foreach (int a in Ratios)
            if (a < 1 || Window % a != 0) throw new CriaException($"condensing ratio {a} must divide the beacon window {Window}");
        if (SeqLen <= Window) throw new CriaException($"beacon training sequences of {SeqLen} tokens need more than one window of {Window}");
        if (!(PasskeyFraction >= 0 && PasskeyFraction <= 1)) throw new CriaException($"the pass-key fraction must be in [0, 1], got {PasskeyFraction}");
        if (!(AnswerWeight >= 0) || !float.IsFinite(AnswerWeight)) throw new CriaException($"the answer weight must be a finite number ≥ 0, got {AnswerWeight}");
        if (PasskeyFraction > 0 && (PasskeyMinLength < 32 || PasskeyMinLength > SeqLen)) throw new CriaException($"the shortest pass-key document ({PasskeyMinLength}) must be in 32..{SeqLen}");
    }
}

/// <summary>
/// Trains Activation Beacon's parameters on a frozen base (<see cref="BeaconLayout"/>): each sequence of T raw tokens
/// runs as one <see cref="BeaconPlan"/> whose windows each draw a condensing ratio (the paper's "step-random" mix, the
/// same draw for the micro-batch), and the loss is the next-token cross-entropy of the raw tokens of every window but
/// the first (the first window sees no memory, so its loss does not depend on the beacons). AdamW as
/// <see cref="Trainer"/>, on the beacon parameters only.
/// </summary>
public sealed class BeaconTrainer : IDisposable
{
    public LlamaTrainingModel Model { get; }
    public TrainingOptions Options { get; }
    public BeaconOptions Beacon { get; }
    public int Step { get; private set; }
    readonly int[] _data;
    readonly int _bos;
    readonly float[] _m, _v;
    readonly int[] _ratios;
    readonly int[] _rawTokens, _rawTargets; // [B, T] the micro-batch's text before the plan spreads it over rows
    readonly float[] _rawWeights;           // [B, T]
    TrainingRng _rng;
    /// <summary>Pass-key documents mixed in (<see cref="BeaconOptions.PasskeyFraction"/>); null draws corpus text only.</summary>
    public PasskeyDocuments? Passkeys { get; init; }

    public BeaconTrainer(LlamaShape shape, float[] baseParameters, int[] data, int bos, TrainingOptions options, BeaconOptions beacon)
    {
        options.Validate(); beacon.Validate();
        Options = options; Beacon = beacon;
        int T = beacon.SeqLen;
        if (data.Length < T + 1) throw new CriaException($"the corpus has {data.Length} tokens, fewer than one sequence of {T + 1}");
        int windows = (T + beacon.Window - 1) / beacon.Window;
        _ratios = new int[windows];
        int rows = BeaconPlan.RowsFor(T, beacon.Window, beacon.Ratios.Min());
        Model = new LlamaTrainingModel(shape, options.BatchSize, rows, options.Threads, parameters: baseParameters,
            beacon: new BeaconPlan(T, beacon.Window, _ratios, rows), beaconMlp: beacon.Mlp);
        Model.Beacon!.InitializeFrom(Model.Layout, baseParameters, Model.BeaconParameters, bos);
        _data = data; _bos = bos;
        _m = new float[Model.Beacon.Count]; _v = new float[Model.Beacon.Count];
        _rawTokens = new int[options.BatchSize * T]; _rawTargets = new int[options.BatchSize * T]; _rawWeights = new float[options.BatchSize * T];
        _rng = new TrainingRng(options.Seed);
    }

    /// <summary>Fills the micro-batch from <paramref name="data"/>: sequence b's raw token r is data[off_b + r − 1] (BOS first) with target
    /// data[off_b + r]; beacon and padding rows weigh 0, and so do the first window's tokens.</summary>
    public void FillBatch(BeaconPlan plan, ReadOnlySpan<int> offsets, int[] data)
    {
        int T = Beacon.SeqLen;
        for (int b = 0; b < Model.BatchSize; b++)
        {
            Trainer.FillSequence(_rawTokens.AsSpan(b * T, T), _rawTargets.AsSpan(b * T, T), data, offsets[b], _bos);
            _rawWeights.AsSpan(b * T, T).Fill(1f);
        }
        Spread(plan);
    }

    /// <summary>The raw text of the micro-batch over the plan's rows (beacon, padding and first-window rows weigh 0).</summary>
    void Spread(BeaconPlan plan)
    {
        var m = Model;
        int rows = m.SeqLen, T = Beacon.SeqLen;
        var tokens = m.Tokens; var targets = m.Targets; var weights = m.LossWeights;
        for (int b = 0; b < m.BatchSize; b++)
            for (int row = 0; row < rows; row++)
            {
                int n = b * rows + row, r = plan.Kind[row];
                if (r < 0) { tokens[n] = 0; targets[n] = 0; weights[n] = 0; continue; }
                tokens[n] = _rawTokens[b * T + r];
                targets[n] = _rawTargets[b * T + r];
                weights[n] = r >= plan.Window ? _rawWeights[b * T + r] : 0f;
            }
    }

    /// <summary>A plan with a ratio drawn for each window but the last.</summary>
    public BeaconPlan DrawPlan()
    {
        for (int c = 0; c < _ratios.Length; c++)
            _ratios[c] = c == _ratios.Length - 1 ? 0 : Beacon.Ratios[_rng.Next(Beacon.Ratios.Length)];
        return new BeaconPlan(Beacon.SeqLen, Beacon.Window, _ratios, Model.SeqLen);
    }

    public StepResult TrainStep()
    {
        var m = Model;
        var o = Options;
        m.ZeroGradients();
        double loss = 0;
        Span<int> offsets = stackalloc int[m.BatchSize];
        for (int a = 0; a < o.GradAccumulation; a++)
        {
            var plan = DrawPlan();
            m.SetBeaconPlan(plan);
            int T = Beacon.SeqLen;
            for (int b = 0; b < m.BatchSize; b++)
            {
                var tokens = _rawTokens.AsSpan(b * T, T); var targets = _rawTargets.AsSpan(b * T, T); var rawWeights = _rawWeights.AsSpan(b * T, T);
                rawWeights.Fill(1f);
                if (Passkeys != null && _rng.NextDouble() < Beacon.PasskeyFraction)
                {
                    var doc = Passkeys.Next(ref _rng, T);
                    Trainer.FillDocument(tokens, targets, doc.Tokens, _data, _rng.Next(_data.Length - T + 1), _bos);
                    int end = Math.Min(T, doc.AnswerStart + doc.AnswerLength);
                    if (doc.AnswerStart < end) rawWeights.Slice(doc.AnswerStart, end - doc.AnswerStart).Fill(Beacon.AnswerWeight);
                }
                else Trainer.FillSequence(tokens, targets, _data, _rng.Next(_data.Length - T), _bos);
            }
            Spread(plan);
            float weights = 0;
            foreach (float w in m.LossWeights) weights += w;
            loss += m.ForwardBackward(weights > 0 ? 1f / (weights * o.GradAccumulation) : 0f);
        }
        var g = m.BeaconGradients; var p = m.BeaconParameters;
        double sum = 0;
        foreach (float x in g) sum += (double)x * x;
        float norm = (float)Math.Sqrt(sum);
        float clip = o.GradClip > 0 && norm > o.GradClip ? o.GradClip / norm : 1f;
        float lr = o.LearningRateAt(Step);
        foreach (var t in m.Beacon!.Tensors)
        {
            int at = (int)t.Offset, n = (int)t.Count;
            Trainer.AdamWUpdate(p.AsSpan(at, n), g.AsSpan(at, n), _m.AsSpan(at, n), _v.AsSpan(at, n), Step + 1, lr, clip,
                t.IsMatrix ? o.WeightDecay : 0f, o.Beta1, o.Beta2, o.Epsilon);
        }
        Step++;
        return new StepResult(Step, (float)(loss / o.GradAccumulation), norm, lr, (long)Step * o.GradAccumulation * m.BatchSize * Beacon.SeqLen);
    }

    /// <summary>Mean next-token cross-entropy of the raw tokens after the first window, every window condensed at
    /// <paramref name="ratio"/>, over up to <paramref name="sequences"/> consecutive sequences of <paramref name="valid"/>
    /// (no gradient).</summary>
    public double ValidLoss(int[] valid, int ratio, int sequences)
    {
        var m = Model;
        int T = Beacon.SeqLen, B = m.BatchSize;
        int count = Math.Min(sequences, valid.Length / (T + 1));
        if (count < 1) throw new CriaException($"the held-out text has {valid.Length} tokens, fewer than one sequence of {T + 1}");
        var ratios = new int[_ratios.Length];
        for (int c = 0; c < ratios.Length - 1; c++) ratios[c] = ratio;
        var plan = new BeaconPlan(T, Beacon.Window, ratios, m.SeqLen);
        m.SetBeaconPlan(plan);
        double total = 0; long n = 0;
        Span<int> offsets = stackalloc int[B];
        for (int s0 = 0; s0 < count; s0 += B)
        {
            for (int b = 0; b < B; b++) offsets[b] = Math.Min(s0 + b, count - 1) * (T + 1);
            FillBatch(plan, offsets, valid);
            m.Forward();
            for (int b = 0; b < B && s0 + b < count; b++)
                for (int row = 0; row < m.SeqLen; row++)
                {
                    int r = b * m.SeqLen + row;
                    if (m.LossWeights[r] == 0) continue;
                    total += m.TargetNll(r); n++;
                }
        }
        return total / n;
    }

    public void Dispose() => Model.Dispose();
}

/// <summary>What <see cref="BeaconTraining.Train"/> did: the step log and the held-out loss before and after.</summary>
public sealed record BeaconReport(IReadOnlyList<StepResult> Steps, double ValidLossBefore, double ValidLossAfter, int ValidRatio);

/// <summary><c>cria train-beacon</c>: Activation Beacon trained onto a llama GGUF and written beside its weights.</summary>
public static class BeaconTraining
{
    /// <summary>GGUF keys of a beacon model: the window W and the condensing ratio inference uses unless told otherwise.</summary>
    public const string WindowKey = "llama.beacon.window", RatioKey = "llama.beacon.ratio";

    /// <param name="validRatio">the ratio the held-out loss is measured at, and written as the file's default.</param>
    public static BeaconReport Train(string input, string output, string trainText, string? validText, TrainingOptions o, BeaconOptions beacon,
        int validRatio, int validSequences = 8, Action<StepResult>? log = null, bool force = false)
    {
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        beacon.Validate();
        if (validRatio < 1 || beacon.Window % validRatio != 0) throw new CriaException($"condensing ratio {validRatio} must divide the beacon window {beacon.Window}");
        var imported = GgufImport.Read(input, "train-beacon");
        if (imported.Shape.WindowLayers != null) throw new CriaException($"train-beacon: {input} has sliding-window layers (LongGen); Activation Beacon needs full attention");
        using var model = Cria.Models.LlamaModel.Open(input);
        var tok = model.Tokenizer;
        int[] data = tok.Encode(trainText, addBos: false);
        int[] valid = validText == null ? [] : tok.Encode(validText, addBos: false);
        using var trainer = new BeaconTrainer(imported.Shape, imported.Parameters, data, tok.Bos, o, beacon)
        {
            Passkeys = beacon.PasskeyFraction > 0 ? new PasskeyDocuments(tok, data, beacon.PasskeyMinLength) : null,
        };
        double before = valid.Length > 0 ? trainer.ValidLoss(valid, validRatio, validSequences) : double.NaN;
        var steps = new List<StepResult>();
        for (int i = 0; i < o.Steps; i++) { var r = trainer.TrainStep(); steps.Add(r); log?.Invoke(r); }
        double after = valid.Length > 0 ? trainer.ValidLoss(valid, validRatio, validSequences) : double.NaN;
        var m = trainer.Model;
        var meta = new Dictionary<string, object>
        {
            [WindowKey] = (uint)beacon.Window, [RatioKey] = (uint)validRatio,
            ["cria.beacon.training"] = FormattableString.Invariant($"steps {o.Steps}, batch {o.BatchSize} × {beacon.SeqLen}, window {beacon.Window}, ratios {string.Join(',', beacon.Ratios)}, lr {o.LearningRate}, seed {o.Seed}{(beacon.Mlp ? ", mlp" : "")}") + (beacon.PasskeyFraction > 0 ? FormattableString.Invariant($", pass-key fraction {beacon.PasskeyFraction} (answer weight {beacon.AnswerWeight})") : ""),
        };
        // Matrices as the input stores them (an F16 model stays F16; its weights went through F32 unchanged).
        var type = model.Layers[0].Wq.Type == Cria.Tensors.GgmlType.F16 ? Cria.Tensors.GgmlType.F16 : Cria.Tensors.GgmlType.F32;
        GgufExport.Write(output, m.Layout, m.Parameters, imported.Vocabulary, type, name: model.File.Get<string>("general.name", "cria") + "-beacon",
            extraMetadata: meta, extraTensors: (m.Beacon!.Tensors, m.BeaconParameters));
        return new BeaconReport(steps, before, after, validRatio);
    }
}
