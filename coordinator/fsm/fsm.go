// Package fsm is the coordinator's raft.FSM. Every Raft log entry is one
// fsmv1.CommandType byte followed by the protobuf encoding of the matching
// fsmv1 message (see Encode). Apply decodes the command and calls the
// matching coordinator/state mutation in one memdb transaction; the
// semantics of each command are documented in package state.
//
// Apply is deterministic: it never reads the clock (timestamps travel in the
// commands), uses no randomness and does no I/O outside the store. It uses
// raft.Log.Index for queue_index and the store's LastIndex. Business
// rejections are returned as Result.Err, never as a panic; an unknown command
// type byte or an undecodable payload panics after logging, because a
// replica must stop rather than diverge from its peers.
//
// Snapshots are a stream of length-delimited fsmv1.SnapshotRecord messages,
// the SnapshotMeta first (written with protodelim). Restore replaces the
// whole store atomically.
package fsm

import (
	"bufio"
	"fmt"
	"io"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Business errors of Result.Err, wrapped with context; test with errors.Is.
// They are the same values as the state package's errors.
var (
	// ErrNotFound: the named build or job does not exist.
	ErrNotFound = state.ErrNotFound
	// ErrStaleAttempt: the report is for an attempt that is not current.
	ErrStaleAttempt = state.ErrStaleAttempt
	// ErrInvalidState: the job's state does not allow the command.
	ErrInvalidState = state.ErrInvalidState
	// ErrLogsIncomplete: a finish report is ahead of the committed log.
	ErrLogsIncomplete = state.ErrLogsIncomplete
	// ErrInvalidCommand: the command is malformed.
	ErrInvalidCommand = state.ErrInvalidCommand
	// ErrNotPermitted: the command's author may not do it.
	ErrNotPermitted = state.ErrNotPermitted
)

// maxRecordSize bounds one snapshot record on restore.
const maxRecordSize = 256 << 20

// Result is the response of Apply for every known command (never nil).
type Result struct {
	// Err is a business rejection (one of the errors above, wrapped); nil
	// on success.
	Err error
	// Build is the build after SubmitBuild, CancelBuild, DecideApproval or
	// RetryBuild (for a repeated request id: the build as it is, with Err
	// nil).
	Build *kilnv1.Build
	// Repo is the repository after AddRepo or RepoPolled.
	Repo *kilnv1.Repo
	// Outcomes are what the agent reports did, for the leader to
	// acknowledge: AppendLogs gives one per (job_id, attempt) in the batch,
	// CommitLogs one per commit;
	// StartJob, FinishJob, RegisterArtifacts and RecordTests give one,
	// except for a malformed command (see state.AttemptOutcome).
	Outcomes []state.AttemptOutcome
	// Canceled lists the attempts CancelBuild canceled while ASSIGNED or
	// RUNNING; the leader tells their agents.
	Canceled []*kilnv1.AttemptRef
	// Agents are the agents of Canceled, in the same order.
	Agents []string
	// Expired lists the builds whose artifacts ExpireArtifacts expired, or
	// the builds ExpireBuilds deleted.
	Expired []string
	// Token is the token after CreateToken, RevokeToken or RedeemToken.
	Token *kilnv1.Token
	// Deployment is the record after StartDeployment or UpdateDeployment.
	Deployment *kilnv1.Deployment
}

// FSM applies committed commands to a state.Store. It implements raft.FSM.
type FSM struct {
	store *state.Store
	log   *zap.Logger
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an FSM over store; a nil log discards.
func New(store *state.Store, log *zap.Logger) *FSM {
	if log == nil {
		log = zap.NewNop()
	}
	return &FSM{store: store, log: log}
}

// Store returns the store the FSM applies to.
func (f *FSM) Store() *state.Store { return f.store }

var commandMessages = map[fsmv1.CommandType]func() proto.Message{
	fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD:       func() proto.Message { return &fsmv1.SubmitBuild{} },
	fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB:         func() proto.Message { return &fsmv1.AssignJob{} },
	fsmv1.CommandType_COMMAND_TYPE_START_JOB:          func() proto.Message { return &fsmv1.StartJob{} },
	fsmv1.CommandType_COMMAND_TYPE_APPEND_LOGS:        func() proto.Message { return &fsmv1.AppendLogs{} },
	fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB:         func() proto.Message { return &fsmv1.FinishJob{} },
	fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD:       func() proto.Message { return &fsmv1.CancelBuild{} },
	fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT:     func() proto.Message { return &fsmv1.RegisterAgent{} },
	fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT:   func() proto.Message { return &fsmv1.DisconnectAgent{} },
	fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT:       func() proto.Message { return &fsmv1.ExpireAgent{} },
	fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS:      func() proto.Message { return &fsmv1.LoseAttempts{} },
	fsmv1.CommandType_COMMAND_TYPE_SET_NODE:           func() proto.Message { return &fsmv1.SetNode{} },
	fsmv1.CommandType_COMMAND_TYPE_REMOVE_NODE:        func() proto.Message { return &fsmv1.RemoveNode{} },
	fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL:    func() proto.Message { return &fsmv1.DecideApproval{} },
	fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD:        func() proto.Message { return &fsmv1.RetryBuild{} },
	fsmv1.CommandType_COMMAND_TYPE_ADD_REPO:           func() proto.Message { return &fsmv1.AddRepo{} },
	fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED:        func() proto.Message { return &fsmv1.RepoPolled{} },
	fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS: func() proto.Message { return &fsmv1.RegisterArtifacts{} },
	fsmv1.CommandType_COMMAND_TYPE_EXPIRE_ARTIFACTS:   func() proto.Message { return &fsmv1.ExpireArtifacts{} },
	fsmv1.CommandType_COMMAND_TYPE_RECORD_TESTS:       func() proto.Message { return &fsmv1.RecordTests{} },
	fsmv1.CommandType_COMMAND_TYPE_COMMIT_LOGS:        func() proto.Message { return &fsmv1.CommitLogs{} },
	fsmv1.CommandType_COMMAND_TYPE_EXPIRE_BUILDS:      func() proto.Message { return &fsmv1.ExpireBuilds{} },
	fsmv1.CommandType_COMMAND_TYPE_CREATE_TOKEN:       func() proto.Message { return &fsmv1.CreateToken{} },
	fsmv1.CommandType_COMMAND_TYPE_REVOKE_TOKEN:       func() proto.Message { return &fsmv1.RevokeToken{} },
	fsmv1.CommandType_COMMAND_TYPE_REDEEM_TOKEN:       func() proto.Message { return &fsmv1.RedeemToken{} },
	fsmv1.CommandType_COMMAND_TYPE_SET_SECRET:         func() proto.Message { return &fsmv1.SetSecret{} },
	fsmv1.CommandType_COMMAND_TYPE_DELETE_SECRET:      func() proto.Message { return &fsmv1.DeleteSecret{} },
	fsmv1.CommandType_COMMAND_TYPE_APPEND_AUDIT:       func() proto.Message { return &fsmv1.AppendAudit{} },
	fsmv1.CommandType_COMMAND_TYPE_START_DEPLOYMENT:   func() proto.Message { return &fsmv1.StartDeployment{} },
	fsmv1.CommandType_COMMAND_TYPE_UPDATE_DEPLOYMENT:  func() proto.Message { return &fsmv1.UpdateDeployment{} },
}

// Encode returns a log entry: the type byte followed by msg's protobuf
// encoding. msg must be the message type of t.
func Encode(t fsmv1.CommandType, msg proto.Message) ([]byte, error) {
	newMsg, ok := commandMessages[t]
	if !ok || t > 255 {
		return nil, fmt.Errorf("encode command: unknown type %d: %w", t, ErrInvalidCommand)
	}
	if msg == nil {
		return nil, fmt.Errorf("encode %s: nil message: %w", t, ErrInvalidCommand)
	}
	if want, got := newMsg().ProtoReflect().Descriptor().FullName(), msg.ProtoReflect().Descriptor().FullName(); want != got {
		return nil, fmt.Errorf("encode %s: message is %s, want %s: %w", t, got, want, ErrInvalidCommand)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend([]byte{byte(t)}, msg)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", t, err)
	}
	return b, nil
}

// Decode splits a log entry into its type and message. It fails on an empty
// entry, an unknown type or an undecodable payload.
func Decode(data []byte) (fsmv1.CommandType, proto.Message, error) {
	if len(data) == 0 {
		return 0, nil, fmt.Errorf("decode command: empty entry")
	}
	t := fsmv1.CommandType(data[0])
	newMsg, ok := commandMessages[t]
	if !ok {
		return t, nil, fmt.Errorf("decode command: unknown type %d", data[0])
	}
	msg := newMsg()
	if err := proto.Unmarshal(data[1:], msg); err != nil {
		return t, nil, fmt.Errorf("decode %s: %w", t, err)
	}
	return t, msg, nil
}

// Apply applies one committed log entry and returns its *Result. It panics
// on an entry it cannot decode.
func (f *FSM) Apply(l *raft.Log) interface{} {
	_, msg, err := Decode(l.Data)
	if err != nil {
		f.log.Error("cannot apply raft log entry; stopping to avoid diverging",
			zap.Uint64("index", l.Index), zap.Uint64("term", l.Term), zap.Error(err))
		panic(fmt.Sprintf("fsm: log entry %d: %v", l.Index, err))
	}
	res := f.apply(l.Index, msg)
	if res.Err != nil {
		f.log.Debug("command rejected", zap.Uint64("index", l.Index), zap.Error(res.Err))
	}
	return res
}

// ApplyBatch applies the committed entries raft hands over together in one
// state-store transaction (state.Store.Batch): one commit, one wake-up of
// the readers, instead of one per entry. Each command still gets its own
// *Result, the same it would get applied alone, and a rejected command
// changes nothing, as alone. Entries other than commands (configuration
// changes, which a BatchingFSM is also given) are not the store's: their
// result is nil. It panics on a command it cannot decode, before applying
// any of the batch.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	msgs := make([]proto.Message, len(logs))
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			continue
		}
		_, msg, err := Decode(l.Data)
		if err != nil {
			f.log.Error("cannot apply raft log entry; stopping to avoid diverging",
				zap.Uint64("index", l.Index), zap.Uint64("term", l.Term), zap.Error(err))
			panic(fmt.Sprintf("fsm: log entry %d: %v", l.Index, err))
		}
		msgs[i] = msg
	}
	out := make([]interface{}, len(logs))
	f.store.Batch(func() {
		for i, l := range logs {
			if msgs[i] == nil {
				continue
			}
			res := f.apply(l.Index, msgs[i])
			if res.Err != nil {
				f.log.Debug("command rejected", zap.Uint64("index", l.Index), zap.Error(res.Err))
			}
			out[i] = res
		}
	})
	return out
}

