using System.CommandLine;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria convert-lora PEFT_DIR OUT.gguf --base MODEL.gguf [--force]</c>, as llama.cpp's convert_lora_to_gguf.py.</summary>
static class ConvertLoraCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "PEFT adapter folder (adapter_config.json, adapter_model.safetensors)" };
        var output = new Argument<string>("output") { Description = "adapter GGUF to write (refused if it exists, unless --force)" };
        var baseModel = new Option<string>("--base") { Description = "the base model's GGUF (its head counts order q/k rows for RoPE)", Required = true };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var cmd = new Command("convert-lora", "convert a Hugging Face PEFT LoRA adapter to llama.cpp's adapter GGUF (for --lora)") { input, output, baseModel, force };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            int n = PeftAdapter.Convert(r.GetValue(input)!, r.GetValue(baseModel)!, outPath, r.GetValue(force));
            Console.Out.WriteLine($"wrote {outPath}: {n} adapted matrices");
            return 0;
        });
        return cmd;
    }
}
