using System.Globalization;
using System.Text;

namespace Cria.Serving;

/// <summary>A grammar that cannot be used: a syntax error (with its line and column), an undefined rule, left
/// recursion, a repetition too large. The server answers 400.</summary>
public sealed class GrammarException(string message) : CriaException(message);

/// <summary>
/// A context-free grammar in llama.cpp's GBNF format (grammars/README.md there), compiled for
/// <see cref="GrammarState"/>:
/// <code>
/// root   ::= answer ("," answer)*          # rules: name ::= alternatives; '#' starts a comment
/// answer ::= "yes" | "no" | [0-9]{1,3}      # "literals", [classes] ([^…] negated, a-z ranges), . any character,
///                                          # ( groups ), and * + ? {m} {m,} {m,n} on the symbol before them
/// </code>
/// A rule's alternatives end at the end of its line, except inside parentheses and after '|'. Escapes: \n \r \t \\ \"
/// \[ \] \xHH \uHHHH \UHHHHHHHH. Matching is over Unicode code points. As in llama.cpp, repetitions become helper rules
/// (x* is r ::= x r | ε), and left recursion is refused: the recogniser expands rules top-down.
/// </summary>
public sealed class Grammar
{
    internal enum Kind : byte { End, Char, Ref }

    /// <summary>End of an alternative; Char: code point ranges [Arg, Arg + Count) of <see cref="Ranges"/>, matched
    /// or (Negated) not; Ref: rule Arg.</summary>
    internal readonly record struct Element(Kind Kind, int Arg, int Count = 0, bool Negated = false);

    internal readonly Element[] Elements;           // every rule's alternatives, each ended by End
    internal readonly (int Lo, int Hi)[] Ranges;    // inclusive code point ranges of the Char elements
    internal readonly int[][] Alternatives;         // [rule] → the position in Elements where each alternative starts
    public IReadOnlyList<string> RuleNames { get; }
    public int Root { get; }
    /// <summary>The grammar's text as given.</summary>
    public string Text { get; }

    public const int MaxRepetition = 10_000;
    /// <summary>Limits that keep a hostile grammar from exhausting memory or the stack: symbols after repetitions are
    /// expanded, parentheses nested, and rule references the recogniser may expand before reading a character.</summary>
    public const int MaxSymbols = 1_000_000, MaxNesting = 256, MaxExpansionDepth = 1_000;

    Grammar(string text, Element[] elements, (int, int)[] ranges, int[][] alternatives, string[] names, int root)
    {
        Text = text; Elements = elements; Ranges = ranges; Alternatives = alternatives; RuleNames = names; Root = root;
    }

    /// <summary>Parses and checks a GBNF grammar whose start rule is <paramref name="root"/>.</summary>
    public static Grammar Parse(string text, string root = "root")
    {
        ArgumentNullException.ThrowIfNull(text);
        var p = new Parser(text);
        p.ParseRules();
        return p.Compile(root);
    }

    /// <summary>A fresh recogniser at the start of the root rule.</summary>
    public GrammarState Start() => new(this);

    internal bool Matches(in Element e, int cp)
    {
        bool hit = false;
        for (int i = e.Arg; i < e.Arg + e.Count && !hit; i++) hit = cp >= Ranges[i].Lo && cp <= Ranges[i].Hi;
        return hit != e.Negated;
    }

    // ================================================================= parsing
    sealed class Parser(string src)
    {
        // A rule under construction: alternatives of symbols (Char with its ranges, or Ref to a rule id).
        readonly record struct Sym(Kind Kind, int Rule, (int, int)[]? Ranges, bool Negated);

        int _pos, _symbols, _nesting, _helpers;
        readonly Dictionary<string, int> _ids = new();
        readonly List<string> _names = new();
        readonly List<List<List<Sym>>?> _rules = new();   // null until defined
        readonly Dictionary<int, int> _firstUse = new();   // rule → where it is first referenced (for errors)

        int Id(string name)
        {
            if (_ids.TryGetValue(name, out int id)) return id;
            _ids[name] = id = _names.Count;
            _names.Add(name); _rules.Add(null);
            return id;
        }

        /// <summary>A helper rule (a group or a repetition) of rule <paramref name="baseName"/>: named "base#n", a name
        /// no grammar text can write, so it never meets one of the user's rules.</summary>
        int NewRule(string baseName, List<List<Sym>> alternatives)
        {
            int id = Id($"{baseName}#{++_helpers}"); // one counter for all: unique without searching (x{0,10000} makes 10 000)
            _rules[id] = alternatives;
            return id;
        }

