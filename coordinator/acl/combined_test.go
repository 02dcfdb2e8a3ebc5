package acl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	certauthn "github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// callerCtx is the context of a call over TLS whose client presented a
// certificate of role (empty: none) and the bearer cred (empty: none).
func callerCtx(certRole tlsutil.Role, cred string) context.Context {
	state := tls.ConnectionState{}
	if certRole != "" {
		id := tlsutil.Identity{Role: certRole, Name: "x1"}
		state.VerifiedChains = [][]*x509.Certificate{{{URIs: []*url.URL{id.URI()}}}}
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
	if cred != "" {
		ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(authn.MetadataKey, "Bearer "+cred))
	}
	return ctx
}

// TestCertificateAndTokenTablesCombined runs a call through both tables in
// the coordinator's order (certificate table, then token table) for each
// certificate role × credential × method and checks the outcome: the
// certificate table decides which kind of process may call, the token
// table which person; an agent certificate is an agent's whole credential.
func TestCertificateAndTokenTablesCombined(t *testing.T) {
	toks := fakeTokens{}
	peerCred := authn.PeerCredential([]byte("0123456789abcdef0123456789abcdef"))
	a := New(Config{Enabled: true, Tokens: toks, PeerCredential: peerCred})
	creds := map[string]string{"-": "", "node": peerCred,
		"developer": newToken(t, toks, &kilnv1.Token{Name: "dev", Role: "developer"}),
		"agent":     newToken(t, toks, &kilnv1.Token{Name: "pool", Role: "agent"}),
	}
	const (
		ok     = codes.OK
		unauth = codes.Unauthenticated
		denied = codes.PermissionDenied
	)
	certs := []tlsutil.Role{"", tlsutil.RoleClient, tlsutil.RoleAgent, tlsutil.RoleCoordinator}
	// want[method][cert role][credential]; "" is no certificate, "-" no
	// bearer credential.
	want := map[string]map[tlsutil.Role]map[string]codes.Code{
		"/kiln.v1.AgentService/Connect": {
			"":                      {"-": unauth, "developer": unauth, "agent": unauth, "node": unauth},
			tlsutil.RoleClient:      {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleAgent:       {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleCoordinator: {"-": denied, "developer": denied, "agent": denied, "node": denied},
		},
		"/kiln.v1.ControlService/SubmitBuild": {
			"":                      {"-": unauth, "developer": ok, "agent": denied, "node": denied},
			tlsutil.RoleClient:      {"-": unauth, "developer": ok, "agent": denied, "node": denied},
			tlsutil.RoleAgent:       {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleCoordinator: {"-": unauth, "developer": ok, "agent": denied, "node": denied},
		},
		"/kiln.v1.BlobService/Upload": {
			"":                      {"-": unauth, "developer": ok, "agent": ok, "node": denied},
			tlsutil.RoleClient:      {"-": unauth, "developer": ok, "agent": ok, "node": denied},
			tlsutil.RoleAgent:       {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleCoordinator: {"-": denied, "developer": denied, "agent": denied, "node": denied},
		},
		"/kiln.v1.ClusterService/ReadIndex": {
			"":                      {"-": unauth, "developer": unauth, "agent": unauth, "node": unauth},
			tlsutil.RoleClient:      {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleAgent:       {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleCoordinator: {"-": unauth, "developer": denied, "agent": denied, "node": ok},
		},
		"/kiln.v1.AccessService/BootstrapToken": {
			"":                      {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleClient:      {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleAgent:       {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleCoordinator: {"-": ok, "developer": ok, "agent": ok, "node": ok},
		},
		"/kiln.v1.AccessService/SetSecret": {
			"":                      {"-": unauth, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleClient:      {"-": unauth, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleAgent:       {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleCoordinator: {"-": unauth, "developer": denied, "agent": denied, "node": denied},
		},
		"/kiln.v1.AccessService/WhoAmI": {
			"":                      {"-": unauth, "developer": ok, "agent": ok, "node": denied},
			tlsutil.RoleClient:      {"-": unauth, "developer": ok, "agent": ok, "node": denied},
			tlsutil.RoleAgent:       {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleCoordinator: {"-": unauth, "developer": ok, "agent": ok, "node": denied},
		},
		"/kiln.v1.IdentityService/EnrollAgent": {
			"":                      {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleClient:      {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleAgent:       {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleCoordinator: {"-": ok, "developer": ok, "agent": ok, "node": ok},
		},
		"/kiln.v1.IdentityService/RenewAgent": {
			"":                      {"-": unauth, "developer": unauth, "agent": unauth, "node": unauth},
			tlsutil.RoleClient:      {"-": denied, "developer": denied, "agent": denied, "node": denied},
			tlsutil.RoleAgent:       {"-": ok, "developer": ok, "agent": ok, "node": ok},
			tlsutil.RoleCoordinator: {"-": denied, "developer": denied, "agent": denied, "node": denied},
		},
	}
	for method, byCert := range want {
		for _, cr := range certs {
			for cname, cred := range creds {
				name := fmt.Sprintf("%s cert=%q cred=%s", method, cr, cname)
				ctx, err := certauthn.Authorize(callerCtx(cr, cred), method)
				if err == nil {
					ctx, err = a.Authorize(ctx, method)
				}
				if got, w := status.Code(err), byCert[cr][cname]; got != w {
					t.Errorf("%s: %v, want %v", name, err, w)
					continue
				}
				if err != nil || cr != tlsutil.RoleAgent || method == "/kiln.v1.AccessService/BootstrapToken" || method == "/kiln.v1.IdentityService/EnrollAgent" || method == "/kiln.v1.IdentityService/RenewAgent" {
					continue
				}
				// An agent certificate's caller is the agent it names,
				// whatever bearer token came with it.
				if p, _ := FromContext(ctx); p.Name != "agent/x1" || p.Role.String() != "agent" {
					t.Errorf("%s: principal %+v, want agent/x1 with role agent", name, p)
				}
			}
		}
	}
}
