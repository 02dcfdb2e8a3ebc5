package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Timing of the clusters under test: short leases so that lost agents are
// noticed within seconds.
const (
	leaseTTL          = "2s"
	heartbeatInterval = "500ms"
	agentHeartbeat    = "500ms"
)

// ownerEnv marks every process a test starts (and, by inheritance, every
// job process an agent starts) so that cleanup can find leftovers.
const ownerEnv = "KILN_IT_OWNER"

var (
	// binDir holds kiln-coordinator, kiln-agent and kilnctl.
	binDir string
	// runMarker is unique to this test binary run; owner values start with it.
	runMarker string
)

func TestMain(m *testing.M) {
	flag.Parse()
	runMarker = fmt.Sprintf("kiln-it-%d-%d", os.Getpid(), time.Now().UnixNano())
	var tmp string
	if d := os.Getenv("KILN_IT_BIN"); d != "" {
		binDir = d
	} else {
		d, err := os.MkdirTemp("", "kiln-it-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			os.Exit(1)
		}
		tmp, binDir = d, d
		start := time.Now()
		if err := buildBinaries(d); err != nil {
			fmt.Fprintln(os.Stderr, "integration: building the binaries failed:", err)
			_ = os.RemoveAll(d)
			os.Exit(1)
		}
		if testing.Verbose() {
			fmt.Fprintf(os.Stderr, "integration: built binaries in %v\n", time.Since(start).Round(time.Millisecond))
		}
	}
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		killOwned(runMarker, true) // belt and braces: every test already cleaned up
		if tmp != "" {
			_ = os.RemoveAll(tmp)
		}
		os.Exit(code)
	}))
}

// buildBinaries builds the three binaries into dir from the module root.
func buildBinaries(dir string) error {
	root := ".."
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			root = filepath.Dir(gomod)
		}
	}
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
		"./cmd/kiln-coordinator", "./cmd/kiln-agent", "./cmd/kilnctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%v in %s:\n%s", err, root, out)
	}
	return nil
}

func binPath(name string) string { return filepath.Join(binDir, name) }

// eventually polls cond until it returns nil, failing the test with cond's
// last error when d has passed. The sleep between polls is a polling
// interval, not a synchronisation.
func eventually(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %v", d, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// Free loopback ports. A port is handed out once per test binary run, so
// two clusters never race for the same one.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

func freePorts(t testing.TB, n int) []int {
	t.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	var ports []int
	var held []net.Listener
	defer func() {
		for _, l := range held {
			_ = l.Close()
		}
	}()
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			t.Fatalf("no free loopback ports")
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen for a free port: %v", err)
		}
		held = append(held, l)
		p := l.Addr().(*net.TCPAddr).Port
		if portsGiven[p] {
			continue
		}
		portsGiven[p] = true
		ports = append(ports, p)
	}
	return ports
}

// harness owns one test's processes and files.
type harness struct {
	t     *testing.T
	root  string // the test's temporary directory
	owner string // value of ownerEnv for this test's processes

	ctx    context.Context // canceled at cleanup; bounds background kilnctl runs
	cancel context.CancelFunc
	bg     sync.WaitGroup

	mu    sync.Mutex
	procs []*proc

	// coordArgs are added to every coordinator's command line.
	coordArgs []string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, root: t.TempDir(), owner: runMarker + "/" + t.Name(), ctx: ctx, cancel: cancel}
	// Registered after TempDir, so it runs before the directory is removed.
	t.Cleanup(h.cleanup)
	return h
}

// cleanup kills everything the test started, dumps the logs if the test
// failed, and checks that nothing is left running.
func (h *harness) cleanup() {
	h.cancel()
	h.bg.Wait()
	h.mu.Lock()
	procs := slices.Clone(h.procs)
	h.mu.Unlock()
	for _, p := range procs {
		p.destroy()
	}
	if n := killOwned(h.owner, false); n > 0 {
		h.t.Logf("cleanup: killed %d leftover process(es) (orphaned job processes of killed agents)", n)
	}
	if h.t.Failed() || os.Getenv("KILN_IT_LOGS") != "" {
		for _, p := range procs {
			p.dumpLogs()
		}
	}
}

