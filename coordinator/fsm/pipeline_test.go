package fsm

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/pipeline"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Tests of the pipeline semantics: needs, if-skips, allow_failure,
// approvals, concurrency groups, retries and repositories.

const (
	jWaiting  = kilnv1.JobState_JOB_STATE_WAITING
	jQueued   = kilnv1.JobState_JOB_STATE_QUEUED
	jPassed   = kilnv1.JobState_JOB_STATE_PASSED
	jFailed   = kilnv1.JobState_JOB_STATE_FAILED
	jSkipped  = kilnv1.JobState_JOB_STATE_SKIPPED
	jBlocked  = kilnv1.JobState_JOB_STATE_BLOCKED
	jTimedOut = kilnv1.JobState_JOB_STATE_TIMED_OUT
	bQueued   = kilnv1.BuildState_BUILD_STATE_QUEUED
	bRunning  = kilnv1.BuildState_BUILD_STATE_RUNNING
	bPassed   = kilnv1.BuildState_BUILD_STATE_PASSED
	bFailed   = kilnv1.BuildState_BUILD_STATE_FAILED
	bCanceled = kilnv1.BuildState_BUILD_STATE_CANCELED
	bBlocked  = kilnv1.BuildState_BUILD_STATE_BLOCKED
)

// needs is a step of stage 0 with explicit needs.
func needs(key string, deps ...string) *kilnv1.StepSpec {
	return &kilnv1.StepSpec{Key: key, Commands: []string{"echo " + key}, Needs: deps}
}

func allowFailure(sp *kilnv1.StepSpec) *kilnv1.StepSpec {
	sp.AllowFailure = true
	return sp
}

func skipped(sp *kilnv1.StepSpec, reason string) *kilnv1.StepSpec {
	sp.SkipReason = reason
	return sp
}

// gate is an approval step.
func gate(key string, timeoutMs int64, approvers []string, deps ...string) *kilnv1.StepSpec {
	return &kilnv1.StepSpec{Key: key, Needs: deps, Approval: &kilnv1.ApprovalSpec{Approvers: approvers, TimeoutMs: timeoutMs, Prompt: "ship it?"}}
}

func (h *harness) states(want map[string]kilnv1.JobState) {
	h.t.Helper()
	for id, st := range want {
		h.wantJob(id, st)
	}
}

func (h *harness) wantReason(id, reason string) {
	h.t.Helper()
	if j := h.job(id); j.Reason != reason {
		h.t.Fatalf("job %s: reason %q, want %q", id, j.Reason, reason)
	}
}

func (h *harness) decide(build, step string, approve bool, by, comment, rid string) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL, &fsmv1.DecideApproval{
		RequestId: rid, BuildId: build, Step: step, Approve: approve, By: by, Comment: comment, TimeUnixMs: h.now})
}

func (h *harness) retry(build, step, rid string) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD, &fsmv1.RetryBuild{RequestId: rid, BuildId: build, Step: step, TimeUnixMs: h.now})
}

func (h *harness) submitCmd(cmd *fsmv1.SubmitBuild) *Result {
	h.t.Helper()
	cmd.TimeUnixMs = h.now
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
}

func TestNeedsDiamond(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("a"), needs("b", "a"), needs("c", "a"), needs("d", "b", "c"))
	h.states(map[string]kilnv1.JobState{"1.a": jQueued, "1.b": jWaiting, "1.c": jWaiting, "1.d": jWaiting})
	h.run("1.a", 1, "x", passed)
	h.states(map[string]kilnv1.JobState{"1.b": jQueued, "1.c": jQueued, "1.d": jWaiting})
	if j := h.job("1.b"); j.QueueIndex != h.idx {
		t.Fatalf("queue index %d, want %d", j.QueueIndex, h.idx)
	}
	h.run("1.c", 1, "x", passed)
	h.wantJob("1.d", jWaiting)
	h.run("1.b", 1, "x", passed)
	h.wantJob("1.d", jQueued)
	h.run("1.d", 1, "x", passed)
	h.wantBuild("1", bPassed)
}

