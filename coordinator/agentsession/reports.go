package agentsession

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ack is the Ack the agent gets for an outcome, or nil when there is
// nothing to acknowledge. It is the only place outcomes become Acks.
func ack(o state.AttemptOutcome) *kilnv1.Ack {
	a := &kilnv1.Ack{JobId: o.JobID, Attempt: o.Attempt}
	switch o.Outcome {
	case state.OutcomeLogCommitted, state.OutcomeLogIncomplete:
		// An incomplete finish acknowledges the chunks the cluster holds:
		// the agent keeps (and resends) the ones after LogSeq.
		a.LogSeq = o.LogSeq
	case state.OutcomeFinished:
		a.LogSeq = o.LogSeq
		a.Finished = true
	case state.OutcomeStale:
		a.Stale = true
	default: // OutcomeAccepted, none: resent until the finish is acknowledged
		return nil
	}
	return a
}

// acknowledge queues the Acks of outcomes for the agent.
func (ss *session) acknowledge(outs []state.AttemptOutcome) {
	for _, o := range outs {
		if o.Outcome == state.OutcomeStale {
			ss.log.Info("report for a stale attempt; telling the agent to drop it",
				zap.String("job", o.JobID), zap.Uint32("attempt", o.Attempt), zap.Stringer("fence", o.Fence))
		}
		if a := ack(o); a != nil {
			ss.s.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Ack{Ack: a}})
		}
	}
}

// commit applies a report's command and acknowledges its outcomes, which a
// rejection (stale, log incomplete) has too. The error is the commit's.
// It first waits for the reports in flight (see submit), so the agent gets
// its acks in the order of its reports.
func (ss *session) commit(ctx context.Context, t fsmv1.CommandType, cmd proto.Message) (*fsm.Result, error) {
	if err := ss.pipe.drain(ctx); err != nil {
		return nil, err
	}
	res, err := ss.srv.cfg.Raft.Apply(ctx, t, cmd)
	if res != nil {
		ss.acknowledge(res.Outcomes)
	}
	return res, err
}

// submit hands a report's command to Raft without waiting for its commit,
// so the reports of a busy agent share Raft appends and FSM batches instead
// of waiting for one commit each. The pipeline acknowledges its outcomes
// in order, then calls then with the result; an error from then ends the
// session. Raft applies the commands in the order they were handed over,
// which is the order of the agent's reports.
func (ss *session) submit(ctx context.Context, t fsmv1.CommandType, cmd proto.Message, then func(*fsm.Result, error) error) error {
	p, err := ss.srv.cfg.Raft.ApplyAsync(t, cmd)
	if err != nil {
		return fmt.Errorf("hand %s to raft: %w", t, err)
	}
	return ss.pipe.push(ctx, inflight{p: p, then: then})
}

// handle applies one message other than a log chunk batch.
func (ss *session) handle(ctx context.Context, m *kilnv1.ConnectRequest) error {
	now := ss.srv.cfg.Now().UnixMilli()
	switch msg := m.GetMsg().(type) {
	case *kilnv1.ConnectRequest_Heartbeat:
		return ss.heartbeat(ctx, msg.Heartbeat, now)
	case *kilnv1.ConnectRequest_Log:
		return ss.appendLogs(ctx, []*kilnv1.LogChunk{msg.Log})
	case *kilnv1.ConnectRequest_Started:
		return ss.started(ctx, msg.Started, now)
	case *kilnv1.ConnectRequest_Finished:
		return ss.finished(ctx, msg.Finished, now)
	case *kilnv1.ConnectRequest_Artifacts:
		return ss.artifacts(ctx, msg.Artifacts, now)
	case *kilnv1.ConnectRequest_Tests:
		return ss.tests(ctx, msg.Tests, now)
	case *kilnv1.ConnectRequest_Register:
		return fmt.Errorf("register may only be sent once per session: %w", ErrInvalidReport)
	}
	return fmt.Errorf("unknown agent message %T: %w", m.GetMsg(), ErrInvalidReport)
}

