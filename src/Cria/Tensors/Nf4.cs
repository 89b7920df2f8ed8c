namespace Cria.Tensors;

/// <summary>
/// QLoRA's 4-bit NormalFloat (Dettmers et al. 2023): blocks of 64 weights, each scaled by its absolute maximum and
/// rounded to the nearest of 16 levels that are quantiles of a standard normal (so each level is equally likely for
/// normally distributed weights), with zero exact. With double quantization the blocks' absmax values are themselves
/// quantized: their mean is subtracted and the rest stored as 8-bit floats (E4M3) in groups of 256, each group with
/// one F32 scale — 4 + 8/64 + 32/(64·256) = 4.127 bits per weight.
/// <para>Not a GGUF type: Cria keeps a LoRA run's frozen base in it (<c>train --qlora</c>). The layout follows
/// bitsandbytes (element 2i in the high nibble of byte i, level index = code); bitsandbytes stores the second-level
/// codes with its own dynamic 8-bit map where this uses E4M3, the paper's "8-bit floats", so the bytes of the absmax
/// codes differ from bitsandbytes's.</para>
/// </summary>
public sealed class Nf4Tensor
{
    public const int BlockSize = 64;
    public const int GroupSize = 256; // absmax values per second-level group (double quantization)

    /// <summary>The 16 NF4 levels (bitsandbytes' table), ascending; code c decodes to Levels[c]·absmax.</summary>
    public static ReadOnlySpan<float> Levels =>
    [
        -1f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1f,
    ];

    public long Count { get; }
    /// <summary>[⌈Count/2⌉] two codes per byte, element 2i in the high nibble.</summary>
    public byte[] Codes { get; }
    /// <summary>[blocks] absmax per block, F32 (without double quantization; empty otherwise).</summary>
    public float[] Absmax { get; }
    /// <summary>[blocks] E4M3 codes of absmax − <see cref="AbsmaxOffset"/> (double quantization; empty otherwise).</summary>
    public byte[] AbsmaxCodes { get; }
    /// <summary>[⌈blocks/256⌉] scale of each group of absmax codes: value = E4M3(code)·scale + offset.</summary>
    public float[] GroupScales { get; }
    public float AbsmaxOffset { get; }
    public bool DoubleQuantized => AbsmaxCodes.Length > 0;

    /// <summary>Storage in bytes (codes and scales).</summary>
    public long Bytes => Codes.Length + 4L * Absmax.Length + AbsmaxCodes.Length + 4L * GroupScales.Length + (DoubleQuantized ? 4 : 0);

    Nf4Tensor(long count, byte[] codes, float[] absmax, byte[] absmaxCodes, float[] groupScales, float offset)
    {
        Count = count; Codes = codes; Absmax = absmax; AbsmaxCodes = absmaxCodes; GroupScales = groupScales; AbsmaxOffset = offset;
    }

    /// <summary>Quantizes <paramref name="x"/> (any length; the last block may be short).</summary>
    public static Nf4Tensor Quantize(ReadOnlySpan<float> x, bool doubleQuant)
    {
        long n = x.Length;
        int blocks = (int)((n + BlockSize - 1) / BlockSize);
        var absmax = new float[blocks];
        var codes = new byte[(n + 1) / 2];
        for (int b = 0; b < blocks; b++)
        {
            var xb = x.Slice(b * BlockSize, (int)Math.Min(BlockSize, n - (long)b * BlockSize));
            float m = 0;
            for (int i = 0; i < xb.Length; i++)
            {
                if (!float.IsFinite(xb[i])) throw new CriaException($"NF4: weight {(long)b * BlockSize + i} is {xb[i]}");
                m = MathF.Max(m, MathF.Abs(xb[i]));
            }
            absmax[b] = m;
            float inv = m > 0 ? 1f / m : 0f;
            for (int i = 0; i < xb.Length; i++)
            {
                long at = (long)b * BlockSize + i;
                int c = Nearest(xb[i] * inv);
                codes[at >> 1] |= (byte)((at & 1) == 0 ? c << 4 : c);
            }
        }
        if (!doubleQuant) return new Nf4Tensor(n, codes, absmax, [], [], 0f);

        // Double quantization (bitsandbytes' compress_statistics): subtract the mean, then 8-bit floats per group of 256.
        double sum = 0;
        foreach (float a in absmax) sum += a;
        float offset = blocks > 0 ? (float)(sum / blocks) : 0f;
        int groups = (blocks + GroupSize - 1) / GroupSize;
        var scales = new float[groups];
        var aCodes = new byte[blocks];
        for (int g = 0; g < groups; g++)
        {
            int b0 = g * GroupSize, b1 = Math.Min(blocks, b0 + GroupSize);
            float m = 0;
            for (int b = b0; b < b1; b++) m = MathF.Max(m, MathF.Abs(absmax[b] - offset));
            float scale = m / Fp8E4M3.Max;
            scales[g] = scale;
            for (int b = b0; b < b1; b++) aCodes[b] = scale > 0 ? Fp8E4M3.FromSingle((absmax[b] - offset) / scale) : (byte)0;
        }
        return new Nf4Tensor(n, codes, [], aCodes, scales, offset);
    }

