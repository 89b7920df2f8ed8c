using System.Text;
using Cria.Models;
using Cria.Serving;
using Cria.Tests.Oracle;
using LLama.Native;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Serving;

/// <summary>
/// GBNF grammars: the recogniser accepts exactly the sentences of a grammar and their prefixes, bad grammars are
/// refused with the reason and place, and on the bundled model's vocabulary the tokens Cria allows at every step are
/// the ones llama.cpp's grammar sampler allows.
/// </summary>
public sealed class GrammarTests(ITestOutputHelper output)
{
    /// <summary>Feeds <paramref name="text"/> byte by byte: "reject" if a byte is refused, else "complete" (nothing
    /// may follow), "end" (may end or go on) or "prefix".</summary>
    static string Judge(Grammar g, string text)
    {
        var s = g.Start();
        foreach (byte b in Encoding.UTF8.GetBytes(text))
            if (!s.Accept([b])) return "reject";
        return s.IsComplete ? "complete" : s.CanEnd ? "end" : "prefix";
    }

    [Theory]
    [InlineData("root ::= \"yes\" | \"no\"", "yes", "complete")]
    [InlineData("root ::= \"yes\" | \"no\"", "ye", "prefix")]
    [InlineData("root ::= \"yes\" | \"no\"", "yep", "reject")]
    [InlineData("root ::= \"yes\" | \"no\"", "", "prefix")]
    [InlineData("root ::= [0-9]{2,3}", "1", "prefix")]
    [InlineData("root ::= [0-9]{2,3}", "12", "end")]
    [InlineData("root ::= [0-9]{2,3}", "123", "complete")]
    [InlineData("root ::= [0-9]{2,3}", "1234", "reject")]
    [InlineData("root ::= [0-9]{2,3}", "1a", "reject")]
    [InlineData("root ::= (\"a\" | \"b\")* \"c\"", "ababc", "complete")]
    [InlineData("root ::= (\"a\" | \"b\")* \"c\"", "abab", "prefix")]
    [InlineData("root ::= (\"a\" | \"b\")* \"c\"", "abcc", "reject")]
    [InlineData("root ::= \"ab\"+", "ababab", "end")]
    [InlineData("root ::= \"ab\"+", "aba", "prefix")]
    [InlineData("root ::= \"ab\"+", "abb", "reject")]
    [InlineData("root ::= \"x\"? \"y\"", "y", "complete")]
    [InlineData("root ::= \"x\"? \"y\"", "xy", "complete")]
    [InlineData("root ::= \"x\"? \"y\"", "xx", "reject")]
    [InlineData("root ::= \"q\"{3,}", "qq", "prefix")]
    [InlineData("root ::= \"q\"{3,}", "qqqq", "end")]
    [InlineData("root ::= [α-ω]+ \"!\"", "αβγ!", "complete")]
    [InlineData("root ::= [α-ω]+ \"!\"", "αa", "reject")]
    [InlineData("root ::= [α-ω]+ \"!\"", "Ω", "reject")]          // U+03A9 is below α
    [InlineData("root ::= \"\\\"\" [^\"\\n]* \"\\\"\"", "\"hé llo\"", "complete")]
    [InlineData("root ::= \"\\\"\" [^\"\\n]* \"\\\"\"", "\"a\nb\"", "reject")]
    [InlineData("root ::= \"(\" root \")\" | \"\"", "(())", "complete")]
    [InlineData("root ::= \"(\" root \")\" | \"\"", "(()", "prefix")]
    [InlineData("root ::= \"(\" root \")\" | \"\"", "())", "reject")]
    [InlineData("root ::= . \"\\x41\\u00e9\"", "🦙Aé", "complete")]
    [InlineData("# a comment\nroot ::= item (\",\" item)*   # trailing comment\nitem ::=\n  \"a\" | \"bc\"\n", "a,bc,a", "end")]
    [InlineData("root ::= ( \"a\"\n  \"b\" )", "ab", "complete")]
    [InlineData("root ::= (\"a\")+ root-1\nroot-1 ::= \"b\"", "aab", "complete")] // a user rule with a helper-like name
    public void Sentences_and_prefixes(string grammar, string text, string expected) =>
        Assert.Equal(expected, Judge(Grammar.Parse(grammar), text));

