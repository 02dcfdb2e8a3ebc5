package coordinator

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// hashicorp/raft does not close accepted transport connections on
		// Close; their readers exit when the peer closes its side.
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		// Raft never answers an Apply still queued when it shuts down.
		goleak.IgnoreAnyFunction("github.com/kiln-ci/kiln/coordinator/raftnode.Pending.WaitCtx.func1"),
	)
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// A node that wins an election but cannot establish its leadership (the
// barrier or the address record keeps failing) must not stay a leader that
// answers every write "not ready": after its retries it hands leadership
// to a peer, which then serves.
func TestFailedEstablishmentHandsLeadershipOver(t *testing.T) {
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	ids := []string{"a", "b", "c"}
	initial := map[string]string{}
	for _, id := range ids {
		initial[id] = freeAddr(t)
	}
	var (
		mu     sync.Mutex
		victim string // the first node to try to establish leadership
		tries  int
	)
	hook := func(id string) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if victim == "" {
				victim = id
			}
			if id == victim {
				tries++
				return errors.New("injected establishment failure")
			}
			return nil
		}
	}
	base := t.TempDir()
	var nodes []*Coordinator
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, id := range ids {
		cfg := NewConfig()
		cfg.NodeID = id
		cfg.DataDir = filepath.Join(base, id)
		cfg.GRPCAddr = "127.0.0.1:0"
		cfg.RaftAddr = initial[id]
		cfg.InitialCluster = initial
		cfg.LeaseTTL = 2 * time.Second
		cfg.HeartbeatInterval = 500 * time.Millisecond
		cfg.RaftHeartbeatTimeout = 300 * time.Millisecond
		cfg.RaftElectionTimeout = 300 * time.Millisecond
		co, err := New(cfg, log.Named(id))
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		co.establishHook = hook(id)
		nodes = append(nodes, co)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := co.Run(ctx); err != nil {
				t.Errorf("run %s: %v", id, err)
			}
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ready *Coordinator
		for _, n := range nodes {
			if n.IsLeader() {
				ready = n
			}
		}
		mu.Lock()
		v, n := victim, tries
		mu.Unlock()
		if ready != nil {
			if ready.NodeID() == v {
				t.Fatalf("the node whose establishment always fails (%s) reports itself ready", v)
			}
			if n < establishAttempts {
				t.Fatalf("%s became ready after the victim %s tried only %d times; want %d attempts before the hand-over", ready.NodeID(), v, n, establishAttempts)
			}
			t.Logf("victim %s failed %d attempts; %s leads", v, n, ready.NodeID())
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready leader after 30s (victim %q, %d failed attempts)", v, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
