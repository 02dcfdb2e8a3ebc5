package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestSummaryJSON is a test summary as `kilnctl status -o json` and
// `kilnctl tests -o json` print it.
type TestSummaryJSON struct {
	Total      int32 `json:"total"`
	Passed     int32 `json:"passed"`
	Failed     int32 `json:"failed"`
	Errored    int32 `json:"errored"`
	Skipped    int32 `json:"skipped"`
	Flaky      int32 `json:"flaky"`
	DurationMs int64 `json:"duration_ms"`
}

func toTestSummaryJSON(s *kilnv1.TestSummary) TestSummaryJSON {
	return TestSummaryJSON{Total: s.GetTotal(), Passed: s.GetPassed(), Failed: s.GetFailed(), Errored: s.GetErrored(),
		Skipped: s.GetSkipped(), Flaky: s.GetFlaky(), DurationMs: s.GetDurationMs()}
}

// TestCaseJSON is one case as `kilnctl tests -o json` prints it.
type TestCaseJSON struct {
	Step       string `json:"step"`
	Attempt    uint32 `json:"attempt"`
	File       string `json:"file"`
	Suite      string `json:"suite"`
	Classname  string `json:"classname"`
	Name       string `json:"name"`
	Result     string `json:"result"`
	DurationMs int64  `json:"duration_ms"`
	Message    string `json:"message"`
	// Output is the start and end of a failed case's system-out/err.
	Output string `json:"output,omitempty"`
	Flaky  bool   `json:"flaky"`
}

// TestReportErrorJSON is a report file that could not be parsed.
type TestReportErrorJSON struct {
	Step  string `json:"step"`
	File  string `json:"file"`
	Error string `json:"error"`
}

// TestsJSON is the output of `kilnctl tests -o json`.
type TestsJSON struct {
	Summary TestSummaryJSON       `json:"summary"`
	Cases   []TestCaseJSON        `json:"cases"`
	Errors  []TestReportErrorJSON `json:"errors"`
}

// FlakyTestJSON is one case of `kilnctl tests flaky -o json`.
type FlakyTestJSON struct {
	Classname   string `json:"classname"`
	Name        string `json:"name"`
	FlakyBuilds int32  `json:"flaky_builds"`
	Builds      int32  `json:"builds"`
	LastBuildID string `json:"last_build_id"`
}

func summaryLine(s *kilnv1.TestSummary) string {
	line := fmt.Sprintf("%d tests, %d passed, %d failed, %d errored, %d skipped", s.GetTotal(), s.GetPassed(), s.GetFailed(), s.GetErrored(), s.GetSkipped())
	if s.GetFlaky() > 0 {
		line += fmt.Sprintf(", %d flaky", s.GetFlaky())
	}
	return line + fmt.Sprintf(" (%v)", time.Duration(s.GetDurationMs())*time.Millisecond)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}

func (a *app) testsCommand() *cobra.Command {
	var (
		output string
		failed bool
	)
	cmd := &cobra.Command{
		Use:   "tests BUILD",
		Short: "Show a build's test results (flaky: the flakiest cases)",
		Long: "tests shows the JUnit results of a build's steps (each step's current attempt):\n" +
			"a summary line, then one row per case. --failed shows failed and errored cases only.\n" +
			"'kilnctl tests flaky' lists the cases that flipped most over the recent builds.",
		Args: exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			// Every page, its reports gathered under the first's summary.
			var resp *kilnv1.ListTestsResponse
			for token := ""; ; {
				var page *kilnv1.ListTestsResponse
				err := a.control(cmd.Context(), "list tests of build "+args[0], buildNotFoundHint, func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
					r, err := cs.ListTests(ctx, &kilnv1.ListTestsRequest{BuildId: args[0], FailedOnly: failed, PageToken: token, Consistency: a.consistency})
					page = r
					return err
				})
				if err != nil {
					return err
				}
				if resp == nil {
					resp = page
				} else {
					resp.Reports = append(resp.Reports, page.GetReports()...)
				}
				if token = page.GetNextPageToken(); token == "" || len(page.GetReports()) == 0 {
					break
				}
			}
			return printTests(a.stdout, resp, output)
		}),
	}
	cmd.Flags().BoolVar(&failed, "failed", false, "show failed and errored cases only")
	addOutputFlag(cmd, &output)
	cmd.AddCommand(a.testsFlakyCommand())
	return cmd
}

