package coordinator

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/authn"
)

// Every method the coordinator's gRPC server serves must have a row in the
// ACL table (a missing one is refused to everyone, which would break the
// feature silently), and the table must not list methods nobody serves.
func TestEveryServedMethodIsInTheACLTable(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := NewConfig()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.GRPCAddr = "127.0.0.1:0"
	cfg.RaftAddr = "127.0.0.1:0"
	cfg.InitialCluster = map[string]string{cfg.NodeID: "127.0.0.1:0"}
	cfg.ACL = true
	cfg.SecretsKeyFile = key
	c, err := New(cfg, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.grpc.Stop()
		c.lis.Close()
		c.blobs.Close()
		c.peers.Close()
		_ = c.node.Close()
	})
	served := map[string]bool{}
	for svc, info := range c.grpc.GetServiceInfo() {
		for _, m := range info.Methods {
			served["/"+svc+"/"+m.Name] = true
		}
	}
	var missing, stale []string
	for m := range served {
		if _, ok := acl.Methods[m]; !ok {
			missing = append(missing, m)
		}
	}
	for m := range acl.Methods {
		if !served[m] {
			stale = append(stale, m)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	if len(missing) > 0 {
		t.Errorf("served but missing from acl.Methods (refused to everyone): %v", missing)
	}
	if len(stale) > 0 {
		t.Errorf("in acl.Methods but not served: %v", stale)
	}
	// With TLS the certificate table runs first: every served method
	// needs a row there too, or TLS alone would refuse it to everyone.
	if err := authn.Check(c.grpc.GetServiceInfo()); err != nil {
		t.Errorf("certificate table: %v", err)
	}
	if len(served) < 30 {
		t.Fatalf("only %d methods served; the test does not see the real server", len(served))
	}
}

// --acl without the key file is refused with the flag named.
func TestACLNeedsKeyFile(t *testing.T) {
	cfg := NewConfig()
	cfg.InitialCluster = map[string]string{cfg.NodeID: "127.0.0.1:0"}
	cfg.ACL = true
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "secrets-key-file") {
		t.Fatalf("Validate = %v", err)
	}
}
