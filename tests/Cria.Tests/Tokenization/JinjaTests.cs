using System.Text.Json;
using Cria.Tokenization.Jinja;
using Xunit;

namespace Cria.Tests.Tokenization;

/// <summary>The Jinja2-subset interpreter on its own: expressions, filters, tests, methods, whitespace control,
/// loops, scoping, errors with positions, and the bounds on hostile templates.</summary>
public class JinjaTests
{
    static string R(string template, object? vars = null, JinjaOptions? o = null)
    {
        var d = new Dictionary<string, object?>();
        if (vars != null)
            foreach (var p in vars.GetType().GetProperties()) d[p.Name] = p.GetValue(vars);
        return JinjaTemplate.Parse(template, o).Render(d);
    }

    static TemplateException Fails(string template, object? vars = null, JinjaOptions? o = null) =>
        Assert.Throws<TemplateException>(() => R(template, vars, o));

    [Theory]
    [InlineData("{{ 1 + 2 * 3 }}", "7")]
    [InlineData("{{ (1 + 2) * 3 }}", "9")]
    [InlineData("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}", "3 -4 1 2 3.5 1024")]
    [InlineData("{{ 1.5 + 1 }} {{ 4 / 2 }} {{ 1e3 }} {{ 0.1 + 0.2 }}", "2.5 2.0 1000.0 0.30000000000000004")]
    [InlineData("{{ 'a' + 'b' ~ 1 ~ none ~ true }}", "ab1NoneTrue")]
    [InlineData("{{ 'it\\'s' }} {{ \"say \\\"hi\\\"\" }} {{ 'tab\\there' }} {{ '\\u00e9' }}", "it's say \"hi\" tab\there é")]
    [InlineData("{{ true and false }} {{ true or false }} {{ not true }} {{ 0 or 'x' }} {{ '' and 1 }}", "False True False x ")]
    [InlineData("{{ 1 < 2 < 3 }} {{ 'a' < 'b' }} {{ 2 >= 2 }} {{ 1 == 1.0 }} {{ 'a' != 'b' }}", "True True True True True")]
    [InlineData("{{ 'ell' in 'hello' }} {{ 3 in [1, 2] }} {{ 'k' in {'k': 1} }} {{ 'z' not in 'abc' }}", "True False True True")]
    [InlineData("{{ 'yes' if 1 > 0 else 'no' }} {{ 'yes' if 0 else 'no' }}|{{ 'x' if false }}|", "yes no||")]
    [InlineData("{{ [1, 'a', none, true, 2.5] }} {{ {'a': 1, 'b': [2]} }} {{ (1, 2) }}", "[1, 'a', None, True, 2.5] {'a': 1, 'b': [2]} [1, 2]")]
    [InlineData("{{ 'abcdef'[1:3] }} {{ 'abcdef'[-2:] }} {{ 'abcdef'[::-1] }} {{ [1,2,3,4][1:] }} {{ [1,2,3][:-1] }} {{ 'abc'[-1] }}", "bc ef fedcba [2, 3, 4] [1, 2] c")]
    [InlineData("{{ 'ab' * 3 }} {{ [0] * 2 }} {{ -(3) }} {{ [1] + [2] }}", "ababab [0, 0] -3 [1, 2]")]
    [InlineData("{{ d.a }} {{ d['b'] }} {{ d.missing }}|{{ l[0] }} {{ l[-1] }} {{ l[9] }}|", "1 2 |x z |")]
    public void Expressions(string template, string expected) =>
        Assert.Equal(expected, R(template, new { d = new Dictionary<string, object?> { ["a"] = 1, ["b"] = 2 }, l = new[] { "x", "y", "z" } }));