        GrammarException Error(string what)
        {
            var (line, col) = LineCol(_pos);
            return new GrammarException($"grammar: {what} at line {line}, column {col}");
        }

        bool End => _pos >= src.Length;
        char Peek => src[_pos];

        /// <summary>Skips spaces and comments; newlines only when <paramref name="newlines"/>.</summary>
        void Space(bool newlines)
        {
            while (!End)
            {
                char c = Peek;
                if (c == '#') { while (!End && Peek != '\n') _pos++; }
                else if (c is ' ' or '\t' || (newlines && c is '\r' or '\n')) _pos++;
                else break;
            }
        }

        static bool NameChar(char c) => char.IsAsciiLetterOrDigit(c) || c is '-' or '_';

        string Name()
        {
            int start = _pos;
            while (!End && NameChar(Peek)) _pos++;
            if (_pos == start) throw Error("expected a rule name");
            return src[start.._pos];
        }

        public void ParseRules()
        {
            Space(true);
            while (!End)
            {
                string name = Name();
                int id = Id(name);
                Space(false);
                if (!src.AsSpan(_pos).StartsWith("::=")) throw Error($"expected '::=' after '{name}'");
                _pos += 3;
                Space(true);
                if (_rules[id] != null) throw Error($"rule '{name}' is defined twice");
                _rules[id] = Alternatives(name, nested: false);
                if (!End && Peek is not ('\n' or '\r')) throw Error($"unexpected '{Peek}'");
                Space(true);
            }
        }

        List<List<Sym>> Alternatives(string rule, bool nested)
        {
            if (++_nesting > MaxNesting) throw Error($"parentheses nested deeper than {MaxNesting}");
            var alts = new List<List<Sym>> { Sequence(rule, nested) };
            while (!End && Peek == '|')
            {
                _pos++;
                Space(true);
                alts.Add(Sequence(rule, nested));
            }
            _nesting--;
            return alts;
        }

        void Count(int symbols)
        {
            _symbols += symbols;
            if (_symbols > MaxSymbols) throw Error($"the grammar expands to more than {MaxSymbols:N0} symbols");
        }

        List<Sym> Sequence(string rule, bool nested)
        {
            var seq = new List<Sym>();
            int last = -1; // where the last symbol (a literal's characters count as one) starts
            while (!End)
            {
                char c = Peek;
                if (c is '|' or ')' or '\n' or '\r') break;
                Count(1);
                if (c == '"')
                {
                    _pos++;
                    last = seq.Count;
                    while (!End && Peek != '"')
                    {
                        int cp = Char();
                        seq.Add(new Sym(Kind.Char, 0, [(cp, cp)], false));
                    }
                    if (End) throw Error("unterminated literal");
                    _pos++;
                }
                else if (c == '[')
                {
                    _pos++;
                    bool negated = !End && Peek == '^';
                    if (negated) _pos++;
                    var ranges = new List<(int, int)>();
                    while (!End && Peek != ']')
                    {
                        int lo = Char(), hi = lo;
                        if (_pos + 1 < src.Length && Peek == '-' && src[_pos + 1] != ']') { _pos++; hi = Char(); }
                        if (hi < lo) throw Error($"empty range {lo:X}-{hi:X}");
                        ranges.Add((lo, hi));
                    }
                    if (End) throw Error("unterminated character class");
                    _pos++;
                    last = seq.Count;
                    seq.Add(new Sym(Kind.Char, 0, [.. ranges], negated));
                }
                else if (c == '.')
                {
                    _pos++;
                    last = seq.Count;
                    seq.Add(new Sym(Kind.Char, 0, [(0, 0x10FFFF)], false));
                }
                else if (NameChar(c))
                {
                    int at = _pos;
                    int id = Id(Name());
                    _firstUse.TryAdd(id, at);
                    last = seq.Count;
                    seq.Add(new Sym(Kind.Ref, id, null, false));
                }
                else if (c == '(')
                {
                    _pos++;
                    Space(true);
                    var alts = Alternatives(rule, nested: true);
                    if (End || Peek != ')') throw Error("expected ')'");
                    _pos++;
                    last = seq.Count;
                    seq.Add(new Sym(Kind.Ref, NewRule(rule, alts), null, false));
                }
                else if (c is '*' or '+' or '?' or '{')
                {
                    if (last < 0) throw Error($"'{c}' must follow a symbol");
                    var (min, max) = Repetition();
                    Repeat(rule, seq, last, min, max);
                    last = -1;
                }
                else throw Error($"unexpected '{c}'");
                Space(nested);
            }
            return seq;
        }

