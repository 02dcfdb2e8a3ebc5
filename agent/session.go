package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/kiln-ci/kiln/internal/authn"
	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Keepalive parameters of the agent's connection. The coordinators enforce a
// minimum ping interval of 5s; Time must not go below it.
var keepaliveParams = keepalive.ClientParameters{
	Time:                10 * time.Second,
	Timeout:             5 * time.Second,
	PermitWithoutStream: true,
}

// dial opens a client connection to a coordinator with the agent's
// keepalive parameters and transport credentials (TLS with the agent's
// current certificate, or plaintext). The agent's API token (--token), if
// any, is sent as the bearer credential of every call; etcd:///PREFIX
// addresses resolve through the agent's etcd resolver
// (Config.EtcdEndpoints).
func (a *Agent) dial(addr string) (*grpc.ClientConn, error) {
	creds := a.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithKeepaliveParams(keepaliveParams),
	}
	if a.cfg.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(authn.Bearer(a.cfg.Token)))
	}
	if r := a.etcd.Load(); r != nil {
		opts = append(opts, r.DialOption())
	}
	return grpc.NewClient(addr, opts...)
}

// errDrained ends the session loop after a completed drain.
var errDrained = errors.New("drained")

// session is one live Connect stream after Registered. Its queue is guarded
// by Agent.mu; only its send loop writes to the stream.
type session struct {
	queue  []*kilnv1.ConnectRequest
	notify chan struct{}
}

func newSession() *session { return &session{notify: make(chan struct{}, 1)} }

// push queues msg and wakes the send loop. Caller holds Agent.mu.
func (s *session) push(msg *kilnv1.ConnectRequest) {
	s.queue = append(s.queue, msg)
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// connectLoop keeps a session open until ctx ends (returns ctx.Err()) or a
// drain completes (returns nil).
func (a *Agent) connectLoop(ctx context.Context) error {
	backoff := a.cfg.ReconnectMin
	next := 0      // index into Coordinators
	redirect := "" // leader address named by the last answer
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.idle:
			return nil
		default:
		}
		addr := redirect
		if addr == "" {
			addr = a.cfg.Coordinators[next%len(a.cfg.Coordinators)]
			next++
		}
		redirect = ""
		// NotLeader hints are followed at once, a bounded number in a row.
		err := leader.Follow(ctx, []string{addr}, a.maxRedirects(), func(ctx context.Context, at string) error {
			if at != addr { // addr answered that at is the leader
				a.log.Info("coordinator is not the leader; redirecting", zap.String("addr", addr), zap.String("leader", at))
				addr = at
				select {
				case <-a.idle:
					return errDrained
				default:
				}
			}
			began := time.Now()
			err := a.runSession(ctx, at)
			if time.Since(began) >= a.cfg.StableSession {
				backoff = a.cfg.ReconnectMin
			}
			return err
		})
		switch {
		case errors.Is(err, errDrained):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if hint, ok := leader.Hint(err); ok && hint != "" && hint != addr {
			// Too many redirects in a row: follow this one after the backoff.
			a.log.Info("coordinator is not the leader; redirecting", zap.String("addr", addr), zap.String("leader", hint))
			redirect = hint
		} else {
			a.log.Warn("session ended", zap.String("addr", addr), zap.Error(err))
		}
		if err := a.sleepBackoff(ctx, &backoff, a.idle); err != nil {
			if errors.Is(err, errDrained) {
				return nil
			}
			return err
		}
	}
}

// maxRedirects bounds how many NotLeader hints in a row are followed at
// once: elections can bounce us between nodes that each name another.
func (a *Agent) maxRedirects() int { return 2*len(a.cfg.Coordinators) + 1 }

// sleepBackoff waits a jittered duration in [*backoff/2, *backoff], then
// doubles *backoff up to reconnectCap. It returns ctx.Err() if ctx ends
// first and errDrained if idle (nil: never) is closed first.
func (a *Agent) sleepBackoff(ctx context.Context, backoff *time.Duration, idle <-chan struct{}) error {
	wait := *backoff/2 + rand.N(*backoff/2+1)
	*backoff = min(2**backoff, a.reconnectCap())
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-idle:
		return errDrained
	case <-t.C:
		return nil
	}
}

// reconnectCap bounds the reconnect backoff. Once a leader has told us the
// lease TTL, the cap is a quarter of it: after a failover the new leader
// gives held jobs one TTL, and an agent still backing off from the dead
// leader must not miss it.
func (a *Agent) reconnectCap() time.Duration {
	limit := a.cfg.ReconnectMax
	if ttl := time.Duration(a.leaseTTL.Load()); ttl > 0 {
		limit = min(limit, ttl/4)
	}
	return max(limit, a.cfg.ReconnectMin)
}

