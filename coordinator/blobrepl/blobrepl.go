// Package blobrepl replicates a coordinator's blobs (blobs are not in Raft).
// After the leader has stored an uploaded blob, Replicate streams it from
// the local store to every other voter (BlobService.Replicate) in parallel
// and returns once a majority of the voters, the leader included, hold it;
// copies still running then finish in the background until done, their
// timeout, or Close. Fetch copies a blob this node lacks from the first
// peer that holds it (BlobService.Download with local_only, so fetches
// never loop); lazy downloads and the catch-up loop (coordinator/blobsync)
// use it.
//
// With a shared store (an object store every coordinator uses) the store is
// the replica: Replicate copies nothing and counts every voter, and Fetch
// never asks peers.
package blobrepl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/internal/blobio"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// DefaultCopyTimeout bounds the copy of one blob to one peer.
const DefaultCopyTimeout = 10 * time.Minute

// Errors; the API maps them to status codes.
var (
	// ErrNoQuorum: fewer than a majority of the voters hold an uploaded blob
	// and no running copy can make up the difference (Unavailable; the
	// upload is idempotent and may be retried).
	ErrNoQuorum = errors.New("blob not stored on a quorum of coordinators")
	// ErrNotFound: neither this node nor any reachable peer holds the blob.
	ErrNotFound = errors.New("blob not found on any reachable coordinator")
)

// kindError is an error whose message is its own text and which matches
// one of the errors above with errors.Is.
type kindError struct {
	kind error
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// Config wires a Replicator. Store, Members and Nodes are required.
type Config struct {
	// NodeID is this coordinator's id.
	NodeID string
	// Store is this node's blob store.
	Store blobstore.Backend
	// Members returns the Raft configuration (*raftnode.Node.Members).
	Members func() ([]raft.Server, error)
	// Nodes returns the coordinators' ids and gRPC addresses from the
	// replicated state (*state.Store.Nodes).
	Nodes func() []*kilnv1.Node
	// Dial opens a client connection to a peer (default: grpc.NewClient
	// without TLS).
	Dial func(addr string) (*grpc.ClientConn, error)
	// CopyTimeout bounds one copy to one peer (default DefaultCopyTimeout).
	CopyTimeout time.Duration
	// Log defaults to a no-op logger.
	Log *zap.Logger
}

// Replicator copies blobs between this coordinator's store and its peers.
type Replicator struct {
	cfg  Config
	bg   context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New returns a Replicator; Close it to stop the background copies.
func New(cfg Config) *Replicator {
	if cfg.Dial == nil {
		cfg.Dial = func(addr string) (*grpc.ClientConn, error) {
			return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		}
	}
	if cfg.CopyTimeout <= 0 {
		cfg.CopyTimeout = DefaultCopyTimeout
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	bg, stop := context.WithCancel(context.Background())
	return &Replicator{cfg: cfg, bg: bg, stop: stop}
}

// Close stops the background copies and waits for them.
func (r *Replicator) Close() {
	r.stop()
	r.wg.Wait()
}

// Has reports whether this node's blob store holds the blob.
func (r *Replicator) Has(sha string) bool { return r.cfg.Store.Has(sha) }

// peer is another voter's id and gRPC address.
type peer struct{ id, addr string }

// voters returns the number of voters, whether this node is one, and the
// other voters.
func (r *Replicator) voters() (int, bool, []peer, error) {
	members, err := r.cfg.Members()
	if err != nil {
		return 0, false, nil, fmt.Errorf("raft configuration: %w", err)
	}
	addrs := map[string]string{}
	for _, n := range r.cfg.Nodes() {
		addrs[n.GetId()] = n.GetGrpcAddr()
	}
	n, self := 0, false
	var others []peer
	for _, m := range members {
		if m.Suffrage != raft.Voter {
			continue
		}
		n++
		id := string(m.ID)
		if id == r.cfg.NodeID {
			self = true
			continue
		}
		others = append(others, peer{id: id, addr: addrs[id]})
	}
	return n, self, others, nil
}

// Replicate copies a blob this node stores (h names its digest and kind)
// to the other voters in parallel and returns once a majority of the
// voters hold it; replicas counts them. It fails with ErrNoQuorum once a
// majority cannot be reached any more, and with ctx's error when ctx ends
// first. With a shared store nothing is copied and every voter counts.
func (r *Replicator) Replicate(ctx context.Context, h *kilnv1.BlobHeader) (replicas, voters int, err error) {
	voters, self, others, err := r.voters()
	if err != nil {
		return 0, 0, err
	}
	if r.cfg.Store.Shared() {
		// Durable in the shared store, which every voter reads.
		return voters, voters, nil
	}
	quorum := voters/2 + 1
	if self {
		replicas = 1
	}
	results := make(chan error, len(others))
	for _, p := range others {
		r.wg.Add(1)
		go func(p peer) {
			defer r.wg.Done()
			// Copies outlive the upload (they finish in the background once
			// the quorum answered), bounded by their timeout and Close.
			rctx, cancel := context.WithTimeout(r.bg, r.cfg.CopyTimeout)
			defer cancel()
			err := r.copyTo(rctx, p, h)
			if err != nil {
				r.cfg.Log.Warn("blob replication failed", zap.String("sha256", h.GetSha256()), zap.String("peer", p.id), zap.Error(err))
				err = fmt.Errorf("%s: %w", p.id, err)
			}
			results <- err
		}(p)
	}
	var failures []string
	pending := len(others)
	for replicas < quorum {
		if replicas+pending < quorum {
			return replicas, voters, &kindError{kind: ErrNoQuorum, msg: fmt.Sprintf(
				"blob stored on %d of %d coordinators, a quorum of %d is needed (%s); retry the upload, it is idempotent",
				replicas, voters, quorum, strings.Join(failures, "; "))}
		}
		select {
		case err := <-results:
			pending--
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				replicas++
			}
		case <-ctx.Done():
			return replicas, voters, ctx.Err()
		}
	}
	return replicas, voters, nil
}

// copyTo streams the stored blob to one peer.
func (r *Replicator) copyTo(ctx context.Context, p peer, h *kilnv1.BlobHeader) error {
	if p.addr == "" {
		return errors.New("its gRPC address is not known yet")
	}
	conn, err := r.cfg.Dial(p.addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", p.addr, err)
	}
	defer conn.Close()
	stream, err := kilnv1.NewBlobServiceClient(conn).Replicate(ctx)
	if err != nil {
		return err
	}
	f, size, err := r.cfg.Store.Open(h.GetSha256())
	if err != nil {
		return err
	}
	defer f.Close()
	err = stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Header{Header: &kilnv1.BlobHeader{
		Size: size, Sha256: h.GetSha256(), Kind: h.GetKind()}}})
	if err == nil {
		_, err = blobio.SendChunks(ctx, f, blobio.ChunkSize, func(chunk []byte) error {
			return stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Data{Data: chunk}})
		})
	}
	// io.EOF from Send: the peer answered early (it already has the blob,
	// or failed), and an ended ctx ended the stream too; CloseAndRecv
	// reports which.
	if err != nil && err != io.EOF && ctx.Err() == nil {
		return err
	}
	_, err = stream.CloseAndRecv()
	return err
}

