package acl

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/role"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Applier commits FSM commands (*raftnode.Node).
type Applier interface {
	Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error)
}

// BootstrapName is the name of the first admin token.
const BootstrapName = "admin"

// MaxTokenName bounds token names.
const MaxTokenName = 64

var tokenName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.@-]*$`)

// Tokens creates, revokes and redeems tokens through Raft. Call its
// methods on the leader.
type Tokens struct {
	raft Applier
	now  func() time.Time
}

// NewTokens returns a token service; now defaults to time.Now.
func NewTokens(raft Applier, now func() time.Time) *Tokens {
	if now == nil {
		now = time.Now
	}
	return &Tokens{raft: raft, now: now}
}

// Bootstrap creates the admin token of a cluster that has none. A second
// bootstrap fails with state.ErrInvalidState.
func (t *Tokens) Bootstrap(ctx context.Context) (*kilnv1.Token, string, error) {
	return t.create(ctx, &kilnv1.Token{Name: BootstrapName, Role: role.Admin.String(), Kind: state.TokenKindAPI, CreatedBy: "bootstrap"}, true)
}

// Create creates an API token of role r (agent allowed), or with agent a
// one-time join token for the pool name; ttl 0 never expires. by is the
// creator's token name.
func (t *Tokens) Create(ctx context.Context, by, name, r string, ttl time.Duration, agent bool) (*kilnv1.Token, string, error) {
	if err := ValidTokenName(name); err != nil {
		return nil, "", err
	}
	if ttl < 0 {
		return nil, "", fmt.Errorf("ttl: negative: %w", state.ErrInvalidCommand)
	}
	tok := &kilnv1.Token{Name: name, CreatedBy: by, Kind: state.TokenKindAPI}
	if agent {
		if r != "" {
			return nil, "", fmt.Errorf("an agent join token has no role (give --agent or --role, not both): %w", state.ErrInvalidCommand)
		}
		tok.Kind = state.TokenKindJoin
	} else {
		rr, err := role.Parse(r)
		if err != nil {
			return nil, "", fmt.Errorf("role: %v: %w", err, state.ErrInvalidCommand)
		}
		tok.Role = rr.String()
	}
	if ttl > 0 {
		tok.ExpiresUnixMs = t.now().Add(ttl).UnixMilli()
	}
	return t.create(ctx, tok, false)
}

func (t *Tokens) create(ctx context.Context, tok *kilnv1.Token, bootstrap bool) (*kilnv1.Token, string, error) {
	secret, hash, err := authn.NewToken()
	if err != nil {
		return nil, "", err
	}
	tok.CreatedUnixMs = t.now().UnixMilli()
	res, err := t.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_CREATE_TOKEN, &fsmv1.CreateToken{
		Record: &fsmv1.TokenRecord{Token: tok, Hash: hash}, Bootstrap: bootstrap,
	})
	if err != nil {
		return nil, "", err
	}
	if res.Err != nil {
		return nil, "", res.Err
	}
	return res.Token, secret, nil
}

// Revoke revokes the named token on every coordinator.
func (t *Tokens) Revoke(ctx context.Context, name string) (*kilnv1.Token, error) {
	res, err := t.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REVOKE_TOKEN, &fsmv1.RevokeToken{Name: name, TimeUnixMs: t.now().UnixMilli()})
	if err != nil {
		return nil, err
	}
	return res.Token, res.Err
}

// Redeem consumes a one-time agent join token atomically (one Raft
// command: of two concurrent redemptions exactly one succeeds) and returns
// its pool name. Errors: state.ErrNotFound for an unknown token,
// state.ErrNotPermitted for one that is not a join token or is used,
// revoked or expired, state.ErrInvalidCommand for a malformed one.
func (t *Tokens) Redeem(ctx context.Context, secret string) (pool string, err error) {
	if err := authn.ValidToken(secret); err != nil {
		return "", fmt.Errorf("join token: %v: %w", err, state.ErrInvalidCommand)
	}
	res, err := t.raft.Apply(ctx, fsmv1.CommandType_COMMAND_TYPE_REDEEM_TOKEN, &fsmv1.RedeemToken{Hash: authn.Hash(secret), TimeUnixMs: t.now().UnixMilli()})
	if err != nil {
		return "", err
	}
	if res.Err != nil {
		return "", res.Err
	}
	return res.Token.GetName(), nil
}

// ValidTokenName checks a token name: [a-z0-9][a-z0-9_.@-]*, at most 64
// bytes.
func ValidTokenName(name string) error {
	if len(name) > MaxTokenName || !tokenName.MatchString(name) {
		return fmt.Errorf("token name %q: want lower-case letters, digits and _.@- (starting with a letter or digit), at most %d bytes: %w", name, MaxTokenName, state.ErrInvalidCommand)
	}
	return nil
}
