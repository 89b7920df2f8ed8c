using System.CommandLine;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// The options of the commands that train LoRA adapters (and a head) on a frozen base — train-classifier,
/// train-reward, train-self-eval: steps, batch, learning rate and warm-up, weight decay, the LoRA rank, alpha and
/// targets, evaluation interval, seed and threads. Each command gives its own defaults.
/// </summary>
sealed class AdapterTrainingCliOptions
{
    readonly Option<int>? _steps;
    readonly Option<int> _batch, _warmup, _rank, _evalEvery;
    readonly Option<float> _lr = new("--lr") { DefaultValueFactory = _ => 1e-3f, Description = "peak learning rate" };
    readonly Option<float> _wd = new("--weight-decay") { DefaultValueFactory = _ => 0.01f };
    readonly Option<float> _alpha;
    readonly Option<string> _targets = new("--lora-targets") { DefaultValueFactory = _ => "all" };
    readonly Option<float> _dropout = new("--lora-dropout") { Description = LoraCli.DropoutHelp };
    readonly Option<bool> _rsLora = new("--rslora") { Description = LoraCli.RsLoraHelp };
    readonly Option<ulong> _seed = new("--seed") { DefaultValueFactory = _ => 1234UL };
    readonly Option<int> _threads = new("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
    readonly Option<bool> _qlora = new("--qlora") { Description = "QLoRA: hold an F32/F16 base's block projections in NF4 with double quantization (a quantized base is trained on in its own types without this)" };

    /// <summary><paramref name="steps"/> 0: the command counts its steps itself (no --steps option).</summary>
    public AdapterTrainingCliOptions(int steps, int batch, int warmup, int rank, float alpha, string? batchDescription = null, string? loraNote = null)
    {
        if (steps > 0) _steps = new("--steps") { DefaultValueFactory = _ => steps };
        _batch = new("--batch", "-b") { DefaultValueFactory = _ => batch, Description = batchDescription };
        _warmup = new("--warmup") { DefaultValueFactory = _ => warmup };
        _rank = new("--lora-rank") { DefaultValueFactory = _ => rank, Description = loraNote != null ? $"LoRA rank ({loraNote})" : null };
        _alpha = new("--lora-alpha") { DefaultValueFactory = _ => alpha, Description = loraNote != null ? $"LoRA alpha ({loraNote})" : null };
        _evalEvery = new("--eval-every") { DefaultValueFactory = _ => 100 };
    }

    public void AddTo(Command cmd)
    {
        if (_steps != null) cmd.Options.Add(_steps);
        foreach (var o in new Option[] { _batch, _lr, _warmup, _wd, _rank, _alpha, _targets, _dropout, _rsLora, _evalEvery, _seed, _threads, _qlora }) cmd.Options.Add(o);
    }

    /// <summary>The optimizer settings, validated; <paramref name="steps"/> where the command has no --steps.</summary>
    public TrainingOptions Training(ParseResult r, int steps = 0)
    {
        var options = new TrainingOptions
        {
            BatchSize = r.GetValue(_batch), Steps = _steps != null ? r.GetValue(_steps) : steps, WarmupSteps = r.GetValue(_warmup), LearningRate = r.GetValue(_lr),
            WeightDecay = r.GetValue(_wd), Seed = r.GetValue(_seed), Threads = Math.Max(1, r.GetValue(_threads)),
        };
        options.Validate();
        return options;
    }

    /// <summary>The adapters' settings, validated.</summary>
    public LoraOptions Lora(ParseResult r)
    {
        var lora = new LoraOptions
        {
            Rank = r.GetValue(_rank), Alpha = r.GetValue(_alpha), Targets = LoraOptions.ParseTargets(r.GetValue(_targets)!),
            Dropout = r.GetValue(_dropout), RsLora = r.GetValue(_rsLora),
        };
        lora.Validate();
        return lora;
    }

    /// <summary>Loads the frozen base the adapters train on (<see cref="GgufImport.ReadForAdapters"/>), in NF4 with --qlora.</summary>
    public GgufImport.Imported Base(ParseResult r, string path, string caller = "--init") => GgufImport.ReadForAdapters(path, caller, nf4: r.GetValue(_qlora));

    /// <summary>Steps between held-out evaluations (at least 1).</summary>
    public int EvalEvery(ParseResult r) => Math.Max(1, r.GetValue(_evalEvery));
}

/// <summary>The help texts of the LoRA options every adapter-training command shares.</summary>
static class LoraCli
{
    public const string DropoutHelp = "LoRA dropout (PEFT's lora_dropout): in training steps each adapter's input is dropped element-wise with this probability; 0 = off";
    public const string RsLoraHelp = "rsLoRA: scale the adapters by alpha/√rank instead of alpha/rank (the file records alpha·√rank, so llama.cpp applies the same scale)";
}

/// <summary>The log lines of a LoRA run: what trains (rank, alpha, targets, trained parameters) and how the frozen base
/// is held when it is compressed (QLoRA).</summary>
static class AdapterLog
{
    /// <param name="alsoTrains">e.g. ", and the head"</param>
    /// <param name="frozen">what stays frozen, e.g. "the base is frozen"</param>
    public static void Write(TextWriter log, Cria.Training.Trainer trainer, string alsoTrains = "", string frozen = "the base is frozen")
    {
        var lay = trainer.Model.Lora ?? throw new InvalidOperationException("not a LoRA run");
        var o = lay.Options;
        log.WriteLine($"LoRA rank {o.Rank}, alpha {o.Alpha}{(o.RsLora ? " (rsLoRA)" : "")}, scale {o.Scale:G4}{(o.Dropout > 0 ? $", dropout {o.Dropout}" : "")}, on {o.Targets}{alsoTrains}: {lay.Tensors.Sum(t => t.Count):N0} trained parameters; {frozen}");
        if (trainer.Model.Frozen is { } fb)
            log.WriteLine(FormattableString.Invariant($"frozen base projections: {fb.Kind}, {fb.Bytes / 1048576.0:F1} MiB ({fb.BitsPerWeight:F3} bits per weight; F32 would be {fb.Matrices.Sum(m => (long)m.Rows * m.Cols) * 4 / 1048576.0:F1} MiB), dequantized one matrix at a time"));
    }
}

/// <summary>
/// The step loop the fine-tuning commands share (train-classifier, train-reward, train-self-eval, train --pairs and
/// --sft): "step N" (the trainer's step: 0, or where a resumed run starts) with the held-out report, then steps until
/// the trainer reaches <paramref name="steps"/>, printing a line every 10 steps and at each evaluation (every
/// <paramref name="every"/> steps, and the last), where the held-out report is appended. <paramref name="step"/> runs one step and returns its measures.
/// </summary>
static class StepLoop
{
    public static void Run(Cria.Training.Trainer trainer, int steps, int every, Func<string> step, Func<string> held)
    {
        Console.Out.WriteLine($"step {trainer.Step}{held()}");
        while (trainer.Step < steps)
        {
            string measures = step();
            int s = trainer.Step;
            bool eval = s % every == 0 || s == steps;
            if (s % 10 == 0 || eval) Console.Out.WriteLine($"step {s}/{steps}  {measures}{(eval ? held() : "")}");
        }
    }
}

/// <summary>A fine-tuning run's checkpoint file: written atomically by <see cref="Save"/>, and after any step once
/// <c>minutes</c> have passed since the last write (<see cref="After"/> wraps a step loop's step).</summary>
sealed class StepCheckpoint(Cria.Training.Trainer trainer, string path, ulong tokenizerHash, double minutes)
{
    readonly System.Diagnostics.Stopwatch _since = System.Diagnostics.Stopwatch.StartNew();
    public string Path { get; } = path;
    public ulong TokenizerHash { get; } = tokenizerHash;

    public void Save()
    {
        trainer.SaveCheckpoint(Path, TokenizerHash);
        _since.Restart();
    }

    public Func<string> After(Func<string> step) => () =>
    {
        string measures = step();
        if (_since.Elapsed.TotalMinutes >= minutes) { Save(); measures += $"  (checkpoint → {Path})"; }
        return measures;
    };
}
