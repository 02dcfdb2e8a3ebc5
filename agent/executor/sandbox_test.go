package executor_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/agent/executor"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// sandboxed returns an executor whose shell steps run under bubblewrap, or
// skips the test when bwrap is missing or cannot create a sandbox here.
func sandboxed(t *testing.T) *executor.Executor {
	t.Helper()
	sb, err := executor.NewSandbox(context.Background())
	if err != nil {
		t.Skipf("no sandbox: %v", err)
	}
	return &executor.Executor{WorkDir: filepath.Join(t.TempDir(), "work"), Sandbox: sb, KillGrace: 2 * time.Second, PipeIdle: time.Second}
}

func runSandboxed(t *testing.T, e *executor.Executor, spec executor.Spec) (executor.Outcome, string) {
	t.Helper()
	out := &lockedBuffer{}
	p, err := e.Start(spec, out)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return p.Wait(), out.String()
}

// TestSandboxVisibility: a sandboxed step sees its workspace read-write,
// and not /work, the agent's work dir, a neighbour's workspace, the
// agent's environment, the host's /tmp or processes outside.
func TestSandboxVisibility(t *testing.T) {
	e := sandboxed(t)
	neighbour := filepath.Join(e.WorkDir, "other-a1")
	if err := os.MkdirAll(neighbour, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(neighbour, "secret"), []byte("s3cret"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostTmp, err := os.CreateTemp("", "kiln-sandbox-host-")
	if err != nil {
		t.Fatal(err)
	}
	hostTmp.Close()
	t.Cleanup(func() { os.Remove(hostTmp.Name()) })
	t.Setenv("KILN_AGENT_SECRET", "agent-token")

	o, out := runSandboxed(t, e, executor.Spec{JobID: "b1.sb", Attempt: 1, Env: map[string]string{"STEP": "yes"}, Commands: []string{
		"echo step=$STEP",
		"echo data > out.txt && cat out.txt",
		"if [ -e /work ]; then echo SEES-/work; fi",
		"if cat " + filepath.Join(neighbour, "secret") + " 2>/dev/null; then echo SEES-neighbour; fi",
		"if [ \"$(ls " + e.WorkDir + ")\" != \"$(basename $KILN_WORKSPACE)\" ]; then echo SEES-work-dir: $(ls " + e.WorkDir + "); fi",
		"if [ -e " + hostTmp.Name() + " ]; then echo SEES-host-tmp; fi",
		"if [ -n \"$KILN_AGENT_SECRET\" ]; then echo SEES-agent-env; fi",
		"if kill -0 " + strconv.Itoa(os.Getpid()) + " 2>/dev/null; then echo SEES-agent-process; fi",
		"if [ $(ls /proc | grep -c '^[0-9]') -gt 5 ]; then echo SEES-host-processes; fi",
		"if touch /usr/kiln-sandbox-probe 2>/dev/null; then echo WRITES-/usr; fi",
	}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome %+v; output:\n%s", o, out)
	}
	if !strings.Contains(out, "step=yes\ndata\n") {
		t.Errorf("step env or workspace write missing:\n%s", out)
	}
	if strings.Contains(out, "SEES") || strings.Contains(out, "WRITES") {
		t.Errorf("the sandbox leaks:\n%s", out)
	}
	if b, err := os.ReadFile(filepath.Join(e.WorkDir, executor.Workspace("b1.sb", 1), "out.txt")); err != nil || string(b) != "data\n" {
		t.Errorf("workspace file on the host: %q, %v", b, err)
	}
}

// TestSandboxNetworkNone: network: none leaves only loopback.
func TestSandboxNetworkNone(t *testing.T) {
	e := sandboxed(t)
	o, out := runSandboxed(t, e, executor.Spec{JobID: "b1.net", Attempt: 1, Runtime: &kilnv1.StepRuntime{Network: "none"},
		Commands: []string{"ls /sys/class/net 2>/dev/null || cat /proc/net/dev"}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome %+v; output:\n%s", o, out)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(strings.TrimSuffix(line, ":")); len(f) > 0 && strings.HasPrefix(f[0], "eth") {
			t.Errorf("network interface visible with network: none:\n%s", out)
		}
	}
}

// TestSandboxCancel: cancel stops the sandboxed step and everything in it.
func TestSandboxCancel(t *testing.T) {
	e := sandboxed(t)
	out := &lockedBuffer{}
	p, err := e.Start(executor.Spec{JobID: "b1.cancel", Attempt: 1, Commands: []string{"sleep 60 & echo started; wait"}}, out)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "started") {
		if time.Now().After(deadline) {
			t.Fatalf("never started:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.Cancel("stop")
	if o := p.Wait(); o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED {
		t.Fatalf("outcome %+v", o)
	}
}

// TestNetworkNoneNeedsSandbox: an unsandboxed agent refuses network: none
// rather than run the step with the network.
func TestNetworkNoneNeedsSandbox(t *testing.T) {
	e := &executor.Executor{WorkDir: t.TempDir()}
	_, err := e.Start(executor.Spec{JobID: "b1.x", Attempt: 1, Runtime: &kilnv1.StepRuntime{Network: "none"}, Commands: []string{"true"}}, &lockedBuffer{})
	if err == nil || !strings.Contains(err.Error(), "network: none") {
		t.Fatalf("Start: %v, want a network: none error", err)
	}
}

// TestSandboxWorkDirUnderReadOnlyDir: when the agent's work dir lies below
// a directory bound read-only, the other workspaces stay hidden, and the
// paths in Hide are masked.
func TestSandboxWorkDirUnderReadOnlyDir(t *testing.T) {
	base := sandboxed(t)
	root := t.TempDir()
	for _, f := range []string{"work/other-a1/secret", "hidden/agent.env", "shared/tool"} {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sb := *base.Sandbox
	sb.ReadOnly = append(append([]string(nil), executor.SystemDirs...), root)
	sb.Hide = []string{filepath.Join(root, "hidden")}
	e := &executor.Executor{WorkDir: filepath.Join(root, "work"), Sandbox: &sb}
	o, out := runSandboxed(t, e, executor.Spec{JobID: "b1.ro", Attempt: 1, Commands: []string{
		"cat " + filepath.Join(root, "shared/tool") + " && echo ' shared-visible'",
		"if [ -e " + filepath.Join(root, "work/other-a1") + " ]; then echo SEES-neighbour; fi",
		"if [ -e " + filepath.Join(root, "hidden/agent.env") + " ]; then echo SEES-hidden; fi",
		"if touch " + filepath.Join(root, "shared/new") + " 2>/dev/null; then echo WRITES-ro; fi",
		"echo ok > mine",
	}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome %+v; output:\n%s", o, out)
	}
	if !strings.Contains(out, "x shared-visible") || strings.Contains(out, "SEES") || strings.Contains(out, "WRITES") {
		t.Fatalf("output:\n%s", out)
	}
}
