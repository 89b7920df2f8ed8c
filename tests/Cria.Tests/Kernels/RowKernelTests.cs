using System.Runtime.Intrinsics.X86;
using Cria.Kernels;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>The batched row kernels against the scalar reference, and their batch invariance (bit-exact).</summary>
public unsafe class RowKernelTests
{
    public static IEnumerable<object[]> Types() =>
        new[] { GgmlType.Q4_K, GgmlType.Q6_K, GgmlType.Q5_K, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.F16, GgmlType.F32, GgmlType.BF16, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1, GgmlType.IQ4_NL, GgmlType.IQ4_XS }
            .Concat(Quant.IQuantOracleTests.Lattice).Select(t => new object[] { t });

    /// <summary>Quantizes a row with Cria's quantizer; the lattice types under unit importances (IQ2_XXS, IQ2_XS and
    /// IQ1_S have no quantizer without one).</summary>
    internal static void QuantizeRow(GgmlType type, float[] x, Span<byte> dst)
    {
        if (!GgmlTypeInfo.IsLattice(type)) { Quantize.Row(type, x, dst); return; }
        var ones = new float[x.Length];
        Array.Fill(ones, 1f);
        Quantize.Row(type, x, dst, ones);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void BatchedRowMatchesScalarReferenceAndIsBatchInvariant(GgmlType type)
    {
        var rng = new Random(17 + (int)type);
        foreach (int n in new[] { 256, 768, 2816 })
        {
            int B = 37; // more than one tile, not a multiple of it
            var wf = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            wf[rng.Next(n)] = 3.5f; // an outlier
            var wq = new byte[GgmlTypeInfo.RowBytes(type, n)];
            QuantizeRow(type, wf, wq);
            // The reference path: activations in the vec-dot type, DotScalar. The fast path: RowKernels' own format.
            var actType = VecDot.ActivationType(type);
            int ab = (int)GgmlTypeInfo.RowBytes(actType, n), fb = RowKernels.ActivationRowBytes(type, n);
            var act = new byte[ab * B];
            var fast = new byte[fb * B];
            for (int b = 0; b < B; b++)
            {
                var xf = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
                VecDot.QuantizeActivations(actType, xf, act.AsSpan(b * ab, ab));
                RowKernels.PrepareActivations(type, xf, fast.AsSpan(b * fb, fb));
            }
            var yAll = new float[B];
            fixed (byte* pw = wq) fixed (byte* pa = fast) fixed (float* py = yAll)
                RowKernels.Run(type, pw, wq.Length, pa, fb, B, n, py, 1);
            for (int b = 0; b < B; b++)
            {
                float reference = VecDot.DotScalar(type, wq, act.AsSpan(b * ab, ab), n);
                double mag = 0;
                var wd = new float[n]; var xd = new float[n];
                Dequantize.Row(type, wq, wd); Dequantize.Row(actType, act.AsSpan(b * ab, ab), xd);
                for (int i = 0; i < n; i++) mag += Math.Abs((double)wd[i] * xd[i]);
                Assert.True(Math.Abs(yAll[b] - reference) <= 1e-5 * mag + 1e-6, $"{type} n={n} b={b}: batched {yAll[b]} vs scalar {reference} (Σ|wx| {mag})");
                // the same row alone gives the same bits
                float alone;
                fixed (byte* pw = wq) fixed (byte* pa = fast)
                    RowKernels.Run(type, pw, wq.Length, pa + b * fb, fb, 1, n, &alone, 1);
                Assert.Equal(yAll[b], alone);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void BlockedAndDecodePathsGiveTheBitsOfOneRowAlone(GgmlType type)
    {
        // MatMulJob runs RunBlock (B > 1: activation tiles × ranges of weight rows, rows decoded once per tile, four
        // activation rows at a time) and RunRows (B = 1: prefetching single-row kernels). Every output must be the
        // bits of that weight row against that activation row alone, whatever B and the row range are.
        var rng = new Random(91 + (int)type);
        // Q8_0 batches split rows into parts of 36 blocks: 73 and 153 blocks end in parts with single-block tails.
        // Float rows of 1003 values end in a vector step of 8 and a scalar tail of 3.
        bool isFloat = type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16;
        foreach (int n in type == GgmlType.Q8_0 ? new[] { 256, 2816, 2336, 4896 } : isFloat ? new[] { 256, 2816, 1003 } : new[] { 256, 2816 })
        {
            // ranges [0, 3) and [3, rows): edges alone, two 4-row blocks of the AVX-512 float kernel (blocks of 3, 3 and 2
            // rows without AVX-512); kernels that run eight rows
            // at a time (RowGroup: Q8_0 and the legacy types on AVX2) get [3, 21): two full groups and one of two; so do
            // the prefill kernels that run sixteen (PrefillRowGroup: the legacy types, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K on AVX-512): one full
            // group and one of two; and those that run eight (the K-quants on AVX2)
            int rows = RowKernels.RowGroup(type) == 8 || RowKernels.PrefillRowGroup(type) >= 8 ? 21 : 11;
            long rb = GgmlTypeInfo.RowBytes(type, n);
            var wq = new byte[rb * rows];
            for (int r = 0; r < rows; r++)
            {
                var wf = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                QuantizeRow(type, wf, wq.AsSpan((int)(r * rb), (int)rb));
            }
            int fb = RowKernels.ActivationRowBytes(type, n);
            // (sixteen-row prefill kernels take tiles of RowKernels.Rows16Tile = 64 activation rows: 67 is a full tile and three)
            foreach (int B in RowKernels.PrefillRowGroup(type) >= 8 ? new[] { 1, 2, 3, 4, 6, 8, 12, 17, 37, 67 } : new[] { 1, 2, 3, 4, 6, 8, 12, 17, 37 })
            {
                var act = new byte[fb * B];
                for (int b = 0; b < B; b++)
                    RowKernels.PrepareActivations(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray(), act.AsSpan(b * fb, fb));
                var y = new float[B * rows]; // [B, rows]
                fixed (byte* pw = wq) fixed (byte* pa = act) fixed (float* py = y)
                {
                    // two ranges, as two workers' chunks would be
                    // (these random F16 weights are finite: decode takes the kernel MatMulJob gives such a matrix)
                    bool finite = type == GgmlType.F16;
                    if (B == 1) { RowKernels.RunRows(type, pw, (int)rb, 0, 3, pa, fb, n, py, finite); RowKernels.RunRows(type, pw, (int)rb, 3, rows, pa, fb, n, py, finite); }
                    else { RowKernels.RunBlock(type, pw, (int)rb, 0, 3, pa, fb, B, n, py, rows, finite); RowKernels.RunBlock(type, pw, (int)rb, 3, rows, pa, fb, B, n, py, rows, finite); }
                    for (int b = 0; b < B; b++)
                        for (int r = 0; r < rows; r++)
                        {
                            float alone;
                            RowKernels.Run(type, pw + r * rb, (int)rb, pa + b * fb, fb, 1, n, &alone, 1);
                            Assert.True(alone.Equals(y[b * rows + r]), $"{type} n={n} B={B} b={b} row {r}: {y[b * rows + r]} vs alone {alone}");
                        }
                    if (type == GgmlType.F16 && B > 1)
                    {
                        // the kernel for F16 matrices with an infinity or NaN (halves widened in full) gives the same bits
                        var y2 = new float[B * rows];
                        fixed (float* py2 = y2) { RowKernels.RunBlock(type, pw, (int)rb, 0, 3, pa, fb, B, n, py2, rows, false); RowKernels.RunBlock(type, pw, (int)rb, 3, rows, pa, fb, B, n, py2, rows, false); }
                        Assert.Equal(y, y2);
                    }
                }
            }
        }
    }

    /// <summary>The paired decode kernels (two distant weight rows against one activation row, MatMulJob's decode) give
    /// each row the bits of the one-row decode (RunRows).</summary>
    [Theory]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.IQ4_XS)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    public void PairedDecodeGivesTheBitsOfEachRowAlone(GgmlType type)
    {
        const int n = 2816;
        bool legacy = type is GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1;
        Assert.True(RowKernels.HasPairedDecode(type, n) || !(Avx512BW.IsSupported && !legacy || (type is GgmlType.Q8_0 or GgmlType.IQ4_XS || legacy) && Avx2.IsSupported && Fma.IsSupported),
            $"{type} has no paired decode kernel on this machine");
        if (!RowKernels.HasPairedDecode(type, n)) return; // (no AVX2: nothing to pair)
        var (wq, act, rb, fb) = RandomRowsAndActivation(type, n, 6, 5 + (int)type);
        var alone = new float[6];
        fixed (byte* pw = wq) fixed (byte* pa = act) fixed (float* py = alone)
        {
            RowKernels.RunRows(type, pw, (int)rb, 0, 6, pa, fb, n, py);
            for (int a = 0; a < 3; a++)
            {
                Assert.True(RowKernels.RunPair(type, pw + a * rb, pw + (a + 3) * rb, pa, n, out float ya, out float yb));
                Assert.True(ya.Equals(alone[a]) && yb.Equals(alone[a + 3]), $"{type} pair ({a}, {a + 3}): {ya}, {yb} vs alone {alone[a]}, {alone[a + 3]}");
            }
        }
    }

    /// <summary>Random weight rows of a type (values in [−1, 1)) and one random activation row (in [−2, 2)) in the
    /// row kernels' layout, for the paired-decode tests.</summary>
    static (byte[] Weights, byte[] Activation, long RowBytes, int ActivationBytes) RandomRowsAndActivation(GgmlType type, int n, int rows, int seed)
    {
        var rng = new Random(seed);
        var wq = RandomRows(type, n, rows, rng, out int rb);
        int fb = RowKernels.ActivationRowBytes(type, n);
        var act = new byte[fb];
        RowKernels.PrepareActivations(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray(), act);
        return (wq, act, rb, fb);
    }

    /// <summary>The legacy types' decode pairs two groups of eight rows far apart (MatMulJob's decode with two streams per
    /// worker): each row gets the bits of the one-row decode (RunRows, eight rows at a time).</summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    [InlineData(GgmlType.IQ4_NL)]
    public void GroupPairedDecodeGivesTheBitsOfEachRowAlone(GgmlType type)
    {
        if (!RowKernels.LegacyGroupPair(type)) return; // (no AVX2, or IQ4_NL without AVX-VNNI: no eight-row kernels)
        const int n = 2816, rows = 24;
        var (wq, act, rb, fb) = RandomRowsAndActivation(type, n, rows, 17 + (int)type);
        var alone = new float[rows];
        var paired = new float[16];
        fixed (byte* pw = wq) fixed (byte* pa = act) fixed (float* py = alone) fixed (float* pp = paired)
        {
            RowKernels.RunRows(type, pw, (int)rb, 0, rows, pa, fb, n, py);
            RowKernels.RunGroupPair(type, pw + 3 * rb, pw + 16 * rb, rb, pa, n, pp, pp + 8); // rows 3–10 and 16–23
        }
        for (int k = 0; k < 8; k++)
        {
            Assert.True(paired[k].Equals(alone[3 + k]), $"{type} row {3 + k}: {paired[k]} vs alone {alone[3 + k]}");
            Assert.True(paired[8 + k].Equals(alone[16 + k]), $"{type} row {16 + k}: {paired[8 + k]} vs alone {alone[16 + k]}");
        }
    }

    /// <summary>The IQ4_XS row kernels on the pair layout, in both multiply variants — vpdpbusd on levels + 128 (what a
    /// VNNI machine runs) and the sign trick (what an AVX2 machine without VNNI runs; instantiated here directly, so it
    /// is tested on every machine): each equals the scalar reference up to float summation order, and the paired and
    /// four-row kernels give each row the one-row kernel's bits.</summary>
    [Fact]
    public void IQ4XSRowKernelsInBothMultiplyVariants()
    {
        if (!RowKernels.Avx2Rows(GgmlType.IQ4_XS)) return; // (no AVX2: these kernels are not used)
        const int n = 2816, nb = n / 256, B = 4;
        var rng = new Random(44);
        long rb = GgmlTypeInfo.RowBytes(GgmlType.IQ4_XS, n);
        var wq = new byte[rb * 2];
        var wf = new float[2][];
        for (int r = 0; r < 2; r++)
        {
            wf[r] = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            Quantize.Row(GgmlType.IQ4_XS, wf[r], wq.AsSpan((int)(r * rb), (int)rb));
        }
        int ab = (int)GgmlTypeInfo.RowBytes(GgmlType.Q8_K, n);
        var std = new byte[ab * B];  // ggml's Q8_K blocks, for the scalar reference
        var pair = new byte[ab * B]; // the same, reordered into the pair layout
        for (int b = 0; b < B; b++)
        {
            VecDot.QuantizeActivations(GgmlType.Q8_K, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray(), std.AsSpan(b * ab, ab));
        }
        std.CopyTo(pair, 0);
        fixed (byte* pw = wq) fixed (byte* pa = pair)
        {
            VecDot.PermuteQ8KForIQ4XS(pa, nb * B);
            foreach (bool vnni in new[] { true, false })
            {
                var x4 = new float[2 * B];
                for (int r = 0; r < 2; r++)
                {
                    fixed (float* py = x4)
                        if (vnni) VecDot.DotIQ4XSRowX4<VecDot.HasVnni>(pw + r * rb, pa, ab, nb, py + r, 2);
                        else VecDot.DotIQ4XSRowX4<VecDot.NoVnni>(pw + r * rb, pa, ab, nb, py + r, 2);
                    for (int b = 0; b < B; b++)
                    {
                        float one = vnni ? VecDot.DotIQ4XSRow<VecDot.HasVnni>(pw + r * rb, pa + b * ab, nb) : VecDot.DotIQ4XSRow<VecDot.NoVnni>(pw + r * rb, pa + b * ab, nb);
                        float scalar = VecDot.DotScalar(GgmlType.IQ4_XS, wq.AsSpan((int)(r * rb), (int)rb), std.AsSpan(b * ab, ab), n);
                        var wd = new float[n]; var ad = new float[n];
                        Dequantize.Row(GgmlType.IQ4_XS, wq.AsSpan((int)(r * rb), (int)rb), wd);
                        Dequantize.Row(GgmlType.Q8_K, std.AsSpan(b * ab, ab), ad);
                        double absDot = 0;
                        for (int i = 0; i < n; i++) absDot += Math.Abs((double)wd[i] * ad[i]);
                        Assert.True(Math.Abs(one - scalar) <= 1e-5 * absDot, $"vnni {vnni} row {r} b {b}: {one} vs scalar {scalar} (Σ|w·a| {absDot})");
                        Assert.True(one.Equals(x4[b * 2 + r]), $"vnni {vnni} row {r} b {b}: four-row {x4[b * 2 + r]} vs one-row {one}");
                        float ya, yb;
                        if (vnni) VecDot.DotIQ4XSRowPair<VecDot.HasVnni>(pw, pw + rb, pa + b * ab, nb, out ya, out yb);
                        else VecDot.DotIQ4XSRowPair<VecDot.NoVnni>(pw, pw + rb, pa + b * ab, nb, out ya, out yb);
                        Assert.True((r == 0 ? ya : yb).Equals(one), $"vnni {vnni} row {r} b {b}: paired {(r == 0 ? ya : yb)} vs one-row {one}");
                        // the exact family (AVX-512 machines): integers exact in both variants, so the same bits from each
                        float exact = vnni ? VecDot.DotIQ4XSRowExact<VecDot.HasVnni>(pw + r * rb, pa + b * ab, nb) : VecDot.DotIQ4XSRowExact<VecDot.NoVnni>(pw + r * rb, pa + b * ab, nb);
                        Assert.True(Math.Abs(exact - scalar) <= 1e-5 * absDot, $"exact, vnni {vnni} row {r} b {b}: {exact} vs scalar {scalar}");
                        Assert.True(exact.Equals(VecDot.DotIQ4XSRowExact<VecDot.HasVnni>(pw + r * rb, pa + b * ab, nb)), $"exact row {r} b {b}: the variants differ");
                        if (vnni) VecDot.DotIQ4XSRowPairExact<VecDot.HasVnni>(pw, pw + rb, pa + b * ab, nb, out ya, out yb);
                        else VecDot.DotIQ4XSRowPairExact<VecDot.NoVnni>(pw, pw + rb, pa + b * ab, nb, out ya, out yb);
                        Assert.True((r == 0 ? ya : yb).Equals(exact), $"exact, vnni {vnni} row {r} b {b}: paired {(r == 0 ? ya : yb)} vs one-row {exact}");
                    }
                }
            }
        }
    }

    /// <summary>Every quantized kernel ends a dot product with RowKernels.Sum's fixed tree, and the tiles sum sixteen
    /// accumulators at once with Sums16: lane b of Sums16 must be the bits of Sum(v[b]), and Sum the bits of the tree
    /// written out in scalars. Lanes of mixed magnitudes make every other order give other bits.</summary>
    [Fact]
    public void SixteenSumsAtOnceGiveTheBitsOfEachSumAlone()
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the AVX-512 kernels' ending; no other path uses it
        var rng = new Random(12);
        var v = new System.Runtime.Intrinsics.Vector512<float>[32];
        for (int trial = 0; trial < 200; trial++)
        {
            for (int k = 0; k < v.Length; k++)
            {
                var lanes = new float[16];
                for (int l = 0; l < 16; l++) lanes[l] = (float)((rng.NextDouble() - 0.5) * Math.Pow(2, rng.Next(-20, 21)));
                v[k] = System.Runtime.Intrinsics.Vector512.Create(lanes);
            }
            foreach (int stride in new[] { 1, 2 })
            {
                System.Runtime.Intrinsics.Vector512<float> sums;
                fixed (System.Runtime.Intrinsics.Vector512<float>* pv = v) sums = RowKernels.Sums16(pv, stride);
                for (int b = 0; b < 16; b++)
                {
                    var x = v[b * stride];
                    float Q(int i) => (x[i] + x[i + 1]) + (x[i + 2] + x[i + 3]);
                    float tree = (Q(0) + Q(4)) + (Q(8) + Q(12));
                    float alone = RowKernels.Sum(x);
                    Assert.True(alone.Equals(tree), $"trial {trial}: Sum {alone} vs the tree {tree}");
                    Assert.True(sums[b].Equals(alone), $"trial {trial} stride {stride} lane {b}: {sums[b]} vs {alone}");
                }
            }
        }
    }

    /// <summary>The F16 decode kernel reads raw half bits against activations · 2^112: subnormal and signed-zero
    /// weights give the bits of the widening path, and a row holding an infinity or a NaN (which the raw bits would
    /// read as finite) gives what the widening path gives: a non-finite result, the same bits.</summary>
    [Fact]
    public void F16DecodeKernelMatchesTheWideningPathForSubnormalZeroAndNonFiniteWeights()
    {
        var rng = new Random(5);
        const int n = 2816 + 16; // a tail after the 64-wide loop
        int fb = RowKernels.ActivationRowBytes(GgmlType.F16, n);
        foreach (int trial in Enumerable.Range(0, 8))
        {
            var w = new ushort[n];
            for (int i = 0; i < n; i++)
                w[i] = (i % 9) switch
                {
                    0 => (ushort)rng.Next(1, 0x400),                   // subnormal
                    1 => (ushort)(0x8000 | rng.Next(1, 0x400)),        // negative subnormal
                    2 => (ushort)(rng.Next(2) << 15),                  // ±0
                    _ => Fp16.FromSingle((float)(rng.NextDouble() * 2 - 1) * (i % 3 == 0 ? 3e4f : 1)),
                };
            if (trial == 1) w[rng.Next(2816)] = 0x7C00;                // +∞ in the vector part
            if (trial == 2) w[rng.Next(2816)] = 0xFC00;                // −∞
            if (trial == 3) w[rng.Next(2816)] = (ushort)(0x7C00 | rng.Next(1, 0x400)); // NaN
            if (trial == 4) w[n - 3] = 0x7C00;                         // +∞ in the tail
            var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            if (trial == 5) x[rng.Next(n)] = 70000f;                   // rounds to an F16 infinity
            var act = new byte[fb * 2];
            RowKernels.PrepareActivations(GgmlType.F16, x, act.AsSpan(0, fb));
            RowKernels.PrepareActivations(GgmlType.F16, x, act.AsSpan(fb, fb));
            var wb = System.Runtime.InteropServices.MemoryMarshal.AsBytes(w.AsSpan()).ToArray();
            float decode; var both = new float[2];
            fixed (byte* pw = wb) fixed (byte* pa = act) fixed (float* py = both)
            {
                RowKernels.Run(GgmlType.F16, pw, wb.Length, pa, fb, 1, n, &decode, 1);  // decode kernel
                RowKernels.Run(GgmlType.F16, pw, wb.Length, pa, fb, 2, n, py, 1);       // widening path (B > 1)
            }
            Assert.True(decode.Equals(both[0]), $"trial {trial}: decode {decode} vs widened {both[0]}");
            if (trial is >= 1 and <= 4) Assert.False(float.IsFinite(decode), $"trial {trial}: {decode}");
            else Assert.True(float.IsFinite(decode) || trial == 5, $"trial {trial}: {decode}");

            // The paired kernel (two rows, two streams) gives each row the single-row kernel's bits and reports a
            // non-finite weight in either row (MatMulJob then recomputes both through the single-row path).
            var w2 = w.Reverse().Select(h => (ushort)(h & 0x7C00) == 0x7C00 ? (ushort)0x3C00 : h).ToArray(); // finite
            var wb2 = System.Runtime.InteropServices.MemoryMarshal.AsBytes(w2.AsSpan()).ToArray();
            float decode2, ya, yb; bool nonFinite;
            bool paired = RowKernels.HasPairedDecode(GgmlType.F16, n);
            bool checkedPair = paired && System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated; // AVX2 pairs finite rows only
            fixed (byte* pw = wb) fixed (byte* pw2 = wb2) fixed (byte* pa = act)
            {
                RowKernels.Run(GgmlType.F16, pw2, wb2.Length, pa, fb, 1, n, &decode2, 1);
                if (checkedPair) RowKernels.DotF16ScaledPair<RowKernels.Checked>((ushort*)pw, (ushort*)pw2, (float*)pa + n, n, out ya, out yb, out nonFinite);
                else { ya = decode; yb = decode2; nonFinite = trial is >= 1 and <= 3; }
            }
            Assert.Equal(trial is >= 1 and <= 3, nonFinite); // trial 4's infinity is in the tail, which reads x exactly
            if (!nonFinite) Assert.True(ya.Equals(decode), $"trial {trial}: paired {ya} vs single {decode}");
            Assert.True(yb.Equals(decode2), $"trial {trial}: paired second row {yb} vs single {decode2}");

            // The unchecked kernels (what decode runs for a matrix found finite when bound; without AVX-512, the AVX2
            // one): the same bits on finite rows, single and paired. (On a row with an infinity they would read it as finite; that is why the
            // matrix is checked once, WeightMatrix.NonFiniteF16.)
            fixed (ushort* pw = w) Assert.Equal(trial is >= 1 and <= 4, RowKernels.HasNonFiniteF16(pw, n));
            float single2, pa2, pb2;
            fixed (byte* pw2 = wb2) fixed (byte* pa = act) fixed (byte* pw1 = wb)
            {
                RowKernels.RunRows(GgmlType.F16, pw2, wb2.Length, 0, 1, pa, fb, n, &single2, finiteF16: true);
                if (paired) Assert.True(RowKernels.RunPair(GgmlType.F16, pw2, pw2, pa, n, out pa2, out pb2, finiteF16: true));
                else pa2 = pb2 = single2;
                // without AVX-512 the pair kernel takes finite matrices only: a pair of a non-finite one is declined
                if (paired && !checkedPair) Assert.False(RowKernels.RunPair(GgmlType.F16, pw1, pw2, pa, n, out _, out _, finiteF16: false));
            }
            Assert.True(single2.Equals(decode2), $"trial {trial}: unchecked {single2} vs checked {decode2}");
            Assert.True(pa2.Equals(decode2) && pb2.Equals(decode2), $"trial {trial}: unchecked pair {pa2}, {pb2} vs {decode2}");
        }
    }

    /// <summary>The scan that decides, once per F16 matrix, whether decode may skip its infinity check: against the
    /// scalar rule (exponent bits all ones) on lengths around the 64-wide step, with one infinity or NaN anywhere
    /// (first, last, in the vector part, in the tail) or none; largest finite values and subnormals are not flagged.</summary>
    [Fact]
    public void NonFiniteF16ScanFindsEveryInfinityAndNaN()
    {
        var rng = new Random(11);
        foreach (int n in new[] { 1, 63, 64, 65, 127, 128, 1000, 4096 + 17 })
            for (int trial = 0; trial < 12; trial++)
            {
                var w = new ushort[n];
                for (int i = 0; i < n; i++)
                    w[i] = (i % 5) switch
                    {
                        0 => (ushort)(rng.Next(2) << 15 | 0x7BFF),           // ±65504, the largest finite half
                        1 => (ushort)(rng.Next(2) << 15 | rng.Next(1, 0x400)), // ±subnormal
                        _ => (ushort)(rng.Next(2) << 15 | rng.Next(0, 0x7C00)),
                    };
                if (trial > 0)
                {
                    int at = trial switch { 1 => 0, 2 => n - 1, _ => rng.Next(n) };
                    w[at] = (ushort)(rng.Next(2) << 15 | 0x7C00 | (trial % 2 == 0 ? rng.Next(1, 0x400) : 0)); // ±∞ or NaN
                }
                bool expected = w.Any(h => (h & 0x7C00) == 0x7C00);
                Assert.Equal(trial > 0, expected);
                fixed (ushort* p = w) Assert.Equal(expected, RowKernels.HasNonFiniteF16(p, n));
                fixed (ushort* p = w)
                    Assert.Equal(expected, new Cria.Models.WeightMatrix("w", GgmlType.F16, (byte*)p, 1, n).NonFiniteF16);
            }
    }

    [Fact]
    public void VectorizedQ8KQuantizationIsByteIdenticalToReference()
    {
        var rng = new Random(3);
        foreach (int n in new[] { 256, 2048, 5632 })
            for (int trial = 0; trial < 20; trial++)
            {
                var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
                if (trial == 1) Array.Clear(x, 0, 256);                         // an all-zero block
                if (trial == 2) { x[5] = 2f; x[9] = -2f; x[200] = 2f; }          // ties for the max magnitude
                if (trial == 3) for (int i = 0; i < n; i++) x[i] = (i % 7 - 3) * 0.5f * (127f / 1.5f) / 127f; // exact .5 products
                var a = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q8_K, n)];
                var b = new byte[RowKernels.ActivationRowBytes(GgmlType.Q6_K, n)];
                var c = new byte[RowKernels.ActivationRowBytes(GgmlType.Q3_K, n)];
                VecDot.QuantizeActivations(GgmlType.Q8_K, x, a);
                RowKernels.PrepareActivations(GgmlType.Q6_K, x, b); // Q6_K reads Q8_K in natural order (Q4_K: permuted)
                RowKernels.PrepareActivations(GgmlType.Q3_K, x, c); // other K types: ggml's block_q8_K itself
                if (VecDot.PortableRows(GgmlType.Q3_K))
                {
                    // without AVX2: the portable layout, widened from ggml's blocks
                    var widened = new byte[c.Length];
                    VecDot.WidenPortable(GgmlType.Q8_K, a, widened, n);
                    Assert.True(widened.AsSpan().SequenceEqual(c), $"n = {n}, trial {trial}: the portable Q8_K layout differs");
                }
                else Assert.True(a.AsSpan().SequenceEqual(c), $"n = {n}, trial {trial}: Q3_K's activations are not ggml's block_q8_K");
                // the AVX2 Q4_K / Q5_K kernels' layout (checked on any AVX2 machine: the kernels run on AVX-512 ones too,
                // in KQuantAvx2PrefillAndDecodeGiveTheSameBitsAtTheInt16Bound): block_q8_K with the 16 bsums replaced by the
                // 8 sums of 32, bsum 2j + bsum 2j+1, as int16
                if (Avx2.IsSupported)
                {
                    var k4 = new byte[a.Length];
                    RowKernels.PrepareQ8KForK4Avx2(x, k4);
                    for (int k = 0; k < n / 256; k++)
                    {
                        Assert.Equal(a.AsSpan(k * 292, 260).ToArray(), k4.AsSpan(k * 292, 260).ToArray());
                        for (int j = 0; j < 8; j++)
                        {
                            int pair = BitConverter.ToInt16(a, k * 292 + 260 + 4 * j) + BitConverter.ToInt16(a, k * 292 + 262 + 4 * j);
                            Assert.Equal(pair, BitConverter.ToInt16(k4, k * 292 + 260 + 2 * j));
                        }
                    }
                    if (RowKernels.Avx2Rows(GgmlType.Q4_K))
                    {
                        // AVX2 without AVX-512: Q6_K reads block_q8_K itself, Q4_K and Q5_K the layout above
                        Assert.Equal(a, b);
                        var q4a = new byte[a.Length];
                        RowKernels.PrepareActivations(GgmlType.Q4_K, x, q4a);
                        var q5a = new byte[a.Length];
                        RowKernels.PrepareActivations(GgmlType.Q5_K, x, q5a); // Q5_K: Q4_K's layout (same scales and mins)
                        Assert.Equal(k4, q4a);
                        Assert.Equal(k4, q5a);
                    }
                }
                if (!Avx512BW.IsSupported) continue;
                // their own layout is the AVX-512 kernels'
                // the Q4_K / Q6_K kernels' layout, 320 B per super-block: qs[256] | bsums[16] | d, the same values
                Assert.Equal(n / 256 * 320, b.Length);
                for (int k = 0; k < n / 256; k++)
                {
                    Assert.Equal(a.AsSpan(k * 292 + 4, 256).ToArray(), b.AsSpan(k * 320, 256).ToArray());
                    Assert.Equal(a.AsSpan(k * 292 + 260, 32).ToArray(), b.AsSpan(k * 320 + 256, 32).ToArray());
                    Assert.Equal(a.AsSpan(k * 292, 4).ToArray(), b.AsSpan(k * 320 + 288, 4).ToArray());
                }
                // Q4_K's: quants permuted per 128-quant half (lo c, hi c, lo c+1, hi c+1 → lo c, lo c+1, hi c, hi c+1)
                // and, where the bsums were, the sums of 32, bsum 2j + bsum 2j+1, as 8 int16
                var q4 = new byte[b.Length];
                RowKernels.PrepareActivations(GgmlType.Q4_K, x, q4);
                for (int k = 0; k < n / 256; k++)
                {
                    float d8 = BitConverter.ToSingle(a, k * 292);
                    for (int half = 0; half < 2; half++)
                        foreach (var (from, to) in new[] { (0, 0), (32, 64), (64, 32), (96, 96) })
                            Assert.Equal(a.AsSpan(k * 292 + 4 + 128 * half + from, 32).ToArray(), q4.AsSpan(k * 320 + 128 * half + to, 32).ToArray());
                    for (int j = 0; j < 8; j++)
                    {
                        int pair = BitConverter.ToInt16(a, k * 292 + 260 + 4 * j) + BitConverter.ToInt16(a, k * 292 + 262 + 4 * j);
                        Assert.Equal(pair, BitConverter.ToInt16(q4, k * 320 + 256 + 2 * j));
                    }
                    Assert.Equal(d8, BitConverter.ToSingle(q4, k * 320 + 288));
                }
            }
    }

