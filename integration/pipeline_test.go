package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// writeFile writes a build file into the test's directory and returns its
// path.
func writeFile(t testing.TB, dir, name, text string) string {
	t.Helper()
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// runFile runs `kilnctl run -f file` and returns the build id it printed.
func (h *harness) runFile(addrs []string, file string) string {
	h.t.Helper()
	r := h.ctl(addrs, "run", "-f", file)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || r.err != nil || id == "" || strings.ContainsAny(id, " \n") {
		h.t.Fatalf("run -f: want exit 0 and one build id on stdout: %s", r)
	}
	return id
}

// jobByKey returns the job of b with the given key.
func jobByKey(t testing.TB, b buildJSON, key string) jobJSON {
	t.Helper()
	for _, j := range b.Jobs {
		if j.Key == key {
			return j
		}
	}
	t.Fatalf("build %s has no job %q: %+v", b.ID, key, b.Jobs)
	return jobJSON{}
}

// jobStates returns key -> state of b's jobs.
func jobStates(b buildJSON) map[string]string {
	out := map[string]string{}
	for _, j := range b.Jobs {
		out[j.Key] = j.State
	}
	return out
}

// waitStatus polls status until cond accepts it (reads may be served by a
// follower that lags the leader) and returns that status.
func (h *harness) waitStatus(addrs []string, id string, d time.Duration, cond func(buildJSON) error) buildJSON {
	h.t.Helper()
	var b buildJSON
	eventually(h.t, d, func() error {
		var err error
		if b, err = h.status(addrs, id); err != nil {
			return err
		}
		if err := cond(b); err != nil {
			return fmt.Errorf("build %s (%s, reason %q, jobs %v): %w", id, b.State, b.Reason, jobStates(b), err)
		}
		return nil
	})
	return b
}

// waitJobLog polls until `kilnctl logs BUILD --job KEY` prints want.
func (h *harness) waitJobLog(addrs []string, id, key, want string, d time.Duration) {
	h.t.Helper()
	eventually(h.t, d, func() error {
		got, err := h.logs(addrs, id, "--job", key)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("log of build %s job %s:\n got %q\nwant %q", id, key, got, want)
		}
		return nil
	})
}

const gatedPipeline = `name: gated
agents: {pool: gated}
stages:
  - name: build
    steps:
      - key: build-a
        commands: ['echo a1', 'echo a2']
      - key: build-b
        commands: ['echo b1', 'echo b2']
  - name: test
    steps:
      - key: test
        matrix:
          shard: ["1", "2"]
        command: 'echo "test shard $SHARD"'
      - key: lint
        needs: [build-a]
        command: echo lint
  - name: gate
    steps:
      - key: gate
        name: Ship it?
        approval:
          approvers: [alice]
          prompt: Deploy?
  - name: deploy
    steps:
      - key: deploy
        command: echo deployed
`

