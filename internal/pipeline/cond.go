package pipeline

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/kiln-ci/kiln/internal/yamlpos"
)

// Condition is a parsed `if` expression. The language:
//
//	expr    = or
//	or      = and { "||" and }
//	and     = unary { "&&" unary }
//	unary   = "!" unary | compare
//	compare = primary [ ( "==" | "!=" | "=~" ) primary ]
//	primary = "(" expr ")" | value
//	value   = "branch" | "tag" | "event" | "env." NAME | STRING
//
// STRING is double-quoted; inside it \" is a quote, \\ a backslash, and any
// other backslash is kept as written (so "\d+" is the regexp \d+). The right
// side of =~ is a string literal holding a Go regexp (unanchored, compiled
// at parse time). A value used as a condition on its own (e.g. `tag` or
// `!env.SKIP_DEPLOY`) is true when it is not empty. Comparisons bind
// tighter than !, so `!branch == "main"` means `!(branch == "main")`; the
// sides of a comparison are values, never conditions.
type Condition struct {
	src  string
	root cexpr
}

// CondError is a syntax error in an `if` expression; Offset is the byte
// offset of the problem in the expression.
type CondError struct {
	Offset int
	Msg    string
	Hint   string
}

func (e *CondError) Error() string {
	s := fmt.Sprintf("at offset %d: %s", e.Offset, e.Msg)
	if e.Hint != "" {
		s += " (hint: " + e.Hint + ")"
	}
	return s
}

// condIdents are the identifiers of the language (env takes .NAME).
var condIdents = []string{"branch", "tag", "event", "env"}

// ParseCondition parses an `if` expression. The error is a *CondError.
func ParseCondition(src string) (*Condition, error) {
	if len(src) > MaxIfLength {
		return nil, &CondError{Msg: fmt.Sprintf("expression is %d bytes; the limit is %d", len(src), MaxIfLength)}
	}
	toks, lerr := lexCond(src)
	if lerr != nil {
		return nil, lerr
	}
	cp := &condParser{src: src, toks: toks}
	op, err := cp.or()
	if err != nil {
		return nil, err
	}
	if t := cp.peek(); t.kind != tEOF {
		hint := ""
		if t.kind == tOp && (t.text == "==" || t.text == "!=" || t.text == "=~") {
			hint = "combine comparisons with && or ||"
		} else if t.kind == tOp && t.text == ")" {
			hint = "remove the unmatched )"
		} else {
			hint = "join conditions with && or ||"
		}
		return nil, &CondError{Offset: t.pos, Msg: fmt.Sprintf("unexpected %s", t.describe()), Hint: hint}
	}
	return &Condition{src: src, root: op.asBool()}, nil
}

// String returns the expression as written.
func (c *Condition) String() string { return c.src }

// Eval evaluates the condition. env.NAME reads ctx.Env (a missing variable
// is the empty string).
func (c *Condition) Eval(ctx Context) bool {
	if c == nil || c.root == nil {
		return true
	}
	return c.root.eval(&ctx)
}

// --- evaluation tree ---

type cexpr interface{ eval(*Context) bool }
type cvalue interface{ get(*Context) string }

type identVal struct{ name, env string }

func (v identVal) get(c *Context) string {
	switch v.name {
	case "branch":
		return c.Branch
	case "tag":
		return c.Tag
	case "event":
		return c.Event
	}
	return c.Env[v.env]
}

type litVal string

func (v litVal) get(*Context) string { return string(v) }

type truthy struct{ v cvalue }

func (t truthy) eval(c *Context) bool { return t.v.get(c) != "" }

type notExpr struct{ x cexpr }

func (n notExpr) eval(c *Context) bool { return !n.x.eval(c) }

type andExpr struct{ l, r cexpr }

func (a andExpr) eval(c *Context) bool { return a.l.eval(c) && a.r.eval(c) }

type orExpr struct{ l, r cexpr }

func (o orExpr) eval(c *Context) bool { return o.l.eval(c) || o.r.eval(c) }

type cmpExpr struct {
	op   string
	l, r cvalue
	re   *regexp.Regexp
}

func (x cmpExpr) eval(c *Context) bool {
	switch x.op {
	case "==":
		return x.l.get(c) == x.r.get(c)
	case "!=":
		return x.l.get(c) != x.r.get(c)
	default: // =~
		return x.re.MatchString(x.l.get(c))
	}
}

// --- lexer ---

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tString
	tOp
)

