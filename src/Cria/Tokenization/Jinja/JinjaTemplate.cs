using System.Runtime.CompilerServices;
using System.Text;

namespace Cria.Tokenization.Jinja;

/// <summary>How a template is parsed and the bounds on rendering it.</summary>
public sealed record JinjaOptions
{
    /// <summary>Remove the first newline after a block or comment tag (transformers renders chat templates with it on).</summary>
    public bool TrimBlocks { get; init; } = true;
    /// <summary>Remove spaces and tabs from the start of a line up to a block or comment tag (on in transformers).</summary>
    public bool LstripBlocks { get; init; } = true;
    /// <summary>Jinja2's keep_trailing_newline: off removes one newline at the very end of the template.</summary>
    public bool KeepTrailingNewline { get; init; }
    /// <summary>Most characters one render may produce, counting every string it builds (output, macro bodies,
    /// concatenations): a template that tries to build more fails instead of exhausting memory.</summary>
    public int MaxOutputLength { get; init; } = 4 << 20;
    /// <summary>Most loop iterations plus macro calls in one render: a runaway template fails instead of hanging.</summary>
    public long MaxSteps { get; init; } = 1_000_000;
    /// <summary>Most units of work in one render (about one per character or list element an operation touches:
    /// scans, comparisons, string building), so that repeated large operations cannot run for hours.</summary>
    public long MaxWork { get; init; } = 200_000_000;
    /// <summary>Deepest macro recursion.</summary>
    public int MaxCallDepth { get; init; } = 64;
    /// <summary>The clock <c>strftime_now</c> reads (local time when not set).</summary>
    public Func<DateTime>? Now { get; init; }
}

/// <summary>
/// A parsed Jinja2 template (the subset chat templates use: text, <c>{{ }}</c>, <c>{% if/elif/else %}</c>,
/// <c>{% for %}</c> with <c>loop</c> and <c>else</c>, <c>{% set %}</c> including <c>namespace()</c> attributes and
/// block sets, <c>{% macro %}</c>, <c>break</c>/<c>continue</c>, whitespace control, Python-like expressions,
/// filters, tests and string/dict methods). Rendering is bounded by <see cref="JinjaOptions"/>; every error is a
/// <see cref="TemplateException"/> naming the template line and column.
/// </summary>
public sealed class JinjaTemplate
{
    readonly List<Node> _body;
    public JinjaOptions Options { get; }
    public string Source { get; }

    JinjaTemplate(string source, List<Node> body, JinjaOptions options) { Source = source; _body = body; Options = options; }

    /// <summary>Parses template text; a syntax error throws <see cref="TemplateException"/>.</summary>
    public static JinjaTemplate Parse(string source, JinjaOptions? options = null)
    {
        options ??= new JinjaOptions();
        string src = source.Replace("\r\n", "\n").Replace('\r', '\n');
        if (!options.KeepTrailingNewline && src.EndsWith('\n')) src = src[..^1];
        var tokens = JinjaLexer.Tokenize(src, options.TrimBlocks, options.LstripBlocks);
        return new JinjaTemplate(source, JinjaParser.Parse(tokens), options);
    }

    /// <summary>Renders with the given global variables (converted by <see cref="JinjaValue.From"/>).</summary>
    public string Render(IEnumerable<KeyValuePair<string, object?>> variables)
    {
        var r = new Renderer(Options);
        foreach (var kv in variables) r.Globals.Vars[kv.Key] = JinjaValue.From(kv.Value);
        var sb = new StringBuilder();
        r.Run(_body, sb);
        return sb.ToString();
    }
}

sealed class Scope(Scope? parent)
{
    public readonly Dictionary<string, object?> Vars = new();
    public readonly Scope? Parent = parent;

    public bool TryGet(string name, out object? value)
    {
        for (var s = this; s != null; s = s.Parent)
            if (s.Vars.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }
}

sealed partial class Renderer
{
    enum Flow { Normal, Break, Continue }

    readonly JinjaOptions _o;
    public readonly Scope Globals = new(null);
    long _steps, _chars, _work;
    int _callDepth;

