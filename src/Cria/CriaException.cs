namespace Cria;

/// <summary>Base type of every error Cria raises on purpose (bad input, unsupported feature, misuse).</summary>
public class CriaException : Exception
{
    public CriaException(string message) : base(message) { }
    public CriaException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A model file (GGUF, safetensors, config) is malformed, truncated, or asks for something Cria cannot do.
/// The message always names the file and what is wrong with it.</summary>
public sealed class ModelFormatException : CriaException
{
    public string FilePath { get; }
    public ModelFormatException(string filePath, string problem)
        : base($"{filePath}: {problem}") => FilePath = filePath;
    public ModelFormatException(string filePath, string problem, Exception inner)
        : base($"{filePath}: {problem}", inner) => FilePath = filePath;
}
