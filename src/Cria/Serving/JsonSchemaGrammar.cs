using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Cria.Serving;

/// <summary>
/// A JSON schema (OpenAI's structured outputs, <c>response_format: {"type": "json_schema", …}</c>) as a GBNF grammar, in
/// the manner of llama.cpp's json-schema-to-grammar: one rule per schema node, JSON's own rules for strings and
/// numbers, and at most 20 spaces of indentation after a newline between tokens (a model cannot pad forever).
/// <para>Supported: <c>type</c> (one or a list; object, array, string, number, integer, boolean, null), <c>properties</c>
/// with <c>required</c> (properties in the order written; optional ones may be left out), <c>additionalProperties</c>
/// (false when absent if <c>properties</c> is given — OpenAI's strict mode requires it; true or a schema allows more
/// properties after the listed ones), <c>items</c>, <c>prefixItems</c>, <c>minItems</c>/<c>maxItems</c>,
/// <c>minLength</c>/<c>maxLength</c>, <c>enum</c>, <c>const</c>, <c>anyOf</c>/<c>oneOf</c> (as alternatives),
/// <c>allOf</c> of one schema, <c>$ref</c> to <c>#/$defs/…</c> or <c>#/definitions/…</c> (recursion included), and
/// {} or true for any value, the string formats date, time, date-time (RFC 3339) and uuid as grammars (as
/// llama.cpp does), and an integer's <c>minimum</c>/<c>maximum</c>/<c>exclusiveMinimum</c>/<c>exclusiveMaximum</c> as
/// digit ranges (<see cref="IntegerRange"/>; bounds within ±999 999 999 999 999), and a string's <c>pattern</c> for a
/// subset of regular expressions (<see cref="PatternGrammar"/>). Annotations (title, description, other formats, default, examples, $schema, $id, strict) are
/// ignored.</para>
/// <para>Refused with a <see cref="GrammarException"/> naming the keyword and where it is: validation keywords the
/// grammar would not enforce (a number's minimum/maximum, multipleOf, uniqueItems, not, if/then/else, …, and patterns
/// outside the subset) —
/// better an error than output that breaks the schema.</para>
/// </summary>
public static class JsonSchemaGrammar
{
    /// <summary>The schema's grammar, parsed.</summary>
    public static Grammar Compile(JsonElement schema) => Grammar.Parse(ToGbnf(schema));

    /// <summary>The schema's grammar as GBNF text (start rule <c>root</c>).</summary>
    public static string ToGbnf(JsonElement schema)
    {
        var c = new Converter(schema);
        string top = c.Visit(schema, "root", "#");
        if (top != "root") c.Rules["root"] = top;
        var sb = new StringBuilder();
        foreach (var (name, body) in c.Rules) sb.Append(name).Append(" ::= ").Append(body).Append('\n');
        return sb.ToString();
    }

    const string Space = "| \" \" | \"\\n\" [ \\t]{0,20}";

    static readonly (string Name, string Body)[] Primitives =
    [
        ("space", Space),
        ("boolean", "(\"true\" | \"false\") space"),
        ("null", "\"null\" space"),
        ("integral-part", "[0] | [1-9] [0-9]{0,15}"),
        ("decimal-part", "[0-9]{1,16}"),
        ("number", "(\"-\"? integral-part) (\".\" decimal-part)? ([eE] [-+]? integral-part)? space"),
        ("integer", "(\"-\"? integral-part) space"),
        ("char", "[^\"\\\\\\x7F\\x00-\\x1F] | [\\\\] ([\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4})"),
        ("string", "\"\\\"\" char* \"\\\"\" space"),
        ("value", "object | array | string | number | boolean | null"),
        ("object", "\"{\" space ( string \":\" space value (\",\" space string \":\" space value)* )? \"}\" space"),
        ("array", "\"[\" space ( value (\",\" space value)* )? \"]\" space"),
    ];

