using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cria.Formats;
using Cria.Tensors;
using Cria.Tokenization;
using Cria.Models;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// <c>cria train --corpus FILE --out DIR …</c>: trains (or reuses) a SentencePiece-style tokenizer, then a Llama model
/// from scratch with AdamW. DIR receives tokenizer.gguf, checkpoint.bin (atomic, every few minutes), log.csv,
/// loss.svg, model.gguf (latest) and best.gguf (lowest validation loss).
/// </summary>
static class TrainCommand
{
    public static Command Create()
    {
        var corpus = new Option<string>("--corpus", "-i") { Description = "training text (UTF-8)", DefaultValueFactory = _ => "data/train.txt" };
        var valid = new Option<string?>("--valid") { Description = "held-out text for validation loss (default: data/valid.txt beside the corpus, if present)" };
        var outDir = new Option<string>("--out", "-o") { Description = "output directory", DefaultValueFactory = _ => "out/train" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "reuse this vocabulary (a GGUF with tokenizer.ggml.* metadata) instead of training one" };
        var vocab = new Option<int>("--vocab-size") { Description = "vocabulary size of the trained tokenizer", DefaultValueFactory = _ => 4096 };
        var dim = new Option<int>("--dim") { DefaultValueFactory = _ => 256, Description = "embedding width" };
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 4 };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 8 };
        var kvHeads = new Option<int>("--kv-heads") { DefaultValueFactory = _ => 2, Description = "key/value heads (GQA)" };
        var ffn = new Option<int>("--ffn") { DefaultValueFactory = _ => 768, Description = "feed-forward width" };
        var ctx = new Option<int>("--ctx") { DefaultValueFactory = _ => 256, Description = "context length = training sequence length" };
        var ropeScale = new Option<float>("--rope-scale") { Description = "linear RoPE scaling (position interpolation) for training at a longer context: positions ÷ F, written into the model" };
        var window = new Option<int>("--attn-window") { Description = "LongGen's hybrid attention: the windowed layers (--attn-window-layers) attend only to the first --attn-window-sinks positions and the last W; written into the model, which inference then runs with the same masks and a bounded cache for those layers. With --init, converts a full-attention model while it trains (LongGen's recipe); 0 with --init trains a hybrid model back to full attention" };
        var windowSinks = new Option<int>("--attn-window-sinks") { Description = "attention sinks of the windowed layers (positions from the start every query sees)", DefaultValueFactory = _ => ModelConfig.DefaultWindowSinks };
        var windowLayers = new Option<string>("--attn-window-layers") { Description = "which layers are windowed: longgen (the bottom and top thirds; the middle third keeps full attention), all, or a list such as 0,1,4,5", DefaultValueFactory = _ => "longgen" };
        var s2 = new Option<bool>("--s2-attn") { Description = "LongLoRA's shifted sparse attention for long-context training: groups of ctx/4, half the heads shifted by half a group (inference keeps full attention)" };
        var tied = new Option<bool>("--tied") { Description = "tie the output head to the token embedding" };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 2000 };
        var batch = new Option<int>("--batch", "-b") { DefaultValueFactory = _ => 8, Description = "sequences per micro-batch" };
        var accum = new Option<int>("--accum") { DefaultValueFactory = _ => 1, Description = "micro-batches per optimizer step" };
        var lr = new Option<float>("--lr") { DefaultValueFactory = _ => 1e-3f, Description = "peak learning rate" };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 100 };
        var minLr = new Option<float>("--min-lr-ratio") { DefaultValueFactory = _ => 0.1f };
        var wd = new Option<float>("--weight-decay") { DefaultValueFactory = _ => 0.1f };
        var clip = new Option<float>("--clip") { DefaultValueFactory = _ => 1.0f, Description = "global gradient-norm clip (0 = off)" };
        var seed = new Option<ulong>("--seed") { DefaultValueFactory = _ => 1234UL };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var resume = new Option<bool>("--resume") { Description = "continue from OUT/checkpoint.bin" };
        var ckptMinutes = new Option<double>("--checkpoint-minutes") { DefaultValueFactory = _ => 5.0 };
        var evalEvery = new Option<int>("--eval-every") { DefaultValueFactory = _ => 100, Description = "steps between validation evaluations" };
        var evalBatches = new Option<int>("--eval-batches") { DefaultValueFactory = _ => 8 };
        var exportType = new Option<string>("--export-type") { DefaultValueFactory = _ => "f32", Description = "f32 or f16" };
        var name = new Option<string>("--name") { DefaultValueFactory = _ => "cria-trained" };
        var init = new Option<string?>("--init") { Description = "start from this F32/F16 llama GGUF's weights and tokenizer (shape from the file; --ctx may change the context; fresh AdamW state)" };
        var passkey = new Option<double>("--passkey-fraction") { Description = "fraction of training rows that are synthetic pass-key documents (cria passkey's prompt, filler from the corpus)", DefaultValueFactory = _ => 0 };
        var answerWeight = new Option<float>("--passkey-answer-weight") { Description = "loss weight of the answer tokens of pass-key documents (every other target weighs 1; 0 masks them)", DefaultValueFactory = _ => 1f };
        var pkMin = new Option<int>("--passkey-min-length") { Description = "shortest pass-key document in tokens (the longest fills the row)", DefaultValueFactory = _ => 64 };
        var repeat = new Option<double>("--repeat-fraction") { Description = "fraction of training rows that are a random token sequence repeated (loss on the copies only: the induction-head signal)", DefaultValueFactory = _ => 0 };
        var pairs = new Option<string?>("--pairs") { Description = "with --init: preference optimisation on this JSONL file of {\"prompt\", \"chosen\", \"rejected\"} pairs instead of language modelling on --corpus" };
        var validPairs = new Option<string?>("--valid-pairs") { Description = "held-out pairs (same format): mean margin and accuracy at every evaluation" };
        var sft = new Option<string?>("--sft") { Description = "with --init: supervised fine-tuning on this JSONL file, the loss on the responses only: {\"prompt\", \"completion\"} (or \"response\"), or through the model's chat template {\"messages\": [...]} / {\"instruction\", \"response\"} (magpie's records)" };
        var pack = new Option<bool>("--pack") { Description = "with --sft: pack several examples into each row of the model's context, each attending only to itself (no padding to the longest example)" };
        var validSft = new Option<string?>("--valid-sft") { Description = "held-out SFT examples (same format): mean response loss and perplexity at every evaluation" };
        var preference = new Option<string>("--preference") { Description = "dpo (reference = the --init model) or simpo (no reference)", DefaultValueFactory = _ => "dpo" };
        var beta = new Option<float?>("--beta") { Description = "preference β (default: DPO 0.1, SimPO 2)" };
        var gamma = new Option<float?>("--gamma") { Description = "SimPO target margin γ (default β/2)" };
        var loraRank = new Option<int>("--lora-rank") { Description = "with --init: train only LoRA adapters of this rank (the base stays frozen) and write OUT/adapter.gguf (llama.cpp's --lora format) instead of a model; 0 = full training", DefaultValueFactory = _ => 0 };
        var loraAlpha = new Option<float?>("--lora-alpha") { Description = "LoRA alpha (the adapter is scaled by alpha/rank; default 2 × rank)" };
        var loraTargets = new Option<string>("--lora-targets") { Description = "projections that get adapters: q,k,v,o,gate,up,down, attn or all", DefaultValueFactory = _ => "all" };
        var loraDropout = new Option<float>("--lora-dropout") { Description = LoraCli.DropoutHelp };
        var rsLora = new Option<bool>("--rslora") { Description = LoraCli.RsLoraHelp };
        var qlora = new Option<bool>("--qlora") { Description = "with --lora-rank: QLoRA — hold the frozen base's block projections in NF4 with double quantization (4.127 bits per weight) instead of F32, dequantized one matrix at a time. A base whose projections are already quantized (Q4_K_M, Q8_0 …) is trained on in its own type without this option" };
        var cmd = new Command("train", "train a tokenizer and a Llama model from scratch on a text corpus, or fine-tune one (--init, optionally with --lora-rank)")
        {
            corpus, valid, outDir, tokenizer, vocab, dim, layers, heads, kvHeads, ffn, ctx, tied, steps, batch, accum, lr, warmup, minLr, wd, clip,
            seed, threads, resume, ckptMinutes, evalEvery, evalBatches, exportType, name, init, passkey, answerWeight, pkMin, repeat,
            loraRank, loraAlpha, loraTargets, loraDropout, rsLora, pairs, validPairs, preference, beta, gamma, sft, validSft, pack, s2, ropeScale, qlora,
            window, windowSinks, windowLayers,
        };
        cmd.SetAction(r =>
        {
            var shapeNoVocab = new LlamaShape
            {
                VocabSize = r.GetValue(vocab), Dim = r.GetValue(dim), Layers = r.GetValue(layers), Heads = r.GetValue(heads),
                KvHeads = r.GetValue(kvHeads), FfnDim = r.GetValue(ffn), ContextLength = r.GetValue(ctx), TiedEmbeddings = r.GetValue(tied),
            };
            var options = new TrainingOptions
            {
                BatchSize = r.GetValue(batch), GradAccumulation = r.GetValue(accum), Steps = r.GetValue(steps), WarmupSteps = r.GetValue(warmup),
                LearningRate = r.GetValue(lr), MinLrRatio = r.GetValue(minLr), WeightDecay = r.GetValue(wd), GradClip = r.GetValue(clip),
                Seed = r.GetValue(seed), Threads = Math.Max(1, r.GetValue(threads)),
            };
            if (r.GetValue(s2) && (r.GetValue(sft) != null || r.GetValue(pairs) != null))
                throw new CriaException("--s2-attn trains language models at long context; --sft and --pairs run with full attention");
            var type = r.GetValue(exportType)!.ToLowerInvariant() switch
            {
                "f32" => GgmlType.F32, "f16" => GgmlType.F16,
                var t => throw new CriaException($"--export-type must be f32 or f16, got '{t}'"),
            };
            string? initPath = r.GetValue(init);
            GgufImport.Imported? imported = null;
            if (initPath != null)
            {
                if (r.GetValue(tokenizer) != null) throw new CriaException("--init brings its own tokenizer; do not give --tokenizer with it");
                foreach (var o in new Option[] { vocab, dim, layers, heads, kvHeads, ffn, tied })
                    if (r.GetResult(o) is { Implicit: false }) throw new CriaException($"--init takes the model's shape from {initPath}; do not give {o.Name} with it");
                bool adapters = r.GetValue(loraRank) != 0;
                if (r.GetValue(qlora) && !adapters) throw new CriaException("--qlora trains LoRA adapters on an NF4 base: give --lora-rank");
                imported = adapters ? GgufImport.ReadForAdapters(initPath, nf4: r.GetValue(qlora)) : GgufImport.Read(initPath);
                shapeNoVocab = r.GetResult(ctx) is { Implicit: false } ? imported.Shape with { ContextLength = r.GetValue(ctx) } : imported.Shape;
            }
            else if (r.GetValue(qlora)) throw new CriaException("--qlora trains LoRA adapters on an existing model: give it with --init MODEL --lora-rank R");
            if (r.GetResult(ropeScale) is { Implicit: false }) shapeNoVocab = shapeNoVocab with { RopeScale = r.GetValue(ropeScale) };
            if (r.GetResult(window) is { Implicit: false })
            {
                int w = r.GetValue(window);
                if (w < 0 || r.GetValue(windowSinks) < 0) throw new CriaException($"--attn-window {w} and --attn-window-sinks {r.GetValue(windowSinks)} must be ≥ 0");
                shapeNoVocab = w == 0 ? shapeNoVocab with { WindowLayers = null, Window = 0, WindowSinks = 0 } : shapeNoVocab with
                {
                    Window = w, WindowSinks = r.GetValue(windowSinks),
                    WindowLayers = ModelConfig.ParseWindowLayers(r.GetValue(windowLayers)!, shapeNoVocab.Layers),
                };
            }
            else if (r.GetResult(windowSinks) is { Implicit: false } || r.GetResult(windowLayers) is { Implicit: false })
                throw new CriaException("--attn-window-sinks and --attn-window-layers need --attn-window");
            if (r.GetValue(s2))
            {
                int group = shapeNoVocab.ContextLength / 4 / 2 * 2;
                if (group < 2) throw new CriaException($"--s2-attn needs a context of at least 8 tokens (groups of ctx/4), got {shapeNoVocab.ContextLength}");
                options = options with { S2Group = group };
            }
            LoraOptions? lora = null;
            int rank = r.GetValue(loraRank);
            if (rank != 0)
            {
                if (initPath == null) throw new CriaException("--lora-rank adapts an existing model: give it with --init MODEL");
                lora = new LoraOptions
                {
                    Rank = rank, Alpha = r.GetValue(loraAlpha) ?? 2f * rank, Targets = LoraOptions.ParseTargets(r.GetValue(loraTargets)!),
                    Dropout = r.GetValue(loraDropout), RsLora = r.GetValue(rsLora),
                };
                lora.Validate();
            }
            else if (new Option[] { loraAlpha, loraTargets, loraDropout, rsLora }.Any(o => r.GetResult(o) is { Implicit: false }))
                throw new CriaException("--lora-alpha, --lora-targets, --lora-dropout and --rslora need --lora-rank");
            PreferenceOptions? prefs = null;
            if (r.GetValue(pairs) != null)
            {
                if (initPath == null) throw new CriaException("--pairs fine-tunes an existing model: give it with --init MODEL");
                var kind = r.GetValue(preference)!.ToLowerInvariant() switch
                {
                    "dpo" => PreferenceLoss.Dpo, "simpo" => PreferenceLoss.SimPo,
                    var k => throw new CriaException($"--preference must be dpo or simpo, got '{k}'"),
                };
                var d = PreferenceOptions.Default(kind);
                float b = r.GetValue(beta) ?? d.Beta;
                prefs = d with { Beta = b, Gamma = r.GetValue(gamma) ?? (kind == PreferenceLoss.SimPo ? b / 2 : 0f) };
                prefs.Validate();
            }
            else if (r.GetValue(validPairs) != null || r.GetResult(beta) is { Implicit: false } || r.GetResult(gamma) is { Implicit: false } || r.GetResult(preference) is { Implicit: false })
                throw new CriaException("--valid-pairs, --preference, --beta and --gamma need --pairs");
            if (r.GetValue(sft) != null)
            {
                if (initPath == null) throw new CriaException("--sft fine-tunes an existing model: give it with --init MODEL");
                if (r.GetValue(pairs) != null) throw new CriaException("give either --sft or --pairs, not both");
            }
            else if (r.GetValue(validSft) != null) throw new CriaException("--valid-sft needs --sft");
            if (r.GetValue(pack) && r.GetValue(sft) == null) throw new CriaException("--pack packs SFT examples: it needs --sft");
            double pkFraction = r.GetValue(passkey);
            if (!(pkFraction >= 0 && pkFraction <= 1)) throw new CriaException($"--passkey-fraction must be in [0, 1], got {pkFraction}");
            double repeatFraction = r.GetValue(repeat);
            if (!(repeatFraction >= 0 && repeatFraction <= 1)) throw new CriaException($"--repeat-fraction must be in [0, 1], got {repeatFraction}");
            if (pkFraction + repeatFraction > 1) throw new CriaException($"--passkey-fraction ({pkFraction}) and --repeat-fraction ({repeatFraction}) add up to more than 1");
            float aw = r.GetValue(answerWeight);
            if (!(aw >= 0) || !float.IsFinite(aw)) throw new CriaException($"--passkey-answer-weight must be a finite number ≥ 0, got {aw}");
            int pkMinLength = r.GetValue(pkMin);
            if (pkMinLength < 32 || pkMinLength > shapeNoVocab.ContextLength)
                throw new CriaException($"--passkey-min-length must be between 32 and the context ({shapeNoVocab.ContextLength}), got {pkMinLength}");
            var run = new TrainingRun
            {
                Init = imported, InitPath = initPath, Lora = lora, Preference = prefs, PairsPath = r.GetValue(pairs), ValidPairsPath = r.GetValue(validPairs),
                SftPath = r.GetValue(sft), ValidSftPath = r.GetValue(validSft), Pack = r.GetValue(pack), PasskeyFraction = pkFraction, AnswerWeight = aw, PasskeyMinLength = pkMinLength, RepeatFraction = repeatFraction,
                CorpusPath = r.GetValue(corpus)!, ValidPath = r.GetValue(valid), OutDir = r.GetValue(outDir)!, TokenizerPath = r.GetValue(tokenizer),
                Shape = shapeNoVocab, Options = options, Resume = r.GetValue(resume), CheckpointMinutes = r.GetValue(ckptMinutes),
                EvalEvery = r.GetValue(evalEvery), EvalBatches = r.GetValue(evalBatches), ExportType = type, Name = r.GetValue(name)!,
                CommandLine = "cria " + string.Join(' ', r.Tokens.Select(t => t.Value.Contains(' ') ? $"\"{t.Value}\"" : t.Value)),
            };
            return run.Execute();
        });
        return cmd;
    }
}

