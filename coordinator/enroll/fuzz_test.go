package enroll

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// alwaysTokens redeems exactly the token "good" (any number of times, so
// the fuzzer can reach the signing path repeatedly).
type alwaysTokens struct{}

func (alwaysTokens) Redeem(_ context.Context, token string) (string, error) {
	if token != "good" {
		return "", ErrInvalidToken
	}
	return "pool", nil
}

// FuzzEnrollAgent feeds arbitrary enrollment requests (the one RPC an
// unauthenticated caller reaches with TLS on) to the server: it never
// panics, refuses bad input with InvalidArgument or PermissionDenied, and
// a certificate it issues names agent/<requested name> and certifies the
// CSR's own key, never anything the request could choose otherwise.
func FuzzEnrollAgent(f *testing.F) {
	ca, err := tlsutil.CreateCA(f.TempDir(), "fuzz", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	key, _ := tlsutil.NewKey()
	csr, err := tlsutil.CreateCSR(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("good", "a1", csr)
	f.Add("bad", "a1", csr)
	f.Add("good", "../a1", csr)
	f.Add("good", "a1", csr[:len(csr)/2])
	f.Add("", "", []byte{})
	f.Fuzz(func(t *testing.T, token, name string, csrDER []byte) {
		s := New(Config{CA: ca, Tokens: alwaysTokens{}})
		resp, err := s.EnrollAgent(context.Background(), &kilnv1.EnrollAgentRequest{JoinToken: token, Name: name, CsrDer: csrDER})
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.PermissionDenied:
				return
			}
			t.Fatalf("unexpected refusal: %v", err)
		}
		if token != "good" {
			t.Fatalf("enrolled with token %q", token)
		}
		block, _ := pem.Decode(resp.GetCertificatePem())
		if block == nil {
			t.Fatal("no certificate PEM")
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		id, err := tlsutil.IdentityOf(cert)
		if err != nil || id.Role != tlsutil.RoleAgent || id.Name != name {
			t.Fatalf("issued %v (%v) for name %q", id, err, name)
		}
		req, err := x509.ParseCertificateRequest(csrDER)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := x509.MarshalPKIXPublicKey(req.PublicKey)
		got, _ := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if !bytes.Equal(want, got) {
			t.Fatal("the certificate does not certify the CSR's key")
		}
	})
}
