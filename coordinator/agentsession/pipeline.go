package agentsession

import (
	"context"
	"fmt"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
)

// maxInflight bounds the reports of one session handed to Raft and not yet
// acknowledged; the session stops reading the agent's messages beyond it.
// (The queue is allocated whole per session: 64 × 40 bytes.)
const maxInflight = 64

// inflight is a report handed to Raft whose result the session has not
// handled yet, or (barrier set) a marker that drain waits for.
type inflight struct {
	p       raftnode.Pending
	then    func(*fsm.Result, error) error
	barrier chan struct{}
}

// pipeline handles the results of a session's in-flight reports in the
// order they were handed to Raft: acknowledge the outcomes, then run the
// report's own check. run is its only goroutine; Serve owns it.
type pipeline struct {
	ss    *session
	queue chan inflight
	// failed is closed when a check first fails; err is that failure
	// (written before the close, read after it).
	failed chan struct{}
	err    error
	done   chan struct{}
}

func newPipeline(ss *session) *pipeline {
	return &pipeline{ss: ss, queue: make(chan inflight, maxInflight), failed: make(chan struct{}), done: make(chan struct{})}
}

// run handles results until the queue is closed and empty. Results are
// awaited with ctx: when it ends, the remaining outcomes are unknown and
// not acknowledged (the agent resends after reconnecting). After a failed
// check it keeps acknowledging what Raft committed: the session ends, but
// the agent need not resend what the cluster holds.
func (p *pipeline) run(ctx context.Context) {
	defer close(p.done)
	for in := range p.queue {
		if in.barrier != nil {
			close(in.barrier)
			continue
		}
		res, err := in.p.WaitCtx(ctx)
		if res != nil {
			p.ss.acknowledge(res.Outcomes)
		}
		if herr := in.then(res, err); herr != nil && p.err == nil {
			p.err = herr
			close(p.failed)
		}
	}
}

// push queues a report handed to Raft; it blocks while maxInflight are.
func (p *pipeline) push(ctx context.Context, in inflight) error {
	select {
	case p.queue <- in:
		return nil
	case <-p.failed:
		return p.err
	case <-ctx.Done():
		return fmt.Errorf("queue a report's result: %w", ctx.Err())
	}
}

// drain waits until every report queued before it is handled, and returns
// the first failed check, if any.
func (p *pipeline) drain(ctx context.Context) error {
	b := make(chan struct{})
	if err := p.push(ctx, inflight{barrier: b}); err != nil {
		return err
	}
	select {
	case <-b:
	case <-ctx.Done():
		return fmt.Errorf("wait for reports in flight: %w", ctx.Err())
	}
	select {
	case <-p.failed:
		return p.err
	default:
		return nil
	}
}

// close stops the queue: run returns once the queued results are handled.
// Only the session's processing goroutine pushes, and it has returned.
func (p *pipeline) close() { close(p.queue) }
