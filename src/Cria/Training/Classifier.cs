using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>How a sequence's per-token class logits become one (LS-LLaMA: the last token; LS-unLLaMA: the mean, or the
/// maximum per class), or stay one per token (token classification, e.g. NER: LS-unLLaMA's token task).</summary>
public enum ClassifierPooling { Last, Mean, Token, Max }

/// <summary>What a head on the final hidden states is trained for.</summary>
public enum ClassifierObjective
{
    /// <summary>Labels: cross-entropy on the pooled logits (LS-LLaMA).</summary>
    Labels,
    /// <summary>A scalar reward from preference pairs: −m·log σ(r_chosen − r_rejected − margin) (Bradley–Terry; with a
    /// preference magnitude m, HelpSteer2-Preference's Scaled BT).</summary>
    BradleyTerry,
    /// <summary>A scalar reward regressed on ratings: ½(r − y)² (HelpSteer2's regression reward model).</summary>
    Regression,
}

/// <summary>
/// A label-supervised classifier on a Llama backbone (Li et al., "Label Supervised LLaMA Finetuning", LS-LLaMA): a
/// linear head <c>cls.output.weight</c> [labels, dim] on the final-norm hidden states, trained with cross-entropy on
/// the label together with LoRA adapters on the backbone. <see cref="Bidirectional"/> removes the causal mask
/// (LS-unLLaMA), so every token sees the whole sequence; padding is never attended.
/// </summary>
public sealed record ClassifierOptions
{
    public required string[] Labels { get; init; }
    public ClassifierPooling Pooling { get; init; } = ClassifierPooling.Last;
    public bool Bidirectional { get; init; }
    /// <summary>Labels (a classifier) or a scalar reward (a reward model: one output, <see cref="Reward"/>).</summary>
    public ClassifierObjective Objective { get; init; } = ClassifierObjective.Labels;

    /// <summary>A reward model's head options: one output named "reward".</summary>
    public static ClassifierOptions Reward(ClassifierObjective objective, ClassifierPooling pooling = ClassifierPooling.Last, bool bidirectional = false) =>
        new() { Labels = ["reward"], Objective = objective, Pooling = pooling, Bidirectional = bidirectional };

    public bool IsReward => Objective != ClassifierObjective.Labels;

    public void Validate()
    {
        if (IsReward && Labels.Length != 1) throw new CriaException($"a reward model has one output, got {Labels.Length} labels");
        if (!IsReward && (Labels.Length < 2 || Labels.Length > 4096)) throw new CriaException($"a classifier needs 2..4096 labels, got {Labels.Length}");
        if (Labels.Distinct(StringComparer.Ordinal).Count() != Labels.Length) throw new CriaException("classifier labels must be distinct");
        if (IsReward && PerToken) throw new CriaException("a reward model scores a whole sequence; token pooling is for token classifiers");
    }

    /// <summary>LS-LLaMA (causal, last token) and LS-unLLaMA (bidirectional, mean or max) by name: "last", "mean", "max",
    /// "bi-mean", "bi-last", "bi-max"; token classification: "token" (causal) and "bi-token" (LS-unLLaMA's NER setting).</summary>
    public static (ClassifierPooling Pooling, bool Bidirectional) ParseMode(string s) => s.ToLowerInvariant() switch
    {
        "last" => (ClassifierPooling.Last, false),
        "mean" => (ClassifierPooling.Mean, false),
        "bi-mean" => (ClassifierPooling.Mean, true),
        "bi-last" => (ClassifierPooling.Last, true),
        "max" => (ClassifierPooling.Max, false),
        "bi-max" => (ClassifierPooling.Max, true),
        "token" => (ClassifierPooling.Token, false),
        "bi-token" => (ClassifierPooling.Token, true),
        _ => throw new CriaException($"unknown classifier mode '{s}' (last, mean, max, bi-mean, bi-last, bi-max, token, bi-token)"),
    };

    public string ModeName => (Bidirectional ? "bi-" : "") + Pooling switch
    {
        ClassifierPooling.Last => "last",
        ClassifierPooling.Mean => "mean",
        ClassifierPooling.Max => "max",
        _ => "token",
    };

    /// <summary>A token classifier: one label per token (<see cref="ClassifierPooling.Token"/>).</summary>
    public bool PerToken => Pooling == ClassifierPooling.Token;

