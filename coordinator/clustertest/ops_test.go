package clustertest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func scrapeMetrics(t *testing.T, n *Node) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.C.HTTPAddr()+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape %s: %v", n.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", n.ID, resp.StatusCode, err)
	}
	return string(b)
}

// TestFollowersExplainTheQueueAndMetricsSurviveFailover: every node, a
// follower included, gives the same wait reason (ListQueue and GetBuild
// read the replicated state), and the build counters a new leader serves
// on /metrics include the builds finished under the old one.
func TestFollowersExplainTheQueueAndMetricsSurviveFailover(t *testing.T) {
	c := Start(t, 3, Options{HTTP: true})
	c.StartAgent("a1", map[string]string{"pool": "x"}, 1)
	done := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "true", Labels: map[string]string{"pool": "x"}})
	if b := waitBuild(t, c, done.GetId(), 20*time.Second); b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s: %s", b.GetState(), b.GetReason())
	}
	stuck := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), Command: "true", Labels: map[string]string{"pool": "x", "gpu": "true"}})

	const why = "no agent has ever offered label gpu=true"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range c.Nodes {
		conn := dial(t, n.GRPCAddr)
		q, err := kilnv1.NewOpsServiceClient(conn).ListQueue(ctx, &kilnv1.ListQueueRequest{})
		if err != nil {
			t.Fatalf("%s ListQueue: %v", n.ID, err)
		}
		if q.GetTotal() != 1 || q.GetJobs()[0].GetBuildId() != stuck.GetId() || q.GetJobs()[0].GetReason().GetMessage() != why {
			t.Fatalf("%s queue: %v", n.ID, q)
		}
		b, err := kilnv1.NewControlServiceClient(conn).GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: stuck.GetId()})
		if err != nil {
			t.Fatalf("%s GetBuild: %v", n.ID, err)
		}
		if got := b.GetBuild().GetJobs()[0].GetWaitReason(); got != why {
			t.Fatalf("%s GetBuild wait_reason %q", n.ID, got)
		}
		// The stored job is never changed by the read.
		if j, _ := n.C.Store().Job(stuck.GetId() + ".run"); j.GetWaitReason() != "" {
			t.Fatalf("%s: wait reason leaked into the store", n.ID)
		}
		if _, err := kilnv1.NewOpsServiceClient(conn).ListQueue(ctx, &kilnv1.ListQueueRequest{Limit: -1}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: a negative limit: %v", n.ID, err)
		}
		st, err := kilnv1.NewOpsServiceClient(conn).GetStats(ctx, &kilnv1.GetStatsRequest{SinceMs: time.Hour.Milliseconds()})
		if err != nil {
			t.Fatalf("%s GetStats: %v", n.ID, err)
		}
		if s := st.GetStats(); s.GetBuilds() != 2 || s.GetPassed() != 1 || s.GetUnfinished() != 1 || s.GetBuildTime().GetCount() != 1 || s.GetQueueWait().GetCount() != 1 {
			t.Fatalf("%s stats: %v", n.ID, s)
		}
		if _, err := kilnv1.NewOpsServiceClient(conn).GetStats(ctx, &kilnv1.GetStatsRequest{SinceMs: -1}); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("%s: a negative since: %v", n.ID, err)
		}
	}

	old := c.Leader()
	if m := scrapeMetrics(t, old); !strings.Contains(m, "\nkiln_raft_leader 1\n") || !strings.Contains(m, "\nkiln_builds_total{result=\"passed\"} 1\n") {
		t.Fatalf("leader %s metrics lack leadership or the passed build", old.ID)
	}
	c.Stop(old)
	leader := c.Leader() // a running one: the old leader is stopped
	m := scrapeMetrics(t, leader)
	for _, want := range []string{
		"\nkiln_raft_leader 1\n",
		"\nkiln_builds_total{result=\"passed\"} 1\n",
		"\nkiln_jobs_total{result=\"passed\"} 1\n",
		"\nkiln_queue_depth 1\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("new leader %s /metrics lacks %q", leader.ID, strings.TrimSpace(want))
		}
	}
}
