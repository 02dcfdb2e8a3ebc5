package state

import (
	"errors"
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestBatchRejectionDoesNotPoisonOthers: a mutation that writes and then
// fails inside a batch leaves nothing behind, and the mutations before and
// after it in the batch keep their effects.
func TestBatchRejectionDoesNotPoisonOthers(t *testing.T) {
	s := New()
	changed := s.Changed()
	errBoom := errors.New("boom")
	var submitErr, assignErr, failErr, agentErr error
	var b *kilnv1.Build
	s.Batch(func() {
		b, submitErr = s.SubmitBuild(1, &fsmv1.SubmitBuild{RequestId: "r1", Steps: steps("a", "b"), TimeUnixMs: 5})
		failErr = s.write(2, func(w *wtx) error {
			// Writes, then fails: none of it may stay.
			mustInsert(w.tx, tableAgents, &kilnv1.Agent{Name: "ghost"})
			j := cloneJob(w.job("1.a"))
			j.Reason = "poisoned"
			w.putJob(j)
			return errBoom
		})
		assignErr = s.AssignJob(3, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "ag", TimeUnixMs: 6})
		agentErr = s.RegisterAgent(4, &fsmv1.RegisterAgent{Name: "ag", SessionId: "s", Slots: 1, TimeUnixMs: 7})
		select {
		case <-changed:
			t.Error("Changed fired inside the batch")
		default:
		}
		if s.LastIndex() != 0 {
			t.Errorf("readers see index %d inside the batch", s.LastIndex())
		}
	})
	if submitErr != nil || assignErr != nil || agentErr != nil || !errors.Is(failErr, errBoom) {
		t.Fatalf("errors: submit %v, assign %v, agent %v, failing %v", submitErr, assignErr, agentErr, failErr)
	}
	if b.GetId() != "1" || len(b.GetJobs()) != 2 {
		t.Fatalf("submit result %v", b)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire after the batch")
	}
	if s.LastIndex() != 4 {
		t.Fatalf("last index %d, want 4", s.LastIndex())
	}
	if _, ok := s.Agent("ghost"); ok {
		t.Fatal("the failed mutation's agent stayed")
	}
	j, _ := s.Job("1.a")
	if j.GetReason() == "poisoned" || j.GetState() != kilnv1.JobState_JOB_STATE_ASSIGNED || j.GetAgent() != "ag" {
		t.Fatalf("job after batch: %v", j)
	}
	if _, ok := s.Agent("ag"); !ok {
		t.Fatal("the agent registered after the failure is missing")
	}
}

// TestBatchLastRejectedRecordsIndex: a batch whose last mutation fails
// still records that index, as a rejection applied alone does.
func TestBatchLastRejectedRecordsIndex(t *testing.T) {
	s := New()
	s.Batch(func() {
		if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{RequestId: "r1", Steps: steps("a"), TimeUnixMs: 5}); err != nil {
			t.Error(err)
		}
		if err := s.AssignJob(2, &fsmv1.AssignJob{JobId: "nope", Attempt: 1, Agent: "ag"}); !errors.Is(err, ErrNotFound) {
			t.Errorf("assign: %v", err)
		}
	})
	if s.LastIndex() != 2 || len(s.QueuedJobs()) != 1 {
		t.Fatalf("last index %d, queued %d", s.LastIndex(), len(s.QueuedJobs()))
	}
	s.Batch(func() {}) // empty: records nothing
	if s.LastIndex() != 2 {
		t.Fatalf("last index %d after an empty batch", s.LastIndex())
	}
}

// TestBatchFiresDispatchOnce: DispatchChanged fires when the batch changed
// the queue, once, after the commit.
func TestBatchFiresDispatchOnce(t *testing.T) {
	s := New()
	d := s.DispatchChanged()
	s.Batch(func() {
		if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{RequestId: "r1", Steps: steps("a"), TimeUnixMs: 5}); err != nil {
			t.Error(err)
		}
	})
	select {
	case <-d:
	default:
		t.Fatal("DispatchChanged did not fire")
	}
}

// TestActiveJobCounts: one count per agent holding ASSIGNED or RUNNING
// jobs, equal to its AgentJobs.
func TestActiveJobCounts(t *testing.T) {
	s := New()
	if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{RequestId: "r1", Steps: steps("a", "b", "c"), TimeUnixMs: 5}); err != nil {
		t.Fatal(err)
	}
	for i, a := range []struct{ job, agent string }{{"1.a", "x"}, {"1.b", "x"}, {"1.c", "y"}} {
		if err := s.AssignJob(uint64(2+i), &fsmv1.AssignJob{JobId: a.job, Attempt: 1, Agent: a.agent}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.FinishJob(5, &fsmv1.FinishJob{Agent: "y", Finished: &kilnv1.JobFinished{JobId: "1.c", Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED}}); err != nil {
		t.Fatal(err)
	}
	got := s.ActiveJobCounts()
	if len(got) != 1 || got["x"] != 2 || got["x"] != len(s.AgentJobs("x")) {
		t.Fatalf("ActiveJobCounts = %v", got)
	}
}