    /// <summary>A token may end inside a character: its lead byte is kept only if some character the grammar allows
    /// there starts with it (llama.cpp's partial-character rule), so generation cannot walk into a dead end.</summary>
    [Fact]
    public void A_partial_character_is_judged_by_the_characters_it_could_become()
    {
        var g = Grammar.Parse("root ::= [a-z]+ | \"é\"");
        var s = g.Start();
        Assert.True(s.Accept([0xC3]));          // é is C3 A9
        Assert.False(g.Start().Accept([0xE2])); // no allowed character starts with E2 (U+2000…U+2FFF)
        Assert.True(s.Accept([0xA9]));
        Assert.True(s.IsComplete);
        Assert.False(g.Start().Accept([0xA9])); // a continuation byte cannot start a character

        // Sequences that are not UTF-8 are refused at the byte that makes them so, whatever the grammar allows.
        var any = Grammar.Parse("root ::= [^\"]*");
        Assert.True(any.Start().Accept([0xED, 0x9F, 0xBF]));   // U+D7FF
        Assert.False(any.Start().Accept([0xED, 0xA0]));        // a surrogate (U+D800…)
        Assert.False(any.Start().Accept([0xE0, 0x9F]));        // overlong
        Assert.False(any.Start().Accept([0xF0, 0x8F]));        // overlong
        Assert.False(any.Start().Accept([0xF4, 0x90]));        // above U+10FFFF
        Assert.True(any.Start().Accept([0xF4, 0x8F, 0xBF, 0xBF])); // U+10FFFF
        Assert.True(any.Start().Accept(Encoding.UTF8.GetBytes("é€🦙")));
    }

    [Theory]
    [InlineData("root ::= other", "undefined rule 'other' used at line 1, column 10")]
    [InlineData("start ::= \"a\"", "no rule named 'root'")]
    [InlineData("root ::= root \"a\" | \"a\"", "left recursion (root → root)")]
    [InlineData("root ::= expr\nexpr ::= term | expr \"+\" term\nterm ::= [0-9]", "left recursion (expr → expr)")]
    [InlineData("root ::= x? root \"a\"\nx ::= \"b\"", "left recursion")]
    [InlineData("root ::= \"abc", "unterminated literal at line 1, column 14")]
    [InlineData("root ::= [a-", "unterminated character class")]
    [InlineData("root ::= \"a\"{3,2}", "max < min")]
    [InlineData("root ::= \"a\"{100000}", "repetition count above")]
    [InlineData("root ::= \"a\" )", "unexpected ')'")]
    [InlineData("root := \"a\"", "expected '::='")]
    [InlineData("root ::= \"\\q\"", "unknown escape")]
    [InlineData("root ::= * \"a\"", "'*' must follow a symbol")]
    [InlineData("root ::= \"a\"\nroot ::= \"b\"", "defined twice")]
    public void Bad_grammars_are_refused_with_the_reason(string grammar, string message) =>
        Assert.Contains(message, Assert.Throws<GrammarException>(() => Grammar.Parse(grammar)).Message);

