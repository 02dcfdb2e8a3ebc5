package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCorruptDataDirExitsWithMessage starts a coordinator on a data
// directory whose raft log store cannot be opened. It must exit non-zero
// with a message that names the data directory and raft, not crash with a
// panic and a goroutine dump, so that an operator knows which files are
// damaged and what to do.
func TestCorruptDataDirExitsWithMessage(t *testing.T) {
	cases := []struct {
		name    string
		corrupt func(t *testing.T, walDir string)
	}{
		{
			// bbolt opens an empty file as a new database without buckets.
			name: "empty wal metadata",
			corrupt: func(t *testing.T, walDir string) {
				if err := os.Truncate(filepath.Join(walDir, "wal-meta.db"), 0); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "garbage wal metadata",
			corrupt: func(t *testing.T, walDir string) {
				overwrite(t, filepath.Join(walDir, "wal-meta.db"), 0, 32<<10)
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			c := h.startCluster(1)
			n := c.nodes[0]
			// Something in the log besides the bootstrap configuration.
			h.submit(c.addrs(), "echo never runs", "--label", "pool=nobody")
			n.stop(30 * time.Second)

			tc.corrupt(t, filepath.Join(n.dataDir, "raft", "wal"))
			n.start()
			code, ok := n.wait(30 * time.Second)
			stderr := n.stderrTail(16 << 10)
			if !ok {
				t.Fatalf("coordinator still runs 30s after its start on a corrupt data dir; %s", stderr)
			}
			if code == 0 {
				t.Errorf("coordinator exited with code 0 on a corrupt data dir, want non-zero")
			}
			for _, want := range []string{n.dataDir, "raft"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr does not mention %q", want)
				}
			}
			for _, bad := range []string{"panic:", "goroutine "} {
				if strings.Contains(stderr, bad) {
					t.Errorf("stderr contains %q: a crash, not a message", bad)
				}
			}
			if t.Failed() {
				t.Logf("exit code %d; %s", code, stderr)
			}
		})
	}
}

// overwrite replaces n bytes of file at offset off with a byte pattern
// that no file format of the data dir starts with.
func overwrite(t *testing.T, file string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("\xde\xad\xbe\xef", n/4)), off); err != nil {
		_ = f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
