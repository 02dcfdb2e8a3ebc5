// Package watcher is the leader-only branch watcher: it polls the branch of
// every registered repository and starts a build of the repository's
// pipeline file for each new branch tip a poll sees.
//
// The branch tip of each poll is built, once: a poll that sees a tip other
// than the repository's last_commit submits the build through the builds
// service (coordinator/builds, what the API's SubmitBuild calls) with the
// request id "watch/<repo>/<commit>", and only then commits
// RepoPolled{repo, commit}. A leader that dies between the two leaves
// last_commit behind; the next leader polls, sees the same commit and
// submits the same request id again, which the FSM answers with the first
// build. Commits pushed together between two polls are not built one by
// one: only the tip the poll sees is.
//
// A pipeline file that is missing, too large or does not parse starts a
// build that is FAILED at once, with no jobs and the problems as its
// reason (SubmitBuild.invalid_reason, same request id), which also sets
// the repository's last_error: the broken commit shows in `kilnctl builds`
// and `kilnctl repo list`. The commit is recorded as polled, so it is not
// fetched again on every poll; the next commit is tried afresh. Errors
// reaching the repository or the cluster are retried at the next poll.
package watcher

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Defaults and limits.
const (
	// MaxPipelineBytes bounds the pipeline file read from a commit.
	MaxPipelineBytes = 1 << 20
	// DefaultPollInterval applies to repositories without an interval.
	DefaultPollInterval = 30 * time.Second
	// MinPollInterval is the shortest interval honored.
	MinPollInterval = time.Second
	// Submitter is the submitter of the builds the watcher starts.
	Submitter = "watcher"
	// Event is the event of the builds the watcher starts.
	Event = "push"
)

// Store is what the watcher reads from the replicated state.
type Store interface {
	Repos() []*kilnv1.Repo
	RequestBuild(requestID string) (string, bool)
}

// Applier commits FSM commands; *raftnode.Node implements it.
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
}

// SubmitFunc submits a build: (*builds.Service).Submit. A rejected request
// or build file is an error builds.IsInvalid reports.
type SubmitFunc func(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.Build, error)

