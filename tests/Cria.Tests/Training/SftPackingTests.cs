using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>SFT packing: a document packed after another in one sequence (its own RoPE positions and attention
/// segment) gives the loss, per-token NLLs and parameter gradients it gives alone in a row of its own; the trainer's
/// packed rows hold whole examples back to back.</summary>
public class SftPackingTests
{
    static readonly LlamaShape Shape = new() { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 16 };

    static void Randomize(LlamaTrainingModel m)
    {
        var rng = new Random(23);
        foreach (var t in m.Layout.Tensors)
            for (long i = t.Offset; i < t.Offset + t.Count; i++)
                m.Parameters[i] = t.IsMatrix ? (float)((rng.NextDouble() * 2 - 1) * 0.5) : (float)(0.8 + 0.4 * rng.NextDouble());
    }

    /// <summary>Writes document [BOS, prompt, response] at row offset <paramref name="at"/> of sequence b, in a segment
    /// starting there when <paramref name="segment"/>; returns the rows it took.</summary>
    static int Place(LlamaTrainingModel m, int b, int at, int[] prompt, int[] response, bool segment)
    {
        int T = m.SeqLen, r0 = b * T + at, P = prompt.Length, R = response.Length;
        m.Tokens[r0] = 1;
        for (int i = 0; i < P; i++) { m.Tokens[r0 + 1 + i] = prompt[i]; m.Targets[r0 + i] = prompt[i]; }
        for (int i = 0; i < R; i++)
        {
            if (i < R - 1) m.Tokens[r0 + 1 + P + i] = response[i];
            m.Targets[r0 + P + i] = response[i];
            m.LossWeights[r0 + P + i] = 1f;
        }
        if (segment) m.SegmentStarts.Slice(r0, P + R).Fill(at);
        return P + R;
    }

    [Fact]
    public void A_packed_document_gives_what_it_gives_alone()
    {
        int[] p1 = [5, 6, 7], r1 = [8, 9, 10, 11], p2 = [12, 13], r2 = [14, 15, 16, 17, 18], p3 = [20], r3 = [21, 22];
        const int B = 2, T = 16;
        using var packed = new LlamaTrainingModel(Shape, B, T, 2);
        using var alone = new LlamaTrainingModel(Shape, B, T, 2);
        Randomize(packed); Randomize(alone);
        packed.LossWeights.Clear(); alone.LossWeights.Clear(); // (every row weighs 1 after construction)
        // packed: row 0 = [doc1 | doc2 | padding], row 1 = [doc3 | padding]; alone: row 0 = doc1, row 1 = doc2, and
        // doc3 is left out of the comparison's second half (its gradient is checked through a second alone run)
        int at = Place(packed, 0, 0, p1, r1, true);
        at += Place(packed, 0, at, p2, r2, true);
        packed.SegmentStarts.Slice(at, T - at).Fill(at);
        int at1 = Place(packed, 1, 0, p3, r3, true);
        packed.SegmentStarts.Slice(T + at1, T - at1).Fill(at1);
        Place(alone, 0, 0, p1, r1, false);
        Place(alone, 1, 0, p2, r2, false);
        using var third = new LlamaTrainingModel(Shape, B, T, 2);
        Randomize(third);
        third.LossWeights.Clear();
        Place(third, 0, 0, p3, r3, false);

        int w12 = r1.Length + r2.Length, w3 = r3.Length;
        // per-token NLLs of the responses, row for row
        packed.Forward(); alone.Forward(); third.Forward();
        for (int i = 0; i < r1.Length; i++) Assert.Equal(alone.TargetNll(p1.Length + i), packed.TargetNll(p1.Length + i), 1e-5f);
        int o2 = p1.Length + r1.Length;
        for (int i = 0; i < r2.Length; i++) Assert.Equal(alone.TargetNll(T + p2.Length + i), packed.TargetNll(o2 + p2.Length + i), 1e-5f);
        for (int i = 0; i < r3.Length; i++) Assert.Equal(third.TargetNll(p3.Length + i), packed.TargetNll(T + p3.Length + i), 1e-5f);
        // the gradients of the summed response loss: packed = alone (documents 1, 2) + third (document 3)
        packed.ZeroGradients(); alone.ZeroGradients(); third.ZeroGradients();
        float lp = packed.ForwardBackward(1f), la = alone.ForwardBackward(1f), l3 = third.ForwardBackward(1f); // mean losses
        Assert.Equal(la * w12 + l3 * w3, lp * (w12 + w3), 1e-3f);
        double worst = 0, scale = 0;
        for (int i = 0; i < packed.Gradients.Length; i++)
        {
            double want = alone.Gradients[i] + third.Gradients[i];
            worst = Math.Max(worst, Math.Abs(packed.Gradients[i] - want));
            scale = Math.Max(scale, Math.Abs(want));
        }
        Assert.True(worst < 1e-4 * scale, $"largest gradient difference {worst:E2} (largest gradient {scale:E2})");

        // without segments the second document attends to the first and sits at later positions: the NLLs differ
        packed.SegmentStarts.Clear();
        packed.Forward(); alone.Forward();
        Assert.NotEqual(alone.TargetNll(T + p2.Length), packed.TargetNll(o2 + p2.Length), 3);
    }

    [Fact]
    public void Packed_rows_hold_whole_examples_back_to_back()
    {
        var examples = new List<SftExample>();
        var rng = new Random(4);
        for (int i = 0; i < 40; i++)
            examples.Add(new SftExample(Enumerable.Range(0, 1 + rng.Next(4)).Select(_ => 3 + rng.Next(30)).ToArray(),
                Enumerable.Range(0, 1 + rng.Next(6)).Select(_ => 3 + rng.Next(30)).ToArray()));
        using var trainer = new Trainer(Shape, new TrainingOptions { BatchSize = 3, Steps = 1, Threads = 2 }, [], 1, seqLen: 16);
        var m = trainer.Model;
        SftExample? carry = null;
        int placed = trainer.FillPackedRows(() => examples[rng.Next(examples.Count)], ref carry);
        int T = m.SeqLen, weighted = 0, docs = 0;
        for (int b = 0; b < 3; b++)
        {
            int t = 0;
            while (t < T && m.SegmentStarts[b * T + t] == t && m.Tokens[b * T + t] == 1)
            {
                // one document: BOS at its start, every row of it in its segment; its weighted targets are a response
                int end = t + 1;
                while (end < T && m.SegmentStarts[b * T + end] == t) end++;
                var e = examples.FirstOrDefault(x => x.Prompt.Length + x.Response.Length == end - t
                    && m.Targets.Slice(b * T + t, end - t).SequenceEqual(x.Prompt.Concat(x.Response).ToArray()))
                    ?? throw new Xunit.Sdk.XunitException("a segment is no example");
                for (int j = t; j < end; j++) Assert.Equal(j >= t + e.Prompt.Length ? 1f : 0f, m.LossWeights[b * T + j]);
                weighted += e.Response.Length;
                docs++;
                t = end;
            }
            for (; t < T; t++) Assert.Equal(0f, m.LossWeights[b * T + t]); // padding after the last document
        }
        Assert.Equal(placed, weighted);
        Assert.True(docs > 3, $"{docs} examples in 3 rows");
        trainer.SftStep(examples, pack: true);
        Assert.True(m.SegmentStarts.ToArray().All(s => s == 0)); // cleared after the step
        // the held-out loss, packed, is the unpacked one: every example computed as alone
        double unpacked = trainer.SftLoss(examples), packed = trainer.SftLoss(examples, pack: true);
        Assert.True(Math.Abs(unpacked - packed) < 1e-5 * Math.Abs(unpacked), $"held-out loss {unpacked} unpacked, {packed} packed");
    }
}
