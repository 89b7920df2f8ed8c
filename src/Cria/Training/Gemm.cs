using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Cria.Kernels;

namespace Cria.Training;

/// <summary>
/// F32 matrix products of training, row-major, split across a <see cref="WorkerPool"/> by blocks of the output.
/// Each output element is one ordered sum computed by one worker, so results do not depend on the thread count.
/// <list type="bullet">
/// <item><see cref="MatMulNT"/>: C[m,n] = A[m,k] · B[n,k]ᵀ — the forward y = x·Wᵀ (W stored [out, in] as in GGUF).</item>
/// <item><see cref="MatMulNNAccumulate"/>: C[m,n] += A[m,k] · B[k,n] — dx += dy·W.</item>
/// <item><see cref="MatMulTNAccumulate"/>: C[m,n] += A[k,m]ᵀ · B[k,n] — dW += dyᵀ·x.</item>
/// </list>
/// </summary>
public sealed unsafe class Gemm : ParallelJob
{
    const int BlockM = 64, BlockN = 128, BlockK = 256;
    readonly WorkerPool _pool;
    bool _nt;
    float* _a, _b, _c;
    int _m, _n, _k, _blocksN, _items, _next;

    public Gemm(WorkerPool pool) => _pool = pool;

    public void MatMulNT(float* a, float* b, float* c, int m, int n, int k) => Run(true, a, b, c, m, n, k);

    public void MatMulNNAccumulate(float* a, float* b, float* c, int m, int n, int k)
    {
        _sr = k; _sp = 1;
        Run(false, a, b, c, m, n, k);
    }

    /// <summary>C[m,n] += A[k,m]ᵀ · B[k,n] — the weight gradient dW += dyᵀ·x without transposing dy.</summary>
    public void MatMulTNAccumulate(float* a, float* b, float* c, int m, int n, int k)
    {
        _sr = 1; _sp = m;
        Run(false, a, b, c, m, n, k);
    }

    long _sr, _sp; // element (r, p) of A is at a[r·_sr + p·_sp]

    void Run(bool nt, float* a, float* b, float* c, int m, int n, int k)
    {
        _nt = nt; _a = a; _b = b; _c = c; _m = m; _n = n; _k = k;
        _blocksN = (n + BlockN - 1) / BlockN;
        _items = (m + BlockM - 1) / BlockM * _blocksN;
        _next = 0;
        _pool.Run(this);
    }

    public override void Execute(int worker, int workerCount)
    {
        while (true)
        {
            int item = Interlocked.Increment(ref _next) - 1;
            if (item >= _items) return;
            int m0 = item / _blocksN * BlockM, n0 = item % _blocksN * BlockN;
            int m1 = Math.Min(_m, m0 + BlockM), n1 = Math.Min(_n, n0 + BlockN);
            if (_nt) BlockNT(m0, m1, n0, n1); else BlockNN(m0, m1, n0, n1);
        }
    }

    void BlockNT(int m0, int m1, int n0, int n1)
    {
        float* a = _a, b = _b, c = _c; int n = _n, k = _k;
        int i = m0;
        for (; i + 4 <= m1; i += 4)
        {
            int j = n0;
            if (MulAdd.Portable)
            {
                if (MulAdd.Fused) for (; j + 4 <= n1; j += 4) Dot4x4Portable<FusedMulAdd>(a + (long)i * k, b + (long)j * k, k, c + (long)i * n + j, n);
                else for (; j + 4 <= n1; j += 4) Dot4x4Portable<SplitMulAdd>(a + (long)i * k, b + (long)j * k, k, c + (long)i * n + j, n);
            }
            for (; j + 4 <= n1; j += 4) Dot4x4(a + (long)i * k, b + (long)j * k, k, c + (long)i * n + j, n);
            for (; j < n1; j++)
                for (int r = 0; r < 4; r++) c[(long)(i + r) * n + j] = Dot(a + (long)(i + r) * k, b + (long)j * k, k);
        }
        for (; i < m1; i++)
            for (int j = n0; j < n1; j++) c[(long)i * n + j] = Dot(a + (long)i * k, b + (long)j * k, k);
    }

