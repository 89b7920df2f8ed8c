using System.CommandLine;
using Cria.Inference;
using Cria.Models;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria train-locret MODEL -o HEADS.gguf --data TEXT [--eval TEXT]</c>: Locret's retaining heads for
/// <c>--kv-evict locret --kv-heads HEADS.gguf</c> (docs/kv-cache.md).</summary>
static class LocretCommand
{
    public static Command Create()
    {
        var model = new Argument<string?>("model") { Description = "llama GGUF model the heads are for (default: the bundled model)", Arity = ArgumentArity.ZeroOrOne };
        var output = new Option<string>("--output", "-o") { Description = "retaining-head GGUF to write", Required = true };
        var data = new Option<string>("--data") { Description = "training text", Required = true };
        var eval = new Option<string?>("--eval") { Description = "held-out text: loss, the constant predictor's loss and top-quarter recall, before and after training" };
        var steps = new Option<int>("--steps") { Description = "optimizer steps, one sequence each", DefaultValueFactory = _ => 600 };
        var hidden = new Option<int>("--hidden") { Description = "fc1 width of each layer's head", DefaultValueFactory = _ => 256 };
        var lr = new Option<float>("--lr") { Description = "peak learning rate (AdamW; linear warm-up over 2/3 of the steps, then linear decay)", DefaultValueFactory = _ => 5e-4f };
        var alpha = new Option<float>("--alpha") { Description = "weight of the smoothness term MSE(s[k], s[k-1])", DefaultValueFactory = _ => 0.0025f };
        var seq = new Option<int>("--seq") { Description = "training sequence length (default: the model's context)" };
        var answer = new Option<int>("--answer-tokens") { Description = "in plain text, the last N tokens are the answer whose attention defines the labels", DefaultValueFactory = _ => 32 };
        var passkey = new Option<double>("--passkey-fraction") { Description = "fraction of sequences that are synthetic pass-key documents (answer = the key)" };
        var seed = new Option<ulong>("--seed") { Description = "initialisation and data seed", DefaultValueFactory = _ => 1UL };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var force = new Option<bool>("--force") { Description = "replace the output file if it exists" };
        var cmd = new Command("train-locret", "Locret: train retaining heads that predict each token's future attention, for --kv-evict locret")
        {
            model, output, data, eval, steps, hidden, lr, alpha, seq, answer, passkey, seed, threads, force,
        };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            if (File.Exists(outPath) && !r.GetValue(force)) throw new CriaException($"{outPath}: the output file exists (use --force to replace it)");
            using var m = LlamaModel.Open(DefaultModel.Resolve(r.GetValue(model)));
            var o = new LocretOptions
            {
                Steps = r.GetValue(steps), Hidden = r.GetValue(hidden), LearningRate = r.GetValue(lr), Alpha = r.GetValue(alpha),
                SeqLen = r.GetValue(seq), AnswerTokens = r.GetValue(answer), PasskeyFraction = r.GetValue(passkey),
                Seed = r.GetValue(seed), Threads = r.GetValue(threads),
            };
            o.Validate(m.Config.ContextLength);
            var tok = m.Tokenizer;
            var train = tok.Encode(TokenizerTrainer.ReadCorpus(r.GetValue(data)!), addBos: false);
            int[]? held = r.GetValue(eval) is { } e ? tok.Encode(TokenizerTrainer.ReadCorpus(e), addBos: false) : null;
            var passkeys = o.PasskeyFraction > 0 ? new PasskeyDocuments(tok, train) : null;
            // held-out pass-key documents cut their filler from the held-out text
            var heldPasskeys = o.PasskeyFraction > 0 && held != null ? new PasskeyDocuments(tok, held) : null;

            using var locret = new Locret(m, o);
            var h = locret.Heads;
            Console.Error.WriteLine($"train-locret: {h.Layers} layers × fc1 [{h.In} → {h.Hidden}] silu fc2 [{h.Hidden} → {h.KvHeads}], {h.Layers * (h.W1[0].Length + h.W2[0].Length):N0} parameters; {train.Length:N0} training tokens");
            locret.EstimateStatistics(Locret.Sequences(m, o, train, passkeys, o.Seed ^ 0x5757).Take(o.StatSequences));
            IEnumerable<LocretSequence> Held() => Locret.Sequences(m, o, held!, heldPasskeys, 0xE7A1).Take(o.EvalSequences);
            LocretEvaluation? before = null;
            if (held != null)
            {
                before = locret.Evaluate(Held());
                Console.Error.WriteLine($"held-out before: loss {before.Value.Loss:F4} (constant {before.Value.ConstantLoss:F4}), top-quarter recall {before.Value.TopQuarterRecall:F3}");
            }
            var progress = new ProgressLine();
            var first = new List<float>(); var last = new Queue<float>();
            foreach (var s in Locret.Sequences(m, o, train, passkeys, o.Seed).Take(o.Steps))
            {
                var st = locret.Step(s);
                if (first.Count < 20) first.Add(st.Loss);
                last.Enqueue(st.Loss); if (last.Count > 20) last.Dequeue();
                progress.Show($"step {st.Step}/{o.Steps}  loss {st.Loss:F4}  |g| {st.GradNorm:F3}  lr {st.LearningRate:E2}");
            }
            progress.Done();
            h.Write(outPath, $"cria train-locret --steps {o.Steps} --hidden {o.Hidden} --lr {o.LearningRate} --alpha {o.Alpha} --answer-tokens {o.AnswerTokens} --passkey-fraction {o.PasskeyFraction} --seed {o.Seed}");
            Console.Out.WriteLine($"wrote {outPath}: {o.Steps} steps, training loss {first.Average():F4} (first {first.Count}) → {last.Average():F4} (last {last.Count})");
            if (held != null)
            {
                var after = locret.Evaluate(Held());
                Console.Out.WriteLine($"held-out ({after.Sequences} sequences): loss {before!.Value.Loss:F4} → {after.Loss:F4}, constant predictor {after.ConstantLoss:F4}; top-quarter recall {before.Value.TopQuarterRecall:F3} → {after.TopQuarterRecall:F3} (chance 0.25)");
            }
            return 0;
        });
        return cmd;
    }
}
