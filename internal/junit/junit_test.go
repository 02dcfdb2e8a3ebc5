package junit

import (
	"encoding/xml"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func parseFile(t *testing.T, name string, opts Options) (*Report, error) {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if opts.Name == "" {
		opts.Name = name
	}
	return Parse(f, opts)
}

func mustParse(t *testing.T, name string, opts Options) *Report {
	t.Helper()
	r, err := parseFile(t, name, opts)
	if err != nil {
		t.Fatalf("Parse(%s): %v", name, err)
	}
	checkInvariants(t, r, opts)
	return r
}

// checkInvariants holds for every report Parse returns.
func checkInvariants(t testing.TB, r *Report, opts Options) {
	t.Helper()
	if r == nil {
		return
	}
	opts = opts.normalized()
	kept := 0
	var sum Summary
	for _, s := range r.Suites {
		for i := range s.Cases {
			c := &s.Cases[i]
			kept++
			sum.add(c)
			if c.Flaky && c.Result != Passed {
				t.Errorf("case %q flaky but %s", c.Name, c.Result)
			}
			if lim := max(opts.MaxMessageBytes, 0); len(c.Message) > lim+len(TruncatedSuffix) {
				t.Errorf("message of %q is %d bytes > %d", c.Name, len(c.Message), lim)
			}
			if lim := max(opts.MaxOutputBytes, 0); len(c.SystemOut) > lim+MaxOmittedMarker || len(c.SystemErr) > lim+MaxOmittedMarker {
				t.Errorf("output of %q exceeds %d", c.Name, lim)
			}
			switch c.Result {
			case Passed, Failed, Errored, Skipped:
			default:
				t.Errorf("case %q has result %q", c.Name, c.Result)
			}
		}
	}
	if opts.MaxCases > 0 && kept > opts.MaxCases {
		t.Errorf("kept %d cases > MaxCases %d", kept, opts.MaxCases)
	}
	if r.Summary.Total != kept+r.Dropped {
		t.Errorf("Total %d != kept %d + dropped %d", r.Summary.Total, kept, r.Dropped)
	}
	s := r.Summary
	if s.Passed+s.Failed+s.Errored+s.Skipped != s.Total {
		t.Errorf("summary parts do not add up: %+v", s)
	}
	if r.Dropped == 0 && sum != r.Summary {
		t.Errorf("summary %+v != recomputed %+v", r.Summary, sum)
	}
}

func findCase(t *testing.T, r *Report, name string) Case {
	t.Helper()
	for _, s := range r.Suites {
		for _, c := range s.Cases {
			if c.Name == name {
				return c
			}
		}
	}
	t.Fatalf("case %q not found in %+v", name, r.Suites)
	return Case{}
}

func suiteNames(r *Report) []string {
	var n []string
	for _, s := range r.Suites {
		n = append(n, s.Name)
	}
	return n
}

func TestBareTestsuite(t *testing.T) {
	r := mustParse(t, "bare_testsuite.xml", Options{})
	want := Summary{Total: 3, Passed: 1, Failed: 1, Skipped: 1, Duration: 750 * time.Millisecond}
	if r.Summary != want {
		t.Errorf("summary = %+v, want %+v", r.Summary, want)
	}
	if len(r.Suites) != 1 || r.Suites[0].Name != "pkg/foo" || r.Suites[0].Duration != 1500*time.Millisecond || r.Suites[0].File != "foo_test.go" {
		t.Errorf("suite = %+v", r.Suites[0])
	}
	f := findCase(t, r, "TestFail")
	if f.Result != Failed || f.Type != "assert" || f.Message != "expected 1, got 2\n\nfoo_test.go:12: expected 1, got 2" || f.File != "foo_test.go" {
		t.Errorf("TestFail = %+v", f)
	}
	if s := findCase(t, r, "TestSkip"); s.Result != Skipped || s.Message != "needs network" {
		t.Errorf("TestSkip = %+v", s)
	}
}

func TestTestsuitesRootAndPrecedence(t *testing.T) {
	r := mustParse(t, "testsuites.xml", Options{})
	want := Summary{Total: 4, Passed: 2, Errored: 2, Duration: time.Second}
	if r.Summary != want {
		t.Errorf("summary = %+v, want %+v", r.Summary, want)
	}
	if got := suiteNames(r); !reflect.DeepEqual(got, []string{"a", "b"}) {
		t.Errorf("suites = %q", got)
	}
	// a has time="1"; b has none → sum of cases.
	if r.Suites[0].Duration != time.Second || r.Suites[1].Duration != 700*time.Millisecond {
		t.Errorf("suite durations %v %v", r.Suites[0].Duration, r.Suites[1].Duration)
	}
	if c := findCase(t, r, "boom"); c.Type != "java.lang.NullPointerException" || !strings.Contains(c.Message, "A.java:10") {
		t.Errorf("boom = %+v", c)
	}
	if c := findCase(t, r, "both"); c.Result != Errored || c.Message != "teardown error" {
		t.Errorf("both = %+v (error must win over failure)", c)
	}
}

func TestNestedSuitesFlattened(t *testing.T) {
	r := mustParse(t, "nested.xml", Options{})
	// "All" has only child suites → omitted.
	want := []string{"All/Unit", "All/Unit/Deep", "All/Integration"}
	if got := suiteNames(r); !reflect.DeepEqual(got, want) {
		t.Fatalf("suites = %q, want %q", got, want)
	}
	if n := len(r.Suites[0].Cases); n != 2 {
		t.Errorf("All/Unit has %d direct cases, want 2", n)
	}
	c1 := findCase(t, r, "t1")
	if c1.Classname != "All/Unit" || c1.File != "tests/unit" {
		t.Errorf("t1 = %+v (classname/file fall back to suite)", c1)
	}
	if c := findCase(t, r, "t2"); c.Classname != "Deep" || c.File != "tests/unit" {
		t.Errorf("t2 = %+v", c)
	}
	if c := findCase(t, r, "t4"); c.File != "tests/integ/x.php" {
		t.Errorf("t4 = %+v", c)
	}
	if r.Suites[0].Duration != 600*time.Millisecond { // 0.1 + 0.3 + child 0.2
		t.Errorf("All/Unit duration = %v", r.Suites[0].Duration)
	}
	if r.Suites[2].Duration != 5*time.Second {
		t.Errorf("Integration duration = %v", r.Suites[2].Duration)
	}
	if r.Summary.Total != 4 || r.Summary.Passed != 4 {
		t.Errorf("summary = %+v", r.Summary)
	}
}

func TestSurefireFlakyAndRerun(t *testing.T) {
	r := mustParse(t, "surefire_flaky.xml", Options{})
	want := Summary{Total: 3, Passed: 2, Failed: 1, Flaky: 1, Duration: 16 * time.Millisecond}
	if r.Summary != want {
		t.Errorf("summary = %+v, want %+v", r.Summary, want)
	}
	s := r.Suites[0]
	if s.Duration != time.Duration(2345.5*float64(time.Second)) {
		t.Errorf("suite duration %v from time=\"2,345.5\"", s.Duration)
	}
	if s.Properties["java.version"] != "21.0.2" || s.Properties["os.name"] != "Linux" {
		t.Errorf("properties = %v", s.Properties)
	}
	f := findCase(t, r, "sometimesFails")
	if !f.Flaky || f.Result != Passed || f.Reruns != 0 || f.Type != "org.opentest4j.AssertionFailedError" {
		t.Errorf("sometimesFails = %+v", f)
	}
	if !strings.HasPrefix(f.Message, "expected: <true> but was: <false>\n\n") || !strings.Contains(f.Message, "FlakyTest.java:17") || strings.Contains(f.Message, "attempt 1") {
		t.Errorf("flaky message = %q", f.Message)
	}
	a := findCase(t, r, "alwaysFails")
	if a.Flaky || a.Result != Failed || a.Reruns != 2 || a.Message != "boom\n\njava.lang.AssertionError: boom" {
		t.Errorf("alwaysFails = %+v", a)
	}
}

func TestCountsComputedNotTrusted(t *testing.T) {
	r := mustParse(t, "wrong_counts.xml", Options{})
	want := Summary{Total: 6, Passed: 4, Failed: 1, Skipped: 1, Duration: 1500 * time.Millisecond}
	if r.Summary != want {
		t.Errorf("summary = %+v, want %+v", r.Summary, want)
	}
	if c := findCase(t, r, "d"); c.Duration != 0 {
		t.Errorf("garbage time → %v", c.Duration)
	}
	if c := findCase(t, r, "e"); c.Duration != 0 {
		t.Errorf("negative time → %v", c.Duration)
	}
}

func TestCDATAMessage(t *testing.T) {
	r := mustParse(t, "cdata.xml", Options{})
	c := findCase(t, r, "cdata_failure")
	if !strings.HasPrefix(c.Message, `assert "a" == "b"`+"\n\ndef test():") ||
		!strings.Contains(c.Message, `assert "a" < "b" and x & y`) ||
		!strings.Contains(c.Message, "<not xml> ]]&gt; still fine") {
		t.Errorf("message = %q", c.Message)
	}
}

func TestPropertiesAndOutput(t *testing.T) {
	r := mustParse(t, "properties_output.xml", Options{MaxOutputBytes: 1024})
	s := r.Suites[0]
	if s.Properties["ci"] != "kiln" || s.Properties["multiline"] != "line one\nline two" || s.SystemOut != "suite level output" {
		t.Errorf("suite = %+v", s)
	}
	c := s.Cases[0]
	if c.SystemOut != "hello from stdout" || c.SystemErr != "hello from stderr" || c.Properties["owner"] != "team-a" {
		t.Errorf("case = %+v", c)
	}
	// Default MaxOutputBytes = 0 drops output.
	r = mustParse(t, "properties_output.xml", Options{})
	if c := r.Suites[0].Cases[0]; c.SystemOut != "" || c.SystemErr != "" || r.Suites[0].SystemOut != "" {
		t.Errorf("output kept with MaxOutputBytes=0: %+v", r.Suites[0])
	}
	// Output over the limit keeps its first and last halves.
	r = mustParse(t, "properties_output.xml", Options{MaxOutputBytes: 5})
	if c := r.Suites[0].Cases[0]; c.SystemOut != "he…(12 bytes omitted)…out" {
		t.Errorf("SystemOut = %q", c.SystemOut)
	}
}

func TestUnicode(t *testing.T) {
	r := mustParse(t, "unicode.xml", Options{})
	c := findCase(t, r, "émoji 🚀 test")
	if r.Suites[0].Name != "ユニコード" || c.Classname != "тест.Класс" || c.Message != "期待値: 🍣, 実際: 🍕 \u00a0😀\n\ntrace ✓" {
		t.Errorf("suite %q case %+v", r.Suites[0].Name, c)
	}
	// Truncation never splits a rune.
	r = mustParse(t, "unicode.xml", Options{MaxMessageBytes: 11}) // "期待値" is 9 bytes, ":" 1, " " 1
	if c := findCase(t, r, "émoji 🚀 test"); c.Message != "期待値: "+TruncatedSuffix {
		t.Errorf("truncated = %q", c.Message)
	}
	r = mustParse(t, "unicode.xml", Options{MaxMessageBytes: 8})
	if c := findCase(t, r, "émoji 🚀 test"); c.Message != "期待"+TruncatedSuffix {
		t.Errorf("truncated mid-rune = %q", c.Message)
	}
}

func TestLatin1AndControlChars(t *testing.T) {
	r := mustParse(t, "latin1.xml", Options{})
	if r.Suites[0].Name != "café" || r.Suites[0].Cases[0].Name != "naïve" {
		t.Errorf("latin1 = %+v", r.Suites)
	}
	r = mustParse(t, "control_chars.xml", Options{})
	if c := findCase(t, r, "colour"); c.Result != Failed || c.Message != "?[31mred?[0m\n\n?[1mbold?[0m" {
		t.Errorf("control chars = %q", c.Message)
	}
}

func TestOrphanCasesAndMultipleRoots(t *testing.T) {
	r := mustParse(t, "orphan_cases.xml", Options{})
	if got := suiteNames(r); !reflect.DeepEqual(got, []string{"", "second-root"}) || r.Summary.Total != 2 {
		t.Errorf("suites %q summary %+v", got, r.Summary)
	}
}

func TestBadDocuments(t *testing.T) {
	tests := []struct {
		file      string
		line      int
		contains  string
		is        error
		partial   int // cases in the partial report; -1 = nil report
		syntaxErr bool
	}{
		{"empty.xml", 1, "empty document", ErrNoRoot, -1, false},
		{"not_xml.txt", 3, "empty document", ErrNoRoot, -1, false},
		{"html_root.xml", 1, "root element <html>", ErrNotJUnit, -1, false},
		{"truncated.xml", 8, "unexpected EOF", nil, 2, true},
		{"mismatched.xml", 4, "element <testcase> closed by </testsuite>", nil, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			r, err := parseFile(t, tt.file, Options{})
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("err = %v (%T), want *ParseError", err, err)
			}
			prefix := tt.file + ":" + itoa(tt.line) + ": "
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.contains) {
				t.Errorf("err = %q, want prefix %q containing %q", err, prefix, tt.contains)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err %v is not %v", err, tt.is)
			}
			var se *xml.SyntaxError
			if errors.As(err, &se) != tt.syntaxErr {
				t.Errorf("xml.SyntaxError unwrap = %v, want %v", !tt.syntaxErr, tt.syntaxErr)
			}
			if tt.partial < 0 {
				if r != nil {
					t.Errorf("report = %+v, want nil", r)
				}
				return
			}
			if r == nil {
				t.Fatal("no partial report")
			}
			checkInvariants(t, r, Options{})
			if r.Summary.Total != tt.partial {
				t.Errorf("partial total = %d, want %d", r.Summary.Total, tt.partial)
			}
		})
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestTruncatedPartialContents(t *testing.T) {
	r, err := parseFile(t, "truncated.xml", Options{})
	if err == nil || r == nil {
		t.Fatalf("r=%v err=%v", r, err)
	}
	if got := suiteNames(r); !reflect.DeepEqual(got, []string{"cut"}) {
		t.Errorf("suites = %q", got)
	}
	if r.Summary.Passed != 1 || r.Summary.Failed != 1 || r.Suites[0].Duration != time.Second {
		t.Errorf("summary %+v duration %v", r.Summary, r.Suites[0].Duration)
	}
}

