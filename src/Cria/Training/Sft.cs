using System.Text.Json;
using Cria.Tokenization;

namespace Cria.Training;

/// <summary>
/// One supervised fine-tuning example: a prompt and the response to learn, tokenized. The loss is the response's
/// tokens only (TRL's completion-only loss): the prompt is read, not learned.
/// </summary>
public sealed record SftExample(int[] Prompt, int[] Response)
{
    /// <summary>A conversation rendered with the model's chat template: the prompt is every turn before the last with
    /// the assistant's header (<c>add_generation_prompt</c>), the response is the rest of the rendered conversation (the
    /// last assistant turn, with its end-of-turn text), so the model learns to end its turn. Special-token text is parsed.</summary>
    public static SftExample FromConversation(ChatTemplate template, Tokenizer tokenizer, IReadOnlyList<ChatTurn> turns)
    {
        if (turns.Count < 2 || turns[^1].Role != "assistant")
            throw new CriaException("an SFT conversation needs at least two turns, the last from the assistant");
        string prompt = template.Render(turns.Take(turns.Count - 1).ToList(), addGenerationPrompt: true);
        string full = template.Render(turns, addGenerationPrompt: false);
        if (!full.StartsWith(prompt, StringComparison.Ordinal))
            throw new CriaException("the chat template renders the conversation so that its last assistant turn does not follow the generation prompt; cannot split prompt and response");
        var p = tokenizer.Encode(prompt, addBos: false, parseSpecial: true);
        var r = tokenizer.Encode(full[prompt.Length..], addBos: false, parseSpecial: true);
        if (r.Length == 0) throw new CriaException("an SFT conversation has an empty response");
        return new SftExample(p, r);
    }

    /// <summary>Reads one example per line: {"prompt", "completion"} or {"prompt", "response"} (the response tokenized
    /// as it continues the prompt: no BOS, no space added), or, through <paramref name="template"/>, {"messages": [{"role",
    /// "content"}, …]} ending with the assistant's turn, or {"instruction", "response"} (cria magpie's records).</summary>
    public static List<SftExample> ReadJsonl(string path, Tokenizer tok, ChatTemplate? template)
    {
        var list = new List<SftExample>();
        foreach (var (line, e) in Formats.JsonLines.Objects(path))
        {
            string? Str(string name)
            {
                if (!e.TryGetProperty(name, out var v)) return null;
                if (v.ValueKind != JsonValueKind.String) throw new CriaException($"{path}:{line}: \"{name}\" must be a string");
                return v.GetString();
            }
            ChatTemplate Template() => template ?? throw new CriaException($"{path}:{line}: a chat record needs the model's chat template, and the model has none; give {{\"prompt\", \"completion\"}}");
            try
            {
                if (e.TryGetProperty("messages", out var msgs))
                {
                    if (msgs.ValueKind != JsonValueKind.Array) throw new CriaException($"{path}:{line}: \"messages\" must be an array");
                    var turns = msgs.EnumerateArray().Select(m =>
                        m.ValueKind == JsonValueKind.Object && m.TryGetProperty("role", out var ro) && ro.ValueKind == JsonValueKind.String
                        && m.TryGetProperty("content", out var co) && co.ValueKind == JsonValueKind.String
                            ? new ChatTurn(ro.GetString()!, co.GetString()!)
                            : throw new CriaException($"{path}:{line}: every message needs string \"role\" and \"content\"")).ToList();
                    list.Add(SftExample.FromConversation(Template(), tok, turns));
                }
                else if (Str("instruction") is { } instruction)
                {
                    string response = Str("response") ?? throw new CriaException($"{path}:{line}: an \"instruction\" needs a \"response\"");
                    list.Add(SftExample.FromConversation(Template(), tok, [new ChatTurn("user", instruction), new ChatTurn("assistant", response)]));
                }
                else
                {
                    string prompt = Str("prompt") ?? throw new CriaException($"{path}:{line}: expected \"prompt\" and \"completion\", \"messages\", or \"instruction\" and \"response\"");
                    string completion = Str("completion") ?? Str("response") ?? throw new CriaException($"{path}:{line}: a \"prompt\" needs a \"completion\" (or \"response\")");
                    var r = tok.Encode(completion, addBos: false);
                    if (r.Length == 0) throw new CriaException($"{path}:{line}: an empty completion");
                    list.Add(new SftExample(tok.Encode(prompt, addBos: false), r));
                }
            }
            catch (CriaException ex) when (!ex.Message.StartsWith(path, StringComparison.Ordinal)) { throw new CriaException($"{path}:{line}: {ex.Message}"); }
        }
        if (list.Count == 0) throw new CriaException($"{path} has no examples");
        return list;
    }
}

