using System.Text;

namespace Cria.Tokenization;

/// <summary>
/// Turns tokens, one at a time, into text without ever splitting a UTF-8 character: bytes of an incomplete character
/// are held until the token that completes it arrives. Bytes that can no longer become a valid character are emitted as
/// U+FFFD (same rules as <see cref="Encoding.UTF8"/>). The first token's leading space is dropped when the tokenizer
/// adds a space prefix (as llama.cpp's detokenizer does), so the concatenation of everything <see cref="Add"/> and
/// <see cref="Flush"/> return equals <see cref="Tokenizer.Decode"/> of the same tokens. Not thread-safe.
/// </summary>
public sealed class StreamingDecoder
{
    readonly Tokenizer _tokenizer;
    readonly bool _renderSpecial;
    readonly Decoder _utf8 = new UTF8Encoding(false, false).GetDecoder();
    char[] _chars = new char[64];
    bool _first = true;

    public StreamingDecoder(Tokenizer tokenizer, bool renderSpecial = false)
    {
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
        _renderSpecial = renderSpecial;
    }

    /// <summary>Adds one token; returns the text it completes (possibly empty). Out-of-range ids throw <see cref="ArgumentOutOfRangeException"/>.</summary>
    public string Add(int token)
    {
        var bytes = _tokenizer.TokenBytes(token, _renderSpecial, _first && _tokenizer.AddSpacePrefix ? 1 : 0);
        _first = false;
        return Convert(bytes, flush: false);
    }

    /// <summary>Ends the stream: returns U+FFFD for bytes of a character that never completed, and starts a new stream.</summary>
    public string Flush()
    {
        string s = Convert([], flush: true);
        _first = true;
        return s;
    }

    /// <summary>The next token continues text already shown (a prompt), so its leading space is kept.</summary>
    public void ContinueText() => _first = false;

    /// <summary>Forgets held bytes and starts a new stream.</summary>
    public void Reset() { _utf8.Reset(); _first = true; }

    string Convert(ReadOnlySpan<byte> bytes, bool flush)
    {
        int need = _utf8.GetCharCount(bytes, flush);
        if (need > _chars.Length) _chars = new char[Math.Max(need, _chars.Length * 2)];
        int n = _utf8.GetChars(bytes, _chars, flush);
        return n == 0 ? string.Empty : new string(_chars, 0, n);
    }
}
