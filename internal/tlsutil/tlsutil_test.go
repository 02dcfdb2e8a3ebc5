package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA creates a CA in a temporary directory.
func testCA(t testing.TB) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := CreateCA(dir, "test CA", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

// issue returns a key pair for id signed by ca.
func issue(t testing.TB, ca *CA, id Identity, hosts ...string) *tls.Certificate {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.Issue(IssueRequest{Identity: id, Hosts: hosts, PublicKey: key.Public(), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pair, got, err := KeyPairFromPEM(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if got != id {
		t.Fatalf("issued certificate names %v, want %v", got, id)
	}
	return pair
}

func pool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func TestCreateCARefusesToReplaceAnExistingCA(t *testing.T) {
	_, dir := testCA(t)
	before, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCA(dir, "again", time.Hour, time.Now()); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("second CreateCA in the same dir: err = %v, want 'exists'", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if string(before) != string(after) {
		t.Fatal("the CA certificate changed")
	}
	st, err := os.Stat(filepath.Join(dir, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	if _, err := LoadCA(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
}

func TestIssuedCertificateCarriesRoleAndName(t *testing.T) {
	ca, _ := testCA(t)
	pair := issue(t, ca, Identity{Role: RoleCoordinator, Name: "n1"}, "127.0.0.1", "kiln-1.example")
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "n1" || len(leaf.Subject.OrganizationalUnit) != 1 || leaf.Subject.OrganizationalUnit[0] != "coordinator" {
		t.Errorf("subject %v, want CN=n1 OU=coordinator", leaf.Subject)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(leaf.DNSNames) != 1 {
		t.Errorf("SANs ip=%v dns=%v", leaf.IPAddresses, leaf.DNSNames)
	}
	if err := Verify(leaf, pool(ca)); err != nil {
		t.Errorf("verify against its CA: %v", err)
	}
	other, _ := testCA(t)
	if err := Verify(leaf, pool(other)); err == nil {
		t.Error("a certificate verified against another CA")
	}
	if _, err := ca.Issue(IssueRequest{Identity: Identity{Role: "admin", Name: "x"}, PublicKey: leaf.PublicKey, Validity: time.Hour}); err == nil {
		t.Error("issued a certificate with an unknown role")
	}
	if _, err := ca.Issue(IssueRequest{Identity: Identity{Role: RoleAgent, Name: "../x"}, PublicKey: leaf.PublicKey, Validity: time.Hour}); err == nil {
		t.Error("issued a certificate with a bad name")
	}
}

func TestIdentityURIRoundTrip(t *testing.T) {
	for _, id := range []Identity{{RoleAgent, "a1"}, {RoleClient, "alice@example.com"}, {RoleCoordinator, "n-1.x_y"}} {
		got, err := ParseIdentityURI(id.URI().String())
		if err != nil || got != id {
			t.Errorf("%v: round trip gave %v, %v", id, got, err)
		}
	}
	for _, bad := range []string{"", "kiln://agent", "kiln://agent/", "kiln://root/a", "http://agent/a", "kiln://agent/a/b", "kiln://agent/-a", "kiln://agent/a%2Fb", "kiln://agent/" + strings.Repeat("a", MaxNameBytes+1)} {
		if id, err := ParseIdentityURI(bad); err == nil {
			t.Errorf("ParseIdentityURI(%q) = %v, want an error", bad, id)
		}
	}
}

func TestIdentityOfNeedsExactlyOneKilnURI(t *testing.T) {
	u1, _ := url.Parse("kiln://agent/a1")
	u2, _ := url.Parse("kiln://agent/a2")
	other, _ := url.Parse("spiffe://x/y")
	cases := []struct {
		uris []*url.URL
		ok   bool
	}{
		{nil, false},
		{[]*url.URL{other}, false},
		{[]*url.URL{u1}, true},
		{[]*url.URL{other, u1}, true},
		{[]*url.URL{u1, u2}, false},
	}
	for _, c := range cases {
		_, err := IdentityOf(&x509.Certificate{URIs: c.uris})
		if (err == nil) != c.ok {
			t.Errorf("URIs %v: err = %v, want ok=%v", c.uris, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrNoIdentity) {
			t.Errorf("URIs %v: err = %v, want ErrNoIdentity", c.uris, err)
		}
	}
}

func TestSignCSRUsesOnlyTheKey(t *testing.T) {
	ca, _ := testCA(t)
	key, _ := NewKey()
	der, err := CreateCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignCSR(der, Identity{Role: RoleAgent, Name: "a1"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := EncodeKey(key)
	if _, id, err := KeyPairFromPEM(certPEM, keyPEM); err != nil || id != (Identity{RoleAgent, "a1"}) {
		t.Fatalf("signed certificate: %v %v", id, err)
	}
	corrupt := append([]byte(nil), der...)
	corrupt[len(corrupt)-3] ^= 0xff
	if _, err := ca.SignCSR(corrupt, Identity{Role: RoleAgent, Name: "a1"}, time.Hour, time.Now()); err == nil {
		t.Fatal("signed a request with a broken signature")
	}
	if _, err := ParseCSR(make([]byte, MaxCSRBytes+1)); err == nil {
		t.Fatal("accepted an oversized request")
	}
}

// handshake runs one TLS handshake between the configs over loopback TCP
// and returns the client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (cerr, serr error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, server)
		err = s.Handshake()
		if err == nil {
			// Echo one byte: a TLS 1.3 client learns the server's verdict
			// on its certificate only when it reads.
			b := make([]byte, 1)
			if _, err = s.Read(b); err == nil {
				_, err = s.Write(b)
			}
		}
		done <- err
	}()
	raw, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(raw, client)
	cerr = c.Handshake()
	if cerr == nil {
		if _, cerr = c.Write([]byte{1}); cerr == nil {
			_, cerr = c.Read(make([]byte, 1))
		}
	}
	raw.Close()
	serr = <-done
	return cerr, serr
}

func TestRaftPeersMustBothBeCoordinators(t *testing.T) {
	ca, _ := testCA(t)
	p := pool(ca)
	n1 := NewHolder(issue(t, ca, Identity{RoleCoordinator, "n1"}, "127.0.0.1"))
	n2 := NewHolder(issue(t, ca, Identity{RoleCoordinator, "n2"}, "127.0.0.1"))
	agent := NewHolder(issue(t, ca, Identity{RoleAgent, "a1"}))
	stranger, _ := testCA(t)
	forged := NewHolder(issue(t, stranger, Identity{RoleCoordinator, "n1"}, "127.0.0.1"))

	clientCfg := func(h *Holder) *tls.Config {
		c, err := PeerClientConfig(p, h, "127.0.0.1:1")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if cerr, serr := handshake(t, PeerServerConfig(p, n1), clientCfg(n2)); cerr != nil || serr != nil {
		t.Fatalf("coordinator to coordinator: client %v, server %v", cerr, serr)
	}
	for name, c := range map[string]*Holder{"agent certificate": agent, "another CA's coordinator": forged, "no certificate": nil} {
		cfg := clientCfg(c)
		if c == nil {
			cfg.GetClientCertificate = nil
		}
		_, serr := handshake(t, PeerServerConfig(p, n1), cfg)
		if serr == nil {
			t.Errorf("%s: the raft listener accepted it", name)
		}
	}
	// A server with an agent certificate is refused by the dialer.
	cerr, _ := handshake(t, PeerServerConfig(p, agent), clientCfg(n2))
	if cerr == nil {
		t.Error("dialer accepted a peer with an agent certificate")
	}
}
