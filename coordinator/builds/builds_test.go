package builds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// applier records the SubmitBuild commands and answers with a build made
// from them, the way the FSM would for a new request id.
type applier struct {
	cmds []*fsmv1.SubmitBuild
	err  error
}

func (a *applier) Apply(_ context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	if t != fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD {
		return nil, fmt.Errorf("unexpected command %s", t)
	}
	if a.err != nil {
		return nil, a.err
	}
	cmd := msg.(*fsmv1.SubmitBuild)
	a.cmds = append(a.cmds, cmd)
	b := &kilnv1.Build{Id: fmt.Sprint(len(a.cmds)), Name: cmd.GetName(), Env: cmd.GetEnv(), Source: cmd.GetSource()}
	for _, s := range cmd.GetSteps() {
		b.Jobs = append(b.Jobs, &kilnv1.Job{Key: s.GetKey(), Spec: s})
	}
	return &fsm.Result{Build: b}, nil
}

type repos map[string]*kilnv1.Repo

func (r repos) Repo(name string) (*kilnv1.Repo, bool) { v, ok := r[name]; return v, ok }

type blobs map[string]int64

func (b blobs) Has(sha string) bool { _, ok := b[sha]; return ok }

func (b blobs) Size(sha string) (int64, error) {
	if n, ok := b[sha]; ok {
		return n, nil
	}
	return 0, errors.New("no such blob")
}

const (
	commit  = "0123456789abcdef0123456789abcdef01234567"
	archive = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
)

// service returns a leading service over fakes: one registered repository
// "web", one stored archive, and a resolver that knows refs/heads/main.
func service(ap *applier, leading bool, kicks *int) *Service {
	return New(Config{
		Raft:    ap,
		Repos:   repos{"web": {Name: "web", Url: "https://git.example/web.git", Branch: "main"}},
		Blobs:   blobs{archive: 42},
		Leading: func() bool { return leading },
		Kick:    func() { *kicks++ },
		Resolve: func(_ context.Context, url, ref string) (gitsrc.Resolved, error) {
			switch ref {
			case "main", "refs/heads/main", "":
				return gitsrc.Resolved{Commit: commit, Branch: "main"}, nil
			case "v1":
				return gitsrc.Resolved{Commit: commit, Tag: "v1"}, nil
			case "down":
				return gitsrc.Resolved{}, fmt.Errorf("%w: connection refused", gitsrc.ErrUnreachable)
			}
			return gitsrc.Resolved{}, fmt.Errorf("%w: %q", gitsrc.ErrRefNotFound, ref)
		},
		Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) },
	})
}

func keys(steps []*kilnv1.StepSpec) string {
	var ks []string
	for _, s := range steps {
		k := s.GetKey()
		if s.GetSkipReason() != "" {
			k += "(skipped)"
		}
		ks = append(ks, k)
	}
	return strings.Join(ks, ",")
}

