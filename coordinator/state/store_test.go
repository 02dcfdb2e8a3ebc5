package state

import (
	"errors"
	"io"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func steps(keys ...string) []*kilnv1.StepSpec {
	var out []*kilnv1.StepSpec
	for _, k := range keys {
		out = append(out, &kilnv1.StepSpec{Key: k, Commands: []string{"true"}})
	}
	return out
}

func TestNewStoreIsEmpty(t *testing.T) {
	s := New()
	if s.LastIndex() != 0 || s.NextBuildNumber() != 1 || len(s.ListBuilds(0)) != 0 || len(s.Agents()) != 0 ||
		len(s.Nodes()) != 0 || len(s.QueuedJobs()) != 0 || len(s.ActiveJobs()) != 0 {
		t.Fatal("new store is not empty")
	}
	if _, ok := s.Build("1"); ok {
		t.Fatal("found a build")
	}
	if _, ok := s.Agent("a"); ok {
		t.Fatal("found an agent")
	}
}

func TestStoreClonesCommands(t *testing.T) {
	s := New()
	cmd := &fsmv1.SubmitBuild{RequestId: "r", Env: map[string]string{"A": "1"}, Steps: steps("a")}
	b, err := s.SubmitBuild(1, cmd)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env["A"] = "changed"
	cmd.Steps[0].Commands[0] = "rm -rf /"
	got, _ := s.Build(b.Id)
	if got.Env["A"] != "1" || got.Jobs[0].Spec.Commands[0] != "true" {
		t.Fatalf("store shares caller memory: %v", got)
	}
	// Mutating a returned build's header does not reach the store.
	got.Name = "mutated"
	if again, _ := s.Build(b.Id); again.Name == "mutated" {
		t.Fatal("Build returned the stored header")
	}
}

func TestListBuildsNewestFirst(t *testing.T) {
	s := New()
	for i := uint64(1); i <= 12; i++ {
		if _, err := s.SubmitBuild(i, &fsmv1.SubmitBuild{Steps: steps("a", "b")}); err != nil {
			t.Fatal(err)
		}
	}
	bs := s.ListBuilds(3)
	if len(bs) != 3 || bs[0].Id != "12" || bs[1].Id != "11" || bs[2].Id != "10" || len(bs[0].Jobs) != 2 {
		t.Fatalf("builds %v", bs)
	}
	if len(s.ListBuilds(0)) != 12 || len(s.ListBuilds(-1)) != 12 || len(s.ListBuilds(100)) != 12 {
		t.Fatal("limit")
	}
	// Queue order follows queue_index, not the job id's text order.
	q := s.QueuedJobs()
	if len(q) != 24 || q[0].BuildId != "1" || q[23].BuildId != "12" {
		t.Fatalf("queue starts %s ends %s", q[0].Id, q[len(q)-1].Id)
	}
	for i := 1; i < len(q); i++ {
		if q[i].QueueIndex < q[i-1].QueueIndex {
			t.Fatal("queue out of order")
		}
	}
}

func TestLogsPaging(t *testing.T) {
	s := New()
	if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{Steps: steps("a", "a2")}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"1.a", "1.a2"} {
		if err := s.AssignJob(2, &fsmv1.AssignJob{JobId: id, Attempt: 1, Agent: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	cmd := &fsmv1.AppendLogs{Agent: "x"}
	for seq := uint64(1); seq <= 300; seq++ {
		cmd.Chunks = append(cmd.Chunks, &kilnv1.LogChunk{JobId: "1.a", Attempt: 1, Seq: seq})
		cmd.Chunks = append(cmd.Chunks, &kilnv1.LogChunk{JobId: "1.a2", Attempt: 1, Seq: seq})
	}
	outs := s.AppendLogs(3, cmd)
	if len(outs) != 2 || outs[0].LogSeq != 300 || outs[1].LogSeq != 300 {
		t.Fatalf("outcomes %v", outs)
	}
	tests := []struct {
		after   uint64
		max     int
		n       int
		first   uint64
		attempt uint32
		jobID   string
	}{
		{0, 0, 300, 1, 1, "1.a"},
		{255, 0, 45, 256, 1, "1.a"}, // crosses a byte boundary of the seq key
		{10, 5, 5, 11, 1, "1.a"},
		{300, 0, 0, 0, 1, "1.a"},
		{^uint64(0), 0, 0, 0, 1, "1.a"},
		{0, 0, 0, 0, 2, "1.a"},
		{0, 0, 0, 0, 1, "1"},
	}
	for _, tc := range tests {
		got := s.Logs(tc.jobID, tc.attempt, tc.after, tc.max)
		if len(got) != tc.n || (tc.n > 0 && got[0].Seq != tc.first) {
			t.Fatalf("Logs(%s,%d,%d,%d): %d chunks", tc.jobID, tc.attempt, tc.after, tc.max, len(got))
		}
		for i := 1; i < len(got); i++ {
			if got[i].Seq != got[i-1].Seq+1 || got[i].JobId != tc.jobID {
				t.Fatal("out of order")
			}
		}
	}
}

func TestChangedBroadcastConcurrent(t *testing.T) {
	s := New()
	const readers = 8
	var wg sync.WaitGroup
	ready := make(chan struct{}, readers)
	for i := 0; i < readers; i++ {
		ch := s.Changed()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready <- struct{}{}
			<-ch
			_ = s.ListBuilds(0)
			_ = s.Agents()
		}()
	}
	for i := 0; i < readers; i++ {
		<-ready
	}
	if err := s.SetNode(1, &fsmv1.SetNode{Id: "n"}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestRestoreValidation(t *testing.T) {
	meta := func(v uint32) *fsmv1.SnapshotRecord {
		return &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Meta{Meta: &fsmv1.SnapshotMeta{Version: v, NextBuildNumber: 2}}}
	}
	build := &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Build{Build: &kilnv1.Build{Id: "1"}}}
	job := &fsmv1.SnapshotRecord{Record: &fsmv1.SnapshotRecord_Job{Job: &kilnv1.Job{Id: "1.a", BuildId: "1"}}}
	tests := map[string]struct {
		recs []*fsmv1.SnapshotRecord
		ok   bool
	}{
		"valid":            {[]*fsmv1.SnapshotRecord{meta(1), build, job}, true},
		"no records":       {nil, false},
		"meta not first":   {[]*fsmv1.SnapshotRecord{build, meta(1)}, false},
		"two metas":        {[]*fsmv1.SnapshotRecord{meta(1), meta(1)}, false},
		"wrong version":    {[]*fsmv1.SnapshotRecord{meta(9)}, false},
		"job before build": {[]*fsmv1.SnapshotRecord{meta(1), job, build}, false},
		"repeated build":   {[]*fsmv1.SnapshotRecord{meta(1), build, build}, false},
		"empty record":     {[]*fsmv1.SnapshotRecord{meta(1), {}}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := New()
			if err := s.SetNode(7, &fsmv1.SetNode{Id: "keep"}); err != nil {
				t.Fatal(err)
			}
			i := 0
			err := s.Restore(func() (*fsmv1.SnapshotRecord, error) {
				if i == len(tc.recs) {
					return nil, io.EOF
				}
				i++
				return tc.recs[i-1], nil
			})
			if (err == nil) != tc.ok {
				t.Fatalf("err %v", err)
			}
			if !tc.ok {
				if s.LastIndex() != 7 || len(s.Nodes()) != 1 {
					t.Fatal("failed restore changed the store")
				}
				return
			}
			b, ok := s.Build("1")
			if !ok || len(b.Jobs) != 1 || len(s.Nodes()) != 0 || s.NextBuildNumber() != 2 {
				t.Fatalf("restored %v", b)
			}
		})
	}
	// A reader error aborts the restore.
	s := New()
	boom := errors.New("boom")
	if err := s.Restore(func() (*fsmv1.SnapshotRecord, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("err %v", err)
	}
}

func TestSnapshotIsPointInTime(t *testing.T) {
	s := New()
	if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{RequestId: "r", Steps: steps("a")}); err != nil {
		t.Fatal(err)
	}
	snap := s.Snapshot()
	if _, err := s.SubmitBuild(2, &fsmv1.SubmitBuild{Steps: steps("b")}); err != nil {
		t.Fatal(err)
	}
	var recs []*fsmv1.SnapshotRecord
	if err := snap.Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if snap.LastIndex() != 1 {
		t.Fatalf("snapshot last index %d", snap.LastIndex())
	}
	// meta, request, build, job.
	if len(recs) != 4 || recs[0].GetMeta().GetNextBuildNumber() != 2 || recs[2].GetBuild().GetId() != "1" || recs[3].GetJob().GetId() != "1.a" {
		t.Fatalf("records %v", recs)
	}
	if idx := recs[0].GetMeta().GetLastIndex(); idx != 1 {
		t.Fatalf("last index in meta %d", idx)
	}
	// The meta round-trips its last index through the wire format.
	b, err := proto.Marshal(recs[0])
	if err != nil {
		t.Fatal(err)
	}
	back := &fsmv1.SnapshotRecord{}
	if err := proto.Unmarshal(b, back); err != nil {
		t.Fatal(err)
	}
	if idx := back.GetMeta().GetLastIndex(); idx != 1 {
		t.Fatalf("last index after wire %d", idx)
	}
	// A stop from the callback is returned.
	stop := errors.New("stop")
	if err := snap.Records(func(*fsmv1.SnapshotRecord) error { return stop }); !errors.Is(err, stop) {
		t.Fatal(err)
	}
}