        (int Line, int Col) LineCol(int pos)
        {
            int line = 1, col = 1;
            for (int i = 0; i < Math.Min(pos, src.Length); i++) { if (src[i] == '\n') { line++; col = 1; } else col++; }
            return (line, col);
        }

        /// <summary>*, +, ?, {m}, {m,}, {m,n}: (min, max) with max −1 for unbounded.</summary>
        (int Min, int Max) Repetition()
        {
            char c = src[_pos++];
            if (c == '*') return (0, -1);
            if (c == '+') return (1, -1);
            if (c == '?') return (0, 1);
            Space(false);
            int min = Number(), max = min;
            Space(false);
            if (!End && Peek == ',')
            {
                _pos++;
                Space(false);
                max = !End && char.IsAsciiDigit(Peek) ? Number() : -1;
                Space(false);
            }
            if (End || Peek != '}') throw Error("expected '}'");
            _pos++;
            if (max >= 0 && max < min) throw Error($"repetition {{{min},{max}}} has max < min");
            if (Math.Max(min, max) > MaxRepetition) throw Error($"repetition count above {MaxRepetition}");
            return (min, max);
        }

        int Number()
        {
            int start = _pos;
            while (!End && char.IsAsciiDigit(Peek)) _pos++;
            if (_pos == start) throw Error("expected a number");
            return int.TryParse(src.AsSpan(start, _pos - start), NumberStyles.None, CultureInfo.InvariantCulture, out int n) && n <= MaxRepetition
                ? n : throw Error($"repetition count above {MaxRepetition}");
        }

        /// <summary>Replaces the symbol starting at <paramref name="from"/> by min copies of it and, up to max, optional
        /// ones: x{2,4} → x x r2, r2 ::= x r1 | ε, r1 ::= x | ε; x{1,} → x r, r ::= x r | ε.</summary>
        void Repeat(string rule, List<Sym> seq, int from, int min, int max)
        {
            var atom = seq.GetRange(from, seq.Count - from);
            seq.RemoveRange(from, seq.Count - from);
            Count(Math.Max(min, max) + 2);
            var x = atom.Count == 1 ? atom[0] : new Sym(Kind.Ref, NewRule(rule, [atom]), null, false);
            for (int i = 0; i < min; i++) seq.Add(x);
            if (max < 0)
            {
                int r = NewRule(rule, []);
                _rules[r] = [[x, new Sym(Kind.Ref, r, null, false)], []];
                seq.Add(new Sym(Kind.Ref, r, null, false));
            }
            else if (max > min)
            {
                int? tail = null;
                for (int k = 0; k < max - min; k++)
                {
                    var alt = new List<Sym> { x };
                    if (tail is int t) alt.Add(new Sym(Kind.Ref, t, null, false));
                    tail = NewRule(rule, [alt, []]);
                }
                seq.Add(new Sym(Kind.Ref, tail!.Value, null, false));
            }
        }

        /// <summary>One character of a literal or class, with escapes, as a code point.</summary>
        int Char()
        {
            if (Peek == '\\')
            {
                _pos++;
                if (End) throw Error("unterminated escape");
                char e = src[_pos++];
                switch (e)
                {
                    case 'n': return '\n';
                    case 'r': return '\r';
                    case 't': return '\t';
                    case 'x': return Hex(2);
                    case 'u': return Hex(4);
                    case 'U': return Hex(8);
                    case '\\' or '"' or '[' or ']' or '-' or '^' or '/': return e;
                    default: _pos--; throw Error($"unknown escape '\\{e}'");
                }
            }
            if (Rune.DecodeFromUtf16(src.AsSpan(_pos), out var rune, out int used) != System.Buffers.OperationStatus.Done)
                throw Error("invalid UTF-16 in the grammar");
            _pos += used;
            return rune.Value;
        }

        int Hex(int digits)
        {
            if (_pos + digits > src.Length || !int.TryParse(src.AsSpan(_pos, digits), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out int v) || v > 0x10FFFF)
                throw Error($"expected {digits} hex digits");
            _pos += digits;
            return v;
        }

