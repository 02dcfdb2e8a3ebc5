// Package agentsession is the leader's side of one agent session
// (AgentService.Connect), end to end: register the agent, reconcile the
// attempts it says it holds (lost and stale ones), hand the session to the
// scheduler, apply the agent's reports in order (heartbeat and drain, job
// started, log batches, artifacts, test reports, job finished) while
// renewing its lease, acknowledge them, and record the disconnect.
//
// Every report goes through Raft, except log data: a batch of chunks is
// stored on a quorum of coordinators' log stores (coordinator/logrepl)
// and only its position, counts and digest are committed (CommitLogs)
// before the agent's Ack. The fencing rule is the state store's
// (state.CheckAttempt) and the FSM returns one typed state.AttemptOutcome
// per attempt. This package turns outcomes into kilnv1.Ack messages in one
// place (ack). Errors are plain Go errors (ErrInvalidReport, ErrBlobMissing,
// ErrEnded, state and raftnode errors, wrapped); coordinator/api maps them
// to gRPC status codes.
//
// The scheduler keeps dispatch and leases, and the scheduler.Session type:
// the scheduler owns the set of open sessions (it sends assignments and
// cancellations on them, renews and expires their leases and closes them),
// so a session is its handle. This package creates one scheduler.Session
// per stream, attaches it, and is the only sender on the stream.
package agentsession

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/logstore"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Errors that end a session, wrapped with context; test with errors.Is.
var (
	// ErrInvalidReport: the agent sent a message the protocol does not
	// allow (over a limit, malformed, or a second register).
	ErrInvalidReport = errors.New("invalid agent message")
	// ErrBlobMissing: an artifact's blob is held neither by this node nor
	// by any reachable peer; the agent uploads it again and reconnects.
	ErrBlobMissing = errors.New("artifact blob missing")
	// ErrEnded: the scheduler ended the session (lease expired, replaced by
	// a newer session of the agent, or leadership changed).
	ErrEnded = errors.New("session ended by the coordinator (lease expired, replaced, or leadership changed)")
)

// Limits and timings of a session.
const (
	// MaxLogChunkBytes is the largest log chunk an agent may send.
	MaxLogChunkBytes = 1 << 20
	// recvBuffer is how many received messages may wait for processing
	// (allocated whole per session: 1 KiB).
	recvBuffer = 128
	// maxLogBatch is how many log chunks are committed in one command.
	maxLogBatch = 256
	// blobFetchTimeout bounds pulling one reported artifact from a peer.
	blobFetchTimeout = 10 * time.Minute
	// applyGrace bounds commits made on behalf of a session that is
	// closing, and the flush of its last messages.
	applyGrace = 5 * time.Second
)

// Stream is one agent's Connect stream;
// kilnv1.AgentService_ConnectServer implements it.
type Stream interface {
	Context() context.Context
	Send(*kilnv1.ConnectResponse) error
	Recv() (*kilnv1.ConnectRequest, error)
}

// Applier commits FSM commands on the leader; *raftnode.Node implements it.
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
	ApplyAsync(t fsmv1.CommandType, msg proto.Message) (raftnode.Pending, error)
	IsLeader() bool
}

// LogReplicator stores log chunks on a quorum of coordinators;
// *logrepl.Replicator implements it.
type LogReplicator interface {
	Replicate(ctx context.Context, jobID string, attempt uint32, chunks []*kilnv1.LogChunk) (logstore.Totals, error)
}

// BlobChecker tells whether this node holds a blob; blobstore.Backend
// implements it.
type BlobChecker interface {
	Has(sha string) bool
}

// Config is what sessions need from the coordinator.
type Config struct {
	// NodeID is this coordinator's id, announced in Registered.
	NodeID string
	// Store is the replicated state (read for reconciliation and fencing).
	Store *state.Store
	// Raft commits the session's commands.
	Raft Applier
	// Scheduler dispatches to the session and keeps its lease.
	Scheduler *scheduler.Scheduler
	// Logs stores log chunks on a quorum before their commit record.
	Logs LogReplicator
	// Blobs is this node's blob store.
	Blobs BlobChecker
	// FetchBlob copies a blob from a peer into Blobs (nil: no peers).
	FetchBlob func(ctx context.Context, sha string) error
	// Log is the logger (nil discards).
	Log *zap.Logger
	// Now is the clock for command timestamps (nil: time.Now).
	Now func() time.Time
	// MaxLogBytes is the log kept per job attempt (--max-log-bytes),
	// announced to agents in Registered; chunks past it (plus
	// LogMarkerSlack) are clipped. 0: no limit.
	MaxLogBytes int64
}

// Server runs agent sessions. It holds no per-session state; one Server
// serves every stream of the node.
type Server struct {
	cfg Config
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Server{cfg: cfg}
}

