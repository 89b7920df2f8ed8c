using System.Globalization;

namespace Cria.Tokenization.Jinja;

// ---- AST ----

abstract record Node(int Line, int Column);

// Statements
sealed record TextNode(string Text, int Line, int Column) : Node(Line, Column);
sealed record OutputNode(Expr Value, int Line, int Column) : Node(Line, Column);
sealed record IfNode(List<(Expr Cond, List<Node> Body)> Branches, List<Node>? Else, int Line, int Column) : Node(Line, Column);
sealed record ForNode(List<string> Targets, Expr Iter, Expr? Filter, List<Node> Body, List<Node>? Else, int Line, int Column) : Node(Line, Column);
sealed record SetNode(List<string> Targets, string? Attribute, Expr Value, int Line, int Column) : Node(Line, Column);
sealed record SetBlockNode(string Target, List<Node> Body, int Line, int Column) : Node(Line, Column);
sealed record MacroNode(string Name, List<(string Name, Expr? Default)> Params, List<Node> Body, int Line, int Column) : Node(Line, Column);
sealed record LoopControlNode(bool IsBreak, int Line, int Column) : Node(Line, Column);

// Expressions
abstract record Expr(int Line, int Column) : Node(Line, Column);
sealed record LiteralExpr(object? Value, int Line, int Column) : Expr(Line, Column);
sealed record NameExpr(string Name, int Line, int Column) : Expr(Line, Column);
sealed record ListExpr(List<Expr> Items, int Line, int Column) : Expr(Line, Column);
sealed record DictExpr(List<(Expr Key, Expr Value)> Items, int Line, int Column) : Expr(Line, Column);
sealed record AttrExpr(Expr Target, string Name, int Line, int Column) : Expr(Line, Column);
sealed record IndexExpr(Expr Target, Expr Index, int Line, int Column) : Expr(Line, Column);
sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop, Expr? Step, int Line, int Column) : Expr(Line, Column);
sealed record CallExpr(Expr Target, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line, int Column) : Expr(Line, Column);
sealed record FilterExpr(Expr Target, string Name, List<Expr> Args, List<(string Name, Expr Value)> Kwargs, int Line, int Column) : Expr(Line, Column);
sealed record TestExpr(Expr Target, string Name, List<Expr> Args, bool Negated, int Line, int Column) : Expr(Line, Column);
sealed record BinaryExpr(string Op, Expr Left, Expr Right, int Line, int Column) : Expr(Line, Column);
sealed record UnaryExpr(string Op, Expr Operand, int Line, int Column) : Expr(Line, Column);
sealed record CondExpr(Expr Then, Expr Cond, Expr? Else, int Line, int Column) : Expr(Line, Column);

/// <summary>Recursive-descent parser of the token stream into statements and expressions, with Jinja2's operator
/// precedence (lowest first): <c>x if c else y</c>, <c>or</c>, <c>and</c>, <c>not</c>, comparisons and <c>in</c>,
/// <c>+ -</c>, <c>~</c>, <c>* / // %</c>, <c>**</c>, unary <c>-</c>, then postfix access, calls, filters and tests.</summary>
sealed class JinjaParser
{
    const int MaxNesting = 200;
    readonly List<Token> _t;
    int _i;
    int _depth;

    JinjaParser(List<Token> tokens) { _t = tokens; }

    public static List<Node> Parse(List<Token> tokens)
    {
        var p = new JinjaParser(tokens);
        var body = p.ParseBody([], out var end);
        if (end != null) throw Error($"unexpected '{{% {end} %}}'", p.Peek);
        return body;
    }

    Token Peek => _t[_i];
    Token PeekAt(int k) => _t[Math.Min(_i + k, _t.Count - 1)];
    Token Next() => _t[_i < _t.Count - 1 ? _i++ : _i];

    static TemplateException Error(string msg, Token at) => new(msg, at.Line, at.Column);
    TemplateException Error(string msg) => Error(msg, Peek);

    static string Describe(Token t) => t.Kind switch
    {
        TokenKind.Eof => "end of template",
        TokenKind.BlockEnd => "'%}'",
        TokenKind.VarEnd => "'}}'",
        TokenKind.String => "a string",
        TokenKind.Text => "text",
        _ => $"'{t.Value}'",
    };

