package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/agent/identity"
	"github.com/kiln-ci/kiln/internal/leader"
	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// agentTLS is the agent's TLS state: the cluster CA and the certificate it
// presents (replaced in place when renewed).
type agentTLS struct {
	pool *x509.CertPool
	cert *tlsutil.Holder
	// managed: the certificate is the cluster-issued one in the work
	// directory (enrolled with a join token), which the agent renews.
	managed bool
	path    string
}

// setupTLS loads cfg.TLS. The agent's name is its certificate's: the
// coordinators take it from there, whatever the agent registers with.
// Without --tls-cert the identity file in the work directory is used, or,
// with a join token and no such file yet, Run enrolls first. Returns nil
// credentials when TLS is off.
func setupTLS(cfg *Config, log *zap.Logger) (*agentTLS, credentials.TransportCredentials, error) {
	if !cfg.TLS.Enabled() {
		return nil, nil, nil
	}
	bad := func(format string, args ...any) error {
		return &ConfigError{Field: "TLS", Problem: fmt.Sprintf(format, args...)}
	}
	pool, err := tlsutil.LoadPool(cfg.TLS.CA)
	if err != nil {
		return nil, nil, bad("%v", err)
	}
	t := &agentTLS{pool: pool, cert: tlsutil.NewHolder(nil), path: identity.Path(cfg.WorkDir)}
	if cfg.TLS.Cert != "" {
		pair, id, err := tlsutil.LoadKeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return nil, nil, bad("%v", err)
		}
		if id.Role != tlsutil.RoleAgent {
			return nil, nil, bad("%s is a certificate for %s, not an agent", cfg.TLS.Cert, id)
		}
		if err := tlsutil.Verify(pair.Leaf, pool); err != nil {
			return nil, nil, bad("%s does not chain to %s: %v", cfg.TLS.Cert, cfg.TLS.CA, err)
		}
		cfg.Name = id.Name
		t.cert.Set(pair)
	} else {
		pair, id, err := identity.Load(t.path)
		switch {
		case err == nil:
			if cfg.JoinToken != "" {
				log.Info("already enrolled; the join token is not used", zap.String("identity", t.path))
			}
			if cfg.Name != id.Name {
				log.Info("the agent's name is the one it enrolled with", zap.String("name", id.Name),
					zap.String("configured", cfg.Name), zap.String("identity", t.path))
			}
			cfg.Name = id.Name
			t.cert.Set(pair)
		case errors.Is(err, os.ErrNotExist) && cfg.JoinToken != "":
			// Run enrolls.
		case errors.Is(err, os.ErrNotExist):
			return nil, nil, bad("%v", identity.ErrNoIdentity)
		default:
			return nil, nil, bad("%v", err)
		}
		t.managed = true
	}
	return t, credentials.NewTLS(tlsutil.ClientConfig(pool, t.cert)), nil
}

// ensureIdentity enrolls with the join token when the agent has no
// certificate yet, retrying while no leader answers. A refused token or
// name ends the agent: retrying cannot help.
func (a *Agent) ensureIdentity(ctx context.Context) error {
	if a.tls == nil || a.tls.cert.Get() != nil {
		return nil
	}
	backoff := a.cfg.ReconnectMin
	for {
		err := leader.Follow(ctx, a.cfg.Coordinators, a.maxRedirects(), func(ctx context.Context, addr string) error {
			conn, err := a.dial(addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(ctx, a.cfg.RegisterTimeout)
			defer cancel()
			pair, err := identity.Enroll(ctx, conn, a.tls.pool, a.tls.path, a.cfg.JoinToken, a.cfg.Name)
			if err != nil {
				return err
			}
			a.tls.cert.Set(pair)
			return nil
		})
		if err == nil {
			a.log.Info("enrolled: the cluster issued this agent's certificate", zap.String("identity", a.tls.path),
				zap.Time("expires", a.tls.cert.Get().Leaf.NotAfter))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch status.Code(err) {
		case codes.PermissionDenied, codes.InvalidArgument, codes.FailedPrecondition, codes.Unauthenticated:
			return fmt.Errorf("enroll with the join token: %w", err)
		}
		a.log.Warn("enrollment failed; retrying", zap.Error(err), zap.Duration("backoff", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, a.cfg.ReconnectMax)
	}
}

// renewLoop renews a cluster-issued certificate two thirds into its
// validity, retrying every renewRetry until it succeeds, until ctx ends.
func (a *Agent) renewLoop(ctx context.Context) {
	if a.tls == nil || !a.tls.managed {
		return
	}
	for {
		cur := a.tls.cert.Get()
		id, err := tlsutil.IdentityOf(cur.Leaf)
		if err != nil {
			a.log.Error("cannot renew the agent certificate", zap.Error(err))
			return
		}
		wait := time.Until(identity.RenewAt(cur.Leaf))
		select {
		case <-ctx.Done():
			return
		case <-time.After(max(wait, 0)):
		}
		err = leader.Follow(ctx, a.cfg.Coordinators, 0, func(ctx context.Context, addr string) error {
			conn, err := a.dial(addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(ctx, a.cfg.RegisterTimeout)
			defer cancel()
			pair, err := identity.Renew(ctx, conn, a.tls.pool, a.tls.path, id)
			if err != nil {
				return err
			}
			a.tls.cert.Set(pair)
			return nil
		})
		if err == nil {
			a.log.Info("agent certificate renewed", zap.Time("expires", a.tls.cert.Get().Leaf.NotAfter))
			continue
		}
		if ctx.Err() != nil {
			return
		}
		retry := min(renewRetry, max(time.Until(cur.Leaf.NotAfter)/10, time.Second))
		a.log.Warn("agent certificate renewal failed; retrying", zap.Error(err), zap.Duration("retry", retry))
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// renewRetry bounds the wait between failed renewals.
const renewRetry = time.Minute
