using Cria.Inference;
using Cria.Kernels;
using Cria.Models;

namespace Cria.Training;

/// <summary>Settings of <c>cria train-locret</c> (Locret's defaults where they carry over to a small model).</summary>
public sealed record LocretOptions
{
    /// <summary>fc1's width (Locret: 1024 for 3.8B–8B models).</summary>
    public int Hidden { get; init; } = 256;
    /// <summary>Optimizer steps, one sequence each (Locret: 3,000 steps of batch 1).</summary>
    public int Steps { get; init; } = 600;
    public float LearningRate { get; init; } = 5e-4f;
    public float Beta1 { get; init; } = 0.9f;
    public float Beta2 { get; init; } = 0.95f;
    public float Epsilon { get; init; } = 1e-8f;
    /// <summary>Linear warm-up over this fraction of the steps, then linear decay to zero (Locret: 2,000 of 3,000).</summary>
    public float WarmupFraction { get; init; } = 2f / 3f;
    /// <summary>Global gradient-norm clip (Locret: 0.5).</summary>
    public float GradClip { get; init; } = 0.5f;
    /// <summary>Weight α of the smoothness term MSE(s[k], s[k−1]) (Locret: 0.0025).</summary>
    public float Alpha { get; init; } = 0.0025f;
    /// <summary>Training sequence length in tokens, BOS included (0 = the model's context).</summary>
    public int SeqLen { get; init; }
    /// <summary>In a stretch of plain text, the last this-many tokens are the "answer" whose queries define the labels.</summary>
    public int AnswerTokens { get; init; } = 32;
    /// <summary>Fraction of the sequences that are synthetic pass-key documents (<see cref="PasskeyDocuments"/>), whose
    /// answer is the key.</summary>
    public double PasskeyFraction { get; init; }
    /// <summary>Sequences the label statistics (mean, standard deviation per layer and KV head) are estimated on.</summary>
    public int StatSequences { get; init; } = 16;
    /// <summary>Held-out sequences of the final evaluation.</summary>
    public int EvalSequences { get; init; } = 32;
    public int Threads { get; init; }
    public ulong Seed { get; init; } = 1;

    public void Validate(int contextLength)
    {
        if (Hidden < 1) throw new CriaException($"train-locret: --hidden must be positive, got {Hidden}");
        if (Steps < 1) throw new CriaException($"train-locret: --steps must be positive, got {Steps}");
        if (!(LearningRate > 0) || !float.IsFinite(LearningRate)) throw new CriaException($"train-locret: --lr must be a positive number, got {LearningRate}");
        if (!(Alpha >= 0) || !float.IsFinite(Alpha)) throw new CriaException($"train-locret: --alpha must be ≥ 0, got {Alpha}");
        if (!(GradClip > 0)) throw new CriaException($"train-locret: the gradient clip must be positive, got {GradClip}");
        if (!(WarmupFraction >= 0 && WarmupFraction < 1)) throw new CriaException($"train-locret: the warm-up fraction must be in [0, 1), got {WarmupFraction}");
        if (!(PasskeyFraction >= 0 && PasskeyFraction <= 1)) throw new CriaException($"train-locret: --passkey-fraction must be in [0, 1], got {PasskeyFraction}");
        int t = SeqLen > 0 ? SeqLen : contextLength;
        if (SeqLen < 0 || t > contextLength) throw new CriaException($"train-locret: --seq {SeqLen} must be in 1..{contextLength} (the model's context)");
        if (AnswerTokens < 1 || AnswerTokens > t - 16) throw new CriaException($"train-locret: --answer-tokens {AnswerTokens} must be in 1..{t - 16} (at least 16 prompt tokens in a {t}-token sequence)");
        if (StatSequences < 1 || EvalSequences < 1) throw new CriaException("train-locret: the statistics and evaluation need at least one sequence each");
    }
}

/// <summary>One training sequence: tokens (BOS first) whose first <see cref="PromptLength"/> are the prompt, the rest
/// the answer whose queries define the labels.</summary>
public readonly record struct LocretSequence(int[] Tokens, int PromptLength);

/// <summary>Held-out quality of retaining heads: loss against the constant predictor (every label's mean), and how many
/// of each layer and KV head's top quarter of prompt tokens by label the heads put in their own top quarter (chance: 0.25).</summary>
public readonly record struct LocretEvaluation(double Loss, double ConstantLoss, double TopQuarterRecall, int Sequences);

