// Package raftnode runs one coordinator's Raft member: the durable log
// (raft-wal), the file snapshot store, the TCP transport, bootstrap of a
// static initial cluster, and a typed Apply that encodes FSM commands and
// unwraps their results.
package raftnode

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/kiln-ci/kiln/coordinator/fsm"
	fsmv1 "github.com/kiln-ci/kiln/proto/kiln/fsm/v1"
)

// logCacheEntries is how many of the newest log entries stay in memory
// for replication. Most commands are a few hundred bytes; the biggest
// carry job output (a session's log batch: at most 256 chunks of 32 KiB
// from a default agent), so the cache is kept short: a follower that keeps
// up asks for the newest entries only.
const logCacheEntries = 128

// Config says how to run the Raft member.
type Config struct {
	// NodeID is this member's stable id (raft.ServerID).
	NodeID string
	// DataDir holds raft/wal and raft/snapshots.
	DataDir string
	// RaftAddr is the address the transport listens on and advertises.
	RaftAddr string
	// InitialCluster maps member ids to Raft addresses. When the node has no
	// state yet and this is non-empty, the cluster is bootstrapped with it
	// (every initial member does so with the same list). Empty means the
	// node waits to be added to a running cluster.
	InitialCluster map[string]string
	// HeartbeatTimeout and ElectionTimeout bound failure detection.
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is how many new log entries trigger a snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often the threshold is checked.
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot.
	TrailingLogs uint64
	// ApplyTimeout bounds how long an Apply waits to be enqueued.
	ApplyTimeout time.Duration
	// TLS, when set, runs the transport over mutual TLS between
	// coordinator certificates (nil: plain TCP).
	TLS *TLS
}

// Defaults fills zero fields with the defaults.
func (c *Config) Defaults() {
	if c.HeartbeatTimeout == 0 {
		c.HeartbeatTimeout = 500 * time.Millisecond
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = 500 * time.Millisecond
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 4096
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = 10 * time.Second
	}
}

// Node is a running Raft member. The raft handle stays inside this
// package: callers use the typed methods below.
type Node struct {
	raft      *raft.Raft
	cfg       Config
	log       *zap.Logger
	wal       *wal.WAL
	meta      *metadb.BoltMetaDB
	transport *raft.NetworkTransport
	hlog      hclog.Logger
}

// ErrDamagedState marks an Open failure caused by the member's own files
// (the Raft log, its metadata or the snapshots): restarting will not help.
var ErrDamagedState = errors.New("the raft state on disk cannot be opened")

// Open starts the Raft member with the given FSM. A log store or snapshot
// that cannot be read gives an error wrapping ErrDamagedState that names the
// data directory and how to recover the member, never a panic: the storage
// libraries panic on some damaged files, and a node that panics on start
// would be restarted into the same panic forever by its supervisor.
func Open(cfg Config, f raft.FSM, log *zap.Logger) (n *Node, err error) {
	cfg.Defaults()
	raftDir := filepath.Join(cfg.DataDir, "raft")
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", ErrDamagedState, p)
		}
		if errors.Is(err, ErrDamagedState) {
			err = fmt.Errorf("%w\n%s", err, recoveryHint(raftDir))
		}
	}()
	return openNode(cfg, f, log)
}

// recoveryHint tells the operator how to bring back a member whose raft
// directory cannot be opened.
func recoveryHint(raftDir string) string {
	return fmt.Sprintf("The Raft state in %s is damaged. To recover this member: stop it, move %s aside "+
		"(keep it for a bug report), and start it again with an empty data directory and --join ADDR of a running "+
		"coordinator; it copies the state back from the other members, which keep every committed entry. "+
		"For a single-member cluster, restore the data directory from a backup.", raftDir, raftDir)
}

