using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using Cria.Tensors;

namespace Cria.Formats;

/// <summary>One tensor of a safetensors file: shape in PyTorch order (last dimension fastest), byte range in the data section.</summary>
public sealed record SafetensorsTensor(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount { get { long n = 1; foreach (var d in Shape) n *= d; return n; } }
    public long ByteSize => End - Begin;
}

/// <summary>
/// A <c>.safetensors</c> file opened over a read-only memory map: an 8-byte little-endian header length N, N bytes
/// of JSON <c>{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__": {…} }</c>, then the data, offsets
/// relative to byte 8 + N. Everything is checked before use — the header length against the file, the JSON, each
/// dtype (F32, F16, BF16 are accepted), shape × dtype size == the offsets' span, every range inside the data section
/// and no two ranges overlapping — and a violation raises <see cref="ModelFormatException"/> naming the file.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>The header of a real checkpoint is a few hundred KiB; refuse absurd lengths before reading them.</summary>
    public const long MaxHeaderBytes = 100L << 20;

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly byte* _base;
    readonly Dictionary<string, SafetensorsTensor> _byName = new(StringComparer.Ordinal);

    public string Path { get; }
    public long FileSize { get; }
    public long DataOffset { get; }
    public IReadOnlyList<SafetensorsTensor> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public static int DTypeSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8, "F32" or "I32" or "U32" => 4, "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1, _ => 0,
    };

    public static bool IsSupported(string dtype) => dtype is "F32" or "F16" or "BF16";

    SafetensorsFile(string path)
    {
        Path = path;
        if (!File.Exists(path)) throw new ModelFormatException(path, "file not found");
        long length = new FileInfo(path).Length;
        FileSize = length;
        if (length < 8) throw new ModelFormatException(path, $"file is {length} bytes, too short for a safetensors header");
        try
        {
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            MappedFileHints.PreferHugePages(p, length);
            _base = p + _view.PointerOffset;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Dispose();
            throw new ModelFormatException(path, "cannot map file: " + e.Message, e);
        }
        try
        {
            ulong n = *(ulong*)_base;
            if (n == 0 || n > (ulong)(length - 8)) throw new ModelFormatException(path, $"header length {n} does not fit in the {length}-byte file");
            if (n > MaxHeaderBytes) throw new ModelFormatException(path, $"header length {n} exceeds the {MaxHeaderBytes}-byte limit");
            DataOffset = 8 + (long)n;
            long dataLen = length - DataOffset;
            var json = new ReadOnlySpan<byte>(_base + 8, (int)n);
            JsonDocument doc;
            try { doc = JsonDocument.Parse(json.ToArray()); }
            catch (JsonException e) { throw new ModelFormatException(path, "header is not valid JSON: " + e.Message, e); }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "header JSON is not an object");
                var list = new List<SafetensorsTensor>();
                var meta = new Dictionary<string, string>(StringComparer.Ordinal);
                foreach (var prop in doc.RootElement.EnumerateObject())
                {
                    if (prop.Name == "__metadata__")
                    {
                        if (prop.Value.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "__metadata__ is not an object");
                        foreach (var m in prop.Value.EnumerateObject())
                            meta[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : throw new ModelFormatException(path, $"__metadata__ value '{m.Name}' is not a string");
                        continue;
                    }
                    var t = ParseTensor(path, prop, dataLen);
                    if (!_byName.TryAdd(t.Name, t)) throw new ModelFormatException(path, $"tensor '{t.Name}' appears twice in the header");
                    list.Add(t);
                }
                var sorted = list.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
                for (int i = 1; i < sorted.Count; i++)
                    if (sorted[i].Begin < sorted[i - 1].End && sorted[i].ByteSize > 0 && sorted[i - 1].ByteSize > 0)
                        throw new ModelFormatException(path, $"tensors '{sorted[i - 1].Name}' [{sorted[i - 1].Begin}, {sorted[i - 1].End}) and '{sorted[i].Name}' [{sorted[i].Begin}, {sorted[i].End}) overlap");
                Tensors = list;
                Metadata = meta;
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    static SafetensorsTensor ParseTensor(string path, JsonProperty prop, long dataLen)
    {
        string name = prop.Name;
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, $"tensor '{name}': header entry is not an object");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw new ModelFormatException(path, $"tensor '{name}': missing dtype");
        string dtype = dt.GetString()!;
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw new ModelFormatException(path, $"tensor '{name}': missing shape");
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new ModelFormatException(path, $"tensor '{name}': data_offsets must be [begin, end]");
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        long elements = 1;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw new ModelFormatException(path, $"tensor '{name}': bad shape dimension {d}");
            shape[i++] = x;
            elements = x == 0 ? 0 : elements > long.MaxValue / x ? throw new ModelFormatException(path, $"tensor '{name}': shape overflows") : elements * x;
        }
        long[] o = new long[2];
        i = 0;
        foreach (var d in off.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw new ModelFormatException(path, $"tensor '{name}': bad data offset {d}");
            o[i++] = x;
        }
        if (o[1] < o[0]) throw new ModelFormatException(path, $"tensor '{name}': data_offsets [{o[0]}, {o[1]}] end before they begin");
        if (o[1] > dataLen) throw new ModelFormatException(path, $"tensor '{name}': data_offsets [{o[0]}, {o[1]}] run past the end of the data ({dataLen} bytes)");
        int size = DTypeSize(dtype);
        if (size == 0) throw new ModelFormatException(path, $"tensor '{name}': unknown dtype '{dtype}'");
        if (elements > long.MaxValue / size || elements * size != o[1] - o[0])
            throw new ModelFormatException(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype} is {elements * (long)size} bytes but data_offsets span {o[1] - o[0]}");
        return new SafetensorsTensor(name, dtype, shape, o[0], o[1]);
    }

    public static SafetensorsFile Open(string path) => new(path);

    public bool TryGetTensor(string name, out SafetensorsTensor t) => _byName.TryGetValue(name, out t!);

    public ReadOnlySpan<byte> TensorData(SafetensorsTensor t) => new(_base + DataOffset + t.Begin, checked((int)t.ByteSize));

    /// <summary>The tensor's values as F32 (F32, F16 and BF16; any other dtype raises <see cref="ModelFormatException"/>).</summary>
    public float[] ReadF32(SafetensorsTensor t)
    {
        var v = new float[t.ElementCount];
        var type = t.DType switch
        {
            "F32" => GgmlType.F32, "F16" => GgmlType.F16, "BF16" => GgmlType.BF16,
            _ => throw new ModelFormatException(Path, $"tensor '{t.Name}': dtype {t.DType} is not supported (F32, F16, BF16 are)"),
        };
        Dequantize.Row(type, TensorData(t), v);
        return v;
    }

    bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        if (_view != null)
        {
            if (_base != null) _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }
}