// runSession dials addr, registers and serves one session until the stream
// breaks, ctx ends or a drain completes (errDrained).
func (a *Agent) runSession(ctx context.Context, addr string) error {
	conn, err := a.dial(addr)
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := kilnv1.NewAgentServiceClient(conn).Connect(sctx)
	if err != nil {
		return fmt.Errorf("connect %s: %w", addr, err)
	}

	a.mu.Lock()
	reg := &kilnv1.Register{
		Name:     a.cfg.Name,
		Labels:   a.cfg.Labels,
		Slots:    int32(a.cfg.Slots),
		Version:  Version,
		Running:  a.heldRefsLocked(),
		Draining: a.draining,
	}
	a.mu.Unlock()
	if err := stream.Send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Register{Register: reg}}); err != nil {
		// A failed Send hides the stream's status; Recv reports it.
		if _, rerr := stream.Recv(); rerr != nil {
			err = rerr
		}
		return fmt.Errorf("register at %s: %w", addr, err)
	}
	timedOut := make(chan struct{})
	timer := time.AfterFunc(a.cfg.RegisterTimeout, func() { close(timedOut); cancel() })
	resp, err := stream.Recv()
	if !timer.Stop() {
		<-timedOut
		return fmt.Errorf("register at %s: no answer within %v", addr, a.cfg.RegisterTimeout)
	}
	if err != nil {
		return fmt.Errorf("register at %s: %w", addr, err)
	}
	registered := resp.GetRegistered()
	if registered == nil {
		return fmt.Errorf("register at %s: expected Registered, got %T", addr, resp.GetMsg())
	}
	a.sessionAddr.Store(&addr)
	if ttl := registered.GetLeaseTtlMs(); ttl > 0 {
		a.leaseTTL.Store(int64(time.Duration(ttl) * time.Millisecond))
	}
	a.maxLogBytes.Store(max(registered.GetMaxLogBytes(), 0))
	hb := time.Duration(registered.GetHeartbeatIntervalMs()) * time.Millisecond
	if hb <= 0 {
		hb = a.cfg.HeartbeatInterval
	}
	log := a.log.With(zap.String("addr", addr), zap.String("session", registered.GetSessionId()))
	log.Info("session registered", zap.String("node", registered.GetNodeId()),
		zap.Duration("heartbeat", hb), zap.Int64("lease_ttl_ms", registered.GetLeaseTtlMs()), zap.Int("held", len(reg.GetRunning())))

	a.counters.sessions.Add(1)
	sess := newSession()
	a.mu.Lock()
	a.sess = sess
	a.resendLocked()
	a.mu.Unlock()

	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		a.sendLoop(sctx, stream, sess, hb, log)
	}()
	recvErr := make(chan error, 1)
	go func() { recvErr <- a.recvLoop(stream) }()

	var result error
	recvDone := false
	select {
	case err := <-recvErr:
		recvDone = true
		result = fmt.Errorf("session at %s: %w", addr, err)
	case <-a.idle:
		result = errDrained
	case <-ctx.Done():
		result = ctx.Err()
	}
	a.mu.Lock()
	if a.sess == sess {
		a.sess = nil
	}
	a.mu.Unlock()
	cancel()
	<-sendDone
	if !recvDone {
		<-recvErr
	}
	return result
}

// sendLoop is the only writer of the stream: queued messages and heartbeats.
func (a *Agent) sendLoop(ctx context.Context, stream grpc.BidiStreamingClient[kilnv1.ConnectRequest, kilnv1.ConnectResponse], sess *session, hb time.Duration, log *zap.Logger) {
	ticker := time.NewTicker(hb)
	defer ticker.Stop()
	for {
		var batch []*kilnv1.ConnectRequest
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			a.mu.Lock()
			draining := a.draining
			a.mu.Unlock()
			batch = []*kilnv1.ConnectRequest{{Msg: &kilnv1.ConnectRequest_Heartbeat{Heartbeat: &kilnv1.Heartbeat{Draining: draining}}}}
		case <-sess.notify:
			a.mu.Lock()
			batch, sess.queue = sess.queue, nil
			a.mu.Unlock()
		}
		for _, msg := range batch {
			if err := stream.Send(msg); err != nil {
				// The receive loop reports the stream's status.
				log.Debug("send failed", zap.Error(err))
				return
			}
		}
	}
}

// recvLoop handles the leader's messages until the stream fails.
func (a *Agent) recvLoop(stream grpc.BidiStreamingClient[kilnv1.ConnectRequest, kilnv1.ConnectResponse]) error {
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		switch m := resp.GetMsg().(type) {
		case *kilnv1.ConnectResponse_Assignment:
			a.onAssignment(m.Assignment)
		case *kilnv1.ConnectResponse_Cancel:
			a.onCancel(m.Cancel)
		case *kilnv1.ConnectResponse_Ack:
			a.onAck(m.Ack)
		case *kilnv1.ConnectResponse_Registered:
			a.log.Debug("duplicate Registered ignored")
		default:
			a.log.Warn("unknown message from coordinator", zap.String("type", fmt.Sprintf("%T", m)))
		}
	}
}
