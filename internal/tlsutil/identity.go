// Package tlsutil is Kiln's certificate authority and TLS configuration:
// creating a cluster CA, issuing certificates that carry a role
// (coordinator, agent, client) and a name, reading that identity back from
// a verified peer certificate, and building the tls.Config of servers,
// clients and the Raft transport.
//
// The identity lives in one URI SAN, kiln://ROLE/NAME (the subject's
// OU and CN repeat it for people reading the certificate; only the URI
// counts). A certificate with no kiln URI, two of them, an unknown role or
// a bad name has no identity and is refused wherever one is needed.
package tlsutil

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate's holder may do in the cluster.
type Role string

// The roles. A coordinator certificate is also a server certificate (it
// serves gRPC and Raft); agent and client certificates only authenticate
// their holder to coordinators.
const (
	RoleCoordinator Role = "coordinator"
	RoleAgent       Role = "agent"
	RoleClient      Role = "client"
)

// URIScheme is the scheme of the SAN that carries the identity.
const URIScheme = "kiln"

// MaxNameBytes bounds an identity's name.
const MaxNameBytes = 128

// ParseRole returns the role named s.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleCoordinator, RoleAgent, RoleClient:
		return r, nil
	}
	return "", fmt.Errorf("role %q is not one of coordinator, agent, client", s)
}

// Identity is who a certificate says its holder is.
type Identity struct {
	Role Role
	Name string
}

// String is ROLE/NAME.
func (id Identity) String() string { return string(id.Role) + "/" + id.Name }

// Validate checks the role and the name.
func (id Identity) Validate() error {
	if _, err := ParseRole(string(id.Role)); err != nil {
		return err
	}
	return ValidateName(id.Name)
}

// URI is the SAN that carries the identity: kiln://ROLE/NAME.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: URIScheme, Host: string(id.Role), Path: "/" + id.Name}
}

// ValidateName checks an identity's name: 1..MaxNameBytes bytes of
// letters, digits, '.', '_', '-' and '@', starting with a letter or digit.
// The set is that of host names and user names, so names need no escaping
// in URIs, logs or file names.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("name is empty")
	}
	if len(name) > MaxNameBytes {
		return fmt.Errorf("name is %d bytes; the limit is %d", len(name), MaxNameBytes)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !ok && i > 0 {
			ok = r == '.' || r == '_' || r == '-' || r == '@'
		}
		if !ok {
			return fmt.Errorf("name %q: character %q at byte %d is not allowed (letters, digits, and . _ - @ after the first)", name, r, i)
		}
	}
	return nil
}

// ParseIdentityURI parses kiln://ROLE/NAME.
func ParseIdentityURI(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, URIScheme+"://")
	if !ok {
		return Identity{}, fmt.Errorf("identity URI %q does not start with %s://", s, URIScheme)
	}
	role, name, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("identity URI %q is not %s://ROLE/NAME", s, URIScheme)
	}
	r, err := ParseRole(role)
	if err != nil {
		return Identity{}, fmt.Errorf("identity URI %q: %w", s, err)
	}
	if err := ValidateName(name); err != nil {
		return Identity{}, fmt.Errorf("identity URI %q: %w", s, err)
	}
	return Identity{Role: r, Name: name}, nil
}

// ErrNoIdentity marks a certificate that does not carry exactly one valid
// kiln identity.
var ErrNoIdentity = errors.New("certificate carries no kiln identity")

// IdentityOf reads the identity of a certificate (whose chain the caller
// has verified): exactly one kiln:// URI SAN, well formed.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme {
			continue
		}
		id, err := ParseIdentityURI(u.String())
		if err != nil {
			return Identity{}, fmt.Errorf("%w: %w", ErrNoIdentity, err)
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%w: no %s:// URI SAN", ErrNoIdentity, URIScheme)
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("%w: %d %s:// URI SANs, want one", ErrNoIdentity, len(found), URIScheme)
}
