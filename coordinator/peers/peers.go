// Package peers keeps one gRPC connection per peer coordinator address, so
// that coordinator-to-coordinator calls (read index, joins) do not dial
// for every request.
package peers

import (
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Pool hands out shared client connections by address. The zero value is
// not usable; call New.
type Pool struct {
	creds  credentials.TransportCredentials
	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
	// opts are added to every dial (the peer credential with --acl).
	opts []grpc.DialOption
}

// New returns an empty pool whose connections use plaintext; opts are
// added to every dial (e.g. the peer credential with --acl).
func New(opts ...grpc.DialOption) *Pool { return NewWithCredentials(nil, opts...) }

// NewWithCredentials returns an empty pool whose connections use creds
// (nil: plaintext). With TLS, creds present this coordinator's own
// certificate, which the cluster-internal methods require. opts are added
// to every dial (the peer credential with --acl).
func NewWithCredentials(creds credentials.TransportCredentials, opts ...grpc.DialOption) *Pool {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &Pool{creds: creds, conns: map[string]*grpc.ClientConn{}, opts: opts}
}

// Conn returns the connection to addr, creating it on first use. gRPC
// connections reconnect by themselves, so one per address is enough.
func (p *Pool) Conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("peer pool closed")
	}
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(p.creds)}, p.opts...)...)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection; later Conn calls fail.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}
