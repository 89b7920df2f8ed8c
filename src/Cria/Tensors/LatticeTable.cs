using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Cria.Tensors;

/// <summary>
/// The search tables of ggml's lattice quantizers (iq2xs_init_impl, iq3xs_init_impl in ggml-quants.c), built from the
/// grids Cria already holds for decoding (<see cref="IQuantGrids"/>). A grid point is <see cref="Dim"/> levels
/// l ∈ [0, 2^<see cref="Bits"/>); the quantizers work with the odd coordinates 2l + 1, and a point's key packs its
/// levels, <see cref="Bits"/> bits each, coordinate 0 lowest. <see cref="Map"/> sends a key to its grid index, or, for a
/// key that is not a grid point, to the list of grid points nearest to it: every point at the
/// <see cref="NearestDistances"/> smallest squared distances, by distance, then by index (ggml's qsort order), which the
/// quantizers search with the block's weights. Only keys a quantizer can form are listed: levels 0–2 for the E8 grids
/// (their quantizers clamp to kMaxQ − 1 = 2), all 4096 keys for the D4 grids. The tables are immutable and built once
/// per type, on first use.
/// </summary>
internal sealed class LatticeTable
{
    /// <summary>Coordinates per grid point: 8 (IQ2_*, IQ1_*) or 4 (IQ3_*).</summary>
    public readonly int Dim;
    /// <summary>Bits per level in a key: 2 (E8 grids) or 3 (D4 grids).</summary>
    public readonly int Bits;
    /// <summary>[gridSize × Dim] the odd coordinates 2l + 1 of each grid point (ggml's kgrid_q2xs / kgrid_q3xs).</summary>
    public readonly byte[] Points;
    /// <summary>[2^(Dim·Bits)] grid index of a key (≥ 0), or −(start + 1) of its list in <see cref="Neighbours"/>;
    /// int.MinValue for keys no quantizer forms.</summary>
    public readonly int[] Map;
    /// <summary>Lists of nearest grid points: a count, then that many grid indices, then padding (index 0) to a whole
    /// number of eights.</summary>
    public readonly ushort[] Neighbours;
    /// <summary>[Dim × Neighbours.Length] coordinate i (2l + 1, as a float) of the point listed at each slot of
    /// <see cref="Neighbours"/>, at i·Neighbours.Length + slot: the lists laid out eight points per vector, padding
    /// slots NaN (an error that is never the least).</summary>
    readonly float[] _coords;
    // The pinned arrays above, for the searches' inner loops (the tables live as long as the process).
    readonly unsafe byte* _points;
    readonly unsafe ushort* _neighbours;
    readonly unsafe float* _coordsAt;
    public readonly int NearestDistances;
    public int GridSize => Points.Length / Dim;

