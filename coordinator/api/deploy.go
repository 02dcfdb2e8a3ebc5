package api

import (
	"context"
	"errors"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/deploy"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxListDeployments bounds ListDeployments.
const MaxListDeployments = 1000

// DeployServer serves kiln.v1.DeployService.
type DeployServer struct {
	kilnv1.UnimplementedDeployServiceServer
	d *Deps
}

// NewDeployServer returns the deployment service.
func NewDeployServer(d *Deps) *DeployServer { return &DeployServer{d: d} }

func checkEnvironment(env string) error {
	switch {
	case env == "":
		return invalid("environment is required")
	case len(env) > MaxNameBytes:
		return invalid("environment: %d bytes; the limit is %d", len(env), MaxNameBytes)
	}
	return nil
}

// ListDeployments returns an environment's deployments, newest first.
func (s *DeployServer) ListDeployments(ctx context.Context, req *kilnv1.ListDeploymentsRequest) (*kilnv1.ListDeploymentsResponse, error) {
	if err := checkEnvironment(req.GetEnvironment()); err != nil {
		return nil, err
	}
	limit := int(req.GetLimit())
	switch {
	case limit < 0 || limit > MaxListDeployments:
		return nil, invalid("limit: %d is outside 0..%d", limit, MaxListDeployments)
	case limit == 0:
		limit = 100
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	return &kilnv1.ListDeploymentsResponse{Deployments: s.d.Store.Deployments(req.GetEnvironment(), limit)}, nil
}

// Rollback submits a build redeploying the environment's last succeeded
// version (deploy.RollbackTarget).
func (s *DeployServer) Rollback(ctx context.Context, req *kilnv1.RollbackRequest) (*kilnv1.RollbackResponse, error) {
	if err := checkEnvironment(req.GetEnvironment()); err != nil {
		return nil, err
	}
	if len(req.GetRequestId()) > MaxRequestID || len(req.GetBy()) > MaxNameBytes {
		return nil, invalid("request_id or by: too long (%d / %d bytes at most)", MaxRequestID, MaxNameBytes)
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	target, err := deploy.RollbackTarget(s.d.Store, req.GetEnvironment())
	if err != nil {
		return nil, rollbackStatus(err)
	}
	cmd, err := deploy.RollbackBuild(s.d.Store, target, req.GetBy(), req.GetRequestId(), s.d.now())
	if err != nil {
		return nil, rollbackStatus(err)
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SUBMIT_BUILD, cmd)
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("rollback submitted", zap.String("environment", req.GetEnvironment()),
		zap.String("version", target.GetVersion()), zap.String("build", res.Build.GetId()))
	s.d.Scheduler.Kick()
	return &kilnv1.RollbackResponse{Build: res.Build, Target: target}, nil
}

func rollbackStatus(err error) error {
	if errors.Is(err, deploy.ErrNoRollbackTarget) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
