package leader

import (
	"context"
	"errors"
)

// errNoAddrs is returned by Follow when it is given no address to call.
var errNoAddrs = errors.New("leader: no coordinator address to call")

// Follow calls call at each of addrs in turn until one call succeeds, and
// follows "not the leader" answers: when a call fails with a NotLeader
// detail naming another address, the next call goes to that address at
// once, at most maxHops times per address of addrs (two nodes naming each
// other during an election must not spin). A call that fails otherwise, or
// whose hint names no address, the address just called or one past the
// hop budget, moves on to the next address of addrs.
//
// Follow returns nil at the first success, else the error of the last call,
// unwrapped, so the caller can still read its status and hint (leader.Hint
// of a returned NotLeader error names where to go after a backoff). It
// makes no call after ctx ends; call should honour ctx itself. With no
// addresses it returns an error without calling. Backoff between rounds,
// and which errors are worth another round, are the caller's to decide.
func Follow(ctx context.Context, addrs []string, maxHops int, call func(ctx context.Context, addr string) error) error {
	if len(addrs) == 0 {
		return errNoAddrs
	}
	var err error
	for i, addr := range addrs {
		if i > 0 && ctx.Err() != nil {
			return err
		}
		for hops := 0; ; hops++ {
			if err = call(ctx, addr); err == nil {
				return nil
			}
			hint, ok := Hint(err)
			if !ok || hint == "" || hint == addr || hops >= maxHops || ctx.Err() != nil {
				break
			}
			addr = hint
		}
	}
	return err
}
