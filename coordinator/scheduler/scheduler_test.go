package scheduler

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeApplier commits commands by applying them directly to a real FSM with
// increasing log indexes, the way a single-node Raft would.
type fakeApplier struct {
	t   *testing.T
	mu  sync.Mutex
	fsm *fsm.FSM
	idx uint64
	// cmds records every command type applied, in order.
	cmds []fsmv1.CommandType
	// beforeAssign, when set, runs (once) before the first AssignJob is
	// applied, on the scheduler's goroutine.
	beforeAssign func()
}

// doneFuture is a raft.ApplyFuture that is already resolved.
type doneFuture struct {
	res   *fsm.Result
	err   error
	index uint64
}

func (f doneFuture) Error() error          { return f.err }
func (f doneFuture) Response() interface{} { return f.res }
func (f doneFuture) Index() uint64         { return f.index }

func (a *fakeApplier) ApplyAsync(t fsmv1.CommandType, msg proto.Message) (raftnode.Pending, error) {
	data, err := fsm.Encode(t, msg)
	if err != nil {
		return raftnode.Pending{}, err
	}
	a.mu.Lock()
	hook := a.beforeAssign
	if t == fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB {
		a.beforeAssign = nil
	} else {
		hook = nil
	}
	a.mu.Unlock()
	if hook != nil {
		hook()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.idx++
	res, ok := a.fsm.Apply(&raft.Log{Index: a.idx, Term: 1, Type: raft.LogCommand, Data: data}).(*fsm.Result)
	if !ok {
		a.t.Errorf("apply %s: response is not *fsm.Result", t)
	}
	a.cmds = append(a.cmds, t)
	return raftnode.NewPending(doneFuture{res: res, index: a.idx}), nil
}

func (a *fakeApplier) Apply(_ context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	p, err := a.ApplyAsync(t, msg)
	if err != nil {
		return nil, err
	}
	return p.Wait()
}

func (a *fakeApplier) count(t fsmv1.CommandType) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, c := range a.cmds {
		if c == t {
			n++
		}
	}
	return n
}

// fakeClock is the scheduler's clock; calls counts reads so a test can tell
// that the loop made progress after the clock moved.
type fakeClock struct {
	mu    sync.Mutex
	now   time.Time
	calls atomic.Int64
}

func (c *fakeClock) Now() time.Time {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

const (
	testTTL     = 10 * time.Second
	testTimeout = 42 * time.Minute
	waitLimit   = 10 * time.Second
)

type env struct {
	t     *testing.T
	store *state.Store
	ap    *fakeApplier
	clock *fakeClock
	sched *Scheduler
	now   int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	store := state.New()
	log := zaptest.NewLogger(t)
	ap := &fakeApplier{t: t, fsm: fsm.New(store, log.Named("fsm"))}
	clock := &fakeClock{now: time.UnixMilli(1_700_000_000_000)}
	s := New(Config{LeaseTTL: testTTL, HeartbeatInterval: time.Second, DefaultJobTimeout: testTimeout, Now: clock.Now},
		store, ap, log.Named("scheduler"))
	return &env{t: t, store: store, ap: ap, clock: clock, sched: s, now: 1_000}
}

// start runs the scheduler until the test ends and returns a function that
// stops it early (waiting for Run to return).
func (e *env) start() (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.sched.Run(ctx)
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	e.eventually("scheduler active", e.sched.Active)
	return stop
}

func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// settle waits until the loop has run at least one complete pass (dispatch
// and lease check, including what they commit) that began after the call.
// Every pass reads the clock in the lease check (and in dispatch when it has
// work), so three more clock reads cover one full pass.
func (e *env) settle() {
	e.t.Helper()
	target := e.clock.calls.Load() + 3
	e.eventually("a full scheduler pass", func() bool {
		e.sched.Kick()
		return e.clock.calls.Load() >= target
	})
}

func (e *env) ok(t fsmv1.CommandType, msg proto.Message) *fsm.Result {
	e.t.Helper()
	res, err := e.ap.Apply(context.Background(), t, msg)
	if err != nil {
		e.t.Fatalf("%s: %v", t, err)
	}
	return res
}

func (e *env) register(name, session string, labels map[string]string, slots int32) {
	e.t.Helper()
	e.now++
	e.ok(fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{
		Name: name, Labels: labels, Slots: slots, Version: "test", SessionId: session, TimeUnixMs: e.now,
	})
}

// agent registers an agent in the state and returns a session for it
// (not attached).
func (e *env) agent(name, session string, labels map[string]string, slots int, draining bool) *Session {
	e.t.Helper()
	e.register(name, session, labels, int32(slots))
	return NewSession(name, session, labels, slots, draining)
}

func (e *env) submit(rid string, buildEnv map[string]string, steps ...*kilnv1.StepSpec) *kilnv1.Build {
	e.t.Helper()
	e.now++
	return e.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: rid, Name: "build-" + rid, Submitter: "test", Env: buildEnv, Steps: steps, TimeUnixMs: e.now,
	}).Build
}

