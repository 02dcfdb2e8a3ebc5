// Package archive packs a working copy into a tar.gz (honouring .gitignore
// and .kilnignore) and unpacks such an archive safely into a workspace.
//
// Pack archives only regular files, directories and symbolic links (as
// links), in sorted order. Inside a git work tree, with git installed, the
// file list is `git ls-files --cached --others --exclude-standard`, so
// .gitignore (and .git/info/exclude, core.excludesFile) apply exactly;
// otherwise every file except .git/ is taken. Paths matching the patterns of
// the directory's .kilnignore (see Ignore) are then dropped.
//
// Unpack never writes outside the target directory: it rejects absolute
// names, ".." components, names that go through a symbolic link, symbolic
// links whose target is absolute or leaves the directory, hard links,
// devices and fifos, and stops at the entry count and unpacked byte limits.
package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// IgnoreFile is the name of the ignore file read from the packed directory.
const IgnoreFile = ".kilnignore"

// Stats describes a packed archive.
type Stats struct {
	// Files is the number of regular files and symbolic links.
	Files int
	// Bytes is the total size of the regular files' contents.
	Bytes int64
}

// Pack writes a tar.gz of dir to w.
func Pack(dir string, w io.Writer) (Stats, error) {
	var st Stats
	fi, err := os.Stat(dir)
	if err != nil {
		return st, fmt.Errorf("archive: %w", err)
	}
	if !fi.IsDir() {
		return st, fmt.Errorf("archive: %s is not a directory", dir)
	}
	ig := &Ignore{}
	if f, err := os.Open(filepath.Join(dir, IgnoreFile)); err == nil {
		ig, err = ParseIgnore(f)
		f.Close()
		if err != nil {
			return st, fmt.Errorf("archive: %s: %w", IgnoreFile, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("archive: %w", err)
	}
	paths, err := listFiles(dir)
	if err != nil {
		return st, err
	}
	// Keep what .kilnignore does not exclude, and the directories above it.
	entries := map[string]bool{} // rel -> is dir
	for _, p := range paths {
		info, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(p.rel)))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // tracked but deleted in the working copy
			}
			return st, fmt.Errorf("archive: %w", err)
		}
		isDir := info.IsDir()
		if isDir && !p.dir {
			continue // e.g. a submodule listed by git
		}
		if ig.Excluded(p.rel, isDir) {
			continue
		}
		entries[p.rel] = isDir
		for d := path.Dir(p.rel); d != "."; d = path.Dir(d) {
			entries[d] = true
		}
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	slices.Sort(names)

	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, rel := range names {
		full := filepath.Join(dir, filepath.FromSlash(rel))
		info, err := os.Lstat(full)
		if err != nil {
			return st, fmt.Errorf("archive: %w", err)
		}
		hdr := &tar.Header{Name: rel, ModTime: info.ModTime().Truncate(time.Second), Format: tar.FormatPAX}
		mode := info.Mode()
		switch {
		case mode.IsDir():
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, rel+"/", int64(mode.Perm())
		case mode&fs.ModeSymlink != 0:
			target, err := os.Readlink(full)
			if err != nil {
				return st, fmt.Errorf("archive: %w", err)
			}
			hdr.Typeflag, hdr.Linkname, hdr.Mode = tar.TypeSymlink, target, 0o777
			st.Files++
		case mode.IsRegular():
			hdr.Typeflag, hdr.Size, hdr.Mode = tar.TypeReg, info.Size(), int64(mode.Perm())
		default:
			continue // sockets, devices, fifos are not archived
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return st, fmt.Errorf("archive: %s: %w", rel, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(full)
			if err != nil {
				return st, fmt.Errorf("archive: %w", err)
			}
			n, err := io.Copy(tw, io.LimitReader(f, hdr.Size))
			f.Close()
			if err != nil {
				return st, fmt.Errorf("archive: %s: %w", rel, err)
			}
			if n != hdr.Size {
				return st, fmt.Errorf("archive: %s changed while being packed", rel)
			}
			st.Files++
			st.Bytes += n
		}
	}
	if err := tw.Close(); err != nil {
		return st, fmt.Errorf("archive: %w", err)
	}
	if err := gz.Close(); err != nil {
		return st, fmt.Errorf("archive: %w", err)
	}
	return st, nil
}

type listed struct {
	rel string
	dir bool
}

// listFiles lists dir's files (slash-separated, relative): git's view when
// dir is in a git work tree, else a walk skipping .git.
func listFiles(dir string) ([]listed, error) {
	if git, err := exec.LookPath("git"); err == nil {
		out, err := exec.Command(git, "-C", dir, "rev-parse", "--is-inside-work-tree").Output()
		if err == nil && strings.TrimSpace(string(out)) == "true" {
			cmd := exec.Command(git, "-C", dir, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return nil, fmt.Errorf("archive: git ls-files: %v: %s", err, strings.TrimSpace(stderr.String()))
			}
			var res []listed
			seen := map[string]bool{}
			for _, p := range strings.Split(string(out), "\x00") {
				if p == "" || seen[p] {
					continue // --cached and --others may repeat (unmerged entries)
				}
				seen[p] = true
				res = append(res, listed{rel: p})
			}
			return res, nil
		}
	}
	var res []listed
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if d.Name() == ".git" {
			return nil // a worktree's .git file
		}
		res = append(res, listed{rel: rel, dir: d.IsDir()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("archive: %w", err)
	}
	return res, nil
}
