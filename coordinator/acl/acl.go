// Package acl authorizes every gRPC call a coordinator serves and records
// the mutating ones in the audit log.
//
// With ACLs on, a caller presents "authorization: Bearer <credential>": an
// API token (kiln_..., stored by the cluster as a SHA-256, see
// internal/authn) whose role is looked up in the replicated state, or the
// peer credential derived from the cluster key that coordinators present to
// each other. One interceptor pair checks the credential and the method's
// Rule in Methods (a method missing from the table is refused: fail
// closed) and puts the Principal in the context, from which the services
// take the submitter and approver names, never from the request.
//
// With TLS as well, an agent certificate (verified by the handshake and
// the certificate table of coordinator/authn, which runs first) is an
// agent's credential: it authenticates as role agent without a token.
//
// Refusals are Unauthenticated (no, unknown, revoked or expired
// credential) or PermissionDenied (the role is too low), and the message
// names the role the method needs.
package acl

import (
	"context"
	"crypto/subtle"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	certauthn "github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/role"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Principal is an authenticated caller.
type Principal struct {
	// Name is the token's name ("node" for a peer coordinator).
	Name string
	Role role.Role
}

type ctxKey struct{}

// WithPrincipal returns ctx carrying p (the interceptor's doing; tests).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the caller the interceptor authenticated; ok is
// false when ACLs are off or the method is public and no credential came.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

// TokenLookup finds a token by the SHA-256 of its secret
// (*state.Store.TokenByHash).
type TokenLookup interface {
	TokenByHash(hash []byte) *kilnv1.Token
}

// Config configures an Authorizer.
type Config struct {
	// Enabled turns authorization on (--acl); off, every call is allowed
	// and only the audit log is kept.
	Enabled bool
	// Tokens resolves API tokens.
	Tokens TokenLookup
	// PeerCredential is what a peer coordinator must present
	// (authn.PeerCredential of the cluster key); empty admits none.
	PeerCredential string
	// Audit commits one audit record (nil: no audit log). It is called
	// after a mutating call succeeded (or was refused by the state
	// machine) on this node, and must not block for long.
	Audit func(ctx context.Context, rec *kilnv1.AuditRecord)
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *zap.Logger
}

// Authorizer is the interceptor pair.
type Authorizer struct {
	cfg Config
}

// New returns an Authorizer.
func New(cfg Config) *Authorizer {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	return &Authorizer{cfg: cfg}
}

// Enabled reports whether ACLs are on.
func (a *Authorizer) Enabled() bool { return a.cfg.Enabled }

// Authorize checks the credential in ctx's incoming metadata against the
// method's rule and returns ctx with the Principal.
func (a *Authorizer) Authorize(ctx context.Context, method string) (context.Context, error) {
	rule, known := Methods[method]
	if !a.cfg.Enabled {
		return ctx, nil
	}
	if !known {
		a.cfg.Log.Warn("refused a call to a method missing from the ACL table", zap.String("method", method))
		return ctx, status.Errorf(codes.PermissionDenied, "%s is not in the access table; nobody may call it", method)
	}
	p, err := a.authenticate(ctx, method, rule)
	if cp, ok := certPrincipal(ctx); ok {
		// The certificate, verified by the TLS handshake and checked by
		// the certificate table before this interceptor, is the
		// credential; a bearer token sent along is not consulted.
		p, err = cp, nil
	}
	if err != nil {
		if rule.Public {
			return ctx, nil
		}
		return ctx, err
	}
	if !rule.Public && !rule.admits(p.Role) {
		return ctx, status.Errorf(codes.PermissionDenied, "token %q has role %s; %s needs %s", p.Name, p.Role, shortMethod(method), rule.need())
	}
	return WithPrincipal(ctx, p), nil
}

// certPrincipal is the principal of a caller that presented an agent
// certificate of the cluster (coordinator/authn put its identity in ctx):
// the agent named by the certificate, with role agent. An agent enrolled
// with a join token, or given a certificate by kilnctl tls, therefore needs
// no API token when ACLs are on. This is the one place where a certificate
// stands for a token; client and coordinator certificates do not (people
// still need a token of their role, and peer coordinators present the
// cluster credential, which proves they hold the same key file).
func certPrincipal(ctx context.Context) (Principal, bool) {
	id, ok := certauthn.FromContext(ctx)
	if !ok || id.Role != tlsutil.RoleAgent {
		return Principal{}, false
	}
	return Principal{Name: id.String(), Role: role.Agent}, true
}

func (a *Authorizer) authenticate(ctx context.Context, method string, rule Rule) (Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(authn.MetadataKey)
	if len(vals) == 0 {
		return Principal{}, status.Errorf(codes.Unauthenticated, "this cluster requires a token (kilnctl --token or $%s); %s needs %s", authn.EnvToken, shortMethod(method), rule.need())
	}
	if len(vals) > 1 {
		return Principal{}, status.Error(codes.Unauthenticated, "more than one authorization header")
	}
	cred, kind, err := authn.ParseBearer(vals[0])
	if err != nil {
		return Principal{}, status.Errorf(codes.Unauthenticated, "authorization: %v", err)
	}
	if kind == authn.KindPeer {
		if a.cfg.PeerCredential == "" || subtle.ConstantTimeCompare([]byte(cred), []byte(a.cfg.PeerCredential)) != 1 {
			return Principal{}, status.Error(codes.Unauthenticated, "the cluster credential is wrong: every coordinator must use the same --secrets-key-file")
		}
		return Principal{Name: "node", Role: role.Node}, nil
	}
	t := a.cfg.Tokens.TokenByHash(authn.Hash(cred))
	switch {
	case t == nil:
		return Principal{}, status.Error(codes.Unauthenticated, "unknown token")
	case t.GetKind() == state.TokenKindJoin:
		return Principal{}, status.Errorf(codes.Unauthenticated, "%q is an agent join token: it is redeemed for a certificate, not sent as a bearer token", t.GetName())
	case t.GetRevoked():
		return Principal{}, status.Errorf(codes.Unauthenticated, "token %q was revoked", t.GetName())
	case t.GetExpiresUnixMs() > 0 && a.cfg.Now().UnixMilli() >= t.GetExpiresUnixMs():
		return Principal{}, status.Errorf(codes.Unauthenticated, "token %q expired at %s", t.GetName(), time.UnixMilli(t.GetExpiresUnixMs()).UTC().Format(time.RFC3339))
	}
	r, err := role.Parse(t.GetRole())
	if err != nil {
		return Principal{}, status.Errorf(codes.Unauthenticated, "token %q: %v", t.GetName(), err)
	}
	return Principal{Name: t.GetName(), Role: r}, nil
}

// shortMethod is "SubmitBuild" for "/kiln.v1.ControlService/SubmitBuild".
func shortMethod(m string) string {
	for i := len(m) - 1; i >= 0; i-- {
		if m[i] == '/' {
			return m[i+1:]
		}
	}
	return m
}

// Unary is the unary server interceptor.
func (a *Authorizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.Authorize(ctx, info.FullMethod)
		if err != nil {
			a.cfg.Log.Info("call refused", zap.String("method", info.FullMethod), zap.String("peer", peerAddr(ctx)), zap.Error(err))
			return nil, err
		}
		resp, err := handler(ctx, req)
		if rule := Methods[info.FullMethod]; rule.Audit && a.cfg.Audit != nil && audited(err) {
			a.cfg.Audit(ctx, a.record(ctx, info.FullMethod, req, resp, err))
		}
		return resp, err
	}
}

