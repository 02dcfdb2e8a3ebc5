package executor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"github.com/kiln-ci/kiln/internal/glob"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Default artifact limits.
const (
	DefaultMaxArtifactFiles       = 10_000
	DefaultMaxArtifactSize  int64 = 5 << 30
	// ArtifactChunkSize is the read (and upload chunk) size of artifact files.
	ArtifactChunkSize = 1 << 20
)

// ArtifactLimits bound what one attempt collects.
type ArtifactLimits struct {
	// MaxFiles bounds the number of files (DefaultMaxArtifactFiles when zero).
	MaxFiles int
	// MaxFileSize bounds each file (DefaultMaxArtifactSize when zero).
	MaxFileSize int64
}

func (l ArtifactLimits) withDefaults() ArtifactLimits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxArtifactFiles
	}
	if l.MaxFileSize <= 0 {
		l.MaxFileSize = DefaultMaxArtifactSize
	}
	return l
}

// UploadFunc stores one artifact file as a blob. r reads the file's bytes
// (file.Size of them); it may be read more than once (retries). It must
// fail when the bytes do not match file.Sha256.
type UploadFunc func(ctx context.Context, file *kilnv1.ArtifactFile, r io.ReaderAt) error

// CollectedFile is a workspace file matched by an artifact pattern.
type CollectedFile struct {
	// Path is slash-separated and relative to the workspace.
	Path string
	Size int64
	Mode fs.FileMode
}

// CollectArtifacts walks the workspace ws and returns, sorted by path, the
// regular files matching any of the patterns. Symbolic links are never
// followed nor collected: a matching one is skipped with a line on out. A
// pattern matching nothing writes a warning line on out. Bad patterns,
// more than MaxFiles files or a file above MaxFileSize are errors.
func CollectArtifacts(ctx context.Context, ws string, patterns []string, lim ArtifactLimits, out io.Writer) ([]CollectedFile, error) {
	lim = lim.withDefaults()
	globs := make([]glob.Glob, 0, len(patterns))
	for _, p := range patterns {
		g, err := glob.Compile(p)
		if err != nil {
			return nil, err
		}
		globs = append(globs, g)
	}
	matched := make([]bool, len(globs))
	var files []CollectedFile
	err := filepath.WalkDir(ws, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if p == ws {
			return nil
		}
		r, err := filepath.Rel(ws, p)
		if err != nil {
			return err
		}
		rel := filepath.ToSlash(r)
		if d.IsDir() {
			if !slices.ContainsFunc(globs, func(g glob.Glob) bool { return g.MayContain(rel) }) {
				return filepath.SkipDir
			}
			return nil
		}
		hit := false
		for i, g := range globs {
			if g.Match(rel) {
				matched[i] = true
				hit = true
			}
		}
		if !hit {
			return nil
		}
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			fmt.Fprintf(out, "kiln: artifact %s is a symbolic link; skipped\n", rel)
			return nil
		case !d.Type().IsRegular():
			fmt.Fprintf(out, "kiln: artifact %s is not a regular file; skipped\n", rel)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Size() > lim.MaxFileSize {
			return fmt.Errorf("%s: %d bytes, more than the limit of %d", rel, info.Size(), lim.MaxFileSize)
		}
		if len(files) >= lim.MaxFiles {
			return fmt.Errorf("more than %d files", lim.MaxFiles)
		}
		files = append(files, CollectedFile{Path: rel, Size: info.Size(), Mode: info.Mode().Perm()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, g := range globs {
		if !matched[i] {
			fmt.Fprintf(out, "kiln: warning: artifact pattern %q matched no files\n", g.String())
		}
	}
	return files, nil
}

// ctxReaderAt stops reading once ctx ends.
type ctxReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}

// uploadArtifacts collects the attempt's artifacts and uploads them one by
// one: each file is opened inside the workspace root (never leaving it), its
// SHA-256 is computed in a first pass and then it is handed to upload. It
// returns the files uploaded so far, also on error.
func uploadArtifacts(ctx context.Context, ws string, patterns []string, lim ArtifactLimits, upload UploadFunc, out io.Writer) ([]*kilnv1.ArtifactFile, error) {
	if upload == nil {
		return nil, errors.New("this agent cannot upload artifacts")
	}
	files, err := CollectArtifacts(ctx, ws, patterns, lim, out)
	if err != nil {
		return nil, err
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	var done []*kilnv1.ArtifactFile
	for _, cf := range files {
		af, err := uploadOne(ctx, root, cf, upload)
		if err != nil {
			return done, fmt.Errorf("%s: %w", cf.Path, err)
		}
		done = append(done, af)
		fmt.Fprintf(out, "artifact %s (%d bytes, sha256 %s)\n", af.GetPath(), af.GetSize(), af.GetSha256()[:12])
	}
	return done, nil
}

func uploadOne(ctx context.Context, root *os.Root, cf CollectedFile, upload UploadFunc) (*kilnv1.ArtifactFile, error) {
	rel := filepath.FromSlash(cf.Path)
	if fi, err := root.Lstat(rel); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, errors.New("no longer a regular file")
	}
	f, err := root.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("no longer a regular file")
	}
	size := fi.Size()
	if size != cf.Size {
		return nil, fmt.Errorf("changed while collecting (%d bytes, was %d)", size, cf.Size)
	}
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.NewSectionReader(ctxReaderAt{ctx, f}, 0, size), make([]byte, ArtifactChunkSize))
	if err != nil {
		return nil, err
	}
	if n != size {
		return nil, fmt.Errorf("read %d bytes, want %d", n, size)
	}
	af := &kilnv1.ArtifactFile{
		Path:   cf.Path,
		Size:   size,
		Sha256: hex.EncodeToString(h.Sum(nil)),
		Mode:   uint32(fi.Mode().Perm()),
	}
	if err := upload(ctx, af, ctxReaderAt{ctx, f}); err != nil {
		return nil, err
	}
	return af, nil
}

