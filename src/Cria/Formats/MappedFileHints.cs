using System.Runtime.InteropServices;

namespace Cria.Formats;

/// <summary>
/// Hints to the OS about a read-only model mapping. On Linux the mapping is marked MADV_HUGEPAGE, so a page fault on a
/// part of the file that is not cached reads it ahead in 2 MiB folios and maps them with 2 MiB page-table entries
/// instead of 512 small ones (a file already cached in 2 MiB folios — ext4 read-ahead builds them for a sequential
/// read — is mapped that way on Linux 6.18 with or without the hint; one cached in small folios stays small). Decode
/// streams every weight once per token; with 4 KiB pages each page is a TLB miss (a two-dimensional walk under a
/// hypervisor) and a point where the hardware prefetcher stops. Measured on the 2-core development VM: a 2-thread read
/// sweep 53–55 → 64–70 GB/s, TinyLlama F16 decode from a cold page cache 18.2 → 20.4 tok/s (docs/benchmarks.md).
/// Nothing is copied; the mapping and its bytes are unchanged. A failed call is ignored: a hint, not a requirement.
/// <c>CRIA_HUGEPAGES=0</c> turns it off, for side-by-side measurements.
/// </summary>
static unsafe class MappedFileHints
{
    const int MADV_HUGEPAGE = 14;

    [DllImport("libc", EntryPoint = "madvise")]
    static extern int Madvise(nint addr, nuint length, int advice);

    /// <summary>Marks [start, start + length) of a mapping (start page-aligned: a mapping's base) for huge pages.
    /// Returns whether the OS accepted the hint.</summary>
    public static bool PreferHugePages(byte* start, long length)
    {
        if (!OperatingSystem.IsLinux() || length <= 0 || ((nint)start & 4095) != 0) return false;
        if (Environment.GetEnvironmentVariable("CRIA_HUGEPAGES") == "0") return false;
        try { return Madvise((nint)start, (nuint)length, MADV_HUGEPAGE) == 0; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }
    }
}
