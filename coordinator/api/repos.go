package api

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Repository registration defaults and limits.
const (
	DefaultRepoPipeline     = ".kiln.yaml"
	DefaultRepoPollInterval = 30 * time.Second
	MinRepoPollInterval     = time.Second
	MaxRepoPollInterval     = 24 * time.Hour
	// MaxRepoName keeps "watch/<name>/<64 hex>" within MaxRequestID.
	MaxRepoName = 48
)

var repoName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// AddRepo registers a repository whose branch the leader watches (or
// updates the settings of a registered one; it keeps its last commit and
// build counter). The branch is resolved once so that a wrong URL or
// branch fails here rather than in the watcher's log.
func (s *ControlServer) AddRepo(ctx context.Context, req *kilnv1.AddRepoRequest) (*kilnv1.AddRepoResponse, error) {
	repo, err := validateAddRepo(req)
	if err != nil {
		return nil, err
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.d.Git.Resolve(ctx, repo.GetUrl(), "refs/heads/"+repo.GetBranch())
	if err != nil {
		if errors.Is(err, gitsrc.ErrRefNotFound) {
			return nil, status.Errorf(codes.InvalidArgument, "branch: %s has no branch %q", gitsrc.Redact(repo.GetUrl()), repo.GetBranch())
		}
		return nil, s.d.toStatus(builds.GitError(err))
	}
	out, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_ADD_REPO, &fsmv1.AddRepo{Repo: repo})
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	if out.Err != nil {
		return nil, s.d.toStatus(out.Err)
	}
	s.d.Log.Info("repository registered", zap.String("repo", repo.GetName()), zap.String("url", gitsrc.Redact(repo.GetUrl())),
		zap.String("branch", repo.GetBranch()), zap.String("head", res.Commit))
	r := out.Repo
	if r == nil {
		r = repo
	}
	return &kilnv1.AddRepoResponse{Repo: r}, nil
}

// RemoveRepo unregisters a repository: the watcher stops polling its
// branch. Its builds stay.
func (s *ControlServer) RemoveRepo(ctx context.Context, req *kilnv1.RemoveRepoRequest) (*kilnv1.RemoveRepoResponse, error) {
	if req.GetName() == "" || len(req.GetName()) > MaxNameBytes {
		return nil, invalid("name: give the repository's name (at most %d bytes)", MaxNameBytes)
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	out, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REMOVE_REPO, &fsmv1.RemoveRepo{Name: req.GetName()})
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	if out.Err != nil {
		return nil, s.d.toStatus(out.Err)
	}
	s.d.Log.Info("repository removed", zap.String("repo", req.GetName()))
	return &kilnv1.RemoveRepoResponse{Repo: out.Repo}, nil
}

func validateAddRepo(req *kilnv1.AddRepoRequest) (*kilnv1.Repo, error) {
	name := req.GetName()
	switch {
	case name == "":
		return nil, invalid("name is required")
	case len(name) > MaxRepoName:
		return nil, invalid("name: %d bytes; the limit is %d", len(name), MaxRepoName)
	case !repoName.MatchString(name):
		return nil, invalid("name %q: use lower-case letters, digits, '_', '.' and '-', starting with a letter or digit", name)
	}
	if err := gitsrc.ValidateURL(req.GetUrl()); err != nil {
		return nil, invalid("url: %v", err)
	}
	branch := strings.TrimPrefix(req.GetBranch(), "refs/heads/")
	switch {
	case branch == "":
		return nil, invalid("branch is required")
	case branch == "HEAD" || gitsrc.IsCommit(branch):
		return nil, invalid("branch: %q is not a branch name", branch)
	}
	if err := gitsrc.ValidateRef(branch); err != nil {
		return nil, invalid("branch: %v", err)
	}
	pipeline := req.GetPipeline()
	if pipeline == "" {
		pipeline = DefaultRepoPipeline
	}
	pipeline, err := gitsrc.CleanPath(pipeline)
	if err != nil {
		return nil, invalid("pipeline: %v", err)
	}
	interval := time.Duration(req.GetPollIntervalMs()) * time.Millisecond
	switch {
	case req.GetPollIntervalMs() == 0:
		interval = DefaultRepoPollInterval
	case interval < MinRepoPollInterval:
		return nil, invalid("poll_interval_ms: %d; the minimum is %d (1s)", req.GetPollIntervalMs(), MinRepoPollInterval.Milliseconds())
	case interval > MaxRepoPollInterval:
		return nil, invalid("poll_interval_ms: %d; the maximum is %d (24h)", req.GetPollIntervalMs(), MaxRepoPollInterval.Milliseconds())
	}
	return &kilnv1.Repo{Name: name, Url: req.GetUrl(), Branch: branch, Pipeline: pipeline, PollIntervalMs: interval.Milliseconds()}, nil
}

// ListRepos serves the registered repositories from the local state, with
// passwords in their URLs hidden.
func (s *ControlServer) ListRepos(ctx context.Context, req *kilnv1.ListReposRequest) (*kilnv1.ListReposResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	repos := s.d.Store.Repos()
	out := make([]*kilnv1.Repo, 0, len(repos))
	for _, r := range repos {
		if red := gitsrc.StripCredentials(r.GetUrl()); red != r.GetUrl() {
			r = proto.Clone(r).(*kilnv1.Repo)
			r.Url = red
		}
		out = append(out, r)
	}
	out, next, err := page(out, req.GetPageToken(), "ListRepos")
	if err != nil {
		return nil, err
	}
	return &kilnv1.ListReposResponse{Repos: out, NextPageToken: next}, nil
}