/// <summary>Progress of one optimizer step.</summary>
public readonly record struct LocretStep(int Step, float Loss, float LearningRate, float GradNorm);

/// <summary>
/// Trains Locret's retaining heads on a frozen model (techniques.md §3). For each sequence the engine runs the model
/// once, an <see cref="IQkvObserver"/> keeps every layer's pre-RoPE q/k/v, and the labels follow from them:
/// label[l, g, k] = max over answer queries p and the query heads h of KV group g of (RoPE(q_p,h) · RoPE(k_k,g)) / √d,
/// the pre-softmax score, standardised per layer and KV head. The heads regress them:
/// SmoothL1(s, y) + α·MSE(s[k], s[k−1]) over the prompt tokens, AdamW, linear warm-up and decay, clipped gradients.
/// Only the heads train; labels and inputs come from the model as it runs, so any weight type works.
/// </summary>
public sealed unsafe class Locret : IDisposable
{
    public RetainingHeads Heads { get; }
    readonly LlamaModel _model;
    readonly ModelConfig _c;
    readonly LocretOptions _o;
    readonly int _seqLen;
    readonly WorkerPool _pool;
    readonly Gemm _gemm;
    readonly InferenceContext _context;
    readonly Capture _capture;
    readonly Batch _batch;
    // Gradients and AdamW moments per layer, shaped as the weights.
    readonly float[][] _g1, _g2, _m1, _v1, _m2, _v2;
    // Scratch of one layer over one sequence.
    float[] _z = [], _a = [], _dz = [];   // [P, Hidden] fc1 pre-activation, silu output, their gradient
    float[] _s = [], _ds = [];            // [P, KvHeads] predictions, their gradient
    readonly float[][] _labels;           // [layer][P, KvHeads] standardised labels of the current sequence
    readonly float[] _qr, _kr;            // [T, qDim], [T, kvDim] rotated copies for the labels
    int _step;

    public Locret(LlamaModel model, LocretOptions o, RetainingHeads? init = null)
    {
        _model = model; _c = model.Config; _o = o;
        RetainingHeads.CheckModel(_c);
        o.Validate(_c.ContextLength);
        _seqLen = o.SeqLen > 0 ? o.SeqLen : _c.ContextLength;
        Heads = init ?? RetainingHeads.Create(_c, o.Hidden, o.Seed);
        Heads.CheckFits(_c);
        int threads = o.Threads > 0 ? o.Threads : Environment.ProcessorCount;
        _pool = new WorkerPool(threads);
        _gemm = new Gemm(_pool);
        _context = new InferenceContext(model, new ContextOptions { ContextSize = _seqLen, MicroBatch = _seqLen, Threads = threads, Kv = KvFormat.F32 });
        _capture = new Capture(Heads, _seqLen);
        _context.QkvObserver = _capture;
        _batch = new Batch(_seqLen);
        int L = Heads.Layers;
        float[][] Like(float[][] w) => w.Select(x => new float[x.Length]).ToArray();
        _g1 = Like(Heads.W1); _m1 = Like(Heads.W1); _v1 = Like(Heads.W1);
        _g2 = Like(Heads.W2); _m2 = Like(Heads.W2); _v2 = Like(Heads.W2);
        _labels = new float[L][];
        _qr = new float[_seqLen * _c.QDim]; _kr = new float[_seqLen * _c.KvDim];
    }

    public void Dispose() { _context.Dispose(); _pool.Dispose(); }

    /// <summary>Keeps each layer's [q | k | v] rows of one sequence: X[layer] is [T, In].</summary>
    sealed class Capture(RetainingHeads h, int maxRows) : IQkvObserver
    {
        public readonly float[][] X = Enumerable.Range(0, h.Layers).Select(_ => new float[maxRows * h.In]).ToArray();
        public void Observe(int layer, ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int rows)
        {
            int n = h.In, qd = h.QDim, kd = h.KvDim;
            for (int r = 0; r < rows; r++)
            {
                var x = X[layer].AsSpan(r * n, n);
                q.Slice(r * qd, qd).CopyTo(x);
                k.Slice(r * kd, kd).CopyTo(x[qd..]);
                v.Slice(r * kd, kd).CopyTo(x[(qd + kd)..]);
            }
        }
    }

