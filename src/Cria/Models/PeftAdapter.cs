using System.Text.Json;
using System.Text.RegularExpressions;
using Cria.Formats;
using Cria.Tensors;

namespace Cria.Models;

/// <summary>
/// A Hugging Face PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) converted to llama.cpp's
/// adapter GGUF, as convert_lora_to_gguf.py does: <c>base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight</c>
/// [r, in] → <c>blk.N.attn_q.weight.lora_a</c>, <c>….lora_B.weight</c> [out, r] → <c>….lora_b</c>. The rows of q_proj's and
/// k_proj's lora_B are permuted for RoPE exactly as the base weights are (<see cref="HfCheckpoint.PermuteForRope"/>,
/// with the base model's head counts), since B's rows are output rows of those matrices. alpha = lora_alpha
/// (lora_alpha·√r with use_rslora, so that llama.cpp's α/r is rsLoRA's lora_alpha/√r).
/// </summary>
public static partial class PeftAdapter
{
    [GeneratedRegex(@"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)\.lora_(A|B)\.weight$")]
    private static partial Regex TensorName();

    static readonly Dictionary<string, string> Names = new()
    {
        ["q_proj"] = "attn_q", ["k_proj"] = "attn_k", ["v_proj"] = "attn_v", ["o_proj"] = "attn_output",
        ["gate_proj"] = "ffn_gate", ["up_proj"] = "ffn_up", ["down_proj"] = "ffn_down",
    };

    /// <summary>Converts <paramref name="dir"/> for the base model <paramref name="baseGguf"/> into <paramref name="output"/>
    /// (atomic; refused if it exists unless <paramref name="force"/>). Returns the number of adapted matrices.</summary>
    public static int Convert(string dir, string baseGguf, string output, bool force = false)
    {
        if (!force && File.Exists(output)) throw new CriaException($"{output}: the output file exists (use --force to replace it)");
        string cfgPath = Path.Combine(dir, "adapter_config.json"), stPath = Path.Combine(dir, "adapter_model.safetensors");
        if (!File.Exists(cfgPath)) throw new CriaException($"{dir} has no adapter_config.json (not a PEFT adapter folder)");
        if (!File.Exists(stPath)) throw new CriaException($"{dir} has no adapter_model.safetensors");
        JsonElement cfg;
        try { cfg = JsonDocument.Parse(File.ReadAllText(cfgPath)).RootElement; }
        catch (JsonException e) { throw new CriaException($"{cfgPath}: not JSON ({e.Message})"); }
        if (cfg.ValueKind != JsonValueKind.Object) throw new CriaException($"{cfgPath}: not a JSON object");
        if (cfg.TryGetProperty("peft_type", out var pt) && pt.ValueKind == JsonValueKind.String && pt.GetString() != "LORA")
            throw new CriaException($"{cfgPath}: peft_type is {pt.GetString()}, not LORA");
        int rank = cfg.TryGetProperty("r", out var rv) && rv.TryGetInt32(out int r0) && r0 > 0 ? r0 : throw new CriaException($"{cfgPath}: needs a positive integer \"r\"");
        double alpha = cfg.TryGetProperty("lora_alpha", out var av) && av.ValueKind == JsonValueKind.Number ? av.GetDouble() : throw new CriaException($"{cfgPath}: needs a number \"lora_alpha\"");
        if (cfg.TryGetProperty("use_rslora", out var rs) && rs.ValueKind == JsonValueKind.True) alpha *= Math.Sqrt(rank);
        if (cfg.TryGetProperty("use_dora", out var dora) && dora.ValueKind == JsonValueKind.True) throw new CriaException($"{cfgPath}: DoRA adapters are not supported");

        int heads, kvHeads, layers;
        using (var f = GgufFile.Open(baseGguf))
        {
            if (f.Get("general.architecture", "") != "llama") throw new CriaException($"{baseGguf} is not a llama model");
            heads = (int)f.Get<uint>("llama.attention.head_count");
            kvHeads = f.Has("llama.attention.head_count_kv") ? (int)f.Get<uint>("llama.attention.head_count_kv") : heads;
            layers = (int)f.Get<uint>("llama.block_count");
        }
        using var st = SafetensorsFile.Open(stPath);
        var w = new GgufWriter();
        w.Set("general.architecture", "llama");
        w.Set("general.type", "adapter");
        w.Set("general.name", Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar)));
        w.Set("adapter.type", "lora");
        w.Set("adapter.lora.alpha", (float)alpha);
        int pairs = 0;
        foreach (var t in st.Tensors.OrderBy(t => t.Name, StringComparer.Ordinal))
        {
            var m = TensorName().Match(t.Name);
            if (!m.Success) throw new CriaException($"{stPath}: tensor {t.Name} is not a LoRA A/B matrix of a Llama block projection");
            int layer = int.Parse(m.Groups[1].Value);
            string proj = m.Groups[3].Value;
            bool isA = m.Groups[4].Value == "A";
            if (layer >= layers) throw new CriaException($"{stPath}: {t.Name} is for layer {layer}; {baseGguf} has {layers}");
            if (t.Shape.Length != 2 || (isA ? t.Shape[0] : t.Shape[1]) != rank)
                throw new CriaException($"{stPath}: {t.Name} has shape [{string.Join(", ", t.Shape)}]; rank {rank} needs {(isA ? "[r, in]" : "[out, r]")}");
            string other = t.Name[..^"A.weight".Length] + (isA ? "B.weight" : "A.weight");
            if (!st.TryGetTensor(other, out _)) throw new CriaException($"{stPath}: {t.Name} has no {other}");
            if (!SafetensorsFile.IsSupported(t.DType)) throw new CriaException($"{stPath}: {t.Name} is {t.DType}; F32, F16 or BF16 adapters only");
            var v = st.ReadF32(t);
            int rows = (int)t.Shape[0], cols = (int)t.Shape[1];
            if (!isA && proj == "q_proj") v = HfCheckpoint.PermuteForRope(v, rows, cols, heads);
            else if (!isA && proj == "k_proj") v = HfCheckpoint.PermuteForRope(v, rows, cols, kvHeads);
            if (isA) pairs++;
            w.AddTensor($"blk.{layer}.{Names[proj]}.weight.lora_{(isA ? "a" : "b")}", [cols, rows], v);
        }
        if (pairs == 0) throw new CriaException($"{stPath} holds no LoRA matrices");
        w.Write(output);
        return pairs;
    }
}
