package state

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

const (
	jWaiting  = kilnv1.JobState_JOB_STATE_WAITING
	jQueued   = kilnv1.JobState_JOB_STATE_QUEUED
	jAssigned = kilnv1.JobState_JOB_STATE_ASSIGNED
	jRunning  = kilnv1.JobState_JOB_STATE_RUNNING
	jPassed   = kilnv1.JobState_JOB_STATE_PASSED
	jFailed   = kilnv1.JobState_JOB_STATE_FAILED
	jCanceled = kilnv1.JobState_JOB_STATE_CANCELED
	jTimedOut = kilnv1.JobState_JOB_STATE_TIMED_OUT
	jLost     = kilnv1.JobState_JOB_STATE_LOST
	jSkipped  = kilnv1.JobState_JOB_STATE_SKIPPED
	jBlocked  = kilnv1.JobState_JOB_STATE_BLOCKED
	bQueued   = kilnv1.BuildState_BUILD_STATE_QUEUED
	bRunning  = kilnv1.BuildState_BUILD_STATE_RUNNING
	bPassed   = kilnv1.BuildState_BUILD_STATE_PASSED
	bFailed   = kilnv1.BuildState_BUILD_STATE_FAILED
	bCanceled = kilnv1.BuildState_BUILD_STATE_CANCELED
	bBlocked  = kilnv1.BuildState_BUILD_STATE_BLOCKED
)

var keyPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// wtx is one write transaction of a mutation.
type wtx struct {
	tx    *memdb.Txn
	index uint64
}

// write runs fn in one write transaction and records index as the last
// applied index. When fn fails its changes are discarded, but the index is
// still recorded (the command was applied, as a rejection). Inside a Batch
// fn runs in the batch's transaction, and may run again (a replay): fn must
// depend only on the transaction and its command, and set its outputs by
// assigning fresh values, never by changing values a caller already holds.
func (s *Store) write(index uint64, fn func(w *wtx) error) error {
	if s.batch != nil {
		return s.batch.apply(index, fn)
	}
	db := s.db.Load()
	tx := db.Txn(true)
	tx.TrackChanges()
	err := fn(&wtx{tx: tx, index: index})
	if err != nil {
		tx.Abort()
		tx = db.Txn(true)
	}
	s.commit(tx, index, err == nil)
	return err
}

func (w *wtx) job(id string) *kilnv1.Job { return getJob(w.tx, id) }

func (w *wtx) putJob(j *kilnv1.Job) { mustInsert(w.tx, tableJobs, j) }

func cloneJob(j *kilnv1.Job) *kilnv1.Job { return proto.Clone(j).(*kilnv1.Job) }

func (w *wtx) putBuild(row *buildRow, b *kilnv1.Build) {
	mustInsert(w.tx, tableBuilds, &buildRow{ID: row.ID, Build: b, JobIDs: row.JobIDs})
}

func (w *wtx) requeue(j *kilnv1.Job, now int64, reason string) {
	j.State = jQueued
	j.QueueIndex = w.index
	j.QueuedUnixMs = now
	j.Agent = ""
	j.Reason = reason
}

