using System.IO.MemoryMappedFiles;
using System.Runtime.CompilerServices;
using System.Text;
using Cria.Tensors;

namespace Cria.Formats;

/// <summary>
/// A GGUF (v2/v3) file opened over a read-only memory map. Metadata and tensor infos are parsed eagerly with every
/// count, length and offset checked against the file size; tensor data is never copied — <see cref="TensorData"/>
/// returns a span into the mapping. Any malformation raises <see cref="ModelFormatException"/> naming the file.
/// </summary>
public sealed unsafe class GgufFile : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" little-endian
    public const int DefaultAlignment = 32;
    /// <summary>ggml's GGML_MAX_DIMS.</summary>
    public const int MaxDims = 4;

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly byte* _base;
    readonly long _length;
    readonly Dictionary<string, GgufTensorInfo> _byName;

    public string Path { get; }
    public uint Version { get; }
    public int Alignment { get; }
    /// <summary>Absolute file offset where tensor data begins.</summary>
    public long DataOffset { get; }
    public IReadOnlyDictionary<string, object> Metadata { get; }
    /// <summary>Metadata keys in file order.</summary>
    public IReadOnlyList<string> MetadataKeys { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    public long FileSize => _length;

    GgufFile(string path)
    {
        Path = path;
        long length;
        try
        {
            var fi = new FileInfo(path);
            // A symbolic link's own FileInfo reports the link's size; measure the file it points to.
            if (fi.LinkTarget != null && fi.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target) fi = target;
            length = fi.Length;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        { throw new ModelFormatException(path, "cannot read file: " + e.Message, e); }
        if (!File.Exists(path)) throw new ModelFormatException(path, "file not found");
        if (length < 24) throw new ModelFormatException(path, $"file is {length} bytes, too short for a GGUF header");
        _length = length;
        try
        {
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            MappedFileHints.PreferHugePages(p, _length);
            _base = p + _view.PointerOffset;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Dispose();
            throw new ModelFormatException(path, "cannot map file: " + e.Message, e);
        }

        try
        {
            var r = new Reader(_base, _length, path);
            uint magic = r.U32();
            if (magic != Magic) throw r.Fail($"bad magic 0x{magic:X8} (expected 'GGUF')");
            Version = r.U32();
            if (Version is not (2 or 3)) throw r.Fail($"GGUF version {Version} is not supported (2 and 3 are)");
            ulong nTensors = r.U64(), nKv = r.U64();
            // Each KV takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info at least 8+4+8+4+8.
            if (nKv > (ulong)(_length / 13)) throw r.Fail($"metadata count {nKv} cannot fit in the file");
            if (nTensors > (ulong)(_length / 32)) throw r.Fail($"tensor count {nTensors} cannot fit in the file");

            var meta = new Dictionary<string, object>((int)nKv, StringComparer.Ordinal);
            var keys = new List<string>((int)nKv);
            for (ulong i = 0; i < nKv; i++)
            {
                string key = r.Str();
                var type = (GgufValueType)r.U32();
                object value = r.Value(type, key, depth: 0);
                if (!meta.TryAdd(key, value)) throw r.Fail($"duplicate metadata key '{key}'");
                keys.Add(key);
            }
            Metadata = meta;
            MetadataKeys = keys;

            int alignment = DefaultAlignment;
            if (meta.TryGetValue("general.alignment", out var a))
            {
                if (a is not uint ua || ua == 0 || (ua & (ua - 1)) != 0 || ua > 1 << 20)
                    throw r.Fail($"general.alignment must be a power-of-two uint32, got {a}");
                alignment = (int)ua;
            }
            Alignment = alignment;

            var infos = new List<GgufTensorInfo>((int)nTensors);
            _byName = new Dictionary<string, GgufTensorInfo>((int)nTensors, StringComparer.Ordinal);
            for (ulong i = 0; i < nTensors; i++)
            {
                string name = r.Str();
                uint nDims = r.U32();
                if (nDims > MaxDims) throw r.Fail($"tensor '{name}' has {nDims} dimensions (at most {MaxDims})");
                var shape = new long[nDims];
                long elements = 1;
                for (int d = 0; d < nDims; d++)
                {
                    ulong ne = r.U64();
                    if (ne == 0 || ne > (ulong)_length * 8) throw r.Fail($"tensor '{name}' has impossible dimension {d} = {ne}");
                    shape[d] = (long)ne;
                    if (elements > long.MaxValue / (long)ne) throw r.Fail($"tensor '{name}' element count overflows");
                    elements *= (long)ne;
                }
                if (elements > _length * 8) throw r.Fail($"tensor '{name}' has {elements} elements, more than the file could hold");
                uint rawType = r.U32();
                var type = (GgmlType)rawType;
                if (!GgmlTypeInfo.IsKnown(type))
                    throw r.Fail(Enum.IsDefined(type)
                        ? $"tensor '{name}' has type {type} ({rawType}), which Cria does not read"
                        : $"tensor '{name}' has unknown tensor type {rawType}");
                int bs = GgmlTypeInfo.BlockSize(type);
                long rowLen = nDims == 0 ? 1 : shape[0];
                if (rowLen % bs != 0) throw r.Fail($"tensor '{name}' row length {rowLen} is not a multiple of the {type} block size {bs}");
                ulong offset = r.U64();
                if (offset % (ulong)alignment != 0) throw r.Fail($"tensor '{name}' offset {offset} is not aligned to {alignment}");
                var info = new GgufTensorInfo(name, shape, type, (long)Math.Min(offset, long.MaxValue));
                if (!_byName.TryAdd(name, info)) throw r.Fail($"duplicate tensor name '{name}'");
                infos.Add(info);
            }
            long dataOffset = AlignUp(r.Position, alignment);
            if (nTensors > 0 && dataOffset > _length) throw r.Fail("tensor data section starts past the end of the file");
            DataOffset = dataOffset;
            long dataSize = _length - dataOffset;
            foreach (var t in infos)
            {
                long size = t.ByteSize; // cannot overflow: elements ≤ 8·filesize^... checked below
                if (size < 0 || t.Offset > dataSize || size > dataSize - t.Offset)
                    throw new ModelFormatException(path, $"tensor '{t.Name}' ({t.Type}, {size} bytes at data offset {t.Offset}) lies outside the file (data section is {dataSize} bytes)");
            }
            Tensors = infos;
        }
        catch (ModelFormatException) { Dispose(); throw; }
        catch (Exception e) when (e is OverflowException or ArgumentException or DecoderFallbackException or OutOfMemoryException)
        {
            Dispose();
            throw new ModelFormatException(path, "malformed GGUF header: " + e.Message, e);
        }
    }

    /// <summary>Opens and validates a GGUF file. Throws <see cref="ModelFormatException"/> on any problem.</summary>
    public static GgufFile Open(string path) => new(path);

    static long AlignUp(long x, int a) => (x + a - 1) / a * a;

    public bool TryGetTensor(string name, out GgufTensorInfo info) => _byName.TryGetValue(name, out info!);

    public GgufTensorInfo GetTensor(string name) =>
        _byName.TryGetValue(name, out var t) ? t : throw new ModelFormatException(Path, $"missing tensor '{name}'");

    /// <summary>Pointer to the first byte of a tensor's data inside the mapping (valid until Dispose).</summary>
    public byte* TensorPointer(GgufTensorInfo t) => _base + DataOffset + t.Offset;

    /// <summary>Faults the whole file in for decode, in 2 MiB pages where the OS allows (re-reading it once if its page
    /// cache is fragmented; <see cref="MappedFileHints.MakeResident"/>). Returns the bytes mapped in 2 MiB pages
    /// afterwards, -1 where unknown (not Linux, or <c>CRIA_HUGEPAGES=0</c>).</summary>
    public long MakeResident() => MappedFileHints.MakeResident(_base, _length, Path);

    /// <summary>Faults the whole file in as its page cache stands, without re-reading it (tests: the state before).</summary>
    internal long Populate() => MappedFileHints.MakeResident(_base, _length, Path, reread: false);

    /// <summary>The mapping's first byte (bench probes read the file through it).</summary>
    internal byte* BasePointer => _base;

    /// <summary>Bytes of the mapping the kernel maps with 2 MiB entries now (-1 where unknown).</summary>
    public long HugePageBytes => OperatingSystem.IsLinux() ? MappedFileHints.PmdMappedBytes(_base) : -1;


    /// <summary>The bytes of a tensor (at most 2 GiB; use <see cref="TensorPointer"/> beyond that).</summary>
    public ReadOnlySpan<byte> TensorData(GgufTensorInfo t)
    {
        if (t.ByteSize > int.MaxValue) throw new ModelFormatException(Path, $"tensor '{t.Name}' is larger than 2 GiB; use TensorPointer");
        return new ReadOnlySpan<byte>(TensorPointer(t), (int)t.ByteSize);
    }

    /// <summary>A tensor's values as F32, dequantized from any stored type (<see cref="Dequantize.Row"/>); at most one
    /// .NET array of values and 2 GiB of bytes.</summary>
    public float[] ReadF32(string name)
    {
        var t = GetTensor(name);
        var v = new float[t.ElementCount];                   // [rows, cols] (row-major, as stored)
        Dequantize.Row(t.Type, TensorData(t), v);
        return v;
    }

    // ---- typed metadata access -------------------------------------------------------------------------------------

    public bool Has(string key) => Metadata.ContainsKey(key);

    /// <summary>A metadata value converted to T (integers widen/narrow when the value fits).</summary>
    public T Get<T>(string key)
    {
        if (!Metadata.TryGetValue(key, out var v)) throw new ModelFormatException(Path, $"missing metadata key '{key}'");
        return Convert<T>(key, v);
    }

    public T Get<T>(string key, T fallback) => Metadata.TryGetValue(key, out var v) ? Convert<T>(key, v) : fallback;

    public bool TryGet<T>(string key, out T value)
    {
        if (Metadata.TryGetValue(key, out var v)) { value = Convert<T>(key, v); return true; }
        value = default!;
        return false;
    }

    T Convert<T>(string key, object v)
    {
        if (v is T t) return t;
        try
        {
            if (typeof(T) == typeof(int) || typeof(T) == typeof(long) || typeof(T) == typeof(uint) || typeof(T) == typeof(ulong))
            {
                if (v is byte or sbyte or ushort or short or uint or int or ulong or long)
                    return (T)System.Convert.ChangeType(v, typeof(T), System.Globalization.CultureInfo.InvariantCulture);
            }
            if (typeof(T) == typeof(float) && v is double d) return (T)(object)(float)d;
            if (typeof(T) == typeof(double) && v is float f) return (T)(object)(double)f;
            if (typeof(T) == typeof(int[]) && v is Array arr && arr.GetType().GetElementType() is { IsPrimitive: true } && v is not float[] and not double[] and not bool[])
            {
                var res = new int[arr.Length];
                for (int i = 0; i < res.Length; i++) res[i] = System.Convert.ToInt32(arr.GetValue(i), System.Globalization.CultureInfo.InvariantCulture);
                return (T)(object)res;
            }
        }
        catch (OverflowException) { }
        throw new ModelFormatException(Path, $"metadata key '{key}' has type {v.GetType().Name}, expected {typeof(T).Name}");
    }

    public void Dispose()
    {
        if (_view != null)
        {
            try { _view.SafeMemoryMappedViewHandle.ReleasePointer(); } catch (InvalidOperationException) { }
            _view.Dispose();
        }
        _map?.Dispose();
    }

    /// <summary>Bounds-checked little-endian cursor over the mapped header.</summary>
    struct Reader(byte* p, long length, string path)
    {
        long _pos;
        public readonly long Position => _pos;

        public readonly ModelFormatException Fail(string what) => new(path, $"{what} (at byte {_pos})");

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        byte* Take(long n)
        {
            if (n < 0 || n > length - _pos) throw Fail($"unexpected end of file: needed {n} more bytes, {length - _pos} left");
            byte* q = p + _pos;
            _pos += n;
            return q;
        }

        public uint U32() => Unsafe.ReadUnaligned<uint>(Take(4));
        public ulong U64() => Unsafe.ReadUnaligned<ulong>(Take(8));

        public string Str()
        {
            ulong n = U64();
            if (n > (ulong)(length - _pos)) throw Fail($"string length {n} runs past the end of the file");
            if (n > int.MaxValue) throw Fail($"string length {n} too large");
            byte* s = Take((long)n);
            try { return Utf8Strict.GetString(s, (int)n); }
            catch (DecoderFallbackException) { throw Fail("string is not valid UTF-8"); }
        }

        public object Value(GgufValueType type, string key, int depth)
        {
            switch (type)
            {
                case GgufValueType.UInt8: return *Take(1);
                case GgufValueType.Int8: return (sbyte)*Take(1);
                case GgufValueType.UInt16: return Unsafe.ReadUnaligned<ushort>(Take(2));
                case GgufValueType.Int16: return Unsafe.ReadUnaligned<short>(Take(2));
                case GgufValueType.UInt32: return U32();
                case GgufValueType.Int32: return Unsafe.ReadUnaligned<int>(Take(4));
                case GgufValueType.Float32: return Unsafe.ReadUnaligned<float>(Take(4));
                case GgufValueType.Bool:
                    byte b = *Take(1);
                    if (b > 1) throw Fail($"metadata '{key}': bool byte {b} is neither 0 nor 1");
                    return b == 1;
                case GgufValueType.String: return Str();
                case GgufValueType.UInt64: return U64();
                case GgufValueType.Int64: return Unsafe.ReadUnaligned<long>(Take(8));
                case GgufValueType.Float64: return Unsafe.ReadUnaligned<double>(Take(8));
                case GgufValueType.Array:
                    if (depth > 0) throw Fail($"metadata '{key}': nested arrays are not supported");
                    var et = (GgufValueType)U32();
                    ulong count = U64();
                    int min = et == GgufValueType.String ? 8 : GgufValues.ScalarSize(et);
                    if (et == GgufValueType.Array || (min == 0)) throw Fail($"metadata '{key}': array of unsupported element type {(uint)et}");
                    if (count > (ulong)((length - _pos) / min)) throw Fail($"metadata '{key}': array count {count} cannot fit in the file");
                    return Array(et, (int)count, key);
                default:
                    throw Fail($"metadata '{key}' has unknown value type {(uint)type}");
            }
        }

        object Array(GgufValueType et, int n, string key)
        {
            switch (et)
            {
                case GgufValueType.String: { var a = new string[n]; for (int i = 0; i < n; i++) a[i] = Str(); return a; }
                case GgufValueType.Bool:
                {
                    var a = new bool[n];
                    for (int i = 0; i < n; i++) { byte b = *Take(1); if (b > 1) throw Fail($"metadata '{key}': bool byte {b}"); a[i] = b == 1; }
                    return a;
                }
                case GgufValueType.UInt8: return Copy<byte>(n);
                case GgufValueType.Int8: return Copy<sbyte>(n);
                case GgufValueType.UInt16: return Copy<ushort>(n);
                case GgufValueType.Int16: return Copy<short>(n);
                case GgufValueType.UInt32: return Copy<uint>(n);
                case GgufValueType.Int32: return Copy<int>(n);
                case GgufValueType.Float32: return Copy<float>(n);
                case GgufValueType.UInt64: return Copy<ulong>(n);
                case GgufValueType.Int64: return Copy<long>(n);
                case GgufValueType.Float64: return Copy<double>(n);
                default: throw Fail($"metadata '{key}': array of unknown element type {(uint)et}");
            }
        }

        T[] Copy<T>(int n) where T : unmanaged
        {
            byte* src = Take((long)n * sizeof(T));
            var a = new T[n];
            new ReadOnlySpan<T>(src, n).CopyTo(a); // assumes a little-endian host, as ggml does
            return a;
        }
    }

    static readonly UTF8Encoding Utf8Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
}
