using System.CommandLine;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Cli;

/// <summary><c>cria convert HF_DIR OUT.gguf [--type auto|f32|f16|bf16|q8_0] [--force]</c>, as convert_hf_to_gguf.py.</summary>
static class ConvertCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "Hugging Face checkpoint folder (config.json, tokenizer.json, *.safetensors)" };
        var output = new Argument<string>("output") { Description = "GGUF file to write (refused if it exists, unless --force)" };
        var type = new Option<string>("--type") { Description = "auto (bf16 for a BF16 checkpoint, else f16) | f32 | f16 | bf16 | q8_0", DefaultValueFactory = _ => "auto" };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var cmd = new Command("convert", "convert a Hugging Face Llama checkpoint to GGUF (llama.cpp's layout, Q/K rows permuted for RoPE)") { input, output, type, force };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            if (!r.GetValue(force) && File.Exists(outPath)) throw new CriaException($"{outPath}: the output file exists (use --force to replace it)");
            using var ck = HfCheckpoint.Open(r.GetValue(input)!);
            string t = r.GetValue(type)!.ToLowerInvariant();
            var gt = t == "auto" ? (ck.SourceType == GgmlType.BF16 ? GgmlType.BF16 : GgmlType.F16) : t switch
            {
                "f32" => GgmlType.F32, "f16" => GgmlType.F16, "bf16" => GgmlType.BF16, "q8_0" => GgmlType.Q8_0,
                _ => throw new CriaException($"unknown output type '{t}' (auto, f32, f16, bf16, q8_0)"),
            };
            ck.WriteGguf(outPath, gt);
            Console.Out.WriteLine($"wrote {outPath} ({new FileInfo(outPath).Length:N0} bytes, {gt}): {ck.Layers} layers, dim {ck.Dim}, vocab {ck.VocabSize}");
            return 0;
        });
        return cmd;
    }
}
