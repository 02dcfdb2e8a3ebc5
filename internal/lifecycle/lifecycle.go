// Package lifecycle is the one place for the rules about build and job
// states that more than one part of Kiln needs: which states are final,
// which mean a job holds an agent, which a retry runs again. The
// transitions themselves are made by coordinator/state (see its package
// doc and ARCHITECTURE.md "Job lifecycle"). The package imports only the
// public API types, so the coordinator, the agent and the CLI may all use
// it.
package lifecycle

import kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"

// BuildFinished reports whether a build state is final: PASSED, FAILED or
// CANCELED. A finished build changes state again only through RetryBuild.
func BuildFinished(s kilnv1.BuildState) bool {
	switch s {
	case kilnv1.BuildState_BUILD_STATE_PASSED, kilnv1.BuildState_BUILD_STATE_FAILED,
		kilnv1.BuildState_BUILD_STATE_CANCELED:
		return true
	}
	return false
}

// JobFinished reports whether a job state is final: PASSED, FAILED,
// CANCELED, TIMED_OUT, LOST or SKIPPED. Retry policies and RetryBuild move
// some of these back to QUEUED or WAITING; until then no agent runs the job.
func JobFinished(s kilnv1.JobState) bool {
	switch s {
	case kilnv1.JobState_JOB_STATE_PASSED, kilnv1.JobState_JOB_STATE_FAILED,
		kilnv1.JobState_JOB_STATE_CANCELED, kilnv1.JobState_JOB_STATE_TIMED_OUT,
		kilnv1.JobState_JOB_STATE_LOST, kilnv1.JobState_JOB_STATE_SKIPPED:
		return true
	}
	return false
}

// JobActive reports whether a job state means an agent holds the job's
// current attempt: ASSIGNED or RUNNING. Only an active attempt may report
// logs, artifacts or its end.
func JobActive(s kilnv1.JobState) bool {
	return s == kilnv1.JobState_JOB_STATE_ASSIGNED || s == kilnv1.JobState_JOB_STATE_RUNNING
}

// JobRetryable reports whether RetryBuild runs a job in this state again:
// FAILED, TIMED_OUT, LOST or CANCELED. PASSED jobs stay; a job SKIPPED
// because of its needs waits again when a retried job is among them.
func JobRetryable(s kilnv1.JobState) bool {
	switch s {
	case kilnv1.JobState_JOB_STATE_FAILED, kilnv1.JobState_JOB_STATE_TIMED_OUT,
		kilnv1.JobState_JOB_STATE_LOST, kilnv1.JobState_JOB_STATE_CANCELED:
		return true
	}
	return false
}
