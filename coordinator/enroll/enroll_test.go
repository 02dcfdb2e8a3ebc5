package enroll

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/agent/identity"
	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// onceTokens is a test-only token store: each token redeems once. (The
// coordinator gets the replicated store of the ACL feature.)
type onceTokens struct {
	mu     sync.Mutex
	tokens map[string]string // token → pool
}

func (o *onceTokens) Redeem(_ context.Context, token string) (string, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	pool, ok := o.tokens[token]
	if !ok {
		return "", fmt.Errorf("%w: unknown or already used", ErrInvalidToken)
	}
	delete(o.tokens, token)
	return pool, nil
}

// server is a coordinator-like gRPC server on loopback: TLS with a
// coordinator certificate and the authn role table.
type server struct {
	addr string
	pool *x509.CertPool
	ca   *tlsutil.CA
}

func startServer(t *testing.T, known map[string]bool, validity time.Duration) *server {
	t.Helper()
	ca, err := tlsutil.CreateCA(t.TempDir(), "test", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := tlsutil.NewKey()
	certPEM, err := ca.Issue(tlsutil.IssueRequest{Identity: tlsutil.Identity{Role: tlsutil.RoleCoordinator, Name: "n1"},
		Hosts: []string{"127.0.0.1"}, PublicKey: key.Public(), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := tlsutil.EncodeKey(key)
	pair, _, err := tlsutil.KeyPairFromPEM(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	s := grpc.NewServer(append(authn.ServerOptions(), grpc.Creds(credentials.NewTLS(tlsutil.ServerConfig(pool, tlsutil.NewHolder(pair)))))...)
	kilnv1.RegisterIdentityServiceServer(s, New(Config{
		CA:         ca,
		Tokens:     &onceTokens{tokens: map[string]string{"tok-1": "linux", "tok-2": "linux"}},
		AgentKnown: func(name string) bool { return known[name] },
		Validity:   validity,
	}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return &server{addr: lis.Addr().String(), pool: pool, ca: ca}
}

func (s *server) dial(t *testing.T, cert *tlsutil.Holder) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsutil.ClientConfig(s.pool, cert))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestJoinTokenEnrollsOnceAndRenewalKeepsTheName(t *testing.T) {
	s := startServer(t, map[string]bool{"a1": true}, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	anon := s.dial(t, nil)
	path := filepath.Join(t.TempDir(), identity.File)

	pair, err := identity.Enroll(ctx, anon, s.pool, path, "tok-1", "build-7")
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	loaded, id, err := identity.Load(path)
	if err != nil || id != (tlsutil.Identity{Role: tlsutil.RoleAgent, Name: "build-7"}) || !loaded.Leaf.Equal(pair.Leaf) {
		t.Fatalf("saved identity %v, %v", id, err)
	}

	// The token is spent; an unknown one is refused; neither writes a file.
	other := filepath.Join(t.TempDir(), identity.File)
	if _, err := identity.Enroll(ctx, anon, s.pool, other, "tok-1", "build-8"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("second use of a token: %v, want PermissionDenied", err)
	}
	if _, err := identity.Enroll(ctx, anon, s.pool, other, "forged", "build-8"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("forged token: %v, want PermissionDenied", err)
	}
	// A valid token cannot take the name of a known agent, or of one just
	// enrolled (it has not registered yet).
	for _, name := range []string{"a1", "build-7"} {
		if _, err := identity.Enroll(ctx, anon, s.pool, other, "tok-2", name); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("enroll as existing %s: %v, want FailedPrecondition", name, err)
		}
	}
	if _, _, err := identity.Load(other); err == nil {
		t.Error("a refused enrollment wrote an identity")
	}
	// Bad requests.
	cl := kilnv1.NewIdentityServiceClient(anon)
	if _, err := cl.EnrollAgent(ctx, &kilnv1.EnrollAgentRequest{JoinToken: "tok-2", Name: "x", CsrDer: []byte("junk")}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("junk CSR: %v", err)
	}
	if _, err := cl.EnrollAgent(ctx, &kilnv1.EnrollAgentRequest{JoinToken: "tok-2", Name: "../x"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad name: %v", err)
	}

	// Renewal: only with an agent certificate, and for its own name.
	if _, err := identity.Renew(ctx, anon, s.pool, path, id); status.Code(err) != codes.Unauthenticated {
		t.Errorf("renew without a certificate: %v, want Unauthenticated", err)
	}
	agentConn := s.dial(t, tlsutil.NewHolder(pair))
	renewed, err := identity.Renew(ctx, agentConn, s.pool, path, id)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if renewed.Leaf.Equal(pair.Leaf) {
		t.Fatal("renewal returned the same certificate")
	}
	if got, rid, err := identity.Load(path); err != nil || rid != id || !got.Leaf.Equal(renewed.Leaf) {
		t.Fatalf("after renewal the file holds %v (%v)", rid, err)
	}
}

func TestRenewAtTwoThirdsOfTheValidity(t *testing.T) {
	s := startServer(t, nil, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	pair, err := identity.Enroll(ctx, s.dial(t, nil), s.pool, filepath.Join(t.TempDir(), identity.File), "tok-1", "short")
	if err != nil {
		t.Fatal(err)
	}
	at := identity.RenewAt(pair.Leaf)
	// NotBefore is backdated by a tenth of the validity (3s) and rounded
	// to the second: renewal comes between 15s and 22s after issue.
	if d := at.Sub(start); d < 15*time.Second || d > 22*time.Second {
		t.Fatalf("renew %v after issue, want about 17s", d)
	}
}
