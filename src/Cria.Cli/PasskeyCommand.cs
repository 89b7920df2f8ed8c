using System.CommandLine;
using System.Globalization;
using Cria.Inference;
using Cria.Models;

namespace Cria.Cli;

/// <summary><c>cria passkey [MODEL] [--task passkey|copy] [--lengths …] [--depths …] [--trials N]</c> plus the KV and
/// RoPE options: long-context retrieval accuracy by prompt length and needle depth.</summary>
static class PasskeyCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Arity = ArgumentArity.ZeroOrOne, Description = "GGUF model file (default: the bundled model)" };
        var task = new Option<string>("--task") { Description = "passkey (a 5-digit key in filler) or copy (a hidden run of words, then its first two words)", DefaultValueFactory = _ => "passkey" };
        var lengths = new Option<string>("--lengths") { Description = "prompt lengths in tokens, comma-separated", DefaultValueFactory = _ => "128,256,512,1024" };
        var depths = new Option<string>("--depths") { Description = "needle depths in the filler (0 = start, 1 = end), comma-separated", DefaultValueFactory = _ => "0,0.25,0.5,0.75,1" };
        var trials = new Option<int>("--trials") { Description = "random needles per cell", DefaultValueFactory = _ => 10 };
        var seed = new Option<int>("--seed", "-s") { Description = "RNG seed", DefaultValueFactory = _ => 1 };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var ctx = new Option<int>("--ctx-size", "-c") { Description = "KV cache tokens (default: the longest prompt + 64)" };
        var ubatch = new Option<int>("--ubatch-size", "-ub") { Description = "rows per forward step (eviction runs after each)", DefaultValueFactory = _ => 256 };
        var cmd = new Command("passkey", "long-context probe: retrieval accuracy by prompt length and needle depth") { model, task, lengths, depths, trials, seed, threads, ctx, ubatch };
        var ragOnly = new Option<bool>("--rag-only") { Description = "read only the chunks retrieved for the question, then the question (what --rapid's drafter reads)" };
        var draftModel = new Option<string?>("--model-draft", "-md") { Description = "with --rapid: this draft model reads the retrieved chunks (default: the model itself)" };
        var filler = new Option<string?>("--filler") { Description = "filler text the needle hides in (default: Genesis 1:2–5)" };
        cmd.Options.Add(filler);
        cmd.Options.Add(ragOnly);
        cmd.Options.Add(draftModel);
        var kv = new KvCliOptions();
        kv.AddTo(cmd);
        var rapid = new RapidCliOptions();
        rapid.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var ci = CultureInfo.InvariantCulture;
            var path = DefaultModel.Resolve(r.GetValue(model));
            using var m = LlamaModel.Open(path);
            var lens = r.GetValue(lengths)!.Split(',').Select(s => int.Parse(s, ci)).ToArray();
            var deps = r.GetValue(depths)!.Split(',').Select(s => double.Parse(s, ci)).ToArray();
            var t = r.GetValue(task) switch
            {
                "passkey" => PasskeyTask.Passkey,
                "copy" => PasskeyTask.Copy,
                var x => throw new CriaException($"unknown task '{x}' (passkey, copy)"),
            };
            int c = r.GetValue(ctx) > 0 ? r.GetValue(ctx) : lens.Max() + 64;
            using var context = new InferenceContext(m, kv.Apply(r, new ContextOptions { ContextSize = c, Threads = r.GetValue(threads), MicroBatch = r.GetValue(ubatch) }));
            Console.Error.WriteLine($"model: {Path.GetFileName(path)} (trained context {m.Config.ContextLength}); task {t}; {KvCliOptions.Describe(context)}");
            if (rapid.Enabled(r) && r.GetValue(ragOnly)) throw new CriaException("give either --rapid or --rag-only, not both");
            var mode = rapid.Enabled(r) ? PasskeyMode.Rapid : r.GetValue(ragOnly) ? PasskeyMode.RagOnly : PasskeyMode.Full;
            if (r.GetValue(draftModel) != null && mode != PasskeyMode.Rapid) throw new CriaException("--model-draft needs --rapid");
            var rag = mode == PasskeyMode.Full ? new RagOptions() : rapid.Rag(r);
            using var dm = r.GetValue(draftModel) is { } dp ? LlamaModel.Open(dp) : null;
            if (dm != null) ModelDrafter.CheckCompatible(m, dm);
            using var draftContext = mode != PasskeyMode.Rapid ? null : new InferenceContext(dm ?? m, new ContextOptions
            {
                ContextSize = rapid.DraftContext(r, 16), Threads = r.GetValue(threads),
            });
            var fill = r.GetValue(filler);
            if (fill != null && m.Tokenizer.Encode(fill, addBos: false).Length == 0) throw new CriaException("--filler must have some text");
            int? beacons = kv.BeaconRatio(r, m.Config);
            if (m.Config.HasBeacons) Console.Error.WriteLine(KvCliOptions.DescribeBeacons(m.Config, beacons));
            if (beacons != null && mode != PasskeyMode.Full) throw new CriaException("--rapid and --rag-only read retrieved chunks; give --no-beacons with them");
            var probe = new PasskeyProbe(context, m.Tokenizer)
            {
                BeaconRatio = beacons,
                Mode = mode, Rag = rag, Filler = fill ?? PasskeyProbe.DefaultFiller,
                Drafter = draftContext == null ? null : new ModelDrafter(draftContext, new SpeculativeOptions { DraftMax = 8, Margin = rapid.Margin(r) }),
            };
            if (mode != PasskeyMode.Full)
                Console.Error.WriteLine($"{(mode == PasskeyMode.Rapid ? string.Create(ci, $"RAPID (η {rapid.Margin(r)}, drafter {(dm != null ? Path.GetFileName(r.GetValue(draftModel)) : "the model itself")}) reading") : "reading only")} " +
                                        $"the retrieved chunks: {rag.BudgetTokens}-token budget of {rag.ChunkTokens}-token chunks, query = the last {rag.QueryTokens} prompt tokens");
            var res = probe.Run(t, lens, deps, r.GetValue(trials), r.GetValue(seed));
            var o = Console.Out;
            o.WriteLine(mode == PasskeyMode.Rapid
                ? "token accuracy (greedy generation, position by position) by length × depth; [exact answers]"
                : "token accuracy (teacher-forced top-1 on the answer) by length × depth; [exact answers]");
            o.WriteLine("| length | " + string.Join(" | ", deps.Select(d => d.ToString("0.##", ci))) + " | mean |");
            o.WriteLine("|---:|" + string.Concat(deps.Select(_ => "---:|")) + "---:|");
            foreach (int len in lens)
            {
                var row = res.Where(x => x.Length == len).ToArray();
                o.WriteLine($"| {len} | " + string.Join(" | ", row.Select(x => string.Create(ci, $"{x.TokenAccuracy:F2} [{x.ExactAccuracy:F1}]"))) +
                            string.Create(ci, $" | {row.Average(x => x.TokenAccuracy):F2} |"));
            }
            o.WriteLine(string.Create(ci, $"overall token accuracy: {res.Average(x => x.TokenAccuracy):F3}, exact: {res.Average(x => x.ExactAccuracy):F3}"));
            if (mode == PasskeyMode.Rapid)
                o.WriteLine(string.Create(ci, $"drafted {probe.Drafted}, kept {probe.Accepted} ({100.0 * probe.Accepted / Math.Max(1, probe.Drafted):F1} %)"));
            return 0;
        });
        return cmd;
    }
}
