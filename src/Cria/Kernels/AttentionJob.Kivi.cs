using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Cria.Inference;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Kernels;

/// <summary>
/// KIVI attention on the codes (KIVI §3.3's fused kernels, on the CPU): quantized keys and values are never widened
/// to float rows. With key k[t,c] = s_c·code[t,c] + m_c (one scale and min per channel over the block's G tokens),
/// <code>q·k_t = Σ_c (q_c·s_c)·code[t,c] + Σ_c q_c·m_c</code>
/// so each block folds its scales into a scaled query q′ (and its mins into one bias per head) once, and a score costs
/// one FMA per channel on the codes. Sixteen tokens go through the lanes at a time (their code words gathered), so
/// no horizontal sums are needed. With value v[t,c] = s_t·code[t,c] + m_t (per token, groups of channels),
/// <code>Σ_t p_t·v_t = Σ_t (p_t·s_t)·code_t + (Σ_t p_t·m_t)·1</code>
/// so P·V runs on the codes with weights p·s, and the mins become one running scalar per head and value group.
/// Rows in the F16 residual window go through the same float code as an F16 cache (a KIVI window covering the whole
/// sequence still reproduces F16 exactly). The result differs from <see cref="AttendRows"/> on the dequantized tiles
/// only in float rounding (tested); the online softmax and its tiles are the same.
/// </summary>
internal sealed partial class AttentionJob
{
    /// <summary>Whether <see cref="AttendKivi"/> serves this layer: KIVI on a machine with vectors (16 lanes with
    /// AVX-512, 8 with AVX2 and FMA, else 4 — ARM64, x86 without AVX2; per lane the same operations), head and value
    /// groups in whole 16-lane vectors, no position shift (a shifted key tile must be rotated as floats).</summary>
    internal static bool KiviFused(in KvLayer kv, int hd, int dropped) =>
        kv.Bits != 0 && dropped <= 0 && (Avx2.IsSupported && Fma.IsSupported || Vector128.IsHardwareAccelerated)
        && hd % 16 == 0 && kv.ValueGroup % 16 == 0;

    /// <summary>Whether the kernels on the codes run in four lanes (<see cref="KeyScoresOnCodesPortable{TMac}"/>,
    /// <see cref="ValuesOnCodesPortable{TMac}"/>): no AVX2 + FMA.</summary>
    static readonly bool KiviPortable = !(Avx2.IsSupported && Fma.IsSupported);