    [Theory]
    [InlineData("{{ '  hi  ' | trim }}|{{ 'xxhixx' | trim('x') }}", "hi|hi")]
    [InlineData("{{ [1,2,3] | length }} {{ 'abcd' | length }} {{ {'a':1} | length }} {{ [1,2] | count }}", "3 4 1 2")]
    [InlineData("{{ 'Hello' | upper }} {{ 'Hello' | lower }} {{ 'hello world' | title }} {{ 'hELLO' | capitalize }}", "HELLO hello Hello World Hello")]
    [InlineData("{{ undefined_thing | default('dflt') }} {{ none | default('dflt') }} {{ '' | default('dflt', true) }} {{ 'v' | d('x') }}", "dflt None dflt v")]
    [InlineData("{{ [3,1,2] | first }} {{ [3,1,2] | last }} {{ 'abc' | first }} {{ [1,2,3] | join(', ') }} {{ ['a','b'] | join }}", "3 2 a 1, 2, 3 ab")]
    [InlineData("{{ 'a-b-c' | replace('-', '+') }} {{ 'aaa' | replace('a', 'b', 2) }}", "a+b+c bba")]
    [InlineData("{{ 42 | string }}{{ '12' | int + 1 }} {{ 'x' | int }} {{ 3.9 | int }} {{ '2.5' | float }}", "4213 0 3 2.5")]
    [InlineData("{{ {'a': 1, 'b': 2} | items | list }}", "[['a', 1], ['b', 2]]")]
    [InlineData("{{ [3,1,2] | sort }} {{ [3,1,2] | sort(reverse=true) }} {{ [1,2,3] | reverse | list }} {{ [1,1,2] | unique | list }} {{ [1,2,3] | sum }}", "[1, 2, 3] [3, 2, 1] [3, 2, 1] [1, 2] 6")]
    [InlineData("{{ msgs | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}", "a,c")]
    [InlineData("{{ msgs | rejectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ msgs | selectattr('content') | list | length }}", "['b'] 3")]
    [InlineData("{{ [1,2,3,4] | select('even') | list }} {{ [1,2,3,4] | reject('odd') | list }} {{ ['a','b'] | map('upper') | list }}", "[2, 4] [2, 4] ['A', 'B']")]
    [InlineData("{{ 'a\nb' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}", "a\n  b|  a\n  b")]
    [InlineData("{{ -3 | abs }} {{ 2.567 | round(2) }} {{ [4,2,9] | max }} {{ [4,2,9] | min }}", "3 2.57 9 2")]
    public void Filters(string template, string expected) =>
        Assert.Equal(expected, R(template, new
        {
            msgs = new List<object?>
            {
                new Dictionary<string, object?> { ["role"] = "user", ["content"] = "a" },
                new Dictionary<string, object?> { ["role"] = "assistant", ["content"] = "b" },
                new Dictionary<string, object?> { ["role"] = "user", ["content"] = "c" },
            },
        }));

    [Fact]
    public void ToJsonMatchesPythonJsonDumps()
    {
        var tool = System.Text.Json.JsonDocument.Parse("""{"name":"f","parameters":{"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]},"n":null,"b":true,"f":1.5,"s":"é\"\n"}""").RootElement;
        Assert.Equal("""{"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}, "n": null, "b": true, "f": 1.5, "s": "é\"\n"}""",
            R("{{ t | tojson }}", new { t = tool }));
        Assert.Equal("{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {}\n}", R("{{ {'a': [1, 2], 'b': {}} | tojson(indent=2) }}"));
        Assert.Equal("[]", R("{{ [] | tojson }}"));
        // JSON integers stay integers (a tool schema's "maxLength": 12 is not written back as 12.0)
        var nums = System.Text.Json.JsonDocument.Parse("""{"i": 12, "big": 9007199254740993, "neg": -3, "f": 2.0, "e": 1e3}""").RootElement;
        Assert.Equal("""{"i": 12, "big": 9007199254740993, "neg": -3, "f": 2.0, "e": 1000.0}""", R("{{ t | tojson }}", new { t = nums }));
        Assert.Equal("True False", R("{{ t.i is integer }} {{ t.f is integer }}", new { t = nums }));
    }

