package logrepl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/logstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// node is one coordinator's log store served over real gRPC on loopback.
type node struct {
	id    string
	addr  string
	store *logstore.Store
	srv   *grpc.Server
}

type cluster struct {
	t     *testing.T
	nodes []*node
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newCluster(t *testing.T, n int) *cluster {
	c := &cluster{t: t, conns: map[string]*grpc.ClientConn{}}
	for i := 1; i <= n; i++ {
		s, err := logstore.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		kilnv1.RegisterLogReplicationServiceServer(srv, NewServer(s))
		go func() { _ = srv.Serve(lis) }()
		c.nodes = append(c.nodes, &node{id: fmt.Sprintf("n%d", i), addr: lis.Addr().String(), store: s, srv: srv})
	}
	t.Cleanup(func() {
		c.mu.Lock()
		for _, cc := range c.conns {
			cc.Close()
		}
		c.mu.Unlock()
		for _, n := range c.nodes {
			n.srv.Stop()
		}
	})
	return c
}

func (c *cluster) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err == nil {
		c.conns[addr] = cc
	}
	return cc, err
}

// replicator is node i's Replicator; every node is a voter.
func (c *cluster) replicator(i int) *Replicator {
	var members []raft.Server
	var nodes []*kilnv1.Node
	for _, n := range c.nodes {
		members = append(members, raft.Server{ID: raft.ServerID(n.id), Suffrage: raft.Voter})
		nodes = append(nodes, &kilnv1.Node{Id: n.id, GrpcAddr: n.addr})
	}
	r := New(Config{NodeID: c.nodes[i].id, Store: c.nodes[i].store, Conn: c.conn, Log: zaptest.NewLogger(c.t),
		Members: func() ([]raft.Server, error) { return members, nil },
		Nodes:   func() []*kilnv1.Node { return nodes },
		Leader:  func() string { return c.nodes[0].id }})
	c.t.Cleanup(r.Close)
	return r
}

func chunks(job string, from, to uint64) []*kilnv1.LogChunk {
	var out []*kilnv1.LogChunk
	for s := from; s <= to; s++ {
		out = append(out, &kilnv1.LogChunk{JobId: job, Attempt: 1, Seq: s, Data: []byte(fmt.Sprintf("%d\n", s))})
	}
	return out
}

func last(t *testing.T, s *logstore.Store, job string) uint64 {
	t.Helper()
	l, err := s.Last(job, 1)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// waitLast waits on the store's change events until it holds the
// attempt's chunks through seq.
func waitLast(t *testing.T, s *logstore.Store, job string, seq uint64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		changed := s.Changed()
		if last(t, s, job) >= seq {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s holds %s through %d, want %d", s.Dir(), job, last(t, s, job), seq)
		}
	}
}

