package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const waitLimit = 20 * time.Second

// srvSession is one registered session on the fake server. The test reads
// the agent's messages from in, sends with out, and ends the stream by
// sending the handler's return value on end.
type srvSession struct {
	reg *kilnv1.Register
	in  chan *kilnv1.ConnectRequest
	out chan *kilnv1.ConnectResponse
	end chan error
}

// fakeServer is a minimal AgentService leader.
type fakeServer struct {
	kilnv1.UnimplementedAgentServiceServer
	addr     string
	sessions chan *srvSession
	attempts atomic.Int32 // Connect calls
	// reject, when set, answers Register with its error instead of Registered.
	reject func(*kilnv1.Register) error
	// maxLogBytes is announced in Registered.
	maxLogBytes atomic.Int64
}

func startServer(t *testing.T, reject func(*kilnv1.Register) error) *fakeServer {
	t.Helper()
	return startServerWith(t, reject, nil)
}

// startServerWith is startServer with more services (extra registers them).
func startServerWith(t *testing.T, reject func(*kilnv1.Register) error, extra func(*grpc.Server)) *fakeServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{addr: lis.Addr().String(), sessions: make(chan *srvSession, 16), reject: reject}
	gs := grpc.NewServer()
	kilnv1.RegisterAgentServiceServer(gs, f)
	if extra != nil {
		extra(gs)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return f
}

func (f *fakeServer) Connect(stream grpc.BidiStreamingServer[kilnv1.ConnectRequest, kilnv1.ConnectResponse]) error {
	n := f.attempts.Add(1)
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return status.Error(codes.InvalidArgument, "first message must be Register")
	}
	if f.reject != nil {
		if err := f.reject(reg); err != nil {
			return err
		}
	}
	if err := stream.Send(&kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Registered{Registered: &kilnv1.Registered{
		SessionId: fmt.Sprintf("s%d", n), NodeId: "n1", HeartbeatIntervalMs: 50, LeaseTtlMs: 5000, MaxLogBytes: f.maxLogBytes.Load(),
	}}}); err != nil {
		return err
	}
	s := &srvSession{reg: reg, in: make(chan *kilnv1.ConnectRequest), out: make(chan *kilnv1.ConnectResponse), end: make(chan error, 1)}
	ctx := stream.Context()
	go func() {
		defer close(s.in)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case s.in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	f.sessions <- s
	for {
		select {
		case m := <-s.out:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-s.end:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeServer) nextSession(t *testing.T) *srvSession {
	t.Helper()
	select {
	case s := <-f.sessions:
		return s
	case <-time.After(waitLimit):
		t.Fatal("no session registered")
		return nil
	}
}

// recv returns the next non-heartbeat message of the session.
func (s *srvSession) recv(t *testing.T) *kilnv1.ConnectRequest {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case m, ok := <-s.in:
			if !ok {
				t.Fatal("session stream closed")
			}
			if m.GetHeartbeat() != nil {
				continue
			}
			return m
		case <-timeout:
			t.Fatal("timed out waiting for a message")
		}
	}
}

func (s *srvSession) send(t *testing.T, m *kilnv1.ConnectResponse) {
	t.Helper()
	select {
	case s.out <- m:
	case <-time.After(waitLimit):
		t.Fatal("could not send to agent")
	}
}

func assign(job string, attempt uint32, env map[string]string, commands ...string) *kilnv1.ConnectResponse {
	return &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Assignment{Assignment: &kilnv1.JobAssignment{
		JobId: job, BuildId: strings.SplitN(job, ".", 2)[0], Key: "k", Attempt: attempt, Commands: commands, Env: env,
	}}}
}

func ack(job string, attempt uint32, seq uint64, finished, stale bool) *kilnv1.ConnectResponse {
	return &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Ack{Ack: &kilnv1.Ack{
		JobId: job, Attempt: attempt, LogSeq: seq, Finished: finished, Stale: stale,
	}}}
}