func TestApprovalSurvivesLeaderKill9WhileBlocked(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, "pool=gated")
	c.startAgent("a2", 2, "pool=gated")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected", "a2": "connected"})
	addrs := c.addrs()

	file := writeFile(t, h.root, "pipeline.yaml", gatedPipeline)
	id := h.runFile(addrs, file)
	ran := []string{"build-a", "build-b", "test-1", "test-2", "lint"}
	b := h.waitStatus(addrs, id, 20*time.Second, func(b buildJSON) error {
		if b.State != "blocked" {
			return fmt.Errorf("want the build blocked")
		}
		if len(b.Jobs) != 7 {
			return fmt.Errorf("want 7 jobs")
		}
		if s := jobStates(b); s["gate"] != "blocked" || s["deploy"] != "waiting" {
			return fmt.Errorf("want gate blocked and deploy waiting")
		}
		return nil
	})
	for _, key := range ran {
		if j := jobByKey(t, b, key); j.State != "passed" || j.Attempt != 1 || j.Agent == "" {
			t.Errorf("blocked build: job %s is %s, attempt %d on %q; want passed, attempt 1", key, j.State, j.Attempt, j.Agent)
		}
	}
	if g := jobByKey(t, b, "gate"); g.Agent != "" || g.Attempt != 0 || g.Approval != nil || !strings.Contains(g.Reason, "waiting for approval") {
		t.Errorf("blocked gate: %+v", g)
	}
	for key, want := range map[string]string{
		"build-a": "a1\na2\n", "build-b": "b1\nb2\n",
		"test-1": "test shard 1\n", "test-2": "test shard 2\n", "lint": "lint\n",
	} {
		h.waitJobLog(addrs, id, key, want, 10*time.Second)
	}

	old := c.waitLeader(10 * time.Second)
	killedAt := time.Now()
	old.kill9()
	nl := c.waitLeader(30 * time.Second)
	t.Logf("kill -9 leader %s while build %s is blocked; new leader %s after %v",
		old.id, id, nl.id, time.Since(killedAt).Round(time.Millisecond))
	live := c.liveAddrs()

	// The gate is still blocked on the new leader's state.
	h.waitStatus([]string{nl.grpcAddr}, id, 10*time.Second, func(b buildJSON) error {
		if s := jobStates(b); b.State != "blocked" || s["gate"] != "blocked" || s["deploy"] != "waiting" {
			return fmt.Errorf("want the build and gate blocked and deploy waiting on the new leader")
		}
		return nil
	})

	// A user who is not an approver is refused, and nothing changes.
	r := h.ctlEnv(live, []string{"USER=mallory"}, "approve", id, "gate")
	if r.code <= 0 || r.err != nil {
		t.Errorf("approve by mallory: want a non-zero exit status: %s", r)
	}
	if !strings.Contains(r.stderr, "mallory@") || !strings.Contains(r.stderr, "approvers: alice") {
		t.Errorf("approve by mallory: stderr should name mallory and say that alice may approve: %s", r)
	}
	b, err := h.status([]string{nl.grpcAddr}, id)
	if err != nil {
		t.Fatal(err)
	}
	if g := jobByKey(t, b, "gate"); b.State != "blocked" || g.State != "blocked" || g.Approval != nil {
		t.Fatalf("after a refused approval the build should still be blocked with no decision: %s, gate %+v", b.State, g)
	}

	r = h.ctlEnv(live, []string{"USER=alice"}, "approve", id, "gate", "--comment", "ship it")
	if r.code != 0 || r.err != nil {
		t.Fatalf("approve by alice: want exit 0: %s", r)
	}
	if want := fmt.Sprintf("build %s: step gate approved\n", id); r.stdout != want {
		t.Errorf("approve by alice: stdout %q, want %q", r.stdout, want)
	}

	checkFinal := func(where string, b buildJSON) {
		t.Helper()
		if b.State != "passed" {
			t.Fatalf("%s: build is %s (reason %q), want passed: %+v", where, b.State, b.Reason, b.Jobs)
		}
		for _, key := range append(slices.Clone(ran), "deploy") {
			if j := jobByKey(t, b, key); j.State != "passed" || j.Attempt != 1 || j.ExitCode != 0 {
				t.Errorf("%s: job %s is %s, attempt %d, exit %d; want passed on attempt 1", where, key, j.State, j.Attempt, j.ExitCode)
			}
		}
		g := jobByKey(t, b, "gate")
		if g.State != "passed" || g.Approval == nil {
			t.Fatalf("%s: gate %+v, want passed with an approval", where, g)
		}
		if a := g.Approval; !a.Approved || !strings.HasPrefix(a.By, "alice@") || a.Comment != "ship it" || a.Time == "" {
			t.Errorf("%s: gate approval %+v, want approved by alice@HOST with comment %q", where, *a, "ship it")
		}
		if !strings.Contains(g.Reason, "approved by alice@") {
			t.Errorf("%s: gate reason %q does not name alice", where, g.Reason)
		}
	}
	b = h.waitStatus(live, id, 20*time.Second, func(b buildJSON) error {
		if !terminal(b.State) {
			return fmt.Errorf("not finished")
		}
		return nil
	})
	checkFinal("after approval", b)
	h.waitJobLog(live, id, "deploy", "deployed\n", 10*time.Second)
	t.Logf("build %s passed %v after the kill", id, time.Since(killedAt).Round(time.Millisecond))

	// The killed node comes back and serves the decision from its own state.
	old.start()
	b = h.waitStatus([]string{old.grpcAddr}, id, 30*time.Second, func(b buildJSON) error {
		if !terminal(b.State) {
			return fmt.Errorf("restarted %s has not caught up", old.id)
		}
		return nil
	})
	checkFinal("restarted "+old.id, b)
	h.waitJobLog([]string{old.grpcAddr}, id, "deploy", "deployed\n", 10*time.Second)
}