func TestMaxCases(t *testing.T) {
	var b strings.Builder
	b.WriteString("<testsuites>")
	for s := 0; s < 3; s++ {
		b.WriteString(`<testsuite name="s` + itoa(s) + `">`)
		for i := 0; i < 4; i++ {
			if i == 1 {
				b.WriteString(`<testcase name="c` + itoa(i) + `" time="1"><failure message="m"/></testcase>`)
			} else {
				b.WriteString(`<testcase name="c` + itoa(i) + `" time="1"/>`)
			}
		}
		b.WriteString("</testsuite>")
	}
	b.WriteString("</testsuites>")
	opts := Options{MaxCases: 5}
	r, err := Parse(strings.NewReader(b.String()), opts)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, r, opts)
	want := Summary{Total: 12, Passed: 9, Failed: 3, Duration: 12 * time.Second}
	if r.Summary != want || r.Dropped != 7 {
		t.Errorf("summary %+v dropped %d", r.Summary, r.Dropped)
	}
	if len(r.Suites) != 3 || len(r.Suites[0].Cases) != 4 || len(r.Suites[1].Cases) != 1 || len(r.Suites[2].Cases) != 0 {
		t.Errorf("suites = %+v", r.Suites)
	}
	// Negative keeps nothing but still counts.
	r, err = Parse(strings.NewReader(b.String()), Options{MaxCases: -1})
	if err != nil || len(r.Suites) != 0 || r.Summary.Total != 12 || r.Dropped != 12 {
		t.Errorf("MaxCases=-1: %+v %v", r, err)
	}
}

