package raftnode

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/hashicorp/raft"
)

// hostAddr is a Raft address advertised as written, "name:port": peers
// resolve the name each time they dial, so a member whose IP changes (a
// Kubernetes pod rescheduled behind its stable StatefulSet name, a
// container recreated by docker-compose) stays reachable under the
// address stored in the replicated configuration.
type hostAddr string

// Network is always tcp.
func (a hostAddr) Network() string { return "tcp" }

// String is the address as written.
func (a hostAddr) String() string { return string(a) }

// advertiseName returns the address to advertise as written when its host
// is a name (not an IP literal) and its port is fixed, else nil: IP
// addresses keep the transport's own resolution, and port 0 advertises
// the port bound.
func advertiseName(raftAddr string) net.Addr {
	host, port, err := net.SplitHostPort(raftAddr)
	if err != nil || port == "0" || host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	return hostAddr(raftAddr)
}

// tcpStreamLayer is the plain TCP raft.StreamLayer (what
// raft.NewTCPTransport builds) with an advertised address that may be a
// host name, which the library's own layer refuses.
type tcpStreamLayer struct {
	net.Listener
	advertise net.Addr
}

func newTCPStreamLayer(bind string, advertise net.Addr) (*tcpStreamLayer, error) {
	l, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &tcpStreamLayer{Listener: l, advertise: advertise}, nil
}

// Dial connects to a peer, resolving its name now.
func (s *tcpStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", string(address), timeout)
	if err != nil {
		return nil, fmt.Errorf("raft dial %s: %w", address, err)
	}
	return conn, nil
}

// Addr is the advertised address.
func (s *tcpStreamLayer) Addr() net.Addr { return s.advertise }
