package clustertest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/logstore"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// dirBytes is the disk space the files under dir use (allocated blocks,
// so preallocated but unwritten space counts too) and their apparent size.
func dirBytes(t *testing.T, dir string) (disk, apparent int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		apparent += info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			disk += st.Blocks * 512
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return disk, apparent
}

// usedBytes is how much of the files under dir holds data: a raft-wal
// segment (*.wal) is preallocated to its full size and filled from the
// start, so what it holds ends at its last non-zero byte; other files
// count whole.
func usedBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var used int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !strings.HasSuffix(path, ".wal") {
			used += int64(len(data))
			return nil
		}
		end := len(data)
		for end > 0 && data[end-1] == 0 {
			end--
		}
		used += int64(end)
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return used
}

// waitStored waits (on the store's change events) until a node's log store
// holds chunks 1..seq of a job attempt.
func waitStored(t *testing.T, s *logstore.Store, job string, attempt uint32, seq uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		changed := s.Changed()
		last, err := s.Last(job, attempt)
		if err != nil {
			t.Fatalf("log store: %v", err)
		}
		if last >= seq {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("log store %s holds %s attempt %d through %d, want %d", s.Dir(), job, attempt, last, seq)
		}
	}
}

// checkLocalLog reads a job's whole committed log from one node's store
// and checks it against the committed counts and digest.
func checkLocalLog(t *testing.T, n *Node, j *kilnv1.Job) []byte {
	t.Helper()
	chunks, err := n.C.Logs().Store().Read(j.GetId(), j.GetAttempt(), 0, j.GetLogSeq(), 0)
	if err != nil {
		t.Fatalf("%s: read log: %v", n.ID, err)
	}
	var data []byte
	var d [32]byte
	for i, c := range chunks {
		if c.GetSeq() != uint64(i+1) {
			t.Fatalf("%s: chunk %d has seq %d", n.ID, i, c.GetSeq())
		}
		data = append(data, c.GetData()...)
		h := sha256.New()
		h.Write(d[:])
		h.Write(c.GetData())
		copy(d[:], h.Sum(nil))
	}
	if uint64(len(chunks)) != j.GetLogSeq() || uint64(len(data)) != j.GetLogBytes() || !bytes.Equal(d[:], j.GetLogDigest()) {
		t.Fatalf("%s: %d chunks, %d bytes, digest %x; committed %d chunks, %d bytes, digest %x",
			n.ID, len(chunks), len(data), d, j.GetLogSeq(), j.GetLogBytes(), j.GetLogDigest())
	}
	return data
}

// TestBigLogLeavesRaftSmall: a job printing 2 million lines (about 14 MB)
// grows no node's raft/ directory by more than 4 MB; every node ends up
// holding the exact log in its log store.
func TestBigLogLeavesRaftSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("prints 14 MB through a 3-node cluster")
	}
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 1)
	// Warm up: the first build creates the WAL segments and node records.
	if got := waitBuild(t, c, submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "true"}).GetId(), 20*time.Second); got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("warm-up build %s", got.GetState())
	}
	before, usedBefore := map[string]int64{}, map[string]int64{}
	for _, n := range c.Nodes {
		disk, _ := dirBytes(t, filepath.Join(n.DataDir, "raft"))
		before[n.ID] = disk
		usedBefore[n.ID] = usedBytes(t, filepath.Join(n.DataDir, "raft"))
	}
	lines := 2_000_000
	if raceEnabled {
		lines /= 10
	}
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 1), Command: "seq 1 " + strconv.Itoa(lines)})
	got := waitBuild(t, c, b.GetId(), 60*time.Second)
	if got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s: %s", got.GetState(), got.GetReason())
	}
	j := got.GetJobs()[0]
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	if j.GetLogLines() != uint64(lines) || j.GetLogBytes() != uint64(want.Len()) {
		t.Fatalf("committed %d lines, %d bytes; want %d lines, %d bytes", j.GetLogLines(), j.GetLogBytes(), lines, want.Len())
	}
	for _, n := range c.Nodes {
		waitStored(t, n.C.Logs().Store(), j.GetId(), j.GetAttempt(), j.GetLogSeq(), 20*time.Second)
		if data := checkLocalLog(t, n, j); string(data) != want.String() {
			t.Fatalf("%s: log differs from seq's output", n.ID)
		}
		disk, apparent := dirBytes(t, filepath.Join(n.DataDir, "raft"))
		logDisk, _ := dirBytes(t, filepath.Join(n.DataDir, "logs"))
		grew := disk - before[n.ID]
		used := usedBytes(t, filepath.Join(n.DataDir, "raft")) - usedBefore[n.ID]
		t.Logf("%s: raft/ grew %d bytes on disk (now %d on disk, %d apparent), its content by %d bytes; logs/ %d bytes; %d chunks",
			n.ID, grew, disk, apparent, used, logDisk, j.GetLogSeq())
		if grew > 4<<20 || used > 4<<20 {
			t.Errorf("%s: raft/ grew by %d bytes on disk, %d bytes of content, for a %d-byte log; the limit is 4 MiB", n.ID, grew, used, want.Len())
		}
	}
}

