namespace Cria.Serving;

/// <summary>
/// An incremental recogniser of JSON (RFC 8259) over UTF-8 bytes that accepts exactly the prefixes of one JSON object
/// (OpenAI's <c>response_format: json_object</c>): leading whitespace, then an object; <see cref="IsComplete"/> once the
/// top-level object closes. The engine masks every token whose bytes would leave the accepted prefixes, so a
/// json_object response is always valid JSON (complete when it ends with "stop"). Copying a state is a few bytes, so
/// the whole vocabulary can be tried each step.
/// </summary>
public sealed class JsonObjectGrammar
{
    public const int MaxDepth = 64;

    enum Mode : byte
    {
        Start, KeyOrClose, Key, Colon, Value, ValueOrClose, After, String, Escape, Unicode,
        NumMinus, NumZero, NumInt, NumDot, NumFrac, NumE, NumESign, NumExp, Literal, Done,
    }

    readonly byte[] _stack = new byte[MaxDepth]; // 'o' object, 'a' array
    int _depth;
    Mode _mode = Mode.Start;
    bool _key;        // the string being read is an object key
    int _pending;     // hex digits left in \uXXXX, or literal bytes left
    byte _literal;    // which literal: 't', 'f', 'n'
    int _literalPos;

    public bool IsComplete => _mode == Mode.Done;

    public void CopyFrom(JsonObjectGrammar o)
    {
        Array.Copy(o._stack, _stack, o._depth);
        _depth = o._depth; _mode = o._mode; _key = o._key; _pending = o._pending; _literal = o._literal; _literalPos = o._literalPos;
    }

    /// <summary>Feeds bytes; false (state then undefined) when they leave the JSON-object prefixes.</summary>
    public bool Accept(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes) if (!Accept(b)) return false;
        return true;
    }

    static bool Ws(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';
    static bool Digit(byte b) => b is >= (byte)'0' and <= (byte)'9';
    static bool Hex(byte b) => Digit(b) || b is >= (byte)'a' and <= (byte)'f' || b is >= (byte)'A' and <= (byte)'F';
    static ReadOnlySpan<byte> Literal(byte l) => l == 't' ? "true"u8 : l == 'f' ? "false"u8 : "null"u8;

    bool Open(byte kind, Mode next)
    {
        if (_depth == MaxDepth) return false;
        _stack[_depth++] = kind;
        _mode = next;
        return true;
    }

    bool Close(byte kind)
    {
        if (_depth == 0 || _stack[_depth - 1] != kind) return false;
        _depth--;
        _mode = _depth == 0 ? Mode.Done : Mode.After;
        return true;
    }

    bool StartValue(byte b)
    {
        switch (b)
        {
            case (byte)'{': return Open((byte)'o', Mode.KeyOrClose);
            case (byte)'[': return Open((byte)'a', Mode.ValueOrClose);
            case (byte)'"': _key = false; _mode = Mode.String; return true;
            case (byte)'-': _mode = Mode.NumMinus; return true;
            case (byte)'0': _mode = Mode.NumZero; return true;
            case (byte)'t' or (byte)'f' or (byte)'n': _literal = b; _literalPos = 1; _mode = Mode.Literal; return true;
            default:
                if (b is >= (byte)'1' and <= (byte)'9') { _mode = Mode.NumInt; return true; }
                return false;
        }
    }

    /// <summary>After a value: whitespace, a comma or the container's close.</summary>
    bool AfterValue(byte b)
    {
        if (Ws(b)) { _mode = Mode.After; return true; }
        byte top = _stack[_depth - 1];
        if (b == (byte)',') { _mode = top == 'o' ? Mode.Key : Mode.Value; return true; }
        if (b == (byte)'}') return Close((byte)'o');
        if (b == (byte)']') return Close((byte)'a');
        return false;
    }

    public bool Accept(byte b)
    {
        switch (_mode)
        {
            case Mode.Start:
                if (Ws(b)) return true;
                return b == (byte)'{' && Open((byte)'o', Mode.KeyOrClose);
            case Mode.KeyOrClose:
                if (Ws(b)) return true;
                if (b == (byte)'}') return Close((byte)'o');
                if (b == (byte)'"') { _key = true; _mode = Mode.String; return true; }
                return false;
            case Mode.Key:
                if (Ws(b)) return true;
                if (b == (byte)'"') { _key = true; _mode = Mode.String; return true; }
                return false;
            case Mode.Colon:
                if (Ws(b)) return true;
                if (b == (byte)':') { _mode = Mode.Value; return true; }
                return false;
            case Mode.Value:
                return Ws(b) || StartValue(b);
            case Mode.ValueOrClose:
                if (Ws(b)) return true;
                if (b == (byte)']') return Close((byte)'a');
                return StartValue(b);
            case Mode.After:
                return AfterValue(b);
            case Mode.String:
                if (b == (byte)'"') { _mode = _key ? Mode.Colon : Mode.After; return true; }
                if (b == (byte)'\\') { _mode = Mode.Escape; return true; }
                return b >= 0x20; // control characters must be escaped; bytes ≥ 0x80 are UTF-8 inside the string
            case Mode.Escape:
                if (b == (byte)'u') { _pending = 4; _mode = Mode.Unicode; return true; }
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { _mode = Mode.String; return true; }
                return false;
            case Mode.Unicode:
                if (!Hex(b)) return false;
                if (--_pending == 0) _mode = Mode.String;
                return true;
            case Mode.NumMinus:
                if (b == (byte)'0') { _mode = Mode.NumZero; return true; }
                if (b is >= (byte)'1' and <= (byte)'9') { _mode = Mode.NumInt; return true; }
                return false;
            case Mode.NumZero:
            case Mode.NumInt:
                if (_mode == Mode.NumInt && Digit(b)) return true;
                if (b == (byte)'.') { _mode = Mode.NumDot; return true; }
                if (b is (byte)'e' or (byte)'E') { _mode = Mode.NumE; return true; }
                return AfterValue(b);
            case Mode.NumDot:
                if (Digit(b)) { _mode = Mode.NumFrac; return true; }
                return false;
            case Mode.NumFrac:
                if (Digit(b)) return true;
                if (b is (byte)'e' or (byte)'E') { _mode = Mode.NumE; return true; }
                return AfterValue(b);
            case Mode.NumE:
                if (b is (byte)'+' or (byte)'-') { _mode = Mode.NumESign; return true; }
                if (Digit(b)) { _mode = Mode.NumExp; return true; }
                return false;
            case Mode.NumESign:
                if (Digit(b)) { _mode = Mode.NumExp; return true; }
                return false;
            case Mode.NumExp:
                if (Digit(b)) return true;
                return AfterValue(b);
            case Mode.Literal:
                var lit = Literal(_literal);
                if (b != lit[_literalPos]) return false;
                if (++_literalPos == lit.Length) _mode = Mode.After;
                return true;
            default: // Done: nothing may follow the object
                return false;
        }
    }
}
