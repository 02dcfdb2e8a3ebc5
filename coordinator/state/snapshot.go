package state

import (
	"errors"
	"fmt"
	"io"

	memdb "github.com/hashicorp/go-memdb"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// SnapshotVersion is the SnapshotMeta.version this package writes and reads.
const SnapshotVersion = 1

// Snapshot is a consistent, point-in-time view of the store. It stays valid
// while the store keeps changing and needs no release.
type Snapshot struct {
	tx *memdb.Txn
}

// Snapshot returns a point-in-time view of the whole store.
func (s *Store) Snapshot() *Snapshot {
	return &Snapshot{tx: s.read()}
}

// LastIndex returns the Raft index of the last command in the view.
func (sn *Snapshot) LastIndex() uint64 { return readMeta(sn.tx).LastIndex }

// Records calls fn with every record of the view: the SnapshotMeta first,
// then nodes, agents, request records, repositories, each build followed by its jobs in
// submission order, log chunks, and artifacts. It stops at the first error from fn and
// returns it. Records passed to fn share stored messages: do not modify them.
func (sn *Snapshot) Records(fn func(*fsmv1.SnapshotRecord) error) error {
	tx := sn.tx
	m := readMeta(tx)
	meta := &fsmv1.SnapshotMeta{Version: SnapshotVersion, NextBuildNumber: m.NextBuild, LastIndex: m.LastIndex}
	if m.Expired != (ExpiredCounts{}) {
		meta.ExpiredJobsByState, meta.ExpiredBuildsByState = m.Expired.Jobs[:], m.Expired.Builds[:]
	}
	if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Meta{Meta: meta}}); err != nil {
		return err
	}
	each := func(table string, rec func(raw interface{}) error) error {
		it := mustGet(tx, table, "id")
		for raw := it.Next(); raw != nil; raw = it.Next() {
			if err := rec(raw); err != nil {
				return err
			}
		}
		return nil
	}
	if err := each(tableNodes, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Node{Node: raw.(*kilnv1.Node)}})
	}); err != nil {
		return err
	}
	if err := each(tableAgents, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Agent{Agent: raw.(*kilnv1.Agent)}})
	}); err != nil {
		return err
	}
	if err := each(tableRequests, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Request{Request: raw.(*fsmv1.RequestRecord)}})
	}); err != nil {
		return err
	}
	if err := each(tableRepos, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Repo{Repo: raw.(*kilnv1.Repo)}})
	}); err != nil {
		return err
	}
	if err := each(tableBuilds, func(raw interface{}) error {
		row := raw.(*buildRow)
		if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Build{Build: row.Build}}); err != nil {
			return err
		}
		for _, id := range row.JobIDs {
			if j := getJob(tx, id); j != nil {
				if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Job{Job: j}}); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		return err
	}
	if err := each(tableLogs, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Log{Log: raw.(*kilnv1.LogChunk)}})
	}); err != nil {
		return err
	}
	if err := each(tableArtifacts, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Artifact{Artifact: raw.(*kilnv1.Artifact)}})
	}); err != nil {
		return err
	}
	// Test reports in recording order (Restore renumbers them in this order).
	it := mustGet(tx, tableTestReports, "seq")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		if err := fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_TestReport{TestReport: raw.(*testReportRow).Report}}); err != nil {
			return err
		}
	}
	if err := sn.aclRecords(fn); err != nil {
		return err
	}
	return each(tableDeployments, func(raw interface{}) error {
		return fn(&fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Deployment{Deployment: raw.(*kilnv1.Deployment)}})
	})
}