// TestFollowerDownCatchesUpLog: a follower that was stopped while a job
// logged fetches the committed log from its peers once it is back, and
// then serves it alone.
func TestFollowerDownCatchesUpLog(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 1)
	down := c.Followers()[0]
	c.Stop(down)
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0), Command: "for i in $(seq 1 500); do echo line $i; done"})
	got := waitBuild(t, c, b.GetId(), 20*time.Second)
	if got.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		t.Fatalf("build %s", got.GetState())
	}
	j := got.GetJobs()[0]
	if last, _ := down.C.Logs().Store().Last(j.GetId(), j.GetAttempt()); last != 0 {
		t.Fatalf("the stopped follower already holds %d chunks", last)
	}
	back := c.Restart(down)
	waitStored(t, back.C.Logs().Store(), j.GetId(), j.GetAttempt(), j.GetLogSeq(), 20*time.Second)
	// Only its own store can answer now.
	for _, n := range c.Nodes {
		if n != back && n.Running() {
			c.Stop(n)
		}
	}
	data := checkLocalLog(t, back, j)
	var want strings.Builder
	for i := 1; i <= 500; i++ {
		want.WriteString("line " + strconv.Itoa(i) + "\n")
	}
	if string(data) != want.String() {
		t.Fatalf("caught-up log differs:\n%s", data)
	}
}

// TestFollowerLiveTailSeesLine: `logs -f` on a follower (StreamLogs with
// follow, linearizable) shows a line while the job still runs; the line is
// awaited as a stream event, and the time from the job's print to its
// arrival is logged (bench/ measures it under load).
func TestFollowerLiveTailSeesLine(t *testing.T) {
	c := Start(t, 3, Options{})
	c.StartAgent("a1", nil, 1)
	gate := filepath.Join(t.TempDir(), "go")
	b := submit(t, c, &kilnv1.SubmitBuildRequest{RequestId: reqID(t, 0),
		Command: "echo ready $(date +%s%N); while [ ! -e " + gate + " ]; do sleep 0.02; done; echo done"})
	f := c.Followers()[0]
	conn := dialNode(t, f.GRPCAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := kilnv1.NewControlServiceClient(conn).StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: b.GetId(), Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	for !strings.Contains(text.String(), "\n") {
		m, err := stream.Recv()
		if err != nil {
			t.Fatalf("follow on %s before the first line: %v", f.ID, err)
		}
		text.Write(m.GetData())
	}
	received := time.Now()
	fields := strings.Fields(text.String())
	if len(fields) < 2 || fields[0] != "ready" {
		t.Fatalf("first line %q", text.String())
	}
	if ns, err := strconv.ParseInt(fields[1], 10, 64); err == nil {
		t.Logf("line printed to follower tail: %v", received.Sub(time.Unix(0, ns)))
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			break
		}
		text.Write(m.GetData())
	}
	if !strings.HasSuffix(text.String(), "done\n") {
		t.Fatalf("followed log %q does not end with the last line", text.String())
	}
}
