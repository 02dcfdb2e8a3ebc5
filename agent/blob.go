package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fetchBlob downloads a blob (an uploaded source archive) into w from the
// coordinator of the current session, or, when that fails before any byte
// arrived, from the other configured coordinators in turn. Any coordinator
// serves downloads (fetching from a peer when it lacks the blob). The
// executor verifies the size and digest.
func (a *Agent) fetchBlob(ctx context.Context, sha string, w io.Writer) error {
	var addrs []string
	if p := a.sessionAddr.Load(); p != nil {
		addrs = append(addrs, *p)
	}
	for _, c := range a.cfg.Coordinators {
		if !slices.Contains(addrs, c) {
			addrs = append(addrs, c)
		}
	}
	var errs []error
	for _, addr := range addrs {
		wrote, err := a.downloadFrom(ctx, addr, sha, w)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if wrote || ctx.Err() != nil {
			break // partial output cannot be retried into w
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) downloadFrom(ctx context.Context, addr, sha string, w io.Writer) (wrote bool, err error) {
	conn, err := a.dial(addr)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewBlobServiceClient(conn).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha})
	if err != nil {
		return false, err
	}
	for {
		m, err := stream.Recv()
		if err == io.EOF {
			return wrote, nil
		}
		if err != nil {
			return wrote, err
		}
		if len(m.GetData()) == 0 {
			continue
		}
		wrote = true
		if _, err := w.Write(m.GetData()); err != nil {
			return true, err
		}
	}
}
