package buildspec

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, that a valid spec
// always yields a step with one script, and that every error has a
// position-bearing message.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yml")
	for _, name := range files {
		if data, err := os.ReadFile(name); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("version: 0.2\nphases: {build: {commands: [make]}}\n"))
	f.Add([]byte("version: 0.2\nphases:\n  build:\n    commands: &a [x]\n    finally: *a\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, warns, err := Parse("f.yml", data)
		for _, w := range warns {
			if !strings.HasPrefix(w.String(), "f.yml") {
				t.Fatalf("warning %q", w)
			}
		}
		if err != nil {
			if s != nil {
				t.Fatal("spec and error")
			}
			if !strings.HasPrefix(err.Error(), "f.yml") {
				t.Fatalf("error %q", err)
			}
			return
		}
		st := s.Step()
		if len(st.Commands) != 1 || st.Key != StepKey {
			t.Fatalf("step %v", st)
		}
		if strings.IndexByte(st.Commands[0], 0) >= 0 {
			t.Fatal("NUL byte in the script")
		}
	})
}