// checkArtifactPath validates a slash-separated artifact path.
func checkArtifactPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q: absolute path", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("%q: NUL in path", p)
	case path.Clean(p) != p:
		return fmt.Errorf("%q: path is not clean", p)
	}
	for _, s := range strings.Split(p, "/") {
		if s == ".." {
			return fmt.Errorf("%q: \"..\" in path", p)
		}
	}
	return nil
}

// downloadInputs writes every input artifact into the workspace at its
// path. Paths must be relative and clean; no component may be a symbolic
// link (nothing is written through one) and everything happens inside an
// os.Root of the workspace. Each file's size and SHA-256 are verified;
// permission bits are kept without set-id and sticky bits (and always
// owner read/write).
func downloadInputs(ctx context.Context, ws string, inputs []*kilnv1.Artifact, fetch func(ctx context.Context, sha string, w io.Writer) error, out io.Writer) error {
	if fetch == nil {
		return errors.New("this agent cannot download artifacts")
	}
	root, err := os.OpenRoot(ws)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, in := range inputs {
		if err := checkArtifactPath(in.GetFile().GetPath()); err != nil {
			return err
		}
	}
	placed, err := placeInputs(inputs, out)
	if err != nil {
		return err
	}
	for _, p := range placed {
		af := p.file
		if af.GetSize() < 0 {
			return fmt.Errorf("%s: negative size", af.GetPath())
		}
		fmt.Fprintf(out, "kiln: downloading artifact %s from %s (%d bytes, sha256 %.12s)\n", af.GetPath(), p.step, af.GetSize(), af.GetSha256())
		if err := downloadInput(ctx, root, af, fetch); err != nil {
			return fmt.Errorf("%s: %w", af.GetPath(), err)
		}
	}
	if len(placed) > 0 {
		fmt.Fprintf(out, "kiln: downloaded %d artifacts\n", len(placed))
	}
	return nil
}

// placedInput is an input artifact with the workspace path it is written
// to (file.path) and the step it comes from.
type placedInput struct {
	step string
	file *kilnv1.ArtifactFile
}

