using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Inference;

/// <summary>How the KV cache stores keys and values (llama.cpp's --cache-type-k/-v, plus KIVI).</summary>
public enum KvCacheType
{
    /// <summary>4 bytes per element; what the llama.cpp oracle tests run against.</summary>
    F32,
    /// <summary>2 bytes per element (llama.cpp's default KV type).</summary>
    F16,
    /// <summary>ggml Q8_0 blocks along each head row: 32 int8 + one F16 scale (8.5 bits per element).</summary>
    Q8_0,
    /// <summary>KIVI, 4 bits: keys per channel in groups of G tokens, values per token in groups of channels, min/max
    /// asymmetric, the most recent R tokens kept in F16.</summary>
    Kivi4,
    /// <summary>KIVI, 2 bits (see <see cref="Kivi4"/>).</summary>
    Kivi2,
}

/// <summary>Settings of the KV cache's storage format: type and, for KIVI, group size G and residual length R.</summary>
public sealed record KvFormat
{
    public KvCacheType Type { get; init; } = KvCacheType.F16;
    /// <summary>KIVI group size G (paper default 32): tokens per key group (per channel), channels per value group
    /// (capped at the head dimension). The cache's block size becomes G, so a key group is exactly one block.</summary>
    public int KiviGroup { get; init; } = 32;
    /// <summary>KIVI residual length R (paper default 128): recent tokens kept in full precision. A multiple of G.</summary>
    public int KiviResidual { get; init; } = 128;

    public static readonly KvFormat F32 = new() { Type = KvCacheType.F32 };
    public static readonly KvFormat F16 = new() { Type = KvCacheType.F16 };

    public bool IsKivi => Type is KvCacheType.Kivi4 or KvCacheType.Kivi2;
    public int KiviBits => Type switch { KvCacheType.Kivi4 => 4, KvCacheType.Kivi2 => 2, _ => 0 };

    public static KvCacheType Parse(string s) => s.ToLowerInvariant() switch
    {
        "f32" => KvCacheType.F32,
        "f16" => KvCacheType.F16,
        "q8_0" => KvCacheType.Q8_0,
        "kivi4" => KvCacheType.Kivi4,
        "kivi2" => KvCacheType.Kivi2,
        _ => throw new CriaException($"unknown KV cache type '{s}' (f32, f16, q8_0, kivi4, kivi2)"),
    };

    public static string Name(KvCacheType t) => t switch
    {
        KvCacheType.F32 => "f32", KvCacheType.F16 => "f16", KvCacheType.Q8_0 => "q8_0",
        KvCacheType.Kivi4 => "kivi4", KvCacheType.Kivi2 => "kivi2", _ => t.ToString(),
    };

    public override string ToString() => IsKivi ? $"{Name(Type)} (G={KiviGroup}, R={KiviResidual})" : Name(Type);
}

/// <summary>
/// KIVI's asymmetric min/max quantization of a group (Liu et al. 2024): scale = (max − min) / (2^b − 1),
/// code = round((x − min) / scale) clamped to [0, 2^b − 1], x̂ = code · scale + min; scale and min kept as F16
/// (the quantizer uses the F16-rounded scale and min, so what is decoded is what was fitted).
/// Codes are packed little-endian: code i at bit b·(i mod 8/b) of byte i·b/8.
/// </summary>
public static class Kivi
{
    /// <summary>Fits one group: writes b-bit codes of <paramref name="x"/> (read with <paramref name="stride"/>) and
    /// returns (scale, min) as F16 bits.</summary>
    public static (ushort Scale, ushort Min) QuantizeGroup(ReadOnlySpan<float> x, int count, int stride, int bits, Span<byte> codes)
    {
        float mn = float.PositiveInfinity, mx = float.NegativeInfinity;
        for (int i = 0; i < count; i++) { float v = x[i * stride]; mn = MathF.Min(mn, v); mx = MathF.Max(mx, v); }
        int maxCode = (1 << bits) - 1;
        ushort hMin = Fp16.FromSingle(mn), hScale = Fp16.FromSingle((mx - mn) / maxCode);
        QuantizeWith(x, count, stride, Fp16.ToSingle(hScale), Fp16.ToSingle(hMin), bits, codes);
        return (hScale, hMin);
    }

    /// <summary>b-bit codes of a group for a given (decoded) scale and min: round((x − min) / scale), clamped.</summary>
    public static void QuantizeWith(ReadOnlySpan<float> x, int count, int stride, float scale, float min, int bits, Span<byte> codes)
    {
        int maxCode = (1 << bits) - 1;
        float inv = scale > 0 ? 1f / scale : 0f;
        codes.Slice(0, (count * bits + 7) / 8).Clear();
        for (int i = 0; i < count; i++)
        {
            int q = (int)MathF.Round((x[i * stride] - min) * inv);
            q = Math.Clamp(q, 0, maxCode);
            codes[i * bits >> 3] |= (byte)(q << (i * bits & 7));
        }
    }

