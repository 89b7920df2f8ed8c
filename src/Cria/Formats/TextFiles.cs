namespace Cria.Formats;

/// <summary>Text outputs written whole or not at all: a temporary file beside the target, then a rename, so an
/// interrupted write never leaves a truncated file under the target's name.</summary>
public static class TextFiles
{
    public static void WriteLinesAtomically(string path, IEnumerable<string> lines) => Write(path, tmp => File.WriteAllLines(tmp, lines));

    public static void WriteAtomically(string path, string text) => Write(path, tmp => File.WriteAllText(tmp, text));

    static void Write(string path, Action<string> write)
    {
        string tmp = Path.GetFullPath(path) + ".tmp-" + Environment.ProcessId;
        try
        {
            write(tmp);
            File.Move(tmp, path, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }
}
