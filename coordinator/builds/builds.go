// Package builds is the coordinator's build submission service: it turns a
// SubmitBuildRequest into a SubmitBuild command and commits it. It loads
// the build file (internal/buildfile: dialect, steps, `if` conditions,
// env, concurrency, artifact retention) or makes the one step of a
// single-command build, merges the environment (the request's variables
// win over the file's), pins the source — a git ref resolved to a commit
// on the leader before the Raft apply (the FSM never does I/O), or an
// uploaded archive the leader must hold — then commits the command through
// Raft and wakes the scheduler.
//
// The API's SubmitBuild (coordinator/api) validates the wire message and
// calls Submit; the branch watcher (coordinator/watcher) calls Submit
// directly. Refusals are *Error values whose Kind the API maps to a status
// code; leadership and commit errors are raftnode's and the FSM's.
package builds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/internal/buildfile"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/pipeline"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Defaults and limits.
const (
	// MaxEventBytes bounds SubmitBuildRequest.event.
	MaxEventBytes = 64
	// SingleCommandKey is the job key of a build made from one command.
	SingleCommandKey = "run"
	// DefaultSpecFilename names a build file submitted without a file name
	// (it appears in the file:line:column of errors).
	DefaultSpecFilename = "build.yaml"
	// maxNameFromCommand bounds the name taken from a command's first line.
	maxNameFromCommand = 80
	// MaxNameBytes bounds a build's name, from the request or the file.
	MaxNameBytes = 256
	// DefaultMaxBuildBytes is the default of Config.MaxBuildBytes
	// (--max-build-bytes).
	DefaultMaxBuildBytes = 1 << 20
	// MaxMaxBuildBytes caps Config.MaxBuildBytes: a stored build (its
	// jobs' specs plus their runtime fields) must fit in one 4 MiB gRPC
	// message with room to spare, or GetBuild could never return it.
	MaxMaxBuildBytes = 3 << 20
)

// Kind classifies an Error.
type Kind int

// Kinds of Error.
const (
	// KindInvalid: the request or its build file is wrong (the API answers
	// InvalidArgument).
	KindInvalid Kind = iota + 1
	// KindFailedPrecondition: the request is well formed but cannot be
	// served now: its archive is not uploaded, its repository is
	// unreachable (the API answers FailedPrecondition).
	KindFailedPrecondition
)

// Error is a submission the service refuses. Msg is the whole message,
// e.g. "invalid build file:\n" followed by the file:line:column problems.
type Error struct {
	Kind Kind
	Msg  string
	// Err is the cause, if any (a *pipeline.Errors, a gitsrc error).
	Err error
}

// Error returns Msg.
func (e *Error) Error() string { return e.Msg }

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

func invalid(format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: fmt.Sprintf(format, args...)}
}

// IsInvalid reports whether err blames the request: an Error of
// KindInvalid, or a command the FSM refused as malformed.
func IsInvalid(err error) bool {
	var e *Error
	if errors.As(err, &e) && e.Kind == KindInvalid {
		return true
	}
	return errors.Is(err, fsm.ErrInvalidCommand)
}

// GitError classifies an error of internal/gitsrc: a bad URL or ref, or a
// ref the repository lacks, is KindInvalid; an unreachable repository or
// a missing git binary KindFailedPrecondition; a context error is returned
// as it is; anything else is wrapped. Messages start with "source: ".
func GitError(err error) error {
	switch {
	case errors.Is(err, gitsrc.ErrInvalidURL), errors.Is(err, gitsrc.ErrInvalidRef), errors.Is(err, gitsrc.ErrRefNotFound):
		return &Error{Kind: KindInvalid, Msg: "source: " + err.Error(), Err: err}
	case errors.Is(err, gitsrc.ErrUnreachable), errors.Is(err, gitsrc.ErrNoGit):
		return &Error{Kind: KindFailedPrecondition, Msg: "source: " + err.Error(), Err: err}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("source: %w", err)
}

// Applier commits FSM commands; *raftnode.Node implements it.
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
}

// Repos looks up registered repositories; *state.Store implements it.
type Repos interface {
	Repo(name string) (*kilnv1.Repo, bool)
}

// Blobs is what the service asks of the blob store: whether it holds an
// uploaded archive and its size. blobstore.Backend implements it.
type Blobs interface {
	Has(sha string) bool
	Size(sha string) (int64, error)
}

