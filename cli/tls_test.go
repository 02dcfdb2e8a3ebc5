package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

func TestTLSCommandsMakeCertificatesWithRoles(t *testing.T) {
	dir := t.TempDir()
	if _, errOut, code := runCLI(t, "tls", "ca", "create", "--dir", dir); code != ExitOK {
		t.Fatalf("ca create: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "tls", "ca", "create", "--dir", dir); code == ExitOK || !strings.Contains(errOut, "exists") {
		t.Fatalf("second ca create: exit %d: %s", code, errOut)
	}
	if _, errOut, code := runCLI(t, "tls", "cert", "create", "--dir", dir, "--role", "coordinator", "--name", "n1", "--host", "127.0.0.1,kiln-1"); code != ExitOK {
		t.Fatalf("cert create: exit %d: %s", code, errOut)
	}
	pair, id, err := tlsutil.LoadKeyPair(filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem"))
	if err != nil || id != (tlsutil.Identity{Role: tlsutil.RoleCoordinator, Name: "n1"}) {
		t.Fatalf("n1.pem: %v %v", id, err)
	}
	if len(pair.Leaf.IPAddresses) != 1 || len(pair.Leaf.DNSNames) != 1 {
		t.Fatalf("hosts: %v %v", pair.Leaf.IPAddresses, pair.Leaf.DNSNames)
	}
	if st, err := os.Stat(filepath.Join(dir, "n1-key.pem")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", st, err)
	}
	for _, bad := range [][]string{
		{"--role", "admin", "--name", "x"},
		{"--role", "agent", "--name", "../x"},
		{"--role", "coordinator", "--name", "n2"}, // no --host
		{"--role", "agent"},                       // no --name
	} {
		args := append([]string{"tls", "cert", "create", "--dir", dir}, bad...)
		if _, _, code := runCLI(t, args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", bad, code, ExitUsage)
		}
	}
	// A missing CA file is a clear usage error, not a dial failure.
	if _, errOut, code := runCLI(t, "--tls-ca", filepath.Join(dir, "missing.pem"), "builds"); code != ExitUsage || !strings.Contains(errOut, "missing.pem") {
		t.Fatalf("builds with a missing CA: exit %d: %s", code, errOut)
	}
}
