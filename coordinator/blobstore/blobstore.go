// Package blobstore keeps content-addressed blobs on a coordinator's local
// disk, under <dir>/sha256/<first two hex digits>/<full hex digest>.
//
// A blob is written to a temporary file in the store (copied through a
// bounded buffer, never held in memory), its size and SHA-256 are checked
// against what the writer announced, the file is fsynced and then renamed
// into place, so a blob path only ever holds complete, verified content.
// Identical content is stored once: a Put of a blob already present reads
// and verifies the input, then discards it. Concurrent Puts of the same blob
// are safe; the first rename wins and the others see the blob present.
//
// Deletion (garbage collection) is by age: Delete removes a blob only when
// its modification time is not after a cutoff. Every Put that finds the
// blob present "touches" it (sets its mtime to now) under the same lock
// Delete holds, before and after reading its input, so a Put racing a
// Delete of the same digest either sees the blob gone and writes it again,
// or makes it young so that Delete leaves it; a Put never reports success
// for a blob a concurrent Delete removed. A freshly written blob is young
// too (its mtime is its write time).
package blobstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// DefaultMaxBlobSize is the largest blob a store accepts unless configured.
const DefaultMaxBlobSize int64 = 5 << 30

// copyBufferSize bounds the memory one Put or Open uses.
const copyBufferSize = 256 << 10

// Errors of Put and Open; wrap-checked with errors.Is.
var (
	ErrInvalidDigest  = errors.New("invalid sha256: want 64 lower-case hex digits")
	ErrDigestMismatch = errors.New("content does not match its sha256")
	ErrSizeMismatch   = errors.New("content does not match its size")
	ErrTooLarge       = errors.New("blob too large")
	ErrNotFound       = errors.New("blob not found")
)

// Store is a local blob store. It is safe for concurrent use.
type Store struct {
	dir     string
	maxSize int64
	// mu orders Delete against the touches of Put.
	mu sync.Mutex
}

// Options configure a Store.
type Options struct {
	// MaxBlobSize bounds every blob (DefaultMaxBlobSize when zero).
	MaxBlobSize int64
}

// Open opens (creating) a store rooted at dir, e.g. <data dir>/blobs.
// Temporary files left by a crash are removed.
func Open(dir string, opts Options) (*Store, error) {
	if opts.MaxBlobSize <= 0 {
		opts.MaxBlobSize = DefaultMaxBlobSize
	}
	s := &Store{dir: dir, maxSize: opts.MaxBlobSize}
	if err := os.MkdirAll(s.tmpDir(), 0o750); err != nil {
		return nil, fmt.Errorf("blobstore: %w", err)
	}
	if ents, err := os.ReadDir(s.tmpDir()); err == nil {
		for _, e := range ents {
			_ = os.Remove(filepath.Join(s.tmpDir(), e.Name()))
		}
	}
	return s, nil
}

// MaxBlobSize is the largest blob the store accepts.
func (s *Store) MaxBlobSize() int64 { return s.maxSize }

func (s *Store) tmpDir() string { return filepath.Join(s.dir, "tmp") }

// ValidDigest reports whether sha is 64 lower-case hex digits.
func ValidDigest(sha string) bool {
	if len(sha) != 64 {
		return false
	}
	for _, c := range sha {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// path returns the file of a (valid) digest.
func (s *Store) path(sha string) string {
	return filepath.Join(s.dir, "sha256", sha[:2], sha)
}

// Has reports whether the blob is stored.
func (s *Store) Has(sha string) bool {
	if !ValidDigest(sha) {
		return false
	}
	_, err := os.Stat(s.path(sha))
	return err == nil
}

// Size returns the size of a stored blob.
func (s *Store) Size(sha string) (int64, error) {
	if !ValidDigest(sha) {
		return 0, ErrInvalidDigest
	}
	fi, err := os.Stat(s.path(sha))
	if errors.Is(err, os.ErrNotExist) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("blobstore: %w", err)
	}
	return fi.Size(), nil
}

// Open opens a stored blob for reading and returns its size.
func (s *Store) Open(sha string) (io.ReadCloser, int64, error) {
	if !ValidDigest(sha) {
		return nil, 0, ErrInvalidDigest
	}
	f, err := os.Open(s.path(sha))
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blobstore: %w", err)
	}
	return f, fi.Size(), nil
}

