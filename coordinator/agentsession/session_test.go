package agentsession

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/logrepl"
	"github.com/kiln-ci/kiln/coordinator/logstore"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAck(t *testing.T) {
	tests := []struct {
		name string
		in   state.AttemptOutcome
		want *kilnv1.Ack // nil: no Ack
	}{
		{"none", state.AttemptOutcome{JobID: "1.a", Attempt: 1}, nil},
		{"accepted", state.AttemptOutcome{JobID: "1.a", Attempt: 1, Outcome: state.OutcomeAccepted}, nil},
		{"log committed", state.AttemptOutcome{JobID: "1.a", Attempt: 2, Outcome: state.OutcomeLogCommitted, LogSeq: 7},
			&kilnv1.Ack{JobId: "1.a", Attempt: 2, LogSeq: 7}},
		{"finished", state.AttemptOutcome{JobID: "1.a", Attempt: 2, Outcome: state.OutcomeFinished, LogSeq: 9},
			&kilnv1.Ack{JobId: "1.a", Attempt: 2, LogSeq: 9, Finished: true}},
		{"log incomplete carries the committed seq", state.AttemptOutcome{JobID: "1.a", Attempt: 2, Outcome: state.OutcomeLogIncomplete, LogSeq: 4},
			&kilnv1.Ack{JobId: "1.a", Attempt: 2, LogSeq: 4}},
		{"stale", state.AttemptOutcome{JobID: "1.b", Attempt: 3, Outcome: state.OutcomeStale, Fence: state.FenceOtherAgent},
			&kilnv1.Ack{JobId: "1.b", Attempt: 3, Stale: true}},
		{"stale never acknowledges log", state.AttemptOutcome{JobID: "1.b", Attempt: 3, Outcome: state.OutcomeStale, LogSeq: 5},
			&kilnv1.Ack{JobId: "1.b", Attempt: 3, Stale: true}},
		{"unknown outcome", state.AttemptOutcome{JobID: "1.a", Attempt: 1, Outcome: state.Outcome(99)}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := ack(tc.in)
			if (got == nil) != (tc.want == nil) || (got != nil && !proto.Equal(got, tc.want)) {
				t.Fatalf("ack(%+v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// fakeApplier commits commands by applying them directly to a real FSM,
// the way a single-node Raft would.
type fakeApplier struct {
	mu  sync.Mutex
	fsm *fsm.FSM
	idx uint64
	// gate, when set, holds back every answer until it is closed (the
	// command is applied at once); handed then gets each command's type.
	gate   chan struct{}
	handed chan fsmv1.CommandType
}

// hold makes the applier answer nothing until the returned gate is closed.
func (a *fakeApplier) hold() (gate chan struct{}, handed <-chan fsmv1.CommandType) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.gate, a.handed = make(chan struct{}), make(chan fsmv1.CommandType, 64)
	return a.gate, a.handed
}

type gatedFuture struct {
	doneFuture
	gate chan struct{}
}

func (f gatedFuture) Error() error { <-f.gate; return nil }

type doneFuture struct {
	res   *fsm.Result
	index uint64
}

func (f doneFuture) Error() error          { return nil }
func (f doneFuture) Response() interface{} { return f.res }
func (f doneFuture) Index() uint64         { return f.index }

func (a *fakeApplier) ApplyAsync(t fsmv1.CommandType, msg proto.Message) (raftnode.Pending, error) {
	data, err := fsm.Encode(t, msg)
	if err != nil {
		return raftnode.Pending{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.idx++
	res, _ := a.fsm.Apply(&raft.Log{Index: a.idx, Term: 1, Type: raft.LogCommand, Data: data}).(*fsm.Result)
	if a.gate != nil {
		a.handed <- t
		return raftnode.NewPending(gatedFuture{doneFuture: doneFuture{res: res, index: a.idx}, gate: a.gate}), nil
	}
	return raftnode.NewPending(doneFuture{res: res, index: a.idx}), nil
}

func (a *fakeApplier) Apply(_ context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	p, err := a.ApplyAsync(t, msg)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

func (a *fakeApplier) IsLeader() bool { return true }

// fakeStream is an agent's end of a Connect stream.
type fakeStream struct {
	ctx context.Context
	in  chan *kilnv1.ConnectRequest // closed: the agent closed its side
	out chan *kilnv1.ConnectResponse
}

func (s *fakeStream) Context() context.Context { return s.ctx }

func (s *fakeStream) Send(m *kilnv1.ConnectResponse) error {
	select {
	case s.out <- m:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

func (s *fakeStream) Recv() (*kilnv1.ConnectRequest, error) {
	select {
	case m, ok := <-s.in:
		if !ok {
			return nil, io.EOF
		}
		return m, nil
	case <-s.ctx.Done():
		return nil, s.ctx.Err()
	}
}

type env struct {
	t     *testing.T
	store *state.Store
	ap    *fakeApplier
	srv   *Server
	logs  *logstore.Store
}

// newEnv runs a scheduler over a store holding one build of step "a"
// until the test ends.
func newEnv(t *testing.T) *env {
	t.Helper()
	log := zaptest.NewLogger(t)
	store := state.New()
	ap := &fakeApplier{fsm: fsm.New(store, log.Named("fsm"))}
	sched := scheduler.New(scheduler.Config{LeaseTTL: time.Minute}, store, ap, log.Named("scheduler"))
	logs, err := logstore.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A one-voter cluster: the local store is the quorum.
	repl := logrepl.New(logrepl.Config{NodeID: "n1", Store: logs, Nodes: store.Nodes,
		Members: func() ([]raft.Server, error) { return []raft.Server{{ID: "n1", Suffrage: raft.Voter}}, nil }})
	t.Cleanup(repl.Close)
	e := &env{t: t, store: store, ap: ap, logs: logs, srv: New(Config{NodeID: "n1", Store: store, Raft: ap, Scheduler: sched, Logs: repl, Log: log})}
	e.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{Name: "b", Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sched.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !sched.Active() {
		if time.Now().After(deadline) {
			t.Fatal("scheduler not active")
		}
		time.Sleep(time.Millisecond)
	}
	return e
}

func (e *env) ok(t fsmv1.CommandType, msg proto.Message) *fsm.Result {
	e.t.Helper()
	res, err := e.ap.Apply(context.Background(), t, msg)
	if err != nil {
		e.t.Fatalf("%s: %v", t, err)
	}
	return res
}

// serve runs a session of agent "ag" holding held; it returns the stream
// and a channel with Serve's result.
func (e *env) serve(held ...*kilnv1.AttemptRef) (*fakeStream, <-chan error) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := &fakeStream{ctx: ctx, in: make(chan *kilnv1.ConnectRequest, 16), out: make(chan *kilnv1.ConnectResponse, 16)}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		err := e.srv.Serve(st, &kilnv1.Register{Name: "ag", Slots: 1, Version: "v", Running: held})
		cancel() // gRPC ends the stream when the handler returns
		done <- err
	}()
	e.t.Cleanup(func() {
		cancel()
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			e.t.Error("Serve did not return")
		}
	})
	return st, done
}

func (e *env) next(st *fakeStream) *kilnv1.ConnectResponse {
	e.t.Helper()
	select {
	case m := <-st.out:
		return m
	case <-time.After(10 * time.Second):
		e.t.Fatal("no message for the agent")
		return nil
	}
}

func (e *env) wantAck(st *fakeStream, want *kilnv1.Ack) {
	e.t.Helper()
	if got := e.next(st).GetAck(); !proto.Equal(got, want) {
		e.t.Fatalf("ack %v, want %v", got, want)
	}
}

func TestServeAcknowledgesAndEndsAnIncompleteFinish(t *testing.T) {
	e := newEnv(t)
	st, done := e.serve()
	if e.next(st).GetRegistered().GetSessionId() == "" {
		t.Fatal("first message is not Registered")
	}
	as := e.next(st).GetAssignment()
	if as.GetJobId() != "1.a" || as.GetAttempt() != 1 {
		t.Fatalf("assignment %v", as)
	}
	send := func(m *kilnv1.ConnectRequest) { st.in <- m }
	send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: &kilnv1.JobStarted{JobId: "1.a", Attempt: 1}}})
	send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: "1.a", Attempt: 1, Seq: 1, Data: []byte("x")}}})
	e.wantAck(st, &kilnv1.Ack{JobId: "1.a", Attempt: 1, LogSeq: 1})
	// A report for an attempt the agent does not hold is stale.
	send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: &kilnv1.JobStarted{JobId: "1.a", Attempt: 2}}})
	e.wantAck(st, &kilnv1.Ack{JobId: "1.a", Attempt: 2, Stale: true})
	// Finishing at seq 3 with seq 1 committed: the agent learns seq 1 and
	// the session ends.
	send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{
		JobId: "1.a", Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: 3}}})
	e.wantAck(st, &kilnv1.Ack{JobId: "1.a", Attempt: 1, LogSeq: 1})
	err := <-done
	if !errors.Is(err, fsm.ErrLogsIncomplete) || !strings.Contains(err.Error(), "committed up to seq 1") {
		t.Fatalf("Serve: %v", err)
	}
	if j, _ := e.store.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job %v", j)
	}
	if a, _ := e.store.Agent("ag"); a.GetState() != kilnv1.AgentState_AGENT_STATE_DISCONNECTED {
		t.Fatalf("agent %v", a)
	}

	// The agent reconnects holding the attempt, resends and finishes.
	st, done = e.serve(&kilnv1.AttemptRef{JobId: "1.a", Attempt: 1})
	if e.next(st).GetRegistered() == nil {
		t.Fatal("first message is not Registered")
	}
	for seq := uint64(2); seq <= 3; seq++ {
		st.in <- &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: "1.a", Attempt: 1, Seq: seq}}}
	}
	st.in <- &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{
		JobId: "1.a", Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: 3}}}
	close(st.in)
	var last *kilnv1.Ack
	for last == nil || !last.GetFinished() {
		last = e.next(st).GetAck()
	}
	if !proto.Equal(last, &kilnv1.Ack{JobId: "1.a", Attempt: 1, LogSeq: 3, Finished: true}) {
		t.Fatalf("ack %v", last)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve after the agent closed: %v", err)
	}
	if j, _ := e.store.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_PASSED {
		t.Fatalf("job %v", j)
	}
}

