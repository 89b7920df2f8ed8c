using System.Runtime.InteropServices;
using Cria.Kernels;
using Cria.Models;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Kernels;

/// <summary>
/// The decode schedule of <see cref="MatMulJob"/>: one contiguous range per worker, equal in weight bytes, owners from
/// the front and the others from the back. Whoever runs which rows — all workers, the caller alone, workers in any
/// order — every output equals the row kernel's on its own row.
/// </summary>
public unsafe class MatMulJobTests
{
    sealed class Matrices : IDisposable
    {
        public readonly WeightMatrix[] W;
        public readonly byte*[] Act;
        public readonly int[] ActBytes;
        public readonly float*[] Y, Reference;
        readonly List<nint> _blocks = new();

        public Matrices(int cols, (GgmlType Type, int Rows)[] parts)
        {
            var rng = new Random(5);
            var x = new float[cols];
            for (int i = 0; i < cols; i++) x[i] = (float)(rng.NextDouble() - 0.5);
            W = new WeightMatrix[parts.Length]; Act = new byte*[parts.Length]; ActBytes = new int[parts.Length];
            Y = new float*[parts.Length]; Reference = new float*[parts.Length];
            for (int p = 0; p < parts.Length; p++)
            {
                var (type, rows) = parts[p];
                int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
                byte* data = Alloc((long)rows * rowBytes);
                var src = new float[cols];
                for (int r = 0; r < rows; r++)
                {
                    for (int c = 0; c < cols; c++) src[c] = (float)(rng.NextDouble() - 0.5);
                    Quantize.Row(type, src, new Span<byte>(data + (long)r * rowBytes, rowBytes));
                }
                W[p] = new WeightMatrix($"w{p}", type, data, rows, cols);
                ActBytes[p] = RowKernels.ActivationRowBytes(type, cols);
                Act[p] = Alloc(ActBytes[p]);
                RowKernels.PrepareActivations(type, x, new Span<byte>(Act[p], ActBytes[p]));
                Y[p] = (float*)Alloc(rows * 4L);
                Reference[p] = (float*)Alloc(rows * 4L);
                RowKernels.RunRows(type, data, rowBytes, 0, rows, Act[p], ActBytes[p], cols, Reference[p]);
            }
        }

        byte* Alloc(long n) { var p = (byte*)NativeMemory.AlignedAlloc((nuint)n, 64); NativeMemory.Fill(p, (nuint)n, 0xFF); _blocks.Add((nint)p); return p; }

        public void RecomputeReference()
        {
            for (int p = 0; p < W.Length; p++)
                RowKernels.RunRows(W[p].Type, W[p].Data, W[p].RowBytes, 0, W[p].Rows, Act[p], ActBytes[p], W[p].Cols, Reference[p]);
        }

        public MatMulJob Job(int workers)
        {
            var job = new MatMulJob();
            job.Clear();
            for (int p = 0; p < W.Length; p++)
            {
                NativeMemory.Fill(Y[p], (nuint)(W[p].Rows * 4L), 0xFF); // NaN: a row nobody ran stays NaN
                job.Add(W[p], Act[p], ActBytes[p], 1, Y[p]);
            }
            job.Split(workers);
            return job;
        }

        public void AssertAllRowsMatch(string how)
        {
            for (int p = 0; p < W.Length; p++)
                for (int r = 0; r < W[p].Rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(Y[p][r]) == BitConverter.SingleToInt32Bits(Reference[p][r]),
                        $"{how}: part {p} ({W[p].Type}) row {r}: {Y[p][r]} vs row kernel {Reference[p][r]}");
        }

        public void Dispose() { foreach (var b in _blocks) NativeMemory.AlignedFree((void*)b); }
    }

    // Q/K/V-like: a large Q4_K part, then two small ones of other row sizes (Q6_K, Q3_K: no paired kernel, so one
    // range per worker)
    static readonly (GgmlType, int)[] Parts = [(GgmlType.Q4_K, 300), (GgmlType.Q6_K, 37), (GgmlType.Q3_K, 53)];
    // the legacy types: groups of eight rows paired across two ranges per worker (RowKernels.RunGroupPair), groups of
    // different types one after the other
    static readonly (GgmlType, int)[] LegacyParts = [(GgmlType.Q4_0, 300), (GgmlType.Q5_1, 37), (GgmlType.Q4_0, 53)];
    static readonly (GgmlType, int)[] Q80Parts = [(GgmlType.Q8_0, 200), (GgmlType.Q8_0, 61)];
    // all F16: two ranges per worker, rows paired across them (RowKernels.RunPair)
    static readonly (GgmlType, int)[] F16Parts = [(GgmlType.F16, 300), (GgmlType.F16, 37), (GgmlType.F16, 53)];
    // all BF16: paired on AVX2 without AVX-512 (RowKernels.DotBF16Avx2Pair)
    static readonly (GgmlType, int)[] Bf16Parts = [(GgmlType.BF16, 300), (GgmlType.BF16, 37), (GgmlType.BF16, 53)];

