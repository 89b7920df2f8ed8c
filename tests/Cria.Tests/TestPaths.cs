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

    static readonly Lazy<string> _scratch = new(() =>
    {
        var p = Path.Combine(Path.GetTempPath(), "cria-tests-" + Environment.ProcessId);
        Directory.CreateDirectory(p);
        return p;
    });

    public static string Scratch => _scratch.Value;

    public static string TempFile(string name) => Path.Combine(Scratch, name);
}
