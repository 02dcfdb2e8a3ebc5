package api

import (
	"context"
	"fmt"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestAnswersCarryNoGitCredentials: every client-facing answer that holds
// a Source or Repo loses its URL credentials, the state's message is not
// touched, and agent streams (which need the credentials) are left alone.
func TestAnswersCarryNoGitCredentials(t *testing.T) {
	const secretURL = "https://bot:s3cr3t@git.example.com/app.git"
	const clean = "https://git.example.com/app.git"
	stored := &kilnv1.Build{Id: "1", Source: &kilnv1.Source{GitUrl: secretURL}}
	cases := []struct {
		method string
		resp   proto.Message
		get    func(proto.Message) []string
	}{
		{"/kiln.v1.ControlService/GetBuild", &kilnv1.GetBuildResponse{Build: stored},
			func(m proto.Message) []string {
				return []string{m.(*kilnv1.GetBuildResponse).GetBuild().GetSource().GetGitUrl()}
			}},
		{"/kiln.v1.ControlService/ListBuilds", &kilnv1.ListBuildsResponse{Builds: []*kilnv1.Build{stored, {Id: "2"}, stored}},
			func(m proto.Message) []string {
				var out []string
				for _, b := range m.(*kilnv1.ListBuildsResponse).GetBuilds() {
					if b.GetSource() != nil {
						out = append(out, b.GetSource().GetGitUrl())
					}
				}
				return out
			}},
		{"/kiln.v1.ControlService/ListRepos", &kilnv1.ListReposResponse{Repos: []*kilnv1.Repo{{Name: "app", Url: secretURL}}},
			func(m proto.Message) []string { return []string{m.(*kilnv1.ListReposResponse).GetRepos()[0].GetUrl()} }},
	}
	for _, c := range cases {
		got, err := RedactUnary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: c.method},
			func(context.Context, any) (any, error) { return c.resp, nil })
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range c.get(got.(proto.Message)) {
			if u != clean {
				t.Errorf("%s: answered URL %q, want %q", c.method, u, clean)
			}
		}
	}
	if stored.GetSource().GetGitUrl() != secretURL {
		t.Fatalf("the stored build was modified: %q", stored.GetSource().GetGitUrl())
	}
	// Answers without credentials are passed through as they are.
	plain := &kilnv1.GetBuildResponse{Build: &kilnv1.Build{Source: &kilnv1.Source{GitUrl: clean}}}
	if got := withoutCredentials(plain); got != any(plain) {
		t.Error("an answer without credentials was copied")
	}
	// Not a client-facing method: untouched.
	asg := &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Assignment{Assignment: &kilnv1.JobAssignment{Source: &kilnv1.Source{GitUrl: secretURL}}}}
	got, _ := RedactUnary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/kiln.v1.AgentService/Connect"},
		func(context.Context, any) (any, error) { return asg, nil })
	if got.(*kilnv1.ConnectResponse).GetAssignment().GetSource().GetGitUrl() != secretURL {
		t.Error("an agent's assignment lost the credentials it needs")
	}
	if canReach((&kilnv1.StreamLogsResponse{}).ProtoReflect().Descriptor()) {
		t.Error("log chunks are walked for URLs")
	}
}

// BenchmarkRedactListBuilds is the cost the credential walk adds to the
// largest answer: 1000 builds of 5 jobs, none with credentials (the common
// case: no copy) or all with them (a copy, then stripped).
func BenchmarkRedactListBuilds(b *testing.B) {
	for _, url := range []string{"https://git.example.com/app.git", "https://bot:tok@git.example.com/app.git"} {
		resp := &kilnv1.ListBuildsResponse{}
		for i := range 1000 {
			bl := &kilnv1.Build{Id: fmt.Sprint(i), Source: &kilnv1.Source{GitUrl: url, Commit: "0123456789abcdef0123456789abcdef01234567"}}
			for j := range 5 {
				bl.Jobs = append(bl.Jobs, &kilnv1.Job{Id: fmt.Sprint(i, ".", j), Key: "step", Agent: "a1"})
			}
			resp.Builds = append(resp.Builds, bl)
		}
		name := "clean"
		if url != "https://git.example.com/app.git" {
			name = "credentials"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				_ = withoutCredentials(resp)
			}
		})
	}
}
