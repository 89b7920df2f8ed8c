using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>
/// ExPO (Zheng et al. 2024, "Weak-to-Strong Extrapolation Expedites Alignment"): from a model before alignment
/// (θ_from: the SFT model, or the regression reward model HelpSteer2-Preference starts its Scaled BT training from) and
/// after it (θ_to: DPO, RLHF, Scaled BT), step further along the same direction:
/// <code>θ = θ_to + α · (θ_to − θ_from)</code>
/// tensor by tensor, each written back in θ_to's type. α = 0 gives θ_to; α = −1 gives θ_from. Only float tensors
/// (F32, F16, BF16) are extrapolated; a quantized tensor that differs between the two files is refused (extrapolate the
/// float models, then quantize). For a LoRA adapter trained on a frozen base the same step is the adapter at scale
/// 1 + α (<c>--lora-scaled ADAPTER 1+α</c>), since θ_to − θ_from = B·A.
/// </summary>
public static class Extrapolation
{
    public static void Extrapolate(string fromPath, string toPath, float alpha, string output, bool force = false)
    {
        if (!float.IsFinite(alpha)) throw new CriaException($"extrapolation α must be a finite number, got {alpha}");
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        foreach (var p in new[] { fromPath, toPath })
            if (Path.GetFullPath(p) == Path.GetFullPath(output)) throw new CriaException($"{output}: input and output are the same file");
        using var from = GgufFile.Open(fromPath);
        using var to = GgufFile.Open(toPath);
        var fromTensors = from.Tensors.ToDictionary(t => t.Name);
        foreach (var t in to.Tensors)
        {
            if (!fromTensors.TryGetValue(t.Name, out var f))
                throw new CriaException($"{fromPath} has no tensor {t.Name} (of {toPath}); extrapolation needs two checkpoints of one model");
            if (!f.Shape.SequenceEqual(t.Shape))
                throw new CriaException($"{t.Name} is [{string.Join(", ", f.Shape)}] in {fromPath} but [{string.Join(", ", t.Shape)}] in {toPath}");
        }
        if (fromTensors.Count != to.Tensors.Count)
        {
            var extra = fromTensors.Keys.Except(to.Tensors.Select(t => t.Name)).First();
            throw new CriaException($"{toPath} has no tensor {extra} (of {fromPath}); extrapolation needs two checkpoints of one model");
        }

        var w = new GgufWriter();
        w.CopyMetadataFrom(to);
        foreach (var t in to.Tensors)
        {
            var tt = t; var ft = fromTensors[t.Name];
            var a = to.TensorData(tt);
            if (ft.Type == tt.Type && a.SequenceEqual(from.TensorData(ft)))
            {
                w.AddTensor(t.Name, t.Shape, t.Type, () => to.TensorData(tt).ToArray()); // unchanged by alignment (e.g. frozen embeddings)
                continue;
            }
            foreach (var (type, path) in new[] { (tt.Type, toPath), (ft.Type, fromPath) })
                if (type is not (GgmlType.F32 or GgmlType.F16 or GgmlType.BF16))
                    throw new CriaException($"{path}: {t.Name} is {type}; extrapolate F32, F16 or BF16 models, then quantize the result");
            w.AddTensor(t.Name, t.Shape, t.Type, () => Row(from, ft, to, tt, alpha));
        }
        w.Write(output);
    }

    /// <summary>θ_to + α(θ_to − θ_from) for one tensor, row by row, in θ_to's type.</summary>
    static byte[] Row(GgufFile from, GgufTensorInfo ft, GgufFile to, GgufTensorInfo tt, float alpha)
    {
        int rows = (int)tt.RowCount, cols = (int)tt.RowLength;
        long toRow = GgmlTypeInfo.RowBytes(tt.Type, cols), fromRow = GgmlTypeInfo.RowBytes(ft.Type, cols);
        var bytes = new byte[(long)rows * toRow];
        var x = new float[cols]; // [cols] θ_to's row
        var y = new float[cols]; // [cols] θ_from's row
        for (int o = 0; o < rows; o++)
        {
            Dequantize.Row(tt.Type, to.TensorData(tt).Slice((int)(o * toRow), (int)toRow), x);
            Dequantize.Row(ft.Type, from.TensorData(ft).Slice((int)(o * fromRow), (int)fromRow), y);
            for (int i = 0; i < cols; i++)
            {
                x[i] += alpha * (x[i] - y[i]);
                if (!float.IsFinite(x[i])) throw new CriaException($"{tt.Name}: α = {alpha} takes a weight to {x[i]}");
            }
            Quantize.Row(tt.Type, x, bytes.AsSpan((int)(o * toRow), (int)toRow));
            if (tt.Type == GgmlType.F16)
                foreach (var h in System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes.AsSpan((int)(o * toRow), (int)toRow)))
                    if (!Half.IsFinite(h)) throw new CriaException($"{tt.Name}: α = {alpha} takes a weight beyond F16's range");
        }
        return bytes;
    }
}
