package secrets

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func TestSealOpen(t *testing.T) {
	k, err := New(key(1))
	if err != nil {
		t.Fatal(err)
	}
	v := []byte("hunter2-value")
	s1, err := k.Seal("DB_PASS", "web", v)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := k.Seal("DB_PASS", "web", v)
	if bytes.Equal(s1, s2) {
		t.Fatal("two seals of one value are equal (nonce reused)")
	}
	if bytes.Contains(s1, v) {
		t.Fatal("sealed value contains the plain text")
	}
	got, err := k.Open("DB_PASS", "web", s1)
	if err != nil || !bytes.Equal(got, v) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Moved to another name or repository, altered, or another key: refused.
	if _, err := k.Open("OTHER", "web", s1); !errors.Is(err, ErrOpen) {
		t.Fatalf("open under another name: %v", err)
	}
	if _, err := k.Open("DB_PASS", "", s1); !errors.Is(err, ErrOpen) {
		t.Fatalf("open under another repo: %v", err)
	}
	bad := bytes.Clone(s1)
	bad[len(bad)-1] ^= 1
	if _, err := k.Open("DB_PASS", "web", bad); !errors.Is(err, ErrOpen) {
		t.Fatalf("open altered: %v", err)
	}
	k2, _ := New(key(2))
	if _, err := k2.Open("DB_PASS", "web", s1); !errors.Is(err, ErrOpen) {
		t.Fatalf("open with another key: %v", err)
	}
	if _, err := k.Open("DB_PASS", "web", s1[:5]); !errors.Is(err, ErrOpen) {
		t.Fatalf("open truncated: %v", err)
	}
	if k.PeerCredential() == k2.PeerCredential() {
		t.Fatal("peer credential does not depend on the key")
	}
}

func TestLoadKeyFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw, err := LoadKeyFile(write("raw", key(7), 0o600))
	if err != nil {
		t.Fatal(err)
	}
	hexed, err := LoadKeyFile(write("hex", []byte(strings.Repeat("07", KeySize)+"\n"), 0o600))
	if err != nil {
		t.Fatal(err)
	}
	if raw.PeerCredential() != hexed.PeerCredential() {
		t.Fatal("raw and hex forms of one key differ")
	}
	for name, tc := range map[string]struct {
		b    []byte
		mode os.FileMode
		want string
	}{
		"short":    {key(1)[:31], 0o600, "want exactly 32 bytes"},
		"long":     {append(key(1), 0), 0o600, "want exactly 32 bytes"},
		"readable": {key(1), 0o644, "chmod 600"},
	} {
		_, err := LoadKeyFile(write(name, tc.b, tc.mode))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", name, err, tc.want)
		}
	}
	if _, err := LoadKeyFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
}
