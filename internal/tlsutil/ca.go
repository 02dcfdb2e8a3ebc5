package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a --dir.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Validity defaults.
const (
	// DefaultCAValidity is how long a new CA is valid.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultCertValidity is how long `kilnctl tls cert create` certificates are valid.
	DefaultCertValidity = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so hosts whose clocks lag accept a new certificate.
	clockSkew = 5 * time.Minute
)

// MaxHosts bounds the host names and addresses of one certificate.
const MaxHosts = 64

// CA is a loaded certificate authority: its certificate and signing key.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     crypto.Signer
}

// NewKey returns a new P-256 private key, the key type of every Kiln
// certificate.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

func serial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return n, nil
}

// CreateCA writes a new CA into dir (ca.pem, ca-key.pem with mode 0600).
// It refuses to overwrite an existing CA: every certificate of the cluster
// chains to it.
func CreateCA(dir, commonName string, validity time.Duration, now time.Time) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("CA validity %s must be positive", validity)
	}
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Kiln"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse new CA certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	keyPath := filepath.Join(dir, CAKeyFile)
	certPath := filepath.Join(dir, CACertFile)
	for _, p := range []string{keyPath, certPath} {
		if _, err := os.Stat(p); err == nil {
			return nil, fmt.Errorf("%s exists; refusing to replace the CA every certificate chains to (use another --dir)", p)
		}
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: certPEM, Key: key}, nil
}

// LoadCA reads a CA certificate and its private key.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA %s / %s: %w", certFile, keyFile, err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s cannot sign", keyFile)
	}
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), Key: signer}, nil
}

// IssueRequest describes one certificate to issue.
type IssueRequest struct {
	Identity Identity
	// Hosts are DNS names and IP addresses the holder serves on
	// (coordinators; ignored for other roles' server use, but recorded).
	Hosts []string
	// PublicKey is the holder's key.
	PublicKey crypto.PublicKey
	// Validity is how long the certificate is valid from now.
	Validity time.Duration
	// Now is the issue time (tests); zero means time.Now().
	Now time.Time
}

// Issue signs a certificate for req and returns it PEM-encoded.
// Coordinator certificates may serve TLS and authenticate as clients (to
// their peers); agent and client certificates authenticate only.
func (ca *CA) Issue(req IssueRequest) ([]byte, error) {
	if err := req.Identity.Validate(); err != nil {
		return nil, err
	}
	if req.Validity <= 0 {
		return nil, fmt.Errorf("validity %s must be positive", req.Validity)
	}
	if len(req.Hosts) > MaxHosts {
		return nil, fmt.Errorf("%d hosts; the limit is %d", len(req.Hosts), MaxHosts)
	}
	if req.PublicKey == nil {
		return nil, errors.New("no public key")
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(req.Validity)
	if notAfter.After(ca.Cert.NotAfter) {
		// A certificate never outlives the CA that vouches for it.
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject: pkix.Name{
			CommonName:         req.Identity.Name,
			OrganizationalUnit: []string{string(req.Identity.Role)},
			Organization:       []string{"Kiln"},
		},
		// Backdated for hosts whose clocks lag, by at most a tenth of the
		// validity so short-lived certificates are renewed on time.
		NotBefore:   now.Add(-min(clockSkew, req.Validity/10)),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{req.Identity.URI()},
	}
	if req.Identity.Role == RoleCoordinator {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	for _, h := range req.Hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			continue
		}
		if strings.ContainsAny(h, " /:@") {
			return nil, fmt.Errorf("host %q is neither an IP address nor a DNS name", h)
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, req.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", req.Identity, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// WriteCertAndKey writes NAME.pem and NAME-key.pem (0600) into dir,
// refusing to overwrite either.
func WriteCertAndKey(dir, name string, certPEM []byte, key crypto.Signer) (certPath, keyPath string, err error) {
	if err := ValidateName(name); err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("create %s: %w", dir, err)
	}
	certPath = filepath.Join(dir, name+".pem")
	keyPath = filepath.Join(dir, name+"-key.pem")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return "", "", fmt.Errorf("%s exists; refusing to replace it", p)
		}
	}
	if err := writeKey(keyPath, key); err != nil {
		return "", "", err
	}
	if err := writeNew(certPath, certPEM, 0o644); err != nil {
		_ = os.Remove(keyPath)
		return "", "", err
	}
	return certPath, keyPath, nil
}

// EncodeKey returns key as a PKCS#8 PEM block.
func EncodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func writeKey(path string, key crypto.Signer) error {
	data, err := EncodeKey(key)
	if err != nil {
		return err
	}
	return writeNew(path, data, 0o600)
}

// writeNew creates path exclusively with mode perm.
func writeNew(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