    public Renderer(JinjaOptions o)
    {
        _o = o;
        Globals.Vars["range"] = new JinjaFunction("range", Range);
        Globals.Vars["namespace"] = new JinjaFunction("namespace", (a, kw) =>
        {
            var ns = new JinjaNamespace();
            foreach (var x in a)
                if (x is OrderedDictionary<string, object?> d) foreach (var kv in d) ns.Attributes[kv.Key] = kv.Value;
            foreach (var (k, v) in kw) ns.Attributes[k] = v;
            return ns;
        });
        Globals.Vars["dict"] = new JinjaFunction("dict", (a, kw) =>
        {
            var d = new OrderedDictionary<string, object?>();
            foreach (var x in a)
                if (x is OrderedDictionary<string, object?> src) foreach (var kv in src) d[kv.Key] = kv.Value;
            foreach (var (k, v) in kw) d[k] = v;
            return d;
        });
        Globals.Vars["raise_exception"] = new JinjaFunction("raise_exception", (a, _) =>
            throw new RaisedError(a.Count > 0 ? JinjaValue.Str(a[0], 10_000) : "raise_exception called"));
        Globals.Vars["strftime_now"] = new JinjaFunction("strftime_now", (a, _) =>
            Strftime(a.Count > 0 && a[0] is string f ? f : throw new JinjaError("strftime_now needs a format string"), (_o.Now ?? (() => DateTime.Now))()));
    }

    public void Run(List<Node> body, StringBuilder sb)
    {
        var top = new Scope(Globals);
        Exec(body, top, sb);
    }

    // ---- bounds ----

    void Step()
    {
        if (++_steps > _o.MaxSteps) throw new JinjaError($"the template ran more than {_o.MaxSteps} loop iterations and macro calls");
    }

    internal void Charge(long units)
    {
        _work += units;
        if (_work > _o.MaxWork) throw new JinjaError($"the template did more than {_o.MaxWork} units of work");
    }

    JinjaError TooLong() => new($"the template built a string longer than {_o.MaxOutputLength} characters");

    static long Size(object? v) => v switch { string s => s.Length, List<object?> l => l.Count, OrderedDictionary<string, object?> d => d.Count, _ => 1 };

    internal string Bounded(string s)
    {
        if (s.Length > _o.MaxOutputLength) throw TooLong();
        Charge(s.Length);
        return s;
    }

    /// <summary>str() of a value, bounded and charged.</summary>
    internal string S(object? v) => v is string s ? s : Bounded(JinjaValue.Str(v, _o.MaxOutputLength));

    void Write(StringBuilder sb, string s)
    {
        _chars += s.Length;
        Charge(s.Length);
        if (_chars > _o.MaxOutputLength) throw new JinjaError($"the template produced more than {_o.MaxOutputLength} characters");
        sb.Append(s);
    }

    static void CheckStack()
    {
        if (!RuntimeHelpers.TryEnsureSufficientExecutionStack()) throw new JinjaError("the template nests too deeply");
    }

    static TemplateException At(Node n, Exception e) => e switch
    {
        TemplateException t => t,
        RaisedError r => new TemplateException(r.Message, n.Line, n.Column, raised: true),
        OverflowException => new TemplateException("integer result too large", n.Line, n.Column),
        _ => new TemplateException(e.Message, n.Line, n.Column),
    };

    static bool Wrappable(Exception e) => e is JinjaError or RaisedError or OverflowException or InvalidCastException
        or ArgumentException or FormatException or InvalidOperationException or IndexOutOfRangeException or DivideByZeroException;

    // ---- statements ----

    Flow Exec(List<Node> body, Scope scope, StringBuilder sb)
    {
        foreach (var node in body)
        {
            var f = ExecOne(node, scope, sb);
            if (f != Flow.Normal) return f;
        }
        return Flow.Normal;
    }

