using System.Runtime.InteropServices;
using Cria.Formats;
using Cria.Inference;
using Cria.Tests.Oracle;
using Cria.Training;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Training;

/// <summary><c>cria train --init</c> (fine-tuning from a GGUF) and the synthetic pass-key documents.</summary>
public sealed class FineTuneTests(ITestOutputHelper output)
{
    /// <summary>--init with no steps: the imported weights are the file's bit for bit, an export writes the same tensor
    /// bytes, and the training forward gives the file's logits in Cria's inference.</summary>
    [Fact]
    public void Init_with_no_steps_reproduces_the_file()
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        Assert.Equal("vocab 4096, dim 256, layers 6, heads 8/2, ffn 768, ctx 256", im.Shape.ToString());
        var seqTokens = new int[128];
        using var tr = new Trainer(im.Shape, new TrainingOptions { BatchSize = 1, Threads = 2 }, Enumerable.Range(0, 4000).Select(i => 5 + i * 7 % 4000).ToArray(), 1, seqLen: 128);
        tr.SetParameters(im.Parameters);
        string again = TestPaths.TempFile("init-reexport.gguf");
        GgufExport.Write(again, tr.Model.Layout, tr.Model.Parameters, im.Vocabulary);
        using (var a = GgufFile.Open(TestPaths.Bundled()))
        using (var b = GgufFile.Open(again))
        {
            Assert.Equal(a.Tensors.Count, b.Tensors.Count);
            foreach (var t in a.Tensors)
            {
                var u = b.GetTensor(t.Name);
                Assert.Equal(t.Type, u.Type);
                Assert.True(a.TensorData(t).SequenceEqual(b.TensorData(u)), $"{t.Name} differs after import + export");
            }
        }
        // the training forward of the imported weights = the file's logits in inference
        var m = tr.Model;
        Trainer.FillSequence(m.Tokens, m.Targets, LlamaTokens(), 0, 1);
        m.Forward();
        var seq = m.Tokens.ToArray();
        using var cria = new CriaRunner(TestPaths.Bundled(), 128);
        var logits = cria.AllLogits(seq);
        double worst = 0;
        for (int p = 0; p < seq.Length; p++)
            for (int v = 0; v < im.Shape.VocabSize; v++) worst = Math.Max(worst, Math.Abs(logits[p][v] - m.LogitsRow(p)[v]));
        output.WriteLine($"max |Δ logit| between the imported training forward and inference of the file: {worst:E2}");
        Assert.True(worst < 1e-4, $"imported model's logits differ by {worst}");
        Assert.Throws<CriaException>(() => tr.SetParameters(new float[10]));
    }

    /// <summary>Position interpolation (LongLoRA's setting): weights trained with linear RoPE scaling ×4 are written
    /// with llama.rope.scaling = linear, factor 4; the engine reading that file gives the training forward's logits,
    /// and they differ from the unscaled model's. The file imports back with its scale.</summary>
    [Fact]
    public void Linear_rope_scaling_is_written_and_inference_applies_it()
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        var shape = im.Shape with { RopeScale = 4 };
        var tokens = LlamaTokens();
        using var tr = new Trainer(shape, new TrainingOptions { BatchSize = 1, Threads = 2 }, tokens, 1, seqLen: 256);
        tr.SetParameters(im.Parameters);
        string path = TestPaths.TempFile("rope-linear-4.gguf");
        GgufExport.Write(path, tr.Model.Layout, tr.Model.Parameters, im.Vocabulary);
        Assert.Equal(4f, GgufImport.Read(path).Shape.RopeScale);
        var m = tr.Model;
        Trainer.FillSequence(m.Tokens, m.Targets, tokens, 0, 1);
        m.Forward();
        var seq = m.Tokens.ToArray();
        using var cria = new CriaRunner(path, 256);
        var logits = cria.AllLogits(seq);
        double worst = 0, moved = 0;
        using var plain = new CriaRunner(TestPaths.Bundled(), 256);
        var unscaled = plain.AllLogits(seq);
        for (int p = 0; p < seq.Length; p++)
            for (int v = 0; v < shape.VocabSize; v++)
            {
                worst = Math.Max(worst, Math.Abs(logits[p][v] - m.LogitsRow(p)[v]));
                moved = Math.Max(moved, Math.Abs(logits[p][v] - unscaled[p][v]));
            }
        output.WriteLine($"max |Δ logit| training forward vs inference with linear ×4: {worst:E2}; vs the unscaled model {moved:E2}");
        Assert.True(worst < 1e-4, $"logits differ by {worst}");
        Assert.True(moved > 0.1, $"scaling moved the logits by only {moved}");
        Assert.Throws<CriaException>(() => (im.Shape with { RopeScale = 0.5f }).Validate());
    }

    static int[] LlamaTokens()
    {
        using var m = Cria.Models.LlamaModel.Open(TestPaths.Bundled());
        var text = "And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. ";
        var t = m.Tokenizer.Encode(string.Concat(Enumerable.Repeat(text, 8)), addBos: false);
        return t;
    }

    [Fact]
    public void Init_reads_F16_and_refuses_what_it_cannot_train()
    {
        Assert.Contains("does not exist", Assert.Throws<CriaException>(() => GgufImport.Read(TestPaths.TempFile("no-such.gguf"))).Message);
        var im = GgufImport.Read(TestPaths.Bundled("draft.gguf")); // tied embeddings: no output.weight
        Assert.True(im.Shape.TiedEmbeddings);
        var layout = new ParameterLayout(im.Shape);
        string f16Path = TestPaths.TempFile("draft-f16.gguf");
        GgufExport.Write(f16Path, layout, im.Parameters, im.Vocabulary, Cria.Tensors.GgmlType.F16);
        var f16 = GgufImport.Read(f16Path); // F16 matrices import as their float values
        Assert.Equal(im.Shape, f16.Shape);
        int wq = (int)layout.Blocks[0].Wq;
        Assert.Equal((float)(Half)im.Parameters[wq], f16.Parameters[wq]);
        // a vocabulary-only GGUF (what cria train writes as tokenizer.gguf) has no model in it
        string vocabOnly = TestPaths.TempFile("vocab-only.gguf");
        im.Vocabulary.Save(vocabOnly);
        Assert.Contains("model; the trainer trains llama models", Assert.Throws<CriaException>(() => GgufImport.Read(vocabOnly)).Message);
    }

    /// <summary>The documents are the probe's prompts: filler from the corpus, the needle, then the question, the key and
    /// a full stop; the key appears in the needle twice; at most the row's length; BOS left to the trainer.</summary>
    [Fact]
    public void Passkey_documents_have_the_probe_layout()
    {
        using var model = Cria.Models.LlamaModel.Open(TestPaths.Bundled());
        var tok = model.Tokenizer;
        string corpusText = string.Concat(Enumerable.Repeat("In the beginning God created the heaven and the earth. And the earth was without form, and void. ", 60));
        var corpus = tok.Encode(corpusText, addBos: false);
        var docs = new PasskeyDocuments(tok, corpus, 64);
        var rng = new TrainingRng(99);
        for (int i = 0; i < 50; i++)
        {
            var (d, answerStart, answerLength) = docs.Next(ref rng, 256);
            Assert.InRange(d.Length, 40, 256);
            Assert.NotEqual(tok.Bos, d[0]);
            string text = tok.Decode(d);
            var m = System.Text.RegularExpressions.Regex.Match(text, @"The pass key is (\d{5})\. Remember it\. \1 is the pass key\. .*What is the pass key\? The pass key is \1\.?$");
            Assert.True(m.Success, $"document {i}: {text}");
            Assert.Equal(m.Groups[1].Value + ".", tok.Decode(d.Skip(answerStart)).Trim());
            Assert.Equal(m.Groups[1].Value, tok.Decode(d.Skip(answerStart).Take(answerLength)).Trim());
            Assert.Equal(tok.Encode(" What is the pass key? The pass key is " + m.Groups[1].Value, false).Length
                - tok.Encode(" What is the pass key? The pass key is", false).Length, answerLength);
            // every token outside the needle, question and answer is a corpus token
            var own = new HashSet<int>(tok.Encode(m.Value, addBos: false).Concat(tok.Encode(" " + m.Value, addBos: false)));
            var seen = new HashSet<int>(corpus);
            int foreign = d.Count(t => !seen.Contains(t) && !own.Contains(t));
            Assert.True(foreign == 0, $"document {i} has {foreign} tokens from neither the corpus nor the needle/question");
        }
        // the same tokens as the probe's prompt for the same needle, filler and depth
        var (needle, question, answer) = PasskeyProbe.PasskeyText(12345);
        var (prompt, ans) = PasskeyProbe.Assemble(tok, needle, question, answer, 200, 0.5, j => corpus[j]);
        var n = tok.Encode(needle, addBos: false);
        Assert.Equal(200, prompt.Length + ans.Length);
        Assert.Equal(prompt[0], tok.Bos);
        int at = (int)Math.Round(0.5 * (200 - 1 - n.Length - tok.Encode(question, false).Length - ans.Length));
        Assert.Equal(corpus.Take(at), prompt.Skip(1).Take(at));
        Assert.Equal(n, prompt.Skip(1 + at).Take(n.Length));
        Assert.Equal(tok.Encode(question + answer, addBos: false), prompt.TakeLast(tok.Encode(question, false).Length).Concat(ans));
        Assert.Throws<CriaException>(() => new PasskeyDocuments(tok, corpus.Take(100).ToArray()));
    }

    /// <summary>Rows with a document: BOS, the document, then corpus text; targets shifted by one.</summary>
    [Fact]
    public void Document_rows_are_filled_and_null_documents_change_nothing()
    {
        var tokens = new int[8]; var targets = new int[8];
        int[] data = Enumerable.Range(100, 50).ToArray();
        Trainer.FillDocument(tokens, targets, [7, 8, 9], data, 10, 1);
        Assert.Equal(new[] { 1, 7, 8, 9, 110, 111, 112, 113 }, tokens);
        Assert.Equal(new[] { 7, 8, 9, 110, 111, 112, 113, 114 }, targets);
        Trainer.FillDocument(tokens, targets, Enumerable.Range(20, 12).ToArray(), data, 0, 1); // longer than the row: cut
        Assert.Equal(new[] { 1, 20, 21, 22, 23, 24, 25, 26 }, tokens);
        Assert.Equal(new[] { 20, 21, 22, 23, 24, 25, 26, 27 }, targets);

        // fraction 1: every row starts with a document; documents = null: the plain run's batches
        var shape = new LlamaShape { VocabSize = 64, Dim = 16, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 32, ContextLength = 16 };
        int[] corpus = Enumerable.Range(0, 500).Select(i => 3 + i % 60).ToArray();
        var opts = new TrainingOptions { BatchSize = 3, Steps = 4, WarmupSteps = 1, Threads = 1 };
        using var withDocs = new Trainer(shape, opts, corpus, 1) { Documents = (ref TrainingRng g, int max) => new SyntheticDocument([2, 2, 2], 1, 1), DocumentFraction = 1 };
        withDocs.TrainStep();
        for (int b = 0; b < 3; b++) Assert.Equal(new[] { 1, 2, 2, 2 }, withDocs.Model.Tokens.Slice(b * 16, 4).ToArray());
        using var a = new Trainer(shape, opts, corpus, 1);
        using var c = new Trainer(shape, opts, corpus, 1) { Documents = null, DocumentFraction = 0.5 };
        for (int i = 0; i < 3; i++) Assert.Equal(a.TrainStep().Loss, c.TrainStep().Loss);
    }
}
