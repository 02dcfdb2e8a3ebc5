// Package logstore keeps job logs on a coordinator's disk, outside the
// Raft log: one append-only segment file per job attempt under
// DATA_DIR/logs/<job>/<attempt>.log, chunks addressed by their seq.
//
// A segment holds chunks 1..last with no gaps. Appending a chunk whose seq
// is already stored is a no-op (the agent resends unacknowledged chunks
// after a reconnect, and one attempt's chunk n always has the same bytes:
// one agent produces it and keeps it until acknowledged), so a re-append
// is idempotent; a chunk beyond last+1 is refused with ErrGap. An append
// is written and fsynced before it returns: what a coordinator answered
// "stored" survives a crash.
//
// Each record is a 24-byte header (seq, time, length, CRC-32C over the
// header's first 20 bytes and the data) and the data. Opening a segment
// reads it once, checks every record and truncates a torn tail (a record
// cut short by a crash, never acknowledged), and keeps a small index in
// memory: per chunk its offset and the running byte count, line count and
// chain digest (Totals), which the leader puts in the Raft record that
// commits the chunks.
package logstore

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxChunkBytes is the largest chunk the store accepts (the agent
// protocol's limit).
const MaxChunkBytes = 1 << 20

const headerSize = 24

// Errors; test with errors.Is.
var (
	// ErrGap: the chunk's seq is beyond the segment's last seq + 1.
	ErrGap = errors.New("log chunk is not the next one")
	// ErrInvalid: a malformed chunk or job id.
	ErrInvalid = errors.New("invalid log chunk")
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Totals describe a log's chunks 1..Seq.
type Totals struct {
	Seq   uint64
	Bytes uint64
	// Lines counts newline-terminated lines and a final unterminated one.
	Lines uint64
	// Digest is the chain digest: d(0) = 32 zero bytes, d(n) =
	// sha256(d(n-1) || data of chunk n).
	Digest [32]byte
}

// entry is the in-memory index of one stored chunk.
type entry struct {
	off    int64 // offset of the data (after the header)
	n      uint32
	time   int64
	bytes  uint64 // cumulative through this chunk
	nl     uint64 // cumulative newline count
	lastNL bool   // the log through this chunk ends with '\n'
	digest [32]byte
}

// segment is one job attempt's file and index. entries[i] is chunk i+1.
type segment struct {
	mu      sync.Mutex
	path    string
	loaded  bool
	size    int64
	entries []entry
	// dropped: the segment left the cache (evicted or deleted); whoever
	// locks it afterwards takes the cache's current one instead, so one
	// file never has two writers.
	dropped bool
}

// MaxCachedSegments bounds the segment indexes kept in memory; an evicted
// one is read from disk again on its next use.
const MaxCachedSegments = 1024

type key struct {
	job     string
	attempt uint32
}

// Store is one coordinator's log store. It is safe for concurrent use.
type Store struct {
	dir string

	mu      sync.Mutex
	segs    map[key]*segment
	changed chan struct{}
	// maxCached is MaxCachedSegments (lower in tests).
	maxCached int
}

// Open returns the store rooted at dir, creating dir if needed. Segments
// are read lazily, on first use.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("create log store %s: %w", dir, err)
	}
	return &Store{dir: dir, segs: map[key]*segment{}, changed: make(chan struct{}), maxCached: MaxCachedSegments}, nil
}

// Dir is the store's root directory.
func (s *Store) Dir() string { return s.dir }

