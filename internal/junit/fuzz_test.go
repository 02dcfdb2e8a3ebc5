package junit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that every returned report
// satisfies the summary invariants (counts equal the kept cases plus the
// dropped ones, parts add up, limits respected), and that every error is a
// *ParseError. Seeds: all of testdata/ plus the corpus in testdata/fuzz.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.*"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opts := range []Options{
			{},
			{MaxCases: 3, MaxMessageBytes: 7, MaxOutputBytes: 5},
		} {
			r, err := Parse(bytes.NewReader(data), opts)
			if err != nil {
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("error %v (%T) is not a *ParseError", err, err)
				}
			}
			if err == nil && r == nil {
				t.Fatal("nil report without error")
			}
			checkInvariants(t, r, opts)
			if r != nil && r.Dropped == 0 && opts.MaxCases == 0 {
				kept := 0
				for _, s := range r.Suites {
					kept += len(s.Cases)
				}
				if kept != r.Summary.Total {
					t.Fatalf("under MaxCases: kept %d != Total %d", kept, r.Summary.Total)
				}
			}
		}
	})
}
