package agent

import (
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestTestReportsSentBeforeFinish: the junit files are parsed after the
// commands, a bad file becomes a report with an error, the reports are sent
// before JobFinished and the result is unchanged.
func TestTestReportsSentBeforeFinish(t *testing.T) {
	srv := startServerWith(t, nil, nil)
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	m := assign("1.t", 1, nil,
		"mkdir -p r",
		`echo '<testsuite name="s"><testcase classname="c" name="ok" time="0.25"/><testcase classname="c" name="bad"><failure message="boom">trace</failure></testcase></testsuite>' > r/good.xml`,
		`echo '<testsuite><testcase name="x">' > r/broken.xml`,
		"exit 3")
	m.GetAssignment().Junit = []string{"r/*.xml", "none/*.xml"}
	s.send(t, m)
	var l jobLog
	var kinds []string
	var tests *kilnv1.TestReports
	var fin *kilnv1.JobFinished
	for fin == nil {
		msg := s.recv(t)
		switch {
		case msg.GetLog() != nil:
			l.add(t, msg.GetLog())
		case msg.GetTests() != nil:
			kinds = append(kinds, "tests")
			tests = msg.GetTests()
		case msg.GetFinished() != nil:
			kinds = append(kinds, "finished")
			fin = msg.GetFinished()
		}
	}
	if strings.Join(kinds, ",") != "tests,finished" {
		t.Fatalf("order %v", kinds)
	}
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_FAILED || fin.GetExitCode() != 3 || fin.GetReason() != "exit code 3" {
		t.Fatalf("finished %v", fin)
	}
	reps := tests.GetReports()
	if tests.GetAttempt() != 1 || len(reps) != 2 || reps[0].GetFile() != "r/broken.xml" || reps[0].GetError() == "" || reps[1].GetFile() != "r/good.xml" {
		t.Fatalf("reports %v", reps)
	}
	good := reps[1]
	if good.GetError() != "" || good.GetSummary().GetTotal() != 2 || good.GetSummary().GetFailed() != 1 || len(good.GetCases()) != 2 ||
		good.GetCases()[1].GetResult() != "failed" || !strings.HasPrefix(good.GetCases()[1].GetMessage(), "boom") {
		t.Fatalf("good report %v", good)
	}
	text := l.text(t, fin.GetLastSeq())
	for _, want := range []string{
		"kiln: test report r/good.xml: 2 tests, 1 failed, 0 errored, 0 skipped",
		"kiln: test report r/broken.xml: parse error: r/broken.xml:",
		`junit pattern "none/*.xml" matched no files`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q:\n%s", want, text)
		}
	}
	s.send(t, ack("1.t", 1, fin.GetLastSeq(), true, false))
}