func openNode(cfg Config, f raft.FSM, log *zap.Logger) (*Node, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("raft: node id is empty")
	}
	walDir := filepath.Join(cfg.DataDir, "raft", "wal")
	snapDir := filepath.Join(cfg.DataDir, "raft")
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return nil, fmt.Errorf("raft: create %s: %w", walDir, err)
	}
	hlog := newHCLogger(log.Named("raft"))
	// The node owns the metadata database so that a failed Open releases
	// its file lock; raft-wal v0.4.1's Close closes it too, and a second
	// Close is a no-op.
	meta := &metadb.BoltMetaDB{}
	logStore, err := wal.Open(walDir, wal.WithSegmentSize(16<<20), wal.WithLogger(hlog), wal.WithMetaStore(meta))
	if err != nil {
		_ = meta.Close()
		return nil, fmt.Errorf("%w: open log store %s: %w", ErrDamagedState, walDir, err)
	}
	closeLog := func() {
		_ = logStore.Close()
		_ = meta.Close()
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(snapDir, 2, hlog)
	if err != nil {
		closeLog()
		return nil, fmt.Errorf("%w: open snapshot store %s: %w", ErrDamagedState, snapDir, err)
	}
	// With port 0 the transport advertises the port it bound; a host name
	// is advertised as written (see hostAddr), an IP as resolved.
	advertise := advertiseName(cfg.RaftAddr)
	if _, port, _ := net.SplitHostPort(cfg.RaftAddr); port != "0" && advertise == nil {
		tcpAddr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
		if err != nil {
			closeLog()
			return nil, fmt.Errorf("raft: resolve raft address %q: %w", cfg.RaftAddr, err)
		}
		advertise = tcpAddr
	}
	transport, err := newTransport(cfg, advertise, hlog)
	if err != nil {
		closeLog()
		return nil, fmt.Errorf("raft: listen on %s: %w", cfg.RaftAddr, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	rc.CommitTimeout = 5 * time.Millisecond
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = 512
	rc.BatchApplyCh = true

	existing, err := raft.HasExistingState(logStore, logStore, snaps)
	if err != nil {
		transport.Close()
		closeLog()
		return nil, fmt.Errorf("%w: inspect existing state: %w", ErrDamagedState, err)
	}
	if !existing && len(cfg.InitialCluster) > 0 {
		var servers []raft.Server
		for id, addr := range cfg.InitialCluster {
			if id == cfg.NodeID {
				addr = string(transport.LocalAddr())
			}
			servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(addr), Suffrage: raft.Voter})
		}
		if err := raft.BootstrapCluster(rc, logStore, logStore, snaps, transport, raft.Configuration{Servers: servers}); err != nil {
			transport.Close()
			closeLog()
			return nil, fmt.Errorf("raft: bootstrap: %w", err)
		}
		log.Info("bootstrapped raft cluster", zap.Int("members", len(servers)))
	}
	// The newest entries stay in memory: the leader sends them to its
	// followers right after writing them, and without the cache each
	// AppendEntries re-reads them from the WAL (a pread per entry, 8% of
	// the leader's CPU under load before it was added).
	cached, err := raft.NewLogCache(logCacheEntries, logStore)
	if err != nil {
		transport.Close()
		closeLog()
		return nil, fmt.Errorf("raft: log cache: %w", err)
	}
	r, err := raft.NewRaft(rc, f, cached, logStore, snaps, transport)
	if err != nil {
		transport.Close()
		closeLog()
		// NewRaft fails only on what it reads back: the log, the snapshots
		// or the stable store.
		return nil, fmt.Errorf("%w: start raft: %w", ErrDamagedState, err)
	}
	return &Node{raft: r, hlog: hlog, cfg: cfg, log: log, wal: logStore, meta: meta, transport: transport}, nil
}

// newTransport is the plain TCP transport, or the mutual TLS one when
// cfg.TLS is set.
func newTransport(cfg Config, advertise net.Addr, hlog hclog.Logger) (*raft.NetworkTransport, error) {
	if cfg.TLS == nil {
		if _, named := advertise.(hostAddr); !named {
			return raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, 5, 5*time.Second, hlog)
		}
		layer, err := newTCPStreamLayer(cfg.RaftAddr, advertise)
		if err != nil {
			return nil, err
		}
		return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: layer, MaxPool: 5, Timeout: 5 * time.Second, Logger: hlog,
		}), nil
	}
	layer, err := newTLSStreamLayer(cfg.RaftAddr, advertise, *cfg.TLS)
	if err != nil {
		return nil, err
	}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: layer, MaxPool: 5, Timeout: 5 * time.Second, Logger: hlog,
	}), nil
}

// Close stops the member and releases its files and port.
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	if cerr := n.transport.Close(); err == nil {
		err = cerr
	}
	if cerr := n.wal.Close(); err == nil {
		err = cerr
	}
	if cerr := n.meta.Close(); err == nil {
		err = cerr
	}
	return err
}

// IsLeader reports whether this member is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// ErrOutcomeUnknown wraps failures after which the command may or may not
// have been committed (leadership lost mid-apply). Clients retry with the
// same request id.
var ErrOutcomeUnknown = errors.New("outcome unknown: leadership changed while the command was being committed")

// ErrNotLeader is returned when the command was refused because this member
// is not the leader; nothing was committed.
var ErrNotLeader = errors.New("not the leader")

