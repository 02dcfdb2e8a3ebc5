// Command kiln-agent runs a Kiln build agent on this host.
//
//	kiln-agent --coordinators 127.0.0.1:7001,127.0.0.1:7002 --name a1 \
//	    --labels os=linux,pool=x --slots 2 --work-dir DIR [--heartbeat 1s] [--http-addr 127.0.0.1:7081] [--log-level info] \
//	    [--docker-host unix:///var/run/docker.sock|none] [--sandbox] [--kill-grace 5s]
//
// The first SIGTERM or SIGINT drains the agent: it tells the leader at once,
// takes no new jobs, and exits 0 once every job it holds has finished and
// been acknowledged. A second signal aborts: every job's process group is
// killed and the agent exits non-zero.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/kiln-ci/kiln/agent"
	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/discovery"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// run parses args, runs the agent and returns the exit code.
func run(args []string, stderr io.Writer) int {
	cfg, rt, level, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "kiln-agent:", err)
		return 2
	}
	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(level)
	zcfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := zcfg.Build()
	if err != nil {
		fmt.Fprintln(stderr, "kiln-agent: logger:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()

	if err := setupExecutors(&cfg, rt, log); err != nil {
		log.Error("executor setup failed", zap.Error(err))
		return 2
	}
	if cfg.Docker != nil {
		defer cfg.Docker.Close()
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		log.Error("invalid configuration", zap.Error(err))
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			log.Info("signal received: draining (send again to abort)", zap.String("signal", s.String()))
			a.Drain()
		case <-ctx.Done():
			return
		}
		select {
		case s := <-sigs:
			log.Warn("second signal: aborting, killing all jobs", zap.String("signal", s.String()))
			cancel()
		case <-ctx.Done():
		}
	}()

	if err := a.Run(ctx); err != nil {
		log.Error("agent aborted", zap.Error(err))
		return 1
	}
	return 0
}

// runtimeFlags choose the executors: the Docker engine and the sandbox.
type runtimeFlags struct {
	// dockerHost: "" auto-detects (DOCKER_HOST or the default socket, no
	// Docker when nothing answers); "none" disables; anything else must
	// answer.
	dockerHost string
	sandbox    bool
	// hide are extra host paths the sandbox masks (--sandbox-hide).
	hide []string
}

// setupExecutors connects to the Docker engine and checks bubblewrap as
// rt asks, filling cfg.Docker and cfg.Sandbox.
func setupExecutors(cfg *agent.Config, rt runtimeFlags, log *zap.Logger) error {
	ctx := context.Background()
	switch rt.dockerHost {
	case "none":
	case "":
		d, err := executor.NewDocker(ctx, "")
		if err != nil {
			log.Info("no Docker engine: steps with an image will not run here", zap.Error(err))
			break
		}
		log.Info("Docker engine found", zap.String("docker_host", d.Host()))
		cfg.Docker = d
	default:
		d, err := executor.NewDocker(ctx, rt.dockerHost)
		if err != nil {
			return fmt.Errorf("--docker-host: %w", err)
		}
		cfg.Docker = d
	}
	if rt.sandbox {
		s, err := executor.NewSandbox(ctx, rt.hide...)
		if err != nil {
			return fmt.Errorf("--sandbox: %w", err)
		}
		cfg.Sandbox = s
	}
	return nil
}

