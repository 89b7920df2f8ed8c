using System.Diagnostics;
using System.Text.Json;
using Cria.Models;
using Cria.Serving;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Cria.Bench;

/// <summary>
/// Grammar-constrained sampling's own cost, side by side with llama.cpp's grammar sampler, on one vocabulary:
///   Cria.Bench grammar (--model FILE | --hf-tokenizer DIR) [--steps 60] [--rounds 5]
/// --hf-tokenizer takes a Hugging Face tokenizer.json's folder (the test fixtures' real Llama 2 and Llama 3
/// vocabularies) and writes a tiny random model with that vocabulary to measure on.
/// For each grammar a token sequence is drawn once (a random allowed token per step, seeded). Then, alternating
/// engines each round, every step masks the whole vocabulary for the current state and accepts the step's token:
/// Cria's <see cref="GrammarConstraint"/> (a walk of the vocabulary's byte trie) against llama.cpp's
/// llama_sampler_apply + llama_sampler_accept on a grammar sampler (through LLamaSharp 0.30.0). Prints the median
/// milliseconds per step of each and their ratio. No model is run: this is the sampler alone.
/// </summary>
static class GrammarBench
{
    static readonly (string Name, string Gbnf)[] Grammars =
    [
        ("json schema (person)", JsonSchemaGrammar.ToGbnf(JsonDocument.Parse("""
            {"type":"object","properties":{"name":{"type":"string","maxLength":24},"age":{"type":"integer"},
             "tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3},"ok":{"type":["boolean","null"]},
             "bio":{"type":"string"}},"required":["name","age","bio"]}
            """).RootElement)),
        ("words and numbers", "root ::= item (\", \" item)*\nitem ::= [0-9]+ | \"the \" [a-z]+"),
        ("free text [^<>]*", "root ::= [^<>]*"),
    ];

    public static int Run(string[] args)
    {
        var (model, steps, rounds) = VocabularyArgs(args, steps: 60);
        using var m = LlamaModel.Open(model);
        var tok = m.Tokenizer;
        int V = tok.VocabSize;
        var sw = Stopwatch.StartNew();
        var tries = new TokenTries(tok);
        tries.For(0);
        Console.WriteLine($"{Path.GetFileName(model)}: vocabulary {V:N0}; Cria's byte trie built in {sw.Elapsed.TotalMilliseconds:F0} ms (once per engine)");

        LlamaEngine.EnsureLoaded();
        var p = new ModelParams(model) { ContextSize = 64, GpuLayerCount = 0 };
        using var weights = LLamaWeights.LoadFromFile(p);
        var zero = new float[V];
        var masked = new float[V];
        Console.WriteLine($"{"grammar",-22} {"steps",5} {"allowed/step",12} {"Cria ms/step",13} {"llama.cpp ms/step",18} {"llama.cpp / Cria",17}");
        foreach (var (name, gbnf) in Grammars)
        {
            var grammar = Grammar.Parse(gbnf);
            // The token sequence: a random allowed text token per step (no end-of-generation).
            var rng = new Random(7);
            var seq = new List<int>();
            long allowed = 0;
            var c0 = new GrammarConstraint(tries, grammar.Start());
            for (int s = 0; s < steps; s++)
            {
                if (!c0.Mask(zero, masked, 0)) break;
                var ok = Enumerable.Range(0, V).Where(v => !float.IsNegativeInfinity(masked[v]) && !tok.IsEog(v) && !tok.IsControl(v)).ToArray();
                allowed += ok.Length;
                if (ok.Length == 0) break;
                int t = ok[rng.Next(ok.Length)];
                seq.Add(t);
                c0.Accept(t, 0);
            }
            var cria = new List<double>();
            var llama = new List<double>();
            for (int r = 0; r < rounds + 1; r++)
            {
                for (int order = 0; order < 2; order++)
                {
                    bool criaTurn = (order + r) % 2 == 0;
                    double ms = criaTurn ? TimeCria(tries, grammar, seq, zero, masked) : TimeLlama(weights, gbnf, seq, zero);
                    if (r == 0) continue; // warm-up
                    (criaTurn ? cria : llama).Add(ms / seq.Count);
                }
            }
            double mc = Median(cria), ml = Median(llama);
            Console.WriteLine($"{name,-22} {seq.Count,5} {allowed / (double)Math.Max(1, seq.Count),12:F0} {mc,13:F3} {ml,18:F3} {ml / mc,17:F2}");
        }
        return 0;
    }

    /// <summary>The options of the benches that run on one vocabulary (grammar, sampling): (--model FILE |
    /// --hf-tokenizer DIR) [--steps N] [--rounds R].</summary>
    internal static (string Model, int Steps, int Rounds) VocabularyArgs(string[] args, int steps)
    {
        string? model = null;
        int rounds = 5;
        for (int i = 0; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--model": model = Next(); break;
                case "--steps": steps = int.Parse(Next()); break;
                case "--rounds": rounds = int.Parse(Next()); break;
                case "--hf-tokenizer": model = WithVocabulary(Next()); break;
                default: throw new ArgumentException($"unknown option {a}");
            }
        }
        return (model ?? throw new ArgumentException("--model FILE or --hf-tokenizer DIR"), steps, rounds);
    }

    /// <summary>A tiny random model (dim 64, one layer) with a Hugging Face tokenizer's vocabulary, in a temporary file.</summary>
    internal static string WithVocabulary(string dir)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer.json")));
        var root = doc.RootElement;
        int count = root.GetProperty("model").GetProperty("vocab").EnumerateObject().Max(p => p.Value.GetInt32()) + 1;
        if (root.TryGetProperty("added_tokens", out var added))
            foreach (var t in added.EnumerateArray()) count = Math.Max(count, t.GetProperty("id").GetInt32() + 1);
        var meta = HfTokenizer.Convert(dir, count);
        string path = Path.Combine(Path.GetTempPath(), $"cria-grammar-bench-{count}.gguf");
        RandomModel.Write(path, new RandomModelSpec { Dim = 64, Layers = 1, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = count, TokenizerMetadata = meta, Name = "grammar-bench" });
        return path;
    }

    static double TimeCria(TokenTries tries, Grammar grammar, List<int> seq, float[] zero, float[] masked)
    {
        var sw = Stopwatch.StartNew();
        var c = new GrammarConstraint(tries, grammar.Start());
        foreach (int t in seq)
        {
            c.Mask(zero, masked, 0);
            c.Accept(t, 0);
        }
        return sw.Elapsed.TotalMilliseconds;
    }

    static double TimeLlama(LLamaWeights weights, string gbnf, List<int> seq, float[] zero)
    {
        using var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        chain.AddGrammar(weights.NativeHandle.Vocab, gbnf, "root");
        var data = new LLamaTokenData[zero.Length];
        var sw = Stopwatch.StartNew();
        foreach (int t in seq)
        {
            var arr = LLamaTokenDataArray.Create(zero, data);
            using (LLamaTokenDataArrayNative.Create(arr, out var native)) chain.Apply(ref native);
            chain.Accept((LLamaToken)t);
        }
        return sw.Elapsed.TotalMilliseconds;
    }

    internal static double Median(List<double> xs)
    {
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length == 0 ? double.NaN : s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