    Flow ExecOne(Node node, Scope scope, StringBuilder sb)
    {
        try
        {
            CheckStack();
            switch (node)
            {
                case TextNode t:
                    Write(sb, t.Text);
                    return Flow.Normal;
                case OutputNode o:
                    Write(sb, S(Eval(o.Value, scope)));
                    return Flow.Normal;
                case IfNode i:
                    foreach (var (cond, b) in i.Branches)
                        if (JinjaValue.Truthy(Eval(cond, scope))) return Exec(b, scope, sb);
                    return i.Else != null ? Exec(i.Else, scope, sb) : Flow.Normal;
                case ForNode f:
                    return ExecFor(f, scope, sb);
                case SetNode s:
                {
                    var v = Eval(s.Value, scope);
                    if (s.Attribute != null)
                    {
                        if (!scope.TryGet(s.Targets[0], out var target) || target is not JinjaNamespace ns)
                            throw new JinjaError($"cannot set attribute '{s.Attribute}' of '{s.Targets[0]}': it is not a namespace()");
                        ns.Attributes[s.Attribute] = v;
                    }
                    else if (s.Targets.Count == 1) scope.Vars[s.Targets[0]] = v;
                    else Unpack(s.Targets, v, scope);
                    return Flow.Normal;
                }
                case SetBlockNode setBlock:
                {
                    var inner = new StringBuilder();
                    Exec(setBlock.Body, scope, inner);
                    scope.Vars[setBlock.Target] = inner.ToString();
                    return Flow.Normal;
                }
                case MacroNode m:
                    scope.Vars[m.Name] = MakeMacro(m, scope);
                    return Flow.Normal;
                case LoopControlNode lc:
                    return lc.IsBreak ? Flow.Break : Flow.Continue;
                default:
                    throw new JinjaError($"cannot execute {node.GetType().Name}");
            }
        }
        catch (Exception e) when (Wrappable(e)) { throw At(node, e); }
    }

    Flow ExecFor(ForNode f, Scope scope, StringBuilder sb)
    {
        var source = Eval(f.Iter, scope);
        var items = Iterate(source).ToList();
        Charge(items.Count);
        if (f.Filter != null)
        {
            var kept = new List<object?>();
            foreach (var it in items)
            {
                Step();
                var fs = new Scope(scope);
                Bind(f.Targets, it, fs);
                if (JinjaValue.Truthy(Eval(f.Filter, fs))) kept.Add(it);
            }
            items = kept;
        }
        if (items.Count == 0)
            return f.Else != null ? Exec(f.Else, scope, sb) : Flow.Normal;
        for (int i = 0; i < items.Count; i++)
        {
            Step();
            var s = new Scope(scope);
            Bind(f.Targets, items[i], s);
            s.Vars["loop"] = new LoopInfo(i, items.Count, i > 0 ? items[i - 1] : new JinjaUndefined("previtem"), i + 1 < items.Count ? items[i + 1] : new JinjaUndefined("nextitem"));
            if (Exec(f.Body, s, sb) == Flow.Break) break;
        }
        return Flow.Normal;
    }

    static void Bind(List<string> targets, object? item, Scope s)
    {
        if (targets.Count == 1) s.Vars[targets[0]] = item;
        else Unpack(targets, item, s);
    }

    static void Unpack(List<string> targets, object? v, Scope s)
    {
        var parts = v switch
        {
            List<object?> l => l,
            string str => str.Select(c => (object?)c.ToString()).ToList(),
            _ => throw new JinjaError($"cannot unpack {JinjaValue.TypeName(v)} into {targets.Count} names"),
        };
        if (parts.Count != targets.Count) throw new JinjaError($"cannot unpack {parts.Count} values into {targets.Count} names");
        for (int i = 0; i < targets.Count; i++) s.Vars[targets[i]] = parts[i];
    }

    internal static IEnumerable<object?> Iterate(object? v) => v switch
    {
        List<object?> l => l,
        OrderedDictionary<string, object?> d => d.Keys.Cast<object?>(),
        string s => s.Select(c => (object?)c.ToString()),
        JinjaUndefined => [],
        JinjaNamespace ns => ns.Attributes.Keys.Cast<object?>(),
        _ => throw new JinjaError($"{JinjaValue.TypeName(v)} is not iterable"),
    };

    JinjaFunction MakeMacro(MacroNode m, Scope defining) => new(m.Name, (args, kwargs) =>
    {
        Step();
        if (++_callDepth > _o.MaxCallDepth) throw new JinjaError($"macro calls nested deeper than {_o.MaxCallDepth}");
        try
        {
            if (args.Count > m.Params.Count) throw new JinjaError($"macro '{m.Name}' takes {m.Params.Count} arguments, {args.Count} given");
            var s = new Scope(defining);
            for (int i = 0; i < m.Params.Count; i++)
            {
                var (name, def) = m.Params[i];
                object? v;
                if (i < args.Count) v = args[i];
                else
                {
                    int k = kwargs.FindIndex(p => p.Name == name);
                    v = k >= 0 ? kwargs[k].Value : def != null ? Eval(def, s) : new JinjaUndefined(name);
                }
                s.Vars[name] = v;
            }
            foreach (var (k, _) in kwargs)
                if (!m.Params.Any(p => p.Name == k)) throw new JinjaError($"macro '{m.Name}' has no argument '{k}'");
            var sb = new StringBuilder();
            Exec(m.Body, s, sb);
            return sb.ToString();
        }
        finally { _callDepth--; }
    });

