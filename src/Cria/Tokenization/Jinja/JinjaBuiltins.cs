using System.Globalization;
using System.Text;

namespace Cria.Tokenization.Jinja;

// Filters, tests, and the methods of strings, dicts and lists.
sealed partial class Renderer
{
    static object? Arg(List<object?> args, List<(string Name, object? Value)> kw, int index, string name, object? def = null)
    {
        if (index < args.Count) return args[index];
        foreach (var (k, v) in kw) if (k == name) return v;
        return def;
    }

    string StrArg(List<object?> args, List<(string Name, object? Value)> kw, int index, string name, string? def = null)
    {
        var v = Arg(args, kw, index, name, def);
        return v as string ?? (v == null && def == null ? throw new JinjaError($"'{name}' is required") : S(v));
    }

    static string Need(object? v, string what) => v switch
    {
        string s => s,
        JinjaUndefined u => throw new JinjaError($"'{u.Name}' is undefined (in {what})"),
        _ => throw new JinjaError($"{what} needs a string, not {JinjaValue.TypeName(v)}"),
    };

    List<object?> NeedList(object? v, string what)
    {
        var l = v switch
        {
            List<object?> list => list,
            JinjaUndefined u => throw new JinjaError($"'{u.Name}' is undefined (in {what})"),
            _ => Iterate(v).ToList(),
        };
        Charge(l.Count);
        return l;
    }

