// Package httpserve is the small HTTP server of the coordinator and the
// agent (--http-addr): one listener, one ServeMux that other parts add
// routes to (/metrics, the web dashboard), and a Run that
// serves until its context ends and then shuts down gracefully.
//
// The listener is bound in New, so a busy port is a startup error and the
// caller learns the real address of ":0" before Run.
package httpserve

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// ShutdownGrace bounds how long Run waits for requests in flight once its
// context ends.
const ShutdownGrace = 2 * time.Second

// Server is an HTTP listener with a mux. Add routes with Handle before or
// during Run.
type Server struct {
	lis  net.Listener
	mux  *http.ServeMux
	srv  *http.Server
	log  *zap.Logger
	addr string

	hookMu sync.Mutex
	hooks  []func()
}

// New binds addr (host:port; port 0 picks a free one).
func New(addr string, log *zap.Logger) (*Server, error) {
	if addr == "" {
		return nil, errors.New("http-addr: must not be empty")
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("http-addr %q: %w", addr, err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on http-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	s := &Server{lis: lis, mux: mux, log: log, addr: lis.Addr().String()}
	s.srv = &http.Server{
		Handler: mux,
		// Slow clients must not hold connections forever.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	return s, nil
}

// Addr is the bound address (host:port).
func (s *Server) Addr() string { return s.addr }

// Mux is the server's ServeMux: other packages register their routes on it.
func (s *Server) Mux() *http.ServeMux { return s.mux }

// Handle registers a handler for a ServeMux pattern.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// OnShutdown registers f to run when Run's context ends, before the
// server waits for requests in flight: long-lived responses (the
// dashboard's live streams) end there instead of holding the shutdown for
// ShutdownGrace. Hooks run in order, synchronously.
func (s *Server) OnShutdown(f func()) {
	s.hookMu.Lock()
	defer s.hookMu.Unlock()
	s.hooks = append(s.hooks, f)
}

func (s *Server) runHooks() {
	s.hookMu.Lock()
	hooks := s.hooks
	s.hooks = nil
	s.hookMu.Unlock()
	for _, f := range hooks {
		f()
	}
}

// HandleMetrics serves reg on /metrics in the Prometheus text or
// OpenMetrics format (content negotiation), reporting collection errors in
// the response instead of dropping the scrape.
func (s *Server) HandleMetrics(reg *prometheus.Registry) {
	s.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
		Registry:          reg,
	}))
}

// Run serves until ctx is canceled, then shuts down, waiting up to
// ShutdownGrace for requests in flight. It closes the listener in every
// case; call it once.
func (s *Server) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	s.log.Info("http server started", zap.String("http_addr", s.addr))
	select {
	case err := <-errc:
		s.runHooks()
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	s.runHooks()
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	return nil
}

// Close releases the listener and runs the OnShutdown hooks of a server
// that will never Run (a failed startup).
func (s *Server) Close() error {
	s.runHooks()
	return s.lis.Close()
}