    void ExpectOp(string op)
    {
        if (!Peek.IsOp(op)) throw Error($"expected '{op}', found {Describe(Peek)}");
        _i++;
    }

    string ExpectName()
    {
        if (Peek.Kind != TokenKind.Name) throw Error($"expected a name, found {Describe(Peek)}");
        return Next().Value;
    }

    void ExpectBlockEnd()
    {
        if (Peek.Kind != TokenKind.BlockEnd) throw Error($"expected '%}}', found {Describe(Peek)}");
        _i++;
    }

    // Parses statements until one of the end tags (returned in `end`, its tokens up to the tag name consumed) or EOF.
    List<Node> ParseBody(string[] endTags, out string? end)
    {
        if (++_depth > MaxNesting) throw Error("blocks nested too deeply");
        var body = new List<Node>();
        end = null;
        while (true)
        {
            var t = Peek;
            switch (t.Kind)
            {
                case TokenKind.Eof:
                    if (endTags.Length > 0) throw Error($"unexpected end of template, expected {string.Join(" or ", endTags.Select(e => $"'{{% {e} %}}'"))}");
                    _depth--;
                    return body;
                case TokenKind.Text:
                    _i++;
                    body.Add(new TextNode(t.Value, t.Line, t.Column));
                    break;
                case TokenKind.VarBegin:
                {
                    _i++;
                    var e = ParseTuple(true);
                    if (Peek.Kind != TokenKind.VarEnd) throw Error($"expected '}}}}', found {Describe(Peek)}");
                    _i++;
                    body.Add(new OutputNode(e, t.Line, t.Column));
                    break;
                }
                case TokenKind.BlockBegin:
                {
                    var name = PeekAt(1);
                    if (name.Kind != TokenKind.Name) throw Error($"expected a statement name, found {Describe(name)}", name);
                    if (endTags.Contains(name.Value))
                    {
                        _i += 2;
                        end = name.Value;
                        _depth--;
                        return body;
                    }
                    _i += 2;
                    body.Add(ParseStatement(name));
                    break;
                }
                default:
                    throw Error($"unexpected {Describe(t)}");
            }
        }
    }