/// <summary>One invocation of <c>cria train</c>: checks every input, then loops with progress, CSV, SVG and checkpoints.</summary>
sealed class TrainingRun
{
    public required string CorpusPath { get; init; }
    public string? ValidPath { get; init; }
    public required string OutDir { get; init; }
    public string? TokenizerPath { get; init; }
    public required LlamaShape Shape { get; init; }
    public required TrainingOptions Options { get; init; }
    public bool Resume { get; init; }
    public double CheckpointMinutes { get; init; }
    public int EvalEvery { get; init; }
    public int EvalBatches { get; init; }
    public GgmlType ExportType { get; init; }
    public required string Name { get; init; }
    public required string CommandLine { get; init; }
    /// <summary>The model to start from (<c>--init</c>): its weights, shape and tokenizer.</summary>
    public GgufImport.Imported? Init { get; init; }
    public string? InitPath { get; init; }
    /// <summary>Train only LoRA adapters on the frozen <see cref="Init"/> model.</summary>
    public LoraOptions? Lora { get; init; }
    /// <summary>Preference optimisation on <see cref="PairsPath"/> instead of language modelling.</summary>
    public PreferenceOptions? Preference { get; init; }
    public string? PairsPath { get; init; }
    public string? ValidPairsPath { get; init; }
    /// <summary>Supervised fine-tuning on <see cref="SftPath"/> (the loss on responses only) instead of language modelling.</summary>
    public string? SftPath { get; init; }
    public string? ValidSftPath { get; init; }
    /// <summary>--pack: SFT rows of the model's context, each holding as many examples as fit (Trainer.FillPackedRows).</summary>
    public bool Pack { get; init; }
    public double PasskeyFraction { get; init; }
    public float AnswerWeight { get; init; } = 1f;
    public int PasskeyMinLength { get; init; } = 64;
    public double RepeatFraction { get; init; }