func TestCrossStageNeedsStartEarly(t *testing.T) {
	h := newHarness(t)
	slow := step("slow", 0, nil)
	fast := step("fast", 0, nil)
	x := step("x", 1, nil)
	x.Needs = []string{"fast"}
	h.submit("r", slow, fast, x)
	h.assign("1.slow", 1, "a1")
	h.run("1.fast", 1, "a2", passed)
	// x runs while stage 0 is still running: only its needs count.
	h.wantJob("1.x", jQueued)
	h.wantJob("1.slow", kilnv1.JobState_JOB_STATE_ASSIGNED)
}

func TestStageDerivedNeeds(t *testing.T) {
	h := newHarness(t)
	b := h.submit("r", step("c", 0, nil), step("u", 1, nil), step("r", 1, nil), step("s", 3, nil))
	want := map[string]string{"c": "", "u": "c", "r": "c", "s": "u,r"}
	for _, j := range b.Jobs {
		if got := strings.Join(j.Spec.Needs, ","); got != want[j.Key] {
			t.Fatalf("%s needs %q, want %q", j.Key, got, want[j.Key])
		}
	}
	// A single stage gets no edges.
	b = h.submit("r2", step("p", 4, nil), step("q", 4, nil))
	for _, j := range b.Jobs {
		if len(j.Spec.Needs) != 0 || j.State != jQueued {
			t.Fatalf("job %v", j)
		}
	}
}

func TestFailureSkipsDependentsNotIndependentBranches(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("a"), needs("b", "a"), needs("c", "b"), needs("d"), needs("e", "d"))
	h.run("1.a", 1, "x", failed)
	h.states(map[string]kilnv1.JobState{"1.b": jSkipped, "1.c": jSkipped, "1.d": jQueued, "1.e": jWaiting})
	h.wantReason("1.b", "needs a which failed")
	h.wantReason("1.c", "needs b which was skipped")
	h.wantBuild("1", bRunning)
	h.run("1.d", 1, "x", passed)
	h.run("1.e", 1, "x", passed)
	b := h.wantBuild("1", bFailed)
	if b.Reason != "job a failed" {
		t.Fatalf("reason %q", b.Reason)
	}
}

func TestSkipWaitsForEveryNeedToFinish(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("a"), needs("b"), needs("c", "a", "b"))
	h.run("1.a", 1, "x", failed)
	// b still runs: c is decided when all its needs have ended.
	h.wantJob("1.c", jWaiting)
	h.run("1.b", 1, "x", passed)
	h.wantJob("1.c", jSkipped)
	h.wantReason("1.c", "needs a which failed")
}

func TestAllowFailure(t *testing.T) {
	h := newHarness(t)
	h.submit("r", allowFailure(needs("lint")), allowFailure(needs("slow")), needs("test", "lint", "slow"))
	h.run("1.lint", 1, "x", failed)
	h.run("1.slow", 1, "x", timedOut)
	h.wantJob("1.test", jQueued)
	h.run("1.test", 1, "x", passed)
	b := h.wantBuild("1", bPassed)
	if b.Reason != "" {
		t.Fatalf("reason %q", b.Reason)
	}

	// A lost attempt is not covered by allow_failure.
	h.register("a1", "s1")
	h.submit("r2", allowFailure(needs("l")), needs("m", "l"))
	h.assign("2.l", 1, "a1")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "a1", SessionId: "s1", TimeUnixMs: h.now})
	h.wantJob("2.m", jSkipped)
	h.wantReason("2.m", "needs l which was lost")
	h.wantBuild("2", bFailed)
}

func TestIfSkippedStep(t *testing.T) {
	h := newHarness(t)
	b := h.submit("r", skipped(needs("docs"), "if: branch == 'main' is false"), needs("pack", "docs"))
	if b.Jobs[0].State != jSkipped || b.Jobs[0].Reason != "if: branch == 'main' is false" || b.Jobs[0].FinishedUnixMs == 0 {
		t.Fatalf("skipped job %v", b.Jobs[0])
	}
	h.wantJob("1.pack", jQueued)
	h.run("1.pack", 1, "x", passed)
	h.wantBuild("1", bPassed)

	// An if-skipped step stands for its own needs: order and failures go
	// through it.
	h.submit("r2", needs("a"), skipped(needs("s", "a"), "if: false"), needs("t", "s"))
	h.wantJob("2.t", jWaiting)
	h.run("2.a", 1, "x", failed)
	h.wantJob("2.t", jSkipped)
	h.wantReason("2.t", "needs a which failed")

	// Every step skipped: the build passes at once.
	h.submit("r3", skipped(needs("only"), "if: false"))
	h.wantBuild("3", bPassed)
}

