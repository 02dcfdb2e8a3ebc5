// Package coordinator assembles one Kiln coordinator: a Raft member
// (coordinator/raftnode) replicating the FSM (coordinator/fsm) into the state
// store (coordinator/state), the blob catch-up loop every node runs
// (coordinator/blobsync) and blob garbage collector (coordinator/blobgc),
// the job log store and its replication and catch-up (coordinator/logstore,
// coordinator/logrepl),
// the leader-only scheduler (coordinator/scheduler), branch watcher
// (coordinator/watcher) and artifact expiry timer (coordinator/retention),
// and the
// gRPC services (coordinator/api) with health checking and reflection.
//
// Leadership is a symmetric pair: when Raft reports leadership, the
// coordinator waits for a barrier (every earlier entry applied), records its
// own addresses, and runs the scheduler and the watcher; when leadership is
// lost, their context is canceled, which closes every agent session so the
// agents move to the new leader and stops the repository polls.
package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/kiln-ci/kiln/coordinator/acl"
	"github.com/kiln-ci/kiln/coordinator/api"
	"github.com/kiln-ci/kiln/coordinator/blobgc"
	"github.com/kiln-ci/kiln/coordinator/blobrepl"
	"github.com/kiln-ci/kiln/coordinator/blobstore"
	"github.com/kiln-ci/kiln/coordinator/blobstore/s3store"
	"github.com/kiln-ci/kiln/coordinator/blobsync"
	"github.com/kiln-ci/kiln/coordinator/builds"
	"github.com/kiln-ci/kiln/coordinator/enroll"
	"github.com/kiln-ci/kiln/coordinator/fsm"
	"github.com/kiln-ci/kiln/coordinator/logrepl"
	"github.com/kiln-ci/kiln/coordinator/logstore"
	"github.com/kiln-ci/kiln/coordinator/membership"
	"github.com/kiln-ci/kiln/coordinator/peers"
	"github.com/kiln-ci/kiln/coordinator/raftnode"
	"github.com/kiln-ci/kiln/coordinator/readindex"
	"github.com/kiln-ci/kiln/coordinator/retention"
	"github.com/kiln-ci/kiln/coordinator/scheduler"
	"github.com/kiln-ci/kiln/coordinator/secrets"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/coordinator/watcher"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/httpserve"
	"github.com/kiln-ci/kiln/internal/leader"
	"github.com/kiln-ci/kiln/internal/periodic"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Config is a coordinator's configuration. Flags fill it; Validate names