type ctoken struct {
	kind tokKind
	text string // identifier, decoded string or operator
	pos  int
}

func (t ctoken) describe() string {
	switch t.kind {
	case tEOF:
		return "end of expression"
	case tIdent:
		return fmt.Sprintf("identifier %q", t.text)
	case tString:
		return fmt.Sprintf("string %q", t.text)
	}
	return fmt.Sprintf("%q", t.text)
}

func isIdentStart(c byte) bool {
	return c == '_' || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

func isIdentChar(c byte) bool { return isIdentStart(c) || ('0' <= c && c <= '9') || c == '.' }

func lexCond(s string) ([]ctoken, *CondError) {
	var out []ctoken
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			out = append(out, ctoken{tIdent, s[i:j], i})
			i = j
		case c == '"':
			var b strings.Builder
			j := i + 1
			closed := false
			for j < len(s) {
				if s[j] == '"' {
					closed = true
					j++
					break
				}
				if s[j] == '\\' && j+1 < len(s) && (s[j+1] == '"' || s[j+1] == '\\') {
					b.WriteByte(s[j+1])
					j += 2
					continue
				}
				b.WriteByte(s[j])
				j++
			}
			if !closed {
				return nil, &CondError{Offset: i, Msg: "unterminated string", Hint: `close it with "`}
			}
			out = append(out, ctoken{tString, b.String(), i})
			i = j
		case c == '(' || c == ')':
			out = append(out, ctoken{tOp, string(c), i})
			i++
		default:
			two := ""
			if i+1 < len(s) {
				two = s[i : i+2]
			}
			switch two {
			case "==", "!=", "=~", "&&", "||":
				out = append(out, ctoken{tOp, two, i})
				i += 2
				continue
			}
			switch c {
			case '!':
				out = append(out, ctoken{tOp, "!", i})
				i++
				continue
			case '=':
				return nil, &CondError{Offset: i, Msg: "unexpected \"=\"", Hint: "compare with == (or =~ for a regexp)"}
			case '&':
				return nil, &CondError{Offset: i, Msg: "unexpected \"&\"", Hint: "use && for and"}
			case '|':
				return nil, &CondError{Offset: i, Msg: "unexpected \"|\"", Hint: "use || for or"}
			case '\'':
				return nil, &CondError{Offset: i, Msg: "unexpected \"'\"", Hint: `strings use double quotes: "main"`}
			}
			r := []rune(s[i:])[0]
			return nil, &CondError{Offset: i, Msg: fmt.Sprintf("unexpected character %q", r),
				Hint: `use branch, tag, event, env.NAME, "strings", ==, !=, =~, &&, ||, ! and parentheses`}
		}
	}
	out = append(out, ctoken{tEOF, "", len(s)})
	return out, nil
}

// --- parser ---

// operand is a parse result: a condition, or a value (which becomes a
// condition, true when non-empty, where one is needed).
type operand struct {
	b   cexpr
	v   cvalue
	pos int
}

func (o operand) asBool() cexpr {
	if o.b != nil {
		return o.b
	}
	return truthy{o.v}
}

type condParser struct {
	src   string
	toks  []ctoken
	i     int
	depth int
}

// maxCondDepth bounds nesting so that a hostile expression cannot exhaust
// the stack (MaxIfLength bounds it too; this is belt and braces).
const maxCondDepth = 100

func (p *condParser) peek() ctoken { return p.toks[p.i] }

func (p *condParser) next() ctoken {
	t := p.toks[p.i]
	if t.kind != tEOF {
		p.i++
	}
	return t
}

func (p *condParser) isOp(s string) bool {
	t := p.peek()
	return t.kind == tOp && t.text == s
}

func (p *condParser) or() (operand, error) {
	l, err := p.and()
	if err != nil {
		return l, err
	}
	for p.isOp("||") {
		p.next()
		r, err := p.and()
		if err != nil {
			return r, err
		}
		l = operand{b: orExpr{l.asBool(), r.asBool()}, pos: l.pos}
	}
	return l, nil
}

func (p *condParser) and() (operand, error) {
	l, err := p.unary()
	if err != nil {
		return l, err
	}
	for p.isOp("&&") {
		p.next()
		r, err := p.unary()
		if err != nil {
			return r, err
		}
		l = operand{b: andExpr{l.asBool(), r.asBool()}, pos: l.pos}
	}
	return l, nil
}

