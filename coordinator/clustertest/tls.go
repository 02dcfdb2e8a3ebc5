package clustertest

import (
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/coordinator/enroll"
	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// TLSOptions run the cluster with TLS: a CA made for the test, coordinator
// certificates for 127.0.0.1, mutual TLS between coordinators, and the
// authn role table.
type TLSOptions struct {
	// JoinTokens lets agents enroll (coordinator.Config.JoinTokens).
	JoinTokens enroll.Tokens
	// AgentCertValidity of enrolled agents (default the coordinator's).
	AgentCertValidity time.Duration
}

// pki is a test cluster's certificate directory.
type pki struct {
	dir  string
	ca   *tlsutil.CA
	pool *x509.CertPool
}

func newPKI(dir string) (*pki, error) {
	ca, err := tlsutil.CreateCA(dir, "clustertest", time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &pki{dir: dir, ca: ca, pool: pool}, nil
}

// files returns ROLE/NAME's certificate and key files, issuing them on
// first use (a restarted node reuses its own).
func (p *pki) files(role tlsutil.Role, name string) (tlsutil.Files, error) {
	f := tlsutil.Files{CA: filepath.Join(p.dir, tlsutil.CACertFile),
		Cert: filepath.Join(p.dir, name+".pem"), Key: filepath.Join(p.dir, name+"-key.pem")}
	if _, err := os.Stat(f.Cert); err == nil {
		return f, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return f, err
	}
	key, err := tlsutil.NewKey()
	if err != nil {
		return f, err
	}
	certPEM, err := p.ca.Issue(tlsutil.IssueRequest{Identity: tlsutil.Identity{Role: role, Name: name},
		Hosts: []string{"127.0.0.1"}, PublicKey: key.Public(), Validity: time.Hour})
	if err != nil {
		return f, err
	}
	_, _, err = tlsutil.WriteCertAndKey(p.dir, name, certPEM, key)
	return f, err
}

// clientCreds are the credentials of a client certificate "test-client".
func (p *pki) clientCreds() (credentials.TransportCredentials, error) {
	f, err := p.files(tlsutil.RoleClient, "test-client")
	if err != nil {
		return nil, err
	}
	pair, _, err := tlsutil.LoadKeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(tlsutil.ClientConfig(p.pool, tlsutil.NewHolder(pair))), nil
}

// CAFile is the test CA's certificate file (TLS clusters only).
func (c *Cluster) CAFile() string {
	if c.pki == nil {
		return ""
	}
	return filepath.Join(c.pki.dir, tlsutil.CACertFile)
}
