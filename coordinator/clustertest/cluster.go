// Package clustertest runs coordinators and agents in one process, on
// loopback, with real Raft (durable log in a temp dir) and real gRPC, for
// fast multi-node tests. Everything it starts is stopped by t.Cleanup.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/kiln-ci/kiln/agent"
	"github.com/kiln-ci/kiln/coordinator"
	"github.com/kiln-ci/kiln/coordinator/blobstore/s3store"
	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
	"google.golang.org/grpc"
)

// Options tune a test cluster.
type Options struct {
	// LeaseTTL of agents; default 2s.
	LeaseTTL time.Duration
	// SnapshotThreshold; default the coordinator's.
	SnapshotThreshold uint64
	// ArtifactRetention is the cluster default retention; default the
	// coordinator's (30d). Negative means 0 (keep forever).
	ArtifactRetention time.Duration
	// BlobGCGrace; default the coordinator's (1h).
	BlobGCGrace time.Duration
	// BuildRetention is how long finished builds are kept; default the
	// coordinator's (90d).
	BuildRetention time.Duration
	// MaxLogBytes per job attempt; default the coordinator's (1 GiB).
	MaxLogBytes int64
	// S3, when set, makes every coordinator use this S3 bucket as its
	// blob store (--blob-store s3) instead of its local disk.
	S3 *s3store.Config
	// TLS, when set, runs the cluster over TLS (see TLSOptions); agents
	// started with StartAgent get agent certificates, Client a client one.
	TLS *TLSOptions
	// ACL starts every coordinator with --acl and a shared secrets key
	// file (written by Start); SecretsKey alone (32 bytes) turns on
	// secrets without ACLs.
	ACL        bool
	SecretsKey []byte
	// HTTP serves /metrics on a free loopback port of every coordinator
	// (Node.C.HTTPAddr()).
	HTTP bool
}

// Cluster is a set of in-process coordinators and agents.
type Cluster struct {
	t      testing.TB
	opts   Options
	log    *zap.Logger
	mu     sync.Mutex
	Nodes  []*Node
	Agents []*Agent
	// pki is the TLS material (nil without Options.TLS).
	pki *pki
	// AgentToken is given to agents started after it is set (--acl).
	AgentToken string
	keyFile    string
}

// Node is one in-process coordinator.
type Node struct {
	ID       string
	DataDir  string
	GRPCAddr string
	RaftAddr string
	C        *coordinator.Coordinator
	cancel   context.CancelFunc
	done     chan error
}

// Agent is one in-process agent.
type Agent struct {
	Name string
	// WorkDir holds the agent's workspaces.
	WorkDir string
	cancel  context.CancelFunc
	done    chan error
	A       *agent.Agent
}

// Start runs n coordinators: the first bootstraps, the others join it.
func Start(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	if opts.LeaseTTL == 0 {
		opts.LeaseTTL = 2 * time.Second
	}
	c := &Cluster{t: t, opts: opts, log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))}
	base := t.TempDir()
	// Registered after TempDir so it runs first: nodes stop before their
	// data dirs are removed (a running node may still write, e.g. its log
	// catch-up).
	t.Cleanup(c.stopAll)
	if opts.TLS != nil {
		p, err := newPKI(filepath.Join(base, "pki"))
		if err != nil {
			t.Fatalf("test CA: %v", err)
		}
		c.pki = p
	}
	if opts.ACL && opts.SecretsKey == nil {
		opts.SecretsKey = []byte("0123456789abcdef0123456789abcdef")
		c.opts = opts
	}
	if opts.SecretsKey != nil {
		c.keyFile = filepath.Join(base, "cluster.key")
		if err := os.WriteFile(c.keyFile, opts.SecretsKey, 0o600); err != nil {
			t.Fatalf("write key file: %v", err)
		}
	}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("n%d", i)
		cfg := c.config(id, filepath.Join(base, id), "127.0.0.1:0", "127.0.0.1:0")
		if i == 1 {
			cfg.InitialCluster = map[string]string{id: "127.0.0.1:0"}
		} else {
			cfg.Join = []string{c.Nodes[0].GRPCAddr}
		}
		c.startNode(id, cfg)
	}
	c.WaitMembers(n)
	return c
}

