package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/leader"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestDecideApprovalAndRetry(t *testing.T) {
	d := newDeps(t, true)
	// The scheduler times gates out by the real clock: the commands must
	// carry real times too.
	d.Now = time.Now
	ctl := NewControlServer(d)
	ctx := context.Background()
	// Approval steps come from the parser; commit the build directly.
	res, err := d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "s1", TimeUnixMs: time.Now().UnixMilli(), Steps: []*kilnv1.StepSpec{
		{Key: "ok", Approval: &kilnv1.ApprovalSpec{Approvers: []string{"alice"}}},
		{Key: "deploy", Commands: []string{"true"}, Needs: []string{"ok"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	id := res.Build.GetId()
	if res.Build.GetState() != kilnv1.BuildState_BUILD_STATE_BLOCKED {
		t.Fatalf("build %v", res.Build)
	}

	for _, tt := range []struct {
		name string
		req  *kilnv1.DecideApprovalRequest
		code codes.Code
		msg  string
	}{
		{"no build", &kilnv1.DecideApprovalRequest{Step: "ok", By: "a"}, codes.InvalidArgument, "build_id"},
		{"no step", &kilnv1.DecideApprovalRequest{BuildId: id, By: "a"}, codes.InvalidArgument, "step"},
		{"no by", &kilnv1.DecideApprovalRequest{BuildId: id, Step: "ok"}, codes.InvalidArgument, "by"},
		{"long comment", &kilnv1.DecideApprovalRequest{BuildId: id, Step: "ok", By: "a", Comment: strings.Repeat("c", MaxCommentBytes+1)}, codes.InvalidArgument, "comment"},
		{"unknown build", &kilnv1.DecideApprovalRequest{BuildId: "404", Step: "ok", By: "alice"}, codes.NotFound, "404"},
		{"not an approver", &kilnv1.DecideApprovalRequest{BuildId: id, Step: "ok", By: "bob@h"}, codes.PermissionDenied, "bob@h may not approve ok; approvers: alice"},
		{"not a gate", &kilnv1.DecideApprovalRequest{BuildId: id, Step: "deploy", By: "alice"}, codes.InvalidArgument, "not an approval step"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ctl.DecideApproval(ctx, tt.req)
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Fatalf("got %v, want %s with %q", err, tt.code, tt.msg)
			}
		})
	}
	_, err = ctl.RetryBuild(ctx, &kilnv1.RetryBuildRequest{BuildId: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("retry of a running build: %v", err)
	}
	if _, err := ctl.RetryBuild(ctx, &kilnv1.RetryBuildRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("retry without build: %v", err)
	}

	resp, err := ctl.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: "d1", BuildId: id, Step: "ok", By: "alice@box", Comment: "no"})
	if err != nil {
		t.Fatal(err)
	}
	if b := resp.GetBuild(); b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || b.GetJobs()[0].GetApproval().GetBy() != "alice@box" {
		t.Fatalf("build %v", b)
	}
	// A repeated request answers the build; a new one finds the step decided.
	if _, err := ctl.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: "d1", BuildId: id, Step: "ok", By: "alice@box"}); err != nil {
		t.Fatalf("repeat: %v", err)
	}
	if _, err := ctl.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: "d2", BuildId: id, Step: "ok", By: "alice@box"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("decided twice: %v", err)
	}

	rr, err := ctl.RetryBuild(ctx, &kilnv1.RetryBuildRequest{RequestId: "r1", BuildId: id})
	if err != nil {
		t.Fatal(err)
	}
	if b := rr.GetBuild(); b.GetState() != kilnv1.BuildState_BUILD_STATE_BLOCKED || b.GetJobs()[0].GetState() != kilnv1.JobState_JOB_STATE_BLOCKED {
		t.Fatalf("retried build %v", b)
	}
	if _, err := ctl.RetryBuild(ctx, &kilnv1.RetryBuildRequest{RequestId: "r2", BuildId: id, Step: "nope"}); status.Code(err) != codes.FailedPrecondition {
		// The build is not finished: that is checked first.
		t.Fatalf("retry of a blocked build: %v", err)
	}
}

func TestApprovalWritesOnFollowerAreRedirected(t *testing.T) {
	ctl := NewControlServer(newDeps(t, false))
	_, err := ctl.DecideApproval(context.Background(), &kilnv1.DecideApprovalRequest{BuildId: "1", Step: "ok", By: "a"})
	if !leader.IsNotLeader(err) {
		t.Fatalf("DecideApproval on a follower: %v", err)
	}
	_, err = ctl.RetryBuild(context.Background(), &kilnv1.RetryBuildRequest{BuildId: "1"})
	if !leader.IsNotLeader(err) {
		t.Fatalf("RetryBuild on a follower: %v", err)
	}
}
