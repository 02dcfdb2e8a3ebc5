// Package blobsync is the catch-up of a coordinator's blob store. Blobs
// are not in Raft: an upload is acknowledged once a majority of the voters
// hold it, so a node that was down (or slow) may lack blobs the replicated
// state refers to. Every node, leader or not, runs Run: once at start (after
// it has applied its local Raft log) and then every Interval it lists the
// digests the state refers to (artifacts of every attempt and uploaded
// source archives), and fetches the ones its store lacks from its peers,
// at most Concurrency at a time. A blob no peer holds is retried on the
// next pass.
package blobsync

import (
	"context"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/internal/periodic"
)

// Defaults.
const (
	DefaultInterval    = 10 * time.Second
	DefaultConcurrency = 2
)

// Config is what the loop needs; every func is required except Ready and Log.
type Config struct {
	// Wanted returns the digests the replicated state refers to.
	Wanted func() map[string]bool
	// Has reports whether the local blob store holds a digest.
	Has func(sha string) bool
	// Fetch copies a blob from a peer into the local store.
	Fetch func(ctx context.Context, sha string) error
	// Ready blocks until the node has applied its log (nil: ready at once).
	Ready func(ctx context.Context) error
	// Interval between passes (default 10s).
	Interval time.Duration
	// Concurrency bounds parallel fetches (default 2).
	Concurrency int
	Log         *zap.Logger
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

// Run makes passes until ctx ends.
func Run(ctx context.Context, cfg Config) {
	cfg.defaults()
	periodic.Run(ctx, cfg.Interval, cfg.Ready, func(ctx context.Context) { Pass(ctx, cfg) })
}

// Pass fetches every wanted blob the local store lacks and returns how many
// were fetched and how many failed.
func Pass(ctx context.Context, cfg Config) (fetched, failed int) {
	cfg.defaults()
	var missing []string
	for sha := range cfg.Wanted() {
		if !cfg.Has(sha) {
			missing = append(missing, sha)
		}
	}
	if len(missing) == 0 {
		return 0, 0
	}
	sort.Strings(missing)
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, cfg.Concurrency)
	)
	for _, sha := range missing {
		select {
		case <-ctx.Done():
			wg.Wait()
			return fetched, failed
		case sem <- struct{}{}:
		}
		wg.Add(1)
		go func(sha string) {
			defer wg.Done()
			defer func() { <-sem }()
			err := cfg.Fetch(ctx, sha)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if ctx.Err() == nil {
					cfg.Log.Warn("blob catch-up: fetch failed; retrying on the next pass", zap.String("sha256", sha), zap.Error(err))
				}
				return
			}
			fetched++
		}(sha)
	}
	wg.Wait()
	if fetched > 0 || failed > 0 {
		cfg.Log.Info("blob catch-up pass", zap.Int("missing", len(missing)), zap.Int("fetched", fetched), zap.Int("failed", failed))
	}
	return fetched, failed
}
