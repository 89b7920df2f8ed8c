using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// One weight row against B activation rows: y[b·yStride] = dot(w, x_b) for b in [0, B). The weight row is decoded
/// once per super-block and reused for every activation row, which is what makes prefill and batched decode cheaper
/// per token than single decode. For each b the operations and their order are the same whatever B is, so a row's
/// result never depends on the batch (decode, prefill and multi-sequence batches agree bit for bit).
/// Types without a batched kernel here fall back to <see cref="VecDot.Dot"/> per activation row.
/// Reference semantics: <see cref="VecDot.DotScalar"/> (equal up to float summation order).
/// </summary>
public static unsafe partial class RowKernels
{
    /// <summary>Activation rows processed together (their accumulators live on the stack).</summary>
    public const int Tile = 16;

    /// <summary>Q8_0 batches (<see cref="Q80Block"/>): activation rows per tile, and blocks per part of a row — a
    /// multiple of 4 (the kernels' step), as many as keep one part of a tile, 68 B per block and row, within 40 KiB.</summary>
    const int Q80TileRows = 16, Q80PartBlocks = 40960 / (Q80TileRows * 68) / 4 * 4;

    /// <summary>
    /// Bytes of one Q8_K super-block in the layout the Q4_K / Q5_K / Q6_K kernels read (AVX-512): qs[256] int8 at 0 (for Q4_K and Q5_K
    /// permuted, <see cref="PrepareQ8KForQ4K"/>) | bsums[16] int16 at 256 (for Q4_K: the 8 sums of 32, see there) | d f32 at
    /// 288 | 28 bytes of padding — five cache lines, so that every 64-byte load of quants is one aligned line. ggml's
    /// block_q8_K (292 B, d first) put each of the four quant loads of a step across two lines.
    /// </summary>
    internal const int Q8KStride = 320, Q8KSums = 256, Q8KScale = 288;

    public static bool HasBatched(GgmlType t) => t == GgmlType.Q8_0 && Q80Int16;

    /// <summary>Whether Q8_0 runs the int16 AVX-512 kernels (<see cref="Q801"/>, <see cref="Q80Block"/>; activations
    /// widened to int16): AVX-512 without AVX-VNNI. With AVX-VNNI, and on AVX2 machines, it runs the exact-per-block
    /// family of <see cref="VecDot.DotQ80RowExactAvx2{TVnni}"/> (<see cref="Avx2Rows"/>).</summary>
    internal static bool Q80Int16 => Avx512BW.IsSupported && !Avx2Rows(GgmlType.Q8_0);

    /// <summary>
    /// Bytes of one activation row in the layout <see cref="Run"/> reads for a weight type:
    /// F32/F16/BF16 weights read F32 values (already rounded to F16/BF16 precision, as ggml rounds activations), so
    /// activations are converted once per matmul rather than once per weight row; Q8_0 weights on AVX-512 without
    /// AVX-VNNI read Q8_0 activations widened to int16 — nb F32 scales (the F16-rounded d, as ggml stores it) then nb·32
    /// int16 quants — so the per-block sign extension is not repeated for every weight row; Q8_0 elsewhere and the legacy
    /// types read the split Q8_0 row with block sums (<see cref="Avx2Rows"/>); without AVX2, the portable kernels' types
    /// read quants widened to int16 (<see cref="VecDot.PortableActivationBytes"/>); every other type reads its ggml
    /// vec-dot type (Q8_1 or Q8_K blocks).
    /// </summary>
    public static int ActivationRowBytes(GgmlType weightType, int n) => weightType switch
    {
        GgmlType.F32 or GgmlType.BF16 => n * 4 + 64, // one cache line of padding: rows 8 KiB apart alias in L1
        GgmlType.F16 => n * 8 + 64, // [n] F16-rounded x, then [n] the same · 2^112 for the decode kernel (DotF16Scaled)
        GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 when Avx2Rows(weightType)
            => n / 32 * 44, // [nb] F32 scales, [nb, 32] int8 quants, [nb] int32 Σ quants, [nb] float s = F16(d·Σ quants) (VecDot.DotRows8Avx2)
        GgmlType.Q8_0 when Q80Int16 => n / 32 * 68,
        GgmlType.IQ4_NL when Iq4nlRows8(weightType) => n / 32 * 44, // as the legacy types
        GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K when Avx512BW.IsSupported => n / 256 * Q8KStride,
        _ when VecDot.PortableRows(weightType) => VecDot.PortableActivationBytes(weightType, n),
        _ => (int)GgmlTypeInfo.RowBytes(VecDot.ActivationType(weightType), n),
    };

    /// <summary>Converts one activation row into the layout of <see cref="ActivationRowBytes"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // skip tiering: hot from the first token, and on 2 busy cores the background re-JIT starves
    public static void PrepareActivations(GgmlType weightType, ReadOnlySpan<float> x, Span<byte> dst)
    {
        var f = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(dst);
        switch (weightType)
        {
            case GgmlType.F32: x.CopyTo(f); return;
            case GgmlType.F16:
                RoundToHalf(x, f);
                ScaleBy2Pow112(f.Slice(0, x.Length), f.Slice(x.Length, x.Length));
                return;
            case GgmlType.BF16: RoundToBf16(x, f); return;
            case GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 when Avx2Rows(weightType):
                QuantizeQ80Avx2(x, dst, split: true, sums: true);
                return;
            case GgmlType.Q8_0 when Q80Int16:
                QuantizeQ80Widened(x, dst);
                return;
            case GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K when Avx512BW.IsSupported:
                QuantizeQ8K(x, dst, kernelLayout: true);
                if (weightType != GgmlType.Q6_K) PrepareQ8KForQ4K(dst, x.Length / 256);
                return;
            case GgmlType.IQ4_NL when Iq4nlRows8(weightType):
                QuantizeQ80Avx2(x, dst, split: true, sums: true);
                return;
            case GgmlType.Q4_K or GgmlType.Q5_K when Avx2Rows(weightType):
                PrepareQ8KForK4Avx2(x, dst);
                return;
            case GgmlType.IQ4_XS when Avx2Rows(weightType):
                if (Vector512.IsHardwareAccelerated && Avx512BW.IsSupported) QuantizeQ8K(x, dst, kernelLayout: false);
                else QuantizeQ8KAvx2(x, dst);
                fixed (byte* p = dst) VecDot.PermuteQ8KForIQ4XS(p, x.Length / 256);
                return;
            case var _ when VecDot.PortableRows(weightType):
                VecDot.PreparePortable(weightType, x, dst);
                return;
            default:
                var act = VecDot.ActivationType(weightType);
                if (act == GgmlType.Q8_K && Vector512.IsHardwareAccelerated && Avx512BW.IsSupported) QuantizeQ8K(x, dst, kernelLayout: false);
                else if (act == GgmlType.Q8_K && Avx2.IsSupported) QuantizeQ8KAvx2(x, dst);
                else if (act == GgmlType.Q8_0 && Avx2.IsSupported) QuantizeQ80Avx2(x, dst, split: false);
                else VecDot.QuantizeActivations(act, x, dst);
                return;
        }
    }

    /// <summary>
    /// Turns each Q8_K super-block (kernel layout) into what the Q4_K kernel reads: within each 128-quant half the
    /// 32-quant pieces (lo c, hi c, lo c+1, hi c+1) become (lo c, lo c+1, hi c, hi c+1), matching one 64-byte load of
    /// Q4_K nibbles split into its low and high halves; and the 16 bsums become the 8 sums of 32, bsum 2j + bsum 2j+1
    /// (int16, at most 32·128), the activation side of sub-block j's min term.
    /// </summary>
    static void PrepareQ8KForQ4K(Span<byte> dst, int nb)
    {
        fixed (byte* p = dst)
            for (int k = 0; k < nb; k++)
            {
                byte* blk = p + k * Q8KStride;
                for (int half = 0; half < 2; half++)
                {
                    byte* q = blk + 128 * half;
                    var hi0 = Vector256.Load(q + 32);
                    var lo1 = Vector256.Load(q + 64);
                    lo1.Store(q + 32);
                    hi0.Store(q + 64);
                }
                SumsOf32(blk + Q8KSums);
            }
    }

    /// <summary>The 16 bsums (int16, sums of sixteen quants) at <paramref name="sums"/> → the 8 sums of 32, bsum 2j +
    /// bsum 2j+1, as int16 in their place (at most 32·127: exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void SumsOf32(byte* sums)
    {
        var pairSums = Avx2.MultiplyAddAdjacent(Vector256.Load((short*)sums), Vector256<short>.One); // [8] int32
        Sse2.PackSignedSaturate(pairSums.GetLower(), pairSums.GetUpper()).Store((short*)sums);
    }

    /// <summary>
    /// Q4_K and Q5_K activations for the AVX2 kernels (<see cref="VecDot.DotK4RowAvx2{T}"/>, <see cref="VecDot.DotK4Rows8Avx2{T}"/>):
    /// ggml's block_q8_K (d8 | qs[256] in order | bsums) with its 16 bsums replaced by the 8 sums of 32 (int16 at 260),
    /// the activation side of sub-block j's min term, as <see cref="PrepareQ8KForQ4K"/> does for the AVX-512 layout.
    /// </summary>
    internal static void PrepareQ8KForK4Avx2(ReadOnlySpan<float> x, Span<byte> dst)
    {
        QuantizeQ8KAvx2(x, dst);
        fixed (byte* p = dst)
            for (int k = 0; k < x.Length / 256; k++) SumsOf32(p + k * 292 + 260);
    }

