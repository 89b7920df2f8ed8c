using System.Buffers.Binary;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Quant;

/// <summary>Hand-built blocks decoded to values worked out by hand from the ggml-common.h layouts.</summary>
public class KnownAnswerTests
{
    private static float[] Decode(GgmlType t, byte[] block)
    {
        var y = new float[GgmlTypeInfo.BlockSize(t)];
        Dequantize.Row(t, block, y);
        return y;
    }

    private static void H(byte[] b, int off, ushort h) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(off), h);

    [Fact]
    public void Plain_types()
    {
        var f32 = new byte[8];
        BinaryPrimitives.WriteSingleLittleEndian(f32, 1.5f);
        BinaryPrimitives.WriteSingleLittleEndian(f32.AsSpan(4), -0.25f);
        var y = new float[2];
        Dequantize.Row(GgmlType.F32, f32, y);
        Assert.Equal([1.5f, -0.25f], y);

        var y4 = new float[4];
        Dequantize.Row(GgmlType.F16, QuantTestUtil.F16Bytes(0x3C00, 0xC000, 0x3555, 0x0001), y4);
        Assert.Equal([1f, -2f, 0.333251953125f, MathF.Pow(2, -24)], y4);

        Dequantize.Row(GgmlType.BF16, QuantTestUtil.F16Bytes(0x3F80, 0xC0A0, 0x3E80, 0x0000), y4);
        Assert.Equal([1f, -5f, 0.25f, 0f], y4);
    }

    [Fact]
    public void Q4_0()
    {
        var b = new byte[18];
        H(b, 0, 0x3800); // d = 0.5
        for (int j = 0; j < 16; j++) b[2 + j] = 0x88; // q = 8 -> 0
        b[2] = 0x1F;     // element 0: q 15 -> 3.5 ; element 16: q 1 -> -3.5
        b[3] = 0x80;     // element 1: q 0 -> -4
        var e = new float[32];
        e[0] = 3.5f; e[16] = -3.5f; e[1] = -4f;
        Assert.Equal(e, Decode(GgmlType.Q4_0, b));
    }

    [Fact]
    public void Q4_1()
    {
        var b = new byte[20];
        H(b, 0, 0x3C00); H(b, 2, 0xBC00); // d 1, m -1
        for (int j = 0; j < 16; j++) b[4 + j] = 0x21; // low 1 -> 0, high 2 -> 1
        b[4 + 5] = 0xF0; // element 5: 0 -> -1 ; element 21: 15 -> 14
        var e = new float[32];
        for (int j = 0; j < 16; j++) { e[j] = 0; e[16 + j] = 1; }
        e[5] = -1; e[21] = 14;
        Assert.Equal(e, Decode(GgmlType.Q4_1, b));
    }

    [Fact]
    public void Q5_0()
    {
        var b = new byte[22];
        H(b, 0, 0x3C00); // d 1
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(2), (1u << 0) | (1u << 17)); // high bit of elements 0 and 17
        b[6 + 0] = 0x3F; // element 0: 15|16 = 31 -> 15 ; element 16: 3 -> -13
        b[6 + 1] = 0x20; // element 1: 0 -> -16 ; element 17: 2|16 = 18 -> 2
        var e = new float[32];
        for (int j = 0; j < 32; j++) e[j] = -16;
        e[0] = 15; e[16] = -13; e[1] = -16; e[17] = 2;
        Assert.Equal(e, Decode(GgmlType.Q5_0, b));
    }

    [Fact]
    public void Q5_1()
    {
        var b = new byte[24];
        H(b, 0, 0x4000); H(b, 2, 0x3800); // d 2, m 0.5
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), 1u << 31); // element 31 gets +16
        b[8 + 15] = 0x71; // element 15: 1 -> 2.5 ; element 31: 7|16 = 23 -> 46.5
        var e = new float[32];
        for (int j = 0; j < 32; j++) e[j] = 0.5f;
        e[15] = 2.5f; e[31] = 46.5f;
        Assert.Equal(e, Decode(GgmlType.Q5_1, b));
    }

    [Fact]
    public void Q8_0_and_Q8_1_and_Q8_K()
    {
        var b = new byte[34];
        H(b, 0, 0x3400); // d 0.25
        b[2] = 0x80; b[3] = 0x7F; b[33] = 0xFF; // -128, 127, -1
        var e = new float[32];
        e[0] = -32; e[1] = 31.75f; e[31] = -0.25f;
        Assert.Equal(e, Decode(GgmlType.Q8_0, b));

        var c = new byte[36];
        H(c, 0, 0x3400); H(c, 2, 0x7BFF); // s is ignored when decoding
        c[4] = 0x80; c[5] = 0x7F; c[35] = 0xFF;
        Assert.Equal(e, Decode(GgmlType.Q8_1, c));

        var k = new byte[292];
        BinaryPrimitives.WriteSingleLittleEndian(k, 0.25f);
        k[4] = 0xFC; k[4 + 255] = 127; // -4 -> -1 ; 127 -> 31.75
        var ek = new float[256];
        ek[0] = -1; ek[255] = 31.75f;
        Assert.Equal(ek, Decode(GgmlType.Q8_K, k));
    }

    [Fact]
    public void Q2_K()
    {
        var b = new byte[84];
        H(b, 80, 0x3C00); H(b, 82, 0x3800); // d 1, dmin 0.5
        b[0] = 0x21; // sub-block 0 (elements 0-15): scale 1, min 2 -> q - 1
        b[2] = 0x01; // sub-block 2 (32-47): scale 1, min 0 -> q
        b[4] = 0x02; // sub-block 4 (64-79): scale 2 -> 2q
        b[6] = 0x13; // sub-block 6 (96-111): scale 3, min 1 -> 3q - 0.5
        b[16] = 0xE4; // qs[0]: bit pairs 0,1,2,3 -> elements 0, 32, 64, 96
        var e = new float[256];
        for (int i = 0; i < 16; i++) e[i] = -1;
        for (int i = 96; i < 112; i++) e[i] = -0.5f;
        e[0] = -1; e[32] = 1; e[64] = 4; e[96] = 8.5f;
        Assert.Equal(e, Decode(GgmlType.Q2_K, b));
    }

    [Fact]
    public void Q3_K()
    {
        var b = new byte[110];
        H(b, 108, 0x3C00); // d 1
        // 6-bit scales stored +32: sub-block 0 -> 34 (=+2), all others 32 (=0).
        // low nibbles in scales[0..7] (and high nibbles for j >= 8), high 2 bits in scales[8 + j%4] at bit 2*(j/4).
        b[96 + 0] = 0x02;
        for (int i = 8; i < 12; i++) b[96 + i] = 0xAA;
        b[32 + 0] = 0x03; // qs[0] bits 0-1 = 3 -> element 0 low bits
        b[0] = 0x01;      // hmask[0] bit 0 set -> element 0 has no -4
        var e = new float[256];
        for (int i = 0; i < 16; i++) e[i] = 2 * (0 - 4); // hmask clear -> q - 4
        e[0] = 2 * 3;
        Assert.Equal(e, Decode(GgmlType.Q3_K, b));
    }

    private static byte[] K4Header(int blockBytes)
    {
        var b = new byte[blockBytes];
        H(b, 0, 0x3C00); H(b, 2, 0x3C00); // d 1, dmin 1
        b[4 + 0] = 0x43; // scale 0 = 3 (low 6 bits); top 2 bits = bits 4-5 of scale 4
        b[4 + 4] = 0x01; // min 0 = 1
        b[4 + 8] = 0x25; // scale 4 = 5 | (1 << 4) = 21, min 4 = 2
        return b;
    }

    [Fact]
    public void Q4_K()
    {
        var b = K4Header(144);
        b[16 + 0] = 0x72;  // element 0: 2 -> 3*2 - 1 = 5 ; element 32 (scale 1 = 0, min 0) -> 0
        b[16 + 64] = 0x0F; // element 128 (sub-block 4): 15 -> 21*15 - 2 = 313 ; element 160 -> 0
        var e = new float[256];
        for (int i = 0; i < 32; i++) e[i] = -1;
        for (int i = 128; i < 160; i++) e[i] = -2;
        e[0] = 5; e[128] = 313;
        Assert.Equal(e, Decode(GgmlType.Q4_K, b));
    }

    [Fact]
    public void Q5_K()
    {
        var b = K4Header(176);
        b[48 + 0] = 0x72;  // element 0 low 4 bits 2
        b[16 + 0] = 0x01;  // qh[0] bit 0: element 0 gets +16 -> 3*18 - 1 = 53
        b[16 + 1] = 0x01;  // element 1: 3*16 - 1 = 47
        b[16 + 2] = 0x10;  // qh bit 4 -> element 128 + 2 (chunk 2, low nibbles): 21*16 - 2 = 334
        var e = new float[256];
        for (int i = 0; i < 32; i++) e[i] = -1;
        for (int i = 128; i < 160; i++) e[i] = -2;
        e[0] = 53; e[1] = 47; e[130] = 334;
        Assert.Equal(e, Decode(GgmlType.Q5_K, b));
    }

    [Fact]
    public void Q6_K()
    {
        var b = new byte[210];
        H(b, 208, 0x3800);  // d 0.5
        b[192 + 0] = 0xFE;  // scale of elements 0-15 = -2
        b[192 + 2] = 3;     // scale of elements 32-47 = 3
        b[0] = 0x05;        // ql[0] low nibble 5 -> element 0 ; high nibble 0 -> element 64 (scale 0)
        b[32] = 0x01;       // ql[32] low nibble 1 -> element 32
        b[128] = 0x0E;      // qh[0]: bits 0-1 = 2 (element 0), bits 2-3 = 3 (element 32)
        var e = new float[256];
        for (int i = 0; i < 16; i++) e[i] = 0.5f * -2 * -32;
        for (int i = 32; i < 48; i++) e[i] = 0.5f * 3 * -32;
        e[0] = 0.5f * -2 * ((5 | (2 << 4)) - 32);   // -5
        e[32] = 0.5f * 3 * ((1 | (3 << 4)) - 32);   // 25.5
        Assert.Equal(-5f, e[0]);
        Assert.Equal(25.5f, e[32]);
        Assert.Equal(e, Decode(GgmlType.Q6_K, b));
    }

    [Fact]
    public void Bad_lengths_throw()
    {
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_0, new byte[18], new float[31]));
        Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_0, new byte[17], new float[32]));
        Assert.Throws<ArgumentException>(() => Quantize.Row(GgmlType.Q6_K, new float[255], new byte[210]));
        Assert.Throws<ArgumentException>(() => Quantize.Row(GgmlType.Q8_0, new float[64], new byte[34]));
    }
}