func (p *condParser) unary() (operand, error) {
	if p.isOp("!") {
		t := p.next()
		p.depth++
		if p.depth > maxCondDepth {
			return operand{}, &CondError{Offset: t.pos, Msg: "expression is nested too deeply"}
		}
		x, err := p.unary()
		p.depth--
		if err != nil {
			return x, err
		}
		return operand{b: notExpr{x.asBool()}, pos: t.pos}, nil
	}
	return p.compare()
}

func (p *condParser) compare() (operand, error) {
	l, err := p.primary()
	if err != nil {
		return l, err
	}
	t := p.peek()
	if t.kind != tOp || (t.text != "==" && t.text != "!=" && t.text != "=~") {
		return l, nil
	}
	p.next()
	if l.v == nil {
		return l, &CondError{Offset: t.pos, Msg: fmt.Sprintf("left side of %s must be a value, not a condition", t.text),
			Hint: "compare branch, tag, event, env.NAME or a string; combine comparisons with && or ||"}
	}
	rt := p.peek()
	r, err := p.primary()
	if err != nil {
		return r, err
	}
	if r.v == nil {
		return r, &CondError{Offset: r.pos, Msg: fmt.Sprintf("right side of %s must be a value, not a condition", t.text),
			Hint: "combine comparisons with && or ||"}
	}
	x := cmpExpr{op: t.text, l: l.v, r: r.v}
	if t.text == "=~" {
		lit, ok := r.v.(litVal)
		if !ok || rt.kind != tString {
			return r, &CondError{Offset: r.pos, Msg: "right side of =~ must be a string holding a regexp",
				Hint: `e.g. branch =~ "^release/"`}
		}
		re, err := regexp.Compile(string(lit))
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), "error parsing regexp: ")
			return r, &CondError{Offset: r.pos, Msg: "invalid regexp: " + msg,
				Hint: "use Go regexp syntax (RE2)"}
		}
		x.re = re
	}
	return operand{b: x, pos: l.pos}, nil
}

func (p *condParser) primary() (operand, error) {
	t := p.next()
	switch t.kind {
	case tString:
		return operand{v: litVal(t.text), pos: t.pos}, nil
	case tIdent:
		return identOperand(t)
	case tOp:
		if t.text == "(" {
			p.depth++
			if p.depth > maxCondDepth {
				return operand{}, &CondError{Offset: t.pos, Msg: "expression is nested too deeply"}
			}
			x, err := p.or()
			p.depth--
			if err != nil {
				return x, err
			}
			if !p.isOp(")") {
				c := p.peek()
				return x, &CondError{Offset: c.pos, Msg: fmt.Sprintf("expected \")\", found %s", c.describe()),
					Hint: fmt.Sprintf("close the ( at character %d", utf8.RuneCountInString(p.src[:t.pos])+1)}
			}
			p.next()
			x.pos = t.pos
			return x, nil
		}
	}
	hint := `expected branch, tag, event, env.NAME, a "string", ! or (`
	if t.kind == tEOF {
		return operand{}, &CondError{Offset: t.pos, Msg: "unexpected end of expression", Hint: hint}
	}
	return operand{}, &CondError{Offset: t.pos, Msg: fmt.Sprintf("unexpected %s", t.describe()), Hint: hint}
}

func identOperand(t ctoken) (operand, error) {
	name := t.text
	switch name {
	case "branch", "tag", "event":
		return operand{v: identVal{name: name}, pos: t.pos}, nil
	}
	if rest, ok := strings.CutPrefix(name, "env."); ok {
		if !envNameRE.MatchString(rest) {
			return operand{}, &CondError{Offset: t.pos, Msg: fmt.Sprintf("invalid environment variable name %q", rest),
				Hint: "use env.NAME with letters, digits and '_', not starting with a digit"}
		}
		return operand{v: identVal{name: "env", env: rest}, pos: t.pos}, nil
	}
	if name == "env" {
		return operand{}, &CondError{Offset: t.pos, Msg: "env needs a variable name", Hint: `write env.NAME, e.g. env.DEPLOY == "yes"`}
	}
	hint := `known identifiers: branch, tag, event, env.NAME; strings are double-quoted`
	head, _, _ := strings.Cut(name, ".")
	if c := yamlpos.Closest(head, condIdents, nil); c != "" {
		hint = fmt.Sprintf("did you mean %q?", c)
	}
	return operand{}, &CondError{Offset: t.pos, Msg: fmt.Sprintf("unknown identifier %q", name), Hint: hint}
}