func (e *env) finish(agent string, a *kilnv1.JobAssignment) {
	e.t.Helper()
	e.now++
	e.ok(fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{JobId: a.GetJobId(), Attempt: a.GetAttempt(), Agent: agent, TimeUnixMs: e.now})
	e.ok(fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB, &fsmv1.FinishJob{Agent: agent, TimeUnixMs: e.now, Finished: &kilnv1.JobFinished{
		JobId: a.GetJobId(), Attempt: a.GetAttempt(), Result: kilnv1.JobResult_JOB_RESULT_PASSED, TimeUnixMs: e.now,
	}})
}

func (e *env) job(id string) *kilnv1.Job {
	e.t.Helper()
	j, ok := e.store.Job(id)
	if !ok {
		e.t.Fatalf("job %s not found", id)
	}
	return j
}

func (e *env) jobState(id string) kilnv1.JobState { return e.job(id).GetState() }

func step(key string, selector map[string]string) *kilnv1.StepSpec {
	return &kilnv1.StepSpec{Key: key, Commands: []string{"echo " + key}, Agents: selector}
}

// recv returns the next assignment sent to sess.
func recv(t *testing.T, sess *Session) *kilnv1.JobAssignment {
	t.Helper()
	select {
	case m := <-sess.Out():
		a := m.GetAssignment()
		if a == nil {
			t.Fatalf("agent %s: got %v, want an assignment", sess.Agent, m)
		}
		return a
	case <-time.After(waitLimit):
		t.Fatalf("agent %s: no assignment", sess.Agent)
	}
	return nil
}

func expectNothing(t *testing.T, sess *Session) {
	t.Helper()
	select {
	case m := <-sess.Out():
		t.Fatalf("agent %s: unexpected message %v", sess.Agent, m)
	default:
	}
}

func isClosed(s *Session) bool {
	select {
	case <-s.Done():
		return true
	default:
		return false
	}
}

var (
	linux = map[string]string{"os": "linux", "arch": "amd64"}
	mac   = map[string]string{"os": "macos", "arch": "arm64"}
)

func TestMatches(t *testing.T) {
	tests := []struct {
		name             string
		selector, labels map[string]string
		want             bool
	}{
		{"nil selector matches any agent", nil, linux, true},
		{"empty selector matches an unlabeled agent", map[string]string{}, nil, true},
		{"one pair present", map[string]string{"os": "linux"}, linux, true},
		{"every pair present", map[string]string{"os": "linux", "arch": "amd64"}, linux, true},
		{"value differs", map[string]string{"os": "linux"}, mac, false},
		{"one of two pairs differs", map[string]string{"os": "linux", "arch": "arm64"}, linux, false},
		{"key missing", map[string]string{"gpu": "a100"}, linux, false},
		{"labels nil", map[string]string{"os": "linux"}, nil, false},
		{"case sensitive", map[string]string{"os": "Linux"}, linux, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Matches(tt.selector, tt.labels); got != tt.want {
				t.Fatalf("Matches(%v, %v) = %v, want %v", tt.selector, tt.labels, got, tt.want)
			}
		})
	}
}

