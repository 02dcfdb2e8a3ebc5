package fsm

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness applies commands to a fresh FSM with increasing log indexes.
type harness struct {
	t   *testing.T
	f   *FSM
	s   *state.Store
	idx uint64
	now int64
	// entries are the log entries applied, in order (for replays).
	entries []*raft.Log
	results []*Result
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s := state.New()
	return &harness{t: t, f: New(s, nil), s: s, now: 1_000}
}

func (h *harness) apply(ct fsmv1.CommandType, msg proto.Message) *Result {
	h.t.Helper()
	data, err := Encode(ct, msg)
	if err != nil {
		h.t.Fatalf("encode %s: %v", ct, err)
	}
	h.idx++
	h.now += 10
	l := &raft.Log{Index: h.idx, Term: 1, Type: raft.LogCommand, Data: data}
	res, ok := h.f.Apply(l).(*Result)
	if !ok || res == nil {
		h.t.Fatalf("apply %s: no *Result", ct)
	}
	h.entries = append(h.entries, l)
	h.results = append(h.results, res)
	return res
}

func (h *harness) ok(ct fsmv1.CommandType, msg proto.Message) *Result {
	h.t.Helper()
	res := h.apply(ct, msg)
	if res.Err != nil {
		h.t.Fatalf("%s: unexpected error %v", ct, res.Err)
	}
	return res
}

func step(key string, stage int32, retry *kilnv1.RetryPolicy) *kilnv1.StepSpec {
	return &kilnv1.StepSpec{Key: key, Stage: stage, Commands: []string{"echo " + key}, Retry: retry}
}

func (h *harness) submit(rid string, steps ...*kilnv1.StepSpec) *kilnv1.Build {
	h.t.Helper()
	return h.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{
		RequestId: rid, Name: "b", Submitter: "me@host", Env: map[string]string{"A": "1"},
		Steps: steps, TimeUnixMs: h.now,
	}).Build
}

func (h *harness) assign(job string, attempt uint32, agent string) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: job, Attempt: attempt, Agent: agent, TimeUnixMs: h.now})
}

func (h *harness) start(job string, attempt uint32, agent string) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_START_JOB, &fsmv1.StartJob{JobId: job, Attempt: attempt, Agent: agent, TimeUnixMs: h.now})
}

func (h *harness) logs(agent, job string, attempt uint32, seqs ...uint64) *Result {
	h.t.Helper()
	cmd := &fsmv1.AppendLogs{Agent: agent}
	for _, s := range seqs {
		cmd.Chunks = append(cmd.Chunks, &kilnv1.LogChunk{JobId: job, Attempt: attempt, Seq: s, Data: []byte{byte(s)}, TimeUnixMs: h.now})
	}
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_APPEND_LOGS, cmd)
}

func (h *harness) finish(job string, attempt uint32, agent string, r kilnv1.JobResult, lastSeq uint64) *Result {
	h.t.Helper()
	return h.apply(fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB, &fsmv1.FinishJob{Agent: agent, TimeUnixMs: h.now,
		Finished: &kilnv1.JobFinished{JobId: job, Attempt: attempt, Result: r, ExitCode: exitCode(r), Reason: "done", LastSeq: lastSeq, TimeUnixMs: 7}})
}

// staleOutcome reports whether res holds exactly one outcome, a stale one.
func staleOutcome(res *Result) bool {
	return len(res.Outcomes) == 1 && res.Outcomes[0].Outcome == state.OutcomeStale
}

func exitCode(r kilnv1.JobResult) int32 {
	if r == kilnv1.JobResult_JOB_RESULT_PASSED {
		return 0
	}
	return 2
}

// run assigns, starts and passes/fails one attempt with one log chunk.
func (h *harness) run(job string, attempt uint32, agent string, r kilnv1.JobResult) {
	h.t.Helper()
	if res := h.assign(job, attempt, agent); res.Err != nil {
		h.t.Fatalf("assign %s/%d: %v", job, attempt, res.Err)
	}
	if res := h.start(job, attempt, agent); res.Err != nil {
		h.t.Fatalf("start %s/%d: %v", job, attempt, res.Err)
	}
	h.logs(agent, job, attempt, 1)
	if res := h.finish(job, attempt, agent, r, 1); res.Err != nil {
		h.t.Fatalf("finish %s/%d: %v", job, attempt, res.Err)
	}
}

func (h *harness) register(name, session string) {
	h.t.Helper()
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{Name: name, Labels: map[string]string{"os": "linux"}, Slots: 2, Version: "v1", SessionId: session, TimeUnixMs: h.now})
}

func (h *harness) job(id string) *kilnv1.Job {
	h.t.Helper()
	j, ok := h.s.Job(id)
	if !ok {
		h.t.Fatalf("job %s not found", id)
	}
	return j
}

func (h *harness) build(id string) *kilnv1.Build {
	h.t.Helper()
	b, ok := h.s.Build(id)
	if !ok {
		h.t.Fatalf("build %s not found", id)
	}
	return b
}

func (h *harness) wantJob(id string, st kilnv1.JobState) *kilnv1.Job {
	h.t.Helper()
	j := h.job(id)
	if j.State != st {
		h.t.Fatalf("job %s: state %s, want %s (reason %q)", id, j.State, st, j.Reason)
	}
	return j
}

func (h *harness) wantBuild(id string, st kilnv1.BuildState) *kilnv1.Build {
	h.t.Helper()
	b := h.build(id)
	if b.State != st {
		h.t.Fatalf("build %s: state %s, want %s (reason %q)", id, b.State, st, b.Reason)
	}
	return b
}

