package state

import (
	"fmt"
	"strconv"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	"github.com/kiln-ci/kiln/internal/pipeline"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// deriveStageNeeds gives old-style builds (no step names any needs) the
// edges of the stage model (pipeline.StageEdges): every step needs all the
// steps of the nearest earlier stage present. specs are in stage order. A
// single-stage build is left alone (every step is a root).
func deriveStageNeeds(specs []*kilnv1.StepSpec) {
	for _, sp := range specs {
		if len(sp.GetNeeds()) > 0 {
			return
		}
	}
	for i, e := range pipeline.StageEdges(specs) {
		sp := specs[i]
		sp.Needs = nil
		for _, j := range e {
			sp.Needs = append(sp.Needs, specs[j].GetKey())
		}
	}
}

// validateNeeds checks that needs name other steps of the build and that
// the graph has no cycle (the first pipeline.Cycles finds is reported).
func validateNeeds(specs []*kilnv1.StepSpec) error {
	index := make(map[string]int, len(specs))
	for i, sp := range specs {
		index[sp.GetKey()] = i
	}
	edges := make([][]int, len(specs))
	for i, sp := range specs {
		for _, n := range sp.GetNeeds() {
			j, ok := index[n]
			switch {
			case n == sp.GetKey():
				return fmt.Errorf("step %q needs itself: %w", sp.GetKey(), ErrInvalidCommand)
			case !ok:
				return fmt.Errorf("step %q needs %q, which is not a step of the build: %w", sp.GetKey(), n, ErrInvalidCommand)
			}
			edges[i] = append(edges[i], j)
		}
	}
	for cycle := range pipeline.Cycles(edges) {
		path := make([]string, 0, len(cycle)+1)
		for _, i := range cycle {
			path = append(path, specs[i].GetKey())
		}
		path = append(path, path[0])
		return fmt.Errorf("needs form a cycle: %v: %w", path, ErrInvalidCommand)
	}
	return nil
}

type needState int

const (
	needPending needState = iota
	needSatisfied
	needUnsatisfied
)

// verdict is the state of a set of needs; culprit is the job that made it
// unsatisfied.
type verdict struct {
	st      needState
	culprit *kilnv1.Job
}

// dag evaluates needs over the jobs of one build.
type dag struct {
	byKey map[string]*kilnv1.Job
	memo  map[string]verdict
}

func newDAG(jobs []*kilnv1.Job) *dag {
	d := &dag{byKey: make(map[string]*kilnv1.Job, len(jobs)), memo: map[string]verdict{}}
	for _, j := range jobs {
		d.byKey[j.GetKey()] = j
	}
	return d
}

func (d *dag) set(j *kilnv1.Job) {
	d.byKey[j.GetKey()] = j
	clear(d.memo)
}

// needsOf combines the verdicts of a job's needs: pending while any need is
// unfinished, else unsatisfied (naming the first bad need) if any is, else
// satisfied.
func (d *dag) needsOf(j *kilnv1.Job) verdict {
	var bad *verdict
	pending := false
	for _, k := range j.GetSpec().GetNeeds() {
		n := d.byKey[k]
		if n == nil {
			continue // validated at submit
		}
		v := d.jobVerdict(n)
		switch v.st {
		case needPending:
			pending = true
		case needUnsatisfied:
			if bad == nil {
				bad = &v
			}
		}
	}
	switch {
	case pending:
		return verdict{st: needPending}
	case bad != nil:
		return *bad
	}
	return verdict{st: needSatisfied}
}

// jobVerdict says whether one job satisfies a job that needs it. A step
// skipped by its `if` is transparent: it stands for its own needs, so
// ordering through it is kept and an upstream failure still propagates.
func (d *dag) jobVerdict(n *kilnv1.Job) verdict {
	switch st := n.GetState(); {
	case st == jPassed:
		return verdict{st: needSatisfied}
	case st == jSkipped && n.GetSpec().GetSkipReason() != "":
		if v, ok := d.memo[n.GetKey()]; ok {
			return v
		}
		v := d.needsOf(n)
		d.memo[n.GetKey()] = v
		return v
	case (st == jFailed || st == jTimedOut) && n.GetSpec().GetAllowFailure() && n.GetSpec().GetApproval() == nil:
		return verdict{st: needSatisfied}
	case lifecycle.JobFinished(st):
		return verdict{st: needUnsatisfied, culprit: n}
	}
	return verdict{st: needPending}
}

// okForBuild reports whether a finished job lets its build pass.
func okForBuild(j *kilnv1.Job) bool {
	switch j.GetState() {
	case jPassed, jSkipped:
		return true
	case jFailed, jTimedOut:
		return j.GetSpec().GetAllowFailure()
	}
	return false
}

// stateClause is a job state as the end of "needs X which ...".
func stateClause(s kilnv1.JobState) string {
	switch s {
	case jFailed:
		return "failed"
	case jTimedOut:
		return "timed out"
	}
	return "was " + jobStateWord(s)
}

func (w *wtx) buildJobs(row *buildRow) []*kilnv1.Job {
	jobs := make([]*kilnv1.Job, 0, len(row.JobIDs))
	for _, id := range row.JobIDs {
		if j := w.job(id); j != nil {
			jobs = append(jobs, j)
		}
	}
	return jobs
}

// advance moves a build forward after its jobs changed (see the package
// doc). Held and finished builds are left alone.
func (w *wtx) advance(buildID string, now int64) {
	row := getBuildRow(w.tx, buildID)
	if row == nil || lifecycle.BuildFinished(row.Build.GetState()) || row.Build.GetHeld() {
		return
	}
	jobs := w.buildJobs(row)
	d := newDAG(jobs)
	// Queuing or blocking a job changes no other verdict; a skip can
	// cascade, hence the loop to a fixed point.
	for changed := true; changed; {
		changed = false
		for i, j := range jobs {
			if j.GetState() != jWaiting {
				continue
			}
			v := d.needsOf(j)
			switch v.st {
			case needPending:
				continue
			case needSatisfied:
				j = cloneJob(j)
				if a := j.GetSpec().GetApproval(); a != nil {
					j.State = jBlocked
					j.BlockedUnixMs = now
					j.Reason = "waiting for approval"
					if p := a.GetPrompt(); p != "" {
						j.Reason += ": " + p
					}
				} else {
					j.State = jQueued
					j.QueueIndex = w.index
					j.QueuedUnixMs = now
				}
			case needUnsatisfied:
				j = cloneJob(j)
				j.State = jSkipped
				j.Reason = fmt.Sprintf("needs %s which %s", v.culprit.GetKey(), stateClause(v.culprit.GetState()))
				j.FinishedUnixMs = now
			}
			w.putJob(j)
			jobs[i] = j
			d.set(j)
			changed = true
		}
	}
	w.settleBuild(row, jobs, now)
}

// settleBuild sets the build state from its jobs: finished when every job
// is; BLOCKED while a gate waits and nothing is queued or running; else
// QUEUED or RUNNING (RUNNING once any job was assigned).
func (w *wtx) settleBuild(row *buildRow, jobs []*kilnv1.Job, now int64) {
	done, active, blocked := true, false, false
	for _, j := range jobs {
		switch st := j.GetState(); {
		case st == jBlocked:
			blocked = true
		case st == jQueued || lifecycle.JobActive(st):
			active = true
		}
		if !lifecycle.JobFinished(j.GetState()) {
			done = false
		}
	}
	if done {
		b := proto.Clone(row.Build).(*kilnv1.Build)
		b.State = bPassed
		b.Reason = ""
		for _, j := range jobs {
			if !okForBuild(j) {
				b.State = bFailed
				b.Reason = fmt.Sprintf("job %s %s", j.GetKey(), jobStateWord(j.GetState()))
				break
			}
		}
		b.FinishedUnixMs = now
		b.Held = false
		w.putBuild(row, b)
		w.releaseGroup(b.GetConcurrencyGroup(), now)
		return
	}
	want := row.Build.GetState()
	switch {
	case blocked && !active:
		want = bBlocked
	case want == bBlocked && row.Build.GetStartedUnixMs() != 0:
		want = bRunning
	case want == bBlocked:
		want = bQueued
	}
	if want != row.Build.GetState() {
		b := proto.Clone(row.Build).(*kilnv1.Build)
		b.State = want
		w.putBuild(row, b)
	}
}

func (w *wtx) groupRows(group string) []*buildRow {
	var rows []*buildRow
	it := mustGet(w.tx, tableBuilds, "group", group)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		rows = append(rows, raw.(*buildRow))
	}
	return rows
}

