using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Cria.Tensors;

namespace Cria.Kernels;

// The portable float tier: F32/F16/BF16 weights × F32 activations on 128-bit vectors through .NET's cross-platform
// Vector128 API, for machines without AVX2 — ARM64 (NEON) and x86 before Haswell, which otherwise run one scalar
// multiply-add per weight (on x86 without FMA, a software one). Every kernel here computes each (weight row,
// activation row) pair in one order, the portable float order (Dot128): one 4-lane accumulator, acc = w[i..i+4] ·
// x[i..i+4] + acc for i = 0, 4, 8, … while i + 4 ≤ n, then Vector128.Sum, then one scalar step per value left, each
// step through the machine's IMulAdd. Decode runs four weight rows against the activation row (four chains hide the
// add latency), prefill tiles of three weight rows × three activation rows (nine accumulators, thirteen registers of
// SSE's sixteen), so a row's bits do not depend on which path or batch computed it.
public static unsafe partial class RowKernels
{
    /// <summary>Whether the portable float kernels run for this weight type (see <see cref="MulAdd.Portable"/>).</summary>
    internal static bool PortableFloat(GgmlType type) => MulAdd.Portable && type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;

    /// <summary>How the portable kernels read a weight row: four values widened to floats (exactly), or one; and whether
    /// the four are the values · 2^-112 (then the vector steps read x · 2^112, at x + n).</summary>
    interface IRow128
    {
        static abstract Vector128<float> Load4(void* w, int i);
        static abstract float At(void* w, int i);
        static abstract bool ScaledDown { get; }
    }

    readonly struct F32Row128 : IRow128
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Load4(void* w, int i) => Vector128.Load((float*)w + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => ((float*)w)[i];
        public static bool ScaledDown => false;
    }

    /// <summary>F16: four halves sign-extended to int32, then <see cref="HalfToSingle(Vector128{int})"/> (infinities and NaNs kept).</summary>
    readonly struct F16Row128 : IRow128
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Load4(void* w, int i) => LoadHalves4((ushort*)w + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Fp16.ToSingle(((ushort*)w)[i]);
        public static bool ScaledDown => false;
    }