func TestSubmit(t *testing.T) {
	const pipelineFile = `name: web
env: {A: file, B: file}
concurrency: {group: deploy}
artifact_retention: 48h
steps:
  - {key: test, command: make test}
  - {key: deploy, command: make deploy, if: branch == "main" && env.B == "request"}
`
	tests := []struct {
		name string
		req  *kilnv1.SubmitBuildRequest
		// check inspects the committed command.
		check func(t *testing.T, cmd *fsmv1.SubmitBuild)
	}{
		{
			name: "single command",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "make test\necho done", Labels: map[string]string{"os": "linux"},
				TimeoutMs: 1234, Env: map[string]string{"A": "1"}, Submitter: "alice"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				if len(cmd.GetSteps()) != 1 {
					t.Fatalf("steps %v", cmd.GetSteps())
				}
				s := cmd.GetSteps()[0]
				if s.GetKey() != SingleCommandKey || s.GetName() != SingleCommandKey || s.GetCommands()[0] != "make test\necho done" ||
					s.GetAgents()["os"] != "linux" || s.GetTimeoutMs() != 1234 || s.GetRetry().GetOnAgentLost() != 1 {
					t.Fatalf("step %v", s)
				}
				if cmd.GetName() != "make test" || cmd.GetEnv()["A"] != "1" || cmd.GetSubmitter() != "alice" ||
					cmd.GetRequestId() != "r" || cmd.GetTimeUnixMs() != 1_700_000_000_000 || cmd.GetSource() != nil {
					t.Fatalf("command %v", cmd)
				}
			},
		},
		{
			name: "image: every command step gets it and requires docker=true",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", Image: "alpine:3.20", SpecYaml: "version: 0.2\nphases:\n  build:\n    commands: [make]\n",
				SpecFilename: "buildspec.yml"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				s := cmd.GetSteps()[0]
				if s.GetRuntime().GetImage() != "alpine:3.20" || s.GetAgents()["docker"] != "true" {
					t.Fatalf("step %v", s)
				}
			},
		},
		{
			name: "image: a step's own image wins; the other steps get the request's",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", Image: "alpine:3.20",
				SpecYaml: "steps:\n  - {key: a, command: x, image: 'golang:1.23'}\n  - {key: b, command: y}\n"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				a, b := cmd.GetSteps()[0], cmd.GetSteps()[1]
				if a.GetRuntime().GetImage() != "golang:1.23" || a.GetAgents()["docker"] != "true" ||
					b.GetRuntime().GetImage() != "alpine:3.20" || b.GetAgents()["docker"] != "true" {
					t.Fatalf("steps %v", cmd.GetSteps())
				}
			},
		},
		{
			name: "single command name is cut at 80 bytes",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", Command: strings.Repeat("x", 100)},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				if len(cmd.GetName()) != 80 {
					t.Fatalf("name %q", cmd.GetName())
				}
			},
		},
		{
			name: "build file",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: pipelineFile, SpecFilename: ".kiln.yaml"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				// No branch: the deploy step's `if` is false.
				if got := keys(cmd.GetSteps()); got != "test,deploy(skipped)" {
					t.Fatalf("steps %s", got)
				}
				if cmd.GetName() != "web" || cmd.GetConcurrencyGroup() != "deploy" || cmd.GetConcurrencyLimit() != 1 ||
					cmd.GetArtifactRetentionMs() != (48*time.Hour).Milliseconds() {
					t.Fatalf("command %v", cmd)
				}
			},
		},
		{
			name: "request name wins over the file's",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: pipelineFile, Name: "mine"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				if cmd.GetName() != "mine" {
					t.Fatalf("name %q", cmd.GetName())
				}
			},
		},
		{
			name: "env merge: the request's variables win, and `if` sees the merged env and the branch",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: pipelineFile, Branch: "main",
				Env: map[string]string{"B": "request", "C": "request"}},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				want := map[string]string{"A": "file", "B": "request", "C": "request"}
				if fmt.Sprint(cmd.GetEnv()) != fmt.Sprint(want) {
					t.Fatalf("env %v, want %v", cmd.GetEnv(), want)
				}
				if got := keys(cmd.GetSteps()); got != "test,deploy" {
					t.Fatalf("steps %s", got)
				}
			},
		},
		{
			name: "buildspec dialect",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", SpecFilename: "buildspec.yml",
				SpecYaml: "version: 0.2\nphases:\n  build:\n    commands:\n      - make\n"},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				if len(cmd.GetSteps()) != 1 {
					t.Fatalf("steps %v", cmd.GetSteps())
				}
			},
		},
		{
			name: "git branch resolved; `if` sees the resolved branch; event defaults to the request's",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: pipelineFile, Event: "api",
				Env: map[string]string{"B": "request"}, Source: &kilnv1.Source{GitUrl: "https://git.example/x.git", Ref: "main"}},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				want := &kilnv1.Source{GitUrl: "https://git.example/x.git", Ref: "main", Commit: commit, Branch: "main"}
				if !proto.Equal(cmd.GetSource(), want) || cmd.GetEvent() != "api" {
					t.Fatalf("source %v event %q", cmd.GetSource(), cmd.GetEvent())
				}
				if got := keys(cmd.GetSteps()); got != "test,deploy" {
					t.Fatalf("steps %s", got)
				}
			},
		},
		{
			name: "pinned commit of a registered repository (the watcher's request)",
			req: &kilnv1.SubmitBuildRequest{RequestId: "watch/web/" + commit, Command: "true", Event: "push",
				Source: &kilnv1.Source{Repo: "web", Commit: strings.ToUpper(commit), Branch: "main"}},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				want := &kilnv1.Source{GitUrl: "https://git.example/web.git", Ref: commit, Commit: commit, Branch: "main", Repo: "web"}
				if !proto.Equal(cmd.GetSource(), want) || cmd.GetEvent() != "push" {
					t.Fatalf("source %v event %q", cmd.GetSource(), cmd.GetEvent())
				}
			},
		},
		{
			name: "uploaded archive: the stored size is recorded",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{ArchiveSha256: archive}},
			check: func(t *testing.T, cmd *fsmv1.SubmitBuild) {
				if !proto.Equal(cmd.GetSource(), &kilnv1.Source{ArchiveSha256: archive, ArchiveSize: 42}) {
					t.Fatalf("source %v", cmd.GetSource())
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ap, kicks := &applier{}, 0
			b, err := service(ap, true, &kicks).Submit(context.Background(), tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(ap.cmds) != 1 || b.GetId() != "1" || kicks != 1 {
				t.Fatalf("%d commands, build %v, %d kicks", len(ap.cmds), b, kicks)
			}
			tt.check(t, ap.cmds[0])
		})
	}
}