// Changed returns a channel closed at the next append that stores a new
// chunk (of any job). Take it before checking what the store holds.
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *Store) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// jobDir is the directory of a job's segments: the job id with every byte
// outside [A-Za-z0-9_-] and every leading '.' escaped as %XX, so no id can
// name a path outside the store.
func (s *Store) jobDir(jobID string) (string, error) {
	if jobID == "" || len(jobID) > 512 {
		return "", fmt.Errorf("job id of %d bytes: %w", len(jobID), ErrInvalid)
	}
	var b strings.Builder
	for i := 0; i < len(jobID); i++ {
		c := jobID[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-', c == '.' && i > 0:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return filepath.Join(s.dir, b.String()), nil
}

// segment returns the loaded segment of an attempt, locked; the caller
// unlocks seg.mu.
func (s *Store) segment(jobID string, attempt uint32) (*segment, error) {
	if attempt == 0 {
		return nil, fmt.Errorf("job %q: attempt 0: %w", jobID, ErrInvalid)
	}
	dir, err := s.jobDir(jobID)
	if err != nil {
		return nil, err
	}
	k := key{jobID, attempt}
	for {
		s.mu.Lock()
		seg, ok := s.segs[k]
		if !ok {
			s.evict()
			seg = &segment{path: filepath.Join(dir, strconv.FormatUint(uint64(attempt), 10)+".log")}
			s.segs[k] = seg
		}
		s.mu.Unlock()
		seg.mu.Lock()
		if seg.dropped {
			seg.mu.Unlock()
			continue
		}
		if err := seg.load(); err != nil {
			seg.mu.Unlock()
			return nil, err
		}
		return seg, nil
	}
}

// evict drops idle segments from a full cache (s.mu held). A segment in
// use is skipped: its lock is held.
func (s *Store) evict() {
	for k, seg := range s.segs {
		if len(s.segs) < s.maxCached {
			return
		}
		if seg.mu.TryLock() {
			seg.dropped = true
			delete(s.segs, k)
			seg.mu.Unlock()
		}
	}
}

// load reads the segment file once (seg.mu held), truncating a torn tail.
func (seg *segment) load() error {
	if seg.loaded {
		return nil
	}
	f, err := os.Open(seg.path)
	if errors.Is(err, os.ErrNotExist) {
		seg.loaded = true
		return nil
	}
	if err != nil {
		return fmt.Errorf("open log segment: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 256<<10)
	var (
		off  int64
		hdr  [headerSize]byte
		data []byte
		ents []entry
	)
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			break // EOF or a torn header
		}
		seq := binary.BigEndian.Uint64(hdr[0:8])
		n := binary.BigEndian.Uint32(hdr[16:20])
		if seq != uint64(len(ents))+1 || n > MaxChunkBytes {
			break
		}
		if cap(data) < int(n) {
			data = make([]byte, n)
		}
		data = data[:n]
		if _, err := io.ReadFull(r, data); err != nil {
			break
		}
		crc := crc32.Update(crc32.Checksum(hdr[:20], crcTable), crcTable, data)
		if crc != binary.BigEndian.Uint32(hdr[20:24]) {
			break
		}
		ents = append(ents, next(ents, off+headerSize, int64(binary.BigEndian.Uint64(hdr[8:16])), data))
		off += headerSize + int64(n)
	}
	if st, err := f.Stat(); err == nil && st.Size() > off {
		// A record cut short or damaged by a crash: it was never
		// acknowledged (appends answer after fsync), so drop it and what
		// follows.
		if err := os.Truncate(seg.path, off); err != nil {
			return fmt.Errorf("truncate torn log segment %s: %w", seg.path, err)
		}
	}
	seg.entries, seg.size, seg.loaded = ents, off, true
	return nil
}

// next is the index entry of a chunk appended after ents.
func next(ents []entry, off, t int64, data []byte) entry {
	var prev entry
	if len(ents) > 0 {
		prev = ents[len(ents)-1]
	}
	e := entry{off: off, n: uint32(len(data)), time: t, bytes: prev.bytes + uint64(len(data)), lastNL: prev.lastNL}
	e.nl = prev.nl
	for _, c := range data {
		if c == '\n' {
			e.nl++
		}
	}
	if len(data) > 0 {
		e.lastNL = data[len(data)-1] == '\n'
	}
	h := sha256.New()
	h.Write(prev.digest[:])
	h.Write(data)
	copy(e.digest[:], h.Sum(nil))
	return e
}

// Append stores chunks of one job attempt, in seq order. Chunks already
// stored are skipped. It returns the segment's last seq afterwards; when a
// chunk's seq is beyond last+1 the chunks before it are stored and the
// error is ErrGap. The new chunks are fsynced before Append returns.
func (s *Store) Append(jobID string, attempt uint32, chunks []*kilnv1.LogChunk) (uint64, error) {
	seg, err := s.segment(jobID, attempt)
	if err != nil {
		return 0, err
	}
	defer seg.mu.Unlock()
	last := uint64(len(seg.entries))
	var (
		buf     []byte
		added   []entry
		gapErr  error
		entries = seg.entries
	)
	for _, c := range chunks {
		if c.GetJobId() != jobID || c.GetAttempt() != attempt {
			return last, fmt.Errorf("chunk of job %q attempt %d in an append to job %q attempt %d: %w",
				c.GetJobId(), c.GetAttempt(), jobID, attempt, ErrInvalid)
		}
		if len(c.GetData()) > MaxChunkBytes {
			return last, fmt.Errorf("chunk of %d bytes; the limit is %d: %w", len(c.GetData()), MaxChunkBytes, ErrInvalid)
		}
		want := uint64(len(entries)) + 1
		if c.GetSeq() < want {
			continue
		}
		if c.GetSeq() > want {
			gapErr = fmt.Errorf("job %q attempt %d: chunk %d after %d: %w", jobID, attempt, c.GetSeq(), want-1, ErrGap)
			break
		}
		var hdr [headerSize]byte
		binary.BigEndian.PutUint64(hdr[0:8], c.GetSeq())
		binary.BigEndian.PutUint64(hdr[8:16], uint64(c.GetTimeUnixMs()))
		binary.BigEndian.PutUint32(hdr[16:20], uint32(len(c.GetData())))
		binary.BigEndian.PutUint32(hdr[20:24], crc32.Update(crc32.Checksum(hdr[:20], crcTable), crcTable, c.GetData()))
		e := next(entries, seg.size+int64(len(buf))+headerSize, c.GetTimeUnixMs(), c.GetData())
		buf = append(buf, hdr[:]...)
		buf = append(buf, c.GetData()...)
		entries = append(entries, e)
		added = append(added, e)
	}
	if len(added) > 0 {
		if err := seg.write(buf); err != nil {
			return last, err
		}
		seg.entries = entries
		last = uint64(len(entries))
		s.notify()
	}
	return last, gapErr
}

// write appends buf to the file and fsyncs it (seg.mu held); on failure
// the file is cut back to its previous size.
func (seg *segment) write(buf []byte) error {
	if seg.size == 0 {
		if err := os.MkdirAll(filepath.Dir(seg.path), 0o750); err != nil {
			return fmt.Errorf("create log directory: %w", err)
		}
	}
	f, err := os.OpenFile(seg.path, os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("open log segment: %w", err)
	}
	_, err = f.WriteAt(buf, seg.size)
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		_ = f.Truncate(seg.size)
		f.Close()
		return fmt.Errorf("write log segment %s: %w", seg.path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close log segment %s: %w", seg.path, err)
	}
	seg.size += int64(len(buf))
	return nil
}

// Last returns the last seq stored for a job attempt (0: none).
func (s *Store) Last(jobID string, attempt uint32) (uint64, error) {
	seg, err := s.segment(jobID, attempt)
	if err != nil {
		return 0, err
	}
	defer seg.mu.Unlock()
	return uint64(len(seg.entries)), nil
}

// HoldsThrough reports, from the segment file's size alone (no read),
// whether it holds chunks 1..seq whose data is bytes long: a record is a
// 24-byte header and the data, so such a file is at least bytes + 24*seq
// long. The catch-up uses it to skip a complete log without reading it;
// a damaged file is still found when the segment is next opened.
func (s *Store) HoldsThrough(jobID string, attempt uint32, seq, bytes uint64) bool {
	dir, err := s.jobDir(jobID)
	if err != nil || attempt == 0 {
		return false
	}
	st, err := os.Stat(filepath.Join(dir, strconv.FormatUint(uint64(attempt), 10)+".log"))
	return err == nil && uint64(st.Size()) >= bytes+headerSize*seq
}

// Totals returns the byte and line counts and chain digest of chunks
// 1..seq, which must be stored (seq 0 gives zero totals).
func (s *Store) Totals(jobID string, attempt uint32, seq uint64) (Totals, error) {
	seg, err := s.segment(jobID, attempt)
	if err != nil {
		return Totals{}, err
	}
	defer seg.mu.Unlock()
	if seq > uint64(len(seg.entries)) {
		return Totals{}, fmt.Errorf("job %q attempt %d: totals through %d, stored through %d: %w", jobID, attempt, seq, len(seg.entries), ErrGap)
	}
	if seq == 0 {
		return Totals{}, nil
	}
	e := seg.entries[seq-1]
	t := Totals{Seq: seq, Bytes: e.bytes, Lines: e.nl, Digest: e.digest}
	if e.bytes > 0 && !e.lastNL {
		t.Lines++
	}
	return t, nil
}

// Read returns the stored chunks with afterSeq < seq <= throughSeq in seq
// order, stopping once maxBytes of data are read (at least one chunk is
// returned when there is one; maxBytes <= 0: no limit). It returns fewer
// than asked when the store holds fewer: compare with Last.
func (s *Store) Read(jobID string, attempt uint32, afterSeq, throughSeq uint64, maxBytes int) ([]*kilnv1.LogChunk, error) {
	seg, err := s.segment(jobID, attempt)
	if err != nil {
		return nil, err
	}
	if throughSeq > uint64(len(seg.entries)) {
		throughSeq = uint64(len(seg.entries))
	}
	if afterSeq >= throughSeq {
		seg.mu.Unlock()
		return nil, nil
	}
	var want []entry
	total := 0
	for seq := afterSeq + 1; seq <= throughSeq; seq++ {
		e := seg.entries[seq-1]
		if maxBytes > 0 && len(want) > 0 && total+int(e.n) > maxBytes {
			break
		}
		want = append(want, e)
		total += int(e.n)
	}
	seg.mu.Unlock()
	// Stored records never change, so they are read without the lock.
	f, err := os.Open(seg.path)
	if err != nil {
		return nil, fmt.Errorf("open log segment: %w", err)
	}
	defer f.Close()
	first := want[0].off
	end := want[len(want)-1].off + int64(want[len(want)-1].n)
	buf := make([]byte, end-first)
	if _, err := f.ReadAt(buf, first); err != nil {
		return nil, fmt.Errorf("read log segment %s: %w", seg.path, err)
	}
	out := make([]*kilnv1.LogChunk, len(want))
	for i, e := range want {
		o := e.off - first
		out[i] = &kilnv1.LogChunk{JobId: jobID, Attempt: attempt, Seq: afterSeq + uint64(i) + 1,
			Data: buf[o : o+int64(e.n) : o+int64(e.n)], TimeUnixMs: e.time}
	}
	return out, nil
}

// Delete removes every stored attempt of a job, on disk and in memory.
// Build expiry calls it once the job's build is removed from the state,
// when nothing appends to the job any more (an append racing Delete may be
// lost with it); a later append starts a new segment.
func (s *Store) Delete(jobID string) error {
	dir, err := s.jobDir(jobID)
	if err != nil {
		return err
	}
	s.mu.Lock()
	var segs []*segment
	for k, seg := range s.segs {
		if k.job == jobID {
			segs = append(segs, seg)
			delete(s.segs, k)
		}
	}
	s.mu.Unlock()
	// Wait for appends or loads in progress on the dropped segments.
	for _, seg := range segs {
		seg.mu.Lock()
	}
	err = os.RemoveAll(dir)
	for _, seg := range segs {
		seg.entries, seg.dropped = nil, true
		seg.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("delete log of job %q: %w", jobID, err)
	}
	return nil
}

// Jobs returns the ids of the jobs with a directory in the store, so that
// a sweep can delete the logs of jobs the state no longer has (a node
// restored from a snapshot never applies the removal of the builds the
// snapshot no longer holds).
func (s *Store) Jobs() ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("list log store %s: %w", s.dir, err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		id, err := url.PathUnescape(e.Name())
		if err != nil {
			continue // not a directory this store made
		}
		out = append(out, id)
	}
	return out, nil
}
