package api

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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Blob limits. They are part of the API contract.
const (
	// BlobChunkBytes is the largest data chunk of an upload, replication or
	// download message.
	BlobChunkBytes = 1 << 20
	// MaxSourceArchiveBytes bounds an uploaded source archive (kind "source").
	MaxSourceArchiveBytes int64 = 512 << 20
	// BlobKindSource is the kind of an uploaded working copy (tar.gz).
	BlobKindSource = "source"
	// BlobKindArtifact is the kind of a file an agent keeps from a step's
	// workspace; only the store's blob limit (--max-blob-size, 5 GiB by
	// default) applies.
	BlobKindArtifact = "artifact"
	// MaxArtifactBytes bounds one artifact file.
	MaxArtifactBytes int64 = 5 << 30
	// replicateTimeout bounds the copy of one blob to one peer.
	replicateTimeout = 10 * time.Minute
)

// blobKindLimits maps the accepted upload kinds to their size limits.
var blobKindLimits = map[string]int64{BlobKindSource: MaxSourceArchiveBytes, BlobKindArtifact: MaxArtifactBytes}

// BlobServer implements kilnv1.BlobServiceServer on top of the local blob
// store. Uploads go to the leader, which stores the blob and copies it to
// the other voters; the upload is acknowledged once a majority of the
// voters (the leader included) hold it. Copies still running at that point
// continue in the background until done, their timeout, or Close.
//
// With a shared store (an object store every coordinator uses) the store
// is the replica: an upload is acknowledged once Put returns, nothing is
// copied to peers, and a blob the store lacks is not fetched from them.
type BlobServer struct {
	kilnv1.UnimplementedBlobServiceServer
	d     *Deps
	store blobstore.Backend

	bg     context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	dialer func(addr string) (*grpc.ClientConn, error)
}

// NewBlobServer returns the blob service over d.Blobs.
func NewBlobServer(d *Deps) *BlobServer {
	bg, stop := context.WithCancel(context.Background())
	return &BlobServer{d: d, store: d.Blobs, bg: bg, stop: stop, dialer: func(addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}}
}

// Close stops background replications and waits for them.
func (s *BlobServer) Close() {
	s.stop()
	s.wg.Wait()
}

// Has reports whether this node's blob store holds the blob.
func (s *BlobServer) Has(sha string) bool { return s.store.Has(sha) }

// chunkSource is a stream of upload or replication messages.
type chunkSource interface {
	next() (header *kilnv1.BlobHeader, data []byte, err error)
}

// chunkReader reads the data messages after the header as an io.Reader.
type chunkReader struct {
	src  chunkSource
	buf  []byte
	done bool
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.done {
			return 0, io.EOF
		}
		h, data, err := r.src.next()
		if err == io.EOF {
			r.done = true
			return 0, io.EOF
		}
		if err != nil {
			return 0, err
		}
		if h != nil {
			return 0, status.Error(codes.InvalidArgument, "blob: a second header in the stream")
		}
		if len(data) > BlobChunkBytes {
			return 0, status.Errorf(codes.InvalidArgument, "blob: a data chunk of %d bytes is above the %d limit", len(data), BlobChunkBytes)
		}
		r.buf = data
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

type uploadSource struct {
	s kilnv1.BlobService_UploadServer
}

func (u uploadSource) next() (*kilnv1.BlobHeader, []byte, error) {
	m, err := u.s.Recv()
	if err != nil {
		return nil, nil, err
	}
	return m.GetHeader(), m.GetData(), nil
}

type replicateSource struct {
	s kilnv1.BlobService_ReplicateServer
}

func (u replicateSource) next() (*kilnv1.BlobHeader, []byte, error) {
	m, err := u.s.Recv()
	if err != nil {
		return nil, nil, err
	}
	return m.GetHeader(), m.GetData(), nil
}

// readHeader reads and validates the first message of a stream.
func readHeader(src chunkSource, maxSize int64, checkKind bool) (*kilnv1.BlobHeader, error) {
	h, data, err := src.next()
	if err == io.EOF {
		return nil, status.Error(codes.InvalidArgument, "blob: empty stream, expected a header")
	}
	if err != nil {
		return nil, err
	}
	if h == nil || len(data) > 0 {
		return nil, status.Error(codes.InvalidArgument, "blob: the first message must be the header")
	}
	if !blobstore.ValidDigest(h.GetSha256()) {
		return nil, invalid("blob: sha256 %q is not 64 lower-case hex digits", h.GetSha256())
	}
	if checkKind {
		limit, ok := blobKindLimits[h.GetKind()]
		if !ok {
			return nil, invalid("blob: unknown kind %q (supported: %q, %q)", h.GetKind(), BlobKindSource, BlobKindArtifact)
		}
		maxSize = min(maxSize, limit)
	}
	if h.GetSize() < 0 || h.GetSize() > maxSize {
		return nil, invalid("blob: size %d is outside 0..%d bytes (the limit for kind %q)", h.GetSize(), maxSize, h.GetKind())
	}
	return h, nil
}

// blobStatus maps a blob store error.
func (s *BlobServer) blobStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, blobstore.ErrDigestMismatch), errors.Is(err, blobstore.ErrSizeMismatch),
		errors.Is(err, blobstore.ErrInvalidDigest), errors.Is(err, blobstore.ErrTooLarge):
		return status.Error(codes.InvalidArgument, "blob: "+err.Error())
	case errors.Is(err, blobstore.ErrNotFound):
		return status.Error(codes.NotFound, "blob: "+err.Error())
	}
	return s.d.toStatus(err)
}

