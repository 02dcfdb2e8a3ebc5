// Package s3store is a blob store (blobstore.Backend) on an S3-compatible
// object store bucket that every coordinator of a cluster shares. A blob is
// the object "sha256/<first two hex digits>/<full hex digest>".
//
// Put never stores unverified content: the input is streamed to a local
// temporary file while it is hashed, its size and SHA-256 are checked, and
// only then is the file uploaded with PutObject (its size known, so the
// client needs no in-memory buffer beyond a part). A blob already in the
// bucket is not uploaded again unless its LastModified is older than
// RefreshAfter: the upload then rewrites the identical content, which makes
// the object young again so that the garbage collector's grace period
// (which must be longer than RefreshAfter) covers the re-upload until its
// registration is committed.
//
// Delete(sha, notAfter) removes the object only when its LastModified is
// not after notAfter. S3 has no conditional delete, so Delete and Put are
// ordered by a mutex of this process only; the coordinator therefore runs
// the garbage collector on the leader, which is also the only node that
// accepts uploads.
package s3store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
)

// Environment variables holding the credentials (never flags: a flag value
// shows in ps).
const (
	EnvAccessKey = "KILN_S3_ACCESS_KEY"
	EnvSecretKey = "KILN_S3_SECRET_KEY"
)

// Defaults.
const (
	DefaultRefreshAfter = 10 * time.Minute
	// requestTimeout bounds a metadata request (Has, Size, Delete, bucket
	// checks); transfers are bounded by their caller's context.
	requestTimeout = 30 * time.Second
	hasCacheTTL    = 30 * time.Second
	hasCacheMax    = 10000
	keyPrefix      = "sha256/"
)

// Config configures a Store.
type Config struct {
	// Endpoint is host[:port] of the S3 API, without a scheme.
	Endpoint string
	Bucket   string
	Region   string
	// AccessKey and SecretKey (from EnvAccessKey and EnvSecretKey).
	AccessKey, SecretKey string
	// Insecure uses plain HTTP instead of TLS (loopback tests only).
	Insecure bool
	// TempDir holds uploads while they are verified (created if missing).
	TempDir string
	// MaxBlobSize bounds every blob (blobstore.DefaultMaxBlobSize when 0).
	MaxBlobSize int64
	// RefreshAfter is the age above which a Put of an existing blob
	// uploads it again to refresh its LastModified (default 10m).
	RefreshAfter time.Duration
}

// CredentialsFromEnv fills the credentials from the environment.
func (c *Config) CredentialsFromEnv() {
	c.AccessKey = os.Getenv(EnvAccessKey)
	c.SecretKey = os.Getenv(EnvSecretKey)
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	switch {
	case c.Endpoint == "":
		return errors.New("s3-endpoint: must not be empty with --blob-store s3")
	case strings.Contains(c.Endpoint, "://") || strings.Contains(c.Endpoint, "/"):
		return fmt.Errorf("s3-endpoint: %q must be host[:port] without a scheme or path (use --s3-insecure for plain HTTP)", c.Endpoint)
	case c.Bucket == "":
		return errors.New("s3-bucket: must not be empty with --blob-store s3")
	case c.AccessKey == "":
		return fmt.Errorf("s3 access key: set %s", EnvAccessKey)
	case c.SecretKey == "":
		return fmt.Errorf("s3 secret key: set %s", EnvSecretKey)
	case c.TempDir == "":
		return errors.New("s3 temp dir: must not be empty")
	case c.RefreshAfter < 0:
		return fmt.Errorf("s3 refresh-after: %s is negative", c.RefreshAfter)
	}
	return nil
}

// Store is a blob store on a bucket. It is safe for concurrent use.
type Store struct {
	cfg    Config
	client *minio.Client

	// mu orders Delete against the existence check of Put.
	mu sync.Mutex

	cacheMu sync.Mutex
	present map[string]time.Time // positive Has results and when they expire
}

var _ blobstore.Backend = (*Store)(nil)

// Open connects to the bucket, creating it when missing.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.MaxBlobSize <= 0 {
		cfg.MaxBlobSize = blobstore.DefaultMaxBlobSize
	}
	if cfg.RefreshAfter == 0 {
		cfg.RefreshAfter = DefaultRefreshAfter
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.TempDir, 0o750); err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	if ents, err := os.ReadDir(cfg.TempDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "put-") {
				_ = os.Remove(cfg.TempDir + string(os.PathSeparator) + e.Name())
			}
		}
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: !cfg.Insecure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	s := &Store{cfg: cfg, client: client, present: map[string]time.Time{}}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	ok, err := client.BucketExists(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("s3store: bucket %s at %s: %w", cfg.Bucket, cfg.Endpoint, err)
	}
	if !ok {
		err := client.MakeBucket(ctx, cfg.Bucket, minio.MakeBucketOptions{Region: cfg.Region})
		if err != nil {
			// Another coordinator may have created it meanwhile.
			if exists, eerr := client.BucketExists(ctx, cfg.Bucket); eerr != nil || !exists {
				return nil, fmt.Errorf("s3store: create bucket %s: %w", cfg.Bucket, err)
			}
		}
	}
	return s, nil
}

// Key is the object key of a (valid) digest.
func Key(sha string) string { return keyPrefix + sha[:2] + "/" + sha }

// MaxBlobSize is the largest blob the store accepts.
func (s *Store) MaxBlobSize() int64 { return s.cfg.MaxBlobSize }

// Shared is true: every coordinator uses the same bucket.
func (s *Store) Shared() bool { return true }

func isNotFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == minio.NoSuchKey || code == "NotFound" || code == minio.NoSuchBucket
}