func wantErr(t *testing.T, got, want error) {
	t.Helper()
	if want == nil {
		if got != nil {
			t.Fatalf("unexpected error: %v", got)
		}
		return
	}
	if !errors.Is(got, want) {
		t.Fatalf("error %v, want %v", got, want)
	}
}

const (
	passed   = kilnv1.JobResult_JOB_RESULT_PASSED
	failed   = kilnv1.JobResult_JOB_RESULT_FAILED
	timedOut = kilnv1.JobResult_JOB_RESULT_TIMED_OUT
)

func TestEncodeDecode(t *testing.T) {
	msg := &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "x", TimeUnixMs: 5}
	data, err := Encode(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, msg)
	if err != nil {
		t.Fatal(err)
	}
	if data[0] != byte(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB) {
		t.Fatalf("type byte %d", data[0])
	}
	ct, got, err := Decode(data)
	if err != nil || ct != fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB || !proto.Equal(got, msg) {
		t.Fatalf("decode: %v %v %v", ct, got, err)
	}
	for name, tc := range map[string]struct {
		ct  fsmv1.CommandType
		msg proto.Message
	}{
		"wrong message": {fsmv1.CommandType_COMMAND_TYPE_START_JOB, msg},
		"unspecified":   {fsmv1.CommandType_COMMAND_TYPE_UNSPECIFIED, msg},
		"unknown":       {fsmv1.CommandType(99), msg},
		"nil":           {fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, nil},
	} {
		if _, err := Encode(tc.ct, tc.msg); !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: err %v", name, err)
		}
	}
}

func TestApplyPanicsOnBadEntry(t *testing.T) {
	for name, data := range map[string][]byte{
		"unknown type":    {200, 1, 2},
		"unspecified":     {0},
		"empty":           nil,
		"bad payload":     {byte(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD), 0xff, 0xff, 0xff},
		"truncated field": {byte(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB), 0x0a, 0x05, 'a'},
	} {
		t.Run(name, func(t *testing.T) {
			f := New(state.New(), nil)
			defer func() {
				if recover() == nil {
					t.Fatal("Apply did not panic")
				}
				if f.Store().LastIndex() != 0 {
					t.Fatal("a bad entry changed the store")
				}
			}()
			f.Apply(&raft.Log{Index: 1, Data: data})
		})
	}
}

func TestSubmitBuild(t *testing.T) {
	h := newHarness(t)
	b := h.submit("r1", step("test", 1, nil), step("build", 0, nil), step("lint", 0, nil), step("deploy", 2, nil))
	if b.Id != "1" || b.State != kilnv1.BuildState_BUILD_STATE_QUEUED || b.RequestId != "r1" || b.Submitter != "me@host" || b.CreatedUnixMs == 0 || b.Env["A"] != "1" {
		t.Fatalf("build: %v", b)
	}
	var keys []string
	for _, j := range b.Jobs {
		keys = append(keys, j.Key)
	}
	if got := strings.Join(keys, ","); got != "build,lint,test,deploy" {
		t.Fatalf("job order %s", got)
	}
	j := h.wantJob("1.build", kilnv1.JobState_JOB_STATE_QUEUED)
	if j.QueueIndex != h.idx || j.QueuedUnixMs == 0 || j.BuildId != "1" || j.Name != "build" || j.Spec.GetCommands()[0] != "echo build" || j.Attempt != 0 {
		t.Fatalf("queued job: %v", j)
	}
	h.wantJob("1.lint", kilnv1.JobState_JOB_STATE_QUEUED)
	h.wantJob("1.test", kilnv1.JobState_JOB_STATE_WAITING)
	h.wantJob("1.deploy", kilnv1.JobState_JOB_STATE_WAITING)
	if b2 := h.submit("r2", step("only", 5, nil)); b2.Id != "2" || b2.Jobs[0].State != kilnv1.JobState_JOB_STATE_QUEUED {
		t.Fatalf("second build %v", b2)
	}
	if q := h.s.QueuedJobs(); len(q) != 3 || q[2].Id != "2.only" {
		t.Fatalf("queue %v", q)
	}

	for name, steps := range map[string][]*kilnv1.StepSpec{
		"no steps":      nil,
		"duplicate key": {step("a", 0, nil), step("a", 1, nil)},
		"no commands":   {{Key: "a"}},
		"blank command": {{Key: "a", Commands: []string{"ok", "  "}}},
		"empty key":     {{Commands: []string{"x"}}},
		"bad key":       {{Key: "A/b", Commands: []string{"x"}}},
	} {
		t.Run(name, func(t *testing.T) {
			next := h.s.NextBuildNumber()
			res := h.apply(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "bad-" + name, Steps: steps})
			wantErr(t, res.Err, ErrInvalidCommand)
			if res.Build != nil || h.s.NextBuildNumber() != next {
				t.Fatal("rejected submit created a build")
			}
			if _, ok := h.s.RequestBuild("bad-" + name); ok {
				t.Fatal("rejected submit recorded its request id")
			}
			if h.s.LastIndex() != h.idx {
				t.Fatalf("last index %d, want %d", h.s.LastIndex(), h.idx)
			}
		})
	}
}

