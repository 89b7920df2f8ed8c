using System.CommandLine;
using Cria.Training;

namespace Cria.Cli;

/// <summary><c>cria train-beacon IN OUT --corpus FILE [--valid FILE]</c>: Activation Beacon trained onto a frozen model
/// (docs/kv-cache.md, "Activation Beacon").</summary>
static class BeaconCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "llama GGUF model (F32 or F16) to extend; it stays frozen" };
        var output = new Argument<string>("output") { Description = "GGUF to write: the model plus its beacon tensors" };
        var corpus = new Option<string>("--corpus") { Description = "training text", Required = true };
        var valid = new Option<string?>("--valid") { Description = "held-out text: the loss after the first window, before and after training" };
        var window = new Option<int>("--window") { Description = "W: raw tokens per window", DefaultValueFactory = _ => 128 };
        var ratios = new Option<string>("--ratios") { Description = "condensing ratios α drawn per window in training, comma-separated (each divides W)", DefaultValueFactory = _ => "4,8,16" };
        var ratio = new Option<int>("--ratio") { Description = "the ratio of the held-out loss and the file's default for inference", DefaultValueFactory = _ => 8 };
        var seq = new Option<int>("--seq") { Description = "raw tokens per training sequence", DefaultValueFactory = _ => 1024 };
        var steps = new Option<int>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 300 };
        var batch = new Option<int>("--batch") { Description = "sequences per step", DefaultValueFactory = _ => 2 };
        var lr = new Option<float>("--lr") { Description = "peak learning rate (AdamW, warm-up then cosine decay)", DefaultValueFactory = _ => 5e-4f };
        var warmup = new Option<int>("--warmup") { Description = "warm-up steps", DefaultValueFactory = _ => 20 };
        var seed = new Option<ulong>("--seed") { Description = "random seed (offsets and ratios)", DefaultValueFactory = _ => 1234UL };
        var threads = new Option<int>("--threads", "-t") { Description = "worker threads (default: all cores)" };
        var force = new Option<bool>("--force") { Description = "replace the output file if it exists" };
        var passkey = new Option<double>("--passkey-fraction") { Description = "fraction of training sequences that are synthetic pass-key documents (cria passkey's prompt, continued by corpus text)", DefaultValueFactory = _ => 0 };
        var answerWeight = new Option<float>("--passkey-answer-weight") { Description = "loss weight of the answer tokens of pass-key documents", DefaultValueFactory = _ => 1f };
        var mlp = new Option<bool>("--mlp") { Description = "the beacons also get their own feed-forward up and down projections (the paper's \"mlp\" beacon parameters; the gate stays shared)" };
        var pkMin = new Option<int>("--passkey-min-length") { Description = "shortest pass-key document in tokens", DefaultValueFactory = _ => 256 };
        var cmd = new Command("train-beacon", "Activation Beacon: train beacon tokens that condense each window's keys and values, so the frozen model reads past its context")
        {
            input, output, corpus, valid, window, ratios, ratio, seq, steps, batch, lr, warmup, seed, threads, force, passkey, answerWeight, pkMin, mlp,
        };
        cmd.SetAction(r =>
        {
            int[] rs;
            try { rs = r.GetValue(ratios)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse).ToArray(); }
            catch (FormatException) { throw new CriaException($"--ratios '{r.GetValue(ratios)}' is not a comma-separated list of integers"); }
            var b = new BeaconOptions
            {
                Window = r.GetValue(window), Ratios = rs, SeqLen = r.GetValue(seq),
                PasskeyFraction = r.GetValue(passkey), AnswerWeight = r.GetValue(answerWeight), PasskeyMinLength = r.GetValue(pkMin), Mlp = r.GetValue(mlp),
            };
            int n = r.GetValue(steps);
            var o = new TrainingOptions
            {
                Steps = n, BatchSize = r.GetValue(batch), LearningRate = r.GetValue(lr), WarmupSteps = Math.Min(r.GetValue(warmup), n),
                WeightDecay = 0f, Seed = r.GetValue(seed), Threads = r.GetValue(threads) > 0 ? r.GetValue(threads) : Environment.ProcessorCount,
            };
            string? validPath = r.GetValue(valid);
            var progress = new ProgressLine();
            var started = DateTime.UtcNow;
            var report = BeaconTraining.Train(DefaultModel.Resolve(r.GetValue(input)), r.GetValue(output)!, TokenizerTrainer.ReadCorpus(r.GetValue(corpus)!),
                validPath == null ? null : TokenizerTrainer.ReadCorpus(validPath), o, b, r.GetValue(ratio),
                log: s => progress.Show($"step {s.Step}/{n}  loss {s.Loss:F4}  lr {s.LearningRate:E2}"), force: r.GetValue(force));
            progress.Done();
            int k = Math.Clamp(report.Steps.Count / 2, 1, 20);
            Console.Out.WriteLine($"wrote {r.GetValue(output)}: {n} steps in {(DateTime.UtcNow - started).TotalSeconds:F0} s, loss {report.Steps.Take(k).Average(x => x.Loss):F4} (first {k}) → {report.Steps.TakeLast(k).Average(x => x.Loss):F4} (last {k})");
            if (validPath != null)
                Console.Out.WriteLine($"held-out loss after the first window at ratio {report.ValidRatio}: {report.ValidLossBefore:F4} (beacons as initialised) → {report.ValidLossAfter:F4} (ppl {Math.Exp(report.ValidLossBefore):F2} → {Math.Exp(report.ValidLossAfter):F2})");
            return 0;
        });
        return cmd;
    }
}
