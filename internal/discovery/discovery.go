// Package discovery finds coordinators through etcd: a coordinator
// registers its gRPC address under a key prefix with a lease it keeps
// alive (Register), and clients dial "etcd:///PREFIX" targets through the
// etcd v3 client's gRPC naming resolver (Resolver), which follows the
// registrations as coordinators come and go. Leader following stays the
// clients' job: a call through the etcd target reaches some coordinator,
// whose "not leader" answer names the leader.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	etcdresolver "go.etcd.io/etcd/client/v3/naming/resolver"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Scheme is the URL scheme of etcd targets: etcd:///PREFIX.
const Scheme = "etcd"

// DefaultPrefix is the key prefix coordinators register under.
const DefaultPrefix = "kiln/coordinators"

// EnvEndpoints names the environment variable holding the etcd endpoints
// (comma-separated) when --etcd-endpoints is not given.
const EnvEndpoints = "KILN_ETCD_ENDPOINTS"

// DefaultTTL is the registration lease's TTL: a coordinator that dies
// without deregistering disappears from the resolver this long after.
const DefaultTTL = 10 * time.Second

// dialTimeout bounds the connection to etcd when a client is created.
const dialTimeout = 5 * time.Second

// IsTarget reports whether addr is an etcd target (etcd:///PREFIX) rather
// than a host:port address.
func IsTarget(addr string) bool {
	return strings.HasPrefix(addr, Scheme+"://")
}

// ParseTarget returns the key prefix of an etcd:///PREFIX target.
func ParseTarget(addr string) (string, error) {
	rest, ok := strings.CutPrefix(addr, Scheme+"://")
	if !ok {
		return "", fmt.Errorf("%q is not an %s:///PREFIX target", addr, Scheme)
	}
	if !strings.HasPrefix(rest, "/") {
		return "", fmt.Errorf("%q: an etcd target has no authority: write %s:///PREFIX", addr, Scheme)
	}
	prefix, err := CleanPrefix(rest)
	if err != nil {
		return "", fmt.Errorf("%q: %w", addr, err)
	}
	return prefix, nil
}

// CleanPrefix trims the slashes around a key prefix and rejects an empty
// one or one with empty path segments.
func CleanPrefix(p string) (string, error) {
	p = strings.Trim(strings.TrimSpace(p), "/")
	if p == "" {
		return "", errors.New("the etcd key prefix is empty")
	}
	if strings.Contains(p, "//") {
		return "", fmt.Errorf("etcd key prefix %q has an empty segment", p)
	}
	return p, nil
}

// ParseEndpoints splits a comma-separated endpoint list (http://host:port,
// https://host:port or host:port) and checks each entry.
func ParseEndpoints(s string) ([]string, error) {
	var out []string
	for _, e := range strings.Split(s, ",") {
		e = strings.TrimSpace(e)
		if e == "" {
			continue
		}
		hostport := e
		if strings.Contains(e, "://") {
			u, err := url.Parse(e)
			if err != nil {
				return nil, fmt.Errorf("etcd endpoint %q: %w", e, err)
			}
			if u.Scheme != "http" && u.Scheme != "https" {
				return nil, fmt.Errorf("etcd endpoint %q: scheme must be http or https", e)
			}
			if u.Path != "" && u.Path != "/" {
				return nil, fmt.Errorf("etcd endpoint %q: must not have a path", e)
			}
			hostport = u.Host
		}
		if _, port, err := net.SplitHostPort(hostport); err != nil || port == "" {
			return nil, fmt.Errorf("etcd endpoint %q: not host:port", e)
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, errors.New("no etcd endpoints given")
	}
	return out, nil
}

// newClient connects to etcd. The etcd client's own logs go to log at warn
// level and above.
func newClient(eps []string, log *zap.Logger) (*clientv3.Client, error) {
	if log == nil {
		log = zap.NewNop()
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: dialTimeout,
		Logger:      log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel)),
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(eps, ","), err)
	}
	return cli, nil
}

// Resolver resolves etcd:///PREFIX targets for gRPC. Close it after the
// connections that use it.
type Resolver struct {
	cli  *clientv3.Client
	opts grpc.DialOption
}

// NewResolver connects to the etcd endpoints. No request is sent until a
// connection dials an etcd target.
func NewResolver(eps []string, log *zap.Logger) (*Resolver, error) {
	cli, err := newClient(eps, log)
	if err != nil {
		return nil, err
	}
	b, err := etcdresolver.NewBuilder(cli)
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("etcd resolver: %w", err)
	}
	return &Resolver{cli: cli, opts: grpc.WithResolvers(b)}, nil
}

