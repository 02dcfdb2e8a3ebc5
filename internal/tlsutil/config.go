package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync/atomic"
)

// Files names the PEM files of one TLS participant.
type Files struct {
	// CA is the cluster CA certificate every peer must chain to.
	CA string
	// Cert and Key are this participant's certificate and key (optional
	// for clients).
	Cert, Key string
}

// Enabled reports whether TLS is configured (a CA is named).
func (f Files) Enabled() bool { return f.CA != "" }

// Validate checks that the files are named consistently.
func (f Files) Validate() error {
	switch {
	case (f.Cert == "") != (f.Key == ""):
		return errors.New("tls-cert and tls-key: give both or neither")
	case f.Cert != "" && f.CA == "":
		return errors.New("tls-ca: required with tls-cert")
	}
	return nil
}

// LoadPool reads the CA certificates of a PEM file.
func LoadPool(caFile string) (*x509.CertPool, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("CA %s holds no PEM certificate", caFile)
	}
	return pool, nil
}

// LoadKeyPair reads a certificate and its key and returns them with the
// certificate's identity.
func LoadKeyPair(certFile, keyFile string) (*tls.Certificate, Identity, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("load certificate %s / key %s: %w", certFile, keyFile, err)
	}
	return keyPairIdentity(&pair, certFile)
}

// KeyPairFromPEM is LoadKeyPair on PEM data.
func KeyPairFromPEM(certPEM, keyPEM []byte) (*tls.Certificate, Identity, error) {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("certificate and key: %w", err)
	}
	return keyPairIdentity(&pair, "certificate")
}

func keyPairIdentity(pair *tls.Certificate, what string) (*tls.Certificate, Identity, error) {
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, Identity{}, fmt.Errorf("parse %s: %w", what, err)
	}
	pair.Leaf = leaf
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, Identity{}, fmt.Errorf("%s: %w", what, err)
	}
	return pair, id, nil
}

// Verify checks that cert chains to pool and is valid now for client
// authentication, the check a coordinator applies to it.
func Verify(cert *x509.Certificate, pool *x509.CertPool) error {
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return err
}

// ParseCertPEM parses the first certificate of a PEM block.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(b.Bytes)
}

// Holder keeps the current certificate of a participant whose certificate
// is renewed while it runs; connections made later present the new one.
type Holder struct {
	p atomic.Pointer[tls.Certificate]
}

// NewHolder returns a holder of cert.
func NewHolder(cert *tls.Certificate) *Holder {
	h := &Holder{}
	h.p.Store(cert)
	return h
}

// Set replaces the certificate.
func (h *Holder) Set(cert *tls.Certificate) { h.p.Store(cert) }

// Get returns the current certificate.
func (h *Holder) Get() *tls.Certificate { return h.p.Load() }

// ServerConfig is the gRPC server side of a coordinator: it presents cert
// and verifies a client certificate against pool when one is given. Which
// roles may call what is decided per method (coordinator/authn), not here,
// so that clients without a certificate can still reach public methods.
func ServerConfig(pool *x509.CertPool, cert *Holder) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		ClientCAs:      pool,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Get(), nil },
	}
}

// ClientConfig is the side of anything that dials a coordinator's gRPC
// port: the server must chain to pool and carry a coordinator identity;
// cert (nil: none) is presented when the server asks.
func ClientConfig(pool *x509.CertPool, cert *Holder) *tls.Config {
	cfg := &tls.Config{
		MinVersion:       tls.VersionTLS13,
		RootCAs:          pool,
		VerifyConnection: requirePeerRole(RoleCoordinator),
	}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := cert.Get(); c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // none yet: connect anonymously
		}
	}
	return cfg
}

// PeerServerConfig is the listening side of the Raft transport: both ends
// must present a coordinator certificate of the cluster CA.
func PeerServerConfig(pool *x509.CertPool, cert *Holder) *tls.Config {
	return &tls.Config{
		MinVersion:       tls.VersionTLS13,
		ClientCAs:        pool,
		ClientAuth:       tls.RequireAndVerifyClientCert,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert.Get(), nil },
		VerifyConnection: requirePeerRole(RoleCoordinator),
	}
}

// PeerClientConfig is the dialing side of the Raft transport for the peer
// at addr (host:port): the peer's certificate must name host and carry a
// coordinator identity.
func PeerClientConfig(pool *x509.CertPool, cert *Holder, addr string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("peer address %q: %w", addr, err)
	}
	cfg := ClientConfig(pool, cert)
	cfg.ServerName = host
	return cfg, nil
}

// requirePeerRole refuses a handshake whose peer certificate does not
// carry one of roles. The chain was verified before this runs.
func requirePeerRole(roles ...Role) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("peer presented no certificate")
		}
		id, err := IdentityOf(cs.PeerCertificates[0])
		if err != nil {
			return err
		}
		if !slices.Contains(roles, id.Role) {
			return fmt.Errorf("peer certificate is for %s; want a %v certificate", id, roles)
		}
		return nil
	}
}
