package queue

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// world is a state store the tests apply commands to.
type world struct {
	t   *testing.T
	s   *state.Store
	idx uint64
}

func newWorld(t *testing.T) *world { return &world{t: t, s: state.New()} }

func (w *world) next() uint64 { w.idx++; return w.idx }

func (w *world) agent(name string, slots int32, labels map[string]string) {
	w.t.Helper()
	if err := w.s.RegisterAgent(w.next(), &fsmv1.RegisterAgent{Name: name, Slots: slots, SessionId: name + "-s", Labels: labels, TimeUnixMs: t0.UnixMilli()}); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) submit(cmd *fsmv1.SubmitBuild) string {
	w.t.Helper()
	cmd.TimeUnixMs = t0.UnixMilli()
	b, err := w.s.SubmitBuild(w.next(), cmd)
	if err != nil {
		w.t.Fatal(err)
	}
	return b.GetId()
}

func (w *world) assign(job, agent string) {
	w.t.Helper()
	if err := w.s.AssignJob(w.next(), &fsmv1.AssignJob{JobId: job, Attempt: 1, Agent: agent, TimeUnixMs: t0.UnixMilli()}); err != nil {
		w.t.Fatal(err)
	}
}

func step(key string, sel map[string]string, needs ...string) *kilnv1.StepSpec {
	if needs == nil {
		needs = []string{}
	}
	return &kilnv1.StepSpec{Key: key, Commands: []string{"true"}, Agents: sel, Needs: needs}
}

func (w *world) explain() map[string]*kilnv1.WaitingJob {
	return ByJob(Explain(w.s.Reader(), t0.Add(time.Minute)))
}

func want(t *testing.T, got map[string]*kilnv1.WaitingJob, job string, code kilnv1.WaitCode, msg string) *kilnv1.WaitingJob {
	t.Helper()
	j, ok := got[job]
	if !ok {
		t.Fatalf("job %s not explained; have %v", job, got)
	}
	if j.GetReason().GetCode() != code || j.GetReason().GetMessage() != msg {
		t.Fatalf("job %s: %s %q, want %s %q", job, j.GetReason().GetCode(), j.GetReason().GetMessage(), code, msg)
	}
	return j
}

func TestJobNobodyCanRunNamesTheMissingLabel(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 4, map[string]string{"os": "linux"})
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("train", map[string]string{"gpu": "true", "os": "linux"})}})
	j := want(t, w.explain(), "1.train", kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, "no agent has ever offered label gpu=true")
	if !slices.Equal(j.GetReason().GetMissingLabels(), []string{"gpu=true"}) || j.GetPosition() != 1 || j.GetWaitingSinceUnixMs() != t0.UnixMilli() {
		t.Fatalf("explained as %v", j)
	}
}

func TestLabelsOfferedOnlySeparately(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, map[string]string{"gpu": "true"})
	w.agent("a2", 1, map[string]string{"os": "windows"})
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("x", map[string]string{"gpu": "true", "os": "windows"})}})
	want(t, w.explain(), "1.x", kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT,
		"no single agent has ever offered all of labels gpu=true,os=windows (each is offered by some agent)")
}

func TestNoAgentAtAll(t *testing.T) {
	w := newWorld(t)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("x", nil)}})
	want(t, w.explain(), "1.x", kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, "no agent has ever registered")
}

func TestBusyAgentsAndJobsAhead(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, map[string]string{"pool": "x"})
	w.agent("a2", 2, map[string]string{"pool": "x"})
	w.agent("other", 8, map[string]string{"pool": "y"})
	// Build 1 runs on a1; build 2's four jobs queue behind it: a2's two
	// free slots go to the first two, the other two wait.
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("run", map[string]string{"pool": "x"})}})
	w.assign("1.run", "a1")
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{
		step("p", map[string]string{"pool": "x"}), step("q", map[string]string{"pool": "x"}),
		step("r", map[string]string{"pool": "x"}), step("s", map[string]string{"pool": "x"}),
	}})
	got := w.explain()
	if _, ok := got["1.run"]; ok {
		t.Fatal("an assigned job is listed as waiting")
	}
	p := want(t, got, "2.p", kilnv1.WaitCode_WAIT_CODE_DISPATCHING, "agent a2 has a free slot; the next dispatch pass assigns it")
	want(t, got, "2.q", kilnv1.WaitCode_WAIT_CODE_DISPATCHING, "agent a2 has a free slot; the next dispatch pass assigns it")
	r := want(t, got, "2.r", kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY,
		"matching agents are all busy: a1 (1/1 slots), a2 (0/2 slots); 2 job(s) ahead in the queue take the slots that free up first")
	if p.GetPosition() != 1 || r.GetPosition() != 3 || !slices.Equal(r.GetReason().GetAgents(), []string{"a1", "a2"}) {
		t.Fatalf("positions %d, %d; agents %v", p.GetPosition(), r.GetPosition(), r.GetReason().GetAgents())
	}
}

