using System.Runtime.Intrinsics;

namespace Cria.Tensors;

/// <summary>
/// Vectorized decoders for the formats a frozen training base is kept in (QLoRA), each bit-identical to its scalar
/// reference (<see cref="Dequantize.Row"/>, <see cref="Nf4Tensor.Dequantize"/>): the same products and differences in
/// the same order, no fused multiply-add. Other types fall back to the reference.
/// </summary>
public static unsafe class DequantizeVector
{
    /// <summary>Decodes <paramref name="dst"/>.Length elements of <paramref name="type"/>, as <see cref="Dequantize.Row"/>.</summary>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        delegate*<byte*, float*, void> block = type switch { GgmlType.Q4_K => &Q4_K, GgmlType.Q6_K => &Q6_K, _ => null };
        if (block == null || !Vector256.IsHardwareAccelerated) { Dequantize.Row(type, src, dst); return; }
        Dequantize.CheckRow(type, src.Length, dst.Length, nameof(src));
        int bytes = GgmlTypeInfo.BlockBytes(type), n = GgmlTypeInfo.BlockSize(type); // 256 elements per K block
        fixed (byte* s = src) fixed (float* y = dst)
            for (int i = 0; i < dst.Length / n; i++) block(s + (long)bytes * i, y + (long)n * i);
    }

    // block_q4_K (144 B), as Dequantize.Q4_K: chunk c's 32 bytes hold sub-block 2c in their low nibbles and 2c + 1 in
    // their high nibbles; element = d·sc·q − dmin·m, the two factors formed first.
    static void Q4_K(byte* b, float* y)
    {
        float d = Fp16.ToSingle(*(ushort*)b), min = Fp16.ToSingle(*(ushort*)(b + 2));
        var scales = new ReadOnlySpan<byte>(b + 4, 12);
        for (int c = 0; c < 4; c++)
        {
            Dequantize.ScaleMinK4(2 * c, scales, out int sc, out int m);
            float d1 = d * sc, m1 = min * m;
            Dequantize.ScaleMinK4(2 * c + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            var q = Vector256.Load(b + 16 + 32 * c);
            Affine(q & Vector256.Create((byte)0x0F), d1, m1, y + 64 * c);
            Affine(Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & Vector256.Create((byte)0x0F), d2, m2, y + 64 * c + 32);
        }
    }

    // block_q6_K (210 B), as Dequantize.Q6_K: ql[128] | qh[64] | scales[16] int8 | d f16. Per half h (128 elements),
    // byte l of ql (and l + 32) and of qh give four 6-bit codes, for elements l, l + 32, l + 64, l + 96; element =
    // (d·scale)·(code − 32), a scale per 16 elements.
    static void Q6_K(byte* b, float* y)
    {
        float d = Fp16.ToSingle(*(ushort*)(b + 208));
        var low4 = Vector256.Create((byte)0x0F);
        var low2 = Vector256.Create((byte)0x03);
        for (int h = 0; h < 2; h++)
        {
            byte* ql = b + 64 * h, qh = b + 128 + 32 * h;
            sbyte* sc = (sbyte*)(b + 192 + 8 * h);
            float* o = y + 128 * h;
            var a = Vector256.Load(ql);
            var c = Vector256.Load(ql + 32);
            var hi = Vector256.Load(qh);
            Scaled(a & low4 | Vector256.ShiftLeft((hi & low2).AsUInt16(), 4).AsByte(), d * sc[0], d * sc[1], o);
            Scaled(c & low4 | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hi.AsUInt16(), 2).AsByte() & low2).AsUInt16(), 4).AsByte(), d * sc[2], d * sc[3], o + 32);
            Scaled(Vector256.ShiftRightLogical(a.AsUInt16(), 4).AsByte() & low4 | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hi.AsUInt16(), 4).AsByte() & low2).AsUInt16(), 4).AsByte(), d * sc[4], d * sc[5], o + 64);
            Scaled(Vector256.ShiftRightLogical(c.AsUInt16(), 4).AsByte() & low4 | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hi.AsUInt16(), 6).AsByte() & low2).AsUInt16(), 4).AsByte(), d * sc[6], d * sc[7], o + 96);
        }
    }

    /// <summary>y[i] = s·(q[i] − 32) for 32 six-bit codes, s = s0 for the first 16 and s1 for the rest.</summary>
    static void Scaled(Vector256<byte> q, float s0, float s1, float* y)
    {
        var v0 = Vector256.Create(s0);
        var v1 = Vector256.Create(s1);
        var off = Vector256.Create(32f);
        var (lo, hi) = Vector256.Widen(q);
        var (q0, q1) = Vector256.Widen(lo);
        var (q2, q3) = Vector256.Widen(hi);
        (v0 * (Vector256.ConvertToSingle(q0.AsInt32()) - off)).Store(y);
        (v0 * (Vector256.ConvertToSingle(q1.AsInt32()) - off)).Store(y + 8);
        (v1 * (Vector256.ConvertToSingle(q2.AsInt32()) - off)).Store(y + 16);
        (v1 * (Vector256.ConvertToSingle(q3.AsInt32()) - off)).Store(y + 24);
    }

    /// <summary>y[i] = a·q[i] − m for 32 byte codes.</summary>
    static void Affine(Vector256<byte> q, float a, float m, float* y)
    {
        var va = Vector256.Create(a);
        var vm = Vector256.Create(m);
        var (lo, hi) = Vector256.Widen(q);
        var (q0, q1) = Vector256.Widen(lo);
        var (q2, q3) = Vector256.Widen(hi);
        (Vector256.ConvertToSingle(q0.AsInt32()) * va - vm).Store(y);
        (Vector256.ConvertToSingle(q1.AsInt32()) * va - vm).Store(y + 8);
        (Vector256.ConvertToSingle(q2.AsInt32()) * va - vm).Store(y + 16);
        (Vector256.ConvertToSingle(q3.AsInt32()) * va - vm).Store(y + 24);
    }

    // Both NF4 levels of each byte (high nibble first, as the codes are packed): [256 · 2].
    static readonly float[] Nf4Pairs = BuildPairs();

    static float[] BuildPairs()
    {
        var t = new float[512];
        for (int b = 0; b < 256; b++) { t[2 * b] = Nf4Tensor.Levels[b >> 4]; t[2 * b + 1] = Nf4Tensor.Levels[b & 15]; }
        return t;
    }

    /// <summary>Elements [start, start + dst.Length) of <paramref name="q"/>, as <see cref="Nf4Tensor.Dequantize"/>: a
    /// byte's two levels come from one table entry; whole blocks are scaled by absmax eight at a time.</summary>
    public static void Nf4(Nf4Tensor q, long start, Span<float> dst)
    {
        const int B = Nf4Tensor.BlockSize;
        long end = start + dst.Length;
        if (start < 0 || end > q.Count) throw new ArgumentOutOfRangeException(nameof(start), $"elements [{start}, {end}) of {q.Count}");
        long i = start;
        fixed (float* y0 = dst) fixed (float* pairs = Nf4Pairs) fixed (byte* codes = q.Codes)
        {
            while (i < end)
            {
                int b = (int)(i / B);
                long blockStart = (long)b * B, blockEnd = Math.Min(end, blockStart + B);
                float a = q.BlockAbsmax(b);
                float* y = y0 + (i - start);
                if (i == blockStart && blockEnd == blockStart + B && Vector256.IsHardwareAccelerated)
                {
                    byte* c = codes + blockStart / 2;
                    for (int k = 0; k < B / 2; k++) ((long*)y)[k] = ((long*)pairs)[c[k]];
                    var va = Vector256.Create(a);
                    for (int k = 0; k < B; k += 8) (Vector256.Load(y + k) * va).Store(y + k);
                    i = blockEnd;
                    continue;
                }
                for (; i < blockEnd; i++) // a partial block: the reference's arithmetic
                {
                    int code = (i & 1) == 0 ? codes[i >> 1] >> 4 : codes[i >> 1] & 15;
                    y0[i - start] = Nf4Tensor.Levels[code] * a;
                }
            }
        }
    }
}
