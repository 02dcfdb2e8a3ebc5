package executor

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/junit"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Default test report limits.
const (
	// DefaultMaxTestFiles bounds the report files of one attempt (the
	// cluster stores at most 1,000).
	DefaultMaxTestFiles = 1000
	// DefaultMaxTestFileSize bounds one report file (parsing streams it).
	DefaultMaxTestFileSize int64 = 1 << 30
	// DefaultMaxTestCasesPerFile is the number of cases kept per file.
	DefaultMaxTestCasesPerFile = 10_000
	// DefaultMaxTestCases bounds the cases kept over every report of one
	// attempt (the cluster stores at most 50,000).
	DefaultMaxTestCases = 50_000
	// DefaultMaxTestMessageBytes truncates failure messages.
	DefaultMaxTestMessageBytes = 4 << 10
	// DefaultMaxTestBytes bounds the encoded reports of one attempt (one
	// agent message; the coordinators accept 4 MiB).
	DefaultMaxTestBytes = 3 << 20
	// DefaultMaxTestOutputBytes is the system-out/system-err kept per
	// failed or errored case: its first and last halves.
	DefaultMaxTestOutputBytes = 4 << 10
	// DefaultMaxTestOutputTotal bounds the case output kept over every
	// report of one attempt; cases past it keep none.
	DefaultMaxTestOutputTotal = 1 << 20
)

// TestLimits bound the test reports of one attempt; zero fields take the
// defaults.
type TestLimits struct {
	MaxFiles        int
	MaxFileSize     int64
	MaxCasesPerFile int
	MaxCases        int
	MaxMessageBytes int
	MaxBytes        int
	// MaxOutputBytes is the output kept per failed or errored case;
	// MaxOutputTotal bounds it over the attempt.
	MaxOutputBytes int
	MaxOutputTotal int
}

func (l TestLimits) withDefaults() TestLimits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxFiles, DefaultMaxTestFiles)
	def(&l.MaxCasesPerFile, DefaultMaxTestCasesPerFile)
	def(&l.MaxCases, DefaultMaxTestCases)
	def(&l.MaxMessageBytes, DefaultMaxTestMessageBytes)
	def(&l.MaxBytes, DefaultMaxTestBytes)
	def(&l.MaxOutputBytes, DefaultMaxTestOutputBytes)
	def(&l.MaxOutputTotal, DefaultMaxTestOutputTotal)
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = DefaultMaxTestFileSize
	}
	return l
}