func TestMessageTruncation(t *testing.T) {
	long := strings.Repeat("x", 10000)
	doc := `<testsuite><testcase name="a"><failure message="short">` + long + `</failure></testcase>` +
		`<testcase name="b"><error message="` + long + `"/></testcase></testsuite>`
	r, err := Parse(strings.NewReader(doc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, r, Options{})
	a := r.Suites[0].Cases[0]
	if len(a.Message) != DefaultMaxMessageBytes+len(TruncatedSuffix) || !strings.HasPrefix(a.Message, "short\n\nxxx") || !strings.HasSuffix(a.Message, TruncatedSuffix) {
		t.Errorf("a: len %d %q…", len(a.Message), a.Message[:20])
	}
	if b := r.Suites[0].Cases[1]; len(b.Message) != DefaultMaxMessageBytes+len(TruncatedSuffix) {
		t.Errorf("b: len %d", len(b.Message))
	}
	r, _ = Parse(strings.NewReader(doc), Options{MaxMessageBytes: -1})
	if m := r.Suites[0].Cases[0].Message; m != "" {
		t.Errorf("MaxMessageBytes<0 kept %q", m)
	}
}

func TestParseSeconds(t *testing.T) {
	tests := map[string]time.Duration{
		"":           0,
		"1":          time.Second,
		" 0.5 ":      500 * time.Millisecond,
		"1.234":      1234 * time.Millisecond,
		"1,234.5":    1234500 * time.Millisecond,
		"12,345,678": 12345678 * time.Second,
		"0,25":       250 * time.Millisecond,
		"1,5":        1500 * time.Millisecond,
		"1,2,3":      0,
		"abc":        0,
		"-1":         0,
		"NaN":        0,
		"+Inf":       0,
		"1e300":      0,
		"1e-3":       time.Millisecond,
		"0x10":       0,
	}
	for in, want := range tests {
		if got := parseSeconds(in); got != want {
			t.Errorf("parseSeconds(%q) = %v, want %v", in, got, want)
		}
	}
}

// pytest_shape.xml is hand-written in the exact shape pytest ≥7 emits with
// --junitxml (TestRealPytestReport, which CI always runs, covers the
// real thing when it is).
func TestPytestShape(t *testing.T) {
	r := mustParse(t, "pytest_shape.xml", Options{MaxOutputBytes: 100})
	want := Summary{Total: 6, Passed: 3, Failed: 1, Errored: 1, Skipped: 1, Duration: 2 * time.Millisecond}
	if r.Summary != want {
		t.Errorf("summary = %+v, want %+v", r.Summary, want)
	}
	if got := suiteNames(r); !reflect.DeepEqual(got, []string{"pytest"}) {
		t.Errorf("suites = %q", got)
	}
	if c := findCase(t, r, "test_fail"); !strings.HasPrefix(c.Message, "AssertionError: kiln-expected-failure\nassert 1 == 2\n\ndef test_fail():") {
		t.Errorf("test_fail = %q", c.Message)
	}
	if c := findCase(t, r, "test_skip"); c.Message != "kiln-skip-reason\n\ntest_tiny.py:10: kiln-skip-reason" || c.Type != "pytest.skip" {
		t.Errorf("test_skip = %+v", c)
	}
	if c := findCase(t, r, "test_pass"); c.SystemOut != "hello stdout ünïcödé" {
		t.Errorf("test_pass out = %q", c.SystemOut)
	}
}