    [Theory]
    [InlineData("{{ x is defined }} {{ y is defined }} {{ y is undefined }} {{ n is none }} {{ x is not none }}", "True False True True True")]
    [InlineData("{{ x is string }} {{ 1 is number }} {{ 1 is integer }} {{ 1.0 is float }} {{ true is boolean }} {{ d is mapping }} {{ l is iterable }}", "True True True True True True True")]
    [InlineData("{{ 4 is even }} {{ 3 is odd }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'a' is equalto 'a' }} {{ 2 is in [1, 2] }}", "True True True False True True")]
    [InlineData("{{ not y is defined }} {{ x is defined and y is not defined }}", "True True")]
    public void Tests(string template, string expected) =>
        Assert.Equal(expected, R(template, new { x = "s", n = (object?)null, d = new Dictionary<string, object?>(), l = new List<object?>() }));

    [Theory]
    [InlineData("{{ '  a b  '.strip() }}|{{ '  a'.lstrip() }}|{{ 'a  '.rstrip() }}|{{ 'xxaxx'.strip('x') }}", "a b|a|a|a")]
    [InlineData("{{ 'hello'.startswith('he') }} {{ 'hello'.endswith('lo') }} {{ 'hello'.startswith(('x', 'h')) }}", "True True True")]
    [InlineData("{{ 'a b  c'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }}", "['a', 'b', 'c'] ['a', 'b', '', 'c'] ['a', 'b,c'] ['a,b', 'c']")]
    [InlineData("{{ 'MiXeD'.upper() }} {{ 'MiXeD'.lower() }} {{ 'user'.title() }} {{ 'tool_call'.title() }} {{ 'hello'.capitalize() }}", "MIXED mixed User Tool_Call Hello")]
    [InlineData("{{ 'a-b'.replace('-', '_') }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }} {{ ', '.join(['a', 'b']) }}", "a_b 2 2 a, b")]
    [InlineData("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('a') }} {{ d.get('z', 'none!') }} {{ d.get('z') }}", "a=1;b=2; ['a', 'b'] [1, 2] 1 none! None")]
    public void Methods(string template, string expected) =>
        Assert.Equal(expected, R(template, new { d = new Dictionary<string, object?> { ["a"] = 1, ["b"] = 2 } }));

    [Fact]
    public void WhitespaceControl()
    {
        // '-' strips all whitespace on its side, newlines included.
        Assert.Equal("ab", R("a  \n {{- '' -}} \n  b"));
        Assert.Equal("a\nb", R("a\n{%- if true %}\n{% endif -%}\n\nb", o: new JinjaOptions { TrimBlocks = false, LstripBlocks = false }));
        // trim_blocks removes the first newline after a block tag; lstrip_blocks the indentation before one.
        const string t = "<ul>\n    {% for x in xs %}\n    <li>{{ x }}</li>\n    {% endfor %}\n</ul>";
        Assert.Equal("<ul>\n    <li>1</li>\n    <li>2</li>\n</ul>", R(t, new { xs = new[] { 1, 2 } }));
        Assert.Equal("<ul>\n    \n    <li>1</li>\n    \n    <li>2</li>\n    \n</ul>", R(t, new { xs = new[] { 1, 2 } }, new JinjaOptions { TrimBlocks = false, LstripBlocks = false }));
        // Not for {{ }}: an expression keeps its indentation and the newline after it.
        Assert.Equal("  x\ny", R("  {{ 'x' }}\ny"));
        // {%+ keeps the indentation; comments vanish and also take trim/lstrip.
        Assert.Equal("  a", R("  {%+ if true %}a{% endif %}"));
        Assert.Equal("\nab", R("{% if true +%}\na{% endif %}\nb"));
        Assert.Equal("a\nb", R("a\n  {# comment #}\nb"));
        Assert.Equal("ab", R("a {#- comment -#} b"));
        // One trailing newline of the template is dropped (keep_trailing_newline=False).
        Assert.Equal("x", R("x\n"));
        Assert.Equal("x\n", R("x\n\n"));
        // Raw blocks.
        Assert.Equal("{{ not parsed }}", R("{% raw %}{{ not parsed }}{% endraw %}"));
    }

