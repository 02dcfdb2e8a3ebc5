package tlsutil

import (
	"crypto/x509"
	"testing"
	"time"
)

// FuzzParseIdentityURI: any string either parses to an identity that
// validates and prints back to itself, or is an error; never a panic.
func FuzzParseIdentityURI(f *testing.F) {
	for _, s := range []string{"kiln://agent/a1", "kiln://coordinator/n1", "kiln://client/alice@x", "kiln://agent/", "kiln://x/y", "kiln:///a", "kiln://agent/a/../b", "kiln://agent/%41"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentityURI(s)
		if err != nil {
			return
		}
		if verr := id.Validate(); verr != nil {
			t.Fatalf("%q parsed to an invalid identity %v: %v", s, id, verr)
		}
		if got := id.URI().String(); got != s {
			t.Fatalf("%q parsed to %v which prints as %q", s, id, got)
		}
	})
}

// FuzzIdentityOfCertificate: arbitrary DER that x509 parses never makes
// IdentityOf panic, and an identity it returns is valid.
func FuzzIdentityOfCertificate(f *testing.F) {
	ca, err := CreateCA(f.TempDir(), "fuzz", time.Hour, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ca.Cert.Raw)
	key, _ := NewKey()
	for _, id := range []Identity{{RoleAgent, "a1"}, {RoleCoordinator, "n1"}} {
		p, err := ca.Issue(IssueRequest{Identity: id, PublicKey: key.Public(), Validity: time.Hour, Hosts: []string{"127.0.0.1"}})
		if err != nil {
			f.Fatal(err)
		}
		c, _ := ParseCertPEM(p)
		f.Add(c.Raw)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		id, err := IdentityOf(cert)
		if err == nil {
			if verr := id.Validate(); verr != nil {
				t.Fatalf("IdentityOf returned invalid %v: %v", id, verr)
			}
		}
	})
}

// FuzzParseCSR: the enrollment RPC's request decoder never panics and
// only accepts requests whose signature checks.
func FuzzParseCSR(f *testing.F) {
	key, _ := NewKey()
	der, err := CreateCSR(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(der)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			return
		}
		if csr.CheckSignature() != nil {
			t.Fatal("ParseCSR accepted a request whose signature does not check")
		}
	})
}