    /// <summary>Index of the level nearest to <paramref name="v"/> (|v| ≤ 1); a tie goes to the upper level.</summary>
    public static int Nearest(float v)
    {
        var levels = Levels;
        int c = 0;
        while (c < 15 && v >= 0.5f * (levels[c] + levels[c + 1])) c++;
        return c;
    }

    /// <summary>Absmax of block <paramref name="b"/> as the dequantizer uses it (after double quantization, if any).</summary>
    public float BlockAbsmax(int b) => DoubleQuantized
        ? Fp8E4M3.ToSingle(AbsmaxCodes[b]) * GroupScales[b / GroupSize] + AbsmaxOffset
        : Absmax[b];

    /// <summary>Decodes elements [start, start + dst.Length) into <paramref name="dst"/>.</summary>
    public void Dequantize(long start, Span<float> dst)
    {
        if (start < 0 || start + dst.Length > Count) throw new ArgumentOutOfRangeException(nameof(start), $"elements [{start}, {start + dst.Length}) of {Count}");
        var levels = Levels;
        long i = start, end = start + dst.Length;
        while (i < end)
        {
            int b = (int)(i / BlockSize);
            long blockEnd = Math.Min(end, (long)(b + 1) * BlockSize);
            float a = BlockAbsmax(b);
            for (; i < blockEnd; i++)
            {
                int code = (i & 1) == 0 ? Codes[i >> 1] >> 4 : Codes[i >> 1] & 15;
                dst[(int)(i - start)] = levels[code] * a;
            }
        }
    }
}

/// <summary>
/// 8-bit float E4M3 (OCP FP8 "E4M3FN": 1 sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, the largest
/// finite value is 448, S.1111.111 is NaN). Encoding rounds to the nearest value, ties to even, and saturates at ±448.
/// </summary>
public static class Fp8E4M3
{
    public const float Max = 448f;
    static readonly float[] Table = Build();

    static float[] Build()
    {
        var t = new float[256];
        for (int c = 0; c < 256; c++) t[c] = Compute((byte)c);
        return t;
    }

    static float Compute(byte c)
    {
        int sign = c >> 7, e = (c >> 3) & 15, m = c & 7;
        if (e == 15 && m == 7) return float.NaN;
        float v = e == 0 ? m / 8f * MathF.Pow(2, -6) : (1 + m / 8f) * MathF.Pow(2, e - 7);
        return sign != 0 ? -v : v;
    }

    public static float ToSingle(byte c) => Table[c];

    public static byte FromSingle(float v)
    {
        if (float.IsNaN(v)) throw new ArgumentException("NaN has no E4M3 code here");
        byte sign = (byte)(v < 0 || (v == 0 && float.IsNegative(v)) ? 0x80 : 0);
        float a = MathF.Min(MathF.Abs(v), Max);
        // Positive codes 0..126 are ascending: binary search for the last code ≤ a, then pick the nearer neighbour.
        int lo = 0, hi = 126;
        while (lo < hi)
        {
            int mid = (lo + hi + 1) >> 1;
            if (Table[mid] <= a) lo = mid; else hi = mid - 1;
        }
        int c = lo;
        if (c < 126)
        {
            float below = a - Table[c], above = Table[c + 1] - a;
            if (above < below || (above == below && (c & 1) == 1)) c++;
        }
        return (byte)(sign | c);
    }
}