    /// <summary>One row's query heads of KV group g over the first <paramref name="slots"/> slots, on KIVI codes
    /// (see the class remarks); same contract as <see cref="AttendRows"/> with one row. max / sum ([group]) return
    /// the softmax state for the eviction pass. <paramref name="portable"/> runs the four-lane kernels even where
    /// wider ones run (tests: with FMA they give the same bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AttendKivi(ModelConfig c, in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][] ring,
                                    int slots, int p, int g, ReadOnlySpan<float> qRow, Span<float> outRow, float[] scratch,
                                    Span<float> max, Span<float> sum, bool portable = false)
    {
        int hd = c.HeadDim, group = c.GroupSize, vg = kv.ValueGroup, nq = hd / vg;
        float scale = 1.0f / MathF.Sqrt(hd);
        var scores = scratch.AsSpan(0, group * TileSize);                                      // [group, TileSize]
        var acc = scratch.AsSpan(RowsPerItem * group * TileSize, group * hd);                  // [group, hd] Σ p·s·code (+ F16 rows' p·v)
        var kTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd), TileSize * hd);      // [TileSize, hd] F16-window rows
        var vTile = scratch.AsSpan(RowsPerItem * group * (TileSize + hd) + TileSize * hd, TileSize * hd);
        var kCols = scratch.AsSpan(KeyColumnsOffset(group, hd), hd * TileSize);                 // [hd, TileSize] window keys transposed
        Span<float> minAcc = stackalloc float[group * nq];                                     // [group, nq] Σ p·m per value group
        Span<float> qScaled = stackalloc float[group * hd + group];                            // [group, hd] q′ then [group] bias
        Span<float> weights = stackalloc float[group * TileSize + TileSize * 2];               // [group, TileSize] p·s, [TileSize] s, [TileSize] m
        acc.Clear(); minAcc.Clear();
        max.Slice(0, group).Fill(float.NegativeInfinity);
        sum.Slice(0, group).Clear();
        int h0 = g * group;
        bool anyQuantizedValue = Kivi.QuantizedValueEnd(p, kv.Residual) > blockPos[0];
        for (int t0 = 0; t0 < slots; t0 += TileSize)
        {
            int n = Math.Min(TileSize, slots - t0);
            KiviTileScores(kv, table, blockPos, ring, t0, n, g, hd, group, p, qRow, scale, scores, kTile, qScaled, kCols, portable);
            for (int h = 0; h < group; h++)
            {
                var sc = scores.Slice(h * TileSize, n);
                float m = MathF.Max(max[h], MaxOf(sc));
                float correction = MathF.Exp(max[h] - m);
                float tileSum = ExpSubtractSum(sc, m);
                sum[h] = sum[h] * correction + tileSum;
                max[h] = m;
                if (correction != 1f) { Scale(acc.Slice(h * hd, hd), correction); Scale(minAcc.Slice(h * nq, nq), correction); }
            }
            KiviTileValues(kv, table, blockPos, ring, t0, n, g, hd, group, p, scores, vTile, acc, minAcc, weights, portable);
        }
        for (int h = 0; h < group; h++)
        {
            float inv = 1.0f / sum[h];
            var o = outRow.Slice((h0 + h) * hd, hd);
            var a = acc.Slice(h * hd, hd);
            if (anyQuantizedValue)
                for (int i = 0; i < hd; i++) o[i] = (a[i] + minAcc[h * nq + i / vg]) * inv;
            else
                for (int i = 0; i < hd; i++) o[i] = a[i] * inv;
        }
    }

    /// <summary>scores[h, j] = q_h · k_(t0+j) · scale for the tile's slots: quantized keys on their codes with the
    /// block's q′ and bias, window keys from the F16 ring through the F16 cache's score kernel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void KiviTileScores(in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][] ring,
                                        int t0, int n, int g, int hd, int group, int p, ReadOnlySpan<float> qRow, float scale,
                                        Span<float> scores, Span<float> kTile, Span<float> qScaled, Span<float> kCols, bool portable = false)
    {
        int bs = kv.BlockSize, off = g * hd, h0 = g * group, kEnd = Kivi.QuantizedKeyEnd(p, kv.Residual), ring0 = n;
        var ringK = ring[2 * kv.Layer];
        Span<float> sc = stackalloc float[hd], mn = stackalloc float[hd];
        for (int j = 0; j < n;)
        {
            int slot = t0 + j, bi = slot / bs, r0 = slot % bs, run = Math.Min(bs - r0, n - j);
            int block = table[bi], pos0 = blockPos[bi] + r0;
            int quant = Math.Clamp(kEnd - pos0, 0, run);
            if (quant > 0)
            {
                // q′_h = q_h ⊙ s · scale, bias_h = scale · Σ_c q_h,c · m_c for this block's key parameters.
                Kivi.DecodeKeyParams(kv.KParams!.AsSpan(block * kv.KeyParamsPerBlock + g * (Kivi.KeySuperParams + hd), Kivi.KeySuperParams + hd), sc, mn);
                for (int h = 0; h < group; h++)
                {
                    var q = qRow.Slice((h0 + h) * hd, hd);
                    var qs = qScaled.Slice(h * hd, hd);
                    float bias = 0;
                    for (int i = 0; i < hd; i++) { qs[i] = q[i] * sc[i] * scale; bias += q[i] * mn[i]; }
                    qScaled[group * hd + h] = bias * scale;
                }
                KeyScoresOnCodes(kv, (block * bs + r0) * kv.RowBytes + off * kv.Bits / 8, quant, hd, group, qScaled, scores.Slice(j), portable);
            }
            for (int r = quant; r < run; r++)
                HalfToSingle(ringK.AsSpan((pos0 + r) % kv.RingLength * kv.KvDim + off, hd), kTile.Slice((j + r) * hd, hd));
            if (run > quant) ring0 = Math.Min(ring0, j + quant);
            j += run;
        }
        if (ring0 >= n) return;
        // Window keys [ring0, n) (positions only grow along the slots, so the window is the tile's end) are scored as an
        // F16 cache scores them — by the same kernel on the same floats, so a window covering the sequence gives F16's bits.
        int m = n - ring0;
        if (!UsesKeyColumns(hd)) { TileScores(qRow, kTile.Slice(ring0 * hd), m, h0, group, hd, scale, scores.Slice(ring0)); return; }
        Span<float> windowScores = stackalloc float[group * TileSize];
        TransposeKeys(kTile.Slice(ring0 * hd), m, hd, kCols);
        TileScoresColumns(qRow, kCols, m, h0, group, hd, scale, windowScores);
        for (int h = 0; h < group; h++) windowScores.Slice(h * TileSize, m).CopyTo(scores.Slice(h * TileSize + ring0, m));
    }

    /// <summary>
    /// scores[h, r] = Σ_c q′[h, c] · code[r, c] + bias[h] for <paramref name="rows"/> consecutive cache rows whose
    /// codes for this KV head start at byte <paramref name="at"/> of the layer's key bytes. Sixteen rows at a time:
    /// each 32-bit code word of the 16 rows is gathered into the lanes, then every channel of the word is one shift,
    /// mask, convert and an FMA per head (four heads in registers at a time).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void KeyScoresOnCodes(in KvLayer kv, int at, int rows, int hd, int group, ReadOnlySpan<float> qScaled, Span<float> scores, bool portable)
    {
        if (portable || KiviPortable)
        {
            if (MulAdd.Fused) KeyScoresOnCodesPortable<FusedMulAdd>(kv, at, rows, hd, group, qScaled, scores);
            else KeyScoresOnCodesPortable<SplitMulAdd>(kv, at, rows, hd, group, qScaled, scores);
            return;
        }
        if (!Avx512F.IsSupported) { KeyScoresOnCodes256(kv, at, rows, hd, group, qScaled, scores); return; }
        int bits = kv.Bits, perWord = 32 / bits, words = hd / perWord, rowWords = kv.RowBytes / 4;
        var mask = Vector512.Create((1u << bits) - 1);
        Span<float> tail = stackalloc float[16];
        fixed (byte* kBase = kv.K)
        fixed (float* qs = qScaled)
        fixed (float* sp = scores)
        {
            float* bias = qs + group * hd;
            for (int r = 0; r < rows; r += 16)
            {
                int m = Math.Min(16, rows - r);
                // Row indices of the 16 lanes (rows past the end repeat the last: they are read, never stored).
                var lane = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7);
                var idxLo = Vector256.Min(lane, Vector256.Create(m - 1)) * rowWords;
                var idxHi = Vector256.Min(lane + Vector256.Create(8), Vector256.Create(m - 1)) * rowWords;
                int* row0 = (int*)(kBase + at + r * kv.RowBytes);
                for (int h = 0; h < group; h += 4)
                {
                    // Four heads at a time; past the group's end the last head is recomputed (same values, same stores).
                    int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                    var s0 = Vector512.Create(bias[ha]); var s1 = Vector512.Create(bias[hb]);
                    var s2 = Vector512.Create(bias[hc]); var s3 = Vector512.Create(bias[hdd]);
                    float* qa = qs + ha * hd, qb = qs + hb * hd, qc = qs + hc * hd, qd = qs + hdd * hd;
                    for (int w = 0; w < words; w++)
                    {
                        var word = Vector512.Create(Avx2.GatherVector256(row0 + w, idxLo, 4), Avx2.GatherVector256(row0 + w, idxHi, 4)).AsUInt32();
                        int ch = w * perWord;
                        for (int k = 0; k < perWord; k++, ch++)
                        {
                            var code = Vector512.ConvertToSingle((Vector512.ShiftRightLogical(word, k * bits) & mask).AsInt32());
                            s0 = Vector512.FusedMultiplyAdd(Vector512.Create(qa[ch]), code, s0);
                            s1 = Vector512.FusedMultiplyAdd(Vector512.Create(qb[ch]), code, s1);
                            s2 = Vector512.FusedMultiplyAdd(Vector512.Create(qc[ch]), code, s2);
                            s3 = Vector512.FusedMultiplyAdd(Vector512.Create(qd[ch]), code, s3);
                        }
                    }
                    StoreLanes(s0, sp + ha * TileSize + r, m, tail); StoreLanes(s1, sp + hb * TileSize + r, m, tail);
                    StoreLanes(s2, sp + hc * TileSize + r, m, tail); StoreLanes(s3, sp + hdd * TileSize + r, m, tail);
                }
            }
        }
    }

    /// <summary><see cref="KeyScoresOnCodes"/> with eight lanes (AVX2): eight rows at a time, one gather per code word.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static unsafe void KeyScoresOnCodes256(in KvLayer kv, int at, int rows, int hd, int group, ReadOnlySpan<float> qScaled, Span<float> scores)
    {
        int bits = kv.Bits, perWord = 32 / bits, words = hd / perWord, rowWords = kv.RowBytes / 4;
        var mask = Vector256.Create((1u << bits) - 1);
        Span<float> tail = stackalloc float[8];
        fixed (byte* kBase = kv.K)
        fixed (float* qs = qScaled)
        fixed (float* sp = scores)
        {
            float* bias = qs + group * hd;
            for (int r = 0; r < rows; r += 8)
            {
                int m = Math.Min(8, rows - r);
                var idx = Vector256.Min(Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7), Vector256.Create(m - 1)) * rowWords; // rows past the end repeat the last
                int* row0 = (int*)(kBase + at + r * kv.RowBytes);
                for (int h = 0; h < group; h += 4)
                {
                    int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                    var s0 = Vector256.Create(bias[ha]); var s1 = Vector256.Create(bias[hb]);
                    var s2 = Vector256.Create(bias[hc]); var s3 = Vector256.Create(bias[hdd]);
                    float* qa = qs + ha * hd, qb = qs + hb * hd, qc = qs + hc * hd, qd = qs + hdd * hd;
                    for (int w = 0; w < words; w++)
                    {
                        var word = Avx2.GatherVector256(row0 + w, idx, 4).AsUInt32();
                        int ch = w * perWord;
                        for (int k = 0; k < perWord; k++, ch++)
                        {
                            var code = Vector256.ConvertToSingle((Vector256.ShiftRightLogical(word, k * bits) & mask).AsInt32());
                            s0 = Vector256.FusedMultiplyAdd(Vector256.Create(qa[ch]), code, s0);
                            s1 = Vector256.FusedMultiplyAdd(Vector256.Create(qb[ch]), code, s1);
                            s2 = Vector256.FusedMultiplyAdd(Vector256.Create(qc[ch]), code, s2);
                            s3 = Vector256.FusedMultiplyAdd(Vector256.Create(qd[ch]), code, s3);
                        }
                    }
                    StoreLanes(s0, sp + ha * TileSize + r, m, tail); StoreLanes(s1, sp + hb * TileSize + r, m, tail);
                    StoreLanes(s2, sp + hc * TileSize + r, m, tail); StoreLanes(s3, sp + hdd * TileSize + r, m, tail);
                }
            }
        }
    }

    /// <summary><see cref="KeyScoresOnCodes"/> with four lanes (ARM64, x86 without AVX2): four rows at a time, their
    /// code words read one by one into the lanes (no gather), the multiply-add by <typeparamref name="TMac"/> (fused: the
    /// bits of the wider kernels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static unsafe void KeyScoresOnCodesPortable<TMac>(in KvLayer kv, int at, int rows, int hd, int group, ReadOnlySpan<float> qScaled, Span<float> scores)
        where TMac : IMulAdd
    {
        int bits = kv.Bits, perWord = 32 / bits, words = hd / perWord, rowWords = kv.RowBytes / 4;
        var mask = Vector128.Create((1u << bits) - 1);
        Span<float> tail = stackalloc float[4];
        fixed (byte* kBase = kv.K)
        fixed (float* qs = qScaled)
        fixed (float* sp = scores)
        {
            float* bias = qs + group * hd;
            for (int r = 0; r < rows; r += 4)
            {
                int m = Math.Min(4, rows - r);
                int* w0 = (int*)(kBase + at + r * kv.RowBytes);                         // rows past the end repeat the last
                int* w1 = w0 + Math.Min(1, m - 1) * rowWords, w2 = w0 + Math.Min(2, m - 1) * rowWords, w3 = w0 + (m - 1) * rowWords;
                for (int h = 0; h < group; h += 4)
                {
                    int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                    var s0 = Vector128.Create(bias[ha]); var s1 = Vector128.Create(bias[hb]);
                    var s2 = Vector128.Create(bias[hc]); var s3 = Vector128.Create(bias[hdd]);
                    float* qa = qs + ha * hd, qb = qs + hb * hd, qc = qs + hc * hd, qd = qs + hdd * hd;
                    for (int w = 0; w < words; w++)
                    {
                        var word = Vector128.Create(w0[w], w1[w], w2[w], w3[w]).AsUInt32();
                        int ch = w * perWord;
                        for (int k = 0; k < perWord; k++, ch++)
                        {
                            var code = Vector128.ConvertToSingle((Vector128.ShiftRightLogical(word, k * bits) & mask).AsInt32());
                            s0 = TMac.Apply(Vector128.Create(qa[ch]), code, s0);
                            s1 = TMac.Apply(Vector128.Create(qb[ch]), code, s1);
                            s2 = TMac.Apply(Vector128.Create(qc[ch]), code, s2);
                            s3 = TMac.Apply(Vector128.Create(qd[ch]), code, s3);
                        }
                    }
                    StoreLanes(s0, sp + ha * TileSize + r, m, tail); StoreLanes(s1, sp + hb * TileSize + r, m, tail);
                    StoreLanes(s2, sp + hc * TileSize + r, m, tail); StoreLanes(s3, sp + hdd * TileSize + r, m, tail);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void StoreLanes(Vector128<float> v, float* dst, int m, Span<float> tail)
    {
        if (m == 4) { v.Store(dst); return; }
        v.CopyTo(tail);
        for (int i = 0; i < m; i++) dst[i] = tail[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void StoreLanes(Vector256<float> v, float* dst, int m, Span<float> tail)
    {
        if (m == 8) { v.Store(dst); return; }
        v.CopyTo(tail);
        for (int i = 0; i < m; i++) dst[i] = tail[i];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void StoreLanes(Vector512<float> v, float* dst, int m, Span<float> tail)
    {
        if (m == 16) { v.Store(dst); return; }
        v.CopyTo(tail);
        for (int i = 0; i < m; i++) dst[i] = tail[i];
    }

    /// <summary>acc_h += Σ_j p[h, j] · v_(t0+j) over the tile: quantized values on their codes with weights p·s (the
    /// mins into <paramref name="minAcc"/>), window values from the F16 ring through <see cref="AccumulateValues"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void KiviTileValues(in KvLayer kv, ReadOnlySpan<int> table, ReadOnlySpan<int> blockPos, ushort[][] ring,
                               int t0, int n, int g, int hd, int group, int p, ReadOnlySpan<float> probs, Span<float> vTile,
                               Span<float> acc, Span<float> minAcc, Span<float> weights, bool portable = false)
    {
        int bs = kv.BlockSize, off = g * hd, vEnd = Kivi.QuantizedValueEnd(p, kv.Residual);
        var ringV = ring[2 * kv.Layer + 1];
        for (int j = 0; j < n;)
        {
            int slot = t0 + j, bi = slot / bs, r0 = slot % bs, run = Math.Min(bs - r0, n - j);
            int pos0 = blockPos[bi] + r0;
            int quant = Math.Clamp(vEnd - pos0, 0, run);
            if (quant > 0)
                ValuesOnCodes(kv, table[bi] * bs + r0, quant, off, hd, group, probs.Slice(j), acc, minAcc, weights, portable);
            for (int r = quant; r < run; r++)
                HalfToSingle(ringV.AsSpan((pos0 + r) % kv.RingLength * kv.KvDim + off, hd), vTile.Slice((j + r) * hd, hd));
            if (run > quant)
                AccumulateValues(probs.Slice(j + quant), vTile.Slice((j + quant) * hd), run - quant, group, hd, acc);
            j += run;
        }
    }

    /// <summary>
    /// For <paramref name="rows"/> consecutive cache cells from <paramref name="cell0"/> (this KV head's channels at
    /// <paramref name="off"/>): acc[h, c] += Σ_r (p[h, r] · s_r) · code[r, c] and minAcc[h, q] += Σ_r p[h, r] · m_r, per
    /// value group q of the head. Sixteen channels of a row are widened by <see cref="Kivi.Codes16(ref byte, int)"/> and serve four heads.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void ValuesOnCodes(in KvLayer kv, int cell0, int rows, int off, int hd, int group, ReadOnlySpan<float> probs,
                                     Span<float> acc, Span<float> minAcc, Span<float> weights, bool portable)
    {
        int bits = kv.Bits, vg = kv.ValueGroup, nq = hd / vg, groups = kv.KvDim / vg, rb = kv.RowBytes;
        var sv = weights.Slice(group * TileSize, rows); var mv = weights.Slice(group * TileSize + TileSize, rows);
        var vp = kv.VParams!;
        fixed (byte* vBase = kv.V)
        fixed (float* ap = acc)
        fixed (float* wp = weights)
            for (int q = 0; q < nq; q++)
            {
                int gq = (off + q * vg) / vg;
                for (int r = 0; r < rows; r++)
                {
                    int at = ((cell0 + r) * groups + gq) * 2;
                    sv[r] = Fp16.ToSingle(vp[at]); mv[r] = Fp16.ToSingle(vp[at + 1]);
                }
                for (int h = 0; h < group; h++)
                {
                    var ph = probs.Slice(h * TileSize, rows);
                    float mSum = 0;
                    for (int r = 0; r < rows; r++) { wp[h * TileSize + r] = ph[r] * sv[r]; mSum += ph[r] * mv[r]; }
                    minAcc[h * nq + q] += mSum;
                }
                if (portable || KiviPortable)
                {
                    if (MulAdd.Fused) ValuesOnCodesPortable<FusedMulAdd>(vBase + (long)cell0 * rb + off * bits / 8, rows, rb, bits, q * vg, vg, hd, group, ap, wp);
                    else ValuesOnCodesPortable<SplitMulAdd>(vBase + (long)cell0 * rb + off * bits / 8, rows, rb, bits, q * vg, vg, hd, group, ap, wp);
                    continue;
                }
                if (!Avx512F.IsSupported)
                {
                    // Eight channels at a time (AVX2): the same FMAs per lane as the 16-lane loop below.
                    for (int c = q * vg; c < (q + 1) * vg; c += 8)
                    {
                        byte* codes = vBase + (long)cell0 * rb + (off + c) * bits / 8;
                        for (int h = 0; h < group; h += 4)
                        {
                            int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                            float* aa = ap + ha * hd + c, ab = ap + hb * hd + c, ac = ap + hc * hd + c, ad = ap + hdd * hd + c;
                            var a0 = Vector256.Load(aa); var a1 = Vector256.Load(ab); var a2 = Vector256.Load(ac); var a3 = Vector256.Load(ad);
                            float* wa = wp + ha * TileSize, wb = wp + hb * TileSize, wc = wp + hc * TileSize, wd = wp + hdd * TileSize;
                            for (int r = 0; r < rows; r++)
                            {
                                var code = Kivi.Codes8(ref *(codes + r * rb), bits);
                                a0 = Vector256.FusedMultiplyAdd(Vector256.Create(wa[r]), code, a0);
                                a1 = Vector256.FusedMultiplyAdd(Vector256.Create(wb[r]), code, a1);
                                a2 = Vector256.FusedMultiplyAdd(Vector256.Create(wc[r]), code, a2);
                                a3 = Vector256.FusedMultiplyAdd(Vector256.Create(wd[r]), code, a3);
                            }
                            a0.Store(aa); a1.Store(ab); a2.Store(ac); a3.Store(ad);
                        }
                    }
                    continue;
                }
                for (int c = q * vg; c < (q + 1) * vg; c += 16)
                {
                    byte* codes = vBase + (long)cell0 * rb + (off + c) * bits / 8;
                    for (int h = 0; h < group; h += 4)
                    {
                        int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                        float* aa = ap + ha * hd + c, ab = ap + hb * hd + c, ac = ap + hc * hd + c, ad = ap + hdd * hd + c;
                        var a0 = Vector512.Load(aa); var a1 = Vector512.Load(ab); var a2 = Vector512.Load(ac); var a3 = Vector512.Load(ad);
                        float* wa = wp + ha * TileSize, wb = wp + hb * TileSize, wc = wp + hc * TileSize, wd = wp + hdd * TileSize;
                        for (int r = 0; r < rows; r++)
                        {
                            var code = Kivi.Codes16(ref *(codes + r * rb), bits);
                            a0 = Vector512.FusedMultiplyAdd(Vector512.Create(wa[r]), code, a0);
                            a1 = Vector512.FusedMultiplyAdd(Vector512.Create(wb[r]), code, a1);
                            a2 = Vector512.FusedMultiplyAdd(Vector512.Create(wc[r]), code, a2);
                            a3 = Vector512.FusedMultiplyAdd(Vector512.Create(wd[r]), code, a3);
                        }
                        a0.Store(aa); a1.Store(ab); a2.Store(ac); a3.Store(ad);
                    }
                }
            }
    }

    /// <summary><see cref="ValuesOnCodes"/>'s inner loops with four lanes (ARM64, x86 without AVX2): channels c0 …
    /// c0 + count of this head (codes of row r at <paramref name="head"/> + r·rb), four at a time widened by
    /// <see cref="Kivi.Codes4(ref byte, int)"/>, each serving four heads; acc[h, c] += w[h, r]·code[r, c], the
    /// multiply-add by <typeparamref name="TMac"/> (fused: the bits of the wider kernels).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static unsafe void ValuesOnCodesPortable<TMac>(byte* head, int rows, int rb, int bits, int c0, int count, int hd, int group, float* ap, float* wp)
        where TMac : IMulAdd
    {
        for (int c = c0; c < c0 + count; c += 4)
        {
            byte* codes = head + c * bits / 8;
            for (int h = 0; h < group; h += 4)
            {
                int ha = h, hb = Math.Min(h + 1, group - 1), hc = Math.Min(h + 2, group - 1), hdd = Math.Min(h + 3, group - 1);
                float* aa = ap + ha * hd + c, ab = ap + hb * hd + c, ac = ap + hc * hd + c, ad = ap + hdd * hd + c;
                var a0 = Vector128.Load(aa); var a1 = Vector128.Load(ab); var a2 = Vector128.Load(ac); var a3 = Vector128.Load(ad);
                float* wa = wp + ha * TileSize, wb = wp + hb * TileSize, wc = wp + hc * TileSize, wd = wp + hdd * TileSize;
                for (int r = 0; r < rows; r++)
                {
                    var code = Kivi.Codes4(ref *(codes + r * rb), bits);
                    a0 = TMac.Apply(Vector128.Create(wa[r]), code, a0);
                    a1 = TMac.Apply(Vector128.Create(wb[r]), code, a1);
                    a2 = TMac.Apply(Vector128.Create(wc[r]), code, a2);
                    a3 = TMac.Apply(Vector128.Create(wd[r]), code, a3);
                }
                a0.Store(aa); a1.Store(ab); a2.Store(ac); a3.Store(ad);
            }
        }
    }
}
