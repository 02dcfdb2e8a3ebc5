package state

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	"github.com/kiln-ci/kiln/internal/role"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// DefaultApprovalTimeout is how long a gate waits when its spec says 0.
const DefaultApprovalTimeout = 7 * 24 * time.Hour

// ApprovalTimeout returns how long an approval gate waits before it is
// timed out.
func ApprovalTimeout(spec *kilnv1.StepSpec) time.Duration {
	if ms := spec.GetApproval().GetTimeoutMs(); ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	return DefaultApprovalTimeout
}

// ApprovalDeadline returns when a BLOCKED gate times out (Unix ms).
func ApprovalDeadline(j *kilnv1.Job) int64 {
	return j.GetBlockedUnixMs() + ApprovalTimeout(j.GetSpec()).Milliseconds()
}

// mayApprove reports whether by is one of the approvers: the whole
// "user@host" (or token name) or its user part, or, for an entry
// "role:NAME", a decider whose token role (byRole, set with --acl) is NAME
// or above.
func mayApprove(approvers []string, by, byRole string) bool {
	if len(approvers) == 0 {
		return true
	}
	user, _, _ := strings.Cut(by, "@")
	if slices.Contains(approvers, by) || slices.Contains(approvers, user) {
		return true
	}
	have, err := role.Parse(byRole)
	if err != nil {
		return false
	}
	for _, a := range approvers {
		if name, ok := strings.CutPrefix(a, role.ApproverPrefix); ok {
			if want, err := role.Parse(name); err == nil && have.AtLeast(want) {
				return true
			}
		}
	}
	return false
}

// DecideApproval approves, rejects or times out a BLOCKED approval gate and
// advances its build (see the package doc).
func (s *Store) DecideApproval(index uint64, cmd *fsmv1.DecideApproval) (*kilnv1.Build, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Build, error) {
		if b, ok, err := w.seenRequest(cmd.GetRequestId()); ok || err != nil {
			return b, err
		}
		row := getBuildRow(w.tx, cmd.GetBuildId())
		if row == nil {
			return nil, fmt.Errorf("decide approval: build %q: %w", cmd.GetBuildId(), ErrNotFound)
		}
		j := w.job(row.ID + "." + cmd.GetStep())
		if j == nil || cmd.GetStep() == "" {
			return nil, fmt.Errorf("decide approval: build %s has no step %q: %w", row.ID, cmd.GetStep(), ErrNotFound)
		}
		a := j.GetSpec().GetApproval()
		if a == nil {
			return nil, fmt.Errorf("decide approval: step %s of build %s is not an approval step: %w", j.Key, row.ID, ErrInvalidCommand)
		}
		if j.GetState() != jBlocked {
			return nil, fmt.Errorf("decide approval: step %s of build %s is %s, not waiting for approval: %w", j.Key, row.ID, jobStateWord(j.State), ErrInvalidState)
		}
		now := cmd.GetTimeUnixMs()
		by := cmd.GetBy()
		if cmd.GetTimedOut() {
			if now < ApprovalDeadline(j) {
				return nil, fmt.Errorf("decide approval: step %s of build %s does not time out before %d: %w", j.Key, row.ID, ApprovalDeadline(j), ErrInvalidState)
			}
		} else {
			if by == "" {
				return nil, fmt.Errorf("decide approval: no approver named: %w", ErrInvalidCommand)
			}
			if !mayApprove(a.GetApprovers(), by, cmd.GetByRole()) {
				return nil, fmt.Errorf("%s may not approve %s; approvers: %s: %w", by, j.Key, strings.Join(a.GetApprovers(), ", "), ErrNotPermitted)
			}
		}
		j = cloneJob(j)
		j.Approval = &kilnv1.Approval{Approved: cmd.GetApprove() && !cmd.GetTimedOut(), By: by, Comment: cmd.GetComment(), TimeUnixMs: now}
		j.FinishedUnixMs = now
		switch {
		case cmd.GetTimedOut():
			j.State = jTimedOut
			j.Reason = "approval timed out after " + ApprovalTimeout(j.GetSpec()).String()
		case cmd.GetApprove():
			j.State = jPassed
			j.Reason = "approved by " + by
			if c := cmd.GetComment(); c != "" {
				j.Reason += ": " + c
			}
		default:
			j.State = jFailed
			j.Reason = "rejected by " + by
			if c := cmd.GetComment(); c != "" {
				j.Reason += ": " + c
			}
		}
		w.putJob(j)
		w.advance(row.ID, now)
		w.recordRequest(cmd.GetRequestId(), row.ID)
		return assembleBuild(w.tx, getBuildRow(w.tx, row.ID)), nil
	})
}

