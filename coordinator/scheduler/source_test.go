package scheduler

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestAssignmentCarriesSourceAndEnv(t *testing.T) {
	store := state.New()
	ap := &fakeApplier{t: t, fsm: fsm.New(store, nil)}
	s := New(Config{}, store, ap, zaptest.NewLogger(t))
	ctx := context.Background()
	mustApply := func(ct fsmv1.CommandType, msg proto.Message) *fsm.Result {
		t.Helper()
		res, err := ap.Apply(ctx, ct, msg)
		if err != nil || res.Err != nil {
			t.Fatalf("apply %s: %v %v", ct, err, res.Err)
		}
		return res
	}
	commit := strings.Repeat("c", 40)
	step := []*kilnv1.StepSpec{{Key: "a", Commands: []string{"true"}, Env: map[string]string{"KILN_COMMIT": "spoofed"}}}
	mustApply(fsmv1.CommandType_COMMAND_TYPE_ADD_REPO, &fsmv1.AddRepo{Repo: &kilnv1.Repo{
		Name: "web", Url: "https://example.com/web.git", Branch: "main", Pipeline: ".kiln.yaml", PollIntervalMs: 30000}})
	// Two builds of the repository: the second gets repository number 2.
	var b *kilnv1.Build
	for i, id := range []string{"r1", "r2"} {
		b = mustApply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: id, Steps: step, Event: "push",
			Source: &kilnv1.Source{GitUrl: "https://example.com/web.git", Ref: "main", Commit: commit, Branch: "main", Repo: "web"}}).Build
		if b.GetRepoBuildNumber() != uint64(i+1) {
			t.Fatalf("build %d: repo build number %d", i+1, b.GetRepoBuildNumber())
		}
	}
	asg := s.assignment(b.GetJobs()[0], 1)
	want := map[string]string{"KILN_COMMIT": commit, "KILN_BRANCH": "main", "KILN_TAG": "", "KILN_REPO": "web",
		"KILN_BUILD_NUMBER": "2", "KILN_EVENT": "push", "KILN_BUILD_ID": b.GetId()}
	for k, v := range want {
		if got, ok := asg.GetEnv()[k]; !ok || got != v {
			t.Errorf("env %s = %q (set %v), want %q", k, got, ok, v)
		}
	}
	if asg.GetSource().GetCommit() != commit || asg.GetSource().GetGitUrl() != "https://example.com/web.git" {
		t.Errorf("assignment source = %v", asg.GetSource())
	}

	// Without a repository: the URL (credentials removed) and the build id.
	b = mustApply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "r3", Steps: step,
		Source: &kilnv1.Source{GitUrl: "https://bot:s3cret@example.com/x.git", Ref: "v1", Commit: commit, Tag: "v1"}}).Build
	asg = s.assignment(b.GetJobs()[0], 1)
	want = map[string]string{"KILN_REPO": "https://example.com/x.git", "KILN_TAG": "v1", "KILN_BRANCH": "",
		"KILN_BUILD_NUMBER": b.GetId(), "KILN_EVENT": "manual"}
	for k, v := range want {
		if got := asg.GetEnv()[k]; got != v {
			t.Errorf("no repo: env %s = %q, want %q", k, got, v)
		}
	}

	// Without a source: no checkout, empty commit.
	b = mustApply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "r4", Steps: step}).Build
	asg = s.assignment(b.GetJobs()[0], 1)
	if asg.GetSource() != nil || asg.GetEnv()["KILN_COMMIT"] != "" || asg.GetEnv()["KILN_BUILD_NUMBER"] != b.GetId() {
		t.Errorf("no source: source %v env %v", asg.GetSource(), asg.GetEnv())
	}
}