    // Q4_K_M-like: Q4_K and Q6_K, both with paired kernels; pairs of rows of different types run one after the other
    static readonly (GgmlType, int)[] KParts = [(GgmlType.Q4_K, 300), (GgmlType.Q6_K, 37), (GgmlType.Q4_K, 53)];

    static readonly (GgmlType, int)[] Q6KParts = [(GgmlType.Q6_K, 40), (GgmlType.Q6_K, 41)];

    // F16 large enough that every range spans several 256 KiB chunks (MatMulJob.ChunkRows): owners advance chunk by
    // chunk and the others take several from the back
    static readonly (GgmlType, int)[] F16BigParts = [(GgmlType.F16, 3000), (GgmlType.F16, 700)];
    static (GgmlType, int)[] PartSet(string name) => name switch
    {
        "f16" => F16Parts, "bf16" => Bf16Parts, "f16big" => F16BigParts, "k" => KParts, "q6k" => Q6KParts, "q80" => Q80Parts, "legacy" => LegacyParts, _ => Parts,
    };

    [Theory]
    [InlineData(1, "mixed")]
    [InlineData(2, "mixed")]
    [InlineData(3, "mixed")]
    [InlineData(1, "f16")]
    [InlineData(2, "f16")]
    [InlineData(3, "f16")]
    [InlineData(2, "bf16")]
    [InlineData(2, "k")]
    [InlineData(3, "k")]
    [InlineData(2, "legacy")]
    public void Decode_ranges_are_contiguous_and_equal_in_weight_bytes(int workers, string parts)
    {
        using var m = new Matrices(512, PartSet(parts));
        var job = m.Job(workers);
        int ranges = job.RangeCount(workers);
        // Two ranges per worker when every part has a paired kernel: the F16 and K sets with AVX-512, the F16 set with
        // AVX2 + FMA (no pairs for Q4_K/Q6_K there), the legacy set with AVX2 + FMA; never the mixed set (Q3_K has none).
        bool paired = m.W.All(w => RowKernels.HasPairedDecode(w.Type, w.Cols));
        bool avx512 = System.Runtime.Intrinsics.X86.Avx512BW.IsSupported;
        bool avx2 = System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported;
        bool vector512 = System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated;
        Assert.Equal(parts switch { "mixed" => false, "f16" => avx512 || avx2, "bf16" => avx2 && !vector512, "legacy" => avx2, _ => avx512 }, paired);
        Assert.Equal(paired ? 2 * workers : workers, ranges);
        long total = m.W.Sum(w => w.ByteSize);
        int totalRows = m.W.Sum(w => w.Rows), expectFront = 0;
        int maxRowBytes = m.W.Max(w => w.RowBytes);
        for (int w = 0; w < ranges; w++)
        {
            var (front, back) = job.Range(w);
            Assert.Equal(expectFront, front);
            expectFront = back;
            long bytes = 0;
            for (int row = front; row < back; row++)
            {
                int p = 0, first = 0;
                while (row >= first + m.W[p].Rows) { first += m.W[p].Rows; p++; }
                bytes += m.W[p].RowBytes;
            }
            Assert.InRange(bytes, total / ranges - maxRowBytes, total / ranges + maxRowBytes);
        }
        Assert.Equal(totalRows, expectFront);
    }

    [Theory]
    [InlineData("mixed")]
    [InlineData("f16")]
    [InlineData("f16big")]
    [InlineData("bf16")]
    [InlineData("k")]
    [InlineData("q6k")]
    [InlineData("q80")]
    [InlineData("legacy")]
    public void Every_row_is_computed_once_whoever_runs_it(string parts)
    {
        using var m = new Matrices(512, PartSet(parts));
        if (parts == "f16")
        {
            // the rows are finite, so the job runs the unchecked F16 kernels; the reference (RunRows' default) the checked ones
            Assert.False(m.W[0].NonFiniteF16);
            m.Job(3).Execute(0, 3);
            m.AssertAllRowsMatch("finite F16, caller alone");
            // an F16 infinity in one row: the matrix, made again, knows it; that row's pair goes through the single-row
            // kernels, and the row reads ±∞ or NaN
            ((ushort*)m.W[0].Data)[5 * 512 + 7] = 0x7C00;
            m.W[0] = new WeightMatrix(m.W[0].Name, m.W[0].Type, m.W[0].Data, m.W[0].Rows, m.W[0].Cols);
            Assert.True(m.W[0].NonFiniteF16);
            m.RecomputeReference();
            Assert.True(float.IsInfinity(m.Reference[0][5]) || float.IsNaN(m.Reference[0][5]));
        }
        // the caller alone (the other workers never start): it runs its range, then takes all of theirs from the back
        m.Job(3).Execute(0, 3);
        m.AssertAllRowsMatch("caller alone");
        // workers one after another, in reverse order
        var job = m.Job(3);
        for (int w = 2; w >= 0; w--) job.Execute(w, 3);
        m.AssertAllRowsMatch("workers in turn");
        // a real pool
        using var pool = new WorkerPool(3);
        for (int rep = 0; rep < 20; rep++)
        {
            pool.Run(m.Job(3));
            m.AssertAllRowsMatch($"pool of 3, run {rep}");
        }
    }
}
