package blobrepl

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// peerServer is a minimal BlobService over a local store: Replicate stores,
// Download serves (local only).
type peerServer struct {
	kilnv1.UnimplementedBlobServiceServer
	store *blobstore.Store
}

func (p *peerServer) Replicate(stream kilnv1.BlobService_ReplicateServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	h := m.GetHeader()
	var buf bytes.Buffer
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		buf.Write(m.GetData())
	}
	if _, err := p.store.Put(stream.Context(), &buf, h.GetSize(), h.GetSha256()); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return stream.SendAndClose(&kilnv1.ReplicateResponse{Sha256: h.GetSha256()})
}

func (p *peerServer) Download(req *kilnv1.DownloadRequest, stream kilnv1.BlobService_DownloadServer) error {
	f, size, err := p.store.Open(req.GetSha256())
	if err != nil {
		return status.Error(codes.NotFound, "not here")
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	return stream.Send(&kilnv1.DownloadResponse{Size: size, Data: data})
}

func openStore(t *testing.T) *blobstore.Store {
	t.Helper()
	s, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startPeer serves a peer and returns its store and address.
func startPeer(t *testing.T) (*blobstore.Store, string) {
	t.Helper()
	store := openStore(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterBlobServiceServer(srv, &peerServer{store: store})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return store, lis.Addr().String()
}

// deadAddr is an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// replicator is n1 (this node, over local) with the peers at addrs as n2, n3, …
func replicator(t *testing.T, local blobstore.Backend, addrs ...string) *Replicator {
	t.Helper()
	members := []raft.Server{{ID: "n1", Suffrage: raft.Voter}}
	nodes := []*kilnv1.Node{{Id: "n1", GrpcAddr: "127.0.0.1:1"}}
	for i, a := range addrs {
		id := "n" + string(rune('2'+i))
		members = append(members, raft.Server{ID: raft.ServerID(id), Suffrage: raft.Voter})
		nodes = append(nodes, &kilnv1.Node{Id: id, GrpcAddr: a})
	}
	r := New(Config{NodeID: "n1", Store: local,
		Members: func() ([]raft.Server, error) { return members, nil },
		Nodes:   func() []*kilnv1.Node { return nodes },
		Log:     zaptest.NewLogger(t)})
	t.Cleanup(r.Close)
	return r
}

func put(t *testing.T, s *blobstore.Store, data []byte) string {
	t.Helper()
	sha := blobstore.Digest(data)
	if _, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha); err != nil {
		t.Fatal(err)
	}
	return sha
}

func TestReplicateReachesQuorum(t *testing.T) {
	local := openStore(t)
	peer, addr := startPeer(t)
	// Three voters: this node and one live peer are a quorum; the dead
	// peer's failure does not matter.
	r := replicator(t, local, addr, deadAddr(t))
	data := bytes.Repeat([]byte("kiln"), 700_000) // more than two chunks
	sha := put(t, local, data)
	replicas, voters, err := r.Replicate(context.Background(), &kilnv1.BlobHeader{Sha256: sha, Size: int64(len(data)), Kind: "artifact"})
	if err != nil || replicas != 2 || voters != 3 {
		t.Fatalf("Replicate = %d of %d, %v; want 2 of 3", replicas, voters, err)
	}
	if !peer.Has(sha) {
		t.Fatal("the peer lacks the blob")
	}
}

func TestReplicateWithoutQuorum(t *testing.T) {
	local := openStore(t)
	r := replicator(t, local, deadAddr(t), "")
	sha := put(t, local, []byte("x"))
	replicas, voters, err := r.Replicate(context.Background(), &kilnv1.BlobHeader{Sha256: sha, Size: 1})
	if !errors.Is(err, ErrNoQuorum) || replicas != 1 || voters != 3 {
		t.Fatalf("Replicate = %d of %d, %v; want ErrNoQuorum", replicas, voters, err)
	}
	if !strings.Contains(err.Error(), "retry the upload") || !strings.Contains(err.Error(), "not known yet") {
		t.Fatalf("message %q", err)
	}
}

func TestFetch(t *testing.T) {
	peer, addr := startPeer(t)
	local := openStore(t)
	r := replicator(t, local, deadAddr(t), addr)
	data := []byte("fetch me")
	sha := put(t, peer, data)
	if err := r.Fetch(context.Background(), sha); err != nil {
		t.Fatal(err)
	}
	if !r.Has(sha) {
		t.Fatal("not fetched")
	}
	// Held: nothing to do.
	if err := r.Fetch(context.Background(), sha); err != nil {
		t.Fatal(err)
	}
	missing := blobstore.Digest([]byte("nobody has this"))
	if err := r.Fetch(context.Background(), missing); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "n3: not here") {
		t.Fatalf("Fetch(missing) = %v, want ErrNotFound naming the peers", err)
	}
	if err := r.Fetch(context.Background(), "nope"); !errors.Is(err, blobstore.ErrInvalidDigest) {
		t.Fatalf("Fetch(nope) = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Fetch(ctx, missing); !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch with a canceled context = %v", err)
	}
}

// shared is a store every coordinator reads.
type shared struct{ *blobstore.Store }

func (shared) Shared() bool { return true }

func TestSharedStore(t *testing.T) {
	s := shared{openStore(t)}
	r := replicator(t, s, deadAddr(t), deadAddr(t))
	sha := put(t, s.Store, []byte("x"))
	replicas, voters, err := r.Replicate(context.Background(), &kilnv1.BlobHeader{Sha256: sha, Size: 1})
	if err != nil || replicas != 3 || voters != 3 {
		t.Fatalf("Replicate = %d of %d, %v; want every voter", replicas, voters, err)
	}
	if err := r.Fetch(context.Background(), blobstore.Digest([]byte("y"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch = %v, want ErrNotFound without asking peers", err)
	}
}
