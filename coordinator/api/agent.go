package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// AgentServer implements kilnv1.AgentServiceServer: one Connect stream per
// agent session, served by the leader only.
type AgentServer struct {
	kilnv1.UnimplementedAgentServiceServer
	d *Deps
}

// NewAgentServer returns the agent service.
func NewAgentServer(d *Deps) *AgentServer { return &AgentServer{d: d} }

// Limits on one agent message batch.
const (
	// recvBuffer is how many received messages may wait for processing.
	recvBuffer = 1024
	// maxLogBatch is how many log chunks are committed in one command.
	maxLogBatch = 256
	// MaxLogChunkBytes is the largest log chunk an agent may send.
	MaxLogChunkBytes = 1 << 20
)

// Connect runs one agent session: register, reconcile the attempts the
// agent holds, then process its reports while the scheduler feeds it jobs.
func (s *AgentServer) Connect(stream kilnv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return invalid("the first message of a session must be register")
	}
	if err := validateRegister(reg); err != nil {
		return err
	}
	if err := s.d.requireLeader(); err != nil {
		return err
	}
	ctx := stream.Context()
	log := s.d.Log.With(zap.String("agent", reg.GetName()))
	sessionID := newID()
	if _, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{
		Name: reg.GetName(), Labels: reg.GetLabels(), Slots: reg.GetSlots(), Version: reg.GetVersion(),
		SessionId: sessionID, Draining: reg.GetDraining(), TimeUnixMs: s.d.now().UnixMilli(),
	}); err != nil {
		return s.d.toStatus(err)
	}
	sess := scheduler.NewSession(reg.GetName(), sessionID, reg.GetLabels(), int(reg.GetSlots()), reg.GetDraining())

	// Reconcile: attempts the cluster gave this agent that it no longer
	// holds are lost; attempts it holds that are no longer current are stale.
	held := map[string]uint32{}
	for _, r := range reg.GetRunning() {
		held[r.GetJobId()] = r.GetAttempt()
	}
	var lost []*kilnv1.AttemptRef
	for _, j := range s.d.Store.AgentJobs(reg.GetName()) {
		if a, ok := held[j.GetId()]; !ok || a != j.GetAttempt() {
			lost = append(lost, &kilnv1.AttemptRef{JobId: j.GetId(), Attempt: j.GetAttempt()})
		}
	}
	if len(lost) > 0 {
		log.Warn("agent re-registered without attempts it was given; declaring them lost", zap.Int("attempts", len(lost)))
		if _, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{
			Attempts: lost, Reason: "agent " + reg.GetName() + " restarted without this attempt", TimeUnixMs: s.d.now().UnixMilli(),
		}); err != nil {
			return s.d.toStatus(err)
		}
	}
	if !sess.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Registered{Registered: &kilnv1.Registered{
		SessionId:           sessionID,
		NodeId:              s.d.NodeID,
		HeartbeatIntervalMs: s.d.Scheduler.Config().HeartbeatInterval.Milliseconds(),
		LeaseTtlMs:          s.d.Scheduler.Config().LeaseTTL.Milliseconds(),
	}}}) {
		return status.Error(codes.Internal, "session closed before registration")
	}
	for _, r := range reg.GetRunning() {
		j, ok := s.d.Store.Job(r.GetJobId())
		if !ok || j.GetAttempt() != r.GetAttempt() || j.GetAgent() != reg.GetName() || lifecycle.JobFinished(j.GetState()) ||
			j.GetState() == kilnv1.JobState_JOB_STATE_QUEUED {
			sess.Send(ackStale(r.GetJobId(), r.GetAttempt()))
		}
	}
	if err := s.d.Scheduler.Attach(sess); err != nil {
		return s.d.notLeader()
	}
	log.Info("agent session opened", zap.String("session", sessionID), zap.Int32("slots", reg.GetSlots()),
		zap.Int("held_attempts", len(held)))

	sessCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sendErr := make(chan error, 1)
	go func() { sendErr <- s.sendLoop(sessCtx, stream, sess) }()
	recvCh := make(chan *kilnv1.ConnectRequest, recvBuffer)
	recvErr := make(chan error, 1)
	go func() { recvErr <- recvLoop(sessCtx, stream, recvCh) }()

	err = s.process(sessCtx, sess, log, recvCh, recvErr, sendErr)
	cancel()
	s.d.Scheduler.Detach(sess)
	if s.d.Raft.IsLeader() {
		dctx, dcancel := context.WithTimeout(context.Background(), applyGrace)
		_, _ = s.d.Raft.Apply(dctx, fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT, &fsmv1.DisconnectAgent{
			Name: reg.GetName(), SessionId: sessionID, TimeUnixMs: s.d.now().UnixMilli(),
		})
		dcancel()
	}
	log.Info("agent session closed", zap.String("session", sessionID), zap.Error(err))
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

