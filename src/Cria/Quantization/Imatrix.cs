using System.Text;
using Cria.Inference;
using Cria.Models;
using Cria.Tokenization;

namespace Cria.Quantization;

/// <summary>
/// An importance matrix as llama-imatrix computes it: for every matrix product of the transformer blocks
/// (<c>blk.*</c>; the output head is left out, as llama-imatrix does by default), the mean over all calibration
/// tokens of each input column's squared activation. Stored in llama.cpp's legacy <c>.dat</c> format
/// (<see cref="Save"/>), which llama-quantize --imatrix still reads:
/// <code>
/// int32 n_entries
/// n_entries × { int32 len; char name[len]; int32 ncall; int32 nval; float values[nval] }   values = mean × ncall
/// int32 last_chunk; int32 len; char dataset[len]
/// </code>
/// </summary>
public sealed class Imatrix
{
    /// <summary>Per tensor name, the mean squared activation of each input column.</summary>
    public Dictionary<string, float[]> Values { get; } = new(StringComparer.Ordinal);
    /// <summary>Per tensor name, how many calibration chunks went into it (the file's ncall).</summary>
    public Dictionary<string, int> Calls { get; } = new(StringComparer.Ordinal);
    public int Chunks { get; set; }
    public string Dataset { get; set; } = "";

    public void Save(string path)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            using (var w = new BinaryWriter(fs, Encoding.UTF8))
            {
                w.Write(Values.Count);
                foreach (var (name, v) in Values.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    var nb = Encoding.UTF8.GetBytes(name);
                    w.Write(nb.Length); w.Write(nb);
                    int ncall = Math.Max(1, Calls.GetValueOrDefault(name, Chunks));
                    w.Write(ncall);
                    w.Write(v.Length);
                    foreach (var x in v) w.Write(x * ncall);
                }
                w.Write(Chunks);
                var db = Encoding.UTF8.GetBytes(Dataset);
                w.Write(db.Length); w.Write(db);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>
    /// How unequal a matrix's input channels are: the coefficient of variation of the importance (population s.d. /
    /// mean) and the largest value over the median (the upper median for an even count). Activation-aware quantization
    /// (the imatrix's weighted rounding, AWQ's scalings) has something to act on only where these are large — LLaMA
    /// models' salient channels are tens to hundreds of times the median; the bundled model's q/k/v/gate/up inputs have
    /// a CV of 0.14–0.23 (docs/quantization.md, "Is it the activations?"). An all-zero vector reads (0, 1).
    /// </summary>
    public static (double Cv, double MaxOverMedian) ChannelSpread(ReadOnlySpan<float> importance)
    {
        if (importance.IsEmpty) throw new CriaException("an importance vector of no channels has no spread");
        double sum = 0, sum2 = 0;
        foreach (var x in importance) { sum += x; sum2 += (double)x * x; }
        double mean = sum / importance.Length, var = Math.Max(0, sum2 / importance.Length - mean * mean);
        var sorted = importance.ToArray();
        Array.Sort(sorted);
        double median = sorted[sorted.Length / 2], max = sorted[^1];
        return (mean > 0 ? Math.Sqrt(var) / mean : 0, median > 0 ? max / median : max > 0 ? double.PositiveInfinity : 1);
    }

    /// <summary>Per tensor class (the name without <c>blk.N.</c>), the range over layers of <see cref="ChannelSpread"/>:
    /// one line each, in name order, as <c>cria imatrix</c> prints it (numbers in the invariant culture). A stacked
    /// expert tensor's entry counts as one vector (all experts' columns together).</summary>
    public static IEnumerable<string> SpreadSummary(IReadOnlyDictionary<string, float[]> values)
    {
        var byClass = new SortedDictionary<string, List<(double Cv, double Max)>>(StringComparer.Ordinal);
        foreach (var (name, v) in values)
        {
            var parts = name.Split('.');
            string cls = parts.Length > 2 && parts[0] == "blk" ? string.Join('.', parts[2..]) : name;
            if (!byClass.TryGetValue(cls, out var l)) byClass[cls] = l = [];
            l.Add(ChannelSpread(v));
        }
        foreach (var (cls, l) in byClass)
            yield return string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"{cls,-24} CV {l.Min(x => x.Cv):F2}–{l.Max(x => x.Cv):F2}, largest / median {l.Min(x => x.Max):F1}–{l.Max(x => x.Max):F1}");
    }

