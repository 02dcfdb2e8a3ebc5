package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kiln-ci/kiln/bench"
	"github.com/kiln-ci/kiln/internal/blobio"
	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/lifecycle"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

var runID = strconv.FormatInt(time.Now().UnixNano(), 36)

func control(ctx context.Context, cl *client.Client, fn func(context.Context, kilnv1.ControlServiceClient) error) error {
	return cl.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return fn(ctx, kilnv1.NewControlServiceClient(conn))
	})
}

// submit submits a one-command build and returns its id.
func submit(ctx context.Context, cl *client.Client, rid, command string) (string, error) {
	var id string
	err := control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: runID + "-" + rid, Command: command, Submitter: "e2e"})
		if err == nil {
			id = resp.GetBuild().GetId()
		}
		return err
	})
	return id, err
}

// watch follows a build until until(build) holds (default: finished) and
// returns it.
func watch(ctx context.Context, cl *client.Client, id string, until func(*kilnv1.Build) bool) (*kilnv1.Build, error) {
	if until == nil {
		until = func(b *kilnv1.Build) bool { return lifecycle.BuildFinished(b.GetState()) }
	}
	var last *kilnv1.Build
	err := control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		st, err := cc.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id})
		if err != nil {
			return err
		}
		for {
			resp, err := st.Recv()
			if err != nil {
				return err
			}
			last = resp.GetBuild()
			if until(last) {
				return nil
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("watch build %s: %w", id, err)
	}
	return last, nil
}

// logBytes streams the whole committed log of a build into w.
func logBytes(ctx context.Context, cl *client.Client, id string, w io.Writer) error {
	return control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		st, err := cc.StreamLogs(ctx, &kilnv1.StreamLogsRequest{BuildId: id})
		if err != nil {
			return err
		}
		for {
			resp, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if _, err := w.Write(resp.GetData()); err != nil {
				return err
			}
		}
	})
}

// lightAgents runs n light agents in this process on a shared connection
// pool until stop is called.
// With perSec > 0 the agents are started at that rate (a fleet coming
// up), else all at once.
func lightAgents(addrs []string, n int, slots int32, prefix string, perSec int) (events chan bench.Event, stop func()) {
	events = make(chan bench.Event, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	pool := bench.NewConnPool()
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n && ctx.Err() == nil; i++ {
			if perSec > 0 {
				due := start.Add(time.Duration(i) * time.Second / time.Duration(perSec))
				select {
				case <-time.After(time.Until(due)): // pacing, not synchronisation
				case <-ctx.Done():
					return
				}
			}
			a := &bench.LightAgent{Name: fmt.Sprintf("%s-%05d", prefix, i), Slots: slots, Addrs: addrs, Events: events, Pool: pool}
			wg.Add(1)
			go func() { defer wg.Done(); a.Run(ctx) }()
		}
	}()
	return events, func() { cancel(); wg.Wait(); pool.Close() }
}

// latencyLight submits jobs one at a time and measures submit → finish
// acknowledged to a light agent.
func latencyLight(ctx context.Context, cl *client.Client, events <-chan bench.Event, jobs int, tag string) ([]time.Duration, error) {
	var lat []time.Duration
	for i := 0; i < jobs; i++ {
		t0 := time.Now()
		id, err := submit(ctx, cl, fmt.Sprintf("%s-%d", tag, i), "true")
		if err != nil {
			return nil, err
		}
		for done := false; !done; {
			select {
			case ev := <-events:
				if ev.Finished && ev.BuildID == id {
					lat = append(lat, ev.At.Sub(t0))
					done = true
				}
			case <-ctx.Done():
				return nil, fmt.Errorf("build %s not finished: %w", id, ctx.Err())
			}
		}
	}
	return lat, nil
}

