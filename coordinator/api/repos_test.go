package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/gitsrc/gittest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestSubmitWithGitSource(t *testing.T) {
	r := gittest.New(t, "trunk")
	c1 := r.Commit("one", nil)
	r.Git("tag", "v1")
	c2 := r.Commit("two", nil)
	s := NewControlServer(newDeps(t, true))
	ctx := context.Background()

	resp, err := s.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "r1", Command: "make",
		Source: &kilnv1.Source{GitUrl: r.URL()}})
	if err != nil {
		t.Fatal(err)
	}
	want := &kilnv1.Source{GitUrl: r.URL(), Ref: "HEAD", Commit: c2, Branch: "trunk"}
	if got := resp.GetBuild().GetSource(); got.String() != want.String() || resp.GetBuild().GetEvent() != "manual" {
		t.Fatalf("source %v event %q, want %v manual", got, resp.GetBuild().GetEvent(), want)
	}
	resp, err = s.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "r2", Command: "make", Event: "api",
		Source: &kilnv1.Source{GitUrl: r.URL(), Ref: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetBuild().GetSource(); got.GetCommit() != c1 || got.GetTag() != "v1" || resp.GetBuild().GetEvent() != "api" {
		t.Fatalf("tag build: %v", resp.GetBuild())
	}

	for _, tc := range []struct {
		req  *kilnv1.SubmitBuildRequest
		code codes.Code
		msg  string
	}{
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{GitUrl: r.URL(), Ref: "gone"}}, codes.InvalidArgument, `"gone"`},
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{GitUrl: "file:///nonexistent/x"}}, codes.FailedPrecondition, "unreachable"},
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{GitUrl: "-oProxyCommand=x"}}, codes.InvalidArgument, "source.git_url"},
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{Ref: "main"}}, codes.InvalidArgument, "need source.git_url"},
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{GitUrl: r.URL(), Commit: "c0ffee"}}, codes.InvalidArgument, "source.commit"},
		{&kilnv1.SubmitBuildRequest{Source: &kilnv1.Source{Repo: "nope"}}, codes.InvalidArgument, "no repository"},
		{&kilnv1.SubmitBuildRequest{Event: strings.Repeat("e", 65)}, codes.InvalidArgument, "event"},
	} {
		tc.req.RequestId, tc.req.Command = "bad", "true"
		_, err := s.SubmitBuild(ctx, tc.req)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: %v, want %s containing %q", tc.req, err, tc.code, tc.msg)
		}
	}
}

func TestAddAndListRepos(t *testing.T) {
	r := gittest.New(t, "main")
	r.Commit("one", nil)
	d := newDeps(t, true)
	s := NewControlServer(d)
	ctx := context.Background()
	resp, err := s.AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "web", Url: r.URL(), Branch: "refs/heads/main"})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetRepo(); got.GetBranch() != "main" || got.GetPipeline() != ".kiln.yaml" || got.GetPollIntervalMs() != 30000 {
		t.Fatalf("repo %v", got)
	}
	// A build naming the repository takes its URL and branch and counts.
	b, err := s.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "x", Command: "true", Source: &kilnv1.Source{Repo: "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if src := b.GetBuild().GetSource(); src.GetGitUrl() != r.URL() || src.GetBranch() != "main" || b.GetBuild().GetRepoBuildNumber() != 1 {
		t.Fatalf("repo build %v", b.GetBuild())
	}
	list, err := s.ListRepos(ctx, &kilnv1.ListReposRequest{})
	if err != nil || len(list.GetRepos()) != 1 || list.GetRepos()[0].GetBuilds() != 1 {
		t.Fatalf("ListRepos = %v, %v", list, err)
	}

	for _, tc := range []struct {
		req  *kilnv1.AddRepoRequest
		code codes.Code
	}{
		{&kilnv1.AddRepoRequest{Url: r.URL(), Branch: "main"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "Web", Url: r.URL(), Branch: "main"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "-w", Url: r.URL(), Branch: "main"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: strings.Repeat("w", 49), Url: r.URL(), Branch: "main"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: "/local/path", Branch: "main"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: r.URL()}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: r.URL(), Branch: "nope"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: r.URL(), Branch: "main", Pipeline: "../x"}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: r.URL(), Branch: "main", PollIntervalMs: 999}, codes.InvalidArgument},
		{&kilnv1.AddRepoRequest{Name: "w", Url: "file:///nonexistent/x", Branch: "main"}, codes.FailedPrecondition},
	} {
		if _, err := s.AddRepo(ctx, tc.req); status.Code(err) != tc.code {
			t.Errorf("AddRepo(%v) = %v, want %s", tc.req, err, tc.code)
		}
	}
	// Writes on a follower are redirected before any git work.
	if _, err := NewControlServer(newDeps(t, false)).AddRepo(ctx, &kilnv1.AddRepoRequest{Name: "w", Url: r.URL(), Branch: "main"}); status.Code(err) != codes.Unavailable {
		t.Errorf("AddRepo on a follower = %v", err)
	}
}
