using System.Globalization;
using Cria.Formats;
using Cria.Quantization;

namespace Cria.Bench;

/// <summary>
/// <c>Cria.Bench outlier-model IN.gguf OUT.gguf [--channels 4] [--factor 10] [--seed 1]</c>: the same model with
/// outlier input channels, the structure activation-aware quantization exists for. In every layer, K channels of each
/// pre-norm (attn_norm, ffn_norm; chosen at random per layer and norm) have their norm weight multiplied by F and the
/// matching input column of the matrices that read the norm (attn_q/k/v, ffn_gate/up) divided by F. The float model
/// computes the same function (γ_j x̂_j · W_ij = F γ_j x̂_j · W_ij / F); only the split between activation and weight
/// moves, so channel j's activations are F times the others' — as the few large-activation channels of LLaMA models
/// (AWQ's "salient channels") — and its weights F times smaller. Written as F32 (an F32 input stays bit-for-bit
/// elsewhere). A measurement tool: the bundled model's own activations are nearly isotropic (docs/quantization.md).
/// </summary>
static class OutlierModel
{
    public static int Run(string[] args)
    {
        var ci = CultureInfo.InvariantCulture;
        int k = 4, seed = 1; float factor = 10;
        var pos = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--channels": k = int.Parse(Next(), ci); break;
                case "--factor": factor = float.Parse(Next(), ci); break;
                case "--seed": seed = int.Parse(Next(), ci); break;
                default: pos.Add(a); break;
            }
        }
        if (pos.Count != 2 || k < 1 || !(factor > 0))
        {
            Console.Error.WriteLine("usage: outlier-model IN.gguf OUT.gguf [--channels K ≥ 1] [--factor F > 0] [--seed S]");
            return 2;
        }
        var overrides = new Dictionary<string, float[]>(StringComparer.Ordinal);
        using (var f = GgufFile.Open(pos[0]))
        {
            var rng = new Random(seed);
            for (int layer = 0; f.TryGetTensor($"blk.{layer}.attn_norm.weight", out _); layer++)
            {
                foreach (var (norm, mats) in new[] { ("attn_norm", new[] { "attn_q", "attn_k", "attn_v" }), ("ffn_norm", new[] { "ffn_gate", "ffn_up" }) })
                {
                    string p = $"blk.{layer}.";
                    var g = f.ReadF32(p + norm + ".weight");                       // [dim]
                    int dim = g.Length;
                    var channels = Enumerable.Range(0, dim).OrderBy(_ => rng.Next()).Take(k).Order().ToArray();
                    foreach (int j in channels) g[j] *= factor;
                    overrides[p + norm + ".weight"] = g;
                    foreach (var m in mats)
                    {
                        var w = f.ReadF32(p + m + ".weight");                      // [rows, dim], row-major
                        for (long r = 0; r < w.Length / dim; r++)
                            foreach (int j in channels) w[r * dim + j] /= factor;
                        overrides[p + m + ".weight"] = w;
                    }
                    Console.Error.WriteLine($"{p + norm}: channels {string.Join(",", channels)} × {factor}");
                }
            }
        }
        ModelQuantizer.Run(pos[0], pos[1], new QuantizeOptions { FileType = LlamaFileType.F32, Override = n => overrides.GetValueOrDefault(n), Force = true });
        Console.Error.WriteLine($"wrote {pos[1]}");
        return 0;
    }
}
