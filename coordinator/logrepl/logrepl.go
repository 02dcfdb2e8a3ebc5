// Package logrepl replicates job logs between coordinators; the chunk data
// never enters the Raft log.
//
// Write path (leader, Replicate): an agent's chunks are appended to the
// leader's log store (coordinator/logstore, fsynced), then to every other
// voter's store (LogReplicationService.AppendLog) in parallel; Replicate
// returns once a majority of the voters, the leader included, hold them,
// with the attempt's totals through the last chunk, which the caller
// commits through Raft (CommitLogs) before acknowledging the agent. Copies
// still running finish in the background, bounded by CopyTimeout and
// Close. A peer that lacks earlier chunks of the attempt (it was down)
// answers with its last seq and is sent the missing ones first; a leader
// that lacks committed chunks (it was not in the quorum of an earlier
// leader) fetches them from its peers before appending.
//
// Read path (every node, Ensure): a coordinator asked for chunks a
// committed record covers but that its store lacks waits a moment for the
// leader's copy in flight, then reads them from its peers (ReadLog), the
// leader first. Run is the background catch-up every node runs: after the
// node has applied its log and then every interval it compares each job's
// committed position with the local store (by file size first), fetches
// what is missing and checks the chain digest of what it completed.
package logrepl

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-ci/kiln/coordinator/logstore"
	"github.com/kiln-ci/kiln/coordinator/state"
	"github.com/kiln-ci/kiln/internal/periodic"
	kilnv1 "github.com/kiln-ci/kiln/proto/kiln/v1"
)

// Defaults and limits.
const (
	// DefaultCopyTimeout bounds the copy of one batch to one peer,
	// including the chunks the peer lacked before it.
	DefaultCopyTimeout = 30 * time.Second
	// DefaultInterval is the period of the background catch-up.
	DefaultInterval = 5 * time.Second
	// MaxMessageBytes bounds the chunk data of one AppendLog or ReadLog
	// message (the gRPC limit is 4 MiB; a chunk is at most 1 MiB).
	MaxMessageBytes = 2 << 20
	// inFlightWait is how long a reader waits for the leader's copy of
	// committed chunks before fetching them itself: the commit record and
	// the data travel separately, so a follower may see the record first.
	inFlightWait = 200 * time.Millisecond
	// rpcTimeout bounds one AppendLog or ReadLog call.
	rpcTimeout = 10 * time.Second
	// maxCopiesPerPeer bounds the copies running to one peer: a peer that
	// hangs costs at most this many running copies (plus one waiting per
	// Replicate call in progress), and the batches it misses
	// meanwhile reach it with the next copy that gets through (which sends
	// what the peer lacks) or through its catch-up.
	maxCopiesPerPeer = 8
)

// Errors; the API and the agent session map them to status codes.
var (
	// ErrNoQuorum: fewer than a majority of the voters hold the chunks
	// (the agent keeps them and resends: Unavailable).
	ErrNoQuorum = errors.New("log chunks not stored on a quorum of coordinators")
	// ErrUnavailable: committed chunks are held neither locally nor by any
	// reachable peer (Unavailable; another coordinator may serve them).
	ErrUnavailable = errors.New("committed log chunks not available")
)

// Config wires a Replicator. Store, Members, Nodes and Conn are required.
type Config struct {
	// NodeID is this coordinator's id.
	NodeID string
	// Store is this node's log store.
	Store *logstore.Store
	// Members returns the Raft configuration (*raftnode.Node.Members).
	Members func() ([]raft.Server, error)
	// Nodes returns the coordinators' ids and gRPC addresses from the
	// replicated state (*state.Store.Nodes).
	Nodes func() []*kilnv1.Node
	// Leader returns the current leader's id ("" when unknown): Ensure
	// asks it first.
	Leader func() string
	// Conn returns a (shared) client connection to a peer.
	Conn func(addr string) (*grpc.ClientConn, error)
	// CopyTimeout bounds one copy to one peer (default DefaultCopyTimeout).
	CopyTimeout time.Duration
	// Log defaults to a no-op logger.
	Log *zap.Logger
}

// Replicator copies log chunks between this node's store and its peers.
type Replicator struct {
	cfg  Config
	bg   context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu     sync.Mutex
	copies map[string]chan struct{} // peer id → semaphore of running copies
}

