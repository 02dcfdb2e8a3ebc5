package clustertest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestArtifactsPassAlongNeedsAndReachEveryCoordinator runs a producer step
// whose artifact a dependent step reads, lists the artifact through the API,
// and checks that a coordinator that was down during the upload catches up.
func TestArtifactsPassAlongNeedsAndReachEveryCoordinator(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 2)
	down := c.Followers()[0]
	c.Stop(down)

	spec := `stages:
  - steps:
      - key: produce
        commands: ["mkdir -p out/deep", "printf 'binary v1' > out/deep/app.bin", "chmod 755 out/deep/app.bin", "echo unrelated > skip.txt"]
        artifacts: ["out/**"]
  - steps:
      - key: consume
        commands: ["cat out/deep/app.bin", "test -x out/deep/app.bin", "test ! -e skip.txt"]
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "art.yaml"})
	done := waitBuild(t, c, b.GetId(), 60*time.Second)
	jobs := jobsByKey(done)
	l := c.Leader()
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s (%s); produce log:\n%s\nconsume log:\n%s", done.GetState(), done.GetReason(),
			jobLog(l, jobs["produce"]), jobLog(l, jobs["consume"]))
	}
	// The agent notes the download in the log ("kiln: ..." lines) before
	// the commands' own output.
	if got := jobLog(l, jobs["consume"]); !strings.HasSuffix(got, "\nbinary v1") || !strings.Contains(got, "kiln: downloading artifact out/deep/app.bin from produce") {
		t.Fatalf("consume log %q, want the download noted and the producer's artifact printed", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var arts []*kilnv1.Artifact
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: b.GetId()})
		arts = resp.GetArtifacts()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(arts) != 1 || arts[0].GetFile().GetPath() != "out/deep/app.bin" || arts[0].GetStep() != "produce" ||
		arts[0].GetFile().GetSize() != int64(len("binary v1")) || arts[0].GetFile().GetMode()&0o100 == 0 {
		t.Fatalf("artifacts %v", arts)
	}
	sha := arts[0].GetFile().GetSha256()
	if !strings.Contains(jobLog(l, jobs["produce"]), "artifact out/deep/app.bin") {
		t.Fatalf("produce log does not report the upload:\n%s", jobLog(l, jobs["produce"]))
	}

	// The coordinator that missed the upload fetches the blob once it is back.
	back := c.Restart(down)
	Eventually(t, 20*time.Second, func() bool { return back.C.HasBlob(sha) }, "the returning coordinator catches up the artifact blob")
}

// TestArtifactsFromSelectsFiles takes only the selected files of one need.
func TestArtifactsFromSelectsFiles(t *testing.T) {
	c := Start(t, 1, Options{})
	c.StartAgent("a1", nil, 2)
	spec := `steps:
  - key: produce
    commands: ["echo a > a.txt", "echo b > b.log"]
    artifacts: ["*"]
  - key: other
    commands: ["echo o > o.txt"]
    artifacts: ["o.txt"]
  - key: consume
    needs: [produce, other]
    commands: ["ls *.txt *.log 2>/dev/null | sort | tr '\n' ' '"]
    artifacts: {from: produce, paths: ["*.txt"]}
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "from.yaml"})
	done := waitBuild(t, c, b.GetId(), 60*time.Second)
	jobs := jobsByKey(done)
	log := jobLog(c.Nodes[0], jobs["consume"])
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || !strings.HasSuffix(log, "\na.txt ") {
		t.Fatalf("build %s; consume log %q: want only a.txt from produce", done.GetState(), log)
	}
}

// TestLeaderKillDuringArtifactUploadStoresItOnce crashes the leader while
// an agent streams an artifact to it: the agent uploads again to the new
// leader, the build passes, and the artifact is registered once.
func TestLeaderKillDuringArtifactUploadStoresItOnce(t *testing.T) {
	c := Start(t, 3, Options{LeaseTTL: 3 * time.Second})
	c.StartAgent("a1", nil, 1)
	l := c.Leader()
	spec := `steps:
  - key: big
    commands: ["head -c 100663296 /dev/urandom > big.bin"]
    artifacts: [big.bin]
`
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), SpecYaml: spec, SpecFilename: "big.yaml"})
	// Wait until the leader is receiving the upload (a partial temp file).
	tmp := filepath.Join(l.DataDir, "blobs", "tmp")
	Eventually(t, 60*time.Second, func() bool {
		ents, _ := os.ReadDir(tmp)
		for _, e := range ents {
			if info, err := e.Info(); err == nil && info.Size() > 0 {
				return true
			}
		}
		return false
	}, "the leader receives the artifact upload")
	c.Kill(l)
	done := waitBuild(t, c, b.GetId(), 120*time.Second)
	nl := c.Leader()
	j := done.GetJobs()[0]
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || j.GetAttempt() != 1 {
		t.Fatalf("build %s, attempt %d; log:\n%s", done.GetState(), j.GetAttempt(), jobLog(nl, j))
	}
	arts := nl.C.Store().Artifacts(b.GetId())
	if len(arts) != 1 || arts[0].GetFile().GetSize() != 96<<20 {
		t.Fatalf("artifacts %v, want big.bin once", arts)
	}
	for _, n := range c.Nodes {
		if n.Running() && !n.C.HasBlob(arts[0].GetFile().GetSha256()) {
			Eventually(t, 30*time.Second, func() bool { return n.C.HasBlob(arts[0].GetFile().GetSha256()) }, n.ID+" holds the artifact")
		}
	}
}
