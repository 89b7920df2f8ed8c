using Cria.Tensors;

namespace Cria.Tests.Quant;

internal static class QuantTestUtil
{
    public static readonly GgmlType[] AllTypes =
    [
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1,
        GgmlType.Q8_0, GgmlType.Q8_1, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.Q8_K,
        GgmlType.IQ4_NL, GgmlType.IQ4_XS,
    ];

    public static readonly GgmlType[] WeightTypes =
    [
        GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q4_0, GgmlType.Q4_1, GgmlType.Q5_0, GgmlType.Q5_1,
        GgmlType.Q8_0, GgmlType.Q2_K, GgmlType.Q3_K, GgmlType.Q4_K, GgmlType.Q5_K, GgmlType.Q6_K, GgmlType.IQ4_NL, GgmlType.IQ4_XS,
    ];

    public static float[] Gaussian(Random rng, int n, float sigma = 1f)
    {
        var x = new float[n];
        for (int i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            x[i] = (float)(sigma * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return x;
    }

    public static byte[] Quant(GgmlType t, float[] x)
    {
        var b = new byte[GgmlTypeInfo.RowBytes(t, x.Length)];
        Quantize.Row(t, x, b);
        return b;
    }

    public static float[] Dequant(GgmlType t, byte[] b, int n)
    {
        var y = new float[n];
        Dequantize.Row(t, b, y);
        return y;
    }

    public static byte[] F16Bytes(params ushort[] h)
    {
        var b = new byte[2 * h.Length];
        for (int i = 0; i < h.Length; i++) { b[2 * i] = (byte)h[i]; b[2 * i + 1] = (byte)(h[i] >> 8); }
        return b;
    }
}
