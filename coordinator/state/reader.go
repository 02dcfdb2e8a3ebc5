package state

import (
	"cmp"
	"slices"
	"strconv"

	memdb "github.com/hashicorp/go-memdb"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Reader is a consistent, read-only view of the whole store: every method
// reads the same memdb transaction, so a scan that looks at several tables
// (the metrics collector, the queue explanation, delivery statistics) sees
// one applied index. Messages it returns are shared with the store: never
// modify them (clone first).
type Reader struct{ tx *memdb.Txn }

// Reader opens a view of the store as of now.
func (s *Store) Reader() *Reader { return &Reader{tx: s.read()} }

// LastIndex is the Raft index of the last command the view includes.
func (r *Reader) LastIndex() uint64 { return readMeta(r.tx).LastIndex }

// EachJob calls fn for every job (by job id) until fn returns false.
func (r *Reader) EachJob(fn func(*kilnv1.Job) bool) {
	it := mustGet(r.tx, tableJobs, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if !fn(raw.(*kilnv1.Job)) {
			return
		}
	}
}

// EachBuild calls fn for every build's header (no jobs, no test summary),
// oldest (lowest number) first, until fn returns false.
func (r *Reader) EachBuild(fn func(*kilnv1.Build) bool) {
	// One pass over the index and a sort beat a lookup per build number.
	type numbered struct {
		n uint64
		b *kilnv1.Build
	}
	var rows []numbered
	it := mustGet(r.tx, tableBuilds, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		row := raw.(*buildRow)
		n, _ := strconv.ParseUint(row.ID, 10, 64)
		rows = append(rows, numbered{n, row.Build})
	}
	slices.SortFunc(rows, func(a, b numbered) int { return cmp.Compare(a.n, b.n) })
	for _, row := range rows {
		if !fn(row.b) {
			return
		}
	}
}

// BuildJobs returns a build's jobs in submission order (nil when the build
// does not exist).
func (r *Reader) BuildJobs(buildID string) []*kilnv1.Job {
	row := getBuildRow(r.tx, buildID)
	if row == nil {
		return nil
	}
	jobs := make([]*kilnv1.Job, 0, len(row.JobIDs))
	for _, id := range row.JobIDs {
		if j := getJob(r.tx, id); j != nil {
			jobs = append(jobs, j)
		}
	}
	return jobs
}

// BuildHeader returns a build's own fields (no jobs, no test summary).
func (r *Reader) BuildHeader(id string) (*kilnv1.Build, bool) {
	row := getBuildRow(r.tx, id)
	if row == nil {
		return nil, false
	}
	return row.Build, true
}

// GroupBuilds returns the headers of the builds of a concurrency group.
func (r *Reader) GroupBuilds(group string) []*kilnv1.Build {
	var out []*kilnv1.Build
	it := mustGet(r.tx, tableBuilds, "group", group)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, raw.(*buildRow).Build)
	}
	return out
}

// QueuedJobs returns the QUEUED jobs in dispatch order.
func (r *Reader) QueuedJobs() []*kilnv1.Job { return collectJobs(mustGet(r.tx, tableJobs, "queue")) }

// Agents returns every agent by name with Running filled (copies).
func (r *Reader) Agents() []*kilnv1.Agent {
	var out []*kilnv1.Agent
	it := mustGet(r.tx, tableAgents, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		out = append(out, withRunning(r.tx, raw.(*kilnv1.Agent)))
	}
	return out
}

// ArtifactBytes sums the sizes of every artifact record (each attempt's
// files; a blob shared by several records counts each time).
func (r *Reader) ArtifactBytes() (files int, bytes int64) {
	it := mustGet(r.tx, tableArtifacts, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		files++
		bytes += raw.(*kilnv1.Artifact).GetFile().GetSize()
	}
	return files, bytes
}

// ActiveDeployment returns the unfinished deployment of an environment,
// if any (at most one runs per environment).
func (r *Reader) ActiveDeployment(env string) (*kilnv1.Deployment, bool) {
	it := mustGet(r.tx, tableDeployments, "active", true)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if d := raw.(*kilnv1.Deployment); d.GetEnvironment() == env {
			return d, true
		}
	}
	return nil, false
}