// session is one open stream as this package sees it.
type session struct {
	srv *Server
	s   *scheduler.Session
	log *zap.Logger
	// logs clips log chunks past the per-attempt limit.
	logs logCap
	pipe *pipeline
}

// Serve runs one session whose (already validated) register message is
// reg, on a node that leads. It returns when the stream ends (nil for a
// clean close by the agent), the agent breaks the protocol, the scheduler
// ends the session, or a commit fails. Messages queued for the agent when
// the session ends, acks included, are flushed before Serve returns.
func (srv *Server) Serve(stream Stream, reg *kilnv1.Register) error {
	ctx := stream.Context()
	ss, err := srv.open(ctx, reg)
	if err != nil {
		return err
	}

	// The sender is the only goroutine that sends on the stream. It exits
	// when the stream ends, or after flushing once the session is closed
	// (by the scheduler, or by Detach below); Serve waits for it.
	var sendErr error
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		sendErr = sendLoop(ctx, stream, ss.s)
	}()
	// The receiver exits when stopRecv is called while it waits to hand a
	// message over, or when Recv fails, which happens at the latest when
	// Serve has returned and gRPC ends the stream.
	recvCtx, stopRecv := context.WithCancel(ctx)
	recvCh := make(chan *kilnv1.ConnectRequest, recvBuffer)
	recvErr := make(chan error, 1)
	go func() { recvErr <- recvLoop(recvCtx, stream, recvCh) }()

	// The pipeline handles the results of the reports handed to Raft; its
	// acks are queued before the session is detached (and flushed below).
	pipeCtx, stopPipe := context.WithCancel(ctx)
	go ss.pipe.run(pipeCtx)
	err = ss.process(ctx, recvCh, recvErr, sendDone, func() error { return sendErr })
	stopRecv()
	ss.pipe.close()
	grace := time.NewTimer(applyGrace)
	select {
	case <-ss.pipe.done:
	case <-grace.C:
		ss.log.Warn("reports still in flight after the grace period; their outcomes are not acknowledged", zap.String("session", ss.s.ID))
	}
	grace.Stop()
	stopPipe()
	<-ss.pipe.done
	if err == nil || errors.Is(err, io.EOF) {
		// A clean end: a check that failed on the way still ends it with
		// its error.
		select {
		case <-ss.pipe.failed:
			err = ss.pipe.err
		default:
		}
	}
	srv.cfg.Scheduler.Detach(ss.s)
	flush := time.NewTimer(applyGrace)
	select {
	case <-sendDone:
	case <-flush.C:
		ss.log.Warn("agent is not reading; dropping the messages still queued for it", zap.String("session", ss.s.ID))
	}
	flush.Stop()
	srv.disconnect(ss)
	ss.log.Info("agent session closed", zap.String("session", ss.s.ID), zap.Error(err))
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// open registers the agent, reconciles the attempts it holds, answers
// Registered (then a stale Ack per stale attempt) and attaches the session
// to the scheduler.
func (srv *Server) open(ctx context.Context, reg *kilnv1.Register) (*session, error) {
	name := reg.GetName()
	log := srv.cfg.Log.With(zap.String("agent", name))
	id := newID()
	if _, err := srv.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{
		Name: name, Labels: reg.GetLabels(), Slots: reg.GetSlots(), Version: reg.GetVersion(),
		SessionId: id, Draining: reg.GetDraining(), TimeUnixMs: srv.cfg.Now().UnixMilli(),
	}); err != nil {
		return nil, fmt.Errorf("register agent %s: %w", name, err)
	}
	ss := &session{srv: srv, s: scheduler.NewSession(name, id, reg.GetLabels(), int(reg.GetSlots()), reg.GetDraining()), log: log,
		logs: logCap{limit: srv.cfg.MaxLogBytes, bytes: map[logKey]int64{}, committed: srv.committedLogBytes}}
	ss.pipe = newPipeline(ss)

	if lost := lostAttempts(srv.cfg.Store, name, reg.GetRunning()); len(lost) > 0 {
		log.Warn("agent re-registered without attempts it was given; declaring them lost", zap.Int("attempts", len(lost)))
		if _, err := srv.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{
			Attempts: lost, Reason: "agent " + name + " restarted without this attempt", TimeUnixMs: srv.cfg.Now().UnixMilli(),
		}); err != nil {
			return nil, fmt.Errorf("lose attempts of agent %s: %w", name, err)
		}
	}
	sched := srv.cfg.Scheduler.Config()
	if !ss.s.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Registered{Registered: &kilnv1.Registered{
		SessionId:           id,
		NodeId:              srv.cfg.NodeID,
		HeartbeatIntervalMs: sched.HeartbeatInterval.Milliseconds(),
		LeaseTtlMs:          sched.LeaseTTL.Milliseconds(),
		MaxLogBytes:         srv.cfg.MaxLogBytes,
	}}}) {
		return nil, fmt.Errorf("session of agent %s closed before registration: %w", name, ErrEnded)
	}
	// Checked after the losses above are committed: the agent drops (and
	// stops) every attempt it holds that is not current.
	ss.acknowledge(staleAttempts(srv.cfg.Store, name, reg.GetRunning()))
	if err := srv.cfg.Scheduler.Attach(ss.s); err != nil {
		return nil, fmt.Errorf("attach session of agent %s: %w", name, err)
	}
	log.Info("agent session opened", zap.String("session", id), zap.Int32("slots", reg.GetSlots()),
		zap.Int("held_attempts", len(reg.GetRunning())))
	return ss, nil
}

