using Cria.Inference;
using Cria.Models;

namespace Cria.Quantization;

/// <summary>How activations are quantized (simulated: quantized and dequantized in place, the product then runs as
/// usual). <see cref="Mixed"/> is COMET's FMPQ.</summary>
public enum ActivationQuantMode
{
    /// <summary>Every block of <see cref="ActivationQuantOptions.Block"/> channels in <see cref="ActivationQuantOptions.Bits"/>.</summary>
    Uniform,
    /// <summary>FMPQ (COMET, Zhang et al. 2024): the calibration's outlier channels are permuted together into as few
    /// blocks as hold them, which stay in <see cref="ActivationQuantOptions.OutlierBits"/>; every other block is in
    /// <see cref="ActivationQuantOptions.Bits"/>.</summary>
    Mixed,
    /// <summary>FMPQ without the permutation (the ablation of its channel reordering): blocks in channel order, each
    /// block that holds an outlier channel in <see cref="ActivationQuantOptions.OutlierBits"/>.</summary>
    MixedInPlace,
}

/// <summary>
/// Simulated activation quantization settings. Each token's input row to a block's matrix product is cut into blocks
/// of <see cref="Block"/> channels, and each block is quantized symmetrically to b-bit integers with its own scale,
/// s = max|x| / (2^(b−1) − 1), q = round(x / s) (COMET's A4 is INT4 with 128-channel blocks). An outlier channel is one
/// whose largest |x| on the calibration text exceeds <see cref="OutlierRatio"/> × the median channel's.
/// </summary>
public sealed record ActivationQuantOptions
{
    public ActivationQuantMode Mode { get; init; } = ActivationQuantMode.Mixed;
    public int Bits { get; init; } = 4;
    public int OutlierBits { get; init; } = 8;
    public int Block { get; init; } = 128;
    public float OutlierRatio { get; init; } = 4f;

    public void Validate()
    {
        if (Bits < 2 || Bits > 8) throw new CriaException($"activation bits must be in 2..8, got {Bits}");
        if (OutlierBits < Bits || OutlierBits > 8) throw new CriaException($"outlier bits must be in {Bits}..8, got {OutlierBits}");
        if (Block < 1) throw new CriaException($"the activation block must hold at least one channel, got {Block}");
        if (!(OutlierRatio > 1) || !float.IsFinite(OutlierRatio)) throw new CriaException($"the outlier ratio must be a number > 1, got {OutlierRatio}");
    }
}

/// <summary>
/// Simulated W·A·KV activation quantization for the inputs of every block's matrix products
/// (<see cref="IActivationTransform"/>). Calibration (<see cref="Calibrate"/>) records each input's largest |x| per
/// channel; from it each input gets a channel order — for FMPQ the outlier channels first, by size, filling whole
/// high-precision blocks, then the others in their own order — and a count of high-precision blocks. The output head's
/// input is left alone (W4A4 methods keep the head in high precision).
/// </summary>
public sealed class ActivationQuantizer : IActivationTransform
{
    /// <summary>One input's layout: channels in block order, and which blocks are high precision.</summary>
    public sealed record Layout(int[] Order, bool[] High, int OutlierChannels)
    {
        public int HighBlocks => High.Count(h => h);

        /// <summary>Blocks of <paramref name="block"/> channels in channel order, none high.</summary>
        public static Layout Plain(int channels, int block) => new(Enumerable.Range(0, channels).ToArray(), new bool[(channels + block - 1) / block], 0);
    }

    readonly Dictionary<string, Layout> _layouts;
    public ActivationQuantOptions Options { get; }
    public IReadOnlyDictionary<string, Layout> Layouts => _layouts;

    public ActivationQuantizer(ActivationQuantOptions options, Dictionary<string, Layout> layouts)
    {
        options.Validate();
        Options = options; _layouts = layouts;
    }

    /// <summary>Share of all channels (over the inputs, weighted by width) kept in high precision.</summary>
    public double HighPrecisionFraction
    {
        get
        {
            long high = 0, all = 0;
            foreach (var l in _layouts.Values)
            {
                for (int b = 0; b < l.High.Length; b++) if (l.High[b]) high += Math.Min(Options.Block, l.Order.Length - b * Options.Block);
                all += l.Order.Length;
            }
            return all == 0 ? 0 : (double)high / all;
        }
    }

    /// <summary>Average bits per activation value: the integer codes and one F16 scale per block (a last, shorter block
    /// counted as full).</summary>
    public double BitsPerValue => Options.Bits + (Options.OutlierBits - Options.Bits) * HighPrecisionFraction + 16.0 / Options.Block;

