package bench

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/client"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Result is what one load run measured.
type Result struct {
	Jobs        int
	Elapsed     time.Duration
	JobsPerSec  float64
	DispatchP50 time.Duration
	DispatchP99 time.Duration
	DispatchMax time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("jobs=%d elapsed=%s jobs/s=%.0f dispatch p50=%s p99=%s max=%s",
		r.Jobs, r.Elapsed.Round(time.Millisecond), r.JobsPerSec, r.DispatchP50, r.DispatchP99, r.DispatchMax)
}

// Load submits jobs one-command builds with the given number of concurrent
// submitters and waits until every job is acknowledged finished. With rate
// > 0 submissions are paced at that many per second (open loop), so the
// latency is not dominated by a queue the load itself built up. Dispatch
// latency is measured from just before SubmitBuild is sent to the moment a
// light agent receives the assignment.
func Load(ctx context.Context, cl *client.Client, events <-chan Event, jobs, concurrency int, rate float64) (Result, error) {
	var (
		mu       sync.Mutex
		submitAt = map[string]time.Time{}
		assigned = map[string]time.Time{}
	)
	start := time.Now()
	var next atomic.Int64
	errs := make(chan error, concurrency)
	var wg sync.WaitGroup
	for w := 0; w < concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(jobs) {
					return
				}
				if rate > 0 {
					due := start.Add(time.Duration(float64(i-1) / rate * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						time.Sleep(d) // pacing the open-loop load, not synchronisation
					}
				}
				req := &kilnv1.SubmitBuildRequest{RequestId: fmt.Sprintf("bench-%d-%d", start.UnixNano(), i), Command: "true", Submitter: "bench"}
				t0 := time.Now()
				var id string
				err := cl.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
					resp, err := kilnv1.NewControlServiceClient(conn).SubmitBuild(ctx, req)
					if err == nil {
						id = resp.GetBuild().GetId()
					}
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				submitAt[id] = t0
				mu.Unlock()
			}
		}()
	}
	finished := 0
	var last time.Time
	for finished < jobs {
		select {
		case err := <-errs:
			return Result{}, fmt.Errorf("submit: %w", err)
		case <-ctx.Done():
			return Result{}, fmt.Errorf("load: %d of %d jobs finished: %w", finished, jobs, ctx.Err())
		case ev := <-events:
			if ev.Assigned {
				mu.Lock()
				if _, seen := assigned[ev.BuildID]; !seen {
					assigned[ev.BuildID] = ev.At
				}
				mu.Unlock()
			}
			if ev.Finished {
				finished++
				last = ev.At
			}
		}
	}
	wg.Wait()
	var lat []time.Duration
	mu.Lock()
	for id, at := range assigned {
		if t0, ok := submitAt[id]; ok {
			lat = append(lat, at.Sub(t0))
		}
	}
	mu.Unlock()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := Result{Jobs: jobs, Elapsed: last.Sub(start)}
	r.JobsPerSec = float64(jobs) / r.Elapsed.Seconds()
	if len(lat) > 0 {
		r.DispatchP50 = lat[len(lat)/2]
		r.DispatchP99 = lat[len(lat)*99/100]
		r.DispatchMax = lat[len(lat)-1]
	}
	return r, nil
}
