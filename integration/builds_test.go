package integration

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// countLines returns the shell loop printing lines prefix-1 … prefix-n and
// the text it prints.
func countLines(prefix string, n int, sleep string) (line, want string) {
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&sb, "%s-%d\n", prefix, i)
	}
	body := "echo " + prefix + "-$i"
	if sleep != "" {
		body += "; sleep " + sleep
	}
	return fmt.Sprintf("for i in $(seq 1 %d); do %s; done", n, body), sb.String()
}

var submittedRE = regexp.MustCompile(`(?m)^build (\S+) submitted$`)

// submittedID returns the build id a `run --wait` announced on stderr.
func submittedID(t testing.TB, r ctlResult) string {
	t.Helper()
	m := submittedRE.FindStringSubmatch(r.stderr)
	if m == nil {
		t.Fatalf("no \"build ID submitted\" line on stderr: %s", r)
	}
	return m[1]
}

func TestTwentyBuildsPassWithExactLogs(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, "pool=twenty")
	c.startAgent("a2", 2, "pool=twenty")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected", "a2": "connected"})
	addrs := c.addrs()

	const builds = 20
	ids := make([]string, builds)
	want := make([]string, builds)
	// Submitted concurrently, the way many users and hooks would.
	results := make([]ctlResult, builds)
	var wg sync.WaitGroup
	for n := range builds {
		var line string
		line, want[n] = countLines(fmt.Sprintf("b%d", n+1), 20, "")
		wg.Go(func() { results[n] = h.ctl(addrs, "run", "--label", "pool=twenty", "--", line) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for n, r := range results {
		ids[n] = strings.TrimSpace(r.stdout)
		if r.code != 0 || r.err != nil || ids[n] == "" || strings.Contains(ids[n], "\n") {
			t.Fatalf("submit b%d: want exit 0 and one build id: %s", n+1, r)
		}
		if seen[ids[n]] {
			t.Fatalf("build id %s handed out twice", ids[n])
		}
		seen[ids[n]] = true
	}
	agentsUsed := map[string]int{}
	for n, id := range ids {
		b := h.waitFinished(addrs, id, 60*time.Second)
		requirePassed(t, b, 1)
		for _, j := range b.Jobs {
			agentsUsed[j.Agent]++
		}
		got, err := h.logs(addrs, id)
		if err != nil {
			t.Fatal(err)
		}
		if got != want[n] {
			t.Errorf("logs of build %s (b%d):\n got %q\nwant %q", id, n+1, got, want[n])
		}
	}
	t.Logf("jobs per agent: %v", agentsUsed)

	var list []buildJSON
	if err := h.ctlJSON(addrs, &list, "builds"); err != nil {
		t.Fatal(err)
	}
	listed := map[string]string{}
	for _, b := range list {
		listed[b.ID] = b.State
	}
	for _, id := range ids {
		if listed[id] != "passed" {
			t.Errorf("builds -o json: build %s is %q, want passed", id, listed[id])
		}
	}

	// run --wait prints exactly the log. (Phases rather than subtests: the
	// harness reports failures on the test that owns the processes.)
	{
		for _, tc := range []struct {
			words []string
			want  string // "" : only compared with kilnctl logs
		}{
			{[]string{"echo", "hi", "there"}, "hi there\n"},
			// The shape of the brief's example: kilnctl joins the words
			// with spaces into one shell line, so this runs `sh -c echo hi`.
			{[]string{"sh", "-c", "echo hi"}, ""},
			{[]string{"printf 'no newline at the end'"}, "no newline at the end"},
		} {
			r := h.ctl(addrs, append([]string{"run", "--wait", "--label", "pool=twenty", "--"}, tc.words...)...)
			if r.code != 0 || r.err != nil {
				t.Fatalf("want exit 0: %s", r)
			}
			id := submittedID(t, r)
			if !strings.Contains(r.stderr, "build "+id+" passed") {
				t.Errorf("stderr does not say %q: %s", "build "+id+" passed", r)
			}
			// kilnctl run --wait followed the submit to the leader; a new
			// kilnctl may read from a follower that lags a little.
			h.waitLogs(addrs, id, r.stdout, 10*time.Second)
			if tc.want != "" && r.stdout != tc.want {
				t.Errorf("%q: stdout %q, want %q", tc.words, r.stdout, tc.want)
			}
			t.Logf("run --wait -- %q printed %q", tc.words, r.stdout)
		}
	}

	// A failing command fails the wait.
	{
		r := h.ctl(addrs, "run", "--wait", "--label", "pool=twenty", "--", "echo about to fail; exit 3")
		if r.code == 0 || r.code == -1 || r.err != nil {
			t.Fatalf("want a non-zero exit status: %s", r)
		}
		id := submittedID(t, r)
		if !strings.Contains(r.stderr, id) || !strings.Contains(r.stderr, "failed") {
			t.Errorf("stderr should name build %s and say failed: %s", id, r)
		}
		if r.stdout != "about to fail\n" {
			t.Errorf("stdout %q, want %q", r.stdout, "about to fail\n")
		}
		b := h.waitFinished(addrs, id, 10*time.Second) // a follower may lag
		if b.State != "failed" || len(b.Jobs) != 1 || b.Jobs[0].State != "failed" || b.Jobs[0].ExitCode != 3 {
			t.Errorf("status: want build failed, job failed with exit code 3; got %+v", b)
		}
	}
}

func TestFollowerReceivesWrites(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 1, "pool=follower")
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected"})
	l := c.waitLeader(30 * time.Second)
	f := c.followers(l)[0]
	t.Logf("leader %s, writing through follower %s (%s)", l.id, f.id, f.grpcAddr)

	r := h.ctl([]string{f.grpcAddr}, "run", "--wait", "--", "echo", "ok")
	if r.code != 0 || r.err != nil || r.stdout != "ok\n" {
		t.Fatalf("want exit 0 and stdout %q: %s", "ok\n", r)
	}
	id := submittedID(t, r)
	// The build was committed through the leader and replicated back to
	// the follower, which serves reads from its own state.
	eventually(t, 10*time.Second, func() error {
		b, err := h.status([]string{f.grpcAddr}, id)
		if err != nil {
			return err
		}
		if b.State != "passed" {
			return fmt.Errorf("follower sees build %s as %s", id, b.State)
		}
		return nil
	})

	// A plain submit (no --wait) through the other follower too.
	f2 := c.followers(l)[1]
	id2 := h.submit([]string{f2.grpcAddr}, "echo second")
	b := h.waitFinished([]string{f2.grpcAddr}, id2, 30*time.Second)
	requirePassed(t, b, 1)
}

func TestDevModeRunsABuild(t *testing.T) {
	h := newHarness(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePorts(t, 1)[0])
	p := h.startProc("coordinator-dev", "kiln-coordinator", "--dev", "--data-dir", h.root+"/dev", "--grpc-addr", addr, "--http-addr", "127.0.0.1:0")
	eventually(t, 30*time.Second, func() error {
		var agents []agentJSON
		if err := h.ctlJSON([]string{addr}, &agents, "agents"); err != nil {
			return err
		}
		for _, a := range agents {
			if a.Name == "local" && a.State == "connected" {
				return nil
			}
		}
		return fmt.Errorf("built-in agent \"local\" not connected: %+v", agents)
	})

	r := h.ctl([]string{addr}, "run", "--wait", "--", "echo", "hello")
	if r.code != 0 || r.err != nil || r.stdout != "hello\n" {
		t.Fatalf("want exit 0 and stdout %q: %s", "hello\n", r)
	}
	p.stop(20 * time.Second)
}
