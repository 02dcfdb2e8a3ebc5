package clustertest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// envLine prints what a job saw of its source.
const envLine = `echo "head=$(git rev-parse HEAD) file=$(cat hello.txt) commit=$KILN_COMMIT branch=$KILN_BRANCH tag=$KILN_TAG repo=$KILN_REPO number=$KILN_BUILD_NUMBER event=$KILN_EVENT"`

// trySubmit submits and returns the error instead of failing.
func trySubmit(c *Cluster, req *kilnv1.SubmitBuildRequest) (*kilnv1.Build, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b *kilnv1.Build
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, req)
		b = resp.GetBuild()
		return err
	})
	return b, err
}

func TestGitSourceBuildChecksOutResolvedCommit(t *testing.T) {
	r := gittest.New(t, "main")
	c1 := r.Commit("one", map[string]string{"hello.txt": "main-one"})
	r.Git("checkout", "-q", "-b", "release")
	c2 := r.Commit("two", map[string]string{"hello.txt": "release-two"})
	r.Git("tag", "-a", "v2", "-m", "v2")
	r.Git("checkout", "-q", "main")
	url := r.Daemon() // served over git:// on loopback

	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 2)

	cases := []struct {
		ref, commit, file, branch, tag string
	}{
		{"release", c2, "release-two", "release", ""},
		{"", c1, "main-one", "main", ""}, // the remote's default branch
		{"v2", c2, "release-two", "", "v2"},
		{c1, c1, "main-one", "", ""},
	}
	for i, tc := range cases {
		b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, i), Command: envLine,
			Source: &kilnv1.Source{GitUrl: url, Ref: tc.ref}})
		if s := b.GetSource(); s.GetCommit() != tc.commit || s.GetBranch() != tc.branch || s.GetTag() != tc.tag {
			t.Fatalf("ref %q: build source %v, want commit %s branch %q tag %q", tc.ref, s, tc.commit, tc.branch, tc.tag)
		}
		if b.GetEvent() != "manual" {
			t.Errorf("event %q, want manual", b.GetEvent())
		}
		done := waitBuild(t, c, b.GetId(), 30*time.Second)
		log := jobLog(c.Leader(), done.GetJobs()[0])
		if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("ref %q: build %s (%s)\n%s", tc.ref, done.GetState(), done.GetReason(), log)
		}
		want := fmt.Sprintf("head=%s file=%s commit=%s branch=%s tag=%s repo=%s number=%s event=manual",
			tc.commit, tc.file, tc.commit, tc.branch, tc.tag, url, b.GetId())
		if !strings.Contains(log, want) {
			t.Fatalf("ref %q: log lacks %q:\n%s", tc.ref, want, log)
		}
	}

	// A moved branch does not change a submitted build: it was pinned.
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 10), Command: envLine,
		Source: &kilnv1.Source{GitUrl: url, Ref: "main"}})
	r.Commit("three", map[string]string{"hello.txt": "main-three"})
	if done := waitBuild(t, c, b.GetId(), 30*time.Second); !strings.Contains(jobLog(c.Leader(), done.GetJobs()[0]), "head="+c1) {
		t.Fatalf("pinned build did not run %s:\n%s", c1, jobLog(c.Leader(), done.GetJobs()[0]))
	}

	// Errors are answered before anything is committed.
	bad := []struct {
		src  *kilnv1.Source
		code codes.Code
	}{
		{&kilnv1.Source{GitUrl: url, Ref: "nope"}, codes.InvalidArgument},
		{&kilnv1.Source{GitUrl: "--upload-pack=touch /tmp/pwned"}, codes.InvalidArgument},
		{&kilnv1.Source{GitUrl: url, Ref: "-x"}, codes.InvalidArgument},
		{&kilnv1.Source{GitUrl: strings.TrimSuffix(url, "/repo") + "/missing"}, codes.FailedPrecondition},
		{&kilnv1.Source{GitUrl: url, Commit: "abc"}, codes.InvalidArgument},
		{&kilnv1.Source{Repo: "unregistered"}, codes.InvalidArgument},
	}
	before := len(c.Leader().C.Store().ListBuilds(1000))
	for i, tc := range bad {
		_, err := trySubmit(c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 100+i), Command: "true", Source: tc.src})
		if status.Code(err) != tc.code {
			t.Errorf("source %v: %v, want %s", tc.src, err, tc.code)
		}
	}
	if after := len(c.Leader().C.Store().ListBuilds(1000)); after != before {
		t.Fatalf("rejected submits created %d builds", after-before)
	}
}

func TestCheckoutFailureFailsJob(t *testing.T) {
	r := gittest.New(t, "main")
	r.Commit("one", nil)
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	// A full commit id is not checked at submit; the agent's fetch fails.
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "echo must-not-run",
		Source: &kilnv1.Source{GitUrl: r.URL(), Commit: strings.Repeat("ab", 20)}})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	j := done.GetJobs()[0]
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.HasPrefix(j.GetReason(), "checkout failed: ") {
		t.Fatalf("build %s, job reason %q", done.GetState(), j.GetReason())
	}
	if log := jobLog(c.Leader(), j); strings.Contains(log, "must-not-run") || !strings.Contains(log, "kiln: checkout failed") {
		t.Fatalf("commands ran:\n%s", log)
	}
}

// buildsByCommit counts a repository's builds per commit on node n.
func buildsByCommit(n *Node, repo string) map[string][]*kilnv1.Build {
	out := map[string][]*kilnv1.Build{}
	for _, b := range n.C.Store().ListBuilds(1000) {
		if b.GetSource().GetRepo() == repo {
			out[b.GetSource().GetCommit()] = append(out[b.GetSource().GetCommit()], b)
		}
	}
	return out
}