    // ---- expressions ----

    internal object? Eval(Expr e, Scope scope)
    {
        try
        {
            CheckStack();
            return EvalInner(e, scope);
        }
        catch (Exception ex) when (Wrappable(ex)) { throw At(e, ex); }
    }

    object? EvalInner(Expr e, Scope scope)
    {
        switch (e)
        {
            case LiteralExpr l: return l.Value;
            case NameExpr n: return scope.TryGet(n.Name, out var v) ? v : new JinjaUndefined(n.Name);
            case ListExpr l:
            {
                var list = new List<object?>(l.Items.Count);
                foreach (var it in l.Items) list.Add(Eval(it, scope));
                return list;
            }
            case DictExpr d:
            {
                var dict = new OrderedDictionary<string, object?>();
                foreach (var (k, val) in d.Items) dict[S(Eval(k, scope))] = Eval(val, scope);
                return dict;
            }
            case AttrExpr a: return GetAttr(Eval(a.Target, scope), a.Name);
            case IndexExpr ix: return GetItem(Eval(ix.Target, scope), Eval(ix.Index, scope));
            case SliceExpr sl:
                return Slice(Eval(sl.Target, scope), sl.Start == null ? null : Eval(sl.Start, scope),
                    sl.Stop == null ? null : Eval(sl.Stop, scope), sl.Step == null ? null : Eval(sl.Step, scope));
            case CallExpr c: return EvalCall(c, scope);
            case FilterExpr f:
            {
                var target = Eval(f.Target, scope);
                var args = f.Args.Select(a => Eval(a, scope)).ToList();
                var kwargs = f.Kwargs.Select(k => (k.Name, Eval(k.Value, scope))).ToList();
                return ApplyFilter(f.Name, target, args, kwargs);
            }
            case TestExpr t:
            {
                var target = Eval(t.Target, scope);
                var args = t.Args.Select(a => Eval(a, scope)).ToList();
                return RunTest(t.Name, target, args) != t.Negated;
            }
            case UnaryExpr u:
            {
                var v2 = Eval(u.Operand, scope);
                return u.Op switch
                {
                    "not" => !JinjaValue.Truthy(v2),
                    "-" => v2 switch
                    {
                        long l => (object)checked(-l),
                        double d => -d,
                        bool b => b ? -1L : 0L,
                        _ => throw new JinjaError($"bad operand for unary -: {JinjaValue.TypeName(v2)}"),
                    },
                    _ => v2 is long or double ? v2 : v2 is bool b2 ? (b2 ? 1L : 0L) : throw new JinjaError($"bad operand for unary +: {JinjaValue.TypeName(v2)}"),
                };
            }
            case BinaryExpr b:
            {
                if (b.Op == "and")
                {
                    var l = Eval(b.Left, scope);
                    return JinjaValue.Truthy(l) ? Eval(b.Right, scope) : l;
                }
                if (b.Op == "or")
                {
                    var l = Eval(b.Left, scope);
                    return JinjaValue.Truthy(l) ? l : Eval(b.Right, scope);
                }
                return Binary(b.Op, Eval(b.Left, scope), Eval(b.Right, scope));
            }
            case CondExpr c:
                return JinjaValue.Truthy(Eval(c.Cond, scope)) ? Eval(c.Then, scope)
                    : c.Else != null ? Eval(c.Else, scope) : new JinjaUndefined("if-expression");
            default:
                throw new JinjaError($"cannot evaluate {e.GetType().Name}");
        }
    }