// env returns the environment of a child process.
func (h *harness) env() []string {
	return append(os.Environ(), ownerEnv+"="+h.owner)
}

// killOwned SIGKILLs every process whose environment carries ownerEnv with
// value owner (or, with prefix, a value starting with owner) until none is
// left, and returns how many it killed.
func killOwned(owner string, prefix bool) int {
	killed := map[int]bool{}
	self := os.Getpid()
	deadline := time.Now().Add(10 * time.Second)
	for {
		found := 0
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil || pid == self {
				continue
			}
			env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
			if err != nil {
				continue // gone, or not ours
			}
			for kv := range bytes.SplitSeq(env, []byte{0}) {
				v, ok := bytes.CutPrefix(kv, []byte(ownerEnv+"="))
				if !ok {
					continue
				}
				if string(v) == owner || (prefix && strings.HasPrefix(string(v), owner)) {
					found++
					killed[pid] = true
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
				break
			}
		}
		if found == 0 || time.Now().After(deadline) {
			return len(killed)
		}
		time.Sleep(20 * time.Millisecond) // let the kernel finish the kills
	}
}

// proc is one long-running process (coordinator or agent) that can be
// stopped, killed and started again with the same arguments. Each start's
// stdout and stderr go to files in the test's directory.
type proc struct {
	h    *harness
	name string
	path string
	args []string

	mu    sync.Mutex
	runs  int
	cmd   *exec.Cmd
	done  chan struct{} // closed when the current incarnation has exited
	files []string      // output files of every incarnation
}

// startProc starts a new process and registers it for cleanup.
//
// A coordinator given no --http-addr gets a free loopback port: its
// default (127.0.0.1:7080) would collide between the test's coordinators
// and with anything else on the machine.
func (h *harness) startProc(name, bin string, args ...string) *proc {
	h.t.Helper()
	if bin == "kiln-coordinator" && !slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--http-addr") }) {
		args = append(args, "--http-addr", "127.0.0.1:0")
	}
	p := &proc{h: h, name: name, path: binPath(bin), args: args}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	p.start()
	return p
}

// start starts the next incarnation; the previous one must have exited.
func (p *proc) start() {
	t := p.h.t
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			t.Fatalf("%s: start while still running", p.name)
		}
	}
	p.runs++
	base := filepath.Join(p.h.root, "logs", fmt.Sprintf("%s.%d", p.name, p.runs))
	if err := os.MkdirAll(filepath.Dir(base), 0o755); err != nil {
		t.Fatal(err)
	}
	stdout, err := os.Create(base + ".stdout")
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(base + ".stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	p.files = append(p.files, stdout.Name(), stderr.Name())

	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.Env = p.h.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	t.Logf("started %s (pid %d): %s %s", p.name, cmd.Process.Pid, filepath.Base(p.path), strings.Join(p.args, " "))
}

