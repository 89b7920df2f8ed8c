using System.CommandLine;
using Cria.Training;

namespace Cria.Cli;

/// <summary>LoRAM: <c>cria prune IN OUT --keep 0.5</c> (structured pruning of feed-forward neurons), then
/// <c>cria train --init OUT --lora-rank R …</c>, then <c>cria recover-lora ADAPTER --pruned OUT -o FULL_ADAPTER</c>,
/// which gives an adapter for the full model (<see cref="Loram"/>).</summary>
static class LoramCommands
{
    public static Command Prune()
    {
        var input = new Argument<string>("input") { Description = "F32/F16/BF16 GGUF model to prune" };
        var output = new Argument<string>("output") { Description = "pruned GGUF to write" };
        var keep = new Option<double>("--keep") { Description = "share of each layer's feed-forward neurons kept (largest ‖gate‖·‖up‖·‖down‖)", DefaultValueFactory = _ => 0.5 };
        var force = new Option<bool>("--force") { Description = "replace an existing output" };
        var cmd = new Command("prune", "LoRAM step 1: remove feed-forward neurons (train LoRA on the result, then recover-lora)") { input, output, keep, force };
        cmd.SetAction(r =>
        {
            var kept = Loram.Prune(r.GetValue(input)!, r.GetValue(output)!, r.GetValue(keep), r.GetValue(force));
            Console.WriteLine($"wrote {r.GetValue(output)}: {kept[0].Length} feed-forward neurons kept per layer, {kept.Length} layers ({new FileInfo(r.GetValue(output)!).Length:N0} bytes)");
            return 0;
        });
        return cmd;
    }

    public static Command Recover()
    {
        var adapter = new Argument<string>("adapter") { Description = "LoRA adapter GGUF trained on the pruned model" };
        var pruned = new Option<string>("--pruned") { Description = "the pruned model it was trained on (written by `cria prune`)", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "adapter GGUF for the full model", Required = true };
        var force = new Option<bool>("--force") { Description = "replace an existing output" };
        var cmd = new Command("recover-lora", "LoRAM step 3: zero-fill a pruned model's adapter back to the full model's shapes") { adapter, pruned, output, force };
        cmd.SetAction(r =>
        {
            Loram.Recover(r.GetValue(adapter)!, r.GetValue(pruned)!, r.GetValue(output)!, r.GetValue(force));
            Console.WriteLine($"wrote {r.GetValue(output)} (use it with --lora on the full model)");
            return 0;
        });
        return cmd;
    }
}
