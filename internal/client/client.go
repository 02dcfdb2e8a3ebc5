// Package client is a gRPC client for a Kiln coordinator cluster. It keeps
// one connection per coordinator address, sends each call to the coordinator
// it believes is the leader, follows "not leader" redirects and moves on to
// the next address when a coordinator is unreachable.
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/discovery"
	"github.com/kiln-ci/kiln/internal/leader"
)

// Backoff bounds between attempts at unreachable coordinators.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
	// maxRedirects is how many "not leader" redirects in a row are followed
	// at once (leader.Follow); after that the client backs off (two nodes
	// pointing at each other during a leadership change must not spin).
	maxRedirects = 3
)

// Keepalive settings for coordinator connections. Coordinators must permit
// pings this often (keepalive.EnforcementPolicy MinTime <= KeepaliveTime,
// PermitWithoutStream) or they close the connection with "too_many_pings".
const (
	KeepaliveTime    = 10 * time.Second
	KeepaliveTimeout = 5 * time.Second
)

// Client sends calls to a coordinator cluster. It is safe for concurrent
// use.
type Client struct {
	log   *zap.Logger
	addrs []string

	creds credentials.TransportCredentials
	// token, when set, is sent as the bearer credential of every call.
	token string

	mu      sync.Mutex
	conns   map[string]*grpc.ClientConn
	current string // the address calls go to first
	closed  bool

	// etcdEndpoints are the etcd servers of WithEtcd.
	etcdEndpoints []string
	// etcd resolves etcd:///PREFIX addresses (WithEtcd); nil without.
	etcd *discovery.Resolver
}

// Option configures a Client.
type Option func(*Client)

// WithCredentials sets the transport credentials of every connection
// (default: plaintext); see tlsutil.ClientConfig for TLS.
func WithCredentials(creds credentials.TransportCredentials) Option {
	return func(c *Client) { c.creds = creds }
}

// WithToken sends token as "authorization: Bearer <token>" with every call
// (coordinators started with --acl require one).
func WithToken(token string) Option { return func(c *Client) { c.token = token } }

// WithEtcd lets addrs hold etcd:///PREFIX targets, resolved through the
// etcd servers at endpoints (the coordinators registered under PREFIX). A
// call through such a target reaches one registered coordinator; a "not
// leader" answer moves the client to the leader's own address, and when
// that fails the client returns to the target.
func WithEtcd(endpoints []string) Option {
	return func(c *Client) { c.etcdEndpoints = endpoints }
}

// New returns a client for the coordinators at addrs (host:port, or
// etcd:///PREFIX with WithEtcd). No connection is made until the first
// call. log may be nil.
func New(addrs []string, log *zap.Logger, opts ...Option) (*Client, error) {
	var clean []string
	for _, a := range addrs {
		a = strings.TrimSpace(a)
		if a != "" && !slices.Contains(clean, a) {
			clean = append(clean, a)
		}
	}
	if len(clean) == 0 {
		return nil, errors.New("client: no coordinator addresses")
	}
	if log == nil {
		log = zap.NewNop()
	}
	c := &Client{log: log, addrs: clean, conns: map[string]*grpc.ClientConn{}, current: clean[0], creds: insecure.NewCredentials()}
	for _, o := range opts {
		o(c)
	}
	if slices.ContainsFunc(clean, discovery.IsTarget) {
		for _, a := range clean {
			if !discovery.IsTarget(a) {
				continue
			}
			if _, err := discovery.ParseTarget(a); err != nil {
				return nil, fmt.Errorf("client: %w", err)
			}
		}
		if len(c.etcdEndpoints) == 0 {
			return nil, fmt.Errorf("client: %s needs etcd endpoints (--etcd-endpoints or $%s)", clean[slices.IndexFunc(clean, discovery.IsTarget)], discovery.EnvEndpoints)
		}
		r, err := discovery.NewResolver(c.etcdEndpoints, log)
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		c.etcd = r
	}
	return c, nil
}

// Addrs returns the configured coordinator addresses.
func (c *Client) Addrs() []string { return slices.Clone(c.addrs) }

// Close closes every connection. Calls after Close fail.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for addr, conn := range c.conns {
		if err := conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", addr, err))
		}
	}
	clear(c.conns)
	if c.etcd != nil {
		if err := c.etcd.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close etcd resolver: %w", err))
		}
		c.etcd = nil
	}
	return errors.Join(errs...)
}

// ErrClosed is returned by Do after Close.
var ErrClosed = errors.New("client: closed")

// UnavailableError is returned by Do when no coordinator could serve the
// call before the context ended. It unwraps to the last error, so
// status.Code reports codes.Unavailable.
type UnavailableError struct {
	// Tried lists the addresses tried, in order of first use.
	Tried []string
	// Last is the last error seen.
	Last error
}

