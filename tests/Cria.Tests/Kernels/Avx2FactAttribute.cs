using System.Runtime.Intrinsics.X86;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>A test of an AVX2 + FMA kernel itself (its bits against a reference). Where the machine has no AVX2 + FMA
/// (ARM64, x86 before Haswell) the kernel never runs and the test is reported as skipped with that reason; the
/// portable kernels that run there have their own tests (PortableKernelTests, PortableFloatTests). CI's machines have
/// AVX2, so nothing is skipped there.</summary>
public sealed class Avx2FactAttribute : FactAttribute
{
    public Avx2FactAttribute() { if (!Has) Skip = Reason; }
    internal static bool Has => Avx2.IsSupported && Fma.IsSupported;
    internal const string Reason = "tests an AVX2 + FMA kernel, which this machine does not run";
}

/// <summary><see cref="Avx2FactAttribute"/> for a theory.</summary>
public sealed class Avx2TheoryAttribute : TheoryAttribute
{
    public Avx2TheoryAttribute() { if (!Avx2FactAttribute.Has) Skip = Avx2FactAttribute.Reason; }
}