// SubmitBuild creates a build (see the package doc). A request id seen
// before returns the earlier build and changes nothing.
func (s *Store) SubmitBuild(index uint64, cmd *fsmv1.SubmitBuild) (*kilnv1.Build, error) {
	return writeResult(s, index, func(w *wtx) (*kilnv1.Build, error) {
		if b, ok, err := w.seenRequest(cmd.GetRequestId()); ok || err != nil {
			return b, err
		}
		steps := cmd.GetSteps()
		if err := validateSteps(steps); err != nil {
			return nil, fmt.Errorf("submit build: %w", err)
		}
		// Specs in stage order, then step order (the job order).
		specs := make([]*kilnv1.StepSpec, len(steps))
		for i, sp := range steps {
			specs[i] = proto.Clone(sp).(*kilnv1.StepSpec)
		}
		slices.SortStableFunc(specs, func(a, b *kilnv1.StepSpec) int {
			return int(a.GetStage()) - int(b.GetStage())
		})
		deriveStageNeeds(specs)
		if err := validateNeeds(specs); err != nil {
			return nil, fmt.Errorf("submit build: %w", err)
		}
		group := cmd.GetConcurrencyGroup()
		if cmd.GetConcurrencyLimit() < 0 {
			return nil, fmt.Errorf("submit build: concurrency limit %d is negative: %w", cmd.GetConcurrencyLimit(), ErrInvalidCommand)
		}
		if group == "" && cmd.GetConcurrencyLimit() != 0 {
			return nil, fmt.Errorf("submit build: concurrency limit without a group: %w", ErrInvalidCommand)
		}
		if cmd.GetArtifactRetentionMs() < 0 {
			return nil, fmt.Errorf("submit build: artifact retention %dms is negative: %w", cmd.GetArtifactRetentionMs(), ErrInvalidCommand)
		}

		m := *readMeta(w.tx)
		bid := strconv.FormatUint(m.NextBuild, 10)
		m.NextBuild++
		mustInsert(w.tx, tableMeta, &m)

		now := cmd.GetTimeUnixMs()
		event := cmd.GetEvent()
		if event == "" {
			event = "manual"
		}
		b := &kilnv1.Build{
			Id:               bid,
			Name:             cmd.GetName(),
			State:            bQueued,
			Submitter:        cmd.GetSubmitter(),
			CreatedUnixMs:    now,
			Env:              maps.Clone(cmd.GetEnv()),
			RequestId:        cmd.GetRequestId(),
			Event:            event,
			ConcurrencyGroup: group,

			ArtifactRetentionMs: cmd.GetArtifactRetentionMs(),
		}
		if cmd.GetSource() != nil {
			b.Source = proto.Clone(cmd.GetSource()).(*kilnv1.Source)
		}
		if group != "" {
			b.ConcurrencyLimit = max(cmd.GetConcurrencyLimit(), 1)
			b.Held = w.groupActive(group) >= int(b.ConcurrencyLimit)
		}
		if name := b.GetSource().GetRepo(); name != "" {
			r := getRepo(w.tx, name)
			if r == nil {
				return nil, fmt.Errorf("submit build: unknown repository %q: %w", name, ErrInvalidCommand)
			}
			r = proto.Clone(r).(*kilnv1.Repo)
			r.Builds++
			mustInsert(w.tx, tableRepos, r)
			b.RepoBuildNumber = r.Builds
		}
		row := &buildRow{ID: bid, Build: b}
		for _, sp := range specs {
			name := sp.GetName()
			if name == "" {
				name = sp.GetKey()
			}
			j := &kilnv1.Job{
				Id:            bid + "." + sp.GetKey(),
				BuildId:       bid,
				Key:           sp.GetKey(),
				Name:          name,
				Stage:         sp.GetStage(),
				State:         jWaiting,
				CreatedUnixMs: now,
				Spec:          sp,
			}
			if r := sp.GetSkipReason(); r != "" {
				j.State = jSkipped
				j.Reason = r
				j.FinishedUnixMs = now
			}
			w.putJob(j)
			row.JobIDs = append(row.JobIDs, j.Id)
		}
		mustInsert(w.tx, tableBuilds, row)
		w.recordRequest(cmd.GetRequestId(), bid)
		w.advance(bid, now)
		return assembleBuild(w.tx, getBuildRow(w.tx, bid)), nil
	})
}

// seenRequest returns the build recorded for a request id, if any.
func (w *wtx) seenRequest(rid string) (*kilnv1.Build, bool, error) {
	if rid == "" {
		return nil, false, nil
	}
	raw := mustFirst(w.tx, tableRequests, rid)
	if raw == nil {
		return nil, false, nil
	}
	bid := raw.(*fsmv1.RequestRecord).GetBuildId()
	row := getBuildRow(w.tx, bid)
	if row == nil {
		return nil, false, fmt.Errorf("request %q names missing build %q: %w", rid, bid, ErrNotFound)
	}
	return assembleBuild(w.tx, row), true, nil
}

// recordRequest remembers that a request id was applied to a build.
func (w *wtx) recordRequest(rid, buildID string) {
	if rid != "" {
		mustInsert(w.tx, tableRequests, &fsmv1.RequestRecord{RequestId: rid, BuildId: buildID})
	}
}

