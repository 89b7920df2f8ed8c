namespace Cria.Tests;

/// <summary>Locations shared by the tests: the repository root and a per-run scratch directory.</summary>
public static class TestPaths
{
    public static string RepoRoot { get; } = FindRoot();

    static string FindRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d != null && !File.Exists(Path.Combine(d.FullName, "Cria.slnx"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("cannot find the repository root (Cria.slnx) above " + AppContext.BaseDirectory);
    }

    /// <summary>The run's scratch directory (a full run writes ~300 MB of model files there), removed when the test
    /// process exits normally; the test host is often stopped before that, so each run also removes the directories of
    /// runs whose process is gone — at most one is left on disk.</summary>
    static readonly Lazy<string> _scratch = new(() =>
    {
        RemoveLeftovers();
        var p = Path.Combine(Path.GetTempPath(), "cria-tests-" + Environment.ProcessId);
        Directory.CreateDirectory(p);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => TryDelete(p);
        return p;
    });

    static void RemoveLeftovers()
    {
        foreach (var dir in Directory.GetDirectories(Path.GetTempPath(), "cria-tests-*"))
            if (int.TryParse(Path.GetFileName(dir)["cria-tests-".Length..], out int pid) && !IsRunning(pid)) TryDelete(dir);
    }

    static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }     // no such process
        catch (InvalidOperationException) { return false; }
    }

    static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, recursive: true); }
        catch (IOException) { }                          // a file still open elsewhere: left for the next run
        catch (UnauthorizedAccessException) { }
    }

    public static string Scratch => _scratch.Value;

    public static string TempFile(string name) => Path.Combine(Scratch, name);

    /// <summary>A bundled model (<c>models/NAME</c>: default.gguf, draft.gguf, passkey.gguf).</summary>
    public static string Bundled(string name = "default.gguf") => Path.Combine(RepoRoot, "models", name);
}
