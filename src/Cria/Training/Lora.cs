using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Training;

/// <summary>The seven projections of a Llama block that a LoRA adapter can target (llama.cpp's tensor names).</summary>
[Flags]
public enum LoraTarget
{
    None = 0,
    AttnQ = 1, AttnK = 2, AttnV = 4, AttnOutput = 8, FfnGate = 16, FfnUp = 32, FfnDown = 64,
    Attention = AttnQ | AttnK | AttnV | AttnOutput,
    All = Attention | FfnGate | FfnUp | FfnDown,
}

/// <summary>
/// LoRA (Hu et al. 2021): W' = W + s·B·A with A [r, in], B [out, r] and s = α/r; only A and B are trained. PEFT's two
/// common variations are here too: rsLoRA's s = α/√r (<see cref="RsLora"/>) and dropout on the adapter's input
/// (<see cref="Dropout"/>).
/// </summary>
public sealed record LoraOptions
{
    public int Rank { get; init; } = 8;
    public float Alpha { get; init; } = 16f;
    public LoraTarget Targets { get; init; } = LoraTarget.All;
    /// <summary>rsLoRA (Kalajdzievski 2023; PEFT's <c>use_rslora</c>): the factor on B·A is α/√r instead of α/r, so
    /// the update's size does not shrink as the rank grows.</summary>
    public bool RsLora { get; init; }
    /// <summary>PEFT's <c>lora_dropout</c>: in training steps every adapter's input x is dropped element-wise with this
    /// probability, the rest scaled by 1/(1 − p), before A: y = W·x + s·B·A·dropout(x). Each adapter draws its own mask
    /// (q, k and v too, though they read the same x). Evaluation and inference never drop. 0 (the default): off.</summary>
    public float Dropout { get; init; }
    /// <summary>s, the factor on B·A: α/r, or α/√r with <see cref="RsLora"/>.</summary>
    public float Scale => RsLora ? Alpha / MathF.Sqrt(Rank) : Alpha / Rank;
    /// <summary>The alpha an adapter file records. llama.cpp (and Cria) apply <c>adapter.lora.alpha</c>/r, so rsLoRA's
    /// α/√r is written as α·√r — as llama.cpp's convert_lora_to_gguf.py and <see cref="Models.PeftAdapter"/> do.</summary>
    public float FileAlpha => RsLora ? Alpha * MathF.Sqrt(Rank) : Alpha;

    public void Validate()
    {
        if (Rank < 1 || Rank > 4096) throw new CriaException($"LoRA rank must be in [1, 4096], got {Rank}");
        if (!float.IsFinite(Alpha) || Alpha <= 0) throw new CriaException($"LoRA alpha must be a positive number, got {Alpha}");
        if (!(Dropout >= 0 && Dropout < 1)) throw new CriaException($"LoRA dropout must be in [0, 1), got {Dropout}");
        if ((Targets & LoraTarget.All) == 0 || (Targets & ~LoraTarget.All) != 0) throw new CriaException($"LoRA targets must name at least one of the seven projections, got {Targets}");
    }

    /// <summary>The order of <see cref="LoraLayout.Pairs"/> within a layer and the GGUF name of each target.</summary>
    public static readonly (LoraTarget Target, string Name)[] TargetNames =
        [.. new[] { LoraTarget.AttnQ, LoraTarget.AttnK, LoraTarget.AttnV, LoraTarget.AttnOutput, LoraTarget.FfnGate, LoraTarget.FfnUp, LoraTarget.FfnDown }
            .Select((t, i) => (t, Cria.Models.LlamaLayer.ProjectionNames[i]))];

    /// <summary>Parses "q,k,v,o,gate,up,down" (also "all", "attn", and the GGUF names attn_q, ffn_down, …).</summary>
    public static LoraTarget ParseTargets(string text)
    {
        var t = LoraTarget.None;
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            t |= part.ToLowerInvariant() switch
            {
                "all" => LoraTarget.All,
                "attn" or "attention" => LoraTarget.Attention,
                "q" or "attn_q" or "q_proj" => LoraTarget.AttnQ,
                "k" or "attn_k" or "k_proj" => LoraTarget.AttnK,
                "v" or "attn_v" or "v_proj" => LoraTarget.AttnV,
                "o" or "attn_output" or "o_proj" => LoraTarget.AttnOutput,
                "gate" or "ffn_gate" or "gate_proj" => LoraTarget.FfnGate,
                "up" or "ffn_up" or "up_proj" => LoraTarget.FfnUp,
                "down" or "ffn_down" or "down_proj" => LoraTarget.FfnDown,
                _ => throw new CriaException($"unknown LoRA target '{part}' (use q, k, v, o, gate, up, down, attn or all)"),
            };
        if (t == LoraTarget.None) throw new CriaException("no LoRA target given");
        return t;
    }
}

/// <summary>
/// Where each adapter matrix lives in one flat parameter buffer: for every layer and every targeted projection, A
/// ([r, in], row-major as PEFT and llama.cpp store it) then B ([out, r]). <see cref="Pairs"/> is indexed
/// [layer · 7 + target index] and holds null for projections without an adapter. A classifier (LS-LLaMA) adds its
/// head <c>cls.output.weight</c> ([labels, dim]) after the adapters: trained with them, written to its own file.
/// </summary>
public sealed class LoraLayout
{
    public readonly record struct Pair(string BaseName, long A, long B, int In, int Out);

