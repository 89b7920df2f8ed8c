using System.Text.Json;
using Cria.Formats;
using Cria.Models;
using Cria.Tests.Oracle;
using Cria.Tokenization;
using Cria.Tokenization.Jinja;
using Xunit;

namespace Cria.Tests.Tokenization;

/// <summary>
/// Real chat templates (Fixtures/chat_templates.json, verbatim from the models' tokenizer_config.json) rendered by
/// the Jinja interpreter through <see cref="ChatTemplate"/>, byte for byte against llama.cpp's
/// test-chat-template.cpp expectations and transformers' outputs; agreement with the built-in renderers; fallback,
/// system-message merging, BOS handling and errors.
/// </summary>
public class ChatTemplateTests
{
    public sealed record Case(string Name, string Oracle, string Conversation, string Bos, string Eos, string Template, string Expected, string? Builtin);

    internal static readonly Lazy<Dictionary<string, Case>> Cases = new(() =>
    {
        var path = Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Tokenization", "Fixtures", "chat_templates.json");
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var d = new Dictionary<string, Case>();
        foreach (var c in doc.RootElement.GetProperty("cases").EnumerateArray())
        {
            string S(string n) => c.GetProperty(n).GetString()!;
            d[S("name")] = new Case(S("name"), S("oracle"), S("conversation"), S("bos"), S("eos"), S("template"), S("expected"),
                c.TryGetProperty("builtin", out var b) ? b.GetString() : null);
        }
        return d;
    });

    public static IEnumerable<object[]> CaseNames() => Cases.Value.Keys.Select(k => new object[] { k });

    /// <summary>llama.cpp's test conversation (tests/test-chat-template.cpp).</summary>
    public static readonly ChatTurn[] Conversation =
    [
        new("system", "You are a helpful assistant"), new("user", "Hello"), new("assistant", "Hi there"),
        new("user", "Who are you"), new("assistant", "   I am an assistant   "), new("user", "Another question"),
    ];

    static ChatTurn[] Turns(Case c) => c.Conversation == "system" ? Conversation : Conversation[1..];

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void RealTemplatesRenderLikeTheirOracle(string name)
    {
        var c = Cases.Value[name];
        var t = ChatTemplate.FromJinja(c.Template, c.Bos, c.Eos);
        Assert.True(t.Jinja != null, $"{name}: {t.FallbackReason}");
        Assert.Equal("jinja", t.Name);
        Assert.Equal(c.Expected, t.Render(Turns(c)));
    }

    [Fact]
    public void TheFixturesCoverTheFamiliesTheIssueNames()
    {
        var names = string.Join("\n", Cases.Value.Keys);
        foreach (var family in new[] { "Llama 2 chat", "Llama 3 instruct", "Llama 3.1 instruct", "Mistral 7B Instruct v0.1", "Mistral 7B Instruct v0.2", "Mistral 7B Instruct v0.3", "ChatML", "Qwen2", "Zephyr", "Gemma" })
            Assert.Contains(family, names);
        Assert.True(Cases.Value.Values.Count(c => c.Oracle == "llama.cpp") >= 20);
    }

    /// <summary>The interpreter on the model's template and the built-in renderer of its family give the same
    /// prompt (the built-ins leave BOS to the tokenizer: the Jinja output's leading BOS is stripped, as for a model
    /// whose tokenizer adds BOS).</summary>
    [Fact]
    public void InterpreterAgreesWithTheBuiltInRenderers()
    {
        ChatTurn[] withSystem = [new("system", "Be brief."), new("user", "Hi"), new("assistant", "Hello!"), new("user", "Bye")];
        int compared = 0;
        foreach (var c in Cases.Value.Values.Where(c => c.Builtin != null))
        {
            var kind = Enum.Parse<ChatTemplate.Format>(c.Builtin!);
            var jinja = ChatTemplate.FromJinja(c.Template, c.Bos, c.Eos, stripBos: true);
            var builtin = new ChatTemplate(kind, eosText: c.Eos);
            Assert.Equal(kind, jinja.Kind); // detection by markers agrees too
            // Mistral's templates reject system messages (merged differently); compare without one.
            var conv = kind == ChatTemplate.Format.Mistral ? withSystem[1..] : withSystem;
            Assert.Equal(builtin.Render(conv), jinja.Render(conv));
            Assert.Equal(builtin.Render(conv, addGenerationPrompt: false), jinja.Render(conv, addGenerationPrompt: false));
            compared++;
        }
        Assert.Equal(5, compared);
    }

    [Fact]
    public void SystemMessagesAreMergedOnlyForTemplatesThatDropOrRejectThem()
    {
        Assert.True(ChatTemplate.FromJinja(Cases.Value["ChatML (teknium/OpenHermes-2.5-Mistral-7B)"].Template, "", "").SupportsSystemRole);
        var gemma = ChatTemplate.FromJinja(Cases.Value["Gemma (google/gemma-7b-it, transformers)"].Template, "<bos>", "<eos>");
        Assert.False(gemma.SupportsSystemRole); // raises on a system message
        Assert.Contains("merged", gemma.Description);
        var phi3 = ChatTemplate.FromJinja(Cases.Value["Phi-3-mini (ignores system messages; system merged)"].Template, "", "");
        Assert.False(phi3.SupportsSystemRole); // silently drops it
        // Two system messages join with a newline; a system message before an assistant turn becomes a user turn.
        Assert.Equal("<bos><start_of_turn>user\nA\nB\nHi<end_of_turn>\n<start_of_turn>model\n",
            gemma.Render([new("system", "A"), new("system", "B"), new("user", "Hi")]));
    }

