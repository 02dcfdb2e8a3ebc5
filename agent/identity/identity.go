// Package identity keeps an agent's cluster-issued certificate: it
// enrolls with a join token (the coordinator's IdentityService signs a
// certificate for a key made here, which never leaves the host), stores
// certificate and key in one file in the work directory, and renews the
// certificate with the current one before it expires.
package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"

	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// File is the name, inside the work directory, of the file holding the
// enrolled certificate and its key (mode 0600).
const File = "agent-identity.pem"

// Path is the identity file of a work directory.
func Path(workDir string) string { return filepath.Join(workDir, File) }

// Load reads the identity file. A missing file gives an error wrapping
// os.ErrNotExist.
func Load(path string) (*tls.Certificate, tlsutil.Identity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, tlsutil.Identity{}, err
	}
	pair, id, err := tlsutil.KeyPairFromPEM(data, data)
	if err != nil {
		return nil, tlsutil.Identity{}, fmt.Errorf("%s: %w", path, err)
	}
	if id.Role != tlsutil.RoleAgent {
		return nil, tlsutil.Identity{}, fmt.Errorf("%s: certificate for %s, not an agent", path, id)
	}
	return pair, id, nil
}

// save writes certificate and key to path atomically (temp file, fsync,
// rename), so a crash leaves the old identity or the new one. The file is
// created with mode 0600 (os.CreateTemp).
func save(path string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".identity-*")
	if err != nil {
		return fmt.Errorf("save identity: %w", err)
	}
	defer os.Remove(f.Name()) // after the rename: a no-op
	_, err = f.Write(append(append([]byte(nil), certPEM...), keyPEM...))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save identity %s: %w", path, err)
	}
	return nil
}

// request makes a new key and its certificate request.
func request() (csr, keyPEM []byte, err error) {
	key, err := tlsutil.NewKey()
	if err != nil {
		return nil, nil, err
	}
	if csr, err = tlsutil.CreateCSR(key); err != nil {
		return nil, nil, err
	}
	keyPEM, err = tlsutil.EncodeKey(key)
	return csr, keyPEM, err
}

// accept checks an issued certificate: it matches the key, carries want,
// and chains to pool; then it is saved.
func accept(path string, pool *x509.CertPool, certPEM, keyPEM []byte, want tlsutil.Identity) (*tls.Certificate, error) {
	pair, id, err := tlsutil.KeyPairFromPEM(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("issued certificate: %w", err)
	}
	if id != want {
		return nil, fmt.Errorf("issued certificate is for %s, asked for %s", id, want)
	}
	if err := tlsutil.Verify(pair.Leaf, pool); err != nil {
		return nil, fmt.Errorf("issued certificate does not chain to the cluster CA: %w", err)
	}
	if err := save(path, certPEM, keyPEM); err != nil {
		return nil, err
	}
	return pair, nil
}

// Enroll exchanges token for a certificate naming the agent name, over cc
// (a TLS connection to the leader that trusts pool), and saves it at path.
func Enroll(ctx context.Context, cc grpc.ClientConnInterface, pool *x509.CertPool, path, token, name string) (*tls.Certificate, error) {
	csr, keyPEM, err := request()
	if err != nil {
		return nil, err
	}
	resp, err := kilnv1.NewIdentityServiceClient(cc).EnrollAgent(ctx, &kilnv1.EnrollAgentRequest{JoinToken: token, Name: name, CsrDer: csr})
	if err != nil {
		return nil, err
	}
	return accept(path, pool, resp.GetCertificatePem(), keyPEM, tlsutil.Identity{Role: tlsutil.RoleAgent, Name: name})
}

// Renew asks for a new certificate with the identity of the current one
// (cc presents it) and saves it at path.
func Renew(ctx context.Context, cc grpc.ClientConnInterface, pool *x509.CertPool, path string, current tlsutil.Identity) (*tls.Certificate, error) {
	csr, keyPEM, err := request()
	if err != nil {
		return nil, err
	}
	resp, err := kilnv1.NewIdentityServiceClient(cc).RenewAgent(ctx, &kilnv1.RenewAgentRequest{CsrDer: csr})
	if err != nil {
		return nil, err
	}
	return accept(path, pool, resp.GetCertificatePem(), keyPEM, current)
}

// RenewAt is when a certificate should be renewed: two thirds into its
// validity, so that a renewal that fails has a third of it to be retried.
func RenewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotBefore.Add(life * 2 / 3)
}

// ErrNoIdentity is returned when an agent has neither an identity file nor
// a join token.
var ErrNoIdentity = errors.New("no agent identity: give --join-token (once) or --tls-cert/--tls-key")
