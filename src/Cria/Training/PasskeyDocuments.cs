using Cria.Inference;
using Cria.Tokenization;

namespace Cria.Training;

/// <summary>
/// Synthetic pass-key documents for fine-tuning (<c>cria train --passkey-fraction</c>): exactly the token layout of
/// <c>cria passkey</c>'s prompts (<see cref="PasskeyProbe.Assemble"/>: filler, Mohtashami &amp; Jaggi's needle
/// "The pass key is NNNNN. Remember it. NNNNN is the pass key." at a random depth, then "What is the pass key? The pass
/// key is NNNNN" and a full stop), with filler taken from the training corpus's tokens (never from held-out text) and
/// the keys, lengths and depths drawn from the trainer's own RNG (independent of the probe's seeds). Half of the
/// documents use a running stretch of corpus text as filler, half one short corpus stretch repeated, as the probe
/// repeats its filler sentence.
/// </summary>
public sealed class PasskeyDocuments
{
    readonly Tokenizer _tok;
    readonly int[] _corpus;
    readonly int _minLength;
    readonly int[] _dot;

    /// <param name="corpusTokens">the tokenized training corpus the filler comes from</param>
    /// <param name="minLength">shortest document in tokens (BOS included); the longest is the training row</param>
    public PasskeyDocuments(Tokenizer tokenizer, int[] corpusTokens, int minLength = 64)
    {
        if (minLength < 32) throw new CriaException($"pass-key documents need at least 32 tokens, got a minimum of {minLength}");
        if (corpusTokens.Length < 1024) throw new CriaException($"the corpus has {corpusTokens.Length} tokens, too few to cut pass-key filler from");
        _tok = tokenizer;
        _corpus = corpusTokens;
        _minLength = minLength;
        // the full stop after the key, as it tokenizes there (a lone "." would get the SentencePiece space prefix)
        var (_, q, a) = PasskeyProbe.PasskeyText(12345);
        var qa = tokenizer.Encode(q + a, addBos: false);
        var qad = tokenizer.Encode(q + a + ".", addBos: false);
        _dot = qad.AsSpan(0, qa.Length).SequenceEqual(qa) ? qad[qa.Length..] : [];
    }

    /// <summary>One document of at most <paramref name="maxTokens"/> tokens, BOS excluded (the trainer puts BOS first),
    /// with where its answer (the key's tokens, " NNNNN") starts and how long it is.</summary>
    public SyntheticDocument Next(ref TrainingRng rng, int maxTokens)
    {
        int hi = Math.Max(_minLength, maxTokens - _dot.Length);
        int length = _minLength + rng.Next(hi - _minLength + 1);
        double depth = rng.Next(1001) / 1000.0;
        int key = 10000 + rng.Next(90000);
        int off = rng.Next(_corpus.Length - length);
        int unit = rng.Next(2) == 0 ? int.MaxValue : 16 + rng.Next(48); // running text, or one 16–63-token stretch repeated
        var (needle, question, answer) = PasskeyProbe.PasskeyText(key);
        var c = _corpus;
        var (prompt, ans) = PasskeyProbe.Assemble(_tok, needle, question, answer, length, depth, i => c[off + i % unit]);
        int n = Math.Min(maxTokens, prompt.Length - 1 + ans.Length + _dot.Length);
        var doc = prompt.Skip(1).Concat(ans).Concat(_dot).Take(n).ToArray(); // prompt[0] is BOS
        return new SyntheticDocument(doc, prompt.Length - 1, ans.Length);
    }
}

/// <summary>A synthetic training document: tokens (no BOS) and the span of answer tokens (which the trainer can weight).</summary>
public readonly record struct SyntheticDocument(int[] Tokens, int AnswerStart, int AnswerLength);

/// <summary>
/// Repeated random sequences (<c>cria train --repeat-fraction</c>), the cleanest induction-head signal (Olsson et al.
/// 2022): a row is BOS, then L tokens drawn uniformly from an alphabet, repeated until the row is full
/// (s[i] = r[i mod L]), with L uniform in [<see cref="MinPeriod"/>, T/2] so at least one whole copy follows. The targets
/// of the first period are unpredictable and get weight 0, and so does the first target of the second copy (r[0] after
/// r[L−1], a pair not seen before); every later target is predictable only by copying (the token after the previous
/// occurrence of the current one).
/// </summary>
public static class RepeatRows
{
    public const int MinPeriod = 8;

    /// <summary>The corpus's distinct tokens, plus <paramref name="extra"/> (e.g. the digit tokens, absent from the KJV)
    /// repeated so that they make up about a tenth of the draws.</summary>
    public static int[] Alphabet(int[] corpusTokens, int[] extra)
    {
        var distinct = corpusTokens.Distinct().Order().ToArray();
        extra = extra.Except(distinct).ToArray();
        if (extra.Length == 0) return distinct;
        int copies = Math.Max(1, distinct.Length / (9 * extra.Length));
        return [.. distinct, .. Enumerable.Repeat(extra, copies).SelectMany(e => e)];
    }

    public static void Fill(Span<int> tokens, Span<int> targets, Span<float> weights, ref TrainingRng rng, int bos, int[] alphabet)
    {
        int T = tokens.Length;
        if (T < 2 * MinPeriod) throw new CriaException($"repeat rows need at least {2 * MinPeriod} tokens per row, got {T}");
        if (alphabet.Length < 2) throw new CriaException($"repeat rows need an alphabet of at least 2 tokens, got {alphabet.Length}");
        int period = MinPeriod + rng.Next(T / 2 - MinPeriod + 1);
        for (int i = 0; i < period; i++) targets[i] = alphabet[rng.Next(alphabet.Length)];
        for (int i = period; i < T; i++) targets[i] = targets[i - period];
        tokens[0] = bos;
        targets[..^1].CopyTo(tokens[1..]);
        weights[..(period + 1)].Fill(0f);
        weights[(period + 1)..].Fill(1f);
    }
}
