package bench

import (
	"context"
	"testing"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// BenchmarkReads measures GetBuild latency on a 3-node cluster at each
// consistency level, through the leader and through a follower: what a
// linearizable read costs over a stale one (the read-index round trip and
// the leader's quorum check).
func BenchmarkReads(b *testing.B) {
	c := clustertest.Start(b, 3, clustertest.Options{})
	leader := c.Leader()
	var follower *clustertest.Node
	for _, n := range c.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	var id string
	err := clustertest.Control(context.Background(), c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "bench-reads", Command: "true"})
		id = resp.GetBuild().GetId()
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		node *clustertest.Node
		c    kilnv1.Consistency
	}{
		{"leader/linearizable", leader, kilnv1.Consistency_CONSISTENCY_LINEARIZABLE},
		{"leader/stale", leader, kilnv1.Consistency_CONSISTENCY_STALE},
		{"follower/linearizable", follower, kilnv1.Consistency_CONSISTENCY_LINEARIZABLE},
		{"follower/stale", follower, kilnv1.Consistency_CONSISTENCY_STALE},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cs := kilnv1.NewControlServiceClient(dial(b, tc.node.GRPCAddr))
			req := &kilnv1.GetBuildRequest{BuildId: id, Consistency: tc.c}
			ctx := context.Background()
			for b.Loop() {
				if _, err := cs.GetBuild(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