    // ---- key parameters, K-quant style (llama.cpp's Q4_K keeps 6-bit sub-block scales and mins under F16 super-scales)
    /// <summary>F16 super-parameters in front of the per-channel codes of one key block and KV head:
    /// [d, dm, mlo] = step of the scale codes, step of the min codes, base of the mins.</summary>
    public const int KeySuperParams = 3;

    /// <summary>
    /// Fits the per-channel (scale, min) of one key block (G tokens) and one KV head as 8-bit codes under F16
    /// super-parameters: min_c = mlo + m_c · dm and scale_c = s_c · d with m_c, s_c ∈ [0, 255], stored as
    /// <c>p = [d, dm, mlo, (s_0 | m_0 &lt;&lt; 8), (s_1 | m_1 &lt;&lt; 8), …]</c> (3 + channels ushorts; 2 bytes per channel
    /// instead of KIVI's 4). Each channel's range stays covered: the min code rounds down (min_c ≤ mn_c, mlo and dm
    /// rounded to F16 outward), then the scale code rounds up over [min_c, mx_c], so only the step grows, by at most
    /// one scale step d plus dm/(2^b − 1). <paramref name="mn"/>/<paramref name="mx"/>: each channel's min and max.
    /// </summary>
    public static void FitKeyParams(ReadOnlySpan<float> mn, ReadOnlySpan<float> mx, int bits, Span<ushort> p)
    {
        int n = mn.Length, maxCode = (1 << bits) - 1;
        float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
        for (int c = 0; c < n; c++) { lo = MathF.Min(lo, mn[c]); hi = MathF.Max(hi, mn[c]); }
        ushort hLo = F16AtMost(lo);
        float mlo = Fp16.ToSingle(hLo);
        ushort hDm = F16AtLeast((hi - mlo) / 255f);
        float dm = Fp16.ToSingle(hDm);
        Span<float> need = stackalloc float[n];
        float sMax = 0;
        for (int c = 0; c < n; c++)
        {
            int m = dm > 0 ? Math.Clamp((int)MathF.Floor((mn[c] - mlo) / dm), 0, 255) : 0;
            float min = m * dm + mlo;
            if (min > mn[c] && m > 0) { m--; min = m * dm + mlo; } // float rounding: keep min_c ≤ mn_c
            p[KeySuperParams + c] = (ushort)(m << 8);
            need[c] = MathF.Max(0, (mx[c] - min) / maxCode);
            sMax = MathF.Max(sMax, need[c]);
        }
        ushort hD = F16AtLeast(sMax / 255f);
        float d = Fp16.ToSingle(hD);
        for (int c = 0; c < n; c++)
        {
            int sc = d > 0 ? Math.Clamp((int)MathF.Ceiling(need[c] / d), 0, 255) : 0;
            if (sc < 255 && sc * d < need[c]) sc++; // float rounding: keep min_c + maxCode · scale_c ≥ mx_c
            p[KeySuperParams + c] |= (ushort)sc;
        }
        p[0] = hD; p[1] = hDm; p[2] = hLo;
    }

    /// <summary>Decodes <see cref="FitKeyParams"/>' codes: scale_c = s_c · d, min_c = m_c · dm + mlo.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void DecodeKeyParams(ReadOnlySpan<ushort> p, Span<float> scale, Span<float> min)
    {
        float d = Fp16.ToSingle(p[0]), dm = Fp16.ToSingle(p[1]), mlo = Fp16.ToSingle(p[2]);
        for (int c = 0; c < scale.Length; c++)
        {
            int code = p[KeySuperParams + c];
            scale[c] = (code & 0xFF) * d;
            min[c] = (code >> 8) * dm + mlo;
        }
    }

    /// <summary>The largest F16 ≤ x (x finite).</summary>
    static ushort F16AtMost(float x)
    {
        ushort h = Fp16.FromSingle(x);
        if (Fp16.ToSingle(h) <= x) return h;
        return (h & 0x8000) != 0 ? (ushort)(h + 1) : h == 0 ? (ushort)0x8001 : (ushort)(h - 1); // one F16 step down
    }

