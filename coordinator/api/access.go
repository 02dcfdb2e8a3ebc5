package api

import (
	"context"
	"regexp"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/secrets"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// MaxSecretName bounds secret names (they become environment variables).
const MaxSecretName = 128

var secretName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// AccessServer implements kiln.v1.AccessService: tokens, secrets, audit.
type AccessServer struct {
	kilnv1.UnimplementedAccessServiceServer
	d *Deps
}

// NewAccessServer returns the access service.
func NewAccessServer(d *Deps) *AccessServer { return &AccessServer{d: d} }

// caller is the name of the authenticated caller ("anonymous" without ACLs).
func caller(ctx context.Context) string {
	if p, ok := acl.FromContext(ctx); ok {
		return p.Name
	}
	return "anonymous"
}

// BootstrapToken creates the first admin token.
func (s *AccessServer) BootstrapToken(ctx context.Context, _ *kilnv1.BootstrapTokenRequest) (*kilnv1.BootstrapTokenResponse, error) {
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	tok, secret, err := s.d.Tokens.Bootstrap(ctx)
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("bootstrap token created", zap.String("token", tok.GetName()))
	return &kilnv1.BootstrapTokenResponse{Token: tok, Secret: secret}, nil
}

// CreateToken creates an API token or an agent join token.
func (s *AccessServer) CreateToken(ctx context.Context, req *kilnv1.CreateTokenRequest) (*kilnv1.CreateTokenResponse, error) {
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	tok, secret, err := s.d.Tokens.Create(ctx, caller(ctx), req.GetName(), req.GetRole(), time.Duration(req.GetTtlMs())*time.Millisecond, req.GetAgent())
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("token created", zap.String("token", tok.GetName()), zap.String("role", tok.GetRole()), zap.String("kind", tok.GetKind()), zap.String("by", caller(ctx)))
	return &kilnv1.CreateTokenResponse{Token: tok, Secret: secret}, nil
}

// ListTokens lists every token without secrets.
func (s *AccessServer) ListTokens(ctx context.Context, req *kilnv1.ListTokensRequest) (*kilnv1.ListTokensResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	return &kilnv1.ListTokensResponse{Tokens: s.d.Store.Tokens()}, nil
}

// RevokeToken revokes a token.
func (s *AccessServer) RevokeToken(ctx context.Context, req *kilnv1.RevokeTokenRequest) (*kilnv1.RevokeTokenResponse, error) {
	if req.GetName() == "" {
		return nil, invalid("name is required")
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	tok, err := s.d.Tokens.Revoke(ctx, req.GetName())
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("token revoked", zap.String("token", tok.GetName()), zap.String("by", caller(ctx)))
	return &kilnv1.RevokeTokenResponse{Token: tok}, nil
}

func validSecretRef(name, repo string) error {
	switch {
	case len(name) > MaxSecretName || !secretName.MatchString(name):
		return invalid("secret name %q: want an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most %d bytes)", name, MaxSecretName)
	case len(repo) > MaxNameBytes:
		return invalid("repo: longer than %d bytes", MaxNameBytes)
	}
	return nil
}

// SetSecret seals a value on the leader and replicates only the
// ciphertext.
func (s *AccessServer) SetSecret(ctx context.Context, req *kilnv1.SetSecretRequest) (*kilnv1.SetSecretResponse, error) {
	if err := validSecretRef(req.GetName(), req.GetRepo()); err != nil {
		return nil, err
	}
	switch {
	case len(req.GetValue()) == 0:
		return nil, invalid("value: empty")
	case len(req.GetValue()) > secrets.MaxValueBytes:
		return nil, invalid("value: %d bytes; the limit is %d", len(req.GetValue()), secrets.MaxValueBytes)
	}
	if s.d.Keyring == nil {
		return nil, status.Error(codes.FailedPrecondition, "secrets are off: start every coordinator with the same --secrets-key-file")
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	sealed, err := s.d.Keyring.Seal(req.GetName(), req.GetRepo(), req.GetValue())
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	rec := &fsmv1.SecretRecord{Name: req.GetName(), Repo: req.GetRepo(), Sealed: sealed, UpdatedUnixMs: s.d.now().UnixMilli(), UpdatedBy: caller(ctx)}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_SET_SECRET, &fsmv1.SetSecret{Record: rec})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("secret set", zap.String("secret", req.GetName()), zap.String("repo", req.GetRepo()), zap.String("by", caller(ctx)))
	return &kilnv1.SetSecretResponse{Secret: &kilnv1.Secret{Name: rec.Name, Repo: rec.Repo, UpdatedUnixMs: rec.UpdatedUnixMs, UpdatedBy: rec.UpdatedBy}}, nil
}

// ListSecrets lists secret names.
func (s *AccessServer) ListSecrets(ctx context.Context, req *kilnv1.ListSecretsRequest) (*kilnv1.ListSecretsResponse, error) {
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	return &kilnv1.ListSecretsResponse{Secrets: s.d.Store.Secrets()}, nil
}

// DeleteSecret deletes a secret.
func (s *AccessServer) DeleteSecret(ctx context.Context, req *kilnv1.DeleteSecretRequest) (*kilnv1.DeleteSecretResponse, error) {
	if err := validSecretRef(req.GetName(), req.GetRepo()); err != nil {
		return nil, err
	}
	if err := s.d.requireLeader(); err != nil {
		return nil, err
	}
	res, err := s.d.Raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_DELETE_SECRET, &fsmv1.DeleteSecret{Name: req.GetName(), Repo: req.GetRepo()})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return nil, s.d.toStatus(err)
	}
	s.d.Log.Info("secret deleted", zap.String("secret", req.GetName()), zap.String("repo", req.GetRepo()), zap.String("by", caller(ctx)))
	return &kilnv1.DeleteSecretResponse{}, nil
}

// ListAudit lists audit records.
func (s *AccessServer) ListAudit(ctx context.Context, req *kilnv1.ListAuditRequest) (*kilnv1.ListAuditResponse, error) {
	if req.GetLimit() < 0 {
		return nil, invalid("limit: negative")
	}
	if err := s.d.readBarrier(ctx, req.GetConsistency()); err != nil {
		return nil, err
	}
	return &kilnv1.ListAuditResponse{Records: s.d.Store.Audit(req.GetSinceUnixMs(), int(req.GetLimit()))}, nil
}

// WhoAmI names the caller.
func (s *AccessServer) WhoAmI(ctx context.Context, _ *kilnv1.WhoAmIRequest) (*kilnv1.WhoAmIResponse, error) {
	p, ok := acl.FromContext(ctx)
	if !ok {
		return &kilnv1.WhoAmIResponse{Name: "anonymous", Acl: s.d.ACL}, nil
	}
	return &kilnv1.WhoAmIResponse{Name: p.Name, Role: p.Role.String(), Acl: s.d.ACL}, nil
}
