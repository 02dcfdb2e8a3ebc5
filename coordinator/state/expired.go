package state

import (
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ExpiredCounts are the jobs and builds build expiry removed, by their
// final state (indexed by the kiln.v1.JobState / BuildState value). They are
// replicated state (updated by the ExpireBuilds apply, kept in snapshots),
// so counts of results over all history — the /metrics counters — add them
// to what the store still holds and never go down when builds expire.
type ExpiredCounts struct {
	Jobs   [16]uint64
	Builds [8]uint64
}

// countExpired adds a build about to be deleted, and its jobs, to the
// expired counts.
func (w *wtx) countExpired(row *buildRow) {
	m := *readMeta(w.tx)
	if st := int(row.Build.GetState()); st >= 0 && st < len(m.Expired.Builds) {
		m.Expired.Builds[st]++
	}
	for _, id := range row.JobIDs {
		if j := getJob(w.tx, id); j != nil {
			if st := int(j.GetState()); st >= 0 && st < len(m.Expired.Jobs) {
				m.Expired.Jobs[st]++
			}
		}
	}
	mustInsert(w.tx, tableMeta, &m)
}

// expiredFrom reads the counts of a snapshot's meta record (absent in
// snapshots written before they existed: zeros).
func expiredFrom(meta *fsmv1.SnapshotMeta) ExpiredCounts {
	var c ExpiredCounts
	copy(c.Jobs[:], meta.GetExpiredJobsByState())
	copy(c.Builds[:], meta.GetExpiredBuildsByState())
	return c
}

// Expired returns the jobs and builds build expiry removed, by final
// state.
func (r *Reader) Expired() ExpiredCounts { return readMeta(r.tx).Expired }

// ExpiredJobs is how many jobs that ended in state st were removed.
func (c ExpiredCounts) ExpiredJobs(st kilnv1.JobState) uint64 {
	if int(st) < 0 || int(st) >= len(c.Jobs) {
		return 0
	}
	return c.Jobs[st]
}

// ExpiredBuilds is how many builds that ended in state st were removed.
func (c ExpiredCounts) ExpiredBuilds(st kilnv1.BuildState) uint64 {
	if int(st) < 0 || int(st) >= len(c.Builds) {
		return 0
	}
	return c.Builds[st]
}
