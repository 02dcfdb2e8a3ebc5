package scheduler

import (
	"context"
	"errors"
	"strconv"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
)

// expireApprovals commits a timeout decision for every approval gate whose
// deadline (blocked time + the gate's timeout, 7 days by default) has
// passed. The deadlines are replicated state, so a new leader picks them up
// as they are; the FSM re-checks each deadline against the command's time.
// The clock is read only while some gate is blocked.
func (s *Scheduler) expireApprovals(ctx context.Context) {
	blocked := s.store.BlockedJobs()
	if len(blocked) == 0 {
		return
	}
	now := s.cfg.Now().UnixMilli()
	for _, j := range blocked {
		if now < state.ApprovalDeadline(j) {
			continue
		}
		// The blocked time makes the id unique per blocking, so a gate
		// blocked again after a retry times out again.
		rid := "timeout/" + j.GetId() + "/" + strconv.FormatInt(j.GetBlockedUnixMs(), 10)
		_, err := s.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL, &fsmv1.DecideApproval{
			RequestId: rid, BuildId: j.GetBuildId(), Step: j.GetKey(), Approve: false, By: "kiln",
			TimedOut: true, TimeUnixMs: now,
		})
		switch {
		case err == nil:
			s.log.Info("approval timed out", zap.String("job", j.GetId()))
		case errors.Is(err, fsm.ErrInvalidState):
			// Decided meanwhile.
		default:
			s.log.Warn("could not commit approval timeout", zap.String("job", j.GetId()), zap.Error(err))
			return
		}
	}
}