func validateRegister(reg *kilnv1.Register) error {
	switch {
	case reg.GetName() == "" || len(reg.GetName()) > MaxNameBytes:
		return invalid("agent name must be 1..%d bytes", MaxNameBytes)
	case reg.GetSlots() < 1 || reg.GetSlots() > MaxAgentSlots:
		return invalid("agent slots must be 1..%d, got %d", MaxAgentSlots, reg.GetSlots())
	case len(reg.GetLabels()) > MaxLabelEntries:
		return invalid("%d labels; the limit is %d", len(reg.GetLabels()), MaxLabelEntries)
	}
	return nil
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ackStale(jobID string, attempt uint32) *kilnv1.ConnectResponse {
	return &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Ack{Ack: &kilnv1.Ack{JobId: jobID, Attempt: attempt, Stale: true}}}
}

// sendLoop is the only sender on the stream.
func (s *AgentServer) sendLoop(ctx context.Context, stream kilnv1.AgentService_ConnectServer, sess *scheduler.Session) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			// Flush what is queued (acks matter) before giving up.
			for {
				select {
				case m := <-sess.Out():
					if err := stream.Send(m); err != nil {
						return err
					}
				default:
					return status.Error(codes.Unavailable, "session ended by the coordinator (lease expired, replaced, or leadership changed)")
				}
			}
		case m := <-sess.Out():
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

func recvLoop(ctx context.Context, stream kilnv1.AgentService_ConnectServer, out chan<- *kilnv1.ConnectRequest) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// process applies the agent's reports in order. Log chunks that arrive
// together are committed as one command.
func (s *AgentServer) process(ctx context.Context, sess *scheduler.Session, log *zap.Logger,
	recvCh <-chan *kilnv1.ConnectRequest, recvErr, sendErr <-chan error) error {
	var carry *kilnv1.ConnectRequest
	for {
		var m *kilnv1.ConnectRequest
		if carry != nil {
			m, carry = carry, nil
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-sess.Done():
				return status.Error(codes.Unavailable, "session ended by the coordinator")
			case err := <-recvErr:
				// Drain what was received before the stream ended.
				for {
					select {
					case m := <-recvCh:
						if perr := s.handle(ctx, sess, log, m, nil); perr != nil {
							return perr
						}
						continue
					default:
					}
					break
				}
				return err
			case err := <-sendErr:
				return err
			case m = <-recvCh:
			}
		}
		s.d.Scheduler.Touch(sess)
		if m.GetLog() != nil {
			batch := []*kilnv1.LogChunk{m.GetLog()}
		more:
			for len(batch) < maxLogBatch {
				select {
				case n := <-recvCh:
					if n.GetLog() == nil {
						carry = n
						break more
					}
					batch = append(batch, n.GetLog())
				default:
					break more
				}
			}
			if err := s.appendLogs(ctx, sess, batch); err != nil {
				return err
			}
			continue
		}
		if err := s.handle(ctx, sess, log, m, nil); err != nil {
			return err
		}
	}
}

// blobFetchTimeout bounds pulling one reported artifact from a peer.
const blobFetchTimeout = 10 * time.Minute

// applyGrace bounds commits made on behalf of a session that is closing.
const applyGrace = 5 * time.Second

func (s *AgentServer) appendLogs(ctx context.Context, sess *scheduler.Session, batch []*kilnv1.LogChunk) error {
	for _, c := range batch {
		if len(c.GetData()) > MaxLogChunkBytes {
			return invalid("log chunk of %d bytes; the limit is %d", len(c.GetData()), MaxLogChunkBytes)
		}
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_APPEND_LOGS, &fsmv1.AppendLogs{Agent: sess.Agent, Chunks: batch})
	if err != nil {
		return s.d.toStatus(err)
	}
	for _, a := range res.Acks {
		sess.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Ack{Ack: a}})
	}
	return nil
}

