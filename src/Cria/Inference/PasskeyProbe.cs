using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>What the long-context probe hides and asks for.</summary>
public enum PasskeyTask
{
    /// <summary>Mohtashami &amp; Jaggi's passkey retrieval: "The pass key is 71432. Remember it." hidden in filler,
    /// then "What is the pass key? The pass key is" — scored on the key's tokens (teacher-forced top-1).</summary>
    Passkey,
    /// <summary>In-context copy: a random run of words (shown twice) hidden in filler, then its first two words again; scored on
    /// predicting the rest of the run (an induction-head task a small model can do within its trained length).</summary>
    Copy,
}

/// <summary>How the probe reads each prompt.</summary>
public enum PasskeyMode
{
    /// <summary>The whole prompt, answer teacher-forced (the default).</summary>
    Full,
    /// <summary>Only the chunks retrieved for the question, then the question (<see cref="RagRetriever.DraftPrompt"/>):
    /// what RAPID's drafter reads, scored the same way.</summary>
    RagOnly,
    /// <summary>RAPID: the answer generated greedily by the target reading the whole prompt, speculating with
    /// <see cref="PasskeyProbe.Drafter"/> reading the retrieved chunks; scored position by position against the key.</summary>
    Rapid,
}

/// <summary>One cell of the probe: accuracy (fraction of answer tokens predicted top-1 given the preceding ones, and
/// whole answers right) at one prompt length and needle depth.</summary>
public readonly record struct PasskeyResult(int Length, double Depth, double TokenAccuracy, double ExactAccuracy, int Trials);

/// <summary>
/// A long-context quality probe: for each prompt length and depth (0 = needle at the start of the filler, 1 = at the
/// end), builds prompts with a random needle, runs each as one sequence through <see cref="InferenceContext.Decode"/>
/// (so KV format, eviction and RoPE scaling all apply), and scores the answer tokens teacher-forced: the logits at each
/// answer position must rank the right next token first. Deterministic for a seed.
/// </summary>
public sealed class PasskeyProbe(InferenceContext context, Tokenizer tokenizer)
{
    public PasskeyMode Mode { get; init; }
    /// <summary>Retrieval settings of <see cref="PasskeyMode.RagOnly"/> and <see cref="PasskeyMode.Rapid"/>.</summary>
    public RagOptions Rag { get; init; } = new();
    /// <summary><see cref="PasskeyMode.Rapid"/>: the drafter (its own context; <see cref="SpeculativeOptions.Margin"/> is RAPID's η).</summary>
    public ModelDrafter? Drafter { get; init; }
    /// <summary><see cref="PasskeyMode.Rapid"/>: drafts proposed and kept over the last <see cref="Run"/>.</summary>
    public int Drafted { get; private set; }
    public int Accepted { get; private set; }

    /// <summary>Filler in the bundled model's register (its corpus is the King James Bible).</summary>
    public string Filler { get; init; } = DefaultFiller;

    /// <summary>Genesis 1:2–5.</summary>
    public const string DefaultFiller =
        "And the earth was without form, and void; and darkness was upon the face of the deep. " +
        "And God said, Let there be light: and there was light. And the evening and the morning were the first day. ";

    static readonly string[] Words =
    [
        "lamb", "river", "stone", "king", "bread", "silver", "garden", "sword", "tree", "fire", "house", "gold", "cloud",
        "ship", "horse", "wine", "door", "star", "field", "oil", "city", "mountain", "sheep", "cedar", "water", "crown",
    ];

    public IReadOnlyList<PasskeyResult> Run(PasskeyTask task, IReadOnlyList<int> lengths, IReadOnlyList<double> depths, int trials, int seed = 1)
    {
        if (Mode == PasskeyMode.Rapid && Drafter == null) throw new CriaException("the RAPID probe needs a drafter");
        Drafted = Accepted = 0;
        var results = new List<PasskeyResult>();
        foreach (int len in lengths)
            foreach (double depth in depths)
            {
                var rng = new Random(unchecked(seed * 1000003 + len * 1009 + (int)(depth * 1000))); // not HashCode.Combine: randomized per process
                double tok = 0, exact = 0;
                for (int t = 0; t < trials; t++)
                {
                    var (prompt, answer) = Build(task, len, depth, rng);
                    double a = Mode switch
                    {
                        PasskeyMode.RagOnly => Score(RagRetriever.DraftPrompt(prompt, tokenizer, Rag), answer),
                        PasskeyMode.Rapid => ScoreRapid(prompt, answer),
                        _ => Score(prompt, answer),
                    };
                    tok += a;
                    if (a == 1.0) exact++;
                }
                results.Add(new PasskeyResult(len, depth, tok / trials, exact / trials, trials));
            }
        return results;
    }