    static readonly Dictionary<string, string[]> PrimitiveDeps = new()
    {
        ["space"] = [], ["boolean"] = ["space"], ["null"] = ["space"], ["integral-part"] = [], ["decimal-part"] = [],
        ["number"] = ["integral-part", "decimal-part", "space"], ["integer"] = ["integral-part", "space"], ["char"] = [],
        ["string"] = ["char", "space"], ["value"] = ["object", "array", "string", "number", "boolean", "null"],
        ["object"] = ["string", "value", "space"], ["array"] = ["value", "space"],
    };

    static readonly HashSet<string> Ignored =
        ["title", "description", "format", "default", "examples", "$schema", "$id", "$comment", "strict", "readOnly", "writeOnly", "deprecated", "$defs", "definitions", "name"];

    sealed class Converter(JsonElement root)
    {
        public readonly Dictionary<string, string> Rules = new();
        readonly Dictionary<string, string> _refs = new();   // "#/$defs/x" → its rule

        /// <summary>The rule (made if needed) for a primitive, with the primitives it uses.</summary>
        string Primitive(string name)
        {
            if (!Rules.ContainsKey(name))
            {
                Rules[name] = Primitives.First(p => p.Name == name).Body;
                foreach (var d in PrimitiveDeps[name]) Primitive(d);
            }
            return name;
        }

        string NewRule(string name, string body)
        {
            string n = name;
            for (int i = 2; Rules.ContainsKey(n) || Primitives.Any(p => p.Name == n); i++) n = $"{name}-{i}";
            Rules[n] = body;
            return n;
        }

        static string RuleName(string s)
        {
            var sb = new StringBuilder();
            foreach (char ch in s) sb.Append(char.IsAsciiLetterOrDigit(ch) ? ch : '-');
            return sb.Length > 0 ? sb.ToString() : "x";
        }

        static GrammarException Error(string path, string what) => new($"json schema at {path}: {what}");

        /// <summary>A GBNF expression (a rule name or a parenthesised body) for <paramref name="s"/>.</summary>
        public string Visit(JsonElement s, string name, string path)
        {
            if (s.ValueKind == JsonValueKind.True) return Primitive("value");
            if (s.ValueKind == JsonValueKind.False) throw Error(path, "the schema false admits no value");
            if (s.ValueKind != JsonValueKind.Object) throw Error(path, $"a schema must be an object or a boolean, got {s.ValueKind}");
            foreach (var p in s.EnumerateObject())
                if (!Known.Contains(p.Name) && !Ignored.Contains(p.Name))
                    throw Error(path, $"'{p.Name}' is not supported (the output could break it)");

            if (NumericKeyword(s) is { } bound && !(s.TryGetProperty("type", out var bt)
                    && (bt.ValueKind == JsonValueKind.String ? bt.GetString() == "integer" : bt.ValueKind == JsonValueKind.Array && bt.EnumerateArray().Any(x => x.ValueKind == JsonValueKind.String && x.GetString() == "integer"))))
                throw Error(path, $"'{bound}' is supported with type integer only");
            if (s.TryGetProperty("$ref", out var r)) return Ref(r, path);
            if (s.TryGetProperty("const", out var c)) { Primitive("space"); return Wrap(name, Literal(c) + " space"); }
            if (s.TryGetProperty("enum", out var e))
            {
                if (e.ValueKind != JsonValueKind.Array || e.GetArrayLength() == 0) throw Error(path, "'enum' must be a non-empty array");
                Primitive("space");
                return Wrap(name, "(" + string.Join(" | ", e.EnumerateArray().Select(Literal)) + ") space");
            }
            foreach (var key in new[] { "anyOf", "oneOf" })
                if (s.TryGetProperty(key, out var any))
                {
                    if (any.ValueKind != JsonValueKind.Array || any.GetArrayLength() == 0) throw Error(path, $"'{key}' must be a non-empty array");
                    var alts = any.EnumerateArray().Select((a, i) => Visit(a, $"{name}-{i}", $"{path}/{key}/{i}")).ToList();
                    return Wrap(name, string.Join(" | ", alts));
                }
            if (s.TryGetProperty("allOf", out var all))
            {
                if (all.ValueKind != JsonValueKind.Array || all.GetArrayLength() != 1) throw Error(path, "'allOf' is supported with one schema only");
                return Visit(all[0], name, $"{path}/allOf/0");
            }
            if (s.TryGetProperty("type", out var t))
            {
                if (t.ValueKind == JsonValueKind.String) return Typed(s, t.GetString()!, name, path);
                if (t.ValueKind != JsonValueKind.Array || t.GetArrayLength() == 0) throw Error(path, "'type' must be a string or a non-empty array of strings");
                var alts = t.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? Typed(s, x.GetString()!, $"{name}-{x.GetString()}", path)
                    : throw Error(path, "'type' must be a string or a non-empty array of strings")).ToList();
                return Wrap(name, string.Join(" | ", alts));
            }
            if (s.TryGetProperty("properties", out _)) return Typed(s, "object", name, path);
            if (s.TryGetProperty("items", out _) || s.TryGetProperty("prefixItems", out _)) return Typed(s, "array", name, path);
            return Primitive("value");
        }

