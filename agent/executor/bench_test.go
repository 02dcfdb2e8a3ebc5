package executor_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/agent/executor/dockertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// benchStep runs `true` b.N times with e and the runtime rt: the fixed cost
// of one attempt with each executor.
func benchStep(b *testing.B, e *executor.Executor, rt *kilnv1.StepRuntime) {
	b.Helper()
	for i := range b.N {
		p, err := e.Start(executor.Spec{JobID: "bench", Attempt: uint32(i + 1), Commands: []string{"true"}, Runtime: rt}, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
		if o := p.Wait(); o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
			b.Fatalf("outcome %+v", o)
		}
	}
}

// BenchmarkShellStep is the baseline: bash on the host.
func BenchmarkShellStep(b *testing.B) {
	benchStep(b, &executor.Executor{WorkDir: b.TempDir()}, nil)
}

// BenchmarkSandboxStep: the same under bubblewrap.
func BenchmarkSandboxStep(b *testing.B) {
	sb, err := executor.NewSandbox(context.Background())
	if err != nil {
		b.Skipf("no sandbox: %v", err)
	}
	benchStep(b, &executor.Executor{WorkDir: b.TempDir(), Sandbox: sb}, nil)
}

// BenchmarkContainerStep: create, attach, start, wait and remove a
// container of the busybox test image.
func BenchmarkContainerStep(b *testing.B) {
	d := dockertest.Engine(b)
	image := dockertest.BuildBusybox(b, d)
	wd := filepath.Join(b.TempDir(), "work")
	b.Cleanup(func() { _, _ = d.RemoveOrphans(context.Background(), "bench", wd, nil) })
	b.ResetTimer()
	benchStep(b, &executor.Executor{WorkDir: wd, Name: "bench", Docker: d}, &kilnv1.StepRuntime{Image: image, Pull: "never"})
}
