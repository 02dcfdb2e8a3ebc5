package state

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"

	memdb "github.com/hashicorp/go-memdb"

	"github.com/kiln-ci/kiln/internal/lifecycle"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// finishedIndexer indexes finished builds by (finished time, build
// number), order-preserving, so the leader finds the builds whose
// retention ended by reading the start of the index: the cost of a pass
// does not grow with the builds kept. FromArgs and PrefixFromArgs take no
// arguments (the whole index).
type finishedIndexer struct{}

func (finishedIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("finished index: unexpected %T", raw)
	}
	if !lifecycle.BuildFinished(row.Build.GetState()) {
		return false, nil, nil
	}
	num, err := strconv.ParseUint(row.ID, 10, 64)
	if err != nil {
		return false, nil, fmt.Errorf("finished index: build id %q: %v", row.ID, err)
	}
	key := binary.BigEndian.AppendUint64(nil, sortableInt(row.Build.GetFinishedUnixMs()))
	return true, binary.BigEndian.AppendUint64(key, num), nil
}

func (finishedIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	if len(args) != 0 {
		return nil, errors.New("finished index: takes no arguments")
	}
	return nil, nil
}

func (x finishedIndexer) PrefixFromArgs(args ...interface{}) ([]byte, error) {
	return x.FromArgs(args...)
}

// RemovedBuilds describes builds an ExpireBuilds command deleted. It is
// what OnBuildsRemoved hooks receive.
type RemovedBuilds struct {
	// Index is the Raft index of the command.
	Index uint64
	// BuildIDs and JobIDs are the deleted builds and every job of them.
	// Their log chunks, test reports and artifact records are gone from
	// the state with them; a store that keeps job logs elsewhere deletes
	// them by these ids.
	BuildIDs, JobIDs []string
	// Blobs are the digests (artifacts of any attempt, uploaded source
	// archives) of the deleted builds that no remaining record refers to:
	// the blobs each node may delete now.
	Blobs []string
}

// hooks holds the OnBuildsRemoved callbacks.
type hooks struct {
	mu      sync.Mutex
	removed []func(RemovedBuilds)
}

// OnBuildsRemoved registers fn, called on every node after an
// ExpireBuilds command that deleted at least one build is applied, on the
// FSM's goroutine and after the change is visible to readers. fn must
// return quickly (hand slow work, such as deleting files, to a goroutine
// of its own): the next command waits for it. Builds that disappear
// because a snapshot is restored do not call fn; the blob garbage
// collector (coordinator/blobgc) deletes what they leave behind.
func (s *Store) OnBuildsRemoved(fn func(RemovedBuilds)) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.removed = append(s.hooks.removed, fn)
}

func (s *Store) buildsRemoved(r RemovedBuilds) {
	s.hooks.mu.Lock()
	fns := slices.Clone(s.hooks.removed)
	s.hooks.mu.Unlock()
	for _, fn := range fns {
		fn(r)
	}
}

// dueForDeletion returns up to limit finished builds whose build
// retention ended at or before now (finished + retentionMs <= now),
// oldest finish first. retentionMs <= 0 returns none.
func dueForDeletion(tx *memdb.Txn, now, retentionMs int64, limit int) []*buildRow {
	if retentionMs <= 0 {
		return nil
	}
	var out []*buildRow
	it := mustGet(tx, tableBuilds, "finished")
	for raw := it.Next(); raw != nil && len(out) < limit; raw = it.Next() {
		row := raw.(*buildRow)
		f := row.Build.GetFinishedUnixMs()
		if f > math.MaxInt64-retentionMs || f+retentionMs > now {
			break
		}
		out = append(out, row)
	}
	return out
}

// BuildsDue reports whether an ExpireBuilds{now, retentionMs} would delete
// at least one build.
func (s *Store) BuildsDue(now, retentionMs int64) bool {
	return len(dueForDeletion(s.read(), now, retentionMs, 1)) > 0
}

