// Package bench holds Kiln's load generator and benchmarks. Light agents
// speak the real agent protocol over gRPC but run no commands: each
// assignment is answered at once with started, one log chunk and finished,
// so the numbers measure the coordinators (dispatch, Raft commits, fan-out),
// not the shell.
package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kiln-ci/kiln/internal/leader"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Event is something a light agent observed.
type Event struct {
	BuildID  string
	JobID    string
	At       time.Time
	Assigned bool // an assignment arrived
	Finished bool // the cluster acknowledged the finish
}

// LightAgent is a simulated agent.
type LightAgent struct {
	Name  string
	Slots int32
	Addrs []string
	// Events receives assignments and finish acknowledgements.
	Events chan<- Event
	// Pool, when set, is shared by many agents: their sessions are
	// streams on one connection per coordinator, so thousands of agents
	// need no thousands of connections on the load generator's side.
	Pool *ConnPool
}

// ConnPool is one client connection per address, shared by light agents.
type ConnPool struct {
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// NewConnPool returns an empty pool; Close it when the agents are done.
func NewConnPool() *ConnPool { return &ConnPool{conns: map[string]*grpc.ClientConn{}} }

// Get returns the pool's connection to addr, dialing it the first time.
func (p *ConnPool) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[addr]; ok {
		return c, nil
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection of the pool.
func (p *ConnPool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		_ = c.Close()
		delete(p.conns, a)
	}
}

// Run serves sessions until ctx ends, following leader redirects.
func (a *LightAgent) Run(ctx context.Context) {
	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	next := 0
	target := ""
	for ctx.Err() == nil {
		addr := target
		if addr == "" {
			addr = a.Addrs[next%len(a.Addrs)]
			next++
		}
		target = ""
		conn, ok := conns[addr]
		if a.Pool != nil {
			var err error
			if conn, err = a.Pool.Get(addr); err != nil {
				continue
			}
			ok = true
		}
		if !ok {
			var err error
			conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				continue
			}
			conns[addr] = conn
		}
		err := a.session(ctx, kilnv1.NewAgentServiceClient(conn))
		if hint, ok := leader.Hint(err); ok && hint != "" {
			target = hint
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *LightAgent) session(ctx context.Context, c kilnv1.AgentServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Connect(ctx)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	send := func(m *kilnv1.ConnectRequest) error {
		mu.Lock()
		defer mu.Unlock()
		return stream.Send(m)
	}
	if err := send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Register{Register: &kilnv1.Register{
		Name: a.Name, Slots: a.Slots, Version: "bench",
	}}}); err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	reg := first.GetRegistered()
	if reg == nil {
		return fmt.Errorf("first message %T, want registered", first.GetMsg())
	}
	go func() {
		t := time.NewTicker(time.Duration(reg.GetHeartbeatIntervalMs()) * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if send(&kilnv1.ConnectRequest{Msg: &kilnv1.ConnectRequest_Heartbeat{Heartbeat: &kilnv1.Heartbeat{}}}) != nil {
					return
				}
			}
		}
	}()
	builds := map[string]string{}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		switch {
		case m.GetAssignment() != nil:
			as := m.GetAssignment()
			builds[as.GetJobId()] = as.GetBuildId()
			a.Events <- Event{BuildID: as.GetBuildId(), JobID: as.GetJobId(), At: time.Now(), Assigned: true}
			now := time.Now().UnixMilli()
			for _, r := range []*kilnv1.ConnectRequest{
				{Msg: &kilnv1.ConnectRequest_Started{Started: &kilnv1.JobStarted{JobId: as.GetJobId(), Attempt: as.GetAttempt(), TimeUnixMs: now}}},
				{Msg: &kilnv1.ConnectRequest_Log{Log: &kilnv1.LogChunk{JobId: as.GetJobId(), Attempt: as.GetAttempt(), Seq: 1, Data: []byte("ok\n"), TimeUnixMs: now}}},
				{Msg: &kilnv1.ConnectRequest_Finished{Finished: &kilnv1.JobFinished{JobId: as.GetJobId(), Attempt: as.GetAttempt(),
					Result: kilnv1.JobResult_JOB_RESULT_PASSED, LastSeq: 1, TimeUnixMs: now}}},
			} {
				if err := send(r); err != nil {
					return err
				}
			}
		case m.GetAck() != nil && m.GetAck().GetFinished():
			ack := m.GetAck()
			a.Events <- Event{BuildID: builds[ack.GetJobId()], JobID: ack.GetJobId(), At: time.Now(), Finished: true}
			delete(builds, ack.GetJobId())
		}
	}
}