// Config wires a Service. Raft, Repos and Leading are required.
type Config struct {
	Raft  Applier
	Repos Repos
	// Blobs is this node's blob store (nil: no archive is ever held).
	Blobs Blobs
	// Leading reports whether this node leads and its leader work runs.
	// Submit fails with raftnode.ErrNotLeader when it does not, before any
	// git round trip and before the commit.
	Leading func() bool
	// Kick wakes the scheduler after a build is committed (nil: nothing).
	Kick func()
	// Resolve pins a git ref to a commit (default gitsrc.Resolve).
	Resolve func(ctx context.Context, url, ref string) (gitsrc.Resolved, error)
	// HasSecret reports whether a secret a step names exists for builds of
	// the repository (its own or a global one); nil: no secrets exist.
	HasSecret func(repo, name string) bool
	// Now is the clock of command timestamps (default time.Now).
	Now func() time.Time
	// Log defaults to a no-op logger.
	Log *zap.Logger
	// MaxBuildBytes bounds the encoded SubmitBuild command — the build
	// after matrix expansion, with every step's spec — checked before the
	// Raft apply (--max-build-bytes; 0 means DefaultMaxBuildBytes).
	MaxBuildBytes int
}

// Service submits builds.
type Service struct {
	cfg Config
}

// New returns the service.
func New(cfg Config) *Service {
	if cfg.Resolve == nil {
		cfg.Resolve = gitsrc.Resolve
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Kick == nil {
		cfg.Kick = func() {}
	}
	if cfg.MaxBuildBytes <= 0 {
		cfg.MaxBuildBytes = DefaultMaxBuildBytes
	}
	return &Service{cfg: cfg}
}

// Submit builds the SubmitBuild command for req, commits it and returns
// the build. A request id seen before returns the first build (the FSM
// answers it). The request's sizes and names are the API's to check
// (coordinator/api validateSubmit); Submit checks what it needs itself:
// exactly one of a build file or a command, a UTF-8 build file, the event.
//
// Errors: *Error (see Kind), raftnode.ErrNotLeader when this node does not
// lead, raftnode.ErrOutcomeUnknown and the FSM's errors from the commit,
// and context errors.
func (s *Service) Submit(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.Build, error) {
	cmd, err := s.command(ctx, req)
	if err != nil {
		return nil, err
	}
	// After matrix expansion a small file can resolve into a huge build
	// (64 combinations of a 1 MB file made 64 MB); such a build would make
	// every later read of it larger than a gRPC message.
	if n := proto.Size(cmd); n > s.cfg.MaxBuildBytes {
		return nil, invalid("the resolved build is %d bytes (%d steps after matrix expansion); the limit is %d bytes (--max-build-bytes)",
			n, len(cmd.GetSteps()), s.cfg.MaxBuildBytes)
	}
	if err := s.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.cfg.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
	if err != nil {
		// As it is: its message (an FSM rejection) is the client's answer.
		return nil, err
	}
	s.cfg.Log.Info("build submitted", zap.String("build", res.Build.GetId()), zap.String("request", req.GetRequestId()),
		zap.String("submitter", req.GetSubmitter()), zap.Int("jobs", len(res.Build.GetJobs())))
	s.cfg.Kick()
	return res.Build, nil
}

func (s *Service) requireLeader() error {
	if !s.cfg.Leading() {
		return fmt.Errorf("submit build: %w", raftnode.ErrNotLeader)
	}
	return nil
}

// command is the SubmitBuild command for req, source pinned and steps
// resolved, not yet committed.
func (s *Service) command(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*fsmv1.SubmitBuild, error) {
	if err := checkBody(req); err != nil {
		return nil, err
	}
	cmd := &fsmv1.SubmitBuild{
		RequestId:  req.GetRequestId(),
		Submitter:  req.GetSubmitter(),
		Name:       req.GetName(),
		Env:        req.GetEnv(),
		TimeUnixMs: s.cfg.Now().UnixMilli(),
	}
	if err := s.resolveSource(ctx, req, cmd); err != nil {
		return nil, err
	}
	if req.GetSpecYaml() != "" {
		if err := s.fromFile(req, cmd); err != nil {
			return nil, err
		}
	} else {
		cmd.Steps = []*kilnv1.StepSpec{{
			Key:       SingleCommandKey,
			Name:      SingleCommandKey,
			Commands:  []string{req.GetCommand()},
			Agents:    req.GetLabels(),
			TimeoutMs: req.GetTimeoutMs(),
			Retry:     &kilnv1.RetryPolicy{OnAgentLost: 1},
		}}
	}
	// A step with an image runs only on agents with Docker: the implied
	// label is part of the job's required labels.
	pipeline.ApplyImage(cmd.Steps, req.GetImage())
	if cmd.Name == "" {
		cmd.Name = firstLine(req.GetCommand(), maxNameFromCommand)
	}
	if len(cmd.Name) > MaxNameBytes {
		return nil, invalid("name: %d bytes; the limit is %d", len(cmd.Name), MaxNameBytes)
	}
	if err := s.checkSecrets(cmd); err != nil {
		return nil, err
	}
	return cmd, nil
}

// checkSecrets refuses a build whose steps name a secret that is not set
// (for its repository or globally), so a job never runs without one.
func (s *Service) checkSecrets(cmd *fsmv1.SubmitBuild) error {
	repo := cmd.GetSource().GetRepo()
	for _, st := range cmd.GetSteps() {
		for _, name := range st.GetSecrets() {
			if s.cfg.HasSecret == nil || !s.cfg.HasSecret(repo, name) {
				return &Error{Kind: KindFailedPrecondition,
					Msg: fmt.Sprintf("step %s: secret %s is not set (kilnctl secret set %s, with --repo for one repository)", st.GetKey(), name, name)}
			}
		}
	}
	return nil
}

// checkBody checks the parts of a request the build depends on. The API
// checks them too, with the wire limits; the watcher does not go through
// the API.
func checkBody(req *kilnv1.SubmitBuildRequest) error {
	switch {
	case (req.GetSpecYaml() == "") == (req.GetCommand() == ""):
		return invalid("give exactly one of spec_yaml (a build file) or command (one shell command line)")
	case strings.TrimSpace(req.GetSpecYaml()) == "" && strings.TrimSpace(req.GetCommand()) == "":
		return invalid("command: blank (give a shell command line or a build file in spec_yaml)")
	case !utf8.ValidString(req.GetSpecYaml()):
		return invalid("spec_yaml: the build file is not valid UTF-8")
	}
	if img := req.GetImage(); img != "" {
		if err := pipeline.CheckImage(img); err != nil {
			return invalid("image: %v", err)
		}
	}
	return nil
}

// fromFile fills cmd from the request's build file: steps (with `if`
// conditions decided), env (the file's, overridden by the request's),
// name, concurrency group and artifact retention.
func (s *Service) fromFile(req *kilnv1.SubmitBuildRequest, cmd *fsmv1.SubmitBuild) error {
	name := req.GetSpecFilename()
	if name == "" {
		name = DefaultSpecFilename
	}
	f, err := buildfile.Load(name, []byte(req.GetSpecYaml()))
	if err != nil {
		return &Error{Kind: KindInvalid, Msg: "invalid build file:\n" + err.Error(), Err: err}
	}
	cmd.Env = mergeEnv(f.Env(), req.GetEnv())
	if cmd.Steps, err = f.Resolve(conditionContext(req, cmd)); err != nil {
		return &Error{Kind: KindInvalid, Msg: "invalid build file:\n" + err.Error(), Err: err}
	}
	if cmd.Name == "" {
		cmd.Name = f.Name()
	}
	if c := f.Concurrency(); c != nil {
		cmd.ConcurrencyGroup, cmd.ConcurrencyLimit = c.Group, c.Limit
	}
	cmd.ArtifactRetentionMs = f.ArtifactRetention().Milliseconds()
	return nil
}

// mergeEnv returns the build's environment: the build file's variables,
// each overridden by the request's variable of the same name.
func mergeEnv(file, request map[string]string) map[string]string {
	env := make(map[string]string, len(file)+len(request))
	for k, v := range file {
		env[k] = v
	}
	for k, v := range request {
		env[k] = v
	}
	return env
}

// conditionContext is what `if` conditions see: the branch and tag of the
// resolved source unless the request names them, the event ("manual" when
// unset) and the build's environment.
func conditionContext(req *kilnv1.SubmitBuildRequest, cmd *fsmv1.SubmitBuild) pipeline.Context {
	ctx := pipeline.Context{
		Branch: req.GetBranch(),
		Tag:    req.GetTag(),
		Event:  cmd.GetEvent(),
		Env:    cmd.GetEnv(),
	}
	if ctx.Branch == "" {
		ctx.Branch = cmd.GetSource().GetBranch()
	}
	if ctx.Tag == "" {
		ctx.Tag = cmd.GetSource().GetTag()
	}
	if ctx.Event == "" {
		ctx.Event = req.GetEvent()
	}
	if ctx.Event == "" {
		ctx.Event = "manual"
	}
	return ctx
}

func firstLine(s string, max int) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// resolveSource fills cmd.Source and cmd.Event from the request. A git
// source is pinned to a commit here, on the leader, before the Raft apply
// (the FSM never does I/O): a branch, tag or HEAD is resolved with git
// ls-remote; a full commit id in source.commit (the branch watcher passes
// the commit it saw) is taken as is, with the given branch and tag. A
// source naming a registered repository (source.repo) defaults its URL and
// ref to the repository's. Unknown refs are KindInvalid, an unreachable
// repository KindFailedPrecondition.
//
// A retried request (same request id) may resolve again to a newer commit;
// the FSM then returns the first build and ignores the new command.
func (s *Service) resolveSource(ctx context.Context, req *kilnv1.SubmitBuildRequest, cmd *fsmv1.SubmitBuild) error {
	if cmd.Event == "" {
		cmd.Event = req.GetEvent()
	}
	if len(cmd.Event) > MaxEventBytes || strings.ContainsFunc(cmd.Event, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return invalid("event: at most %d bytes without control characters", MaxEventBytes)
	}
	src := req.GetSource()
	if src.GetArchiveSha256() != "" || src.GetArchiveSize() != 0 {
		return s.archiveSource(src, cmd)
	}
	if src.GetGitUrl() == "" && src.GetRepo() == "" {
		if src.GetRef() != "" || src.GetCommit() != "" {
			return invalid("source: ref and commit need source.git_url (or source.repo)")
		}
		return nil
	}
	url, ref := src.GetGitUrl(), src.GetRef()
	if name := src.GetRepo(); name != "" {
		repo, ok := s.cfg.Repos.Repo(name)
		if !ok {
			return invalid("source.repo: no repository %q is registered (see 'kilnctl repo list')", name)
		}
		if url == "" {
			url = repo.GetUrl()
		} else if url != repo.GetUrl() {
			return invalid("source.git_url %q is not the URL of repository %q (%s)", gitsrc.Redact(url), name, gitsrc.Redact(repo.GetUrl()))
		}
		if ref == "" && src.GetCommit() == "" {
			ref = repo.GetBranch()
		}
	}
	if err := gitsrc.ValidateURL(url); err != nil {
		return invalid("source.git_url: %v", err)
	}
	if err := gitsrc.ValidateRef(ref); err != nil {
		return invalid("source.ref: %v", err)
	}
	out := &kilnv1.Source{GitUrl: url, Ref: ref, Repo: src.GetRepo()}
	if c := src.GetCommit(); c != "" {
		if !gitsrc.IsCommit(c) {
			return invalid("source.commit: %q is not a full commit id (40 hex digits)", c)
		}
		for field, v := range map[string]string{"branch": src.GetBranch(), "tag": src.GetTag()} {
			if err := gitsrc.ValidateRef(v); err != nil {
				return invalid("source.%s: %v", field, err)
			}
		}
		out.Commit, out.Branch, out.Tag = strings.ToLower(c), src.GetBranch(), src.GetTag()
		if out.Ref == "" {
			out.Ref = out.Commit
		}
		cmd.Source = out
		return nil
	}
	// Resolving costs a round trip to the repository: let a follower
	// redirect at once instead.
	if err := s.requireLeader(); err != nil {
		return err
	}
	res, err := s.cfg.Resolve(ctx, url, ref)
	if err != nil {
		return GitError(err)
	}
	if out.Ref == "" {
		out.Ref = "HEAD"
	}
	out.Commit, out.Branch, out.Tag = res.Commit, res.Branch, res.Tag
	cmd.Source = out
	return nil
}

// archiveSource takes an uploaded source archive: the blob must already be
// stored on the leader (uploads answer only once a quorum holds it). The
// recorded size is the stored blob's.
func (s *Service) archiveSource(src *kilnv1.Source, cmd *fsmv1.SubmitBuild) error {
	if src.GetGitUrl() != "" || src.GetRepo() != "" || src.GetRef() != "" || src.GetCommit() != "" {
		return invalid("source: give either an uploaded archive (archive_sha256) or a git repository, not both")
	}
	sha := src.GetArchiveSha256()
	if !blobstore.ValidDigest(sha) {
		return invalid("source.archive_sha256: %q is not 64 lower-case hex digits", sha)
	}
	if err := s.requireLeader(); err != nil {
		return err
	}
	if s.cfg.Blobs == nil || !s.cfg.Blobs.Has(sha) {
		return &Error{Kind: KindFailedPrecondition,
			Msg: fmt.Sprintf("source archive %s is not stored: upload the archive first (BlobService.Upload)", sha)}
	}
	size, err := s.cfg.Blobs.Size(sha)
	if err != nil {
		return fmt.Errorf("source archive %s: %w", sha, err)
	}
	if n := src.GetArchiveSize(); n != 0 && n != size {
		return invalid("source.archive_size: %d, but the stored archive %s has %d bytes", n, sha, size)
	}
	cmd.Source = &kilnv1.Source{ArchiveSha256: sha, ArchiveSize: size}
	return nil
}
