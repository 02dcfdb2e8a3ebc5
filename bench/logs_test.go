package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// raftUsed is how much of DATA_DIR/raft holds data: raft-wal segments are
// preallocated and filled from the start, so a segment's content ends at
// its last non-zero byte; other files count whole.
func raftUsed(b *testing.B, dataDir string) int64 {
	var used int64
	err := filepath.WalkDir(filepath.Join(dataDir, "raft"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		end := len(data)
		if strings.HasSuffix(path, ".wal") {
			for end > 0 && data[end-1] == 0 {
				end--
			}
		}
		used += int64(end)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return used
}

// runBuild submits a one-command build and waits until it finished.
func runBuild(b *testing.B, c *clustertest.Cluster, cmd string, timeout time.Duration) *kilnv1.Build {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var build *kilnv1.Build
	err := clustertest.Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("bench-%d", time.Now().UnixNano()), Command: cmd})
		if err == nil {
			build = resp.GetBuild()
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	var done *kilnv1.Build
	clustertest.Eventually(b, timeout, func() bool {
		got, ok := c.Leader().C.Store().Build(build.GetId())
		if ok && (got.GetState() == kilnv1.BuildState_BUILD_STATE_PASSED || got.GetState() == kilnv1.BuildState_BUILD_STATE_FAILED) {
			done = got
			return true
		}
		return false
	}, "build finished")
	if done.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		b.Fatalf("build %s: %s", done.GetState(), done.GetReason())
	}
	return done
}

// BenchmarkBigLog: one job printing 2 million lines (14.9 MB, `seq`) on a
// 3-node cluster with one real agent. It reports the log's commit rate
// (submit → build passed, which needs every chunk committed), the rate of
// reading it back from a follower (StreamLogs, linearizable), the largest
// growth of a node's raft/ content, and the process's peak RSS.
func BenchmarkBigLog(b *testing.B) {
	const lines = 2_000_000
	want := 0
	for i := 1; i <= lines; i++ {
		want += len(strconv.Itoa(i)) + 1
	}
	for i := 0; i < b.N; i++ {
		c := clustertest.Start(b, 3, clustertest.Options{})
		c.StartAgent("a1", nil, 1)
		runBuild(b, c, "true", 30*time.Second) // warm-up
		before := map[string]int64{}
		for _, n := range c.Nodes {
			before[n.ID] = raftUsed(b, n.DataDir)
		}
		start := time.Now()
		build := runBuild(b, c, "seq 1 "+strconv.Itoa(lines), 5*time.Minute)
		write := time.Since(start)

		f := c.Followers()[0]
		conn := dial(b, f.GRPCAddr)
		readAll := func() time.Duration {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			start := time.Now()
			stream, err := kilnv1.NewControlServiceClient(conn).StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: build.GetId()})
			if err != nil {
				b.Fatal(err)
			}
			got := 0
			for {
				m, err := stream.Recv()
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				got += len(m.GetData())
			}
			if got != want {
				b.Fatalf("read %d bytes of log from %s, want %d", got, f.ID, want)
			}
			return time.Since(start)
		}
		// The first read right after the build may include the follower's
		// catch-up; the second reads what it holds.
		read := readAll()
		reread := readAll()
		conn.Close()
		var grew int64
		for _, n := range c.Nodes {
			grew = max(grew, raftUsed(b, n.DataDir)-before[n.ID])
		}
		mb := float64(want) / (1 << 20)
		b.ReportMetric(mb/write.Seconds(), "write-MB/s")
		b.ReportMetric(mb/read.Seconds(), "follower-read-MB/s")
		b.ReportMetric(mb/reread.Seconds(), "follower-reread-MB/s")
		b.ReportMetric(float64(grew)/(1<<20), "raft-growth-MiB")
		b.Logf("%.1f MiB log: committed in %s (%.1f MB/s), read from a follower in %s (%.1f MB/s), again in %s; largest raft/ growth %.2f MiB",
			mb, write.Round(time.Millisecond), mb/write.Seconds(), read.Round(time.Millisecond), mb/read.Seconds(), reread.Round(time.Millisecond), float64(grew)/(1<<20))
	}
	b.ReportMetric(peakRSS(b), "peak-rss-MiB")
}

// BenchmarkLiveTail: a job prints a timestamped line every 50 ms; a
// follower's `logs -f` (StreamLogs with follow, linearizable) receives
// them. It reports the print → receive latency, p50/p99/max.
func BenchmarkLiveTail(b *testing.B) {
	const n = 60
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		c := clustertest.Start(b, 3, clustertest.Options{})
		c.StartAgent("a1", nil, 1)
		runBuild(b, c, "true", 30*time.Second) // warm-up
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		var id string
		err := clustertest.Control(ctx, c.Client(), func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
			resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("tail-%d", time.Now().UnixNano()),
				Command: fmt.Sprintf("for i in $(seq 1 %d); do echo t $(date +%%s%%N); sleep 0.05; done", n)})
			if err == nil {
				id = resp.GetBuild().GetId()
			}
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		conn := dial(b, c.Followers()[0].GRPCAddr)
		stream, err := kilnv1.NewControlServiceClient(conn).StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: id, Follow: true})
		if err != nil {
			b.Fatal(err)
		}
		var partial string
		for {
			m, err := stream.Recv()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			text := partial + string(m.GetData())
			lines := strings.Split(text, "\n")
			partial = lines[len(lines)-1]
			for _, l := range lines[:len(lines)-1] {
				f := strings.Fields(l)
				if len(f) == 2 && f[0] == "t" {
					if ns, err := strconv.ParseInt(f[1], 10, 64); err == nil {
						lat = append(lat, now.Sub(time.Unix(0, ns)))
					}
				}
			}
		}
		cancel()
		conn.Close()
	}
	if len(lat) == 0 {
		b.Fatal("no line received")
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	p := func(q float64) time.Duration { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(float64(p(0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p(0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
	b.Logf("%d lines: print → follower tail p50 %s, p99 %s, max %s", len(lat), p(0.5), p(0.99), lat[len(lat)-1])
}
