using System.Text;
using Cria.Formats;
using Cria.Models;
using Cria.Tensors;
using Xunit;

namespace Cria.Tests.Formats;

public class GgufTests
{
    /// <summary>The mapping of a model file carries MADV_HUGEPAGE (smaps flag "hg"), so the kernel may map the file's
    /// 2 MiB page-cache folios with 2 MiB entries (<see cref="MappedFileHints"/>); on other systems nothing is asked.</summary>
    [Fact]
    public void The_model_mapping_asks_for_huge_pages_on_linux()
    {
        var path = TestPaths.TempFile("hugepage-hint.gguf");
        var w = new GgufWriter();
        w.AddTensor("t", [4096], new float[4096]);
        w.Write(path);
        using var f = GgufFile.Open(path);
        if (!OperatingSystem.IsLinux()) return;
        string full = Path.GetFullPath(path);
        var lines = File.ReadAllLines("/proc/self/smaps");
        int at = Array.FindIndex(lines, l => l.EndsWith(" " + full, StringComparison.Ordinal));
        Assert.True(at >= 0, $"no mapping of {full} in /proc/self/smaps");
        // VmFlags is the last line of a mapping's block.
        string flags = lines.Skip(at + 1).First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal));
        Assert.Contains(" hg", flags);
    }

    /// <summary>A model file whose page cache is fragmented (read backwards in 4 KiB pieces, so every folio is small)
    /// is mapped with 4 KiB entries however the mapping is hinted; <see cref="GgufFile.MakeResident"/> re-reads it so
    /// that at least 90 % of its 2 MiB-aligned span is mapped with 2 MiB entries (Linux with large page-cache folios,
    /// as ext4 on 6.18 here; <c>CRIA_HUGEPAGES=0</c> makes it fail).</summary>
    [Fact]
    public void MakeResident_maps_a_fragmented_file_in_2_MiB_pages_on_linux()
    {
        if (!OperatingSystem.IsLinux()) return;
        var path = TestPaths.TempFile("make-resident.gguf");
        var w = new GgufWriter();
        w.AddTensor("t", [16 << 20 >> 2], new float[16 << 20 >> 2]); // 16 MiB
        w.Write(path);
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite)) fs.Flush(flushToDisk: true); // dirty pages are not dropped
        MappedFileHints.DropPageCache(path);
        using (var h = File.OpenHandle(path))
        {
            var page = new byte[4096];
            for (long off = (RandomAccess.GetLength(h) - 1) / 4096 * 4096; off >= 0; off -= 4096) RandomAccess.Read(h, page, off);
        }
        using var f = GgufFile.Open(path);
        long spanFloor = (f.FileSize - (4 << 20)) * 9 / 10; // at most 2 MiB lost at each end to alignment
        long before = f.Populate();
        Assert.True(before >= 0 && before < f.FileSize / 4, $"fragmented cache: {before} bytes mapped in 2 MiB pages before");
        long after = f.MakeResident();
        Assert.True(after >= spanFloor, $"{after} of {f.FileSize} bytes mapped in 2 MiB pages after MakeResident");
        Assert.Equal(after, f.HugePageBytes);
        Assert.Equal(0f, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(f.GetTensor("t")))[(16 << 20 >> 2) - 1]);
    }

    [Fact]
    public void EveryMetadataTypeRoundTrips()
    {
        var path = TestPaths.TempFile("meta-roundtrip.gguf");
        object[] values =
        [
            (byte)200, (sbyte)-5, (ushort)60000, (short)-30000, 4000000000u, -2000000000, 3.25f, true, "héllo ✓",
            ulong.MaxValue, long.MinValue, Math.PI,
            new byte[] { 1, 2 }, new sbyte[] { -1 }, new ushort[] { 7 }, new short[] { -7 }, new uint[] { 9, 10 },
            new[] { 1, -1 }, new[] { 0.5f, -0.25f }, new[] { true, false, true }, new[] { "a", "", "日本" },
            new ulong[] { 1UL << 60 }, new long[] { -(1L << 60) }, new[] { 1e300 },
        ];
        var w = new GgufWriter { Alignment = 64 };
        for (int i = 0; i < values.Length; i++) w.Set($"k.{i}", values[i]);
        var t0 = Enumerable.Range(0, 6).Select(i => (float)i).ToArray();
        w.AddTensor("t0", [3, 2], t0);
        w.AddTensor("t1", [5], [1f, 2f, 3f, 4f, 5f]);
        w.Write(path);
        using var f = GgufFile.Open(path);
        Assert.Equal(3u, f.Version);
        Assert.Equal(64, f.Alignment);
        for (int i = 0; i < values.Length; i++)
        {
            var got = f.Metadata[$"k.{i}"];
            Assert.Equal(values[i].GetType(), got.GetType());
            Assert.Equal(values[i], got);
        }
        var t = f.GetTensor("t0");
        Assert.Equal(new long[] { 3, 2 }, t.Shape);
        Assert.Equal(0, (f.DataOffset + t.Offset) % 64);
        Assert.Equal(t0, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(t)).ToArray());
        Assert.Equal(0, f.GetTensor("t1").Offset % 64);
    }

    [Fact]
    public void InterruptedWriteLeavesNoFileUnderTheName()
    {
        var path = TestPaths.TempFile("atomic.gguf");
        var w = new GgufWriter().Set("x", 1u);
        w.AddTensor("t", [4], [1f, 2f, 3f, 4f]);
        Assert.Throws<ArgumentException>(() => w.AddTensor("bad", [4], GgmlType.F32, new byte[3]));
        w.Write(path);
        var before = File.ReadAllBytes(path);
        // A writer whose metadata cannot be serialised fails mid-write: the old file must stay as it was.
        var broken = new GgufWriter();
        broken.Set("ok", 1u);
        broken.AddTensor("t", [4], [1f, 2f, 3f, 4f]);
        typeof(GgufWriter).GetField("_kv", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .GetValue(broken)!.GetType().GetMethod("Add")!.Invoke(typeof(GgufWriter).GetField("_kv", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!.GetValue(broken), [("bad", (object)new object())]);
        Assert.ThrowsAny<ArgumentException>(() => broken.Write(path));
        Assert.Equal(before, File.ReadAllBytes(path));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, "atomic.gguf.tmp-*"));
    }

    /// <summary>A produced tensor is made while the file is written, after every earlier tensor's bytes have reached
    /// the file (so a quantizer holds one tensor's output at a time), and the file equals the one written from bytes.</summary>
    [Fact]
    public void Produced_tensors_are_made_in_order_while_the_file_is_written()
    {
        var rng = new Random(7);
        float[][] values = [.. Enumerable.Range(0, 4).Select(i => Enumerable.Range(0, 300_000 + 32 * i).Select(_ => (float)rng.NextDouble()).ToArray())];
        byte[] Bytes(int i) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values[i].AsSpan()).ToArray();

        string eagerPath = TestPaths.TempFile("eager.gguf"), lazyPath = TestPaths.TempFile("produced.gguf");
        var eager = new GgufWriter { Alignment = 64 }.Set("k", 3u);
        for (int i = 0; i < values.Length; i++) eager.AddTensor($"t{i}", [values[i].Length], GgmlType.F32, Bytes(i));
        eager.Write(eagerPath);

        var lazy = new GgufWriter { Alignment = 64 }.Set("k", 3u);
        var made = new List<(int Tensor, long FileLength)>();
        string tmpGlob = "produced.gguf.tmp-*";
        for (int i = 0; i < values.Length; i++)
        {
            int k = i;
            lazy.AddTensor($"t{k}", [values[k].Length], GgmlType.F32, () =>
            {
                var tmp = Directory.GetFiles(Path.GetDirectoryName(lazyPath)!, tmpGlob).Single();
                made.Add((k, new FileInfo(tmp).Length));
                return Bytes(k);
            });
        }
        Assert.Empty(made); // nothing is produced before Write
        lazy.Write(lazyPath);

        Assert.Equal(File.ReadAllBytes(eagerPath), File.ReadAllBytes(lazyPath));
        Assert.Equal([0, 1, 2, 3], made.Select(m => m.Tensor));
        using var f = GgufFile.Open(lazyPath);
        // Each tensor is 1.2 MB; the writer's file buffer holds at most 1 MiB, so when tensor i is made, all but the
        // last MiB of the tensors before it are on disk (with everything produced up front, nothing would be).
        long earlier = 0;
        for (int i = 0; i < values.Length; i++)
        {
            Assert.True(made[i].FileLength >= earlier - (1 << 20), $"t{i} was made with {made[i].FileLength} bytes on disk, with {earlier} bytes of tensors before it");
            earlier += values[i].Length * 4L;
        }
        Assert.Equal(values[3], System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.TensorData(f.GetTensor("t3"))).ToArray());
    }

    /// <summary>A producer that returns the wrong number of bytes, or throws (a cancelled quantization), fails the
    /// write with our exception and leaves neither a file under the name nor a temporary file.</summary>
    [Fact]
    public void A_failing_producer_leaves_no_file()
    {
        var path = TestPaths.TempFile("producer-fails.gguf");
        if (File.Exists(path)) File.Delete(path);
        var shortOne = new GgufWriter();
        shortOne.AddTensor("a", [4], [1f, 2f, 3f, 4f]);
        shortOne.AddTensor("b", [8], GgmlType.F32, () => new byte[28]);
        var e = Assert.Throws<CriaException>(() => shortOne.Write(path));
        Assert.Contains("'b'", e.Message);
        Assert.Contains("28 bytes", e.Message);
        Assert.False(File.Exists(path));

        var cancelled = new GgufWriter();
        cancelled.AddTensor("a", [4], [1f, 2f, 3f, 4f]);
        cancelled.AddTensor("b", [8], GgmlType.F32, () => throw new OperationCanceledException());
        Assert.Throws<OperationCanceledException>(() => cancelled.Write(path));
        Assert.False(File.Exists(path));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, "producer-fails.gguf.tmp-*"));
    }
}