func TestOneBusyAgent(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, nil)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("a", nil), step("b", nil)}})
	w.assign("1.a", "a1")
	want(t, w.explain(), "1.b", kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY, "the matching agent is busy: a1 (1/1 slots)")
}

func TestMatchingAgentsNotTakingJobs(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, map[string]string{"pool": "x"})
	w.agent("a2", 1, map[string]string{"pool": "x"})
	if err := w.s.ExpireAgent(w.next(), &fsmv1.ExpireAgent{Name: "a1", SessionId: "a1-s"}); err != nil {
		t.Fatal(err)
	}
	if err := w.s.RegisterAgent(w.next(), &fsmv1.RegisterAgent{Name: "a2", Slots: 1, SessionId: "a2-s2", Draining: true,
		Labels: map[string]string{"pool": "x"}}); err != nil {
		t.Fatal(err)
	}
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("x", map[string]string{"pool": "x"})}})
	want(t, w.explain(), "1.x", kilnv1.WaitCode_WAIT_CODE_AGENTS_UNAVAILABLE, "no matching agent is taking jobs: a1 (lost), a2 (draining)")
}

func TestHeldByConcurrencyGroup(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, nil)
	w.submit(&fsmv1.SubmitBuild{ConcurrencyGroup: "prod", ConcurrencyLimit: 1, Steps: []*kilnv1.StepSpec{step("deploy", nil)}})
	w.submit(&fsmv1.SubmitBuild{ConcurrencyGroup: "prod", ConcurrencyLimit: 1, Steps: []*kilnv1.StepSpec{step("deploy", nil)}})
	got := w.explain()
	want(t, got, "1.deploy", kilnv1.WaitCode_WAIT_CODE_DISPATCHING, "agent a1 has a free slot; the next dispatch pass assigns it")
	j := want(t, got, "2.deploy", kilnv1.WaitCode_WAIT_CODE_CONCURRENCY_GROUP, "held by concurrency group prod (limit 1; running: #1)")
	if j.GetPosition() != 0 || j.GetState() != kilnv1.JobState_JOB_STATE_WAITING || j.GetReason().GetConcurrencyGroup() != "prod" {
		t.Fatalf("held job %v", j)
	}
}

func TestWaitingOnNeedsAndApproval(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 2, nil)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{
		step("build", nil),
		step("test", nil, "build"),
		{Key: "approve", Needs: []string{}, Approval: &kilnv1.ApprovalSpec{Approvers: []string{"alice", "bob"}, Prompt: "ship it?", TimeoutMs: time.Hour.Milliseconds()}},
		step("deploy", nil, "test", "approve"),
	}})
	w.assign("1.build", "a1")
	got := w.explain()
	want(t, got, "1.test", kilnv1.WaitCode_WAIT_CODE_NEEDS, "waiting on needs: build (assigned)")
	d := want(t, got, "1.deploy", kilnv1.WaitCode_WAIT_CODE_NEEDS, "waiting on needs: test (waiting), approve (blocked)")
	if !slices.Equal(d.GetReason().GetNeeds(), []string{"test", "approve"}) {
		t.Fatalf("needs %v", d.GetReason().GetNeeds())
	}
	// Blocked at t0; explained at t0+1m with a 1h timeout.
	want(t, got, "1.approve", kilnv1.WaitCode_WAIT_CODE_APPROVAL, "waiting for approval by alice, bob: ship it? (rejected in 59m0s unless decided)")
}

func TestFinishedBuildsAreNotListed(t *testing.T) {
	w := newWorld(t)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("a", nil), step("b", nil, "a")}})
	if _, err := w.s.CancelBuild(w.next(), &fsmv1.CancelBuild{BuildId: "1"}); err != nil {
		t.Fatal(err)
	}
	if got := Explain(w.s.Reader(), t0); len(got) != 0 {
		t.Fatalf("canceled build explained: %v", got)
	}
}

func TestLongAgentListsAreCut(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e", "f", "g"}
	if got := list(names); !strings.HasSuffix(got, "e and 2 more") {
		t.Fatalf("list = %q", got)
	}
}