// the first bad field.
type Config struct {
	// NodeID is this member's stable, unique id.
	NodeID string
	// DataDir holds the Raft log and snapshots.
	DataDir string
	// GRPCAddr is the API listen address; port 0 picks a free port.
	GRPCAddr string
	// AdvertiseGRPCAddr is the API address given to clients and peers;
	// defaults to the listen address.
	AdvertiseGRPCAddr string
	// RaftAddr is the Raft listen and advertise address; port 0 picks a free
	// port (only usable with Join or a single-node InitialCluster).
	RaftAddr string
	// InitialCluster maps member ids to Raft addresses for a first start.
	InitialCluster map[string]string
	// Join lists gRPC addresses of a running cluster to join (when this
	// node is not in InitialCluster).
	Join []string
	// LeaseTTL is how long an agent may be silent before its jobs are lost.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often agents send heartbeats.
	HeartbeatInterval time.Duration
	// DefaultJobTimeout is the timeout of steps that set none.
	DefaultJobTimeout time.Duration
	// RaftHeartbeatTimeout and RaftElectionTimeout tune failure detection.
	RaftHeartbeatTimeout time.Duration
	RaftElectionTimeout  time.Duration
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64
	// SnapshotInterval is how often the snapshot threshold is checked.
	SnapshotInterval time.Duration
	// MaxBlobSize bounds every blob in the local blob store
	// (DataDir/blobs); uploads of a kind have their own, lower limit
	// (source archives: 512 MiB).
	MaxBlobSize int64
	// BlobSyncInterval is how often the node fetches, from its peers, the
	// blobs the replicated state refers to that its store lacks (default
	// 10s).
	BlobSyncInterval time.Duration
	// ArtifactRetention is how long a finished build's artifacts (and
	// uploaded source) are kept when its pipeline sets no
	// artifact_retention (default 30 days); 0 keeps them forever.
	ArtifactRetention time.Duration
	// ExpiryInterval is how often the leader looks for builds whose
	// artifact or build retention ended (default 1m; --expiry-interval,
	// formerly --artifact-expiry-interval).
	ExpiryInterval time.Duration
	// BuildRetention is how long a finished build is kept — with its jobs,
	// logs, test reports, artifacts and uploaded source — before the
	// leader deletes it (default 90 days); 0 keeps builds forever.
	BuildRetention time.Duration
	// MaxBuildBytes bounds a resolved build (after matrix expansion), the
	// SubmitBuild command committed through Raft (default 1 MiB, at most
	// 3 MiB so every read of the build fits a gRPC message).
	MaxBuildBytes int
	// MaxLogBytes is the log kept per job attempt (default 1 GiB): agents
	// drop output past it and end the log with one marker line.
	MaxLogBytes int64
	// BlobGCInterval is how often every node deletes the blobs the state
	// no longer refers to (default 10m).
	BlobGCInterval time.Duration
	// BlobGCGrace is the minimum age of a deleted blob, so an upload whose
	// registration is not committed yet survives (default 1h).
	BlobGCGrace time.Duration
	// BlobStore is the blob store backend: BlobStoreDisk (default, under
	// DataDir/blobs, replicated to a quorum of coordinators) or
	// BlobStoreS3 (one bucket every coordinator shares).
	BlobStore string
	// S3 configures BlobStoreS3 (Endpoint, Bucket, Region, Insecure; the
	// keys come from KILN_S3_ACCESS_KEY and KILN_S3_SECRET_KEY). TempDir
	// and MaxBlobSize are filled from DataDir and MaxBlobSize.
	S3 s3store.Config
	// Autopilot tunes the promotion of joined coordinators from
	// non-voter to voter (zero fields: defaults).
	Autopilot membership.Config
	// TLS, when TLS.CA is set, serves gRPC over TLS only, runs Raft over
	// mutual TLS between coordinator certificates, and authorizes every
	// call by the caller's certificate role (coordinator/authn). Cert and
	// Key are this node's coordinator certificate (named after NodeID).
	TLS tlsutil.Files
	// TLSCAKey is the cluster CA's private key; with it this coordinator
	// issues agent certificates in exchange for join tokens.
	TLSCAKey string
	// JoinTokens redeems agent join tokens for enrollment (nil: agents
	// cannot enroll; they use certificates made with kilnctl tls).
	JoinTokens enroll.Tokens
	// AgentCertValidity is how long certificates issued to enrolled
	// agents are valid (default 30 days; agents renew at two thirds).
	AgentCertValidity time.Duration
	// GitAllow lists the repository URLs the coordinator may contact for
	// clients (gitsrc.ParsePolicy; nil: gitsrc.DefaultAllow, any https or
	// ssh host that is not a local address).
	GitAllow []string
	// ACL turns on authorization of every RPC by token and role
	// (coordinator/acl); it needs SecretsKeyFile, from which peers derive
	// the credential they present to each other.
	ACL bool
	// SecretsKeyFile is the 32-byte cluster key (same file on every
	// coordinator, never replicated): it seals secrets and, with ACL,
	// authenticates coordinators to each other. Empty: no secrets.
	SecretsKeyFile string
	// HTTPAddr is the HTTP listen address of /metrics (port 0 picks a
	// free port); empty serves no HTTP. kiln-coordinator's flag defaults
	// to DefaultHTTPAddr.
	HTTPAddr string
}

// Blob store backends.
const (
	BlobStoreDisk = "disk"
	BlobStoreS3   = "s3"
)

// NewConfig returns the defaults.
func NewConfig() Config {
	return Config{
		NodeID:               "n1",
		DataDir:              "kiln-data",
		GRPCAddr:             "127.0.0.1:7070",
		RaftAddr:             "127.0.0.1:7071",
		LeaseTTL:             5 * time.Second,
		HeartbeatInterval:    time.Second,
		DefaultJobTimeout:    time.Hour,
		RaftHeartbeatTimeout: 500 * time.Millisecond,
		RaftElectionTimeout:  500 * time.Millisecond,
		SnapshotThreshold:    8192,
		SnapshotInterval:     30 * time.Second,
		MaxBlobSize:          blobstore.DefaultMaxBlobSize,
		BlobSyncInterval:     blobsync.DefaultInterval,

		ArtifactRetention: 30 * 24 * time.Hour,
		ExpiryInterval:    retention.DefaultInterval,
		BuildRetention:    DefaultBuildRetention,
		MaxBuildBytes:     builds.DefaultMaxBuildBytes,
		MaxLogBytes:       DefaultMaxLogBytes,
		BlobGCInterval:    blobgc.DefaultInterval,
		BlobGCGrace:       blobgc.DefaultGrace,
		BlobStore:         BlobStoreDisk,
	}
}

