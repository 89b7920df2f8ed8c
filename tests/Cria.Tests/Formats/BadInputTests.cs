using System.Buffers.Binary;
using System.Text;
using Cria.Formats;
using Cria.Inference;
using Cria.Models;
using Xunit;
using Xunit.Abstractions;

namespace Cria.Tests.Formats;

/// <summary>
/// Malformed model files raise <see cref="ModelFormatException"/> naming the file and the problem — never an
/// IndexOutOfRange, AccessViolation, hang or huge allocation. Named cases first, then thousands of random mutations.
/// </summary>
public class BadInputTests(ITestOutputHelper output)
{
    static readonly Lazy<byte[]> Valid = new(() =>
    {
        var p = TestPaths.TempFile("fuzz-base.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 64, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 128, VocabSize = 300, Seed = 5 });
        return File.ReadAllBytes(p);
    });

    // The same with a mixture of experts (expert counts, a router, stacked 3-D expert tensors to corrupt).
    static readonly Lazy<byte[]> ValidMoe = new(() =>
    {
        var p = TestPaths.TempFile("fuzz-base-moe.gguf");
        RandomModel.Write(p, new RandomModelSpec { Dim = 64, Layers = 1, Heads = 2, KvHeads = 1, FfnDim = 128, VocabSize = 300, Seed = 5, Experts = 4, ExpertsUsed = 2 });
        return File.ReadAllBytes(p);
    });

    static string Save(string name, byte[] bytes)
    {
        var p = TestPaths.TempFile(name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    static ModelFormatException AssertBad(string path, string mustMention)
    {
        var e = Assert.Throws<ModelFormatException>(() => { using var m = LlamaModel.Open(path); });
        Assert.Contains(path, e.Message);
        Assert.Contains(mustMention, e.Message, StringComparison.OrdinalIgnoreCase);
        return e;
    }

    /// <summary>Offset of the u32 type field of a tensor info, found by its name in the header.</summary>
    static int TensorTypeOffset(byte[] file, string name, out int dimsOffset)
    {
        var needle = Encoding.UTF8.GetBytes(name);
        int at = file.AsSpan().IndexOf(needle);
        // The name is preceded by its u64 length; make sure we found a tensor info (n_dims follows).
        at += needle.Length;
        dimsOffset = at;
        uint nDims = BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(at));
        return at + 4 + 8 * (int)nDims;
    }

    [Fact]
    public void TruncatedFile()
    {
        var v = Valid.Value;
        var e = AssertBad(Save("trunc-header.gguf", v[..100]), "");
        Assert.Matches("end of file|past the end|cannot fit", e.Message);
        AssertBad(Save("trunc-data.gguf", v[..(v.Length - 1000)]), "outside the file");
        AssertBad(Save("empty.gguf", []), "too short");
    }

    [Fact]
    public void WrongMagicAndVersion()
    {
        var v = (byte[])Valid.Value.Clone();
        v[0] = (byte)'X';
        AssertBad(Save("magic.gguf", v), "magic");
        v = (byte[])Valid.Value.Clone();
        v[4] = 1;
        AssertBad(Save("version.gguf", v), "version");
    }

    [Fact]
    public void ImpossibleTensorOffsetShapeAndType()
    {
        var v = (byte[])Valid.Value.Clone();
        int typeAt = TensorTypeOffset(v, "blk.0.attn_q.weight", out int dimsAt);
        var o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(typeAt + 4), 1UL << 40);
        AssertBad(Save("offset.gguf", o), "outside the file");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(typeAt + 4), 32 * 3 + 32 * 1_000_000);
        AssertBad(Save("offset2.gguf", o), "attn_q");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(dimsAt + 4), 1UL << 62); // ne[0] huge
        AssertBad(Save("shape.gguf", o), "dimension");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(dimsAt + 4), 65); // ne[0] 65 instead of 64: shape mismatch or size
        AssertBad(Save("shape2.gguf", o), "attn_q");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(o.AsSpan(dimsAt), 7); // n_dims 7
        AssertBad(Save("ndims.gguf", o), "dimensions");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(o.AsSpan(typeAt), 77);
        AssertBad(Save("ttype.gguf", o), "unknown tensor type 77");

        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt32LittleEndian(o.AsSpan(typeAt), 34); // a ternary type Cria does not read
        AssertBad(Save("tq1.gguf", o), "type TQ1_0 (34), which Cria does not read");
    }

    [Fact]
    public void UnknownArchitectureAndMissingTensor()
    {
        var v = (byte[])Valid.Value.Clone();
        int at = v.AsSpan().IndexOf("llama"u8);
        var o = (byte[])v.Clone();
        "gpt-x"u8.CopyTo(o.AsSpan(at));
        AssertBad(Save("arch.gguf", o), "architecture 'gpt-x'");

        o = (byte[])v.Clone();
        int n = o.AsSpan().IndexOf("blk.0.ffn_up.weight"u8);
        "blk.0.ffn_up.wxxxxx"u8.CopyTo(o.AsSpan(n));
        AssertBad(Save("missing.gguf", o), "missing tensor 'blk.0.ffn_up.weight'");
    }

    [Fact]
    public void HugeCountsAreRejectedWithoutAllocating()
    {
        var v = (byte[])Valid.Value.Clone();
        var o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(8), ulong.MaxValue); // n_tensors
        AssertBad(Save("ntensors.gguf", o), "tensor count");
        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(16), 1UL << 50); // n_kv
        AssertBad(Save("nkv.gguf", o), "metadata count");
        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(24), 1UL << 50); // first key's length
        AssertBad(Save("keylen.gguf", o), "string length");
        // tokens array count
        int at = o.AsSpan().IndexOf("tokenizer.ggml.tokens"u8) + "tokenizer.ggml.tokens".Length + 4 + 4;
        o = (byte[])v.Clone();
        BinaryPrimitives.WriteUInt64LittleEndian(o.AsSpan(at), 1UL << 40);
        AssertBad(Save("arrcount.gguf", o), "array count");
    }

    [Theory]
    [InlineData(false, 3000)]
    [InlineData(true, 1500)]
    public void ThousandsOfRandomMutationsFailCleanly(bool moe, int iterations)
    {
        var v = moe ? ValidMoe.Value : Valid.Value;
        long dataOffset;
        using (var f = GgufFile.Open(Save(moe ? "fuzz-orig-moe.gguf" : "fuzz-orig.gguf", v))) dataOffset = f.DataOffset;
        var rng = new Random(20261128);
        int ok = 0, rejected = 0;
        var path = TestPaths.TempFile(moe ? "fuzz-mutant-moe.gguf" : "fuzz-mutant.gguf");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int it = 0; it < iterations; it++)
        {
            byte[] m;
            int kind = it % 5;
            switch (kind)
            {
                case 0: // a few bit flips in the header
                    m = (byte[])v.Clone();
                    for (int k = rng.Next(1, 5); k > 0; k--) { int p = rng.Next((int)dataOffset); m[p] ^= (byte)(1 << rng.Next(8)); }
                    break;
                case 1: // truncation anywhere
                    m = v[..rng.Next(v.Length)];
                    break;
                case 2: // a huge or random u64 at a random header position
                    m = (byte[])v.Clone();
                    {
                        int p = rng.Next((int)dataOffset - 8);
                        ulong val = rng.Next(4) switch { 0 => ulong.MaxValue, 1 => 1UL << rng.Next(20, 63), 2 => (ulong)rng.NextInt64(), _ => (ulong)rng.Next(1000) };
                        BinaryPrimitives.WriteUInt64LittleEndian(m.AsSpan(p), val);
                    }
                    break;
                case 3: // a random u32 (types, dims, counts)
                    m = (byte[])v.Clone();
                    BinaryPrimitives.WriteUInt32LittleEndian(m.AsSpan(rng.Next((int)dataOffset - 4)), (uint)rng.Next(-5, 40));
                    break;
                default: // random bytes over a short span
                    m = (byte[])v.Clone();
                    {
                        int p = rng.Next((int)dataOffset - 16);
                        for (int k = 0; k < 16; k++) m[p + k] = (byte)rng.Next(256);
                    }
                    break;
            }
            File.WriteAllBytes(path, m);
            long before = GC.GetAllocatedBytesForCurrentThread();
            try
            {
                using var model = LlamaModel.Open(path);
                // A mutant that still parses must still run without crashing.
                using var ctx = new InferenceContext(model, new ContextOptions { ContextSize = 8, Threads = 1 });
                var b = new Batch(2);
                b.Add(Math.Min(1, model.Config.VocabSize - 1), 0, 0, true);
                ctx.Decode(b);
                ok++;
            }
            catch (ModelFormatException e)
            {
                Assert.Contains(path, e.Message);
                rejected++;
            }
            catch (Exception e) when (e is not Xunit.Sdk.XunitException)
            {
                Assert.Fail($"mutation {it} (kind {kind}) raised {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < 64L << 20, $"mutation {it} (kind {kind}) allocated {allocated >> 20} MiB");
        }
        output.WriteLine($"{iterations} mutations: {ok} still loadable, {rejected} rejected with ModelFormatException, {sw.Elapsed.TotalSeconds:F1} s");
        Assert.True(rejected > iterations / 3, "most mutations should be rejected");
    }
}