    /// <summary>Hostile grammars are refused before they can exhaust memory or the stack: deep parentheses, repetitions
    /// that expand past a million symbols, and a 100 000-rule chain that would nest the recogniser's expansion (checked
    /// with an explicit stack: the check itself must not overflow either).</summary>
    [Fact]
    public void Hostile_grammars_are_refused_without_crashing()
    {
        string deep = "root ::= " + new string('(', 300) + "\"a\"" + new string(')', 300);
        Assert.Contains("nested deeper than 256", Assert.Throws<GrammarException>(() => Grammar.Parse(deep)).Message);
        string big = "root ::= " + string.Join(" ", Enumerable.Repeat("\"a\"{10000}", 200));
        Assert.Contains("more than 1,000,000 symbols", Assert.Throws<GrammarException>(() => Grammar.Parse(big)).Message);
        var chain = new StringBuilder("root ::= r0\n");
        for (int i = 0; i < 100_000; i++) chain.Append($"r{i} ::= r{i + 1} \"x\"\n");
        chain.Append("r100000 ::= \"y\"\n");
        Assert.Contains("nests", Assert.Throws<GrammarException>(() => Grammar.Parse(chain.ToString())).Message);
        var empties = new StringBuilder("root ::= e0 \"z\"\n"); // a chain of rules that can all be empty
        for (int i = 0; i < 100_000; i++) empties.Append($"e{i} ::= e{i + 1}\n");
        empties.Append("e100000 ::= \"\"\n");
        Assert.Contains("nests", Assert.Throws<GrammarException>(() => Grammar.Parse(empties.ToString())).Message);
        Assert.Equal("complete", Judge(Grammar.Parse("root ::= a b \"z\"\na ::= b | \"\"\nb ::= \"\" | \"y\""), "z")); // empty through two levels
        // A repetition of 10 000 makes 10 000 helper rules, and a schema's maxLength does too.
        Assert.Equal("end", Judge(JsonSchemaGrammar.Compile(System.Text.Json.JsonDocument.Parse("""{"type":"string","maxLength":10000}""").RootElement), "\"ab\""));
        // Within the limits: 900 nested references, 250 parentheses.
        var ok = new StringBuilder("root ::= r0\n");
        for (int i = 0; i < 900; i++) ok.Append($"r{i} ::= r{i + 1} \"x\"\n");
        ok.Append("r900 ::= \"y\"\n");
        Assert.Equal("complete", Judge(Grammar.Parse(ok.ToString()), "y" + new string('x', 900)));
        Assert.Equal("complete", Judge(Grammar.Parse("root ::= " + new string('(', 250) + "\"a\"" + new string(')', 250)), "a"));
    }

    static readonly string[] Grammars =
    [
        "root ::= (\"yes\" | \"no\" | \"maybe\") \".\"",
        "root ::= \"The \" [a-z]+ (\" \" [a-z]+){0,6} \".\"",
        "root ::= item (\", \" item)*\nitem ::= [0-9]+ | \"the \" [a-z]+",
        "root ::= \"{\" ws \"\\\"a\\\"\" ws \":\" ws [0-9]{1,4} ws \"}\"\nws ::= [ \\t\\n]*",
        "root ::= [^<>]{0,40}",
        "root ::= \"«\" [à-ÿ一-龥]{1,8} \"» ok\"",
    ];

    /// <summary>Every grammar on three vocabularies: the bundled model's (4 096 SPM tokens trained by Cria) and the real
    /// Llama 2 (32 000, SPM with byte fallback) and Llama 3 (128 256, byte-level BPE) vocabularies.</summary>
    public static TheoryData<string, int> OracleGrammars()
    {
        var data = new TheoryData<string, int>();
        foreach (var vocab in new[] { "bundled", "llama2", "llama3" })
            for (int g = 0; g < Grammars.Length; g++) data.Add(vocab, g);
        return data;
    }