func TestDuplicateSubmitRequestIDCreatesOneBuild(t *testing.T) {
	h := newHarness(t)
	first := h.submit("same", step("a", 0, nil))
	h.run("1.a", 1, "ag", passed)
	second := h.ok(fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, &fsmv1.SubmitBuild{RequestId: "same", Steps: []*kilnv1.StepSpec{step("other", 0, nil)}})
	if second.Build.Id != first.Id || second.Build.Jobs[0].Key != "a" || second.Build.State != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("duplicate returned %v", second.Build)
	}
	if n := len(h.s.ListBuilds(0)); n != 1 {
		t.Fatalf("%d builds", n)
	}
	// No request id: no deduplication.
	h.submit("", step("a", 0, nil))
	h.submit("", step("a", 0, nil))
	if bs := h.s.ListBuilds(0); len(bs) != 3 || bs[0].Id != "3" {
		t.Fatalf("builds %v", bs)
	}
}

// attemptCase is a command for (job, attempt, agent) and the error it must
// be rejected with (nil: accepted).
type attemptCase struct {
	name    string
	job     string
	attempt uint32
	agent   string
	want    error
}

func TestAssignJob(t *testing.T) {
	tests := []attemptCase{
		{"happy", "1.a", 1, "ag", nil},
		{"unknown job", "1.zz", 1, "ag", ErrNotFound},
		{"waiting job", "1.b", 1, "ag", ErrInvalidState},
		{"attempt too high", "1.a", 2, "ag", ErrStaleAttempt},
		{"attempt zero", "1.a", 0, "ag", ErrStaleAttempt},
		{"no agent", "1.a", 1, "", ErrInvalidCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.submit("r", step("a", 0, nil), step("b", 1, nil))
			res := h.assign(tc.job, tc.attempt, tc.agent)
			wantErr(t, res.Err, tc.want)
			if tc.want != nil {
				h.wantJob("1.a", kilnv1.JobState_JOB_STATE_QUEUED)
				h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_QUEUED)
				return
			}
			j := h.wantJob("1.a", kilnv1.JobState_JOB_STATE_ASSIGNED)
			if j.Attempt != 1 || j.Agent != "ag" || j.LogSeq != 0 {
				t.Fatalf("job %v", j)
			}
			if b := h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_RUNNING); b.StartedUnixMs == 0 {
				t.Fatal("build started time not set")
			}
			if len(h.s.QueuedJobs()) != 0 || len(h.s.AgentJobs("ag")) != 1 || len(h.s.ActiveJobs()) != 1 {
				t.Fatal("indexes not updated")
			}
			// Assigning again is rejected: the job is no longer queued.
			wantErr(t, h.assign("1.a", 2, "other").Err, ErrInvalidState)
		})
	}
}

func TestStartJob(t *testing.T) {
	tests := []attemptCase{
		{"happy", "1.a", 1, "ag", nil},
		{"wrong agent", "1.a", 1, "other", ErrStaleAttempt},
		{"wrong attempt", "1.a", 2, "ag", ErrStaleAttempt},
		{"unknown job", "9.a", 1, "ag", ErrStaleAttempt},
		{"queued job", "1.b", 0, "", ErrStaleAttempt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.submit("r", step("a", 0, nil), step("b", 0, nil))
			h.ok(fsmv1.CommandType_COMMAND_TYPE_ASSIGN_JOB, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "ag"})
			res := h.start(tc.job, tc.attempt, tc.agent)
			wantErr(t, res.Err, tc.want)
			if tc.want != nil {
				if !staleOutcome(res) || res.Outcomes[0].JobID != tc.job {
					t.Fatalf("acks %v", res.Outcomes)
				}
				h.wantJob("1.a", kilnv1.JobState_JOB_STATE_ASSIGNED)
				return
			}
			j := h.wantJob("1.a", kilnv1.JobState_JOB_STATE_RUNNING)
			started := j.StartedUnixMs
			if started == 0 {
				t.Fatal("no started time")
			}
			// A resend after a reconnect is a no-op success.
			res = h.start("1.a", 1, "ag")
			if res.Err != nil || len(res.Outcomes) != 1 || res.Outcomes[0].Outcome != state.OutcomeAccepted {
				t.Fatalf("repeat start: %v %v", res.Err, res.Outcomes)
			}
			if h.job("1.a").StartedUnixMs != started {
				t.Fatal("repeat start changed the started time")
			}
		})
	}
}

