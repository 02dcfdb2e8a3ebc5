package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Knobs of TestKillRestartRounds.
const (
	// killRoundsEnv sets the number of rounds (default defaultKillRounds).
	killRoundsEnv     = "KILN_KILL_ROUNDS"
	defaultKillRounds = 6
	// killSeedEnv fixes the seed of the random choices (default: the clock).
	killSeedEnv = "KILN_KILL_SEED"

	// rejoinBound is how long a restarted coordinator may take to be a
	// member again whose applied index reached the leader's commit index.
	rejoinBound = 30 * time.Second
	// maxBeforeKill and maxDown bound the random pauses that pick the
	// moment of a kill and how long the victim stays down.
	maxBeforeKill = 1500 * time.Millisecond
	maxDown       = time.Second
	// raftPoll is the polling interval of the raft status probes.
	raftPoll = 25 * time.Millisecond

	// loadWorkers builds run at any time, each printing loadLines lines
	// with a short sleep between them, so that the raft log grows all
	// through the rounds.
	loadWorkers = 4
	loadLines   = 200
	loadSleep   = "0.01"
	loadLabel   = "pool=kill"
)

// killKind is what a round kills.
type killKind int

const (
	// killLeader kills the current leader.
	killLeader killKind = iota
	// killFollower kills a follower.
	killFollower
	// killNewLeader kills the leader, restarts it, and kills the leader of
	// the next term the moment it is observed.
	killNewLeader
)

func (k killKind) String() string {
	switch k {
	case killLeader:
		return "leader"
	case killFollower:
		return "follower"
	case killNewLeader:
		return "new-leader"
	}
	return fmt.Sprintf("killKind(%d)", int(k))
}

// TestKillRestartRounds kills coordinators with SIGKILL and restarts them
// with the same data directory and flags, round after round, while builds
// stream their logs through the cluster. Every restart must rejoin and
// catch up; at the end every acknowledged build must have passed with each
// line of its log exactly once, in order.
//
// Leader changes under load truncate the uncommitted tail of a node's raft
// log; a later restart then reads segments sealed by that truncation (the
// raft-wal v0.4.0 bug: "sealed segment has no index block" on restart).
// KILN_KILL_ROUNDS sets the number of rounds, KILN_KILL_SEED the seed.
func TestKillRestartRounds(t *testing.T) {
	rounds := envInt(t, killRoundsEnv, defaultKillRounds)
	seed := int64(envInt(t, killSeedEnv, int(time.Now().UnixNano())))
	t.Logf("%d rounds, seed %d (reproduce with %s=%d %s=%d)", rounds, seed, killRoundsEnv, rounds, killSeedEnv, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	start := time.Now()

	h := newHarness(t)
	c := h.startCluster(3)
	c.startAgent("a1", 2, loadLabel)
	c.startAgent("a2", 2, loadLabel)
	c.waitAgentStates(30*time.Second, map[string]string{"a1": "connected", "a2": "connected"})
	k := &killer{t: t, c: c, rng: rng, probe: newRaftProbe(t, c)}
	k.awaitRejoined(nil) // every node answers and is caught up before the first kill

	load := startLoad(h, c.addrs())
	// Wait for log traffic before the first kill.
	eventually(t, 30*time.Second, func() error {
		if n := load.acked(); n == 0 {
			return fmt.Errorf("no build submitted yet")
		}
		return nil
	})

	// Each kind in equal share, in random order.
	kinds := make([]killKind, rounds)
	for i := range kinds {
		kinds[i] = killKind(i % 3)
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })

	roundsStart := time.Now()
	for i, kind := range kinds {
		k.round(i+1, kind)
	}
	t.Logf("%d rounds in %v", rounds, time.Since(roundsStart).Round(time.Millisecond))

	builds := load.stop(t)
	truncated, restartedAfter := tailTruncations(c)
	t.Logf("raft log tail truncations (%q) seen: %d; restarts of a node after it truncated its tail: %d",
		truncationLog, truncated, restartedAfter)
	checkLoad(t, h, c.addrs(), builds)
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// envInt returns the integer in environment variable name, or def when it
// is unset.
func envInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// ---- raft status over gRPC ----

// raftProbe asks coordinators for their raft status through the
// ClusterService gRPC API. kilnctl cluster status does not print the raft
// indexes, and a process per poll would make the tight leader watch slow.
type raftProbe struct {
	clients map[*node]kilnv1.ClusterServiceClient
}

// newRaftProbe opens one connection per coordinator, closed at the end of
// the test. The connections reconnect quickly after a restart.
func newRaftProbe(t *testing.T, c *cluster) *raftProbe {
	t.Helper()
	p := &raftProbe{clients: map[*node]kilnv1.ClusterServiceClient{}}
	for _, n := range c.nodes {
		conn, err := grpc.NewClient(n.grpcAddr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 500 * time.Millisecond},
				MinConnectTimeout: time.Second,
			}))
		if err != nil {
			t.Fatalf("dial %s: %v", n.id, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		p.clients[n] = kilnv1.NewClusterServiceClient(conn)
	}
	return p
}