func TestServeReconcilesHeldAttempts(t *testing.T) {
	e := newEnv(t)
	e.ok(fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{Name: "ag", Slots: 1, SessionId: "old"})
	e.ok(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "ag"})
	// The agent restarted: it holds an attempt of another job instead.
	st, _ := e.serve(&kilnv1.AttemptRef{JobId: "9.z", Attempt: 1})
	if e.next(st).GetRegistered() == nil {
		t.Fatal("first message is not Registered")
	}
	e.wantAck(st, &kilnv1.Ack{JobId: "9.z", Attempt: 1, Stale: true})
	// No retry on agent loss: the attempt it does not hold is lost.
	if j, _ := e.store.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_LOST || j.GetAttempt() != 1 {
		t.Fatalf("attempt not declared lost: %v", j)
	}
}

func TestServeStoresLogsOutsideRaft(t *testing.T) {
	e := newEnv(t)
	st, done := e.serve()
	if e.next(st).GetRegistered().GetSessionId() == "" {
		t.Fatal("first message is not Registered")
	}
	if as := e.next(st).GetAssignment(); as.GetJobId() != "1.a" {
		t.Fatalf("assignment %v", as)
	}
	chunk := func(attempt uint32, seq uint64, data string) *kilnv1.ConnectRequest {
		return &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: "1.a", Attempt: attempt, Seq: seq, Data: []byte(data)}}}
	}
	// A resend of chunk 2 (its Ack was lost) and a chunk of an attempt the
	// agent does not hold.
	for _, m := range []*kilnv1.ConnectRequest{chunk(1, 1, "a\n"), chunk(1, 2, "b\n"), chunk(1, 2, "b\n"), chunk(1, 3, "c"), chunk(2, 1, "zombie")} {
		st.in <- m
	}
	stale := false
	for committed := uint64(0); committed < 3 || !stale; {
		a := e.next(st).GetAck()
		switch {
		case a.GetStale():
			if a.GetAttempt() != 2 {
				t.Fatalf("stale ack %v", a)
			}
			stale = true
		case a.GetAttempt() == 1:
			committed = a.GetLogSeq()
		}
	}
	close(st.in)
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	j, _ := e.store.Job("1.a")
	if j.GetLogSeq() != 3 || j.GetLogBytes() != 5 || j.GetLogLines() != 3 || len(j.GetLogDigest()) != 32 {
		t.Fatalf("job's committed log: seq %d, %d bytes, %d lines, digest %x", j.GetLogSeq(), j.GetLogBytes(), j.GetLogLines(), j.GetLogDigest())
	}
	if chunks := e.store.Logs("1.a", 1, 0, 0); len(chunks) != 0 {
		t.Fatalf("%d chunks went into the replicated state", len(chunks))
	}
	got, err := e.logs.Read("1.a", 1, 0, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	var text string
	for _, c := range got {
		text += string(c.GetData())
	}
	if text != "a\nb\nc" {
		t.Fatalf("log store holds %q", text)
	}
	if last, _ := e.logs.Last("1.a", 2); last != 0 {
		t.Fatalf("the stale attempt's chunk was stored (last %d)", last)
	}
}