func (p *proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// pid returns the process id of the current incarnation.
func (p *proc) pid() int {
	cmd, _ := p.current()
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	return cmd.Process.Pid
}

// running reports whether the current incarnation has not exited.
func (p *proc) running() bool {
	_, done := p.current()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// signal sends sig to the process (not its group).
func (p *proc) signal(sig syscall.Signal) {
	p.h.t.Helper()
	cmd, _ := p.current()
	p.h.t.Logf("sending %v to %s (pid %d)", sig, p.name, cmd.Process.Pid)
	if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
		p.h.t.Fatalf("signal %s: %v", p.name, err)
	}
}

// wait waits up to d for the process to exit and returns its exit code
// (-1 when killed by a signal); ok is false if it is still running.
func (p *proc) wait(d time.Duration) (code int, ok bool) {
	cmd, done := p.current()
	select {
	case <-done:
		return cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return 0, false
	}
}

// kill9 kills the process with SIGKILL (like kill -9: only the process,
// not the jobs it started) and waits for it to be gone.
func (p *proc) kill9() {
	p.h.t.Helper()
	p.signal(syscall.SIGKILL)
	if _, ok := p.wait(10 * time.Second); !ok {
		p.h.t.Fatalf("%s survived SIGKILL", p.name)
	}
}

// stop sends SIGTERM and waits up to d for a clean exit (code 0).
func (p *proc) stop(d time.Duration) {
	p.h.t.Helper()
	p.signal(syscall.SIGTERM)
	code, ok := p.wait(d)
	switch {
	case !ok:
		p.h.t.Fatalf("%s did not exit within %v of SIGTERM", p.name, d)
	case code != 0:
		p.h.t.Errorf("%s exited with code %d after SIGTERM, want 0", p.name, code)
	}
}

// destroy kills the process and its process group and waits for it.
func (p *proc) destroy() {
	cmd, done := p.current()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		p.h.t.Errorf("%s (pid %d) did not die", p.name, cmd.Process.Pid)
	}
}

// stderrTail returns the last max bytes of the current incarnation's
// stderr, for failure messages about a process that exited or hung.
func (p *proc) stderrTail(max int) string {
	p.mu.Lock()
	var f string
	if n := len(p.files); n > 0 {
		f = p.files[n-1] // start appends stdout, then stderr
	}
	p.mu.Unlock()
	if f == "" {
		return "(never started)"
	}
	data, err := os.ReadFile(f)
	if err != nil {
		return fmt.Sprintf("(read %s: %v)", f, err)
	}
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return fmt.Sprintf("%s (last %d bytes):\n%s", filepath.Base(f), len(data), data)
}

// dumpLogs writes the tail of every output file to the test log.
func (p *proc) dumpLogs() {
	const max = 64 << 10
	p.mu.Lock()
	files := slices.Clone(p.files)
	p.mu.Unlock()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil || len(data) == 0 {
			continue
		}
		note := ""
		if len(data) > max {
			note = fmt.Sprintf(" (last %d of %d bytes)", max, len(data))
			data = data[len(data)-max:]
		}
		p.h.t.Logf("===== %s%s =====\n%s", filepath.Base(f), note, data)
	}
}

// ---- kilnctl ----

// ctlResult is the outcome of one kilnctl run.
type ctlResult struct {
	args           []string
	stdout, stderr string
	code           int // -1: did not run or was killed
	err            error
}

func (r ctlResult) String() string {
	s := fmt.Sprintf("kilnctl %s: exit %d", strings.Join(r.args, " "), r.code)
	if r.err != nil {
		s += fmt.Sprintf(" (%v)", r.err)
	}
	return s + fmt.Sprintf("\nstdout: %q\nstderr: %q", r.stdout, r.stderr)
}

// ctlTimeout bounds every kilnctl run.
const ctlTimeout = 2 * time.Minute

// ctl runs kilnctl --coordinators addrs args... and returns its outcome.
func (h *harness) ctl(addrs []string, args ...string) ctlResult {
	return h.ctlContext(h.ctx, addrs, args...)
}

func (h *harness) ctlContext(ctx context.Context, addrs []string, args ...string) ctlResult {
	return h.ctlEnvContext(ctx, addrs, nil, args...)
}

// ctlEnv runs kilnctl like ctl with extra environment variables (K=V),
// which override the inherited ones (e.g. USER, which names the submitter
// and the approver).
func (h *harness) ctlEnv(addrs, env []string, args ...string) ctlResult {
	return h.ctlEnvContext(h.ctx, addrs, env, args...)
}

