package executor_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/client"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/agent/executor/dockertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// lockedBuffer collects output from the executor's copy goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// containersOf lists the containers (running or not) of one agent name.
func containersOf(t *testing.T, d *executor.Docker, agent string) []string {
	t.Helper()
	list, err := d.Client().ContainerList(context.Background(), client.ContainerListOptions{All: true,
		Filters: make(client.Filters).Add("label", executor.LabelAgent+"="+agent)})
	if err != nil {
		t.Fatalf("list containers: %v", err)
	}
	var ids []string
	for _, c := range list.Items {
		ids = append(ids, c.ID)
	}
	return ids
}

// TestDocker runs container steps against the real engine with an image
// built from the host's static busybox.
func TestDocker(t *testing.T) {
	d := dockertest.Engine(t)
	image := dockertest.BuildBusybox(t, d)
	agent := "exec-test-" + strings.ReplaceAll(filepath.Base(t.TempDir()), "/", "")
	root := t.TempDir()
	e := &executor.Executor{WorkDir: filepath.Join(root, "work"), Name: agent, Docker: d, KillGrace: time.Second, PipeIdle: time.Second}
	t.Cleanup(func() { _, _ = d.RemoveOrphans(context.Background(), agent, e.WorkDir, nil) })
	// A neighbour's workspace and a secret beside the work dir.
	if err := os.MkdirAll(filepath.Join(e.WorkDir, "other-a1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(e.WorkDir, "other-a1", "secret"), []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}
	rt := &kilnv1.StepRuntime{Image: image, Pull: "never"}

	start := func(t *testing.T, spec executor.Spec) (*executor.Process, *lockedBuffer) {
		t.Helper()
		out := &lockedBuffer{}
		spec.Runtime = rt
		p, err := e.Start(spec, out)
		if err != nil {
			t.Fatalf("Start: %v", err)
		}
		return p, out
	}

	t.Run("run", func(t *testing.T) {
		p, out := start(t, executor.Spec{JobID: "b1.build", BuildID: "b1", Attempt: 1, Env: map[string]string{"GREETING": "hello"},
			Commands: []string{"echo $GREETING from $(pwd) ws=$KILN_WORKSPACE", "echo to-stderr >&2", "echo data > out.txt", "exit 3"}})
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || o.ExitCode != 3 {
			t.Fatalf("outcome %+v, want FAILED exit 3; output:\n%s", o, out)
		}
		for _, want := range []string{"hello from /workspace ws=/workspace\n", "to-stderr\n"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		b, err := os.ReadFile(filepath.Join(p.WorkspacePath(), "out.txt"))
		if err != nil || string(b) != "data\n" {
			t.Errorf("workspace file: %q, %v", b, err)
		}
		if ids := containersOf(t, d, agent); len(ids) != 0 {
			t.Errorf("containers left after the attempt: %v", ids)
		}
	})

	t.Run("isolation", func(t *testing.T) {
		p, out := start(t, executor.Spec{JobID: "b1.iso", Attempt: 1, Commands: []string{
			"if [ -e /work ]; then echo SEES-/work; fi",
			"if ls / | grep -qx work; then echo SEES-work-dir; fi",
			"if cat /workspace/../other-a1/secret 2>/dev/null; then echo SEES-neighbour; fi",
			"if [ -e " + e.WorkDir + " ]; then echo SEES-agent-work-dir; fi",
			"ls /workspace | wc -l",
		}})
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
			t.Fatalf("outcome %+v; output:\n%s", o, out)
		}
		if strings.Contains(out.String(), "SEES") {
			t.Errorf("the container sees the host:\n%s", out)
		}
	})

	t.Run("limits", func(t *testing.T) {
		old := rt
		rt = &kilnv1.StepRuntime{Image: image, Pull: "never", User: "65534", MemoryBytes: 64 << 20, NanoCpus: 5e8, Network: "none"}
		defer func() { rt = old }()
		p, out := start(t, executor.Spec{JobID: "b1.limits", Attempt: 1, Commands: []string{
			"echo uid=$(id -u)",
			"echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)",
			"echo net=$(ls /sys/class/net)",
		}})
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
			t.Fatalf("outcome %+v; output:\n%s", o, out)
		}
		for _, want := range []string{"uid=65534\n", "mem=67108864\n", "net=lo\n"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("cancel", func(t *testing.T) {
		p, out := start(t, executor.Spec{JobID: "b1.cancel", Attempt: 1, Commands: []string{"echo started", "sleep 60"}})
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), "started") {
			if time.Now().After(deadline) {
				t.Fatalf("never started:\n%s", out)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(containersOf(t, d, agent)) != 1 {
			t.Fatalf("want one running container")
		}
		began := time.Now()
		p.Cancel("test cancel")
		o := p.Wait()
		took := time.Since(began)
		if o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED || o.Reason != "test cancel" {
			t.Fatalf("outcome %+v", o)
		}
		if ids := containersOf(t, d, agent); len(ids) != 0 {
			t.Errorf("containers left after cancel: %v", ids)
		}
		t.Logf("cancel to container removed: %v (grace %v)", took, e.KillGrace)
	})

	t.Run("timeout", func(t *testing.T) {
		p, out := start(t, executor.Spec{JobID: "b1.timeout", Attempt: 1, Timeout: time.Second,
			Commands: []string{"trap '' TERM", "sleep 60"}})
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_TIMED_OUT {
			t.Fatalf("outcome %+v; output:\n%s", o, out)
		}
		if ids := containersOf(t, d, agent); len(ids) != 0 {
			t.Errorf("containers left after timeout: %v", ids)
		}
	})

	t.Run("missing image", func(t *testing.T) {
		out := &lockedBuffer{}
		spec := executor.Spec{JobID: "b1.missing", Attempt: 1, Commands: []string{"true"},
			Runtime: &kilnv1.StepRuntime{Image: "kiln-test/does-not-exist:1", Pull: "never"}}
		p, err := e.Start(spec, out)
		if err != nil {
			t.Fatal(err)
		}
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.Contains(o.Reason, "not present") {
			t.Fatalf("outcome %+v", o)
		}
	})

	t.Run("services", func(t *testing.T) {
		old := rt
		rt = &kilnv1.StepRuntime{Image: image, Pull: "never", Services: []*kilnv1.ServiceSpec{{
			Name: "web", Image: image, Env: map[string]string{"MSG": "from-service"},
			Command: []string{"/bin/sh", "-c", "mkdir /www && echo $MSG > /www/index.html && exec httpd -f -p 8080 -h /www"}}}}
		defer func() { rt = old }()
		p, out := start(t, executor.Spec{JobID: "b1.services", Attempt: 1, Commands: []string{
			// Wait for the service to listen (it starts concurrently).
			"i=0; until wget -q -O- http://web:8080/; do i=$((i+1)); [ $i -lt 100 ] || exit 9; sleep 0.1; done",
		}})
		o := p.Wait()
		if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED || !strings.Contains(out.String(), "from-service\n") {
			t.Fatalf("outcome %+v; output:\n%s", o, out)
		}
		if ids := containersOf(t, d, agent); len(ids) != 0 {
			t.Errorf("containers left after the attempt: %v", ids)
		}
		nets, err := d.Client().NetworkList(context.Background(), client.NetworkListOptions{
			Filters: make(client.Filters).Add("label", executor.LabelAgent+"="+agent)})
		if err != nil || len(nets.Items) != 0 {
			t.Errorf("networks left after the attempt: %v, %v", nets.Items, err)
		}
	})

	t.Run("orphans", func(t *testing.T) {
		p, out := start(t, executor.Spec{JobID: "b1.orphan", Attempt: 2, Commands: []string{"echo started", "sleep 60"}})
		deadline := time.Now().Add(20 * time.Second)
		for !strings.Contains(out.String(), "started") {
			if time.Now().After(deadline) {
				t.Fatalf("never started:\n%s", out)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Someone else's container (another agent name) must survive.
		n, err := d.RemoveOrphans(context.Background(), agent+"-other", e.WorkDir, nil)
		if err != nil || n != 0 {
			t.Fatalf("RemoveOrphans of another agent: %d, %v", n, err)
		}
		n, err = d.RemoveOrphans(context.Background(), agent, e.WorkDir, func(job string, attempt uint32) bool {
			return job == "b1.orphan" && attempt == 2
		})
		if err != nil || n != 0 {
			t.Fatalf("RemoveOrphans keeping the attempt: %d, %v", n, err)
		}
		n, err = d.RemoveOrphans(context.Background(), agent, e.WorkDir, nil)
		if err != nil || n != 1 {
			t.Fatalf("RemoveOrphans: %d, %v", n, err)
		}
		o := p.Wait()
		if o.Result == kilnv1.JobResult_JOB_RESULT_PASSED {
			t.Fatalf("outcome %+v after its container was removed", o)
		}
	})
}
