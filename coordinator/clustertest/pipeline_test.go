package clustertest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestRetryAndApprovalAcrossFailover drives a staged build with an approval
// gate through the gRPC API: the first step fails once, a retry runs it
// again, the gate blocks, the leader is killed, and the approval given to
// the new leader lets the last step run.
func TestRetryAndApprovalAcrossFailover(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 2)
	marker := filepath.Join(t.TempDir(), "marker")
	spec := fmt.Sprintf(`name: gated
stages:
  - name: build
    steps:
      - key: compile
        command: test -f %[1]s || { touch %[1]s; echo first try fails; exit 3; }
  - name: release
    steps:
      - key: ok
        approval:
          approvers: [alice]
  - name: ship
    steps:
      - key: deploy
        command: echo shipped
`, marker)
	cl := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var b *kilnv1.Build
	err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec})
		b = resp.GetBuild()
		return err
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	id := b.GetId()
	b = waitBuild(t, c, id, 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || b.GetReason() != "job compile failed" {
		t.Fatalf("first run: %v (%s)", b.GetState(), b.GetReason())
	}

	err = Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.RetryBuild(ctx, &kilnv1.RetryBuildRequest{RequestId: reqID(t, 1), BuildId: id})
		return err
	})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	// Every node sees the gate blocked.
	for _, n := range c.Nodes {
		Eventually(t, 30*time.Second, func() bool {
			got, ok := n.C.Store().Build(id)
			return ok && got.GetState() == kilnv1.BuildState_BUILD_STATE_BLOCKED
		}, "node "+n.ID+" sees the build blocked")
	}

	old := c.Leader()
	c.Kill(old)
	l := c.Leader()
	if l == old {
		t.Fatal("no new leader")
	}
	decide := func(by string) error {
		return Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			_, err := cc.DecideApproval(ctx, &kilnv1.DecideApprovalRequest{RequestId: reqID(t, 2), BuildId: id, Step: "ok", Approve: true, By: by, Comment: "ship it"})
			return err
		})
	}
	if err := decide("mallory@host"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("approval by a stranger: %v", err)
	}
	if err := decide("alice@host"); err != nil {
		t.Fatalf("approve: %v", err)
	}
	b = waitBuild(t, c, id, 30*time.Second)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s: %s (%s)", id, b.GetState(), b.GetReason())
	}
	byKey := map[string]*kilnv1.Job{}
	for _, j := range b.GetJobs() {
		byKey[j.GetKey()] = j
	}
	if j := byKey["compile"]; j.GetAttempt() != 2 {
		t.Fatalf("compile attempt %d, want 2", j.GetAttempt())
	}
	if a := byKey["ok"].GetApproval(); !a.GetApproved() || a.GetBy() != "alice@host" || a.GetComment() != "ship it" {
		t.Fatalf("approval %v", a)
	}
	if got := jobLog(l, byKey["deploy"]); got != "shipped\n" {
		t.Fatalf("deploy log %q", got)
	}
}
