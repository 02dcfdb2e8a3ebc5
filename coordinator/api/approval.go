package api

import (
	"context"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/acl"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxCommentBytes bounds the comment of an approval decision.
const MaxCommentBytes = 4 << 10

// DecideApproval commits a decision on a BLOCKED approval step.
func (s *ControlServer) DecideApproval(ctx context.Context, req *kilnv1.DecideApprovalRequest) (*kilnv1.DecideApprovalResponse, error) {
	byRole := ""
	if p, ok := acl.FromContext(ctx); ok {
		// With ACLs the decider is the token, never a client-sent string.
		req.By, byRole = p.Name, p.Role.String()
	}
	switch {
	case req.GetBuildId() == "":
		return nil, invalid("build_id is required")
	case req.GetStep() == "":
		return nil, invalid("step is required (the key of the approval step)")
	case req.GetBy() == "":
		return nil, invalid("by is required (who decides, user@host)")
	case len(req.GetRequestId()) > MaxRequestID:
		return nil, invalid("request_id: %d bytes; the limit is %d", len(req.GetRequestId()), MaxRequestID)
	case len(req.GetBuildId()) > MaxNameBytes || len(req.GetStep()) > MaxNameBytes:
		return nil, invalid("build_id or step: longer than %d bytes", MaxNameBytes)
	case len(req.GetBy()) > MaxNameBytes:
		return nil, invalid("by: %d bytes; the limit is %d", len(req.GetBy()), MaxNameBytes)
	case len(req.GetComment()) > MaxCommentBytes:
		return nil, invalid("comment: %d bytes; the limit is %d", len(req.GetComment()), MaxCommentBytes)
	case !utf8.ValidString(req.GetBy()) || !utf8.ValidString(req.GetComment()):
		return nil, invalid("by and comment must be valid UTF-8")
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_DECIDE_APPROVAL, &fsmv1.DecideApproval{
		RequestId: req.GetRequestId(), BuildId: req.GetBuildId(), Step: req.GetStep(), Approve: req.GetApprove(),
		By: req.GetBy(), ByRole: byRole, Comment: req.GetComment(), TimeUnixMs: s.d.now().UnixMilli(),
	})
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("approval decided", zap.String("build", req.GetBuildId()), zap.String("step", req.GetStep()),
		zap.Bool("approved", req.GetApprove()), zap.String("by", req.GetBy()))
	s.d.Scheduler.Kick()
	return &kilnv1.DecideApprovalResponse{Build: fitBuild(res.Build)}, nil
}

// RetryBuild commits a retry of a finished build's failed steps.
func (s *ControlServer) RetryBuild(ctx context.Context, req *kilnv1.RetryBuildRequest) (*kilnv1.RetryBuildResponse, error) {
	switch {
	case req.GetBuildId() == "":
		return nil, invalid("build_id is required")
	case len(req.GetRequestId()) > MaxRequestID:
		return nil, invalid("request_id: %d bytes; the limit is %d", len(req.GetRequestId()), MaxRequestID)
	case len(req.GetBuildId()) > MaxNameBytes || len(req.GetStep()) > MaxNameBytes:
		return nil, invalid("build_id or step: longer than %d bytes", MaxNameBytes)
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_RETRY_BUILD, &fsmv1.RetryBuild{
		RequestId: req.GetRequestId(), BuildId: req.GetBuildId(), Step: req.GetStep(), TimeUnixMs: s.d.now().UnixMilli(),
	})
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("build retried", zap.String("build", req.GetBuildId()), zap.String("step", req.GetStep()))
	s.d.Scheduler.Kick()
	return &kilnv1.RetryBuildResponse{Build: fitBuild(res.Build)}, nil
}
