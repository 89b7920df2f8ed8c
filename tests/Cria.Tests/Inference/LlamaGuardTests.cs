using Cria.Inference;
using Cria.Models;
using Cria.Safety;
using Cria.Tests.Oracle;
using Cria.Tests.Tokenization;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Inference;

/// <summary>Llama Guard: the prompts are the exact strings of Llama Guard 3's chat template and of llama-recipes'
/// v1 template; answers parse as the model cards describe; the score is the probability of the first token of
/// "unsafe" at the first generated position (checked on a random model with the real Llama 3 vocabulary, whose
/// special tokens the prompt must turn into single tokens).</summary>
public sealed class LlamaGuardTests(ITestOutputHelper output)
{
    const string Categories3 = "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\nS6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\nS11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\nS14: Code Interpreter Abuse.\n";

    static string Expected3(string role, string conversation) =>
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nTask: Check if there is unsafe content in '" + role + "' messages in conversations according our safety policy with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + Categories3 + "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n" + conversation + "\n\n<END CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST " + role
        + " message in the above conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";

    [Fact]
    public void Llama_guard_3_prompts_are_its_chat_templates_text()
    {
        Assert.Equal(Expected3("User", "User: How do I bake bread?"), LlamaGuard.Prompt3(["How do I bake bread?"]));
        Assert.Equal(Expected3("Agent", "User: How do I bake bread?\n\nAgent: Mix flour, water, salt and yeast."),
            LlamaGuard.Prompt3(["How do I bake bread?", "Mix flour, water, salt and yeast."]));
        Assert.Equal(GuardRole.User, LlamaGuard.RoleOf(["a", "b", "c"]));
        Assert.Throws<CriaException>(() => LlamaGuard.Prompt3([]));
    }

    [Fact]
    public void The_v1_prompt_follows_llama_recipes_build_prompt()
    {
        var cats = new[] { new GuardCategory("O1", "Violence.", "Should not\n - Help plan violence."), new GuardCategory("O2", "Weapons.", "Should not\n - Help build weapons.") };
        string expected = "[INST] Task: Check if there is unsafe content in 'Agent' messages in conversations according our safety policy with the below categories."
            + "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nO1: Violence.\nShould not\n - Help plan violence.\nO2: Weapons.\nShould not\n - Help build weapons.\n<END UNSAFE CONTENT CATEGORIES>\n"
            + "\n<BEGIN CONVERSATION>\n\nUser: hi\n\nAgent: hello\n\n<END CONVERSATION>\n"
            + "\nProvide your safety assessment for Agent in the above conversation:\n- First line must read 'safe' or 'unsafe'.\n- If unsafe, a second line must include a comma-separated list of violated categories. [/INST]";
        Assert.Equal(expected, LlamaGuard.Prompt1(["hi", "hello"], cats));
        Assert.Throws<CriaException>(() => LlamaGuard.Prompt1(["hi"], []));
    }

    [Theory]
    [InlineData("safe", true, false, "")]
    [InlineData("\n\nsafe\n", true, false, "")]
    [InlineData("unsafe\nS1", true, true, "S1")]
    [InlineData(" unsafe \n S2, S10 ", true, true, "S2,S10")]
    [InlineData("unsafe", true, true, "")]
    [InlineData("unsafe\nO3,O6", true, true, "O3,O6")]
    [InlineData("Safe", false, false, "")]
    [InlineData("safe\nS1", false, false, "")]
    [InlineData("unsafe\nviolence", false, false, "")]
    [InlineData("unsafe\nS1\nmore", false, false, "")]
    [InlineData("the quick brown fox", false, false, "")]
    [InlineData("", false, false, "")]
    public void Answers_parse_as_the_model_cards_describe(string text, bool valid, bool isUnsafe, string codes)
    {
        var p = LlamaGuard.Parse(text);
        Assert.Equal(valid, p != null);
        if (p is { } v)
        {
            Assert.Equal(isUnsafe, v.Unsafe);
            Assert.Equal(codes, string.Join(",", v.Categories));
        }
    }

    [Fact]
    public void The_score_is_the_first_token_probability_of_unsafe()
    {
        var tok = GgufTokenizerBuilder.Llama3Tokenizer(Fixtures.TokenizerJson("llama3"));
        int vocab = ((string[])tok.First(e => e.Key == "tokenizer.ggml.tokens").Value).Length;
        var path = LogitsAgreementTests.ModelFile("guard-llama3-vocab", new RandomModelSpec
        {
            Dim = 64, Layers = 2, Heads = 4, KvHeads = 1, FfnDim = 128, ContextLength = 1024, RopeBase = 500000f,
            TokenizerMetadata = tok, VocabSize = vocab, Seed = 12,
        });
        using var m = LlamaModel.Open(path);
        using var ctx = new InferenceContext(m, new ContextOptions { ContextSize = 1024, Threads = 2, Kv = KvFormat.F32 });
        string prompt = LlamaGuard.Prompt3(["How do I bake bread?"]);
        var ids = m.Tokenizer.Encode(prompt, addBos: false, parseSpecial: true);
        Assert.Equal(128000, ids[0]);                                   // <|begin_of_text|>, once
        Assert.Equal(1, ids.Count(t => t == 128000));
        Assert.Equal(2, ids.Count(t => t == 128006));                   // <|start_header_id|> user, assistant
        Assert.Contains(128009, ids);                                   // <|eot_id|>
        int unsafeId = LlamaGuard.UnsafeToken(m.Tokenizer);
        output.WriteLine($"prompt: {ids.Length} tokens; 'unsafe' encodes as [{string.Join(", ", m.Tokenizer.Encode("unsafe", addBos: false))}]");

        var v = LlamaGuard.Classify(ctx, m.Tokenizer, prompt);
        float[] logits;
        using (var r = new CriaRunner(path, 1024)) logits = r.AllLogits(ids)[^1];
        double max = logits.Max(), z = logits.Sum(x => Math.Exp(x - max));
        double expected = Math.Exp(logits[unsafeId] - max) / z;
        output.WriteLine($"P(unsafe) {v.UnsafeProbability:E3} (independent {expected:E3}); output {System.Text.Json.JsonSerializer.Serialize(v.Output)}, valid {v.Valid}");
        Assert.True(Math.Abs(v.UnsafeProbability - expected) <= 1e-6 + 1e-4 * expected);
        Assert.Equal(LlamaGuard.Parse(v.Output) != null, v.Valid);
        if (!v.Valid) Assert.Equal(v.UnsafeProbability >= 0.5f, v.Unsafe);
        Assert.Equal(0, ctx.Cache.Length(0)); // the cache is left empty

        // A prompt that does not fit is refused before anything runs.
        using var small = new InferenceContext(m, new ContextOptions { ContextSize = 64, Threads = 1 });
        Assert.Throws<CriaException>(() => LlamaGuard.Classify(small, m.Tokenizer, prompt));
    }
}
