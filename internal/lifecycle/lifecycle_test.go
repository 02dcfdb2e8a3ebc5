package lifecycle

import (
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestBuildFinished(t *testing.T) {
	want := map[kilnv1.BuildState]bool{
		kilnv1.BuildState_BUILD_STATE_UNSPECIFIED: false,
		kilnv1.BuildState_BUILD_STATE_QUEUED:      false,
		kilnv1.BuildState_BUILD_STATE_RUNNING:     false,
		kilnv1.BuildState_BUILD_STATE_BLOCKED:     false,
		kilnv1.BuildState_BUILD_STATE_PASSED:      true,
		kilnv1.BuildState_BUILD_STATE_FAILED:      true,
		kilnv1.BuildState_BUILD_STATE_CANCELED:    true,
	}
	// Every state of the enum is classified here: a new state must be
	// added to the table (and to the rule, if it is final).
	for v := range kilnv1.BuildState_name {
		s := kilnv1.BuildState(v)
		w, ok := want[s]
		if !ok {
			t.Errorf("%v: not in the table", s)
			continue
		}
		if got := BuildFinished(s); got != w {
			t.Errorf("BuildFinished(%v) = %v, want %v", s, got, w)
		}
	}
}

func TestJobStates(t *testing.T) {
	type rules struct{ finished, active, retryable bool }
	want := map[kilnv1.JobState]rules{
		kilnv1.JobState_JOB_STATE_UNSPECIFIED: {},
		kilnv1.JobState_JOB_STATE_WAITING:     {},
		kilnv1.JobState_JOB_STATE_QUEUED:      {},
		kilnv1.JobState_JOB_STATE_BLOCKED:     {},
		kilnv1.JobState_JOB_STATE_ASSIGNED:    {active: true},
		kilnv1.JobState_JOB_STATE_RUNNING:     {active: true},
		kilnv1.JobState_JOB_STATE_PASSED:      {finished: true},
		kilnv1.JobState_JOB_STATE_SKIPPED:     {finished: true},
		kilnv1.JobState_JOB_STATE_FAILED:      {finished: true, retryable: true},
		kilnv1.JobState_JOB_STATE_CANCELED:    {finished: true, retryable: true},
		kilnv1.JobState_JOB_STATE_TIMED_OUT:   {finished: true, retryable: true},
		kilnv1.JobState_JOB_STATE_LOST:        {finished: true, retryable: true},
	}
	for v := range kilnv1.JobState_name {
		s := kilnv1.JobState(v)
		w, ok := want[s]
		if !ok {
			t.Errorf("%v: not in the table", s)
			continue
		}
		got := rules{finished: JobFinished(s), active: JobActive(s), retryable: JobRetryable(s)}
		if got != w {
			t.Errorf("%v: got %+v, want %+v", s, got, w)
		}
	}
}
