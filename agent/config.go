package agent

import (
	"fmt"

	"github.com/kiln-ci/kiln/agent/executor"
	"github.com/kiln-ci/kiln/internal/tlsutil"
	"net"
	"os"
	"runtime"
	"time"

	"github.com/kiln-ci/kiln/internal/discovery"
)

// Version is the agent version sent in Register; set it at link time with
// -ldflags "-X github.com/kiln-ci/kiln/agent.Version=v1.2.3".
var Version = "dev"

// Config configures an Agent. Start from NewConfig, which fills in the
// defaults, and override fields as needed.
type Config struct {
	// Coordinators are the gRPC addresses (host:port) of the coordinators,
	// dialed round-robin until one of them is (or names) the leader. An
	// etcd:///PREFIX entry stands for the coordinators registered in etcd
	// under PREFIX (it needs EtcdEndpoints).
	Coordinators []string
	// EtcdEndpoints are the etcd client URLs that resolve etcd:///
	// coordinator addresses.
	EtcdEndpoints []string
	// Name is the agent's unique name (default: the host name).
	Name string
	// Labels are announced to the scheduler. New adds os=runtime.GOOS and
	// arch=runtime.GOARCH unless present.
	Labels map[string]string
	// Slots is how many jobs the agent runs at once (default 1).
	Slots int
	// Token is the agent's API token (role agent), sent with every call
	// to a coordinator that runs with --acl; empty sends none.
	Token string
	// WorkDir holds one workspace per attempt (default ./kiln-work).
	WorkDir string
	// HeartbeatInterval is used when the leader's Registered does not name
	// an interval (default 2s).
	HeartbeatInterval time.Duration
	// LogFlushBytes cuts a log chunk once this much output is pending
	// (default 32 KiB).
	LogFlushBytes int
	// LogFlushInterval cuts a log chunk this long after its first byte
	// arrived (default 20ms).
	LogFlushInterval time.Duration
	// MaxUnackedBytes bounds the unacknowledged output kept per attempt
	// (default 64 MiB). When it is reached the agent stops reading the job's
	// output pipe (backpressure) instead of dropping output.
	MaxUnackedBytes int64
	// DefaultTimeout applies to assignments without a timeout (default 1h).
	DefaultTimeout time.Duration
	// KillGrace is the time between SIGTERM and SIGKILL when a job is timed
	// out or canceled (default 5s).
	KillGrace time.Duration
	// ReconnectMin and ReconnectMax bound the jittered exponential backoff
	// between session attempts (defaults 50ms and 2s).
	ReconnectMin time.Duration
	ReconnectMax time.Duration
	// RegisterTimeout bounds the wait for Registered after Register
	// (default 10s).
	RegisterTimeout time.Duration
	// StableSession is how long a session must have lasted for the backoff
	// to start again from ReconnectMin (default 5s).
	StableSession time.Duration
	// TLS, when TLS.CA is set, talks TLS to the coordinators (which must
	// present coordinator certificates of that CA) and authenticates with
	// the agent certificate TLS.Cert/TLS.Key, whose name becomes the
	// agent's Name; or, with JoinToken, with a certificate the cluster
	// issues (kept in WorkDir/identity, renewed before it expires).
	TLS tlsutil.Files
	// JoinToken is exchanged once for an agent certificate (with TLS.CA
	// and no TLS.Cert).
	JoinToken string
	// PassEnv are patterns (path.Match) of the agent's environment
	// variables jobs get on top of executor.DefaultPassEnv; the rest of
	// the agent's environment never reaches a job.
	PassEnv []string
	// HTTPAddr, when set, is the listen address of the agent's own
	// /metrics (Prometheus); empty serves none.
	HTTPAddr string
	// Docker, when set, runs steps that name an image in containers; the
	// agent then announces docker=true and, at start, removes the
	// containers a previous run of it left behind. The agent does not
	// close it.
	Docker *executor.Docker
	// Sandbox, when set, runs shell steps under bubblewrap; the agent
	// announces sandbox=true.
	Sandbox *executor.Sandbox
}

