package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A 3-node cluster of real processes started with --acl: anonymous
// clients are refused on every node, the first admin token comes from
// `kilnctl token bootstrap` (once), an agent with an agent token runs a
// build a developer token submits, a viewer token may not submit, and the
// audit log names the tokens.
func TestACLClusterOfProcesses(t *testing.T) {
	h := newHarness(t)
	key := filepath.Join(h.root, "cluster.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freePorts(t, 6)
	var initial, addrs []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("n%d=127.0.0.1:%d", i+1, ports[2*i+1]))
		addrs = append(addrs, fmt.Sprintf("127.0.0.1:%d", ports[2*i]))
	}
	for i := range 3 {
		id := fmt.Sprintf("n%d", i+1)
		h.startProc("coordinator-"+id, "kiln-coordinator", "--node-id", id,
			"--data-dir", filepath.Join(h.root, "data", id), "--grpc-addr", addrs[i],
			"--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]), "--initial-cluster", strings.Join(initial, ","),
			"--lease-ttl", leaseTTL, "--heartbeat-interval", heartbeatInterval,
			"--acl", "--secrets-key-file", key)
	}
	// The admin token, once a leader is up.
	var admin string
	eventually(t, 30*time.Second, func() error {
		r := h.ctl(addrs, "token", "bootstrap")
		if r.code != 0 {
			return fmt.Errorf("bootstrap: %s", r)
		}
		admin = strings.TrimSpace(r.stdout)
		return nil
	})
	if r := h.ctl(addrs, "token", "bootstrap"); r.code != 1 || !strings.Contains(r.stderr, "already has tokens") {
		t.Fatalf("second bootstrap: %s", r)
	}
	// Anonymous clients are refused by every coordinator.
	for _, a := range addrs {
		r := h.ctl([]string{a}, "builds")
		if r.code != 1 || !strings.Contains(r.stderr, "requires a token") || !strings.Contains(r.stderr, "KILN_TOKEN") {
			t.Fatalf("anonymous on %s: %s", a, r)
		}
	}
	as := func(tok string) []string { return []string{"KILN_TOKEN=" + tok} }
	create := func(name, role string) string {
		t.Helper()
		r := h.ctlEnv(addrs, as(admin), "token", "create", "--name", name, "--role", role)
		if r.code != 0 {
			t.Fatalf("create %s: %s", name, r)
		}
		return strings.TrimSpace(r.stdout)
	}
	dev, viewer, agentTok := create("dev", "developer"), create("viewer", "viewer"), create("hosts", "agent")

	h.startProc("agent-a1", "kiln-agent", "--coordinators", strings.Join(addrs, ","), "--name", "a1",
		"--work-dir", filepath.Join(h.root, "work", "a1"), "--heartbeat", agentHeartbeat, "--token", agentTok)

	if r := h.ctlEnv(addrs, as(viewer), "run", "--", "true"); r.code != 1 || !strings.Contains(r.stderr, "needs role developer") {
		t.Fatalf("viewer submitting: %s", r)
	}
	r := h.ctlEnv(addrs, append(as(dev), "USER=mallory"), "run", "--wait", "--", "echo", "ok")
	if r.code != 0 || r.stdout != "ok\n" {
		t.Fatalf("developer run: %s", r)
	}
	id := submittedID(t, r)
	r = h.ctlEnv(addrs, as(viewer), "status", id, "-o", "json")
	var b struct {
		Submitter string `json:"submitter"`
		State     string `json:"state"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &b) != nil || b.Submitter != "dev" || b.State != "passed" {
		t.Fatalf("status as viewer: %s (%+v)", r, b)
	}
	r = h.ctlEnv(addrs, as(admin), "audit", "-o", "json")
	var recs []struct {
		Who, Method, What, Addr, Code string
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &recs) != nil {
		t.Fatalf("audit: %s", r)
	}
	found := false
	for _, rec := range recs {
		if rec.Who == "dev" && rec.Method == "SubmitBuild" && strings.Contains(rec.What, "build="+id) && rec.Addr != "" && rec.Code == "OK" {
			found = true
		}
	}
	if !found {
		t.Fatalf("audit has no SubmitBuild of build %s by dev: %s", id, r.stdout)
	}
	if r := h.ctlEnv(addrs, as(dev), "audit"); r.code != 1 || !strings.Contains(r.stderr, "needs role admin") {
		t.Fatalf("developer reading the audit log: %s", r)
	}
}