// Validate reports the first invalid field.
func (c *Config) Validate() error {
	switch {
	case c.NodeID == "":
		return errors.New("node-id: must not be empty")
	case c.DataDir == "":
		return errors.New("data-dir: must not be empty")
	case c.GRPCAddr == "":
		return errors.New("grpc-addr: must not be empty")
	case c.RaftAddr == "":
		return errors.New("raft-addr: must not be empty")
	case c.LeaseTTL < 100*time.Millisecond:
		return fmt.Errorf("lease-ttl: %s is below the 100ms minimum", c.LeaseTTL)
	case c.HeartbeatInterval <= 0 || c.HeartbeatInterval*2 > c.LeaseTTL:
		return fmt.Errorf("heartbeat-interval: %s must be positive and at most half the lease TTL (%s)", c.HeartbeatInterval, c.LeaseTTL)
	case c.DefaultJobTimeout <= 0:
		return errors.New("default-job-timeout: must be positive")
	case c.ArtifactRetention < 0:
		return fmt.Errorf("artifact-retention: %s is negative (0 keeps artifacts forever)", c.ArtifactRetention)
	case c.ArtifactRetention > 0 && c.ArtifactRetention < time.Millisecond:
		return fmt.Errorf("artifact-retention: %s is shorter than a millisecond", c.ArtifactRetention)
	case c.ExpiryInterval <= 0:
		return errors.New("expiry-interval: must be positive")
	case c.BlobGCInterval <= 0:
		return errors.New("blob-gc-interval: must be positive")
	case c.Autopilot.Stabilization < 0:
		return errors.New("promote-after: must not be negative")
	case c.BlobGCGrace <= 0:
		return errors.New("blob-gc-grace: must be positive")
	case c.BlobStore != BlobStoreDisk && c.BlobStore != BlobStoreS3:
		return fmt.Errorf("blob-store: %q is neither %q nor %q", c.BlobStore, BlobStoreDisk, BlobStoreS3)
	case c.ACL && c.SecretsKeyFile == "":
		return errors.New("secrets-key-file: required with --acl (coordinators prove to each other that they hold it)")
	case len(c.InitialCluster) == 0 && len(c.Join) == 0:
		return errors.New("initial-cluster: give --initial-cluster (a new cluster) or --join (an existing one)")
	}
	if err := c.validateLifecycle(); err != nil {
		return err
	}
	if err := c.validateTLS(); err != nil {
		return err
	}
	if _, err := gitsrc.ParsePolicy(c.gitAllow()); err != nil {
		return err
	}

	if c.BlobStore == BlobStoreS3 {
		s3 := c.s3Config()
		if err := s3.Validate(); err != nil {
			return err
		}
		if c.S3.RefreshAfter*2 > c.BlobGCGrace {
			return fmt.Errorf("blob-gc-grace: %s must be at least twice the S3 refresh age (%s)", c.BlobGCGrace, c.S3.RefreshAfter)
		}
	}
	if len(c.InitialCluster) > 0 {
		if _, ok := c.InitialCluster[c.NodeID]; !ok && len(c.Join) == 0 {
			return fmt.Errorf("initial-cluster: does not name this node %q", c.NodeID)
		}
	}
	return nil
}

// s3Config is the S3 configuration with the fields derived from the rest.
func (c *Config) s3Config() s3store.Config {
	s3 := c.S3
	s3.TempDir = filepath.Join(c.DataDir, "s3-tmp")
	s3.MaxBlobSize = c.MaxBlobSize
	if s3.RefreshAfter == 0 {
		// Re-uploads refresh a blob well inside the GC grace period.
		s3.RefreshAfter = min(s3store.DefaultRefreshAfter, c.BlobGCGrace/2)
	}
	return s3
}

// openBlobs opens the configured blob store backend.
func openBlobs(cfg Config) (blobstore.Backend, error) {
	if cfg.BlobStore == BlobStoreS3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return s3store.Open(ctx, cfg.s3Config())
	}
	return blobstore.Open(filepath.Join(cfg.DataDir, "blobs"), blobstore.Options{MaxBlobSize: cfg.MaxBlobSize})
}