    /// <summary>
    /// y = Fp16.Round(x), 16 at a time: for |x| in half's normal range the float's mantissa is rounded to 10 bits, to
    /// nearest even, in the integer domain ((u + 0xFFF + bit 13) with the low 13 bits cleared; a carry into the
    /// exponent is the correct result). A vector with a lane below 2^-14 (half subnormals, other than 0), at or above
    /// 65520 (rounds to infinity) or NaN goes through the scalar conversion.
    /// </summary>
    internal static void RoundToHalf(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var lowest = Vector512.Create(0x38800000u); var limit = Vector512.Create(0x477FF000u);
            var absMask = Vector512.Create(0x7FFFFFFFu);
            for (; i + 16 <= x.Length; i += 16)
            {
                var u = Vector512.LoadUnsafe(ref Unsafe.As<float, uint>(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x)), (nuint)i);
                var a = u & absMask;
                var odd = Vector512.GreaterThanOrEqual(a, limit) | (Vector512.LessThan(a, lowest) & ~Vector512.Equals(a, Vector512<uint>.Zero));
                if (odd != Vector512<uint>.Zero) { for (int j = i; j < i + 16; j++) y[j] = Fp16.Round(x[j]); continue; }
                var r = ((a + Vector512.Create(0xFFFu) + ((a >> 13) & Vector512<uint>.One)) & Vector512.Create(~0x1FFFu)) | (u & ~absMask);
                r.AsSingle().StoreUnsafe(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(y), (nuint)i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var lowest = Vector256.Create(0x38800000u); var limit = Vector256.Create(0x477FF000u);
            var absMask = Vector256.Create(0x7FFFFFFFu);
            for (; i + 8 <= x.Length; i += 8)
            {
                var u = Vector256.LoadUnsafe(ref Unsafe.As<float, uint>(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x)), (nuint)i);
                var a = u & absMask;
                var odd = Vector256.GreaterThanOrEqual(a, limit) | (Vector256.LessThan(a, lowest) & ~Vector256.Equals(a, Vector256<uint>.Zero));
                if (odd != Vector256<uint>.Zero) { for (int j = i; j < i + 8; j++) y[j] = Fp16.Round(x[j]); continue; }
                var r = ((a + Vector256.Create(0xFFFu) + ((a >> 13) & Vector256<uint>.One)) & Vector256.Create(~0x1FFFu)) | (u & ~absMask);
                r.AsSingle().StoreUnsafe(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(y), (nuint)i);
            }
        }
        for (; i < x.Length; i++) y[i] = Fp16.Round(x[i]);
    }

    /// <summary>y = Bf16.Round(x), 16 at a time (round to nearest even on the high 16 bits); NaN lanes go scalar.</summary>
    internal static void RoundToBf16(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var absMask = Vector512.Create(0x7FFFFFFFu);
            for (; i + 16 <= x.Length; i += 16)
            {
                var u = Vector512.LoadUnsafe(ref Unsafe.As<float, uint>(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x)), (nuint)i);
                if (Vector512.GreaterThanAny(u & absMask, Vector512.Create(0x7F800000u))) { for (int j = i; j < i + 16; j++) y[j] = Bf16.Round(x[j]); continue; }
                var r = (u + Vector512.Create(0x7FFFu) + ((u >> 16) & Vector512<uint>.One)) & Vector512.Create(0xFFFF0000u);
                r.AsSingle().StoreUnsafe(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(y), (nuint)i);
            }
        }
        for (; i < x.Length; i++) y[i] = Bf16.Round(x[i]);
    }

    /// <summary>
    /// Q8_0 activations in the widened layout of <see cref="ActivationRowBytes"/>: [nb] F32 scales (the F16-rounded d)
    /// then [nb·32] int16 quants. The values are those of the scalar reference (Quantize.Q8_0, ggml's
    /// quantize_row_q8_0_ref): d = amax / 127, id = 1 / d, q = round-half-away-from-zero(x·id). The rounding is done
    /// exactly: t = trunc(v) and v − t are exact in float, so q = t + sign(v)·[|v − t| ≥ ½].
    /// </summary>
    [SkipLocalsInit]
    internal static void QuantizeQ80Widened(ReadOnlySpan<float> x, Span<byte> dst)
    {
        int nb = x.Length / 32;
        fixed (float* px = x) fixed (byte* py = dst)
        {
            float* scales = (float*)py;          // [nb]
            short* quants = (short*)(scales + nb); // [nb, 32]
            for (int i = 0; i < nb; i++)
            {
                var x0 = Vector512.Load(px + i * 32);
                var x1 = Vector512.Load(px + i * 32 + 16);
                var m8 = Vector512.Max(Vector512.Abs(x0), Vector512.Abs(x1));
                var m4 = Vector256.Max(m8.GetLower(), m8.GetUpper());
                var m2 = Vector128.Max(m4.GetLower(), m4.GetUpper());
                float amax = MathF.Max(MathF.Max(m2[0], m2[1]), MathF.Max(m2[2], m2[3]));
                float d = amax / 127f;
                float id = d != 0 ? 1.0f / d : 0.0f;
                scales[i] = Fp16.Round(d);
                var vid = Vector512.Create(id);
                Avx512F.ConvertToVector256Int16(RoundAway(x0 * vid)).Store(quants + i * 32);
                Avx512F.ConvertToVector256Int16(RoundAway(x1 * vid)).Store(quants + i * 32 + 16);
            }

            static Vector512<int> RoundAway(Vector512<float> v)
            {
                var t = Avx512F.RoundScale(v, 0x0B); // truncate toward zero
                var up = Vector512.GreaterThanOrEqual(Vector512.Abs(v - t), Vector512.Create(0.5f));
                var signedOne = Vector512.Create(1f).AsInt32() | (v.AsInt32() & Vector512.Create(int.MinValue));
                return Avx512F.ConvertToVector512Int32WithTruncation(t + (signedOne & up.AsInt32()).AsSingle());
            }
        }
    }


    /// <summary>
    /// ggml's quantize_row_q8_K_ref, vectorized, byte-identical to <see cref="VecDot.QuantizeActivations"/>:
    /// per 256 values, max = the first value of largest magnitude, q = min(127, round-half-even(−127/max · x)),
    /// d = 1/iscale, bsums = sums of each 16 quants. Written as ggml's block_q8_K (292 B: d | qs | bsums) or, with
    /// <paramref name="kernelLayout"/>, in the aligned layout of the Q4_K / Q6_K kernels (<see cref="Q8KStride"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void QuantizeQ8K(ReadOnlySpan<float> x, Span<byte> dst, bool kernelLayout)
    {
        int nb = x.Length / 256;
        int stride = kernelLayout ? Q8KStride : 292, qsAt = kernelLayout ? 0 : 4, sumsAt = kernelLayout ? Q8KSums : 260, dAt = kernelLayout ? Q8KScale : 0;
        fixed (float* px = x) fixed (byte* py = dst)
        {
            for (int k = 0; k < nb; k++)
            {
                float* xb = px + k * 256;
                byte* yb = py + k * stride;
                var amaxv = Vector512<float>.Zero;
                for (int j = 0; j < 256; j += 16) amaxv = Vector512.Max(amaxv, Vector512.Abs(Vector512.Load(xb + j)));
                float amax = 0;
                for (int l = 0; l < 16; l++) amax = MathF.Max(amax, amaxv[l]);
                if (amax == 0) { new Span<byte>(yb, stride).Clear(); continue; }
                int first = 0;
                while (MathF.Abs(xb[first]) != amax) first++;
                float iscale = -127f / xb[first];
                var vs = Vector512.Create(iscale);
                var lim = Vector512.Create(127);
                short* bsums = (short*)(yb + sumsAt);
                for (int j = 0; j < 256; j += 16)
                {
                    var q = Vector512.Min(Vector512.ConvertToInt32(Avx512F.RoundScale(vs * Vector512.Load(xb + j), 0x08)), lim);
                    Avx512F.ConvertToVector128SByte(q).Store((sbyte*)(yb + qsAt + j));
                    bsums[j / 16] = (short)Vector512.Sum(q);
                }
                *(float*)(yb + dAt) = 1 / iscale;
            }
        }
    }

    /// <summary>
    /// <see cref="QuantizeQ8K"/> in ggml's block_q8_K layout (292 B: d | qs[256] | bsums[16]) with AVX2, byte-identical
    /// to the scalar reference: q = min(127, round-half-even(−127/max · x)) with max the first value of largest
    /// magnitude, bsums the sums of each 16 quants, d = 1/iscale.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void QuantizeQ8KAvx2(ReadOnlySpan<float> x, Span<byte> dst)
    {
        int nb = x.Length / 256;
        fixed (float* px = x) fixed (byte* py = dst)
            for (int k = 0; k < nb; k++)
            {
                float* xb = px + k * 256;
                byte* yb = py + k * 292;
                var amaxv = Vector256<float>.Zero;
                for (int j = 0; j < 256; j += 8) amaxv = Vector256.Max(amaxv, Vector256.Abs(Vector256.Load(xb + j)));
                float amax = 0;
                for (int l = 0; l < 8; l++) amax = MathF.Max(amax, amaxv[l]);
                if (amax == 0) { new Span<byte>(yb, 292).Clear(); continue; }
                int first = 0;
                while (MathF.Abs(xb[first]) != amax) first++;
                float iscale = -127f / xb[first];
                var vs = Vector256.Create(iscale);
                var lim = Vector256.Create(127);
                short* bsums = (short*)(yb + 260);
                for (int j = 0; j < 256; j += 16)
                {
                    var q0 = Vector256.Min(Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(vs * Vector256.Load(xb + j))), lim);
                    var q1 = Vector256.Min(Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(vs * Vector256.Load(xb + j + 8))), lim);
                    var p16 = Avx2.Permute4x64(Avx2.PackSignedSaturate(q0, q1).AsInt64(), 0b11_01_10_00).AsInt16(); // q0 0–7, q1 0–7
                    Sse2.PackSignedSaturate(p16.GetLower(), p16.GetUpper()).Store((sbyte*)(yb + 4 + j));
                    bsums[j / 16] = (short)Vector256.Sum(q0 + q1);
                }
                *(float*)yb = 1 / iscale;
            }
    }

    /// <summary>
    /// ggml's quantize_row_q8_0_ref with AVX2 (34 B blocks: d as F16 | qs[32]; with <paramref name="split"/>, the AVX2
    /// Q8_0 kernels' layout: [nb] floats, the F16-rounded d, then [nb, 32] quants), byte-identical to
    /// <see cref="Quantize"/>'s: d = amax / 127, id = 1 / d, q = round-half-away-from-zero(x · id), done exactly as in
    /// <see cref="QuantizeQ80Widened"/> (t = trunc(v); q = t + sign(v)·[|v − t| ≥ ½]). With <paramref name="sums"/>
    /// (split layout only; the legacy types' eight-row kernels) the row goes on with [nb] int32 Σ q and [nb] float s =
    /// F16(Σ q · d), ggml's block_q8_1 s.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void QuantizeQ80Avx2(ReadOnlySpan<float> x, Span<byte> dst, bool split, bool sums = false)
    {
        int nb = x.Length / 32;
        var perm = Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7);
        fixed (float* px = x) fixed (byte* py = dst)
            for (int i = 0; i < nb; i++)
            {
                float* xb = px + i * 32;
                var x0 = Vector256.Load(xb); var x1 = Vector256.Load(xb + 8);
                var x2 = Vector256.Load(xb + 16); var x3 = Vector256.Load(xb + 24);
                var m = Vector256.Max(Vector256.Max(Vector256.Abs(x0), Vector256.Abs(x1)), Vector256.Max(Vector256.Abs(x2), Vector256.Abs(x3)));
                var m4 = Vector128.Max(m.GetLower(), m.GetUpper());
                float amax = MathF.Max(MathF.Max(m4[0], m4[1]), MathF.Max(m4[2], m4[3]));
                float d = amax / 127f;
                float id = d != 0 ? 1.0f / d : 0.0f;
                ushort dh = Fp16.FromSingle(d);
                byte* q;
                if (split) { ((float*)py)[i] = Fp16.ToSingle(dh); q = py + 4 * nb + 32 * i; }
                else { *(ushort*)(py + i * 34) = dh; q = py + i * 34 + 2; }
                var vid = Vector256.Create(id);
                Vector256<int> q0 = RoundAway(x0 * vid), q1 = RoundAway(x1 * vid), q2 = RoundAway(x2 * vid), q3 = RoundAway(x3 * vid);
                var p01 = Avx2.PackSignedSaturate(q0, q1);
                var p23 = Avx2.PackSignedSaturate(q2, q3);
                Avx2.PermuteVar8x32(Avx2.PackSignedSaturate(p01, p23).AsInt32(), perm).Store((int*)q);
                if (sums)
                {
                    int sum = Vector256.Sum((q0 + q1) + (q2 + q3)); // |x·id| ≤ 127: no lane was saturated
                    ((int*)(py + 36 * nb))[i] = sum;
                    ((float*)(py + 40 * nb))[i] = Fp16.ToSingle(Fp16.FromSingle(sum * d));
                }
            }

        static Vector256<int> RoundAway(Vector256<float> v)
        {
            var t = Avx.RoundToZero(v);
            var up = Vector256.GreaterThanOrEqual(Vector256.Abs(v - t), Vector256.Create(0.5f));
            var signedOne = Vector256.Create(1f).AsInt32() | (v.AsInt32() & Vector256.Create(int.MinValue));
            return Avx.ConvertToVector256Int32WithTruncation(t + (signedOne & up.AsInt32()).AsSingle());
        }
    }

    // Per-thread scratch (pool threads live as long as the pool, so these are allocated once per thread and size).
    [ThreadStatic] static float[]? _rowBuffer;                // [n] one weight row widened to F32
    [ThreadStatic] static float[]? _blockBuffer;              // [rows, n + 16] a chunk's weight rows widened to F32
    [ThreadStatic] static short[]? _q80Quants;                // [n] one Q8_0 row's quants as int16
    [ThreadStatic] static float[]? _q80Scales;                // [n / 32] its block scales
    [ThreadStatic] static float[]? _q80Acc;                   // [rows, tile, 16] Q8_0 accumulators carried between parts of a row
    [ThreadStatic] static float[]? _tileSums;                 // [rows, 16] one tile's results, weight row by weight row
    [ThreadStatic] static byte[]? _padActs;                   // [4, xStride] three activation rows padded to four
    [ThreadStatic] static float[]? _padOut;                   // [4, rows] their results
    [ThreadStatic] static float[]? _rows16Acc;                // [Rows16Tile, 8, 16] sixteen-row prefill accumulators

    /// <summary>
    /// A pinned scratch array of at least <paramref name="count"/> elements after its first 64-byte boundary, which is
    /// returned. 512-bit loads that straddle two cache lines cost: the 4×6 F32 kernel runs at 36 GMAC/s on unaligned
    /// and 55 on aligned rows (one thread).
    /// </summary>
    static T* Scratch<T>(ref T[]? slot, long count) where T : unmanaged
    {
        long pad = (64 + sizeof(T) - 1) / sizeof(T);
        var a = slot;
        if (a == null || a.Length < count + pad) slot = a = GC.AllocateArray<T>(checked((int)(Math.Max(count, 8192 / sizeof(T)) + pad)), pinned: true);
        nint p = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(a));
        return (T*)((p + 63) & ~(nint)63);
    }

    /// <summary>Per-thread buffers for one decoded Q8_0 row of n values: [n] int16 quants and [n / 32] scales.</summary>
    internal static (nint Quants, nint Scales) Q80Buffers(int n) => ((nint)Scratch(ref _q80Quants, n), (nint)Scratch(ref _q80Scales, n / 32));

    [SkipLocalsInit] // the stackalloc'd accumulators are zeroed by the kernels
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(GgmlType type, byte* w, int wBytes, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (Avx512BW.IsSupported)
        {
            switch (type)
            {
                case GgmlType.Q4_K: // prefill runs sixteen weight rows at a time (RunBlock); a row alone, its decode kernel per activation row
                    for (int b = 0; b < B; b++) y[(long)b * yStride] = Q4K1<Q4KLayout>(w, x + (long)b * xStride, n / 256);
                    return;
                case GgmlType.Q5_K:
                    for (int b = 0; b < B; b++) y[(long)b * yStride] = Q4K1<Q5KLayout>(w, x + (long)b * xStride, n / 256);
                    return;
                case GgmlType.Q6_K: // as Q4_K: prefill sixteen weight rows at a time (RunBlock), a row alone its decode kernel
                    for (int b = 0; b < B; b++) y[(long)b * yStride] = Q6K1(w, x + (long)b * xStride, n / 256);
                    return;
                case GgmlType.Q8_0 when Q80Int16:
                    if (B == 1) { *y = Q801(w, x, n / 32); return; }
                    var (decQ, decD) = Q80Buffers(n);
                    Q80Tile(w, x, xStride, B, n / 32, y, yStride, (short*)decQ, (float*)decD);
                    return;
            }
        }
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
        {
            FloatRow(type, w, x, xStride, B, n, y, yStride);
            return;
        }
        if (Avx2Rows(type))
        {
            int b = 0;
            if (HasFourRowKernel(type))
            {
                // Four activation rows at a time (same bits as one at a time). Three rows left: one more group over the
                // last four (the pair already done is computed again, with the same bits). The four-row kernel costs
                // about 2.1 single rows (measured on TinyLlama Q4_K_M, when Q4_K had one), so one or two rows left stay single.
                for (; b + 4 <= B; b += 4) RunFour(type, w, x + (long)b * xStride, xStride, n, y + (long)b * yStride, yStride);
                if (B - b == 3 && B >= 4) { RunFour(type, w, x + (long)(B - 4) * xStride, xStride, n, y + (long)(B - 4) * yStride, yStride); b = B; }
            }
            else if (RowGroup(type) == 8)
            {
                // one row as a group of one (the kernel's other lanes repeat it); Q8_0 keeps eight accumulators per row
                var acc = stackalloc Vector256<float>[8 * Tile];
                for (; b < B; b += Tile)
                    Rows8(type, w, 0, 1, x + (long)b * xStride, xStride, Math.Min(Tile, B - b), n, y + (long)b * yStride, yStride, acc);
            }
            for (; b < B; b++) y[(long)b * yStride] = DotAvx2(type, w, x + (long)b * xStride, n);
            return;
        }
        if (VecDot.PortableRows(type))
        {
            VecDot.RunPortable(type, w, x, xStride, B, n, y, yStride);
            return;
        }
        var wr = new ReadOnlySpan<byte>(w, wBytes);
        for (int b = 0; b < B; b++)
            y[(long)b * yStride] = VecDot.Dot(type, wr, new ReadOnlySpan<byte>(x + (long)b * xStride, xStride), n);
    }

    /// <summary>I-quant types whose AVX2 kernels run one weight row against four activation rows (<see cref="RunFour"/>):
    /// the weight row is unpacked once for four dot products. (The K-quants' AVX2 prefill runs eight weight rows in
    /// lanes instead, <see cref="KRows8"/>.)</summary>
    internal static bool HasFourRowKernel(GgmlType type) =>
        Avx2Rows(type) && (type == GgmlType.IQ4_XS && !VecDot.Rows16 // with AVX-512, IQ4_XS's exact family (sixteen-row prefill, one-row decode)
            || GgmlTypeInfo.IsLattice(type));

    static void RunFour(GgmlType type, byte* w, byte* x, int xStride, int n, float* y, int yStride)
    {
        switch (type)
        {
            case GgmlType.IQ4_XS: VecDot.DotIQ4XSRowX4(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_XXS when Avx512BW.IsSupported: VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2XXSWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_XXS: VecDot.DotLatticeAvx2X4<VecDot.IQ2XXSBlock>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_XS when Avx512BW.IsSupported: VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2XSWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_XS: VecDot.DotLatticeAvx2X4<VecDot.IQ2XSBlock>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_S when Avx512BW.IsSupported: VecDot.DotSignedLatticeAvx512X4<VecDot.IQ2SWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ2_S: VecDot.DotLatticeAvx2X4<VecDot.IQ2SBlock>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ3_XXS when Avx512BW.IsSupported: VecDot.DotSignedLatticeAvx512X4<VecDot.IQ3XXSWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ3_XXS: VecDot.DotLatticeAvx2X4<VecDot.IQ3XXSBlock>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ3_S when Avx512BW.IsSupported: VecDot.DotSignedLatticeAvx512X4<VecDot.IQ3SWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ3_S: VecDot.DotLatticeAvx2X4<VecDot.IQ3SBlock>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ1_S when Avx512BW.IsSupported: VecDot.DotIQ1Avx512X4<VecDot.IQ1SWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ1_S: VecDot.DotIQ1SAvx2X4(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ1_M when Avx512BW.IsSupported: VecDot.DotIQ1Avx512X4<VecDot.IQ1MWide>(w, x, xStride, n / 256, y, yStride); break;
            case GgmlType.IQ1_M: VecDot.DotIQ1MAvx2X4(w, x, xStride, n / 256, y, yStride); break;
            default: throw new ArgumentOutOfRangeException(nameof(type));
        }
    }

    /// <summary>Bytes ahead of the current weight block that the single-row kernels prefetch (about 3.5 rows of a
    /// 2048-wide Q4_K matrix): decode streams every weight from memory once, and the hardware prefetcher alone does
    /// not keep up with a kernel this short (TinyLlama Q4_K_M, 2 threads: 26.5 tok/s without, 33.5 with; 1024 and
    /// 16384 bytes were slower, 2048–8192 about equal).</summary>
    const int PrefetchDistance = 4096;

    /// <summary>
    /// Rows [r0, r1) of a weight matrix against one activation row: y[r] = dot(W row r, x). The decode path (B = 1).
    /// For Q4_K, Q5_K and Q6_K the accumulators stay in registers and the weights are prefetched ahead; the arithmetic and
    /// its order are exactly those of <see cref="Run"/> with B = 1, so both give the same bits.
    /// </summary>
    /// <param name="finiteF16">The caller vouches that these F16 rows hold no infinity or NaN
    /// (<see cref="Models.WeightMatrix.NonFiniteF16"/> is false), so the decode kernel skips its per-step check.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunRows(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xBytes, int n, float* y, bool finiteF16 = false)
    {
        if (finiteF16 && type == GgmlType.F16 && n >= 64 && Vector512.IsHardwareAccelerated)
        {
            for (int r = r0; r < r1; r++) y[r] = DotF16Scaled<Unchecked>((ushort*)(w + (long)r * rowBytes), (float*)x + n, n, out _);
            return;
        }
        if (finiteF16 && type == GgmlType.F16 && HalfRowsAvx2(n))
        {
            for (int r = r0; r < r1; r++) y[r] = DotF16ScaledAvx2((ushort*)(w + (long)r * rowBytes), (float*)x, n);
            return;
        }
        if (PortableFloat(type))
        {
            RunRowsPortable(type, w, rowBytes, r0, r1, (float*)x, n, y, finiteF16); // four rows at a time (RowKernels.Portable.cs)
            return;
        }
        if (Avx512BW.IsSupported && type == GgmlType.Q4_K)
        {
            // One row at a time: two neighbouring rows interleaved (two streams 1152 B apart) decoded 36 against 58
            // tok/s here — the hardware prefetcher keeps one sequential stream per core ahead. Two *distant* rows
            // interleaved are faster than one (RunPair, which MatMulJob uses for decode).
            for (int r = r0; r < r1; r++) y[r] = Q4K1<Q4KLayout>(w + (long)r * rowBytes, x, n / 256);
            return;
        }
        if (Avx512BW.IsSupported && type == GgmlType.Q5_K)
        {
            for (int r = r0; r < r1; r++) y[r] = Q4K1<Q5KLayout>(w + (long)r * rowBytes, x, n / 256);
            return;
        }
        if (Avx512BW.IsSupported && type == GgmlType.Q6_K)
        {
            for (int r = r0; r < r1; r++) y[r] = Q6K1(w + (long)r * rowBytes, x, n / 256);
            return;
        }
        if (type == GgmlType.Q8_0 && Q80Int16)
        {
            for (int r = r0; r < r1; r++) y[r] = Q801(w + (long)r * rowBytes, x, n / 32);
            return;
        }
        if (type == GgmlType.Q8_0 && Avx2Rows(type))
        {
            for (int r = r0; r < r1; r++) y[r] = VecDot.DotQ80RowExactAvx2<VecDot.HasVnni>(w + (long)r * rowBytes, x, n / 32);
            return;
        }
        if (RowGroup(type) == 8)
        {
            for (int r = r0; r < r1; r += 8) Rows8(type, w + (long)r * rowBytes, rowBytes, Math.Min(8, r1 - r), x, n, y + r);
            return;
        }
        if (Avx2Rows(type))
        {
            for (int r = r0; r < r1; r++) y[r] = DotAvx2(type, w + (long)r * rowBytes, x, n);
            return;
        }
        for (int r = r0; r < r1; r++) Run(type, w + (long)r * rowBytes, rowBytes, x, xBytes, 1, n, y + r, 1);
    }

    /// <summary>Decode of 16-bit float rows with the AVX2 kernels, one row or two distant rows at a time: F16
    /// (<see cref="DotF16ScaledAvx2"/>, and its pair) and BF16 (<see cref="DotBF16Avx2"/>, and its pair). No 512-bit
    /// vectors.</summary>
    internal static bool HalfRowsAvx2(int n) => n >= 32 && !Vector512.IsHardwareAccelerated && Avx2.IsSupported && Fma.IsSupported;

    /// <summary>Rows that run through the AVX2 kernels of <see cref="VecDot"/> directly (no span or size checks per row):
    /// Q4_K, Q5_K, Q6_K and Q8_0 on machines with AVX2 and FMA but no AVX-512 (e.g. AMD Zen 2/3, Intel before Ice Lake; with
    /// AVX-512 they have their own kernels — Q8_0 only where AVX-VNNI is missing: with it, Q8_0 decodes here and runs its
    /// prefill sixteen rows at a time, <see cref="VecDot.Q80Rows16"/>), and Q3_K, Q2_K, the i-quants and the legacy Q4_0, Q4_1, Q5_0, Q5_1
    /// (eight rows at a time, <see cref="RowGroup"/>) on every AVX2 + FMA machine. Activations are ggml's Q8_K blocks (for Q4_K and Q5_K
    /// with the sums of 32 in place of the bsums, <see cref="PrepareQ8KForK4Avx2"/>) or Q8_0 quants in the split layout (scales first; for the legacy
    /// types followed by the block sums; IQ4_XS: Q8_K blocks in <see cref="VecDot.PermuteQ8KForIQ4XS"/>'s pair layout).</summary>
    internal static bool Avx2Rows(GgmlType type) => Avx2.IsSupported && Fma.IsSupported && type switch
    {
        GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K => !Avx512BW.IsSupported,
        GgmlType.Q8_0 => !Avx512BW.IsSupported || VecDot.Q80Rows16,
        GgmlType.Q4_0 or GgmlType.Q3_K or GgmlType.Q2_K or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
            or GgmlType.IQ4_NL or GgmlType.IQ4_XS => true,
        _ => GgmlTypeInfo.IsLattice(type),
    };

    /// <summary>Rows a kernel runs together: on AVX2 eight for Q4_0, Q4_1, Q5_0, Q5_1
    /// (<see cref="VecDot.DotRows8Avx2{T}(byte*, long, int, byte*, int, float*)"/>) and for Q8_0's prefill
    /// (<see cref="VecDot.DotQ80Rows8Avx2{TVnni}"/>; its decode runs one or two rows, with the same bits). Any grouping gives the
    /// same bits, but a range of whole groups wastes no lanes.</summary>
    internal static int RowGroup(GgmlType type) => type is GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 && Avx2Rows(type)
        || Iq4nlRows8(type) ? 8 : 1;

    /// <summary>Rows a prefill kernel (<see cref="RunBlock"/>) runs together: sixteen for Q4_0, Q4_1, Q5_0, Q5_1
    /// (<see cref="VecDot.DotRows16Avx512{T}"/>), Q2_K (<see cref="VecDot.DotQ2KRows16Avx512"/>), Q3_K
    /// (<see cref="VecDot.DotQ3KRows16Avx512"/>), Q4_K (<see cref="VecDot.DotQ4KRows16Avx512"/>) and Q6_K
    /// (<see cref="VecDot.DotQ6KRows16Avx512"/>) on AVX-512 — Q5_K through Q4_K's kernel with its fifth bits — and Q8_0 (<see cref="VecDot.DotQ80Rows16Avx512"/>) on AVX-512
    /// with AVX-VNNI; eight for Q2_K, Q3_K, Q4_K, Q5_K and Q6_K on AVX2 without AVX-512 (<see cref="KRows8"/>); else <see cref="RowGroup"/>.</summary>
    internal static int PrefillRowGroup(GgmlType type) =>
        type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS && VecDot.Rows16
        || type == GgmlType.Q8_0 && VecDot.Q80Rows16 ? 16 : KRows8(type) ? 8 : RowGroup(type);

    /// <summary>Q2_K, Q3_K, Q4_K, Q5_K and Q6_K prefill on AVX2 without AVX-512: eight weight rows in lanes
    /// (<see cref="VecDot.DotK4Rows8Avx2{T}"/>, <see cref="VecDot.DotQ6KRows8Avx2"/>, <see cref="VecDot.DotQ2KRows8Avx2"/>,
    /// <see cref="VecDot.DotQ3KRows8Avx2"/>), in tiles of <see cref="Rows16Tile"/> activation rows.</summary>
    internal static bool KRows8(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K && Avx2Rows(type)
        || type is GgmlType.Q2_K or GgmlType.Q3_K && Avx2Rows(type) && !VecDot.Rows16;

    /// <summary>
    /// Activation rows per call of a sixteen-row prefill kernel (<see cref="Rows16"/>). A group's blocks are transposed
    /// once per call, so a larger tile spreads that over more rows: `gemm-micro` 2048 × 2048, one thread, G multiply-adds/s
    /// with 16 → 64 rows (Zen 5, 1 MiB L2; noisy, typical medians): Q8_0 110 → 135–140, Q4_0 145 → 170, Q5_0 105 → 150,
    /// Q2_K ~150 → ~160; TinyLlama pp512 (`cria bench -p 512 -n 0 -r 2 -t 2`, builds alternating, three pairs) Q4_0
    /// 208–220 → 247–256 tok/s, Q2_K 215–244 → 255–263. 64 rows of activations are 180 KB for n = 2048 (Q8_0's layout),
    /// 495 KB for 5632: L2, not L1. (The Q6_K kernel, which decodes a row once per tile, did not gain from tiles of 32 or
    /// 64; nor did Q4_K's of the same shape before it went sixteen rows at a time: `gemm-micro --type q4_k` 83 at 16 rows,
    /// 76–78 at 32 and 64; 100–104 → 200–218 with DotQ4KRows16Avx512.)
    /// </summary>
    internal const int Rows16Tile = 64;

    /// <summary>Prefill: <see cref="VecDot.DotRows16Avx512{T}"/> for a legacy type, <see cref="VecDot.DotQ80Rows16Avx512"/> for
    /// Q8_0, <see cref="VecDot.DotQ2KRows16Avx512"/> for Q2_K, <see cref="VecDot.DotQ3KRows16Avx512"/> for Q3_K,
    /// <see cref="VecDot.DotQ4KRows16Avx512"/> for Q4_K and Q5_K, <see cref="VecDot.DotQ6KRows16Avx512"/> for Q6_K.
    /// <paramref name="acc"/> holds 8·B vectors (Q8_0's eight accumulators per activation row).</summary>
    [SkipLocalsInit] // isum is zeroed by the kernels, per super-block
    static void Rows16(GgmlType type, byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int n, float* y, int yStride, Vector512<float>* acc)
    {
        if (type is GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.IQ4_XS)
        {
            var isum = stackalloc Vector512<int>[B]; // the super-block integers of each activation row
            if (type == GgmlType.Q2_K) VecDot.DotQ2KRows16Avx512(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            else if (type == GgmlType.Q3_K) VecDot.DotQ3KRows16Avx512(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            else if (type == GgmlType.IQ4_XS) VecDot.DotIQ4XSRows16Avx512(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            else if (type == GgmlType.Q6_K) VecDot.DotQ6KRows16Avx512(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            else if (type == GgmlType.Q5_K) VecDot.DotQ4KRows16Avx512<Q5KLayout>(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            else VecDot.DotQ4KRows16Avx512<Q4KLayout>(w, rowBytes, rows, x, xStride, B, n / 256, y, yStride, acc, isum);
            return;
        }
        switch (type)
        {
            case GgmlType.Q8_0: VecDot.DotQ80Rows16Avx512(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q4_0: VecDot.DotRows16Avx512<VecDot.Q40Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q4_1: VecDot.DotRows16Avx512<VecDot.Q41Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q5_0: VecDot.DotRows16Avx512<VecDot.Q50Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            default: VecDot.DotRows16Avx512<VecDot.Q51Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
        }
    }

    /// <summary>IQ4_NL through the eight-row legacy kernel (<see cref="VecDot.IQ4NLBlock"/>): AVX2 with AVX-VNNI; without
    /// VNNI it runs one row at a time (<see cref="VecDot.DotIQ4NLAvx2"/> on ggml's Q8_0 activations).</summary>
    internal static bool Iq4nlRows8(GgmlType type) => type == GgmlType.IQ4_NL && Avx2Rows(type) && AvxVnni.IsSupported;

    /// <summary>Decode: <see cref="VecDot.DotRows8Avx2{T}(byte*, long, int, byte*, int, float*)"/> for a legacy type.</summary>
    static void Rows8(GgmlType type, byte* w, long rowBytes, int rows, byte* x, int n, float* y)
    {
        switch (type)
        {
            case GgmlType.Q4_0: VecDot.DotRows8Avx2<VecDot.Q40Block>(w, rowBytes, rows, x, n / 32, y); break;
            case GgmlType.Q4_1: VecDot.DotRows8Avx2<VecDot.Q41Block>(w, rowBytes, rows, x, n / 32, y); break;
            case GgmlType.Q5_0: VecDot.DotRows8Avx2<VecDot.Q50Block>(w, rowBytes, rows, x, n / 32, y); break;
            case GgmlType.IQ4_NL: VecDot.DotRows8Avx2<VecDot.IQ4NLBlock>(w, rowBytes, rows, x, n / 32, y); break;
            default: VecDot.DotRows8Avx2<VecDot.Q51Block>(w, rowBytes, rows, x, n / 32, y); break;
        }
    }

    /// <summary>Prefill: <see cref="VecDot.DotRows8Avx2{T}(byte*, long, int, byte*, int, int, int, float*, int, Vector256{float}*)"/> for a legacy type, <see cref="VecDot.DotQ80Rows8Avx2{TVnni}"/> for Q8_0.</summary>
    static void Rows8(GgmlType type, byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int n, float* y, int yStride, Vector256<float>* acc)
    {
        switch (type)
        {
            case GgmlType.Q8_0: VecDot.DotQ80Rows8Avx2<VecDot.HasVnni>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q4_0: VecDot.DotRows8Avx2<VecDot.Q40Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q4_1: VecDot.DotRows8Avx2<VecDot.Q41Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.Q5_0: VecDot.DotRows8Avx2<VecDot.Q50Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            case GgmlType.IQ4_NL: VecDot.DotRows8Avx2<VecDot.IQ4NLBlock>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
            default: VecDot.DotRows8Avx2<VecDot.Q51Block>(w, rowBytes, rows, x, xStride, B, n / 32, y, yStride, acc); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float DotAvx2(GgmlType type, byte* w, byte* x, int n) => type switch
    {
        GgmlType.Q4_K => VecDot.DotQ4KRowAvx2(w, x, n / 256),
        GgmlType.Q5_K => VecDot.DotQ5KRowAvx2(w, x, n / 256),
        GgmlType.Q3_K => VecDot.Rows16 ? VecDot.DotQ3KAvx512(w, x, n / 256) : VecDot.DotQ3KAvx2(w, x, n / 256),
        GgmlType.Q2_K => VecDot.Rows16 ? VecDot.DotQ2KAvx512(w, x, n / 256) : VecDot.DotQ2KAvx2(w, x, n / 256),
        GgmlType.Q6_K => VecDot.DotQ6KAvx2(w, x, n / 256),
        GgmlType.IQ4_XS => VecDot.Rows16 ? VecDot.DotIQ4XSRowExact<VecDot.HasVnni>(w, x, n / 256) : VecDot.DotIQ4XSRow(w, x, n / 256),
        GgmlType.IQ4_NL => VecDot.DotIQ4NLAvx2(w, x, n / 32),
        GgmlType.IQ2_XXS => Avx512BW.IsSupported ? VecDot.DotSignedLatticeAvx512<VecDot.IQ2XXSWide>(w, x, n / 256) : VecDot.DotLatticeAvx2<VecDot.IQ2XXSBlock>(w, x, n / 256),
        GgmlType.IQ2_XS => Avx512BW.IsSupported ? VecDot.DotSignedLatticeAvx512<VecDot.IQ2XSWide>(w, x, n / 256) : VecDot.DotLatticeAvx2<VecDot.IQ2XSBlock>(w, x, n / 256),
        GgmlType.IQ2_S => Avx512BW.IsSupported ? VecDot.DotSignedLatticeAvx512<VecDot.IQ2SWide>(w, x, n / 256) : VecDot.DotLatticeAvx2<VecDot.IQ2SBlock>(w, x, n / 256),
        GgmlType.IQ3_XXS => Avx512BW.IsSupported ? VecDot.DotSignedLatticeAvx512<VecDot.IQ3XXSWide>(w, x, n / 256) : VecDot.DotLatticeAvx2<VecDot.IQ3XXSBlock>(w, x, n / 256),
        GgmlType.IQ3_S => Avx512BW.IsSupported ? VecDot.DotSignedLatticeAvx512<VecDot.IQ3SWide>(w, x, n / 256) : VecDot.DotLatticeAvx2<VecDot.IQ3SBlock>(w, x, n / 256),
        GgmlType.IQ1_S => Avx512BW.IsSupported ? VecDot.DotIQ1Avx512<VecDot.IQ1SWide>(w, x, n / 256) : VecDot.DotIQ1SAvx2(w, x, n / 256),
        GgmlType.IQ1_M => Avx512BW.IsSupported ? VecDot.DotIQ1Avx512<VecDot.IQ1MWide>(w, x, n / 256) : VecDot.DotIQ1MAvx2(w, x, n / 256),
        _ => throw new System.Diagnostics.UnreachableException($"no single-row AVX2 kernel for {type}"),
    };

    /// <summary>
    /// Rows [r0, r1) of a weight matrix against B activation rows, blocked for the caches: for each tile of
    /// <see cref="Tile"/> activation rows, every weight row of the range runs against that tile, so one tile of
    /// activations (~37 KB for n = 2048) and the range's weights (~32 KB) stay in L2 while they are reused, instead
    /// of every weight row streaming all B activation rows through the cache. Results are those of <see cref="Run"/>.
    /// </summary>
    [SkipLocalsInit] // the stackalloc'd accumulators are zeroed by the kernels
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RunBlock(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride, bool finiteF16 = false)
    {
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 && Vector512.IsHardwareAccelerated && n % 64 == 0)
        {
            FloatBlock(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride);
            return;
        }
        if (PrefillRowGroup(type) == 16)
        {
            // tiles of Rows16Tile activation rows against groups of sixteen weight rows, one per lane (VecDot.Rows16.cs):
            // each row's bits are those of its decode kernel, without the horizontal sums
            var acc16 = Scratch(ref _rows16Acc, 8 * Rows16Tile * 16); // [Rows16Tile, 8] (Q8_0: eight accumulators per row)
            for (int b0 = 0; b0 < B; b0 += Rows16Tile)
                for (int r = r0; r < r1; r += 16)
                    Rows16(type, w + (long)r * rowBytes, rowBytes, Math.Min(16, r1 - r), x + (long)b0 * xStride, xStride,
                        Math.Min(Rows16Tile, B - b0), n, y + (long)b0 * yStride + r, yStride, (Vector512<float>*)acc16);
            return;
        }
        if (KRows8(type))
        {
            // tiles of Rows16Tile activation rows against groups of eight weight rows, one per lane (VecDot.KRows8.cs)
            var kAcc = stackalloc Vector256<float>[2 * Rows16Tile]; // [Rows16Tile, 2]: S and M of each activation row (Q6_K, Q2_K, Q3_K: one chain)
            var kIsum = stackalloc Vector256<int>[Rows16Tile];      // [Rows16Tile]: a super-block's integers
            var kValues = stackalloc Vector256<byte>[64];           // [16, 4]: Q6_K's decoded super-block of eight rows
            for (int b0 = 0; b0 < B; b0 += Rows16Tile)
                for (int r = r0; r < r1; r += 8)
                {
                    byte* wr = w + (long)r * rowBytes, xb = x + (long)b0 * xStride;
                    float* yb = y + (long)b0 * yStride + r;
                    int rows = Math.Min(8, r1 - r), tb = Math.Min(Rows16Tile, B - b0);
                    if (type == GgmlType.Q4_K) VecDot.DotK4Rows8Avx2<VecDot.Q4KWeights>(wr, rowBytes, rows, xb, xStride, tb, n / 256, yb, yStride, kAcc, kIsum);
                    else if (type == GgmlType.Q5_K) VecDot.DotK4Rows8Avx2<VecDot.Q5KWeights>(wr, rowBytes, rows, xb, xStride, tb, n / 256, yb, yStride, kAcc, kIsum);
                    else if (type == GgmlType.Q2_K) VecDot.DotQ2KRows8Avx2(wr, rowBytes, rows, xb, xStride, tb, n / 256, yb, yStride, kAcc, kIsum);
                    else if (type == GgmlType.Q3_K) VecDot.DotQ3KRows8Avx2(wr, rowBytes, rows, xb, xStride, tb, n / 256, yb, yStride, kAcc, kIsum);
                    else VecDot.DotQ6KRows8Avx2(wr, rowBytes, rows, xb, xStride, tb, n / 256, yb, yStride, kAcc, kIsum, kValues);
                }
            return;
        }
        if (RowGroup(type) == 8)
        {
            // tiles of Tile activation rows against groups of eight weight rows (VecDot.DotRows8Avx2); Q8_0 keeps eight
            // accumulators per activation row (VecDot.DotQ80Rows8Avx2)
            var rowsAcc = stackalloc Vector256<float>[8 * Tile];
            for (int b0 = 0; b0 < B; b0 += Tile)
                for (int r = r0; r < r1; r += 8)
                    Rows8(type, w + (long)r * rowBytes, rowBytes, Math.Min(8, r1 - r), x + (long)b0 * xStride, xStride,
                        Math.Min(Tile, B - b0), n, y + (long)b0 * yStride + r, yStride, rowsAcc);
            return;
        }
        if (!HasBatched(type))
        {
            if (type is GgmlType.F16 or GgmlType.BF16 && B > 1 && B <= Tile && Avx2.IsSupported && !Vector512.IsHardwareAccelerated)
                HalfBlock256(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride, finiteF16);
            else if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 && B > 1 && Vector256.IsHardwareAccelerated && !Vector512.IsHardwareAccelerated)
                FloatBlock256(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride);
            else if (PortableFloat(type) && B > 1)
                FloatBlockPortable(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride);
            else if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
                for (int r = r0; r < r1; r++) Run(type, w + (long)r * rowBytes, rowBytes, x, xStride, B, n, y + r, yStride);
            else
                // Run per weight row and tile of Tile activation rows (on AVX2 the four-row kernels, else VecDot.Dot per
                // pair), so that a tile (16 × 2.3 KB of Q8_K for n = 2048) stays in L2 while the range's rows run against
                // it, instead of all B activation rows streaming through the cache once per weight row.
                for (int b0 = 0; b0 < B; b0 += Tile)
                {
                    int tb = Math.Min(Tile, B - b0);
                    if (tb == 3 && HasFourRowKernel(type)) { RunPaddedToFour(type, w, rowBytes, r0, r1, x + (long)b0 * xStride, xStride, tb, n, y + (long)b0 * yStride, yStride); continue; }
                    for (int r = r0; r < r1; r++)
                        Run(type, w + (long)r * rowBytes, rowBytes, x + (long)b0 * xStride, xStride, tb, n, y + (long)b0 * yStride + r, yStride);
                }
            return;
        }
        Q80Block(w, rowBytes, r0, r1, x, xStride, B, n, y, yStride); // HasBatched: Q8_0 without AVX-VNNI
    }

    /// <summary>
    /// Writes a tile's results, held as t[(r − r0) · tStride + b], to y[b · yStride + r] one activation row at a time
    /// (a contiguous run of r per row b). Written weight row by weight row instead, the tb stores of each row land
    /// yStride floats apart — 8 KiB for a 2048-row matrix, all in one L1d set (`gemm-micro` Q4_K: 80–88 GMAC/s that
    /// way, 91–99 this way).
    /// </summary>
    static void StoreTile(float* t, int tStride, int r0, int r1, int tb, float* y, int yStride)
    {
        for (int b = 0; b < tb; b++)
        {
            float* yb = y + (long)b * yStride, tp = t + b;
            for (int r = r0; r < r1; r++, tp += tStride) yb[r] = *tp;
        }
    }

    /// <summary>
    /// Σ of the 16 lanes in one fixed tree, ((s0–3 + s4–7) + (s8–11 + s12–15)) with s0–3 = (v0 + v1) + (v2 + v3): how
    /// every quantized kernel here ends a dot product, so a row summed alone and sixteen rows summed at once by
    /// <see cref="Sums16"/> give the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float Sum(Vector512<float> v)
    {
        v += Avx512F.Shuffle(v, v, 0xB1);             // lanes 2k, 2k+1: v2k + v2k+1
        v += Avx512F.Shuffle(v, v, 0x4E);             // each 128-bit lane: (v0 + v1) + (v2 + v3)
        v += Avx512F.Shuffle4x128(v, v, 0xB1);        // 128-bit lanes 0, 1: s0–3 + s4–7; 2, 3: s8–11 + s12–15
        v += Avx512F.Shuffle4x128(v, v, 0x4E);
        return v.ToScalar();
    }

    /// <summary>
    /// The lane sums of 16 vectors v[0], v[stride], …, v[15·stride] at once: lane b of the result is
    /// <see cref="Sum"/>(v[b·stride]), bit for bit — the same tree, transposed: adjacent lanes of two vectors, then pairs
    /// of those, then adjacent 128-bit lanes, then the halves (15 + 15 shuffles and 15 adds for 16 sums, where 16 single
    /// sums take 64 of each).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Sums16(Vector512<float>* v, int stride)
    {
        // level 1: per 128-bit lane [a0 + a1, a2 + a3, b0 + b1, b2 + b3] for the pairs (v2k, v2k+1)
        var c0 = Pairs(v[0], v[stride]);
        var c1 = Pairs(v[2 * stride], v[3 * stride]);
        var c2 = Pairs(v[4 * stride], v[5 * stride]);
        var c3 = Pairs(v[6 * stride], v[7 * stride]);
        var c4 = Pairs(v[8 * stride], v[9 * stride]);
        var c5 = Pairs(v[10 * stride], v[11 * stride]);
        var c6 = Pairs(v[12 * stride], v[13 * stride]);
        var c7 = Pairs(v[14 * stride], v[15 * stride]);
        // level 2: per 128-bit lane the four-lane sums of v4m..v4m+3
        var e0 = Pairs(c0, c1); var e1 = Pairs(c2, c3); var e2 = Pairs(c4, c5); var e3 = Pairs(c6, c7);
        // levels 3 and 4: adjacent 128-bit lanes, then the halves; 128-bit lane j ends holding v4j..v4j+3
        var p0 = Avx512F.Shuffle4x128(e0, e1, 0x88) + Avx512F.Shuffle4x128(e0, e1, 0xDD);
        var p1 = Avx512F.Shuffle4x128(e2, e3, 0x88) + Avx512F.Shuffle4x128(e2, e3, 0xDD);
        return Avx512F.Shuffle4x128(p0, p1, 0x88) + Avx512F.Shuffle4x128(p0, p1, 0xDD);

        static Vector512<float> Pairs(Vector512<float> a, Vector512<float> b) => Avx512F.Shuffle(a, b, 0x88) + Avx512F.Shuffle(a, b, 0xDD);
    }

    // ---- Q4_K × Q8_K ------------------------------------------------------------------------------------------
    // Q4_K super-block (144 B): d f16 | dmin f16 | scales[12] (8 six-bit scales, 8 six-bit mins) | qs[128].
    // Chunk c (0..3) of qs holds elements 64c..64c+31 in its low nibbles (sub-block 2c) and 64c+32..63 in its high
    // nibbles (sub-block 2c+1). The activations these kernels read are Q8_K in the kernels' layout (Q8KStride = 320 B)
    // as PrepareQ8KForQ4K leaves them: qs[256] int8 (permuted) | bsum32[8] int16 (sums of 32) at 256 | d8 f32 at 288.
    // Per super-block, ggml's integers: isum = Σ_j scale_j·Σ q4·q8 and imin = Σ_j min_j·bsum32_j, exact in int32; then
    // two float chains per row, S = fma(isum, d8·d, S) and M = fma(imin, d8·dmin, M), and the result S − M. That is
    // the arithmetic of the decode kernels below and of the sixteen-row prefill kernel (VecDot.DotQ4KRows16Avx512,
    // rows in lanes, no horizontal sums), so decode and prefill give the same bits.

    /// <summary>The super-blocks with Q4_K's 6-bit scales and mins that the AVX-512 Q4_K kernels decode: Q4_K (144 B: d |
    /// dmin | scales[12] | qs[128]) and Q5_K (176 B: the same with qh[32] before qs, bit j of qh[l] the 16 of value l of
    /// sub-block j, values 0–31). A constant per instantiation, as <see cref="VecDot.IVnniChoice"/>.</summary>
    internal interface IK45 { static abstract int Bytes { get; } static abstract bool Fifth { get; } }
    internal readonly struct Q4KLayout : IK45 { public static int Bytes => 144; public static bool Fifth => false; }
    internal readonly struct Q5KLayout : IK45 { public static int Bytes => 176; public static bool Fifth => true; }

    /// <summary>
    /// Unpacks one Q4_K super-block (<typeparamref name="T"/> = <see cref="Q5KLayout"/>: Q5_K, the values with their fifth
    /// bit): the four 64-byte quant vectors in the order <see cref="PrepareQ8KForQ4K"/> gives
    /// the activations (one 64-byte load of qs holds chunks 2p and 2p+1: its low nibbles are lo 2p | lo 2p+1, its high
    /// nibbles hi 2p | hi 2p+1), each sub-block's 6-bit scale spread over its int16 lanes (vpshufb), the eight mins as
    /// int16, and [d, 0, dmin, 0]. (Constants are written inline: in these AggressiveOptimization kernels the JIT embeds
    /// Vector*.Create constants, while static readonly fields would cost class-init checks.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void DecodeQ4K<T>(byte* blk, out Vector512<byte> w0, out Vector512<byte> w1, out Vector512<byte> w2, out Vector512<byte> w3,
        out Vector512<short> s0, out Vector512<short> s1, out Vector512<short> s2, out Vector512<short> s3,
        out Vector128<short> mins, out Vector128<float> dd) where T : IK45
    {
        var m4 = Vector512.Create((byte)0x0F);
        dd = Vector128.Create(Fp16.ToSingle(*(ushort*)blk), 0f, Fp16.ToSingle(*(ushort*)(blk + 2)), 0f);
        var scalesMins = Q4KScalesAndMins(Vector128.Load(blk));
        // vpshufb of [scales | mins] in every 128-bit lane: byte j to the low byte of each int16 lane, zero (0x80) to the
        // high byte. s_k's lanes 0..15 take the first sub-block's scale, lanes 16..31 the second's: (lo 0|lo 1) = scales
        // 0 | 2, (hi 0|hi 1) = 1 | 3, (lo 2|lo 3) = 4 | 6, (hi 2|hi 3) = 5 | 7.
        var sm = scalesMins.ToVector256Unsafe().ToVector512Unsafe();
        var all = Avx512F.Shuffle4x128(sm.AsInt32(), sm.AsInt32(), 0).AsByte();
        s0 = Avx512BW.Shuffle(all, Vector512.Create((ushort)0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000,
            0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002, 0x8002).AsByte()).AsInt16();
        s1 = Avx512BW.Shuffle(all, Vector512.Create((ushort)0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001, 0x8001,
            0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003, 0x8003).AsByte()).AsInt16();
        s2 = Avx512BW.Shuffle(all, Vector512.Create((ushort)0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004, 0x8004,
            0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006, 0x8006).AsByte()).AsInt16();
        s3 = Avx512BW.Shuffle(all, Vector512.Create((ushort)0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005, 0x8005,
            0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007, 0x8007).AsByte()).AsInt16();
        mins = Ssse3.Shuffle(scalesMins, Vector128.Create((ushort)0x8008, 0x8009, 0x800A, 0x800B, 0x800C, 0x800D, 0x800E, 0x800F).AsByte()).AsInt16(); // the mins as int16
        byte* qs = blk + (T.Fifth ? 48 : 16);
        var q01 = Vector512.Load(qs); var q23 = Vector512.Load(qs + 64);
        w0 = q01 & m4; w1 = Vector512.ShiftRightLogical(q01.AsUInt16(), 4).AsByte() & m4;
        w2 = q23 & m4; w3 = Vector512.ShiftRightLogical(q23.AsUInt16(), 4).AsByte() & m4;
        if (T.Fifth)
        {
            // Q5_K: bit j of qh[l] is the 16 of value l of sub-block j. qh in both 32-byte halves; each half's bit moved
            // to bit 4 by a per-half 16-bit shift (bits crossing into the neighbouring byte are masked off): w0 holds
            // sub-blocks 0 | 2 (qh << 4 | << 2), w1 1 | 3 (<< 3 | << 1), w2 4 | 6 (>> 0 | >> 2), w3 5 | 7 (>> 1 | >> 3).
            var m16 = Vector512.Create((byte)0x10);
            var qh = Both(Vector256.Load(blk + 16)).AsUInt16();
            w0 |= Avx512BW.ShiftLeftLogicalVariable(qh, Vector512.Create((ushort)4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)).AsByte() & m16;
            w1 |= Avx512BW.ShiftLeftLogicalVariable(qh, Vector512.Create((ushort)3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)).AsByte() & m16;
            w2 |= Avx512BW.ShiftRightLogicalVariable(qh, Vector512.Create((ushort)0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2)).AsByte() & m16;
            w3 |= Avx512BW.ShiftRightLogicalVariable(qh, Vector512.Create((ushort)1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3)).AsByte() & m16;
        }
    }

    /// <summary>
    /// A Q4_K super-block's 6-bit scales and mins from its first 16 bytes (d, dmin, scales[12]), as bytes
    /// [scales 0–7 | mins 0–7]: ggml's get_scale_min_k4, four at a time as its kmask code does, in one 128-bit register.
    /// With a0, a1, a2 the three 32-bit words of scales[12]: scales 0–3 = a0 &amp; 0x3F3F3F3F,
    /// scales 4–7 = (a2 &amp; 0x0F0F0F0F) | ((a0 &gt;&gt; 6) &amp; 0x03030303) &lt;&lt; 4, mins 0–3 = a1 &amp; 0x3F3F3F3F,
    /// mins 4–7 = ((a2 &gt;&gt; 4) &amp; 0x0F0F0F0F) | ((a1 &gt;&gt; 6) &amp; 0x03030303) &lt;&lt; 4.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<byte> Q4KScalesAndMins(Vector128<byte> head)
    {
        // bytes 4..15 are a0 | a1 | a2: dwords [a0, a2, a1, a2 >> 4] masked, and [·, a0, ·, a1] for the top two bits
        var x = Avx2.ShiftRightLogicalVariable(Ssse3.Shuffle(head, Vector128.Create((byte)4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15)).AsUInt32(),
                                               Vector128.Create(0u, 0, 0, 4)) & Vector128.Create(0x3F3F3F3Fu, 0x0F0F0F0F, 0x3F3F3F3F, 0x0F0F0F0F);
        var y = Vector128.ShiftRightLogical(Ssse3.Shuffle(head, Vector128.Create((byte)4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11)).AsUInt32(), 2)
                & Vector128.Create(0u, 0x30303030, 0, 0x30303030); // ((a >> 6) & 3) << 4
        return (x | y).AsByte();
    }

    /// <summary>One decoded Q4_K super-block against one Q8_K super-block (permuted quants at q8): sixteen int32 lanes
    /// whose sum is the super-block's isum = Σ_j scale_j·Σ q4·q8.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> Q4KSumi(sbyte* q8, Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3,
        Vector512<short> s0, Vector512<short> s1, Vector512<short> s2, Vector512<short> s3)
    {
        var p0 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(q8)), s0);
        var p1 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(q8 + 64)), s1);
        var p2 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(q8 + 128)), s2);
        var p3 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(q8 + 192)), s3);
        return (p0 + p1) + (p2 + p3);
    }

    /// <summary>
    /// One decoded Q4_K super-block against one Q8_K super-block: the exact isum (<see cref="Q4KSumi"/>, folded) and imin
    /// (the mins against the activation's sums of 32) side by side, [isum, isum, imin, imin], then
    /// acc = fma(that, [d, 0, dmin, 0]·d8, acc): lane 0 is the row's S chain, lane 2 its M chain.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Q4KStep(byte* yb, Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3,
        Vector512<short> s0, Vector512<short> s1, Vector512<short> s2, Vector512<short> s3, Vector128<short> mins,
        Vector128<float> dd, ref Vector128<float> acc)
    {
        var sumi = Q4KSumi((sbyte*)yb, w0, w1, w2, w3, s0, s1, s2, s3);
        var s8 = sumi.GetLower() + sumi.GetUpper();
        var s4 = s8.GetLower() + s8.GetUpper();
        var imin = Sse2.MultiplyAddAdjacent(mins, Vector128.Load((short*)(yb + Q8KSums)));
        var h = Sse2.UnpackLow(s4.AsInt64(), imin.AsInt64()).AsInt32() + Sse2.UnpackHigh(s4.AsInt64(), imin.AsInt64()).AsInt32();
        acc = Fma.MultiplyAdd(Vector128.ConvertToSingle(h + Sse2.Shuffle(h, 0xB1)), dd * Vector128.Create(*(float*)(yb + Q8KScale)), acc);
    }

    /// <summary>
    /// <see cref="Q4KStep"/>'s integers for two super-blocks at once (two of one row, or one of each of two rows), the
    /// folds shared: [isum a, isum a, imin a, imin a | isum b, isum b, imin b, imin b] as floats, from the lanes of
    /// <paramref name="a"/> and <paramref name="b"/> and the four int32 min products of each (<paramref name="iminAB"/>,
    /// a's in the low half). Integer sums are exact in any order, so the values are Q4KStep's.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Q4KIntegers2(Vector512<int> a, Vector512<int> b, Vector256<int> iminAB)
    {
        var e = Avx512F.Shuffle4x128(a, b, 0x88) + Avx512F.Shuffle4x128(a, b, 0xDD); // 128-bit lanes [a0 + a1, a2 + a3, b0 + b1, b2 + b3]
        var f = e + Avx512F.Shuffle4x128(e, e, 0xB1);                                // [a, a, b, b]
        var s = Avx512F.Shuffle4x128(f, f, 0x08).GetLower();                          // [a | b], four lanes each
        // per half [s0 + s2, s1 + s3, m0 + m2, m1 + m3], then each pair of lanes summed into both
        var h = Avx2.UnpackLow(s.AsInt64(), iminAB.AsInt64()).AsInt32() + Avx2.UnpackHigh(s.AsInt64(), iminAB.AsInt64()).AsInt32();
        return Vector256.ConvertToSingle(h + Avx2.Shuffle(h, 0xB1));
    }

    /// <summary>A Q4_K dot product from its two chains: S − M.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Q4KResult(Vector128<float> acc) => acc.ToScalar() - acc.GetElement(2);

    /// <summary>One Q4_K (or Q5_K: <typeparamref name="T"/>) weight row against one activation row (decode): <see cref="Q4KStep"/> per super-block straight
    /// from the weights, accumulators in registers.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Q4K1<T>(byte* w, byte* x, int nb) where T : IK45
    {
        var acc = Vector128<float>.Zero;
        // Prefetched ahead as the other decode kernels: on the AMD EPYC VM the hardware prefetcher alone kept this one
        // stream ahead (the prefetches were 6 of ~90 instructions per super-block, and were left out); on the
        // Sapphire Rapids VM it does not: Q4K1Pair streamed 20.8 GB/s without, 28.7 with (kernel-micro --pair,
        // 2 threads), and TinyLlama Q4_K_M decoded 32.5 → 40.4 tok/s.
        // Two super-blocks per step, their folds shared (Q4KIntegers2); each still meets the chains in order.
        int i = 0;
        for (; i + 2 <= nb; i += 2, w += 2 * T.Bytes, x += 2 * Q8KStride)
        {
            Sse.Prefetch0(w + PrefetchDistance); Sse.Prefetch0(w + PrefetchDistance + 64); Sse.Prefetch0(w + PrefetchDistance + 128);
            Sse.Prefetch0(w + PrefetchDistance + 192); Sse.Prefetch0(w + PrefetchDistance + 256);
            if (T.Fifth) Sse.Prefetch0(w + PrefetchDistance + 320);
            DecodeQ4K<T>(w, out var a0, out var a1, out var a2, out var a3, out var as0, out var as1, out var as2, out var as3, out var am, out var ad);
            var sumiA = Q4KSumi((sbyte*)x, a0, a1, a2, a3, as0, as1, as2, as3);
            DecodeQ4K<T>(w + T.Bytes, out var b0, out var b1, out var b2, out var b3, out var bs0, out var bs1, out var bs2, out var bs3, out var bm, out var bd);
            var sumiB = Q4KSumi((sbyte*)x + Q8KStride, b0, b1, b2, b3, bs0, bs1, bs2, bs3);
            var imin = Avx2.MultiplyAddAdjacent(Vector256.Create(am, bm), Vector256.Create(Vector128.Load((short*)(x + Q8KSums)), Vector128.Load((short*)(x + Q8KStride + Q8KSums))));
            var f = Q4KIntegers2(sumiA, sumiB, imin);
            acc = Fma.MultiplyAdd(f.GetLower(), ad * Vector128.Create(*(float*)(x + Q8KScale)), acc);
            acc = Fma.MultiplyAdd(f.GetUpper(), bd * Vector128.Create(*(float*)(x + Q8KStride + Q8KScale)), acc);
        }
        if (i < nb)
        {
            DecodeQ4K<T>(w, out var w0, out var w1, out var w2, out var w3, out var s0, out var s1, out var s2, out var s3, out var mins, out var dd);
            Q4KStep(x, w0, w1, w2, w3, s0, s1, s2, s3, mins, dd, ref acc);
        }
        return Q4KResult(acc);
    }

    // ---- Q6_K × Q8_K ------------------------------------------------------------------------------------------
    // Q6_K super-block (210 B): ql[128] | qh[64] | scales[16] int8 | d f16. Half h (0,1) covers elements 128h..128h+127:
    // for l < 32, element 128h+l+32k (k = 0..3) = nibble (k<2: low, else high) of ql[64h + l + 32(k&1)] | 2 bits
    // (qh[32h+l] >> 2k) << 4, minus 32. Each 16 elements share one int8 scale.
    // dot = d·d8·(Σ_e scale(e)·q6u(e)·q8(e) − 32·Σ_j scale_j·bsum_j), with q6u = q6 + 32 ∈ [0, 63].
    // Per super-block the integer isum = Σ_e scale(e)·q6u(e)·q8(e) − 32·Σ_j scale_j·bsum_j is exact in int32 (at most
    // 16·16·63·128·128 + 32·16·128·16·128 < 2^29), then one float chain per row, S = fma(isum, d·d8, S): the arithmetic of
    // the decode kernels below and of the sixteen-row prefill kernel (VecDot.DotQ6KRows16Avx512, rows in lanes), so
    // decode and prefill give the same bits.

    /// <summary>
    /// Unpacks one Q6_K super-block: the quants as unsigned q6 + 32 ∈ [0, 63] in four 64-byte vectors (elements
    /// 0..63, 64..127, 128..191, 192..255), each 16-element group's int8 scale spread over its int16 lanes, the 16
    /// scales themselves (for the −32·Σ scale·bsum correction) and d.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void DecodeQ6K(byte* blk, out Vector512<byte> w0, out Vector512<byte> w1, out Vector512<byte> w2, out Vector512<byte> w3,
        out Vector512<short> s0, out Vector512<short> s1, out Vector512<short> s2, out Vector512<short> s3,
        out Vector256<short> scales, out float d, ref float f16)
    {
        var m4 = Vector512.Create((byte)0x0F);
        var m30 = Vector512.Create((byte)0x30);
        // vpermw indices: 8 lanes (16 elements) per scale, 4 scales per 64 elements.
        var perm6 = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        d = Unsafe.Add(ref f16, *(ushort*)(blk + 208)); // Fp16.ToSingle, the table taken once by the caller
        var scales16 = Avx512BW.ConvertToVector512Int16(Vector256.Create(Vector128.Load((sbyte*)blk + 192), Vector128<sbyte>.Zero));
        // Half h covers elements 128h..128h+127 from ql[64h..], qh[32h..]: for l < 32, element 128h + l + 32k is
        // nibble (k < 2: low, else high) of ql[64h + l + 32(k & 1)] | ((qh[32h + l] >> 2k) & 3) << 4.
        // One 64-byte load of ql holds k = 0, 1 (low nibbles) and k = 2, 3 (high nibbles); qh, broadcast to both
        // 32-byte halves, gives the two high bits of k in bits 4–5 by a per-half shift (16-bit lanes: the bits that
        // cross into the neighbouring byte are masked off): k = 0 / 1: qh << 4 / << 2; k = 2 / 3: qh >> 0 / >> 2.
        var up01 = Vector512.Create((ushort)4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2);
        var down23 = Vector512.Create((ushort)0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2);
        var ql = Vector512.Load(blk); var qh = Both(Vector256.Load(blk + 128)).AsUInt16();
        w0 = (ql & m4) | (Avx512BW.ShiftLeftLogicalVariable(qh, up01).AsByte() & m30);
        w1 = (Vector512.ShiftRightLogical(ql.AsUInt16(), 4).AsByte() & m4) | (Avx512BW.ShiftRightLogicalVariable(qh, down23).AsByte() & m30);
        ql = Vector512.Load(blk + 64); qh = Both(Vector256.Load(blk + 160)).AsUInt16();
        w2 = (ql & m4) | (Avx512BW.ShiftLeftLogicalVariable(qh, up01).AsByte() & m30);
        w3 = (Vector512.ShiftRightLogical(ql.AsUInt16(), 4).AsByte() & m4) | (Avx512BW.ShiftRightLogicalVariable(qh, down23).AsByte() & m30);
        s0 = Avx512BW.PermuteVar32x16(scales16, perm6);
        s1 = Avx512BW.PermuteVar32x16(scales16, perm6 + Vector512.Create((short)4));
        s2 = Avx512BW.PermuteVar32x16(scales16, perm6 + Vector512.Create((short)8));
        s3 = Avx512BW.PermuteVar32x16(scales16, perm6 + Vector512.Create((short)12));
        scales = scales16.GetLower();
    }

    /// <summary>v in both 256-bit halves (Vector512.Create(v), which the JIT built in a stack slot, stored and reloaded
    /// every super-block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<byte> Both(Vector256<byte> v) => Avx512F.InsertVector256(v.ToVector512Unsafe(), v, 1);

    /// <summary>One decoded Q6_K super-block (quants offset by +32) against one Q8_K super-block: eight int32 lanes whose
    /// sum is the super-block's exact isum = Σ_e scale(e)·q6u(e)·q8(e) − 32·Σ_j scale_j·bsum_j.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Q6KSumi(byte* yb, Vector512<byte> w0, Vector512<byte> w1, Vector512<byte> w2, Vector512<byte> w3,
        Vector512<short> s0, Vector512<short> s1, Vector512<short> s2, Vector512<short> s3, Vector256<short> scales)
    {
        sbyte* q8 = (sbyte*)yb;
        var p0 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(q8)), s0);
        var p1 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(q8 + 64)), s1);
        var p2 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(q8 + 128)), s2);
        var p3 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(q8 + 192)), s3);
        var sumi = (p0 + p1) + (p2 + p3);
        var corr = Avx2.MultiplyAddAdjacent(Vector256.Load((short*)(yb + Q8KSums)), scales);
        return (sumi.GetLower() + sumi.GetUpper()) - Vector256.ShiftLeft(corr, 5);
    }

    /// <summary>One Q6_K weight row against one activation row (decode): two super-blocks per step, their folds shared
    /// (<see cref="VecDot.SumPair"/>), each meeting the row's chain S = fma(isum, d·d8, S) in order; weights prefetched
    /// ahead.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float Q6K1(byte* w, byte* x, int nb)
    {
        float acc = 0;
        ref float f16 = ref Fp16.TableStart;
        int i = 0;
        for (; i + 2 <= nb; i += 2, w += 420, x += 2 * Q8KStride)
        {
            for (int l = 0; l < 420; l += 64) Sse.Prefetch0(w + PrefetchDistance + l);
            DecodeQ6K(w, out var a0, out var a1, out var a2, out var a3, out var as0, out var as1, out var as2, out var as3, out var asc, out float ad, ref f16);
            var sa = Q6KSumi(x, a0, a1, a2, a3, as0, as1, as2, as3, asc);
            DecodeQ6K(w + 210, out var b0, out var b1, out var b2, out var b3, out var bs0, out var bs1, out var bs2, out var bs3, out var bsc, out float bd, ref f16);
            var sbB = Q6KSumi(x + Q8KStride, b0, b1, b2, b3, bs0, bs1, bs2, bs3, bsc);
            var f = VecDot.SumPair(sa, sbB);
            acc = MathF.FusedMultiplyAdd(f.ToScalar(), ad * *(float*)(x + Q8KScale), acc);
            acc = MathF.FusedMultiplyAdd(f.GetElement(1), bd * *(float*)(x + Q8KStride + Q8KScale), acc);
        }
        if (i < nb)
        {
            DecodeQ6K(w, out var w0, out var w1, out var w2, out var w3, out var s0, out var s1, out var s2, out var s3, out var sc, out float d, ref f16);
            var si = Q6KSumi(x, w0, w1, w2, w3, s0, s1, s2, s3, sc);
            acc = MathF.FusedMultiplyAdd(VecDot.SumPair(si, si).ToScalar(), d * *(float*)(x + Q8KScale), acc);
        }
        return acc;
    }

    // ---- Q8_0 × Q8_0 ------------------------------------------------------------------------------------------
    // Q8_0 block (34 B): d f16 | qs[32] int8. Weights and activations are sign-extended to int16 and multiplied with
    // vpmaddwd (16 int32 lanes per block), then scaled by d_w·d_x in float. Four blocks are combined before touching
    // the accumulator so the dependency chain through it stays short.

    /// <summary>
    /// One Q8_0 weight row against B activation rows (<see cref="Run"/>): <see cref="Q80TilePart"/> over all blocks,
    /// then the horizontal sums.
    /// </summary>
    internal static void Q80Tile(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride, short* decQ, float* decD)
    {
        var acc = (Vector512<float>*)Scratch(ref _q80Acc, (long)B * 16);
        Q80TilePart(w, x, xStride, B, nb, 0, nb, acc, decQ, decD);
        for (int b = 0; b < B; b++) y[(long)b * yStride] = Sum(acc[b]);
    }

    /// <summary>
    /// Blocks [i0, i1) of one Q8_0 weight row against B activation rows, continuing the accumulators acc[0..B) (started
    /// from zero when i0 = 0): the blocks are decoded once (quants widened to int16, scales to float) and activation
    /// rows run four at a time with their accumulators in registers. Parts start on multiples of four blocks, so per row
    /// b the operations and their order are those of <see cref="Q801"/> (four blocks per step, then single blocks)
    /// however the row is split: results depend neither on B nor on the parts.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Q80TilePart(byte* w, byte* x, int xStride, int B, int nb, int i0, int i1, Vector512<float>* acc, short* decQ, float* decD)
    {
        for (int i = i0; i < i1; i++)
        {
            byte* blk = w + i * 34;
            decD[i] = Fp16.ToSingle(*(ushort*)blk);
            WidenQ80(blk).Store(decQ + i * 32);
        }
        bool first = i0 == 0;
        int b = 0;
        for (; b + 4 <= B; b += 4)
        {
            byte* xa = x + (long)b * xStride;
            Vector512<float> accA = first ? default : acc[b], accB = first ? default : acc[b + 1];
            Vector512<float> accC = first ? default : acc[b + 2], accD = first ? default : acc[b + 3];
            int i = i0;
            for (; i + 4 <= i1; i += 4)
            {
                short* q = decQ + i * 32;
                var w0 = Vector512.Load(q); var w1 = Vector512.Load(q + 32); var w2 = Vector512.Load(q + 64); var w3 = Vector512.Load(q + 96);
                // weight scales broadcast once for the four activation rows; d_w·d_x is then one vector multiply per
                // block and row (the same product as the scalar d_w·d_x, so the bits do not change)
                var d0 = Vector512.Create(decD[i]); var d1 = Vector512.Create(decD[i + 1]);
                var d2 = Vector512.Create(decD[i + 2]); var d3 = Vector512.Create(decD[i + 3]);
                Q80Step4(xa, nb, i, w0, w1, w2, w3, d0, d1, d2, d3, ref accA);
                Q80Step4(xa + xStride, nb, i, w0, w1, w2, w3, d0, d1, d2, d3, ref accB);
                Q80Step4(xa + 2L * xStride, nb, i, w0, w1, w2, w3, d0, d1, d2, d3, ref accC);
                Q80Step4(xa + 3L * xStride, nb, i, w0, w1, w2, w3, d0, d1, d2, d3, ref accD);
            }
            for (; i < i1; i++)
            {
                var w0 = Vector512.Load(decQ + i * 32);
                Q80Step1(xa, nb, i, w0, decD[i], ref accA);
                Q80Step1(xa + xStride, nb, i, w0, decD[i], ref accB);
                Q80Step1(xa + 2L * xStride, nb, i, w0, decD[i], ref accC);
                Q80Step1(xa + 3L * xStride, nb, i, w0, decD[i], ref accD);
            }
            acc[b] = accA; acc[b + 1] = accB; acc[b + 2] = accC; acc[b + 3] = accD;
        }
        for (; b < B; b++)
        {
            byte* xa = x + (long)b * xStride;
            Vector512<float> a = first ? default : acc[b];
            int i = i0;
            for (; i + 4 <= i1; i += 4)
            {
                short* q = decQ + i * 32;
                Q80Step4(xa, nb, i, Vector512.Load(q), Vector512.Load(q + 32), Vector512.Load(q + 64), Vector512.Load(q + 96),
                    Vector512.Create(decD[i]), Vector512.Create(decD[i + 1]), Vector512.Create(decD[i + 2]), Vector512.Create(decD[i + 3]), ref a);
            }
            for (; i < i1; i++) Q80Step1(xa, nb, i, Vector512.Load(decQ + i * 32), decD[i], ref a);
            acc[b] = a;
        }
    }

    /// <summary>
    /// Rows [r0, r1) of a Q8_0 matrix against B activation rows (<see cref="RunBlock"/>), blocked for L1d: tiles of
    /// <see cref="Q80TileRows"/> activation rows, and along the row in parts of <see cref="Q80PartBlocks"/> blocks, so
    /// one part of a tile (16 rows × 36 blocks × 68 B = 39 KB of int16 activations) stays in the 48 KiB L1d while every
    /// weight row of the chunk runs over it; the accumulators ([rows, tile] vectors) carry between parts. One thread,
    /// 512 rows: 2048×5632 (ffn_down) 23–24 → 28–30 GMAC/s with parts (session 2); 16-row tiles of 36-block parts
    /// against 8-row tiles of 72 (session 8, `gemm-micro`, same core): 2048×2048 +2.5 %, 2048×5632 +7 %, 5632×2048 −1.5 %,
    /// each weight row decoded half as often.
    /// </summary>
    internal static void Q80Block(byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        int nb = n / 32;
        var (q80Quants, q80Scales) = Q80Buffers(n);
        short* decQ = (short*)q80Quants;
        float* decD = (float*)q80Scales;
        var acc = (Vector512<float>*)Scratch(ref _q80Acc, (long)(r1 - r0) * Q80TileRows * 16); // [rows, tile] accumulators
        float* sums = Scratch(ref _tileSums, (long)(r1 - r0) * Q80TileRows);                 // [rows, tile] results
        for (int b0 = 0; b0 < B; b0 += Q80TileRows)
        {
            int tb = Math.Min(Q80TileRows, B - b0);
            byte* xt = x + (long)b0 * xStride;
            for (int i0 = 0; i0 < nb; i0 += Q80PartBlocks)
            {
                int i1 = Math.Min(nb, i0 + Q80PartBlocks);
                for (int rr = r0; rr < r1; rr++)
                    Q80TilePart(w + (long)rr * rowBytes, xt, xStride, tb, nb, i0, i1, acc + (rr - r0) * Q80TileRows, decQ, decD);
            }
            // each weight row's 16 accumulators summed at once (lanes past tb unused)
            for (int r = r0; r < r1; r++) Sums16(acc + (r - r0) * Q80TileRows, 1).Store(sums + (r - r0) * Q80TileRows);
            StoreTile(sums, Q80TileRows, r0, r1, tb, y + (long)b0 * yStride, yStride);
        }
    }

    /// <summary>Four Q8_0 blocks (int16 weights w0..w3, weight scales d0..d3 broadcast) against blocks i..i+3 of one
    /// activation row: block k adds (d_k·d_x,k)·p_k, the scale product one vector multiply (the same bits as the
    /// scalar product broadcast).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Q80Step4(byte* x, int nb, int i, Vector512<short> w0, Vector512<short> w1, Vector512<short> w2, Vector512<short> w3,
        Vector512<float> d0, Vector512<float> d1, Vector512<float> d2, Vector512<float> d3, ref Vector512<float> acc)
    {
        float* xs = (float*)x;
        short* xq = (short*)(xs + nb) + i * 32;
        var p0 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(xq)));
        var p1 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(xq + 32)));
        var p2 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(xq + 64)));
        var p3 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(xq + 96)));
        var t = Vector512.FusedMultiplyAdd(d1 * Vector512.Create(xs[i + 1]), p1, d0 * Vector512.Create(xs[i]) * p0);
        var u = Vector512.FusedMultiplyAdd(d3 * Vector512.Create(xs[i + 3]), p3, d2 * Vector512.Create(xs[i + 2]) * p2);
        acc += t + u;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Q80Step1(byte* x, int nb, int i, Vector512<short> w0, float d0, ref Vector512<float> acc)
    {
        float* xs = (float*)x;
        short* xq = (short*)(xs + nb) + i * 32;
        var p0 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(xq)));
        acc = Vector512.FusedMultiplyAdd(Vector512.Create(d0 * xs[i]), p0, acc);
    }

    /// <summary>One Q8_0 weight row against one activation row (decode): the operations of <see cref="Q80Step4"/> /
    /// <see cref="Q80Step1"/> in the same order, straight from the weights, prefetched ahead.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Q801(byte* w, byte* x, int nb)
    {
        var acc = Vector512<float>.Zero;
        int i = 0;
        for (; i + 4 <= nb; i += 4)
        {
            byte* blk = w + i * 34;
            Sse.Prefetch0(blk + PrefetchDistance);
            Sse.Prefetch0(blk + PrefetchDistance + 64);
            Sse.Prefetch0(blk + PrefetchDistance + 128);
            Q80Step4(x, nb, i, WidenQ80(blk), WidenQ80(blk + 34), WidenQ80(blk + 68), WidenQ80(blk + 102),
                Vector512.Create(Fp16.ToSingle(*(ushort*)blk)), Vector512.Create(Fp16.ToSingle(*(ushort*)(blk + 34))),
                Vector512.Create(Fp16.ToSingle(*(ushort*)(blk + 68))), Vector512.Create(Fp16.ToSingle(*(ushort*)(blk + 102))), ref acc);
        }
        for (; i < nb; i++)
        {
            byte* blk = w + i * 34;
            Q80Step1(x, nb, i, WidenQ80(blk), Fp16.ToSingle(*(ushort*)blk), ref acc);
        }
        return Sum(acc);
    }

    /// <summary>A Q8_0 block's 32 quants sign-extended to int16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> WidenQ80(byte* blk) => Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 2));

    // ---- F32 / F16 / BF16 weights × F32 activations --------------------------------------------------------------
    // The weight row is widened to F32 once into a per-thread buffer (L1-resident), then dotted with each activation
    // row in a fixed order, so the result does not depend on B: with AVX-512 four 16-lane FMA accumulators (DotF32),
    // without it the AVX2 float order (Dot256: one 8-lane accumulator per pair).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void FloatRow(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (MulAdd.Portable)
        {
            FloatRowPortable(type, w, x, xStride, B, n, y, yStride);
            return;
        }
        if (type == GgmlType.F16 && B == 1 && n >= 64 && Vector512.IsHardwareAccelerated)
        {
            // Same lanes, same FMA order as DotF32 over the widened row, so B = 1 and B > 1 agree bit for bit.
            y[0] = DotF16Scaled<Checked>((ushort*)w, (float*)x + n, n, out bool nonFinite);
            if (nonFinite) y[0] = DotF16((ushort*)w, (float*)x, n); // an F16 infinity or NaN among the weights
            return;
        }
        if (type == GgmlType.BF16 && B == 1 && HalfRowsAvx2(n))
        {
            y[0] = DotBF16Avx2((ushort*)w, (float*)x, n); // decode: no widening pass over the row
            return;
        }
        float* wf = (float*)w;
        if (type != GgmlType.F32)
        {
            wf = Scratch(ref _rowBuffer, n);
            if (type == GgmlType.F16) WidenF16((ushort*)w, wf, n);
            else WidenBF16((ushort*)w, wf, n);
        }
        int b = 0;
        if (Vector512.IsHardwareAccelerated && n >= 64 && n % 64 == 0)
            for (; b + 4 <= B; b += 4)
                DotF32x4(wf, (float*)(x + (long)b * xStride), xStride / 4, n, y + (long)b * yStride, yStride);
        for (; b < B; b++) y[(long)b * yStride] = DotF32(wf, (float*)(x + (long)b * xStride), n);
    }

    /// <summary>
    /// <see cref="RunBlock"/> for F32/F16/BF16 weights without AVX-512: the range's rows widened to F32 once into a
    /// per-thread buffer, then tiles of <see cref="FloatTile256"/> activation rows against the range, three weight rows
    /// × three activation rows at a time (<see cref="DotF32Tile3x3"/>, nine accumulators in registers: 0.67 loads per
    /// FMA). Each pair's dot product follows the AVX2 float order (<see cref="Dot256{TRow}"/>), so the bits are those
    /// of decode and of <see cref="FloatRow"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void FloatBlock256(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        int rows = r1 - r0;
        float* wf = FloatRows(type, w, rowBytes, r0, rows, n, out int wStride); // [rows, wStride]
        int xs = xStride / 4;
        for (int b0 = 0; b0 < B; b0 += FloatTile256)
        {
            int tb = Math.Min(FloatTile256, B - b0);
            for (int r = 0; r < rows; r += 3)
                for (int b = b0; b < b0 + tb; b += 3)
                    DotF32Tile3x3(wf + (long)r * wStride, wStride, Math.Min(3, rows - r), (float*)(x + (long)b * xStride), xs,
                        Math.Min(3, b0 + tb - b), n, y + (long)b * yStride + r0 + r, yStride);
        }
    }

    /// <summary>Rows [r0, r0 + rows) as F32, [rows, wStride]: F32 rows where they are, F16/BF16 rows widened once (exactly)
    /// into the per-thread block buffer.</summary>
    static float* FloatRows(GgmlType type, byte* w, int rowBytes, int r0, int rows, int n, out int wStride)
    {
        if (type == GgmlType.F32)
        {
            wStride = rowBytes / 4;
            return (float*)(w + (long)r0 * rowBytes);
        }
        wStride = n;
        float* wf = Scratch(ref _blockBuffer, (long)rows * n);
        if (type == GgmlType.F16) for (int r = 0; r < rows; r++) WidenF16((ushort*)(w + (long)(r0 + r) * rowBytes), wf + (long)r * n, n);
        else for (int r = 0; r < rows; r++) WidenBF16((ushort*)(w + (long)(r0 + r) * rowBytes), wf + (long)r * n, n);
        return wf;
    }

    /// <summary>Activation rows per tile of <see cref="FloatBlock256"/> (96 KB for n = 2048, in L2 while the range's
    /// weight rows run against it; each group of three weight rows meets four groups of three activation rows).</summary>
    const int FloatTile256 = 12;

    /// <summary>
    /// Three activation rows against rows [r0, r1) of an i-quant matrix through the four-row kernel: the rows are
    /// copied into a per-thread tile of four (the last repeated) and the results land in a per-thread [4, rows]
    /// buffer, of which the real rows are copied out. Each weight row is then unpacked once, not once per activation
    /// row. TinyLlama Q4_K_M when its K-quants ran here, one forward step of B rows (medians of 9): B = 1, 3, 4 took 42, 94–113 and 90 ms with
    /// three single rows, 80 ms padded. Two rows padded took 84 ms against 66–79 as two single rows, so only three are.
    /// </summary>
    static void RunPaddedToFour(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        int rows = r1 - r0;
        byte* x4 = Scratch(ref _padActs, 4L * xStride);
        float* y4 = Scratch(ref _padOut, 4L * rows);
        for (int b = 0; b < 4; b++) Buffer.MemoryCopy(x + (long)Math.Min(b, B - 1) * xStride, x4 + (long)b * xStride, xStride, xStride);
        for (int r = 0; r < rows; r++) RunFour(type, w + (long)(r0 + r) * rowBytes, x4, xStride, n, y4 + r, rows);
        for (int b = 0; b < B; b++) Buffer.MemoryCopy(y4 + (long)b * rows, y + (long)b * yStride + r0, rows * 4L, rows * 4L);
    }

    /// <summary>
    /// <see cref="RunBlock"/> for F16/BF16 weights and decode-sized batches (2 ≤ B ≤ <see cref="Tile"/>: speculative
    /// verification, several sequences decoding together) without AVX-512: the weights are read in place, two rows at a
    /// time, 8 values widened in registers once per group of four activation rows (<see cref="DotRows2Acts4{TRow}"/>), where
    /// <see cref="FloatBlock256"/> first widens the whole range into a buffer — for a decode chunk of 1 MiB of F16, 2 MiB
    /// of F32 written and read back, out of L2, so that four rows cost 2.7 single-row steps. A finite F16 matrix reads its
    /// halves scaled down against x · 2^112 as decode does (<see cref="F16ScaledRow"/>). Bits: those of every other path.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void HalfBlock256(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride, bool finiteF16)
    {
        int xs = xStride / 4;
        for (int r = r0; r < r1; r += 2)
        {
            byte* wr = w + (long)r * rowBytes;
            int rows = Math.Min(2, r1 - r);
            for (int b = 0; b < B; b += 4)
            {
                float* xb = (float*)(x + (long)b * xStride), yb = y + (long)b * yStride + r;
                int acts = Math.Min(4, B - b);
                if (type == GgmlType.BF16) DotRows2Acts4<Bf16Row>(wr, rowBytes, rows, xb, xs, acts, n, yb, yStride);
                else if (finiteF16) DotRows2Acts4<F16ScaledRow>(wr, rowBytes, rows, xb, xs, acts, n, yb, yStride);
                else DotRows2Acts4<F16Row>(wr, rowBytes, rows, xb, xs, acts, n, yb, yStride);
            }
        }
    }

    /// <summary>
    /// Two weight rows (w, w + ws bytes; <paramref name="rows"/> of them; values as <typeparamref name="TRow"/> reads
    /// them) × up to four activation rows (x + a·xs; <paramref name="acts"/> of them): per 8 values, two widened weight
    /// vectors and four activation vectors feed eight FMAs, one accumulator per pair in the AVX2 float order of
    /// <see cref="Dot256{TRow}"/>, so every result has the bits of the pair alone. A missing row or activation repeats
    /// the last (computed, not stored). y[a·yStride + r] for r &lt; rows, a &lt; acts. Three × three, as prefill's
    /// tiles, ran at a third of the speed on F16: the JIT spilled six of the nine accumulators every step once the
    /// widening's constants took their registers. TinyLlama F16, one forward step of B rows after 100 cached, 2
    /// threads (medians of 30): B = 2, 4, 8, 16 took 228, 290, 384, 528 ms widening first, 154, 175, 244, 473 ms here
    /// (one row: 109 ms).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void DotRows2Acts4<TRow>(byte* w, long ws, int rows, float* x, long xs, int acts, int n, float* y, long yStride) where TRow : IRow256
    {
        byte* w0 = w, w1 = rows > 1 ? w + ws : w;
        float* x0 = x, x1 = acts > 1 ? x0 + xs : x0, x2 = acts > 2 ? x1 + xs : x1, x3 = acts > 3 ? x2 + xs : x2;
        int sh = TRow.ScaledDown ? n : 0;
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector256<float> d0 = default, d1 = default, d2 = default, d3 = default;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            if (TRow.Streams && (i & 31) == 0)
            {
                Sse.Prefetch0(w0 + (long)i * TRow.Bytes + PrefetchDistance);
                Sse.Prefetch0(w1 + (long)i * TRow.Bytes + PrefetchDistance);
            }
            var a = Vector256.Load(x0 + sh + i);
            var v = TRow.Load8(w0, i); var u = TRow.Load8(w1, i);
            c0 = Vector256.FusedMultiplyAdd(v, a, c0); d0 = Vector256.FusedMultiplyAdd(u, a, d0);
            a = Vector256.Load(x1 + sh + i);
            c1 = Vector256.FusedMultiplyAdd(v, a, c1); d1 = Vector256.FusedMultiplyAdd(u, a, d1);
            a = Vector256.Load(x2 + sh + i);
            c2 = Vector256.FusedMultiplyAdd(v, a, c2); d2 = Vector256.FusedMultiplyAdd(u, a, d2);
            a = Vector256.Load(x3 + sh + i);
            c3 = Vector256.FusedMultiplyAdd(v, a, c3); d3 = Vector256.FusedMultiplyAdd(u, a, d3);
        }
        y[0] = Tail<TRow>(w0, x0, i, n, Vector256.Sum(c0));
        if (acts > 1) y[yStride] = Tail<TRow>(w0, x1, i, n, Vector256.Sum(c1));
        if (acts > 2) y[2 * yStride] = Tail<TRow>(w0, x2, i, n, Vector256.Sum(c2));
        if (acts > 3) y[3 * yStride] = Tail<TRow>(w0, x3, i, n, Vector256.Sum(c3));
        if (rows < 2) return;
        y[1] = Tail<TRow>(w1, x0, i, n, Vector256.Sum(d0));
        if (acts > 1) y[yStride + 1] = Tail<TRow>(w1, x1, i, n, Vector256.Sum(d1));
        if (acts > 2) y[2 * yStride + 1] = Tail<TRow>(w1, x2, i, n, Vector256.Sum(d2));
        if (acts > 3) y[3 * yStride + 1] = Tail<TRow>(w1, x3, i, n, Vector256.Sum(d3));
    }

    /// <summary>
    /// Up to three F32 weight rows (w, w + ws, w + 2·ws; <paramref name="rows"/> of them) × up to three activation rows
    /// (x, x + xs, x + 2·xs; <paramref name="acts"/>): nine accumulators, one per pair, each taking the pair's 8-lane
    /// FMAs in order over i = 0, 8, 16, … (the AVX2 float order of <see cref="Dot256{TRow}"/>), then its horizontal sum
    /// and scalar tail. Per step three weight and three activation vectors feed nine FMAs. A missing row or activation
    /// repeats the last one (its pair is computed and not stored), so every stored result has the bits of the pair
    /// alone. y[b·yStride + r] for r &lt; rows, b &lt; acts.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DotF32Tile3x3(float* w, long ws, int rows, float* x, long xs, int acts, int n, float* y, long yStride)
    {
        float* w0 = w, w1 = rows > 1 ? w0 + ws : w0, w2 = rows > 2 ? w1 + ws : w1;
        float* x0 = x, x1 = acts > 1 ? x0 + xs : x0, x2 = acts > 2 ? x1 + xs : x1;
        Vector256<float> c00 = default, c01 = default, c02 = default; // [weight row, activation row]
        Vector256<float> c10 = default, c11 = default, c12 = default;
        Vector256<float> c20 = default, c21 = default, c22 = default;
        int i = 0;
        for (; i + 8 <= n; i += 8)
        {
            var a0 = Vector256.Load(x0 + i); var a1 = Vector256.Load(x1 + i); var a2 = Vector256.Load(x2 + i);
            var v = Vector256.Load(w0 + i);
            c00 = Vector256.FusedMultiplyAdd(v, a0, c00); c01 = Vector256.FusedMultiplyAdd(v, a1, c01); c02 = Vector256.FusedMultiplyAdd(v, a2, c02);
            v = Vector256.Load(w1 + i);
            c10 = Vector256.FusedMultiplyAdd(v, a0, c10); c11 = Vector256.FusedMultiplyAdd(v, a1, c11); c12 = Vector256.FusedMultiplyAdd(v, a2, c12);
            v = Vector256.Load(w2 + i);
            c20 = Vector256.FusedMultiplyAdd(v, a0, c20); c21 = Vector256.FusedMultiplyAdd(v, a1, c21); c22 = Vector256.FusedMultiplyAdd(v, a2, c22);
        }
        y[0] = Tail<F32Row>(w0, x0, i, n, Vector256.Sum(c00));
        if (acts > 1) y[yStride] = Tail<F32Row>(w0, x1, i, n, Vector256.Sum(c01));
        if (acts > 2) y[2 * yStride] = Tail<F32Row>(w0, x2, i, n, Vector256.Sum(c02));
        if (rows > 1)
        {
            y[1] = Tail<F32Row>(w1, x0, i, n, Vector256.Sum(c10));
            if (acts > 1) y[yStride + 1] = Tail<F32Row>(w1, x1, i, n, Vector256.Sum(c11));
            if (acts > 2) y[2 * yStride + 1] = Tail<F32Row>(w1, x2, i, n, Vector256.Sum(c12));
        }
        if (rows > 2)
        {
            y[2] = Tail<F32Row>(w2, x0, i, n, Vector256.Sum(c20));
            if (acts > 1) y[yStride + 2] = Tail<F32Row>(w2, x1, i, n, Vector256.Sum(c21));
            if (acts > 2) y[2 * yStride + 2] = Tail<F32Row>(w2, x2, i, n, Vector256.Sum(c22));
        }
    }

    /// <summary>The scalar tail [i, n) of a pair, continuing sum (<see cref="Dot256{TRow}"/>'s).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Tail<TRow>(void* w, float* x, int i, int n, float sum) where TRow : IRow256
    {
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(TRow.At(w, i), x[i], sum);
        return sum;
    }

    /// <summary>Activation rows per tile of <see cref="FloatBlock"/>: four groups of <see cref="FloatKernelCols"/>.</summary>
    const int FloatTile = 24;
    const int FloatKernelRows = 4, FloatKernelCols = 6;

    /// <summary>
    /// <see cref="RunBlock"/> for F32/F16/BF16 weights: the range's rows are widened to F32 once (F16/BF16) into a
    /// per-thread buffer, then each tile of <see cref="FloatTile"/> activation rows runs against the range in
    /// blocks of 4 weight rows × 6 activation rows (<see cref="DotF32Block4x6"/>, 24 accumulators in registers), with
    /// <see cref="DotF32x4"/> / <see cref="DotF32"/> for the edges. Every one of these computes a pair's dot product
    /// with exactly the FMAs of <see cref="DotF32"/> in the same order, so the bits are those of <see cref="FloatRow"/>.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void FloatBlock(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        int rows = r1 - r0;
        int xs = xStride / 4;
        var part = stackalloc Vector512<float>[4 * FloatKernelRows * FloatKernelCols]; // [k][row][col] partial sums
        {
            float* wf = (float*)(w + (long)r0 * rowBytes); // [rows, wStride]
            int wStride = rowBytes / 4;
            if (type != GgmlType.F32)
            {
                wStride = n;
                wf = Scratch(ref _blockBuffer, (long)rows * n);
                if (type == GgmlType.F16) for (int r = 0; r < rows; r++) WidenF16((ushort*)(w + (long)(r0 + r) * rowBytes), wf + (long)r * n, n);
                else for (int r = 0; r < rows; r++) WidenBF16((ushort*)(w + (long)(r0 + r) * rowBytes), wf + (long)r * n, n);
            }
            for (int b0 = 0; b0 < B; b0 += FloatTile)
            {
                int tb = Math.Min(FloatTile, B - b0);
                float* xt = (float*)(x + (long)b0 * xStride);
                float* yt = y + (long)b0 * yStride + r0;
                int r = 0;
                for (; r + FloatKernelRows <= rows; r += FloatKernelRows)
                {
                    float* wr = wf + (long)r * wStride;
                    int b = 0;
                    for (; b + FloatKernelCols <= tb; b += FloatKernelCols)
                        DotF32Block4x6(wr, wStride, xt + (long)b * xs, xs, n, yt + (long)b * yStride + r, yStride, part);
                    for (int rr = 0; rr < FloatKernelRows; rr++) FloatEdge(wr + (long)rr * wStride, xt, xs, b, tb, n, yt + r + rr, yStride);
                }
                for (; r < rows; r++) FloatEdge(wf + (long)r * wStride, xt, xs, 0, tb, n, yt + r, yStride);
            }
        }
    }

    /// <summary>One weight row against activation rows [b, tb) of a tile: four at a time, then one at a time.</summary>
    static void FloatEdge(float* wr, float* xt, int xs, int b, int tb, int n, float* yr, int yStride)
    {
        for (; b + 4 <= tb; b += 4) DotF32x4(wr, xt + (long)b * xs, xs, n, yr + (long)b * yStride, yStride);
        for (; b < tb; b++) yr[(long)b * yStride] = DotF32(wr, xt + (long)b * xs, n);
    }

    /// <summary>
    /// Four weight rows (stride <paramref name="wStride"/>) × six activation rows: 24 dot products. <see cref="DotF32"/>
    /// keeps four accumulators, s_k summing the 16-lane chunks k, k+4, k+8, … in order; this kernel runs one k at a
    /// time with one accumulator per pair (24 registers, 10 loads per 24 FMAs), parks s_k in
    /// <paramref name="part"/>, and reduces each pair as DotF32 does, Sum((s0 + s1) + (s2 + s3)) — the same FMAs in the
    /// same order, so the same bits. Requires n % 64 == 0. y[b·yStride + r] for weight row r, activation row b.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DotF32Block4x6(float* w, int wStride, float* x, int xs, int n, float* y, int yStride, Vector512<float>* part)
    {
        float* w0p = w, w1p = w + wStride, w2p = w + 2L * wStride, w3p = w + 3L * wStride;
        float* x0 = x, x1 = x + xs, x2 = x + 2L * xs, x3 = x + 3L * xs, x4 = x + 4L * xs, x5 = x + 5L * xs;
        for (int k = 0; k < 4; k++)
        {
            Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a04 = default, a05 = default;
            Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
            Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a24 = default, a25 = default;
            Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default, a34 = default, a35 = default;
            for (int i = 16 * k; i < n; i += 64)
            {
                var w0 = Vector512.Load(w0p + i); var w1 = Vector512.Load(w1p + i);
                var w2 = Vector512.Load(w2p + i); var w3 = Vector512.Load(w3p + i);
                Vector512<float> xv;
                xv = Vector512.Load(x0 + i);
                a00 = Vector512.FusedMultiplyAdd(w0, xv, a00); a10 = Vector512.FusedMultiplyAdd(w1, xv, a10); a20 = Vector512.FusedMultiplyAdd(w2, xv, a20); a30 = Vector512.FusedMultiplyAdd(w3, xv, a30);
                xv = Vector512.Load(x1 + i);
                a01 = Vector512.FusedMultiplyAdd(w0, xv, a01); a11 = Vector512.FusedMultiplyAdd(w1, xv, a11); a21 = Vector512.FusedMultiplyAdd(w2, xv, a21); a31 = Vector512.FusedMultiplyAdd(w3, xv, a31);
                xv = Vector512.Load(x2 + i);
                a02 = Vector512.FusedMultiplyAdd(w0, xv, a02); a12 = Vector512.FusedMultiplyAdd(w1, xv, a12); a22 = Vector512.FusedMultiplyAdd(w2, xv, a22); a32 = Vector512.FusedMultiplyAdd(w3, xv, a32);
                xv = Vector512.Load(x3 + i);
                a03 = Vector512.FusedMultiplyAdd(w0, xv, a03); a13 = Vector512.FusedMultiplyAdd(w1, xv, a13); a23 = Vector512.FusedMultiplyAdd(w2, xv, a23); a33 = Vector512.FusedMultiplyAdd(w3, xv, a33);
                xv = Vector512.Load(x4 + i);
                a04 = Vector512.FusedMultiplyAdd(w0, xv, a04); a14 = Vector512.FusedMultiplyAdd(w1, xv, a14); a24 = Vector512.FusedMultiplyAdd(w2, xv, a24); a34 = Vector512.FusedMultiplyAdd(w3, xv, a34);
                xv = Vector512.Load(x5 + i);
                a05 = Vector512.FusedMultiplyAdd(w0, xv, a05); a15 = Vector512.FusedMultiplyAdd(w1, xv, a15); a25 = Vector512.FusedMultiplyAdd(w2, xv, a25); a35 = Vector512.FusedMultiplyAdd(w3, xv, a35);
            }
            var p = part + k * 24;
            p[0] = a00; p[1] = a01; p[2] = a02; p[3] = a03; p[4] = a04; p[5] = a05;
            p[6] = a10; p[7] = a11; p[8] = a12; p[9] = a13; p[10] = a14; p[11] = a15;
            p[12] = a20; p[13] = a21; p[14] = a22; p[15] = a23; p[16] = a24; p[17] = a25;
            p[18] = a30; p[19] = a31; p[20] = a32; p[21] = a33; p[22] = a34; p[23] = a35;
        }
        for (int r = 0; r < 4; r++)
            for (int b = 0; b < 6; b++)
            {
                int q = r * 6 + b;
                y[(long)b * yStride + r] = Vector512.Sum((part[q] + part[24 + q]) + (part[48 + q] + part[72 + q]));
            }
    }

    /// <summary>
    /// Four activation rows against one weight row, each weight vector loaded once. Per row it performs exactly the
    /// FMAs of <see cref="DotF32"/> in the same order (four 16-lane accumulators, then the same reduction), so a row's
    /// result is the same bits whichever path computes it. Requires n % 64 == 0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void DotF32x4(float* w, float* x, int xStrideFloats, int n, float* y, int yStride)
    {
        float* x0 = x, x1 = x + xStrideFloats, x2 = x + 2 * xStrideFloats, x3 = x + 3 * xStrideFloats;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        for (int i = 0; i < n; i += 64)
        {
            var w0 = Vector512.Load(w + i); var w1 = Vector512.Load(w + i + 16);
            var w2 = Vector512.Load(w + i + 32); var w3 = Vector512.Load(w + i + 48);
            a0 = Vector512.FusedMultiplyAdd(w0, Vector512.Load(x0 + i), a0); a1 = Vector512.FusedMultiplyAdd(w1, Vector512.Load(x0 + i + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(w2, Vector512.Load(x0 + i + 32), a2); a3 = Vector512.FusedMultiplyAdd(w3, Vector512.Load(x0 + i + 48), a3);
            b0 = Vector512.FusedMultiplyAdd(w0, Vector512.Load(x1 + i), b0); b1 = Vector512.FusedMultiplyAdd(w1, Vector512.Load(x1 + i + 16), b1);
            b2 = Vector512.FusedMultiplyAdd(w2, Vector512.Load(x1 + i + 32), b2); b3 = Vector512.FusedMultiplyAdd(w3, Vector512.Load(x1 + i + 48), b3);
            c0 = Vector512.FusedMultiplyAdd(w0, Vector512.Load(x2 + i), c0); c1 = Vector512.FusedMultiplyAdd(w1, Vector512.Load(x2 + i + 16), c1);
            c2 = Vector512.FusedMultiplyAdd(w2, Vector512.Load(x2 + i + 32), c2); c3 = Vector512.FusedMultiplyAdd(w3, Vector512.Load(x2 + i + 48), c3);
            d0 = Vector512.FusedMultiplyAdd(w0, Vector512.Load(x3 + i), d0); d1 = Vector512.FusedMultiplyAdd(w1, Vector512.Load(x3 + i + 16), d1);
            d2 = Vector512.FusedMultiplyAdd(w2, Vector512.Load(x3 + i + 32), d2); d3 = Vector512.FusedMultiplyAdd(w3, Vector512.Load(x3 + i + 48), d3);
        }
        y[0] = Vector512.Sum((a0 + a1) + (a2 + a3));
        y[yStride] = Vector512.Sum((b0 + b1) + (b2 + b3));
        y[2L * yStride] = Vector512.Sum((c0 + c1) + (c2 + c3));
        y[3L * yStride] = Vector512.Sum((d0 + d1) + (d2 + d3));
    }

    /// <summary>
    /// A BF16 weight row against F32 activations without AVX-512 (decode): the AVX2 float order
    /// (<see cref="Dot256{TRow}"/>) over the row widened on the fly (vpmovzxwd, shift by 16: exact), so the result has
    /// the bits of <see cref="DotF32"/> on the widened row, which prefill uses (<see cref="FloatBlock256"/>) — without
    /// writing and re-reading the widened row (TinyLlama BF16 tg32 on the AVX2 VM: 6.1 / 6.5 tok/s widening first,
    /// 8.0 / 8.9 on the fly).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float DotBF16Avx2(ushort* a, float* b, int n) => Dot256<Bf16Row>(a, b, n);

    /// <summary><see cref="DotBF16Avx2"/> of two rows far apart (two streams for one core): each result has its bits.
    /// TinyLlama BF16 tg128 side by side read 19.1 GB/s with one row at a time, F16's pairs 22.5.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    static void DotBF16Avx2Pair(ushort* wa, ushort* wb, float* x, int n, out float ya, out float yb) => Dot256Pair<Bf16Row>(wa, wb, x, n, out ya, out yb);

    /// <summary>How <see cref="Dot256{TRow}"/> reads a weight row: 8 values as floats, one value, whether the row
    /// streams from memory (decode: prefetch ahead) or sits in cache (prefill's widened rows), its bytes per value, and
    /// whether the 8-value loads are the values · 2^-112 (then the vector steps read x · 2^112, at x + n).</summary>
    interface IRow256
    {
        static abstract Vector256<float> Load8(void* w, int i);
        static abstract float At(void* w, int i);
        static abstract bool Streams { get; }
        static abstract int Bytes { get; }
        static abstract bool ScaledDown { get; }
    }

    readonly struct F32Row : IRow256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(void* w, int i) => Vector256.Load((float*)w + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => ((float*)w)[i];
        public static bool Streams => false;
        public static int Bytes => 4;
        public static bool ScaledDown => false;
    }

    readonly struct Bf16Row : IRow256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(void* w, int i) => (Avx2.ConvertToVector256Int32((ushort*)w + i).AsUInt32() << 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Bf16.ToSingle(((ushort*)w)[i]);
        public static bool Streams => true;
        public static int Bytes => 2;
        public static bool ScaledDown => false;
    }

    /// <summary>An F16 row widened exactly, infinities and NaNs included (<see cref="LoadHalves8"/>).</summary>
    readonly struct F16Row : IRow256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(void* w, int i) => LoadHalves8((ushort*)w + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Fp16.ToSingle(((ushort*)w)[i]);
        public static bool Streams => true;
        public static int Bytes => 2;
        public static bool ScaledDown => false;
    }

    /// <summary>A finite F16 row read raw (<see cref="HalvesScaledDown8"/>): each half · 2^-112 exactly, against
    /// x · 2^112, so every product is w·x exactly — the bits of the widened row against x, two vector operations fewer
    /// per 8 weights. Only for rows without an infinity or NaN (<see cref="Models.WeightMatrix.NonFiniteF16"/>).</summary>
    readonly struct F16ScaledRow : IRow256
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load8(void* w, int i) => HalvesScaledDown8((ushort*)w + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Fp16.ToSingle(((ushort*)w)[i]);
        public static bool Streams => true;
        public static int Bytes => 2;
        public static bool ScaledDown => true;
    }

    /// <summary>
    /// Σ w·x, <b>the AVX2 float order</b>: one 8-lane accumulator per pair, acc = FMA(w[i..i+8], x[i..i+8], acc) for
    /// i = 0, 8, 16, … while i + 8 ≤ n, in order; then the horizontal sum; then a scalar FMA per remaining value. Every
    /// kernel for F32/F16/BF16 weights on a machine without AVX-512 (decode one or two rows at a time, prefill's 3 × 3
    /// tiles, <see cref="DotF32"/>) computes each pair this way, for any row type whose values widen to floats exactly,
    /// so every path gives the same bits. One chain per pair (not four, as <see cref="DotF32"/> with AVX-512): a prefill
    /// tile then holds nine pairs in registers, and decode, bound by memory, runs two rows at once
    /// (<see cref="Dot256Pair{TRow}"/>) or reads at most 8 floats per FMA latency.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Dot256<TRow>(void* w, float* x, int n) where TRow : IRow256
    {
        float* xv = TRow.ScaledDown ? x + n : x;
        var acc = Vector256<float>.Zero;
        int i = 0;
        for (; i + 32 <= n; i += 32)
        {
            if (TRow.Streams) Sse.Prefetch0((byte*)w + (long)i * TRow.Bytes + PrefetchDistance);
            acc = Vector256.FusedMultiplyAdd(TRow.Load8(w, i), Vector256.Load(xv + i), acc);
            acc = Vector256.FusedMultiplyAdd(TRow.Load8(w, i + 8), Vector256.Load(xv + i + 8), acc);
            acc = Vector256.FusedMultiplyAdd(TRow.Load8(w, i + 16), Vector256.Load(xv + i + 16), acc);
            acc = Vector256.FusedMultiplyAdd(TRow.Load8(w, i + 24), Vector256.Load(xv + i + 24), acc);
        }
        for (; i + 8 <= n; i += 8) acc = Vector256.FusedMultiplyAdd(TRow.Load8(w, i), Vector256.Load(xv + i), acc);
        float sum = Vector256.Sum(acc);
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(TRow.At(w, i), x[i], sum);
        return sum;
    }

    /// <summary><see cref="Dot256{TRow}"/> for two rows far apart (two memory streams for one core) against one
    /// activation row: each result has the single-row bits; two independent chains per step.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Dot256Pair<TRow>(void* wa, void* wb, float* x, int n, out float ya, out float yb) where TRow : IRow256
    {
        float* xv = TRow.ScaledDown ? x + n : x;
        Vector256<float> a = Vector256<float>.Zero, b = Vector256<float>.Zero;
        int i = 0;
        for (; i + 32 <= n; i += 32)
        {
            if (TRow.Streams)
            {
                Sse.Prefetch0((byte*)wa + (long)i * TRow.Bytes + PrefetchDistance);
                Sse.Prefetch0((byte*)wb + (long)i * TRow.Bytes + PrefetchDistance);
            }
            var x0 = Vector256.Load(xv + i); var x1 = Vector256.Load(xv + i + 8);
            var x2 = Vector256.Load(xv + i + 16); var x3 = Vector256.Load(xv + i + 24);
            a = Vector256.FusedMultiplyAdd(TRow.Load8(wa, i), x0, a); b = Vector256.FusedMultiplyAdd(TRow.Load8(wb, i), x0, b);
            a = Vector256.FusedMultiplyAdd(TRow.Load8(wa, i + 8), x1, a); b = Vector256.FusedMultiplyAdd(TRow.Load8(wb, i + 8), x1, b);
            a = Vector256.FusedMultiplyAdd(TRow.Load8(wa, i + 16), x2, a); b = Vector256.FusedMultiplyAdd(TRow.Load8(wb, i + 16), x2, b);
            a = Vector256.FusedMultiplyAdd(TRow.Load8(wa, i + 24), x3, a); b = Vector256.FusedMultiplyAdd(TRow.Load8(wb, i + 24), x3, b);
        }
        for (; i + 8 <= n; i += 8)
        {
            var xi = Vector256.Load(xv + i);
            a = Vector256.FusedMultiplyAdd(TRow.Load8(wa, i), xi, a); b = Vector256.FusedMultiplyAdd(TRow.Load8(wb, i), xi, b);
        }
        float sa = Vector256.Sum(a), sb = Vector256.Sum(b);
        for (; i < n; i++)
        {
            sa = MathF.FusedMultiplyAdd(TRow.At(wa, i), x[i], sa);
            sb = MathF.FusedMultiplyAdd(TRow.At(wb, i), x[i], sb);
        }
        ya = sa; yb = sb;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float DotF32(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 64)
        {
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 64 <= n; i += 64)
            {
                s0 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), s0);
                s1 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 16), Vector512.Load(b + i + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 32), Vector512.Load(b + i + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(Vector512.Load(a + i + 48), Vector512.Load(b + i + 48), s3);
            }
            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        else if (Vector256.IsHardwareAccelerated)
            return Dot256<F32Row>(a, b, n);
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(a[i], b[i], sum);
        return sum;
    }

    /// <summary>
    /// 16 halves, sign-extended to int32 (<c>vpmovsxwd</c>), → 16 floats, exact. Shifted left by 13, a half's exponent
    /// and mantissa sit where a float's do and its sign fills bits 28–31; masking bits 28–30 away leaves a float equal
    /// to the half × 2^-112 (normal and subnormal halves alike, sign included), so one multiply by 2^112 fixes it.
    /// Exponent 31 (infinity, NaN) then lands at ≥ 2^16, which no finite half reaches (max 65504): those lanes get the
    /// float's all-ones exponent, keeping sign and mantissa. Five vector operations after the load (the version with a
    /// zero-extended load, separate sign and a blend took nine).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> HalfToSingle(Vector512<int> h)
    {
        var f = ((h << 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(5.192297e33f); // 2^112
        var infNan = Vector512.GreaterThanOrEqual(Vector512.Abs(f), Vector512.Create(65536f));
        return f | (infNan & Vector512.Create(0x7F800000u).AsSingle());
    }

    /// <summary><see cref="HalfToSingle(Vector512{int})"/> in 256 bits (the AVX2 eight-row kernels, VecDot.KRows8.cs).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> HalfToSingle(Vector256<int> h)
    {
        var f = ((h << 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(5.192297e33f); // 2^112
        var infNan = Vector256.GreaterThanOrEqual(Vector256.Abs(f), Vector256.Create(65536f));
        return f | (infNan & Vector256.Create(0x7F800000u).AsSingle());
    }

    /// <summary>16 halves from memory → 16 floats (<see cref="HalfToSingle(Vector512{int})"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> LoadHalves(ushort* p) => HalfToSingle(Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p)));

    /// <summary>F16 → F32 for a row; equals <see cref="Fp16.ToSingle"/> for every half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void WidenF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                LoadHalves(src + i).Store(dst + i);
        else if (Avx2.IsSupported)
            for (; i + 8 <= n; i += 8)
                LoadHalves8(src + i).Store(dst + i);
        else if (Vector128.IsHardwareAccelerated)
            for (; i + 4 <= n; i += 4)
                LoadHalves4(src + i).Store(dst + i);
        for (; i < n; i++) dst[i] = Fp16.ToSingle(src[i]);
    }

    /// <summary>F16 weights · F32 activations for one activation row, widening on the fly (no buffer round trip).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float DotF16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector512.IsHardwareAccelerated && n >= 64)
        {
            Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 64 <= n; i += 64)
            {
                Sse.Prefetch0((byte*)(w + i) + PrefetchDistance);
                Sse.Prefetch0((byte*)(w + i) + PrefetchDistance + 64);
                s0 = Vector512.FusedMultiplyAdd(LoadHalves(w + i), Vector512.Load(x + i), s0);
                s1 = Vector512.FusedMultiplyAdd(LoadHalves(w + i + 16), Vector512.Load(x + i + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(LoadHalves(w + i + 32), Vector512.Load(x + i + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(LoadHalves(w + i + 48), Vector512.Load(x + i + 48), s3);
            }
            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(Fp16.ToSingle(w[i]), x[i], sum);
        return sum;
    }

    /// <summary>Decode of one finite F16 row with AVX2 (no AVX-512): <see cref="Dot256{TRow}"/> over the raw halves
    /// (<see cref="F16ScaledRow"/>) against x · 2^112, the bits of prefill's widened row against x. Only for rows
    /// without an infinity or NaN (<see cref="Models.WeightMatrix.NonFiniteF16"/>).
    /// <paramref name="x"/>: [n] F16-rounded activations, then [n] the same · 2^112 (<see cref="PrepareActivations"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float DotF16ScaledAvx2(ushort* w, float* x, int n) => Dot256<F16ScaledRow>(w, x, n);

    /// <summary><see cref="DotF16ScaledAvx2"/> of two finite rows (far apart: two streams for one core) against one
    /// activation row; each result has the single-row kernel's bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static void DotF16ScaledAvx2Pair(ushort* wa, ushort* wb, float* x, int n, out float ya, out float yb)
        => Dot256Pair<F16ScaledRow>(wa, wb, x, n, out ya, out yb);

    /// <summary>8 finite halves → the same values × 2^-112, exact: sign-extended (<c>vpmovsxwd</c>), shifted left by 13
    /// and masked as in <see cref="HalfToSingle(Vector512{int})"/>. An exponent of 31 comes out finite (≥ 2^-96).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> HalvesScaledDown8(ushort* p)
        => ((Avx2.ConvertToVector256Int32((short*)p) << 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>8 halves → 8 floats with AVX2, exact (<see cref="HalfToSingle(Vector512{int})"/>'s steps on 8 lanes,
    /// infinities and NaNs included).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> LoadHalves8(ushort* p)
    {
        var f = HalvesScaledDown8(p) * Vector256.Create(Pow2To112);
        var infNan = Vector256.GreaterThanOrEqual(Vector256.Abs(f), Vector256.Create(65536f));
        return f | (infNan & Vector256.Create(0x7F800000u).AsSingle());
    }

    /// <summary>y = x · 2^112: exact for F16-rounded x (|x| ≤ 65504 stays below float's largest, ∞ stays ∞).</summary>
    static void ScaleBy2Pow112(ReadOnlySpan<float> x, Span<float> y)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= x.Length; i += 16)
                (Vector512.Create(x.Slice(i, 16)) * Vector512.Create(Pow2To112)).CopyTo(y.Slice(i, 16));
        else if (Vector256.IsHardwareAccelerated)
            for (; i + 8 <= x.Length; i += 8)
                (Vector256.Create(x.Slice(i, 8)) * Vector256.Create(Pow2To112)).CopyTo(y.Slice(i, 8));
        for (; i < x.Length; i++) y[i] = x[i] * Pow2To112;
    }

    const float Pow2To112 = 5.192297e33f;

    /// <summary>Whether one activation row against rows of this type and width has a paired kernel
    /// (<see cref="RunPair"/>) giving the bits of the single-row one.</summary>
    internal static bool HasPairedDecode(GgmlType type, int n) => type switch
    {
        GgmlType.F16 => n >= 64 && Vector512.IsHardwareAccelerated || HalfRowsAvx2(n),
        GgmlType.BF16 => HalfRowsAvx2(n), // AVX2: Dot256Pair<Bf16Row>, the bits of DotBF16Avx2
        GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K => Avx512BW.IsSupported,
        GgmlType.Q8_0 => Avx512BW.IsSupported || Avx2Rows(type), // AVX2: see VecDot.DotQ80RowExactAvx2Pair
        GgmlType.IQ4_XS => Avx2Rows(type), // VecDot.DotIQ4XSRowPair
        _ => LegacyGroupPair(type),
    };

    /// <summary>Whether a legacy type's decode runs eight rows at a time (<see cref="RowGroup"/>) and pairs groups of
    /// eight far apart (<see cref="RunGroupPair"/>; single rows through <see cref="RunPair"/>).</summary>
    internal static bool LegacyGroupPair(GgmlType type) =>
        type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.IQ4_NL && RowGroup(type) == 8;

    /// <summary>Two full groups of eight rows (rowBytes apart within each group, the groups far apart) of a
    /// <see cref="LegacyGroupPair"/> type against one activation row: y_a[0..8), y_b[0..8), each row with the bits of
    /// <see cref="RunRows"/>.</summary>
    internal static void RunGroupPair(GgmlType type, byte* wa, byte* wb, long rowBytes, byte* x, int n, float* ya, float* yb)
    {
        switch (type)
        {
            case GgmlType.Q4_0: VecDot.DotRows8PairAvx2<VecDot.Q40Block>(wa, wb, rowBytes, x, n / 32, ya, yb); break;
            case GgmlType.Q4_1: VecDot.DotRows8PairAvx2<VecDot.Q41Block>(wa, wb, rowBytes, x, n / 32, ya, yb); break;
            case GgmlType.Q5_0: VecDot.DotRows8PairAvx2<VecDot.Q50Block>(wa, wb, rowBytes, x, n / 32, ya, yb); break;
            case GgmlType.IQ4_NL: VecDot.DotRows8PairAvx2<VecDot.IQ4NLBlock>(wa, wb, rowBytes, x, n / 32, ya, yb); break;
            default: VecDot.DotRows8PairAvx2<VecDot.Q51Block>(wa, wb, rowBytes, x, n / 32, ya, yb); break;
        }
    }

    /// <summary>
    /// Two weight rows of one type, far apart in memory, against one activation row (x in the layout of
    /// <see cref="ActivationRowBytes"/>): the single-row decode kernel's operations for each, interleaved, so that one
    /// core reads two sequential streams at once (kernel-micro --pair). Each result has the bits of
    /// <see cref="RunRows"/> on its row. Returns false (F16 only) when a row holds an infinity or NaN: the caller then
    /// runs both rows through RunRows. Only for types where <see cref="HasPairedDecode"/> holds. The pair kernels are
    /// NoInlining: profile-guided inlining had put Q4K1Pair and Q6K1Pair inside MatMulJob.RunPaired (6 KB of code, with
    /// spills), so the model ran other code than kernel-micro measures.
    /// </summary>
    internal static bool RunPair(GgmlType type, byte* wa, byte* wb, byte* x, int n, out float ya, out float yb, bool finiteF16 = false)
    {
        if (type == GgmlType.Q8_0 && Avx2Rows(type)) { VecDot.DotQ80RowExactAvx2Pair<VecDot.HasVnni>(wa, wb, x, n / 32, out ya, out yb); return true; }
        if (type == GgmlType.IQ4_XS)
        {
            if (VecDot.Rows16) VecDot.DotIQ4XSRowPairExact<VecDot.HasVnni>(wa, wb, x, n / 256, out ya, out yb);
            else VecDot.DotIQ4XSRowPair(wa, wb, x, n / 256, out ya, out yb);
            return true;
        }
        if (type == GgmlType.BF16) { DotBF16Avx2Pair((ushort*)wa, (ushort*)wb, (float*)x, n, out ya, out yb); return true; }
        if (LegacyGroupPair(type))
        {
            float a, b; // one row each: the groups' lanes repeat it
            RunGroupPair(type, wa, wb, 0, x, n, &a, &b);
            ya = a; yb = b;
            return true;
        }
        switch (type)
        {
            case GgmlType.Q4_K: Q4K1Pair<Q4KLayout>(wa, wb, x, n / 256, out ya, out yb); return true;
            case GgmlType.Q5_K: Q4K1Pair<Q5KLayout>(wa, wb, x, n / 256, out ya, out yb); return true;
            case GgmlType.Q6_K: Q6K1Pair(wa, wb, x, n / 256, out ya, out yb); return true;
            case GgmlType.Q8_0: Q801Pair(wa, wb, x, n / 32, out ya, out yb); return true;
            default:
                if (HalfRowsAvx2(n))
                {
                    // AVX2: finite matrices only; the caller runs rows of a non-finite one through RunRows.
                    if (!finiteF16) { ya = yb = 0; return false; }
                    DotF16ScaledAvx2Pair((ushort*)wa, (ushort*)wb, (float*)x, n, out ya, out yb);
                    return true;
                }
                bool nonFinite;
                if (finiteF16) DotF16ScaledPair<Unchecked>((ushort*)wa, (ushort*)wb, (float*)x + n, n, out ya, out yb, out nonFinite);
                else DotF16ScaledPair<Checked>((ushort*)wa, (ushort*)wb, (float*)x + n, n, out ya, out yb, out nonFinite);
                return !nonFinite;
        }
    }

    /// <summary><see cref="Q4K1"/> on two rows at once, super-block by super-block.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    static void Q4K1Pair<T>(byte* wa, byte* wb, byte* x, int nb, out float ya, out float yb) where T : IK45
    {
        Vector256<float> acc = default; // [S, 0, M, 0] of row a | of row b: Q4K1's chains, the folds shared (Q4KIntegers2)
        for (int i = 0; i < nb; i++, wa += T.Bytes, wb += T.Bytes, x += Q8KStride)
        {
            // each row prefetched as Q4K1 prefetches it
            Sse.Prefetch0(wa + PrefetchDistance); Sse.Prefetch0(wa + PrefetchDistance + 64); Sse.Prefetch0(wa + PrefetchDistance + 128);
            Sse.Prefetch0(wb + PrefetchDistance); Sse.Prefetch0(wb + PrefetchDistance + 64); Sse.Prefetch0(wb + PrefetchDistance + 128);
            if (T.Fifth) { Sse.Prefetch0(wa + PrefetchDistance + 175); Sse.Prefetch0(wb + PrefetchDistance + 175); }
            DecodeQ4K<T>(wa, out var a0, out var a1, out var a2, out var a3, out var as0, out var as1, out var as2, out var as3, out var am, out var ad);
            var sumiA = Q4KSumi((sbyte*)x, a0, a1, a2, a3, as0, as1, as2, as3);
            DecodeQ4K<T>(wb, out var b0, out var b1, out var b2, out var b3, out var bs0, out var bs1, out var bs2, out var bs3, out var bm, out var bd);
            var sumiB = Q4KSumi((sbyte*)x, b0, b1, b2, b3, bs0, bs1, bs2, bs3);
            var bsums = Vector128.Load((short*)(x + Q8KSums));
            var f = Q4KIntegers2(sumiA, sumiB, Avx2.MultiplyAddAdjacent(Vector256.Create(am, bm), Vector256.Create(bsums, bsums)));
            acc = Fma.MultiplyAdd(f, Vector256.Create(ad, bd) * Vector256.Create(*(float*)(x + Q8KScale)), acc);
        }
        ya = Q4KResult(acc.GetLower());
        yb = Q4KResult(acc.GetUpper());
    }

    /// <summary><see cref="Q801"/> on two rows at once (its software prefetch included, for each row).</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static void Q801Pair(byte* wa, byte* wb, byte* x, int nb, out float ya, out float yb)
    {
        Vector512<float> accA = default, accB = default;
        int i = 0;
        for (; i + 4 <= nb; i += 4)
        {
            byte* a = wa + i * 34, b = wb + i * 34;
            Sse.Prefetch0(a + PrefetchDistance); Sse.Prefetch0(a + PrefetchDistance + 64); Sse.Prefetch0(a + PrefetchDistance + 128);
            Sse.Prefetch0(b + PrefetchDistance); Sse.Prefetch0(b + PrefetchDistance + 64); Sse.Prefetch0(b + PrefetchDistance + 128);
            Q80Step4(x, nb, i, WidenQ80(a), WidenQ80(a + 34), WidenQ80(a + 68), WidenQ80(a + 102),
                Vector512.Create(Fp16.ToSingle(*(ushort*)a)), Vector512.Create(Fp16.ToSingle(*(ushort*)(a + 34))),
                Vector512.Create(Fp16.ToSingle(*(ushort*)(a + 68))), Vector512.Create(Fp16.ToSingle(*(ushort*)(a + 102))), ref accA);
            Q80Step4(x, nb, i, WidenQ80(b), WidenQ80(b + 34), WidenQ80(b + 68), WidenQ80(b + 102),
                Vector512.Create(Fp16.ToSingle(*(ushort*)b)), Vector512.Create(Fp16.ToSingle(*(ushort*)(b + 34))),
                Vector512.Create(Fp16.ToSingle(*(ushort*)(b + 68))), Vector512.Create(Fp16.ToSingle(*(ushort*)(b + 102))), ref accB);
        }
        for (; i < nb; i++)
        {
            Q80Step1(x, nb, i, WidenQ80(wa + i * 34), Fp16.ToSingle(*(ushort*)(wa + i * 34)), ref accA);
            Q80Step1(x, nb, i, WidenQ80(wb + i * 34), Fp16.ToSingle(*(ushort*)(wb + i * 34)), ref accB);
        }
        ya = Sum(accA);
        yb = Sum(accB);
    }

    /// <summary><see cref="Q6K1"/> on two rows at once (its software prefetch included, for each row).</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    static void Q6K1Pair(byte* wa, byte* wb, byte* x, int nb, out float ya, out float yb)
    {
        var acc = Vector128<float>.Zero; // [S of row a, S of row b, ·, ·]: Q6K1's chains, the folds shared
        ref float f16 = ref Fp16.TableStart;
        for (int i = 0; i < nb; i++, wa += 210, wb += 210, x += Q8KStride)
        {
            Sse.Prefetch0(wa + PrefetchDistance); Sse.Prefetch0(wa + PrefetchDistance + 64);
            Sse.Prefetch0(wa + PrefetchDistance + 128); Sse.Prefetch0(wa + PrefetchDistance + 192);
            Sse.Prefetch0(wb + PrefetchDistance); Sse.Prefetch0(wb + PrefetchDistance + 64);
            Sse.Prefetch0(wb + PrefetchDistance + 128); Sse.Prefetch0(wb + PrefetchDistance + 192);
            DecodeQ6K(wa, out var a0, out var a1, out var a2, out var a3, out var as0, out var as1, out var as2, out var as3, out var asc, out float ad, ref f16);
            var sa = Q6KSumi(x, a0, a1, a2, a3, as0, as1, as2, as3, asc);
            DecodeQ6K(wb, out var b0, out var b1, out var b2, out var b3, out var bs0, out var bs1, out var bs2, out var bs3, out var bsc, out float bd, ref f16);
            var sbB = Q6KSumi(x, b0, b1, b2, b3, bs0, bs1, bs2, bs3, bsc);
            acc = Fma.MultiplyAdd(VecDot.SumPair(sa, sbB), Vector128.Create(ad, bd, 0f, 0f) * Vector128.Create(*(float*)(x + Q8KScale)), acc);
        }
        ya = acc.ToScalar();
        yb = acc.GetElement(1);
    }

    /// <summary>Two rows far apart (two memory streams) against the same activations: <see cref="DotF16Scaled{TCheck}"/>'s
    /// operations for each row, interleaved, so each result has the same bits as DotF16Scaled's.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    internal static void DotF16ScaledPair<TCheck>(ushort* wa, ushort* wb, float* xs, int n, out float ya, out float yb, out bool nonFinite)
        where TCheck : struct, ICheckFlag
    {
        int i = 0;
        var ea = Vector512<ushort>.Zero; var eb = Vector512<ushort>.Zero;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        for (; i + 64 <= n; i += 64)
        {
            // each row prefetched as DotF16Scaled prefetches it (without: 19–22 against 23–26 GB/s streamed,
            // kernel-micro --pair on the Sapphire Rapids VM; TinyLlama F16 tg64 9.1–9.3 → 11.2–11.6 tok/s)
            Sse.Prefetch0((byte*)(wa + i) + PrefetchDistance); Sse.Prefetch0((byte*)(wa + i) + PrefetchDistance + 64);
            Sse.Prefetch0((byte*)(wb + i) + PrefetchDistance); Sse.Prefetch0((byte*)(wb + i) + PrefetchDistance + 64);
            if (TCheck.On) { ea = F16Exponents(wa + i, ea); eb = F16Exponents(wb + i, eb); }
            var x0 = Vector512.Load(xs + i); var x1 = Vector512.Load(xs + i + 16);
            var x2 = Vector512.Load(xs + i + 32); var x3 = Vector512.Load(xs + i + 48);
            a0 = Vector512.FusedMultiplyAdd(F16Raw(wa + i), x0, a0); a1 = Vector512.FusedMultiplyAdd(F16Raw(wa + i + 16), x1, a1);
            a2 = Vector512.FusedMultiplyAdd(F16Raw(wa + i + 32), x2, a2); a3 = Vector512.FusedMultiplyAdd(F16Raw(wa + i + 48), x3, a3);
            b0 = Vector512.FusedMultiplyAdd(F16Raw(wb + i), x0, b0); b1 = Vector512.FusedMultiplyAdd(F16Raw(wb + i + 16), x1, b1);
            b2 = Vector512.FusedMultiplyAdd(F16Raw(wb + i + 32), x2, b2); b3 = Vector512.FusedMultiplyAdd(F16Raw(wb + i + 48), x3, b3);
        }
        nonFinite = Vector512.EqualsAny(ea, Vector512<ushort>.AllBitsSet) | Vector512.EqualsAny(eb, Vector512<ushort>.AllBitsSet);
        // both sums before the first call: vectors live across a call (all caller-saved here) made the JIT keep the
        // second row's accumulators on the stack, stored and reloaded on every step of the loop
        float sa = Vector512.Sum((a0 + a1) + (a2 + a3)), sb = Vector512.Sum((b0 + b1) + (b2 + b3));
        ya = F16Tail(wa, xs, i, n, sa);
        yb = F16Tail(wb, xs, i, n, sb);
    }

    /// <summary>
    /// The decode kernel for F16 weights: <see cref="DotF16"/> with the half → float scaling moved to the activations.
    /// A half's bits shifted into float position, (h &lt;&lt; 13) &amp; 0x8FFFE000, are the value · 2^−112 exactly (subnormal
    /// halves become float subnormals), so FMA(raw, x · 2^112, acc) forms the same exact product as FMA(w, x, acc) and
    /// rounds the same: the same bits as <see cref="DotF16"/> in the same lanes, for two vector operations fewer per 16
    /// weights (no multiply, no infinity fix-up) — decode of F16 weights is that close to compute-bound here.
    /// Infinities and NaNs (exponent 31) would be read as finite, so the row's halves are also checked
    /// ((h | 0x83FF) = 0xFFFF exactly for them) and <paramref name="nonFinite"/> sends the row to <see cref="DotF16"/>.
    /// <paramref name="xs"/> is x · 2^112 (<see cref="ScaleBy2Pow112"/>); the tail (n mod 64) reads x = xs − n.
    /// With <typeparamref name="TCheck"/> = <see cref="Unchecked"/> the check is left out (the matrix was found finite
    /// when it was bound, <see cref="Models.WeightMatrix.NonFiniteF16"/>) and <paramref name="nonFinite"/> is false:
    /// four vector operations fewer per 64 weights (rows in L2, 2 threads: 105 → 134 GB/s; streamed from memory
    /// 40 → 48 GB/s in one comparison of builds, within the machine's noise in another: docs/benchmarks.md, session 10).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static float DotF16Scaled<TCheck>(ushort* w, float* xs, int n, out bool nonFinite) where TCheck : struct, ICheckFlag
    {
        int i = 0;
        var exponentOnes = Vector512<ushort>.Zero;
        Vector512<float> s0 = default, s1 = default, s2 = default, s3 = default;
        for (; i + 64 <= n; i += 64)
        {
            Sse.Prefetch0((byte*)(w + i) + PrefetchDistance);
            Sse.Prefetch0((byte*)(w + i) + PrefetchDistance + 64);
            if (TCheck.On) exponentOnes = F16Exponents(w + i, exponentOnes);
            s0 = Vector512.FusedMultiplyAdd(F16Raw(w + i), Vector512.Load(xs + i), s0);
            s1 = Vector512.FusedMultiplyAdd(F16Raw(w + i + 16), Vector512.Load(xs + i + 16), s1);
            s2 = Vector512.FusedMultiplyAdd(F16Raw(w + i + 32), Vector512.Load(xs + i + 32), s2);
            s3 = Vector512.FusedMultiplyAdd(F16Raw(w + i + 48), Vector512.Load(xs + i + 48), s3);
        }
        nonFinite = Vector512.EqualsAny(exponentOnes, Vector512<ushort>.AllBitsSet);
        return F16Tail(w, xs, i, n, Vector512.Sum((s0 + s1) + (s2 + s3)));
    }

    /// <summary>16 halves' raw bits shifted into float position: each half's value · 2^−112 exactly, for
    /// <see cref="DotF16Scaled{TCheck}"/> and its paired form, which do the same operations per row in the same order
    /// (s_k = FMA(raw(w + i + 16k), x · 2^112, s_k) for k = 0..3, i by 64).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> F16Raw(ushort* w) =>
        ((Avx512F.ConvertToVector512Int32(Vector256.Load((short*)w)) << 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    /// <summary>The running max over 64 halves of (h | 0x83FF), which reaches 0xFFFF exactly when some h has exponent
    /// 31 (infinity or NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<ushort> F16Exponents(ushort* w, Vector512<ushort> max)
    {
        var notExponent = Vector512.Create((ushort)0x83FF);
        max = Vector512.Max(max, Vector512.Load(w) | notExponent);
        return Vector512.Max(max, Vector512.Load(w + 32) | notExponent);
    }

    /// <summary>The tail [i, n) of an F16 row in exact scalar arithmetic against x = xs − n, continuing sum.</summary>
    static float F16Tail(ushort* w, float* xs, int i, int n, float sum)
    {
        float* x = xs - n;
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(Fp16.ToSingle(w[i]), x[i], sum);
        return sum;
    }

    /// <summary>Whether any of <paramref name="count"/> halves is an infinity or NaN (exponent 31): (h | 0x83FF) =
    /// 0xFFFF exactly for those, so the running max of that over all halves tells. Scalar reference:
    /// (h &amp; 0x7C00) == 0x7C00 for some h.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // once per matrix at load: no tier-0 pass over gigabytes
    internal static bool HasNonFiniteF16(ushort* w, long count)
    {
        long i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var notExponent = Vector512.Create((ushort)0x83FF);
            var m0 = Vector512<ushort>.Zero; var m1 = Vector512<ushort>.Zero;
            for (; i + 64 <= count; i += 64)
            {
                m0 = Vector512.Max(m0, Vector512.Load(w + i) | notExponent);
                m1 = Vector512.Max(m1, Vector512.Load(w + i + 32) | notExponent);
            }
            if (Vector512.EqualsAny(Vector512.Max(m0, m1), Vector512<ushort>.AllBitsSet)) return true;
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var notExponent = Vector256.Create((ushort)0x83FF);
            var m0 = Vector256<ushort>.Zero; var m1 = Vector256<ushort>.Zero;
            for (; i + 32 <= count; i += 32)
            {
                m0 = Vector256.Max(m0, Vector256.Load(w + i) | notExponent);
                m1 = Vector256.Max(m1, Vector256.Load(w + i + 16) | notExponent);
            }
            if (Vector256.EqualsAny(Vector256.Max(m0, m1), Vector256<ushort>.AllBitsSet)) return true;
        }
        for (; i < count; i++) if ((w[i] & 0x7C00) == 0x7C00) return true;
        return false;
    }

    /// <summary>A compile-time switch for kernels that exist with and without a check: generic code instantiated
    /// over a struct type argument is compiled once per argument, with <see cref="On"/> a constant.</summary>
    internal interface ICheckFlag { static abstract bool On { get; } }
    internal struct Checked : ICheckFlag { public static bool On => true; }
    internal struct Unchecked : ICheckFlag { public static bool On => false; }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void WidenBF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                (Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i)) << 16).AsSingle().Store(dst + i);
        else if (Avx2.IsSupported)
            for (; i + 8 <= n; i += 8)
                (Avx2.ConvertToVector256Int32(src + i).AsUInt32() << 16).AsSingle().Store(dst + i);
        else if (Vector128.IsHardwareAccelerated)
            for (; i + 4 <= n; i += 4)
                Bf16Row128.Load4(src, i).Store(dst + i);
        for (; i < n; i++) dst[i] = Bf16.ToSingle(src[i]);
    }
}