// lostAttempts are the attempts the cluster gave agent (ASSIGNED or
// RUNNING on it) that the agent does not hold: it restarted without them.
func lostAttempts(store *state.Store, agent string, held []*kilnv1.AttemptRef) []*kilnv1.AttemptRef {
	holds := make(map[string]uint32, len(held))
	for _, r := range held {
		holds[r.GetJobId()] = r.GetAttempt()
	}
	var lost []*kilnv1.AttemptRef
	for _, j := range store.AgentJobs(agent) {
		if a, ok := holds[j.GetId()]; !ok || a != j.GetAttempt() {
			lost = append(lost, &kilnv1.AttemptRef{JobId: j.GetId(), Attempt: j.GetAttempt()})
		}
	}
	return lost
}

// staleAttempts are the outcomes of the held attempts that fail the
// fencing rule.
func staleAttempts(store *state.Store, agent string, held []*kilnv1.AttemptRef) []state.AttemptOutcome {
	var out []state.AttemptOutcome
	for _, r := range held {
		if f := store.CheckAttempt(r.GetJobId(), r.GetAttempt(), agent); f != state.FenceCurrent {
			out = append(out, state.AttemptOutcome{JobID: r.GetJobId(), Attempt: r.GetAttempt(), Outcome: state.OutcomeStale, Fence: f})
		}
	}
	return out
}

// disconnect records that the session ended, if this node still leads (a
// new leader gives the agent a lease of its own). The agent's lease keeps
// running: it has until the deadline to come back.
func (srv *Server) disconnect(ss *session) {
	if !srv.cfg.Raft.IsLeader() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), applyGrace)
	defer cancel()
	if _, err := srv.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT, &fsmv1.DisconnectAgent{
		Name: ss.s.Agent, SessionId: ss.s.ID, TimeUnixMs: srv.cfg.Now().UnixMilli(),
	}); err != nil {
		ss.log.Debug("could not commit the disconnect", zap.String("session", ss.s.ID), zap.Error(err))
	}
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sendLoop sends what the session queues until the stream ends; once the
// session is closed it flushes the queue (acks matter) and returns
// ErrEnded.
func sendLoop(ctx context.Context, stream Stream, sess *scheduler.Session) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sess.Done():
			for {
				select {
				case m := <-sess.Out():
					if err := stream.Send(m); err != nil {
						return err
					}
				default:
					return ErrEnded
				}
			}
		case m := <-sess.Out():
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

// recvLoop hands the agent's messages to the processing loop, in order.
func recvLoop(ctx context.Context, stream Stream, out chan<- *kilnv1.ConnectRequest) error {
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

// process applies the agent's reports in order, renewing the lease on each.
// Log chunks that arrive together are committed as one command. sendErr is
// read once sendDone is closed.
func (ss *session) process(ctx context.Context, recvCh <-chan *kilnv1.ConnectRequest, recvErr <-chan error,
	sendDone <-chan struct{}, sendErr func() error) error {
	var carry *kilnv1.ConnectRequest
	for {
		var m *kilnv1.ConnectRequest
		if carry != nil {
			m, carry = carry, nil
		} else {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-ss.s.Done():
				return ErrEnded
			case err := <-recvErr:
				// Apply what was received before the stream ended.
				for {
					select {
					case m := <-recvCh:
						if perr := ss.handle(ctx, m); perr != nil {
							return perr
						}
						continue
					default:
					}
					break
				}
				return err
			case <-sendDone:
				return sendErr()
			case <-ss.pipe.failed:
				return ss.pipe.err
			case m = <-recvCh:
			}
		}
		ss.srv.cfg.Scheduler.Touch(ss.s)
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
			if err := ss.appendLogs(ctx, batch); err != nil {
				return err
			}
			continue
		}
		if err := ss.handle(ctx, m); err != nil {
			return err
		}
	}
}