// status returns n's view of the cluster.
func (p *raftProbe) status(n *node) (*kilnv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	resp, err := p.clients[n].Status(ctx, &kilnv1.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("%s: cluster status: %w", n.id, err)
	}
	return resp, nil
}

// member returns n's entry in its own member list, or an error when n
// does not report itself as a voting member.
func member(n *node, st *kilnv1.StatusResponse) (*kilnv1.Node, error) {
	if st.GetNodeId() != n.id {
		return nil, fmt.Errorf("%s answers as %q", n.id, st.GetNodeId())
	}
	for _, m := range st.GetNodes() {
		if m.GetId() == n.id {
			if !m.GetVoter() {
				return nil, fmt.Errorf("%s reports itself as a non-voter: %v", n.id, m)
			}
			return m, nil
		}
	}
	return nil, fmt.Errorf("%s is not in its own member list: %v", n.id, st.GetNodes())
}

// ---- kill rounds ----

// killer runs the kill rounds of one cluster.
type killer struct {
	t     *testing.T
	c     *cluster
	rng   *rand.Rand
	probe *raftProbe
}

// pause waits a random time below max. It picks the moment of a fault; it
// synchronises nothing.
func (k *killer) pause(max time.Duration) time.Duration {
	d := time.Duration(k.rng.Int64N(int64(max)))
	time.Sleep(d)
	return d
}

// round runs one round: a random pause, the kill(s) and restart(s) of its
// kind, and the wait until every coordinator has caught up again.
func (k *killer) round(i int, kind killKind) {
	k.t.Helper()
	began := time.Now()
	k.pause(maxBeforeKill)
	leader, st := k.awaitLeader(0)
	var victims []*node
	switch kind {
	case killLeader:
		victims = []*node{leader}
		k.killRestart(leader)
	case killFollower:
		f := k.c.followers(leader)
		victims = []*node{f[k.rng.IntN(len(f))]}
		k.killRestart(victims[0])
	case killNewLeader:
		k.killRestart(leader)
		// The leader of a later term, killed as soon as it is seen.
		nl, _ := k.awaitLeader(st.GetTerm())
		victims = []*node{leader, nl}
		k.killRestart(nl)
	}
	k.awaitRejoined(victims)
	ids := make([]string, len(victims))
	for j, v := range victims {
		ids[j] = v.id
	}
	k.t.Logf("round %d (%s): killed and restarted %s; all caught up %v after the round began",
		i, kind, strings.Join(ids, ", "), time.Since(began).Round(time.Millisecond))
}

// killRestart kills n with SIGKILL, waits a random short time and starts
// it again with the same data directory and flags.
func (k *killer) killRestart(n *node) {
	k.t.Helper()
	n.kill9()
	k.pause(maxDown)
	n.start()
}

// awaitLeader polls the running coordinators until one reports itself the
// leader of a term after term, and returns it with its status.
func (k *killer) awaitLeader(term uint64) (*node, *kilnv1.StatusResponse) {
	k.t.Helper()
	deadline := time.Now().Add(rejoinBound)
	var last error
	for {
		for _, n := range k.c.nodes {
			if !n.running() {
				continue
			}
			st, err := k.probe.status(n)
			if err != nil {
				last = err
				continue
			}
			if st.GetLeader() == n.id && st.GetTerm() > term {
				return n, st
			}
		}
		k.checkAlive(nil)
		if time.Now().After(deadline) {
			k.t.Fatalf("no leader of a term after %d within %v (last error: %v)", term, rejoinBound, last)
		}
		time.Sleep(raftPoll)
	}
}