func TestAppendLogs(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, nil), step("b", 0, nil))
	h.assign("1.a", 1, "ag")
	h.assign("1.b", 1, "other")

	// Logs on an ASSIGNED job move it to RUNNING.
	res := h.logs("ag", "1.a", 1, 1, 2)
	if res.Err != nil || len(res.Outcomes) != 1 || res.Outcomes[0].LogSeq != 2 || res.Outcomes[0].Outcome != state.OutcomeLogCommitted {
		t.Fatalf("acks %v", res.Outcomes)
	}
	h.wantJob("1.a", kilnv1.JobState_JOB_STATE_RUNNING)

	// Duplicate chunk (2) dropped, gap chunk (5) dropped, 3 kept.
	res = h.logs("ag", "1.a", 1, 2, 3, 5)
	if res.Outcomes[0].LogSeq != 3 {
		t.Fatalf("acks %v", res.Outcomes)
	}
	got := h.s.Logs("1.a", 1, 0, 0)
	if len(got) != 3 {
		t.Fatalf("%d chunks", len(got))
	}
	for i, c := range got {
		if c.Seq != uint64(i+1) || c.Data[0] != byte(i+1) {
			t.Fatalf("chunk %d: %v", i, c)
		}
	}
	if j := h.job("1.a"); j.LogSeq != 3 {
		t.Fatalf("log seq %d", j.LogSeq)
	}

	// One batch, several attempts: stale ones are flagged, in order of appearance.
	cmd := &fsmv1.AppendLogs{Agent: "ag", Chunks: []*kilnv1.LogChunk{
		{JobId: "1.b", Attempt: 1, Seq: 1}, // other agent's job
		{JobId: "1.a", Attempt: 1, Seq: 4}, // kept
		{JobId: "1.a", Attempt: 2, Seq: 1}, // wrong attempt
		{JobId: "9.x", Attempt: 1, Seq: 1}, // unknown job
		{JobId: "1.a", Attempt: 1, Seq: 5}, // kept
		{JobId: "1.b", Attempt: 1, Seq: 2}, // same key as the first
	}}
	res = h.ok(fsmv1.CommandType_COMMAND_TYPE_APPEND_LOGS, cmd)
	want := []state.AttemptOutcome{
		{JobID: "1.b", Attempt: 1, Outcome: state.OutcomeStale, Fence: state.FenceOtherAgent},
		{JobID: "1.a", Attempt: 1, Outcome: state.OutcomeLogCommitted, LogSeq: 5},
		{JobID: "1.a", Attempt: 2, Outcome: state.OutcomeStale, Fence: state.FenceOtherAttempt},
		{JobID: "9.x", Attempt: 1, Outcome: state.OutcomeStale, Fence: state.FenceUnknownJob},
	}
	if !slices.Equal(res.Outcomes, want) {
		t.Fatalf("outcomes %v, want %v", res.Outcomes, want)
	}
	if len(h.s.Logs("1.b", 1, 0, 0)) != 0 || h.job("1.b").LogSeq != 0 {
		t.Fatal("stale chunks were kept")
	}
	if l := h.s.Logs("1.a", 1, 2, 2); len(l) != 2 || l[0].Seq != 3 || l[1].Seq != 4 {
		t.Fatalf("paged logs %v", l)
	}
}

func TestFinishJobWithMissingLogsRejected(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, nil))
	h.assign("1.a", 1, "ag")
	h.logs("ag", "1.a", 1, 1, 2)
	res := h.finish("1.a", 1, "ag", passed, 4)
	wantErr(t, res.Err, ErrLogsIncomplete)
	if len(res.Outcomes) != 1 || res.Outcomes[0] != (state.AttemptOutcome{JobID: "1.a", Attempt: 1, Outcome: state.OutcomeLogIncomplete, LogSeq: 2}) {
		t.Fatalf("acks %v", res.Outcomes)
	}
	h.wantJob("1.a", kilnv1.JobState_JOB_STATE_RUNNING)
	h.logs("ag", "1.a", 1, 3, 4)
	res = h.finish("1.a", 1, "ag", passed, 4)
	if res.Err != nil || len(res.Outcomes) != 1 || res.Outcomes[0] != (state.AttemptOutcome{JobID: "1.a", Attempt: 1, Outcome: state.OutcomeFinished, LogSeq: 4}) {
		t.Fatalf("finish: %v %v", res.Err, res.Outcomes)
	}
	j := h.wantJob("1.a", kilnv1.JobState_JOB_STATE_PASSED)
	if j.FinishedUnixMs == 0 || j.Reason != "done" {
		t.Fatalf("job %v", j)
	}
	if b := h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_PASSED); b.FinishedUnixMs == 0 {
		t.Fatal("no finished time")
	}
	// A resent finish report is now stale.
	res = h.finish("1.a", 1, "ag", passed, 4)
	wantErr(t, res.Err, ErrStaleAttempt)
	if !staleOutcome(res) {
		t.Fatalf("acks %v", res.Outcomes)
	}
}

func TestFinishJobRejections(t *testing.T) {
	tests := []struct {
		name string
		cmd  *fsmv1.FinishJob
		want error
	}{
		{"no report", &fsmv1.FinishJob{Agent: "ag"}, ErrInvalidCommand},
		{"no result", &fsmv1.FinishJob{Agent: "ag", Finished: &kilnv1.JobFinished{JobId: "1.a", Attempt: 1}}, ErrInvalidCommand},
		{"wrong agent", &fsmv1.FinishJob{Agent: "x", Finished: &kilnv1.JobFinished{JobId: "1.a", Attempt: 1, Result: passed}}, ErrStaleAttempt},
		{"wrong attempt", &fsmv1.FinishJob{Agent: "ag", Finished: &kilnv1.JobFinished{JobId: "1.a", Attempt: 3, Result: passed}}, ErrStaleAttempt},
		{"unknown job", &fsmv1.FinishJob{Agent: "ag", Finished: &kilnv1.JobFinished{JobId: "1.q", Attempt: 1, Result: passed}}, ErrStaleAttempt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.submit("r", step("a", 0, nil))
			h.assign("1.a", 1, "ag")
			res := h.apply(fsmv1.CommandType_COMMAND_TYPE_FINISH_JOB, tc.cmd)
			wantErr(t, res.Err, tc.want)
			if errors.Is(tc.want, ErrStaleAttempt) && (!staleOutcome(res)) {
				t.Fatalf("acks %v", res.Outcomes)
			}
			h.wantJob("1.a", kilnv1.JobState_JOB_STATE_ASSIGNED)
		})
	}
}

