// Package dashboard is the coordinator's web dashboard, served on
// --http-addr next to /metrics: build history, a build page with a stage
// view, live log tails (server-sent events), test results, artifacts and
// approval buttons, and the agents, queue and cluster pages.
//
// Pages are rendered on the server (html/template); the CSS and the small
// script of the build page are embedded in the binary, so there is no
// front-end build. Every page reads through the coordinator's own gRPC API
// (a leader-following client dialing this coordinator), so a page sees
// what `kilnctl` would see: the same read consistency, the same leader
// redirects for writes, and, with --acl, the same authorization and audit
// log, because the user's API token travels as the bearer credential of
// each call the page makes. The token is kept in an HttpOnly,
// SameSite=Strict cookie; forms carry a CSRF token (double-submit cookie).
package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/client"
)

// Limits of the dashboard. They bound the work one page view can cause.
const (
	// PageSize is the number of builds of one history page.
	PageSize = 50
	// MaxScanPages bounds the ListBuilds pages one filtered history page
	// reads looking for PageSize matches (the rest is on "older").
	MaxScanPages = 10
	// MaxLiveStreams bounds the live (SSE) streams open at once; more are
	// answered 503.
	MaxLiveStreams = 256
	// MaxTokenBytes bounds the token a login form may carry.
	MaxTokenBytes = 1024
	// MaxFormBytes bounds the body of a POST form.
	MaxFormBytes = 16 << 10
	// CallTimeout bounds the gRPC calls of one page.
	CallTimeout = 10 * time.Second
	// heartbeat is how often an idle live stream sends a comment, so that
	// proxies and the browser keep it open.
	heartbeat = 15 * time.Second
)

// Cookie names.
const (
	tokenCookie = "kiln_token"
	csrfCookie  = "kiln_csrf"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Caller is the leader-following gRPC client the pages call through
// (*client.Client).
type Caller interface {
	Do(ctx context.Context, fn func(ctx context.Context, conn grpc.ClientConnInterface) error) error
}

// Config configures a Dashboard.
type Config struct {
	// Client calls this cluster's gRPC API (normally dialing this very
	// coordinator); the dashboard closes nothing of it.
	Client Caller
	// Dial returns a client for one coordinator address (the cluster
	// page asks every member for its status); nil shows this node only.
	Dial func(addr string) (*client.Client, error)
	// ACL is true when the cluster runs with --acl: pages then need a
	// token (login form).
	ACL bool
	Log *zap.Logger
}

// Dashboard serves the web pages. Register its routes on a mux; Close ends
// its live streams.
type Dashboard struct {
	cfg    Config
	log    *zap.Logger
	tmpl   map[string]*template.Template
	static http.Handler

	// streams bounds the live streams; ctx ends them at Close.
	streams chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc

	mu      sync.Mutex
	members map[string]*client.Client
	closed  bool
}

// New parses the templates and returns a Dashboard.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Client == nil {
		return nil, errors.New("dashboard: a gRPC client is required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	tmpl, err := parseTemplates()
	if err != nil {
		return nil, fmt.Errorf("dashboard templates: %w", err)
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, fmt.Errorf("dashboard assets: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dashboard{
		cfg: cfg, log: cfg.Log, tmpl: tmpl,
		static:  http.StripPrefix("/static/", http.FileServerFS(sub)),
		streams: make(chan struct{}, MaxLiveStreams),
		ctx:     ctx, cancel: cancel,
		members: map[string]*client.Client{},
	}, nil
}

// Register adds the dashboard's routes to mux.
func (d *Dashboard) Register(mux *http.ServeMux) {
	mux.Handle("GET /static/", d.static)
	mux.HandleFunc("GET /login", d.loginPage)
	mux.HandleFunc("POST /login", d.login)
	mux.HandleFunc("POST /logout", d.logout)
	mux.HandleFunc("GET /{$}", d.authed(d.history))
	mux.HandleFunc("GET /builds/{id}", d.authed(d.build))
	mux.HandleFunc("GET /builds/{id}/live", d.authed(d.live))
	mux.HandleFunc("POST /builds/{id}/approval", d.authed(d.decide))
	mux.HandleFunc("GET /builds/{id}/artifacts/{sha}", d.authed(d.artifact))
	mux.HandleFunc("GET /agents", d.authed(d.agents))
	mux.HandleFunc("GET /queue", d.authed(d.queue))
	mux.HandleFunc("GET /cluster", d.authed(d.cluster))
}

// Close ends the live streams (the HTTP server is shutting down) and the
// connections of the cluster page. Safe to call more than once.
func (d *Dashboard) Close() {
	d.cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for addr, c := range d.members {
		_ = c.Close()
		delete(d.members, addr)
	}
}

// session is what one request knows about its user.
type session struct {
	token string
	csrf  string
}

// callCtx is ctx carrying the user's token as the bearer credential of the
// gRPC calls made for this request.
func (s session) callCtx(ctx context.Context) context.Context {
	if s.token == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, authn.MetadataKey, "Bearer "+s.token)
}

// sessionOf reads the cookies of r, setting a new CSRF cookie when there is
// none (every page can then render forms).
func (d *Dashboard) sessionOf(w http.ResponseWriter, r *http.Request) session {
	var s session
	if c, err := r.Cookie(tokenCookie); err == nil {
		s.token = c.Value
	}
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 64 {
		s.csrf = c.Value
	} else {
		s.csrf = randomHex(32)
		http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: s.csrf, Path: "/", HttpOnly: true,
			SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	}
	return s
}

// checkCSRF verifies the form's token against the cookie (a cross-site
// form cannot read the cookie, and SameSite=Strict does not send it).
func checkCSRF(r *http.Request) bool {
	c, err := r.Cookie(csrfCookie)
	if err != nil || len(c.Value) != 64 {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) == 1
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+).
	return hex.EncodeToString(b)
}

