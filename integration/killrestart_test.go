package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"reflect"
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
	// killLoneLeader kills both followers, and the leader once it has
	// appended writes it could not commit and stepped down; restarts the
	// followers, then the old leader, which truncates the tail of its log
	// to the new leader's; and kills and restarts it once more, on the
	// truncated log. Every run with 4 rounds or more has one.
	killLoneLeader
	numKillKinds = iota
)

func (k killKind) String() string {
	switch k {
	case killLeader:
		return "leader"
	case killFollower:
		return "follower"
	case killNewLeader:
		return "new-leader"
	case killLoneLeader:
		return "lone-leader"
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
// Random kills of a leader leave such a tail only now and then; the
// lone-leader rounds leave one every time.
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
	k := &killer{t: t, c: c, rng: rng, probe: newRaftProbe(t, c), down: map[*node]bool{}}
	k.awaitRejoined() // every node answers and is caught up before the first kill

	load := startLoad(h, c.addrs())
	// The first kill comes once a build went all the way through.
	eventually(t, 30*time.Second, func() error {
		if n := load.acked(); n == 0 {
			return fmt.Errorf("no build has finished yet")
		}
		return nil
	})

	// Each kind in equal share, in random order.
	kinds := make([]killKind, rounds)
	for i := range kinds {
		kinds[i] = killKind(i % numKillKinds)
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
	checkLoad(t, h, c, builds)
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

// isMember returns an error unless n answers as itself and lists itself
// as a voting member.
func isMember(n *node, st *kilnv1.StatusResponse) error {
	if st.GetNodeId() != n.id {
		return fmt.Errorf("%s answers as %q", n.id, st.GetNodeId())
	}
	for _, m := range st.GetNodes() {
		if m.GetId() == n.id {
			if !m.GetVoter() {
				return fmt.Errorf("%s reports itself as a non-voter: %v", n.id, m)
			}
			return nil
		}
	}
	return fmt.Errorf("%s is not in its own member list: %v", n.id, st.GetNodes())
}

// ---- kill rounds ----

// killer runs the kill rounds of one cluster.
type killer struct {
	t     *testing.T
	c     *cluster
	rng   *rand.Rand
	probe *raftProbe

	down      map[*node]bool // killed by the round and not restarted yet
	restarted []*node        // restarted in the current round, in order
}

// pause waits a random time below max. It picks the moment of a fault; it
// synchronises nothing.
func (k *killer) pause(max time.Duration) {
	time.Sleep(time.Duration(k.rng.Int64N(int64(max))))
}

// round runs one round: a random pause, the kill(s) and restart(s) of its
// kind, and the wait until every coordinator has caught up again.
func (k *killer) round(i int, kind killKind) {
	k.t.Helper()
	began := time.Now()
	k.restarted = nil
	k.pause(maxBeforeKill)
	leader, st := k.awaitLeader(0)
	switch kind {
	case killLeader:
		k.killRestart(leader)
	case killFollower:
		f := k.c.followers(leader)
		k.killRestart(f[k.rng.IntN(len(f))])
	case killNewLeader:
		k.killRestart(leader)
		// The leader of a later term, killed as soon as it is seen.
		nl, _ := k.awaitLeader(st.GetTerm())
		k.killRestart(nl)
	case killLoneLeader:
		followers := k.c.followers(leader)
		for _, f := range followers {
			k.kill(f)
		}
		// Until it notices that it lost its quorum, the leader appends the
		// writes of the load to its log without committing them.
		k.awaitSteppedDown(leader)
		k.kill(leader)
		k.pause(maxDown)
		for _, f := range followers {
			k.restart(f)
		}
		// The new leader's first entries overwrite the old leader's
		// uncommitted tail, which the old leader truncates on its return.
		k.awaitLeader(st.GetTerm())
		k.restart(leader)
		k.awaitRejoined()
		// And it starts again on the truncated log.
		k.killRestart(leader)
	}
	k.awaitRejoined()
	ids := make([]string, len(k.restarted))
	for j, v := range k.restarted {
		ids[j] = v.id
	}
	k.t.Logf("round %d (%s): killed and restarted %s; all caught up %v after the round began",
		i, kind, strings.Join(ids, ", "), time.Since(began).Round(time.Millisecond))
}

// kill kills n with SIGKILL and marks it down.
func (k *killer) kill(n *node) {
	k.t.Helper()
	n.kill9()
	k.down[n] = true
}

// restart starts n again with the same data directory and flags.
func (k *killer) restart(n *node) {
	k.t.Helper()
	n.start()
	delete(k.down, n)
	k.restarted = append(k.restarted, n)
}

// killRestart kills n with SIGKILL, waits a random short time and starts
// it again.
func (k *killer) killRestart(n *node) {
	k.t.Helper()
	k.kill(n)
	k.pause(maxDown)
	k.restart(n)
}

// awaitSteppedDown polls n until it no longer reports itself the leader.
func (k *killer) awaitSteppedDown(n *node) {
	k.t.Helper()
	deadline := time.Now().Add(rejoinBound)
	for {
		k.checkAlive()
		st, err := k.probe.status(n)
		if err == nil && st.GetLeader() != n.id {
			return
		}
		if time.Now().After(deadline) {
			k.t.Fatalf("%s still leads %v after losing its followers (last error: %v)", n.id, rejoinBound, err)
		}
		time.Sleep(raftPoll)
	}
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
		k.checkAlive()
		if time.Now().After(deadline) {
			k.t.Fatalf("no leader of a term after %d within %v (last error: %v)", term, rejoinBound, last)
		}
		time.Sleep(raftPoll)
	}
}

// awaitRejoined waits until every coordinator runs, reports itself as a
// member, names the same leader, and has applied at least the commit index
// the leader reported before. It fails the test with the stderr of the
// nodes restarted in this round if one exits or the cluster has not caught
// up within rejoinBound.
func (k *killer) awaitRejoined() {
	k.t.Helper()
	deadline := time.Now().Add(rejoinBound)
	for {
		k.checkAlive()
		err := k.caughtUp()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			var tails []string
			for _, n := range k.restarted {
				tails = append(tails, fmt.Sprintf("%s (pid %d): %s", n.id, n.pid(), n.stderrTail(8<<10)))
			}
			k.t.Fatalf("cluster not caught up within %v of the restart: %v\n%s", rejoinBound, err, strings.Join(tails, "\n"))
		}
		time.Sleep(raftPoll)
	}
}

// checkAlive fails the test, with the exit code and stderr, if a
// coordinator that the round did not kill has exited.
func (k *killer) checkAlive() {
	k.t.Helper()
	for _, n := range k.c.nodes {
		if k.down[n] || n.running() {
			continue
		}
		code, _ := n.wait(time.Second) // it has exited: returns at once
		what := "exited"
		if slices.Contains(k.restarted, n) {
			what = "exited after its restart"
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
		if err := isMember(n, st); err != nil {
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

// acked returns how many builds have an acknowledged submit and finished
// their run --wait.
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

// checkLoad checks the builds of the load in subtests, so that a failure
// names the invariant it broke (and -run can pick them):
//
//   - acked: every acknowledged build exists once, passed, and kilnctl logs
//     prints each of its lines exactly once and in order;
//   - converged: every coordinator lists the same builds;
//   - wait: every run --wait followed its build across the kills to the
//     end and printed the same log.
//
// The subtests use no harness helper that fails the parent test.
func checkLoad(t *testing.T, h *harness, c *cluster, builds []*loadBuild) {
	t.Helper()
	addrs := c.addrs()
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

	t.Run("acked", func(t *testing.T) {
		byName, complete, err := listBuilds(h, addrs, acked)
		if err != nil {
			t.Fatal(err)
		}
		for name, ids := range byName {
			if len(ids) > 1 {
				t.Errorf("build %s was created %d times: %v", name, len(ids), ids)
			}
		}
		for _, b := range acked {
			if complete && !slices.Contains(byName[b.name], b.id) {
				t.Errorf("acknowledged build %s (%s) is not listed by kilnctl builds", b.id, b.name)
				continue
			}
			st, err := awaitFinished(h, addrs, b.id, 60*time.Second)
			if err != nil {
				t.Errorf("build %s (%s): %v", b.id, b.name, err)
				continue
			}
			requirePassed(t, st, 0)
			if err := checkLog(h, addrs, b.id, b.want); err != nil {
				t.Errorf("build %s (%s): %v", b.id, b.name, err)
			}
		}
	})

	t.Run("converged", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := sameBuilds(h, c)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(150 * time.Millisecond)
		}
	})

	t.Run("wait", func(t *testing.T) {
		failed := 0
		for _, b := range acked {
			if b.res.code != 0 || b.res.err != nil {
				failed++
				t.Errorf("build %s (%s): run --wait across the kills failed: %s", b.id, b.name, b.res)
			} else if b.res.stdout != b.want {
				t.Errorf("build %s (%s): run --wait printed a different log:\n%s", b.id, b.name, logDiff(b.res.stdout, b.want))
			}
		}
		if failed > 0 {
			t.Logf("%d of %d run --wait failed", failed, len(acked))
		}
	})
}

// listBuilds lists the builds through kilnctl once and returns their ids
// by name. Reads are linearizable, so a single answer from whichever
// coordinator kilnctl reaches must hold every acknowledged build: no retry.
// complete is false when the list hit its limit.
func listBuilds(h *harness, addrs []string, acked []*loadBuild) (byName map[string][]string, complete bool, err error) {
	const limit = 1000
	var list []buildJSON
	if err := h.ctlJSON(addrs, &list, "builds", "--limit", strconv.Itoa(limit)); err != nil {
		return nil, false, err
	}
	byName = map[string][]string{}
	for _, b := range list {
		byName[b.Name] = append(byName[b.Name], b.ID)
	}
	return byName, len(list) < limit, nil
}

// awaitFinished polls kilnctl status until the build is passed, failed or
// canceled, and returns its final status.
func awaitFinished(h *harness, addrs []string, id string, d time.Duration) (buildJSON, error) {
	deadline := time.Now().Add(d)
	for {
		b, err := h.status(addrs, id)
		if err == nil && terminal(b.State) {
			return b, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return b, fmt.Errorf("not finished within %v: %w", d, err)
			}
			return b, fmt.Errorf("still %s after %v: %+v", b.State, d, b.Jobs)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// sameBuilds returns nil when every coordinator lists the same builds.
func sameBuilds(h *harness, c *cluster) error {
	var first []buildJSON
	for i, n := range c.nodes {
		var got []buildJSON
		if err := h.ctlJSON([]string{n.grpcAddr}, &got, "builds", "--limit", "1000"); err != nil {
			return err
		}
		if i == 0 {
			first = got
		} else if !reflect.DeepEqual(got, first) {
			return fmt.Errorf("%s lists\n%s\n%s lists\n%s", n.id, jsonText(got), c.nodes[0].id, jsonText(first))
		}
	}
	return nil
}

// checkLog reads kilnctl logs BUILD once (of a finished build, through a
// linearizable read: it must be whole) and returns the difference from
// want.
func checkLog(h *harness, addrs []string, id, want string) error {
	got, err := h.logs(addrs, id)
	if err != nil {
		return fmt.Errorf("kilnctl logs: %w", err)
	}
	if got != want {
		return fmt.Errorf("kilnctl logs differs from what the command printed:\n%s", logDiff(got, want))
	}
	return nil
}