func testConfig(t *testing.T, addrs ...string) Config {
	cfg := NewConfig()
	cfg.Coordinators = addrs
	cfg.Name = "a1"
	cfg.Labels = map[string]string{"pool": "x"}
	cfg.Slots = 2
	cfg.WorkDir = t.TempDir()
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.KillGrace = time.Second
	return cfg
}

// startAgent runs the agent until the test ends; the returned channel
// yields Run's result.
func startAgent(t *testing.T, cfg Config, hook func(string, uint32, executor.Outcome)) (*Agent, <-chan error) {
	t.Helper()
	a, err := New(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	a.testHookAttemptDone = hook
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		res <- a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(waitLimit):
			t.Error("Run did not return after cancel")
		}
	})
	return a, res
}

// jobLog collects an attempt's chunks, deduplicating by seq.
type jobLog struct {
	chunks map[uint64][]byte
}

func (l *jobLog) add(t *testing.T, c *kilnv1.LogChunk) {
	t.Helper()
	if l.chunks == nil {
		l.chunks = map[uint64][]byte{}
	}
	if old, ok := l.chunks[c.GetSeq()]; ok && !bytes.Equal(old, c.GetData()) {
		t.Fatalf("seq %d resent with different data: %q vs %q", c.GetSeq(), old, c.GetData())
	}
	l.chunks[c.GetSeq()] = c.GetData()
}

func (l *jobLog) text(t *testing.T, last uint64) string {
	t.Helper()
	if uint64(len(l.chunks)) != last {
		t.Fatalf("have %d distinct seqs, want 1..%d", len(l.chunks), last)
	}
	var b bytes.Buffer
	for seq := uint64(1); seq <= last; seq++ {
		d, ok := l.chunks[seq]
		if !ok {
			t.Fatalf("seq %d missing", seq)
		}
		b.Write(d)
	}
	return b.String()
}

// runToFinish reads the session until JobFinished for job, acking each
// chunk, and returns the finish report.
func runToFinish(t *testing.T, s *srvSession, job string, l *jobLog, ackChunks bool) *kilnv1.JobFinished {
	t.Helper()
	var lastSeq uint64
	for {
		m := s.recv(t)
		switch {
		case m.GetLog() != nil && m.GetLog().GetJobId() == job:
			c := m.GetLog()
			if c.GetSeq() <= lastSeq {
				t.Fatalf("seq %d after %d in one session", c.GetSeq(), lastSeq)
			}
			lastSeq = c.GetSeq()
			l.add(t, c)
			if ackChunks {
				s.send(t, ack(job, c.GetAttempt(), c.GetSeq(), false, false))
			}
		case m.GetFinished() != nil && m.GetFinished().GetJobId() == job:
			return m.GetFinished()
		}
	}
}

func mkGate(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// openGate writes line into the fifo the job reads from (blocks until the
// job opens it).
func openGate(t *testing.T, p, line string) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(line + "\n"); err != nil {
		t.Fatal(err)
	}
}

