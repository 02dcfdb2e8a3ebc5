package identity

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

func TestLoadAcceptsOnlyAnAgentIdentity(t *testing.T) {
	dir := t.TempDir()
	path := Path(dir)
	if _, _, err := Load(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	ca, err := tlsutil.CreateCA(filepath.Join(dir, "ca"), "t", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		role tlsutil.Role
		ok   bool
	}{{tlsutil.RoleClient, false}, {tlsutil.RoleAgent, true}} {
		key, _ := tlsutil.NewKey()
		certPEM, err := ca.Issue(tlsutil.IssueRequest{Identity: tlsutil.Identity{Role: c.role, Name: "x"}, PublicKey: key.Public(), Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		keyPEM, _ := tlsutil.EncodeKey(key)
		if err := save(path, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		_, id, err := Load(path)
		if (err == nil) != c.ok {
			t.Errorf("%s certificate: %v %v", c.role, id, err)
		}
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode: %v %v", st, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".identity-*"))
	if len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	// A file with a key that does not match the certificate is refused.
	other, _ := tlsutil.NewKey()
	otherPEM, _ := tlsutil.EncodeKey(other)
	data, _ := os.ReadFile(path)
	certOnly, _, _ := strings.Cut(string(data), "-----BEGIN PRIVATE KEY-----")
	if err := os.WriteFile(path, append([]byte(certOnly), otherPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(path); err == nil {
		t.Fatal("a damaged identity file loaded")
	}
}
