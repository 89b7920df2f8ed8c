using Cria.Tensors;

namespace Cria.Training;

/// <summary>How a LoRA run holds its frozen base's seven block projections.</summary>
public enum BaseStorage
{
    /// <summary>F32 in the training parameters, like every other tensor (an F32/F16/BF16 base).</summary>
    F32,
    /// <summary>In the file's own type, quantized or not (Q4_K_M, Q8_0, F16 …), dequantized one matrix at a time.</summary>
    Keep,
    /// <summary>QLoRA: quantized to NF4 with double quantization when loaded, dequantized one matrix at a time.</summary>
    Nf4,
}

/// <summary>
/// One frozen weight matrix [Rows, Cols] of a LoRA run's base, kept compressed (QLoRA): the trainer dequantizes it into
/// one shared F32 scratch matrix right before each product that reads it, forward and backward, as bitsandbytes
/// dequantizes NF4 to bf16 before its matmul. Only the adapters are trained, so nothing writes it.
/// </summary>
public abstract unsafe class FrozenMatrix(int rows, int cols)
{
    public int Rows { get; } = rows;
    public int Cols { get; } = cols;
    /// <summary>What the matrix is stored as, e.g. "Q4_K" or "NF4".</summary>
    public abstract string Kind { get; }
    public abstract long Bytes { get; }
    /// <summary>Writes rows [r0, r1) as F32 at <paramref name="dst"/> + r·Cols (row-major [Rows, Cols]).</summary>
    public abstract void DequantizeRows(int r0, int r1, float* dst);
}

/// <summary>A matrix in a GGUF type (ggml blocks along each row), decoded by <see cref="DequantizeVector.Row"/> (Q4_K and Q6_K
/// vectorized, other types by the reference <see cref="Dequantize.Row"/>).</summary>
public sealed unsafe class GgmlFrozenMatrix : FrozenMatrix
{
    readonly byte[] _data;
    readonly long _rowBytes;
    public GgmlType Type { get; }

    public GgmlFrozenMatrix(GgmlType type, ReadOnlySpan<byte> data, int rows, int cols) : base(rows, cols)
    {
        _rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        if (cols % GgmlTypeInfo.BlockSize(type) != 0 || data.Length != _rowBytes * rows)
            throw new CriaException($"a {type} matrix [{rows}, {cols}] needs {_rowBytes * rows} bytes, got {data.Length}");
        Type = type;
        _data = data.ToArray();
    }

    public override string Kind => Type.ToString();
    public override long Bytes => _data.Length;

    public override void DequantizeRows(int r0, int r1, float* dst)
    {
        for (int r = r0; r < r1; r++)
            DequantizeVector.Row(Type, _data.AsSpan((int)(r * _rowBytes), (int)_rowBytes), new Span<float>(dst + (long)r * Cols, Cols));
    }
}

/// <summary>A matrix in NF4 (<see cref="Nf4Tensor"/>), its blocks running over the row-major elements.</summary>
public sealed unsafe class Nf4FrozenMatrix(Nf4Tensor q, int rows, int cols) : FrozenMatrix(rows, cols)
{
    public Nf4Tensor Tensor { get; } = q.Count == (long)rows * cols ? q : throw new CriaException($"an NF4 tensor of {q.Count} elements is not a [{rows}, {cols}] matrix");
    public override string Kind => Tensor.DoubleQuantized ? "NF4+DQ" : "NF4";
    public override long Bytes => Tensor.Bytes;

    public override void DequantizeRows(int r0, int r1, float* dst) =>
        DequantizeVector.Nf4(Tensor, (long)r0 * Cols, new Span<float>(dst + (long)r0 * Cols, (r1 - r0) * Cols));
}

/// <summary>
/// The frozen block projections of a LoRA run's base (QLoRA), [layer · 7 + target] in <see cref="LoraOptions"/>'s target
/// order q, k, v, o, gate, up, down. Norms, embeddings and the output head stay F32 in the training parameters.
/// </summary>
public sealed class FrozenBase
{
    public FrozenMatrix[] Matrices { get; }

    public FrozenBase(LlamaShape shape, FrozenMatrix[] matrices)
    {
        Matrices = matrices;
        CheckFits(shape);
    }

    /// <summary>Throws unless these are the seven projections of every layer of <paramref name="shape"/>: the
    /// tensors a frozen-matrix layout leaves out (offset −1), in its order.</summary>
    public void CheckFits(LlamaShape shape)
    {
        var expected = new ParameterLayout(shape, frozenMatrices: true).AllTensors.Where(t => t.Offset < 0).ToArray();
        if (Matrices.Length != expected.Length) throw new CriaException($"a frozen base of {Matrices.Length / 7} layers does not fit a model of {shape.Layers}");
        for (int i = 0; i < expected.Length; i++)
        {
            var (m, t) = (Matrices[i], expected[i]);
            if (m.Rows != t.Rows || m.Cols != t.Cols)
                throw new CriaException($"frozen matrix {t.Name} is [{m.Rows}, {m.Cols}]; the model's is [{t.Rows}, {t.Cols}]");
        }
    }

    public long Bytes => Matrices.Sum(m => m.Bytes);

    /// <summary>E.g. "Q4_K ×28, Q6_K ×14" or "NF4+DQ": the storage kinds with their counts.</summary>
    public string Kind
    {
        get
        {
            var kinds = Matrices.GroupBy(m => m.Kind).ToArray();
            return kinds.Length == 1 ? kinds[0].Key : string.Join(", ", kinds.Select(g => $"{g.Key} ×{g.Count()}"));
        }
    }

    /// <summary>Bits per weight of the stored matrices.</summary>
    public double BitsPerWeight => 8.0 * Bytes / Matrices.Sum(m => (long)m.Rows * m.Cols);
}
