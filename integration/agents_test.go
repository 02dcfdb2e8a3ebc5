package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const sigterm = syscall.SIGTERM

// waitRunning waits until the build's single job runs and its log contains
// marker, and returns the job.
func (h *harness) waitRunning(addrs []string, id, marker string, d time.Duration) jobJSON {
	h.t.Helper()
	var job jobJSON
	eventually(h.t, d, func() error {
		b, err := h.status(addrs, id)
		if err != nil {
			return err
		}
		if len(b.Jobs) != 1 || b.Jobs[0].State != "running" || b.Jobs[0].Agent == "" {
			return fmt.Errorf("build %s: want one running job: %+v", id, b)
		}
		job = b.Jobs[0]
		logs, err := h.logs(addrs, id)
		if err != nil {
			return err
		}
		if !strings.Contains(logs, marker) {
			return fmt.Errorf("build %s: log %q does not show %q yet", id, logs, marker)
		}
		return nil
	})
	return job
}

func TestAgentKill9RequeuesJob(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	agents := map[string]*proc{
		"a1": c.startAgent("a1", 1, "pool=lost"),
		"a2": c.startAgent("a2", 1, "pool=lost"),
	}
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected", "a2": "connected"})
	addrs := c.addrs()
	runs := runsDir(t, h)

	// Attempt 1 sleeps "forever"; a retry finishes at once.
	line := recordRun(runs) + `; echo "start attempt $KILN_ATTEMPT"; ` +
		`if [ "$KILN_ATTEMPT" = 1 ]; then sleep 300; fi; echo "done attempt $KILN_ATTEMPT"`
	id := h.submit(addrs, line, "--label", "pool=lost")
	job := h.waitRunning(addrs, id, "start attempt 1\n", 30*time.Second)
	victim := job.Agent
	survivor := map[string]string{"a1": "a2", "a2": "a1"}[victim]
	if survivor == "" {
		t.Fatalf("job runs on unknown agent %q", victim)
	}
	killedAt := time.Now()
	agents[victim].kill9()
	// A broken session is not a lost job: the agent could reconnect within
	// its lease. The lease lapses at the earliest TTL - heartbeat interval
	// (1.5s) after the kill, so every status read that returned before
	// 1.4s must still show attempt 1 running on the victim.
	for {
		b, err := h.status(addrs, id)
		elapsed := time.Since(killedAt)
		if elapsed >= 1400*time.Millisecond {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if j := b.Jobs[0]; j.Attempt != 1 || j.State != "running" || j.Agent != victim {
			t.Fatalf("%v after kill -9, before the lease could lapse, the job is already %s, attempt %d on %q",
				elapsed.Round(time.Millisecond), j.State, j.Attempt, j.Agent)
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}

	b := h.waitFinished(addrs, id, 60*time.Second)
	t.Logf("job re-ran and finished %v after kill -9 of %s", time.Since(killedAt).Round(time.Millisecond), victim)
	requirePassed(t, b, 2)
	if got := b.Jobs[0].Agent; got != survivor {
		t.Errorf("attempt 2 ran on %q, want %s", got, survivor)
	}
	logs, err := h.logs(addrs, id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(logs, "start attempt 2\ndone attempt 2\n") || strings.Contains(logs, "done attempt 1") {
		t.Errorf("log %q: want attempt 2's output at the end and no end of attempt 1", logs)
	}
	checkRuns(t, runs, b.Jobs[0].ID, "1\n2\n")
	eventually(t, 20*time.Second, func() error {
		got, err := c.agents()
		if err != nil {
			return err
		}
		if s := got[victim].State; s != "lost" && s != "disconnected" {
			return fmt.Errorf("killed agent %s is %q, want lost or disconnected", victim, s)
		}
		t.Logf("killed agent %s is shown as %s", victim, got[victim].State)
		return nil
	})

	// With retry: {on_agent_lost: 0} the job ends lost and the build fails,
	// although another agent could have run it.
	{
		agents["a3"] = c.startAgent("a3", 1, "pool=lost")
		c.waitAgentStates(30*time.Second, map[string]string{survivor: "connected", "a3": "connected"})
		file := filepath.Join(h.root, "fragile.yaml")
		spec := fmt.Sprintf(`steps:
  - key: fragile
    commands:
      - '%s'
      - 'echo "start attempt $KILN_ATTEMPT"'
      - 'sleep 300'
      - 'echo never'
    agents: {pool: lost}
    retry: {on_agent_lost: 0}
`, recordRun(runs))
		if err := os.WriteFile(file, []byte(spec), 0o644); err != nil {
			t.Fatal(err)
		}
		r := h.ctl(addrs, "run", "-f", file)
		id := strings.TrimSpace(r.stdout)
		if r.code != 0 || id == "" {
			t.Fatalf("run -f: %s", r)
		}
		job := h.waitRunning(addrs, id, "start attempt 1\n", 30*time.Second)
		agents[job.Agent].kill9()

		b := h.waitFinished(addrs, id, 60*time.Second)
		if b.State != "failed" {
			t.Errorf("build is %s, want failed: %+v", b.State, b)
		}
		if len(b.Jobs) != 1 {
			t.Fatalf("want one job: %+v", b)
		}
		j := b.Jobs[0]
		if j.State != "lost" || j.Attempt != 1 {
			t.Errorf("job: want lost on attempt 1, got %s on attempt %d", j.State, j.Attempt)
		}
		if !strings.Contains(j.Reason, job.Agent) {
			t.Errorf("job reason %q does not name the lost agent %s", j.Reason, job.Agent)
		}
		checkRuns(t, runs, j.ID, "1\n")
	}
}

func TestAgentSigtermDrains(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(1)
	a := c.startAgent("a1", 2, "pool=drain")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected"})
	addrs := c.addrs()

	id := h.submit(addrs, "echo start; sleep 1; echo end", "--label", "pool=drain")
	h.waitRunning(addrs, id, "start\n", 30*time.Second)
	a.signal(sigterm)
	// Once the cluster knows the agent drains, its free slot takes no job.
	eventually(t, 10*time.Second, func() error {
		if !a.running() {
			t.Log("the agent finished draining before its draining state was seen")
			return nil
		}
		got, err := c.agents()
		if err != nil {
			return err
		}
		if s := got["a1"].State; s != "draining" {
			return fmt.Errorf("agent a1 is %q, want draining", s)
		}
		return nil
	})
	later := h.submit(addrs, "echo later", "--label", "pool=drain")

	code, ok := a.wait(30 * time.Second)
	if !ok {
		t.Fatal("agent did not exit within 30s of SIGTERM")
	}
	if code != 0 {
		t.Errorf("agent exited with code %d after draining, want 0", code)
	}
	// The agent exits only once its job's result is committed.
	b, err := h.status(addrs, id)
	if err != nil {
		t.Fatal(err)
	}
	requirePassed(t, b, 1)
	logs, err := h.logs(addrs, id)
	if err != nil {
		t.Fatal(err)
	}
	if logs != "start\nend\n" {
		t.Errorf("log %q, want %q", logs, "start\nend\n")
	}

	lb, err := h.status(addrs, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(lb.Jobs) != 1 || lb.Jobs[0].State != "queued" || lb.Jobs[0].Agent != "" {
		t.Errorf("a build submitted while the only agent drained should wait in the queue: %+v", lb)
	}
	// A fresh agent picks it up.
	c.startAgent("a2", 1, "pool=drain")
	lb = h.waitFinished(addrs, later, 30*time.Second)
	requirePassed(t, lb, 0)
	if lb.Jobs[0].Agent != "a2" {
		t.Errorf("the queued build ran on %q, want a2", lb.Jobs[0].Agent)
	}
}
