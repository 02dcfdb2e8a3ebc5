package scheduler

import (
	"sync"
	"sync/atomic"

	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// sendBuffer bounds the messages queued for one agent. An agent that falls
// this far behind is disconnected rather than let the leader's memory grow.
// A channel's buffer is allocated whole when the session opens, so this is
// paid by every connected agent (8 bytes a slot): 512 slots are 4 KiB.
const sendBuffer = 512

// Session is one open agent stream as the scheduler sees it: the agent's
// identity, labels, slots and drain flag, and the queue of messages for it.
//
// It lives in this package because the scheduler owns the set of open
// sessions: it dispatches assignments and cancellations to them, renews and
// expires their leases, and closes them (lease lapsed, replaced by a newer
// session of the agent, leadership lost). Package agentsession runs the
// stream: it creates a Session per Connect stream, attaches it, is the only
// sender on the stream (draining Out) and detaches it when the stream ends.
// (agentsession imports the scheduler, so the type cannot live there.)
type Session struct {
	// Agent is the agent's unique name.
	Agent string
	// ID identifies this session; a reconnect gets a new one.
	ID string
	// Labels are the agent's labels, matched against step selectors.
	Labels map[string]string
	// Slots is how many jobs the agent runs at once.
	Slots int

	draining atomic.Bool
	out      chan *kilnv1.ConnectResponse
	done     chan struct{}
	once     sync.Once
}

// NewSession returns a session ready to be attached.
func NewSession(agent, id string, labels map[string]string, slots int, draining bool) *Session {
	s := &Session{Agent: agent, ID: id, Labels: labels, Slots: slots,
		out: make(chan *kilnv1.ConnectResponse, sendBuffer), done: make(chan struct{})}
	s.draining.Store(draining)
	return s
}

// Send queues a message for the agent. A session whose buffer is full is
// closed (the agent reconnects and resyncs) and Send reports false.
func (s *Session) Send(msg *kilnv1.ConnectResponse) bool {
	select {
	case <-s.done:
		return false
	default:
	}
	select {
	case s.out <- msg:
		return true
	default:
		s.close()
		return false
	}
}

// Out is the queue the session's sender (package agentsession) sends from.
func (s *Session) Out() <-chan *kilnv1.ConnectResponse { return s.out }

// Done is closed when the scheduler ends the session (lease expired,
// replaced by a newer session, leadership lost).
func (s *Session) Done() <-chan struct{} { return s.done }

// SetDraining records whether the agent takes new jobs.
func (s *Session) SetDraining(d bool) { s.draining.Store(d) }

// Draining reports whether the agent refuses new jobs.
func (s *Session) Draining() bool { return s.draining.Load() }

func (s *Session) close() { s.once.Do(func() { close(s.done) }) }

// closed reports whether the session has ended.
func (s *Session) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}
