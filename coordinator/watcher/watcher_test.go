package watcher

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// applier applies commands straight to a real FSM, like a one-node Raft.
type applier struct {
	mu  sync.Mutex
	f   *fsm.FSM
	idx uint64
	// failPolled makes that many RepoPolled applies fail (a leader dying
	// between the submit and the record).
	failPolled atomic.Int32
}

func (a *applier) Apply(_ context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	if t == fsmv1.CommandType_COMMAND_TYPE_REPO_POLLED && a.failPolled.Add(-1) >= 0 {
		return nil, errors.New("leadership lost")
	}
	data, err := fsm.Encode(t, msg)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.idx++
	return a.f.Apply(&raft.Log{Index: a.idx, Term: 1, Type: raft.LogCommand, Data: data}).(*fsm.Result), nil
}

type harness struct {
	t       *testing.T
	store   *state.Store
	ap      *applier
	submits atomic.Int32
}

func newHarness(t *testing.T) *harness {
	store := state.New()
	return &harness{t: t, store: store, ap: &applier{f: fsm.New(store, nil)}}
}

// submit stands in for the API: a spec containing "invalid" is rejected
// the way a pipeline parse error is.
func (h *harness) submit(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.Build, error) {
	h.submits.Add(1)
	if strings.Contains(req.GetSpecYaml(), "invalid") {
		return nil, &builds.Error{Kind: builds.KindInvalid, Msg: "invalid build file"}
	}
	res, err := h.ap.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: req.GetRequestId(), Submitter: req.GetSubmitter(), Source: req.GetSource(), Event: req.GetEvent(),
		Steps: []*kilnv1.StepSpec{{Key: "a", Commands: []string{req.GetSpecYaml()}}},
	})
	if err != nil {
		return nil, err
	}
	return res.Build, res.Err
}

func (h *harness) run(cfg Config) func() {
	cfg.Store, cfg.Raft, cfg.Submit = h.store, h.ap, h.submit
	cfg.Log = zaptest.NewLogger(h.t)
	cfg.Tick = 10 * time.Millisecond
	cfg.RetryDelay = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); New(cfg).Run(ctx) }()
	stop := func() { cancel(); <-done }
	h.t.Cleanup(stop)
	return stop
}

func (h *harness) addRepo(name, url string) {
	h.t.Helper()
	res, err := h.ap.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_ADD_REPO, &fsmv1.AddRepo{Repo: &kilnv1.Repo{
		Name: name, Url: url, Branch: "main", Pipeline: ".kiln.yaml", PollIntervalMs: 1000}})
	if err != nil || res.Err != nil {
		h.t.Fatalf("add repo: %v %v", err, res.Err)
	}
}

// builds returns the builds of the repository, oldest first.
func (h *harness) builds() []*kilnv1.Build {
	all := h.store.ListBuilds(1000)
	out := make([]*kilnv1.Build, 0, len(all))
	for i := len(all) - 1; i >= 0; i-- {
		out = append(out, all[i])
	}
	return out
}