func validateSteps(steps []*kilnv1.StepSpec) error {
	if len(steps) == 0 {
		return fmt.Errorf("no steps: %w", ErrInvalidCommand)
	}
	seen := make(map[string]bool, len(steps))
	for i, sp := range steps {
		if !keyPattern.MatchString(sp.GetKey()) {
			return fmt.Errorf("step %d: key %q does not match %s: %w", i, sp.GetKey(), keyPattern, ErrInvalidCommand)
		}
		if seen[sp.GetKey()] {
			return fmt.Errorf("step %d: duplicate key %q: %w", i, sp.GetKey(), ErrInvalidCommand)
		}
		seen[sp.GetKey()] = true
		if a := sp.GetApproval(); a != nil {
			if a.GetTimeoutMs() < 0 {
				return fmt.Errorf("step %q: negative approval timeout: %w", sp.GetKey(), ErrInvalidCommand)
			}
			continue // a gate runs no commands
		}
		if sp.GetDeploy() != nil {
			if len(sp.GetCommands()) > 0 || len(sp.GetDeploy().GetCommands()) == 0 || sp.GetDeploy().GetEnvironment() == "" {
				return fmt.Errorf("step %q: a deploy step needs an environment and deploy commands, and has no commands of its own: %w", sp.GetKey(), ErrInvalidCommand)
			}
			switch d := sp.GetDeploy(); {
			case !slices.Contains([]string{"all_at_once", "rolling", "canary", "blue_green"}, d.GetStrategy()):
				return fmt.Errorf("step %q: unknown deploy strategy %q: %w", sp.GetKey(), d.GetStrategy(), ErrInvalidCommand)
			case (d.GetStrategy() == "blue_green") != (d.GetBlueGreen() != nil),
				d.GetBlueGreen() != nil && (len(d.GetBlueGreen().GetBlue()) == 0 || len(d.GetBlueGreen().GetGreen()) == 0):
				return fmt.Errorf("step %q: blue_green settings (both colors' selectors) go with the blue_green strategy only: %w", sp.GetKey(), ErrInvalidCommand)
			case d.GetBatch() < 0 || d.GetBatchPercent() < 0 || d.GetBatchPercent() > 100 || d.GetVerifyMs() < 0:
				return fmt.Errorf("step %q: deploy batch or verify out of range: %w", sp.GetKey(), ErrInvalidCommand)
			}
			continue // its commands run as the deployment's jobs
		}
		if len(sp.GetCommands()) == 0 && sp.GetBuildspec() == "" && sp.GetSkipReason() == "" { // a buildspec step has its commands in the workspace
			return fmt.Errorf("step %q: no commands: %w", sp.GetKey(), ErrInvalidCommand)
		}
		for _, c := range sp.GetCommands() {
			if strings.TrimSpace(c) == "" {
				return fmt.Errorf("step %q: empty command: %w", sp.GetKey(), ErrInvalidCommand)
			}
		}
	}
	return nil
}

// AssignJob gives attempt job.attempt+1 of a QUEUED job to an agent.
func (s *Store) AssignJob(index uint64, cmd *fsmv1.AssignJob) error {
	return s.write(index, func(w *wtx) error {
		if cmd.GetAgent() == "" {
			return fmt.Errorf("assign job %q: no agent: %w", cmd.GetJobId(), ErrInvalidCommand)
		}
		j := w.job(cmd.GetJobId())
		if j == nil {
			return fmt.Errorf("assign job %q: %w", cmd.GetJobId(), ErrNotFound)
		}
		if j.GetState() != jQueued {
			return fmt.Errorf("assign job %q: job is %s: %w", j.Id, j.State, ErrInvalidState)
		}
		if cmd.GetAttempt() != j.GetAttempt()+1 {
			return fmt.Errorf("assign job %q attempt %d: next attempt is %d: %w", j.Id, cmd.GetAttempt(), j.GetAttempt()+1, ErrStaleAttempt)
		}
		j = cloneJob(j)
		j.State = jAssigned
		j.Attempt = cmd.GetAttempt()
		j.Agent = cmd.GetAgent()
		j.LogSeq = 0
		j.LogBytes, j.LogLines, j.LogDigest = 0, 0, nil
		j.ExitCode = 0
		j.Reason = ""
		j.StartedUnixMs = 0
		j.FinishedUnixMs = 0
		w.putJob(j)
		row := getBuildRow(w.tx, j.BuildId)
		if row != nil && (row.Build.GetState() == bQueued || row.Build.GetState() == bBlocked) {
			b := proto.Clone(row.Build).(*kilnv1.Build)
			b.State = bRunning
			if b.StartedUnixMs == 0 {
				b.StartedUnixMs = cmd.GetTimeUnixMs()
			}
			w.putBuild(row, b)
		}
		return nil
	})
}

