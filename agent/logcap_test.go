package agent

import (
	"fmt"
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestLogLimitDropsOutputWithOneMarker: past the limit the leader
// announced, the job goes on (its last command still decides the result),
// its further output is dropped, and the log ends with one marker line
// saying how much.
func TestLogLimitDropsOutputWithOneMarker(t *testing.T) {
	srv := startServer(t, nil)
	srv.maxLogBytes.Store(10_000)
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	s.send(t, assign("1.big", 1, nil, "echo start", "head -c 5000000 /dev/zero | tr '\\0' y", "echo after", "exit 3"))
	var l jobLog
	fin := runToFinish(t, s, "1.big", &l, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_FAILED || fin.GetExitCode() != 3 {
		t.Fatalf("finished = %v: the job did not go on past the limit", fin)
	}
	got := l.text(t, fin.GetLastSeq())
	total := len("start\n") + 5_000_000 + len("after\n")
	wantMarker := fmt.Sprintf("\nkiln: log limit of 10000 bytes reached (--max-log-bytes); %d further bytes of output were dropped\n", total-10_000)
	want := "start\n" + strings.Repeat("y", 10_000-len("start\n")) + wantMarker
	if got != want {
		t.Fatalf("log is %d bytes, ends %q; want %d bytes ending %q", len(got), got[max(0, len(got)-150):], len(want), wantMarker)
	}
	if strings.Count(got, LogMarkerPrefix) != 1 {
		t.Fatal("more than one marker")
	}
	s.send(t, ack("1.big", 1, fin.GetLastSeq(), true, false))

	// Under the limit, no marker.
	s.send(t, assign("2.small", 1, nil, "echo small"))
	l = jobLog{}
	fin = runToFinish(t, s, "2.small", &l, true)
	if got := l.text(t, fin.GetLastSeq()); got != "small\n" {
		t.Fatalf("small log %q", got)
	}
}
