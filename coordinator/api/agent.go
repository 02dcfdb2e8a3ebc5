package api

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/agentsession"
	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// AgentServer implements kilnv1.AgentServiceServer: one Connect stream per
// agent session, served by the leader only. The session itself is
// coordinator/agentsession's; this is its gRPC adapter.
type AgentServer struct {
	kilnv1.UnimplementedAgentServiceServer
	d        *Deps
	sessions *agentsession.Server
}

// NewAgentServer returns the agent service.
func NewAgentServer(d *Deps) *AgentServer {
	return &AgentServer{d: d, sessions: agentsession.New(agentsession.Config{
		NodeID:    d.NodeID,
		Store:     d.Store,
		Raft:      d.Raft,
		Scheduler: d.Scheduler,
		Blobs:     d.Blobs,
		Logs:      d.Logs,
		FetchBlob: d.fetchBlob,
		Log:       d.Log,
		Now:       d.now,
		// Set by the coordinator before the services are built.
		MaxLogBytes: d.MaxLogBytes,
	})}
}

// fetchBlob calls d.FetchBlob, which the coordinator may set after the
// services are built; without it there are no peers to ask.
func (d *Deps) fetchBlob(ctx context.Context, sha string) error {
	if d.FetchBlob == nil {
		return nil
	}
	return d.FetchBlob(ctx, sha)
}

// Connect validates the agent's register message and the leadership, then
// runs the session (agentsession.Server.Serve) and maps how it ended.
func (s *AgentServer) Connect(stream kilnv1.AgentService_ConnectServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegister()
	if reg == nil {
		return invalid("the first message of a session must be register")
	}
	if err := agentNameFromCertificate(stream.Context(), reg); err != nil {
		return err
	}
	if err := validateRegister(reg); err != nil {
		return err
	}
	if err := s.d.requireLeader(); err != nil {
		return err
	}
	return s.sessionStatus(s.sessions.Serve(stream, reg))
}

// sessionStatus maps the end of a session to the status the agent gets.
func (s *AgentServer) sessionStatus(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, agentsession.ErrInvalidReport):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, agentsession.ErrBlobMissing):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, agentsession.ErrEnded):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, scheduler.ErrNotActive):
		return s.d.notLeader()
	}
	return s.d.toStatus(err)
}

// agentNameFromCertificate makes the agent's certificate name its session
// name, so one identity can neither take over another's session nor
// report on another's attempts (reports are checked against the session's
// agent). An agent that names itself otherwise is refused. Without TLS
// (no identity in the context) the registered name stands.
func agentNameFromCertificate(ctx context.Context, reg *kilnv1.Register) error {
	id, ok := authn.FromContext(ctx)
	if !ok {
		return nil
	}
	if id.Role != tlsutil.RoleAgent {
		return status.Errorf(codes.PermissionDenied, "%s is not an agent certificate", id)
	}
	if reg.GetName() != "" && reg.GetName() != id.Name {
		return status.Errorf(codes.PermissionDenied, "this agent's certificate is for %q; it cannot register as %q", id.Name, reg.GetName())
	}
	reg.Name = id.Name
	return nil
}

func validateRegister(reg *kilnv1.Register) error {
	switch {
	case reg.GetName() == "" || len(reg.GetName()) > MaxNameBytes:
		return invalid("agent name must be 1..%d bytes", MaxNameBytes)
	case reg.GetSlots() < 1 || reg.GetSlots() > MaxAgentSlots:
		return invalid("agent slots must be 1..%d, got %d", MaxAgentSlots, reg.GetSlots())
	case len(reg.GetLabels()) > MaxLabelEntries:
		return invalid("%d labels; the limit is %d", len(reg.GetLabels()), MaxLabelEntries)
	case len(reg.GetVersion()) > MaxNameBytes:
		return invalid("agent version: %d bytes; the limit is %d", len(reg.GetVersion()), MaxNameBytes)
	}
	return validateLabels(reg.GetLabels())
}