// Put stores exactly size bytes read from r as the blob sha. It fails with
// ErrSizeMismatch when r holds fewer or more bytes, ErrDigestMismatch when
// their SHA-256 is not sha, ErrTooLarge above the store's limit; nothing is
// stored then. Reading stops when ctx ends. created is false when the blob was already present.
func (s *Store) Put(ctx context.Context, r io.Reader, size int64, sha string) (created bool, err error) {
	r = ctxReader{ctx, r}
	if !ValidDigest(sha) {
		return false, ErrInvalidDigest
	}
	if size < 0 {
		return false, fmt.Errorf("%w: negative size %d", ErrSizeMismatch, size)
	}
	if size > s.maxSize {
		return false, fmt.Errorf("%w: %d bytes is above the limit of %d", ErrTooLarge, size, s.maxSize)
	}
	if s.touch(sha) {
		// Identical content is stored once; still read and verify the
		// input so that a caller streaming it sees the same errors.
		if err := verify(r, size, sha, io.Discard); err != nil {
			return false, err
		}
		if !s.touch(sha) {
			// Collected while the input was read (slower than the
			// collector's grace period): the caller must send it again.
			return false, fmt.Errorf("%w: %s was deleted by garbage collection during the put; retry", ErrNotFound, sha)
		}
		return false, nil
	}
	tmp, err := os.CreateTemp(s.tmpDir(), "put-*")
	if err != nil {
		return false, fmt.Errorf("blobstore: %w", err)
	}
	defer func() {
		if tmp != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := verify(r, size, sha, tmp); err != nil {
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		return false, fmt.Errorf("blobstore: sync: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("blobstore: close: %w", err)
	}
	final := s.path(sha)
	if err := os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
		return false, fmt.Errorf("blobstore: %w", err)
	}
	if s.touch(sha) {
		// A concurrent Put won; the content is the same.
		os.Remove(tmp.Name())
		tmp = nil
		return false, nil
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return false, fmt.Errorf("blobstore: rename: %w", err)
	}
	tmp = nil
	if d, err := os.Open(filepath.Dir(final)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return true, nil
}

// touch sets a present blob's mtime to now and reports whether it is
// present.
func (s *Store) touch(sha string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	return os.Chtimes(s.path(sha), now, now) == nil
}

// Info describes a stored blob.
type Info struct {
	Sha256 string
	Size   int64
	// ModTime is when the blob was last written or touched by a Put.
	ModTime time.Time
}

// List returns every stored blob, sorted by digest. Files whose names are
// not digests are ignored.
func (s *Store) List() ([]Info, error) {
	root := filepath.Join(s.dir, "sha256")
	dirs, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("blobstore: list: %w", err)
	}
	var out []Info
	for _, d := range dirs {
		if !d.IsDir() || len(d.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(root, d.Name()))
		if err != nil {
			return nil, fmt.Errorf("blobstore: list: %w", err)
		}
		for _, e := range ents {
			if !ValidDigest(e.Name()) || e.Name()[:2] != d.Name() || !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if errors.Is(err, os.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return nil, fmt.Errorf("blobstore: list: %w", err)
			}
			out = append(out, Info{Sha256: e.Name(), Size: fi.Size(), ModTime: fi.ModTime()})
		}
	}
	return out, nil
}

// Delete removes a blob unless it was written or touched after notAfter,
// and reports whether it removed it and the size it freed. A missing blob
// is not an error (false). It is safe against a concurrent Put of the same
// digest (see the package doc). Readers that already opened the blob keep
// reading it.
func (s *Store) Delete(sha string, notAfter time.Time) (deleted bool, size int64, err error) {
	if !ValidDigest(sha) {
		return false, 0, ErrInvalidDigest
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.path(sha)
	fi, err := os.Stat(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("blobstore: delete: %w", err)
	}
	if fi.ModTime().After(notAfter) {
		return false, 0, nil
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("blobstore: delete: %w", err)
	}
	return true, fi.Size(), nil
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// verify copies exactly size bytes of r to w and checks their digest.
func verify(r io.Reader, size int64, sha string, w io.Writer) error {
	h := sha256.New()
	buf := make([]byte, copyBufferSize)
	n, err := io.CopyBuffer(io.MultiWriter(w, h), io.LimitReader(r, size), buf)
	if err != nil {
		return fmt.Errorf("blobstore: write: %w", err)
	}
	if n != size {
		return fmt.Errorf("%w: got %d bytes, want %d", ErrSizeMismatch, n, size)
	}
	// More input than announced is an error too.
	var one [1]byte
	if m, _ := io.ReadFull(r, one[:]); m > 0 {
		return fmt.Errorf("%w: more than %d bytes", ErrSizeMismatch, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sha {
		return fmt.Errorf("%w: got %s, want %s", ErrDigestMismatch, got, sha)
	}
	return nil
}

// Digest returns the lower-case hex SHA-256 of data (tests, callers).
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return strings.ToLower(hex.EncodeToString(sum[:]))
}

// Backend is a blob store as the coordinator's services use it. *Store (the
// default, local disk, replicated to a quorum of coordinators by the blob
// service) implements it, and so does s3store.Store (an S3-compatible
// bucket that every coordinator shares). Implementations keep the
// contracts documented on *Store: Put verifies size and digest before
// anything is stored and reports created=false for a blob already present;
// Open and Size fail with ErrNotFound for a missing blob; Delete removes a
// blob only when it was not written (or touched by a Put) after notAfter.
type Backend interface {
	Put(ctx context.Context, r io.Reader, size int64, sha string) (created bool, err error)
	Open(sha string) (io.ReadCloser, int64, error)
	Has(sha string) bool
	Size(sha string) (int64, error)
	List() ([]Info, error)
	Delete(sha string, notAfter time.Time) (deleted bool, size int64, err error)
	MaxBlobSize() int64
	// Shared reports whether every coordinator uses this same store: an
	// upload is then durable once Put returns, so the blob service does
	// not replicate it to peers, peers never fetch blobs from each other,
	// and only the leader collects garbage.
	Shared() bool
}

// Shared is false: a Store is one coordinator's local disk.
func (s *Store) Shared() bool { return false }

var _ Backend = (*Store)(nil)

// Verify copies exactly size bytes of r to w, checking that there are no
// more and that their SHA-256 is sha (ErrSizeMismatch, ErrDigestMismatch).
// Other backends use it to verify content before they store it.
func Verify(r io.Reader, size int64, sha string, w io.Writer) error { return verify(r, size, sha, w) }

// CtxReader returns r that stops reading once ctx ends.
func CtxReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }
