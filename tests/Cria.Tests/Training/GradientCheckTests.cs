using Cria.Kernels;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Every backward against central finite differences of a double-precision reference forward, on tiny shapes.
/// Each op's scalar loss is L = Σ y·r for a fixed random r (so dL/dy = r). The error reported is
/// ‖analytic − numeric‖₂ / ‖numeric‖₂ per input.
/// </summary>
public sealed unsafe class GradientCheckTests(ITestOutputHelper output)
{
    const double H = 1e-6;

    static double[] Random(int n, int seed, double scale = 1)
    {
        var r = new Random(seed);
        var a = new double[n];
        for (int i = 0; i < n; i++) a[i] = (r.NextDouble() * 2 - 1) * scale;
        return a;
    }

    static float[] F(double[] a) => a.Select(v => (float)v).ToArray();

    static double Dot(double[] a, double[] b) { double s = 0; for (int i = 0; i < a.Length; i++) s += a[i] * b[i]; return s; }

    static double[] Numeric(Func<double[], double> f, double[] x)
    {
        var g = new double[x.Length];
        for (int i = 0; i < x.Length; i++)
        {
            double keep = x[i];
            x[i] = keep + H; double lp = f(x);
            x[i] = keep - H; double lm = f(x);
            x[i] = keep;
            g[i] = (lp - lm) / (2 * H);
        }
        return g;
    }

    static double RelError(float[] analytic, double[] numeric)
    {
        double d = 0, n = 0;
        for (int i = 0; i < numeric.Length; i++) { d += Math.Pow(analytic[i] - numeric[i], 2); n += numeric[i] * numeric[i]; }
        return Math.Sqrt(d) / Math.Max(Math.Sqrt(n), 1e-30);
    }

    void Report(string op, double err, double limit = 1e-4)
    {
        output.WriteLine($"{op,-28} relative error {err:E2}");
        Assert.True(err < limit, $"{op}: relative error {err:E2} ≥ {limit:E0}");
    }

    /// <summary>The worst relative error over <paramref name="tensors"/> of the analytic gradients
    /// <paramref name="gradients"/> against central differences of <paramref name="loss"/> at <paramref name="values"/>
    /// (same layout), each tensor's error reported.</summary>
    double WorstTensor(ParameterTensor[] tensors, float[] gradients, double[] values, Func<double[], double> loss, int width = 26)
    {
        double worst = 0;
        foreach (var t in tensors)
        {
            var analytic = gradients.AsSpan((int)t.Offset, (int)t.Count).ToArray();
            var numeric = new double[t.Count];
            for (int i = 0; i < t.Count; i++)
            {
                long j = t.Offset + i;
                double keep = values[j];
                values[j] = keep + H; double lp = loss(values);
                values[j] = keep - H; double lm = loss(values);
                values[j] = keep;
                numeric[i] = (lp - lm) / (2 * H);
            }
            double err = RelError(analytic, numeric);
            worst = Math.Max(worst, err);
            output.WriteLine($"{t.Name.PadRight(width)} relative error {err:E2}");
        }
        return worst;
    }

    [Fact]
    public void RmsNorm()
    {
        int rows = 3, d = 16; float eps = 1e-5f;
        var x = Random(rows * d, 1); var w = Random(d, 2); var r = Random(rows * d, 3);
        float[] fx = F(x), fw = F(w), fr = F(r), dx = new float[x.Length], dw = new float[d], y = new float[x.Length], rstd = new float[rows];
        fixed (float* px = fx, pw = fw, pr = fr, pdx = dx, pdw = dw, py = y, ps = rstd)
        {
            Layers.RmsNormForward(py, ps, px, pw, d, eps, 0, rows);
            Layers.RmsNormBackward(pdx, pdw, pr, px, pw, ps, d, 0, rows);
        }
        Report("rmsnorm dx", RelError(dx, Numeric(xx => Dot(Reference.RmsNorm(xx, w, d, eps), r), x)));
        Report("rmsnorm dw", RelError(dw, Numeric(ww => Dot(Reference.RmsNorm(x, ww, d, eps), r), w)));
    }

