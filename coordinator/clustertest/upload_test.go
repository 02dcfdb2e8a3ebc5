package clustertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/archive"
	"github.com/kiln-ci/kiln/internal/blobio"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// uploadBlob uploads data as a source archive through the leader-following
// client and returns the answer.
func uploadBlob(ctx context.Context, c *Cluster, data []byte, sha string) (*kilnv1.UploadResponse, error) {
	var resp *kilnv1.UploadResponse
	err := c.Client().Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		stream, err := kilnv1.NewBlobServiceClient(conn).Upload(ctx)
		if err != nil {
			return err
		}
		err = stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Header{Header: &kilnv1.BlobHeader{
			Size: int64(len(data)), Sha256: sha, Kind: "source"}}})
		if err == nil {
			_, err = blobio.SendChunks(ctx, bytes.NewReader(data), blobio.ChunkSize, func(chunk []byte) error {
				return stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Data{Data: chunk}})
			})
		}
		if err != nil && err != io.EOF {
			return err
		}
		resp, err = stream.CloseAndRecv()
		return err
	})
	return resp, err
}

func TestUploadedSourceIsReplicatedAndUnpacked(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"hello.txt":      "hello from the upload",
		"ignored.txt":    "must not be uploaded",
		".kilnignore":    "ignored.txt\n",
		"scripts/run.sh": "#!/bin/sh\necho script-ran\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(dir, "scripts/run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := archive.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])

	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Submitting before the upload is refused.
	_, err := trySubmit(c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "true",
		Source: &kilnv1.Source{ArchiveSha256: sha}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "upload the archive first") {
		t.Fatalf("submit before upload: %v", err)
	}

	// A wrong digest is rejected and nothing is stored.
	bad := strings.Repeat("0", 64)
	if _, err := uploadBlob(ctx, c, data, bad); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("upload with a wrong digest: %v", err)
	}

	resp, err := uploadBlob(ctx, c, data, sha)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if resp.GetSha256() != sha || resp.GetSize() != int64(len(data)) || resp.GetReplicas() < 2 {
		t.Fatalf("upload answer %v", resp)
	}
	holders := 0
	for _, n := range c.Nodes {
		if n.C.HasBlob(sha) {
			holders++
		}
		if n.C.HasBlob(bad) {
			t.Errorf("%s stored the blob under the wrong digest", n.ID)
		}
	}
	if holders < 2 {
		t.Fatalf("right after the ack %d of 3 nodes hold the blob, want a quorum", holders)
	}
	Eventually(t, 10*time.Second, func() bool {
		for _, n := range c.Nodes {
			if !n.C.HasBlob(sha) {
				return false
			}
		}
		return true
	}, "every node holds the blob")
	// Uploading again is idempotent.
	if _, err := uploadBlob(ctx, c, data, sha); err != nil {
		t.Fatalf("second upload: %v", err)
	}

	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1),
		Command: `cat hello.txt; echo; ./scripts/run.sh; ls -a; test ! -e ignored.txt && echo ignored-absent`,
		Source:  &kilnv1.Source{ArchiveSha256: sha, ArchiveSize: int64(len(data))}})
	if b.GetSource().GetArchiveSha256() != sha || b.GetSource().GetArchiveSize() != int64(len(data)) {
		t.Fatalf("build source %v", b.GetSource())
	}
	b = waitBuild(t, c, b.GetId(), 30*time.Second)
	log := jobLog(c.Leader(), b.GetJobs()[0])
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %v: %s\n%s", b.GetState(), b.GetJobs()[0].GetReason(), log)
	}
	for _, want := range []string{"hello from the upload", "script-ran", "ignored-absent", "kiln: unpacked 3 files"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "must not be uploaded") {
		t.Errorf("the ignored file was uploaded:\n%s", log)
	}
}

func TestDownloadFromAFollowerFetchesFromPeer(t *testing.T) {
	c := Start(t, 3, Options{})
	data := bytes.Repeat([]byte("kiln blob "), 300_000) // 3 MB: several chunks
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := uploadBlob(ctx, c, data, sha); err != nil {
		t.Fatalf("upload: %v", err)
	}
	Eventually(t, 10*time.Second, func() bool {
		for _, n := range c.Nodes {
			if !n.C.HasBlob(sha) {
				return false
			}
		}
		return true
	}, "every node holds the blob")
	// Remove the blob from one follower: a download there fetches it back.
	f := c.Followers()[0]
	if err := os.Remove(filepath.Join(f.DataDir, "blobs", "sha256", sha[:2], sha)); err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(f.GRPCAddr, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := kilnv1.NewBlobServiceClient(conn).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("download: %v", err)
		}
		got.Write(m.GetData())
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("downloaded %d bytes, want %d", got.Len(), len(data))
	}
	if !f.C.HasBlob(sha) {
		t.Error("the follower did not keep the fetched blob")
	}
	// An unknown blob is NotFound.
	missing := strings.Repeat("ab", 32)
	stream, err = kilnv1.NewBlobServiceClient(conn).Download(ctx, &kilnv1.DownloadRequest{Sha256: missing})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("download of a missing blob: %v", err)
	}
}

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