func TestBuildThroughStages(t *testing.T) {
	t.Run("all pass", func(t *testing.T) {
		h := newHarness(t)
		h.submit("r", step("compile", 0, nil), step("unit", 1, nil), step("race", 1, nil), step("ship", 2, nil))
		h.run("1.compile", 1, "a1", passed)
		h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_RUNNING)
		u := h.wantJob("1.unit", kilnv1.JobState_JOB_STATE_QUEUED)
		if u.QueueIndex != h.idx {
			t.Fatalf("queue index %d, want %d", u.QueueIndex, h.idx)
		}
		h.wantJob("1.race", kilnv1.JobState_JOB_STATE_QUEUED)
		h.wantJob("1.ship", kilnv1.JobState_JOB_STATE_WAITING)
		h.run("1.unit", 1, "a1", passed)
		h.wantJob("1.ship", kilnv1.JobState_JOB_STATE_WAITING)
		h.run("1.race", 1, "a2", passed)
		h.wantJob("1.ship", kilnv1.JobState_JOB_STATE_QUEUED)
		h.run("1.ship", 1, "a2", passed)
		b := h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_PASSED)
		if b.Reason != "" || b.FinishedUnixMs == 0 {
			t.Fatalf("build %v", b)
		}
	})
	t.Run("failure skips later stages", func(t *testing.T) {
		h := newHarness(t)
		h.submit("r", step("compile", 0, nil), step("vet", 0, nil), step("unit", 1, nil), step("ship", 2, nil))
		h.run("1.vet", 1, "a1", failed)
		// The stage is not done yet: later stages still wait.
		h.wantJob("1.unit", kilnv1.JobState_JOB_STATE_WAITING)
		h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_RUNNING)
		h.run("1.compile", 1, "a2", passed)
		// Stage-derived needs: unit needs compile and vet, ship needs unit.
		for id, reason := range map[string]string{"1.unit": "needs vet which failed", "1.ship": "needs unit which was skipped"} {
			if j := h.wantJob(id, kilnv1.JobState_JOB_STATE_SKIPPED); j.Reason != reason {
				t.Fatalf("%s: reason %q, want %q", id, j.Reason, reason)
			}
		}
		b := h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_FAILED)
		if !strings.Contains(b.Reason, "vet") || !strings.Contains(b.Reason, "failed") {
			t.Fatalf("reason %q", b.Reason)
		}
		if j := h.job("1.vet"); j.ExitCode != 2 {
			t.Fatalf("exit code %d", j.ExitCode)
		}
	})
	t.Run("retry on failure", func(t *testing.T) {
		h := newHarness(t)
		h.submit("r", step("flaky", 0, &kilnv1.RetryPolicy{OnFailure: 2}), step("next", 1, nil))
		h.run("1.flaky", 1, "a1", failed)
		j := h.wantJob("1.flaky", kilnv1.JobState_JOB_STATE_QUEUED)
		if j.FailureRetries != 1 || j.Attempt != 1 || j.Agent != "" || j.QueueIndex != h.idx || j.Reason != "retrying after failure (attempt 2)" {
			t.Fatalf("job %v", j)
		}
		h.run("1.flaky", 2, "a2", timedOut)
		h.wantJob("1.flaky", kilnv1.JobState_JOB_STATE_QUEUED)
		h.run("1.flaky", 3, "a1", failed)
		j = h.wantJob("1.flaky", kilnv1.JobState_JOB_STATE_FAILED)
		if j.FailureRetries != 2 || j.Attempt != 3 {
			t.Fatalf("job %v", j)
		}
		h.wantJob("1.next", kilnv1.JobState_JOB_STATE_SKIPPED)
		h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_FAILED)
		// Logs of each attempt are kept apart.
		for a := uint32(1); a <= 3; a++ {
			if len(h.s.Logs("1.flaky", a, 0, 0)) != 1 {
				t.Fatalf("attempt %d logs", a)
			}
		}
	})
	t.Run("retry then pass", func(t *testing.T) {
		h := newHarness(t)
		h.submit("r", step("flaky", 0, &kilnv1.RetryPolicy{OnFailure: 1}), step("next", 1, nil))
		h.run("1.flaky", 1, "a1", failed)
		h.run("1.flaky", 2, "a1", passed)
		h.run("1.next", 1, "a1", passed)
		h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_PASSED)
	})
	t.Run("agent loss retried then lost", func(t *testing.T) {
		h := newHarness(t)
		h.register("a1", "s1")
		h.register("a2", "s2")
		h.submit("r", step("long", 0, &kilnv1.RetryPolicy{OnAgentLost: 1}), step("after", 1, nil))
		h.assign("1.long", 1, "a1")
		h.start("1.long", 1, "a1")
		h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "a1", SessionId: "s1", Reason: "lease expired", TimeUnixMs: h.now})
		j := h.wantJob("1.long", kilnv1.JobState_JOB_STATE_QUEUED)
		if j.AgentLostRetries != 1 || j.Agent != "" || j.Reason != "agent a1 lost; retrying" || j.QueueIndex != h.idx {
			t.Fatalf("job %v", j)
		}
		if a, _ := h.s.Agent("a1"); a.State != kilnv1.AgentState_AGENT_STATE_LOST || a.Running != 0 {
			t.Fatalf("agent %v", a)
		}
		h.assign("1.long", 2, "a2")
		h.ok(fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{
			Attempts: []*kilnv1.AttemptRef{{JobId: "1.long", Attempt: 2}}, Reason: "agent a2 restarted", TimeUnixMs: h.now})
		j = h.wantJob("1.long", kilnv1.JobState_JOB_STATE_LOST)
		if j.Reason != "agent a2 restarted" || j.FinishedUnixMs == 0 {
			t.Fatalf("job %v", j)
		}
		h.wantJob("1.after", kilnv1.JobState_JOB_STATE_SKIPPED)
		b := h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_FAILED)
		if b.Reason != "job long lost" {
			t.Fatalf("reason %q", b.Reason)
		}
	})
}

