using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Cria.Kernels;

/// <summary>
/// Q2_K, Q3_K, Q4_K, Q5_K and Q6_K prefill on AVX2 without AVX-512: eight weight rows at a time, one row per 32-bit
/// lane, for <see cref="RowKernels.RunBlock"/> — the AVX2 form of the sixteen-row AVX-512 kernels
/// (<see cref="DotQ4KRows16Avx512{T}"/>, <see cref="DotQ6KRows16Avx512"/>, <see cref="DotQ2KRows16Avx512"/>,
/// <see cref="DotQ3KRows16Avx512"/>; here <see cref="DotQ6KRows8Avx2"/>, <see cref="DotQ2KRows8Avx2"/> and
/// <see cref="DotQ3KRows8Avx2"/> below the Q4_K one).
///
/// The one-row kernel (<see cref="DotK4RowAvx2{T}"/>) pays per 32 values and activation row a <c>vpmaddubsw</c> and a
/// <c>vpmaddwd</c> by the sub-block's scale (the int16 pair sums of different sub-blocks cannot be added before their
/// scales). Here each register holds one sub-block of eight rows: after a transpose, V_s (s = 0…7) holds in lane k row
/// k's values 4s…4s+3 of the sub-block, so against the activation's four bytes 4s…4s+3 broadcast to every lane one
/// <c>vpmaddubsw</c> gives eight rows' partial sums, the eight steps add in int16 (each at most 2·15·127 = 3810, eight
/// 30480 &lt; 2^15; Q5_K's five-bit values four steps at a time, 4·2·31·127 = 31496) and one <c>vpmaddwd</c> by the
/// lanes' scales ends the sub-block: nine multiplies per 256 multiply-adds where the one-row kernel takes sixteen.
///
/// Activations: <see cref="RowKernels.PrepareQ8KForK4Avx2"/> (ggml's block_q8_K, qs in order, the sums of 32 at 260).
/// Per row the arithmetic is the one-row kernel's: per super-block the exact isum and imin, then S = fma(isum, d8·d, S),
/// M = fma(imin, d8·dmin, M) in super-block order, and S − M — so prefill, decode and any grouping of rows give the
/// same bits. A group of fewer than eight rows repeats its last row in the unused lanes.
/// </summary>
public static partial class VecDot
{
    /// <summary>Q4_K (<typeparamref name="T"/> = <see cref="Q4KWeights"/>) or Q5_K (<see cref="Q5KWeights"/>) rows
    /// [0, rows) (rows ≤ 8, row k at w + k·rowBytes) against B activation rows (x + b·xStride):
    /// y[b·yStride + k] = dot(row k, x_b). <paramref name="acc"/> holds 2·B vectors, <paramref name="isum"/> B.</summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotK4Rows8Avx2<T>(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc, Vector256<int>* isum) where T : IK4Block
    {
        Rows8(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7);
        for (int b = 0; b < 2 * B; b++) acc[b] = Vector256<float>.Zero; // acc[2b] = S, acc[2b + 1] = M of activation row b
        int qs = T.Fifth ? 48 : 16; // Q5_K: qh[32] at 16, then qs
        byte* next = w + 8 * rowBytes;
        var m4 = Vector256.Create((byte)0x0F);
        var k6 = Vector256.Create(0x3F3F3F3F); var k4 = Vector256.Create(0x0F0F0F0F); var k2 = Vector256.Create(0x03030303);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * T.Bytes;
            byte* pf = next + 8 * o; // the next group's eight rows, contiguous after this group's: 8 · Bytes per super-block
            for (int l = 0; l < 8 * T.Bytes; l += 64) Sse.Prefetch0(pf + l);
            // d | dmin, and scales[12] as ggml's three words a0, a1, a2, of the eight rows
            Transpose8(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, out var dd, out var a0, out var a1, out var a2);
            var d = RowKernels.HalfToSingle(Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(dd, 16), 16));
            var dmin = RowKernels.HalfToSingle(Avx2.ShiftRightArithmetic(dd, 16));
            // scales 0–3, 4–7 and mins 0–3, 4–7 of each row, a byte each (Q4KScalesMins, per lane)
            var sc03 = a0 & k6;
            var sc47 = (a2 & k4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(a0, 6) & k2, 4);
            var mn03 = a1 & k6;
            var mn47 = (Vector256.ShiftRightLogical(a2, 4) & k4) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(a1, 6) & k2, 4);
            // Q5_K: qh[32] of the eight rows (bit j of byte l: the 16 of value l of sub-block j), as the quants below
            Vector256<int> h0 = default, h1 = default, h2 = default, h3 = default, h4 = default, h5 = default, h6 = default, h7 = default;
            if (T.Fifth)
            {
                int h = o + 16;
                Transpose8(p0 + h, p1 + h, p2 + h, p3 + h, p4 + h, p5 + h, p6 + h, p7 + h, out h0, out h1, out h2, out h3);
                h += 16;
                Transpose8(p0 + h, p1 + h, p2 + h, p3 + h, p4 + h, p5 + h, p6 + h, p7 + h, out h4, out h5, out h6, out h7);
            }
            for (int b = 0; b < B; b++) isum[b] = Vector256<int>.Zero;
            for (int c = 0; c < 4; c++)
            {
                // chunk c: qs[32c …] of the eight rows, Q_s lane k = row k's bytes 4s … 4s+3; low nibbles sub-block 2c,
                // high nibbles 2c + 1
                int q = o + qs + 32 * c;
                Transpose8(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, out var q0, out var q1, out var q2, out var q3);
                q += 16;
                Transpose8(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, out var q4, out var q5, out var q6, out var q7);
                var sct = c < 2 ? sc03 : sc47;
                var sLo = Vector256.ShiftRightLogical(sct, 16 * (c & 1)) & Vector256.Create(0xFF);       // scale of sub-block 2c
                var sHi = Vector256.ShiftRightLogical(sct, 16 * (c & 1) + 8) & Vector256.Create(0xFF);   // of 2c + 1
                byte* xa = x + sb * 292 + 4 + 64 * c; // sub-block 2c's activations (2c + 1's follow)
                var u0 = q0.AsByte(); var u1 = q1.AsByte(); var u2 = q2.AsByte(); var u3 = q3.AsByte();
                var u4 = q4.AsByte(); var u5 = q5.AsByte(); var u6 = q6.AsByte(); var u7 = q7.AsByte();
                SubBlock8<T>(u0 & m4, u1 & m4, u2 & m4, u3 & m4, u4 & m4, u5 & m4, u6 & m4, u7 & m4,
                    h0, h1, h2, h3, h4, h5, h6, h7, 2 * c, (sLo | Vector256.ShiftLeft(sLo, 16)).AsInt16(), xa, xStride, B, isum);
                SubBlock8<T>(High(u0, m4), High(u1, m4), High(u2, m4), High(u3, m4), High(u4, m4), High(u5, m4), High(u6, m4), High(u7, m4),
                    h0, h1, h2, h3, h4, h5, h6, h7, 2 * c + 1, (sHi | Vector256.ShiftLeft(sHi, 16)).AsInt16(), xa + 32, xStride, B, isum);
            }
            // mins of sub-blocks 2p, 2p + 1 as the two int16 halves of each lane, against the sums of 32
            var mp0 = BytePair8(mn03, 0); var mp1 = BytePair8(mn03, 16); var mp2 = BytePair8(mn47, 0); var mp3 = BytePair8(mn47, 16);
            byte* xb = x + sb * 292;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                int* s32 = (int*)(xb + 260);
                var imin = (Avx2.MultiplyAddAdjacent(mp0, Vector256.Create(s32[0]).AsInt16()) + Avx2.MultiplyAddAdjacent(mp1, Vector256.Create(s32[1]).AsInt16()))
                         + (Avx2.MultiplyAddAdjacent(mp2, Vector256.Create(s32[2]).AsInt16()) + Avx2.MultiplyAddAdjacent(mp3, Vector256.Create(s32[3]).AsInt16()));
                var d8 = Vector256.Create(*(float*)xb);
                acc[2 * b] = Fma.MultiplyAdd(Vector256.ConvertToSingle(isum[b]), d8 * d, acc[2 * b]);
                acc[2 * b + 1] = Fma.MultiplyAdd(Vector256.ConvertToSingle(imin), d8 * dmin, acc[2 * b + 1]);
            }
        }
        for (int b = 0; b < B; b++) Store(acc[2 * b] - acc[2 * b + 1], rows, y + (long)b * yStride);
    }

    /// <summary>
    /// Q6_K rows [0, rows) (rows ≤ 8; 210 B: ql[128] | qh[64] | scales[16] int8 | d f16) against B Q8_K activation rows
    /// (ggml's block_q8_K: d8 | qs[256] | bsums[16]), rows in lanes as <see cref="DotK4Rows8Avx2{T}"/>. Per super-block
    /// the eight rows' 256 values are decoded once into <paramref name="u"/> ([16 sub-blocks, 4] registers: register
    /// 4j + t holds in lane k row k's values 16j + 4t … 16j + 4t + 3 as q6 + 32 ∈ [0, 63]) from twelve transposes (ql and
    /// qh of each 16 values); then each sub-block of sixteen values meets each activation row in four
    /// <c>vpmaddubsw</c>, two steps added in int16 (at most 2·2·63·127 = 32004), and two <c>vpmaddwd</c> by the lanes'
    /// signed scales. The −32 of every value is taken back once per super-block and row, 32·Σ_j scale_j·bsum_j. Per row
    /// the arithmetic is the one-row kernel's (<see cref="DotQ6KAvx2"/>): the exact isum, then S = fma(isum, d8·d, S).
    /// <paramref name="acc"/> and <paramref name="isum"/> hold B vectors, <paramref name="u"/> 64.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ6KRows8Avx2(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc, Vector256<int>* isum, Vector256<byte>* u)
    {
        Rows8(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7);
        for (int b = 0; b < B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        var m4 = Vector256.Create((byte)0x0F);
        var m30 = Vector256.Create((byte)0x30);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 210;
            byte* pf = next + 8 * o; // the next group's eight rows: 8 · 210 B per super-block
            for (int l = 0; l < 8 * 210; l += 64) Sse.Prefetch0(pf + l);
            // the sixteen int8 scales, four per lane (sc_t: scales 4t … 4t+3), and d of each row
            int so = o + 192;
            Transpose8(p0 + so, p1 + so, p2 + so, p3 + so, p4 + so, p5 + so, p6 + so, p7 + so, out var sc0, out var sc1, out var sc2, out var sc3);
            var d = Halves8(p0, p1, p2, p3, p4, p5, p6, p7, o + 208);
            // values 128h + 32k + 16qq + l (l < 16): the low (k = 0, 1) or high (k = 2, 3) nibble of ql[64h + 32(k & 1) + 16qq + l]
            // with bits 2k, 2k + 1 of qh[32h + 16qq + l] as bits 4–5; sub-block j = 8h + 2k + qq
            for (int h = 0; h < 2; h++)
                for (int qq = 0; qq < 2; qq++)
                {
                    int la = o + 64 * h + 16 * qq, lc = la + 32, lh = o + 128 + 32 * h + 16 * qq;
                    Transpose8(p0 + la, p1 + la, p2 + la, p3 + la, p4 + la, p5 + la, p6 + la, p7 + la, out var a0, out var a1, out var a2, out var a3);
                    Transpose8(p0 + lc, p1 + lc, p2 + lc, p3 + lc, p4 + lc, p5 + lc, p6 + lc, p7 + lc, out var c0, out var c1, out var c2, out var c3);
                    Transpose8(p0 + lh, p1 + lh, p2 + lh, p3 + lh, p4 + lh, p5 + lh, p6 + lh, p7 + lh, out var g0, out var g1, out var g2, out var g3);
                    Vector256<byte>* u0 = u + 4 * (8 * h + qq); // sub-block 8h + qq (k = 0); k adds 2 sub-blocks = 8 registers
                    Six(a0, c0, g0, m4, m30, u0 + 0); Six(a1, c1, g1, m4, m30, u0 + 1);
                    Six(a2, c2, g2, m4, m30, u0 + 2); Six(a3, c3, g3, m4, m30, u0 + 3);
                }
            for (int b = 0; b < B; b++) isum[b] = Vector256<int>.Zero;
            byte* xs = x + (long)sb * 292;
            for (int j = 0; j < 16; j++)
            {
                var sct = (j >> 2) switch { 0 => sc0, 1 => sc1, 2 => sc2, _ => sc3 };
                var scale = Avx2.ShiftRightArithmetic(Vector256.ShiftLeft(sct, 24 - 8 * (j & 3)), 24); // signed, int32
                var scale2 = ((scale & Vector256.Create(0xFFFF)) | Vector256.ShiftLeft(scale, 16)).AsInt16();
                Vector256<byte> v0 = u[4 * j], v1 = u[4 * j + 1], v2 = u[4 * j + 2], v3 = u[4 * j + 3];
                byte* xa = xs + 4 + 16 * j;
                for (int b = 0; b < B; b++, xa += xStride)
                {
                    int* a = (int*)xa;
                    var t0 = Avx2.MultiplyAddAdjacent(v0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(v1, Vector256.Create(a[1]).AsSByte());
                    var t1 = Avx2.MultiplyAddAdjacent(v2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(v3, Vector256.Create(a[3]).AsSByte());
                    isum[b] += Avx2.MultiplyAddAdjacent(t0, scale2) + Avx2.MultiplyAddAdjacent(t1, scale2);
                }
            }
            // the 32s taken back: 32·Σ_j scale_j·bsum_j, scales 2p and 2p + 1 as the two int16 halves of each lane
            var sp0 = SignedBytePair8(sc0, 0); var sp1 = SignedBytePair8(sc0, 16); var sp2 = SignedBytePair8(sc1, 0); var sp3 = SignedBytePair8(sc1, 16);
            var sp4 = SignedBytePair8(sc2, 0); var sp5 = SignedBytePair8(sc2, 16); var sp6 = SignedBytePair8(sc3, 0); var sp7 = SignedBytePair8(sc3, 16);
            byte* xb = xs;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                var corr = BsumDot8(sp0, sp1, sp2, sp3, sp4, sp5, sp6, sp7, (int*)(xb + 260));
                var total = isum[b] - Vector256.ShiftLeft(corr, 5);
                acc[b] = Fma.MultiplyAdd(Vector256.ConvertToSingle(total), Vector256.Create(*(float*)xb) * d, acc[b]);
            }
        }
        Store8(acc, B, rows, y, yStride);
    }

    /// <summary>
    /// Q2_K rows [0, rows) (rows ≤ 8; 84 B: scales[16] (low nibble scale, high min) | qs[64] | d | dmin) against B Q8_K
    /// activation rows (ggml's block_q8_K), rows in lanes as <see cref="DotQ2KRows16Avx512"/>: a quarter (16 B) of the
    /// eight rows' qs transposed at a time; sub-block j (values 16j … 16j+15: qs quarter 2·(j / 8) + j % 2, bits
    /// 2·((j / 2) % 4)) is four steps of four values added in int16 (at most 4·2·3·127), then one <c>vpmaddwd</c> by the
    /// lanes' scales. Per row the arithmetic is <see cref="DotQ2KAvx2"/>'s: the exact isum and imin of each super-block,
    /// then acc = fma(isum, d_a·d, acc), acc = fma(imin, −d_a·dmin, acc). <paramref name="acc"/> and
    /// <paramref name="isum"/> hold B vectors.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ2KRows8Avx2(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc, Vector256<int>* isum)
    {
        Rows8(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7);
        for (int b = 0; b < B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        var m2 = Vector256.Create((byte)3);
        var m4 = Vector256.Create(0x0F);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 84;
            byte* pf = next + 8 * o; // the next group's eight rows: 8 · 84 B per super-block
            for (int l = 0; l < 8 * 84; l += 64) Sse.Prefetch0(pf + l);
            // scales[16] of the eight rows: sc_t, lane k = row k's scale bytes 4t … 4t+3 (low nibble scale, high min)
            Transpose8(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, out var sc0, out var sc1, out var sc2, out var sc3);
            int dof = o + 80; // d | dmin
            var dd = Vector256.Create(*(int*)(p0 + dof), *(int*)(p1 + dof), *(int*)(p2 + dof), *(int*)(p3 + dof),
                *(int*)(p4 + dof), *(int*)(p5 + dof), *(int*)(p6 + dof), *(int*)(p7 + dof));
            var d = RowKernels.HalfToSingle(Avx2.ShiftRightArithmetic(Avx2.ShiftLeftLogical(dd, 16), 16));
            var dmin = RowKernels.HalfToSingle(Avx2.ShiftRightArithmetic(dd, 16));
            for (int b = 0; b < B; b++) isum[b] = Vector256<int>.Zero;
            byte* xs = x + (long)sb * 292;
            for (int c = 0; c < 4; c++)
            {
                int q = o + 16 + 16 * c;
                Transpose8(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, out var q0, out var q1, out var q2, out var q3);
                for (int s = 0; s < 4; s++)
                {
                    int j = 8 * (c >> 1) + 2 * s + (c & 1); // the sub-block: values 16j … 16j+15
                    var v0 = Vector256.ShiftRightLogical(q0.AsUInt16(), 2 * s).AsByte() & m2;
                    var v1 = Vector256.ShiftRightLogical(q1.AsUInt16(), 2 * s).AsByte() & m2;
                    var v2 = Vector256.ShiftRightLogical(q2.AsUInt16(), 2 * s).AsByte() & m2;
                    var v3 = Vector256.ShiftRightLogical(q3.AsUInt16(), 2 * s).AsByte() & m2;
                    var sct = (j >> 2) switch { 0 => sc0, 1 => sc1, 2 => sc2, _ => sc3 };
                    var scale = Vector256.ShiftRightLogical(sct, 8 * (j & 3)) & m4;
                    var scale2 = (scale | Vector256.ShiftLeft(scale, 16)).AsInt16(); // the scale in both int16 halves
                    SubBlock16(v0, v1, v2, v3, scale2, xs + 4 + 16 * j, xStride, B, isum);
                }
            }
            // mins of sub-blocks 2p, 2p + 1 as the two int16 halves of each lane, against bsums 2p, 2p + 1
            var mn0 = MinPair8(sc0, 0); var mn1 = MinPair8(sc0, 16); var mn2 = MinPair8(sc1, 0); var mn3 = MinPair8(sc1, 16);
            var mn4 = MinPair8(sc2, 0); var mn5 = MinPair8(sc2, 16); var mn6 = MinPair8(sc3, 0); var mn7 = MinPair8(sc3, 16);
            byte* xb = xs;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                var imin = BsumDot8(mn0, mn1, mn2, mn3, mn4, mn5, mn6, mn7, (int*)(xb + 260));
                float yd = *(float*)xb;
                var t = Fma.MultiplyAdd(Vector256.ConvertToSingle(isum[b]), Vector256.Create(yd) * d, acc[b]);
                acc[b] = Fma.MultiplyAdd(Vector256.ConvertToSingle(imin), Vector256.Create(-yd) * dmin, t);
            }
        }
        Store8(acc, B, rows, y, yStride);
    }

    /// <summary>
    /// Q3_K rows [0, rows) (rows ≤ 8; 110 B: hmask[32] | qs[64] | scales[12] | d) against B Q8_K activation rows (ggml's
    /// block_q8_K), rows in lanes as <see cref="DotQ3KRows16Avx512"/>: a value is its two qs bits less 4 where its hmask
    /// bit is clear; the kernel multiplies u = value + 4 (0…7, unsigned for <c>vpmaddubsw</c>), four steps of four
    /// values in int16 (at most 4·2·7·127), and takes the 4s back with the activation's sub-block sums:
    /// Σ scale·Σ value·a = Σ scale·Σ u·a − 4·Σ scale·bsum. Per row the arithmetic is <see cref="DotQ3KAvx2"/>'s: the
    /// exact isum of each super-block, then acc = fma(isum, d_a·d, acc). <paramref name="acc"/> and <paramref name="isum"/>
    /// hold B vectors.
    /// </summary>
    [SkipLocalsInit]
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void DotQ3KRows8Avx2(byte* w, long rowBytes, int rows, byte* x, int xStride, int B, int nb,
        float* y, int yStride, Vector256<float>* acc, Vector256<int>* isum)
    {
        Rows8(w, rowBytes, rows, out byte* p0, out byte* p1, out byte* p2, out byte* p3, out byte* p4, out byte* p5, out byte* p6, out byte* p7);
        for (int b = 0; b < B; b++) acc[b] = Vector256<float>.Zero;
        byte* next = w + 8 * rowBytes;
        var m2 = Vector256.Create((byte)3);
        var one = Vector256.Create((byte)1);
        var k1 = Vector256.Create(0x03030303); var k2 = Vector256.Create(0x0F0F0F0F);
        for (int sb = 0; sb < nb; sb++)
        {
            int o = sb * 110;
            byte* pf = next + 8 * o; // the next group's eight rows: 8 · 110 B per super-block
            for (int l = 0; l < 8 * 110; l += 64) Sse.Prefetch0(pf + l);
            // scales[12] as ggml's three words a0, a1, a2 (read from byte 92: the 16 bytes end with the scales, not past them)
            int so = o + 92;
            Transpose8(p0 + so, p1 + so, p2 + so, p3 + so, p4 + so, p5 + so, p6 + so, p7 + so, out _, out var a0, out var a1, out var a2);
            // the sixteen 6-bit scales + 32, four per lane: sc_t holds scales 4t … 4t+3 (DotQ3KAvx2's Q3KScales, per lane)
            var sc0 = (a0 & k2) | Vector256.ShiftLeft(a2 & k1, 4);
            var sc1 = (a1 & k2) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(a2, 2) & k1, 4);
            var sc2 = (Vector256.ShiftRightLogical(a0, 4) & k2) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(a2, 4) & k1, 4);
            var sc3 = (Vector256.ShiftRightLogical(a1, 4) & k2) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(a2, 6) & k1, 4);
            var d = Halves8(p0, p1, p2, p3, p4, p5, p6, p7, o + 108);
            // hmask[32] of the eight rows: h0–h3 bytes 0–15, h4–h7 bytes 16–31
            Transpose8(p0 + o, p1 + o, p2 + o, p3 + o, p4 + o, p5 + o, p6 + o, p7 + o, out var h0, out var h1, out var h2, out var h3);
            int ho = o + 16;
            Transpose8(p0 + ho, p1 + ho, p2 + ho, p3 + ho, p4 + ho, p5 + ho, p6 + ho, p7 + ho, out var h4, out var h5, out var h6, out var h7);
            for (int b = 0; b < B; b++) isum[b] = Vector256<int>.Zero;
            byte* xs = x + (long)sb * 292;
            for (int c = 0; c < 4; c++)
            {
                int q = o + 32 + 16 * c;
                Transpose8(p0 + q, p1 + q, p2 + q, p3 + q, p4 + q, p5 + q, p6 + q, p7 + q, out var q0, out var q1, out var q2, out var q3);
                // values 16·(c & 1) + … of each 32-value piece: hmask bytes 0–15 (c even) or 16–31 (c odd)
                bool odd = (c & 1) != 0;
                Vector256<int> g0 = odd ? h4 : h0, g1 = odd ? h5 : h1, g2 = odd ? h6 : h2, g3 = odd ? h7 : h3;
                for (int s = 0; s < 4; s++)
                {
                    int j = 8 * (c >> 1) + 2 * s + (c & 1); // the sub-block: values 16j … 16j+15
                    int hb = 4 * (c >> 1) + s;             // their hmask bit
                    var u0 = (Vector256.ShiftRightLogical(q0.AsUInt16(), 2 * s).AsByte() & m2) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(g0.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u1 = (Vector256.ShiftRightLogical(q1.AsUInt16(), 2 * s).AsByte() & m2) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(g1.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u2 = (Vector256.ShiftRightLogical(q2.AsUInt16(), 2 * s).AsByte() & m2) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(g2.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var u3 = (Vector256.ShiftRightLogical(q3.AsUInt16(), 2 * s).AsByte() & m2) | Vector256.ShiftLeft((Vector256.ShiftRightLogical(g3.AsUInt16(), hb).AsByte() & one).AsUInt16(), 2).AsByte();
                    var sct = (j >> 2) switch { 0 => sc0, 1 => sc1, 2 => sc2, _ => sc3 };
                    var scale = (Vector256.ShiftRightLogical(sct, 8 * (j & 3)) & Vector256.Create(0xFF)) - Vector256.Create(32);
                    var scale2 = ((scale & Vector256.Create(0xFFFF)) | Vector256.ShiftLeft(scale, 16)).AsInt16(); // signed, in both int16 halves
                    SubBlock16(u0, u1, u2, u3, scale2, xs + 4 + 16 * j, xStride, B, isum);
                }
            }
            // the 4s taken back: 4·Σ_j scale_j·bsum_j, scales 2p and 2p + 1 as the two int16 halves of each lane
            var sp0 = ScalePair8(sc0, 0); var sp1 = ScalePair8(sc0, 16); var sp2 = ScalePair8(sc1, 0); var sp3 = ScalePair8(sc1, 16);
            var sp4 = ScalePair8(sc2, 0); var sp5 = ScalePair8(sc2, 16); var sp6 = ScalePair8(sc3, 0); var sp7 = ScalePair8(sc3, 16);
            byte* xb = xs;
            for (int b = 0; b < B; b++, xb += xStride)
            {
                var corr = BsumDot8(sp0, sp1, sp2, sp3, sp4, sp5, sp6, sp7, (int*)(xb + 260));
                var total = isum[b] - Vector256.ShiftLeft(corr, 2);
                acc[b] = Fma.MultiplyAdd(Vector256.ConvertToSingle(total), Vector256.Create(*(float*)xb) * d, acc[b]);
            }
        }
        Store8(acc, B, rows, y, yStride);
    }

    /// <summary>One sub-block of sixteen values of the eight rows (Q2_K, Q3_K: four steps of four, each value ≤ 7)
    /// against B activation rows (the sub-block's quants at xb + b·xStride): isum[b] += scale · Σ v·a per lane, the
    /// steps added in int16 first.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void SubBlock16(Vector256<byte> v0, Vector256<byte> v1, Vector256<byte> v2, Vector256<byte> v3, Vector256<short> scale2,
        byte* xb, int xStride, int B, Vector256<int>* isum)
    {
        for (int b = 0; b < B; b++, xb += xStride)
        {
            int* a = (int*)xb;
            var t = (Avx2.MultiplyAddAdjacent(v0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(v1, Vector256.Create(a[1]).AsSByte()))
                  + (Avx2.MultiplyAddAdjacent(v2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(v3, Vector256.Create(a[3]).AsSByte()));
            isum[b] += Avx2.MultiplyAddAdjacent(t, scale2);
        }
    }

    /// <summary>Σ_j c_j·bsum_j per lane: c_2p, c_2p+1 the int16 halves of <paramref name="c0"/> … <paramref name="c7"/>,
    /// bsums the activation's sixteen int16 sub-block sums (as eight words at <paramref name="bs"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<int> BsumDot8(Vector256<short> c0, Vector256<short> c1, Vector256<short> c2, Vector256<short> c3,
        Vector256<short> c4, Vector256<short> c5, Vector256<short> c6, Vector256<short> c7, int* bs) =>
        (Avx2.MultiplyAddAdjacent(c0, Vector256.Create(bs[0]).AsInt16()) + Avx2.MultiplyAddAdjacent(c1, Vector256.Create(bs[1]).AsInt16()))
        + (Avx2.MultiplyAddAdjacent(c2, Vector256.Create(bs[2]).AsInt16()) + Avx2.MultiplyAddAdjacent(c3, Vector256.Create(bs[3]).AsInt16()))
        + ((Avx2.MultiplyAddAdjacent(c4, Vector256.Create(bs[4]).AsInt16()) + Avx2.MultiplyAddAdjacent(c5, Vector256.Create(bs[5]).AsInt16()))
        + (Avx2.MultiplyAddAdjacent(c6, Vector256.Create(bs[6]).AsInt16()) + Avx2.MultiplyAddAdjacent(c7, Vector256.Create(bs[7]).AsInt16())));

    /// <summary>Bytes at bit <paramref name="shift"/> and shift + 8 of each lane (two Q3_K scales + 32) less 32, as the
    /// lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> ScalePair8(Vector256<int> sc, int shift) => BytePair8(sc, shift) - Vector256.Create((short)32);

    /// <summary>The high nibbles of bytes at bit <paramref name="shift"/> and shift + 8 of each lane (two Q2_K mins) as
    /// the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> MinPair8(Vector256<int> sc, int shift)
    {
        var m = Vector256.ShiftRightLogical(sc, shift + 4) & Vector256.Create(0x0F0F); // [min lo | 0 | min hi | …] in bytes 0, 1
        return ((m & Vector256.Create(0x0F)) | Vector256.ShiftLeft(m & Vector256.Create(0x0F00), 8)).AsInt16();
    }

    /// <summary>The four 6-bit values (+ 32) of one transposed register t of ql (a: ql[64h + 16qq …], c: 32 bytes on)
    /// and qh (g) into u[0] (k = 0: low nibbles of a, qh bits 0–1), u[8] (k = 1: low of c, bits 2–3), u[16] (k = 2: high
    /// of a, bits 4–5), u[24] (k = 3: high of c, bits 6–7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Six(Vector256<int> a, Vector256<int> c, Vector256<int> g, Vector256<byte> m4, Vector256<byte> m30, Vector256<byte>* u)
    {
        var a16 = a.AsUInt16(); var c16 = c.AsUInt16(); var g16 = g.AsUInt16();
        u[0] = (a.AsByte() & m4) | (Vector256.ShiftLeft(g16, 4).AsByte() & m30);
        u[8] = (c.AsByte() & m4) | (Vector256.ShiftLeft(g16, 2).AsByte() & m30);
        u[16] = (Vector256.ShiftRightLogical(a16, 4).AsByte() & m4) | (g.AsByte() & m30);
        u[24] = (Vector256.ShiftRightLogical(c16, 4).AsByte() & m4) | (Vector256.ShiftRightLogical(g16, 2).AsByte() & m30);
    }

    /// <summary>Signed bytes at bit <paramref name="shift"/> and shift + 8 of each lane as the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> SignedBytePair8(Vector256<int> v, int shift)
    {
        var lo = Avx2.ShiftRightArithmetic(Vector256.ShiftLeft(v, 24 - shift), 24);
        var hi = Avx2.ShiftRightArithmetic(Vector256.ShiftLeft(v, 16 - shift), 24);
        return ((lo & Vector256.Create(0xFFFF)) | Vector256.ShiftLeft(hi, 16)).AsInt16();
    }

    /// <summary>One sub-block j of eight rows (v_s lane k: row k's values 4s…4s+3, nibbles; Q5_K adds bit j of h_s as
    /// 16) against B activation rows (xa + b·xStride: the sub-block's 32 quants): isum[b] += scale·Σ v·a per lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void SubBlock8<T>(Vector256<byte> v0, Vector256<byte> v1, Vector256<byte> v2, Vector256<byte> v3,
        Vector256<byte> v4, Vector256<byte> v5, Vector256<byte> v6, Vector256<byte> v7,
        Vector256<int> h0, Vector256<int> h1, Vector256<int> h2, Vector256<int> h3, Vector256<int> h4, Vector256<int> h5,
        Vector256<int> h6, Vector256<int> h7, int j, Vector256<short> scale, byte* xa, int xStride, int B, Vector256<int>* isum) where T : IK4Block
    {
        if (T.Fifth)
        {
            var m16 = Vector256.Create((byte)0x10);
            v0 |= Fifth8(h0, j, m16); v1 |= Fifth8(h1, j, m16); v2 |= Fifth8(h2, j, m16); v3 |= Fifth8(h3, j, m16);
            v4 |= Fifth8(h4, j, m16); v5 |= Fifth8(h5, j, m16); v6 |= Fifth8(h6, j, m16); v7 |= Fifth8(h7, j, m16);
        }
        for (int b = 0; b < B; b++, xa += xStride)
        {
            int* a = (int*)xa;
            var t0 = (Avx2.MultiplyAddAdjacent(v0, Vector256.Create(a[0]).AsSByte()) + Avx2.MultiplyAddAdjacent(v1, Vector256.Create(a[1]).AsSByte()))
                   + (Avx2.MultiplyAddAdjacent(v2, Vector256.Create(a[2]).AsSByte()) + Avx2.MultiplyAddAdjacent(v3, Vector256.Create(a[3]).AsSByte()));
            var t1 = (Avx2.MultiplyAddAdjacent(v4, Vector256.Create(a[4]).AsSByte()) + Avx2.MultiplyAddAdjacent(v5, Vector256.Create(a[5]).AsSByte()))
                   + (Avx2.MultiplyAddAdjacent(v6, Vector256.Create(a[6]).AsSByte()) + Avx2.MultiplyAddAdjacent(v7, Vector256.Create(a[7]).AsSByte()));
            if (T.Fifth) isum[b] += Avx2.MultiplyAddAdjacent(t0, scale) + Avx2.MultiplyAddAdjacent(t1, scale);
            else isum[b] += Avx2.MultiplyAddAdjacent(t0 + t1, scale);
        }
    }

    /// <summary>The high nibble of every byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> High(Vector256<byte> q, Vector256<byte> m4) => Vector256.ShiftRightLogical(q.AsUInt16(), 4).AsByte() & m4;

    /// <summary>Bit <paramref name="j"/> of every byte moved to bit 4 (16 where it is set, else 0); the 16-bit shifts
    /// move no other byte's bit there.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> Fifth8(Vector256<int> h, int j, Vector256<byte> m16) =>
        (j <= 4 ? Vector256.ShiftLeft(h.AsUInt16(), 4 - j) : Vector256.ShiftRightLogical(h.AsUInt16(), j - 4)).AsByte() & m16;

    /// <summary>Bytes at bit <paramref name="shift"/> and shift + 8 of each lane as the lane's two int16 halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> BytePair8(Vector256<int> v, int shift)
    {
        var s = Vector256.ShiftRightLogical(v, shift);
        return ((s & Vector256.Create(0xFF)) | Vector256.ShiftLeft(Vector256.ShiftRightLogical(s, 8) & Vector256.Create(0xFF), 16)).AsInt16();
    }

    /// <summary>The 16 bytes at each of eight pointers as four registers: t_i lane k = the 32-bit word i of pointer k
    /// (rows 0–3 in the low 128 bits, 4–7 in the high: a 4 × 4 transpose in each half).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Transpose8(byte* a0, byte* a1, byte* a2, byte* a3, byte* a4, byte* a5, byte* a6, byte* a7,
        out Vector256<int> t0, out Vector256<int> t1, out Vector256<int> t2, out Vector256<int> t3)
    {
        var v0 = Vector256.Create(Vector128.Load((int*)a0), Vector128.Load((int*)a4));
        var v1 = Vector256.Create(Vector128.Load((int*)a1), Vector128.Load((int*)a5));
        var v2 = Vector256.Create(Vector128.Load((int*)a2), Vector128.Load((int*)a6));
        var v3 = Vector256.Create(Vector128.Load((int*)a3), Vector128.Load((int*)a7));
        var l01 = Avx2.UnpackLow(v0, v1).AsInt64(); var h01 = Avx2.UnpackHigh(v0, v1).AsInt64(); // [k0 w0, k1 w0, k0 w1, k1 w1], [… w2, w3]
        var l23 = Avx2.UnpackLow(v2, v3).AsInt64(); var h23 = Avx2.UnpackHigh(v2, v3).AsInt64();
        t0 = Avx2.UnpackLow(l01, l23).AsInt32(); t1 = Avx2.UnpackHigh(l01, l23).AsInt32();
        t2 = Avx2.UnpackLow(h01, h23).AsInt32(); t3 = Avx2.UnpackHigh(h01, h23).AsInt32();
    }

    /// <summary>Lanes [0, rows) of acc[b] to y[b·yStride …] for each of the B activation rows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void Store8(Vector256<float>* acc, int B, int rows, float* y, int yStride)
    {
        for (int b = 0; b < B; b++) Store(acc[b], rows, y + (long)b * yStride);
    }

    /// <summary>The F16 at byte <paramref name="off"/> of each of the eight rows → float, lane k from row k.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe Vector256<float> Halves8(byte* p0, byte* p1, byte* p2, byte* p3, byte* p4, byte* p5, byte* p6, byte* p7, int off) =>
        RowKernels.HalfToSingle(Avx2.ConvertToVector256Int32(Vector128.Create(*(short*)(p0 + off), *(short*)(p1 + off), *(short*)(p2 + off), *(short*)(p3 + off),
            *(short*)(p4 + off), *(short*)(p5 + off), *(short*)(p6 + off), *(short*)(p7 + off))));
}
