package state

import (
	"testing"

	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestCommitLogsMovesForwardAndFences(t *testing.T) {
	s := New()
	if _, err := s.SubmitBuild(1, &fsmv1.SubmitBuild{Steps: steps("a")}); err != nil {
		t.Fatal(err)
	}
	if err := s.AssignJob(2, &fsmv1.AssignJob{JobId: "1.a", Attempt: 1, Agent: "x", TimeUnixMs: 5}); err != nil {
		t.Fatal(err)
	}
	commit := func(idx uint64, agent string, attempt uint32, seq, bytes uint64) []AttemptOutcome {
		return s.CommitLogs(idx, &fsmv1.CommitLogs{Agent: agent, TimeUnixMs: 100, Commits: []*fsmv1.LogCommit{
			{JobId: "1.a", Attempt: attempt, Seq: seq, Bytes: bytes, Lines: bytes / 2, Digest: []byte{byte(seq)}, FirstChunkUnixMs: 42},
		}})
	}
	outs := commit(3, "x", 1, 4, 40)
	if len(outs) != 1 || outs[0].Outcome != OutcomeLogCommitted || outs[0].LogSeq != 4 {
		t.Fatalf("first commit: %+v", outs)
	}
	j, _ := s.Job("1.a")
	if j.GetLogSeq() != 4 || j.GetLogBytes() != 40 || j.GetLogLines() != 20 || j.GetLogDigest()[0] != 4 ||
		j.GetState() != jRunning || j.GetStartedUnixMs() != 42 {
		t.Fatalf("job after the first commit: %v", j)
	}
	// An older position (a resend whose Ack was lost) changes nothing but
	// acknowledges the committed seq.
	if outs := commit(4, "x", 1, 2, 20); outs[0].Outcome != OutcomeLogCommitted || outs[0].LogSeq != 4 {
		t.Fatalf("older commit: %+v", outs)
	}
	if j, _ := s.Job("1.a"); j.GetLogBytes() != 40 {
		t.Fatalf("an older commit changed the job: %v", j)
	}
	// Another agent or attempt is stale and changes nothing.
	if outs := commit(5, "y", 1, 9, 90); outs[0].Outcome != OutcomeStale {
		t.Fatalf("other agent: %+v", outs)
	}
	if outs := commit(6, "x", 2, 9, 90); outs[0].Outcome != OutcomeStale {
		t.Fatalf("other attempt: %+v", outs)
	}
	if j, _ := s.Job("1.a"); j.GetLogSeq() != 4 {
		t.Fatalf("a stale commit changed the job: %v", j)
	}
	// The finish rule reads the committed position.
	if _, err := s.FinishJob(7, &fsmv1.FinishJob{Agent: "x", Finished: &kilnv1.JobFinished{JobId: "1.a", Attempt: 1, Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: 5}}); err == nil {
		t.Fatal("a finish beyond the committed log was accepted")
	}
	// The position survives a snapshot and restore.
	snap := s.Snapshot()
	var recs []*fsmv1.SnapshotRecord
	if err := snap.Records(func(r *fsmv1.SnapshotRecord) error { recs = append(recs, r); return nil }); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.GetLog() != nil {
			t.Fatalf("a snapshot holds log data: %v", r)
		}
		if job := r.GetJob(); job != nil && (job.GetLogSeq() != 4 || job.GetLogBytes() != 40 || len(job.GetLogDigest()) != 1) {
			t.Fatalf("snapshot job %v", job)
		}
	}
	if pos := s.LogPositions(); len(pos) != 1 || pos[0].Seq != 4 || pos[0].JobID != "1.a" {
		t.Fatalf("log positions %+v", pos)
	}
}
