using System.CommandLine;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria export-lora -m BASE.gguf --lora A.gguf [--lora-scaled B.gguf S] -o OUT.gguf [--force]</c>, as
/// llama.cpp's llama-export-lora: the adapters merged into the base weights.</summary>
static class ExportLoraCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "base model GGUF (F32, F16 or BF16 projections)", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "merged GGUF to write (refused if it exists, unless --force)", Required = true };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var cmd = new Command("export-lora", "merge LoRA adapters into a model's weights (llama-export-lora): W + scale·α/r·B·A") { model, output, force };
        var lora = new LoraCliOptions();
        lora.AddTo(cmd);
        cmd.SetAction(r =>
        {
            string basePath = r.GetValue(model)!, outPath = r.GetValue(output)!;
            var list = lora.Adapters(r);
            if (list.Count == 0) throw new CriaException("export-lora needs at least one --lora or --lora-scaled adapter");
            IReadOnlyList<(LoraAdapter, float)> adapters;
            using (var m = LlamaModel.Open(basePath)) adapters = LoraCliOptions.Load(list, m);
            LoraAdapter.Merge(basePath, adapters, outPath, r.GetValue(force));
            Console.Out.WriteLine($"wrote {outPath} ({new FileInfo(outPath).Length:N0} bytes): {basePath} with {list.Count} adapter(s) merged");
            return 0;
        });
        return cmd;
    }
}