// NewConfig returns a Config with every default filled in. Coordinators
// stays empty and must be set.
func NewConfig() Config {
	name, err := os.Hostname()
	if err != nil || name == "" {
		name = "kiln-agent"
	}
	return Config{
		Name:              name,
		Labels:            map[string]string{"os": runtime.GOOS, "arch": runtime.GOARCH},
		Slots:             1,
		WorkDir:           "./kiln-work",
		HeartbeatInterval: 2 * time.Second,
		LogFlushBytes:     32 << 10,
		LogFlushInterval:  20 * time.Millisecond,
		MaxUnackedBytes:   64 << 20,
		DefaultTimeout:    time.Hour,
		KillGrace:         5 * time.Second,
		ReconnectMin:      50 * time.Millisecond,
		ReconnectMax:      2 * time.Second,
		RegisterTimeout:   10 * time.Second,
		StableSession:     5 * time.Second,
	}
}

// ConfigError is returned by Validate; Field names the offending field.
type ConfigError struct {
	Field   string
	Problem string
}

// Error implements error.
func (e *ConfigError) Error() string {
	return "agent config: " + e.Field + ": " + e.Problem
}

// Validate checks the configuration and returns a *ConfigError naming the
// first bad field.
func (c *Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if len(c.Coordinators) == 0 {
		return bad("Coordinators", "at least one coordinator address is required")
	}
	for _, addr := range c.Coordinators {
		if discovery.IsTarget(addr) {
			if _, err := discovery.ParseTarget(addr); err != nil {
				return bad("Coordinators", "%v", err)
			}
			if len(c.EtcdEndpoints) == 0 {
				return bad("EtcdEndpoints", "%q needs etcd endpoints", addr)
			}
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
			return bad("Coordinators", "%q is not a host:port address", addr)
		}
	}
	if c.Name == "" {
		return bad("Name", "must not be empty")
	}
	for k := range c.Labels {
		if k == "" {
			return bad("Labels", "label keys must not be empty")
		}
	}
	if c.Slots < 1 {
		return bad("Slots", "must be at least 1, got %d", c.Slots)
	}
	if c.WorkDir == "" {
		return bad("WorkDir", "must not be empty")
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"HeartbeatInterval", c.HeartbeatInterval},
		{"LogFlushInterval", c.LogFlushInterval},
		{"DefaultTimeout", c.DefaultTimeout},
		{"KillGrace", c.KillGrace},
		{"ReconnectMin", c.ReconnectMin},
		{"ReconnectMax", c.ReconnectMax},
		{"RegisterTimeout", c.RegisterTimeout},
		{"StableSession", c.StableSession},
	}
	for _, d := range durations {
		if d.d <= 0 {
			return bad(d.name, "must be positive, got %v", d.d)
		}
	}
	if c.ReconnectMax < c.ReconnectMin {
		return bad("ReconnectMax", "must be at least ReconnectMin (%v), got %v", c.ReconnectMin, c.ReconnectMax)
	}
	if err := executor.ValidatePassEnv(c.PassEnv); err != nil {
		return bad("PassEnv", "%v", err)
	}
	if err := c.TLS.Validate(); err != nil {
		return bad("TLS", "%v", err)
	}
	if c.JoinToken != "" && (c.TLS.CA == "" || c.TLS.Cert != "") {
		return bad("JoinToken", "needs tls-ca and no tls-cert (the token is exchanged for a certificate)")
	}
	if c.LogFlushBytes < 1 {
		return bad("LogFlushBytes", "must be at least 1, got %d", c.LogFlushBytes)
	}
	if c.MaxUnackedBytes < int64(c.LogFlushBytes) {
		return bad("MaxUnackedBytes", "must be at least LogFlushBytes (%d), got %d", c.LogFlushBytes, c.MaxUnackedBytes)
	}
	return nil
}
