package cli

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/archive"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fakeBlobs records uploads.
type fakeBlobs struct {
	kilnv1.UnimplementedBlobServiceServer
	mu      sync.Mutex
	headers []*kilnv1.BlobHeader
	data    []byte
}

func (b *fakeBlobs) Upload(s kilnv1.BlobService_UploadServer) error {
	var h *kilnv1.BlobHeader
	var data bytes.Buffer
	for {
		m, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if m.GetHeader() != nil {
			h = m.GetHeader()
		}
		data.Write(m.GetData())
	}
	b.mu.Lock()
	b.headers = append(b.headers, h)
	b.data = data.Bytes()
	b.mu.Unlock()
	return s.SendAndClose(&kilnv1.UploadResponse{Sha256: h.GetSha256(), Size: h.GetSize(), Replicas: 1})
}

func TestRunUploadsDirectory(t *testing.T) {
	f := newFake()
	blobs := &fakeBlobs{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, f)
	kilnv1.RegisterBlobServiceServer(srv, blobs)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dir := t.TempDir()
	for name, body := range map[string]string{"a.txt": "A", "skip.log": "L", ".kilnignore": "*.log\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, code := runCLI(t, "--coordinators", lis.Addr().String(), "run", "--upload", dir, "--", "cat a.txt")
	must(t, code, 0, errOut)
	if !strings.Contains(errOut, "uploaded "+dir+" (2 files, 7 bytes)") {
		t.Errorf("stderr %q", errOut)
	}
	if len(blobs.headers) != 1 || blobs.headers[0].GetKind() != "source" {
		t.Fatalf("uploads %v", blobs.headers)
	}
	sum := sha256.Sum256(blobs.data)
	sha := hex.EncodeToString(sum[:])
	src := f.submits[0].GetSource()
	if src.GetArchiveSha256() != sha || src.GetArchiveSize() != int64(len(blobs.data)) || blobs.headers[0].GetSha256() != sha {
		t.Fatalf("source %v, uploaded sha %s", src, sha)
	}
	out := t.TempDir()
	if _, err := archive.Unpack(bytes.NewReader(blobs.data), out, archive.Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "skip.log")); err == nil {
		t.Error("skip.log was uploaded")
	}

	_, _, code = runCLI(t, "--coordinators", lis.Addr().String(), "run", "--upload", dir, "--git", "file:///x", "--", "true")
	if code != ExitUsage {
		t.Errorf("--upload with --git: exit %d", code)
	}
}

// The progress line redraws in place and ends with a newline; without a
// terminal nothing is drawn.
func TestProgressLine(t *testing.T) {
	var buf bytes.Buffer
	p := progressLine(&buf, "upload src", 2<<20)
	p(1 << 20)
	p(2 << 20)
	p(-1)
	got := buf.String()
	if !strings.HasPrefix(got, "\rupload src  1.0/2.0 MiB   50%") || !strings.HasSuffix(got, "\rupload src  2.0/2.0 MiB  100%\n") {
		t.Errorf("progress = %q", got)
	}
	a := &app{stderr: &buf}
	buf.Reset()
	q := a.progress("x", 10)
	q(5)
	q(-1)
	if buf.Len() != 0 {
		t.Errorf("drawn without a terminal: %q", buf.String())
	}
}