    /// <summary>A finite F16 row (<see cref="Models.WeightMatrix.NonFiniteF16"/> false) read raw: four halves · 2^-112
    /// exactly (sign-extend, shift, mask: three operations where <see cref="F16Row128"/> takes eight), against x · 2^112,
    /// so every product is w·x exactly and each pair has the bits of <see cref="F16Row128"/>'s.</summary>
    readonly struct F16ScaledRow128 : IRow128
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Load4(void* w, int i)
            => ((Vector128.WidenLower(Vector128.CreateScalar(*(long*)((ushort*)w + i)).AsInt16()) << 13) & Vector128.Create(unchecked((int)0x8FFFE000))).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Fp16.ToSingle(((ushort*)w)[i]);
        public static bool ScaledDown => true;
    }

    /// <summary>BF16: four values zero-extended to 32 bits and shifted into a float's high half.</summary>
    readonly struct Bf16Row128 : IRow128
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector128<float> Load4(void* w, int i) => (Vector128.WidenLower(Vector128.CreateScalar(*(ulong*)((ushort*)w + i)).AsUInt16()) << 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float At(void* w, int i) => Bf16.ToSingle(((ushort*)w)[i]);
        public static bool ScaledDown => false;
    }

    /// <summary><see cref="HalfToSingle(Vector512{int})"/> in 128 bits (the portable F16 rows).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> HalfToSingle(Vector128<int> h)
    {
        var f = ((h << 13) & Vector128.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector128.Create(Pow2To112);
        var infNan = Vector128.GreaterThanOrEqual(Vector128.Abs(f), Vector128.Create(65536f));
        return f | (infNan & Vector128.Create(0x7F800000u).AsSingle());
    }

    /// <summary>4 halves from memory → 4 floats (<see cref="HalfToSingle(Vector128{int})"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<float> LoadHalves4(ushort* p) => HalfToSingle(Vector128.WidenLower(Vector128.CreateScalar(*(long*)p).AsInt16()));

    /// <summary>Σ w·x in the portable float order (see the file's head): the reference every portable kernel equals bit
    /// for bit.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Dot128<TRow, TMac>(void* w, float* x, int n) where TRow : IRow128 where TMac : IMulAdd
    {
        float* xv = TRow.ScaledDown ? x + n : x;
        var acc = Vector128<float>.Zero;
        int i = 0;
        for (; i + 4 <= n; i += 4) acc = TMac.Apply(TRow.Load4(w, i), Vector128.Load(xv + i), acc);
        return Tail128<TRow, TMac>(w, x, i, n, Vector128.Sum(acc));
    }

    /// <summary>The scalar steps [i, n) of a pair, continuing sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Tail128<TRow, TMac>(void* w, float* x, int i, int n, float sum) where TRow : IRow128 where TMac : IMulAdd
    {
        for (; i < n; i++) sum = TMac.Apply(TRow.At(w, i), x[i], sum);
        return sum;
    }

    /// <summary>Decode: rows [r0, r1) against one activation row (<see cref="ActivationRowBytes"/>'s layout: F32, or for
    /// F16 weights the F16-rounded x then x · 2^112), four rows at a time; a finite F16 matrix's rows read scaled down
    /// (<see cref="F16ScaledRow128"/>). The machine's multiply-add is chosen here, once.</summary>
    static void RunRowsPortable(GgmlType type, byte* w, int rowBytes, int r0, int r1, float* x, int n, float* y, bool finiteF16)
    {
        if (MulAdd.Fused) RunRowsPortable<FusedMulAdd>(type, w, rowBytes, r0, r1, x, n, y, finiteF16);
        else RunRowsPortable<SplitMulAdd>(type, w, rowBytes, r0, r1, x, n, y, finiteF16);
    }

    internal static void RunRowsPortable<TMac>(GgmlType type, byte* w, int rowBytes, int r0, int r1, float* x, int n, float* y, bool finiteF16 = false) where TMac : IMulAdd
    {
        for (int r = r0; r < r1; r += 4)
        {
            byte* wr = w + (long)r * rowBytes;
            int rows = Math.Min(4, r1 - r);
            if (type == GgmlType.F32) Dot128Rows4<F32Row128, TMac>(wr, rowBytes, rows, x, n, y + r);
            else if (type == GgmlType.F16 && finiteF16) Dot128Rows4<F16ScaledRow128, TMac>(wr, rowBytes, rows, x, n, y + r);
            else if (type == GgmlType.F16) Dot128Rows4<F16Row128, TMac>(wr, rowBytes, rows, x, n, y + r);
            else Dot128Rows4<Bf16Row128, TMac>(wr, rowBytes, rows, x, n, y + r);
        }
    }

    /// <summary>Up to four weight rows (rowBytes apart) against one activation row: y[0..rows), each with the bits of
    /// <see cref="Dot128{TRow, TMac}"/>. A missing row repeats the last (computed, not stored).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot128Rows4<TRow, TMac>(byte* w, long rowBytes, int rows, float* x, int n, float* y) where TRow : IRow128 where TMac : IMulAdd
    {
        byte* w0 = w, w1 = rows > 1 ? w0 + rowBytes : w0, w2 = rows > 2 ? w1 + rowBytes : w1, w3 = rows > 3 ? w2 + rowBytes : w2;
        float* xs = TRow.ScaledDown ? x + n : x; // what the vector steps read
        Vector128<float> a0 = default, a1 = default, a2 = default, a3 = default; // [weight row]
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            var xv = Vector128.Load(xs + i);
            a0 = TMac.Apply(TRow.Load4(w0, i), xv, a0);
            a1 = TMac.Apply(TRow.Load4(w1, i), xv, a1);
            a2 = TMac.Apply(TRow.Load4(w2, i), xv, a2);
            a3 = TMac.Apply(TRow.Load4(w3, i), xv, a3);
        }
        y[0] = Tail128<TRow, TMac>(w0, x, i, n, Vector128.Sum(a0));
        if (rows > 1) y[1] = Tail128<TRow, TMac>(w1, x, i, n, Vector128.Sum(a1));
        if (rows > 2) y[2] = Tail128<TRow, TMac>(w2, x, i, n, Vector128.Sum(a2));
        if (rows > 3) y[3] = Tail128<TRow, TMac>(w3, x, i, n, Vector128.Sum(a3));
    }

    /// <summary>One weight row against B activation rows (<see cref="Run"/>), pair by pair.</summary>
    static void FloatRowPortable(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (MulAdd.Fused) FloatRowPortable<FusedMulAdd>(type, w, x, xStride, B, n, y, yStride);
        else FloatRowPortable<SplitMulAdd>(type, w, x, xStride, B, n, y, yStride);
    }

    static void FloatRowPortable<TMac>(GgmlType type, byte* w, byte* x, int xStride, int B, int n, float* y, int yStride) where TMac : IMulAdd
    {
        for (int b = 0; b < B; b++)
        {
            float* xb = (float*)(x + (long)b * xStride);
            y[(long)b * yStride] = type switch
            {
                GgmlType.F32 => Dot128<F32Row128, TMac>(w, xb, n),
                GgmlType.F16 => Dot128<F16Row128, TMac>(w, xb, n),
                _ => Dot128<Bf16Row128, TMac>(w, xb, n),
            };
        }
    }

    /// <summary>Prefill: rows [r0, r1) against B activation rows. F16/BF16 rows are widened to F32 once into a per-thread
    /// buffer (exact, so the pairs' bits are unchanged); then tiles of <see cref="FloatTile256"/> activation rows meet
    /// the range three weight rows × three activation rows at a time (<see cref="Dot128Tile3x3{TMac}"/>).</summary>
    static void FloatBlockPortable(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride)
    {
        if (MulAdd.Fused) FloatBlockPortable<FusedMulAdd>(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride);
        else FloatBlockPortable<SplitMulAdd>(type, w, rowBytes, r0, r1, x, xStride, B, n, y, yStride);
    }

    internal static void FloatBlockPortable<TMac>(GgmlType type, byte* w, int rowBytes, int r0, int r1, byte* x, int xStride, int B, int n, float* y, int yStride) where TMac : IMulAdd
    {
        int rows = r1 - r0;
        float* wf = FloatRows(type, w, rowBytes, r0, rows, n, out int wStride); // [rows, wStride]
        int xs = xStride / 4;
        for (int b0 = 0; b0 < B; b0 += FloatTile256)
        {
            int tb = Math.Min(FloatTile256, B - b0);
            for (int r = 0; r < rows; r += 3)
                for (int b = b0; b < b0 + tb; b += 3)
                    Dot128Tile3x3<TMac>(wf + (long)r * wStride, wStride, Math.Min(3, rows - r), (float*)(x + (long)b * xStride), xs,
                        Math.Min(3, b0 + tb - b), n, y + (long)b * yStride + r0 + r, yStride);
        }
    }

    /// <summary>Three F32 weight rows (ws floats apart) × three activation rows (xs apart), nine accumulators: per step
    /// three weight and three activation vectors feed nine multiply-adds. A missing row or activation repeats the last
    /// (computed, not stored). y[b·yStride + r] for r &lt; rows, b &lt; acts, each with the bits of
    /// <see cref="Dot128{TRow, TMac}"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Dot128Tile3x3<TMac>(float* w, long ws, int rows, float* x, long xs, int acts, int n, float* y, long yStride) where TMac : IMulAdd
    {
        float* w0 = w, w1 = rows > 1 ? w0 + ws : w0, w2 = rows > 2 ? w1 + ws : w1;
        float* x0 = x, x1 = acts > 1 ? x0 + xs : x0, x2 = acts > 2 ? x1 + xs : x1;
        Vector128<float> c00 = default, c01 = default, c02 = default; // [weight row, activation row]
        Vector128<float> c10 = default, c11 = default, c12 = default;
        Vector128<float> c20 = default, c21 = default, c22 = default;
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            var a0 = Vector128.Load(x0 + i); var a1 = Vector128.Load(x1 + i); var a2 = Vector128.Load(x2 + i);
            var v = Vector128.Load(w0 + i);
            c00 = TMac.Apply(v, a0, c00); c01 = TMac.Apply(v, a1, c01); c02 = TMac.Apply(v, a2, c02);
            v = Vector128.Load(w1 + i);
            c10 = TMac.Apply(v, a0, c10); c11 = TMac.Apply(v, a1, c11); c12 = TMac.Apply(v, a2, c12);
            v = Vector128.Load(w2 + i);
            c20 = TMac.Apply(v, a0, c20); c21 = TMac.Apply(v, a1, c21); c22 = TMac.Apply(v, a2, c22);
        }
        y[0] = Tail128<F32Row128, TMac>(w0, x0, i, n, Vector128.Sum(c00));
        if (acts > 1) y[yStride] = Tail128<F32Row128, TMac>(w0, x1, i, n, Vector128.Sum(c01));
        if (acts > 2) y[2 * yStride] = Tail128<F32Row128, TMac>(w0, x2, i, n, Vector128.Sum(c02));
        if (rows > 1)
        {
            y[1] = Tail128<F32Row128, TMac>(w1, x0, i, n, Vector128.Sum(c10));
            if (acts > 1) y[yStride + 1] = Tail128<F32Row128, TMac>(w1, x1, i, n, Vector128.Sum(c11));
            if (acts > 2) y[2 * yStride + 1] = Tail128<F32Row128, TMac>(w1, x2, i, n, Vector128.Sum(c12));
        }
        if (rows > 2)
        {
            y[2] = Tail128<F32Row128, TMac>(w2, x0, i, n, Vector128.Sum(c20));
            if (acts > 1) y[yStride + 2] = Tail128<F32Row128, TMac>(w2, x1, i, n, Vector128.Sum(c21));
            if (acts > 2) y[2 * yStride + 2] = Tail128<F32Row128, TMac>(w2, x2, i, n, Vector128.Sum(c22));
        }
    }

    /// <summary>Σ w·x over one weight row in the portable float order with the given multiply-add (tests: the reference
    /// the batched kernels must equal).</summary>
    internal static float DotPortableFloat<TMac>(GgmlType type, byte* w, float* x, int n) where TMac : IMulAdd => type switch
    {
        GgmlType.F32 => Dot128<F32Row128, TMac>(w, x, n),
        GgmlType.F16 => Dot128<F16Row128, TMac>(w, x, n),
        _ => Dot128<Bf16Row128, TMac>(w, x, n),
    };
}