// heartbeat records a change of the agent's drain state (the lease was
// renewed by process).
func (ss *session) heartbeat(ctx context.Context, hb *kilnv1.Heartbeat, now int64) error {
	if hb.GetDraining() == ss.s.Draining() {
		return nil
	}
	ss.s.SetDraining(hb.GetDraining())
	ss.log.Info("agent drain state changed", zap.Bool("draining", ss.s.Draining()))
	a, _ := ss.srv.cfg.Store.Agent(ss.s.Agent)
	if _, err := ss.srv.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{
		Name: ss.s.Agent, Labels: ss.s.Labels, Slots: int32(ss.s.Slots), Version: a.GetVersion(),
		SessionId: ss.s.ID, Draining: ss.s.Draining(), TimeUnixMs: now,
	}); err != nil {
		return fmt.Errorf("record drain state of agent %s: %w", ss.s.Agent, err)
	}
	return nil
}

// appendLogs stores a batch of log chunks on a quorum of coordinators'
// log stores, one attempt at a time in order of first appearance, then
// commits their positions as one CommitLogs command and acknowledges. An
// attempt that is not current is answered stale without storing anything;
// the FSM fences the commit again, so one that becomes stale meanwhile is
// stale too. Chunks of an attempt the batch lists out of seq order stop at
// the first one that does not follow (the agent resends after its Ack).
func (ss *session) appendLogs(ctx context.Context, batch []*kilnv1.LogChunk) error {
	for _, c := range batch {
		if len(c.GetData()) > MaxLogChunkBytes {
			return fmt.Errorf("log chunk of %d bytes; the limit is %d: %w", len(c.GetData()), MaxLogChunkBytes, ErrInvalidReport)
		}
		if c.GetJobId() == "" || c.GetAttempt() == 0 || c.GetSeq() == 0 {
			return fmt.Errorf("log chunk without job id, attempt or seq: %w", ErrInvalidReport)
		}
	}
	batch, dropped := ss.logs.clip(batch)
	if dropped > 0 {
		ss.log.Warn("log past --max-log-bytes clipped (the agent should have cut it)", zap.Int64("dropped_bytes", dropped),
			zap.Int64("max_log_bytes", ss.logs.limit))
	}
	type key struct {
		job     string
		attempt uint32
	}
	var order []key
	groups := map[key][]*kilnv1.LogChunk{}
	for _, c := range batch {
		k := key{c.GetJobId(), c.GetAttempt()}
		g, ok := groups[k]
		if !ok {
			order = append(order, k)
		}
		if len(g) > 0 && c.GetSeq() != g[len(g)-1].GetSeq()+1 {
			if c.GetSeq() <= g[len(g)-1].GetSeq() {
				continue // a duplicate within the batch
			}
			groups[k] = g // a gap: keep what precedes it
			continue
		}
		groups[k] = append(g, c)
	}
	// The committed seq read below may lag a CommitLogs of this session
	// still in flight: the resend is then stored again (appends of a seq
	// already held are idempotent) and committed again (forward only).
	cfg := ss.srv.cfg
	cmd := &fsmv1.CommitLogs{Agent: ss.s.Agent, TimeUnixMs: cfg.Now().UnixMilli()}
	var stales []state.AttemptOutcome
	for _, k := range order {
		if fence := cfg.Store.CheckAttempt(k.job, k.attempt, ss.s.Agent); fence != state.FenceCurrent {
			stales = append(stales, state.AttemptOutcome{JobID: k.job, Attempt: k.attempt, Outcome: state.OutcomeStale, Fence: fence})
			continue
		}
		g := groups[k]
		if j, ok := cfg.Store.Job(k.job); ok && j.GetAttempt() == k.attempt && g[len(g)-1].GetSeq() <= j.GetLogSeq() {
			// Every chunk is committed already (a resend after a lost Ack).
			stales = append(stales, state.AttemptOutcome{JobID: k.job, Attempt: k.attempt, Outcome: state.OutcomeLogCommitted, LogSeq: j.GetLogSeq()})
			continue
		}
		tot, err := cfg.Logs.Replicate(ctx, k.job, k.attempt, g)
		if err != nil {
			return fmt.Errorf("store %d log chunks of job %s attempt %d: %w", len(g), k.job, k.attempt, err)
		}
		cmd.Commits = append(cmd.Commits, &fsmv1.LogCommit{JobId: k.job, Attempt: k.attempt, Seq: tot.Seq, Bytes: tot.Bytes,
			Lines: tot.Lines, Digest: tot.Digest[:], FirstChunkUnixMs: g[0].GetTimeUnixMs()})
	}
	ss.acknowledge(stales)
	if len(cmd.Commits) == 0 {
		return nil
	}
	n := len(cmd.Commits)
	return ss.submit(ctx, fsmv1.CommandType_COMMAND_TYPE_COMMIT_LOGS, cmd, func(_ *fsm.Result, err error) error {
		if err != nil {
			return fmt.Errorf("commit the log positions of %d attempts: %w", n, err)
		}
		return nil
	})
}

