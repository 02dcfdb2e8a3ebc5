package clustertest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// glog/klog-style background flushers and grpc's internal pool may outlive tests briefly.
		// hashicorp/raft does not close accepted transport connections on Close;
		// their readers exit when the peer closes its side.
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"),
		// hashicorp/raft never answers an Apply still queued in its apply
		// channel when the node shuts down (log futures have no shutdown
		// channel), so a WaitCtx waiter whose caller already gave up stays parked
		// until the process exits. Only crash/stop tests hit it.
		goleak.IgnoreAnyFunction("github.com/kiln-ci/kiln/coordinator/raftnode.Pending.WaitCtx.func1"),
	)
}

func submit(t *testing.T, c *Cluster, req *kilnv1.SubmitBuildRequest) *kilnv1.Build {
	t.Helper()
	cl := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b *kilnv1.Build
	err := Control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, req)
		if err == nil {
			b = resp.GetBuild()
		}
		return err
	})
	if err != nil {
		t.Fatalf("submit: %v", err)
	}
	return b
}

// waitBuild waits until the build is finished on the leader and returns it.
func waitBuild(t *testing.T, c *Cluster, id string, timeout time.Duration) *kilnv1.Build {
	t.Helper()
	var b *kilnv1.Build
	Eventually(t, timeout, func() bool {
		l := c.Leader()
		got, ok := l.C.Store().Build(id)
		if !ok {
			return false
		}
		b = got
		switch got.GetState() {
		case kilnv1.BuildState_BUILD_STATE_PASSED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELED:
			return true
		}
		return false
	}, "build "+id+" finishes")
	return b
}

// jobLog reads the committed log of a job's current attempt from a node.
func jobLog(n *Node, job *kilnv1.Job) string {
	var buf bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for after := uint64(0); after < job.GetLogSeq(); {
		chunks, err := n.C.Logs().Read(ctx, job.GetId(), job.GetAttempt(), after, job.GetLogSeq(), 0)
		if err != nil {
			return "read log: " + err.Error()
		}
		for _, c := range chunks {
			buf.Write(c.GetData())
			after = c.GetSeq()
		}
	}
	return buf.String()
}

func reqID(t *testing.T, i int) string {
	return fmt.Sprintf("%s-%d-%d", t.Name(), i, time.Now().UnixNano())
}

func TestBuildsPassWithExactLogsOnThreeNodes(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", map[string]string{"pool": "x"}, 2)
	c.StartAgent("a2", map[string]string{"pool": "x"}, 2)
	var ids []string
	for i := 0; i < 5; i++ {
		b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, i), Command: fmt.Sprintf("echo build %d; printf 'no newline'", i)})
		ids = append(ids, b.GetId())
	}
	for i, id := range ids {
		b := waitBuild(t, c, id, 30*time.Second)
		if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("build %s: state %s, want passed (%s)", id, b.GetState(), b.GetReason())
		}
		want := fmt.Sprintf("build %d\nno newline", i)
		// Every node has the same committed log.
		for _, n := range c.Nodes {
			Eventually(t, 5*time.Second, func() bool {
				j, ok := n.C.Store().Job(b.GetJobs()[0].GetId())
				return ok && j.GetState() == kilnv1.JobState_JOB_STATE_PASSED
			}, "node "+n.ID+" applied the build")
			if got := jobLog(n, b.GetJobs()[0]); got != want {
				t.Fatalf("node %s build %s log = %q, want %q", n.ID, id, got, want)
			}
		}
	}
}

func TestFollowerAnswersWritesWithLeaderAddress(t *testing.T) {
	c := Start(t, 3, Options{})
	l := c.Leader()
	f := c.Followers()[0]
	conn, err := grpc.NewClient(f.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = kilnv1.NewControlServiceClient(conn).SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "r1", Command: "true"})
	addr, ok := leader.Hint(err)
	if !ok || addr != l.GRPCAddr {
		t.Fatalf("follower answered %v; want a not-leader answer naming %s (got %q)", err, l.GRPCAddr, addr)
	}
	// Nothing was committed by the refused write.
	if got := len(l.C.Store().ListBuilds(10)); got != 0 {
		t.Fatalf("%d builds after a refused write, want 0", got)
	}
	// Reads are served locally by the follower.
	if _, err := kilnv1.NewControlServiceClient(conn).ListBuilds(ctx, &kilnv1.ListBuildsRequest{}); err != nil {
		t.Fatalf("follower read: %v", err)
	}
}

