using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// Label-supervised classification (LS-LLaMA, LS-unLLaMA): <c>cria train-classifier</c> trains LoRA adapters and a
/// linear head on a labelled TSV file; <c>cria classify</c> runs them — causal modes through the generation engine
/// (any base type, the adapter at run time), bidirectional ones through the trainer's F32 forward (no KV cache).
/// </summary>
static class ClassifyCommand
{
    /// <summary>Reads "label&lt;TAB&gt;text" lines; labels are numbered in <paramref name="labels"/> (new ones appended
    /// when <paramref name="grow"/>), texts tokenized without BOS.</summary>
    public static List<LabelledExample> ReadTsv(string path, Cria.Tokenization.Tokenizer tok, List<string> labels, bool grow)
    {
        if (!File.Exists(path)) throw new CriaException($"{path} does not exist");
        var list = new List<LabelledExample>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (line.Length == 0) continue;
            int tab = line.IndexOf('\t');
            if (tab <= 0 || tab == line.Length - 1) throw new CriaException($"{path}:{lineNo}: expected 'label<TAB>text'");
            string label = line[..tab];
            int id = labels.IndexOf(label);
            if (id < 0)
            {
                if (!grow) throw new CriaException($"{path}:{lineNo}: label '{label}' is not one of the classifier's ({string.Join(", ", labels)})");
                labels.Add(label); id = labels.Count - 1;
            }
            list.Add(new LabelledExample(tok.Encode(line[(tab + 1)..].Replace("\\n", "\n"), addBos: false), id));
        }
        if (list.Count == 0) throw new CriaException($"{path} has no examples");
        return list;
    }

    /// <summary>Reads CoNLL-style tagged sentences: one word per line, its tag in the last column (tab- or
    /// space-separated, as CoNLL-2003), a blank line between sentences, "-DOCSTART-" lines skipped. Tags are numbered
    /// in <paramref name="tags"/> (new ones appended when <paramref name="grow"/>); words keep their text for printing.</summary>
    public static List<(TaggedExample Example, string[] Words, int[] WordTags)> ReadConll(string path, Cria.Tokenization.Tokenizer tok, List<string> tags, bool grow)
    {
        if (!File.Exists(path)) throw new CriaException($"{path} does not exist");
        var list = new List<(TaggedExample, string[], int[])>();
        var words = new List<string>(); var ids = new List<int>();
        void Flush()
        {
            if (words.Count == 0) return;
            list.Add((TaggedExample.FromWords(tok, words, ids), words.ToArray(), ids.ToArray()));
            words.Clear(); ids.Clear();
        }
        int lineNo = 0;
        foreach (var raw in File.ReadLines(path))
        {
            lineNo++;
            var line = raw.Trim();
            if (line.Length == 0) { Flush(); continue; }
            if (line.StartsWith("-DOCSTART-", StringComparison.Ordinal)) continue;
            var cols = line.Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
            if (cols.Length < 2 || cols.Length > 4) throw new CriaException($"{path}:{lineNo}: expected 'word<TAB>tag' (or CoNLL-2003's four columns: word, POS, chunk, tag), got {cols.Length} columns");
            string tag = cols[^1];
            int id = tags.IndexOf(tag);
            if (id < 0)
            {
                if (!grow) throw new CriaException($"{path}:{lineNo}: tag '{tag}' is not one of the classifier's ({string.Join(", ", tags)})");
                tags.Add(tag); id = tags.Count - 1;
            }
            words.Add(cols[0]); ids.Add(id);
        }
        Flush();
        if (list.Count == 0) throw new CriaException($"{path} has no tagged sentences");
        return list;
    }

    /// <summary>Scores of a token classifier over the words it tagged (each scored on its first token; words cut by
    /// the context are left out): word accuracy, micro P/R/F1 over words not tagged <paramref name="outside"/>, and for
    /// BIO tags entity-level P/R/F1 (<see cref="TagScores"/>).</summary>
    public static string TagReport(IReadOnlyList<TaggedExample> examples, int[][] predicted, int outside, IReadOnlyList<string> names)
    {
        var gold = new List<int[]>(); var pred = new List<int[]>();
        for (int e = 0; e < examples.Count; e++)
        {
            var keep = Enumerable.Range(0, examples[e].Tags.Length).Where(i => examples[e].Tags[i] >= 0 && predicted[e][i] >= 0).ToArray();
            gold.Add(keep.Select(i => examples[e].Tags[i]).ToArray());
            pred.Add(keep.Select(i => predicted[e][i]).ToArray());
        }
        var (acc, words, w) = TagScores.WordScores(gold, pred, outside);
        string s = string.Create(CultureInfo.InvariantCulture, $"word accuracy {acc:P1} of {words}; tagged words: precision {w.Precision:P1}, recall {w.Recall:P1}, F1 {w.F1:P1}");
        if (TagScores.IsBio(names))
        {
            var ent = TagScores.EntityScores(gold.Select(g => (IReadOnlyList<string>)g.Select(t => names[t]).ToArray()).ToList(),
                                             pred.Select(p => (IReadOnlyList<string>)p.Select(t => names[t]).ToArray()).ToList());
            s += string.Create(CultureInfo.InvariantCulture, $"; entities ({ent.Gold}): precision {ent.Precision:P1}, recall {ent.Recall:P1}, F1 {ent.F1:P1}");
        }
        return s;
    }

    /// <summary>The tag that means "no entity": "O" when there is one (CoNLL), else the most frequent.</summary>
    static int Outside(List<string> tags, IEnumerable<TaggedExample> examples)
    {
        int o = tags.IndexOf("O");
        if (o >= 0) return o;
        var counts = new int[tags.Count];
        foreach (var e in examples) foreach (int t in e.Tags) if (t >= 0) counts[t]++;
        return Array.IndexOf(counts, counts.Max());
    }

    public static Command Train()
    {
        var init = new Option<string?>("--init") { Description = "the F32/F16 llama GGUF to adapt (default: the bundled model)" };
        var train = new Option<string>("--train") { Description = "labelled examples, one 'label<TAB>text' per line (\\n in the text is a newline); token modes: CoNLL ('word<TAB>tag' lines, a blank line between sentences)", Required = true };
        var valid = new Option<string?>("--valid") { Description = "held-out examples (same format): accuracy at every evaluation and at the end" };
        var mode = new Option<string>("--mode") { Description = "last (LS-LLaMA: causal, the last token's logits), mean (causal, mean over tokens), bi-mean (LS-unLLaMA: no causal mask, mean), bi-last, max / bi-max (per class, the largest logit over the tokens); token classification (NER): token (causal), bi-token (LS-unLLaMA)", DefaultValueFactory = _ => "last" };
        var outDir = new Option<string>("--out", "-o") { Description = "output directory: adapter.gguf (llama.cpp's --lora format) and head.gguf", DefaultValueFactory = _ => "out/classifier" };
        var ctx = new Option<int>("--ctx") { Description = "tokens per example (BOS + text, cut)", DefaultValueFactory = _ => 64 };
        var training = new AdapterTrainingCliOptions(steps: 500, batch: 8, warmup: 50, rank: 12, alpha: 32f, loraNote: "LS-LLaMA: rank 12, alpha 32");
        var cmd = new Command("train-classifier", "train a sequence classifier (LS-LLaMA): LoRA adapters and a linear head on the final hidden states, cross-entropy on the label")
        { init, train, valid, mode, outDir, ctx };
        training.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var (pooling, bidirectional) = ClassifierOptions.ParseMode(r.GetValue(mode)!);
            var options = training.Training(r);
            var lora = training.Lora(r);
            int T = r.GetValue(ctx), every = training.EvalEvery(r);
            var imported = training.Base(r, DefaultModel.Resolve(r.GetValue(init)));
            if (T < 2 || T > imported.Shape.ContextLength) throw new CriaException($"--ctx {T} must be in 2..{imported.Shape.ContextLength}");
            var tok = imported.Vocabulary.CreateTokenizer();
            if (pooling == ClassifierPooling.Token) return TrainTagger(r, imported, tok, options, lora, T, every, bidirectional, r.GetValue(train)!, r.GetValue(valid), r.GetValue(outDir)!);
            var labels = new List<string>();
            var examples = ReadTsv(r.GetValue(train)!, tok, labels, grow: true);
            var held = r.GetValue(valid) is { } v ? ReadTsv(v, tok, labels, grow: false) : null;
            var clf = new ClassifierOptions { Labels = labels.ToArray(), Pooling = pooling, Bidirectional = bidirectional };
            clf.Validate();
            string dir = r.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            var log = Console.Error;
            using var trainer = new Trainer(imported.Shape, options, [], tok.Bos, seqLen: T, lora: lora, classifier: clf, frozenBase: imported.Frozen, parameters: imported.Parameters);
            int pad = tok.Eos >= 0 ? tok.Eos : 0;
            var counts = labels.Select((_, i) => examples.Count(e => e.Label == i)).ToArray();
            log.WriteLine($"{clf.ModeName}: {labels.Count} labels ({string.Join(", ", labels.Select((l, i) => $"{l} {counts[i]}"))}), {examples.Count} training examples{(held != null ? $", {held.Count} held out" : "")}; {T} tokens each ({examples.Count(e => e.Tokens.Length + 1 > T)} cut)");
            AdapterLog.Write(log, trainer, ", and the head");
            string Held()
            {
                if (held == null) return "";
                var (pred, loss) = trainer.ClassifierEvaluate(held, pad);
                int right = pred.Where((p, i) => p == held[i].Label).Count();
                return string.Create(CultureInfo.InvariantCulture, $"  held-out loss {loss:F4}, accuracy {right / (double)held.Count:P1}");
            }
            var sw = Stopwatch.StartNew();
            StepLoop.Run(trainer, options.Steps, every, () =>
            {
                var res = trainer.ClassifierStep(examples, pad);
                return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  accuracy {res.Accuracy:P0}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
            }, Held);
            WriteOutputs(trainer, clf, dir, "cria-classifier", sw.Elapsed);
            return 0;
        });
        return cmd;
    }

    /// <summary>train-classifier --mode token|bi-token: a tag per word from CoNLL sentences.</summary>
    static int TrainTagger(ParseResult r, GgufImport.Imported imported, Cria.Tokenization.Tokenizer tok, TrainingOptions options, LoraOptions lora,
        int T, int every, bool bidirectional, string trainPath, string? validPath, string dir)
    {
        var tags = new List<string>();
        var examples = ReadConll(trainPath, tok, tags, grow: true).Select(x => x.Example).ToList();
        var held = validPath != null ? ReadConll(validPath, tok, tags, grow: false).Select(x => x.Example).ToList() : null;
        var clf = new ClassifierOptions { Labels = tags.ToArray(), Pooling = ClassifierPooling.Token, Bidirectional = bidirectional };
        clf.Validate();
        int outside = Outside(tags, examples);
        Directory.CreateDirectory(dir);
        var log = Console.Error;
        using var trainer = new Trainer(imported.Shape, options, [], tok.Bos, seqLen: T, lora: lora, classifier: clf, frozenBase: imported.Frozen, parameters: imported.Parameters);
        int pad = tok.Eos >= 0 ? tok.Eos : 0;
        var counts = tags.Select((_, i) => examples.Sum(e => e.Tags.Count(t => t == i))).ToArray();
        log.WriteLine($"{clf.ModeName}: {tags.Count} tags ({string.Join(", ", tags.Select((l, i) => $"{l} {counts[i]}"))}), {examples.Count} training sentences{(held != null ? $", {held.Count} held out" : "")}; {T} tokens each ({examples.Count(e => e.Tokens.Length + 1 > T)} cut)");
        AdapterLog.Write(log, trainer, ", and the head");
        string Held()
        {
            if (held == null) return "";
            var (pred, loss) = trainer.TokenClassifierEvaluate(held, pad);
            return string.Create(CultureInfo.InvariantCulture, $"  held-out loss {loss:F4}, {TagReport(held, pred, outside, tags)}");
        }
        var sw = Stopwatch.StartNew();
        StepLoop.Run(trainer, options.Steps, every, () =>
        {
            var res = trainer.TokenClassifierStep(examples, pad);
            return string.Create(CultureInfo.InvariantCulture, $"loss {res.Loss:F4}  token accuracy {res.Accuracy:P0}  lr {res.LearningRate:E2}  |g| {res.GradNorm:F2}");
        }, Held);
        WriteOutputs(trainer, clf, dir, "cria-tagger", sw.Elapsed);
        return 0;
    }

    /// <summary>Writes a trained head's adapter (llama.cpp's --lora format) and head files into <paramref name="dir"/>.</summary>
    public static void WriteOutputs(Trainer trainer, ClassifierOptions head, string dir, string name, TimeSpan took)
    {
        var lay = trainer.Model.Lora!;
        string adapterPath = Path.Combine(dir, "adapter.gguf"), headPath = Path.Combine(dir, "head.gguf");
        lay.Write(adapterPath, trainer.Model.LoraParameters, name);
        head.WriteHead(headPath, lay, trainer.Model.LoraParameters);
        Console.Out.WriteLine($"done: {trainer.Step} steps in {took.TotalSeconds:F0} s; adapter {adapterPath}, head {headPath}");
    }

    /// <summary>The trainer's F32 forward with a trained adapter and head loaded (F32/F16 bases): bidirectional heads,
    /// which the generation engine's causal attention cannot run, are evaluated here.</summary>
    public static Trainer ForwardTrainer(string modelPath, string purpose, Cria.Models.LoraAdapter adapter, ClassifierOptions head, float[] weights, int seqLen, int texts, int threads, int bos)
    {
        var imported = GgufImport.ReadForAdapters(modelPath, purpose);
        var options = new TrainingOptions { BatchSize = Math.Max(1, Math.Min(8, texts)), Steps = 1, WarmupSteps = 0, Threads = Math.Max(1, threads) };
        var trainer = new Trainer(imported.Shape, options, [], bos, seqLen: seqLen, lora: LoraLayout.OptionsOf(adapter), classifier: head, frozenBase: imported.Frozen, parameters: imported.Parameters);
        var lay = trainer.Model.Lora!;
        lay.Load(adapter, trainer.Model.LoraParameters);
        weights.CopyTo(trainer.Model.LoraParameters.AsSpan((int)lay.Head));
        return trainer;
    }

    /// <summary>classify with a token classifier: word/tag lines for --text, word-level scores for a CoNLL --file. A
    /// causal one runs through the generation engine (any base type, the adapter at run time), a bidirectional one
    /// through the trainer's forward (F32/F16 bases).</summary>
    static int Tag(Cria.Models.LlamaModel m, string modelPath, Cria.Tokenization.Tokenizer tok, ClassifierOptions clf, float[] head, Cria.Models.LoraAdapter adapter,
        string[] texts, string? path, int T, int threads)
    {
        var tags = clf.Labels.ToList();
        var sentences = path != null
            ? ReadConll(path, tok, tags, grow: false)
            : texts.Select(t =>
            {
                var words = t.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
                if (words.Length == 0) throw new CriaException("a --text has no words");
                var zeros = new int[words.Length];
                return (TaggedExample.FromWords(tok, words, zeros), words, zeros);
            }).ToList();
        var examples = sentences.Select(s => s.Item1).ToList();
        int[][] pred;
        if (!clf.Bidirectional)
        {
            using var context = new Cria.Inference.InferenceContext(m, new Cria.Inference.ContextOptions { ContextSize = T, Threads = threads, Loras = [(adapter, 1f)] });
            int C = clf.Labels.Length;
            pred = examples.Select(e =>
            {
                var ids = Classifier.Input(e.Tokens, tok.Bos, T);
                var z = Classifier.TokenLogits(context, ids, clf, head);
                var p = new int[e.Tokens.Length];
                for (int i = 0; i < p.Length; i++)
                    p[i] = e.Tags[i] >= 0 && i + 1 < ids.Length ? Cria.Inference.Sampler.ArgMax(z.AsSpan((i + 1) * C, C)) : -1;
                return p;
            }).ToArray();
        }
        else
        {
            using var trainer = ForwardTrainer(modelPath, "classify", adapter, clf, head, T, examples.Count, threads, tok.Bos);
            (pred, _) = trainer.TokenClassifierEvaluate(examples, tok.Eos >= 0 ? tok.Eos : 0);
        }
        if (path != null)
        {
            Console.Out.WriteLine($"{clf.ModeName}: {TagReport(examples, pred, Outside(tags, examples), tags)}");
            return 0;
        }
        for (int s = 0; s < sentences.Count; s++)
        {
            var (e, words, _) = sentences[s];
            int w = 0;
            for (int i = 0; i < e.Tags.Length && w < words.Length; i++)
            {
                if (e.Tags[i] < 0) continue; // a word's later tokens
                Console.Out.WriteLine($"{words[w++]}\t{(pred[s][i] >= 0 ? clf.Labels[pred[s][i]] : "(cut)")}");
            }
            for (; w < words.Length; w++) Console.Out.WriteLine($"{words[w]}\t(cut)");
            Console.Out.WriteLine();
        }
        return 0;
    }

    public static Command Classify()
    {
        var model = new Argument<string?>("model") { Description = "the model the classifier was trained on, or a quantization of it for the causal modes (default: the bundled model)", Arity = ArgumentArity.ZeroOrOne };
        var adapter = new Option<string>("--adapter") { Description = "the classifier's LoRA adapter (train-classifier's adapter.gguf)", Required = true };
        var head = new Option<string>("--head") { Description = "the classifier's head (train-classifier's head.gguf)", Required = true };
        var text = new Option<string[]>("--text") { Description = "a text to classify (repeatable)", AllowMultipleArgumentsPerToken = false };
        var file = new Option<string?>("--file") { Description = "labelled 'label<TAB>text' lines: accuracy overall and per label (token classifiers: CoNLL sentences, word-level scores)" };
        var ctx = new Option<int>("--ctx") { Description = "tokens per example (as in training)", DefaultValueFactory = _ => 64 };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var cmd = new Command("classify", "classify texts with a train-classifier adapter and head") { model, adapter, head, text, file, ctx, threads };
        cmd.SetAction(r =>
        {
            string modelPath = DefaultModel.Resolve(r.GetValue(model));
            using var m = Cria.Models.LlamaModel.Open(modelPath);
            var (clf, headWeights) = ClassifierOptions.ReadHead(r.GetValue(head)!, m.Config.Dim);
            var tok = m.Tokenizer;
            var labels = clf.Labels.ToList();
            var texts = r.GetValue(text) ?? [];
            string? path = r.GetValue(file);
            if (texts.Length == 0 && path == null) throw new CriaException("give --text or --file");
            int T = r.GetValue(ctx);
            if (T < 2 || T > m.Config.ContextLength) throw new CriaException($"--ctx {T} must be in 2..{m.Config.ContextLength}");
            var adapterFile = Cria.Models.LoraAdapter.Load(r.GetValue(adapter)!, m);
            if (clf.PerToken) return Tag(m, modelPath, tok, clf, headWeights, adapterFile, texts, path, T, r.GetValue(threads));
            var examples = path != null ? ReadTsv(path, tok, labels, grow: false) : texts.Select(t => new LabelledExample(tok.Encode(t, addBos: false), 0)).ToList();
            int[] pred;
            if (!clf.Bidirectional)
            {
                // Causal: the generation engine, BOS + the text cut to T tokens as in training.
                using var context = new Cria.Inference.InferenceContext(m, new Cria.Inference.ContextOptions { ContextSize = T, Threads = r.GetValue(threads), Loras = [(adapterFile, 1f)] });
                pred = examples.Select(e => Cria.Inference.Sampler.ArgMax(Classifier.Logits(context, Classifier.Input(e.Tokens, tok.Bos, T), clf, headWeights))).ToArray();
            }
            else
            {
                // Bidirectional: the trainer's forward (F32/F16 bases).
                using var trainer = ForwardTrainer(modelPath, "classify", adapterFile, clf, headWeights, T, examples.Count, r.GetValue(threads), tok.Bos);
                (pred, _) = trainer.ClassifierEvaluate(examples, tok.Eos >= 0 ? tok.Eos : 0);
            }
            if (path == null)
            {
                for (int i = 0; i < texts.Length; i++) Console.Out.WriteLine($"{clf.Labels[pred[i]]}\t{texts[i]}");
                return 0;
            }
            int right = pred.Where((p, i) => p == examples[i].Label).Count();
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{clf.ModeName}: accuracy {right / (double)examples.Count:P1} ({right} of {examples.Count})"));
            // Per label: accuracy, then the confusion row (how its examples were labelled).
            Console.Out.WriteLine($"  {"label",-16} {"right",5} of {"n",-5} {"accuracy",8}  | predicted as {string.Join(" ", labels.Select(l => l.Length > 8 ? l[..8] : l).Select(l => $"{l,8}"))}");
            for (int c = 0; c < labels.Count; c++)
            {
                int n = examples.Count(e => e.Label == c), ok = pred.Where((p, i) => p == c && examples[i].Label == c).Count();
                var row = labels.Select((_, j) => pred.Where((p, i) => p == j && examples[i].Label == c).Count());
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {labels[c],-16} {ok,5} of {n,-5} {(n > 0 ? ok / (double)n : 0),8:P1}  |              {string.Join(" ", row.Select(k => $"{k,8}"))}"));
            }
            return 0;
        });
        return cmd;
    }
}
