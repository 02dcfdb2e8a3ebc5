package junit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// goTestEvent is one line of `go test -json` (cmd/test2json).
type goTestEvent struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

type xSuites struct {
	XMLName xml.Name `xml:"testsuites"`
	Suites  []xSuite `xml:"testsuite"`
}

type xSuite struct {
	Name     string  `xml:"name,attr"`
	Tests    int     `xml:"tests,attr"`
	Failures int     `xml:"failures,attr"`
	Skipped  int     `xml:"skipped,attr"`
	Time     string  `xml:"time,attr,omitempty"`
	Cases    []xCase `xml:"testcase"`
}

type xCase struct {
	Classname string    `xml:"classname,attr"`
	Name      string    `xml:"name,attr"`
	Time      string    `xml:"time,attr"`
	Failure   *xMessage `xml:"failure,omitempty"`
	Skipped   *xMessage `xml:"skipped,omitempty"`
	SystemOut string    `xml:"system-out,omitempty"`
}

type xMessage struct {
	Message string `xml:"message,attr"`
	Body    string `xml:",chardata"`
}

// goJSONToJUnit converts `go test -json` output to JUnit XML the way
// go-junit-report does: one suite per package, one case per (sub)test, the
// test's output as the failure body / skip message.
func goJSONToJUnit(t *testing.T, events []byte) []byte {
	t.Helper()
	type tc struct {
		action  string
		elapsed float64
		out     strings.Builder
	}
	var pkgs []string
	pkgTime := map[string]float64{}
	tests := map[string][]string{}
	cases := map[[2]string]*tc{}
	sc := bufio.NewScanner(bytes.NewReader(events))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev goTestEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // build noise
		}
		if _, ok := pkgTime[ev.Package]; !ok {
			pkgTime[ev.Package] = 0
			pkgs = append(pkgs, ev.Package)
		}
		if ev.Test == "" {
			if ev.Action == "pass" || ev.Action == "fail" {
				pkgTime[ev.Package] = ev.Elapsed
			}
			continue
		}
		k := [2]string{ev.Package, ev.Test}
		c := cases[k]
		if c == nil {
			c = &tc{}
			cases[k] = c
			tests[ev.Package] = append(tests[ev.Package], ev.Test)
		}
		switch ev.Action {
		case "output":
			c.out.WriteString(ev.Output)
		case "pass", "fail", "skip":
			c.action, c.elapsed = ev.Action, ev.Elapsed
		}
	}
	var doc xSuites
	for _, p := range pkgs {
		s := xSuite{Name: p, Time: strconv.FormatFloat(pkgTime[p], 'f', 3, 64)}
		for _, name := range tests[p] {
			c := cases[[2]string{p, name}]
			x := xCase{Classname: p, Name: name, Time: strconv.FormatFloat(c.elapsed, 'f', 3, 64)}
			switch c.action {
			case "fail":
				x.Failure = &xMessage{Message: "Failed", Body: c.out.String()}
				s.Failures++
			case "skip":
				x.Skipped = &xMessage{Message: c.out.String()}
				s.Skipped++
			default:
				x.SystemOut = c.out.String()
			}
			s.Tests++
			s.Cases = append(s.Cases, x)
		}
		doc.Suites = append(doc.Suites, s)
	}
	out, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(xml.Header), out...)
}

const tinyGoTest = `package tiny

import (
	"fmt"
	"os"
	"testing"
)

func TestPass(t *testing.T) { fmt.Println("\x1b[32mok\x1b[0m ünïcödé") }

func TestFail(t *testing.T) { t.Fatal("kiln-expected-failure: 1 != 2 <&>") }

func TestSkip(t *testing.T) { t.Skip("kiln-skip-reason") }

func TestFlaky(t *testing.T) {
	if os.Getenv("KILN_ATTEMPT") == "1" {
		t.Fatal("flaked on first attempt")
	}
}
`

