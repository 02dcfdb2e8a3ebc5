package tlsutil

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"
)

// MaxCSRBytes bounds a certificate signing request on the wire.
const MaxCSRBytes = 16 << 10

// CreateCSR returns a DER certificate signing request for key. Only its
// public key and signature matter: the issuer decides the identity.
func CreateCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return der, nil
}

// ParseCSR parses a DER certificate signing request and checks that its
// signature matches its public key (the requester holds the private key).
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("certificate request is empty")
	}
	if len(der) > MaxCSRBytes {
		return nil, fmt.Errorf("certificate request is %d bytes; the limit is %d", len(der), MaxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request signature: %w", err)
	}
	return csr, nil
}

// SignCSR issues a certificate for id to the key of a DER certificate
// request. Everything the request asks for besides its key (names, SANs,
// extensions) is ignored.
func (ca *CA) SignCSR(der []byte, id Identity, validity time.Duration, now time.Time) ([]byte, error) {
	csr, err := ParseCSR(der)
	if err != nil {
		return nil, err
	}
	return ca.Issue(IssueRequest{Identity: id, PublicKey: csr.PublicKey, Validity: validity, Now: now})
}
