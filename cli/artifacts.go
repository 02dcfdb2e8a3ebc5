package cli

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ArtifactJSON is an artifact as `kilnctl artifacts -o json` prints it.
type ArtifactJSON struct {
	BuildID string `json:"build_id"`
	JobID   string `json:"job_id"`
	Step    string `json:"step"`
	Attempt uint32 `json:"attempt"`
	Path    string `json:"path"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256"`
	Mode    uint32 `json:"mode"`
	Time    string `json:"time"`
}

func toArtifactJSON(a *kilnv1.Artifact) ArtifactJSON {
	f := a.GetFile()
	return ArtifactJSON{BuildID: a.GetBuildId(), JobID: a.GetJobId(), Step: a.GetStep(), Attempt: a.GetAttempt(),
		Path: f.GetPath(), Size: f.GetSize(), SHA256: f.GetSha256(), Mode: f.GetMode(), Time: rfc3339(a.GetTimeUnixMs())}
}

func (a *app) artifactsCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "artifacts BUILD",
		Short: "List a build's artifacts (get: download them)",
		Long: "artifacts lists the files kept by a build's steps (each step's current attempt).\n" +
			"'kilnctl artifacts get BUILD PATH|GLOB' downloads them.",
		Args: exactArgs(1, "one build id"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if err := outputFormat(output); err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			arts, err := a.listArtifacts(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			if structured(output) {
				out := []ArtifactJSON{}
				for _, x := range arts {
					out = append(out, toArtifactJSON(x))
				}
				return writeOutput(a.stdout, output, out)
			}
			t := newTable(a.stdout)
			fmt.Fprintln(t, "STEP\tPATH\tSIZE\tSHA256")
			for _, x := range arts {
				fmt.Fprintf(t, "%s\t%s\t%d\t%s\n", x.GetStep(), x.GetFile().GetPath(), x.GetFile().GetSize(), x.GetFile().GetSha256())
			}
			return t.Flush()
		}),
	}
	addOutputFlag(cmd, &output)
	cmd.AddCommand(a.artifactsGetCommand())
	return cmd
}

func (a *app) listArtifacts(ctx context.Context, c *client.Client, build string) ([]*kilnv1.Artifact, error) {
	var out []*kilnv1.Artifact
	token := ""
	for {
		var resp *kilnv1.ListArtifactsResponse
		err := a.controlOn(ctx, c, "list artifacts of build "+build, buildNotFoundHint, func(ctx context.Context, cs kilnv1.ControlServiceClient) error {
			r, err := cs.ListArtifacts(ctx, &kilnv1.ListArtifactsRequest{BuildId: build, PageToken: token, Consistency: a.consistency})
			resp = r
			return err
		})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetArtifacts()...)
		if token = resp.GetNextPageToken(); token == "" || len(resp.GetArtifacts()) == 0 {
			return out, nil
		}
	}
}

func (a *app) artifactsGetCommand() *cobra.Command {
	var dir, step string
	cmd := &cobra.Command{
		Use:   "get BUILD PATH|GLOB",
		Short: "Download artifacts of a build into a directory",
		Long: "get downloads every artifact of BUILD whose path is PATH or matches GLOB\n" +
			"(path.Match syntax: '*' does not cross '/') into DIR/<path>, and checks\n" +
			"each file's size and SHA-256. --step picks one step's files.",
		Args: exactArgs(2, "a build id and a path or glob"),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			build, pattern := args[0], args[1]
			if _, err := path.Match(pattern, ""); err != nil {
				return usageErrorf("bad pattern %q: %v", pattern, err)
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			defer c.Close()
			arts, err := a.listArtifacts(cmd.Context(), c, build)
			if err != nil {
				return err
			}
			sel, err := selectArtifacts(arts, pattern, step)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root, err := os.OpenRoot(dir)
			if err != nil {
				return err
			}
			defer root.Close()
			var total int64
			for _, x := range sel {
				if err := a.downloadArtifact(cmd.Context(), c, root, x); err != nil {
					return err
				}
				total += x.GetFile().GetSize()
				fmt.Fprintln(a.stdout, filepath.Join(dir, filepath.FromSlash(x.GetFile().GetPath())))
			}
			fmt.Fprintf(a.stderr, "downloaded %d file(s), %d bytes, into %s\n", len(sel), total, dir)
			return nil
		}),
	}
	cmd.Flags().StringVarP(&dir, "dir", "d", ".", "directory to write the files into (at their paths)")
	cmd.Flags().StringVar(&step, "step", "", "only the artifacts of this step (key)")
	return cmd
}

// selectArtifacts returns the artifacts whose path equals pattern or
// matches it as a glob, of step when given. Two steps with a matching file
// at the same path are ambiguous: --step must choose.
func selectArtifacts(arts []*kilnv1.Artifact, pattern, step string) ([]*kilnv1.Artifact, error) {
	var out []*kilnv1.Artifact
	owner := map[string]string{}
	for _, x := range arts {
		p := x.GetFile().GetPath()
		if step != "" && x.GetStep() != step {
			continue
		}
		if ok, _ := path.Match(pattern, p); !ok && p != pattern {
			continue
		}
		if prev, dup := owner[p]; dup && prev != x.GetStep() {
			return nil, usageErrorf("steps %s and %s both have %s; choose one with --step", prev, x.GetStep(), p)
		}
		owner[p] = x.GetStep()
		out = append(out, x)
	}
	if len(out) == 0 {
		what := pattern
		if step != "" {
			what += " in step " + step
		}
		return nil, &ExitError{Code: ExitFailed, Err: fmt.Errorf("no artifact matches %s (list them with 'kilnctl artifacts BUILD')", what)}
	}
	return out, nil
}