    /// <summary>The layout of one input from its calibration maxima <paramref name="absMax"/>: uniform blocks in
    /// channel order; FMPQ's outlier channels first, filling whole high-precision blocks with the largest of the rest,
    /// then the others in channel order; or, without the permutation, each block that holds an outlier high.</summary>
    public static Layout MakeLayout(ReadOnlySpan<float> absMax, ActivationQuantOptions o)
    {
        int n = absMax.Length, B = o.Block;
        var plain = Layout.Plain(n, B);
        if (o.Mode == ActivationQuantMode.Uniform) return plain;
        var max = absMax.ToArray();
        var sorted = max.ToArray();
        Array.Sort(sorted);
        float median = n % 2 == 1 ? sorted[n / 2] : 0.5f * (sorted[n / 2 - 1] + sorted[n / 2]);
        var outliers = plain.Order.Where(c => max[c] > o.OutlierRatio * median).ToArray();
        if (outliers.Length == 0) return plain;
        if (o.Mode == ActivationQuantMode.MixedInPlace)
        {
            var high = new bool[plain.High.Length];
            foreach (int c in outliers) high[c / B] = true;
            return plain with { High = high, OutlierChannels = outliers.Length };
        }
        int k = (outliers.Length + B - 1) / B;
        var lead = plain.Order.OrderByDescending(c => max[c]).ThenBy(c => c).Take(Math.Min(n, k * B)).ToArray();
        var inLead = new bool[n];
        foreach (int c in lead) inLead[c] = true;
        var flags = new bool[plain.High.Length];
        flags.AsSpan(0, k).Fill(true);
        return new Layout([.. lead, .. plain.Order.Where(c => !inLead[c])], flags, outliers.Length);
    }

    /// <summary>Calibrates on <paramref name="text"/> (up to <paramref name="chunks"/> chunks of <paramref name="ctx"/>
    /// tokens): the largest |x| per channel of every block input, then a layout for each.</summary>
    public static ActivationQuantizer Calibrate(LlamaModel model, string text, int ctx, int chunks, int threads, ActivationQuantOptions o)
    {
        o.Validate();
        var stats = new MaxCollector();
        Calibration.Run(model, text, ctx, chunks, threads, stats);
        return new ActivationQuantizer(o, stats.Max.ToDictionary(kv => kv.Key, kv => MakeLayout(kv.Value, o)));
    }

    /// <summary>A layout for every block input without calibration: uniform blocks (<see cref="ActivationQuantMode.Uniform"/>
    /// needs no statistics).</summary>
    public static ActivationQuantizer Uniform(LlamaModel model, ActivationQuantOptions o)
    {
        if (o.Mode != ActivationQuantMode.Uniform) throw new CriaException("only uniform activation quantization runs without calibration");
        var layouts = new Dictionary<string, Layout>();
        foreach (var L in model.Layers)
            foreach (var w in L.Projections) layouts[w.Name] = Layout.Plain(w.Cols, o.Block);
        return new ActivationQuantizer(o, layouts);
    }

    sealed class MaxCollector : IMatMulObserver
    {
        public readonly Dictionary<string, float[]> Max = new();
        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!weightName.StartsWith("blk.", StringComparison.Ordinal)) return;
            if (!Max.TryGetValue(weightName, out var m)) Max[weightName] = m = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                var row = x.Slice(r * cols, cols);
                for (int c = 0; c < cols; c++) m[c] = Math.Max(m[c], Math.Abs(row[c]));
            }
        }
    }

    public void Apply(string weightName, Span<float> x, int rows, int cols)
    {
        if (!_layouts.TryGetValue(weightName, out var layout)) return;
        if (layout.Order.Length != cols) throw new CriaException($"activation layout of {weightName} has {layout.Order.Length} channels, the product {cols}");
        for (int r = 0; r < rows; r++) QuantizeRow(x.Slice(r * cols, cols), layout, Options);
    }

    /// <summary>Quantizes and dequantizes one row in place, block by block in the layout's channel order (scalar
    /// reference; the simulation's cost is not the point).</summary>
    public static void QuantizeRow(Span<float> row, Layout layout, ActivationQuantOptions o)
    {
        var order = layout.Order;
        for (int start = 0, block = 0; start < order.Length; start += o.Block, block++)
        {
            int end = Math.Min(order.Length, start + o.Block);
            int bits = layout.High[block] ? o.OutlierBits : o.Bits;
            float amax = 0;
            for (int i = start; i < end; i++) amax = Math.Max(amax, Math.Abs(row[order[i]]));
            if (amax == 0) continue;
            int qmax = (1 << (bits - 1)) - 1;
            float s = amax / qmax;
            for (int i = start; i < end; i++)
            {
                ref float v = ref row[order[i]];
                v = MathF.Round(v / s) * s;
            }
        }
    }
}
