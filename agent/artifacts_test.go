package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fakeBlobs is a minimal BlobService keeping blobs in memory.
type fakeBlobs struct {
	kilnv1.UnimplementedBlobServiceServer
	mu    sync.Mutex
	blobs map[string][]byte
	kinds map[string]string
	// refuse, when set, answers an upload with its error right after the
	// header.
	refuse func(hdr *kilnv1.BlobHeader) error
	// stored, when set, is called after a blob was stored, before the answer.
	stored func(hdr *kilnv1.BlobHeader)
	// serve, when set, replaces the bytes a download returns.
	serve map[string][]byte
}

func newFakeBlobs() *fakeBlobs {
	return &fakeBlobs{blobs: map[string][]byte{}, kinds: map[string]string{}}
}

func (b *fakeBlobs) Upload(stream grpc.ClientStreamingServer[kilnv1.UploadRequest, kilnv1.UploadResponse]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return status.Error(codes.InvalidArgument, "header first")
	}
	if b.refuse != nil {
		if err := b.refuse(hdr); err != nil {
			return err
		}
	}
	var data []byte
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if len(m.GetData()) > 1<<20 {
			return status.Error(codes.InvalidArgument, "chunk above 1 MiB")
		}
		data = append(data, m.GetData()...)
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != hdr.GetSize() || hex.EncodeToString(sum[:]) != hdr.GetSha256() {
		return status.Error(codes.InvalidArgument, "size or digest mismatch")
	}
	b.mu.Lock()
	b.blobs[hdr.GetSha256()] = data
	b.kinds[hdr.GetSha256()] = hdr.GetKind()
	b.mu.Unlock()
	if b.stored != nil {
		b.stored(hdr)
	}
	return stream.SendAndClose(&kilnv1.UploadResponse{Sha256: hdr.GetSha256(), Size: hdr.GetSize(), Replicas: 2})
}

func (b *fakeBlobs) Download(req *kilnv1.DownloadRequest, stream grpc.ServerStreamingServer[kilnv1.DownloadResponse]) error {
	b.mu.Lock()
	data, ok := b.serve[req.GetSha256()]
	if !ok {
		data, ok = b.blobs[req.GetSha256()]
	}
	b.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "no such blob")
	}
	return stream.Send(&kilnv1.DownloadResponse{Data: data, Size: int64(len(data))})
}

func (b *fakeBlobs) get(sha string) ([]byte, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.blobs[sha], b.kinds[sha]
}

// startBlobServer serves only b on 127.0.0.1:0.
func startBlobServer(t *testing.T, b *fakeBlobs) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	kilnv1.RegisterBlobServiceServer(gs, b)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
	t.Cleanup(func() {
		gs.Stop()
		<-done
	})
	return lis.Addr().String()
}

func sha(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// kinds reads the session until JobFinished for job and returns the
// message kinds in order; log chunks are added to l and, with ackChunks,
// acknowledged.
func readKinds(t *testing.T, s *srvSession, job string, l *jobLog, ackChunks bool) ([]string, *kilnv1.ArtifactsUploaded, *kilnv1.JobFinished) {
	t.Helper()
	var kinds []string
	var arts *kilnv1.ArtifactsUploaded
	for {
		m := s.recv(t)
		switch {
		case m.GetStarted().GetJobId() == job:
			kinds = append(kinds, "started")
		case m.GetLog().GetJobId() == job:
			if len(kinds) == 0 || kinds[len(kinds)-1] != "log" {
				kinds = append(kinds, "log")
			}
			l.add(t, m.GetLog())
			if ackChunks {
				s.send(t, ack(job, m.GetLog().GetAttempt(), m.GetLog().GetSeq(), false, false))
			}
		case m.GetArtifacts().GetJobId() == job:
			kinds = append(kinds, "artifacts")
			arts = m.GetArtifacts()
		case m.GetFinished().GetJobId() == job:
			return append(kinds, "finished"), arts, m.GetFinished()
		}
	}
}

func withArtifacts(m *kilnv1.ConnectResponse, globs ...string) *kilnv1.ConnectResponse {
	m.GetAssignment().Artifacts = globs
	return m
}

func TestArtifactsUploadedFollowingTheLeader(t *testing.T) {
	leaderBlobs := newFakeBlobs()
	leaderAddr := startBlobServer(t, leaderBlobs)
	follower := newFakeBlobs()
	var mu sync.Mutex
	calls := 0
	follower.refuse = func(*kilnv1.BlobHeader) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return status.Error(codes.Unavailable, "no quorum") // retried after a backoff
		}
		return leader.NotLeaderError("n2", leaderAddr) // followed at once
	}
	srv := startServerWith(t, nil, func(gs *grpc.Server) { kilnv1.RegisterBlobServiceServer(gs, follower) })
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	s.send(t, withArtifacts(assign("1.art", 1, nil,
		"mkdir -p out/sub", "printf small > out/a.txt", "head -c 2500000 /dev/zero | tr '\\0' z > out/sub/big.txt",
		"ln -s /etc/passwd out/pw.txt", "echo done"), "out/**/*.txt", "nothing/*"))
	var l jobLog
	kinds, arts, fin := readKinds(t, s, "1.art", &l, true)
	if strings.Join(kinds, ",") != "started,log,artifacts,finished" {
		t.Fatalf("order %v", kinds)
	}
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED {
		t.Fatalf("finished %v", fin)
	}
	big := []byte(strings.Repeat("z", 2500000))
	files := arts.GetFiles()
	if arts.GetAttempt() != 1 || len(files) != 2 || files[0].GetPath() != "out/a.txt" || files[1].GetPath() != "out/sub/big.txt" ||
		files[0].GetSha256() != sha([]byte("small")) || files[1].GetSha256() != sha(big) || files[1].GetSize() != int64(len(big)) {
		t.Fatalf("artifacts %v", arts)
	}
	for _, f := range files {
		data, kind := leaderBlobs.get(f.GetSha256())
		if kind != "artifact" || sha(data) != f.GetSha256() {
			t.Fatalf("leader holds %d bytes of kind %q for %s", len(data), kind, f.GetPath())
		}
	}
	text := l.text(t, fin.GetLastSeq())
	for _, want := range []string{
		"artifact out/a.txt (5 bytes, sha256 " + sha([]byte("small"))[:12] + ")",
		"artifact out/sub/big.txt (2500000 bytes, sha256 " + sha(big)[:12] + ")",
		"out/pw.txt is a symbolic link; skipped",
		`artifact pattern "nothing/*" matched no files`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("log lacks %q:\n%s", want, text)
		}
	}
	s.send(t, ack("1.art", 1, fin.GetLastSeq(), true, false))
}

