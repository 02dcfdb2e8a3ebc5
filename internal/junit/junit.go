// Package junit parses JUnit-style XML test reports (the files matched by a
// step's `junit:` globs) into a bounded, storage-ready form.
//
// # Parsing model
//
// Parse is a streaming parser built on encoding/xml's Decoder.Token loop; the
// document is never unmarshalled as a whole. Memory is bounded by the number
// of cases kept (Options.MaxCases) times a per-case bound (names, messages and
// outputs are truncated), not by the size of the file. encoding/xml returns a
// contiguous text or CDATA run as one token, so a reader below the decoder
// (bound.go) first cuts every run to its first and last Options.MaxRunBytes
// (64 KiB) with an omission marker between them: a 400 MB <system-out> costs
// O(MaxRunBytes), and its first and last halves of MaxOutputBytes are what
// the case keeps. The one allocation left unbounded is a single attribute
// value (released as soon as its token is consumed).
//
// # Dialects and decisions
//
//   - Roots: <testsuites> and bare <testsuite> are accepted. Several top-level
//     roots in one file (concatenated reports) are accepted and merged. Any
//     other root element is an error (not a JUnit report).
//   - Nested suites are FLATTENED: every <testsuite> becomes one Suite whose
//     Name is the "/"-joined path of the enclosing suite names
//     ("parent/child"; empty names are skipped in the join). A parent suite
//     that has child suites but no direct cases, properties or output is
//     omitted, so Report.Suites holds only suites that carry data. Nesting
//     deeper than 64 levels is folded into the 64th level.
//   - Counts are never taken from tests/failures/errors/skipped header
//     attributes; Summary is always computed from the <testcase> elements.
//   - Result precedence inside one case: <error> → errored, else <failure> →
//     failed, else <skipped> → skipped, else passed. Message and Type come from
//     the first element of the winning kind. Message is the `message`
//     attribute, followed by a blank line and the element's text body (stack
//     trace) when the body is non-empty and differs from the attribute.
//     Surefire's <stackTrace> child of flaky/rerun elements counts as body.
//   - Surefire: <flakyFailure>/<flakyError> on a case that ultimately passed
//     set Case.Flaky (Message/Type then come from the first flaky element so
//     the intermittent failure is visible). <rerunFailure>/<rerunError> are
//     counted in Case.Reruns. flaky* elements are not counted as reruns.
//   - Durations come from `time` attributes in seconds (float). "1,234.5"
//     (thousands separators) and "0,25" (decimal comma) are understood;
//     anything else unparsable, negative, NaN/Inf or absurdly large is 0.
//     Suite.Duration is the suite's own `time` attribute when valid, else the
//     sum of its cases and child suites. Summary.Duration is the sum of all
//     case durations (including cases not kept).
//   - Case.Classname falls back to the enclosing suite's name when absent,
//     and Case.File to the nearest enclosing suite's `file`, so (Classname,
//     Name) identifies a case for every dialect.
//   - Properties (<properties><property name= value=>) are kept on suites and
//     on cases (pytest record_property, JUnit 5); a property without a value
//     attribute takes its text content. At most 1000 per owner.
//   - system-out/system-err are kept per case and per suite, truncated to
//     Options.MaxOutputBytes (0, the default, drops them).
//   - Control characters that XML 1.0 forbids (ANSI colour escapes and the
//     like, very common in real reports) are replaced by '?' before decoding
//     instead of failing the whole report. ISO-8859-1/Latin-1/US-ASCII/
//     Windows-1252 encoding declarations are decoded; HTML entities such as
//     &nbsp; are accepted.
//
// # Errors and partial reports
//
// Malformed XML yields a *ParseError whose text is "NAME:LINE: message"
// (NAME is Options.Name, default "report.xml"); it unwraps to the underlying
// *xml.SyntaxError when there is one. An empty document, a document with no
// root element and a non-JUnit root are also *ParseError (wrapping ErrNoRoot
// or ErrNotJUnit). When anything was parsed before the error (at least one
// suite or one case), Parse returns that partial Report together with the
// error so the caller can store what was recovered and flag the step; cases
// whose closing tag was never reached are not included. Otherwise the Report
// is nil. Callers should record the error on the step and let the build go on.
package junit

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Defaults for Options.
const (
	DefaultMaxCases        = 100_000
	DefaultMaxMessageBytes = 4 << 10
	DefaultName            = "report.xml"

	// TruncatedSuffix is appended to any string cut to a limit.
	TruncatedSuffix = "…(truncated)"

	maxNameBytes  = 4 << 10 // names, classnames, files, property names
	maxProperties = 1000    // per suite or case
	maxSuiteDepth = 64
)

