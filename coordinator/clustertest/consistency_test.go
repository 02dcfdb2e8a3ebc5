package clustertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// dialNode connects to one coordinator only (no leader following), the way
// a client whose first address is that node would.
func dialNode(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// A coordinator that was down while builds were acknowledged, and has just
// restarted, must never answer a default (linearizable) read from the state
// it had before catching up: every acknowledged build is found, or the
// node answers Unavailable (retry), never NotFound.
func TestRestartedNodeNeverAnswersFromOldState(t *testing.T) {
	c := Start(t, 3, Options{})
	leader := c.Leader()
	var follower *Node
	for _, n := range c.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	c.Kill(follower)
	var ids []string
	for i := range 20 {
		b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("stale-%d", i), Command: "true"})
		ids = append(ids, b.GetId())
	}
	restarted := c.Restart(follower)
	cs := kilnv1.NewControlServiceClient(dialNode(t, restarted.GRPCAddr))
	deadline := time.Now().Add(20 * time.Second)
	for _, id := range ids {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := cs.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: id})
			cancel()
			if err == nil {
				if resp.GetBuild().GetId() != id {
					t.Fatalf("GetBuild(%s) answered build %q", id, resp.GetBuild().GetId())
				}
				break
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("restarted node %s answered GetBuild(%s) with %v; an acknowledged build must be found (or Unavailable while the node cannot confirm a read index)", restarted.ID, id, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("restarted node still unavailable for reads after 20s: %v", err)
			}
			time.Sleep(20 * time.Millisecond) // retry pacing, as a client backs off
		}
	}
	// A list through the same node holds every acknowledged build.
	resp, err := cs.ListBuilds(context.Background(), &kilnv1.ListBuildsRequest{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, b := range resp.GetBuilds() {
		seen[b.GetId()] = true
	}
	for _, id := range ids {
		if !seen[id] {
			t.Fatalf("ListBuilds through %s misses acknowledged build %s", restarted.ID, id)
		}
	}
	// Stale reads are accepted and served locally.
	if _, err := cs.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: ids[0], Consistency: kilnv1.Consistency_CONSISTENCY_STALE}); err != nil {
		t.Fatalf("stale read: %v", err)
	}
}

// A Join naming an address where nothing runs adds a non-voter that is
// never promoted: the quorum stays two of the three real voters, so the
// cluster keeps a leader and accepts writes with one real member down.
func TestUnreachableJoinerNeverCostsQuorum(t *testing.T) {
	c := Start(t, 3, Options{})
	leader := c.Leader()
	cl := kilnv1.NewClusterServiceClient(dialNode(t, leader.GRPCAddr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Join(ctx, &kilnv1.JoinRequest{NodeId: "ghost", RaftAddr: "127.0.0.1:1", GrpcAddr: "127.0.0.1:1"}); err != nil {
		t.Fatalf("join: %v", err)
	}
	ghost := func() *kilnv1.Node {
		st, err := cl.Status(ctx, &kilnv1.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range st.GetNodes() {
			if n.GetId() == "ghost" {
				return n
			}
		}
		return nil
	}
	if g := ghost(); g == nil || g.GetVoter() {
		t.Fatalf("ghost after join: %v; want a non-voter", g)
	}
	// Observation window: several autopilot rounds (100ms) and more than
	// the stabilization time (300ms) pass; the ghost must stay a non-voter.
	time.Sleep(time.Second)
	if g := ghost(); g == nil || g.GetVoter() || g.GetHealthy() {
		t.Fatalf("ghost after 1s: %v; an unreachable member must stay an unhealthy non-voter", g)
	}
	if v, err := leader.C.Voters(); err != nil || v != 3 {
		t.Fatalf("voters = %d (%v), want 3", v, err)
	}
	for _, n := range c.Nodes {
		if n != leader {
			c.Kill(n)
			break
		}
	}
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: "after-ghost", Command: "true"})
	if b.GetId() == "" {
		t.Fatal("submit with one voter down and a ghost non-voter returned no build")
	}
}

// Members that joined report healthy once the leader's autopilot has seen
// them caught up (Start waits for their promotion to voter).
func TestJoinedMembersArePromotedAndHealthy(t *testing.T) {
	c := Start(t, 3, Options{})
	leader := c.Leader()
	cl := kilnv1.NewClusterServiceClient(dialNode(t, leader.GRPCAddr))
	Eventually(t, 10*time.Second, func() bool {
		st, err := cl.Status(context.Background(), &kilnv1.StatusRequest{})
		if err != nil {
			return false
		}
		for _, n := range st.GetNodes() {
			if !n.GetVoter() || !n.GetHealthy() {
				return false
			}
		}
		return len(st.GetNodes()) == 3
	}, "three healthy voters")
}
