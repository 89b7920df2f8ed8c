using System.CommandLine;
using Cria.Models;
using Cria.Tensors;

namespace Cria.Cli;

/// <summary><c>cria make-model OUT --preset P --type T</c>: writes a random-weight model (tests, benchmarks).</summary>
static class MakeModelCommand
{
    public static Command Create()
    {
        var output = new Argument<string>("output") { Description = "GGUF file to write" };
        var preset = new Option<string>("--preset") { Description = "shape: tiny | small | tinyllama (1.1B: dim 2048, 22 layers, 32/4 heads, ffn 5632, vocab 32000) | mixtral-mini (1.5B, Mixtral's layout scaled down: dim 1024, 16 layers, 16/4 heads, 8 experts of ffn 3584, 2 per token, vocab 32000) | olmoe-mini (1.7B, OLMoE-1B-7B's routing scaled down: dim 1024, 16 layers, 16 heads, 64 experts of ffn 512, 8 per token)", DefaultValueFactory = _ => "tiny" };
        var type = new Option<string>("--type") { Description = "weight type: q4_k_m q5_k_m (llama.cpp mixes) f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k iq4_nl iq4_xs", DefaultValueFactory = _ => "f32" };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1234 };
        var experts = new Option<int>("--experts") { Description = "Mixtral-style mixture of experts: experts per layer (0 = dense; each expert has the preset's ffn size)" };
        var expertsUsed = new Option<int>("--experts-used") { Description = "experts each token is routed to", DefaultValueFactory = _ => 2 };
        var arch = new Option<string>("--arch") { Description = "llama; olmo2 (OLMo 2's block: QK-norm, post-norms, NEOX RoPE; dense); olmoe (QK-norm, NEOX RoPE, experts not renormalised; needs --experts)", DefaultValueFactory = _ => "llama" };
        var cmd = new Command("make-model", "write a Llama-family GGUF file with random weights") { output, preset, type, seed, experts, expertsUsed, arch };
        cmd.SetAction(r =>
        {
            var typeName = r.GetValue(type)!.ToLowerInvariant();
            bool mix = typeName is "q4_k_m" or "q5_k_m";
            var t = ParseType(mix ? typeName[..4] : typeName);
            var spec = r.GetValue(preset) switch
            {
                "tiny" => new RandomModelSpec { Dim = 256, Layers = 2, Heads = 8, KvHeads = 2, FfnDim = 768, VocabSize = 1024 },
                "small" => new RandomModelSpec { Dim = 512, Layers = 8, Heads = 8, KvHeads = 4, FfnDim = 1536, VocabSize = 4096 },
                "tinyllama" => new RandomModelSpec { Dim = 2048, Layers = 22, Heads = 32, KvHeads = 4, FfnDim = 5632, VocabSize = 32000, Name = "tinyllama-shaped-random" },
                "mixtral-mini" => new RandomModelSpec { Dim = 1024, Layers = 16, Heads = 16, KvHeads = 4, FfnDim = 3584, VocabSize = 32000, Experts = 8, ExpertsUsed = 2, Name = "mixtral-mini-random" },
                "olmoe-mini" => new RandomModelSpec { Dim = 1024, Layers = 16, Heads = 16, KvHeads = 16, FfnDim = 512, VocabSize = 32000, Experts = 64, ExpertsUsed = 8, Architecture = "olmoe", Name = "olmoe-mini-random" },
                var p => throw new CriaException($"unknown preset '{p}' (tiny, small, tinyllama, mixtral-mini, olmoe-mini)"),
            };
            var path = r.GetValue(output)!;
            // A preset's experts and architecture stand unless the options are given.
            int n = r.GetValue(experts) is > 0 and var given ? given : spec.Experts;
            int used = r.GetResult(expertsUsed) is { Implicit: false } || spec.Experts == 0 ? r.GetValue(expertsUsed) : spec.ExpertsUsed;
            if (n < 0 || n > ModelConfig.MaxExperts || (n > 0 && (used < 1 || used > n)))
                throw new CriaException($"--experts {n} --experts-used {used}: need 1 ≤ used ≤ experts ≤ {ModelConfig.MaxExperts}");
            string a = r.GetResult(arch) is { Implicit: false } ? r.GetValue(arch)!.ToLowerInvariant() : spec.Architecture;
            if (a is not ("llama" or "olmo2" or "olmoe")) throw new CriaException($"--arch '{a}': llama, olmo2 or olmoe");
            if (a == "olmo2" && n > 0) throw new CriaException("--arch olmo2 makes dense models (the mixture is --arch olmoe)");
            if (a == "olmoe" && n == 0) throw new CriaException("--arch olmoe needs --experts N");
            if (a == "olmoe") spec = spec with { KvHeads = spec.Heads };
            RandomModel.Write(path, spec with { WeightType = t, MediumMix = mix, Seed = r.GetValue(seed), Experts = n, ExpertsUsed = n > 0 ? used : 2, Architecture = a });
            Console.WriteLine($"wrote {path} ({new FileInfo(path).Length:N0} bytes)");
            return 0;
        });
        return cmd;
    }

    public static GgmlType ParseType(string s) => s.ToLowerInvariant() switch
    {
        "f32" => GgmlType.F32, "f16" => GgmlType.F16, "bf16" => GgmlType.BF16, "q8_0" => GgmlType.Q8_0,
        "q4_0" => GgmlType.Q4_0, "q4_1" => GgmlType.Q4_1, "q5_0" => GgmlType.Q5_0, "q5_1" => GgmlType.Q5_1,
        "q2_k" => GgmlType.Q2_K, "q3_k" => GgmlType.Q3_K, "q4_k" => GgmlType.Q4_K, "q5_k" => GgmlType.Q5_K, "q6_k" => GgmlType.Q6_K,
        "iq4_nl" => GgmlType.IQ4_NL, "iq4_xs" => GgmlType.IQ4_XS,
        _ => throw new CriaException($"unknown weight type '{s}'"),
    };
}