    /// <summary>The objective's name in head files and on the command line: labels, bt, regression.</summary>
    public static string ObjectiveName(ClassifierObjective o) => o switch
    {
        ClassifierObjective.BradleyTerry => "bt",
        ClassifierObjective.Regression => "regression",
        _ => "labels",
    };

    public static ClassifierObjective ParseObjective(string s) => s.ToLowerInvariant() switch
    {
        "labels" => ClassifierObjective.Labels,
        "bt" => ClassifierObjective.BradleyTerry,
        "regression" => ClassifierObjective.Regression,
        _ => throw new CriaException($"unknown head objective '{s}' (labels, bt, regression)"),
    };

    /// <summary>
    /// Writes the head as a small GGUF (atomically): general.type = "classifier", <c>classifier.output_labels</c> (the
    /// key llama.cpp's rerankers use for label names), <c>classifier.mode</c>, and <c>cls.output.weight</c> (ggml shape
    /// [dim, labels], F32). The adapters go in their own llama.cpp-format file (<see cref="LoraLayout.Write"/>).
    /// </summary>
    public void WriteHead(string path, LoraLayout layout, ReadOnlySpan<float> parameters)
    {
        if (layout.Head < 0 || layout.HeadLabels != Labels.Length) throw new InvalidOperationException("the layout has no head for these labels");
        int dim = layout.Tensors[^1].Cols;
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("general.type", "classifier");
        w.Set("classifier.output_labels", Labels);
        w.Set("classifier.mode", ModeName);
        w.Set("classifier.objective", ObjectiveName(Objective));
        w.AddTensor(LoraLayout.HeadName, [dim, Labels.Length], GgmlType.F32,
            MemoryMarshal.AsBytes(parameters.Slice((int)layout.Head, Labels.Length * dim)).ToArray());
        w.Write(path);
    }

    /// <summary>Reads a head written by <see cref="WriteHead"/>: the options and the weights [labels, dim].</summary>
    public static (ClassifierOptions Options, float[] Head) ReadHead(string path, int dim)
    {
        if (!File.Exists(path)) throw new CriaException($"classifier head {path} does not exist");
        using var f = GgufFile.Open(path);
        if (f.Get("general.type", "") != "classifier") throw new CriaException($"{path} is not a classifier head (general.type '{f.Get("general.type", "")}')");
        var labels = f.Get<string[]>("classifier.output_labels", []);
        var (pooling, bidirectional) = ParseMode(f.Get("classifier.mode", "last"));
        var o = new ClassifierOptions { Labels = labels, Pooling = pooling, Bidirectional = bidirectional, Objective = ParseObjective(f.Get("classifier.objective", "labels")) };
        o.Validate();
        var t = f.GetTensor(LoraLayout.HeadName);
        if (t.Type != GgmlType.F32 || t.Shape.Length != 2 || t.Shape[0] != dim || t.Shape[1] != labels.Length)
            throw new CriaException($"{path}: {LoraLayout.HeadName} must be F32 [{dim}, {labels.Length}], got {t.Type} [{string.Join(", ", t.Shape)}]");
        return (o, MemoryMarshal.Cast<byte, float>(f.TensorData(t)).ToArray());
    }
}

/// <summary>
/// Runs a causal classifier (modes <c>last</c>, <c>mean</c>, <c>token</c>) through the generation engine instead of
/// the training forward: any weight type (a quantized base), the adapter applied at run time
/// (<see cref="Inference.ContextOptions.Loras"/>), the final hidden states kept
/// (<see cref="Inference.InferenceContext.KeepEmbeddings"/>) and pooled (a token classifier's are not), then the head.
/// A bidirectional classifier cannot run here: the engine's attention is causal (it is built on the KV cache).
/// </summary>
public static class Classifier
{
    /// <summary>Pooled class logits [labels] of <paramref name="tokens"/> (BOS first) under a head [labels, dim];
    /// uses and then clears sequence <paramref name="sequence"/> of the context's cache.</summary>
    public static float[] Logits(Inference.InferenceContext ctx, ReadOnlySpan<int> tokens, ClassifierOptions o, ReadOnlySpan<float> head, int sequence = 0)
    {
        if (o.PerToken) throw new CriaException($"classifier mode {o.ModeName} labels every token; use Classifier.TokenLogits");
        int dim = ctx.Config.Dim, n = tokens.Length, C = o.Labels.Length;
        if (o.Pooling == ClassifierPooling.Max)
        {
            var zt = PerPosition(FinalHidden(ctx, tokens, o, head, sequence, 0), head, n, dim, C); // [n, C]
            var m = new float[C];
            for (int j = 0; j < C; j++) { m[j] = zt[j]; for (int t = 1; t < n; t++) m[j] = MathF.Max(m[j], zt[t * C + j]); }
            return m;
        }
        int first = o.Pooling == ClassifierPooling.Last ? n - 1 : 0;
        var h = FinalHidden(ctx, tokens, o, head, sequence, first); // [n − first, dim]
        var pooled = new double[dim];
        double w = o.Pooling == ClassifierPooling.Last ? 1 : 1.0 / n;
        for (int t = 0; t < n - first; t++)
            for (int i = 0; i < dim; i++) pooled[i] += w * h[t * dim + i];
        var z = new float[C];
        for (int j = 0; j < C; j++)
        {
            double s = 0;
            for (int i = 0; i < dim; i++) s += head[j * dim + i] * pooled[i];
            z[j] = (float)s;
        }
        return z;
    }

