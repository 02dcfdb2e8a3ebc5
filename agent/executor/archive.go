package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/kiln-ci/kiln/internal/archive"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// errTooBig stops a download (archive or artifact) longer than announced.
var errTooBig = errors.New("more bytes than announced")

// limitedWriter fails once more than n bytes were written.
type limitedWriter struct {
	w io.Writer
	n int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errTooBig
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}

// fetchArchive downloads the source archive into a file next to the
// workspace, verifies its size and digest, and unpacks it into ws. It
// returns the reason prefix of a failure.
func fetchArchive(ctx context.Context, workDir, ws string, src *kilnv1.Source, spec Spec, out io.Writer) (string, error) {
	const dl = "source download failed"
	sha, size := src.GetArchiveSha256(), src.GetArchiveSize()
	if spec.Fetch == nil {
		return dl, errors.New("this agent cannot download archives")
	}
	fmt.Fprintf(out, "kiln: downloading source archive %s (%d bytes)\n", sha, size)
	f, err := os.CreateTemp(workDir, "."+filepath.Base(ws)+".source-*.tar.gz")
	if err != nil {
		return dl, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	h := sha256.New()
	w := io.MultiWriter(f, h)
	if size > 0 {
		w = &limitedWriter{w: w, n: size}
	}
	if err := spec.Fetch(ctx, sha, w); err != nil {
		return dl, err
	}
	n, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return dl, err
	}
	if size > 0 && n != size {
		return dl, fmt.Errorf("got %d bytes, want %d", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return dl, fmt.Errorf("sha256 mismatch: got %s, want %s", got, sha)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return dl, err
	}
	st, err := archive.Unpack(&ctxReader{ctx: ctx, r: f}, ws, spec.Unpack)
	if err != nil {
		return "unpack failed", err
	}
	fmt.Fprintf(out, "kiln: unpacked %d files (%d bytes)\n", st.Files, st.Bytes)
	return "", nil
}

// ctxReader stops reading once ctx ends (cancel and timeout of an unpack).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