func TestAttachInactive(t *testing.T) {
	e := newEnv(t)
	if err := e.sched.Attach(NewSession("a", "s1", nil, 1, false)); !errors.Is(err, ErrNotActive) {
		t.Fatalf("Attach on an inactive scheduler: %v, want ErrNotActive", err)
	}
	if e.sched.Active() {
		t.Fatal("new scheduler reports active")
	}
}

func TestDispatchRespectsLabelsAndSlots(t *testing.T) {
	e := newEnv(t)
	e.start()
	lin := e.agent("linux-1", "s-lin", linux, 2, false)
	mc := e.agent("mac-1", "s-mac", mac, 1, false)
	b := e.submit("r1", nil,
		step("a", map[string]string{"os": "linux"}),
		step("b", map[string]string{"os": "linux"}),
		step("c", map[string]string{"os": "linux", "arch": "amd64"}),
		step("m", map[string]string{"os": "macos"}),
		step("w", map[string]string{"os": "windows"}),
	)
	for _, s := range []*Session{lin, mc} {
		if err := e.sched.Attach(s); err != nil {
			t.Fatal(err)
		}
	}
	id := func(key string) string { return b.GetId() + "." + key }

	got := map[string]bool{}
	for range 2 {
		a := recv(t, lin)
		if a.GetJobId() == id("m") || a.GetJobId() == id("w") {
			t.Fatalf("linux agent got %s", a.GetJobId())
		}
		got[a.GetJobId()] = true
	}
	if m := recv(t, mc); m.GetJobId() != id("m") {
		t.Fatalf("mac agent got %s, want %s", m.GetJobId(), id("m"))
	}

	// Two slots: the third linux job waits; nobody can run the windows job.
	e.settle()
	expectNothing(t, lin)
	expectNothing(t, mc)
	var waiting string
	for _, k := range []string{"a", "b", "c"} {
		if !got[id(k)] {
			waiting = id(k)
		}
	}
	if len(got) != 2 || waiting == "" {
		t.Fatalf("linux agent got %v", got)
	}
	if st := e.jobState(waiting); st != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("third linux job %s is %s, want queued", waiting, st)
	}
	if st := e.jobState(id("w")); st != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("windows job is %s, want queued", st)
	}
	if n := len(e.store.AgentJobs("linux-1")); n != 2 {
		t.Fatalf("linux agent holds %d jobs, want 2", n)
	}

	// A finished job frees a slot: the waiting job goes out.
	var first string
	for j := range got {
		first = j
		break
	}
	e.finish("linux-1", &kilnv1.JobAssignment{JobId: first, Attempt: 1})
	if a := recv(t, lin); a.GetJobId() != waiting || a.GetAttempt() != 1 {
		t.Fatalf("after a slot freed: got %s/%d, want %s/1", a.GetJobId(), a.GetAttempt(), waiting)
	}
	e.settle()
	expectNothing(t, lin)
	if st := e.jobState(id("w")); st != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("windows job is %s, want queued", st)
	}
}

func TestDrainingSessionGetsNothing(t *testing.T) {
	e := newEnv(t)
	e.start()
	d := e.agent("drainer", "s1", linux, 4, true)
	if err := e.sched.Attach(d); err != nil {
		t.Fatal(err)
	}
	b := e.submit("r1", nil, step("a", nil))
	e.settle()
	expectNothing(t, d)
	if st := e.jobState(b.GetId() + ".a"); st != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("job is %s, want queued", st)
	}
	if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB); n != 0 {
		t.Fatalf("%d assignments committed for a draining agent", n)
	}

	// Leaving drain mode makes the agent eligible again.
	d.SetDraining(false)
	e.sched.Kick()
	if a := recv(t, d); a.GetJobId() != b.GetId()+".a" {
		t.Fatalf("got %s", a.GetJobId())
	}
}

