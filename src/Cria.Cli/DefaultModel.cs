using Cria.Models;

namespace Cria.Cli;

/// <summary>
/// Which model runs when none is named: $CRIA_MODEL, else the bundled <c>models/default.gguf</c> of the repository
/// this binary was built from, else a small random-weight demo model built on first use (its text is gibberish; it
/// exists so that the commands run out of the box until a trained default model is bundled).
/// </summary>
static class DefaultModel
{
    public const string BundledName = "default.gguf";

    public static string Resolve(string? given)
    {
        if (!string.IsNullOrEmpty(given)) return given;
        var env = Environment.GetEnvironmentVariable("CRIA_MODEL");
        if (!string.IsNullOrEmpty(env)) return env;
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            var p = Path.Combine(d.FullName, "models", BundledName);
            if (File.Exists(p)) return p;
        }
        var cache = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "cria");
        Directory.CreateDirectory(cache);
        var demo = Path.Combine(cache, "demo-random-v1.gguf");
        if (!File.Exists(demo))
        {
            Console.Error.WriteLine($"note: no model given and none bundled; building a random-weight demo model at {demo}");
            RandomModel.Write(demo, new RandomModelSpec
            {
                Dim = 256, Layers = 4, Heads = 8, KvHeads = 2, FfnDim = 768, VocabSize = 1024, Name = "cria-demo-random", Seed = 42,
            });
        }
        else Console.Error.WriteLine($"note: no model given; using the random-weight demo model {demo} (its output is not meaningful text)");
        return demo;
    }
}
