using Cria.Models;
using Cria.Serving;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>Data curation (<c>cria filter-sft</c>): which records a kept fraction, a score floor and de-duplication
/// choose, with ties to the earlier record and the kept records in file order; and the chain the command runs on real
/// records (read as train --sft reads them, scored by a scorer).</summary>
public sealed class RecordFilterTests
{
    static readonly double[] Scores = [0.5, 3.0, -1.0, 3.0, 2.0, 0.5, 7.0];
    static readonly int[][] Prompts = [[1], [2], [3], [2], [4], [5], [1]];

    [Fact]
    public void The_best_fraction_a_floor_and_one_per_prompt_are_chosen_ties_to_the_earlier_record()
    {
        // best first: 6 (7.0), 1 (3.0), 3 (3.0, later), 4 (2.0), 0 (0.5), 5 (0.5), 2 (−1.0)
        Assert.Equal([1, 3, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Keep = 3.0 / 7 }));
        Assert.Equal([1, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Keep = 0.25 }));          // ⌈1.75⌉ = 2
        Assert.Equal([0, 1, 3, 4, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Keep = 0.65 }));   // ⌈4.55⌉ = 5: 0 before 5
        Assert.Equal([1, 3, 4, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { MinScore = 2.0 }));
        // one per prompt: prompt [1] keeps 6 (7.0 over 0.5), prompt [2] keeps 1 (the earlier of two 3.0s)
        Assert.Equal([1, 2, 4, 5, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Dedup = true }));
        // in order: de-duplicate, then the floor, then the fraction of what is left
        Assert.Equal([1, 6], RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Dedup = true, MinScore = 0.5, Keep = 0.5 }));
        Assert.Empty(RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { MinScore = 10 }));

        Assert.Throws<CriaException>(() => RecordFilter.Select(Scores, Prompts, new RecordFilterOptions()));
        Assert.Throws<CriaException>(() => RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Keep = 0 }));
        Assert.Throws<CriaException>(() => RecordFilter.Select(Scores, Prompts, new RecordFilterOptions { Keep = 1.5 }));
        Assert.Throws<CriaException>(() => RecordFilter.Select([double.NaN], [[1]], new RecordFilterOptions { Keep = 1 }));
    }

    [Fact]
    public void Records_read_as_sft_reads_them_and_scored_by_a_word_rule_keep_the_right_lines()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled("default.gguf"));
        string path = TestPaths.TempFile("filter-records.jsonl");
        File.WriteAllLines(path,
        [
            """{"prompt": "And God said", "completion": " let there be light"}""",
            "",
            """{"prompt": "And God said", "response": " unto the LORD, the LORD is good"}""",
            """{"prompt": "In the beginning", "completion": " the LORD made the heaven"}""",
            """{"prompt": "And Moses went", "completion": " up into the mount"}""",
        ]);
        var records = SftExample.ReadJsonl(path, m.Tokenizer, template: null);
        Assert.Equal(4, records.Count);
        var scorer = new WordCountScorer(m.Tokenizer, ["LORD"]);
        var s = records.Select(e => scorer.Score([m.Tokenizer.Bos, .. e.Prompt], e.Response)).ToArray();
        Assert.Equal([0.0, 2.0, 1.0, 0.0], s);
        Assert.Equal([1, 2], RecordFilter.Select(s, records.Select(e => e.Prompt).ToArray(), new RecordFilterOptions { Keep = 0.5 }));
        // one per prompt: the two "And God said" records share a prompt, and the one that says LORD twice stays
        Assert.Equal([1, 2, 3], RecordFilter.Select(s, records.Select(e => e.Prompt).ToArray(), new RecordFilterOptions { Dedup = true }));
        File.Delete(path);
    }
}
