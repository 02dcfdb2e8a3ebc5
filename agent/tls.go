package agent

import (
	"fmt"

	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// agentTLS is the agent's TLS state: the cluster CA and the certificate it
// presents (replaced in place when renewed).
type agentTLS struct {
	files tlsutil.Files
	cert  *tlsutil.Holder
}

// setupTLS loads cfg.TLS. With a certificate file the agent's name is the
// certificate's: the coordinators take it from there, whatever the agent
// registers with. Returns nil credentials when TLS is off.
func setupTLS(cfg *Config) (*agentTLS, credentials.TransportCredentials, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil, nil
	}
	pool, err := tlsutil.LoadPool(cfg.TLS.CA)
	if err != nil {
		return nil, nil, &ConfigError{Field: "TLS", Problem: err.Error()}
	}
	t := &agentTLS{files: cfg.TLS, cert: tlsutil.NewHolder(nil)}
	if cfg.TLS.Cert != "" {
		pair, id, err := tlsutil.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, nil, &ConfigError{Field: "TLS", Problem: err.Error()}
		}
		if id.Role != tlsutil.RoleAgent {
			return nil, nil, &ConfigError{Field: "TLS", Problem: fmt.Sprintf("%s is a certificate for %s, not an agent", cfg.TLS.Cert, id)}
		}
		if err := tlsutil.Verify(pair.Leaf, pool); err != nil {
			return nil, nil, &ConfigError{Field: "TLS", Problem: fmt.Sprintf("%s does not chain to %s: %v", cfg.TLS.Cert, cfg.TLS.CA, err)}
		}
		cfg.Name = id.Name
		t.cert.Set(pair)
	} else if cfg.JoinToken == "" {
		return nil, nil, &ConfigError{Field: "TLS", Problem: "an agent with tls-ca needs tls-cert and tls-key, or a join token"}
	}
	return t, credentials.NewTLS(tlsutil.ClientConfig(pool, t.cert)), nil
}
