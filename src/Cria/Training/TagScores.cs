namespace Cria.Training;

/// <summary>
/// Scores of a token classifier over words. Word level: accuracy, and micro precision/recall/F1 over words whose gold
/// or predicted tag is not the outside tag. Entity level, for BIO tags ("B-PER", "I-PER", "O"; IOB1's "I-" that
/// opens an entity too): an entity is a maximal run that starts at B-X, or at I-X after anything but X, and continues
/// with I-X; precision/recall/F1 count entities whose span and type both match (seqeval's default, CoNLL's conlleval).
/// </summary>
public static class TagScores
{
    public readonly record struct Prf(int TruePositives, int Predicted, int Gold)
    {
        public double Precision => Predicted > 0 ? TruePositives / (double)Predicted : 0;
        public double Recall => Gold > 0 ? TruePositives / (double)Gold : 0;
        public double F1 => Precision + Recall > 0 ? 2 * Precision * Recall / (Precision + Recall) : 0;
    }

    /// <summary>Whether the tag names follow BIO: every tag is "O" or starts with "B-" or "I-".</summary>
    public static bool IsBio(IReadOnlyList<string> names) =>
        names.All(n => n == "O" || n.StartsWith("B-", StringComparison.Ordinal) || n.StartsWith("I-", StringComparison.Ordinal));

    /// <summary>The entities (start word, end word exclusive, type) of one sentence's BIO tags.</summary>
    public static List<(int Start, int End, string Type)> Entities(IReadOnlyList<string> tags)
    {
        var list = new List<(int, int, string)>();
        int start = -1; string type = "";
        for (int i = 0; i <= tags.Count; i++)
        {
            string t = i < tags.Count ? tags[i] : "O";
            bool begins = t.StartsWith("B-", StringComparison.Ordinal) || (t.StartsWith("I-", StringComparison.Ordinal) && (start < 0 || t[2..] != type));
            bool continues = t.StartsWith("I-", StringComparison.Ordinal) && start >= 0 && t[2..] == type;
            if (start >= 0 && !continues) { list.Add((start, i, type)); start = -1; }
            if (begins) { start = i; type = t[2..]; }
        }
        return list;
    }

    /// <summary>Entity-level micro scores over sentences of gold and predicted tag names (one per word each).</summary>
    public static Prf EntityScores(IReadOnlyList<IReadOnlyList<string>> gold, IReadOnlyList<IReadOnlyList<string>> predicted)
    {
        if (gold.Count != predicted.Count) throw new ArgumentException($"{gold.Count} gold sentences but {predicted.Count} predicted");
        int tp = 0, np = 0, ng = 0;
        for (int s = 0; s < gold.Count; s++)
        {
            if (gold[s].Count != predicted[s].Count) throw new ArgumentException($"sentence {s}: {gold[s].Count} gold tags but {predicted[s].Count} predicted");
            var g = Entities(gold[s]).ToHashSet();
            var p = Entities(predicted[s]);
            ng += g.Count; np += p.Count;
            foreach (var e in p) if (g.Contains(e)) tp++;
        }
        return new Prf(tp, np, ng);
    }

    /// <summary>Word-level accuracy and micro scores over words not tagged <paramref name="outside"/> (gold or predicted).</summary>
    public static (double Accuracy, int Words, Prf Tagged) WordScores(IReadOnlyList<int[]> gold, IReadOnlyList<int[]> predicted, int outside)
    {
        int words = 0, right = 0, tp = 0, np = 0, ng = 0;
        for (int s = 0; s < gold.Count; s++)
            for (int i = 0; i < gold[s].Length; i++)
            {
                int g = gold[s][i], p = predicted[s][i];
                words++;
                if (p == g) right++;
                if (g != outside) ng++;
                if (p != outside) np++;
                if (p == g && g != outside) tp++;
            }
        return (words > 0 ? right / (double)words : 0, words, new Prf(tp, np, ng));
    }
}