    [Fact]
    public void Rope()
    {
        int T = 5, B = 2, heads = 3, hd = 8;
        var table = Reference.RopeTable(T, hd, 10000f);
        var x = Random(B * T * heads * hd, 4); var r = Random(x.Length, 5);
        var dx = F(r);
        fixed (float* pdx = dx, pt = table) Layers.RopeBackward(pdx, heads, hd, pt, hd, T, 0, B * T);
        Report("rope dx", RelError(dx, Numeric(xx => Dot(Reference.Rope(xx, heads, hd, T, table), r), x)));
        // the forward agrees with the inference kernel (adjacent pairs)
        var fx = F(x); var viaOps = F(x);
        fixed (float* px = fx, pt = table) Layers.RopeForward(px, heads, hd, pt, hd, T, 0, B * T);
        for (int row = 0; row < B * T; row++)
            Ops.RopeNorm(viaOps.AsSpan(row * heads * hd, heads * hd), heads, hd, table.AsSpan(row % T * hd, hd));
        Assert.Equal(viaOps, fx);
    }

    [Fact]
    public void SwiGlu()
    {
        int n = 40;
        var g = Random(n, 6, 3); var u = Random(n, 7, 2); var r = Random(n, 8);
        float[] fg = F(g), fu = F(u), fr = F(r), dg = new float[n], du = new float[n];
        fixed (float* pg = fg, pu = fu, pr = fr, pdg = dg, pdu = du) Layers.SwiGluBackward(pdg, pdu, pr, pg, pu, 0, n);
        Report("swiglu dgate", RelError(dg, Numeric(gg => Dot(Reference.SwiGlu(gg, u), r), g)));
        Report("swiglu dup", RelError(du, Numeric(uu => Dot(Reference.SwiGlu(g, uu), r), u)));
    }

    [Fact]
    public void Attention() => CheckAttention("attention", null, 9);

    /// <summary>LS-unLLaMA's unmasked attention: each sequence attends to its first keys[b] positions from every query.</summary>
    [Fact]
    public void BidirectionalAttention()
    {
        var (o, reference) = CheckAttention("bidirectional attention", [5, 3], 19);
        // Row 0 of sequence 0 sees all 5 positions: not the causal result.
        Assert.True(Math.Abs(o[0] - reference[0]) > 1e-3);
    }

    /// <summary>LongLoRA's S2-Attn at T = 8, groups of 4: the lower half of the heads attends inside [0, 4) and [4, 8), the
    /// upper half inside [0, 2), [2, 6) and [6, 8); with one group of 8 it is full causal attention.</summary>
    [Fact]
    public void ShiftedSparseAttention()
    {
        int[] lower = [0, 0, 0, 0, 4, 4, 4, 4], upper = [0, 0, 2, 2, 2, 2, 6, 6];
        var (o, causal) = CheckAttention("S2-Attn", null, 29, 8, lower, upper);
        Assert.True(Math.Abs(o[(4 * 4 + 0) * 8] - causal[(4 * 4 + 0) * 8]) > 1e-3); // row 4, head 0 sees only itself
        var (full, causal2) = CheckAttention("S2-Attn, one group", null, 29, 8, new int[8], new int[8]);
        for (int i = 0; i < full.Length; i++) Assert.True(Math.Abs(full[i] - causal2[i]) < 1e-5);
        // with packed documents too (a document starting at 3): each query attends from the later start
        CheckAttention("S2-Attn over packed documents", null, 31, 8, lower, upper, [0, 0, 0, 3, 3, 3, 3, 3]);
    }

    /// <summary>LongGen's windowed layers at T = 9, window 3, sinks 2: query t sees positions 0, 1 and t − 2 … t. Row 8
    /// differs from causal attention; a window as long as the sequence is causal attention.</summary>
    [Fact]
    public void WindowedAttention()
    {
        var (o, causal) = CheckAttention("sinks 2 + window 3", null, 41, 9, window: 3, sinks: 2);
        double rowDiff = Enumerable.Range(0, 32).Max(i => Math.Abs(o[(1 * 9 + 8) * 32 + i] - causal[(1 * 9 + 8) * 32 + i])); // b 1, t 8
        Assert.True(rowDiff > 1e-3, $"the window changes nothing ({rowDiff})");
        CheckAttention("no sinks, window 2", null, 43, 9, window: 2, sinks: 0);
        var (full, causal2) = CheckAttention("window = T", null, 47, 9, window: 9, sinks: 2);
        for (int i = 0; i < full.Length; i++) Assert.True(Math.Abs(full[i] - causal2[i]) < 1e-5);
    }

