package dashboard

import (
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Every test stops what it started: clusters, agents, browsers, streams.
// The exceptions are those of coordinator/clustertest: hashicorp/raft does
// not close accepted transport connections on Close (their readers exit
// when the peer closes its side), and never answers an Apply still queued
// at shutdown.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		goleak.IgnoreAnyFunction("github.com/kiln-ci/kiln/coordinator/raftnode.Pending.WaitCtx.func1"),
	)
}

func TestSafeNextStaysOnSite(t *testing.T) {
	for in, want := range map[string]string{
		"/builds/7?tab=tests":  "/builds/7?tab=tests",
		"":                     "/",
		"//evil.example/x":     "/",
		"/\\evil.example":      "/",
		"https://evil.example": "/",
		"javascript:alert(1)":  "/",
	} {
		if got := safeNext(in); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestJobKeyIDIsInjectiveAndSafe(t *testing.T) {
	seen := map[string]string{}
	for _, k := range []string{"compile", "unit-1.22", "unit-1_22", "a b", "a.20b", "a.20.b", "a\u2e20b", "ü", "x\"y"} {
		id := jobKeyID(k)
		for _, r := range id {
			if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				t.Errorf("jobKeyID(%q) = %q holds %q", k, id, r)
			}
		}
		if other, dup := seen[id]; dup {
			t.Errorf("jobKeyID(%q) = jobKeyID(%q) = %q", k, other, id)
		}
		seen[id] = k
	}
}

func TestHTTPStatusOfGRPCCodes(t *testing.T) {
	for c, want := range map[codes.Code]int{
		codes.InvalidArgument: http.StatusBadRequest, codes.NotFound: http.StatusNotFound,
		codes.PermissionDenied: http.StatusForbidden, codes.Unauthenticated: http.StatusUnauthorized,
		codes.FailedPrecondition: http.StatusConflict, codes.Unavailable: http.StatusServiceUnavailable,
		codes.Internal: http.StatusInternalServerError,
	} {
		if got := httpStatus(status.Error(c, "x")); got != want {
			t.Errorf("%s → %d, want %d", c, got, want)
		}
	}
}

// Stages are columns in stage order whatever the job order; a stage's
// steps keep the build's order.
func TestStagesGroupsJobsByStage(t *testing.T) {
	now := time.UnixMilli(10_000)
	b := &kilnv1.Build{Jobs: []*kilnv1.Job{
		{Key: "deploy", Stage: 2, State: kilnv1.JobState_JOB_STATE_WAITING},
		{Key: "unit", Stage: 1, State: kilnv1.JobState_JOB_STATE_RUNNING, StartedUnixMs: 7_500},
		{Key: "lint", Stage: 1, State: kilnv1.JobState_JOB_STATE_PASSED, StartedUnixMs: 1_000, FinishedUnixMs: 3_000, Spec: &kilnv1.StepSpec{StageName: "test"}},
		{Key: "gate", Stage: 0, State: kilnv1.JobState_JOB_STATE_BLOCKED, Spec: &kilnv1.StepSpec{Approval: &kilnv1.ApprovalSpec{Prompt: "ok?"}}},
	}}
	got := stages(b, now)
	if len(got) != 3 || got[0].Name != "Stage 1" || got[1].Name != "test" || got[2].Name != "Stage 3" {
		t.Fatalf("stages %+v", got)
	}
	if s := got[1].Steps; len(s) != 2 || s[0].Key != "unit" || s[0].Duration != "2.5s" || s[0].State != "running" || s[1].Key != "lint" || s[1].Duration != "2.0s" {
		t.Fatalf("stage 2 steps %+v", s)
	}
	if g := got[0].Steps[0]; !g.Blocked || g.Prompt != "ok?" {
		t.Fatalf("gate %+v", g)
	}
	if d := got[2].Steps[0].Duration; d != "" {
		t.Fatalf("a step that has not started has duration %q", d)
	}
}
