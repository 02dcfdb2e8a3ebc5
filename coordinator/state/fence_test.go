package state

import (
	"errors"
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestCheckAttempt(t *testing.T) {
	job := func(st kilnv1.JobState, attempt uint32, agent string) *kilnv1.Job {
		return &kilnv1.Job{Id: "1.a", State: st, Attempt: attempt, Agent: agent}
	}
	const (
		assigned = kilnv1.JobState_JOB_STATE_ASSIGNED
		running  = kilnv1.JobState_JOB_STATE_RUNNING
	)
	tests := []struct {
		name    string
		job     *kilnv1.Job
		attempt uint32
		agent   string
		want    Fence
	}{
		{"assigned", job(assigned, 2, "x"), 2, "x", FenceCurrent},
		{"running", job(running, 2, "x"), 2, "x", FenceCurrent},
		{"unknown job", nil, 1, "x", FenceUnknownJob},
		{"queued again", job(kilnv1.JobState_JOB_STATE_QUEUED, 2, ""), 2, "x", FenceNotActive},
		{"waiting after a retry", job(kilnv1.JobState_JOB_STATE_WAITING, 2, ""), 2, "x", FenceNotActive},
		{"blocked", job(kilnv1.JobState_JOB_STATE_BLOCKED, 0, ""), 0, "x", FenceNotActive},
		{"passed", job(kilnv1.JobState_JOB_STATE_PASSED, 2, "x"), 2, "x", FenceNotActive},
		{"lost", job(kilnv1.JobState_JOB_STATE_LOST, 2, "x"), 2, "x", FenceNotActive},
		{"canceled", job(kilnv1.JobState_JOB_STATE_CANCELED, 2, "x"), 2, "x", FenceNotActive},
		{"older attempt", job(running, 3, "x"), 2, "x", FenceOtherAttempt},
		{"newer attempt", job(running, 2, "x"), 3, "x", FenceOtherAttempt},
		{"other agent", job(running, 2, "y"), 2, "x", FenceOtherAgent},
		{"no agent named", job(running, 2, "x"), 2, "", FenceOtherAgent},
		{"no agent on either side", job(running, 2, ""), 2, "", FenceOtherAgent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CheckAttempt(tc.job, tc.attempt, tc.agent); got != tc.want {
				t.Fatalf("CheckAttempt = %s, want %s", got, tc.want)
			}
		})
	}
}

// The store's CheckAttempt and the mutations' fencing give the same
// verdicts, and each refused mutation names the verdict in its outcome.
func TestStoreFencingIsOneRule(t *testing.T) {
	s := New()
	if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{Steps: steps("a", "b")}); err != nil {
		t.Fatal(err)
	}
	if err := s.AssignJob(2, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "x"}); err != nil {
		t.Fatal(err)
	}
	refs := []struct {
		job     string
		attempt uint32
		agent   string
		want    Fence
	}{
		{"1.a", 1, "x", FenceCurrent},
		{"1.a", 1, "y", FenceOtherAgent},
		{"1.a", 2, "x", FenceOtherAttempt},
		{"1.b", 0, "x", FenceNotActive},
		{"1.zz", 1, "x", FenceUnknownJob},
	}
	idx := uint64(3)
	for _, r := range refs {
		if got := s.CheckAttempt(r.job, r.attempt, r.agent); got != r.want {
			t.Fatalf("%s/%d/%s: CheckAttempt = %s, want %s", r.job, r.attempt, r.agent, got, r.want)
		}
		if r.want == FenceCurrent {
			continue
		}
		wantStale := AttemptOutcome{JobID: r.job, Attempt: r.attempt, Outcome: OutcomeStale, Fence: r.want}
		check := func(what string, o AttemptOutcome, err error) {
			t.Helper()
			if !errors.Is(err, ErrStaleAttempt) || o != wantStale {
				t.Fatalf("%s %s/%d/%s: %+v, %v; want %+v", what, r.job, r.attempt, r.agent, o, err, wantStale)
			}
		}
		idx++
		o, err := s.StartJob(idx, &fsmv1.StartJob{JobId: r.job, Attempt: r.attempt, Agent: r.agent})
		check("start", o, err)
		idx++
		o, err = s.FinishJob(idx, &fsmv1.FinishJob{Agent: r.agent, Finished: &kilnv1.JobFinished{
			JobId: r.job, Attempt: r.attempt, Result: kilnv1.JobResult_JOB_RESULT_PASSED}})
		check("finish", o, err)
		idx++
		o, err = s.RegisterArtifacts(idx, &fsmv1.RegisterArtifacts{Agent: r.agent, Uploaded: &kilnv1.ArtifactsUploaded{JobId: r.job, Attempt: r.attempt}})
		check("artifacts", o, err)
		idx++
		o, err = s.RecordTests(idx, &fsmv1.RecordTests{Agent: r.agent, Reports: &kilnv1.TestReports{JobId: r.job, Attempt: r.attempt}})
		check("tests", o, err)
		idx++
		outs := s.AppendLogs(idx, &fsmv1.AppendLogs{Agent: r.agent, Chunks: []*kilnv1.LogChunk{{JobId: r.job, Attempt: r.attempt, Seq: 1}}})
		if len(outs) != 1 || outs[0] != wantStale {
			t.Fatalf("logs %s/%d/%s: %+v; want %+v", r.job, r.attempt, r.agent, outs, wantStale)
		}
	}
	if j, _ := s.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_ASSIGNED || j.GetLogSeq() != 0 {
		t.Fatalf("a stale report changed the job: %v", j)
	}
}