// audited: successes, and refusals by the state machine, which are
// interesting (an approval by someone not listed). Redirects and
// unavailability are recorded by the coordinator that finally answers.
func audited(err error) bool {
	switch status.Code(err) {
	case codes.OK, codes.PermissionDenied, codes.FailedPrecondition:
		return true
	}
	return false
}

func (a *Authorizer) record(ctx context.Context, method string, req, resp any, err error) *kilnv1.AuditRecord {
	who, r := "anonymous", ""
	if p, ok := FromContext(ctx); ok {
		who, r = p.Name, p.Role.String()
	}
	return &kilnv1.AuditRecord{
		TimeUnixMs: a.cfg.Now().UnixMilli(), Who: who, Role: r, Method: shortMethod(method),
		What: Describe(req, resp), PeerAddr: peerAddr(ctx), Code: status.Code(err).String(),
	}
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// Stream is the stream server interceptor.
func (a *Authorizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.Authorize(ss.Context(), info.FullMethod)
		if err != nil {
			a.cfg.Log.Info("stream refused", zap.String("method", info.FullMethod), zap.String("peer", peerAddr(ss.Context())), zap.Error(err))
			return err
		}
		return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

// Describe summarizes a mutating request (and its answer) for the audit
// log: names and ids, never a secret value or a build file.
func Describe(req, resp any) string {
	switch r := req.(type) {
	case *kilnv1.SubmitBuildRequest:
		id := ""
		if b, ok := resp.(*kilnv1.SubmitBuildResponse); ok {
			id = b.GetBuild().GetId()
		}
		src := r.GetSource().GetGitUrl()
		if r.GetSource().GetArchiveSha256() != "" {
			src = "upload:" + r.GetSource().GetArchiveSha256()
		}
		return fmt.Sprintf("build=%s name=%q source=%q", id, r.GetName(), src)
	case *kilnv1.CancelBuildRequest:
		return fmt.Sprintf("build=%s reason=%q", r.GetBuildId(), r.GetReason())
	case *kilnv1.RetryBuildRequest:
		return fmt.Sprintf("build=%s step=%q", r.GetBuildId(), r.GetStep())
	case *kilnv1.DecideApprovalRequest:
		verb := "reject"
		if r.GetApprove() {
			verb = "approve"
		}
		return fmt.Sprintf("%s build=%s step=%s comment=%q", verb, r.GetBuildId(), r.GetStep(), r.GetComment())
	case *kilnv1.AddRepoRequest:
		return fmt.Sprintf("repo=%s url=%q branch=%s", r.GetName(), r.GetUrl(), r.GetBranch())
	case *kilnv1.JoinRequest:
		return fmt.Sprintf("node=%s raft=%s grpc=%s", r.GetNodeId(), r.GetRaftAddr(), r.GetGrpcAddr())
	case *kilnv1.LeaveRequest:
		return fmt.Sprintf("node=%s", r.GetNodeId())
	case *kilnv1.BootstrapTokenRequest:
		if t, ok := resp.(*kilnv1.BootstrapTokenResponse); ok {
			return fmt.Sprintf("token=%s role=%s", t.GetToken().GetName(), t.GetToken().GetRole())
		}
		return "bootstrap"
	case *kilnv1.CreateTokenRequest:
		if r.GetAgent() {
			return fmt.Sprintf("token=%s kind=join ttl_ms=%d", r.GetName(), r.GetTtlMs())
		}
		return fmt.Sprintf("token=%s role=%s ttl_ms=%d", r.GetName(), r.GetRole(), r.GetTtlMs())
	case *kilnv1.RevokeTokenRequest:
		return fmt.Sprintf("token=%s", r.GetName())
	case *kilnv1.SetSecretRequest:
		return fmt.Sprintf("secret=%s repo=%q", r.GetName(), r.GetRepo())
	case *kilnv1.DeleteSecretRequest:
		return fmt.Sprintf("secret=%s repo=%q", r.GetName(), r.GetRepo())
	case *kilnv1.EnrollAgentRequest:
		// The caller has no credential yet: the record names the agent
		// the certificate was asked for, never the join token.
		return fmt.Sprintf("agent=%s", r.GetName())
	}
	return ""
}