    /// <summary>What a classifier reads of a text: BOS and its tokens (<paramref name="tokens"/>, without BOS), cut to
    /// <paramref name="maxTokens"/>, as training fills its rows.</summary>
    public static int[] Input(int[] tokens, int bos, int maxTokens)
    {
        var row = new int[Math.Min(maxTokens, tokens.Length + 1)];
        LabelledExample.CopyTo(tokens, row, bos);
        return row;
    }

    /// <summary>A token classifier's class logits [n, labels] at every position of <paramref name="tokens"/> (BOS first)
    /// under a head [labels, dim]; uses and then clears sequence <paramref name="sequence"/> of the context's cache.</summary>
    public static float[] TokenLogits(Inference.InferenceContext ctx, ReadOnlySpan<int> tokens, ClassifierOptions o, ReadOnlySpan<float> head, int sequence = 0)
    {
        if (!o.PerToken) throw new CriaException($"classifier mode {o.ModeName} pools its tokens; use Classifier.Logits");
        int dim = ctx.Config.Dim, n = tokens.Length, C = o.Labels.Length;
        return PerPosition(FinalHidden(ctx, tokens, o, head, sequence, 0), head, n, dim, C);
    }

    /// <summary>z [n, C] = h [n, dim] · headᵀ.</summary>
    static float[] PerPosition(float[] h, ReadOnlySpan<float> head, int n, int dim, int C)
    {
        var z = new float[n * C];
        for (int t = 0; t < n; t++)
            for (int j = 0; j < C; j++)
            {
                double s = 0;
                for (int i = 0; i < dim; i++) s += head[j * dim + i] * h[t * dim + i];
                z[t * C + j] = (float)s;
            }
        return z;
    }

    /// <summary>The final-norm hidden states [n − first, dim] of positions first … n − 1, the tokens decoded as one
    /// causal sequence through the engine (the context's adapters applied); the checks both routes share.</summary>
    static float[] FinalHidden(Inference.InferenceContext ctx, ReadOnlySpan<int> tokens, ClassifierOptions o, ReadOnlySpan<float> head, int sequence, int first)
    {
        if (o.Bidirectional) throw new CriaException($"classifier mode {o.ModeName} attends bidirectionally; the generation engine is causal (run it through the trainer's forward, on an F32/F16 base)");
        int dim = ctx.Config.Dim, n = tokens.Length, C = o.Labels.Length;
        if (head.Length != C * dim) throw new CriaException($"the classifier head has {head.Length} weights, the model needs {C} × {dim}");
        if (n == 0) throw new CriaException("nothing to classify (no tokens)");
        ctx.Cache.Remove(sequence);
        var batch = new Inference.Batch(n);
        for (int i = 0; i < n; i++) batch.Add(tokens[i], i, sequence, false);
        bool keep = ctx.KeepEmbeddings;
        ctx.KeepEmbeddings = true;
        var h = new float[(n - first) * dim];
        try
        {
            ctx.Decode(batch);
            for (int t = first; t < n; t++) ctx.Embedding(t).CopyTo(h.AsSpan((t - first) * dim, dim));
        }
        finally { ctx.KeepEmbeddings = keep; ctx.Cache.Remove(sequence); }
        return h;
    }
}