// StartJob marks an ASSIGNED attempt RUNNING; a repeat is a no-op success.
// The outcome is OutcomeAccepted, or OutcomeStale with ErrStaleAttempt.
func (s *Store) StartJob(index uint64, cmd *fsmv1.StartJob) (AttemptOutcome, error) {
	out := accepted(cmd.GetJobId(), cmd.GetAttempt())
	err := s.write(index, func(w *wtx) error {
		j, f := w.fenced(cmd.GetJobId(), cmd.GetAttempt(), cmd.GetAgent())
		if j == nil {
			out = stale(cmd.GetJobId(), cmd.GetAttempt(), f)
			return staleErr("start job", cmd.GetJobId(), cmd.GetAttempt(), cmd.GetAgent(), f)
		}
		if j.GetState() == jRunning {
			return nil
		}
		j = cloneJob(j)
		j.State = jRunning
		j.StartedUnixMs = cmd.GetTimeUnixMs()
		w.putJob(j)
		return nil
	})
	return out, err
}

// AppendLogs commits the chunks that continue their attempt's log and returns
// one outcome per (job_id, attempt) in the batch, in order of first
// appearance: OutcomeLogCommitted with the committed seq, or OutcomeStale.
func (s *Store) AppendLogs(index uint64, cmd *fsmv1.AppendLogs) []AttemptOutcome {
	type key struct {
		job     string
		attempt uint32
	}
	var outs []AttemptOutcome
	_ = s.write(index, func(w *wtx) error {
		outs = nil // fresh on a replay (see write)
		pos := map[key]int{}
		for _, c := range cmd.GetChunks() {
			k := key{c.GetJobId(), c.GetAttempt()}
			i, ok := pos[k]
			if !ok {
				i = len(outs)
				pos[k] = i
				outs = append(outs, AttemptOutcome{JobID: k.job, Attempt: k.attempt, Outcome: OutcomeLogCommitted})
			}
			j, f := w.fenced(k.job, k.attempt, cmd.GetAgent())
			if j == nil {
				outs[i] = stale(k.job, k.attempt, f)
				continue
			}
			if c.GetSeq() == j.GetLogSeq()+1 {
				j = cloneJob(j)
				j.LogSeq++
				if j.State == jAssigned {
					j.State = jRunning
					j.StartedUnixMs = c.GetTimeUnixMs()
				}
				w.putJob(j)
				mustInsert(w.tx, tableLogs, proto.Clone(c))
			}
			outs[i].LogSeq = j.GetLogSeq()
		}
		return nil
	})
	return outs
}

// FinishJob ends an attempt. The outcome is OutcomeFinished with the
// committed log seq, OutcomeStale with ErrStaleAttempt, OutcomeLogIncomplete
// with the committed log seq and ErrLogsIncomplete, or none (zero) with
// ErrInvalidCommand for a malformed command.
func (s *Store) FinishJob(index uint64, cmd *fsmv1.FinishJob) (AttemptOutcome, error) {
	var out AttemptOutcome
	err := s.write(index, func(w *wtx) error {
		f := cmd.GetFinished()
		if f == nil {
			return fmt.Errorf("finish job: no report: %w", ErrInvalidCommand)
		}
		var st kilnv1.JobState
		switch f.GetResult() {
		case kilnv1.JobResult_JOB_RESULT_PASSED:
			st = jPassed
		case kilnv1.JobResult_JOB_RESULT_FAILED:
			st = jFailed
		case kilnv1.JobResult_JOB_RESULT_TIMED_OUT:
			st = jTimedOut
		case kilnv1.JobResult_JOB_RESULT_CANCELED:
			st = jCanceled
		default:
			return fmt.Errorf("finish job %q: result %s: %w", f.GetJobId(), f.GetResult(), ErrInvalidCommand)
		}
		j, fence := w.fenced(f.GetJobId(), f.GetAttempt(), cmd.GetAgent())
		if j == nil {
			out = stale(f.GetJobId(), f.GetAttempt(), fence)
			return staleErr("finish job", f.GetJobId(), f.GetAttempt(), cmd.GetAgent(), fence)
		}
		if f.GetLastSeq() > j.GetLogSeq() {
			out = AttemptOutcome{JobID: j.Id, Attempt: j.Attempt, Outcome: OutcomeLogIncomplete, LogSeq: j.LogSeq}
			return fmt.Errorf("finish job %q attempt %d: last seq %d, committed %d: %w", j.Id, j.Attempt, f.GetLastSeq(), j.LogSeq, ErrLogsIncomplete)
		}
		now := cmd.GetTimeUnixMs()
		if now == 0 {
			now = f.GetTimeUnixMs()
		}
		j = cloneJob(j)
		j.State = st
		j.ExitCode = f.GetExitCode()
		j.Reason = f.GetReason()
		j.FinishedUnixMs = now
		out = AttemptOutcome{JobID: j.Id, Attempt: j.Attempt, Outcome: OutcomeFinished, LogSeq: j.LogSeq}
		if (st == jFailed || st == jTimedOut) && j.FailureRetries < j.GetSpec().GetRetry().GetOnFailure() {
			j.FailureRetries++
			w.requeue(j, now, fmt.Sprintf("retrying after failure (attempt %d)", j.Attempt+1))
		}
		w.putJob(j)
		w.advance(j.BuildId, now)
		return nil
	})
	return out, err
}

