package s3store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
)

// fake starts an S3-compatible server on loopback for the test.
func fake(t *testing.T) (endpoint string, backend *s3mem.Backend) {
	endpoint, backend, _ = fakeCounting(t)
	return endpoint, backend
}

// fakeCounting also counts the object uploads (PUT requests) it serves.
func fakeCounting(t *testing.T) (string, *s3mem.Backend, *atomic.Int64) {
	t.Helper()
	backend := s3mem.New()
	h := gofakes3.New(backend).Server()
	var puts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/sha256/") {
			puts.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), backend, &puts
}

func open(t *testing.T, endpoint string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Config{
		Endpoint: endpoint, Bucket: "kiln-blobs", Region: "us-east-1",
		AccessKey: "test-access", SecretKey: "test-secret", Insecure: true,
		TempDir: t.TempDir(), MaxBlobSize: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func put(t *testing.T, s *Store, data []byte) (string, bool) {
	t.Helper()
	sha := blobstore.Digest(data)
	created, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha)
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return sha, created
}

func TestPutOpenHasListDelete(t *testing.T) {
	endpoint, _ := fake(t)
	s := open(t, endpoint)
	data := []byte("hello s3 blob")
	sha := blobstore.Digest(data)
	if s.Has(sha) {
		t.Fatal("Has before Put")
	}
	if _, _, err := s.Open(sha); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open of a missing blob: %v", err)
	}
	if _, created := put(t, s, data); !created {
		t.Fatal("first Put: created=false")
	}
	if !s.Has(sha) {
		t.Fatal("Has after Put is false")
	}
	// A second store on the same bucket (another coordinator) sees it.
	other := open(t, endpoint)
	if !other.Has(sha) {
		t.Fatal("a second store on the bucket does not see the blob")
	}
	r, size, err := other.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("Open: %q (%d) %v, want %q", got, size, err, data)
	}
	if n, err := s.Size(sha); err != nil || n != int64(len(data)) {
		t.Fatalf("Size: %d %v", n, err)
	}
	sha2, _ := put(t, s, []byte("second"))
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("List: %v", list)
	}
	for _, b := range list {
		if b.Sha256 != sha && b.Sha256 != sha2 {
			t.Fatalf("List: unexpected %v", b)
		}
		if time.Since(b.ModTime) > time.Minute || b.ModTime.IsZero() {
			t.Fatalf("List: ModTime %v of %s", b.ModTime, b.Sha256)
		}
	}

	// Delete by age: a blob written after the cutoff stays.
	if ok, _, err := s.Delete(sha, time.Now().Add(-time.Hour)); err != nil || ok {
		t.Fatalf("Delete of a young blob: %v %v", ok, err)
	}
	if !s.Has(sha) {
		t.Fatal("a young blob was deleted")
	}
	ok, n, err := s.Delete(sha, time.Now().Add(time.Hour))
	if err != nil || !ok || n != int64(len(data)) {
		t.Fatalf("Delete of an old blob: %v %d %v", ok, n, err)
	}
	if s.Has(sha) {
		t.Fatal("Has after Delete")
	}
	if ok, _, err := s.Delete(sha, time.Now().Add(time.Hour)); err != nil || ok {
		t.Fatalf("Delete of a missing blob: %v %v", ok, err)
	}
	if list, _ := s.List(); len(list) != 1 || list[0].Sha256 != sha2 {
		t.Fatalf("List after Delete: %v", list)
	}
}

func TestMismatchNeverStored(t *testing.T) {
	endpoint, backend := fake(t)
	s := open(t, endpoint)
	data := []byte("the real content")
	sha := blobstore.Digest(data)
	ctx := context.Background()
	if _, err := s.Put(ctx, strings.NewReader("forged content!!"), int64(len(data)), sha); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("forged content: %v", err)
	}
	if _, err := s.Put(ctx, bytes.NewReader(data[:5]), int64(len(data)), sha); !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("short content: %v", err)
	}
	if _, err := s.Put(ctx, bytes.NewReader(append(data, 'x')), int64(len(data)), sha); !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("long content: %v", err)
	}
	if _, err := s.Put(ctx, bytes.NewReader(data), 2<<20, sha); !errors.Is(err, blobstore.ErrTooLarge) {
		t.Fatalf("too large: %v", err)
	}
	if _, err := s.Put(ctx, bytes.NewReader(data), int64(len(data)), "NOTHEX"); !errors.Is(err, blobstore.ErrInvalidDigest) {
		t.Fatalf("invalid digest: %v", err)
	}
	if s.Has(sha) {
		t.Fatal("unverified content was stored")
	}
	if _, err := backend.HeadObject("kiln-blobs", Key(sha)); err == nil {
		t.Fatal("the bucket holds the unverified object")
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("List: %v %v", list, err)
	}
}

func TestDuplicatePutIsNoop(t *testing.T) {
	endpoint, _, puts := fakeCounting(t)
	s := open(t, endpoint)
	data := []byte("same bytes")
	sha, created := put(t, s, data)
	if !created {
		t.Fatal("first Put: created=false")
	}
	if n := puts.Load(); n != 1 {
		t.Fatalf("%d uploads after the first Put", n)
	}
	if _, created := put(t, s, data); created {
		t.Fatal("second Put: created=true")
	}
	// A duplicate is still verified.
	if _, err := s.Put(context.Background(), strings.NewReader("other byte"), int64(len(data)), sha); !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("forged duplicate: %v", err)
	}
	if n := puts.Load(); n != 1 || !s.Has(sha) {
		t.Fatalf("the duplicate was uploaded again (%d uploads)", n)
	}
	// Concurrent puts of the same blob: exactly one creates it.
	var wg sync.WaitGroup
	var mu sync.Mutex
	creates := 0
	fresh := []byte("concurrent")
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Put(context.Background(), bytes.NewReader(fresh), int64(len(fresh)), blobstore.Digest(fresh))
			if err != nil {
				t.Error(err)
			}
			if c {
				mu.Lock()
				creates++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if creates != 1 {
		t.Fatalf("%d concurrent Puts created the blob, want 1", creates)
	}
}

func TestRefreshOldBlob(t *testing.T) {
	endpoint, _, puts := fakeCounting(t)
	s := open(t, endpoint)
	s.cfg.RefreshAfter = time.Nanosecond
	data := []byte("old blob")
	sha, _ := put(t, s, data)
	// Older than RefreshAfter: uploaded again (not created) so that it is
	// young for the garbage collector.
	if _, created := put(t, s, data); created {
		t.Fatal("refresh reported created")
	}
	if !s.Has(sha) || puts.Load() != 2 {
		t.Fatalf("after the refresh: has=%v uploads=%d, want true 2", s.Has(sha), puts.Load())
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "s3-endpoint"},
		{Config{Endpoint: "http://x:9000"}, "s3-endpoint"},
		{Config{Endpoint: "x:9000"}, "s3-bucket"},
		{Config{Endpoint: "x:9000", Bucket: "b"}, EnvAccessKey},
		{Config{Endpoint: "x:9000", Bucket: "b", AccessKey: "a"}, EnvSecretKey},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
