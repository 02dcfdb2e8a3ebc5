package client

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeNode is a ControlService that is either the leader or a follower
// pointing at leaderAddr.
type fakeNode struct {
	kilnv1.UnimplementedControlServiceServer
	addr string

	mu         sync.Mutex
	isLeader   bool
	leaderAddr string
	calls      int
}

func (f *fakeNode) SubmitBuild(ctx context.Context, req *kilnv1.SubmitBuildRequest) (*kilnv1.SubmitBuildResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if !f.isLeader {
		return nil, leader.NotLeaderError("n", f.leaderAddr)
	}
	return &kilnv1.SubmitBuildResponse{Build: &kilnv1.Build{Id: "1", Name: f.addr}}, nil
}

func (f *fakeNode) GetBuild(ctx context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	f.mu.Lock()
	f.calls++
	f.mu.Unlock()
	return nil, status.Errorf(codes.NotFound, "build %s not found", req.GetBuildId())
}

func (f *fakeNode) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func startNode(t *testing.T) *fakeNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	f := &fakeNode{addr: lis.Addr().String()}
	kilnv1.RegisterControlServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return f
}

// deadAddr returns an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func newClient(t *testing.T, addrs ...string) *Client {
	t.Helper()
	c, err := New(addrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// submit runs SubmitBuild through Do and returns the name of the node that
// served it.
func submit(ctx context.Context, c *Client) (string, error) {
	var name string
	err := c.Do(ctx, func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := kilnv1.NewControlServiceClient(conn).SubmitBuild(ctx, &kilnv1.SubmitBuildRequest{RequestId: "r"})
		if err != nil {
			return err
		}
		name = resp.GetBuild().GetName()
		return nil
	})
	return name, err
}

func TestRedirectToLeader(t *testing.T) {
	ldr, follower := startNode(t), startNode(t)
	ldr.isLeader = true
	follower.leaderAddr = ldr.addr
	// The leader is not in the configured list: the client learns it.
	c := newClient(t, follower.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	got, err := submit(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if got != ldr.addr {
		t.Errorf("served by %s, want the leader %s", got, ldr.addr)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("redirect took %v; it should not back off", d)
	}
	if _, err := submit(ctx, c); err != nil {
		t.Fatal(err)
	}
	if n := follower.callCount(); n != 1 {
		t.Errorf("follower called %d times, want 1 (the client should remember the leader)", n)
	}
	if n := ldr.callCount(); n != 2 {
		t.Errorf("leader called %d times, want 2", n)
	}
}

func TestDownNodeAndNoLeaderKnown(t *testing.T) {
	ldr, electing := startNode(t), startNode(t)
	ldr.isLeader = true
	electing.leaderAddr = "" // during an election: no address
	c := newClient(t, deadAddr(t), electing.addr, ldr.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := submit(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if got != ldr.addr {
		t.Errorf("served by %s, want %s", got, ldr.addr)
	}
	if electing.callCount() != 1 {
		t.Errorf("electing node called %d times, want 1", electing.callCount())
	}
}

func TestNoCoordinatorReachable(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	c := newClient(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err := submit(ctx, c)
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %T %v, want *UnavailableError", err, err)
	}
	if !strings.HasPrefix(err.Error(), "no coordinator reachable at "+a+","+b+": ") {
		t.Errorf("message = %q", err)
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("code = %v, want Unavailable", status.Code(err))
	}
}

func TestOtherErrorsReturnAtOnce(t *testing.T) {
	n := startNode(t)
	c := newClient(t, n.addr)
	err := c.Do(context.Background(), func(ctx context.Context, conn grpc.ClientConnInterface) error {
		_, err := kilnv1.NewControlServiceClient(conn).GetBuild(ctx, &kilnv1.GetBuildRequest{BuildId: "9"})
		return err
	})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("err = %v, want NotFound", err)
	}
	if n.callCount() != 1 {
		t.Errorf("called %d times, want 1", n.callCount())
	}
}

func TestNodeComesBack(t *testing.T) {
	// The only coordinator is down at first and starts listening later.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	c := newClient(t, addr)
	srv := grpc.NewServer()
	f := &fakeNode{addr: addr, isLeader: true}
	kilnv1.RegisterControlServiceServer(srv, f)
	defer srv.Stop()
	time.AfterFunc(300*time.Millisecond, func() {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		go func() { _ = srv.Serve(l) }()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if _, err := submit(ctx, c); err != nil {
		t.Fatal(err)
	}
}

func TestCloseAndNew(t *testing.T) {
	if _, err := New([]string{" ", ""}, nil); err == nil {
		t.Error("New with no addresses succeeded")
	}
	c, err := New([]string{"127.0.0.1:1", "127.0.0.1:1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Addrs()) != 1 {
		t.Errorf("duplicates kept: %v", c.Addrs())
	}
	_ = c.Close()
	err = c.Do(context.Background(), func(context.Context, grpc.ClientConnInterface) error { return nil })
	if !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close = %v", err)
	}
}

func TestBackoffBounds(t *testing.T) {
	for i := range 20 {
		d := backoffDelay(i)
		if d < minBackoff/2 || d > maxBackoff {
			t.Errorf("backoffDelay(%d) = %v", i, d)
		}
	}
}

func TestDialTimeoutFailsFastWhenNothingListens(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	c, err := New([]string{a, b}, nil, WithDialTimeout(300*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The context allows far longer than the dial timeout: Do must not use it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = submit(ctx, c)
	var ue *UnavailableError
	if !errors.As(err, &ue) {
		t.Fatalf("err = %T %v, want *UnavailableError", err, err)
	}
	if ctx.Err() != nil {
		t.Fatal("Do waited for the whole context instead of the dial timeout")
	}
	if len(ue.Tried) != 2 {
		t.Errorf("tried %v, want both addresses", ue.Tried)
	}
}

func TestDialTimeoutKeepsRetryingWhileACoordinatorAnswers(t *testing.T) {
	// One node answers "no leader known" (an election): the client must
	// keep trying past the dial timeout until the leader appears.
	electing := startNode(t)
	c, err := New([]string{electing.addr}, nil, WithDialTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Become leader only after the node has been asked more than once,
	// which with the backoff is past the dial timeout.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if electing.callCount() >= 4 {
				electing.mu.Lock()
				electing.isLeader = true
				electing.mu.Unlock()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	got, err := submit(ctx, c)
	<-done
	if err != nil {
		t.Fatalf("gave up while a coordinator answered: %v", err)
	}
	if got != electing.addr {
		t.Errorf("served by %s", got)
	}
}
