// Package blobgc is the garbage collector of a coordinator's blob store.
// Every node, leader or not, runs Run: once its local Raft log is applied
// and then every Interval, it deletes the local blobs the replicated state
// no longer refers to. Referenced are the digests of every registered
// artifact (of any attempt) and the uploaded source archives of builds
// whose retention has not ended (unfinished builds, and finished ones
// whose artifacts have not expired): state.ArtifactDigests ∪
// state.SourceArchiveDigests. Artifact retention (ExpireArtifacts, committed
// by the leader) removes references; this loop removes the blobs.
//
// A blob written or touched less than Grace ago is never deleted: it may be
// an upload whose registration (RegisterArtifacts, or the SubmitBuild
// naming a source archive) is not committed yet. The store's Delete
// re-checks the age under the lock Put takes to touch a blob, so a
// concurrent re-upload of the same digest is never lost.
//
// A node whose state lags the cluster may delete a blob that a newer
// command references again; blobsync fetches it back from a peer once the
// node has caught up (an upload is acknowledged only once a majority holds
// it).
//
// With a store every coordinator shares (an object store bucket), Active
// limits the passes to the leader: one collector per bucket, and the
// store's Delete is ordered against Put (which only the leader serves) in
// that process.
package blobgc

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/internal/periodic"
)

// Defaults.
const (
	DefaultInterval = 10 * time.Minute
	DefaultGrace    = time.Hour
)

// Blobs is the blob store; every blobstore.Backend implements it.
type Blobs interface {
	List() ([]blobstore.Info, error)
	Delete(sha string, notAfter time.Time) (bool, int64, error)
}

// Config is what the loop needs; Referenced and Blobs are required.
type Config struct {
	// Referenced returns the digests the replicated state refers to.
	Referenced func() map[string]bool
	Blobs      Blobs
	// Ready blocks until the node has applied its log (nil: ready at
	// once). Without it a starting node would see an empty state.
	Ready func(ctx context.Context) error
	// Active reports whether this node collects now (nil: always); a pass
	// while it is false does nothing.
	Active func() bool
	// Interval between passes (default 10m).
	Interval time.Duration
	// Grace is the minimum age of a deleted blob (default 1h).
	Grace time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *zap.Logger
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Grace <= 0 {
		c.Grace = DefaultGrace
	}
	if c.Now == nil {
		c.Now = time.Now
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

// Pass deletes every unreferenced blob older than the grace period and
// returns how many it deleted and the bytes freed.
func Pass(ctx context.Context, cfg Config) (deleted int, bytes int64) {
	cfg.defaults()
	if cfg.Active != nil && !cfg.Active() {
		return 0, 0
	}
	// List first, then read the references: a blob registered between
	// the two is then seen as referenced (or is young).
	blobs, err := cfg.Blobs.List()
	if err != nil {
		cfg.Log.Warn("blob gc: cannot list the blob store", zap.Error(err))
		return 0, 0
	}
	ref := cfg.Referenced()
	cutoff := cfg.Now().Add(-cfg.Grace)
	failed := 0
	for _, b := range blobs {
		if ctx.Err() != nil {
			break
		}
		if ref[b.Sha256] || b.ModTime.After(cutoff) {
			continue
		}
		ok, size, err := cfg.Blobs.Delete(b.Sha256, cutoff)
		if err != nil {
			failed++
			cfg.Log.Warn("blob gc: delete failed", zap.String("sha256", b.Sha256), zap.Error(err))
			continue
		}
		if ok {
			deleted++
			bytes += size
			cfg.Log.Debug("blob gc: deleted", zap.String("sha256", b.Sha256), zap.Int64("bytes", size))
		}
	}
	if deleted > 0 || failed > 0 {
		cfg.Log.Info("blob gc pass", zap.Int("blobs", len(blobs)), zap.Int("deleted", deleted),
			zap.Int64("bytes_freed", bytes), zap.Int("failed", failed))
	}
	return deleted, bytes
}
