package api

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestListArtifacts(t *testing.T) {
	d := newDeps(t, true)
	ctl := NewControlServer(d)
	ctx := context.Background()
	res, err := d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{
		{Key: "b", Commands: []string{"true"}}, {Key: "a", Commands: []string{"true"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Build.GetId()
	if resp, err := ctl.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: id}); err != nil || len(resp.GetArtifacts()) != 0 {
		t.Fatalf("empty build: %v %v", resp, err)
	}
	for _, key := range []string{"b", "a"} {
		if _, err := d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: id + "." + key, Attempt: 1, Agent: "x"}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REGISTER_ARTIFACTS, &fsmv1.RegisterArtifacts{Agent: "x",
			Uploaded: &kilnv1.ArtifactsUploaded{JobId: id + "." + key, Attempt: 1, Files: []*kilnv1.ArtifactFile{
				{Path: "z/" + key, Size: 1, Sha256: strings.Repeat("a", 64)},
				{Path: "y", Size: 1, Sha256: strings.Repeat("b", 64)},
			}}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := ctl.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: id})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range resp.GetArtifacts() {
		got = append(got, a.GetStep()+":"+a.GetFile().GetPath())
	}
	if strings.Join(got, ",") != "a:y,a:z/a,b:y,b:z/b" {
		t.Fatalf("artifacts %v", got)
	}
	for _, tt := range []struct {
		id   string
		code codes.Code
	}{{"", codes.InvalidArgument}, {"404", codes.NotFound}, {strings.Repeat("1", MaxNameBytes+1), codes.InvalidArgument}} {
		if _, err := ctl.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: tt.id}); status.Code(err) != tt.code {
			t.Errorf("build %q: %v, want %s", tt.id, err, tt.code)
		}
	}
}