func TestSubmitRefused(t *testing.T) {
	tests := []struct {
		name    string
		req     *kilnv1.SubmitBuildRequest
		leading bool
		kind    Kind
		// is is the error the result wraps, when kind is 0.
		is error
		// msg must appear in the message.
		msg []string
	}{
		{
			name: "bad build file gives file:line:col",
			req: &kilnv1.SubmitBuildRequest{RequestId: "r", SpecFilename: "kiln.yaml",
				SpecYaml: "name: x\nstages:\n  - name: build\n    stepz: []\n    steps:\n      - key: compile\n        comands: [make]\n"},
			leading: true, kind: KindInvalid,
			msg: []string{"invalid build file:\n", "kiln.yaml:4:5:", "stepz", "kiln.yaml:7:9:", "comands"},
		},
		{
			name:    "YAML syntax error in the default file name",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "steps: [\n"},
			leading: true, kind: KindInvalid, msg: []string{DefaultSpecFilename + ":"},
		},
		{
			name:    "bad if condition",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "steps:\n  - {key: a, command: x, if: 'branch =='}\n"},
			leading: true, kind: KindInvalid, msg: []string{"build.yaml:2:"},
		},
		{
			name:    "invalid image",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Image: "bad image"},
			leading: true, kind: KindInvalid, msg: []string{"image: ", `"bad image"`},
		},
		{
			name:    "empty build file and no command",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r"},
			leading: true, kind: KindInvalid, msg: []string{"exactly one of spec_yaml"},
		},
		{
			name:    "blank build file",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: " \n"},
			leading: true, kind: KindInvalid, msg: []string{"blank"},
		},
		{
			name:    "build file not UTF-8",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "name: \xff"},
			leading: true, kind: KindInvalid, msg: []string{"UTF-8"},
		},
		{
			name:    "event with a control character",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Event: "a\nb"},
			leading: true, kind: KindInvalid, msg: []string{"event"},
		},
		{
			name:    "unknown ref",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{GitUrl: "https://git.example/x.git", Ref: "gone"}},
			leading: true, kind: KindInvalid, msg: []string{"source: ", `"gone"`},
		},
		{
			name:    "unreachable repository",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{GitUrl: "https://git.example/x.git", Ref: "down"}},
			leading: true, kind: KindFailedPrecondition, msg: []string{"source: "},
		},
		{
			name:    "unregistered repository",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{Repo: "nope"}},
			leading: true, kind: KindInvalid, msg: []string{"no repository"},
		},
		{
			name:    "archive not uploaded",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{ArchiveSha256: strings.Repeat("b", 64)}},
			leading: true, kind: KindFailedPrecondition, msg: []string{"upload the archive first"},
		},
		{
			name:    "archive size differs",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{ArchiveSha256: archive, ArchiveSize: 7}},
			leading: true, kind: KindInvalid, msg: []string{"archive_size"},
		},
		{
			// A 30 KB command in a 64-combination matrix resolves to ~2 MB:
			// refused after expansion, before the apply.
			name:    "resolved build over --max-build-bytes",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: matrixFile(30 << 10)},
			leading: true, kind: KindInvalid, msg: []string{"the resolved build is ", "64 steps", "the limit is 1048576 bytes (--max-build-bytes)"},
		},
		{
			name:    "name in the build file too long",
			req:     &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "name: " + strings.Repeat("n", 300) + "\nsteps:\n  - {key: a, command: x}\n"},
			leading: true, kind: KindInvalid, msg: []string{"name: 300 bytes; the limit is 256"},
		},
		{
			name: "follower",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true"},
			is:   raftnode.ErrNotLeader,
		},
		{
			name: "follower before resolving a ref",
			req:  &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true", Source: &kilnv1.Source{GitUrl: "https://git.example/x.git"}},
			is:   raftnode.ErrNotLeader,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ap, kicks := &applier{}, 0
			_, err := service(ap, tt.leading, &kicks).Submit(context.Background(), tt.req)
			if len(ap.cmds) != 0 || kicks != 0 {
				t.Fatalf("refused request committed: %v", ap.cmds)
			}
			if tt.is != nil {
				if !errors.Is(err, tt.is) {
					t.Fatalf("got %v, want %v", err, tt.is)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Kind != tt.kind {
				t.Fatalf("got %v (%T), want an Error of kind %d", err, err, tt.kind)
			}
			if IsInvalid(err) != (tt.kind == KindInvalid) {
				t.Fatalf("IsInvalid(%v) = %v", err, IsInvalid(err))
			}
			for _, m := range tt.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("message %q lacks %q", err.Error(), m)
				}
			}
		})
	}
}