// Errors wrapped by ParseError for structurally unusable documents.
var (
	ErrNoRoot   = errors.New("empty document: no <testsuites> or <testsuite> root element")
	ErrNotJUnit = errors.New("not a JUnit report")
)

// Result of one test case.
type Result string

// Case results.
const (
	Passed  Result = "passed"
	Failed  Result = "failed"
	Errored Result = "errored"
	Skipped Result = "skipped"
)

// Options bound what Parse keeps. The zero value is usable.
type Options struct {
	// Name identifies the file in error messages ("NAME:LINE: ...").
	// Default "report.xml".
	Name string
	// MaxCases is the number of cases (and, separately, suites) kept.
	// Cases beyond it are counted in Summary and Report.Dropped but not kept.
	// 0 means DefaultMaxCases; negative keeps none.
	MaxCases int
	// MaxMessageBytes truncates Case.Message and property values (plus
	// TruncatedSuffix). 0 means DefaultMaxMessageBytes; negative drops them.
	MaxMessageBytes int
	// MaxOutputBytes bounds system-out/system-err kept per case and per
	// suite: its first and last halves are kept, with an omission marker
	// between them. 0 (default) drops them.
	MaxOutputBytes int
	// MaxRunBytes bounds what the parser holds of one run of character
	// data (an element's text, a CDATA section) while reading: its first
	// and last MaxRunBytes, so a huge <system-out> costs O(MaxRunBytes) of
	// memory. 0 means DefaultMaxRunBytes; it is raised to cover
	// MaxOutputBytes and MaxMessageBytes.
	MaxRunBytes int
}