        /// <summary>The string formats written as grammars (as llama.cpp does; RFC 3339 and RFC 4122): other formats are
        /// annotations, any string.</summary>
        static readonly Dictionary<string, string> Formats = new()
        {
            ["date"] = "[0-9]{4} \"-\" ( \"0\" [1-9] | \"1\" [0-2] ) \"-\" ( \"0\" [1-9] | [1-2] [0-9] | \"3\" [0-1] )",
            ["time"] = "( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" [0-5] [0-9] ( \".\" [0-9]{1,9} )? ( \"Z\" | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )",
            ["date-time"] = "format-date \"T\" format-time",
            ["uuid"] = "[0-9a-fA-F]{8} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{4} \"-\" [0-9a-fA-F]{12}",
        };

        /// <summary>The rule of a format (and of the formats it is made of).</summary>
        string FormatRule(string format)
        {
            string name = "format-" + format;
            if (!Rules.ContainsKey(name))
            {
                Rules[name] = Formats[format];
                if (format == "date-time") { FormatRule("date"); FormatRule("time"); }
            }
            return name;
        }

        static readonly HashSet<string> Known =
            ["type", "properties", "required", "additionalProperties", "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength",
             "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "pattern"];

        string Wrap(string name, string body) => NewRule(RuleName(name), body);

        string Ref(JsonElement r, string path)
        {
            string target = r.ValueKind == JsonValueKind.String ? r.GetString()! : throw Error(path, "'$ref' must be a string");
            if (_refs.TryGetValue(target, out var rule)) return rule;
            var parts = target.Split('/');
            if (parts.Length != 3 || parts[0] != "#" || parts[1] is not ("$defs" or "definitions"))
                throw Error(path, $"'$ref' {target} is not supported (use #/$defs/NAME or #/definitions/NAME)");
            if (!root.TryGetProperty(parts[1], out var defs) || defs.ValueKind != JsonValueKind.Object || !defs.TryGetProperty(parts[2], out var def))
                throw Error(path, $"'$ref' {target} names no definition");
            // Name the rule before visiting, so a recursive reference finds it.
            string name = NewRule(RuleName("ref-" + parts[2]), "");
            _refs[target] = name;
            Rules[name] = Visit(def, name + "-body", target);
            return name;
        }

        string Typed(JsonElement s, string type, string name, string path)
        {
            switch (type)
            {
                case "integer" when Bounds(s, path) is var (lo, hi) && (lo != null || hi != null):
                    Primitive("space");
                    return Wrap(name, $"({IntegerRange.Gbnf(lo, hi)}) space");
                case "number" when NumericKeyword(s) is { } k:
                    throw Error(path, $"'{k}' is supported on integers only (a number's bounds are not written as a grammar)");
                case "boolean" or "null" or "number" or "integer":
                    return Primitive(type);
                case "string":
                {
                    if (s.TryGetProperty("format", out var fmt) && fmt.ValueKind == JsonValueKind.String && Formats.ContainsKey(fmt.GetString()!))
                    {
                        if (s.TryGetProperty("minLength", out _) || s.TryGetProperty("maxLength", out _))
                            throw Error(path, $"'format' {fmt.GetString()} with minLength/maxLength is not supported");
                        Primitive("space");
                        string rule = FormatRule(fmt.GetString()!);
                        return Wrap(name, $"\"\\\"\" {rule} \"\\\"\" space");
                    }
                    if (s.TryGetProperty("pattern", out var pat))
                    {
                        if (s.TryGetProperty("minLength", out _) || s.TryGetProperty("maxLength", out _) || s.TryGetProperty("format", out _))
                            throw Error(path, "'pattern' with minLength/maxLength or a format is not supported");
                        if (pat.ValueKind != JsonValueKind.String) throw Error(path, "'pattern' must be a string");
                        string body;
                        try { body = PatternGrammar.Gbnf(pat.GetString()!); }
                        catch (GrammarException e) { throw Error(path, e.Message); }
                        Primitive("space");
                        if (body.Contains("char")) Primitive("char");
                        return Wrap(name, $"\"\\\"\" ({body}) \"\\\"\" space");
                    }
                    int min = Count(s, "minLength", path) ?? 0;
                    int? max = Count(s, "maxLength", path);
                    if (min == 0 && max == null) return Primitive("string");
                    if (max < min) throw Error(path, "maxLength < minLength");
                    Primitive("char"); Primitive("space");
                    return Wrap(name, $"\"\\\"\" char{{{min},{(max?.ToString(CultureInfo.InvariantCulture) ?? "")}}} \"\\\"\" space");
                }
                case "array":
                    return Array(s, name, path);
                case "object":
                    return Object(s, name, path);
                default:
                    throw Error(path, $"unknown type '{type}'");
            }
        }

        static readonly string[] NumericKeywords = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

        static string? NumericKeyword(JsonElement s) => NumericKeywords.FirstOrDefault(k => s.TryGetProperty(k, out _));

        /// <summary>An integer schema's bounds as the least and greatest integer allowed (null: unbounded).</summary>
        static (long? Lo, long? Hi) Bounds(JsonElement s, string path)
        {
            long? lo = null, hi = null;
            foreach (var k in NumericKeywords)
            {
                if (!s.TryGetProperty(k, out var v)) continue;
                if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !double.IsFinite(x))
                    throw Error(path, $"'{k}' must be a number");
                if (Math.Abs(x) > IntegerRange.MaxMagnitude) throw Error(path, $"'{k}' must be within ±{IntegerRange.MaxMagnitude}");
                switch (k)
                {
                    case "minimum": lo = Math.Max(lo ?? long.MinValue, (long)Math.Ceiling(x)); break;
                    case "exclusiveMinimum": lo = Math.Max(lo ?? long.MinValue, (long)Math.Floor(x) + 1); break;
                    case "maximum": hi = Math.Min(hi ?? long.MaxValue, (long)Math.Floor(x)); break;
                    case "exclusiveMaximum": hi = Math.Min(hi ?? long.MaxValue, (long)Math.Ceiling(x) - 1); break;
                }
            }
            if (lo > hi) throw Error(path, $"no integer lies in [{lo}, {hi}]");
            return (lo, hi);
        }

        int? Count(JsonElement s, string key, string path)
        {
            if (!s.TryGetProperty(key, out var v)) return null;
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int n) || n < 0 || n > Grammar.MaxRepetition)
                throw Error(path, $"'{key}' must be an integer in [0, {Grammar.MaxRepetition}]");
            return n;
        }

        string Array(JsonElement s, string name, string path)
        {
            Primitive("space");
            var parts = new List<string>();
            if (s.TryGetProperty("prefixItems", out var prefix))
            {
                if (prefix.ValueKind != JsonValueKind.Array) throw Error(path, "'prefixItems' must be an array");
                int i = 0;
                foreach (var item in prefix.EnumerateArray())
                {
                    parts.Add(Visit(item, $"{name}-{i}", $"{path}/prefixItems/{i}"));
                    i++;
                }
                if (s.TryGetProperty("items", out var extra) && extra.ValueKind != JsonValueKind.False)
                    throw Error(path, "'items' beside 'prefixItems' is supported only as false");
                if (parts.Count == 0) return Wrap(name, "\"[\" space \"]\" space");
                return Wrap(name, "\"[\" space " + string.Join(" \",\" space ", parts) + " \"]\" space");
            }
            string item1 = s.TryGetProperty("items", out var items) ? Visit(items, name + "-item", path + "/items") : Primitive("value");
            int min = Count(s, "minItems", path) ?? 0;
            int? max = Count(s, "maxItems", path);
            if (max < min) throw Error(path, "maxItems < minItems");
            if (max == 0) return Wrap(name, "\"[\" space \"]\" space");
            // item ("," space item){min−1, max−1}, optional when min = 0
            string rest = $"(\",\" space {item1}){{{Math.Max(0, min - 1)},{(max is int m ? (m - 1).ToString(CultureInfo.InvariantCulture) : "")}}}";
            string list = $"{item1} {rest}";
            return Wrap(name, min == 0 ? $"\"[\" space ({list})? \"]\" space" : $"\"[\" space {list} \"]\" space");
        }

        string Object(JsonElement s, string name, string path)
        {
            Primitive("space");
            bool hasProps = s.TryGetProperty("properties", out var props);
            if (hasProps && props.ValueKind != JsonValueKind.Object) throw Error(path, "'properties' must be an object");
            var required = new HashSet<string>();
            if (s.TryGetProperty("required", out var req))
            {
                if (req.ValueKind != JsonValueKind.Array) throw Error(path, "'required' must be an array of names");
                foreach (var x in req.EnumerateArray())
                    required.Add(x.ValueKind == JsonValueKind.String ? x.GetString()! : throw Error(path, "'required' must be an array of names"));
            }
            var list = hasProps ? props.EnumerateObject().ToList() : [];
            foreach (var n in required)
                if (!list.Any(p => p.Name == n)) throw Error(path, $"required property '{n}' is not in 'properties'");
            // additionalProperties: absent → none when properties are listed, any object otherwise
            string? extra = null;
            if (s.TryGetProperty("additionalProperties", out var ap))
            {
                if (ap.ValueKind != JsonValueKind.False) extra = Visit(ap, name + "-additional", path + "/additionalProperties");
            }
            else if (!hasProps) return Primitive("object");

            // A(i): the properties from i on, none written yet; B(i): the same after one was written (each needs a comma).
            // A(i) ::= kv(i) B(i+1) [| A(i+1) when i is optional];  B(i) ::= "," space kv(i) B(i+1) [| B(i+1)].
            int count = list.Count;
            var kv = new string[count];
            for (int i = 0; i < count; i++)
            {
                string value = Visit(list[i].Value, $"{name}-{list[i].Name}", $"{path}/properties/{list[i].Name}");
                kv[i] = Wrap($"{name}-{list[i].Name}-kv", $"{Literal(JsonSerializer.Serialize(list[i].Name, Compact))} space \":\" space {value}");
            }
            string endA = "", endB = "";
            if (extra != null)
            {
                Primitive("string");
                string pair = $"string \":\" space {extra}";
                endB = Wrap(name + "-more", $"(\",\" space {pair})*");
                endA = Wrap(name + "-any", $"({pair} {endB})?");
            }
            string nextA = endA, nextB = endB;
            for (int i = count - 1; i >= 0; i--)
            {
                bool opt = !required.Contains(list[i].Name);
                string a = $"{kv[i]} {nextB}".Trim() + (opt ? $" | {(nextA.Length > 0 ? nextA : "\"\"")}" : "");
                string b = $"\",\" space {kv[i]} {nextB}".Trim() + (opt ? $" | {(nextB.Length > 0 ? nextB : "\"\"")}" : "");
                nextA = Wrap($"{name}-a{i}", a);
                nextB = Wrap($"{name}-b{i}", b);
            }
            return Wrap(name, $"\"{{\" space {nextA} \"}}\" space");
        }

        /// <summary>A JSON value written compactly (non-ASCII characters as themselves), as a GBNF literal.</summary>
        static string Literal(JsonElement v) => Literal(JsonSerializer.Serialize(v, Compact));

        static readonly JsonSerializerOptions Compact = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

        static string Literal(string json)
        {
            var sb = new StringBuilder("\"");
            foreach (char ch in json)
                sb.Append(ch switch
                {
                    '"' => "\\\"",
                    '\\' => "\\\\",
                    '\n' => "\\n",
                    '\r' => "\\r",
                    '\t' => "\\t",
                    < ' ' => $"\\x{(int)ch:X2}",
                    _ => ch.ToString(),
                });
            return sb.Append('"').ToString();
        }
    }
}

