package scheduler

import (
	"strconv"
	"testing"
	"time"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// settlePasses waits for at least one complete loop pass when each pass
// reads the clock up to perPass times (lease check, unstarted check and
// approval check with a gate blocked: 3).
func (e *env) settlePasses(perPass int64) {
	e.t.Helper()
	target := e.clock.calls.Load() + 2*perPass - 1
	e.eventually("a full scheduler pass", func() bool {
		e.sched.Kick()
		return e.clock.calls.Load() >= target
	})
}

func TestApprovalTimesOut(t *testing.T) {
	e := newEnv(t)
	start := e.clock.Now().UnixMilli()
	e.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "r", TimeUnixMs: start, Steps: []*kilnv1.StepSpec{
		{Key: "gate", Approval: &kilnv1.ApprovalSpec{TimeoutMs: 60_000}},
		{Key: "week", Approval: &kilnv1.ApprovalSpec{}},
		{Key: "deploy", Commands: []string{"true"}, Needs: []string{"gate"}},
	}})
	if e.jobState("1.gate") != kilnv1.JobState_JOB_STATE_BLOCKED {
		t.Fatalf("gate %v", e.job("1.gate"))
	}
	stop := e.start()
	e.clock.Advance(59 * time.Second)
	e.settlePasses(3)
	if e.jobState("1.gate") != kilnv1.JobState_JOB_STATE_BLOCKED || e.ap.count(fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL) != 0 {
		t.Fatal("gate timed out early")
	}
	e.clock.Advance(time.Second)
	e.eventually("gate timed out", func() bool {
		e.sched.Kick()
		return e.jobState("1.gate") == kilnv1.JobState_JOB_STATE_TIMED_OUT
	})
	j := e.job("1.gate")
	if j.GetReason() != "approval timed out after 1m0s" || j.GetApproval().GetBy() != "kiln" || j.GetApproval().GetApproved() ||
		j.GetFinishedUnixMs() != start+60_000 {
		t.Fatalf("gate %v", j)
	}
	if e.jobState("1.deploy") != kilnv1.JobState_JOB_STATE_SKIPPED || e.jobState("1.week") != kilnv1.JobState_JOB_STATE_BLOCKED {
		t.Fatal("wrong states after the timeout")
	}
	if _, ok := e.store.RequestBuild("timeout/1.gate/" + strconv.FormatInt(start, 10)); !ok {
		t.Fatal("timeout request id not recorded")
	}

	// The deadline is replicated state: a new leader's loop honours it.
	stop()
	e.clock.Advance(7*24*time.Hour - time.Minute)
	e.start()
	e.eventually("default timeout", func() bool {
		e.sched.Kick()
		return e.jobState("1.week") == kilnv1.JobState_JOB_STATE_TIMED_OUT
	})
	e.settlePasses(3)
	if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL); n != 2 {
		t.Fatalf("%d decisions committed, want 2", n)
	}
	b, _ := e.store.Build("1")
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || len(e.store.BlockedJobs()) != 0 {
		t.Fatalf("build %v", b)
	}
}
