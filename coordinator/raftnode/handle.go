package raftnode

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
)

// LeaderCh reports leadership changes: true when this member becomes
// leader, false when it stops being leader.
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// State is this member's Raft role: "leader", "follower", "candidate" or
// "shutdown".
func (n *Node) State() string {
	switch n.raft.State() {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Shutdown:
		return "shutdown"
	}
	return "unknown"
}

// Snapshot forces a snapshot of the FSM and compacts the log.
func (n *Node) Snapshot() error { return n.raft.Snapshot().Error() }

// TransferLeadership hands leadership to the most up-to-date peer and waits
// until it has taken over (or the transfer failed).
func (n *Node) TransferLeadership() error {
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		return fmt.Errorf("leadership transfer: %w", err)
	}
	return nil
}

// VerifyLeader confirms with a quorum that this member is still the leader.
func (n *Node) VerifyLeader(ctx context.Context) error {
	f := n.raft.VerifyLeader()
	done := make(chan error, 1)
	// Raft always answers a verify future (on success, on losing
	// leadership, or on shutdown), so the waiter ends.
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return mapApplyErr(err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("verify leadership: %w", ctx.Err())
	}
}

// Progress is where this member's Raft log and state machine stand.
type Progress struct {
	Term         uint64
	CommitIndex  uint64
	AppliedIndex uint64
	LastLogIndex uint64
	LastLogTerm  uint64
	// LastContact is how long ago this member last heard from the leader;
	// zero on the leader.
	LastContact time.Duration
}

// Progress reports this member's log and term positions.
func (n *Node) Progress() Progress {
	p := Progress{
		Term:         n.raft.CurrentTerm(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
		LastLogIndex: n.raft.LastIndex(),
	}
	stats := n.raft.Stats()
	p.LastLogTerm, _ = strconv.ParseUint(stats["last_log_term"], 10, 64)
	if n.raft.State() != raft.Leader {
		if lc := n.raft.LastContact(); !lc.IsZero() {
			p.LastContact = time.Since(lc)
		}
	}
	return p
}

// AddNonvoter adds (or re-addresses) a member that receives the log but
// does not vote. Leader only.
func (n *Node) AddNonvoter(id, raftAddr string) error {
	if err := n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, 30*time.Second).Error(); err != nil {
		return mapApplyErr(err)
	}
	return nil
}

// NewAutopilot returns an autopilot over this member: on the leader it
// promotes non-voters that have caught up and stayed healthy (Consul's
// model). The caller starts and stops it with leadership.
func (n *Node) NewAutopilot(app autopilot.ApplicationIntegration, opts ...autopilot.Option) *autopilot.Autopilot {
	return autopilot.New(n.raft, app, append([]autopilot.Option{autopilot.WithLogger(n.hlog)}, opts...)...)
}
