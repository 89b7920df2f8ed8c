using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cria.Tensors;

/// <summary>
/// The scale searches of <c>make_qkx2_quants</c> and <c>make_qx_quants</c> with 8 candidate scales in flight at once
/// (one per lane of <see cref="ILanes8{T}"/>: a Vector256, or two Vector128 without 256-bit vectors). Each lane does exactly the scalar code's float operations in the scalar code's order
/// (multiply and add separately, no fused multiply-add, the same nearest_int trick), so every lane's sums are bit for
/// bit the scalar ones; the choice between candidates stays sequential, in the scalar code's step order. The bytes
/// are therefore ggml's (checked against the scalar versions and, through them, llama.cpp's quantizer).
/// </summary>
public static partial class Quantize
{
    /// <summary>The lanes the quantizers' searches run in (<see cref="MakeQkx2Quants"/>, <see cref="MakeQxQuants"/>, IQ4's
    /// scale trials, the lattice neighbour searches): 256-bit where the machine has them, else 128-bit pairs, else scalar.</summary>
    internal static SearchLanes Lanes = Vector256.IsHardwareAccelerated ? SearchLanes.Lanes256
        : Vector128.IsHardwareAccelerated ? SearchLanes.Lanes128 : SearchLanes.Scalar;

    /// <summary>make_qkx2_quants' search over nstep+1 scales, 8 at a time (make_qkx3_quants', the imatrix path's, is the
    /// same search). A step that wins changes <c>min</c>, which the following steps read, so the lanes after a winning
    /// lane are recomputed from the next step on.</summary>
    [SkipLocalsInit]
    private static float MakeQkx2QuantsVector<T>(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L,
        float min, float max, float sumW, float sumX, float scale, float bestError, out float theMin, float rmin, float rdelta, int nstep, bool useMad) where T : struct, ILanes8<T>
    {
        Span<float> levels = stackalloc float[8 * n];       // [n][8] the levels of the 8 steps in flight
        Span<float> lanes = stackalloc float[8 * 5];        // sumL, sumL2, sumXL, error, iscale per lane
        Span<float> sc = stackalloc float[8], mn = stackalloc float[8];
        Span<bool> ok = stackalloc bool[8];
        ref float lv = ref MemoryMarshal.GetReference(levels);
        ref float ln = ref MemoryMarshal.GetReference(lanes);
        int istep = 0;
        while (istep <= nstep)
        {
            for (int k = 0; k < 8; k++) lanes[32 + k] = (rmin + rdelta * (istep + k) + nmax) / (max - min);
            var iscale = T.Load(ref ln, 32);
            T sumL = default, sumL2 = default, sumXL = default;
            for (int i = 0; i < n; i++)
            {
                var lf = T.NearestIntClamped(iscale * T.Create(x[i] - min), 0, nmax);
                lf.Store(ref lv, (nuint)(8 * i));
                var wl = T.Create(weights[i]) * lf;
                sumL += wl;
                sumL2 += wl * lf;
                sumXL += wl * T.Create(x[i]);
            }
            sumL.Store(ref ln, 0);
            sumL2.Store(ref ln, 8);
            sumXL.Store(ref ln, 16);
            for (int k = 0; k < 8; k++)
            {
                float sL = lanes[k], sL2 = lanes[8 + k], sXL = lanes[16 + k];
                float D = sumW * sL2 - sL * sL;
                ok[k] = istep + k <= nstep && D > 0;
                if (!ok[k]) { sc[k] = 0; mn[k] = 0; continue; }
                float thisScale = (sumW * sXL - sumX * sL) / D;
                float thisMin = (sL2 * sumX - sL * sXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sXL / sL2;
                }
                sc[k] = thisScale; mn[k] = thisMin;
            }
            var vs = T.Load(ref MemoryMarshal.GetReference(sc), 0);
            var vm = T.Load(ref MemoryMarshal.GetReference(mn), 0);
            T err = default;
            for (int i = 0; i < n; i++)
            {
                var diff = vs * T.Load(ref lv, (nuint)(8 * i)) + vm - T.Create(x[i]);
                diff = useMad ? T.Abs(diff) : diff * diff;
                err += T.Create(weights[i]) * diff;
            }
            err.Store(ref ln, 24);
            int next = istep + 8;
            for (int k = 0; k < 8; k++)
            {
                if (!ok[k] || !(lanes[24 + k] < bestError)) continue;
                for (int i = 0; i < n; i++) L[i] = (byte)levels[8 * i + k];
                bestError = lanes[24 + k];
                scale = sc[k];
                min = mn[k];
                next = istep + k + 1;
                break;
            }
            istep = next;
        }
        theMin = -min;
        return scale;
    }

    /// <summary>make_qx_quants' 18 trial scales (rmse_type 1..4 with or without weights), 8 at a time; the trials
    /// do not depend on each other, only the choice (in order) does.</summary>
    [SkipLocalsInit]
    private static float MakeQxSearchVector<T>(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L, int rmseType, ReadOnlySpan<float> qw,
        float max, float scale, float best) where T : struct, ILanes8<T>
    {
        Span<float> w = stackalloc float[n];
        for (int i = 0; i < n; i++) w[i] = Weight(x, qw, i, rmseType);
        Span<float> lanes = stackalloc float[3 * 8 * 3];    // per group of 8 trials: iscale, sumlx, suml2
        ref float ln = ref MemoryMarshal.GetReference(lanes);
        for (int g = 0; g < 3; g++)
        {
            for (int k = 0; k < 8; k++)
            {
                int itry = -9 + 8 * g + k;
                if (itry >= 0) itry++;                       // -9..-1, 1..9 (18 trials), then 2 spare lanes
                lanes[24 * g + k] = -(nmax + 0.1f * itry) / max;
            }
            var iscale = T.Load(ref ln, (nuint)(24 * g));
            T sumlx = default, suml2 = default;
            for (int i = 0; i < n; i++)
            {
                var l = T.NearestIntClamped(iscale * T.Create(x[i]), -nmax, nmax - 1);
                var wv = T.Create(w[i]);
                sumlx += wv * T.Create(x[i]) * l;
                suml2 += wv * l * l;
            }
            sumlx.Store(ref ln, (nuint)(24 * g + 8));
            suml2.Store(ref ln, (nuint)(24 * g + 16));
        }
        float bestIscale = 0;
        for (int t = 0; t < 18; t++)
        {
            int g = t / 8, k = t % 8;
            float sumlx = lanes[24 * g + 8 + k], suml2 = lanes[24 * g + 16 + k];
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                scale = sumlx / suml2;
                best = scale * sumlx;
                bestIscale = lanes[24 * g + k];
            }
        }
        if (bestIscale != 0)
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(bestIscale * x[i]);
                L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
            }
        return scale;
    }
}