/// <summary>
/// The JSON integers in a range as a GBNF expression (no leading zeros, no "-0"): the range is cut by sign and by
/// digit count, and each piece of equal-length numbers by its first differing digit — [x, y] becomes x₀ [x', 9…9],
/// [x₀+1, y₀−1] [0-9]ⁿ and y₀ [0…0, y'] — the usual construction of a numeric range as a regular expression.
/// </summary>
static class IntegerRange
{
    public const long MaxMagnitude = 999_999_999_999_999; // 15 digits: a bound a double holds exactly
    const int MaxDigits = 16;                               // an unbounded side runs to 16 digits, as the integer rule

    public static string Gbnf(long? lo, long? hi)
    {
        var alts = new List<string>();
        // negative numbers: "-" and their magnitudes
        if (lo is null || lo < 0)
        {
            long? magLo = hi is long h && h < 0 ? -h : 1, magHi = lo is long l ? -l : null;
            if (magHi is null || magLo <= magHi) alts.Add("\"-\" (" + NonNegative(magLo!.Value, magHi) + ")");
        }
        // zero and positive numbers
        if (hi is null || hi >= 0)
        {
            long from = lo is long l && l > 0 ? l : 0;
            alts.Add(NonNegative(from, hi));
        }
        return string.Join(" | ", alts);
    }