    /// <summary>The prompt tokens (ending just before the answer) and the answer tokens, about <paramref name="length"/>
    /// tokens in all, the needle after <paramref name="depth"/> of the filler.</summary>
    public (int[] Prompt, int[] Answer) Build(PasskeyTask task, int length, double depth, Random rng)
    {
        string needle, question, answer;
        if (task == PasskeyTask.Passkey)
            (needle, question, answer) = PasskeyText(rng.Next(10000, 100000));
        else
        {
            var w = Enumerable.Range(0, 12).Select(_ => Words[rng.Next(Words.Length)]).ToArray();
            string run = string.Join(" ", w) + ".";
            needle = " " + run + " " + run + " "; // shown twice: the pattern the model must pick up and copy later
            question = " " + w[0] + " " + w[1];
            answer = " " + string.Join(" ", w.Skip(2)) + ".";
        }
        var fillerUnit = tokenizer.Encode(Filler, addBos: false);
        return Assemble(tokenizer, needle, question, answer, length, depth, i => fillerUnit[i % fillerUnit.Length]);
    }

    /// <summary>Mohtashami &amp; Jaggi's pass-key needle, question and answer for a 5-digit key.</summary>
    public static (string Needle, string Question, string Answer) PasskeyText(int key)
    {
        string k = key.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return ($" The pass key is {k}. Remember it. {k} is the pass key. ", " What is the pass key? The pass key is", " " + k);
    }

    /// <summary>
    /// The token layout of a probe prompt, shared with the synthetic training documents
    /// (<see cref="Cria.Training.PasskeyDocuments"/>) so both see exactly the same tokens:
    /// BOS, filler[0, at), needle, filler[at, n), question | answer, where n makes the whole about
    /// <paramref name="length"/> tokens and at = round(depth · n). The needle is tokenized alone, the question and answer
    /// as one string split where the question's tokens end.
    /// </summary>
    public static (int[] Prompt, int[] Answer) Assemble(Tokenizer tokenizer, string needle, string question, string answer,
        int length, double depth, Func<int, int> fillerToken)
    {
        var head = tokenizer.Encode("", addBos: true);
        var n = tokenizer.Encode(needle, addBos: false);
        int qLen = tokenizer.Encode(question, addBos: false).Length;
        var qa = tokenizer.Encode(question + answer, addBos: false); // one tokenization, split where the question ends
        var q = qa.Take(qLen).ToArray();
        var a = qa.Skip(qLen).ToArray();
        int fillerLen = Math.Max(0, length - head.Length - n.Length - q.Length - a.Length);
        var filler = new int[fillerLen];
        for (int i = 0; i < fillerLen; i++) filler[i] = fillerToken(i);
        int at = (int)Math.Round(depth * fillerLen);
        var prompt = head.Concat(filler.Take(at)).Concat(n).Concat(filler.Skip(at)).Concat(q).ToArray();
        return (prompt, a);
    }

    /// <summary>RAPID: the fraction of answer positions where the greedy generation (target on the whole prompt,
    /// drafter on the retrieved chunks) has the answer's token.</summary>
    public double ScoreRapid(int[] prompt, int[] answer)
    {
        var drafter = Drafter ?? throw new CriaException("the RAPID probe needs a drafter");
        drafter.Prompt = new DraftPrompt(RagRetriever.DraftPrompt(prompt, tokenizer, Rag), prompt.Length);
        var gen = new Generator(context, tokenizer) { Drafter = drafter };
        var got = gen.GenerateTokens(prompt, new GenerationOptions
        {
            MaxTokens = answer.Length, StopAtEndOfGeneration = false, Sampler = SamplerOptions.Greedy,
        }).ToArray();
        Drafted += gen.LastStats!.DraftedTokens;
        Accepted += gen.LastStats.AcceptedTokens;
        context.Cache.Clear();
        int right = 0;
        for (int i = 0; i < answer.Length; i++) if (i < got.Length && got[i] == answer[i]) right++;
        return (double)right / answer.Length;
    }

    /// <summary>Activation Beacon: prompts stream through a <see cref="BeaconStream"/> at this ratio (0 = the file's);
    /// null runs them as one plain sequence.</summary>
    public int? BeaconRatio { get; init; }

    /// <summary>Fraction of answer tokens ranked first (teacher-forced) after the prompt, decoded as one sequence.</summary>
    public double Score(int[] prompt, int[] answer)
    {
        context.Cache.Clear();
        if (BeaconRatio is { } ratio)
        {
            int[] text = [.. prompt, .. answer.AsSpan(0, answer.Length - 1)];
            int hits = 0;
            new BeaconStream(context, 0, ratio).Feed(text, (p, z) =>
            {
                int best = 0;
                for (int i = 1; i < z.Length; i++) if (z[i] > z[best]) best = i;
                if (best == answer[p - prompt.Length + 1]) hits++;
            }, prompt.Length - 1);
            context.Cache.Clear();
            return (double)hits / answer.Length;
        }
        int total = prompt.Length + answer.Length - 1;
        var batch = new Batch(context.MicroBatch);
        int right = 0;
        for (int start = 0; start < total; start += context.MicroBatch)
        {
            batch.Clear();
            int end = Math.Min(total, start + context.MicroBatch);
            for (int p = start; p < end; p++)
                batch.Add(p < prompt.Length ? prompt[p] : answer[p - prompt.Length], p, 0, p >= prompt.Length - 1);
            context.Decode(batch);
            for (int p = Math.Max(start, prompt.Length - 1); p < end; p++)
            {
                var logits = context.Logits(p - start);
                int best = 0;
                for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
                if (best == answer[p - prompt.Length + 1]) right++;
            }
        }
        context.Cache.Clear();
        return (double)right / answer.Length;
    }
}