// Error names the addresses tried and the last error's message.
func (e *UnavailableError) Error() string {
	msg := e.Last.Error()
	if st, ok := status.FromError(e.Last); ok {
		msg = st.Message()
	}
	return fmt.Sprintf("no coordinator reachable at %s: %s", strings.Join(e.Tried, ","), msg)
}

// Unwrap returns the last error.
func (e *UnavailableError) Unwrap() error { return e.Last }

// GRPCStatus reports the last error's status (codes.Unavailable) with this
// error's message, so callers can use status.Code and status.Convert.
func (e *UnavailableError) GRPCStatus() *status.Status {
	return status.New(codes.Unavailable, e.Error())
}

// Do runs fn against the current coordinator. When fn fails with a "not
// leader" answer naming the leader, Do switches to that address and runs fn
// again at once. When it fails with codes.Unavailable otherwise (no leader
// known, the coordinator down or unreachable) Do moves to the next address
// after a jittered backoff (50ms to 1s). It keeps going until ctx ends and
// then returns an *UnavailableError. Any other error, and success, return
// at once.
//
// fn may run several times; anything it sends must be safe to repeat (the
// API's mutating calls carry a request_id for that).
func (c *Client) Do(ctx context.Context, fn func(ctx context.Context, conn grpc.ClientConnInterface) error) error {
	var (
		tried    []string
		lastErr  error
		failures int // consecutive unavailable answers, for the backoff
	)
	for {
		if err := ctx.Err(); err != nil {
			if lastErr == nil {
				return fmt.Errorf("client: %w", err)
			}
			return &UnavailableError{Tried: tried, Last: lastErr}
		}
		addr := c.currentAddr()
		var callErr error // of the last call, for lastErr on a redirect
		err := leader.Follow(ctx, []string{addr}, maxRedirects, func(ctx context.Context, at string) error {
			if at != addr { // addr answered that at is the leader
				c.log.Debug("coordinator is not the leader; redirecting",
					zap.String("addr", addr), zap.String("leader", at))
				c.setCurrent(addr, at)
				lastErr = callErr
				addr = at
			}
			if !slices.Contains(tried, at) {
				tried = append(tried, at)
			}
			conn, err := c.conn(at)
			if err != nil {
				return err
			}
			callErr = fn(ctx, conn)
			return callErr
		})
		if err == nil {
			return nil
		}
		if status.Code(err) != codes.Unavailable {
			if ctx.Err() != nil && lastErr != nil && isContextCode(err) {
				// The deadline ran out during a retry: report the cause of
				// the retries, not the deadline.
				return &UnavailableError{Tried: tried, Last: lastErr}
			}
			return err
		}
		lastErr = err
		next := c.advance(addr)
		d := backoffDelay(failures)
		failures++
		c.log.Debug("coordinator unavailable; trying the next one",
			zap.String("addr", addr), zap.String("next", next), zap.Duration("backoff", d), zap.Error(err))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

func isContextCode(err error) bool {
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// backoffDelay is an exponential delay from minBackoff to maxBackoff with
// the upper half jittered.
func backoffDelay(failures int) time.Duration {
	d := minBackoff << min(failures, 10)
	if d > maxBackoff {
		d = maxBackoff
	}
	return d/2 + rand.N(d/2+1)
}

func (c *Client) currentAddr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// setCurrent switches from addr to next, unless another call already moved
// the client away from addr.
func (c *Client) setCurrent(addr, next string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current == addr {
		c.current = next
	}
}

// advance moves past addr to the next configured address and returns the
// new current address. An address learned from a redirect that is not in
// the list moves to the first configured address.
func (c *Client) advance(addr string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current != addr {
		return c.current
	}
	i := slices.Index(c.addrs, addr)
	c.current = c.addrs[(i+1)%len(c.addrs)]
	return c.current
}

// conn returns the cached connection to addr, creating it if needed.
func (c *Client) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if conn, ok := c.conns[addr]; ok {
		return conn, nil
	}
	var extra []grpc.DialOption
	if c.token != "" {
		extra = append(extra, grpc.WithPerRPCCredentials(authn.Bearer(c.token)))
	}
	if c.etcd != nil {
		extra = append(extra, c.etcd.DialOption())
	}
	conn, err := grpc.NewClient(addr, append(extra,
		grpc.WithTransportCredentials(c.creds),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                KeepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: true,
		}),
		// A coordinator that does not answer the TCP handshake (a dead
		// host) fails the call after a few seconds instead of holding it
		// for gRPC's default 20s, so the next address gets its turn.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 3 * time.Second,
		}),
	)...)
	if err != nil {
		return nil, fmt.Errorf("client: connect to %s: %w", addr, err)
	}
	c.conns[addr] = conn
	return conn, nil
}
