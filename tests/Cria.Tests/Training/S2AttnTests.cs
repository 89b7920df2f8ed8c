using Cria.Training;
using Xunit;

namespace Cria.Tests.Training;

/// <summary>LongLoRA's S2-Attn in the training model: the groups it sets, full attention at one group, and a loss that
/// differs from full attention with smaller groups (the kernels are checked against central differences in
/// <see cref="GradientCheckTests.ShiftedSparseAttention"/>).</summary>
public class S2AttnTests
{
    [Fact]
    public void Groups_are_set_and_one_group_is_full_attention()
    {
        var shape = new LlamaShape { VocabSize = 40, Dim = 16, Layers = 2, Heads = 4, KvHeads = 2, FfnDim = 24, ContextLength = 16 };
        const int B = 2, T = 16;
        float Loss(int group)
        {
            using var m = new LlamaTrainingModel(shape, B, T, 2);
            var rng = new TrainingRng(3);
            m.Initialize(ref rng);
            var r = new Random(5);
            for (int i = 0; i < B * T; i++) { m.Tokens[i] = r.Next(40); m.Targets[i] = r.Next(40); }
            m.S2Group = group;
            if (group == 8)
            {
                Assert.Equal([0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8, 8, 8, 8], m.S2GroupStarts(false).ToArray()); // the lower heads' groups
                Assert.Equal([0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4, 12, 12, 12, 12], m.S2GroupStarts(true).ToArray()); // the upper heads', shifted
            }
            m.ZeroGradients();
            return m.ForwardBackward(1f / (B * T));
        }
        float full = Loss(0);
        Assert.Equal(full, Loss(T));
        Assert.NotEqual(full, Loss(8), 4);
        Assert.NotEqual(full, Loss(4), 4);
        using var bad = new LlamaTrainingModel(shape, B, T, 2);
        Assert.Throws<CriaException>(() => bad.S2Group = 5);
        Assert.Throws<CriaException>(() => bad.S2Group = 32);
    }
}
