using Cria.Tensors;

namespace Cria.Formats;

/// <summary>GGUF metadata value types, numbered as in the GGUF specification.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7,
    String = 8, Array = 9, UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// One tensor of a GGUF file. <see cref="Shape"/> is in ggml order: Shape[0] (ne[0]) is the fastest-varying axis,
/// so a PyTorch Linear weight W[out, in] has Shape = {in, out} and each output row is contiguous.
/// </summary>
public sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset)
{
    public long ElementCount { get { long n = 1; foreach (var d in Shape) n *= d; return n; } }
    public long RowLength => Shape.Length == 0 ? 1 : Shape[0];
    public long RowCount => ElementCount / RowLength;
    public long ByteSize => GgmlTypeInfo.RowBytes(Type, RowLength) * RowCount;
    public override string ToString() => $"{Name} [{string.Join(", ", Shape)}] {Type}";
}

/// <summary>
/// Maps .NET values to GGUF value types and back. A metadata value is one of: byte, sbyte, ushort, short, uint, int,
/// float, bool, string, ulong, long, double — or an array of one of those (string[], int[], float[] …). Each GGUF type
/// has exactly one .NET type, so a file read and written again keeps every type.
/// </summary>
public static class GgufValues
{
    public static GgufValueType TypeOf(Type t) =>
        t == typeof(byte) ? GgufValueType.UInt8 :
        t == typeof(sbyte) ? GgufValueType.Int8 :
        t == typeof(ushort) ? GgufValueType.UInt16 :
        t == typeof(short) ? GgufValueType.Int16 :
        t == typeof(uint) ? GgufValueType.UInt32 :
        t == typeof(int) ? GgufValueType.Int32 :
        t == typeof(float) ? GgufValueType.Float32 :
        t == typeof(bool) ? GgufValueType.Bool :
        t == typeof(string) ? GgufValueType.String :
        t == typeof(ulong) ? GgufValueType.UInt64 :
        t == typeof(long) ? GgufValueType.Int64 :
        t == typeof(double) ? GgufValueType.Float64 :
        t.IsArray && t.GetArrayRank() == 1 && !t.GetElementType()!.IsArray ? GgufValueType.Array :
        throw new ArgumentException($"type {t} cannot be stored as GGUF metadata");

    /// <summary>Fixed byte size of a scalar GGUF type; 0 for strings and arrays.</summary>
    internal static int ScalarSize(GgufValueType t) => t switch
    {
        GgufValueType.UInt8 or GgufValueType.Int8 or GgufValueType.Bool => 1,
        GgufValueType.UInt16 or GgufValueType.Int16 => 2,
        GgufValueType.UInt32 or GgufValueType.Int32 or GgufValueType.Float32 => 4,
        GgufValueType.UInt64 or GgufValueType.Int64 or GgufValueType.Float64 => 8,
        _ => 0,
    };
}