// TestExplainBuildMatchesExplain: one build's explanation is the same as
// its part of the whole queue's (positions included).
func TestExplainBuildMatchesExplain(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 1, nil)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("a", nil), step("b", nil)}})
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("c", nil), step("d", nil, "c")}})
	all := w.explain()
	got := ExplainBuild(w.s.Reader(), "2", t0.Add(time.Minute))
	if len(got) != 2 {
		t.Fatalf("build 2: %v", got)
	}
	for _, j := range got {
		if !proto.Equal(j, all[j.GetJobId()]) {
			t.Fatalf("%s: %v, whole queue says %v", j.GetJobId(), j, all[j.GetJobId()])
		}
	}
	if got[0].GetPosition() != 3 || got[0].GetReason().GetCode() != kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY {
		t.Fatalf("2.c: %v", got[0])
	}
	if ExplainBuild(w.s.Reader(), "9", t0) != nil {
		t.Fatal("unknown build explained")
	}
}

// BenchmarkExplain: 10 000 queued jobs, 100 busy agents of two pools.
func BenchmarkExplain(b *testing.B) {
	s := state.New()
	idx := uint64(0)
	for i := 0; i < 100; i++ {
		idx++
		pool := []string{"x", "y"}[i%2]
		if err := s.RegisterAgent(idx, &fsmv1.RegisterAgent{Name: fmt.Sprintf("a%03d", i), Slots: 0, SessionId: "s",
			Labels: map[string]string{"pool": pool}}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < 5000; i++ {
		idx++
		if _, err := s.SubmitBuild(idx, &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{
			step("a", map[string]string{"pool": "x"}), step("b", map[string]string{"pool": "z"})}}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if got := Explain(s.Reader(), t0); len(got) != 10000 {
			b.Fatalf("%d explained", len(got))
		}
	}
}

func TestManyBusyAgentsAreCountedNotListed(t *testing.T) {
	w := newWorld(t)
	for i := 0; i < 8; i++ {
		w.agent(fmt.Sprintf("a%d", i), 0, nil)
	}
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{step("x", nil)}})
	j := want(t, w.explain(), "1.x", kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY,
		"matching agents are all busy: a0 (0/0 slots), a1 (0/0 slots), a2 (0/0 slots), a3 (0/0 slots), a4 (0/0 slots) and 3 more")
	if len(j.GetReason().GetAgents()) != 8 {
		t.Fatalf("agents %v", j.GetReason().GetAgents())
	}
}

// TestDeployStepsAndPinnedActions: a deploy step waits for the deploy
// controller (and for the running deployment of its environment); a host
// action pinned to an agent waits for that agent only.
func TestDeployStepsAndPinnedActions(t *testing.T) {
	w := newWorld(t)
	w.agent("h1", 1, map[string]string{"env": "production"})
	w.agent("h2", 1, map[string]string{"env": "production"})
	deploy := func() *fsmv1.SubmitBuild {
		return &fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{Key: "ship", Needs: []string{},
			Deploy: &kilnv1.DeploySpec{Environment: "production", Strategy: "all_at_once", Commands: []string{"true"}}}}}
	}
	w.submit(deploy())
	want(t, w.explain(), "1.ship", kilnv1.WaitCode_WAIT_CODE_DEPLOY, "the deploy controller starts its deployment to production on its next pass")

	// Build 1's deployment starts with one action pinned to h2 (busy), and
	// build 2's deploy step queues behind it.
	w.assign(w.pinned(), "h2")
	if _, err := w.s.StartDeployment(w.next(), &fsmv1.StartDeployment{TimeUnixMs: t0.UnixMilli(),
		Deployment: &kilnv1.Deployment{Id: "1.ship.1", Environment: "production", BuildId: "1", Step: "ship", JobId: "1.ship"},
		Actions:    []*fsmv1.DeployAction{{Key: "ship-h2", Agent: "h2", Commands: []string{"true"}}}}); err != nil {
		t.Fatal(err)
	}
	w.submit(deploy())
	got := w.explain()
	want(t, got, "1.ship-h2", kilnv1.WaitCode_WAIT_CODE_AGENTS_BUSY, "the matching agent is busy: h2 (1/1 slots)")
	want(t, got, "3.ship", kilnv1.WaitCode_WAIT_CODE_DEPLOY, "waiting for deployment 1.ship.1 of environment production (build 1) to finish")
}

// pinned submits a build whose one job is pinned to agent h2 and returns
// its id (it keeps h2 busy).
func (w *world) pinned() string {
	id := w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{Key: "other", Commands: []string{"true"}, Needs: []string{}, PinAgent: "h2"}}})
	return id + ".other"
}

func TestPinnedToAnUnknownAgent(t *testing.T) {
	w := newWorld(t)
	w.agent("a1", 4, nil)
	w.submit(&fsmv1.SubmitBuild{Steps: []*kilnv1.StepSpec{{Key: "x", Commands: []string{"true"}, Needs: []string{}, PinAgent: "gone"}}})
	want(t, w.explain(), "1.x", kilnv1.WaitCode_WAIT_CODE_NO_MATCHING_AGENT, "pinned to agent gone, which has not registered")
}
