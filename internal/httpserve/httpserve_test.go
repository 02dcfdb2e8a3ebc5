package httpserve

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServesRoutesAndStopsWithItsContext: routes added on the mux are
// served, /metrics serves the registry, and Run returns once ctx ends.
func TestServesRoutesAndStopsWithItsContext(t *testing.T) {
	s, err := New("127.0.0.1:0", zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_hits_total", Help: "hits"})
	c.Add(3)
	reg.MustRegister(c)
	s.HandleMetrics(reg)
	s.Handle("GET /hello", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hi") }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	if code, body := get(t, "http://"+s.Addr()+"/hello"); code != 200 || body != "hi" {
		t.Fatalf("/hello: %d %q", code, body)
	}
	if code, body := get(t, "http://"+s.Addr()+"/metrics"); code != 200 || !strings.Contains(body, "test_hits_total 3") {
		t.Fatalf("/metrics: %d %q", code, body)
	}
	if code, _ := get(t, "http://"+s.Addr()+"/nope"); code != http.StatusNotFound {
		t.Fatalf("/nope: %d", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(ShutdownGrace + 3*time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestBadAndBusyAddresses(t *testing.T) {
	if _, err := New("", zaptest.NewLogger(t)); err == nil {
		t.Fatal("empty address accepted")
	}
	if _, err := New("localhost", zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), "http-addr") {
		t.Fatalf("address without a port: %v", err)
	}
	s, err := New("127.0.0.1:0", zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := New(s.Addr(), zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), "listen on http-addr") {
		t.Fatalf("busy port: %v", err)
	}
}

// TestOnShutdownEndsLongResponses: a response that lasts until told to
// stop (a live stream) is ended by an OnShutdown hook, so the graceful
// shutdown completes and the client sees a clean end, not a cut.
func TestOnShutdownEndsLongResponses(t *testing.T) {
	s, err := New("127.0.0.1:0", zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var order []string
	s.OnShutdown(func() { order = append(order, "first"); close(stop) })
	s.OnShutdown(func() { order = append(order, "second") })
	s.Handle("GET /stream", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "start\n")
		w.(http.Flusher).Flush()
		<-stop
		_, _ = io.WriteString(w, "bye\n")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + s.Addr() + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "start\n" {
		t.Fatalf("stream start: %q %v", buf, err)
	}
	cancel()
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(rest) != "bye\n" {
		t.Fatalf("stream end: %q %v, want a clean end", rest, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if strings.Join(order, ",") != "first,second" {
		t.Fatalf("hooks ran %v", order)
	}
}