    /// <summary>Attention forward against the reference, and dq, dk, dv against central differences, causal or with
    /// <paramref name="keys"/>, or with S2-Attn's segment starts of the lower and upper heads, or through a window with
    /// sinks; returns the forward output and the causal reference's.</summary>
    (float[] Output, double[] Causal) CheckAttention(string what, int[]? keys, int seed, int T = 5, int[]? lower = null, int[]? upper = null,
        int[]? docs = null, int window = 0, int sinks = 0)
    {
        int B = 2, Hh = 4, KV = 2, hd = 8;
        Func<int, int, int>? first = lower == null ? null : (h, t) => Math.Max(docs?[t] ?? 0, 2 * h >= Hh ? upper![t] : lower[t]);
        var q = Random(B * T * Hh * hd, seed); var k = Random(B * T * KV * hd, seed + 1); var v = Random(B * T * KV * hd, seed + 2); var r = Random(q.Length, seed + 3);
        float[] fq = F(q), fk = F(k), fv = F(v), fr = F(r), o = new float[q.Length], probs = new float[B * Hh * T * T];
        float[] dq = new float[q.Length], dk = new float[k.Length], dv = new float[v.Length], scratch = new float[(4 * hd + 1) * T];
        int[] lo = lower ?? new int[T], up = upper ?? new int[T], dc = docs ?? new int[T];
        fixed (float* pq = fq, pk = fk, pv = fv, pr = fr, po = o, pp = probs, pdq = dq, pdk = dk, pdv = dv, ps = scratch)
        fixed (int* plo = lo, pup = up, pdc = dc)
        {
            int* segLo = lower == null ? null : plo, segUp = lower == null ? null : pup, seg = docs == null ? null : pdc;
            for (int b = 0; b < B; b++)
                for (int kv = 0; kv < KV; kv++)
                {
                    int n = keys?[b] ?? 0;
                    Layers.AttentionForward(po, pp, pq, pk, pv, b, kv, T, Hh, KV, hd, ps, n, seg, segLo, segUp, window, sinks);
                    Layers.AttentionBackward(pdq, pdk, pdv, pr, pp, pq, pk, pv, b, kv, T, Hh, KV, hd, ps, n, seg, segLo, segUp, window, sinks);
                }
        }
        var reference = Reference.Attention(q, k, v, B, T, Hh, KV, hd, keys, first, window, sinks);
        for (int i = 0; i < o.Length; i++) Assert.True(Math.Abs(o[i] - reference[i]) < 1e-5, $"{what} forward differs at {i}");
        Report($"{what} dq", RelError(dq, Numeric(qq => Dot(Reference.Attention(qq, k, v, B, T, Hh, KV, hd, keys, first, window, sinks), r), q)));
        Report($"{what} dk", RelError(dk, Numeric(kk => Dot(Reference.Attention(q, kk, v, B, T, Hh, KV, hd, keys, first, window, sinks), r), k)));
        Report($"{what} dv", RelError(dv, Numeric(vv => Dot(Reference.Attention(q, k, vv, B, T, Hh, KV, hd, keys, first, window, sinks), r), v)));
        return (o, keys == null && first == null && window == 0 ? reference : Reference.Attention(q, k, v, B, T, Hh, KV, hd));
    }

    [Fact]
    public void CrossEntropy()
    {
        int rows = 4, V = 10;
        var logits = Random(rows * V, 13, 3);
        int[] targets = [3, 0, 9, 5];
        float[] fl = F(logits), losses = new float[rows];
        fixed (float* pl = fl, ploss = losses) fixed (int* pt = targets) Layers.CrossEntropyForwardBackward(pl, pt, ploss, V, 1f / rows, 0, rows);
        Assert.True(Math.Abs(losses.Average() - Reference.CrossEntropy(logits, targets, V)) < 1e-5);
        Report("cross-entropy dlogits", RelError(fl, Numeric(ll => Reference.CrossEntropy(ll, targets, V), logits)));
    }