// runDispatchLight: 3 coordinator processes, light agents in this process.
// First one agent and jobs one at a time (submit → finished), then 50
// agents of 4 slots and 64 submitters as fast as they can.
func runDispatchLight(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	events, stop1 := lightAgents(c.grpc, 1, 1, "solo", 0)
	defer stop1()
	if err := c.waitAgents(ctx, 1); err != nil {
		return nil, err
	}
	if _, err := latencyLight(ctx, c.cl, events, 20, "warm"); err != nil {
		return nil, err
	}
	lat, err := latencyLight(ctx, c.cl, events, o.latencyJobs, "lat")
	if err != nil {
		return nil, err
	}
	stop1()
	events, stop := lightAgents(c.grpc, 50, 4, "light", 0)
	defer stop()
	if err := c.waitAgents(ctx, 50); err != nil {
		return nil, err
	}
	if _, err := bench.Load(ctx, c.cl, events, 200, 16, 0); err != nil {
		return nil, err
	}
	r, err := bench.Load(ctx, c.cl, events, o.dispatchJobs, 64, 0)
	if err != nil {
		return nil, err
	}
	return []metric{
		{name: "submit→finished p50, 1 light agent", value: ms(percentile(lat, 50)), unit: "ms", better: "lower"},
		{name: "submit→finished p99, 1 light agent", value: ms(percentile(lat, 99)), unit: "ms", better: "lower"},
		{name: "jobs/s, 50 light agents", value: r.JobsPerSec, unit: "jobs/s", better: "higher"},
		{name: "submit→assigned p50 under that load", value: ms(r.DispatchP50), unit: "ms", better: "lower"},
	}, nil
}

// closedLoop runs jobs builds of command with workers submitters, each
// submitting and following its build to the end; it returns jobs/s and the
// submit → finished latencies.
func closedLoop(ctx context.Context, cl *client.Client, jobs, workers int, tag, command string) (float64, []time.Duration, error) {
	var (
		next atomic.Int64
		mu   sync.Mutex
		lat  []time.Duration
		ferr error
		wg   sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(jobs) {
					return
				}
				t0 := time.Now()
				id, err := submit(ctx, cl, fmt.Sprintf("%s-%d", tag, i), command)
				var b *kilnv1.Build
				if err == nil {
					b, err = watch(ctx, cl, id, nil)
				}
				if err == nil && b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
					err = fmt.Errorf("build %s ended %s: %s", id, b.GetState(), b.GetReason())
				}
				mu.Lock()
				if err != nil && ferr == nil {
					ferr = err
				}
				lat = append(lat, time.Since(t0))
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(jobs) / time.Since(start).Seconds(), lat, ferr
}

// runDispatchReal: 3 coordinators and kiln-agent processes running `true`
// in a shell; first one agent and one job at a time, then every agent.
func runDispatchReal(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	if err := c.startAgents(ctx, 1, o.realSlots); err != nil {
		return nil, err
	}
	if _, _, err := closedLoop(ctx, c.cl, 10, 1, "warm", "true"); err != nil {
		return nil, err
	}
	_, lat, err := closedLoop(ctx, c.cl, o.latencyJobs/2, 1, "lat", "true")
	if err != nil {
		return nil, err
	}
	if err := c.startAgents(ctx, o.realAgents-1, o.realSlots); err != nil {
		return nil, err
	}
	jobs := o.dispatchJobs / 3
	rate, _, err := closedLoop(ctx, c.cl, jobs, o.realAgents*o.realSlots, "load", "true")
	if err != nil {
		return nil, err
	}
	return []metric{
		{name: "submit→finished p50, 1 kiln-agent", value: ms(percentile(lat, 50)), unit: "ms", better: "lower"},
		{name: fmt.Sprintf("jobs/s, %d kiln-agents", o.realAgents), value: rate, unit: "jobs/s", better: "higher",
			note: fmt.Sprintf("%d jobs, %d submitters each following its build", jobs, o.realAgents*o.realSlots)},
	}, nil
}