// stat returns the object's metadata; ErrNotFound when missing.
func (s *Store) stat(ctx context.Context, sha string) (minio.ObjectInfo, error) {
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, Key(sha), minio.StatObjectOptions{})
	if err != nil {
		if isNotFound(err) {
			return info, blobstore.ErrNotFound
		}
		return info, fmt.Errorf("s3store: stat %s: %w", sha, err)
	}
	return info, nil
}

func (s *Store) cached(sha string) bool {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	exp, ok := s.present[sha]
	if ok && time.Now().After(exp) {
		delete(s.present, sha)
		return false
	}
	return ok
}

func (s *Store) remember(sha string, present bool) {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if !present {
		delete(s.present, sha)
		return
	}
	if len(s.present) >= hasCacheMax {
		clear(s.present)
	}
	s.present[sha] = time.Now().Add(hasCacheTTL)
}

// Has reports whether the bucket holds the blob. Positive answers are
// cached briefly; an error of the object store counts as absent.
func (s *Store) Has(sha string) bool {
	if !blobstore.ValidDigest(sha) {
		return false
	}
	if s.cached(sha) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	_, err := s.stat(ctx, sha)
	s.remember(sha, err == nil)
	return err == nil
}

// Size returns the size of a stored blob.
func (s *Store) Size(sha string) (int64, error) {
	if !blobstore.ValidDigest(sha) {
		return 0, blobstore.ErrInvalidDigest
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	info, err := s.stat(ctx, sha)
	if err != nil {
		return 0, err
	}
	return info.Size, nil
}

// Open opens a stored blob for reading and returns its size.
func (s *Store) Open(sha string) (io.ReadCloser, int64, error) {
	if !blobstore.ValidDigest(sha) {
		return nil, 0, blobstore.ErrInvalidDigest
	}
	obj, err := s.client.GetObject(context.Background(), s.cfg.Bucket, Key(sha), minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("s3store: get %s: %w", sha, err)
	}
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		if isNotFound(err) {
			s.remember(sha, false)
			return nil, 0, blobstore.ErrNotFound
		}
		return nil, 0, fmt.Errorf("s3store: get %s: %w", sha, err)
	}
	return obj, info.Size, nil
}

// Put verifies exactly size bytes of r against sha in a local temporary
// file, then uploads them unless the bucket already holds a recent copy.
// Errors are those of blobstore.Store.Put; nothing is uploaded on a
// mismatch.
func (s *Store) Put(ctx context.Context, r io.Reader, size int64, sha string) (created bool, err error) {
	if !blobstore.ValidDigest(sha) {
		return false, blobstore.ErrInvalidDigest
	}
	if size < 0 {
		return false, fmt.Errorf("%w: negative size %d", blobstore.ErrSizeMismatch, size)
	}
	if size > s.cfg.MaxBlobSize {
		return false, fmt.Errorf("%w: %d bytes is above the limit of %d", blobstore.ErrTooLarge, size, s.cfg.MaxBlobSize)
	}
	tmp, err := os.CreateTemp(s.cfg.TempDir, "put-*")
	if err != nil {
		return false, fmt.Errorf("s3store: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if err := blobstore.Verify(blobstore.CtxReader(ctx, r), size, sha, tmp); err != nil {
		return false, err
	}
	// Verified: only now may the content reach the bucket.
	s.mu.Lock()
	defer s.mu.Unlock()
	info, err := s.stat(ctx, sha)
	switch {
	case err == nil && time.Since(info.LastModified) < s.cfg.RefreshAfter:
		s.remember(sha, true)
		return false, nil
	case err != nil && !errors.Is(err, blobstore.ErrNotFound):
		return false, err
	}
	existed := err == nil
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return false, fmt.Errorf("s3store: %w", err)
	}
	if _, err := s.client.PutObject(ctx, s.cfg.Bucket, Key(sha), tmp, size, minio.PutObjectOptions{
		ContentType: "application/octet-stream",
	}); err != nil {
		return false, fmt.Errorf("s3store: put %s: %w", sha, err)
	}
	s.remember(sha, true)
	return !existed, nil
}

// List returns every blob in the bucket with its LastModified, sorted by
// digest (the listing order). Keys that are not blobs are ignored.
func (s *Store) List() ([]blobstore.Info, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out []blobstore.Info
	for obj := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: keyPrefix, Recursive: true}) {
		if obj.Err != nil {
			return nil, fmt.Errorf("s3store: list: %w", obj.Err)
		}
		sha := obj.Key[strings.LastIndexByte(obj.Key, '/')+1:]
		if !blobstore.ValidDigest(sha) || obj.Key != Key(sha) {
			continue
		}
		out = append(out, blobstore.Info{Sha256: sha, Size: obj.Size, ModTime: obj.LastModified})
	}
	return out, nil
}

// Delete removes a blob unless its LastModified is after notAfter, and
// reports whether it removed it and its size. A missing blob is not an
// error (false).
func (s *Store) Delete(sha string, notAfter time.Time) (deleted bool, size int64, err error) {
	if !blobstore.ValidDigest(sha) {
		return false, 0, blobstore.ErrInvalidDigest
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	info, err := s.stat(ctx, sha)
	if errors.Is(err, blobstore.ErrNotFound) {
		s.remember(sha, false)
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	if info.LastModified.After(notAfter) {
		return false, 0, nil
	}
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, Key(sha), minio.RemoveObjectOptions{}); err != nil {
		if isNotFound(err) {
			s.remember(sha, false)
			return false, 0, nil
		}
		return false, 0, fmt.Errorf("s3store: delete %s: %w", sha, err)
	}
	s.remember(sha, false)
	return true, info.Size, nil
}
