using System.Text.Json;

namespace Cria.Formats;

/// <summary>JSON Lines (the training and rating files): one JSON object per non-blank line.</summary>
public static class JsonLines
{
    /// <summary>Each object with its 1-based line number. A missing file, a line that is not JSON and a value that is
    /// not an object are refused with the file and line.</summary>
    public static IEnumerable<(int Line, JsonElement Object)> Objects(string path)
    {
        if (!File.Exists(path)) throw new CriaException($"{path} does not exist");
        return Read(path);
    }

    static IEnumerable<(int, JsonElement)> Read(string path)
    {
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            JsonElement e;
            try { e = JsonDocument.Parse(text).RootElement; }
            catch (JsonException ex) { throw new CriaException($"{path}:{line}: not JSON ({ex.Message})"); }
            if (e.ValueKind != JsonValueKind.Object) throw new CriaException($"{path}:{line}: expected a JSON object");
            yield return (line, e);
        }
    }
}
