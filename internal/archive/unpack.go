package archive

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Default unpack limits.
const (
	DefaultMaxBytes   int64 = 2 << 30
	DefaultMaxEntries       = 100_000
)

// Limits bound what Unpack writes.
type Limits struct {
	// MaxBytes bounds the total size of the unpacked files
	// (DefaultMaxBytes when zero).
	MaxBytes int64
	// MaxEntries bounds the number of entries (DefaultMaxEntries when zero).
	MaxEntries int
}

// ErrUnsafe is wrapped by every error about an entry Unpack refuses.
var ErrUnsafe = errors.New("unsafe archive entry")

// ErrLimit is wrapped by the errors of the size and entry limits.
var ErrLimit = errors.New("archive limit exceeded")

// Unpack extracts the tar.gz r into the existing directory dir. Regular
// files keep their permission bits (set-id and sticky bits are dropped);
// directories and files are always owner-writable. On error, dir may hold
// part of the archive, never anything outside dir.
func Unpack(r io.Reader, dir string, lim Limits) (Stats, error) {
	var st Stats
	if lim.MaxBytes <= 0 {
		lim.MaxBytes = DefaultMaxBytes
	}
	if lim.MaxEntries <= 0 {
		lim.MaxEntries = DefaultMaxEntries
	}
	root, err := filepath.Abs(dir)
	if err != nil {
		return st, err
	}
	gz, err := gzip.NewReader(r)
	if err != nil {
		return st, fmt.Errorf("not a gzip stream: %w", err)
	}
	defer gz.Close()
	tr := tar.NewReader(gz)
	entries := 0
	var total int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return st, nil
		}
		if err != nil {
			return st, fmt.Errorf("read archive: %w", err)
		}
		entries++
		if entries > lim.MaxEntries {
			return st, fmt.Errorf("%w: more than %d entries", ErrLimit, lim.MaxEntries)
		}
		rel, err := cleanName(hdr.Name)
		if err != nil {
			return st, err
		}
		if rel == "" {
			if hdr.Typeflag == tar.TypeDir {
				continue // "./"
			}
			return st, fmt.Errorf("%w: %q: empty name", ErrUnsafe, hdr.Name)
		}
		target := filepath.Join(root, filepath.FromSlash(rel))
		if err := checkParents(root, rel); err != nil {
			return st, err
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := mkdir(target, hdr); err != nil {
				return st, err
			}
		case tar.TypeReg:
			if hdr.Size < 0 || total+hdr.Size > lim.MaxBytes {
				return st, fmt.Errorf("%w: more than %d unpacked bytes", ErrLimit, lim.MaxBytes)
			}
			if err := mkParents(root, rel); err != nil {
				return st, err
			}
			if err := removeExisting(target); err != nil {
				return st, err
			}
			perm := fs.FileMode(hdr.Mode).Perm() | 0o600
			f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
			if err != nil {
				return st, fmt.Errorf("create %s: %w", rel, err)
			}
			n, err := io.Copy(f, io.LimitReader(tr, hdr.Size))
			cerr := f.Close()
			if err == nil {
				err = cerr
			}
			if err != nil {
				return st, fmt.Errorf("write %s: %w", rel, err)
			}
			if n != hdr.Size {
				return st, fmt.Errorf("write %s: archive truncated", rel)
			}
			// The umask may have cleared bits (e.g. group/other exec).
			if err := os.Chmod(target, perm); err != nil {
				return st, err
			}
			total += n
			st.Files++
			st.Bytes += n
		case tar.TypeSymlink:
			if err := checkLink(rel, hdr.Linkname); err != nil {
				return st, err
			}
			if err := mkParents(root, rel); err != nil {
				return st, err
			}
			if err := removeExisting(target); err != nil {
				return st, err
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return st, fmt.Errorf("symlink %s: %w", rel, err)
			}
			st.Files++
		case tar.TypeLink:
			return st, fmt.Errorf("%w: %q: hard links are not allowed", ErrUnsafe, hdr.Name)
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return st, fmt.Errorf("%w: %q: devices and fifos are not allowed", ErrUnsafe, hdr.Name)
		default:
			return st, fmt.Errorf("%w: %q: unsupported entry type %q", ErrUnsafe, hdr.Name, string(hdr.Typeflag))
		}
	}
}

// cleanName returns the slash-separated relative path of an entry name,
// rejecting absolute names and ".." components.
func cleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) || strings.Contains(name, `\`) {
		return "", fmt.Errorf("%w: %q: invalid name", ErrUnsafe, name)
	}
	if strings.HasPrefix(name, "/") || filepath.IsAbs(name) {
		return "", fmt.Errorf("%w: %q: absolute path", ErrUnsafe, name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("%w: %q: path leaves the workspace (..)", ErrUnsafe, name)
		}
	}
	rel := path.Clean(name)
	if rel == "." {
		return "", nil
	}
	if rel == ".." || strings.HasPrefix(rel, "../") || strings.HasPrefix(rel, "/") {
		return "", fmt.Errorf("%w: %q: path leaves the workspace", ErrUnsafe, name)
	}
	return rel, nil
}

// checkParents fails when a directory above rel is a symbolic link (or not
// a directory): writing through it could leave the workspace.
func checkParents(root, rel string) error {
	cur := root
	parts := strings.Split(rel, "/")
	for _, p := range parts[:len(parts)-1] {
		cur = filepath.Join(cur, p)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%w: %q: path goes through the symbolic link %s", ErrUnsafe, rel, strings.TrimPrefix(cur, root+string(filepath.Separator)))
		}
		if !fi.IsDir() {
			return fmt.Errorf("%w: %q: %s is not a directory", ErrUnsafe, rel, strings.TrimPrefix(cur, root+string(filepath.Separator)))
		}
	}
	return nil
}

// checkLink fails unless the link target is relative and stays inside the
// workspace when resolved from the link's directory.
func checkLink(rel, target string) error {
	if target == "" || strings.ContainsRune(target, 0) {
		return fmt.Errorf("%w: %q: empty symbolic link target", ErrUnsafe, rel)
	}
	if strings.HasPrefix(target, "/") || filepath.IsAbs(target) {
		return fmt.Errorf("%w: %q: symbolic link to an absolute path %q", ErrUnsafe, rel, target)
	}
	resolved := path.Join(path.Dir(rel), target)
	if resolved == ".." || strings.HasPrefix(resolved, "../") {
		return fmt.Errorf("%w: %q: symbolic link %q leaves the workspace", ErrUnsafe, rel, target)
	}
	return nil
}

func mkParents(root, rel string) error {
	d := path.Dir(rel)
	if d == "." {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(root, filepath.FromSlash(d)), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	return nil
}

func mkdir(target string, hdr *tar.Header) error {
	perm := fs.FileMode(hdr.Mode).Perm() | 0o700
	fi, err := os.Lstat(target)
	switch {
	case err == nil && fi.IsDir():
	case err == nil:
		return fmt.Errorf("%w: %q: exists and is not a directory", ErrUnsafe, hdr.Name)
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
	default:
		return err
	}
	return os.Chmod(target, perm)
}

// removeExisting removes a file or link that a later entry replaces; a
// directory is never replaced.
func removeExisting(target string) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%w: %s: a directory is in the way", ErrUnsafe, target)
	}
	return os.Remove(target)
}