    [Theory]
    [InlineData(6, 37, 35)]   // ragged edges (scalar paths)
    [InlineData(8, 64, 40)]   // full 4×4 and 4×32 tiles
    public void MatMul(int rows, int inDim, int outDim)
    {
        var x = Random(rows * inDim, 14); var w = Random(outDim * inDim, 15); var r = Random(rows * outDim, 16);
        float[] fx = F(x), fw = F(w), fr = F(r), y = new float[rows * outDim], dx = new float[x.Length], dw = new float[w.Length];
        using var pool = new WorkerPool(2);
        var gemm = new Gemm(pool);
        fixed (float* px = fx, pw = fw, pr = fr, py = y, pdx = dx, pdw = dw)
        {
            gemm.MatMulNT(px, pw, py, rows, outDim, inDim);
            gemm.MatMulNNAccumulate(pr, pw, pdx, rows, inDim, outDim);
            gemm.MatMulTNAccumulate(pr, px, pdw, outDim, inDim, rows);
        }
        var yr = Reference.MatMulNT(x, rows, inDim, w, 0, outDim);
        for (int i = 0; i < y.Length; i++) Assert.True(Math.Abs(y[i] - yr[i]) < 1e-4, $"matmul forward differs at {i}");
        Report($"matmul dx {rows}x{inDim}x{outDim}", RelError(dx, Numeric(xx => Dot(Reference.MatMulNT(xx, rows, inDim, w, 0, outDim), r), x)));
        Report($"matmul dW {rows}x{inDim}x{outDim}", RelError(dw, Numeric(ww => Dot(Reference.MatMulNT(x, rows, inDim, ww, 0, outDim), r), w)));
    }