func TestStaleAttemptCannotCompleteJob(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("a", 0, &kilnv1.RetryPolicy{OnAgentLost: 1}))
	h.assign("1.a", 1, "zombie")
	h.start("1.a", 1, "zombie")
	h.logs("zombie", "1.a", 1, 1)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{Attempts: []*kilnv1.AttemptRef{{JobId: "1.a", Attempt: 1}}})
	h.assign("1.a", 2, "fresh")

	// The zombie comes back with attempt 1: nothing it sends counts.
	res := h.start("1.a", 1, "zombie")
	wantErr(t, res.Err, ErrStaleAttempt)
	res = h.logs("zombie", "1.a", 1, 2)
	if !staleOutcome(res) {
		t.Fatalf("log acks %v", res.Outcomes)
	}
	res = h.finish("1.a", 1, "zombie", passed, 1)
	wantErr(t, res.Err, ErrStaleAttempt)
	if !staleOutcome(res) {
		t.Fatalf("finish acks %v", res.Outcomes)
	}
	// Even naming the current attempt, a different agent is fenced out.
	wantErr(t, h.finish("1.a", 2, "zombie", passed, 0).Err, ErrStaleAttempt)
	wantErr(t, h.start("1.a", 2, "zombie").Err, ErrStaleAttempt)

	j := h.wantJob("1.a", kilnv1.JobState_JOB_STATE_ASSIGNED)
	if j.Attempt != 2 || j.Agent != "fresh" || j.LogSeq != 0 {
		t.Fatalf("job %v", j)
	}
	if len(h.s.Logs("1.a", 1, 0, 0)) != 1 {
		t.Fatal("zombie log chunk was kept")
	}
	h.start("1.a", 2, "fresh")
	h.logs("fresh", "1.a", 2, 1)
	if res := h.finish("1.a", 2, "fresh", passed, 1); res.Err != nil {
		t.Fatal(res.Err)
	}
	h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_PASSED)
}

func TestCancelBuild(t *testing.T) {
	h := newHarness(t)
	h.submit("r", step("run", 0, nil), step("asg", 0, nil), step("q", 0, nil), step("done", 0, nil), step("later", 1, nil))
	h.run("1.done", 1, "a0", passed)
	h.assign("1.run", 1, "a1")
	h.start("1.run", 1, "a1")
	h.assign("1.asg", 1, "a2")

	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "42"}).Err, ErrNotFound)

	res := h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{RequestId: "c1", BuildId: "1", Reason: "user said so", TimeUnixMs: h.now})
	if res.Build.State != kilnv1.BuildState_BUILD_STATE_CANCELED || res.Build.Reason != "user said so" || res.Build.FinishedUnixMs == 0 {
		t.Fatalf("build %v", res.Build)
	}
	wantRefs := []*kilnv1.AttemptRef{{JobId: "1.run", Attempt: 1}, {JobId: "1.asg", Attempt: 1}}
	if len(res.Canceled) != 2 || !proto.Equal(res.Canceled[0], wantRefs[0]) || !proto.Equal(res.Canceled[1], wantRefs[1]) ||
		strings.Join(res.Agents, ",") != "a1,a2" {
		t.Fatalf("canceled %v agents %v", res.Canceled, res.Agents)
	}
	if j := h.wantJob("1.run", kilnv1.JobState_JOB_STATE_CANCELED); j.Reason != "user said so" {
		t.Fatalf("reason %q", j.Reason)
	}
	h.wantJob("1.asg", kilnv1.JobState_JOB_STATE_CANCELED)
	for _, id := range []string{"1.q", "1.later"} {
		if j := h.wantJob(id, kilnv1.JobState_JOB_STATE_SKIPPED); j.Reason != "build canceled" {
			t.Fatalf("reason %q", j.Reason)
		}
	}
	h.wantJob("1.done", kilnv1.JobState_JOB_STATE_PASSED)
	if len(h.s.ActiveJobs()) != 0 || len(h.s.QueuedJobs()) != 0 {
		t.Fatal("canceled build still has live jobs")
	}
	// The agent's late finish is stale; the build stays canceled.
	wantErr(t, h.finish("1.run", 1, "a1", passed, 0).Err, ErrStaleAttempt)
	// Canceling again returns the build unchanged.
	before := h.build("1")
	res = h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "1", Reason: "again", TimeUnixMs: h.now})
	if !proto.Equal(res.Build, before) || len(res.Canceled) != 0 {
		t.Fatalf("second cancel changed the build: %v", res.Build)
	}
	// A finished build is returned unchanged too.
	h.submit("r2", step("x", 0, nil))
	h.run("2.x", 1, "a0", passed)
	res = h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "2"})
	if res.Build.State != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("finished build canceled: %v", res.Build)
	}
}

