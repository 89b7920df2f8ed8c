using Cria.Kernels;
using Cria.Models;
using Cria.Tensors;
using Cria.Training;

namespace Cria.Interpretability;

/// <summary>Which weight vector of a feed-forward neuron is decoded: what it reads from the residual stream (row i of
/// ffn_up or ffn_gate, the paper's choice is up) or what it writes into it (column i of ffn_down).</summary>
public enum NeuronView { Up, Gate, Down }

/// <summary>A feed-forward neuron (hidden unit <paramref name="Neuron"/> of block <paramref name="Layer"/>, the input
/// index of ffn_down) held at <paramref name="Value"/> at every position: SiLU(gate)·up at that index is replaced
/// before the down projection, which adds Value · ffn_down[:, Neuron] to the residual stream.</summary>
public readonly record struct NeuronClamp(int Layer, int Neuron, float Value)
{
    /// <summary>Parses <c>L:N=V</c> (<c>--clamp 3:512=10</c>).</summary>
    public static NeuronClamp Parse(string s)
    {
        int colon = s.IndexOf(':'), eq = s.IndexOf('=');
        if (colon < 1 || eq < colon + 2 || !int.TryParse(s.AsSpan(0, colon), out int l) || !int.TryParse(s.AsSpan(colon + 1, eq - colon - 1), out int n)
            || !float.TryParse(s.AsSpan(eq + 1), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float v))
            throw new CriaException($"neuron clamp '{s}': expected LAYER:NEURON=VALUE, e.g. 3:512=10");
        return new NeuronClamp(l, n, v);
    }
}

/// <summary>One neuron decoded through the final norm and the output head: its top tokens and their probabilities.</summary>
public sealed record NeuronReading(int Layer, int Neuron, int[] Tokens, float[] Probs)
{
    public int TopToken => Tokens[0];
    public float TopProb => Probs[0];
}

/// <summary>
/// Decoding feature neurons through the LM head ("Decoding specialised feature neurons in LLMs with the final
/// projection layer", Davies 2025). A feed-forward neuron's weight vector lives in residual-stream space, so it can be
/// read like a hidden state: p = softmax(W_out · RMSNorm(w) ⊙ g_final). The paper decodes the rows of up_proj (what
/// the neuron responds to); the columns of down_proj are what it writes (a logit-lens view). Clamping the neuron
/// (<see cref="NeuronClamp"/>, <see cref="Inference.ContextOptions.NeuronClamps"/>) then steers generation toward
/// its tokens. All neurons of a layer are decoded as one F32 product [neurons, dim] × [vocab, dim]ᵀ (<see cref="Gemm"/>).
/// </summary>
public static class NeuronLens
{
    /// <summary>The neurons' vectors of block <paramref name="layer"/> in residual-stream space, [ff, dim] row-major:
    /// ffn_up / ffn_gate rows, or ffn_down columns (transposed).</summary>
    public static float[] Vectors(LlamaModel model, int layer, NeuronView view)
    {
        var c = model.Config;
        if (c.IsMoe) throw new CriaException("neuron decoding: a mixture-of-experts model has one set of neurons per expert; decode dense models");
        if ((uint)layer >= (uint)c.LayerCount) throw new CriaException($"neuron decoding: layer {layer} is outside 0..{c.LayerCount - 1}");
        if (view == NeuronView.Down && c.IsOlmo2)
            throw new CriaException("neuron decoding: an olmo2 block norms the feed-forward output before adding it to the residual stream, so a down column is not what the neuron writes; decode --view up or gate");
        var L = model.Layers[layer];
        int ff = c.FfnDim, dim = c.Dim;
        var v = new float[(long)ff * dim];                    // [ff, dim]
        if (view == NeuronView.Down)
        {
            var row = new float[ff];
            for (int o = 0; o < dim; o++)                     // ffn_down is [dim rows, ff cols]: column i is neuron i's output
            {
                Dequantize.Row(L.WDown.Type, L.WDown.Row(o), row);
                for (int i = 0; i < ff; i++) v[(long)i * dim + o] = row[i];
            }
        }
        else
        {
            var w = view == NeuronView.Up ? L.WUp : L.WGate;  // [ff rows, dim cols]
            for (int i = 0; i < ff; i++) Dequantize.Row(w.Type, w.Row(i), v.AsSpan(i * dim, dim));
        }
        return v;
    }

    /// <summary>Logits [n, vocab] of <paramref name="n"/> residual-stream vectors [n, dim]: each is RMS-normed with the
    /// model's final norm (as the last hidden state is) and multiplied by the output head.</summary>
    public static unsafe float[] Logits(LlamaModel model, ReadOnlySpan<float> vectors, int n, float[] head, WorkerPool pool)
    {
        var c = model.Config;
        int dim = c.Dim, vocab = c.VocabSize;
        var normed = new float[(long)n * dim];                // [n, dim]
        for (int i = 0; i < n; i++) Ops.RmsNorm(vectors.Slice(i * dim, dim), model.OutputNorm, c.RmsNormEps, normed.AsSpan(i * dim, dim));
        var logits = new float[(long)n * vocab];              // [n, vocab]
        fixed (float* a = normed) fixed (float* b = head) fixed (float* y = logits)
            new Gemm(pool).MatMulNT(a, b, y, n, vocab, dim);
        return logits;
    }