    /// <summary>The smallest F16 ≥ x (x ≥ 0, finite).</summary>
    static ushort F16AtLeast(float x)
    {
        ushort h = Fp16.FromSingle(x);
        return Fp16.ToSingle(h) >= x ? h : (ushort)(h + 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Code(ReadOnlySpan<byte> codes, int i, int bits) => codes[i * bits >> 3] >> (i * bits & 7) & ((1 << bits) - 1);

    /// <summary>Packs b-bit codes (each &lt; 2^b) into bytes.</summary>
    public static void Pack(ReadOnlySpan<byte> codes, int bits, Span<byte> packed)
    {
        packed.Slice(0, (codes.Length * bits + 7) / 8).Clear();
        for (int i = 0; i < codes.Length; i++) packed[i * bits >> 3] |= (byte)(codes[i] << (i * bits & 7));
    }

    /// <summary>Unpacks b-bit codes.</summary>
    public static void Unpack(ReadOnlySpan<byte> packed, int bits, Span<byte> codes)
    {
        for (int i = 0; i < codes.Length; i++) codes[i] = (byte)Code(packed, i, bits);
    }

    /// <summary>y[i] = code_i · scale[i] + min[i] for a row of codes starting at a byte boundary (keys: per-channel
    /// scale and min of the block). Eight codes at a time with AVX2 (variable shifts); the scalar loop is the reference
    /// and computes the same products and sums (no FMA), so both give identical floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void DequantizeRow(ReadOnlySpan<byte> codes, int bits, ReadOnlySpan<float> scale, ReadOnlySpan<float> min, Span<float> y)
    {
        int i = 0;
        if (Avx512F.IsSupported)
            for (; i + 16 <= y.Length; i += 16)
                (Codes16(codes, bits, i) * Vector512.Create(scale.Slice(i, 16)) + Vector512.Create(min.Slice(i, 16))).CopyTo(y.Slice(i, 16));
        if (Avx2.IsSupported)
            for (; i + 8 <= y.Length; i += 8)
                (Codes8(codes, bits, i) * Vector256.Create(scale.Slice(i, 8)) + Vector256.Create(min.Slice(i, 8))).CopyTo(y.Slice(i, 8));
        if (Vector128.IsHardwareAccelerated)
            for (; i + 4 <= y.Length; i += 4)
                (Codes4(codes, bits, i) * Vector128.Create(scale.Slice(i, 4)) + Vector128.Create(min.Slice(i, 4))).CopyTo(y.Slice(i, 4));
        for (; i < y.Length; i++) y[i] = Code(codes, i, bits) * scale[i] + min[i];
    }

    /// <summary>y[i] = code_i · scale + min (values: one scale and min per group of channels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void DequantizeRow(ReadOnlySpan<byte> codes, int bits, float scale, float min, Span<float> y)
    {
        int i = 0;
        if (Avx512F.IsSupported)
        {
            var s = Vector512.Create(scale); var m = Vector512.Create(min);
            for (; i + 16 <= y.Length; i += 16) (Codes16(codes, bits, i) * s + m).CopyTo(y.Slice(i, 16));
        }
        if (Avx2.IsSupported)
        {
            var s = Vector256.Create(scale); var m = Vector256.Create(min);
            for (; i + 8 <= y.Length; i += 8) (Codes8(codes, bits, i) * s + m).CopyTo(y.Slice(i, 8));
        }
        if (Vector128.IsHardwareAccelerated)
        {
            var s = Vector128.Create(scale); var m = Vector128.Create(min);
            for (; i + 4 <= y.Length; i += 4) (Codes4(codes, bits, i) * s + m).CopyTo(y.Slice(i, 4));
        }
        for (; i < y.Length; i++) y[i] = Code(codes, i, bits) * scale + min;
    }

    static readonly Vector256<uint> Shift2 = Vector256.Create(0u, 2, 4, 6, 8, 10, 12, 14);
    static readonly Vector256<uint> Shift4 = Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28);

    /// <summary>Codes i … i+15 (i a multiple of 16) as floats, as <see cref="Codes8"/> does eight.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Codes16(ReadOnlySpan<byte> codes, int bits, int i) =>
        Codes16(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(codes.Slice(i * bits / 8, 2 * bits)), bits);

    /// <summary>The 16 codes starting at byte <paramref name="p"/> as floats: 2 bits from one broadcast 32-bit word,
    /// 4 bits from two (lanes 0–7 the first word, 8–15 the second), shifted per lane and masked. The widening both
    /// <see cref="DequantizeRow(ReadOnlySpan{byte}, int, float, float, Span{float})"/> and the attention kernel's
    /// P·V on the codes use (constants written inline so AggressiveOptimization callers embed them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Codes16(ref byte p, int bits)
    {
        Vector512<uint> v;
        if (bits == 2)
            v = Avx512F.ShiftRightLogicalVariable(Vector512.Create(Unsafe.ReadUnaligned<uint>(ref p)),
                    Vector512.Create(0u, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)) & Vector512.Create(3u);
        else
            v = Avx512F.ShiftRightLogicalVariable(Vector512.Create(Vector256.Create(Unsafe.ReadUnaligned<uint>(ref p)), Vector256.Create(Unsafe.ReadUnaligned<uint>(ref Unsafe.Add(ref p, 4)))),
                    Vector512.Create(0u, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28)) & Vector512.Create(15u);
        return Vector512.ConvertToSingle(v.AsInt32());
    }

    /// <summary>Codes i … i+7 (i a multiple of 8) as floats: the 8·b bits broadcast, shifted per lane, masked.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Codes8(ReadOnlySpan<byte> codes, int bits, int i)
    {
        Vector256<uint> v;
        if (bits == 2) v = Avx2.ShiftRightLogicalVariable(Vector256.Create((uint)BinaryPrimitives.ReadUInt16LittleEndian(codes.Slice(i / 4))), Shift2) & Vector256.Create(3u);
        else v = Avx2.ShiftRightLogicalVariable(Vector256.Create(BinaryPrimitives.ReadUInt32LittleEndian(codes.Slice(i / 2))), Shift4) & Vector256.Create(15u);
        return Vector256.ConvertToSingle(v.AsInt32());
    }

    /// <summary>The 8 codes starting at byte <paramref name="p"/> as floats (<see cref="Codes16(ref byte, int)"/>'s
    /// eight-lane twin for the attention kernel's P·V on the codes without AVX-512).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Codes8(ref byte p, int bits)
    {
        Vector256<uint> v;
        if (bits == 2)
            v = Avx2.ShiftRightLogicalVariable(Vector256.Create((uint)Unsafe.ReadUnaligned<ushort>(ref p)), Vector256.Create(0u, 2, 4, 6, 8, 10, 12, 14)) & Vector256.Create(3u);
        else
            v = Avx2.ShiftRightLogicalVariable(Vector256.Create(Unsafe.ReadUnaligned<uint>(ref p)), Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28)) & Vector256.Create(15u);
        return Vector256.ConvertToSingle(v.AsInt32());
    }