    object? EvalCall(CallExpr c, Scope scope)
    {
        var args = c.Args.Select(a => Eval(a, scope)).ToList();
        var kwargs = c.Kwargs.Select(k => (k.Name, Eval(k.Value, scope))).ToList();
        if (c.Target is AttrExpr a)
        {
            var obj = Eval(a.Target, scope);
            if (obj is JinjaUndefined u) throw new JinjaError($"'{u.Name}' is undefined");
            if (obj is OrderedDictionary<string, object?> d && d.TryGetValue(a.Name, out var member) && member is JinjaFunction mf)
                return mf.Call(args, kwargs);
            if (obj is JinjaNamespace ns && ns.Attributes.TryGetValue(a.Name, out var nm) && nm is JinjaFunction nf)
                return nf.Call(args, kwargs);
            return CallMethod(obj, a.Name, args, kwargs);
        }
        var f = Eval(c.Target, scope);
        return f switch
        {
            JinjaFunction fn => fn.Call(args, kwargs),
            JinjaUndefined u => throw new JinjaError($"'{u.Name}' is undefined and cannot be called"),
            _ => throw new JinjaError($"{JinjaValue.TypeName(f)} is not callable"),
        };
    }

    internal static object? GetAttr(object? obj, string name)
    {
        switch (obj)
        {
            case JinjaUndefined u: throw new JinjaError($"'{u.Name}' is undefined (reading '.{name}')");
            case OrderedDictionary<string, object?> d: return d.TryGetValue(name, out var v) ? v : new JinjaUndefined(name);
            case JinjaNamespace ns: return ns.Attributes.TryGetValue(name, out var nv) ? nv : new JinjaUndefined(name);
            case LoopInfo l:
                return name switch
                {
                    "index" => (long)l.Index0 + 1,
                    "index0" => (long)l.Index0,
                    "revindex" => (long)(l.Length - l.Index0),
                    "revindex0" => (long)(l.Length - l.Index0 - 1),
                    "first" => l.Index0 == 0,
                    "last" => l.Index0 == l.Length - 1,
                    "length" => (long)l.Length,
                    "previtem" => l.Prev,
                    "nextitem" => l.Next,
                    "depth" => 1L,
                    "depth0" => 0L,
                    "cycle" => new JinjaFunction("loop.cycle", (a, _) => a.Count == 0 ? throw new JinjaError("loop.cycle needs arguments") : a[l.Index0 % a.Count]),
                    _ => new JinjaUndefined(name),
                };
            default: return new JinjaUndefined(name);
        }
    }

    internal static object? GetItem(object? obj, object? key)
    {
        switch (obj)
        {
            case JinjaUndefined u: throw new JinjaError($"'{u.Name}' is undefined (reading [{JinjaValue.Repr(key)}])");
            case List<object?> l when key is long or bool:
            {
                long i = ToLong(key);
                if (i < 0) i += l.Count;
                return i >= 0 && i < l.Count ? l[(int)i] : new JinjaUndefined($"[{ToLong(key)}]");
            }
            case string s when key is long or bool:
            {
                long i = ToLong(key);
                if (i < 0) i += s.Length;
                return i >= 0 && i < s.Length ? s[(int)i].ToString() : new JinjaUndefined($"[{ToLong(key)}]");
            }
            case OrderedDictionary<string, object?> d:
                return key is string k ? (d.TryGetValue(k, out var v) ? v : new JinjaUndefined(k))
                    : key is long or double or bool && d.TryGetValue(JinjaValue.Str(key), out var v2) ? v2 : new JinjaUndefined(JinjaValue.Str(key));
            default:
                return key is string name ? GetAttr(obj, name) : new JinjaUndefined(JinjaValue.Repr(key));
        }
    }

    static long ToLong(object? v) => v switch { long l => l, bool b => b ? 1 : 0, _ => throw new JinjaError($"expected an integer, got {JinjaValue.TypeName(v)}") };

    object? Slice(object? obj, object? start, object? stop, object? step)
    {
        long st = step is null or JinjaUndefined ? 1 : ToLong(step);
        if (st == 0) throw new JinjaError("slice step cannot be zero");
        int len = obj switch
        {
            List<object?> l => l.Count,
            string s => s.Length,
            JinjaUndefined u => throw new JinjaError($"'{u.Name}' is undefined (slicing)"),
            _ => throw new JinjaError($"{JinjaValue.TypeName(obj)} cannot be sliced"),
        };
        long Norm(object? v, long def)
        {
            if (v is null or JinjaUndefined) return def;
            long i = ToLong(v);
            if (i < 0) i += len;
            if (st > 0) return Math.Clamp(i, 0, len);
            return Math.Clamp(i, -1, len - 1);
        }
        long a = Norm(start, st > 0 ? 0 : len - 1), b = Norm(stop, st > 0 ? len : -1);
        Charge(len);
        var idx = new List<int>();
        if (st > 0) for (long i = a; i < b; i += st) idx.Add((int)i);
        else for (long i = a; i > b; i += st) idx.Add((int)i);
        if (obj is string str)
        {
            var sb = new StringBuilder(idx.Count);
            foreach (var i in idx) sb.Append(str[i]);
            return sb.ToString();
        }
        var list = (List<object?>)obj!;
        return idx.Select(i => list[i]).ToList();
    }