// ExpireBuilds deletes the finished builds whose build retention ended
// (see the command's doc), at most MaxExpiredBuildsPerCommand of them,
// each with its jobs, log chunks, test reports, artifact records and
// request id, and returns their ids. The OnBuildsRemoved hooks run after
// the commit.
func (s *Store) ExpireBuilds(index uint64, cmd *fsmv1.ExpireBuilds) ([]string, error) {
	var removed RemovedBuilds
	err := s.write(index, func(w *wtx) error {
		if cmd.GetRetentionMs() < 0 {
			return fmt.Errorf("expire builds: retention %dms is negative: %w", cmd.GetRetentionMs(), ErrInvalidCommand)
		}
		candidates := map[string]bool{}
		for _, row := range dueForDeletion(w.tx, cmd.GetTimeUnixMs(), cmd.GetRetentionMs(), MaxExpiredBuildsPerCommand) {
			w.countExpired(row)
			w.deleteBuild(row, candidates)
			removed.BuildIDs = append(removed.BuildIDs, row.ID)
			removed.JobIDs = append(removed.JobIDs, row.JobIDs...)
		}
		removed.Blobs = unreferenced(w.tx, candidates)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(removed.BuildIDs) > 0 {
		removed.Index = index
		s.buildsRemoved(removed)
	}
	return removed.BuildIDs, nil
}

// deleteBuild deletes a build and everything recorded under it, adding the
// digests it referred to to blobs.
func (w *wtx) deleteBuild(row *buildRow, blobs map[string]bool) {
	tx := w.tx
	if sha := row.Build.GetSource().GetArchiveSha256(); sha != "" {
		blobs[sha] = true
	}
	it := mustGet(tx, tableArtifacts, "build", row.ID)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		blobs[raw.(*kilnv1.Artifact).GetFile().GetSha256()] = true
	}
	mustDeleteAll(tx, tableArtifacts, "build", row.ID)
	mustDeleteAll(tx, tableTestReports, "build", row.ID)
	for _, id := range row.JobIDs {
		if _, err := tx.DeletePrefix(tableLogs, "id_prefix", id); err != nil {
			panic(fmt.Sprintf("state: delete log chunks of job %s: %v", id, err))
		}
		if j := getJob(tx, id); j != nil {
			mustDelete(tx, tableJobs, j)
		}
	}
	if rid := row.Build.GetRequestId(); rid != "" {
		if raw := mustFirst(tx, tableRequests, rid); raw != nil && raw.(*fsmv1.RequestRecord).GetBuildId() == row.ID {
			mustDelete(tx, tableRequests, raw)
		}
	}
	mustDelete(tx, tableBuilds, row)
}

// unreferenced returns, sorted, the digests of candidates that no
// artifact record and no remaining build's source refers to (two index
// lookups per digest).
func unreferenced(tx *memdb.Txn, candidates map[string]bool) []string {
	var out []string
	for sha := range candidates {
		if raw, err := tx.First(tableArtifacts, "sha", sha); err != nil || raw != nil {
			continue
		}
		if archiveKept(tx, sha) {
			continue
		}
		out = append(out, sha)
	}
	slices.Sort(out)
	return out
}

// archiveKept reports whether a build whose artifact retention has not
// ended uses sha as its source archive (the rule of SourceArchiveDigests).
func archiveKept(tx *memdb.Txn, sha string) bool {
	it := mustGet(tx, tableBuilds, "archive", sha)
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if !raw.(*buildRow).Build.GetArtifactsExpired() {
			return true
		}
	}
	return false
}

// artifactShaIndexer indexes artifact records by their blob's digest.
type artifactShaIndexer struct{}

func (artifactShaIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	a, ok := raw.(*kilnv1.Artifact)
	if !ok {
		return false, nil, fmt.Errorf("artifact digest index: unexpected %T", raw)
	}
	return true, []byte(a.GetFile().GetSha256() + "\x00"), nil
}

func (artifactShaIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	sha, ok := "", len(args) == 1
	if ok {
		sha, ok = args[0].(string)
	}
	if !ok {
		return nil, errors.New("artifact digest index: want one string argument")
	}
	return []byte(sha + "\x00"), nil
}

// archiveIndexer indexes builds by the digest of their uploaded source
// archive; builds without one are absent.
type archiveIndexer struct{}

func (archiveIndexer) FromObject(raw interface{}) (bool, []byte, error) {
	row, ok := raw.(*buildRow)
	if !ok {
		return false, nil, fmt.Errorf("archive index: unexpected %T", raw)
	}
	sha := row.Build.GetSource().GetArchiveSha256()
	if sha == "" {
		return false, nil, nil
	}
	return true, []byte(sha + "\x00"), nil
}

func (archiveIndexer) FromArgs(args ...interface{}) ([]byte, error) {
	return artifactShaIndexer{}.FromArgs(args...)
}

func mustDelete(tx *memdb.Txn, table string, obj interface{}) {
	if err := tx.Delete(table, obj); err != nil {
		panic(fmt.Sprintf("state: delete from %s: %v", table, err))
	}
}

func mustDeleteAll(tx *memdb.Txn, table, index string, args ...interface{}) {
	if _, err := tx.DeleteAll(table, index, args...); err != nil {
		panic(fmt.Sprintf("state: delete from %s by %s: %v", table, index, err))
	}
}
