package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/archive"
	"github.com/kiln-ci/kiln/internal/blobio"
	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Upload limits; the coordinators enforce the same size limit.
const (
	maxUploadBytes   int64 = 512 << 20
	minUploadTimeout       = 10 * time.Minute
)

// uploadDir packs dir into a temporary tar.gz, uploads it to the cluster
// (acknowledged once a quorum of coordinators holds it) and returns the
// source naming it. The upload is retried through the leader-following
// client; it is idempotent by digest.
func (a *app) uploadDir(ctx context.Context, c *client.Client, dir string) (*kilnv1.Source, error) {
	f, err := os.CreateTemp("", "kilnctl-upload-*.tar.gz")
	if err != nil {
		return nil, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	h := sha256.New()
	st, err := archive.Pack(dir, io.MultiWriter(f, h))
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, err
	}
	if size > maxUploadBytes {
		return nil, usageErrorf("--upload %s: the archive is %d bytes, above the %d MiB limit; exclude build outputs with .gitignore or .kilnignore", dir, size, maxUploadBytes>>20)
	}
	sha := hex.EncodeToString(h.Sum(nil))
	uctx, cancel := context.WithTimeout(ctx, max(a.timeout, minUploadTimeout))
	defer cancel()
	prog := a.progress("upload "+dir, size)
	err = c.Do(uctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return sendBlob(ctx, conn, f, size, sha, prog)
	})
	prog(-1)
	if err != nil {
		return nil, rpcError("upload "+dir, err, "")
	}
	fmt.Fprintf(a.stderr, "uploaded %s (%d files, %d bytes)\n", dir, st.Files, st.Bytes)
	return &kilnv1.Source{ArchiveSha256: sha, ArchiveSize: size}, nil
}

// sendBlob streams the file from its start as one Upload, reporting the
// bytes sent so far to prog.
func sendBlob(ctx context.Context, conn grpc.ClientConnInterface, f *os.File, size int64, sha string, prog func(int64)) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewBlobServiceClient(conn).Upload(ctx)
	if err != nil {
		return err
	}
	err = stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Header{Header: &kilnv1.BlobHeader{
		Size: size, Sha256: sha, Kind: "source"}}})
	if err == nil {
		var sent int64
		_, err = blobio.SendChunks(ctx, f, blobio.ChunkSize, func(chunk []byte) error {
			if err := stream.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Data{Data: chunk}}); err != nil {
				return err
			}
			sent += int64(len(chunk))
			prog(sent)
			return nil
		})
	}
	// io.EOF from Send means the server answered early (e.g. not the
	// leader), and an ended ctx ended the stream too; CloseAndRecv returns
	// the stream's status.
	if err != nil && err != io.EOF && ctx.Err() == nil {
		return err
	}
	_, err = stream.CloseAndRecv()
	return err
}