// awaitRejoined waits until every coordinator runs, reports itself as a
// member, names the same leader, and has applied at least the commit index
// the leader reported before. It fails the test with the stderr of the
// restarted nodes if one exits or has not caught up within rejoinBound.
func (k *killer) awaitRejoined(restarted []*node) {
	k.t.Helper()
	deadline := time.Now().Add(rejoinBound)
	for {
		k.checkAlive(restarted)
		err := k.caughtUp()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			var tails []string
			for _, n := range restarted {
				tails = append(tails, fmt.Sprintf("%s (pid %d):\n%s", n.id, n.pid(), n.stderrTail(8<<10)))
			}
			k.t.Fatalf("cluster not caught up within %v of the restart: %v\n%s", rejoinBound, err, strings.Join(tails, "\n"))
		}
		time.Sleep(raftPoll)
	}
}

// checkAlive fails the test if a coordinator has exited, with its exit
// code and stderr; restarted names the nodes restarted in this round.
func (k *killer) checkAlive(restarted []*node) {
	k.t.Helper()
	for _, n := range k.c.nodes {
		if n.running() {
			continue
		}
		code, _ := n.wait(0)
		what := "exited"
		for _, r := range restarted {
			if r == n {
				what = "exited after its restart"
			}
		}
		k.t.Fatalf("coordinator %s %s with code %d; %s", n.id, what, code, n.stderrTail(8<<10))
	}
}

// caughtUp returns nil when every coordinator answers, reports itself as a
// voting member and names the same leader, and every follower has applied
// the commit index the leader reported before the follower was asked.
func (k *killer) caughtUp() error {
	var leader *node
	var lst *kilnv1.StatusResponse
	for _, n := range k.c.nodes {
		st, err := k.probe.status(n)
		if err != nil {
			return err
		}
		if _, err := member(n, st); err != nil {
			return err
		}
		if st.GetLeader() == "" {
			return fmt.Errorf("%s knows no leader", n.id)
		}
		if st.GetLeader() == n.id {
			leader, lst = n, st
		}
	}
	if leader == nil {
		return fmt.Errorf("no coordinator reports itself the leader")
	}
	for _, n := range k.c.nodes {
		if n == leader {
			continue
		}
		st, err := k.probe.status(n)
		if err != nil {
			return err
		}
		if st.GetLeader() != leader.id {
			return fmt.Errorf("%s names leader %q, %s is the leader", n.id, st.GetLeader(), leader.id)
		}
		if st.GetAppliedIndex() < lst.GetCommitIndex() {
			return fmt.Errorf("%s applied index %d < leader %s commit index %d", n.id, st.GetAppliedIndex(), leader.id, lst.GetCommitIndex())
		}
	}
	return nil
}

// pid returns the process id of the current incarnation.
func (p *proc) pid() int {
	cmd, _ := p.current()
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	return cmd.Process.Pid
}

// truncationLog is what hashicorp/raft logs when a follower deletes the
// tail of its log that conflicts with the leader's.
const truncationLog = "clearing log suffix"

// tailTruncations counts the coordinator incarnations that truncated the
// tail of their raft log, and how many of them were followed by a restart
// of the same node, the path of the raft-wal v0.4.0 bug. It tells whether
// a run exercised that path; the random rounds do not guarantee it.
func tailTruncations(c *cluster) (truncated, restartedAfter int) {
	for _, n := range c.nodes {
		n.mu.Lock()
		files := slices.Clone(n.files)
		n.mu.Unlock()
		// files holds stdout and stderr of each incarnation, in order.
		for i := 1; i < len(files); i += 2 {
			data, err := os.ReadFile(files[i])
			if err != nil || !strings.Contains(string(data), truncationLog) {
				continue
			}
			truncated++
			if i+2 < len(files) {
				restartedAfter++
			}
		}
	}
	return truncated, restartedAfter
}

// ---- write load ----

// loadBuild is one build submitted by the load.
type loadBuild struct {
	name string    // unique build name; also the prefix of its log lines
	want string    // the log the command prints
	id   string    // build id, once the submit was acknowledged
	res  ctlResult // the outcome of kilnctl run --wait
}

