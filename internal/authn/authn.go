// Package authn is the wire format of Kiln credentials, shared by the
// coordinator (which checks them) and its clients (kilnctl, agents, peer
// coordinators, which send them): the token syntax, its hash, the
// "authorization: Bearer ..." metadata, and a gRPC per-RPC credential.
//
// An API or join token is "kiln_" followed by 43 base64url characters (32
// random bytes). Coordinators store only its SHA-256. A peer coordinator
// sends "kilnpeer_" followed by the base64url HMAC-SHA256 of a fixed label
// under the cluster key, which every coordinator can recompute.
package authn

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// MetadataKey is the gRPC metadata key carrying the credential.
const MetadataKey = "authorization"

// EnvToken names the environment variable kilnctl and agents read the
// token from when --token is not given.
const EnvToken = "KILN_TOKEN"

// Prefixes of the two credential kinds.
const (
	TokenPrefix = "kiln_"
	PeerPrefix  = "kilnpeer_"
)

// secretLen is the base64url length of 32 bytes without padding.
const secretLen = 43

// MaxHeaderBytes bounds the authorization value a server parses.
const MaxHeaderBytes = 256

var b64 = base64.RawURLEncoding

// ErrMalformed is returned for a credential that is not a Kiln token.
var ErrMalformed = errors.New("malformed credential")

// NewToken returns a fresh random token and the SHA-256 the coordinator
// stores.
func NewToken() (secret string, hash []byte, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, fmt.Errorf("new token: %w", err)
	}
	secret = TokenPrefix + b64.EncodeToString(b[:])
	return secret, Hash(secret), nil
}

// Hash is the stored form of a token: SHA-256 of its text. Tokens carry
// 256 random bits, so a fast hash is enough (no dictionary to guess from).
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// PeerCredential derives the credential coordinators present to each other
// from the cluster key.
func PeerCredential(key []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("kiln coordinator peer v1"))
	return PeerPrefix + b64.EncodeToString(m.Sum(nil))
}

// Kind says which credential a header carried.
type Kind int

// Credential kinds.
const (
	KindToken Kind = iota + 1
	KindPeer
)

// ParseBearer checks an authorization value "Bearer <credential>" (scheme
// case-insensitive, one space) and returns the credential and its kind. It
// never echoes the value in its errors.
func ParseBearer(v string) (string, Kind, error) {
	if len(v) > MaxHeaderBytes {
		return "", 0, fmt.Errorf("%w: longer than %d bytes", ErrMalformed, MaxHeaderBytes)
	}
	scheme, cred, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", 0, fmt.Errorf("%w: want \"Bearer <token>\"", ErrMalformed)
	}
	var kind Kind
	var rest string
	switch {
	case strings.HasPrefix(cred, TokenPrefix):
		kind, rest = KindToken, cred[len(TokenPrefix):]
	case strings.HasPrefix(cred, PeerPrefix):
		kind, rest = KindPeer, cred[len(PeerPrefix):]
	default:
		return "", 0, fmt.Errorf("%w: not a Kiln token (they start with %q)", ErrMalformed, TokenPrefix)
	}
	if len(rest) != secretLen {
		return "", 0, fmt.Errorf("%w: wrong length", ErrMalformed)
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return "", 0, fmt.Errorf("%w: character outside base64url", ErrMalformed)
		}
	}
	return cred, kind, nil
}

// ValidToken reports whether s has the syntax of a Kiln token (clients
// check --token before sending it).
func ValidToken(s string) error {
	_, k, err := ParseBearer("Bearer " + s)
	if err == nil && k != KindToken {
		return fmt.Errorf("%w: not a Kiln token", ErrMalformed)
	}
	return err
}

// Bearer is a grpc.PerRPCCredentials sending a fixed credential. It does
// not require transport security, so it works on the plain-text
// connections Kiln uses until TLS is configured.
type Bearer string

// GetRequestMetadata returns the authorization header.
func (b Bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{MetadataKey: "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: see Bearer.
func (Bearer) RequireTransportSecurity() bool { return false }