    [Fact]
    public void LoopsAndScoping()
    {
        Assert.Equal("1/0/3/True/False|2/1/2/False/False|3/2/1/False/True|",
            R("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.first }}/{{ loop.last }}|{% endfor %}", new { xs = new[] { 'a', 'b', 'c' } }));
        Assert.Equal("3", R("{% for x in xs %}{% if loop.last %}{{ loop.length }}{% endif %}{% endfor %}", new { xs = new[] { 1, 2, 3 } }));
        Assert.Equal("empty", R("{% for x in [] %}{{ x }}{% else %}empty{% endfor %}"));
        Assert.Equal("24", R("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{% endfor %}"));
        Assert.Equal("2", R("{% for x in [1, 2, 3, 4] if x > 2 %}{% if loop.last %}{{ loop.length }}{% endif %}{% endfor %}"));
        Assert.Equal("0,1,2,", R("{% for i in range(3) %}{{ i }},{% endfor %}"));
        Assert.Equal("1,3,", R("{% for i in range(1, 5, 2) %}{{ i }},{% endfor %}"));
        Assert.Equal("a:1,b:2,", R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}:{{ v }},{% endfor %}"));
        Assert.Equal("ab", R("{% for k in {'a': 1, 'b': 2} %}{{ k }}{% endfor %}"));
        Assert.Equal("13", R("{% for x in [1, 2, 3, 4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}"));
        Assert.Equal("-a-b", R("{% for x in 'ab' %}-{{ x }}{% endfor %}"));
        Assert.Equal("xa", R("{% for x in ['a'] %}{{ loop.previtem | default('x') }}{{ x }}{% endfor %}"));
        // A set inside a loop does not leak out of it; a namespace carries the value.
        Assert.Equal("outer True", R("{% set v = 'outer' %}{% set ns = namespace(found=false) %}{% for x in [1] %}{% set v = 'inner' %}{% set ns.found = true %}{% endfor %}{{ v }} {{ ns.found }}"));
        // A set inside an if is visible after it.
        Assert.Equal("yes", R("{% if true %}{% set v = 'yes' %}{% endif %}{{ v }}"));
        Assert.Equal("3", R("{% set ns = namespace() %}{% set ns.n = 0 %}{% for x in [1,2,3] %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}"));
        Assert.Equal("[hi]", R("{% set b %}[{{ 'hi' }}]{% endset %}{{ b }}"));
        Assert.Equal("1 2", R("{% set a, b = 1, 2 %}{{ a }} {{ b }}"));
        // Nested loops keep their own loop variable.
        Assert.Equal("1.1 1.2 2.1 2.2 ", R("{% for a in [1,2] %}{% set o = loop.index %}{% for b in [1,2] %}{{ o }}.{{ loop.index }} {% endfor %}{% endfor %}"));
    }

    [Fact]
    public void Macros()
    {
        Assert.Equal("<b>x</b> <i>y</i>", R("{% macro tag(t, name='b') %}<{{ name }}>{{ t }}</{{ name }}>{% endmacro %}{{ tag('x') }} {{ tag('y', name='i') }}"));
        Assert.Equal("3", R("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}{% endmacro %}{{ fact(3) | int // 2 }}"));
    }

    [Fact]
    public void GlobalsAndStrftime()
    {
        var o = new JinjaOptions { Now = () => new DateTime(2024, 7, 26, 14, 5, 9) };
        Assert.Equal("26 Jul 2024 | July 26, 2024 | Friday 14:05:09 02PM", R("{{ strftime_now('%d %b %Y') }} | {{ strftime_now('%B %d, %Y') }} | {{ strftime_now('%A %H:%M:%S %I%p') }}", o: o));
        Assert.Equal("{'a': 1}", R("{{ dict(a=1) }}"));
    }

