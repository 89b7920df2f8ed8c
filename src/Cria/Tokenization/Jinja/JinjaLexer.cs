using System.Globalization;
using System.Text;

namespace Cria.Tokenization.Jinja;

/// <summary>A chat template could not be parsed or rendered: a syntax error, an unknown name called, a limit
/// reached, or the template's own <c>raise_exception</c>. <see cref="Line"/> and <see cref="Column"/> (1-based) point
/// into the template text; both are 0 when the error has no place in it.</summary>
public sealed class TemplateException : CriaException
{
    public int Line { get; }
    public int Column { get; }
    /// <summary>The problem, without the position prefix of <see cref="Exception.Message"/>.</summary>
    public string Problem { get; }
    /// <summary>True when the template itself called <c>raise_exception</c> (it rejects the conversation).</summary>
    public bool Raised { get; }

    public TemplateException(string problem, int line, int column, bool raised = false)
        : base(line > 0 ? $"chat template line {line}, column {column}: {problem}" : $"chat template: {problem}")
    {
        Problem = problem; Line = line; Column = column; Raised = raised;
    }
}

enum TokenKind { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, Eof }

readonly record struct Token(TokenKind Kind, string Value, int Line, int Column)
{
    public bool Is(TokenKind k, string v) => Kind == k && Value == v;
    public bool IsOp(string v) => Kind == TokenKind.Operator && Value == v;
    public bool IsName(string v) => Kind == TokenKind.Name && Value == v;
}