func runGoTestJSON(t *testing.T, dir, attempt string) []byte {
	t.Helper()
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local", "KILN_ATTEMPT="+attempt)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("go test: %v\n%s", err, stderr.String())
	}
	if !bytes.Contains(out, []byte(`"Action":"run"`)) {
		t.Fatalf("go test -json produced no test events: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	return out
}

func TestRealGoTestReport(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go not on PATH: cannot produce a real go test report")
	}
	if testing.Short() {
		t.Skip("runs a nested go test; skipped in -short mode")
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "go.mod"), "module example.com/tiny\n\ngo 1.21\n")
	write(t, filepath.Join(dir, "tiny_test.go"), tinyGoTest)

	var reports []*Report
	for _, attempt := range []string{"1", "2"} {
		xmlDoc := goJSONToJUnit(t, runGoTestJSON(t, dir, attempt))
		opts := Options{Name: "go-attempt" + attempt + ".xml", MaxOutputBytes: 1024}
		r, err := Parse(bytes.NewReader(xmlDoc), opts)
		if err != nil {
			t.Fatalf("attempt %s: %v\n%s", attempt, err, xmlDoc)
		}
		checkInvariants(t, r, opts)
		reports = append(reports, r)
	}
	r1 := reports[0]
	want := Summary{Total: 4, Passed: 1, Failed: 2, Skipped: 1}
	got := r1.Summary
	got.Duration = 0
	if got != want {
		t.Errorf("attempt 1 summary = %+v, want %+v", got, want)
	}
	if len(r1.Suites) != 1 || r1.Suites[0].Name != "example.com/tiny" {
		t.Errorf("suites = %q", suiteNames(r1))
	}
	f := findCase(t, r1, "TestFail")
	if f.Result != Failed || f.Classname != "example.com/tiny" || !strings.Contains(f.Message, "kiln-expected-failure: 1 != 2 <&>") {
		t.Errorf("TestFail = %+v", f)
	}
	if s := findCase(t, r1, "TestSkip"); s.Result != Skipped || !strings.Contains(s.Message, "kiln-skip-reason") {
		t.Errorf("TestSkip = %+v", s)
	}
	if p := findCase(t, r1, "TestPass"); p.Result != Passed || !strings.Contains(p.SystemOut, "ünïcödé") {
		t.Errorf("TestPass = %+v", p)
	}
	if s := reports[1].Summary; s.Failed != 1 || s.Passed != 2 {
		t.Errorf("attempt 2 summary = %+v", s)
	}
}

const tinyPytest = `
import pytest

def test_pass():
    print("hello stdout ünïcödé")

def test_fail():
    assert 1 == 2, "kiln-expected-failure"

@pytest.mark.skip(reason="kiln-skip-reason")
def test_skip():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")

def test_error(broken):
    pass

@pytest.mark.parametrize("x", [1, 2])
def test_param(x):
    assert x
`

// pytestCommand finds pytest: the pytest command (Debian's python3-pytest,
// which .ci/run installs), else `python3 -m pytest`.
func pytestCommand() ([]string, error) {
	if p, err := exec.LookPath("pytest"); err == nil {
		return []string{p}, nil
	}
	if out, err := exec.Command("python3", "-m", "pytest", "--version").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("no pytest command, and `python3 -m pytest --version` failed: %v: %s", err, bytes.TrimSpace(out))
	}
	return []string{"python3", "-m", "pytest"}, nil
}

func TestRealPytestReport(t *testing.T) {
	pytest, err := pytestCommand()
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI installs pytest (.ci/run); %v", err)
		}
		t.Skipf("pytest unavailable on this machine (%v); CI runs this test", err)
	}
	dir := t.TempDir()
	write(t, filepath.Join(dir, "test_tiny.py"), tinyPytest)
	xmlPath := filepath.Join(dir, "report.xml")
	args := append(pytest[1:], "-q", "-p", "no:cacheprovider", "--junitxml="+xmlPath, "-o", "junit_logging=system-out", "test_tiny.py")
	cmd := exec.Command(pytest[0], args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("pytest: %v\n%s", err, out)
	}
	f, err := os.Open(xmlPath)
	if err != nil {
		t.Fatalf("pytest wrote no report: %v\n%s", err, out)
	}
	defer f.Close()
	opts := Options{Name: "pytest.xml", MaxOutputBytes: 1024}
	r, err := Parse(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, r, opts)
	got := r.Summary
	got.Duration = 0
	want := Summary{Total: 6, Passed: 3, Failed: 1, Errored: 1, Skipped: 1}
	if got != want {
		t.Errorf("summary = %+v, want %+v", got, want)
	}
	if c := findCase(t, r, "test_fail"); c.Classname != "test_tiny" || !strings.Contains(c.Message, "kiln-expected-failure") {
		t.Errorf("test_fail = %+v", c)
	}
	if c := findCase(t, r, "test_skip"); !strings.Contains(c.Message, "kiln-skip-reason") {
		t.Errorf("test_skip = %+v", c)
	}
	if c := findCase(t, r, "test_error"); !strings.Contains(c.Message, "fixture exploded") {
		t.Errorf("test_error = %+v", c)
	}
	findCase(t, r, "test_param[1]")
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