func TestSubmitRetryAfterFailoverCreatesOneBuild(t *testing.T) {
	c := Start(t, 3, Options{})
	req := &kilnv1.SubmitBuildRequest{RequestId: "same-request", Command: "true"}
	first := submit(t, c, req)
	c.Kill(c.Leader())
	second := submit(t, c, req)
	if first.GetId() != second.GetId() {
		t.Fatalf("retry created build %s, first was %s", second.GetId(), first.GetId())
	}
	if n := len(c.Leader().C.Store().ListBuilds(100)); n != 1 {
		t.Fatalf("%d builds, want 1", n)
	}
}

func TestLeaderKillLosesNoLogLine(t *testing.T) {
	c := Start(t, 3, Options{LeaseTTL: 3 * time.Second})
	c.StartAgent("a1", nil, 1)
	const lines = 300
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0),
		Command: fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep 0.005; done", lines)})
	l := c.Leader()
	// Kill the leader once some output is committed.
	Eventually(t, 20*time.Second, func() bool {
		j, ok := l.C.Store().Job(b.GetJobs()[0].GetId())
		return ok && j.GetLogSeq() >= 3
	}, "some log committed")
	c.Kill(l)
	done := waitBuild(t, c, b.GetId(), 40*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("state %s (%s), want passed", done.GetState(), done.GetReason())
	}
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if got := jobLog(c.Leader(), done.GetJobs()[0]); got != want.String() {
		t.Fatalf("log after failover differs: got %d bytes, want %d\n%s", len(got), want.Len(), got)
	}
	if a := done.GetJobs()[0].GetAttempt(); a != 1 {
		t.Fatalf("job ran %d attempts, want 1 (a leader change must not re-run it)", a)
	}
}

func TestAgentLossRequeuesJobOnAnotherAgent(t *testing.T) {
	c := Start(t, 3, Options{LeaseTTL: time.Second})
	a1 := c.StartAgent("a1", map[string]string{"pool": "x"}, 1)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "sleep 0.3; echo done by $KILN_ATTEMPT",
		Labels: map[string]string{"pool": "x"}})
	Eventually(t, 10*time.Second, func() bool {
		j, ok := c.Leader().C.Store().Job(b.GetJobs()[0].GetId())
		return ok && j.GetState() == kilnv1.JobState_JOB_STATE_RUNNING && j.GetAgent() == "a1"
	}, "job runs on a1")
	c.StopAgent(a1)
	c.StartAgent("a2", map[string]string{"pool": "x"}, 1)
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	j := done.GetJobs()[0]
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || j.GetAgent() != "a2" || j.GetAttempt() != 2 {
		t.Fatalf("build %s job on %s attempt %d; want passed on a2 attempt 2 (%s)", done.GetState(), j.GetAgent(), j.GetAttempt(), j.GetReason())
	}
	if got := jobLog(c.Leader(), j); got != "done by 2\n" {
		t.Fatalf("log %q", got)
	}
}

func TestAgentLossWithoutRetryMarksJobLost(t *testing.T) {
	c := Start(t, 1, Options{LeaseTTL: time.Second})
	a1 := c.StartAgent("a1", nil, 1)
	spec := "steps:\n  - key: only\n    commands: [\"sleep 30\"]\n    retry: {on_agent_lost: 0}\n"
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "build.yaml"})
	Eventually(t, 10*time.Second, func() bool {
		j, ok := c.Leader().C.Store().Job(b.GetJobs()[0].GetId())
		return ok && j.GetState() == kilnv1.JobState_JOB_STATE_RUNNING
	}, "job runs")
	c.StopAgent(a1)
	done := waitBuild(t, c, b.GetId(), 20*time.Second)
	j := done.GetJobs()[0]
	if j.GetState() != kilnv1.JobState_JOB_STATE_LOST || !strings.Contains(j.GetReason(), "a1") {
		t.Fatalf("job %s (%q), want lost naming the agent", j.GetState(), j.GetReason())
	}
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED {
		t.Fatalf("build %s, want failed", done.GetState())
	}
}