// runLogBig: one job prints log-mb MiB (100-byte lines); the figure is
// the log's size over submit → finished (the finish is accepted only once
// the whole log is stored), then the log is read back and counted.
func runLogBig(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	if err := c.startAgents(ctx, 1, 1); err != nil {
		return nil, err
	}
	size := int64(o.logMB) << 20
	line := strings.Repeat("0123456789", 10)[:99]
	t0 := time.Now()
	id, err := submit(ctx, c.cl, "biglog", fmt.Sprintf("yes %s | head -c %d", line, size))
	if err != nil {
		return nil, err
	}
	b, err := watch(ctx, c.cl, id, nil)
	if err != nil {
		return nil, err
	}
	took := time.Since(t0)
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED {
		return nil, fmt.Errorf("build %s ended %s: %s", id, b.GetState(), b.GetReason())
	}
	var n countWriter
	r0 := time.Now()
	if err := logBytes(ctx, c.cl, id, &n); err != nil {
		return nil, err
	}
	read := time.Since(r0)
	if int64(n) != size {
		return nil, fmt.Errorf("stored log of build %s has %d bytes, the job printed %d", id, n, size)
	}
	mb := float64(size) / 1e6
	return []metric{
		{name: fmt.Sprintf("%d MiB log, agent → stored", o.logMB), value: mb / took.Seconds(), unit: "MB/s", better: "higher"},
		{name: fmt.Sprintf("%d MiB log, read back", o.logMB), value: mb / read.Seconds(), unit: "MB/s", better: "higher"},
	}, nil
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

// runLogLines: log-jobs concurrent jobs each print log-lines numbered
// lines; every stored log must equal what the job printed, byte for byte.
func runLogLines(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	if err := c.startAgents(ctx, 2, (o.logJobs+1)/2); err != nil {
		return nil, err
	}
	var want bytes.Buffer
	for i := 1; i <= o.logLines; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	t0 := time.Now()
	_, _, err = closedLoop(ctx, c.cl, o.logJobs, o.logJobs, "lines", fmt.Sprintf("seq 1 %d", o.logLines))
	if err != nil {
		return nil, err
	}
	took := time.Since(t0)
	builds, err := listBuilds(ctx, c.cl)
	if err != nil {
		return nil, err
	}
	exact := 0
	for _, b := range builds {
		var got bytes.Buffer
		if err := logBytes(ctx, c.cl, b.GetId(), &got); err != nil {
			return nil, err
		}
		if bytes.Equal(got.Bytes(), want.Bytes()) {
			exact++
		}
	}
	if exact != o.logJobs || len(builds) != o.logJobs {
		return nil, fmt.Errorf("%d of %d builds have exactly the %d lines printed (%d builds)", exact, o.logJobs, o.logLines, len(builds))
	}
	total := float64(o.logJobs * want.Len())
	return []metric{
		{name: fmt.Sprintf("%d jobs × %d lines, all exact", o.logJobs, o.logLines), value: total / 1e6 / took.Seconds(), unit: "MB/s", better: "higher",
			note: fmt.Sprintf("%.0f lines/s", float64(o.logJobs*o.logLines)/took.Seconds())},
	}, nil
}

func listBuilds(ctx context.Context, cl *client.Client) ([]*kilnv1.Build, error) {
	var out []*kilnv1.Build
	err := control(ctx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
		resp, err := cc.ListBuilds(ctx, &kilnv1.ListBuildsRequest{})
		if err == nil {
			out = resp.GetBuilds()
		}
		return err
	})
	return out, err
}

// runFailover: SIGKILL the leader process; the figure is the time until a
// build submitted after the kill has its job assigned by the new leader
// (submits retried through the client, as kilnctl does).
func runFailover(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	var total, worst time.Duration
	for i := 0; i < o.failovers; i++ {
		sub := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(sub, 0o750); err != nil {
			return nil, err
		}
		d, err := failoverOnce(ctx, bin, sub, i)
		if err != nil {
			return nil, err
		}
		total += d
		worst = max(worst, d)
	}
	return []metric{
		{name: "leader kill → first dispatch, mean", value: ms(total / time.Duration(o.failovers)), unit: "ms", better: "lower",
			note: fmt.Sprintf("%d kills", o.failovers)},
		{name: "leader kill → first dispatch, max", value: ms(worst), unit: "ms", better: "lower"},
	}, nil
}