// Upload stores a blob on the leader and replicates it to a quorum.
func (s *BlobServer) Upload(stream kilnv1.BlobService_UploadServer) error {
	if err := s.d.requireLeader(); err != nil {
		return err
	}
	src := uploadSource{stream}
	h, err := readHeader(src, s.store.MaxBlobSize(), true)
	if err != nil {
		return err
	}
	ctx := stream.Context()
	created, err := s.store.Put(ctx, &chunkReader{src: src}, h.GetSize(), h.GetSha256())
	if err != nil {
		return s.blobStatus(err)
	}
	var replicas, voters int
	if s.store.Shared() {
		// Durable in the shared store, which every voter reads.
		if voters, _, _, err = s.voters(); err != nil {
			return s.d.toStatus(err)
		}
		replicas = voters
	} else if replicas, voters, err = s.replicate(ctx, h); err != nil {
		return err
	}
	s.d.Log.Info("blob uploaded", zap.String("sha256", h.GetSha256()), zap.Int64("size", h.GetSize()),
		zap.String("kind", h.GetKind()), zap.Bool("new", created), zap.Int("replicas", replicas), zap.Int("voters", voters))
	return stream.SendAndClose(&kilnv1.UploadResponse{Sha256: h.GetSha256(), Size: h.GetSize(), Replicas: int32(replicas)})
}

// peer is another voter's id and gRPC address.
type peer struct{ id, addr string }

// voters returns the number of voters, whether this node is one, and the
// other voters.
func (s *BlobServer) voters() (int, bool, []peer, error) {
	members, err := s.d.Raft.Members()
	if err != nil {
		return 0, false, nil, err
	}
	addrs := map[string]string{}
	for _, n := range s.d.Store.Nodes() {
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
		if id == s.d.NodeID {
			self = true
			continue
		}
		others = append(others, peer{id: id, addr: addrs[id]})
	}
	return n, self, others, nil
}

// replicate copies the blob to the other voters in parallel and returns
// once a majority of the voters hold it (replicas counts them), or with
// Unavailable once that cannot happen any more or ctx ends.
func (s *BlobServer) replicate(ctx context.Context, h *kilnv1.BlobHeader) (replicas, voters int, err error) {
	voters, self, others, err := s.voters()
	if err != nil {
		return 0, 0, s.d.toStatus(err)
	}
	quorum := voters/2 + 1
	if self {
		replicas = 1
	}
	results := make(chan error, len(others))
	for _, p := range others {
		s.wg.Add(1)
		go func(p peer) {
			defer s.wg.Done()
			// Copies outlive the upload (they finish in the background once
			// the quorum answered), bounded by their timeout and Close.
			rctx, cancel := context.WithTimeout(s.bg, replicateTimeout)
			defer cancel()
			err := s.replicateTo(rctx, p, h)
			if err != nil {
				s.d.Log.Warn("blob replication failed", zap.String("sha256", h.GetSha256()), zap.String("peer", p.id), zap.Error(err))
				err = fmt.Errorf("%s: %w", p.id, err)
			}
			results <- err
		}(p)
	}
	var failures []string
	pending := len(others)
	for replicas < quorum {
		if replicas+pending < quorum {
			return replicas, voters, status.Errorf(codes.Unavailable,
				"blob stored on %d of %d coordinators, a quorum of %d is needed (%s); retry the upload, it is idempotent",
				replicas, voters, quorum, strings.Join(failures, "; "))
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
			return replicas, voters, status.FromContextError(ctx.Err()).Err()
		}
	}
	return replicas, voters, nil
}