/// <summary>Writes a safetensors file (tensors in the order given, packed, header padded to 8 bytes), atomically.</summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<(string Name, string DType, long[] Shape, byte[] Data)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        using var ms = new MemoryStream();
        using (var j = new Utf8JsonWriter(ms))
        {
            j.WriteStartObject();
            if (metadata != null)
            {
                j.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) j.WriteString(k, v);
                j.WriteEndObject();
            }
            long off = 0;
            foreach (var t in list)
            {
                j.WriteStartObject(t.Name);
                j.WriteString("dtype", t.DType);
                j.WriteStartArray("shape"); foreach (var d in t.Shape) j.WriteNumberValue(d); j.WriteEndArray();
                j.WriteStartArray("data_offsets"); j.WriteNumberValue(off); j.WriteNumberValue(off + t.Data.Length); j.WriteEndArray();
                j.WriteEndObject();
                off += t.Data.Length;
            }
            j.WriteEndObject();
        }
        var header = ms.ToArray().ToList();
        while (header.Count % 8 != 0) header.Add((byte)' ');
        string tmp = path + ".tmp-" + Environment.ProcessId;
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
        {
            fs.Write(BitConverter.GetBytes((ulong)header.Count));
            fs.Write(header.ToArray());
            foreach (var t in list) fs.Write(t.Data);
        }
        File.Move(tmp, path, overwrite: true);
    }

    public static byte[] Encode(float[] v, string dtype)
    {
        var type = dtype switch { "F32" => GgmlType.F32, "F16" => GgmlType.F16, "BF16" => GgmlType.BF16, _ => throw new ArgumentException(dtype) };
        var b = new byte[GgmlTypeInfo.RowBytes(type, v.Length)];
        Quantize.Row(type, v, b);
        return b;
    }
}
