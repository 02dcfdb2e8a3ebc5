package logstore

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func chunks(job string, attempt uint32, from, to uint64) []*kilnv1.LogChunk {
	var out []*kilnv1.LogChunk
	for s := from; s <= to; s++ {
		out = append(out, &kilnv1.LogChunk{JobId: job, Attempt: attempt, Seq: s, Data: []byte(fmt.Sprintf("line %d\n", s)), TimeUnixMs: int64(s)})
	}
	return out
}

func TestAppendReadIdempotentAndGap(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if last, err := s.Append("1.a", 1, chunks("1.a", 1, 1, 3)); err != nil || last != 3 {
		t.Fatalf("append 1..3: last %d, %v", last, err)
	}
	// A resend overlapping what is stored only adds the new chunks.
	if last, err := s.Append("1.a", 1, chunks("1.a", 1, 2, 5)); err != nil || last != 5 {
		t.Fatalf("append 2..5: last %d, %v", last, err)
	}
	// A gap stores nothing beyond it.
	if last, err := s.Append("1.a", 1, chunks("1.a", 1, 7, 8)); !errors.Is(err, ErrGap) || last != 5 {
		t.Fatalf("append 7..8: last %d, %v; want 5, ErrGap", last, err)
	}
	got, err := s.Read("1.a", 1, 1, 100, 0)
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for i, c := range got {
		if c.GetSeq() != uint64(i+2) || c.GetTimeUnixMs() != int64(i+2) {
			t.Fatalf("chunk %d: seq %d time %d", i, c.GetSeq(), c.GetTimeUnixMs())
		}
		text.Write(c.GetData())
	}
	if want := "line 2\nline 3\nline 4\nline 5\n"; text.String() != want {
		t.Fatalf("read %q, want %q", text.String(), want)
	}
	// maxBytes bounds a read, but never below one chunk.
	if got, _ := s.Read("1.a", 1, 0, 5, 1); len(got) != 1 {
		t.Fatalf("read with maxBytes 1: %d chunks", len(got))
	}
	// Attempts are separate logs.
	if last, _ := s.Last("1.a", 2); last != 0 {
		t.Fatalf("attempt 2 last %d", last)
	}
}

