// Package membership runs the leader's autopilot (hashicorp/raft-autopilot,
// as in Consul): coordinators join as non-voters and are promoted to voters
// once they have caught up with the leader's log and stayed healthy for a
// stabilization period. A slow, unreachable or bogus joiner therefore never
// counts toward the quorum and cannot leave the cluster leaderless.
//
// The delegate here tells autopilot which servers exist (the Raft
// configuration) and how far each one is (its ClusterService.Status, asked
// over gRPC through the peer pool). Dead servers are never removed
// automatically: `kilnctl cluster leave` does that.
package membership

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	autopilot "github.com/hashicorp/raft-autopilot"
	"go.uber.org/zap"

	"github.com/kiln-ci/kiln/coordinator/peers"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/state"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Config tunes promotion.
type Config struct {
	// Stabilization is how long a non-voter must stay healthy before it
	// is promoted (default 2s).
	Stabilization time.Duration
	// LastContactThreshold is how long a member may go without hearing
	// from the leader and still count as healthy (default 2s).
	LastContactThreshold time.Duration
	// MaxTrailingLogs is how many entries a member may be behind the
	// leader's log and still count as healthy (default 256).
	MaxTrailingLogs uint64
	// Interval is how often the health is refreshed and promotions are
	// considered (default 500ms).
	Interval time.Duration
}

func (c *Config) defaults() {
	if c.Stabilization == 0 {
		c.Stabilization = 2 * time.Second
	}
	if c.LastContactThreshold == 0 {
		c.LastContactThreshold = 2 * time.Second
	}
	if c.MaxTrailingLogs == 0 {
		c.MaxTrailingLogs = 256
	}
	if c.Interval == 0 {
		c.Interval = 500 * time.Millisecond
	}
}

// statsTimeout bounds one member's status call.
const statsTimeout = time.Second

// Autopilot promotes caught-up non-voters while this node leads.
type Autopilot struct {
	cfg   Config
	self  string
	node  *raftnode.Node
	store *state.Store
	peers *peers.Pool
	log   *zap.Logger
	ap    *autopilot.Autopilot

	mu     sync.Mutex
	health map[string]bool
}

// New returns an autopilot for this node; Run drives it while leading.
func New(cfg Config, self string, node *raftnode.Node, store *state.Store, pool *peers.Pool, log *zap.Logger) *Autopilot {
	cfg.defaults()
	a := &Autopilot{cfg: cfg, self: self, node: node, store: store, peers: pool, log: log, health: map[string]bool{}}
	a.ap = node.NewAutopilot(a, autopilot.WithUpdateInterval(cfg.Interval), autopilot.WithReconcileInterval(cfg.Interval))
	return a
}

// Run runs autopilot until ctx ends (the end of this node's leadership).
func (a *Autopilot) Run(ctx context.Context) {
	a.ap.Start(ctx)
	<-ctx.Done()
	<-a.ap.Stop()
	a.mu.Lock()
	a.health = map[string]bool{}
	a.mu.Unlock()
}

// Healthy reports whether autopilot last saw the member as healthy. It is
// false for every member on a node that does not lead.
func (a *Autopilot) Healthy(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.health[id]
}

// AutopilotConfig implements autopilot.ApplicationIntegration.
func (a *Autopilot) AutopilotConfig() *autopilot.Config {
	return &autopilot.Config{
		CleanupDeadServers:      false,
		LastContactThreshold:    a.cfg.LastContactThreshold,
		MaxTrailingLogs:         a.cfg.MaxTrailingLogs,
		ServerStabilizationTime: a.cfg.Stabilization,
	}
}

// NotifyState implements autopilot.ApplicationIntegration: it keeps each
// member's health for cluster status.
func (a *Autopilot) NotifyState(st *autopilot.State) {
	health := map[string]bool{}
	for id, s := range st.Servers {
		health[string(id)] = s.Health.Healthy
	}
	a.mu.Lock()
	a.health = health
	a.mu.Unlock()
}

// KnownServers implements autopilot.ApplicationIntegration: every member of
// the Raft configuration, each eligible to vote.
func (a *Autopilot) KnownServers() map[raft.ServerID]*autopilot.Server {
	members, err := a.node.Members()
	if err != nil {
		a.log.Warn("autopilot: read raft configuration", zap.Error(err))
		return nil
	}
	leaderID, _ := a.node.Leader()
	out := make(map[raft.ServerID]*autopilot.Server, len(members))
	for _, m := range members {
		out[m.ID] = &autopilot.Server{
			ID:          m.ID,
			Name:        string(m.ID),
			Address:     m.Address,
			NodeStatus:  autopilot.NodeAlive,
			RaftVersion: raft.ProtocolVersionMax,
			IsLeader:    string(m.ID) == leaderID,
			NodeType:    autopilot.NodeVoter,
		}
	}
	return out
}

// FetchServerStats implements autopilot.ApplicationIntegration: this node's
// progress from Raft, the others' from their ClusterService.Status. A member
// that does not answer gets no stats and so counts as unhealthy.
func (a *Autopilot) FetchServerStats(ctx context.Context, servers map[raft.ServerID]*autopilot.Server) map[raft.ServerID]*autopilot.ServerStats {
	addrs := map[string]string{}
	for _, n := range a.store.Nodes() {
		addrs[n.GetId()] = n.GetGrpcAddr()
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		out = make(map[raft.ServerID]*autopilot.ServerStats, len(servers))
	)
	for id := range servers {
		if string(id) == a.self {
			p := a.node.Progress()
			mu.Lock()
			out[id] = &autopilot.ServerStats{LastContact: p.LastContact, LastTerm: p.LastLogTerm, LastIndex: p.LastLogIndex}
			mu.Unlock()
			continue
		}
		addr := addrs[string(id)]
		if addr == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := a.remoteStats(ctx, addr)
			if err != nil {
				a.log.Debug("autopilot: member status", zap.String("node", string(id)), zap.Error(err))
				return
			}
			mu.Lock()
			out[id] = st
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (a *Autopilot) remoteStats(ctx context.Context, addr string) (*autopilot.ServerStats, error) {
	conn, err := a.peers.Conn(addr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	resp, err := kilnv1.NewClusterServiceClient(conn).Status(ctx, &kilnv1.StatusRequest{})
	if err != nil {
		return nil, err
	}
	return &autopilot.ServerStats{
		LastContact: time.Duration(resp.GetLastContactMs()) * time.Millisecond,
		LastTerm:    resp.GetLastLogTerm(),
		LastIndex:   resp.GetLastLogIndex(),
	}, nil
}

// RemoveFailedServer implements autopilot.ApplicationIntegration. Kiln never
// removes members automatically (CleanupDeadServers is off); this only logs.
func (a *Autopilot) RemoveFailedServer(s *autopilot.Server) {
	a.log.Warn("autopilot reports a failed member; remove it with `kilnctl cluster leave` if it is gone for good", zap.String("node", string(s.ID)))
}