func TestAssignmentContents(t *testing.T) {
	e := newEnv(t)
	e.start()
	s := e.agent("a1", "s1", linux, 2, false)
	b := e.submit("r1", map[string]string{"SHARED": "build", "BUILD_ONLY": "b"},
		&kilnv1.StepSpec{Key: "plain", Commands: []string{"make", "make test"},
			Env: map[string]string{"SHARED": "step", "STEP_ONLY": "s"}},
		&kilnv1.StepSpec{Key: "timed", Commands: []string{"sleep 1"}, TimeoutMs: 5_000},
	)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	got := map[string]*kilnv1.JobAssignment{}
	for range 2 {
		a := recv(t, s)
		got[a.GetKey()] = a
	}

	plain := got["plain"]
	if plain == nil || got["timed"] == nil {
		t.Fatalf("assignments %v", got)
	}
	wantEnv := map[string]string{
		"SHARED":          "step",
		"BUILD_ONLY":      "b",
		"STEP_ONLY":       "s",
		"KILN_BUILD_ID":   b.GetId(),
		"KILN_BUILD_NAME": "build-r1",
		"KILN_JOB_ID":     b.GetId() + ".plain",
		"KILN_JOB_KEY":    "plain",
		"KILN_ATTEMPT":    "1",
		// No git source: empty, the build id as the number, manual.
		"KILN_COMMIT":       "",
		"KILN_BRANCH":       "",
		"KILN_TAG":          "",
		"KILN_REPO":         "",
		"KILN_BUILD_NUMBER": b.GetId(),
		"KILN_EVENT":        "manual",
	}
	for k, v := range wantEnv {
		if plain.GetEnv()[k] != v {
			t.Errorf("env %s = %q, want %q", k, plain.GetEnv()[k], v)
		}
	}
	if len(plain.GetEnv()) != len(wantEnv) {
		t.Errorf("env %v, want exactly %v", plain.GetEnv(), wantEnv)
	}
	if plain.GetJobId() != b.GetId()+".plain" || plain.GetBuildId() != b.GetId() || plain.GetAttempt() != 1 {
		t.Errorf("ids %s %s %d", plain.GetJobId(), plain.GetBuildId(), plain.GetAttempt())
	}
	if cmds := plain.GetCommands(); len(cmds) != 2 || cmds[0] != "make" || cmds[1] != "make test" {
		t.Errorf("commands %q", cmds)
	}
	if plain.GetTimeoutMs() != testTimeout.Milliseconds() {
		t.Errorf("default timeout %dms, want %dms", plain.GetTimeoutMs(), testTimeout.Milliseconds())
	}
	if got["timed"].GetTimeoutMs() != 5_000 {
		t.Errorf("step timeout %dms, want 5000ms", got["timed"].GetTimeoutMs())
	}
	// The step's env is not changed in the replicated state.
	if _, ok := e.job(b.GetId() + ".plain").GetSpec().GetEnv()["KILN_JOB_ID"]; ok {
		t.Error("assignment env leaked into the stored spec")
	}
}