func TestNeedsValidation(t *testing.T) {
	h := newHarness(t)
	for name, steps := range map[string][]*kilnv1.StepSpec{
		"unknown need": {needs("a", "nope")},
		"self":         {needs("a", "a")},
		"cycle":        {needs("a", "c"), needs("b", "a"), needs("c", "b")},
		"gate timeout": {{Key: "g", Approval: &kilnv1.ApprovalSpec{TimeoutMs: -1}}},
	} {
		t.Run(name, func(t *testing.T) {
			next := h.s.NextBuildNumber()
			res := h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "bad-" + name, Steps: steps})
			wantErr(t, res.Err, ErrInvalidCommand)
			if h.s.NextBuildNumber() != next {
				t.Fatal("rejected submit created a build")
			}
		})
	}
	res := h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{needs("a")}, ConcurrencyLimit: 2})
	wantErr(t, res.Err, ErrInvalidCommand)
	res = h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{needs("a")}, ConcurrencyGroup: "g", ConcurrencyLimit: -1})
	wantErr(t, res.Err, ErrInvalidCommand)
}

func TestApprovalApprove(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("build"), gate("ok", 0, []string{"alice", "bob@ci"}, "build"), needs("deploy", "ok"))
	h.wantJob("1.ok", jWaiting)
	// Not blocked yet.
	wantErr(t, h.decide("1", "ok", true, "alice@laptop", "", "").Err, ErrInvalidState)
	h.run("1.build", 1, "x", passed)
	j := h.wantJob("1.ok", jBlocked)
	if j.BlockedUnixMs == 0 || j.BlockedUnixMs != h.job("1.build").FinishedUnixMs || j.Reason != "waiting for approval: ship it?" {
		t.Fatalf("gate %v", j)
	}
	h.wantBuild("1", bBlocked)
	if bl := h.s.BlockedJobs(); len(bl) != 1 || bl[0].Id != "1.ok" {
		t.Fatalf("blocked jobs %v", bl)
	}
	if q := h.s.QueuedJobs(); len(q) != 0 {
		t.Fatalf("a gate was queued: %v", q)
	}

	res := h.decide("1", "ok", true, "mallory@evil", "", "m1")
	wantErr(t, res.Err, ErrNotPermitted)
	if !strings.Contains(res.Err.Error(), "mallory@evil may not approve ok; approvers: alice, bob@ci") {
		t.Fatalf("error %v", res.Err)
	}
	if _, ok := h.s.RequestBuild("m1"); ok {
		t.Fatal("a rejected decision recorded its request id")
	}
	wantErr(t, h.decide("1", "ok", true, "bob@laptop", "", "").Err, ErrNotPermitted)
	wantErr(t, h.decide("1", "ok", true, "", "", "").Err, ErrInvalidCommand)
	wantErr(t, h.decide("1", "deploy", true, "alice", "", "").Err, ErrInvalidCommand)
	wantErr(t, h.decide("1", "nope", true, "alice", "", "").Err, ErrNotFound)
	wantErr(t, h.decide("9", "ok", true, "alice", "", "").Err, ErrNotFound)
	h.wantJob("1.ok", jBlocked)

	res = h.decide("1", "ok", true, "alice@laptop", "lgtm", "d1")
	if res.Err != nil || res.Build.State != bRunning {
		t.Fatalf("approve: %v %v", res.Err, res.Build)
	}
	j = h.wantJob("1.ok", jPassed)
	if a := j.Approval; !a.GetApproved() || a.GetBy() != "alice@laptop" || a.GetComment() != "lgtm" || a.GetTimeUnixMs() != j.FinishedUnixMs || a.GetTimeUnixMs() == 0 || j.Reason != "approved by alice@laptop: lgtm" {
		t.Fatalf("gate %v", j)
	}
	h.wantJob("1.deploy", jQueued)
	// The build had run a job before it blocked: RUNNING again.
	h.wantBuild("1", bRunning)
	// The same request again changes nothing and answers the build.
	res = h.decide("1", "ok", false, "bob@ci", "", "d1")
	if res.Err != nil || res.Build.Id != "1" {
		t.Fatalf("repeat: %v", res.Err)
	}
	h.wantJob("1.ok", jPassed)
	h.run("1.deploy", 1, "x", passed)
	h.wantBuild("1", bPassed)
}