func (h *harness) ctlEnvContext(ctx context.Context, addrs, env []string, args ...string) ctlResult {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	full := append([]string{"--coordinators", strings.Join(addrs, ",")}, args...)
	cmd := exec.CommandContext(ctx, binPath("kilnctl"), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(h.env(), env...) // later entries win
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := ctlResult{args: full, stdout: stdout.String(), stderr: stderr.String(), code: -1}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		r.err = err
	}
	if ctx.Err() != nil {
		r.err = fmt.Errorf("killed: %w", ctx.Err())
	}
	return r
}

// asyncCtl is a kilnctl run in the background.
type asyncCtl struct {
	done chan struct{}
	res  ctlResult
}

// ctlAsync starts kilnctl in the background; the test's cleanup kills it.
func (h *harness) ctlAsync(addrs []string, args ...string) *asyncCtl {
	a := &asyncCtl{done: make(chan struct{})}
	h.bg.Add(1)
	go func() {
		defer h.bg.Done()
		defer close(a.done)
		a.res = h.ctlContext(h.ctx, addrs, args...)
	}()
	return a
}

// result waits up to d for the background run.
func (a *asyncCtl) result(t testing.TB, d time.Duration) ctlResult {
	t.Helper()
	select {
	case <-a.done:
		return a.res
	case <-time.After(d):
		t.Fatalf("background kilnctl still running after %v", d)
		return ctlResult{}
	}
}

// ctlJSON runs a read command with -o json and decodes its stdout into v.
// Read commands get a short request timeout so that polls stay snappy.
func (h *harness) ctlJSON(addrs []string, v any, args ...string) error {
	full := append([]string{"--timeout", "5s"}, args...)
	full = append(full, "-o", "json")
	r := h.ctl(addrs, full...)
	if r.code != 0 || r.err != nil {
		return errors.New(r.String())
	}
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		return fmt.Errorf("decode %s: %w", r, err)
	}
	return nil
}

// JSON shapes of kilnctl -o json.
type buildJSON struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	State    string    `json:"state"`
	Reason   string    `json:"reason"`
	Created  string    `json:"created"`
	Started  string    `json:"started"`
	Finished string    `json:"finished"`
	Jobs     []jobJSON `json:"jobs"`
}

type jobJSON struct {
	ID       string `json:"id"`
	Key      string `json:"key"`
	State    string `json:"state"`
	Attempt  uint32 `json:"attempt"`
	Agent    string `json:"agent"`
	ExitCode int32  `json:"exit_code"`
	Reason   string `json:"reason"`
	// Approval is the decision on an approval step, once made.
	Approval *approvalJSON `json:"approval"`
}

type approvalJSON struct {
	Approved bool   `json:"approved"`
	By       string `json:"by"`
	Comment  string `json:"comment"`
	Time     string `json:"time"`
}

type clusterJSON struct {
	Leader         string `json:"leader"`
	LeaderGRPCAddr string `json:"leader_grpc_addr"`
	Nodes          []struct {
		ID       string `json:"id"`
		GRPCAddr string `json:"grpc_addr"`
		RaftAddr string `json:"raft_addr"`
		State    string `json:"state"`
	} `json:"nodes"`
}

type agentJSON struct {
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels"`
	Slots   int               `json:"slots"`
	Running int               `json:"running"`
	State   string            `json:"state"`
}

func terminal(state string) bool {
	return state == "passed" || state == "failed" || state == "canceled"
}

// status returns kilnctl status BUILD -o json.
func (h *harness) status(addrs []string, id string) (buildJSON, error) {
	var b buildJSON
	err := h.ctlJSON(addrs, &b, "status", id)
	return b, err
}

// logs returns kilnctl logs BUILD [--job KEY].
func (h *harness) logs(addrs []string, id string, extra ...string) (string, error) {
	args := append([]string{"--timeout", "5s", "logs", id}, extra...)
	r := h.ctl(addrs, args...)
	if r.code != 0 || r.err != nil {
		return "", errors.New(r.String())
	}
	return r.stdout, nil
}