    /// <summary>
    /// llama.cpp as the oracle: on the bundled model's vocabulary, at each of 40 steps the set of tokens Cria's
    /// constraint allows (the trie walk) is the set llama.cpp's grammar sampler leaves finite, end-of-generation
    /// included; then both accept the same token, drawn from that set. Control tokens other than end-of-generation
    /// are left out of the comparison (llama.cpp matches their rendered text, "&lt;s&gt;", against the grammar; Cria
    /// never emits them as text), and so are byte tokens that no UTF-8 text contains (C0, C1, F5–FF): llama.cpp's
    /// decoder takes them as lead bytes, so a negated class lets them through; Cria always masks them.
    /// </summary>
    [Theory]
    [MemberData(nameof(OracleGrammars))]
    public void Allowed_tokens_agree_with_llama_cpp(string vocabulary, int grammar)
    {
        string gbnf = Grammars[grammar];
        string path = vocabulary == "bundled" ? TestPaths.Bundled() : Oracle.ModelFamilyTests.FamilyModel(vocabulary);
        using var m = LlamaModel.Open(path);
        var tok = m.Tokenizer;
        using var ll = new LlamaCpp(path, 64);
        using var chain = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        chain.AddGrammar(ll.Weights.NativeHandle.Vocab, gbnf, "root");
        var tries = new TokenTries(tok);
        var cria = new GrammarConstraint(tries, Grammar.Parse(gbnf).Start());
        int V = tok.VocabSize;
        var zero = new float[V];
        var masked = new float[V];
        var rng = new Random(gbnf.Length);
        var text = new StringBuilder();
        int compared = 0, allowedTotal = 0;
        for (int step = 0; step < 40; step++)
        {
            bool any = cria.Mask(zero, masked, lstrip: 0);
            var arr = LLamaTokenDataArray.Create(zero);
            using (LLamaTokenDataArrayNative.Create(arr, out var native)) chain.Apply(ref native);
            var theirs = new bool[V];
            foreach (var d in arr.Data.Span) theirs[(int)d.ID] = !float.IsNegativeInfinity(d.Logit);
            var allowed = new List<int>();
            for (int v = 0; v < V; v++)
            {
                if (tok.IsControl(v) && !tok.IsEog(v)) continue;
                if (tok.TokenBytes(v).Any(b => b is 0xC0 or 0xC1 or >= 0xF5))
                {
                    Assert.True(float.IsNegativeInfinity(masked[v])); // bytes no UTF-8 text contains: Cria never allows them
                    continue;
                }
                bool ours = !float.IsNegativeInfinity(masked[v]);
                Assert.True(ours == theirs[v], $"step {step} after \"{text}\": token {v} ({Encoding.UTF8.GetString(tok.TokenBytes(v))}) Cria {(ours ? "allows" : "masks")} it, llama.cpp does not");
                if (ours) allowed.Add(v);
                compared++;
            }
            Assert.Equal(any, allowed.Count > 0);
            allowedTotal += allowed.Count;
            if (allowed.Count == 0 || allowed.All(tok.IsEog)) break;
            int pick = allowed.Where(v => !tok.IsEog(v)).ElementAt(rng.Next(allowed.Count(v => !tok.IsEog(v))));
            chain.Accept((LLamaToken)pick);
            cria.Accept(pick, lstrip: 0);
            text.Append(Encoding.UTF8.GetString(tok.TokenBytes(pick)));
        }
        output.WriteLine($"{vocabulary} ({V:N0}), {gbnf.Split('\n')[0]}: \"{text}\"; {compared:N0} token decisions compared, {allowedTotal:N0} allowed");
        Assert.True(text.Length > 0);
    }

    /// <summary><c>cria generate --grammar</c>: the Generator samples among the tokens the grammar allows, stops when
    /// nothing may follow, and refuses a drafter.</summary>
    [Fact]
    public void The_generator_follows_a_grammar()
    {
        using var m = LlamaModel.Open(TestPaths.Bundled());
        using var c = new Cria.Inference.InferenceContext(m, new Cria.Inference.ContextOptions { ContextSize = 128, Threads = 2 });
        var gen = new Cria.Inference.Generator(c, m.Tokenizer);
        var g = Grammar.Parse("root ::= \" unto \" [A-Z] [a-z]{2,12} \", \" (\"yea\" | \"nay\") \".\"");
        for (ulong seed = 1; seed <= 3; seed++)
        {
            string text = string.Concat(gen.Generate("And the king said", new Cria.Inference.GenerationOptions
            {
                MaxTokens = 60, Grammar = g, Sampler = new Cria.Inference.SamplerOptions { Temperature = 1, Seed = seed },
            }));
            output.WriteLine(text);
            Assert.Matches("^ unto [A-Z][a-z]{2,12}, (yea|nay)\\.$", text);
            Assert.Equal("grammar", gen.LastStats!.StopReason);
        }
        gen.Drafter = new Cria.Inference.PromptLookupDrafter(Cria.Inference.SpeculativeOptions.Lookup);
        Assert.Throws<CriaException>(() => gen.Generate("x", new Cria.Inference.GenerationOptions { Grammar = g }).ToList());
    }
}
