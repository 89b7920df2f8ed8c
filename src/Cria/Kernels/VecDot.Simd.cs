using Cria.Tensors;
namespace Cria.Kernels;

public static partial class VecDot
{
    /// <summary>Fast dot product; equals <see cref="DotScalar"/> up to float summation order.</summary>
    public static float Dot(GgmlType weightType, ReadOnlySpan<byte> weightRow, ReadOnlySpan<byte> activationRow, int n)
        => DotScalar(weightType, weightRow, activationRow, n);
}
