package cli

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// Environment variables of the TLS flags.
const (
	EnvTLSCA   = "KILN_TLS_CA"
	EnvTLSCert = "KILN_TLS_CERT"
	EnvTLSKey  = "KILN_TLS_KEY"
)

// addTLSFlags adds the global --tls-ca, --tls-cert and --tls-key flags.
func (a *app) addTLSFlags(cmd *cobra.Command) {
	pf := cmd.PersistentFlags()
	pf.StringVar(&a.tls.CA, "tls-ca", "", "CA certificate of the cluster: talk TLS and accept only coordinators it signed (default $"+EnvTLSCA+")")
	pf.StringVar(&a.tls.Cert, "tls-cert", "", "client certificate to present (default $"+EnvTLSCert+"; needed for admin calls such as cluster leave)")
	pf.StringVar(&a.tls.Key, "tls-key", "", "key of --tls-cert (default $"+EnvTLSKey+")")
}

// tlsFiles are the TLS flags, else their environment variables.
func (a *app) tlsFiles() tlsutil.Files {
	f := a.tls
	if f.CA == "" {
		f.CA = os.Getenv(EnvTLSCA)
	}
	if f.Cert == "" && f.Key == "" {
		f.Cert, f.Key = os.Getenv(EnvTLSCert), os.Getenv(EnvTLSKey)
	}
	return f
}

// clientOptions are the cluster client's TLS options (none: plaintext).
func (a *app) clientOptions() ([]client.Option, error) {
	f, err := a.contextTLS(a.tlsFiles())
	if err != nil {
		return nil, err
	}
	if err := f.Validate(); err != nil {
		return nil, usageErrorf("%v", err)
	}
	if !f.Enabled() {
		return nil, nil
	}
	pool, err := tlsutil.LoadPool(f.CA)
	if err != nil {
		return nil, usageErrorf("--tls-ca: %v", err)
	}
	var holder *tlsutil.Holder
	if f.Cert != "" {
		pair, _, err := tlsutil.LoadKeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, usageErrorf("--tls-cert: %v", err)
		}
		holder = tlsutil.NewHolder(pair)
	}
	return []client.Option{client.WithCredentials(credentials.NewTLS(tlsutil.ClientConfig(pool, holder)))}, nil
}

// tlsCommand is `kilnctl tls`: the cluster CA and its certificates.
func (a *app) tlsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster CA and certificates for coordinators, agents and clients",
	}
	ca := &cobra.Command{Use: "ca", Short: "The cluster certificate authority"}
	var caDir string
	var caValidity time.Duration
	caCreate := &cobra.Command{
		Use:   "create --dir DIR",
		Short: "Write a new CA: DIR/ca.pem and DIR/ca-key.pem (never overwritten)",
		Args:  exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if caDir == "" {
				return usageErrorf("--dir is required")
			}
			if _, err := tlsutil.CreateCA(caDir, "Kiln cluster CA", caValidity, time.Now()); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s/%s and %s/%s (keep the key secret: it signs every certificate of the cluster)\n",
				caDir, tlsutil.CACertFile, caDir, tlsutil.CAKeyFile)
			return nil
		}),
	}
	caCreate.Flags().StringVar(&caDir, "dir", "", "directory for ca.pem and ca-key.pem")
	caCreate.Flags().DurationVar(&caValidity, "validity", tlsutil.DefaultCAValidity, "how long the CA is valid")
	ca.AddCommand(caCreate)

	cert := &cobra.Command{Use: "cert", Short: "Certificates signed by the cluster CA"}
	var (
		dir, role, name string
		hosts           []string
		validity        time.Duration
	)
	certCreate := &cobra.Command{
		Use:   "create --dir DIR --role coordinator|agent|client --name NAME [--host H,...]",
		Short: "Write DIR/NAME.pem and DIR/NAME-key.pem, signed by DIR/ca.pem and DIR/ca-key.pem",
		Long: "The role and name are in the certificate (URI SAN kiln://ROLE/NAME). A coordinator's name is\n" +
			"its --node-id and --host lists every DNS name and IP address peers and clients dial it by.\n" +
			"An agent's name is the agent's name in the cluster.",
		Args: exactArgs(0, "no arguments"),
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageErrorf("--dir is required")
			}
			r, err := tlsutil.ParseRole(role)
			if err != nil {
				return usageErrorf("--role: %v", err)
			}
			if err := tlsutil.ValidateName(name); err != nil {
				return usageErrorf("--name: %v", err)
			}
			var hs []string
			for _, h := range hosts {
				if h = strings.TrimSpace(h); h != "" {
					hs = append(hs, h)
				}
			}
			if r == tlsutil.RoleCoordinator && len(hs) == 0 {
				return usageErrorf("--host is required for a coordinator certificate (the names and addresses it is dialed by)")
			}
			ca, err := tlsutil.LoadCA(dir+"/"+tlsutil.CACertFile, dir+"/"+tlsutil.CAKeyFile)
			if err != nil {
				return err
			}
			key, err := tlsutil.NewKey()
			if err != nil {
				return err
			}
			certPEM, err := ca.Issue(tlsutil.IssueRequest{Identity: tlsutil.Identity{Role: r, Name: name}, Hosts: hs, PublicKey: key.Public(), Validity: validity})
			if err != nil {
				return usageErrorf("%v", err)
			}
			certPath, keyPath, err := tlsutil.WriteCertAndKey(dir, name, certPEM, key)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s and %s (%s/%s)\n", certPath, keyPath, r, name)
			return nil
		}),
	}
	f := certCreate.Flags()
	f.StringVar(&dir, "dir", "", "directory holding ca.pem and ca-key.pem; the certificate is written there")
	f.StringVar(&role, "role", "", "coordinator, agent or client")
	f.StringVar(&name, "name", "", "coordinator node id, agent name or user name")
	f.StringSliceVar(&hosts, "host", nil, "DNS names and IP addresses the holder serves on (coordinators), comma-separated")
	f.DurationVar(&validity, "validity", tlsutil.DefaultCertValidity, "how long the certificate is valid")
	cert.AddCommand(certCreate)
	cmd.AddCommand(ca, cert)
	return cmd
}