// New returns a Replicator; Close it to stop the background copies.
func New(cfg Config) *Replicator {
	if cfg.CopyTimeout <= 0 {
		cfg.CopyTimeout = DefaultCopyTimeout
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Leader == nil {
		cfg.Leader = func() string { return "" }
	}
	bg, stop := context.WithCancel(context.Background())
	return &Replicator{cfg: cfg, bg: bg, stop: stop, copies: map[string]chan struct{}{}}
}

// Close stops the background copies and waits for them.
func (r *Replicator) Close() {
	r.stop()
	r.wg.Wait()
}

// Store is this node's log store.
func (r *Replicator) Store() *logstore.Store { return r.cfg.Store }

type peer struct{ id, addr string }

// voters returns the number of voters, whether this node is one, and the
// other voters.
func (r *Replicator) voters() (int, bool, []peer, error) {
	members, err := r.cfg.Members()
	if err != nil {
		return 0, false, nil, fmt.Errorf("raft configuration: %w", err)
	}
	addrs := map[string]string{}
	for _, n := range r.cfg.Nodes() {
		addrs[n.GetId()] = n.GetGrpcAddr()
	}
	n, self := 0, false
	var others []peer
	for _, m := range members {
		if m.Suffrage != raft.Voter {
			continue
		}
		n++
		if string(m.ID) == r.cfg.NodeID {
			self = true
			continue
		}
		others = append(others, peer{id: string(m.ID), addr: addrs[string(m.ID)]})
	}
	return n, self, others, nil
}

// Replicate stores consecutive chunks of one job attempt (seq ascending,
// starting at most one past what is committed) on this node and the other
// voters, and returns once a majority of the voters hold chunks 1..last,
// with the attempt's totals through the last chunk. It fails with
// ErrNoQuorum once a majority cannot be reached any more, with
// logstore.ErrInvalid for bad chunks, and with ctx's error.
func (r *Replicator) Replicate(ctx context.Context, jobID string, attempt uint32, chunks []*kilnv1.LogChunk) (logstore.Totals, error) {
	if len(chunks) == 0 {
		return logstore.Totals{}, fmt.Errorf("no chunks: %w", logstore.ErrInvalid)
	}
	first, through := chunks[0].GetSeq(), chunks[len(chunks)-1].GetSeq()
	if first == 0 || through < first {
		return logstore.Totals{}, fmt.Errorf("chunks %d..%d are not in seq order: %w", first, through, logstore.ErrInvalid)
	}
	_, err := r.cfg.Store.Append(jobID, attempt, chunks)
	if errors.Is(err, logstore.ErrGap) {
		// This node missed committed chunks (it was not in the quorum of an
		// earlier leader, or it was down): fetch them, then append.
		if ferr := r.fetch(ctx, jobID, attempt, first-1); ferr != nil {
			return logstore.Totals{}, fmt.Errorf("job %s attempt %d: the leader lacks chunks before %d: %w", jobID, attempt, first, ferr)
		}
		_, err = r.cfg.Store.Append(jobID, attempt, chunks)
	}
	if err != nil {
		return logstore.Totals{}, err
	}
	tot, err := r.cfg.Store.Totals(jobID, attempt, through)
	if err != nil {
		return logstore.Totals{}, err
	}
	voters, self, others, err := r.voters()
	if err != nil {
		return logstore.Totals{}, err
	}
	quorum := voters/2 + 1
	replicas := 0
	if self {
		replicas = 1
	}
	results := make(chan error, len(others))
	// done tells copies still waiting for a slot that this call no longer
	// needs them (it has its quorum, or failed): they give up, and the
	// catch-up loop brings that peer up to date later.
	done := make(chan struct{})
	defer close(done)
	for _, p := range others {
		sem := r.copySlots(p.id)
		r.wg.Add(1)
		go func(p peer) {
			defer r.wg.Done()
			// A busy peer (maxCopiesPerPeer copies running) is waited
			// for, not failed: under many concurrent jobs the slots free
			// up quickly. Only the calls in progress wait, so a hung peer
			// costs at most one waiting goroutine per call.
			select {
			case sem <- struct{}{}:
			case <-done:
				results <- fmt.Errorf("%s: %d earlier copies to it are still running", p.id, maxCopiesPerPeer)
				return
			case <-r.bg.Done():
				results <- fmt.Errorf("%s: %w", p.id, r.bg.Err())
				return
			}
			defer func() { <-sem }()
			// Copies outlive the call (they finish in the background once
			// a quorum answered), bounded by their timeout and Close.
			cctx, cancel := context.WithTimeout(r.bg, r.cfg.CopyTimeout)
			defer cancel()
			err := r.copyTo(cctx, p, jobID, attempt, first, through)
			if err != nil && r.bg.Err() == nil {
				r.cfg.Log.Debug("log replication to a peer failed", zap.String("job", jobID), zap.Uint32("attempt", attempt),
					zap.String("peer", p.id), zap.Error(err))
				err = fmt.Errorf("%s: %w", p.id, err)
			}
			results <- err
		}(p)
	}
	var failures []string
	pending := len(others)
	for replicas < quorum {
		if replicas+pending < quorum {
			return logstore.Totals{}, fmt.Errorf("job %s attempt %d chunks %d..%d stored on %d of %d coordinators, a quorum of %d is needed (%s): %w",
				jobID, attempt, first, through, replicas, voters, quorum, strings.Join(failures, "; "), ErrNoQuorum)
		}
		select {
		case err := <-results:
			pending--
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				replicas++
			}
		case <-ctx.Done():
			return logstore.Totals{}, ctx.Err()
		}
	}
	return tot, nil
}