    /// <summary>[a, b] (b null: up to 16 digits) for 0 ≤ a.</summary>
    static string NonNegative(long a, long? b)
    {
        var alts = new List<string>();
        int la = Digits(a), lb = b is long bb ? Digits(bb) : MaxDigits;
        for (int len = la; len <= lb; len++)
        {
            long lo = len == la ? a : Pow10(len - 1);
            string hiText = len == lb && b is long bv ? bv.ToString(CultureInfo.InvariantCulture) : new string('9', len);
            alts.Add(SameLength(lo.ToString(CultureInfo.InvariantCulture), hiText));
        }
        return string.Join(" | ", alts);
    }

    static int Digits(long x) => x.ToString(CultureInfo.InvariantCulture).Length;

    static long Pow10(int n) { long p = 1; for (int i = 0; i < n; i++) p *= 10; return p; }

    /// <summary>The numbers from x to y, both of the same length, x ≤ y.</summary>
    static string SameLength(string x, string y)
    {
        if (x.Length == 0) return "\"\"";
        if (x == y) return "\"" + x + "\"";
        if (x[0] == y[0]) return "\"" + x[0] + "\" (" + SameLength(x[1..], y[1..]) + ")";
        int rest = x.Length - 1;
        string any = rest == 0 ? "" : rest == 1 ? " [0-9]" : $" [0-9]{{{rest}}}";
        var alts = new List<string>();
        // x₀ followed by [x', 9…9] — the whole of x₀'s numbers when x' is all zeros (then x₀ joins the middle)
        char first = x[0];
        if (rest > 0 && x[1..].Any(c => c != '0')) { alts.Add("\"" + x[0] + "\" (" + SameLength(x[1..], new string('9', rest)) + ")"); first++; }
        char last = y[0];
        bool yWhole = rest == 0 || y[1..].All(c => c == '9');
        if (!yWhole) last--;
        if (first <= last) alts.Add((first == last ? $"[{first}]" : $"[{first}-{last}]") + any);
        if (!yWhole) alts.Add("\"" + y[0] + "\" (" + SameLength(new string('0', rest), y[1..]) + ")");
        return string.Join(" | ", alts);
    }
}