// matrixFile is a build file of one step with a command of n bytes and an
// 8×8 matrix: 64 jobs once expanded.
func matrixFile(n int) string {
	return "steps:\n  - key: t\n    matrix: {a: [1, 2, 3, 4, 5, 6, 7, 8], b: [1, 2, 3, 4, 5, 6, 7, 8]}\n    commands: [\"echo " +
		strings.Repeat("x", n) + "\"]\n"
}

func TestSubmitBuildSizeLimit(t *testing.T) {
	ap, kicks := &applier{}, 0
	// Just under the limit: accepted; the limit is on the resolved command.
	if _, err := service(ap, true, &kicks).Submit(context.Background(), &kilnv1.SubmitBuildRequest{RequestId: "ok", SpecYaml: matrixFile(10 << 10)}); err != nil {
		t.Fatalf("a 64-job build of ~700 KB was refused: %v", err)
	}
	if n := proto.Size(ap.cmds[0]); n > DefaultMaxBuildBytes || len(ap.cmds[0].GetSteps()) != 64 {
		t.Fatalf("accepted build is %d bytes with %d steps", n, len(ap.cmds[0].GetSteps()))
	}
	// A lower configured limit applies.
	svc := service(ap, true, &kicks)
	svc.cfg.MaxBuildBytes = 4096
	_, err := svc.Submit(context.Background(), &kilnv1.SubmitBuildRequest{RequestId: "small", Command: strings.Repeat("y", 5000)})
	if !IsInvalid(err) || !strings.Contains(err.Error(), "the limit is 4096 bytes (--max-build-bytes)") {
		t.Fatalf("got %v, want the limit named", err)
	}
	if len(ap.cmds) != 1 {
		t.Fatalf("refused build committed")
	}
}

func TestSubmitCommitErrors(t *testing.T) {
	for _, want := range []error{raftnode.ErrOutcomeUnknown, fmt.Errorf("submit: %w", fsm.ErrInvalidCommand)} {
		kicks := 0
		_, err := service(&applier{err: want}, true, &kicks).Submit(context.Background(),
			&kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true"})
		if !errors.Is(err, want) || kicks != 0 {
			t.Fatalf("got %v (%d kicks), want %v", err, kicks, want)
		}
	}
	if !IsInvalid(fmt.Errorf("x: %w", fsm.ErrInvalidCommand)) || IsInvalid(raftnode.ErrOutcomeUnknown) || IsInvalid(nil) {
		t.Fatal("IsInvalid")
	}
}

func TestGitError(t *testing.T) {
	tests := []struct {
		err  error
		kind Kind
	}{
		{fmt.Errorf("%w: x", gitsrc.ErrInvalidURL), KindInvalid},
		{fmt.Errorf("%w: x", gitsrc.ErrInvalidRef), KindInvalid},
		{fmt.Errorf("%w: x", gitsrc.ErrRefNotFound), KindInvalid},
		{fmt.Errorf("%w: x", gitsrc.ErrUnreachable), KindFailedPrecondition},
		{fmt.Errorf("%w: x", gitsrc.ErrNoGit), KindFailedPrecondition},
		{context.Canceled, 0},
		{errors.New("odd"), 0},
	}
	for _, tt := range tests {
		got := GitError(tt.err)
		var e *Error
		isErr := errors.As(got, &e)
		switch {
		case tt.kind == 0 && isErr, tt.kind != 0 && (!isErr || e.Kind != tt.kind):
			t.Errorf("GitError(%v) = %v (%T), want kind %d", tt.err, got, got, tt.kind)
		case !errors.Is(got, tt.err):
			t.Errorf("GitError(%v) = %v does not wrap it", tt.err, got)
		case tt.err != context.Canceled && !strings.HasPrefix(got.Error(), "source: "):
			t.Errorf("GitError(%v) = %q", tt.err, got)
		}
	}
}