// CollectTests expands the JUnit patterns in the workspace ws (the artifact
// glob rules; symbolic links are skipped), parses every matching file with
// internal/junit and returns one report per file, in path order. A file
// that cannot be parsed gives a report with Error set (and the cases
// parsed before the error). One line per report is written on out. Kept
// cases are bounded per file, per attempt and by encoded size: cases
// beyond the bounds are dropped (the summaries still count them). Only a
// bad pattern or a cancel is an error.
func CollectTests(ctx context.Context, ws string, patterns []string, lim TestLimits, out io.Writer) ([]*kilnv1.TestReport, error) {
	lim = lim.withDefaults()
	seen := map[string]bool{}
	var files []string
	for _, p := range patterns {
		got, err := CollectArtifacts(ctx, ws, []string{p}, ArtifactLimits{MaxFiles: lim.MaxFiles + 1, MaxFileSize: 1<<63 - 1}, io.Discard)
		if err != nil {
			return nil, fmt.Errorf("junit: %w", err)
		}
		if len(got) == 0 {
			fmt.Fprintf(out, "kiln: warning: junit pattern %q matched no files\n", p)
		}
		for _, f := range got {
			if !seen[f.Path] {
				seen[f.Path] = true
				files = append(files, f.Path)
			}
		}
	}
	slices.Sort(files)
	if len(files) > lim.MaxFiles {
		fmt.Fprintf(out, "kiln: warning: %d junit files; only the first %d are read\n", len(files), lim.MaxFiles)
		files = files[:lim.MaxFiles]
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var reports []*kilnv1.TestReport
	cases, size, output := 0, 0, 0
	for _, name := range files {
		if err := ctx.Err(); err != nil {
			return reports, err
		}
		rep := parseTestFile(root, name, lim)
		// Bound the kept cases of the attempt, then the encoded size.
		if room := lim.MaxCases - cases; len(rep.Cases) > room {
			rep.Cases = rep.Cases[:max(room, 0)]
		}
		for _, c := range rep.Cases {
			if output+len(c.Output) > lim.MaxOutputTotal {
				c.Output = ""
			}
			output += len(c.Output)
		}
		n := proto.Size(rep)
		for n+size > lim.MaxBytes && len(rep.Cases) > 0 {
			drop := max(1, len(rep.Cases)/8)
			rep.Cases = rep.Cases[:len(rep.Cases)-drop]
			n = proto.Size(rep)
		}
		if n+size > lim.MaxBytes {
			fmt.Fprintf(out, "kiln: test report %s: skipped (the reports of this step exceed %d bytes)\n", name, lim.MaxBytes)
			continue
		}
		cases += len(rep.Cases)
		size += n
		reports = append(reports, rep)
		fmt.Fprintf(out, "kiln: test report %s: %s\n", name, describeReport(rep))
	}
	return reports, nil
}

func describeReport(r *kilnv1.TestReport) string {
	s := r.GetSummary()
	var b strings.Builder
	if r.GetError() != "" {
		fmt.Fprintf(&b, "parse error: %s", r.GetError())
		if s.GetTotal() == 0 {
			return b.String()
		}
		b.WriteString("; before it: ")
	}
	fmt.Fprintf(&b, "%d tests, %d failed, %d errored, %d skipped", s.GetTotal(), s.GetFailed(), s.GetErrored(), s.GetSkipped())
	if s.GetFlaky() > 0 {
		fmt.Fprintf(&b, ", %d flaky", s.GetFlaky())
	}
	fmt.Fprintf(&b, " (%v)", time.Duration(s.GetDurationMs())*time.Millisecond)
	if kept := len(r.GetCases()); int32(kept) < s.GetTotal() {
		fmt.Fprintf(&b, "; %d cases kept", kept)
	}
	return b.String()
}

// caseOutput is what a failed or errored case keeps of its output:
// system-out, then system-err (each already cut to its first and last
// halves by the parser).
func caseOutput(c junit.Case) string {
	if c.Result != junit.Failed && c.Result != junit.Errored {
		return ""
	}
	switch {
	case c.SystemOut == "":
		return c.SystemErr
	case c.SystemErr == "":
		return c.SystemOut
	}
	return c.SystemOut + "\n" + c.SystemErr
}

// parseTestFile parses one report file inside the workspace root.
func parseTestFile(root *os.Root, name string, lim TestLimits) *kilnv1.TestReport {
	out := &kilnv1.TestReport{File: name, Summary: &kilnv1.TestSummary{}}
	f, err := root.Open(filepath.FromSlash(name))
	if err != nil {
		out.Error = err.Error()
		return out
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil {
		out.Error = err.Error()
		return out
	} else if fi.Size() > lim.MaxFileSize {
		out.Error = fmt.Sprintf("%d bytes, more than the limit of %d", fi.Size(), lim.MaxFileSize)
		return out
	}
	rep, err := junit.Parse(f, junit.Options{Name: name, MaxCases: lim.MaxCasesPerFile, MaxMessageBytes: lim.MaxMessageBytes,
		MaxOutputBytes: lim.MaxOutputBytes})
	if err != nil {
		out.Error = err.Error()
	}
	if rep == nil {
		return out
	}
	s := rep.Summary
	out.Summary = &kilnv1.TestSummary{
		Total: int32(s.Total), Passed: int32(s.Passed), Failed: int32(s.Failed), Errored: int32(s.Errored),
		Skipped: int32(s.Skipped), Flaky: int32(s.Flaky), DurationMs: s.Duration.Milliseconds(),
	}
	for _, su := range rep.Suites {
		for _, c := range su.Cases {
			out.Cases = append(out.Cases, &kilnv1.TestCase{
				Suite: su.Name, Classname: c.Classname, Name: c.Name, File: c.File,
				DurationMs: c.Duration.Milliseconds(), Result: string(c.Result), Message: c.Message,
				Flaky: c.Flaky, Reruns: int32(c.Reruns), Output: caseOutput(c),
			})
		}
	}
	return out
}