/// <summary>
/// A string schema's <c>pattern</c> (an ECMAScript regular expression, matched anywhere in the string unless anchored
/// with ^ and $) as a GBNF expression over the JSON string's text, for a subset: literals, escapes (\d \w \s \D \W \S,
/// \n \t \r, escaped metacharacters), <c>.</c>, classes (ranges, negation), groups (plain and <c>(?:</c>),
/// alternation, and the quantifiers * + ? {m} {m,} {m,n}. The text written is what the pattern matches, encoded as
/// JSON: a quote or backslash is written escaped, whitespace escapes as JSON escapes; what a class, <c>.</c> or a
/// negated escape matches never includes a quote, a backslash or a control character (the grammar writes only
/// characters that need no escape there — a subset of the matching strings, never a broken document). An unanchored
/// side may hold any JSON string characters. Refused: lookaround, backreferences, word boundaries, lazy quantifiers,
/// anchors elsewhere, and classes holding a quote, backslash or control character.
/// </summary>
static class PatternGrammar
{
    const string Plain = "[^\"\\\\\\x00-\\x1F]"; // a character that needs no escape in a JSON string

    public static string Gbnf(string pattern)
    {
        var p = new Parser(pattern);
        bool start = p.Eat('^');
        string body = p.Alternatives();
        bool end = p.Eat('$');
        if (!p.Done) throw p.Error(p.Peek == ')' ? "an unmatched ')'" : p.Peek is '^' or '$' ? "an anchor inside the pattern" : $"'{p.Peek}'");
        return (start ? "" : "char* ") + "(" + body + ")" + (end ? "" : " char*");
    }

