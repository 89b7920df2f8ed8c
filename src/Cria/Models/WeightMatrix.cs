using System.Runtime.CompilerServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>
/// A 2-D weight viewed in place inside the mapped file: <see cref="Rows"/> output rows of <see cref="Cols"/> input
/// elements each (GGUF ne = {Cols, Rows}), every row contiguous and <see cref="RowBytes"/> long in <see cref="Type"/>.
/// </summary>
public readonly unsafe struct WeightMatrix
{
    public readonly GgmlType Type;
    public readonly byte* Data;
    public readonly int Rows;
    public readonly int Cols;
    public readonly int RowBytes;
    public readonly string Name;

    public WeightMatrix(string name, GgmlType type, byte* data, int rows, int cols)
    {
        Name = name; Type = type; Data = data; Rows = rows; Cols = cols;
        RowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<byte> Row(int r) => new(Data + (long)r * RowBytes, RowBytes);

    public long ByteSize => (long)Rows * RowBytes;

    /// <summary>Binds a GGUF tensor that must have shape {cols, rows}.</summary>
    public static WeightMatrix Bind(GgufFile f, string name, int cols, int rows)
    {
        var t = f.GetTensor(name);
        if (t.Shape.Length != 2 || t.Shape[0] != cols || t.Shape[1] != rows)
            throw new ModelFormatException(f.Path, $"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{cols}, {rows}]");
        if (!VecDotSupports(t.Type))
            throw new ModelFormatException(f.Path, $"tensor '{name}' has type {t.Type}, which Cria cannot use as a weight matrix");
        return new WeightMatrix(name, t.Type, f.TensorPointer(t), rows, cols);
    }

    static bool VecDotSupports(GgmlType t) => t is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q4_0 or GgmlType.Q4_1
        or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;
}