// RetryBuild runs failed jobs of a finished build again (see the package
// doc).
func (s *Store) RetryBuild(index uint64, cmd *fsmv1.RetryBuild) (*kilnv1.Build, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Build, error) {
		if b, ok, err := w.seenRequest(cmd.GetRequestId()); ok || err != nil {
			return b, err
		}
		row := getBuildRow(w.tx, cmd.GetBuildId())
		if row == nil {
			return nil, fmt.Errorf("retry build %q: %w", cmd.GetBuildId(), ErrNotFound)
		}
		if st := row.Build.GetState(); !lifecycle.BuildFinished(st) {
			return nil, fmt.Errorf("retry build %s: the build is %s; only a finished build can be retried: %w",
				row.ID, strings.ToLower(strings.TrimPrefix(st.String(), "BUILD_STATE_")), ErrInvalidState)
		}
		if row.Build.GetArtifactsExpired() {
			return nil, fmt.Errorf("retry build %s: its artifacts and uploaded source expired (artifact retention): %w", row.ID, ErrInvalidState)
		}
		jobs := w.buildJobs(row)
		retry := map[string]bool{}
		revive := map[string]bool{}
		if step := cmd.GetStep(); step != "" {
			i := slices.IndexFunc(jobs, func(j *kilnv1.Job) bool { return j.GetKey() == step })
			if i < 0 {
				return nil, fmt.Errorf("retry build %s: no step %q: %w", row.ID, step, ErrNotFound)
			}
			if jobs[i].GetSpec().GetPinAgent() != "" {
				return nil, fmt.Errorf("retry build %s: %s is a host action of a deployment; retry its deploy step: %w", row.ID, step, ErrInvalidState)
			}
			if !lifecycle.JobRetryable(jobs[i].GetState()) {
				return nil, fmt.Errorf("retry build %s: step %s %s; only a failed, timed out, lost or canceled step can be retried: %w",
					row.ID, step, jobStateWord(jobs[i].GetState()), ErrInvalidState)
			}
			retry[step] = true
			// Dependents (transitively) that were skipped because of it
			// run again if their needs allow.
			dependents := map[string][]string{}
			for _, j := range jobs {
				for _, n := range j.GetSpec().GetNeeds() {
					dependents[n] = append(dependents[n], j.GetKey())
				}
			}
			queue := []string{step}
			seen := map[string]bool{step: true}
			for len(queue) > 0 {
				k := queue[0]
				queue = queue[1:]
				for _, d := range dependents[k] {
					if !seen[d] {
						seen[d] = true
						queue = append(queue, d)
					}
				}
			}
			for _, j := range jobs {
				if seen[j.GetKey()] && !retry[j.GetKey()] && j.GetState() == jSkipped && j.GetSpec().GetSkipReason() == "" && j.GetSpec().GetPinAgent() == "" {
					revive[j.GetKey()] = true
				}
			}
		} else {
			for _, j := range jobs {
				switch {
				case j.GetSpec().GetPinAgent() != "":
					// A host action belongs to its (finished) deployment;
					// retrying the deploy step starts a new one.
				case lifecycle.JobRetryable(j.GetState()):
					retry[j.GetKey()] = true
				case j.GetState() == jSkipped && j.GetSpec().GetSkipReason() == "":
					revive[j.GetKey()] = true
				}
			}
		}
		if len(retry) == 0 && len(revive) == 0 {
			return nil, fmt.Errorf("retry build %s: no failed step to retry: %w", row.ID, ErrInvalidState)
		}
		now := cmd.GetTimeUnixMs()
		for _, j := range jobs {
			switch {
			case retry[j.GetKey()]:
				j = cloneJob(j)
				j.Reason = fmt.Sprintf("retry requested (attempt %d next)", j.GetAttempt()+1)
				j.FailureRetries = 0
				j.AgentLostRetries = 0
				j.Approval = nil
				j.BlockedUnixMs = 0
			case revive[j.GetKey()]:
				j = cloneJob(j)
				j.Reason = ""
			default:
				continue
			}
			j.State = jWaiting
			j.Agent = ""
			j.FinishedUnixMs = 0
			w.putJob(j)
		}
		b := proto.Clone(row.Build).(*kilnv1.Build)
		b.State = bQueued
		if b.GetStartedUnixMs() != 0 {
			b.State = bRunning
		}
		b.Reason = ""
		b.FinishedUnixMs = 0
		if g := b.GetConcurrencyGroup(); g != "" {
			b.Held = w.groupActive(g) >= int(max(b.GetConcurrencyLimit(), 1))
			if b.Held {
				b.State = bQueued
			}
		}
		w.putBuild(row, b)
		w.advance(row.ID, now)
		w.recordRequest(cmd.GetRequestId(), row.ID)
		return assembleBuild(w.tx, getBuildRow(w.tx, row.ID)), nil
	})
}

// AddRepo registers a repository or updates its settings; an existing
// repository keeps its last commit and build counter.
func (s *Store) AddRepo(index uint64, cmd *fsmv1.AddRepo) (*kilnv1.Repo, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Repo, error) {
		r := cmd.GetRepo()
		if r.GetName() == "" {
			return nil, fmt.Errorf("add repo: no name: %w", ErrInvalidCommand)
		}
		r = proto.Clone(r).(*kilnv1.Repo)
		if old := getRepo(w.tx, r.GetName()); old != nil {
			r.LastCommit = old.GetLastCommit()
			r.Builds = old.GetBuilds()
		}
		mustInsert(w.tx, tableRepos, r)
		return r, nil
	})
}

// RepoPolled records the commit a repository's branch was last built at.
func (s *Store) RepoPolled(index uint64, cmd *fsmv1.RepoPolled) (*kilnv1.Repo, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Repo, error) {
		r := getRepo(w.tx, cmd.GetName())
		if r == nil {
			return nil, fmt.Errorf("repo polled: repository %q: %w", cmd.GetName(), ErrNotFound)
		}
		r = proto.Clone(r).(*kilnv1.Repo)
		r.LastCommit = cmd.GetCommit()
		mustInsert(w.tx, tableRepos, r)
		return r, nil
	})
}
