package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

const benchAgents = 50

// startLoad runs a 3-node cluster with light agents; stopped at cleanup.
func startLoad(b *testing.B) (*clustertest.Cluster, chan Event) { return startLoadT(b) }

func startLoadT(b testing.TB) (*clustertest.Cluster, chan Event) {
	c := clustertest.Start(b, 3, clustertest.Options{LeaseTTL: 5 * time.Second, SnapshotThreshold: 65536})
	events := make(chan Event, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < benchAgents; i++ {
		a := &LightAgent{Name: fmt.Sprintf("light-%02d", i), Slots: 4, Addrs: c.Addrs(), Events: events}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
	clustertest.Eventually(b, 30*time.Second, func() bool {
		n := 0
		for _, a := range c.Leader().C.Store().Agents() {
			if a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED {
				n++
			}
		}
		return n == benchAgents
	}, "light agents connected")
	return c, events
}

// BenchmarkDispatchLatency measures submit-to-assignment latency with 3
// coordinators and 50 light agents under a steady open-loop load of 200
// builds/s. Run with -benchtime=Nx to set the number of jobs.
func BenchmarkDispatchLatency(b *testing.B) {
	runLoad(b, 32, 200)
}

// BenchmarkThroughput measures jobs completed per second with 3
// coordinators and 50 light agents while 64 clients submit as fast as
// they can.
func BenchmarkThroughput(b *testing.B) {
	runLoad(b, 64, 0)
}

func runLoad(b *testing.B, concurrency int, rate float64) {
	c, events := startLoad(b)
	cl := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Warm up connections and the leader.
	if _, err := Load(ctx, cl, events, 100, 16, 0); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	r, err := Load(ctx, cl, events, b.N, concurrency, rate)
	if err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(r.DispatchP50.Microseconds())/1000, "p50-dispatch-ms")
	b.ReportMetric(float64(r.DispatchP99.Microseconds())/1000, "p99-dispatch-ms")
	b.ReportMetric(r.JobsPerSec, "jobs/s")
	b.Logf("%s", r)
}

// BenchmarkFailover measures the time from a leader crash to the first job
// dispatched by the new leader while builds keep arriving.
func BenchmarkFailover(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c, events := startLoad(b)
		cl := c.Client()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		if _, err := Load(ctx, cl, events, 50, 8, 0); err != nil {
			b.Fatal(err)
		}
		// Keep submitting through the crash.
		subCtx, stopSubmit := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; subCtx.Err() == nil; j++ {
				_ = clustertest.Control(subCtx, cl, func(ctx context.Context, cc kilnv1.ControlServiceClient) error {
					_, err := cc.SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("fo-%d-%d", i, j), Command: "true"})
					return err
				})
				time.Sleep(2 * time.Millisecond) // a steady trickle, not synchronisation
			}
		}()
		old := c.Leader()
		b.StartTimer()
		killedAt := time.Now()
		c.Kill(old)
		var first time.Time
		for first.IsZero() {
			select {
			case ev := <-events:
				if ev.Assigned && ev.At.After(killedAt) {
					first = ev.At
				}
			case <-ctx.Done():
				b.Fatal("no job dispatched after the leader crash")
			}
		}
		b.StopTimer()
		d := first.Sub(killedAt)
		total += d
		b.Logf("failover: leader %s crashed; first dispatch by the new leader after %s", old.ID, d)
		stopSubmit()
		wg.Wait()
		cancel()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "failover-ms")
}