func TestTotalsAndDigest(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cs := []*kilnv1.LogChunk{
		{JobId: "j", Attempt: 1, Seq: 1, Data: []byte("a\nb")},
		{JobId: "j", Attempt: 1, Seq: 2, Data: []byte("c\n")},
		{JobId: "j", Attempt: 1, Seq: 3, Data: []byte("d")},
	}
	if _, err := s.Append("j", 1, cs); err != nil {
		t.Fatal(err)
	}
	var d [32]byte
	for i, want := range []struct{ bytes, lines uint64 }{{3, 2}, {5, 2}, {6, 3}} {
		h := sha256.New()
		h.Write(d[:])
		h.Write(cs[i].Data)
		copy(d[:], h.Sum(nil))
		tot, err := s.Totals("j", 1, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if tot.Bytes != want.bytes || tot.Lines != want.lines || tot.Digest != d {
			t.Fatalf("totals through %d: %+v, want bytes %d lines %d digest %x", i+1, tot, want.bytes, want.lines, d)
		}
	}
	if _, err := s.Totals("j", 1, 4); !errors.Is(err, ErrGap) {
		t.Fatalf("totals beyond the stored log: %v", err)
	}
}

func TestReopenTruncatesTornTail(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("2.b", 1, chunks("2.b", 1, 1, 4)); err != nil {
		t.Fatal(err)
	}
	want, _ := s.Totals("2.b", 1, 3)
	path := filepath.Join(dir, "2.b", "1.log")
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Cut the last record in half, as a crash during a write would.
	if err := os.Truncate(path, st.Size()-3); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if last, err := s2.Last("2.b", 1); err != nil || last != 3 {
		t.Fatalf("after reopen: last %d, %v; want 3", last, err)
	}
	if got, _ := s2.Totals("2.b", 1, 3); got != want {
		t.Fatalf("totals after reopen %+v, want %+v", got, want)
	}
	// The torn chunk is appended again and the file stays readable.
	if last, err := s2.Append("2.b", 1, chunks("2.b", 1, 4, 5)); err != nil || last != 5 {
		t.Fatalf("append after reopen: %d, %v", last, err)
	}
	s3, _ := Open(dir)
	got, err := s3.Read("2.b", 1, 0, 5, 0)
	if err != nil || len(got) != 5 || !bytes.Equal(got[4].GetData(), []byte("line 5\n")) {
		t.Fatalf("read after second reopen: %v, %v", got, err)
	}
}

func TestDeleteAndBadInput(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("3.c", 1, chunks("3.c", 1, 1, 2)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("3.c", 2, chunks("3.c", 2, 1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("3.c"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "3.c")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("job directory after delete: %v", err)
	}
	if last, _ := s.Last("3.c", 1); last != 0 {
		t.Fatalf("last after delete %d", last)
	}
	// Ids cannot escape the store's directory.
	if _, err := s.Append("../x", 1, chunks("../x", 1, 1, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "%2E.%2Fx", "1.log")); err != nil {
		t.Fatalf("escaped job directory: %v", err)
	}
	if jobs, err := s.Jobs(); err != nil || len(jobs) != 1 || jobs[0] != "../x" {
		t.Fatalf("jobs %q, %v; want [../x]", jobs, err)
	}
	for _, tc := range []struct {
		name string
		job  string
		att  uint32
		c    []*kilnv1.LogChunk
	}{
		{"empty job", "", 1, nil},
		{"attempt 0", "j", 0, nil},
		{"other job", "j", 1, chunks("k", 1, 1, 1)},
		{"too big", "j", 1, []*kilnv1.LogChunk{{JobId: "j", Attempt: 1, Seq: 1, Data: make([]byte, MaxChunkBytes+1)}}},
	} {
		if _, err := s.Append(tc.job, tc.att, tc.c); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", tc.name, err)
		}
	}
	if last, _ := s.Last("j", 1); last != 0 {
		t.Fatalf("a refused append stored something: last %d", last)
	}
}

func TestEvictedSegmentsReload(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.maxCached = 4
	for i := 0; i < 10; i++ {
		job := fmt.Sprintf("%d.a", i)
		if _, err := s.Append(job, 1, chunks(job, 1, 1, uint64(i+1))); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.segs); n > 4 {
		t.Fatalf("%d segments cached, the bound is 4", n)
	}
	for i := 0; i < 10; i++ {
		job := fmt.Sprintf("%d.a", i)
		if last, err := s.Last(job, 1); err != nil || last != uint64(i+1) {
			t.Fatalf("%s: last %d, %v; want %d", job, last, err, i+1)
		}
		// An evicted segment appends after its reloaded end.
		if last, err := s.Append(job, 1, chunks(job, 1, uint64(i+2), uint64(i+2))); err != nil || last != uint64(i+2) {
			t.Fatalf("%s: append after reload: %d, %v", job, last, err)
		}
	}
}

func TestHoldsThroughBySize(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if s.HoldsThrough("6.f", 1, 1, 7) {
		t.Fatal("a missing segment holds chunks")
	}
	// Chunks 1..3 of "line N\n": 7 bytes each.
	if _, err := s.Append("6.f", 1, chunks("6.f", 1, 1, 3)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		seq, bytes uint64
		want       bool
	}{{3, 21, true}, {2, 14, true}, {4, 28, false}, {3, 22, false}} {
		if got := s.HoldsThrough("6.f", 1, tc.seq, tc.bytes); got != tc.want {
			t.Errorf("HoldsThrough(seq %d, %d bytes) = %v, want %v", tc.seq, tc.bytes, got, tc.want)
		}
	}
}
