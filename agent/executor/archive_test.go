package executor

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-ci/kiln/internal/archive"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func archiveSpec(t *testing.T, data []byte, served []byte) Spec {
	t.Helper()
	sum := sha256.Sum256(data)
	sha := hex.EncodeToString(sum[:])
	return Spec{
		JobID: "b.arch", BuildID: "b", Attempt: 1,
		Commands: []string{"cat hello.txt", "./run.sh"},
		Source:   &kilnv1.Source{ArchiveSha256: sha, ArchiveSize: int64(len(data))},
		Fetch: func(_ context.Context, got string, w io.Writer) error {
			if got != sha {
				t.Errorf("fetch %s, want %s", got, sha)
			}
			_, err := w.Write(served)
			return err
		},
	}
}

func TestArchiveSourceIsUnpacked(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hi-from-archive\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "run.sh"), []byte("#!/bin/sh\necho exec-bit-kept\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := archive.Pack(dir, &buf); err != nil {
		t.Fatal(err)
	}
	o, out := run(t, newExec(t), archiveSpec(t, buf.Bytes(), buf.Bytes()))
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED || !strings.Contains(out, "hi-from-archive") || !strings.Contains(out, "exec-bit-kept") {
		t.Fatalf("outcome %+v, output:\n%s", o, out)
	}
}

func TestArchiveSourceFailures(t *testing.T) {
	var evil bytes.Buffer
	zw := gzip.NewWriter(&evil)
	tw := tar.NewWriter(zw)
	_ = tw.WriteHeader(&tar.Header{Name: "../escape", Typeflag: tar.TypeReg, Size: 1, Mode: 0o644})
	_, _ = tw.Write([]byte("x"))
	tw.Close()
	zw.Close()

	o, out := run(t, newExec(t), archiveSpec(t, []byte("real"), []byte("fake")))
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(o.Reason, "source download failed: sha256 mismatch") {
		t.Fatalf("digest mismatch: %+v\n%s", o, out)
	}
	o, out = run(t, newExec(t), archiveSpec(t, evil.Bytes(), evil.Bytes()))
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(o.Reason, "unpack failed: ") || !strings.Contains(out, "unpack failed") {
		t.Fatalf("unsafe archive: %+v\n%s", o, out)
	}
	spec := archiveSpec(t, []byte("x"), []byte("x"))
	spec.Fetch = nil
	if o, _ := run(t, newExec(t), spec); !strings.HasPrefix(o.Reason, "source download failed: ") {
		t.Fatalf("no fetch: %+v", o)
	}
}
