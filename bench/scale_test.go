package bench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/coordinator/clustertest"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// scaleAgents is the number of light agents of BenchmarkScaleAgents
// (KILN_BENCH_SCALE_AGENTS overrides it).
func scaleAgents() int {
	if v, err := strconv.Atoi(os.Getenv("KILN_BENCH_SCALE_AGENTS")); err == nil && v > 0 {
		return v
	}
	return 2000
}

// BenchmarkScaleAgents connects many light agents (one shared connection
// per coordinator) to an in-process 3-node cluster and reports the memory
// the whole process gained per agent (Go heap and stacks, agents' side
// included, so an upper bound of the coordinators' share); run with
// -memprofile to see where the leader's share goes.
func BenchmarkScaleAgents(b *testing.B) {
	n := scaleAgents()
	c := clustertest.Start(b, 3, clustertest.Options{LeaseTTL: 30 * time.Second, SnapshotThreshold: 65536})
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	events := make(chan Event, 1<<16)
	ctx, cancel := context.WithCancel(context.Background())
	pool := NewConnPool()
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := 0; i < n; i++ {
		a := &LightAgent{Name: fmt.Sprintf("scale-%05d", i), Slots: 1, Addrs: c.Addrs(), Events: events, Pool: pool}
		wg.Add(1)
		go func() { defer wg.Done(); a.Run(ctx) }()
	}
	b.Cleanup(func() { cancel(); wg.Wait(); pool.Close() })
	clustertest.Eventually(b, 5*time.Minute, func() bool {
		k := 0
		for _, a := range c.Leader().C.Store().Agents() {
			if a.GetState() == kilnv1.AgentState_AGENT_STATE_CONNECTED {
				k++
			}
		}
		return k == n
	}, "light agents connected")
	b.StopTimer()
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) / 1024 }
	b.ReportMetric(per(after.HeapInuse, before.HeapInuse), "heap-KiB/agent")
	b.ReportMetric(per(after.StackInuse, before.StackInuse), "stack-KiB/agent")
	b.ReportMetric(float64(runtime.NumGoroutine())/float64(n), "goroutines/agent")
}
