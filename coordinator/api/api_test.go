package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobrepl"
	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/peers"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/readindex"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/hashicorp/raft.(*NetworkTransport).handleConn"))
}

// newDeps opens a single Raft member over a fresh store. With lead, the
// member bootstraps a one-node cluster, becomes leader and runs the
// scheduler; without, it never leads (no cluster to belong to).
func newDeps(t *testing.T, lead bool) *Deps {
	t.Helper()
	log := zaptest.NewLogger(t)
	store := state.New()
	cfg := raftnode.Config{
		NodeID: "n1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
	}
	if lead {
		cfg.InitialCluster = map[string]string{"n1": "127.0.0.1:0"}
	}
	node, err := raftnode.Open(cfg, fsm.New(store, log.Named("fsm")), log.Named("raft"))
	if err != nil {
		t.Fatal(err)
	}
	sched := scheduler.New(scheduler.Config{}, store, node, log.Named("scheduler"))
	d := &Deps{NodeID: "n1", GRPCAddr: "127.0.0.1:1", RaftAddr: node.RaftAddr(), Store: store, Raft: node,
		Scheduler: sched, Log: log.Named("api"), Now: func() time.Time { return time.UnixMilli(1_700_000_000_000) }}
	pool := peers.New()
	t.Cleanup(pool.Close)
	d.Reads = readindex.New(node, store, func() bool { return node.IsLeader() && sched.Active() }, func() string { return "" }, pool)
	d.Builds = builds.New(builds.Config{Raft: node, Repos: store, Leading: func() bool { return node.IsLeader() && sched.Active() },
		Kick: sched.Kick, Now: d.Now, Log: log.Named("builds")})
	if !lead {
		t.Cleanup(func() { _ = node.Close() })
		return d
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		<-done
		if err := node.Close(); err != nil {
			t.Errorf("close raft: %v", err)
		}
	})
	waitFor(t, "leadership", node.IsLeader)
	if err := node.Barrier(ctx); err != nil {
		close(done)
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		sched.Run(ctx)
	}()
	waitFor(t, "the scheduler", sched.Active)
	return d
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func TestValidateSubmit(t *testing.T) {
	many := func(n int, prefix string) map[string]string {
		m := map[string]string{}
		for i := range n {
			m[fmt.Sprintf("%s%d", prefix, i)] = "v"
		}
		return m
	}
	cmd := func(mod func(r *kilnv1.SubmitBuildRequest)) *kilnv1.SubmitBuildRequest {
		r := &kilnv1.SubmitBuildRequest{RequestId: "req-1", Command: "make test"}
		mod(r)
		return r
	}
	tests := []struct {
		name string
		req  *kilnv1.SubmitBuildRequest
		// field must appear in the message; "" means the request is valid.
		field string
	}{
		{"valid command", cmd(func(*kilnv1.SubmitBuildRequest) {}), ""},
		{"valid spec", &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "steps: []"}, ""},
		{"valid env and labels", cmd(func(r *kilnv1.SubmitBuildRequest) {
			r.Env = many(MaxEnvEntries, "V")
			r.Labels = many(MaxLabelEntries, "l")
		}), ""},
		{"missing request id", cmd(func(r *kilnv1.SubmitBuildRequest) { r.RequestId = "" }), "request_id"},
		{"request id too long", cmd(func(r *kilnv1.SubmitBuildRequest) { r.RequestId = strings.Repeat("r", MaxRequestID+1) }), "request_id"},
		{"neither spec nor command", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Command = "" }), "spec_yaml"},
		{"both spec and command", cmd(func(r *kilnv1.SubmitBuildRequest) { r.SpecYaml = "steps: []" }), "spec_yaml"},
		{"spec too large", &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: strings.Repeat("#", MaxSpecBytes+1)}, "spec_yaml"},
		{"command too large", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Command = strings.Repeat("x", MaxCommandBytes+1) }), "command"},
		{"blank command", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Command = " \n\t" }), "command"},
		{"name too long", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Name = strings.Repeat("n", MaxNameBytes+1) }), "name"},
		{"submitter too long", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Submitter = strings.Repeat("s", 3<<20) }), "submitter: 3145728 bytes; the limit is 256"},
		{"label key too long", cmd(func(r *kilnv1.SubmitBuildRequest) {
			r.Labels = map[string]string{strings.Repeat("k", MaxLabelBytes+1): "v"}
		}), "the limit is 256"},
		{"label value too long", cmd(func(r *kilnv1.SubmitBuildRequest) {
			r.Labels = map[string]string{"os": strings.Repeat("v", MaxLabelBytes+1)}
		}), `labels: value of "os" is 257 bytes; the limit is 256`},
		{"env value too long", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"A": strings.Repeat("x", MaxEnvBytes+1)} }), "env: 65538 bytes; the limit is 65536"},
		{"negative timeout", cmd(func(r *kilnv1.SubmitBuildRequest) { r.TimeoutMs = -1 }), "timeout_ms"},
		{"empty env name", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"": "v"} }), "env"},
		{"env name with =", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"A=B": "v"} }), "env"},
		{"env name with NUL", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"A\x00": "v"} }), "env"},
		{"env value with NUL", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"A": "v\x00"} }), "env"},
		{"too many env entries", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = many(MaxEnvEntries+1, "V") }), "env"},
		{"env too large", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Env = map[string]string{"BIG": strings.Repeat("x", MaxEnvBytes)} }), "env"},
		{"too many labels", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Labels = many(MaxLabelEntries+1, "l") }), "labels"},
		{"empty label key", cmd(func(r *kilnv1.SubmitBuildRequest) { r.Labels = map[string]string{"": "x"} }), "labels"},
		{"spec not UTF-8", &kilnv1.SubmitBuildRequest{RequestId: "r", SpecYaml: "name: \xff"}, "spec_yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateSubmit(tt.req)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("valid request rejected: %v", err)
				}
				return
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if !strings.Contains(st.Message(), tt.field) {
				t.Fatalf("message %q does not name %s", st.Message(), tt.field)
			}
			// The RPC answers the same without touching Raft or the store.
			_, rpcErr := NewControlServer(&Deps{}).SubmitBuild(context.Background(), tt.req)
			if status.Code(rpcErr) != codes.InvalidArgument || status.Convert(rpcErr).Message() != st.Message() {
				t.Fatalf("SubmitBuild: %v", rpcErr)
			}
		})
	}
}