    public int Execute()
    {
        if (Preference != null) return ExecutePreference();
        if (SftPath != null) return ExecuteSft();
        // ---- every check before any work ----
        Shape.Validate();
        Options.Validate();
        if (EvalEvery <= 0 || EvalBatches <= 0 || !(CheckpointMinutes > 0))
            throw new CriaException($"--eval-every ({EvalEvery}), --eval-batches ({EvalBatches}) and --checkpoint-minutes ({CheckpointMinutes}) must be positive");
        string text = TokenizerTrainer.ReadCorpus(CorpusPath);
        string? validPath = ValidPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(CorpusPath))!, "valid.txt");
        if (ValidPath == null && (!File.Exists(validPath) || Path.GetFullPath(validPath) == Path.GetFullPath(CorpusPath))) validPath = null;
        string? validText = validPath != null ? TokenizerTrainer.ReadCorpus(validPath) : null;
        Directory.CreateDirectory(OutDir);
        string ckpt = Path.Combine(OutDir, "checkpoint.bin"), tokPath = Path.Combine(OutDir, "tokenizer.gguf");
        string csv = Path.Combine(OutDir, "log.csv"), svg = Path.Combine(OutDir, "loss.svg");
        TokenizerVocabulary? vocab = null;
        if (Resume)
        {
            if (!File.Exists(ckpt)) throw new CriaException($"--resume: no checkpoint at {ckpt}");
            vocab = TokenizerVocabulary.Load(File.Exists(tokPath) ? tokPath : TokenizerPath ?? throw new CriaException($"--resume: no tokenizer at {tokPath}"));
            var peek = Trainer.PeekCheckpoint(ckpt);
            string expect = Trainer.Describe(Shape with { VocabSize = vocab.Count }, Lora, Init?.Frozen);
            if (peek.Shape != expect)
                throw new CriaException($"checkpoint {ckpt} is from another model ({peek.Shape}); the command line asks for ({expect})");
            if (peek.TokenizerHash != vocab.Hash()) throw new CriaException($"checkpoint {ckpt} was trained with another tokenizer than {tokPath}");
        }
        else if (TokenizerPath != null) vocab = TokenizerVocabulary.Load(TokenizerPath);
        if (Init != null)
        {
            if (vocab != null && vocab.Hash() != Init.Vocabulary.Hash()) throw new CriaException($"{tokPath} is not the tokenizer of --init {InitPath}");
            vocab = Init.Vocabulary;
        }

        var log = Console.Error;
        var sw = Stopwatch.StartNew();
        if (vocab == null)
        {
            log.WriteLine($"training a {Shape.VocabSize}-token tokenizer on {CorpusPath} ({text.Length:N0} chars)…");
            vocab = TokenizerTrainer.Train(text, Shape.VocabSize);
            log.WriteLine($"  {vocab.Count} tokens in {sw.Elapsed.TotalSeconds:F1} s");
        }
        if (!Resume || !File.Exists(tokPath)) vocab.Save(tokPath);
        var shape = Shape with { VocabSize = vocab.Count };
        var tok = vocab.CreateTokenizer();
        int[] train = tok.Encode(text, addBos: false);
        int[] validTokens = validText != null ? tok.Encode(validText, addBos: false) : [];
        log.WriteLine($"corpus: {train.Length:N0} training tokens ({(double)text.Length / train.Length:F2} chars/token), {validTokens.Length:N0} validation tokens");

        PasskeyDocuments? pk = PasskeyFraction > 0 ? new PasskeyDocuments(tok, train, PasskeyMinLength) : null;
        using var trainer = new Trainer(shape, Options, train, tok.Bos, lora: Lora, frozenBase: Init?.Frozen, parameters: Init?.Parameters)
        {
            Documents = pk != null ? (ref TrainingRng g, int max) => pk.Next(ref g, max) : null,
            DocumentFraction = PasskeyFraction,
            AnswerWeight = AnswerWeight,
            RepeatFraction = RepeatFraction,
            RepeatAlphabet = RepeatFraction > 0 ? RepeatRows.Alphabet(train, tok.Encode("0123456789", addBos: false)) : null,
        };
        ulong hash = vocab.Hash();
        if (Init != null && !Resume)
        {
            log.WriteLine($"initialised from {InitPath} ({Init.Shape}){(shape.ContextLength != Init.Shape.ContextLength ? $", trained now at context {shape.ContextLength}" : "")}");
        }
        if (pk != null) log.WriteLine($"{PasskeyFraction:P0} of the rows are synthetic pass-key documents ({PasskeyMinLength}–{shape.ContextLength} tokens, filler from {CorpusPath}, answer weight {AnswerWeight})");
        if (RepeatFraction > 0) log.WriteLine($"{RepeatFraction:P0} of the rows are repeated random sequences ({trainer.RepeatAlphabet!.Length} alphabet entries)");
        var history = new List<string>();
        if (Resume)
        {
            trainer.LoadCheckpoint(ckpt, hash);
            if (File.Exists(csv)) history.AddRange(File.ReadAllLines(csv).Skip(1).Where(l => int.Parse(l.Split(',')[0], CultureInfo.InvariantCulture) <= trainer.Step));
            log.WriteLine($"resumed at step {trainer.Step} ({trainer.TokensSeen:N0} tokens seen)");
        }
        long nParams = trainer.Model.Layout.AllTensors.Sum(t => t.Count);
        if (trainer.Model.Lora != null) AdapterLog.Write(log, trainer, frozen: $"the base's {nParams:N0} are frozen");
        log.WriteLine($"model: {shape}; {nParams:N0} parameters; batch {Options.BatchSize}×{trainer.Model.SeqLen} × accum {Options.GradAccumulation}; {trainer.Model.Threads} threads");

        bool tty = !Console.IsOutputRedirected;
        var lastCkpt = Stopwatch.StartNew();
        var runClock = Stopwatch.StartNew();
        int startStep = trainer.Step;
        long startTokens = trainer.TokensSeen;
        float bestVal = float.PositiveInfinity;
        foreach (var l in history) { var f = l.Split(','); if (f[5].Length > 0) bestVal = Math.Min(bestVal, float.Parse(f[5], CultureInfo.InvariantCulture)); }
        double emaLoss = double.NaN;
        void Save(bool final)
        {
            trainer.SaveCheckpoint(ckpt, hash);
            Export(trainer, vocab, Path.Combine(OutDir, Lora != null ? "adapter.gguf" : "model.gguf"));
            WriteCsv(csv, history);
            LossCurve.WriteSvg(svg, history, $"{Name}: {shape}");
            lastCkpt.Restart();
            if (!tty || final) Console.Out.WriteLine($"checkpoint: step {trainer.Step} → {ckpt}");
        }
        while (trainer.Step < Options.Steps)
        {
            var res = trainer.TrainStep();
            emaLoss = double.IsNaN(emaLoss) ? res.Loss : 0.9 * emaLoss + 0.1 * res.Loss;
            double elapsed = runClock.Elapsed.TotalSeconds;
            double tps = (res.TokensSeen - startTokens) / Math.Max(1e-9, elapsed);
            double eta = (Options.Steps - res.Step) * elapsed / Math.Max(1, res.Step - startStep);
            string valCell = "";
            if (validTokens.Length > 0 && (res.Step % EvalEvery == 0 || res.Step == Options.Steps))
            {
                float val = trainer.Evaluate(validTokens, EvalBatches);
                valCell = val.ToString("F4", CultureInfo.InvariantCulture);
                if (val < bestVal) { bestVal = val; Export(trainer, vocab, Path.Combine(OutDir, Lora != null ? "best-adapter.gguf" : "best.gguf")); }
            }
            history.Add(string.Join(',', res.Step.ToString(CultureInfo.InvariantCulture), res.TokensSeen.ToString(CultureInfo.InvariantCulture),
                res.Loss.ToString("F4", CultureInfo.InvariantCulture), res.GradNorm.ToString("F4", CultureInfo.InvariantCulture),
                res.LearningRate.ToString("E3", CultureInfo.InvariantCulture), valCell, elapsed.ToString("F1", CultureInfo.InvariantCulture),
                tps.ToString("F0", CultureInfo.InvariantCulture)));
            string line = $"step {res.Step}/{Options.Steps}  loss {res.Loss:F4} (avg {emaLoss:F4})  {(valCell.Length > 0 ? "val " + valCell + "  " : "")}lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}  {tps:F0} tok/s  ETA {Eta(eta)}";
            if (tty) { Console.Out.Write("\r" + line.PadRight(Console.WindowWidth > 0 ? Math.Min(Console.WindowWidth - 1, 140) : 120)); if (valCell.Length > 0) Console.Out.WriteLine(); }
            else if (res.Step % 10 == 0 || valCell.Length > 0 || res.Step == Options.Steps) Console.Out.WriteLine(line);
            if (lastCkpt.Elapsed.TotalMinutes >= CheckpointMinutes) Save(false);
        }
        if (tty) Console.Out.WriteLine();
        Save(true);
        if (trainer.Model.Frozen != null)
            log.WriteLine(FormattableString.Invariant($"dequantizing the frozen base: {trainer.Model.ProfileSeconds[4]:F1} s of the products' {trainer.Model.ProfileSeconds[0] + trainer.Model.ProfileSeconds[4]:F1} s"));
        Console.Out.WriteLine($"done: {trainer.Step} steps, {trainer.TokensSeen:N0} tokens, best validation loss {(float.IsInfinity(bestVal) ? "n/a" : bestVal.ToString("F4"))}; {(Lora != null ? "adapter" : "model")}: {Path.Combine(OutDir, Lora != null ? "adapter.gguf" : "model.gguf")}");
        return 0;
    }

    /// <summary>DPO / SimPO: every check first, then steps with loss, margin and accuracy, held-out pairs at every
    /// evaluation, the model (or adapter) written at the end. No checkpoints: runs are short.</summary>
    int ExecutePreference()
    {
        var tok = FineTuneTokenizer("--pairs");
        var pairs = PreferenceRun.ReadPairs(PairsPath!, tok);
        var held = ValidPairsPath != null ? PreferenceRun.ReadPairs(ValidPairsPath, tok) : null;
        int T = Shape.ContextLength;
        int longest = pairs.Concat(held ?? []).Max(p => p.Prompt.Length + Math.Max(p.Chosen.Length, p.Rejected.Length) + 1);
        T = Math.Min(T, longest);
        var p = Preference!;
        Console.Error.WriteLine($"{p.Loss} (β {p.Beta}{(p.Loss == PreferenceLoss.SimPo ? $", γ {p.Gamma}" : "")}) on {pairs.Count} pairs from {PairsPath}{(held != null ? $", {held.Count} held out" : "")}; rows of {T} tokens, {Options.BatchSize / 2} pairs per micro-batch");
        using var trainer = FineTuneTrainer(tok, T);
        var sw = Stopwatch.StartNew();
        double[]? reference = p.Loss == PreferenceLoss.Dpo ? trainer.SequenceLogProbs(pairs) : null;
        double[]? heldRef = held != null ? trainer.SequenceLogProbs(held) : null;
        var checkpoint = FineTuneResume(trainer);   // after the reference log-probabilities, which are --init's
        string Held()
        {
            if (held == null) return "";
            var lp = trainer.SequenceLogProbs(held);
            var m = Enumerable.Range(0, held.Count).Select(i => p.PairLoss(lp[2 * i], lp[2 * i + 1], heldRef![2 * i], heldRef[2 * i + 1], held[i].Chosen.Length, held[i].Rejected.Length).Margin).ToArray();
            return string.Create(CultureInfo.InvariantCulture, $"  held-out margin {m.Average():F3}, accuracy {m.Count(x => x > 0) / (double)m.Length:P0}");
        }
        StepLoop.Run(trainer, Options.Steps, EvalEvery, checkpoint.After(() =>
        {
            var res = trainer.PreferenceStep(pairs, reference, p);
            return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  margin {res.Margin:F3}  accuracy {res.Accuracy:P0}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
        }), Held);
        checkpoint.Save();
        return FineTuneDone(trainer, sw, "");
    }

    /// <summary>SFT: every check first, then steps with the response loss, held-out response loss and perplexity at
    /// every evaluation, the model (or adapter) written at the end. No checkpoints: runs are short.</summary>
    int ExecuteSft()
    {
        var tok = FineTuneTokenizer("--sft");
        ChatTemplate? template = null;
        using (var f = GgufFile.Open(InitPath!))
            if (f.TryGet("tokenizer.chat_template", out string? jinja) && !string.IsNullOrEmpty(jinja)) template = ChatTemplate.FromGguf(f, tok);
        var examples = SftExample.ReadJsonl(SftPath!, tok, template);
        var held = ValidSftPath != null ? SftExample.ReadJsonl(ValidSftPath, tok, template) : null;
        int longest = examples.Concat(held ?? []).Max(e => e.Prompt.Length + e.Response.Length + 1);
        int T = Pack ? Shape.ContextLength : Math.Min(Shape.ContextLength, longest);
        int cut = examples.Concat(held ?? []).Count(e => e.Prompt.Length + e.Response.Length + 1 > T);
        var tooLong = examples.Concat(held ?? []).FirstOrDefault(e => e.Prompt.Length + 1 >= T);
        if (tooLong != null) throw new CriaException($"a prompt of {tooLong.Prompt.Length} tokens leaves no room for its response in the model's context of {T}");
        Console.Error.WriteLine($"SFT on {examples.Count} examples from {SftPath}{(held != null ? $", {held.Count} held out" : "")}; rows of {T} tokens{(Pack ? ", packed" : "")} ({cut} responses cut), {Options.BatchSize} per micro-batch; loss on {examples.Sum(e => e.Response.Length):N0} response tokens{(template != null ? ", chat records through the model's template" : "")}");
        using var trainer = FineTuneTrainer(tok, T);
        string Held()
        {
            if (held == null) return "";
            double l = trainer.SftLoss(held, Pack);
            return string.Create(CultureInfo.InvariantCulture, $"  held-out response loss {l:F4} (ppl {Math.Exp(l):F2})");
        }
        var checkpoint = FineTuneResume(trainer);
        var sw = Stopwatch.StartNew();
        StepLoop.Run(trainer, Options.Steps, EvalEvery, checkpoint.After(() =>
        {
            var res = trainer.SftStep(examples, Pack);
            return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
        }), Held);
        checkpoint.Save();
        return FineTuneDone(trainer, sw, $", {trainer.TokensSeen:N0} tokens read");
    }

    /// <summary>The checks --pairs and --sft share (an --init model, valid options); the tokenizer.</summary>
    Tokenization.Tokenizer FineTuneTokenizer(string what)
    {
        Options.Validate();
        if (Init == null) throw new CriaException($"{what} needs --init");
        if (!(CheckpointMinutes > 0)) throw new CriaException($"--checkpoint-minutes must be positive, got {CheckpointMinutes}");
        return Init.Vocabulary.CreateTokenizer();
    }

    /// <summary>A --pairs or --sft run's checkpoint, OUT/checkpoint.bin: with --resume it is loaded now (adapter or
    /// weights, AdamW moments, step and RNG; DPO's reference log-probabilities must already be computed from --init);
    /// it is written every --checkpoint-minutes during the run and at its end.</summary>
    StepCheckpoint FineTuneResume(Trainer trainer)
    {
        var c = new StepCheckpoint(trainer, Path.Combine(OutDir, "checkpoint.bin"), Init!.Vocabulary.Hash(), CheckpointMinutes);
        if (Resume)
        {
            if (!File.Exists(c.Path)) throw new CriaException($"--resume: no checkpoint at {c.Path}");
            trainer.LoadCheckpoint(c.Path, c.TokenizerHash);
            Console.Error.WriteLine($"resumed at step {trainer.Step} from {c.Path}");
        }
        return c;
    }

    /// <summary>The trainer of a --pairs or --sft run: rows of <paramref name="T"/> tokens, the --init weights, the
    /// output directory made; logs the LoRA adapters it trains.</summary>
    Trainer FineTuneTrainer(Tokenization.Tokenizer tok, int T)
    {
        Directory.CreateDirectory(OutDir);
        var trainer = new Trainer(Shape, Options, [], tok.Bos, seqLen: T, lora: Lora, frozenBase: Init?.Frozen, parameters: Init!.Parameters);
        if (trainer.Model.Lora != null) AdapterLog.Write(Console.Error, trainer);
        return trainer;
    }

    /// <summary>Writes a --pairs or --sft run's model (or adapter) and its "done" line.</summary>
    int FineTuneDone(Trainer trainer, Stopwatch sw, string extra)
    {
        string outPath = Path.Combine(OutDir, Lora != null ? "adapter.gguf" : "model.gguf");
        Export(trainer, Init!.Vocabulary, outPath);
        Console.Out.WriteLine($"done: {trainer.Step} steps in {sw.Elapsed.TotalSeconds:F0} s{extra}; {(Lora != null ? "adapter" : "model")}: {outPath}");
        return 0;
    }

    void Export(Trainer t, TokenizerVocabulary vocab, string path)
    {
        if (t.Model.Lora is { } lay) { lay.Write(path, t.Model.LoraParameters, Name); return; }
        GgufExport.Write(path, t.Model.Layout, t.Model.Parameters, vocab, ExportType, Name, new Dictionary<string, object>
        {
            ["cria.training.step"] = (uint)t.Step,
            ["cria.training.tokens"] = (ulong)t.TokensSeen,
            ["cria.training.recipe"] = CommandLine,
        });
    }

    static void WriteCsv(string path, List<string> rows) =>
        TextFiles.WriteLinesAtomically(path, new[] { "step,tokens,loss,grad_norm,lr,val_loss,elapsed_s,tokens_per_s" }.Concat(rows));

    static string Eta(double s) => s >= 3600 ? $"{(int)(s / 3600)}h{(int)(s % 3600 / 60):D2}m" : $"{(int)(s / 60)}m{(int)(s % 60):D2}s";
}