func printTests(w io.Writer, resp *kilnv1.ListTestsResponse, output string) error {
	if structured(output) {
		out := TestsJSON{Summary: toTestSummaryJSON(resp.GetSummary()), Cases: []TestCaseJSON{}, Errors: []TestReportErrorJSON{}}
		for _, r := range resp.GetReports() {
			if r.GetError() != "" {
				out.Errors = append(out.Errors, TestReportErrorJSON{Step: r.GetStep(), File: r.GetFile(), Error: r.GetError()})
			}
			for _, c := range r.GetCases() {
				out.Cases = append(out.Cases, TestCaseJSON{Step: r.GetStep(), Attempt: r.GetAttempt(), File: r.GetFile(), Suite: c.GetSuite(),
					Classname: c.GetClassname(), Name: c.GetName(), Result: c.GetResult(), DurationMs: c.GetDurationMs(), Message: c.GetMessage(), Flaky: c.GetFlaky(), Output: c.GetOutput()})
			}
		}
		return writeOutput(w, output, out)
	}
	fmt.Fprintln(w, summaryLine(resp.GetSummary()))
	for _, r := range resp.GetReports() {
		if r.GetError() != "" {
			fmt.Fprintf(w, "%s: %s: parse error: %s\n", r.GetStep(), r.GetFile(), firstLine(r.GetError()))
		}
	}
	t := newTable(w)
	fmt.Fprintln(t, "RESULT\tSTEP\tCLASS\tNAME\tDURATION\tMESSAGE")
	for _, r := range resp.GetReports() {
		for _, c := range r.GetCases() {
			res := c.GetResult()
			if c.GetFlaky() {
				res += " (flaky)"
			}
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%v\t%s\n", res, r.GetStep(), orDash(c.GetClassname()), c.GetName(),
				time.Duration(c.GetDurationMs())*time.Millisecond, orDash(firstLine(c.GetMessage())))
		}
	}
	if err := t.Flush(); err != nil {
		return err
	}
	// The message attribute is often just "Failed"; the text that says
	// why (assertion, first stack frames) follows it. Show its start.
	for _, r := range resp.GetReports() {
		for _, c := range r.GetCases() {
			if c.GetResult() != "failed" && c.GetResult() != "errored" && !c.GetFlaky() {
				continue
			}
			lines := failureLines(c.GetMessage(), maxFailureLines)
			if len(lines) <= 1 {
				continue // the MESSAGE column said it all
			}
			name := c.GetName()
			if c.GetClassname() != "" {
				name = c.GetClassname() + "." + name
			}
			fmt.Fprintf(w, "\n--- %s %s (%s)\n", c.GetResult(), name, r.GetStep())
			for _, l := range lines {
				fmt.Fprintf(w, "    %s\n", l)
			}
		}
	}
	return nil
}

// maxFailureLines is how many lines of a failure's text the tests table
// shows under it; -o json has the whole (truncated) message.
const maxFailureLines = 8

// failureLines returns the first n non-blank lines of a failure message,
// each at most 160 bytes, with "..." as the last when more were cut.
func failureLines(msg string, n int) []string {
	var out []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimRight(l, " \t\r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		if len(out) == n {
			out = append(out, "...")
			break
		}
		if len(l) > 160 {
			l = l[:157] + "..."
		}
		out = append(out, l)
	}
	return out
}

func (a *app) testsFlakyCommand() *cobra.Command {
	var (
		output string
		repo   string
		builds int32
		limit  int32
	)
	cmd := &cobra.Command{
		Use:   "flaky",
		Short: "List the cases that flipped between failing and passing most often",
		Long: "flaky lists, over the newest builds of a registered repository (--repo; every\n" +
			"build without it), the cases that failed and then passed within a build,\n" +
			"most flaky first: FLAKY is the number of builds where the case flipped,\n" +
			"BUILDS the number where it ran.",
		Args: exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			if builds < 0 || builds > 1000 {
				return usageErrorf("--builds must be between 0 and 1000")
			}
			if limit < 0 || limit > 1000 {
				return usageErrorf("--limit must be between 0 and 1000")
			}
			var resp *kilnv1.FlakyTestsResponse
			err := a.control(cmd.Context(), "list flaky tests", "list repositories with 'kilnctl repo list'", func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
				r, err := cs.FlakyTests(ctx, &kilnv1.FlakyTestsRequest{Repo: repo, Builds: builds, Limit: limit, Consistency: a.consistency})
				resp = r
				return err
			})
			if err != nil {
				return err
			}
			if structured(output) {
				out := []FlakyTestJSON{}
				for _, f := range resp.GetTests() {
					out = append(out, FlakyTestJSON{Classname: f.GetClassname(), Name: f.GetName(), FlakyBuilds: f.GetFlakyBuilds(), Builds: f.GetBuilds(), LastBuildID: f.GetLastBuildId()})
				}
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "FLAKY\tBUILDS\tCLASS\tNAME\tLAST")
			for _, f := range resp.GetTests() {
				fmt.Fprintf(t, "%d\t%d\t%s\t%s\t%s\n", f.GetFlakyBuilds(), f.GetBuilds(), orDash(f.GetClassname()), f.GetName(), orDash(f.GetLastBuildId()))
			}
			return t.Flush()
		}),
	}
	cmd.Flags().StringVar(&repo, "repo", "", "registered repository name (default: every build)")
	cmd.Flags().Int32Var(&builds, "builds", 0, "number of newest builds to look at (0: 50)")
	cmd.Flags().Int32Var(&limit, "limit", 0, "at most this many cases (0: 20)")
	addOutputFlag(cmd, &output)
	return cmd
}