func TestToStatus(t *testing.T) {
	d := newDeps(t, false)
	tests := []struct {
		name string
		err  error
		code codes.Code
		// notLeader: the status carries a kilnv1.NotLeader detail.
		notLeader bool
	}{
		{"not found", fmt.Errorf("cancel 7: %w", fsm.ErrNotFound), codes.NotFound, false},
		{"invalid command", fmt.Errorf("submit: %w", fsm.ErrInvalidCommand), codes.InvalidArgument, false},
		{"stale attempt", fmt.Errorf("start: %w", fsm.ErrStaleAttempt), codes.FailedPrecondition, false},
		{"invalid state", fmt.Errorf("assign: %w", fsm.ErrInvalidState), codes.FailedPrecondition, false},
		{"logs incomplete", fmt.Errorf("finish: %w", fsm.ErrLogsIncomplete), codes.FailedPrecondition, false},
		{"not leader", fmt.Errorf("%w: %w", raftnode.ErrNotLeader, errors.New("raft says no")), codes.Unavailable, true},
		{"outcome unknown", fmt.Errorf("%w: %w", raftnode.ErrOutcomeUnknown, errors.New("leadership lost")), codes.Unavailable, true},
		{"build refused", fmt.Errorf("submit: %w", &builds.Error{Kind: builds.KindInvalid, Msg: "invalid build file:\nx.yaml:1:1: bad"}), codes.InvalidArgument, false},
		{"build precondition", &builds.Error{Kind: builds.KindFailedPrecondition, Msg: "upload the archive first"}, codes.FailedPrecondition, false},
		{"no blob quorum", fmt.Errorf("upload: %w", blobrepl.ErrNoQuorum), codes.Unavailable, false},
		{"blob on no peer", blobrepl.ErrNotFound, codes.NotFound, false},
		{"deadline", fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded, false},
		{"canceled", context.Canceled, codes.Canceled, false},
		{"status passes through", status.Error(codes.ResourceExhausted, "slow down"), codes.ResourceExhausted, false},
		{"anything else", errors.New("disk on fire"), codes.Internal, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := d.toStatus(tt.err)
			if status.Code(got) != tt.code {
				t.Fatalf("toStatus(%v) = %v, want %s", tt.err, got, tt.code)
			}
			if _, ok := leader.Hint(got); ok != tt.notLeader {
				t.Fatalf("toStatus(%v) = %v: leader hint %v, want %v", tt.err, got, ok, tt.notLeader)
			}
		})
	}
	if d.toStatus(nil) != nil {
		t.Fatal("toStatus(nil) is not nil")
	}
}

