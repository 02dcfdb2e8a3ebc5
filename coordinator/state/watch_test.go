package state

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fired reports, without blocking, whether a view's watch has fired. memdb
// closes the channels inside Commit, so after a mutation returns the
// answer is settled: no observation window is needed.
func fired(v *View) bool {
	for ch := range v.ws {
		select {
		case <-ch:
			return true
		default:
		}
	}
	return false
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// watchFixture is a store whose jobs run on agent "x": index counts the
// commands applied.
type watchFixture struct {
	t     *testing.T
	s     *Store
	index uint64
	seq   map[string]uint64
}

func newWatchFixture(t *testing.T) *watchFixture {
	t.Helper()
	f := &watchFixture{t: t, s: New(), seq: map[string]uint64{}}
	f.apply(func(i uint64) error {
		return f.s.RegisterAgent(i, &fsmv1.RegisterAgent{Name: "x", Slots: 100, SessionId: "s"})
	})
	return f
}

func (f *watchFixture) apply(fn func(index uint64) error) {
	f.t.Helper()
	f.index++
	if err := fn(f.index); err != nil {
		f.t.Fatal(err)
	}
}

// running submits a build of the keys and assigns every job to "x".
func (f *watchFixture) running(keys ...string) string {
	f.t.Helper()
	var id string
	f.apply(func(i uint64) error {
		b, err := f.s.SubmitBuild(i, &fsmv1.SubmitBuild{Steps: steps(keys...)})
		id = b.GetId()
		return err
	})
	for _, k := range keys {
		f.apply(func(i uint64) error {
			return f.s.AssignJob(i, &fsmv1.AssignJob{JobId: id + "." + k, Attempt: 1, Agent: "x"})
		})
	}
	return id
}

// appendLog commits the next chunk of a job's first attempt.
func (f *watchFixture) appendLog(jobID string) {
	f.t.Helper()
	f.seq[jobID]++
	f.index++
	acks := f.s.AppendLogs(f.index, &fsmv1.AppendLogs{Agent: "x", Chunks: []*kilnv1.LogChunk{
		{JobId: jobID, Attempt: 1, Seq: f.seq[jobID], Data: []byte(fmt.Sprintf("%s %d\n", jobID, f.seq[jobID]))},
	}})
	if len(acks) != 1 || acks[0].Outcome == OutcomeStale || acks[0].LogSeq != f.seq[jobID] {
		f.t.Fatalf("append to %s: %v", jobID, acks)
	}
}

func (f *watchFixture) finish(jobID string) {
	f.t.Helper()
	f.apply(func(i uint64) error {
		_, err := f.s.FinishJob(i, &fsmv1.FinishJob{Agent: "x", Finished: &kilnv1.JobFinished{
			JobId: jobID, Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: f.seq[jobID],
		}})
		return err
	})
}

// The views WatchBuild and StreamLogs take of build A are not woken by log
// appends to build B, nor by another job of A for a job's stream; each is
// woken by its own build's or job's append.
func TestViewWakesOnlyForItsOwnBuild(t *testing.T) {
	f := newWatchFixture(t)
	a := f.running("x", "y")
	b := f.running("x")
	f.appendLog(a + ".x")
	f.appendLog(a + ".y")
	f.appendLog(b + ".x")

	type watcher struct {
		name  string
		view  func() *View
		wakes []string // jobs whose appends must wake it; others must not
	}
	watchers := []watcher{
		{"watch build A", func() *View { v := f.s.View(); v.Build(a); return v }, []string{a + ".x", a + ".y"}},
		{"logs of build A", func() *View {
			v := f.s.View()
			jobs, _ := v.BuildJobs(a, "")
			for _, j := range jobs {
				v.Logs(j.GetId(), j.GetAttempt(), f.seq[j.GetId()], 0)
			}
			return v
		}, []string{a + ".x", a + ".y"}},
		{"logs of job A.x", func() *View {
			v := f.s.View()
			jobs, _ := v.BuildJobs(a, "x")
			if len(jobs) != 1 || jobs[0].GetId() != a+".x" {
				t.Fatalf("jobs %v", jobs)
			}
			v.Logs(a+".x", 1, f.seq[a+".x"], 0)
			return v
		}, []string{a + ".x"}},
	}
	for _, w := range watchers {
		for _, job := range []string{a + ".x", a + ".y", b + ".x"} {
			v := w.view()
			f.appendLog(job)
			want := job == w.wakes[0] || (len(w.wakes) > 1 && job == w.wakes[1])
			if got := fired(v); got != want {
				t.Errorf("%s: woken by an append to %s = %v, want %v", w.name, job, got, want)
			}
		}
	}

	// The scheduler is not woken by log appends, only by what dispatch
	// looks at: here a finish (a slot is free) and a new queued job.
	ch := f.s.DispatchChanged()
	f.appendLog(a + ".x")
	if closed(ch) {
		t.Error("DispatchChanged fired on a log append")
	}
	f.finish(a + ".x")
	if !closed(ch) {
		t.Error("DispatchChanged did not fire on a finish")
	}
	ch = f.s.DispatchChanged()
	f.apply(func(i uint64) error { _, err := f.s.SubmitBuild(i, &fsmv1.SubmitBuild{Steps: steps("z")}); return err })
	if !closed(ch) {
		t.Error("DispatchChanged did not fire on a submit")
	}
	ch = f.s.DispatchChanged()
	f.apply(func(i uint64) error { return f.s.DisconnectAgent(i, &fsmv1.DisconnectAgent{Name: "x", SessionId: "s"}) })
	if !closed(ch) {
		t.Error("DispatchChanged did not fire on an agent change")
	}
}

// Past watchLimit a view of a big build watches whole-build ranges: it
// still wakes for every job of its build, not for other builds, and waits
// with one select (no helper goroutines).
func TestViewOfManyJobs(t *testing.T) {
	f := newWatchFixture(t)
	keys := make([]string, 3*watchLimit)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%03d", i)
	}
	a := f.running(keys...)
	b := f.running("x")
	view := func() *View {
		v := f.s.View()
		jobs, _ := v.BuildJobs(a, "")
		for _, j := range jobs {
			v.Logs(j.GetId(), j.GetAttempt(), 0, 0)
		}
		if len(jobs) != len(keys) || len(v.ws) > 32 {
			t.Fatalf("%d jobs, %d watch channels", len(jobs), len(v.ws))
		}
		return v
	}
	for _, k := range []string{keys[0], keys[watchLimit], keys[len(keys)-1]} {
		v := view()
		f.appendLog(b + ".x")
		if fired(v) {
			t.Fatal("woken by another build")
		}
		f.appendLog(a + "." + k)
		if !fired(v) {
			t.Fatalf("not woken by an append to job %s", k)
		}
	}
}