/// <summary>A loss-curve picture: training loss (thin, smoothed) and validation loss (dots) against tokens seen.</summary>
static class LossCurve
{
    public static void WriteSvg(string path, IReadOnlyList<string> csvRows, string title)
    {
        var train = new List<(double X, double Y)>(); var val = new List<(double X, double Y)>();
        double ema = double.NaN;
        foreach (var row in csvRows)
        {
            var f = row.Split(',');
            double x = double.Parse(f[1], CultureInfo.InvariantCulture);
            double y = double.Parse(f[2], CultureInfo.InvariantCulture);
            ema = double.IsNaN(ema) ? y : 0.95 * ema + 0.05 * y;
            train.Add((x, ema));
            if (f[5].Length > 0) val.Add((x, double.Parse(f[5], CultureInfo.InvariantCulture)));
        }
        const int W = 720, H = 420, L = 60, R = 20, T = 40, B = 50;
        double xMax = Math.Max(1, train.Count > 0 ? train[^1].X : 1);
        var ys = train.Select(p => p.Y).Concat(val.Select(p => p.Y)).ToList();
        double yMin = ys.Count > 0 ? Math.Floor(ys.Min()) : 0, yMax = ys.Count > 0 ? Math.Ceiling(ys.Max()) : 1;
        if (yMax <= yMin) yMax = yMin + 1;
        string X(double x) => (L + x / xMax * (W - L - R)).ToString("F1", CultureInfo.InvariantCulture);
        string Y(double y) => (T + (yMax - y) / (yMax - yMin) * (H - T - B)).ToString("F1", CultureInfo.InvariantCulture);
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">");
        sb.AppendLine($"<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>");
        sb.AppendLine($"<text x=\"{W / 2}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{System.Security.SecurityElement.Escape(title)}</text>");
        for (double y = yMin; y <= yMax + 1e-9; y += Math.Max(0.5, Math.Round((yMax - yMin) / 8 * 2) / 2))
            sb.AppendLine($"<line x1=\"{L}\" x2=\"{W - R}\" y1=\"{Y(y)}\" y2=\"{Y(y)}\" stroke=\"#ddd\"/><text x=\"{L - 6}\" y=\"{Y(y)}\" text-anchor=\"end\" dy=\"4\">{y.ToString("0.#", CultureInfo.InvariantCulture)}</text>");
        for (int i = 0; i <= 5; i++)
        {
            double x = xMax * i / 5;
            sb.AppendLine($"<text x=\"{X(x)}\" y=\"{H - B + 18}\" text-anchor=\"middle\">{(x / 1e6).ToString("0.##", CultureInfo.InvariantCulture)}M</text>");
        }
        sb.AppendLine($"<text x=\"{(L + W - R) / 2}\" y=\"{H - 10}\" text-anchor=\"middle\">tokens seen</text>");
        sb.AppendLine($"<text x=\"15\" y=\"{(T + H - B) / 2}\" text-anchor=\"middle\" transform=\"rotate(-90 15 {(T + H - B) / 2})\">cross-entropy (nats)</text>");
        if (train.Count > 0)
            sb.AppendLine($"<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"{string.Join(' ', train.Select(p => X(p.X) + "," + Y(p.Y)))}\"/>");
        foreach (var p in val) sb.AppendLine($"<circle cx=\"{X(p.X)}\" cy=\"{Y(p.Y)}\" r=\"3\" fill=\"#d62728\"/>");
        sb.AppendLine($"<line x1=\"{W - 200}\" x2=\"{W - 180}\" y1=\"{T + 10}\" y2=\"{T + 10}\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"{W - 175}\" y=\"{T + 14}\">train (EMA)</text>");
        sb.AppendLine($"<circle cx=\"{W - 190}\" cy=\"{T + 28}\" r=\"3\" fill=\"#d62728\"/><text x=\"{W - 175}\" y=\"{T + 32}\">validation</text>");
        sb.AppendLine("</svg>");
        TextFiles.WriteAtomically(path, sb.ToString());
    }
}

/// <summary><c>cria train --init MODEL --pairs FILE</c>: DPO or SimPO on preference pairs (optionally LoRA only).</summary>
static class PreferenceRun
{
    /// <summary>Reads JSONL lines {"prompt": …, "chosen": …, "rejected": …} (TRL's field names) and tokenizes them
    /// (the responses as they continue the prompt: no BOS, no space added), with the reward models' reader.</summary>
    public static List<PreferencePair> ReadPairs(string path, Cria.Tokenization.Tokenizer tok)
    {
        var records = RewardCommand.Read(path, tok);
        if (records.FirstOrDefault(x => !x.IsPair) != null) throw new CriaException($"{path}: every line must be a pair (\"chosen\", \"rejected\"), not a rated response");
        return records.Select(x => new PreferencePair(x.Prompt, x.Chosen!, x.Rejected!)).ToList();
    }
}