func TestWritesOnFollowerAreRedirected(t *testing.T) {
	d := newDeps(t, false)
	ctl := NewControlServer(d)
	_, err := ctl.SubmitBuild(context.Background(), &kilnv1.SubmitBuildRequest{RequestId: "r", Command: "true"})
	if addr, ok := leader.Hint(err); !ok || status.Code(err) != codes.Unavailable || addr != "" {
		t.Fatalf("SubmitBuild on a follower: %v (hint %q %v)", err, addr, ok)
	}
	_, err = ctl.CancelBuild(context.Background(), &kilnv1.CancelBuildRequest{BuildId: "1"})
	if !leader.IsNotLeader(err) {
		t.Fatalf("CancelBuild on a follower: %v", err)
	}
	if n := len(d.Store.ListBuilds(10)); n != 0 {
		t.Fatalf("%d builds on a follower", n)
	}
}

func TestSubmitBuildInvalidPipeline(t *testing.T) {
	d := newDeps(t, true)
	ctl := NewControlServer(d)
	before := d.Store.LastIndex()
	spec := "name: x\nstages:\n  - name: build\n    stepz: []\n    steps:\n      - key: compile\n        comands: [make]\n"
	_, err := ctl.SubmitBuild(context.Background(), &kilnv1.SubmitBuildRequest{
		RequestId: "bad-1", SpecYaml: spec, SpecFilename: "kiln.yaml",
	})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	msg := status.Convert(err).Message()
	for _, want := range []string{"kiln.yaml:4:5:", "stepz", "kiln.yaml:7:9:", "comands"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	// Without a file name the default one is used; a YAML syntax error
	// has a line (the YAML parser reports no column).
	_, err = ctl.SubmitBuild(context.Background(), &kilnv1.SubmitBuildRequest{RequestId: "bad-2", SpecYaml: "steps: [\n"})
	if status.Code(err) != codes.InvalidArgument || !regexp.MustCompile(`build\.yaml:\d+:`).MatchString(status.Convert(err).Message()) {
		t.Fatalf("syntax error: %v", err)
	}
	if err := d.Raft.Barrier(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d.Store.LastIndex() != before || len(d.Store.ListBuilds(10)) != 0 {
		t.Fatalf("an invalid build changed the state: last index %d -> %d", before, d.Store.LastIndex())
	}
	for _, rid := range []string{"bad-1", "bad-2"} {
		if _, ok := d.Store.RequestBuild(rid); ok {
			t.Fatalf("request id %s recorded", rid)
		}
	}

	// The same node accepts a valid build, once per request id.
	req := &kilnv1.SubmitBuildRequest{RequestId: "good", SpecYaml: "steps:\n  - key: a\n    command: make\n"}
	first, err := ctl.SubmitBuild(context.Background(), req)
	if err != nil {
		t.Fatalf("valid build: %v", err)
	}
	again, err := ctl.SubmitBuild(context.Background(), req)
	if err != nil || again.GetBuild().GetId() != first.GetBuild().GetId() {
		t.Fatalf("resubmit: %v %v, want build %s", again, err, first.GetBuild().GetId())
	}
	if n := len(d.Store.ListBuilds(10)); n != 1 {
		t.Fatalf("%d builds, want 1", n)
	}
}

func TestSubmitCommandBuild(t *testing.T) {
	d := newDeps(t, true)
	resp, err := NewControlServer(d).SubmitBuild(context.Background(), &kilnv1.SubmitBuildRequest{
		RequestId: "c1", Command: "make test\necho done", Labels: map[string]string{"os": "linux"}, TimeoutMs: 1234,
		Env: map[string]string{"A": "1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := resp.GetBuild()
	if b.GetName() != "make test" || len(b.GetJobs()) != 1 {
		t.Fatalf("build %v", b)
	}
	spec := b.GetJobs()[0].GetSpec()
	if spec.GetKey() != builds.SingleCommandKey || spec.GetAgents()["os"] != "linux" || spec.GetTimeoutMs() != 1234 ||
		spec.GetRetry().GetOnAgentLost() != 1 || spec.GetCommands()[0] != "make test\necho done" {
		t.Fatalf("spec %v", spec)
	}
	if b.GetEnv()["A"] != "1" {
		t.Fatalf("env %v", b.GetEnv())
	}
}

func TestCancelBuildErrors(t *testing.T) {
	d := newDeps(t, true)
	ctl := NewControlServer(d)
	tests := []struct {
		name string
		req  *kilnv1.CancelBuildRequest
		code codes.Code
	}{
		{"missing build id", &kilnv1.CancelBuildRequest{}, codes.InvalidArgument},
		{"reason too long", &kilnv1.CancelBuildRequest{BuildId: "1", Reason: strings.Repeat("x", MaxNameBytes+1)}, codes.InvalidArgument},
		{"unknown build", &kilnv1.CancelBuildRequest{BuildId: "404"}, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ctl.CancelBuild(context.Background(), tt.req); status.Code(err) != tt.code {
				t.Fatalf("got %v, want %s", err, tt.code)
			}
		})
	}
}
