package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// streamAttempt reads the whole log of one attempt of job key through the
// API (StreamLogsRequest.attempt).
func streamAttempt(t *testing.T, c *Cluster, build, key string, attempt uint32) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var buf bytes.Buffer
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		buf.Reset()
		s, err := cc.StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: build, JobKey: key, Attempt: attempt})
		if err != nil {
			return err
		}
		for {
			m, err := s.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if m.GetAttempt() != attempt {
				return fmt.Errorf("chunk of attempt %d", m.GetAttempt())
			}
			buf.Write(m.GetData())
		}
	})
	return buf.String(), err
}

// TestEveryAttemptsLogIsReachable: a step retried on failure keeps each
// attempt's log, served by attempt number.
func TestEveryAttemptsLogIsReachable(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	counter := filepath.Join(t.TempDir(), "runs")
	spec := fmt.Sprintf("steps:\n  - key: flaky\n    retry: {on_failure: 2}\n    commands: [\"echo x >> %s; echo run $(wc -l < %s)\", \"[ $(wc -l < %s) -ge 3 ]\"]\n",
		counter, counter, counter)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "f.yaml"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || done.GetJobs()[0].GetAttempt() != 3 {
		t.Fatalf("build %s, attempt %d", done.GetState(), done.GetJobs()[0].GetAttempt())
	}
	for a := uint32(1); a <= 3; a++ {
		got, err := streamAttempt(t, c, b.GetId(), "flaky", a)
		if err != nil {
			t.Fatalf("attempt %d: %v", a, err)
		}
		if want := fmt.Sprintf("run %d\n", a); got != want {
			t.Errorf("attempt %d log %q, want %q", a, got, want)
		}
	}
	if _, err := streamAttempt(t, c, b.GetId(), "flaky", 4); status.Code(err) != codes.NotFound {
		t.Errorf("attempt 4: %v, want NotFound", err)
	}
}

// TestWatchedBrokenPipelineIsAFailedBuild: a pushed commit whose pipeline
// file is invalid becomes a FAILED build with the validation errors, and
// the repository's last error; RemoveRepo stops the watching.
func TestWatchedBrokenPipelineIsAFailedBuild(t *testing.T) {
	r := gittest.New(t, "main")
	c1 := r.Commit("broken", map[string]string{".kiln.yaml": "steps:\n  - key: Bad Key\n    command: x\n"})
	c := Start(t, 1, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := c.Client()
	err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "web", Url: r.URL(), Branch: "main", PollIntervalMs: 1000})
		return err
	})
	if err != nil {
		t.Fatalf("add repo: %v", err)
	}
	var b *kilnv1.Build
	Eventually(t, 15*time.Second, func() bool {
		bs := buildsByCommit(c.Leader(), "web")[c1]
		if len(bs) > 0 {
			b = bs[0]
		}
		return b != nil
	}, "a build of the broken commit")
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || len(b.GetJobs()) != 0 ||
		!strings.Contains(b.GetReason(), ".kiln.yaml:2:") || b.GetEvent() != "push" {
		t.Fatalf("broken build = %v", b)
	}
	var repos []*kilnv1.Repo
	err = Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.ListRepos(ctx, &kilnv1.ListReposRequest{})
		repos = resp.GetRepos()
		return err
	})
	if err != nil || len(repos) != 1 || repos[0].GetLastError() != b.GetReason() || repos[0].GetLastErrorBuildId() != b.GetId() ||
		repos[0].GetLastErrorCommit() != c1 {
		t.Fatalf("ListRepos = %v, %v", repos, err)
	}
	var removed *kilnv1.Repo
	err = Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.RemoveRepo(ctx, &kilnv1.RemoveRepoRequest{Name: "web"})
		removed = resp.GetRepo()
		return err
	})
	if err != nil || removed.GetName() != "web" || removed.GetBuilds() != 1 {
		t.Fatalf("RemoveRepo = %v, %v", removed, err)
	}
	if _, ok := c.Leader().C.Store().Repo("web"); ok {
		t.Fatal("the repository is still registered")
	}
	if _, ok := c.Leader().C.Store().Build(b.GetId()); !ok {
		t.Fatal("removing the repository removed its build")
	}
	err = Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.RemoveRepo(ctx, &kilnv1.RemoveRepoRequest{Name: "web"})
		return err
	})
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), `repository "web" is not registered`) {
		t.Fatalf("second RemoveRepo: %v", err)
	}
}