func TestApprovalReject(t *testing.T) {
	h := newHarness(t)
	h.submit("r", gate("ok", 0, nil), needs("deploy", "ok"))
	h.wantBuild("1", bBlocked)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL, &fsmv1.DecideApproval{BuildId: "1", Step: "ok", By: "anyone@h", Comment: "not today", TimeUnixMs: h.now})
	j := h.wantJob("1.ok", jFailed)
	if j.Reason != "rejected by anyone@h: not today" || j.Approval.GetApproved() || j.Approval.GetBy() != "anyone@h" {
		t.Fatalf("gate %v", j)
	}
	h.wantJob("1.deploy", jSkipped)
	h.wantReason("1.deploy", "needs ok which failed")
	if b := h.wantBuild("1", bFailed); b.Reason != "job ok failed" {
		t.Fatalf("reason %q", b.Reason)
	}

	// An optional gate: rejecting it skips what it guards, the build passes.
	h.submit("r2", allowFailure(gate("ok", 0, nil)), needs("deploy", "ok"))
	h.decide("2", "ok", false, "me@h", "", "")
	h.wantJob("2.deploy", jSkipped)
	h.wantBuild("2", bPassed)
}

func TestApprovalTimeoutCommand(t *testing.T) {
	h := newHarness(t)
	h.submit("r", gate("ok", 60_000, []string{"alice"}), needs("deploy", "ok"))
	blocked := h.job("1.ok").BlockedUnixMs
	timeout := func(at int64) *Result {
		return h.apply(fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL, &fsmv1.DecideApproval{
			RequestId: "timeout/1.ok", BuildId: "1", Step: "ok", By: "kiln", TimedOut: true, TimeUnixMs: at})
	}
	wantErr(t, timeout(blocked+59_999).Err, ErrInvalidState)
	h.wantJob("1.ok", jBlocked)
	res := timeout(blocked + 60_000)
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	j := h.wantJob("1.ok", jTimedOut)
	if j.Reason != "approval timed out after 1m0s" || j.Approval.GetBy() != "kiln" || j.Approval.GetApproved() {
		t.Fatalf("gate %v", j)
	}
	h.wantJob("1.deploy", jSkipped)
	h.wantBuild("1", bFailed)
}

func TestBuildBlockedOnlyWhenNothingElseRuns(t *testing.T) {
	h := newHarness(t)
	h.submit("r", gate("ok", 0, nil), needs("unit"), needs("deploy", "ok", "unit"))
	h.wantJob("1.ok", jBlocked)
	h.wantBuild("1", bQueued)
	h.assign("1.unit", 1, "x")
	h.wantBuild("1", bRunning)
	h.start("1.unit", 1, "x")
	h.finish("1.unit", 1, "x", passed, 0)
	h.wantBuild("1", bBlocked)
	h.decide("1", "ok", true, "me@h", "", "")
	h.wantBuild("1", bRunning)
}

func TestCancelBlockedBuild(t *testing.T) {
	h := newHarness(t)
	h.submit("r", gate("ok", 0, nil), needs("deploy", "ok"))
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "1", TimeUnixMs: h.now})
	h.states(map[string]kilnv1.JobState{"1.ok": jSkipped, "1.deploy": jSkipped})
	h.wantBuild("1", bCanceled)
	if len(h.s.BlockedJobs()) != 0 {
		t.Fatal("a canceled gate is still blocked")
	}
}

