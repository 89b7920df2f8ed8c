using System.Globalization;
using System.Text;

namespace Cria.Tokenization.Jinja;

/// <summary>The value of a name that is not defined (Jinja2's default <c>Undefined</c>): it prints as nothing, is
/// false, iterates as empty, and any other use (arithmetic, attribute access, calls) is an error.</summary>
public sealed class JinjaUndefined
{
    public string Name { get; }
    public JinjaUndefined(string name) { Name = name; }
    public override string ToString() => "";
}

/// <summary>A <c>namespace()</c> object: attributes that a <c>set ns.x = ...</c> inside a loop can change.</summary>
public sealed class JinjaNamespace
{
    public OrderedDictionary<string, object?> Attributes { get; } = new();
}

/// <summary>A callable value (a global function or a macro).</summary>
public sealed class JinjaFunction(string name, Func<List<object?>, List<(string Name, object? Value)>, object?> call)
{
    public string Name { get; } = name;
    internal Func<List<object?>, List<(string Name, object? Value)>, object?> Call { get; } = call;
}

/// <summary>The <c>loop</c> variable of a for loop.</summary>
sealed class LoopInfo(int index0, int length, object? prev, object? next)
{
    public readonly int Index0 = index0, Length = length;
    public readonly object? Prev = prev, Next = next;
}

/// <summary>
/// The values templates see: <c>null</c> (none), <see cref="JinjaUndefined"/>, bool, long, double, string,
/// <c>List&lt;object?&gt;</c> (lists and tuples), <c>OrderedDictionary&lt;string, object?&gt;</c> (dicts),
/// <see cref="JinjaNamespace"/>, <see cref="JinjaFunction"/>. Conversions and Python-compatible printing.
/// </summary>
public static class JinjaValue
{
    /// <summary>Converts .NET data (strings, numbers, bools, lists, dictionaries, JSON elements) to template values.</summary>
    public static object? From(object? v) => v switch
    {
        null => null,
        string or bool or long or double or JinjaUndefined or JinjaNamespace or JinjaFunction => v,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        float f => (double)f,
        decimal m => (double)m,
        System.Text.Json.JsonElement j => FromJson(j),
        System.Text.Json.Nodes.JsonNode n => FromJson(System.Text.Json.JsonSerializer.SerializeToElement(n)),
        System.Collections.IDictionary d => FromDictionary(d),
        System.Collections.IEnumerable e => e.Cast<object?>().Select(From).ToList(),
        _ => v.ToString(),
    };

    static OrderedDictionary<string, object?> FromDictionary(System.Collections.IDictionary d)
    {
        var r = new OrderedDictionary<string, object?>();
        foreach (System.Collections.DictionaryEntry e in d) r[Convert.ToString(e.Key, CultureInfo.InvariantCulture) ?? ""] = From(e.Value);
        return r;
    }

    public static object? FromJson(System.Text.Json.JsonElement j)
    {
        switch (j.ValueKind)
        {
            case System.Text.Json.JsonValueKind.String: return j.GetString();
            case System.Text.Json.JsonValueKind.True: return true;
            case System.Text.Json.JsonValueKind.False: return false;
            case System.Text.Json.JsonValueKind.Number:
                return j.TryGetInt64(out long l) ? (object)l : j.GetDouble(); // (object): else both arms become double
            case System.Text.Json.JsonValueKind.Array:
                return j.EnumerateArray().Select(FromJson).ToList();
            case System.Text.Json.JsonValueKind.Object:
            {
                var d = new OrderedDictionary<string, object?>();
                foreach (var p in j.EnumerateObject()) d[p.Name] = FromJson(p.Value);
                return d;
            }
            default: return null;
        }
    }

