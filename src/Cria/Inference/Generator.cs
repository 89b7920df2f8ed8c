using System.Diagnostics;
using Cria.Tokenization;

namespace Cria.Inference;

/// <summary>What to generate and how to pick tokens.</summary>
public sealed record GenerationOptions
{
    public int MaxTokens { get; init; } = 128;
    public SamplerOptions Sampler { get; init; } = new();
    /// <summary>Prepend BOS when the vocabulary asks for it (tokenizer.ggml.add_bos_token).</summary>
    public bool AddBos { get; init; } = true;
    /// <summary>Let special-token text in the prompt (e.g. "&lt;s&gt;") become special tokens.</summary>
    public bool ParseSpecial { get; init; }
    /// <summary>Stop at an end-of-generation token (EOS, EOT…).</summary>
    public bool StopAtEndOfGeneration { get; init; } = true;
}

/// <summary>Timings of the last generation, as llama.cpp reports them.</summary>
public sealed record GenerationStats(int PromptTokens, TimeSpan PromptTime, int GeneratedTokens, TimeSpan GenerationTime, string StopReason)
{
    public double PromptTokensPerSecond => PromptTokens / Math.Max(PromptTime.TotalSeconds, 1e-9);
    public double GenerationTokensPerSecond => GeneratedTokens / Math.Max(GenerationTime.TotalSeconds, 1e-9);
}

/// <summary>
/// Text in, text out for one sequence: tokenizes the prompt, prefills it as one batch, then samples and decodes one
/// token per step, yielding text as soon as it forms whole UTF-8 characters.
/// </summary>
public sealed class Generator(InferenceContext context, Tokenizer tokenizer)
{
    public InferenceContext Context { get; } = context;
    public Tokenizer Tokenizer { get; } = tokenizer;
    public GenerationStats? LastStats { get; private set; }

    /// <summary>Streams the continuation of <paramref name="prompt"/>. The sequence's cache is cleared first.</summary>
    public IEnumerable<string> Generate(string prompt, GenerationOptions options, int sequenceId = 0, CancellationToken cancel = default)
    {
        var tokens = Tokenizer.Encode(prompt, options.AddBos && Tokenizer.AddBos, options.ParseSpecial);
        return Generate(tokens, options, sequenceId, cancel);
    }

    public IEnumerable<string> Generate(int[] promptTokens, GenerationOptions options, int sequenceId = 0, CancellationToken cancel = default)
    {
        if (promptTokens.Length == 0) throw new CriaException("the prompt is empty (no tokens); give some text or enable BOS");
        if (options.MaxTokens < 0) throw new CriaException($"max tokens must be ≥ 0, got {options.MaxTokens}");
        var ctx = Context;
        ctx.Cache.Remove(sequenceId);
        if (promptTokens.Length >= ctx.Cache.Capacity)
            throw new CriaException($"the prompt has {promptTokens.Length} tokens but the context holds {ctx.Cache.Capacity}; raise the context size (-c)");
        var sampler = new Sampler(ctx.Config.VocabSize, options.Sampler);
        foreach (var t in promptTokens) sampler.Accept(t);
        var decoder = new StreamingDecoder(Tokenizer);
        // The prompt is already on screen: the first generated token's space separates it from the prompt (llama-cli).
        if (promptTokens.Any(t => !Tokenizer.IsControl(t))) decoder.ContinueText();
        var batch = new Batch(Math.Max(promptTokens.Length, 1));

        var sw = Stopwatch.StartNew();
        batch.AddSequence(promptTokens, 0, sequenceId);
        ctx.Decode(batch);
        var promptTime = sw.Elapsed;
        int lastRow = batch.Count - 1;
        int pos = promptTokens.Length, generated = 0;
        string stop = "length";
        sw.Restart();
        while (generated < options.MaxTokens)
        {
            cancel.ThrowIfCancellationRequested();
            int next = sampler.Sample(ctx.Logits(lastRow));
            sampler.Accept(next);
            generated++;
            if (options.StopAtEndOfGeneration && Tokenizer.IsEog(next)) { stop = "eog"; break; }
            var text = decoder.Add(next);
            if (text.Length > 0) yield return text;
            if (generated == options.MaxTokens) break;
            if (pos >= ctx.Cache.Capacity) { stop = "context"; break; }
            batch.Clear();
            lastRow = batch.Add(next, pos++, sequenceId, true);
            ctx.Decode(batch);
        }
        var tail = decoder.Flush();
        LastStats = new GenerationStats(promptTokens.Length, promptTime, generated, sw.Elapsed, stop);
        if (tail.Length > 0) yield return tail;
    }
}
