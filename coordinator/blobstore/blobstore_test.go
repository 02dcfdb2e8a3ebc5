package blobstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(t.TempDir(), Options{MaxBlobSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutOpenHas(t *testing.T) {
	s := open(t)
	data := []byte("hello blob")
	sha := Digest(data)
	if s.Has(sha) {
		t.Fatal("Has before Put")
	}
	created, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha)
	if err != nil || !created {
		t.Fatalf("Put: created=%v err=%v", created, err)
	}
	if !s.Has(sha) {
		t.Fatal("Has after Put is false")
	}
	if _, err := os.Stat(filepath.Join(s.dir, "sha256", sha[:2], sha)); err != nil {
		t.Fatalf("blob not at its path: %v", err)
	}
	r, size, err := s.Open(sha)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if size != int64(len(data)) || !bytes.Equal(got, data) {
		t.Fatalf("Open: %q (%d), want %q", got, size, data)
	}
	if _, _, err := s.Open(Digest([]byte("other"))); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of a missing blob: %v", err)
	}
}

func TestPutRejectsBadContent(t *testing.T) {
	s := open(t)
	data := []byte("the real content")
	sha := Digest(data)
	cases := []struct {
		name string
		body []byte
		size int64
		sha  string
		want error
	}{
		{"digest mismatch", []byte("the fake content"), 16, sha, ErrDigestMismatch},
		{"short", data[:5], int64(len(data)), sha, ErrSizeMismatch},
		{"long", append(append([]byte{}, data...), 'x'), int64(len(data)), sha, ErrSizeMismatch},
		{"too large", data, 2 << 20, sha, ErrTooLarge},
		{"bad digest", data, int64(len(data)), "ABC", ErrInvalidDigest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Put(context.Background(), bytes.NewReader(tc.body), tc.size, tc.sha)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Put: %v, want %v", err, tc.want)
			}
			if s.Has(sha) {
				t.Fatal("a rejected blob was stored")
			}
		})
	}
	ents, _ := os.ReadDir(s.tmpDir())
	if len(ents) != 0 {
		t.Fatalf("temp files left: %v", ents)
	}
}

func TestDedupeAndConcurrentPuts(t *testing.T) {
	s := open(t)
	data := bytes.Repeat([]byte("abcdefgh"), 100_000)
	sha := Digest(data)
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha)
			if err != nil {
				t.Error(err)
			}
			if c {
				mu.Lock()
				created++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if created < 1 {
		t.Fatalf("no Put created the blob")
	}
	// A later Put of the same content stores nothing new.
	if c, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha); err != nil || c {
		t.Fatalf("repeat Put: created=%v err=%v", c, err)
	}
	// And still verifies its input.
	if _, err := s.Put(context.Background(), bytes.NewReader(make([]byte, len(data))), int64(len(data)), sha); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("repeat Put with other content: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, "sha256", sha[:2]))
	if len(ents) != 1 {
		t.Fatalf("%d files for one blob", len(ents))
	}
	if ents, _ := os.ReadDir(s.tmpDir()); len(ents) != 0 {
		t.Fatalf("temp files left: %v", ents)
	}
	size, err := s.Size(sha)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("Size: %d %v", size, err)
	}
}

func TestDeleteByAgeAndTouchOnPut(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("gc me")
	sha := Digest(data)
	if _, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Sha256 != sha || list[0].Size != int64(len(data)) {
		t.Fatalf("list %v %v", list, err)
	}
	// Written after the cutoff: kept.
	if ok, _, err := s.Delete(sha, time.Now().Add(-time.Hour)); ok || err != nil || !s.Has(sha) {
		t.Fatalf("young blob deleted: %v %v", ok, err)
	}
	cutoff := time.Now().Add(time.Second)
	// A Put of the present blob touches it: a Delete with an earlier cutoff keeps it.
	// Age the blob explicitly so the touch, not the clock, makes it young.
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(s.path(sha), old, old); err != nil {
		t.Fatal(err)
	}
	before := old.Add(time.Hour)
	if _, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), sha); err != nil {
		t.Fatal(err)
	}
	if ok, _, _ := s.Delete(sha, before); ok {
		t.Fatal("touched blob deleted")
	}
	ok, size, err := s.Delete(sha, cutoff)
	if !ok || err != nil || size != int64(len(data)) || s.Has(sha) {
		t.Fatalf("delete: %v %d %v", ok, size, err)
	}
	if ok, _, err := s.Delete(sha, cutoff); ok || err != nil {
		t.Fatalf("second delete: %v %v", ok, err)
	}
	if _, _, err := s.Delete("nope", cutoff); !errors.Is(err, ErrInvalidDigest) {
		t.Fatal(err)
	}
}
