package coordinator

import (
	"crypto/x509"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/coordinator/api"
	"github.com/kiln-ci/kiln/coordinator/authn"
	"github.com/kiln-ci/kiln/coordinator/enroll"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// tlsSetup is a coordinator's loaded TLS material. A nil *tlsSetup means
// TLS is off: plaintext gRPC and Raft, every method open (the default and
// --dev).
type tlsSetup struct {
	pool *x509.CertPool
	cert *tlsutil.Holder
	// ca signs agent certificates (enrollment); nil without --tls-ca-key.
	ca *tlsutil.CA
}

// validateTLS checks the TLS fields of cfg.
func (c *Config) validateTLS() error {
	if err := c.TLS.Validate(); err != nil {
		return err
	}
	switch {
	case c.TLS.CA != "" && c.TLS.Cert == "":
		return errors.New("tls-cert: a coordinator with tls-ca needs its own certificate (tls-cert and tls-key)")
	case c.TLSCAKey != "" && c.TLS.CA == "":
		return errors.New("tls-ca-key: requires tls-ca")
	}
	return nil
}

// loadTLS reads the files named in cfg (nil, nil when TLS is off). The
// certificate must be a coordinator certificate for this node's id: the
// id is what peers check when it joins.
func loadTLS(cfg Config) (*tlsSetup, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil
	}
	pool, err := tlsutil.LoadPool(cfg.TLS.CA)
	if err != nil {
		return nil, fmt.Errorf("tls-ca: %w", err)
	}
	pair, id, err := tlsutil.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, fmt.Errorf("tls-cert: %w", err)
	}
	if id.Role != tlsutil.RoleCoordinator || id.Name != cfg.NodeID {
		return nil, fmt.Errorf("tls-cert: %s is a certificate for %s; this node needs one for coordinator/%s", cfg.TLS.Cert, id, cfg.NodeID)
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("tls-cert: %s does not chain to tls-ca %s: %w", cfg.TLS.Cert, cfg.TLS.CA, err)
	}
	t := &tlsSetup{pool: pool, cert: tlsutil.NewHolder(pair)}
	if cfg.TLSCAKey != "" {
		if t.ca, err = tlsutil.LoadCA(cfg.TLS.CA, cfg.TLSCAKey); err != nil {
			return nil, fmt.Errorf("tls-ca-key: %w", err)
		}
	}
	return t, nil
}

// serverOptions serve TLS only and enforce the role table.
func (t *tlsSetup) serverOptions() []grpc.ServerOption {
	if t == nil {
		return nil
	}
	return append([]grpc.ServerOption{grpc.Creds(credentials.NewTLS(tlsutil.ServerConfig(t.pool, t.cert)))}, authn.ServerOptions()...)
}

// peerCredentials are the credentials of calls to other coordinators
// (nil: plaintext).
func (t *tlsSetup) peerCredentials() credentials.TransportCredentials {
	if t == nil {
		return nil
	}
	return credentials.NewTLS(tlsutil.ClientConfig(t.pool, t.cert))
}

// raft is the Raft transport's TLS configuration (nil: plain TCP).
func (t *tlsSetup) raft() *raftnode.TLS {
	if t == nil {
		return nil
	}
	return &raftnode.TLS{Pool: t.pool, Cert: t.cert}
}

// identityService issues agent certificates: enrollment with a join token
// (leader only) and renewal, signed with --tls-ca-key.
func (c *Coordinator) identityService(deps *api.Deps) *enroll.Server {
	var ca *tlsutil.CA
	if c.tls != nil {
		ca = c.tls.ca
	}
	return enroll.New(enroll.Config{
		CA:            ca,
		Tokens:        c.cfg.JoinTokens,
		RequireLeader: deps.RequireLeader,
		AgentKnown: func(name string) bool {
			_, ok := c.store.Agent(name)
			return ok
		},
		Validity: c.cfg.AgentCertValidity,
		Log:      c.log.Named("enroll"),
	})
}
