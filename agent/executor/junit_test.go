package executor

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCollectTestsKeepsHeadAndTailOfFailedOutput: a failed case keeps the
// first and last halves of 4 KiB of its output (a 6 MB system-out); a
// passed case keeps none.
func TestCollectTestsKeepsHeadAndTailOfFailedOutput(t *testing.T) {
	ws := t.TempDir()
	var b strings.Builder
	b.WriteString(`<testsuite name="s"><testcase name="bad" classname="c"><failure message="m"/><system-out>FIRST `)
	b.WriteString(strings.Repeat("noise\n", 1_000_000))
	b.WriteString(` LAST</system-out><system-err>err text</system-err></testcase>`)
	b.WriteString(`<testcase name="good" classname="c"><system-out>passed output</system-out></testcase></testsuite>`)
	if err := os.WriteFile(filepath.Join(ws, "r.xml"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	reps, err := CollectTests(context.Background(), ws, []string{"r.xml"}, TestLimits{}, io.Discard)
	if err != nil || len(reps) != 1 || len(reps[0].GetCases()) != 2 {
		t.Fatalf("reports %v, %v", reps, err)
	}
	bad, good := reps[0].GetCases()[0], reps[0].GetCases()[1]
	out := bad.GetOutput()
	if !strings.HasPrefix(out, "FIRST noise\n") || !strings.HasSuffix(out, "noise\n LAST\nerr text") ||
		!strings.Contains(out, " bytes omitted)…") || len(out) > DefaultMaxTestOutputBytes+100 {
		t.Fatalf("failed case output (%d bytes): %q … %q", len(out), out[:min(40, len(out))], out[max(0, len(out)-40):])
	}
	if good.GetOutput() != "" {
		t.Fatalf("passed case kept output %q", good.GetOutput())
	}
}
