using Cria.Inference;
using Cria.Tokenization;

namespace Cria.Training;

/// <summary>Settings of a <see cref="Magpie"/> run (defaults: the Magpie repository's Llama 3 script).</summary>
public sealed record MagpieOptions
{
    /// <summary>Records to write (after dropping empty, unfinished and duplicate instructions).</summary>
    public int Count { get; init; } = 100;
    /// <summary>A system turn before the user header, to steer the topic; null = none.</summary>
    public string? System { get; init; }
    public int MaxInstructionTokens { get; init; } = 256;
    public int MaxResponseTokens { get; init; } = 512;
    /// <summary>Instructions are sampled at temperature 1 with top-p 1 and no other truncation.</summary>
    public SamplerOptions InstructionSampler { get; init; } = new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f };
    /// <summary>Responses are greedy.</summary>
    public SamplerOptions ResponseSampler { get; init; } = SamplerOptions.Greedy;
    /// <summary>Give up after this many instructions sampled per record asked for.</summary>
    public int AttemptsPerRecord { get; init; } = 4;

    public void Validate()
    {
        if (Count < 1 || MaxInstructionTokens < 1 || MaxResponseTokens < 1 || AttemptsPerRecord < 1)
            throw new CriaException($"magpie: count ({Count}), token limits ({MaxInstructionTokens}, {MaxResponseTokens}) and attempts ({AttemptsPerRecord}) must be positive");
        InstructionSampler.Validate();
        ResponseSampler.Validate();
    }
}

/// <summary>One synthesized pair (Magpie's raw fields), with the tokens each side took.</summary>
public sealed record MagpieRecord(string Instruction, string Response, int InstructionTokens, int ResponseTokens);

/// <summary>What a run sampled and why instructions were dropped.</summary>
public sealed record MagpieReport(int Attempts, int Written, int Empty, int Unfinished, int Duplicates, int UnfinishedResponses);

/// <summary>
/// Magpie (Xu et al. 2024): an aligned chat model given only its chat template up to where the user's text starts —
/// the pre-query template, e.g. Llama 3's <c>&lt;|begin_of_text|&gt;&lt;|start_header_id|&gt;user&lt;|end_header_id|&gt;\n\n</c> — writes a
/// user query. The query is cut where the model ends the turn: at an end-of-generation or any other control token
/// (a header, <c>&lt;|eot_id|&gt;</c>), or at the plain text that follows the user's content in the template (Llama 2's
/// <c>[/INST]</c>). It is then put into the full template and answered. The pre-query template is read from the
/// model's own chat template by rendering a user turn around a sentinel, so every model's template works.
/// </summary>
public static class Magpie
{
    const string Sentinel = "\u2063MAGPIE\u2063"; // survives trimming and templates that transform content

    /// <summary>The template's text before a user turn's content (after an optional system turn), and the text right
    /// after it when no reply follows (where the user's turn ends).</summary>
    public static (string PreQuery, string AfterQuery) Split(ChatTemplate template, string? system = null)
    {
        var turns = new List<ChatTurn>();
        if (system != null) turns.Add(new ChatTurn("system", system));
        turns.Add(new ChatTurn("user", Sentinel));
        string text = template.Render(turns, addGenerationPrompt: false);
        int at = text.IndexOf(Sentinel, StringComparison.Ordinal);
        if (at < 0 || text.IndexOf(Sentinel, at + 1, StringComparison.Ordinal) >= 0)
            throw new CriaException("magpie: the chat template does not render the user's text exactly once, so its pre-query part cannot be found");
        return (text[..at], text[(at + Sentinel.Length)..]);
    }

    /// <summary>Synthesizes records until <see cref="MagpieOptions.Count"/> are written or the attempts run out;
    /// <paramref name="write"/> receives each record as it is made.</summary>
    public static MagpieReport Run(Generator generator, ChatTemplate template, MagpieOptions o, Action<MagpieRecord> write, CancellationToken cancel = default)
    {
        o.Validate();
        var tok = generator.Tokenizer;
        var (pre, after) = Split(template, o.System);
        string stopText = after.Trim();
        var prompt = tok.Encode(pre, tok.AddBos, parseSpecial: true);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int attempts = 0, written = 0, empty = 0, unfinished = 0, duplicates = 0, unfinishedResponses = 0;
        while (written < o.Count && attempts < o.Count * o.AttemptsPerRecord)
        {
            var sampler = o.InstructionSampler with { Seed = o.InstructionSampler.Seed + (ulong)attempts };
            attempts++;
            var (instruction, n, finished) = Turn(generator, prompt, sampler, o.MaxInstructionTokens, stopText, cancel);
            instruction = instruction.Trim();
            if (!finished) { unfinished++; continue; }
            if (instruction.Length == 0) { empty++; continue; }
            if (!seen.Add(string.Join(' ', instruction.ToLowerInvariant().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)))) { duplicates++; continue; }
            var turns = new List<ChatTurn>();
            if (o.System != null) turns.Add(new ChatTurn("system", o.System));
            turns.Add(new ChatTurn("user", instruction));
            var responsePrompt = tok.Encode(template.Render(turns), tok.AddBos, parseSpecial: true);
            var (response, m, done) = Turn(generator, responsePrompt, o.ResponseSampler, o.MaxResponseTokens, null, cancel);
            if (!done) { unfinishedResponses++; continue; }
            write(new MagpieRecord(instruction, response.Trim(), n, m));
            written++;
        }
        return new MagpieReport(attempts, written, empty, unfinished, duplicates, unfinishedResponses);
    }

    /// <summary>Generates one turn after <paramref name="prompt"/>: the text up to the first end-of-generation or control
    /// token or <paramref name="stopText"/>, how many tokens were generated, and whether the turn ended before the limit.</summary>
    static (string Text, int Tokens, bool Finished) Turn(Generator g, int[] prompt, SamplerOptions sampler, int maxTokens, string? stopText, CancellationToken cancel)
    {
        var tok = g.Tokenizer;
        var decoder = new StreamingDecoder(tok);
        var text = new System.Text.StringBuilder();
        int n = 0;
        int Stop() => stopText is { Length: > 0 } s ? text.ToString().IndexOf(s, StringComparison.Ordinal) : -1;
        foreach (int t in g.GenerateTokens(prompt, new GenerationOptions { MaxTokens = maxTokens, Sampler = sampler }, 0, cancel))
        {
            n++;
            if (tok.IsControl(t)) return (text.ToString(), n, true);
            text.Append(decoder.Add(t));
            if (Stop() is var at and >= 0) return (text.ToString(0, at), n, true);
        }
        text.Append(decoder.Flush());
        if (Stop() is var end and >= 0) return (text.ToString(0, end), n, true);
        // The generator stops at an end-of-generation token without yielding it; otherwise the limit cut the turn.
        return (text.ToString(), n, g.LastStats?.StopReason == "eog");
    }
}