    sealed class Parser(string s)
    {
        int _i;
        public bool Done => _i >= s.Length;
        public char Peek => s[_i];
        public bool Eat(char c) { if (_i < s.Length && s[_i] == c) { _i++; return true; } return false; }
        public GrammarException Error(string what) => new($"pattern \"{s}\": {what} at {_i} is not supported");

        public string Alternatives()
        {
            var alts = new List<string> { Sequence() };
            while (Eat('|')) alts.Add(Sequence());
            return string.Join(" | ", alts);
        }

        string Sequence()
        {
            var parts = new List<string>();
            while (!Done && Peek != '|' && Peek != ')' && !(Peek == '$' && _i == s.Length - 1))
            {
                string atom = Atom();
                parts.Add(atom + Quantifier());
            }
            return parts.Count == 0 ? "\"\"" : string.Join(" ", parts);
        }

        string Quantifier()
        {
            string q = "";
            if (Eat('*')) q = "*";
            else if (Eat('+')) q = "+";
            else if (Eat('?')) q = "?";
            else if (!Done && Peek == '{')
            {
                int close = s.IndexOf('}', _i);
                var m = close < 0 ? null : System.Text.RegularExpressions.Regex.Match(s[(_i + 1)..close], "^([0-9]+)(,([0-9]*))?$");
                if (m == null || !m.Success) throw Error("a '{' that is not a repetition");
                // counts past the grammar's limit (long digit strings included) are refused before any arithmetic
                static int Count(string digits) => digits.Length > 6 ? int.MaxValue : int.Parse(digits, CultureInfo.InvariantCulture);
                int lo = Count(m.Groups[1].Value);
                string hiText = m.Groups[2].Success ? m.Groups[3].Value : m.Groups[1].Value;
                int hi = hiText.Length == 0 ? lo : Count(hiText);
                if (lo > Grammar.MaxRepetition || hi > Grammar.MaxRepetition || hi < lo)
                    throw Error($"the repetition {{{s[(_i + 1)..close]}}}");
                _i = close + 1;
                q = "{" + lo + (m.Groups[2].Success ? "," + hiText : "") + "}";
            }
            if (q.Length > 0 && !Done && (Peek is '?' or '+' or '*' or '{')) throw Error("a lazy, possessive or repeated quantifier");
            return q;
        }