func (c *Cluster) config(id, dir, grpcAddr, raftAddr string) coordinator.Config {
	cfg := coordinator.NewConfig()
	cfg.NodeID = id
	cfg.DataDir = dir
	cfg.GRPCAddr = grpcAddr
	cfg.RaftAddr = raftAddr
	cfg.LeaseTTL = c.opts.LeaseTTL
	cfg.HeartbeatInterval = c.opts.LeaseTTL / 4
	cfg.RaftHeartbeatTimeout = 300 * time.Millisecond
	cfg.RaftElectionTimeout = 300 * time.Millisecond
	if c.opts.SnapshotThreshold > 0 {
		cfg.SnapshotThreshold = c.opts.SnapshotThreshold
	}
	cfg.BlobSyncInterval = 200 * time.Millisecond
	// Test repositories are file:// URLs and git daemons on loopback.
	cfg.GitAllow = gitsrc.DevAllow
	cfg.Autopilot.Stabilization = 300 * time.Millisecond
	cfg.Autopilot.Interval = 100 * time.Millisecond
	cfg.ExpiryInterval = 100 * time.Millisecond
	cfg.BlobGCInterval = 200 * time.Millisecond
	switch {
	case c.opts.ArtifactRetention > 0:
		cfg.ArtifactRetention = c.opts.ArtifactRetention
	case c.opts.ArtifactRetention < 0:
		cfg.ArtifactRetention = 0
	}
	if c.opts.BlobGCGrace > 0 {
		cfg.BlobGCGrace = c.opts.BlobGCGrace
	}
	if c.opts.HTTP {
		cfg.HTTPAddr = "127.0.0.1:0"
	}
	if c.opts.BuildRetention > 0 {
		cfg.BuildRetention = c.opts.BuildRetention
	}
	if c.opts.MaxLogBytes > 0 {
		cfg.MaxLogBytes = c.opts.MaxLogBytes
	}
	cfg.ACL = c.opts.ACL
	cfg.SecretsKeyFile = c.keyFile
	if c.opts.S3 != nil {
		cfg.BlobStore = coordinator.BlobStoreS3
		cfg.S3 = *c.opts.S3
	}
	if c.pki != nil {
		files, err := c.pki.files(tlsutil.RoleCoordinator, id)
		if err != nil {
			c.t.Fatalf("coordinator certificate: %v", err)
		}
		cfg.TLS = files
		cfg.TLSCAKey = filepath.Join(c.pki.dir, tlsutil.CAKeyFile)
		cfg.JoinTokens = c.opts.TLS.JoinTokens
		cfg.AgentCertValidity = c.opts.TLS.AgentCertValidity
	}
	return cfg
}

func (c *Cluster) startNode(id string, cfg coordinator.Config) *Node {
	c.t.Helper()
	co, err := coordinator.New(cfg, c.log.Named(id))
	if err != nil {
		c.t.Fatalf("start coordinator %s: %v", id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{ID: id, DataDir: cfg.DataDir, GRPCAddr: co.GRPCAddr(), RaftAddr: co.RaftAddr(), C: co, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- co.Run(ctx) }()
	c.mu.Lock()
	replaced := false
	for i, old := range c.Nodes {
		if old.ID == id {
			c.Nodes[i] = n
			replaced = true
		}
	}
	if !replaced {
		c.Nodes = append(c.Nodes, n)
	}
	c.mu.Unlock()
	return n
}

// Stop stops a coordinator (like a crash, its data dir stays).
func (c *Cluster) Stop(n *Node) {
	c.t.Helper()
	if n.cancel == nil {
		return
	}
	n.cancel()
	if err := <-n.done; err != nil && !errors.Is(err, context.Canceled) {
		c.t.Logf("coordinator %s stopped with %v", n.ID, err)
	}
	n.cancel = nil
}

// Kill crashes a coordinator: Raft and connections drop at once, with no
// leadership transfer (the in-process stand-in for kill -9).
func (c *Cluster) Kill(n *Node) {
	c.t.Helper()
	if n.cancel == nil {
		return
	}
	n.C.Crash()
	<-n.done
	n.cancel()
	n.cancel = nil
}

// Restart starts a stopped coordinator again on the same addresses and data.
func (c *Cluster) Restart(n *Node) *Node {
	c.t.Helper()
	cfg := c.config(n.ID, n.DataDir, n.GRPCAddr, n.RaftAddr)
	cfg.Join = c.Addrs()
	return c.startNode(n.ID, cfg)
}

// Running reports whether a node is running.
func (n *Node) Running() bool { return n.cancel != nil }

// Addrs are the gRPC addresses of every node.
func (c *Cluster) Addrs() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.GRPCAddr)
	}
	return out
}