    static object? AttrPath(object? item, string path)
    {
        object? v = item;
        foreach (var part in path.Split('.'))
            v = long.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out long i) && v is List<object?> ? GetItem(v, i) : GetItem(v, part);
        return v;
    }

    object? ApplyFilter(string name, object? v, List<object?> a, List<(string Name, object? Value)> kw)
    {
        switch (name)
        {
            case "trim":
            {
                var chars = Arg(a, kw, 0, "chars") as string;
                var s = S(v);
                return Bounded(chars == null ? s.Trim() : s.Trim(chars.ToCharArray()));
            }
            case "length" or "count":
                return v switch
                {
                    string s => (long)s.Length,
                    List<object?> l => (long)l.Count,
                    OrderedDictionary<string, object?> d => (long)d.Count,
                    JinjaUndefined => 0L,
                    _ => throw new JinjaError($"{JinjaValue.TypeName(v)} has no length"),
                };
            case "upper": return Bounded(S(v).ToUpperInvariant());
            case "lower": return Bounded(S(v).ToLowerInvariant());
            case "title": return Bounded(Title(S(v)));
            case "capitalize": return Bounded(Capitalize(S(v)));
            case "string": return S(v);
            case "safe": return v;
            case "e" or "escape":
                return Bounded(S(v).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;"));
            case "tojson":
            {
                var ind = Arg(a, kw, 0, "indent");
                return Bounded(JinjaValue.ToJson(v, ind is null or JinjaUndefined ? null : (int)Math.Clamp(ToLong(ind), 0, 100), JinjaValue.Truthy(Arg(a, kw, 1, "sort_keys", false)), _o.MaxOutputLength));
            }
            case "default" or "d":
            {
                var def = Arg(a, kw, 0, "default_value", "");
                bool boolean = JinjaValue.Truthy(Arg(a, kw, 1, "boolean", false));
                return v is JinjaUndefined || (boolean && !JinjaValue.Truthy(v)) ? def : v;
            }
            case "first":
                return v switch
                {
                    string s => s.Length > 0 ? s[0].ToString() : new JinjaUndefined("first"),
                    _ => NeedList(v, "first") is { Count: > 0 } l ? l[0] : new JinjaUndefined("first"),
                };
            case "last":
                return v switch
                {
                    string s => s.Length > 0 ? s[^1].ToString() : new JinjaUndefined("last"),
                    _ => NeedList(v, "last") is { Count: > 0 } l ? l[^1] : new JinjaUndefined("last"),
                };
            case "join":
            {
                var sep = Arg(a, kw, 0, "d", "") as string ?? "";
                var attr = Arg(a, kw, 1, "attribute") as string;
                var items = NeedList(v, "join").Select(x => S(attr == null ? x : AttrPath(x, attr))).ToList();
                if (items.Sum(x => (long)x.Length) + (long)sep.Length * items.Count > _o.MaxOutputLength) throw TooLong();
                return Bounded(string.Join(sep, items));
            }
            case "replace":
            {
                var s = S(v);
                var old = StrArg(a, kw, 0, "old");
                var repl = StrArg(a, kw, 1, "new");
                var count = Arg(a, kw, 2, "count");
                return Replace(s, old, repl, count is null or JinjaUndefined ? -1 : ToLong(count));
            }
            case "int":
            {
                var def = Arg(a, kw, 0, "default", 0L);
                return v switch
                {
                    long l => l,
                    bool b => b ? 1L : 0L,
                    double d => double.IsFinite(d) ? (long)Math.Truncate(d) : def,
                    string s => long.TryParse(s.Trim(), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long p) ? p
                        : double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double pd) && double.IsFinite(pd) ? (long)Math.Truncate(pd) : def,
                    _ => def,
                };
            }
            case "float":
            {
                var def = Arg(a, kw, 0, "default", 0.0);
                return v switch
                {
                    long l => (double)l,
                    bool b => b ? 1.0 : 0.0,
                    double d => d,
                    string s => double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double p) ? p : def,
                    _ => def,
                };
            }
            case "abs":
                return v switch { long l => (object)checked(Math.Abs(l)), double d => Math.Abs(d), bool b => b ? 1L : 0L, _ => throw new JinjaError($"abs of {JinjaValue.TypeName(v)}") };
            case "round":
            {
                int prec = (int)ToLong(Arg(a, kw, 0, "precision", 0L));
                var method = Arg(a, kw, 1, "method", "common") as string;
                double d = ToDouble(v);
                double m = Math.Pow(10, prec);
                double r = method switch
                {
                    "ceil" => Math.Ceiling(d * m) / m,
                    "floor" => Math.Floor(d * m) / m,
                    _ => Math.Round(d * m, MidpointRounding.AwayFromZero) / m,
                };
                return r;
            }
            case "list": return v is string s2 ? s2.Select(c => (object?)c.ToString()).ToList() : NeedList(v, "list").ToList();
            case "items":
                return v switch
                {
                    OrderedDictionary<string, object?> d => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList(),
                    JinjaUndefined => new List<object?>(),
                    _ => throw new JinjaError($"items of {JinjaValue.TypeName(v)}"),
                };
            case "dictsort":
                return v is OrderedDictionary<string, object?> ds
                    ? ds.OrderBy(kv => kv.Key, JinjaValue.Truthy(Arg(a, kw, 0, "case_sensitive", false)) ? StringComparer.Ordinal : StringComparer.OrdinalIgnoreCase)
                        .Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                    : throw new JinjaError($"dictsort of {JinjaValue.TypeName(v)}");
            case "reverse":
                if (v is string rs) { var arr = rs.ToCharArray(); Array.Reverse(arr); return new string(arr); }
                { var l = NeedList(v, "reverse").ToList(); l.Reverse(); return l; }
            case "sort":
            {
                bool reverse = JinjaValue.Truthy(Arg(a, kw, 0, "reverse", false));
                bool cs = JinjaValue.Truthy(Arg(a, kw, 1, "case_sensitive", false));
                var attr = Arg(a, kw, 2, "attribute") as string;
                object? Key(object? x) { var k = attr == null ? x : AttrPath(x, attr); return !cs && k is string s ? s.ToLowerInvariant() : k; }
                var l = NeedList(v, "sort").ToList();
                Charge((long)l.Count * (long)Math.Ceiling(Math.Log2(l.Count + 2)));
                var sorted = l.Select((x, i) => (x, i)).ToList();
                sorted.Sort((p, q) => { int c = Compare(Key(p.x), Key(q.x), "sort"); return c != 0 ? (reverse ? -c : c) : p.i.CompareTo(q.i); });
                return sorted.Select(p => p.x).ToList();
            }
            case "unique":
            {
                var res = new List<object?>();
                foreach (var x in NeedList(v, "unique")) { Charge(res.Count); if (!res.Any(y => PyEquals(x, y))) res.Add(x); }
                return res;
            }
            case "sum":
            {
                var attr = Arg(a, kw, 0, "attribute") as string;
                object? acc = Arg(a, kw, 1, "start", 0L);
                foreach (var x in NeedList(v, "sum")) acc = Binary("+", acc, attr == null ? x : AttrPath(x, attr));
                return acc;
            }
            case "min" or "max":
            {
                var l = NeedList(v, name);
                if (l.Count == 0) return new JinjaUndefined(name);
                var best = l[0];
                foreach (var x in l.Skip(1)) { int c = Compare(x, best, name); if (name == "min" ? c < 0 : c > 0) best = x; }
                return best;
            }
            case "selectattr" or "rejectattr":
            {
                var attr = a.Count > 0 ? Need(a[0], name) : throw new JinjaError($"{name} needs an attribute name");
                var res = new List<object?>();
                foreach (var x in NeedList(v, name))
                {
                    var av = AttrPath(x, attr);
                    bool ok = a.Count > 1 ? RunTest(Need(a[1], name), av, a.Skip(2).ToList()) : JinjaValue.Truthy(av);
                    if (ok == (name == "selectattr")) res.Add(x);
                }
                return res;
            }
            case "select" or "reject":
            {
                var res = new List<object?>();
                foreach (var x in NeedList(v, name))
                {
                    bool ok = a.Count > 0 ? RunTest(Need(a[0], name), x, a.Skip(1).ToList()) : JinjaValue.Truthy(x);
                    if (ok == (name == "select")) res.Add(x);
                }
                return res;
            }
            case "map":
            {
                var l = NeedList(v, "map");
                if (Arg([], kw, 0, "attribute") is string attr)
                {
                    var def = Arg([], kw, 0, "default");
                    return l.Select(x => { var r = AttrPath(x, attr); return r is JinjaUndefined && def != null ? def : r; }).ToList();
                }
                if (a.Count == 0) throw new JinjaError("map needs a filter name or attribute=");
                var f = Need(a[0], "map");
                var rest = a.Skip(1).ToList();
                return l.Select(x => ApplyFilter(f, x, rest, kw)).ToList();
            }
            case "indent":
            {
                int width = (int)ToLong(Arg(a, kw, 0, "width", 4L));
                bool first = JinjaValue.Truthy(Arg(a, kw, 1, "first", false));
                bool blank = JinjaValue.Truthy(Arg(a, kw, 2, "blank", false));
                var pad = new string(' ', Math.Clamp(width, 0, 1000));
                var lines = S(v).Split('\n');
                Charge(lines.Length);
                var sb = new StringBuilder();
                for (int i = 0; i < lines.Length; i++)
                {
                    if (i > 0) sb.Append('\n');
                    bool indentThis = (i > 0 || first) && (blank || lines[i].Length > 0);
                    if (indentThis) sb.Append(pad);
                    sb.Append(lines[i]);
                    if (sb.Length > _o.MaxOutputLength) throw new JinjaError("indent result too long");
                }
                return sb.ToString();
            }
            case "attr": return GetAttr(v, StrArg(a, kw, 0, "name"));
            case "wordcount": return (long)S(v).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            default:
                throw new JinjaError($"unknown filter '{name}'");
        }
    }

    bool RunTest(string name, object? v, List<object?> a)
    {
        object? A0() => a.Count > 0 ? a[0] : throw new JinjaError($"test '{name}' needs an argument");
        switch (name)
        {
            case "defined": return v is not JinjaUndefined;
            case "undefined": return v is JinjaUndefined;
            case "none": return v is null;
            case "string": return v is string;
            case "number": return v is long or double;
            case "integer": return v is long;
            case "float": return v is double;
            case "boolean": return v is bool;
            case "true": return v is true;
            case "false": return v is false;
            case "mapping": return v is OrderedDictionary<string, object?>;
            case "iterable": return v is string or List<object?> or OrderedDictionary<string, object?>;
            case "sequence": return v is string or List<object?> or OrderedDictionary<string, object?>;
            case "callable": return v is JinjaFunction;
            case "even": return ToLong(v) % 2 == 0;
            case "odd": return ToLong(v) % 2 != 0;
            case "divisibleby": { long d = ToLong(A0()); return d != 0 && ToLong(v) % d == 0; }
            case "equalto" or "eq" or "==" or "sameas": return PyEquals(v, A0());
            case "ne" or "!=": return !PyEquals(v, A0());
            case "lt" or "lessthan" or "<": return Compare(v, A0(), "<") < 0;
            case "le" or "<=": return Compare(v, A0(), "<=") <= 0;
            case "gt" or "greaterthan" or ">": return Compare(v, A0(), ">") > 0;
            case "ge" or ">=": return Compare(v, A0(), ">=") >= 0;
            case "in": return Contains(A0(), v);
            case "lower": return v is string ls && ls == ls.ToLowerInvariant();
            case "upper": return v is string us && us == us.ToUpperInvariant();
            default: throw new JinjaError($"unknown test '{name}'");
        }
    }

    object? CallMethod(object? obj, string name, List<object?> a, List<(string Name, object? Value)> kw)
    {
        Charge(Size(obj));
        switch (obj)
        {
            case string s:
                switch (name)
                {
                    case "strip" or "lstrip" or "rstrip":
                    {
                        var chars = Arg(a, kw, 0, "chars") as string;
                        char[]? set = chars?.ToCharArray();
                        return name switch
                        {
                            "strip" => set == null ? s.Trim() : s.Trim(set),
                            "lstrip" => set == null ? s.TrimStart() : s.TrimStart(set),
                            _ => set == null ? s.TrimEnd() : s.TrimEnd(set),
                        };
                    }
                    case "upper": return s.ToUpperInvariant();
                    case "lower": return s.ToLowerInvariant();
                    case "title": return Title(s);
                    case "capitalize": return Capitalize(s);
                    case "startswith" or "endswith":
                    {
                        var p = Arg(a, kw, 0, "prefix");
                        var options = p is List<object?> l ? l.Select(x => Need(x, name)).ToList() : [Need(p, name)];
                        return options.Any(o => name == "startswith" ? s.StartsWith(o, StringComparison.Ordinal) : s.EndsWith(o, StringComparison.Ordinal));
                    }
                    case "split" or "rsplit":
                    {
                        var sep = Arg(a, kw, 0, "sep");
                        long max = ToLong(Arg(a, kw, 1, "maxsplit", -1L));
                        return Split(s, sep is null or JinjaUndefined ? null : Need(sep, "split"), max, name == "rsplit");
                    }
                    case "splitlines": return s.Split('\n').Select(x => (object?)x.TrimEnd('\r')).ToList() is var sl && s.EndsWith('\n') ? sl.Take(sl.Count - 1).ToList() : sl;
                    case "replace":
                    {
                        var count = Arg(a, kw, 2, "count");
                        return Replace(s, StrArg(a, kw, 0, "old"), StrArg(a, kw, 1, "new"), count is null or JinjaUndefined ? -1 : ToLong(count));
                    }
                    case "find": return (long)s.IndexOf(StrArg(a, kw, 0, "sub"), StringComparison.Ordinal);
                    case "rfind": return (long)s.LastIndexOf(StrArg(a, kw, 0, "sub"), StringComparison.Ordinal);
                    case "count":
                    {
                        var sub = StrArg(a, kw, 0, "sub");
                        if (sub.Length == 0) return (long)s.Length + 1;
                        long c = 0; int i = 0;
                        while ((i = s.IndexOf(sub, i, StringComparison.Ordinal)) >= 0) { c++; i += sub.Length; }
                        return c;
                    }
                    case "join":
                    {
                        var parts = NeedList(Arg(a, kw, 0, "iterable"), "join").Select(x => Need(x, "join")).ToList();
                        if (parts.Sum(x => (long)x.Length) + (long)s.Length * parts.Count > _o.MaxOutputLength) throw TooLong();
                        return Bounded(string.Join(s, parts));
                    }
                    case "isdigit": return s.Length > 0 && s.All(char.IsDigit);
                    case "isalpha": return s.Length > 0 && s.All(char.IsLetter);
                    case "isalnum": return s.Length > 0 && s.All(char.IsLetterOrDigit);
                    case "isspace": return s.Length > 0 && s.All(char.IsWhiteSpace);
                    case "islower": return s.Any(char.IsLetter) && s == s.ToLowerInvariant();
                    case "isupper": return s.Any(char.IsLetter) && s == s.ToUpperInvariant();
                }
                break;
            case OrderedDictionary<string, object?> d:
                switch (name)
                {
                    case "items": return d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList();
                    case "keys": return d.Keys.Cast<object?>().ToList();
                    case "values": return d.Values.ToList();
                    case "get":
                    {
                        var key = Arg(a, kw, 0, "key");
                        var k = key as string ?? S(key);
                        return d.TryGetValue(k, out var v) ? v : Arg(a, kw, 1, "default", null);
                    }
                }
                break;
            case List<object?> l:
                switch (name)
                {
                    case "index":
                    {
                        var x = Arg(a, kw, 0, "value");
                        int i = l.FindIndex(y => PyEquals(x, y));
                        return i >= 0 ? (long)i : throw new JinjaError($"{JinjaValue.Repr(x)} is not in the list");
                    }
                    case "count": { var x = Arg(a, kw, 0, "value"); return (long)l.Count(y => PyEquals(x, y)); }
                }
                break;
        }
        throw new JinjaError($"{JinjaValue.TypeName(obj)} has no method '{name}'");
    }

    string Replace(string s, string old, string repl, long count)
    {
        if (repl.Length > old.Length)
        {
            long n = 0;
            if (old.Length == 0) n = s.Length + 1;
            else for (int i = 0; (i = s.IndexOf(old, i, StringComparison.Ordinal)) >= 0; i += old.Length) n++;
            if (count >= 0) n = Math.Min(n, count);
            if (s.Length + n * (repl.Length - old.Length) > _o.MaxOutputLength) throw TooLong();
        }
        return Bounded(ReplaceUnbounded(s, old, repl, count));
    }

    static string ReplaceUnbounded(string s, string old, string repl, long count)
    {
        if (count < 0) return old.Length == 0 ? InsertEverywhere(s, repl) : s.Replace(old, repl, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int i = 0; long done = 0;
        while (done < count)
        {
            int j = s.IndexOf(old, i, StringComparison.Ordinal);
            if (j < 0 || old.Length == 0) break;
            sb.Append(s, i, j - i).Append(repl);
            i = j + old.Length; done++;
        }
        sb.Append(s, i, s.Length - i);
        return sb.ToString();
    }

    static string InsertEverywhere(string s, string repl)
    {
        var sb = new StringBuilder(repl);
        foreach (char c in s) sb.Append(c).Append(repl);
        return sb.ToString();
    }

    static List<object?> Split(string s, string? sep, long max, bool fromRight)
    {
        var parts = new List<object?>();
        if (sep == null)
        {
            var words = s.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (max < 0 || words.Length <= max + 1) return words.Cast<object?>().ToList();
            // Python keeps the rest of the string (from the split point) as the last part.
            if (!fromRight)
            {
                int pos = 0;
                for (int n = 0; n < max; n++)
                {
                    while (pos < s.Length && char.IsWhiteSpace(s[pos])) pos++;
                    int start = pos;
                    while (pos < s.Length && !char.IsWhiteSpace(s[pos])) pos++;
                    parts.Add(s[start..pos]);
                }
                while (pos < s.Length && char.IsWhiteSpace(s[pos])) pos++;
                parts.Add(s[pos..].TrimEnd());
                return parts;
            }
            return words.Cast<object?>().ToList();
        }
        if (sep.Length == 0) throw new JinjaError("empty separator");
        var all = s.Split(sep);
        if (max < 0 || all.Length <= max + 1) return all.Cast<object?>().ToList();
        if (!fromRight)
        {
            parts.AddRange(all.Take((int)max));
            parts.Add(string.Join(sep, all.Skip((int)max)));
        }
        else
        {
            parts.Add(string.Join(sep, all.Take(all.Length - (int)max)));
            parts.AddRange(all.Skip(all.Length - (int)max));
        }
        return parts;
    }

    // Python str.title(): a letter after a non-letter is upper-cased, other letters lower-cased.
    static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevLetter = false;
        foreach (char c in s)
        {
            sb.Append(prevLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevLetter = char.IsLetter(c);
        }
        return sb.ToString();
    }

    static string Capitalize(string s) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    static readonly string[] Days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    static readonly string[] Months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];

    /// <summary>C strftime for the common conversions (%d %m %Y %y %B %b %A %a %H %I %M %S %p %j %e %%).</summary>
    internal static string Strftime(string format, DateTime t)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%' || i + 1 >= format.Length) { sb.Append(c); continue; }
            char f = format[++i];
            var inv = CultureInfo.InvariantCulture;
            switch (f)
            {
                case 'd': sb.Append(t.Day.ToString("00", inv)); break;
                case 'e': sb.Append(t.Day.ToString(inv).PadLeft(2)); break;
                case '-': // %-d, %-m (glibc): no padding
                    if (i + 1 < format.Length)
                    {
                        char g = format[++i];
                        sb.Append(g switch { 'd' => t.Day.ToString(inv), 'm' => t.Month.ToString(inv), 'H' => t.Hour.ToString(inv), 'M' => t.Minute.ToString(inv), _ => "%-" + g });
                    }
                    break;
                case 'm': sb.Append(t.Month.ToString("00", inv)); break;
                case 'Y': sb.Append(t.Year.ToString(inv)); break;
                case 'y': sb.Append((t.Year % 100).ToString("00", inv)); break;
                case 'B': sb.Append(Months[t.Month - 1]); break;
                case 'b' or 'h': sb.Append(Months[t.Month - 1][..3]); break;
                case 'A': sb.Append(Days[(int)t.DayOfWeek]); break;
                case 'a': sb.Append(Days[(int)t.DayOfWeek][..3]); break;
                case 'H': sb.Append(t.Hour.ToString("00", inv)); break;
                case 'I': sb.Append(((t.Hour + 11) % 12 + 1).ToString("00", inv)); break;
                case 'M': sb.Append(t.Minute.ToString("00", inv)); break;
                case 'S': sb.Append(t.Second.ToString("00", inv)); break;
                case 'p': sb.Append(t.Hour < 12 ? "AM" : "PM"); break;
                case 'j': sb.Append(t.DayOfYear.ToString("000", inv)); break;
                case '%': sb.Append('%'); break;
                default: sb.Append('%').Append(f); break;
            }
        }
        return sb.ToString();
    }
}
