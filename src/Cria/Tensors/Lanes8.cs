using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cria.Tensors;

/// <summary>
/// Eight float lanes, for the quantizers' searches that keep eight candidates in flight (scale trials, grid points):
/// one <see cref="Vector256{T}"/> where the machine has 256-bit vectors (<see cref="Lanes256"/>), two
/// <see cref="Vector128{T}"/> where it has only 128-bit ones (<see cref="Lanes128"/>: ARM64, x86 without AVX2). A search
/// written once over <c>T : ILanes8&lt;T&gt;</c> is compiled for each; the lanes do the same float operations either way
/// (plain multiply and add, never fused), so both give the scalar code's bits.
/// </summary>
internal interface ILanes8<T> where T : struct, ILanes8<T>
{
    static abstract T Create(float value);
    /// <summary>Eight consecutive floats from <paramref name="source"/> + <paramref name="offset"/>.</summary>
    static abstract T Load(ref float source, nuint offset);
    void Store(ref float destination, nuint offset);
    float this[int lane] { get; }

    static abstract T operator +(T a, T b);
    static abstract T operator -(T a, T b);
    static abstract T operator *(T a, T b);
    static abstract T Abs(T a);
    /// <summary>ggml's nearest_int of each lane (round half to even via the 1.5·2^23 trick, for |v| &lt; 2^22),
    /// clamped to [<paramref name="lo"/>, <paramref name="hi"/>], as a float.</summary>
    static abstract T NearestIntClamped(T v, int lo, int hi);
    /// <summary><paramref name="then"/> in the lanes where a ≥ b, else 0.</summary>
    static abstract T IfGreaterOrEqual(T a, T b, T then);
    /// <summary><paramref name="then"/> in the lanes where a == b, else <paramref name="otherwise"/>.</summary>
    static abstract T IfEqual(T a, T b, T then, T otherwise);
    static abstract bool LessThanAny(T a, T b);
}

/// <summary>Which lanes the searches run in: <see cref="Lanes256"/>, <see cref="Lanes128"/>, or the scalar references.</summary>
internal enum SearchLanes { Scalar, Lanes128, Lanes256 }

[StructLayout(LayoutKind.Sequential)]
internal readonly struct Lanes256(Vector256<float> v) : ILanes8<Lanes256>
{
    readonly Vector256<float> _v = v;

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 Create(float value) => new(Vector256.Create(value));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 Load(ref float source, nuint offset) => new(Vector256.LoadUnsafe(ref source, offset));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public void Store(ref float destination, nuint offset) => _v.StoreUnsafe(ref destination, offset);
    public float this[int lane] { [MethodImpl(MethodImplOptions.AggressiveInlining)] get => _v.GetElement(lane); }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 operator +(Lanes256 a, Lanes256 b) => new(a._v + b._v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 operator -(Lanes256 a, Lanes256 b) => new(a._v - b._v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 operator *(Lanes256 a, Lanes256 b) => new(a._v * b._v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes256 Abs(Lanes256 a) => new(Vector256.Abs(a._v));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 NearestIntClamped(Lanes256 v, int lo, int hi)
    {
        var i = (Vector256.Add(v._v, Vector256.Create(12582912f)).AsInt32() & Vector256.Create(0x007FFFFF)) - Vector256.Create(0x00400000);
        return new(Vector256.ConvertToSingle(Vector256.Min(Vector256.Create(hi), Vector256.Max(Vector256.Create(lo), i))));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 IfGreaterOrEqual(Lanes256 a, Lanes256 b, Lanes256 then) => new(Vector256.GreaterThanOrEqual(a._v, b._v) & then._v);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes256 IfEqual(Lanes256 a, Lanes256 b, Lanes256 then, Lanes256 otherwise) =>
        new(Vector256.ConditionalSelect(Vector256.Equals(a._v, b._v), then._v, otherwise._v));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static bool LessThanAny(Lanes256 a, Lanes256 b) => Vector256.LessThanAny(a._v, b._v);
}

/// <summary>Lanes 0–3 in <c>_lo</c>, 4–7 in <c>_hi</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal readonly struct Lanes128(Vector128<float> lo, Vector128<float> hi) : ILanes8<Lanes128>
{
    readonly Vector128<float> _lo = lo, _hi = hi;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Create(float value) { var v = Vector128.Create(value); return new(v, v); }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 Load(ref float source, nuint offset) => new(Vector128.LoadUnsafe(ref source, offset), Vector128.LoadUnsafe(ref source, offset + 4));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Store(ref float destination, nuint offset) { _lo.StoreUnsafe(ref destination, offset); _hi.StoreUnsafe(ref destination, offset + 4); }
    public float this[int lane] { [MethodImpl(MethodImplOptions.AggressiveInlining)] get => lane < 4 ? _lo.GetElement(lane) : _hi.GetElement(lane - 4); }

    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes128 operator +(Lanes128 a, Lanes128 b) => new(a._lo + b._lo, a._hi + b._hi);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes128 operator -(Lanes128 a, Lanes128 b) => new(a._lo - b._lo, a._hi - b._hi);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes128 operator *(Lanes128 a, Lanes128 b) => new(a._lo * b._lo, a._hi * b._hi);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Lanes128 Abs(Lanes128 a) => new(Vector128.Abs(a._lo), Vector128.Abs(a._hi));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 NearestIntClamped(Lanes128 v, int lo, int hi) => new(Nearest(v._lo, lo, hi), Nearest(v._hi, lo, hi));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> Nearest(Vector128<float> v, int lo, int hi)
    {
        var i = (Vector128.Add(v, Vector128.Create(12582912f)).AsInt32() & Vector128.Create(0x007FFFFF)) - Vector128.Create(0x00400000);
        return Vector128.ConvertToSingle(Vector128.Min(Vector128.Create(hi), Vector128.Max(Vector128.Create(lo), i)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 IfGreaterOrEqual(Lanes128 a, Lanes128 b, Lanes128 then) =>
        new(Vector128.GreaterThanOrEqual(a._lo, b._lo) & then._lo, Vector128.GreaterThanOrEqual(a._hi, b._hi) & then._hi);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Lanes128 IfEqual(Lanes128 a, Lanes128 b, Lanes128 then, Lanes128 otherwise) =>
        new(Vector128.ConditionalSelect(Vector128.Equals(a._lo, b._lo), then._lo, otherwise._lo),
            Vector128.ConditionalSelect(Vector128.Equals(a._hi, b._hi), then._hi, otherwise._hi));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool LessThanAny(Lanes128 a, Lanes128 b) => Vector128.LessThanAny(a._lo, b._lo) || Vector128.LessThanAny(a._hi, b._hi);
}