func (o Options) normalized() Options {
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.MaxCases == 0 {
		o.MaxCases = DefaultMaxCases
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.MaxRunBytes <= 0 {
		o.MaxRunBytes = DefaultMaxRunBytes
	}
	o.MaxRunBytes = max(o.MaxRunBytes, o.MaxOutputBytes, o.MaxMessageBytes+utf8.UTFMax, maxNameBytes+utf8.UTFMax)
	return o
}

// Report is one parsed file.
type Report struct {
	Suites  []Suite
	Summary Summary
	// Dropped is the number of cases counted in Summary but not kept
	// because of Options.MaxCases: Summary.Total == kept cases + Dropped.
	Dropped int
}

// Suite is one flattened <testsuite>.
type Suite struct {
	Name       string // "/"-joined path for nested suites
	File       string
	Duration   time.Duration
	Properties map[string]string
	SystemOut  string
	SystemErr  string
	Cases      []Case
}

// Case is one <testcase>.
type Case struct {
	Name       string
	Classname  string
	File       string
	Duration   time.Duration
	Result     Result
	Message    string // truncated to Options.MaxMessageBytes
	Type       string
	Flaky      bool // flakyFailure/flakyError present and the case passed
	Reruns     int  // rerunFailure/rerunError count
	SystemOut  string
	SystemErr  string
	Properties map[string]string
}

// Summary is computed from cases, never from header attributes.
type Summary struct {
	Total, Passed, Failed, Errored, Skipped, Flaky int
	Duration                                       time.Duration
}

func (s *Summary) add(c *Case) {
	s.Total++
	switch c.Result {
	case Passed:
		s.Passed++
	case Failed:
		s.Failed++
	case Errored:
		s.Errored++
	case Skipped:
		s.Skipped++
	}
	if c.Flaky {
		s.Flaky++
	}
	s.Duration += c.Duration
}

// ParseError reports a malformed or non-JUnit document.
type ParseError struct {
	Name string
	Line int
	Msg  string
	Err  error // *xml.SyntaxError, ErrNoRoot, ErrNotJUnit or a read error
}

func (e *ParseError) Error() string { return fmt.Sprintf("%s:%d: %s", e.Name, e.Line, e.Msg) }

// Unwrap returns the underlying error.
func (e *ParseError) Unwrap() error { return e.Err }

// ---------------------------------------------------------------------------

type frame uint8

const (
	fRoot      frame = iota // <testsuites>
	fSuite                  // <testsuite> that opened a suiteState
	fSuiteFold              // <testsuite> folded into its parent (too deep)
	fCase
	fResult // failure/error/skipped/flaky*/rerun*
	fStack  // <stackTrace> inside a result element
	fOutput // system-out / system-err
	fProps
	fProp
)

type textBuf struct {
	b     []byte
	limit int // bytes kept beyond which over is set; <=0 keeps nothing
	over  bool
	// With tailCap > 0 (outputs) the bytes past limit go to tail, of
	// which the last tailCap are kept; skipped counts those dropped.
	tailCap int
	tail    []byte
	skipped int64
}

func (t *textBuf) write(p []byte) {
	if t.limit <= 0 {
		return
	}
	if t.tailCap > 0 {
		room := max(t.limit-len(t.b), 0)
		n := min(room, len(p))
		t.b = append(t.b, p[:n]...)
		t.tail = append(t.tail, p[n:]...)
		if len(t.tail) > 2*t.tailCap { // amortized: trim to tailCap
			drop := len(t.tail) - t.tailCap
			t.skipped += int64(drop)
			t.tail = t.tail[:copy(t.tail, t.tail[drop:])]
		}
		return
	}
	keep := t.limit + utf8.UTFMax // slack so rune-aligned cutting is possible
	room := keep - len(t.b)
	if len(p) <= room {
		t.b = append(t.b, p...)
		return
	}
	if room > 0 {
		t.b = append(t.b, p[:room]...)
		p = p[room:]
	}
	if !t.over && len(bytes.TrimSpace(p)) > 0 {
		t.over = true
	}
}

func (t *textBuf) String() string { return strings.TrimSpace(string(t.b)) }

// MaxOmittedMarker bounds the "…(N bytes omitted)…" marker that joins the
// first and last halves of a cut output.
const MaxOmittedMarker = len("…( bytes omitted)…") + 20

// headTail returns an output buffer's text: whole when it fits in limit
// bytes, else its first and last halves with the omitted count between
// them (cut on rune boundaries).
func headTail(t *textBuf, limit int) string {
	if limit <= 0 {
		return ""
	}
	if len(t.b)+len(t.tail) <= limit && t.skipped == 0 {
		return strings.TrimSpace(string(t.b) + string(t.tail))
	}
	head, tail := t.b, t.tail
	omitted := t.skipped
	if len(tail) > t.tailCap {
		omitted += int64(len(tail) - t.tailCap)
		tail = tail[len(tail)-t.tailCap:]
	}
	for len(tail) > 0 && !utf8.RuneStart(tail[0]) {
		tail, omitted = tail[1:], omitted+1
	}
	cut := len(head)
	for cut > 0 && !utf8.FullRune(head[lastRuneStart(head[:cut]):cut]) {
		cut = lastRuneStart(head[:cut])
	}
	omitted += int64(len(head) - cut)
	return strings.TrimLeftFunc(string(head[:cut]), unicode.IsSpace) + fmt.Sprintf("…(%d bytes omitted)…", omitted) +
		strings.TrimRightFunc(string(tail), unicode.IsSpace)
}

func lastRuneStart(b []byte) int {
	i := len(b) - 1
	for i > 0 && !utf8.RuneStart(b[i]) {
		i--
	}
	return max(i, 0)
}

// truncate cuts s to at most limit bytes on a rune boundary and appends
// TruncatedSuffix when anything was cut (or over is set). limit <= 0 → "".
func truncate(s string, limit int, over bool) string {
	if limit <= 0 {
		return ""
	}
	if len(s) <= limit && !over {
		return s
	}
	n := min(limit, len(s))
	for n > 0 && n < len(s) && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.TrimRightFunc(s[:n], func(r rune) bool { return r == utf8.RuneError }) + TruncatedSuffix
}

type msgSlot struct {
	set  bool
	attr string
	typ  string
	body textBuf
}

const (
	kFailure = iota
	kError
	kSkipped
	kFlaky
	nKinds
)

type caseState struct {
	keep   bool
	c      Case
	counts [nKinds]int
	slots  [nKinds]msgSlot
	out    textBuf
	errb   textBuf
}

type suiteState struct {
	idx       int // index in rep.Suites, -1 when not kept
	name      string
	file      string
	own       time.Duration
	hasTime   bool
	sum       time.Duration // direct cases + child suites
	hadChild  bool
	out, errb textBuf
}

type parser struct {
	opts       Options
	d          *xml.Decoder
	br         *boundedReader
	rep        *Report
	stack      []frame
	suites     []*suiteState
	cs         *caseState
	capture    *textBuf // where CharData goes, nil if nowhere
	captureFor frame
	// property being read
	propName  string
	propValue textBuf
	propAttr  bool
	propDst   *map[string]string
	// bookkeeping
	keptCases  int
	keptSuites int
	orphan     int // index of synthetic suite for cases outside any suite
	omit       []int
	sawRoot    bool
}

// Parse reads one JUnit XML report. See the package documentation for the
// accepted dialects and for the partial-report contract on error.
func Parse(r io.Reader, opts Options) (*Report, error) {
	opts = opts.normalized()
	br := newBoundedReader(sanitizer{r}, opts.MaxRunBytes, opts.MaxRunBytes)
	d := xml.NewDecoder(br)
	d.Strict = true
	d.Entity = xml.HTMLEntity
	d.CharsetReader = charsetReader
	p := &parser{opts: opts, d: d, br: br, rep: &Report{}, orphan: -1}
	err := p.run()
	p.finish()
	if err != nil {
		if len(p.rep.Suites) == 0 && p.rep.Summary.Total == 0 {
			return nil, err
		}
		return p.rep, err
	}
	return p.rep, nil
}

func (p *parser) errorf(err error, msg string) error {
	line, _ := p.d.InputPos()
	var se *xml.SyntaxError
	if errors.As(err, &se) {
		line, msg = se.Line, se.Msg
	}
	line = p.br.realLine(line)
	return &ParseError{Name: p.opts.Name, Line: line, Msg: msg, Err: err}
}

func (p *parser) run() error {
	for {
		tok, err := p.d.Token()
		if err == io.EOF {
			if !p.sawRoot {
				return p.errorf(ErrNoRoot, ErrNoRoot.Error())
			}
			return nil
		}
		if err != nil {
			return p.errorf(err, err.Error())
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if err := p.start(t); err != nil {
				return err
			}
		case xml.EndElement:
			p.end()
		case xml.CharData:
			if p.capture != nil {
				p.capture.write(t)
			}
		}
	}
}

func attr(se xml.StartElement, name string) (string, bool) {
	for _, a := range se.Attr {
		if a.Name.Local == name {
			return a.Value, true
		}
	}
	return "", false
}

func (p *parser) skip() error {
	if err := p.d.Skip(); err != nil {
		return p.errorf(err, err.Error())
	}
	return nil
}

func (p *parser) push(f frame) { p.stack = append(p.stack, f) }

func (p *parser) start(se xml.StartElement) error {
	name := se.Name.Local
	if len(p.stack) == 0 {
		switch name {
		case "testsuites":
			p.sawRoot = true
			p.push(fRoot)
			return nil
		case "testsuite":
			p.sawRoot = true
			p.openSuite(se)
			return nil
		}
		return p.errorf(ErrNotJUnit, fmt.Sprintf("%s: root element <%s> is not <testsuites> or <testsuite>", ErrNotJUnit, name))
	}
	switch top := p.stack[len(p.stack)-1]; top {
	case fRoot, fSuite, fSuiteFold:
		switch name {
		case "testsuite":
			p.openSuite(se)
		case "testcase":
			p.openCase(se)
		case "properties":
			if len(p.suites) == 0 {
				return p.skip() // <testsuites>-level properties: ignored
			}
			s := p.suites[len(p.suites)-1]
			if s.idx < 0 {
				return p.skip()
			}
			p.propDst = &p.rep.Suites[s.idx].Properties
			p.push(fProps)
		case "system-out", "system-err":
			if len(p.suites) == 0 || p.opts.MaxOutputBytes <= 0 || p.suites[len(p.suites)-1].idx < 0 {
				return p.skip()
			}
			s := p.suites[len(p.suites)-1]
			p.beginOutput(pick(name == "system-out", &s.out, &s.errb))
		default:
			return p.skip()
		}
	case fCase:
		cs := p.cs
		switch name {
		case "failure", "error", "skipped", "flakyFailure", "flakyError":
			k := kFlaky
			switch name {
			case "failure":
				k = kFailure
			case "error":
				k = kError
			case "skipped":
				k = kSkipped
			}
			cs.counts[k]++
			slot := &cs.slots[k]
			if slot.set || !cs.keep {
				p.push(fResult) // counted; text not needed
				return nil
			}
			slot.set = true
			slot.attr, _ = attr(se, "message")
			slot.typ, _ = attr(se, "type")
			slot.typ = truncate(slot.typ, maxNameBytes, false)
			p.beginCapture(fResult, &slot.body, p.opts.MaxMessageBytes)
		case "rerunFailure", "rerunError":
			cs.c.Reruns++
			p.push(fResult)
		case "system-out", "system-err":
			if !cs.keep || p.opts.MaxOutputBytes <= 0 {
				return p.skip()
			}
			p.beginOutput(pick(name == "system-out", &cs.out, &cs.errb))
		case "properties":
			if !cs.keep {
				return p.skip()
			}
			p.propDst = &cs.c.Properties
			p.push(fProps)
		default:
			return p.skip()
		}
	case fResult:
		if name == "stackTrace" {
			p.push(fStack) // text keeps flowing into the result's body
			return nil
		}
		return p.skip()
	case fProps:
		if name != "property" {
			return p.skip()
		}
		n, _ := attr(se, "name")
		v, hasV := attr(se, "value")
		p.propName = truncate(n, maxNameBytes, false)
		p.propAttr = hasV
		p.propValue = textBuf{limit: p.opts.MaxMessageBytes}
		if hasV {
			p.propValue.write([]byte(v)) // bounded copy
			p.push(fProp)
			return nil
		}
		p.beginCapture(fProp, &p.propValue, p.opts.MaxMessageBytes)
	default: // fStack, fOutput, fProp: no elements expected inside
		return p.skip()
	}
	return nil
}

func pick[T any](c bool, a, b T) T {
	if c {
		return a
	}
	return b
}

// beginOutput captures a system-out/system-err: its first and last halves
// of MaxOutputBytes.
func (p *parser) beginOutput(buf *textBuf) {
	half := p.opts.MaxOutputBytes / 2
	buf.tailCap = max(p.opts.MaxOutputBytes-half, 0)
	p.beginCapture(fOutput, buf, half)
	if p.opts.MaxOutputBytes > 0 && half == 0 {
		buf.limit = 1 // MaxOutputBytes 1: keep the one tail byte
		buf.tailCap = 1
	}
}

func (p *parser) beginCapture(f frame, buf *textBuf, limit int) {
	buf.limit = limit
	p.capture = buf
	p.captureFor = f
	p.push(f)
}

func (p *parser) end() {
	if len(p.stack) == 0 {
		return
	}
	f := p.stack[len(p.stack)-1]
	p.stack = p.stack[:len(p.stack)-1]
	switch f {
	case fSuite:
		p.closeSuite()
	case fCase:
		p.closeCase()
	case fResult, fOutput:
		p.capture = nil
	case fProp:
		p.capture = nil
		p.setProperty()
	}
}

func (p *parser) openSuite(se xml.StartElement) {
	var parent *suiteState
	if len(p.suites) > 0 {
		parent = p.suites[len(p.suites)-1]
	}
	if len(p.suites) >= maxSuiteDepth {
		p.push(fSuiteFold)
		return
	}
	n, _ := attr(se, "name")
	file, _ := attr(se, "file")
	s := &suiteState{idx: -1, name: n, file: truncate(file, maxNameBytes, false)}
	if parent != nil {
		parent.hadChild = true
		if parent.name != "" && n != "" {
			s.name = parent.name + "/" + n
		} else if n == "" {
			s.name = parent.name
		}
		if s.file == "" {
			s.file = parent.file
		}
	}
	s.name = truncate(s.name, maxNameBytes, false)
	if t, ok := attr(se, "time"); ok {
		s.own, s.hasTime = parseSeconds(t), true
	}
	if (parent == nil || parent.idx >= 0) && p.keptSuites < p.opts.MaxCases {
		p.keptSuites++
		s.idx = len(p.rep.Suites)
		p.rep.Suites = append(p.rep.Suites, Suite{Name: s.name, File: s.file})
	}
	p.suites = append(p.suites, s)
	p.push(fSuite)
}

func (p *parser) closeSuite() {
	s := p.suites[len(p.suites)-1]
	p.suites = p.suites[:len(p.suites)-1]
	p.finalizeSuite(s)
}

func (p *parser) finalizeSuite(s *suiteState) {
	d := s.sum
	if s.hasTime {
		d = s.own
	}
	if len(p.suites) > 0 {
		p.suites[len(p.suites)-1].sum += d
	}
	if s.idx < 0 {
		return
	}
	st := &p.rep.Suites[s.idx]
	st.Duration = d
	st.SystemOut = headTail(&s.out, p.opts.MaxOutputBytes)
	st.SystemErr = headTail(&s.errb, p.opts.MaxOutputBytes)
	if s.hadChild && len(st.Cases) == 0 && len(st.Properties) == 0 && st.SystemOut == "" && st.SystemErr == "" {
		p.omit = append(p.omit, s.idx)
	}
}

func (p *parser) currentSuite() *suiteState {
	if len(p.suites) > 0 {
		return p.suites[len(p.suites)-1]
	}
	// <testcase> directly under <testsuites>: a synthetic unnamed suite.
	s := &suiteState{idx: -1}
	if p.orphan < 0 && p.keptSuites < p.opts.MaxCases {
		p.keptSuites++
		p.orphan = len(p.rep.Suites)
		p.rep.Suites = append(p.rep.Suites, Suite{})
	}
	s.idx = p.orphan
	return s
}

func (p *parser) openCase(se xml.StartElement) {
	s := p.currentSuite()
	cs := &caseState{}
	p.cs = cs
	n, _ := attr(se, "name")
	cn, _ := attr(se, "classname")
	file, _ := attr(se, "file")
	if cn == "" {
		cn = s.name
	}
	if file == "" {
		file = s.file
	}
	cs.c = Case{
		Name:      truncate(n, maxNameBytes, false),
		Classname: truncate(cn, maxNameBytes, false),
		File:      truncate(file, maxNameBytes, false),
	}
	if t, ok := attr(se, "time"); ok {
		cs.c.Duration = parseSeconds(t)
	}
	cs.keep = s.idx >= 0 && p.keptCases < p.opts.MaxCases
	p.push(fCase)
}

func (p *parser) closeCase() {
	cs := p.cs
	p.cs = nil
	c := &cs.c
	win := -1
	switch {
	case cs.counts[kError] > 0:
		c.Result, win = Errored, kError
	case cs.counts[kFailure] > 0:
		c.Result, win = Failed, kFailure
	case cs.counts[kSkipped] > 0:
		c.Result, win = Skipped, kSkipped
	default:
		c.Result = Passed
		if cs.counts[kFlaky] > 0 {
			c.Flaky, win = true, kFlaky
		}
	}
	p.rep.Summary.add(c)
	var s *suiteState
	if len(p.suites) > 0 {
		s = p.suites[len(p.suites)-1]
		s.sum += c.Duration
	}
	if !cs.keep {
		p.rep.Dropped++
		return
	}
	if win >= 0 {
		sl := &cs.slots[win]
		body := sl.body.String()
		msg := strings.TrimSpace(sl.attr)
		if body != "" && body != msg {
			if msg != "" {
				msg += "\n\n"
			}
			msg += body
		}
		c.Message = truncate(msg, p.opts.MaxMessageBytes, sl.body.over)
		c.Type = sl.typ
	}
	c.SystemOut = headTail(&cs.out, p.opts.MaxOutputBytes)
	c.SystemErr = headTail(&cs.errb, p.opts.MaxOutputBytes)
	idx := p.orphan
	if s != nil {
		idx = s.idx
	}
	p.keptCases++
	p.rep.Suites[idx].Cases = append(p.rep.Suites[idx].Cases, *c)
}

func (p *parser) setProperty() {
	if p.propDst == nil {
		return
	}
	m := *p.propDst
	if m == nil {
		m = map[string]string{}
		*p.propDst = m
	}
	if _, exists := m[p.propName]; !exists && len(m) >= maxProperties {
		return
	}
	v := p.propValue.String()
	if p.propAttr {
		v = string(p.propValue.b) // attribute values are not trimmed
	}
	m[p.propName] = truncate(v, p.opts.MaxMessageBytes, p.propValue.over)
}

func (p *parser) finish() {
	// Close suites left open by a truncated document (innermost first) so
	// their durations and outputs are set; an open case is discarded.
	for len(p.suites) > 0 {
		p.closeSuite()
	}
	if len(p.omit) == 0 {
		return
	}
	drop := make(map[int]bool, len(p.omit))
	for _, i := range p.omit {
		drop[i] = true
	}
	out := p.rep.Suites[:0]
	for i := range p.rep.Suites {
		if !drop[i] {
			out = append(out, p.rep.Suites[i])
		}
	}
	clear(p.rep.Suites[len(out):])
	p.rep.Suites = out
}

// ---------------------------------------------------------------------------

var thousands = regexp.MustCompile(`^[+]?[1-9][0-9]{0,2}(,[0-9]{3})+(\.[0-9]*)?$`)

// parseSeconds converts a `time` attribute (seconds) to a Duration, returning
// 0 for anything unusable.
func parseSeconds(s string) time.Duration {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0
	}
	if strings.Contains(s, ",") {
		switch {
		case thousands.MatchString(s):
			s = strings.ReplaceAll(s, ",", "")
		case strings.Count(s, ",") == 1 && !strings.Contains(s, "."):
			s = strings.Replace(s, ",", ".", 1) // decimal comma
		default:
			return 0
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	// Cap at ~1000 years worth of seconds' headroom below int64 overflow.
	if err != nil || math.IsNaN(f) || f <= 0 || f > 9e9 {
		return 0
	}
	return time.Duration(f * float64(time.Second))
}

// sanitizer replaces C0 control characters that XML 1.0 forbids with '?'
// (same length, so line numbers stay exact).
type sanitizer struct{ r io.Reader }

func (s sanitizer) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	for i, c := range b[:n] {
		if c < 0x20 && c != '\t' && c != '\n' && c != '\r' {
			b[i] = '?'
		}
	}
	return n, err
}

func charsetReader(label string, in io.Reader) (io.Reader, error) {
	switch strings.ToLower(strings.TrimSpace(label)) {
	case "utf-8", "utf8", "us-ascii", "ascii":
		return in, nil
	case "iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "windows-1252", "cp1252":
		return &latin1Reader{r: in}, nil
	}
	return nil, fmt.Errorf("unsupported encoding %q", label)
}

// latin1Reader decodes ISO-8859-1 (Windows-1252 is approximated as Latin-1).
type latin1Reader struct {
	r   io.Reader
	buf []byte
	out []byte
}

func (l *latin1Reader) Read(p []byte) (int, error) {
	for len(l.out) == 0 {
		if cap(l.buf) == 0 {
			l.buf = make([]byte, 4096)
		}
		n, err := l.r.Read(l.buf[:cap(l.buf)])
		for _, c := range l.buf[:n] {
			l.out = utf8.AppendRune(l.out, rune(c))
		}
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			return 0, err
		}
	}
	n := copy(p, l.out)
	l.out = l.out[n:]
	return n, nil
}