// Leader waits for a leader whose scheduler runs and returns it.
func (c *Cluster) Leader() *Node {
	c.t.Helper()
	var found *Node
	Eventually(c.t, 15*time.Second, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, n := range c.Nodes {
			if n.Running() && n.C.IsLeader() {
				found = n
				return true
			}
		}
		return false
	}, "a leader is elected")
	return found
}

// Followers returns the running nodes that are not the leader.
func (c *Cluster) Followers() []*Node {
	l := c.Leader()
	var out []*Node
	for _, n := range c.Nodes {
		if n != l && n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// WaitMembers waits until every running node knows n members with gRPC addresses.
func (c *Cluster) WaitMembers(n int) {
	c.t.Helper()
	Eventually(c.t, 20*time.Second, func() bool {
		for _, node := range c.Nodes {
			if !node.Running() {
				continue
			}
			nodes := node.C.Store().Nodes()
			if len(nodes) != n {
				return false
			}
			for _, x := range nodes {
				if x.GetGrpcAddr() == "" {
					return false
				}
			}
			// Joiners start as non-voters; autopilot promotes them.
			if voters, err := node.C.Voters(); err != nil || voters != n {
				return false
			}
		}
		return true
	}, fmt.Sprintf("%d members known and voting", n))
}

// StartAgent runs an in-process agent connected to every coordinator.
func (c *Cluster) StartAgent(name string, labels map[string]string, slots int) *Agent {
	c.t.Helper()
	return c.StartAgentConfig(c.AgentConfig(name, labels, slots))
}

// AgentConfig is the configuration StartAgent uses; with TLS the agent
// gets a certificate for name.
func (c *Cluster) AgentConfig(name string, labels map[string]string, slots int) agent.Config {
	c.t.Helper()
	cfg := agent.NewConfig()
	cfg.Coordinators = c.Addrs()
	cfg.Name = name
	cfg.Labels = labels
	cfg.Slots = slots
	cfg.WorkDir = filepath.Join(c.t.TempDir(), name)
	if c.pki != nil {
		files, err := c.pki.files(tlsutil.RoleAgent, name)
		if err != nil {
			c.t.Fatalf("agent certificate: %v", err)
		}
		cfg.TLS = files
	}
	cfg.Token = c.AgentToken
	return cfg
}

// StartAgentConfig runs an in-process agent with cfg.
func (c *Cluster) StartAgentConfig(cfg agent.Config) *Agent {
	c.t.Helper()
	name := cfg.Name
	a, err := agent.New(cfg, c.log.Named("agent-"+name))
	if err != nil {
		c.t.Fatalf("start agent %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ag := &Agent{Name: name, WorkDir: cfg.WorkDir, cancel: cancel, done: make(chan error, 1), A: a}
	go func() { ag.done <- a.Run(ctx) }()
	c.mu.Lock()
	c.Agents = append(c.Agents, ag)
	c.mu.Unlock()
	return ag
}

// StopAgent stops an agent hard (its jobs are killed).
func (c *Cluster) StopAgent(a *Agent) {
	if a.cancel == nil {
		return
	}
	a.cancel()
	<-a.done
	a.cancel = nil
}

func (c *Cluster) stopAll() {
	for _, a := range c.Agents {
		c.StopAgent(a)
	}
	for _, n := range c.Nodes {
		c.Stop(n)
	}
}

// Client returns a leader-finding client over every node, closed at cleanup.
func (c *Cluster) Client() *client.Client {
	c.t.Helper()
	var opts []client.Option
	if c.pki != nil {
		creds, err := c.pki.clientCreds()
		if err != nil {
			c.t.Fatalf("client certificate: %v", err)
		}
		opts = append(opts, client.WithCredentials(creds))
	}
	cl, err := client.New(c.Addrs(), c.log.Named("client"), opts...)
	if err != nil {
		c.t.Fatalf("client: %v", err)
	}
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// ClientWithToken is Client sending token as its bearer credential.
func (c *Cluster) ClientWithToken(token string) *client.Client {
	c.t.Helper()
	cl, err := client.New(c.Addrs(), c.log.Named("client"), client.WithToken(token))
	if err != nil {
		c.t.Fatalf("client: %v", err)
	}
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// Control runs fn with a ControlService client through the leader-finding client.
func Control(ctx context.Context, cl *client.Client, fn func(context.Context, kilnv1.ControlServiceClient) error) error {
	return cl.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		return fn(ctx, kilnv1.NewControlServiceClient(conn))
	})
}

// Eventually polls cond until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
