// Package secrets seals the values of Kiln secrets before they enter the
// Raft log, and opens them when the leader builds an assignment.
//
// The cluster key is a 32-byte file (--secrets-key-file) that every
// coordinator holds and that is never replicated. From it two keys are
// derived with HMAC-SHA256 under distinct labels: the AES-256-GCM key that
// seals secret values, and the peer credential coordinators present to
// each other with --acl (internal/authn.PeerCredential). A sealed value is
// nonce (12 bytes) || ciphertext+tag, with the additional data
// "name\x00repo", so a sealed value cannot be moved to another name.
package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"github.com/kiln-ci/kiln/internal/authn"
)

// KeySize is the size of the cluster key file.
const KeySize = 32

// MaxValueBytes bounds one secret value.
const MaxValueBytes = 64 << 10

// ErrOpen is returned when a sealed value does not open (wrong key, or the
// record was altered).
var ErrOpen = errors.New("secret does not decrypt with this coordinator's key")

// Keyring holds the keys derived from the cluster key.
type Keyring struct {
	aead cipher.AEAD
	peer string
}

// LoadKeyFile reads a cluster key file: exactly 32 bytes, or 64 hex digits
// (a trailing newline allowed). The file must not be readable by group or
// others.
func LoadKeyFile(path string) (*Keyring, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets key file %s: mode %04o lets others read it; chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("secrets key file: %w", err)
	}
	if len(b) != KeySize {
		h := bytes.TrimRight(b, "\r\n")
		dec, herr := hex.DecodeString(string(h))
		if herr != nil || len(dec) != KeySize {
			return nil, fmt.Errorf("secrets key file %s: %d bytes; want exactly %d bytes or %d hex digits (e.g. head -c 32 /dev/urandom > FILE)", path, len(b), KeySize, 2*KeySize)
		}
		b = dec
	}
	return New(b)
}

// New derives the keyring from a 32-byte cluster key.
func New(key []byte) (*Keyring, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secrets key: %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(derive(key, "kiln secrets aes-256-gcm v1"))
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secrets key: %w", err)
	}
	return &Keyring{aead: aead, peer: authn.PeerCredential(derive(key, "kiln peer credential v1"))}, nil
}

func derive(key []byte, label string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m.Sum(nil)
}

// PeerCredential is what this coordinator presents to its peers and
// expects from them with --acl.
func (k *Keyring) PeerCredential() string { return k.peer }

func aad(name, repo string) []byte { return []byte(name + "\x00" + repo) }

// Seal encrypts value for the secret (name, repo) with a fresh nonce.
func (k *Keyring) Seal(name, repo string, value []byte) ([]byte, error) {
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(value)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("seal secret: %w", err)
	}
	return k.aead.Seal(nonce, nonce, value, aad(name, repo)), nil
}

// Open decrypts a sealed value of the secret (name, repo).
func (k *Keyring) Open(name, repo string, sealed []byte) ([]byte, error) {
	n := k.aead.NonceSize()
	if len(sealed) < n+k.aead.Overhead() {
		return nil, fmt.Errorf("secret %s: %w (too short)", name, ErrOpen)
	}
	v, err := k.aead.Open(nil, sealed[:n], sealed[n:], aad(name, repo))
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, ErrOpen)
	}
	return v, nil
}