func TestConcurrencyGroup(t *testing.T) {
	h := newHarness(t)
	sub := func(rid string, limit int32) *kilnv1.Build {
		return h.submitCmd(&fsmv1.SubmitBuild{RequestId: rid, Steps: []*kilnv1.StepSpec{needs("a")}, ConcurrencyGroup: "deploy", ConcurrencyLimit: limit}).Build
	}
	b1 := sub("r1", 1)
	b2 := sub("r2", 1)
	b3 := sub("r3", 1)
	other := h.submit("r4", needs("a")) // no group
	if b1.Held || !b2.Held || !b3.Held || other.Held || b2.State != bQueued || b1.ConcurrencyLimit != 1 || b1.ConcurrencyGroup != "deploy" {
		t.Fatalf("held: %v %v %v %v", b1.Held, b2.Held, b3.Held, other.Held)
	}
	h.states(map[string]kilnv1.JobState{"1.a": jQueued, "2.a": jWaiting, "3.a": jWaiting, "4.a": jQueued})
	h.run("1.a", 1, "x", failed)
	h.wantBuild("1", bFailed)
	// The oldest held build goes next.
	if b := h.build("2"); b.Held {
		t.Fatal("build 2 still held")
	}
	h.states(map[string]kilnv1.JobState{"2.a": jQueued, "3.a": jWaiting})
	// Canceling a held build frees nothing.
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "3", TimeUnixMs: h.now})
	if b := h.wantBuild("3", bCanceled); b.Held {
		t.Fatal("canceled build held")
	}
	h.wantJob("3.a", jSkipped)
	b5 := sub("r5", 1)
	b6 := sub("r6", 1)
	if !b5.Held || !b6.Held {
		t.Fatal("builds beyond the limit not held")
	}
	// Canceling the running build releases the next.
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "2", TimeUnixMs: h.now})
	h.wantJob("5.a", jQueued)
	h.wantJob("6.a", jWaiting)

	// Limit 2: two run, the third waits.
	h2 := newHarness(t)
	for i, rid := range []string{"a", "b", "c"} {
		b := h2.submitCmd(&fsmv1.SubmitBuild{RequestId: rid, Steps: []*kilnv1.StepSpec{needs("a")}, ConcurrencyGroup: "g", ConcurrencyLimit: 2}).Build
		if b.Held != (i == 2) {
			t.Fatalf("build %s held %v", b.Id, b.Held)
		}
	}
	h2.run("2.a", 1, "x", passed)
	h2.wantJob("3.a", jQueued)

	// A held build whose steps are all skipped finishes when released and
	// releases the next one.
	h3 := newHarness(t)
	sub3 := func(rid string, sp *kilnv1.StepSpec) {
		h3.submitCmd(&fsmv1.SubmitBuild{RequestId: rid, Steps: []*kilnv1.StepSpec{sp}, ConcurrencyGroup: "g"})
	}
	sub3("1", needs("a"))
	sub3("2", skipped(needs("a"), "if: false"))
	sub3("3", needs("a"))
	h3.wantBuild("2", bQueued)
	h3.run("1.a", 1, "x", passed)
	h3.wantBuild("2", bPassed)
	h3.wantJob("3.a", jQueued)
}

func TestRetryAllFailed(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("a", []string{}...), needs("b", "a"), needs("c"))
	h.run("1.a", 1, "x", failed)
	h.run("1.c", 1, "x", passed)
	b := h.wantBuild("1", bFailed)
	started := b.StartedUnixMs

	wantErr(t, h.retry("1", "c", "").Err, ErrInvalidState) // passed
	wantErr(t, h.retry("1", "zz", "").Err, ErrNotFound)
	wantErr(t, h.retry("7", "", "").Err, ErrNotFound)

	res := h.retry("1", "", "rt1")
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	if res.Build.State != bRunning || res.Build.FinishedUnixMs != 0 || res.Build.Reason != "" || res.Build.StartedUnixMs != started {
		t.Fatalf("build %v", res.Build)
	}
	j := h.wantJob("1.a", jQueued)
	if j.Attempt != 1 || j.FinishedUnixMs != 0 || j.QueueIndex != h.idx || j.Reason != "retry requested (attempt 2 next)" {
		t.Fatalf("job %v", j)
	}
	h.states(map[string]kilnv1.JobState{"1.b": jWaiting, "1.c": jPassed})
	if h.job("1.b").Reason != "" {
		t.Fatalf("revived job keeps reason %q", h.job("1.b").Reason)
	}
	// Not finished any more: no second retry.
	wantErr(t, h.retry("1", "", "rt2").Err, ErrInvalidState)
	// The same request again is a no-op.
	if res := h.retry("1", "", "rt1"); res.Err != nil || res.Build.Id != "1" {
		t.Fatalf("repeat: %v", res.Err)
	}
	wantErr(t, h.assign("1.a", 1, "x").Err, ErrStaleAttempt)
	h.run("1.a", 2, "x", passed)
	h.run("1.b", 1, "x", passed)
	h.wantBuild("1", bPassed)
	// The first attempt's log is kept apart.
	if len(h.s.Logs("1.a", 1, 0, 0)) != 1 || len(h.s.Logs("1.a", 2, 0, 0)) != 1 {
		t.Fatal("logs of attempts mixed")
	}
	wantErr(t, h.retry("1", "", "rt3").Err, ErrInvalidState) // nothing failed
}