// load runs builds with kilnctl run --wait in loadWorkers goroutines until
// stopped; each build prints loadLines numbered lines.
type load struct {
	stopc chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	builds []*loadBuild
}

// startLoad starts the workers. The harness's cleanup kills their kilnctl
// runs if the test ends early.
func startLoad(h *harness, addrs []string) *load {
	l := &load{stopc: make(chan struct{})}
	for w := range loadWorkers {
		l.wg.Add(1)
		h.bg.Add(1)
		go func() {
			defer h.bg.Done()
			defer l.wg.Done()
			for n := 1; ; n++ {
				select {
				case <-l.stopc:
					return
				case <-h.ctx.Done():
					return
				default:
				}
				b := &loadBuild{name: fmt.Sprintf("w%d.b%d", w+1, n)}
				var line string
				line, b.want = countLines(b.name, loadLines, loadSleep)
				l.mu.Lock()
				l.builds = append(l.builds, b)
				l.mu.Unlock()
				res := h.ctl(addrs, "run", "--wait", "--name", b.name, "--label", loadLabel, "--", line)
				l.mu.Lock()
				b.res = res
				if m := submittedRE.FindStringSubmatch(res.stderr); m != nil {
					b.id = m[1]
				}
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// acked returns how many builds have finished their run --wait with an
// acknowledged submit.
func (l *load) acked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, b := range l.builds {
		if b.id != "" {
			n++
		}
	}
	return n
}

// stop lets every worker finish its current build and returns the builds.
func (l *load) stop(t testing.TB) []*loadBuild {
	t.Helper()
	close(l.stopc)
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(ctlTimeout + 10*time.Second):
		t.Fatalf("load workers still running %v after the stop", ctlTimeout+10*time.Second)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.builds
}

// checkLoad checks the builds of the load: every acknowledged build
// passed, kilnctl logs prints each line exactly once and in order, run
// --wait printed the same, and no build was created twice.
func checkLoad(t *testing.T, h *harness, addrs []string, builds []*loadBuild) {
	t.Helper()
	var acked []*loadBuild
	for _, b := range builds {
		if b.id == "" {
			t.Logf("build %s: submit not acknowledged: %s", b.name, b.res)
			continue
		}
		acked = append(acked, b)
	}
	t.Logf("%d builds submitted, %d acknowledged, %d log lines each", len(builds), len(acked), loadLines)
	if len(acked) == 0 {
		t.Fatal("no build was acknowledged")
	}

	var list []buildJSON
	if err := h.ctlJSON(addrs, &list, "builds", "--limit", "1000"); err != nil {
		t.Fatal(err)
	}
	byName := map[string][]string{}
	for _, b := range list {
		byName[b.Name] = append(byName[b.Name], b.ID)
	}
	for name, ids := range byName {
		if len(ids) > 1 {
			t.Errorf("build %s was created %d times: %v", name, len(ids), ids)
		}
	}

	for _, b := range acked {
		if len(list) < 1000 && !slices.Contains(byName[b.name], b.id) {
			t.Errorf("acknowledged build %s (%s) is not listed by kilnctl builds", b.id, b.name)
			continue
		}
		st := h.waitFinished(addrs, b.id, 60*time.Second)
		requirePassed(t, st, 0)
		if b.res.code != 0 || b.res.err != nil {
			t.Errorf("build %s (%s): run --wait across the kills failed: %s", b.id, b.name, b.res)
		} else if b.res.stdout != b.want {
			t.Errorf("build %s (%s): run --wait printed a different log:\n%s", b.id, b.name, logDiff(b.res.stdout, b.want))
		}
		if err := awaitLog(h, addrs, b.id, b.want, 10*time.Second); err != nil {
			t.Errorf("build %s (%s): %v", b.id, b.name, err)
		}
	}
}

// awaitLog polls kilnctl logs BUILD until it prints want (a follower
// serving the read may lag the leader) and returns the difference if it
// still does not after d.
func awaitLog(h *harness, addrs []string, id, want string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		got, err := h.logs(addrs, id)
		if err == nil && got == want {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("kilnctl logs: %w", err)
			}
			return fmt.Errorf("kilnctl logs differs from what the command printed:\n%s", logDiff(got, want))
		}
		time.Sleep(150 * time.Millisecond)
	}
}