func TestLeaseExpiryRequeuesPerRetryPolicy(t *testing.T) {
	tests := []struct {
		name        string
		onAgentLost int32
		want        kilnv1.JobState
	}{
		{"retry once", 1, kilnv1.JobState_JOB_STATE_QUEUED},
		{"no retry", 0, kilnv1.JobState_JOB_STATE_LOST},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.start()
			s := e.agent("a1", "s1", linux, 1, false)
			b := e.submit("r1", nil, &kilnv1.StepSpec{Key: "a", Commands: []string{"true"},
				Retry: &kilnv1.RetryPolicy{OnAgentLost: tt.onAgentLost}})
			jobID := b.GetId() + ".a"
			if err := e.sched.Attach(s); err != nil {
				t.Fatal(err)
			}
			if a := recv(t, s); a.GetAttempt() != 1 {
				t.Fatalf("first attempt %d", a.GetAttempt())
			}

			// Just before the deadline nothing happens.
			e.clock.Advance(testTTL - time.Millisecond)
			e.settle()
			if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT); n != 0 || isClosed(s) {
				t.Fatalf("expired early: %d expiries, session closed %v", n, isClosed(s))
			}

			e.clock.Advance(time.Millisecond)
			e.eventually("the lease to expire", func() bool {
				e.sched.Kick()
				return e.jobState(jobID) == tt.want
			})
			if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT); n != 1 {
				t.Fatalf("%d ExpireAgent commands, want 1", n)
			}
			if !isClosed(s) {
				t.Fatal("expired session not closed")
			}
			if a, _ := e.store.Agent("a1"); a.GetState() != kilnv1.AgentState_AGENT_STATE_LOST {
				t.Fatalf("agent state %s, want lost", a.GetState())
			}
			if tt.want != kilnv1.JobState_JOB_STATE_QUEUED {
				return
			}
			// The agent comes back: the retry is attempt 2.
			s2 := e.agent("a1", "s2", linux, 1, false)
			if err := e.sched.Attach(s2); err != nil {
				t.Fatal(err)
			}
			a := recv(t, s2)
			if a.GetJobId() != jobID || a.GetAttempt() != 2 || a.GetEnv()["KILN_ATTEMPT"] != "2" {
				t.Fatalf("retry: %s attempt %d KILN_ATTEMPT=%q", a.GetJobId(), a.GetAttempt(), a.GetEnv()["KILN_ATTEMPT"])
			}
		})
	}
}

// A new leader gives agents already in the state one full TTL from the
// moment it starts: expiring later is allowed, earlier is not.
func TestRunGivesKnownAgentsAFullTTL(t *testing.T) {
	e := newEnv(t)
	// The previous leader's work: an agent registered long ago, holding a job.
	e.register("old", "s-old", linux, 1)
	b := e.submit("r1", nil, &kilnv1.StepSpec{Key: "a", Commands: []string{"true"}, Retry: &kilnv1.RetryPolicy{OnAgentLost: 1}})
	jobID := b.GetId() + ".a"
	e.ok(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: jobID, Attempt: 1, Agent: "old", TimeUnixMs: e.now})
	// An agent without jobs and a lost one are in the state too.
	e.register("idle", "s-idle", linux, 1)
	e.register("gone", "s-gone", linux, 1)
	e.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "gone", SessionId: "s-gone", TimeUnixMs: e.now})
	// Long silence before this node became leader must not count.
	e.clock.Advance(10 * testTTL)

	e.start()
	e.settle()
	e.clock.Advance(testTTL - time.Millisecond)
	e.settle()
	if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT); n != 1 {
		t.Fatalf("%d ExpireAgent commands before one TTL passed, want only the setup's", n)
	}
	if st := e.jobState(jobID); st != kilnv1.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("job %s before the TTL passed", st)
	}

	// The agent reconnecting in time keeps its job.
	e.clock.Advance(time.Millisecond)
	e.eventually("the old agent to be declared lost", func() bool {
		e.sched.Kick()
		return e.jobState(jobID) == kilnv1.JobState_JOB_STATE_QUEUED
	})
	if a, _ := e.store.Agent("old"); a.GetState() != kilnv1.AgentState_AGENT_STATE_LOST {
		t.Fatalf("old agent %s, want lost", a.GetState())
	}
	// The idle agent is only marked disconnected.
	e.eventually("the idle agent to be disconnected", func() bool {
		a, _ := e.store.Agent("idle")
		return a.GetState() == kilnv1.AgentState_AGENT_STATE_DISCONNECTED
	})
	if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT); n != 2 {
		t.Fatalf("%d ExpireAgent commands, want 2 (setup + old)", n)
	}
}