func TestRetryOneStep(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("x"), needs("y"), needs("z", "x"), needs("w", "z"))
	h.run("1.x", 1, "a", failed)
	h.run("1.y", 1, "a", failed)
	h.wantBuild("1", bFailed)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD, &fsmv1.RetryBuild{BuildId: "1", Step: "x", TimeUnixMs: h.now})
	h.states(map[string]kilnv1.JobState{"1.x": jQueued, "1.y": jFailed, "1.z": jWaiting, "1.w": jWaiting})
	h.run("1.x", 2, "a", passed)
	h.run("1.z", 1, "a", passed)
	h.run("1.w", 1, "a", passed)
	if b := h.wantBuild("1", bFailed); b.Reason != "job y failed" {
		t.Fatalf("reason %q", b.Reason)
	}
}

func TestRetryResetsRetryCounters(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("flaky", 0, &kilnv1.RetryPolicy{OnFailure: 1}))
	h.run("1.flaky", 1, "a", failed)
	h.run("1.flaky", 2, "a", failed)
	h.wantBuild("1", bFailed)
	h.retry("1", "flaky", "")
	if j := h.wantJob("1.flaky", jQueued); j.FailureRetries != 0 || j.Attempt != 2 {
		t.Fatalf("job %v", j)
	}
	// The retry policy applies afresh.
	h.run("1.flaky", 3, "a", failed)
	h.wantJob("1.flaky", jQueued)
	h.run("1.flaky", 4, "a", passed)
	h.wantBuild("1", bPassed)
}

func TestRetryRejectedGateBlocksAgain(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("build"), gate("ok", 0, nil, "build"), needs("deploy", "ok"))
	h.run("1.build", 1, "x", passed)
	first := h.job("1.ok").BlockedUnixMs
	h.decide("1", "ok", false, "me@h", "no", "")
	h.wantBuild("1", bFailed)
	h.retry("1", "", "")
	j := h.wantJob("1.ok", jBlocked)
	if j.Approval != nil || j.BlockedUnixMs <= first {
		t.Fatalf("gate %v", j)
	}
	h.wantJob("1.deploy", jWaiting)
	h.wantJob("1.build", jPassed)
	h.wantBuild("1", bBlocked)
}

func TestRetryCanceledBuild(t *testing.T) {
	h := newHarness(t)
	h.submit("r", needs("a"), needs("b", "a"))
	h.assign("1.a", 1, "x")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "1", TimeUnixMs: h.now})
	h.states(map[string]kilnv1.JobState{"1.a": kilnv1.JobState_JOB_STATE_CANCELED, "1.b": jSkipped})
	h.retry("1", "", "")
	h.states(map[string]kilnv1.JobState{"1.a": jQueued, "1.b": jWaiting})
	h.wantBuild("1", bRunning)
	h.run("1.a", 2, "x", passed)
	h.run("1.b", 1, "x", passed)
	h.wantBuild("1", bPassed)
}

