// Package enroll serves the IdentityService: an agent exchanges a join
// token, once, and a certificate request for an agent certificate signed
// with the cluster CA key; an agent renews its certificate by presenting
// it. The identity in the certificate (agent/NAME) is what the
// coordinators take the agent's name from (coordinator/authn), so this is
// the only place agent names are handed out.
//
// Join tokens are not stored here: Tokens redeems them (the replicated
// token store of the ACL feature implements it).
package enroll

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// ErrInvalidToken is what Tokens.Redeem returns (wrapped) for a token that
// is unknown, already used, expired or not an agent join token.
var ErrInvalidToken = errors.New("invalid join token")

// Tokens redeems agent join tokens.
type Tokens interface {
	// Redeem consumes token so that it can never be redeemed again and
	// returns the pool (the token's name) it was made for. It runs on the
	// leader and returns once the redemption is committed. A token that
	// cannot be redeemed gives an error wrapping ErrInvalidToken.
	Redeem(ctx context.Context, token string) (pool string, err error)
}

// Limits of requests.
const (
	// MaxTokenBytes bounds a join token.
	MaxTokenBytes = 512
	// DefaultValidity is how long an issued agent certificate is valid.
	DefaultValidity = 30 * 24 * time.Hour
	// reservation is how long a name stays reserved after it was issued,
	// so two enrollments cannot both get it before the first agent
	// registers.
	reservation = 10 * time.Minute
)

// Config wires a Server.
type Config struct {
	// CA signs certificates; nil refuses every call (no --tls-ca-key).
	CA *tlsutil.CA
	// Tokens redeems join tokens; nil refuses enrollment.
	Tokens Tokens
	// RequireLeader fails (with a gRPC status) unless this node leads.
	RequireLeader func() error
	// AgentKnown reports whether the cluster state knows an agent of that name.
	AgentKnown func(name string) bool
	// Validity of issued certificates (default DefaultValidity).
	Validity time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *zap.Logger
}

// Server implements kilnv1.IdentityServiceServer.
type Server struct {
	kilnv1.UnimplementedIdentityServiceServer
	cfg Config

	mu       sync.Mutex
	reserved map[string]time.Time // name → until
}

// New returns the service.
func New(cfg Config) *Server {
	if cfg.Validity <= 0 {
		cfg.Validity = DefaultValidity
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Server{cfg: cfg, reserved: map[string]time.Time{}}
}

// EnrollAgent validates the request, checks leadership and the name,
// redeems the token and signs the certificate.
func (s *Server) EnrollAgent(ctx context.Context, req *kilnv1.EnrollAgentRequest) (*kilnv1.EnrollAgentResponse, error) {
	switch {
	case req.GetJoinToken() == "":
		return nil, status.Error(codes.InvalidArgument, "join_token is required")
	case len(req.GetJoinToken()) > MaxTokenBytes:
		return nil, status.Errorf(codes.InvalidArgument, "join_token is %d bytes; the limit is %d", len(req.GetJoinToken()), MaxTokenBytes)
	}
	if err := tlsutil.ValidateName(req.GetName()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "name: %v", err)
	}
	if _, err := tlsutil.ParseCSR(req.GetCsrDer()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der: %v", err)
	}
	if s.cfg.CA == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator cannot issue certificates: start it with --tls-ca-key")
	}
	if s.cfg.Tokens == nil {
		return nil, status.Error(codes.FailedPrecondition, "this cluster has no join tokens configured")
	}
	if s.cfg.RequireLeader != nil {
		if err := s.cfg.RequireLeader(); err != nil {
			return nil, err
		}
	}
	name := req.GetName()
	if err := s.reserve(name); err != nil {
		return nil, err
	}
	pool, err := s.cfg.Tokens.Redeem(ctx, req.GetJoinToken())
	if err != nil {
		s.release(name)
		if errors.Is(err, ErrInvalidToken) {
			return nil, status.Error(codes.PermissionDenied, err.Error())
		}
		if _, ok := status.FromError(err); ok {
			return nil, err
		}
		return nil, status.Errorf(codes.Unavailable, "redeem join token: %v", err)
	}
	id := tlsutil.Identity{Role: tlsutil.RoleAgent, Name: name}
	certPEM, err := s.cfg.CA.SignCSR(req.GetCsrDer(), id, s.cfg.Validity, s.cfg.Now())
	if err != nil {
		// The token is spent: the operator makes a new one. This only
		// happens if the CA key cannot sign.
		return nil, status.Errorf(codes.Internal, "sign certificate: %v", err)
	}
	s.cfg.Log.Info("agent enrolled", zap.String("agent", name), zap.String("pool", pool))
	return &kilnv1.EnrollAgentResponse{CertificatePem: certPEM, CaPem: s.cfg.CA.CertPEM}, nil
}

// reserve refuses a name the cluster knows or recently issued.
func (s *Server) reserve(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.cfg.Now()
	for n, until := range s.reserved {
		if now.After(until) {
			delete(s.reserved, n)
		}
	}
	if _, taken := s.reserved[name]; taken || (s.cfg.AgentKnown != nil && s.cfg.AgentKnown(name)) {
		return status.Errorf(codes.FailedPrecondition, "an agent named %q exists; enroll under another --name", name)
	}
	s.reserved[name] = now.Add(reservation)
	return nil
}

func (s *Server) release(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.reserved, name)
}

// RenewAgent signs a new certificate for the caller's own agent identity.
func (s *Server) RenewAgent(ctx context.Context, req *kilnv1.RenewAgentRequest) (*kilnv1.RenewAgentResponse, error) {
	id, ok := authn.FromContext(ctx)
	if !ok || id.Role != tlsutil.RoleAgent {
		return nil, status.Error(codes.PermissionDenied, "renewal needs the agent certificate being renewed")
	}
	if _, err := tlsutil.ParseCSR(req.GetCsrDer()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der: %v", err)
	}
	if s.cfg.CA == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator cannot issue certificates: start it with --tls-ca-key")
	}
	certPEM, err := s.cfg.CA.SignCSR(req.GetCsrDer(), id, s.cfg.Validity, s.cfg.Now())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign certificate: %v", err)
	}
	s.cfg.Log.Info("agent certificate renewed", zap.String("agent", id.Name))
	return &kilnv1.RenewAgentResponse{CertificatePem: certPEM}, nil
}