func TestReconnectWithinFailoverTTLKeepsJob(t *testing.T) {
	e := newEnv(t)
	e.register("a1", "s-old", linux, 1)
	b := e.submit("r1", nil, step("a", nil))
	jobID := b.GetId() + ".a"
	e.ok(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: jobID, Attempt: 1, Agent: "a1", TimeUnixMs: e.now})
	e.start()

	e.clock.Advance(testTTL / 2)
	s := e.agent("a1", "s-new", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	// The reconnected agent confirms the attempt it holds.
	e.ok(fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{JobId: jobID, Attempt: 1, Agent: "a1", TimeUnixMs: e.now})
	// Past the failover deadline, within the new session's lease.
	e.clock.Advance(testTTL/2 + time.Second)
	e.settle()
	if st := e.jobState(jobID); st != kilnv1.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job %s, want still running", st)
	}
	if isClosed(s) || e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT) != 0 {
		t.Fatal("reconnected agent expired")
	}
}

func TestTouchRenewsLease(t *testing.T) {
	e := newEnv(t)
	e.start()
	s := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.clock.Advance(testTTL * 6 / 10)
		e.sched.Touch(s)
	}
	// 2.4 TTL after attach, 0.6 TTL after the last touch.
	e.clock.Advance(testTTL * 6 / 10)
	e.settle()
	if isClosed(s) || e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT) != 0 {
		t.Fatal("touched session expired")
	}
	// Touching a session that is not the agent's current one does nothing.
	e.sched.Touch(NewSession("a1", "other", linux, 1, false))
	e.clock.Advance(testTTL * 4 / 10)
	e.eventually("the lease to expire", func() bool {
		e.sched.Kick()
		return isClosed(s)
	})
	e.eventually("the agent to be lost", func() bool {
		a, _ := e.store.Agent("a1")
		return a.GetState() == kilnv1.AgentState_AGENT_STATE_LOST
	})
}

func TestAttachReplacesSession(t *testing.T) {
	e := newEnv(t)
	e.start()
	old := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(old); err != nil {
		t.Fatal(err)
	}
	cur := e.agent("a1", "s2", linux, 1, false)
	if err := e.sched.Attach(cur); err != nil {
		t.Fatal(err)
	}
	if !isClosed(old) {
		t.Fatal("replaced session not closed")
	}
	if isClosed(cur) {
		t.Fatal("new session closed")
	}
	// The old session's handler ending must not detach the new one.
	e.sched.Detach(old)
	b := e.submit("r1", nil, step("a", nil))
	if a := recv(t, cur); a.GetJobId() != b.GetId()+".a" {
		t.Fatalf("got %s", a.GetJobId())
	}
	expectNothing(t, old)
	// Nor does the old session's lease expire the agent.
	e.clock.Advance(testTTL / 2)
	e.settle()
	if isClosed(cur) || e.ap.count(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT) != 0 {
		t.Fatal("new session expired")
	}
}

// An agent that reconnects while an assignment for it is being committed
// gets the assignment on its new session.
func TestAssignmentFollowsReplacedSession(t *testing.T) {
	e := newEnv(t)
	e.start()
	old := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(old); err != nil {
		t.Fatal(err)
	}
	cur := NewSession("a1", "s2", linux, 1, false)
	attached := make(chan error, 1)
	e.ap.mu.Lock()
	e.ap.beforeAssign = func() {
		if _, err := e.ap.Apply(context.Background(), fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{
			Name: "a1", Labels: linux, Slots: 1, SessionId: "s2", TimeUnixMs: 5,
		}); err != nil {
			attached <- err
			return
		}
		attached <- e.sched.Attach(cur)
	}
	e.ap.mu.Unlock()
	b := e.submit("r1", nil, step("a", nil))
	if err := <-attached; err != nil {
		t.Fatal(err)
	}
	if a := recv(t, cur); a.GetJobId() != b.GetId()+".a" || a.GetAttempt() != 1 {
		t.Fatalf("new session got %s/%d", a.GetJobId(), a.GetAttempt())
	}
	if j := e.job(b.GetId() + ".a"); j.GetAgent() != "a1" || j.GetState() != kilnv1.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("job %v", j)
	}
}