// ParseInitialCluster parses "n1=host:port,n2=host:port".
func ParseInitialCluster(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("initial-cluster: %q is not id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("initial-cluster: %s: %w", id, err)
		}
		if _, dup := out[id]; dup {
			return nil, fmt.Errorf("initial-cluster: node %q listed twice", id)
		}
		out[id] = addr
	}
	return out, nil
}

// Coordinator is one running coordinator.
type Coordinator struct {
	cfg     Config
	log     *zap.Logger
	store   *state.Store
	node    *raftnode.Node
	sched   *scheduler.Scheduler
	watch   *watcher.Watcher
	blobs   *blobrepl.Replicator
	logs    *logrepl.Replicator
	local   blobstore.Backend
	grpc    *grpc.Server
	health  *health.Server
	lis     net.Listener
	addr    string
	raftAdr string
	peers   *peers.Pool
	reads   *readindex.Reader
	// autopilot promotes caught-up non-voters while this node leads.
	autopilot *membership.Autopilot
	crash     chan struct{}
	once      sync.Once
	// removed receives the builds the expiry deleted (removedLoop).
	removed chan state.RemovedBuilds
	// tls is the loaded TLS material (nil: plaintext).
	tls *tlsSetup
	// tokens creates, revokes and redeems tokens (Tokens).
	tokens *acl.Tokens
	// http serves /metrics (nil without Config.HTTPAddr); metrics is its
	// registry.
	http    *httpserve.Server
	metrics *prometheus.Registry
	// establishHook, when set (tests), runs before each attempt to
	// establish leadership; an error fails the attempt.
	establishHook func() error
}

