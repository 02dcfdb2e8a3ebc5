// Package retention is the leader-only expiry loop of finished builds.
// While this node leads (started next to the scheduler after the
// leadership barrier, stopped with it), it checks every Interval
// (--expiry-interval) two deadlines:
//
//   - artifacts: whether some finished build's artifact retention has
//     ended (state.ArtifactsDue: the build's own artifact_retention_ms, or
//     Default when that is 0; a Default of 0 keeps such builds' artifacts
//     forever) and, if so, commits ExpireArtifacts{now, Default};
//   - builds: whether some finished build is older than BuildRetention
//     (--build-retention; 0 keeps builds forever) and, if so, commits
//     ExpireBuilds{now, BuildRetention}, which deletes the build with its
//     jobs, logs, test reports and artifact records.
//
// The FSM expires at most state.MaxExpiredBuildsPerCommand builds per
// command, so the loop commits again while builds are due. The deadlines
// are replicated state (finished time + retention), so a new leader picks
// them up as they are. The blobs themselves are removed on every node:
// those of deleted builds by the store's OnBuildsRemoved hook, the rest by
// the garbage collector (coordinator/blobgc).
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
	// Default is the artifact retention of builds that set none
	// (--artifact-retention); 0 keeps them forever.
	Default time.Duration
	// BuildRetention is how long a finished build is kept
	// (--build-retention); 0 keeps builds forever.
	BuildRetention time.Duration
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

// Run checks both deadlines at once and then every Interval until ctx ends (leadership
// lost or shutdown).
func Run(ctx context.Context, cfg Config) {
	cfg.defaults()
	periodic.Run(ctx, cfg.Interval, nil, func(ctx context.Context) {
		// Artifacts first: a build whose artifacts and whole self expire
		// in the same pass loses its artifact records either way.
		Pass(ctx, cfg)
		BuildsPass(ctx, cfg)
	})
}

// Pass commits ExpireArtifacts while some build's artifacts are due and
// returns the number of builds whose artifacts it expired.
func Pass(ctx context.Context, cfg Config) int {
	cfg.defaults()
	def := cfg.Default.Milliseconds()
	return commitWhileDue(ctx, cfg, "artifact retention ended",
		func(now int64) bool { return cfg.Store.ArtifactsDue(now, def) },
		fsmv1.CommandType_COMMAND_TYPE_EXPIRE_ARTIFACTS,
		func(now int64) proto.Message {
			return &fsmv1.ExpireArtifacts{TimeUnixMs: now, DefaultRetentionMs: def}
		})
}

// BuildsPass commits ExpireBuilds while some build is older than
// BuildRetention and returns the number of builds deleted.
func BuildsPass(ctx context.Context, cfg Config) int {
	cfg.defaults()
	keep := cfg.BuildRetention.Milliseconds()
	if keep <= 0 {
		return 0
	}
	return commitWhileDue(ctx, cfg, "build retention ended; builds deleted",
		func(now int64) bool { return cfg.Store.BuildsDue(now, keep) },
		fsmv1.CommandType_COMMAND_TYPE_EXPIRE_BUILDS,
		func(now int64) proto.Message { return &fsmv1.ExpireBuilds{TimeUnixMs: now, RetentionMs: keep} })
}

// commitWhileDue commits the command cmd(now) while due(now), at most
// maxCommandsPerPass times, and returns the builds the commands expired.
func commitWhileDue(ctx context.Context, cfg Config, what string, due func(now int64) bool,
	t fsmv1.CommandType, cmd func(now int64) proto.Message) int {
	expired := 0
	for range maxCommandsPerPass {
		now := cfg.Now().UnixMilli()
		if ctx.Err() != nil || !due(now) {
			break
		}
		res, err := cfg.Raft.Apply(ctx, t, cmd(now))
		if err == nil && res != nil {
			err = res.Err
		}
		if err != nil {
			if ctx.Err() == nil {
				cfg.Log.Warn("could not commit expiry; retrying on the next tick", zap.Stringer("command", t), zap.Error(err))
			}
			break
		}
		expired += len(res.Expired)
		cfg.Log.Info(what, zap.Int("builds", len(res.Expired)), zap.Strings("build_ids", res.Expired))
		if len(res.Expired) == 0 {
			break
		}
	}
	return expired
}
