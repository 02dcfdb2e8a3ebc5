// Package periodic runs background passes on a fixed interval: the shape
// shared by the coordinator's blob catch-up, blob garbage collection and
// artifact-retention loops.
package periodic

import (
	"context"
	"time"
)

// Run waits for ready (when not nil; an error from it ends Run), then calls
// pass at once and every interval until ctx ends. Passes never overlap.
func Run(ctx context.Context, interval time.Duration, ready func(context.Context) error, pass func(context.Context)) {
	if ready != nil {
		if err := ready(ctx); err != nil {
			return
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