// New opens the Raft member and binds the API port; Run serves.
func New(cfg Config, log *zap.Logger) (*Coordinator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration: %w", err)
	}
	log = log.With(zap.String("node", cfg.NodeID))
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	tlsSet, err := loadTLS(cfg)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on grpc-addr %s: %w", cfg.GRPCAddr, err)
	}
	advertise := cfg.AdvertiseGRPCAddr
	if advertise == "" {
		advertise = lis.Addr().String()
	}
	blobs, err := openBlobs(cfg)
	if err != nil {
		lis.Close()
		return nil, err
	}
	logs, err := logstore.Open(filepath.Join(cfg.DataDir, "logs"))
	if err != nil {
		lis.Close()
		return nil, err
	}
	var keys *secrets.Keyring
	if cfg.SecretsKeyFile != "" {
		if keys, err = secrets.LoadKeyFile(cfg.SecretsKeyFile); err != nil {
			lis.Close()
			return nil, err
		}
	}
	store := state.New()
	removed := removedBuildsQueue(store, log)
	f := fsm.New(store, log.Named("fsm"))
	node, err := raftnode.Open(raftnode.Config{
		NodeID:            cfg.NodeID,
		DataDir:           cfg.DataDir,
		RaftAddr:          cfg.RaftAddr,
		InitialCluster:    cfg.InitialCluster,
		HeartbeatTimeout:  cfg.RaftHeartbeatTimeout,
		ElectionTimeout:   cfg.RaftElectionTimeout,
		SnapshotThreshold: cfg.SnapshotThreshold,
		SnapshotInterval:  cfg.SnapshotInterval,
		TLS:               tlsSet.raft(),
	}, f, log)
	if err != nil {
		lis.Close()
		return nil, err
	}
	sched := scheduler.New(scheduler.Config{
		LeaseTTL:          cfg.LeaseTTL,
		HeartbeatInterval: cfg.HeartbeatInterval,
		DefaultJobTimeout: cfg.DefaultJobTimeout,
		Secrets:           secretOpener(store, keys, log.Named("secrets")),
	}, store, node, log.Named("scheduler"))

	c := &Coordinator{cfg: cfg, log: log, store: store, node: node, sched: sched, local: blobs, lis: lis, addr: advertise, removed: removed,
		raftAdr: node.RaftAddr(), crash: make(chan struct{}), peers: peers.NewWithCredentials(tlsSet.peerCredentials(), peerDialOptions(cfg, keys)...), tls: tlsSet}
	c.reads = readindex.New(node, store, c.IsLeader, c.leaderGRPCAddr, c.peers)
	if err := c.openHTTP(); err != nil {
		lis.Close()
		_ = node.Close()
		return nil, err
	}
	c.autopilot = membership.New(cfg.Autopilot, cfg.NodeID, node, store, c.peers, log.Named("autopilot"))
	deps := &api.Deps{NodeID: cfg.NodeID, GRPCAddr: advertise, RaftAddr: c.raftAdr, Store: store, Raft: node, Scheduler: sched, Blobs: blobs,
		Reads: c.reads, MemberHealth: c.autopilot.Healthy, Log: log.Named("api"), MaxLogBytes: cfg.MaxLogBytes,
		ACL: cfg.ACL, Tokens: acl.NewTokens(node, nil), Keyring: keys}
	c.tokens = deps.Tokens
	if c.cfg.JoinTokens == nil {
		c.cfg.JoinTokens = joinTokens{deps.Tokens}
	}
	authz := c.authorizer(cfg, keys, store, node, log.Named("acl"))
	// Interceptors run in order: the certificate role table (with TLS),
	// then the token role table (with --acl), then answer redaction.
	c.grpc = grpc.NewServer(append(tlsSet.serverOptions(),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}),
		grpc.MaxRecvMsgSize(4<<20),
		grpc.ChainUnaryInterceptor(authz.Unary()),
		grpc.ChainStreamInterceptor(authz.Stream()),
		// No answer to a client carries git URL credentials.
		grpc.ChainUnaryInterceptor(api.RedactUnary),
		grpc.ChainStreamInterceptor(api.RedactStream),
	)...)
	if deps.Git, err = gitGuard(cfg, log); err != nil {
		_ = node.Close()
		lis.Close()
		return nil, err
	}
	deps.Builds = builds.New(builds.Config{Raft: node, Repos: store, Blobs: blobs, Leading: c.IsLeader, Kick: sched.Kick,
		Resolve: deps.Git.Resolve, MaxBuildBytes: cfg.MaxBuildBytes,
		HasSecret: func(repo, name string) bool { return store.SealedSecret(repo, name) != nil },
		Log:       log.Named("builds")})
	control := api.NewControlServer(deps)
	kilnv1.RegisterControlServiceServer(c.grpc, control)
	c.watch = watcher.New(watcher.Config{
		Store: store,
		Raft:  node,
		// Builds of new commits go through the same service as SubmitBuild.
		Submit:   deps.Builds.Submit,
		Resolve:  deps.Git.Resolve,
		ReadFile: deps.Git.ReadFile,
		Log:      log.Named("watcher"),
	})
	c.blobs = blobrepl.New(blobrepl.Config{NodeID: cfg.NodeID, Store: blobs, Members: node.Members, Nodes: store.Nodes,
		Dial: peerDial(tlsSet.peerCredentials(), peerDialOptions(cfg, keys)), Log: log.Named("blobrepl")})
	deps.FetchBlob = c.blobs.Fetch
	c.logs = newLogReplicator(c, logs)
	deps.Logs = c.logs
	kilnv1.RegisterLogReplicationServiceServer(c.grpc, logrepl.NewServer(logs))
	kilnv1.RegisterAgentServiceServer(c.grpc, api.NewAgentServer(deps))
	kilnv1.RegisterClusterServiceServer(c.grpc, api.NewClusterServer(deps))
	kilnv1.RegisterOpsServiceServer(c.grpc, api.NewOpsServer(deps))
	kilnv1.RegisterBlobServiceServer(c.grpc, api.NewBlobServer(deps, c.blobs))
	kilnv1.RegisterIdentityServiceServer(c.grpc, c.identityService(deps))
	kilnv1.RegisterAccessServiceServer(c.grpc, api.NewAccessServer(deps))
	kilnv1.RegisterDeployServiceServer(c.grpc, api.NewDeployServer(deps))
	c.health = health.NewServer()
	healthpb.RegisterHealthServer(c.grpc, c.health)
	reflection.Register(c.grpc)
	return c, nil
}

// leaderGRPCAddr is the leader's gRPC address as the replicated node table
// knows it; empty when there is no leader or its address is unknown.
func (c *Coordinator) leaderGRPCAddr() string {
	id, _ := c.node.Leader()
	if id == "" {
		return ""
	}
	for _, n := range c.store.Nodes() {
		if n.GetId() == id {
			return n.GetGrpcAddr()
		}
	}
	return ""
}