    [Fact]
    public void VectorizedHalfAndBf16RoundingEqualTheScalarConversion()
    {
        // Every 61st float bit pattern (all exponents, both signs, NaN and infinity included), plus the edges of half's
        // normal range and its rounding ties, in runs of 16 so the vector path sees them.
        var values = new List<float>();
        for (long u = 0; u <= uint.MaxValue; u += 61 * 4093) for (int k = 0; k < 16; k++) values.Add(BitConverter.UInt32BitsToSingle((uint)(u + k * 61)));
        foreach (float v in new[] { 65504f, 65519.99f, 65520f, 6.1035156e-5f, 6.1035152e-5f, 1f + 1f / 2048, 1f + 3f / 2048, 2049f, 2051f, 0f, -0f })
            for (int k = 0; k < 16; k++) values.Add(k % 2 == 0 ? v : -v);
        var x = values.ToArray();
        var h = new float[x.Length]; var b = new float[x.Length];
        RowKernels.RoundToHalf(x, h);
        RowKernels.RoundToBf16(x, b);
        for (int i = 0; i < x.Length; i++)
        {
            float eh = Fp16.Round(x[i]), eb = Bf16.Round(x[i]);
            Assert.True(BitConverter.SingleToUInt32Bits(eh) == BitConverter.SingleToUInt32Bits(h[i]) || float.IsNaN(eh) && float.IsNaN(h[i]), $"half of 0x{BitConverter.SingleToUInt32Bits(x[i]):X8}: {h[i]} vs {eh}");
            Assert.True(BitConverter.SingleToUInt32Bits(eb) == BitConverter.SingleToUInt32Bits(b[i]), $"bf16 of 0x{BitConverter.SingleToUInt32Bits(x[i]):X8}: {b[i]} vs {eb}");
        }
    }