    // ---- operators ----

    internal static bool PyEquals(object? a, object? b)
    {
        if (a is null) return b is null;
        if (b is null) return false;
        if (a is JinjaUndefined) return b is JinjaUndefined;
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a) == ToDouble(b) : ToLongNum(a) == ToLongNum(b);
        switch (a)
        {
            case string s: return b is string t && s == t;
            case List<object?> l:
                if (b is not List<object?> m || l.Count != m.Count) return false;
                for (int i = 0; i < l.Count; i++) if (!PyEquals(l[i], m[i])) return false;
                return true;
            case OrderedDictionary<string, object?> d:
                if (b is not OrderedDictionary<string, object?> e || d.Count != e.Count) return false;
                foreach (var kv in d) if (!e.TryGetValue(kv.Key, out var o) || !PyEquals(kv.Value, o)) return false;
                return true;
            default: return ReferenceEquals(a, b);
        }
    }

    static bool IsNumber(object? v) => v is long or double or bool;
    static double ToDouble(object? v) => v switch { long l => l, double d => d, bool b => b ? 1 : 0, _ => throw new JinjaError($"expected a number, got {JinjaValue.TypeName(v)}") };
    static long ToLongNum(object? v) => v switch { long l => l, bool b => b ? 1 : 0, double d => (long)d, _ => throw new JinjaError($"expected a number, got {JinjaValue.TypeName(v)}") };

    static int Compare(object? a, object? b, string op)
    {
        if (IsNumber(a) && IsNumber(b))
            return a is double || b is double ? ToDouble(a).CompareTo(ToDouble(b)) : ToLongNum(a).CompareTo(ToLongNum(b));
        if (a is string s && b is string t) return string.CompareOrdinal(s, t);
        if (a is List<object?> l && b is List<object?> m)
        {
            for (int i = 0; i < Math.Min(l.Count, m.Count); i++)
                if (!PyEquals(l[i], m[i])) return Compare(l[i], m[i], op);
            return l.Count.CompareTo(m.Count);
        }
        throw new JinjaError($"'{op}' is not supported between {JinjaValue.TypeName(a)} and {JinjaValue.TypeName(b)}");
    }

    internal bool Contains(object? container, object? item)
    {
        Charge(Size(container));
        return ContainsUncharged(container, item);
    }

    static bool ContainsUncharged(object? container, object? item) => container switch
    {
        string s => item is string t ? s.Contains(t, StringComparison.Ordinal) : throw new JinjaError($"'in <string>' needs a string, not {JinjaValue.TypeName(item)}"),
        List<object?> l => l.Any(x => PyEquals(x, item)),
        OrderedDictionary<string, object?> d => item is string k && d.ContainsKey(k),
        JinjaNamespace ns => item is string k2 && ns.Attributes.ContainsKey(k2),
        JinjaUndefined => false,
        _ => throw new JinjaError($"'in' is not supported on {JinjaValue.TypeName(container)}"),
    };

