namespace Cria.Training;

/// <summary>Which preference objective <see cref="Trainer.PreferenceStep"/> optimises.</summary>
public enum PreferenceLoss
{
    /// <summary>DPO (Rafailov et al. 2023): −log σ(β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))]).</summary>
    Dpo,
    /// <summary>SimPO (Meng et al. 2024): −log σ(β·(log π(y_w)/|y_w| − log π(y_l)/|y_l|) − γ), no reference model.</summary>
    SimPo,
    /// <summary>REFUEL (Gao et al. 2024; REBEL for one turn): (Δ − η·(Q̂(y) − Q̂(y′)))², Δ = [log π(y) − log π_t(y)] −
    /// [log π(y′) − log π_t(y′)], where π_t is the policy that sampled the two responses and Q̂ their rewards
    /// (<see cref="PreferencePair.RewardGap"/>); η is <see cref="PreferenceOptions.Beta"/>. No order between y and y′.</summary>
    Refuel,
}

/// <summary>Preference-optimisation settings. Defaults: DPO β = 0.1; SimPO β = 2, γ = β/2 = 1 (SimPO's
/// gamma_beta_ratio 0.5); REFUEL η (in <see cref="Beta"/>) = 1, the REFUEL code's default.</summary>
public sealed record PreferenceOptions
{
    public PreferenceLoss Loss { get; init; } = PreferenceLoss.Dpo;
    public float Beta { get; init; } = 0.1f;
    /// <summary>SimPO's target reward margin γ (unused by DPO).</summary>
    public float Gamma { get; init; } = 1f;

    public static PreferenceOptions Default(PreferenceLoss loss) => loss switch
    {
        PreferenceLoss.Dpo => new() { Loss = loss, Beta = 0.1f, Gamma = 0f },
        PreferenceLoss.Refuel => new() { Loss = loss, Beta = 1f, Gamma = 0f },
        _ => new() { Loss = loss, Beta = 2f, Gamma = 1f },
    };

    /// <summary>Whether the loss compares against π_ref / π_t log-probabilities (<see cref="Trainer.SequenceLogProbs"/>).</summary>
    public bool NeedsReference => Loss != PreferenceLoss.SimPo;

    public void Validate()
    {
        if (!(Beta > 0) || !float.IsFinite(Beta)) throw new CriaException($"{(Loss == PreferenceLoss.Refuel ? "REFUEL η" : "preference β")} must be a positive number, got {Beta}");
        if (!(Gamma >= 0) || !float.IsFinite(Gamma)) throw new CriaException($"SimPO γ must be a number ≥ 0, got {Gamma}");
    }

    /// <summary>
    /// One pair's loss and its derivatives with respect to the summed log-probabilities of the chosen (lw) and rejected
    /// (ll) responses; rw, rl are the reference's (DPO, REFUEL), nw, nl the response lengths (SimPO), gap the reward
    /// difference Q̂(y) − Q̂(y′) (REFUEL). Also the reward margin (DPO: β·[(lw − rw) − (ll − rl)], SimPO:
    /// β·(lw/nw − ll/nl), REFUEL: Δ = (lw − rw) − (ll − rl)), positive when the first response is preferred.
    /// </summary>
    public (double Loss, double DLw, double DLl, double Margin) PairLoss(double lw, double ll, double rw, double rl, int nw, int nl, double gap = 0)
    {
        double b = Beta;
        if (Loss == PreferenceLoss.Refuel)
        {
            double delta = (lw - rw) - (ll - rl), e = delta - b * gap;
            return (e * e, 2 * e, -2 * e, delta);
        }
        if (Loss == PreferenceLoss.Dpo)
        {
            double d = b * ((lw - rw) - (ll - rl));
            double s = Sigmoid(-d);
            return (Softplus(-d), -b * s, b * s, d);
        }
        double margin = b * (lw / nw - ll / nl), z = margin - Gamma;
        double t = Sigmoid(-z);
        return (Softplus(-z), -b * t / nw, b * t / nl, margin);
    }

    static double Sigmoid(double x) => x >= 0 ? 1 / (1 + Math.Exp(-x)) : Math.Exp(x) / (1 + Math.Exp(x));
    static double Softplus(double x) => x > 30 ? x : Math.Log(1 + Math.Exp(x));
}

/// <summary>A preference pair, tokenized: the prompt (without BOS) and the chosen and rejected responses. For REFUEL the
/// two are samples of the same state in no order, and <paramref name="RewardGap"/> is Q̂(Chosen) − Q̂(Rejected).</summary>
public sealed record PreferencePair(int[] Prompt, int[] Chosen, int[] Rejected, double RewardGap = 0);

public readonly record struct PreferenceStepResult(int Step, float Loss, float Margin, float Accuracy, float GradNorm, float LearningRate);

public sealed partial class Trainer
{
    /// <summary>
    /// Writes BOS + prompt + response into row <paramref name="b"/> of the micro-batch: targets are the next tokens,
    /// weighted 1 on the response and 0 on the prompt and the padding. A response longer than the row is cut at the end.
    /// Returns the number of response targets.
    /// </summary>
    int FillPairRow(int b, int[] prompt, int[] response)
    {
        var m = Model;
        int T = m.SeqLen;
        if (prompt.Length + 1 >= T) throw new CriaException($"a prompt of {prompt.Length} tokens leaves no room for its response in rows of {T}");
        var tokens = m.Tokens.Slice(b * T, T); var targets = m.Targets.Slice(b * T, T); var weights = m.LossWeights.Slice(b * T, T);
        int n = Math.Min(response.Length, T - prompt.Length);
        if (n == 0) throw new CriaException("a preference pair has an empty response");
        // sequence s = [BOS, prompt, response[..n]]: tokens = s[0..], targets = s[1..]
        tokens.Clear(); targets.Clear(); weights.Clear();
        m.SegmentStarts.Slice(b * T, T).Clear(); // one document (a packed SFT step may have run before)
        tokens[0] = _bos;
        prompt.CopyTo(tokens[1..]);
        response.AsSpan(0, Math.Min(n, T - 1 - prompt.Length)).CopyTo(tokens[(1 + prompt.Length)..]);
        prompt.CopyTo(targets);
        response.AsSpan(0, n).CopyTo(targets[prompt.Length..]);
        weights.Slice(prompt.Length, n).Fill(1f);
        return n;
    }

