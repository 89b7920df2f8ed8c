using System.Runtime.CompilerServices;

namespace Cria.Tensors;

/// <summary>
/// IEEE binary16 conversions exactly as ggml's portable C code does them
/// (<c>ggml_compute_fp16_to_fp32</c> / <c>ggml_compute_fp32_to_fp16</c>, after Maratyszcza's FP16 library):
/// round to nearest even, overflow to infinity, every NaN becomes the canonical quiet NaN 0x7E00 (with its sign).
/// </summary>
public static class Fp16
{
    // fp16 -> fp32 for every bit pattern; 256 KiB, the same trick ggml uses (ggml_table_f32_f16).
    private static readonly float[] Table = BuildTable();

    private static float[] BuildTable()
    {
        var t = new float[65536];
        for (int i = 0; i < t.Length; i++) t[i] = Compute((ushort)i);
        return t;
    }

    /// <summary>Converts half bits to float (exact; NaN payloads are kept).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort h) => Unsafe.Add(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(Table), h);

    /// <summary>The table's first entry, for kernels that take it once before their loop (<c>Unsafe.Add(ref t, h)</c> is
    /// <see cref="ToSingle"/>): in an AggressiveOptimization method compiled before this class is initialised, each
    /// <see cref="ToSingle"/> keeps a class-initialisation check whose helper call makes the JIT spill the vector
    /// registers live across it.</summary>
    internal static ref float TableStart => ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(Table);

    /// <summary>The bit-trick decode ggml uses; kept for the table and for tests.</summary>
    internal static float Compute(ushort h)
    {
        uint w = (uint)h << 16;
        uint sign = w & 0x80000000u;
        uint twoW = w + w;
        const uint expOffset = 0xE0u << 23;
        float expScale = BitConverter.UInt32BitsToSingle(0x07800000u); // 2^-112
        float normalized = BitConverter.UInt32BitsToSingle((twoW >> 4) + expOffset) * expScale;
        const uint magicMask = 126u << 23;
        float denormalized = BitConverter.UInt32BitsToSingle((twoW >> 17) | magicMask) - 0.5f;
        const uint denormalizedCutoff = 1u << 27;
        uint result = sign | (twoW < denormalizedCutoff
            ? BitConverter.SingleToUInt32Bits(denormalized)
            : BitConverter.SingleToUInt32Bits(normalized));
        return BitConverter.UInt32BitsToSingle(result);
    }

    /// <summary>Converts float to half bits, round to nearest even (ggml_compute_fp32_to_fp16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float f)
    {
        float scaleToInf = BitConverter.UInt32BitsToSingle(0x77800000u);  // 2^112
        float scaleToZero = BitConverter.UInt32BitsToSingle(0x08800000u); // 2^-110
        float bas = (MathF.Abs(f) * scaleToInf) * scaleToZero;

        uint w = BitConverter.SingleToUInt32Bits(f);
        uint shl1W = w + w;
        uint sign = w & 0x80000000u;
        uint bias = shl1W & 0xFF000000u;
        if (bias < 0x71000000u) bias = 0x71000000u;

        bas = BitConverter.UInt32BitsToSingle((bias >> 1) + 0x07800000u) + bas;
        uint bits = BitConverter.SingleToUInt32Bits(bas);
        uint expBits = (bits >> 13) & 0x00007C00u;
        uint mantissaBits = bits & 0x00000FFFu;
        uint nonsign = expBits + mantissaBits;
        return (ushort)((sign >> 16) | (shl1W > 0xFF000000u ? 0x7E00u : nonsign));
    }

    /// <summary>Rounds a float to the nearest half and back.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float f) => ToSingle(FromSingle(f));
}

/// <summary>bfloat16 conversions as ggml does them (<c>ggml_compute_bf16_to_fp32</c> / <c>ggml_compute_fp32_to_bf16</c>).</summary>
public static class Bf16
{
    /// <summary>bf16 is the top half of a float: a shift.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    /// <summary>
    /// Round to nearest even on the dropped 16 bits; a NaN keeps its top bits and is forced quiet (| 0x40).
    /// Subnormals are rounded like any other value (current ggml does not flush them).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((u >> 16) | 64u);
        return (ushort)((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float f) => ToSingle(FromSingle(f));
}