// waitLogs waits until kilnctl logs BUILD prints want. Reads are served by
// whichever coordinator kilnctl reaches first, and a follower may lag the
// leader by the replication delay (documented in control.proto), so a read
// right after something the leader acknowledged must poll.
func (h *harness) waitLogs(addrs []string, id, want string, d time.Duration) {
	h.t.Helper()
	eventually(h.t, d, func() error {
		got, err := h.logs(addrs, id)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("log of build %s:\n got %q\nwant %q", id, got, want)
		}
		return nil
	})
}

// submit runs `kilnctl run [flags] -- line` without --wait and returns the
// build id it printed.
func (h *harness) submit(addrs []string, line string, flags ...string) string {
	h.t.Helper()
	args := append(append([]string{"run"}, flags...), "--", line)
	r := h.ctl(addrs, args...)
	id := strings.TrimSpace(r.stdout)
	if r.code != 0 || r.err != nil || id == "" || strings.ContainsAny(id, " \n") {
		h.t.Fatalf("submit: want exit 0 and one build id on stdout, got %s", r)
	}
	return id
}

// waitFinished polls until the build is passed, failed or canceled and
// returns its final status.
func (h *harness) waitFinished(addrs []string, id string, d time.Duration) buildJSON {
	h.t.Helper()
	var b buildJSON
	eventually(h.t, d, func() error {
		var err error
		if b, err = h.status(addrs, id); err != nil {
			return err
		}
		if !terminal(b.State) {
			return fmt.Errorf("build %s is %s: %+v", id, b.State, b.Jobs)
		}
		return nil
	})
	return b
}

// requirePassed fails unless b passed and every job passed on attempt
// wantAttempt (0: any attempt).
func requirePassed(t testing.TB, b buildJSON, wantAttempt uint32) {
	t.Helper()
	if b.State != "passed" {
		t.Fatalf("build %s is %s (reason %q), want passed; jobs: %+v", b.ID, b.State, b.Reason, b.Jobs)
	}
	for _, j := range b.Jobs {
		if j.State != "passed" || j.ExitCode != 0 {
			t.Errorf("build %s job %s: state %s exit %d, want passed exit 0", b.ID, j.Key, j.State, j.ExitCode)
		}
		if wantAttempt != 0 && j.Attempt != wantAttempt {
			t.Errorf("build %s job %s ran as attempt %d on %s, want attempt %d", b.ID, j.Key, j.Attempt, j.Agent, wantAttempt)
		}
	}
}

// ---- clusters ----

// node is one coordinator.
type node struct {
	*proc
	id, grpcAddr, raftAddr, dataDir string
}

// cluster is a set of coordinators and the agents attached to them.
type cluster struct {
	h     *harness
	nodes []*node
}

// startCluster starts n coordinators on loopback with a shared
// --initial-cluster and waits until they agree on a leader.
func (h *harness) startCluster(n int) *cluster {
	h.t.Helper()
	ports := freePorts(h.t, 2*n)
	c := &cluster{h: h}
	var initial []string
	for i := range n {
		nd := &node{
			id:       fmt.Sprintf("n%d", i+1),
			grpcAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			raftAddr: fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
		}
		nd.dataDir = filepath.Join(h.root, "data", nd.id)
		initial = append(initial, nd.id+"="+nd.raftAddr)
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.proc = h.startProc("coordinator-"+nd.id, "kiln-coordinator", append([]string{
			"--node-id", nd.id,
			"--data-dir", nd.dataDir,
			"--grpc-addr", nd.grpcAddr,
			"--raft-addr", nd.raftAddr,
			"--http-addr", "127.0.0.1:0",
			"--initial-cluster", strings.Join(initial, ","),
			"--lease-ttl", leaseTTL,
			"--heartbeat-interval", heartbeatInterval,
			"--log-level", "info",
		}, h.coordArgs...)...)
	}
	c.waitLeader(30 * time.Second)
	return c
}