// placeInputs decides where each input goes, deterministically whatever
// the order of the inputs: a path that one needed step produced (or that
// several produced with the same content) is written at that path once.
// A path that several steps produced with different content (the legs
// of a matrix writing the same report, say) is written once per step at
// STEP/PATH and not at PATH, with a kiln: line saying so; silently
// keeping one of them would make the result depend on the order. A
// STEP/PATH that another input also claims is an error.
func placeInputs(inputs []*kilnv1.Artifact, out io.Writer) ([]placedInput, error) {
	byPath := map[string][]*kilnv1.Artifact{}
	var paths []string
	for _, in := range inputs {
		p := in.GetFile().GetPath()
		if _, ok := byPath[p]; !ok {
			paths = append(paths, p)
		}
		byPath[p] = append(byPath[p], in)
	}
	slices.Sort(paths)
	var placed []placedInput
	claimed := map[string]string{} // workspace path → step
	claim := func(dst, step string, af *kilnv1.ArtifactFile) error {
		if other, ok := claimed[dst]; ok {
			return fmt.Errorf("%s: both %s and %s put an artifact there; rename one of them", dst, other, step)
		}
		claimed[dst] = step
		f := proto.Clone(af).(*kilnv1.ArtifactFile)
		f.Path = dst
		placed = append(placed, placedInput{step: step, file: f})
		return nil
	}
	for _, p := range paths {
		ins := byPath[p]
		slices.SortFunc(ins, func(a, b *kilnv1.Artifact) int { return strings.Compare(a.GetStep(), b.GetStep()) })
		same := true
		for _, in := range ins[1:] {
			if in.GetFile().GetSha256() != ins[0].GetFile().GetSha256() || in.GetFile().GetMode() != ins[0].GetFile().GetMode() {
				same = false
			}
		}
		if same {
			if err := claim(p, ins[0].GetStep(), ins[0].GetFile()); err != nil {
				return nil, err
			}
			continue
		}
		steps := make([]string, len(ins))
		for i, in := range ins {
			steps[i] = in.GetStep()
		}
		fmt.Fprintf(out, "kiln: artifact %s differs between steps %s: each is written to STEP/%s\n", p, strings.Join(steps, ", "), p)
		for _, in := range ins {
			dst := in.GetStep() + "/" + p
			if err := checkArtifactPath(dst); err != nil {
				return nil, err
			}
			if err := claim(dst, in.GetStep(), in.GetFile()); err != nil {
				return nil, err
			}
		}
	}
	return placed, nil
}

func downloadInput(ctx context.Context, root *os.Root, af *kilnv1.ArtifactFile, fetch func(ctx context.Context, sha string, w io.Writer) error) error {
	parts := strings.Split(af.GetPath(), "/")
	dir := ""
	for _, part := range parts[:len(parts)-1] {
		dir = filepath.Join(dir, part)
		fi, err := root.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := root.Mkdir(dir, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory (symbolic links are not followed)", filepath.ToSlash(dir))
		}
	}
	rel := filepath.FromSlash(af.GetPath())
	if fi, err := root.Lstat(rel); err == nil {
		if !fi.Mode().IsRegular() {
			return errors.New("exists and is not a regular file (symbolic links are not written through)")
		}
		if err := root.Remove(rel); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	perm := fs.FileMode(af.GetMode()).Perm() | 0o600
	f, err := root.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			_ = root.Remove(rel)
		}
	}()
	h := sha256.New()
	lw := &limitedWriter{w: io.MultiWriter(f, h), n: af.GetSize()}
	if err := fetch(ctx, af.GetSha256(), lw); err != nil {
		return err
	}
	if got := af.GetSize() - lw.n; got != af.GetSize() {
		return fmt.Errorf("got %d bytes, want %d", got, af.GetSize())
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != af.GetSha256() {
		return fmt.Errorf("sha256 mismatch: got %s, want %s", got, af.GetSha256())
	}
	if err := f.Chmod(perm); err != nil { // the umask may have cleared bits
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	ok = true
	return nil
}