func TestReplicateFillsAPeersGapAndReturnsTotals(t *testing.T) {
	c := newCluster(t, 3)
	// n2 holds nothing of the attempt (it was down); the leader holds 1..10.
	if _, err := c.nodes[0].store.Append("1.a", 1, chunks("1.a", 1, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes[2].store.Append("1.a", 1, chunks("1.a", 1, 10)); err != nil {
		t.Fatal(err)
	}
	r := c.replicator(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tot, err := r.Replicate(ctx, "1.a", 1, chunks("1.a", 11, 12))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := c.nodes[0].store.Totals("1.a", 1, 12)
	if tot != want || tot.Seq != 12 || tot.Lines != 12 {
		t.Fatalf("totals %+v, want %+v", tot, want)
	}
	for _, n := range c.nodes {
		// The copy to n2 may finish after the quorum answered.
		waitLast(t, n.store, "1.a", 12)
		if got, _ := n.store.Totals("1.a", 1, 12); got != want {
			t.Fatalf("%s: totals %+v differ from the leader's", n.id, got)
		}
	}
}

func TestLeaderMissingCommittedChunksFetchesThemFirst(t *testing.T) {
	c := newCluster(t, 3)
	for _, n := range c.nodes[1:] {
		if _, err := n.store.Append("2.b", 1, chunks("2.b", 1, 5)); err != nil {
			t.Fatal(err)
		}
	}
	r := c.replicator(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Replicate(ctx, "2.b", 1, chunks("2.b", 6, 7)); err != nil {
		t.Fatal(err)
	}
	got, err := c.nodes[0].store.Read("2.b", 1, 0, 7, 0)
	if err != nil || len(got) != 7 || string(got[4].GetData()) != "5\n" {
		t.Fatalf("leader's log after the fetch: %v, %v", got, err)
	}
}

func TestReplicateWithoutQuorumFails(t *testing.T) {
	c := newCluster(t, 3)
	for _, n := range c.nodes[1:] {
		n.srv.Stop()
	}
	r := c.replicator(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.Replicate(ctx, "3.c", 1, chunks("3.c", 1, 1)); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("replicate with both peers down: %v, want ErrNoQuorum", err)
	}
}

func TestReadFetchesMissingChunksFromAPeer(t *testing.T) {
	c := newCluster(t, 3)
	// 3000 chunks of 2 KiB: more than one ReadLog message.
	var cs []*kilnv1.LogChunk
	for s := uint64(1); s <= 3000; s++ {
		cs = append(cs, &kilnv1.LogChunk{JobId: "4.d", Attempt: 1, Seq: s, Data: make([]byte, 2048)})
	}
	if _, err := c.nodes[0].store.Append("4.d", 1, cs); err != nil {
		t.Fatal(err)
	}
	r := c.replicator(2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := r.Read(ctx, "4.d", 1, 2990, 3000, 0)
	if err != nil || len(got) != 10 || got[0].GetSeq() != 2991 {
		t.Fatalf("read: %d chunks, %v", len(got), err)
	}
	if l := last(t, c.nodes[2].store, "4.d"); l != 3000 {
		t.Fatalf("n3 holds through %d after the read, want 3000", l)
	}
	// What the node holds is served without waiting for the rest.
	if got, err := r.Read(ctx, "4.d", 1, 0, 3001, 4096); err != nil || len(got) != 2 || got[0].GetSeq() != 1 {
		t.Fatalf("read of held chunks: %d chunks, %v", len(got), err)
	}
	// Chunks nobody holds are unavailable.
	if _, err := r.Read(ctx, "4.d", 1, 3000, 3001, 0); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("read beyond every store: %v, want ErrUnavailable", err)
	}
}

func TestServerRejectsBadAppends(t *testing.T) {
	c := newCluster(t, 1)
	cc, err := c.conn(c.nodes[0].addr)
	if err != nil {
		t.Fatal(err)
	}
	cl := kilnv1.NewLogReplicationServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, req := range map[string]*kilnv1.AppendLogRequest{
		"no job":       {Attempt: 1, Chunks: chunks("", 1, 1)},
		"attempt 0":    {JobId: "5.e", Chunks: chunks("5.e", 1, 1)},
		"another job":  {JobId: "5.e", Attempt: 1, Chunks: chunks("5.f", 1, 1)},
		"chunk > 1MiB": {JobId: "5.e", Attempt: 1, Chunks: []*kilnv1.LogChunk{{JobId: "5.e", Attempt: 1, Seq: 1, Data: make([]byte, logstore.MaxChunkBytes+1)}}},
	} {
		if _, err := cl.AppendLog(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// A gap is not an error: the answer names what the store holds.
	resp, err := cl.AppendLog(ctx, &kilnv1.AppendLogRequest{JobId: "5.e", Attempt: 1, Chunks: chunks("5.e", 3, 4)})
	if err != nil || resp.GetLastSeq() != 0 {
		t.Fatalf("append after a gap: %v, %v", resp, err)
	}
}