    Node ParseStatement(Token name)
    {
        switch (name.Value)
        {
            case "if":
            {
                var branches = new List<(Expr, List<Node>)>();
                List<Node>? elseBody = null;
                var cond = ParseTuple(true);
                ExpectBlockEnd();
                while (true)
                {
                    var body = ParseBody(["elif", "else", "endif"], out var end);
                    branches.Add((cond, body));
                    if (end == "elif") { cond = ParseTuple(true); ExpectBlockEnd(); continue; }
                    if (end == "else")
                    {
                        ExpectBlockEnd();
                        elseBody = ParseBody(["endif"], out _);
                    }
                    ExpectBlockEnd();
                    break;
                }
                return new IfNode(branches, elseBody, name.Line, name.Column);
            }
            case "for":
            {
                var targets = new List<string> { ExpectName() };
                while (Peek.IsOp(",")) { _i++; targets.Add(ExpectName()); }
                if (!Peek.IsName("in")) throw Error($"expected 'in', found {Describe(Peek)}");
                _i++;
                var iter = ParseTuple(false);
                Expr? filter = null;
                if (Peek.IsName("if")) { _i++; filter = ParseExpression(true); }
                if (Peek.IsName("recursive")) throw Error("recursive loops are not supported");
                ExpectBlockEnd();
                var body = ParseBody(["else", "endfor"], out var end);
                List<Node>? elseBody = null;
                if (end == "else") { ExpectBlockEnd(); elseBody = ParseBody(["endfor"], out _); }
                ExpectBlockEnd();
                return new ForNode(targets, iter, filter, body, elseBody, name.Line, name.Column);
            }
            case "set":
            {
                var first = ExpectName();
                if (Peek.IsOp("."))
                {
                    _i++;
                    var attr = ExpectName();
                    ExpectOp("=");
                    var v = ParseTuple(true);
                    ExpectBlockEnd();
                    return new SetNode([first], attr, v, name.Line, name.Column);
                }
                var targets = new List<string> { first };
                while (Peek.IsOp(",")) { _i++; targets.Add(ExpectName()); }
                if (Peek.Kind == TokenKind.BlockEnd && targets.Count == 1)
                {
                    _i++;
                    var body = ParseBody(["endset"], out _);
                    ExpectBlockEnd();
                    return new SetBlockNode(first, body, name.Line, name.Column);
                }
                ExpectOp("=");
                var value = ParseTuple(true);
                ExpectBlockEnd();
                return new SetNode(targets, null, value, name.Line, name.Column);
            }
            case "macro":
            {
                var macroName = ExpectName();
                ExpectOp("(");
                var ps = new List<(string, Expr?)>();
                while (!Peek.IsOp(")"))
                {
                    var pn = ExpectName();
                    Expr? def = null;
                    if (Peek.IsOp("=")) { _i++; def = ParseExpression(true); }
                    ps.Add((pn, def));
                    if (!Peek.IsOp(",")) break;
                    _i++;
                }
                ExpectOp(")");
                ExpectBlockEnd();
                var body = ParseBody(["endmacro"], out _);
                if (Peek.Kind == TokenKind.Name) _i++; // {% endmacro name %}
                ExpectBlockEnd();
                return new MacroNode(macroName, ps, body, name.Line, name.Column);
            }
            case "generation":
            {
                // transformers' {% generation %} marks assistant text for training masks; it renders its body.
                ExpectBlockEnd();
                var body = ParseBody(["endgeneration"], out _);
                ExpectBlockEnd();
                return new IfNode([(new LiteralExpr(true, name.Line, name.Column), body)], null, name.Line, name.Column);
            }
            case "break":
            case "continue":
                ExpectBlockEnd();
                return new LoopControlNode(name.Value == "break", name.Line, name.Column);
            default:
                throw Error($"unknown statement '{name.Value}'", name);
        }
    }

    // A comma-separated tuple (as a list) or a single expression.
    Expr ParseTuple(bool withCondExpr)
    {
        var start = Peek;
        var first = ParseExpression(withCondExpr);
        if (!Peek.IsOp(",")) return first;
        var items = new List<Expr> { first };
        while (Peek.IsOp(","))
        {
            _i++;
            if (Peek.Kind is TokenKind.BlockEnd or TokenKind.VarEnd || Peek.IsOp(")")) break;
            items.Add(ParseExpression(withCondExpr));
        }
        return new ListExpr(items, start.Line, start.Column);
    }