    /// <summary>K is walked in chunks of <see cref="BlockK"/> so a block's slices of A and B stay in L2 (fixed chunking: the
    /// summation order does not depend on the thread count).</summary>
    void BlockNN(int m0, int m1, int n0, int n1)
    {
        float* a = _a, b = _b, c = _c; int n = _n, k = _k;
        long sr = _sr, sp = _sp;
        for (int k0 = 0; k0 < k; k0 += BlockK)
        {
            int kc = Math.Min(BlockK, k - k0);
            float* ak = a + k0 * sp, bk = b + (long)k0 * n;
            int i = m0;
            for (; i + 4 <= m1; i += 4)
            {
                int j = n0;
                if (MulAdd.Portable)
                {
                    if (MulAdd.Fused) for (; j + 8 <= n1; j += 8) Axpy4x8Portable<FusedMulAdd>(ak + i * sr, sr, sp, kc, bk + j, n, c + (long)i * n + j, n);
                    else for (; j + 8 <= n1; j += 8) Axpy4x8Portable<SplitMulAdd>(ak + i * sr, sr, sp, kc, bk + j, n, c + (long)i * n + j, n);
                }
                for (; j + 32 <= n1; j += 32) Axpy4x32(ak + i * sr, sr, sp, kc, bk + j, n, c + (long)i * n + j, n);
                for (; j < n1; j++)
                    for (int r = 0; r < 4; r++) c[(long)(i + r) * n + j] += ColumnDot(ak + (i + r) * sr, sp, bk + j, n, kc);
            }
            for (; i < m1; i++)
                for (int j = n0; j < n1; j++) c[(long)i * n + j] += ColumnDot(ak + i * sr, sp, bk + j, n, kc);
        }
    }