// groupActive counts the unfinished, not held builds of a concurrency group.
func (w *wtx) groupActive(group string) int {
	n := 0
	for _, r := range w.groupRows(group) {
		if !lifecycle.BuildFinished(r.Build.GetState()) && !r.Build.GetHeld() {
			n++
		}
	}
	return n
}

// releaseGroup releases the held builds of a group, oldest (lowest build
// number) first, while the group has room under the held build's limit.
func (w *wtx) releaseGroup(group string, now int64) {
	if group == "" {
		return
	}
	for {
		rows := w.groupRows(group)
		active := 0
		var oldest *buildRow
		var oldestN uint64
		for _, r := range rows {
			if lifecycle.BuildFinished(r.Build.GetState()) {
				continue
			}
			if !r.Build.GetHeld() {
				active++
				continue
			}
			n, _ := strconv.ParseUint(r.ID, 10, 64)
			if oldest == nil || n < oldestN {
				oldest, oldestN = r, n
			}
		}
		if oldest == nil || active >= int(max(oldest.Build.GetConcurrencyLimit(), 1)) {
			return
		}
		b := proto.Clone(oldest.Build).(*kilnv1.Build)
		b.Held = false
		w.putBuild(oldest, b)
		w.advance(oldest.ID, now)
	}
}
