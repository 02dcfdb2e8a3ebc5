package blobgc

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/blobstore"
)

func put(t *testing.T, s *blobstore.Store, data string) string {
	t.Helper()
	sha := blobstore.Digest([]byte(data))
	if _, err := s.Put(context.Background(), bytes.NewReader([]byte(data)), int64(len(data)), sha); err != nil {
		t.Fatal(err)
	}
	return sha
}

func TestPassDeletesOnlyOldUnreferencedBlobs(t *testing.T) {
	dir := t.TempDir()
	s, err := blobstore.Open(dir, blobstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	age := func(sha string, d time.Duration) {
		old := time.Now().Add(-d)
		if err := os.Chtimes(filepath.Join(dir, "sha256", sha[:2], sha), old, old); err != nil {
			t.Fatal(err)
		}
	}
	ref := put(t, s, "referenced")
	age(ref, 2*time.Hour)
	stale := put(t, s, "unreferenced and old")
	age(stale, 2*time.Hour)
	young := put(t, s, "unreferenced but young")
	age(young, 10*time.Minute)

	cfg := Config{Referenced: func() map[string]bool { return map[string]bool{ref: true} }, Blobs: s, Grace: time.Hour}
	n, bytes := Pass(context.Background(), cfg)
	if n != 1 || bytes != int64(len("unreferenced and old")) {
		t.Fatalf("deleted %d blobs, %d bytes", n, bytes)
	}
	if !s.Has(ref) || s.Has(stale) || !s.Has(young) {
		t.Fatalf("has ref=%v stale=%v young=%v", s.Has(ref), s.Has(stale), s.Has(young))
	}
	// A Put of an old blob makes it young again, so it survives.
	age(young, 2*time.Hour)
	put(t, s, "unreferenced but young")
	if n, _ := Pass(context.Background(), cfg); n != 0 || !s.Has(young) {
		t.Fatalf("a re-put blob was collected (%d)", n)
	}
	// Nothing referenced any more and everything old: all gone.
	age(ref, 2*time.Hour)
	age(young, 2*time.Hour)
	cfg.Referenced = func() map[string]bool { return nil }
	if n, _ := Pass(context.Background(), cfg); n != 2 {
		t.Fatalf("deleted %d, want 2", n)
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Fatalf("left %v %v", list, err)
	}
}

func TestRunWaitsUntilReady(t *testing.T) {
	s, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	called := make(chan struct{}, 1)
	waiting := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Config{Blobs: s, Interval: time.Millisecond,
			Referenced: func() map[string]bool {
				select {
				case called <- struct{}{}:
				default:
				}
				return nil
			},
			Ready: func(ctx context.Context) error { close(waiting); <-ctx.Done(); return ctx.Err() }})
	}()
	<-waiting
	cancel()
	<-done
	select {
	case <-called:
		t.Fatal("a pass ran before the node was ready")
	default:
	}
}

// TestInactiveNodeDoesNotCollect: with a shared store only the active node
// (the leader) deletes.
func TestInactiveNodeDoesNotCollect(t *testing.T) {
	s, err := blobstore.Open(t.TempDir(), blobstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("unreferenced")
	if _, err := s.Put(context.Background(), bytes.NewReader(data), int64(len(data)), blobstore.Digest(data)); err != nil {
		t.Fatal(err)
	}
	active := false
	cfg := Config{Blobs: s, Referenced: func() map[string]bool { return nil }, Active: func() bool { return active },
		Grace: time.Nanosecond, Now: func() time.Time { return time.Now().Add(time.Hour) }}
	if n, _ := Pass(context.Background(), cfg); n != 0 {
		t.Fatalf("an inactive node deleted %d blobs", n)
	}
	active = true
	if n, _ := Pass(context.Background(), cfg); n != 1 {
		t.Fatalf("the active node deleted %d blobs, want 1", n)
	}
}