// DialOption makes a grpc.NewClient resolve etcd:/// targets with this
// resolver (host:port targets are unaffected).
func (r *Resolver) DialOption() grpc.DialOption { return r.opts }

// Close closes the etcd client.
func (r *Resolver) Close() error { return r.cli.Close() }

// Registration is what Register publishes.
type Registration struct {
	// Endpoints are etcd's client URLs.
	Endpoints []string
	// Prefix is the key prefix (default DefaultPrefix).
	Prefix string
	// NodeID names the key: PREFIX/NODE_ID.
	NodeID string
	// Addr is the gRPC address clients dial.
	Addr string
	// TTL is the lease's TTL (default DefaultTTL; at least 2s: etcd
	// grants whole seconds and the keepalive runs every TTL/3).
	TTL time.Duration
}

// Key returns the etcd key of the registration.
func (r Registration) Key() string { return r.Prefix + "/" + r.NodeID }

func (r *Registration) validate() error {
	if len(r.Endpoints) == 0 {
		return errors.New("etcd registration: no endpoints")
	}
	if r.Prefix == "" {
		r.Prefix = DefaultPrefix
	}
	p, err := CleanPrefix(r.Prefix)
	if err != nil {
		return fmt.Errorf("etcd registration: %w", err)
	}
	r.Prefix = p
	if r.NodeID == "" || strings.Contains(r.NodeID, "/") {
		return fmt.Errorf("etcd registration: node id %q must be non-empty without '/'", r.NodeID)
	}
	if _, _, err := net.SplitHostPort(r.Addr); err != nil {
		return fmt.Errorf("etcd registration: address %q: %w", r.Addr, err)
	}
	if r.TTL == 0 {
		r.TTL = DefaultTTL
	}
	if r.TTL < 2*time.Second {
		return fmt.Errorf("etcd registration: ttl %s is below the 2s minimum", r.TTL)
	}
	return nil
}

// Register publishes reg.Addr under reg.Key() with a lease and keeps the
// lease alive until ctx ends; then it revokes the lease, which deletes the
// key at once. When etcd is unreachable or the lease is lost (etcd expired
// it while unreachable), Register grants a new lease and registers again,
// backing off from 200ms to 5s. It returns nil after ctx ends, or an error
// for a bad registration.
func Register(ctx context.Context, reg Registration, log *zap.Logger) error {
	if err := reg.validate(); err != nil {
		return err
	}
	if log == nil {
		log = zap.NewNop()
	}
	cli, err := newClient(reg.Endpoints, log)
	if err != nil {
		return err
	}
	defer cli.Close()
	em, err := endpoints.NewManager(cli, reg.Prefix)
	if err != nil {
		return fmt.Errorf("etcd endpoint manager: %w", err)
	}
	log = log.With(zap.String("key", reg.Key()), zap.String("addr", reg.Addr))
	backoff := 200 * time.Millisecond
	for {
		err := registerOnce(ctx, cli, em, reg, log)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("etcd registration lost; registering again", zap.Duration("backoff", backoff), zap.Error(err))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// registerOnce grants a lease, puts the key with it and keeps it alive
// until ctx ends (revoking it, nil error) or the keepalive stops (error).
func registerOnce(ctx context.Context, cli *clientv3.Client, em endpoints.Manager, reg Registration, log *zap.Logger) error {
	opCtx, cancel := context.WithTimeout(ctx, reg.TTL)
	lease, err := cli.Grant(opCtx, int64(reg.TTL/time.Second))
	cancel()
	if err != nil {
		return fmt.Errorf("grant lease: %w", err)
	}
	defer func() {
		// Revoke deletes the key now instead of a TTL later. ctx may be
		// done already: use a fresh, bounded one.
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := cli.Revoke(rctx, lease.ID); err != nil {
			log.Debug("etcd lease revoke failed (it expires by itself)", zap.Error(err))
		}
	}()
	opCtx, cancel = context.WithTimeout(ctx, reg.TTL)
	err = em.AddEndpoint(opCtx, reg.Key(), endpoints.Endpoint{Addr: reg.Addr}, clientv3.WithLease(lease.ID))
	cancel()
	if err != nil {
		return fmt.Errorf("put %s: %w", reg.Key(), err)
	}
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	ch, err := cli.KeepAlive(kctx, lease.ID)
	if err != nil {
		return fmt.Errorf("keep lease alive: %w", err)
	}
	log.Info("registered in etcd", zap.Int64("lease", int64(lease.ID)), zap.Duration("ttl", reg.TTL))
	for range ch {
		// Each answer renewed the lease. The channel closes when ctx ends
		// or the lease can no longer be renewed.
	}
	if ctx.Err() != nil {
		return nil
	}
	return errors.New("lease keepalive stopped")
}
