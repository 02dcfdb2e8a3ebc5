package discovery_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kiln-ci/kiln/internal/discovery"
	"github.com/kiln-ci/kiln/internal/discovery/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"etcd:///kiln/coordinators":  "kiln/coordinators",
		"etcd:///kiln/coordinators/": "kiln/coordinators",
		"etcd:///x":                  "x",
	} {
		got, err := discovery.ParseTarget(in)
		if err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"etcd://host/kiln", "etcd:///", "etcd:///a//b", "127.0.0.1:1"} {
		if _, err := discovery.ParseTarget(in); err == nil {
			t.Errorf("ParseTarget(%q): no error", in)
		}
	}
	eps, err := discovery.ParseEndpoints(" http://127.0.0.1:2379, 127.0.0.1:2380 ,")
	if err != nil || len(eps) != 2 || eps[0] != "http://127.0.0.1:2379" {
		t.Errorf("ParseEndpoints = %q, %v", eps, err)
	}
	for _, in := range []string{"", "ftp://h:1", "http://h:1/x", "nohost", "http://h"} {
		if _, err := discovery.ParseEndpoints(in); err == nil {
			t.Errorf("ParseEndpoints(%q): no error", in)
		}
	}
	if err := discovery.Register(context.Background(), discovery.Registration{Endpoints: []string{"127.0.0.1:1"}, NodeID: "a/b", Addr: "127.0.0.1:1"}, nil); err == nil || !strings.Contains(err.Error(), "node id") {
		t.Errorf("Register with a bad node id: %v", err)
	}
}

// healthServer serves gRPC health on a loopback port, reporting name as
// the status of service "who".
func healthServer(t *testing.T, name string) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(lis) }()
	t.Cleanup(func() { s.Stop(); <-done })
	return lis.Addr().String()
}

// TestEtcdDiscovery registers two gRPC servers in a real etcd, dials the
// etcd:/// target through the resolver, and checks that a deregistered
// server's key is gone at once and the target then reaches the other.
func TestEtcdDiscovery(t *testing.T) {
	ep := etcdtest.Start(t)
	log := zaptest.NewLogger(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	addrA, addrB := healthServer(t, "a"), healthServer(t, "b")
	regCtxA, stopA := context.WithCancel(ctx)
	regCtxB, stopB := context.WithCancel(ctx)
	doneA, doneB := make(chan error, 1), make(chan error, 1)
	go func() {
		doneA <- discovery.Register(regCtxA, discovery.Registration{Endpoints: []string{ep}, Prefix: "/test/coord/", NodeID: "a", Addr: addrA, TTL: 5 * time.Second}, log)
	}()
	defer func() { stopA(); <-doneA; stopB(); <-doneB }()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// Wait for the key through a watch (an event, not a poll).
	waitKey := func(key string, present bool) {
		t.Helper()
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		resp, err := cli.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if (len(resp.Kvs) > 0) == present {
			return
		}
		wch := cli.Watch(wctx, key, clientv3.WithRev(resp.Header.Revision+1))
		for w := range wch {
			for _, ev := range w.Events {
				if (ev.Type == clientv3.EventTypePut) == present {
					return
				}
			}
		}
		t.Fatalf("key %s present=%v: watch ended: %v", key, present, ctx.Err())
	}
	waitKey("test/coord/a", true)
	resp, err := cli.Get(ctx, "test/coord/a")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Kvs[0].Lease == 0 {
		t.Fatal("registration has no lease")
	}
	if !strings.Contains(string(resp.Kvs[0].Value), addrA) {
		t.Fatalf("registration value %q lacks %s", resp.Kvs[0].Value, addrA)
	}

	r, err := discovery.NewResolver([]string{ep}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	conn, err := grpc.NewClient("etcd:///test/coord", r.DialOption(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	check := func(svc string) error {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		_, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: svc}, grpc.WaitForReady(true))
		return err
	}
	if err := check("a"); err != nil {
		t.Fatalf("health of a through etcd:///test/coord: %v", err)
	}

	// b joins, a leaves: the key of a is deleted at once (lease revoked)
	// and the connection moves to b.
	go func() {
		doneB <- discovery.Register(regCtxB, discovery.Registration{Endpoints: []string{ep}, Prefix: "test/coord", NodeID: "b", Addr: addrB, TTL: 5 * time.Second}, log)
	}()
	waitKey("test/coord/b", true)
	stopA()
	if err := <-doneA; err != nil {
		t.Fatalf("Register(a) = %v", err)
	}
	doneA <- nil
	waitKey("test/coord/a", false)
	deadline := time.Now().Add(10 * time.Second)
	for {
		// The resolver's watch delivers the delete asynchronously; the
		// next call after it reaches b.
		err := check("b")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd:///test/coord never reached b after a left: %v", err)
		}
		time.Sleep(10 * time.Millisecond) // a poll interval, not a synchronisation
	}
}