func TestJobRoundTrip(t *testing.T) {
	srv := startServer(t, nil)
	a, res := startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	if s.reg.GetName() != "a1" || s.reg.GetSlots() != 2 || s.reg.GetLabels()["pool"] != "x" || s.reg.GetLabels()["os"] == "" || s.reg.GetLabels()["arch"] == "" {
		t.Fatalf("register = %v", s.reg)
	}
	if len(s.reg.GetRunning()) != 0 || s.reg.GetDraining() {
		t.Fatalf("fresh agent registered with %v", s.reg)
	}
	s.send(t, assign("1.build", 1, map[string]string{"GREETING": "hello"},
		`echo "$GREETING $KILN_JOB_ID/$KILN_ATTEMPT"`, "echo err >&2", "head -c 100000 /dev/zero | tr '\\0' y", "printf 'tail-no-newline'"))
	if st := s.recv(t).GetStarted(); st.GetJobId() != "1.build" || st.GetAttempt() != 1 || st.GetTimeUnixMs() == 0 {
		t.Fatalf("first message = %v, want JobStarted", st)
	}
	var l jobLog
	fin := runToFinish(t, s, "1.build", &l, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED || fin.GetExitCode() != 0 {
		t.Fatalf("finished = %v", fin)
	}
	want := "hello 1.build/1\nerr\n" + strings.Repeat("y", 100000) + "tail-no-newline"
	if got := l.text(t, fin.GetLastSeq()); got != want {
		t.Fatalf("log = %d bytes, want %d; start %q", len(got), len(want), got[:min(40, len(got))])
	}
	s.send(t, ack("1.build", 1, fin.GetLastSeq(), true, false))

	// A second attempt that fails reports its exit code.
	s.send(t, assign("1.build", 2, nil, "echo x", "exit 7"))
	fin = runToFinish(t, s, "1.build", &jobLog{}, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_FAILED || fin.GetExitCode() != 7 || fin.GetAttempt() != 2 {
		t.Fatalf("finished = %v", fin)
	}
	s.send(t, ack("1.build", 2, fin.GetLastSeq(), true, false))

	// Nothing is held any more, so a drain completes at once.
	a.Drain()
	waitRunOK(t, res, "Run did not return after drain")
}

func TestResendAfterDisconnect(t *testing.T) {
	srv := startServer(t, nil)
	startAgent(t, testConfig(t, srv.addr), nil)
	gate := mkGate(t)
	s1 := srv.nextSession(t)
	s1.send(t, assign("2.test", 1, map[string]string{"GATE": gate},
		"echo first", `read line < "$GATE"`, `echo "$line"`, "echo last"))
	var l jobLog
	if s1.recv(t).GetStarted() == nil {
		t.Fatal("want JobStarted first")
	}
	for {
		m := s1.recv(t)
		if c := m.GetLog(); c != nil {
			l.add(t, c)
			if strings.Contains(string(c.GetData()), "first") {
				break
			}
		}
	}
	// Drop the session without acknowledging anything, then let the job go
	// on while the agent is (or may be) disconnected.
	s1.end <- status.Error(codes.Unavailable, "coordinator going away")
	openGate(t, gate, "second")

	s2 := srv.nextSession(t)
	if r := s2.reg.GetRunning(); len(r) != 1 || r[0].GetJobId() != "2.test" || r[0].GetAttempt() != 1 {
		t.Fatalf("re-register running = %v", r)
	}
	if s2.recv(t).GetStarted().GetJobId() != "2.test" {
		t.Fatal("want JobStarted resent first")
	}
	var l2 jobLog
	fin := runToFinish(t, s2, "2.test", &l2, false)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("finished = %v", fin)
	}
	// The second session alone holds every chunk (none was acknowledged),
	// and the union of both sessions has each seq exactly once.
	for seq, d := range l2.chunks {
		l.add(t, &kilnv1.LogChunk{Seq: seq, Data: d})
	}
	if got := l2.text(t, fin.GetLastSeq()); got != "first\nsecond\nlast\n" {
		t.Fatalf("second session log = %q", got)
	}
	if got := l.text(t, fin.GetLastSeq()); got != "first\nsecond\nlast\n" {
		t.Fatalf("merged log = %q", got)
	}
	s2.send(t, ack("2.test", 1, fin.GetLastSeq(), true, false))
}

func TestNotLeaderRedirect(t *testing.T) {
	second := startServer(t, nil)
	first := startServer(t, func(*kilnv1.Register) error { return leader.NotLeaderError("n2", second.addr) })
	startAgent(t, testConfig(t, first.addr), nil)
	s := second.nextSession(t)
	if s.reg.GetName() != "a1" {
		t.Fatalf("register = %v", s.reg)
	}
	if first.attempts.Load() < 1 {
		t.Fatal("first coordinator was never asked")
	}
	// The session on the leader is live: a job runs.
	s.send(t, assign("3.x", 1, nil, "echo ok"))
	fin := runToFinish(t, s, "3.x", &jobLog{}, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("finished = %v", fin)
	}
}

// waitRunOK waits up to waitLimit for Run to return nil on res; failing
// that, the test fails with Run's error or with timeoutMsg.
func waitRunOK(t *testing.T, res <-chan error, timeoutMsg string) {
	t.Helper()
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal(timeoutMsg)
	}
}

