package fsm

import (
	"bytes"
	"io"
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func tcase(name, result string) *kilnv1.TestCase {
	return &kilnv1.TestCase{Classname: "pkg", Name: name, Result: result, DurationMs: 10}
}

func report(file string, cases ...*kilnv1.TestCase) *kilnv1.TestReport {
	s := &kilnv1.TestSummary{}
	for _, c := range cases {
		s.Total++
		s.DurationMs += c.GetDurationMs()
		switch c.GetResult() {
		case "passed":
			s.Passed++
		case "failed":
			s.Failed++
		case "errored":
			s.Errored++
		case "skipped":
			s.Skipped++
		}
	}
	return &kilnv1.TestReport{File: file, Summary: s, Cases: cases}
}

func (h *harness) tests(agent, job string, attempt uint32, reps ...*kilnv1.TestReport) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_RECORD_TESTS, &fsmv1.RecordTests{
		Agent: agent, TimeUnixMs: h.now, Reports: &kilnv1.TestReports{JobId: job, Attempt: attempt, Reports: reps}})
}

func TestRecordTestsFencingIdempotenceAndFlaky(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, &kilnv1.RetryPolicy{OnFailure: 1}), step("b", 0, nil))
	stale := func(res *Result) {
		t.Helper()
		wantErr(t, res.Err, ErrStaleAttempt)
		if !staleOutcome(res) {
			t.Fatalf("acks %v", res.Outcomes)
		}
	}
	stale(h.tests("x", "1.a", 1, report("r.xml", tcase("t1", "passed"))))
	h.assign("1.a", 1, "x")
	stale(h.tests("y", "1.a", 1, report("r.xml")))
	stale(h.tests("x", "1.a", 2, report("r.xml")))
	wantErr(t, h.tests("x", "1.a", 1, report("../r.xml")).Err, ErrInvalidCommand)
	h.start("1.a", 1, "x")
	if res := h.tests("x", "1.a", 1, report("r.xml", tcase("t1", "passed"), tcase("shaky", "failed"))); res.Err != nil {
		t.Fatal(res.Err)
	}
	// A resend (even with other content) changes nothing.
	if res := h.tests("x", "1.a", 1, report("r.xml", tcase("other", "passed"))); res.Err != nil {
		t.Fatal(res.Err)
	}
	if reps := h.s.TestReports("1", true); len(reps) != 1 || len(reps[0].GetCases()) != 2 || reps[0].GetStep() != "a" || reps[0].GetJobId() != "1.a" {
		t.Fatalf("reports %v", reps)
	}
	ts := h.build("1").GetTests()
	if ts.GetTotal() != 2 || ts.GetFailed() != 1 || ts.GetFlaky() != 0 {
		t.Fatalf("summary after attempt 1: %v", ts)
	}
	h.logs("x", "1.a", 1, 1)
	h.finish("1.a", 1, "x", failed, 1) // retried
	stale(h.tests("x", "1.a", 1, report("late.xml")))
	h.assign("1.a", 2, "x")
	// A new attempt without reports yet: the summary counts nothing of attempt 1.
	if ts := h.build("1").GetTests(); ts.GetTotal() != 0 {
		t.Fatalf("summary after the new assignment: %v", ts)
	}
	h.start("1.a", 2, "x")
	if res := h.tests("x", "1.a", 2, report("r.xml", tcase("t1", "passed"), tcase("shaky", "passed"))); res.Err != nil {
		t.Fatal(res.Err)
	}
	ts = h.build("1").GetTests()
	if ts.GetTotal() != 2 || ts.GetPassed() != 2 || ts.GetFailed() != 0 || ts.GetFlaky() != 1 || ts.GetDurationMs() != 20 {
		t.Fatalf("summary after attempt 2: %v", ts)
	}
	if n := len(h.s.TestReports("1", false)); n != 2 {
		t.Fatalf("%d reports of every attempt", n)
	}
	// Another job of the build: its own failure of the same key, then a pass
	// elsewhere, is already counted once; a Surefire-flaky case counts too.
	h.assign("1.b", 1, "x")
	sf := tcase("sure", "passed")
	sf.Flaky = true
	h.tests("x", "1.b", 1, report("b.xml", sf))
	ran, flaky := h.s.TestCases("1")
	if len(ran) != 3 || len(flaky) != 2 || h.build("1").GetTests().GetFlaky() != 2 || h.build("1").GetTests().GetTotal() != 3 {
		t.Fatalf("ran %v flaky %v summary %v", ran, flaky, h.build("1").GetTests())
	}

	// Snapshot and restore keep the reports and their order.
	data := snapshotBytes(t, h.f)
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	sameState(t, h.s, fresh.s)
	if got := fresh.build("1").GetTests(); got.GetFlaky() != 2 || got.GetTotal() != 3 {
		t.Fatalf("restored summary %v", got)
	}
	fresh.idx = h.idx
	if res := fresh.tests("x", "1.b", 1, report("b.xml"), report("c.xml", tcase("z", "skipped"))); res.Err != nil || len(fresh.s.TestReports("1", true)) != 3 {
		t.Fatalf("after restore: %v %d", res.Err, len(fresh.s.TestReports("1", true)))
	}
}
