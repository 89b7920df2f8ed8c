using Cria.Inference;
using Cria.Models;
using Cria.Tests.Tokenization;
using Cria.Tokenization;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary>
/// Supervised fine-tuning (<c>cria train --sft</c>): the response loss equals the engine's negative log-likelihood of
/// the response tokens after BOS + prompt; training learns a response and not the prompt; a conversation splits at the
/// chat template's generation prompt; the JSONL formats and their refusals.
/// </summary>
public sealed class SftTests(ITestOutputHelper output)
{
    [Fact]
    public void The_response_loss_is_the_engines_nll_of_the_response_tokens()
    {
        var imported = GgufImport.Read(TestPaths.Bundled());
        var tok = imported.Vocabulary.CreateTokenizer();
        SftExample Ex(string p, string r) => new(tok.Encode(p, addBos: false), tok.Encode(r, addBos: false));
        var examples = new[]
        {
            Ex("In the beginning God created", " the heaven and the earth."),
            Ex("And God said, Let there be", " light: and there was light."),
            Ex("The LORD is my shepherd;", " I shall not want."),
        };
        using var trainer = new Trainer(imported.Shape, new TrainingOptions { BatchSize = 2, Steps = 1, Threads = 2 }, [], tok.Bos, seqLen: 32,
            lora: new LoraOptions { Rank = 4, Alpha = 8f }); // B starts at zero: the base model's outputs
        trainer.SetParameters(imported.Parameters);
        double loss = trainer.SftLoss(examples);

        using var model = LlamaModel.Open(TestPaths.Bundled());
        using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 64, Threads = 2 });
        double nll = 0; int n = 0;
        foreach (var e in examples)
        {
            int[] seq = [tok.Bos, .. e.Prompt, .. e.Response];
            ctx.Cache.Clear();
            var b = new Batch(seq.Length);
            for (int i = 0; i < seq.Length; i++) b.Add(seq[i], i, 0, true);
            ctx.Decode(b);
            for (int i = 1 + e.Prompt.Length; i < seq.Length; i++)
            {
                var z = ctx.Logits(i - 1);
                nll += Cria.Kernels.Ops.LogSumExp(z) - z[seq[i]]; n++;
            }
        }
        output.WriteLine($"SFT loss {loss:F6}, engine {nll / n:F6} over {n} response tokens");
        Assert.True(Math.Abs(loss - nll / n) < 1e-4, $"{loss} vs {nll / n}");
    }

    [Fact]
    public void A_response_is_learned_and_its_prompt_is_not()
    {
        // Every prompt is a random KJV half-verse, every response " Amen.": after 30 LoRA steps the response loss on
        // held-out prompts falls below a tenth of where it started. The prompts themselves, read as a language model
        // (their own loss, with nothing before them), must not become easier: they carry no loss.
        var imported = GgufImport.Read(TestPaths.Bundled());
        var tok = imported.Vocabulary.CreateTokenizer();
        var verses = File.ReadLines(Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Texts", "kjv-train.txt"))
            .Where(l => l.Split(' ').Length >= 8).Take(80).ToList();
        var amen = tok.Encode(" Amen.", addBos: false);
        var examples = verses.Select(v => new SftExample(tok.Encode(string.Join(' ', v.Split(' ').Take(6)), addBos: false), amen)).ToList();
        var train = examples.Take(60).ToList(); var held = examples.Skip(60).ToList();
        // The prompts as responses of an empty prompt: their language-model loss after BOS.
        var promptsAsText = held.Select(e => new SftExample([], e.Prompt)).ToList();
        using var trainer = new Trainer(imported.Shape, new TrainingOptions { BatchSize = 8, Steps = 30, LearningRate = 3e-3f, WarmupSteps = 3, WeightDecay = 0, Threads = 2, Seed = 2 },
            [], tok.Bos, seqLen: 24, lora: new LoraOptions { Rank = 4, Alpha = 8f });
        trainer.SetParameters(imported.Parameters);
        double before = trainer.SftLoss(held), promptBefore = trainer.SftLoss(promptsAsText);
        while (trainer.Step < 30) trainer.SftStep(train);
        double after = trainer.SftLoss(held), promptAfter = trainer.SftLoss(promptsAsText);
        output.WriteLine($"response loss {before:F3} → {after:F3}; the prompts' own loss {promptBefore:F3} → {promptAfter:F3}");
        Assert.True(after < before / 10, $"response loss {before} → {after}");
        Assert.True(promptAfter > promptBefore - 0.05, $"the prompts' loss fell {promptBefore} → {promptAfter}: prompts were learned");
    }

    [Fact]
    public void A_conversation_splits_at_the_generation_prompt_and_files_are_read_or_refused()
    {
        var chatml = ChatTemplate.FromJinja(ChatTemplateTests.Cases.Value["ChatML (teknium/OpenHermes-2.5-Mistral-7B)"].Template, "", "");
        using var model = LlamaModel.Open(TestPaths.Bundled());
        var tok = model.Tokenizer;
        var e = SftExample.FromConversation(chatml, tok, [new ChatTurn("system", "Be brief."), new ChatTurn("user", "Who built the ark?"), new ChatTurn("assistant", "Noah.")]);
        Assert.Equal(tok.Encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWho built the ark?<|im_end|>\n<|im_start|>assistant\n", addBos: false, parseSpecial: true), e.Prompt);
        Assert.Equal(tok.Encode("Noah.<|im_end|>\n", addBos: false, parseSpecial: true), e.Response);
        Assert.Throws<CriaException>(() => SftExample.FromConversation(chatml, tok, [new ChatTurn("user", "Hi")]));
        Assert.Throws<CriaException>(() => SftExample.FromConversation(chatml, tok, [new ChatTurn("assistant", "Hi"), new ChatTurn("user", "Hi")]));

        string F(string name, params string[] lines) { var p = TestPaths.TempFile(name); File.WriteAllLines(p, lines); return p; }
        var list = SftExample.ReadJsonl(F("sft-ok.jsonl",
            """{"prompt": "In the beginning", "completion": " God created"}""",
            "",
            """{"prompt": "And God", "response": " said"}""",
            """{"messages": [{"role": "user", "content": "Who built the ark?"}, {"role": "assistant", "content": "Noah."}]}""",
            """{"instruction": "Who built the ark?", "response": "Noah."}"""), tok, chatml);
        Assert.Equal(4, list.Count);
        Assert.Equal(tok.Encode(" God created", addBos: false), list[0].Response);
        Assert.Equal(list[2].Prompt, list[3].Prompt);
        Assert.Equal(list[2].Response, list[3].Response);
        void Refused(string why, string line, ChatTemplate? t = null) =>
            Assert.Contains(why, Assert.Throws<CriaException>(() => SftExample.ReadJsonl(F("sft-bad.jsonl", line), tok, t ?? chatml)).Message);
        Refused("not JSON", "{nope");
        Refused("needs a \"completion\"", """{"prompt": "x"}""");
        Refused("an empty completion", """{"prompt": "x", "completion": ""}""");
        Refused("expected \"prompt\"", """{"text": "x"}""");
        Refused("\"role\" and \"content\"", """{"messages": [{"role": "user"}]}""");
        Refused("last from the assistant", """{"messages": [{"role": "user", "content": "x"}]}""");
        Assert.Contains("has none", Assert.Throws<CriaException>(() => SftExample.ReadJsonl(F("sft-chat.jsonl", """{"instruction": "x", "response": "y"}"""), tok, null)).Message);
        Assert.Contains("no examples", Assert.Throws<CriaException>(() => SftExample.ReadJsonl(F("sft-empty.jsonl", ""), tok, null)).Message);
    }
}