// copySlots is the semaphore of the copies running to one peer.
func (r *Replicator) copySlots(id string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	sem, ok := r.copies[id]
	if !ok {
		sem = make(chan struct{}, maxCopiesPerPeer)
		r.copies[id] = sem
	}
	return sem
}

// copyTo appends chunks first..through, read from the local store, to one
// peer; when the peer lacks earlier chunks it sends those first.
func (r *Replicator) copyTo(ctx context.Context, p peer, jobID string, attempt uint32, first, through uint64) error {
	if p.addr == "" {
		return errors.New("its gRPC address is not known yet")
	}
	conn, err := r.cfg.Conn(p.addr)
	if err != nil {
		return err
	}
	cl := kilnv1.NewLogReplicationServiceClient(conn)
	after := first - 1
	for {
		cs, err := r.cfg.Store.Read(jobID, attempt, after, through, MaxMessageBytes)
		if err != nil {
			return err
		}
		if len(cs) == 0 {
			return fmt.Errorf("the local store no longer holds chunks after %d", after)
		}
		rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := cl.AppendLog(rctx, &kilnv1.AppendLogRequest{JobId: jobID, Attempt: attempt, Chunks: cs})
		cancel()
		if err != nil {
			return err
		}
		last := resp.GetLastSeq()
		switch {
		case last >= through:
			return nil
		case last >= cs[len(cs)-1].GetSeq():
			after = last
		case last < after:
			// The peer lacks earlier chunks: start from where it is.
			after = last
		default:
			return fmt.Errorf("peer stored through %d after an append of %d..%d", last, cs[0].GetSeq(), cs[len(cs)-1].GetSeq())
		}
	}
}

// sources are the peers to read from: the leader first, then the others.
func (r *Replicator) sources() []peer {
	leader := r.cfg.Leader()
	var out []peer
	for _, n := range r.cfg.Nodes() {
		if n.GetId() == r.cfg.NodeID || n.GetGrpcAddr() == "" {
			continue
		}
		p := peer{id: n.GetId(), addr: n.GetGrpcAddr()}
		if p.id == leader {
			out = append([]peer{p}, out...)
		} else {
			out = append(out, p)
		}
	}
	return out
}