func TestRejectAndRetry(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, "pool=retry")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected"})
	addrs := c.addrs()
	runs := runsDir(t, h)

	// A step that fails on its first run only.
	{
		marker := filepath.Join(t.TempDir(), "failed-once")
		file := writeFile(t, h.root, "flaky.yaml", fmt.Sprintf(`agents: {pool: retry}
steps:
  - key: first
    commands: ['%[1]s', 'echo first']
  - key: flaky
    needs: [first]
    commands:
      - '%[1]s'
      - 'echo "flaky attempt $KILN_ATTEMPT"'
      - 'if [ ! -e %[2]s ]; then touch %[2]s; exit 7; fi'
  - key: after
    needs: [flaky]
    commands: ['%[1]s', 'echo after']
`, recordRun(runs), marker))
		id := h.runFile(addrs, file)
		b := h.waitFinished(addrs, id, 20*time.Second)
		if b.State != "failed" || !strings.Contains(b.Reason, "flaky") {
			t.Fatalf("build is %s (reason %q), want failed because of flaky: %+v", b.State, b.Reason, b.Jobs)
		}
		if j := jobByKey(t, b, "flaky"); j.State != "failed" || j.Attempt != 1 || j.ExitCode != 7 {
			t.Errorf("flaky: %+v, want failed on attempt 1 with exit code 7", j)
		}
		if j := jobByKey(t, b, "after"); j.State != "skipped" || !strings.Contains(j.Reason, "flaky") {
			t.Errorf("after: %+v, want skipped because of flaky", j)
		}
		var before []buildJSON
		if err := h.ctlJSON(addrs, &before, "builds"); err != nil {
			t.Fatal(err)
		}

		r := h.ctl(addrs, "retry", id)
		if r.code != 0 || r.err != nil || !strings.HasPrefix(r.stdout, "build "+id+" retried") {
			t.Fatalf("retry: want exit 0 and %q: %s", "build "+id+" retried", r)
		}
		// A follower may still serve the failed build for a moment.
		b = h.waitStatus(addrs, id, 20*time.Second, func(b buildJSON) error {
			if !terminal(b.State) || jobByKey(t, b, "flaky").Attempt < 2 {
				return fmt.Errorf("want the retried build finished")
			}
			return nil
		})
		if b.State != "passed" {
			t.Fatalf("retried build is %s (reason %q), want passed: %+v", b.State, b.Reason, b.Jobs)
		}
		for key, attempt := range map[string]uint32{"first": 1, "flaky": 2, "after": 1} {
			if j := jobByKey(t, b, key); j.State != "passed" || j.Attempt != attempt {
				t.Errorf("retried build: job %s is %s on attempt %d, want passed on attempt %d", key, j.State, j.Attempt, attempt)
			}
		}
		checkRuns(t, runs, id+".first", "1\n")
		checkRuns(t, runs, id+".flaky", "1\n2\n")
		checkRuns(t, runs, id+".after", "1\n")
		h.waitJobLog(addrs, id, "flaky", "flaky attempt 2\n", 10*time.Second)
		h.waitJobLog(addrs, id, "after", "after\n", 10*time.Second)

		var after []buildJSON
		if err := h.ctlJSON(addrs, &after, "builds"); err != nil {
			t.Fatal(err)
		}
		if len(after) != len(before) {
			t.Errorf("retry created a build: %d builds before, %d after", len(before), len(after))
		}

		// A passed build has nothing to retry.
		if r := h.ctl(addrs, "retry", id); r.code <= 0 || r.err != nil {
			t.Errorf("retry of a passed build: want a non-zero exit status: %s", r)
		}
	}

	// A rejected gate fails the build and skips what comes after it.
	{
		file := writeFile(t, h.root, "gate.yaml", `agents: {pool: retry}
stages:
  - steps:
      - key: pre
        command: echo pre
  - steps:
      - key: gate
        approval: {}
  - steps:
      - key: deploy
        command: echo deployed
      - key: notify
        command: echo notified
`)
		id := h.runFile(addrs, file)
		h.waitStatus(addrs, id, 20*time.Second, func(b buildJSON) error {
			if b.State != "blocked" || jobStates(b)["gate"] != "blocked" {
				return fmt.Errorf("want the build and the gate blocked")
			}
			return nil
		})
		r := h.ctlEnv(addrs, []string{"USER=bob"}, "reject", id, "gate", "--comment", "no")
		if want := fmt.Sprintf("build %s: step gate rejected\n", id); r.code != 0 || r.err != nil || r.stdout != want {
			t.Fatalf("reject: want exit 0 and stdout %q: %s", want, r)
		}
		b := h.waitFinished(addrs, id, 20*time.Second)
		if b.State != "failed" || !strings.Contains(b.Reason, "gate") {
			t.Errorf("build is %s (reason %q), want failed because of the gate", b.State, b.Reason)
		}
		if j := jobByKey(t, b, "pre"); j.State != "passed" {
			t.Errorf("pre: %+v, want passed", j)
		}
		g := jobByKey(t, b, "gate")
		if g.State != "failed" || g.Approval == nil {
			t.Fatalf("gate: %+v, want failed with a decision", g)
		}
		if a := g.Approval; a.Approved || !strings.HasPrefix(a.By, "bob@") || a.Comment != "no" {
			t.Errorf("gate decision %+v, want rejected by bob@HOST with comment %q", *a, "no")
		}
		for _, key := range []string{"deploy", "notify"} {
			if j := jobByKey(t, b, key); j.State != "skipped" || j.Attempt != 0 || j.Agent != "" {
				t.Errorf("%s: %+v, want skipped, never run", key, j)
			}
			if logs, err := h.logs(addrs, id, "--job", key); err != nil || logs != "" {
				t.Errorf("%s: log %q (%v), want none", key, logs, err)
			}
		}
		// The decision is final.
		if r := h.ctlEnv(addrs, []string{"USER=bob"}, "approve", id, "gate"); r.code <= 0 || r.err != nil {
			t.Errorf("approve after reject: want a non-zero exit status: %s", r)
		}
	}
}