func TestClosedSessionGetsNoJobs(t *testing.T) {
	e := newEnv(t)
	e.start()
	s := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	// The session ends (e.g. its send buffer overflowed) before its
	// handler detaches it.
	s.close()
	b := e.submit("r1", nil, step("a", nil))
	e.settle()
	if st := e.jobState(b.GetId() + ".a"); st != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("job %s, want queued", st)
	}
	if n := e.ap.count(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB); n != 0 {
		t.Fatalf("%d assignments committed to a closed session", n)
	}
}

func TestRunStopClosesSessions(t *testing.T) {
	e := newEnv(t)
	stop := e.start()
	var sessions []*Session
	for _, name := range []string{"a", "b"} {
		s := e.agent(name, "s-"+name, linux, 1, false)
		if err := e.sched.Attach(s); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	stop()
	for _, s := range sessions {
		if !isClosed(s) {
			t.Fatalf("session of %s still open after Run returned", s.Agent)
		}
		if s.Send(&kilnv1.ConnectResponse{}) {
			t.Fatal("Send on a closed session reported success")
		}
	}
	if e.sched.Active() {
		t.Fatal("scheduler still active")
	}
	if err := e.sched.Attach(NewSession("c", "s-c", nil, 1, false)); !errors.Is(err, ErrNotActive) {
		t.Fatalf("Attach after stop: %v, want ErrNotActive", err)
	}

	// A second term starts clean and works.
	e.start()
	s := e.agent("a", "s-a2", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	b := e.submit("r1", nil, step("x", nil))
	if a := recv(t, s); a.GetJobId() != b.GetId()+".x" {
		t.Fatalf("got %s", a.GetJobId())
	}
}

func TestSessionSendOverflowCloses(t *testing.T) {
	s := NewSession("a", "s", nil, 1, false)
	for i := range sendBuffer {
		if !s.Send(&kilnv1.ConnectResponse{}) {
			t.Fatalf("send %d failed below the buffer size", i)
		}
	}
	if s.Send(&kilnv1.ConnectResponse{}) {
		t.Fatal("send beyond the buffer succeeded")
	}
	if !isClosed(s) {
		t.Fatal("overflowing session not closed")
	}
}

func TestSendCancel(t *testing.T) {
	e := newEnv(t)
	e.start()
	s := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	e.sched.SendCancel("a1", &kilnv1.AttemptRef{JobId: "1.a", Attempt: 3}, "stop")
	e.sched.SendCancel("nobody", &kilnv1.AttemptRef{JobId: "1.b", Attempt: 1}, "stop")
	m := <-s.Out()
	c := m.GetCancel()
	if c.GetJobId() != "1.a" || c.GetAttempt() != 3 || c.GetReason() != "stop" {
		t.Fatalf("cancel %v", m)
	}
	expectNothing(t, s)
}

func TestAssignmentNeverStartedIsDeclaredLost(t *testing.T) {
	e := newEnv(t)
	e.start()
	s := e.agent("a1", "s1", linux, 1, false)
	if err := e.sched.Attach(s); err != nil {
		t.Fatal(err)
	}
	st := step("a", nil)
	st.Retry = &kilnv1.RetryPolicy{OnAgentLost: 0}
	b := e.submit("r1", nil, st)
	jobID := b.GetId() + ".a"
	e.eventually("the job to be assigned", func() bool {
		e.sched.Kick()
		return e.jobState(jobID) == kilnv1.JobState_JOB_STATE_ASSIGNED
	})
	// The agent stays alive (its lease is renewed) but the assignment never
	// reached it, so it never reports the start.
	e.clock.Advance(testTTL - time.Millisecond)
	e.sched.Touch(s)
	e.settle()
	if got := e.jobState(jobID); got != kilnv1.JobState_JOB_STATE_ASSIGNED {
		t.Fatalf("job %s before the deadline, want assigned", got)
	}
	e.clock.Advance(2 * time.Millisecond)
	e.sched.Touch(s)
	e.eventually("the unconfirmed assignment to be lost", func() bool {
		e.sched.Kick()
		return e.jobState(jobID) == kilnv1.JobState_JOB_STATE_LOST
	})
	if isClosed(s) {
		t.Fatal("the agent's session was closed; only the attempt should be lost")
	}
}
