// Package blobio is the chunked send loop every BlobService sender shares:
// the coordinator (copies to peers, downloads), the agent (artifact
// uploads) and kilnctl (source uploads). It lives under internal/ so the
// agent and the CLI may use it without importing the coordinator.
package blobio

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// ChunkSize is the data chunk size of BlobService messages (upload,
// replication and download); coordinators refuse larger chunks.
const ChunkSize = 1 << 20

// SendChunks reads r to its end and calls send with each chunk, in order.
// Every chunk but the last holds exactly chunkSize bytes (chunkSize <= 0
// means ChunkSize); an empty r sends nothing. The slice given to send is
// reused for the next chunk once send returns. ctx is checked before each
// read: when it has ended, SendChunks stops with its error.
//
// It returns the number of bytes sent. A read error is wrapped; an error
// from send is returned as it is, so a caller can tell io.EOF, which a gRPC
// stream's Send returns when the other side has already answered, from
// a failed read.
func SendChunks(ctx context.Context, r io.Reader, chunkSize int, send func(chunk []byte) error) (int64, error) {
	if chunkSize <= 0 {
		chunkSize = ChunkSize
	}
	buf := make([]byte, chunkSize)
	var sent int64
	for {
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := send(buf[:n]); err != nil {
				return sent, err
			}
			sent += int64(n)
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return sent, nil
		default:
			return sent, fmt.Errorf("read: %w", rerr)
		}
	}
}
