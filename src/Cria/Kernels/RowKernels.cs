using System.Runtime.CompilerServices;
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
public static unsafe class RowKernels
{
    /// <summary>Activation rows processed together (their accumulators live on the stack).</summary>
    public const int Tile = 16;

    public static bool HasBatched(GgmlType t) => Avx512BW.IsSupported && t is GgmlType.Q4_K or GgmlType.Q6_K or GgmlType.Q8_0;

    /// <summary>
    /// Bytes of one activation row in the layout <see cref="Run"/> reads for a weight type:
    /// F32/F16/BF16 weights read F32 values (already rounded to F16/BF16 precision, as ggml rounds activations), so
    /// activations are converted once per matmul rather than once per weight row; Q8_0 weights (AVX-512) read Q8_0
    /// activations widened to int16 — nb F32 scales (the F16-rounded d, as ggml stores it) then nb·32 int16 quants —
    /// so the per-block sign extension is not repeated for every weight row; every other type reads its ggml vec-dot
    /// type (Q8_1 or Q8_K blocks).
    /// </summary>
    public static int ActivationRowBytes(GgmlType weightType, int n) => weightType switch
    {
        GgmlType.F32 or GgmlType.F16 or GgmlType.BF16 => n * 4,
        GgmlType.Q8_0 when Avx512BW.IsSupported => n / 32 * 68,
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
            case GgmlType.F16: for (int i = 0; i < x.Length; i++) f[i] = Fp16.Round(x[i]); return;
            case GgmlType.BF16: for (int i = 0; i < x.Length; i++) f[i] = Bf16.Round(x[i]); return;
            case GgmlType.Q8_0 when Avx512BW.IsSupported:
            {
                int nb = x.Length / 32;
                Span<byte> block = stackalloc byte[34];
                var q = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, short>(dst.Slice(nb * 4));
                for (int i = 0; i < nb; i++)
                {
                    VecDot.QuantizeActivations(GgmlType.Q8_0, x.Slice(i * 32, 32), block);
                    f[i] = Fp16.ToSingle(System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(block));
                    for (int j = 0; j < 32; j++) q[i * 32 + j] = (sbyte)block[2 + j];
                }
                return;
            }
            default:
                var act = VecDot.ActivationType(weightType);
                if (act == GgmlType.Q8_K && Vector512.IsHardwareAccelerated && Avx512BW.IsSupported)
                {
                    QuantizeQ8K(x, dst);
                    if (weightType == GgmlType.Q4_K) PermuteQ8KForQ4K(dst, x.Length / 256);
                }
                else VecDot.QuantizeActivations(act, x, dst);
                return;
        }
    }

    /// <summary>
    /// Reorders each Q8_K super-block's quants for the Q4_K kernel: within each 128-quant half, the 32-quant pieces
    /// (lo c, hi c, lo c+1, hi c+1) become (lo c, lo c+1, hi c, hi c+1), matching one 64-byte load of Q4_K nibbles
    /// split into its low and high halves. d and bsums keep their places (bsums stay in natural order).
    /// </summary>
    static void PermuteQ8KForQ4K(Span<byte> dst, int nb)
    {
        fixed (byte* p = dst)
            for (int k = 0; k < nb; k++)
                for (int half = 0; half < 2; half++)
                {
                    byte* q = p + k * 292 + 4 + 128 * half;
                    var hi0 = Vector256.Load(q + 32);
                    var lo1 = Vector256.Load(q + 64);
                    lo1.Store(q + 32);
                    hi0.Store(q + 64);
                }
    }

    /// <summary>
    /// ggml's quantize_row_q8_K_ref, vectorized, byte-identical to <see cref="VecDot.QuantizeActivations"/>:
    /// per 256 values, max = the first value of largest magnitude, q = min(127, round-half-even(−127/max · x)),
    /// d = 1/iscale, bsums = sums of each 16 quants.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void QuantizeQ8K(ReadOnlySpan<float> x, Span<byte> dst)
    {
        int nb = x.Length / 256;
        fixed (float* px = x) fixed (byte* py = dst)
        {
            for (int k = 0; k < nb; k++)
            {
                float* xb = px + k * 256;
                byte* yb = py + k * 292;
                var amaxv = Vector512<float>.Zero;
                for (int j = 0; j < 256; j += 16) amaxv = Vector512.Max(amaxv, Vector512.Abs(Vector512.Load(xb + j)));
                float amax = 0;
                for (int l = 0; l < 16; l++) amax = MathF.Max(amax, amaxv[l]);
                if (amax == 0) { new Span<byte>(yb, 292).Clear(); continue; }
                int first = 0;
                while (MathF.Abs(xb[first]) != amax) first++;
                float iscale = -127f / xb[first];
                var vs = Vector512.Create(iscale);
                var lim = Vector512.Create(127);
                short* bsums = (short*)(yb + 260);
                for (int j = 0; j < 256; j += 16)
                {
                    var q = Vector512.Min(Vector512.ConvertToInt32(Avx512F.RoundScale(vs * Vector512.Load(xb + j), 0x08)), lim);
                    Avx512F.ConvertToVector128SByte(q).Store((sbyte*)(yb + 4 + j));
                    bsums[j / 16] = (short)Vector512.Sum(q);
                }
                *(float*)yb = 1 / iscale;
            }
        }
    }

    [ThreadStatic] static float[]? _rowBuffer;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(GgmlType type, byte* w, int wBytes, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (Avx512BW.IsSupported)
        {
            switch (type)
            {
                case GgmlType.Q4_K:
                    for (int b0 = 0; b0 < B; b0 += Tile) Q4K(w, x + (long)b0 * xStride, xStride, Math.Min(Tile, B - b0), n / 256, y + (long)b0 * yStride, yStride);
                    return;
                case GgmlType.Q6_K:
                    for (int b0 = 0; b0 < B; b0 += Tile) Q6K(w, x + (long)b0 * xStride, xStride, Math.Min(Tile, B - b0), n / 256, y + (long)b0 * yStride, yStride);
                    return;
                case GgmlType.Q8_0:
                    for (int b0 = 0; b0 < B; b0 += Tile) Q80(w, x + (long)b0 * xStride, xStride, Math.Min(Tile, B - b0), n / 32, y + (long)b0 * yStride, yStride);
                    return;
            }
        }
        if (type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16)
        {
            FloatRow(type, w, x, xStride, B, n, y, yStride);
            return;
        }
        var wr = new ReadOnlySpan<byte>(w, wBytes);
        for (int b = 0; b < B; b++)
            y[(long)b * yStride] = VecDot.Dot(type, wr, new ReadOnlySpan<byte>(x + (long)b * xStride, xStride), n);
    }

    // ---- Q4_K × Q8_K ------------------------------------------------------------------------------------------
    // Q4_K super-block (144 B): d f16 | dmin f16 | scales[12] (8 six-bit scales, 8 six-bit mins) | qs[128].
    // Chunk c (0..3) of qs holds elements 64c..64c+31 in its low nibbles (sub-block 2c) and 64c+32..63 in its high
    // nibbles (sub-block 2c+1). Q8_K (292 B): d f32 | qs[256] int8 | bsums[16] int16 (sums of 16 quants); the
    // activations this kernel reads have their quants reordered by PermuteQ8KForQ4K.
    // dot = d·d8·Σ_sb scale_sb·Σ q4·q8 − dmin·d8·Σ_sb min_sb·(bsum_2sb + bsum_2sb+1).

    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Q4K(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride)
    {
        Vector512<float>* acc = stackalloc Vector512<float>[Tile];
        Vector256<float>* accMin = stackalloc Vector256<float>[Tile];
        for (int b = 0; b < B; b++) { acc[b] = Vector512<float>.Zero; accMin[b] = Vector256<float>.Zero; }
        var m4 = Vector512.Create((byte)0x0F);
        // vpermw indices for the four 64-quant groups (lo 0|lo 1), (hi 0|hi 1), (lo 2|lo 3), (hi 2|hi 3):
        // lanes 0..15 take the first sub-block's scale, lanes 16..31 the second's (sub-block of lo c = 2c, hi c = 2c+1).
        var permC0 = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2);
        var permC1 = permC0 + Vector512.Create((short)1);
        var permC2 = permC0 + Vector512.Create((short)4);
        var permC3 = permC0 + Vector512.Create((short)5);
        for (int i = 0; i < nb; i++)
        {
            byte* blk = w + i * 144;
            float d = Fp16.ToSingle(*(ushort*)blk);
            float dmin = Fp16.ToSingle(*(ushort*)(blk + 2));
            // 12 scale bytes → 8 scales (u0, u1) and 8 mins (u2, u3), ggml's kmask trick.
            uint a0 = Unsafe.ReadUnaligned<uint>(blk + 4), a1 = Unsafe.ReadUnaligned<uint>(blk + 8), a2 = Unsafe.ReadUnaligned<uint>(blk + 12);
            uint sc0 = a0 & 0x3f3f3f3fu;
            uint sc1 = (a2 & 0x0f0f0f0fu) | (((a0 >> 6) & 0x03030303u) << 4);
            uint mn0 = a1 & 0x3f3f3f3fu;
            uint mn1 = ((a2 >> 4) & 0x0f0f0f0fu) | (((a1 >> 6) & 0x03030303u) << 4);
            var scales16 = Avx512BW.ConvertToVector512Int16(Vector256.CreateScalar(((ulong)sc1 << 32) | sc0).AsByte());
            var s0 = Avx512BW.PermuteVar32x16(scales16, permC0);
            var s1 = Avx512BW.PermuteVar32x16(scales16, permC1);
            var s2 = Avx512BW.PermuteVar32x16(scales16, permC2);
            var s3 = Avx512BW.PermuteVar32x16(scales16, permC3);
            // mins, each repeated twice (one per bsum of 16).
            var mins8 = Vector128.CreateScalar(((ulong)mn1 << 32) | mn0).AsByte();
            var minsDup = Avx2.ConvertToVector256Int16(Sse2.UnpackLow(mins8, mins8));
            // Unpacked quants: one 64-byte load covers chunks 2p and 2p+1; its low nibbles are (lo 2p, lo 2p+1) and its
            // high nibbles (hi 2p, hi 2p+1), which is the order PermuteQ8KForQ4K gave the activations.
            byte* qs = blk + 16;
            var q01 = Vector512.Load(qs); var q23 = Vector512.Load(qs + 64);
            var wLo01 = q01 & m4; var wHi01 = Vector512.ShiftRightLogical(q01.AsUInt16(), 4).AsByte() & m4;
            var wLo23 = q23 & m4; var wHi23 = Vector512.ShiftRightLogical(q23.AsUInt16(), 4).AsByte() & m4;
            for (int b = 0; b < B; b++)
            {
                byte* yb = x + (long)b * xStride + i * 292;
                float d8 = *(float*)yb;
                sbyte* q8 = (sbyte*)(yb + 4);
                var p0 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(wLo01, Vector512.Load(q8)), s0);
                var p1 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(wHi01, Vector512.Load(q8 + 64)), s1);
                var p2 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(wLo23, Vector512.Load(q8 + 128)), s2);
                var p3 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(wHi23, Vector512.Load(q8 + 192)), s3);
                var sumi = (p0 + p1) + (p2 + p3);
                acc[b] = Vector512.FusedMultiplyAdd(Vector512.Create(d * d8), Vector512.ConvertToSingle(sumi), acc[b]);
                var bs = Vector256.Load((short*)(yb + 260));
                var m = Avx2.MultiplyAddAdjacent(bs, minsDup);
                accMin[b] = Vector256.FusedMultiplyAdd(Vector256.Create(dmin * d8), Vector256.ConvertToSingle(m), accMin[b]);
            }
        }
        for (int b = 0; b < B; b++) y[(long)b * yStride] = Vector512.Sum(acc[b]) - Vector256.Sum(accMin[b]);
    }

    // ---- Q6_K × Q8_K ------------------------------------------------------------------------------------------
    // Q6_K super-block (210 B): ql[128] | qh[64] | scales[16] int8 | d f16. Half h (0,1) covers elements 128h..128h+127:
    // for l < 32, element 128h+l+32k (k = 0..3) = nibble (k<2: low, else high) of ql[64h + l + 32(k&1)] | 2 bits
    // (qh[32h+l] >> 2k) << 4, minus 32. Each 16 elements share one int8 scale.
    // dot = d·d8·(Σ_e scale(e)·q6u(e)·q8(e) − 32·Σ_j scale_j·bsum_j), with q6u = q6 + 32 ∈ [0, 63].

    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Q6K(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride)
    {
        Vector512<float>* acc = stackalloc Vector512<float>[Tile];
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        var m4 = Vector256.Create((byte)0x0F);
        var m3 = Vector256.Create((byte)0x03);
        // vpermw indices: 8 lanes (16 elements) per scale, 4 scales per 64 elements.
        var perm6 = Vector512.Create((short)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        Vector512<byte>* wq = stackalloc Vector512<byte>[4];
        Vector512<short>* sc = stackalloc Vector512<short>[4];
        for (int i = 0; i < nb; i++)
        {
            byte* blk = w + i * 210;
            float d = Fp16.ToSingle(*(ushort*)(blk + 208));
            var scales16 = Avx512BW.ConvertToVector512Int16(Vector256.Create(Vector128.Load((sbyte*)blk + 192), Vector128<sbyte>.Zero));
            for (int h = 0; h < 2; h++)
            {
                byte* ql = blk + 64 * h;
                byte* qh = blk + 128 + 32 * h;
                var l0 = Vector256.Load(ql); var l1 = Vector256.Load(ql + 32); var hb = Vector256.Load(qh);
                var e0 = (l0 & m4) | Vector256.ShiftLeft((hb & m3).AsUInt16(), 4).AsByte();                                              // 128h + 0..31
                var e1 = (l1 & m4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hb.AsUInt16(), 2).AsByte() & m3).AsUInt16(), 4).AsByte(); // +32..63
                var e2 = (Vector256.ShiftRightLogical(l0.AsUInt16(), 4).AsByte() & m4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hb.AsUInt16(), 4).AsByte() & m3).AsUInt16(), 4).AsByte(); // +64..95
                var e3 = (Vector256.ShiftRightLogical(l1.AsUInt16(), 4).AsByte() & m4) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(hb.AsUInt16(), 6).AsByte() & m3).AsUInt16(), 4).AsByte(); // +96..127
                wq[2 * h] = Vector512.Create(e0, e1);
                wq[2 * h + 1] = Vector512.Create(e2, e3);
                sc[2 * h] = Avx512BW.PermuteVar32x16(scales16, perm6 + Vector512.Create((short)(8 * h)));
                sc[2 * h + 1] = Avx512BW.PermuteVar32x16(scales16, perm6 + Vector512.Create((short)(8 * h + 4)));
            }
            var w0 = wq[0]; var w1 = wq[1]; var w2 = wq[2]; var w3 = wq[3];
            var s0 = sc[0]; var s1 = sc[1]; var s2 = sc[2]; var s3 = sc[3];
            var scales32 = scales16.GetLower(); // 16 int16 scales for the bsum correction
            for (int b = 0; b < B; b++)
            {
                byte* yb = x + (long)b * xStride + i * 292;
                float d8 = *(float*)yb;
                sbyte* q8 = (sbyte*)(yb + 4);
                var p0 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(q8)), s0);
                var p1 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(q8 + 64)), s1);
                var p2 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(q8 + 128)), s2);
                var p3 = Avx512BW.MultiplyAddAdjacent(Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(q8 + 192)), s3);
                var sumi = (p0 + p1) + (p2 + p3);
                var bs = Vector256.Load((short*)(yb + 260));
                var corr = Avx2.MultiplyAddAdjacent(bs, scales32) * Vector256.Create(32);
                sumi -= Vector512.Create(corr, Vector256<int>.Zero);
                acc[b] = Vector512.FusedMultiplyAdd(Vector512.Create(d * d8), Vector512.ConvertToSingle(sumi), acc[b]);
            }
        }
        for (int b = 0; b < B; b++) y[(long)b * yStride] = Vector512.Sum(acc[b]);
    }

    // ---- Q8_0 × Q8_0 ------------------------------------------------------------------------------------------
    // Q8_0 block (34 B): d f16 | qs[32] int8. Weights and activations are sign-extended to int16 and multiplied with
    // vpmaddwd (16 int32 lanes per block), then scaled by d_w·d_x in float. Four blocks are combined before touching
    // the accumulator so the dependency chain through it stays short.
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Q80(byte* w, byte* x, int xStride, int B, int nb, float* y, int yStride)
    {
        Vector512<float>* acc = stackalloc Vector512<float>[Tile];
        for (int b = 0; b < B; b++) acc[b] = Vector512<float>.Zero;
        int i = 0;
        for (; i + 4 <= nb; i += 4)
        {
            byte* blk = w + i * 34;
            float d0 = Fp16.ToSingle(*(ushort*)blk), d1 = Fp16.ToSingle(*(ushort*)(blk + 34));
            float d2 = Fp16.ToSingle(*(ushort*)(blk + 68)), d3 = Fp16.ToSingle(*(ushort*)(blk + 102));
            var w0 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 2));
            var w1 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 36));
            var w2 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 70));
            var w3 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 104));
            for (int b = 0; b < B; b++)
            {
                float* xs = (float*)(x + (long)b * xStride);    // [nb] scales
                short* xq = (short*)(xs + nb) + i * 32;          // [nb, 32] int16 quants
                var p0 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(xq)));
                var p1 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w1, Vector512.Load(xq + 32)));
                var p2 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w2, Vector512.Load(xq + 64)));
                var p3 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w3, Vector512.Load(xq + 96)));
                var t = Vector512.FusedMultiplyAdd(Vector512.Create(d1 * xs[i + 1]), p1, Vector512.Create(d0 * xs[i]) * p0);
                var u = Vector512.FusedMultiplyAdd(Vector512.Create(d3 * xs[i + 3]), p3, Vector512.Create(d2 * xs[i + 2]) * p2);
                acc[b] += t + u;
            }
        }
        for (; i < nb; i++)
        {
            byte* blk = w + i * 34;
            float d0 = Fp16.ToSingle(*(ushort*)blk);
            var w0 = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)blk + 2));
            for (int b = 0; b < B; b++)
            {
                float* xs = (float*)(x + (long)b * xStride);
                short* xq = (short*)(xs + nb) + i * 32;
                var p0 = Vector512.ConvertToSingle(Avx512BW.MultiplyAddAdjacent(w0, Vector512.Load(xq)));
                acc[b] = Vector512.FusedMultiplyAdd(Vector512.Create(d0 * xs[i]), p0, acc[b]);
            }
        }
        for (int b = 0; b < B; b++) y[(long)b * yStride] = Vector512.Sum(acc[b]);
    }

    // ---- F32 / F16 / BF16 weights × F32 activations --------------------------------------------------------------
    // The weight row is widened to F32 once into a per-thread buffer (L1-resident), then dotted with each activation
    // row using four 16-lane FMA accumulators (fixed order, so the result does not depend on B).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void FloatRow(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (type == GgmlType.F16 && B == 1 && n >= 64 && Vector512.IsHardwareAccelerated)
        {
            // Same lanes, same FMA order as DotF32 over the widened row, so B = 1 and B > 1 agree bit for bit.
            y[0] = DotF16((ushort*)w, (float*)x, n);
            return;
        }
        float* wf;
        float[]? buf = null;
        if (type == GgmlType.F32) wf = (float*)w;
        else
        {
            buf = _rowBuffer;
            if (buf == null || buf.Length < n) _rowBuffer = buf = new float[Math.Max(n, 8192)];
        }
        fixed (float* pb = buf)
        {
            if (type != GgmlType.F32)
            {
                wf = pb;
                if (type == GgmlType.F16) WidenF16((ushort*)w, pb, n);
                else WidenBF16((ushort*)w, pb, n);
            }
            else wf = (float*)w;
            int b = 0;
            if (Vector512.IsHardwareAccelerated && n >= 64 && n % 64 == 0)
                for (; b + 4 <= B; b += 4)
                    DotF32x4(wf, (float*)(x + (long)b * xStride), xStride / 4, n, y + (long)b * yStride, yStride);
            for (; b < B; b++) y[(long)b * yStride] = DotF32(wf, (float*)(x + (long)b * xStride), n);
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
        else if (Vector256.IsHardwareAccelerated && n >= 32)
        {
            Vector256<float> s0 = default, s1 = default, s2 = default, s3 = default;
            for (; i + 32 <= n; i += 32)
            {
                s0 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), s0);
                s1 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 8), Vector256.Load(b + i + 8), s1);
                s2 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 16), Vector256.Load(b + i + 16), s2);
                s3 = Vector256.FusedMultiplyAdd(Vector256.Load(a + i + 24), Vector256.Load(b + i + 24), s3);
            }
            sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        }
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(a[i], b[i], sum);
        return sum;
    }

    /// <summary>
    /// 16 halves → 16 floats, exact: (h &amp; 0x7fff) &lt;&lt; 13 read as a float is the half's magnitude scaled by 2^-112
    /// (normal and subnormal halves alike), so one multiply by 2^112 fixes it; infinities and NaNs (exponent 31) get
    /// the float's all-ones exponent; the sign bit is moved over last.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> HalfToSingle(Vector512<uint> h)
    {
        var mag = (h & Vector512.Create(0x7fffu)) << 13;
        var f = (mag.AsSingle() * Vector512.Create(5.192297e33f)).AsUInt32(); // 2^112
        var infNan = Vector512.GreaterThanOrEqual(mag, Vector512.Create(0x0F800000u));
        f = Vector512.ConditionalSelect(infNan, mag | Vector512.Create(0x7F800000u), f);
        return (f | ((h & Vector512.Create(0x8000u)) << 16)).AsSingle();
    }

    /// <summary>F16 → F32 for a row; equals <see cref="Fp16.ToSingle"/> for every half.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void WidenF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i))).Store(dst + i);
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
                s0 = Vector512.FusedMultiplyAdd(HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load(w + i))), Vector512.Load(x + i), s0);
                s1 = Vector512.FusedMultiplyAdd(HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load(w + i + 16))), Vector512.Load(x + i + 16), s1);
                s2 = Vector512.FusedMultiplyAdd(HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load(w + i + 32))), Vector512.Load(x + i + 32), s2);
                s3 = Vector512.FusedMultiplyAdd(HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load(w + i + 48))), Vector512.Load(x + i + 48), s3);
            }
            sum = Vector512.Sum((s0 + s1) + (s2 + s3));
        }
        for (; i < n; i++) sum = MathF.FusedMultiplyAdd(Fp16.ToSingle(w[i]), x[i], sum);
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void WidenBF16(ushort* src, float* dst, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16)
                (Avx512F.ConvertToVector512UInt32(Vector256.Load(src + i)) << 16).AsSingle().Store(dst + i);
        for (; i < n; i++) dst[i] = Bf16.ToSingle(src[i]);
    }
}
