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
}

// New returns an empty pool whose connections use plaintext.
func New() *Pool { return NewWithCredentials(nil) }

// NewWithCredentials returns an empty pool whose connections use creds
// (nil: plaintext). With TLS, creds present this coordinator's own
// certificate, which the cluster-internal methods require.
func NewWithCredentials(creds credentials.TransportCredentials) *Pool {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &Pool{creds: creds, conns: map[string]*grpc.ClientConn{}}
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
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(p.creds))
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