    /// <summary>Runs <paramref name="s"/> through the model, keeping every layer's q/k/v rows ([T, In] per layer).</summary>
    public float[][] Run(LocretSequence s)
    {
        if (s.Tokens.Length > _seqLen || s.PromptLength < 1 || s.PromptLength >= s.Tokens.Length)
            throw new CriaException($"train-locret: a sequence of {s.Tokens.Length} tokens with a {s.PromptLength}-token prompt does not fit (at most {_seqLen} tokens, a non-empty answer)");
        _context.Cache.Clear();
        _batch.Clear();
        for (int p = 0; p < s.Tokens.Length; p++) _batch.Add(s.Tokens[p], p, 0, p == s.Tokens.Length - 1);
        _context.Decode(_batch);
        return _capture.X;
    }

    /// <summary>
    /// The raw labels of layer <paramref name="layer"/> from its captured rows <paramref name="x"/> ([T, In]):
    /// y[k, g] = max over p in [P, T) and the query heads h of group g of RoPE(q_p,h) · RoPE(k_k,g) / √d, for k &lt; P.
    /// </summary>
    public void Labels(ReadOnlySpan<float> x, int T, int P, Span<float> y)
    {
        var c = _c;
        int n = Heads.In, qd = c.QDim, kd = c.KvDim, hd = c.HeadDim, G = c.KvHeadCount, group = c.HeadCount / G;
        Span<float> cs = stackalloc float[c.RopeDim];
        for (int r = 0; r < T; r++)
        {
            var q = _qr.AsSpan(r * qd, qd); var k = _kr.AsSpan(r * kd, kd);
            x.Slice(r * n, qd).CopyTo(q);
            x.Slice(r * n + qd, kd).CopyTo(k);
            c.RopeCache(r, cs);
            c.Rope(q, c.HeadCount, cs);
            c.Rope(k, G, cs);
        }
        float scale = 1f / MathF.Sqrt(hd);
        for (int k = 0; k < P; k++)
            for (int g = 0; g < G; g++)
            {
                var key = _kr.AsSpan(k * kd + g * hd, hd);
                float best = float.NegativeInfinity;
                for (int p = P; p < T; p++)
                    for (int h = g * group; h < (g + 1) * group; h++)
                        best = Math.Max(best, Ops.Dot(_qr.AsSpan(p * qd + h * hd, hd), key));
                y[k * G + g] = best * scale;
            }
    }

    /// <summary>Label mean and standard deviation per [layer, KV head] over <paramref name="sequences"/>, stored in the heads.</summary>
    public void EstimateStatistics(IEnumerable<LocretSequence> sequences)
    {
        int L = Heads.Layers, G = Heads.KvHeads;
        var sum = new double[L * G]; var sq = new double[L * G]; long count = 0;
        var y = new float[_seqLen * G];
        foreach (var s in sequences)
        {
            var X = Run(s);
            int P = s.PromptLength;
            for (int l = 0; l < L; l++)
            {
                Labels(X[l], s.Tokens.Length, P, y);
                for (int k = 0; k < P; k++)
                    for (int g = 0; g < G; g++) { double v = y[k * G + g]; sum[l * G + g] += v; sq[l * G + g] += v * v; }
            }
            count += P;
        }
        if (count == 0) throw new CriaException("train-locret: no sequence to estimate the label statistics on");
        for (int i = 0; i < L * G; i++)
        {
            double mean = sum[i] / count, var = Math.Max(0, sq[i] / count - mean * mean);
            Heads.LabelMean[i] = (float)mean;
            Heads.LabelStd[i] = (float)Math.Max(Math.Sqrt(var), 1e-3);
        }
    }

    /// <summary>Runs <paramref name="s"/> and fills the standardised labels of every layer ([P, KvHeads] each).</summary>
    float[][] Prepare(LocretSequence s)
    {
        var X = Run(s);
        int G = Heads.KvHeads, P = s.PromptLength;
        for (int l = 0; l < Heads.Layers; l++)
        {
            if (_labels[l] == null || _labels[l].Length < P * G) _labels[l] = new float[_seqLen * G];
            var y = _labels[l];
            Labels(X[l], s.Tokens.Length, P, y);
            for (int k = 0; k < P; k++)
                for (int g = 0; g < G; g++)
                {
                    int i = l * G + g;
                    y[k * G + g] = (y[k * G + g] - Heads.LabelMean[i]) / Heads.LabelStd[i];
                }
        }
        return X;
    }

