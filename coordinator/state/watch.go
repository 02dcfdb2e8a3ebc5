package state

import (
	"context"
	"fmt"
	"sync"

	memdb "github.com/hashicorp/go-memdb"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// watchLimit bounds the channels of one View. memdb waits on up to 32
// channels with one select; beyond that it starts helper goroutines per
// wait. Past the limit a view watches whole-build ranges instead of single
// jobs (wider, so it may wake for a sibling job, but never misses a
// change).
const watchLimit = 28

// signal is a broadcast: the channel wait returns is closed at the next
// fire.
type signal struct {
	mu sync.Mutex
	ch chan struct{}
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

func (s *signal) wait() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ch
}

func (s *signal) fire() {
	s.mu.Lock()
	close(s.ch)
	s.ch = make(chan struct{})
	s.mu.Unlock()
}

// View is one consistent read of the store that remembers what it read:
// Wait returns at the first committed change to a row or index range one
// of its reads covered, or when the store is restored from a snapshot.
// Changes elsewhere (another build, another job's log) do not wake it
// (for one exception see Build).
//
// The watch channels come from the same memdb transaction as the data, so
// a change committed after the read always wakes Wait: take a new View,
// read, then Wait, in a loop. A View is for one goroutine and one pass.
type View struct {
	tx *memdb.Txn
	ws memdb.WatchSet
}

// View starts a view of the current state.
func (s *Store) View() *View {
	ws := memdb.NewWatchSet()
	// Taken before the transaction: a restore that swaps the database
	// after this point closes it, so a view of the old database still
	// wakes.
	ws.Add(s.restored.wait())
	return &View{tx: s.read(), ws: ws}
}

// Wait blocks until something the view read has changed (nil) or ctx ends
// (an error wrapping ctx.Err()). It may wake for a nearby change that left the read's
// result as it was; callers re-read and compare.
func (v *View) Wait(ctx context.Context) error {
	if err := v.ws.WatchCtx(ctx); err != nil {
		return fmt.Errorf("state: wait for a change: %w", err)
	}
	return nil
}

// watch adds ch, or once the view holds watchLimit channels the wider
// channel alt returns (a range that includes ch's).
func (v *View) watch(ch <-chan struct{}, alt func() <-chan struct{}) {
	if len(v.ws) >= watchLimit && alt != nil {
		ch = alt()
	}
	v.ws.Add(ch)
}

// buildJobsWatch watches every job of a build (job ids are "<build>.<key>").
func (v *View) buildJobsWatch(buildID string) <-chan struct{} {
	return mustGet(v.tx, tableJobs, "id_prefix", buildID+".").WatchCh()
}

// buildRow reads a build's row and watches it (a missing build's watch
// fires when it is created).
func (v *View) buildRow(id string) *buildRow {
	ch, raw, err := v.tx.FirstWatch(tableBuilds, "id", id)
	if err != nil {
		panic(fmt.Sprintf("state: lookup in %s: %v", tableBuilds, err))
	}
	v.ws.Add(ch)
	if raw == nil {
		return nil
	}
	return raw.(*buildRow)
}

// Build is Store.Build. It watches the build's row, every job of the build
// (so also each log append, which advances its job's log_seq) and the
// build's test reports. (Until a build has a report, that last watch is a
// wider range of the reports index, so another build's report may wake it:
// reports come a few per attempt, not per log line.)
func (v *View) Build(id string) (*kilnv1.Build, bool) {
	row := v.buildRow(id)
	if row == nil {
		return nil, false
	}
	v.ws.Add(v.buildJobsWatch(id))
	v.ws.Add(mustGet(v.tx, tableTestReports, "build", id).WatchCh())
	return assembleBuild(v.tx, row), true
}

// BuildJobs returns a build's jobs in submission order, only the one whose
// key is key when key is not empty (none when it has no such job); ok is
// false when the build does not exist. It watches the build's row and the
// returned jobs' rows.
func (v *View) BuildJobs(id, key string) (jobs []*kilnv1.Job, ok bool) {
	row := v.buildRow(id)
	if row == nil {
		return nil, false
	}
	alt := func() <-chan struct{} { return v.buildJobsWatch(id) }
	for _, jid := range row.JobIDs {
		ch, raw, err := v.tx.FirstWatch(tableJobs, "id", jid)
		if err != nil {
			panic(fmt.Sprintf("state: lookup in %s: %v", tableJobs, err))
		}
		j, _ := raw.(*kilnv1.Job)
		if j == nil || (key != "" && j.GetKey() != key) {
			continue
		}
		v.watch(ch, alt)
		jobs = append(jobs, j)
	}
	return jobs, true
}

// Logs is Store.Logs. It watches the job's row: a chunk is committed in
// the same transaction that advances its job's log_seq, so the row is the
// exact watch for the attempt's next chunks (the log index range of an
// attempt without chunks yet is a wider radix node, woken by other jobs'
// appends).
func (v *View) Logs(jobID string, attempt uint32, afterSeq uint64, max int) []*kilnv1.LogChunk {
	ch, raw, err := v.tx.FirstWatch(tableJobs, "id", jobID)
	if err != nil {
		panic(fmt.Sprintf("state: lookup in %s: %v", tableJobs, err))
	}
	var alt func() <-chan struct{}
	if j, ok := raw.(*kilnv1.Job); ok {
		alt = func() <-chan struct{} { return v.buildJobsWatch(j.GetBuildId()) }
	}
	v.watch(ch, alt)
	return readLogs(v.tx, jobID, attempt, afterSeq, max)
}

// DispatchChanged returns a channel that is closed at the next committed
// change the scheduler's dispatch depends on: a job created or changing
// state, queue position, agent or attempt (queued, assigned, finished…),
// any change of an agent, or a restore. Log appends to a running job do
// not fire it. Like Changed, take the channel before reading.
func (s *Store) DispatchChanged() <-chan struct{} { return s.dispatch.wait() }

// affectsDispatch reports whether a transaction's changes fire
// DispatchChanged.
func affectsDispatch(changes memdb.Changes) bool {
	for _, c := range changes {
		switch c.Table {
		case tableAgents:
			return true
		case tableJobs:
			before, _ := c.Before.(*kilnv1.Job)
			after, _ := c.After.(*kilnv1.Job)
			if before == nil || after == nil ||
				before.GetState() != after.GetState() || before.GetQueueIndex() != after.GetQueueIndex() ||
				before.GetAgent() != after.GetAgent() || before.GetAttempt() != after.GetAttempt() {
				return true
			}
		}
	}
	return false
}
