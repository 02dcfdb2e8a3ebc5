package acl

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/role"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

type fakeTokens map[string]*kilnv1.Token // by hex-less string(hash)

func (f fakeTokens) TokenByHash(h []byte) *kilnv1.Token { return f[string(h)] }

func newToken(t *testing.T, f fakeTokens, tok *kilnv1.Token) string {
	t.Helper()
	secret, hash, err := authn.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	if tok.Kind == "" {
		tok.Kind = "api"
	}
	f[string(hash)] = tok
	return secret
}

func call(a *Authorizer, method, cred string) (Principal, error) {
	ctx := context.Background()
	if cred != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(authn.MetadataKey, "Bearer "+cred))
	}
	ctx, err := a.Authorize(ctx, method)
	p, _ := FromContext(ctx)
	return p, err
}

// The role model, written out independently of Methods: which
// principals may do each kind of operation.
var expected = map[string][]string{
	// viewer reads
	"/kiln.v1.ControlService/GetBuild":      {"viewer", "developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/ListBuilds":    {"viewer", "developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/StreamLogs":    {"viewer", "developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/ListAgents":    {"viewer", "developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/ListArtifacts": {"viewer", "developer", "approver", "operator", "admin"},
	"/kiln.v1.BlobService/Download":         {"viewer", "developer", "approver", "operator", "admin", "agent", "node"},
	"/kiln.v1.ClusterService/Status":        {"viewer", "developer", "approver", "operator", "admin", "node"},
	// developer submits, cancels, retries
	"/kiln.v1.ControlService/SubmitBuild": {"developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/CancelBuild": {"developer", "approver", "operator", "admin"},
	"/kiln.v1.ControlService/RetryBuild":  {"developer", "approver", "operator", "admin"},
	"/kiln.v1.BlobService/Upload":         {"developer", "approver", "operator", "admin", "agent"},
	// approver decides gates
	"/kiln.v1.ControlService/DecideApproval": {"approver", "operator", "admin"},
	// operator: repos, secrets
	"/kiln.v1.ControlService/AddRepo":       {"operator", "admin"},
	"/kiln.v1.AccessService/SetSecret":      {"operator", "admin"},
	"/kiln.v1.AccessService/ListSecrets":    {"operator", "admin"},
	"/kiln.v1.AccessService/DeleteSecret":   {"operator", "admin"},
	"/kiln.v1.AccessService/CreateToken":    {"admin"},
	"/kiln.v1.AccessService/RevokeToken":    {"admin"},
	"/kiln.v1.AccessService/ListTokens":     {"admin"},
	"/kiln.v1.AccessService/ListAudit":      {"admin"},
	"/kiln.v1.ClusterService/Leave":         {"admin"},
	"/kiln.v1.ClusterService/Join":          {"admin", "node"},
	"/kiln.v1.ClusterService/ReadIndex":     {"node"},
	"/kiln.v1.BlobService/Replicate":        {"node"},
	"/kiln.v1.AgentService/Connect":         {"agent"},
	"/kiln.v1.AccessService/WhoAmI":         {"viewer", "developer", "approver", "operator", "admin", "agent"},
	"/kiln.v1.AccessService/BootstrapToken": {"anonymous", "viewer", "developer", "approver", "operator", "admin", "agent", "node"},
	"/grpc.health.v1.Health/Check":          {"anonymous", "viewer", "developer", "approver", "operator", "admin", "agent", "node"},
}

func TestRoleByMethod(t *testing.T) {
	toks := fakeTokens{}
	key := []byte("0123456789abcdef0123456789abcdef")
	peer := authn.PeerCredential(key)
	a := New(Config{Enabled: true, Tokens: toks, PeerCredential: peer})
	creds := map[string]string{"anonymous": "", "node": peer}
	for _, r := range []string{"viewer", "developer", "approver", "operator", "admin", "agent"} {
		creds[r] = newToken(t, toks, &kilnv1.Token{Name: "t-" + r, Role: r})
	}
	for method, allowed := range expected {
		if _, ok := Methods[method]; !ok {
			t.Errorf("%s: not in Methods", method)
			continue
		}
		for who, cred := range creds {
			want := false
			for _, a := range allowed {
				want = want || a == who
			}
			_, err := call(a, method, cred)
			if (err == nil) != want {
				t.Errorf("%s as %s: err %v, want allowed=%v", method, who, err, want)
				continue
			}
			if err == nil {
				continue
			}
			code := status.Code(err)
			switch {
			case who == "anonymous" && code != codes.Unauthenticated:
				t.Errorf("%s anonymous: %v, want Unauthenticated", method, err)
			case who != "anonymous" && code != codes.PermissionDenied:
				t.Errorf("%s as %s: %v, want PermissionDenied", method, who, err)
			case !strings.Contains(err.Error(), "needs "):
				t.Errorf("%s as %s: %q does not name what the method needs", method, who, err)
			}
		}
	}
	// Every table row with a human minimum admits exactly the roles above it.
	for method, rule := range Methods {
		for r := role.Viewer; r <= role.Admin; r++ {
			if rule.Min != role.None && !rule.Public && rule.admits(r) != (r >= rule.Min) {
				t.Errorf("%s: role %s admitted=%v with min %s", method, r, rule.admits(r), rule.Min)
			}
		}
	}
}

func TestAuthenticationFailures(t *testing.T) {
	toks := fakeTokens{}
	now := time.UnixMilli(1_000_000)
	a := New(Config{Enabled: true, Tokens: toks, PeerCredential: authn.PeerCredential([]byte("k")), Now: func() time.Time { return now }})
	revoked := newToken(t, toks, &kilnv1.Token{Name: "old", Role: "admin", Revoked: true})
	expired := newToken(t, toks, &kilnv1.Token{Name: "exp", Role: "admin", ExpiresUnixMs: now.UnixMilli()})
	valid := newToken(t, toks, &kilnv1.Token{Name: "ok", Role: "admin", ExpiresUnixMs: now.UnixMilli() + 1})
	join := newToken(t, toks, &kilnv1.Token{Name: "pool", Kind: "join"})
	unknown, _, _ := authn.NewToken()
	const m = "/kiln.v1.ControlService/ListBuilds"
	for name, tc := range map[string]struct{ cred, want string }{
		"revoked":    {revoked, `"old" was revoked`},
		"expired":    {expired, `"exp" expired`},
		"join":       {join, "join token"},
		"unknown":    {unknown, "unknown token"},
		"wrong peer": {authn.PeerCredential([]byte("other")), "same --secrets-key-file"},
		"anonymous":  {"", "requires a token"},
	} {
		_, err := call(a, m, tc.cred)
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want Unauthenticated %q", name, err, tc.want)
		}
	}
	p, err := call(a, m, valid)
	if err != nil || p.Name != "ok" || p.Role != role.Admin {
		t.Fatalf("valid token: %+v %v", p, err)
	}
	// Malformed headers are refused, and the value is not echoed.
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(authn.MetadataKey, "Basic c2VjcmV0"))
	if _, err := a.Authorize(ctx, m); status.Code(err) != codes.Unauthenticated || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("malformed: %v", err)
	}
	// Unknown methods are refused even to admins (fail closed).
	if _, err := call(a, "/kiln.v1.ControlService/NewThing", valid); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unknown method: %v", err)
	}
	// Without ACLs everything passes and no principal is set.
	off := New(Config{})
	if p, err := call(off, "/kiln.v1.ControlService/NewThing", ""); err != nil || p.Name != "" {
		t.Fatalf("acl off: %+v %v", p, err)
	}
}