func TestAgents(t *testing.T) {
	h := newHarness(t)
	h.register("b", "s1")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{Name: "a", SessionId: "x", Draining: true, Slots: 1, TimeUnixMs: 5})
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_REGISTER_AGENT, &fsmv1.RegisterAgent{SessionId: "x"}).Err, ErrInvalidCommand)
	as := h.s.Agents()
	if len(as) != 2 || as[0].Name != "a" || as[0].State != kilnv1.AgentState_AGENT_STATE_DRAINING || as[1].Labels["os"] != "linux" || as[1].Slots != 2 || as[1].Version != "v1" {
		t.Fatalf("agents %v", as)
	}

	h.submit("r", step("j1", 0, &kilnv1.RetryPolicy{}), step("j2", 0, &kilnv1.RetryPolicy{OnAgentLost: 1}), step("j3", 0, nil))
	h.assign("1.j1", 1, "b")
	h.assign("1.j2", 1, "b")
	if a, _ := h.s.Agent("b"); a.Running != 2 {
		t.Fatalf("running %d", a.Running)
	}

	// Disconnect of an old session is ignored.
	h.ok(fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT, &fsmv1.DisconnectAgent{Name: "b", SessionId: "old", TimeUnixMs: h.now})
	if a, _ := h.s.Agent("b"); a.State != kilnv1.AgentState_AGENT_STATE_CONNECTED {
		t.Fatalf("state %s", a.State)
	}
	h.ok(fsmv1.CommandType_COMMAND_TYPE_DISCONNECT_AGENT, &fsmv1.DisconnectAgent{Name: "b", SessionId: "s1", TimeUnixMs: 777})
	if a, _ := h.s.Agent("b"); a.State != kilnv1.AgentState_AGENT_STATE_DISCONNECTED || a.DisconnectedUnixMs != 777 || a.Running != 2 {
		t.Fatalf("agent %v", a)
	}
	// Expire of an old session is ignored.
	h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "b", SessionId: "old"})
	h.wantJob("1.j1", kilnv1.JobState_JOB_STATE_ASSIGNED)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "b", SessionId: "s1", TimeUnixMs: h.now})
	if a, _ := h.s.Agent("b"); a.State != kilnv1.AgentState_AGENT_STATE_LOST || a.Running != 0 || a.DisconnectedUnixMs != 777 {
		t.Fatalf("agent %v", a)
	}
	if j := h.wantJob("1.j1", kilnv1.JobState_JOB_STATE_LOST); j.Reason != "agent b lost" {
		t.Fatalf("reason %q", j.Reason)
	}
	h.wantJob("1.j2", kilnv1.JobState_JOB_STATE_QUEUED)
	// Re-registering starts a new session and keeps the last disconnect time.
	h.register("b", "s2")
	if a, _ := h.s.Agent("b"); a.State != kilnv1.AgentState_AGENT_STATE_CONNECTED || a.SessionId != "s2" || a.DisconnectedUnixMs != 777 {
		t.Fatalf("agent %v", a)
	}
	// LoseAttempts ignores attempts that are not current.
	h.assign("1.j3", 1, "b")
	h.ok(fsmv1.CommandType_COMMAND_TYPE_LOSE_ATTEMPTS, &fsmv1.LoseAttempts{Attempts: []*kilnv1.AttemptRef{{JobId: "1.j3", Attempt: 7}, {JobId: "nope", Attempt: 1}, {JobId: "1.j2", Attempt: 1}}})
	h.wantJob("1.j3", kilnv1.JobState_JOB_STATE_ASSIGNED)
	h.wantJob("1.j2", kilnv1.JobState_JOB_STATE_QUEUED)
}

func TestNodes(t *testing.T) {
	h := newHarness(t)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{Id: "n2", GrpcAddr: "g2", RaftAddr: "r2"})
	h.ok(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{Id: "n1", GrpcAddr: "g1", RaftAddr: "r1"})
	h.ok(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{Id: "n2", GrpcAddr: "g2b", RaftAddr: "r2b"})
	wantErr(t, h.apply(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{GrpcAddr: "x"}).Err, ErrInvalidCommand)
	ns := h.s.Nodes()
	if len(ns) != 2 || !proto.Equal(ns[1], &kilnv1.Node{Id: "n2", GrpcAddr: "g2b", RaftAddr: "r2b", Voter: true}) || ns[0].Id != "n1" {
		t.Fatalf("nodes %v", ns)
	}
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REMOVE_NODE, &fsmv1.RemoveNode{Id: "n1"})
	h.ok(fsmv1.CommandType_COMMAND_TYPE_REMOVE_NODE, &fsmv1.RemoveNode{Id: "unknown"})
	if ns := h.s.Nodes(); len(ns) != 1 || ns[0].Id != "n2" {
		t.Fatalf("nodes %v", ns)
	}
}

func TestChangedFiresOnApply(t *testing.T) {
	h := newHarness(t)
	ch := h.s.Changed()
	select {
	case <-ch:
		t.Fatal("fired before any change")
	default:
	}
	h.submit("r", step("a", 0, nil))
	select {
	case <-ch:
	default:
		t.Fatal("did not fire on apply")
	}
	ch2 := h.s.Changed()
	if ch2 == ch {
		t.Fatal("Changed returned the closed channel again")
	}
	h.assign("1.a", 9, "x") // a rejection is applied too: LastIndex moves
	select {
	case <-ch2:
	default:
		t.Fatal("did not fire on a rejected command")
	}
	if h.s.LastIndex() != h.idx {
		t.Fatalf("last index %d, want %d", h.s.LastIndex(), h.idx)
	}
}

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	canceled, closed bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.canceled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