// started commits JobStarted; a stale attempt gets a stale Ack.
func (ss *session) started(ctx context.Context, st *kilnv1.JobStarted, now int64) error {
	return ss.submit(ctx, fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{
		JobId: st.GetJobId(), Attempt: st.GetAttempt(), Agent: ss.s.Agent, TimeUnixMs: now,
	}, func(_ *fsm.Result, err error) error {
		switch {
		case err == nil:
			ss.log.Debug("job started", zap.String("job", st.GetJobId()), zap.Uint32("attempt", st.GetAttempt()))
		case !errors.Is(err, fsm.ErrStaleAttempt):
			return fmt.Errorf("start job %s attempt %d: %w", st.GetJobId(), st.GetAttempt(), err)
		}
		return nil
	})
}

// finished commits JobFinished. A stale attempt gets a stale Ack. A finish
// ahead of the committed log gets an Ack with the committed seq and ends
// the session: the agent resends its unacknowledged chunks, then the
// finish, on the next one.
func (ss *session) finished(ctx context.Context, f *kilnv1.JobFinished, now int64) error {
	return ss.submit(ctx, fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB, &fsmv1.FinishJob{Agent: ss.s.Agent, Finished: f, TimeUnixMs: now},
		func(res *fsm.Result, err error) error { return ss.finishedDone(f, res, err) })
}

// finishedDone handles the outcome of a JobFinished commit.
func (ss *session) finishedDone(f *kilnv1.JobFinished, res *fsm.Result, err error) error {
	switch {
	case err == nil:
		ss.log.Info("job finished", zap.String("job", f.GetJobId()), zap.Uint32("attempt", f.GetAttempt()),
			zap.String("result", f.GetResult().String()), zap.Int32("exit_code", f.GetExitCode()))
		ss.srv.cfg.Scheduler.Kick()
	case errors.Is(err, fsm.ErrLogsIncomplete):
		var committed uint64
		if res != nil && len(res.Outcomes) == 1 {
			committed = res.Outcomes[0].LogSeq
		}
		return fmt.Errorf("job %s attempt %d finished with last seq %d but its log is committed up to seq %d; reconnect and resend: %w",
			f.GetJobId(), f.GetAttempt(), f.GetLastSeq(), committed, fsm.ErrLogsIncomplete)
	case !errors.Is(err, fsm.ErrStaleAttempt):
		return fmt.Errorf("finish job %s attempt %d: %w", f.GetJobId(), f.GetAttempt(), err)
	}
	return nil
}