    object? Binary(string op, object? l, object? r)
    {
        switch (op)
        {
            case "==": Charge(Math.Min(Size(l), Size(r))); return PyEquals(l, r);
            case "!=": Charge(Math.Min(Size(l), Size(r))); return !PyEquals(l, r);
            case "<": return Compare(l, r, op) < 0;
            case "<=": return Compare(l, r, op) <= 0;
            case ">": return Compare(l, r, op) > 0;
            case ">=": return Compare(l, r, op) >= 0;
            case "in": return Contains(r, l);
            case "not in": return !Contains(r, l);
            case "~": { var a = S(l); var b = S(r); return a.Length + (long)b.Length > _o.MaxOutputLength ? throw TooLong() : Bounded(a + b); }
        }
        if (l is JinjaUndefined ul) throw new JinjaError($"'{ul.Name}' is undefined (in '{op}')");
        if (r is JinjaUndefined ur) throw new JinjaError($"'{ur.Name}' is undefined (in '{op}')");
        if (op == "+")
        {
            if (l is string ls && r is string rs) return ls.Length + (long)rs.Length > _o.MaxOutputLength ? throw TooLong() : Bounded(ls + rs);
            if (l is List<object?> ll && r is List<object?> rl)
            {
                if ((long)ll.Count + rl.Count > _o.MaxOutputLength) throw new JinjaError("list too long");
                Charge(ll.Count + rl.Count);
                return ll.Concat(rl).ToList();
            }
        }
        if (op == "*")
        {
            if (l is string s && r is long n) return Repeat(s, n);
            if (l is long n2 && r is string s2) return Repeat(s2, n2);
            if (l is List<object?> li && r is long n3)
            {
                if (n3 <= 0) return new List<object?>();
                if (li.Count * n3 > _o.MaxOutputLength) throw new JinjaError("list too long");
                Charge(li.Count * n3);
                var res = new List<object?>();
                for (long i = 0; i < n3; i++) res.AddRange(li);
                return res;
            }
        }
        if (!IsNumber(l) || !IsNumber(r))
            throw new JinjaError($"unsupported operand types for {op}: {JinjaValue.TypeName(l)} and {JinjaValue.TypeName(r)}");
        bool fl = l is double || r is double;
        switch (op)
        {
            case "+": return fl ? ToDouble(l) + ToDouble(r) : (object)checked(ToLongNum(l) + ToLongNum(r));
            case "-": return fl ? ToDouble(l) - ToDouble(r) : (object)checked(ToLongNum(l) - ToLongNum(r));
            case "*": return fl ? ToDouble(l) * ToDouble(r) : (object)checked(ToLongNum(l) * ToLongNum(r));
            case "/":
                if (ToDouble(r) == 0) throw new JinjaError("division by zero");
                return ToDouble(l) / ToDouble(r);
            case "//":
                if (ToDouble(r) == 0) throw new JinjaError("division by zero");
                if (fl) return Math.Floor(ToDouble(l) / ToDouble(r));
                { long a = ToLongNum(l), b = ToLongNum(r); long q = a / b; if ((a % b != 0) && ((a < 0) != (b < 0))) q--; return q; }
            case "%":
                if (ToDouble(r) == 0) throw new JinjaError("modulo by zero");
                if (fl) { double a = ToDouble(l), b = ToDouble(r); double m = a % b; if (m != 0 && (m < 0) != (b < 0)) m += b; return m; }
                { long a = ToLongNum(l), b = ToLongNum(r); long m = a % b; if (m != 0 && (m < 0) != (b < 0)) m += b; return m; }
            case "**":
                if (!fl && ToLongNum(r) >= 0)
                {
                    long bas = ToLongNum(l), ex = ToLongNum(r), res = 1;
                    for (long i = 0; i < ex; i++) { res = checked(res * bas); if (res == 0 || res == 1 && bas == 1) break; }
                    return res;
                }
                return Math.Pow(ToDouble(l), ToDouble(r));
        }
        throw new JinjaError($"unknown operator '{op}'");
    }

    string Repeat(string s, long n)
    {
        if (n <= 0 || s.Length == 0) return "";
        if (s.Length * n > _o.MaxOutputLength) throw TooLong();
        Charge(s.Length * n);
        return new StringBuilder(s.Length * (int)n).Insert(0, s, (int)n).ToString();
    }

    object? Range(List<object?> a, List<(string Name, object? Value)> kw)
    {
        long start = 0, stop, step = 1;
        if (a.Count == 1) stop = ToLong(a[0]);
        else if (a.Count is 2 or 3) { start = ToLong(a[0]); stop = ToLong(a[1]); if (a.Count == 3) step = ToLong(a[2]); }
        else throw new JinjaError("range takes 1 to 3 arguments");
        if (step == 0) throw new JinjaError("range step cannot be zero");
        long count = step > 0 ? (stop > start ? (stop - start + step - 1) / step : 0) : (start > stop ? (start - stop - step - 1) / -step : 0);
        if (count > _o.MaxSteps) throw new JinjaError($"range of {count} items is larger than the iteration limit {_o.MaxSteps}");
        var l = new List<object?>((int)count);
        for (long i = 0, v = start; i < count; i++, v += step) l.Add(v);
        return l;
    }
}

/// <summary>raise_exception from the template.</summary>
sealed class RaisedError(string message) : Exception(message);
