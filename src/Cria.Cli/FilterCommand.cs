using System.CommandLine;
using System.Globalization;
using Cria.Formats;
using Cria.Models;
using Cria.Tokenization;
using Cria.Training;

namespace Cria.Cli;

/// <summary>
/// <c>cria filter-sft IN.jsonl -o OUT.jsonl SCORER (--keep F | --min-score S | --dedup)</c>: curates SFT records with a
/// scorer, as Magpie filters its synthesized data with a reward model. Each record is read as <c>train --sft</c> reads it
/// (prompt and response tokens, chat records through the model's template), scored as best-of scores a response to a
/// prompt, and the chosen records are written unchanged, in file order.
/// </summary>
static class FilterCommand
{
    public static Command Create()
    {
        var input = new Argument<string>("input") { Description = "SFT records: JSONL {\"prompt\", \"completion\"|\"response\"}, {\"messages\"} or {\"instruction\", \"response\"}" };
        var model = new Option<string?>("--model", "-m") { Description = "the model whose tokenizer and chat template read the records, and the base of the scorers (default: the bundled model)" };
        var output = new Option<string>("--out", "-o") { Description = "the kept records, unchanged, in file order", Required = true };
        var keep = new Option<double?>("--keep") { Description = "keep this fraction of the records, the best scored" };
        var min = new Option<double?>("--min-score") { Description = "drop records scored below this" };
        var dedup = new Option<bool>("--dedup") { Description = "of records with the same prompt, keep the best scored" };
        var scores = new Option<string?>("--scores") { Description = "also write every record's line number, score and whether it was kept (TSV)" };
        var force = new Option<bool>("--force") { Description = "overwrite OUT" };
        var threads = new Option<int>("--threads", "-t") { DefaultValueFactory = _ => Environment.ProcessorCount };
        var scoring = new ScorerCliOptions(selfEval: false);
        var cmd = new Command("filter-sft", "curate SFT records with a scorer (a reward model, CDR, log p or a word rule): keep the best fraction, those above a score, or one per prompt")
        { input, model, output, keep, min, dedup, scores, force, threads };
        scoring.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var o = new RecordFilterOptions { Keep = r.GetValue(keep), MinScore = r.GetValue(min), Dedup = r.GetValue(dedup) };
            o.Validate();
            string inPath = r.GetValue(input)!, outPath = r.GetValue(output)!;
            if (File.Exists(outPath) && !r.GetValue(force)) throw new CriaException($"{outPath} exists; give --force to overwrite it");
            if (Path.GetFullPath(outPath) == Path.GetFullPath(inPath)) throw new CriaException("the output would overwrite the input");
            string modelPath = DefaultModel.Resolve(r.GetValue(model));
            using var m = LlamaModel.Open(modelPath);
            ChatTemplate? template = m.File.TryGet("tokenizer.chat_template", out string? jinja) && !string.IsNullOrEmpty(jinja) ? ChatTemplate.FromGguf(m.File, m.Tokenizer) : null;
            var records = SftExample.ReadJsonl(inPath, m.Tokenizer, template);
            var lines = File.ReadLines(inPath).Select((text, i) => (text, line: i + 1)).Where(x => !string.IsNullOrWhiteSpace(x.text)).ToList();
            if (lines.Count != records.Count) throw new CriaException($"{inPath}: {lines.Count} records but {records.Count} read");
            if (records.Count == 0) throw new CriaException($"{inPath} holds no records");
            int longest = Math.Min(m.Config.ContextLength, records.Max(e => e.Prompt.Length + e.Response.Length + 1));
            var owned = new List<IDisposable>();
            try
            {
                var scorer = scoring.Build(r, m, modelPath, longest, Math.Max(1, r.GetValue(threads)), owned);
                var sw = System.Diagnostics.Stopwatch.StartNew();
                var s = new double[records.Count];
                for (int i = 0; i < records.Count; i++)
                {
                    var e = records[i];
                    // BOS + prompt as the trainer's rows begin; the response cut so that the pair fits the model's context
                    int room = Math.Max(1, m.Config.ContextLength - 1 - e.Prompt.Length);
                    s[i] = scorer.Score([m.Tokenizer.Bos, .. e.Prompt], e.Response.AsSpan(0, Math.Min(e.Response.Length, room)));
                    if ((i + 1) % 500 == 0) Console.Error.WriteLine($"[{i + 1}/{records.Count}] scored, {sw.Elapsed.TotalSeconds:F0} s");
                }
                var kept = RecordFilter.Select(s, records.Select(e => e.Prompt).ToArray(), o);
                TextFiles.WriteLinesAtomically(outPath, kept.Select(i => lines[i].text));
                if (r.GetValue(scores) is { } scoresPath)
                {
                    var isKept = new bool[s.Length];
                    foreach (int i in kept) isKept[i] = true;
                    TextFiles.WriteLinesAtomically(scoresPath, ["line\tscore\tkept", .. s.Select((v, i) => string.Create(CultureInfo.InvariantCulture, $"{lines[i].line}\t{v:G6}\t{(isKept[i] ? 1 : 0)}"))]);
                }
                double all = s.Average(), mean = kept.Length > 0 ? kept.Average(i => s[i]) : double.NaN;
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"kept {kept.Length} of {records.Count} records (mean score {mean:F4}, all {all:F4}) in {sw.Elapsed.TotalSeconds:F0} s: {outPath}"));
            }
            finally
            {
                for (int i = owned.Count - 1; i >= 0; i--) owned[i].Dispose();
            }
            return 0;
        });
        return cmd;
    }
}