    void Ensure(int P)
    {
        int H = Heads.Hidden, G = Heads.KvHeads;
        if (_z.Length >= P * H) return;
        _z = new float[_seqLen * H]; _a = new float[_seqLen * H]; _dz = new float[_seqLen * H];
        _s = new float[_seqLen * G]; _ds = new float[_seqLen * G];
    }

    /// <summary>
    /// Forward (and with <paramref name="backward"/> set, backward into the gradients) of layer <paramref name="layer"/>'s
    /// head over P prompt rows: Z = X·W1ᵀ [P, H], A = silu(Z), S = A·W2ᵀ [P, G];
    /// loss = mean SmoothL1(S − Y) + α · mean over k ≥ 1 of (S[k] − S[k−1])², the gradient scaled by <paramref name="weight"/>.
    /// Returns the loss; the predictions stay in <see cref="Predictions"/>.
    /// </summary>
    internal float LayerLoss(int layer, ReadOnlySpan<float> x, ReadOnlySpan<float> y, int P, bool backward, float weight = 1)
    {
        int n = Heads.In, H = Heads.Hidden, G = Heads.KvHeads;
        Ensure(P);
        var w1 = Heads.W1[layer]; var w2 = Heads.W2[layer];
        fixed (float* px = x) fixed (float* pw1 = w1) fixed (float* pw2 = w2) fixed (float* pz = _z) fixed (float* pa = _a) fixed (float* ps = _s)
        {
            _gemm.MatMulNT(px, pw1, pz, P, H, n);
            for (int i = 0; i < P * H; i++) { float z = _z[i]; _a[i] = z / (1f + MathF.Exp(-z)); }
            _gemm.MatMulNT(pa, pw2, ps, P, G, H);
        }
        double huber = 0, smooth = 0;
        float cH = 1f / (P * G), cS = P > 1 ? Alpha / ((P - 1) * G) : 0;
        for (int k = 0; k < P; k++)
            for (int g = 0; g < G; g++)
            {
                int i = k * G + g;
                float d = _s[i] - y[i], ad = MathF.Abs(d);
                huber += ad < 1 ? 0.5 * d * d : ad - 0.5;
                _ds[i] = cH * Math.Clamp(d, -1f, 1f);
                if (k > 0)
                {
                    float e = _s[i] - _s[i - G];
                    smooth += e * e;
                    _ds[i] += 2 * cS * e;
                    _ds[i - G] -= 2 * cS * e;
                }
            }
        float loss = (float)(huber * cH + smooth * cS);
        if (!backward) return loss;
        for (int i = 0; i < P * G; i++) _ds[i] *= weight;
        // dW2 += dSᵀ·A;  dA = dS·W2 (into _dz);  dZ = dA ⊙ silu'(Z);  dW1 += dZᵀ·X
        Array.Clear(_dz, 0, P * H);
        fixed (float* px = x) fixed (float* pw2 = w2) fixed (float* pa = _a) fixed (float* pds = _ds) fixed (float* pdz = _dz)
        fixed (float* pg1 = _g1[layer]) fixed (float* pg2 = _g2[layer])
        {
            _gemm.MatMulTNAccumulate(pds, pa, pg2, G, H, P);
            _gemm.MatMulNNAccumulate(pds, pw2, pdz, P, H, G);
            for (int i = 0; i < P * H; i++)
            {
                float z = _z[i], sg = 1f / (1f + MathF.Exp(-z));
                _dz[i] *= sg * (1 + z * (1 - sg));
            }
            _gemm.MatMulTNAccumulate(pdz, px, pg1, H, n, P);
        }
        return loss;
    }

    float Alpha => _o.Alpha;

    /// <summary>The predictions [P, KvHeads] of the last <see cref="LayerLoss"/>.</summary>
    internal ReadOnlySpan<float> Predictions(int P) => _s.AsSpan(0, P * Heads.KvHeads);
    internal float[] GradW1(int layer) => _g1[layer];
    internal float[] GradW2(int layer) => _g2[layer];

