package clustertest

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/kiln-ci/kiln/coordinator/blobstore/s3store"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestS3BlobStoreSharedByEveryCoordinator runs three coordinators on one
// S3 bucket (gofakes3 on loopback, started here): a producer step's
// artifact reaches the dependent step, is listed, lives in the bucket, and
// no coordinator keeps a copy on its disk.
func TestS3BlobStoreSharedByEveryCoordinator(t *testing.T) {
	backend := s3mem.New()
	srv := httptest.NewServer(gofakes3.New(backend).Server())
	t.Cleanup(srv.Close)
	const bucket = "kiln-shared"
	c := Start(t, 3, Options{S3: &s3store.Config{
		Endpoint: strings.TrimPrefix(srv.URL, "http://"), Bucket: bucket, Region: "us-east-1",
		AccessKey: "test-access", SecretKey: "test-secret", Insecure: true,
	}})
	c.StartAgent("a1", nil, 2)

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
	if got := jobLog(l, jobs["consume"]); !strings.HasSuffix(got, "\nbinary v1") {
		t.Fatalf("consume log %q, want the producer's artifact printed", got)
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
		arts[0].GetFile().GetSize() != int64(len("binary v1")) {
		t.Fatalf("artifacts %v", arts)
	}
	sha := arts[0].GetFile().GetSha256()

	obj, err := backend.HeadObject(bucket, s3store.Key(sha))
	if err != nil {
		t.Fatalf("the artifact is not in the bucket at %s: %v", s3store.Key(sha), err)
	}
	if obj.Size != int64(len("binary v1")) {
		t.Fatalf("object size %d", obj.Size)
	}
	for _, n := range c.Nodes {
		if !n.C.HasBlob(sha) {
			t.Errorf("%s does not see the blob in the shared store", n.ID)
		}
		for _, p := range []string{
			filepath.Join(n.DataDir, "blobs", "sha256", sha[:2], sha),
			filepath.Join(n.DataDir, "blobs"),
		} {
			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s: %s exists (err %v); the blob must live in the bucket only", n.ID, p, err)
			}
		}
		// The upload's temporary file is gone.
		if ents, _ := os.ReadDir(filepath.Join(n.DataDir, "s3-tmp")); len(ents) != 0 {
			t.Errorf("%s: %d temporary files left", n.ID, len(ents))
		}
	}
}
