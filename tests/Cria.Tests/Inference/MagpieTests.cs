using Cria.Inference;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Tests.Tokenization;
using Cria.Tokenization;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Inference;

/// <summary>
/// Magpie: the pre-query template read from real chat templates (Llama 3's gives exactly the Magpie repository's
/// <c>pre_query_template</c> tokens), and a run whose records are exactly what an independent re-generation with the
/// same seeds, stop rule and filters keeps.
/// </summary>
public sealed class MagpieTests(ITestOutputHelper output)
{
    static ChatTemplate Real(string name, string bos, string eos) =>
        ChatTemplate.FromJinja(ChatTemplateTests.Cases.Value[name].Template, bos, eos, stripBos: true);

    [Fact]
    public void The_pre_query_template_is_read_from_the_models_chat_template()
    {
        var llama3 = Real("Llama 3 instruct (meta-llama/Meta-Llama-3-8B-Instruct)", "<|begin_of_text|>", "<|eot_id|>");
        Assert.Equal(("<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"), Magpie.Split(llama3));
        Assert.Equal(("<|start_header_id|>system<|end_header_id|>\n\nYou write riddles.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>"),
            Magpie.Split(llama3, "You write riddles."));
        Assert.Equal(("<|im_start|>user\n", "<|im_end|>\n"), Magpie.Split(Real("ChatML (teknium/OpenHermes-2.5-Mistral-7B)", "", "<|im_end|>")));
        var (pre, after) = Magpie.Split(Real("Llama 2 chat (meta-llama/Llama-2-7b-chat-hf, -13b-chat-hf)", "<s>", "</s>"));
        Assert.Equal(("[INST] ", " [/INST]"), (pre, after));

        // With the real Llama 3 vocabulary (which adds BOS), the prompt is the Magpie repository's Llama 3 pre-query
        // template, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", token for token.
        var meta = GgufTokenizerBuilder.Llama3Tokenizer(Fixtures.TokenizerJson("llama3"));
        var path = LogitsAgreementTests.ModelFile("guard-llama3-vocab", new RandomModelSpec
        {
            Dim = 64, Layers = 2, Heads = 4, KvHeads = 1, FfnDim = 128, ContextLength = 1024, RopeBase = 500000f,
            TokenizerMetadata = meta, VocabSize = ((string[])meta.First(e => e.Key == "tokenizer.ggml.tokens").Value).Length, Seed = 12,
        });
        using var m = LlamaModel.Open(path);
        var (p3, _) = Magpie.Split(llama3);
        Assert.Equal([128000, 128006, 882, 128007, 271], m.Tokenizer.Encode(p3, m.Tokenizer.AddBos, parseSpecial: true));
        Assert.Equal([128000, 128006, 882, 128007, 271], m.Tokenizer.Encode("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n", false, parseSpecial: true));
    }

    /// <summary>A run on a random model (the synthetic vocabulary: its &lt;s&gt; and &lt;/s&gt; end a turn) against a
    /// re-generation done here with the plain generator: attempt a samples the instruction with seed s + a at
    /// temperature 1, cut at the first control token; unfinished, empty and duplicate instructions are dropped; the
    /// greedy response must end within its limit. The records and the report must be exactly that.</summary>
    [Fact]
    public void A_run_keeps_exactly_what_the_stop_rule_and_filters_keep()
    {
        var path = LogitsAgreementTests.ModelFile("magpie-base", new RandomModelSpec { Dim = 64, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 128, VocabSize = 320, Seed = 5 });
        using var m = LlamaModel.Open(path);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 512, Threads = 2 });
        var g = new Generator(ctx, m.Tokenizer);
        var template = ChatTemplate.FromGguf(m.File, m.Tokenizer);
        var o = new MagpieOptions { Count = 3, MaxInstructionTokens = 24, MaxResponseTokens = 160, AttemptsPerRecord = 20, InstructionSampler = new SamplerOptions { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f, Seed = 77 } };
        var records = new List<MagpieRecord>();
        var report = Magpie.Run(g, template, o, records.Add);
        output.WriteLine($"{report}; first: {(records.Count > 0 ? System.Text.Json.JsonSerializer.Serialize(records[0]) : "-")}");

        var tok = m.Tokenizer;
        (string Text, bool Finished) Turn(int[] prompt, SamplerOptions s, int max)
        {
            var ids = new List<int>();
            bool control = false;
            foreach (int t in g.GenerateTokens(prompt, new GenerationOptions { MaxTokens = max, Sampler = s }))
            {
                if (tok.IsControl(t)) { control = true; break; }
                ids.Add(t);
            }
            return (tok.Decode(ids), control || g.LastStats!.StopReason == "eog");
        }
        var (pre, _) = Magpie.Split(template);
        var prompt = tok.Encode(pre, tok.AddBos, parseSpecial: true);
        var expected = new List<MagpieRecord>();
        var seen = new HashSet<string>();
        int empty = 0, unfinished = 0, dup = 0, unfinishedResponses = 0, a = 0;
        for (; expected.Count < o.Count && a < o.Count * o.AttemptsPerRecord; a++)
        {
            var (text, finished) = Turn(prompt, o.InstructionSampler with { Seed = 77 + (ulong)a }, o.MaxInstructionTokens);
            text = text.Trim();
            if (!finished) { unfinished++; continue; }
            if (text.Length == 0) { empty++; continue; }
            if (!seen.Add(string.Join(' ', text.ToLowerInvariant().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)))) { dup++; continue; }
            var (resp, done) = Turn(tok.Encode(template.Render([new ChatTurn("user", text)]), tok.AddBos, parseSpecial: true), SamplerOptions.Greedy, o.MaxResponseTokens);
            if (!done) { unfinishedResponses++; continue; }
            expected.Add(new MagpieRecord(text, resp.Trim(), 0, 0));
        }
        Assert.Equal(new MagpieReport(a, expected.Count, empty, unfinished, dup, unfinishedResponses), report);
        Assert.True(records.Count >= 1, "the seeds should give at least one finished record for this check to mean anything");
        Assert.Equal(expected.Select(e => (e.Instruction, e.Response)), records.Select(r => (r.Instruction, r.Response)));
        Assert.All(records, r => Assert.InRange(r.InstructionTokens, 1, o.MaxInstructionTokens));
    }

    [Fact]
    public void Bad_options_and_templates_are_refused()
    {
        Assert.Contains("must be positive", Assert.Throws<CriaException>(() => new MagpieOptions { Count = 0 }.Validate()).Message);
        var t = ChatTemplate.FromJinja("{% for m in messages %}{{ m['role'] }}: (hidden){% endfor %}", "", "");
        Assert.Contains("exactly once", Assert.Throws<CriaException>(() => Magpie.Split(t)).Message);
    }
}
