package agent

import (
	"fmt"
)

// capLocked returns the part of p the attempt's log keeps: everything
// until the log limit the leader announced (Registered.max_log_bytes) is
// reached, nothing after. Dropped bytes are counted for the marker line;
// the job itself goes on (its output is consumed, not back-pressured).
func (a *Agent) capLocked(at *attempt, p []byte) []byte {
	limit := a.maxLogBytes.Load()
	if limit <= 0 {
		at.logged += int64(len(p))
		if len(p) > 0 {
			at.lastByte = p[len(p)-1]
		}
		return p
	}
	room := limit - at.logged
	if room <= 0 {
		at.overflow += int64(len(p))
		return nil
	}
	if int64(len(p)) > room {
		at.overflow += int64(len(p)) - room
		p = p[:room]
	}
	at.logged += int64(len(p))
	at.lastByte = p[len(p)-1]
	return p
}

// markOverflowLocked ends a log that hit the limit with one marker line
// saying how much was dropped. The marker is outside the limit.
func (a *Agent) markOverflowLocked(at *attempt) {
	if at.overflow == 0 {
		return
	}
	line := fmt.Sprintf("kiln: log limit of %d bytes reached (--max-log-bytes); %d further bytes of output were dropped\n",
		a.maxLogBytes.Load(), at.overflow)
	if at.logged > 0 && at.lastByte != '\n' {
		line = "\n" + line
	}
	at.pending = append(at.pending, line...)
	at.unacked += int64(len(line))
	at.overflow = 0
}

// LogMarkerPrefix starts the marker line of a log cut at the limit.
const LogMarkerPrefix = "kiln: log limit of "
