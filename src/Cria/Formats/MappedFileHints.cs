using System.Globalization;
using System.Runtime.InteropServices;

namespace Cria.Formats;

/// <summary>
/// Hints to the OS about a read-only model mapping, and getting its weights into 2 MiB pages for decode.
///
/// <see cref="PreferHugePages"/> marks the mapping MADV_HUGEPAGE: a page fault on a part of the file that is not cached
/// reads it ahead in 2 MiB folios and maps them with 2 MiB page-table entries instead of 512 small ones. A part that is
/// already cached in small folios stays small, whatever the hint — and a file becomes cached in small folios when it
/// was read in small pieces, or when the kernel reclaimed part of a large folio (the development VM runs a DAMON
/// "pageout" scheme that evicts file pages idle for 60 s; refaults come back in small folios).
///
/// <see cref="MakeResident"/> is called when a model is loaded for inference: it faults the whole mapping in
/// (MADV_POPULATE_READ, as llama.cpp's mmap loader populates), then reads from /proc/self/smaps how much of it the
/// kernel mapped with 2 MiB entries; if less than 90 % of what could be, it drops this mapping's page-table entries and
/// the file's unmapped page-cache pages (POSIX_FADV_DONTNEED: clean pages only; pages another process maps stay) and
/// faults the mapping in again, which re-reads it in 2 MiB folios. Nothing is copied into the process and the bytes are
/// the file's; the cost is one read of the file, only when its cache was fragmented. Where nothing at all was in 2 MiB
/// pages, the first 4 MiB are re-read first, and the rest only if they came back in 2 MiB pages — so a file system or
/// kernel that never gives files large folios costs a 4 MiB read per load, not a whole re-read.
///
/// Why it matters: decode streams every weight once per token, and with 4 KiB pages each page is a TLB miss (a
/// two-dimensional walk under a hypervisor) and a point where the hardware prefetcher stops. Measured on the 2-core
/// development VM (docs/benchmarks.md, "Session 7"): a 2-thread read sweep 53–55 → 64–70 GB/s; TinyLlama F16 decode
/// (bandwidth-bound), 2 threads, page cache fragmented before every run, runs alternating: 18.8 / 20.9 / 20.5 tok/s
/// with 4 KiB pages, 22.4 / 24.8 / 24.8 after this step. Q4_K_M decode, bound by its kernel, does not change.
///
/// A failed call is ignored: these are hints, not requirements. <c>CRIA_HUGEPAGES=0</c> turns all of it off, for
/// side-by-side measurements.
/// </summary>
static unsafe class MappedFileHints
{
    const int MADV_DONTNEED = 4, MADV_HUGEPAGE = 14, MADV_POPULATE_READ = 22, POSIX_FADV_DONTNEED = 4;
    const long HugePage = 2 << 20;

    [DllImport("libc", EntryPoint = "madvise", SetLastError = true)]
    static extern int Madvise(nint addr, nuint length, int advice);

    [DllImport("libc", EntryPoint = "posix_fadvise")]
    static extern int Fadvise(int fd, long offset, long length, int advice);

    static bool Enabled => OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("CRIA_HUGEPAGES") != "0";

    /// <summary>Marks [start, start + length) of a mapping (start page-aligned: a mapping's base) for huge pages.
    /// Returns whether the OS accepted the hint.</summary>
    public static bool PreferHugePages(byte* start, long length)
    {
        if (!Enabled || length <= 0 || ((nint)start & 4095) != 0) return false;
        try { return Madvise((nint)start, (nuint)length, MADV_HUGEPAGE) == 0; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
    }

    /// <summary>
    /// Faults in the whole mapping of <paramref name="path"/> at <paramref name="start"/> (its base, file offset 0) and,
    /// where the kernel mapped under 90 % of its 2 MiB-aligned span with 2 MiB entries, re-reads the file so that it
    /// does (see the class summary). Returns the bytes mapped with 2 MiB entries afterwards (-1 where unknown).
    /// </summary>
    public static long MakeResident(byte* start, long length, string path, bool reread = true)
    {
        if (!Enabled || length <= 0 || ((nint)start & 4095) != 0) return -1;
        try
        {
            Madvise((nint)start, (nuint)length, MADV_POPULATE_READ);
            long huge = PmdMappedBytes(start);
            long span = HugeSpan(start, length);
            // The mapping must start on a 2 MiB boundary for file offsets and addresses to line up (the kernel aligns
            // large file mappings so); otherwise no re-read can help.
            if (!reread || span == 0 || ((nint)start & (HugePage - 1)) != 0 || huge < 0 || huge >= span * 9 / 10) return huge;
            if (huge == 0)
            {
                // Nothing in 2 MiB pages: perhaps this file system or kernel never gives a file large folios (then a
                // re-read would only cost a read from disk at every load). Re-read the first 4 MiB and look.
                long probe = Math.Min(span, 2 * HugePage);
                Madvise((nint)start, (nuint)probe, MADV_DONTNEED);
                DropPageCache(path, 0, probe);
                Madvise((nint)start, (nuint)probe, MADV_POPULATE_READ);
                if (PmdMappedBytes(start) <= 0) return 0;
            }
            Madvise((nint)start, (nuint)length, MADV_DONTNEED); // this mapping's entries only: the file's bytes stay
            DropPageCache(path, 0, 0);
            Madvise((nint)start, (nuint)length, MADV_POPULATE_READ);
            return PmdMappedBytes(start);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
        { return -1; }
    }

    /// <summary>Asks the kernel to drop the file's cached pages that no process maps (clean ones only).</summary>
    internal static void DropPageCache(string path, long offset = 0, long length = 0)
    {
        using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Fadvise((int)h.DangerousGetHandle(), offset, length, POSIX_FADV_DONTNEED); // length 0: to the end of the file
    }

    /// <summary>Bytes of [start, start + length) that lie in whole 2 MiB-aligned pages.</summary>
    static long HugeSpan(byte* start, long length)
    {
        long a = ((long)start + HugePage - 1) & ~(HugePage - 1), b = ((long)start + length) & ~(HugePage - 1);
        return Math.Max(0, b - a);
    }

    /// <summary>FilePmdMapped of the mapping that starts at <paramref name="start"/>, from /proc/self/smaps (-1 where
    /// there is no such mapping or no such field).</summary>
    public static long PmdMappedBytes(byte* start)
    {
        if (!OperatingSystem.IsLinux()) return -1;
        string head = ((ulong)start).ToString("x", CultureInfo.InvariantCulture) + "-";
        bool inside = false;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            if (!inside) { inside = line.StartsWith(head, StringComparison.Ordinal); continue; }
            if (line.StartsWith("FilePmdMapped:", StringComparison.Ordinal))
                return long.Parse(line.AsSpan(14).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture) * 1024;
            if (line.StartsWith("VmFlags:", StringComparison.Ordinal)) return -1; // the last line of a mapping's block
        }
        return -1;
    }
}
