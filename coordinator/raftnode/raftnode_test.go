package raftnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Raft's transport leaves its per-connection readers behind for a
		// moment after Close.
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}

// restoreCounter is the real FSM, counting snapshot restores.
type restoreCounter struct {
	*fsm.FSM
	restores atomic.Int32
}

func (f *restoreCounter) Restore(r io.ReadCloser) error {
	f.restores.Add(1)
	return f.FSM.Restore(r)
}

func testConfig(dir string, bootstrap bool) Config {
	cfg := Config{
		NodeID:           "n1",
		DataDir:          dir,
		RaftAddr:         "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond,
		ElectionTimeout:  100 * time.Millisecond,
		TrailingLogs:     1,
		ApplyTimeout:     5 * time.Second,
	}
	if bootstrap {
		cfg.InitialCluster = map[string]string{"n1": "127.0.0.1:0"}
	}
	return cfg
}

func open(t *testing.T, cfg Config) (*Node, *state.Store, *restoreCounter) {
	t.Helper()
	store := state.New()
	log := zaptest.NewLogger(t)
	f := &restoreCounter{FSM: fsm.New(store, log.Named("fsm"))}
	n, err := Open(cfg, f, log)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return n, store, f
}

func waitLeader(t *testing.T, n *Node) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !n.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatalf("node did not become leader (state %s)", n.State())
		}
		<-tick.C
	}
}

func submit(t *testing.T, n *Node, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := n.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: fmt.Sprintf("req-%d", i), Name: fmt.Sprintf("b%d", i), TimeUnixMs: int64(i),
		Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}}},
	})
	if err != nil {
		t.Fatalf("submit %d: %v", i, err)
	}
	if res.Build.GetName() != fmt.Sprintf("b%d", i) {
		t.Fatalf("submit %d: build %v", i, res.Build)
	}
}

func TestRestartFromSnapshotAndLogTail(t *testing.T) {
	const before, after = 5, 3
	dir := t.TempDir()

	n, _, _ := open(t, testConfig(dir, true))
	waitLeader(t, n)
	for i := 1; i <= before; i++ {
		submit(t, n, i)
	}
	if err := n.Snapshot(); err != nil {
		_ = n.Close()
		t.Fatalf("snapshot: %v", err)
	}
	for i := before + 1; i <= before+after; i++ {
		submit(t, n, i)
	}
	if err := n.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	// Same directory, fresh FSM and store.
	n2, store2, f2 := open(t, testConfig(dir, true))
	defer func() {
		if err := n2.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	waitLeader(t, n2)
	if err := n2.Barrier(context.Background()); err != nil {
		t.Fatalf("barrier: %v", err)
	}
	if got := f2.restores.Load(); got != 1 {
		t.Fatalf("%d snapshot restores on restart, want 1", got)
	}
	builds := store2.ListBuilds(100)
	if len(builds) != before+after {
		t.Fatalf("%d builds after restart, want %d", len(builds), before+after)
	}
	for i := 1; i <= before+after; i++ {
		id, ok := store2.RequestBuild(fmt.Sprintf("req-%d", i))
		if !ok {
			t.Fatalf("request req-%d forgotten", i)
		}
		if b, _ := store2.Build(id); b.GetName() != fmt.Sprintf("b%d", i) {
			t.Fatalf("build %s: %v", id, b)
		}
	}
	if got := store2.NextBuildNumber(); got != before+after+1 {
		t.Fatalf("next build number %d, want %d", got, before+after+1)
	}
	// The restarted node keeps working.
	submit(t, n2, before+after+1)
}

func TestApplyOnNonLeader(t *testing.T) {
	// Without an initial cluster the node waits to be added and never leads.
	n, store, _ := open(t, testConfig(t.TempDir(), false))
	defer func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	if n.IsLeader() {
		t.Fatal("node without a cluster is leader")
	}
	if id, addr := n.Leader(); id != "" || addr != "" {
		t.Fatalf("leader %q at %q, want none", id, addr)
	}
	cmd := &fsmv1.SubmitBuild{RequestId: "r", Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}}}}
	_, err := n.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
	if !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Apply: %v, want ErrNotLeader", err)
	}
	if errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("Apply on a non-leader is not an unknown outcome: %v", err)
	}
	p, err := n.ApplyAsync(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
	if err != nil {
		t.Fatalf("ApplyAsync: %v", err)
	}
	if _, err := p.Wait(); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Wait: %v, want ErrNotLeader", err)
	}
	if err := n.Barrier(context.Background()); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("Barrier: %v, want ErrNotLeader", err)
	}
	if len(store.ListBuilds(10)) != 0 {
		t.Fatal("a refused command changed the store")
	}
	// A command of the wrong message type is refused before Raft.
	if _, err := n.ApplyAsync(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, cmd); !errors.Is(err, fsm.ErrInvalidCommand) {
		t.Fatalf("mismatched command: %v, want ErrInvalidCommand", err)
	}
}

func TestBusinessRejectionIsReturned(t *testing.T) {
	n, _, _ := open(t, testConfig(t.TempDir(), true))
	defer func() {
		if err := n.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	}()
	waitLeader(t, n)
	res, err := n.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: "9.x", Attempt: 1, Agent: "a"})
	if !errors.Is(err, fsm.ErrNotFound) || res == nil || !errors.Is(res.Err, fsm.ErrNotFound) {
		t.Fatalf("assign of an unknown job: res %v err %v, want ErrNotFound", res, err)
	}
	if errors.Is(err, ErrNotLeader) || errors.Is(err, ErrOutcomeUnknown) {
		t.Fatalf("business rejection mapped to a Raft error: %v", err)
	}
	if id, addr := n.Leader(); id != "n1" || addr != n.RaftAddr() {
		t.Fatalf("leader %q at %q, want n1 at %s", id, addr, n.RaftAddr())
	}
	members, err := n.Members()
	if err != nil || len(members) != 1 || members[0].ID != "n1" {
		t.Fatalf("members %v %v", members, err)
	}
}

func TestMapApplyErr(t *testing.T) {
	tests := []struct {
		err                  error
		notLeader, uncertain bool
	}{
		{raft.ErrNotLeader, true, false},
		{raft.ErrLeadershipLost, false, true},
		{raft.ErrLeadershipTransferInProgress, false, true},
		{raft.ErrRaftShutdown, false, true},
		{raft.ErrEnqueueTimeout, false, true},
		{raft.ErrAbortedByRestore, false, true},
		{errors.New("disk on fire"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			got := mapApplyErr(tt.err)
			if errors.Is(got, ErrNotLeader) != tt.notLeader || errors.Is(got, ErrOutcomeUnknown) != tt.uncertain {
				t.Fatalf("mapApplyErr(%v) = %v", tt.err, got)
			}
			if !errors.Is(got, tt.err) {
				t.Fatalf("mapApplyErr(%v) = %v loses the cause", tt.err, got)
			}
		})
	}
}

func TestStripPrefix(t *testing.T) {
	tests := []struct{ in, want string }{
		{"2024-01-02T03:04:05.000Z [INFO]  raft: entering leader state", "raft: entering leader state"},
		{"[WARN]  raft: heartbeat timeout reached", "raft: heartbeat timeout reached"},
		{"no level here", "no level here"},
		{"[ERROR]", "[ERROR]"},
	}
	for _, tt := range tests {
		if got := stripPrefix(tt.in); got != tt.want {
			t.Errorf("stripPrefix(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