    [Fact]
    public void ErrorsNameTheTemplatePosition()
    {
        var e = Fails("line one\n{% if x %}\n  {{ 1 + }}\n{% endif %}");
        Assert.Equal((3, 10), (e.Line, e.Column));
        Assert.Contains("line 3, column 10", e.Message);

        e = Fails("{% for x in xs %}no end");
        Assert.Contains("endfor", e.Problem);

        e = Fails("{% if true %}{% endfor %}");
        Assert.Equal(1, e.Line);

        e = Fails("ok\n  {{ foo(1) }}");
        Assert.Equal((2, 6), (e.Line, e.Column));
        Assert.Contains("'foo' is undefined", e.Problem);

        e = Fails("{{ x.y }}");
        Assert.Contains("'x' is undefined", e.Problem);
        e = Fails("{{ d.y.z }}", new { d = new Dictionary<string, object?>() });
        Assert.Contains("'y' is undefined", e.Problem);

        e = Fails("{{ 'a' + 1 }}");
        Assert.Contains("unsupported operand", e.Problem);

        e = Fails("{{ x | nosuchfilter }}");
        Assert.Contains("unknown filter 'nosuchfilter'", e.Problem);

        e = Fails("{% frobnicate %}");
        Assert.Contains("unknown statement", e.Problem);

        e = Fails("{{ 'unterminated }}");
        Assert.Contains("unterminated string", e.Problem);

        e = Fails("text {{ 1 ");
        Assert.Contains("unclosed", e.Problem);

        Assert.False(e.Raised);
    }

    [Fact]
    public void RaiseExceptionIsATemplateExceptionMarkedRaised()
    {
        var e = Fails("a\n{% if x != 'ok' %}{{ raise_exception('Conversation roles must alternate') }}{% endif %}", new { x = "bad" });
        Assert.True(e.Raised);
        Assert.Equal("Conversation roles must alternate", e.Problem);
        Assert.Equal(2, e.Line);
        Assert.Equal("", R("{% if x != 'ok' %}{{ raise_exception('no') }}{% endif %}", new { x = "ok" }));
    }

    [Fact]
    public void HostileTemplatesHitTheBounds()
    {
        var small = new JinjaOptions { MaxSteps = 10_000, MaxOutputLength = 100_000, MaxWork = 10_000_000 };
        // Runaway loops.
        Assert.Contains("loop iterations", Fails("{% for i in range(100) %}{% for j in range(100) %}{% for k in range(100) %}{% endfor %}{% endfor %}{% endfor %}", o: small).Problem);
        Assert.Contains("iteration limit", Fails("{% for i in range(1000000000000) %}{% endfor %}", o: small).Problem);
        // Output size: directly, by doubling a string, by repetition, through a macro.
        Assert.Contains("characters", Fails("{% for i in range(5000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' }}{% endfor %}", o: small).Problem);
        Assert.Contains("characters", Fails("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}", o: small).Problem);
        Assert.Contains("characters", Fails("{{ 'x' * 1000000000 }}", o: small).Problem);
        // Printing a list of large strings, joining them.
        Assert.Contains("characters", Fails("{% set l = ['x' * 50000] * 1000 %}{{ l }}", o: small).Problem);
        Assert.Contains("characters", Fails("{% set l = ['x' * 50000] * 1000 %}{{ l | join(',') }}", o: small).Problem);
        Assert.Contains("characters", Fails("{{ ('x' * 50000) | replace('x', 'yyy') }}", o: small).Problem);
        // Repeated scans of a large string: bounded by work, not by iterations.
        Assert.Contains("units of work", Fails("{% set s = 'x' * 50000 %}{% for i in range(5000) %}{% if 'y' in s %}{% endif %}{% endfor %}", o: small).Problem);
        Assert.Contains("units of work", Fails("{% set s = 'x' * 50000 %}{% for i in range(5000) %}{% set t = s.upper() %}{% endfor %}", o: small).Problem);
        // Unbounded recursion.
        Assert.Contains("nested deeper", Fails("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").Problem);
        // Deep nesting in the source.
        Assert.Contains("too deeply", Fails("{{ " + new string('(', 5000) + "1" + new string(')', 5000) + " }}").Problem);
        Assert.Contains("too large", Fails("{{ 2 ** 200 }}").Problem);
        // Within the bounds it renders.
        Assert.Equal(new string('x', 1000), R("{% for i in range(1000) %}x{% endfor %}", o: small));
    }
}

