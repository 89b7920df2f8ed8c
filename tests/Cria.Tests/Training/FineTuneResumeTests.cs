using Cria.Models;
using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>
/// train --pairs and --sft with --resume: a run interrupted after a checkpoint and resumed (a new trainer from --init,
/// DPO's reference log-probabilities computed from --init, then the checkpoint loaded) takes exactly the steps of the
/// run that was never interrupted — the same losses and the same adapter, bit for bit. With LoRA dropout too: the masks
/// are drawn from the seed, the step and the micro-batch, so the resumed run draws the ones the uninterrupted run did.
/// </summary>
public sealed class FineTuneResumeTests
{
    [Theory]
    [InlineData("dpo", 0f)]
    [InlineData("sft", 0f)]
    [InlineData("dpo", 0.2f)]
    public void A_resumed_run_takes_the_uninterrupted_runs_steps(string kind, float dropout)
    {
        var im = GgufImport.Read(TestPaths.Bundled());
        using var lm = LlamaModel.Open(TestPaths.Bundled());
        int[] E(string s) => lm.Tokenizer.Encode(s, addBos: false);
        string[] subjects = ["the king", "the people", "the priest", "the prophet", "the servant", "the woman"];
        var pairs = subjects.Select(s => new PreferencePair(E($"And {s}"), E(" went up to pray."), E(" went down to sleep."))).ToList();
        var examples = subjects.Select(s => new SftExample(E($"And {s}"), E(" went up into the mountain to pray."))).ToList();
        var opts = new TrainingOptions { BatchSize = 4, Steps = 6, WarmupSteps = 1, LearningRate = 2e-3f, WeightDecay = 0.01f, Threads = 2, Seed = 5 };
        var o = PreferenceOptions.Default(PreferenceLoss.Dpo);
        ulong hash = im.Vocabulary.Hash();
        string ckpt = TestPaths.TempFile($"resume-{kind}-{dropout}.bin");

        Trainer Start(out double[]? reference, float p = -1)
        {
            var t = new Trainer(im.Shape, opts, [], lm.Tokenizer.Bos, seqLen: 16, lora: new LoraOptions { Rank = 4, Alpha = 8, Dropout = p >= 0 ? p : dropout });
            t.SetParameters(im.Parameters);
            reference = kind == "dpo" ? t.SequenceLogProbs(pairs) : null;
            return t;
        }
        float Step(Trainer t, double[]? reference)
        {
            float loss = kind == "dpo" ? t.PreferenceStep(pairs, reference, o).Loss : t.SftStep(examples).Loss;
            Assert.Null(t.Model.LoraDropoutKey); // between steps nothing drops
            return loss;
        }

        float[] straight, straightAdapter;
        using (var t = Start(out var reference))
        {
            straight = Enumerable.Range(0, 6).Select(_ => Step(t, reference)).ToArray();
            straightAdapter = t.Model.LoraParameters.ToArray();
        }
        var resumed = new List<float>();
        using (var t = Start(out var reference))
        {
            for (int i = 0; i < 3; i++) resumed.Add(Step(t, reference));
            t.SaveCheckpoint(ckpt, hash);
            for (int i = 0; i < 2; i++) Step(t, reference);       // the interrupted run went on, and its work is lost
        }
        using (var t = Start(out var reference))
        {
            t.LoadCheckpoint(ckpt, hash);
            Assert.Equal(3, t.Step);
            while (t.Step < opts.Steps) resumed.Add(Step(t, reference));
            Assert.Equal(straight, resumed);
            Assert.Equal(straightAdapter, t.Model.LoraParameters);
        }
        Assert.True(straight[^1] != straight[0], "the run should train");
        if (dropout > 0)
            using (var t = Start(out var reference, p: 0))
            {
                var plain = Enumerable.Range(0, 6).Select(_ => Step(t, reference)).ToArray();
                Assert.Equal(plain[0], straight[0]); // B starts at zero: the first step's loss is the base model's either way
                Assert.NotEqual(plain[1..], straight[1..]);
            }
        Assert.Throws<CriaException>(() => { using var t = Start(out _); t.LoadCheckpoint(ckpt, hash + 1); });
        File.Delete(ckpt);
    }
}