/// <summary>
/// Splits template text into text runs and the tokens of <c>{{ }}</c> / <c>{% %}</c> tags (comments <c>{# #}</c> are
/// dropped), applying whitespace control as Jinja2 does: <c>-</c> on a tag side strips all whitespace on that side;
/// with <c>trim_blocks</c> the first newline after a block or comment tag is removed; with <c>lstrip_blocks</c> spaces
/// and tabs from the start of a line up to a block or comment tag are removed (<c>{%+</c> keeps them).
/// </summary>
static class JinjaLexer
{
    public static List<Token> Tokenize(string src, bool trimBlocks, bool lstripBlocks)
    {
        var tokens = new List<Token>();
        int pos = 0, n = src.Length;
        bool stripNextText = false;
        var lineStarts = new List<int> { 0 };
        for (int i = 0; i < n; i++) if (src[i] == '\n') lineStarts.Add(i + 1);
        (int, int) Where(int offset)
        {
            int lo = 0, hi = lineStarts.Count - 1;
            while (lo < hi) { int mid = (lo + hi + 1) / 2; if (lineStarts[mid] <= offset) lo = mid; else hi = mid - 1; }
            return (lo + 1, offset - lineStarts[lo] + 1);
        }
        TemplateException Error(string msg, int offset) { var (l, c) = Where(offset); return new TemplateException(msg, l, c); }

        while (pos < n)
        {
            int open = FindTagOpen(src, pos);
            int textEnd = open < 0 ? n : open;
            string text = src[pos..textEnd];
            if (stripNextText) { text = text.TrimStart(); stripNextText = false; }
            if (open < 0)
            {
                if (text.Length > 0) tokens.Add(new Token(TokenKind.Text, text, Where(pos).Item1, Where(pos).Item2));
                break;
            }
            char kind = src[open + 1]; // '{', '%' or '#'
            char modifier = open + 2 < n ? src[open + 2] : '\0';
            if (modifier == '-') text = text.TrimEnd();
            else if (lstripBlocks && kind != '{' && modifier != '+')
            {
                int j = text.Length;
                while (j > 0 && (text[j - 1] == ' ' || text[j - 1] == '\t')) j--;
                bool atLineStart = j > 0 ? text[j - 1] == '\n' : (pos == 0 || src[pos - 1] == '\n');
                if (atLineStart) text = text[..j];
            }
            if (text.Length > 0) tokens.Add(new Token(TokenKind.Text, text, Where(pos).Item1, Where(pos).Item2));
            int p = open + 2 + (modifier is '-' or '+' ? 1 : 0);

            if (kind == '#')
            {
                int close = src.IndexOf("#}", p, StringComparison.Ordinal);
                if (close < 0) throw Error("unclosed comment", open);
                bool dash = close > p && src[close - 1] == '-';
                pos = close + 2;
                if (dash) stripNextText = true;
                else if (trimBlocks) pos = SkipNewline(src, pos);
                continue;
            }

            bool block = kind == '%';
            var (ol, oc) = Where(open);
            tokens.Add(new Token(block ? TokenKind.BlockBegin : TokenKind.VarBegin, "", ol, oc));
            int depth = 0;
            while (true)
            {
                while (p < n && char.IsWhiteSpace(src[p])) p++;
                if (p >= n) throw Error(block ? "unclosed '{%' tag" : "unclosed '{{' tag", open);
                if (depth == 0)
                {
                    // End of tag: optional '-' then '%}' or '}}'.
                    int q = p; bool dash = false, plus = false;
                    if (src[q] == '-' && q + 2 < n && src[q + 1] == (block ? '%' : '}') && src[q + 2] == '}') { dash = true; q++; }
                    else if (block && src[q] == '+' && q + 2 < n && src[q + 1] == '%' && src[q + 2] == '}') { plus = true; q++; }
                    if (q + 1 < n && src[q] == (block ? '%' : '}') && src[q + 1] == '}')
                    {
                        var (el, ec) = Where(p);
                        tokens.Add(new Token(block ? TokenKind.BlockEnd : TokenKind.VarEnd, "", el, ec));
                        pos = q + 2;
                        if (dash) stripNextText = true;
                        else if (block && trimBlocks && !plus) pos = SkipNewline(src, pos);
                        // {% raw %} ... {% endraw %}: the body is text.
                        if (block && tokens.Count >= 3 && tokens[^2].IsName("raw") && tokens[^3].Kind == TokenKind.BlockBegin)
                        {
                            tokens.RemoveRange(tokens.Count - 3, 3);
                            int end = FindEndRaw(src, pos, out int after, out bool endDashLeft, out bool endDashRight);
                            if (end < 0) throw Error("unclosed '{% raw %}'", open);
                            string raw = src[pos..end];
                            if (endDashLeft) raw = raw.TrimEnd();
                            if (raw.Length > 0) tokens.Add(new Token(TokenKind.Text, raw, ol, oc));
                            pos = after;
                            if (endDashRight) stripNextText = true;
                            else if (trimBlocks) pos = SkipNewline(src, pos);
                        }
                        break;
                    }
                }
                var (tl, tc) = Where(p);
                char c = src[p];
                if (c == '\'' || c == '"')
                {
                    var sb = new StringBuilder();
                    int q = p + 1;
                    while (true)
                    {
                        if (q >= n) throw Error("unterminated string", p);
                        char d = src[q];
                        if (d == c) { q++; break; }
                        if (d == '\\' && q + 1 < n)
                        {
                            q++;
                            char e = src[q];
                            switch (e)
                            {
                                case 'n': sb.Append('\n'); q++; break;
                                case 't': sb.Append('\t'); q++; break;
                                case 'r': sb.Append('\r'); q++; break;
                                case 'b': sb.Append('\b'); q++; break;
                                case 'f': sb.Append('\f'); q++; break;
                                case 'v': sb.Append('\v'); q++; break;
                                case '0': sb.Append('\0'); q++; break;
                                case '\\': sb.Append('\\'); q++; break;
                                case '\'': sb.Append('\''); q++; break;
                                case '"': sb.Append('"'); q++; break;
                                case '\n': q++; break;
                                case 'x' or 'u' or 'U':
                                {
                                    int len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
                                    if (q + 1 + len > n || !int.TryParse(src.AsSpan(q + 1, len), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int cp)
                                        || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF && len == 8))
                                        throw Error("bad escape in string", q - 1);
                                    sb.Append(char.ConvertFromUtf32(cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp));
                                    q += 1 + len;
                                    break;
                                }
                                default: sb.Append('\\').Append(e); q++; break;
                            }
                            continue;
                        }
                        sb.Append(d); q++;
                    }
                    tokens.Add(new Token(TokenKind.String, sb.ToString(), tl, tc));
                    p = q;
                }
                else if (char.IsAsciiDigit(c))
                {
                    int q = p;
                    while (q < n && (char.IsAsciiDigit(src[q]) || src[q] == '_')) q++;
                    bool isFloat = false;
                    if (q + 1 < n && src[q] == '.' && char.IsAsciiDigit(src[q + 1]))
                    {
                        isFloat = true; q++;
                        while (q < n && (char.IsAsciiDigit(src[q]) || src[q] == '_')) q++;
                    }
                    if (q < n && (src[q] == 'e' || src[q] == 'E'))
                    {
                        int r = q + 1;
                        if (r < n && (src[r] == '+' || src[r] == '-')) r++;
                        if (r < n && char.IsAsciiDigit(src[r]))
                        {
                            isFloat = true; q = r;
                            while (q < n && char.IsAsciiDigit(src[q])) q++;
                        }
                    }
                    tokens.Add(new Token(isFloat ? TokenKind.Float : TokenKind.Integer, src[p..q].Replace("_", ""), tl, tc));
                    p = q;
                }
                else if (char.IsLetter(c) || c == '_')
                {
                    int q = p;
                    while (q < n && (char.IsLetterOrDigit(src[q]) || src[q] == '_')) q++;
                    tokens.Add(new Token(TokenKind.Name, src[p..q], tl, tc));
                    p = q;
                }
                else
                {
                    string op = p + 1 < n ? src.Substring(p, 2) : "";
                    if (op is "//" or "**" or "==" or "!=" or "<=" or ">=") { p += 2; }
                    else if ("+-*/%~<>=()[]{},.:|".Contains(c))
                    {
                        op = c.ToString(); p++;
                        if (c is '(' or '[' or '{') depth++;
                        else if (c is ')' or ']' or '}') depth = Math.Max(0, depth - 1);
                    }
                    else throw Error($"unexpected character '{c}'", p);
                    tokens.Add(new Token(TokenKind.Operator, op, tl, tc));
                }
            }
        }
        var (fl, fc) = Where(n);
        tokens.Add(new Token(TokenKind.Eof, "", fl, fc));
        return tokens;
    }

    static int FindTagOpen(string src, int from)
    {
        int i = from;
        while (true)
        {
            i = src.IndexOf('{', i);
            if (i < 0 || i + 1 >= src.Length) return -1;
            char c = src[i + 1];
            if (c is '{' or '%' or '#') return i;
            i++;
        }
    }

    static int SkipNewline(string src, int pos)
    {
        if (pos < src.Length && src[pos] == '\n') return pos + 1;
        if (pos + 1 < src.Length && src[pos] == '\r' && src[pos + 1] == '\n') return pos + 2;
        return pos;
    }

    // Finds "{% endraw %}" (with optional '-' on either side) from pos; returns its start, or -1.
    static int FindEndRaw(string src, int pos, out int after, out bool dashLeft, out bool dashRight)
    {
        int i = pos;
        while ((i = src.IndexOf("{%", i, StringComparison.Ordinal)) >= 0)
        {
            int p = i + 2;
            bool dl = p < src.Length && src[p] == '-';
            if (dl || (p < src.Length && src[p] == '+')) p++;
            while (p < src.Length && char.IsWhiteSpace(src[p])) p++;
            if (string.CompareOrdinal(src, p, "endraw", 0, 6) == 0)
            {
                p += 6;
                while (p < src.Length && char.IsWhiteSpace(src[p])) p++;
                bool dr = p < src.Length && src[p] == '-';
                if (dr) p++;
                if (p + 1 < src.Length && src[p] == '%' && src[p + 1] == '}')
                {
                    after = p + 2; dashLeft = dl; dashRight = dr;
                    return i;
                }
            }
            i += 2;
        }
        after = 0; dashLeft = dashRight = false;
        return -1;
    }
}
