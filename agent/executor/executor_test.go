package executor

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer collects output and signals when it contains a string.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waitFor string
	seen    chan struct{}
	once    sync.Once
}

func newSyncBuffer(waitFor string) *syncBuffer {
	return &syncBuffer{waitFor: waitFor, seen: make(chan struct{})}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if b.waitFor != "" && strings.Contains(b.buf.String(), b.waitFor) {
		b.once.Do(func() { close(b.seen) })
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newExec(t *testing.T) *Executor {
	return &Executor{WorkDir: t.TempDir(), KillGrace: 2 * time.Second, PipeIdle: time.Second}
}

func run(t *testing.T, e *Executor, spec Spec) (Outcome, string) {
	t.Helper()
	out := newSyncBuffer("")
	p, err := e.Start(spec, out)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return p.Wait(), out.String()
}

func TestResults(t *testing.T) {
	e := newExec(t)
	cases := []struct {
		name     string
		commands []string
		result   kilnv1.JobResult
		code     int32
		output   string
	}{
		{"pass", []string{"echo hi"}, kilnv1.JobResult_JOB_RESULT_PASSED, 0, "hi\n"},
		{"exit code", []string{"echo before", "exit 3"}, kilnv1.JobResult_JOB_RESULT_FAILED, 3, "before\n"},
		{"stops at first failure", []string{"echo one", "false", "echo never"}, kilnv1.JobResult_JOB_RESULT_FAILED, 1, "one\n"},
		{"no commands", nil, kilnv1.JobResult_JOB_RESULT_PASSED, 0, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, out := run(t, e, Spec{JobID: "1.job", Attempt: uint32(i + 1), Commands: tc.commands})
			if o.Result != tc.result || o.ExitCode != tc.code {
				t.Fatalf("outcome = %+v, want %v/%d", o, tc.result, tc.code)
			}
			if out != tc.output {
				t.Fatalf("output = %q, want %q", out, tc.output)
			}
		})
	}
}

func TestOutputExactAndOrdered(t *testing.T) {
	e := newExec(t)
	o, out := run(t, e, Spec{JobID: "1.out", Attempt: 1, Commands: []string{
		"echo a", "echo b >&2", "printf 'c'", "printf '\\000\\377' >&2", "head -c 200000 /dev/zero | tr '\\0' x",
	}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome = %+v", o)
	}
	want := "a\nb\nc\x00\xff" + strings.Repeat("x", 200000)
	if out != want {
		t.Fatalf("output mismatch: got %d bytes, want %d; prefix %q", len(out), len(want), out[:min(len(out), 20)])
	}
}

func TestEnvAndWorkspace(t *testing.T) {
	e := newExec(t)
	e.Env = []string{"PATH=" + os.Getenv("PATH"), "BASE=base"}
	ws := filepath.Join(e.WorkDir, Workspace("7.build/x", 2))
	if err := os.MkdirAll(ws, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "stale"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, out := run(t, e, Spec{JobID: "7.build/x", BuildID: "7", Attempt: 2, Env: map[string]string{"FOO": "bar", "BASE": "over"},
		Commands: []string{
			`echo "$FOO $BASE $KILN_BUILD_ID $KILN_JOB_ID $KILN_ATTEMPT"`,
			`test "$KILN_WORKSPACE" = "$(pwd)"`,
			`ls -A`,
			`echo made > file`,
		}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome = %+v, output %q", o, out)
	}
	if want := "bar over 7 7.build/x 2\n"; out != want {
		t.Fatalf("output = %q, want %q (stale file should be gone)", out, want)
	}
	if filepath.Base(ws) != "7.build_x-a2" {
		t.Fatalf("workspace name = %q", filepath.Base(ws))
	}
	if b, err := os.ReadFile(filepath.Join(ws, "file")); err != nil || string(b) != "made\n" {
		t.Fatalf("workspace kept after the job: %q %v", b, err)
	}
}

func TestWorkspaceName(t *testing.T) {
	for in, want := range map[string]string{
		"12.test":  "12.test-a1",
		"../../x":  "_.._.._x-a1",
		"":         "_-a1",
		"a b\x00c": "a_b_c-a1",
	} {
		if got := Workspace(in, 1); got != want {
			t.Errorf("Workspace(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTimeout(t *testing.T) {
	e := newExec(t)
	o, out := run(t, e, Spec{JobID: "1.slow", Attempt: 1, Timeout: 200 * time.Millisecond, Commands: []string{"echo start", "sleep 1000"}})
	if o.Result != kilnv1.JobResult_JOB_RESULT_TIMED_OUT || !strings.Contains(o.Reason, "timed out after 200ms") {
		t.Fatalf("outcome = %+v", o)
	}
	if out != "start\n" {
		t.Fatalf("output = %q", out)
	}
}

// processGone reports whether pid has gone away (absent, or a zombie
// waiting for a reaper that is not us). pid is not our child, so there is
// no exit to wait for: this is a bounded poll of /proc. A process closes
// its files (the executor's pipe EOF) just before it turns into a zombie,
// so the poll covers that last step.
func processGone(pid int) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !processDead(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func processDead(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// startWithPid starts spec, whose first output line is a child's pid; with
// alive, it checks that the child runs.
func startWithPid(t *testing.T, e *Executor, spec Spec, alive bool) (*Process, int, *syncBuffer) {
	t.Helper()
	out := newSyncBuffer("\n")
	p, err := e.Start(spec, out)
	if err != nil {
		t.Fatal(err)
	}
	<-out.seen
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(out.String(), "\n", 2)[0]))
	if err != nil {
		t.Fatalf("bad pid line %q", out.String())
	}
	if alive && processDead(pid) {
		t.Fatalf("child %d not running", pid)
	}
	return p, pid, out
}

func TestCancelKillsBackgroundChildren(t *testing.T) {
	e := newExec(t)
	p, pid, _ := startWithPid(t, e, Spec{JobID: "1.bg", Attempt: 1, Commands: []string{"sleep 1000 &", "echo $!", "wait"}}, true)
	p.Cancel("user asked")
	o := p.Wait()
	if o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED || o.Reason != "user asked" {
		t.Fatalf("outcome = %+v", o)
	}
	if !processGone(pid) {
		t.Fatalf("background child %d survived the cancel", pid)
	}
}

func TestFinishedScriptLeavesNoChildren(t *testing.T) {
	e := newExec(t)
	p, pid, _ := startWithPid(t, e, Spec{JobID: "1.orphan", Attempt: 1, Commands: []string{"sleep 1000 &", "echo $!"}}, false)
	o := p.Wait()
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome = %+v", o)
	}
	if !processGone(pid) {
		t.Fatalf("background child %d outlived the job", pid)
	}
}

func TestCancelEscalatesToSIGKILL(t *testing.T) {
	e := newExec(t)
	e.KillGrace = 100 * time.Millisecond
	p, pid, _ := startWithPid(t, e, Spec{JobID: "1.stubborn", Attempt: 1, Commands: []string{"trap '' TERM", "sleep 1000 &", "echo $!", "wait"}}, true)
	p.Cancel("")
	o := p.Wait()
	if o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED {
		t.Fatalf("outcome = %+v", o)
	}
	if !processGone(pid) {
		t.Fatalf("child %d ignoring SIGTERM survived", pid)
	}
}

func TestEscapedProcessCannotHangWait(t *testing.T) {
	if _, err := os.Stat("/usr/bin/setsid"); err != nil {
		t.Skip("setsid not installed")
	}
	e := newExec(t)
	e.PipeIdle = 100 * time.Millisecond
	p, pid, _ := startWithPid(t, e, Spec{JobID: "1.escape", Attempt: 1, Commands: []string{
		// The escaped process writes its pid once it is in its own session.
		`setsid sh -c 'echo $$ > ../escaped.pid; exec sleep 1000' &`,
		`while [ ! -s ../escaped.pid ]; do sleep 0.01; done`,
		`cat ../escaped.pid`,
	}}, false)
	o := p.Wait()
	// The escaped process is outside the group; clean it up ourselves.
	if proc, err := os.FindProcess(pid); err == nil {
		_ = proc.Kill()
	}
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("outcome = %+v", o)
	}
}