func (s *AgentServer) handle(ctx context.Context, sess *scheduler.Session, log *zap.Logger, m *kilnv1.ConnectRequest, _ any) error {
	now := s.d.now().UnixMilli()
	switch msg := m.GetMsg().(type) {
	case *kilnv1.ConnectRequest_Heartbeat:
		if msg.Heartbeat.GetDraining() != sess.Draining() {
			sess.SetDraining(msg.Heartbeat.GetDraining())
			log.Info("agent drain state changed", zap.Bool("draining", sess.Draining()))
			if _, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, s.reregister(sess, now)); err != nil {
				return s.d.toStatus(err)
			}
		}
		return nil
	case *kilnv1.ConnectRequest_Log:
		return s.appendLogs(ctx, sess, []*kilnv1.LogChunk{msg.Log})
	case *kilnv1.ConnectRequest_Started:
		_, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{
			JobId: msg.Started.GetJobId(), Attempt: msg.Started.GetAttempt(), Agent: sess.Agent, TimeUnixMs: now,
		})
		switch {
		case err == nil:
			log.Debug("job started", zap.String("job", msg.Started.GetJobId()), zap.Uint32("attempt", msg.Started.GetAttempt()))
		case errors.Is(err, fsm.ErrStaleAttempt), errors.Is(err, fsm.ErrInvalidState), errors.Is(err, fsm.ErrNotFound):
			sess.Send(ackStale(msg.Started.GetJobId(), msg.Started.GetAttempt()))
		default:
			return s.d.toStatus(err)
		}
		return nil
	case *kilnv1.ConnectRequest_Finished:
		f := msg.Finished
		res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB, &fsmv1.FinishJob{Agent: sess.Agent, Finished: f, TimeUnixMs: now})
		switch {
		case err == nil:
			log.Info("job finished", zap.String("job", f.GetJobId()), zap.Uint32("attempt", f.GetAttempt()),
				zap.String("result", f.GetResult().String()), zap.Int32("exit_code", f.GetExitCode()))
			for _, a := range res.Acks {
				sess.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Ack{Ack: a}})
			}
			s.d.Scheduler.Kick()
		case errors.Is(err, fsm.ErrLogsIncomplete):
			// The agent resends its unacknowledged chunks on the next session.
			return status.Error(codes.FailedPrecondition, fmt.Sprintf("job %s attempt %d finished before its log was complete; reconnect and resend", f.GetJobId(), f.GetAttempt()))
		case errors.Is(err, fsm.ErrStaleAttempt), errors.Is(err, fsm.ErrInvalidState), errors.Is(err, fsm.ErrNotFound):
			sess.Send(ackStale(f.GetJobId(), f.GetAttempt()))
		default:
			return s.d.toStatus(err)
		}
		return nil
	case *kilnv1.ConnectRequest_Artifacts:
		return s.registerArtifacts(ctx, sess, log, msg.Artifacts, now)
	case *kilnv1.ConnectRequest_Tests:
		return s.recordTests(ctx, sess, log, msg.Tests, now)
	case *kilnv1.ConnectRequest_Register:
		return invalid("register may only be sent once per session")
	}
	return invalid("unknown agent message %T", m.GetMsg())
}

func (s *AgentServer) reregister(sess *scheduler.Session, now int64) *fsmv1.RegisterAgent {
	a, _ := s.d.Store.Agent(sess.Agent)
	return &fsmv1.RegisterAgent{
		Name: sess.Agent, Labels: sess.Labels, Slots: int32(sess.Slots), Version: a.GetVersion(),
		SessionId: sess.ID, Draining: sess.Draining(), TimeUnixMs: now,
	}
}

// registerArtifacts commits an ArtifactsUploaded report. Every blob must be
// held by this node: the agent uploads before it reports, and a quorum held
// each upload, so after a leader change the new leader pulls a missing blob
// from its peers first. One that no peer has ends the session with
// FailedPrecondition. A stale attempt gets a stale Ack.
func (s *AgentServer) registerArtifacts(ctx context.Context, sess *scheduler.Session, log *zap.Logger, up *kilnv1.ArtifactsUploaded, now int64) error {
	if n := len(up.GetFiles()); n > state.MaxArtifactsPerAttempt {
		return invalid("%d artifact files in one report; the limit is %d", n, state.MaxArtifactsPerAttempt)
	}
	for _, f := range up.GetFiles() {
		if err := state.ValidArtifactPath(f.GetPath()); err != nil {
			return invalid("artifact: %v", err)
		}
		if !blobstore.ValidDigest(f.GetSha256()) {
			return invalid("artifact %s: sha256 %q is not 64 lower-case hex digits", f.GetPath(), f.GetSha256())
		}
		if !s.d.Blobs.Has(f.GetSha256()) && s.d.FetchBlob != nil {
			fctx, cancel := context.WithTimeout(ctx, blobFetchTimeout)
			if err := s.d.FetchBlob(fctx, f.GetSha256()); err != nil {
				log.Warn("artifact blob not found on any peer", zap.String("sha256", f.GetSha256()), zap.Error(err))
			}
			cancel()
		}
		if !s.d.Blobs.Has(f.GetSha256()) {
			if j, ok := s.d.Store.Job(up.GetJobId()); !ok || j.GetAttempt() != up.GetAttempt() || j.GetAgent() != sess.Agent || !lifecycle.JobActive(j.GetState()) {
				sess.Send(ackStale(up.GetJobId(), up.GetAttempt()))
				return nil
			}
			return status.Errorf(codes.FailedPrecondition, "artifact %s of job %s attempt %d: blob %s is held neither by %s nor by any reachable peer; upload it again, then reconnect and resend",
				f.GetPath(), up.GetJobId(), up.GetAttempt(), f.GetSha256(), s.d.NodeID)
		}
	}
	_, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS, &fsmv1.RegisterArtifacts{Agent: sess.Agent, Uploaded: up, TimeUnixMs: now})
	switch {
	case err == nil:
		log.Debug("artifacts registered", zap.String("job", up.GetJobId()), zap.Uint32("attempt", up.GetAttempt()), zap.Int("files", len(up.GetFiles())))
	case errors.Is(err, fsm.ErrStaleAttempt):
		sess.Send(ackStale(up.GetJobId(), up.GetAttempt()))
	default:
		return s.d.toStatus(err)
	}
	return nil
}