func (f *FSM) apply(idx uint64, msg proto.Message) *Result {
	s := f.store
	switch c := msg.(type) {
	case *fsmv1.SubmitBuild:
		b, err := s.SubmitBuild(idx, c)
		return &Result{Build: b, Err: err}
	case *fsmv1.AssignJob:
		return &Result{Err: s.AssignJob(idx, c)}
	case *fsmv1.StartJob:
		return outcome(s.StartJob(idx, c))
	case *fsmv1.AppendLogs:
		return &Result{Outcomes: s.AppendLogs(idx, c)}
	case *fsmv1.CommitLogs:
		return &Result{Outcomes: s.CommitLogs(idx, c)}
	case *fsmv1.FinishJob:
		return outcome(s.FinishJob(idx, c))
	case *fsmv1.CancelBuild:
		out, err := s.CancelBuild(idx, c)
		if err != nil {
			return &Result{Err: err}
		}
		return &Result{Build: out.Build, Canceled: out.Canceled, Agents: out.Agents}
	case *fsmv1.RegisterAgent:
		return &Result{Err: s.RegisterAgent(idx, c)}
	case *fsmv1.DisconnectAgent:
		return &Result{Err: s.DisconnectAgent(idx, c)}
	case *fsmv1.ExpireAgent:
		return &Result{Err: s.ExpireAgent(idx, c)}
	case *fsmv1.LoseAttempts:
		return &Result{Err: s.LoseAttempts(idx, c)}
	case *fsmv1.SetNode:
		return &Result{Err: s.SetNode(idx, c)}
	case *fsmv1.RemoveNode:
		return &Result{Err: s.RemoveNode(idx, c)}
	case *fsmv1.DecideApproval:
		b, err := s.DecideApproval(idx, c)
		return &Result{Build: b, Err: err}
	case *fsmv1.RetryBuild:
		b, err := s.RetryBuild(idx, c)
		return &Result{Build: b, Err: err}
	case *fsmv1.AddRepo:
		r, err := s.AddRepo(idx, c)
		return &Result{Repo: r, Err: err}
	case *fsmv1.RepoPolled:
		r, err := s.RepoPolled(idx, c)
		return &Result{Repo: r, Err: err}
	case *fsmv1.RegisterArtifacts:
		return outcome(s.RegisterArtifacts(idx, c))
	case *fsmv1.RecordTests:
		return outcome(s.RecordTests(idx, c))
	case *fsmv1.ExpireArtifacts:
		ids, err := s.ExpireArtifacts(idx, c)
		return &Result{Expired: ids, Err: err}
	case *fsmv1.ExpireBuilds:
		ids, err := s.ExpireBuilds(idx, c)
		return &Result{Expired: ids, Err: err}
	case *fsmv1.CreateToken:
		t, err := s.CreateToken(idx, c)
		return &Result{Token: t, Err: err}
	case *fsmv1.RevokeToken:
		t, err := s.RevokeToken(idx, c)
		return &Result{Token: t, Err: err}
	case *fsmv1.RedeemToken:
		t, err := s.RedeemToken(idx, c)
		return &Result{Token: t, Err: err}
	case *fsmv1.SetSecret:
		return &Result{Err: s.SetSecret(idx, c)}
	case *fsmv1.DeleteSecret:
		return &Result{Err: s.DeleteSecret(idx, c)}
	case *fsmv1.AppendAudit:
		return &Result{Err: s.AppendAudit(idx, c)}
	case *fsmv1.StartDeployment:
		d, err := s.StartDeployment(idx, c)
		return &Result{Deployment: d, Err: err}
	case *fsmv1.UpdateDeployment:
		d, err := s.UpdateDeployment(idx, c)
		return &Result{Deployment: d, Err: err}
	}
	// Unreachable: Decode only returns the message types above.
	panic(fmt.Sprintf("fsm: no handler for %T", msg))
}