// artifacts commits an ArtifactsUploaded report. Every blob must be held
// by this node: the agent uploads before it reports, and a quorum held
// each upload, so after a leader change the new leader pulls a missing
// blob from its peers first. One that no peer has ends the session with
// ErrBlobMissing. A stale attempt (checked first when a blob is missing)
// gets a stale Ack.
func (ss *session) artifacts(ctx context.Context, up *kilnv1.ArtifactsUploaded, now int64) error {
	if n := len(up.GetFiles()); n > state.MaxArtifactsPerAttempt {
		return fmt.Errorf("%d artifact files in one report; the limit is %d: %w", n, state.MaxArtifactsPerAttempt, ErrInvalidReport)
	}
	cfg := ss.srv.cfg
	for _, f := range up.GetFiles() {
		if err := state.ValidArtifactPath(f.GetPath()); err != nil {
			return fmt.Errorf("artifact: %w: %w", err, ErrInvalidReport)
		}
		if !blobstore.ValidDigest(f.GetSha256()) {
			return fmt.Errorf("artifact %s: sha256 %q is not 64 lower-case hex digits: %w", f.GetPath(), f.GetSha256(), ErrInvalidReport)
		}
		if !cfg.Blobs.Has(f.GetSha256()) && cfg.FetchBlob != nil {
			fctx, cancel := context.WithTimeout(ctx, blobFetchTimeout)
			if err := cfg.FetchBlob(fctx, f.GetSha256()); err != nil {
				ss.log.Warn("artifact blob not found on any peer", zap.String("job", up.GetJobId()), zap.Uint32("attempt", up.GetAttempt()),
					zap.String("sha256", f.GetSha256()), zap.Error(err))
			}
			cancel()
		}
		if !cfg.Blobs.Has(f.GetSha256()) {
			// The fence must see the reports sent before this one.
			if err := ss.pipe.drain(ctx); err != nil {
				return err
			}
			if fence := cfg.Store.CheckAttempt(up.GetJobId(), up.GetAttempt(), ss.s.Agent); fence != state.FenceCurrent {
				ss.acknowledge([]state.AttemptOutcome{{JobID: up.GetJobId(), Attempt: up.GetAttempt(), Outcome: state.OutcomeStale, Fence: fence}})
				return nil
			}
			return fmt.Errorf("artifact %s of job %s attempt %d: blob %s is held neither by %s nor by any reachable peer; upload it again, then reconnect and resend: %w",
				f.GetPath(), up.GetJobId(), up.GetAttempt(), f.GetSha256(), cfg.NodeID, ErrBlobMissing)
		}
	}
	_, err := ss.commit(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS, &fsmv1.RegisterArtifacts{Agent: ss.s.Agent, Uploaded: up, TimeUnixMs: now})
	switch {
	case err == nil:
		ss.log.Debug("artifacts registered", zap.String("job", up.GetJobId()), zap.Uint32("attempt", up.GetAttempt()), zap.Int("files", len(up.GetFiles())))
	case !errors.Is(err, fsm.ErrStaleAttempt):
		return fmt.Errorf("register artifacts of job %s attempt %d: %w", up.GetJobId(), up.GetAttempt(), err)
	}
	return nil
}

// tests commits a TestReports message, fenced like artifacts: a stale
// attempt gets a stale Ack. Reports never change a job's result.
func (ss *session) tests(ctx context.Context, tr *kilnv1.TestReports, now int64) error {
	if n := len(tr.GetReports()); n > state.MaxTestReportsPerAttempt {
		return fmt.Errorf("%d test reports in one message; the limit is %d: %w", n, state.MaxTestReportsPerAttempt, ErrInvalidReport)
	}
	cases := 0
	for _, r := range tr.GetReports() {
		if err := state.ValidArtifactPath(r.GetFile()); err != nil {
			return fmt.Errorf("test report: %w: %w", err, ErrInvalidReport)
		}
		cases += len(r.GetCases())
	}
	if cases > state.MaxTestCasesPerAttempt {
		return fmt.Errorf("%d test cases in one message; the limit is %d: %w", cases, state.MaxTestCasesPerAttempt, ErrInvalidReport)
	}
	return ss.submit(ctx, fsmv1.CommandType_COMMAND_TYPE_RECORD_TESTS, &fsmv1.RecordTests{Agent: ss.s.Agent, Reports: tr, TimeUnixMs: now},
		func(_ *fsm.Result, err error) error {
			switch {
			case err == nil:
				ss.log.Debug("test reports recorded", zap.String("job", tr.GetJobId()), zap.Uint32("attempt", tr.GetAttempt()), zap.Int("reports", len(tr.GetReports())))
			case !errors.Is(err, fsm.ErrStaleAttempt):
				return fmt.Errorf("record tests of job %s attempt %d: %w", tr.GetJobId(), tr.GetAttempt(), err)
			}
			return nil
		})
}
