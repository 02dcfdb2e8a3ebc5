package clustertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/internal/archive"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// TestBuildRetentionDeletesBuildLogAndBlobs: a finished build older than
// --build-retention disappears from every coordinator with its jobs, its
// log and its test reports, and every coordinator deletes its artifact
// and uploaded-source blobs; the API then answers NotFound and keeps
// listing the other builds.
func TestBuildRetentionDeletesBuildLogAndBlobs(t *testing.T) {
	c := Start(t, 3, Options{BuildRetention: 3 * time.Second, BlobGCGrace: 200 * time.Millisecond})
	c.StartAgent("a1", nil, 1)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "in.txt"), []byte("uploaded source of the expiring build"), 0o644); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := archive.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	src := hex.EncodeToString(sum[:])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := uploadBlob(ctx, c, buf.Bytes(), src); err != nil {
		t.Fatalf("upload: %v", err)
	}
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Source: &kilnv1.Source{ArchiveSha256: src},
		SpecYaml: `steps:
  - key: make
    commands: ["cat in.txt", "printf expiring-artifact > out.txt", "echo '<testsuite name=\"s\"><testcase name=\"c\"/></testsuite>' > r.xml"]
    artifacts: [out.txt]
    junit: [r.xml]
`})
	done := waitBuild(t, c, b.GetId(), 30*time.Second)
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s (%s)", done.GetState(), done.GetReason())
	}
	art := blobstore.Digest([]byte("expiring-artifact"))
	job := done.GetJobs()[0]
	l := c.Leader()
	// Seen while kept (the retention runs from the finish, 3 s).
	if log := jobLog(l, job); !strings.Contains(log, "uploaded source of the expiring build") {
		t.Fatalf("log before expiry: %q", log)
	}
	for _, n := range c.Nodes {
		Eventually(t, 10*time.Second, func() bool {
			ids, err := n.C.Logs().Store().Jobs()
			return err == nil && slices.Contains(ids, job.GetId())
		}, "node "+n.ID+" holds the job's log before expiry")
	}
	if !l.C.HasBlob(art) || !l.C.HasBlob(src) || len(l.C.Store().TestReports(b.GetId(), false)) != 1 {
		t.Fatal("the leader lacks the build's blobs or test report before expiry")
	}

	for _, n := range c.Nodes {
		Eventually(t, 30*time.Second, func() bool {
			_, ok := n.C.Store().Build(b.GetId())
			return !ok
		}, "node "+n.ID+" deletes the build")
		if _, ok := n.C.Store().Job(job.GetId()); ok {
			t.Fatalf("node %s kept the job", n.ID)
		}
		if logs := n.C.Store().Logs(job.GetId(), job.GetAttempt(), 0, 0); len(logs) != 0 {
			t.Fatalf("node %s kept %d log chunks in the state", n.ID, len(logs))
		}
		Eventually(t, 10*time.Second, func() bool {
			ids, err := n.C.Logs().Store().Jobs()
			return err == nil && !slices.Contains(ids, job.GetId())
		}, "node "+n.ID+" deletes the job's log from its log store")
		if len(n.C.Store().TestReports(b.GetId(), false)) != 0 || len(n.C.Store().Artifacts(b.GetId())) != 0 {
			t.Fatalf("node %s kept test reports or artifact records", n.ID)
		}
		Eventually(t, 10*time.Second, func() bool { return !n.C.HasBlob(art) && !n.C.HasBlob(src) },
			"node "+n.ID+" deletes the artifact and source blobs")
	}
	// The API: NotFound for the build, the rest keeps working.
	err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		_, err := cc.GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: b.GetId()})
		return err
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("GetBuild of the deleted build: %v", err)
	}
	other := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), Command: "true"})
	if err := Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
		if err == nil && (len(resp.GetBuilds()) == 0 || resp.GetBuilds()[0].GetId() != other.GetId()) {
			t.Errorf("list after expiry: %v", resp.GetBuilds())
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