// Pending is a command handed to Raft whose result is not known yet.
type Pending struct {
	f raft.ApplyFuture
}

// NewPending wraps a Raft apply future. ApplyAsync uses it; tests use it to
// build fake appliers whose futures they control.
func NewPending(f raft.ApplyFuture) Pending { return Pending{f: f} }

// Wait blocks until the command is applied (or failed) and returns the
// FSM's result. The FSM's business rejection is returned as an error too.
func (p Pending) Wait() (*fsm.Result, error) {
	if err := p.f.Error(); err != nil {
		return nil, mapApplyErr(err)
	}
	res, ok := p.f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("raft: unexpected apply response %T", p.f.Response())
	}
	return res, res.Err
}

// ApplyAsync hands a command to Raft without waiting; many pending applies
// are written to disk in one batch.
func (n *Node) ApplyAsync(t fsmv1.CommandType, msg proto.Message) (Pending, error) {
	data, err := fsm.Encode(t, msg)
	if err != nil {
		return Pending{}, fmt.Errorf("encode %s: %w", t, err)
	}
	return NewPending(n.raft.Apply(data, n.cfg.ApplyTimeout)), nil
}

// Apply commits a command and returns the FSM's result. The context bounds
// the wait; an expired context gives ErrOutcomeUnknown since the command may
// still commit.
func (n *Node) Apply(ctx context.Context, t fsmv1.CommandType, msg proto.Message) (*fsm.Result, error) {
	p, err := n.ApplyAsync(t, msg)
	if err != nil {
		return nil, err
	}
	return p.WaitCtx(ctx)
}

// WaitCtx is Wait bounded by ctx: an expired context gives
// ErrOutcomeUnknown since the command may still commit.
func (p Pending) WaitCtx(ctx context.Context) (*fsm.Result, error) {
	type out struct {
		res *fsm.Result
		err error
	}
	done := make(chan out, 1)
	// The waiter ends when Raft answers. (Raft does not answer an apply
	// still queued when the node shuts down; that waiter lives until exit.)
	go func() {
		r, e := p.Wait()
		done <- out{r, e}
	}()
	select {
	case o := <-done:
		return o.res, o.err
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %w", ErrOutcomeUnknown, ctx.Err())
	}
}

func mapApplyErr(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrRaftShutdown), errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrAbortedByRestore):
		return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
	}
	return fmt.Errorf("raft apply: %w", err)
}

// Barrier waits until every entry committed before it is applied locally.
func (n *Node) Barrier(ctx context.Context) error {
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := n.raft.Barrier(timeout).Error(); err != nil {
		return mapApplyErr(err)
	}
	return nil
}

// Leader returns the leader's id and Raft address as this member sees them.
func (n *Node) Leader() (id, raftAddr string) {
	addr, sid := n.raft.LeaderWithID()
	return string(sid), string(addr)
}

// Members returns the current Raft configuration.
func (n *Node) Members() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// AddVoter adds (or re-addresses) a voting member. Leader only.
func (n *Node) AddVoter(id, raftAddr string) error {
	if err := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, 30*time.Second).Error(); err != nil {
		return mapApplyErr(err)
	}
	return nil
}

// RemoveServer removes a member. Leader only.
func (n *Node) RemoveServer(id string) error {
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, 30*time.Second).Error(); err != nil {
		return mapApplyErr(err)
	}
	return nil
}

// RaftAddr is the address this member's transport advertises.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// Health is what a monitoring scrape needs to know of this member's Raft
// state (coordinator/metrics).
type Health struct {
	// Leader reports whether this member leads.
	Leader bool
	// LastContact is when this member last heard from the leader (zero:
	// never, or this member is the leader).
	LastContact time.Time
	// Term, LastLogIndex, CommitIndex and AppliedIndex as Raft reports
	// them.
	Term, LastLogIndex, CommitIndex, AppliedIndex uint64
}

// Health returns the member's Raft state for metrics.
func (n *Node) Health() Health {
	st := n.raft.Stats()
	num := func(k string) uint64 {
		v, _ := strconv.ParseUint(st[k], 10, 64)
		return v
	}
	h := Health{
		Leader:       n.raft.State() == raft.Leader,
		Term:         num("term"),
		LastLogIndex: num("last_log_index"),
		CommitIndex:  num("commit_index"),
		AppliedIndex: n.raft.AppliedIndex(),
	}
	if !h.Leader {
		h.LastContact = n.raft.LastContact()
	}
	return h
}
