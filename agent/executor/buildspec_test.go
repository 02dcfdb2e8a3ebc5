package executor

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestBuildspecStep: a step naming a buildspec runs the file found in the
// workspace (put there as an input artifact here, as a checkout would):
// its variables under the step's env, its phases, its artifacts.
func TestBuildspecStep(t *testing.T) {
	const file = "version: 0.2\nenv:\n  variables:\n    WHO: buildspec\n    OVERRIDDEN: no\n" +
		"phases:\n  build:\n    commands:\n      - echo \"hello $WHO $OVERRIDDEN\" > out.txt\n" +
		"  post_build:\n    commands:\n      - cat out.txt\nartifacts:\n  files: [out.txt]\n"
	blobs := map[string]string{shaOf(file): file}
	var mu sync.Mutex
	var uploaded []string
	spec := Spec{JobID: "b1.cb", Attempt: 1, Buildspec: "ci/buildspec.yml",
		Env:    map[string]string{"OVERRIDDEN": "yes"},
		Inputs: []*kilnv1.Artifact{inputOf("ci/buildspec.yml", file, 0o644)},
		Fetch:  fetchFrom(blobs),
		Upload: func(_ context.Context, f *kilnv1.ArtifactFile, _ io.ReaderAt) error {
			mu.Lock()
			defer mu.Unlock()
			uploaded = append(uploaded, f.GetPath())
			return nil
		},
	}
	o, out := run(t, newExec(t), spec)
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome %+v; output:\n%s", o, out)
	}
	if !strings.Contains(out, "kiln: running buildspec ci/buildspec.yml\n") || !strings.Contains(out, "hello buildspec yes\n") {
		t.Errorf("output:\n%s", out)
	}
	if len(uploaded) != 1 || uploaded[0] != "out.txt" {
		t.Errorf("uploaded %v, want the buildspec's artifact out.txt", uploaded)
	}

	// An invalid file fails the step with the first problem's position.
	const bad = "version: 0.1\nphases: {}\n"
	blobs[shaOf(bad)] = bad
	o, out = run(t, newExec(t), Spec{JobID: "b1.bad", Attempt: 1, Buildspec: "buildspec.yml",
		Inputs: []*kilnv1.Artifact{inputOf("buildspec.yml", bad, 0o644)}, Fetch: fetchFrom(blobs)})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(o.Reason, "buildspec failed: buildspec.yml:1:") {
		t.Fatalf("outcome %+v; output:\n%s", o, out)
	}
	// A missing file.
	o, _ = run(t, newExec(t), Spec{JobID: "b1.none", Attempt: 1, Buildspec: "nope.yml"})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.Contains(o.Reason, "nope.yml") {
		t.Fatalf("outcome %+v", o)
	}
}