/// <summary>One labelled text, tokenized (without BOS).</summary>
public sealed record LabelledExample(int[] Tokens, int Label)
{
    /// <summary>Writes BOS and the tokens, cut to <paramref name="row"/>'s length, at the start of the row; returns
    /// how many were written (the sequence's length for the pooling and the mask).</summary>
    public int CopyTo(Span<int> row, int bos) => CopyTo(Tokens, row, bos);

    internal static int CopyTo(int[] tokens, Span<int> row, int bos)
    {
        int n = Math.Min(row.Length, tokens.Length + 1);
        row[0] = bos;
        tokens.AsSpan(0, n - 1).CopyTo(row[1..]);
        return n;
    }
}

/// <summary>One tagged text for a token classifier: its tokens (without BOS) and a tag per token, −1 where a token is
/// not scored (a word's later sub-tokens, as Hugging Face's token-classification recipe labels only a word's first).</summary>
public sealed record TaggedExample(int[] Tokens, int[] Tags)
{
    /// <summary>From words and their tags: each word tokenized alone, as it reads in the sentence (the tokenizer's own
    /// space prefix, or a space before every word but the first), its first token carrying the word's tag.</summary>
    public static TaggedExample FromWords(Tokenization.Tokenizer tokenizer, IReadOnlyList<string> words, IReadOnlyList<int> tags)
    {
        if (words.Count != tags.Count) throw new ArgumentException($"{words.Count} words but {tags.Count} tags");
        var toks = new List<int>();
        var t = new List<int>();
        for (int i = 0; i < words.Count; i++)
        {
            var w = tokenizer.Encode(i == 0 || tokenizer.AddSpacePrefix ? words[i] : " " + words[i], addBos: false);
            for (int j = 0; j < w.Length; j++) { toks.Add(w[j]); t.Add(j == 0 ? tags[i] : -1); }
        }
        return new TaggedExample(toks.ToArray(), t.ToArray());
    }

    /// <summary>Writes BOS and the tokens, cut to <paramref name="row"/>'s length; returns how many were written.</summary>
    public int CopyTo(Span<int> row, int bos) => LabelledExample.CopyTo(Tokens, row, bos);

}

public readonly record struct ClassifierStepResult(int Step, float Loss, float Accuracy, float GradNorm, float LearningRate);

public sealed partial class Trainer
{
    /// <summary>Puts example <paramref name="e"/> in row <paramref name="b"/>: BOS, its tokens (cut to T − 1), then
    /// padding (<paramref name="pad"/>) that the pooling and the attention never read. Returns its length.</summary>
    int FillClassifierRow(int b, int[] tokens, int pad)
    {
        var m = Model;
        var row = m.Tokens.Slice(b * m.SeqLen, m.SeqLen);
        int n = LabelledExample.CopyTo(tokens, row, _bos);
        row[n..].Fill(pad);
        m.SequenceLengths[b] = n;
        return n;
    }