// Voters counts the voting members of the Raft configuration as this node
// knows it.
func (c *Coordinator) Voters() (int, error) {
	members, err := c.node.Members()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range members {
		if m.Suffrage == raft.Voter {
			n++
		}
	}
	return n, nil
}

// GRPCAddr is the address clients use to reach this coordinator.
func (c *Coordinator) GRPCAddr() string { return c.addr }

// RaftAddr is this member's Raft address.
func (c *Coordinator) RaftAddr() string { return c.raftAdr }

// NodeID is this member's id.
func (c *Coordinator) NodeID() string { return c.cfg.NodeID }

// Store is the local replicated state (read-only use).
func (c *Coordinator) Store() *state.Store { return c.store }

// HasBlob reports whether this node's blob store holds the blob.
func (c *Coordinator) HasBlob(sha string) bool { return c.blobs.Has(sha) }

// IsLeader reports whether this member leads and its scheduler runs.
func (c *Coordinator) IsLeader() bool { return c.node.IsLeader() && c.sched.Active() }

// Snapshot forces a Raft snapshot (tests, operators).
func (c *Coordinator) Snapshot() error { return c.node.Snapshot() }

// Run serves until ctx is canceled, then stops everything it started.
func (c *Coordinator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	c.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Add(4)
	go func() { defer wg.Done(); serveErr <- c.grpc.Serve(c.lis) }()
	go func() { defer wg.Done(); c.leadershipLoop(ctx) }()
	go func() { defer wg.Done(); c.announceLoop(ctx) }()
	if !c.local.Shared() {
		// A shared store has nothing to catch up: peers use the same one.
		wg.Add(1)
		go func() { defer wg.Done(); blobsync.Run(ctx, c.blobSyncConfig()) }()
	}
	go func() { defer wg.Done(); blobgc.Run(ctx, c.blobGCConfig()) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.logs.Run(ctx, logrepl.DefaultInterval, c.store.LogPositions, c.waitApplied) }()
	wg.Add(1)
	go func() { defer wg.Done(); c.removedLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); periodic.Run(ctx, logSweepInterval, c.waitApplied, c.sweepJobLogs) }()
	if c.http != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.http.Run(ctx); err != nil {
				c.log.Error("http server stopped", zap.Error(err))
			}
		}()
	}
	c.log.Info("coordinator started", zap.String("grpc_addr", c.addr), zap.String("raft_addr", c.raftAdr))

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("grpc server: %w", err)
	case <-c.crash:
		// Simulated crash: drop Raft and every connection at once, with no
		// leadership transfer, the way kill -9 would.
		cancel()
		_ = c.node.Close()
		c.grpc.Stop()
		wg.Wait()
		c.blobs.Close()
		c.logs.Close()
		c.peers.Close()
		c.log.Info("coordinator crashed on purpose")
		return nil
	}
	cancel()
	c.health.Shutdown()
	if c.node.IsLeader() {
		// Hand leadership over so the cluster does not wait an election timeout.
		if terr := c.node.TransferLeadership(); terr != nil {
			c.log.Debug("leadership transfer", zap.Error(terr))
		}
	}
	// Agent streams never end by themselves: give unary calls a moment,
	// then close everything.
	stopped := make(chan struct{})
	go func() { c.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		c.grpc.Stop()
		<-stopped
	}
	wg.Wait()
	c.blobs.Close()
	c.logs.Close()
	c.peers.Close()
	if cerr := c.node.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("close raft: %w", cerr)
	}
	c.log.Info("coordinator stopped")
	return err
}

// newLogReplicator stores job logs under DATA_DIR/logs, replicated to the
// voters and fetched from peers over the shared peer connections.
func newLogReplicator(c *Coordinator, logs *logstore.Store) *logrepl.Replicator {
	return logrepl.New(logrepl.Config{
		NodeID:  c.cfg.NodeID,
		Store:   logs,
		Members: c.node.Members,
		Nodes:   c.store.Nodes,
		Leader:  func() string { id, _ := c.node.Leader(); return id },
		Conn:    c.peers.Conn,
		Log:     c.log.Named("logrepl"),
	})
}

// Logs is this node's job log replicator; Logs().Store() is its local
// log store (tests, build expiry: Store().Delete(jobID)).
func (c *Coordinator) Logs() *logrepl.Replicator { return c.logs }