// Fetch makes sure this node holds a blob: when it does not, it copies it
// from the first peer (another coordinator) that holds it. It fails with
// ErrNotFound when no reachable peer has it (or the store is shared, so
// none can), with ctx's error when ctx ends, and with
// blobstore.ErrInvalidDigest for a malformed digest.
func (r *Replicator) Fetch(ctx context.Context, sha string) error {
	if !blobstore.ValidDigest(sha) {
		return fmt.Errorf("sha256 %q is not 64 lower-case hex digits: %w", sha, blobstore.ErrInvalidDigest)
	}
	if r.cfg.Store.Has(sha) {
		return nil
	}
	if r.cfg.Store.Shared() {
		// The peers use the same store: none can have it.
		return &kindError{kind: ErrNotFound, msg: fmt.Sprintf("blob %s is not in the shared blob store", sha)}
	}
	var tried []string
	for _, n := range r.cfg.Nodes() {
		if n.GetId() == r.cfg.NodeID || n.GetGrpcAddr() == "" {
			continue
		}
		err := r.fetchFrom(ctx, n.GetGrpcAddr(), sha)
		if err == nil {
			r.cfg.Log.Info("blob fetched from a peer", zap.String("sha256", sha), zap.String("peer", n.GetId()))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		tried = append(tried, n.GetId()+": "+status.Convert(err).Message())
	}
	return &kindError{kind: ErrNotFound, msg: fmt.Sprintf("blob %s is not stored on any reachable coordinator (%s)", sha, strings.Join(tried, "; "))}
}

// fetchFrom downloads a blob from the peer at addr into the local store.
func (r *Replicator) fetchFrom(ctx context.Context, addr, sha string) error {
	conn, err := r.cfg.Dial(addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewBlobServiceClient(conn).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha, LocalOnly: true})
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	dr := &downloadReader{stream: stream, buf: first.GetData()}
	_, err = r.cfg.Store.Put(ctx, dr, first.GetSize(), sha)
	return err
}

// downloadReader reads a Download stream's data as an io.Reader.
type downloadReader struct {
	stream kilnv1.BlobService_DownloadClient
	buf    []byte
}

func (r *downloadReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		m, err := r.stream.Recv()
		if err != nil {
			return 0, err
		}
		r.buf = m.GetData()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