// TestServePipelinesReports: the session hands the agent's reports to Raft
// without waiting for each commit, and acknowledges them in order once
// Raft answers.
func TestServePipelinesReports(t *testing.T) {
	e := newEnv(t)
	st, done := e.serve()
	if e.next(st).GetRegistered() == nil {
		t.Fatal("first message is not Registered")
	}
	if as := e.next(st).GetAssignment(); as.GetJobId() != "1.a" {
		t.Fatalf("assignment %v", as)
	}
	gate, handed := e.ap.hold()
	st.in <- &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: &kilnv1.JobStarted{JobId: "1.a", Attempt: 1}}}
	st.in <- &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: "1.a", Attempt: 1, Seq: 1, Data: []byte("x")}}}
	st.in <- &kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{
		JobId: "1.a", Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: 1}}}
	// All three reach Raft while no commit has been answered.
	for _, want := range []fsmv1.CommandType{
		fsmv1.CommandType_COMMAND_TYPE_START_JOB, fsmv1.CommandType_COMMAND_TYPE_COMMIT_LOGS, fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB,
	} {
		select {
		case got := <-handed:
			if got != want {
				t.Fatalf("handed %s, want %s", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s not handed to raft while earlier reports wait for their commit", want)
		}
	}
	select {
	case m := <-st.out:
		t.Fatalf("message before any commit was answered: %v", m)
	default:
	}
	close(gate)
	e.wantAck(st, &kilnv1.Ack{JobId: "1.a", Attempt: 1, LogSeq: 1})
	e.wantAck(st, &kilnv1.Ack{JobId: "1.a", Attempt: 1, LogSeq: 1, Finished: true})
	close(st.in)
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if j, _ := e.store.Job("1.a"); j.GetState() != kilnv1.JobState_JOB_STATE_PASSED {
		t.Fatalf("job %v", j)
	}
}
