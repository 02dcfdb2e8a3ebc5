package state

import "context"

// WaitIndex blocks until the store has applied the Raft command at index
// idx or a later one (or restored a snapshot that far), or ctx ends. It is
// how a read waits for its node to catch up with the leader's read index.
func (s *Store) WaitIndex(ctx context.Context, idx uint64) error {
	for {
		// Take the channel before reading the index so an advance between
		// the two is not missed.
		ch := s.changed.wait()
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