    Expr ParseExpression(bool withCondExpr = true)
    {
        if (++_depth > MaxNesting || !System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Error("expression nested too deeply");
        var e = withCondExpr ? ParseCondExpr() : ParseOr();
        _depth--;
        return e;
    }

    Expr ParseCondExpr()
    {
        var e = ParseOr();
        while (Peek.IsName("if"))
        {
            var t = Next();
            var cond = ParseOr();
            Expr? other = null;
            if (Peek.IsName("else")) { _i++; other = ParseCondExpr(); }
            e = new CondExpr(e, cond, other, t.Line, t.Column);
        }
        return e;
    }

    Expr ParseOr()
    {
        var e = ParseAnd();
        while (Peek.IsName("or")) { var t = Next(); e = new BinaryExpr("or", e, ParseAnd(), t.Line, t.Column); }
        return e;
    }

    Expr ParseAnd()
    {
        var e = ParseNot();
        while (Peek.IsName("and")) { var t = Next(); e = new BinaryExpr("and", e, ParseNot(), t.Line, t.Column); }
        return e;
    }

    Expr ParseNot()
    {
        if (Peek.IsName("not"))
        {
            var t = Next();
            if (++_depth > MaxNesting) throw Error("expression nested too deeply");
            var e = new UnaryExpr("not", ParseNot(), t.Line, t.Column);
            _depth--;
            return e;
        }
        return ParseCompare();
    }

    Expr ParseCompare()
    {
        var e = ParseMath1();
        while (true)
        {
            var t = Peek;
            string? op = null;
            if (t.Kind == TokenKind.Operator && t.Value is "==" or "!=" or "<" or "<=" or ">" or ">=") op = t.Value;
            else if (t.IsName("in")) op = "in";
            else if (t.IsName("not") && PeekAt(1).IsName("in")) { _i++; op = "not in"; }
            if (op == null) return e;
            _i++;
            e = new BinaryExpr(op, e, ParseMath1(), t.Line, t.Column);
        }
    }

    Expr ParseMath1()
    {
        var e = ParseConcat();
        while (Peek.IsOp("+") || Peek.IsOp("-")) { var t = Next(); e = new BinaryExpr(t.Value, e, ParseConcat(), t.Line, t.Column); }
        return e;
    }

    Expr ParseConcat()
    {
        var e = ParseMath2();
        while (Peek.IsOp("~")) { var t = Next(); e = new BinaryExpr("~", e, ParseMath2(), t.Line, t.Column); }
        return e;
    }

    Expr ParseMath2()
    {
        var e = ParsePow();
        while (Peek.Kind == TokenKind.Operator && Peek.Value is "*" or "/" or "//" or "%")
        {
            var t = Next();
            e = new BinaryExpr(t.Value, e, ParsePow(), t.Line, t.Column);
        }
        return e;
    }

    Expr ParsePow()
    {
        var e = ParseUnary();
        while (Peek.IsOp("**")) { var t = Next(); e = new BinaryExpr("**", e, ParseUnary(), t.Line, t.Column); }
        return e;
    }

    // As Jinja2: filters and tests apply to the whole unary expression ("-3|abs" is abs(-3)).
    Expr ParseUnary(bool withFilter = true)
    {
        var t = Peek;
        Expr e;
        if (t.IsOp("-") || t.IsOp("+"))
        {
            _i++;
            if (++_depth > MaxNesting) throw Error("expression nested too deeply");
            e = new UnaryExpr(t.Value, ParseUnary(false), t.Line, t.Column);
            _depth--;
        }
        else e = ParsePostfix(ParsePrimary());
        return withFilter ? ParseFilterAndTest(e) : e;
    }

    Expr ParsePostfix(Expr e)
    {
        while (true)
        {
            var t = Peek;
            if (t.IsOp("."))
            {
                _i++;
                var n = Peek;
                if (n.Kind == TokenKind.Name) { _i++; e = new AttrExpr(e, n.Value, t.Line, t.Column); }
                else if (n.Kind == TokenKind.Integer) { _i++; e = new IndexExpr(e, new LiteralExpr(long.Parse(n.Value, CultureInfo.InvariantCulture), n.Line, n.Column), t.Line, t.Column); }
                else throw Error($"expected an attribute name, found {Describe(n)}");
            }
            else if (t.IsOp("["))
            {
                _i++;
                Expr? start = null, stop = null, step = null;
                bool slice = false;
                if (!Peek.IsOp(":")) start = ParseExpression();
                if (Peek.IsOp(":"))
                {
                    slice = true; _i++;
                    if (!Peek.IsOp(":") && !Peek.IsOp("]")) stop = ParseExpression();
                    if (Peek.IsOp(":")) { _i++; if (!Peek.IsOp("]")) step = ParseExpression(); }
                }
                ExpectOp("]");
                e = slice ? new SliceExpr(e, start, stop, step, t.Line, t.Column)
                          : new IndexExpr(e, start ?? throw Error("expected an index", t), t.Line, t.Column);
            }
            else if (t.IsOp("("))
            {
                var (args, kwargs) = ParseCallArgs();
                e = new CallExpr(e, args, kwargs, e.Line, e.Column);
            }
            else return e;
        }
    }

    (List<Expr>, List<(string, Expr)>) ParseCallArgs()
    {
        ExpectOp("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!Peek.IsOp(")"))
        {
            if (Peek.Kind == TokenKind.Name && PeekAt(1).IsOp("="))
            {
                var n = Next().Value; _i++;
                kwargs.Add((n, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw Error("positional argument after keyword argument");
                args.Add(ParseExpression());
            }
            if (!Peek.IsOp(",")) break;
            _i++;
        }
        ExpectOp(")");
        return (args, kwargs);
    }

    Expr ParseFilterAndTest(Expr e)
    {
        while (true)
        {
            var t = Peek;
            if (t.IsOp("|"))
            {
                _i++;
                var name = ExpectName();
                var args = new List<Expr>();
                var kwargs = new List<(string, Expr)>();
                if (Peek.IsOp("(")) (args, kwargs) = ParseCallArgs();
                e = new FilterExpr(e, name, args, kwargs, t.Line, t.Column);
                e = ParsePostfix(e);
            }
            else if (t.IsName("is"))
            {
                _i++;
                bool negated = false;
                if (Peek.IsName("not")) { negated = true; _i++; }
                var n = Peek;
                string name;
                if (n.Kind == TokenKind.Name) { _i++; name = n.Value; }
                else if (n.Kind == TokenKind.Operator && n.Value is "==" or "!=" or "<" or "<=" or ">" or ">=") { _i++; name = n.Value; }
                else throw Error($"expected a test name, found {Describe(n)}");
                var args = new List<Expr>();
                if (Peek.IsOp("(")) args = ParseCallArgs().Item1;
                else if (Peek.Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float || Peek.IsOp("[") || Peek.IsOp("{")
                         || (Peek.Kind == TokenKind.Name && Peek.Value is not ("and" or "or" or "else" or "if" or "in" or "is" or "not")))
                    args.Add(ParsePostfix(ParsePrimary()));
                e = new TestExpr(e, name, args, negated, t.Line, t.Column);
            }
            else return e;
        }
    }

    Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.String:
            {
                // Adjacent string literals concatenate, as in Python.
                var s = t.Value;
                while (Peek.Kind == TokenKind.String) s += Next().Value;
                return new LiteralExpr(s, t.Line, t.Column);
            }
            case TokenKind.Integer:
                if (!long.TryParse(t.Value, NumberStyles.None, CultureInfo.InvariantCulture, out long l)) throw Error("integer literal too large", t);
                return new LiteralExpr(l, t.Line, t.Column);
            case TokenKind.Float:
                return new LiteralExpr(double.Parse(t.Value, NumberStyles.Float, CultureInfo.InvariantCulture), t.Line, t.Column);
            case TokenKind.Name:
                return t.Value switch
                {
                    "true" or "True" => new LiteralExpr(true, t.Line, t.Column),
                    "false" or "False" => new LiteralExpr(false, t.Line, t.Column),
                    "none" or "None" => new LiteralExpr(null, t.Line, t.Column),
                    _ => new NameExpr(t.Value, t.Line, t.Column),
                };
            case TokenKind.Operator when t.Value == "(":
            {
                if (Peek.IsOp(")")) { _i++; return new ListExpr([], t.Line, t.Column); }
                var e = ParseExpression();
                if (Peek.IsOp(","))
                {
                    var items = new List<Expr> { e };
                    while (Peek.IsOp(",")) { _i++; if (Peek.IsOp(")")) break; items.Add(ParseExpression()); }
                    e = new ListExpr(items, t.Line, t.Column);
                }
                ExpectOp(")");
                return e;
            }
            case TokenKind.Operator when t.Value == "[":
            {
                var items = new List<Expr>();
                while (!Peek.IsOp("]"))
                {
                    items.Add(ParseExpression());
                    if (!Peek.IsOp(",")) break;
                    _i++;
                }
                ExpectOp("]");
                return new ListExpr(items, t.Line, t.Column);
            }
            case TokenKind.Operator when t.Value == "{":
            {
                var items = new List<(Expr, Expr)>();
                while (!Peek.IsOp("}"))
                {
                    var k = ParseExpression();
                    ExpectOp(":");
                    items.Add((k, ParseExpression()));
                    if (!Peek.IsOp(",")) break;
                    _i++;
                }
                ExpectOp("}");
                return new DictExpr(items, t.Line, t.Column);
            }
            default:
                throw Error($"unexpected {Describe(t)}", t);
        }
    }
}
