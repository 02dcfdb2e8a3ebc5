package blobsync

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeNode is a local store plus peers holding some blobs.
type fakeNode struct {
	mu       sync.Mutex
	local    map[string]bool
	stored   chan struct{} // closed (and replaced) when local gains a blob
	peers    map[string]bool
	inFlight atomic.Int32
	maxSeen  atomic.Int32
	fetches  atomic.Int32
}

func (n *fakeNode) has(sha string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.local[sha]
}

// storedCh returns the channel closed when local next gains a blob; n.mu held.
func (n *fakeNode) storedCh() chan struct{} {
	if n.stored == nil {
		n.stored = make(chan struct{})
	}
	return n.stored
}

// waitHas waits until the local store holds sha.
func (n *fakeNode) waitHas(t *testing.T, sha string) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		n.mu.Lock()
		ok, ch := n.local[sha], n.storedCh()
		n.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s never fetched", sha)
		}
	}
}

func (n *fakeNode) fetch(ctx context.Context, sha string) error {
	n.fetches.Add(1)
	cur := n.inFlight.Add(1)
	defer n.inFlight.Add(-1)
	for {
		m := n.maxSeen.Load()
		if cur <= m || n.maxSeen.CompareAndSwap(m, cur) {
			break
		}
	}
	select {
	case <-time.After(5 * time.Millisecond):
	case <-ctx.Done():
		return ctx.Err()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.peers[sha] {
		return errors.New("not on any peer")
	}
	n.local[sha] = true
	close(n.storedCh())
	n.stored = nil
	return nil
}

func TestPassFetchesMissingWithBoundedConcurrency(t *testing.T) {
	n := &fakeNode{local: map[string]bool{"have": true}, peers: map[string]bool{}}
	want := map[string]bool{"have": true, "gone": true}
	for _, s := range []string{"a", "b", "c", "d", "e", "f"} {
		want[s] = true
		n.peers[s] = true
	}
	cfg := Config{Wanted: func() map[string]bool { return want }, Has: n.has, Fetch: n.fetch}
	fetched, failed := Pass(context.Background(), cfg)
	if fetched != 6 || failed != 1 {
		t.Fatalf("fetched %d failed %d", fetched, failed)
	}
	if m := n.maxSeen.Load(); m > DefaultConcurrency || m < 1 {
		t.Fatalf("%d fetches at once, want at most %d", m, DefaultConcurrency)
	}
	// The next pass only retries what is still missing.
	n.fetches.Store(0)
	n.mu.Lock()
	n.peers["gone"] = true
	n.mu.Unlock()
	if fetched, failed := Pass(context.Background(), cfg); fetched != 1 || failed != 0 || n.fetches.Load() != 1 {
		t.Fatalf("second pass: fetched %d failed %d calls %d", fetched, failed, n.fetches.Load())
	}
}

func TestRunWaitsForReadyAndStopsWithContext(t *testing.T) {
	n := &fakeNode{local: map[string]bool{}, peers: map[string]bool{"x": true, "y": true}}
	var mu sync.Mutex
	want := map[string]bool{"x": true}
	ready := make(chan struct{})
	waiting := make(chan struct{})
	cfg := Config{
		Wanted: func() map[string]bool {
			mu.Lock()
			defer mu.Unlock()
			out := map[string]bool{}
			for k := range want {
				out[k] = true
			}
			return out
		},
		Has: n.has, Fetch: n.fetch,
		Ready: func(ctx context.Context) error {
			close(waiting)
			select {
			case <-ready:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		},
		Interval: 10 * time.Millisecond,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); Run(ctx, cfg) }()
	<-waiting
	if n.fetches.Load() != 0 {
		t.Fatal("fetched before ready")
	}
	close(ready)
	n.waitHas(t, "x")
	mu.Lock()
	want["y"] = true // a blob referenced later is caught up by a periodic pass
	mu.Unlock()
	n.waitHas(t, "y")
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}
