package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// artifactServer serves ListArtifacts and Download from memory.
type artifactServer struct {
	kilnv1.UnimplementedControlServiceServer
	kilnv1.UnimplementedBlobServiceServer
	arts  []*kilnv1.Artifact
	blobs map[string][]byte
}

func (s *artifactServer) ListArtifacts(_ context.Context, req *kilnv1.ListArtifactsRequest) (*kilnv1.ListArtifactsResponse, error) {
	if req.GetBuildId() != "1" {
		return nil, status.Errorf(codes.NotFound, "build %q not found", req.GetBuildId())
	}
	return &kilnv1.ListArtifactsResponse{Artifacts: s.arts}, nil
}

func (s *artifactServer) Download(req *kilnv1.DownloadRequest, stream kilnv1.BlobService_DownloadServer) error {
	data, ok := s.blobs[req.GetSha256()]
	if !ok {
		return status.Error(codes.NotFound, "no blob")
	}
	if err := stream.Send(&kilnv1.DownloadResponse{Size: int64(len(data)), Data: data[:len(data)/2]}); err != nil {
		return err
	}
	return stream.Send(&kilnv1.DownloadResponse{Data: data[len(data)/2:]})
}

func sha(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func (s *artifactServer) add(step, path, content string, mode uint32) {
	s.arts = append(s.arts, &kilnv1.Artifact{BuildId: "1", JobId: "1." + step, Step: step, Attempt: 1,
		File: &kilnv1.ArtifactFile{Path: path, Size: int64(len(content)), Sha256: sha(content), Mode: mode}})
	s.blobs[sha(content)] = []byte(content)
}

func serveArtifacts(t *testing.T, s *artifactServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterControlServiceServer(srv, s)
	kilnv1.RegisterBlobServiceServer(srv, s)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func newArtifactServer() *artifactServer {
	s := &artifactServer{blobs: map[string][]byte{}}
	s.add("build", "bin/app", "binary!", 0o4755)
	s.add("build", "bin/lib.so", "library", 0o644)
	s.add("test", "report.xml", "<xml/>", 0o600)
	s.add("lint", "report.xml", "<lint/>", 0o644)
	return s
}

func TestArtifactsList(t *testing.T) {
	addr := serveArtifacts(t, newArtifactServer())
	out, errOut, code := runCLI(t, "--coordinators", addr, "artifacts", "1")
	must(t, code, 0, errOut)
	if !strings.Contains(out, "STEP") || !strings.Contains(out, "bin/app") || !strings.Contains(out, sha("binary!")) {
		t.Fatalf("table:\n%s", out)
	}
	out, errOut, code = runCLI(t, "--coordinators", addr, "artifacts", "1", "-o", "json")
	must(t, code, 0, errOut)
	var got []ArtifactJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 4 || got[0].Path != "bin/app" || got[0].Size != 7 {
		t.Fatalf("json %v %v", err, got)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "artifacts", "404")
	if code != ExitFailed || !strings.Contains(errOut, "not found") {
		t.Fatalf("unknown build: %d %s", code, errOut)
	}
}

func TestArtifactsGetGlob(t *testing.T) {
	addr := serveArtifacts(t, newArtifactServer())
	dir := filepath.Join(t.TempDir(), "out")
	out, errOut, code := runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "bin/*", "-d", dir)
	must(t, code, 0, errOut)
	if strings.Count(out, "\n") != 2 || strings.Contains(errOut, "\r") {
		t.Fatalf("stdout %q stderr %q (no progress line without a terminal)", out, errOut)
	}
	data, err := os.ReadFile(filepath.Join(dir, "bin", "app"))
	if err != nil || string(data) != "binary!" {
		t.Fatalf("bin/app: %q %v", data, err)
	}
	st, _ := os.Stat(filepath.Join(dir, "bin", "app"))
	if st.Mode().Perm() != 0o755 || st.Mode()&os.ModeSetuid != 0 {
		t.Fatalf("mode %v", st.Mode())
	}
	if _, err := os.Stat(filepath.Join(dir, "report.xml")); err == nil {
		t.Fatal("report.xml does not match bin/*")
	}
	// Two steps have report.xml: ambiguous without --step.
	_, errOut, code = runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "report.xml", "-d", dir)
	if code != ExitUsage || !strings.Contains(errOut, "--step") {
		t.Fatalf("ambiguous: %d %s", code, errOut)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "report.xml", "-d", dir, "--step", "lint")
	must(t, code, 0, errOut)
	if data, _ := os.ReadFile(filepath.Join(dir, "report.xml")); string(data) != "<lint/>" {
		t.Fatalf("report.xml %q", data)
	}
	_, _, code = runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "nothing*", "-d", dir)
	if code != ExitFailed {
		t.Fatalf("no match: exit %d", code)
	}
	_, _, code = runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "[", "-d", dir)
	if code != ExitUsage {
		t.Fatalf("bad pattern: exit %d", code)
	}
}

func TestArtifactsGetDigestMismatchDeletesFile(t *testing.T) {
	s := newArtifactServer()
	s.add("build", "bad.bin", "original", 0o644)
	s.blobs[sha("original")] = []byte("tampered") // same size, other content
	addr := serveArtifacts(t, s)
	dir := t.TempDir()
	_, errOut, code := runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "bad.bin", "-d", dir)
	if code != ExitFailed || !strings.Contains(errOut, "SHA-256") || !strings.Contains(errOut, "deleted") {
		t.Fatalf("mismatch: %d %s", code, errOut)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Fatalf("files left behind: %v", entries)
	}
	// A size mismatch too.
	s.blobs[sha("original")] = []byte("short")
	_, errOut, code = runCLI(t, "--coordinators", addr, "artifacts", "get", "1", "bad.bin", "-d", dir)
	if code != ExitFailed || !strings.Contains(errOut, "bytes") {
		t.Fatalf("size mismatch: %d %s", code, errOut)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("files left behind: %v", entries)
	}
}

func TestArtifactsGetRejectsEscapingPaths(t *testing.T) {
	for _, p := range []string{"../evil", "/etc/evil", "a/../../evil", "link/evil"} {
		t.Run(p, func(t *testing.T) {
			s := newArtifactServer()
			s.add("build", p, "evil", 0o644)
			addr := serveArtifacts(t, s)
			parent := t.TempDir()
			dir := filepath.Join(parent, "out")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			// A symlink inside DIR pointing outside it must not be followed.
			if err := os.Symlink(parent, filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runCLI(t, "--coordinators", addr, "artifacts", "get", "1", p, "-d", dir)
			if code == 0 {
				t.Fatalf("%s was written: %s", p, errOut)
			}
			if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
				t.Fatal("a file was written outside DIR")
			}
		})
	}
}

func TestSafeRelPath(t *testing.T) {
	for _, p := range []string{"a", "a/b", "..a", "a..b/c"} {
		if err := safeRelPath(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	for _, p := range []string{"", ".", "..", "../a", "a/../../b", "/a", "a//b", `a\b`} {
		if safeRelPath(p) == nil {
			t.Errorf("%q accepted", p)
		}
	}
}
