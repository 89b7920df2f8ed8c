using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.Arm;
using System.Runtime.Intrinsics.X86;

namespace Cria.Kernels;

/// <summary>
/// a·b + c, the step of the portable (128-bit) float kernels, as a policy: fused where the hardware fuses it (ARM64's
/// fmla, x86 with FMA), else a multiply then an add — .NET emulates a fused multiply-add in software where the hardware
/// has none (x86 before Haswell), at tens of times the cost. The vector and scalar forms round alike, so a kernel's
/// vector steps and its scalar tail follow one rule.
/// </summary>
internal interface IMulAdd
{
    static abstract Vector128<float> Apply(Vector128<float> a, Vector128<float> b, Vector128<float> c);
    static abstract float Apply(float a, float b, float c);
}

/// <summary>One rounding: fma(a, b, c).</summary>
internal readonly struct FusedMulAdd : IMulAdd
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Apply(Vector128<float> a, Vector128<float> b, Vector128<float> c) => Vector128.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Apply(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);
}

/// <summary>Two roundings: (a·b) + c.</summary>
internal readonly struct SplitMulAdd : IMulAdd
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Apply(Vector128<float> a, Vector128<float> b, Vector128<float> c) => a * b + c;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Apply(float a, float b, float c) => a * b + c;
}

internal static class MulAdd
{
    /// <summary>Whether this machine fuses multiply-add in hardware (then the portable kernels run <see cref="FusedMulAdd"/>,
    /// else <see cref="SplitMulAdd"/>).</summary>
    internal static bool Fused => Fma.IsSupported || AdvSimd.IsSupported;

    /// <summary>Whether the float kernels run the portable tier: 128-bit vectors, no 256-bit ones (ARM64, x86 without AVX2).</summary>
    internal static bool Portable => Vector128.IsHardwareAccelerated && !Vector256.IsHardwareAccelerated;
}
