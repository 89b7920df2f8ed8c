using System.Buffers.Binary;

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
        const int blockSize = 32, ntry = 7;
        ReadOnlySpan<sbyte> values = Dequantize.IQ4Levels;
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
            var Lb = L.Slice(ib * blockSize, blockSize);
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
            float d = -max / values[0]; // ntry > 0
            float id = 1 / d;
            float sumqx = 0, sumq2 = 0;
            for (int j = 0; j < blockSize; j++)
            {
                float al = id * xb[j];
                int l = BestIndexInt8(values, al);
                Lb[j] = (byte)l;
                float q = values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            d = sumqx / sumq2;
            float best = d * sumqx;
            for (int itry = -ntry; itry <= ntry; itry++)
            {
                id = (itry + values[0]) / max;
                sumqx = sumq2 = 0;
                for (int j = 0; j < blockSize; j++)
                {
                    float al = id * xb[j];
                    int l = BestIndexInt8(values, al);
                    float q = values[l];
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
                for (int j = 0; j < blockSize; j++) L[ib * blockSize + j] = (byte)BestIndexInt8(values, idl * xb[j]);
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
            for (int j = 0; j < superBlock; j++) L[j] = (byte)BestIndexInt8(values, id * x[j]);
            qsAt = 2;
        }

        for (int i = 0; i < superBlock / 32; i++)
            for (int j = 0; j < 16; j++)
                y[qsAt + 16 * i + j] = (byte)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
    }

    /// <summary>ggml's best_index_int8: the index of the level nearest <paramref name="x"/> in the ascending
    /// <paramref name="values"/> (binary search; a tie goes to the upper level).</summary>
    private static int BestIndexInt8(ReadOnlySpan<sbyte> values, float x)
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