    /// <summary>The output head as F32, [vocab, dim].</summary>
    public static float[] Head(LlamaModel model)
    {
        var o = model.Output;
        var h = new float[(long)o.Rows * o.Cols];
        for (int r = 0; r < o.Rows; r++) Dequantize.Row(o.Type, o.Row(r), h.AsSpan(r * o.Cols, o.Cols));
        return h;
    }

    /// <summary>Every neuron of <paramref name="layers"/> (all when null) decoded: its <paramref name="topK"/> tokens by
    /// probability. Neurons go through the head 256 at a time, so memory stays at 256 × vocab logits.</summary>
    public static List<NeuronReading> Decode(LlamaModel model, NeuronView view, int topK = 5, IEnumerable<int>? layers = null, int threads = 0)
    {
        var c = model.Config;
        if (topK < 1 || topK > c.VocabSize) throw new CriaException($"neuron decoding: top-k {topK} is outside 1..{c.VocabSize}");
        using var pool = new WorkerPool(threads > 0 ? threads : Environment.ProcessorCount);
        var head = Head(model);
        var result = new List<NeuronReading>();
        int dim = c.Dim, vocab = c.VocabSize;
        foreach (int l in layers ?? Enumerable.Range(0, c.LayerCount))
        {
            var v = Vectors(model, l, view);
            for (int first = 0; first < c.FfnDim; first += 256)
            {
                int n = Math.Min(256, c.FfnDim - first);
                var logits = Logits(model, v.AsSpan(first * dim, n * dim), n, head, pool);
                for (int i = 0; i < n; i++) result.Add(Read(l, first + i, logits.AsSpan(i * vocab, vocab), topK));
            }
        }
        return result;
    }

    /// <summary>Softmax of one neuron's logits (in double) and its top-k tokens, most probable first (ties to the lower id).</summary>
    public static NeuronReading Read(int layer, int neuron, ReadOnlySpan<float> logits, int topK)
    {
        double lse = Ops.LogSumExp(logits);
        var tokens = new int[topK]; var probs = new float[topK];
        int filled = 0;
        for (int t = 0; t < logits.Length; t++)
        {
            float x = logits[t];
            int j = filled;
            while (j > 0 && logits[tokens[j - 1]] < x) j--;   // equal logits keep the lower id first
            if (j == topK) continue;
            int last = Math.Min(filled, topK - 1);
            Array.Copy(tokens, j, tokens, j + 1, last - j);
            tokens[j] = t;
            if (filled < topK) filled++;
        }
        for (int j = 0; j < topK; j++) probs[j] = (float)Math.Exp(logits[tokens[j]] - lse);
        return new NeuronReading(layer, neuron, tokens, probs);
    }

    /// <summary>How a clamp steers: the mean probability, at the last position of each prompt, of the
    /// <paramref name="targets"/> tokens (summed), with the neurons of <paramref name="clamps"/> held at their values.
    /// The paper's check that a decoded neuron means what it decodes to: P(concept) on neutral prompts rises.</summary>
    public static double MeanProbability(LlamaModel model, IReadOnlyList<NeuronClamp> clamps, IReadOnlyList<int[]> prompts, IReadOnlySet<int> targets, int threads = 0)
    {
        if (prompts.Count == 0 || prompts.Any(p => p.Length == 0)) throw new CriaException("neuron probe: give at least one prompt, none empty");
        if (targets.Any(t => (uint)t >= (uint)model.Config.VocabSize)) throw new CriaException($"neuron probe: a target token is outside the vocabulary (0..{model.Config.VocabSize - 1})");
        int ctx = prompts.Max(p => p.Length);
        using var context = new Inference.InferenceContext(model, new Inference.ContextOptions { ContextSize = ctx, MicroBatch = ctx, Threads = threads, NeuronClamps = clamps });
        var batch = new Inference.Batch(ctx);
        double sum = 0;
        foreach (var prompt in prompts)
        {
            context.Cache.Clear();
            batch.Clear();
            for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, 0, i == prompt.Length - 1);
            context.Decode(batch);
            var logits = context.Logits(prompt.Length - 1);
            double lse = Ops.LogSumExp(logits);
            foreach (int t in targets) sum += Math.Exp(logits[t] - lse);
        }
        return sum / prompts.Count;
    }

    /// <summary>The share of neurons whose top token is the same in two decodings of the same neurons (the paper: 75.4 %
    /// of Llama 3.1 8B's up_proj neurons between the base and the instruct model).</summary>
    public static double SameTopToken(IReadOnlyList<NeuronReading> a, IReadOnlyList<NeuronReading> b)
    {
        if (a.Count != b.Count) throw new CriaException($"neuron decoding: {a.Count} neurons against {b.Count}; compare models of the same shape");
        int same = 0;
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i].Layer != b[i].Layer || a[i].Neuron != b[i].Neuron) throw new CriaException("neuron decoding: the two lists hold different neurons");
            if (a[i].TopToken == b[i].TopToken) same++;
        }
        return a.Count == 0 ? 0 : (double)same / a.Count;
    }
}
