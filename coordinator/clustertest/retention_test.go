package clustertest

import (
	"context"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestArtifactRetentionDeletesExpiredBlobs: a build with a short
// artifact_retention loses its artifact records once the retention ends,
// and every coordinator's garbage collector deletes the blobs only it
// referenced; a blob a newer build (cluster default retention) still
// references stays everywhere.
func TestArtifactRetentionDeletesExpiredBlobs(t *testing.T) {
	c := Start(t, 3, Options{BlobGCGrace: 300 * time.Millisecond})
	c.StartAgent("a1", nil, 2)

	listArtifacts := func(id string) []*kilnv1.Artifact {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var arts []*kilnv1.Artifact
		if err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			resp, err := cc.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: id})
			arts = resp.GetArtifacts()
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return arts
	}
	old := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecFilename: "old.yaml", SpecYaml: `artifact_retention: 2s
steps:
  - key: produce
    commands: ["printf shared-content > a.txt", "printf only-old > b.txt"]
    artifacts: [a.txt, b.txt]
`})
	newer := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), SpecFilename: "new.yaml", SpecYaml: `steps:
  - key: produce
    commands: ["printf shared-content > a.txt"]
    artifacts: [a.txt]
`})
	if old.GetArtifactRetentionMs() != 2000 || newer.GetArtifactRetentionMs() != 0 {
		t.Fatalf("retention %d %d", old.GetArtifactRetentionMs(), newer.GetArtifactRetentionMs())
	}
	for _, b := range []*kilnv1.Build{old, newer} {
		if done := waitBuild(t, c, b.GetId(), 60*time.Second); done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
			t.Fatalf("build %s %s (%s)", b.GetId(), done.GetState(), done.GetReason())
		}
	}
	shared, onlyOld := blobstore.Digest([]byte("shared-content")), blobstore.Digest([]byte("only-old"))
	if arts := listArtifacts(old.GetId()); len(arts) != 2 {
		// The retention may already have ended on a slow machine; the
		// records are then gone, which the checks below accept.
		t.Logf("old build's artifacts when finished: %v", arts)
	}

	// The retention ends: the records go, then every node's blob.
	Eventually(t, 20*time.Second, func() bool { return len(listArtifacts(old.GetId())) == 0 }, "the old build's artifacts expire")
	for _, n := range c.Nodes {
		Eventually(t, 20*time.Second, func() bool {
			b, ok := n.C.Store().Build(old.GetId())
			return ok && b.GetArtifactsExpired() && !n.C.HasBlob(onlyOld)
		}, "node "+n.ID+" deletes the expired blob")
	}
	// The shared blob outlives several GC passes past its grace period.
	// The sleep is the observation window (five passes at the test
	// cluster's 200ms BlobGCInterval, over three grace periods): no GC pass
	// counter is exposed to wait on instead.
	time.Sleep(time.Second)
	for _, n := range c.Nodes {
		if !n.C.HasBlob(shared) {
			t.Fatalf("node %s deleted the blob the newer build references", n.ID)
		}
	}
	if arts := listArtifacts(newer.GetId()); len(arts) != 1 || arts[0].GetFile().GetSha256() != shared {
		t.Fatalf("newer build's artifacts %v", arts)
	}
}
