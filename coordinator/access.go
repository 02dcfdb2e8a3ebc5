package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/enroll"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/secrets"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/authn"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// auditTimeout bounds the commit of one audit record after the call it
// records has been answered by its handler.
const auditTimeout = 5 * time.Second

// authorizer is the interceptor pair of this coordinator: with cfg.ACL,
// the ACL checks and the audit log (without ACLs every caller is
// anonymous and nothing is recorded).
func (c *Coordinator) authorizer(cfg Config, keys *secrets.Keyring, store *state.Store, node *raftnode.Node, log *zap.Logger) *acl.Authorizer {
	peerCred := ""
	if keys != nil {
		peerCred = keys.PeerCredential()
	}
	if !cfg.ACL {
		log.Warn("ACLs are off: anyone who reaches the gRPC port may do anything (start coordinators with --acl)")
		return acl.New(acl.Config{Log: log})
	}
	return acl.New(acl.Config{
		Enabled:        cfg.ACL,
		Tokens:         store,
		PeerCredential: peerCred,
		Log:            log,
		Audit: func(ctx context.Context, rec *kilnv1.AuditRecord) {
			// The call is done; its record must not depend on the
			// client still waiting.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), auditTimeout)
			defer cancel()
			res, err := node.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_APPEND_AUDIT, &fsmv1.AppendAudit{Record: rec})
			if err == nil {
				err = res.Err
			}
			if err != nil {
				log.Error("audit record not committed", zap.String("who", rec.GetWho()), zap.String("method", rec.GetMethod()),
					zap.String("what", rec.GetWhat()), zap.Error(err))
			}
		},
	})
}

// peerDialOptions are added to every connection to a peer coordinator:
// with --acl, the peer credential derived from the cluster key.
func peerDialOptions(cfg Config, keys *secrets.Keyring) []grpc.DialOption {
	if !cfg.ACL || keys == nil {
		return nil
	}
	return []grpc.DialOption{grpc.WithPerRPCCredentials(authn.Bearer(keys.PeerCredential()))}
}

// peerDial dials a peer coordinator for blob copies: with creds (this
// node's coordinator certificate under TLS; nil: plaintext) and opts (the
// peer credential with --acl).
func peerDial(creds credentials.TransportCredentials, opts []grpc.DialOption) func(addr string) (*grpc.ClientConn, error) {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)
	return func(addr string) (*grpc.ClientConn, error) { return grpc.NewClient(addr, opts...) }
}

// joinTokens lets agent enrollment (coordinator/enroll) redeem the join
// tokens of the ACL token store.
type joinTokens struct{ t *acl.Tokens }

// Redeem consumes a join token; a token that is unknown, malformed, not a
// join token, used, revoked or expired is enroll.ErrInvalidToken.
func (j joinTokens) Redeem(ctx context.Context, token string) (string, error) {
	pool, err := j.t.Redeem(ctx, token)
	if errors.Is(err, state.ErrNotFound) || errors.Is(err, state.ErrNotPermitted) || errors.Is(err, state.ErrInvalidCommand) {
		return "", fmt.Errorf("%v: %w", err, enroll.ErrInvalidToken)
	}
	return pool, err
}

// Tokens is this coordinator's token service. Its Redeem consumes an agent
// join token through Raft (call it on the leader).
func (c *Coordinator) Tokens() *acl.Tokens { return c.tokens }

// secretOpener opens the secrets a job names, for the scheduler's
// assignments: the repository's own secret, else the global one.
func secretOpener(store *state.Store, keys *secrets.Keyring, log *zap.Logger) func(repo string, names []string) (map[string]string, []string) {
	if keys == nil {
		return nil
	}
	return func(repo string, names []string) (map[string]string, []string) {
		values := map[string]string{}
		var missing []string
		for _, name := range names {
			rec := store.SealedSecret(repo, name)
			if rec == nil {
				missing = append(missing, name)
				continue
			}
			v, err := keys.Open(rec.GetName(), rec.GetRepo(), rec.GetSealed())
			if err != nil {
				log.Error("cannot open a secret; is --secrets-key-file the same on every coordinator?", zap.String("secret", name),
					zap.String("repo", rec.GetRepo()), zap.Error(err))
				missing = append(missing, name)
				continue
			}
			values[name] = string(v)
		}
		return values, missing
	}
}
