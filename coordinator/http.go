package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kiln-ci/kiln/coordinator/metrics"
	"github.com/kiln-ci/kiln/internal/httpserve"
)

// DefaultHTTPAddr is the HTTP listen address of kiln-coordinator
// (--http-addr): /metrics and the web dashboard.
const DefaultHTTPAddr = "127.0.0.1:7080"

// openHTTP binds the HTTP server when Config.HTTPAddr is set and serves
// the Prometheus metrics of this node on /metrics. Other parts add their
// routes with HTTP().Handle.
func (c *Coordinator) openHTTP() error {
	if c.cfg.HTTPAddr == "" {
		return nil
	}
	srv, err := httpserve.New(c.cfg.HTTPAddr, c.log.Named("http"))
	if err != nil {
		return err
	}
	c.metrics = metrics.NewRegistry(metrics.Sources{
		Store: c.store,
		Raft:  c.node.Health,
		Blobs: c.local,
	})
	srv.HandleMetrics(c.metrics)
	c.http = srv
	if err := c.openDashboard(); err != nil {
		_ = srv.Close()
		c.http = nil
		return err
	}
	return nil
}

// HTTP is the coordinator's HTTP server (nil without Config.HTTPAddr):
// register more routes on it before Run.
func (c *Coordinator) HTTP() *httpserve.Server { return c.http }

// Metrics is the Prometheus registry served on /metrics (nil without
// Config.HTTPAddr): the built-in agent of --dev registers its metrics here.
func (c *Coordinator) Metrics() *prometheus.Registry { return c.metrics }

// HTTPAddr is the bound HTTP address ("" without Config.HTTPAddr).
func (c *Coordinator) HTTPAddr() string {
	if c.http == nil {
		return ""
	}
	return c.http.Addr()
}