    /// <summary>Σ log p(response) of the last forward's rows (the rows' weights mark the response targets).</summary>
    double RowLogProb(int b)
    {
        var m = Model;
        int T = m.SeqLen;
        double lp = 0;
        for (int t = 0; t < T; t++) if (m.LossWeights[b * T + t] != 0) lp -= m.TargetNll(b * T + t);
        return lp;
    }

    /// <summary>
    /// Summed log-probabilities of every pair's chosen ([2i]) and rejected ([2i + 1]) response under the current
    /// parameters (with LoRA, base plus adapters). Called before the first step it gives DPO's reference, π_ref =
    /// the starting model.
    /// </summary>
    public double[] SequenceLogProbs(IReadOnlyList<PreferencePair> pairs)
    {
        var m = Model;
        if (m.BatchSize % 2 != 0) throw new CriaException($"preference training needs an even batch size (chosen and rejected rows), got {m.BatchSize}");
        int per = m.BatchSize / 2;
        var result = new double[2 * pairs.Count];
        for (int first = 0; first < pairs.Count; first += per)
        {
            int n = Math.Min(per, pairs.Count - first);
            for (int i = 0; i < per; i++)
            {
                var p = pairs[first + Math.Min(i, n - 1)];
                FillPairRow(2 * i, p.Prompt, p.Chosen);
                FillPairRow(2 * i + 1, p.Prompt, p.Rejected);
            }
            m.Forward();
            for (int i = 0; i < n; i++) { result[2 * (first + i)] = RowLogProb(2 * i); result[2 * (first + i) + 1] = RowLogProb(2 * i + 1); }
        }
        return result;
    }

    /// <summary>
    /// One optimizer step of preference optimisation: GradAccumulation micro-batches of BatchSize/2 pairs drawn with
    /// the trainer's RNG (row 2i the chosen response, 2i + 1 the rejected), the loss of <paramref name="o"/>, its
    /// gradient through <see cref="LlamaTrainingModel.BackwardWeighted"/>, clipping and AdamW as in <see cref="TrainStep"/>.
    /// <paramref name="reference"/> is <see cref="SequenceLogProbs"/> of the starting model (DPO), or of the policy that
    /// sampled the pairs (REFUEL); SimPO ignores it. Accuracy is the share of positive margins, for REFUEL the share
    /// of pairs with unequal rewards whose Δ has the sign of the reward gap (the REFUEL code's sign_align).
    /// </summary>
    public PreferenceStepResult PreferenceStep(IReadOnlyList<PreferencePair> pairs, double[]? reference, PreferenceOptions o)
    {
        o.Validate();
        var m = Model;
        if (m.BatchSize % 2 != 0) throw new CriaException($"preference training needs an even batch size (chosen and rejected rows), got {m.BatchSize}");
        if (pairs.Count == 0) throw new CriaException("no preference pairs");
        if (o.NeedsReference && (reference == null || reference.Length != 2 * pairs.Count))
            throw new CriaException($"{o.Loss} needs the reference log-probabilities of every pair (SequenceLogProbs before the first step)");
        int per = m.BatchSize / 2, accum = Options.GradAccumulation, T = m.SeqLen;
        float gradScale = 1f / (per * accum);
        Span<int> pick = stackalloc int[per];
        Span<int> lengths = stackalloc int[2 * per];
        m.ZeroGradients();
        double loss = 0, margin = 0, correct = 0, signed = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            for (int i = 0; i < per; i++)
            {
                pick[i] = _rng.Next(pairs.Count);
                var p = pairs[pick[i]];
                lengths[2 * i] = FillPairRow(2 * i, p.Prompt, p.Chosen);
                lengths[2 * i + 1] = FillPairRow(2 * i + 1, p.Prompt, p.Rejected);
            }
            m.Forward();
            for (int i = 0; i < per; i++)
            {
                double lw = RowLogProb(2 * i), ll = RowLogProb(2 * i + 1);
                double rw = reference?[2 * pick[i]] ?? 0, rl = reference?[2 * pick[i] + 1] ?? 0;
                var (l, dw, dl, mg) = o.PairLoss(lw, ll, rw, rl, lengths[2 * i], lengths[2 * i + 1], pairs[pick[i]].RewardGap);
                loss += l; margin += mg;
                double gap = o.Loss == PreferenceLoss.Refuel ? pairs[pick[i]].RewardGap : 1;
                if (gap != 0) { signed++; if (mg * gap > 0) correct++; }
                // ∂L/∂CE_t = −∂L/∂log p on every response target of the row
                var ww = m.LossWeights.Slice(2 * i * T, T); var wl = m.LossWeights.Slice((2 * i + 1) * T, T);
                for (int t = 0; t < T; t++) { if (ww[t] != 0) ww[t] = (float)-dw; if (wl[t] != 0) wl[t] = (float)-dl; }
            }
            m.BackwardWeighted(gradScale);
        }
        var (norm, lr) = OptimizerStep();
        int count = per * accum;
        return new PreferenceStepResult(Step, (float)(loss / count), (float)(margin / count), (float)(correct / Math.Max(1, signed)), norm, lr);
    }
}
