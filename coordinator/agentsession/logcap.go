package agentsession

import (
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// LogMarkerSlack is what the coordinator accepts beyond --max-log-bytes
// per attempt: the agent's one marker line saying how much it dropped.
const LogMarkerSlack = 4 << 10

// logKey names one attempt's log.
type logKey struct {
	job     string
	attempt uint32
}

// logCap clips log chunks past the per-attempt limit, for an agent that
// does not cut its output itself (an old or broken one). Chunks keep their
// seq (so the log stays gapless and FinishJob's last seq still matches);
// only their data is cut. It counts per session, starting from what the
// state already holds for an attempt the first time the session sees it.
// Only the session's processing goroutine uses it.
type logCap struct {
	limit int64 // 0: no limit
	bytes map[logKey]int64
	// committed returns the bytes of an attempt's committed log.
	committed func(job string, attempt uint32) int64
}

// clip returns batch with the data past the limit cut (copies of the
// chunks it changes) and the number of bytes it dropped.
func (c *logCap) clip(batch []*kilnv1.LogChunk) ([]*kilnv1.LogChunk, int64) {
	if c.limit <= 0 {
		return batch, 0
	}
	var dropped int64
	for i, ch := range batch {
		k := logKey{ch.GetJobId(), ch.GetAttempt()}
		n, ok := c.bytes[k]
		if !ok {
			n = c.committed(k.job, k.attempt)
		}
		room := c.limit + LogMarkerSlack - n
		data := int64(len(ch.GetData()))
		if data > max(room, 0) {
			keep := max(room, 0)
			cut := proto.Clone(ch).(*kilnv1.LogChunk)
			cut.Data = cut.Data[:keep]
			batch[i] = cut
			dropped += data - keep
			data = keep
		}
		c.bytes[k] = n + data
	}
	return batch, dropped
}

// committedLogBytes is the size of an attempt's committed log: the
// positions CommitLogs recorded, plus chunks a pre-log-store cluster kept
// in the state (once per attempt and session: the first chunk the session
// sees of it).
func (srv *Server) committedLogBytes(job string, attempt uint32) int64 {
	var n int64
	if j, ok := srv.cfg.Store.Job(job); ok && j.GetAttempt() == attempt {
		n = int64(j.GetLogBytes())
	}
	for _, c := range srv.cfg.Store.Logs(job, attempt, 0, 0) {
		n += int64(len(c.GetData()))
	}
	return n
}