/// <summary>Fixtures/jinja_transformers_cases.json: templates rendered with given variables against the text
/// transformers (Python Jinja2) produces, as recorded by huggingface.js's end-to-end tests.</summary>
public class JinjaTransformersCasesTests
{
    static readonly Lazy<JsonDocument> Doc = new(() => JsonDocument.Parse(File.ReadAllText(
        Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Tokenization", "Fixtures", "jinja_transformers_cases.json"))));

    public static IEnumerable<object[]> Names() =>
        Doc.Value.RootElement.GetProperty("cases").EnumerateArray().Select(c => new object[] { c.GetProperty("name").GetString()! });

    [Theory]
    [MemberData(nameof(Names))]
    public void RendersLikeTransformers(string name)
    {
        var root = Doc.Value.RootElement;
        var c = root.GetProperty("cases").EnumerateArray().Single(x => x.GetProperty("name").GetString() == name);
        var vars = new Dictionary<string, object?>();
        foreach (var p in c.GetProperty("vars").EnumerateObject()) vars[p.Name] = p.Value;
        var m = c.GetProperty("messages");
        vars["messages"] = m.ValueKind == JsonValueKind.String ? root.GetProperty("datasets").GetProperty(m.GetString()!) : m;
        Assert.Equal(c.GetProperty("target").GetString(), JinjaTemplate.Parse(c.GetProperty("template").GetString()!).Render(vars));
    }

    [Fact]
    public void ThereAreEnoughCases() => Assert.True(Names().Count() >= 18);
}

/// <summary>Mutated real templates (random deletions, insertions and duplications of template syntax): parsing and
/// rendering either succeed or throw <see cref="TemplateException"/> — never another exception, never a hang.</summary>
public class JinjaFuzzTests
{
    [Fact]
    public void MutatedTemplatesFailOnlyWithTemplateException()
    {
        var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(TestPaths.RepoRoot, "tests", "Cria.Tests", "Tokenization", "Fixtures", "chat_templates.json")));
        var templates = doc.RootElement.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("template").GetString()!).Distinct().ToArray();
        string[] pieces = ["{%", "%}", "{{", "}}", "{#", "#}", "-", "(", ")", "[", "]", "{", "}", "'", "\"", ",", ".", "|", ":", "=", "for ", "if ", "endfor", "endif", "else",
            "in ", "not ", "set ", "macro ", "loop.", "messages", "range(99999)", "* 999999", "~", "\\", " is ", "defined", "namespace(", "+", "**", "//", "0", "-1", "9e9", "\n"];
        var rng = new Random(12345);
        var vars = new Dictionary<string, object?>
        {
            ["messages"] = ChatTemplateTests.Conversation.Select(t => (object?)new Dictionary<string, object?> { ["role"] = t.Role, ["content"] = t.Content }).ToList(),
            ["bos_token"] = "<s>", ["eos_token"] = "</s>", ["add_generation_prompt"] = true, ["tools"] = null,
        };
        var limits = new JinjaOptions { MaxSteps = 20_000, MaxOutputLength = 200_000, MaxWork = 5_000_000 };
        int rendered = 0, failed = 0;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < 3000; i++)
        {
            var s = templates[rng.Next(templates.Length)];
            int edits = 1 + rng.Next(4);
            for (int e = 0; e < edits && s.Length > 0; e++)
            {
                int at = rng.Next(s.Length);
                switch (rng.Next(4))
                {
                    case 0: s = s.Remove(at, Math.Min(s.Length - at, 1 + rng.Next(6))); break;
                    case 1: s = s.Insert(at, pieces[rng.Next(pieces.Length)]); break;
                    case 2: { int len = Math.Min(s.Length - at, 1 + rng.Next(40)); s = s.Insert(rng.Next(s.Length), s.Substring(at, len)); break; }
                    default: s = s.Insert(at, ((char)rng.Next(32, 127)).ToString()); break;
                }
            }
            try
            {
                JinjaTemplate.Parse(s, limits).Render(vars);
                rendered++;
            }
            catch (TemplateException) { failed++; }
            catch (Exception ex)
            {
                Assert.Fail($"{ex.GetType().Name}: {ex.Message}\n--- template ---\n{s}");
            }
        }
        Assert.True(rendered > 100 && failed > 100, $"rendered {rendered}, failed {failed}");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60), $"took {sw.Elapsed}");
    }
}
