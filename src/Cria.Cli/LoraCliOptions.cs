using System.CommandLine;
using Cria.Models;
using System.Globalization;

namespace Cria.Cli;

/// <summary>llama.cpp's adapter options, shared by generate, perplexity and serve: <c>--lora FILE</c> (scale 1, may be
/// given more than once) and <c>--lora-scaled FILE SCALE</c>.</summary>
sealed class LoraCliOptions
{
    readonly Option<string[]> _lora = new("--lora") { Description = "apply this LoRA adapter (llama.cpp's adapter GGUF, e.g. from cria train --lora-rank) at scale 1; may be repeated", AllowMultipleArgumentsPerToken = false };
    readonly Option<string[]> _scaled = new("--lora-scaled") { Description = "FILE SCALE: apply this LoRA adapter at a user scale", Arity = new ArgumentArity(2, 2), AllowMultipleArgumentsPerToken = true };

    public void AddTo(Command cmd) { cmd.Options.Add(_lora); cmd.Options.Add(_scaled); }

    /// <summary>(path, scale) of every adapter the command line names.</summary>
    public IReadOnlyList<(string Path, float Scale)> Adapters(ParseResult r)
    {
        var list = (r.GetValue(_lora) ?? []).Select(p => (p, 1f)).ToList();
        if (r.GetValue(_scaled) is [var path, var scale])
        {
            if (!float.TryParse(scale, NumberStyles.Float, CultureInfo.InvariantCulture, out float s) || !float.IsFinite(s))
                throw new CriaException($"--lora-scaled {path} {scale}: the scale must be a number");
            list.Add((path, s));
        }
        return list;
    }

    /// <summary>The adapters loaded and checked against <paramref name="model"/>.</summary>
    public static IReadOnlyList<(LoraAdapter, float)> Load(IReadOnlyList<(string Path, float Scale)> adapters, LlamaModel model) =>
        adapters.Select(a => (LoraAdapter.Load(a.Path, model), a.Scale)).ToList();
}