func TestRetryInFullGroupIsHeld(t *testing.T) {
	h := newHarness(t)
	sub := func(rid string) {
		h.submitCmd(&fsmv1.SubmitBuild{RequestId: rid, Steps: []*kilnv1.StepSpec{needs("a")}, ConcurrencyGroup: "g"})
	}
	sub("1")
	h.run("1.a", 1, "x", failed) // build 1 done
	sub("2")                     // runs
	h.retry("1", "", "")
	if b := h.wantBuild("1", bQueued); !b.Held {
		t.Fatal("retried build not held")
	}
	h.wantJob("1.a", jWaiting)
	h.run("2.a", 1, "x", passed)
	h.wantJob("1.a", jQueued)
}

func TestReposAndBuildNumbers(t *testing.T) {
	h := newHarness(t)
	add := func(r *kilnv1.Repo) *Result {
		return h.apply(fsmv1.CommandType_COMMAND_TYPE_ADD_REPO, &fsmv1.AddRepo{Repo: r})
	}
	wantErr(t, add(&kilnv1.Repo{Url: "file:///x"}).Err, ErrInvalidCommand)
	res := add(&kilnv1.Repo{Name: "kiln", Url: "file:///kiln", Branch: "main", Pipeline: "kiln.yaml", PollIntervalMs: 1000})
	if res.Err != nil || res.Repo.GetName() != "kiln" {
		t.Fatalf("add: %v %v", res.Err, res.Repo)
	}
	add(&kilnv1.Repo{Name: "abc", Url: "file:///abc"})
	sub := func(rid, repo string) *Result {
		return h.submitCmd(&fsmv1.SubmitBuild{RequestId: rid, Steps: []*kilnv1.StepSpec{needs("a")}, Event: "push",
			Source: &kilnv1.Source{GitUrl: "file:///kiln", Ref: "main", Commit: "c0ffee", Branch: "main", Repo: repo}})
	}
	b1 := sub("w1", "kiln").Build
	b2 := sub("w2", "kiln").Build
	if b1.RepoBuildNumber != 1 || b2.RepoBuildNumber != 2 || b1.Event != "push" || b1.Source.GetCommit() != "c0ffee" {
		t.Fatalf("builds %v %v", b1, b2)
	}
	if again := sub("w1", "kiln").Build; again.Id != b1.Id || again.RepoBuildNumber != 1 {
		t.Fatalf("repeat %v", again)
	}
	wantErr(t, sub("w3", "nope").Err, ErrInvalidCommand)
	if b := h.submit("m", needs("a")); b.Event != "manual" || b.RepoBuildNumber != 0 {
		t.Fatalf("manual build %v", b)
	}
	res = h.apply(fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED, &fsmv1.RepoPolled{Name: "kiln", Commit: "c0ffee"})
	if res.Err != nil || res.Repo.GetLastCommit() != "c0ffee" {
		t.Fatalf("polled: %v %v", res.Err, res.Repo)
	}
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED, &fsmv1.RepoPolled{Name: "nope", Commit: "x"}).Err, ErrNotFound)
	// Re-adding updates the settings and keeps the counters.
	add(&kilnv1.Repo{Name: "kiln", Url: "file:///kiln2", Branch: "dev", LastCommit: "ignored", Builds: 99})
	r, ok := h.s.Repo("kiln")
	if !ok || r.Url != "file:///kiln2" || r.Branch != "dev" || r.LastCommit != "c0ffee" || r.Builds != 2 {
		t.Fatalf("repo %v", r)
	}
	if rs := h.s.Repos(); len(rs) != 2 || rs[0].Name != "abc" || rs[1].Name != "kiln" {
		t.Fatalf("repos %v", rs)
	}
	if _, ok := h.s.Repo("nope"); ok {
		t.Fatal("found an unknown repo")
	}
}