    LatticeTable(int dim, int bits, byte[] levels, int nearestDistances, int maxLevel)
    {
        Dim = dim; Bits = bits; NearestDistances = nearestDistances;
        int gridSize = levels.Length / dim;
        Points = GC.AllocateUninitializedArray<byte>(levels.Length, pinned: true);
        for (int i = 0; i < levels.Length; i++) Points[i] = (byte)(2 * levels[i] + 1);
        Map = new int[1 << (dim * bits)];
        Array.Fill(Map, int.MinValue);
        for (int g = 0; g < gridSize; g++)
        {
            int key = 0;
            for (int k = 0; k < dim; k++) key |= levels[g * dim + k] << (bits * k);
            if (Map[key] != int.MinValue) throw new InvalidOperationException($"grid point {g} repeats point {Map[key]}");
            Map[key] = g;
        }

        var neighbours = new List<ushort>();
        Span<int> dist2 = stackalloc int[gridSize];
        Span<int> nearest = stackalloc int[nearestDistances];
        Span<int> pos = stackalloc int[dim];
        int mask = (1 << bits) - 1;
        for (int key = 0; key < Map.Length; key++)
        {
            if (Map[key] >= 0) continue;
            bool reachable = true;
            for (int k = 0; k < dim; k++)
            {
                int l = (key >> (bits * k)) & mask;
                reachable &= l <= maxLevel;
                pos[k] = 2 * l + 1;
            }
            if (!reachable) continue;
            // The nearestDistances smallest distinct squared distances, then the points at them in (distance, index)
            // order: the prefix of ggml's sorted (d2, j) list that it keeps.
            int have = 0;
            for (int g = 0; g < gridSize; g++)
            {
                int d2 = 0;
                for (int k = 0; k < dim; k++)
                {
                    int d = Points[g * dim + k] - pos[k];
                    d2 += d * d;
                }
                dist2[g] = d2;
                int at = have;
                while (at > 0 && nearest[at - 1] > d2) at--;
                if (at > 0 && nearest[at - 1] == d2) continue;
                if (at == nearestDistances) continue;
                for (int m = Math.Min(have, nearestDistances - 1); m > at; m--) nearest[m] = nearest[m - 1];
                nearest[at] = d2;
                if (have < nearestDistances) have++;
            }
            int start = neighbours.Count;
            neighbours.Add(0);
            for (int m = 0; m < have; m++)
                for (int g = 0; g < gridSize; g++)
                    if (dist2[g] == nearest[m]) neighbours.Add((ushort)g);
            neighbours[start] = (ushort)(neighbours.Count - start - 1);
            while ((neighbours.Count - start - 1) % 8 != 0) neighbours.Add(0);
            Map[key] = -(start + 1);
        }
        Neighbours = GC.AllocateUninitializedArray<ushort>(neighbours.Count, pinned: true);
        neighbours.CopyTo(Neighbours);
        int len = Neighbours.Length;
        _coords = GC.AllocateUninitializedArray<float>(dim * len, pinned: true);
        Array.Fill(_coords, float.NaN);
        for (int key = 0; key < Map.Length; key++)
        {
            if (Map[key] >= 0 || Map[key] == int.MinValue) continue;
            int start = -Map[key] - 1;
            for (int j = 1; j <= Neighbours[start]; j++)
                for (int i = 0; i < dim; i++) _coords[i * len + start + j] = Points[Neighbours[start + j] * dim + i];
        }
        unsafe
        {
            _points = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Points));
            _neighbours = (ushort*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Neighbours));
            _coordsAt = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_coords));
        }
    }

    static readonly Lazy<LatticeTable> IQ2XXS = new(() => E8(IQuantGrids.IQ2XXSGrid, 2));
    static readonly Lazy<LatticeTable> IQ2XS = new(() => E8(IQuantGrids.IQ2XSGrid, 2));
    static readonly Lazy<LatticeTable> IQ2S = new(() => E8(IQuantGrids.IQ2SGrid, 1));
    static readonly Lazy<LatticeTable> IQ1 = new(() => E8(IQuantGrids.IQ1SGrid, 3));
    static readonly Lazy<LatticeTable> IQ3XXS = new(() => D4(IQuantGrids.IQ3XXSGrid, 2));
    static readonly Lazy<LatticeTable> IQ3S = new(() => D4(IQuantGrids.IQ3SGrid, 3));

    /// <summary>The table ggml's quantizer of <paramref name="type"/> searches (IQ1_S and IQ1_M share one; ggml's nwant
    /// is 2 for IQ2_XXS, IQ2_XS and IQ3_XXS, 1 for IQ2_S, 3 for IQ1_*, IQ3_S).</summary>
    public static LatticeTable For(GgmlType type) => type switch
    {
        GgmlType.IQ2_XXS => IQ2XXS.Value,
        GgmlType.IQ2_XS => IQ2XS.Value,
        GgmlType.IQ2_S => IQ2S.Value,
        GgmlType.IQ1_S or GgmlType.IQ1_M => IQ1.Value,
        GgmlType.IQ3_XXS => IQ3XXS.Value,
        GgmlType.IQ3_S => IQ3S.Value,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a lattice type"),
    };

    // E8 grids: bytes 0x08, 0x19, 0x2b (IQ2) or −1, 0, 1 (IQ1) are levels 0, 1, 2.
    static LatticeTable E8(ReadOnlySpan<ulong> grid, int nearest)
    {
        var levels = new byte[grid.Length * 8];
        for (int g = 0; g < grid.Length; g++)
            for (int k = 0; k < 8; k++)
            {
                byte b = (byte)(grid[g] >> (8 * k));
                levels[g * 8 + k] = b switch
                {
                    0x08 or 0xff => 0,
                    0x19 or 0x00 => 1,
                    0x2b or 0x01 => 2,
                    _ => throw new InvalidOperationException($"grid byte {b:x2} is not an E8 level"),
                };
            }
        return new LatticeTable(8, 2, levels, nearest, maxLevel: 2);
    }

    // D4 grids: IQ3_XXS's bytes 4, 12, …, 52, 62 and IQ3_S's odd bytes 1, 3, …, 15 are levels 0 … 7.
    static LatticeTable D4(ReadOnlySpan<uint> grid, int nearest)
    {
        var levels = new byte[grid.Length * 4];
        for (int g = 0; g < grid.Length; g++)
            for (int k = 0; k < 4; k++)
            {
                int b = (int)(grid[g] >> (8 * k)) & 0xff;
                int l = b == 62 ? 7 : b % 2 == 1 ? (b - 1) / 2 : (b - 4) / 8;
                if (l is < 0 or > 7 || (b % 2 == 0 && b != 62 && (b - 4) % 8 != 0)) throw new InvalidOperationException($"grid byte {b} is not a D4 level");
                levels[g * 4 + k] = (byte)l;
            }
        return new LatticeTable(4, 3, levels, nearest, maxLevel: 7);
    }

    /// <summary>The key of <see cref="Dim"/> levels <paramref name="L"/>.</summary>
    public int Key(ReadOnlySpan<sbyte> L)
    {
        int key = 0;
        for (int k = 0; k < Dim; k++) key |= L[k] << (Bits * k);
        return key;
    }

    /// <summary>iq2_find_best_neighbour / iq3_find_best_neighbour: of the grid points listed for the off-grid
    /// <paramref name="key"/>, the one with the least Σ w·(scale·q − x)² (q the odd coordinates); its levels go to
    /// <paramref name="L"/>. The first of equal errors wins.</summary>
    public int BestNeighbour(int key, ReadOnlySpan<float> xval, ReadOnlySpan<float> weight, float scale, Span<sbyte> L)
    {
        int start = -Map[key] - 1, count = Neighbours[start];
        float best = float.MaxValue;
        int index = -1;
        for (int j = 1; j <= count; j++)
        {
            int g = Neighbours[start + j];
            float d2 = 0;
            for (int i = 0; i < Dim; i++)
            {
                float q = Points[g * Dim + i];
                float diff = scale * q - xval[i];
                d2 += weight[i] * diff * diff;
            }
            if (d2 < best) { best = d2; index = g; }
        }
        if (index < 0) throw new ArgumentException("no grid point has a finite error: the row holds NaN or infinite values");
        for (int i = 0; i < Dim; i++) L[i] = (sbyte)((Points[index * Dim + i] - 1) / 2);
        return index;
    }

    /// <summary>iq1_find_best_neighbour2: of the listed points, the least Σ w·(scale·xx[l] − x)², xx the level values
    /// of the sub-block's shift (the scalar reference of <see cref="BestNeighbourIQ1"/>).</summary>
    public int BestNeighbourIQ1Scalar(int key, ReadOnlySpan<float> xb, ReadOnlySpan<float> weight, float scale, ReadOnlySpan<float> xx, Span<sbyte> L)
    {
        int start = -Map[key] - 1, count = Neighbours[start];
        float best = float.MaxValue;
        int index = -1;
        for (int j = 1; j <= count; j++)
        {
            int g = Neighbours[start + j];
            float d2 = 0;
            for (int i = 0; i < Dim; i++)
            {
                float q = xx[(Points[Dim * g + i] - 1) / 2];
                float w = weight[i];
                float diff = scale * q - xb[i];
                d2 += w * diff * diff;
            }
            if (d2 < best) { best = d2; index = g; }
        }
        if (index < 0) throw new ArgumentException("no grid point has a finite error: the row holds NaN or infinite values");
        for (int i = 0; i < Dim; i++) L[i] = (sbyte)((Points[Dim * index + i] - 1) / 2);
        return index;
    }

    /// <summary><see cref="BestNeighbour"/> eight listed points at a time (the scalar code's float operations in its
    /// order in every lane; see <see cref="Search{T, TLevels}"/>). Same point, same levels.</summary>
    public unsafe int BestNeighbourFast(int key, float* xval, float* weight, float scale, sbyte* L) => Quantize.Lanes switch
    {
        SearchLanes.Lanes256 => Search<Lanes256, OddCoordinates>(key, xval, weight, scale, default, L),
        SearchLanes.Lanes128 => Search<Lanes128, OddCoordinates>(key, xval, weight, scale, default, L),
        _ => BestNeighbour(key, new ReadOnlySpan<float>(xval, Dim), new ReadOnlySpan<float>(weight, Dim), scale, new Span<sbyte>(L, Dim)),
    };

    /// <summary>iq1_find_best_neighbour2, eight listed points at a time: the error of level l is scale·xx[l] − x, with
    /// the level values <paramref name="xx0"/>, <paramref name="xx1"/>, <paramref name="xx2"/> (scalar reference:
    /// <see cref="BestNeighbourIQ1Scalar"/>).</summary>
    public unsafe int BestNeighbourIQ1(int key, float* xb, float* weight, float scale, float xx0, float xx1, float xx2, sbyte* L) => Quantize.Lanes switch
    {
        SearchLanes.Lanes256 => Search<Lanes256, IQ1Levels>(key, xb, weight, scale, new IQ1Levels(xx0, xx1, xx2), L),
        SearchLanes.Lanes128 => Search<Lanes128, IQ1Levels>(key, xb, weight, scale, new IQ1Levels(xx0, xx1, xx2), L),
        _ => BestNeighbourIQ1Scalar(key, new ReadOnlySpan<float>(xb, Dim), new ReadOnlySpan<float>(weight, Dim), scale, [xx0, xx1, xx2], new Span<sbyte>(L, Dim)),
    };

    /// <summary>What a coordinate c = 2l + 1 stands for in the error scale·q − x.</summary>
    interface ILevels { T Q<T>(T c) where T : struct, ILanes8<T>; }

    /// <summary>IQ2/IQ3: q is the odd coordinate itself.</summary>
    readonly struct OddCoordinates : ILevels
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public T Q<T>(T c) where T : struct, ILanes8<T> => c;
    }

    /// <summary>IQ1: q is the level's shifted value xx[l]. The + c·0 keeps a padding lane NaN (and adds an exact 0
    /// elsewhere: the level values are never zero).</summary>
    readonly struct IQ1Levels(float xx0, float xx1, float xx2) : ILevels
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public T Q<T>(T c) where T : struct, ILanes8<T> =>
            T.IfEqual(c, T.Create(1f), T.Create(xx0), T.IfEqual(c, T.Create(3f), T.Create(xx1), T.Create(xx2))) + c * T.Create(0f);
    }

    /// <summary>
    /// The least Σ w·(scale·q − x)² over the points listed for <paramref name="key"/>, eight at a time: every lane does
    /// the scalar code's multiply, subtract, multiply, multiply, add in its order (no FMA), so each error is the scalar
    /// one; the choice runs over the lanes in list order, so the first of equal errors wins as there; padding lanes are
    /// NaN and never win. The winner's levels go to <paramref name="L"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    unsafe int Search<T, TLevels>(int key, float* x, float* weight, float scale, TLevels levels, sbyte* L)
        where T : struct, ILanes8<T> where TLevels : struct, ILevels
    {
        int start = -Map[key] - 1, count = _neighbours[start], first = start + 1, len = Neighbours.Length;
        float best = float.MaxValue;
        int index = -1;
        var vscale = T.Create(scale);
        for (int j = 0; j < count; j += 8)
        {
            var d2 = default(T);
            float* c = _coordsAt + first + j;
            for (int i = 0; i < Dim; i++, c += len)
            {
                var diff = vscale * levels.Q(T.Load(ref *c, 0)) - T.Create(x[i]);
                d2 += T.Create(weight[i]) * diff * diff;
            }
            if (T.LessThanAny(d2, T.Create(best)))
                for (int lane = 0; lane < 8; lane++)
                {
                    float v = d2[lane];
                    if (v < best) { best = v; index = _neighbours[first + j + lane]; }
                }
        }
        if (index < 0) throw new ArgumentException("no grid point has a finite error: the row holds NaN or infinite values");
        byte* p = _points + index * Dim;
        for (int i = 0; i < Dim; i++) L[i] = (sbyte)((p[i] - 1) / 2);
        return index;
    }
}