// blobSyncConfig is the catch-up loop of this node's blob store: artifacts
// of every attempt and uploaded source archives, fetched from peers.
func (c *Coordinator) blobSyncConfig() blobsync.Config {
	return blobsync.Config{
		Wanted: c.referencedBlobs,
		Has:    c.blobs.Has,
		Fetch:  c.blobs.Fetch,
		// Start once the log this node holds has been applied.
		Ready:    c.waitApplied,
		Interval: c.cfg.BlobSyncInterval,
		Log:      c.log.Named("blobsync"),
	}
}

// waitApplied blocks until this node's state has caught up with the
// leader's (a linearizable read barrier), retrying while no leader answers.
func (c *Coordinator) waitApplied(ctx context.Context) error {
	const retry = 250 * time.Millisecond
	for {
		err := c.reads.Barrier(ctx, kilnv1.Consistency_CONSISTENCY_LINEARIZABLE)
		if err == nil {
			return nil
		}
		c.log.Debug("waiting to catch up with the leader", zap.Error(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(retry):
		}
	}
}

// referencedBlobs are the blobs the replicated state refers to: artifacts
// of every attempt and the source archives of builds within retention.
func (c *Coordinator) referencedBlobs() map[string]bool {
	want := c.store.ArtifactDigests()
	for sha := range c.store.SourceArchiveDigests() {
		want[sha] = true
	}
	return want
}

// blobGCConfig is the garbage collector of this node's blob store: it
// deletes the blobs referencedBlobs does not list, after the grace period.
func (c *Coordinator) blobGCConfig() blobgc.Config {
	return blobgc.Config{
		Referenced: c.referencedBlobs,
		Blobs:      c.local,
		// Never before the log this node holds is applied: the state
		// would look empty.
		Ready:    c.waitApplied,
		Active:   c.gcActive,
		Interval: c.cfg.BlobGCInterval,
		Grace:    c.cfg.BlobGCGrace,
		Log:      c.log.Named("blobgc"),
	}
}

// gcActive: every node collects its own disk; a shared store is collected
// by the leader only.
func (c *Coordinator) gcActive() bool { return !c.local.Shared() || c.IsLeader() }

// Crash stops the coordinator abruptly (tests and benchmarks): Run returns
// without a graceful shutdown or leadership transfer.
func (c *Coordinator) Crash() { c.once.Do(func() { close(c.crash) }) }

// announceLoop makes sure the cluster knows this node's gRPC address (and,
// for a node started with Join, that it is a member at all).
func (c *Coordinator) announceLoop(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		if c.announced() {
			return
		}
		if !c.node.IsLeader() {
			c.tryJoin(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Coordinator) announced() bool {
	for _, n := range c.store.Nodes() {
		if n.GetId() == c.cfg.NodeID {
			return n.GetGrpcAddr() == c.addr && n.GetRaftAddr() == c.raftAdr
		}
	}
	return false
}

// tryJoin asks the leader (or the configured join addresses) to record us.
func (c *Coordinator) tryJoin(ctx context.Context) {
	var targets []string
	leaderID, _ := c.node.Leader()
	for _, n := range c.store.Nodes() {
		if n.GetId() == leaderID && n.GetGrpcAddr() != "" {
			targets = append(targets, n.GetGrpcAddr())
		}
	}
	targets = append(targets, c.cfg.Join...)
	req := &kilnv1.JoinRequest{NodeId: c.cfg.NodeID, RaftAddr: c.raftAdr, GrpcAddr: c.addr}
	var others []string
	for _, addr := range targets {
		if addr != c.addr {
			others = append(others, addr)
		}
	}
	err := leader.Follow(ctx, others, maxJoinHops, func(ctx context.Context, addr string) error {
		if err := c.joinAt(ctx, addr, req); err != nil {
			c.log.Debug("join attempt failed", zap.String("via", addr), zap.Error(err))
			return err
		}
		c.log.Info("announced to the cluster", zap.String("via", addr))
		return nil
	})
	if err != nil {
		c.log.Debug("not announced yet", zap.Error(err))
	}
}

// maxJoinHops bounds how many "not leader" redirects one join follows.
const maxJoinHops = 3

// joinAt asks the coordinator at addr to add this node (leader only).
func (c *Coordinator) joinAt(ctx context.Context, addr string, req *kilnv1.JoinRequest) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := c.peers.Conn(addr)
	if err != nil {
		return err
	}
	_, err = kilnv1.NewClusterServiceClient(conn).Join(ctx, req)
	return err
}