// Ensure makes this node's store hold chunks 1..through of a job attempt
// (a committed position): it waits briefly for the leader's copy in
// flight, then reads the missing chunks from its peers. It fails with
// ErrUnavailable when no reachable peer has them.
func (r *Replicator) Ensure(ctx context.Context, jobID string, attempt uint32, through uint64) error {
	deadline := time.NewTimer(inFlightWait)
	defer deadline.Stop()
	for {
		changed := r.cfg.Store.Changed()
		last, err := r.cfg.Store.Last(jobID, attempt)
		if err != nil {
			return err
		}
		if last >= through {
			return nil
		}
		select {
		case <-changed:
			continue
		case <-deadline.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		break
	}
	return r.fetch(ctx, jobID, attempt, through)
}

// fetch reads chunks up to through that the local store lacks from the
// peers, the leader first.
func (r *Replicator) fetch(ctx context.Context, jobID string, attempt uint32, through uint64) error {
	var tried []string
	for _, p := range r.sources() {
		err := r.fetchFrom(ctx, p, jobID, attempt, through)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		tried = append(tried, p.id+": "+status.Convert(err).Message())
	}
	last, _ := r.cfg.Store.Last(jobID, attempt)
	if last >= through {
		return nil
	}
	return fmt.Errorf("job %s attempt %d: chunks %d..%d are held neither here (%s) nor by a reachable peer (%s): %w",
		jobID, attempt, last+1, through, r.cfg.NodeID, strings.Join(tried, "; "), ErrUnavailable)
}

// fetchFrom copies chunks up to through from one peer into the local store.
func (r *Replicator) fetchFrom(ctx context.Context, p peer, jobID string, attempt uint32, through uint64) error {
	conn, err := r.cfg.Conn(p.addr)
	if err != nil {
		return err
	}
	cl := kilnv1.NewLogReplicationServiceClient(conn)
	for {
		last, err := r.cfg.Store.Last(jobID, attempt)
		if err != nil {
			return err
		}
		if last >= through {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := cl.ReadLog(rctx, &kilnv1.ReadLogRequest{JobId: jobID, Attempt: attempt, AfterSeq: last, ThroughSeq: through, MaxBytes: MaxMessageBytes})
		cancel()
		if err != nil {
			return err
		}
		if len(resp.GetChunks()) == 0 {
			return fmt.Errorf("holds chunks through %d only", resp.GetLastSeq())
		}
		if _, err := r.cfg.Store.Append(jobID, attempt, resp.GetChunks()); err != nil {
			return err
		}
	}
}

// Read returns committed chunks with afterSeq < seq <= through of a job
// attempt (through is the committed log_seq the caller read from the
// state), in order, at most maxBytes of data (at least one chunk). It
// serves what this node holds first and makes it fetch the rest (Ensure)
// only when it holds nothing after afterSeq, so a reader never waits for
// chunks it does not need yet. Fewer chunks than asked are not the end:
// call again after the last one returned.
func (r *Replicator) Read(ctx context.Context, jobID string, attempt uint32, afterSeq, through uint64, maxBytes int) ([]*kilnv1.LogChunk, error) {
	if afterSeq >= through {
		return nil, nil
	}
	last, err := r.cfg.Store.Last(jobID, attempt)
	if err != nil {
		return nil, err
	}
	if last <= afterSeq {
		if err := r.Ensure(ctx, jobID, attempt, through); err != nil {
			return nil, err
		}
	}
	return r.cfg.Store.Read(jobID, attempt, afterSeq, through, maxBytes)
}

// ReadHeld returns the chunks after afterSeq of a job attempt that this
// node's store holds, at most maxBytes of data (at least one chunk), with
// no fetch from peers: for attempts whose committed end the state no
// longer records (an earlier attempt of a retried job).
func (r *Replicator) ReadHeld(jobID string, attempt uint32, afterSeq uint64, maxBytes int) ([]*kilnv1.LogChunk, error) {
	last, err := r.cfg.Store.Last(jobID, attempt)
	if err != nil {
		return nil, err
	}
	return r.cfg.Store.Read(jobID, attempt, afterSeq, last, maxBytes)
}

// Run is the background catch-up: once ready (the node applied its log)
// and then every interval, it fetches the committed chunks the local store
// lacks and checks the chain digest of each log it had to complete against
// the committed one, until ctx ends. A log whose file is long enough to
// hold the committed chunks is not read.
func (r *Replicator) Run(ctx context.Context, interval time.Duration, positions func() []state.LogPosition, ready func(context.Context) error) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	done := map[string]uint64{} // job/attempt → position checked
	periodic.Run(ctx, interval, ready, func(ctx context.Context) { r.pass(ctx, positions(), done) })
}

// pass fetches and checks what one catch-up pass finds missing.
func (r *Replicator) pass(ctx context.Context, pos []state.LogPosition, done map[string]uint64) {
	fetched, failed := 0, 0
	seen := make(map[string]bool, len(pos))
	for _, p := range pos {
		k := fmt.Sprintf("%s/%d", p.JobID, p.Attempt)
		seen[k] = true
		if done[k] == p.Seq {
			continue
		}
		if r.cfg.Store.HoldsThrough(p.JobID, p.Attempt, p.Seq, p.Bytes) {
			// Complete by its size: not read, so a restart does not read
			// every log on disk.
			done[k] = p.Seq
			continue
		}
		last, err := r.cfg.Store.Last(p.JobID, p.Attempt)
		if err != nil {
			r.cfg.Log.Warn("log catch-up: read local log", zap.String("job", p.JobID), zap.Error(err))
			continue
		}
		if last < p.Seq {
			if err := r.fetch(ctx, p.JobID, p.Attempt, p.Seq); err != nil {
				if ctx.Err() != nil {
					return
				}
				failed++
				r.cfg.Log.Warn("log catch-up: fetch failed; retrying on the next pass", zap.String("job", p.JobID),
					zap.Uint32("attempt", p.Attempt), zap.Error(err))
				continue
			}
			fetched++
		}
		tot, err := r.cfg.Store.Totals(p.JobID, p.Attempt, p.Seq)
		if err != nil {
			continue
		}
		if string(tot.Digest[:]) != string(p.Digest) {
			// Never expected (one attempt's chunk n has one content); say
			// so loudly rather than serve a log that differs from the
			// leader's.
			r.cfg.Log.Error("log catch-up: local log differs from the committed digest", zap.String("job", p.JobID),
				zap.Uint32("attempt", p.Attempt), zap.Uint64("seq", p.Seq))
		}
		done[k] = p.Seq
	}
	for k := range done {
		if !seen[k] {
			delete(done, k)
		}
	}
	if fetched > 0 || failed > 0 {
		r.cfg.Log.Info("log catch-up pass", zap.Int("fetched", fetched), zap.Int("failed", failed))
	}
}

// Server is the LogReplicationService of one coordinator: it serves its
// local log store to the leader (AppendLog) and to peers (ReadLog).
type Server struct {
	kilnv1.UnimplementedLogReplicationServiceServer
	store *logstore.Store
}

// NewServer returns the service over store.
func NewServer(store *logstore.Store) *Server { return &Server{store: store} }

// maxAppendChunks bounds the chunks of one AppendLog.
const maxAppendChunks = 4096

// AppendLog stores chunks; a gap is answered with the last stored seq,
// not an error, so the leader sends what is missing.
func (s *Server) AppendLog(_ context.Context, req *kilnv1.AppendLogRequest) (*kilnv1.AppendLogResponse, error) {
	if len(req.GetChunks()) > maxAppendChunks {
		return nil, status.Errorf(codes.InvalidArgument, "%d chunks in one append; the limit is %d", len(req.GetChunks()), maxAppendChunks)
	}
	last, err := s.store.Append(req.GetJobId(), req.GetAttempt(), req.GetChunks())
	switch {
	case err == nil, errors.Is(err, logstore.ErrGap):
		return &kilnv1.AppendLogResponse{LastSeq: last}, nil
	case errors.Is(err, logstore.ErrInvalid):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return nil, status.Error(codes.Internal, err.Error())
}

// ReadLog serves stored chunks.
func (s *Server) ReadLog(_ context.Context, req *kilnv1.ReadLogRequest) (*kilnv1.ReadLogResponse, error) {
	max := int(req.GetMaxBytes())
	if max <= 0 || max > MaxMessageBytes {
		max = MaxMessageBytes
	}
	last, err := s.store.Last(req.GetJobId(), req.GetAttempt())
	if err != nil {
		if errors.Is(err, logstore.ErrInvalid) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, status.Error(codes.Internal, err.Error())
	}
	cs, err := s.store.Read(req.GetJobId(), req.GetAttempt(), req.GetAfterSeq(), req.GetThroughSeq(), max)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &kilnv1.ReadLogResponse{Chunks: cs, LastSeq: last}, nil
}
