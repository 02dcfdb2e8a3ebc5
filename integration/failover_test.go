package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// runsDir returns a directory where job commands record each execution
// (`echo $KILN_ATTEMPT >> DIR/$KILN_JOB_ID`), so a test can count how often
// a job really ran, independently of what the cluster reports.
func runsDir(t testing.TB, h *harness) string {
	t.Helper()
	dir := filepath.Join(h.root, "runs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// recordRun is the shell snippet recording an execution in dir.
func recordRun(dir string) string {
	return fmt.Sprintf(`echo "$KILN_ATTEMPT" >> %s/"$KILN_JOB_ID"`, dir)
}

// checkRuns fails unless job jobID ran exactly as the given attempts.
func checkRuns(t testing.TB, dir, jobID, want string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, jobID))
	if err != nil {
		t.Errorf("job %s: %v", jobID, err)
		return
	}
	if string(data) != want {
		t.Errorf("job %s ran as attempts %q, want %q", jobID, data, want)
	}
}

func TestLeaderKill9MidBuildLosesNoLogLine(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, "pool=failover")
	c.startAgent("a2", 2, "pool=failover")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected", "a2": "connected"})
	addrs := c.addrs()
	runs := runsDir(t, h)

	const builds = 5 // 4 fill every slot, the 5th waits in the queue
	lines := make([]string, builds)
	want := make([]string, builds)
	for n := range builds {
		loop, text := countLines(fmt.Sprintf("L%d", n+1), 200, "0.02")
		lines[n], want[n] = recordRun(runs)+"; "+loop, text
	}

	// Build 1 is followed live by `run --wait` across the failover.
	follow := h.ctlAsync(addrs, "run", "--wait", "--label", "pool=failover", "--", lines[0])
	ids := make([]string, builds)
	eventually(t, 30*time.Second, func() error {
		var list []buildJSON
		if err := h.ctlJSON(addrs, &list, "builds"); err != nil {
			return err
		}
		if len(list) != 1 {
			return fmt.Errorf("want the one build of run --wait, have %d", len(list))
		}
		ids[0] = list[0].ID
		return nil
	})
	for n := 1; n < 4; n++ {
		ids[n] = h.submit(addrs, lines[n], "--label", "pool=failover")
	}
	// Wait until the four builds run and have streamed part of their log.
	counts := make([]int, 4)
	eventually(t, 30*time.Second, func() error {
		for n := range 4 {
			logs, err := h.logs(addrs, ids[n])
			if err != nil {
				return err
			}
			counts[n] = strings.Count(logs, "\n")
			if counts[n] < 10 {
				return fmt.Errorf("build %s has %d lines so far", ids[n], counts[n])
			}
		}
		return nil
	})
	// Every slot is busy: the fifth build is acknowledged but queued.
	ids[4] = h.submit(addrs, lines[4], "--label", "pool=failover")
	var queued buildJSON
	eventually(t, 10*time.Second, func() error { // a follower may not have it yet
		var err error
		queued, err = h.status(addrs, ids[4])
		return err
	})
	if len(queued.Jobs) != 1 || queued.Jobs[0].State != "queued" {
		t.Fatalf("with every slot busy the fifth build's job should be queued: %+v", queued)
	}
	for n := range 4 {
		b, err := h.status(addrs, ids[n])
		if err != nil {
			t.Fatal(err)
		}
		if b.State != "running" {
			t.Fatalf("build %s should still be running before the kill: %+v", ids[n], b)
		}
	}

	old := c.waitLeader(10 * time.Second)
	t.Logf("kill -9 leader %s; lines streamed so far: %v", old.id, counts)
	killedAt := time.Now()
	old.kill9()
	nl := c.waitLeader(30 * time.Second)
	t.Logf("new leader %s after %v", nl.id, time.Since(killedAt).Round(time.Millisecond))

	live := c.liveAddrs()
	for n, id := range ids {
		b := h.waitFinished(live, id, 90*time.Second)
		requirePassed(t, b, 1)
		logs, err := h.logs(live, id)
		if err != nil {
			t.Fatal(err)
		}
		if logs != want[n] {
			t.Errorf("build %s (L%d): log differs from what the command printed:\n%s", id, n+1, logDiff(logs, want[n]))
		}
		for _, j := range b.Jobs {
			checkRuns(t, runs, j.ID, "1\n")
		}
	}
	t.Logf("all builds passed %v after the kill", time.Since(killedAt).Round(time.Millisecond))

	r := follow.result(t, 60*time.Second)
	if r.code != 0 || r.err != nil {
		t.Errorf("run --wait across the failover: want exit 0: %s", r)
	} else if r.stdout != want[0] {
		t.Errorf("run --wait across the failover printed a different log:\n%s", logDiff(r.stdout, want[0]))
	}

	// The killed node comes back and catches up: served from its own state.
	old.start()
	var reference []any
	if err := h.ctlJSON(live, &reference, "builds"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		var got []any
		if err := h.ctlJSON([]string{old.grpcAddr}, &got, "builds"); err != nil {
			return err
		}
		if !reflect.DeepEqual(got, reference) {
			return fmt.Errorf("restarted %s lists\n%s\nthe others list\n%s", old.id, jsonText(got), jsonText(reference))
		}
		return nil
	})
	for n, id := range ids {
		logs, err := h.logs([]string{old.grpcAddr}, id)
		if err != nil {
			t.Fatal(err)
		}
		if logs != want[n] {
			t.Errorf("restarted %s: log of build %s differs:\n%s", old.id, id, logDiff(logs, want[n]))
		}
	}
}