public sealed partial class Trainer
{
    /// <summary>One optimizer step of supervised fine-tuning: GradAccumulation micro-batches of BatchSize rows, each
    /// BOS + prompt + response of an example drawn with the trainer's RNG with only the response's targets weighted
    /// — or, with <paramref name="pack"/>, as many examples as fit one after another (<see cref="FillPackedRows"/>);
    /// the mean cross-entropy per response token (each micro-batch's mean, averaged), clipping and AdamW as in
    /// <see cref="TrainStep"/>.</summary>
    public StepResult SftStep(IReadOnlyList<SftExample> examples, bool pack = false)
    {
        var m = Model;
        if (examples.Count == 0) throw new CriaException("no SFT examples");
        int B = m.BatchSize, accum = Options.GradAccumulation;
        m.ZeroGradients();
        double loss = 0;
        for (int a = 0; a < accum; a++)
        {
            DropoutMasks(a);
            int weights = 0;
            if (pack)
            {
                SftExample? carry = null; // the draw that did not fit the last row is dropped
                weights = FillPackedRows(() => examples[_rng.Next(examples.Count)], ref carry);
            }
            else
                for (int b = 0; b < B; b++)
                {
                    var e = examples[_rng.Next(examples.Count)];
                    weights += FillPairRow(b, e.Prompt, e.Response);
                }
            loss += m.ForwardBackward(1f / ((float)weights * accum));
        }
        m.SegmentStarts.Clear();
        var (norm, lr) = OptimizerStep();
        return new StepResult(Step, (float)(loss / accum), norm, lr, TokensSeen);
    }

    /// <summary>
    /// Packs the micro-batch's rows (TRL's <c>packing</c> with <c>padding_free</c>): examples from
    /// <paramref name="draw"/> (null: none left) are laid one after another, each [BOS, prompt, response] in a segment
    /// of its own (<see cref="LlamaTrainingModel.SegmentStarts"/>: attention inside the example), until the next does
    /// not fit; that one starts the next row, and the one left over at the end is handed back in
    /// <paramref name="carry"/> (which also goes first). A row's rest is padding (weight 0, a segment of its own). An
    /// example longer than a row is cut there, as unpacked. Returns the response tokens placed.
    /// </summary>
    internal int FillPackedRows(Func<SftExample?> draw, ref SftExample? carry)
    {
        var m = Model;
        int T = m.SeqLen, B = m.BatchSize, total = 0;
        for (int b = 0; b < B; b++)
        {
            var tokens = m.Tokens.Slice(b * T, T); var targets = m.Targets.Slice(b * T, T);
            var weights = m.LossWeights.Slice(b * T, T); var seg = m.SegmentStarts.Slice(b * T, T);
            tokens.Clear(); targets.Clear(); weights.Clear();
            int at = 0;
            while (at < T)
            {
                var e = carry ?? draw();
                carry = null;
                if (e == null) break;
                int P = e.Prompt.Length;
                if (at > 0 && at + P + e.Response.Length > T) { carry = e; break; }
                if (P + 1 >= T) throw new CriaException($"a prompt of {P} tokens leaves no room for its response in rows of {T}");
                int n = Math.Min(e.Response.Length, T - at - P); // response tokens placed (all, unless alone and too long)
                // the example's rows at..at+P+n: tokens [BOS, prompt, response[..n−1]], targets [prompt, response[..n]]
                tokens[at] = _bos;
                e.Prompt.CopyTo(tokens[(at + 1)..]);
                e.Response.AsSpan(0, n - 1).CopyTo(tokens[(at + 1 + P)..]);
                e.Prompt.CopyTo(targets[at..]);
                e.Response.AsSpan(0, n).CopyTo(targets[(at + P)..]);
                weights.Slice(at + P, n).Fill(1f);
                seg.Slice(at, P + n).Fill(at);
                at += P + n;
                total += n;
            }
            seg[at..].Fill(at); // padding: a segment of its own
        }
        return total;
    }

    /// <summary>The mean negative log-likelihood per response token over <paramref name="examples"/> (BatchSize at a
    /// time; a short last batch repeats its last example, which is not counted; with <paramref name="pack"/>, in
    /// order, packed as in training). No gradient is kept.</summary>
    public double SftLoss(IReadOnlyList<SftExample> examples, bool pack = false)
    {
        var m = Model;
        int B = m.BatchSize;
        double nll = 0; long count = 0;
        if (pack)
        {
            int next = 0;
            SftExample? carry = null;
            while (next < examples.Count || carry != null)
            {
                FillPackedRows(() => next < examples.Count ? examples[next++] : null, ref carry);
                m.Forward();
                for (int r = 0; r < m.Rows; r++)
                    if (m.LossWeights[r] != 0) { nll += m.TargetNll(r); count++; }
            }
            m.SegmentStarts.Clear();
            return count > 0 ? nll / count : 0;
        }
        for (int first = 0; first < examples.Count; first += B)
        {
            int n = Math.Min(B, examples.Count - first);
            var counted = new int[B];
            for (int b = 0; b < B; b++)
            {
                var e = examples[first + Math.Min(b, n - 1)];
                counted[b] = FillPairRow(b, e.Prompt, e.Response);
            }
            m.Forward();
            for (int b = 0; b < n; b++) { nll -= RowLogProb(b); count += counted[b]; }
        }
        return count > 0 ? nll / count : 0;
    }
}