// processGone reports whether pid has gone away (absent or a zombie). pid
// is a job's process, not the test's child, so there is no exit to wait
// for (and PID 1 here may never reap an orphan): this is a bounded poll of
// /proc. A killed process closes its files just before it turns into a
// zombie, so the poll covers that last step.
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

func TestStaleAckKillsJob(t *testing.T) {
	srv := startServer(t, nil)
	done := make(chan executor.Outcome, 1)
	a, res := startAgent(t, testConfig(t, srv.addr), func(job string, attempt uint32, o executor.Outcome) {
		if job == "4.stale" {
			done <- o
		}
	})
	s := srv.nextSession(t)
	s.send(t, assign("4.stale", 1, nil, "echo $$", "exec sleep 1000"))
	var out string
	for !strings.Contains(out, "\n") {
		if c := s.recv(t).GetLog(); c != nil {
			out += string(c.GetData())
		}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("pid line %q", out)
	}
	s.send(t, ack("4.stale", 1, 0, false, true))
	select {
	case o := <-done:
		if o.Result != kilnv1.JobResult_JOB_RESULT_CANCELED {
			t.Fatalf("outcome = %+v", o)
		}
	case <-time.After(waitLimit):
		t.Fatal("stale job was not killed")
	}
	if !processGone(pid) {
		t.Fatalf("process %d still running", pid)
	}
	// The stale attempt is forgotten: no slot held, so the drain ends at once.
	a.Drain()
	waitRunOK(t, res, "Run did not return: stale attempt still held")
}