    /// <summary>Codes i … i+3 (i a multiple of 4) as floats, as <see cref="Codes4(ref byte, int)"/> does them.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Codes4(ReadOnlySpan<byte> codes, int bits, int i) =>
        Codes4(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(codes.Slice(i * bits / 8, bits / 2)), bits);

    /// <summary>The 4 codes starting at byte <paramref name="p"/> as floats, with 128-bit vectors only (ARM64, x86
    /// without AVX2, which have no per-lane shifts in common): the 4·b bits broadcast, lane k masked to its code's bits
    /// (b·k up), converted, and scaled down by 2^−b·k — exact, so the same floats as <see cref="Codes8(ref byte, int)"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> Codes4(ref byte p, int bits)
    {
        if (bits == 2)
            return Vector128.ConvertToSingle((Vector128.Create((uint)p) & Vector128.Create(0x3u, 0xC, 0x30, 0xC0)).AsInt32())
                 * Vector128.Create(1f, 1f / 4, 1f / 16, 1f / 64);
        return Vector128.ConvertToSingle((Vector128.Create((uint)Unsafe.ReadUnaligned<ushort>(ref p)) & Vector128.Create(0xFu, 0xF0, 0xF00, 0xF000)).AsInt32())
             * Vector128.Create(1f, 1f / 16, 1f / 256, 1f / 4096);
    }

    /// <summary>Reference dequantization of one group.</summary>
    public static void DequantizeGroup(ReadOnlySpan<byte> codes, int count, int bits, ushort scale, ushort min, Span<float> y)
    {
        float s = Fp16.ToSingle(scale), m = Fp16.ToSingle(min);
        for (int i = 0; i < count; i++) y[i] = Code(codes, i, bits) * s + m;
    }

    /// <summary>
    /// KIVI's streaming rule as seen by the query at position p (KIVI's LlamaAttention_KIVI: keys are flushed to the
    /// quantized cache R at a time once the full-precision part reaches R tokens, after the step's attention; values
    /// one at a time once more than R are held). Keys at positions &lt; this are read quantized.
    /// </summary>
    public static int QuantizedKeyEnd(int p, int residual) => p / residual * residual;

    /// <summary>Values at positions &lt; this are read quantized by the query at position p (R + 1 in full precision).</summary>
    public static int QuantizedValueEnd(int p, int residual) => Math.Max(0, p - residual);
}
