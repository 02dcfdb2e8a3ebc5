package integration

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kiln-ci/kiln/internal/discovery"
	"github.com/kiln-ci/kiln/internal/discovery/etcdtest"
)

// TestEtcdDiscovery: coordinators given --etcd-endpoints register in a real
// etcd; kilnctl and an agent given only etcd:///kiln/coordinators find the
// cluster, follow the leader, and keep working after the leader is killed.
func TestEtcdDiscovery(t *testing.T) {
	ep := etcdtest.Start(t) // before the harness: its cleanup runs last
	t.Setenv(discovery.EnvEndpoints, ep)
	h := newHarness(t)
	h.coordArgs = []string{"--etcd-endpoints", ep}
	c := h.startCluster(3)
	target := []string{"etcd:///" + discovery.DefaultPrefix}

	var st clusterJSON
	eventually(t, 20*time.Second, func() error { // registration follows startup
		return h.ctlJSON(target, &st, "cluster", "status")
	})
	old := c.waitLeader(20 * time.Second)
	if st.Leader != old.id || len(st.Nodes) != 3 {
		t.Fatalf("cluster status through etcd: leader %q with %d nodes, want %s of 3", st.Leader, len(st.Nodes), old.id)
	}

	// The agent's only address is the etcd target; KILN_ETCD_ENDPOINTS is
	// in its environment.
	h.startProc("agent-e1", "kiln-agent",
		"--coordinators", target[0],
		"--name", "e1",
		"--labels", "pool=etcd",
		"--slots", strconv.Itoa(1),
		"--work-dir", filepath.Join(h.root, "work", "e1"),
		"--heartbeat", agentHeartbeat,
	)
	c.waitAgentStates(30*time.Second, map[string]string{"e1": "connected"})
	id := h.submit(target, "echo through-etcd", "--label", "pool=etcd")
	requirePassed(t, h.waitFinished(target, id, 30*time.Second), 0)

	// Kill the leader: its key stays until the lease lapses, so the
	// resolver may still offer it; clients must skip it and find the new
	// leader.
	old.kill9()
	newLeader := c.waitLeader(30 * time.Second)
	if newLeader == old {
		t.Fatalf("leader %s was killed but is still named", old.id)
	}
	eventually(t, 30*time.Second, func() error {
		return h.ctlJSON(target, &st, "cluster", "status")
	})
	if st.Leader != newLeader.id {
		t.Fatalf("cluster status through etcd names %q, want the new leader %s", st.Leader, newLeader.id)
	}
	c.waitAgentStates(30*time.Second, map[string]string{"e1": "connected"})
	id = h.submit(target, "echo after-failover", "--label", "pool=etcd")
	requirePassed(t, h.waitFinished(target, id, 30*time.Second), 0)
}
