package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// deploymentJSON is the part of `kilnctl deployments ENV -o json` checked
// here.
type deploymentJSON struct {
	ID      string `json:"id"`
	Build   string `json:"build"`
	Outcome string `json:"outcome"`
	Reason  string `json:"reason"`
	Hosts   []struct {
		Agent  string `json:"agent"`
		Phase  string `json:"phase"`
		Result string `json:"result"`
	} `json:"hosts"`
}

// TestRollingDeployRollbackWithRealProcesses: three real agents labelled
// env=staging; the second fails its health check. The rollout stops, the
// first two hosts are rolled back (newest first), the third is never
// touched, and `kilnctl deployments staging -o json` says rolled_back with
// each host's result.
func TestRollingDeployRollbackWithRealProcesses(t *testing.T) {
	h := newHarness(t)
	c := h.startCluster(3)
	for _, n := range []string{"s1", "s2", "s3"} {
		c.startAgent(n, 1, "env=staging")
	}
	c.waitAgentStates(30*time.Second, map[string]string{"s1": "connected", "s2": "connected", "s3": "connected"})
	marks := filepath.Join(h.root, "marks")
	if err := os.MkdirAll(marks, 0o755); err != nil {
		t.Fatal(err)
	}
	rec := fmt.Sprintf(`echo "$KILN_AGENT_NAME $KILN_DEPLOY_ACTION" >> %s/seq`, marks)
	file := filepath.Join(h.root, "deploy.yaml")
	spec := fmt.Sprintf(`steps:
  - key: staging
    deploy:
      environment: staging
      strategy: rolling
      batch: 1
      commands: [%q]
      health: ['test "$KILN_AGENT_NAME" != s2']
      rollback: [%q]
`, rec, rec)
	if err := os.WriteFile(file, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	addrs := c.addrs()
	id := h.runFile(addrs, file)
	if b := h.waitFinished(addrs, id, 30*time.Second); b.State != "failed" {
		t.Fatalf("build %s is %s (%s), want failed", id, b.State, b.Reason)
	}
	data, err := os.ReadFile(filepath.Join(marks, "seq"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Split(strings.TrimSpace(string(data)), "\n"), []string{"s1 deploy", "s2 deploy", "s2 rollback", "s1 rollback"}; !slices.Equal(got, want) {
		t.Fatalf("actions %q, want %q (s3 never touched)", got, want)
	}
	r := h.ctl(addrs, "deployments", "staging", "-o", "json")
	if r.code != 0 {
		t.Fatalf("%s", r)
	}
	var ds []deploymentJSON
	if err := json.Unmarshal([]byte(r.stdout), &ds); err != nil {
		t.Fatalf("%v: %s", err, r.stdout)
	}
	if len(ds) != 1 || ds[0].Build != id || ds[0].Outcome != "rolled_back" || len(ds[0].Hosts) != 3 {
		t.Fatalf("deployments: %s", r.stdout)
	}
	want := map[string]string{"s1": "rolled_back", "s2": "rolled_back", "s3": "pending"}
	for _, hst := range ds[0].Hosts {
		if want[hst.Agent] != hst.Phase {
			t.Fatalf("host %s is %s, want %s: %s", hst.Agent, hst.Phase, want[hst.Agent], r.stdout)
		}
	}
	// The table form names the outcome too.
	if r := h.ctl(addrs, "deployments", "staging"); r.code != 0 || !strings.Contains(r.stdout, "rolled_back") || !strings.Contains(r.stdout, "s3:pending") {
		t.Fatalf("table: %s", r)
	}
	// Nothing succeeded yet: no version to roll back to.
	if r := h.ctl(addrs, "rollback", "staging"); r.code != 1 || !strings.Contains(r.stderr, "no succeeded deployment") {
		t.Fatalf("rollback without a succeeded deployment: %s", r)
	}
}