func failoverOnce(ctx context.Context, bin, dir string, round int) (time.Duration, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return 0, err
	}
	defer c.stop()
	if err := c.startAgents(ctx, 2, 2); err != nil {
		return 0, err
	}
	if _, _, err := closedLoop(ctx, c.cl, 5, 2, fmt.Sprintf("fo-warm-%d", round), "true"); err != nil {
		return 0, err
	}
	li, err := c.leader(ctx)
	if err != nil {
		return 0, err
	}
	killed := time.Now()
	c.coords[li].kill()
	id, err := submit(ctx, c.cl, fmt.Sprintf("fo-%d", round), "true")
	if err != nil {
		return 0, err
	}
	if _, err := watch(ctx, c.cl, id, func(b *kilnv1.Build) bool {
		for _, j := range b.GetJobs() {
			if j.GetAttempt() > 0 {
				return true
			}
		}
		return lifecycle.BuildFinished(b.GetState())
	}); err != nil {
		return 0, err
	}
	return time.Since(killed), nil
}

// runScale: scale-agents light agents (one slot each) connect to one
// cluster; the figures are the coordinators' memory per agent, then the
// dispatch and latency figures with all of them connected and
// heartbeating.
func runScale(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	li, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	before := c.coords[li].rssBytes()
	var followersBefore int64
	for i, p := range c.coords {
		if i != li {
			followersBefore += p.rssBytes()
		}
	}
	t0 := time.Now()
	events, stop := lightAgents(c.grpc, o.scaleAgents, 1, "scale", o.scaleRamp)
	defer stop()
	if err := c.waitAgents(ctx, o.scaleAgents); err != nil {
		return nil, err
	}
	connect := time.Since(t0)
	// Memory per agent: connected and heartbeating, before any job (jobs
	// and their logs take memory of their own). Two heartbeat intervals
	// (5 s by default) let the sessions settle; this is a measurement
	// pause, not synchronisation.
	select {
	case <-time.After(10 * time.Second):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	after := c.coords[li].rssBytes()
	var followersAfter int64
	for i, p := range c.coords {
		if i != li {
			followersAfter += p.rssBytes()
		}
	}
	n := float64(o.scaleAgents)
	out := []metric{
		{name: fmt.Sprintf("%d agents connected in", o.scaleAgents), value: connect.Seconds(), unit: "s", better: "lower",
			note: fmt.Sprintf("started at %d/s", o.scaleRamp)},
		{name: "leader RSS per agent", value: float64(after-before) / n / 1024, unit: "KiB", better: "lower",
			note: fmt.Sprintf("leader RSS %d → %d MiB", before>>20, after>>20)},
		{name: "follower RSS per agent", value: float64(followersAfter-followersBefore) / 2 / n / 1024, unit: "KiB", better: "lower"},
	}
	// A cluster that cannot keep up fails the run instead of stalling it.
	lctx, cancelLoad := context.WithTimeout(ctx, 3*time.Minute)
	defer cancelLoad()
	if _, err := bench.Load(lctx, c.cl, events, 200, 16, 0); err != nil {
		return out, err
	}
	r, err := bench.Load(lctx, c.cl, events, o.scaleJobs, 64, 0)
	if err != nil {
		return out, err
	}
	lat, err := latencyLight(lctx, c.cl, events, 100, "scale-lat")
	if err != nil {
		return out, err
	}
	// Every agent still connected: heartbeats kept every lease.
	if err := c.waitAgents(ctx, o.scaleAgents); err != nil {
		return out, fmt.Errorf("after the load: %w", err)
	}
	return append(out,
		metric{name: fmt.Sprintf("jobs/s, %d light agents", o.scaleAgents), value: r.JobsPerSec, unit: "jobs/s", better: "higher"},
		metric{name: "submit→assigned p50 under that load", value: ms(r.DispatchP50), unit: "ms", better: "lower"},
		metric{name: "submit→finished p50, one at a time", value: ms(percentile(lat, 50)), unit: "ms", better: "lower"},
	), nil
}

// chachaReader is size pseudo-random bytes (incompressible), the same for
// the same seed: the digest is computed in one pass, the upload in another,
// without holding the content in memory or on disk.
type chachaReader struct {
	rng  *rand.ChaCha8
	left int64
}

func newChacha(seed byte, size int64) *chachaReader {
	return &chachaReader{rng: rand.NewChaCha8([32]byte{seed, 'k', 'i', 'l', 'n'}), left: size}
}

func (r *chachaReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, _ := r.rng.Read(p)
	r.left -= int64(n)
	return n, nil
}

// runArtifact: one artifact of artifact-mb MiB uploaded to the leader until
// a quorum holds it, then downloaded from a follower; the coordinators'
// peak RSS shows whether memory stays flat in the size.
func runArtifact(ctx context.Context, bin, dir string, o options) ([]metric, error) {
	c, err := startCluster(ctx, bin, dir)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	li, err := c.leader(ctx)
	if err != nil {
		return nil, err
	}
	size := int64(o.artifactMB) << 20
	h := sha256.New()
	if _, err := io.Copy(h, newChacha(7, size)); err != nil {
		return nil, err
	}
	sha := hex.EncodeToString(h.Sum(nil))
	conn, err := grpc.NewClient(c.grpc[li], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	t0 := time.Now()
	up, err := kilnv1.NewBlobServiceClient(conn).Upload(ctx)
	if err != nil {
		return nil, err
	}
	if err := up.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Header{Header: &kilnv1.BlobHeader{Size: size, Sha256: sha, Kind: "artifact"}}}); err != nil {
		return nil, err
	}
	if _, err := blobio.SendChunks(ctx, newChacha(7, size), blobio.ChunkSize, func(b []byte) error {
		return up.Send(&kilnv1.UploadRequest{Msg: &kilnv1.UploadRequest_Data{Data: b}})
	}); err != nil && err != io.EOF {
		return nil, err
	}
	resp, err := up.CloseAndRecv()
	if err != nil {
		return nil, fmt.Errorf("upload: %w", err)
	}
	upTook := time.Since(t0)
	fi := (li + 1) % 3
	fconn, err := grpc.NewClient(c.grpc[fi], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer fconn.Close()
	t1 := time.Now()
	dl, err := kilnv1.NewBlobServiceClient(fconn).Download(ctx, &kilnv1.DownloadRequest{Sha256: sha})
	if err != nil {
		return nil, err
	}
	dh := sha256.New()
	var got int64
	for {
		m, err := dl.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("download: %w", err)
		}
		got += int64(len(m.GetData()))
		dh.Write(m.GetData())
	}
	downTook := time.Since(t1)
	if got != size || hex.EncodeToString(dh.Sum(nil)) != sha {
		return nil, fmt.Errorf("downloaded %d bytes with another digest", got)
	}
	var peak int64
	for _, p := range c.coords {
		peak = max(peak, p.peakRSSBytes())
	}
	mb := float64(size) / 1e6
	return []metric{
		{name: fmt.Sprintf("%d MiB upload, quorum ack", o.artifactMB), value: mb / upTook.Seconds(), unit: "MB/s", better: "higher",
			note: fmt.Sprintf("%d replicas at the ack", resp.GetReplicas())},
		{name: fmt.Sprintf("%d MiB download from a follower", o.artifactMB), value: mb / downTook.Seconds(), unit: "MB/s", better: "higher"},
		{name: "largest coordinator peak RSS", value: float64(peak) / (1 << 20), unit: "MiB", better: "lower"},
	}, nil
}