        public Grammar Compile(string root)
        {
            if (!_ids.TryGetValue(root, out int rootId) || _rules[rootId] == null) throw new GrammarException($"grammar: no rule named '{root}'");
            for (int i = 0; i < _rules.Count; i++)
                if (_rules[i] == null)
                {
                    var (line, col) = LineCol(_firstUse.GetValueOrDefault(i));
                    throw new GrammarException($"grammar: undefined rule '{_names[i]}' used at line {line}, column {col}");
                }
            var rules = _rules.Select(r => r!).ToArray();
            CheckLeftRecursion(rules);
            var elements = new List<Element>();
            var ranges = new List<(int, int)>();
            var alternatives = new int[rules.Length][];
            for (int r = 0; r < rules.Length; r++)
            {
                alternatives[r] = new int[rules[r].Count];
                for (int a = 0; a < rules[r].Count; a++)
                {
                    alternatives[r][a] = elements.Count;
                    foreach (var s in rules[r][a])
                    {
                        if (s.Kind == Kind.Ref) { elements.Add(new Element(Kind.Ref, s.Rule)); continue; }
                        elements.Add(new Element(Kind.Char, ranges.Count, s.Ranges!.Length, s.Negated));
                        ranges.AddRange(s.Ranges);
                    }
                    elements.Add(new Element(Kind.End, 0));
                }
            }
            return new Grammar(src, [.. elements], [.. ranges], alternatives, [.. _names], rootId);
        }

        /// <summary>
        /// Refuses a rule that can reach itself before reading a character (the top-down recogniser would expand it
        /// forever), naming the cycle, and a grammar whose references nest deeper than <see cref="MaxExpansionDepth"/>
        /// before a character (the recogniser expands them recursively). Depth of a rule: over its alternatives, the
        /// most of the summed depths (+1 each) of the references it starts with, up to and including the first that
        /// cannot be empty. An explicit stack, so a long chain of rules cannot overflow this check either. Whether a rule
        /// can be empty is found on the same walk (an alternative whose references were all passed), not by iterating
        /// to a fixpoint, which a long chain of empty rules would make quadratic.
        /// </summary>
        void CheckLeftRecursion(List<List<Sym>>[] rules)
        {
            var nullable = new bool[rules.Length];
            var state = new byte[rules.Length]; // 0 unvisited, 1 on the stack, 2 done
            var depth = new int[rules.Length];
            var stack = new List<Visit>();
            for (int root = 0; root < rules.Length; root++)
            {
                if (state[root] != 0) continue;
                state[root] = 1;
                stack.Add(new Visit(root));
                while (stack.Count > 0)
                {
                    var v = stack[^1];
                    var alts = rules[v.Rule];
                    if (v.Alt == alts.Count)
                    {
                        depth[v.Rule] = v.Best;
                        nullable[v.Rule] = v.Nullable;
                        if (v.Best > MaxExpansionDepth)
                            throw new GrammarException($"grammar: rule '{_names[v.Rule]}' nests {v.Best} rule references before reading a character (at most {MaxExpansionDepth})");
                        state[v.Rule] = 2;
                        stack.RemoveAt(stack.Count - 1);
                        if (stack.Count > 0) stack[^1].Took(v.Rule, depth, nullable);
                        continue;
                    }
                    var alt = alts[v.Alt];
                    if (v.Sym == alt.Count) { v.Nullable = true; v.NextAlternative(); continue; } // every symbol could be empty
                    if (alt[v.Sym].Kind != Kind.Ref) { v.NextAlternative(); continue; }
                    int s = alt[v.Sym].Rule;
                    if (state[s] == 1)
                    {
                        var path = stack.Select(x => x.Rule).ToList();
                        var cycle = path.Skip(path.IndexOf(s)).Append(s).Select(i => _names[i]);
                        throw new GrammarException($"grammar: left recursion ({string.Join(" → ", cycle)}); write it with repetition instead");
                    }
                    if (state[s] == 2) { v.Took(s, depth, nullable); continue; }
                    state[s] = 1;
                    stack.Add(new Visit(s));
                }
            }
        }

        /// <summary>Where the depth-first walk of <see cref="CheckLeftRecursion"/> is in one rule.</summary>
        sealed class Visit(int rule)
        {
            public readonly int Rule = rule;
            public int Alt, Sym, Sum, Best;
            public bool Nullable;                // an alternative can be empty

