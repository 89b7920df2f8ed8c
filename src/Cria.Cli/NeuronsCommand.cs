using System.CommandLine;
using System.Globalization;
using Cria.Interpretability;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria neurons [MODEL] [--view up|gate|down] [--layer L] [--top K] [--show N] [--token TEXT] [--compare OTHER]</c>:
/// decodes every feed-forward neuron through the final norm and the output head (<see cref="NeuronLens"/>).</summary>
static class NeuronsCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Arity = ArgumentArity.ZeroOrOne, Description = "GGUF model (default: the bundled model)" };
        var view = new Option<string>("--view") { Description = "up (what a neuron reads; the paper's choice), gate, or down (what it writes)", DefaultValueFactory = _ => "up" };
        var layer = new Option<int?>("--layer", "-l") { Description = "only this block (default: all)" };
        var top = new Option<int>("--top") { Description = "tokens shown per neuron", DefaultValueFactory = _ => 5 };
        var show = new Option<int>("--show") { Description = "neurons listed per layer, most confident first", DefaultValueFactory = _ => 8 };
        var token = new Option<string?>("--token") { Description = "list the neurons whose top token is this text (with or without its leading space)" };
        var compare = new Option<string?>("--compare") { Description = "another model of the same shape (e.g. a fine-tune): the share of neurons whose top token is the same" };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var probe = new Option<string?>("--probe") { Description = "with --token: a text file; its windows are neutral prompts on which the top neurons are clamped, and the mean probability of the token is reported" };
        var values = new Option<string>("--values") { Description = "with --probe: clamp values tried", DefaultValueFactory = _ => "0,5,10,20" };
        var windows = new Option<int>("--windows") { Description = "with --probe: prompts (windows of 32 tokens, evenly spaced)", DefaultValueFactory = _ => 64 };
        var cmd = new Command("neurons", "decode feed-forward neurons into tokens through the output head (clamp one with generate --clamp L:N=V)")
        {
            model, view, layer, top, show, token, compare, threads, probe, values, windows,
        };
        cmd.SetAction(r =>
        {
            using var m = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(model)));
            var v = r.GetValue(view)!.ToLowerInvariant() switch
            {
                "up" => NeuronView.Up, "gate" => NeuronView.Gate, "down" => NeuronView.Down,
                var x => throw new CriaException($"--view '{x}': up, gate or down"),
            };
            int? only = r.GetValue(layer);
            var layers = only is int l ? new[] { l } : null;
            var readings = NeuronLens.Decode(m, v, r.GetValue(top), layers, r.GetValue(threads));
            var tok = m.Tokenizer;
            string Piece(int id) => tok.Decode([id]).Replace("\n", "\\n");
            string Row(NeuronReading n) => $"{n.Layer,3}:{n.Neuron,-6} " + string.Join("  ", n.Tokens.Select((t, j) => $"{Piece(t)} {n.Probs[j].ToString("F3", CultureInfo.InvariantCulture)}"));

            if (r.GetValue(compare) is { } other)
            {
                using var m2 = LlamaModel.Open(other);
                var b = NeuronLens.Decode(m2, v, 1, layers, r.GetValue(threads));
                foreach (var g in readings.Zip(b).GroupBy(p => p.First.Layer))
                    Console.WriteLine($"layer {g.Key}: {NeuronLens.SameTopToken(g.Select(p => p.First).ToList(), g.Select(p => p.Second).ToList()):P1} of {g.Count()} neurons keep their top token");
                Console.WriteLine($"same top token: {NeuronLens.SameTopToken(readings, b):P1} of {readings.Count} {v.ToString().ToLowerInvariant()} neurons");
                // Neurons whose decoding in this model is confident: a near-uniform decoding's top token is fragile.
                foreach (float min in new[] { 0.01f, 0.05f, 0.1f, 0.3f })
                {
                    var sure = readings.Zip(b).Where(p => p.First.TopProb >= min).ToList();
                    if (sure.Count > 0)
                        Console.WriteLine($"  of the {sure.Count} with top-1 probability ≥ {min}: {NeuronLens.SameTopToken(sure.Select(p => p.First).ToList(), sure.Select(p => p.Second).ToList()):P1} keep it");
                }
                return 0;
            }
            if (r.GetValue(token) is { } text)
            {
                var ids = Enumerable.Range(0, m.Config.VocabSize).Where(id => Piece(id).Trim() == text.Trim()).ToHashSet();
                if (ids.Count == 0) throw new CriaException($"--token '{text}': no vocabulary entry decodes to it");
                var hits = readings.Where(n => ids.Contains(n.TopToken)).OrderByDescending(n => n.TopProb).ToList();
                Console.WriteLine($"{hits.Count} of {readings.Count} {v.ToString().ToLowerInvariant()} neurons have '{text}' as their top token (ids {string.Join(", ", ids)}):");
                foreach (var n in hits.Take(r.GetValue(show) * 4)) Console.WriteLine(Row(n));
                if (r.GetValue(probe) is { } probeFile)
                {
                    var all = tok.Encode(File.ReadAllText(probeFile), addBos: false);
                    int nw = r.GetValue(windows);
                    if (nw < 1 || all.Length < 33) throw new CriaException($"--probe {probeFile}: need at least 33 tokens and --windows ≥ 1");
                    var prompts = Enumerable.Range(0, nw).Select(i => new[] { tok.Bos }.Concat(all.Skip((int)((long)i * (all.Length - 32) / nw)).Take(31)).ToArray()).ToList();
                    var vals = r.GetValue(values)!.Split(',').Select(x => float.Parse(x, CultureInfo.InvariantCulture)).ToArray();
                    double baseline = NeuronLens.MeanProbability(m, [], prompts, ids, r.GetValue(threads));
                    Console.WriteLine($"\nmean P('{text}') at the end of {prompts.Count} windows of {probeFile}: {baseline:F5} unclamped");
                    Console.WriteLine($"{"neuron",-10}" + string.Join("", vals.Select(x => $"{"=" + x.ToString(CultureInfo.InvariantCulture),12}")));
                    foreach (var n in hits.Take(r.GetValue(show)))
                    {
                        var cells = vals.Select(x => NeuronLens.MeanProbability(m, [new NeuronClamp(n.Layer, n.Neuron, x)], prompts, ids, r.GetValue(threads)));
                        Console.WriteLine($"{n.Layer + ":" + n.Neuron,-10}" + string.Join("", cells.Select(p => $"{p,12:F5}")));
                    }
                }
                return 0;
            }
            foreach (var g in readings.GroupBy(n => n.Layer))
            {
                var probs = g.Select(n => n.TopProb).Order().ToArray();
                Console.WriteLine($"layer {g.Key}: {g.Count()} neurons, top-1 probability median {probs[probs.Length / 2]:F3}, max {probs[^1]:F3}; {g.Select(n => n.TopToken).Distinct().Count()} distinct top tokens");
                foreach (var n in g.OrderByDescending(n => n.TopProb).Take(r.GetValue(show))) Console.WriteLine(Row(n));
            }
            return 0;
        });
        return cmd;
    }
}