// busyHarness builds a state that uses every table.
func busyHarness(t *testing.T) *harness {
	h := newHarness(t)
	h.ok(fsmv1.CommandType_COMMAND_TYPE_SET_NODE, &fsmv1.SetNode{Id: "n1", GrpcAddr: "g1", RaftAddr: "r1"})
	h.register("a1", "s1")
	h.register("a2", "s2")
	h.submit("r1", step("c", 0, nil), step("z", 1, nil), step("b", 1, &kilnv1.RetryPolicy{OnFailure: 1}))
	h.run("1.c", 1, "a1", passed)
	h.run("1.b", 1, "a2", failed)
	h.assign("1.z", 1, "a1")
	h.logs("a1", "1.z", 1, 1, 2, 3)
	h.artifacts("a1", "1.z", 1, "out/z.bin", "a.txt")
	h.submit("r2", step("x", 0, nil))
	h.submit("r3", step("y", 0, nil))
	h.ok(fsmv1.CommandType_COMMAND_TYPE_CANCEL_BUILD, &fsmv1.CancelBuild{BuildId: "3", TimeUnixMs: h.now})
	return h
}

func snapshotBytes(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !sink.closed || sink.canceled {
		t.Fatal("sink not closed")
	}
	return sink.Bytes()
}

func records(t *testing.T, s *state.Store) []*fsmv1.SnapshotRecord {
	t.Helper()
	var out []*fsmv1.SnapshotRecord
	if err := s.Snapshot().Records(func(r *fsmv1.SnapshotRecord) error {
		out = append(out, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameState(t *testing.T, a, b *state.Store) {
	t.Helper()
	ra, rb := records(t, a), records(t, b)
	if len(ra) != len(rb) {
		t.Fatalf("%d records vs %d", len(ra), len(rb))
	}
	for i := range ra {
		if !proto.Equal(ra[i], rb[i]) {
			t.Fatalf("record %d: %v vs %v", i, ra[i], rb[i])
		}
	}
	ba, bb := a.ListBuilds(0), b.ListBuilds(0)
	if len(ba) != len(bb) {
		t.Fatalf("builds %d vs %d", len(ba), len(bb))
	}
	for i := range ba {
		if !proto.Equal(ba[i], bb[i]) {
			t.Fatalf("build %d: %v vs %v", i, ba[i], bb[i])
		}
	}
	equalList(t, "queued", a.QueuedJobs(), b.QueuedJobs())
	equalList(t, "active", a.ActiveJobs(), b.ActiveJobs())
	equalList(t, "agents", a.Agents(), b.Agents())
	equalList(t, "nodes", a.Nodes(), b.Nodes())
	if a.LastIndex() != b.LastIndex() || a.NextBuildNumber() != b.NextBuildNumber() {
		t.Fatalf("counters %d/%d vs %d/%d", a.LastIndex(), a.NextBuildNumber(), b.LastIndex(), b.NextBuildNumber())
	}
}

func equalList[M proto.Message](t *testing.T, what string, a, b []M) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d vs %d", what, len(a), len(b))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			t.Fatalf("%s %d: %v vs %v", what, i, a[i], b[i])
		}
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	h := busyHarness(t)
	data := snapshotBytes(t, h.f)

	// Changes after the snapshot are not in it.
	h.submit("r4", step("after", 0, nil))

	fresh := newHarness(t)
	fresh.submit("junk", step("gone", 0, nil)) // replaced by the restore
	changed := fresh.s.Changed()
	if err := fresh.f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed did not fire on restore")
	}
	if _, ok := fresh.s.Build("4"); ok {
		t.Fatal("snapshot holds a later build")
	}
	if fresh.s.LastIndex() != h.idx-1 || fresh.s.NextBuildNumber() != 4 {
		t.Fatalf("counters %d %d", fresh.s.LastIndex(), fresh.s.NextBuildNumber())
	}
	if l := fresh.s.Logs("1.z", 1, 0, 0); len(l) != 3 {
		t.Fatalf("logs %v", l)
	}
	if id, ok := fresh.s.RequestBuild("r2"); !ok || id != "2" {
		t.Fatal("request record lost")
	}

	// Replaying the same command on both gives identical state.
	fresh.idx, fresh.now = h.idx-1, h.now-10
	fresh.submit("r4", step("after", 0, nil))
	sameState(t, h.s, fresh.s)

	// And both continue identically.
	for _, x := range []*harness{h, fresh} {
		x.logs("a1", "1.z", 1, 4)
		x.finish("1.z", 1, "a1", passed, 4)
		x.run("1.b", 2, "a2", passed)
		x.ok(fsmv1.CommandType_COMMAND_TYPE_EXPIRE_AGENT, &fsmv1.ExpireAgent{Name: "a1", SessionId: "s1"})
	}
	sameState(t, h.s, fresh.s)
	h.wantBuild("1", kilnv1.BuildState_BUILD_STATE_PASSED)
}

func TestRestoreRejectsBadSnapshot(t *testing.T) {
	good := snapshotBytes(t, busyHarness(t).f)
	for name, data := range map[string][]byte{
		"empty":     nil,
		"truncated": good[:len(good)-3],
		"garbage":   []byte{0x05, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.submit("keep", step("a", 0, nil))
			before := records(t, h.s)
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(data))); err == nil {
				t.Fatal("restore accepted a bad snapshot")
			}
			after := records(t, h.s)
			equalList(t, "records", before, after)
		})
	}
}
