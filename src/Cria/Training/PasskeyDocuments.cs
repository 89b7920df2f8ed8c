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

    /// <summary>One document of at most <paramref name="maxTokens"/> tokens, BOS excluded (the trainer puts BOS first).
    /// Also returns where the answer starts, for tests.</summary>
    public (int[] Tokens, int AnswerStart) Next(ref TrainingRng rng, int maxTokens)
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
        return (doc, prompt.Length - 1);
    }
}
