package raftnode

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestAdvertiseName(t *testing.T) {
	for addr, want := range map[string]string{
		"n1:7071":                      "n1:7071",
		"kiln-0.kiln-coordinator:7071": "kiln-0.kiln-coordinator:7071",
		"127.0.0.1:7071":               "",
		"[::1]:7071":                   "",
		"n1:0":                         "",
		":7071":                        "",
		"no-port":                      "",
	} {
		got := ""
		if a := advertiseName(addr); a != nil {
			got = a.String()
		}
		if got != want {
			t.Errorf("advertiseName(%q) = %q, want %q", addr, got, want)
		}
	}
}

// Members given by host name are advertised and stored by name, and they
// elect a leader and replicate over connections dialed by name.
func TestNamedRaftAddresses(t *testing.T) {
	if _, err := net.LookupHost("localhost"); err != nil {
		t.Skipf("localhost does not resolve: %v", err)
	}
	ids := []string{"n1", "n2", "n3"}
	addrs := map[string]string{}
	for _, id := range ids {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[id] = fmt.Sprintf("localhost:%d", l.Addr().(*net.TCPAddr).Port)
		_ = l.Close()
	}
	var nodes []*Node
	defer func() {
		for _, n := range nodes {
			_ = n.Close()
		}
	}()
	for _, id := range ids {
		cfg := testConfig(t.TempDir(), true)
		cfg.NodeID, cfg.RaftAddr, cfg.InitialCluster = id, addrs[id], addrs
		n, _, _ := open(t, cfg)
		nodes = append(nodes, n)
		if got := n.RaftAddr(); got != addrs[id] {
			t.Fatalf("%s advertises %q, want %q", id, got, addrs[id])
		}
	}
	var leader *Node
	deadline := time.Now().Add(15 * time.Second)
	for leader == nil {
		for _, n := range nodes {
			if n.IsLeader() {
				leader = n
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	submit(t, leader, 1)
	members, err := leader.Members()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range members {
		got = append(got, string(m.ID)+"="+string(m.Address))
	}
	sort.Strings(got)
	want := []string{"n1=" + addrs["n1"], "n2=" + addrs["n2"], "n3=" + addrs["n3"]}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("members %v, want %v", got, want)
	}
}
