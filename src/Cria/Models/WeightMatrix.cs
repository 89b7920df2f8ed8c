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
    /// <summary>F16 only: some weight is an infinity or NaN. Checked once, here (one read of the matrix), so that
    /// F16 decode can skip a per-step check in its kernel: it reads the halves' raw bits as scaled floats, which
    /// would take an infinity for a finite number (<see cref="Kernels.RowKernels.RunRows"/>). The weights must not
    /// change after the matrix is made.</summary>
    public readonly bool NonFiniteF16;

    public WeightMatrix(string name, GgmlType type, byte* data, int rows, int cols)
    {
        Name = name; Type = type; Data = data; Rows = rows; Cols = cols;
        RowBytes = checked((int)GgmlTypeInfo.RowBytes(type, cols));
        NonFiniteF16 = type == GgmlType.F16 && Kernels.RowKernels.HasNonFiniteF16((ushort*)data, (long)rows * cols);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<byte> Row(int r) => new(Data + (long)r * RowBytes, RowBytes);

    public long ByteSize => (long)Rows * RowBytes;

    /// <summary>Binds a GGUF tensor that must have shape {cols, rows}.</summary>
    public static WeightMatrix Bind(GgufFile f, string name, int cols, int rows)
    {
        var t = Checked(f, name, cols, rows);
        return new WeightMatrix(name, t.Type, f.TensorPointer(t), rows, cols);
    }

    /// <summary>The tensor, which must have exactly <paramref name="shape"/> and a type the row kernels multiply.</summary>
    static GgufTensorInfo Checked(GgufFile f, string name, params long[] shape)
    {
        var t = f.GetTensor(name);
        if (!t.Shape.SequenceEqual(shape))
            throw new ModelFormatException(f.Path, $"tensor '{name}' has shape [{string.Join(", ", t.Shape)}], expected [{string.Join(", ", shape)}]");
        if (!Kernels.VecDot.HasDotProduct(t.Type))
            throw new ModelFormatException(f.Path, $"tensor '{name}' has type {t.Type}, which Cria cannot use as a weight matrix");
        return t;
    }

    /// <summary>Binds one matrix per expert: the stacked tensor <c>BASE_exps.weight</c> of shape {cols, rows, experts},
    /// each expert a view of its contiguous rows named <c>BASE_exps.weight:e</c>; or, in files from before llama.cpp
    /// stacked them, the separate tensors <c>BASE.e.weight</c> of shape {cols, rows}.</summary>
    public static WeightMatrix[] BindExperts(GgufFile f, string baseName, int cols, int rows, int experts)
    {
        string name = baseName + "_exps.weight";
        var m = new WeightMatrix[experts];
        if (!f.TryGetTensor(name, out _) && f.TryGetTensor($"{baseName}.0.weight", out _))
        {
            for (int e = 0; e < experts; e++) m[e] = Bind(f, $"{baseName}.{e}.weight", cols, rows);
            return m;
        }
        var t = Checked(f, name, cols, rows, experts);
        long expertBytes = rows * GgmlTypeInfo.RowBytes(t.Type, cols);
        for (int e = 0; e < experts; e++) m[e] = new WeightMatrix($"{name}:{e}", t.Type, f.TensorPointer(t) + e * expertBytes, rows, cols);
        return m;
    }

}