func (h *harness) lastCommit(name string) string {
	r, _ := h.store.Repo(name)
	return r.GetLastCommit()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOneBuildPerCommit(t *testing.T) {
	r := gittest.New(t, "main")
	c1 := r.Commit("one", map[string]string{".kiln.yaml": "echo one"})
	h := newHarness(t)
	h.addRepo("web", r.URL())
	var resolves atomic.Int32
	h.run(Config{Resolve: func(ctx context.Context, url, ref string) (gitsrc.Resolved, error) {
		resolves.Add(1)
		return gitsrc.Resolve(ctx, url, ref)
	}})
	eventually(t, "the head is built", func() bool { return h.lastCommit("web") == c1 })
	// More polls of the same head start nothing: wait until a later poll
	// has finished (the one after it has begun).
	seen := resolves.Load()
	eventually(t, "another poll of the same head", func() bool { return resolves.Load() >= seen+2 })
	bs := h.builds()
	if len(bs) != 1 {
		t.Fatalf("%d builds for one commit", len(bs))
	}
	b := bs[0]
	if b.GetSource().GetCommit() != c1 || b.GetSource().GetBranch() != "main" || b.GetSource().GetRepo() != "web" ||
		b.GetEvent() != "push" || b.GetSubmitter() != "watcher" || b.GetRequestId() != "watch/web/"+c1 ||
		b.GetRepoBuildNumber() != 1 || b.GetJobs()[0].GetSpec().GetCommands()[0] != "echo one" {
		t.Fatalf("build = %v", b)
	}
	c2 := r.Commit("two", map[string]string{".kiln.yaml": "echo two"})
	eventually(t, "the new commit is built", func() bool { return h.lastCommit("web") == c2 })
	bs = h.builds()
	if len(bs) != 2 || bs[1].GetSource().GetCommit() != c2 || bs[1].GetRepoBuildNumber() != 2 ||
		bs[1].GetJobs()[0].GetSpec().GetCommands()[0] != "echo two" {
		t.Fatalf("builds after the second commit: %v", bs)
	}
}

func TestRecordLostAfterSubmitDoesNotDuplicate(t *testing.T) {
	r := gittest.New(t, "main")
	c1 := r.Commit("one", map[string]string{".kiln.yaml": "echo one"})
	h := newHarness(t)
	h.addRepo("web", r.URL())
	h.ap.failPolled.Store(2)
	h.run(Config{})
	eventually(t, "the head is recorded", func() bool { return h.lastCommit("web") == c1 })
	if n := len(h.builds()); n != 1 {
		t.Fatalf("%d builds, want 1", n)
	}
	// The retries found the request id and did not fetch or submit again.
	if n := h.submits.Load(); n != 1 {
		t.Fatalf("%d submits, want 1", n)
	}
}

func TestBadPipelineIsAFailedBuildAndTheRepoError(t *testing.T) {
	r := gittest.New(t, "main")
	c1 := r.Commit("broken", map[string]string{".kiln.yaml": "invalid"})
	h := newHarness(t)
	h.addRepo("web", r.URL())
	h.run(Config{})
	eventually(t, "the broken commit is recorded", func() bool { return h.lastCommit("web") == c1 })
	bs := h.builds()
	if len(bs) != 1 {
		t.Fatalf("%d builds for the broken commit, want 1 failed build", len(bs))
	}
	if b := bs[0]; b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || b.GetReason() != "invalid build file" ||
		len(b.GetJobs()) != 0 || b.GetSource().GetCommit() != c1 || b.GetRequestId() != "watch/web/"+c1 || b.GetEvent() != "push" {
		t.Fatalf("broken build = %v", b)
	}
	if repo, _ := h.store.Repo("web"); repo.GetLastError() != "invalid build file" || repo.GetLastErrorCommit() != c1 ||
		repo.GetLastErrorBuildId() != bs[0].GetId() {
		t.Fatalf("repo = %v", repo)
	}
	// A commit without the file: a failed build naming the file.
	r.Git("rm", "-q", ".kiln.yaml")
	c2 := r.Commit("no file", nil)
	eventually(t, "the commit without a pipeline is recorded", func() bool { return h.lastCommit("web") == c2 })
	bs = h.builds()
	if len(bs) != 2 || !strings.Contains(bs[1].GetReason(), "pipeline file .kiln.yaml: ") || bs[1].GetState() != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("builds = %v", bs)
	}
	// A fixed commit builds and clears the repository's error.
	c3 := r.Commit("fixed", map[string]string{".kiln.yaml": "echo ok"})
	eventually(t, "the fixed commit is built", func() bool { return h.lastCommit("web") == c3 })
	if bs := h.builds(); len(bs) != 3 || bs[2].GetSource().GetCommit() != c3 || len(bs[2].GetJobs()) != 1 {
		t.Fatalf("builds = %v", bs)
	}
	if repo, _ := h.store.Repo("web"); repo.GetLastError() != "" || repo.GetBuilds() != 3 {
		t.Fatalf("repo after the fix = %v", repo)
	}
}

func TestUnreachableRepoIsRetried(t *testing.T) {
	gittest.RequireGit(t)
	var calls atomic.Int32
	h := newHarness(t)
	h.addRepo("web", "file:///nonexistent/repo")
	h.run(Config{Resolve: func(ctx context.Context, url, ref string) (gitsrc.Resolved, error) {
		calls.Add(1)
		return gitsrc.Resolve(ctx, url, ref)
	}})
	eventually(t, "several polls", func() bool { return calls.Load() >= 3 })
	if h.lastCommit("web") != "" || len(h.builds()) != 0 {
		t.Fatal("an unreachable repository was recorded or built")
	}
}

func TestInterval(t *testing.T) {
	for ms, want := range map[int64]time.Duration{0: DefaultPollInterval, 10: MinPollInterval, 5000: 5 * time.Second} {
		if got := Interval(&kilnv1.Repo{PollIntervalMs: ms}); got != want {
			t.Errorf("Interval(%d) = %s, want %s", ms, got, want)
		}
	}
}
