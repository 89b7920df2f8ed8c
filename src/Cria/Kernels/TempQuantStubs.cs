// TEMPORARY: replaced by the real block formats when the quant branch merges.
using System.Runtime.InteropServices;
using Cria.Tensors;
namespace Cria.Tensors
{
    public static class Dequantize
    {
        public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
        {
            if (type == GgmlType.F32) { MemoryMarshal.Cast<byte, float>(src)[..dst.Length].CopyTo(dst); return; }
            if (type == GgmlType.F16) { var h = MemoryMarshal.Cast<byte, Half>(src); for (int i = 0; i < dst.Length; i++) dst[i] = (float)h[i]; return; }
            throw new NotSupportedException(type.ToString());
        }
    }
}
namespace Cria.Tensors
{
    public static class Quantize
    {
        public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
        {
            if (type == GgmlType.F32) { src.CopyTo(MemoryMarshal.Cast<byte, float>(dst)); return; }
            if (type == GgmlType.F16) { var h = MemoryMarshal.Cast<byte, Half>(dst); for (int i = 0; i < src.Length; i++) h[i] = (Half)src[i]; return; }
            throw new NotSupportedException(type.ToString());
        }
    }
}
namespace Cria.Kernels
{
    public static class VecDot
    {
        public static GgmlType ActivationType(GgmlType w) => w == GgmlType.F16 ? GgmlType.F16 : GgmlType.F32;
        public static void QuantizeActivations(GgmlType t, ReadOnlySpan<float> x, Span<byte> dst)
        {
            if (t == GgmlType.F32) { x.CopyTo(MemoryMarshal.Cast<byte, float>(dst)); return; }
            var h = MemoryMarshal.Cast<byte, Half>(dst); for (int i = 0; i < x.Length; i++) h[i] = (Half)x[i];
        }
        public static float Dot(GgmlType w, ReadOnlySpan<byte> wr, ReadOnlySpan<byte> xr, int n)
        {
            float s = 0;
            if (w == GgmlType.F32) { var a = MemoryMarshal.Cast<byte, float>(wr); var b = MemoryMarshal.Cast<byte, float>(xr); for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }
            var ha = MemoryMarshal.Cast<byte, Half>(wr); var hb = MemoryMarshal.Cast<byte, Half>(xr);
            double d = 0; for (int i = 0; i < n; i++) d += (float)ha[i] * (float)hb[i]; return (float)d;
        }
    }
}
