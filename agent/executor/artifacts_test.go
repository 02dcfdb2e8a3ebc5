package executor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestCollectArtifacts(t *testing.T) {
	ws := t.TempDir()
	outside := t.TempDir()
	writeFile(t, filepath.Join(outside, "secret.txt"), "secret", 0o644)
	writeFile(t, filepath.Join(ws, "out/a.txt"), "a", 0o644)
	writeFile(t, filepath.Join(ws, "out/sub/b.txt"), "bb", 0o755)
	writeFile(t, filepath.Join(ws, "out/c.bin"), "c", 0o644)
	writeFile(t, filepath.Join(ws, "src/main.go"), "package main", 0o644)
	for link, target := range map[string]string{
		"out/escape.txt":  filepath.Join(outside, "secret.txt"),
		"out/inside.txt":  "a.txt",
		"out/escapedir":   outside,
		"out/rel-up.txt":  "../../" + filepath.Base(outside) + "/secret.txt",
		"out/insidedir":   "sub",
		"out/dangling.tx": "nope",
	} {
		if err := os.Symlink(target, filepath.Join(ws, link)); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	files, err := CollectArtifacts(context.Background(), ws, []string{"out/**/*.txt", "**/*.nothing", "out/c.bin"}, ArtifactLimits{}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := paths(files), []string{"out/a.txt", "out/c.bin", "out/sub/b.txt"}; !slices.Equal(got, want) {
		t.Fatalf("collected %v, want %v\n%s", got, want, out.String())
	}
	if files[2].Size != 2 || files[2].Mode != 0o755 {
		t.Fatalf("b.txt = %+v", files[2])
	}
	log := out.String()
	for _, want := range []string{
		"artifact out/escape.txt is a symbolic link; skipped",
		"artifact out/inside.txt is a symbolic link; skipped",
		"artifact out/rel-up.txt is a symbolic link; skipped",
		`warning: artifact pattern "**/*.nothing" matched no files`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("output lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "secret") || strings.Contains(log, "escapedir/") {
		t.Errorf("walked through a symlinked directory:\n%s", log)
	}

	// Limits.
	if _, err := CollectArtifacts(context.Background(), ws, []string{"**"}, ArtifactLimits{MaxFiles: 2}, io.Discard); err == nil || !strings.Contains(err.Error(), "more than 2 files") {
		t.Fatalf("file limit: %v", err)
	}
	if _, err := CollectArtifacts(context.Background(), ws, []string{"**"}, ArtifactLimits{MaxFileSize: 1}, io.Discard); err == nil || !strings.Contains(err.Error(), "more than the limit") {
		t.Fatalf("size limit: %v", err)
	}
	if _, err := CollectArtifacts(context.Background(), ws, []string{"../*"}, ArtifactLimits{}, io.Discard); err == nil {
		t.Fatal("escaping pattern accepted")
	}
}

// memStore is an UploadFunc keeping blobs in memory.
type memStore struct {
	mu    sync.Mutex
	blobs map[string][]byte
	fail  error
}

func (m *memStore) upload(_ context.Context, f *kilnv1.ArtifactFile, r io.ReaderAt) error {
	if m.fail != nil {
		return m.fail
	}
	data, err := io.ReadAll(io.NewSectionReader(r, 0, f.GetSize()))
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if hex.EncodeToString(sum[:]) != f.GetSha256() {
		return errors.New("digest mismatch")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.blobs == nil {
		m.blobs = map[string][]byte{}
	}
	m.blobs[f.GetSha256()] = data
	return nil
}

func shaOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestArtifactsUploadedAfterCommands(t *testing.T) {
	for _, tc := range []struct {
		name   string
		last   string
		result kilnv1.JobResult
		upload bool
	}{
		{"passed", "true", kilnv1.JobResult_JOB_RESULT_PASSED, true},
		{"failed", "exit 3", kilnv1.JobResult_JOB_RESULT_FAILED, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &memStore{}
			spec := Spec{JobID: "b.art", Attempt: 1,
				Commands:  []string{"mkdir -p dist", "printf hello > dist/app.bin", "ln -s /etc/passwd dist/pw.bin", tc.last},
				Artifacts: []string{"dist/*.bin", "missing/*"}, Upload: st.upload}
			o, out := run(t, newExec(t), spec)
			if o.Result != tc.result {
				t.Fatalf("outcome %+v\n%s", o, out)
			}
			if len(o.Artifacts) != 1 || o.Artifacts[0].GetPath() != "dist/app.bin" || o.Artifacts[0].GetSize() != 5 || o.Artifacts[0].GetSha256() != shaOf("hello") {
				t.Fatalf("artifacts %v\n%s", o.Artifacts, out)
			}
			if string(st.blobs[shaOf("hello")]) != "hello" {
				t.Fatalf("stored %v", st.blobs)
			}
			for _, want := range []string{"artifact dist/app.bin (5 bytes, sha256 " + shaOf("hello")[:12] + ")", "dist/pw.bin is a symbolic link; skipped", `pattern "missing/*" matched no files`} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}

	// An upload failure fails a passed attempt.
	st := &memStore{fail: errors.New("boom")}
	o, out := run(t, newExec(t), Spec{JobID: "b.art", Attempt: 1, Commands: []string{"echo x > f"}, Artifacts: []string{"f"}, Upload: st.upload})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || o.Reason != "artifact upload failed: f: boom" || len(o.Artifacts) != 0 {
		t.Fatalf("outcome %+v\n%s", o, out)
	}
	// A timed-out attempt uploads nothing.
	st = &memStore{}
	o, _ = run(t, newExec(t), Spec{JobID: "b.art", Attempt: 1, Commands: []string{"echo x > f", "exec sleep 60"}, Artifacts: []string{"f"}, Upload: st.upload, Timeout: 1})
	if o.Result != kilnv1.JobResult_JOB_RESULT_TIMED_OUT || len(o.Artifacts) != 0 || len(st.blobs) != 0 {
		t.Fatalf("timed out: %+v, %v", o, st.blobs)
	}
}

func inputOf(path, data string, mode uint32) *kilnv1.Artifact {
	return &kilnv1.Artifact{Step: "build", File: &kilnv1.ArtifactFile{Path: path, Size: int64(len(data)), Sha256: shaOf(data), Mode: mode}}
}

func fetchFrom(blobs map[string]string) func(context.Context, string, io.Writer) error {
	return func(_ context.Context, sha string, w io.Writer) error {
		d, ok := blobs[sha]
		if !ok {
			return errors.New("not found")
		}
		_, err := io.WriteString(w, d)
		return err
	}
}

func TestInputsDownloaded(t *testing.T) {
	blobs := map[string]string{shaOf("bin"): "bin", shaOf("lib"): "lib"}
	spec := Spec{JobID: "b.in", Attempt: 1,
		Commands: []string{"cat dist/app", "cat dist/deep/lib.a", "stat -c %a dist/app dist/deep/lib.a"},
		Inputs:   []*kilnv1.Artifact{inputOf("dist/app", "bin", 0o4755), inputOf("dist/deep/lib.a", "lib", 0o640)},
		Fetch:    fetchFrom(blobs)}
	o, out := run(t, newExec(t), spec)
	if o.Result != kilnv1.JobResult_JOB_RESULT_PASSED || !strings.Contains(out, "binlib755\n640\n") {
		t.Fatalf("outcome %+v\n%s", o, out)
	}

	// Digest mismatch fails the attempt and the commands never run.
	bad := inputOf("x", "real", 0o644)
	blobs[bad.GetFile().GetSha256()] = "fake"
	o, out = run(t, newExec(t), Spec{JobID: "b.in", Attempt: 1, Commands: []string{"echo RAN"}, Inputs: []*kilnv1.Artifact{bad}, Fetch: fetchFrom(blobs)})
	if o.Result != kilnv1.JobResult_JOB_RESULT_FAILED || !strings.HasPrefix(o.Reason, "artifact download failed: x: sha256 mismatch") || strings.Contains(out, "RAN") {
		t.Fatalf("mismatch: %+v\n%s", o, out)
	}
	// Longer than announced.
	long := inputOf("x", "abc", 0o644)
	blobs[long.GetFile().GetSha256()] = "abcdef"
	if o, _ := run(t, newExec(t), Spec{JobID: "b.in", Attempt: 1, Inputs: []*kilnv1.Artifact{long}, Fetch: fetchFrom(blobs)}); !strings.HasPrefix(o.Reason, "artifact download failed: ") {
		t.Fatalf("too long: %+v", o)
	}
	// Unsafe paths.
	for _, p := range []string{"/etc/x", "../x", "a/../../x", "a//b", "", "."} {
		in := inputOf(p, "bin", 0o644)
		if o, _ := run(t, newExec(t), Spec{JobID: "b.in", Attempt: 1, Inputs: []*kilnv1.Artifact{in}, Fetch: fetchFrom(blobs)}); !strings.HasPrefix(o.Reason, "artifact download failed: ") {
			t.Errorf("path %q: %+v", p, o)
		}
	}
}

func TestInputsNeverWriteThroughSymlinks(t *testing.T) {
	outside := t.TempDir()
	ws := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(ws, "dir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "f"), filepath.Join(ws, "file")); err != nil {
		t.Fatal(err)
	}
	blobs := map[string]string{shaOf("bin"): "bin"}
	for _, p := range []string{"dir/x", "file"} {
		err := downloadInputs(context.Background(), ws, []*kilnv1.Artifact{inputOf(p, "bin", 0o644)}, fetchFrom(blobs), io.Discard)
		if err == nil {
			t.Errorf("%s: written through a symlink", p)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Fatalf("wrote outside the workspace: %v", ents)
	}
	// An existing regular file is replaced.
	writeFile(t, filepath.Join(ws, "reg"), "old-content", 0o644)
	if err := downloadInputs(context.Background(), ws, []*kilnv1.Artifact{inputOf("reg", "bin", 0o600)}, fetchFrom(blobs), io.Discard); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "reg")); string(b) != "bin" {
		t.Fatalf("reg = %q", b)
	}
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func paths(files []CollectedFile) []string {
	var ps []string
	for _, f := range files {
		ps = append(ps, f.Path)
	}
	return ps
}

// Inputs of several steps at one path: identical content is written once
// at the path; different content goes to STEP/PATH for each step, the
// same whatever the order of the inputs.
func TestInputsAtTheSamePathFromSeveralSteps(t *testing.T) {
	from := func(step, path, data string) *kilnv1.Artifact {
		in := inputOf(path, data, 0o644)
		in.Step = step
		return in
	}
	blobs := map[string]string{shaOf("r22"): "r22", shaOf("r23"): "r23", shaOf("lib"): "lib"}
	orders := [][]*kilnv1.Artifact{
		{from("unit-1.22", "report.xml", "r22"), from("unit-1.23", "report.xml", "r23"), from("unit-1.22", "lib.a", "lib"), from("unit-1.23", "lib.a", "lib")},
		{from("unit-1.23", "lib.a", "lib"), from("unit-1.23", "report.xml", "r23"), from("unit-1.22", "lib.a", "lib"), from("unit-1.22", "report.xml", "r22")},
	}
	for i, inputs := range orders {
		ws := t.TempDir()
		var log strings.Builder
		if err := downloadInputs(context.Background(), ws, inputs, fetchFrom(blobs), &log); err != nil {
			t.Fatalf("order %d: %v", i, err)
		}
		want := map[string]string{"lib.a": "lib", "unit-1.22/report.xml": "r22", "unit-1.23/report.xml": "r23"}
		for p, data := range want {
			if b, err := os.ReadFile(filepath.Join(ws, p)); err != nil || string(b) != data {
				t.Errorf("order %d: %s = %q, %v; want %q", i, p, b, err, data)
			}
		}
		if _, err := os.Stat(filepath.Join(ws, "report.xml")); err == nil {
			t.Errorf("order %d: the ambiguous report.xml was written at its path", i)
		}
		if !strings.Contains(log.String(), "kiln: artifact report.xml differs between steps unit-1.22, unit-1.23: each is written to STEP/report.xml\n") {
			t.Errorf("order %d: log\n%s", i, log.String())
		}
	}
	// STEP/PATH that another artifact already uses: a clear error.
	clash := []*kilnv1.Artifact{from("a", "x", "r22"), from("b", "x", "r23"), from("c", "a/x", "lib")}
	err := downloadInputs(context.Background(), t.TempDir(), clash, fetchFrom(blobs), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "a/x: both") {
		t.Fatalf("clash: %v", err)
	}
}