    [Fact]
    public void TheTemplatesBosIsStrippedWhenTheTokenizerAddsOne()
    {
        var c = Cases.Value["Llama 3 instruct (meta-llama/Meta-Llama-3-8B-Instruct)"];
        Assert.StartsWith("<|begin_of_text|><|start_header_id|>", ChatTemplate.FromJinja(c.Template, c.Bos, c.Eos).Render(Conversation));
        Assert.StartsWith("<|start_header_id|>", ChatTemplate.FromJinja(c.Template, c.Bos, c.Eos, stripBos: true).Render(Conversation));
    }

    [Fact]
    public void ATemplateThatDoesNotParseFallsBackToTheBuiltInOfItsFamily()
    {
        const string broken = "{% for message in messages %}<|start_header_id|>{{ message['role'] }<|end_header_id|>{% endfor %}";
        var t = ChatTemplate.FromJinja(broken, "<|begin_of_text|>", "<|eot_id|>");
        Assert.Null(t.Jinja);
        Assert.Equal(ChatTemplate.Format.Llama3, t.Kind);
        Assert.Equal("llama3", t.Name);
        Assert.Contains("line 1, column", t.FallbackReason);
        Assert.Contains("built-in llama3", t.Description);
        Assert.Contains("could not be used", t.Description);
        Assert.Equal(new ChatTemplate(ChatTemplate.Format.Llama3).Render(Conversation), t.Render(Conversation));

        var unknown = ChatTemplate.FromJinja("{% if %}", "", "");
        Assert.Equal(ChatTemplate.Format.ChatML, unknown.Kind);
    }

    [Fact]
    public void ATemplateThatFailsOnAPlainConversationFallsBackAtLoad()
    {
        // Parses, but uses a filter the interpreter lacks.
        var t = ChatTemplate.FromJinja("{% for m in messages %}[INST] {{ m['content'] | frobnicate }} [/INST]{% endfor %}", "<s>", "</s>");
        Assert.Null(t.Jinja);
        Assert.Equal(ChatTemplate.Format.Mistral, t.Kind);
        Assert.Contains("unknown filter 'frobnicate'", t.FallbackReason);
        // Insists on an input Cria does not pass.
        var needsTools = ChatTemplate.FromJinja("{% if not tools %}{{ raise_exception('tools required') }}{% endif %}<|im_start|>", "", "");
        Assert.Null(needsTools.Jinja);
        Assert.Contains("tools required", needsTools.FallbackReason);
        Assert.Contains("plain user/assistant conversation", needsTools.Description);
    }

    [Fact]
    public void ATemplateThatRejectsTheConversationThrowsItsMessage()
    {
        var t = ChatTemplate.FromJinja(Cases.Value["Llama 2 chat (meta-llama/Llama-2-7b-chat-hf, -13b-chat-hf)"].Template, "<s>", "</s>");
        var e = Assert.Throws<TemplateException>(() => t.Render([new("user", "a"), new("user", "b")]));
        Assert.True(e.Raised);
        Assert.Equal("Conversation roles must alternate user/assistant/user/assistant/...", e.Problem);
        Assert.Equal(1, e.Line);
    }

    [Fact]
    public void FromGgufRendersTheFilesTemplateWithTheTokenizersSpecialTokens()
    {
        var c = Cases.Value["Llama 2 chat (meta-llama/Llama-2-7b-chat-hf, -13b-chat-hf)"];
        var path = LogitsAgreementTests.ModelFile("chat-template-llama2", new RandomModelSpec
        {
            Dim = 32, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 64, VocabSize = 300, ContextLength = 128, Seed = 3,
            ExtraMetadata = [("tokenizer.chat_template", c.Template)],
        });
        using var m = LlamaModel.Open(path);
        var t = ChatTemplate.FromGguf(m.File, m.Tokenizer);
        Assert.NotNull(t.Jinja);
        Assert.Equal(c.Template, t.Source);
        Assert.True(m.Tokenizer.AddBos);
        // <s> and </s> come from the vocabulary; the leading <s> is left to the tokenizer.
        Assert.Equal(c.Expected["<s>".Length..], t.Render(Conversation));

        using var plain = LlamaModel.Open(EngineTestsModel());
        var none = ChatTemplate.FromGguf(plain.File, plain.Tokenizer);
        Assert.Null(none.Jinja);
        Assert.Null(none.Source);
        Assert.Contains("no chat template", none.Description);
    }

    static string EngineTestsModel() => Cria.Tests.Serving.EngineTests.ModelPath();
}