// A follower that takes a view, reads, then waits sees every chunk of its
// job while other builds' appends go on, and the whole build as it
// finishes. Run with -race.
func TestViewMissesNothing(t *testing.T) {
	f := newWatchFixture(t)
	a := f.running("x")
	b := f.running("x")
	const n = 300
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	var wg sync.WaitGroup
	var got []uint64
	var final *kilnv1.Build
	errs := make(chan error, 2)
	wg.Add(2)
	go func() { // a StreamLogs-like follower
		defer wg.Done()
		var after uint64
		for {
			v := f.s.View()
			jobs, _ := v.BuildJobs(a, "x")
			for _, c := range v.Logs(a+".x", 1, after, 0) {
				got = append(got, c.GetSeq())
				after = c.GetSeq()
			}
			if len(jobs) == 1 && lifecycle.JobFinished(jobs[0].GetState()) {
				return
			}
			if err := v.Wait(ctx); err != nil {
				errs <- fmt.Errorf("log follower stuck after seq %d: %w", after, err)
				return
			}
		}
	}()
	go func() { // a WatchBuild-like follower
		defer wg.Done()
		for {
			v := f.s.View()
			bld, _ := v.Build(a)
			if lifecycle.BuildFinished(bld.GetState()) {
				final = bld
				return
			}
			if err := v.Wait(ctx); err != nil {
				errs <- fmt.Errorf("build follower stuck at %v: %w", bld.GetState(), err)
				return
			}
		}
	}()
	for i := 0; i < n; i++ {
		f.appendLog(a + ".x")
		f.appendLog(b + ".x")
	}
	f.finish(a + ".x")
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(got) != n {
		t.Fatalf("follower saw %d chunks, want %d", len(got), n)
	}
	for i, seq := range got {
		if seq != uint64(i+1) {
			t.Fatalf("chunk %d has seq %d", i, seq)
		}
	}
	if final.GetState() != kilnv1.BuildState_BUILD_STATE_PASSED || final.GetJobs()[0].GetLogSeq() != n {
		t.Fatalf("final build %v", final)
	}
}

// A restore replaces the database, whose watch channels then never fire:
// views and DispatchChanged wake anyway.
func TestViewWakesOnRestore(t *testing.T) {
	f := newWatchFixture(t)
	a := f.running("x")
	var recs []*fsmv1.SnapshotRecord
	if err := f.s.Snapshot().Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	v := f.s.View()
	if _, ok := v.Build(a); !ok {
		t.Fatal("no build")
	}
	ch := f.s.DispatchChanged()
	if err := f.s.Restore(func() (*fsmv1.SnapshotRecord, error) {
		if len(recs) == 0 {
			return nil, io.EOF
		}
		r := recs[0]
		recs = recs[1:]
		return r, nil
	}); err != nil {
		t.Fatal(err)
	}
	if !fired(v) || !closed(ch) {
		t.Fatalf("after a restore: view woken %v, dispatch woken %v", fired(v), closed(ch))
	}
}
