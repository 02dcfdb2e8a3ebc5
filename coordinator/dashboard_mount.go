package coordinator

import (
	"fmt"

	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"

	"github.com/kiln-ci/kiln/coordinator/dashboard"
	"github.com/kiln-ci/kiln/internal/client"
	"github.com/kiln-ci/kiln/internal/tlsutil"
)

// openDashboard mounts the web dashboard on the HTTP server. It reads and
// writes through this coordinator's own gRPC API, like kilnctl: under TLS
// it dials without a client certificate (an anonymous client, never this
// node's coordinator identity), so the user's token alone decides what a
// page may do.
func (c *Coordinator) openDashboard() error {
	var opts []client.Option
	if c.tls != nil {
		opts = append(opts, client.WithCredentials(credentials.NewTLS(tlsutil.ClientConfig(c.tls.pool, nil))))
	}
	log := c.log.Named("dashboard")
	cl, err := client.New([]string{c.addr}, log, opts...)
	if err != nil {
		return fmt.Errorf("dashboard client: %w", err)
	}
	d, err := dashboard.New(dashboard.Config{
		Client: cl,
		Dial:   func(addr string) (*client.Client, error) { return client.New([]string{addr}, log, opts...) },
		ACL:    c.cfg.ACL,
		Log:    log,
	})
	if err != nil {
		_ = cl.Close()
		return err
	}
	d.Register(c.http.Mux())
	c.http.OnShutdown(func() {
		d.Close()
		if err := cl.Close(); err != nil {
			log.Debug("dashboard client close", zap.Error(err))
		}
	})
	return nil
}