// Restore replaces the whole store with the records returned by next, which
// returns io.EOF after the last one. The first record must be the
// SnapshotMeta; jobs must follow their build (their order becomes the
// build's job order). The store is swapped atomically: on error it is left
// unchanged. Records are cloned.
func (s *Store) Restore(next func() (*fsmv1.SnapshotRecord, error)) error {
	db, err := memdb.NewMemDB(schema())
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	tx := db.Txn(true)
	defer tx.Abort()
	insert := func(table string, obj interface{}) error {
		if err := tx.Insert(table, obj); err != nil {
			return fmt.Errorf("restore: insert into %s: %w", table, err)
		}
		return nil
	}
	first := true
	rows := map[string]*buildRow{}
	var testSeq uint64
	for {
		rec, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("restore: read record: %w", err)
		}
		if first != (rec.GetMeta() != nil) {
			return fmt.Errorf("restore: the snapshot meta must be the first record and only that")
		}
		switch r := rec.GetRecord().(type) {
		case *fsmv1.SnapshotRecord_Meta:
			first = false
			if v := r.Meta.GetVersion(); v != SnapshotVersion {
				return fmt.Errorf("restore: snapshot version %d, want %d", v, SnapshotVersion)
			}
			idx := r.Meta.GetLastIndex()
			next := r.Meta.GetNextBuildNumber()
			if next == 0 {
				next = 1
			}
			if err := insert(tableMeta, &metaRow{ID: metaID, NextBuild: next, LastIndex: idx, Expired: expiredFrom(r.Meta)}); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Node:
			if err := insert(tableNodes, proto.Clone(r.Node)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Agent:
			if err := insert(tableAgents, proto.Clone(r.Agent)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Request:
			if err := insert(tableRequests, proto.Clone(r.Request)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Repo:
			if r.Repo.GetName() == "" {
				return fmt.Errorf("restore: repository without a name")
			}
			if err := insert(tableRepos, proto.Clone(r.Repo)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Build:
			b := proto.Clone(r.Build).(*kilnv1.Build)
			b.Jobs = nil
			if b.GetId() == "" || rows[b.GetId()] != nil {
				return fmt.Errorf("restore: build with empty or repeated id %q", b.GetId())
			}
			rows[b.Id] = &buildRow{ID: b.Id, Build: b}
		case *fsmv1.SnapshotRecord_Job:
			row := rows[r.Job.GetBuildId()]
			if row == nil {
				return fmt.Errorf("restore: job %q before its build %q", r.Job.GetId(), r.Job.GetBuildId())
			}
			if err := insert(tableJobs, proto.Clone(r.Job)); err != nil {
				return err
			}
			row.JobIDs = append(row.JobIDs, r.Job.GetId())
		case *fsmv1.SnapshotRecord_Log:
			if err := insert(tableLogs, proto.Clone(r.Log)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Artifact:
			if err := ValidArtifactPath(r.Artifact.GetFile().GetPath()); err != nil || r.Artifact.GetJobId() == "" {
				return fmt.Errorf("restore: invalid artifact of job %q: %v", r.Artifact.GetJobId(), err)
			}
			if err := insert(tableArtifacts, proto.Clone(r.Artifact)); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_TestReport:
			j := getJob(tx, r.TestReport.GetJobId())
			if err := ValidArtifactPath(r.TestReport.GetFile()); err != nil || j == nil {
				return fmt.Errorf("restore: invalid test report of job %q (its build must come first): %v", r.TestReport.GetJobId(), err)
			}
			testSeq++
			if err := insert(tableTestReports, &testReportRow{Report: proto.Clone(r.TestReport).(*kilnv1.TestReport), BuildID: j.GetBuildId(), Seq: testSeq}); err != nil {
				return err
			}
		case *fsmv1.SnapshotRecord_Deployment:
			if r.Deployment.GetId() == "" {
				return fmt.Errorf("restore: deployment without an id")
			}
			if err := insert(tableDeployments, proto.Clone(r.Deployment)); err != nil {
				return err
			}
		default:
			if ok, err := restoreACL(tx, rec); ok {
				if err != nil {
					return fmt.Errorf("restore: %w", err)
				}
				continue
			}
			return fmt.Errorf("restore: unknown record %T", r)
		}
	}
	if first {
		return fmt.Errorf("restore: empty snapshot (no meta record)")
	}
	for _, row := range rows {
		if err := insert(tableBuilds, row); err != nil {
			return err
		}
	}
	tx.Commit()
	s.db.Store(db)
	s.restored.fire()
	s.dispatch.fire()
	s.changed.fire()
	return nil
}