    /// <summary>Every parameter of a 2-layer GQA model (embedding, norms, all matrices, untied and tied heads).</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)] // LongGen: layer 0 windowed (sinks 1 + window 2), layer 1 full
    public void FullModel(bool tied, bool hybrid = false)
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8, TiedEmbeddings = tied };
        if (hybrid) shape = shape with { WindowLayers = [true, false], Window = 2, WindowSinks = 1 };
        int B = 2, T = 6;
        using var m = new LlamaTrainingModel(shape, B, T, 2);
        var rng = new Random(17);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(shape.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(_ => rng.Next(shape.VocabSize)).ToArray();
        tokens.CopyTo(m.Tokens); targets.CopyTo(m.Targets);
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / (B * T));
        var p = m.Parameters.Select(v => (double)v).ToArray();
        double refLoss = Reference.Loss(m.Layout, p, tokens, targets, B, T);
        Assert.True(Math.Abs(loss - refLoss) < 1e-5, $"loss {loss} vs reference {refLoss}");
        double worst = WorstTensor(m.Layout.Tensors, m.Gradients, p, q => Reference.Loss(m.Layout, q, tokens, targets, B, T));
        Report($"full model ({(tied ? "tied" : "untied")}{(hybrid ? ", hybrid" : "")}), worst tensor", worst, 1e-4);
        if (hybrid) // the mask matters: the reference without it gives another loss
            Assert.True(Math.Abs(refLoss - Reference.Loss(new ParameterLayout(shape with { WindowLayers = null }), p, tokens, targets, B, T)) > 1e-4);
    }

    /// <summary>
    /// Activation Beacon on a 2-layer GQA model: 13 raw tokens in windows of 4 condensed at ratios 2, 4, 2 (2, 1, 2
    /// beacons; the last window has none) and two rows of padding. The trainer's logits of every raw token equal the
    /// streaming double reference's (<see cref="BeaconReference"/>: window by window, a memory of rotated beacon keys), its
    /// loss too, and every gradient of the beacon embedding and projections agrees with central differences of it; the
    /// base gets none. The memory matters: other ratios give another loss. With the "mlp" beacon parameters the beacons'
    /// up and down projections are checked too.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)] // the "mlp" beacon parameters: the beacons' own up and down projections too
    public void ActivationBeacon(bool mlp)
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        int B = 2, T = 13, W = 4, rows = 20;
        int[] ratios = [2, 4, 2, 0];
        var plan = new BeaconPlan(T, W, ratios, rows);
        Assert.Equal(18, plan.UsedRows);
        using var m = new LlamaTrainingModel(shape, B, rows, 2, beacon: plan, beaconMlp: mlp);
        Assert.Equal(mlp, m.Beacon!.Up != null);
        var rng = new Random(53);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        var bl = m.Beacon!;
        foreach (var t in bl.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.BeaconParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.5);
        var tokens = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, T).Select(_ => rng.Next(shape.VocabSize)).ToArray()).ToArray();
        var targets = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, T).Select(_ => rng.Next(shape.VocabSize)).ToArray()).ToArray();
        for (int b = 0; b < B; b++)
            for (int row = 0; row < rows; row++)
            {
                int r = plan.Kind[row], n = b * rows + row;
                m.Tokens[n] = r >= 0 ? tokens[b][r] : 0;
                m.Targets[n] = r >= 0 ? targets[b][r] : 0;
                m.LossWeights[n] = r >= W ? 1 : 0;
            }
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var bp = m.BeaconParameters.Select(v => (double)v).ToArray();
        int V = shape.VocabSize;
        m.Forward();
        double worstLogit = 0;
        for (int b = 0; b < B; b++)
        {
            var z = BeaconReference.Logits(m.Layout, p, bl, bp, tokens[b], W, ratios);
            for (int row = 0; row < rows; row++)
            {
                int r = plan.Kind[row];
                if (r < 0) continue;
                var got = m.LogitsRow(b * rows + row);
                for (int i = 0; i < V; i++) worstLogit = Math.Max(worstLogit, Math.Abs(got[i] - z[r * V + i]));
            }
        }
        output.WriteLine($"raw-token logits vs the streaming reference: max |Δ| {worstLogit:E2}");
        Assert.True(worstLogit < 1e-4, $"logits differ by {worstLogit:E2}");
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / (B * (T - W)));
        double RefLoss(double[] q, int[] rs) => Enumerable.Range(0, B).Average(b => BeaconReference.Loss(BeaconReference.Logits(m.Layout, p, bl, q, tokens[b], W, rs), targets[b], W, V));
        double refLoss = RefLoss(bp, ratios);
        Assert.True(Math.Abs(loss - refLoss) < 1e-5, $"loss {loss} vs reference {refLoss}");
        Assert.Empty(m.Gradients);
        double worst = WorstTensor(bl.Tensors, m.BeaconGradients, bp, q => RefLoss(q, ratios), 34);
        Report("activation beacon, worst tensor", worst, 1e-4);
        Assert.True(Math.Abs(refLoss - RefLoss(bp, [4, 2, 4, 0])) > 1e-4);
    }

    /// <summary>
    /// SwiftKV distillation on a 3-layer GQA model: the loss τ²·KL(teacher ‖ student) at τ = 2 (teacher: the original
    /// model; student: the SwiftKV wiring over the same base) equals the double reference's, and every gradient of
    /// swiftkv_norm and the attn_q/k/v_swiftkv projections agrees with central differences of it; the base gets no
    /// matrix gradient. L = 1 with AcrossKV groups of 1 and 2.
    /// </summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(1, 2)]
    [InlineData(2, 1)]
    public void SwiftKvDistillation(int L, int g)
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 3, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        int B = 2, T = 6; const float tau = 2f;
        using var m = new LlamaTrainingModel(shape, B, T, 2, swiftKv: (L, g));
        var rng = new Random(31 + 10 * L + g);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        var sk = m.SwiftKv!;
        foreach (var t in sk.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.SwiftKvParameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(shape.VocabSize)).ToArray();
        tokens.CopyTo(m.Tokens);
        m.ZeroGradients();
        float loss = m.DistillForwardBackward(tau, 1f / (B * T));
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var sp = m.SwiftKvParameters.Select(v => (double)v).ToArray();
        var teacher = Reference.Logits(m.Layout, p, tokens, B, T);
        double DistillLoss(double[] swift)
        {
            var student = Reference.MatMulNT(Reference.Hidden(m.Layout, p, tokens, B, T, null, sk, swift), B * T, shape.Dim, p, m.Layout.Output, shape.VocabSize);
            double total = 0;
            int V = shape.VocabSize;
            for (int n = 0; n < B * T; n++)
            {
                double mt = double.NegativeInfinity, ms = double.NegativeInfinity;
                for (int i = 0; i < V; i++) { mt = Math.Max(mt, teacher[n * V + i] / tau); ms = Math.Max(ms, student[n * V + i] / tau); }
                double zt = 0, zs = 0;
                for (int i = 0; i < V; i++) { zt += Math.Exp(teacher[n * V + i] / tau - mt); zs += Math.Exp(student[n * V + i] / tau - ms); }
                for (int i = 0; i < V; i++)
                {
                    double lp = teacher[n * V + i] / tau - mt - Math.Log(zt), lq = student[n * V + i] / tau - ms - Math.Log(zs);
                    total += Math.Exp(lp) * (lp - lq);
                }
            }
            return tau * tau * total / (B * T);
        }
        double refLoss = DistillLoss(sp);
        Assert.True(Math.Abs(loss - refLoss) < 1e-5 * Math.Max(1, refLoss), $"loss {loss} vs reference {refLoss}");
        Assert.True(refLoss > 1e-3, "the SwiftKV student must differ from its teacher for this check to mean anything");
        double worst = WorstTensor(sk.Tensors, m.SwiftKvGradients, sp, DistillLoss, 34);
        Assert.Empty(m.Gradients); // the frozen base has no gradient buffer
        Report($"SwiftKV distillation L={L} g={g}, worst tensor", worst, 1e-4);
    }

    /// <summary>A LoRA training model with random base weights (matrices U(±0.5), norms U(0.8, 1.2)), random adapters
    /// (U(±0.4), B too, so they change the model) and random tokens and targets in place.</summary>
    static (LlamaTrainingModel, int[] Tokens, int[] Targets) RandomLoraModel(LlamaShape shape, LoraOptions lora, int B, int T, int seed)
    {
        var m = new LlamaTrainingModel(shape, B, T, 2, lora);
        var rng = new Random(seed);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
        foreach (var t in m.Lora!.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++) m.LoraParameters[i] = (float)((rng.NextDouble() * 2 - 1) * 0.4);
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(shape.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(_ => rng.Next(shape.VocabSize)).ToArray();
        tokens.CopyTo(m.Tokens); targets.CopyTo(m.Targets);
        return (m, tokens, targets);
    }

    /// <summary>
    /// LoRA on every projection of a 2-layer GQA model: the loss equals the reference model's with W + (α/r)·B·A merged
    /// in double, and every adapter gradient agrees with central differences of that merged loss; the frozen base gets
    /// no matrix gradient.
    /// </summary>
    [Fact]
    public void LoraAdapters()
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        var lora = new LoraOptions { Rank = 3, Alpha = 5f, Targets = LoraTarget.All };
        int B = 2, T = 6;
        var (m, tokens, targets) = RandomLoraModel(shape, lora, B, T, seed: 23);
        using var _ = m;
        var lay = m.Lora!;
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / (B * T));
        var p = m.Parameters.Select(v => (double)v).ToArray();
        var a = m.LoraParameters.Select(v => (double)v).ToArray();
        double MergedLoss(double[] ad)
        {
            var merged = Reference.MergeLora(m.Layout, lay, p, ad);
            return Reference.Loss(m.Layout, merged, tokens, targets, B, T);
        }
        double refLoss = MergedLoss(a);
        Assert.True(Math.Abs(loss - refLoss) < 1e-5, $"loss {loss} vs merged reference {refLoss}");
        Assert.True(Math.Abs(refLoss - Reference.Loss(m.Layout, p, tokens, targets, B, T)) > 1e-3, "the adapters must change the loss for this check to mean anything");
        double worst = WorstTensor(lay.Tensors, m.LoraGradients, a, MergedLoss, 34);
        Assert.Empty(m.Gradients); // the frozen base has no gradient buffer
        Report("LoRA adapters (all seven projections), worst tensor", worst, 1e-4);
    }

    /// <summary>
    /// LoRA dropout (PEFT's lora_dropout), with rsLoRA's scale α/√r: under a dropout key the loss equals a double
    /// reference whose every adapter reads its input through its own mask, y = W·x + s·B·A·(m ⊙ x)/(1 − p); every
    /// adapter gradient agrees with central differences of that loss under the same masks; the masks drop about p of
    /// the inputs, and differently per adapter; without a key (evaluation) the loss is the merged model's.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraDropout(bool rsLora)
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 8 };
        var lora = new LoraOptions { Rank = 4, Alpha = 5f, Targets = LoraTarget.All, Dropout = 0.3f, RsLora = rsLora };
        Assert.Equal(rsLora ? 2.5f : 1.25f, lora.Scale);
        int B = 2, T = 6, N = B * T;
        const ulong key = 0xC0FFEE;
        var (m, tokens, targets) = RandomLoraModel(shape, lora, B, T, seed: 29);
        using var _ = m;
        var lay = m.Lora!;
        var p = m.Parameters.Select(v => (double)v).ToArray();

        // The reference's masks: element i of adapter (layer · 7 + target) is kept when number i of the stream keyed
        // At(key, pair) is at least p·2⁶⁴ (LlamaTrainingModel's definition, applied here to a double forward).
        double threshold = lora.Dropout * Math.Pow(2, 64);
        bool Keeps(int pair, long i) => TrainingRng.At(TrainingRng.At(key, pair), i) >= threshold;
        long kept = 0, drawn = 0, differ = 0;
        for (long i = 0; i < 100_000; i++)
        {
            bool q = Keeps(0, i), k = Keeps(1, i);
            kept += q ? 1 : 0; drawn++; differ += q != k ? 1 : 0;
        }
        output.WriteLine($"q's mask keeps {kept} of {drawn}; q's and k's masks differ at {differ}");
        Assert.InRange(kept / (double)drawn, 0.695, 0.705);   // 1 − p = 0.7 (one standard error: 0.0014)
        Assert.InRange(differ / (double)drawn, 0.415, 0.425); // 2·0.3·0.7 = 0.42: q, k and v read one x through their own masks

        double DroppedLoss(double[] ad)
        {
            int r = lora.Rank;
            double[]? Adapter(int l, int target, double[] x)
            {
                if (lay.Pairs[l * 7 + target] is not { } q) return null;
                var y = new double[N * q.Out];
                var t = new double[r];
                for (int n = 0; n < N; n++)
                {
                    for (int j = 0; j < r; j++)
                    {
                        double d = 0;
                        for (int i = 0; i < q.In; i++)
                            if (Keeps(l * 7 + target, (long)n * q.In + i)) d += ad[q.A + (long)j * q.In + i] * x[n * q.In + i] / (1 - lora.Dropout);
                        t[j] = lora.Scale * d;
                    }
                    for (int o = 0; o < q.Out; o++)
                    {
                        double d = 0;
                        for (int j = 0; j < r; j++) d += ad[q.B + (long)o * r + j] * t[j];
                        y[n * q.Out + o] = d;
                    }
                }
                return y;
            }
            var h = Reference.Hidden(m.Layout, p, tokens, B, T, extra: Adapter);
            return Reference.CrossEntropy(Reference.MatMulNT(h, N, shape.Dim, p, m.Layout.Output, shape.VocabSize), targets, shape.VocabSize);
        }

        m.LoraDropoutKey = key;
        m.ZeroGradients();
        float loss = m.ForwardBackward(1f / N);
        var a = m.LoraParameters.Select(v => (double)v).ToArray();
        double refLoss = DroppedLoss(a);
        double merged = Reference.Loss(m.Layout, Reference.MergeLora(m.Layout, lay, p, a), tokens, targets, B, T);
        output.WriteLine($"loss with dropout {loss:F6}, reference {refLoss:F6}; without dropout {merged:F6}");
        Assert.True(Math.Abs(loss - refLoss) < 1e-5, $"loss {loss} vs dropout reference {refLoss}");
        Assert.True(Math.Abs(refLoss - merged) > 1e-3, "dropout must change the loss for this check to mean anything");
        double worst = WorstTensor(lay.Tensors, m.LoraGradients, a, DroppedLoss, 34);
        Report($"LoRA dropout 0.3{(rsLora ? ", rsLoRA" : "")}, worst tensor", worst, 1e-4);

        m.LoraDropoutKey = null; // evaluation: no mask, the merged model's loss
        m.Forward();
        Assert.True(Math.Abs(m.Loss() - merged) < 1e-5, $"without a key the loss is {m.Loss()}, the merged model's {merged}");
    }
}
