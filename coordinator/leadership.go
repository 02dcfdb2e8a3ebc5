package coordinator

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/deploy"
	"github.com/kiln-ci/kiln/coordinator/retention"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
)

// Establishing leadership is retried this many times before the leader
// hands leadership to a peer: a leader that cannot start its leader work
// would otherwise stay leader and answer every write "not ready".
const (
	establishAttempts = 3
	establishBackoff  = 250 * time.Millisecond
	establishTimeout  = 10 * time.Second
)

// leadershipLoop follows Raft's leadership signal: on gaining leadership it
// establishes it (establishLeadership) and runs the leader work; on losing
// it, it revokes it (revokeLeadership). One leader term's work at a time.
func (c *Coordinator) leadershipLoop(ctx context.Context) {
	var term *leaderTerm
	defer func() { c.revokeLeadership(term) }()
	for {
		select {
		case <-ctx.Done():
			return
		case leading := <-c.node.LeaderCh():
			c.revokeLeadership(term)
			term = nil
			if !leading {
				c.log.Info("leadership lost")
				continue
			}
			term = c.startLeaderTerm(ctx)
		}
	}
}

// leaderTerm is the leader work of one term: its context and the
// goroutines that run under it.
type leaderTerm struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startLeaderTerm establishes leadership in the background and, once
// established, runs the leader work until revoked.
func (c *Coordinator) startLeaderTerm(ctx context.Context) *leaderTerm {
	lctx, cancel := context.WithCancel(ctx)
	t := &leaderTerm{cancel: cancel}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		if err := c.establishLeadership(lctx); err != nil {
			if lctx.Err() != nil {
				return
			}
			c.log.Error("could not establish leadership; handing it to a peer", zap.Error(err))
			if terr := c.node.TransferLeadership(); terr != nil {
				c.log.Error("leadership transfer failed; writes wait for the next election", zap.Error(terr))
			}
			return
		}
		c.runLeaderWork(lctx)
	}()
	return t
}

// revokeLeadership stops a term's leader work and waits for it: the
// scheduler closes every agent session, so agents move to the new leader.
func (c *Coordinator) revokeLeadership(t *leaderTerm) {
	if t == nil {
		return
	}
	t.cancel()
	t.wg.Wait()
}

// establishLeadership makes the new leader's state current and announces
// it: a barrier (every entry of earlier terms applied here) and the
// leader's own addresses recorded. Each step is retried; the error after
// the last attempt tells the caller to give leadership away.
func (c *Coordinator) establishLeadership(ctx context.Context) error {
	var err error
	for attempt := 1; attempt <= establishAttempts; attempt++ {
		if err = c.establishOnce(ctx); err == nil {
			c.log.Info("leadership established", zap.Int("attempt", attempt))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.log.Warn("establishing leadership failed", zap.Int("attempt", attempt), zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(establishBackoff * time.Duration(attempt)):
		}
	}
	return fmt.Errorf("after %d attempts: %w", establishAttempts, err)
}

func (c *Coordinator) establishOnce(ctx context.Context) error {
	if c.establishHook != nil {
		if err := c.establishHook(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, establishTimeout)
	defer cancel()
	if err := c.node.Barrier(ctx); err != nil {
		return fmt.Errorf("barrier: %w", err)
	}
	if _, err := c.node.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{
		Id: c.cfg.NodeID, GrpcAddr: c.addr, RaftAddr: c.raftAdr,
	}); err != nil {
		return fmt.Errorf("record own addresses: %w", err)
	}
	return nil
}

// runLeaderWork runs the leader-only loops until ctx ends: the scheduler,
// the branch watcher, the expiry timer and the membership autopilot.
func (c *Coordinator) runLeaderWork(ctx context.Context) {
	var wg sync.WaitGroup
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	run(func() { c.watch.Run(ctx) })
	run(func() {
		retention.Run(ctx, retention.Config{
			Store: c.store, Raft: c.node, Default: c.cfg.ArtifactRetention, BuildRetention: c.cfg.BuildRetention,
			Interval: c.cfg.ExpiryInterval, Log: c.log.Named("retention"),
		})
	})
	run(func() { c.autopilot.Run(ctx) })
	run(func() {
		dc := deploy.New(c.store, c.node, c.log.Named("deploy"))
		dc.AgentGrace = c.cfg.LeaseTTL
		dc.Run(ctx)
	})
	c.sched.Run(ctx)
	wg.Wait()
}
