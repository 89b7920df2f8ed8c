using System.Runtime.InteropServices;
using System.Text;
using Cria.Tensors;

namespace Cria.Formats;

/// <summary>
/// Builds a GGUF v3 file: metadata (in insertion order) and tensors (raw bytes in their ggml type). A tensor is added
/// either with its bytes or with a function that produces them: the header needs only names, shapes and types (every
/// offset follows from them), so produced tensors are made one at a time while the file is written, in the order they
/// were added, and a converter or quantizer holds one tensor's output at a time instead of the whole file's.
/// <see cref="Write"/> writes to a temporary file beside the target and renames it, so an interrupted write never
/// leaves a truncated file under the final name.
/// </summary>
public sealed class GgufWriter
{
    readonly List<(string Key, object Value)> _kv = new();
    readonly List<(string Name, long[] Shape, GgmlType Type, long Bytes, Func<ReadOnlyMemory<byte>> Data)> _tensors = new();
    public int Alignment { get; set; } = GgufFile.DefaultAlignment;

    /// <summary>Adds or replaces a metadata value (see <see cref="GgufValues"/> for the allowed .NET types).</summary>
    public GgufWriter Set(string key, object value)
    {
        GgufValues.TypeOf(value.GetType()); // validates
        int i = _kv.FindIndex(e => e.Key == key);
        if (i >= 0) _kv[i] = (key, value); else _kv.Add((key, value));
        return this;
    }

    public GgufWriter Remove(string key) { _kv.RemoveAll(e => e.Key == key); return this; }

    /// <summary>Copies every metadata entry of an open file (in its order).</summary>
    public GgufWriter CopyMetadataFrom(GgufFile f)
    {
        foreach (var k in f.MetadataKeys) if (k != "general.alignment") Set(k, f.Metadata[k]);
        return this;
    }

    /// <summary>Adds a tensor. Shape is in ggml order (Shape[0] fastest). Data must be exactly the tensor's bytes.</summary>
    public GgufWriter AddTensor(string name, long[] shape, GgmlType type, ReadOnlyMemory<byte> data)
    {
        long bytes = Check(name, shape, type);
        if (data.Length != bytes)
            throw new ArgumentException($"tensor '{name}': {data.Length} bytes given, {bytes} expected for {type} {string.Join("x", shape)}");
        _tensors.Add((name, shape, type, bytes, () => data));
        return this;
    }

    /// <summary>Adds a tensor whose bytes <paramref name="produce"/> makes during <see cref="Write"/>, after the bytes of
    /// every tensor added before it are written (and released); it must return exactly the tensor's bytes, or the write
    /// fails and leaves no file. Exceptions (a cancellation, say) abort the write the same way.</summary>
    public GgufWriter AddTensor(string name, long[] shape, GgmlType type, Func<ReadOnlyMemory<byte>> produce)
    {
        long bytes = Check(name, shape, type);
        _tensors.Add((name, shape, type, bytes, produce));
        return this;
    }

    long Check(string name, long[] shape, GgmlType type)
    {
        var info = new GgufTensorInfo(name, shape, type, 0);
        if (info.RowLength % GgmlTypeInfo.BlockSize(type) != 0)
            throw new ArgumentException($"tensor '{name}': row length {info.RowLength} is not a multiple of the {type} block size");
        if (_tensors.Exists(t => t.Name == name)) throw new ArgumentException($"duplicate tensor '{name}'");
        return info.ByteSize;
    }

    public GgufWriter AddTensor(string name, long[] shape, float[] f32) =>
        AddTensor(name, shape, GgmlType.F32, MemoryMarshal.AsBytes(f32.AsSpan()).ToArray());

    /// <summary>Writes the file atomically (temp file + rename).</summary>
    public void Write(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        string tmp = full + ".tmp-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..8];
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                WriteTo(fs);
                fs.Flush(flushToDisk: false);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    public void WriteTo(Stream s)
    {
        var w = new BinaryWriter(s, Encoding.UTF8, leaveOpen: true);
        w.Write(GgufFile.Magic);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        var kvs = new List<(string Key, object Value)>(_kv);
        if (Alignment != GgufFile.DefaultAlignment) kvs.Add(("general.alignment", (uint)Alignment));
        w.Write((ulong)kvs.Count);
        foreach (var (k, v) in kvs)
        {
            WriteString(w, k);
            WriteValue(w, v);
        }
        long offset = 0;
        var offsets = new long[_tensors.Count];
        for (int i = 0; i < _tensors.Count; i++)
        {
            var t = _tensors[i];
            WriteString(w, t.Name);
            w.Write((uint)t.Shape.Length);
            foreach (var d in t.Shape) w.Write((ulong)d);
            w.Write((uint)t.Type);
            w.Write((ulong)offset);
            offsets[i] = offset;
            offset = AlignUp(offset + t.Bytes, Alignment);
        }
        w.Flush();
        Pad(s, Alignment);
        long dataStart = s.Position;
        for (int i = 0; i < _tensors.Count; i++)
        {
            long pad = dataStart + offsets[i] - s.Position;
            for (long p = 0; p < pad; p++) s.WriteByte(0);
            var t = _tensors[i];
            var data = t.Data();
            if (data.Length != t.Bytes)
                throw new CriaException($"tensor '{t.Name}': {data.Length} bytes were produced, {t.Bytes} expected for {t.Type} {string.Join("x", t.Shape)}");
            s.Write(data.Span);
        }
        Pad(s, Alignment);
    }

    static long AlignUp(long x, int a) => (x + a - 1) / a * a;

    static void Pad(Stream s, int a)
    {
        long pad = AlignUp(s.Position, a) - s.Position;
        for (long p = 0; p < pad; p++) s.WriteByte(0);
    }

    static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    static void WriteValue(BinaryWriter w, object v)
    {
        var type = GgufValues.TypeOf(v.GetType());
        w.Write((uint)type);
        if (type == GgufValueType.Array)
        {
            var arr = (Array)v;
            var et = GgufValues.TypeOf(v.GetType().GetElementType()!);
            w.Write((uint)et);
            w.Write((ulong)arr.Length);
            foreach (var e in arr) WriteScalar(w, e!);
        }
        else WriteScalar(w, v);
    }

    static void WriteScalar(BinaryWriter w, object v)
    {
        switch (v)
        {
            case byte x: w.Write(x); break;
            case sbyte x: w.Write(x); break;
            case ushort x: w.Write(x); break;
            case short x: w.Write(x); break;
            case uint x: w.Write(x); break;
            case int x: w.Write(x); break;
            case float x: w.Write(x); break;
            case bool x: w.Write((byte)(x ? 1 : 0)); break;
            case string x: WriteString(w, x); break;
            case ulong x: w.Write(x); break;
            case long x: w.Write(x); break;
            case double x: w.Write(x); break;
            default: throw new ArgumentException($"cannot write {v.GetType()} as GGUF");
        }
    }
}
