// Package authn decides, in one table, which certificate roles may call
// which gRPC method of a coordinator, and puts the caller's verified
// identity in the request context.
//
// It is active when the coordinator serves TLS: every call is looked up in
// the table by its full method name; a method missing from the table is
// refused (a new RPC must be classified before anyone can call it). A
// caller without a client certificate is "anonymous": allowed only where
// the table says so (client-facing methods, whose callers API tokens
// authenticate, and the agent enrollment that a join token authenticates).
// Without TLS the package is not installed and every method is open, as
// in --dev.
package authn

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// Rule says who may call a method.
type Rule struct {
	// Roles are the certificate roles allowed.
	Roles []tlsutil.Role
	// Anonymous allows callers that present no certificate.
	Anonymous bool
}

var (
	coordinatorOnly = Rule{Roles: []tlsutil.Role{tlsutil.RoleCoordinator}}
	agentOnly       = Rule{Roles: []tlsutil.Role{tlsutil.RoleAgent}}
	// clientFacing: users (client certificate, or none: API tokens decide)
	// and coordinators; never an agent certificate, so a stolen agent key
	// cannot submit or cancel builds.
	clientFacing = Rule{Roles: []tlsutil.Role{tlsutil.RoleClient, tlsutil.RoleCoordinator}, Anonymous: true}
	// adminOnly: a client or coordinator certificate is required.
	adminOnly = Rule{Roles: []tlsutil.Role{tlsutil.RoleClient, tlsutil.RoleCoordinator}}
	anyone    = Rule{Roles: []tlsutil.Role{tlsutil.RoleClient, tlsutil.RoleCoordinator, tlsutil.RoleAgent}, Anonymous: true}
)

// table maps full method names (or "/service/*" for every method of a
// service) to their rule. Keep it in step with the proto services: the
// test TestEveryServedMethodIsClassified fails on a method missing here.
var table = map[string]Rule{
	"/kiln.v1.ControlService/*": clientFacing,
	"/kiln.v1.OpsService/*":     clientFacing,
	"/kiln.v1.DeployService/*":  clientFacing,
	// Tokens, secrets, audit: API tokens decide (coordinator/acl).
	"/kiln.v1.AccessService/*": clientFacing,

	// The agent session: an agent certificate, whose name is the agent's.
	"/kiln.v1.AgentService/Connect": agentOnly,

	// Source uploads (clients) and artifact uploads (agents).
	"/kiln.v1.BlobService/Upload": {Roles: []tlsutil.Role{tlsutil.RoleClient, tlsutil.RoleAgent}, Anonymous: true},
	// Downloads: clients (artifacts get), agents (sources, inputs), peers.
	"/kiln.v1.BlobService/Download": anyone,
	// Blob copies between coordinators.
	"/kiln.v1.BlobService/Replicate": coordinatorOnly,
	// Job log copies between coordinators.
	"/kiln.v1.LogReplicationService/*": coordinatorOnly,

	// Anyone may ask who its credential makes it.
	"/kiln.v1.AccessService/WhoAmI": anyone,

	"/kiln.v1.ClusterService/Status": clientFacing,
	// Raft-adjacent: only members of the cluster.
	"/kiln.v1.ClusterService/Join":      coordinatorOnly,
	"/kiln.v1.ClusterService/ReadIndex": coordinatorOnly,
	// Removing a member takes an operator's (client) certificate.
	"/kiln.v1.ClusterService/Leave": adminOnly,

	// Enrollment is authenticated by the join token it carries; renewal by
	// the agent certificate being renewed.
	"/kiln.v1.IdentityService/EnrollAgent": anyone,
	"/kiln.v1.IdentityService/RenewAgent":  agentOnly,

	"/grpc.health.v1.Health/*":                    anyone,
	"/grpc.reflection.v1.ServerReflection/*":      anyone,
	"/grpc.reflection.v1alpha.ServerReflection/*": anyone,
}

// RuleFor returns the rule of a full method name ("/pkg.Service/Method").
func RuleFor(method string) (Rule, bool) {
	if r, ok := table[method]; ok {
		return r, true
	}
	if i := lastSlash(method); i > 0 {
		r, ok := table[method[:i]+"/*"]
		return r, ok
	}
	return Rule{}, false
}

func lastSlash(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '/' {
			return i
		}
	}
	return -1
}

type ctxKey struct{}

// FromContext returns the verified identity of the caller, when it
// presented a certificate (ok false: anonymous, or TLS is off).
func FromContext(ctx context.Context) (tlsutil.Identity, bool) {
	id, ok := ctx.Value(ctxKey{}).(tlsutil.Identity)
	return id, ok
}

// WithIdentity returns ctx carrying id (what the interceptor does; tests
// of handlers use it directly).
func WithIdentity(ctx context.Context, id tlsutil.Identity) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// peerIdentity reads the identity of the verified client certificate of
// the connection, if any.
func peerIdentity(ctx context.Context) (tlsutil.Identity, bool, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return tlsutil.Identity{}, false, nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return tlsutil.Identity{}, false, status.Error(codes.Unauthenticated, "this coordinator serves TLS only")
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return tlsutil.Identity{}, false, nil
	}
	id, err := tlsutil.IdentityOf(info.State.VerifiedChains[0][0])
	if err != nil {
		return tlsutil.Identity{}, false, status.Error(codes.PermissionDenied, err.Error())
	}
	return id, true, nil
}

// Authorize checks the caller of method against the table and returns ctx
// with the caller's identity.
func Authorize(ctx context.Context, method string) (context.Context, error) {
	rule, ok := RuleFor(method)
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not open to any caller", method)
	}
	id, has, err := peerIdentity(ctx)
	if err != nil {
		return nil, err
	}
	if !has {
		if rule.Anonymous {
			return ctx, nil
		}
		return nil, status.Errorf(codes.Unauthenticated, "%s needs a %s certificate of this cluster", method, roleList(rule.Roles))
	}
	if !slices.Contains(rule.Roles, id.Role) {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not allowed to call %s (needs a %s certificate)", id, method, roleList(rule.Roles))
	}
	return WithIdentity(ctx, id), nil
}

func roleList(roles []tlsutil.Role) string {
	s := ""
	for i, r := range roles {
		switch {
		case i == 0:
		case i == len(roles)-1:
			s += " or "
		default:
			s += ", "
		}
		s += string(r)
	}
	return s
}

// UnaryInterceptor enforces the table on unary calls.
func UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := Authorize(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// StreamInterceptor enforces the table on streams.
func StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := Authorize(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &stream{ServerStream: ss, ctx: ctx})
}

type stream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *stream) Context() context.Context { return s.ctx }

// ServerOptions are the options that install the interceptors.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(UnaryInterceptor),
		grpc.ChainStreamInterceptor(StreamInterceptor),
	}
}

// Check is for tests and startup checks: the services' methods must all be
// classified.
func Check(services map[string]grpc.ServiceInfo) error {
	for name, s := range services {
		for _, m := range s.Methods {
			if _, ok := RuleFor("/" + name + "/" + m.Name); !ok {
				return fmt.Errorf("method /%s/%s has no rule in coordinator/authn", name, m.Name)
			}
		}
	}
	return nil
}