    /// <summary>
    /// llama-quantize's <c>--include-weights</c> / <c>--exclude-weights</c>: the entries whose tensor name contains one
    /// of <paramref name="include"/> (every entry when it is empty), less those whose name contains one of
    /// <paramref name="exclude"/> (substring matches, as llama.cpp's <c>prepare_imatrix</c>). The tensors left out are
    /// quantized without an importance (round-to-nearest). Giving both is refused, as there.
    /// </summary>
    public static Dictionary<string, float[]> SelectWeights(IReadOnlyDictionary<string, float[]> values, IReadOnlyCollection<string> include, IReadOnlyCollection<string> exclude)
    {
        if (include.Count > 0 && exclude.Count > 0) throw new CriaException("--include-weights and --exclude-weights cannot be used together (as in llama-quantize)");
        if (include.Concat(exclude).Any(string.IsNullOrEmpty)) throw new CriaException("--include-weights / --exclude-weights: an empty tensor name matches every tensor");
        var kept = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var (name, v) in values)
        {
            bool inc = include.Count == 0 || include.Any(w => name.Contains(w, StringComparison.Ordinal));
            bool exc = exclude.Any(w => name.Contains(w, StringComparison.Ordinal));
            if (inc && !exc) kept[name] = v;
        }
        return kept;
    }

    /// <summary>Reads a legacy <c>.dat</c> imatrix (as llama-quantize's load_legacy_imatrix: values / ncall). Throws
    /// <see cref="ModelFormatException"/> naming the file and the problem.</summary>
    public static Imatrix Load(string path)
    {
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ModelFormatException(path, "cannot read imatrix: " + e.Message, e); }
        var m = new Imatrix();
        int pos = 0;
        int I32(string what)
        {
            if (pos + 4 > data.Length) throw new ModelFormatException(path, $"imatrix truncated while reading {what} (at byte {pos})");
            int v = BitConverter.ToInt32(data, pos); pos += 4; return v;
        }
        int n = I32("the entry count");
        if (n < 0 || n > data.Length / 16) throw new ModelFormatException(path, $"imatrix entry count {n} cannot fit in the file");
        for (int e = 0; e < n; e++)
        {
            int len = I32("a name length");
            if (len <= 0 || len > 4096 || pos + len > data.Length) throw new ModelFormatException(path, $"entry {e}: bad name length {len}");
            string name = Encoding.UTF8.GetString(data, pos, len); pos += len;
            int ncall = I32("ncall"), nval = I32("nval");
            if (nval < 0 || (long)pos + 4L * nval > data.Length) throw new ModelFormatException(path, $"entry '{name}': {nval} values do not fit in the file");
            var v = new float[nval];
            Buffer.BlockCopy(data, pos, v, 0, 4 * nval); pos += 4 * nval;
            for (int i = 0; i < nval; i++)
            {
                if (!float.IsFinite(v[i])) throw new ModelFormatException(path, $"entry '{name}' holds a non-finite value {v[i]}");
                if (ncall > 0) v[i] /= ncall;
            }
            m.Values[name] = v;
            m.Calls[name] = ncall;
        }
        if (pos + 4 <= data.Length)
        {
            m.Chunks = I32("the chunk count");
            if (pos + 4 <= data.Length)
            {
                int len = I32("the dataset name length");
                if (len > 0 && pos + len <= data.Length) m.Dataset = Encoding.UTF8.GetString(data, pos, len);
            }
        }
        return m;
    }

    /// <summary>Runs the calibration text through the model in chunks of <paramref name="ctx"/> tokens (BOS first, as
    /// llama-imatrix) and collects the importance matrix.</summary>
    public static Imatrix Collect(LlamaModel model, string text, int ctx, int maxChunks, int threads, string dataset = "",
        Action<int, int>? progress = null)
    {
        var collector = new Collector();
        int n = Calibration.Run(model, text, ctx, maxChunks, threads, collector, (done, total) =>
        {
            collector.EndChunk();
            progress?.Invoke(done, total);
        });
        var m = new Imatrix { Chunks = n, Dataset = dataset };
        foreach (var (name, (sum, count, calls)) in collector.Stats)
        {
            if (name.Contains(':')) continue; // an expert's slice, merged below
            var v = new float[sum.Length];
            for (int j = 0; j < v.Length; j++) v[j] = (float)(sum[j] / count);
            m.Values[name] = v;
            m.Calls[name] = calls;
        }
        // A stacked expert tensor gets one entry of n_expert × cols values, as llama-imatrix stores it (llama-quantize
        // hands expert e the slice e·cols …): each expert's mean x² over the rows routed to it. An expert that no
        // calibration row reached gets 1s (every column equally important: the unweighted error).
        foreach (var L in model.Layers)
        {
            if (L.Experts is not { } E) continue;
            foreach (var set in new[] { E.Gate, E.Up, E.Down })
            {
                if (!set[0].Name.Contains(':')) continue; // separate 2-D expert tensors (older files): entries under their own names
                string name = set[0].Name[..set[0].Name.LastIndexOf(':')];
                int cols = set[0].Cols;
                var v = new float[(long)cols * set.Length];
                int calls = 0;
                for (int e = 0; e < set.Length; e++)
                {
                    var slice = v.AsSpan(e * cols, cols);
                    if (collector.Stats.TryGetValue(set[e].Name, out var st))
                    {
                        for (int j = 0; j < cols; j++) slice[j] = (float)(st.Sum[j] / st.Count);
                        calls = Math.Max(calls, st.Calls);
                    }
                    else slice.Fill(1f);
                }
                m.Values[name] = v;
                m.Calls[name] = Math.Max(1, calls);
            }
        }
        return m;
    }

    /// <summary>Σ x² and row count per input column of every blk.* matrix product.</summary>
    sealed class Collector : IMatMulObserver
    {
        public readonly Dictionary<string, (double[] Sum, long Count, int Calls)> Stats = new(StringComparer.Ordinal);
        readonly HashSet<string> _seenThisChunk = new(StringComparer.Ordinal);

        public void Observe(string weightName, ReadOnlySpan<float> x, int rows, int cols)
        {
            if (!weightName.StartsWith("blk.", StringComparison.Ordinal)) return;
            if (!Stats.TryGetValue(weightName, out var s)) s = (new double[cols], 0, 0);
            var sum = s.Sum;                                  // [cols]
            for (int r = 0; r < rows; r++)
            {
                var row = x.Slice(r * cols, cols);
                for (int j = 0; j < cols; j++) sum[j] += (double)row[j] * row[j];
            }
            int calls = s.Calls + (_seenThisChunk.Add(weightName) ? 1 : 0);
            Stats[weightName] = (sum, s.Count + rows, calls);
        }

        public void EndChunk() => _seenThisChunk.Clear();
    }
}