// handler is a page or endpoint that knows its session.
type handler func(w http.ResponseWriter, r *http.Request, s session)

// authed resolves the session and, with ACLs, sends users without a token
// to the login page.
func (d *Dashboard) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Referrer-Policy", "same-origin")
		s := d.sessionOf(w, r)
		if d.cfg.ACL && s.token == "" {
			d.toLogin(w, r, "")
			return
		}
		h(w, r, s)
	}
}

func (d *Dashboard) toLogin(w http.ResponseWriter, r *http.Request, msg string) {
	q := url.Values{"next": {r.URL.RequestURI()}}
	if msg != "" {
		q.Set("msg", msg)
	}
	http.Redirect(w, r, "/login?"+q.Encode(), http.StatusSeeOther)
}

// call runs fn through the client with the session's token and a bounded
// deadline.
func (d *Dashboard) call(r *http.Request, s session, fn func(ctx context.Context, conn grpc.ClientConnInterface) error) error {
	ctx, cancel := context.WithTimeout(s.callCtx(r.Context()), CallTimeout)
	defer cancel()
	return d.cfg.Client.Do(ctx, fn)
}

// httpStatus maps a gRPC error to the HTTP status of the page showing it.
func httpStatus(err error) int {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.FailedPrecondition, codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// fail shows err as an error page; an unauthenticated call (no, expired or
// revoked token) goes to the login page instead.
func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, s session, what string, err error) {
	code := httpStatus(err)
	if code == http.StatusUnauthorized && d.cfg.ACL {
		d.toLogin(w, r, status.Convert(err).Message())
		return
	}
	msg := err.Error()
	if st, ok := status.FromError(err); ok {
		msg = st.Message()
	}
	if code >= 500 {
		d.log.Warn("dashboard call failed", zap.String("what", what), zap.String("path", r.URL.Path), zap.Error(err))
	}
	d.render(w, code, "error", s, "Error", map[string]any{"What": what, "Message": msg, "Code": code})
}

// render writes the named template in the layout.
func (d *Dashboard) render(w http.ResponseWriter, code int, name string, s session, title string, data any) {
	t, ok := d.tmpl[name]
	if !ok {
		http.Error(w, "no template "+name, http.StatusInternalServerError)
		return
	}
	var b strings.Builder
	err := t.ExecuteTemplate(&b, "layout", map[string]any{
		"Title": title, "Page": name, "CSRF": s.csrf, "ACL": d.cfg.ACL, "LoggedIn": s.token != "", "D": data,
	})
	if err != nil {
		d.log.Error("dashboard template", zap.String("template", name), zap.Error(err))
		http.Error(w, "template error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}
