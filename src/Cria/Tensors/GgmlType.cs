namespace Cria.Tensors;

/// <summary>Tensor element/block types, numbered exactly as ggml numbers them in GGUF files.</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    // 4 and 5 (Q4_2, Q4_3) were removed from ggml.
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    // The i-quants. Cria reads and writes all of them (the lattice ones: QuantizeLattice).
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// <summary>Block geometry of each type: a row of n elements takes n / BlockSize blocks of BlockBytes bytes.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Super-block size of the K-quants.</summary>
    public const int QK_K = 256;

    public static bool IsKnown(GgmlType t) => t switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
            or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K
            or GgmlType.Q6_K or GgmlType.Q8_K or GgmlType.IQ4_NL or GgmlType.IQ4_XS or GgmlType.I8 or GgmlType.I16 or GgmlType.I32 or GgmlType.I64 or GgmlType.F64 => true,
        _ => IsLattice(t),
    };

    /// <summary>The lattice i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M): super-blocks of 256 whose
    /// groups of eight or four values are points of a fixed grid. Cria reads them (dequantization, Q8_K dot products)
    /// and writes them (<see cref="Quantize"/>, ggml's grid searches; <see cref="LatticeTable"/>).</summary>
    public static bool IsLattice(GgmlType t) => t is GgmlType.IQ2_XXS or GgmlType.IQ2_XS or GgmlType.IQ2_S or GgmlType.IQ3_XXS or GgmlType.IQ3_S or GgmlType.IQ1_S or GgmlType.IQ1_M;

    /// <summary>Elements per block (1 for plain element types).</summary>
    public static int BlockSize(GgmlType t) => t switch
    {
        GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q8_1 or GgmlType.IQ4_NL => 32,
        GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K or GgmlType.IQ4_XS => QK_K,
        _ => IsLattice(t) ? QK_K : 1,
    };

    /// <summary>Bytes per block (element size for plain types). Layouts follow ggml-common.h.</summary>
    public static int BlockBytes(GgmlType t) => t switch
    {
        GgmlType.F32 => 4,
        GgmlType.F16 => 2,
        GgmlType.BF16 => 2,
        GgmlType.F64 => 8,
        GgmlType.I8 => 1,
        GgmlType.I16 => 2,
        GgmlType.I32 => 4,
        GgmlType.I64 => 8,
        GgmlType.Q4_0 => 2 + 16,            // d (f16), qs[16]
        GgmlType.Q4_1 => 2 + 2 + 16,        // d, m, qs[16]
        GgmlType.Q5_0 => 2 + 4 + 16,        // d, qh[4], qs[16]
        GgmlType.Q5_1 => 2 + 2 + 4 + 16,    // d, m, qh[4], qs[16]
        GgmlType.Q8_0 => 2 + 32,            // d, qs[32]
        GgmlType.Q8_1 => 2 + 2 + 32,        // d, s, qs[32]
        GgmlType.Q2_K => 16 + 64 + 2 + 2,   // scales[16], qs[64], d, dmin
        GgmlType.Q3_K => 32 + 64 + 12 + 2,  // hmask[32], qs[64], scales[12], d
        GgmlType.Q4_K => 2 + 2 + 12 + 128,  // d, dmin, scales[12], qs[128]
        GgmlType.Q5_K => 2 + 2 + 12 + 32 + 128, // d, dmin, scales[12], qh[32], qs[128]
        GgmlType.Q6_K => 128 + 64 + 16 + 2, // ql[128], qh[64], scales[16], d
        GgmlType.Q8_K => 4 + 256 + 32,      // d (f32), qs[256], bsums[16] (i16)
        GgmlType.IQ4_NL => 2 + 16,          // d, qs[16] (indices into kvalues_iq4nl)
        GgmlType.IQ4_XS => 2 + 2 + 4 + 128, // d, scales_h (u16), scales_l[4], qs[128]
        GgmlType.IQ2_XXS => 2 + 64,         // d, qs[32] (u16)
        GgmlType.IQ2_XS => 2 + 64 + 8,      // d, qs[32] (u16), scales[8]
        GgmlType.IQ2_S => 2 + 64 + 8 + 8,   // d, qs[64] (indices, signs), qh[8], scales[8]
        GgmlType.IQ3_XXS => 2 + 96,         // d, qs[96] (indices[64], scales_and_signs[32])
        GgmlType.IQ3_S => 2 + 64 + 8 + 32 + 4, // d, qs[64], qh[8], signs[32], scales[4]
        GgmlType.IQ1_S => 2 + 32 + 16,      // d, qs[32], qh[8] (u16)
        GgmlType.IQ1_M => 32 + 16 + 8,      // qs[32], qh[16], scales[8] (the f16 scale in their top nibbles)
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "unknown ggml type"),
    };

    /// <summary>Bytes taken by a row of <paramref name="n"/> elements; n must be a multiple of the block size.</summary>
    public static long RowBytes(GgmlType t, long n) => n / BlockSize(t) * BlockBytes(t);
}
