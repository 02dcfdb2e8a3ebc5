package clustertest

import (
	"context"
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
