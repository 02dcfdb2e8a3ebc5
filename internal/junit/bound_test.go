package junit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
)

// repeatReader yields n bytes cycling through pattern, without holding them.
type repeatReader struct {
	pattern []byte
	n, off  int64
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	k := 0
	for k < len(p) && r.off < r.n {
		i := int(r.off % int64(len(r.pattern)))
		c := copy(p[k:], r.pattern[i:min(len(r.pattern), i+int(r.n-r.off))])
		k += c
		r.off += int64(c)
	}
	return k, nil
}

// hugeOutputReport is a report whose one case has an n-byte <system-out>
// (lines of "line of output &amp; more ✓\n"), streamed.
func hugeOutputReport(n int64, cdata bool) io.Reader {
	pattern := []byte("line of output &amp; more ✓\n")
	n -= n % int64(len(pattern)) // whole lines: the entities stay whole
	open, end := "<system-out>START ", " END</system-out>"
	if cdata {
		open, end = "<system-out><![CDATA[START ", " END]]></system-out>"
	}
	return io.MultiReader(
		strings.NewReader(`<?xml version="1.0"?>`+"\n"+`<testsuite name="s"><testcase name="big" classname="c"><failure message="boom"/>`+open),
		&repeatReader{pattern: pattern, n: n},
		strings.NewReader(end+"</testcase><testcase name=\"after\" classname=\"c\"/></testsuite>\n"),
	)
}

// TestHugeSystemOutCostsLittleMemory: a 40 MB <system-out> is parsed with
// a few MB of allocation in all (encoding/xml alone would hold the whole
// run as one token), keeping the first and last halves of MaxOutputBytes.
func TestHugeSystemOutCostsLittleMemory(t *testing.T) {
	for _, cdata := range []bool{false, true} {
		t.Run(fmt.Sprint("cdata=", cdata), func(t *testing.T) {
			const size = 40 << 20
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			r, err := Parse(hugeOutputReport(size, cdata), Options{MaxOutputBytes: 4 << 10})
			runtime.ReadMemStats(&after)
			if err != nil {
				t.Fatal(err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d MB system-out: %.1f MB allocated in all", size>>20, float64(alloc)/(1<<20))
			if alloc > 8<<20 {
				t.Fatalf("parsing a %d MB system-out allocated %d bytes", size>>20, alloc)
			}
			if r.Summary.Total != 2 || r.Summary.Failed != 1 {
				t.Fatalf("summary %+v", r.Summary)
			}
			out := r.Suites[0].Cases[0].SystemOut
			if !strings.HasPrefix(out, "START line of output &") || !strings.HasSuffix(out, "more ✓\n END") ||
				!strings.Contains(out, " bytes omitted)…") || len(out) > 4<<10+MaxOmittedMarker {
				t.Fatalf("kept output of %d bytes: %q … %q", len(out), out[:min(60, len(out))], out[max(0, len(out)-60):])
			}
		})
	}
}

// TestBoundedRunsKeepLineNumbers: an error after a cut run is reported at
// its line in the file.
func TestBoundedRunsKeepLineNumbers(t *testing.T) {
	lines := 100_000
	doc := `<testsuite name="s"><testcase name="a"><system-out>` + strings.Repeat("output line\n", lines) +
		"</system-out></testcase>\n<testcase name=\"b\"></wrong></testsuite>\n"
	_, err := Parse(strings.NewReader(doc), Options{MaxRunBytes: 1024})
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != lines+2 {
		t.Fatalf("error %v, want one on line %d", err, lines+2)
	}
}

// TestBoundedReaderPassesSmallDocuments: below the bound the decoder sees
// the input byte for byte; cuts never split a rune or an entity.
func TestBoundedReaderPassesSmallDocuments(t *testing.T) {
	doc := `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><!-- c > d --><a x="1>2"><![CDATA[<raw> ]] ]]]></a>` + "\n"
	var got bytes.Buffer
	if _, err := io.Copy(&got, newBoundedReader(strings.NewReader(doc), 16, 16)); err != nil {
		t.Fatal(err)
	}
	if got.String() != doc {
		t.Fatalf("got %q", got.String())
	}
	for _, text := range []string{strings.Repeat("é", 50), strings.Repeat("&amp;", 20), strings.Repeat("x&lt;", 20)} {
		got.Reset()
		if _, err := io.Copy(&got, newBoundedReader(strings.NewReader("<a>"+text+"</a>"), 7, 7)); err != nil {
			t.Fatal(err)
		}
		s := got.String()
		if !strings.HasPrefix(s, "<a>") || !strings.HasSuffix(s, "</a>") || !strings.Contains(s, "bytes omitted") {
			t.Fatalf("%q → %q", text, s)
		}
		if _, err := Parse(strings.NewReader(`<testsuite><testcase name="n"><system-out>`+text+`</system-out></testcase></testsuite>`),
			Options{MaxRunBytes: 7, MaxOutputBytes: 1}); err != nil {
			t.Fatalf("%q: %v", text, err)
		}
	}
}

// BenchmarkHugeSystemOut reports the allocation of parsing a 40 MB
// <system-out> (go test -bench HugeSystemOut -benchmem ./internal/junit).
func BenchmarkHugeSystemOut(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(40 << 20)
	for range b.N {
		if _, err := Parse(hugeOutputReport(40<<20, false), Options{MaxOutputBytes: 4 << 10}); err != nil {
			b.Fatal(err)
		}
	}
}