    /// <summary>One optimizer step of classifier training: GradAccumulation micro-batches of BatchSize examples drawn
    /// with the trainer's RNG, the mean cross-entropy on their labels, clipping and AdamW on the adapters and the head.</summary>
    public ClassifierStepResult ClassifierStep(IReadOnlyList<LabelledExample> examples, int pad)
    {
        var m = Model;
        if (m.Classifier == null) throw new InvalidOperationException("the trainer was not made for a classifier");
        if (examples.Count == 0) throw new CriaException("no labelled examples");
        int B = m.BatchSize, accum = Options.GradAccumulation;
        Span<int> labels = stackalloc int[B];
        m.ZeroGradients();
        double loss = 0; int correct = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            for (int b = 0; b < B; b++)
            {
                var e = examples[_rng.Next(examples.Count)];
                FillClassifierRow(b, e.Tokens, pad);
                labels[b] = e.Label;
            }
            var (l, c) = m.ClassifierForwardBackward(labels, 1f / (B * accum));
            loss += l; correct += c;
        }
        var (norm, lr) = OptimizerStep();
        return new ClassifierStepResult(Step, (float)(loss / (B * accum)), (float)correct / (B * accum), norm, lr);
    }

    /// <summary>Puts a tagged example in row <paramref name="b"/> (BOS, its tokens cut to T − 1, padding) and its tags
    /// in <paramref name="tags"/> [B·T] (−1 at BOS, at unscored tokens and on padding). Returns its length.</summary>
    int FillTaggedRow(int b, TaggedExample e, int pad, Span<int> tags)
    {
        int T = Model.SeqLen;
        int n = FillClassifierRow(b, e.Tokens, pad);
        var row = tags.Slice(b * T, T);
        row.Fill(-1);
        e.Tags.AsSpan(0, n - 1).CopyTo(row[1..]);
        return n;
    }

    /// <summary>One optimizer step of token classification: GradAccumulation micro-batches of BatchSize tagged examples
    /// drawn with the trainer's RNG, the mean cross-entropy over their scored tokens, clipping and AdamW.</summary>
    public ClassifierStepResult TokenClassifierStep(IReadOnlyList<TaggedExample> examples, int pad)
    {
        var m = Model;
        if (m.Classifier is not { PerToken: true }) throw new InvalidOperationException("the trainer was not made for a token classifier");
        if (examples.Count == 0) throw new CriaException("no tagged examples");
        int B = m.BatchSize, accum = Options.GradAccumulation;
        var tags = new int[B * m.SeqLen];
        var drawn = new TaggedExample[B * accum];
        int total = 0;
        for (int i = 0; i < drawn.Length; i++)
        {
            drawn[i] = examples[_rng.Next(examples.Count)];
            foreach (int tag in drawn[i].Tags.AsSpan(0, Math.Min(drawn[i].Tags.Length, m.SeqLen - 1))) if (tag >= 0) total++;
        }
        m.ZeroGradients();
        double loss = 0; int correct = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            for (int b = 0; b < B; b++) FillTaggedRow(b, drawn[a * B + b], pad, tags);
            var (l, c, _) = m.TokenClassifierForwardBackward(tags, 1f / Math.Max(1, total));
            loss += l; correct += c;
        }
        var (norm, lr) = OptimizerStep();
        return new ClassifierStepResult(Step, (float)(loss / Math.Max(1, total)), (float)correct / Math.Max(1, total), norm, lr);
    }

    /// <summary>The predicted tag of every token of every example (in order; −1 where the example's tag is −1 or the
    /// token was cut), and the mean cross-entropy over scored tokens. No gradient is kept.</summary>
    public (int[][] Predicted, double Loss) TokenClassifierEvaluate(IReadOnlyList<TaggedExample> examples, int pad)
    {
        var m = Model;
        if (m.Classifier is not { PerToken: true }) throw new InvalidOperationException("the trainer was not made for a token classifier");
        int B = m.BatchSize, T = m.SeqLen;
        var predicted = new int[examples.Count][];
        var tags = new int[B * T];
        double loss = 0; long scored = 0;
        for (int start = 0; start < examples.Count; start += B)
        {
            for (int b = 0; b < B; b++) FillTaggedRow(b, examples[start + b < examples.Count ? start + b : 0], pad, tags);
            m.Forward();
            for (int b = 0; b < B && start + b < examples.Count; b++)
            {
                var e = examples[start + b];
                var p = predicted[start + b] = new int[e.Tokens.Length];
                Array.Fill(p, -1);
                for (int t = 1; t < T; t++)
                {
                    int tag = tags[b * T + t];
                    if (tag < 0 || t > e.Tokens.Length) continue;
                    var z = m.TokenClassLogits(b, t);
                    p[t - 1] = Inference.Sampler.ArgMax(z);
                    loss += Kernels.Ops.LogSumExp(z) - z[tag];
                    scored++;
                }
            }
        }
        return (predicted, scored > 0 ? loss / scored : 0);
    }

    /// <summary>The predicted label of every example (in order, BatchSize at a time; a short last batch is padded with
    /// copies of the first example), and the mean cross-entropy on their labels. No gradient is kept.</summary>
    public (int[] Predicted, double Loss) ClassifierEvaluate(IReadOnlyList<LabelledExample> examples, int pad)
    {
        var m = Model;
        var c = m.Classifier ?? throw new InvalidOperationException("the trainer was not made for a classifier");
        int B = m.BatchSize;
        var predicted = new int[examples.Count];
        double loss = 0;
        for (int start = 0; start < examples.Count; start += B)
        {
            for (int b = 0; b < B; b++) FillClassifierRow(b, examples[start + b < examples.Count ? start + b : 0].Tokens, pad);
            m.Forward();
            for (int b = 0; b < B && start + b < examples.Count; b++)
            {
                var z = m.ClassLogits(b);
                predicted[start + b] = Inference.Sampler.ArgMax(z);
                loss += Kernels.Ops.LogSumExp(z) - z[examples[start + b].Label];
            }
        }
        return (predicted, examples.Count > 0 ? loss / examples.Count : 0);
    }
}