            /// <summary>The reference at (Alt, Sym), of finished rule <paramref name="r"/>, is counted; the walk goes on
            /// past it if it can be empty, else to the next alternative.</summary>
            public void Took(int r, int[] depth, bool[] nullable)
            {
                Sum += 1 + depth[r];
                if (nullable[r]) Sym++;
                else NextAlternative();
            }

            public void NextAlternative()
            {
                Best = Math.Max(Best, Sum);
                Alt++; Sym = 0; Sum = 0;
            }
        }
    }
}

/// <summary>
/// An incremental recogniser of a <see cref="Grammar"/> over UTF-8 bytes: the set of parse stacks that the bytes so far
/// leave (llama.cpp's llama_grammar stacks). A stack lists positions in the grammar, the top one at a character
/// element; stacks are immutable linked frames, shared between states, so a state is copied by copying its list.
/// Ambiguous grammars keep one stack per distinct parse, merged when equal, at most <see cref="MaxStacks"/>.
/// </summary>
public sealed class GrammarState
{
    internal sealed class Frame(int pos, Frame? next)
    {
        public readonly int Pos = pos;
        public readonly Frame? Next = next;
        public readonly int Hash = HashCode.Combine(pos, next?.Hash ?? 0);
    }

    public const int MaxStacks = 4096;

    readonly Grammar _g;
    List<Frame?> _stacks = new();   // null: the empty stack (the root is complete)
    int _cp, _left;                  // a UTF-8 sequence in progress: its bits so far and bytes still to come

    internal GrammarState(Grammar g)
    {
        _g = g;
        _after = new(ReferenceEqualityComparer.Instance);
        foreach (int a in g.Alternatives[g.Root]) Expand(new Frame(a, null), _stacks);
    }

    GrammarState(Grammar g, List<Frame?> stacks, int cp, int left, Dictionary<Frame, Frame?[]> after)
    {
        _g = g; _stacks = stacks; _cp = cp; _left = left; _after = after;
    }

    public Grammar Grammar => _g;
    /// <summary>The text so far is a whole sentence of the grammar (the output may end here).</summary>
    public bool CanEnd => _left == 0 && _stacks.Contains(null);
    /// <summary>Some character may still follow.</summary>
    public bool CanContinue => _stacks.Any(s => s != null);
    /// <summary>A whole sentence that nothing may extend: the output must end here.</summary>
    public bool IsComplete => CanEnd && !CanContinue;

    public GrammarState Clone() => new(_g, [.. _stacks], _cp, _left, _after);

    /// <summary>Feeds bytes; false when they leave the grammar's prefixes (the state is then unchanged).</summary>
    public bool Accept(ReadOnlySpan<byte> bytes)
    {
        var (stacks, cp, left) = (_stacks, _cp, _left);
        foreach (byte b in bytes)
            if (Step(stacks, ref cp, ref left, b, new List<Frame?>()) is { } next) stacks = next;
            else return false;
        (_stacks, _cp, _left) = (stacks, cp, left);
        return true;
    }

    /// <summary>One byte on (stacks, UTF-8 state): the stacks after it — <paramref name="into"/>, cleared and filled,
    /// when the byte ends a character; <paramref name="stacks"/> itself while a character is partial — or null when no
    /// stack takes it. The token trie walk passes one reused list per depth.</summary>
    internal List<Frame?>? Step(List<Frame?> stacks, ref int cp, ref int left, byte b, List<Frame?> into)
    {
        if (left == 0)
        {
            if (b < 0x80) return Advance(stacks, b, into);
            if ((b & 0xE0) == 0xC0 && b >= 0xC2) { cp = b & 0x1F; left = 1; }
            else if ((b & 0xF0) == 0xE0) { cp = b & 0x0F; left = 2; }
            else if ((b & 0xF8) == 0xF0 && b <= 0xF4) { cp = b & 0x07; left = 3; }
            else return null;
            return CouldComplete(stacks, cp, left) ? stacks : null;
        }
        if ((b & 0xC0) != 0x80) return null;
        cp = (cp << 6) | (b & 0x3F);
        --left;
        // The second byte decides whether the sequence is UTF-8 at all: no overlong form, no surrogate (U+D800–DFFF,
        // which decoders turn into U+FFFD), nothing above U+10FFFF. A 3-byte sequence has 10 bits after it, a 4-byte
        // one 9 bits and 2 bytes to come.
        if (left == 1 && cp < 0x400 && (cp < 0x20 || cp is >= 0x360 and <= 0x37F)) return null;
        if (left == 2 && cp is < 0x10 or > 0x10F) return null;
        if (left > 0) return CouldComplete(stacks, cp, left) ? stacks : null;
        return Advance(stacks, cp, into);
    }