    public static bool Truthy(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        OrderedDictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python's <c>str()</c> of a value, as <c>{{ }}</c> prints it (undefined prints as nothing).</summary>
    public static string Str(object? v, int maxLength = int.MaxValue) => v switch
    {
        string s => s,
        JinjaUndefined => "",
        _ => Repr(v, maxLength),
    };

    /// <summary>Python's <c>repr()</c> (how values inside lists and dicts print).</summary>
    public static string Repr(object? v, int maxLength = int.MaxValue)
    {
        var sb = new StringBuilder();
        Repr(sb, v, 0, maxLength);
        return sb.ToString();
    }

    static void Repr(StringBuilder sb, object? v, int depth, int max)
    {
        if (depth > 100) throw new JinjaError("value nested too deeply to print");
        if (sb.Length > max) throw new JinjaError($"the template built a string longer than {max} characters");
        switch (v)
        {
            case null: sb.Append("None"); break;
            case JinjaUndefined: break;
            case bool b: sb.Append(b ? "True" : "False"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d: sb.Append(FormatFloat(d)); break;
            case string s: ReprString(sb, s); break;
            case List<object?> list:
                sb.Append('[');
                for (int i = 0; i < list.Count; i++) { if (i > 0) sb.Append(", "); Repr(sb, list[i], depth + 1, max); }
                sb.Append(']');
                break;
            case OrderedDictionary<string, object?> dict:
            {
                sb.Append('{');
                bool first = true;
                foreach (var kv in dict)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    ReprString(sb, kv.Key); sb.Append(": "); Repr(sb, kv.Value, depth + 1, max);
                }
                sb.Append('}');
                break;
            }
            case JinjaNamespace: sb.Append("<Namespace>"); break;
            case JinjaFunction f: sb.Append("<function ").Append(f.Name).Append('>'); break;
            default: sb.Append(v); break;
        }
    }

    static void ReprString(StringBuilder sb, string s)
    {
        char q = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        sb.Append(q);
        foreach (char c in s)
        {
            switch (c)
            {
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c == q) sb.Append('\\').Append(c);
                    else if (c < 0x20 || c == 0x7f) sb.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append(q);
    }

    /// <summary>Python's float repr: shortest round-trip digits, always with a '.' or an exponent.</summary>
    public static string FormatFloat(double d)
    {
        if (double.IsNaN(d)) return "nan";
        if (double.IsInfinity(d)) return d > 0 ? "inf" : "-inf";
        if (d == 0) return double.IsNegative(d) ? "-0.0" : "0.0";
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int e = 0, ei = r.IndexOf('E');
        string m = r;
        if (ei >= 0) { e = int.Parse(r[(ei + 1)..], CultureInfo.InvariantCulture); m = r[..ei]; }
        int dot = m.IndexOf('.');
        string intPart = dot >= 0 ? m[..dot] : m, frac = dot >= 0 ? m[(dot + 1)..] : "";
        string all = intPart + frac;
        int lead = all.Length - all.TrimStart('0').Length;
        string digits = all.TrimStart('0').TrimEnd('0');
        int point = intPart.Length + e - lead; // value = 0.digits * 10^point
        int exp10 = point - 1;
        string body;
        if (exp10 >= -4 && exp10 < 16)
        {
            if (point <= 0) body = "0." + new string('0', -point) + digits;
            else if (point >= digits.Length) body = digits + new string('0', point - digits.Length) + ".0";
            else body = digits[..point] + "." + digits[point..];
        }
        else
            body = digits[..1] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (exp10 < 0 ? "-" : "+") + Math.Abs(exp10).ToString("00", CultureInfo.InvariantCulture);
        return d < 0 ? "-" + body : body;
    }

    /// <summary>Python's <c>json.dumps</c> as transformers' <c>tojson</c> calls it (ensure_ascii off): separators
    /// <c>", "</c> and <c>": "</c>, or with an indent newlines and <c>","</c>.</summary>
    public static string ToJson(object? v, int? indent, bool sortKeys = false, int maxLength = int.MaxValue)
    {
        var sb = new StringBuilder();
        Json(sb, v, indent is < 0 ? 0 : indent > 100 ? 100 : indent, 0, sortKeys, maxLength);
        return sb.ToString();
    }

    static void Json(StringBuilder sb, object? v, int? indent, int level, bool sortKeys, int max)
    {
        if (level > 100) throw new JinjaError("value nested too deeply for tojson");
        if (sb.Length > max) throw new JinjaError($"the template built a string longer than {max} characters");
        switch (v)
        {
            case null: sb.Append("null"); break;
            case JinjaUndefined: throw new JinjaError("tojson of an undefined value");
            case bool b: sb.Append(b ? "true" : "false"); break;
            case long l: sb.Append(l.ToString(CultureInfo.InvariantCulture)); break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : FormatFloat(d));
                break;
            case string s: JsonString(sb, s); break;
            case List<object?> list:
                if (list.Count == 0) { sb.Append("[]"); break; }
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(indent == null ? ", " : ",");
                    NewLine(sb, indent, level + 1);
                    Json(sb, list[i], indent, level + 1, sortKeys, max);
                }
                NewLine(sb, indent, level);
                sb.Append(']');
                break;
            case OrderedDictionary<string, object?> dict:
            {
                if (dict.Count == 0) { sb.Append("{}"); break; }
                sb.Append('{');
                bool first = true;
                IEnumerable<KeyValuePair<string, object?>> items = sortKeys ? dict.OrderBy(kv => kv.Key, StringComparer.Ordinal) : dict;
                foreach (var kv in items)
                {
                    if (!first) sb.Append(indent == null ? ", " : ",");
                    first = false;
                    NewLine(sb, indent, level + 1);
                    JsonString(sb, kv.Key);
                    sb.Append(": ");
                    Json(sb, kv.Value, indent, level + 1, sortKeys, max);
                }
                NewLine(sb, indent, level);
                sb.Append('}');
                break;
            }
            case JinjaNamespace ns:
                Json(sb, ns.Attributes, indent, level, sortKeys, max);
                break;
            default: throw new JinjaError($"tojson cannot serialise {TypeName(v)}");
        }
    }

    static void NewLine(StringBuilder sb, int? indent, int level)
    {
        if (indent == null) return;
        sb.Append('\n').Append(' ', indent.Value * level);
    }

    static void JsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    public static string TypeName(object? v) => v switch
    {
        null => "none",
        JinjaUndefined u => $"undefined ('{u.Name}')",
        bool => "boolean",
        long => "integer",
        double => "float",
        string => "string",
        List<object?> => "list",
        OrderedDictionary<string, object?> => "dict",
        JinjaNamespace => "namespace",
        JinjaFunction => "function",
        _ => v.GetType().Name,
    };
}

/// <summary>A runtime error without a position yet; the evaluator adds the position of the node being evaluated.</summary>
sealed class JinjaError(string message) : Exception(message);