// parseFlags turns the command line into an agent.Config, the executor
// choices and a log level.
func parseFlags(args []string, stderr io.Writer) (agent.Config, runtimeFlags, zapcore.Level, error) {
	var rt runtimeFlags
	cfg := agent.NewConfig()
	fs := flag.NewFlagSet("kiln-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	coordinators := fs.String("coordinators", "", "comma-separated coordinator gRPC addresses (host:port), or etcd:///PREFIX (the coordinators registered in etcd)")
	etcdEndpoints := fs.String("etcd-endpoints", "", "etcd client URLs, comma-separated, resolving etcd:/// coordinators (default $"+discovery.EnvEndpoints+")")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "unique agent name")
	labels := fs.String("labels", "", "comma-separated key=value labels; os and arch are added unless given")
	fs.IntVar(&cfg.Slots, "slots", cfg.Slots, "jobs run at once")
	fs.StringVar(&cfg.WorkDir, "work-dir", cfg.WorkDir, "directory holding one workspace per job attempt")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat", cfg.HeartbeatInterval, "heartbeat interval when the leader names none")
	fs.StringVar(&cfg.TLS.CA, "tls-ca", os.Getenv("KILN_TLS_CA"), "cluster CA certificate: talk TLS to coordinators it signed (default $KILN_TLS_CA)")
	fs.StringVar(&cfg.TLS.Cert, "tls-cert", os.Getenv("KILN_TLS_CERT"), "this agent's certificate (role agent; its name is the agent's name) (default $KILN_TLS_CERT)")
	fs.StringVar(&cfg.TLS.Key, "tls-key", os.Getenv("KILN_TLS_KEY"), "key of --tls-cert (default $KILN_TLS_KEY)")
	fs.StringVar(&cfg.JoinToken, "join-token", "", "join token (kilnctl token create --agent) exchanged once for an agent certificate kept in the work dir; prefer $KILN_JOIN_TOKEN, flags show in ps")
	fs.Func("pass-env", "also give jobs the agent's environment variables matching this glob (repeatable; default: only PATH, HOME, USER, LOGNAME, SHELL, TERM, LANG, LANGUAGE, LC_*, TZ, TMPDIR)", func(v string) error {
		cfg.PassEnv = append(cfg.PassEnv, v)
		return nil
	})
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "", "listen address of the agent's /metrics (Prometheus), e.g. 127.0.0.1:7081; empty serves none")
	fs.DurationVar(&cfg.KillGrace, "kill-grace", cfg.KillGrace, "time between SIGTERM and SIGKILL when a job is canceled or timed out")
	fs.StringVar(&rt.dockerHost, "docker-host", "", `Docker engine for steps with an image ("" detects DOCKER_HOST or the default socket; "none" disables)`)
	fs.BoolVar(&rt.sandbox, "sandbox", false, "run shell steps under bubblewrap (see README: Sandboxed shell jobs)")
	hide := fs.String("sandbox-hide", "", "comma-separated absolute host paths hidden from sandboxed jobs (besides /etc/kiln)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&cfg.Token, "token", os.Getenv(authn.EnvToken), "API token of role agent for coordinators started with --acl (default $"+authn.EnvToken+"; prefer the variable: flags show in ps)")
	if err := fs.Parse(args); err != nil {
		return cfg, rt, 0, err
	}
	if cfg.Token != "" {
		if err := authn.ValidToken(cfg.Token); err != nil {
			return cfg, rt, 0, fmt.Errorf("--token: %w", err)
		}
	}
	if fs.NArg() > 0 {
		return cfg, rt, 0, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if cfg.JoinToken == "" {
		cfg.JoinToken = os.Getenv("KILN_JOIN_TOKEN")
	}
	nameSet := false
	fs.Visit(func(f *flag.Flag) { nameSet = nameSet || f.Name == "name" })
	if cfg.TLS.Cert != "" && nameSet {
		return cfg, rt, 0, errors.New("--name: the agent's name comes from its certificate (--tls-cert); drop --name")
	}
	var level zapcore.Level
	if err := level.Set(*logLevel); err != nil {
		return cfg, rt, 0, fmt.Errorf("--log-level: %w", err)
	}
	cfg.Coordinators = nil
	for _, c := range strings.Split(*coordinators, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Coordinators = append(cfg.Coordinators, c)
		}
	}
	if len(cfg.Coordinators) == 0 {
		return cfg, rt, 0, errors.New("--coordinators is required")
	}
	for _, p := range strings.Split(*hide, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if !strings.HasPrefix(p, "/") {
				return cfg, rt, 0, fmt.Errorf("--sandbox-hide: %q is not an absolute path", p)
			}
			rt.hide = append(rt.hide, p)
		}
	}
	if len(rt.hide) > 0 && !rt.sandbox {
		return cfg, rt, 0, errors.New("--sandbox-hide needs --sandbox")
	}
	if slices.ContainsFunc(cfg.Coordinators, discovery.IsTarget) {
		eps := *etcdEndpoints
		if strings.TrimSpace(eps) == "" {
			eps = os.Getenv(discovery.EnvEndpoints)
		}
		list, err := discovery.ParseEndpoints(eps)
		if err != nil {
			return cfg, rt, 0, fmt.Errorf("--etcd-endpoints: %w", err)
		}
		cfg.EtcdEndpoints = list
	}
	parsed, err := parseLabels(*labels)
	if err != nil {
		return cfg, rt, 0, err
	}
	for k, v := range parsed {
		cfg.Labels[k] = v
	}
	if err := cfg.Validate(); err != nil {
		return cfg, rt, 0, err
	}
	return cfg, rt, level, nil
}

// parseLabels parses "k=v,k2=v2".
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}
