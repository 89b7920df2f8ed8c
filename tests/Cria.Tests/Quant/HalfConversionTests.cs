using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

public class HalfConversionTests
{
    private static float F(uint bits) => BitConverter.UInt32BitsToSingle(bits);

    [Theory]
    [InlineData(0x3F800000u, (ushort)0x3C00)] // 1
    [InlineData(0xC0000000u, (ushort)0xC000)] // -2
    [InlineData(0x477FE000u, (ushort)0x7BFF)] // 65504, largest half
    [InlineData(0x477FF000u, (ushort)0x7C00)] // 65520: tie between 65504 and 65536 -> even -> inf
    [InlineData(0x477FEFFFu, (ushort)0x7BFF)] // just below the tie
    [InlineData(0x7F800000u, (ushort)0x7C00)] // +inf
    [InlineData(0xFF800000u, (ushort)0xFC00)] // -inf
    [InlineData(0x7F800001u, (ushort)0x7E00)] // NaN -> canonical quiet NaN
    [InlineData(0xFFC12345u, (ushort)0xFE00)] // negative NaN keeps its sign
    [InlineData(0x33800000u, (ushort)0x0001)] // 2^-24, smallest subnormal
    [InlineData(0x33000000u, (ushort)0x0000)] // 2^-25: tie between 0 and 2^-24 -> even (0)
    [InlineData(0x33C00000u, (ushort)0x0002)] // 1.5 * 2^-24: tie -> even (2)
    [InlineData(0x3F801000u, (ushort)0x3C00)] // 1 + 2^-11: tie -> even (1)
    [InlineData(0x3F803000u, (ushort)0x3C02)] // 1 + 3*2^-11: tie -> even (1 + 2^-9)
    [InlineData(0x80000000u, (ushort)0x8000)] // -0
    public void Fp16_FromSingle_edge_cases(uint floatBits, ushort expected)
        => Assert.Equal(expected, Fp16.FromSingle(F(floatBits)));

    [Fact]
    public void Fp16_ToSingle_matches_System_Half_for_every_pattern()
    {
        for (int h = 0; h < 65536; h++)
        {
            float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
            float got = Fp16.ToSingle((ushort)h);
            if (float.IsNaN(expected)) Assert.True(float.IsNaN(got), $"0x{h:X4}");
            else Assert.Equal(BitConverter.SingleToUInt32Bits(expected), BitConverter.SingleToUInt32Bits(got));
        }
    }

    [Fact]
    public void Fp16_FromSingle_matches_System_Half_rounding()
    {
        var rng = new Random(1);
        for (int i = 0; i < 200_000; i++)
        {
            // random bit patterns across the whole exponent range (skip NaN, whose payload System.Half keeps)
            float f = F((uint)rng.NextInt64(0, 1L << 32));
            if (float.IsNaN(f)) continue;
            Assert.Equal(BitConverter.HalfToUInt16Bits((Half)f), Fp16.FromSingle(f));
        }
    }

    [Theory]
    [InlineData(0x3F800000u, (ushort)0x3F80)] // 1
    [InlineData(0x3F808000u, (ushort)0x3F80)] // tie, even lsb -> down
    [InlineData(0x3F818000u, (ushort)0x3F82)] // tie, odd lsb -> up
    [InlineData(0x3F808001u, (ushort)0x3F81)] // above the tie -> up
    [InlineData(0x3F807FFFu, (ushort)0x3F80)] // below the tie -> down
    [InlineData(0x7F800000u, (ushort)0x7F80)] // +inf
    [InlineData(0xFF800000u, (ushort)0xFF80)] // -inf
    [InlineData(0x7F7FFFFFu, (ushort)0x7F80)] // float max rounds up to inf
    [InlineData(0x7F800001u, (ushort)0x7FC0)] // signalling NaN with low payload -> forced quiet
    [InlineData(0xFFA00000u, (ushort)0xFFE0)] // negative NaN: top bits kept, quiet bit set
    [InlineData(0x00018000u, (ushort)0x0002)] // subnormal, tie with odd lsb -> up (not flushed)
    [InlineData(0x00008000u, (ushort)0x0000)] // subnormal tie with even lsb -> down
    public void Bf16_FromSingle_edge_cases(uint floatBits, ushort expected)
        => Assert.Equal(expected, Bf16.FromSingle(F(floatBits)));

    [Fact]
    public void Bf16_ToSingle_is_a_shift()
    {
        Assert.Equal(1f, Bf16.ToSingle(0x3F80));
        Assert.Equal(-5f, Bf16.ToSingle(0xC0A0));
        Assert.True(float.IsNaN(Bf16.ToSingle(0x7FC0)));
        Assert.Equal(float.NegativeInfinity, Bf16.ToSingle(0xFF80));
        Assert.Equal(0x12340000u, BitConverter.SingleToUInt32Bits(Bf16.ToSingle(0x1234)));
    }
}