        string Atom()
        {
            char c = s[_i++];
            switch (c)
            {
                case '(':
                    if (Eat('?') && !Eat(':')) throw Error("a lookaround or named group");
                    string inner = Alternatives();
                    if (!Eat(')')) throw Error("an unclosed group");
                    return "(" + inner + ")";
                case '[': return Class();
                case '.': return Plain;
                case '\\': return Escape(inClass: false);
                case '*' or '+' or '?' or '{': throw Error($"a quantifier '{c}' with nothing to repeat");
                case '^' or '$': _i--; throw Error("an anchor inside the pattern");
                case ')': _i--; throw Error("an unmatched ')'");
                default:
                    if (char.IsHighSurrogate(c) && !Done && char.IsLowSurrogate(Peek)) return "\"" + c + s[_i++] + "\""; // one character
                    if (char.IsSurrogate(c)) throw Error("a lone surrogate");
                    return Literal(c);
            }
        }

        /// <summary>After a backslash: outside a class a GBNF expression; inside, class items (or null if none fit).</summary>
        string Escape(bool inClass)
        {
            if (Done) throw Error("a trailing backslash");
            char e = s[_i++];
            switch (e)
            {
                case 'd': return inClass ? "0-9" : "[0-9]";
                case 'w': return inClass ? "a-zA-Z0-9_" : "[a-zA-Z0-9_]";
                case 'D': return inClass ? throw Error("\\D inside a class") : "[^0-9\"\\\\\\x00-\\x1F]";
                case 'W': return inClass ? throw Error("\\W inside a class") : "[^a-zA-Z0-9_\"\\\\\\x00-\\x1F]";
                case 's': return inClass ? throw Error("\\s inside a class") : "(\" \" | \"\\\\t\" | \"\\\\n\" | \"\\\\r\" | \"\\\\f\" | \"\\\\u000b\")";
                case 'S': return inClass ? throw Error("\\S inside a class") : "[^ \"\\\\\\x00-\\x1F]";
                case 'n' or 't' or 'r' or 'f':
                    return inClass ? throw Error($"\\{e} inside a class") : "\"\\\\" + e + "\"";
                case 'b' or 'B': throw Error("a word boundary");
                case >= '0' and <= '9': throw Error("a backreference");
                case 'u' or 'x' or 'c' or 'k' or 'p' or 'P': throw Error($"the escape \\{e}");
                default:
                    if (char.IsAsciiLetterOrDigit(e)) throw Error($"the escape \\{e}");
                    return inClass ? ClassChar(e) : Literal(e);
            }
        }

        string Class()
        {
            bool negated = Eat('^');
            var items = new StringBuilder();
            bool first = true;
            while (!Done && (Peek != ']' || first))
            {
                first = false;
                string item;
                char c = s[_i++];
                if (c == '\\') item = Escape(inClass: true);
                else if (c == '[') throw Error("a nested class");
                else item = ClassChar(c);
                if (!Done && Peek == '-' && _i + 1 < s.Length && s[_i + 1] != ']')
                {
                    _i++;
                    char hi = s[_i++];
                    if (hi == '\\') { if (Done) throw Error("a trailing backslash"); hi = s[_i++]; if (char.IsAsciiLetterOrDigit(hi)) throw Error("a class range ending in an escape"); }
                    if (c == '\\' || hi < c) throw Error("a class range");
                    item += "-" + ClassChar(hi);
                }
                items.Append(item);
            }
            if (!Eat(']')) throw Error("an unclosed class");
            // a negated class also leaves out what JSON would have to escape
            return negated ? "[^" + items + "\"\\\\\\x00-\\x1F]" : "[" + items + "]";
        }

        /// <summary>A character inside a GBNF class; a quote, backslash or control character is refused (its JSON form is
        /// two or more characters).</summary>
        string ClassChar(char c)
        {
            if (c == '"' || c == '\\' || c < ' ') throw Error("a class holding a quote, backslash or control character");
            if (char.IsSurrogate(c)) throw Error("a class holding a character outside the BMP");
            return c is ']' or '[' or '^' or '-' ? "\\" + c : c.ToString();
        }

        /// <summary>A literal character as its JSON string text, as a GBNF literal.</summary>
        static string Literal(char c) => c switch
        {
            '"' => "\"\\\\\\\"\"",       // \"
            '\\' => "\"\\\\\\\\\"",    // \\
            < ' ' => throw new GrammarException($"pattern: a control character (U+{(int)c:X4}) is not supported"),
            _ => "\"" + c + "\"",
        };
    }
}
