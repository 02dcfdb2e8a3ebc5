package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/internal/blobio"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// artifactKind is the BlobHeader kind of artifact uploads.
const artifactKind = "artifact"

// errChanged is returned when an artifact's bytes no longer match the
// digest computed in the first pass.
var errChanged = errors.New("file changed while uploading")

// uploadArtifact stores one artifact file with BlobService.Upload at the
// leader. It starts at the current session's coordinator, follows NotLeader
// hints at once (a bounded number of times in a row), and retries any other
// Unavailable answer with jittered exponential backoff (the reconnect
// bounds) until ctx ends; each try streams the file again from disk in
// 1 MiB chunks. Uploads are idempotent by digest, so a retry after an
// unknown outcome is safe. Other errors are final.
func (a *Agent) uploadArtifact(ctx context.Context, file *kilnv1.ArtifactFile, r io.ReaderAt) error {
	backoff := a.cfg.ReconnectMin
	next := 0
	redirect := ""
	for {
		addr := redirect
		redirect = ""
		if addr == "" {
			if p := a.sessionAddr.Load(); p != nil && next == 0 {
				addr = *p
			} else {
				addr = a.cfg.Coordinators[next%len(a.cfg.Coordinators)]
			}
			next++
		}
		err := leader.Follow(ctx, []string{addr}, a.maxRedirects(), func(ctx context.Context, at string) error {
			addr = at
			return a.uploadTo(ctx, at, file, r)
		})
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if status.Code(err) != codes.Unavailable {
			return err
		}
		hint, _ := leader.Hint(err) // "" when err names no leader
		a.log.Info("artifact upload unavailable; retrying", zap.String("addr", addr), zap.String("path", file.GetPath()), zap.Error(err))
		if hint != "" {
			redirect = hint
		} else {
			next = 0 // start again from the (maybe new) session address
		}
		if err := a.sleepBackoff(ctx, &backoff, nil); err != nil {
			return err
		}
	}
}

// uploadTo makes one upload attempt at addr. The bytes are hashed as they
// are sent; a mismatch with file.Sha256 aborts the stream.
func (a *Agent) uploadTo(ctx context.Context, addr string, file *kilnv1.ArtifactFile, r io.ReaderAt) error {
	conn, err := a.dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewBlobServiceClient(conn).Upload(ctx)
	if err != nil {
		return err
	}
	// A failed Send hides the stream's status; CloseAndRecv reports it.
	send := func(m *kilnv1.UploadRequest) error {
		if err := stream.Send(m); err != nil {
			if errors.Is(err, io.EOF) {
				_, err = stream.CloseAndRecv()
			}
			return err
		}
		return nil
	}
	if err := send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Header{Header: &kilnv1.BlobHeader{
		Size: file.GetSize(), Sha256: file.GetSha256(), Kind: artifactKind,
	}}}); err != nil {
		return err
	}
	h := sha256.New()
	sr := io.TeeReader(io.NewSectionReader(r, 0, file.GetSize()), h)
	if _, err := blobio.SendChunks(ctx, sr, executor.ArtifactChunkSize, func(chunk []byte) error {
		return send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Data{Data: chunk}})
	}); err != nil {
		return err
	}
	var probe [1]byte
	if m, _ := r.ReadAt(probe[:], file.GetSize()); m > 0 || hex.EncodeToString(h.Sum(nil)) != file.GetSha256() {
		return errChanged // cancel (deferred) aborts the stream
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetSha256() != "" && resp.GetSha256() != file.GetSha256() {
		return fmt.Errorf("leader stored %s, want %s", resp.GetSha256(), file.GetSha256())
	}
	return nil
}
