package cli

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// gateFake adds DecideApproval and RetryBuild to the fake coordinator.
type gateFake struct {
	*fake
	mu        sync.Mutex
	decisions []*kilnv1.DecideApprovalRequest
	retries   []*kilnv1.RetryBuildRequest
	// answer, when set, is returned for the next call (then cleared).
	answer error
}

func (g *gateFake) serve(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, g)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func (g *gateFake) next() error {
	err := g.answer
	g.answer = nil
	return err
}

func (g *gateFake) DecideApproval(_ context.Context, req *kilnv1.DecideApprovalRequest) (*kilnv1.DecideApprovalResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.decisions = append(g.decisions, req)
	if err := g.next(); err != nil {
		return nil, err
	}
	return &kilnv1.DecideApprovalResponse{Build: &kilnv1.Build{Id: req.BuildId, State: kilnv1.BuildState_BUILD_STATE_RUNNING}}, nil
}

func (g *gateFake) RetryBuild(_ context.Context, req *kilnv1.RetryBuildRequest) (*kilnv1.RetryBuildResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.retries = append(g.retries, req)
	if err := g.next(); err != nil {
		return nil, err
	}
	return &kilnv1.RetryBuildResponse{Build: &kilnv1.Build{Id: req.BuildId, State: kilnv1.BuildState_BUILD_STATE_QUEUED}}, nil
}

func TestApproveReject(t *testing.T) {
	g := &gateFake{fake: newFake()}
	addr := g.serve(t)
	t.Setenv("USER", "alice")
	out, errOut, code := runCLI(t, "--coordinators", addr, "approve", "3", "deploy", "--comment", "lgtm")
	must(t, code, 0, errOut)
	if out != "build 3: step deploy approved\n" {
		t.Errorf("stdout = %q", out)
	}
	d := g.decisions[0]
	if d.BuildId != "3" || d.Step != "deploy" || !d.Approve || d.Comment != "lgtm" || !strings.HasPrefix(d.By, "alice@") || len(d.RequestId) != 32 {
		t.Errorf("request = %v", d)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "reject", "3", "deploy")
	must(t, code, 0, errOut)
	if out != "build 3: step deploy rejected\n" || g.decisions[1].Approve {
		t.Errorf("stdout = %q, request %v", out, g.decisions[1])
	}

	// Not an approver: refused, exit 1, with a hint that fits.
	g.answer = status.Error(codes.PermissionDenied, "alice@h may not approve deploy; approvers: bob")
	_, errOut, code = runCLI(t, "--coordinators", addr, "approve", "3", "deploy")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, "kilnctl: approve 3 deploy: alice@h may not approve deploy; approvers: bob (hint: ask someone") {
		t.Errorf("stderr = %q", errOut)
	}
	// Not blocked: the operation failed, exit 1.
	g.answer = status.Error(codes.FailedPrecondition, "step deploy of build 3 is passed, not waiting for approval")
	_, errOut, code = runCLI(t, "--coordinators", addr, "reject", "3", "deploy")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, "not waiting for approval") {
		t.Errorf("stderr = %q", errOut)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "approve", "3")
	must(t, code, 2, errOut)
}

func TestRetry(t *testing.T) {
	g := &gateFake{fake: newFake()}
	addr := g.serve(t)
	// The first answer is "outcome unknown": the client retries with the
	// same request id.
	g.answer = status.Error(codes.Unavailable, "leadership lost while committing")
	out, errOut, code := runCLI(t, "--coordinators", addr, "retry", "5", "--step", "test")
	must(t, code, 0, errOut)
	if out != "build 5 retried (queued)\n" {
		t.Errorf("stdout = %q", out)
	}
	if len(g.retries) != 2 || g.retries[0].RequestId != g.retries[1].RequestId || g.retries[0].RequestId == "" ||
		g.retries[1].Step != "test" || g.retries[1].BuildId != "5" {
		t.Errorf("requests = %v", g.retries)
	}
	g.answer = status.Error(codes.FailedPrecondition, "retry build 5: the build is running; only a finished build can be retried")
	_, errOut, code = runCLI(t, "--coordinators", addr, "retry", "5")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, "only a finished build can be retried") {
		t.Errorf("stderr = %q", errOut)
	}
	// The coordinator's message names the operation as the CLI does: it is
	// said once, with a hint about steps, not builds.
	g.answer = status.Error(codes.NotFound, `retry build 5: no step "nosuch"`)
	_, errOut, code = runCLI(t, "--coordinators", addr, "retry", "5", "--step", "nosuch")
	must(t, code, 1, errOut)
	if want := "kilnctl: retry build 5: no step \"nosuch\" (hint: 'kilnctl status 5' lists the build's steps; list builds with 'kilnctl builds')\n"; errOut != want {
		t.Errorf("stderr = %q, want %q", errOut, want)
	}
}

// Each InvalidArgument answer gets the hint that fits what was wrong.
func TestInvalidArgumentHints(t *testing.T) {
	for _, tt := range []struct{ msg, hint string }{
		{"source: ref \"nosuch\" not found in https://x/y.git", "git ls-remote"},
		{"invalid build file:\nx.yaml:1:1: bad", "kilnctl validate FILE"},
		{"name: too long", "--help"},
	} {
		err := rpcError("submit build", status.Error(codes.InvalidArgument, tt.msg), "")
		if ExitCode(err) != ExitUsage || !strings.Contains(err.Error(), tt.hint) || strings.Count(err.Error(), "hint:") != 1 {
			t.Errorf("%q: %v (exit %d), want hint with %q", tt.msg, err, ExitCode(err), tt.hint)
		}
		if strings.Contains(tt.msg, "source") && strings.Contains(err.Error(), "validate") {
			t.Errorf("a bad ref hints at validate: %v", err)
		}
	}
}

func TestStatusShowsBlockedAndApproval(t *testing.T) {
	f := newFake()
	f.addBuild(&kilnv1.Build{Id: "4", State: kilnv1.BuildState_BUILD_STATE_BLOCKED, Jobs: []*kilnv1.Job{
		{Id: "4.ok", Key: "ok", State: kilnv1.JobState_JOB_STATE_PASSED, Reason: "approved by bob@h: go",
			Spec:     &kilnv1.StepSpec{Approval: &kilnv1.ApprovalSpec{}},
			Approval: &kilnv1.Approval{Approved: true, By: "bob@h", Comment: "go", TimeUnixMs: 1_700_000_000_000}},
		{Id: "4.prod", Key: "prod", State: kilnv1.JobState_JOB_STATE_BLOCKED, Reason: "waiting for approval",
			Spec: &kilnv1.StepSpec{Approval: &kilnv1.ApprovalSpec{}}},
	}})
	addr := f.serve(t)
	out, errOut, code := runCLI(t, "--coordinators", addr, "status", "4")
	must(t, code, 0, errOut)
	for _, want := range []string{"STATE      blocked\n", "approved by bob@h: go", "prod  blocked  0"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "status", "4", "-o", "json")
	must(t, code, 0, errOut)
	if !strings.Contains(out, `"approval": {`) || !strings.Contains(out, `"by": "bob@h"`) || !strings.Contains(out, `"time": "2023-11-14T22:13:20Z"`) {
		t.Errorf("json lacks the approval:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "builds")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "blocked") {
		t.Errorf("builds:\n%s", out)
	}
}
