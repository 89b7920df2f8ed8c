namespace Cria.Training;

/// <summary>How <see cref="RecordFilter.Select"/> chooses records: drop repeated prompts (keeping the best-scored),
/// drop scores below a floor, keep the best fraction. Any combination; at least one.</summary>
public sealed record RecordFilterOptions
{
    /// <summary>Keep this fraction of the records left (the best scored, ⌈fraction × count⌉), or all when null.</summary>
    public double? Keep { get; init; }
    /// <summary>Drop records scored below this, or none when null.</summary>
    public double? MinScore { get; init; }
    /// <summary>Of records with the same prompt, keep only the best scored (Magpie drops repeated instructions).</summary>
    public bool Dedup { get; init; }

    public void Validate()
    {
        if (Keep is { } k && !(k > 0 && k <= 1)) throw new CriaException($"the kept fraction must be in (0, 1], got {k}");
        if (MinScore is { } m && !double.IsFinite(m)) throw new CriaException($"the minimum score must be a number, got {m}");
        if (Keep == null && MinScore == null && !Dedup) throw new CriaException("a filter needs a kept fraction, a minimum score or de-duplication");
    }
}

/// <summary>
/// Data curation with a scorer (Magpie's filtering step, with any reward: a reward model, CDR, log p, a rule): given
/// each record's score and its prompt, which records to keep. Ties go to the earlier record, so a selection is
/// reproducible; the kept indices come back in file order.
/// </summary>
public static class RecordFilter
{
    public static int[] Select(IReadOnlyList<double> scores, IReadOnlyList<int[]> prompts, RecordFilterOptions o)
    {
        o.Validate();
        if (scores.Count != prompts.Count) throw new ArgumentException("one prompt per score");
        if (scores.Any(double.IsNaN)) throw new CriaException("a record's score is NaN");
        // best first, earlier first among equals
        var order = Enumerable.Range(0, scores.Count).OrderByDescending(i => scores[i]).ThenBy(i => i).ToList();
        if (o.Dedup)
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            order = order.Where(i => seen.Add(string.Join(',', prompts[i]))).ToList();
        }
        if (o.MinScore is { } min) order = order.Where(i => scores[i] >= min).ToList();
        if (o.Keep is { } keep) order = order.Take((int)Math.Ceiling(keep * order.Count - 1e-9)).ToList();
        var kept = order.ToArray();
        Array.Sort(kept);
        return kept;
    }
}