func TestValidateReportsAllErrorsWithPositions(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(1)
	addrs := c.addrs()

	bad := writeFile(t, h.root, "bad.yaml", `name: bad
stages:
  - name: build
    steps:
      - key: compile
        command: make
        colour: red
      - key: test
        needs: [compil]
        command: make test
        timeout: 10 minutes
`)
	// position and a word the message must contain
	want := []struct {
		pos, word string
	}{
		{"7:9", `"colour"`},
		{"9:17", `"compil"`},
		{"11:18", `"10 minutes"`},
	}
	lineRE := regexp.MustCompile(`^(?:.*/)?bad\.yaml:(\d+:\d+): `)
	check := func(what string, r ctlResult) {
		t.Helper()
		if r.code != 2 || r.err != nil {
			t.Errorf("%s: want exit status 2: %s", what, r)
		}
		// Every line printed is one error; all of them at once.
		var lines []string
		for l := range strings.SplitSeq(r.stdout+r.stderr, "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
		if len(lines) != len(want) {
			t.Fatalf("%s: want exactly %d lines, got %d: %s", what, len(want), len(lines), r)
		}
		for _, l := range lines {
			if !lineRE.MatchString(l) {
				t.Fatalf("%s: line %q is not FILE:LINE:COL: MESSAGE: %s", what, l, r)
			}
		}
		for i, w := range want {
			if pos := lineRE.FindStringSubmatch(lines[i])[1]; pos != w.pos || !strings.Contains(lines[i], w.word) {
				t.Errorf("%s: error %d is %q; want it at bad.yaml:%s: and about %s", what, i+1, lines[i], w.pos, w.word)
			}
		}
	}
	check("validate", h.ctl(addrs, "validate", bad))

	// One build exists (no agent, so it stays queued); a rejected run -f
	// adds none.
	h.submit(addrs, "echo ok")
	l := c.waitLeader(10 * time.Second)
	var before []buildJSON
	if err := h.ctlJSON([]string{l.grpcAddr}, &before, "builds"); err != nil {
		t.Fatal(err)
	}
	check("run -f", h.ctl(addrs, "run", "-f", bad))
	var after []buildJSON
	if err := h.ctlJSON([]string{l.grpcAddr}, &after, "builds"); err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || len(after) != len(before) || after[0].ID != before[0].ID {
		t.Errorf("builds before run -f bad.yaml: %+v; after: %+v", before, after)
	}
}