// addrs returns every coordinator's gRPC address.
func (c *cluster) addrs() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.grpcAddr)
	}
	return out
}

// liveAddrs returns the gRPC addresses of the running coordinators.
func (c *cluster) liveAddrs() []string {
	var out []string
	for _, n := range c.nodes {
		if n.running() {
			out = append(out, n.grpcAddr)
		}
	}
	return out
}

// leader asks every running coordinator for the cluster status and returns
// the leader they all name.
func (c *cluster) leader() (*node, error) {
	var leaderID, leaderAddr string
	for _, n := range c.nodes {
		if !n.running() {
			continue
		}
		var st clusterJSON
		if err := c.h.ctlJSON([]string{n.grpcAddr}, &st, "cluster", "status"); err != nil {
			return nil, fmt.Errorf("%s: %w", n.id, err)
		}
		if st.Leader == "" || st.LeaderGRPCAddr == "" {
			return nil, fmt.Errorf("%s knows no leader yet: %+v", n.id, st)
		}
		if leaderID != "" && (st.Leader != leaderID || st.LeaderGRPCAddr != leaderAddr) {
			return nil, fmt.Errorf("nodes disagree on the leader: %s at %s vs %s at %s (from %s)",
				leaderID, leaderAddr, st.Leader, st.LeaderGRPCAddr, n.id)
		}
		leaderID, leaderAddr = st.Leader, st.LeaderGRPCAddr
	}
	for _, n := range c.nodes {
		if n.id == leaderID {
			if !n.running() {
				return nil, fmt.Errorf("the named leader %s is not running", n.id)
			}
			if n.grpcAddr != leaderAddr {
				return nil, fmt.Errorf("leader %s is named with gRPC address %s, want %s", n.id, leaderAddr, n.grpcAddr)
			}
			return n, nil
		}
	}
	return nil, fmt.Errorf("no running coordinator knows a leader (named %q)", leaderID)
}

// waitLeader waits until every running coordinator names the same leader.
func (c *cluster) waitLeader(d time.Duration) *node {
	c.h.t.Helper()
	var l *node
	eventually(c.h.t, d, func() error {
		var err error
		l, err = c.leader()
		return err
	})
	return l
}

// followers returns the running coordinators other than l.
func (c *cluster) followers(l *node) []*node {
	var out []*node
	for _, n := range c.nodes {
		if n != l && n.running() {
			out = append(out, n)
		}
	}
	return out
}

// startAgent starts kiln-agent name attached to every coordinator.
func (c *cluster) startAgent(name string, slots int, labels string) *proc {
	c.h.t.Helper()
	return c.h.startProc("agent-"+name, "kiln-agent",
		// Job processes carry the owner mark, so cleanup finds orphans.
		"--pass-env", ownerEnv,
		"--coordinators", strings.Join(c.addrs(), ","),
		"--name", name,
		"--labels", labels,
		"--slots", strconv.Itoa(slots),
		"--work-dir", filepath.Join(c.h.root, "work", name),
		"--heartbeat", agentHeartbeat,
	)
}

// agents returns kilnctl agents -o json by name.
func (c *cluster) agents() (map[string]agentJSON, error) {
	var list []agentJSON
	if err := c.h.ctlJSON(c.liveAddrs(), &list, "agents"); err != nil {
		return nil, err
	}
	out := map[string]agentJSON{}
	for _, a := range list {
		out[a.Name] = a
	}
	return out, nil
}

// waitAgentStates waits until each named agent is in the given state.
func (c *cluster) waitAgentStates(d time.Duration, want map[string]string) {
	c.h.t.Helper()
	eventually(c.h.t, d, func() error {
		got, err := c.agents()
		if err != nil {
			return err
		}
		for name, state := range want {
			if a, ok := got[name]; !ok || a.State != state {
				return fmt.Errorf("agent %s: want %s, have %+v (all: %+v)", name, state, a, got)
			}
		}
		return nil
	})
}