// pipelineHarness builds a state that uses every new field.
func pipelineHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_ADD_REPO, &fsmv1.AddRepo{Repo: &kilnv1.Repo{Name: "kiln", Url: "file:///k", Branch: "main"}})
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED, &fsmv1.RepoPolled{Name: "kiln", Commit: "abc"})
	h.submitCmd(&fsmv1.SubmitBuild{RequestId: "p1", Event: "push", ConcurrencyGroup: "g", ConcurrencyLimit: 1,
		Source: &kilnv1.Source{Repo: "kiln", Commit: "abc", GitUrl: "file:///k"},
		Steps: []*kilnv1.StepSpec{
			needs("build"), allowFailure(needs("lint")), skipped(needs("docs"), "if: false"),
			gate("ok", 1000, []string{"alice"}, "build"), needs("deploy", "ok", "docs"),
			gate("second", 0, nil, "build"),
		}})
	h.submitCmd(&fsmv1.SubmitBuild{RequestId: "p2", ConcurrencyGroup: "g", Steps: []*kilnv1.StepSpec{needs("a")}})
	h.run("1.build", 1, "x", passed)
	h.run("1.lint", 1, "x", failed)
	h.decide("1", "ok", true, "alice@h", "go", "d1")
	return h
}

func TestSnapshotRoundTripWithPipelineState(t *testing.T) {
	h := pipelineHarness(t)
	h.wantBuild("1", bRunning)
	h.wantJob("1.second", jBlocked)
	if b := h.build("2"); !b.Held {
		t.Fatal("build 2 not held")
	}
	data := snapshotBytes(t, h.f)
	fresh := newHarness(t)
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	fresh.idx, fresh.now = h.idx, h.now
	sameState(t, h.s, fresh.s)
	equalList(t, "repos", h.s.Repos(), fresh.s.Repos())
	equalList(t, "blocked", h.s.BlockedJobs(), fresh.s.BlockedJobs())
	if len(fresh.s.BlockedJobs()) != 1 {
		t.Fatalf("blocked %v", fresh.s.BlockedJobs())
	}
	// Both go on identically: the request ids, the group and the repo
	// counter survive.
	for _, x := range []*harness{h, fresh} {
		if res := x.decide("1", "ok", false, "bob", "", "d1"); res.Err != nil {
			t.Fatal(res.Err)
		}
		x.run("1.deploy", 1, "x", passed)
		x.decide("1", "second", true, "carol@h", "", "")
		x.submitCmd(&fsmv1.SubmitBuild{RequestId: "p3", Source: &kilnv1.Source{Repo: "kiln"}, Steps: []*kilnv1.StepSpec{needs("a")}})
	}
	sameState(t, h.s, fresh.s)
	h.wantBuild("1", bPassed)
	h.wantJob("2.a", jQueued)
	if b := fresh.build("3"); b.RepoBuildNumber != 2 {
		t.Fatalf("repo build number %d", b.RepoBuildNumber)
	}
}

// The stage model is one rule (pipeline.StageEdges) on both paths: the
// needs Resolve gives the steps of a file that write none, and the needs
// the state derives for a build whose client sent none. They used to
// differ after a stage with no steps: Resolve made the next stage's steps
// roots, the state made them wait for the last stage that has steps.
func TestStageModelAgrees(t *testing.T) {
	step := func(key string) *pipeline.Step { return &pipeline.Step{Key: key, Commands: []string{"echo " + key}} }
	p := &pipeline.Pipeline{Stages: []*pipeline.Stage{
		{Steps: []*pipeline.Step{step("a"), step("b")}},
		{}, // no steps
		{Steps: []*pipeline.Step{step("c"), step("d")}},
		{Steps: []*pipeline.Step{step("e")}},
	}}
	resolved, err := p.Resolve(pipeline.Context{Event: "manual"})
	if err != nil {
		t.Fatal(err)
	}
	old := make([]*kilnv1.StepSpec, len(resolved))
	for i, sp := range resolved {
		old[i] = proto.Clone(sp).(*kilnv1.StepSpec)
		old[i].Needs = nil // a client older than needs
	}
	h := newHarness(t)
	h.submit("r", old...)
	for _, sp := range resolved {
		got := h.job("1." + sp.Key).GetSpec().GetNeeds()
		if !slices.Equal(slices.Sorted(slices.Values(got)), sp.Needs) {
			t.Errorf("step %s (stage %d): state derived needs %v, Resolve %v", sp.Key, sp.Stage, got, sp.Needs)
		}
	}
	if c := resolved[2]; c.Key != "c" || !slices.Equal(c.Needs, []string{"a", "b"}) {
		t.Fatalf("c needs %v, want [a b]", c.Needs)
	}
}
