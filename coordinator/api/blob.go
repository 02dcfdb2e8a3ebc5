package api

import (
	"errors"
	"io"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/blobrepl"
	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/internal/blobio"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Blob limits. They are part of the API contract.
const (
	// BlobChunkBytes is the largest data chunk of an upload, replication or
	// download message.
	BlobChunkBytes = blobio.ChunkSize
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
)

// blobKindLimits maps the accepted upload kinds to their size limits.
var blobKindLimits = map[string]int64{BlobKindSource: MaxSourceArchiveBytes, BlobKindArtifact: MaxArtifactBytes}

// BlobServer implements kilnv1.BlobServiceServer on top of the local blob
// store: it validates and receives the streams and maps errors. Uploads go
// to the leader, which stores the blob and has the replicator
// (coordinator/blobrepl) copy it to a quorum of the voters before it
// answers; downloads of a blob this node lacks fetch it from a peer first.
type BlobServer struct {
	kilnv1.UnimplementedBlobServiceServer
	d     *Deps
	store blobstore.Backend
	repl  *blobrepl.Replicator
}

// NewBlobServer returns the blob service over d.Blobs, replicating with
// repl (which the caller closes).
func NewBlobServer(d *Deps, repl *blobrepl.Replicator) *BlobServer {
	return &BlobServer{d: d, store: d.Blobs, repl: repl}
}

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
	// Stored here and streamed to the peers while it arrives.
	created, replicas, voters, err := s.repl.Receive(ctx, h, &chunkReader{src: src})
	if err != nil {
		return s.blobStatus(err)
	}
	s.d.Log.Info("blob uploaded", zap.String("sha256", h.GetSha256()), zap.Int64("size", h.GetSize()),
		zap.String("kind", h.GetKind()), zap.Bool("new", created), zap.Int("replicas", replicas), zap.Int("voters", voters))
	return stream.SendAndClose(&kilnv1.UploadResponse{Sha256: h.GetSha256(), Size: h.GetSize(), Replicas: int32(replicas)})
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
		if err := s.repl.Fetch(ctx, sha); err != nil {
			return s.blobStatus(err)
		}
	}
	f, size, err := s.store.Open(sha)
	if err != nil {
		return s.blobStatus(err)
	}
	defer f.Close()
	// The first message carries the size, even for an empty blob.
	first := true
	var sendErr error
	_, err = blobio.SendChunks(ctx, f, BlobChunkBytes, func(chunk []byte) error {
		msg := &kilnv1.DownloadResponse{Data: chunk}
		if first {
			msg.Size, first = size, false
		}
		sendErr = stream.Send(msg)
		return sendErr
	})
	switch {
	case sendErr != nil:
		return sendErr
	case err != nil:
		return s.blobStatus(err)
	case first:
		return stream.Send(&kilnv1.DownloadResponse{Size: size})
	}
	return nil
}