// loseAttempt applies the agent-loss rule to an ASSIGNED or RUNNING job and
// advances its build.
func (w *wtx) loseAttempt(j *kilnv1.Job, reason string, now int64) {
	j = cloneJob(j)
	agent := j.Agent
	if j.AgentLostRetries < j.GetSpec().GetRetry().GetOnAgentLost() {
		j.AgentLostRetries++
		w.requeue(j, now, fmt.Sprintf("agent %s lost; retrying", agent))
	} else {
		if reason == "" {
			reason = fmt.Sprintf("agent %s lost", agent)
		}
		j.State = jLost
		j.Reason = reason
		j.FinishedUnixMs = now
	}
	w.putJob(j)
	w.advance(j.BuildId, now)
}

func jobStateWord(s kilnv1.JobState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "JOB_STATE_")), "_", " ")
}

// CancelOutcome is what CancelBuild did.
type CancelOutcome struct {
	// Build is the build after the command.
	Build *kilnv1.Build
	// Canceled lists the attempts that were ASSIGNED or RUNNING and are now
	// CANCELED; Agents holds their agents, in the same order.
	Canceled []*kilnv1.AttemptRef
	Agents   []string
}

// CancelBuild cancels every unfinished job of a build. A finished build is
// returned unchanged.
func (s *Store) CancelBuild(index uint64, cmd *fsmv1.CancelBuild) (*CancelOutcome, error) {
	var out *CancelOutcome
	err := s.write(index, func(w *wtx) error {
		out = &CancelOutcome{} // fresh on a replay (see write)
		row := getBuildRow(w.tx, cmd.GetBuildId())
		if row == nil {
			return fmt.Errorf("cancel build %q: %w", cmd.GetBuildId(), ErrNotFound)
		}
		if lifecycle.BuildFinished(row.Build.GetState()) {
			out.Build = assembleBuild(w.tx, row)
			return nil
		}
		now := cmd.GetTimeUnixMs()
		reason := cmd.GetReason()
		if reason == "" {
			reason = "build canceled"
		}
		for _, id := range row.JobIDs {
			j := w.job(id)
			if j == nil {
				continue
			}
			switch j.State {
			case jWaiting, jQueued, jBlocked:
				j = cloneJob(j)
				j.State = jSkipped
				j.Reason = "build canceled"
				j.FinishedUnixMs = now
				w.putJob(j)
			case jAssigned, jRunning:
				out.Canceled = append(out.Canceled, &kilnv1.AttemptRef{JobId: j.Id, Attempt: j.Attempt})
				out.Agents = append(out.Agents, j.Agent)
				j = cloneJob(j)
				j.State = jCanceled
				j.Reason = reason
				j.FinishedUnixMs = now
				w.putJob(j)
			}
		}
		b := proto.Clone(row.Build).(*kilnv1.Build)
		b.State = bCanceled
		b.Reason = reason
		b.FinishedUnixMs = now
		b.Held = false
		w.putBuild(row, b)
		w.releaseGroup(b.GetConcurrencyGroup(), now)
		out.Build = assembleBuild(w.tx, getBuildRow(w.tx, row.ID))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func getAgent(tx *memdb.Txn, name string) *kilnv1.Agent {
	if raw := mustFirst(tx, tableAgents, name); raw != nil {
		return raw.(*kilnv1.Agent)
	}
	return nil
}

// RegisterAgent records a new session of an agent (upsert).
func (s *Store) RegisterAgent(index uint64, cmd *fsmv1.RegisterAgent) error {
	return s.write(index, func(w *wtx) error {
		if cmd.GetName() == "" {
			return fmt.Errorf("register agent: no name: %w", ErrInvalidCommand)
		}
		a := &kilnv1.Agent{
			Name:            cmd.GetName(),
			Labels:          maps.Clone(cmd.GetLabels()),
			Slots:           cmd.GetSlots(),
			Version:         cmd.GetVersion(),
			SessionId:       cmd.GetSessionId(),
			State:           kilnv1.AgentState_AGENT_STATE_CONNECTED,
			ConnectedUnixMs: cmd.GetTimeUnixMs(),
		}
		if cmd.GetDraining() {
			a.State = kilnv1.AgentState_AGENT_STATE_DRAINING
		}
		if old := getAgent(w.tx, cmd.GetName()); old != nil {
			a.DisconnectedUnixMs = old.DisconnectedUnixMs
		}
		mustInsert(w.tx, tableAgents, a)
		return nil
	})
}

func agentConnected(s kilnv1.AgentState) bool {
	return s == kilnv1.AgentState_AGENT_STATE_CONNECTED || s == kilnv1.AgentState_AGENT_STATE_DRAINING
}

// DisconnectAgent marks the agent DISCONNECTED if session_id is its current
// session and it is connected; otherwise it changes nothing.
func (s *Store) DisconnectAgent(index uint64, cmd *fsmv1.DisconnectAgent) error {
	return s.write(index, func(w *wtx) error {
		a := getAgent(w.tx, cmd.GetName())
		if a == nil || a.SessionId != cmd.GetSessionId() || !agentConnected(a.State) {
			return nil
		}
		a = proto.Clone(a).(*kilnv1.Agent)
		a.State = kilnv1.AgentState_AGENT_STATE_DISCONNECTED
		a.DisconnectedUnixMs = cmd.GetTimeUnixMs()
		mustInsert(w.tx, tableAgents, a)
		return nil
	})
}

// ExpireAgent marks the agent LOST and loses every attempt it holds, if
// session_id is its current session; otherwise it changes nothing.
func (s *Store) ExpireAgent(index uint64, cmd *fsmv1.ExpireAgent) error {
	return s.write(index, func(w *wtx) error {
		a := getAgent(w.tx, cmd.GetName())
		if a == nil || a.SessionId != cmd.GetSessionId() {
			return nil
		}
		now := cmd.GetTimeUnixMs()
		a = proto.Clone(a).(*kilnv1.Agent)
		if agentConnected(a.State) {
			a.DisconnectedUnixMs = now
		}
		a.State = kilnv1.AgentState_AGENT_STATE_LOST
		mustInsert(w.tx, tableAgents, a)
		for _, j := range collectJobs(mustGet(w.tx, tableJobs, "active", a.Name)) {
			w.loseAttempt(j, cmd.GetReason(), now)
		}
		return nil
	})
}

// LoseAttempts loses each listed attempt that is current and ASSIGNED or
// RUNNING, and ignores the others.
func (s *Store) LoseAttempts(index uint64, cmd *fsmv1.LoseAttempts) error {
	return s.write(index, func(w *wtx) error {
		for _, ref := range cmd.GetAttempts() {
			j := w.job(ref.GetJobId())
			if j == nil || !lifecycle.JobActive(j.State) || j.Attempt != ref.GetAttempt() {
				continue
			}
			w.loseAttempt(j, cmd.GetReason(), cmd.GetTimeUnixMs())
		}
		return nil
	})
}

// SetNode upserts a coordinator node (a voter).
func (s *Store) SetNode(index uint64, cmd *fsmv1.SetNode) error {
	return s.write(index, func(w *wtx) error {
		if cmd.GetId() == "" {
			return fmt.Errorf("set node: no id: %w", ErrInvalidCommand)
		}
		mustInsert(w.tx, tableNodes, &kilnv1.Node{
			Id: cmd.GetId(), GrpcAddr: cmd.GetGrpcAddr(), RaftAddr: cmd.GetRaftAddr(), Voter: true,
		})
		return nil
	})
}

// RemoveNode deletes a coordinator node; an unknown id changes nothing.
func (s *Store) RemoveNode(index uint64, cmd *fsmv1.RemoveNode) error {
	return s.write(index, func(w *wtx) error {
		if raw := mustFirst(w.tx, tableNodes, cmd.GetId()); raw != nil {
			if err := w.tx.Delete(tableNodes, raw); err != nil {
				panic(fmt.Sprintf("state: delete node: %v", err))
			}
		}
		return nil
	})
}

// writeResult runs fn as one write (see write) and returns its result, or
// the zero value and fn's error.
func writeResult[T any](s *Store, index uint64, fn func(w *wtx) (T, error)) (T, error) {
	var out T
	err := s.write(index, func(w *wtx) error {
		var err error
		out, err = fn(w)
		return err
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}
