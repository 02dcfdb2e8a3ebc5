// Command kiln-coordinator runs one Kiln coordinator: a Raft member that
// serves the gRPC API to agents, kilnctl and integrations. With --dev it
// runs a single-node cluster with a built-in agent on this machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-ci/kiln/agent"
	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/coordinator"
	"github.com/kiln-ci/kiln/coordinator/blobstore/s3store"
	"github.com/kiln-ci/kiln/internal/discovery"
	"github.com/kiln-ci/kiln/internal/gitsrc"
	"github.com/kiln-ci/kiln/internal/logging"
	"github.com/kiln-ci/kiln/internal/pipeline"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-coordinator:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	cfg := coordinator.NewConfig()
	fs := flag.NewFlagSet("kiln-coordinator", flag.ContinueOnError)
	var (
		initialCluster, join, logLevel, logFormat string
		etcdEndpoints, etcdPrefix                 string
		dev                                       bool
		devSlots                                  int
	)
	fs.StringVar(&cfg.NodeID, "node-id", cfg.NodeID, "unique id of this coordinator")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the raft log and snapshots")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC API listen address")
	fs.StringVar(&cfg.AdvertiseGRPCAddr, "advertise-grpc-addr", "", "gRPC address given to clients and peers (default: the listen address)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", cfg.RaftAddr, "raft listen and advertise address")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", coordinator.DefaultHTTPAddr, "HTTP listen address of /metrics (Prometheus) and the web dashboard; empty disables both")
	fs.StringVar(&initialCluster, "initial-cluster", "", "first-start members: id=raft-host:port,... (every member gets the same list)")
	fs.StringVar(&join, "join", "", "gRPC addresses of a running cluster to join: host:port,...")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "how long an agent may be silent before its jobs are declared lost")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", cfg.HeartbeatInterval, "how often agents send heartbeats")
	fs.DurationVar(&cfg.DefaultJobTimeout, "default-job-timeout", cfg.DefaultJobTimeout, "timeout of steps that set none")
	fs.DurationVar(&cfg.RaftHeartbeatTimeout, "raft-heartbeat-timeout", cfg.RaftHeartbeatTimeout, "raft heartbeat timeout")
	fs.DurationVar(&cfg.RaftElectionTimeout, "raft-election-timeout", cfg.RaftElectionTimeout, "raft election timeout")
	fs.Int64Var(&cfg.MaxBlobSize, "max-blob-size", cfg.MaxBlobSize, "largest blob (bytes) the blob store accepts")
	fs.Func("artifact-retention", "how long a finished build's artifacts and uploaded source are kept when its pipeline sets no artifact_retention: a Go duration or days such as 30d; 0 keeps them forever (default 30d)", func(v string) error {
		d, err := pipeline.ParseRetention(v)
		if err != nil {
			return err
		}
		cfg.ArtifactRetention = d
		return nil
	})
	addLifecycleFlags(fs, &cfg)
	fs.DurationVar(&cfg.BlobGCInterval, "blob-gc-interval", cfg.BlobGCInterval, "how often every node deletes the blobs no build refers to any more")
	fs.DurationVar(&cfg.BlobGCGrace, "blob-gc-grace", cfg.BlobGCGrace, "minimum age of a blob the garbage collector deletes (covers uploads not yet registered)")
	fs.StringVar(&cfg.BlobStore, "blob-store", cfg.BlobStore, "blob store backend: disk (DATA_DIR/blobs, replicated to a quorum of coordinators) or s3 (one S3-compatible bucket every coordinator shares; keys from $"+s3store.EnvAccessKey+" and $"+s3store.EnvSecretKey+")")
	fs.StringVar(&cfg.S3.Endpoint, "s3-endpoint", "", "S3 API host[:port], without a scheme (with --blob-store s3)")
	fs.StringVar(&cfg.S3.Bucket, "s3-bucket", "", "S3 bucket of the blobs, created if missing (with --blob-store s3)")
	fs.StringVar(&cfg.S3.Region, "s3-region", "", "S3 region (with --blob-store s3)")
	fs.BoolVar(&cfg.S3.Insecure, "s3-insecure", false, "talk plain HTTP to the S3 endpoint instead of TLS (loopback testing only)")
	fs.DurationVar(&cfg.Autopilot.Stabilization, "promote-after", 2*time.Second, "how long a joined coordinator must stay caught up and in contact before it is promoted from non-voter to voter")
	fs.Uint64Var(&cfg.SnapshotThreshold, "snapshot-threshold", cfg.SnapshotThreshold, "log entries between raft snapshots")
	fs.StringVar(&cfg.TLS.CA, "tls-ca", "", "cluster CA certificate: serve gRPC over TLS only, run Raft over mutual TLS, and authorize calls by certificate role")
	fs.StringVar(&cfg.TLS.Cert, "tls-cert", "", "this coordinator's certificate (role coordinator, named after --node-id; kilnctl tls cert create)")
	fs.StringVar(&cfg.TLS.Key, "tls-key", "", "key of --tls-cert")
	fs.DurationVar(&cfg.AgentCertValidity, "agent-cert-validity", 30*24*time.Hour, "validity of certificates issued to enrolled agents (they renew at two thirds)")
	fs.StringVar(&cfg.TLSCAKey, "tls-ca-key", "", "the CA's private key: lets this coordinator issue agent certificates for join tokens")
	fs.Func("git-allow", "repository URLs the coordinator may contact, comma-separated, repeatable: HOSTGLOB (https/ssh), SCHEME://HOSTGLOB, file:// or file:///DIR; local addresses only when named without wildcards (default *: any https/ssh host that is not a local address; --dev: everything)", func(v string) error {
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				cfg.GitAllow = append(cfg.GitAllow, e)
			}
		}
		return nil
	})
	fs.BoolVar(&cfg.ACL, "acl", false, "authorize every call by API token and role (needs --secrets-key-file; see kilnctl token bootstrap)")
	fs.StringVar(&cfg.SecretsKeyFile, "secrets-key-file", "", "32-byte cluster key, the same file on every coordinator (mode 600, never replicated): seals secrets and, with --acl, authenticates coordinators to each other")
	fs.StringVar(&etcdEndpoints, "etcd-endpoints", "", "etcd client URLs, comma-separated: register this coordinator's gRPC address there (under --etcd-prefix, with a lease kept alive) for clients using --coordinators etcd:///PREFIX")
	fs.StringVar(&etcdPrefix, "etcd-prefix", discovery.DefaultPrefix, "etcd key prefix of the registration (with --etcd-endpoints)")
	fs.BoolVar(&dev, "dev", false, "run a single-node cluster with a built-in agent (the embedded default)")
	fs.IntVar(&devSlots, "dev-agent-slots", runtime.NumCPU(), "slots of the built-in agent in --dev mode")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "console", "console or json")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if cfg.BlobStore == coordinator.BlobStoreS3 {
		// Secrets come from the environment: flag values show in ps.
		cfg.S3.CredentialsFromEnv()
	}
	var err error
	if cfg.InitialCluster, err = coordinator.ParseInitialCluster(initialCluster); err != nil {
		return err
	}
	if join != "" {
		cfg.Join = strings.Split(join, ",")
	}
	if dev && cfg.ACL {
		return errors.New("--acl: not available with --dev (the built-in agent has no token); run a cluster without --dev")
	}
	if dev {
		if !set["node-id"] {
			cfg.NodeID = "dev"
		}
		if !set["raft-addr"] {
			cfg.RaftAddr = "127.0.0.1:0"
		}
		if len(cfg.InitialCluster) == 0 {
			cfg.InitialCluster = map[string]string{cfg.NodeID: cfg.RaftAddr}
		}
		if cfg.GitAllow == nil {
			// One user on one machine: local repositories are the point.
			cfg.GitAllow = gitsrc.DevAllow
		}
	}
	var reg *discovery.Registration
	if etcdEndpoints != "" {
		eps, err := discovery.ParseEndpoints(etcdEndpoints)
		if err != nil {
			return fmt.Errorf("--etcd-endpoints: %w", err)
		}
		prefix, err := discovery.CleanPrefix(etcdPrefix)
		if err != nil {
			return fmt.Errorf("--etcd-prefix: %w", err)
		}
		reg = &discovery.Registration{Endpoints: eps, Prefix: prefix, NodeID: cfg.NodeID}
	}
	log, err := logging.New(logLevel, logFormat)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	warnDeprecatedFlags(log, set)

	if dev && cfg.TLS.Enabled() {
		return errors.New("--dev runs a plaintext single-node cluster on loopback; start without --dev to use TLS")
	}
	warnPlaintext(log, cfg, dev)
	c, err := coordinator.New(cfg, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.Run(gctx) })
	if reg != nil {
		reg.Addr = c.GRPCAddr()
		g.Go(func() error { return discovery.Register(gctx, *reg, log.Named("discovery")) })
	}
	if dev {
		acfg := agent.NewConfig()
		acfg.Coordinators = []string{c.GRPCAddr()}
		acfg.Name = "local"
		acfg.Slots = devSlots
		acfg.WorkDir = filepath.Join(cfg.DataDir, "work")
		acfg.Labels = map[string]string{"dev": "true"}
		// Steps with an image run here too when a Docker engine answers.
		if d, err := executor.NewDocker(ctx, ""); err == nil {
			acfg.Docker = d
			defer d.Close()
		}
		a, err := agent.New(acfg, log.Named("agent"))
		if err != nil {
			stop()
			_ = g.Wait()
			return fmt.Errorf("built-in agent: %w", err)
		}
		if reg := c.Metrics(); reg != nil {
			// The built-in agent's series go on the coordinator's /metrics.
			reg.MustRegister(a.Collector())
		}
		g.Go(func() error {
			err := a.Run(gctx)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		})
		log.Info("dev mode: single-node cluster with a built-in agent",
			zap.String("grpc_addr", c.GRPCAddr()), zap.String("data_dir", cfg.DataDir), zap.Int("slots", devSlots))
	}
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// warnPlaintext says loudly that a coordinator without TLS lets anyone who
// reaches its ports act as any agent, client or coordinator.
func warnPlaintext(log *zap.Logger, cfg coordinator.Config, dev bool) {
	if cfg.TLS.Enabled() {
		return
	}
	if dev {
		log.Warn("dev mode: plaintext gRPC and Raft, no authentication; keep --grpc-addr on loopback",
			zap.String("grpc_addr", cfg.GRPCAddr))
		return
	}
	log.Warn("TLS is off: anyone who can reach the gRPC or Raft port can act as an agent, a client or a coordinator; "+
		"see README 'TLS and identities' (--tls-ca, --tls-cert, --tls-key)",
		zap.String("grpc_addr", cfg.GRPCAddr), zap.String("raft_addr", cfg.RaftAddr))
}