// Config wires a Watcher.
type Config struct {
	Store  Store
	Raft   Applier
	Submit SubmitFunc
	Log    *zap.Logger
	// Tick is how often the repository list is checked for due polls
	// (default 250ms).
	Tick time.Duration
	// MaxConcurrent bounds the polls running at once (default 8).
	MaxConcurrent int
	// RetryDelay is the wait before polling again after a failed poll,
	// when shorter than the repository's interval (default 1s).
	RetryDelay time.Duration
	// Resolve and ReadFile default to internal/gitsrc.
	Resolve  func(ctx context.Context, url, ref string) (gitsrc.Resolved, error)
	ReadFile func(ctx context.Context, url, commit, path string, maxBytes int64) ([]byte, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Watcher polls registered repositories while Run runs.
type Watcher struct {
	cfg Config
}

// New returns a watcher; Run it while this node leads.
func New(cfg Config) *Watcher {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 250 * time.Millisecond
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 8
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.Resolve == nil {
		cfg.Resolve = gitsrc.Resolve
	}
	if cfg.ReadFile == nil {
		cfg.ReadFile = gitsrc.ReadFile
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Watcher{cfg: cfg}
}

// RequestID is the submit request id of the build for a repository commit.
func RequestID(repo, commit string) string { return "watch/" + repo + "/" + commit }

// Interval is a repository's effective poll interval.
func Interval(r *kilnv1.Repo) time.Duration {
	d := time.Duration(r.GetPollIntervalMs()) * time.Millisecond
	switch {
	case d <= 0:
		return DefaultPollInterval
	case d < MinPollInterval:
		return MinPollInterval
	}
	return d
}

type polled struct {
	name string
	err  error
}

// Run polls until ctx is canceled (leadership lost or shutdown). Every
// repository is polled at once when Run starts (a new leader catches up on
// what its predecessor may have missed), then every poll interval. Run
// returns after every poll it started has stopped.
func (w *Watcher) Run(ctx context.Context) {
	log := w.cfg.Log
	log.Info("branch watcher started")
	defer log.Info("branch watcher stopped")
	var wg sync.WaitGroup
	defer wg.Wait()
	next := map[string]time.Time{}
	inflight := map[string]bool{}
	results := make(chan polled)
	sem := make(chan struct{}, w.cfg.MaxConcurrent)
	ticker := time.NewTicker(w.cfg.Tick)
	defer ticker.Stop()
	for {
		now := w.cfg.Now()
		for _, r := range w.cfg.Store.Repos() {
			name := r.GetName()
			if inflight[name] || now.Before(next[name]) {
				continue
			}
			select {
			case sem <- struct{}{}:
			default:
				continue // at the limit; the next tick tries again
			}
			inflight[name] = true
			wg.Add(1)
			go func(r *kilnv1.Repo) {
				defer wg.Done()
				err := w.poll(ctx, r)
				<-sem
				select {
				case results <- polled{name: r.GetName(), err: err}:
				case <-ctx.Done():
				}
			}(r)
		}
		select {
		case <-ctx.Done():
			return
		case res := <-results:
			inflight[res.name] = false
			interval := time.Duration(0)
			for _, r := range w.cfg.Store.Repos() {
				if r.GetName() == res.name {
					interval = Interval(r)
				}
			}
			if res.err != nil {
				if ctx.Err() == nil {
					log.Warn("poll failed", zap.String("repo", res.name), zap.Error(res.err))
				}
				interval = min(interval, w.cfg.RetryDelay)
			}
			next[res.name] = w.cfg.Now().Add(interval)
		case <-ticker.C:
		}
	}
}

// poll checks one repository once and starts a build for a new commit.
func (w *Watcher) poll(ctx context.Context, r *kilnv1.Repo) error {
	name := r.GetName()
	log := w.cfg.Log.With(zap.String("repo", name), zap.String("branch", r.GetBranch()))
	res, err := w.cfg.Resolve(ctx, r.GetUrl(), "refs/heads/"+r.GetBranch())
	if err != nil {
		return err
	}
	commit := res.Commit
	if commit == r.GetLastCommit() {
		return nil
	}
	log = log.With(zap.String("commit", commit))
	reqID := RequestID(name, commit)
	if id, done := w.cfg.Store.RequestBuild(reqID); done {
		// Built by an earlier leader that died before recording the poll.
		log.Info("commit already built", zap.String("build", id))
		return w.recordPolled(ctx, name, commit)
	}
	src := &kilnv1.Source{GitUrl: r.GetUrl(), Ref: r.GetBranch(), Commit: commit, Branch: r.GetBranch(), Repo: name}
	data, err := w.cfg.ReadFile(ctx, r.GetUrl(), commit, r.GetPipeline(), MaxPipelineBytes)
	switch {
	case errors.Is(err, gitsrc.ErrFileNotFound), errors.Is(err, gitsrc.ErrFileTooLarge):
		if err := w.submitBroken(ctx, log, reqID, src, "pipeline file "+r.GetPipeline()+": "+err.Error()); err != nil {
			return err
		}
		return w.recordPolled(ctx, name, commit)
	case err != nil:
		return err
	}
	b, err := w.cfg.Submit(ctx, &kilnv1.SubmitBuildRequest{
		RequestId:    reqID,
		Submitter:    Submitter,
		SpecYaml:     string(data),
		SpecFilename: r.GetPipeline(),
		Source:       src,
		Branch:       r.GetBranch(),
		Event:        Event,
	})
	if builds.IsInvalid(err) {
		if err := w.submitBroken(ctx, log, reqID, src, err.Error()); err != nil {
			return err
		}
		return w.recordPolled(ctx, name, commit)
	}
	if err != nil {
		return err
	}
	log.Info("build started for new commit", zap.String("build", b.GetId()), zap.Uint64("repo_build_number", b.GetRepoBuildNumber()))
	return w.recordPolled(ctx, name, commit)
}

// submitBroken commits the FAILED build recording a commit whose pipeline
// file could not be used, with reason (bounded) as its reason.
func (w *Watcher) submitBroken(ctx context.Context, log *zap.Logger, reqID string, src *kilnv1.Source, reason string) error {
	if len(reason) > state.MaxInvalidReason {
		reason = strings.ToValidUTF8(reason[:state.MaxInvalidReason-len(truncated)], "") + truncated
	}
	res, err := w.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: reqID, Submitter: Submitter, Source: src, Event: Event,
		TimeUnixMs: w.cfg.Now().UnixMilli(), InvalidReason: reason,
	})
	if err != nil {
		return err
	}
	if res.Err != nil {
		return res.Err
	}
	log.Warn("new commit not built: pipeline file unusable; recorded as a failed build",
		zap.String("build", res.Build.GetId()), zap.String("reason", reason))
	return nil
}

// truncated ends a reason cut to state.MaxInvalidReason.
const truncated = "\n... (truncated)"

func (w *Watcher) recordPolled(ctx context.Context, name, commit string) error {
	res, err := w.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED, &fsmv1.RepoPolled{Name: name, Commit: commit})
	if err != nil {
		return err
	}
	return res.Err
}