    /// <summary>Σ_p a[p·sp] · b[p·ldb] in order (scalar; only for ragged edges).</summary>
    static float ColumnDot(float* a, long sp, float* b, int ldb, int k)
    {
        float s = 0;
        for (int p = 0; p < k; p++) s = MathF.FusedMultiplyAdd(a[p * sp], b[(long)p * ldb], s);
        return s;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int k)
    {
        int p = 0;
        float s = 0;
        if (MulAdd.Portable)
            return Ops.Dot(new ReadOnlySpan<float>(a, k), new ReadOnlySpan<float>(b, k)); // the portable tier's
        if (k >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; p + 8 <= k; p += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + p), Vector256.Load(b + p), acc);
            s = Vector256.Sum(acc);
        }
        for (; p < k; p++) s = MathF.FusedMultiplyAdd(a[p], b[p], s);
        return s;
    }

    /// <summary>c[r·ldc + s] = dot(a row r, b row s) for a 4×4 tile: 16 accumulators, 8 loads per 16 FMAs.</summary>
    static void Dot4x4(float* a, float* b, int k, float* c, int ldc)
    {
        var c00 = Vector256<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        var c20 = c00; var c21 = c00; var c22 = c00; var c23 = c00;
        var c30 = c00; var c31 = c00; var c32 = c00; var c33 = c00;
        float* a0 = a, a1 = a + k, a2 = a + 2L * k, a3 = a + 3L * k;
        float* b0 = b, b1 = b + k, b2 = b + 2L * k, b3 = b + 3L * k;
        int p = 0;
        for (; p + 8 <= k; p += 8)
        {
            var x0 = Vector256.Load(a0 + p); var x1 = Vector256.Load(a1 + p); var x2 = Vector256.Load(a2 + p); var x3 = Vector256.Load(a3 + p);
            var y0 = Vector256.Load(b0 + p); var y1 = Vector256.Load(b1 + p); var y2 = Vector256.Load(b2 + p); var y3 = Vector256.Load(b3 + p);
            c00 = Vector256.FusedMultiplyAdd(x0, y0, c00); c01 = Vector256.FusedMultiplyAdd(x0, y1, c01); c02 = Vector256.FusedMultiplyAdd(x0, y2, c02); c03 = Vector256.FusedMultiplyAdd(x0, y3, c03);
            c10 = Vector256.FusedMultiplyAdd(x1, y0, c10); c11 = Vector256.FusedMultiplyAdd(x1, y1, c11); c12 = Vector256.FusedMultiplyAdd(x1, y2, c12); c13 = Vector256.FusedMultiplyAdd(x1, y3, c13);
            c20 = Vector256.FusedMultiplyAdd(x2, y0, c20); c21 = Vector256.FusedMultiplyAdd(x2, y1, c21); c22 = Vector256.FusedMultiplyAdd(x2, y2, c22); c23 = Vector256.FusedMultiplyAdd(x2, y3, c23);
            c30 = Vector256.FusedMultiplyAdd(x3, y0, c30); c31 = Vector256.FusedMultiplyAdd(x3, y1, c31); c32 = Vector256.FusedMultiplyAdd(x3, y2, c32); c33 = Vector256.FusedMultiplyAdd(x3, y3, c33);
        }
        float s00 = Vector256.Sum(c00), s01 = Vector256.Sum(c01), s02 = Vector256.Sum(c02), s03 = Vector256.Sum(c03);
        float s10 = Vector256.Sum(c10), s11 = Vector256.Sum(c11), s12 = Vector256.Sum(c12), s13 = Vector256.Sum(c13);
        float s20 = Vector256.Sum(c20), s21 = Vector256.Sum(c21), s22 = Vector256.Sum(c22), s23 = Vector256.Sum(c23);
        float s30 = Vector256.Sum(c30), s31 = Vector256.Sum(c31), s32 = Vector256.Sum(c32), s33 = Vector256.Sum(c33);
        for (; p < k; p++)
        {
            float x0 = a0[p], x1 = a1[p], x2 = a2[p], x3 = a3[p], y0 = b0[p], y1 = b1[p], y2 = b2[p], y3 = b3[p];
            s00 += x0 * y0; s01 += x0 * y1; s02 += x0 * y2; s03 += x0 * y3;
            s10 += x1 * y0; s11 += x1 * y1; s12 += x1 * y2; s13 += x1 * y3;
            s20 += x2 * y0; s21 += x2 * y1; s22 += x2 * y2; s23 += x2 * y3;
            s30 += x3 * y0; s31 += x3 * y1; s32 += x3 * y2; s33 += x3 * y3;
        }
        c[0] = s00; c[1] = s01; c[2] = s02; c[3] = s03; c += ldc;
        c[0] = s10; c[1] = s11; c[2] = s12; c[3] = s13; c += ldc;
        c[0] = s20; c[1] = s21; c[2] = s22; c[3] = s23; c += ldc;
        c[0] = s30; c[1] = s31; c[2] = s32; c[3] = s33;
    }

    // ---- The portable tier (128-bit vectors: ARM64's NEON, x86 without AVX2), multiply-add fused or split as the
    // hardware has it (IMulAdd). The same tiles at half the width where registers allow: an NT element is one 4-lane
    // chain then a horizontal sum (Dot: Ops.Dot's); an NN element is its own chain over p, so fused it has the bits of Axpy4x32's.

    /// <summary><see cref="Dot4x4"/> on 128-bit vectors: 16 accumulators, 8 loads per 16 multiply-adds (ARM64 has 32
    /// vector registers; SSE's 16 spill a few).</summary>
    internal static void Dot4x4Portable<TMac>(float* a, float* b, int k, float* c, int ldc) where TMac : IMulAdd
    {
        var c00 = Vector128<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        var c20 = c00; var c21 = c00; var c22 = c00; var c23 = c00;
        var c30 = c00; var c31 = c00; var c32 = c00; var c33 = c00;
        float* a0 = a, a1 = a + k, a2 = a + 2L * k, a3 = a + 3L * k;
        float* b0 = b, b1 = b + k, b2 = b + 2L * k, b3 = b + 3L * k;
        int p = 0;
        for (; p + 4 <= k; p += 4)
        {
            var x0 = Vector128.Load(a0 + p); var x1 = Vector128.Load(a1 + p); var x2 = Vector128.Load(a2 + p); var x3 = Vector128.Load(a3 + p);
            var y0 = Vector128.Load(b0 + p); var y1 = Vector128.Load(b1 + p); var y2 = Vector128.Load(b2 + p); var y3 = Vector128.Load(b3 + p);
            c00 = TMac.Apply(x0, y0, c00); c01 = TMac.Apply(x0, y1, c01); c02 = TMac.Apply(x0, y2, c02); c03 = TMac.Apply(x0, y3, c03);
            c10 = TMac.Apply(x1, y0, c10); c11 = TMac.Apply(x1, y1, c11); c12 = TMac.Apply(x1, y2, c12); c13 = TMac.Apply(x1, y3, c13);
            c20 = TMac.Apply(x2, y0, c20); c21 = TMac.Apply(x2, y1, c21); c22 = TMac.Apply(x2, y2, c22); c23 = TMac.Apply(x2, y3, c23);
            c30 = TMac.Apply(x3, y0, c30); c31 = TMac.Apply(x3, y1, c31); c32 = TMac.Apply(x3, y2, c32); c33 = TMac.Apply(x3, y3, c33);
        }
        float s00 = Vector128.Sum(c00), s01 = Vector128.Sum(c01), s02 = Vector128.Sum(c02), s03 = Vector128.Sum(c03);
        float s10 = Vector128.Sum(c10), s11 = Vector128.Sum(c11), s12 = Vector128.Sum(c12), s13 = Vector128.Sum(c13);
        float s20 = Vector128.Sum(c20), s21 = Vector128.Sum(c21), s22 = Vector128.Sum(c22), s23 = Vector128.Sum(c23);
        float s30 = Vector128.Sum(c30), s31 = Vector128.Sum(c31), s32 = Vector128.Sum(c32), s33 = Vector128.Sum(c33);
        for (; p < k; p++)
        {
            float x0 = a0[p], x1 = a1[p], x2 = a2[p], x3 = a3[p], y0 = b0[p], y1 = b1[p], y2 = b2[p], y3 = b3[p];
            s00 = TMac.Apply(x0, y0, s00); s01 = TMac.Apply(x0, y1, s01); s02 = TMac.Apply(x0, y2, s02); s03 = TMac.Apply(x0, y3, s03);
            s10 = TMac.Apply(x1, y0, s10); s11 = TMac.Apply(x1, y1, s11); s12 = TMac.Apply(x1, y2, s12); s13 = TMac.Apply(x1, y3, s13);
            s20 = TMac.Apply(x2, y0, s20); s21 = TMac.Apply(x2, y1, s21); s22 = TMac.Apply(x2, y2, s22); s23 = TMac.Apply(x2, y3, s23);
            s30 = TMac.Apply(x3, y0, s30); s31 = TMac.Apply(x3, y1, s31); s32 = TMac.Apply(x3, y2, s32); s33 = TMac.Apply(x3, y3, s33);
        }
        c[0] = s00; c[1] = s01; c[2] = s02; c[3] = s03; c += ldc;
        c[0] = s10; c[1] = s11; c[2] = s12; c[3] = s13; c += ldc;
        c[0] = s20; c[1] = s21; c[2] = s22; c[3] = s23; c += ldc;
        c[0] = s30; c[1] = s31; c[2] = s32; c[3] = s33;
    }

    /// <summary><see cref="Axpy4x32"/> on 128-bit vectors, 8 columns: per p, 2 loads and 4 broadcasts feed 8 multiply-adds.</summary>
    internal static void Axpy4x8Portable<TMac>(float* a, long sr, long sp, int k, float* b, int ldb, float* c, int ldc) where TMac : IMulAdd
    {
        var c00 = Vector128<float>.Zero; var c01 = c00; var c10 = c00; var c11 = c00;
        var c20 = c00; var c21 = c00; var c30 = c00; var c31 = c00;
        float* a0 = a, a1 = a + sr, a2 = a + 2 * sr, a3 = a + 3 * sr;
        for (int p = 0; p < k; p++)
        {
            float* bp = b + (long)p * ldb;
            var y0 = Vector128.Load(bp); var y1 = Vector128.Load(bp + 4);
            long ap = p * sp;
            var x = Vector128.Create(a0[ap]); c00 = TMac.Apply(x, y0, c00); c01 = TMac.Apply(x, y1, c01);
            x = Vector128.Create(a1[ap]); c10 = TMac.Apply(x, y0, c10); c11 = TMac.Apply(x, y1, c11);
            x = Vector128.Create(a2[ap]); c20 = TMac.Apply(x, y0, c20); c21 = TMac.Apply(x, y1, c21);
            x = Vector128.Create(a3[ap]); c30 = TMac.Apply(x, y0, c30); c31 = TMac.Apply(x, y1, c31);
        }
        (Vector128.Load(c) + c00).Store(c); (Vector128.Load(c + 4) + c01).Store(c + 4); c += ldc;
        (Vector128.Load(c) + c10).Store(c); (Vector128.Load(c + 4) + c11).Store(c + 4); c += ldc;
        (Vector128.Load(c) + c20).Store(c); (Vector128.Load(c + 4) + c21).Store(c + 4); c += ldc;
        (Vector128.Load(c) + c30).Store(c); (Vector128.Load(c + 4) + c31).Store(c + 4);
    }

    /// <summary>c[r, 0..32] += Σ_p a[r, p] · b[p, 0..32] for 4 rows: per p, 4 loads and 4 broadcasts feed 16 FMAs.</summary>
    internal static void Axpy4x32(float* a, long sr, long sp, int k, float* b, int ldb, float* c, int ldc)
    {
        var c00 = Vector256<float>.Zero; var c01 = c00; var c02 = c00; var c03 = c00;
        var c10 = c00; var c11 = c00; var c12 = c00; var c13 = c00;
        var c20 = c00; var c21 = c00; var c22 = c00; var c23 = c00;
        var c30 = c00; var c31 = c00; var c32 = c00; var c33 = c00;
        float* a0 = a, a1 = a + sr, a2 = a + 2 * sr, a3 = a + 3 * sr;
        for (int p = 0; p < k; p++)
        {
            float* bp = b + (long)p * ldb;
            var y0 = Vector256.Load(bp); var y1 = Vector256.Load(bp + 8); var y2 = Vector256.Load(bp + 16); var y3 = Vector256.Load(bp + 24);
            long ap = p * sp;
            var x = Vector256.Create(a0[ap]);
            c00 = Vector256.FusedMultiplyAdd(x, y0, c00); c01 = Vector256.FusedMultiplyAdd(x, y1, c01); c02 = Vector256.FusedMultiplyAdd(x, y2, c02); c03 = Vector256.FusedMultiplyAdd(x, y3, c03);
            x = Vector256.Create(a1[ap]);
            c10 = Vector256.FusedMultiplyAdd(x, y0, c10); c11 = Vector256.FusedMultiplyAdd(x, y1, c11); c12 = Vector256.FusedMultiplyAdd(x, y2, c12); c13 = Vector256.FusedMultiplyAdd(x, y3, c13);
            x = Vector256.Create(a2[ap]);
            c20 = Vector256.FusedMultiplyAdd(x, y0, c20); c21 = Vector256.FusedMultiplyAdd(x, y1, c21); c22 = Vector256.FusedMultiplyAdd(x, y2, c22); c23 = Vector256.FusedMultiplyAdd(x, y3, c23);
            x = Vector256.Create(a3[ap]);
            c30 = Vector256.FusedMultiplyAdd(x, y0, c30); c31 = Vector256.FusedMultiplyAdd(x, y1, c31); c32 = Vector256.FusedMultiplyAdd(x, y2, c32); c33 = Vector256.FusedMultiplyAdd(x, y3, c33);
        }
        AddStore(c, c00, c01, c02, c03); c += ldc;
        AddStore(c, c10, c11, c12, c13); c += ldc;
        AddStore(c, c20, c21, c22, c23); c += ldc;
        AddStore(c, c30, c31, c32, c33);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void AddStore(float* c, Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3)
    {
        (Vector256.Load(c) + v0).Store(c);
        (Vector256.Load(c + 8) + v1).Store(c + 8);
        (Vector256.Load(c + 16) + v2).Store(c + 16);
        (Vector256.Load(c + 24) + v3).Store(c + 24);
    }
}
