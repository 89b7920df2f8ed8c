using Cria.Inference;
using Cria.Tokenization;
using Cria.Training;

namespace Cria.Quantization;

/// <summary>Settings of <see cref="Fisher.Collect"/>.</summary>
public sealed record FisherOptions : CalibrationOptions
{
    public FisherOptions() => MaxChunks = 64;
}

/// <summary>
/// The empirical diagonal Fisher information of every <c>blk.*</c> matrix on calibration text (SqueezeLLM's
/// sensitivity, Kim et al. 2023): F_ij = Σ_c (∂L_c/∂W_ij)², with L_c the summed next-token cross-entropy of calibration
/// chunk c (BOS first, as the imatrix's chunks). To second order the loss grows by ½ Σ_ij F_ij ΔW_ij² when the weights
/// move by ΔW, so F is an importance per weight for the quantizer's rounding error — of the loss, where the imatrix
/// (the mean x_j² of the inputs) weighs each matrix's output error, every token and output row alike.
///
/// The gradients come from the training engine (<see cref="LlamaTrainingModel"/>, F32): the model file is read into
/// training parameters (<see cref="GgufImport"/>; F32 or F16 weights), so this needs three F32 copies of the model in
/// memory — meant for models of the size Cria trains, not 7B ones.
/// </summary>
public static class Fisher
{
    /// <summary>Per <c>blk.*</c> matrix name, F as [rows, cols] (the tensor's own layout). <paramref name="chunksUsed"/>:
    /// calibration chunks that went in.</summary>
    public static Dictionary<string, float[]> Collect(string modelPath, string calibrationText, FisherOptions o, out int chunksUsed,
        Action<int, int>? afterChunk = null)
    {
        if (o.ContextSize < 4 || o.MaxChunks <= 0) throw new CriaException($"Fisher: calibration needs chunks of at least 4 tokens and a positive count, got {o.ContextSize} × {o.MaxChunks}");
        // the tokenizer from the file's metadata alone: opening it as an inference model would fault in (and check)
        // every weight only to read them again below
        var tok = Tokenizer.FromGguf(modelPath);
        var chunks = Perplexity.Chunks(tok.Encode(calibrationText, addBos: true), o.ContextSize, tok.Bos, tok.AddBos);
        if (chunks.Count > o.MaxChunks) chunks.RemoveRange(o.MaxChunks, chunks.Count - o.MaxChunks);
        var imported = GgufImport.Read(modelPath, "--fisher");
        int T = o.ContextSize - 1; // a chunk of ctx tokens: inputs 0 … ctx−2, targets 1 … ctx−1
        if (T > imported.Shape.ContextLength) throw new CriaException($"Fisher: chunks of {o.ContextSize} tokens exceed the model's context length {imported.Shape.ContextLength}");
        using var tm = new LlamaTrainingModel(imported.Shape, 1, T, o.Threads > 0 ? o.Threads : Environment.ProcessorCount);
        imported.Parameters.CopyTo(tm.Parameters, 0);

        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        var matrices = tm.Layout.Tensors.Where(t => t.IsMatrix && t.Name.StartsWith("blk.", StringComparison.Ordinal)).ToArray();
        foreach (var t in matrices) result[t.Name] = new float[t.Count];
        var g = tm.Gradients;
        for (int c = 0; c < chunks.Count; c++)
        {
            var chunk = chunks[c];
            for (int i = 0; i < T; i++) { tm.Tokens[i] = chunk[i]; tm.Targets[i] = chunk[i + 1]; }
            tm.ZeroGradients();
            tm.ForwardBackward(1f); // gradient of the chunk's summed loss
            Parallel.ForEach(matrices, t =>
            {
                var f = result[t.Name];
                var gt = g.AsSpan((int)t.Offset, (int)t.Count);
                for (int i = 0; i < f.Length; i++) f[i] += gt[i] * gt[i];
            });
            afterChunk?.Invoke(c + 1, chunks.Count);
        }
        chunksUsed = chunks.Count; // at least one: Perplexity.Chunks refuses a text shorter than a chunk
        return result;
    }
}
