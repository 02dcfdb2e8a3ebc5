package state

import (
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// CommitLogs records the committed log position of one agent's attempts
// (the chunks themselves are in each coordinator's log store, not here).
// It returns one outcome per commit, in order: OutcomeLogCommitted with the
// job's committed seq, or OutcomeStale. A commit moves a job's position
// forward only; one at or below log_seq changes nothing but still
// acknowledges the committed seq. The first commit of an ASSIGNED attempt
// makes it RUNNING, as its first chunk did before.
func (s *Store) CommitLogs(index uint64, cmd *fsmv1.CommitLogs) []AttemptOutcome {
	outs := make([]AttemptOutcome, 0, len(cmd.GetCommits()))
	_ = s.write(index, func(w *wtx) error {
		for _, c := range cmd.GetCommits() {
			j, f := w.fenced(c.GetJobId(), c.GetAttempt(), cmd.GetAgent())
			if j == nil {
				outs = append(outs, stale(c.GetJobId(), c.GetAttempt(), f))
				continue
			}
			if c.GetSeq() > j.GetLogSeq() {
				j = cloneJob(j)
				j.LogSeq = c.GetSeq()
				j.LogBytes = c.GetBytes()
				j.LogLines = c.GetLines()
				j.LogDigest = append([]byte(nil), c.GetDigest()...)
				if j.State == jAssigned {
					j.State = jRunning
					j.StartedUnixMs = c.GetFirstChunkUnixMs()
					if j.StartedUnixMs == 0 {
						j.StartedUnixMs = cmd.GetTimeUnixMs()
					}
				}
				w.putJob(j)
			}
			outs = append(outs, AttemptOutcome{JobID: j.Id, Attempt: j.Attempt, Outcome: OutcomeLogCommitted, LogSeq: j.GetLogSeq()})
		}
		return nil
	})
	return outs
}

// LogPosition is the committed log position of a job's current attempt.
type LogPosition struct {
	JobID   string
	Attempt uint32
	Seq     uint64
	Bytes   uint64
	Digest  []byte
}

// LogPositions returns the committed log position of every job whose
// current attempt has committed chunks (the log catch-up compares them
// with what the local log store holds).
func (s *Store) LogPositions() []LogPosition {
	var out []LogPosition
	it := mustGet(s.read(), tableJobs, "id")
	for raw := it.Next(); raw != nil; raw = it.Next() {
		j := raw.(*kilnv1.Job)
		if j.GetLogSeq() > 0 && len(j.GetLogDigest()) > 0 {
			out = append(out, LogPosition{JobID: j.GetId(), Attempt: j.GetAttempt(), Seq: j.GetLogSeq(), Bytes: j.GetLogBytes(), Digest: j.GetLogDigest()})
		}
	}
	return out
}
