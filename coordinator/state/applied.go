package state

import (
	"context"
	"sync"
)

// appliedSignal wakes the callers of WaitIndex when the store's last
// applied index moves (a command was applied or a snapshot restored). It is
// separate from the per-build change notifications: an index waiter cares
// about every command, a log stream only about its own build.
type appliedSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next advance.
func (a *appliedSignal) wait() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ch == nil {
		a.ch = make(chan struct{})
	}
	return a.ch
}

// advance wakes every current waiter.
func (a *appliedSignal) advance() {
	a.mu.Lock()
	if a.ch != nil {
		close(a.ch)
		a.ch = nil
	}
	a.mu.Unlock()
}

// WaitIndex blocks until the store has applied the Raft command at index
// idx or a later one (or restored a snapshot that far), or ctx ends. It is
// how a read waits for its node to catch up with the leader's read index.
func (s *Store) WaitIndex(ctx context.Context, idx uint64) error {
	for {
		// Take the channel before reading the index so an advance between
		// the two is not missed.
		ch := s.applied.wait()
		if s.LastIndex() >= idx {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}