// outcome is the Result of a fenced agent report: its outcome, if it has
// one (a malformed command has none), and its error.
func outcome(o state.AttemptOutcome, err error) *Result {
	res := &Result{Err: err}
	if o.Outcome != 0 {
		res.Outcomes = []state.AttemptOutcome{o}
	}
	return res
}

// Snapshot captures a consistent point-in-time view (a memdb read
// transaction); Persist streams it while Apply goes on.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{view: f.store.Snapshot(), log: f.log}, nil
}

// Restore replaces the whole store with a snapshot written by Persist.
func (f *FSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	opts := protodelim.UnmarshalOptions{MaxSize: maxRecordSize}
	err := f.store.Restore(func() (*fsmv1.SnapshotRecord, error) {
		rec := &fsmv1.SnapshotRecord{}
		if err := opts.UnmarshalFrom(br, rec); err != nil {
			return nil, err
		}
		return rec, nil
	})
	if err != nil {
		return fmt.Errorf("fsm restore: %w", err)
	}
	f.log.Info("restored state from snapshot", zap.Uint64("last_index", f.store.LastIndex()))
	return nil
}

type snapshot struct {
	view *state.Snapshot
	log  *zap.Logger
}

// Persist writes the view as length-delimited SnapshotRecords.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	bw := bufio.NewWriterSize(sink, 64<<10)
	err := s.view.Records(func(rec *fsmv1.SnapshotRecord) error {
		_, err := protodelim.MarshalTo(bw, rec)
		return err
	})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm snapshot persist: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("fsm snapshot close: %w", err)
	}
	return nil
}

// Release is a no-op: the view is an immutable memdb transaction.
func (s *snapshot) Release() {}