// replicateTo streams the stored blob to one peer.
func (s *BlobServer) replicateTo(ctx context.Context, p peer, h *kilnv1.BlobHeader) error {
	if p.addr == "" {
		return errors.New("its gRPC address is not known yet")
	}
	conn, err := s.dialer(p.addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	stream, err := kilnv1.NewBlobServiceClient(conn).Replicate(ctx)
	if err != nil {
		return err
	}
	f, size, err := s.store.Open(h.GetSha256())
	if err != nil {
		return err
	}
	defer f.Close()
	err = stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Header{Header: &kilnv1.BlobHeader{
		Size: size, Sha256: h.GetSha256(), Kind: h.GetKind()}}})
	buf := make([]byte, BlobChunkBytes)
	for err == nil {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 {
			err = stream.Send(&kilnv1.ReplicateRequest{Msg: &kilnv1.ReplicateRequest_Data{Data: buf[:n]}})
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	// io.EOF from Send: the peer answered early (it already has the blob,
	// or failed); CloseAndRecv reports which.
	if err != nil && err != io.EOF {
		return err
	}
	_, err = stream.CloseAndRecv()
	return err
}

// Replicate stores a blob sent by another coordinator.
func (s *BlobServer) Replicate(stream kilnv1.BlobService_ReplicateServer) error {
	src := replicateSource{stream}
	h, err := readHeader(src, s.store.MaxBlobSize(), false)
	if err != nil {
		return err
	}
	if !s.store.Has(h.GetSha256()) {
		if _, err := s.store.Put(stream.Context(), &chunkReader{src: src}, h.GetSize(), h.GetSha256()); err != nil {
			return s.blobStatus(err)
		}
	}
	return stream.SendAndClose(&kilnv1.ReplicateResponse{Sha256: h.GetSha256()})
}

// Download streams a blob, fetching it from a peer first when this node
// does not hold it.
func (s *BlobServer) Download(req *kilnv1.DownloadRequest, stream kilnv1.BlobService_DownloadServer) error {
	sha := req.GetSha256()
	if !blobstore.ValidDigest(sha) {
		return invalid("blob: sha256 %q is not 64 lower-case hex digits", sha)
	}
	ctx := stream.Context()
	if !s.store.Has(sha) {
		if req.GetLocalOnly() || s.store.Shared() {
			return status.Errorf(codes.NotFound, "blob %s is not stored on %s", sha, s.d.NodeID)
		}
		if err := s.fetch(ctx, sha); err != nil {
			return err
		}
	}
	f, size, err := s.store.Open(sha)
	if err != nil {
		return s.blobStatus(err)
	}
	defer f.Close()
	buf := make([]byte, BlobChunkBytes)
	first := true
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 || first {
			msg := &kilnv1.DownloadResponse{Data: buf[:n]}
			if first {
				msg.Size, first = size, false
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			return nil
		}
		if rerr != nil {
			return s.blobStatus(rerr)
		}
	}
}

// Fetch makes sure this node holds a blob: when it does not, it copies it
// from the first peer (another coordinator) that holds it. It fails with
// NotFound when no reachable peer has it. Used by Download and by the
// catch-up loop (coordinator/blobsync).
func (s *BlobServer) Fetch(ctx context.Context, sha string) error {
	if !blobstore.ValidDigest(sha) {
		return invalid("blob: sha256 %q is not 64 lower-case hex digits", sha)
	}
	if s.store.Has(sha) {
		return nil
	}
	if s.store.Shared() {
		// The peers use the same store: none can have it.
		return status.Errorf(codes.NotFound, "blob %s is not in the shared blob store", sha)
	}
	return s.fetch(ctx, sha)
}

// fetch copies a blob from the first peer that holds it into the local store.
func (s *BlobServer) fetch(ctx context.Context, sha string) error {
	var tried []string
	for _, n := range s.d.Store.Nodes() {
		if n.GetId() == s.d.NodeID || n.GetGrpcAddr() == "" {
			continue
		}
		err := s.fetchFrom(ctx, n.GetGrpcAddr(), sha)
		if err == nil {
			s.d.Log.Info("blob fetched from a peer", zap.String("sha256", sha), zap.String("peer", n.GetId()))
			return nil
		}
		if ctx.Err() != nil {
			return status.FromContextError(ctx.Err()).Err()
		}
		tried = append(tried, n.GetId()+": "+status.Convert(err).Message())
	}
	return status.Errorf(codes.NotFound, "blob %s is not stored on any reachable coordinator (%s)", sha, strings.Join(tried, "; "))
}

func (s *BlobServer) fetchFrom(ctx context.Context, addr, sha string) error {
	conn, err := s.dialer(addr)
	if err != nil {
		return err
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
	r := &downloadReader{stream: stream, buf: first.GetData()}
	_, err = s.store.Put(ctx, r, first.GetSize(), sha)
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
