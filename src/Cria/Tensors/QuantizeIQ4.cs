using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cria.Tensors;

// IQ4_NL and IQ4_XS: 4-bit indices into the non-uniform levels Dequantize.IQ4Levels (kvalues_iq4nl). One routine
// serves both, as ggml-quants.c's quantize_row_iq4_nl_impl does: IQ4_NL is one block of 32 with an F16 scale; IQ4_XS is
// a super-block of 256 whose eight sub-blocks of 32 each get a 6-bit scale under one F16 super-scale.
public static partial class Quantize
{
    /// <summary>
    /// One IQ4_NL block (<paramref name="superBlock"/> = 32) or IQ4_XS super-block (256) of <paramref name="x"/> into
    /// <paramref name="y"/>. Each 32-value block searches its scale: the scale that puts the largest |x| on the outer
    /// level, then 15 more (ggml's ntry = 7 either side) that put it on the levels in between, each refit by weighted
    /// least squares, keeping the one with the least weighted error. Weights: x² without an importance
    /// (<paramref name="qw"/> empty, ggml's reference path), else importance·√(σ² + x²) with σ² = 2·mean(x²) over the
    /// super-block (<see cref="ImpWeighting.Importance"/>: the importance alone). IQ4_XS then rounds the eight scales
    /// to 6 bits under d = −max/32 and re-picks every level for its rounded scale.
    /// </summary>
    private static void IQ4(ReadOnlySpan<float> x, Span<byte> y, ReadOnlySpan<float> qw, ImpWeighting mode, int superBlock)
    {
        const int blockSize = 32;
        int nb = superBlock / blockSize;
        Span<byte> L = stackalloc byte[superBlock];      // [superBlock] level index per value
        Span<float> scales = stackalloc float[nb];       // [nb] per-block scale before rounding
        Span<float> weight = stackalloc float[blockSize];

        float sigma2 = 0;
        for (int j = 0; j < superBlock; j++) sigma2 += x[j] * x[j];
        sigma2 *= 2f / superBlock;

        y.Clear();
        float maxScale = 0, amaxScale = 0;
        for (int ib = 0; ib < nb; ib++)
        {
            var xb = x.Slice(ib * blockSize, blockSize);
            if (!qw.IsEmpty)
            {
                var qb = qw.Slice(ib * blockSize, blockSize);
                if (mode == ImpWeighting.Ggml) for (int j = 0; j < blockSize; j++) weight[j] = qb[j] * MathF.Sqrt(sigma2 + xb[j] * xb[j]);
                else qb.CopyTo(weight);
            }
            else for (int j = 0; j < blockSize; j++) weight[j] = xb[j] * xb[j];
            float amax = 0, max = 0;
            for (int j = 0; j < blockSize; j++)
            {
                float ax = MathF.Abs(xb[j]);
                if (ax > amax) { amax = ax; max = xb[j]; }
            }
            if (amax < GroupMaxEps)
            {
                scales[ib] = 0;
                continue;
            }
            float d = Lanes switch
            {
                SearchLanes.Lanes256 => IQ4BlockScaleVector<Lanes256>(xb, weight, max),
                SearchLanes.Lanes128 => IQ4BlockScaleVector<Lanes128>(xb, weight, max),
                _ => IQ4BlockScaleScalar(xb, weight, max),
            };
            scales[ib] = d;
            float absD = MathF.Abs(d);
            if (absD > amaxScale) { amaxScale = absD; maxScale = d; }
        }

        int qsAt;
        if (nb > 1)
        {
            // IQ4_XS: d f16 | scales_h u16 | scales_l[4] | qs[128]
            float d = -maxScale / 32;
            PutHalf(y, 0, d);
            float id = d != 0 ? 1 / d : 0f;
            int scalesH = 0;
            for (int ib = 0; ib < nb; ib++)
            {
                int l = Math.Clamp(NearestInt(id * scales[ib]), -32, 31);
                float dl = d * l;
                float idl = dl != 0 ? 1 / dl : 0f;
                var xb = x.Slice(ib * blockSize, blockSize);
                IQ4Indices(xb, idl, L.Slice(ib * blockSize, blockSize));
                l += 32;
                y[4 + ib / 2] |= (byte)((l & 0xF) << 4 * (ib % 2));
                scalesH |= (l >> 4) << 2 * ib;
            }
            BinaryPrimitives.WriteUInt16LittleEndian(y.Slice(2), (ushort)scalesH);
            qsAt = 8;
        }
        else
        {
            // IQ4_NL: d f16 | qs[16]
            PutHalf(y, 0, scales[0]);
            float id = scales[0] != 0 ? 1 / scales[0] : 0;
            IQ4Indices(x, id, L);
            qsAt = 2;
        }

        for (int i = 0; i < superBlock / 32; i++)
            for (int j = 0; j < 16; j++)
                y[qsAt + 16 * i + j] = (byte)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }

    /// <summary>
    /// The scale of one 32-value block: the least-squares scale for the levels picked at inverse scale 127/max (d =
    /// max/127 puts the largest |x| on the outer level −127), then for each of 15 inverse scales (−127 + t)/max,
    /// t = −7…7, the least-squares scale of its levels if its weighted error is lower. Scalar reference, in ggml's order.
    /// </summary>
    internal static float IQ4BlockScaleScalar(ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, float max)
    {
        const int ntry = 7;
        ReadOnlySpan<sbyte> values = Dequantize.IQ4Levels;
        float d = -max / values[0];
        float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < xb.Length; j++)
        {
            float q = values[BestIndexInt8(values, id * xb[j])];
            float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0f; // all weights 0 (columns never activated): scale 0, as ggml
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; itry++)
        {
            id = (itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < xb.Length; j++)
            {
                float q = values[BestIndexInt8(values, id * xb[j])];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
            {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        return d;
    }

    /// <summary>
    /// <see cref="IQ4BlockScaleScalar"/> with the 16 trials in two sets of eight lanes (<see cref="ILanes8{T}"/>): lane 0
    /// the first inverse scale, lane 1 + t the t-th of the 15. Each lane sums over the values in ggml's order (multiply,
    /// then add: no FMA), so every trial's sums are the scalar ones bit for bit; the trials are then compared in ggml's
    /// order. A level is found without a search: the outer level plus each step between neighbouring levels whose
    /// midpoint lies at or below the value (<see cref="IQ4Level{T}"/>), which is best_index_int8's choice for every
    /// finite value.
    /// </summary>
    [SkipLocalsInit]
    internal static float IQ4BlockScaleVector<T>(ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, float max) where T : struct, ILanes8<T>
    {
        ReadOnlySpan<sbyte> values = Dequantize.IQ4Levels;
        Span<float> lanes = stackalloc float[16 * 3];   // inverse scales, then Σ w·q·x, then Σ w·q², per trial
        ref float ln = ref MemoryMarshal.GetReference(lanes);
        lanes[0] = 1 / (-max / values[0]);
        for (int t = 1; t < 16; t++) lanes[t] = (t - 8 + values[0]) / max;
        var idLo = T.Load(ref ln, 0);
        var idHi = T.Load(ref ln, 8);
        T sqxLo = default, sqxHi = default, sq2Lo = default, sq2Hi = default;
        for (int j = 0; j < xb.Length; j++)
        {
            var x = T.Create(xb[j]);
            var w = T.Create(weight[j]);
            var qLo = IQ4Level(idLo * x);
            var qHi = IQ4Level(idHi * x);
            var wqLo = w * qLo;
            var wqHi = w * qHi;
            sqxLo += wqLo * x;
            sqxHi += wqHi * x;
            sq2Lo += wqLo * qLo;
            sq2Hi += wqHi * qHi;
        }
        sqxLo.Store(ref ln, 16); sqxHi.Store(ref ln, 24);
        sq2Lo.Store(ref ln, 32); sq2Hi.Store(ref ln, 40);
        float sumqx = lanes[16], sumq2 = lanes[32];
        float d = sumq2 > 0 ? sumqx / sumq2 : 0f;
        float best = d * sumqx;
        for (int t = 1; t < 16; t++)
        {
            sumqx = lanes[16 + t];
            sumq2 = lanes[32 + t];
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2)
            {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        return d;
    }

    /// <summary>The IQ4 level nearest each lane of <paramref name="al"/> (ties to the upper level): −127 plus the step to
    /// each next level whose midpoint with the one below is ≤ the value.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static T IQ4Level<T>(T al) where T : struct, ILanes8<T>
    {
        ReadOnlySpan<sbyte> v = Dequantize.IQ4Levels;
        var q = T.Create(v[0]);
        for (int k = 0; k < 15; k++)
            q += T.IfGreaterOrEqual(al, T.Create((v[k] + v[k + 1]) * 0.5f), T.Create(v[k + 1] - v[k]));
        return q;
    }

    /// <summary>best_index_int8 of id·x for every value of <paramref name="x"/> into <paramref name="L"/>; eight at a time
    /// by counting the midpoints at or below each value (<see cref="IQ4Level{T}"/>'s steps).</summary>
    internal static void IQ4Indices(ReadOnlySpan<float> x, float id, Span<byte> L)
    {
        int j = 0;
        if (float.IsFinite(id)) // best_index_int8 of NaN is the top level; the count's is 0
        {
            if (Lanes == SearchLanes.Lanes256) j = IQ4Indices<Lanes256>(x, id, L);
            else if (Lanes == SearchLanes.Lanes128) j = IQ4Indices<Lanes128>(x, id, L);
        }
        for (; j < x.Length; j++) L[j] = (byte)BestIndexInt8(Dequantize.IQ4Levels, id * x[j]);
    }

    /// <summary>The whole eights of <see cref="IQ4Indices(ReadOnlySpan{float}, float, Span{byte})"/>; returns how many
    /// values it did.</summary>
    [SkipLocalsInit]
    static int IQ4Indices<T>(ReadOnlySpan<float> x, float id, Span<byte> L) where T : struct, ILanes8<T>
    {
        ReadOnlySpan<sbyte> v = Dequantize.IQ4Levels;
        Span<float> count = stackalloc float[8];
        ref float xr = ref MemoryMarshal.GetReference(x);
        int j = 0;
        for (; j + 8 <= x.Length; j += 8)
        {
            var al = T.Create(id) * T.Load(ref xr, (nuint)j);
            var c = default(T);
            for (int k = 0; k < 15; k++) c += T.IfGreaterOrEqual(al, T.Create((v[k] + v[k + 1]) * 0.5f), T.Create(1f));
            c.Store(ref MemoryMarshal.GetReference(count), 0);
            for (int e = 0; e < 8; e++) L[j + e] = (byte)count[e];
        }
        return j;
    }

    /// <summary>ggml's best_index_int8: the index of the level nearest <paramref name="x"/> in the ascending
    /// <paramref name="values"/> (binary search; a tie goes to the upper level).</summary>
    internal static int BestIndexInt8(ReadOnlySpan<sbyte> values, float x)
    {
        int n = values.Length;
        if (x <= values[0]) return 0;
        if (x >= values[n - 1]) return n - 1;
        int ml = 0, mu = n - 1;
        while (mu - ml > 1)
        {
            int mav = (ml + mu) / 2;
            if (x < values[mav]) mu = mav; else ml = mav;
        }
        return x - values[mu - 1] < values[mu] - x ? mu - 1 : mu;
    }
}