// safeRelPath checks an artifact path before it is joined to the target
// directory: relative, clean, slash-separated, no "..".
func safeRelPath(p string) error {
	switch {
	case p == "" || p == "." || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\x00\\") || path.Clean(p) != p ||
		p == ".." || strings.HasPrefix(p, "../") || filepath.IsAbs(filepath.FromSlash(p)) || !filepath.IsLocal(filepath.FromSlash(p)):
		return fmt.Errorf("artifact path %q would escape the target directory; refusing to write it", p)
	}
	return nil
}

// minDownloadTimeout bounds one artifact download (at least --timeout).
const minDownloadTimeout = 30 * time.Minute

// downloadArtifact writes one artifact under root: into a temporary file
// next to its destination, checked for size and SHA-256, given the
// artifact's permission bits (no set-id or sticky bits), then renamed into
// place. A file that does not match is deleted.
func (a *app) downloadArtifact(ctx context.Context, c *client.Client, root *os.Root, x *kilnv1.Artifact) error {
	f := x.GetFile()
	p := f.GetPath()
	if err := safeRelPath(p); err != nil {
		return err
	}
	if d := path.Dir(p); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create directory for %s: %w", p, err)
		}
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := path.Join(path.Dir(p), ".kilnctl-"+hex.EncodeToString(rnd[:])+".tmp")
	out, err := root.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	done := false
	defer func() {
		out.Close()
		if !done {
			_ = root.Remove(tmp)
		}
	}()
	prog := a.progress(p, f.GetSize())
	dctx, cancel := context.WithTimeout(ctx, max(a.timeout, minDownloadTimeout))
	defer cancel()
	var sum string
	err = c.Do(dctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		// A retry (another coordinator) starts the file over.
		if err := out.Truncate(0); err != nil {
			return err
		}
		if _, err := out.Seek(0, io.SeekStart); err != nil {
			return err
		}
		var err error
		sum, err = receiveBlob(ctx, conn, f.GetSha256(), f.GetSize(), out, prog)
		return err
	})
	prog(-1)
	if err != nil {
		var mm *mismatchError
		if errors.As(err, &mm) {
			return &ExitError{Code: ExitFailed, Err: fmt.Errorf("artifact %s: %v; the file was deleted", p, mm)}
		}
		return rpcError("download artifact "+p, err, "")
	}
	if sum != f.GetSha256() {
		return &ExitError{Code: ExitFailed, Err: fmt.Errorf("artifact %s: SHA-256 %s, want %s; the file was deleted", p, sum, f.GetSha256())}
	}
	mode := os.FileMode(f.GetMode()) & 0o777
	if mode == 0 {
		mode = 0o644
	}
	if err := out.Chmod(mode); err != nil {
		return err
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := root.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	done = true
	return nil
}

// mismatchError is a download that does not match the registered artifact.
type mismatchError struct{ msg string }

func (e *mismatchError) Error() string { return e.msg }

// receiveBlob streams a blob into w, checking the announced and received
// size against size, and returns the SHA-256 of what it wrote.
func receiveBlob(ctx context.Context, conn grpc.ClientConnInterface, sha string, size int64, w io.Writer, prog func(int64)) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewBlobServiceClient(conn).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha})
	if err != nil {
		return "", err
	}
	h := sha256.New()
	var n int64
	for first := true; ; first = false {
		m, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", err
		}
		if first && m.GetSize() != size {
			return "", &mismatchError{fmt.Sprintf("the coordinator has %d bytes, want %d", m.GetSize(), size)}
		}
		n += int64(len(m.GetData()))
		if n > size {
			return "", &mismatchError{fmt.Sprintf("received more than the %d bytes expected", size)}
		}
		if _, err := w.Write(m.GetData()); err != nil {
			return "", err
		}
		h.Write(m.GetData())
		prog(n)
	}
	if n != size {
		return "", &mismatchError{fmt.Sprintf("received %d bytes, want %d", n, size)}
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != sha {
		return "", &mismatchError{fmt.Sprintf("SHA-256 %s, want %s", got, sha)}
	}
	return got, nil
}

// progress returns a reporter of bytes received for one file; it draws a
// progress line on stderr only when stderr is a terminal. -1 ends the line.
func (a *app) progress(name string, size int64) func(int64) {
	f, ok := a.stderr.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return func(int64) {}
	}
	return progressLine(f, name, size)
}

// progressLine draws "\rNAME  x/y MiB  p%" on f at most every 100 ms (and
// at the end); -1 ends the line.
func progressLine(f io.Writer, name string, size int64) func(int64) {
	var last time.Time
	drawn := false
	return func(n int64) {
		if n < 0 {
			if drawn {
				fmt.Fprintln(f)
			}
			return
		}
		if now := time.Now(); now.Sub(last) >= 100*time.Millisecond || n == size {
			last = now
			pct := 100.0
			if size > 0 {
				pct = float64(n) * 100 / float64(size)
			}
			fmt.Fprintf(f, "\r%s  %.1f/%.1f MiB  %3.0f%%", name, float64(n)/(1<<20), float64(size)/(1<<20), pct)
			drawn = true
		}
	}
}
