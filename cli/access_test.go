package cli

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// fakeAccess records what kilnctl sends to the AccessService.
type fakeAccess struct {
	kilnv1.UnimplementedAccessServiceServer
	mu      sync.Mutex
	auth    []string
	secrets []*kilnv1.SetSecretRequest
	created []*kilnv1.CreateTokenRequest
}

func (f *fakeAccess) note(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = append(f.auth, strings.Join(md.Get(authn.MetadataKey), ","))
	f.mu.Unlock()
}

func (f *fakeAccess) SetSecret(ctx context.Context, req *kilnv1.SetSecretRequest) (*kilnv1.SetSecretResponse, error) {
	f.note(ctx)
	f.mu.Lock()
	f.secrets = append(f.secrets, req)
	f.mu.Unlock()
	return &kilnv1.SetSecretResponse{Secret: &kilnv1.Secret{Name: req.GetName()}}, nil
}

func (f *fakeAccess) CreateToken(ctx context.Context, req *kilnv1.CreateTokenRequest) (*kilnv1.CreateTokenResponse, error) {
	f.note(ctx)
	f.mu.Lock()
	f.created = append(f.created, req)
	f.mu.Unlock()
	return &kilnv1.CreateTokenResponse{Token: &kilnv1.Token{Name: req.GetName(), Role: req.GetRole()}, Secret: "kiln_SECRET"}, nil
}

func (f *fakeAccess) ListTokens(ctx context.Context, _ *kilnv1.ListTokensRequest) (*kilnv1.ListTokensResponse, error) {
	f.note(ctx)
	return nil, status.Error(codes.Unauthenticated, "this cluster requires a token")
}

func serveAccess(t *testing.T, f *fakeAccess) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterAccessServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func runCLIStdin(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := NewRootCommand(&out, &errb)
	cmd.SetArgs(args)
	cmd.SetIn(strings.NewReader(stdin))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := ExitCode(cmd.ExecuteContext(ctx))
	return out.String(), errb.String(), code
}

func TestSecretSetReadsStdinAndSendsToken(t *testing.T) {
	f := &fakeAccess{}
	addr := serveAccess(t, f)
	tok, _, _ := authn.NewToken()
	t.Setenv(authn.EnvToken, tok)
	_, errOut, code := runCLIStdin(t, "line1\nline2\n", "--coordinators", addr, "secret", "set", "KEY", "--repo", "web")
	must(t, code, 0, errOut)
	if len(f.secrets) != 1 || string(f.secrets[0].GetValue()) != "line1\nline2" || f.secrets[0].GetRepo() != "web" {
		t.Fatalf("sent %v", f.secrets)
	}
	if f.auth[0] != "Bearer "+tok {
		t.Fatalf("authorization %q", f.auth[0])
	}
	// Empty value: usage error, nothing sent.
	_, errOut, code = runCLIStdin(t, "\n", "--coordinators", addr, "secret", "set", "KEY")
	must(t, code, 2, errOut)
	if len(f.secrets) != 1 || !strings.Contains(errOut, "empty") {
		t.Fatalf("empty value: %q, %d sent", errOut, len(f.secrets))
	}
	// --token wins over the variable; a malformed one is a usage error.
	tok2, _, _ := authn.NewToken()
	_, errOut, code = runCLIStdin(t, "v", "--coordinators", addr, "--token", tok2, "secret", "set", "K2")
	must(t, code, 0, errOut)
	if f.auth[len(f.auth)-1] != "Bearer "+tok2 {
		t.Fatalf("authorization %q", f.auth[len(f.auth)-1])
	}
	_, errOut, code = runCLIStdin(t, "v", "--coordinators", addr, "--token", "hunter2", "secret", "set", "K3")
	must(t, code, 2, errOut)
	if strings.Contains(errOut, "hunter2") {
		t.Fatalf("the bad token is echoed: %q", errOut)
	}
}

func TestTokenCreateAndHints(t *testing.T) {
	f := &fakeAccess{}
	addr := serveAccess(t, f)
	out, errOut, code := runCLI(t, "--coordinators", addr, "token", "create", "--name", "ci", "--role", "developer", "--ttl", "30d")
	must(t, code, 0, errOut)
	if out != "kiln_SECRET\n" || f.created[0].GetTtlMs() != (30*24*time.Hour).Milliseconds() {
		t.Fatalf("out %q, sent %v", out, f.created)
	}
	for _, args := range [][]string{
		{"token", "create", "--name", "x"},
		{"token", "create", "--name", "x", "--role", "viewer", "--agent"},
		{"token", "create", "--role", "viewer"},
		{"token", "create", "--name", "x", "--role", "viewer", "--ttl", "soon"},
	} {
		_, errOut, code := runCLI(t, append([]string{"--coordinators", addr}, args...)...)
		must(t, code, 2, errOut)
	}
	_, errOut, code = runCLI(t, "--coordinators", addr, "token", "list")
	must(t, code, 1, errOut)
	if !strings.Contains(errOut, "hint: give --token or set $KILN_TOKEN") {
		t.Fatalf("no hint: %q", errOut)
	}
}
