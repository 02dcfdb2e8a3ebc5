package state

import (
	"fmt"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Fence is the verdict of the fencing rule on an agent report that names
// (job, attempt) and comes from an agent. Only FenceCurrent may change the
// job; every other value means the report is stale.
type Fence int

// The fencing verdicts, checked in this order.
const (
	// FenceCurrent: the job is ASSIGNED or RUNNING, the attempt is its
	// current one and the agent holds it.
	FenceCurrent Fence = iota
	// FenceUnknownJob: no such job.
	FenceUnknownJob
	// FenceNotActive: the job is neither ASSIGNED nor RUNNING (it ended, was
	// queued again, or waits).
	FenceNotActive
	// FenceOtherAttempt: the job's current attempt is another one.
	FenceOtherAttempt
	// FenceOtherAgent: the attempt is held by another agent (or the report
	// names no agent).
	FenceOtherAgent
)

// String names the verdict for logs.
func (f Fence) String() string {
	switch f {
	case FenceCurrent:
		return "current"
	case FenceUnknownJob:
		return "unknown job"
	case FenceNotActive:
		return "job not assigned or running"
	case FenceOtherAttempt:
		return "not the current attempt"
	case FenceOtherAgent:
		return "held by another agent"
	}
	return fmt.Sprintf("Fence(%d)", int(f))
}

// CheckAttempt is the fencing rule, the only one: a report for attempt of
// job j by agent may change the job only when j exists, is ASSIGNED or
// RUNNING, attempt is j's current attempt and agent (non-empty) holds it.
// j may be nil (unknown job). The mutations use it inside their
// transaction; readers use Store.CheckAttempt.
func CheckAttempt(j *kilnv1.Job, attempt uint32, agent string) Fence {
	switch {
	case j == nil:
		return FenceUnknownJob
	case !lifecycle.JobActive(j.GetState()):
		return FenceNotActive
	case j.GetAttempt() != attempt:
		return FenceOtherAttempt
	case agent == "" || j.GetAgent() != agent:
		return FenceOtherAgent
	}
	return FenceCurrent
}

// CheckAttempt applies the fencing rule (the function CheckAttempt) to the
// job as the store holds it now.
func (s *Store) CheckAttempt(jobID string, attempt uint32, agent string) Fence {
	return CheckAttempt(getJob(s.read(), jobID), attempt, agent)
}

// fenced returns the job when the fencing rule lets a report of this
// attempt and agent change it, else nil and the verdict.
func (w *wtx) fenced(jobID string, attempt uint32, agent string) (*kilnv1.Job, Fence) {
	j := w.job(jobID)
	if f := CheckAttempt(j, attempt, agent); f != FenceCurrent {
		return nil, f
	}
	return j, FenceCurrent
}

// Outcome is what the cluster did with an agent report for one attempt.
// The leader's agent session turns it into the Ack the agent gets.
type Outcome int

// The outcomes of the fenced mutations. The zero value is no outcome (a
// malformed command).
const (
	_ Outcome = iota
	// OutcomeAccepted: the report was applied (or was a harmless repeat);
	// nothing to acknowledge (StartJob, RegisterArtifacts, RecordTests).
	OutcomeAccepted
	// OutcomeLogCommitted: the attempt's log is committed up to LogSeq
	// (AppendLogs).
	OutcomeLogCommitted
	// OutcomeFinished: the finish report is committed, with the log up to
	// LogSeq (FinishJob).
	OutcomeFinished
	// OutcomeLogIncomplete: the finish report was refused because the log
	// is committed only up to LogSeq, below the report's last seq
	// (FinishJob, with ErrLogsIncomplete).
	OutcomeLogIncomplete
	// OutcomeStale: the fencing rule refused the report (with
	// ErrStaleAttempt, except in AppendLogs, which has no error); Fence
	// says why.
	OutcomeStale
)

// String names the outcome for logs.
func (o Outcome) String() string {
	switch o {
	case 0:
		return "none"
	case OutcomeAccepted:
		return "accepted"
	case OutcomeLogCommitted:
		return "log committed"
	case OutcomeFinished:
		return "finished"
	case OutcomeLogIncomplete:
		return "log incomplete"
	case OutcomeStale:
		return "stale"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// AttemptOutcome is the outcome of an agent report for one attempt.
type AttemptOutcome struct {
	// JobID and Attempt name the attempt the report was for.
	JobID   string
	Attempt uint32
	// Outcome is what was done with the report.
	Outcome Outcome
	// LogSeq is the attempt's committed log position for
	// OutcomeLogCommitted, OutcomeFinished and OutcomeLogIncomplete; 0
	// otherwise.
	LogSeq uint64
	// Fence is the fencing verdict; not FenceCurrent only with
	// OutcomeStale.
	Fence Fence
}

func accepted(jobID string, attempt uint32) AttemptOutcome {
	return AttemptOutcome{JobID: jobID, Attempt: attempt, Outcome: OutcomeAccepted}
}

func stale(jobID string, attempt uint32, f Fence) AttemptOutcome {
	return AttemptOutcome{JobID: jobID, Attempt: attempt, Outcome: OutcomeStale, Fence: f}
}

// staleErr is the ErrStaleAttempt of a fenced-out report.
func staleErr(what, jobID string, attempt uint32, agent string, f Fence) error {
	return fmt.Errorf("%s %q attempt %d on %q: %s: %w", what, jobID, attempt, agent, f, ErrStaleAttempt)
}