    public LoraOptions Options { get; }
    public ParameterTensor[] Tensors { get; }
    public Pair?[] Pairs { get; }
    public long Count { get; }
    /// <summary>Offset of the classification head [<see cref="HeadLabels"/>, dim], or −1 without one.</summary>
    public long Head { get; } = -1;
    public int HeadLabels { get; }
    public const string HeadName = "cls.output.weight";

    public LoraLayout(LlamaShape s, LoraOptions o, int headLabels = 0)
    {
        o.Validate();
        Options = o;
        Pairs = new Pair?[s.Layers * 7];
        var packer = new TensorPacker();
        long Add(string name, int rows, int cols) => packer.Add(name, rows, cols, true);
        int d = s.Dim, kv = s.KvDim, f = s.FfnDim;
        (int In, int Out)[] dims = [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)];
        for (int l = 0; l < s.Layers; l++)
            for (int i = 0; i < 7; i++)
            {
                var (target, name) = LoraOptions.TargetNames[i];
                if ((o.Targets & target) == 0) continue;
                string baseName = $"blk.{l}.{name}.weight";
                var (n, m) = dims[i];
                long a = Add(baseName + ".lora_a", o.Rank, n), b = Add(baseName + ".lora_b", m, o.Rank);
                Pairs[l * 7 + i] = new Pair(baseName, a, b, n, m);
            }
        if (headLabels < 0 || headLabels > 4096) throw new CriaException($"a head needs 1..4096 outputs, got {headLabels}"); // 1: a reward model
        if (headLabels > 0) { HeadLabels = headLabels; Head = Add(HeadName, headLabels, d); }
        Tensors = packer.Tensors;
        Count = Math.Max(packer.Count, 1);
    }

    /// <summary>A ~ U(−1/√in, 1/√in) (PyTorch's Kaiming-uniform with a = √5, PEFT's default), B = 0: the adapted model
    /// starts as the base model.</summary>
    public void Initialize(Span<float> p, ref TrainingRng rng)
    {
        p.Clear();
        foreach (var pair in Pairs)
        {
            if (pair is not { } q) continue;
            float bound = 1f / MathF.Sqrt(q.In);
            var a = p.Slice((int)q.A, Options.Rank * q.In);
            for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * bound;
        }
        // The head as Hugging Face initialises LlamaForSequenceClassification.score: N(0, 0.02).
        if (Head >= 0)
        {
            var h = p.Slice((int)Head, HeadLabels * Tensors[^1].Cols);
            for (int i = 0; i < h.Length; i++) h[i] = rng.NextGaussian() * 0.02f;
        }
    }

    /// <summary>The training options of an adapter read for inference (<see cref="Models.LoraAdapter.Load"/>, which has
    /// checked its names, shapes and values): its one rank, its alpha (α = 0, llama.cpp's "no alpha", is α = r, a
    /// scale of 1) and the projections it adapts, which must be the same in every layer.</summary>
    public static LoraOptions OptionsOf(Models.LoraAdapter adapter)
    {
        var ranks = adapter.Pairs.Values.Select(p => p.Rank).Distinct().ToArray();
        if (ranks.Length != 1) throw new CriaException($"{adapter.Path}: adapters of ranks {string.Join(", ", ranks)}; a layout has one rank");
        var targets = LoraTarget.None;
        foreach (var p in adapter.Pairs.Values)
            targets |= LoraOptions.TargetNames[Array.IndexOf(Models.LlamaLayer.ProjectionNames, p.BaseName.Split('.')[2])].Target;
        return new LoraOptions { Rank = ranks[0], Alpha = adapter.Alpha != 0 ? adapter.Alpha : ranks[0], Targets = targets };
    }

    /// <summary>Copies an adapter's A and B into <paramref name="parameters"/> (this layout; the head is left as it is).
    /// The adapter must have exactly this layout's pairs (<see cref="OptionsOf"/> of the same adapter gives them).</summary>
    public void Load(Models.LoraAdapter adapter, Span<float> parameters)
    {
        int n = 0;
        foreach (var pair in Pairs)
        {
            if (pair is not { } q) continue;
            if (!adapter.Pairs.TryGetValue(q.BaseName, out var a) || a.Rank != Options.Rank)
                throw new CriaException($"{adapter.Path}: no rank-{Options.Rank} adapter for {q.BaseName}");
            a.A.CopyTo(parameters.Slice((int)q.A, a.A.Length));
            a.B.CopyTo(parameters.Slice((int)q.B, a.B.Length));
            n++;
        }
        if (adapter.Pairs.Count != n) throw new CriaException($"{adapter.Path} adapts {adapter.Pairs.Count} projections, this layout {n}");
    }

    /// <summary>
    /// Writes the adapter as llama.cpp reads one (<c>--lora FILE</c>): general.type = "adapter", adapter.type = "lora",
    /// adapter.lora.alpha (F32), and per projection <c>blk.N.NAME.weight.lora_a</c> (ggml shape [in, r]) and
    /// <c>….lora_b</c> ([r, out]) in F32. Atomic (temporary file, then rename).
    /// </summary>
    public void Write(string path, ReadOnlySpan<float> parameters, string name = "cria-lora")
    {
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("general.type", "adapter");
        w.Set("general.name", name);
        w.Set("adapter.type", "lora");
        w.Set("adapter.lora.alpha", Options.FileAlpha);
        foreach (var t in Tensors)
            if (t.Name != HeadName)
                w.AddTensor(t.Name, [t.Cols, t.Rows], GgmlType.F32, MemoryMarshal.AsBytes(parameters.Slice((int)t.Offset, (int)t.Count)).ToArray());
        w.Write(path);
    }
}