func TestWatcherBuildsEachCommitOnceAcrossFailover(t *testing.T) {
	pipeline := func(msg string) map[string]string {
		return map[string]string{"hello.txt": msg, ".kiln.yaml": "steps:\n  - key: show\n    command: '" + envLine + "'\n"}
	}
	r := gittest.New(t, "main")
	c1 := r.Commit("one", pipeline("one"))
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 2)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var repo *kilnv1.Repo
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "web", Url: r.URL(), Branch: "main", PollIntervalMs: 1000})
		repo = resp.GetRepo()
		return err
	})
	if err != nil {
		t.Fatalf("add repo: %v", err)
	}
	if repo.GetPipeline() != ".kiln.yaml" || repo.GetPollIntervalMs() != 1000 {
		t.Fatalf("repo = %v", repo)
	}
	// Bad registrations fail fast.
	for _, req := range []*kilnv1.AddRepoRequest{
		{Name: "Bad Name", Url: r.URL(), Branch: "main"},
		{Name: "x", Url: r.URL(), Branch: "nope"},
		{Name: "x", Url: r.URL(), Branch: "main", PollIntervalMs: 10},
		{Name: "x", Url: "file:///nonexistent", Branch: "main"},
	} {
		err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			_, err := cc.AddRepo(ctx, req)
			return err
		})
		if code := status.Code(err); code != codes.InvalidArgument && code != codes.FailedPrecondition {
			t.Errorf("AddRepo(%v): %v", req, err)
		}
	}

	waitCommitBuilt := func(commit string) *kilnv1.Build {
		t.Helper()
		var b *kilnv1.Build
		Eventually(t, 30*time.Second, func() bool {
			bs := buildsByCommit(c.Leader(), "web")[commit]
			if len(bs) == 0 {
				return false
			}
			b = bs[0]
			return true
		}, "a build of "+commit)
		return waitBuild(t, c, b.GetId(), 30*time.Second)
	}
	checkBuild := func(b *kilnv1.Build, commit, file string, number uint64) {
		t.Helper()
		log := jobLog(c.Leader(), b.GetJobs()[0])
		if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("build %s of %s: %s (%s)\n%s", b.GetId(), commit, b.GetState(), b.GetReason(), log)
		}
		want := fmt.Sprintf("head=%s file=%s commit=%s branch=main tag= repo=web number=%d event=push", commit, file, commit, number)
		if !strings.Contains(log, want) || b.GetRepoBuildNumber() != number {
			t.Fatalf("build %s (repo number %d): log lacks %q:\n%s", b.GetId(), b.GetRepoBuildNumber(), want, log)
		}
	}
	checkBuild(waitCommitBuilt(c1), c1, "one", 1)

	c2 := r.Commit("two", pipeline("two"))
	checkBuild(waitCommitBuilt(c2), c2, "two", 2)

	// Kill the leader as soon as it has committed the build of a new commit,
	// likely before it recorded the poll: the next leader must not build
	// that commit again.
	old := c.Leader()
	c3 := r.Commit("three", pipeline("three"))
	Eventually(t, 30*time.Second, func() bool { return len(buildsByCommit(old, "web")[c3]) > 0 }, "a build of "+c3)
	c.Kill(old)
	checkBuild(waitCommitBuilt(c3), c3, "three", 3)
	// The new leader's watcher picks up the next commit.
	c4 := r.Commit("four", pipeline("four"))
	checkBuild(waitCommitBuilt(c4), c4, "four", 4)

	// Give the watcher a few more polls: still one build per commit. The
	// sleep is the observation window (two or more polls at the repo's 1s
	// poll interval): the watcher exposes no poll counter to wait on.
	time.Sleep(2500 * time.Millisecond)
	l := c.Leader()
	byCommit := buildsByCommit(l, "web")
	if len(byCommit) != 4 {
		t.Fatalf("builds for %d commits, want 4", len(byCommit))
	}
	for commit, bs := range byCommit {
		if len(bs) != 1 {
			t.Fatalf("commit %s has %d builds", commit, len(bs))
		}
	}
	got, _ := l.C.Store().Repo("web")
	if got.GetLastCommit() != c4 || got.GetBuilds() != 4 {
		t.Fatalf("repo after failover = %v", got)
	}
	var listed []*kilnv1.Repo
	err = Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.ListRepos(ctx, &kilnv1.ListReposRequest{})
		listed = resp.GetRepos()
		return err
	})
	if err != nil || len(listed) != 1 || listed[0].GetName() != "web" {
		t.Fatalf("ListRepos = %v, %v", listed, err)
	}
}

func TestWatcherDedupesByRequestID(t *testing.T) {
	// The watcher of a new leader that sees a commit already built under its
	// request id (the old leader died between submit and RepoPolled) starts
	// nothing new: simulate by submitting the watcher's request first.
	r := gittest.New(t, "main")
	c1 := r.Commit("one", map[string]string{".kiln.yaml": "steps:\n  - key: a\n    command: 'true'\n"})
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		// Registering with a long interval, then submitting the watcher's
		// own request: whichever comes first, there is one build.
		_, err := cc.AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "web", Url: r.URL(), Branch: "main", PollIntervalMs: 3600_000})
		if err != nil {
			return err
		}
		_, err = cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "watch/web/" + c1, Command: "true", Event: "push",
			Source: &kilnv1.Source{Repo: "web", Commit: c1, Branch: "main"}})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	Eventually(t, 20*time.Second, func() bool {
		got, _ := c.Leader().C.Store().Repo("web")
		return got.GetLastCommit() == c1
	}, "the commit is recorded")
	if bs := buildsByCommit(c.Leader(), "web")[c1]; len(bs) != 1 {
		t.Fatalf("%d builds of %s, want 1", len(bs), c1)
	}
}
