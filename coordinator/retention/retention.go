// Package retention is the leader-only artifact expiry timer. While this
// node leads (started next to the scheduler after the leadership barrier,
// stopped with it), it checks every Interval whether some finished build's
// artifact retention has ended (state.ArtifactsDue: the build's own
// artifact_retention_ms, or Default when that is 0; a Default of 0 keeps
// such builds forever) and, if so, commits ExpireArtifacts{now, Default}.
// The FSM expires at most state.MaxExpiredBuildsPerCommand builds per
// command, so the timer commits again while builds are due. The deadlines
// are replicated state (finished time + retention), so a new leader picks
// them up as they are. The blobs themselves are removed by every node's
// garbage collector (coordinator/blobgc).
package retention

import (
	"context"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/periodic"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
)

// DefaultInterval is how often the timer looks for due builds.
const DefaultInterval = time.Minute

// maxCommandsPerPass bounds the commands one pass commits.
const maxCommandsPerPass = 100

// Applier commits FSM commands; *raftnode.Node implements it.
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
}

// Config is what the timer needs; Store and Raft are required.
type Config struct {
	Store *state.Store
	Raft  Applier
	// Default is the retention of builds that set none
	// (--artifact-retention); 0 keeps them forever.
	Default time.Duration
	// Interval between checks (default 1m).
	Interval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *zap.Logger
}

func (c *Config) defaults() {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

// Run checks at once and then every Interval until ctx ends (leadership
// lost or shutdown).
func Run(ctx context.Context, cfg Config) {
	cfg.defaults()
	periodic.Run(ctx, cfg.Interval, nil, func(ctx context.Context) { Pass(ctx, cfg) })
}

// Pass commits ExpireArtifacts while some build is due and returns the
// number of builds expired.
func Pass(ctx context.Context, cfg Config) int {
	cfg.defaults()
	def := cfg.Default.Milliseconds()
	expired := 0
	for range maxCommandsPerPass {
		now := cfg.Now().UnixMilli()
		if ctx.Err() != nil || !cfg.Store.ArtifactsDue(now, def) {
			break
		}
		res, err := cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_EXPIRE_ARTIFACTS, &fsmv1.ExpireArtifacts{
			TimeUnixMs: now, DefaultRetentionMs: def,
		})
		if err == nil && res != nil {
			err = res.Err
		}
		if err != nil {
			if ctx.Err() == nil {
				cfg.Log.Warn("could not commit artifact expiry; retrying on the next tick", zap.Error(err))
			}
			break
		}
		expired += len(res.Expired)
		cfg.Log.Info("artifact retention ended", zap.Int("builds", len(res.Expired)), zap.Strings("build_ids", res.Expired))
		if len(res.Expired) == 0 {
			break
		}
	}
	return expired
}
