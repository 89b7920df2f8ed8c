using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Cria.Kernels;

/// <summary>
/// The element-wise and reduction operations of the forward pass, each over one row. They compute the same sums in
/// the same order whatever the batch, so a row's result never depends on which other rows share the step.
/// </summary>
public static class Ops
{
    /// <summary>y = x / sqrt(mean(x²) + eps) · w, as ggml_rms_norm then ggml_mul (sum of squares in double).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, Span<float> y)
    {
        double sum = 0;
        for (int i = 0; i < x.Length; i++) sum += (double)(x[i] * x[i]);
        float mean = (float)(sum / x.Length);
        float scale = 1.0f / MathF.Sqrt(mean + eps);
        int j = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float pw = ref MemoryMarshal.GetReference(w);
            ref float py = ref MemoryMarshal.GetReference(y);
            var vs = Vector512.Create(scale);
            for (; j + 16 <= x.Length; j += 16) // (x·scale)·w per lane: the scalar loop's operations
                (Vector512.LoadUnsafe(ref px, (nuint)j) * vs * Vector512.LoadUnsafe(ref pw, (nuint)j)).StoreUnsafe(ref py, (nuint)j);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float pw = ref MemoryMarshal.GetReference(w);
            ref float py = ref MemoryMarshal.GetReference(y);
            var vs = Vector256.Create(scale);
            for (; j + 8 <= x.Length; j += 8)
                (Vector256.LoadUnsafe(ref px, (nuint)j) * vs * Vector256.LoadUnsafe(ref pw, (nuint)j)).StoreUnsafe(ref py, (nuint)j);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float pw = ref MemoryMarshal.GetReference(w);
            ref float py = ref MemoryMarshal.GetReference(y);
            var vs = Vector128.Create(scale);
            for (; j + 4 <= x.Length; j += 4)
                (Vector128.LoadUnsafe(ref px, (nuint)j) * vs * Vector128.LoadUnsafe(ref pw, (nuint)j)).StoreUnsafe(ref py, (nuint)j);
        }
        for (; j < x.Length; j++) y[j] = x[j] * scale * w[j];
    }

    // e^x in float (Cephes' expf): n = round(x·log2 e), r = x − n·ln 2 in two parts, e^r by a degree-6 polynomial,
    // times 2^n through the exponent bits. Within 2 ulp of e^x for x in [−87, 88]; 0 below −88 (exp there is below
    // float's smallest normal), x clamped to 88 above. NaN in gives NaN out.
    const float ExpLo = -88f, ExpHi = 88f, Log2E = 1.44269504088896341f, Ln2Hi = 0.693359375f, Ln2Lo = -2.12194440e-4f;
    const float ExpP0 = 1.9875691500e-4f, ExpP1 = 1.3981999507e-3f, ExpP2 = 8.3334519073e-3f, ExpP3 = 4.1665795894e-2f,
                ExpP4 = 1.6666665459e-1f, ExpP5 = 5.0000001201e-1f;

    /// <summary>e^x, eight lanes (AVX2 + FMA): the operations of <see cref="ExpScalar"/> in each lane, so a value gives
    /// the same bits whether it lands in a vector or in a scalar tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Exp(Vector256<float> x)
    {
        x = Avx.Min(Vector256.Create(ExpHi), Avx.Max(Vector256.Create(ExpLo), x)); // NaN stays NaN: min/max return their second operand
        var n = Avx.RoundToNearestInteger(x * Vector256.Create(Log2E));
        var r = Fma.MultiplyAddNegated(n, Vector256.Create(Ln2Hi), x);
        r = Fma.MultiplyAddNegated(n, Vector256.Create(Ln2Lo), r);
        var p = Fma.MultiplyAdd(Vector256.Create(ExpP0), r, Vector256.Create(ExpP1));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(ExpP2));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(ExpP3));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(ExpP4));
        p = Fma.MultiplyAdd(p, r, Vector256.Create(ExpP5));
        var y = Fma.MultiplyAdd(p, r * r, r) + Vector256<float>.One;
        var pow2n = Avx2.ShiftLeftLogical(Avx.ConvertToVector256Int32WithTruncation(n) + Vector256.Create(127), 23).AsSingle(); // n = −127 → 0
        return y * pow2n;
    }

    /// <summary>e^x, four lanes, on any machine with 128-bit vectors (the portable tier): the operations of
    /// <see cref="Exp(Vector256{float})"/>, each multiply-add through <typeparamref name="TMac"/>, so the lanes equal
    /// <see cref="ExpScalar{TMac}"/> bit for bit (and, fused, <see cref="ExpScalar(float)"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> Exp<TMac>(Vector128<float> x) where TMac : IMulAdd
    {
        x = Vector128.Min(Vector128.Create(ExpHi), Vector128.Max(Vector128.Create(ExpLo), x)); // IEEE min/max: NaN stays NaN
        var n = Vector128.Round(x * Vector128.Create(Log2E));
        var r = TMac.Apply(-n, Vector128.Create(Ln2Hi), x);
        r = TMac.Apply(-n, Vector128.Create(Ln2Lo), r);
        var p = TMac.Apply(Vector128.Create(ExpP0), r, Vector128.Create(ExpP1));
        p = TMac.Apply(p, r, Vector128.Create(ExpP2));
        p = TMac.Apply(p, r, Vector128.Create(ExpP3));
        p = TMac.Apply(p, r, Vector128.Create(ExpP4));
        p = TMac.Apply(p, r, Vector128.Create(ExpP5));
        var y = TMac.Apply(p, r * r, r) + Vector128<float>.One;
        var pow2n = ((Vector128.ConvertToInt32(n) + Vector128.Create(127)) << 23).AsSingle(); // n = −127 → 0
        return y * pow2n;
    }

    /// <summary>Scalar reference of <see cref="Exp(Vector256{float})"/>: the same operations, bit for bit.</summary>
    internal static float ExpScalar(float x) => ExpScalar<FusedMulAdd>(x);

    /// <summary>Scalar reference of <see cref="Exp{TMac}(Vector128{float})"/>.</summary>
    internal static float ExpScalar<TMac>(float x) where TMac : IMulAdd
    {
        x = float.IsNaN(x) ? x : MathF.Min(ExpHi, MathF.Max(ExpLo, x));
        float n = MathF.Round(x * Log2E, MidpointRounding.ToEven);
        float r = TMac.Apply(-n, Ln2Hi, x);
        r = TMac.Apply(-n, Ln2Lo, r);
        float p = TMac.Apply(ExpP0, r, ExpP1);
        p = TMac.Apply(p, r, ExpP2);
        p = TMac.Apply(p, r, ExpP3);
        p = TMac.Apply(p, r, ExpP4);
        p = TMac.Apply(p, r, ExpP5);
        float y = TMac.Apply(p, r * r, r) + 1f;
        return float.IsNaN(x) ? x : y * BitConverter.Int32BitsToSingle(((int)n + 127) << 23);
    }

    /// <summary>Dot product of two float vectors (Vector256 lanes, then a fixed-order horizontal sum and scalar tail).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        int n = a.Length, i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            ref float pa = ref MemoryMarshal.GetReference(a);
            ref float pb = ref MemoryMarshal.GetReference(b);
            var acc0 = Vector256<float>.Zero; var acc1 = Vector256<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)i), Vector256.LoadUnsafe(ref pb, (nuint)i), acc0);
                acc1 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)i + 8), Vector256.LoadUnsafe(ref pb, (nuint)i + 8), acc1);
            }
            for (; i + 8 <= n; i += 8)
                acc0 = Vector256.FusedMultiplyAdd(Vector256.LoadUnsafe(ref pa, (nuint)i), Vector256.LoadUnsafe(ref pb, (nuint)i), acc0);
            sum = Vector256.Sum(acc0 + acc1);
        }
        else if (MulAdd.Portable && n >= 4)
            return MulAdd.Fused ? DotPortable<FusedMulAdd>(a, b) : DotPortable<SplitMulAdd>(a, b);
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary><see cref="Dot"/> on 128-bit vectors (two 4-lane accumulators, then the scalar tail).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float DotPortable<TMac>(ReadOnlySpan<float> a, ReadOnlySpan<float> b) where TMac : IMulAdd
    {
        int n = a.Length, i = 0;
        ref float pa = ref MemoryMarshal.GetReference(a);
        ref float pb = ref MemoryMarshal.GetReference(b);
        var acc0 = Vector128<float>.Zero; var acc1 = Vector128<float>.Zero;
        for (; i + 8 <= n; i += 8)
        {
            acc0 = TMac.Apply(Vector128.LoadUnsafe(ref pa, (nuint)i), Vector128.LoadUnsafe(ref pb, (nuint)i), acc0);
            acc1 = TMac.Apply(Vector128.LoadUnsafe(ref pa, (nuint)i + 4), Vector128.LoadUnsafe(ref pb, (nuint)i + 4), acc1);
        }
        for (; i + 4 <= n; i += 4)
            acc0 = TMac.Apply(Vector128.LoadUnsafe(ref pa, (nuint)i), Vector128.LoadUnsafe(ref pb, (nuint)i), acc0);
        float sum = Vector128.Sum(acc0 + acc1);
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>dᵀ G d for a row-major square G ([n, n]) and d ([n]): Σ_i d_i · (G_i · d), rows by <see cref="Dot"/>,
    /// summed in double — a quantized row's calibration output error (GPTQ, AWQ).</summary>
    public static double QuadraticForm(ReadOnlySpan<float> gram, ReadOnlySpan<float> d)
    {
        int n = d.Length;
        double e = 0;
        for (int i = 0; i < n; i++) e += d[i] * (double)Dot(gram.Slice(i * n, n), d);
        return e;
    }

    /// <summary>y += a · x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Axpy(float a, ReadOnlySpan<float> x, Span<float> y)
    {
        int n = x.Length, i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            var va = Vector256.Create(a);
            for (; i + 8 <= n; i += 8)
                Vector256.FusedMultiplyAdd(va, Vector256.LoadUnsafe(ref px, (nuint)i), Vector256.LoadUnsafe(ref py, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        else if (MulAdd.Portable)
        {
            if (MulAdd.Fused) AxpyPortable<FusedMulAdd>(a, x, y);
            else AxpyPortable<SplitMulAdd>(a, x, y);
            return;
        }
        for (; i < n; i++) y[i] = MathF.FusedMultiplyAdd(a, x[i], y[i]);
    }

    /// <summary><see cref="Axpy"/> on 128-bit vectors, each lane and the scalar tail through <typeparamref name="TMac"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void AxpyPortable<TMac>(float a, ReadOnlySpan<float> x, Span<float> y) where TMac : IMulAdd
    {
        int n = x.Length, i = 0;
        ref float px = ref MemoryMarshal.GetReference(x);
        ref float py = ref MemoryMarshal.GetReference(y);
        var va = Vector128.Create(a);
        for (; i + 4 <= n; i += 4)
            TMac.Apply(va, Vector128.LoadUnsafe(ref px, (nuint)i), Vector128.LoadUnsafe(ref py, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        for (; i < n; i++) y[i] = TMac.Apply(a, x[i], y[i]);
    }

    /// <summary>log Σ exp(x), in double after subtracting the maximum: p_t = exp(x_t − LogSumExp(x)).</summary>
    public static double LogSumExp(ReadOnlySpan<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) max = MathF.Max(max, v);
        double z = 0;
        foreach (float v in x) z += Math.Exp(v - max);
        return max + Math.Log(z);
    }

    /// <summary>Σ x in double (eight lanes widened to two vectors of doubles, then the scalar tail): a float sum of a
    /// whole vocabulary's probabilities is ~1e-6 off in eight lanes, which a softmax passes to its largest probabilities.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static double SumDouble(ReadOnlySpan<float> x)
    {
        int i = 0, n = x.Length;
        double sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            Vector256<double> acc0 = Vector256<double>.Zero, acc1 = Vector256<double>.Zero;
            for (; i + 8 <= n; i += 8)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref px, (nuint)i));
                acc0 += lo; acc1 += hi;
            }
            sum = Vector256.Sum(acc0 + acc1);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            Vector128<double> acc0 = Vector128<double>.Zero, acc1 = Vector128<double>.Zero;
            for (; i + 4 <= n; i += 4)
            {
                var (lo, hi) = Vector128.Widen(Vector128.LoadUnsafe(ref px, (nuint)i));
                acc0 += lo; acc1 += hi;
            }
            sum = Vector128.Sum(acc0 + acc1);
        }
        for (; i < n; i++) sum += x[i];
        return sum;
    }

    /// <summary>y = x / a, lane by lane a true division (x · (1/a) can be an ulp off, which a softmax's exponent turns into
    /// a relative error of |x| ulp: the sampler's temperature divides as llama.cpp's does).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Divide(ReadOnlySpan<float> x, float a, Span<float> y)
    {
        int i = 0, n = x.Length;
        if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            var va = Vector256.Create(a);
            for (; i + 8 <= n; i += 8) (Vector256.LoadUnsafe(ref px, (nuint)i) / va).StoreUnsafe(ref py, (nuint)i);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            var va = Vector128.Create(a);
            for (; i + 4 <= n; i += 4) (Vector128.LoadUnsafe(ref px, (nuint)i) / va).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < n; i++) y[i] = x[i] / a;
    }

    /// <summary>y = a · x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Scale(ReadOnlySpan<float> x, float a, Span<float> y)
    {
        int i = 0, n = x.Length;
        if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            var va = Vector256.Create(a);
            for (; i + 8 <= n; i += 8) (va * Vector256.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            var va = Vector128.Create(a);
            for (; i + 4 <= n; i += 4) (va * Vector128.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < n; i++) y[i] = a * x[i];
    }

    /// <summary>y += x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Add(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            for (; i + 16 <= x.Length; i += 16)
                (Vector512.LoadUnsafe(ref py, (nuint)i) + Vector512.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            for (; i + 8 <= x.Length; i += 8)
                (Vector256.LoadUnsafe(ref py, (nuint)i) + Vector256.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float px = ref MemoryMarshal.GetReference(x);
            ref float py = ref MemoryMarshal.GetReference(y);
            for (; i + 4 <= x.Length; i += 4)
                (Vector128.LoadUnsafe(ref py, (nuint)i) + Vector128.LoadUnsafe(ref px, (nuint)i)).StoreUnsafe(ref py, (nuint)i);
        }
        for (; i < x.Length; i++) y[i] += x[i];
    }

    /// <summary>g = silu(g) · u, with silu(x) = x / (1 + e^-x) (SwiGLU); 16, 8 or 4 lanes at a time, scalar tail.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SwiGlu(Span<float> g, ReadOnlySpan<float> u)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            ref float pg = ref MemoryMarshal.GetReference(g);
            ref float pu = ref MemoryMarshal.GetReference(u);
            var one = Vector512.Create(1f);
            for (; i + 16 <= g.Length; i += 16)
            {
                var x = Vector512.LoadUnsafe(ref pg, (nuint)i);
                (x / (one + Vector512.Exp(-x)) * Vector512.LoadUnsafe(ref pu, (nuint)i)).StoreUnsafe(ref pg, (nuint)i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            ref float pg = ref MemoryMarshal.GetReference(g);
            ref float pu = ref MemoryMarshal.GetReference(u);
            var one = Vector256.Create(1f);
            for (; i + 8 <= g.Length; i += 8)
            {
                var x = Vector256.LoadUnsafe(ref pg, (nuint)i);
                (x / (one + Vector256.Exp(-x)) * Vector256.LoadUnsafe(ref pu, (nuint)i)).StoreUnsafe(ref pg, (nuint)i);
            }
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            ref float pg = ref MemoryMarshal.GetReference(g);
            ref float pu = ref MemoryMarshal.GetReference(u);
            var one = Vector128.Create(1f);
            for (; i + 4 <= g.Length; i += 4)
            {
                var x = Vector128.LoadUnsafe(ref pg, (nuint)i);
                (x / (one + Vector128.Exp(-x)) * Vector128.LoadUnsafe(ref pu, (nuint)i)).StoreUnsafe(ref pg, (nuint)i);
            }
        }
        for (; i < g.Length; i++)
        {
            float x = g[i];
            g[i] = x / (1.0f + MathF.Exp(-x)) * u[i];
        }
    }

    /// <summary>
    /// Fills the RoPE cos/sin table for one position as ggml_rope_cache_init does: θ starts at the position and is
    /// multiplied by base^(-2/nRot) per pair (in float, like ggml), divided by the pair's frequency factor, then by
    /// the linear scale. cosSin is [nRot] = (cos, sin) pairs.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RopeCache(int pos, int nRot, float freqBase, float freqScale, float[]? freqFactors, Span<float> cosSin)
        => RopeCache(pos, nRot, freqBase, freqScale, freqFactors, 0f, 1f, 0f, 0f, cosSin);

    /// <summary>
    /// RoPE cos/sin with YaRN (ggml's rope_yarn): θ_interp = freqScale·θ_extrap; when extFactor ≠ 0 the two mix by
    /// ramp(i) · extFactor, ramp = 1 − clamp((i/2 − low) / max(0.001, high − low), 0, 1) over the correction dims
    /// [low, high], and mscale grows by 1 + 0.1·ln(1/freqScale). Both cos and sin carry mscale.
    /// </summary>
    public static void RopeCache(int pos, int nRot, float freqBase, float freqScale, float[]? freqFactors,
                                 float extFactor, float mscale, float corrLow, float corrHigh, Span<float> cosSin)
    {
        if (extFactor != 0f)
        {
            float thetaScaleY = MathF.Pow(freqBase, -2.0f / nRot);
            float thetaY = pos;
            float ms = mscale * (1.0f + 0.1f * MathF.Log(1.0f / freqScale));
            for (int i0 = 0; i0 < nRot; i0 += 2)
            {
                float ff = freqFactors != null ? freqFactors[i0 / 2] : 1.0f;
                float extrap = thetaY / ff;
                float interp = freqScale * extrap;
                float y = (i0 / 2 - corrLow) / MathF.Max(0.001f, corrHigh - corrLow);
                float rampMix = (1 - MathF.Min(1, MathF.Max(0, y))) * extFactor;
                float t = interp * (1 - rampMix) + extrap * rampMix;
                cosSin[i0] = MathF.Cos(t) * ms;
                cosSin[i0 + 1] = MathF.Sin(t) * ms;
                thetaY *= thetaScaleY;
            }
            return;
        }

        float thetaScale = MathF.Pow(freqBase, -2.0f / nRot);
        float theta = pos;
        for (int i0 = 0; i0 < nRot; i0 += 2)
        {
            float ff = freqFactors != null ? freqFactors[i0 / 2] : 1.0f;
            float t = freqScale * (theta / ff);
            cosSin[i0] = mscale == 1f ? MathF.Cos(t) : MathF.Cos(t) * mscale;
            cosSin[i0 + 1] = mscale == 1f ? MathF.Sin(t) : MathF.Sin(t) * mscale;
            theta *= thetaScale;
        }
    }

    /// <summary>Rotates adjacent pairs (x[2i], x[2i+1]) of each head's first nRot dims (LLAMA_ROPE_TYPE_NORM).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RopeNorm(Span<float> x, int heads, int headDim, ReadOnlySpan<float> cosSin)
    {
        int nRot = cosSin.Length;
        for (int h = 0; h < heads; h++)
        {
            var v = x.Slice(h * headDim, headDim);
            for (int i0 = 0; i0 < nRot; i0 += 2)
            {
                float c = cosSin[i0], s = cosSin[i0 + 1];
                float x0 = v[i0], x1 = v[i0 + 1];
                v[i0] = x0 * c - x1 * s;
                v[i0 + 1] = x0 * s + x1 * c;
            }
        }
    }

    /// <summary>Rotates the pairs (x[i], x[i + nRot/2]) of each head's first nRot dims with pair i's cos/sin
    /// (LLAMA_ROPE_TYPE_NEOX; Hugging Face's rotate_half): the layout of OLMo 2, Qwen and GPT-NeoX.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RopeNeox(Span<float> x, int heads, int headDim, ReadOnlySpan<float> cosSin)
    {
        int nRot = cosSin.Length, half = nRot / 2;
        for (int h = 0; h < heads; h++)
        {
            var v = x.Slice(h * headDim, headDim);
            for (int i = 0; i < half; i++)
            {
                float c = cosSin[2 * i], s = cosSin[2 * i + 1];
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c - x1 * s;
                v[i + half] = x0 * s + x1 * c;
            }
        }
    }
}