func TestCancelJob(t *testing.T) {
	srv := startServer(t, nil)
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	s.send(t, assign("5.c", 1, nil, "echo go", "sleep 1000"))
	if s.recv(t).GetStarted() == nil {
		t.Fatal("want JobStarted")
	}
	s.send(t, &kilnv1.ConnectResponse{Msg: &kilnv1.ConnectResponse_Cancel{Cancel: &kilnv1.CancelJob{JobId: "5.c", Attempt: 1, Reason: "user canceled"}}})
	fin := runToFinish(t, s, "5.c", &jobLog{}, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_CANCELED || fin.GetReason() != "user canceled" {
		t.Fatalf("finished = %v", fin)
	}
}

func TestDrainFinishesRunningJob(t *testing.T) {
	srv := startServer(t, nil)
	a, res := startAgent(t, testConfig(t, srv.addr), nil)
	gate := mkGate(t)
	s := srv.nextSession(t)
	s.send(t, assign("6.d", 1, map[string]string{"GATE": gate}, "echo running", `read line < "$GATE"`, "echo done"))
	if s.recv(t).GetStarted() == nil {
		t.Fatal("want JobStarted")
	}
	a.Drain()
	// A draining heartbeat arrives at once.
	timeout := time.After(waitLimit)
	var l jobLog
	for draining := false; !draining; {
		select {
		case m := <-s.in:
			if m.GetHeartbeat().GetDraining() {
				draining = true
			}
			if c := m.GetLog(); c != nil {
				l.add(t, c)
			}
		case <-timeout:
			t.Fatal("no draining heartbeat")
		}
	}
	// New work is refused while draining.
	s.send(t, assign("6.other", 1, nil, "echo nope"))
	openGate(t, gate, "x")
	var lastSeq uint64
	for fin := (*kilnv1.JobFinished)(nil); fin == nil; {
		m := s.recv(t)
		if m.GetStarted().GetJobId() == "6.other" {
			t.Fatal("draining agent started a new job")
		}
		if c := m.GetLog(); c != nil {
			l.add(t, c)
			lastSeq = c.GetSeq()
		}
		fin = m.GetFinished()
		if fin != nil && fin.GetLastSeq() != lastSeq {
			t.Fatalf("last_seq %d, last chunk %d", fin.GetLastSeq(), lastSeq)
		}
	}
	select {
	case err := <-res:
		t.Fatalf("Run returned before the finish was acknowledged: %v", err)
	default:
	}
	if got := l.text(t, lastSeq); got != "running\ndone\n" {
		t.Fatalf("log = %q", got)
	}
	s.send(t, ack("6.d", 1, lastSeq, true, false))
	waitRunOK(t, res, "Run did not return after the drain")
}

func TestBackpressure(t *testing.T) {
	srv := startServer(t, nil)
	cfg := testConfig(t, srv.addr)
	cfg.LogFlushBytes = 4 << 10
	cfg.MaxUnackedBytes = 64 << 10
	startAgent(t, cfg, nil)
	s := srv.nextSession(t)
	const total = 2 << 20
	s.send(t, assign("7.big", 1, nil, fmt.Sprintf("head -c %d /dev/urandom | base64 -w 100", total)))
	var l jobLog
	var unacked, maxUnacked int
	var lastSeq uint64
	for fin := (*kilnv1.JobFinished)(nil); fin == nil; {
		m := s.recv(t)
		if c := m.GetLog(); c != nil {
			l.add(t, c)
			lastSeq = c.GetSeq()
			unacked += len(c.GetData())
			maxUnacked = max(maxUnacked, unacked)
			// Acknowledge only once the agent must have stopped.
			if unacked >= int(cfg.MaxUnackedBytes) {
				s.send(t, ack("7.big", 1, lastSeq, false, false))
				unacked = 0
			}
		}
		fin = m.GetFinished()
	}
	// One pipe read (32 KiB) may overshoot the bound.
	if limit := int(cfg.MaxUnackedBytes) + 32<<10; maxUnacked > limit {
		t.Fatalf("agent sent %d unacknowledged bytes, bound %d", maxUnacked, limit)
	}
	if got := len(l.text(t, lastSeq)); got < total*4/3 {
		t.Fatalf("log has %d bytes", got)
	}
}

func TestConfigValidate(t *testing.T) {
	good := NewConfig()
	good.Coordinators = []string{"127.0.0.1:7000"}
	if err := good.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	cases := map[string]func(*Config){
		"Coordinators":      func(c *Config) { c.Coordinators = nil },
		"Name":              func(c *Config) { c.Name = "" },
		"Slots":             func(c *Config) { c.Slots = 0 },
		"WorkDir":           func(c *Config) { c.WorkDir = "" },
		"HeartbeatInterval": func(c *Config) { c.HeartbeatInterval = 0 },
		"MaxUnackedBytes":   func(c *Config) { c.MaxUnackedBytes = 10 },
	}
	for field, mutate := range cases {
		c := good
		c.Coordinators = []string{"127.0.0.1:7000"}
		mutate(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != field {
			t.Errorf("%s: Validate = %v", field, err)
		}
	}
	etcd := good
	etcd.Coordinators = []string{"etcd:///kiln/coordinators"}
	var ce *ConfigError
	if err := etcd.Validate(); !errors.As(err, &ce) || ce.Field != "EtcdEndpoints" {
		t.Errorf("etcd target without endpoints: %v", err)
	}
	etcd.EtcdEndpoints = []string{"127.0.0.1:2379"}
	if err := etcd.Validate(); err != nil {
		t.Errorf("etcd target with endpoints: %v", err)
	}
	bad := good
	bad.Coordinators = []string{"no-port"}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "Coordinators") {
		t.Errorf("bad address: %v", err)
	}
}

func TestCancelContextKillsJobs(t *testing.T) {
	srv := startServer(t, nil)
	a, err := New(testConfig(t, srv.addr), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res := make(chan error, 1)
	go func() { res <- a.Run(ctx) }()
	s := srv.nextSession(t)
	s.send(t, assign("8.hard", 1, nil, "sleep 1000 &", "echo $!", "wait"))
	var out string
	for !strings.Contains(out, "\n") {
		if c := s.recv(t).GetLog(); c != nil {
			out += string(c.GetData())
		}
	}
	pid, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("pid line %q", out)
	}
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want context.Canceled", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return after cancel")
	}
	if !processGone(pid) {
		t.Fatalf("job child %d survived the hard stop", pid)
	}
}