    /// <summary>Whether a character element on top of some stack could match a code point that the partial UTF-8
    /// sequence (bits <paramref name="cp"/>, <paramref name="left"/> bytes to come) completes to — llama.cpp's
    /// llama_grammar_match_partial_char: a class matches if one of its ranges meets the possible code points, a
    /// negated class if none does.</summary>
    bool CouldComplete(List<Frame?> stacks, int cp, int left)
    {
        int lo = cp << (6 * left), hi = lo | ((1 << (6 * left)) - 1);
        if (lo == 0) lo = left == 2 ? 1 << 11 : left == 3 ? 1 << 16 : lo; // overlong forms complete to nothing smaller
        foreach (var f in stacks)
        {
            if (f == null) continue;
            var e = _g.Elements[f.Pos];
            bool meets = false;
            for (int i = e.Arg; i < e.Arg + e.Count && !meets; i++) meets = _g.Ranges[i].Lo <= hi && lo <= _g.Ranges[i].Hi;
            if (meets != e.Negated) return true;
        }
        return false;
    }

    internal (List<Frame?> Stacks, int Cp, int Left) Snapshot => (_stacks, _cp, _left);

    List<Frame?>? Advance(List<Frame?> stacks, int cp, List<Frame?> into)
    {
        into.Clear();
        foreach (var f in stacks)
        {
            if (f == null || !_g.Matches(_g.Elements[f.Pos], cp)) continue;
            foreach (var x in AfterChar(f)) AddUnique(into, x);
        }
        return into.Count == 0 ? null : into;
    }

    /// <summary>
    /// The stacks a stack whose top is a character element becomes once that character is read, memoised by the
    /// frame: the frames it returns are the ones the next step finds on top, so a loop such as a string's characters
    /// finds its expansion here every time instead of allocating it again. Shared by the clones of a state (the
    /// trie walk's), cleared when large.
    /// </summary>
    Frame?[] AfterChar(Frame f)
    {
        if (_after.TryGetValue(f, out var cached)) return cached;
        var list = new List<Frame?>();
        // the character's alternative goes on, or (last element) pops without a frame for its end
        Expand(_g.Elements[f.Pos + 1].Kind == Grammar.Kind.End ? f.Next : new Frame(f.Pos + 1, f.Next), list);
        if (_after.Count >= MaxMemo) _after.Clear();
        return _after[f] = [.. list];
    }

    const int MaxMemo = 1 << 16;
    readonly Dictionary<Frame, Frame?[]> _after;   // by reference: Frame keeps object equality

    /// <summary>Adds to <paramref name="output"/> every stack that <paramref name="f"/> expands to whose top is a
    /// character element (rule references replaced by each alternative; finished alternatives popped), or the empty
    /// stack. A reference last in its alternative continues with the frames below (no frame for the rest), so right
    /// recursion such as r ::= x r | ε does not grow the stack.</summary>
    void Expand(Frame? f, List<Frame?> output)
    {
        while (true)
        {
            if (f == null) { AddUnique(output, null); return; }
            var e = _g.Elements[f.Pos];
            if (e.Kind == Grammar.Kind.End) { f = f.Next; continue; }
            if (e.Kind == Grammar.Kind.Char) { AddUnique(output, f); return; }
            var cont = _g.Elements[f.Pos + 1].Kind == Grammar.Kind.End ? f.Next : new Frame(f.Pos + 1, f.Next);
            foreach (int a in _g.Alternatives[e.Arg]) Expand(new Frame(a, cont), output);
            return;
        }
    }

    static void AddUnique(List<Frame?> output, Frame? f)
    {
        foreach (var o in output) if (Same(o, f)) return;
        if (output.Count >= MaxStacks) throw new GrammarException($"grammar: more than {MaxStacks} parses of one prefix; the grammar is too ambiguous");
        output.Add(f);
    }

    static bool Same(Frame? a, Frame? b)
    {
        while (!ReferenceEquals(a, b))
        {
            if (a == null || b == null || a.Hash != b.Hash || a.Pos != b.Pos) return false;
            a = a.Next; b = b.Next;
        }
        return true;
    }
}
