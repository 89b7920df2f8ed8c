using System.CommandLine;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria extrapolate --from SFT.gguf --to ALIGNED.gguf --alpha A -o OUT.gguf [--force]</c>: ExPO,
/// θ_to + α(θ_to − θ_from) (<see cref="Extrapolation"/>).</summary>
static class ExtrapolateCommand
{
    public static Command Create()
    {
        var from = new Option<string>("--from") { Description = "the model before alignment (e.g. the SFT model DPO started from)", Required = true };
        var to = new Option<string>("--to") { Description = "the model after alignment (same tensors and shapes)", Required = true };
        var alpha = new Option<float>("--alpha") { Description = "extrapolation strength α: θ_to + α(θ_to − θ_from); 0 gives θ_to", DefaultValueFactory = _ => 0.3f };
        var output = new Option<string>("--output", "-o") { Description = "GGUF to write (refused if it exists, unless --force)", Required = true };
        var force = new Option<bool>("--force") { Description = "replace an existing output file" };
        var cmd = new Command("extrapolate", "ExPO: step a model further along the direction its alignment moved it, θ_to + α(θ_to − θ_from) (F32/F16/BF16 tensors)")
        {
            from, to, alpha, output, force,
        };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            Extrapolation.Extrapolate(r.GetValue(from)!, r.GetValue(to)!, r.GetValue(alpha), outPath, r.GetValue(force));
            Console.Out.WriteLine($"wrote {outPath} ({new FileInfo(outPath).Length:N0} bytes): {r.GetValue(to)} + {r.GetValue(alpha)} × ({r.GetValue(to)} − {r.GetValue(from)})");
            return 0;
        });
        return cmd;
    }
}
