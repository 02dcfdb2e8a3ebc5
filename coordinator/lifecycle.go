package coordinator

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/state"
)

// Defaults of the build lifecycle limits.
const (
	// DefaultBuildRetention is how long finished builds are kept.
	DefaultBuildRetention = 90 * 24 * time.Hour
	// DefaultMaxLogBytes is the log kept per job attempt.
	DefaultMaxLogBytes = 1 << 30
	// MinMaxLogBytes is the smallest --max-log-bytes: room for the
	// agent's own lines (checkout, artifacts) and the marker.
	MinMaxLogBytes = 4 << 10
)

// validateLifecycle checks the retention and size limits.
func (c *Config) validateLifecycle() error {
	switch {
	case c.BuildRetention < 0:
		return fmt.Errorf("build-retention: %s is negative (0 keeps builds forever)", c.BuildRetention)
	case c.BuildRetention > 0 && c.BuildRetention < time.Millisecond:
		return fmt.Errorf("build-retention: %s is shorter than a millisecond", c.BuildRetention)
	case c.MaxBuildBytes <= 0 || c.MaxBuildBytes > builds.MaxMaxBuildBytes:
		return fmt.Errorf("max-build-bytes: %d is not within 1..%d (a build must fit in one gRPC message)", c.MaxBuildBytes, builds.MaxMaxBuildBytes)
	case c.MaxLogBytes < MinMaxLogBytes:
		return fmt.Errorf("max-log-bytes: %d is below the %d minimum", c.MaxLogBytes, MinMaxLogBytes)
	}
	return nil
}

// removedQueueLen bounds the expiries waiting for their blobs to be
// deleted; past it the garbage collector deletes them on its next pass.
const removedQueueLen = 64

// removedBuildsQueue registers the store hook that hands every build
// expiry this node applies to removedLoop. It is registered before Raft
// opens so no applied command is missed. The hook never blocks the FSM.
func removedBuildsQueue(store *state.Store, log *zap.Logger) chan state.RemovedBuilds {
	q := make(chan state.RemovedBuilds, removedQueueLen)
	store.OnBuildsRemoved(func(r state.RemovedBuilds) {
		select {
		case q <- r:
		default:
			log.Warn("blob deletion queue full; the garbage collector will delete these blobs",
				zap.Uint64("index", r.Index), zap.Int("blobs", len(r.Blobs)))
		}
	})
	return q
}

// removedLoop deletes, on this node, the blobs of the builds the expiry
// deleted that nothing else refers to, until ctx ends. Blobs touched
// within --blob-gc-grace are kept (a re-upload of the same content whose
// registration is pending); the garbage collector deletes them later if
// they stay unreferenced. With a shared store only the leader deletes.
func (c *Coordinator) removedLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-c.removed:
			c.deleteJobLogs(r.JobIDs)
			if len(r.Blobs) == 0 || !c.gcActive() {
				continue
			}
			cutoff := time.Now().Add(-c.cfg.BlobGCGrace)
			var deleted int
			var bytes int64
			for _, sha := range r.Blobs {
				ok, n, err := c.local.Delete(sha, cutoff)
				if err != nil {
					c.log.Warn("could not delete the blob of an expired build", zap.String("sha256", sha), zap.Error(err))
					continue
				}
				if ok {
					deleted++
					bytes += n
				}
			}
			c.log.Info("deleted the blobs of expired builds", zap.Uint64("index", r.Index), zap.Int("builds", len(r.BuildIDs)),
				zap.Int("blobs", deleted), zap.Int64("bytes", bytes))
		}
	}
}

// deleteJobLogs deletes this node's log store copies of expired jobs. The
// log store is per node (never shared), so every node deletes its own.
func (c *Coordinator) deleteJobLogs(jobIDs []string) {
	for _, id := range jobIDs {
		if err := c.logs.Store().Delete(id); err != nil {
			c.log.Warn("could not delete the log of an expired job", zap.String("job", id), zap.Error(err))
		}
	}
}

// sweepJobLogs deletes the logs of jobs whose build the state no longer
// holds although it has numbered past it: builds removed while this node
// missed the hook (a full queue, or a snapshot restore that skipped the
// expiry). It runs only once this node has caught up with the leader, so
// a job the node has not applied yet is never taken for an expired one.
func (c *Coordinator) sweepJobLogs(ctx context.Context) {
	ids, err := c.logs.Store().Jobs()
	if err != nil {
		c.log.Warn("log sweep: list the log store", zap.Error(err))
		return
	}
	next := c.store.NextBuildNumber()
	var stale []string
	for _, id := range ids {
		if _, ok := c.store.Job(id); ok {
			continue
		}
		num, _, _ := strings.Cut(id, ".")
		n, err := strconv.ParseUint(num, 10, 64)
		if err != nil || n >= next {
			continue // not numbered yet on this node, or not a build's job
		}
		stale = append(stale, id)
	}
	if len(stale) > 0 {
		c.log.Info("deleting the logs of jobs whose builds expired", zap.Int("jobs", len(stale)))
		c.deleteJobLogs(stale)
	}
}

// logSweepInterval is how often sweepJobLogs runs (and once at start,
// after catching up).
const logSweepInterval = time.Hour
