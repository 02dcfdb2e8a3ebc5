package raftnode

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// TLS configures the transport to run over mutual TLS: each end presents
// its coordinator certificate and accepts only coordinator certificates of
// the cluster CA, so nothing else can replicate into or vote in the
// cluster.
type TLS struct {
	// Pool holds the cluster CA.
	Pool *x509.CertPool
	// Cert is this coordinator's certificate.
	Cert *tlsutil.Holder
}

// tlsStreamLayer is a raft.StreamLayer over TLS. Handshakes happen on the
// first read or write of a connection, inside the transport's own
// goroutines and timeouts; a peer that fails the handshake gets its
// connection closed by the transport.
type tlsStreamLayer struct {
	net.Listener
	advertise net.Addr
	tls       TLS
}

func newTLSStreamLayer(bind string, advertise net.Addr, t TLS) (*tlsStreamLayer, error) {
	if t.Pool == nil || t.Cert == nil {
		return nil, errors.New("raft tls: CA pool and certificate are required")
	}
	l, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	if advertise == nil {
		advertise = l.Addr()
	}
	// A name (hostAddr) is advertised as written: peers resolve it.
	_, named := advertise.(hostAddr)
	if tcp, ok := advertise.(*net.TCPAddr); !named && (!ok || tcp.IP == nil || tcp.IP.IsUnspecified()) {
		l.Close()
		return nil, fmt.Errorf("raft address %v is not advertisable", advertise)
	}
	return &tlsStreamLayer{
		Listener:  tls.NewListener(l, tlsutil.PeerServerConfig(t.Pool, t.Cert)),
		advertise: advertise,
		tls:       t,
	}, nil
}

// Dial connects to a peer and completes the handshake within timeout.
func (s *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	cfg, err := tlsutil.PeerClientConfig(s.tls.Pool, s.tls.Cert, string(address))
	if err != nil {
		return nil, err
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: cfg}
	conn, err := d.Dial("tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("raft tls dial %s: %w", address, err)
	}
	return conn, nil
}

// Addr is the advertised address.
func (s *tlsStreamLayer) Addr() net.Addr { return s.advertise }
