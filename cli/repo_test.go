package cli

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// repoFake serves AddRepo and ListRepos.
type repoFake struct {
	kilnv1.UnimplementedControlServiceServer
	mu    sync.Mutex
	adds  []*kilnv1.AddRepoRequest
	repos []*kilnv1.Repo
}

func (f *repoFake) AddRepo(_ context.Context, req *kilnv1.AddRepoRequest) (*kilnv1.AddRepoResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, req)
	if strings.HasPrefix(req.GetUrl(), "bad") {
		return nil, status.Error(codes.InvalidArgument, "url: invalid git URL")
	}
	r := &kilnv1.Repo{Name: req.GetName(), Url: req.GetUrl(), Branch: req.GetBranch(), Pipeline: req.GetPipeline(),
		PollIntervalMs: req.GetPollIntervalMs()}
	f.repos = append(f.repos, r)
	return &kilnv1.AddRepoResponse{Repo: r}, nil
}

func (f *repoFake) ListRepos(context.Context, *kilnv1.ListReposRequest) (*kilnv1.ListReposResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &kilnv1.ListReposResponse{Repos: f.repos}, nil
}

func (f *repoFake) RemoveRepo(_ context.Context, req *kilnv1.RemoveRepoRequest) (*kilnv1.RemoveRepoResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.repos {
		if r.GetName() == req.GetName() {
			f.repos = append(f.repos[:i], f.repos[i+1:]...)
			return &kilnv1.RemoveRepoResponse{Repo: r}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "repository %q is not registered", req.GetName())
}

func (f *repoFake) serve(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func TestRepoAddAndList(t *testing.T) {
	f := &repoFake{}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "repo", "add", "web", "https://git.example.com/web.git",
		"--branch", "dev", "--pipeline", "ci/kiln.yaml", "--poll", "5s")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "repository web watches dev") {
		t.Errorf("stdout = %q", out)
	}
	got := f.adds[0]
	if got.GetName() != "web" || got.GetUrl() != "https://git.example.com/web.git" || got.GetBranch() != "dev" ||
		got.GetPipeline() != "ci/kiln.yaml" || got.GetPollIntervalMs() != 5000 {
		t.Errorf("request = %v", got)
	}
	// Defaults.
	_, errOut, code = runCLI(t, "--coordinators", addr, "repo", "add", "tools", "git@example.com:tools.git")
	must(t, code, 0, errOut)
	if got := f.adds[1]; got.GetBranch() != "main" || got.GetPipeline() != ".kiln.yaml" || got.GetPollIntervalMs() != 30000 {
		t.Errorf("defaults = %v", got)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "repo", "list", "-o", "json")
	must(t, code, 0, errOut)
	var list []RepoJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 || list[0].Poll != "5s" || list[1].Name != "tools" {
		t.Fatalf("json = %s (%v)", out, err)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "repo", "list")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "NAME") || !strings.Contains(out, "git@example.com:tools.git") {
		t.Errorf("table = %q", out)
	}
	// Errors: invalid argument from the server, bad usage locally.
	_, errOut, code = runCLI(t, "--coordinators", addr, "repo", "add", "x", "bad-url")
	must(t, code, ExitUsage, errOut)
	_, errOut, code = runCLI(t, "--coordinators", addr, "repo", "add", "x")
	must(t, code, ExitUsage, errOut)
	_, errOut, code = runCLI(t, "--coordinators", addr, "repo", "add", "x", "https://h/r", "--poll", "10ms")
	must(t, code, ExitUsage, errOut)
}

func TestRunGitSource(t *testing.T) {
	f := newFake()
	addr := f.serve(t)
	_, errOut, code := runCLI(t, "--coordinators", addr, "run", "--git", "https://git.example.com/web.git", "--ref", "v1.2", "--", "make")
	must(t, code, 0, errOut)
	if src := f.submits[0].GetSource(); src.GetGitUrl() != "https://git.example.com/web.git" || src.GetRef() != "v1.2" {
		t.Errorf("source = %v", src)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "run", "--ref", "main", "--", "make")
	must(t, code, ExitUsage, errOut)
	_, errOut, code = runCLI(t, "--coordinators", addr, "run", "--", "make")
	must(t, code, 0, errOut)
	if f.submits[len(f.submits)-1].GetSource() != nil {
		t.Error("source set without --git")
	}
}

func TestRepoListShowsLastError(t *testing.T) {
	f := &repoFake{repos: []*kilnv1.Repo{{Name: "web", Url: "u", Branch: "main", Pipeline: ".kiln.yaml", LastCommit: "abc",
		LastError: "invalid build file:\n.kiln.yaml:3:5: steps[0]: no commands\nmore", LastErrorCommit: "abc", LastErrorBuildId: "12"}}}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "repo", "list")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "LAST ERROR") || !strings.Contains(out, "build 12: .kiln.yaml:3:5: steps[0]: no commands\n") {
		t.Errorf("table:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "repo", "list", "-o", "json")
	must(t, code, 0, errOut)
	var list []RepoJSON
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || list[0].LastErrorBuildID != "12" ||
		list[0].LastErrorCommit != "abc" || !strings.HasPrefix(list[0].LastError, "invalid build file:") {
		t.Errorf("json %v: %s", err, out)
	}
}

func TestRepoRemove(t *testing.T) {
	f := &repoFake{repos: []*kilnv1.Repo{{Name: "web", Builds: 4}}}
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "repo", "remove", "web")
	must(t, code, 0, errOut)
	if out != "repository web removed (4 builds kept)\n" || len(f.repos) != 0 {
		t.Errorf("stdout %q, repos %v", out, f.repos)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "repo", "remove", "web")
	must(t, code, 1, errOut)
	if errOut != "kilnctl: remove repository web: repository \"web\" is not registered (hint: 'kilnctl repo list' lists the registered repositories)\n" {
		t.Errorf("stderr = %q", errOut)
	}
}