func TestStagesRunInOrderAndParallelStepsOnDifferentAgents(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", map[string]string{"os": "linux"}, 1)
	c.StartAgent("a2", map[string]string{"os": "linux"}, 1)
	spec := `name: staged
stages:
  - name: build
    steps:
      - key: left
        commands: ["echo left on $KILN_JOB_KEY", "sleep 0.5"]
      - key: right
        commands: ["echo right", "sleep 0.5"]
  - name: test
    steps:
      - key: after
        commands: ["echo after"]
        agents: {os: linux}
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "build.yaml"})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("state %s: %s", done.GetState(), done.GetReason())
	}
	jobs := map[string]*kilnv1.Job{}
	for _, j := range done.GetJobs() {
		jobs[j.GetKey()] = j
	}
	if jobs["left"].GetAgent() == jobs["right"].GetAgent() {
		t.Fatalf("parallel steps both ran on %s", jobs["left"].GetAgent())
	}
	if jobs["after"].GetStartedUnixMs() < jobs["left"].GetFinishedUnixMs() || jobs["after"].GetStartedUnixMs() < jobs["right"].GetFinishedUnixMs() {
		t.Fatalf("stage 2 started before stage 1 finished")
	}
	if got := jobLog(c.Leader(), jobs["left"]); got != "left on left\n" {
		t.Fatalf("left log %q", got)
	}
}

func TestFailedStageSkipsLaterStages(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 2)
	spec := "stages:\n  - steps:\n      - key: bad\n        commands: [\"echo before\", \"exit 3\", \"echo never\"]\n  - steps:\n      - key: later\n        commands: [\"echo later\"]\n"
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "b.yaml"})
	done := waitBuild(t, c, b.GetId(), 20*time.Second)
	jobs := done.GetJobs()
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_FAILED || jobs[0].GetExitCode() != 3 || jobs[1].GetState() != kilnv1.JobState_JOB_STATE_SKIPPED {
		t.Fatalf("build %s, bad exit %d, later %s", done.GetState(), jobs[0].GetExitCode(), jobs[1].GetState())
	}
	if got := jobLog(c.Leader(), jobs[0]); got != "before\n" {
		t.Fatalf("log %q: the shell must stop at the first failing command", got)
	}
}

func TestCancelStopsRunningJob(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 1)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "echo started; sleep 60"})
	Eventually(t, 10*time.Second, func() bool {
		j, _ := c.Leader().C.Store().Job(b.GetJobs()[0].GetId())
		return j.GetLogSeq() >= 1
	}, "job printed")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.CancelBuild(ctx, &kilnv1.CancelBuildRequest{RequestId: "c1", BuildId: b.GetId()})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	done := waitBuild(t, c, b.GetId(), 10*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_CANCELED || done.GetJobs()[0].GetState() != kilnv1.JobState_JOB_STATE_CANCELED {
		t.Fatalf("build %s job %s", done.GetState(), done.GetJobs()[0].GetState())
	}
	// The agent frees its slot: a new build runs.
	b2 := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), Command: "true"})
	if got := waitBuild(t, c, b2.GetId(), 20*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("follow-up build %s", got.GetState())
	}
}

func TestFullRestartFromSnapshotAndLogTailKeepsState(t *testing.T) {
	c := Start(t, 3, Options{SnapshotThreshold: 16})
	c.StartAgent("a1", nil, 2)
	var ids []string
	for i := 0; i < 6; i++ {
		b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, i), Command: fmt.Sprintf("echo %d", i)})
		ids = append(ids, b.GetId())
		waitBuild(t, c, b.GetId(), 20*time.Second)
		if i == 3 {
			for _, n := range c.Nodes {
				if err := n.C.Snapshot(); err != nil {
					t.Fatalf("snapshot %s: %v", n.ID, err)
				}
			}
		}
	}
	before := c.Leader().C.Store().ListBuilds(100)
	agentsBefore := c.Leader().C.Store().Agents()
	for _, a := range c.Agents {
		c.StopAgent(a)
	}
	for _, n := range c.Nodes {
		c.Stop(n)
	}
	for _, n := range append([]*Node(nil), c.Nodes...) {
		c.Restart(n)
	}
	l := c.Leader()
	Eventually(t, 10*time.Second, func() bool { return len(l.C.Store().ListBuilds(100)) == len(before) }, "builds restored")
	after := l.C.Store().ListBuilds(100)
	for i := range before {
		if before[i].GetId() != after[i].GetId() || before[i].GetState() != after[i].GetState() {
			t.Fatalf("build %d differs after restart: %v vs %v", i, before[i], after[i])
		}
		for k, j := range before[i].GetJobs() {
			if got, want := jobLog(l, after[i].GetJobs()[k]), jobLog(l, j); got != want || got == "" {
				t.Fatalf("log of %s after restart %q, want %q", j.GetId(), got, want)
			}
		}
	}
	if got := l.C.Store().Agents(); len(got) != len(agentsBefore) || got[0].GetName() != "a1" {
		t.Fatalf("agents after restart: %v", got)
	}
	_ = ids
}

func TestMembershipAddAndRemove(t *testing.T) {
	c := Start(t, 3, Options{})
	// A fourth node joins the running cluster.
	cfg := c.config("n4", t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	cfg.Join = c.Addrs()
	c.startNode("n4", cfg)
	c.WaitMembers(4)
	// And is removed again through the API.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Client().Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		_, err := kilnv1.NewClusterServiceClient(conn).Leave(ctx, &kilnv1.LeaveRequest{NodeId: "n4"})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	Eventually(t, 10*time.Second, func() bool {
		return len(c.Leader().C.Store().Nodes()) == 3
	}, "n4 removed")
}

func TestHealthAndReflectionAreServed(t *testing.T) {
	c := Start(t, 1, Options{})
	conn, err := grpc.NewClient(c.Nodes[0].GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check: %v %v", resp, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	var names []string
	for _, s := range r.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{"kiln.v1.ControlService", "kiln.v1.AgentService", "kiln.v1.ClusterService", "grpc.health.v1.Health"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Fatalf("reflection lists %v, missing %s", names, want)
		}
	}
}

// zombie is a hand-driven agent session for fencing tests.
type zombie struct {
	t      *testing.T
	stream kilnv1.AgentService_ConnectClient
}

func connectZombie(t *testing.T, ctx context.Context, addr string, running []*kilnv1.AttemptRef) *zombie {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	stream, err := kilnv1.NewAgentServiceClient(conn).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	z := &zombie{t: t, stream: stream}
	z.send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Register{Register: &kilnv1.Register{
		Name: "zombie", Slots: 1, Running: running,
	}}})
	if m := z.recv(); m.GetRegistered() == nil {
		t.Fatalf("first answer %v, want registered", m)
	}
	return z
}

func (z *zombie) send(m *kilnv1.ConnectRequest) {
	z.t.Helper()
	if err := z.stream.Send(m); err != nil {
		z.t.Fatalf("zombie send: %v", err)
	}
}

func (z *zombie) recv() *kilnv1.ConnectResponse {
	z.t.Helper()
	m, err := z.stream.Recv()
	if err != nil {
		z.t.Fatalf("zombie recv: %v", err)
	}
	return m
}

func TestZombieAgentCannotChangeReassignedJob(t *testing.T) {
	c := Start(t, 1, Options{LeaseTTL: time.Second})
	addr := c.Nodes[0].GRPCAddr
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The zombie takes the job, starts it, then goes silent.
	zctx, zcancel := context.WithCancel(ctx)
	z := connectZombie(t, zctx, addr, nil)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "echo real work"})
	var as *kilnv1.JobAssignment
	for as == nil {
		as = z.recv().GetAssignment()
	}
	z.send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Started{Started: &kilnv1.JobStarted{JobId: as.GetJobId(), Attempt: as.GetAttempt()}}})
	// Its lease lapses; the job goes to a healthy agent as attempt 2.
	c.StartAgent("good", nil, 1)
	done := waitBuild(t, c, b.GetId(), 20*time.Second)
	j := done.GetJobs()[0]
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || j.GetAttempt() != 2 || j.GetAgent() != "good" {
		t.Fatalf("build %s, job attempt %d on %s; want passed, attempt 2 on good", done.GetState(), j.GetAttempt(), j.GetAgent())
	}
	zcancel()

	// The zombie comes back claiming attempt 1 and reports on it.
	ref := &kilnv1.AttemptRef{JobId: as.GetJobId(), Attempt: as.GetAttempt()}
	z = connectZombie(t, ctx, addr, []*kilnv1.AttemptRef{ref})
	if ack := z.recv().GetAck(); !ack.GetStale() || ack.GetJobId() != ref.GetJobId() {
		t.Fatalf("re-registration answered %v, want a stale ack for attempt 1", ack)
	}
	z.send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: ref.GetJobId(), Attempt: 1, Seq: 1, Data: []byte("zombie output\n")}}})
	z.send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{JobId: ref.GetJobId(), Attempt: 1,
		Result: kilnv1.JobResult_JOB_RESULT_FAILED, ExitCode: 9, LastSeq: 1}}})
	for i := 0; i < 2; i++ {
		if ack := z.recv().GetAck(); !ack.GetStale() {
			t.Fatalf("zombie report %d answered %v, want stale", i, ack)
		}
	}
	after, _ := c.Nodes[0].C.Store().Build(b.GetId())
	if !proto.Equal(after, done) {
		t.Fatalf("the zombie changed the build:\nbefore %v\nafter  %v", done, after)
	}
	if got := jobLog(c.Nodes[0], after.GetJobs()[0]); got != "real work\n" {
		t.Fatalf("log %q", got)
	}
}
