// Package readindex makes reads served by any coordinator linearizable, the
// way etcd's ReadIndex and Consul's consistent reads do.
//
// A linearizable read first learns a read index: the leader confirms with a
// quorum that it still leads (so no newer leader can have acknowledged a
// write it lacks) and answers the index of the last command its state store
// has applied. Every write acknowledged before the read began was applied
// there (a write is acknowledged after its apply on the leader, and a new
// leader applies everything before it serves). The serving node then waits
// until its own store has applied that index, and reads locally. A node
// that just restarted therefore never answers from the state it had before
// catching up.
//
// Stale reads skip the round trip and read whatever the node has.
package readindex

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kiln-ci/kiln/coordinator/peers"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// DefaultTimeout bounds the whole barrier (round trip and catch-up) when
// the caller's context has no earlier deadline.
const DefaultTimeout = 10 * time.Second

// ErrNoLeader means no leader could confirm a read index: an election is in
// progress or this node is cut off. The client retries, at the leader if
// the error names one.
var ErrNoLeader = errors.New("no leader could confirm a read index")

// Reader runs read barriers for one coordinator.
type Reader struct {
	node  *raftnode.Node
	store *state.Store
	// ready reports whether this node leads and has finished establishing
	// its leadership (barrier applied): only then may it hand out read
	// indexes.
	ready func() bool
	// leaderAddr returns the leader's gRPC address as this node knows it.
	leaderAddr func() string
	peers      *peers.Pool
}

// New returns a Reader.
func New(node *raftnode.Node, store *state.Store, ready func() bool, leaderAddr func() string, pool *peers.Pool) *Reader {
	return &Reader{node: node, store: store, ready: ready, leaderAddr: leaderAddr, peers: pool}
}

// ReadIndex is the leader's half: confirm leadership with a quorum and
// return the index of the last applied command. A node that is not a
// ready leader returns raftnode.ErrNotLeader.
func (r *Reader) ReadIndex(ctx context.Context) (uint64, error) {
	if !r.ready() {
		return 0, raftnode.ErrNotLeader
	}
	// Take the index before the quorum check: every write acknowledged
	// before this call is at or below it, and the check proves no other
	// leader existed up to now.
	idx := r.store.LastIndex()
	if err := r.node.VerifyLeader(ctx); err != nil {
		return 0, fmt.Errorf("read index: %w", err)
	}
	return idx, nil
}

// Barrier returns once this node's state reflects every write acknowledged
// before the call, per the requested consistency. Stale returns at once.
func (r *Reader) Barrier(ctx context.Context, c kilnv1.Consistency) error {
	if c == kilnv1.Consistency_CONSISTENCY_STALE {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	idx, err := r.learnIndex(ctx)
	if err != nil {
		return err
	}
	if err := r.store.WaitIndex(ctx, idx); err != nil {
		return fmt.Errorf("wait for this node to apply index %d (it has %d): %w", idx, r.store.LastIndex(), err)
	}
	return nil
}

// learnIndex gets a read index from this node if it leads, else from the
// leader over gRPC (following one redirect).
func (r *Reader) learnIndex(ctx context.Context) (uint64, error) {
	if r.ready() {
		return r.ReadIndex(ctx)
	}
	addr := r.leaderAddr()
	for hop := 0; hop < 2; hop++ {
		if addr == "" {
			return 0, ErrNoLeader
		}
		conn, err := r.peers.Conn(addr)
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrNoLeader, err)
		}
		resp, err := kilnv1.NewClusterServiceClient(conn).ReadIndex(ctx, &kilnv1.ReadIndexRequest{})
		if err == nil {
			return resp.GetIndex(), nil
		}
		if hint, ok := leader.Hint(err); ok && hint != addr {
			addr = hint
			continue
		}
		return 0, fmt.Errorf("%w: ask %s: %w", ErrNoLeader, addr, err)
	}
	return 0, ErrNoLeader
}