func TestArtifactsResentAfterStreamBreak(t *testing.T) {
	blobs := newFakeBlobs()
	uploaded := make(chan struct{}, 1)
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // runs before the servers stop
	blobs.stored = func(*kilnv1.BlobHeader) {
		uploaded <- struct{}{}
		<-release
	}
	srv := startServerWith(t, nil, func(gs *grpc.Server) { kilnv1.RegisterBlobServiceServer(gs, blobs) })
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)
	s.send(t, withArtifacts(assign("1.art", 1, nil, "echo building", "printf bin > app"), "app"))
	if s.recv(t).GetStarted() == nil {
		t.Fatal("want JobStarted first")
	}
	// The upload is stored; the session breaks before the agent hears back.
	select {
	case <-uploaded:
	case <-time.After(waitLimit):
		t.Fatal("no upload")
	}
	s.end <- status.Error(codes.Unavailable, "leader lost")
	s2 := srv.nextSession(t)
	if r := s2.reg.GetRunning(); len(r) != 1 || r[0].GetJobId() != "1.art" {
		t.Fatalf("register lists %v", r)
	}
	unblock()
	var l jobLog
	kinds, arts, fin := readKinds(t, s2, "1.art", &l, false)
	if kinds[0] != "started" || kinds[len(kinds)-2] != "artifacts" || kinds[len(kinds)-1] != "finished" {
		t.Fatalf("order after reconnect %v", kinds)
	}
	if len(arts.GetFiles()) != 1 || arts.GetFiles()[0].GetSha256() != sha([]byte("bin")) {
		t.Fatalf("artifacts %v", arts)
	}
	// The stream breaks again after the finish was sent but not
	// acknowledged: everything is resent in order.
	s2.end <- status.Error(codes.Unavailable, "leader lost")
	s3 := srv.nextSession(t)
	kinds, arts2, fin2 := readKinds(t, s3, "1.art", &l, false)
	if strings.Join(kinds, ",") != "started,log,artifacts,finished" {
		t.Fatalf("resend order %v", kinds)
	}
	if arts2.GetFiles()[0].GetSha256() != arts.GetFiles()[0].GetSha256() || fin2.GetLastSeq() != fin.GetLastSeq() {
		t.Fatalf("resent %v %v", arts2, fin2)
	}
	if text := l.text(t, fin.GetLastSeq()); !strings.Contains(text, "building\nartifact app (3 bytes") {
		t.Fatalf("log %q", text)
	}
	s3.send(t, ack("1.art", 1, fin.GetLastSeq(), true, false))
}

func TestInputsDownloadedAndVerified(t *testing.T) {
	blobs := newFakeBlobs()
	good, evil := []byte("payload"), []byte("expected")
	blobs.blobs[sha(good)] = good
	blobs.serve = map[string][]byte{sha(evil): []byte("tampered")}
	srv := startServerWith(t, nil, func(gs *grpc.Server) { kilnv1.RegisterBlobServiceServer(gs, blobs) })
	startAgent(t, testConfig(t, srv.addr), nil)
	s := srv.nextSession(t)

	input := func(path string, data []byte) *kilnv1.Artifact {
		return &kilnv1.Artifact{Step: "build", Attempt: 1, File: &kilnv1.ArtifactFile{Path: path, Size: int64(len(data)), Sha256: sha(data), Mode: 0o755}}
	}
	m := assign("1.use", 1, nil, "./bin/tool.sh")
	m.GetAssignment().Inputs = []*kilnv1.Artifact{input("bin/tool.sh", good)}
	m.GetAssignment().Commands = []string{"cat bin/tool.sh; echo", "test -x bin/tool.sh"}
	s.send(t, m)
	var l jobLog
	fin := runToFinish(t, s, "1.use", &l, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_PASSED || !strings.Contains(l.text(t, fin.GetLastSeq()), "payload\n") {
		t.Fatalf("finished %v, log %q", fin, l.text(t, fin.GetLastSeq()))
	}
	s.send(t, ack("1.use", 1, fin.GetLastSeq(), true, false))

	m = assign("1.use", 2, nil, "echo SHOULD-NOT-RUN")
	m.GetAssignment().Inputs = []*kilnv1.Artifact{input("data.bin", evil)}
	s.send(t, m)
	l = jobLog{}
	fin = runToFinish(t, s, "1.use", &l, true)
	if fin.GetResult() != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(fin.GetReason(), "artifact download failed: data.bin: sha256 mismatch") {
		t.Fatalf("finished %v", fin)
	}
	if strings.Contains(l.text(t, fin.GetLastSeq()), "SHOULD-NOT-RUN\n") {
		t.Fatal("commands ran after a failed download")
	}
	s.send(t, ack("1.use", 2, fin.GetLastSeq(), true, false))
}