// logDiff describes how got differs from want line by line: missing,
// doubled and reordered lines.
func logDiff(got, want string) string {
	g := strings.SplitAfter(got, "\n")
	w := strings.SplitAfter(want, "\n")
	var out []string
	count := map[string]int{}
	for _, l := range g {
		count[l]++
	}
	for _, l := range w {
		switch n := count[l]; {
		case n == 0:
			out = append(out, fmt.Sprintf("missing %q", l))
		case n > 1:
			out = append(out, fmt.Sprintf("%d times %q", n, l))
		}
	}
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			out = append(out, fmt.Sprintf("first difference at line %d: got %q, want %q", i+1, g[i], w[i]))
			break
		}
	}
	out = append(out, fmt.Sprintf("%d lines, want %d", len(g), len(w)))
	if len(out) > 20 {
		out = append(out[:20], "…")
	}
	return strings.Join(out, "\n")
}

func jsonText(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

// clusterView is what kilnctl shows about the cluster's data.
type clusterView struct {
	Builds []map[string]any
	Status map[string]map[string]any
	Logs   map[string]string
	Agents []map[string]any
}

func (h *harness) view(addrs []string) (clusterView, error) {
	v := clusterView{Status: map[string]map[string]any{}, Logs: map[string]string{}}
	if err := h.ctlJSON(addrs, &v.Builds, "builds"); err != nil {
		return v, err
	}
	for _, b := range v.Builds {
		id, _ := b["id"].(string)
		var st map[string]any
		if err := h.ctlJSON(addrs, &st, "status", id); err != nil {
			return v, err
		}
		v.Status[id] = st
		logs, err := h.logs(addrs, id)
		if err != nil {
			return v, err
		}
		v.Logs[id] = logs
	}
	if err := h.ctlJSON(addrs, &v.Agents, "agents"); err != nil {
		return v, err
	}
	slices.SortFunc(v.Agents, func(a, b map[string]any) int {
		return strings.Compare(fmt.Sprint(a["name"]), fmt.Sprint(b["name"]))
	})
	return v, nil
}

func TestFullClusterRestartKeepsState(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, "pool=restart")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected"})
	addrs := c.addrs()

	type spec struct{ line, state string }
	specs := []spec{
		{"echo one; echo two", "passed"},
		{"printf 'partial line'", "passed"},
		{"echo going to fail; exit 5", "failed"},
		{"for i in $(seq 1 50); do echo line-$i; done", "passed"},
	}
	for _, s := range specs {
		id := h.submit(addrs, s.line, "--label", "pool=restart")
		if b := h.waitFinished(addrs, id, 60*time.Second); b.State != s.state {
			t.Fatalf("build %s (%q) is %s, want %s", id, s.line, b.State, s.state)
		}
	}
	// Acknowledged but not yet run (no agent has the label): it must come
	// back queued.
	queued := h.submit(addrs, "echo never runs", "--label", "pool=nobody")
	var before clusterView
	eventually(t, 20*time.Second, func() error {
		var err error
		if before, err = h.view(addrs); err != nil {
			return err
		}
		if len(before.Builds) != len(specs)+1 {
			return fmt.Errorf("want %d builds, have %d", len(specs)+1, len(before.Builds))
		}
		if st := before.Status[queued]["state"]; st != "queued" {
			return fmt.Errorf("build %s is %v, want queued", queued, st)
		}
		if len(before.Agents) != 1 || before.Agents[0]["state"] != "connected" || before.Agents[0]["running"] != float64(0) {
			return fmt.Errorf("want agent a1 connected and idle: %v", before.Agents)
		}
		return nil
	})

	for _, n := range c.nodes {
		n.signal(sigterm)
	}
	for _, n := range c.nodes {
		code, ok := n.wait(30 * time.Second)
		switch {
		case !ok:
			t.Fatalf("%s did not exit within 30s of SIGTERM", n.id)
		case code != 0:
			t.Errorf("%s exited with code %d after SIGTERM, want 0", n.id, code)
		}
	}
	for _, n := range c.nodes {
		n.start()
	}
	c.waitLeader(30 * time.Second)

	eventually(t, 30*time.Second, func() error {
		after, err := h.view(addrs)
		if err != nil {
			return err
		}
		if !reflect.DeepEqual(before, after) {
			return fmt.Errorf("after the restart kilnctl shows\n%s\nbefore it showed\n%s", jsonText(after), jsonText(before))
		}
		return nil
	})

	// And the restarted cluster still works.
	r := h.ctl(addrs, "run", "--wait", "--label", "pool=restart", "--", "echo", "after restart")
	if r.code != 0 || r.stdout != "after restart\n" {
		t.Errorf("build after the restart: %s", r)
	}
}
