package blobrepl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// watchedPeer is a peer that stores what it is sent through its store's
// Put as it arrives (like the real service), reports its first data
// message and each stored blob, and may hold every stream until released.
type watchedPeer struct {
	kilnv1.UnimplementedBlobServiceServer
	store     *blobstore.Store
	firstData chan struct{}
	once      sync.Once
	gate      chan struct{} // nil: not held
	stored    chan string
}

func (p *watchedPeer) Replicate(stream kilnv1.BlobService_ReplicateServer) error {
	if p.gate != nil {
		select {
		case <-p.gate:
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	h := m.GetHeader()
	pr, pw := io.Pipe()
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				pw.CloseWithError(err)
				return
			}
			p.once.Do(func() { close(p.firstData) })
			if _, err := pw.Write(m.GetData()); err != nil {
				return
			}
		}
	}()
	_, err = p.store.Put(stream.Context(), pr, h.GetSize(), h.GetSha256())
	pr.CloseWithError(err)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	p.stored <- h.GetSha256()
	return stream.SendAndClose(&kilnv1.ReplicateResponse{Sha256: h.GetSha256()})
}

func (p *watchedPeer) Download(req *kilnv1.DownloadRequest, stream kilnv1.BlobService_DownloadServer) error {
	return status.Error(codes.NotFound, "not here")
}

func startWatchedPeer(t *testing.T, held bool) (*watchedPeer, string) {
	t.Helper()
	p := &watchedPeer{store: openStore(t), firstData: make(chan struct{}), stored: make(chan string, 4)}
	if held {
		p.gate = make(chan struct{})
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterBlobServiceServer(srv, p)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return p, lis.Addr().String()
}

// gatedReader yields first, then waits for wait (or fails after 10 s),
// then yields rest.
type gatedReader struct {
	first, rest io.Reader
	wait        <-chan struct{}
	waited      bool
}

func (g *gatedReader) Read(p []byte) (int, error) {
	n, err := g.first.Read(p)
	if err != io.EOF {
		return n, err
	}
	if !g.waited {
		select {
		case <-g.wait:
		case <-time.After(10 * time.Second):
			return 0, errors.New("no peer received data while the upload was being received")
		}
		g.waited = true
	}
	return g.rest.Read(p)
}

func blob(n int) ([]byte, *kilnv1.BlobHeader) {
	data := bytes.Repeat([]byte("kiln!"), n/5)
	return data, &kilnv1.BlobHeader{Sha256: blobstore.Digest(data), Size: int64(len(data)), Kind: "artifact"}
}

// TestReceiveStreamsWhileReceiving: the peers get the first bytes before
// the upload has sent the rest, and both hold the blob at the end.
func TestReceiveStreamsWhileReceiving(t *testing.T) {
	local := openStore(t)
	p2, a2 := startWatchedPeer(t, false)
	p3, a3 := startWatchedPeer(t, false)
	r := replicator(t, local, a2, a3)
	data, h := blob(3 << 20)
	half := len(data) / 2
	src := &gatedReader{first: bytes.NewReader(data[:half]), rest: bytes.NewReader(data[half:]), wait: p2.firstData}
	created, replicas, voters, err := r.Receive(context.Background(), h, src)
	if err != nil || !created || replicas < 2 || voters != 3 {
		t.Fatalf("Receive = created %v, %d of %d, %v", created, replicas, voters, err)
	}
	if !local.Has(h.GetSha256()) {
		t.Fatal("this node lacks the blob")
	}
	for _, p := range []*watchedPeer{p2, p3} {
		select {
		case sha := <-p.stored:
			if sha != h.GetSha256() {
				t.Fatalf("peer stored %s", sha)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a peer did not store the blob")
		}
	}
}

// TestReceiveBadDigestStoresNothing: an upload whose content does not
// match its digest is stored on no node.
func TestReceiveBadDigestStoresNothing(t *testing.T) {
	local := openStore(t)
	p2, a2 := startWatchedPeer(t, false)
	p3, a3 := startWatchedPeer(t, false)
	r := replicator(t, local, a2, a3)
	data, h := blob(2 << 20)
	data[len(data)-1] ^= 1
	_, _, _, err := r.Receive(context.Background(), h, bytes.NewReader(data))
	if !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("Receive = %v, want ErrDigestMismatch", err)
	}
	r.Close() // waits for the peers' streams to end
	for _, s := range []*blobstore.Store{local, p2.store, p3.store} {
		if s.Has(h.GetSha256()) {
			t.Fatal("a node stored a blob that failed verification")
		}
	}
}

// TestReceiveLeavesSlowPeerBehind: a peer that does not keep up is left
// behind while the other peer makes the quorum, and gets its copy from
// disk once it reads again.
func TestReceiveLeavesSlowPeerBehind(t *testing.T) {
	local := openStore(t)
	fast, a2 := startWatchedPeer(t, false)
	slow, a3 := startWatchedPeer(t, true)
	r := replicator(t, local, a2, a3)
	data, h := blob(8 << 20) // far more than the stream buffer
	_, replicas, _, err := r.Receive(context.Background(), h, bytes.NewReader(data))
	if err != nil || replicas != 2 {
		t.Fatalf("Receive = %d replicas, %v; want 2 without the held peer", replicas, err)
	}
	if !fast.store.Has(h.GetSha256()) {
		t.Fatal("the fast peer lacks the blob")
	}
	close(slow.gate)
	select {
	case sha := <-slow.stored:
		if sha != h.GetSha256() {
			t.Fatalf("slow peer stored %s", sha)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the peer left behind never got its copy")
	}
}

// TestReceiveHeldBlobTakesPlainPath: a blob this node holds is verified
// and replicated from disk.
func TestReceiveHeldBlobTakesPlainPath(t *testing.T) {
	local := openStore(t)
	p2, a2 := startWatchedPeer(t, false)
	r := replicator(t, local, a2, deadAddr(t))
	data, h := blob(1 << 20)
	put(t, local, data)
	created, replicas, _, err := r.Receive(context.Background(), h, bytes.NewReader(data))
	if err != nil || created || replicas != 2 {
		t.Fatalf("Receive = created %v, %d replicas, %v", created, replicas, err)
	}
	if !p2.store.Has(h.GetSha256()) {
		t.Fatal("peer lacks the blob")
	}
}