    /// <summary>One optimizer step on one sequence: the mean over layers of <see cref="LayerLoss"/>, clipped, AdamW.</summary>
    public LocretStep Step(LocretSequence s)
    {
        var X = Prepare(s);
        int L = Heads.Layers, P = s.PromptLength;
        foreach (var g in _g1) Array.Clear(g);
        foreach (var g in _g2) Array.Clear(g);
        double loss = 0;
        for (int l = 0; l < L; l++) loss += LayerLoss(l, X[l], _labels[l], P, true, 1f / L);
        double norm2 = 0;
        foreach (var g in _g1.Concat(_g2)) foreach (float v in g) norm2 += (double)v * v;
        float norm = (float)Math.Sqrt(norm2), clip = norm > _o.GradClip ? _o.GradClip / norm : 1f;
        float lr = LearningRateAt(_step);
        int t = ++_step;
        for (int l = 0; l < L; l++)
        {
            Trainer.AdamWUpdate(Heads.W1[l], _g1[l], _m1[l], _v1[l], t, lr, clip, 0f, _o.Beta1, _o.Beta2, _o.Epsilon);
            Trainer.AdamWUpdate(Heads.W2[l], _g2[l], _m2[l], _v2[l], t, lr, clip, 0f, _o.Beta1, _o.Beta2, _o.Epsilon);
        }
        return new LocretStep(t, (float)(loss / L), lr, norm);
    }

    /// <summary>Linear warm-up to the learning rate over the warm-up steps, then linear decay to zero.</summary>
    public float LearningRateAt(int step)
    {
        int warm = (int)Math.Round(_o.WarmupFraction * _o.Steps);
        return step < warm ? _o.LearningRate * (step + 1) / warm
            : _o.LearningRate * Math.Max(0, _o.Steps - step) / Math.Max(1, _o.Steps - warm);
    }

    /// <summary>Held-out loss, the constant predictor's, and the top-quarter recall of the prompt tokens' labels.</summary>
    public LocretEvaluation Evaluate(IEnumerable<LocretSequence> sequences)
    {
        int L = Heads.Layers, G = Heads.KvHeads;
        double loss = 0, constant = 0, recall = 0; int n = 0, cells = 0;
        foreach (var s in sequences)
        {
            var X = Prepare(s);
            int P = s.PromptLength, top = Math.Max(1, P / 4);
            for (int l = 0; l < L; l++)
            {
                var y = _labels[l];
                constant += ConstantLoss(y, P);
                loss += LayerLoss(l, X[l], y, P, false);
                for (int g = 0; g < G; g++)
                {
                    var byLabel = Top(y, P, g, top);
                    var byHead = Top(_s, P, g, top);
                    byLabel.IntersectWith(byHead);
                    recall += (double)byLabel.Count / top;
                    cells++;
                }
            }
            n++;
        }
        if (n == 0) throw new CriaException("train-locret: no held-out sequence");
        return new LocretEvaluation(loss / (n * L), constant / (n * L), recall / cells, n);

        HashSet<int> Top(float[] v, int P, int g, int count) =>
            Enumerable.Range(0, P).OrderByDescending(k => v[k * G + g]).ThenBy(k => k).Take(count).ToHashSet();
        double ConstantLoss(float[] y, int P)
        {
            double h = 0;
            for (int i = 0; i < P * G; i++) { float ad = MathF.Abs(y[i]); h += ad < 1 ? 0.5 * ad * ad : ad - 0.5; }
            return h / (P * G); // a constant has no smoothness cost
        }
    }

    /// <summary>Training or held-out sequences: stretches of <paramref name="corpusTokens"/> of the training length
    /// (BOS first; the last <see cref="LocretOptions.AnswerTokens"/> are the answer), and with
    /// <see cref="LocretOptions.PasskeyFraction"/> pass-key documents whose answer is the key.</summary>
    public static IEnumerable<LocretSequence> Sequences(LlamaModel model, LocretOptions o, int[] corpusTokens, PasskeyDocuments? passkeys, ulong seed)
    {
        int T = o.SeqLen > 0 ? o.SeqLen : model.Config.ContextLength;
        if (corpusTokens.Length < T) throw new CriaException($"train-locret: the text has {corpusTokens.Length} tokens, fewer than one {T}-token sequence");
        int bos = model.Tokenizer.Bos;
        var rng = new TrainingRng(seed);
        while (true)
        {
            if (passkeys != null && o.PasskeyFraction > 0 && rng.NextDouble() < o.PasskeyFraction)
            {
                var d = passkeys.Next(ref rng, T - 1);
                // the query before the key's first token predicts it: the answer starts there
                yield return new LocretSequence([bos, .. d.Tokens], d.AnswerStart);
                continue;
            }
            int off = rng.Next(corpusTokens.Length - (T - 1) + 1);
            yield return new LocretSequence([bos, .. corpusTokens.AsSpan(off, T - 1)], T - o.AnswerTokens);
        }
    }
}