    [Fact]
    public void VectorizedQ80ActivationsEqualTheReferenceQuantizer()
    {
        var rng = new Random(5);
        foreach (int n in new[] { 32, 2048, 5632 })
            for (int trial = 0; trial < 20; trial++)
            {
                var x = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
                if (trial == 1) Array.Clear(x, 0, 32);                                            // an all-zero block
                if (trial == 2) for (int i = 0; i < n; i++) x[i] = i % 32 == 0 ? 127f : (i % 9 - 4) + 0.5f; // d = 1: exact ±k.5 ties
                if (trial == 3) for (int i = 0; i < n; i++) x[i] *= 1e-7f;                       // d below the F16 normal range
                if (trial == 4) for (int i = 0; i < n; i++) x[i] *= 1e5f;                        // d above F16's largest value
                if (trial == 5) x[n - 1] = -40f;                                                  // a negative maximum
                var reference = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q8_0, n)];
                Quantize.Row(GgmlType.Q8_0, x, reference);
                // Plain Q8_0 blocks (the vec-dot activations of Q8_0, Q4_0 and Q5_0 weights for VecDot.Dot): the reference's bytes
                if (System.Runtime.Intrinsics.X86.Avx2.IsSupported)
                {
                    var plain = new byte[reference.Length];
                    RowKernels.QuantizeQ80Avx2(x, plain, split: false);
                    Assert.True(reference.AsSpan().SequenceEqual(plain), $"n = {n}, trial {trial}: the AVX2 Q8_0 blocks differ");
                }
                else
                {
                    // without AVX2 the legacy types read the portable layout, widened from the reference's blocks
                    var prepared = new byte[RowKernels.ActivationRowBytes(GgmlType.Q5_0, n)];
                    var widened = new byte[prepared.Length];
                    RowKernels.PrepareActivations(GgmlType.Q5_0, x, prepared);
                    VecDot.WidenPortable(GgmlType.Q8_0, reference, widened, n);
                    Assert.True(widened.AsSpan().SequenceEqual(prepared), $"n = {n}, trial {trial}: the portable Q8_0 layout differs");
                }
                if (RowKernels.Avx2Rows(GgmlType.Q8_0))
                {
                    // AVX2, and AVX-512 with AVX-VNNI (VecDot.Q80Rows16): Q8_0 and the legacy types' weights read [nb]
                    // floats (the F16-rounded d), [nb, 32] int8 quants, [nb] int32 Σ quants and [nb] floats s, ggml's
                    // block_q8_1 s (the F16 of Σ quants · d)
                    var split = new byte[RowKernels.ActivationRowBytes(GgmlType.Q8_0, n)];
                    Assert.Equal(n / 32 * 44, split.Length);
                    RowKernels.PrepareActivations(GgmlType.Q8_0, x, split);
                    var q81 = new byte[GgmlTypeInfo.RowBytes(GgmlType.Q8_1, n)];
                    Quantize.Row(GgmlType.Q8_1, x, q81);
                    for (int i = 0; i < n / 32; i++)
                    {
                        Assert.Equal(BitConverter.SingleToUInt32Bits(Fp16.ToSingle(BitConverter.ToUInt16(reference, i * 34))), BitConverter.ToUInt32(split, i * 4));
                        Assert.Equal(reference.AsSpan(i * 34 + 2, 32).ToArray(), split.AsSpan(n / 32 * 4 + i * 32, 32).ToArray());
                        int sum = 0;
                        for (int j = 0; j < 32; j++) sum += (sbyte)reference[i * 34 + 2 + j];
                        Assert.Equal(sum, BitConverter.ToInt32(split, n / 32 * 36 + i * 4));
                        Assert.Equal(BitConverter.SingleToUInt32Bits(Fp16.ToSingle(BitConverter.ToUInt16(q81, i * 36 + 2))), BitConverter.ToUInt32(split, n / 32 * 40 + i * 4));
                    }
                    var legacyTypes = new List<GgmlType> { GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1 };
                    if (RowKernels.Iq4nlRows8(GgmlType.IQ4_NL)) legacyTypes.Add(GgmlType.IQ4_NL);
                    foreach (var legacy in legacyTypes)
                    {
                        var withSums = new byte[RowKernels.ActivationRowBytes(legacy, n)];
                        RowKernels.PrepareActivations(legacy, x, withSums);
                        Assert.Equal(split, withSums);
                    }
                }
                if (!System.Runtime.Intrinsics.X86.Avx512BW.IsSupported) continue;
                // AVX-512: the int16 layout ([nb] scales, [nb, 32] int16 quants), which machines without AVX-VNNI read
                int nb = n / 32;
                var fast = new byte[nb * 68];
                RowKernels.QuantizeQ80Widened(x, fast);
                for (int i = 0; i < nb; i++)
                {
                    float d = Fp16.ToSingle(BitConverter.ToUInt16(reference, i * 34));
                    Assert.Equal(BitConverter.SingleToUInt32Bits(d), BitConverter.ToUInt32(fast, i * 4));
                    for (int j = 0; j < 32; j++)
                        Assert.True((sbyte)reference[i * 34 + 2 + j] == BitConverter.ToInt16(fast, nb * 4 + (i * 32 + j) * 2),
                            $"n={n} trial={trial} block {i} value {j}: x={x[i * 32 + j]}");
                }
                if (RowKernels.Avx2Rows(GgmlType.Q8_0)) continue; // the dispatched layout is checked above
                var dispatched = new byte[RowKernels.ActivationRowBytes(GgmlType.Q8_0, n)];
                RowKernels.PrepareActivations(GgmlType.Q8_0, x, dispatched);
                Assert.Equal(fast, dispatched);
            }
    }

    [Fact]
    public void VectorHalfToSingleIsExactForEveryHalf()
    {
        if (!System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated) return; // the scalar table is the path then
        for (int h0 = 0; h0 < 65536; h0 += 16)
        {
            var v = System.Runtime.Intrinsics.Vector512.Create(Enumerable.Range(h0, 16).Select(i => (int)(short)i).ToArray()); // sign-extended, as loaded
            var f = RowKernels.HalfToSingle(v);
            for (int l = 0; l < 16; l++)
            {
                float expected = Fp16.ToSingle((ushort)(h0 + l));
                if (float.IsNaN(expected)) Assert.True(float.IsNaN(f[l]), $"half 0x{h0 + l:X4}");
                else Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(f[l]));
            }
        }
    }

    /// <summary>The legacy types' prefill on AVX-512 adds a block's steps in int16 (VecDot.DotRows16Avx512: four-bit
    /// values eight steps, five-bit four): at the bound — every value 15 (31) or 0, every activation quant ±127 — the
    /// sums must still be exact: the scalar reference's value, and the bits of each row alone (the eight-row decode
    /// kernel). Rows differ in scale, min and pattern so that a lane or offset mix-up shows.</summary>
    [Theory]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    public void LegacyPrefillIsExactAtTheInt16Bound(GgmlType type)
    {
        const int n = 512, rows = 19, B = 5;
        int nb = n / 32, bytes = (int)GgmlTypeInfo.RowBytes(type, 32), rb = nb * bytes;
        bool min = type is GgmlType.Q4_1 or GgmlType.Q5_1, five = type is GgmlType.Q5_0 or GgmlType.Q5_1;
        int qs = bytes - 16; // qs[16] ends every block; qh (five-bit types) just before it
        var wq = new byte[rows * rb];
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                int o = r * rb + i * bytes;
                BitConverter.TryWriteBytes(wq.AsSpan(o), Fp16.FromSingle(0.5f + r + i / 8f));
                if (min) BitConverter.TryWriteBytes(wq.AsSpan(o + 2), Fp16.FromSingle(-0.25f * r + i));
                // row 0 every value at the top (15 or 31), row 1 every value 0, the others mixed in runs of eight
                for (int j = 0; j < 16; j++) wq[o + qs + j] = (byte)(r == 0 || r != 1 && (r + i + j / 4) % 3 != 0 ? 0xFF : 0x00);
                if (five) BitConverter.TryWriteBytes(wq.AsSpan(o + qs - 4), r == 0 ? uint.MaxValue : r == 1 ? 0u : 0xF0F0F0F0u >> (r % 4));
            }
        int fb = RowKernels.ActivationRowBytes(type, n), ab = (int)GgmlTypeInfo.RowBytes(VecDot.ActivationType(type), n);
        var act = new byte[B * fb];
        var reference = new byte[B * ab];
        for (int b = 0; b < B; b++)
        {
            // ±2 in runs: every block's quants ±127
            var x = Enumerable.Range(0, n).Select(j => (b == 0 || (j / 7 + b) % 2 == 0) ? 2f : -2f).ToArray();
            RowKernels.PrepareActivations(type, x, act.AsSpan(b * fb, fb));
            VecDot.QuantizeActivations(VecDot.ActivationType(type), x, reference.AsSpan(b * ab, ab));
        }
        PrefillMatchesAloneAndScalar(type, wq, rb, rows, act, fb, reference, ab, B, n, 1e-2f);
    }

    /// <summary>RunBlock over all rows and B activation rows: every output the bits of that row alone (its decode kernel)
    /// and within 1e-5 relative + <paramref name="absTol"/> of the scalar reference on ggml's activations.</summary>
    static void PrefillMatchesAloneAndScalar(GgmlType type, byte[] wq, int rb, int rows, byte[] act, int fb, byte[] reference, int ab, int B, int n, float absTol)
    {
        var y = new float[B * rows];
        fixed (byte* pw = wq) fixed (byte* pa = act) fixed (float* py = y)
        {
            RowKernels.RunBlock(type, pw, rb, 0, rows, pa, fb, B, n, py, rows);
            for (int b = 0; b < B; b++)
                for (int r = 0; r < rows; r++)
                {
                    float alone;
                    RowKernels.Run(type, pw + r * rb, rb, pa + b * fb, fb, 1, n, &alone, 1);
                    Assert.True(alone.Equals(y[b * rows + r]), $"{type} b={b} row {r}: {y[b * rows + r]} vs alone {alone}");
                    float scalar = VecDot.DotScalar(type, wq.AsSpan(r * rb, rb), reference.AsSpan(b * ab, ab), n);
                    Assert.True(Math.Abs(y[b * rows + r] - scalar) <= 1e-5f * Math.Abs(scalar) + absTol, $"{type} b={b} row {r}: {y[b * rows + r]} vs scalar {scalar}");
                }
        }
    }

    /// <summary>The int16-bound tests' check: B activation rows of ±2 in runs of <paramref name="run"/> (row 0 all −2), so
    /// every activation quant is ±127 (asserted), then <see cref="PrefillMatchesAloneAndScalar"/>.</summary>
    static void PrefillAtTheBoundMatches(GgmlType type, byte[] wq, int rb, int rows, int B, int n, int run)
    {
        int fb = RowKernels.ActivationRowBytes(type, n), ab = (int)GgmlTypeInfo.RowBytes(VecDot.ActivationType(type), n);
        var act = new byte[B * fb];
        var reference = new byte[B * ab];
        for (int b = 0; b < B; b++)
        {
            var x = Enumerable.Range(0, n).Select(j => (b == 0 || (j / run + b) % 2 == 0) ? -2f : 2f).ToArray();
            RowKernels.PrepareActivations(type, x, act.AsSpan(b * fb, fb));
            VecDot.QuantizeActivations(VecDot.ActivationType(type), x, reference.AsSpan(b * ab, ab));
        }
        Assert.Equal(-127, (sbyte)reference[4]); // the bound is reached
        PrefillMatchesAloneAndScalar(type, wq, rb, rows, act, fb, reference, ab, B, n, 1e-3f);
    }

    /// <summary>Q4_K prefill on AVX-512 (VecDot.DotQ4KRows16Avx512) adds a sub-block's eight steps of four values in
    /// int16: at the bound — every nibble 15, every scale and min 63, every activation quant ±127 (ggml's Q8_K never
    /// makes −128) — a sub-block's sum reaches ±30480, and it must stay exact: the scalar reference's value, and the bits
    /// of each row alone (the decode kernel). Rows differ in d, dmin and pattern so that a lane or offset mix-up shows.</summary>
    [Fact]
    public void Q4KPrefillIsExactAtTheInt16Bound()
    {
        var wq = Q4KBoundRows(out int rb);
        PrefillAtTheBoundMatches(GgmlType.Q4_K, wq, rb, 19, 5, 768, run: 7);
    }

    /// <summary>19 Q4_K rows of 768 for the int16-bound tests (<see cref="Q4KPrefillIsExactAtTheInt16Bound"/>).</summary>
    static byte[] Q4KBoundRows(out int rb)
    {
        const int n = 768, rows = 19, nb = n / 256;
        rb = nb * 144;
        var wq = new byte[rows * rb];
        var rng = new Random(5);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                int o = r * rb + i * 144;
                BitConverter.TryWriteBytes(wq.AsSpan(o), Fp16.FromSingle(0.01f * (1 + r) + i / 64f));
                BitConverter.TryWriteBytes(wq.AsSpan(o + 2), Fp16.FromSingle(0.003f * (r + 1) - 0.001f * i));
                // row 0: every scale and min 63 and every nibble 15; row 1: all zero quants; the others random scales and runs
                for (int j = 0; j < 12; j++) wq[o + 4 + j] = r == 0 ? (byte)0xFF : (byte)rng.Next(256);
                for (int j = 0; j < 128; j++) wq[o + 16 + j] = (byte)(r == 0 || r != 1 && (r + i + j / 4) % 3 != 0 ? 0xFF : 0x00);
            }
        return wq;
    }
    /// <summary>Q6_K prefill on AVX-512 (VecDot.DotQ6KRows16Avx512) adds two steps of four values in int16 before the
    /// scale: at the bound — every value 63 (ql and qh all ones), activation quants all −127 — a pair of steps reaches
    /// −32004, and it must stay exact: the scalar reference's value, and the bits of each row alone (the decode kernel,
    /// RowKernels.Q6K1). Rows differ in d, scales (±127, −128, random) and pattern so that a lane, offset or scale
    /// mix-up shows; 19 rows are a group of sixteen and one of three.</summary>
    [Fact]
    public void Q6KPrefillIsExactAtTheInt16Bound()
    {
        var wq = Q6KBoundRows(out int rb);
        PrefillAtTheBoundMatches(GgmlType.Q6_K, wq, rb, 19, 5, 768, run: 5);
    }

    /// <summary><paramref name="rows"/> random rows (values in [−1, 1)) quantized to <paramref name="type"/>.</summary>
    static byte[] RandomRows(GgmlType type, int n, int rows, Random rng, out int rb)
    {
        rb = (int)GgmlTypeInfo.RowBytes(type, n);
        var wq = new byte[rows * rb];
        for (int r = 0; r < rows; r++)
            Quantize.Row(type, Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), wq.AsSpan(r * rb, rb));
        return wq;
    }

    /// <summary>19 Q6_K rows of 768 for the int16-bound tests (<see cref="Q6KPrefillIsExactAtTheInt16Bound"/>).</summary>
    static byte[] Q6KBoundRows(out int rb)
    {
        const int n = 768, rows = 19, nb = n / 256;
        rb = nb * 210;
        var wq = new byte[rows * rb];
        var rng = new Random(6);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                int o = r * rb + i * 210;
                // row 0: every value 63 and every scale 127; row 1: every value 0 (q6 = −32) and every scale −128;
                // row 2: every value 63, scales −128; the others random bytes in runs and random scales
                for (int j = 0; j < 192; j++)
                    wq[o + j] = r is 0 or 2 ? (byte)0xFF : r == 1 ? (byte)0 : (r + i + j / 4) % 3 == 0 ? (byte)0xFF : (byte)rng.Next(256);
                for (int j = 0; j < 16; j++) wq[o + 192 + j] = r == 0 ? (byte)127 : r is 1 or 2 ? (byte)0x80 : (byte)rng.Next(256);
                BitConverter.TryWriteBytes(wq.AsSpan(o + 208), Fp16.FromSingle(0.01f * (1 + r) + i / 64f));
            }
        return wq;
    }
    /// <summary>Q5_K prefill on AVX-512 (VecDot.DotQ4KRows16Avx512 with RowKernels.Q5KLayout) adds four steps of four
    /// values in int16: at the bound — every value 31 (nibbles 15, every qh bit set), scales and mins 63, activation
    /// quants all −127 — four steps reach −31496, and they must stay exact: the scalar reference's value, and the bits of
    /// each row alone (the decode kernel). Row 2 has every value 16 (only the fifth bits), so a fifth bit taken from the
    /// wrong qh bit or byte shows; the others random scales, nibbles and qh.</summary>
    [Fact]
    public void Q5KPrefillIsExactAtTheInt16Bound()
    {
        var wq = Q5KBoundRows(out int rb);
        PrefillAtTheBoundMatches(GgmlType.Q5_K, wq, rb, 19, 5, 768, run: 3);
    }

    /// <summary>19 Q5_K rows of 768 for the int16-bound tests (<see cref="Q5KPrefillIsExactAtTheInt16Bound"/>).</summary>
    static byte[] Q5KBoundRows(out int rb)
    {
        const int n = 768, rows = 19, nb = n / 256;
        rb = nb * 176;
        var wq = new byte[rows * rb];
        var rng = new Random(7);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                int o = r * rb + i * 176;
                BitConverter.TryWriteBytes(wq.AsSpan(o), Fp16.FromSingle(0.01f * (1 + r) + i / 64f));
                BitConverter.TryWriteBytes(wq.AsSpan(o + 2), Fp16.FromSingle(0.003f * (r + 1) - 0.001f * i));
                for (int j = 0; j < 12; j++) wq[o + 4 + j] = r is 0 or 2 ? (byte)0xFF : (byte)rng.Next(256);
                for (int j = 0; j < 32; j++) wq[o + 16 + j] = r is 0 or 2 ? (byte)0xFF : r == 1 ? (byte)0 : (byte)rng.Next(256);
                for (int j = 0; j < 128; j++) wq[o + 48 + j] = r == 0 ? (byte)0xFF : r is 1 or 2 ? (byte)0 : (r + i + j / 4) % 3 == 0 ? (byte)0xFF : (byte)rng.Next(256);
            }
        return wq;
    }

    /// <summary>
    /// The AVX2 K-quant kernels, called directly so that they are checked on AVX-512 machines too (where RowKernels runs
    /// its AVX-512 kernels instead): the eight-row prefill kernels (VecDot.DotK4Rows8Avx2, VecDot.DotQ6KRows8Avx2,
    /// VecDot.DotQ2KRows8Avx2, VecDot.DotQ3KRows8Avx2: rows in lanes, a sub-block's eight — Q5_K, Q2_K and Q3_K: four,
    /// Q6_K: two — steps added in int16) give every row the bits of the one-row decode kernel (VecDot.DotK4RowAvx2,
    /// VecDot.DotQ6KAvx2, VecDot.DotQ2KAvx2, VecDot.DotQ3KAvx2), within 1e-5 relative + 1e-3 of the scalar reference
    /// on ggml's activations, at the int16 bound (the rows of the Q4K/Q5K/Q6KPrefillIsExactAtTheInt16Bound tests,
    /// activation quants ±127; Q2_K, Q3_K: quantized random rows) and on random activations; 19 rows are groups of 8,
    /// 8 and 3. Where AVX-512 is present, its kernels
    /// (RowKernels.Run) give the same bits again: both do the same exact integers and the same two float chains.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q5_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.Q2_K)]
    [InlineData(GgmlType.Q3_K)]
    public void KQuantAvx2PrefillAndDecodeGiveTheSameBitsAtTheInt16Bound(GgmlType type)
    {
        if (!(Avx2.IsSupported && Fma.IsSupported)) return; // (no AVX2: these kernels are not used)
        const int n = 768, rows = 19, B = 9, nb = n / 256;
        var rng = new Random(11);
        var wq = type == GgmlType.Q4_K ? Q4KBoundRows(out int rb) : type == GgmlType.Q5_K ? Q5KBoundRows(out rb)
            : type == GgmlType.Q6_K ? Q6KBoundRows(out rb) : RandomRows(type, n, rows, rng, out rb); // Q2_K, Q3_K: far from the bound (4·2·7·127)
        int ab = (int)GgmlTypeInfo.RowBytes(GgmlType.Q8_K, n), fb = RowKernels.ActivationRowBytes(type, n);
        var act = new byte[B * ab];       // the AVX2 layout (Q4_K, Q5_K: RowKernels.PrepareQ8KForK4Avx2; Q6_K, Q2_K, Q3_K: block_q8_K)
        var reference = new byte[B * ab]; // ggml's block_q8_K
        var native = new byte[B * fb];    // this machine's layout for RowKernels.Run
        for (int b = 0; b < B; b++)
        {
            var x = b < 5 ? Enumerable.Range(0, n).Select(j => (b == 0 || (j / 5 + b) % 2 == 0) ? -2f : 2f).ToArray()
                          : Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            if (type is GgmlType.Q6_K or GgmlType.Q2_K or GgmlType.Q3_K) VecDot.QuantizeActivations(GgmlType.Q8_K, x, act.AsSpan(b * ab, ab));
            else RowKernels.PrepareQ8KForK4Avx2(x, act.AsSpan(b * ab, ab));
            VecDot.QuantizeActivations(GgmlType.Q8_K, x, reference.AsSpan(b * ab, ab));
            RowKernels.PrepareActivations(type, x, native.AsSpan(b * fb, fb));
        }
        Assert.Equal(-127, (sbyte)reference[4]); // the bound is reached
        var y = new float[B * rows];
        var acc = new System.Runtime.Intrinsics.Vector256<float>[2 * B];
        var isum = new System.Runtime.Intrinsics.Vector256<int>[B];
        var values = new System.Runtime.Intrinsics.Vector256<byte>[64];
        fixed (byte* pw = wq) fixed (byte* pa = act) fixed (byte* pn = native) fixed (float* py = y)
        fixed (System.Runtime.Intrinsics.Vector256<float>* pacc = acc) fixed (System.Runtime.Intrinsics.Vector256<int>* pisum = isum)
        fixed (System.Runtime.Intrinsics.Vector256<byte>* pu = values)
        {
            for (int r = 0; r < rows; r += 8)
                if (type == GgmlType.Q4_K) VecDot.DotK4Rows8Avx2<VecDot.Q4KWeights>(pw + r * rb, rb, Math.Min(8, rows - r), pa, ab, B, nb, py + r, rows, pacc, pisum);
                else if (type == GgmlType.Q5_K) VecDot.DotK4Rows8Avx2<VecDot.Q5KWeights>(pw + r * rb, rb, Math.Min(8, rows - r), pa, ab, B, nb, py + r, rows, pacc, pisum);
                else if (type == GgmlType.Q6_K) VecDot.DotQ6KRows8Avx2(pw + r * rb, rb, Math.Min(8, rows - r), pa, ab, B, nb, py + r, rows, pacc, pisum, pu);
                else if (type == GgmlType.Q2_K) VecDot.DotQ2KRows8Avx2(pw + r * rb, rb, Math.Min(8, rows - r), pa, ab, B, nb, py + r, rows, pacc, pisum);
                else VecDot.DotQ3KRows8Avx2(pw + r * rb, rb, Math.Min(8, rows - r), pa, ab, B, nb, py + r, rows, pacc, pisum);
            for (int b = 0; b < B; b++)
                for (int r = 0; r < rows; r++)
                {
                    float got = y[b * rows + r];
                    float alone = type == GgmlType.Q4_K ? VecDot.DotQ4KRowAvx2(pw + r * rb, pa + b * ab, nb)
                        : type == GgmlType.Q5_K ? VecDot.DotQ5KRowAvx2(pw + r * rb, pa + b * ab, nb)
                        : type == GgmlType.Q6_K ? VecDot.DotQ6KAvx2(pw + r * rb, pa + b * ab, nb)
                        : type == GgmlType.Q2_K ? VecDot.DotQ2KAvx2(pw + r * rb, pa + b * ab, nb) : VecDot.DotQ3KAvx2(pw + r * rb, pa + b * ab, nb);
                    Assert.True(alone.Equals(got), $"{type} b={b} row {r}: prefill {got} vs decode {alone}");
                    float scalar = VecDot.DotScalar(type, wq.AsSpan(r * rb, rb), reference.AsSpan(b * ab, ab), n);
                    Assert.True(Math.Abs(got - scalar) <= 1e-5f * Math.Abs(scalar) + 1e-3f, $"{type} b={b} row {r}: {got} vs scalar {scalar}");
                    if (Avx512BW.IsSupported)
                    {
                        float wide;
                        RowKernels.Run(type, pw + r * rb, rb, pn + b * fb, fb, 1, n, &wide, 1);
                        Assert.True(wide.Equals(got), $"{type} b={b} row {r}: AVX2 {got} vs AVX-512 {wide}");
                    }
                }
        }
    }
    /// <summary>IQ4_XS prefill on AVX-512 (VecDot.DotIQ4XSRows16Avx512) multiplies |level| by the activation with the
    /// level's sign in <c>vpmaddubsw</c>: at the bound — every level −127 (index 0) or 113, activation quants ±127 — a
    /// pair reaches ±32258, and it must stay exact: the scalar reference's value, and the bits of each row alone (the
    /// exact decode kernel). Scales at 63 and 0 (ls − 32 = 31, −32), the others random; 19 rows.</summary>
    [Fact]
    public void IQ4XSPrefillIsExactAtTheInt16Bound()
    {
        const GgmlType type = GgmlType.IQ4_XS;
        const int n = 768, rows = 19, B = 5, nb = n / 256, rb = nb * 136;
        var wq = new byte[rows * rb];
        var rng = new Random(8);
        for (int r = 0; r < rows; r++)
            for (int i = 0; i < nb; i++)
            {
                int o = r * rb + i * 136;
                BitConverter.TryWriteBytes(wq.AsSpan(o), Fp16.FromSingle(0.01f * (1 + r) + i / 64f));
                // scales_h (2 B) and scales_l (4 B): row 0 every scale 63, row 1 every scale 0, the others random
                for (int j = 2; j < 8; j++) wq[o + j] = r == 0 ? (byte)0xFF : r == 1 ? (byte)0 : (byte)rng.Next(256);
                // row 0, 1: every index 0 (level −127); row 2: every index 15 (113); the others random runs
                for (int j = 0; j < 128; j++) wq[o + 8 + j] = r < 2 ? (byte)0 : r == 2 ? (byte)0xFF : (r + i + j / 4) % 3 == 0 ? (byte)0 : (byte)rng.Next(256);
            }
        PrefillAtTheBoundMatches(type, wq, rb, rows, B, n, run: 3);
    }
}
